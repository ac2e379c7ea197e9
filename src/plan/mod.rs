//! The backend-neutral rule plan.
//!
//! A [`Plan`] says *which* rules exist, in which table and chain, in which order, for each address
//! family; backends only decide how to spell and apply it. It is built from a
//! [`crate::config::CaptureConfig`] alone (see [`build`]) and does no I/O.
//!
//! The rule operations are kept in the order Istio's capture code emits them (appends and
//! `-I CHAIN N` inserts interleaved), because the iptables backend must reproduce Istio's
//! restore text token for token. [`FamilyPlan::chain_rules`] applies the inserts and gives the
//! effective order of a chain, which is what a backend that builds chains from scratch needs.

mod build;
mod model;

pub use build::build;
pub use model::{
    Chain, CtState, DNS_CAPTURE_PORT, Family, FamilyPlan, GroupRef, Hook, ListGroup, Match, Net,
    Plan, Position, Protocol, RoutingStep, Rule, RuleOp, Table, Target, passthrough_source,
};

#[cfg(test)]
mod tests;
