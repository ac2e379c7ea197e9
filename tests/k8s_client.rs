//! `fetch_pod` against a real TLS API server on loopback (tests/common/apiserver.rs): the
//! credentials of a kubeconfig, the retries and the failures the plugin must tell apart.
//! Needs no root.

mod common;

use common::apiserver::{ApiServer, CaForm, Credential, Fault};
use meshcap::cni::k8s::{
    Decision, K8sError, Pod, PodRef, RetryPolicy, fetch_pod, pod_from_cni_args, sidecar_decision,
};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// For the failures that take the whole budget: short, with room for several attempts.
fn quick() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_millis(1500),
        attempt_timeout: Duration::from_millis(300),
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

/// For the rest: generous, so that a loaded machine cannot turn an answer into a timeout.
fn patient() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(20),
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

fn test_pod() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "test-pod",
            "namespace": "test-ns",
            "uid": "0b1c2d3e-0000-4000-8000-000000000001",
            "annotations": {
                "sidecar.istio.io/status": "{}",
                "traffic.sidecar.istio.io/excludeInboundPorts": "8080"
            }
        },
        "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
        "status": {"phase": "Pending"}
    })
}

fn pod_ref() -> PodRef {
    PodRef::new("test-ns", "test-pod").unwrap()
}

fn fetch(server: &ApiServer, ca: CaForm, credential: Credential) -> Result<Pod, K8sError> {
    fetch_with(server, ca, credential, &patient())
}

fn fetch_with(
    server: &ApiServer,
    ca: CaForm,
    credential: Credential,
    retry: &RetryPolicy,
) -> Result<Pod, K8sError> {
    fetch_pod(&server.kubeconfig(ca, credential), &pod_ref(), retry)
}

fn serving_test_pod(fault: Fault) -> ApiServer {
    let server = ApiServer::start(fault);
    server.serve_pod(&test_pod());
    server
}

fn assert_is_test_pod(pod: &Pod) {
    assert_eq!(pod.metadata.namespace, "test-ns");
    assert_eq!(pod.metadata.name, "test-pod");
    assert_eq!(
        pod.metadata.annotations["traffic.sidecar.istio.io/excludeInboundPorts"],
        "8080"
    );
    assert_eq!(pod.spec.containers.len(), 2);
}

#[test]
fn token_with_ca_data() {
    let server = serving_test_pod(Fault::None);
    assert_is_test_pod(&fetch(&server, CaForm::Data, Credential::Token).unwrap());
    assert_eq!(server.requests(), 1);
}

#[test]
fn token_file_with_ca_file() {
    let server = serving_test_pod(Fault::None);
    assert_is_test_pod(&fetch(&server, CaForm::File, Credential::TokenFile).unwrap());
}

#[test]
fn client_certificate_inline_and_in_files() {
    let server = serving_test_pod(Fault::None);
    assert_is_test_pod(&fetch(&server, CaForm::Data, Credential::ClientCertificate).unwrap());
    assert_is_test_pod(&fetch(&server, CaForm::File, Credential::ClientCertificateFiles).unwrap());
}

#[test]
fn api_down_is_retryable_and_bounded() {
    let server = ApiServer::start(Fault::Down);
    let err = fetch_with(&server, CaForm::Data, Credential::Token, &quick()).unwrap_err();
    let K8sError::Unavailable {
        attempts, elapsed, ..
    } = &err
    else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(*attempts > 1, "{err}");
    // Bounded: the call returned; how long it took is reported, not judged.
    println!("down: {attempts} attempts in {elapsed:?}");
    assert!(err.retryable());
    assert_eq!(err.cni_code(), 11);
    assert!(err.to_string().contains(&server.url), "{err}");
}

#[test]
fn api_slow_is_retryable() {
    let server = serving_test_pod(Fault::Slow(Duration::from_secs(5)));
    let err = fetch_with(&server, CaForm::Data, Credential::Token, &quick()).unwrap_err();
    assert!(
        matches!(&err, K8sError::Unavailable { last, attempts, .. }
            if last.starts_with("no answer within") && *attempts > 1),
        "{err:?}"
    );
    assert_eq!(err.cni_code(), 11);
}

#[test]
fn unavailable_then_ok_is_retried_to_success() {
    for status in [503, 429, 500] {
        let server = serving_test_pod(Fault::FailFirst { count: 2, status });
        assert_is_test_pod(&fetch(&server, CaForm::Data, Credential::Token).unwrap());
        assert_eq!(server.requests(), 3, "HTTP {status}");
    }
}

#[test]
fn retry_after_is_waited_for_before_the_next_attempt() {
    for status in [429, 503] {
        let server = serving_test_pod(Fault::RetryAfter {
            count: 1,
            status,
            seconds: 1,
        });
        let start = std::time::Instant::now();
        assert_is_test_pod(&fetch(&server, CaForm::Data, Credential::Token).unwrap());
        assert_eq!(server.requests(), 2, "HTTP {status}");
        // A lower bound only (a sleep never ends early): the backoff alone is 50 ms.
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "HTTP {status}: the second attempt came before Retry-After: 1"
        );
    }
}

#[test]
fn retry_after_beyond_the_budget_ends_at_once_in_try_again_later() {
    for status in [429, 503] {
        let server = serving_test_pod(Fault::RetryAfter {
            count: 100,
            status,
            seconds: 3600,
        });
        let err = fetch_with(&server, CaForm::Data, Credential::Token, &quick()).unwrap_err();
        assert!(matches!(&err, K8sError::Unavailable { .. }), "{err:?}");
        assert_eq!(err.cni_code(), 11);
        // Without Retry-After the 50 ms backoff would have fitted several attempts.
        assert_eq!(server.requests(), 1, "HTTP {status}: {err}");
        assert!(err.to_string().contains("Retry-After: 3600s"), "{err}");
    }
}

#[test]
fn lasting_503_ends_in_try_again_later() {
    let server = serving_test_pod(Fault::Status(503));
    let err = fetch_with(&server, CaForm::Data, Credential::Token, &quick()).unwrap_err();
    // The last attempt may also be cut short by the budget on a loaded machine; what matters is
    // that 503 answers were retried and ended in "try again later".
    assert!(matches!(&err, K8sError::Unavailable { .. }), "{err:?}");
    assert_eq!(err.cni_code(), 11);
    assert!(server.requests() > 1, "a 503 is retried: {err}");
}

#[test]
fn rejected_token_is_a_credential_error_at_once() {
    let server = serving_test_pod(Fault::None);
    let kubeconfig = server.kubeconfig(CaForm::Data, Credential::WrongToken);
    let err = fetch_pod(&kubeconfig, &pod_ref(), &patient()).unwrap_err();
    assert!(
        matches!(err, K8sError::Credentials { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "Kubernetes API server {} refused the credentials of kubeconfig {} \
             (user \"meshcap\" token): HTTP 401: Unauthorized",
            server.url,
            kubeconfig.display()
        )
    );
    assert!(!err.retryable());
    assert_eq!(err.cni_code(), 999);
    assert_eq!(server.requests(), 1);

    let err = fetch(&server, CaForm::Data, Credential::Anonymous).unwrap_err();
    assert!(
        err.to_string().contains("(no credentials): HTTP 401"),
        "{err}"
    );
}

#[test]
fn forbidden_is_a_credential_error_at_once() {
    let server = serving_test_pod(Fault::Status(403));
    let err = fetch(&server, CaForm::Data, Credential::TokenFile).unwrap_err();
    assert!(
        matches!(err, K8sError::Credentials { status: 403, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("tokenFile"), "{err}");
    assert_eq!(server.requests(), 1);
}

#[test]
fn unauthorized_fault_is_a_credential_error() {
    let server = serving_test_pod(Fault::Status(401));
    let err = fetch(&server, CaForm::Data, Credential::Token).unwrap_err();
    assert!(
        matches!(err, K8sError::Credentials { status: 401, .. }),
        "{err:?}"
    );
}

#[test]
fn missing_pod_is_not_found_at_once() {
    let server = ApiServer::start(Fault::None);
    let err = fetch(&server, CaForm::Data, Credential::Token).unwrap_err();
    assert!(matches!(err, K8sError::PodNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "pod test-ns/test-pod not found on the Kubernetes API server {}",
            server.url
        )
    );
    assert!(!err.retryable());
    assert_eq!(server.requests(), 1);
}

#[test]
fn garbage_body_is_a_decode_error() {
    let server = serving_test_pod(Fault::Garbage);
    let err = fetch(&server, CaForm::Data, Credential::Token).unwrap_err();
    assert!(matches!(err, K8sError::Decode { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("the answer for pod test-ns/test-pod is not that Pod"),
        "{err}"
    );
    assert_eq!(server.requests(), 1);
}

#[test]
fn json_that_is_not_the_pod_is_a_decode_error() {
    let server = ApiServer::start(Fault::None);
    server.serve_at(
        "test-ns",
        "test-pod",
        r#"{"kind": "Status", "metadata": {}}"#,
    );
    let err = fetch(&server, CaForm::Data, Credential::Token).unwrap_err();
    assert!(err.to_string().contains("missing field `spec`"), "{err}");

    let mut other = test_pod();
    other["metadata"]["name"] = json!("other-pod");
    server.serve_at("test-ns", "test-pod", &other.to_string());
    let err = fetch(&server, CaForm::Data, Credential::Token).unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"it is pod "test-ns"/"other-pod""#),
        "{err}"
    );
}

#[test]
fn a_foreign_ca_fails_tls_at_once() {
    let server = serving_test_pod(Fault::None);
    let err = fetch(&server, CaForm::Foreign, Credential::Token).unwrap_err();
    assert!(matches!(err, K8sError::Tls { .. }), "{err:?}");
    assert!(!err.retryable());
    assert_eq!(server.requests(), 0);
}

#[test]
fn a_missing_kubeconfig_is_a_configuration_error() {
    let err = fetch_pod(
        Path::new("/nonexistent/meshcap-kubeconfig"),
        &pod_ref(),
        &quick(),
    )
    .unwrap_err();
    assert!(matches!(err, K8sError::Kubeconfig { .. }), "{err:?}");
    assert_eq!(err.cni_code(), 7);
}

/// Every pod of `../shared/conformance/istio-cni/cases.json`, named by its `cni_args` and served
/// as the API returns it, comes back whole and is captured.
#[test]
fn conformance_pods_round_trip() {
    let path = common::repo().join("../shared/conformance/istio-cni/cases.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        let reason = format!(
            "conformance_pods_round_trip: skipped: {} is absent",
            path.display()
        );
        assert!(
            std::env::var("MESHCAP_REQUIRE_SHARED").as_deref() != Ok("1"),
            "{reason} and MESHCAP_REQUIRE_SHARED=1 forbids skipping"
        );
        eprintln!("{reason}");
        return;
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pod = pod_from_cni_args(json["cni_args"].as_str().unwrap())
        .unwrap()
        .expect("cni_args name the pod");
    let server = ApiServer::start(Fault::None);
    let kubeconfig = server.kubeconfig(CaForm::Data, Credential::Token);
    for case in json["cases"].as_array().unwrap() {
        server.serve_pod(&case["pod"]);
        let got = fetch_pod(&kubeconfig, &pod, &patient()).unwrap();
        let want: Pod = serde_json::from_value(case["pod"].clone()).unwrap();
        assert_eq!(got, want, "case {}", case["name"]);
        assert!(
            matches!(
                sidecar_decision(&got, &["kube-system".into()]),
                Decision::Capture(_)
            ),
            "case {}",
            case["name"]
        );
    }
}

// --- ambient mode: the namespace lookup and the annotation's merge patch ------------------------

#[test]
fn the_namespace_is_read_and_a_missing_one_is_no_pod() {
    use meshcap::cni::k8s::{Kubeconfig, fetch_namespace_with};
    let server = ApiServer::start(Fault::None);
    server.serve_namespace("mesh", json!({"istio.io/dataplane-mode": "ambient"}));
    let config = Kubeconfig::load(&server.kubeconfig(CaForm::Data, Credential::Token)).unwrap();
    let ns = fetch_namespace_with(&config, "mesh", &patient()).unwrap();
    assert_eq!(ns.metadata.labels["istio.io/dataplane-mode"], "ambient");
    let err = fetch_namespace_with(&config, "gone", &patient()).unwrap_err();
    assert!(
        err.to_string().contains("HTTP 404 for namespace gone"),
        "{err}"
    );
    assert_eq!(err.cni_code(), 999);
}

#[test]
fn the_merge_patch_goes_through_pods_status_with_the_same_retries() {
    use meshcap::cni::k8s::{Kubeconfig, patch_pod_status_with};
    let patch = json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}});
    // Two 503s, then the patch is applied.
    let server = serving_test_pod(Fault::FailFirst {
        count: 2,
        status: 503,
    });
    let config = Kubeconfig::load(&server.kubeconfig(CaForm::Data, Credential::Token)).unwrap();
    patch_pod_status_with(&config, &pod_ref(), &patch, &patient()).unwrap();
    assert_eq!(server.requests(), 3);
    assert_eq!(
        server.patches(),
        [(
            "/api/v1/namespaces/test-ns/pods/test-pod".to_owned(),
            patch.clone()
        )]
    );
    let pod = server.pod("test-ns", "test-pod").unwrap();
    assert_eq!(
        pod["metadata"]["annotations"]["ambient.istio.io/redirection"],
        "enabled"
    );
    // Removal (null), as DEL sends it.
    let remove = json!({"metadata": {"annotations": {"ambient.istio.io/redirection": null}}});
    patch_pod_status_with(&config, &pod_ref(), &remove, &patient()).unwrap();
    let pod = server.pod("test-ns", "test-pod").unwrap();
    assert!(
        pod["metadata"]["annotations"]
            .get("ambient.istio.io/redirection")
            .is_none()
    );
    // A refusal is final (no retry), a server that stays down is "unavailable" (code 11).
    let refusing = serving_test_pod(Fault::RefusePatch(403));
    let config = Kubeconfig::load(&refusing.kubeconfig(CaForm::Data, Credential::Token)).unwrap();
    let err = patch_pod_status_with(&config, &pod_ref(), &patch, &patient()).unwrap_err();
    assert!(
        matches!(err, K8sError::Credentials { status: 403, .. }),
        "{err}"
    );
    assert_eq!(refusing.requests(), 1);
    let down = ApiServer::start(Fault::Down);
    let config = Kubeconfig::load(&down.kubeconfig(CaForm::Data, Credential::Token)).unwrap();
    let err = patch_pod_status_with(&config, &pod_ref(), &patch, &quick()).unwrap_err();
    assert_eq!(err.cni_code(), 11, "{err}");
}
