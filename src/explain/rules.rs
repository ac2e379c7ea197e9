//! The rule model explain walks: tables, chains and typed rules, as the backends hand them
//! over: the iptables backend's saved rules ([`SavedRules`]) and the nftables backend's
//! [`Contents`] (codec rules and set elements), read back from the kernel or built from a plan
//! (its expected rules, in the same forms), so explain of a plan and of the kernel run the
//! same code. Each rule keeps the text a person reads: iptables-save's line, or `nft` syntax.

use super::iptables;
use super::nftables::{self, NftRule};
use super::packet::{Hook, Packet, RuleResult};
use crate::backend::TypedRules;
use crate::backend::iptables::saved::{SavedRule, SavedRules};
use crate::backend::nftables::Contents;
use crate::backend::nftables::codec::Expr;
use crate::backend::nftables::render::{chain_key, expr_text, stateless_rule_text};
use crate::plan::Family;
use std::collections::BTreeMap;

/// A rule as read back: its text and what it means.
#[derive(Clone, Debug)]
pub struct Rule {
    pub text: String,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub enum Body {
    Iptables(SavedRule),
    Nftables(NftRule),
}

impl Rule {
    pub(crate) fn eval(&self, p: &mut Packet) -> RuleResult {
        match &self.body {
            Body::Iptables(r) => iptables::eval(r, p),
            Body::Nftables(r) => nftables::eval(r, p),
        }
    }
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

/// Rules explain cannot use.
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
    fn table_mut(&mut self, name: &str, family: Option<Family>) -> &mut Table {
        let at = match self.tables.iter().position(|t| t.name == name) {
            Some(at) => at,
            None => {
                self.tables.push(Table {
                    name: name.to_owned(),
                    family,
                    chains: BTreeMap::new(),
                    bases: Vec::new(),
                });
                self.tables.len() - 1
            }
        };
        &mut self.tables[at]
    }

    /// A backend's typed rules.
    pub fn from_typed(typed: &TypedRules) -> Result<Rules, RulesError> {
        match typed {
            TypedRules::Iptables(saved) => Rules::from_iptables(saved),
            TypedRules::Nftables(contents) => Rules::from_nftables(contents),
            TypedRules::Unusable(why) => Err(RulesError::Unusable(why.clone())),
        }
    }

    /// The iptables backend's rules, per chain key `ipv4|ipv6 TABLE CHAIN`; a rule with an
    /// option this model does not hold is refused, named by its chain and text.
    pub fn from_iptables(saved: &SavedRules) -> Result<Rules, RulesError> {
        let mut out = Rules::default();
        for (key, rules) in saved {
            let mut words = key.splitn(3, ' ');
            let (Some(fam), Some(table), Some(chain)) = (words.next(), words.next(), words.next())
            else {
                let texts: Vec<&str> = rules.iter().map(|r| r.text.as_str()).collect();
                return Err(RulesError::Unusable(format!("{key}: {}", texts.join("; "))));
            };
            let family = match fam {
                "ipv4" => Family::V4,
                "ipv6" => Family::V6,
                _ => return Err(RulesError::Key(key.clone())),
            };
            let mut chain_rules = Vec::new();
            for rule in rules {
                if let Some(what) = rule.unmodelled() {
                    return Err(RulesError::Rule {
                        key: key.clone(),
                        text: rule.text.clone(),
                        reason: format!("option {what} is not modelled"),
                    });
                }
                chain_rules.push(Rule {
                    text: rule.text.clone(),
                    body: Body::Iptables(rule.clone()),
                });
            }
            let t = out.table_mut(&format!("{fam} {table}"), Some(family));
            if let (Some(hook), Some(priority)) = (iptables_hook(chain), iptables_priority(table)) {
                t.bases.push(Base {
                    chain: chain.to_owned(),
                    hook,
                    priority,
                    nat: table == "nat",
                });
            }
            t.chains.insert(chain.to_owned(), chain_rules);
        }
        Ok(out)
    }

    /// The nftables backend's tables (family inet: both IP families), their base chains by
    /// hook and priority; a rule with an expression this model does not hold is refused,
    /// named by its chain and text.
    pub fn from_nftables(contents: &Contents) -> Result<Rules, RulesError> {
        let mut out = Rules::default();
        for c in &contents.chains {
            let t = out.table_mut(&format!("inet {}", c.table), None);
            t.chains.entry(c.name.clone()).or_default();
            let Some(hook) = c.hook else { continue };
            let hook = match hook.hooknum {
                0 => Hook::Prerouting,
                3 => Hook::Output,
                // Hooks explain does not walk (input, forward, postrouting).
                _ => continue,
            };
            t.bases.push(Base {
                chain: c.name.clone(),
                hook,
                priority: c.hook.map_or(0, |h| h.priority),
                nat: c.chain_type.as_deref() == Some("nat"),
            });
        }
        for r in &contents.rules {
            let text = stateless_rule_text(r, &contents.sets);
            if let Some(e) = r.exprs.iter().find(|e| matches!(e, Expr::Unknown { .. })) {
                return Err(RulesError::Rule {
                    key: chain_key(&r.table, &r.chain),
                    text,
                    reason: format!("expression {} is not modelled", expr_text(e)),
                });
            }
            let sets = r
                .exprs
                .iter()
                .filter_map(|e| match e {
                    Expr::Lookup { set, .. } => Some(set.clone()),
                    _ => None,
                })
                .map(|set| {
                    let elements = contents.set(&r.table, &set).unwrap_or_default().to_vec();
                    (set, elements)
                })
                .collect();
            let rule = Rule {
                text,
                body: Body::Nftables(NftRule {
                    exprs: r.exprs.clone(),
                    sets,
                }),
            };
            out.table_mut(&format!("inet {}", r.table), None)
                .chains
                .entry(r.chain.clone())
                .or_default()
                .push(rule);
        }
        Ok(out)
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
