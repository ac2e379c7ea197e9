//! The probe harness itself: identities, listeners and classification are what they claim to
//! be, independently of meshcap (rules here are written by hand).

use netns_test_harness::install::{IstioRouting, load_restore_text};
use netns_test_harness::pod::{Pod, standard_matrix};
use netns_test_harness::probe::Class;
use netns_test_harness::{Netns, User, require_root};

#[test]
fn run_as_changes_only_its_own_thread() {
    if !require_root("run_as_changes_only_its_own_thread") {
        return;
    }
    let ns = Netns::new("runas");
    let user = User {
        uid: 1000,
        gid: 1001,
        supplementary: Some(1337),
    };
    let (uid, gid, groups) = ns.run_as(user, || {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            nix::unistd::getgroups()
                .expect("getgroups")
                .iter()
                .map(|g| g.as_raw())
                .collect::<Vec<_>>(),
        )
    });
    assert_eq!((uid, gid, groups), (1000, 1001, vec![1337]));
    assert!(nix::unistd::getuid().is_root() && nix::unistd::geteuid().is_root());
    assert_eq!(nix::unistd::getgid().as_raw(), 0);
}

#[test]
fn without_rules_every_connection_is_direct() {
    if !require_root("without_rules_every_connection_is_direct") {
        return;
    }
    let pod = Pod::new("norules");
    for (probe, outcome) in pod.probe(&standard_matrix()) {
        // ::6 is not on lo without IPv6 capture's routing step.
        if probe.src.is_some_and(|s| s.to_string() == "::6") {
            assert_eq!(outcome.to_string(), "error EADDRNOTAVAIL", "{probe}");
            continue;
        }
        assert_eq!(outcome.class, Class::Direct, "{probe}: {outcome}");
        // The destination itself accepted, at the address the client asked for.
        assert!(
            outcome.seen.ends_with(&probe.dst.to_string()),
            "{probe}: {outcome}"
        );
    }
    pod.assert_table(
        "pod 1000:1000 tcp 198.51.100.10:80  -> direct server 198.51.100.10:80
         pod 1000:1000 tcp 198.51.100.10:9999 -> refused ECONNREFUSED
         peer vm0 tcp 198.51.100.10:80       -> direct server 198.51.100.10:80
         pod 1000:1000 udp 192.0.2.53:53     -> direct server 192.0.2.53:53
         pod 1000:1000 udp 192.0.2.53:54     -> refused ECONNREFUSED",
    );
}

#[test]
fn owner_match_sees_the_probe_identity() {
    if !require_root("owner_match_sees_the_probe_identity") {
        return;
    }
    let pod = Pod::new("owner");
    let rules = "*nat
-A OUTPUT -p tcp -m owner --uid-owner 1000 -j REDIRECT --to-ports 15001
-A OUTPUT -p tcp -m owner --gid-owner 1337 -j REDIRECT --to-ports 15006
-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1000 -j REDIRECT --to-ports 15053
COMMIT
# ipv6
*nat
-A OUTPUT -p tcp -m owner --uid-owner 1000 -j REDIRECT --to-ports 15001
COMMIT
";
    load_restore_text(&pod.pod, rules, "legacy").expect("rules");
    pod.assert_table(
        "pod 1000:1000 tcp 198.51.100.10:80       -> captured-outbound 198.51.100.10:80
         pod 1000:1000 tcp [2001:db8:2::10]:7777  -> captured-outbound [2001:db8:2::10]:7777
         pod 1001:1000 tcp 198.51.100.10:80       -> direct server 198.51.100.10:80
         pod 1001:1337 tcp 198.51.100.10:80       -> captured-inbound 198.51.100.10:80
         pod 1001:1000+1337 tcp 198.51.100.10:80  -> direct server 198.51.100.10:80
         pod 1001:1000 udp 192.0.2.53:53          -> direct server 192.0.2.53:53",
    );
}

#[test]
fn tproxy_listener_reports_the_original_destination() {
    if !require_root("tproxy_listener_reports_the_original_destination") {
        return;
    }
    let pod = Pod::new("tproxy");
    let rules = "*mangle
-A PREROUTING -i net0 -p tcp --dport 8080 -j TPROXY --on-port 15006 --tproxy-mark 1337/0xffffffff
COMMIT
*mangle
-A PREROUTING -i net0 -p tcp --dport 8080 -j TPROXY --on-port 15006 --tproxy-mark 1337/0xffffffff
COMMIT
";
    load_restore_text(&pod.pod, rules, "legacy").expect("rules");
    IstioRouting {
        tproxy: Some((1337, 133)),
        ipv6: true,
    }
    .apply(&pod.pod);
    pod.assert_table(
        "peer net tcp 192.0.2.1:8080           -> captured-inbound 192.0.2.1:8080
         peer net tcp [2001:db8:100::1]:8080   -> captured-inbound [2001:db8:100::1]:8080
         peer net tcp 192.0.2.1:9080           -> direct app 192.0.2.1:9080
         pod 1337:1337 tcp 192.0.2.1:8080 src 127.0.0.6 -> direct app 192.0.2.1:8080
         pod 1337:1337 tcp [2001:db8:100::1]:8080 src ::6 -> direct app [2001:db8:100::1]:8080",
    );
}

/// The example of netns-test-harness/README.md, verbatim.
#[test]
fn outbound_goes_to_the_proxy() {
    if !require_root("outbound_goes_to_the_proxy") {
        return;
    }
    let pod = Pod::new("mytest");
    let ns = pod.pod.path().display().to_string();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_meshcap"))
        .args([
            "-u",
            "1337",
            "-i",
            "*",
            "-b",
            "*",
            "--ipv6",
            "off",
            "--network-namespace",
            &ns,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    pod.assert_table(
        "pod 1000:1000 tcp 198.51.100.10:80   -> captured-outbound 198.51.100.10:80
         pod 1337:1000 tcp 198.51.100.10:80   -> direct server 198.51.100.10:80
         peer net tcp 192.0.2.1:8080          -> captured-inbound 192.0.2.1:8080
         pod 1337:1337 tcp 192.0.2.1:8080 src 127.0.0.6 -> direct app 192.0.2.1:8080
         pod 1000:1000 udp 192.0.2.53:53      -> direct server 192.0.2.53:53",
    );
}
