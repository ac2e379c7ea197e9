//! `meshcap ambient pod|host` installing for real with both backends, in throwaway namespaces:
//! what the kernel holds afterwards (iptables-save or nft's listing, ip rule, ip route, the
//! probe sets), a re-run that changes nothing (nftables: every handle as it was, so nothing was
//! written), a re-run with other settings that replaces, `--diff` (exit 3 on drift), and
//! `--cleanup` removing exactly ambient's rules. Needs root.

mod ambient_common;
mod common;

use ambient_common::meshcap;
use common::MESHCAP;
use meshcap::ambient::apply::ProbeSets;
use meshcap::ambient::ipset;
use netns_test_harness::{Netns, require_root};
use std::net::IpAddr;

/// `meshcap ambient pod ARGS --network-namespace NS`; returns stderr (the log), panics on failure.
fn pod(ns: &Netns, args: &[&str]) -> String {
    let path = ns.path();
    let mut all = vec![
        "ambient",
        "pod",
        "--network-namespace",
        path.to_str().unwrap(),
    ];
    all.extend(args);
    let out = meshcap(&all);
    assert!(out.status.success(), "{}", common::text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The ISTIO_ lines and jumps of iptables-save (`ip6tables-save` for v6), comments dropped.
fn saved(ns: &Netns, v6: bool) -> String {
    let tool = if v6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    ns.exec_ok(&[tool])
        .lines()
        .filter(|l| l.contains("ISTIO_") || l.contains("-A OUTPUT -p udp"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pod_install_is_idempotent_replaces_other_settings_and_cleans_up_exactly() {
    let test = "pod_install_is_idempotent_replaces_other_settings_and_cleans_up_exactly";
    if !require_root(test) {
        return;
    }
    let ns = Netns::new("ambinst");
    // A foreign rule in a table ambient uses, and a foreign policy routing rule: both stay.
    ns.exec_ok(&[
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN",
    ]);
    ns.exec_ok(&[
        "ip", "rule", "add", "fwmark", "0x7", "lookup", "7", "pref", "100",
    ]);

    let dns_v6 = ["--ambient-dns-capture", "--ambient-ipv6"];
    assert!(pod(&ns, &dns_v6).contains("rules installed"));
    let first = (saved(&ns, false), saved(&ns, true));
    assert!(
        first.0.contains(
            "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff"
        )
    );
    assert!(first.0.contains(
        "-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1"
    ));
    assert!(
        first
            .1
            .contains("-A ISTIO_PRERT ! -d ::1/128 -p tcp -m tcp ! --dport 15008")
    );
    let rules = ns.exec_ok(&["ip", "rule"]) + &ns.exec_ok(&["ip", "-6", "rule"]);
    assert_eq!(
        rules
            .matches("32764:\tfrom all fwmark 0x111/0xfff lookup 100")
            .count(),
        2,
        "{rules}"
    );
    assert!(
        ns.exec_ok(&["ip", "route", "show", "table", "100"])
            .contains("local default dev lo")
    );
    assert!(
        ns.exec_ok(&["ip", "-6", "route", "show", "table", "100"])
            .contains("local default dev lo")
    );

    // Same settings: nothing changes, and --diff agrees.
    assert!(pod(&ns, &dns_v6).contains("already in place"));
    assert_eq!((saved(&ns, false), saved(&ns, true)), first);
    assert!(pod(&ns, &["--ambient-dns-capture", "--ambient-ipv6", "--diff"]).is_empty());

    // Other settings: --diff names what differs (exit 3), then a run replaces it.
    let path = ns.path();
    let out = meshcap(&[
        "ambient",
        "pod",
        "--ambient-ipv6",
        "--diff",
        "--network-namespace",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", common::text(&out));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("extra: ipv4 raw ISTIO_OUTPUT: -A ISTIO_OUTPUT -p udp"),
        "{diff}"
    );
    assert!(pod(&ns, &["--ambient-ipv6"]).contains("replaced"));
    let v4 = saved(&ns, false);
    assert!(!v4.contains("--dport 53"), "{v4}");
    assert!(
        !ns.exec_ok(&["iptables-save", "-t", "raw"])
            .contains("ISTIO_")
    );
    assert!(
        v4.contains("-A OUTPUT -p udp -j RETURN"),
        "the foreign rule went: {v4}"
    );
    assert!(pod(&ns, &["--ambient-ipv6", "--diff"]).is_empty());

    // Cleanup: every ISTIO_ chain and jump, the fwmark rules and table 100 go; the rest stays.
    pod(&ns, &["--cleanup"]);
    let v4 = saved(&ns, false);
    assert_eq!(v4, "-A OUTPUT -p udp -j RETURN");
    assert_eq!(saved(&ns, true), "");
    let rules = ns.exec_ok(&["ip", "rule"]);
    assert!(!rules.contains("0x111/0xfff"), "{rules}");
    assert!(rules.contains("fwmark 0x7 lookup 7"), "{rules}");
    assert!(!ns.exec_ok(&["ip", "-6", "rule"]).contains("0x111/0xfff"));
    assert_eq!(ns.exec_ok(&["ip", "route", "show", "table", "100"]), "");
    // Cleaning a clean namespace is fine.
    pod(&ns, &["--cleanup"]);
}

#[test]
fn pod_install_uses_iptables_legacy_when_it_holds_rules() {
    let test = "pod_install_uses_iptables_legacy_when_it_holds_rules";
    if !require_root(test) {
        return;
    }
    let ns = Netns::new("amblegacy");
    ns.exec_ok(&[
        "iptables-legacy",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "-j",
        "ACCEPT",
    ]);
    pod(
        &ns,
        &["--annotation", "istio.io/reroute-virtual-interfaces=virt0"],
    );
    let legacy = ns.exec_ok(&["iptables-legacy-save", "-t", "nat"]);
    assert!(
        legacy.contains("-A ISTIO_PRERT -i virt0 -p tcp -j REDIRECT --to-ports 15001"),
        "{legacy}"
    );
    assert!(!ns.exec_ok(&["iptables-nft-save"]).contains("ISTIO_"));
    assert!(
        pod(
            &ns,
            &["--annotation", "istio.io/reroute-virtual-interfaces=virt0"]
        )
        .contains("already in place")
    );
    pod(&ns, &["--cleanup"]);
    assert!(!ns.exec_ok(&["iptables-legacy-save"]).contains("ISTIO_"));
}

/// The pod's addresses the probe-set checks use (IPv4, IPv6).
fn pod_addrs() -> (IpAddr, IpAddr) {
    (
        "192.0.2.1".parse().unwrap(),
        "2001:db8:100::1".parse().unwrap(),
    )
}

/// The agent's side of the probe sets: it adds the pod's addresses (the IPv4 one twice: an add
/// is idempotent).
fn agent_adds(ns: &Netns, sets: ProbeSets) {
    let (v4, v6) = pod_addrs();
    ns.run(move || {
        sets.add("istio-inpod-probes-v4", v4, Some("pod-uid-1"))
            .unwrap();
        sets.add("istio-inpod-probes-v4", v4, Some("pod-uid-1"))
            .unwrap();
        sets.add("istio-inpod-probes-v6", v6, None).unwrap();
    });
}

/// Whether both probe sets hold the pod's address.
fn sets_hold_the_pod(ns: &Netns, sets: ProbeSets) -> bool {
    let (v4, v6) = pod_addrs();
    ns.run(move || {
        sets.contains("istio-inpod-probes-v4", v4).unwrap()
            && sets.contains("istio-inpod-probes-v6", v6).unwrap()
    })
}

/// The agent lets the pod's IPv4 address go (twice: a del is idempotent); it is gone.
fn agent_deletes(ns: &Netns, sets: ProbeSets) {
    let (v4, _) = pod_addrs();
    ns.run(move || {
        sets.del("istio-inpod-probes-v4", v4).unwrap();
        sets.del("istio-inpod-probes-v4", v4).unwrap();
        assert!(!sets.contains("istio-inpod-probes-v4", v4).unwrap());
    });
}

#[test]
fn host_install_creates_the_probe_sets_and_cleanup_removes_them() {
    let test = "host_install_creates_the_probe_sets_and_cleanup_removes_them";
    if !require_root(test) {
        return;
    }
    let ns = Netns::new("ambhost");
    let host = |args: &[&str]| {
        let mut all = vec![MESHCAP, "ambient", "host", "--ambient-ipv6"];
        all.extend(args);
        ns.command(&all).output().unwrap()
    };
    let out = host(&[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let v4 = ns.exec_ok(&["iptables-save", "-t", "nat"]);
    assert!(v4.contains("-A POSTROUTING -j ISTIO_POSTRT"), "{v4}");
    assert!(v4.contains("-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127"), "{v4}");
    let v6 = ns.exec_ok(&["ip6tables-save", "-t", "nat"]);
    assert!(v6.contains("--match-set istio-inpod-probes-v6 dst -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff"), "{v6}");

    // The agent's side of the sets: addresses come and go; a re-run keeps them.
    agent_adds(&ns, ProbeSets::Ipset);
    assert!(host(&[]).status.success());
    assert!(sets_hold_the_pod(&ns, ProbeSets::Ipset));
    agent_deletes(&ns, ProbeSets::Ipset);
    assert_eq!(host(&["--diff"]).status.code(), Some(0));

    assert!(host(&["--cleanup"]).status.success());
    assert!(!ns.exec_ok(&["iptables-save"]).contains("ISTIO_"));
    assert!(!ns.exec_ok(&["ip6tables-save"]).contains("ISTIO_"));
    let gone = ns.run(|| ipset::exists("istio-inpod-probes-v4").unwrap());
    assert!(!gone);
    let out = host(&["--diff"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("missing: ipset: istio-inpod-probes-v4 hash:ip")
    );
}

/// `nft -a list ruleset`: with the handles, which a rewrite of any rule or chain would change.
fn nft_handles(ns: &Netns) -> String {
    ns.exec_ok(&["nft", "-a", "list", "ruleset"])
}

#[test]
fn nftables_pod_install_is_one_batch_idempotent_replaces_and_cleans_up_exactly() {
    let test = "nftables_pod_install_is_one_batch_idempotent_replaces_and_cleans_up_exactly";
    if !require_root(test) {
        return;
    }
    let ns = Netns::new("ambnft");
    ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    // A foreign table, and a foreign chain in an inet table of another name: both stay.
    ns.exec_ok(&["nft", "add", "table", "inet", "foreign"]);
    ns.exec_ok(&["nft", "add", "chain", "inet", "foreign", "mine"]);

    let dns_v6 = [
        "--backend",
        "nftables",
        "--ambient-dns-capture",
        "--ambient-ipv6",
    ];
    assert!(pod(&ns, &dns_v6).contains("rules installed"));
    let listed = ns.exec_ok(&["nft", "list", "ruleset"]);
    for table in [
        "istio-ambient-nat",
        "istio-ambient-mangle",
        "istio-ambient-raw",
    ] {
        assert!(
            listed.contains(&format!("table inet {table} {{")),
            "{listed}"
        );
    }
    assert!(
        listed.contains("ct mark set ct mark & 0xfffff111 | 0x00000111"),
        "{listed}"
    );
    assert!(listed.contains("ct zone set 1"), "{listed}");
    let rules = ns.exec_ok(&["ip", "rule"]) + &ns.exec_ok(&["ip", "-6", "rule"]);
    assert_eq!(
        rules.matches("fwmark 0x111/0xfff lookup 100").count(),
        2,
        "{rules}"
    );

    // Same settings: no write at all (every handle as it was), and --diff agrees.
    let before = nft_handles(&ns);
    assert!(pod(&ns, &dns_v6).contains("already in place"));
    assert_eq!(nft_handles(&ns), before, "a re-run rewrote rules");
    let mut diff = dns_v6.to_vec();
    diff.push("--diff");
    assert!(pod(&ns, &diff).is_empty());

    // Drift: a rule deleted behind meshcap's back is reported (exit 3), and a run restores it.
    let restore = before
        .lines()
        .skip_while(|l| !l.contains("table inet istio-ambient-mangle"))
        .find(|l| l.contains("meta mark set ct mark"));
    common::delete_nft_rule(
        &ns,
        "istio-ambient-mangle",
        "istio-output",
        restore,
        "the restore rule",
    );
    let path = ns.path();
    let mut argv = vec![
        "ambient",
        "pod",
        "--network-namespace",
        path.to_str().unwrap(),
    ];
    argv.extend(&diff);
    let out = meshcap(&argv);
    assert_eq!(out.status.code(), Some(3), "{}", common::text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "missing: inet istio-ambient-mangle istio-output: ct mark & 0x00000fff == 0x00000111"
        ),
        "{text}"
    );
    assert!(pod(&ns, &dns_v6).contains("replaced"));
    assert!(pod(&ns, &diff).is_empty());

    // Other settings: --diff says what differs, then one batch replaces (raw goes).
    let other = ["--backend", "nftables", "--ambient-ipv6"];
    let mut argv = vec![
        "ambient",
        "pod",
        "--network-namespace",
        path.to_str().unwrap(),
    ];
    argv.extend(other);
    argv.push("--diff");
    let out = meshcap(&argv);
    assert_eq!(out.status.code(), Some(3), "{}", common::text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("extra: inet istio-ambient-raw"));
    assert!(pod(&ns, &other).contains("replaced"));
    let listed = ns.exec_ok(&["nft", "list", "ruleset"]);
    assert!(!listed.contains("istio-ambient-raw"), "{listed}");
    assert!(!listed.contains("dport 53"), "{listed}");
    assert!(listed.contains("table inet foreign"), "{listed}");

    // Cleanup: exactly ambient's tables and routing.
    pod(&ns, &["--backend", "nftables", "--cleanup"]);
    let listed = ns.exec_ok(&["nft", "list", "ruleset"]);
    assert_eq!(
        listed.trim(),
        "table inet foreign {\n\tchain mine {\n\t}\n}",
        "{listed}"
    );
    assert!(!ns.exec_ok(&["ip", "rule"]).contains("0x111/0xfff"));
    assert_eq!(ns.exec_ok(&["ip", "route", "show", "table", "100"]), "");
    pod(&ns, &["--backend", "nftables", "--cleanup"]);
}

#[test]
fn nftables_host_install_keeps_the_set_elements_the_agent_adds() {
    let test = "nftables_host_install_keeps_the_set_elements_the_agent_adds";
    if !require_root(test) {
        return;
    }
    let ns = Netns::new("ambnfth");
    let host = |args: &[&str]| {
        let mut all = vec![
            MESHCAP,
            "ambient",
            "host",
            "--ambient-ipv6",
            "--backend",
            "nftables",
            "--kubelet-uid",
            "1000",
        ];
        all.extend(args);
        ns.command(&all).output().unwrap()
    };
    assert!(host(&[]).status.success());
    let listed = ns.exec_ok(&["nft", "list", "ruleset"]);
    assert!(listed.contains("meta l4proto tcp meta skuid 1000 ip daddr @istio-inpod-probes-v4 counter packets 0 bytes 0 snat ip to 169.254.7.127"), "{listed}");
    assert!(listed.contains("type nat hook postrouting priority srcnat; policy accept;"));

    // The agent's side: elements over netlink, add and del idempotent.
    let sets = ProbeSets::Nftables;
    agent_adds(&ns, sets);
    let listed = ns.exec_ok(&[
        "nft",
        "list",
        "set",
        "inet",
        "istio-ambient-nat",
        "istio-inpod-probes-v4",
    ]);
    assert!(listed.contains("elements = { 192.0.2.1 }"), "{listed}");

    // A re-run changes nothing and keeps the elements; --diff ignores them.
    let before = nft_handles(&ns);
    let out = host(&[]);
    assert!(out.status.success());
    assert_eq!(nft_handles(&ns), before);
    assert_eq!(host(&["--diff"]).status.code(), Some(0));
    // Other settings (another uid) replace the rule, and the elements stay.
    let out = ns
        .command(&[
            MESHCAP,
            "ambient",
            "host",
            "--ambient-ipv6",
            "--backend",
            "nftables",
            "--kubelet-uid",
            "0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(host(&["--diff"]).status.code(), Some(3));
    assert!(sets_hold_the_pod(&ns, sets));
    agent_deletes(&ns, sets);

    assert!(host(&["--cleanup"]).status.success());
    assert_eq!(ns.exec_ok(&["nft", "list", "ruleset"]), "");
    assert_eq!(host(&["--diff"]).status.code(), Some(3));
}
