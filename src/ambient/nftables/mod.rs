//! The nftables spelling of ambient's plan: tables, chains, hooks, priorities and rules of
//! Istio's nftables mode (`inet istio-ambient-nat`, `-mangle`, `-raw`), so that `nft list
//! ruleset` shows the same as for Istio's own transaction.
//!
//! Differences in shape from the iptables spelling, all Istio's:
//! - one `inet` table per iptables table, IPv4 and IPv6 rules side by side in one chain;
//! - the host's probe rule sits in the `postrouting` hook chain itself (no ISTIO_POSTRT), and
//!   matches the kubelet's uid where iptables matches any local socket;
//! - the host script also declares the probe sets (Istio creates them elsewhere), so that it
//!   loads on its own; re-loading keeps their elements (`flush table` empties chains, not sets).
//!
//! [`install::spec`] is the one description of those rules: [`install`] sends it over netlink
//! (meshcap's own nf_tables codec, one atomic batch), compares and removes it, and [`script`]
//! prints it as the `nft -f` script of `--dry-run` (the nftables backend's own script syntax).
//! [`sets`] keeps the probe sets' elements.

pub mod install;
pub mod names;
pub mod sets;

use super::plan::AmbientPlan;

/// The `--dry-run` script: the description [`install`] sends, in `nft -f` syntax. The host's
/// declares the probe sets too, so that it loads on its own; re-loading keeps their elements
/// (`flush table` empties chains, not sets).
pub fn script(plan: &AmbientPlan) -> String {
    install::spec(plan).to_string()
}
