use super::*;
use serde_json::{Value, json};

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("a Pod")
}

/// An injected pod as Istio's injector leaves it (CNI mode: no istio-init), with these
/// annotations added and this `istio-proxy` container body merged in.
fn injected(annotations: Value, proxy: Value) -> Pod {
    let mut all = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
    all.as_object_mut()
        .unwrap()
        .extend(annotations.as_object().unwrap().clone());
    let mut proxy_container = json!({"name": "istio-proxy", "image": "proxy"});
    proxy_container
        .as_object_mut()
        .unwrap()
        .extend(proxy.as_object().unwrap().clone());
    pod(json!({
        "metadata": {"name": "p", "namespace": "ns", "annotations": all},
        "spec": {"containers": [{"name": "app"}, proxy_container]}
    }))
}

fn default_excludes() -> Vec<String> {
    vec!["kube-system".to_owned()]
}

/// A setting as (flag, value, source), for compact comparisons.
type Triple = (String, String, String);

fn triples(decision: Decision) -> Vec<Triple> {
    match decision {
        Decision::Capture(settings) => settings
            .into_iter()
            .map(|s| (s.flag.to_owned(), s.value, s.source))
            .collect(),
        Decision::Skip { reason } => panic!("skipped: {reason}"),
    }
}

fn t(flag: &str, value: &str, source: &str) -> Triple {
    (flag.to_owned(), value.to_owned(), source.to_owned())
}

fn skip_reason(pod: &Pod, excludes: &[String]) -> String {
    match sidecar_decision(pod, excludes) {
        Decision::Skip { reason } => reason,
        Decision::Capture(s) => panic!("captured with {s:?}"),
    }
}

#[test]
fn an_injected_pod_without_annotations_has_no_settings_of_its_own() {
    let d = sidecar_decision(&injected(json!({}), json!({})), &default_excludes());
    assert_eq!(d, Decision::Capture(vec![]));
}

#[test]
fn every_annotation_maps_to_its_flag_in_table_order() {
    let d = sidecar_decision(
        &injected(
            json!({
                "traffic.sidecar.istio.io/excludeInterfaces": "eth9",
                "traffic.sidecar.istio.io/excludeOutboundPorts": "5555",
                "traffic.sidecar.istio.io/includeOutboundPorts": "443",
                "traffic.sidecar.istio.io/excludeInboundPorts": "3333",
                "traffic.sidecar.istio.io/includeInboundPorts": "1111,2222",
                "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8",
                "traffic.sidecar.istio.io/includeOutboundIPRanges": "127.0.0.0/8",
                "sidecar.istio.io/interceptionMode": "TPROXY",
                "traffic.sidecar.istio.io/kubevirtInterfaces": "net1",
            }),
            json!({}),
        ),
        &default_excludes(),
    );
    let a = |k: &str| format!("annotation {k}");
    assert_eq!(
        triples(d),
        vec![
            t(
                "istio-inbound-interception-mode",
                "TPROXY",
                &a("sidecar.istio.io/interceptionMode")
            ),
            t(
                "istio-service-cidr",
                "127.0.0.0/8",
                &a("traffic.sidecar.istio.io/includeOutboundIPRanges")
            ),
            t(
                "istio-service-exclude-cidr",
                "10.0.0.0/8",
                &a("traffic.sidecar.istio.io/excludeOutboundIPRanges")
            ),
            t(
                "istio-inbound-ports",
                "1111,2222",
                &a("traffic.sidecar.istio.io/includeInboundPorts")
            ),
            t(
                "istio-local-exclude-ports",
                "3333,15020,15021,15090",
                &a("traffic.sidecar.istio.io/excludeInboundPorts")
            ),
            t(
                "istio-outbound-ports",
                "443",
                &a("traffic.sidecar.istio.io/includeOutboundPorts")
            ),
            t(
                "istio-local-outbound-ports-exclude",
                "5555",
                &a("traffic.sidecar.istio.io/excludeOutboundPorts")
            ),
            t(
                "kube-virt-interfaces",
                "net1",
                &a("traffic.sidecar.istio.io/kubevirtInterfaces")
            ),
            t(
                "istio-exclude-interfaces",
                "eth9",
                &a("traffic.sidecar.istio.io/excludeInterfaces")
            ),
        ]
    );
}

#[test]
fn reroute_virtual_interfaces_beats_the_older_kubevirt_annotation() {
    let d = sidecar_decision(
        &injected(
            json!({
                "traffic.sidecar.istio.io/kubevirtInterfaces": "old0",
                "istio.io/reroute-virtual-interfaces": "new0,new1",
            }),
            json!({}),
        ),
        &default_excludes(),
    );
    assert_eq!(
        triples(d),
        vec![t(
            "kube-virt-interfaces",
            "new0,new1",
            "annotation istio.io/reroute-virtual-interfaces"
        )]
    );
}

#[test]
fn always_excluded_inbound_ports_are_appended_once() {
    assert_eq!(
        append_always_excluded_inbound_ports("15090,8080,,8080"),
        "15090,8080,15020,15021"
    );
    assert_eq!(
        append_always_excluded_inbound_ports(""),
        "15020,15021,15090"
    );
    // Values are not judged here: a bad port stays for the installer's validation to name.
    assert_eq!(
        append_always_excluded_inbound_ports("x, 9"),
        "x, 9,15020,15021,15090"
    );
}

#[test]
fn uid_and_gid_come_from_the_proxy_security_context_when_set_and_non_zero() {
    let with = |sc: Value| {
        triples(sidecar_decision(
            &injected(json!({}), json!({"securityContext": sc})),
            &default_excludes(),
        ))
    };
    assert_eq!(
        with(json!({"runAsUser": 1000670000, "runAsGroup": 1000670001})),
        vec![
            t(
                "proxy-uid",
                "1000670000",
                "istio-proxy securityContext.runAsUser"
            ),
            t(
                "proxy-gid",
                "1000670001",
                "istio-proxy securityContext.runAsGroup"
            ),
        ]
    );
    assert_eq!(with(json!({"runAsUser": 0, "runAsGroup": 0})), vec![]);
    assert_eq!(
        with(json!({"runAsGroup": 7})),
        vec![t(
            "proxy-gid",
            "7",
            "istio-proxy securityContext.runAsGroup"
        )]
    );
    assert_eq!(with(json!({})), vec![]);
}

#[test]
fn proxy_environment_sets_the_boolean_flags_to_its_text() {
    let d = sidecar_decision(
        &injected(
            json!({}),
            json!({"env": [
                {"name": "INVALID_DROP", "value": "true"},
                {"name": "ISTIO_META_DNS_CAPTURE", "value": "false"},
                {"name": "ISTIO_META_DNS_CAPTURE", "value": "true"},
                {"name": "ISTIO_DUAL_STACK", "value": "TRUE"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "UNRELATED", "value": "true"},
            ]}),
        ),
        &default_excludes(),
    );
    let dns = "istio-proxy env ISTIO_META_DNS_CAPTURE";
    assert_eq!(
        triples(d),
        vec![
            t("redirect-dns", "true", dns),
            t("capture-all-dns", "true", dns),
            t("dual-stack", "TRUE", "istio-proxy env ISTIO_DUAL_STACK"),
            t("drop-invalid", "true", "istio-proxy env INVALID_DROP"),
        ]
    );
}

#[test]
fn a_native_sidecar_proxy_counts_as_the_istio_proxy_container() {
    let p = pod(json!({
        "metadata": {"namespace": "ns", "annotations": {"sidecar.istio.io/status": "{}"}},
        "spec": {
            "containers": [{"name": "app"}],
            "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always",
                                "securityContext": {"runAsUser": 4242}}]
        }
    }));
    assert_eq!(
        triples(sidecar_decision(&p, &default_excludes())),
        vec![t(
            "proxy-uid",
            "4242",
            "istio-proxy securityContext.runAsUser"
        )]
    );
}

#[test]
fn skip_rules() {
    let excludes = default_excludes();
    let mut p = injected(json!({}), json!({}));
    p.metadata.namespace = "kube-system".into();
    assert_eq!(
        skip_reason(&p, &excludes),
        "namespace kube-system is excluded"
    );
    assert!(matches!(sidecar_decision(&p, &[]), Decision::Capture(_)));
    assert_eq!(
        skip_reason(
            &injected(json!({}), json!({})),
            &["other".into(), "ns".into()]
        ),
        "namespace ns is excluded"
    );

    let no_proxy = pod(json!({
        "metadata": {"namespace": "ns", "annotations": {"sidecar.istio.io/status": "{}"}},
        "spec": {"containers": [{"name": "app"}]}
    }));
    assert_eq!(
        skip_reason(&no_proxy, &excludes),
        "no istio-proxy container"
    );

    let mut with_init = injected(json!({}), json!({}));
    with_init
        .spec
        .init_containers
        .push(super::super::pod::Container {
            name: "istio-init".into(),
            ..Default::default()
        });
    assert_eq!(
        skip_reason(&with_init, &excludes),
        "an istio-init init container installs the rules"
    );

    let off = injected(json!({"sidecar.istio.io/inject": "false"}), json!({}));
    assert_eq!(
        skip_reason(&off, &excludes),
        "annotation sidecar.istio.io/inject is \"false\""
    );
    let mut off_label = injected(json!({}), json!({}));
    off_label
        .metadata
        .labels
        .insert("sidecar.istio.io/inject".into(), "false".into());
    assert_eq!(
        skip_reason(&off_label, &excludes),
        "label sidecar.istio.io/inject is \"false\""
    );
    let on = injected(json!({"sidecar.istio.io/inject": "true"}), json!({}));
    assert!(matches!(
        sidecar_decision(&on, &excludes),
        Decision::Capture(_)
    ));

    let mut not_injected = injected(json!({}), json!({}));
    not_injected.metadata.annotations.remove(STATUS_KEY);
    assert_eq!(
        skip_reason(&not_injected, &excludes),
        "no sidecar.istio.io/status annotation (not injected)"
    );
}

#[test]
fn every_flag_named_is_a_long_flag_of_the_installer() {
    use clap::CommandFactory;
    let command = crate::cli::Cli::command();
    let longs: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .collect();
    let pod = injected(
        json!({
            "sidecar.istio.io/interceptionMode": "x",
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "x",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "x",
            "traffic.sidecar.istio.io/includeInboundPorts": "x",
            "traffic.sidecar.istio.io/excludeInboundPorts": "x",
            "traffic.sidecar.istio.io/includeOutboundPorts": "x",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "x",
            "istio.io/reroute-virtual-interfaces": "x",
            "traffic.sidecar.istio.io/excludeInterfaces": "x",
        }),
        json!({
            "securityContext": {"runAsUser": 1, "runAsGroup": 1},
            "env": [
                {"name": "ISTIO_META_DNS_CAPTURE", "value": "true"},
                {"name": "ISTIO_DUAL_STACK", "value": "true"},
                {"name": "INVALID_DROP", "value": "true"},
            ]
        }),
    );
    let Decision::Capture(settings) = sidecar_decision(&pod, &default_excludes()) else {
        panic!("skipped")
    };
    assert_eq!(settings.len(), 15);
    for s in &settings {
        assert!(longs.contains(&s.flag), "--{} is not a flag", s.flag);
    }
}

/// The pods of `../shared/conformance/istio-cni/cases.json` by case name, or `None` (with a
/// printed reason) when the checkout has no `../shared`; MESHCAP_REQUIRE_SHARED=1 forbids that.
fn conformance_pods() -> Option<Vec<(String, Pod)>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/conformance/istio-cni/cases.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        let reason = format!("skipped: {} is absent", path.display());
        assert!(
            std::env::var("MESHCAP_REQUIRE_SHARED").as_deref() != Ok("1"),
            "{reason} and MESHCAP_REQUIRE_SHARED=1 forbids skipping"
        );
        eprintln!("{reason}");
        return None;
    };
    let json: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let cases = json["cases"].as_array().expect("cases");
    Some(
        cases
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().expect("name").to_owned(),
                    pod(c["pod"].clone()),
                )
            })
            .collect(),
    )
}

/// Each case's settings, checked by hand against the README's table.
#[test]
fn conformance_cases_yield_the_settings_of_the_table() {
    let Some(pods) = conformance_pods() else {
        return;
    };
    let a = |k: &str| format!("annotation {k}");
    let expected: Vec<(&str, Vec<Triple>)> = vec![
        (
            "include-exclude-ip",
            vec![
                t(
                    "istio-service-cidr",
                    "127.0.0.0/8",
                    &a("traffic.sidecar.istio.io/includeOutboundIPRanges"),
                ),
                t(
                    "istio-service-exclude-cidr",
                    "10.0.0.0/8",
                    &a("traffic.sidecar.istio.io/excludeOutboundIPRanges"),
                ),
            ],
        ),
        (
            "include-exclude-ports",
            vec![
                t(
                    "istio-inbound-ports",
                    "1111,2222",
                    &a("traffic.sidecar.istio.io/includeInboundPorts"),
                ),
                t(
                    "istio-local-exclude-ports",
                    "3333,4444,15020,15021,15090",
                    &a("traffic.sidecar.istio.io/excludeInboundPorts"),
                ),
                t(
                    "istio-local-outbound-ports-exclude",
                    "5555,6666",
                    &a("traffic.sidecar.istio.io/excludeOutboundPorts"),
                ),
            ],
        ),
        (
            "tproxy",
            vec![t(
                "istio-inbound-interception-mode",
                "TPROXY",
                &a("sidecar.istio.io/interceptionMode"),
            )],
        ),
        (
            "invalid-drop",
            vec![t("drop-invalid", "true", "istio-proxy env INVALID_DROP")],
        ),
        (
            "custom-uid",
            vec![
                t(
                    "proxy-uid",
                    "1000670000",
                    "istio-proxy securityContext.runAsUser",
                ),
                t(
                    "proxy-gid",
                    "1000670001",
                    "istio-proxy securityContext.runAsGroup",
                ),
            ],
        ),
    ];
    assert_eq!(
        pods.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        expected.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "the cases of cases.json changed"
    );
    for ((name, pod), (_, want)) in pods.iter().zip(expected) {
        let got = triples(sidecar_decision(pod, &default_excludes()));
        assert_eq!(got, want, "case {name}");
    }
}
