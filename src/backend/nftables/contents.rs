//! What meshcap's tables hold, typed: chains, rules and the elements of the sets the rules look
//! up, read from the kernel's dumps ([`super::dump`]) or taken from the messages of an install
//! batch (what the batch would leave in a fresh namespace). Both sides go through
//! [`Contents::canonical`], after which they compare with `==`: read-back and drift compare
//! these values, and read-back, diff and explain show them in `nft` syntax
//! ([`super::render`]); trace renders the kernel's rules as dumped, by handle.

use super::codec::expr::Expr;
use super::codec::{Chain, Message, MsgType, Object, Rule, SetElem};
use nix::libc;
use std::collections::{BTreeMap, HashMap};

/// A set of a table: (table, set name).
pub type SetKey = (String, String);

/// Chains, rules and sets of some tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// In creation order (the kernel's listing order).
    pub chains: Vec<Chain>,
    /// In the kernel's order (by chain, then position).
    pub rules: Vec<Rule>,
    /// The elements of each set, sorted.
    pub sets: BTreeMap<SetKey, Vec<SetElem>>,
}

impl Contents {
    /// What a batch's messages leave in a namespace that holds none of their tables: its chains,
    /// rules and set elements (sets named by the batch's transaction ids until
    /// [`Contents::canonical`]).
    pub fn from_batch(messages: &[Message]) -> Contents {
        let mut out = Contents::default();
        for m in messages {
            match (&m.msg_type, &m.object) {
                (MsgType::NewChain, Object::Chain(c)) => out.chains.push(c.clone()),
                (MsgType::NewRule, Object::Rule(r)) => out.rules.push(r.clone()),
                (MsgType::NewSetElem, Object::SetElems(e)) => {
                    let name = e.set_id.map_or(e.set.clone(), batch_set_name);
                    out.sets
                        .entry((e.table.clone(), name))
                        .or_default()
                        .extend(e.elements.iter().cloned());
                }
                _ => {}
            }
        }
        for r in &mut out.rules {
            for e in &mut r.exprs {
                if let Expr::Lookup {
                    set,
                    set_id: Some(id),
                    ..
                } = e
                {
                    *set = batch_set_name(*id);
                }
            }
        }
        out
    }

    /// The same contents without what only the kernel knows or names (handles, use counts,
    /// counter values, a base chain's default policy, flags), named sets by name alone (without
    /// their elements), anonymous sets renamed `__setN`
    /// in the order their table's rules first look them up, and set elements sorted (empty
    /// element flags as none).
    pub fn canonical(&self) -> Contents {
        let chains = self
            .chains
            .iter()
            .map(|c| Chain {
                handle: None,
                use_count: None,
                flags: None,
                policy: c.hook.map(|_| c.policy.unwrap_or(libc::NF_ACCEPT as u32)),
                ..c.clone()
            })
            .collect();
        let mut renamed: HashMap<SetKey, String> = HashMap::new();
        let mut per_table: HashMap<String, usize> = HashMap::new();
        let mut sets = BTreeMap::new();
        let rules = self
            .rules
            .iter()
            .map(|r| {
                let mut r = r.comparable();
                for e in &mut r.exprs {
                    if let Expr::Lookup { set, set_id, .. } = e {
                        // A named set is compared by name; its elements are someone else's
                        // (ambient's probe sets: the agent's pods).
                        if !is_anonymous(set) {
                            *set_id = None;
                            continue;
                        }
                        let key = (r.table.clone(), set.clone());
                        let name = renamed
                            .entry(key.clone())
                            .or_insert_with(|| {
                                let n = per_table.entry(r.table.clone()).or_default();
                                *n += 1;
                                format!("__set{}", *n - 1)
                            })
                            .clone();
                        let mut elements: Vec<SetElem> = self
                            .sets
                            .get(&key)
                            .into_iter()
                            .flatten()
                            // A batch writes empty flags, the kernel's dump omits them.
                            .map(|e| SetElem {
                                key: e.key.clone(),
                                flags: e.flags.filter(|f| *f != 0),
                            })
                            .collect();
                        elements.sort();
                        sets.insert((r.table.clone(), name.clone()), elements);
                        *set = name;
                        *set_id = None;
                    }
                }
                r
            })
            .collect();
        Contents {
            chains,
            rules,
            sets,
        }
    }

    /// The rules of one chain, in order.
    pub fn chain_rules<'a>(
        &'a self,
        table: &'a str,
        chain: &'a str,
    ) -> impl Iterator<Item = &'a Rule> {
        self.rules
            .iter()
            .filter(move |r| r.table == table && r.chain == chain)
    }

    /// The elements of a set a rule of `table` looks up.
    pub fn set(&self, table: &str, name: &str) -> Option<&[SetElem]> {
        self.sets
            .get(&(table.to_owned(), name.to_owned()))
            .map(Vec::as_slice)
    }
}

/// Whether `name` is an anonymous set's: the kernel's `__setN`, nft's `__set%d`, a batch's
/// `#id`.
pub fn is_anonymous(name: &str) -> bool {
    name.starts_with("__set") || name.starts_with('#')
}

/// How a batch's set is named before the kernel names it.
fn batch_set_name(id: u32) -> String {
    format!("#{id}")
}
