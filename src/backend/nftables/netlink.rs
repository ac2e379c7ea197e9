//! Talking to nf_tables over netlink: the one batch that installs a [`Spec`], the dumps that read
//! tables, chains, sets and rules back, and the canonical text of what a rule holds.
//!
//! The canonical text is decoded from netlink messages: from the kernel's dump for read-back, and
//! from the very messages the install batch carries for the expected side, so both are spelled by
//! the same decoder and differ only where the kernel holds something else.

use super::expr;
use super::ir::{
    AddrField, AddrValue, BaseChain, ChainType, Dir, Gid, Hook, Item, PortField, PortValue,
    RuleSpec, Spec, TABLE_NAMES, TableSpec, Verdict, chain_command, netmask,
};
use crate::backend::BackendError;
use crate::plan::{Family, Protocol};
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Counter, Immediate, Meta, Payload, Register, TcpHeaderField,
    TransportHeaderField, UdpHeaderField,
};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::{Set, SetKey};
use nftnl::{Batch, FinalizedBatch, MsgType, NlMsg, ProtoFamily};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, c_void};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::rc::Rc;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFT_TYPE_BASE: u16 = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;
/// `SOL_NETLINK` / `NETLINK_CAP_ACK`: error acknowledgements without a copy of the request.
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;

fn err(what: impl Into<String>, reason: impl ToString) -> BackendError {
    BackendError::Netlink {
        what: what.into(),
        reason: reason.to_string(),
    }
}

fn errno_text(code: i32) -> String {
    let text = std::io::Error::from_raw_os_error(code).to_string();
    match code {
        libc::EPERM => format!("{text} (CAP_NET_ADMIN is needed)"),
        libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT => {
            format!("{text} (is nf_tables available in this kernel?)")
        }
        _ => text,
    }
}

/// A netfilter netlink socket.
pub struct Nl {
    sock: mnl::Socket,
    buf: Vec<u64>,
    seq: u32,
}

impl Nl {
    pub fn open() -> Result<Nl, BackendError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(|e| {
            err(
                "opening a netfilter netlink socket",
                errno_text(e.raw_os_error().unwrap_or(0)),
            )
        })?;
        let one: libc::c_int = 1;
        // Best effort: only shortens error acknowledgements.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_CAP_ACK,
                &one as *const _ as *const c_void,
                std::mem::size_of_val(&one) as libc::socklen_t,
            );
        }
        Ok(Nl {
            sock,
            // Aligned for nlmsghdr; larger than any dump part the kernel sends at once.
            buf: vec![0u64; (256 * 1024) / 8],
            seq: 0x4d43_0000,
        })
    }

    fn recv(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        self.recv_with(0)
    }

    /// One datagram's messages; `flags` as for recv(2) (`MSG_DONTWAIT`: `WouldBlock` when none
    /// is queued).
    fn recv_with(&mut self, flags: libc::c_int) -> std::io::Result<Vec<Vec<u8>>> {
        let bytes: &mut [u8] = unsafe {
            std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut u8, self.buf.len() * 8)
        };
        let n = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                bytes.as_mut_ptr() as *mut c_void,
                bytes.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        mnl::NlMessages::new(&bytes[..n as usize])
            .map(|m| m.map(<[u8]>::to_vec))
            .collect()
    }

    /// Sends a dump request (`msg_type` an `NFT_MSG_GET*`) and returns the answer's messages.
    fn dump(
        &mut self,
        what: &str,
        msg_type: u16,
        payload: &dyn Fn(*mut libc::nlmsghdr),
    ) -> Result<Vec<Vec<u8>>, BackendError> {
        self.seq += 1;
        let mut req = vec![0u64; 1024];
        let hdr = unsafe {
            sys::nftnl_nlmsg_build_hdr(
                req.as_mut_ptr() as *mut libc::c_char,
                msg_type,
                libc::NFPROTO_INET as u16,
                libc::NLM_F_DUMP as u16,
                self.seq,
            )
        };
        payload(hdr);
        let len = unsafe { (*hdr).nlmsg_len } as usize;
        let bytes = unsafe { std::slice::from_raw_parts(req.as_ptr() as *const u8, len) };
        self.sock
            .send(bytes)
            .map_err(|e| err(what, errno_text(e.raw_os_error().unwrap_or(0))))?;
        let mut out = Vec::new();
        loop {
            for msg in self
                .recv()
                .map_err(|e| err(what, errno_text(e.raw_os_error().unwrap_or(0))))?
            {
                let (ty, seq) = header(&msg);
                if seq != self.seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(&msg);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(err(what, errno_text(code)));
                    }
                    _ => out.push(msg),
                }
            }
        }
    }

    /// Sends one finalized batch and checks every acknowledgement; the first refusal is reported
    /// with the object it concerned (`whats[i]` describes the i-th message after the batch start).
    pub fn send_batch(
        &mut self,
        batch: &FinalizedBatch,
        whats: &[What],
    ) -> Result<(), BackendError> {
        let seqs = batch.sequence_numbers();
        // With acknowledged batch begin/end messages (kernel 6.10+) the range holds two more.
        let first_msg_seq = if seqs.len() == whats.len() + 2 {
            seqs.start + 1
        } else {
            seqs.start
        };
        // One sendto: nfnetlink only runs a batch that arrives whole.
        let data = batch_bytes(batch);
        let need = (data.len() + 64 * 1024) as libc::c_int;
        let fd = unsafe { BorrowedFd::borrow_raw(self.sock.as_raw_fd()) };
        if let Ok(current) = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SndBuf)
            && (current as libc::c_int) < need
        {
            let _ = nix::sys::socket::setsockopt(
                &fd,
                nix::sys::socket::sockopt::SndBufForce,
                &(need as usize),
            );
        }
        self.sock.send(&data).map_err(|e| {
            err(
                "sending the nftables batch",
                errno_text(e.raw_os_error().unwrap_or(0)),
            )
        })?;
        let mut pending: std::collections::BTreeSet<u32> = seqs.clone().collect();
        let mut first_error: Option<(u32, i32)> = None;
        while !pending.is_empty() {
            // The kernel processes the batch inside sendto, so every acknowledgement is queued
            // already: read without waiting, and wait (briefly) only when the queue is empty,
            // which guards against a kernel that acknowledges less.
            let msgs = match self.recv_with(libc::MSG_DONTWAIT) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut pfd = libc::pollfd {
                        fd: self.sock.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    match unsafe { libc::poll(&mut pfd, 1, 1000) } {
                        0 => break,
                        r if r < 0 => {
                            return Err(err(
                                "waiting for nftables acknowledgements",
                                std::io::Error::last_os_error(),
                            ));
                        }
                        _ => continue,
                    }
                }
                other => other.map_err(|e| {
                    err(
                        "reading nftables acknowledgements",
                        errno_text(e.raw_os_error().unwrap_or(0)),
                    )
                })?,
            };
            for msg in msgs {
                let (ty, _) = header(&msg);
                if ty != NLMSG_ERROR {
                    continue;
                }
                let seq = acked_seq(&msg);
                pending.remove(&seq);
                let code = error_code(&msg);
                if code != 0 && first_error.is_none_or(|(s, _)| seq < s) {
                    first_error = Some((seq, code));
                }
            }
        }
        if let Some((seq, code)) = first_error {
            let what = seq
                .checked_sub(first_msg_seq)
                .and_then(|i| whats.get(i as usize))
                .map(What::to_string)
                .unwrap_or_else(|| "the nftables batch".to_owned());
            return Err(err(
                format!("the kernel refused `{what}` (the whole batch was rolled back)"),
                errno_text(code),
            ));
        }
        if !pending.is_empty() {
            return Err(err(
                "the nftables batch",
                format!("no acknowledgement for {} message(s)", pending.len()),
            ));
        }
        Ok(())
    }
}

fn header(msg: &[u8]) -> (u16, u32) {
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
    (ty, seq)
}

/// The (positive) errno of an NLMSG_ERROR message; 0 for an acknowledgement.
fn error_code(msg: &[u8]) -> i32 {
    if msg.len() < 20 {
        return libc::EPROTO;
    }
    -i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]])
}

/// The sequence number of the request an NLMSG_ERROR answers.
fn acked_seq(msg: &[u8]) -> u32 {
    if msg.len() >= 32 {
        u32::from_ne_bytes([msg[28], msg[29], msg[30], msg[31]])
    } else {
        header(msg).1
    }
}

fn cstr(ptr: *const libc::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// A chain as the kernel (or a batch) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    pub table: String,
    pub name: String,
    /// (hook number, priority, type) of a base chain.
    pub base: Option<(u32, i32, String)>,
}

impl ChainInfo {
    fn parse(msg: &[u8]) -> Option<ChainInfo> {
        unsafe {
            let c = sys::nftnl_chain_alloc();
            if c.is_null() {
                std::process::abort();
            }
            let ok = sys::nftnl_chain_nlmsg_parse(msg.as_ptr() as *const libc::nlmsghdr, c) >= 0;
            let info = ok.then(|| ChainInfo {
                table: cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)),
                name: cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16)),
                base: sys::nftnl_chain_is_set(c, sys::NFTNL_CHAIN_HOOKNUM as u16).then(|| {
                    (
                        sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16),
                        sys::nftnl_chain_get_s32(c, sys::NFTNL_CHAIN_PRIO as u16),
                        cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TYPE as u16)),
                    )
                }),
            });
            sys::nftnl_chain_free(c);
            info
        }
    }

    /// The pseudo-rule that stands for a base chain's definition in read-back.
    pub fn header_text(&self) -> Option<String> {
        self.base
            .as_ref()
            .map(|(hook, prio, kind)| format!("chain type {kind} hook {hook} priority {prio}"))
    }
}

fn hook_num(hook: Hook) -> u32 {
    match hook {
        Hook::Prerouting => libc::NF_INET_PRE_ROUTING as u32,
        Hook::Output => libc::NF_INET_LOCAL_OUT as u32,
    }
}

fn base_info(b: &BaseChain) -> (u32, i32, String) {
    (hook_num(b.hook), b.priority, b.kind.name().to_owned())
}

/// Which of meshcap's tables exist, and their chains.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub tables: Vec<String>,
    pub chains: Vec<ChainInfo>,
}

/// Lists the inet tables among meshcap's (and Istio's) three.
pub fn our_tables(nl: &mut Nl) -> Result<Vec<String>, BackendError> {
    let msgs = nl.dump(
        "listing nftables tables",
        libc::NFT_MSG_GETTABLE as u16,
        &|_| {},
    )?;
    let mut names = Vec::new();
    for msg in msgs {
        unsafe {
            let t = sys::nftnl_table_alloc();
            if t.is_null() {
                std::process::abort();
            }
            if sys::nftnl_table_nlmsg_parse(msg.as_ptr() as *const libc::nlmsghdr, t) >= 0 {
                let family = sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FAMILY as u16);
                let name = cstr(sys::nftnl_table_get_str(t, sys::NFTNL_TABLE_NAME as u16));
                if family == libc::NFPROTO_INET as u32 && TABLE_NAMES.contains(&name.as_str()) {
                    names.push(name);
                }
            }
            sys::nftnl_table_free(t);
        }
    }
    Ok(names)
}

/// The chains of the inet tables named in `tables`.
pub fn chains(nl: &mut Nl, tables: &[String]) -> Result<Vec<ChainInfo>, BackendError> {
    let msgs = nl.dump(
        "listing nftables chains",
        libc::NFT_MSG_GETCHAIN as u16,
        &|_| {},
    )?;
    Ok(msgs
        .iter()
        .filter_map(|m| ChainInfo::parse(m))
        .filter(|c| tables.contains(&c.table))
        .collect())
}

/// The flush half of nft's `flush table`: a rule deletion naming only the table removes every
/// rule of every chain in it (and with them the anonymous sets they use).
struct FlushTable {
    rule: NonNull<sys::nftnl_rule>,
}

impl FlushTable {
    fn new(table: &CStr) -> FlushTable {
        unsafe {
            let rule =
                NonNull::new(sys::nftnl_rule_alloc()).unwrap_or_else(|| std::process::abort());
            sys::nftnl_rule_set_u32(
                rule.as_ptr(),
                sys::NFTNL_RULE_FAMILY as u16,
                libc::NFPROTO_INET as u32,
            );
            sys::nftnl_rule_set_str(rule.as_ptr(), sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
            FlushTable { rule }
        }
    }
}

impl Drop for FlushTable {
    fn drop(&mut self) {
        unsafe { sys::nftnl_rule_free(self.rule.as_ptr()) }
    }
}

// Safety: writes one DELRULE message, far smaller than nft_nlmsg_maxsize.
unsafe impl NlMsg for FlushTable {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf as *mut libc::c_char,
                libc::NFT_MSG_DELRULE as u16,
                libc::NFPROTO_INET as u16,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_rule_nlmsg_build_payload(hdr, self.rule.as_ptr());
        }
    }
}

/// What one batch message does, spelled only when an error (or the debug log) names it: the
/// text of a rule with a thousand-element set costs more to format than to send.
#[derive(Clone, Debug)]
pub enum What {
    Text(String),
    /// `add rule inet TABLE CHAIN RULE`, or the set (`elements`: a message of its elements)
    /// that rule looks up.
    Rule {
        table: &'static str,
        chain: &'static str,
        rule: Rc<RuleSpec>,
        part: RulePart,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RulePart {
    Rule,
    Set,
    Elements,
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            What::Text(text) => f.write_str(text),
            What::Rule {
                table,
                chain,
                rule,
                part,
            } => {
                let prefix = match part {
                    RulePart::Rule => "",
                    RulePart::Set => "add set for ",
                    RulePart::Elements => "add set elements for ",
                };
                write!(f, "{prefix}add rule inet {table} {chain} {}", rule.text())
            }
        }
    }
}

/// A batch and what each of its messages does (for error messages and expected read-back).
pub struct Built {
    pub batch: FinalizedBatch,
    pub whats: Vec<What>,
    /// The elements (key, interval end) of each set the batch creates, by set id.
    pub sets: HashMap<u32, Vec<(Vec<u8>, bool)>>,
}

/// Canonical text of a set's elements: sorted keys, interval ends marked.
fn elements_text(elements: &mut [(Vec<u8>, bool)]) -> String {
    elements.sort();
    let parts: Vec<String> = elements
        .iter()
        .map(|(k, end)| format!("{}{}", hex(k), if *end { "/end" } else { "" }))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn addr_bytes(family: Family, v: u128) -> Vec<u8> {
    match family {
        Family::V4 => (v as u32).to_be_bytes().to_vec(),
        Family::V6 => v.to_be_bytes().to_vec(),
    }
}

struct Builder {
    batch: Batch,
    whats: Vec<What>,
    sets: HashMap<u32, Vec<(Vec<u8>, bool)>>,
    next_set_id: u32,
}

impl Builder {
    fn add<T: NlMsg>(&mut self, msg: &T, ty: MsgType, what: String) {
        self.add_what(msg, ty, What::Text(what));
    }

    fn add_what<T: NlMsg>(&mut self, msg: &T, ty: MsgType, what: What) {
        self.batch.add(msg, ty);
        self.whats.push(what);
    }

    fn set<K: SetKey>(
        &mut self,
        table: &nftnl::Table,
        keys: &[Vec<u8>],
        what: &What,
    ) -> (CString, u32) {
        self.next_set_id += 1;
        let id = self.next_set_id;
        let set = Set::<K>::new(c"__set%d", id, table, ProtoFamily::Inet);
        expr::finish_set(&set, keys.len());
        for key in keys {
            expr::add_element(&set, key);
        }
        let part = |part: RulePart| match what {
            What::Rule {
                table, chain, rule, ..
            } => What::Rule {
                table,
                chain,
                rule: Rc::clone(rule),
                part,
            },
            What::Text(text) => What::Text(text.clone()),
        };
        self.add_what(&set, MsgType::Add, part(RulePart::Set));
        for msg in set.elems_iter() {
            self.add_what(&msg, MsgType::Add, part(RulePart::Elements));
        }
        self.sets
            .insert(id, keys.iter().map(|k| (k.clone(), false)).collect());
        (set.get_name().to_owned(), id)
    }

    /// Adds the rule `spec` (and first the sets it looks up); `names` are its table and chain.
    fn rule(
        &mut self,
        table: &nftnl::Table,
        chain: &nftnl::Chain,
        names: (&'static str, &'static str),
        spec: &RuleSpec,
    ) {
        let what = What::Rule {
            table: names.0,
            chain: names.1,
            rule: Rc::new(spec.clone()),
            part: RulePart::Rule,
        };
        // Sets first: a rule can only look up a set the batch already created.
        let mut lookups = Vec::new();
        for item in &spec.items {
            match item {
                Item::Addr {
                    family,
                    value: AddrValue::Networks { starts, .. },
                    ..
                } => {
                    let keys: Vec<Vec<u8>> =
                        starts.iter().map(|s| addr_bytes(*family, *s)).collect();
                    lookups.push(match family {
                        Family::V4 => self.set::<Ipv4Addr>(table, &keys, &what),
                        Family::V6 => self.set::<Ipv6Addr>(table, &keys, &what),
                    });
                }
                Item::Port {
                    proto,
                    value: PortValue::Set(ports),
                    ..
                } => {
                    let keys: Vec<Vec<u8>> = ports
                        .iter()
                        .map(|p| expr::ProtoPortKey::key(proto_num(*proto), *p))
                        .collect();
                    lookups.push(self.set::<expr::ProtoPortKey>(table, &keys, &what));
                }
                _ => {}
            }
        }
        let mut rule = nftnl::Rule::new(chain);
        let mut lookups = lookups.into_iter();
        for item in &spec.items {
            add_item(&mut rule, item, &mut lookups);
        }
        self.add_what(&rule, MsgType::Add, what);
    }
}

fn cmp_op(negated: bool) -> CmpOp {
    if negated { CmpOp::Neq } else { CmpOp::Eq }
}

/// The expressions of one item, as nft generates them for the same text.
fn add_item(
    rule: &mut nftnl::Rule,
    item: &Item,
    lookups: &mut impl Iterator<Item = (CString, u32)>,
) {
    match item {
        Item::NfProto(f) => {
            rule.add_expr(&Meta::NfProto);
            let v = match f {
                Family::V4 => libc::NFPROTO_IPV4,
                Family::V6 => libc::NFPROTO_IPV6,
            };
            rule.add_expr(&Cmp::new(CmpOp::Eq, v as u8));
        }
        Item::L4Proto(p) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, proto_num(*p)));
        }
        Item::Iface {
            dir,
            name,
            prefix,
            negated,
        } => {
            rule.add_expr(&match dir {
                Dir::In => Meta::IifName,
                Dir::Out => Meta::OifName,
            });
            let data: Vec<u8> = if *prefix {
                name.as_bytes().to_vec()
            } else {
                // nft compares the whole IFNAMSIZ buffer, NUL padded.
                let mut b = name.as_bytes().to_vec();
                b.resize(libc::IFNAMSIZ, 0);
                b
            };
            rule.add_expr(&Cmp::new(cmp_op(*negated), data.as_slice()));
        }
        Item::Addr {
            family,
            field,
            negated,
            value,
        } => {
            let (full, offset) = match (family, field) {
                (Family::V4, AddrField::Saddr) => (4, 12),
                (Family::V4, AddrField::Daddr) => (4, 16),
                (Family::V6, AddrField::Saddr) => (16, 8),
                (Family::V6, AddrField::Daddr) => (16, 24),
            };
            let load = |len: u32| expr::PayloadLoad {
                base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                offset,
                len,
                dreg: expr::REG_1,
            };
            match value {
                AddrValue::Prefix(net) => {
                    let bytes = match net.network() {
                        std::net::IpAddr::V4(a) => a.octets().to_vec(),
                        std::net::IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    let plen = net.prefix() as usize;
                    if plen > 0 && plen % 8 == 0 {
                        // Whole bytes: nft loads only the prefix bytes.
                        rule.add_expr(&load((plen / 8) as u32));
                        rule.add_expr(&Cmp::new(cmp_op(*negated), &bytes[..plen / 8]));
                    } else {
                        let mask = addr_bytes(*family, netmask(*family, plen as u8));
                        let zero = vec![0u8; full as usize];
                        rule.add_expr(&load(full));
                        rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
                        rule.add_expr(&Cmp::new(cmp_op(*negated), bytes.as_slice()));
                    }
                }
                AddrValue::Range(iv) => {
                    rule.add_expr(&load(full));
                    rule.add_expr(&expr::Range {
                        from: addr_bytes(*family, iv.start),
                        to: addr_bytes(*family, iv.end),
                        negated: *negated,
                    });
                }
                AddrValue::Networks { prefix, .. } => {
                    rule.add_expr(&load(full));
                    let plen = *prefix as usize;
                    if plen < full as usize * 8 {
                        let mask = addr_bytes(*family, netmask(*family, *prefix));
                        let zero = vec![0u8; full as usize];
                        rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
                    }
                    let (set_name, set_id) = lookups.next().expect("set created for the rule");
                    rule.add_expr(&expr::Lookup {
                        set_name,
                        set_id,
                        inverted: *negated,
                    });
                }
            }
        }
        Item::Port {
            proto,
            field,
            negated,
            value,
        } => {
            let header = match (proto, field) {
                (Protocol::Tcp, PortField::Dport) => {
                    TransportHeaderField::Tcp(TcpHeaderField::Dport)
                }
                (Protocol::Tcp, PortField::Sport) => {
                    TransportHeaderField::Tcp(TcpHeaderField::Sport)
                }
                (Protocol::Udp, PortField::Dport) => {
                    TransportHeaderField::Udp(UdpHeaderField::Dport)
                }
                (Protocol::Udp, PortField::Sport) => {
                    TransportHeaderField::Udp(UdpHeaderField::Sport)
                }
            };
            match value {
                PortValue::One(p) => {
                    rule.add_expr(&Payload::Transport(header));
                    rule.add_expr(&Cmp::new(cmp_op(*negated), &p.to_be_bytes()[..]));
                }
                PortValue::Set(_) => {
                    // `meta l4proto . tcp dport`: the protocol in register 1, the port in the
                    // next 32-bit register (see `ProtoPortKey`).
                    rule.add_expr(&Meta::L4Proto);
                    rule.add_expr(&expr::PayloadLoad {
                        base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
                        offset: match field {
                            PortField::Sport => 0,
                            PortField::Dport => 2,
                        },
                        len: 2,
                        dreg: expr::REG32_01,
                    });
                    let (set_name, set_id) = lookups.next().expect("set created for the rule");
                    rule.add_expr(&expr::Lookup {
                        set_name,
                        set_id,
                        inverted: *negated,
                    });
                }
            }
        }
        Item::SkUid { uid, negated } => {
            rule.add_expr(&Meta::SkUid);
            rule.add_expr(&Cmp::new(cmp_op(*negated), *uid));
        }
        Item::SkGid { gid, negated } => {
            rule.add_expr(&Meta::SkGid);
            // Names were resolved (or refused) before the batch was built; see `Spec::unresolved`.
            let gid = match gid {
                Gid::Id(id) => *id,
                Gid::Name(_) => u32::MAX,
            };
            rule.add_expr(&Cmp::new(cmp_op(*negated), gid));
        }
        Item::Mark { value, negated } => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Cmp::new(cmp_op(*negated), *value));
        }
        Item::CtMark(v) => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Cmp::new(CmpOp::Eq, *v));
        }
        Item::CtState(mask) => {
            rule.add_expr(&Conntrack::State);
            rule.add_expr(&Bitwise::new(*mask, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Item::Counter => rule.add_expr(&Counter),
        Item::SetMark { value, mask } => {
            if *mask == u32::MAX {
                rule.add_expr(&Immediate::new(*value, Register::Reg1));
            } else {
                rule.add_expr(&Meta::Mark { set: false });
                rule.add_expr(&Bitwise::new(!*mask, *value));
            }
            rule.add_expr(&Meta::Mark { set: true });
        }
        Item::SaveMark => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Conntrack::Mark { set: true });
        }
        Item::RestoreMark => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Meta::Mark { set: true });
        }
        Item::CtZone(z) => {
            // nft's ct zone is a 16-bit host-order integer.
            rule.add_expr(&Immediate::new(*z, Register::Reg1));
            rule.add_expr(&expr::CtSet {
                key: libc::NFT_CT_ZONE as u32,
            });
        }
        Item::Redirect(port) => {
            rule.add_expr(&Immediate::new(port.to_be_bytes(), Register::Reg1));
            rule.add_expr(&expr::Redirect);
        }
        Item::Tproxy { family, port } => {
            rule.add_expr(&Immediate::new(port.to_be_bytes(), Register::Reg1));
            let nfproto = match family {
                Some(Family::V4) => libc::NFPROTO_IPV4,
                Some(Family::V6) => libc::NFPROTO_IPV6,
                None => libc::NFPROTO_UNSPEC,
            };
            rule.add_expr(&expr::Tproxy {
                nfproto: nfproto as u32,
            });
        }
        Item::Verdict(v) => rule.add_expr(&match v {
            Verdict::Jump(c) => nftnl::expr::Verdict::Jump {
                chain: CString::new(*c).expect("chain names have no NUL"),
            },
            Verdict::Return => nftnl::expr::Verdict::Return,
            Verdict::Accept => nftnl::expr::Verdict::Accept,
            Verdict::Drop => nftnl::expr::Verdict::Drop,
        }),
    }
}

fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

fn nft_chain_type(kind: ChainType) -> nftnl::ChainType {
    match kind {
        ChainType::Filter => nftnl::ChainType::Filter,
        ChainType::Route => nftnl::ChainType::Route,
        ChainType::Nat => nftnl::ChainType::Nat,
    }
}

/// The name of the chain the test-only failure hook jumps to; it never exists.
pub const MISSING_CHAIN: &str = "istio-test-missing-chain";

/// The batch that makes the kernel hold `spec` in meshcap's tables, given what exists:
/// absent tables are added; present ones are flushed and their chains re-created where they
/// differ from `spec` (see below), so the new rules replace the old in the same transaction
/// without the cost of deleting the table; present tables `spec` does not use are deleted.
/// `fail` (test only) adds a rule jumping to a chain that does not exist, so the kernel refuses
/// the batch.
pub fn build_batch(spec: &Spec, existing: &Existing, fail: bool) -> Built {
    let mut b = Builder {
        batch: Batch::new(),
        whats: Vec::new(),
        sets: HashMap::new(),
        next_set_id: 0,
    };
    for name in TABLE_NAMES {
        let want: Option<&TableSpec> = spec.tables.iter().find(|t| t.name == name);
        let exists = existing.tables.iter().any(|t| t == name);
        let cname = CString::new(name).expect("table names have no NUL");
        let table = nftnl::Table::new(&cname, ProtoFamily::Inet);
        let Some(want) = want else {
            if exists {
                b.add(&table, MsgType::Del, format!("delete table inet {name}"));
            }
            continue;
        };
        b.add(&table, MsgType::Add, format!("add table inet {name}"));
        if exists {
            b.add(
                &FlushTable::new(&cname),
                MsgType::Del,
                format!("flush table inet {name}"),
            );
            // The kernel lists chains in creation order. Keep the existing chains that already
            // stand where the plan wants them (a common prefix: typically the base chains, whose
            // deletion would cost a hook unregistration); delete and re-create the others, so
            // the result lists exactly as a fresh install.
            let old_chains: Vec<&ChainInfo> =
                existing.chains.iter().filter(|c| c.table == name).collect();
            let kept = old_chains
                .iter()
                .zip(&want.chains)
                .take_while(|(old, c)| {
                    c.name == old.name && c.base.as_ref().map(base_info) == old.base
                })
                .count();
            for (i, old) in old_chains.iter().enumerate() {
                if i >= kept {
                    let old_name = CString::new(old.name.as_str()).unwrap_or_default();
                    let chain = nftnl::Chain::new(&old_name, &table);
                    b.add(
                        &chain,
                        MsgType::Del,
                        format!("delete chain inet {name} {}", old.name),
                    );
                }
            }
        }
        let names: Vec<CString> = want
            .chains
            .iter()
            .map(|c| CString::new(c.name).expect("chain names have no NUL"))
            .collect();
        let chains: Vec<nftnl::Chain> = want
            .chains
            .iter()
            .zip(&names)
            .map(|(c, n)| {
                let mut chain = nftnl::Chain::new(n, &table);
                if let Some(base) = c.base {
                    chain.set_hook(
                        match base.hook {
                            Hook::Prerouting => nftnl::Hook::PreRouting,
                            Hook::Output => nftnl::Hook::Out,
                        },
                        base.priority,
                    );
                    chain.set_type(nft_chain_type(base.kind));
                }
                chain
            })
            .collect();
        for (c, chain) in want.chains.iter().zip(&chains) {
            b.add(chain, MsgType::Add, chain_command(name, c));
        }
        for (c, chain) in want.chains.iter().zip(&chains) {
            for r in &c.rules {
                b.rule(&table, chain, (name, c.name), r);
            }
        }
        if fail && let (Some(c), Some(chain)) = (want.chains.last(), chains.last()) {
            let r = RuleSpec {
                items: vec![Item::Counter, Item::Verdict(Verdict::Jump(MISSING_CHAIN))],
            };
            b.rule(&table, chain, (name, c.name), &r);
        }
    }
    Built {
        batch: b.batch.finalize(),
        whats: b.whats,
        sets: b.sets,
    }
}

/// The batch that deletes the tables in `tables`.
pub fn delete_batch(tables: &[String]) -> Built {
    let mut b = Builder {
        batch: Batch::new(),
        whats: Vec::new(),
        sets: HashMap::new(),
        next_set_id: 0,
    };
    for name in tables {
        let cname = CString::new(name.as_str()).unwrap_or_default();
        let table = nftnl::Table::new(&cname, ProtoFamily::Inet);
        b.add(&table, MsgType::Del, format!("delete table inet {name}"));
    }
    Built {
        batch: b.batch.finalize(),
        whats: b.whats,
        sets: b.sets,
    }
}

/// Canonical text of one rule message (a kernel dump or a batch request): its table, chain and
/// the text of each expression; `set_text` spells a looked-up set by name or batch id.
fn rule_text(
    msg: &[u8],
    set_text: &dyn Fn(&str, &str, Option<u32>) -> String,
) -> Option<(String, String, String)> {
    unsafe {
        let r = sys::nftnl_rule_alloc();
        if r.is_null() {
            std::process::abort();
        }
        if sys::nftnl_rule_nlmsg_parse(msg.as_ptr() as *const libc::nlmsghdr, r) < 0 {
            sys::nftnl_rule_free(r);
            return None;
        }
        let table = cstr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16));
        let chain = cstr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16));
        let mut parts = Vec::new();
        let iter = sys::nftnl_expr_iter_create(r);
        if !iter.is_null() {
            loop {
                let e = sys::nftnl_expr_iter_next(iter);
                if e.is_null() {
                    break;
                }
                parts.push(expr_text(e, &|name, id| set_text(&table, name, id)));
            }
            sys::nftnl_expr_iter_destroy(iter);
        }
        sys::nftnl_rule_free(r);
        Some((table, chain, parts.join(" ")))
    }
}

unsafe fn opt_u32(e: *mut sys::nftnl_expr, attr: u32) -> Option<u32> {
    unsafe {
        sys::nftnl_expr_is_set(e, attr as u16).then(|| sys::nftnl_expr_get_u32(e, attr as u16))
    }
}

unsafe fn data(e: *mut sys::nftnl_expr, attr: u32) -> Vec<u8> {
    unsafe {
        let mut len = 0u32;
        let p = sys::nftnl_expr_get(e, attr as u16, &mut len) as *const u8;
        if p.is_null() {
            return Vec::new();
        }
        std::slice::from_raw_parts(p, len as usize).to_vec()
    }
}

fn meta_key(k: u32) -> String {
    match k as i32 {
        libc::NFT_META_MARK => "mark".into(),
        libc::NFT_META_IIFNAME => "iifname".into(),
        libc::NFT_META_OIFNAME => "oifname".into(),
        libc::NFT_META_SKUID => "skuid".into(),
        libc::NFT_META_SKGID => "skgid".into(),
        libc::NFT_META_NFPROTO => "nfproto".into(),
        libc::NFT_META_L4PROTO => "l4proto".into(),
        other => format!("key{other}"),
    }
}

fn ct_key(k: u32) -> String {
    match k as i32 {
        libc::NFT_CT_STATE => "state".into(),
        libc::NFT_CT_MARK => "mark".into(),
        libc::NFT_CT_ZONE => "zone".into(),
        other => format!("key{other}"),
    }
}

/// One expression in canonical text. Counters print without their values (they change with
/// traffic); expressions meshcap never writes fall back to libnftnl's own text.
unsafe fn expr_text(
    e: *mut sys::nftnl_expr,
    set_text: &dyn Fn(&str, Option<u32>) -> String,
) -> String {
    unsafe {
        let name = cstr(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16));
        let reg = |attr: u32| {
            opt_u32(e, attr)
                .map(|r| format!("r{r}"))
                .unwrap_or_default()
        };
        match name.as_str() {
            "meta" => match opt_u32(e, sys::NFTNL_EXPR_META_DREG) {
                Some(_) => format!(
                    "[meta load {} => {}]",
                    meta_key(sys::nftnl_expr_get_u32(e, sys::NFTNL_EXPR_META_KEY as u16)),
                    reg(sys::NFTNL_EXPR_META_DREG)
                ),
                None => format!(
                    "[meta set {} <= {}]",
                    meta_key(sys::nftnl_expr_get_u32(e, sys::NFTNL_EXPR_META_KEY as u16)),
                    reg(sys::NFTNL_EXPR_META_SREG)
                ),
            },
            "cmp" => format!(
                "[cmp {} {} {}]",
                match sys::nftnl_expr_get_u32(e, sys::NFTNL_EXPR_CMP_OP as u16) as i32 {
                    libc::NFT_CMP_EQ => "eq".to_owned(),
                    libc::NFT_CMP_NEQ => "neq".to_owned(),
                    other => format!("op{other}"),
                },
                reg(sys::NFTNL_EXPR_CMP_SREG),
                hex(&data(e, sys::NFTNL_EXPR_CMP_DATA))
            ),
            "payload" => format!(
                "[payload load {}b @ base{} + {} => {}]",
                opt_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN).unwrap_or(0),
                opt_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE).unwrap_or(0),
                opt_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET).unwrap_or(0),
                reg(sys::NFTNL_EXPR_PAYLOAD_DREG)
            ),
            "bitwise" => format!(
                "[bitwise {} = ({} & {}) ^ {}{}]",
                reg(sys::NFTNL_EXPR_BITWISE_DREG),
                reg(sys::NFTNL_EXPR_BITWISE_SREG),
                hex(&data(e, sys::NFTNL_EXPR_BITWISE_MASK)),
                hex(&data(e, sys::NFTNL_EXPR_BITWISE_XOR)),
                match opt_u32(e, sys::NFTNL_EXPR_BITWISE_OP) {
                    Some(op) if op != 0 => format!(" op{op}"),
                    _ => String::new(),
                }
            ),
            "lookup" => {
                let set = cstr(sys::nftnl_expr_get_str(
                    e,
                    sys::NFTNL_EXPR_LOOKUP_SET as u16,
                ));
                let id = opt_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID);
                let inv = opt_u32(e, sys::NFTNL_EXPR_LOOKUP_FLAGS).unwrap_or(0)
                    & libc::NFT_LOOKUP_F_INV as u32
                    != 0;
                format!(
                    "[lookup {} {}in {}]",
                    reg(sys::NFTNL_EXPR_LOOKUP_SREG),
                    if inv { "not " } else { "" },
                    set_text(&set, id)
                )
            }
            "immediate" => {
                let dreg = opt_u32(e, sys::NFTNL_EXPR_IMM_DREG).unwrap_or(0);
                if dreg == libc::NFT_REG_VERDICT as u32 {
                    let code =
                        sys::nftnl_expr_get_u32(e, sys::NFTNL_EXPR_IMM_VERDICT as u16) as i32;
                    let chain = if sys::nftnl_expr_is_set(e, sys::NFTNL_EXPR_IMM_CHAIN as u16) {
                        format!(
                            " {}",
                            cstr(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_IMM_CHAIN as u16))
                        )
                    } else {
                        String::new()
                    };
                    let v = match code {
                        libc::NF_ACCEPT => "accept".to_owned(),
                        libc::NF_DROP => "drop".to_owned(),
                        libc::NFT_JUMP => "jump".to_owned(),
                        libc::NFT_GOTO => "goto".to_owned(),
                        libc::NFT_RETURN => "return".to_owned(),
                        other => format!("verdict{other}"),
                    };
                    format!("[{v}{chain}]")
                } else {
                    format!(
                        "[immediate r{dreg} {}]",
                        hex(&data(e, sys::NFTNL_EXPR_IMM_DATA))
                    )
                }
            }
            "counter" => "[counter]".into(),
            "ct" => {
                let key = ct_key(sys::nftnl_expr_get_u32(e, sys::NFTNL_EXPR_CT_KEY as u16));
                let dir = opt_u32(e, sys::NFTNL_EXPR_CT_DIR)
                    .map(|d| format!(" dir{d}"))
                    .unwrap_or_default();
                match opt_u32(e, sys::NFTNL_EXPR_CT_DREG) {
                    Some(_) => format!("[ct load {key}{dir} => {}]", reg(sys::NFTNL_EXPR_CT_DREG)),
                    None => format!("[ct set {key}{dir} <= {}]", reg(sys::NFTNL_EXPR_CT_SREG)),
                }
            }
            "redir" => {
                // The kernel reports a single port register as min and max alike.
                let min = opt_u32(e, sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN);
                let max =
                    opt_u32(e, sys::NFTNL_EXPR_REDIR_REG_PROTO_MAX).filter(|m| Some(*m) != min);
                format!(
                    "[redir port {}{} flags {}]",
                    reg(sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN),
                    max.map(|r| format!("-r{r}")).unwrap_or_default(),
                    opt_u32(e, sys::NFTNL_EXPR_REDIR_FLAGS).unwrap_or(0)
                )
            }
            "tproxy" => format!(
                "[tproxy family {} addr {} port {}]",
                opt_u32(e, sys::NFTNL_EXPR_TPROXY_FAMILY).unwrap_or(0),
                reg(sys::NFTNL_EXPR_TPROXY_REG_ADDR),
                reg(sys::NFTNL_EXPR_TPROXY_REG_PORT)
            ),
            "range" => format!(
                "[range op{} {} {}-{}]",
                opt_u32(e, sys::NFTNL_EXPR_RANGE_OP).unwrap_or(0),
                reg(sys::NFTNL_EXPR_RANGE_SREG),
                hex(&data(e, sys::NFTNL_EXPR_RANGE_FROM_DATA)),
                hex(&data(e, sys::NFTNL_EXPR_RANGE_TO_DATA))
            ),
            _ => {
                let mut buf = vec![0u8; 4096];
                let n = sys::nftnl_expr_snprintf(
                    buf.as_mut_ptr() as *mut libc::c_char,
                    buf.len(),
                    e,
                    sys::NFTNL_OUTPUT_DEFAULT,
                    0,
                );
                buf.truncate(n.clamp(0, 4095) as usize);
                format!("[{name} {}]", String::from_utf8_lossy(&buf).trim())
            }
        }
    }
}

/// The batch's pages joined into one buffer, with memcpy: a byte-wise iterator copy was 7 % of
/// the instructions of a whole default install.
fn batch_bytes(batch: &FinalizedBatch) -> Vec<u8> {
    let mut data = Vec::new();
    for page in batch.iter() {
        data.extend_from_slice(page);
    }
    data
}

/// Per chain key (`inet TABLE CHAIN`), the base chain header (if any) then the rules' text.
pub type ChainTexts = BTreeMap<String, Vec<String>>;

fn chain_key(table: &str, chain: &str) -> String {
    format!("inet {table} {chain}")
}

/// What a batch would leave in a fresh namespace, in canonical text.
pub fn batch_texts(built: &Built) -> ChainTexts {
    let mut out = ChainTexts::new();
    let set_text = |_: &str, _: &str, id: Option<u32>| {
        id.and_then(|id| built.sets.get(&id))
            .map(|elements| elements_text(&mut elements.clone()))
            .unwrap_or_else(|| "{?}".to_owned())
    };
    let data = batch_bytes(&built.batch);
    // Re-align: parsing needs nlmsghdr alignment.
    let mut aligned = vec![0u64; data.len().div_ceil(8)];
    let bytes: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr() as *mut u8, data.len()) };
    bytes.copy_from_slice(&data);
    for msg in mnl::NlMessages::new(bytes).flatten() {
        let (ty, _) = header(msg);
        if ty == NFT_TYPE_BASE | libc::NFT_MSG_NEWCHAIN as u16 {
            if let Some(c) = ChainInfo::parse(msg) {
                let entry = out.entry(chain_key(&c.table, &c.name)).or_default();
                if let Some(h) = c.header_text() {
                    entry.insert(0, h);
                }
            }
        } else if ty == NFT_TYPE_BASE | libc::NFT_MSG_NEWRULE as u16
            && let Some((table, chain, text)) = rule_text(msg, &set_text)
        {
            out.entry(chain_key(&table, &chain)).or_default().push(text);
        }
    }
    out
}

/// What the kernel holds in `tables`, in canonical text.
pub fn read_texts(nl: &mut Nl, tables: &[String]) -> Result<ChainTexts, BackendError> {
    let mut out = ChainTexts::new();
    if tables.is_empty() {
        return Ok(out);
    }
    for c in chains(nl, tables)? {
        let entry = out.entry(chain_key(&c.table, &c.name)).or_default();
        if let Some(h) = c.header_text() {
            entry.push(h);
        }
    }
    // Set elements, by (table, set name).
    let mut sets: HashMap<(String, String), String> = HashMap::new();
    let set_msgs = nl.dump(
        "listing nftables sets",
        libc::NFT_MSG_GETSET as u16,
        &|_| {},
    )?;
    let mut names = Vec::new();
    for msg in set_msgs {
        unsafe {
            let s = sys::nftnl_set_alloc();
            if s.is_null() {
                std::process::abort();
            }
            if sys::nftnl_set_nlmsg_parse(msg.as_ptr() as *const libc::nlmsghdr, s) >= 0 {
                let table = cstr(sys::nftnl_set_get_str(s, sys::NFTNL_SET_TABLE as u16));
                let name = cstr(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16));
                if tables.contains(&table) {
                    names.push((table, name));
                }
            }
            sys::nftnl_set_free(s);
        }
    }
    for (table, name) in names {
        let (ct, cn) = (
            CString::new(table.as_str()).unwrap_or_default(),
            CString::new(name.as_str()).unwrap_or_default(),
        );
        let msgs = nl.dump(
            &format!("listing the elements of set {name} of inet {table}"),
            libc::NFT_MSG_GETSETELEM as u16,
            &|hdr| unsafe {
                let s = sys::nftnl_set_alloc();
                if s.is_null() {
                    std::process::abort();
                }
                sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, ct.as_ptr());
                sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, cn.as_ptr());
                sys::nftnl_set_elems_nlmsg_build_payload(hdr, s);
                sys::nftnl_set_free(s);
            },
        )?;
        let mut elements: Vec<(Vec<u8>, bool)> = Vec::new();
        for msg in msgs {
            unsafe {
                let s = sys::nftnl_set_alloc();
                if s.is_null() {
                    std::process::abort();
                }
                if sys::nftnl_set_elems_nlmsg_parse(msg.as_ptr() as *const libc::nlmsghdr, s) >= 0 {
                    let it = sys::nftnl_set_elems_iter_create(s);
                    if !it.is_null() {
                        loop {
                            let el = sys::nftnl_set_elems_iter_next(it);
                            if el.is_null() {
                                break;
                            }
                            let mut len = 0u32;
                            let p = sys::nftnl_set_elem_get(
                                el,
                                sys::NFTNL_SET_ELEM_KEY as u16,
                                &mut len,
                            ) as *const u8;
                            let key = if p.is_null() {
                                Vec::new()
                            } else {
                                std::slice::from_raw_parts(p, len as usize).to_vec()
                            };
                            let end =
                                sys::nftnl_set_elem_is_set(el, sys::NFTNL_SET_ELEM_FLAGS as u16)
                                    && sys::nftnl_set_elem_get_u32(
                                        el,
                                        sys::NFTNL_SET_ELEM_FLAGS as u16,
                                    ) & libc::NFT_SET_ELEM_INTERVAL_END as u32
                                        != 0;
                            elements.push((key, end));
                        }
                        sys::nftnl_set_elems_iter_destroy(it);
                    }
                }
                sys::nftnl_set_free(s);
            }
        }
        sets.insert((table, name), elements_text(&mut elements));
    }
    let msgs = nl.dump(
        "listing nftables rules",
        libc::NFT_MSG_GETRULE as u16,
        &|_| {},
    )?;
    let set_text = |table: &str, name: &str, _: Option<u32>| {
        sets.get(&(table.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_else(|| format!("@{name}"))
    };
    for msg in msgs {
        if let Some((table, chain, text)) = rule_text(&msg, &set_text)
            && tables.contains(&table)
        {
            out.entry(chain_key(&table, &chain)).or_default().push(text);
        }
    }
    Ok(out)
}
