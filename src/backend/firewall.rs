//! What every backend shares: the [`Firewall`] trait, its errors, and the rules it reads back
//! ([`Ruleset`], [`TypedRules`]). The backends and [`super::session`] import these from here;
//! `backend` re-exports them.

use super::iptables::saved::SavedRules;
use super::nftables::contents::Contents;
use super::nftables::render::chain_texts;
use crate::plan::Plan;
use std::collections::BTreeMap;
use std::time::Duration;

/// A failure to apply, read or clean rules. Exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A program could not be started (e.g. iptables-restore is not installed).
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    /// A program ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    /// The kernel refused a netlink request.
    #[error("netlink: {what}: {reason}")]
    Netlink { what: String, reason: String },
    /// The kernel holds rules of another configuration and replacing them was not asked for.
    #[error("{0}")]
    Conflict(String),
    /// A lock another program holds was not released within the bound: trying again later
    /// may succeed.
    #[error("gave up waiting for {what} after {}s", waited.as_secs())]
    Busy { what: String, waited: Duration },
}

/// What a namespace holds, per chain, in a backend's own spelling: the key names the family,
/// table and chain (e.g. `ipv4 nat ISTIO_OUTPUT`), the value is the chain's rules in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Vec<String>>,
}

impl Ruleset {
    /// Rules of `expected` missing here, and rules here that `expected` lacks, per chain
    /// (a rule in the wrong place counts as both).
    pub fn diff(&self, expected: &Ruleset) -> RulesetDiff {
        let mut diff = RulesetDiff::default();
        let keys: std::collections::BTreeSet<&String> =
            self.chains.keys().chain(expected.chains.keys()).collect();
        for key in keys {
            let have = self.chains.get(key).map(Vec::as_slice).unwrap_or_default();
            let want = expected
                .chains
                .get(key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if have == want {
                continue;
            }
            for rule in want.iter().filter(|r| !have.contains(r)) {
                diff.missing.push(format!("{key}: {rule}"));
            }
            for rule in have.iter().filter(|r| !want.contains(r)) {
                diff.extra.push(format!("{key}: {rule}"));
            }
            if diff.missing.is_empty() && diff.extra.is_empty() {
                diff.reordered.push(key.clone());
            }
        }
        diff
    }
}

/// The difference between the kernel's rules and a plan's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesetDiff {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    /// Chains holding the right rules in the wrong order.
    pub reordered: Vec<String>,
}

impl RulesetDiff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.reordered.is_empty()
    }
}

/// One line per difference: `missing: …`, `extra: …`, `reordered: CHAIN`.
impl std::fmt::Display for RulesetDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for rule in &self.missing {
            writeln!(f, "missing: {rule}")?;
        }
        for rule in &self.extra {
            writeln!(f, "extra: {rule}")?;
        }
        for chain in &self.reordered {
            writeln!(f, "reordered: {chain}")?;
        }
        Ok(())
    }
}

/// What a namespace holds (or would hold for a plan), typed as its backend reads it: what
/// `explain` walks. [`TypedRules::ruleset`] is the same in read-back spelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypedRules {
    /// Per chain key (`ipv4 nat ISTIO_OUTPUT`), the saved rules.
    Iptables(SavedRules),
    /// meshcap's tables' chains, rules and set elements, canonical.
    Nftables(Contents),
    /// Rules the backend cannot build for the plan, and why (read back as a chain
    /// `unresolvable` holding the reason, so a diff shows it).
    Unusable(String),
}

impl TypedRules {
    /// The rules in read-back spelling (`iptables-save` lines, `nft` syntax).
    pub fn ruleset(&self) -> Ruleset {
        Ruleset {
            chains: match self {
                TypedRules::Iptables(saved) => saved
                    .iter()
                    .map(|(key, rules)| {
                        (key.clone(), rules.iter().map(|r| r.text.clone()).collect())
                    })
                    .collect(),
                TypedRules::Nftables(contents) => chain_texts(contents),
                TypedRules::Unusable(why) => {
                    [("unresolvable".to_owned(), vec![why.clone()])].into()
                }
            },
        }
    }
}

/// What [`Firewall::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The rules were installed.
    Installed,
    /// The kernel already held exactly these rules; nothing was changed.
    AlreadyInPlace,
    /// Rules of another configuration were replaced.
    Replaced,
}

/// One way of installing a plan.
pub trait Firewall {
    /// The text `--dry-run` prints for the plan.
    fn render(&self, plan: &Plan) -> String;
    /// Installs the plan's netfilter rules in the current network namespace.
    fn apply(&self, plan: &Plan) -> Result<Applied, BackendError>;
    /// What the current namespace holds in meshcap's (and Istio's) tables and chains.
    fn read_back(&self, plan: &Plan) -> Result<Ruleset, BackendError>;
    /// The plan in read-back spelling.
    fn expected(&self, plan: &Plan) -> Ruleset;
    /// What the current namespace holds, typed ([`Firewall::read_back`] is its spelling).
    fn read_typed(&self, plan: &Plan) -> Result<TypedRules, BackendError>;
    /// The plan, typed as [`Firewall::read_typed`] would read it after an install.
    fn expected_typed(&self, plan: &Plan) -> TypedRules;
    /// Removes meshcap's (and Istio's) rules and chains; succeeds when there are none.
    fn clean(&self, plan: &Plan) -> Result<(), BackendError>;
    /// As [`Firewall::clean`], also when `plan` is not the configuration that installed the
    /// rules (a DEL whose pod settings are unknown): every rule of meshcap's and Istio's shapes
    /// goes, whatever ports, marks, users or interfaces it names.
    fn clean_any(&self, plan: &Plan) -> Result<(), BackendError> {
        self.clean(plan)
    }
}
