//! Backends spell and apply a [`Plan`]; they never look at flags.
//!
//! Each backend implements [`Firewall`]: render (the `--dry-run` text), apply, read back what the
//! kernel holds, and clean. Read-back and [`Firewall::expected`] use the same spelling, so that
//! comparing them says whether the kernel holds the plan.

pub mod address;
pub mod host;
pub mod iptables;
pub mod nftables;
pub mod routing;

use crate::config::{BackendKind, RunConfig};
use crate::plan::Plan;
use std::collections::BTreeMap;

/// The backend the run configuration asks for.
pub fn select(run: &RunConfig) -> Box<dyn Firewall> {
    match run.backend {
        BackendKind::Iptables => Box::new(iptables::IptablesBackend {
            variant: run.iptables_variant,
            reconcile: run.reconcile,
            force_apply: run.force_apply,
        }),
        BackendKind::Nftables => Box::new(nftables::NftablesBackend),
    }
}

/// Compares what the current namespace holds with `plan`.
pub fn drift(backend: &dyn Firewall, plan: &Plan) -> Result<RulesetDiff, BackendError> {
    Ok(backend.read_back(plan)?.diff(&backend.expected(plan)))
}

/// Enters the network namespace at `path` (a file under /run/netns or /proc/PID/ns/net) for the
/// rest of the process: every later netlink socket and child process lives there.
pub fn enter_namespace(path: &std::path::Path) -> Result<(), NamespaceError> {
    let file = std::fs::File::open(path).map_err(|e| NamespaceError {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NamespaceError {
        path: path.to_owned(),
        reason: match e {
            nix::errno::Errno::EINVAL => "not a network namespace".into(),
            e => e.to_string(),
        },
    })
}

/// The network namespace to work in could not be entered.
#[derive(Debug, thiserror::Error)]
#[error("cannot enter network namespace {}: {reason}", path.display())]
pub struct NamespaceError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

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
    let path = namespace_lock_path()?;
    std::fs::create_dir_all(LOCK_DIR).map_err(|e| lock_failure(LOCK_DIR, e.to_string()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| lock_failure(&path.display().to_string(), e.to_string()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| lock_failure(&path.display().to_string(), e.to_string()))
}

/// Removes the current namespace's lock file, for a namespace that is going away (a CNI DEL):
/// on a node, lock files would otherwise pile up in /run, one per pod ever started.
pub fn remove_namespace_lock() -> Result<(), BackendError> {
    let path = namespace_lock_path()?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(lock_failure(&path.display().to_string(), e.to_string()))
        }
        _ => Ok(()),
    }
}

const LOCK_DIR: &str = "/run/meshcap";

fn namespace_lock_path() -> Result<std::path::PathBuf, BackendError> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| lock_failure("/proc/self/ns/net", e.to_string()))?;
    Ok(std::path::Path::new(LOCK_DIR).join(format!("netns-{}-{}.lock", ns.dev(), ns.ino())))
}

fn lock_failure(what: &str, reason: String) -> BackendError {
    BackendError::Spawn {
        program: format!("meshcap lock ({what})"),
        reason,
    }
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
    Iptables(iptables::saved::SavedRules),
    /// meshcap's tables' chains, rules and set elements, canonical.
    Nftables(nftables::Contents),
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
                TypedRules::Nftables(contents) => nftables::render::chain_texts(contents),
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
}
