//! A node for CNI tests: a throwaway "host" namespace the plugins run in, a plugin directory
//! holding meshcap-cni (the test binary under the plugin's name) beside Debian's plugins, and a
//! temporary directory for host-local's state, so nothing of a test lands on the machine.

use netns_test_harness::Netns;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's containernetworking-plugins are.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// Istio's CNI sidecar defaults as installer flags: what a stanza without `capture` installs.
pub const ISTIO_CNI_FLAGS: [&str; 22] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-g",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15020,15021,15090",
    "-o",
    "15020",
    "--ipv6",
    "off",
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct CniNode {
    pub host: Netns,
    /// Holds `meshcap-cni` and host-local's data.
    pub dir: PathBuf,
    /// The bridge this node's network uses (created in `host` by the bridge plugin).
    pub bridge: String,
    /// `CNI_ARGS` of every invocation, as a kubelet names the pod (`None`: not set).
    pub cni_args: Option<String>,
}

impl CniNode {
    pub fn new(tag: &str) -> CniNode {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("meshcap-cni-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).expect("plugin dir");
        std::os::unix::fs::symlink(super::MESHCAP, dir.join("bin/meshcap-cni"))
            .expect("meshcap-cni symlink");
        CniNode {
            host: Netns::new(&format!("cnihost{tag}")),
            bridge: format!("mcbr{}x{n}", std::process::id() % 100_000),
            dir,
            cni_args: None,
        }
    }

    /// The plugin directory runtimes would search (`CNI_PATH`): meshcap-cni, then Debian's.
    pub fn cni_path(&self) -> String {
        format!("{}:{DEBIAN_CNI_DIR}", self.dir.join("bin").display())
    }

    /// The executable of a plugin by type.
    pub fn plugin(&self, plugin_type: &str) -> PathBuf {
        if plugin_type == "meshcap-cni" {
            self.dir.join("bin/meshcap-cni")
        } else {
            Path::new(DEBIAN_CNI_DIR).join(plugin_type)
        }
    }

    /// The bridge + host-local stanza of a network on 198.51.100.0/24.
    pub fn bridge_stanza(&self) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "subnet": "198.51.100.0/24",
                "dataDir": self.dir.join("ipam").display().to_string(),
            }
        })
    }

    /// Runs one plugin as a runtime does: in the host namespace, with only the CNI variables
    /// (and PATH) in its environment and `config` on stdin.
    pub fn invoke(&self, plugin_type: &str, vars: &[(&str, String)], config: &Value) -> Output {
        self.invoke_raw(plugin_type, vars, &config.to_string())
    }

    pub fn invoke_raw(&self, plugin_type: &str, vars: &[(&str, String)], stdin: &str) -> Output {
        let mut cmd = Command::new("/usr/bin/nsenter");
        cmd.arg(format!("--net={}", self.host.path().display()))
            .arg(self.plugin(plugin_type))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        super::output_with_stdin(&mut cmd, stdin)
    }

    /// The CNI variables of a command for a container in `pod`.
    pub fn vars(
        &self,
        command: &str,
        container: &str,
        pod: Option<&Path>,
    ) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", container.to_owned()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", self.cni_path()),
        ];
        if let Some(pod) = pod {
            vars.push(("CNI_NETNS", pod.display().to_string()));
        }
        if let Some(args) = &self.cni_args {
            vars.push(("CNI_ARGS", args.clone()));
        }
        vars
    }

    /// The configuration a runtime hands plugin `stanza` of network `name` (version, name and
    /// the previous plugin's result added).
    pub fn config(version: &str, stanza: &Value, prev: Option<&Value>) -> Value {
        let mut conf = stanza.clone();
        conf["cniVersion"] = json!(version);
        conf["name"] = json!("meshcap-test");
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// ADD of bridge + host-local, then `meshcap` (its stanza) with bridge's result, as a
    /// runtime runs a configuration list. Returns bridge's result and meshcap-cni's output.
    pub fn add_chain(
        &self,
        version: &str,
        pod: &Netns,
        container: &str,
        meshcap: &Value,
    ) -> (Value, Output) {
        let vars = self.vars("ADD", container, Some(&pod.path()));
        let bridge = self.invoke(
            "bridge",
            &vars,
            &Self::config(version, &self.bridge_stanza(), None),
        );
        assert!(
            bridge.status.success(),
            "bridge ADD failed: {}{}",
            String::from_utf8_lossy(&bridge.stdout),
            String::from_utf8_lossy(&bridge.stderr)
        );
        let result: Value = serde_json::from_slice(&bridge.stdout).expect("bridge result");
        let out = self.invoke(
            "meshcap-cni",
            &vars,
            &Self::config(version, meshcap, Some(&result)),
        );
        (result, out)
    }

    /// DEL of the chain in reverse order, as a runtime does; returns meshcap-cni's output.
    pub fn del_chain(
        &self,
        version: &str,
        pod: Option<&Path>,
        container: &str,
        meshcap: &Value,
    ) -> Output {
        let vars = self.vars("DEL", container, pod);
        let out = self.invoke("meshcap-cni", &vars, &Self::config(version, meshcap, None));
        let bridge = self.invoke(
            "bridge",
            &vars,
            &Self::config(version, &self.bridge_stanza(), None),
        );
        assert!(
            bridge.status.success(),
            "bridge DEL: {}",
            String::from_utf8_lossy(&bridge.stderr)
        );
        out
    }

    /// `meshcap ARGS` run in the host namespace (e.g. `diff … --network-namespace POD`).
    pub fn meshcap(&self, args: &[&str]) -> Output {
        Command::new("/usr/bin/nsenter")
            .arg(format!("--net={}", self.host.path().display()))
            .arg(super::MESHCAP)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .output()
            .expect("run meshcap")
    }
}

impl Drop for CniNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What meshcap (or Istio) left in a namespace: meshcap's nftables tables and ISTIO_ chains of
/// either iptables variant (iptables-nft's empty base tables do not count). Empty when nothing
/// is there.
pub fn interception_state(ns: &Netns) -> String {
    let mut found = String::new();
    for line in ns.exec_ok(&["nft", "list", "tables"]).lines() {
        if line.contains("istio-proxy") {
            found.push_str(line);
            found.push('\n');
        }
    }
    for save in [
        "iptables-legacy-save",
        "iptables-nft-save",
        "ip6tables-legacy-save",
        "ip6tables-nft-save",
    ] {
        let out = ns.exec(&[save]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains("ISTIO") {
                found.push_str(line);
                found.push('\n');
            }
        }
    }
    found
}

/// The JSON a plugin printed on stdout.
pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}; stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
