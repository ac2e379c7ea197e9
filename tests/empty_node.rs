//! The release binary on an "empty node": run from a root directory that holds nothing but the
//! static binary, its `meshcap-cni` link and what every node has (a mounted /proc, /run/netns,
//! an /etc/hosts) — no /lib, /usr or /etc/ssl — in a private mount namespace (chroot). From
//! there it installs Istio's default rules with the nftables backend, and runs meshcap-cni ADD,
//! CHECK and DEL with the pod looked up from the test API server by host name (through the
//! root's /etc/hosts, TLS with the kubeconfig's CA alone); `meshcap proxy`, started from the same
//! root, carries real TCP each time the rules are in place, and none after DEL.
//!
//! The static binary is the one `make build` produces (target/x86_64-unknown-linux-gnu/release/
//! meshcap, or MESHCAP_STATIC_BIN); the test builds it (scripts/build-static.sh) when missing.

mod common;

use common::apiserver::{ApiServer, CaForm, Credential, Fault};
use common::cni::{CniNode, interception_state, stdout_json};
use netns_test_harness::{ISTIO_DEFAULT_ARGS, Netns, Process, User, require_root};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TARGET: &str = "x86_64-unknown-linux-gnu";
const POD_NAMESPACE: &str = "test-ns";
const POD_NAME: &str = "web-0";
/// The node's address on the bridge (the pod's gateway), where the node serves TCP.
const GATEWAY: &str = "198.51.100.1";
const APP: User = User::new(1000, 1000);

/// The static release binary, built (as `make build` does) when missing.
fn static_binary() -> PathBuf {
    if let Ok(path) = std::env::var("MESHCAP_STATIC_BIN") {
        return PathBuf::from(path);
    }
    let root = common::repo();
    let path = root.join(format!("target/{TARGET}/release/meshcap"));
    if !path.exists() {
        eprintln!("empty_node: building the static release binary (scripts/build-static.sh)");
        let out = Command::new(root.join("scripts/build-static.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-static.sh");
        assert!(out.status.success(), "building the static binary failed");
    }
    path
}

/// `readelf -d` lists no NEEDED entry and `ldd` calls it not dynamic.
fn assert_static(bin: &Path) {
    let readelf = Command::new("readelf").arg("-d").arg(bin).output();
    if let Ok(out) = readelf {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("NEEDED"), "{}: {text}", bin.display());
    }
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(text.contains("not a dynamic executable"), "ldd: {text}");
}

/// The empty root: the binary, its CNI name, mount points for /proc and /run/netns, /etc/hosts
/// and the node's kubeconfig. Removed on drop (its mounts live in the private mount namespace of
/// each process and end with it).
struct EmptyRoot {
    dir: PathBuf,
}

impl EmptyRoot {
    fn new(bin: &Path) -> EmptyRoot {
        let dir = std::env::temp_dir().join(format!("meshcap-emptynode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["proc", "run/netns", "etc"] {
            std::fs::create_dir_all(dir.join(d)).expect("root directories");
        }
        std::fs::copy(bin, dir.join("meshcap")).expect("copy the binary");
        std::os::unix::fs::symlink("meshcap", dir.join("meshcap-cni")).expect("cni link");
        std::fs::write(
            dir.join("etc/hosts"),
            "127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
        )
        .expect("hosts");
        EmptyRoot { dir }
    }

    /// What is in the root, as paths relative to it (mount points empty).
    fn listing(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    walk(base, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir, &self.dir, &mut out);
        out.sort();
        out
    }

    /// argv that runs `command` chrooted into the root (`userspec`: `UID:GID`, else root), in
    /// a private mount namespace with /proc mounted and /run/netns bound in.
    fn argv(&self, userspec: Option<&str>, command: &[&str]) -> Vec<String> {
        let script = "set -e; r=$1; shift; mount -t proc proc \"$r/proc\"; \
                      mount --rbind /run/netns \"$r/run/netns\"; exec chroot \"$@\"";
        let mut v: Vec<String> = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ]
        .map(String::from)
        .to_vec();
        v.push(self.dir.display().to_string());
        if let Some(spec) = userspec {
            v.push(format!("--userspec={spec}"));
        }
        v.push(self.dir.display().to_string());
        v.extend(command.iter().map(|s| s.to_string()));
        v
    }

    /// Runs `command` from the root in network namespace `ns`, with `env` only and `stdin`.
    fn run(&self, ns: &Path, env: &[(&str, String)], command: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new("/usr/bin/nsenter");
        cmd.arg(format!("--net={}", ns.display()))
            .args(self.argv(None, command))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        common::output_with_stdin(&mut cmd, stdin)
    }
}

impl Drop for EmptyRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `meshcap proxy` from the root in `ns`, as the proxy's user 1337.
fn start_proxy(root: &EmptyRoot, ns: &Netns) -> Process {
    let argv = root.argv(
        Some("1337:1337"),
        &[
            "/meshcap",
            "proxy",
            "--ipv6",
            "off",
            "--stats-address",
            "127.0.0.1:15090",
        ],
    );
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let proxy = ns.spawn(&refs, None);
    // Ready when its metrics answer.
    for _ in 0..100 {
        if metrics(ns).is_ok() {
            return proxy;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the proxy from the empty root did not start: {}",
        text(&proxy.stop())
    );
}

fn metrics(ns: &Netns) -> Result<String, String> {
    ns.run(|| common::http_get("127.0.0.1:15090".parse().unwrap(), "/stats/prometheus"))
}

/// The proxy's outbound connection count.
fn outbound(ns: &Netns) -> u64 {
    common::proxy_connections(&metrics(ns).expect("metrics")).1
}

/// A TCP server in `ns` at `addr` that answers every connection with `hello`.
fn serve_hello(ns: &Netns, addr: SocketAddr) {
    let listener = ns.run(move || TcpListener::bind(addr).expect("bind the server"));
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"hello");
        }
    });
}

/// One connection from `ns` as the app's user to `dst`: what it read.
fn connect(ns: &Netns, dst: SocketAddr) -> String {
    ns.run_as(APP, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read");
        got
    })
}

/// One connection that must go through the proxy (its outbound count grows by one) or not.
fn assert_tcp(ns: &Netns, dst: SocketAddr, through_proxy: bool, when: &str) {
    let before = outbound(ns);
    assert_eq!(connect(ns, dst), "hello", "{when}: the server answers");
    let after = outbound(ns);
    assert_eq!(
        after - before,
        u64::from(through_proxy),
        "{when}: connections through the proxy"
    );
}

#[test]
fn static_binary_installs_and_runs_as_cni_plugin_from_an_empty_root() {
    if !require_root("static_binary_installs_and_runs_as_cni_plugin_from_an_empty_root") {
        return;
    }
    let bin = static_binary();
    assert_static(&bin);
    let root = EmptyRoot::new(&bin);
    assert_eq!(
        root.listing(),
        [
            "etc",
            "etc/hosts",
            "meshcap",
            "meshcap-cni",
            "proc",
            "run",
            "run/netns"
        ],
        "the root holds nothing else (the node's kubeconfig joins it below)"
    );

    // 1. The installer, Istio's defaults, nftables, in a pod-like namespace with a peer.
    let pod = Netns::new("enpod");
    let peer = Netns::new("enpeer");
    pod.link(&peer, &["192.0.2.1/24"], &["192.0.2.2/24"]);
    let dst: SocketAddr = "192.0.2.2:8080".parse().unwrap();
    serve_hello(&peer, dst);
    let mut args: Vec<&str> = vec!["/meshcap"];
    args.extend(ISTIO_DEFAULT_ARGS);
    args.extend(["--backend", "nftables", "--ipv6", "off"]);
    let out = root.run(&pod.path(), &[], &args, "");
    assert!(
        out.status.success(),
        "install from the empty root: {}",
        text(&out)
    );
    assert!(interception_state(&pod).contains("istio-proxy-nat"));
    let proxy = start_proxy(&root, &pod);
    assert_tcp(&pod, dst, true, "after install");
    drop(proxy);
    drop(pod);
    drop(peer);

    // 2. meshcap-cni chained after bridge, the pod looked up by host name.
    let mut node = CniNode::new("emptynode");
    node.cni_args = Some(format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={POD_NAME};\
         K8S_POD_INFRA_CONTAINER_ID=0123456789ab"
    ));
    let server = ApiServer::start_in(&node.host, Fault::None);
    server.serve_pod(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD_NAME,
            "namespace": POD_NAMESPACE,
            "uid": "0b1c2d3e-0000-4000-8000-0000000000aa",
            "annotations": {"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"},
        },
        "spec": {"containers": [
            {"name": "app", "image": "app"},
            {"name": "istio-proxy", "image": "proxy",
             "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}},
        ]},
        "status": {"phase": "Pending"}
    }));
    // The node's kubeconfig, in the root, naming the server by host name.
    let kubeconfig = std::fs::read_to_string(server.kubeconfig(CaForm::Data, Credential::Token))
        .expect("kubeconfig");
    assert!(kubeconfig.contains("https://127.0.0.1:"), "{kubeconfig}");
    let kubeconfig = kubeconfig.replace("https://127.0.0.1:", "https://localhost:");
    std::fs::write(root.dir.join("etc/kubeconfig"), kubeconfig).expect("write kubeconfig");
    let stanza = json!({
        "type": "meshcap-cni",
        "capture": {"backend": "nftables"},
        "kubernetes": {"kubeconfig": "/etc/kubeconfig"},
    });
    let pod = Netns::new("encnipod");
    // The runtime's path to the namespace, as the root sees it.
    let netns = Path::new("/run/netns").join(pod.name());
    let vars = |command: &str| {
        let mut v = node.vars(command, "ctr1", Some(&netns));
        v.retain(|(k, _)| *k != "CNI_PATH");
        v.push(("CNI_PATH", "/".to_owned()));
        v
    };
    let bridge = node.invoke(
        "bridge",
        &node.vars("ADD", "ctr1", Some(&pod.path())),
        &CniNode::config("1.0.0", &node.bridge_stanza(), None),
    );
    assert!(bridge.status.success(), "bridge ADD: {}", text(&bridge));
    let prev: Value = serde_json::from_slice(&bridge.stdout).expect("bridge result");
    pod.ip_batch(&[format!("route replace default via {GATEWAY}")]);
    let dst: SocketAddr = format!("{GATEWAY}:8080").parse().unwrap();
    serve_hello(&node.host, dst);
    let plugin = |command: &str, prev: Option<&Value>| {
        root.run(
            &node.host.path(),
            &vars(command),
            &["/meshcap-cni"],
            &CniNode::config("1.0.0", &stanza, prev).to_string(),
        )
    };

    let requests = server.requests();
    let add = plugin("ADD", Some(&prev));
    assert!(
        add.status.success(),
        "ADD from the empty root: {}",
        text(&add)
    );
    assert_eq!(stdout_json(&add), prev, "ADD passes the bridge's result on");
    assert!(
        server.requests() > requests,
        "ADD looked the pod up at https://localhost"
    );
    let proxy = start_proxy(&root, &pod);
    assert_tcp(&pod, dst, true, "after ADD");

    let check = plugin("CHECK", Some(&prev));
    assert!(
        check.status.success(),
        "CHECK from the empty root: {}",
        text(&check)
    );
    assert_tcp(&pod, dst, true, "after CHECK");

    let del = plugin("DEL", None);
    assert!(
        del.status.success(),
        "DEL from the empty root: {}",
        text(&del)
    );
    assert_eq!(interception_state(&pod), "", "DEL leaves nothing");
    assert_tcp(&pod, dst, false, "after DEL");
    drop(proxy);
    let bridge_del = node.invoke(
        "bridge",
        &node.vars("DEL", "ctr1", Some(&pod.path())),
        &CniNode::config("1.0.0", &node.bridge_stanza(), None),
    );
    assert!(
        bridge_del.status.success(),
        "bridge DEL: {}",
        text(&bridge_del)
    );
}
