//! The one intermediate description of what the nftables backend installs: tables, chains and
//! rules made of typed items. Both spellings come from it: [`Spec::script`] (the `nft -f` text of
//! `--dry-run`) and the netlink batch (`super::netlink`), so the rule logic exists once.
//!
//! Building it from a [`Plan`] does three things the iptables spelling does not:
//! - the members of a [`ListGroup`] become one rule whose varying port or address is a set;
//! - the IPv4 and IPv6 rules of a chain are merged so that each family sees its own rules in its
//!   own order: rules common to both are written once, the others are qualified with
//!   `meta nfproto` (with IPv6 off every rule is IPv4-only, so IPv6 traffic is untouched);
//! - address lists are deduplicated and merged the way `nft` merges them, then written as
//!   networks grouped by prefix length, each group one hash set looked up after masking the
//!   address (ipset's `hash:net` layout; see [`AddrValue::Networks`]); port lists become
//!   `protocol . port` hash sets. The netlink path installs what `nft -f` of the script does.

use crate::plan::{
    Chain, CtState, Family, FamilyPlan, GroupRef, ListGroup, Match, Plan, Protocol, Rule, Table,
    Target,
};
use ipnetwork::IpNetwork;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Table names, shared with Istio's nftables backend so each tool can replace the other's state.
pub const TABLE_NAMES: [&str; 3] = ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"];

/// The nftables table of a plan table.
pub fn table_name(table: Table) -> &'static str {
    match table {
        Table::Nat => "istio-proxy-nat",
        Table::Mangle => "istio-proxy-mangle",
        Table::Raw => "istio-proxy-raw",
    }
}

/// Istio's nftables chain names.
pub fn chain_name(chain: Chain) -> &'static str {
    match chain {
        Chain::Prerouting => "prerouting",
        Chain::Output => "output",
        Chain::Inbound => "istio-inbound",
        Chain::Redirect => "istio-redirect",
        Chain::InRedirect => "istio-in-redirect",
        Chain::IstioOutput => "istio-output",
        Chain::OutputDns => "istio-output-dns",
        Chain::Divert => "istio-divert",
        Chain::Tproxy => "istio-tproxy",
        Chain::Drop => "istio-drop",
    }
}

/// Base chain type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Route,
    Nat,
}

impl ChainType {
    pub fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Route => "route",
            ChainType::Nat => "nat",
        }
    }
}

/// The netfilter hooks meshcap attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Output,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Output => "output",
        }
    }
}

/// Hook, type and priority of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// Istio's hooks and priorities (the iptables tables' own priorities).
fn base_chain(table: Table, chain: Chain) -> Option<BaseChain> {
    let hook = match chain {
        Chain::Prerouting => Hook::Prerouting,
        Chain::Output => Hook::Output,
        _ => return None,
    };
    let (kind, priority) = match (table, hook) {
        (Table::Nat, _) => (ChainType::Nat, -100),
        (Table::Mangle, Hook::Prerouting) => (ChainType::Filter, -150),
        // `route` re-routes locally generated packets whose mark changed (iptables' mangle OUTPUT).
        (Table::Mangle, Hook::Output) => (ChainType::Route, -150),
        (Table::Raw, _) => (ChainType::Filter, -300),
    };
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub tables: Vec<TableSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub name: &'static str,
    pub chains: Vec<ChainSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: &'static str,
    pub base: Option<BaseChain>,
    pub rules: Vec<RuleSpec>,
}

/// A rule: items evaluated left to right, as nft writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub items: Vec<Item>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrField {
    Saddr,
    Daddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortField {
    Sport,
    Dport,
}

/// An inclusive address range of one family (IPv4 addresses are kept in the low 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval {
    pub start: u128,
    pub end: u128,
}

/// What an address match compares with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrValue {
    /// A network (host bits cleared).
    Prefix(IpNetwork),
    /// A range that is not a prefix (adjacent list elements merged).
    Range(Interval),
    /// Two or more networks of one prefix length (`prefix`), given by their first addresses,
    /// sorted: the address masked to `prefix` bits is looked up in a hash set. An interval set
    /// would cost the kernel two tree elements per network and a tree insertion each (about 3x
    /// the time of a hash insertion, measured); a list of networks of k distinct lengths costs k
    /// rules or lookups instead, however long it is.
    Networks { prefix: u8, starts: Vec<u128> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortValue {
    One(u16),
    /// Two or more distinct ports, in first-seen order.
    Set(Vec<u16>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Jump(&'static str),
    Return,
    Accept,
    Drop,
}

/// One match or statement of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    NfProto(Family),
    L4Proto(Protocol),
    /// Interface name; `prefix` matches every name starting with `name` (iptables' `eth+`).
    Iface {
        dir: Dir,
        name: String,
        prefix: bool,
        negated: bool,
    },
    Addr {
        family: Family,
        field: AddrField,
        negated: bool,
        value: AddrValue,
    },
    Port {
        proto: Protocol,
        field: PortField,
        negated: bool,
        value: PortValue,
    },
    SkUid {
        uid: u32,
        negated: bool,
    },
    SkGid {
        gid: Gid,
        negated: bool,
    },
    Mark {
        value: u32,
        negated: bool,
    },
    CtMark(u32),
    /// Conntrack state bit mask (nft's `ct state` bits).
    CtState(u32),
    Counter,
    /// `meta mark set`: the mark becomes `(mark & !mask) ^ value`.
    SetMark {
        value: u32,
        mask: u32,
    },
    /// `ct mark set meta mark`.
    SaveMark,
    /// `meta mark set ct mark`.
    RestoreMark,
    CtZone(u16),
    Redirect(u16),
    /// `tproxy ip|ip6 to :port` (`None`: either family, `tproxy to :port`).
    Tproxy {
        family: Option<Family>,
        port: u16,
    },
    Verdict(Verdict),
}

/// nft's conntrack state bits.
pub fn ct_state_bit(state: CtState) -> u32 {
    match state {
        CtState::Invalid => 1,
        CtState::Established => 2,
        CtState::Related => 4,
    }
}

/// An owner group: resolved to its id, or a name the system does not know (nft's own parser
/// resolves names in the script; the netlink path refuses them, see [`Spec::unresolved`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gid {
    Id(u32),
    Name(String),
}

impl Spec {
    /// The description of `plan`. Group names are resolved with `gid_of`.
    pub fn build(plan: &Plan, gid_of: &dyn Fn(&str) -> Option<u32>) -> Spec {
        let mut tables = Vec::new();
        for table in [Table::Nat, Table::Mangle, Table::Raw] {
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
                name: table_name(table),
                chains: specs,
            });
        }
        Spec { tables }
    }

    /// The first owner group name that could not be resolved to a gid.
    pub fn unresolved(&self) -> Option<&str> {
        self.tables
            .iter()
            .flat_map(|t| &t.chains)
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.items)
            .find_map(|i| match i {
                Item::SkGid {
                    gid: Gid::Name(name),
                    ..
                } => Some(name.as_str()),
                _ => None,
            })
    }

    /// The `nft -f` script: create-or-flush each table, its chains, its rules.
    pub fn script(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let _ = writeln!(out, "add table inet {}", t.name);
            let _ = writeln!(out, "flush table inet {}", t.name);
            for c in &t.chains {
                let _ = writeln!(out, "{}", chain_command(t.name, c));
            }
            for c in &t.chains {
                for r in &c.rules {
                    let _ = writeln!(out, "add rule inet {} {} {}", t.name, c.name, r.text());
                }
            }
        }
        out
    }
}

/// `add chain …` for one chain, as in the script (also names the chain in errors).
pub fn chain_command(table: &str, c: &ChainSpec) -> String {
    match c.base {
        Some(b) => format!(
            "add chain inet {table} {} {{ type {} hook {} priority {} ; }}",
            c.name,
            b.kind.name(),
            b.hook.name(),
            b.priority
        ),
        None => format!("add chain inet {table} {}", c.name),
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

fn family_of(net: &IpNetwork) -> Family {
    if net.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn u128_to_ip(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The largest address of a family.
pub fn family_max(family: Family) -> u128 {
    match family {
        Family::V4 => u32::MAX as u128,
        Family::V6 => u128::MAX,
    }
}

fn bits(family: Family) -> u32 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

fn interval_of(net: &IpNetwork) -> Interval {
    let family = family_of(net);
    let start = ip_to_u128(net.network());
    let host_bits = bits(family) - net.prefix() as u32;
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Interval {
        start,
        end: start | span,
    }
}

/// The prefix an interval is, if it is one.
fn as_prefix(family: Family, iv: Interval) -> Option<IpNetwork> {
    let size = iv.end.wrapping_sub(iv.start).wrapping_add(1);
    let host_bits = if size == 0 {
        // The whole IPv6 space.
        128
    } else if size.is_power_of_two() {
        size.trailing_zeros()
    } else {
        return None;
    };
    if host_bits > bits(family) || (host_bits < 128 && iv.start & ((1u128 << host_bits) - 1) != 0) {
        return None;
    }
    IpNetwork::new(
        u128_to_ip(family, iv.start),
        (bits(family) - host_bits) as u8,
    )
    .ok()
}

/// Sorts, deduplicates and merges overlapping or adjacent intervals (what nft's automerge does).
fn merge_intervals(mut ivs: Vec<Interval>) -> Vec<Interval> {
    ivs.sort();
    let mut out: Vec<Interval> = Vec::with_capacity(ivs.len());
    for iv in ivs {
        if let Some(last) = out.last_mut()
            && (iv.start <= last.end || iv.start == last.end.wrapping_add(1))
        {
            last.end = last.end.max(iv.end);
            continue;
        }
        out.push(iv);
    }
    out
}

/// The values a list of networks matches, as alternatives (a packet matches at most one): one
/// prefix or range when the merged list is one interval, else one value per prefix length of
/// the list's intervals split into prefixes, widest first.
fn addr_values(family: Family, nets: &[IpNetwork]) -> Vec<AddrValue> {
    let merged = merge_intervals(nets.iter().map(interval_of).collect());
    if let [one] = merged.as_slice() {
        return vec![match as_prefix(family, *one) {
            Some(net) => AddrValue::Prefix(net),
            None => AddrValue::Range(*one),
        }];
    }
    let mut by_prefix: std::collections::BTreeMap<u8, Vec<u128>> = Default::default();
    for iv in merged {
        for (start, prefix) in split_into_prefixes(family, iv) {
            by_prefix.entry(prefix).or_default().push(start);
        }
    }
    by_prefix
        .into_iter()
        .map(|(prefix, starts)| match starts.as_slice() {
            [one] => AddrValue::Prefix(
                IpNetwork::new(u128_to_ip(family, *one), prefix).expect("prefix within family"),
            ),
            _ => AddrValue::Networks { prefix, starts },
        })
        .collect()
}

/// The fewest prefixes (first address, prefix length) that cover exactly `iv`, in order.
fn split_into_prefixes(family: Family, iv: Interval) -> Vec<(u128, u8)> {
    let width = bits(family);
    let mut out = Vec::new();
    let mut start = iv.start;
    loop {
        // The largest block aligned at `start` that does not pass `iv.end`.
        let mut host_bits = if start == 0 {
            width
        } else {
            start.trailing_zeros().min(width)
        };
        while host_bits > 0 && block_end(start, host_bits) > iv.end {
            host_bits -= 1;
        }
        out.push((start, (width - host_bits) as u8));
        let end = block_end(start, host_bits);
        if end >= iv.end {
            return out;
        }
        start = end + 1;
    }
}

/// The last address of the block of `2^host_bits` addresses starting at `start`.
fn block_end(start: u128, host_bits: u32) -> u128 {
    if host_bits >= 128 {
        u128::MAX
    } else {
        start | ((1u128 << host_bits) - 1)
    }
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

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn family_word(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn neq(negated: bool) -> &'static str {
    if negated { "!= " } else { "" }
}

/// The netmask of a prefix length, as a value of the family (IPv4 in the low 32 bits).
pub fn netmask(family: Family, prefix: u8) -> u128 {
    let host_bits = bits(family) - u32::from(prefix);
    !block_end(0, host_bits) & family_max(family)
}

/// The netmask of a prefix length, as an address (`255.255.255.0`).
fn prefix_mask(family: Family, prefix: u8) -> IpAddr {
    u128_to_ip(family, netmask(family, prefix))
}

/// An interval in nft syntax: a prefix when it is one, else `first-last`.
fn interval_text(family: Family, iv: Interval) -> String {
    match as_prefix(family, iv) {
        Some(net) => format!("{}/{}", net.network(), net.prefix()),
        None => format!(
            "{}-{}",
            u128_to_ip(family, iv.start),
            u128_to_ip(family, iv.end)
        ),
    }
}

impl Item {
    /// The item in nft syntax.
    pub fn text(&self) -> String {
        match self {
            Item::NfProto(Family::V4) => "meta nfproto ipv4".into(),
            Item::NfProto(Family::V6) => "meta nfproto ipv6".into(),
            Item::L4Proto(p) => format!("meta l4proto {}", proto_name(*p)),
            Item::Iface {
                dir,
                name,
                prefix,
                negated,
            } => format!(
                "{} {}\"{}{}\"",
                if *dir == Dir::In {
                    "iifname"
                } else {
                    "oifname"
                },
                neq(*negated),
                name,
                if *prefix { "*" } else { "" }
            ),
            Item::Addr {
                family,
                field,
                negated,
                value,
            } => {
                let field = match field {
                    AddrField::Saddr => "saddr",
                    AddrField::Daddr => "daddr",
                };
                let value = match value {
                    AddrValue::Prefix(net) => format!("{}/{}", net.network(), net.prefix()),
                    AddrValue::Range(iv) => interval_text(*family, *iv),
                    AddrValue::Networks { prefix, starts } => {
                        let set = starts
                            .iter()
                            .map(|s| u128_to_ip(*family, *s).to_string())
                            .collect::<Vec<_>>()
                            .join(", ");
                        let word = family_word(*family);
                        return if u32::from(*prefix) == bits(*family) {
                            format!("{word} {field} {}{{ {set} }}", neq(*negated))
                        } else {
                            // nft lists a masked lookup with an explicit `==`.
                            format!(
                                "{word} {field} & {} {} {{ {set} }}",
                                prefix_mask(*family, *prefix),
                                if *negated { "!=" } else { "==" }
                            )
                        };
                    }
                };
                format!("{} {field} {}{value}", family_word(*family), neq(*negated))
            }
            Item::Port {
                proto,
                field,
                negated,
                value,
            } => {
                let field = match field {
                    PortField::Sport => "sport",
                    PortField::Dport => "dport",
                };
                let proto = proto_name(*proto);
                match value {
                    PortValue::One(p) => format!("{proto} {field} {}{p}", neq(*negated)),
                    // A port set is keyed by protocol and port: a bare 16-bit key makes the
                    // kernel pick its bitmap backend, whose insertion walks every element
                    // already added (quadratic in the list); a concatenated key gets a hash.
                    PortValue::Set(ps) => format!(
                        "meta l4proto . {proto} {field} {}{{ {} }}",
                        neq(*negated),
                        ps.iter()
                            .map(|p| format!("{proto} . {p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
            Item::SkUid { uid, negated } => format!("meta skuid {}{uid}", neq(*negated)),
            Item::SkGid { gid, negated } => match gid {
                Gid::Id(id) => format!("meta skgid {}{id}", neq(*negated)),
                Gid::Name(name) => format!("meta skgid {}\"{name}\"", neq(*negated)),
            },
            Item::Mark { value, negated } => format!("meta mark {}{value}", neq(*negated)),
            Item::CtMark(v) => format!("ct mark {v}"),
            Item::CtState(mask) => {
                let names: Vec<&str> = [(1, "invalid"), (2, "established"), (4, "related")]
                    .into_iter()
                    .filter(|(bit, _)| mask & bit != 0)
                    .map(|(_, n)| n)
                    .collect();
                format!("ct state {}", names.join(","))
            }
            Item::Counter => "counter".into(),
            Item::SetMark { value, mask } if *mask == u32::MAX => {
                format!("meta mark set {value}")
            }
            Item::SetMark { value, mask } => {
                format!(
                    "meta mark set meta mark and {:#010x} xor {value:#010x}",
                    !mask
                )
            }
            Item::SaveMark => "ct mark set meta mark".into(),
            Item::RestoreMark => "meta mark set ct mark".into(),
            Item::CtZone(z) => format!("ct zone set {z}"),
            Item::Redirect(p) => format!("redirect to :{p}"),
            Item::Tproxy { family, port } => match family {
                Some(f) => format!("tproxy {} to :{port}", family_word(*f)),
                None => format!("tproxy to :{port}"),
            },
            Item::Verdict(Verdict::Jump(c)) => format!("jump {c}"),
            Item::Verdict(Verdict::Return) => "return".into(),
            Item::Verdict(Verdict::Accept) => "accept".into(),
            Item::Verdict(Verdict::Drop) => "drop".into(),
        }
    }
}

impl RuleSpec {
    /// The rule in nft syntax.
    pub fn text(&self) -> String {
        self.items
            .iter()
            .map(Item::text)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn adjacent_and_overlapping_networks_merge_like_nft() {
        let nets = [
            v4("10.0.1.0/24"),
            v4("10.0.0.0/24"),
            v4("10.0.0.0/24"),
            v4("10.0.4.0/24"),
        ];
        // 10.0.0.0/23 (merged) and 10.0.4.0/24: two lengths, one prefix each.
        assert_eq!(
            addr_values(Family::V4, &nets),
            [
                AddrValue::Prefix(v4("10.0.0.0/23")),
                AddrValue::Prefix(v4("10.0.4.0/24"))
            ]
        );
        assert_eq!(
            addr_values(
                Family::V4,
                &[v4("10.0.0.0/24"), v4("10.0.1.0/24"), v4("10.0.2.0/24")]
            ),
            [AddrValue::Range(Interval {
                start: 0x0a00_0000,
                end: 0x0a00_02ff
            })]
        );
        assert_eq!(
            addr_values(Family::V4, &[v4("10.0.0.0/8"), v4("10.1.0.0/16")]),
            [AddrValue::Prefix(v4("10.0.0.0/8"))]
        );
    }

    #[test]
    fn networks_group_by_prefix_length_widest_first() {
        let nets = [
            v4("192.0.2.7/32"),
            v4("10.0.0.0/8"),
            v4("192.0.2.1/32"),
            v4("198.51.100.0/24"),
            v4("203.0.113.0/24"),
            // 192.0.2.8-192.0.2.10 merges with nothing: 192.0.2.8/31 + 192.0.2.10/32.
            v4("192.0.2.8/31"),
            v4("192.0.2.10/32"),
        ];
        let [a, b, c, d] = addr_values(Family::V4, &nets).try_into().unwrap();
        assert_eq!(a, AddrValue::Prefix(v4("10.0.0.0/8")));
        assert_eq!(
            b,
            AddrValue::Networks {
                prefix: 24,
                starts: vec![0xc633_6400, 0xcb00_7100]
            }
        );
        // 192.0.2.7/32 and 192.0.2.8/31 are adjacent: 192.0.2.7-192.0.2.10 splits into
        // .7/32, .8/31, .10/32.
        assert_eq!(c, AddrValue::Prefix(v4("192.0.2.8/31")), "{nets:?}");
        assert_eq!(
            d,
            AddrValue::Networks {
                prefix: 32,
                starts: vec![0xc000_0201, 0xc000_0207, 0xc000_020a]
            }
        );
    }

    #[test]
    fn intervals_split_into_the_fewest_prefixes() {
        let split =
            |start: u128, end: u128| split_into_prefixes(Family::V4, Interval { start, end });
        assert_eq!(split(0, u32::MAX as u128), [(0, 0)]);
        assert_eq!(split(1, 6), [(1, 32), (2, 31), (4, 31), (6, 32)]);
        assert_eq!(
            split(0x0a00_0000, 0x0a00_02ff),
            [(0x0a00_0000, 23), (0x0a00_0200, 24)]
        );
        assert_eq!(
            split_into_prefixes(
                Family::V6,
                Interval {
                    start: 0,
                    end: u128::MAX
                }
            ),
            [(0, 0)]
        );
        assert_eq!(prefix_mask(Family::V4, 20).to_string(), "255.255.240.0");
        assert_eq!(prefix_mask(Family::V6, 32).to_string(), "ffff:ffff::");
        assert_eq!(prefix_mask(Family::V4, 32).to_string(), "255.255.255.255");
    }

    #[test]
    fn whole_address_spaces_are_prefixes() {
        let all6: IpNetwork = "::/0".parse().unwrap();
        assert_eq!(
            addr_values(Family::V6, &[all6]),
            [AddrValue::Prefix("::/0".parse().unwrap())]
        );
        assert_eq!(
            addr_values(Family::V4, &[v4("0.0.0.0/0")]),
            [AddrValue::Prefix(v4("0.0.0.0/0"))]
        );
    }

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
