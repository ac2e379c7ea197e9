//! The namespace session: "this configuration, in that network namespace", in one place.
//!
//! Every front door (the installer, the plugin's ADD, CHECK and DEL, `diff`, `explain --kernel`,
//! trace) goes through here, and this is the only module that picks a backend or calls
//! `setns`:
//!
//! - [`Namespace::run`] enters the namespace only for the duration of one closure, on the
//!   calling thread, and puts the thread back into the namespace it came from on every path
//!   (errors and panics included). Code after it, such as the plugin's API lookup or its log
//!   lines, runs where the caller runs.
//! - [`Session`] holds meshcap's lock of the namespace for its whole lifetime, has picked the
//!   backend once (the iptables variant is decided inside the namespace, once), and offers apply,
//!   drift, clean (routing included) and read-back.
//! - The lock is an abstract unix socket bound inside the namespace: abstract socket names are
//!   per network namespace, and the kernel releases the name when the socket closes (also when
//!   the process dies) and forgets it with the namespace. Nothing is left in the file system.

use super::firewall::{Applied, BackendError, Firewall, Ruleset, RulesetDiff, TypedRules};
use super::iptables::IptablesBackend;
use super::lock::{self, NamespaceLock};
use super::nftables::NftablesBackend;
use super::routing;
use crate::config::{BackendKind, IptablesVariant, RunConfig};
use crate::plan::{Family, FamilyPlan, Plan, RoutingStep};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A network namespace to work in: a namespace file, or the caller's own.
pub struct Namespace {
    /// `None`: the caller's own namespace, entered by nothing.
    target: Option<(PathBuf, File)>,
}

/// The network namespace to work in could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot enter network namespace {}: {reason}", path.display())]
    Enter { path: PathBuf, reason: String },
    /// The namespace is the one the caller runs in: rules there would capture the caller's
    /// (the node's) own traffic.
    #[error(
        "{} is this process's own network namespace, not a pod's: refusing to work in it",
        path.display()
    )]
    Own { path: PathBuf },
}

impl Namespace {
    /// The caller's own namespace (the installer without `--network-namespace`).
    pub fn current() -> Namespace {
        Namespace { target: None }
    }

    /// The namespace at `path` (a file under /run/netns or /proc/PID/ns/net). Nothing is entered
    /// yet; a file that is not a network namespace fails at the first [`Namespace::run`].
    pub fn open(path: &Path) -> Result<Namespace, NamespaceError> {
        let file = File::open(path).map_err(|e| NamespaceError::Enter {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Namespace {
            target: Some((path.to_owned(), file)),
        })
    }

    /// As [`Namespace::open`], refusing the caller's own namespace: a pod's namespace is never
    /// the plugin's, and a CNI_NETNS of /proc/self/ns/net must not install rules on the node.
    pub fn open_other(path: &Path) -> Result<Namespace, NamespaceError> {
        let ns = Namespace::open(path)?;
        let Some((_, file)) = &ns.target else {
            unreachable!("opened a file")
        };
        let identity = |stat: nix::sys::stat::FileStat| (stat.st_dev, stat.st_ino);
        let theirs = nix::sys::stat::fstat(file.as_fd()).map(identity);
        let ours = nix::sys::stat::stat(OWN_NAMESPACE).map(identity);
        match (theirs, ours) {
            (Ok(theirs), Ok(ours)) if theirs == ours => Err(NamespaceError::Own {
                path: path.to_owned(),
            }),
            (Err(e), _) | (_, Err(e)) => Err(NamespaceError::Enter {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
            _ => Ok(ns),
        }
    }

    /// The namespace's file, `None` for the caller's own.
    pub fn path(&self) -> Option<&Path> {
        self.target.as_ref().map(|(path, _)| path.as_path())
    }

    /// Runs `f` inside the namespace on the calling thread, then puts the thread back where it
    /// was, whatever `f` returns (or if it panics). Sockets `f` opens and programs it starts
    /// belong to the namespace; both outlive the switch back (the kernel binds a socket to the
    /// namespace it was created in).
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NamespaceError> {
        let Some((path, file)) = &self.target else {
            return Ok(f());
        };
        let fail = |reason: String| NamespaceError::Enter {
            path: path.clone(),
            reason,
        };
        // The thread's own namespace, not the process's: another thread may have moved.
        let home = File::open(THREAD_NAMESPACE).map_err(|e| fail(e.to_string()))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            fail(match e {
                nix::errno::Errno::EINVAL => "not a network namespace".into(),
                e => e.to_string(),
            })
        })?;
        let _back = GoBack(home);
        Ok(f())
    }
}

const OWN_NAMESPACE: &str = "/proc/self/ns/net";
const THREAD_NAMESPACE: &str = "/proc/thread-self/ns/net";

/// Puts the thread back into its namespace when dropped.
struct GoBack(File);

impl Drop for GoBack {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.0.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
            // Staying in the pod's namespace would run the rest of the process there (the API
            // lookup, later commands): stop instead.
            eprintln!("meshcap: cannot return to the caller's network namespace: {e}");
            std::process::abort();
        }
    }
}

/// The backend the run configuration asks for. `decide_variant`: settle the iptables variant
/// now (inside the namespace), so that every later step of the session uses the same one.
fn select(run: &RunConfig, waits: Waits, decide_variant: bool) -> Box<dyn Firewall> {
    match run.backend {
        BackendKind::Iptables => {
            let mut iptables = IptablesBackend {
                variant: run.iptables_variant,
                reconcile: run.reconcile,
                force_apply: run.force_apply,
                xtables_wait: waits.xtables,
            };
            if decide_variant && iptables.variant.is_none() {
                // Istio's rule: legacy when iptables-legacy already holds rules, else nft.
                iptables.variant = Some(iptables.variant());
            }
            Box::new(iptables)
        }
        BackendKind::Nftables => Box::new(NftablesBackend),
    }
}

/// How long a session waits for what other programs hold; `None`: as long as it takes (the
/// installer, as Istio's istio-iptables). The plugin bounds both ([`Waits::PLUGIN`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waits {
    /// meshcap's lock of the namespace (another meshcap run in the same pod).
    pub lock: Option<Duration>,
    /// The xtables lock (/run/xtables.lock), which iptables-legacy's restore takes: kube-proxy
    /// and other node agents hold it while they write the node's rules.
    pub xtables: Option<Duration>,
}

impl Waits {
    /// The plugin's bounds. The runtimes give a CNI call about a minute (containerd cleans up a
    /// failed sandbox under a 1-minute deadline; the kubelet's runtime requests time out after
    /// 2 minutes): the API lookup (5 s), the lock (10 s) and at most three xtables waits
    /// (5 s each: two families and one roll-back) stay within 30 s together.
    pub const PLUGIN: Waits = Waits {
        lock: Some(Duration::from_secs(10)),
        xtables: Some(Duration::from_secs(5)),
    };
}

/// The `--dry-run` text of the configuration's plan, in its backend's spelling.
pub fn render(run: &RunConfig, plan: &Plan) -> String {
    select(run, Waits::default(), false).render(plan)
}

/// The configuration's plan in its backend's read-back spelling (touches no namespace).
pub fn expected(run: &RunConfig, plan: &Plan) -> Ruleset {
    select(run, Waits::default(), false).expected(plan)
}

/// The configuration's plan as its backend's typed rules (touches no namespace).
pub fn expected_typed(run: &RunConfig, plan: &Plan) -> TypedRules {
    select(run, Waits::default(), false).expected_typed(plan)
}

/// Work on one namespace with one configuration: the lock held, the backend picked.
pub struct Session {
    ns: Namespace,
    backend: Box<dyn Firewall>,
    plan: Plan,
    _lock: NamespaceLock,
}

/// Why a session's work failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Session {
    /// Takes the namespace's lock (waiting at most `waits.lock`) and picks the backend inside
    /// the namespace.
    pub fn open(
        ns: Namespace,
        run: &RunConfig,
        plan: Plan,
        waits: Waits,
    ) -> Result<Session, SessionError> {
        let (held, backend) = ns.run(|| -> Result<_, BackendError> {
            let held = lock::wait_for(waits.lock)?;
            Ok((held, select(run, waits, true)))
        })??;
        Ok(Session {
            ns,
            backend,
            plan,
            _lock: held,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Runs `f` in the session's namespace with the session's lock counting as held.
    pub fn run<T>(&self, f: impl FnOnce(&dyn Firewall, &Plan) -> T) -> Result<T, SessionError> {
        Ok(self.ns.run(|| {
            let _held = lock::held_by_session();
            f(&*self.backend, &self.plan)
        })?)
    }

    /// Installs the plan's rules and routing.
    pub fn apply(&self) -> Result<Applied, SessionError> {
        Ok(self.run(|backend, plan| backend.apply(plan))??)
    }

    /// How the namespace's rules differ from the plan's.
    pub fn drift(&self) -> Result<RulesetDiff, SessionError> {
        Ok(self.run(|backend, plan| -> Result<_, BackendError> {
            Ok(backend.read_back(plan)?.diff(&backend.expected(plan)))
        })??)
    }

    /// What the namespace holds of meshcap's (and Istio's) rules.
    pub fn read_back(&self) -> Result<Ruleset, SessionError> {
        Ok(self.run(|backend, plan| backend.read_back(plan))??)
    }

    /// Removes the plan's rules and routing.
    pub fn clean(&self) -> Result<(), SessionError> {
        Ok(self.run(|backend, plan| backend.clean(plan))??)
    }

    /// Removes meshcap's and Istio's rules whatever configuration installed them (a DEL whose
    /// pod settings are unknown), and the plan's routing plus `routing`, the steps another
    /// configuration of the same node settings may have added (TPROXY's).
    pub fn clean_any(&self, routing: &[RoutingStep]) -> Result<(), SessionError> {
        Ok(self.run(|backend, plan| -> Result<(), BackendError> {
            backend.clean_any(plan)?;
            routing::clean(routing)
        })??)
    }

    /// The namespace's rules read back with every backend that holds some (iptables-legacy,
    /// iptables-nft, nftables), each with its drift from what it would hold for the plan.
    pub fn read_back_every_backend(&self) -> Result<Vec<Reading>, SessionError> {
        Ok(self.run(|_, plan| read_every_backend(plan))??)
    }
}

/// One backend's view of the namespace.
pub struct Reading {
    /// iptables-legacy, iptables-nft or nftables.
    pub backend: &'static str,
    pub read: Ruleset,
    /// The same, typed.
    pub rules: TypedRules,
    /// What that backend would hold for the plan.
    pub expected: Ruleset,
}

fn read_every_backend(plan: &Plan) -> Result<Vec<Reading>, BackendError> {
    let iptables = |variant| IptablesBackend {
        variant: Some(variant),
        reconcile: false,
        force_apply: false,
        xtables_wait: None,
    };
    let backends: [(&'static str, Box<dyn Firewall>); 3] = [
        (
            "iptables-legacy",
            Box::new(iptables(IptablesVariant::Legacy)),
        ),
        ("iptables-nft", Box::new(iptables(IptablesVariant::Nft))),
        ("nftables", Box::new(NftablesBackend)),
    ];
    // The iptables backend reads the families the plan has; IPv6 rules the kernel holds count
    // too when the flags have IPv6 off (an empty IPv6 plan reads only meshcap's chains).
    let mut both_families = plan.clone();
    both_families.v6.get_or_insert(FamilyPlan {
        family: Family::V6,
        ops: Vec::new(),
    });
    let mut readings = Vec::new();
    for (name, backend) in backends {
        let rules = match backend
            .read_typed(&both_families)
            .or_else(|_| backend.read_typed(plan))
        {
            Ok(rules) => rules,
            // A node without that variant's tools holds no rules of it.
            Err(BackendError::Spawn { .. }) => continue,
            Err(e) => return Err(e),
        };
        let read = rules.ruleset();
        if read.chains.is_empty() {
            continue;
        }
        readings.push(Reading {
            backend: name,
            read,
            rules,
            expected: backend.expected(plan),
        });
    }
    Ok(readings)
}
