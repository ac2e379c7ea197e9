//! Builds a [`Plan`] from a [`CaptureConfig`], rule for rule in the order of Istio's capture code
//! (`tools/istio-iptables/pkg/capture/run.go`), so that the iptables spelling of the plan is
//! Istio's restore text.

use super::{
    Chain, CtState, Family, FamilyPlan, ListGroup, Match, Net, Plan, Position, Protocol,
    RoutingStep, Rule, RuleOp, Table, Target, passthrough_source,
};
use crate::config::{
    CaptureConfig, DnsCapture, InboundPorts, InterceptMode, OutboundCidrs, OwnerGroups,
};
use ipnetwork::{IpNetwork, Ipv6Network};
use std::net::{IpAddr, Ipv6Addr};

/// The agent's DNS listener (Istio's IstioAgentDNSListenerPort).
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// The mark the proxy's outbound-to-inbound loopback packets get in TPROXY mode (Istio's OutboundMark).
pub const OUTBOUND_MARK: u32 = 1338;
/// Conntrack zone of the proxy's own DNS exchanges with upstream resolvers.
const DNS_ZONE_UPSTREAM: u16 = 1;
/// Conntrack zone of the app's DNS exchanges with the proxy.
const DNS_ZONE_APP: u16 = 2;

/// Builds the plan for `cfg`. Pure: no I/O.
pub fn build(cfg: &CaptureConfig) -> Plan {
    let mut b = Builder::new(cfg);
    b.capture();
    let routing = routing_steps(cfg);
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

fn routing_steps(cfg: &CaptureConfig) -> Vec<RoutingStep> {
    let mut steps = Vec::new();
    let families: &[Family] = if cfg.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    // As Istio's configureTProxyRoutes (tools/common/tproxy): the fwmark rule and route serve
    // TPROXYed inbound connections only, so `-b ""` adds neither.
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

/// [`passthrough_source`] as a host network, for a rule's source match or lo's address.
fn passthrough_net(family: Family) -> IpNetwork {
    IpNetwork::from(passthrough_source(family))
}

fn is_loopback(net: &IpNetwork) -> bool {
    net.ip().is_loopback()
}

/// Which families a rule goes to.
#[derive(Clone, Copy)]
enum Families {
    Both,
    Only(Family),
}

struct Builder<'a> {
    cfg: &'a CaptureConfig,
    v4: Vec<RuleOp>,
    v6: Vec<RuleOp>,
    next_group: u32,
}

// Short constructors keep the rule lists below readable next to Istio's.
fn tcp() -> Match {
    Match::Protocol(Protocol::Tcp)
}
fn udp() -> Match {
    Match::Protocol(Protocol::Udp)
}
fn dport(port: u16) -> Match {
    Match::DestinationPorts {
        ports: vec![port],
        negated: false,
    }
}
fn not_dports(ports: Vec<u16>) -> Match {
    Match::DestinationPorts {
        ports,
        negated: true,
    }
}
fn iif(name: &str) -> Match {
    Match::InInterface(name.to_owned())
}
fn oif(name: &str) -> Match {
    Match::OutInterface(name.to_owned())
}
fn dst(net: impl Into<Net>) -> Match {
    Match::Destination {
        net: net.into(),
        negated: false,
    }
}
fn not_dst(net: impl Into<Net>) -> Match {
    Match::Destination {
        net: net.into(),
        negated: true,
    }
}
fn src(net: impl Into<Net>) -> Match {
    Match::Source {
        net: net.into(),
        negated: false,
    }
}
fn uid(uid: u32, negated: bool) -> Match {
    Match::UidOwner { uid, negated }
}
fn gid(gid: u32, negated: bool) -> Match {
    Match::GidOwner {
        gid: super::GroupRef::Id(gid),
        negated,
    }
}
fn jump(chain: Chain) -> Target {
    Target::Jump(chain)
}

impl<'a> Builder<'a> {
    fn new(cfg: &'a CaptureConfig) -> Self {
        Builder {
            cfg,
            v4: Vec::new(),
            v6: Vec::new(),
            next_group: 0,
        }
    }

    fn group(&mut self) -> ListGroup {
        self.next_group += 1;
        ListGroup(self.next_group)
    }

    fn push(
        &mut self,
        families: Families,
        (table, chain): (Table, Chain),
        position: Position,
        rule: Rule,
        group: Option<ListGroup>,
    ) {
        let op = RuleOp {
            table,
            chain,
            position,
            rule,
            group,
        };
        match families {
            Families::Both => {
                self.v4.push(op.clone());
                self.v6.push(op);
            }
            Families::Only(Family::V4) => self.v4.push(op),
            Families::Only(Family::V6) => self.v6.push(op),
        }
    }

    /// Appends a rule to both families.
    fn append(&mut self, table: Table, chain: Chain, matches: Vec<Match>, target: Target) {
        self.push(
            Families::Both,
            (table, chain),
            Position::Append,
            Rule { matches, target },
            None,
        );
    }

    /// Appends a rule that is one element's copy of a list (see [`ListGroup`]).
    fn append_member(
        &mut self,
        group: ListGroup,
        families: Families,
        table: Table,
        chain: Chain,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            families,
            (table, chain),
            Position::Append,
            Rule { matches, target },
            Some(group),
        );
    }

    fn append_to(
        &mut self,
        family: Family,
        table: Table,
        chain: Chain,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            Families::Only(family),
            (table, chain),
            Position::Append,
            Rule { matches, target },
            None,
        );
    }

    fn insert(
        &mut self,
        families: Families,
        table: Table,
        chain: Chain,
        index: u32,
        matches: Vec<Match>,
        target: Target,
    ) {
        self.push(
            families,
            (table, chain),
            Position::Insert(index),
            Rule { matches, target },
            None,
        );
    }

    /// Appends one rule per family whose matches depend on the family (Istio's
    /// AppendVersionedRule); `rule` gets the family and its loopback network.
    fn append_versioned(
        &mut self,
        table: Table,
        chain: Chain,
        rule: impl Fn(Family, IpNetwork) -> (Vec<Match>, Target),
    ) {
        for family in [Family::V4, Family::V6] {
            let (matches, target) = rule(family, self.loopback(family));
            self.append_to(family, table, chain, matches, target);
        }
    }

    /// The loopback network the rules treat as "local" (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR; ::1/128).
    fn loopback(&self, family: Family) -> IpNetwork {
        match family {
            Family::V4 => IpNetwork::V4(self.cfg.ipv4_loopback_cidr),
            Family::V6 => IpNetwork::V6(Ipv6Network::new(Ipv6Addr::LOCALHOST, 128).expect("/128")),
        }
    }

    fn capture(&mut self) {
        let cfg = self.cfg;
        let tproxy = cfg.mode == InterceptMode::Tproxy;

        self.exclude_interfaces(tproxy);

        // Kube-virt interfaces (e.g. KubeVirt's VM bridge) are not captured inbound.
        for iface in &cfg.kube_virt_interfaces {
            self.insert(
                Families::Both,
                Table::Nat,
                Chain::Prerouting,
                1,
                vec![iif(iface)],
                Target::Return,
            );
        }

        if cfg.drop_invalid {
            // Drop out-of-window packets rather than let them reset the proxied connection.
            self.append(
                Table::Mangle,
                Chain::Prerouting,
                vec![Match::CtState(vec![CtState::Invalid])],
                jump(Chain::Drop),
            );
            self.append(Table::Mangle, Chain::Drop, vec![], Target::Drop);
        }

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

        self.inbound(tproxy);

        self.append(Table::Nat, Chain::Output, vec![], jump(Chain::IstioOutput));

        if tproxy && cfg.tproxy_return_marked {
            // A transparent proxy running as the proxy uid connects to the app from the peer's
            // address with the TPROXY mark; without this the uid rule below would send that
            // connection back into the inbound listener (Istio avoids it by running Envoy as
            // uid 0 in TPROXY pods). Only sockets with SO_MARK, which takes CAP_NET_ADMIN, match.
            let marked = Match::Mark {
                value: cfg.tproxy_mark,
                negated: false,
            };
            self.append(
                Table::Nat,
                Chain::IstioOutput,
                vec![oif("lo"), tcp(), marked],
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
            OutboundCidrs::Only(nets) => nets.iter().any(is_loopback),
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
        for &id in proxy_gids(cfg) {
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

        if let Some(dns) = &cfg.dns {
            self.dns(dns);
        }

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

        if tproxy {
            self.tproxy_marks();
        }
    }

    fn exclude_interfaces(&mut self, tproxy: bool) {
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

    fn inbound(&mut self, tproxy: bool) {
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

    fn dns(&mut self, dns: &DnsCapture) {
        let cfg = self.cfg;
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
        let owners: Vec<(Match,)> = cfg
            .proxy_uids
            .iter()
            .map(|&u| (uid(u, false),))
            .chain(proxy_gids(cfg).iter().map(|&g| (gid(g, false),)))
            .collect();
        for (owner,) in owners {
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

    fn tproxy_marks(&mut self) {
        let cfg = self.cfg;
        let mark = cfg.tproxy_mark;
        // Remember the proxy's original_src mark on the connection.
        self.append(
            Table::Mangle,
            Chain::Prerouting,
            vec![
                tcp(),
                Match::Mark {
                    value: mark,
                    negated: false,
                },
            ],
            Target::SaveMark,
        );
        // Packets the proxy already marked are not marked again.
        self.append(
            Table::Mangle,
            Chain::Output,
            vec![
                tcp(),
                oif("lo"),
                Match::Mark {
                    value: mark,
                    negated: false,
                },
            ],
            Target::Return,
        );
        // The proxy's outbound leg to the pod's own address over lo is marked 1338 so that
        // ISTIO_INBOUND captures it (app -> VIP -> proxy outbound -> proxy inbound -> app).
        for owner in cfg
            .proxy_uids
            .iter()
            .map(|&u| uid(u, false))
            .chain(proxy_gids(cfg).iter().map(|&g| gid(g, false)))
        {
            self.append_versioned(Table::Mangle, Chain::Output, |_, lo| {
                (
                    vec![not_dst(lo), tcp(), oif("lo"), owner.clone()],
                    Target::SetMark(OUTBOUND_MARK),
                )
            });
        }
        // Replies of TPROXYed connections follow the fwmark route back to lo.
        self.append(
            Table::Mangle,
            Chain::Output,
            vec![tcp(), Match::ConnMark(mark)],
            Target::RestoreMark,
        );
        // Guards in front of ISTIO_INBOUND: already-diverted packets, the proxy's passthrough
        // from 127.0.0.6/::6, and the app's own calls over lo are never TPROXYed.
        self.insert(
            Families::Both,
            Table::Mangle,
            Chain::Inbound,
            1,
            vec![
                tcp(),
                Match::Mark {
                    value: mark,
                    negated: false,
                },
            ],
            Target::Return,
        );
        for family in [Family::V4, Family::V6] {
            self.insert(
                Families::Only(family),
                Table::Mangle,
                Chain::Inbound,
                2,
                vec![tcp(), src(passthrough_net(family)), iif("lo")],
                Target::Return,
            );
        }
        self.insert(
            Families::Both,
            Table::Mangle,
            Chain::Inbound,
            3,
            vec![
                tcp(),
                iif("lo"),
                Match::Mark {
                    value: OUTBOUND_MARK,
                    negated: true,
                },
            ],
            Target::Return,
        );
    }
}

/// The proxy gids whose traffic is exempt: none under --strict, which identifies the proxy by
/// uid only (a gid rule matches every process whose primary group is the proxy's, e.g. an app
/// container run with `runAsGroup: 1337`).
fn proxy_gids(cfg: &CaptureConfig) -> &[u32] {
    if cfg.strict { &[] } else { &cfg.proxy_gids }
}

fn split_families(nets: &[IpNetwork]) -> (Vec<IpNetwork>, Vec<IpNetwork>) {
    nets.iter().partition(|n| n.is_ipv4())
}
