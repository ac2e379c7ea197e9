//! The configuration's types: what the parser (`parse.rs`) produces, and plan and backends read.
//! A leaf: nothing here imports back into `config`.

use ipnetwork::{IpNetwork, Ipv4Network};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// How inbound connections reach the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterceptMode {
    /// nat REDIRECT: the proxy sees the original destination via SO_ORIGINAL_DST.
    Redirect,
    /// mangle TPROXY: the proxy accepts on a transparent socket and sees the real peer.
    Tproxy,
}

/// Which inbound ports are captured (`-b`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundPorts {
    /// `-b ""`: no inbound capture.
    None,
    /// `-b '*'`: every port but the local exclusions (`-d`).
    All { except: Vec<u16> },
    /// `-b 80,443`: only these (then `-d` is ignored, as in Istio).
    Only(Vec<u16>),
}

/// Which outbound destinations are captured (`-i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundCidrs {
    /// `-i '*'`: every destination.
    All,
    /// A list; empty means none.
    Only(Vec<IpNetwork>),
}

/// A group id for an owner match: numeric, or a group name resolved when the rule is applied
/// (Istio's ISTIO_OUTBOUND_OWNER_GROUPS accepts both).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GroupRef {
    Id(u32),
    Name(String),
}

impl std::fmt::Display for GroupRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupRef::Id(id) => write!(f, "{id}"),
            GroupRef::Name(name) => f.write_str(name),
        }
    }
}

/// Which owner groups' outbound traffic is captured (ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerGroups {
    /// `*` with these exceptions (none by default).
    AllExcept(Vec<GroupRef>),
    /// Only these groups (an empty list captures no group at all, as in Istio).
    Only(Vec<GroupRef>),
}

/// DNS capture, resolved: `None` when off (or when on but with no server to capture).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsCapture {
    /// Capture port 53 to every destination (--capture-all-dns).
    All,
    /// Capture port 53 to these servers only.
    Servers {
        v4: Vec<Ipv4Addr>,
        v6: Vec<DnsServerV6>,
    },
}

/// An IPv6 DNS server with the spelling it was given in, since Istio prints it as written
/// (`::127.0.0.53` stays `::127.0.0.53`, where the canonical text would be `::7f00:35`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsServerV6 {
    pub addr: Ipv6Addr,
    pub written: String,
}

/// Everything that decides which rules exist: the plan's only input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    pub inbound_tunnel_port: u16,
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub mode: InterceptMode,
    pub inbound_ports: InboundPorts,
    pub exclude_interfaces: Vec<String>,
    pub kube_virt_interfaces: Vec<String>,
    pub outbound_cidrs: OutboundCidrs,
    pub outbound_cidrs_exclude: Vec<IpNetwork>,
    pub outbound_ports: Vec<u16>,
    pub outbound_ports_exclude: Vec<u16>,
    pub tproxy_mark: u32,
    pub tproxy_route_table: u32,
    pub dns: Option<DnsCapture>,
    pub drop_invalid: bool,
    pub owner_groups: OwnerGroups,
    pub ipv4_loopback_cidr: Ipv4Network,
    pub ipv6: bool,
    /// meshcap's addition for a transparent proxy running as the proxy uid (see
    /// `--tproxy-return-marked`); only takes effect in TPROXY mode.
    pub tproxy_return_marked: bool,
    /// meshcap's hardened rules (`--strict`): the proxy is exempt by uid only, and the
    /// 127.0.0.6 / ::6 passthrough RETURN only matches the proxy uid.
    pub strict: bool,
}

/// Which backend writes the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Iptables,
    Nftables,
}

/// Which iptables variant to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IptablesVariant {
    Legacy,
    Nft,
}

/// How the run behaves: everything that is not about which rules exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    pub backend: BackendKind,
    pub dry_run: bool,
    pub skip_rule_apply: bool,
    pub run_validation: bool,
    pub probe_port: u16,
    pub probe_timeout: Duration,
    pub network_namespace: Option<PathBuf>,
    pub reconcile: bool,
    pub cleanup_only: bool,
    pub force_apply: bool,
    pub iptables_variant: Option<IptablesVariant>,
    /// Istio's --dual-stack: accepted for compatibility (IPv6 is decided by --ipv6).
    pub dual_stack: bool,
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub capture: CaptureConfig,
    pub run: RunConfig,
}
