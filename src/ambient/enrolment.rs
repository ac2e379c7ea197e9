//! Whether a pod is enrolled in ambient mode, decided at CNI ADD from what the API server says
//! of the pod and its namespace. Pure: the plugin fetches the facts, this decides.
//!
//! A pod is enrolled when it, or else its namespace, carries `istio.io/dataplane-mode=ambient`.
//! It is not when it runs in the host's network namespace (there is no pod namespace to put
//! rules in), when its namespace is excluded, when it has a sidecar (`sidecar.istio.io/status`:
//! ztunnel and a sidecar in one pod are not supported), or when its own label says otherwise
//! (`istio.io/dataplane-mode=none`, or any other value: the pod's label beats its namespace's).
//! Pods that are not enrolled keep the sidecar behaviour.

/// The label that enrols.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Its value that enrols.
pub const AMBIENT: &str = "ambient";
/// The annotation of a pod that has a sidecar.
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// The annotation the agent puts on an enrolled pod, and its value.
pub const REDIRECTION: &str = "ambient.istio.io/redirection";
pub const REDIRECTION_ENABLED: &str = "enabled";

/// What is known of a pod at ADD.
#[derive(Clone, Debug, Default)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub labels: Vec<(&'a str, &'a str)>,
    pub annotations: Vec<(&'a str, &'a str)>,
    pub host_network: bool,
    /// The labels of the pod's namespace.
    pub namespace_labels: Vec<(&'a str, &'a str)>,
}

/// Why a pod is not enrolled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotEnrolled {
    /// Neither the pod nor its namespace asks for ambient mode.
    NotLabelled,
    /// The pod's own label asks for another mode.
    OptedOut,
    /// The pod has a sidecar.
    Sidecar,
    /// The pod uses the node's network namespace.
    HostNetwork,
    /// Its namespace is one the agent never enrols (e.g. kube-system, istio-system).
    ExcludedNamespace,
}

fn get<'a>(pairs: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The decision for a pod; `excluded` lists the namespaces never enrolled.
pub fn decide(pod: &PodFacts<'_>, excluded: &[&str]) -> Result<(), NotEnrolled> {
    if pod.host_network {
        return Err(NotEnrolled::HostNetwork);
    }
    if excluded.contains(&pod.namespace) {
        return Err(NotEnrolled::ExcludedNamespace);
    }
    if get(&pod.annotations, SIDECAR_STATUS).is_some() {
        return Err(NotEnrolled::Sidecar);
    }
    match get(&pod.labels, DATAPLANE_MODE) {
        Some(AMBIENT) => Ok(()),
        Some(_) => Err(NotEnrolled::OptedOut),
        None if get(&pod.namespace_labels, DATAPLANE_MODE) == Some(AMBIENT) => Ok(()),
        None => Err(NotEnrolled::NotLabelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod<'a>(labels: &[(&'a str, &'a str)], ns_labels: &[(&'a str, &'a str)]) -> PodFacts<'a> {
        PodFacts {
            namespace: "default",
            labels: labels.to_vec(),
            namespace_labels: ns_labels.to_vec(),
            ..PodFacts::default()
        }
    }

    #[test]
    fn the_pod_or_its_namespace_enrols_and_the_pod_wins() {
        let ambient = [(DATAPLANE_MODE, AMBIENT)];
        let none = [(DATAPLANE_MODE, "none")];
        assert_eq!(decide(&pod(&[], &ambient), &[]), Ok(()));
        assert_eq!(decide(&pod(&ambient, &[]), &[]), Ok(()));
        assert_eq!(
            decide(&pod(&none, &ambient), &[]),
            Err(NotEnrolled::OptedOut)
        );
        assert_eq!(decide(&pod(&[], &[]), &[]), Err(NotEnrolled::NotLabelled));
        assert_eq!(
            decide(&pod(&[("app", "x")], &[(DATAPLANE_MODE, "sidecar")]), &[]),
            Err(NotEnrolled::NotLabelled)
        );
    }

    #[test]
    fn sidecars_host_network_and_excluded_namespaces_are_never_enrolled() {
        let ambient = [(DATAPLANE_MODE, AMBIENT)];
        let mut sidecar = pod(&ambient, &ambient);
        sidecar.annotations = vec![(SIDECAR_STATUS, "{}")];
        assert_eq!(decide(&sidecar, &[]), Err(NotEnrolled::Sidecar));
        let mut host = pod(&ambient, &ambient);
        host.host_network = true;
        assert_eq!(decide(&host, &[]), Err(NotEnrolled::HostNetwork));
        assert_eq!(
            decide(&pod(&ambient, &ambient), &["kube-system", "default"]),
            Err(NotEnrolled::ExcludedNamespace)
        );
    }
}
