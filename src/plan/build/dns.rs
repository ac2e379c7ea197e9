//! DNS capture (Istio's SetupDNSRedir): the app's DNS to port 53 is redirected to the agent's DNS
//! listener, and the two legs of an exchange get separate conntrack zones in raw.

use super::builder::{Builder, Families};
use super::rule_parts::{dport, dst, jump, src, tcp, udp};
use crate::config::DnsCapture;
use crate::plan::model::{Chain, DNS_CAPTURE_PORT, Family, Match, Net, Table, Target};
use ipnetwork::IpNetwork;
use std::net::IpAddr;

/// Conntrack zone of the proxy's own DNS exchanges with upstream resolvers.
const DNS_ZONE_UPSTREAM: u16 = 1;
/// Conntrack zone of the app's DNS exchanges with the proxy.
const DNS_ZONE_APP: u16 = 2;

impl Builder<'_> {
    pub(super) fn dns(&mut self, dns: &DnsCapture) {
        let redirect = Target::Redirect {
            to_port: DNS_CAPTURE_PORT,
        };
        // raw OUTPUT always jumps: the proxy's own DNS needs its conntrack zone.
        self.append(Table::Raw, Chain::Output, vec![], jump(Chain::OutputDns));
        let (v4, v6): (Vec<Net>, Vec<Net>) = match dns {
            DnsCapture::All => (vec![], vec![]),
            DnsCapture::Servers { v4, v6 } => (
                v4.iter()
                    .map(|a| Net::from(IpNetwork::from(IpAddr::V4(*a))))
                    .collect(),
                v6.iter()
                    .map(|s| Net::host_written(IpAddr::V6(s.addr), &s.written))
                    .collect(),
            ),
        };
        let all = matches!(dns, DnsCapture::All);
        if all || !v4.is_empty() {
            self.append_to(
                Family::V4,
                Table::Nat,
                Chain::IstioOutput,
                vec![],
                jump(Chain::OutputDns),
            );
        }
        if all || !v6.is_empty() {
            self.append_to(
                Family::V6,
                Table::Nat,
                Chain::IstioOutput,
                vec![],
                jump(Chain::OutputDns),
            );
        }
        for proto in [tcp(), udp()] {
            if all {
                self.append(
                    Table::Nat,
                    Chain::OutputDns,
                    vec![proto.clone(), dport(53)],
                    redirect.clone(),
                );
            } else {
                for (family, servers) in [(Family::V4, &v4), (Family::V6, &v6)] {
                    let group = self.group();
                    for server in servers {
                        self.append_member(
                            group,
                            Families::Only(family),
                            Table::Nat,
                            Chain::OutputDns,
                            vec![proto.clone(), dport(53), dst(server.clone())],
                            redirect.clone(),
                        );
                    }
                }
            }
        }

        // Separate conntrack zones for proxy<->upstream and app<->proxy DNS, so that UDP
        // conntrack entries of the two legs cannot collide.
        for owner in self.proxy_owners() {
            self.append(
                Table::Raw,
                Chain::OutputDns,
                vec![udp(), dport(53), owner.clone()],
                Target::CtZone(DNS_ZONE_UPSTREAM),
            );
            self.append(
                Table::Raw,
                Chain::OutputDns,
                vec![udp(), Match::SourcePort(DNS_CAPTURE_PORT), owner],
                Target::CtZone(DNS_ZONE_APP),
            );
        }
        if all {
            self.append(Table::Raw, Chain::Prerouting, vec![], jump(Chain::Inbound));
            self.append(
                Table::Raw,
                Chain::OutputDns,
                vec![udp(), dport(53)],
                Target::CtZone(DNS_ZONE_APP),
            );
            self.append(
                Table::Raw,
                Chain::Inbound,
                vec![udp(), Match::SourcePort(53)],
                Target::CtZone(DNS_ZONE_UPSTREAM),
            );
        } else {
            for (family, servers) in [(Family::V4, &v4), (Family::V6, &v6)] {
                if !servers.is_empty() {
                    self.append_to(
                        family,
                        Table::Raw,
                        Chain::Prerouting,
                        vec![],
                        jump(Chain::Inbound),
                    );
                }
                for server in servers {
                    self.append_to(
                        family,
                        Table::Raw,
                        Chain::OutputDns,
                        vec![udp(), dport(53), dst(server.clone())],
                        Target::CtZone(DNS_ZONE_APP),
                    );
                    self.append_to(
                        family,
                        Table::Raw,
                        Chain::Inbound,
                        vec![udp(), Match::SourcePort(53), src(server.clone())],
                        Target::CtZone(DNS_ZONE_UPSTREAM),
                    );
                }
            }
        }
    }
}
