//! Faults on a real kernel: meshcap killed with SIGKILL at spread-out moments of an apply.
//!
//! iptables-restore commits table by table and family by family, so a kill can land between two
//! commits. What meshcap guarantees with the iptables backend: after any kill the namespace holds
//! the old ruleset, the new one, or a part of the new one that the next run of the same command
//! completes (an interrupted install is recognised as such; an interrupted replace needs the
//! --reconcile it was started with). The nftables backend commits everything in one batch.

mod common;

use common::{MESHCAP, NO_ENV, istio_args, meshcap_in, ok};
use netns_test_harness::{Netns, require_root};
use std::process::Stdio;

/// Old and new configurations: TPROXY in both families (three tables each), then REDIRECT with
/// other ports, so that every table changes.
fn old_args() -> Vec<&'static str> {
    let mut args = istio_args(&["-m", "TPROXY", "-d", "15090,15021", "--redirect-dns"]);
    args.extend(["--dns-servers", "192.0.2.53,2001:db8::53", "--ipv6", "on"]);
    args
}

fn new_args() -> Vec<&'static str> {
    istio_args(&["-b", "8080,9080", "--ipv6", "on"])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Old,
    New,
    Other,
}

fn state(ns: &Netns, backend: &[&str]) -> State {
    let in_sync = |args: Vec<&str>| {
        let mut argv = vec!["diff"];
        argv.extend(args);
        argv.extend(backend);
        meshcap_in(ns, &argv, NO_ENV).status.code() == Some(0)
    };
    if in_sync(new_args()) {
        State::New
    } else if in_sync(old_args()) {
        State::Old
    } else {
        State::Other
    }
}

fn run(ns: &Netns, args: Vec<&str>, backend: &[&str], extra: &[&str]) -> std::process::Output {
    let mut argv = args;
    argv.extend(backend);
    argv.extend(extra);
    meshcap_in(ns, &argv, NO_ENV)
}

/// Kills `meshcap NEW --reconcile` at 24 points from 0 to 120 % of an uninterrupted run's time
/// and checks what the namespace holds.
/// Returns how often each state was seen.
fn kill_during_replace(ns: &Netns, backend: &[&str]) -> [usize; 3] {
    let mut seen = [0; 3];
    // Kill points spread over how long an uninterrupted replace takes on this machine now
    // (timing places the kills; it decides no outcome).
    ok(&run(ns, old_args(), backend, &["--reconcile"]));
    let started = std::time::Instant::now();
    ok(&run(ns, new_args(), backend, &["--reconcile"]));
    let step = started.elapsed() / 20;
    for delay in (0..24u32).map(|i| step * i) {
        ok(&run(ns, old_args(), backend, &["--reconcile"]));
        assert_eq!(state(ns, backend), State::Old);

        let mut argv = vec![MESHCAP];
        argv.extend(new_args());
        argv.extend(backend);
        argv.push("--reconcile");
        let mut child = ns
            .command(&argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("wait");
        let after = state(ns, backend);
        if status.success() {
            assert_eq!(
                after,
                State::New,
                "a successful exit means the new ruleset is complete"
            );
        }
        seen[after as usize] += 1;
        // Whatever was left, the same command again ends with the new ruleset complete.
        let out = run(ns, new_args(), backend, &["--reconcile"]);
        assert!(
            out.status.success(),
            "delay {delay:?}, left {after:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(state(ns, backend), State::New, "delay {delay:?}");
    }
    seen
}

#[test]
fn iptables_killed_mid_apply_recovers_on_the_next_run() {
    if !require_root("iptables_killed_mid_apply_recovers_on_the_next_run") {
        return;
    }
    let ns = Netns::new("killipt");
    let seen = kill_during_replace(&ns, &["--force-iptables-binary", "nft"]);
    println!(
        "iptables-nft, SIGKILL during replace: old {} / new {} / mixed {}",
        seen[0], seen[1], seen[2]
    );
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the kill points must cover both before and after: {seen:?}"
    );
}

#[test]
fn iptables_interrupted_install_is_completed_without_reconcile() {
    if !require_root("iptables_interrupted_install_is_completed_without_reconcile") {
        return;
    }
    let ns = Netns::new("partial");
    // An install killed after IPv4 was committed: IPv4 rules of the new config, no IPv6 ones.
    let dry = run(
        &ns,
        new_args(),
        &["--force-iptables-binary", "nft"],
        &["--dry-run"],
    );
    let dry = String::from_utf8(dry.stdout).unwrap();
    let v4: String = dry.split("# ipv6").next().unwrap().to_owned();
    let out = ns.exec_with_input(&["iptables-nft-restore", "--noflush"], &v4);
    assert!(out.status.success());
    // The DNS-less first table only: a part of the plan, no --reconcile needed to complete it.
    ok(&run(
        &ns,
        new_args(),
        &["--force-iptables-binary", "nft"],
        &[],
    ));
    assert_eq!(state(&ns, &["--force-iptables-binary", "nft"]), State::New);
}

#[test]
fn nftables_killed_mid_apply_leaves_old_or_new_never_a_mix() {
    if !require_root("nftables_killed_mid_apply_leaves_old_or_new_never_a_mix") {
        return;
    }
    let ns = Netns::new("killnft");
    let seen = kill_during_replace(&ns, &["--backend", "nftables"]);
    println!(
        "nftables, SIGKILL during replace: old {} / new {} / mixed {}",
        seen[0], seen[1], seen[2]
    );
    assert_eq!(seen[2], 0, "one transaction: never a mix, got {seen:?}");
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the kill points must cover both before and after: {seen:?}"
    );
}
