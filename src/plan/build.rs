//! Builds a [`Plan`] from a [`CaptureConfig`], rule for rule in the order of Istio's capture code
//! (`tools/istio-iptables/pkg/capture/run.go`), so that the iptables spelling of the plan is
//! Istio's restore text.
//!
//! [`Builder::capture`] below is that order; each step lives in the file of the part of Istio's
//! capture it mirrors. The order of the steps is the order of the rules, so a step cannot move.

mod builder;
mod dns;
mod inbound;
mod interfaces;
mod outbound;
mod routing;
mod rule_parts;
mod tproxy;

use super::model::{Chain, Family, FamilyPlan, Plan, Table, Target};
use crate::config::{CaptureConfig, InterceptMode};
use builder::Builder;
use rule_parts::{dport, tcp};

/// Builds the plan for `cfg`. Pure: no I/O.
pub fn build(cfg: &CaptureConfig) -> Plan {
    let mut b = Builder::new(cfg);
    b.capture();
    let routing = routing::routing_steps(cfg);
    let Builder { v4, v6, .. } = b;
    Plan {
        v4: FamilyPlan {
            family: Family::V4,
            ops: v4,
        },
        v6: cfg.ipv6.then_some(FamilyPlan {
            family: Family::V6,
            ops: v6,
        }),
        routing,
    }
}

impl Builder<'_> {
    fn capture(&mut self) {
        let cfg = self.cfg;
        let tproxy = cfg.mode == InterceptMode::Tproxy;

        self.exclude_interfaces(tproxy);
        self.kube_virt_returns();
        if cfg.drop_invalid {
            self.drop_invalid();
        }
        self.redirect_chains();
        self.inbound(tproxy);
        self.outbound_exemptions(tproxy);
        if let Some(dns) = &cfg.dns {
            self.dns(dns);
        }
        self.outbound_captures();
        if tproxy {
            self.tproxy_marks();
        }
    }

    /// The bodies of ISTIO_REDIRECT and ISTIO_IN_REDIRECT, after the tunnel port's exemption.
    fn redirect_chains(&mut self) {
        let cfg = self.cfg;
        // The tunnel port (HBONE) is never redirected inbound.
        self.append(
            Table::Nat,
            Chain::Inbound,
            vec![tcp(), dport(cfg.inbound_tunnel_port)],
            Target::Return,
        );
        self.append(
            Table::Nat,
            Chain::Redirect,
            vec![tcp()],
            Target::Redirect {
                to_port: cfg.proxy_port,
            },
        );
        self.append(
            Table::Nat,
            Chain::InRedirect,
            vec![tcp()],
            Target::Redirect {
                to_port: cfg.inbound_capture_port,
            },
        );
    }
}
