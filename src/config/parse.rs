//! Raw flag and environment text → typed values. Every failure names its flag or variable.

use super::types::{
    BackendKind, CaptureConfig, Config, DnsCapture, DnsServerV6, GroupRef, InboundPorts,
    InterceptMode, IptablesVariant, OutboundCidrs, OwnerGroups, RunConfig,
};
use crate::inputs::{Inputs, Opt, Origin, Raw};
use crate::inputs::{quoted, shortened};
use ipnetwork::{IpNetwork, Ipv4Network};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid value {} for {origin}: {reason}", quoted(value))]
    Invalid {
        origin: Origin,
        value: String,
        reason: String,
    },
    /// Two inputs that cannot be used together.
    #[error("{first} and {second} cannot be used together: {reason}")]
    Conflict {
        first: Origin,
        second: Origin,
        reason: String,
    },
    /// A fact of the host that the configuration needs could not be read.
    #[error("cannot read {what}: {reason}")]
    Host { what: String, reason: String },
}

impl ConfigError {
    /// Exit status: 2 for bad input, 1 when the host could not be read.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Host { .. } => 1,
            _ => 2,
        }
    }
}

fn invalid(raw: &Raw, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: raw.origin.clone(),
        value: raw.text.clone(),
        reason: reason.into(),
    }
}

/// Host facts the configuration may need: kept behind a trait so that config is testable.
pub trait HostFacts {
    /// Istio's IPv6 detection: is the pod's (first, or with dual stack any) global address IPv6?
    /// `None` when the pod has no global address.
    fn pod_is_ipv6(&self, dual_stack: bool) -> Result<Option<bool>, String>;
    /// As [`HostFacts::pod_is_ipv6`], for the pod of `network_namespace` when the run names
    /// one. The default asks [`HostFacts::pod_is_ipv6`] where it runs: a host that can enter
    /// namespaces (the installer's front door) overrides it, since config itself never does.
    fn pod_is_ipv6_in(
        &self,
        dual_stack: bool,
        _network_namespace: Option<&std::path::Path>,
    ) -> Result<Option<bool>, String> {
        self.pod_is_ipv6(dual_stack)
    }
    /// The `nameserver` entries of /etc/resolv.conf.
    fn resolv_conf_nameservers(&self) -> Result<Vec<String>, String>;
    /// The uid of a user name.
    fn uid_of(&self, user: &str) -> Option<u32>;
}

/// The real host.
pub struct SystemHost;

impl HostFacts for SystemHost {
    fn pod_is_ipv6(&self, dual_stack: bool) -> Result<Option<bool>, String> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| e.to_string())?;
        let mut found = None;
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(sin) = addr.as_sockaddr_in() {
                IpAddr::V4(sin.ip())
            } else if let Some(sin6) = addr.as_sockaddr_in6() {
                let ip = sin6.ip();
                ip.to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(ip))
            } else {
                continue;
            };
            let link_local = match ip {
                IpAddr::V4(v4) => v4.is_link_local(),
                IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
            if ip.is_loopback() || link_local || ip.is_multicast() {
                continue;
            }
            found = Some(ip.is_ipv6());
            if !dual_stack || ip.is_ipv6() {
                break;
            }
        }
        Ok(found)
    }

    fn resolv_conf_nameservers(&self) -> Result<Vec<String>, String> {
        let text = std::fs::read_to_string("/etc/resolv.conf")
            .map_err(|e| format!("/etc/resolv.conf: {e}"))?;
        Ok(nameservers(&text))
    }

    fn uid_of(&self, user: &str) -> Option<u32> {
        super::users::uid_of(user)
    }
}

/// The `nameserver` addresses of a resolv.conf text, in order.
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .map(str::to_owned)
        .collect()
}

/// Istio's list splitting: comma-separated, empty elements (stray commas) dropped; meshcap also
/// trims spaces around elements.
pub fn split_list(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_port_text(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(_) => Err(format!("port {text} is out of range 1-65535")),
        Err(_) => Err(format!("{} is not a port number (1-65535)", quoted(text))),
    }
}

fn port(raw: &Raw) -> Result<u16, ConfigError> {
    parse_port_text(raw.text.trim()).map_err(|r| invalid(raw, r))
}

fn port_list(raw: &Raw) -> Result<Vec<u16>, ConfigError> {
    split_list(&raw.text)
        .into_iter()
        .map(|p| {
            if p == "*" {
                return Err(invalid(raw, "'*' is not allowed here"));
            }
            parse_port_text(p).map_err(|r| invalid(raw, r))
        })
        .collect()
}

fn number(raw: &Raw, what: &str) -> Result<u32, ConfigError> {
    raw.text
        .trim()
        .parse::<u32>()
        .map_err(|_| invalid(raw, format!("{what} must be a number from 0 to 4294967295")))
}

fn id_list(raw: &Raw, what: &str) -> Result<Vec<u32>, ConfigError> {
    split_list(&raw.text)
        .into_iter()
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| invalid(raw, format!("{} is not a numeric {what}", quoted(s))))
        })
        .collect()
}

/// Go's strconv.ParseBool, which Istio uses for its boolean flags and variables.
fn boolean(raw: &Raw) -> Result<bool, ConfigError> {
    match raw.text.as_str() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(invalid(raw, "expected true or false")),
    }
}

fn cidr(raw: &Raw, text: &str) -> Result<IpNetwork, ConfigError> {
    if !text.contains('/') {
        return Err(invalid(
            raw,
            format!(
                "{} is not a CIDR (write it as address/prefix, e.g. 10.0.0.0/8)",
                quoted(text)
            ),
        ));
    }
    text.parse::<IpNetwork>().map_err(|e| {
        invalid(
            raw,
            format!(
                "{} is not a CIDR: {}",
                quoted(text),
                shortened(&e.to_string())
            ),
        )
    })
}

fn cidr_list(raw: &Raw) -> Result<Vec<IpNetwork>, ConfigError> {
    split_list(&raw.text)
        .into_iter()
        .map(|c| cidr(raw, c))
        .collect()
}

/// Linux's dev_valid_name, plus iptables' trailing `+` wildcard.
fn interface_name(raw: &Raw, name: &str) -> Result<String, ConfigError> {
    let reason = if name.len() > 15 {
        Some(format!(
            "interface name {} is longer than 15 bytes",
            quoted(name)
        ))
    } else if name == "." || name == ".." {
        Some(format!("{} is not an interface name", quoted(name)))
    } else if name.chars().any(|c| {
        c == '/' || c == ':' || c == '"' || c == '\'' || c.is_whitespace() || c.is_control()
    }) {
        Some(format!(
            "interface name {} contains a character Linux does not allow",
            quoted(name)
        ))
    } else if name.trim_end_matches('+').contains('+') || name == "+" {
        Some(format!(
            "interface name {}: '+' is only allowed as a trailing wildcard",
            quoted(name)
        ))
    } else {
        None
    };
    match reason {
        Some(r) => Err(invalid(raw, r)),
        None => Ok(name.to_owned()),
    }
}

fn interface_list(raw: &Raw) -> Result<Vec<String>, ConfigError> {
    split_list(&raw.text)
        .into_iter()
        .map(|n| interface_name(raw, n))
        .collect()
}

fn group_ref(raw: &Raw, text: &str) -> Result<GroupRef, ConfigError> {
    if let Ok(id) = text.parse::<u32>() {
        return Ok(GroupRef::Id(id));
    }
    // POSIX-portable group names, as useradd/groupadd accept them.
    let valid = text.len() <= 32
        && text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && text
            .trim_end_matches('$')
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid {
        Ok(GroupRef::Name(text.to_owned()))
    } else {
        Err(invalid(
            raw,
            format!("{} is neither a gid nor a group name", quoted(text)),
        ))
    }
}

fn group_list(raw: &Raw) -> Result<Vec<GroupRef>, ConfigError> {
    split_list(&raw.text)
        .into_iter()
        .map(|g| group_ref(raw, g))
        .collect()
}

/// Istio limits the groups of an include list: they all go into one iptables rule.
const MAX_OWNER_GROUPS_INCLUDE: usize = 64;

fn owner_groups(include: Option<Raw>, exclude: Option<Raw>) -> Result<OwnerGroups, ConfigError> {
    let include_all = include.as_ref().is_none_or(|r| r.text.trim() == "*");
    let exclude_set = exclude
        .as_ref()
        .is_some_and(|r| !split_list(&r.text).is_empty());
    match (include, exclude) {
        (Some(inc), Some(exc)) if !include_all && exclude_set => Err(ConfigError::Conflict {
            first: inc.origin,
            second: exc.origin,
            reason: "set either the groups to capture or the groups to exclude".into(),
        }),
        (Some(inc), _) if !include_all => {
            let groups = group_list(&inc)?;
            if groups.len() > MAX_OWNER_GROUPS_INCLUDE {
                return Err(invalid(
                    &inc,
                    format!(
                        "at most {MAX_OWNER_GROUPS_INCLUDE} groups, got {}",
                        groups.len()
                    ),
                ));
            }
            Ok(OwnerGroups::Only(groups))
        }
        (_, Some(exc)) => Ok(OwnerGroups::AllExcept(group_list(&exc)?)),
        _ => Ok(OwnerGroups::AllExcept(Vec::new())),
    }
}

fn loopback_cidr(raw: Option<Raw>) -> Result<Ipv4Network, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Ipv4Network::new(Ipv4Addr::LOCALHOST, 32).expect("/32"));
    };
    let net = raw
        .text
        .trim()
        .parse::<Ipv4Network>()
        .map_err(|e| invalid(&raw, format!("not an IPv4 CIDR: {e}")))?;
    if !net.ip().is_loopback() || net.prefix() < 8 {
        return Err(invalid(&raw, "must be a loopback range within 127.0.0.0/8"));
    }
    Ok(net)
}

fn mode(raw: &Raw) -> Result<InterceptMode, ConfigError> {
    match raw.text.trim().to_ascii_uppercase().as_str() {
        "" | "REDIRECT" => Ok(InterceptMode::Redirect),
        "TPROXY" => Ok(InterceptMode::Tproxy),
        _ => Err(invalid(raw, "expected REDIRECT or TPROXY")),
    }
}

fn route_table(raw: &Raw) -> Result<u32, ConfigError> {
    match number(raw, "the routing table")? {
        0 => Err(invalid(raw, "table 0 is not a routing table")),
        253..=255 => Err(invalid(
            raw,
            "tables 253-255 are the kernel's default, main and local tables",
        )),
        t => Ok(t),
    }
}

fn mark(raw: &Raw) -> Result<u32, ConfigError> {
    match number(raw, "the mark")? {
        0 => Err(invalid(
            raw,
            "mark 0 cannot be told from an unmarked packet",
        )),
        m => Ok(m),
    }
}

/// Go's time.ParseDuration for the units Istio users write (e.g. 5s, 500ms, 1m30s).
fn duration(raw: &Raw) -> Result<Duration, ConfigError> {
    crate::duration::parse(&raw.text).map_err(|reason| invalid(raw, reason))
}

fn dns_servers_list(raw: &Raw) -> Result<(Vec<Ipv4Addr>, Vec<DnsServerV6>), ConfigError> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for text in split_list(&raw.text) {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => v4.push(a),
            Ok(IpAddr::V6(a)) => v6.push(DnsServerV6 {
                addr: a,
                written: text.to_owned(),
            }),
            Err(_) => {
                return Err(invalid(
                    raw,
                    format!("{} is not an IP address", quoted(text)),
                ));
            }
        }
    }
    Ok((v4, v6))
}

impl Config {
    /// Validates the parsed command line against the host.
    pub fn from_inputs(inputs: &Inputs, host: &dyn HostFacts) -> Result<Config, ConfigError> {
        let get = |opt: Opt| {
            inputs
                .get(opt)
                .unwrap_or_else(|| panic!("option {opt:?} has a default"))
        };
        let opt = |opt: Opt| inputs.get(opt);

        let dual_stack = boolean(&get(Opt::DualStack))?;
        let redirect_dns = boolean(&get(Opt::RedirectDns))?;
        let capture_all_dns = boolean(&get(Opt::CaptureAllDns))?;

        let inbound_excludes = port_list(&get(Opt::InboundPortsExclude))?;
        let inbound_raw = get(Opt::InboundPorts);
        let inbound_ports = match inbound_raw.text.trim() {
            "" => InboundPorts::None,
            "*" => InboundPorts::All {
                except: inbound_excludes,
            },
            _ => InboundPorts::Only(port_list(&inbound_raw)?),
        };

        let include_raw = get(Opt::OutboundCidrs);
        let outbound_cidrs = match include_raw.text.trim() {
            "*" => OutboundCidrs::All,
            _ => OutboundCidrs::Only(cidr_list(&include_raw)?),
        };
        let exclude_raw = get(Opt::OutboundCidrsExclude);
        if exclude_raw.text.trim() == "*" {
            return Err(invalid(
                &exclude_raw,
                "'*' would exclude every destination; list CIDRs instead",
            ));
        }
        let outbound_cidrs_exclude = cidr_list(&exclude_raw)?;

        let uid_raw = get(Opt::ProxyUid);
        let proxy_uids = if split_list(&uid_raw.text).is_empty() {
            let user = inputs
                .env_var("ENVOY_USER")
                .map(|r| r.text)
                .unwrap_or_else(|| "istio-proxy".into());
            vec![host.uid_of(&user).unwrap_or(1337)]
        } else {
            id_list(&uid_raw, "uid")?
        };
        let gid_raw = get(Opt::ProxyGid);
        let proxy_gids = if split_list(&gid_raw.text).is_empty() {
            proxy_uids.clone()
        } else {
            id_list(&gid_raw, "gid")?
        };

        let network_namespace = match opt(Opt::NetworkNamespace) {
            None => None,
            Some(raw) if raw.text.trim().is_empty() => None,
            Some(raw) => {
                let text = raw.text.trim();
                // A bare name is one of `ip netns`'s namespaces.
                Some(if text.contains('/') {
                    PathBuf::from(text)
                } else {
                    PathBuf::from("/var/run/netns").join(text)
                })
            }
        };

        let ipv6_raw = get(Opt::Ipv6);
        let ipv6 = match ipv6_raw.text.trim().to_ascii_lowercase().as_str() {
            "on" | "true" => true,
            "off" | "false" => false,
            "auto" => host
                .pod_is_ipv6_in(dual_stack, network_namespace.as_deref())
                .map_err(|reason| ConfigError::Host {
                    what: "the pod's addresses".into(),
                    reason,
                })?
                .unwrap_or(false),
            _ => return Err(invalid(&ipv6_raw, "expected on, off or auto")),
        };

        // Validated even when DNS capture is off: a bad value is never silently accepted.
        let dns_flag = opt(Opt::DnsServers)
            .map(|raw| dns_servers_list(&raw))
            .transpose()?;
        let dns = if !redirect_dns {
            None
        } else if capture_all_dns {
            Some(DnsCapture::All)
        } else {
            let (v4, v6) = match dns_flag {
                Some(servers) => servers,
                None => {
                    let servers =
                        host.resolv_conf_nameservers()
                            .map_err(|reason| ConfigError::Host {
                                what: "/etc/resolv.conf".into(),
                                reason,
                            })?;
                    let raw = Raw {
                        text: servers.join(","),
                        origin: Origin::Default("/etc/resolv.conf".into()),
                    };
                    dns_servers_list(&raw)?
                }
            };
            // Istio: DNS capture with no server to capture is silently off.
            (!v4.is_empty() || !v6.is_empty()).then_some(DnsCapture::Servers { v4, v6 })
        };

        let capture = CaptureConfig {
            proxy_port: port(&get(Opt::ProxyPort))?,
            inbound_capture_port: port(&get(Opt::InboundCapturePort))?,
            inbound_tunnel_port: port(&get(Opt::InboundTunnelPort))?,
            proxy_uids,
            proxy_gids,
            mode: mode(&get(Opt::InterceptionMode))?,
            inbound_ports,
            exclude_interfaces: interface_list(&get(Opt::ExcludeInterfaces))?,
            kube_virt_interfaces: interface_list(&get(Opt::KubeVirtInterfaces))?,
            outbound_cidrs,
            outbound_cidrs_exclude,
            outbound_ports: port_list(&get(Opt::OutboundPorts))?,
            outbound_ports_exclude: port_list(&get(Opt::OutboundPortsExclude))?,
            tproxy_mark: mark(&get(Opt::TproxyMark))?,
            tproxy_route_table: route_table(&get(Opt::TproxyRouteTable))?,
            dns,
            drop_invalid: boolean(&get(Opt::DropInvalid))?,
            owner_groups: owner_groups(
                inputs.env_var("ISTIO_OUTBOUND_OWNER_GROUPS"),
                inputs.env_var("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
            )?,
            ipv4_loopback_cidr: loopback_cidr(inputs.env_var("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"))?,
            ipv6,
            tproxy_return_marked: boolean(&get(Opt::TproxyReturnMarked))?,
            strict: boolean(&get(Opt::Strict))?,
        };

        let backend_raw = get(Opt::Backend);
        let native = get(Opt::NativeNftables);
        let backend = match backend_raw.text.trim().to_ascii_lowercase().as_str() {
            "iptables" => BackendKind::Iptables,
            "nftables" | "nft" => BackendKind::Nftables,
            _ => return Err(invalid(&backend_raw, "expected iptables or nftables")),
        };
        let backend = match (boolean(&native)?, backend, &backend_raw.origin) {
            (false, b, _) => b,
            (true, BackendKind::Iptables, origin) if !matches!(origin, Origin::Default(_)) => {
                return Err(ConfigError::Conflict {
                    first: native.origin,
                    second: backend_raw.origin,
                    reason: "--native-nftables selects the nftables backend".into(),
                });
            }
            (true, _, _) => BackendKind::Nftables,
        };

        let iptables_variant = match opt(Opt::ForceIptablesBinary) {
            None => None,
            Some(raw) => match raw.text.trim().to_ascii_lowercase().as_str() {
                "" => None,
                "legacy" | "iptables-legacy" => Some(IptablesVariant::Legacy),
                "nft" | "iptables-nft" => Some(IptablesVariant::Nft),
                _ => return Err(invalid(&raw, "expected legacy or nft")),
            },
        };

        let run = RunConfig {
            backend,
            dry_run: boolean(&get(Opt::DryRun))?,
            skip_rule_apply: boolean(&get(Opt::SkipRuleApply))?,
            run_validation: boolean(&get(Opt::RunValidation))?,
            probe_port: port(&get(Opt::ProbePort))?,
            probe_timeout: duration(&get(Opt::ProbeTimeout))?,
            network_namespace,
            reconcile: boolean(&get(Opt::Reconcile))?,
            cleanup_only: boolean(&get(Opt::CleanupOnly))?,
            force_apply: boolean(&get(Opt::ForceApply))?,
            iptables_variant,
            dual_stack,
        };
        Ok(Config { capture, run })
    }
}

#[cfg(test)]
mod tests;
