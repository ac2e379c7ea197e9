//! The harness leaves no namespace behind: not after a test, not after a panicking test, and not
//! after a crashed run. The only test of its binary, so that the namespaces carrying this
//! process's pid are all its own.

mod common;

use common::{NO_ENV, istio_args, meshcap, ok};
use netns_test_harness::pod::Pod;
use netns_test_harness::{Netns, list_namespaces, own_namespaces, require_root};
use std::process::Command;

#[test]
fn namespaces_never_leak() {
    if !require_root("namespaces_never_leak") {
        return;
    }
    let before = own_namespaces();
    assert!(before.is_empty(), "{before:?}");

    {
        let pod = Pod::new("leak");
        let path = pod.pod.path().display().to_string();
        let args = istio_args(&[
            "--ipv6",
            "off",
            "--force-iptables-binary",
            "legacy",
            "--network-namespace",
            &path,
        ]);
        ok(&meshcap(&args, NO_ENV));
        pod.assert_table(
            "pod 1000:1000 tcp 198.51.100.10:80 -> captured-outbound 198.51.100.10:80
             peer net tcp 192.0.2.1:8080        -> captured-inbound 192.0.2.1:8080",
        );
        assert_eq!(own_namespaces().len(), 5, "{:?}", own_namespaces());
    }
    assert_eq!(own_namespaces(), before, "after a pod was dropped");

    // A failing probe panics, naming the probe and both outcomes; the pod is still removed.
    let result = std::panic::catch_unwind(|| {
        let pod = Pod::new("leakpanic");
        pod.assert_table("peer net tcp 192.0.2.1:8080 -> captured-inbound 192.0.2.1:8080");
    });
    let message = result
        .expect_err("a wrong expectation must fail")
        .downcast::<String>()
        .expect("panic message");
    assert!(
        message.contains(
            "peer net tcp 192.0.2.1:8080: expected captured-inbound 192.0.2.1:8080, observed direct app 192.0.2.1:8080"
        ),
        "{message}"
    );
    assert_eq!(own_namespaces(), before, "after a panicking test");

    // A namespace of a crashed run (its pid is gone) is removed by the next Netns::new.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");
    let stale = format!("meshcap-crashed-{dead}-0");
    let status = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip");
    assert!(status.success());
    let ns = Netns::new("fresh");
    assert!(!list_namespaces().contains(&stale), "{stale} survived");
    drop(ns);
    assert_eq!(own_namespaces(), before);
}
