//! The behaviour of ambient's in-pod rules: a probe table run against the standard pod of
//! netns-test-harness (capture listeners on 15001, 15006 and 15053 stand in for ztunnel's; the
//! app listens on 15008 as ztunnel's HBONE listener would), once per backend and DNS setting.
//! iptables and nftables must classify every probe alike, and as the table says.
//!
//! - iptables: installed by `meshcap ambient pod` (rules and policy routing).
//! - nftables: installed by `meshcap ambient pod --backend nftables` (one netlink batch of
//!   meshcap's own codec, and the same policy routing).
//!
//! Probes besides the standard ones: packets carrying ztunnel's mark (0x539) — its upstream
//! connections and DNS queries go out untouched — and ztunnel's spoofed connection to the app
//! (a transparent socket bound to the peer's address, marked): the app's answer must come back
//! to it through the connection mark and table 100, not leave the pod. Then the node's rule:
//! the kubelet's probe from the node reaches the app from the probe address once the pod's
//! address is in the probe set. Needs root.

mod ambient_common;
mod common;

use common::MESHCAP;
use meshcap::ambient::apply::ProbeSets;
use meshcap::ambient::config::{NodeSettings, PodConfig, PodOverrides};
use meshcap::ambient::plan::pod as pod_plan;
use meshcap::config::BackendKind;
use meshcap::explain::Flow;
use meshcap::explain::ambient::{expected_rules, explain};
use netns_test_harness::pod::{APP, Pod};
use netns_test_harness::probe::{Class, From, Outcome, Probe, Proto};
use netns_test_harness::{Netns, require_root};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The probe SNAT addresses: Istio's IPv4 default, and an IPv6 documentation address.
const PROBE_V4: &str = "169.254.7.127";
const PROBE_V6: &str = "2001:db8:7127::1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Iptables,
    Nftables,
}

fn meshcap(args: &[String]) -> std::process::Output {
    let out = ambient_common::meshcap(args);
    assert!(
        out.status.success(),
        "meshcap {}: {}",
        args.join(" "),
        common::text(&out)
    );
    out
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// The agent's flags of every run: IPv6, the probe addresses, DNS capture as asked.
fn settings(dns: bool) -> Vec<String> {
    let mut args = strings(&[
        "--ambient-ipv6",
        "--host-probe-snat-ip",
        PROBE_V4,
        "--host-probe-snat-ipv6",
        PROBE_V6,
    ]);
    args.push(format!("--ambient-dns-capture={dns}"));
    args
}

fn install(pod: &Pod, backend: Backend, dns: bool) {
    let mut args = strings(&["ambient", "pod"]);
    args.extend(settings(dns));
    args.extend(strings(&[
        "--annotation",
        "istio.io/reroute-virtual-interfaces=virt0",
    ]));
    if backend == Backend::Nftables {
        args.extend(strings(&["--backend", "nftables"]));
    }
    args.extend(strings(&[
        "--network-namespace",
        pod.pod.path().to_str().unwrap(),
    ]));
    meshcap(&args);
}

fn uninstall(pod: &Pod, backend: Backend) {
    let path = pod.pod.path();
    let mut args = strings(&[
        "ambient",
        "pod",
        "--cleanup",
        "--network-namespace",
        path.to_str().unwrap(),
    ]);
    if backend == Backend::Nftables {
        args.extend(strings(&["--backend", "nftables"]));
    }
    meshcap(&args);
    let left = pod.pod.dump_rulesets();
    assert!(
        !left.contains("ISTIO_") && !left.contains("istio-ambient"),
        "{left}"
    );
}

fn outcome(class: Class, seen: &str) -> Outcome {
    Outcome {
        class,
        seen: seen.to_owned(),
    }
}

fn text_outcome(token: &str) -> Outcome {
    token
        .parse()
        .unwrap_or_else(|_| outcome(Class::Error, &format!("unexpected answer {token:?}")))
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            outcome(Class::Timeout, "")
        }
        std::io::ErrorKind::ConnectionRefused => outcome(Class::Refused, "ECONNREFUSED"),
        _ => outcome(Class::Error, &e.to_string()),
    }
}

/// One of ztunnel's own connections (the stand-in's upstream socket: marked 0x539, optionally
/// transparent and bound to `spoof`, the peer whose connection ztunnel passes on).
fn ztunnel_tcp(dst: SocketAddr, spoof: Option<IpAddr>) -> Outcome {
    let attempt = || -> std::io::Result<String> {
        let mut token = String::new();
        ambient_common::standin::upstream(dst, spoof)?.read_to_string(&mut token)?;
        Ok(token)
    };
    match attempt() {
        Ok(token) => text_outcome(&token),
        Err(e) => io_outcome(&e),
    }
}

/// ztunnel's own DNS query (UDP, marked) to an upstream resolver.
fn ztunnel_udp(dst: SocketAddr, timeout: Duration) -> Outcome {
    let attempt = || -> std::io::Result<String> {
        let socket = Socket::new(Domain::for_address(dst), Type::DGRAM, None)?;
        socket.set_mark(meshcap::ambient::ZTUNNEL_MARK)?;
        socket.connect(&SockAddr::from(dst))?;
        socket.set_read_timeout(Some(timeout))?;
        let socket = std::net::UdpSocket::from(socket);
        socket.send(b"probe")?;
        let mut buf = [0u8; 512];
        let (n, from) = socket.recv_from(&mut buf)?;
        Ok(format!("{} {from}", String::from_utf8_lossy(&buf[..n])))
    };
    match attempt() {
        Ok(token) => text_outcome(&token),
        Err(e) => io_outcome(&e),
    }
}

/// A row: what was tried, and where it ended.
type Row = (String, Outcome);

/// The expected table of the in-pod rules: (probe, expected outcome) for the harness's probes.
fn standard(dns: bool) -> Vec<(Probe, Outcome)> {
    let app = From::Pod(APP);
    let net = From::peer("net");
    let parse = |o: &str| text_outcome(o);
    let dns_udp = |dst: &str| {
        if dns {
            format!("captured-dns {dst}")
        } else {
            format!("direct server {dst}")
        }
    };
    let dns_tcp = |dst: &str| {
        if dns {
            format!("captured-dns {dst}")
        } else {
            format!("captured-outbound {dst}")
        }
    };
    let rows: Vec<(Probe, String)> = vec![
        // Outbound TCP: to ztunnel's outbound port, with its original destination.
        (
            Probe::tcp(app.clone(), "198.51.100.10:80"),
            "captured-outbound 198.51.100.10:80".into(),
        ),
        (
            Probe::tcp(app.clone(), "[2001:db8:1::10]:80"),
            "captured-outbound [2001:db8:1::10]:80".into(),
        ),
        // Loopback, and the pod's own address by lo: left alone.
        (
            Probe::tcp(app.clone(), "127.0.0.1:8080"),
            "direct app 127.0.0.1:8080".into(),
        ),
        (
            Probe::tcp(app.clone(), "[::1]:8080"),
            "direct app [::1]:8080".into(),
        ),
        (
            Probe::tcp(app.clone(), "192.0.2.1:8080"),
            "direct app 192.0.2.1:8080".into(),
        ),
        (
            Probe::tcp(app.clone(), "[2001:db8:100::1]:8080"),
            "direct app [2001:db8:100::1]:8080".into(),
        ),
        // DNS over UDP and TCP: to 15053 with capture on; with it off UDP goes out, TCP is
        // outbound TCP like any other.
        (
            Probe::udp(app.clone(), "192.0.2.53:53"),
            dns_udp("192.0.2.53:53"),
        ),
        (
            Probe::udp(app.clone(), "[2001:db8::53]:53"),
            dns_udp("[2001:db8::53]:53"),
        ),
        (
            Probe::tcp(app.clone(), "192.0.2.53:53"),
            dns_tcp("192.0.2.53:53"),
        ),
        (
            Probe::tcp(app.clone(), "[2001:db8::53]:53"),
            dns_tcp("[2001:db8::53]:53"),
        ),
        // A resolver on lo: UDP stays (`! -o lo`); TCP is captured with DNS on, since Istio's
        // TCP rule exempts only 127.0.0.1 (the lo accept comes after it).
        (
            Probe::udp(app.clone(), "127.0.0.53:53"),
            "direct server 127.0.0.53:53".into(),
        ),
        (
            Probe::tcp(app.clone(), "127.0.0.53:53"),
            if dns {
                "captured-dns 127.0.0.53:53"
            } else {
                "direct server 127.0.0.53:53"
            }
            .into(),
        ),
        // Inbound: app ports to ztunnel's inbound plaintext port; 15008 (HBONE) direct.
        (
            Probe::tcp(net.clone(), "192.0.2.1:8080"),
            "captured-inbound 192.0.2.1:8080".into(),
        ),
        (
            Probe::tcp(net.clone(), "[2001:db8:100::1]:8080"),
            "captured-inbound [2001:db8:100::1]:8080".into(),
        ),
        (
            Probe::tcp(net.clone(), "192.0.2.1:15008"),
            "direct app 192.0.2.1:15008".into(),
        ),
        (
            Probe::tcp(net.clone(), "[2001:db8:100::1]:15008"),
            "direct app [2001:db8:100::1]:15008".into(),
        ),
        // From the probe SNAT address (the kubelet's probes): accepted, not captured.
        (
            Probe::tcp(net.clone(), "192.0.2.1:8080").from_addr(PROBE_V4),
            "direct app 192.0.2.1:8080".into(),
        ),
        (
            Probe::tcp(net.clone(), "[2001:db8:100::1]:8080").from_addr(PROBE_V6),
            "direct app [2001:db8:100::1]:8080".into(),
        ),
        // A rerouted virtual interface (virt0): its TCP is outbound; another one (virt1) is
        // captured as inbound, as in Istio.
        (
            Probe::tcp(From::peer("vm0"), "198.51.100.10:80"),
            "captured-outbound 198.51.100.10:80".into(),
        ),
        (
            Probe::tcp(From::peer("vm0"), "[2001:db8:1::10]:80"),
            "captured-outbound [2001:db8:1::10]:80".into(),
        ),
        (
            Probe::tcp(From::peer("vm1"), "198.51.100.10:80"),
            "captured-inbound 198.51.100.10:80".into(),
        ),
    ];
    rows.into_iter().map(|(p, o)| (p, parse(&o))).collect()
}

/// ztunnel's own traffic: (label, expected, how to run it in the pod).
type Own = (String, Outcome, Box<dyn FnOnce(Duration) -> Outcome + Send>);

/// The `--flow` words of a probe: the first packet as the rules see it.
fn flow_words(probe: &Probe) -> String {
    let proto = match probe.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let mut words = match &probe.from {
        From::Pod(_) => {
            let dst = probe.dst.ip();
            let own = ["192.0.2.1", "2001:db8:100::1"].contains(&dst.to_string().as_str());
            // The pod's own address leaves by lo.
            let oif = if dst.is_loopback() || own {
                "lo"
            } else {
                "eth0"
            };
            format!("dir=out proto={proto} dst={} oif={oif}", probe.dst)
        }
        From::Peer(role) => {
            let iface = match role.as_str() {
                "net" => "net0",
                "vm0" => "virt0",
                "vm1" => "virt1",
                other => panic!("no interface for {other}"),
            };
            format!("dir=in proto={proto} dst={} iif={iface}", probe.dst)
        }
    };
    if let Some(src) = probe.src {
        words.push_str(&format!(" src={src}"));
    }
    words
}

/// The flows of ztunnel's own rows, in [`ztunnels_own`]'s order: marked, the spoofed ones to
/// the pod's own address by lo.
fn ztunnel_flows() -> Vec<String> {
    [
        ("tcp", "198.51.100.10:80"),
        ("tcp", "[2001:db8:1::10]:80"),
        ("udp", "192.0.2.53:53"),
        ("udp", "[2001:db8::53]:53"),
        ("tcp", "192.0.2.1:8080"),
        ("tcp", "[2001:db8:100::1]:8080"),
    ]
    .iter()
    .map(|(proto, dst)| {
        let via_lo = dst.contains("192.0.2.1:") || dst.contains("2001:db8:100::1");
        let oif = if via_lo { "lo" } else { "eth0" };
        format!("dir=out proto={proto} dst={dst} oif={oif} mark=0x539")
    })
    .collect()
}

/// Every row's flow words (same order as the table).
fn all_flows(dns: bool) -> Vec<String> {
    standard(dns)
        .iter()
        .map(|(p, _)| flow_words(p))
        .chain(ztunnel_flows())
        .collect()
}

/// `meshcap explain --ambient`'s class for every row of the table, from the plan's rules in
/// `backend`'s spelling.
fn explained(dns: bool, backend: Backend) -> Vec<&'static str> {
    let plan = pod_plan(&PodConfig::new(
        &NodeSettings {
            dns_capture: dns,
            ipv6: true,
            probe_snat_v4: PROBE_V4.parse().unwrap(),
            probe_snat_v6: PROBE_V6.parse().unwrap(),
            ..NodeSettings::default()
        },
        &PodOverrides {
            virtual_interfaces: vec!["virt0".into()],
            ..PodOverrides::default()
        },
    ));
    let backend = match backend {
        Backend::Iptables => BackendKind::Iptables,
        Backend::Nftables => BackendKind::Nftables,
    };
    let rules = expected_rules(&plan, backend).unwrap();
    all_flows(dns)
        .iter()
        .map(|words| {
            explain(&rules, &words.parse::<Flow>().unwrap())
                .verdict
                .class()
        })
        .collect()
}

/// `meshcap explain --kernel`'s class for every row, from the rules the pod's namespace holds
/// (found to be ambient's by itself), the rules it says it read and their drift from the plan.
fn explained_by_kernel(pod: &Pod, dns: bool) -> (Vec<String>, String, serde_json::Value) {
    let mut args = strings(&["explain", "--kernel", "--json", "--network-namespace"]);
    args.push(pod.pod.path().display().to_string());
    args.extend(settings(dns));
    args.extend(strings(&[
        "--annotation",
        "istio.io/reroute-virtual-interfaces=virt0",
    ]));
    for words in all_flows(dns) {
        args.push("--flow".into());
        args.push(words);
    }
    let out = meshcap(&args);
    let mut rules = String::new();
    let mut drift = serde_json::Value::Null;
    let classes = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            rules = v["rules"].as_str().unwrap().to_owned();
            drift = v["drift"].clone();
            v["class"].as_str().unwrap().to_owned()
        })
        .collect();
    (classes, rules, drift)
}

fn ztunnels_own() -> Vec<Own> {
    let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let mut rows: Vec<Own> = Vec::new();
    for (dst, seen) in [
        ("198.51.100.10:80", "direct server 198.51.100.10:80"),
        ("[2001:db8:1::10]:80", "direct server [2001:db8:1::10]:80"),
    ] {
        let dst = addr(dst);
        rows.push((
            format!("ztunnel mark 0x539 tcp {dst}"),
            text_outcome(seen),
            Box::new(move |_| ztunnel_tcp(dst, None)),
        ));
    }
    for (dst, seen) in [
        ("192.0.2.53:53", "direct server 192.0.2.53:53"),
        ("[2001:db8::53]:53", "direct server [2001:db8::53]:53"),
    ] {
        let dst = addr(dst);
        rows.push((
            format!("ztunnel mark 0x539 udp {dst}"),
            text_outcome(seen),
            Box::new(move |t| ztunnel_udp(dst, t)),
        ));
    }
    for (src, dst, seen) in [
        (
            "198.51.100.10",
            "192.0.2.1:8080",
            "direct app 192.0.2.1:8080",
        ),
        (
            "2001:db8:1::10",
            "[2001:db8:100::1]:8080",
            "direct app [2001:db8:100::1]:8080",
        ),
    ] {
        let (src, dst) = (ip(src), addr(dst));
        rows.push((
            format!("ztunnel mark 0x539 transparent tcp {dst} src {src}"),
            text_outcome(seen),
            Box::new(move |_| ztunnel_tcp(dst, Some(src))),
        ));
    }
    rows
}

fn render(rows: &[Row]) -> String {
    let width = rows.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(p, o)| format!("{p:<width$}  -> {o}\n"))
        .collect()
}

/// Runs the in-pod table; returns the observed rows and the expected ones.
fn run_table(pod: &Pod, dns: bool) -> (Vec<Row>, Vec<Row>) {
    let standard = standard(dns);
    let probes: Vec<Probe> = standard.iter().map(|(p, _)| p.clone()).collect();
    let mut observed: Vec<Row> = pod
        .probe(&probes)
        .into_iter()
        .map(|(p, o)| (p.to_string(), o))
        .collect();
    let mut expected: Vec<Row> = standard
        .into_iter()
        .map(|(p, o)| (p.to_string(), o))
        .collect();
    let timeout = pod.timeout;
    for (label, want, run) in ztunnels_own() {
        observed.push((label.clone(), pod.pod.run(move || run(timeout))));
        expected.push((label, want));
    }
    (observed, expected)
}

/// The node's rule, installed in `net` (the pod's node here): the kubelet's probe of the pod
/// (a socket of root, uid 0, in `net`) is captured as inbound until the pod's address is in the
/// probe set, then it reaches the app from the probe address.
fn host_rows(pod: &Pod, backend: Backend) -> (Vec<Row>, Vec<Row>) {
    let node = &pod.net;
    let mut args = strings(&["ambient", "host"]);
    args.extend(settings(false));
    let addresses: [(&str, IpAddr); 2] = [
        ("istio-inpod-probes-v4", "192.0.2.1".parse().unwrap()),
        ("istio-inpod-probes-v6", "2001:db8:100::1".parse().unwrap()),
    ];
    if backend == Backend::Nftables {
        args.extend(strings(&["--backend", "nftables", "--kubelet-uid", "0"]));
    }
    let mut argv = vec![MESHCAP.to_owned()];
    argv.extend(args.clone());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    node.exec_ok(&argv);
    let probes = [
        Probe::tcp(From::peer("net"), "192.0.2.1:8080"),
        Probe::tcp(From::peer("net"), "[2001:db8:100::1]:8080"),
    ];
    let label = |p: &Probe, state: &str| format!("node (kubelet) {} {state}", &p.to_string()[9..]);
    let mut observed: Vec<Row> = pod
        .probe(&probes)
        .into_iter()
        .map(|(p, o)| (label(&p, "not in the set"), o))
        .collect();
    add_to_sets(node, backend, &addresses);
    observed.extend(
        pod.probe(&probes)
            .into_iter()
            .map(|(p, o)| (label(&p, "in the set"), o)),
    );
    let expected = vec![
        (
            label(&probes[0], "not in the set"),
            text_outcome("captured-inbound 192.0.2.1:8080"),
        ),
        (
            label(&probes[1], "not in the set"),
            text_outcome("captured-inbound [2001:db8:100::1]:8080"),
        ),
        (
            label(&probes[0], "in the set"),
            text_outcome("direct app 192.0.2.1:8080"),
        ),
        (
            label(&probes[1], "in the set"),
            text_outcome("direct app [2001:db8:100::1]:8080"),
        ),
    ];
    let mut argv = vec![MESHCAP, "ambient", "host", "--cleanup", "--ambient-ipv6"];
    if backend == Backend::Nftables {
        argv.extend(["--backend", "nftables", "--kubelet-uid", "0"]);
    }
    node.exec_ok(&argv);
    (observed, expected)
}

fn add_to_sets(node: &Netns, backend: Backend, addresses: &[(&'static str, IpAddr)]) {
    let sets = match backend {
        Backend::Iptables => ProbeSets::Ipset,
        Backend::Nftables => ProbeSets::Nftables,
    };
    let addresses = addresses.to_vec();
    node.run(move || {
        for (set, addr) in addresses {
            sets.add(set, addr, Some("pod-uid")).unwrap();
            assert!(sets.contains(set, addr).unwrap());
        }
    });
}

#[test]
fn both_backends_classify_every_probe_as_the_table_says() {
    let test = "both_backends_classify_every_probe_as_the_table_says";
    if !require_root(test) {
        return;
    }
    let pod = Pod::new("ambbeh");
    pod.net.ip_batch(&[
        format!("addr add {PROBE_V4}/32 dev lo"),
        format!("addr add {PROBE_V6}/128 dev lo"),
    ]);
    let mut tables: Vec<(String, String)> = Vec::new();
    let mut failures = Vec::new();
    for backend in [Backend::Iptables, Backend::Nftables] {
        for dns in [true, false] {
            install(&pod, backend, dns);
            let table = run_table(&pod, dns);
            // meshcap explain on the kernel's rules agrees with real traffic.
            let (by_kernel, rules, drift) = explained_by_kernel(&pod, dns);
            assert!(rules.contains("ambient rules installed by"), "{rules}");
            // Read back by the backend that installed them, they are the plan's.
            assert_eq!(
                drift,
                serde_json::json!([]),
                "{backend:?}, DNS {dns}: {rules}"
            );
            assert_eq!(by_kernel.len(), table.0.len());
            for ((row, seen), said) in table.0.iter().zip(&by_kernel) {
                if seen.class.name() != said {
                    failures.push(format!(
                        "explain --kernel ({backend:?}, DNS {dns}): {row}: kernel {}, explain {said}",
                        seen.class.name()
                    ));
                }
            }
            // meshcap explain of the plan's rules agrees with the kernel.
            for ((row, seen), said) in table.0.iter().zip(explained(dns, backend)) {
                if seen.class.name() != said {
                    failures.push(format!(
                        "explain ({backend:?}, DNS {dns}): {row}: kernel {}, explain {said}",
                        seen.class.name()
                    ));
                }
            }
            let mut runs = vec![(format!("{backend:?}, DNS capture {dns}"), table)];
            if !dns {
                // The node's rule, with the pod's rules in place.
                runs.push((format!("{backend:?}, node rule"), host_rows(&pod, backend)));
            }
            uninstall(&pod, backend);
            for (name, (observed, expected)) in runs {
                if observed != expected {
                    failures.push(format!(
                        "{name}:\n--- expected\n{}--- observed\n{}",
                        render(&expected),
                        render(&observed)
                    ));
                }
                tables.push((name, render(&observed)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Alike per DNS setting, whatever the backend.
    assert_eq!(tables[0].1, tables[3].1);
    assert_eq!(tables[1].1, tables[4].1);
    assert_eq!(tables[2].1, tables[5].1);
    eprintln!(
        "{}",
        tables
            .iter()
            .map(|(n, t)| format!("# {n}\n{t}"))
            .collect::<String>()
    );
}
