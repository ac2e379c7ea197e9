//! `meshcap trace` on a real kernel, in throwaway namespaces: for a connection from the pod to a
//! documentation address, captured to a listener on 15001, `trace --count 1` prints the rule
//! that captured it, for rules installed by the nftables backend and by iptables-nft; it leaves
//! no table behind (after --count, --timeout and SIGTERM); it refuses when the rules live in
//! iptables-legacy; bad filter words exit 2 naming the word (no root needed).

mod common;

use common::{MESHCAP, NO_ENV, istio_args, meshcap, meshcap_in, ok, text};
use netns_test_harness::{Netns, Process, User, require_root};
use nix::sys::signal::Signal;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::time::{Duration, Instant};

const TRACE_TABLE: &str = "meshcap-trace";
/// A destination outside the pod, reached over its default route (nothing answers there: the
/// connection succeeds only when the rules capture it to the listener on 15001).
const DESTINATION: &str = "198.51.100.10:80";
/// How long the setup may take on a loaded machine before a wait is a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// A pod namespace with a default route over a veth pair to a peer namespace.
struct Site {
    pod: Netns,
    _peer: Netns,
}

fn site(tag: &str) -> Site {
    let pod = Netns::new(tag);
    let peer = Netns::new(&format!("{tag}x"));
    pod.link(&peer, &["192.0.2.1/24"], &["192.0.2.2/24"]);
    pod.ip_batch(&["route add default via 192.0.2.2".to_owned()]);
    Site { pod, _peer: peer }
}

fn has_trace_table(ns: &Netns) -> bool {
    ns.exec_ok(&["nft", "list", "tables"])
        .lines()
        .any(|l| l.trim() == format!("table inet {TRACE_TABLE}"))
}

/// Waits until the trace table is present (the trace is ready) or, with `present` false, gone.
fn wait_for_table(ns: &Netns, present: bool, trace: &Process) {
    let start = Instant::now();
    while has_trace_table(ns) != present {
        assert!(
            start.elapsed() < PATIENCE,
            "table inet {TRACE_TABLE} still {} after {PATIENCE:?} (trace pid {})",
            if present { "absent" } else { "present" },
            trace.pid()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_trace(ns: &Netns, args: &[&str]) -> Process {
    let mut argv = vec![MESHCAP, "trace"];
    argv.extend(args);
    ns.spawn(&argv, None)
}

fn finished(out: &Output) -> String {
    assert!(
        out.status.success(),
        "trace failed ({}): {}",
        out.status,
        text(out)
    );
    text(out)
}

/// Runs `trace --count 1` for one TCP connection attempt to [`DESTINATION`] by `user` (root
/// when `None`) that waits up to `patience`; returns the attempt's result and the trace's output.
fn trace_connection(
    pod: &Netns,
    user: Option<User>,
    patience: Duration,
) -> (std::io::Result<()>, String) {
    let dst = format!("dst={DESTINATION}");
    let trace = start_trace(pod, &["--count", "1", "--timeout", "2m", "proto=tcp", &dst]);
    wait_for_table(pod, true, &trace);
    let attempt = move || {
        let dst: SocketAddr = DESTINATION.parse().unwrap();
        TcpStream::connect_timeout(&dst, patience).map(|_| ())
    };
    let connected = match user {
        Some(user) => pod.run_as(user, attempt),
        None => pod.run(attempt),
    };
    let printed = finished(&trace.wait());
    assert!(
        !has_trace_table(pod),
        "trace left its table behind:\n{printed}"
    );
    (connected, printed)
}

/// Installs Istio's default rules with `backend_args`, traces one connection to
/// [`DESTINATION`] (captured to a listener on 15001) and returns the trace's output.
fn trace_one_connection(tag: &str, backend_args: &[&str]) -> (Site, String) {
    let site = site(tag);
    let pod = &site.pod;
    ok(&meshcap_in(pod, &istio_args(backend_args), NO_ENV));
    let listener = pod.run(|| TcpListener::bind("0.0.0.0:15001").expect("listen on 15001"));
    let (connected, printed) = trace_connection(pod, None, Duration::from_secs(20));
    drop(listener);
    assert!(
        connected.is_ok(),
        "the connection was not captured: {connected:?}\n{}\n{printed}",
        pod.dump_rulesets()
    );
    (site, printed)
}

#[test]
fn trace_shows_the_nftables_rule_that_captured_a_connection() {
    if !require_root("trace_shows_the_nftables_rule_that_captured_a_connection") {
        return;
    }
    let (site, printed) = trace_one_connection("trnft", &["--backend", "nftables"]);
    // In nft syntax, as `nft list` prints the rule.
    let rule = printed
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("inet istio-proxy-nat istio-redirect: rule ")
        })
        .unwrap_or_else(|| panic!("no istio-redirect rule in the trace:\n{printed}"));
    assert!(
        rule.contains(" meta l4proto tcp counter redirect to :15001 => accept"),
        "{rule}\n{printed}"
    );
    assert!(
        printed.contains("inet istio-proxy-nat output: rule "),
        "{printed}"
    );
    assert!(
        printed.contains("verdict packet 1: captured by inet istio-proxy-nat istio-redirect rule"),
        "{printed}"
    );
    assert!(printed.contains("packet: tcp 192.0.2.1:"), "{printed}");
    assert!(
        printed.contains(&format!("-> {DESTINATION} [SYN]")),
        "{printed}"
    );

    // The proxy's own connection goes around the proxy: the uid 1337 rule returns.
    // Nothing answers at the destination: only the SYN matters, not how the attempt ends.
    let (_, printed) = trace_connection(
        &site.pod,
        Some(User::new(1337, 1337)),
        Duration::from_secs(1),
    );
    assert!(
        printed.lines().any(|l| l.contains("istio-output: rule ")
            && l.contains(" meta skuid 1337 counter return => return")),
        "{printed}"
    );
    assert!(
        printed.contains("inet istio-proxy-nat output: end of chain (no further rule matched)"),
        "{printed}"
    );
    assert!(
        printed.contains("verdict packet 1: not captured ("),
        "{printed}"
    );
}

#[test]
fn trace_shows_the_iptables_nft_rule_that_captured_a_connection() {
    if !require_root("trace_shows_the_iptables_nft_rule_that_captured_a_connection") {
        return;
    }
    let (_site, printed) = trace_one_connection(
        "trxnf",
        &["--backend", "iptables", "--force-iptables-binary", "nft"],
    );
    let rule = printed
        .lines()
        .find(|l| l.trim_start().starts_with("ip nat ISTIO_REDIRECT: rule "))
        .unwrap_or_else(|| panic!("no ISTIO_REDIRECT rule in the trace:\n{printed}"));
    assert!(
        rule.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001")
            && rule.ends_with("=> accept"),
        "{rule}\n{printed}"
    );
    assert!(printed.contains("ip nat OUTPUT: rule "), "{printed}");
    assert!(
        printed.contains("verdict packet 1: captured by ip nat ISTIO_REDIRECT rule"),
        "{printed}"
    );
}

#[test]
fn sigterm_and_timeout_remove_the_table() {
    if !require_root("sigterm_and_timeout_remove_the_table") {
        return;
    }
    let site = site("trsig");
    let pod = &site.pod;
    ok(&meshcap_in(
        pod,
        &istio_args(&["--backend", "nftables"]),
        NO_ENV,
    ));

    let trace = start_trace(pod, &["dst=203.0.113.10"]);
    wait_for_table(pod, true, &trace);
    trace.signal(Signal::SIGTERM);
    let printed = finished(&trace.wait());
    assert!(printed.contains("stopped: SIGTERM"), "{printed}");
    assert!(!has_trace_table(pod), "SIGTERM left the table:\n{printed}");

    let trace = start_trace(pod, &["--timeout", "1s", "proto=udp"]);
    let printed = finished(&trace.wait());
    assert!(printed.contains("stopped: timeout"), "{printed}");
    assert!(
        !has_trace_table(pod),
        "--timeout left the table:\n{printed}"
    );

    // A second trace while one runs refuses and leaves the first one's table alone.
    let first = start_trace(pod, &[]);
    wait_for_table(pod, true, &first);
    let second = meshcap_in(pod, &["trace", "--timeout", "1s"], NO_ENV);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(
        text(&second).contains("exists already"),
        "{}",
        text(&second)
    );
    assert!(has_trace_table(pod));
    first.signal(Signal::SIGINT);
    finished(&first.wait());
    assert!(!has_trace_table(pod));
}

#[test]
fn refuses_rules_in_iptables_legacy() {
    if !require_root("refuses_rules_in_iptables_legacy") {
        return;
    }
    let site = site("trleg");
    let pod = &site.pod;
    ok(&meshcap_in(
        pod,
        &istio_args(&["--backend", "iptables", "--force-iptables-binary", "legacy"]),
        NO_ENV,
    ));
    let out = meshcap_in(pod, &["trace", "--count", "1", "proto=tcp"], NO_ENV);
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("iptables-legacy-save shows chain ISTIO_")
            && printed.contains("kernel log"),
        "{printed}"
    );
    assert!(!has_trace_table(pod), "{printed}");
}

#[test]
fn bad_filter_words_exit_2_naming_the_word() {
    for word in [
        "proto=icmp",
        "dst=198.51.100.10:http",
        "src=nowhere",
        "dir=out",
        "198.51.100.10",
    ] {
        let out = meshcap(&["trace", "--count", "1", "proto=tcp", word], NO_ENV);
        assert_eq!(out.status.code(), Some(2), "{word}: {}", text(&out));
        assert!(text(&out).contains(word), "{word}: {}", text(&out));
    }
    let out = meshcap(&["trace", "--count", "0"], NO_ENV);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = meshcap(&["trace", "--timeout", "soon"], NO_ENV);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("soon"), "{}", text(&out));
}

#[test]
fn help_describes_trace() {
    let out = meshcap(&["trace", "--help"], NO_ENV);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    for needle in [
        "--count",
        "--timeout",
        "--network-namespace",
        "FILTER",
        "iptables-legacy",
    ] {
        assert!(printed.contains(needle), "{needle}: {printed}");
    }
}
