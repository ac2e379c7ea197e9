//! Ambient mode's inputs, typed and validated: the node agent's settings (istio-cni's flags), a
//! pod's annotations, and what they resolve to for the in-pod and the host rules.
//!
//! A bad annotation fails here with an [`AnnotationError`] naming it (exit status 2). Istio's
//! agent ignores a value it cannot parse and falls back to the default; meshcap refuses it, so a
//! typo never silently turns DNS capture or inbound capture on or off.

use std::net::{Ipv4Addr, Ipv6Addr};

/// `ambient.istio.io/bypass-inbound-capture: "true"`: no inbound redirection (ingress gateways).
pub const BYPASS_INBOUND_CAPTURE: &str = "ambient.istio.io/bypass-inbound-capture";
/// `ambient.istio.io/dns-capture: "true"|"false"`: overrides the agent's DNS capture.
pub const DNS_CAPTURE: &str = "ambient.istio.io/dns-capture";
/// `istio.io/reroute-virtual-interfaces: "a,b"`: TCP arriving on these goes to ztunnel's
/// outbound port (VMs, KubeVirt, Docker-in-Docker behind the pod).
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";

/// Istio's default SNAT address of the kubelet's probes (HOST_PROBE_SNAT_IP).
pub const DEFAULT_PROBE_SNAT_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
/// Istio's default IPv6 SNAT address of the kubelet's probes (HOST_PROBE_SNAT_IPV6).
pub const DEFAULT_PROBE_SNAT_V6: Ipv6Addr = Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);

/// The node agent's settings, shared by every pod on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSettings {
    /// `--ambient-dns-capture`: DNS to ztunnel's proxy, unless a pod's annotation says otherwise.
    pub dns_capture: bool,
    /// `--ambient-ipv6`: IPv6 rules, routes and sets too.
    pub ipv6: bool,
    /// `--host-probe-snat-ip`: the source the node gives the kubelet's probes.
    pub probe_snat_v4: Ipv4Addr,
    /// `--host-probe-snat-ipv6`.
    pub probe_snat_v6: Ipv6Addr,
    /// `--backend nftables`: the agent installs with nftables over netlink, and keeps nft sets.
    pub nftables: bool,
    /// `--kubelet-uid` (nftables' node rule matches the kubelet's sockets).
    pub kubelet_uid: Option<u32>,
}

impl Default for NodeSettings {
    fn default() -> NodeSettings {
        NodeSettings {
            dns_capture: false,
            ipv6: false,
            probe_snat_v4: DEFAULT_PROBE_SNAT_V4,
            probe_snat_v6: DEFAULT_PROBE_SNAT_V6,
            nftables: false,
            kubelet_uid: None,
        }
    }
}

/// What a pod's annotations change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodOverrides {
    pub bypass_inbound_capture: bool,
    /// `None`: the node's setting.
    pub dns_capture: Option<bool>,
    /// In the annotation's order, blanks dropped.
    pub virtual_interfaces: Vec<String>,
}

/// An annotation whose value meshcap cannot use. Exit status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for annotation {key}: {reason}")]
pub struct AnnotationError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl PodOverrides {
    /// The overrides of a pod with these annotations (others are ignored).
    pub fn from_annotations<'a>(
        annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<PodOverrides, AnnotationError> {
        let mut pod = PodOverrides::default();
        for (key, value) in annotations {
            let bad = |reason: &str| AnnotationError {
                key: key.to_owned(),
                value: value.to_owned(),
                reason: reason.to_owned(),
            };
            match key {
                BYPASS_INBOUND_CAPTURE => {
                    pod.bypass_inbound_capture = boolean(value).ok_or_else(|| bad(BOOL))?
                }
                DNS_CAPTURE => pod.dns_capture = Some(boolean(value).ok_or_else(|| bad(BOOL))?),
                REROUTE_VIRTUAL_INTERFACES => {
                    pod.virtual_interfaces = interfaces(value).map_err(|r| bad(&r))?
                }
                _ => {}
            }
        }
        Ok(pod)
    }
}

const BOOL: &str = "must be true or false";

/// The spellings Go's strconv.ParseBool accepts, which is what Istio's agent parses with.
fn boolean(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A comma-separated list of interface names; blanks around and between commas are dropped, as
/// Istio does.
fn interfaces(text: &str) -> Result<Vec<String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| valid_interface(name).map(|()| name.to_owned()))
        .collect()
}

/// The kernel's rules for a link name (dev_valid_name): at most 15 bytes, not `.` or `..`, no
/// `/`, `:` or whitespace. iptables and nft would refuse or misread the others.
fn valid_interface(name: &str) -> Result<(), String> {
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}

/// Everything the in-pod rules depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodConfig {
    pub ipv6: bool,
    pub dns_capture: bool,
    /// Off for ingress gateways (`bypass-inbound-capture`).
    pub inbound_capture: bool,
    pub probe_snat_v4: Ipv4Addr,
    pub probe_snat_v6: Ipv6Addr,
    pub virtual_interfaces: Vec<String>,
}

impl PodConfig {
    /// The node's settings with the pod's overrides applied.
    pub fn new(node: &NodeSettings, pod: &PodOverrides) -> PodConfig {
        PodConfig {
            ipv6: node.ipv6,
            dns_capture: pod.dns_capture.unwrap_or(node.dns_capture),
            inbound_capture: !pod.bypass_inbound_capture,
            probe_snat_v4: node.probe_snat_v4,
            probe_snat_v6: node.probe_snat_v6,
            virtual_interfaces: pod.virtual_interfaces.clone(),
        }
    }
}

/// Which node-local packets count as the kubelet's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeSource {
    /// Any packet of a local socket (Istio's iptables rule, `-m owner --socket-exists`):
    /// forwarded packets (kube-proxy's) have none.
    AnyLocalSocket,
    /// Packets of sockets owned by this uid (Istio's nftables rule: the kubelet's uid).
    Uid(u32),
}

/// Everything the node-side probe rule depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    pub ipv6: bool,
    pub probe_snat_v4: Ipv4Addr,
    pub probe_snat_v6: Ipv6Addr,
    pub probe_source: ProbeSource,
}

impl HostConfig {
    pub fn new(node: &NodeSettings, probe_source: ProbeSource) -> HostConfig {
        HostConfig {
            ipv6: node.ipv6,
            probe_snat_v4: node.probe_snat_v4,
            probe_snat_v6: node.probe_snat_v6,
            probe_source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<PodOverrides, AnnotationError> {
        PodOverrides::from_annotations(pairs.iter().copied())
    }

    #[test]
    fn annotations_set_the_overrides() {
        let pod = parse(&[
            (BYPASS_INBOUND_CAPTURE, "true"),
            (DNS_CAPTURE, "False"),
            (REROUTE_VIRTUAL_INTERFACES, " en0ps1, ,en1ps1 "),
            ("unrelated", "whatever"),
        ])
        .unwrap();
        assert_eq!(
            pod,
            PodOverrides {
                bypass_inbound_capture: true,
                dns_capture: Some(false),
                virtual_interfaces: vec!["en0ps1".into(), "en1ps1".into()],
            }
        );
        assert_eq!(parse(&[]).unwrap(), PodOverrides::default());
    }

    #[test]
    fn a_bad_value_names_its_annotation() {
        for (key, value) in [
            (BYPASS_INBOUND_CAPTURE, "yes"),
            (DNS_CAPTURE, ""),
            (REROUTE_VIRTUAL_INTERFACES, "a,waytoolonginterface0"),
            (REROUTE_VIRTUAL_INTERFACES, "eth/0"),
            (REROUTE_VIRTUAL_INTERFACES, ".."),
        ] {
            let e = parse(&[(key, value)]).unwrap_err();
            assert_eq!(e.key, key);
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn the_pod_overrides_the_node() {
        let node = NodeSettings {
            dns_capture: true,
            ..NodeSettings::default()
        };
        let off = PodOverrides {
            dns_capture: Some(false),
            ..PodOverrides::default()
        };
        assert!(!PodConfig::new(&node, &off).dns_capture);
        assert!(PodConfig::new(&node, &PodOverrides::default()).dns_capture);
        assert!(PodConfig::new(&node, &PodOverrides::default()).inbound_capture);
    }
}
