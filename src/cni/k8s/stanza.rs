//! What the plugin is given about Kubernetes: the stanza's `"kubernetes"` object and the pod
//! that `CNI_ARGS` names.

use super::error::K8sError;
use crate::inputs::quoted;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The plugin stanza's `"kubernetes": {"kubeconfig": PATH, "exclude_namespaces": [...]}`.
/// Its presence turns the pod lookup on. Unknown keys are refused so that a misspelt one is an
/// error rather than a silently ignored setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The kubeconfig file giving the API server and the credentials.
    pub kubeconfig: PathBuf,
    /// Namespaces whose pods are never captured (Istio's default: `kube-system`).
    #[serde(default = "default_exclude_namespaces")]
    pub exclude_namespaces: Vec<String>,
}

fn default_exclude_namespaces() -> Vec<String> {
    vec!["kube-system".to_owned()]
}

/// A pod's namespace and name, both valid Kubernetes names (so they are safe in a URL path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// Checks both names: a namespace is a DNS label, a pod name a DNS subdomain.
    pub fn new(namespace: &str, name: &str) -> Result<PodRef, K8sError> {
        check_name("K8S_POD_NAMESPACE", namespace, 63, false)?;
        check_name("K8S_POD_NAME", name, 253, true)?;
        Ok(PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// RFC 1123: lower-case letters, digits and `-`, starting and ending with a letter or digit;
/// with `dots`, a subdomain: such labels joined by `.`.
fn check_name(key: &str, value: &str, max: usize, dots: bool) -> Result<(), K8sError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let ok = value.len() <= max
        && if dots {
            value.split('.').all(label_ok)
        } else {
            label_ok(value)
        };
    if ok {
        Ok(())
    } else {
        Err(K8sError::CniArgs(format!(
            "{key}={} is not a Kubernetes {}",
            quoted(value),
            if dots { "pod name" } else { "namespace name" }
        )))
    }
}

/// The pod that `CNI_ARGS` (`KEY=VALUE` pairs joined by `;`, as a kubelet's runtime passes
/// them) names through `K8S_POD_NAMESPACE` and `K8S_POD_NAME`. `None` when either is absent or
/// empty: no pod lookup then (Podman, for one, passes only `K8S_POD_NAME`). A pair without `=`
/// or an invalid name is an error.
pub fn pod_from_cni_args(cni_args: &str) -> Result<Option<PodRef>, K8sError> {
    let mut namespace = None;
    let mut name = None;
    for pair in cni_args.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            K8sError::CniArgs(format!("{} is not a KEY=VALUE pair", quoted(pair)))
        })?;
        match key {
            "K8S_POD_NAMESPACE" => namespace = Some(value),
            "K8S_POD_NAME" => name = Some(value),
            _ => {}
        }
    }
    match (namespace, name) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => PodRef::new(ns, n).map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBELET: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=test-ns;K8S_POD_NAME=test-pod;\
                           K8S_POD_INFRA_CONTAINER_ID=0123456789ab;\
                           K8S_POD_UID=0b1c2d3e-0000-4000-8000-000000000001";

    #[test]
    fn kubelet_args_name_the_pod() {
        assert_eq!(
            pod_from_cni_args(KUBELET).unwrap(),
            Some(PodRef {
                namespace: "test-ns".into(),
                name: "test-pod".into()
            })
        );
    }

    #[test]
    fn order_and_empty_pairs_do_not_matter() {
        let got = pod_from_cni_args(";K8S_POD_NAME=web-0.x;;K8S_POD_NAMESPACE=default;").unwrap();
        assert_eq!(got.unwrap().to_string(), "default/web-0.x");
    }

    #[test]
    fn no_lookup_without_both_names() {
        assert_eq!(pod_from_cni_args("").unwrap(), None);
        assert_eq!(pod_from_cni_args("K8S_POD_NAME=podman-pod").unwrap(), None);
        assert_eq!(pod_from_cni_args("K8S_POD_NAMESPACE=ns").unwrap(), None);
        assert_eq!(
            pod_from_cni_args("K8S_POD_NAMESPACE=;K8S_POD_NAME=p").unwrap(),
            None
        );
    }

    #[test]
    fn malformed_args_are_errors_naming_the_pair() {
        let err = pod_from_cni_args("IgnoreUnknown=1;garbage").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"CNI_ARGS: "garbage" is not a KEY=VALUE pair"#
        );
        assert_eq!(err.cni_code(), 4);
    }

    #[test]
    fn names_that_could_escape_the_url_path_are_refused() {
        for (ns, name) in [
            ("test-ns", "../secrets"),
            ("test-ns", "a/b"),
            ("test-ns", "a..b"),
            ("Test", "pod"),
            ("ns.dotted", "pod"),
            ("ns", "pod?x=1"),
            ("-ns", "pod"),
        ] {
            let args = format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}");
            let err = pod_from_cni_args(&args).unwrap_err();
            assert!(matches!(err, K8sError::CniArgs(_)), "{args}: {err}");
        }
        let long = "a".repeat(64);
        assert!(PodRef::new(&long, "pod").is_err());
        assert!(PodRef::new("ns", &long).is_ok());
    }

    #[test]
    fn stanza_defaults_exclude_kube_system() {
        let k: KubernetesConfig =
            serde_json::from_str(r#"{"kubeconfig": "/etc/cni/net.d/meshcap-kubeconfig"}"#).unwrap();
        assert_eq!(
            k.kubeconfig,
            PathBuf::from("/etc/cni/net.d/meshcap-kubeconfig")
        );
        assert_eq!(k.exclude_namespaces, vec!["kube-system".to_owned()]);
        let k: KubernetesConfig =
            serde_json::from_str(r#"{"kubeconfig": "k", "exclude_namespaces": []}"#).unwrap();
        assert!(k.exclude_namespaces.is_empty());
    }

    #[test]
    fn stanza_refuses_unknown_keys_and_needs_the_kubeconfig() {
        let err = serde_json::from_str::<KubernetesConfig>(
            r#"{"kubeconfig": "k", "exclude_namespace": ["x"]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("exclude_namespace"), "{err}");
        let err = serde_json::from_str::<KubernetesConfig>(r#"{}"#).unwrap_err();
        assert!(err.to_string().contains("kubeconfig"), "{err}");
    }
}
