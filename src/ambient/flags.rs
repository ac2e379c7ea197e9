//! The flags the node agent's subcommands share (`meshcap ambient pod|host|agent|explain`), and
//! the value parsers of the agent's command lines. A leaf: [`super::cli`] and [`super::daemon`]
//! both build on it, and it on neither.

use super::config::NodeSettings;
use clap::{Args, ValueEnum};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Iptables,
    Nftables,
}

/// A bad input: exit 2 after saying which.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub(crate) String);

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

    /// The backend [default: iptables].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,

    /// Istio's spelling of --backend nftables.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub native_nftables: Option<bool>,

    /// The kubelet's uid, whose probes the node's nftables rule matches (host, agent) [default:
    /// the uid of the running kubelet process].
    #[arg(long)]
    pub kubelet_uid: Option<u32>,
}

impl NodeFlags {
    pub fn settings(&self) -> NodeSettings {
        // Conflicting flags are refused by `pod` and `host` (Common::backend); the agent goes
        // by --backend.
        let nftables = self.backend().unwrap_or(Backend::Iptables) == Backend::Nftables;
        NodeSettings {
            dns_capture: self.ambient_dns_capture,
            ipv6: self.ambient_ipv6,
            probe_snat_v4: self.host_probe_snat_ip,
            probe_snat_v6: self.host_probe_snat_ipv6,
            nftables,
            // Only nftables' rule needs it: no /proc scan otherwise.
            kubelet_uid: self
                .kubelet_uid
                .or_else(|| nftables.then(kubelet_uid).flatten()),
        }
    }

    pub fn backend(&self) -> Result<Backend, BadInput> {
        match (self.backend, self.native_nftables) {
            (Some(Backend::Iptables), Some(true)) => Err(BadInput(
                "--backend iptables and --native-nftables cannot be used together".into(),
            )),
            (Some(b), _) => Ok(b),
            (None, Some(true)) => Ok(Backend::Nftables),
            (None, _) => Ok(Backend::Iptables),
        }
    }
}

/// The uid of a process named `kubelet`, as Istio's nftables mode looks it up.
fn kubelet_uid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim_end() != "kubelet" {
            return None;
        }
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
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
