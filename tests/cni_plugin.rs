//! meshcap-cni driven as a runtime drives it: the CNI variables and stdin, chained after Debian's
//! real bridge and host-local plugins, every command, version and error path, in throwaway
//! namespaces (the plugins run in a throwaway "host" namespace, the pod is another).

mod common;

use common::cni::{CniNode, ISTIO_CNI_FLAGS, interception_state, stdout_json};
use netns_test_harness::{Netns, require_root};
use serde_json::{Value, json};

fn stanza(capture: Value) -> Value {
    json!({"type": "meshcap-cni", "capture": capture})
}

/// `meshcap diff` for Istio's CNI defaults plus `extra` in `pod`: exit 0 when the namespace
/// holds exactly that plan.
fn assert_in_sync(node: &CniNode, pod: &Netns, extra: &[&str]) {
    let ns = pod.path().display().to_string();
    let mut args = vec!["diff"];
    args.extend(ISTIO_CNI_FLAGS);
    args.extend(extra);
    args.extend(["--network-namespace", &ns]);
    let out = node.meshcap(&args);
    assert!(
        out.status.success(),
        "meshcap diff {extra:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn add_check_del_chained_after_bridge_with_each_backend() {
    if !require_root("add_check_del_chained_after_bridge_with_each_backend") {
        return;
    }
    for backend in ["nftables", "iptables"] {
        let node = CniNode::new("acd");
        let pod = Netns::new("cnipod");
        let meshcap = stanza(json!({"backend": backend}));
        let (bridge, out) = node.add_chain("1.0.0", &pod, "ctr1", &meshcap);
        assert!(
            out.status.success(),
            "{backend} ADD: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            stdout_json(&out),
            bridge,
            "{backend}: ADD passes prevResult through"
        );
        assert_in_sync(&node, &pod, &["--backend", backend]);

        let check_vars = node.vars("CHECK", "ctr1", Some(&pod.path()));
        let conf = CniNode::config("1.0.0", &meshcap, Some(&bridge));
        let check = node.invoke("meshcap-cni", &check_vars, &conf);
        assert!(
            check.status.success(),
            "{backend} CHECK: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        assert!(check.stdout.is_empty(), "CHECK prints nothing on success");

        // A runtime retrying ADD: success, nothing changes.
        let again = node.invoke(
            "meshcap-cni",
            &node.vars("ADD", "ctr1", Some(&pod.path())),
            &conf,
        );
        assert!(again.status.success(), "{backend} repeated ADD");
        assert_in_sync(&node, &pod, &["--backend", backend]);

        // Drift: CHECK fails and says what is missing.
        match backend {
            "nftables" => pod.exec_ok(&[
                "nft",
                "flush",
                "chain",
                "inet",
                "istio-proxy-nat",
                "istio-output",
            ]),
            _ => pod.exec_ok(&["iptables-nft", "-t", "nat", "-F", "ISTIO_OUTPUT"]),
        };
        let check = node.invoke("meshcap-cni", &check_vars, &conf);
        assert!(
            !check.status.success(),
            "{backend}: CHECK must fail on drift"
        );
        let err = stdout_json(&check);
        assert_eq!(err["code"], 999);
        assert!(
            err["details"].as_str().unwrap().contains("missing"),
            "{err}"
        );

        // No lock file either (the lock is an abstract socket of the namespace): see
        // tests/namespace_session.rs, which runs the plugin with a private, empty /run.
        let del = node.del_chain("1.0.0", Some(&pod.path()), "ctr1", &meshcap);
        assert!(
            del.status.success(),
            "{backend} DEL: {}",
            String::from_utf8_lossy(&del.stdout)
        );
        assert_eq!(
            interception_state(&pod),
            "",
            "{backend}: DEL leaves nothing"
        );
        let del = node.del_chain("1.0.0", Some(&pod.path()), "ctr1", &meshcap);
        assert!(del.status.success(), "{backend}: a repeated DEL succeeds");
        let gone = pod.path();
        drop(pod);
        let del = node.invoke(
            "meshcap-cni",
            &node.vars("DEL", "ctr1", Some(&gone)),
            &CniNode::config("1.0.0", &meshcap, None),
        );
        assert!(
            del.status.success(),
            "{backend}: DEL of a deleted namespace succeeds"
        );
        let del = node.invoke(
            "meshcap-cni",
            &node.vars("DEL", "ctr1", None),
            &CniNode::config("1.0.0", &meshcap, None),
        );
        assert!(
            del.status.success(),
            "{backend}: DEL without CNI_NETNS succeeds"
        );
    }
}

#[test]
fn every_spec_version_round_trips_the_previous_result() {
    if !require_root("every_spec_version_round_trips_the_previous_result") {
        return;
    }
    let node = CniNode::new("ver");
    let meshcap = stanza(json!({"backend": "nftables"}));
    // Debian's bridge speaks up to 1.0.0; 1.1.0 gets the same result re-labelled, as a 1.1
    // runtime would convert it.
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].into_iter().enumerate() {
        let pod = Netns::new("cniver");
        let container = format!("ver{i}");
        let (bridge, out) = node.add_chain(version, &pod, &container, &meshcap);
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let result = stdout_json(&out);
        assert_eq!(result, bridge, "{version}: result unchanged");
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version < "1.0.0",
            "{version}"
        );
        // The same result handed over in the other shape comes back in the asked version.
        let other = if version < "1.0.0" { "1.1.0" } else { "0.4.0" };
        let pod2 = Netns::new("cniver");
        let conf = CniNode::config(other, &meshcap, Some(&bridge));
        let out = node.invoke(
            "meshcap-cni",
            &node.vars("ADD", "x", Some(&pod2.path())),
            &conf,
        );
        let converted = stdout_json(&out);
        assert_eq!(converted["cniVersion"], other);
        assert_eq!(
            converted["ips"][0].get("version").is_some(),
            other < "1.0.0",
            "{version}->{other}"
        );
        assert_eq!(converted["ips"][0]["address"], bridge["ips"][0]["address"]);
        assert_eq!(converted["interfaces"], bridge["interfaces"]);
        assert!(
            node.del_chain(version, Some(&pod.path()), &container, &meshcap)
                .status
                .success()
        );
    }
    // No prevResult: an empty result of the configuration's version.
    let pod = Netns::new("cniver");
    let out = node.invoke(
        "meshcap-cni",
        &node.vars("ADD", "solo", Some(&pod.path())),
        &CniNode::config("1.1.0", &meshcap, None),
    );
    assert_eq!(stdout_json(&out), json!({"cniVersion": "1.1.0", "dns": {}}));
}

#[test]
fn version_status_and_gc() {
    if !require_root("version_status_and_gc") {
        return;
    }
    let node = CniNode::new("vsg");
    let version = node.invoke_raw(
        "meshcap-cni",
        &[("CNI_COMMAND", "VERSION".into())],
        r#"{"cniVersion":"0.4.0"}"#,
    );
    assert!(version.status.success());
    assert_eq!(
        stdout_json(&version),
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let bare = node.invoke_raw("meshcap-cni", &[("CNI_COMMAND", "VERSION".into())], "");
    assert_eq!(stdout_json(&bare)["cniVersion"], "1.1.0");
    for command in ["STATUS", "GC"] {
        let conf = CniNode::config("1.1.0", &stanza(json!({})), None);
        let out = node.invoke("meshcap-cni", &[("CNI_COMMAND", command.into())], &conf);
        assert!(out.status.success() && out.stdout.is_empty(), "{command}");
    }
}

#[test]
fn dry_run_file_holds_exactly_what_the_installer_prints_and_nothing_is_installed() {
    if !require_root(
        "dry_run_file_holds_exactly_what_the_installer_prints_and_nothing_is_installed",
    ) {
        return;
    }
    let node = CniNode::new("dry");
    for (i, (capture, flags)) in [
        (json!({}), vec![]),
        (
            json!({"backend": "nftables"}),
            vec!["--backend", "nftables"],
        ),
        (
            json!({"istio-inbound-interception-mode": "TPROXY", "istio-service-exclude-cidr": ["203.0.113.0/24"], "istio-local-outbound-ports-exclude": [15020, 5432]}),
            vec!["-m", "TPROXY", "-x", "203.0.113.0/24", "-o", "15020,5432"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let pod = Netns::new("cnidry");
        let file = node.dir.join("rules.txt");
        let mut meshcap = stanza(capture.clone());
        meshcap["dry_run_file"] = json!(file.display().to_string());
        let (bridge, out) = node.add_chain("1.0.0", &pod, &format!("dry{i}"), &meshcap);
        assert!(
            out.status.success(),
            "{capture}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(stdout_json(&out), bridge, "dry run still prints the result");
        let mut args: Vec<&str> = ISTIO_CNI_FLAGS.to_vec();
        args.extend(&flags);
        args.push("--dry-run");
        let printed = node.meshcap(&args);
        assert!(printed.status.success());
        let written = std::fs::read_to_string(&file).expect("dry_run_file written");
        assert_eq!(
            written,
            String::from_utf8_lossy(&printed.stdout),
            "{capture}"
        );
        assert_eq!(
            interception_state(&pod),
            "",
            "{capture}: a dry run installs nothing"
        );
    }
}

#[test]
fn twenty_pods_at_once_all_get_complete_rules() {
    if !require_root("twenty_pods_at_once_all_get_complete_rules") {
        return;
    }
    for backend in ["nftables", "iptables"] {
        let node = CniNode::new("many");
        let pods: Vec<Netns> = (0..20).map(|_| Netns::new("cnimany")).collect();
        let meshcap = stanza(json!({"backend": backend}));
        std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, pod)| {
                    let (node, meshcap) = (&node, &meshcap);
                    s.spawn(move || node.add_chain("1.0.0", pod, &format!("many{i}"), meshcap).1)
                })
                .collect();
            for (i, h) in handles.into_iter().enumerate() {
                let out = h.join().expect("ADD thread");
                assert!(
                    out.status.success(),
                    "{backend} pod {i}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        });
        for pod in &pods {
            assert_in_sync(&node, pod, &["--backend", backend]);
        }
    }
}

/// One malformed invocation: what to change, the code and a word the message must hold.
struct Bad {
    name: &'static str,
    vars: Vec<(&'static str, Option<String>)>,
    stdin: String,
    code: u64,
    needle: &'static str,
}

#[test]
fn bad_input_is_refused_with_the_spec_code_and_nothing_installed() {
    if !require_root("bad_input_is_refused_with_the_spec_code_and_nothing_installed") {
        return;
    }
    let node = CniNode::new("bad");
    let pod = Netns::new("cnibad");
    pod.ip_batch(&["addr add 198.51.100.7/24 dev lo".to_owned()]);
    let not_a_netns = node.dir.join("plain-file");
    std::fs::write(&not_a_netns, "").unwrap();
    let conf = |capture: Value| CniNode::config("1.0.0", &stanza(capture), None).to_string();
    let with = |key: &str, value: Value| {
        let mut c = CniNode::config("1.0.0", &stanza(json!({})), None);
        c[key] = value;
        c.to_string()
    };
    let cap = |capture: Value| conf(capture);
    let set = |name: &'static str, value: &str| vec![(name, Some(value.to_owned()))];
    let unset = |name: &'static str| vec![(name, None)];
    let b = |name, vars, stdin: String, code, needle| Bad {
        name,
        vars,
        stdin,
        code,
        needle,
    };
    let cases = vec![
        b("malformed JSON", vec![], "{".into(), 6, "decode"),
        b("empty stdin", vec![], String::new(), 6, "decode"),
        b("JSON array", vec![], "[1]".into(), 6, "decode"),
        b(
            "no cniVersion",
            vec![],
            r#"{"type":"meshcap-cni"}"#.into(),
            6,
            "cniVersion",
        ),
        b(
            "capture not an object",
            vec![],
            with("capture", json!([1])),
            6,
            "decode",
        ),
        b(
            "no CNI_COMMAND",
            unset("CNI_COMMAND"),
            conf(json!({})),
            4,
            "CNI_COMMAND",
        ),
        b(
            "unknown command",
            set("CNI_COMMAND", "ATTACH"),
            conf(json!({})),
            4,
            "ATTACH",
        ),
        b(
            "no CNI_NETNS",
            unset("CNI_NETNS"),
            conf(json!({})),
            4,
            "CNI_NETNS",
        ),
        b(
            "no CNI_CONTAINERID",
            unset("CNI_CONTAINERID"),
            conf(json!({})),
            4,
            "CNI_CONTAINERID",
        ),
        b(
            "no CNI_IFNAME",
            unset("CNI_IFNAME"),
            conf(json!({})),
            4,
            "CNI_IFNAME",
        ),
        b(
            "no CNI_PATH",
            unset("CNI_PATH"),
            conf(json!({})),
            4,
            "CNI_PATH",
        ),
        b(
            "bad container id",
            set("CNI_CONTAINERID", "../etc"),
            conf(json!({})),
            4,
            "CNI_CONTAINERID",
        ),
        b(
            "netns missing",
            set("CNI_NETNS", "/run/netns/meshcap-no-such-ns"),
            conf(json!({})),
            4,
            "meshcap-no-such-ns",
        ),
        b(
            "netns not a namespace",
            set("CNI_NETNS", &not_a_netns.display().to_string()),
            conf(json!({})),
            4,
            "not a network namespace",
        ),
        b(
            "cniVersion too old",
            vec![],
            with("cniVersion", json!("0.2.0")),
            1,
            "0.2.0",
        ),
        b(
            "cniVersion unknown",
            vec![],
            with("cniVersion", json!("2.0.0")),
            1,
            "2.0.0",
        ),
        b(
            "CHECK before 0.4.0",
            set("CNI_COMMAND", "CHECK"),
            CniNode::config("0.3.1", &stanza(json!({})), None).to_string(),
            1,
            "CHECK",
        ),
        b(
            "STATUS before 1.1.0",
            set("CNI_COMMAND", "STATUS"),
            conf(json!({})),
            1,
            "STATUS",
        ),
        b(
            "prevResult a string",
            vec![],
            with("prevResult", json!("x")),
            6,
            "prevResult",
        ),
        b(
            "prevResult ips not a list",
            vec![],
            with("prevResult", json!({"ips": {}})),
            6,
            "prevResult",
        ),
        b(
            "prevResult bad address",
            vec![],
            with("prevResult", json!({"ips": [{"address": "x"}]})),
            6,
            "prevResult",
        ),
        b(
            "unknown capture key",
            vec![],
            cap(json!({"inbound-ports": "*"})),
            7,
            "inbound-ports",
        ),
        b(
            "capture key with underscores",
            vec![],
            cap(json!({"istio_service_cidr": "*"})),
            7,
            "istio_service_cidr",
        ),
        b(
            "capture key not for CNI",
            vec![],
            cap(json!({"network-namespace": "/x"})),
            7,
            "network-namespace",
        ),
        b(
            "capture value an object",
            vec![],
            cap(json!({"envoy-port": {"p": 1}})),
            7,
            "envoy-port",
        ),
        b(
            "port out of range",
            vec![],
            cap(json!({"envoy-port": "70000"})),
            7,
            "capture key \"envoy-port\"",
        ),
        b(
            "port list with junk",
            vec![],
            cap(json!({"istio-inbound-ports": "80,http"})),
            7,
            "http",
        ),
        b(
            "CIDR without prefix",
            vec![],
            cap(json!({"istio-service-cidr": "10.0.0.1"})),
            7,
            "10.0.0.1",
        ),
        b(
            "bad mode",
            vec![],
            cap(json!({"istio-inbound-interception-mode": "BOGUS"})),
            7,
            "BOGUS",
        ),
        b(
            "bad boolean",
            vec![],
            cap(json!({"redirect-dns": "maybe"})),
            7,
            "maybe",
        ),
        b(
            "bad interface",
            vec![],
            cap(json!({"istio-exclude-interfaces": "a/b"})),
            7,
            "a/b",
        ),
        b(
            "bad backend",
            vec![],
            cap(json!({"backend": "ebpf"})),
            7,
            "ebpf",
        ),
        b(
            "backend conflict",
            vec![],
            cap(json!({"backend": "iptables", "native-nftables": true})),
            7,
            "native-nftables",
        ),
        b(
            "bad uid",
            vec![],
            cap(json!({"proxy-uid": "root"})),
            7,
            "root",
        ),
        b(
            "bad mark",
            vec![],
            cap(json!({"istio-inbound-tproxy-mark": "0"})),
            7,
            "istio-inbound-tproxy-mark",
        ),
        b(
            "DNS servers unknowable",
            vec![],
            cap(json!({"redirect-dns": true})),
            999,
            "resolv.conf",
        ),
        b(
            "dry_run_file dir missing",
            vec![],
            with("dry_run_file", json!("/nonexistent-meshcap/rules")),
            7,
            "/nonexistent-meshcap",
        ),
        b(
            "no iptables-restore (fail closed)",
            set("PATH", "/nonexistent"),
            conf(json!({"backend": "iptables"})),
            999,
            "iptables",
        ),
    ];
    assert!(cases.len() >= 25);
    for case in cases {
        let mut vars = node.vars("ADD", "bad", Some(&pod.path()));
        for (name, value) in &case.vars {
            vars.retain(|(k, _)| k != name);
            if let Some(v) = value {
                vars.push((name, v.clone()));
            }
        }
        let out = node.invoke_raw("meshcap-cni", &vars, &case.stdin);
        assert!(!out.status.success(), "{}: must fail", case.name);
        let err = stdout_json(&out);
        assert_eq!(err["code"], case.code, "{}: {err}", case.name);
        let text = format!(
            "{} {}",
            err["msg"].as_str().unwrap(),
            err["details"].as_str().unwrap()
        );
        assert!(
            text.contains(case.needle),
            "{}: {text:?} should name {:?}",
            case.name,
            case.needle
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).is_empty(),
            "{}: logged",
            case.name
        );
        assert_eq!(
            interception_state(&pod),
            "",
            "{}: nothing installed",
            case.name
        );
    }
}
