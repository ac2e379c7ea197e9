//! A ztunnel stand-in end to end, in throwaway namespaces: the pod's rules installed by
//! `meshcap ambient pod` (iptables), the pod handed over by meshcap's ZDS agent side to the
//! stand-in of tests/ambient_common/standin.rs (ztunnel's listeners opened inside the pod's
//! namespace, upstream sockets marked 0x539).
//!
//! Proves with real TCP: the app's outbound connection arrives at the stand-in and its marked
//! upstream connection goes out without looping back; a peer's inbound connection arrives at
//! it and its spoofed connection to the app is answered through the connection mark and table
//! 100; 15008 is reached directly; the kubelet's probe from the node (the node's rule and probe
//! set) reaches the app from 169.254.7.127, bypassing ztunnel. IPv4 and IPv6. Needs root.

mod ambient_common;
mod common;

use ambient_common::standin::Ztunnel;
use ambient_common::{APP, PROBE_V6, TempDir, Topology, WAIT, fetch};
use meshcap::ambient::ipset;
use meshcap::ambient::zds::agent::Agent;
use meshcap::ambient::zds::messages::WorkloadInfo;
use netns_test_harness::require_root;
use std::fs::File;
use std::net::IpAddr;

fn meshcap(args: &[&str]) {
    let out = ambient_common::meshcap(args);
    assert!(
        out.status.success(),
        "meshcap {args:?}: {}",
        common::text(&out)
    );
}

/// Checks that each answer starts as expected, keeping a table of them for the failure message.
#[derive(Default)]
struct Rows(Vec<String>);

impl Rows {
    fn check(&mut self, what: &str, got: String, want: &str) {
        self.0.push(format!("{what:<36} -> {got}"));
        assert!(
            got.starts_with(want),
            "{what}: {got:?} does not start with {want:?}\n{}",
            self.0.join("\n")
        );
    }
}

#[test]
fn traffic_flows_through_the_standin_and_probes_bypass_it() {
    let test = "traffic_flows_through_the_standin_and_probes_bypass_it";
    if !require_root(test) {
        return;
    }
    let net = Topology::new("ambsi");
    let (pod, node) = (&net.pod, &net.node);
    let path = pod.path();
    let pod_path = path.to_str().unwrap();
    let v6 = ["--ambient-ipv6", "--host-probe-snat-ipv6", PROBE_V6];
    let mut args = vec!["ambient", "pod", "--network-namespace", pod_path];
    args.extend(v6);
    meshcap(&args);
    let host = |extra: &[&str]| {
        let mut argv = vec![common::MESHCAP, "ambient", "host"];
        argv.extend(v6);
        argv.extend(extra);
        node.exec_ok(&argv);
    };
    host(&[]);

    let dir = TempDir::new("standin");
    let socket = dir.0.join("ztunnel.sock");
    let agent = Agent::listen(&socket, WAIT).unwrap();
    let ztunnel = Ztunnel::start(socket.clone());
    assert!(agent.wait_connected(WAIT));
    let info = WorkloadInfo {
        name: "productpage".into(),
        namespace: "default".into(),
        service_account: "bookinfo".into(),
    };
    // Returns once the stand-in has its listeners up in the pod and has acknowledged.
    agent
        .add("pod-1", info, File::open(&path).unwrap())
        .unwrap();

    let mut rows = Rows::default();
    // Outbound: to ztunnel, and ztunnel's marked connection goes out (no loop).
    rows.check(
        "app -> 198.51.100.10:80",
        fetch(pod, Some(APP), "198.51.100.10:80"),
        "ztunnel-outbound 198.51.100.10:80 | direct server 198.51.100.10:80",
    );
    rows.check(
        "app -> [2001:db8:1::10]:80",
        fetch(pod, Some(APP), "[2001:db8:1::10]:80"),
        "ztunnel-outbound [2001:db8:1::10]:80 | direct server [2001:db8:1::10]:80",
    );
    // Inbound: to ztunnel, which reaches the app from the peer's own address.
    rows.check(
        "peer -> 192.0.2.1:8080",
        fetch(node, None, "192.0.2.1:8080"),
        "ztunnel-inbound 192.0.2.1:8080 | app 192.0.2.1:8080 from 192.0.2.2",
    );
    rows.check(
        "peer -> [2001:db8:100::1]:8080",
        fetch(node, None, "[2001:db8:100::1]:8080"),
        "ztunnel-inbound [2001:db8:100::1]:8080 | app [2001:db8:100::1]:8080 from 2001:db8:100::2",
    );
    rows.check(
        "peer -> 192.0.2.1:15008",
        fetch(node, None, "192.0.2.1:15008"),
        "ztunnel-hbone 192.0.2.1:15008",
    );
    // The kubelet's probe from the node, once the pod is in the probe set: SNATed to the probe
    // address and let through to the app (before, it went through ztunnel as any peer's).
    let addresses: [(&str, IpAddr); 2] = [
        ("istio-inpod-probes-v4", "192.0.2.1".parse().unwrap()),
        ("istio-inpod-probes-v6", "2001:db8:100::1".parse().unwrap()),
    ];
    node.run(move || {
        for (set, addr) in addresses {
            ipset::add(set, addr, Some("pod-1")).unwrap();
        }
    });
    rows.check(
        "kubelet -> 192.0.2.1:8080",
        fetch(node, None, "192.0.2.1:8080"),
        "app 192.0.2.1:8080 from 169.254.7.127",
    );
    rows.check(
        "kubelet -> [2001:db8:100::1]:8080",
        fetch(node, None, "[2001:db8:100::1]:8080"),
        &format!("app [2001:db8:100::1]:8080 from {PROBE_V6}"),
    );

    // DEL: ztunnel lets the pod go; the rules, routes and the node's rule are removed.
    agent.del("pod-1").unwrap();
    assert_eq!(
        ztunnel.wait_for(3),
        ["snapshot []", "add pod-1", "del pod-1"]
    );
    drop(ztunnel);
    drop(agent);
    meshcap(&[
        "ambient",
        "pod",
        "--cleanup",
        "--network-namespace",
        pod_path,
    ]);
    host(&["--cleanup"]);
    assert!(!pod.dump_rulesets().contains("ISTIO_"));
    eprintln!("{}", rows.0.join("\n"));
}
