//! The rule model: tables, chains and rules parsed from a backend's read-back text.

use super::super::Family;
use super::{iptables, nftables};
use std::collections::BTreeMap;
use std::fmt;

pub use crate::plan::Hook;

/// What a matching rule does to the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Next rule (a mark, a zone, a counter, or no target).
    Continue,
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Continue => Ok(()),
            Action::Accept => f.write_str("accept"),
            Action::Drop => f.write_str("drop"),
            Action::Return => f.write_str("return"),
            Action::Jump(c) => write!(f, "jump {c}"),
            Action::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// A rule as read back: its text and what it means.
#[derive(Clone, Debug)]
pub struct Rule {
    pub text: String,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub enum Body {
    Iptables(iptables::Rule),
    Nftables(nftables::Rule),
}

/// A chain attached to a hook.
#[derive(Clone, Debug)]
pub struct Base {
    pub chain: String,
    pub hook: Hook,
    pub priority: i32,
    /// A nat chain: consulted for a connection's first packet, until one redirects.
    pub nat: bool,
}

/// One table: an iptables table of one family, or an nftables `inet` table (both families).
#[derive(Clone, Debug)]
pub struct Table {
    /// As the read-back names it: `ipv4 nat`, `inet istio-proxy-nat`.
    pub name: String,
    /// `None`: both families (`inet`).
    pub family: Option<Family>,
    pub chains: BTreeMap<String, Vec<Rule>>,
    pub bases: Vec<Base>,
}

/// Every table explain walks.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    tables: Vec<Table>,
}

/// Read-back text explain cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("read-back chain {0:?}: expected `FAMILY TABLE CHAIN`")]
    Key(String),
    #[error("{key}: cannot parse {text:?}: {reason}")]
    Rule {
        key: String,
        text: String,
        reason: String,
    },
    #[error("{0}")]
    Unusable(String),
}

/// iptables' table priorities at both hooks.
fn iptables_priority(table: &str) -> Option<i32> {
    match table {
        "raw" => Some(-300),
        "mangle" => Some(-150),
        "nat" => Some(-100),
        "filter" => Some(0),
        _ => None,
    }
}

fn iptables_hook(chain: &str) -> Option<Hook> {
    match chain {
        "PREROUTING" => Some(Hook::Prerouting),
        "OUTPUT" => Some(Hook::Output),
        _ => None,
    }
}

impl Rules {
    /// Parses a read-back (`Ruleset::chains`): keys `ipv4|ipv6 TABLE CHAIN` with
    /// `iptables-save` rules, or `inet TABLE CHAIN` with the nftables backend's canonical
    /// expressions (a base chain's first line is its `chain type … hook … priority …`).
    pub fn parse(chains: &BTreeMap<String, Vec<String>>) -> Result<Rules, RulesError> {
        let mut tables: Vec<Table> = Vec::new();
        for (key, lines) in chains {
            let mut words = key.splitn(3, ' ');
            let (Some(fam), Some(table), Some(chain)) = (words.next(), words.next(), words.next())
            else {
                return Err(RulesError::Unusable(format!("{key}: {}", lines.join("; "))));
            };
            let family = match fam {
                "ipv4" => Some(Family::V4),
                "ipv6" => Some(Family::V6),
                "inet" => None,
                _ => return Err(RulesError::Key(key.clone())),
            };
            let name = format!("{fam} {table}");
            let at = match tables.iter().position(|t| t.name == name) {
                Some(at) => at,
                None => {
                    tables.push(Table {
                        name: name.clone(),
                        family,
                        chains: BTreeMap::new(),
                        bases: Vec::new(),
                    });
                    tables.len() - 1
                }
            };
            let t = &mut tables[at];
            let mut rules = Vec::new();
            let bad = |text: &str, reason: String| RulesError::Rule {
                key: key.clone(),
                text: text.to_owned(),
                reason,
            };
            for line in lines {
                let body = if family.is_some() {
                    Body::Iptables(iptables::Rule::parse(line).map_err(|e| bad(line, e))?)
                } else if line.starts_with("chain type ") {
                    t.bases
                        .extend(nftables::base(chain, line).map_err(|e| bad(line, e))?);
                    continue;
                } else {
                    Body::Nftables(nftables::Rule::parse(line).map_err(|e| bad(line, e))?)
                };
                rules.push(Rule {
                    text: line.clone(),
                    body,
                });
            }
            if family.is_some()
                && let (Some(hook), Some(priority)) =
                    (iptables_hook(chain), iptables_priority(table))
            {
                t.bases.push(Base {
                    chain: chain.to_owned(),
                    hook,
                    priority,
                    nat: table == "nat",
                });
            }
            t.chains.insert(chain.to_owned(), rules);
        }
        Ok(Rules { tables })
    }

    /// Adds another source's tables (e.g. iptables and nftables rules in one namespace).
    pub fn extend(&mut self, other: Rules) {
        self.tables.extend(other.tables);
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The base chains of `hook` that see packets of `family`, by priority (stable: ties keep
    /// the read-back's order).
    pub(crate) fn bases(&self, family: Family, hook: Hook) -> Vec<(&Table, &Base)> {
        let mut bases: Vec<(&Table, &Base)> = self
            .tables
            .iter()
            .filter(|t| t.family.is_none_or(|f| f == family))
            .flat_map(|t| t.bases.iter().map(move |b| (t, b)))
            .filter(|(_, b)| b.hook == hook)
            .collect();
        bases.sort_by_key(|(_, b)| b.priority);
        bases
    }
}
