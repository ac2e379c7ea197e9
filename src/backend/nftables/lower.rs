//! Lowering a [`Plan`] to the nftables description ([`Spec`]).
//!
//! Three things happen here that the iptables spelling does not do:
//! - the members of a [`ListGroup`] become one rule whose varying port or address is a set;
//! - the IPv4 and IPv6 rules of a chain are merged so that each family sees its own rules in its
//!   own order: rules common to both are written once, the others are qualified with
//!   `meta nfproto` (with IPv6 off every rule is IPv4-only, so IPv6 traffic is untouched);
//! - address lists are deduplicated and merged the way `nft` merges them, then written as
//!   networks grouped by prefix length, each group one hash set looked up after masking the
//!   address (ipset's `hash:net` layout; see [`AddrValue::Networks`] and [`super::prefix`]);
//!   port lists become `protocol . port` hash sets. The netlink path installs what `nft -f` of
//!   the script does.

use super::ir::{
    AddrField, AddrValue, ChainSpec, Dir, Gid, Item, PortField, PortValue, RuleSpec, Spec,
    TableSpec, Verdict,
};
use super::names::{TABLES, base_chain, chain_name, table_name};
use super::prefix::{addr_values, family_of};
use crate::plan::{
    Chain, CtState, Family, FamilyPlan, GroupRef, ListGroup, Match, Plan, Protocol, Rule, Table,
    Target,
};
use ipnetwork::IpNetwork;

/// nft's conntrack state bits.
pub fn ct_state_bit(state: CtState) -> u32 {
    match state {
        CtState::Invalid => 1,
        CtState::Established => 2,
        CtState::Related => 4,
    }
}

impl Spec {
    /// The description of `plan`. Group names are resolved with `gid_of`.
    pub fn build(plan: &Plan, gid_of: &dyn Fn(&str) -> Option<u32>) -> Spec {
        let mut tables = Vec::new();
        for table in TABLES {
            let families: Vec<&FamilyPlan> = plan.families().collect();
            let mut chains: Vec<Chain> = Vec::new();
            // Base chains first (as Istio creates them), then the others by first appearance.
            for builtin in [Chain::Prerouting, Chain::Output] {
                if families
                    .iter()
                    .any(|f| f.chains_with_rules(table).contains(&builtin))
                {
                    chains.push(builtin);
                }
            }
            for f in &families {
                for c in f.chains_with_rules(table) {
                    if !chains.contains(&c) {
                        chains.push(c);
                    }
                    // A jump target must exist even if no rule lands in it.
                    for op in f.ops.iter().filter(|o| o.table == table && o.chain == c) {
                        if let Target::Jump(t) = op.rule.target
                            && !chains.contains(&t)
                        {
                            chains.push(t);
                        }
                    }
                }
            }
            if chains.is_empty() {
                continue;
            }
            let mut specs = Vec::new();
            for chain in chains {
                let v4 = merged_rules(&plan.v4, table, chain);
                let rules = match &plan.v6 {
                    Some(v6) => interleave(v4, merged_rules(v6, table, chain)),
                    None => v4.into_iter().map(|r| (r, Some(Family::V4))).collect(),
                };
                let rules = rules
                    .into_iter()
                    .flat_map(|(rule, family)| rule_specs(&rule, family, gid_of))
                    .collect();
                specs.push(ChainSpec {
                    name: chain_name(chain),
                    base: base_chain(table, chain),
                    rules,
                });
            }
            tables.push(TableSpec {
                sets: Vec::new(),
                name: table_name(table),
                chains: specs,
            });
        }
        Spec { tables }
    }
}

/// A family's rule of one chain after its list group was merged: the template rule and, when
/// several members were merged, the index of the varying match and every member's match there.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Merged {
    rule: Rule,
    list: Option<(usize, Vec<Match>)>,
}

/// The effective rules of one chain of one family, each list group merged into its first member.
fn merged_rules(plan: &FamilyPlan, table: Table, chain: Chain) -> Vec<Merged> {
    let rules = plan.chain_rules(table, chain);
    let mut out: Vec<Merged> = Vec::new();
    let mut seen: Vec<(ListGroup, usize)> = Vec::new();
    for (rule, group) in rules {
        if let Some(g) = group
            && let Some(&(_, at)) = seen.iter().find(|(s, _)| *s == g)
            && absorb(&mut out[at], rule)
        {
            continue;
        }
        if let Some(g) = group {
            seen.push((g, out.len()));
        }
        out.push(Merged {
            rule: rule.clone(),
            list: None,
        });
    }
    out
}

/// Adds a group member to the merged rule when it differs from the template in exactly one port
/// or address match; otherwise (the plan broke its promise) keeps it as a rule of its own.
fn absorb(merged: &mut Merged, member: &Rule) -> bool {
    let template = &merged.rule;
    if template.target != member.target || template.matches.len() != member.matches.len() {
        return false;
    }
    let differing: Vec<usize> = (0..template.matches.len())
        .filter(|&i| template.matches[i] != member.matches[i])
        .collect();
    let listable = |m: &Match| match m {
        Match::DestinationPorts { ports, .. } => ports.len() == 1,
        Match::Source { .. } | Match::Destination { .. } => true,
        _ => false,
    };
    let at = match (differing.as_slice(), &merged.list) {
        ([], Some((at, _))) => *at,
        ([], None) => {
            // An exact duplicate (config keeps duplicates): nothing to add.
            return true;
        }
        ([i], Some((at, _))) if i == at => *i,
        ([i], None) => *i,
        _ => return false,
    };
    let (a, b) = (&template.matches[at], &member.matches[at]);
    let same_kind = match (a, b) {
        (
            Match::DestinationPorts { negated: x, .. },
            Match::DestinationPorts { negated: y, .. },
        ) => x == y,
        (Match::Source { negated: x, net: n }, Match::Source { negated: y, net: m })
        | (Match::Destination { negated: x, net: n }, Match::Destination { negated: y, net: m }) => {
            x == y && n.is_ipv4() == m.is_ipv4()
        }
        _ => false,
    };
    // A negated list would change meaning when merged (`!= a or != b` is not `!= {a, b}`).
    let negated = matches!(
        a,
        Match::DestinationPorts { negated: true, .. }
            | Match::Source { negated: true, .. }
            | Match::Destination { negated: true, .. }
    );
    if !same_kind || negated || !listable(a) || !listable(b) {
        return false;
    }
    let list = merged.list.get_or_insert_with(|| (at, vec![a.clone()]));
    list.1.push(b.clone());
    true
}

/// Merges the two families' rules of a chain: the longest common subsequence is written once
/// (unqualified), the rest qualified by family, keeping each family's order.
fn interleave(v4: Vec<Merged>, v6: Vec<Merged>) -> Vec<(Merged, Option<Family>)> {
    let (n, m) = (v4.len(), v6.len());
    // lcs[i][j]: length of the LCS of v4[i..] and v6[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if v4[i] == v6[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = Vec::with_capacity(n + m);
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && v4[i] == v6[j] {
            out.push((v4[i].clone(), None));
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push((v4[i].clone(), Some(Family::V4)));
            i += 1;
        } else {
            out.push((v6[j].clone(), Some(Family::V6)));
            j += 1;
        }
    }
    out
}

fn port_value(ports: &[u16]) -> PortValue {
    let mut unique: Vec<u16> = Vec::with_capacity(ports.len());
    for &p in ports {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    if unique.len() == 1 {
        PortValue::One(unique[0])
    } else {
        PortValue::Set(unique)
    }
}

fn iface(dir: Dir, name: &str) -> Item {
    // iptables' `eth+` is a prefix match; nft spells it `eth*`.
    let (name, prefix) = match name.strip_suffix('+') {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    Item::Iface {
        dir,
        name: name.to_owned(),
        prefix,
        negated: false,
    }
}

/// The rules that spell one plan rule of `family` (`None`: common to both families,
/// unqualified): one, or one per prefix length of its address list (see [`addr_values`]), each
/// with the same target.
fn rule_specs(
    merged: &Merged,
    family: Option<Family>,
    gid_of: &dyn Fn(&str) -> Option<u32>,
) -> Vec<RuleSpec> {
    let mut items = Vec::new();
    // The address item with more than one alternative value: its index and the values.
    let mut alternatives: Option<(usize, Vec<AddrValue>)> = None;
    if let Some(f) = family {
        items.push(Item::NfProto(f));
    }
    let mut proto: Option<Protocol> = None;
    let mut rule_family = family;
    for (i, m) in merged.rule.matches.iter().enumerate() {
        let listed: Option<&Vec<Match>> = merged
            .list
            .as_ref()
            .filter(|(at, _)| *at == i)
            .map(|(_, l)| l);
        let item = match m {
            Match::Protocol(p) => {
                proto = Some(*p);
                Item::L4Proto(*p)
            }
            Match::InInterface(name) => iface(Dir::In, name),
            Match::OutInterface(name) => iface(Dir::Out, name),
            Match::Source { net, negated } | Match::Destination { net, negated } => {
                let field = if matches!(m, Match::Source { .. }) {
                    AddrField::Saddr
                } else {
                    AddrField::Daddr
                };
                let f = family_of(net);
                let nets: Vec<IpNetwork> = match listed {
                    Some(list) => list
                        .iter()
                        .filter_map(|l| match l {
                            Match::Source { net, .. } | Match::Destination { net, .. } => {
                                Some(**net)
                            }
                            _ => None,
                        })
                        .collect(),
                    None => vec![**net],
                };
                // In an inet table an IP field needs the family matched first.
                if rule_family.is_none() {
                    items.insert(0, Item::NfProto(f));
                    rule_family = Some(f);
                }
                let values = addr_values(f, &nets);
                let value = values[0].clone();
                if values.len() > 1 {
                    alternatives = Some((items.len(), values));
                }
                Item::Addr {
                    family: f,
                    field,
                    negated: *negated,
                    value,
                }
            }
            Match::DestinationPorts { ports, negated } => {
                let ports: Vec<u16> = match listed {
                    Some(list) => list
                        .iter()
                        .flat_map(|l| match l {
                            Match::DestinationPorts { ports, .. } => ports.clone(),
                            _ => Vec::new(),
                        })
                        .collect(),
                    None => ports.clone(),
                };
                Item::Port {
                    // The plan always matches the protocol first; TCP is its only port user then.
                    proto: proto.unwrap_or(Protocol::Tcp),
                    field: PortField::Dport,
                    negated: *negated,
                    value: port_value(&ports),
                }
            }
            Match::SourcePort(port) => Item::Port {
                proto: proto.unwrap_or(Protocol::Tcp),
                field: PortField::Sport,
                negated: false,
                value: PortValue::One(*port),
            },
            Match::UidOwner { uid, negated } => Item::SkUid {
                uid: *uid,
                negated: *negated,
            },
            Match::GidOwner { gid, negated } => Item::SkGid {
                gid: match gid {
                    GroupRef::Id(id) => Gid::Id(*id),
                    GroupRef::Name(name) => match gid_of(name) {
                        Some(id) => Gid::Id(id),
                        None => Gid::Name(name.clone()),
                    },
                },
                negated: *negated,
            },
            Match::Mark { value, negated } => Item::Mark {
                value: *value,
                negated: *negated,
            },
            Match::ConnMark(v) => Item::CtMark(*v),
            Match::CtState(states) => Item::CtState(
                states
                    .iter()
                    .map(|s| ct_state_bit(*s))
                    .fold(0, |a, b| a | b),
            ),
        };
        items.push(item);
    }
    match &merged.rule.target {
        Target::Jump(c) => {
            items.extend([Item::Counter, Item::Verdict(Verdict::Jump(chain_name(*c)))])
        }
        Target::Return => items.extend([Item::Counter, Item::Verdict(Verdict::Return)]),
        Target::Accept => items.extend([Item::Counter, Item::Verdict(Verdict::Accept)]),
        Target::Drop => items.extend([Item::Counter, Item::Verdict(Verdict::Drop)]),
        Target::Redirect { to_port } => items.extend([Item::Counter, Item::Redirect(*to_port)]),
        Target::Tproxy {
            on_port,
            mark,
            mask,
        } => {
            // Istio's order: tproxy, mark, counter, accept.
            items.extend([
                Item::Tproxy {
                    family: rule_family,
                    port: *on_port,
                },
                Item::SetMark {
                    value: *mark,
                    mask: *mask,
                },
                Item::Counter,
                Item::Verdict(Verdict::Accept),
            ]);
        }
        Target::SetMark(v) => items.extend([
            Item::Counter,
            Item::SetMark {
                value: *v,
                mask: u32::MAX,
            },
        ]),
        Target::SaveMark => items.extend([Item::Counter, Item::SaveMark]),
        Target::RestoreMark => items.extend([Item::Counter, Item::RestoreMark]),
        Target::CtZone(z) => items.extend([Item::Counter, Item::CtZone(*z)]),
    }
    // Lists are never negated (see `absorb`), so the alternatives are an or: one rule each.
    match alternatives {
        None => vec![RuleSpec { items }],
        Some((at, values)) => values
            .into_iter()
            .map(|value| {
                let mut items = items.clone();
                if let Item::Addr { value: v, .. } = &mut items[at] {
                    *v = value;
                }
                RuleSpec { items }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_dedupe_and_one_port_is_no_set() {
        assert_eq!(port_value(&[53, 53]), PortValue::One(53));
        assert_eq!(port_value(&[53, 80, 53]), PortValue::Set(vec![53, 80]));
    }

    fn m(target: Target) -> Merged {
        Merged {
            rule: Rule {
                matches: vec![],
                target,
            },
            list: None,
        }
    }

    #[test]
    fn interleave_keeps_each_familys_order() {
        let (a, b, c, d) = (
            m(Target::Accept),
            m(Target::Drop),
            m(Target::Return),
            m(Target::SaveMark),
        );
        let out = interleave(
            vec![a.clone(), b.clone(), c.clone()],
            vec![a.clone(), d.clone(), c.clone(), b.clone()],
        );
        let project = |f: Family| -> Vec<Merged> {
            out.iter()
                .filter(|(_, fam)| fam.is_none_or(|x| x == f))
                .map(|(r, _)| r.clone())
                .collect()
        };
        assert_eq!(project(Family::V4), vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(project(Family::V6), vec![a, d, c, b]);
        // Two rules are common (a and c), so two of five are unqualified.
        assert_eq!(out.iter().filter(|(_, f)| f.is_none()).count(), 2);
    }
}
