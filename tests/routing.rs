//! On a real kernel: the routing steps of TPROXY and IPv6 (fwmark rule, local default route,
//! `::6` on lo) applied over rtnetlink in a throwaway namespace leave exactly what Istio's `ip`
//! commands leave in another one; applying again changes nothing (no stacked rules); cleaning
//! restores the namespace's initial state, and cleaning again is fine.

mod common;

use common::{NO_ENV, istio_args, meshcap_in, ok};
use meshcap::backend::{BackendError, routing};
use meshcap::plan::{Family, RoutingStep};
use netns_test_harness::{Netns, require_root};
use std::process::Output;

/// The steps of a TPROXY + IPv6 plan with mark `mark` and route table `table`.
fn tproxy_ipv6_steps(mark: u32, table: u32) -> Vec<RoutingStep> {
    let mut steps = Vec::new();
    for family in [Family::V4, Family::V6] {
        steps.push(RoutingStep::FwmarkRule {
            family,
            mark,
            table,
        });
        steps.push(RoutingStep::LocalDefaultRoute { family, table });
    }
    steps.push(RoutingStep::LoopbackAddress {
        addr: "::6/128".parse().unwrap(),
    });
    steps
}

/// What Istio runs for the same plan (tools/common/tproxy/run_linux.go), except that meshcap
/// adds `::6` with `nodad` on purpose, so that the proxy can bind it at once. `inbound`: whether
/// any inbound port is captured (Istio adds the TPROXY rule and route only then).
fn istio_commands(mark: u32, table: u32, inbound: bool) -> Vec<Vec<String>> {
    let (mark, table) = (mark.to_string(), table.to_string());
    let mut cmds = Vec::new();
    let tproxy_families: &[&str] = if inbound { &["inet", "inet6"] } else { &[] };
    for family in tproxy_families {
        cmds.push(vec![
            "ip", "-f", family, "rule", "add", "fwmark", &mark, "lookup", &table,
        ]);
        cmds.push(vec![
            "ip", "-f", family, "route", "add", "local", "default", "dev", "lo", "table", &table,
        ]);
    }
    cmds.push(vec![
        "ip", "-6", "addr", "add", "::6/128", "dev", "lo", "nodad",
    ]);
    cmds.into_iter()
        .map(|c| c.into_iter().map(str::to_owned).collect())
        .collect()
}

/// Everything the steps can touch, as `ip` prints it (`-d` also shows the rule's and route's
/// protocol), labelled by command.
fn state(ns: &Netns, table: u32) -> Vec<(String, String)> {
    let table = table.to_string();
    let cmds: [&[&str]; 5] = [
        &["ip", "-d", "-4", "rule"],
        &["ip", "-d", "-6", "rule"],
        &["ip", "-d", "-4", "route", "show", "table", &table],
        &["ip", "-d", "-6", "route", "show", "table", &table],
        &["ip", "-6", "addr", "show", "dev", "lo"],
    ];
    cmds.iter()
        .map(|argv| (argv.join(" "), show(ns, argv)))
        .collect()
}

/// The output of an `ip ... show` command; an IPv4 routing table that was never created holds
/// no routes (the kernel keeps a table once created, even when emptied, so this makes a fresh
/// namespace and a cleaned one compare equal).
fn show(ns: &Netns, argv: &[&str]) -> String {
    let out = ns.exec(argv);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            stderr.contains("FIB table does not exist"),
            "{argv:?} failed ({}): {stderr}",
            out.status
        );
        return String::new();
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The output of `command` in a [`state`].
fn output<'a>(state: &'a [(String, String)], command: &str) -> &'a str {
    &state.iter().find(|(c, _)| c == command).expect(command).1
}

/// The namespace state Istio's own commands produce, from a fresh namespace.
fn istio_state(mark: u32, table: u32) -> Vec<(String, String)> {
    istio_state_of(mark, table, true)
}

fn istio_state_of(mark: u32, table: u32, inbound: bool) -> Vec<(String, String)> {
    let reference = Netns::new("rtref");
    for cmd in istio_commands(mark, table, inbound) {
        let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
        reference.exec_ok(&argv);
    }
    state(&reference, table)
}

fn apply_in(ns: &Netns, steps: &[RoutingStep]) -> Result<(), BackendError> {
    let steps = steps.to_vec();
    ns.run(move || routing::apply(&steps))
}

fn clean_in(ns: &Netns, steps: &[RoutingStep]) -> Result<(), BackendError> {
    let steps = steps.to_vec();
    ns.run(move || routing::clean(&steps))
}

/// apply, apply again, clean, clean again: checked against Istio's result and the initial state.
fn cycle(tag: &str, mark: u32, table: u32) {
    let ns = Netns::new(tag);
    let steps = tproxy_ipv6_steps(mark, table);
    let initial = state(&ns, table);
    let istio = istio_state(mark, table);
    assert_ne!(initial, istio, "the steps must change the namespace");

    apply_in(&ns, &steps).expect("apply");
    let applied = state(&ns, table);
    assert_eq!(
        applied, istio,
        "apply must leave what Istio's ip commands leave"
    );

    apply_in(&ns, &steps).expect("apply again");
    assert_eq!(
        state(&ns, table),
        istio,
        "a second apply must change nothing"
    );

    clean_in(&ns, &steps).expect("clean");
    assert_eq!(state(&ns, table), initial, "clean must remove every step");

    clean_in(&ns, &steps).expect("clean again");
    assert_eq!(state(&ns, table), initial);
}

#[test]
fn tproxy_ipv6_steps_match_istio_and_clean_up() {
    if !require_root("tproxy_ipv6_steps_match_istio_and_clean_up") {
        return;
    }
    cycle("rtcycle", 1337, 133);

    // And in Istio's exact spelling, so that the reference itself is what is expected.
    let istio = istio_state(1337, 133);
    let rule = "32765:\tfrom all fwmark 0x539 lookup 133 proto unspec";
    for command in ["ip -d -4 rule", "ip -d -6 rule"] {
        let rules: Vec<&str> = output(&istio, command).lines().map(str::trim_end).collect();
        assert_eq!(
            rules.iter().filter(|l| l.contains("fwmark")).count(),
            1,
            "{rules:?}"
        );
        assert!(rules.contains(&rule), "{command}: {rules:?}");
    }
    assert!(
        output(&istio, "ip -d -4 route show table 133").starts_with("local default dev lo ")
            && output(&istio, "ip -d -4 route show table 133").contains("scope host"),
        "{istio:?}"
    );
    assert!(
        output(&istio, "ip -d -6 route show table 133").starts_with("local default dev lo "),
        "{istio:?}"
    );
    assert!(
        output(&istio, "ip -6 addr show dev lo").contains("inet6 ::6/128 scope global"),
        "{istio:?}"
    );
}

#[test]
fn table_ids_above_255_work() {
    if !require_root("table_ids_above_255_work") {
        return;
    }
    // The 8-bit header field cannot hold these; the 32-bit attribute must carry them.
    cycle("rtbig", 0x4d2, 70000);
}

#[test]
fn apply_adds_no_copy_and_clean_removes_every_copy_of_the_rule() {
    if !require_root("apply_adds_no_copy_and_clean_removes_every_copy_of_the_rule") {
        return;
    }
    let ns = Netns::new("rtdup");
    let steps = tproxy_ipv6_steps(1337, 133);
    let initial = state(&ns, 133);
    // Two istio-init runs without cleanup stack two copies of the rule.
    for _ in 0..2 {
        ns.exec_ok(&[
            "ip", "-f", "inet", "rule", "add", "fwmark", "1337", "lookup", "133",
        ]);
    }
    // A rule with another selector is not the step's rule and must survive both operations.
    ns.exec_ok(&[
        "ip", "-f", "inet", "rule", "add", "iif", "eth9", "fwmark", "1337", "lookup", "133",
    ]);
    let fwmark_rules = |ns: &Netns| -> Vec<String> {
        ns.exec_ok(&["ip", "-4", "rule"])
            .lines()
            .filter(|l| l.contains("fwmark"))
            .map(str::to_owned)
            .collect()
    };
    let before = fwmark_rules(&ns);
    assert_eq!(before.len(), 3, "{before:?}");

    apply_in(&ns, &steps).expect("apply");
    assert_eq!(fwmark_rules(&ns), before, "apply must not add a third copy");

    clean_in(&ns, &steps).expect("clean");
    let left = fwmark_rules(&ns);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("iif eth9"), "{left:?}");
    ns.exec_ok(&[
        "ip", "-f", "inet", "rule", "del", "iif", "eth9", "fwmark", "1337", "lookup", "133",
    ]);
    assert_eq!(state(&ns, 133), initial);
}

#[test]
fn refusal_names_the_ip_command_and_undoes_what_the_run_added() {
    if !require_root("refusal_names_the_ip_command_and_undoes_what_the_run_added") {
        return;
    }
    let ns = Netns::new("rtrefuse");
    // With IPv6 off on lo, the kernel takes the IPv4 steps and the IPv6 rule, then refuses the
    // IPv6 route through lo.
    ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"]);
    let initial = state(&ns, 133);
    match apply_in(&ns, &tproxy_ipv6_steps(1337, 133)) {
        Err(BackendError::Netlink { what, reason }) => {
            assert_eq!(what, "ip -f inet6 route add local default dev lo table 133");
            assert_eq!(reason, "Permission denied", "the kernel's EACCES");
        }
        other => panic!("expected a netlink refusal, got {other:?}"),
    }
    assert_eq!(
        state(&ns, 133),
        initial,
        "the steps added before the refusal must be gone"
    );
}

#[test]
fn a_failed_apply_keeps_steps_that_were_already_in_place() {
    if !require_root("a_failed_apply_keeps_steps_that_were_already_in_place") {
        return;
    }
    let ns = Netns::new("rtkeep");
    ns.exec_ok(&[
        "ip", "-f", "inet", "rule", "add", "fwmark", "1337", "lookup", "133",
    ]);
    ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"]);
    let before = state(&ns, 133);
    apply_in(&ns, &tproxy_ipv6_steps(1337, 133)).expect_err("the IPv6 route is refused");
    assert_eq!(
        state(&ns, 133),
        before,
        "only what this run added is undone"
    );
}

fn meshcap(ns: &Netns, extra: &[&str]) -> Output {
    let mut args = istio_args(&[
        "-m",
        "TPROXY",
        "--ipv6",
        "on",
        "--force-iptables-binary",
        "nft",
    ]);
    args.extend(extra);
    meshcap_in(ns, &args, NO_ENV)
}

#[test]
fn binary_installs_and_removes_the_routing_steps() {
    if !require_root("binary_installs_and_removes_the_routing_steps") {
        return;
    }
    let ns = Netns::new("rtbin");
    let initial = state(&ns, 133);
    let istio = istio_state(1337, 133);

    let stderr = ok(&meshcap(&ns, &[]));
    assert!(stderr.contains("rules installed"), "{stderr}");
    assert_eq!(state(&ns, 133), istio);

    let stderr = ok(&meshcap(&ns, &[]));
    assert!(stderr.contains("already in place"), "{stderr}");
    assert_eq!(state(&ns, 133), istio, "a second run must change nothing");

    ok(&meshcap(&ns, &["--cleanup-only"]));
    assert_eq!(
        state(&ns, 133),
        initial,
        "--cleanup-only must remove rule, routes and ::6"
    );
}

/// `-b ""` captures no inbound port, so TPROXY has nothing to route: as Istio, no fwmark rule and
/// no route, only IPv6's `::6`; cleanup with the same flags restores the initial state.
#[test]
fn tproxy_without_inbound_capture_adds_only_the_passthrough_address() {
    if !require_root("tproxy_without_inbound_capture_adds_only_the_passthrough_address") {
        return;
    }
    let ns = Netns::new("rtnoin");
    let initial = state(&ns, 133);
    let istio = istio_state_of(1337, 133, false);
    for command in ["ip -d -4 rule", "ip -d -6 rule"] {
        assert!(!output(&istio, command).contains("fwmark"), "{istio:?}");
    }
    assert!(
        output(&istio, "ip -6 addr show dev lo").contains("::6/128"),
        "{istio:?}"
    );

    let stderr = ok(&meshcap(&ns, &["-b", ""]));
    assert!(stderr.contains("rules installed"), "{stderr}");
    assert_eq!(state(&ns, 133), istio);

    ok(&meshcap(&ns, &["-b", "", "--cleanup-only"]));
    assert_eq!(state(&ns, 133), initial);
}

/// `::6` that was on lo before meshcap ran is not meshcap's to remove; the one meshcap adds is
/// marked (IFA_PROTO) and removed by cleanup.
#[test]
fn cleanup_removes_only_the_passthrough_address_meshcap_added() {
    if !require_root("cleanup_removes_only_the_passthrough_address_meshcap_added") {
        return;
    }
    let steps = vec![RoutingStep::LoopbackAddress {
        addr: "::6/128".parse().unwrap(),
    }];
    let has_6 =
        |ns: &Netns| show(ns, &["ip", "-6", "addr", "show", "dev", "lo"]).contains("::6/128");

    let ours = Netns::new("addrours");
    apply_in(&ours, &steps).expect("apply");
    assert!(has_6(&ours));
    clean_in(&ours, &steps).expect("clean");
    assert!(!has_6(&ours), "meshcap's ::6 must go");

    let theirs = Netns::new("addrtheirs");
    theirs.exec_ok(&["ip", "-6", "addr", "add", "::6/128", "dev", "lo"]);
    apply_in(&theirs, &steps).expect("apply over an existing ::6");
    clean_in(&theirs, &steps).expect("clean");
    assert!(has_6(&theirs), "a ::6 meshcap did not add must stay");
}
