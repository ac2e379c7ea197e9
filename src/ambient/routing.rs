//! The in-pod policy routing of ambient mode over rtnetlink: the rule
//! `fwmark 0x111/0xfff pref 32764 lookup 100` and the route `local default dev lo table 100`,
//! per family. Packets of ztunnel's connections (their connection mark restored onto them) are
//! delivered locally, so that replies to ztunnel's transparent sockets reach them.
//!
//! The socket and its error handling are the sidecar's ([`crate::backend::routing`]); what
//! differs is the rule (masked mark, fixed priority, as Istio's agent adds it) and the route,
//! which is replaced rather than added, as Istio does.

use super::plan::{Masked, RoutingStep};
use crate::backend::BackendError;
use crate::backend::routing::{
    Rtnl, address_family, header_table, local_default_route, loopback_index,
};
use crate::plan::Family;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use nix::errno::Errno;

/// Installs the steps; those in place already are left as they are.
pub fn apply(steps: &[RoutingStep]) -> Result<(), BackendError> {
    let mut nl = Rtnl::open()?;
    for step in steps {
        let what = describe(step, "add");
        match *step {
            RoutingStep::FwmarkRule {
                family,
                mark,
                priority,
                table,
            } => {
                if present(&mut nl, step)? {
                    continue;
                }
                let msg = fwmark_rule(family, mark, priority, table);
                nl.request(RouteNetlinkMessage::NewRule(msg), NLM_F_CREATE | NLM_F_EXCL)
                    .or_else(|e| e.tolerate(&[Errno::EEXIST]))
                    .map_err(|e| e.into_error(&what))?;
            }
            RoutingStep::LocalDefaultRoute { family, table } => {
                if family == Family::V6 && lo_ipv6_disabled() {
                    // Istio skips it too: the kernel refuses IPv6 routes via lo then.
                    tracing::debug!("IPv6 is disabled on lo; no IPv6 local route");
                    continue;
                }
                let msg = local_default_route(family, table, RouteProtocol::Boot)
                    .map_err(|e| e.into_error(&what))?;
                nl.request(
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
                .map_err(|e| e.into_error(&what))?;
            }
        }
    }
    Ok(())
}

/// Removes the steps; those already gone are fine.
pub fn clean(steps: &[RoutingStep]) -> Result<(), BackendError> {
    let mut nl = Rtnl::open()?;
    // The rules first: no packet is sent to a table whose route is going.
    for step in steps.iter().rev() {
        let what = describe(step, "del");
        match *step {
            RoutingStep::FwmarkRule {
                family,
                mark,
                priority,
                table,
            } => nl
                .request(
                    RouteNetlinkMessage::DelRule(fwmark_rule(family, mark, priority, table)),
                    0,
                )
                .or_else(|e| e.tolerate(&[Errno::ENOENT]))
                .map_err(|e| e.into_error(&what))?,
            RoutingStep::LocalDefaultRoute { family, table } => {
                let msg = local_default_route(family, table, RouteProtocol::Unspec)
                    .map_err(|e| e.into_error(&what))?;
                nl.request(RouteNetlinkMessage::DelRoute(msg), 0)
                    .or_else(|e| e.tolerate(&[Errno::ESRCH, Errno::ENOENT]))
                    .map_err(|e| e.into_error(&what))?
            }
        }
    }
    Ok(())
}

/// The steps the namespace lacks, each as the `ip` command that would add it.
pub fn missing(steps: &[RoutingStep]) -> Result<Vec<String>, BackendError> {
    let mut nl = Rtnl::open()?;
    let mut out = Vec::new();
    for step in steps {
        if matches!(
            step,
            RoutingStep::LocalDefaultRoute {
                family: Family::V6,
                ..
            }
        ) && lo_ipv6_disabled()
        {
            continue;
        }
        if !present(&mut nl, step)? {
            out.push(describe(step, "add"));
        }
    }
    Ok(out)
}

/// The `ip` command of a step, for messages.
pub fn describe(step: &RoutingStep, verb: &str) -> String {
    match step {
        RoutingStep::FwmarkRule {
            family,
            mark,
            priority,
            table,
        } => format!(
            "ip -{} rule {verb} fwmark {:#x}/{:#x} pref {priority} lookup {table}",
            version(*family),
            mark.value,
            mark.mask
        ),
        RoutingStep::LocalDefaultRoute { family, table } => format!(
            "ip -{} route {verb} local default dev lo table {table}",
            version(*family)
        ),
    }
}

fn version(family: Family) -> u8 {
    match family {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

fn lo_ipv6_disabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
        .is_ok_and(|v| v.trim() == "1")
}

/// Whether the namespace holds the step (the rule with this priority, mark, mask and table; the
/// local default route in the table).
fn present(nl: &mut Rtnl, step: &RoutingStep) -> Result<bool, BackendError> {
    let what = describe(step, "show");
    match *step {
        RoutingStep::FwmarkRule {
            family,
            mark,
            priority,
            table,
        } => {
            let mut query = RuleMessage::default();
            query.header.family = address_family(family);
            let rules = nl
                .dump(RouteNetlinkMessage::GetRule(query))
                .map_err(|e| e.into_error(&what))?;
            Ok(rules.iter().any(|m| match m {
                RouteNetlinkMessage::NewRule(rule) => {
                    let has = |a: RuleAttribute| rule.attributes.contains(&a);
                    rule.header.action == RuleAction::ToTable
                        && has(RuleAttribute::Priority(priority))
                        && has(RuleAttribute::FwMark(mark.value))
                        && has(RuleAttribute::FwMask(mark.mask))
                        && has(RuleAttribute::Table(table))
                }
                _ => false,
            }))
        }
        RoutingStep::LocalDefaultRoute { family, table } => {
            let mut query = RouteMessage::default();
            query.header.address_family = address_family(family);
            let lo = loopback_index().map_err(|e| e.into_error(&what))?;
            let routes = nl
                .dump(RouteNetlinkMessage::GetRoute(query))
                .map_err(|e| e.into_error(&what))?;
            Ok(routes.iter().any(|m| match m {
                RouteNetlinkMessage::NewRoute(route) => {
                    route.header.kind == RouteType::Local
                        && route.header.destination_prefix_length == 0
                        && route.attributes.contains(&RouteAttribute::Table(table))
                        && route.attributes.contains(&RouteAttribute::Oif(lo))
                }
                _ => false,
            }))
        }
    }
}

/// `fwmark MARK/MASK pref PRIORITY lookup TABLE`.
fn fwmark_rule(family: Family, mark: Masked, priority: u32, table: u32) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(family);
    msg.header.action = RuleAction::ToTable;
    msg.header.table = header_table(table);
    msg.attributes = vec![
        RuleAttribute::Priority(priority),
        RuleAttribute::FwMark(mark.value),
        RuleAttribute::FwMask(mark.mask),
        RuleAttribute::Table(table),
    ];
    msg
}
