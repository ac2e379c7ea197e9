//! The bypass suite: what a process in the app container can do to escape capture, probed with
//! real connections in a dual-stack pod with DNS capture (a resolver on 127.0.0.53 and one on
//! 192.0.2.53), under Istio's rules (the default) and under `--strict`. SECURITY.md lists the
//! same probes and outcomes; this test is what keeps it true.

mod common;

use common::{NO_ENV, istio_args, meshcap, ok};
use netns_test_harness::pod::Pod;
use netns_test_harness::probe::{parse_table, render_table};
use netns_test_harness::require_root;

fn install(pod: &Pod, extra: &[&str]) {
    let ns = pod.pod.path().display().to_string();
    let mut args = istio_args(&[
        "--redirect-dns",
        "--dns-servers",
        "127.0.0.53,192.0.2.53,2001:db8::53",
        "--ipv6",
        "on",
        "--network-namespace",
        &ns,
    ]);
    args.extend(extra);
    ok(&meshcap(&args, NO_ENV));
}

/// The escape attempts, each with its outcome under Istio's rules; `strict` overrides the rows
/// `--strict` changes. Keep SECURITY.md in step.
const ATTEMPTS: &str = "
pod 1000:1000 tcp 198.51.100.10:80                      -> captured-outbound 198.51.100.10:80
pod 1000:1000 tcp [2001:db8:1::10]:80                   -> captured-outbound [2001:db8:1::10]:80
pod 1000:1000 tcp 198.51.100.10:80 src 127.0.0.6        -> error EINVAL
pod 1000:1000 tcp 192.0.2.1:8080 src 127.0.0.6          -> direct app 192.0.2.1:8080
pod 1000:1000 tcp 127.0.0.1:15001                       -> captured-outbound 127.0.0.1:15001
pod 1000:1000 tcp 192.0.2.1:15006                       -> captured-inbound 192.0.2.1:15006
pod 1000:1000 udp 198.51.100.10:53                      -> direct server 198.51.100.10:53
pod 1000:1000 udp 127.0.0.53:53                         -> captured-dns 127.0.0.53:53
pod 1000:1000 udp 127.0.0.53:53 src 127.0.0.6           -> direct server 127.0.0.53:53
pod 1000:1000 tcp 127.0.0.53:53 src 127.0.0.6           -> direct server 127.0.0.53:53
pod 1000:1000 udp 192.0.2.53:53                         -> captured-dns 192.0.2.53:53
pod 1000:1000 udp 192.0.2.53:53 src 127.0.0.6           -> error EINVAL
pod 1000:1337 tcp 198.51.100.10:80                      -> direct server 198.51.100.10:80
pod 1000:1337 tcp [2001:db8:1::10]:80                   -> direct server [2001:db8:1::10]:80
pod 1000:1000+1337 tcp 198.51.100.10:80                 -> captured-outbound 198.51.100.10:80
pod 1337:1000 tcp 198.51.100.10:80                      -> direct server 198.51.100.10:80
";

const STRICT_CHANGES: &str = "
pod 1000:1000 udp 127.0.0.53:53 src 127.0.0.6           -> captured-dns 127.0.0.53:53
pod 1000:1000 tcp 127.0.0.53:53 src 127.0.0.6           -> captured-dns 127.0.0.53:53
pod 1000:1337 tcp 198.51.100.10:80                      -> captured-outbound 198.51.100.10:80
pod 1000:1337 tcp [2001:db8:1::10]:80                   -> captured-outbound [2001:db8:1::10]:80
";

fn assert_outcomes(extra: &[&str], table: &str) {
    let pod = Pod::new(if extra.is_empty() {
        "bypass"
    } else {
        "bypassstr"
    });
    install(&pod, extra);
    println!(
        "{}:\n{table}",
        if extra.is_empty() {
            "Istio's rules"
        } else {
            "--strict"
        }
    );
    pod.assert_table(table);
}

/// ATTEMPTS with the rows of STRICT_CHANGES replaced.
fn strict_table() -> String {
    let changes = parse_table(STRICT_CHANGES).expect("strict table");
    let mut rows = parse_table(ATTEMPTS).expect("table");
    for (probe, outcome) in changes {
        let row = rows
            .iter_mut()
            .find(|(p, _)| *p == probe)
            .expect("STRICT_CHANGES rows are ATTEMPTS rows");
        row.1 = outcome;
    }
    render_table(&rows)
}

#[test]
fn escapes_under_istio_rules() {
    if require_root("escapes_under_istio_rules") {
        assert_outcomes(&[], ATTEMPTS);
    }
}

#[test]
fn strict_closes_the_passthrough_and_gid_escapes() {
    if require_root("strict_closes_the_passthrough_and_gid_escapes") {
        assert_outcomes(&["--strict"], &strict_table());
    }
}
