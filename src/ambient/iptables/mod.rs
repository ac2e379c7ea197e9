//! The iptables spelling of ambient's plan: Istio's restore text, line for line, and its
//! install (iptables-restore in the current namespace, see [`install`]).

use super::config::ProbeSource;
use super::plan::{AmbientPlan, CONNECTION, Chain, Masked, Op, Position, Rule, Table, ZTUNNEL};
use crate::plan::Family;
use std::net::IpAddr;

pub mod install;

pub use crate::backend::iptables::spell::table_name;

pub fn chain_name(chain: Chain) -> &'static str {
    match chain {
        Chain::Prerouting => "PREROUTING",
        Chain::Output => "OUTPUT",
        Chain::Postrouting => "POSTROUTING",
        Chain::IstioPrerouting => "ISTIO_PRERT",
        Chain::IstioOutput => "ISTIO_OUTPUT",
        Chain::IstioPostrouting => "ISTIO_POSTRT",
    }
}

/// The tables `ops` touches, in restore-file order (Istio writes them sorted by name).
fn tables(ops: &[&Op]) -> Vec<Table> {
    let mut tables: Vec<Table> = ops.iter().map(|op| op.table).collect();
    tables.sort();
    tables.dedup();
    tables
}

/// Istio's chains of `table` to create, in Istio's order: those holding rules by their first
/// rule, then jump targets that hold none.
pub fn created_chains(ops: &[&Op], table: Table) -> Vec<Chain> {
    let in_table = || ops.iter().filter(move |op| op.table == table);
    let mut chains: Vec<Chain> = Vec::new();
    let targets = in_table().filter_map(|op| match op.rule {
        Rule::Jump(target) => Some(target),
        _ => None,
    });
    for chain in in_table().map(|op| op.chain).chain(targets) {
        if !chain.is_hook() && !chains.contains(&chain) {
            chains.push(chain);
        }
    }
    chains
}

/// The `iptables-restore --noflush` input of `family`: `* table`, `-N`, `-A`/`-I`, `COMMIT`.
pub fn restore_text(plan: &AmbientPlan, family: Family) -> String {
    let ops: Vec<&Op> = plan.ops_for(family).collect();
    let mut text = String::new();
    for table in tables(&ops) {
        text.push_str(&format!("* {}\n", table_name(table)));
        for chain in created_chains(&ops, table) {
            text.push_str(&format!("-N {}\n", chain_name(chain)));
        }
        for op in ops.iter().filter(|op| op.table == table) {
            text.push_str(&command(op));
            text.push('\n');
        }
        text.push_str("COMMIT\n");
    }
    text
}

/// What `meshcap ambient pod|host --dry-run` prints: IPv4's restore text, then IPv6's.
pub fn dry_run(plan: &AmbientPlan) -> String {
    plan.families()
        .into_iter()
        .map(|family| restore_text(plan, family))
        .collect()
}

/// The operation as a restore line (`-A CHAIN …` or `-I CHAIN 1 …`).
pub fn command(op: &Op) -> String {
    let chain = chain_name(op.chain);
    let at = match op.position {
        Position::Append => format!("-A {chain}"),
        Position::First => format!("-I {chain} 1"),
    };
    format!("{at} {}", spec(&op.rule))
}

fn mark(m: Masked) -> String {
    format!("{:#x}/{:#x}", m.value, m.mask)
}

/// How a rule is written: as Istio's agent writes it (the restore input), or as
/// `iptables-save` prints it back (what read-back compares with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Istio,
    Saved,
}

/// The rule's matches and target, spelled as Istio's agent writes them.
pub fn spec(rule: &Rule) -> String {
    spell(rule, Form::Istio)
}

/// An address as a host network, as iptables-save prints `-s`/`-d` (`/32`, `/128`); Istio writes
/// the bare address.
fn host(addr: &IpAddr, form: Form) -> String {
    match (form, addr) {
        (Form::Istio, _) => addr.to_string(),
        (Form::Saved, IpAddr::V4(_)) => format!("{addr}/32"),
        (Form::Saved, IpAddr::V6(_)) => format!("{addr}/128"),
    }
}

/// The rule in `form`. iptables-save differs from Istio's text in three ways: host addresses
/// get their prefix length, a port match names its module (`-m tcp`), and `--to-port` is
/// `--to-ports`; and it prints `-p` before the matches.
pub fn spell(rule: &Rule, form: Form) -> String {
    let ztunnel = mark(ZTUNNEL);
    let connection = mark(CONNECTION);
    let saved = form == Form::Saved;
    let tcp_port = if saved { "-p tcp -m tcp" } else { "-p tcp" };
    match rule {
        Rule::Jump(target) => format!("-j {}", chain_name(*target)),
        Rule::RerouteVirtualInterface { interface, to_port } => {
            format!("-i {interface} -p tcp -j REDIRECT --to-ports {to_port}")
        }
        Rule::ReturnVirtualInterface { interface } => format!("-i {interface} -p tcp -j RETURN"),
        Rule::AcceptProbe { from } => format!("-s {} -p tcp -m tcp -j ACCEPT", host(from, form)),
        Rule::AcceptProbeReply { to } => format!("-d {} -p tcp -m tcp -j ACCEPT", host(to, form)),
        Rule::RedirectInbound {
            loopback,
            hbone_port,
            to_port,
        } => format!(
            "! -d {loopback} {tcp_port} ! --dport {hbone_port} -m mark ! --mark {ztunnel} -j REDIRECT --to-ports {to_port}"
        ),
        Rule::RedirectDnsUdp { to_port } => {
            // `--to-port` (singular) in Istio's text only; iptables reads it as `--to-ports`.
            let to = if saved { "--to-ports" } else { "--to-port" };
            format!(
                "! -o lo -p udp -m mark ! --mark {ztunnel} -m udp --dport 53 -j REDIRECT {to} {to_port}"
            )
        }
        Rule::RedirectDnsTcp { loopback, to_port } => format!(
            "! -d {loopback} {tcp_port} --dport 53 -m mark ! --mark {ztunnel} -j REDIRECT --to-ports {to_port}"
        ),
        Rule::AcceptConnectionMarked => format!("-p tcp -m mark --mark {connection} -j ACCEPT"),
        Rule::AcceptLoopback { loopback } => format!("! -d {loopback} -o lo -j ACCEPT"),
        Rule::RedirectOutbound { loopback, to_port } => format!(
            "! -d {loopback} -p tcp -m mark ! --mark {ztunnel} -j REDIRECT --to-ports {to_port}"
        ),
        Rule::SaveZtunnelMark => {
            format!("-m mark --mark {ztunnel} -j CONNMARK --set-xmark {connection}")
        }
        Rule::RestoreConnectionMark => format!(
            "-m connmark --mark {connection} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        ),
        Rule::ZoneDnsQuery { zone } => {
            format!("-p udp -m mark --mark {ztunnel} -m udp --dport 53 -j CT --zone {zone}")
        }
        Rule::ZoneDnsReply { zone } => {
            format!("-p udp -m mark ! --mark {ztunnel} -m udp --sport 53 -j CT --zone {zone}")
        }
        Rule::SnatProbe { source, set, to } => {
            let owner = match source {
                ProbeSource::AnyLocalSocket => "-m owner --socket-exists".to_owned(),
                ProbeSource::Uid(uid) => format!("-m owner --uid-owner {uid}"),
            };
            let set = format!("-m set --match-set {set} dst -j SNAT --to-source {to}");
            if saved {
                format!("-p tcp {owner} {set}")
            } else {
                format!("{owner} -p tcp {set}")
            }
        }
    }
}
