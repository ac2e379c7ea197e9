//! Istio's names of ambient's nftables tables and chains, and the hook chains' types, hooks
//! and priorities.

use crate::ambient::plan::{Chain, Op, Rule, Table};
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
pub fn chains(ops: &[&Op], table: Table) -> Vec<Chain> {
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
