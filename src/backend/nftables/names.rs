//! Istio's nftables names, hooks and priorities: the tables and chains meshcap creates, so that
//! Istio's own nftables backend and meshcap can each replace the other's rules.

use crate::plan::{Chain, Table};

/// meshcap's tables in the order they are created, listed and replaced (Istio's order).
pub const TABLES: [Table; 3] = [Table::Nat, Table::Mangle, Table::Raw];

/// The nftables table of a plan table.
pub fn table_name(table: Table) -> &'static str {
    match table {
        Table::Nat => "istio-proxy-nat",
        Table::Mangle => "istio-proxy-mangle",
        Table::Raw => "istio-proxy-raw",
    }
}

/// Whether `name` is one of meshcap's (and Istio's) tables.
pub fn is_our_table(name: &str) -> bool {
    TABLES.iter().any(|t| table_name(*t) == name)
}

/// Istio's nftables chain names.
pub fn chain_name(chain: Chain) -> &'static str {
    match chain {
        Chain::Prerouting => "prerouting",
        Chain::Output => "output",
        Chain::Inbound => "istio-inbound",
        Chain::Redirect => "istio-redirect",
        Chain::InRedirect => "istio-in-redirect",
        Chain::IstioOutput => "istio-output",
        Chain::OutputDns => "istio-output-dns",
        Chain::Divert => "istio-divert",
        Chain::Tproxy => "istio-tproxy",
        Chain::Drop => "istio-drop",
    }
}

/// Base chain type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Route,
    Nat,
}

impl ChainType {
    pub fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Route => "route",
            ChainType::Nat => "nat",
        }
    }
}

/// A netfilter hook a base chain sits on: the plan's two, and postrouting (ambient's node rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Output,
    Postrouting,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// Hook, type and priority of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// Istio's hooks and priorities (the iptables tables' own priorities).
pub fn base_chain(table: Table, chain: Chain) -> Option<BaseChain> {
    let hook = match chain {
        Chain::Prerouting => Hook::Prerouting,
        Chain::Output => Hook::Output,
        _ => return None,
    };
    let (kind, priority) = match (table, hook) {
        (Table::Nat, _) => (ChainType::Nat, -100),
        // `route` re-routes locally generated packets whose mark changed (iptables' mangle OUTPUT).
        (Table::Mangle, Hook::Output) => (ChainType::Route, -150),
        (Table::Mangle, _) => (ChainType::Filter, -150),
        (Table::Raw, _) => (ChainType::Filter, -300),
    };
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}
