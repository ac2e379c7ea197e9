//! The nftables spelling of ambient's plan: an `nft -f` script whose tables, chains, hooks,
//! priorities and rules are those of Istio's nftables mode (`inet istio-ambient-nat`, `-mangle`,
//! `-raw`), so that `nft list ruleset` shows the same as for Istio's own transaction.
//!
//! Differences in shape from the iptables spelling, all Istio's:
//! - one `inet` table per iptables table, IPv4 and IPv6 rules side by side in one chain;
//! - the host's probe rule sits in the `postrouting` hook chain itself (no ISTIO_POSTRT), and
//!   matches the kubelet's uid where iptables matches any local socket;
//! - the host script also declares the probe sets (Istio creates them elsewhere), so that it
//!   loads on its own; re-loading keeps their elements (`flush table` empties chains, not sets).
//!
//! [`install`] installs, compares and removes the same rules over netlink (meshcap's own
//! nf_tables codec, one atomic batch); [`sets`] keeps the probe sets' elements.

pub mod install;
pub mod sets;

use super::config::ProbeSource;
use super::plan::{AmbientPlan, CONNECTION, Chain, Masked, Op, Rule, Table, ZTUNNEL};
use crate::plan::Family;
use ipnetwork::IpNetwork;
use std::net::IpAddr;

/// The nftables tables of ambient mode, in the order Istio's transaction adds them.
pub const TABLES: [Table; 3] = [Table::Nat, Table::Mangle, Table::Raw];

pub fn table_name(table: Table) -> &'static str {
    match table {
        Table::Nat => "istio-ambient-nat",
        Table::Mangle => "istio-ambient-mangle",
        Table::Raw => "istio-ambient-raw",
    }
}

pub fn chain_name(chain: Chain) -> &'static str {
    match chain {
        Chain::Prerouting => "prerouting",
        Chain::Output => "output",
        // Istio's nftables host rule has no chain of its own.
        Chain::Postrouting | Chain::IstioPostrouting => "postrouting",
        Chain::IstioPrerouting => "istio-prerouting",
        Chain::IstioOutput => "istio-output",
    }
}

/// A hook chain's type, hook and priority in `table` (iptables' priorities: nat -100 / srcnat
/// 100, mangle -150, raw -300; mangle's output is a `route` chain so that a changed mark is
/// routed again).
pub fn base_chain(table: Table, chain: Chain) -> Option<(&'static str, &'static str, i32)> {
    let hook = match chain {
        Chain::Prerouting => "prerouting",
        Chain::Output => "output",
        Chain::Postrouting | Chain::IstioPostrouting => "postrouting",
        Chain::IstioPrerouting | Chain::IstioOutput => return None,
    };
    Some(match (table, hook) {
        (Table::Nat, "postrouting") => ("nat", hook, 100),
        (Table::Nat, _) => ("nat", hook, -100),
        (Table::Mangle, "output") => ("route", hook, -150),
        (Table::Mangle, _) => ("filter", hook, -150),
        (Table::Raw, _) => ("filter", hook, -300),
    })
}

/// The chains of `table` to declare: hook chains first, then Istio's, each once.
fn chains(ops: &[&Op], table: Table) -> Vec<Chain> {
    let mut used: Vec<Chain> = Vec::new();
    for op in ops.iter().filter(|op| op.table == table) {
        used.push(op.chain);
        if let Rule::Jump(target) = op.rule {
            used.push(target);
        }
    }
    let order = [
        Chain::Prerouting,
        Chain::Output,
        Chain::Postrouting,
        Chain::IstioPrerouting,
        Chain::IstioOutput,
    ];
    order
        .into_iter()
        .filter(|c| used.iter().any(|u| chain_name(*u) == chain_name(*c)))
        .collect()
}

/// The whole `nft -f` script of the plan.
pub fn script(plan: &AmbientPlan) -> String {
    let ops: Vec<&Op> = plan.ops.iter().collect();
    let mut out = String::new();
    for table in TABLES {
        if !ops.iter().any(|op| op.table == table) {
            continue;
        }
        let t = table_name(table);
        out.push_str(&format!("add table inet {t}\nflush table inet {t}\n"));
        if table == Table::Nat {
            for set in &plan.probe_sets {
                let kind = match set.family {
                    Family::V4 => "ipv4_addr",
                    Family::V6 => "ipv6_addr",
                };
                out.push_str(&format!(
                    "add set inet {t} {} {{ type {kind} ; }}\n",
                    set.name
                ));
            }
        }
        for chain in chains(&ops, table) {
            let name = chain_name(chain);
            match base_chain(table, chain) {
                Some((kind, hook, priority)) => out.push_str(&format!(
                    "add chain inet {t} {name} {{ type {kind} hook {hook} priority {priority} ; }}\n"
                )),
                None => out.push_str(&format!("add chain inet {t} {name}\n")),
            }
        }
        for op in ops.iter().filter(|op| op.table == table) {
            if let Some(rule) = rule(op) {
                out.push_str(&format!(
                    "add rule inet {t} {} {rule}\n",
                    chain_name(op.chain)
                ));
            }
        }
    }
    out
}

fn ip(addr: &IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

fn net_ip(net: &IpNetwork) -> &'static str {
    ip(&net.ip())
}

/// `meta mark & MASK OP VALUE`.
fn mark(m: Masked, op: &str) -> String {
    format!("meta mark & {:#x} {op} {:#x}", m.mask, m.value)
}

/// The rule as nft writes it after `add rule inet TABLE CHAIN`; `None` for a jump that nftables
/// has no use for (into the chain it is in).
pub fn rule(op: &Op) -> Option<String> {
    let not_ztunnel = mark(ZTUNNEL, "!=");
    Some(match &op.rule {
        Rule::Jump(target) => {
            if chain_name(*target) == chain_name(op.chain) {
                return None;
            }
            format!("jump {}", chain_name(*target))
        }
        Rule::RerouteVirtualInterface { interface, to_port } => {
            format!("iifname \"{interface}\" meta l4proto tcp counter redirect to :{to_port}")
        }
        Rule::ReturnVirtualInterface { interface } => {
            format!("iifname \"{interface}\" meta l4proto tcp counter return")
        }
        Rule::AcceptProbe { from } => {
            format!("meta l4proto tcp {} saddr {from} counter accept", ip(from))
        }
        Rule::AcceptProbeReply { to } => {
            format!("meta l4proto tcp {} daddr {to} counter accept", ip(to))
        }
        Rule::RedirectInbound {
            loopback,
            hbone_port,
            to_port,
        } => format!(
            "{} daddr != {loopback} tcp dport != {hbone_port} {not_ztunnel} counter redirect to :{to_port}",
            net_ip(loopback)
        ),
        Rule::RedirectDnsUdp { to_port } => {
            format!("oifname != \"lo\" {not_ztunnel} udp dport 53 counter redirect to :{to_port}")
        }
        Rule::RedirectDnsTcp { loopback, to_port } => format!(
            "{} daddr != {loopback} tcp dport 53 {not_ztunnel} counter redirect to :{to_port}",
            net_ip(loopback)
        ),
        Rule::AcceptConnectionMarked => {
            format!("meta l4proto tcp {} counter accept", mark(CONNECTION, "=="))
        }
        Rule::AcceptLoopback { loopback } => format!(
            "oifname \"lo\" {} daddr != {loopback} counter accept",
            net_ip(loopback)
        ),
        Rule::RedirectOutbound { loopback, to_port } => format!(
            "meta l4proto tcp {} daddr != {loopback} {not_ztunnel} counter redirect to :{to_port}",
            net_ip(loopback)
        ),
        Rule::SaveZtunnelMark => format!(
            "{} counter ct mark set ct mark & {:#x} | {:#x}",
            mark(ZTUNNEL, "=="),
            !CONNECTION.mask,
            CONNECTION.value
        ),
        Rule::RestoreConnectionMark => format!(
            "ct mark & {:#x} == {:#x} counter meta mark set ct mark",
            CONNECTION.mask, CONNECTION.value
        ),
        Rule::ZoneDnsQuery { zone } => format!(
            "udp dport 53 {} counter ct zone set {zone}",
            mark(ZTUNNEL, "==")
        ),
        Rule::ZoneDnsReply { zone } => {
            format!("udp sport 53 {not_ztunnel} counter ct zone set {zone}")
        }
        Rule::SnatProbe { source, set, to } => {
            let owner = match source {
                ProbeSource::Uid(uid) => format!("meta skuid {uid}"),
                // skuid exists only for a packet of a local (full) socket: iptables'
                // `-m owner --socket-exists`.
                ProbeSource::AnyLocalSocket => "meta skuid >= 0".to_owned(),
            };
            let family = ip(to);
            format!("meta l4proto tcp {owner} {family} daddr @{set} counter snat {family} to {to}")
        }
    })
}
