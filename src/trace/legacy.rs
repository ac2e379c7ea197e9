//! Whether the namespace holds Istio/meshcap rules through iptables-legacy: those rules live in
//! x_tables, outside nf_tables, so no nftables trace reaches them (legacy `-j TRACE` logs to the
//! kernel log instead) and `meshcap trace` refuses rather than show a path that skips them.

use crate::backend::iptables::legacy_istio_chain;
use crate::backend::session::{Namespace, NamespaceError};

/// The legacy program that shows Istio chains in `ns`, and the first such chain; `None` when no
/// legacy table holds one.
pub fn istio_chains(ns: &Namespace) -> Result<Option<(String, String)>, NamespaceError> {
    ns.run(legacy_istio_chain)
}
