//! The native nftables backend: the plan as tables `inet istio-proxy-nat`, `inet
//! istio-proxy-mangle` and `inet istio-proxy-raw` (Istio's names, hooks and priorities),
//! installed over netlink in one batch, so the kernel commits all of it or none.
//!
//! From plan to kernel:
//! - [`names`]: Istio's table and chain names, hooks and priorities;
//! - [`ir`]: the one description of tables, chains, sets and rules; [`lower`] builds it from
//!   the plan, with [`prefix`]'s address arithmetic; [`script`] spells it as the `--dry-run`
//!   script (`nft -f` syntax);
//! - [`codec`]: the nf_tables messages, typed, with their encoder and decoder (safe Rust, no
//!   C library);
//! - [`batch`]: the batch of messages that installs it, each rule's expressions from
//!   [`encode`];
//! - [`socket`]: the netlink socket (send, receive, dumps, acknowledgements); [`netlink`]
//!   opens it in the current namespace and names its failures;
//! - [`dump`] reads the tables back as [`Contents`], which a batch's messages also give;
//!   read-back and drift compare those values, and [`render`] spells them in `nft` syntax.
//!
//! Ambient mode (`crate::ambient::nftables::install`) reuses the same pieces for its own tables
//! (`inet istio-ambient-*`, [`batch::build_batch_in`]), with a few items of its own in [`ir`]
//! (masked marks, named probe sets, SNAT).
//!
//! Replacing: the tables present are looked up first. A fresh namespace gets plain additions (no
//! table deletion, which would make the kernel wait for the commit). Present tables are
//! flushed in the same batch and the chains the new plan lacks are deleted, so a re-run or another
//! configuration replaces the old rules atomically, never leaving a moment without rules and
//! never adding duplicates.

pub mod batch;
pub mod codec;
pub mod contents;
pub mod dump;
pub mod encode;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod ir;
mod lower;
pub mod names;
pub mod netlink;
mod prefix;
pub mod render;
mod script;
pub mod socket;

use super::firewall::{Applied, BackendError, Firewall, Ruleset, TypedRules};
use super::host::gid_of;
use super::routing;
use crate::plan::Plan;
use batch::Existing;
pub use contents::Contents;
use ir::Spec;
pub use netlink::{netlink_error, open};

/// Installs the plan as nftables rules over netlink (no `nft` binary needed).
#[derive(Clone, Debug, Default)]
pub struct NftablesBackend;

/// What an install of `spec` leaves in a namespace without meshcap's tables, canonical.
pub fn expected_contents(spec: &Spec) -> Contents {
    Contents::from_batch(&batch::build_batch(spec, &Existing::default()).messages).canonical()
}

impl NftablesBackend {
    /// What the current namespace holds in meshcap's (and Istio's) tables, canonical (see
    /// [`Contents::canonical`]).
    pub fn contents(&self) -> Result<Contents, BackendError> {
        let mut nl = open()?;
        let tables = dump::our_tables(&mut nl)?;
        Ok(dump::contents(&mut nl, &tables)?.canonical())
    }

    /// What installing `plan` leaves in a namespace without meshcap's tables, canonical.
    pub fn expected_contents(&self, plan: &Plan) -> Contents {
        expected_contents(&self.spec(plan))
    }

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
        out.push_str(&self.spec(plan).to_string());
        out
    }

    fn apply(&self, plan: &Plan) -> Result<Applied, BackendError> {
        // The batch is atomic, but it is built from the tables we read first: two first runs at
        // once would both send add-only batches and append the rules twice.
        let _lock = super::lock::namespace_lock()?;
        let spec = self.resolved_spec(plan)?;
        let mut nl = open()?;
        let tables = dump::our_tables(&mut nl)?;
        let chains = if tables.is_empty() {
            Vec::new()
        } else {
            dump::chains(&mut nl, &tables)?
        };
        let replaced = !tables.is_empty();
        // Same configuration again (an init container re-run after a node restart): leave the
        // kernel alone. Only re-runs pay for this read; a fresh pod has no tables to read.
        // Typed values compared: the kernel's dump against what this batch would leave.
        if replaced
            && dump::contents_with_chains(&mut nl, &tables, chains.clone())?.canonical()
                == expected_contents(&spec)
        {
            routing::apply(&plan.routing)?;
            return Ok(Applied::AlreadyInPlace);
        }
        #[cfg(feature = "fault-injection")]
        let spec = {
            let mut spec = spec;
            fault::inject(&mut spec);
            spec
        };
        let built = batch::build_batch(&spec, &Existing { tables, chains });
        tracing::debug!(
            "nftables batch:\n{}",
            built
                .whats
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        batch::send(&mut nl, &built)?;
        routing::apply(&plan.routing)?;
        Ok(if replaced {
            Applied::Replaced
        } else {
            Applied::Installed
        })
    }

    fn read_back(&self, plan: &Plan) -> Result<Ruleset, BackendError> {
        Ok(self.read_typed(plan)?.ruleset())
    }

    fn expected(&self, plan: &Plan) -> Ruleset {
        self.expected_typed(plan).ruleset()
    }

    fn read_typed(&self, _plan: &Plan) -> Result<TypedRules, BackendError> {
        Ok(TypedRules::Nftables(self.contents()?))
    }

    fn expected_typed(&self, plan: &Plan) -> TypedRules {
        let spec = self.spec(plan);
        match spec.unresolved() {
            // Nothing can be installed for this plan; say so where a diff or explain shows it.
            Some(name) => TypedRules::Unusable(format!("owner group {name:?} does not exist")),
            None => TypedRules::Nftables(expected_contents(&spec)),
        }
    }

    fn clean(&self, plan: &Plan) -> Result<(), BackendError> {
        let _lock = super::lock::namespace_lock()?;
        let mut nl = open()?;
        let tables = dump::our_tables(&mut nl)?;
        if !tables.is_empty() {
            batch::send(&mut nl, &batch::delete_batch(&tables))?;
            // Deleting leaves the kernel freeing the tables; do not wait for that here.
            nl.close_in_background();
        }
        routing::clean(&plan.routing)
    }
}
