//! The namespace session seen from outside (src/backend/session.rs):
//!
//! - nothing is left behind: the installer and the plugin, run in a private mount namespace whose
//!   /run and /tmp are fresh, empty file systems, create no file there (the lock is an abstract
//!   socket of the pod's network namespace);
//! - bounded waits: ADD while another process holds the xtables lock, or meshcap's own lock of
//!   the pod, ends by itself with code 11 naming what it waited for;
//! - a CNI_NETNS that is the plugin's own namespace is refused, and nothing is installed there.
//!
//! The machine's own /run/xtables.lock is never touched: the helper that holds "the" xtables
//! lock holds the private one of the private mount namespace.

mod common;

use common::cni::{CniNode, interception_state, stdout_json};
use netns_test_harness::{Netns, require_root};
use serde_json::{Value, json};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn stanza(capture: Value) -> Value {
    json!({"type": "meshcap-cni", "capture": capture})
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `script` with `sh -e` in a private mount namespace where /run and /tmp are fresh tmpfs
/// mounts (the machine's stay untouched). The node's and the pod's network namespaces are open
/// on fds 3 and 4 before the mounts hide /run/netns: `$NODE` and `$POD` name them
/// (/proc/self/fd/N, valid in every process the script starts). `$MESHCAP` is the binary,
/// `$PLUGIN` a link to it by the plugin's name (on a third tmpfs, /mnt), and `vars` more
/// environment.
fn in_private_run(node: &CniNode, pod: &Netns, vars: &[(&str, String)], script: &str) -> Output {
    let prologue = format!(
        "exec 3<{node} 4<{pod}\n\
         mount -t tmpfs meshcap-test-bin /mnt\n\
         mount -t tmpfs meshcap-test-tmp /tmp\n\
         mount -t tmpfs meshcap-test-run /run\n\
         ln -s \"$MESHCAP\" /mnt/meshcap-cni\n\
         NODE=/proc/self/fd/3 POD=/proc/self/fd/4 PLUGIN=/mnt/meshcap-cni\n",
        node = node.host.path().display(),
        pod = pod.path().display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!("{prologue}{script}"))
        .env("MESHCAP", common::MESHCAP)
        .stdin(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run unshare")
}

/// The CNI variables of `command` for the pod at fd 4, as shell assignments.
const CNI_VARS: &str = "CNI_CONTAINERID=c1 CNI_IFNAME=eth0 CNI_PATH=/nonexistent CNI_NETNS=$POD";

#[test]
fn installer_and_plugin_leave_no_file_in_run_or_tmp() {
    if !require_root("installer_and_plugin_leave_no_file_in_run_or_tmp") {
        return;
    }
    for backend in ["iptables", "nftables"] {
        let node = CniNode::new("left");
        let pod = Netns::new("leftpod");
        let conf = CniNode::config("1.0.0", &stanza(json!({"backend": backend})), None);
        let installer = common::cni::ISTIO_CNI_FLAGS.join("' '");
        let script = format!(
            "touch /run/xtables.lock\n\
             nsenter --net=$NODE \"$MESHCAP\" '{installer}' --backend {backend} --network-namespace $POD\n\
             nsenter --net=$NODE \"$MESHCAP\" diff '{installer}' --backend {backend} --network-namespace $POD\n\
             nsenter --net=$NODE \"$MESHCAP\" --cleanup-only '{installer}' --backend {backend} --network-namespace $POD\n\
             for command in ADD CHECK DEL; do\n\
               echo \"$CONF\" | CNI_COMMAND=$command {CNI_VARS} nsenter --net=$NODE \"$PLUGIN\"\n\
             done\n\
             echo LEFT:\n\
             find /run /tmp -mindepth 1 ! -path /run/xtables.lock\n"
        );
        let out = in_private_run(&node, &pod, &[("CONF", conf.to_string())], &script);
        assert!(out.status.success(), "{backend}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let left = stdout.split("LEFT:\n").nth(1).expect("the listing");
        assert_eq!(left, "", "{backend}: files left in /run or /tmp");
        assert_eq!(interception_state(&pod), "", "{backend}: DEL left rules");
    }
}

#[test]
fn add_with_the_xtables_lock_held_ends_with_try_again_later() {
    if !require_root("add_with_the_xtables_lock_held_ends_with_try_again_later") {
        return;
    }
    let node = CniNode::new("xtlock");
    let pod = Netns::new("xtlockpod");
    let conf = CniNode::config(
        "1.0.0",
        &stanza(json!({"backend": "iptables", "force-iptables-binary": "legacy"})),
        None,
    );
    // The helper holding the (private) lock is the script's shell itself (fd 5, not passed on
    // to the plugin): it ends with the script, and with it the private mount namespace, so no
    // holder can outlive the test. `timeout` only keeps a plugin that would wait forever from
    // hanging the test: it must end by itself.
    let script = format!(
        "exec 5>>/run/xtables.lock\n\
         flock -x 5\n\
         rc=0; echo \"$CONF\" | CNI_COMMAND=ADD {CNI_VARS} timeout 120 nsenter --net=$NODE \"$PLUGIN\" 5>&- || rc=$?\n\
         echo \"RC=$rc\" >&2\n"
    );
    let started = Instant::now();
    let out = in_private_run(&node, &pod, &[("CONF", conf.to_string())], &script);
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RC=1"),
        "the plugin failed by itself: {}",
        text(&out)
    );
    let err = stdout_json(&out);
    assert_eq!(err["code"], 11, "{err}");
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("xtables lock"),
        "names the xtables lock: {err}"
    );
    println!("ADD with the xtables lock held ended after {elapsed:?}");
    // The documented bound of a whole ADD (README, "In Kubernetes"): 30 s.
    assert!(
        elapsed < Duration::from_secs(30),
        "ADD took {elapsed:?}: {}",
        text(&out)
    );
    assert_eq!(
        interception_state(&pod),
        "",
        "nothing is installed when the lock stays held"
    );
}

#[test]
fn add_while_another_meshcap_holds_the_pod_ends_with_try_again_later() {
    if !require_root("add_while_another_meshcap_holds_the_pod_ends_with_try_again_later") {
        return;
    }
    let node = CniNode::new("mclock");
    let pod = Netns::new("mclockpod");
    // Another meshcap's lock: the abstract socket bound inside the pod's namespace.
    let holder = pod.run(|| {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let addr = UnixAddr::new_abstract(b"meshcap/netns-lock").expect("address");
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).expect("take the lock");
        fd
    });
    let meshcap = stanza(json!({"backend": "nftables"}));
    let started = Instant::now();
    let (_, out) = node.add_chain("1.0.0", &pod, "c1", &meshcap);
    let elapsed = started.elapsed();
    let err = stdout_json(&out);
    assert_eq!(err["code"], 11, "{}", text(&out));
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("meshcap's lock"),
        "names meshcap's lock: {err}"
    );
    println!("ADD with meshcap's lock held ended after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "ADD took {elapsed:?}");
    assert_eq!(interception_state(&pod), "");
    // Released: the next ADD goes through.
    drop(holder);
    let vars = node.vars("ADD", "c1", Some(&pod.path()));
    let out = node.invoke(
        "meshcap-cni",
        &vars,
        &CniNode::config("1.0.0", &meshcap, None),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(interception_state(&pod), "");
}

#[test]
fn the_plugins_own_namespace_is_refused() {
    if !require_root("the_plugins_own_namespace_is_refused") {
        return;
    }
    // The plugin runs in the throwaway node namespace; /proc/self/ns/net is that namespace, so
    // the machine's own is never at risk even if the refusal failed.
    let node = CniNode::new("own");
    for backend in ["iptables", "nftables"] {
        let conf = CniNode::config("1.0.0", &stanza(json!({"backend": backend})), None);
        for command in ["ADD", "CHECK", "DEL"] {
            let mut vars = node.vars(command, "c1", None);
            vars.push(("CNI_NETNS", "/proc/self/ns/net".into()));
            let out = node.invoke("meshcap-cni", &vars, &conf);
            assert!(!out.status.success(), "{backend} {command}: {}", text(&out));
            let err = stdout_json(&out);
            assert_eq!(err["code"], 4, "{backend} {command}: {err}");
            assert!(
                err["msg"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("own network namespace"),
                "{backend} {command}: {err}"
            );
        }
        assert_eq!(
            interception_state(&node.host),
            "",
            "{backend}: nothing installed in the plugin's own namespace"
        );
    }
}
