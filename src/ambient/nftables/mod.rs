//! The nftables spelling of ambient's plan: tables, chains, hooks, priorities and rules of
//! Istio's nftables mode (`inet istio-ambient-nat`, `-mangle`, `-raw`), so that `nft list
//! ruleset` shows the same as for Istio's own transaction.
//!
//! Differences in shape from the iptables spelling, all Istio's:
//! - one `inet` table per iptables table, IPv4 and IPv6 rules side by side in one chain;
//! - the host's probe rule sits in the `postrouting` hook chain itself (no ISTIO_POSTRT), and
//!   matches the kubelet's uid where iptables matches any local socket;
//! - the host script also declares the probe sets (Istio creates them elsewhere), so that it
//!   loads on its own; re-loading keeps their elements (`flush table` empties chains, not sets).
//!
//! [`install::spec`] is the one description of those rules: [`install`] sends it over netlink
//! (meshcap's own nf_tables codec, one atomic batch), compares and removes it, and [`script`]
//! prints it as the `nft -f` script of `--dry-run` (the nftables backend's own script syntax).
//! [`sets`] keeps the probe sets' elements.

pub mod install;
pub mod sets;

use super::plan::{AmbientPlan, Chain, Op, Rule, Table};
use crate::backend::nftables::names::{self, BaseChain, ChainType, Hook};

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

/// A hook chain's type, hook and priority in `table`: the sidecar backend's for prerouting and
/// output (iptables' priorities), and nat's srcnat (100) for the node's postrouting.
pub fn base_chain(table: Table, chain: Chain) -> Option<BaseChain> {
    use crate::plan::Chain as Sidecar;
    match chain {
        Chain::Prerouting => names::base_chain(table, Sidecar::Prerouting),
        Chain::Output => names::base_chain(table, Sidecar::Output),
        Chain::Postrouting | Chain::IstioPostrouting => Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: 100,
        }),
        Chain::IstioPrerouting | Chain::IstioOutput => None,
    }
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

/// The `--dry-run` script: the description [`install`] sends, in `nft -f` syntax. The host's
/// declares the probe sets too, so that it loads on its own; re-loading keeps their elements
/// (`flush table` empties chains, not sets).
pub fn script(plan: &AmbientPlan) -> String {
    install::spec(plan).to_string()
}
