use super::*;
use crate::config::{
    CaptureConfig, DnsCapture, DnsServerV6, InboundPorts, InterceptMode, OutboundCidrs, OwnerGroups,
};
use ipnetwork::IpNetwork;
use std::collections::HashSet;

/// Istio's default injected istio-init, IPv4 only.
fn default_config() -> CaptureConfig {
    CaptureConfig {
        proxy_port: 15001,
        inbound_capture_port: 15006,
        inbound_tunnel_port: 15008,
        proxy_uids: vec![1337],
        proxy_gids: vec![1337],
        mode: InterceptMode::Redirect,
        inbound_ports: InboundPorts::All {
            except: vec![15090, 15021, 15020],
        },
        exclude_interfaces: vec![],
        kube_virt_interfaces: vec![],
        outbound_cidrs: OutboundCidrs::All,
        outbound_cidrs_exclude: vec![],
        outbound_ports: vec![],
        outbound_ports_exclude: vec![],
        tproxy_mark: 1337,
        tproxy_route_table: 133,
        dns: None,
        drop_invalid: false,
        owner_groups: OwnerGroups::AllExcept(vec![]),
        ipv4_loopback_cidr: "127.0.0.1/32".parse().unwrap(),
        ipv6: false,
        tproxy_return_marked: false,
        strict: false,
    }
}

/// A spread of configurations covering every branch of the builder.
fn configs() -> Vec<CaptureConfig> {
    let net = |s: &str| s.parse::<IpNetwork>().unwrap();
    let mut out = vec![default_config()];
    for mode in [InterceptMode::Redirect, InterceptMode::Tproxy] {
        for ipv6 in [false, true] {
            for inbound in [
                InboundPorts::None,
                InboundPorts::All { except: vec![1, 2] },
                InboundPorts::Only(vec![80, 443]),
            ] {
                let mut c = default_config();
                c.mode = mode;
                c.ipv6 = ipv6;
                c.inbound_ports = inbound;
                c.exclude_interfaces = vec!["exc0".into()];
                c.kube_virt_interfaces = vec!["kv0".into(), "kv1".into()];
                c.outbound_cidrs =
                    OutboundCidrs::Only(vec![net("10.0.0.0/8"), net("2001:db8::/32")]);
                c.outbound_cidrs_exclude = vec![net("10.1.0.0/16"), net("2001:db8:1::/48")];
                c.outbound_ports = vec![7777];
                c.outbound_ports_exclude = vec![5432, 6379];
                c.drop_invalid = true;
                c.dns = Some(DnsCapture::Servers {
                    v4: vec!["192.0.2.53".parse().unwrap()],
                    v6: vec![DnsServerV6 {
                        addr: "2001:db8::53".parse().unwrap(),
                        written: "2001:db8::53".into(),
                    }],
                });
                c.owner_groups =
                    OwnerGroups::Only(vec![GroupRef::Id(5), GroupRef::Name("app".into())]);
                out.push(c.clone());
                c.dns = Some(DnsCapture::All);
                c.outbound_cidrs = OutboundCidrs::All;
                c.owner_groups = OwnerGroups::AllExcept(vec![GroupRef::Id(7)]);
                out.push(c);
            }
        }
    }
    out
}

#[test]
fn istio_default_has_istio_rule_count() {
    let plan = build(&default_config());
    assert!(plan.v6.is_none(), "IPv6 off: no IPv6 rules at all");
    assert!(
        plan.routing.is_empty(),
        "REDIRECT over IPv4 needs no routing step"
    );
    // 18 rules: the tunnel, three exclusions and the catch-all inbound, the two redirects,
    // the two jumps, the 127.0.0.6 passthrough, 3 uid + 3 gid rules, loopback, catch-all outbound.
    assert_eq!(plan.v4.ops.len(), 18);
    assert_eq!(plan.v4.tables(), vec![Table::Nat]);
    assert_eq!(
        plan.v4.chains(Table::Nat),
        vec![
            Chain::Inbound,
            Chain::Redirect,
            Chain::InRedirect,
            Chain::IstioOutput
        ]
    );
}

#[test]
fn every_jump_lands_on_a_chain_with_rules_in_the_same_table() {
    for cfg in configs() {
        let plan = build(&cfg);
        for fam in plan.families() {
            for op in &fam.ops {
                if let Target::Jump(to) = op.rule.target {
                    assert!(
                        fam.ops.iter().any(|o| o.table == op.table && o.chain == to),
                        "{:?} {:?}: jump to empty {to:?} in {cfg:?}",
                        fam.family,
                        op.table
                    );
                }
            }
        }
    }
}

#[test]
fn ports_always_follow_a_protocol_and_addresses_match_the_family() {
    for cfg in configs() {
        let plan = build(&cfg);
        for fam in plan.families() {
            for op in &fam.ops {
                let mut proto = false;
                for m in &op.rule.matches {
                    match m {
                        Match::Protocol(_) => proto = true,
                        Match::DestinationPorts { .. } | Match::SourcePort(_) => {
                            assert!(proto, "{op:?}")
                        }
                        Match::Source { net, .. } | Match::Destination { net, .. } => {
                            assert_eq!(
                                net.is_ipv4(),
                                fam.family == Family::V4,
                                "{op:?} in {:?}",
                                fam.family
                            )
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

#[test]
fn list_groups_hold_one_list_each() {
    for cfg in configs() {
        let plan = build(&cfg);
        for fam in plan.families() {
            let mut groups: Vec<ListGroup> = fam.ops.iter().filter_map(|o| o.group).collect();
            groups.dedup();
            for g in groups.into_iter().collect::<HashSet<_>>() {
                let members: Vec<&RuleOp> = fam.ops.iter().filter(|o| o.group == Some(g)).collect();
                let first = members[0];
                for m in &members {
                    assert_eq!(
                        (m.table, m.chain, m.position, &m.rule.target),
                        (
                            first.table,
                            first.chain,
                            Position::Append,
                            &first.rule.target
                        )
                    );
                    assert_eq!(m.rule.matches.len(), first.rule.matches.len());
                    let differing = m
                        .rule
                        .matches
                        .iter()
                        .zip(&first.rule.matches)
                        .filter(|(a, b)| a != b)
                        .count();
                    assert!(
                        differing <= 1,
                        "members differ in more than one match: {m:?} / {first:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn inserts_take_effect_in_chain_order() {
    let mut cfg = default_config();
    cfg.kube_virt_interfaces = vec!["kv0".into(), "kv1".into()];
    cfg.outbound_cidrs = OutboundCidrs::Only(vec!["10.0.0.0/8".parse().unwrap()]);
    let plan = build(&cfg);
    let rules = plan.v4.chain_rules(Table::Nat, Chain::Prerouting);
    let iface = |r: &Rule| match &r.matches[0] {
        Match::InInterface(i) => i.clone(),
        m => panic!("{m:?}"),
    };
    // Each `-I PREROUTING 1` goes in front: the last inserted comes first.
    let order: Vec<(String, bool)> = rules[..4]
        .iter()
        .map(|(r, _)| (iface(r), r.target == Target::Return))
        .collect();
    assert_eq!(
        order,
        [
            ("kv1".to_owned(), false),
            ("kv0".to_owned(), false),
            ("kv1".to_owned(), true),
            ("kv0".to_owned(), true)
        ]
    );
    assert_eq!(rules.last().unwrap().0.target, Target::Jump(Chain::Inbound));
}

#[test]
fn tproxy_needs_its_routing_and_ipv6_its_passthrough_address() {
    let mut cfg = default_config();
    cfg.mode = InterceptMode::Tproxy;
    cfg.ipv6 = true;
    let plan = build(&cfg);
    assert_eq!(
        plan.routing,
        vec![
            RoutingStep::FwmarkRule {
                family: Family::V4,
                mark: 1337,
                table: 133
            },
            RoutingStep::LocalDefaultRoute {
                family: Family::V4,
                table: 133
            },
            RoutingStep::FwmarkRule {
                family: Family::V6,
                mark: 1337,
                table: 133
            },
            RoutingStep::LocalDefaultRoute {
                family: Family::V6,
                table: 133
            },
            RoutingStep::LoopbackAddress {
                addr: "::6/128".parse().unwrap()
            },
        ]
    );
    cfg.mode = InterceptMode::Redirect;
    assert_eq!(
        build(&cfg).routing,
        vec![RoutingStep::LoopbackAddress {
            addr: "::6/128".parse().unwrap()
        }]
    );
}

#[test]
fn tproxy_without_inbound_capture_adds_no_routing() {
    // Istio's configureTProxyRoutes adds the fwmark rule and route only when
    // InboundPortsInclude is not empty; ::6 on lo is IPv6's, whatever the inbound capture.
    let mut cfg = default_config();
    cfg.mode = InterceptMode::Tproxy;
    cfg.ipv6 = true;
    let capturing = build(&cfg).routing;
    cfg.inbound_ports = InboundPorts::None;
    assert_eq!(
        build(&cfg).routing,
        vec![RoutingStep::LoopbackAddress {
            addr: "::6/128".parse().unwrap()
        }]
    );
    cfg.ipv6 = false;
    assert_eq!(build(&cfg).routing, vec![]);
    cfg.ipv6 = true;
    cfg.inbound_ports = InboundPorts::Only(vec![80]);
    assert_eq!(
        build(&cfg).routing,
        capturing,
        "any inbound port needs them"
    );
}

#[test]
fn an_included_loopback_range_stays_captured() {
    let mut cfg = default_config();
    cfg.outbound_cidrs = OutboundCidrs::Only(vec!["127.0.0.0/8".parse().unwrap()]);
    let plan = build(&cfg);
    let lo_return = plan.v4.ops.iter().any(|o| {
        o.rule.target == Target::Return
            && o.rule
                .matches
                .iter()
                .any(|m| matches!(m, Match::UidOwner { negated: true, .. }))
    });
    assert!(
        !lo_return,
        "no '-o lo ! --uid-owner' RETURN when loopback is included"
    );
}

#[test]
fn the_marked_return_is_opt_in_and_tproxy_only() {
    let mut cfg = default_config();
    cfg.mode = InterceptMode::Tproxy;
    let istio = build(&cfg);
    cfg.tproxy_return_marked = true;
    let with = build(&cfg);
    let marked_return = |p: &Plan| {
        p.v4.chain_rules(Table::Nat, Chain::IstioOutput)
            .first()
            .map(|(r, _)| {
                r.matches.iter().any(|m| {
                    matches!(
                        m,
                        Match::Mark {
                            value: 1337,
                            negated: false
                        }
                    )
                })
            })
            .unwrap_or(false)
    };
    assert!(!marked_return(&istio), "default output stays Istio's");
    assert!(
        marked_return(&with),
        "first rule of ISTIO_OUTPUT when asked for"
    );
    assert_eq!(with.v4.ops.len(), istio.v4.ops.len() + 1);
    cfg.mode = InterceptMode::Redirect;
    let redirect = build(&cfg);
    cfg.tproxy_return_marked = false;
    assert_eq!(redirect, build(&cfg), "no effect in REDIRECT mode");
}

#[test]
fn strict_exempts_the_proxy_by_uid_only() {
    let mut cfg = default_config();
    cfg.strict = true;
    let plan = build(&cfg);
    for op in &plan.v4.ops {
        assert!(
            !op.rule
                .matches
                .iter()
                .any(|m| matches!(m, Match::GidOwner { .. })),
            "{op:?}"
        );
        if op
            .rule
            .matches
            .iter()
            .any(|m| matches!(m, Match::Source { .. }))
        {
            assert!(
                op.rule.matches.contains(&Match::UidOwner {
                    uid: 1337,
                    negated: false
                }),
                "{op:?}"
            );
        }
    }
    // Same capture decisions otherwise: 3 gid rules fewer than Istio's 18.
    assert_eq!(plan.v4.ops.len(), 15);
}
