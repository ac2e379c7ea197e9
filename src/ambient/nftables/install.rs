//! Installing, checking and removing ambient's nftables rules over netlink, with the sidecar
//! backend's pieces: the plan becomes the backend's [`Spec`] (the same items, a few of them
//! ambient's own: masked marks, the connection mark's bits, the probe sets, SNAT), one atomic
//! batch makes the kernel hold it ([`batch::build_batch_in`]), and the kernel's typed dump
//! ([`dump`], [`Contents::canonical`]) is compared with what that batch would leave, so a re-run
//! with the same settings sends nothing and `--diff` reports what differs.
//!
//! The tables are Istio's (`inet istio-ambient-nat`, `-mangle`, `-raw`). In a pod, all three are
//! ambient's; on the node only `istio-ambient-nat` is, with the probe sets in it: a re-install
//! keeps their elements (the agent's pods), and comparisons leave them out.

use super::super::config::ProbeSource;
use super::super::plan::{AmbientPlan, CONNECTION, Op, Rule, Table, ZTUNNEL};
use super::names::{TABLES, base_chain, chain_name, chains, table_name};
use crate::backend::nftables::batch::{self, Existing};
use crate::backend::nftables::ir::{
    AddrField, AddrValue, ChainSpec, Dir, Item, NamedSet, PortField, PortValue, RuleSpec, Spec,
    TableSpec, Verdict,
};
use crate::backend::nftables::{Contents, dump, open};
use crate::backend::{Applied, BackendError, RulesetDiff, TypedRules};
use crate::plan::{Family, Protocol};
use ipnetwork::IpNetwork;
use std::net::IpAddr;

/// The tables a plan owns: a pod's three, or the node's nat table (the one with the sets).
pub fn owned_tables(plan: &AmbientPlan) -> Vec<&'static str> {
    if plan.probe_sets.is_empty() {
        TABLES.map(table_name).to_vec()
    } else {
        vec![table_name(Table::Nat)]
    }
}

/// The plan as the nftables backend's description.
pub fn spec(plan: &AmbientPlan) -> Spec {
    let ops: Vec<&Op> = plan.ops.iter().collect();
    let mut tables = Vec::new();
    for table in TABLES {
        if !ops.iter().any(|op| op.table == table) {
            continue;
        }
        let chains = chains(&ops, table)
            .into_iter()
            .map(|chain| ChainSpec {
                name: chain_name(chain),
                base: base_chain(table, chain),
                rules: ops
                    .iter()
                    .filter(|op| op.table == table && chain_name(op.chain) == chain_name(chain))
                    .filter_map(|op| rule(op))
                    .collect(),
            })
            .collect();
        let sets = match table {
            Table::Nat => plan
                .probe_sets
                .iter()
                .map(|s| NamedSet {
                    name: s.name.clone(),
                    family: s.family,
                })
                .collect(),
            _ => Vec::new(),
        };
        tables.push(TableSpec {
            name: table_name(table),
            sets,
            chains,
        });
    }
    Spec { tables }
}

fn family_of(addr: &IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// `ip|ip6 FIELD [!=] NET`, with the network-protocol guard nft puts before it.
fn addr(field: AddrField, negated: bool, net: IpNetwork) -> [Item; 2] {
    let family = family_of(&net.ip());
    [
        Item::NfProto(family),
        Item::Addr {
            family,
            field,
            negated,
            value: AddrValue::Prefix(net),
        },
    ]
}

fn host(a: &IpAddr) -> IpNetwork {
    IpNetwork::from(*a)
}

/// `tcp|udp FIELD [!=] PORT`, with its protocol guard.
fn port(proto: Protocol, field: PortField, negated: bool, p: u16) -> [Item; 2] {
    [
        Item::L4Proto(proto),
        Item::Port {
            proto,
            field,
            negated,
            value: PortValue::One(p),
        },
    ]
}

fn not_ztunnel() -> Item {
    Item::MarkMasked {
        value: ZTUNNEL.value,
        mask: ZTUNNEL.mask,
        negated: true,
    }
}

fn ztunnel() -> Item {
    Item::MarkMasked {
        value: ZTUNNEL.value,
        mask: ZTUNNEL.mask,
        negated: false,
    }
}

fn iface(dir: Dir, name: &str, negated: bool) -> Item {
    Item::Iface {
        dir,
        name: name.to_owned(),
        prefix: false,
        negated,
    }
}

/// The rule's items in the order nft generates them from the rule's text (so that the batch is
/// byte-equal to libnftnl's); `None` for a jump into the chain it is in (nftables has no use for
/// Istio's iptables-shaped jump there).
fn rule(op: &Op) -> Option<RuleSpec> {
    use Item::{Counter, L4Proto, Redirect};
    let tcp = || L4Proto(Protocol::Tcp);
    let mut items: Vec<Item> = Vec::new();
    match &op.rule {
        Rule::Jump(target) => {
            if chain_name(*target) == chain_name(op.chain) {
                return None;
            }
            items.push(Item::Verdict(Verdict::Jump(chain_name(*target))));
        }
        Rule::RerouteVirtualInterface { interface, to_port } => {
            items.extend([iface(Dir::In, interface, false), tcp(), Counter]);
            items.push(Redirect(*to_port));
        }
        Rule::ReturnVirtualInterface { interface } => {
            items.extend([iface(Dir::In, interface, false), tcp(), Counter]);
            items.push(Item::Verdict(Verdict::Return));
        }
        Rule::AcceptProbe { from } => {
            items.push(tcp());
            items.extend(addr(AddrField::Saddr, false, host(from)));
            items.extend([Counter, Item::Verdict(Verdict::Accept)]);
        }
        Rule::AcceptProbeReply { to } => {
            items.push(tcp());
            items.extend(addr(AddrField::Daddr, false, host(to)));
            items.extend([Counter, Item::Verdict(Verdict::Accept)]);
        }
        Rule::RedirectInbound {
            loopback,
            hbone_port,
            to_port,
        } => {
            items.extend(addr(AddrField::Daddr, true, *loopback));
            items.extend(port(Protocol::Tcp, PortField::Dport, true, *hbone_port));
            items.extend([not_ztunnel(), Counter, Redirect(*to_port)]);
        }
        Rule::RedirectDnsUdp { to_port } => {
            items.extend([iface(Dir::Out, "lo", true), not_ztunnel()]);
            items.extend(port(Protocol::Udp, PortField::Dport, false, 53));
            items.extend([Counter, Redirect(*to_port)]);
        }
        Rule::RedirectDnsTcp { loopback, to_port } => {
            items.extend(addr(AddrField::Daddr, true, *loopback));
            items.extend(port(Protocol::Tcp, PortField::Dport, false, 53));
            items.extend([not_ztunnel(), Counter, Redirect(*to_port)]);
        }
        Rule::AcceptConnectionMarked => items.extend([
            tcp(),
            Item::MarkMasked {
                value: CONNECTION.value,
                mask: CONNECTION.mask,
                negated: false,
            },
            Counter,
            Item::Verdict(Verdict::Accept),
        ]),
        Rule::AcceptLoopback { loopback } => {
            items.push(iface(Dir::Out, "lo", false));
            items.extend(addr(AddrField::Daddr, true, *loopback));
            items.extend([Counter, Item::Verdict(Verdict::Accept)]);
        }
        Rule::RedirectOutbound { loopback, to_port } => {
            items.push(tcp());
            items.extend(addr(AddrField::Daddr, true, *loopback));
            items.extend([not_ztunnel(), Counter, Redirect(*to_port)]);
        }
        Rule::SaveZtunnelMark => items.extend([
            ztunnel(),
            Counter,
            Item::SetCtMark {
                value: CONNECTION.value,
                mask: CONNECTION.mask,
            },
        ]),
        Rule::RestoreConnectionMark => items.extend([
            Item::CtMarkMasked {
                value: CONNECTION.value,
                mask: CONNECTION.mask,
            },
            Counter,
            Item::RestoreMark,
        ]),
        Rule::ZoneDnsQuery { zone } => {
            items.extend(port(Protocol::Udp, PortField::Dport, false, 53));
            items.extend([ztunnel(), Counter, Item::CtZone(*zone)]);
        }
        Rule::ZoneDnsReply { zone } => {
            items.extend(port(Protocol::Udp, PortField::Sport, false, 53));
            items.extend([not_ztunnel(), Counter, Item::CtZone(*zone)]);
        }
        Rule::SnatProbe { source, set, to } => {
            items.push(tcp());
            items.push(match source {
                ProbeSource::Uid(uid) => Item::SkUid {
                    uid: *uid,
                    negated: false,
                },
                ProbeSource::AnyLocalSocket => Item::HasSocketOwner,
            });
            let family = family_of(to);
            items.push(Item::NfProto(family));
            items.push(Item::AddrInSet {
                family,
                field: AddrField::Daddr,
                set: set.clone(),
            });
            items.extend([Counter, Item::Snat(*to)]);
        }
    }
    Some(RuleSpec { items })
}

/// What an install of the plan leaves in a namespace without its tables, canonical.
pub fn expected(plan: &AmbientPlan) -> Contents {
    let built = batch::build_batch_in(&spec(plan), &Existing::default(), &owned_tables(plan));
    Contents::from_batch(&built.messages).canonical()
}

/// What the namespace holds in the plan's tables, canonical.
pub fn current(plan: &AmbientPlan) -> Result<Contents, BackendError> {
    let mut nl = open()?;
    let tables = dump::tables_among(&mut nl, &owned_tables(plan))?;
    Ok(dump::contents(&mut nl, &tables)?.canonical())
}

/// Installs the plan's rules in one batch. A namespace that holds exactly them is not written
/// to (the tables are read and compared first).
pub fn apply(plan: &AmbientPlan) -> Result<Applied, BackendError> {
    let owned = owned_tables(plan);
    let spec = spec(plan);
    let mut nl = open()?;
    let tables = dump::tables_among(&mut nl, &owned)?;
    let chains = if tables.is_empty() {
        Vec::new()
    } else {
        dump::chains(&mut nl, &tables)?
    };
    if !tables.is_empty()
        && dump::contents_with_chains(&mut nl, &tables, chains.clone())?.canonical()
            == expected(plan)
    {
        return Ok(Applied::AlreadyInPlace);
    }
    let replaced = !tables.is_empty();
    let built = batch::build_batch_in(&spec, &Existing { tables, chains }, &owned);
    batch::send(&mut nl, &built)?;
    Ok(if replaced {
        Applied::Replaced
    } else {
        Applied::Installed
    })
}

/// The differences between the namespace's tables and the plan, as `nft` lines per chain.
pub fn diff(plan: &AmbientPlan) -> Result<RulesetDiff, BackendError> {
    let have = TypedRules::Nftables(current(plan)?).ruleset();
    let want = TypedRules::Nftables(expected(plan)).ruleset();
    Ok(have.diff(&want))
}

/// Deletes the plan's tables (whatever their settings) in one batch; no other table.
pub fn clean(plan: &AmbientPlan) -> Result<(), BackendError> {
    let mut nl = open()?;
    let tables = dump::tables_among(&mut nl, &owned_tables(plan))?;
    if !tables.is_empty() {
        batch::send(&mut nl, &batch::delete_batch(&tables))?;
        nl.close_in_background();
    }
    Ok(())
}
