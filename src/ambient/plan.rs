//! Ambient mode's rules as a plan: which rules exist, in which table and chain, for which
//! address family, in the order Istio's agent emits them. Pure: built from [`PodConfig`] or
//! [`HostConfig`] alone.
//!
//! Each [`Rule`] is one of Istio's rules, named for what it does, with its parameters. The two
//! backends spell the same rule with different matches in different orders (Istio wrote each
//! spelling by hand: `-m udp --dport 53` after the mark here, `udp dport 53` before it there),
//! so the plan keeps the rule's meaning and each backend owns its spelling, token for token.

use super::config::{HostConfig, PodConfig, ProbeSource};
use super::*;
use crate::plan::Family;
pub use crate::plan::Table;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A hook chain or one of Istio's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chain {
    Prerouting,
    Output,
    Postrouting,
    /// ISTIO_PRERT / istio-prerouting.
    IstioPrerouting,
    /// ISTIO_OUTPUT / istio-output.
    IstioOutput,
    /// ISTIO_POSTRT (host; nftables puts its rule in the hook chain itself).
    IstioPostrouting,
}

impl Chain {
    /// The netfilter hooks: they exist without being created.
    pub fn is_hook(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output | Chain::Postrouting)
    }
}

/// Where an operation puts its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Append,
    /// Before every other rule of the chain (`-I CHAIN 1`).
    First,
}

/// A mark value under a mask (`0x539/0xfff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Masked {
    pub value: u32,
    pub mask: u32,
}

/// ztunnel's packet mark.
pub const ZTUNNEL: Masked = Masked {
    value: ZTUNNEL_MARK,
    mask: MARK_MASK,
};
/// The connection mark of ztunnel's connections.
pub const CONNECTION: Masked = Masked {
    value: CONN_MARK,
    mask: MARK_MASK,
};

/// One of Istio's ambient rules. "Not ztunnel's" means: the packet mark under the mask is not
/// [`ZTUNNEL`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// From a hook chain into Istio's chain.
    Jump(Chain),
    /// TCP arriving on a virtual interface: to ztunnel's outbound port, as if the pod sent it.
    RerouteVirtualInterface { interface: String, to_port: u16 },
    /// ...and nothing else of this chain applies to it.
    ReturnVirtualInterface { interface: String },
    /// TCP from the probe SNAT address (the kubelet's probes): accepted, not captured.
    AcceptProbe { from: IpAddr },
    /// TCP to the probe SNAT address (the replies to the probes): accepted.
    AcceptProbeReply { to: IpAddr },
    /// Inbound TCP, not to loopback, not to the HBONE port, not ztunnel's: to the inbound
    /// plaintext port.
    RedirectInbound {
        loopback: IpNetwork,
        hbone_port: u16,
        to_port: u16,
    },
    /// UDP DNS (port 53) not leaving by lo, not ztunnel's: to ztunnel's DNS proxy.
    RedirectDnsUdp { to_port: u16 },
    /// TCP DNS not to loopback, not ztunnel's: to ztunnel's DNS proxy.
    RedirectDnsTcp { loopback: IpNetwork, to_port: u16 },
    /// Outgoing TCP whose packet mark (restored from the connection) is [`CONNECTION`]:
    /// ztunnel's connections, accepted.
    AcceptConnectionMarked,
    /// To a non-loopback address of the pod's own, by lo (app to app by the pod address): accepted.
    AcceptLoopback { loopback: IpNetwork },
    /// Outgoing TCP, not to loopback, not ztunnel's: to ztunnel's outbound port.
    RedirectOutbound { loopback: IpNetwork, to_port: u16 },
    /// mangle: a packet of ztunnel's gives its connection the [`CONNECTION`] mark.
    SaveZtunnelMark,
    /// mangle: a connection marked [`CONNECTION`] gives its mark back to its outgoing packets.
    RestoreConnectionMark,
    /// raw: ztunnel's own DNS queries (UDP to 53) go to their own conntrack zone...
    ZoneDnsQuery { zone: u16 },
    /// raw: ...and so do the replies (UDP from 53, not ztunnel's mark).
    ZoneDnsReply { zone: u16 },
    /// Host nat: a node-local probe (TCP) to an enrolled pod's address in `set` gets source `to`.
    SnatProbe {
        source: ProbeSource,
        set: String,
        to: IpAddr,
    },
}

/// One rule put in one chain of one table, for one family or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub table: Table,
    pub chain: Chain,
    pub position: Position,
    /// `None`: both families (IPv6's only when IPv6 is on).
    pub family: Option<Family>,
    pub rule: Rule,
}

/// A policy routing step of the in-pod rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingStep {
    /// `ip -f FAMILY rule add fwmark MARK/MASK pref PRIORITY lookup TABLE`.
    FwmarkRule {
        family: Family,
        mark: Masked,
        priority: u32,
        table: u32,
    },
    /// `ip -f FAMILY route add local default dev lo table TABLE`.
    LocalDefaultRoute { family: Family, table: u32 },
}

/// A set of enrolled pods' addresses, kept by the agent (ipset `hash:ip`, or an nft set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSet {
    pub family: Family,
    pub name: String,
}

/// Everything installed for one pod, or for the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmbientPlan {
    pub ipv6: bool,
    pub ops: Vec<Op>,
    pub routing: Vec<RoutingStep>,
    pub probe_sets: Vec<ProbeSet>,
}

impl AmbientPlan {
    /// The families in force: IPv4, then IPv6 when on.
    pub fn families(&self) -> Vec<Family> {
        families(self.ipv6)
    }

    /// The operations that apply to `family`, in order.
    pub fn ops_for(&self, family: Family) -> impl Iterator<Item = &Op> {
        self.ops
            .iter()
            .filter(move |op| op.family.is_none_or(|f| f == family))
    }
}

fn families(ipv6: bool) -> Vec<Family> {
    if ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// The name of the probe set of `family`.
pub fn probe_set_name(family: Family) -> String {
    match family {
        Family::V4 => format!("{PROBE_SET_PREFIX}-v4"),
        Family::V6 => format!("{PROBE_SET_PREFIX}-v6"),
    }
}

fn loopback(family: Family) -> IpNetwork {
    match family {
        Family::V4 => IpNetwork::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 32),
        Family::V6 => IpNetwork::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    }
    .expect("host prefix")
}

/// Collects operations in emission order.
struct Ops {
    ipv6: bool,
    ops: Vec<Op>,
}

impl Ops {
    fn both(&mut self, table: Table, chain: Chain, rule: Rule) {
        self.push(table, chain, Position::Append, None, rule);
    }

    /// One rule per family, IPv4's first, built from the family (Istio's versioned rules).
    fn each_family(&mut self, table: Table, chain: Chain, rule: impl Fn(Family) -> Rule) {
        self.push(
            table,
            chain,
            Position::Append,
            Some(Family::V4),
            rule(Family::V4),
        );
        if self.ipv6 {
            self.push(
                table,
                chain,
                Position::Append,
                Some(Family::V6),
                rule(Family::V6),
            );
        }
    }

    fn push(
        &mut self,
        table: Table,
        chain: Chain,
        position: Position,
        family: Option<Family>,
        rule: Rule,
    ) {
        self.ops.push(Op {
            table,
            chain,
            position,
            family,
            rule,
        });
    }
}

/// The in-pod rules and routing of a pod.
pub fn pod(config: &PodConfig) -> AmbientPlan {
    use Chain::*;
    use Table::*;
    let probe_snat = |family| match family {
        Family::V4 => IpAddr::V4(config.probe_snat_v4),
        Family::V6 => IpAddr::V6(config.probe_snat_v6),
    };
    let mut ops = Ops {
        ipv6: config.ipv6,
        ops: Vec::new(),
    };
    // Jumps into Istio's chains first, so that cleanup finds everything under two names.
    ops.both(Mangle, Prerouting, Rule::Jump(IstioPrerouting));
    ops.both(Mangle, Output, Rule::Jump(IstioOutput));
    ops.both(Nat, Output, Rule::Jump(IstioOutput));
    if config.dns_capture {
        ops.both(Raw, Prerouting, Rule::Jump(IstioPrerouting));
        ops.both(Raw, Output, Rule::Jump(IstioOutput));
    }
    ops.both(Nat, Prerouting, Rule::Jump(IstioPrerouting));

    // Virtual interfaces short-circuit inbound handling: their TCP is the pod's outbound.
    for interface in &config.virtual_interfaces {
        let to_port = OUTBOUND_PORT;
        let interface = interface.clone();
        ops.both(
            Nat,
            IstioPrerouting,
            Rule::RerouteVirtualInterface {
                interface: interface.clone(),
                to_port,
            },
        );
        ops.both(
            Nat,
            IstioPrerouting,
            Rule::ReturnVirtualInterface { interface },
        );
    }
    ops.both(Mangle, IstioPrerouting, Rule::SaveZtunnelMark);
    if config.inbound_capture {
        ops.each_family(Nat, IstioPrerouting, |f| Rule::AcceptProbe {
            from: probe_snat(f),
        });
    }
    ops.each_family(Nat, IstioOutput, |f| Rule::AcceptProbeReply {
        to: probe_snat(f),
    });
    if config.inbound_capture {
        ops.each_family(Nat, IstioPrerouting, |f| Rule::RedirectInbound {
            loopback: loopback(f),
            hbone_port: INBOUND_HBONE_PORT,
            to_port: INBOUND_PLAINTEXT_PORT,
        });
    }
    ops.both(Mangle, IstioOutput, Rule::RestoreConnectionMark);
    if config.dns_capture {
        ops.both(Nat, IstioOutput, Rule::RedirectDnsUdp { to_port: DNS_PORT });
        ops.each_family(Nat, IstioOutput, |f| Rule::RedirectDnsTcp {
            loopback: loopback(f),
            to_port: DNS_PORT,
        });
        ops.both(Raw, IstioOutput, Rule::ZoneDnsQuery { zone: DNS_CT_ZONE });
        ops.both(
            Raw,
            IstioPrerouting,
            Rule::ZoneDnsReply { zone: DNS_CT_ZONE },
        );
    }
    ops.both(Nat, IstioOutput, Rule::AcceptConnectionMarked);
    ops.each_family(Nat, IstioOutput, |f| Rule::AcceptLoopback {
        loopback: loopback(f),
    });
    ops.each_family(Nat, IstioOutput, |f| Rule::RedirectOutbound {
        loopback: loopback(f),
        to_port: OUTBOUND_PORT,
    });

    AmbientPlan {
        ipv6: config.ipv6,
        ops: ops.ops,
        routing: routing(config.ipv6),
        probe_sets: Vec::new(),
    }
}

/// The in-pod policy routing: the `local` default routes first, so that no marked packet ever
/// looks up an empty table, then the fwmark rules.
pub fn routing(ipv6: bool) -> Vec<RoutingStep> {
    let families = families(ipv6);
    let mut steps: Vec<RoutingStep> = families
        .iter()
        .map(|&family| RoutingStep::LocalDefaultRoute {
            family,
            table: ROUTE_TABLE,
        })
        .collect();
    steps.extend(families.iter().map(|&family| RoutingStep::FwmarkRule {
        family,
        mark: CONNECTION,
        priority: RULE_PRIORITY,
        table: ROUTE_TABLE,
    }));
    steps
}

/// The node's probe rule and the sets it reads.
pub fn host(config: &HostConfig) -> AmbientPlan {
    let mut ops = Ops {
        ipv6: config.ipv6,
        ops: Vec::new(),
    };
    // First in POSTROUTING: another SNAT rule (a CNI's masquerade) must not see the probe first.
    ops.push(
        Table::Nat,
        Chain::Postrouting,
        Position::First,
        None,
        Rule::Jump(Chain::IstioPostrouting),
    );
    ops.each_family(Table::Nat, Chain::IstioPostrouting, |family| {
        Rule::SnatProbe {
            source: config.probe_source,
            set: probe_set_name(family),
            to: match family {
                Family::V4 => IpAddr::V4(config.probe_snat_v4),
                Family::V6 => IpAddr::V6(config.probe_snat_v6),
            },
        }
    });
    let families = families(config.ipv6);
    AmbientPlan {
        ipv6: config.ipv6,
        ops: ops.ops,
        routing: Vec::new(),
        probe_sets: families
            .into_iter()
            .map(|family| ProbeSet {
                family,
                name: probe_set_name(family),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{NodeSettings, PodOverrides};
    use super::*;

    fn config(node: NodeSettings, pod: PodOverrides) -> PodConfig {
        PodConfig::new(&node, &pod)
    }

    #[test]
    fn dns_capture_adds_the_raw_table_and_two_nat_rules() {
        let off = pod(&config(NodeSettings::default(), PodOverrides::default()));
        let on = pod(&config(
            NodeSettings {
                dns_capture: true,
                ..NodeSettings::default()
            },
            PodOverrides::default(),
        ));
        assert!(!off.ops.iter().any(|op| op.table == Table::Raw));
        assert_eq!(on.ops.iter().filter(|op| op.table == Table::Raw).count(), 4);
        assert_eq!(on.ops.len() - off.ops.len(), 6);
    }

    #[test]
    fn bypass_inbound_capture_leaves_inbound_alone() {
        let ingress = pod(&config(
            NodeSettings::default(),
            PodOverrides {
                bypass_inbound_capture: true,
                ..PodOverrides::default()
            },
        ));
        assert!(!ingress.ops.iter().any(|op| matches!(
            op.rule,
            Rule::RedirectInbound { .. } | Rule::AcceptProbe { .. }
        )));
        // ztunnel's own connections still need their mark saved.
        assert!(
            ingress
                .ops
                .iter()
                .any(|op| op.rule == Rule::SaveZtunnelMark)
        );
    }

    #[test]
    fn ipv6_doubles_the_versioned_rules_and_the_routing() {
        let v6 = pod(&config(
            NodeSettings {
                ipv6: true,
                ..NodeSettings::default()
            },
            PodOverrides::default(),
        ));
        assert_eq!(v6.routing.len(), 4);
        assert_eq!(
            v6.ops_for(Family::V6).count(),
            v6.ops_for(Family::V4).count()
        );
        let h = host(&HostConfig::new(
            &NodeSettings {
                ipv6: true,
                ..NodeSettings::default()
            },
            ProbeSource::Uid(1000),
        ));
        assert_eq!(h.probe_sets.len(), 2);
        assert_eq!(h.ops.len(), 3);
    }
}
