//! Istio ambient conformance (../shared/conformance/istio-ambient): for every case of its
//! cases.json, in both families, `meshcap ambient pod|host --dry-run` through the binary against
//! Istio's golden.
//!
//! - iptables: the restore text equals the golden without its first two lines (Istio's state
//!   check, not rules).
//! - nftables: semantic, as `nft` sees it: the golden and meshcap's script are each loaded with
//!   `nft -f` into an empty throwaway namespace and `nft list ruleset` must print the same. The
//!   host golden reads probe sets Istio creates elsewhere; they are declared before it as
//!   meshcap's script declares them. The same case installed by the binary over netlink (no
//!   `--dry-run`, no `nft`) in a third namespace must list the same too.
//!
//! Without ../shared the tests skip (MESHCAP_REQUIRE_SHARED=1 makes that a failure); the
//! nftables one also needs root.

mod ambient_common;
mod common;

use common::repo;
use netns_test_harness::Netns;
use netns_test_harness::install::load_nft;
use netns_test_harness::skip::{Need, skip};
use serde_json::Value;
use std::path::PathBuf;

fn shared(test: &str) -> Option<PathBuf> {
    let dir = repo().join("../shared/conformance/istio-ambient");
    if dir.join("cases.json").is_file() {
        Some(dir)
    } else {
        skip(
            test,
            Need::Shared,
            &format!(
                "{} is absent (no ../shared beside the checkout)",
                dir.display()
            ),
        );
        None
    }
}

/// One golden and the command line that should reproduce it.
struct Case {
    golden: String,
    args: Vec<String>,
}

/// `meshcap ambient KIND --dry-run` with the backend, the probe addresses of `addresses` and
/// the two switches.
fn base_args(kind: &str, backend: &str, addresses: &Value, dns: bool, ipv6: bool) -> Vec<String> {
    let address = |key: &str| addresses[key].as_str().expect(key).to_owned();
    vec![
        "ambient".into(),
        kind.into(),
        "--dry-run".into(),
        "--backend".into(),
        backend.into(),
        "--host-probe-snat-ip".into(),
        address("host_probe_snat_ipv4"),
        "--host-probe-snat-ipv6".into(),
        address("host_probe_snat_ipv6"),
        format!("--ambient-dns-capture={dns}"),
        format!("--ambient-ipv6={ipv6}"),
    ]
}

/// Every (case, family) of cases.json for `backend`, golden names as in golden/BACKEND/.
fn cases(dir: &std::path::Path, backend: &str) -> Vec<Case> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let defaults = &json["defaults"];
    let text = |v: &Value| v.as_str().expect("string").to_owned();
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        let suffix = if ipv6 { "_ipv6" } else { "" };
        for case in json["pod"].as_array().unwrap() {
            let dns = case["ambient_dns_capture"]
                .as_bool()
                .or(defaults["ambient_dns_capture"].as_bool())
                .unwrap();
            let mut args = base_args("pod", backend, defaults, dns, ipv6);
            for (key, value) in case["annotations"].as_object().unwrap() {
                args.extend(["--annotation".into(), format!("{key}={}", text(value))]);
            }
            out.push(Case {
                golden: format!("{}{suffix}", text(&case["name"])),
                args,
            });
        }
        for case in json["host"].as_array().unwrap() {
            let own = &case[backend];
            let dns = case["ambient_dns_capture"].as_bool().unwrap_or(false);
            let mut args = base_args("host", backend, own, dns, ipv6);
            if let Some(uid) = own["kubelet_uid"].as_u64() {
                args.extend(["--kubelet-uid".into(), uid.to_string()]);
            }
            out.push(Case {
                golden: format!("{}{suffix}", text(&case["name"])),
                args,
            });
        }
    }
    // Every golden of the backend is covered, and only goldens that exist are.
    let mut goldens: Vec<String> = std::fs::read_dir(dir.join("golden").join(backend))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".golden")
                .to_owned()
        })
        .collect();
    let mut named: Vec<String> = out.iter().map(|c| c.golden.clone()).collect();
    goldens.sort();
    named.sort();
    assert_eq!(named, goldens, "cases.json and golden/{backend} disagree");
    out
}

fn golden(dir: &std::path::Path, backend: &str, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("golden/{backend}/{name}.golden"))).unwrap()
}

/// meshcap's dry-run output for `args`; panics unless it succeeds.
fn dry_run(args: &[String]) -> String {
    let out = ambient_common::meshcap(args);
    assert!(
        out.status.success(),
        "meshcap {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn iptables_dry_run_is_istios_restore_text() {
    let Some(dir) = shared("iptables_dry_run_is_istios_restore_text") else {
        return;
    };
    let all = cases(&dir, "iptables");
    assert_eq!(all.len(), 10);
    for case in all {
        let text = golden(&dir, "iptables", &case.golden);
        let expected: Vec<&str> = text.lines().skip(2).collect();
        let ours = dry_run(&case.args);
        assert_eq!(
            ours.trim_end().lines().collect::<Vec<_>>(),
            expected,
            "{}: meshcap {}",
            case.golden,
            case.args.join(" ")
        );
    }
}

/// `nft list ruleset` of a namespace after loading `script` into it empty.
fn listed(ns: &Netns, script: &str) -> String {
    ns.exec_ok(&["nft", "flush", "ruleset"]);
    load_nft(ns, script).unwrap_or_else(|e| panic!("{e}\n{script}"));
    ns.exec_ok(&["nft", "list", "ruleset"])
}

/// The probe sets the host golden reads, declared as meshcap's host script declares them.
fn probe_sets(ipv6: bool) -> String {
    let mut text = "add table inet istio-ambient-nat\n\
                    add set inet istio-ambient-nat istio-inpod-probes-v4 { type ipv4_addr ; }\n"
        .to_owned();
    if ipv6 {
        text.push_str(
            "add set inet istio-ambient-nat istio-inpod-probes-v6 { type ipv6_addr ; }\n",
        );
    }
    text
}

#[test]
fn nftables_dry_run_lists_as_istios_transaction() {
    let test = "nftables_dry_run_lists_as_istios_transaction";
    let Some(dir) = shared(test) else { return };
    if !netns_test_harness::require_root(test) {
        return;
    }
    let all = cases(&dir, "nftables");
    assert_eq!(all.len(), 10);
    let (theirs_ns, ours_ns) = (Netns::new("ambgolden"), Netns::new("ambours"));
    let netlink_ns = Netns::new("ambnl");
    netlink_ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    for case in all {
        let mut istio = golden(&dir, "nftables", &case.golden);
        if case.golden.starts_with("hostprobe") {
            istio = probe_sets(case.golden.ends_with("_ipv6")) + &istio;
        }
        let ours = dry_run(&case.args);
        let (theirs, mine) = (listed(&theirs_ns, &istio), listed(&ours_ns, &ours));
        assert!(!theirs.trim().is_empty(), "{}", case.golden);
        assert_eq!(
            mine,
            theirs,
            "{}: meshcap {}\n--- meshcap's script:\n{ours}",
            case.golden,
            case.args.join(" ")
        );
        // Installed over netlink, then removed again (rules and routing).
        let mut argv = vec![common::MESHCAP.to_owned()];
        argv.extend(case.args.iter().filter(|a| *a != "--dry-run").cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        netlink_ns.exec_ok(&argv);
        let installed = netlink_ns.exec_ok(&["nft", "list", "ruleset"]);
        assert_eq!(installed, theirs, "{}: installed over netlink", case.golden);
        let mut cleanup = argv.clone();
        cleanup.push("--cleanup");
        netlink_ns.exec_ok(&cleanup);
        assert_eq!(netlink_ns.exec_ok(&["nft", "list", "ruleset"]), "");
    }
}
