//! Installing, checking and removing a whole ambient plan in the current network namespace:
//! netfilter rules, policy routing (in a pod) and probe sets (on the node), serialized with
//! other meshcap runs in the namespace.
//!
//! Both backends: iptables (restore text, ipsets over netlink) and nftables (one netlink batch
//! of meshcap's own codec, the probe sets in the nat table); [`Backend`] says which, and
//! [`ProbeSets`] which kind of probe set the agent keeps.

use super::plan::AmbientPlan;
use super::{ipset, iptables::install as rules, nftables, routing};
use crate::backend::iptables::IptablesBackend;
use crate::backend::{Applied, BackendError, RulesetDiff, namespace_lock};
use crate::config::IptablesVariant;
use std::net::IpAddr;

/// Which backend installs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Iptables(IptablesVariant),
    /// Over netlink, no `nft` binary.
    Nftables,
}

impl Backend {
    /// The iptables backend with the variant Istio would pick, or nftables.
    pub fn pick(nftables: bool) -> Backend {
        if nftables {
            Backend::Nftables
        } else {
            Backend::Iptables(variant())
        }
    }

    /// The probe sets that go with the backend's node rule.
    pub fn probe_sets(self) -> ProbeSets {
        match self {
            Backend::Iptables(_) => ProbeSets::Ipset,
            Backend::Nftables => ProbeSets::Nftables,
        }
    }
}

/// The node's probe sets: ipsets `hash:ip` (iptables) or nft sets of `inet istio-ambient-nat`
/// (nftables), both changed over netlink one address at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSets {
    Ipset,
    Nftables,
}

impl ProbeSets {
    /// Adds `addr` (`comment`: whose it is, where the set keeps comments).
    pub fn add(self, set: &str, addr: IpAddr, comment: Option<&str>) -> Result<(), BackendError> {
        match self {
            ProbeSets::Ipset => ipset::add(set, addr, comment),
            ProbeSets::Nftables => nftables::sets::add(set, addr),
        }
    }

    /// Removes `addr`; absent is fine.
    pub fn del(self, set: &str, addr: IpAddr) -> Result<(), BackendError> {
        match self {
            ProbeSets::Ipset => ipset::del(set, addr),
            ProbeSets::Nftables => nftables::sets::del(set, addr),
        }
    }

    pub fn contains(self, set: &str, addr: IpAddr) -> Result<bool, BackendError> {
        match self {
            ProbeSets::Ipset => ipset::contains(set, addr),
            ProbeSets::Nftables => nftables::sets::contains(set, addr),
        }
    }
}

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
pub fn install(plan: &AmbientPlan, backend: Backend) -> Result<Applied, BackendError> {
    let _lock = namespace_lock()?;
    let variant = match backend {
        Backend::Iptables(variant) => variant,
        Backend::Nftables => {
            // The sets are declared in the batch, with the rule that reads them.
            let routing_missing = !routing::missing(&plan.routing)?.is_empty();
            routing::apply(&plan.routing)?;
            return match nftables::install::apply(plan)? {
                Applied::AlreadyInPlace if routing_missing => Ok(Applied::Replaced),
                applied => Ok(applied),
            };
        }
    };
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
pub fn clean(plan: &AmbientPlan, backend: Backend) -> Result<(), BackendError> {
    let _lock = namespace_lock()?;
    match backend {
        // The sets go with their table.
        Backend::Nftables => nftables::install::clean(plan)?,
        Backend::Iptables(variant) => rules::clean(plan, variant)?,
    }
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
    if let Backend::Iptables(_) = backend {
        for set in &plan.probe_sets {
            ipset::destroy(&set.name)?;
        }
    }
    Ok(())
}

/// What the namespace lacks of the plan, or holds beyond it.
pub fn drift(plan: &AmbientPlan, backend: Backend) -> Result<RulesetDiff, BackendError> {
    let mut diff = match backend {
        Backend::Iptables(variant) => rules::diff(plan, variant)?,
        Backend::Nftables => nftables::install::diff(plan)?,
    };
    for step in routing::missing(&plan.routing)? {
        diff.missing.push(format!("routing: {step}"));
    }
    if backend == Backend::Nftables {
        // The sets are in the table, with the rule that reads them.
        return Ok(diff);
    }
    for set in &plan.probe_sets {
        if !ipset::exists(&set.name)? {
            diff.missing.push(format!("ipset: {} hash:ip", set.name));
        }
    }
    Ok(diff)
}
