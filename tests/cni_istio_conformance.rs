//! Istio CNI conformance (../shared/conformance/istio-cni): for each case, the case's Pod served
//! by a real TLS API server on loopback, meshcap-cni's ADD run as a kubelet runs it (CNI
//! variables, the file's `CNI_ARGS`, a prevResult), and
//!
//! - with `dry_run_file` in a namespace that has an IPv4 address only, the written IPv4 tables
//!   equal Istio's golden as its test compares them (tables as a set, each table's lines in
//!   order);
//! - applied for real into the standard pod of netns-test-harness, once with the iptables
//!   backend and once with nftables, the standard probe matrix classifies identically.

mod common;

use common::apiserver::{ApiServer, CaForm, Credential, Fault};
use common::cni::{CniNode, interception_state, stdout_json};
use common::{first_difference, repo, rule_lines};
use netns_test_harness::install::split_restore_text;
use netns_test_harness::pod::{PROXY_ID, Pod, map_istio, standard_matrix};
use netns_test_harness::probe::{Class, compare};
use netns_test_harness::skip::{Need, skip};
use netns_test_harness::{Netns, User, require_root};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Case {
    name: String,
    pod: Value,
    golden: String,
}

/// The cases and the file's `cni_args`, or `None` (`test` reported as skipped) without
/// ../shared; MESHCAP_REQUIRE_SHARED=1 turns that into a failure.
fn cases(test: &str) -> Option<(String, Vec<Case>)> {
    let dir = repo().join("../shared/conformance/istio-cni");
    if !dir.join("cases.json").is_file() {
        skip(
            test,
            Need::Shared,
            &format!(
                "{} is absent (no ../shared beside the checkout)",
                dir.display()
            ),
        );
        return None;
    }
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
    let json: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_owned(),
            pod: c["pod"].clone(),
            golden: std::fs::read_to_string(dir.join(c["golden"].as_str().expect("golden")))
                .expect("golden file"),
        })
        .collect::<Vec<_>>();
    assert_eq!(cases.len(), 5, "the Istio CNI conformance set has 5 cases");
    Some((
        json["cni_args"].as_str().expect("cni_args").to_owned(),
        cases,
    ))
}

/// Istio's `getRules`: the IPv4 part of restore text split at `COMMIT`, each block keyed by its
/// `* TABLE` line, its meaningful lines in order.
fn tables(text: &str) -> BTreeMap<String, Vec<String>> {
    let (v4, _v6) = split_restore_text(text);
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in rule_lines(&v4) {
        if line.starts_with('*') {
            current = Some((line, Vec::new()));
        } else if line == "COMMIT" {
            let (table, lines) = current.take().expect("COMMIT without a table");
            assert!(
                out.insert(table.clone(), lines).is_none(),
                "table {table} twice in the IPv4 rules:\n{text}"
            );
        } else {
            current
                .as_mut()
                .unwrap_or_else(|| panic!("rule {line:?} outside a table"))
                .1
                .push(line);
        }
    }
    assert!(current.is_none(), "a table without COMMIT:\n{text}");
    out
}

fn stanza(backend: &str, kubeconfig: &Path, dry_run_file: Option<&Path>) -> Value {
    let mut stanza = json!({
        "type": "meshcap-cni",
        "capture": {"backend": backend},
        "kubernetes": {"kubeconfig": kubeconfig.display().to_string()},
    });
    if let Some(file) = dry_run_file {
        stanza["dry_run_file"] = json!(file.display().to_string());
    }
    stanza
}

/// A bridge plugin's result for an interface holding `addresses`.
fn prev_result(addresses: &[&str]) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/pod"}],
        "ips": addresses.iter().map(|a| json!({"address": a, "interface": 0})).collect::<Vec<_>>(),
    })
}

/// ADD as a kubelet's runtime runs it, with the file's `CNI_ARGS`; panics unless it succeeds.
fn add(node: &CniNode, pod: &Path, cni_args: &str, stanza: &Value, prev: &Value, what: &str) {
    let mut vars = node.vars("ADD", "0123456789ab", Some(pod));
    vars.push(("CNI_ARGS", cni_args.to_owned()));
    let out = node.invoke(
        "meshcap-cni",
        &vars,
        &CniNode::config("1.0.0", stanza, Some(prev)),
    );
    assert!(
        out.status.success(),
        "{what}: ADD failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out), *prev, "{what}: ADD passes prevResult on");
}

#[test]
fn every_case_writes_istios_ipv4_tables() {
    let test = "every_case_writes_istios_ipv4_tables";
    if !require_root(test) {
        return;
    }
    let Some((cni_args, cases)) = cases(test) else {
        return;
    };
    let node = CniNode::new("icnf");
    let mut failures = Vec::new();
    for case in &cases {
        let server = ApiServer::start_in(&node.host, Fault::None);
        server.serve_pod(&case.pod);
        let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
        // IPv4 only: the pod's one interface has an IPv4 address and no IPv6 at all.
        let pod = Netns::new("icnfpod");
        pod.sysctl(&["net.ipv6.conf.all.disable_ipv6=1"]);
        let peer = Netns::new("icnfpeer");
        pod.link(&peer, &["198.51.100.5/24"], &["198.51.100.6/24"]);
        let file = node.dir.join(format!("{}.rules", case.name));
        add(
            &node,
            &pod.path(),
            &cni_args,
            &stanza("iptables", &kubeconfig, Some(&file)),
            &prev_result(&["198.51.100.5/24"]),
            &case.name,
        );
        assert!(
            server.requests() >= 1,
            "{}: the pod was looked up",
            case.name
        );
        assert_eq!(
            interception_state(&pod),
            "",
            "{}: a dry run installs nothing",
            case.name
        );
        let written = std::fs::read_to_string(&file).expect("dry_run_file written");
        let (want, got) = (tables(&case.golden), tables(&written));
        assert!(
            !want.is_empty(),
            "{}: the golden has IPv4 tables",
            case.name
        );
        let want_names: Vec<&String> = want.keys().collect();
        let got_names: Vec<&String> = got.keys().collect();
        if want_names != got_names {
            failures.push(format!(
                "{}: tables {got_names:?}, Istio has {want_names:?}",
                case.name
            ));
            continue;
        }
        for (table, lines) in &want {
            if got[table] != *lines {
                failures.push(format!(
                    "{} {table}: {}",
                    case.name,
                    first_difference(lines, &got[table])
                ));
            }
        }
    }
    println!(
        "{} of {} Istio CNI cases identical",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "cases that differ from Istio's CNI plugin:\n{}",
        failures.join("\n")
    );
}

/// The proxy's identity a case's pod gives (its `istio-proxy` `runAsUser` / `runAsGroup`), so
/// that the standard pod's proxy-owned listener matches it.
fn proxy_user(pod: &Value) -> User {
    let proxy = pod["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("istio-proxy container");
    let id = |key: &str| {
        proxy["securityContext"][key]
            .as_u64()
            .filter(|&v| v != 0)
            .map(|v| u32::try_from(v).expect("id"))
    };
    let uid = id("runAsUser").unwrap_or(PROXY_ID);
    User::new(uid, id("runAsGroup").unwrap_or(uid))
}

/// Installs the case through the plugin into a fresh standard pod with `backend`, probes the
/// standard matrix and removes the pod.
fn observe(
    node: &CniNode,
    cni_args: &str,
    pod_json: &Value,
    backend: &str,
    kubeconfig: &Path,
    what: &str,
) -> Vec<(
    netns_test_harness::probe::Probe,
    netns_test_harness::probe::Outcome,
)> {
    let pod = Pod::with_proxy(&format!("ic{}", &backend[..2]), proxy_user(pod_json));
    add(
        node,
        &pod.pod.path(),
        cni_args,
        &stanza(backend, kubeconfig, None),
        &prev_result(&["192.0.2.1/25", "2001:db8:100::1/64"]),
        what,
    );
    pod.probe(&standard_matrix())
}

#[test]
fn every_case_applied_with_nftables_classifies_as_with_iptables() {
    let test = "every_case_applied_with_nftables_classifies_as_with_iptables";
    if !require_root(test) {
        return;
    }
    let Some((cni_args, cases)) = cases(test) else {
        return;
    };
    let node = CniNode::new("icprb");
    let mut failures = Vec::new();
    let mut probes = 0;
    for case in &cases {
        // The case's addresses and names onto the standard pod's, as tests/probes.rs maps
        // Istio's cases (10.0.0.0/8 becomes 198.51.100.0/24, …).
        let pod_json: Value =
            serde_json::from_str(&map_istio(&case.pod.to_string())).expect("mapped pod");
        let server = ApiServer::start_in(&node.host, Fault::None);
        server.serve_pod(&pod_json);
        let kubeconfig: PathBuf = server.kubeconfig(CaForm::Data, Credential::Token);
        let iptables = observe(
            &node,
            &cni_args,
            &pod_json,
            "iptables",
            &kubeconfig,
            &case.name,
        );
        let captured = iptables
            .iter()
            .filter(|(_, o)| matches!(o.class, Class::CapturedInbound | Class::CapturedOutbound))
            .count();
        assert!(
            captured > 0,
            "{}: the iptables backend captured nothing: the pod was not configured",
            case.name
        );
        let nftables = observe(
            &node,
            &cni_args,
            &pod_json,
            "nftables",
            &kubeconfig,
            &case.name,
        );
        probes += iptables.len() + nftables.len();
        let diff = compare(&iptables, &nftables);
        if !diff.is_empty() {
            let lines: Vec<String> = diff.iter().map(ToString::to_string).collect();
            failures.push(format!(
                "{} ({} of {} probes differ; expected is iptables):\n{}",
                case.name,
                diff.len(),
                iptables.len(),
                lines.join("\n")
            ));
        }
    }
    println!(
        "{} of {} Istio CNI cases classify identically with both backends ({probes} probes)",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
