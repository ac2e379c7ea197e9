//! Reliability on a real kernel (iptables backend): drift detection with `meshcap diff`,
//! `--run-validation`, cleanup that keeps foreign rules, and concurrent runs.

mod common;

use common::{MESHCAP, NO_ENV, istio_args, meshcap_in, text};
use netns_test_harness::{Netns, require_root};
use std::process::Output;

const IPV4_ONLY: [&str; 2] = ["--ipv6", "off"];

/// `meshcap PRE` (a subcommand, or nothing) with Istio's default flags, IPv4 only, through
/// iptables-nft, then `extra`, in `ns`.
fn meshcap(ns: &Netns, pre: &[&str], extra: &[&str]) -> Output {
    let mut args = pre.to_vec();
    args.extend(istio_args(&IPV4_ONLY));
    args.extend(["--force-iptables-binary", "nft"]);
    args.extend(extra);
    meshcap_in(ns, &args, NO_ENV)
}

#[test]
fn diff_reports_drift_with_exit_3() {
    if !require_root("diff_reports_drift_with_exit_3") {
        return;
    }
    let ns = Netns::new("diff");
    // Nothing installed: everything is missing.
    let out = meshcap(&ns, &["diff"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("missing: ipv4 nat ISTIO_OUTPUT"),
        "{}",
        text(&out)
    );

    assert!(meshcap(&ns, &[], &[]).status.success());
    let out = meshcap(&ns, &["diff"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("in sync"));

    // Someone deletes a rule: reported missing.
    ns.exec_ok(&[
        "iptables-nft",
        "-t",
        "nat",
        "-D",
        "ISTIO_OUTPUT",
        "-d",
        "127.0.0.1/32",
        "-j",
        "RETURN",
    ]);
    let out = meshcap(&ns, &["diff"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out)
            .contains("missing: ipv4 nat ISTIO_OUTPUT: -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"),
        "{}",
        text(&out)
    );

    // Someone adds a bypass: reported extra.
    ns.exec_ok(&[
        "iptables-nft",
        "-t",
        "nat",
        "-I",
        "ISTIO_OUTPUT",
        "1",
        "-d",
        "192.0.2.9/32",
        "-j",
        "RETURN",
    ]);
    let out = meshcap(&ns, &["diff"], &[]);
    assert!(
        text(&out)
            .contains("extra: ipv4 nat ISTIO_OUTPUT: -A ISTIO_OUTPUT -d 192.0.2.9/32 -j RETURN"),
        "{}",
        text(&out)
    );

    // Compared with another configuration, the installed one has drifted too.
    assert_eq!(
        meshcap(&ns, &["diff"], &["-b", "8080"]).status.code(),
        Some(3)
    );
}

#[test]
fn validation_passes_with_rules_and_fails_with_126_without() {
    if !require_root("validation_passes_with_rules_and_fails_with_126_without") {
        return;
    }
    let ns = Netns::new("validate");
    // No rules (the CNI flow with nothing installed): the probe never reaches a capture port.
    let out = meshcap(
        &ns,
        &[],
        &[
            "--skip-rule-apply",
            "--run-validation",
            "--probe-timeout",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(text(&out).contains("validation failed"), "{}", text(&out));

    let out = meshcap(&ns, &[], &["--run-validation"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("validation passed"), "{}", text(&out));

    // CNI flow: rules installed by someone else, validation only.
    let out = meshcap(&ns, &[], &["--skip-rule-apply", "--run-validation"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn cleanup_removes_ours_and_keeps_foreign_rules() {
    if !require_root("cleanup_removes_ours_and_keeps_foreign_rules") {
        return;
    }
    let ns = Netns::new("cleanup");
    let foreign = [
        ["iptables-nft", "-t", "nat", "-N", "FOREIGN"].as_slice(),
        &["iptables-nft", "-t", "nat", "-A", "FOREIGN", "-j", "RETURN"],
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "192.0.2.7/32",
            "-j",
            "FOREIGN",
        ],
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            "lo",
            "-j",
            "RETURN",
        ],
    ];
    for cmd in foreign {
        ns.exec_ok(cmd);
    }
    let before = ns.dump(&["iptables-nft-save", "-t", "nat"]);
    assert!(meshcap(&ns, &[], &[]).status.success());
    assert!(ns.dump(&["iptables-nft-save"]).contains("ISTIO_"));
    let out = meshcap(&ns, &[], &["--cleanup-only"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = ns.dump(&["iptables-nft-save", "-t", "nat"]);
    let rules = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with('-') || l.starts_with(':'))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rules(&after),
        rules(&before),
        "cleanup must leave exactly the foreign state"
    );
    // Nothing to clean is fine.
    assert!(meshcap(&ns, &[], &["--cleanup-only"]).status.success());
}

#[test]
fn concurrent_runs_end_in_one_complete_ruleset() {
    if require_root("concurrent_runs_end_in_one_complete_ruleset") {
        concurrent_runs(&["--force-iptables-binary", "nft"]);
    }
}

#[test]
fn concurrent_nftables_runs_end_in_one_complete_ruleset() {
    if require_root("concurrent_nftables_runs_end_in_one_complete_ruleset") {
        concurrent_runs(&["--backend", "nftables"]);
    }
}

#[test]
fn diff_reports_nftables_drift() {
    if !require_root("diff_reports_nftables_drift") {
        return;
    }
    let ns = Netns::new("diffnft");
    let nft = ["--backend", "nftables"];
    assert!(meshcap(&ns, &[], &nft).status.success());
    let out = meshcap(&ns, &["diff"], &nft);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A bypass slipped in front of the outbound chain.
    ns.exec_ok(&[
        "nft",
        "insert",
        "rule",
        "inet",
        "istio-proxy-nat",
        "istio-output",
        "ip",
        "daddr",
        "192.0.2.9",
        "return",
    ]);
    let out = meshcap(&ns, &["diff"], &nft);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // Read-back spells nftables rules in nft syntax: the rule as it was written.
    assert!(
        text(&out).contains("extra: inet istio-proxy-nat istio-output: ip daddr 192.0.2.9 return"),
        "{}",
        text(&out)
    );
}

fn concurrent_runs(backend: &[&str]) {
    let ns = Netns::new("concurrent");
    for round in 0..5 {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let mut argv = vec![MESHCAP];
                argv.extend(istio_args(&IPV4_ONLY));
                argv.extend(backend);
                ns.command(&argv)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for child in runs {
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "round {round}: {}", text(&out));
        }
        let out = meshcap(&ns, &["diff"], backend);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", text(&out));
        assert!(
            meshcap(&ns, &[], &[&["--cleanup-only"], backend].concat())
                .status
                .success()
        );
    }
}

/// `--ipv6 auto` (Istio's detection) looks at the pod named by `--network-namespace`, not at
/// the namespace the installer runs in: here the installer's own namespace has no address at
/// all and the pod's has only an IPv6 one, so the IPv6 rules are planned; the other way round,
/// they are not.
#[test]
fn ipv6_auto_reads_the_pod_named_by_network_namespace() {
    if !require_root("ipv6_auto_reads_the_pod_named_by_network_namespace") {
        return;
    }
    let caller = Netns::new("v6caller");
    let pod = Netns::new("v6pod");
    let peer = Netns::new("v6peer");
    pod.link(&peer, &["2001:db8::5/64"], &["2001:db8::6/64"]);
    let dry_run = |runner: &Netns, target: &Netns| {
        let target = target.path();
        let args = istio_args(&["--dry-run", "--network-namespace", target.to_str().unwrap()]);
        let out = meshcap_in(runner, &args, NO_ENV);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let into_pod = dry_run(&caller, &pod);
    assert!(into_pod.contains("# ipv6 rules"), "{into_pod}");
    let into_caller = dry_run(&pod, &caller);
    assert!(!into_caller.contains("# ipv6 rules"), "{into_caller}");
}
