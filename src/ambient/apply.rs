//! Installing, checking and removing a whole ambient plan in the current network namespace:
//! netfilter rules, policy routing (in a pod) and probe sets (on the node), serialized with
//! other meshcap runs in the namespace.
//!
//! Only the iptables backend installs for now; the nftables plan is printed (`--dry-run`) but
//! its netlink install waits for the new nf_tables codec (docs/AMBIENT.md).

use super::plan::AmbientPlan;
use super::{ipset, iptables::install as rules, routing};
use crate::backend::iptables::IptablesBackend;
use crate::backend::{Applied, BackendError, RulesetDiff, namespace_lock};
use crate::config::IptablesVariant;

/// The iptables variant, picked as Istio does (legacy when it holds rules, else nft).
pub fn variant() -> IptablesVariant {
    IptablesBackend {
        variant: None,
        reconcile: false,
        force_apply: false,
        xtables_wait: None,
    }
    .variant()
}

/// Installs the plan; a namespace that holds it already is left as it is. The probe sets come
/// first (the rule reads them), then the routing, then the rules: until the rules are in, no
/// packet is marked, so the routing changes nothing.
pub fn install(plan: &AmbientPlan, variant: IptablesVariant) -> Result<Applied, BackendError> {
    let _lock = namespace_lock()?;
    for set in &plan.probe_sets {
        ipset::create(&set.name, set.family)?;
    }
    let routing_missing = !routing::missing(&plan.routing)?.is_empty();
    routing::apply(&plan.routing)?;
    match rules::apply(plan, variant)? {
        Applied::AlreadyInPlace if routing_missing => Ok(Applied::Replaced),
        applied => Ok(applied),
    }
}

/// Removes the plan's kind of rules (whatever their settings), its routing and its sets.
pub fn clean(plan: &AmbientPlan, variant: IptablesVariant) -> Result<(), BackendError> {
    let _lock = namespace_lock()?;
    rules::clean(plan, variant)?;
    routing::clean(&plan.routing)?;
    if !plan.routing.is_empty() && !plan.ipv6 {
        // IPv6 may have been on at install time; without IPv6 in the kernel this fails, fine.
        let v6: Vec<_> = super::plan::routing(true)
            .into_iter()
            .filter(|step| !plan.routing.contains(step))
            .collect();
        if let Err(e) = routing::clean(&v6) {
            tracing::debug!("IPv6 routing not cleaned: {e}");
        }
    }
    // After the rules: a set a rule references cannot go.
    for set in &plan.probe_sets {
        ipset::destroy(&set.name)?;
    }
    Ok(())
}

/// What the namespace lacks of the plan, or holds beyond it.
pub fn drift(plan: &AmbientPlan, variant: IptablesVariant) -> Result<RulesetDiff, BackendError> {
    let mut diff = rules::diff(plan, variant)?;
    for step in routing::missing(&plan.routing)? {
        diff.missing.push(format!("routing: {step}"));
    }
    for set in &plan.probe_sets {
        if !ipset::exists(&set.name)? {
            diff.missing.push(format!("ipset: {} hash:ip", set.name));
        }
    }
    Ok(diff)
}
