//! Interfaces whose traffic is never captured: `--exclude-interfaces` in both directions (and in
//! mangle too under TPROXY), and kube-virt interfaces inbound.

use super::builder::{Builder, Families};
use super::rule_parts::{iif, oif};
use crate::plan::model::{Chain, Table, Target};

impl Builder<'_> {
    pub(super) fn exclude_interfaces(&mut self, tproxy: bool) {
        let ifaces = &self.cfg.exclude_interfaces;
        for iface in ifaces {
            self.append(
                Table::Nat,
                Chain::Prerouting,
                vec![iif(iface)],
                Target::Return,
            );
            self.append(Table::Nat, Chain::Output, vec![oif(iface)], Target::Return);
        }
        if tproxy {
            for iface in ifaces {
                self.append(
                    Table::Mangle,
                    Chain::Prerouting,
                    vec![iif(iface)],
                    Target::Return,
                );
                self.append(
                    Table::Mangle,
                    Chain::Output,
                    vec![oif(iface)],
                    Target::Return,
                );
            }
        }
    }

    /// Kube-virt interfaces (e.g. KubeVirt's VM bridge) are not captured inbound; their traffic
    /// to captured destinations goes to the outbound side (see the outbound captures).
    pub(super) fn kube_virt_returns(&mut self) {
        for iface in &self.cfg.kube_virt_interfaces {
            self.insert(
                Families::Both,
                Table::Nat,
                Chain::Prerouting,
                1,
                vec![iif(iface)],
                Target::Return,
            );
        }
    }
}
