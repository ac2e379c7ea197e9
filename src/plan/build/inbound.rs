//! The inbound side (Istio's handleInboundPortsInclude): which connections arriving at the pod go
//! to the proxy's inbound capture port, by REDIRECT in nat or by TPROXY in mangle; and the
//! `--drop-invalid` rule in front of them.

use super::builder::{Builder, Families};
use super::rule_parts::{dport, jump, not_dst, tcp};
use crate::config::InboundPorts;
use crate::plan::model::{Chain, CtState, Match, Table, Target};

impl Builder<'_> {
    /// Drop out-of-window packets rather than let them reset the proxied connection.
    pub(super) fn drop_invalid(&mut self) {
        self.append(
            Table::Mangle,
            Chain::Prerouting,
            vec![Match::CtState(vec![CtState::Invalid])],
            jump(Chain::Drop),
        );
        self.append(Table::Mangle, Chain::Drop, vec![], Target::Drop);
    }

    pub(super) fn inbound(&mut self, tproxy: bool) {
        let cfg = self.cfg;
        if cfg.inbound_ports == InboundPorts::None {
            return;
        }
        let table = if tproxy {
            // Established connections' packets are marked and accepted (routed to lo by the
            // fwmark rule); new ones are TPROXYed to the inbound capture port.
            self.append(
                Table::Mangle,
                Chain::Divert,
                vec![],
                Target::SetMark(cfg.tproxy_mark),
            );
            self.append(Table::Mangle, Chain::Divert, vec![], Target::Accept);
            let tproxy_target = Target::Tproxy {
                on_port: cfg.inbound_capture_port,
                mark: cfg.tproxy_mark,
                mask: u32::MAX,
            };
            self.append_versioned(Table::Mangle, Chain::Tproxy, |_, lo| {
                (vec![not_dst(lo), tcp()], tproxy_target.clone())
            });
            Table::Mangle
        } else {
            Table::Nat
        };
        self.append(table, Chain::Prerouting, vec![tcp()], jump(Chain::Inbound));

        let established = || Match::CtState(vec![CtState::Related, CtState::Established]);
        match &cfg.inbound_ports {
            InboundPorts::None => {}
            InboundPorts::All { except } => {
                if !except.is_empty() {
                    let group = self.group();
                    for &port in except {
                        self.append_member(
                            group,
                            Families::Both,
                            table,
                            Chain::Inbound,
                            vec![tcp(), dport(port)],
                            Target::Return,
                        );
                    }
                }
                if tproxy {
                    self.append(
                        Table::Mangle,
                        Chain::Inbound,
                        vec![tcp(), established()],
                        jump(Chain::Divert),
                    );
                    self.append(
                        Table::Mangle,
                        Chain::Inbound,
                        vec![tcp()],
                        jump(Chain::Tproxy),
                    );
                } else {
                    self.append(
                        Table::Nat,
                        Chain::Inbound,
                        vec![tcp()],
                        jump(Chain::InRedirect),
                    );
                }
            }
            InboundPorts::Only(ports) => {
                if tproxy {
                    let (divert, redirect) = (self.group(), self.group());
                    for &port in ports {
                        self.append_member(
                            divert,
                            Families::Both,
                            Table::Mangle,
                            Chain::Inbound,
                            vec![tcp(), dport(port), established()],
                            jump(Chain::Divert),
                        );
                        self.append_member(
                            redirect,
                            Families::Both,
                            Table::Mangle,
                            Chain::Inbound,
                            vec![tcp(), dport(port)],
                            jump(Chain::Tproxy),
                        );
                    }
                } else {
                    let group = self.group();
                    for &port in ports {
                        self.append_member(
                            group,
                            Families::Both,
                            Table::Nat,
                            Chain::Inbound,
                            vec![tcp(), dport(port)],
                            jump(Chain::InRedirect),
                        );
                    }
                }
            }
        }
    }
}
