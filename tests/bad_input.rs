//! Bad input never reaches the kernel: every malformed invocation (flags and environment
//! variables) exits 2 with one line naming the flag or variable and the bad value, and the
//! namespace's rules are exactly what they were.

mod common;

use common::{NO_ENV, istio_args, meshcap_in, ok};
use netns_test_harness::{Netns, require_root};

/// (flags, environment, what the message must name, the bad value it must quote)
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

const CASES: &[Case] = &[
    (&["-p", "0"], &[], "-p/--envoy-port", "0"),
    (&["-p", "65536"], &[], "-p/--envoy-port", "65536"),
    (&["-p", "abc"], &[], "-p/--envoy-port", "abc"),
    (&["-p", "-1"], &[], "-p/--envoy-port", "-1"),
    (&["-p", ""], &[], "-p/--envoy-port", "\"\""),
    (&["-z", "99999"], &[], "-z/--inbound-capture-port", "99999"),
    (&["-e", "tunnel"], &[], "-e/--inbound-tunnel-port", "tunnel"),
    (&["-b", "80,http"], &[], "-b/--istio-inbound-ports", "http"),
    (&["-b", "*,80"], &[], "-b/--istio-inbound-ports", "*,80"),
    (
        &["-b", "*", "-d", "65536"],
        &[],
        "-d/--istio-local-exclude-ports",
        "65536",
    ),
    (&["-q", "0"], &[], "-q/--istio-outbound-ports", "0"),
    (
        &["-o", "22-23"],
        &[],
        "-o/--istio-local-outbound-ports-exclude",
        "22-23",
    ),
    (
        &["-i", "10.0.0.0/40"],
        &[],
        "-i/--istio-service-cidr",
        "10.0.0.0/40",
    ),
    (
        &["-i", "192.0.2.1"],
        &[],
        "-i/--istio-service-cidr",
        "192.0.2.1",
    ),
    (
        &["-i", "*,10.0.0.0/8"],
        &[],
        "-i/--istio-service-cidr",
        "*,10.0.0.0/8",
    ),
    (&["-x", "*"], &[], "-x/--istio-service-exclude-cidr", "*"),
    (
        &["-x", "300.1.1.1/32"],
        &[],
        "-x/--istio-service-exclude-cidr",
        "300.1.1.1/32",
    ),
    (
        &["-m", "TEE"],
        &[],
        "-m/--istio-inbound-interception-mode",
        "TEE",
    ),
    (
        &["-m", "NONE"],
        &[],
        "-m/--istio-inbound-interception-mode",
        "NONE",
    ),
    (&["-u", "istio-proxy"], &[], "-u/--proxy-uid", "istio-proxy"),
    (&["-u", "1337,x"], &[], "-u/--proxy-uid", "x"),
    (&["-g", "-3"], &[], "-g/--proxy-gid", "-3"),
    (
        &["-t", "0x539"],
        &[],
        "-t/--istio-inbound-tproxy-mark",
        "0x539",
    ),
    (
        &["-t", "4294967296"],
        &[],
        "-t/--istio-inbound-tproxy-mark",
        "4294967296",
    ),
    (
        &["-r", "0"],
        &[],
        "-r/--istio-inbound-tproxy-route-table",
        "0",
    ),
    (
        &["-r", "local"],
        &[],
        "-r/--istio-inbound-tproxy-route-table",
        "local",
    ),
    (
        &["-c", "sixteen-chars-xx"],
        &[],
        "-c/--istio-exclude-interfaces",
        "sixteen-chars-xx",
    ),
    (
        &["-c", "eth0:1"],
        &[],
        "-c/--istio-exclude-interfaces",
        "eth0:1",
    ),
    (&["-k", ".."], &[], "-k/--kube-virt-interfaces", ".."),
    (
        &["--force-iptables-binary", "ebtables"],
        &[],
        "--force-iptables-binary",
        "ebtables",
    ),
    (&["--backend", "bpf"], &[], "--backend", "bpf"),
    (&["--ipv6", "yes"], &[], "--ipv6", "yes"),
    (&["--dns-servers", "8.8.8"], &[], "--dns-servers", "8.8.8"),
    (&["--probe-timeout", "5"], &[], "--probe-timeout", "5"),
    (
        &["--iptables-probe-port", "70000"],
        &[],
        "--iptables-probe-port",
        "70000",
    ),
    (&["--redirect-dns=maybe"], &[], "--redirect-dns", "maybe"),
    (&[], &[("ENVOY_PORT", "abc")], "ENVOY_PORT", "abc"),
    (
        &[],
        &[("INBOUND_CAPTURE_PORT", "0")],
        "INBOUND_CAPTURE_PORT",
        "0",
    ),
    (
        &[],
        &[("ISTIO_INBOUND_PORTS", "80;443")],
        "ISTIO_INBOUND_PORTS",
        "80;443",
    ),
    (
        &[],
        &[("ISTIO_SERVICE_CIDR", "10.0.0.0/8/8")],
        "ISTIO_SERVICE_CIDR",
        "10.0.0.0/8/8",
    ),
    (
        &[],
        &[("ISTIO_SERVICE_EXCLUDE_CIDR", "*")],
        "ISTIO_SERVICE_EXCLUDE_CIDR",
        "*",
    ),
    (
        &[],
        &[("ISTIO_INBOUND_INTERCEPTION_MODE", "tproxy2")],
        "ISTIO_INBOUND_INTERCEPTION_MODE",
        "tproxy2",
    ),
    (&[], &[("PROXY_UID", "-1")], "PROXY_UID", "-1"),
    (&[], &[("REDIRECT_DNS", "maybe")], "REDIRECT_DNS", "maybe"),
    (
        &[],
        &[("ISTIO_META_DNS_CAPTURE", "sure")],
        "ISTIO_META_DNS_CAPTURE",
        "sure",
    ),
    (&[], &[("INVALID_DROP", "2")], "INVALID_DROP", "2"),
    (&[], &[("ISTIO_DUAL_STACK", "y")], "ISTIO_DUAL_STACK", "y"),
    (
        &[],
        &[("FORCE_IPTABLES_BINARY", "iptables-ng")],
        "FORCE_IPTABLES_BINARY",
        "iptables-ng",
    ),
    (
        &[],
        &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.0/8")],
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        "10.0.0.0/8",
    ),
    (
        &[],
        &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.0/4")],
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        "127.0.0.0/4",
    ),
    (
        &[],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS", "Not A Group")],
        "ISTIO_OUTBOUND_OWNER_GROUPS",
        "Not A Group",
    ),
    (
        &[],
        &[
            ("ISTIO_OUTBOUND_OWNER_GROUPS", "java"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "ftp"),
        ],
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        "ISTIO_OUTBOUND_OWNER_GROUPS",
    ),
    (&[], &[("MESHCAP_BACKEND", "pf")], "MESHCAP_BACKEND", "pf"),
    (
        &[],
        &[("KUBE_VIRT_INTERFACES", "a b")],
        "KUBE_VIRT_INTERFACES",
        "a b",
    ),
];

fn check_all(run: impl Fn(&[String], &[(String, String)]) -> std::process::Output) -> Vec<String> {
    let mut failures = Vec::new();
    for (flags, env, names, value) in CASES {
        // Everything else valid, so the one bad input is what is refused (a later flag wins).
        let mut args: Vec<String> = vec!["--ipv6".into(), "off".into()];
        args.extend(flags.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = run(&args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let problem = if out.status.code() != Some(2) {
            Some(format!("exit {:?}", out.status.code()))
        } else if stderr.lines().count() != 1 {
            Some("message is not one line".into())
        } else if !stderr.contains(names) || !stderr.contains(value) {
            Some(format!("message does not name {names} and {value}"))
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!("{flags:?} {env:?}: {p}: {stderr}"));
        }
    }
    failures
}

#[test]
fn malformed_invocations_exit_2_naming_the_input() {
    assert!(CASES.len() >= 40, "the table holds {} cases", CASES.len());
    let failures = check_all(|args, env| {
        let mut args = args.to_vec();
        args.push("--dry-run".into());
        common::meshcap(&args, env)
    });
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_invocations_leave_the_namespace_unchanged() {
    if !require_root("malformed_invocations_leave_the_namespace_unchanged") {
        return;
    }
    let ns = Netns::new("badinput");
    // A namespace that already holds a pod's rules.
    let args = istio_args(&["--ipv6", "off", "--force-iptables-binary", "nft"]);
    ok(&meshcap_in(&ns, &args, NO_ENV));
    let dump = || {
        [
            &["iptables-nft-save"][..],
            &["iptables-legacy-save"],
            &["ip6tables-nft-save"],
            &["nft", "list", "ruleset"],
            &["ip", "rule"],
            &["ip", "-6", "addr"],
        ]
        .iter()
        .map(|argv| {
            ns.dump(argv)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
    };
    let before = dump();
    let failures = check_all(|args, env| {
        let mut cmd = ns.command(&[common::MESHCAP]);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd.output().expect("run meshcap")
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(dump(), before, "a refused invocation changed the namespace");
}
