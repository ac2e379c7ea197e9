//! What a namespace holds of ambient's rules, typed as the backends hand rules to `meshcap
//! explain`: read with every backend (iptables-legacy, iptables-nft, nftables), each with what
//! it would hold for the plan. Runs in the current namespace (callers enter it first).

use super::iptables::install;
use super::nftables::install::expected;
use super::nftables::names::{TABLES, table_name};
use super::plan::AmbientPlan;
use crate::backend::iptables::saved;
use crate::backend::nftables::{dump, netlink};
use crate::backend::{BackendError, Ruleset, TypedRules};
use crate::config::IptablesVariant;
use crate::plan::Family;

/// One backend's view of ambient's rules in the namespace.
pub struct Reading {
    /// iptables-legacy, iptables-nft or nftables.
    pub backend: &'static str,
    pub read: Ruleset,
    pub rules: TypedRules,
    /// What that backend would hold for the plan.
    pub expected: Ruleset,
}

/// The plan's rules in the iptables spelling, both families of the plan, typed.
pub fn expected_iptables(plan: &AmbientPlan) -> Ruleset {
    let mut ruleset = Ruleset::default();
    for family in plan.families() {
        ruleset
            .chains
            .extend(install::expected(plan, family).chains);
    }
    ruleset
}

/// Whether iptables-legacy has tables of `family` in this namespace: listing them loads
/// nothing, where the save program would load x_tables' modules.
fn legacy_has_tables(family: Family) -> bool {
    let names = match family {
        Family::V4 => "/proc/thread-self/net/ip_tables_names",
        Family::V6 => "/proc/thread-self/net/ip6_tables_names",
    };
    !std::fs::read_to_string(names)
        .unwrap_or_default()
        .trim()
        .is_empty()
}

/// Every backend's reading that holds some of ambient's rules.
pub fn every_backend(plan: &AmbientPlan) -> Result<Vec<Reading>, BackendError> {
    let mut readings = Vec::new();
    for (name, variant) in [
        ("iptables-legacy", IptablesVariant::Legacy),
        ("iptables-nft", IptablesVariant::Nft),
    ] {
        let mut read = Ruleset::default();
        // Both families: IPv6 rules count even when the flags have IPv6 off.
        for family in [Family::V4, Family::V6] {
            if variant == IptablesVariant::Legacy && !legacy_has_tables(family) {
                continue;
            }
            match install::read_back(plan, family, variant) {
                Ok(r) => read.chains.extend(r.chains),
                // A node without that variant's tools holds no rules of it.
                Err(BackendError::Spawn { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if read.chains.is_empty() {
            continue;
        }
        readings.push(Reading {
            backend: name,
            rules: TypedRules::Iptables(saved::typed(&read.chains)),
            read,
            expected: expected_iptables(plan),
        });
    }
    let mut nl = netlink::open()?;
    let names: Vec<String> = TABLES.iter().map(|t| table_name(*t).to_owned()).collect();
    let present: Vec<String> = dump::tables(&mut nl)?
        .into_iter()
        .map(|t| t.name)
        .filter(|n| names.contains(n))
        .collect();
    if !present.is_empty() {
        let rules = TypedRules::Nftables(dump::contents(&mut nl, &present)?.canonical());
        readings.push(Reading {
            backend: "nftables",
            read: rules.ruleset(),
            rules,
            // Canonical like the reading, so the two compare line for line.
            expected: TypedRules::Nftables(expected(plan)).ruleset(),
        });
    }
    Ok(readings)
}
