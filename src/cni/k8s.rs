//! The Kubernetes side of CNI mode: the pod from the API server and what Istio reads of it.
//!
//! - [`stanza`]: the plugin stanza's `"kubernetes"` object and the pod named by `CNI_ARGS`;
//! - [`kubeconfig`]: the API server, its CA and the credentials, read from a kubeconfig file;
//! - [`client`]: [`fetch_pod`], one blocking HTTPS GET with bounded retries;
//! - [`pod`]: the fields of a Pod that matter here;
//! - [`istio`]: Istio's sidecar behaviour, [`sidecar_decision`]: skip the pod, or the installer
//!   settings its annotations and `istio-proxy` container give.
//!
//! Every failure is a [`K8sError`], whose [`K8sError::cni_code`] is the CNI error code the plugin
//! reports.

pub mod client;
pub mod error;
pub mod istio;
pub mod kubeconfig;
pub mod pod;
pub mod stanza;

pub use client::{
    RetryPolicy, fetch_namespace_with, fetch_pod, fetch_pod_with, patch_pod_status_with,
};
pub use error::K8sError;
pub use istio::{
    Decision, Setting, append_always_excluded_inbound_ports, namespace_excluded, sidecar_decision,
};
pub use kubeconfig::Kubeconfig;
pub use pod::{Namespace, Pod};
pub use stanza::{KubernetesConfig, PodRef, pod_from_cni_args};
