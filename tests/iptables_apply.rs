//! On a real kernel: meshcap's iptables backend applied in a throwaway namespace, through
//! iptables-nft and iptables-legacy, holds every rule of the plan when read back with
//! iptables-save; a second run is a no-op; cleanup removes everything.

mod common;

use common::{MESHCAP, NO_ENV, istio_args, meshcap_in, ok};
use netns_test_harness::{Netns, require_root};
use std::process::Output;

/// meshcap with Istio's default flags and `extra`, in `ns`.
fn meshcap(ns: &Netns, extra: &[&str]) -> Output {
    meshcap_in(ns, &istio_args(extra), NO_ENV)
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

/// A directory whose only programs are links to the iptables-nft tools but ip6tables-nft-restore:
/// the state can be read and the IPv4 restore works, the IPv6 one cannot start.
fn path_without_ip6tables() -> tempdir::Dir {
    let dir = tempdir::Dir::new("meshcap-noip6t");
    for tool in [
        "iptables-nft-restore",
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
    ] {
        let target = format!("/usr/sbin/{tool}");
        std::os::unix::fs::symlink(&target, dir.path().join(tool)).expect("symlink");
    }
    dir
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("mkdir");
            Dir(path)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// When IPv6 cannot be applied after IPv4 was, meshcap puts the IPv4 rules back as they were and
/// exits 1 naming the missing program: never half a ruleset.
#[test]
fn a_failure_after_ipv4_leaves_no_half_ruleset() {
    if !require_root("a_failure_after_ipv4_leaves_no_half_ruleset") {
        return;
    }
    let ns = Netns::new("halfapply");
    let dir = path_without_ip6tables();
    let run = |extra: &[&str]| {
        let path = format!("PATH={}", dir.path().display());
        // PATH through `env`: set on `ip netns exec`, it would also be where `ip` is looked for.
        let mut argv = vec!["env", &path, MESHCAP];
        argv.extend(istio_args(&[
            "--ipv6",
            "on",
            "--force-iptables-binary",
            "nft",
        ]));
        argv.extend(extra);
        ns.exec(&argv)
    };

    // Fresh namespace: nothing may remain.
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ip6tables-nft-restore"),
        "names the missing program: {stderr}"
    );
    assert!(
        saved_rules(&ns, "iptables-nft-save").is_empty(),
        "IPv4 rules left behind"
    );

    // A namespace holding an older configuration keeps exactly it.
    ok(&meshcap(
        &ns,
        &["--ipv6", "off", "--force-iptables-binary", "nft"],
    ));
    let before = saved_rules(&ns, "iptables-nft-save");
    let out = run(&["-b", "8080", "--reconcile"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(saved_rules(&ns, "iptables-nft-save"), before);
}
