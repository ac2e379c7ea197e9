//! The errors of the Kubernetes side and the CNI error code each one maps to.

use std::path::PathBuf;
use std::time::Duration;

use crate::cni::spec::code;

/// A failure to learn the pod's configuration from Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// `CNI_ARGS` is malformed or names a pod with an impossible name.
    #[error("CNI_ARGS: {0}")]
    CniArgs(String),

    /// The kubeconfig file is missing, unreadable, malformed or asks for something meshcap does
    /// not do.
    #[error("kubeconfig {}: {problem}", path.display())]
    Kubeconfig { path: PathBuf, problem: String },

    /// Connection failures, timeouts, 5xx and 429 answers until the retry budget ran out.
    #[error(
        "Kubernetes API server {server} unavailable ({attempts} attempts in {:.1}s): {last}",
        elapsed.as_secs_f64()
    )]
    Unavailable {
        server: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },

    /// 401 or 403: the API server refused the kubeconfig's credentials, or they lack the right
    /// to get pods.
    #[error(
        "Kubernetes API server {server} refused the credentials of kubeconfig {} ({credential}): \
         HTTP {status}{}",
        kubeconfig.display(),
        detail(message)
    )]
    Credentials {
        server: String,
        kubeconfig: PathBuf,
        credential: String,
        status: u16,
        message: String,
    },

    /// 404: the pod is gone (deleted before its sandbox was set up) or never existed.
    #[error("pod {namespace}/{name} not found on the Kubernetes API server {server}")]
    PodNotFound {
        server: String,
        namespace: String,
        name: String,
    },

    /// The TLS handshake failed: the server's certificate does not verify against the
    /// kubeconfig's certificate authority, or the server refused the client certificate.
    #[error(
        "Kubernetes API server {server}: TLS handshake failed (does the certificate authority \
         of kubeconfig {} belong to this server?): {problem}",
        kubeconfig.display()
    )]
    Tls {
        server: String,
        kubeconfig: PathBuf,
        problem: String,
    },

    /// Any other HTTP status. `pod` names what was asked for (`pod NS/NAME`, `namespace NS`).
    #[error(
        "Kubernetes API server {server}: unexpected HTTP {status} for {pod}{}",
        detail(message)
    )]
    Status {
        server: String,
        pod: String,
        status: u16,
        message: String,
    },

    /// A 200 answer whose body is not the requested Pod.
    #[error(
        "Kubernetes API server {server}: the answer for {pod} is not that {}: {problem}",
        kind(pod)
    )]
    Decode {
        server: String,
        pod: String,
        problem: String,
    },

    /// Any other failure of the HTTP exchange.
    #[error("Kubernetes API server {server}: request failed: {problem}")]
    Request { server: String, problem: String },
}

/// The kind of object a request's target (`pod NS/NAME`, `namespace NS`) names.
fn kind(target: &str) -> &'static str {
    if target.starts_with("namespace ") {
        "Namespace"
    } else {
        "Pod"
    }
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl K8sError {
    /// Whether the failure is the API server being unreachable or slow, which retrying later may
    /// cure. [`crate::cni::k8s::fetch_pod`] has retried already; the plugin reports it with
    /// code 11 (try again later): the runtime retries the sandbox, and the pod never starts
    /// without its rules because the API server was slow.
    pub fn retryable(&self) -> bool {
        matches!(self, K8sError::Unavailable { .. })
    }

    /// The CNI error code for this failure: 11 (try again later) when the API server was
    /// unreachable or slow, 4 for `CNI_ARGS`, 7 for the kubeconfig (part of the network
    /// configuration, through the stanza), and 999 for a definitive answer that retrying will
    /// not change (credentials refused, pod gone, TLS failure, a body that is not the Pod).
    pub fn cni_code(&self) -> u32 {
        match self {
            K8sError::Unavailable { .. } => code::TRY_AGAIN_LATER,
            K8sError::CniArgs(_) => code::INVALID_ENVIRONMENT,
            K8sError::Kubeconfig { .. } => code::INVALID_CONFIG,
            K8sError::Credentials { .. }
            | K8sError::PodNotFound { .. }
            | K8sError::Tls { .. }
            | K8sError::Status { .. }
            | K8sError::Decode { .. }
            | K8sError::Request { .. } => code::OTHER,
        }
    }
}
