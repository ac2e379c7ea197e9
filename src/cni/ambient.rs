//! Ambient mode in the plugin: at ADD, whether the pod is enrolled (its labels and its
//! namespace's, [`crate::ambient::enrolment::decide`]) and, when it is, the node agent's
//! enrolment over its control socket, then the pod's `ambient.istio.io/redirection: enabled`
//! annotation through the API server; at CHECK, the agent compares the pod's namespace with its
//! rules; at DEL, the agent lets the pod go and the annotation is removed.
//!
//! The plugin writes the annotation, not the agent: the plugin already holds the node's
//! kubeconfig and a bounded API client for the pod lookup, while the agent has no Kubernetes
//! client (Istio's agent writes it through its own). Same patch as Istio's (a merge patch through
//! `pods/status`), same moment (once ztunnel has the pod).
//!
//! ADD fails closed: the agent absent, slow, refusing, or ztunnel absent, fail the ADD, and the
//! runtime does not start the pod. DEL never fails on the agent's account (Istio's plugin does
//! nothing at DEL in ambient mode; its agent learns of deleted pods from the API server): a
//! pod whose agent is unreachable is forgotten by the agent when it next starts, since its
//! namespace is gone by then.

use super::env::CniEnv;
use super::k8s::{self, Kubeconfig, KubernetesConfig, Pod, PodRef, RetryPolicy};
use super::spec::{CniError, NetConf, code};
use crate::ambient::config::PodOverrides;
use crate::ambient::control::{self, Request};
use crate::ambient::enrolment::{self, PodFacts, REDIRECTION, REDIRECTION_ENABLED};
use crate::ambient::node;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The stanza's `"ambient": {"enabled": true, "control_socket": PATH}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmbientConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The node agent's control socket.
    #[serde(default = "default_socket")]
    pub control_socket: PathBuf,
}

/// The stanza's `"ambient"` object that turns ambient mode on (`meshcap cni install --ambient`).
pub fn stanza_object(control_socket: &std::path::Path) -> Value {
    serde_json::to_value(AmbientConfig {
        enabled: true,
        control_socket: control_socket.to_owned(),
    })
    .expect("a path serializes")
}

fn default_socket() -> PathBuf {
    PathBuf::from(control::DEFAULT_SOCKET)
}

/// How long the plugin waits for the agent's answer: ztunnel's ack (the agent's
/// `--ack-timeout`, 5 s by default) and the rules. With the pod (5 s) and namespace (5 s)
/// lookups and the annotation (3 s), an ambient ADD ends within 25 s.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(12);
/// The same at DEL (ztunnel's `del` ack and the rules' removal) and CHECK: with the pod lookup and the
/// annotation's removal (3 s each), ambient adds at most 14 s to a DEL.
pub const AGENT_DEL_TIMEOUT: Duration = Duration::from_secs(8);

/// The budget of the annotation's patch.
fn patch_retry() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(3),
        ..RetryPolicy::default()
    }
}

/// The stanza's ambient settings when ambient mode is on. It needs the `"kubernetes"` object
/// (enrolment is decided from labels).
pub fn settings(conf: &NetConf) -> Result<Option<AmbientConfig>, CniError> {
    let Some(value) = &conf.ambient else {
        return Ok(None);
    };
    let ambient: AmbientConfig = serde_json::from_value(value.clone()).map_err(|e| {
        CniError::new(code::INVALID_CONFIG, "invalid \"ambient\" object")
            .with_details(e.to_string())
    })?;
    if !ambient.enabled {
        return Ok(None);
    }
    if conf.kubernetes.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "\"ambient\" needs the \"kubernetes\" object: enrolment is decided from the pod's \
             and its namespace's labels",
        ));
    }
    Ok(Some(ambient))
}

/// ADD, after the pod lookup: `Ok(true)` when the pod is enrolled (the agent has its rules in
/// and ztunnel has it: the sidecar path must leave it alone), `Ok(false)` when it is not.
pub fn add(
    env: &CniEnv,
    conf: &NetConf,
    ambient: &AmbientConfig,
    kubernetes: &KubernetesConfig,
    pod_ref: &PodRef,
    pod: &Pod,
) -> Result<bool, CniError> {
    let Some(kubeconfig) = enrolled(kubernetes, pod_ref, pod)? else {
        return Ok(false);
    };
    let annotations = pairs(&pod.metadata.annotations);
    // A bad annotation is the pod's fault: code 7 naming it, before anything is touched.
    PodOverrides::from_annotations(refs(&annotations))
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
    let uid = required_uid(env, pod, pod_ref)?;
    // Never the node's own namespace (a CNI_NETNS of /proc/self/ns/net): the agent, on the
    // node's network too, would install a pod's rules on the node.
    let netns = env.netns.clone().expect("ADD requires CNI_NETNS");
    crate::backend::session::Namespace::open_other(&netns)
        .map_err(|e| CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_NETNS: {e}")))?;
    let request = Request::Add {
        pod: node::PodRef {
            uid: uid.clone(),
            name: pod_ref.name.clone(),
            namespace: pod_ref.namespace.clone(),
            service_account: pod.spec.service_account_name.clone(),
            netns,
            ips: pod_ips(conf)?,
            annotations,
        },
    };
    ask(ambient, &request)?;
    let patch = json!({"metadata": {"annotations": {REDIRECTION: REDIRECTION_ENABLED}}});
    if let Err(e) = k8s::patch_pod_status_with(&kubeconfig, pod_ref, &patch, &patch_retry()) {
        // Istio's agent treats a failed annotation as a failed enrolment (to be retried): the
        // pod is let go again and the ADD fails.
        if let Err(undo) = ask(ambient, &Request::Del { uid }) {
            tracing::warn!(pod = %pod_ref, "{undo}");
        }
        return Err(CniError::new(
            e.cni_code(),
            format!("cannot annotate pod {pod_ref} {REDIRECTION}={REDIRECTION_ENABLED}"),
        )
        .with_details(e.to_string()));
    }
    tracing::info!(container = %env.container_id, pod = %pod_ref, "enrolled in ambient mode: rules installed, ztunnel has the pod");
    Ok(true)
}

/// Whether the pod is enrolled: its labels, its namespace's (read from the API server), the
/// stanza's excluded namespaces. `Some` carries the kubeconfig loaded for the lookup, for the
/// caller's further API calls; `None` is a pod that is not enrolled.
fn enrolled(
    kubernetes: &KubernetesConfig,
    pod_ref: &PodRef,
    pod: &Pod,
) -> Result<Option<Kubeconfig>, CniError> {
    let kubeconfig = Kubeconfig::load(&kubernetes.kubeconfig).map_err(k8s_error)?;
    let namespace =
        k8s::fetch_namespace_with(&kubeconfig, &pod_ref.namespace, &RetryPolicy::default())
            .map_err(k8s_error)?;
    let (labels, annotations, ns_labels) = (
        pairs(&pod.metadata.labels),
        pairs(&pod.metadata.annotations),
        pairs(&namespace.metadata.labels),
    );
    let facts = PodFacts {
        namespace: &pod_ref.namespace,
        labels: refs(&labels),
        annotations: refs(&annotations),
        host_network: pod.spec.host_network,
        namespace_labels: refs(&ns_labels),
    };
    let excluded: Vec<&str> = kubernetes
        .exclude_namespaces
        .iter()
        .map(String::as_str)
        .collect();
    match enrolment::decide(&facts, &excluded) {
        Ok(()) => Ok(Some(kubeconfig)),
        Err(why) => {
            tracing::info!(pod = %pod_ref, "not enrolled in ambient mode: {why:?}");
            Ok(None)
        }
    }
}

/// CHECK, after the pod lookup: `Ok(true)` when the pod is enrolled and the agent finds its
/// rules in place (the sidecar path leaves it alone), `Ok(false)` when it is not enrolled.
pub fn check(
    env: &CniEnv,
    ambient: &AmbientConfig,
    kubernetes: &KubernetesConfig,
    pod_ref: &PodRef,
    pod: &Pod,
) -> Result<bool, CniError> {
    if enrolled(kubernetes, pod_ref, pod)?.is_none() {
        return Ok(false);
    }
    let uid = required_uid(env, pod, pod_ref)?;
    ask(ambient, &Request::Check { uid })?;
    Ok(true)
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// DEL: the agent lets the pod go (a pod it does not know is fine), and the annotation is
/// removed if the pod still exists and has it (as Istio's agent does). Never fails: a failure
/// is logged.
pub fn del(env: &CniEnv, ambient: &AmbientConfig, kubernetes: &KubernetesConfig) {
    let Ok(Some(pod_ref)) = k8s::pod_from_cni_args(&env.args) else {
        return;
    };
    let kubeconfig = Kubeconfig::load(&kubernetes.kubeconfig);
    let pod = kubeconfig
        .as_ref()
        .ok()
        .and_then(|config| k8s::fetch_pod_with(config, &pod_ref, &patch_retry()).ok());
    let uid = cni_args_uid(&env.args).or_else(|| pod.as_ref().map(|p| p.metadata.uid.clone()));
    match uid.filter(|u| !u.is_empty()) {
        Some(uid) => match ask(ambient, &Request::Del { uid }) {
            Ok(()) => tracing::info!(pod = %pod_ref, "let go by the ambient agent"),
            Err(e) => {
                tracing::warn!(pod = %pod_ref, "{e}; the agent forgets the pod when it restarts")
            }
        },
        None => tracing::warn!(pod = %pod_ref, "no uid for the pod: the ambient agent is not told"),
    }
    let annotated = pod.as_ref().is_some_and(|p| {
        p.metadata.annotations.get(REDIRECTION).map(String::as_str) == Some(REDIRECTION_ENABLED)
    });
    let (Ok(config), true) = (kubeconfig, annotated) else {
        return;
    };
    let patch = json!({"metadata": {"annotations": {REDIRECTION: null}}});
    match k8s::patch_pod_status_with(&config, &pod_ref, &patch, &patch_retry()) {
        Ok(()) | Err(k8s::K8sError::PodNotFound { .. }) => {}
        Err(e) => tracing::warn!(pod = %pod_ref, "{REDIRECTION} not removed: {e}"),
    }
}

/// Sends one request to the agent; its refusal, its absence or its silence is an error.
fn ask(ambient: &AmbientConfig, request: &Request) -> Result<(), CniError> {
    let socket = ambient.control_socket.display();
    let timeout = match request {
        Request::Add { .. } => AGENT_TIMEOUT,
        Request::Del { .. } | Request::Check { .. } => AGENT_DEL_TIMEOUT,
    };
    let response = control::call(&ambient.control_socket, request, timeout).map_err(|e| {
        let timed_out = matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        let what = if timed_out {
            format!("no answer within {timeout:?}")
        } else {
            e.to_string()
        };
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("the ambient node agent at {socket} is unavailable: {what}"),
        )
    })?;
    match response.error {
        None => Ok(()),
        Some(error) if response.invalid => Err(CniError::new(code::INVALID_CONFIG, error)),
        Some(error) => {
            let what = match request {
                Request::Add { .. } => "refused the pod",
                Request::Del { .. } => "could not let the pod go",
                Request::Check { .. } => "found a fault",
            };
            Err(CniError::new(
                code::OTHER,
                format!("the ambient node agent {what}: {error}"),
            ))
        }
    }
}

/// The pod's uid, which the agent knows it by; code 4 without one.
fn required_uid(env: &CniEnv, pod: &Pod, pod_ref: &PodRef) -> Result<String, CniError> {
    uid(env, pod).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("pod {pod_ref} has no uid (neither the API server nor K8S_POD_UID gives one)"),
        )
    })
}

/// The pod's uid: the API server's, else the runtime's `K8S_POD_UID`.
fn uid(env: &CniEnv, pod: &Pod) -> Option<String> {
    Some(pod.metadata.uid.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| cni_args_uid(&env.args))
}

fn cni_args_uid(args: &str) -> Option<String> {
    args.split(';')
        .find_map(|pair| pair.strip_prefix("K8S_POD_UID="))
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
}

/// The pod's addresses, from the previous plugin's result (`ips[].address`, CIDR notation).
fn pod_ips(conf: &NetConf) -> Result<Vec<IpAddr>, CniError> {
    let ips: Vec<IpAddr> = conf
        .prev_result
        .as_ref()
        .and_then(|r| r.get("ips"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    if ips.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "ambient mode needs the pod's addresses: prevResult has no \"ips\" (chain meshcap-cni \
             after the plugin that assigns them)",
        ));
    }
    Ok(ips)
}

fn refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn k8s_error(e: k8s::K8sError) -> CniError {
    CniError::new(e.cni_code(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> NetConf {
        NetConf::decode(text.as_bytes()).unwrap()
    }

    #[test]
    fn the_stanza_turns_ambient_on_with_the_default_socket() {
        let on = conf(
            r#"{"cniVersion":"1.0.0","kubernetes":{"kubeconfig":"k"},"ambient":{"enabled":true}}"#,
        );
        let got = settings(&on).unwrap().unwrap();
        assert_eq!(got.control_socket, PathBuf::from(control::DEFAULT_SOCKET));
        let off = conf(r#"{"cniVersion":"1.0.0","ambient":{"enabled":false}}"#);
        assert_eq!(settings(&off).unwrap(), None);
        assert_eq!(settings(&conf(r#"{"cniVersion":"1.0.0"}"#)).unwrap(), None);
    }

    #[test]
    fn bad_ambient_stanzas_are_code_7() {
        for text in [
            r#"{"cniVersion":"1.0.0","ambient":{"enabled":true}}"#,
            r#"{"cniVersion":"1.0.0","kubernetes":{"kubeconfig":"k"},"ambient":{"enable":true}}"#,
        ] {
            assert_eq!(settings(&conf(text)).unwrap_err().code, 7, "{text}");
        }
    }

    #[test]
    fn addresses_come_from_the_previous_result() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"198.51.100.5/24"},{"address":"2001:db8::5/64"}]}}"#,
        );
        assert_eq!(
            pod_ips(&c).unwrap(),
            [
                "198.51.100.5".parse::<IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
        assert_eq!(
            pod_ips(&conf(r#"{"cniVersion":"1.0.0"}"#))
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn the_uid_of_cni_args() {
        assert_eq!(
            cni_args_uid("IgnoreUnknown=1;K8S_POD_UID=abc;K8S_POD_NAME=x").as_deref(),
            Some("abc")
        );
        assert_eq!(cni_args_uid("K8S_POD_UID="), None);
    }
}
