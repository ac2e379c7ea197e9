//! `meshcap ambient agent` as the node's agent, in throwaway namespaces, with the ztunnel
//! stand-in: enrolment through its control socket (what the CNI plugin will do at ADD and DEL)
//! with real traffic, ztunnel absent (the ADD fails and nothing stays), a bad annotation, the
//! agent restarting (ztunnel reconnects and gets the enrolled pod in a fresh snapshot; the
//! pod's traffic keeps flowing), and DEL removing the rules and the probe-set entry. Once per
//! backend: iptables (ipsets), and nftables over netlink (nft sets). Needs root.

mod ambient_common;
mod common;

use ambient_common::standin::Ztunnel;
use ambient_common::{
    APP, AgentPaths, PROBE_V6, TempDir, Topology, fetch, start_agent, stop_agent,
};
use meshcap::ambient::apply::ProbeSets;
use netns_test_harness::{Netns, require_root};
use std::net::IpAddr;
use std::path::Path;
use std::process::Output;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Iptables,
    Nftables,
}

/// The agent's flags for a backend: IPv6 on; nftables' node rule matches the kubelet's uid,
/// and the test's probe comes from root.
fn agent_flags(backend: Backend) -> Vec<&'static str> {
    let mut flags = vec!["--ambient-ipv6", "--host-probe-snat-ipv6", PROBE_V6];
    if backend == Backend::Nftables {
        flags.extend(["--backend", "nftables", "--kubelet-uid", "0"]);
    }
    flags
}

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

fn in_probe_set(node: &Netns, backend: Backend) -> (bool, bool) {
    let sets = match backend {
        Backend::Iptables => ProbeSets::Ipset,
        Backend::Nftables => ProbeSets::Nftables,
    };
    let (v4, v6): (IpAddr, IpAddr) = (
        "192.0.2.1".parse().unwrap(),
        "2001:db8:100::1".parse().unwrap(),
    );
    node.run(move || {
        (
            sets.contains("istio-inpod-probes-v4", v4).unwrap(),
            sets.contains("istio-inpod-probes-v6", v6).unwrap(),
        )
    })
}

/// Any of ambient's rules, in either backend's tables.
fn has_rules(pod: &Netns) -> bool {
    pod.exec_ok(&["iptables-save"]).contains("ISTIO_")
        || pod
            .exec_ok(&["nft", "list", "ruleset"])
            .contains("istio-ambient")
}

#[test]
fn the_agent_enrolls_through_its_control_socket_and_survives_restarts() {
    let test = "the_agent_enrolls_through_its_control_socket_and_survives_restarts";
    if !require_root(test) {
        return;
    }
    run(Backend::Iptables, "ambag");
}

#[test]
fn the_nftables_agent_enrolls_and_lets_go_over_netlink() {
    let test = "the_nftables_agent_enrolls_and_lets_go_over_netlink";
    if !require_root(test) {
        return;
    }
    run(Backend::Nftables, "ambagn");
}

fn run(backend: Backend, tag: &str) {
    let net = Topology::new(tag);
    let (pod, node) = (&net.pod, &net.node);
    let dir = TempDir::new("agent");
    let paths = AgentPaths::in_dir(&dir.0);
    let agent = start_agent(node, &paths, &agent_flags(backend));
    // The node's rule is in as soon as the agent runs.
    match backend {
        Backend::Iptables => assert!(
            node.exec_ok(&["iptables-save", "-t", "nat"])
                .contains("-A POSTROUTING -j ISTIO_POSTRT")
        ),
        Backend::Nftables => {
            let listed = node.exec_ok(&["nft", "list", "ruleset"]);
            assert!(
                listed.contains("meta skuid 0 ip daddr @istio-inpod-probes-v4"),
                "{listed}"
            );
            assert!(!node.exec_ok(&["iptables-save"]).contains("ISTIO_"));
        }
    }

    // No ztunnel: the ADD fails closed, and nothing of the pod stays behind.
    let out = enroll(&paths.control, pod, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("ztunnel is not connected"),
        "{}",
        common::text(&out)
    );
    assert!(!has_rules(pod), "{}", pod.dump_rulesets());
    assert_eq!(in_probe_set(node, backend), (false, false));

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
    if backend == Backend::Nftables {
        assert!(!pod.exec_ok(&["iptables-save"]).contains("ISTIO_"));
    }
    assert_eq!(in_probe_set(node, backend), (true, true));
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
    let agent = start_agent(node, &paths, &agent_flags(backend));
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
    assert_eq!(in_probe_set(node, backend), (false, false));
    let state = std::fs::read_to_string(paths.state.join("pods.json")).unwrap();
    assert_eq!(state.trim(), "[]");
    // A second DEL is fine.
    unenroll();
    stop_agent(agent);
    drop(ztunnel);
}
