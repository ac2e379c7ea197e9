//! On a real kernel: meshcap's iptables backend applied in a throwaway namespace, through
//! iptables-nft and iptables-legacy, holds every rule of the plan when read back with
//! iptables-save; a second run is a no-op; cleanup removes everything.

use netns_test_harness::{Netns, require_root};
use std::process::Output;

const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");
const DEFAULT_ISTIO_INIT: [&str; 14] = [
    "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
];

fn meshcap(ns: &Netns, extra: &[&str]) -> Output {
    let mut argv = vec![MESHCAP];
    argv.extend(DEFAULT_ISTIO_INIT);
    argv.extend(["-d", "15090,15021,15020"]);
    argv.extend(extra);
    ns.exec(&argv)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "meshcap failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `-A` lines of iptables-save, normalised for comparison.
fn saved_rules(ns: &Netns, save: &str) -> Vec<String> {
    ns.dump(&[save])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

fn applied_rules_equal_plan(variant: &str) {
    let ns = Netns::new(&format!("ipt{variant}"));
    let save = format!("iptables-{variant}-save");
    let stderr = ok(&meshcap(
        &ns,
        &["--ipv6", "off", "--force-iptables-binary", variant],
    ));
    assert!(stderr.contains("rules installed"), "{stderr}");

    let got = saved_rules(&ns, &save);
    // Every rule of the plan, spelled as iptables-save prints it.
    for want in [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(
            got.iter().any(|l| l == want),
            "{variant}: missing {want:?} in\n{}",
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        18,
        "{variant}: unexpected rules:\n{}",
        got.join("\n")
    );

    // The other variant holds nothing: the rules went where they were sent.
    let other = if variant == "nft" { "legacy" } else { "nft" };
    assert!(saved_rules(&ns, &format!("iptables-{other}-save")).is_empty());

    // Same config again: a successful no-op, no duplicates.
    let stderr = ok(&meshcap(
        &ns,
        &["--ipv6", "off", "--force-iptables-binary", variant],
    ));
    assert!(stderr.contains("already in place"), "{stderr}");
    assert_eq!(saved_rules(&ns, &save), got);

    // Cleanup leaves nothing of ours.
    ok(&meshcap(
        &ns,
        &[
            "--ipv6",
            "off",
            "--force-iptables-binary",
            variant,
            "--cleanup-only",
        ],
    ));
    assert!(
        saved_rules(&ns, &save).is_empty(),
        "{}",
        saved_rules(&ns, &save).join("\n")
    );
    assert!(!ns.dump(&[&save]).contains("ISTIO_"));
}

#[test]
fn default_config_through_iptables_nft() {
    if require_root("default_config_through_iptables_nft") {
        applied_rules_equal_plan("nft");
    }
}

#[test]
fn default_config_through_iptables_legacy() {
    if require_root("default_config_through_iptables_legacy") {
        applied_rules_equal_plan("legacy");
    }
}
