//! `meshcap ambient agent` as the node's agent, in throwaway namespaces, with the ztunnel
//! stand-in: enrolment through its control socket (what the CNI plugin will do at ADD and DEL)
//! with real traffic, ztunnel absent (the ADD fails and nothing stays), a bad annotation, the
//! agent restarting (ztunnel reconnects and gets the enrolled pod in a fresh snapshot; the
//! pod's traffic keeps flowing), and DEL removing the rules and the probe-set entry. Needs root.

mod ambient_common;
mod common;

use ambient_common::standin::Ztunnel;
use ambient_common::{
    APP, AgentPaths, PROBE_V6, TempDir, Topology, fetch, start_agent, stop_agent,
};
use meshcap::ambient::ipset;
use netns_test_harness::{Netns, require_root};
use std::net::IpAddr;
use std::path::Path;
use std::process::Output;

fn enroll(control: &Path, pod: &Netns, annotations: &[&str]) -> Output {
    let path = pod.path();
    let mut args = vec![
        "ambient",
        "enroll",
        "--control-socket",
        control.to_str().unwrap(),
        "--uid",
        "pod-1",
        "--name",
        "productpage",
        "--pod-namespace",
        "default",
        "--service-account",
        "bookinfo",
        "--network-namespace",
        path.to_str().unwrap(),
        "--ip",
        "192.0.2.1",
        "--ip",
        "2001:db8:100::1",
    ];
    for a in annotations {
        args.extend(["--annotation", a]);
    }
    ambient_common::meshcap(&args)
}

fn in_probe_set(node: &Netns) -> (bool, bool) {
    let (v4, v6): (IpAddr, IpAddr) = (
        "192.0.2.1".parse().unwrap(),
        "2001:db8:100::1".parse().unwrap(),
    );
    node.run(move || {
        (
            ipset::contains("istio-inpod-probes-v4", v4).unwrap(),
            ipset::contains("istio-inpod-probes-v6", v6).unwrap(),
        )
    })
}

fn has_rules(pod: &Netns) -> bool {
    pod.exec_ok(&["iptables-save"]).contains("ISTIO_")
}

#[test]
fn the_agent_enrolls_through_its_control_socket_and_survives_restarts() {
    let test = "the_agent_enrolls_through_its_control_socket_and_survives_restarts";
    if !require_root(test) {
        return;
    }
    let net = Topology::new("ambag");
    let (pod, node) = (&net.pod, &net.node);
    let dir = TempDir::new("agent");
    let paths = AgentPaths::in_dir(&dir.0);
    let ipv6 = ["--ambient-ipv6", "--host-probe-snat-ipv6", PROBE_V6];
    let agent = start_agent(node, &paths, &ipv6);
    // The node's rule is in as soon as the agent runs.
    assert!(
        node.exec_ok(&["iptables-save", "-t", "nat"])
            .contains("-A POSTROUTING -j ISTIO_POSTRT")
    );

    // No ztunnel: the ADD fails closed, and nothing of the pod stays behind.
    let out = enroll(&paths.control, pod, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("ztunnel is not connected"),
        "{}",
        common::text(&out)
    );
    assert!(!has_rules(pod), "{}", pod.dump_rulesets());
    assert_eq!(in_probe_set(node), (false, false));

    // A bad annotation: exit 2, naming it.
    let out = enroll(
        &paths.control,
        pod,
        &["ambient.istio.io/dns-capture=sometimes"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(common::text(&out).contains("ambient.istio.io/dns-capture"));

    // With ztunnel: the ADD returns once the rules are in and ztunnel has acknowledged.
    let ztunnel = Ztunnel::start(paths.zds.clone());
    assert_eq!(ztunnel.wait_for(1), ["snapshot []"]);
    // The agent's own namespace (the node's) is never a pod's: refused, the node untouched.
    let out = enroll(&paths.control, node, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(!node.exec_ok(&["iptables-save"]).contains("ISTIO_OUTPUT"));
    let out = enroll(&paths.control, pod, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(ztunnel.log(), ["snapshot []", "add pod-1"]);
    assert!(has_rules(pod));
    assert_eq!(in_probe_set(node), (true, true));
    let outbound = "ztunnel-outbound 198.51.100.10:80 | direct server 198.51.100.10:80";
    assert_eq!(fetch(pod, Some(APP), "198.51.100.10:80"), outbound);
    assert_eq!(
        fetch(node, None, "[2001:db8:100::1]:8080"),
        format!("app [2001:db8:100::1]:8080 from {PROBE_V6}"),
        "the kubelet's probe"
    );

    // The agent restarts: it takes the pod back from its state, ztunnel reconnects and gets it
    // in a fresh snapshot; the pod's traffic keeps flowing.
    stop_agent(agent);
    let agent = start_agent(node, &paths, &ipv6);
    assert_eq!(
        ztunnel.wait_for(3),
        ["snapshot []", "add pod-1", "snapshot [\"pod-1\"]"]
    );
    assert_eq!(fetch(pod, Some(APP), "198.51.100.10:80"), outbound);

    // DEL: ztunnel lets go, the rules and the probe-set entries go, the state forgets the pod.
    let control = paths.control.to_str().unwrap();
    let unenroll = || {
        let args = [
            "ambient",
            "unenroll",
            "--control-socket",
            control,
            "--uid",
            "pod-1",
        ];
        let out = ambient_common::meshcap(&args);
        assert!(out.status.success(), "{}", common::text(&out));
    };
    unenroll();
    assert_eq!(ztunnel.log().last().map(String::as_str), Some("del pod-1"));
    assert!(!has_rules(pod), "{}", pod.dump_rulesets());
    assert!(!pod.exec_ok(&["ip", "rule"]).contains("0x111/0xfff"));
    assert_eq!(in_probe_set(node), (false, false));
    let state = std::fs::read_to_string(paths.state.join("pods.json")).unwrap();
    assert_eq!(state.trim(), "[]");
    // A second DEL is fine.
    unenroll();
    stop_agent(agent);
    drop(ztunnel);
}
