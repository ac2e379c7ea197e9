//! The non-netfilter steps of a plan (TPROXY's fwmark rule and local route, `::6` on lo),
//! applied over rtnetlink. Shared by every backend.
//!
//! Each step sends what the `ip` command Istio runs would send, so the kernel ends up holding
//! the same rule, route and address (`ip rule`, `ip route`, `ip addr` print them alike), and each
//! request is acknowledged (`NLM_F_ACK`) so that a refusal is reported, not lost. Errors name the
//! equivalent `ip` command.
//!
//! The socket is opened in the calling thread's network namespace; callers enter the pod's
//! namespace first.

use super::firewall::BackendError;
use crate::plan::{Family, RoutingStep};
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, AddressScope,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::errno::Errno;

/// Applies the steps; a step already in place is not an error. When a step fails, the steps this
/// call added are removed again (those that were in place before stay), so that a failed run
/// leaves the routing as it found it, like the netfilter backends do with their rules.
pub fn apply(steps: &[RoutingStep]) -> Result<(), BackendError> {
    if steps.is_empty() {
        return Ok(());
    }
    let mut nl = Rtnl::open()?;
    let mut added = Vec::new();
    for step in steps {
        match add(&mut nl, step) {
            Ok(true) => added.push(step),
            Ok(false) => {}
            Err(e) => {
                for step in added.iter().rev() {
                    if let Err(undo) = remove(&mut nl, step) {
                        tracing::error!("could not undo a routing step: {undo}");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Removes the steps; a step already gone is not an error.
pub fn clean(steps: &[RoutingStep]) -> Result<(), BackendError> {
    if steps.is_empty() {
        return Ok(());
    }
    let mut nl = Rtnl::open()?;
    // Reverse order: the rule that sends packets to the table goes before the table's route.
    steps
        .iter()
        .rev()
        .try_for_each(|step| remove(&mut nl, step))
}

/// Installs one step; `Ok(false)` when it was in place already.
fn add(nl: &mut Rtnl, step: &RoutingStep) -> Result<bool, BackendError> {
    match step {
        RoutingStep::FwmarkRule {
            family,
            mark,
            table,
        } => {
            let what = format!(
                "ip -f {} rule add fwmark {mark} lookup {table}",
                ip_family(*family)
            );
            // The kernel adds an identical rule again at the next free priority (EXCL does not
            // stop it, the priority differs), so look first: re-runs must not stack copies.
            let existing =
                fwmark_rules(nl, *family, *mark, *table).map_err(|f| f.into_error(&what))?;
            if !existing.is_empty() {
                return Ok(false);
            }
            let msg = fwmark_rule(*family, *mark, *table, None);
            created(nl.request(RouteNetlinkMessage::NewRule(msg), NLM_F_CREATE | NLM_F_EXCL))
                .map_err(|f| f.into_error(&what))
        }
        RoutingStep::LocalDefaultRoute { family, table } => {
            let what = format!(
                "ip -f {} route add local default dev lo table {table}",
                ip_family(*family)
            );
            let msg = local_default_route(*family, *table, RouteProtocol::Boot)
                .map_err(|f| f.into_error(&what))?;
            // EXCL as `ip route add` does: the route being there already is reported as EEXIST.
            created(nl.request(
                RouteNetlinkMessage::NewRoute(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            ))
            .map_err(|f| f.into_error(&what))
        }
        RoutingStep::LoopbackAddress { addr } => {
            let what = format!("ip -{} addr add {addr} dev lo", ip_version(addr));
            let msg = loopback_address(addr).map_err(|f| f.into_error(&what))?;
            created(nl.request(
                RouteNetlinkMessage::NewAddress(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            ))
            .map_err(|f| f.into_error(&what))
        }
    }
}

/// Whether an EXCL create made something: EEXIST means it was there already.
fn created(result: Result<(), RtnlError>) -> Result<bool, RtnlError> {
    match result {
        Ok(()) => Ok(true),
        Err(f) => f.tolerate(&[Errno::EEXIST]).map(|()| false),
    }
}

/// Removes one step; absent is fine.
fn remove(nl: &mut Rtnl, step: &RoutingStep) -> Result<(), BackendError> {
    match step {
        RoutingStep::FwmarkRule {
            family,
            mark,
            table,
        } => {
            let what = format!(
                "ip -f {} rule del fwmark {mark} lookup {table}",
                ip_family(*family)
            );
            // Every copy goes, each by its own priority: an older istio-init run may have stacked
            // duplicates, and the next run's dump must find none. The priority also keeps the
            // kernel from deleting a rule that merely shares mark and table (it matches only the
            // fields a delete request names).
            for priority in
                fwmark_rules(nl, *family, *mark, *table).map_err(|f| f.into_error(&what))?
            {
                let msg = fwmark_rule(*family, *mark, *table, priority);
                nl.request(RouteNetlinkMessage::DelRule(msg), 0)
                    .or_else(|f| f.tolerate(&[Errno::ENOENT]))
                    .map_err(|f| f.into_error(&what))?;
            }
            Ok(())
        }
        RoutingStep::LocalDefaultRoute { family, table } => {
            let what = format!(
                "ip -f {} route del local default dev lo table {table}",
                ip_family(*family)
            );
            // Protocol unspecified, as `ip route del` sends it: whoever added the route, it goes.
            let msg = local_default_route(*family, *table, RouteProtocol::Unspec)
                .map_err(|f| f.into_error(&what))?;
            // A missing route (or IPv4 table) is ESRCH; some paths say ENOENT.
            nl.request(RouteNetlinkMessage::DelRoute(msg), 0)
                .or_else(|f| f.tolerate(&[Errno::ESRCH, Errno::ENOENT]))
                .map_err(|f| f.into_error(&what))
        }
        RoutingStep::LoopbackAddress { addr } => {
            let what = format!("ip -{} addr del {addr} dev lo", ip_version(addr));
            // Only the address meshcap added goes: one that was there before (put there by the
            // node's tooling or another sidecar) carries no meshcap protocol mark and stays.
            if !added_by_meshcap(nl, addr).map_err(|f| f.into_error(&what))? {
                return Ok(());
            }
            let msg = loopback_address(addr).map_err(|f| f.into_error(&what))?;
            nl.request(RouteNetlinkMessage::DelAddress(msg), 0)
                .or_else(|f| f.tolerate(&[Errno::EADDRNOTAVAIL, Errno::ENOENT]))
                .map_err(|f| f.into_error(&what))
        }
    }
}

/// The priorities of the rules of `family` that are exactly `fwmark MARK lookup TABLE` (any
/// priority, no other selector), as the kernel dumps them; `None` is priority 0 (not dumped).
fn fwmark_rules(
    nl: &mut Rtnl,
    family: Family,
    mark: u32,
    table: u32,
) -> Result<Vec<Option<u32>>, RtnlError> {
    let mut query = RuleMessage::default();
    // The kernel dumps only this family's rules when the header names one.
    query.header.family = address_family(family);
    let rules = nl.dump(RouteNetlinkMessage::GetRule(query))?;
    Ok(rules
        .into_iter()
        .filter_map(|msg| match msg {
            RouteNetlinkMessage::NewRule(rule) => Some(rule),
            _ => None,
        })
        .filter(|rule| is_fwmark_rule(rule, family, mark, table))
        .map(|rule| {
            rule.attributes.iter().find_map(|a| match a {
                RuleAttribute::Priority(p) => Some(*p),
                _ => None,
            })
        })
        .collect())
}

/// Whether a dumped rule is `fwmark MARK lookup TABLE` and nothing more: a rule that also selects
/// on addresses, interfaces, ports etc. (or is inverted) routes other packets and is not ours.
fn is_fwmark_rule(rule: &RuleMessage, family: Family, mark: u32, table: u32) -> bool {
    let h = &rule.header;
    if h.family != address_family(family)
        || h.action != RuleAction::ToTable
        || h.src_len != 0
        || h.dst_len != 0
        || h.tos != 0
        || h.flags.contains(RuleFlags::Invert)
    {
        return false;
    }
    // Tables above 255 only travel as FRA_TABLE; the header byte is then 0 (RT_TABLE_UNSPEC).
    let mut got_table = u32::from(h.table);
    let (mut got_mark, mut got_mask) = (0, None);
    for attr in &rule.attributes {
        match attr {
            RuleAttribute::Table(t) => got_table = *t,
            RuleAttribute::FwMark(m) => got_mark = *m,
            RuleAttribute::FwMask(m) => got_mask = Some(*m),
            // Not selectors: where the rule sits and who added it.
            RuleAttribute::Priority(_) | RuleAttribute::Protocol(_) => {}
            // The kernel dumps these on every rule; -1 (u32::MAX) means unset.
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
            _ => return false,
        }
    }
    // `fwmark MARK` without a mask means mask 0xffffffff (the kernel fills it in for MARK != 0).
    let want_mask = if mark != 0 { u32::MAX } else { 0 };
    got_table == table && got_mark == mark && got_mask.unwrap_or(want_mask) == want_mask
}

/// `fwmark MARK lookup TABLE` as `ip rule` sends it (no priority: the kernel picks one), or with
/// the priority of a dumped rule, to delete exactly that one.
fn fwmark_rule(family: Family, mark: u32, table: u32, priority: Option<u32>) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(family);
    msg.header.action = RuleAction::ToTable;
    msg.header.table = header_table(table);
    msg.attributes = vec![RuleAttribute::FwMark(mark), RuleAttribute::Table(table)];
    if let Some(p) = priority {
        msg.attributes.push(RuleAttribute::Priority(p));
    }
    msg
}

/// `local default dev lo table TABLE`: type local, scope host, no destination (prefix length 0).
/// `ip route add` marks its routes proto boot (which `ip route` does not print).
pub(crate) fn local_default_route(
    family: Family,
    table: u32,
    protocol: RouteProtocol,
) -> Result<RouteMessage, RtnlError> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(family);
    msg.header.destination_prefix_length = 0;
    msg.header.table = header_table(table);
    msg.header.protocol = protocol;
    msg.header.scope = RouteScope::Host;
    msg.header.kind = RouteType::Local;
    msg.attributes = vec![
        RouteAttribute::Table(table),
        RouteAttribute::Oif(loopback_index()?),
    ];
    Ok(msg)
}

/// `ADDR dev lo`, as `ip addr` sends it: IFA_LOCAL and IFA_ADDRESS both the address (no peer).
/// Scope universe, `ip`'s default outside 127/8; the kernel derives an IPv6 address's real scope.
fn loopback_address(addr: &IpNetwork) -> Result<AddressMessage, RtnlError> {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpNetwork::V4(_) => AddressFamily::Inet,
        IpNetwork::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = addr.prefix();
    msg.header.scope = AddressScope::Universe;
    msg.header.index = loopback_index()?;
    msg.attributes = vec![
        AddressAttribute::Local(addr.ip()),
        AddressAttribute::Address(addr.ip()),
        // IFA_PROTO (kernel 5.18+, ignored by older ones): who added the address, so that
        // cleanup removes only meshcap's.
        AddressAttribute::Protocol(AddressProtocol::Other(MESHCAP_ADDRESS_PROTOCOL)),
        // No duplicate address detection: until it finishes (even on lo) binding the address
        // fails with EADDRNOTAVAIL, and the proxy may start right after meshcap.
        AddressAttribute::Flags(AddressFlags::Nodad),
    ];
    Ok(msg)
}

/// The IFA_PROTO value meshcap's addresses carry (`ip -d addr` shows it as `proto 0x6d`; values
/// 0-3 are the kernel's own).
pub const MESHCAP_ADDRESS_PROTOCOL: u8 = 0x6d;

/// Whether lo holds `addr` and meshcap added it.
fn added_by_meshcap(nl: &mut Rtnl, addr: &IpNetwork) -> Result<bool, RtnlError> {
    let mut query = AddressMessage::default();
    query.header.family = match addr {
        IpNetwork::V4(_) => AddressFamily::Inet,
        IpNetwork::V6(_) => AddressFamily::Inet6,
    };
    let lo = loopback_index()?;
    Ok(nl
        .dump(RouteNetlinkMessage::GetAddress(query))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => Some(a),
            _ => None,
        })
        .filter(|a| a.header.index == lo && a.header.prefix_len == addr.prefix())
        .any(|a| {
            let has = |want: &AddressAttribute| a.attributes.iter().any(|x| x == want);
            has(&AddressAttribute::Address(addr.ip()))
                && has(&AddressAttribute::Protocol(AddressProtocol::Other(
                    MESHCAP_ADDRESS_PROTOCOL,
                )))
        }))
}

/// lo's interface index in the current namespace (1 in practice, but not by contract).
pub(crate) fn loopback_index() -> Result<u32, RtnlError> {
    nix::net::if_::if_nametoindex("lo").map_err(|e| RtnlError {
        errno: Some(e),
        reason: format!("no interface lo: {}", e.desc()),
    })
}

/// The header's 8-bit table field: the table itself when it fits, else RT_TABLE_UNSPEC so the
/// kernel takes the 32-bit table attribute (which is always sent too), as `ip` does.
pub(crate) fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC)
}

pub(crate) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn ip_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

fn ip_version(addr: &IpNetwork) -> u8 {
    match addr {
        IpNetwork::V4(_) => 4,
        IpNetwork::V6(_) => 6,
    }
}

/// Why an [`Rtnl`] request failed: the errno the kernel answered with, if it did, and a text for
/// the user. The errno decides whether a step counts as in place; [`RtnlError::into_error`]
/// makes the [`BackendError`] once the caller names the `ip` command.
pub(crate) struct RtnlError {
    errno: Option<Errno>,
    reason: String,
}

impl RtnlError {
    fn io(e: std::io::Error) -> RtnlError {
        RtnlError {
            errno: e.raw_os_error().map(Errno::from_raw),
            reason: e.to_string(),
        }
    }

    fn kernel(code: i32) -> RtnlError {
        // The kernel sends a negative errno.
        let errno = Errno::from_raw(code.abs());
        RtnlError {
            errno: Some(errno),
            reason: errno.desc().to_owned(),
        }
    }

    fn other(reason: String) -> RtnlError {
        RtnlError {
            errno: None,
            reason,
        }
    }

    /// Success when the kernel refused with one of `errnos` (the state asked for is there already).
    pub(crate) fn tolerate(self, errnos: &[Errno]) -> Result<(), RtnlError> {
        match self.errno {
            Some(e) if errnos.contains(&e) => Ok(()),
            _ => Err(self),
        }
    }

    pub(crate) fn into_error(self, what: &str) -> BackendError {
        BackendError::Netlink {
            what: what.to_owned(),
            reason: self.reason,
        }
    }
}

/// A blocking rtnetlink socket connected to the kernel.
pub(crate) struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub(crate) fn open() -> Result<Rtnl, BackendError> {
        let open = || -> std::io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        };
        let socket = open().map_err(|e| BackendError::Netlink {
            what: "opening a NETLINK_ROUTE socket".into(),
            reason: e.to_string(),
        })?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one message with `flags` (plus REQUEST) and returns its sequence number.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, RtnlError> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(RtnlError::io)?;
        Ok(self.seq)
    }

    /// Receives the messages answering request `seq`, passing each to `each` until it returns
    /// `Some` (the end of the answer). Messages of other requests (late answers) are skipped.
    fn receive<T>(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> Option<Result<T, RtnlError>>,
    ) -> Result<T, RtnlError> {
        loop {
            // One datagram holds one or more messages; read it whole, whatever its size.
            let (buf, _) = self.socket.recv_from_full().map_err(RtnlError::io)?;
            let mut at = 0;
            while at < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..])
                    .map_err(|e| RtnlError::other(format!("undecodable answer: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                // Messages start at 4-byte boundaries (NLMSG_ALIGN).
                at += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                if let Some(done) = each(msg.payload) {
                    return done;
                }
            }
        }
    }

    /// Sends a change and waits for its acknowledgement: Ok for an ACK, the kernel's errno else.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), RtnlError> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.receive(seq, |payload| match payload {
            NetlinkPayload::Error(e) => Some(match e.code {
                None => Ok(()),
                Some(code) => Err(RtnlError::kernel(code.get())),
            }),
            _ => None,
        })
    }

    /// Sends a dump request and collects every object of the answer.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut objects = Vec::new();
        self.receive(seq, |payload| match payload {
            NetlinkPayload::InnerMessage(m) => {
                objects.push(m);
                None
            }
            // A dump ends with DONE; a failed one carries a negative errno there or in an ERROR.
            NetlinkPayload::Done(d) if d.code != 0 => Some(Err(RtnlError::kernel(d.code))),
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(e) => Some(match e.code {
                None => Ok(()),
                Some(code) => Err(RtnlError::kernel(code.get())),
            }),
            _ => None,
        })?;
        Ok(objects)
    }
}
