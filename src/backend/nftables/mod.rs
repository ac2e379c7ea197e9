//! The native nftables backend: the plan as tables `inet istio-proxy-nat`, `inet
//! istio-proxy-mangle` and `inet istio-proxy-raw` (Istio's names, hooks and priorities),
//! installed over netlink in one batch, so the kernel commits all of it or none.
//!
//! - [`ir`]: the one description of tables, chains, sets and rules, built from the plan; it
//!   spells the `--dry-run` script (`nft -f` syntax) and feeds the netlink batch.
//! - [`netlink`]: the batch, the dumps, and the canonical text used by read-back.
//! - [`expr`]: the expressions nftnl's safe API lacks, on the raw libnftnl API.
//!
//! Replacing: the tables present are looked up first. A fresh namespace gets plain additions (no
//! table deletion, which would make the kernel wait ~10 ms for the commit). Present tables are
//! flushed in the same batch and the chains the new plan lacks are deleted, so a re-run or another
//! configuration replaces the old rules atomically, never leaving a moment without rules and
//! never adding duplicates.

pub mod expr;
pub mod ir;
pub mod netlink;

use super::{Applied, BackendError, Firewall, Ruleset, routing};
use crate::plan::Plan;
use ir::Spec;
use netlink::{Existing, Nl};

/// Test-only (debug builds): when set to `1`, the batch gets one extra rule that jumps to a chain that does not
/// exist, so the kernel refuses the batch; integration tests use it to prove that a refused batch
/// leaves the namespace unchanged. Nothing else reads it.
pub const TEST_FAIL_BATCH_ENV: &str = "MESHCAP_TEST_FAIL_BATCH";

/// Installs the plan as nftables rules over netlink (no `nft` binary needed).
#[derive(Clone, Debug, Default)]
pub struct NftablesBackend;

fn gid_of(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

impl NftablesBackend {
    /// The description of `plan`, owner group names resolved on this system.
    pub fn spec(&self, plan: &Plan) -> Spec {
        Spec::build(plan, &gid_of)
    }

    fn resolved_spec(&self, plan: &Plan) -> Result<Spec, BackendError> {
        let spec = self.spec(plan);
        if let Some(name) = spec.unresolved() {
            return Err(BackendError::Netlink {
                what: format!("owner group {name:?}"),
                reason: "no such group on this system (cannot match its gid)".into(),
            });
        }
        Ok(spec)
    }
}

impl Firewall for NftablesBackend {
    fn render(&self, plan: &Plan) -> String {
        let mut out = String::from(
            "# nftables rules: input of nft -f (meshcap installs the same over netlink)\n",
        );
        out.push_str(&self.spec(plan).script());
        out
    }

    fn apply(&self, plan: &Plan) -> Result<Applied, BackendError> {
        // The batch is atomic, but it is built from the tables we read first: two first runs at
        // once would both send add-only batches and append the rules twice.
        let _lock = super::namespace_lock()?;
        let spec = self.resolved_spec(plan)?;
        let mut nl = Nl::open()?;
        let tables = netlink::our_tables(&mut nl)?;
        let chains = if tables.is_empty() {
            Vec::new()
        } else {
            netlink::chains(&mut nl, &tables)?
        };
        let replaced = !tables.is_empty();
        // Same configuration again (an init container re-run after a node restart): leave the
        // kernel alone. Only re-runs pay for this read; a fresh pod has no tables to read.
        if replaced && self.read_back(plan)?.diff(&self.expected(plan)).is_empty() {
            routing::apply(&plan.routing)?;
            return Ok(Applied::AlreadyInPlace);
        }
        // Only debug builds (what `cargo test` runs) honour the fault-injection hook.
        let fail =
            cfg!(debug_assertions) && std::env::var(TEST_FAIL_BATCH_ENV).as_deref() == Ok("1");
        let built = netlink::build_batch(&spec, &Existing { tables, chains }, fail);
        tracing::debug!(
            "nftables batch:\n{}",
            built
                .whats
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        nl.send_batch(&built.batch, &built.whats)?;
        routing::apply(&plan.routing)?;
        Ok(if replaced {
            Applied::Replaced
        } else {
            Applied::Installed
        })
    }

    fn read_back(&self, _plan: &Plan) -> Result<Ruleset, BackendError> {
        let mut nl = Nl::open()?;
        let tables = netlink::our_tables(&mut nl)?;
        Ok(Ruleset {
            chains: netlink::read_texts(&mut nl, &tables)?,
        })
    }

    fn expected(&self, plan: &Plan) -> Ruleset {
        let spec = self.spec(plan);
        if let Some(name) = spec.unresolved() {
            // Nothing can be installed for this plan; say so where a diff will show it.
            let mut ruleset = Ruleset::default();
            ruleset.chains.insert(
                "unresolvable".into(),
                vec![format!("owner group {name:?} does not exist")],
            );
            return ruleset;
        }
        let built = netlink::build_batch(&spec, &Existing::default(), false);
        Ruleset {
            chains: netlink::batch_texts(&built),
        }
    }

    fn clean(&self, plan: &Plan) -> Result<(), BackendError> {
        let _lock = super::namespace_lock()?;
        let mut nl = Nl::open()?;
        let tables = netlink::our_tables(&mut nl)?;
        if !tables.is_empty() {
            let built = netlink::delete_batch(&tables);
            nl.send_batch(&built.batch, &built.whats)?;
        }
        routing::clean(&plan.routing)
    }
}
