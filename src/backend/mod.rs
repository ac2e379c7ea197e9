//! Backends spell and apply a [`Plan`]; they never look at flags.
//!
//! Each backend implements [`Firewall`]: render (the `--dry-run` text), apply, read back what the
//! kernel holds, and clean. Read-back and [`Firewall::expected`] use the same spelling, so that
//! comparing them says whether the kernel holds the plan.

pub mod host;
pub mod iptables;
pub mod nftables;
pub mod routing;

use crate::plan::Plan;
use std::collections::BTreeMap;

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
}

/// Serializes meshcap runs in one network namespace for the duration of the returned guard.
///
/// iptables-restore checks `-N` against the state it read, so two runs that read before either
/// writes would both append their rules (iptables-nft does not take the xtables lock at all).
/// The lock file is named after the namespace's identity (device and inode of
/// /proc/self/ns/net), so runs in different pods never wait for each other.
pub fn namespace_lock() -> Result<nix::fcntl::Flock<std::fs::File>, BackendError> {
    use std::os::unix::fs::MetadataExt;
    let fail = |what: &str, reason: String| BackendError::Spawn {
        program: format!("meshcap lock ({what})"),
        reason,
    };
    let ns = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| fail("/proc/self/ns/net", e.to_string()))?;
    let dir = std::path::Path::new("/run/meshcap");
    std::fs::create_dir_all(dir).map_err(|e| fail("/run/meshcap", e.to_string()))?;
    let path = dir.join(format!("netns-{}-{}.lock", ns.dev(), ns.ino()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fail(&path.display().to_string(), e.to_string()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| fail(&path.display().to_string(), e.to_string()))
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
    /// Removes meshcap's (and Istio's) rules and chains; succeeds when there are none.
    fn clean(&self, plan: &Plan) -> Result<(), BackendError>;
}
