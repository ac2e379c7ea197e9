//! `meshcap explain --kernel` and `meshcap trace` on ambient's in-pod rules, in throwaway
//! namespaces, with the rules installed by `meshcap ambient pod` (iptables, and nftables over
//! netlink):
//! - explain finds ambient's rules by itself, names ztunnel's ports and why a connection is left
//!   alone, and agrees with the plan's explain in the same backend's spelling (the full probe
//!   table, against real traffic, is in tests/ambient_behaviour.rs);
//! - read back, the rules are the plan's (no drift); with one of the nftables rules deleted,
//!   explain --kernel reports that drift first and explains the rules the kernel holds;
//! - trace follows real connections: from the app out (captured-outbound 15001, to a listener
//!   standing in for ztunnel), one of ztunnel's own (marked 0x539: direct (ztunnel's own)), and
//!   from a peer in: to the app's port (captured-inbound 15006), to 15008 (direct (HBONE
//!   15008)) and from the probe address 169.254.7.127 (direct (kubelet probe)).
//!
//! Needs root.

mod ambient_common;
mod common;

use common::MESHCAP;
use netns_test_harness::{Netns, Process, require_root};
use socket2::{Domain, SockAddr, Socket, Type};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Outside the pod, over its default route: nothing answers there.
const DESTINATION: &str = "198.51.100.10:80";
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Iptables,
    Nftables,
}

/// A pod (192.0.2.1 on `net0`) with a default route to a peer, and ambient's rules.
struct Site {
    pod: Netns,
    peer: Netns,
}

fn site(tag: &str, backend: Backend) -> Site {
    let pod = Netns::new(tag);
    let peer = Netns::new(&format!("{tag}x"));
    pod.link_named(&peer, "net0", "peer0", &["192.0.2.1/24"], &["192.0.2.2/24"]);
    pod.ip_batch(&["route add default via 192.0.2.2".to_owned()]);
    let path = pod.path().display().to_string();
    let mut args = vec!["ambient", "pod", "--network-namespace", &path];
    args.extend(backend_args(backend));
    let out = ambient_common::meshcap(&args);
    assert!(out.status.success(), "{}", common::text(&out));
    Site { pod, peer }
}

fn backend_args(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Iptables => &[],
        Backend::Nftables => &["--backend", "nftables"],
    }
}

/// `meshcap explain --json` of `flows`, on the kernel's rules (`kernel`) or the plan's in
/// `backend`'s spelling.
fn explain(pod: &Netns, backend: Backend, kernel: bool, flows: &[&str]) -> Vec<serde_json::Value> {
    let path = pod.path().display().to_string();
    let mut args = vec!["explain", "--json"];
    if kernel {
        args.extend(["--kernel", "--network-namespace", &path]);
    } else {
        args.push("--ambient");
        args.extend(backend_args(backend));
    }
    for flow in flows {
        args.extend(["--flow", flow]);
    }
    let out = ambient_common::meshcap(&args);
    assert!(out.status.success(), "{}", common::text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const FLOWS: [(&str, &str); 7] = [
    ("dir=out dst=198.51.100.10:80", "captured-outbound 15001"),
    (
        "dir=out dst=198.51.100.10:80 mark=0x539",
        "direct (ztunnel's own)",
    ),
    (
        "dir=in dst=192.0.2.1:8080 iif=net0",
        "captured-inbound 15006",
    ),
    (
        "dir=in dst=192.0.2.1:15008 iif=net0",
        "direct (HBONE 15008)",
    ),
    (
        "dir=in dst=192.0.2.1:8080 iif=net0 src=169.254.7.127",
        "direct (kubelet probe)",
    ),
    ("dir=out dst=192.0.2.1:8080 oif=lo", "direct (by lo)"),
    ("dir=out proto=udp dst=192.0.2.53:53", "direct"),
];

#[test]
fn explain_on_the_kernels_ambient_rules_names_ztunnels_ports() {
    if !require_root("explain_on_the_kernels_ambient_rules_names_ztunnels_ports") {
        return;
    }
    let flows: Vec<&str> = FLOWS.iter().map(|(f, _)| *f).collect();
    for backend in [Backend::Iptables, Backend::Nftables] {
        let site = site("ambexp", backend);
        let kernel = explain(&site.pod, backend, true, &flows);
        let plan = explain(&site.pod, backend, false, &flows);
        for (((flow, want), k), p) in FLOWS.iter().zip(&kernel).zip(&plan) {
            assert_eq!(k["verdict"], *want, "{backend:?} kernel: {flow}: {k}");
            assert_eq!(p["verdict"], *want, "{backend:?} plan: {flow}");
            let spelling = format!("{backend:?} spelling").to_lowercase();
            assert!(p["rules"].as_str().unwrap().contains(&spelling), "{p}");
            let rules = k["rules"].as_str().unwrap();
            assert!(rules.contains("ambient rules installed by"), "{rules}");
            if k["port"].is_number() {
                assert!(k["decided_by"]["rule"].is_string(), "{k}");
            }
        }
        // Read back by the backend that installed them, they are the plan's: no drift.
        assert_eq!(kernel[0]["drift"], serde_json::json!([]), "{}", kernel[0]);
    }
}

/// The handle of the rule of `chain` in ambient's nat table whose text holds `what`.
fn nat_rule_handle(pod: &Netns, chain: &str, what: &str) -> String {
    let listed = pod.exec_ok(&[
        "nft",
        "-a",
        "list",
        "chain",
        "inet",
        "istio-ambient-nat",
        chain,
    ]);
    let line = listed
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no rule with {what}:\n{listed}"));
    line.rsplit("# handle ").next().unwrap().trim().to_owned()
}

#[test]
fn explain_reports_drift_of_the_kernels_nftables_rules_from_the_plan() {
    if !require_root("explain_reports_drift_of_the_kernels_nftables_rules_from_the_plan") {
        return;
    }
    let site = site("ambdrift", Backend::Nftables);
    let inbound = "dir=in dst=192.0.2.1:8080 iif=net0";
    let handle = nat_rule_handle(&site.pod, "istio-prerouting", "redirect to :15006");
    site.pod.exec_ok(&[
        "nft",
        "delete",
        "rule",
        "inet",
        "istio-ambient-nat",
        "istio-prerouting",
        "handle",
        &handle,
    ]);
    let kernel = explain(&site.pod, Backend::Nftables, true, &[inbound]);
    let drift: Vec<&str> = kernel[0]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        drift
            .iter()
            .any(|l| l.starts_with("nftables: ") && l.contains("redirect to :15006")),
        "{drift:#?}"
    );
    // The kernel's rules, as they are: inbound is no longer captured.
    assert_eq!(kernel[0]["verdict"], "direct", "{}", kernel[0]);
    let path = site.pod.path().display().to_string();
    let out = ambient_common::meshcap(&[
        "explain",
        "--kernel",
        "--network-namespace",
        &path,
        "--flow",
        inbound,
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let differ = text
        .find("the kernel's rules differ from the plan")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(differ < text.find("flow ").unwrap(), "{text}");
}

fn has_trace_table(ns: &Netns) -> bool {
    ns.exec_ok(&["nft", "list", "tables"])
        .lines()
        .any(|l| l.trim() == "table inet meshcap-trace")
}

/// Starts `trace --count 1` for TCP to `dst` and waits until it listens.
fn start_trace(pod: &Netns, dst: &str) -> Process {
    let dst = format!("dst={dst}");
    let trace = pod.spawn(
        &[
            MESHCAP,
            "trace",
            "--count",
            "1",
            "--timeout",
            "2m",
            "proto=tcp",
            &dst,
        ],
        None,
    );
    let start = Instant::now();
    while !has_trace_table(pod) {
        assert!(start.elapsed() < PATIENCE, "trace never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    trace
}

fn verdict_line(printed: &str) -> &str {
    printed
        .lines()
        .find(|l| l.starts_with("verdict packet 1:"))
        .unwrap_or_else(|| panic!("no verdict line:\n{printed}"))
}

#[test]
fn trace_names_ztunnels_ports_for_real_connections() {
    if !require_root("trace_names_ztunnels_ports_for_real_connections") {
        return;
    }
    for backend in [Backend::Iptables, Backend::Nftables] {
        let site = site("ambtrc", backend);
        let pod = &site.pod;
        // The app's connection out reaches ztunnel's outbound listener (a stand-in).
        let listener = pod.run(|| TcpListener::bind("0.0.0.0:15001").expect("listen on 15001"));
        let trace = start_trace(pod, DESTINATION);
        let connected = pod.run(|| {
            TcpStream::connect_timeout(&DESTINATION.parse().unwrap(), Duration::from_secs(20))
        });
        assert!(
            connected.is_ok(),
            "{backend:?}: not captured: {connected:?}"
        );
        let printed = common::text(&trace.wait());
        drop(listener);
        let line = verdict_line(&printed);
        assert!(
            line.contains("captured by") && line.ends_with("=> captured-outbound 15001"),
            "{backend:?}:\n{printed}"
        );
        // ztunnel's own connection (mark 0x539) goes out untouched (nothing answers there).
        let trace = start_trace(pod, DESTINATION);
        pod.run(|| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.set_mark(0x539).unwrap();
            let dst: SocketAddr = DESTINATION.parse().unwrap();
            let _ = socket.connect_timeout(&SockAddr::from(dst), Duration::from_millis(500));
        });
        let printed = common::text(&trace.wait());
        let line = verdict_line(&printed);
        assert!(
            line.contains("not captured") && line.ends_with("=> direct (ztunnel's own)"),
            "{backend:?}:\n{printed}"
        );
        // From a peer: to the app's port (captured to ztunnel's inbound stand-in), to 15008
        // (ztunnel's HBONE listener, direct), and from the probe address (the kubelet's probe,
        // reaching the app).
        let listeners: Vec<TcpListener> = ["0.0.0.0:15006", "0.0.0.0:15008", "0.0.0.0:8080"]
            .into_iter()
            .map(|at| pod.run(move || TcpListener::bind(at).expect("listen")))
            .collect();
        site.peer
            .ip_batch(&["addr add 169.254.7.127/32 dev lo".to_owned()]);
        for (dst, src, want) in [
            ("192.0.2.1:8080", None, "=> captured-inbound 15006"),
            ("192.0.2.1:15008", None, "=> direct (HBONE 15008)"),
            (
                "192.0.2.1:8080",
                Some("169.254.7.127"),
                "=> direct (kubelet probe)",
            ),
        ] {
            let trace = start_trace(pod, dst);
            let connected = site.peer.run(move || {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                if let Some(src) = src {
                    let src: SocketAddr = format!("{src}:0").parse().unwrap();
                    socket.bind(&SockAddr::from(src)).unwrap();
                }
                let dst: SocketAddr = dst.parse().unwrap();
                socket.connect_timeout(&SockAddr::from(dst), Duration::from_secs(20))
            });
            let printed = common::text(&trace.wait());
            assert!(
                connected.is_ok(),
                "{backend:?} {dst} from {src:?}: {connected:?}"
            );
            let line = verdict_line(&printed);
            assert!(
                line.ends_with(want),
                "{backend:?} {dst} from {src:?}:\n{printed}"
            );
        }
        drop(listeners);
    }
}
