//! `meshcap cni install|uninstall` through the real binary, on temporary directories standing in
//! for a node's CNI directories and a pod's service account (no root needed).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");

/// How long any awaited change may take before the test fails (generous: a shared machine).
const DEADLINE: Duration = Duration::from_secs(30);

/// A primary network in the formatting the installer writes, so a restore can be compared
/// byte for byte; keys deliberately not in alphabetical order.
const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "mtu": 1440,
      "ipam": {
        "type": "calico-ipam"
      },
      "kubernetes": {
        "kubeconfig": "/etc/cni/net.d/calico-kubeconfig"
      }
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#;

const BRIDGE_CONF: &str = r#"{"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0",
    "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}"#;

/// A node's CNI binary and configuration directories and a pod's service account, in a
/// temporary directory removed on drop.
struct Node {
    root: PathBuf,
    conf: PathBuf,
    bin: PathBuf,
    account: PathBuf,
}

impl Node {
    fn new(test: &str) -> Node {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "meshcap-cni-install-{test}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let node = Node {
            conf: root.join("host/etc/cni/net.d"),
            bin: root.join("host/opt/cni/bin"),
            account: root.join("serviceaccount"),
            root,
        };
        for dir in [&node.conf, &node.bin, &node.account] {
            std::fs::create_dir_all(dir).unwrap();
        }
        node.rotate_token(1, "token-one");
        node
    }

    /// Lays out the service account as the kubelet's projected volume does (`token` through
    /// the `..data` symlink, swapped by a rename), generation `generation` holding `token`.
    fn rotate_token(&self, generation: u32, token: &str) {
        let data = format!("..gen{generation}");
        let dir = self.account.join(&data);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        std::fs::write(dir.join("ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        std::fs::write(dir.join("namespace"), "meshcap-system").unwrap();
        let temp = self.account.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &temp).unwrap();
        std::fs::rename(&temp, self.account.join("..data")).unwrap();
        for name in ["token", "ca.crt", "namespace"] {
            let link = self.account.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
            }
        }
    }

    fn command(&self, subcommand: &str) -> Command {
        self.command_to(subcommand, "10.96.0.1")
    }

    /// The command with `host` as the API server's address (install only).
    fn command_to(&self, subcommand: &str, host: &str) -> Command {
        let mut command = Command::new(MESHCAP);
        command
            .args(["cni", subcommand, "--cni-conf-dir"])
            .arg(&self.conf)
            .arg("--cni-bin-dir")
            .arg(&self.bin)
            .env("MESHCAP_LOG", "info");
        if subcommand == "install" {
            command
                .arg("--service-account-dir")
                .arg(&self.account)
                .args(["--kubernetes-service-host", host])
                .args(["--kubernetes-service-port", "443"]);
        }
        command
    }

    fn install(&self, extra: &[&str]) -> Output {
        self.command("install").args(extra).output().unwrap()
    }

    fn uninstall(&self) -> Output {
        self.command("uninstall").output().unwrap()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.conf.join(name), text).unwrap();
    }

    /// Replaces a file by a rename, as CNIs write their configuration.
    fn replace(&self, name: &str, text: &str) {
        let temp = self.conf.join(format!(".{name}.tmp"));
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, self.conf.join(name)).unwrap();
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.conf.join(name)).unwrap()
    }

    fn json(&self, name: &str) -> Value {
        serde_json::from_str(&self.read(name)).unwrap()
    }

    /// The file's document once it holds exactly one meshcap stanza (it may be absent or
    /// half-written while a watcher races the test).
    fn with_stanza(&self, name: &str) -> Option<Value> {
        std::fs::read_to_string(self.conf.join(name))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|d| meshcap_stanzas(d) == 1)
    }

    fn conf_names(&self) -> Vec<String> {
        names(&self.conf)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.conf.join("meshcap-cni.kubeconfig")
    }

    fn plugin(&self) -> PathBuf {
        self.bin.join("meshcap-cni")
    }

    /// Starts `install --watch`, its log going to a file; the child is killed if the test ends
    /// early.
    fn watch(&self, extra: &[&str]) -> Watcher {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let log = self.root.join(format!(
            "watcher-{}.log",
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let child = self
            .command("install")
            .args(["--watch", "--resync-seconds", "3600"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Watcher { child, log }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

struct Watcher {
    child: Child,
    log: PathBuf,
}

impl Watcher {
    /// Sends SIGTERM and waits (bounded) for the exit; returns the status and the log.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let status = wait_for("the watcher to exit after SIGTERM", || {
            self.child.try_wait().unwrap()
        });
        (status, self.log())
    }

    /// SIGKILL: no cleanup at all, as the OOM killer ends it.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// What it has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the watcher exited early: {}",
            self.log()
        );
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `probe` until it yields a value, failing after [`DEADLINE`].
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stanza() -> Value {
    json!({"type": "meshcap-cni", "kubernetes": {
        "kubeconfig": "/etc/cni/net.d/meshcap-cni.kubeconfig",
        "exclude_namespaces": ["kube-system"]}})
}

fn meshcap_stanzas(document: &Value) -> usize {
    document["plugins"].as_array().map_or(0, |p| {
        p.iter().filter(|p| p["type"] == "meshcap-cni").count()
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a failing install and returns its stderr, checking exit status `code`.
fn failure(output: Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    stderr
}

#[test]
fn install_into_a_conflist_appends_the_stanza_and_keeps_everything_else() {
    let node = Node::new("conflist");
    node.write("10-calico.conflist", CALICO);
    node.write(
        "20-other.conflist",
        "{\"name\": \"b\", \"plugins\": [{\"type\": \"x\"}]}",
    );
    node.write("calico-kubeconfig", "not ours\n");
    assert_success(&node.install(&["--capture", r#"{"backend": "nftables"}"#]));

    let installed = node.json("10-calico.conflist");
    let original: Value = serde_json::from_str(CALICO).unwrap();
    let plugins = installed["plugins"].as_array().unwrap();
    assert_eq!(plugins[..2], original["plugins"].as_array().unwrap()[..]);
    let mut expected = stanza();
    expected
        .as_object_mut()
        .unwrap()
        .insert("capture".into(), json!({"backend": "nftables"}));
    assert_eq!(plugins[2], expected);
    assert_eq!(plugins.len(), 3);
    // Key order kept: the original text is the installed text up to the new stanza.
    let text = node.read("10-calico.conflist");
    let head = &CALICO[..CALICO.rfind("\n    }").unwrap()];
    assert!(text.starts_with(head), "{text}");
    // Nothing else in the directory touched.
    assert_eq!(
        node.read("20-other.conflist"),
        "{\"name\": \"b\", \"plugins\": [{\"type\": \"x\"}]}"
    );
    assert_eq!(node.read("calico-kubeconfig"), "not ours\n");
    assert_eq!(
        node.conf_names(),
        [
            "10-calico.conflist",
            "20-other.conflist",
            "calico-kubeconfig",
            "meshcap-cni.kubeconfig"
        ]
    );
}

#[test]
fn install_ambient_sets_the_stanzas_ambient_object() {
    let node = Node::new("ambient");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&["--ambient"]));
    let mut expected = stanza();
    expected["ambient"] =
        json!({"enabled": true, "control_socket": "/var/run/meshcap/ambient.sock"});
    assert_eq!(node.json("10-calico.conflist")["plugins"][2], expected);
    // Another socket; the stanza is updated, not duplicated.
    assert_success(&node.install(&[
        "--ambient",
        "--ambient-control-socket",
        "/run/agent/control.sock",
    ]));
    let installed = node.json("10-calico.conflist");
    assert_eq!(meshcap_stanzas(&installed), 1);
    assert_eq!(
        installed["plugins"][2]["ambient"],
        json!({"enabled": true, "control_socket": "/run/agent/control.sock"})
    );
    // The plugin reads what the installer writes.
    let mut plugin = installed["plugins"][2].clone();
    plugin["cniVersion"] = json!("1.0.0");
    let conf = meshcap::cni::spec::NetConf::decode(plugin.to_string().as_bytes()).unwrap();
    let ambient = meshcap::cni::ambient::settings(&conf).unwrap().unwrap();
    assert_eq!(ambient.control_socket, Path::new("/run/agent/control.sock"));
    // Without --ambient again: no "ambient" object.
    assert_success(&node.install(&[]));
    assert_eq!(node.json("10-calico.conflist")["plugins"][2], stanza());
    // A relative socket is refused.
    let err = failure(
        node.install(&["--ambient", "--ambient-control-socket", "ambient.sock"]),
        2,
    );
    assert!(err.contains("--ambient-control-socket"), "{err}");
    // --help documents it.
    let help = node.command("install").arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--ambient") && help.contains("istio.io/dataplane-mode=ambient"),
        "{help}"
    );
}

#[test]
fn install_into_a_conf_turns_it_into_a_conflist() {
    let node = Node::new("conf");
    node.write("10-bridge.conf", BRIDGE_CONF);
    std::fs::set_permissions(
        node.conf.join("10-bridge.conf"),
        PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    assert_success(&node.install(&[]));

    // The original kept aside (a name no runtime loads) for uninstall to put back.
    assert_eq!(
        node.conf_names(),
        [
            ".10-bridge.conf.meshcap-converted",
            "10-bridge.conflist",
            "meshcap-cni.kubeconfig"
        ]
    );
    assert_eq!(
        node.json("10-bridge.conflist"),
        bridge_list(BRIDGE_CONF, &[stanza()])
    );
    assert_eq!(mode(&node.conf.join("10-bridge.conflist")), 0o640);
}

#[test]
fn the_first_file_in_lexical_order_is_the_primary_network() {
    let node = Node::new("primary");
    node.write("20-calico.conflist", CALICO);
    node.write("10-bridge.json", BRIDGE_CONF);
    node.write("05-ignored.txt", "{}");
    assert_success(&node.install(&[]));
    assert_eq!(node.read("20-calico.conflist"), CALICO);
    assert_eq!(meshcap_stanzas(&node.json("10-bridge.conflist")), 1);
    assert!(!node.conf.join("10-bridge.json").exists());
}

#[test]
fn installing_twice_changes_nothing() {
    let node = Node::new("twice");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&[]));
    let conflist = node.read("10-calico.conflist");
    let kubeconfig = std::fs::read(node.kubeconfig()).unwrap();
    let binary_inode = std::fs::metadata(node.plugin()).unwrap().ino();
    let conflist_inode = std::fs::metadata(node.conf.join("10-calico.conflist"))
        .unwrap()
        .ino();

    assert_success(&node.install(&[]));
    assert_eq!(node.read("10-calico.conflist"), conflist);
    assert_eq!(std::fs::read(node.kubeconfig()).unwrap(), kubeconfig);
    // Not even rewritten with the same bytes: an identical binary and file are skipped.
    assert_eq!(
        std::fs::metadata(node.plugin()).unwrap().ino(),
        binary_inode
    );
    assert_eq!(
        std::fs::metadata(node.conf.join("10-calico.conflist"))
            .unwrap()
            .ino(),
        conflist_inode
    );
    assert_eq!(meshcap_stanzas(&node.json("10-calico.conflist")), 1);
}

#[test]
fn a_changed_stanza_is_updated_not_duplicated() {
    let node = Node::new("update");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&[]));
    assert_success(&node.install(&["--exclude-namespaces", "kube-system,istio-system"]));
    let installed = node.json("10-calico.conflist");
    assert_eq!(meshcap_stanzas(&installed), 1);
    assert_eq!(
        installed["plugins"][2]["kubernetes"]["exclude_namespaces"],
        json!(["kube-system", "istio-system"])
    );
}

#[test]
fn uninstall_restores_the_node() {
    let node = Node::new("restore");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&[]));
    assert_success(&node.uninstall());
    assert_eq!(node.read("10-calico.conflist"), CALICO);
    assert_eq!(node.conf_names(), ["10-calico.conflist"]);
    assert!(names(&node.bin).is_empty());
    // Nothing left to remove: still a success.
    assert_success(&node.uninstall());
    assert_eq!(node.read("10-calico.conflist"), CALICO);
}

#[test]
fn uninstall_restores_a_converted_conf_as_it_was() {
    let node = Node::new("restore-conf");
    node.write("10-bridge.conf", BRIDGE_CONF);
    std::fs::set_permissions(
        node.conf.join("10-bridge.conf"),
        PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    assert_success(&node.install(&[]));
    let output = node.uninstall();
    assert_success(&output);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("restored"),
        "{output:?}"
    );
    assert_eq!(node.conf_names(), ["10-bridge.conf"]);
    assert_eq!(node.read("10-bridge.conf"), BRIDGE_CONF);
    assert_eq!(mode(&node.conf.join("10-bridge.conf")), 0o640);
}

/// The list a conversion makes of the bridge `.conf` text `conf`: that plugin, then `chained`.
fn bridge_list(conf: &str, chained: &[Value]) -> Value {
    let mut plugins = vec![serde_json::from_str::<Value>(conf).unwrap()];
    plugins.extend_from_slice(chained);
    json!({"cniVersion": "1.0.0", "name": "bridge-net", "plugins": plugins})
}

/// Another installer chains its plugin into the list `name`, second.
fn chain_bandwidth(node: &Node, name: &str) {
    let mut joined = node.json(name);
    joined["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"type": "bandwidth"}));
    node.replace(name, &serde_json::to_string(&joined).unwrap());
}

#[test]
fn uninstall_keeps_a_converted_list_that_something_else_joined() {
    let node = Node::new("converted-joined");
    node.write("10-bridge.conf", BRIDGE_CONF);
    assert_success(&node.install(&[]));
    chain_bandwidth(&node, "10-bridge.conflist");
    assert_success(&node.uninstall());
    assert_eq!(node.conf_names(), ["10-bridge.conflist"]);
    assert_eq!(
        node.json("10-bridge.conflist"),
        bridge_list(BRIDGE_CONF, &[json!({"type": "bandwidth"})])
    );
}

#[test]
fn converting_never_overwrites_an_existing_conflist() {
    let node = Node::new("convert-occupied");
    node.write("10-bridge.conf", BRIDGE_CONF);
    node.write("10-bridge.conflist", CALICO);
    let stderr = failure(node.install(&[]), 1);
    assert!(
        stderr.contains("10-bridge.conflist") && stderr.contains("exists already"),
        "{stderr}"
    );
    assert_eq!(node.read("10-bridge.conf"), BRIDGE_CONF);
    assert_eq!(node.read("10-bridge.conflist"), CALICO);
    assert_eq!(node.conf_names(), ["10-bridge.conf", "10-bridge.conflist"]);
    assert!(names(&node.bin).is_empty());
}

#[test]
fn a_conf_rewritten_after_its_conversion_is_converted_again() {
    let node = Node::new("reconvert");
    node.write("10-bridge.conf", BRIDGE_CONF);
    assert_success(&node.install(&[]));
    // The owner writes its .conf again (an upgrade): it is the primary network once more.
    let newer = BRIDGE_CONF.replace("cni0", "cni1");
    node.replace("10-bridge.conf", &newer);
    assert_success(&node.install(&[]));
    assert_eq!(
        node.json("10-bridge.conflist"),
        bridge_list(&newer, &[stanza()])
    );
    assert_success(&node.uninstall());
    assert_eq!(node.conf_names(), ["10-bridge.conf"]);
    assert_eq!(node.read("10-bridge.conf"), newer);
}

#[test]
fn a_reconverted_list_keeps_plugins_others_chained_into_it() {
    let node = Node::new("reconvert-joined");
    node.write("10-bridge.conf", BRIDGE_CONF);
    assert_success(&node.install(&[]));
    // Another installer chains its plugin into meshcap's list, then the owner rewrites its .conf.
    chain_bandwidth(&node, "10-bridge.conflist");
    let newer = BRIDGE_CONF.replace("cni0", "cni1");
    node.replace("10-bridge.conf", &newer);
    assert_success(&node.install(&[]));
    assert_eq!(
        node.json("10-bridge.conflist"),
        bridge_list(&newer, &[json!({"type": "bandwidth"}), stanza()])
    );
    assert_success(&node.uninstall());
    assert_eq!(node.conf_names(), ["10-bridge.conflist"]);
    assert_eq!(
        node.json("10-bridge.conflist"),
        bridge_list(&newer, &[json!({"type": "bandwidth"})])
    );
}

#[test]
fn uninstall_drops_a_list_that_held_only_the_stanza() {
    let node = Node::new("only-stanza");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&[]));
    node.write(
        "20-meshcap-only.conflist",
        &serde_json::to_string(&json!({"name": "m", "cniVersion": "1.0.0", "plugins": [stanza()]}))
            .unwrap(),
    );
    let output = node.uninstall();
    assert_success(&output);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("held nothing but"),
        "{output:?}"
    );
    assert_eq!(node.conf_names(), ["10-calico.conflist"]);
    assert_eq!(node.read("10-calico.conflist"), CALICO);
}

#[test]
fn an_existing_stanza_moves_to_the_end() {
    let node = Node::new("move-last");
    let mut document: Value = serde_json::from_str(CALICO).unwrap();
    document["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(1, stanza());
    node.write(
        "10-calico.conflist",
        &serde_json::to_string(&document).unwrap(),
    );
    assert_success(&node.install(&[]));
    let installed = node.json("10-calico.conflist");
    let plugins = installed["plugins"].as_array().unwrap();
    let types: Vec<_> = plugins.iter().map(|p| p["type"].clone()).collect();
    assert_eq!(types, ["calico", "portmap", "meshcap-cni"]);
    assert_eq!(plugins[2], stanza());
}

#[test]
fn stale_temporary_files_are_removed_at_start() {
    let node = Node::new("stale");
    node.write("10-calico.conflist", CALICO);
    // What an installer killed in the middle of copying the binary leaves.
    let stale = [
        node.bin.join(".meshcap-cni.1-0-5f.meshcap-tmp"),
        node.conf.join(".10-calico.conflist.1-1-60.meshcap-tmp"),
    ];
    for path in &stale {
        std::fs::write(path, vec![0u8; 1 << 20]).unwrap();
    }
    // Left alone while they may still be a live writer's (changed within the last 2 s), removed
    // by the first pass after that.
    wait_for("the stale files removed by an install", || {
        assert_success(&node.install(&[]));
        (names(&node.bin) == ["meshcap-cni"]).then_some(())
    });
    assert_eq!(
        node.conf_names(),
        ["10-calico.conflist", "meshcap-cni.kubeconfig"]
    );
}

#[test]
fn a_symlinked_conflist_is_edited_through_the_link() {
    let node = Node::new("symlink");
    // The owner keeps its list elsewhere and links it, as some CNIs' config maps do.
    let owner = node.root.join("owner");
    std::fs::create_dir(&owner).unwrap();
    let real = owner.join("calico.conflist");
    std::fs::write(&real, CALICO).unwrap();
    let link = node.conf.join("10-calico.conflist");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let is_link = |path: &Path| {
        std::fs::symlink_metadata(path)
            .unwrap()
            .file_type()
            .is_symlink()
    };

    assert_success(&node.install(&[]));
    assert!(is_link(&link));
    assert_eq!(meshcap_stanzas(&node.json("10-calico.conflist")), 1);
    assert_eq!(names(&owner), ["calico.conflist"]);

    // The watcher follows the owner rewriting the target.
    let watcher = node.watch(&[]);
    let newer = CALICO.replace("1440", "1450");
    let temp = owner.join(".calico.tmp");
    std::fs::write(&temp, &newer).unwrap();
    std::fs::rename(&temp, &real).unwrap();
    let repaired = wait_for("the stanza back in the link's target", || {
        node.with_stanza("10-calico.conflist")
            .filter(|d| d["plugins"][0]["mtu"] == 1450)
    });
    assert_eq!(repaired["plugins"][2], stanza());
    assert!(is_link(&link));

    let (status, stderr) = watcher.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(is_link(&link));
    assert_eq!(std::fs::read_to_string(&real).unwrap(), newer);
    assert_eq!(node.conf_names(), ["10-calico.conflist"]);
    assert_eq!(names(&owner), ["calico.conflist"]);
}

#[test]
fn a_symlinked_single_conf_is_refused_not_replaced() {
    let node = Node::new("symlink-conf");
    let real = node.root.join("bridge.conf");
    std::fs::write(&real, BRIDGE_CONF).unwrap();
    std::os::unix::fs::symlink(&real, node.conf.join("10-bridge.conf")).unwrap();
    let stderr = failure(node.install(&[]), 1);
    assert!(stderr.contains("symlink"), "{stderr}");
    assert_eq!(node.conf_names(), ["10-bridge.conf"]);
    assert_eq!(std::fs::read_to_string(&real).unwrap(), BRIDGE_CONF);
}

#[test]
fn uninstall_after_a_foreign_change_keeps_the_change() {
    let node = Node::new("foreign");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&[]));
    let mut changed = node.json("10-calico.conflist");
    changed["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    changed["cniVersion"] = json!("1.0.0");
    node.replace(
        "10-calico.conflist",
        &serde_json::to_string(&changed).unwrap(),
    );

    assert_success(&node.uninstall());
    let mut expected: Value = serde_json::from_str(CALICO).unwrap();
    expected["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    expected["cniVersion"] = json!("1.0.0");
    assert_eq!(node.json("10-calico.conflist"), expected);
}

#[test]
fn uninstall_skips_a_malformed_file_and_cleans_the_others() {
    let node = Node::new("uninstall-malformed");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&[]));
    node.write("00-broken.conflist", "{\"plugins\": [");
    let output = node.uninstall();
    assert_success(&output);
    assert!(String::from_utf8_lossy(&output.stderr).contains("00-broken.conflist"));
    assert_eq!(node.read("00-broken.conflist"), "{\"plugins\": [");
    assert_eq!(node.read("10-calico.conflist"), CALICO);
}

#[test]
fn an_empty_configuration_directory_fails_without_writing() {
    let node = Node::new("empty");
    let stderr = failure(node.install(&[]), 1);
    assert!(stderr.contains("no network configuration"), "{stderr}");
    assert!(stderr.contains("--watch"), "{stderr}");
    assert!(node.conf_names().is_empty());
    assert!(names(&node.bin).is_empty());
}

#[test]
fn a_missing_configuration_directory_fails_naming_it() {
    let node = Node::new("missing");
    std::fs::remove_dir(&node.conf).unwrap();
    let stderr = failure(node.install(&[]), 1);
    assert!(stderr.contains("CNI configuration directory"), "{stderr}");
    assert!(stderr.contains(&*node.conf.to_string_lossy()), "{stderr}");
    assert!(names(&node.bin).is_empty());
    let stderr = failure(node.uninstall(), 1);
    assert!(stderr.contains(&*node.conf.to_string_lossy()), "{stderr}");
}

#[test]
fn a_malformed_primary_network_fails_and_touches_nothing() {
    for (name, text, why) in [
        ("10-bad.conflist", "{\"plugins\": [", "not valid JSON"),
        (
            "10-bad.conf",
            "{\"name\": \"no type\"}",
            "neither \"plugins\" nor",
        ),
        ("10-bad.conflist", "{\"plugins\": {}}", "not an array"),
    ] {
        let node = Node::new("malformed");
        node.write(name, text);
        node.write("20-calico.conflist", CALICO);
        let stderr = failure(node.install(&[]), 1);
        assert!(
            stderr.contains(name) && stderr.contains(why),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("nothing was changed"), "{stderr}");
        assert_eq!(node.read(name), text);
        assert_eq!(node.read("20-calico.conflist"), CALICO);
        assert_eq!(node.conf_names(), [name, "20-calico.conflist"]);
        assert!(names(&node.bin).is_empty());
    }
}

#[test]
fn the_binary_is_copied_executable() {
    let node = Node::new("binary");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&[]));
    assert_eq!(names(&node.bin), ["meshcap-cni"]);
    assert_eq!(mode(&node.plugin()), 0o755);
    assert!(std::fs::read(node.plugin()).unwrap() == std::fs::read(MESHCAP).unwrap());
    // By its new name the copy is the plugin, as a runtime runs it.
    let mut version = Command::new(node.plugin())
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut version.stdin.take().unwrap(),
        br#"{"cniVersion": "1.0.0"}"#,
    )
    .unwrap();
    let version = version.wait_with_output().unwrap();
    assert_success(&version);
    let reply: Value = serde_json::from_slice(&version.stdout).unwrap();
    assert!(
        reply["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0"))
    );
    // A different file in its place (an older version) is replaced.
    std::fs::write(node.plugin(), "old version").unwrap();
    assert_success(&node.install(&[]));
    assert!(std::fs::read(node.plugin()).unwrap() == std::fs::read(MESHCAP).unwrap());
    assert_eq!(mode(&node.plugin()), 0o755);
}

#[test]
fn the_kubeconfig_is_root_only_and_names_the_api_server() {
    let node = Node::new("kubeconfig");
    node.write("10-calico.conflist", CALICO);
    assert_success(&node.install(&[]));
    assert_eq!(mode(&node.kubeconfig()), 0o600);
    let text = std::fs::read_to_string(node.kubeconfig()).unwrap();
    for line in [
        "    server: \"https://10.96.0.1:443\"\n",
        // base64 of the CA file the fixture writes
        "    certificate-authority-data: \"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIK\"\n",
        "    token: \"token-one\"\n",
        "    namespace: \"meshcap-system\"\n",
        "current-context: meshcap-cni\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }

    let ipv6 = node
        .command_to("install", "fd00:10:96::1")
        .output()
        .unwrap();
    assert_success(&ipv6);
    let text = std::fs::read_to_string(node.kubeconfig()).unwrap();
    assert!(
        text.contains("server: \"https://[fd00:10:96::1]:443\""),
        "{text}"
    );
}

#[test]
fn a_missing_token_fails_clearly() {
    let node = Node::new("no-token");
    node.write("10-calico.conflist", CALICO);
    std::fs::remove_file(node.account.join("token")).unwrap();
    let stderr = failure(node.install(&[]), 1);
    assert!(stderr.contains("service account token"), "{stderr}");
    assert_eq!(node.read("10-calico.conflist"), CALICO);
    assert!(names(&node.bin).is_empty());
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let node = Node::new("flags");
    node.write("10-calico.conflist", CALICO);
    let stderr = failure(node.install(&["--capture", "{\"backend\": 1}"]), 2);
    assert!(stderr.contains("--capture"), "{stderr}");
    let no_host = Command::new(MESHCAP)
        .args(["cni", "install", "--cni-conf-dir"])
        .arg(&node.conf)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .output()
        .unwrap();
    let stderr = failure(no_host, 2);
    assert!(stderr.contains("--kubernetes-service-host"), "{stderr}");
    let unknown = Command::new(MESHCAP)
        .args(["cni", "reinstall"])
        .output()
        .unwrap();
    failure(unknown, 2);
    assert_eq!(node.read("10-calico.conflist"), CALICO);
    assert!(names(&node.bin).is_empty());
}

#[test]
fn watch_repairs_the_stanza_and_the_kubeconfig_and_uninstalls_on_sigterm() {
    let node = Node::new("watch");
    node.write("10-calico.conflist", CALICO);
    let mut watcher = node.watch(&[]);
    let installed = |node: &Node| node.with_stanza("10-calico.conflist");
    wait_for("the first install", || installed(&node));
    assert!(node.kubeconfig().exists() && node.plugin().exists());

    // The primary CNI replaces its file on upgrade, without the stanza.
    node.replace("10-calico.conflist", CALICO);
    let repaired = wait_for("the stanza back after a replace", || installed(&node));
    assert_eq!(repaired["plugins"][2], stanza());

    // ... or rewrites it in place.
    node.write("10-calico.conflist", CALICO);
    wait_for("the stanza back after a rewrite", || installed(&node));

    // The kubelet rotates the token.
    node.rotate_token(2, "token-two");
    wait_for("the kubeconfig with the new token", || {
        std::fs::read_to_string(node.kubeconfig())
            .ok()
            .filter(|t| t.contains("token: \"token-two\""))
    });
    assert_eq!(mode(&node.kubeconfig()), 0o600);

    // The kubeconfig deleted by someone comes back too.
    std::fs::remove_file(node.kubeconfig()).unwrap();
    wait_for("the kubeconfig rewritten", || {
        node.kubeconfig().exists().then_some(())
    });
    watcher.assert_running();

    let (status, stderr) = watcher.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert_eq!(node.read("10-calico.conflist"), CALICO);
    assert_eq!(node.conf_names(), ["10-calico.conflist"]);
    assert!(names(&node.bin).is_empty());
}

#[test]
fn watch_waits_for_a_primary_network_and_can_keep_it_on_exit() {
    let node = Node::new("watch-wait");
    let mut watcher = node.watch(&["--keep-on-exit"]);
    // Give it something else to see first: a file that is no network configuration.
    node.write("README", "not a network");
    watcher.assert_running();
    node.replace("10-bridge.conf", BRIDGE_CONF);
    wait_for("the stanza in the new network", || {
        node.with_stanza("10-bridge.conflist")
    });
    // A newer primary network appears: it gets the stanza as well.
    node.replace("05-calico.conflist", CALICO);
    wait_for("the stanza in the newer primary", || {
        node.with_stanza("05-calico.conflist")
    });

    let (status, stderr) = watcher.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("--keep-on-exit"), "{stderr}");
    assert!(node.plugin().exists() && node.kubeconfig().exists());
    // uninstall then takes the stanza out of both files (and restores the converted .conf).
    assert_success(&node.uninstall());
    assert_eq!(node.read("05-calico.conflist"), CALICO);
    assert_eq!(
        node.conf_names(),
        ["05-calico.conflist", "10-bridge.conf", "README"]
    );
    assert_eq!(node.read("10-bridge.conf"), BRIDGE_CONF);
}

#[test]
fn watch_on_a_missing_directory_fails_clearly() {
    let node = Node::new("watch-missing");
    std::fs::remove_dir(&node.conf).unwrap();
    let output = node
        .command("install")
        .arg("--watch")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = failure(output, 1);
    assert!(stderr.contains(&*node.conf.to_string_lossy()), "{stderr}");
}

/// CALICO with the first plugin's MTU set to `mtu`: one distinct version of the owner's file.
fn calico_version(mtu: u32) -> String {
    CALICO.replace("\"mtu\": 1440", &format!("\"mtu\": {mtu}"))
}

/// The file's document once it holds the stanza and is the owner's version `mtu`.
fn version_with_stanza(node: &Node, name: &str, mtu: u32) -> Option<Value> {
    node.with_stanza(name)
        .filter(|d| d["plugins"][0]["mtu"] == mtu)
}

#[test]
fn a_rewrite_1ms_after_another_is_never_reverted() {
    let node = Node::new("race-1ms");
    let name = "10-calico.conflist";
    node.write(name, CALICO);
    let mut watcher = node.watch(&[]);
    wait_for("the first install", || node.with_stanza(name));
    for trial in 0..100 {
        // The owner writes twice in a row, the watcher wakes up on the first write and may be
        // editing it when the second lands.
        let (first, second) = (10_000 + trial, 20_000 + trial);
        node.replace(name, &calico_version(first));
        std::thread::sleep(Duration::from_millis(1));
        node.replace(name, &calico_version(second));
        // A reverted second write would leave the first one with the stanza for good.
        let settled = wait_for("the second write with the stanza", || {
            version_with_stanza(&node, name, second)
        });
        assert_eq!(settled["plugins"][2], stanza(), "trial {trial}");
    }
    watcher.assert_running();
    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert_eq!(node.read(name), calico_version(20_099));
    assert_eq!(node.conf_names(), [name]);
}

#[test]
fn a_writer_renaming_in_a_tight_loop_keeps_its_last_version() {
    let node = Node::new("race-loop");
    let name = "10-calico.conflist";
    node.write(name, CALICO);
    let mut watcher = node.watch(&[]);
    wait_for("the first install", || node.with_stanza(name));
    // Another writer (the primary CNI's installer) rewrites its file as fast as it can,
    // each version by a rename, while the watcher keeps putting the stanza back.
    const VERSIONS: u32 = 3000;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for mtu in 1..=VERSIONS {
                node.replace(name, &calico_version(mtu));
            }
        });
    });
    let last = wait_for("the writer's last version with the stanza", || {
        version_with_stanza(&node, name, VERSIONS)
    });
    assert_eq!(last["plugins"].as_array().unwrap().len(), 3);
    watcher.assert_running();
    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert_eq!(node.read(name), calico_version(VERSIONS));
    assert_eq!(node.conf_names(), [name]);
}

#[test]
fn two_watchers_with_different_stanzas_converge_on_the_newer() {
    let node = Node::new("two-watchers");
    let name = "10-calico.conflist";
    node.write(name, CALICO);
    let backend = |node: &Node, backend: &'static str| {
        node.with_stanza(name)
            .filter(|d| d["plugins"][2]["capture"]["backend"] == backend)
    };
    let mut older = node.watch(&["--capture", r#"{"backend": "iptables"}"#]);
    wait_for("the older watcher's stanza", || backend(&node, "iptables"));
    let mut newer = node.watch(&["--capture", r#"{"backend": "nftables"}"#]);
    wait_for("the newer watcher's stanza", || backend(&node, "nftables"));
    wait_for("the older watcher to yield", || {
        older.log().contains("keeps the node").then_some(())
    });

    // Neither rewrites the file any more, within seconds: the same inode and bytes for a
    // whole second (two watchers taking turns rewrite it hundreds of times a second).
    let identity = |node: &Node| {
        let path = node.conf.join(name);
        (std::fs::metadata(&path).unwrap().ino(), node.read(name))
    };
    let settled = wait_for("the file to stay the same for a second", || {
        let before = identity(&node);
        std::thread::sleep(Duration::from_secs(1));
        (identity(&node) == before).then_some(before)
    });
    let settled: Value = serde_json::from_str(&settled.1).unwrap();
    assert_eq!(settled["plugins"][2]["capture"]["backend"], "nftables");
    older.assert_running();
    newer.assert_running();

    // The owner's rewrite is repaired, by the newer one only.
    node.replace(name, CALICO);
    wait_for("the newer stanza back", || backend(&node, "nftables"));

    // The newer one leaves (uninstalling): the older one takes the node over.
    let (status, log) = newer.terminate();
    assert!(status.success(), "{status:?}: {log}");
    wait_for("the older watcher's stanza again", || {
        backend(&node, "iptables")
    });
    assert!(older.log().contains("claiming the node"), "{}", older.log());
    let (status, log) = older.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert_eq!(node.read(name), CALICO);
    assert_eq!(node.conf_names(), [name]);
    assert!(names(&node.bin).is_empty());
}

#[test]
fn an_older_watcher_leaves_the_node_installed_on_sigterm() {
    // A DaemonSet rollout with surge: the new pod starts, then the old one is terminated.
    let node = Node::new("rollout");
    let name = "10-calico.conflist";
    node.write(name, CALICO);
    let old = node.watch(&[]);
    wait_for("the old pod's install", || node.with_stanza(name));
    let new = node.watch(&["--exclude-namespaces", "kube-system,istio-system"]);
    let new_stanza = |node: &Node| {
        node.with_stanza(name)
            .filter(|d| d["plugins"][2]["kubernetes"]["exclude_namespaces"][1] == "istio-system")
    };
    wait_for("the new pod's stanza", || new_stanza(&node));
    wait_for("the old pod to yield", || {
        old.log().contains("keeps the node").then_some(())
    });
    let (status, log) = old.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("not uninstalling"), "{log}");
    // It removed nothing (the new one would have put it back, but pods started meanwhile
    // would have run without capture).
    assert!(!log.contains("removed"), "{log}");
    assert!(node.plugin().exists() && node.kubeconfig().exists());
    wait_for("the new pod's stanza, kept", || new_stanza(&node));
    let (status, log) = new.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert_eq!(node.read(name), CALICO);
}

#[test]
fn a_killed_newer_watcher_is_taken_over() {
    let node = Node::new("killed-watcher");
    let name = "10-calico.conflist";
    node.write(name, CALICO);
    let older = node.watch(&[]);
    wait_for("the older watcher's install", || node.with_stanza(name));
    let newer = node.watch(&["--capture", r#"{"backend": "nftables"}"#]);
    wait_for("the older watcher to yield", || {
        older.log().contains("keeps the node").then_some(())
    });
    newer.kill();
    // The owner rewrites its file: only the older watcher is left to repair it, once it sees
    // the newer one's claim is a dead installer's (on this change, or at the latest at the
    // periodic re-check).
    node.replace(name, CALICO);
    let repaired = wait_for("the older watcher's stanza", || {
        node.with_stanza(name)
            .filter(|d| d["plugins"][2].get("capture").is_none())
    });
    assert_eq!(repaired["plugins"][2], stanza());
    assert!(older.log().contains("is gone"), "{}", older.log());
    let (status, log) = older.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert_eq!(node.read(name), CALICO);
    // The killed one may have died in the middle of a write: its temporary file goes with the
    // first pass that sees it unlocked and a few seconds old.
    wait_for("the killed watcher's leftovers removed", || {
        assert_success(&node.uninstall());
        (node.conf_names() == [name]).then_some(())
    });
}
