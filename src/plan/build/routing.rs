//! The routing steps next to the rules (Istio's configureTProxyRoutes in tools/common/tproxy, and
//! the address the IPv6 passthrough binds).

use super::rule_parts::passthrough_net;
use crate::config::{CaptureConfig, InboundPorts, InterceptMode};
use crate::plan::model::{Family, RoutingStep};

pub(super) fn routing_steps(cfg: &CaptureConfig) -> Vec<RoutingStep> {
    let mut steps = Vec::new();
    let families: &[Family] = if cfg.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    // The fwmark rule and route serve TPROXYed inbound connections only, so `-b ""` adds neither.
    if cfg.mode == InterceptMode::Tproxy && cfg.inbound_ports != InboundPorts::None {
        for &family in families {
            steps.push(RoutingStep::FwmarkRule {
                family,
                mark: cfg.tproxy_mark,
                table: cfg.tproxy_route_table,
            });
            steps.push(RoutingStep::LocalDefaultRoute {
                family,
                table: cfg.tproxy_route_table,
            });
        }
    }
    if cfg.ipv6 {
        // The proxy binds ::6 for inbound passthrough; IPv6 lo only has ::1 by default.
        steps.push(RoutingStep::LoopbackAddress {
            addr: passthrough_net(Family::V6),
        });
    }
    steps
}
