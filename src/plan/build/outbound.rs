//! The outbound side: ISTIO_OUTPUT, which decides which connections the pod opens go to the
//! proxy's outbound port. First the exemptions (excluded ports, the proxy's passthrough, the
//! proxy's own traffic by owner, owner groups), then, after DNS, the captures (local traffic
//! returns, excluded and included ranges, included ports; Istio's handleOutboundIncludeRules).

use super::builder::{Builder, Families};
use super::rule_parts::{
    dport, dst, gid, iif, jump, marked, not_dports, not_dst, oif, passthrough_net, src, tcp, udp,
    uid,
};
use crate::config::{OutboundCidrs, OwnerGroups};
use crate::plan::model::{Chain, Family, Match, Table, Target};
use ipnetwork::IpNetwork;

impl Builder<'_> {
    /// The ISTIO_OUTPUT rules that leave a connection uncaptured, up to the DNS rules.
    pub(super) fn outbound_exemptions(&mut self, tproxy: bool) {
        let cfg = self.cfg;
        self.append(Table::Nat, Chain::Output, vec![], jump(Chain::IstioOutput));

        if tproxy && cfg.tproxy_return_marked {
            // A transparent proxy running as the proxy uid connects to the app from the peer's
            // address with the TPROXY mark; without this the uid rule below would send that
            // connection back into the inbound listener (Istio avoids it by running Envoy as
            // uid 0 in TPROXY pods). Only sockets with SO_MARK, which takes CAP_NET_ADMIN, match.
            self.append(
                Table::Nat,
                Chain::IstioOutput,
                vec![oif("lo"), tcp(), marked(cfg.tproxy_mark)],
                Target::Return,
            );
        }

        // Port exclusions come before the rules that send connections back to self.
        if !cfg.outbound_ports_exclude.is_empty() {
            let (tcp_group, udp_group) = (self.group(), self.group());
            for &port in &cfg.outbound_ports_exclude {
                self.append_member(
                    tcp_group,
                    Families::Both,
                    Table::Nat,
                    Chain::IstioOutput,
                    vec![tcp(), dport(port)],
                    Target::Return,
                );
                self.append_member(
                    udp_group,
                    Families::Both,
                    Table::Nat,
                    Chain::IstioOutput,
                    vec![udp(), dport(port)],
                    Target::Return,
                );
            }
        }

        // The proxy's inbound passthrough connects to the app from 127.0.0.6 / ::6: never recapture.
        if cfg.strict {
            // Istio's rule matches whoever binds 127.0.0.6, which lets any process of the pod
            // skip the rest of ISTIO_OUTPUT (DNS capture to a resolver on lo, for one).
            for &id in &cfg.proxy_uids {
                self.append_versioned(Table::Nat, Chain::IstioOutput, |f, _| {
                    (
                        vec![oif("lo"), src(passthrough_net(f)), uid(id, false)],
                        Target::Return,
                    )
                });
            }
        } else {
            self.append_versioned(Table::Nat, Chain::IstioOutput, |f, _| {
                (vec![oif("lo"), src(passthrough_net(f))], Target::Return)
            });
        }

        let include_has_loopback = match &cfg.outbound_cidrs {
            OutboundCidrs::All => false,
            OutboundCidrs::Only(nets) => nets.iter().any(|net| net.ip().is_loopback()),
        };
        let dns_on = cfg.dns.is_some();
        for &id in &cfg.proxy_uids {
            self.proxy_owner_rules(
                uid(id, false),
                uid(id, true),
                include_has_loopback,
                dns_on,
                dns_on,
            );
        }
        for &id in self.proxy_gids() {
            // Istio's gid rule lacks the port-53 exclusion of the uid rule; kept as Istio has it.
            self.proxy_owner_rules(
                gid(id, false),
                gid(id, true),
                include_has_loopback,
                false,
                dns_on,
            );
        }

        self.owner_groups();
    }

    /// The three ISTIO_OUTPUT rules for one proxy uid or gid: its loopback calls to a service VIP
    /// go back to the inbound side; other local callers on lo are left alone; and the proxy's own
    /// traffic is never captured again.
    fn proxy_owner_rules(
        &mut self,
        owner: Match,
        not_owner: Match,
        include_has_loopback: bool,
        skip_dns_port: bool,
        dns_on: bool,
    ) {
        let tunnel = self.cfg.inbound_tunnel_port;
        let port_match = if skip_dns_port {
            not_dports(vec![53, tunnel])
        } else {
            not_dports(vec![tunnel])
        };
        self.append_versioned(Table::Nat, Chain::IstioOutput, |_, lo| {
            (
                vec![
                    oif("lo"),
                    not_dst(lo),
                    tcp(),
                    port_match.clone(),
                    owner.clone(),
                ],
                jump(Chain::InRedirect),
            )
        });
        // An explicitly included loopback range must stay captured.
        if !include_has_loopback {
            let matches = if dns_on {
                // Leave TCP DNS to a server on localhost capturable.
                vec![oif("lo"), tcp(), not_dports(vec![53]), not_owner]
            } else {
                vec![oif("lo"), not_owner]
            };
            self.append(Table::Nat, Chain::IstioOutput, matches, Target::Return);
        }
        self.append(Table::Nat, Chain::IstioOutput, vec![owner], Target::Return);
    }

    fn owner_groups(&mut self) {
        match &self.cfg.owner_groups {
            OwnerGroups::AllExcept(groups) => {
                for group in groups {
                    let m = Match::GidOwner {
                        gid: group.clone(),
                        negated: false,
                    };
                    self.append(Table::Nat, Chain::IstioOutput, vec![m], Target::Return);
                }
            }
            OwnerGroups::Only(groups) => {
                let matches = groups
                    .iter()
                    .map(|g| Match::GidOwner {
                        gid: g.clone(),
                        negated: true,
                    })
                    .collect();
                self.append(Table::Nat, Chain::IstioOutput, matches, Target::Return);
            }
        }
    }

    /// The ISTIO_OUTPUT rules after DNS: what is left alone, then what goes to ISTIO_REDIRECT.
    pub(super) fn outbound_captures(&mut self) {
        let cfg = self.cfg;
        // Local traffic (Envoy-aware apps, container to container) is not captured.
        self.append_versioned(Table::Nat, Chain::IstioOutput, |_, lo| {
            (vec![dst(lo)], Target::Return)
        });

        let (v4_excludes, v6_excludes) = split_families(&cfg.outbound_cidrs_exclude);
        self.cidr_returns(Family::V4, &v4_excludes);
        self.cidr_returns(Family::V6, &v6_excludes);

        if !cfg.outbound_ports.is_empty() {
            let group = self.group();
            for &port in &cfg.outbound_ports {
                self.append_member(
                    group,
                    Families::Both,
                    Table::Nat,
                    Chain::IstioOutput,
                    vec![tcp(), dport(port)],
                    jump(Chain::Redirect),
                );
            }
        }

        match &cfg.outbound_cidrs {
            OutboundCidrs::All => {
                for family in [Family::V4, Family::V6] {
                    self.append_to(
                        family,
                        Table::Nat,
                        Chain::IstioOutput,
                        vec![],
                        jump(Chain::Redirect),
                    );
                    for iface in &cfg.kube_virt_interfaces {
                        self.insert(
                            Families::Only(family),
                            Table::Nat,
                            Chain::Prerouting,
                            1,
                            vec![iif(iface)],
                            jump(Chain::Redirect),
                        );
                    }
                }
            }
            OutboundCidrs::Only(nets) => {
                let (v4, v6) = split_families(nets);
                self.cidr_redirects(Family::V4, &v4);
                self.cidr_redirects(Family::V6, &v6);
            }
        }
    }

    fn cidr_returns(&mut self, family: Family, nets: &[IpNetwork]) {
        if nets.is_empty() {
            return;
        }
        let group = self.group();
        for net in nets {
            self.append_member(
                group,
                Families::Only(family),
                Table::Nat,
                Chain::IstioOutput,
                vec![dst(*net)],
                Target::Return,
            );
        }
    }

    fn cidr_redirects(&mut self, family: Family, nets: &[IpNetwork]) {
        if nets.is_empty() {
            return;
        }
        let group = self.group();
        for net in nets {
            for iface in &self.cfg.kube_virt_interfaces {
                self.insert(
                    Families::Only(family),
                    Table::Nat,
                    Chain::Prerouting,
                    1,
                    vec![iif(iface), dst(*net)],
                    jump(Chain::Redirect),
                );
            }
            self.append_member(
                group,
                Families::Only(family),
                Table::Nat,
                Chain::IstioOutput,
                vec![dst(*net)],
                jump(Chain::Redirect),
            );
        }
    }
}

fn split_families(nets: &[IpNetwork]) -> (Vec<IpNetwork>, Vec<IpNetwork>) {
    nets.iter().partition(|n| n.is_ipv4())
}
