//! The plan's types: families, tables, chains, matches, targets and the ordered rule operations.
//! A leaf: the builder and every user of the plan import these through [`crate::plan`]'s
//! re-exports, and nothing here imports back into `plan`.

use ipnetwork::IpNetwork;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The agent's DNS listener (Istio's IstioAgentDNSListenerPort).
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// The mark the proxy's outbound-to-inbound loopback packets get in TPROXY mode (Istio's OutboundMark).
pub const OUTBOUND_MARK: u32 = 1338;

/// Address family of a rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// The source address the proxy hands an inbound REDIRECT connection to the app from (Istio's
/// InboundPassthroughBind): the rules never capture it again. Owned here because the rules
/// define it; the proxy binds it and the validation dials it.
pub fn passthrough_source(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
        // Not on lo by default (IPv6 lo only has ::1): a routing step adds it.
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
    }
}

/// Netfilter table, with iptables semantics (nftables maps each to an `inet istio-proxy-*` table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Packet marking and TPROXY (mangle).
    Mangle,
    /// Address translation: REDIRECT (nat).
    Nat,
    /// Before connection tracking: conntrack zones (raw).
    Raw,
}

impl Table {
    /// Every table, in the order Istio writes them in a restore file.
    pub const ALL: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];
}

/// A chain: one of the two netfilter hooks meshcap attaches to, or one of Istio's own chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// Built-in PREROUTING hook (packets arriving from an interface).
    Prerouting,
    /// Built-in OUTPUT hook (locally generated packets).
    Output,
    /// ISTIO_INBOUND: decides which inbound connections go to the proxy.
    Inbound,
    /// ISTIO_REDIRECT: REDIRECT to the outbound capture port (15001).
    Redirect,
    /// ISTIO_IN_REDIRECT: REDIRECT to the inbound capture port (15006).
    InRedirect,
    /// ISTIO_OUTPUT: decides which outbound connections go to the proxy.
    IstioOutput,
    /// ISTIO_OUTPUT_DNS: DNS redirection (nat) and conntrack zones (raw).
    OutputDns,
    /// ISTIO_DIVERT: marks packets of established TPROXY connections and accepts them.
    Divert,
    /// ISTIO_TPROXY: TPROXY of new inbound connections to the inbound capture port.
    Tproxy,
    /// ISTIO_DROP: drops conntrack-INVALID packets (--drop-invalid).
    Drop,
}

impl Chain {
    /// The hook chains exist in every table; all other chains are created by meshcap.
    pub fn is_builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }
}

/// Transport protocol of a `-p` / `meta l4proto` match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Conntrack states matched by the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtState {
    Invalid,
    Related,
    Established,
}

/// The owner groups of the configuration, as the plan's owner matches name them.
pub use crate::config::GroupRef;

/// The two netfilter hooks meshcap's rules attach to (iptables' PREROUTING and OUTPUT).
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

/// A network in a rule. Displays as it was written when the config kept a spelling (Istio prints
/// DNS servers as written: `::127.0.0.53/128`, not `::7f00:35/128`); otherwise canonically.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Net {
    net: IpNetwork,
    written: Option<String>,
}

impl Net {
    /// A host network (/32 or /128) for `addr`, displayed as `written`/prefix.
    pub fn host_written(addr: std::net::IpAddr, written: &str) -> Net {
        let net = IpNetwork::from(addr);
        Net {
            written: Some(format!("{written}/{}", net.prefix())),
            net,
        }
    }
}

impl From<IpNetwork> for Net {
    fn from(net: IpNetwork) -> Net {
        Net { net, written: None }
    }
}

impl std::ops::Deref for Net {
    type Target = IpNetwork;
    fn deref(&self) -> &IpNetwork {
        &self.net
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.written {
            Some(text) => f.write_str(text),
            None => write!(f, "{}", self.net),
        }
    }
}

/// One match of a rule. A rule matches when all its matches do; the order of the matches is the
/// order Istio writes them in (backends that need another order, e.g. nftables' protocol before
/// ports, reorder when spelling).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Match {
    /// Transport protocol.
    Protocol(Protocol),
    /// Incoming interface by name (it may not exist yet).
    InInterface(String),
    /// Outgoing interface by name (it may not exist yet).
    OutInterface(String),
    /// Source address within a network.
    Source { net: Net, negated: bool },
    /// Destination address within a network.
    Destination { net: Net, negated: bool },
    /// Destination port is one of `ports` (or none of them, when negated). Requires a preceding
    /// [`Match::Protocol`].
    DestinationPorts { ports: Vec<u16>, negated: bool },
    /// Source port. Requires a preceding [`Match::Protocol`].
    SourcePort(u16),
    /// Socket owner uid (locally generated packets only).
    UidOwner { uid: u32, negated: bool },
    /// Socket owner primary gid (locally generated packets only).
    GidOwner { gid: GroupRef, negated: bool },
    /// Packet mark equals the value (mask 0xffffffff).
    Mark { value: u32, negated: bool },
    /// Connection mark equals the value.
    ConnMark(u32),
    /// Conntrack state is one of these.
    CtState(Vec<CtState>),
}

/// What a rule does with a matching packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Continue in another chain of the same table.
    Jump(Chain),
    /// Leave the current chain.
    Return,
    Accept,
    Drop,
    /// Rewrite the destination to a local port (nat).
    Redirect {
        to_port: u16,
    },
    /// Deliver to a local transparent socket on `on_port` and set the packet mark (mangle).
    Tproxy {
        on_port: u16,
        mark: u32,
        mask: u32,
    },
    /// Set the packet mark and continue.
    SetMark(u32),
    /// Copy the packet mark into the connection mark.
    SaveMark,
    /// Copy the connection mark into the packet mark.
    RestoreMark,
    /// Put the packet's connection into a conntrack zone (raw).
    CtZone(u16),
}

/// A rule: matches and a target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub target: Target,
}

/// Where a rule operation puts its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    /// At the end of the chain.
    Append,
    /// Before the rule at this 1-based index (iptables `-I CHAIN N`).
    Insert(u32),
}

/// Identifies the rules that are the per-element spelling of one list (a port list, a CIDR list).
///
/// Istio writes one rule per element; a backend with sets may write the members of a group as one
/// rule whose list-valued match holds every member's element. The plan guarantees that members of a
/// group are appended to the same chain, differ only in one [`Match::DestinationPorts`] (single
/// port) or one address match, and that every rule appended between two members matches a disjoint
/// set of packets (it belongs to the same per-element loop), so merging them keeps the verdict of
/// every packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListGroup(pub u32);

/// One rule added to one chain of one table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleOp {
    pub table: Table,
    pub chain: Chain,
    pub position: Position,
    pub rule: Rule,
    pub group: Option<ListGroup>,
}

/// The rules of one address family, in Istio's emission order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: Family,
    pub ops: Vec<RuleOp>,
}

impl FamilyPlan {
    /// The non-built-in chains of `table`, in the order of their first rule: the chains to create.
    pub fn chains(&self, table: Table) -> Vec<Chain> {
        let mut chains = Vec::new();
        for op in self.ops.iter().filter(|op| op.table == table) {
            if !op.chain.is_builtin() && !chains.contains(&op.chain) {
                chains.push(op.chain);
            }
        }
        chains
    }

    /// The tables that hold at least one rule, in [`Table::ALL`] order.
    pub fn tables(&self) -> Vec<Table> {
        Table::ALL
            .into_iter()
            .filter(|t| self.ops.iter().any(|op| op.table == *t))
            .collect()
    }

    /// The chains (built-in ones included) of `table` that hold rules, in the order of their first rule.
    pub fn chains_with_rules(&self, table: Table) -> Vec<Chain> {
        let mut chains = Vec::new();
        for op in self.ops.iter().filter(|op| op.table == table) {
            if !chains.contains(&op.chain) {
                chains.push(op.chain);
            }
        }
        chains
    }

    /// The effective content of one chain after every append and insert, in evaluation order,
    /// with each rule's list group.
    pub fn chain_rules(&self, table: Table, chain: Chain) -> Vec<(&Rule, Option<ListGroup>)> {
        let mut rules: Vec<(&Rule, Option<ListGroup>)> = Vec::new();
        for op in self
            .ops
            .iter()
            .filter(|op| op.table == table && op.chain == chain)
        {
            match op.position {
                Position::Append => rules.push((&op.rule, op.group)),
                Position::Insert(n) => {
                    // iptables refuses an index past the end + 1; the plan never produces one.
                    let at = (n as usize).saturating_sub(1).min(rules.len());
                    rules.insert(at, (&op.rule, op.group));
                }
            }
        }
        rules
    }
}

/// A non-netfilter step that TPROXY or IPv6 inbound passthrough needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RoutingStep {
    /// `ip -f FAMILY rule add fwmark MARK lookup TABLE`: marked packets use the TPROXY table.
    FwmarkRule {
        family: Family,
        mark: u32,
        table: u32,
    },
    /// `ip -f FAMILY route add local default dev lo table TABLE`: deliver them locally.
    LocalDefaultRoute { family: Family, table: u32 },
    /// `ip -6 addr add ::6/128 dev lo`: the proxy's inbound passthrough source for IPv6
    /// (IPv4 has 127.0.0.0/8 on lo already).
    LoopbackAddress { addr: IpNetwork },
}

/// Everything meshcap installs for one configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub v4: FamilyPlan,
    /// `None` when IPv6 is off: then no IPv6 rule is written and IPv6 traffic is untouched.
    pub v6: Option<FamilyPlan>,
    pub routing: Vec<RoutingStep>,
}

impl Plan {
    /// The family plans that are in force (IPv4, then IPv6 when on).
    pub fn families(&self) -> impl Iterator<Item = &FamilyPlan> {
        std::iter::once(&self.v4).chain(self.v6.as_ref())
    }
}
