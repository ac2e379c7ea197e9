//! The flags the node agent's subcommands share (`meshcap ambient pod|host|agent|explain`), and
//! the value parsers of the agent's command lines. A leaf: [`super::cli`] and [`super::daemon`]
//! both build on it, and it on neither.

use super::config::NodeSettings;
use clap::Args;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The node agent's settings, shared by every subcommand.
#[derive(Args, Debug)]
pub struct NodeFlags {
    /// Send the pod's DNS (UDP and TCP port 53) to ztunnel's DNS proxy (15053).
    #[arg(long, env = "AMBIENT_DNS_CAPTURE", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub ambient_dns_capture: bool,

    /// IPv6 rules, routes and probe set too.
    #[arg(long, env = "AMBIENT_IPV6", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub ambient_ipv6: bool,

    /// The source address the node gives the kubelet's probes (IPv4).
    #[arg(long, env = "HOST_PROBE_SNAT_IP", default_value_t = super::config::DEFAULT_PROBE_SNAT_V4)]
    pub host_probe_snat_ip: Ipv4Addr,

    /// The source address the node gives the kubelet's probes (IPv6).
    #[arg(long, env = "HOST_PROBE_SNAT_IPV6", default_value_t = super::config::DEFAULT_PROBE_SNAT_V6)]
    pub host_probe_snat_ipv6: Ipv6Addr,
}

impl NodeFlags {
    pub fn settings(&self) -> NodeSettings {
        NodeSettings {
            dns_capture: self.ambient_dns_capture,
            ipv6: self.ambient_ipv6,
            probe_snat_v4: self.host_probe_snat_ip,
            probe_snat_v6: self.host_probe_snat_ipv6,
        }
    }
}

/// Go's strconv.ParseBool, as Istio's flags parse booleans.
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err("must be KEY=VALUE".into()),
    }
}
