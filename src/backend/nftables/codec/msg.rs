//! nf_tables messages, typed: tables, chains, sets, set elements and rules, each with
//! [`Message::encode`] (libnftnl's attribute order, so bytes can be compared with it) and
//! [`Message::decode`] (total: what this model does not hold is dropped from objects it knows,
//! or kept raw as [`Object::Unknown`]); and [`Batch`], the begin/end frame that makes the
//! kernel apply a list of messages atomically.
//!
//! Values decoded from the kernel's dump and values built from a plan compare with `==` once
//! what only the kernel knows is cleared: handles, use counts, counter values (see
//! [`Rule::comparable`]) and set names/ids (the kernel names an anonymous set `__setN`).

use super::attr::{Writer, attrs, be_u32, be_u64, string};
use super::expr::{DATA_VALUE, Expr, LIST_ELEM};
use nix::libc;
use std::ops::Range;

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HEADER: usize = 16;
/// `sizeof(struct nfgenmsg)`.
const NFGEN_HEADER: usize = 4;

// Attribute numbers (linux/netfilter/nf_tables.h).
const TABLE_NAME: u16 = 1;
const TABLE_FLAGS: u16 = 2;
const TABLE_USE: u16 = 3;
const TABLE_HANDLE: u16 = 4;
const CHAIN_TABLE: u16 = 1;
const CHAIN_HANDLE: u16 = 2;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_USE: u16 = 6;
const CHAIN_TYPE: u16 = 7;
const CHAIN_FLAGS: u16 = 10;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_HANDLE: u16 = 3;
const RULE_EXPRESSIONS: u16 = 4;
const RULE_POSITION: u16 = 6;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_DESC: u16 = 9;
const SET_ID: u16 = 10;
const SET_HANDLE: u16 = 16;
const SET_DESC_SIZE: u16 = 1;
const SET_ELEM_LIST_TABLE: u16 = 1;
const SET_ELEM_LIST_SET: u16 = 2;
const SET_ELEM_LIST_ELEMENTS: u16 = 3;
const SET_ELEM_LIST_SET_ID: u16 = 4;
const SET_ELEM_KEY: u16 = 1;
const SET_ELEM_FLAGS: u16 = 3;

/// An nf_tables message type (`NFT_MSG_*`, without the subsystem byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    NewTable,
    GetTable,
    DelTable,
    NewChain,
    GetChain,
    DelChain,
    NewRule,
    GetRule,
    DelRule,
    NewSet,
    GetSet,
    DelSet,
    NewSetElem,
    GetSetElem,
    DelSetElem,
    Trace,
    Other(u8),
}

impl MsgType {
    fn to_wire(self) -> u8 {
        (match self {
            MsgType::NewTable => libc::NFT_MSG_NEWTABLE,
            MsgType::GetTable => libc::NFT_MSG_GETTABLE,
            MsgType::DelTable => libc::NFT_MSG_DELTABLE,
            MsgType::NewChain => libc::NFT_MSG_NEWCHAIN,
            MsgType::GetChain => libc::NFT_MSG_GETCHAIN,
            MsgType::DelChain => libc::NFT_MSG_DELCHAIN,
            MsgType::NewRule => libc::NFT_MSG_NEWRULE,
            MsgType::GetRule => libc::NFT_MSG_GETRULE,
            MsgType::DelRule => libc::NFT_MSG_DELRULE,
            MsgType::NewSet => libc::NFT_MSG_NEWSET,
            MsgType::GetSet => libc::NFT_MSG_GETSET,
            MsgType::DelSet => libc::NFT_MSG_DELSET,
            MsgType::NewSetElem => libc::NFT_MSG_NEWSETELEM,
            MsgType::GetSetElem => libc::NFT_MSG_GETSETELEM,
            MsgType::DelSetElem => libc::NFT_MSG_DELSETELEM,
            MsgType::Trace => libc::NFT_MSG_TRACE,
            MsgType::Other(n) => return n,
        }) as u8
    }

    fn from_wire(n: u8) -> MsgType {
        const ALL: [MsgType; 16] = [
            MsgType::NewTable,
            MsgType::GetTable,
            MsgType::DelTable,
            MsgType::NewChain,
            MsgType::GetChain,
            MsgType::DelChain,
            MsgType::NewRule,
            MsgType::GetRule,
            MsgType::DelRule,
            MsgType::NewSet,
            MsgType::GetSet,
            MsgType::DelSet,
            MsgType::NewSetElem,
            MsgType::GetSetElem,
            MsgType::DelSetElem,
            MsgType::Trace,
        ];
        ALL.into_iter()
            .find(|t| t.to_wire() == n)
            .unwrap_or(MsgType::Other(n))
    }

    /// The netlink message type: the nftables subsystem and this type.
    pub fn netlink_type(self) -> u16 {
        ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | u16::from(self.to_wire())
    }
}

/// A table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Table {
    pub family: u8,
    pub name: String,
    pub flags: Option<u32>,
    /// Kernel-assigned (dumps only).
    pub handle: Option<u64>,
    pub use_count: Option<u32>,
}

/// A base chain's hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainHook {
    /// `NF_INET_*` (prerouting 0, output 3).
    pub hooknum: u32,
    pub priority: i32,
}

/// A chain: a base chain has a hook, a type and usually a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Chain {
    pub family: u8,
    pub table: String,
    pub name: String,
    pub hook: Option<ChainHook>,
    /// `NF_ACCEPT` or `NF_DROP`.
    pub policy: Option<u32>,
    /// `filter`, `route` or `nat`.
    pub chain_type: Option<String>,
    pub flags: Option<u32>,
    pub handle: Option<u64>,
    pub use_count: Option<u32>,
}

/// A rule: its place and its expressions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: Option<u64>,
    pub position: Option<u64>,
    pub exprs: Vec<Expr>,
}

impl Rule {
    /// The rule without what only the kernel knows (handle, position, counter values), so a
    /// dumped rule equals the rule a batch added.
    pub fn comparable(&self) -> Rule {
        Rule {
            handle: None,
            position: None,
            exprs: self.exprs.iter().map(Expr::without_counts).collect(),
            ..self.clone()
        }
    }
}

/// A set (meshcap's are anonymous and constant: created with their rule, gone with it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Set {
    pub family: u8,
    pub table: String,
    /// `__set%d` in a batch (the kernel picks the number).
    pub name: String,
    /// `NFT_SET_*`.
    pub flags: Option<u32>,
    /// nft's data type id of the key (concatenations: 6 bits per field).
    pub key_type: Option<u32>,
    pub key_len: Option<u32>,
    /// The transaction id by which rules of the same batch name the set.
    pub id: Option<u32>,
    /// The number of elements (the kernel picks the set's backend from it).
    pub desc_size: Option<u32>,
    pub handle: Option<u64>,
}

/// One element of a set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetElem {
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_*` (nft writes an explicit 0).
    pub flags: Option<u32>,
}

impl SetElem {
    /// Whether the element ends an interval.
    pub fn interval_end(&self) -> bool {
        self.flags.unwrap_or(0) & libc::NFT_SET_ELEM_INTERVAL_END as u32 != 0
    }
}

/// Elements of one set, named by name (and, in a batch, by transaction id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetElems {
    pub family: u8,
    pub table: String,
    pub set: String,
    pub set_id: Option<u32>,
    pub elements: Vec<SetElem>,
}

/// What a message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Table(Table),
    Chain(Chain),
    Rule(Rule),
    Set(Set),
    SetElems(SetElems),
    Trace(super::trace::Trace),
    /// A request without attributes (a dump of every object of a family).
    Empty {
        family: u8,
    },
    /// A message of another type: its family and raw attributes.
    Unknown {
        family: u8,
        attrs: Vec<u8>,
    },
}

impl Object {
    pub fn family(&self) -> u8 {
        match self {
            Object::Table(t) => t.family,
            Object::Chain(c) => c.family,
            Object::Rule(r) => r.family,
            Object::Set(s) => s.family,
            Object::SetElems(s) => s.family,
            Object::Trace(t) => t.family,
            Object::Empty { family } | Object::Unknown { family, .. } => *family,
        }
    }
}

/// One nf_tables message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub msg_type: MsgType,
    /// `NLM_F_*` besides `NLM_F_REQUEST`, which every request carries.
    pub flags: u16,
    pub object: Object,
}

/// A message's header fields that are not part of its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub netlink_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// The nfgenmsg `res_id` (big-endian on the wire; the generation id in dumps).
    pub res_id: u16,
}

fn write_header(
    buf: &mut Vec<u8>,
    netlink_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
) {
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&netlink_type.to_ne_bytes());
    buf.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, libc::NFNETLINK_V0 as u8]);
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn finish_length(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

impl Message {
    pub fn new(msg_type: MsgType, flags: u16, object: Object) -> Message {
        Message {
            msg_type,
            flags,
            object,
        }
    }

    /// Appends the message, numbered `seq`, to `buf` (which must end 4-byte aligned).
    pub fn encode(&self, seq: u32, buf: &mut Vec<u8>) {
        let start = buf.len();
        write_header(
            buf,
            self.msg_type.netlink_type(),
            self.flags,
            seq,
            self.object.family(),
            0,
        );
        self.object.encode_attrs(&mut Writer::new(buf));
        finish_length(buf, start);
    }

    /// The message's bytes, numbered `seq`.
    pub fn to_bytes(&self, seq: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode(seq, &mut buf);
        buf
    }

    /// Decodes one whole message (header included); `None` when it is not an nf_tables message
    /// or is shorter than its headers.
    pub fn decode(bytes: &[u8]) -> Option<(Header, Message)> {
        let header = netlink_packet_core::NetlinkBuffer::new_checked(bytes).ok()?;
        let netlink_type = header.message_type();
        if netlink_type >> 8 != libc::NFNL_SUBSYS_NFTABLES as u16 {
            return None;
        }
        let len = (header.length() as usize).min(bytes.len());
        let payload = bytes.get(NLMSG_HEADER..len)?;
        let nfgen = payload.get(..NFGEN_HEADER)?;
        let family = nfgen[0];
        let res_id = u16::from_be_bytes([nfgen[2], nfgen[3]]);
        let attrs_bytes = &payload[NFGEN_HEADER..];
        let msg_type = MsgType::from_wire(netlink_type as u8);
        let object = Object::decode(msg_type, family, attrs_bytes);
        let flags = header.flags() & !(libc::NLM_F_REQUEST as u16);
        Some((
            Header {
                netlink_type,
                flags: header.flags(),
                seq: header.sequence_number(),
                res_id,
            },
            Message {
                msg_type,
                flags,
                object,
            },
        ))
    }
}

impl Object {
    fn encode_attrs(&self, w: &mut Writer<'_>) {
        match self {
            Object::Table(t) => {
                w.str(TABLE_NAME, &t.name);
                if let Some(h) = t.handle {
                    w.u64(TABLE_HANDLE, h);
                }
                if let Some(f) = t.flags {
                    w.u32(TABLE_FLAGS, f);
                }
            }
            Object::Chain(c) => {
                w.str(CHAIN_TABLE, &c.table);
                w.str(CHAIN_NAME, &c.name);
                if let Some(h) = c.hook {
                    w.nest(CHAIN_HOOK, |w| {
                        w.u32(HOOK_HOOKNUM, h.hooknum);
                        w.u32(HOOK_PRIORITY, h.priority as u32);
                    });
                }
                if let Some(p) = c.policy {
                    w.u32(CHAIN_POLICY, p);
                }
                if let Some(h) = c.handle {
                    w.u64(CHAIN_HANDLE, h);
                }
                if let Some(t) = &c.chain_type {
                    w.str(CHAIN_TYPE, t);
                }
                if let Some(f) = c.flags {
                    w.u32(CHAIN_FLAGS, f);
                }
            }
            Object::Rule(r) => {
                w.str(RULE_TABLE, &r.table);
                if !r.chain.is_empty() {
                    w.str(RULE_CHAIN, &r.chain);
                }
                if let Some(h) = r.handle {
                    w.u64(RULE_HANDLE, h);
                }
                if let Some(p) = r.position {
                    w.u64(RULE_POSITION, p);
                }
                if !r.exprs.is_empty() {
                    w.nest(RULE_EXPRESSIONS, |w| {
                        for e in &r.exprs {
                            e.encode(w);
                        }
                    });
                }
            }
            Object::Set(s) => {
                w.str(SET_TABLE, &s.table);
                w.str(SET_NAME, &s.name);
                if let Some(h) = s.handle {
                    w.u64(SET_HANDLE, h);
                }
                if let Some(f) = s.flags {
                    w.u32(SET_FLAGS, f);
                }
                if let Some(t) = s.key_type {
                    w.u32(SET_KEY_TYPE, t);
                }
                if let Some(l) = s.key_len {
                    w.u32(SET_KEY_LEN, l);
                }
                if let Some(id) = s.id {
                    w.u32(SET_ID, id);
                }
                if let Some(size) = s.desc_size {
                    w.nest(SET_DESC, |w| w.u32(SET_DESC_SIZE, size));
                }
            }
            Object::SetElems(s) => {
                w.str(SET_ELEM_LIST_SET, &s.set);
                if let Some(id) = s.set_id {
                    w.u32(SET_ELEM_LIST_SET_ID, id);
                }
                w.str(SET_ELEM_LIST_TABLE, &s.table);
                if !s.elements.is_empty() {
                    w.nest(SET_ELEM_LIST_ELEMENTS, |w| {
                        // libnftnl numbers the elements of a message 1, 2, … where nft's
                        // own lists use NFTA_LIST_ELEM; the kernel reads neither.
                        for (i, e) in s.elements.iter().enumerate() {
                            w.nest((i + 1) as u16, |w| {
                                if let Some(f) = e.flags {
                                    w.u32(SET_ELEM_FLAGS, f);
                                }
                                w.nest(SET_ELEM_KEY, |w| w.bytes(DATA_VALUE, &e.key));
                            });
                        }
                    });
                }
            }
            Object::Trace(_) | Object::Empty { .. } => {}
            Object::Unknown { attrs: raw, .. } => {
                for (kind, value) in attrs(raw) {
                    w.bytes(kind, value);
                }
            }
        }
    }

    fn decode(msg_type: MsgType, family: u8, raw: &[u8]) -> Object {
        use MsgType::*;
        if raw.is_empty() && !matches!(msg_type, Trace) {
            return Object::Empty { family };
        }
        match msg_type {
            NewTable | GetTable | DelTable => Object::Table(decode_table(family, raw)),
            NewChain | GetChain | DelChain => Object::Chain(decode_chain(family, raw)),
            NewRule | GetRule | DelRule => Object::Rule(decode_rule(family, raw)),
            NewSet | GetSet | DelSet => Object::Set(decode_set(family, raw)),
            NewSetElem | GetSetElem | DelSetElem => Object::SetElems(decode_set_elems(family, raw)),
            Trace => Object::Trace(super::trace::Trace::decode(family, raw)),
            Other(_) => Object::Unknown {
                family,
                attrs: raw.to_vec(),
            },
        }
    }
}

fn decode_table(family: u8, raw: &[u8]) -> Table {
    let mut t = Table {
        family,
        ..Table::default()
    };
    for (kind, v) in attrs(raw) {
        match kind {
            TABLE_NAME => t.name = string(v),
            TABLE_FLAGS => t.flags = be_u32(v),
            TABLE_USE => t.use_count = be_u32(v),
            TABLE_HANDLE => t.handle = be_u64(v),
            _ => {}
        }
    }
    t
}

fn decode_chain(family: u8, raw: &[u8]) -> Chain {
    let mut c = Chain {
        family,
        ..Chain::default()
    };
    for (kind, v) in attrs(raw) {
        match kind {
            CHAIN_TABLE => c.table = string(v),
            CHAIN_NAME => c.name = string(v),
            CHAIN_HANDLE => c.handle = be_u64(v),
            CHAIN_POLICY => c.policy = be_u32(v),
            CHAIN_USE => c.use_count = be_u32(v),
            CHAIN_TYPE => c.chain_type = Some(string(v)),
            CHAIN_FLAGS => c.flags = be_u32(v),
            CHAIN_HOOK => {
                let (mut num, mut prio) = (None, None);
                for (k, v) in attrs(v) {
                    match k {
                        HOOK_HOOKNUM => num = be_u32(v),
                        HOOK_PRIORITY => prio = be_u32(v).map(|p| p as i32),
                        _ => {}
                    }
                }
                c.hook = num
                    .zip(prio)
                    .map(|(hooknum, priority)| ChainHook { hooknum, priority });
            }
            _ => {}
        }
    }
    c
}

fn decode_rule(family: u8, raw: &[u8]) -> Rule {
    let mut r = Rule {
        family,
        ..Rule::default()
    };
    for (kind, v) in attrs(raw) {
        match kind {
            RULE_TABLE => r.table = string(v),
            RULE_CHAIN => r.chain = string(v),
            RULE_HANDLE => r.handle = be_u64(v),
            RULE_POSITION => r.position = be_u64(v),
            RULE_EXPRESSIONS => {
                r.exprs = attrs(v)
                    .filter(|(k, _)| *k == LIST_ELEM)
                    .map(|(_, e)| Expr::decode(e))
                    .collect()
            }
            _ => {}
        }
    }
    r
}

fn decode_set(family: u8, raw: &[u8]) -> Set {
    let mut s = Set {
        family,
        ..Set::default()
    };
    for (kind, v) in attrs(raw) {
        match kind {
            SET_TABLE => s.table = string(v),
            SET_NAME => s.name = string(v),
            SET_FLAGS => s.flags = be_u32(v),
            SET_KEY_TYPE => s.key_type = be_u32(v),
            SET_KEY_LEN => s.key_len = be_u32(v),
            SET_ID => s.id = be_u32(v),
            SET_HANDLE => s.handle = be_u64(v),
            SET_DESC => {
                s.desc_size = attrs(v)
                    .find(|(k, _)| *k == SET_DESC_SIZE)
                    .and_then(|(_, v)| be_u32(v))
            }
            _ => {}
        }
    }
    s
}

fn decode_set_elems(family: u8, raw: &[u8]) -> SetElems {
    let mut s = SetElems {
        family,
        ..SetElems::default()
    };
    for (kind, v) in attrs(raw) {
        match kind {
            SET_ELEM_LIST_TABLE => s.table = string(v),
            SET_ELEM_LIST_SET => s.set = string(v),
            SET_ELEM_LIST_SET_ID => s.set_id = be_u32(v),
            SET_ELEM_LIST_ELEMENTS => {
                for (_, elem) in attrs(v) {
                    let mut e = SetElem {
                        key: Vec::new(),
                        flags: None,
                    };
                    for (k, v) in attrs(elem) {
                        match k {
                            SET_ELEM_FLAGS => e.flags = be_u32(v),
                            SET_ELEM_KEY => {
                                if let Some((_, key)) = attrs(v).find(|(k, _)| *k == DATA_VALUE) {
                                    e.key = key.to_vec();
                                }
                            }
                            _ => {}
                        }
                    }
                    s.elements.push(e);
                }
            }
            _ => {}
        }
    }
    s
}

/// Messages framed by batch begin and end: the kernel applies all of them or none.
pub struct Batch {
    buf: Vec<u8>,
    seqs: Range<u32>,
    /// Whether the begin and end messages ask for an acknowledgement (kernel 6.10 and later
    /// answer them; older kernels ignore the flag and would leave them unanswered).
    ack_frame: bool,
    /// The sequence number of the first message after the begin message.
    first_msg_seq: u32,
}

impl Batch {
    /// A batch whose first message is numbered `first_seq`.
    pub fn new(first_seq: u32, ack_frame: bool) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(4096),
            seqs: first_seq..first_seq,
            ack_frame,
            first_msg_seq: first_seq,
        };
        b.frame(libc::NFNL_MSG_BATCH_BEGIN as u16);
        b.first_msg_seq = b.seqs.end;
        b
    }

    fn frame(&mut self, netlink_type: u16) {
        let start = self.buf.len();
        let (flags, seq) = if self.ack_frame {
            (libc::NLM_F_ACK as u16, self.seqs.end)
        } else {
            (0, 0)
        };
        write_header(
            &mut self.buf,
            netlink_type,
            flags,
            seq,
            libc::AF_UNSPEC as u8,
            libc::NFNL_SUBSYS_NFTABLES as u16,
        );
        finish_length(&mut self.buf, start);
        if self.ack_frame {
            self.seqs.end += 1;
        }
    }

    /// Appends a message; returns its sequence number.
    pub fn add(&mut self, msg: &Message) -> u32 {
        let seq = self.seqs.end;
        msg.encode(seq, &mut self.buf);
        self.seqs.end += 1;
        seq
    }

    /// Ends the batch.
    pub fn finish(mut self) -> FinishedBatch {
        self.frame(libc::NFNL_MSG_BATCH_END as u16);
        FinishedBatch {
            bytes: self.buf,
            seqs: self.seqs,
            first_msg_seq: self.first_msg_seq,
        }
    }
}

/// A whole batch: its bytes (one datagram), the sequence numbers that will be acknowledged,
/// and the number of its first message.
#[derive(Clone, Debug)]
pub struct FinishedBatch {
    pub bytes: Vec<u8>,
    pub seqs: Range<u32>,
    pub first_msg_seq: u32,
}

/// Whether this kernel acknowledges batch begin and end messages (6.10 and later).
pub fn kernel_acks_batch_frame() -> bool {
    let Ok(uts) = nix::sys::utsname::uname() else {
        return true;
    };
    let release = uts.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (6, 10)
}

impl SetElem {
    /// The bytes this element takes in an element list.
    fn encoded_len(&self) -> usize {
        let flags = if self.flags.is_some() { 8 } else { 0 };
        // List element header, flags, key nest header, value attribute (padded).
        4 + flags + 4 + 4 + self.key.len().next_multiple_of(4)
    }
}

impl SetElems {
    /// The messages that carry these elements: one, or more when the element list would not
    /// fit one attribute (its length is 16 bits). libnftnl splits at the same element.
    pub fn split_to_fit(self) -> Vec<SetElems> {
        let template = SetElems {
            elements: Vec::new(),
            ..self.clone()
        };
        let mut out = Vec::new();
        let mut current = template.clone();
        // The list attribute's own header.
        let mut len = 4;
        for e in self.elements {
            let add = e.encoded_len();
            if len + add > usize::from(u16::MAX) && !current.elements.is_empty() {
                out.push(std::mem::replace(&mut current, template.clone()));
                len = 4;
            }
            len += add;
            current.elements.push(e);
        }
        out.push(current);
        out
    }
}
