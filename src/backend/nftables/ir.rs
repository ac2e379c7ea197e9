//! The one intermediate description of what the nftables backend installs: tables, chains and
//! rules made of typed items. Both spellings come from it: the `nft -f` text of `--dry-run`
//! ([`super::script`]) and the netlink batch ([`super::batch`]), so the rule logic exists once.
//! [`super::lower`] builds it from a plan.

use super::names::BaseChain;
use crate::plan::{Family, Protocol};
use ipnetwork::IpNetwork;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub tables: Vec<TableSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub name: &'static str,
    /// Named sets the table declares (their elements are kept by someone else: a re-install
    /// leaves them as they are).
    pub sets: Vec<NamedSet>,
    pub chains: Vec<ChainSpec>,
}

/// A named set of addresses of one family (ambient's probe sets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedSet {
    pub name: String,
    pub family: Family,
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
    /// would cost the kernel two tree elements per network and a tree insertion each (slower
    /// than a hash insertion); a list of networks of k distinct lengths costs k rules or
    /// lookups instead, however long it is.
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
    /// `meta mark & MASK == VALUE` (`!=` when negated).
    MarkMasked {
        value: u32,
        mask: u32,
        negated: bool,
    },
    /// `ct mark & MASK == VALUE`.
    CtMarkMasked {
        value: u32,
        mask: u32,
    },
    /// `meta skuid >= 0`: the packet has a local full socket (iptables' `--socket-exists`).
    HasSocketOwner,
    /// The address is in the table's named set `set`.
    AddrInSet {
        family: Family,
        field: AddrField,
        set: String,
    },
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
    /// `ct mark set ct mark & !MASK | VALUE`: the bits of `mask` become `value`.
    SetCtMark {
        value: u32,
        mask: u32,
    },
    /// `snat ip|ip6 to ADDR`.
    Snat(std::net::IpAddr),
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

/// An owner group: resolved to its id, or a name the system does not know (nft's own parser
/// resolves names in the script; the netlink path refuses them, see [`Spec::unresolved`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gid {
    Id(u32),
    Name(String),
}

impl Spec {
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
}
