//! Istio's CNI plugin in sidecar mode: which pods it captures, and the istio-iptables settings
//! a pod's annotations and `istio-proxy` container give (the table of
//! `../shared/conformance/istio-cni/README.md`).
//!
//! Values are carried as text with their source and not validated here: the installer's own
//! validation ([`crate::config`]) judges them and names the source in its errors.

use super::pod::{Container, Pod};

pub const ISTIO_PROXY: &str = "istio-proxy";
pub const ISTIO_INIT: &str = "istio-init";
pub const INJECT_KEY: &str = "sidecar.istio.io/inject";
pub const STATUS_KEY: &str = "sidecar.istio.io/status";
/// The inbound ports Istio's plugin always excludes (agent, health, telemetry), appended to the
/// excluded inbound ports.
pub const ALWAYS_EXCLUDED_INBOUND_PORTS: &str = "15020,15021,15090";

/// One installer setting: a long flag of [`crate::cli::Cli`] without its dashes, its value text,
/// and where the value came from (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flag: &'static str,
    pub value: String,
    pub source: String,
}

impl Setting {
    fn new(flag: &'static str, value: impl Into<String>, source: impl Into<String>) -> Setting {
        Setting {
            flag,
            value: value.into(),
            source: source.into(),
        }
    }
}

/// What Istio's plugin does with a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave the pod alone: the ADD succeeds and installs nothing.
    Skip { reason: String },
    /// Capture the pod with these settings of its own, to lay over the defaults (each flag at
    /// most once, in the order of the mapping table).
    Capture(Vec<Setting>),
}

/// Annotations that map one to one onto a flag.
const ANNOTATIONS: [(&str, &str); 7] = [
    (
        "sidecar.istio.io/interceptionMode",
        "istio-inbound-interception-mode",
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "istio-service-cidr",
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        "istio-service-exclude-cidr",
    ),
    (
        "traffic.sidecar.istio.io/includeInboundPorts",
        "istio-inbound-ports",
    ),
    (
        "traffic.sidecar.istio.io/excludeInboundPorts",
        "istio-local-exclude-ports",
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundPorts",
        "istio-outbound-ports",
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        "istio-local-outbound-ports-exclude",
    ),
];
const EXCLUDE_INBOUND_PORTS_KEY: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// `-k`: the current annotation, else the older one.
const VIRTUAL_INTERFACES_KEYS: [&str; 2] = [
    "istio.io/reroute-virtual-interfaces",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
];
const EXCLUDE_INTERFACES_KEY: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// `istio-proxy` environment variables and the boolean flags each sets to its value.
const PROXY_ENV: [(&str, &[&str]); 3] = [
    (
        "ISTIO_META_DNS_CAPTURE",
        &["redirect-dns", "capture-all-dns"],
    ),
    ("ISTIO_DUAL_STACK", &["dual-stack"]),
    ("INVALID_DROP", &["drop-invalid"]),
];

/// `list` with [`ALWAYS_EXCLUDED_INBOUND_PORTS`] appended, empty elements and repeats dropped,
/// the first occurrence kept in place. Istio applies this to every excluded-inbound-ports value.
pub fn append_always_excluded_inbound_ports(list: &str) -> String {
    let mut ports: Vec<&str> = Vec::new();
    for port in list
        .split(',')
        .chain(ALWAYS_EXCLUDED_INBOUND_PORTS.split(','))
    {
        if !port.is_empty() && !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports.join(",")
}

/// Why a pod of `namespace` is skipped, if its namespace is excluded. The plugin can ask this
/// before fetching the pod, so that excluded pods never depend on the API server.
pub fn namespace_excluded(namespace: &str, exclude_namespaces: &[String]) -> Option<String> {
    exclude_namespaces
        .iter()
        .any(|n| n == namespace)
        .then(|| format!("namespace {namespace} is excluded"))
}

/// The `istio-proxy` container: a regular container, or a native sidecar (an init container
/// that keeps running), as Istio's injector places it on recent clusters.
fn istio_proxy(pod: &Pod) -> Option<&Container> {
    pod.spec
        .containers
        .iter()
        .chain(&pod.spec.init_containers)
        .find(|c| c.name == ISTIO_PROXY)
}

/// Istio's skip rules, then the pod's settings.
pub fn sidecar_decision(pod: &Pod, exclude_namespaces: &[String]) -> Decision {
    let skip = |reason: String| Decision::Skip { reason };
    let meta = &pod.metadata;
    if let Some(reason) = namespace_excluded(&meta.namespace, exclude_namespaces) {
        return skip(reason);
    }
    let Some(proxy) = istio_proxy(pod) else {
        return skip(format!("no {ISTIO_PROXY} container"));
    };
    if pod
        .spec
        .init_containers
        .iter()
        .any(|c| c.name == ISTIO_INIT)
    {
        return skip(format!("an {ISTIO_INIT} init container installs the rules"));
    }
    for (kind, map) in [("label", &meta.labels), ("annotation", &meta.annotations)] {
        if map.get(INJECT_KEY).map(String::as_str) == Some("false") {
            return skip(format!("{kind} {INJECT_KEY} is \"false\""));
        }
    }
    if !meta.annotations.contains_key(STATUS_KEY) {
        return skip(format!("no {STATUS_KEY} annotation (not injected)"));
    }
    Decision::Capture(pod_settings(pod, proxy))
}

fn pod_settings(pod: &Pod, proxy: &Container) -> Vec<Setting> {
    let annotations = &pod.metadata.annotations;
    let annotation = |key: &str| format!("annotation {key}");
    let mut settings = Vec::new();
    for (key, flag) in ANNOTATIONS {
        if let Some(value) = annotations.get(key) {
            let value = if key == EXCLUDE_INBOUND_PORTS_KEY {
                append_always_excluded_inbound_ports(value)
            } else {
                value.clone()
            };
            settings.push(Setting::new(flag, value, annotation(key)));
        }
    }
    if let Some((key, value)) = VIRTUAL_INTERFACES_KEYS
        .iter()
        .find_map(|k| annotations.get(*k).map(|v| (k, v)))
    {
        settings.push(Setting::new("kube-virt-interfaces", value, annotation(key)));
    }
    if let Some(value) = annotations.get(EXCLUDE_INTERFACES_KEY) {
        settings.push(Setting::new(
            "istio-exclude-interfaces",
            value,
            annotation(EXCLUDE_INTERFACES_KEY),
        ));
    }
    let security = proxy.security_context.clone().unwrap_or_default();
    for (flag, field, id) in [
        ("proxy-uid", "runAsUser", security.run_as_user),
        ("proxy-gid", "runAsGroup", security.run_as_group),
    ] {
        if let Some(id) = id.filter(|id| *id != 0) {
            settings.push(Setting::new(
                flag,
                id.to_string(),
                format!("{ISTIO_PROXY} securityContext.{field}"),
            ));
        }
    }
    for (name, flags) in PROXY_ENV {
        if let Some(value) = proxy.env_value(name) {
            for flag in flags {
                settings.push(Setting::new(
                    flag,
                    value,
                    format!("{ISTIO_PROXY} env {name}"),
                ));
            }
        }
    }
    settings
}

#[cfg(test)]
mod tests;
