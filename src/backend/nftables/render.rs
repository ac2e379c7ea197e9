//! nftables rules in `nft` syntax, as `nft list ruleset` (nftables 1.0) prints them, from the
//! codec's typed model: what read-back, `diff`, `explain` and `trace` show a person.
//!
//! A rule on the wire is a register machine program (`meta load skuid => reg 1`, `cmp neq reg 1
//! 1337`, …). Like nft's own decoder (netlink_delinearize), [`rule_text`] follows the registers:
//! a load remembers what a register holds, and the expression that consumes it (a cmp, a range,
//! a lookup, a statement) becomes one nft statement (`meta skuid != 1337`). It also drops the
//! protocol matches nft adds only to make a header field safe to load, as nft does when
//! listing: `meta nfproto ipv4` before `ip daddr …`, `meta l4proto tcp` before `tcp dport …`.
//! Anything it does not recognise is shown explicitly in brackets (`[quota …]`), never
//! dropped. tests/nft_render.rs holds the `nft` binary as the oracle.

use super::codec::attr::{attrs, be_u32, string};
use super::codec::expr::{CmpOp, CtKey, Expr, MetaKey, PayloadBase, REG_1, REG32_00, Verdict};
use super::codec::{Chain, Rule, SetElem};
use super::contents::{Contents, SetKey};
use crate::backend::address::ntop;
use nix::libc;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Per chain key (`inet TABLE CHAIN`), the chain's lines as `nft list chain` prints them
/// inside the chain's braces: a base chain's `type … hook … priority …; policy …;`, then one
/// line per rule.
pub type ChainTexts = BTreeMap<String, Vec<String>>;

/// The elements of the sets rules look up, by (table, set name).
pub type Sets = BTreeMap<SetKey, Vec<SetElem>>;

pub fn chain_key(table: &str, chain: &str) -> String {
    format!("inet {table} {chain}")
}

/// The texts of every chain of `contents`.
pub fn chain_texts(contents: &Contents) -> ChainTexts {
    let mut out = ChainTexts::new();
    for c in &contents.chains {
        out.entry(chain_key(&c.table, &c.name))
            .or_default()
            .extend(header_text(c));
    }
    for r in &contents.rules {
        out.entry(chain_key(&r.table, &r.chain))
            .or_default()
            .push(rule_text(r, &contents.sets));
    }
    out
}

/// A base chain's line: `type nat hook output priority -100; policy accept;`.
pub fn header_text(c: &Chain) -> Option<String> {
    let hook = c.hook?;
    let policy = match c.policy.map(|p| p as i32) {
        None | Some(libc::NF_ACCEPT) => "accept".to_owned(),
        Some(libc::NF_DROP) => "drop".to_owned(),
        Some(other) => format!("[policy {other}]"),
    };
    Some(format!(
        "type {} hook {} priority {}; policy {policy};",
        c.chain_type.as_deref().unwrap_or("filter"),
        hook_name(hook.hooknum),
        priority_text(hook.hooknum, hook.priority)
    ))
}

/// `NF_INET_*` by nft's name.
pub fn hook_name(hooknum: u32) -> String {
    match hooknum {
        0 => "prerouting".into(),
        1 => "input".into(),
        2 => "forward".into(),
        3 => "output".into(),
        4 => "postrouting".into(),
        5 => "ingress".into(),
        n => format!("[hook {n}]"),
    }
}

/// A priority as nft spells it for the inet family: a standard name where one applies at
/// this hook (`raw`, `mangle`, `dstnat` at prerouting, `filter`, `security`, `srcnat` at
/// postrouting), within 10 of one as `mangle + 5`, else the number.
fn priority_text(hooknum: u32, priority: i32) -> String {
    const PRE: u32 = libc::NF_INET_PRE_ROUTING as u32;
    const POST: u32 = libc::NF_INET_POST_ROUTING as u32;
    let names: [(&str, i32, Option<u32>); 6] = [
        ("raw", -300, None),
        ("mangle", -150, None),
        ("dstnat", -100, Some(PRE)),
        ("filter", 0, None),
        ("security", 50, None),
        ("srcnat", 100, Some(POST)),
    ];
    for (name, value, only) in names {
        if only.is_some_and(|h| h != hooknum) {
            continue;
        }
        match priority - value {
            0 => return name.to_owned(),
            d @ 1..=10 => return format!("{name} + {d}"),
            d @ -10..=-1 => return format!("{name} - {}", -d),
            _ => {}
        }
    }
    priority.to_string()
}

/// How a value of a field is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NfProto,
    L4Proto,
    IfName,
    /// A 32-bit host-order value nft shows in hex (marks).
    Mark,
    /// A host-order integer nft shows in decimal (uids, gids, zones).
    Decimal,
    CtState,
    CtStatus,
    CtDirection,
    Ipv4,
    Ipv6,
    /// A big-endian integer in decimal (ports).
    BigEndian,
    /// Bytes nft has no type for here: hex.
    Raw,
}

/// What a register holds.
#[derive(Clone, Debug)]
enum Val {
    /// A packet or socket property: its nft name, how its values read, its length in bytes,
    /// and (for a header field) the layer it was loaded from and, for a field loaded in part,
    /// the field's whole length (nft's whole-byte prefix match).
    Field {
        name: String,
        kind: Kind,
        len: usize,
        layer: Option<PayloadBase>,
        full: usize,
    },
    /// A constant (`immediate`).
    Imm(Vec<u8>),
    /// `(field & mask) ^ xor`.
    Masked {
        of: Box<Val>,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
}

impl Val {
    fn len(&self) -> usize {
        match self {
            Val::Field { len, .. } => *len,
            Val::Imm(d) => d.len(),
            Val::Masked { mask, .. } => mask.len(),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Val::Field { kind, .. } => *kind,
            Val::Imm(_) => Kind::Raw,
            Val::Masked { of, .. } => of.kind(),
        }
    }

    /// The header layer the value was loaded from, if any.
    fn layer(&self) -> Option<PayloadBase> {
        match self {
            Val::Field { layer, .. } => *layer,
            Val::Masked { of, .. } => of.layer(),
            Val::Imm(_) => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Val::Field { name, .. } => name.clone(),
            Val::Imm(d) => hex(d),
            Val::Masked { of, mask, xor } => masked_text(of, mask, xor),
        }
    }
}

fn hex(data: &[u8]) -> String {
    let digits: String = data.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{digits}")
}

/// 4-byte registers: register 1 is 8 to 11, 2 is 12 to 15, …
fn reg32(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some(((reg - REG_1) * 4) as usize),
        8..=23 => Some((reg - REG32_00) as usize),
        _ => None,
    }
}

fn words(len: usize) -> usize {
    len.div_ceil(4).max(1)
}

/// nft's name of a meta key; `iifname` and the like are unqualified.
fn meta_field(key: MetaKey) -> (String, Kind, usize) {
    let (name, kind, len) = match key {
        MetaKey::NfProto => ("meta nfproto", Kind::NfProto, 1),
        MetaKey::L4Proto => ("meta l4proto", Kind::L4Proto, 1),
        MetaKey::IifName => ("iifname", Kind::IfName, 16),
        MetaKey::OifName => ("oifname", Kind::IfName, 16),
        MetaKey::Iif => ("iif", Kind::Decimal, 4),
        MetaKey::Oif => ("oif", Kind::Decimal, 4),
        MetaKey::Mark => ("meta mark", Kind::Mark, 4),
        MetaKey::SkUid => ("meta skuid", Kind::Decimal, 4),
        MetaKey::SkGid => ("meta skgid", Kind::Decimal, 4),
        MetaKey::NfTrace => ("meta nftrace", Kind::Decimal, 1),
        MetaKey::Other(n) => return (format!("[meta key {n}]"), Kind::Raw, 4),
    };
    (name.to_owned(), kind, len)
}

fn ct_field(key: CtKey, direction: Option<u8>) -> (String, Kind, usize) {
    let (name, kind, len) = match key {
        CtKey::State => ("state", Kind::CtState, 4),
        CtKey::Status => ("status", Kind::CtStatus, 4),
        CtKey::Direction => ("direction", Kind::CtDirection, 1),
        CtKey::Mark => ("mark", Kind::Mark, 4),
        CtKey::Zone => ("zone", Kind::Decimal, 2),
        CtKey::Other(n) => return (format!("[ct key {n}]"), Kind::Raw, 4),
    };
    let dir = match direction {
        None => "",
        Some(0) => "original ",
        Some(_) => "reply ",
    };
    (format!("ct {dir}{name}"), kind, len)
}

/// The protocols the rule has established so far (nft's protocol context).
#[derive(Default)]
struct Context {
    nfproto: Option<u8>,
    l4proto: Option<u8>,
}

/// A header field by nft's name: (name, kind, the field's whole length).
fn payload_field(
    ctx: &Context,
    base: PayloadBase,
    offset: u32,
    len: u32,
) -> Option<(String, Kind, usize)> {
    let nf = ctx.nfproto.map(i32::from);
    let l4 = ctx.l4proto.map(i32::from);
    let (proto, field, kind, full) = match (base, nf, l4, offset) {
        (PayloadBase::Network, Some(libc::NFPROTO_IPV4), _, 12) => ("ip", "saddr", Kind::Ipv4, 4),
        (PayloadBase::Network, Some(libc::NFPROTO_IPV4), _, 16) => ("ip", "daddr", Kind::Ipv4, 4),
        (PayloadBase::Network, Some(libc::NFPROTO_IPV4), _, 9) => {
            ("ip", "protocol", Kind::L4Proto, 1)
        }
        (PayloadBase::Network, Some(libc::NFPROTO_IPV6), _, 8) => ("ip6", "saddr", Kind::Ipv6, 16),
        (PayloadBase::Network, Some(libc::NFPROTO_IPV6), _, 24) => ("ip6", "daddr", Kind::Ipv6, 16),
        (PayloadBase::Network, Some(libc::NFPROTO_IPV6), _, 6) => {
            ("ip6", "nexthdr", Kind::L4Proto, 1)
        }
        (PayloadBase::Transport, _, Some(libc::IPPROTO_TCP), 0) => {
            ("tcp", "sport", Kind::BigEndian, 2)
        }
        (PayloadBase::Transport, _, Some(libc::IPPROTO_TCP), 2) => {
            ("tcp", "dport", Kind::BigEndian, 2)
        }
        (PayloadBase::Transport, _, Some(libc::IPPROTO_UDP), 0) => {
            ("udp", "sport", Kind::BigEndian, 2)
        }
        (PayloadBase::Transport, _, Some(libc::IPPROTO_UDP), 2) => {
            ("udp", "dport", Kind::BigEndian, 2)
        }
        (PayloadBase::Transport, _, _, 0) => ("th", "sport", Kind::BigEndian, 2),
        (PayloadBase::Transport, _, _, 2) => ("th", "dport", Kind::BigEndian, 2),
        _ => return None,
    };
    // A whole field, or (addresses) a whole-byte prefix of one.
    let fits = len as usize == full
        || (matches!(kind, Kind::Ipv4 | Kind::Ipv6) && (len as usize) < full && len > 0);
    fits.then(|| (format!("{proto} {field}"), kind, full))
}

/// `@nh,128,32`: a header field nft has no name for here.
fn raw_payload(base: PayloadBase, offset: u32, len: u32) -> String {
    let base = match base {
        PayloadBase::LinkLayer => "ll".to_owned(),
        PayloadBase::Network => "nh".to_owned(),
        PayloadBase::Transport => "th".to_owned(),
        PayloadBase::Other(n) => format!("base{n}"),
    };
    format!("@{base},{},{}", offset * 8, len * 8)
}

fn proto_name(p: u8) -> String {
    match i32::from(p) {
        libc::IPPROTO_TCP => "tcp".into(),
        libc::IPPROTO_UDP => "udp".into(),
        libc::IPPROTO_ICMP => "icmp".into(),
        libc::IPPROTO_ICMPV6 => "ipv6-icmp".into(),
        libc::IPPROTO_SCTP => "sctp".into(),
        _ => p.to_string(),
    }
}

fn host_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    for (i, v) in data.iter().take(4).enumerate() {
        b[i] = *v;
    }
    u32::from_ne_bytes(b)
}

fn big_endian(data: &[u8]) -> u128 {
    data.iter()
        .take(16)
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

fn bit_names(value: u32, names: &[(u32, &str)]) -> String {
    let mut rest = value;
    let mut out: Vec<String> = Vec::new();
    for (bit, name) in names {
        if rest & bit != 0 {
            out.push((*name).to_owned());
            rest &= !bit;
        }
    }
    if rest != 0 || out.is_empty() {
        out.push(format!("{rest:#x}"));
    }
    out.join(",")
}

const CT_STATES: [(u32, &str); 5] = [
    (1, "invalid"),
    (2, "established"),
    (4, "related"),
    (8, "new"),
    (64, "untracked"),
];

const CT_STATUS: [(u32, &str); 6] = [
    (1, "expected"),
    (2, "seen-reply"),
    (4, "assured"),
    (8, "confirmed"),
    (16, "snat"),
    (32, "dnat"),
];

/// A value of `kind` as nft prints it.
fn value_text(kind: Kind, data: &[u8]) -> String {
    match kind {
        Kind::NfProto => match data.first().map(|b| i32::from(*b)) {
            Some(libc::NFPROTO_IPV4) => "ipv4".into(),
            Some(libc::NFPROTO_IPV6) => "ipv6".into(),
            _ => hex(data),
        },
        Kind::L4Proto => data.first().map_or_else(|| hex(data), |p| proto_name(*p)),
        Kind::IfName => {
            let end = data.iter().position(|b| *b == 0);
            let name = String::from_utf8_lossy(&data[..end.unwrap_or(data.len())]);
            // A name compared without its NUL is a prefix: iptables' `eth+`, nft's `eth*`.
            let wildcard = if end.is_none() && data.len() < 16 {
                "*"
            } else {
                ""
            };
            format!("\"{name}{wildcard}\"")
        }
        Kind::Mark => format!("{:#010x}", host_u32(data)),
        Kind::Decimal if data.len() == 2 => u16::from_ne_bytes([data[0], data[1]]).to_string(),
        Kind::Decimal if data.len() == 1 => data[0].to_string(),
        Kind::Decimal => host_u32(data).to_string(),
        Kind::CtState => bit_names(host_u32(data), &CT_STATES),
        Kind::CtStatus => bit_names(host_u32(data), &CT_STATUS),
        Kind::CtDirection => match data.first() {
            Some(0) => "original".into(),
            Some(1) => "reply".into(),
            _ => hex(data),
        },
        Kind::Ipv4 if data.len() <= 4 => {
            let mut b = [0u8; 4];
            b[..data.len()].copy_from_slice(data);
            let addr = Ipv4Addr::from(b).to_string();
            if data.len() < 4 {
                format!("{addr}/{}", data.len() * 8)
            } else {
                addr
            }
        }
        Kind::Ipv6 if data.len() <= 16 => {
            let mut b = [0u8; 16];
            b[..data.len()].copy_from_slice(data);
            let addr = ntop(Ipv6Addr::from(b).into());
            if data.len() < 16 {
                format!("{addr}/{}", data.len() * 8)
            } else {
                addr
            }
        }
        Kind::BigEndian if data.len() <= 16 => big_endian(data).to_string(),
        _ => hex(data),
    }
}

/// The number of leading one bits of `mask` when it is a prefix mask (ones, then zeros).
fn prefix_len(mask: &[u8]) -> Option<usize> {
    let bits = big_endian(mask);
    let width = mask.len() * 8;
    if mask.is_empty() || width > 128 {
        return None;
    }
    let ones = (bits << (128 - width)).leading_ones() as usize;
    let rebuilt = if ones == 0 {
        0
    } else {
        (u128::MAX << (128 - ones)) >> (128 - width)
    };
    (rebuilt == bits).then_some(ones)
}

fn op_text(op: CmpOp) -> String {
    match op {
        CmpOp::Eq => String::new(),
        CmpOp::Neq => "!= ".into(),
        CmpOp::Lt => "< ".into(),
        CmpOp::Lte => "<= ".into(),
        CmpOp::Gt => "> ".into(),
        CmpOp::Gte => ">= ".into(),
        CmpOp::Other(n) => format!("[op {n}] "),
    }
}

/// `(of & mask) ^ xor` as nft simplifies it: an xor of bits the mask clears is an or, and an
/// all-ones mask or a zero xor is left out.
fn masked_text(of: &Val, mask: &[u8], xor: &[u8]) -> String {
    let kind = of.kind();
    let ored: Vec<u8> = xor.iter().zip(mask).map(|(x, m)| x & !m).collect();
    let is_or = ored == xor;
    let mask: Vec<u8> = if is_or {
        mask.iter().zip(xor).map(|(m, x)| m | x).collect()
    } else {
        mask.to_vec()
    };
    let mut out = of.text();
    if mask.iter().any(|b| *b != 0xff) {
        out.push_str(&format!(" & {}", value_text(kind, &mask)));
    }
    if xor.iter().any(|b| *b != 0) {
        out.push_str(&format!(
            " {} {}",
            if is_or { "|" } else { "^" },
            value_text(kind, xor)
        ));
    }
    out
}

/// One statement of the output, or a protocol match nft would leave out once a header field
/// of the layer it guards is shown.
struct Out {
    parts: Vec<Option<String>>,
    /// The `meta nfproto X` and `meta l4proto X` statements that may still be left out.
    network_dep: Option<usize>,
    transport_dep: Option<usize>,
}

impl Out {
    fn push(&mut self, text: String) -> usize {
        self.parts.push(Some(text));
        self.parts.len() - 1
    }

    /// A header field of `layer` is shown: the match that only guarded it goes.
    fn shown(&mut self, layer: Option<PayloadBase>) {
        let dep = match layer {
            Some(PayloadBase::Network) => self.network_dep.take(),
            Some(PayloadBase::Transport) => self.transport_dep.take(),
            _ => None,
        };
        if let Some(i) = dep {
            self.parts[i] = None;
        }
    }
}

/// The register machine's state while a rule is read.
struct Regs {
    /// By 4-byte register index: the value starting there.
    vals: BTreeMap<usize, Val>,
}

impl Regs {
    fn set(&mut self, reg: u32, val: Val) -> bool {
        let Some(at) = reg32(reg) else { return false };
        // A load overwrites every value it overlaps.
        let end = at + words(val.len());
        self.vals
            .retain(|start, v| *start + words(v.len()) <= at || *start >= end);
        self.vals.insert(at, val);
        true
    }

    fn get(&self, reg: u32) -> Option<&Val> {
        self.vals.get(&reg32(reg)?)
    }

    /// The values making up a `len`-byte key starting at `reg` (a concatenation when more
    /// than one); `None` when the registers do not hold it.
    fn key(&self, reg: u32, len: Option<usize>) -> Option<Vec<Val>> {
        let mut at = reg32(reg)?;
        let first = self.vals.get(&at)?.clone();
        let Some(len) = len else {
            return Some(vec![first]);
        };
        let mut out = vec![first];
        let mut covered = words(out[0].len()) * 4;
        while covered < len {
            at += words(out.last()?.len());
            let v = self.vals.get(&at)?.clone();
            covered += words(v.len()) * 4;
            out.push(v);
        }
        (covered == len || out.len() == 1).then_some(out)
    }
}

/// The text of one rule; `sets` holds the elements of the sets its lookups name.
pub fn rule_text(rule: &Rule, sets: &Sets) -> String {
    text_of(rule, sets, true)
}

/// The text of one rule with its counters as `counter` alone (`nft --stateless`): for a rule
/// shown at another moment than its counts were read.
pub fn stateless_rule_text(rule: &Rule, sets: &Sets) -> String {
    text_of(rule, sets, false)
}

fn text_of(rule: &Rule, sets: &Sets, counts: bool) -> String {
    let mut ctx = Context::default();
    let mut regs = Regs {
        vals: BTreeMap::new(),
    };
    let mut out = Out {
        parts: Vec::new(),
        network_dep: None,
        transport_dep: None,
    };
    for e in &merge_bounds(&rule.exprs) {
        if !counts && matches!(e, Expr::Counter { .. }) {
            out.push("counter".into());
            continue;
        }
        if !step(e, rule, sets, &mut ctx, &mut regs, &mut out) {
            out.push(expr_text(e));
        }
    }
    out.parts
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cmp gte FROM` then `cmp lte TO` on one register, as nft writes a range in a set-less
/// rule, read as the range it is (`ip daddr 10.0.0.1-10.0.0.9`).
fn merge_bounds(exprs: &[Expr]) -> Vec<Expr> {
    let mut out: Vec<Expr> = Vec::with_capacity(exprs.len());
    for e in exprs {
        if let (
            Expr::Cmp {
                sreg,
                op: CmpOp::Lte,
                data: to,
            },
            Some(Expr::Cmp {
                sreg: from_reg,
                op: CmpOp::Gte,
                data: from,
            }),
        ) = (e, out.last())
            && sreg == from_reg
            && to.len() == from.len()
        {
            let range = Expr::Range {
                sreg: *sreg,
                op: CmpOp::Eq,
                from: from.clone(),
                to: to.clone(),
            };
            *out.last_mut().expect("a last expression") = range;
            continue;
        }
        out.push(e.clone());
    }
    out
}

/// Reads one expression; false when it does not fit what the registers hold (the caller then
/// shows it raw).
fn step(
    e: &Expr,
    rule: &Rule,
    sets: &Sets,
    ctx: &mut Context,
    regs: &mut Regs,
    out: &mut Out,
) -> bool {
    match e {
        Expr::Meta { key, dreg } => {
            let (name, kind, len) = meta_field(*key);
            regs.set(
                *dreg,
                Val::Field {
                    name,
                    kind,
                    len,
                    layer: None,
                    full: len,
                },
            )
        }
        Expr::Ct {
            key,
            direction,
            dreg,
        } => {
            let (name, kind, len) = ct_field(*key, *direction);
            regs.set(
                *dreg,
                Val::Field {
                    name,
                    kind,
                    len,
                    layer: None,
                    full: len,
                },
            )
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            let (name, kind, full) = payload_field(ctx, *base, *offset, *len)
                .unwrap_or_else(|| (raw_payload(*base, *offset, *len), Kind::Raw, *len as usize));
            regs.set(
                *dreg,
                Val::Field {
                    name,
                    kind,
                    len: *len as usize,
                    layer: Some(*base),
                    full,
                },
            )
        }
        Expr::Immediate { dreg, data } => regs.set(*dreg, Val::Imm(data.clone())),
        Expr::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            let Some(of) = regs.get(*sreg).cloned() else {
                return false;
            };
            if of.len() != *len as usize || mask.len() != of.len() || xor.len() != of.len() {
                return false;
            }
            regs.set(
                *dreg,
                Val::Masked {
                    of: Box::new(of),
                    mask: mask.clone(),
                    xor: xor.clone(),
                },
            )
        }
        Expr::Cmp { sreg, op, data } => {
            let Some(left) = regs.get(*sreg).cloned() else {
                return false;
            };
            let text = cmp_text(&left, *op, data);
            let layer = left.layer();
            let at = out.push(text);
            out.shown(layer);
            // A protocol match that a header field of the next layer may make redundant.
            if let (CmpOp::Eq, Val::Field { kind, layer, .. }) = (op, &left) {
                match (kind, layer) {
                    (Kind::NfProto, None) => {
                        ctx.nfproto = data.first().copied();
                        out.network_dep = Some(at);
                    }
                    (Kind::L4Proto, None) => {
                        ctx.l4proto = data.first().copied();
                        out.transport_dep = Some(at);
                    }
                    _ => {}
                }
            }
            true
        }
        Expr::Range { sreg, op, from, to } => {
            let Some(left) = regs.get(*sreg).cloned() else {
                return false;
            };
            let kind = left.kind();
            let text = format!(
                "{} {}{}-{}",
                left.text(),
                op_text(*op),
                value_text(kind, from),
                value_text(kind, to)
            );
            out.push(text);
            out.shown(left.layer());
            true
        }
        Expr::Lookup {
            sreg, set, invert, ..
        } => {
            let elements = sets.get(&(rule.table.clone(), set.clone()));
            let key_len = elements.and_then(|e| e.first()).map(|e| e.key.len());
            let Some(fields) = regs.key(*sreg, key_len) else {
                return false;
            };
            let left = fields.iter().map(Val::text).collect::<Vec<_>>().join(" . ");
            let masked = matches!(fields.as_slice(), [Val::Masked { .. }]);
            let op = match (masked, invert) {
                (false, false) => "",
                (_, true) => "!= ",
                (true, false) => "== ",
            };
            let anonymous = set.starts_with("__set") || set.starts_with('#');
            let right = match elements {
                Some(elements) if anonymous => set_text(&fields, elements),
                _ => format!("@{set}"),
            };
            out.push(format!("{left} {op}{right}"));
            for f in &fields {
                out.shown(f.layer());
            }
            true
        }
        Expr::MetaSet { key, sreg } => {
            let Some(v) = regs.get(*sreg).cloned() else {
                return false;
            };
            let (name, kind, _) = meta_field(*key);
            out.push(format!("{name} set {}", source_text(&v, kind)));
            true
        }
        Expr::CtSet { key, sreg } => {
            let Some(v) = regs.get(*sreg).cloned() else {
                return false;
            };
            let (name, kind, _) = ct_field(*key, None);
            out.push(format!("{name} set {}", source_text(&v, kind)));
            true
        }
        Expr::Counter { packets, bytes } => {
            out.push(format!("counter packets {packets} bytes {bytes}"));
            true
        }
        Expr::Verdict(v) => {
            out.push(verdict_text(v));
            true
        }
        Expr::Redir {
            reg_proto_min,
            reg_proto_max,
            flags,
        } => {
            let port = |reg: Option<u32>| match reg {
                None => Some(None),
                Some(r) => match regs.get(r) {
                    Some(Val::Imm(d)) => Some(Some(value_text(Kind::BigEndian, d))),
                    _ => None,
                },
            };
            let (Some(min), Some(max)) = (port(*reg_proto_min), port(*reg_proto_max)) else {
                return false;
            };
            let mut text = "redirect".to_owned();
            if let Some(min) = min {
                text.push_str(&format!(" to :{min}"));
                if let Some(max) = max.filter(|m| *m != min) {
                    text.push_str(&format!("-{max}"));
                }
            }
            // `PROTO_SPECIFIED` (2) goes with a port; the others are words.
            let mut rest = flags.unwrap_or(0) & !2;
            for (bit, word) in [(4, "random"), (8, "persistent"), (16, "fully-random")] {
                if rest & bit != 0 {
                    text.push_str(&format!(" {word}"));
                    rest &= !bit;
                }
            }
            if rest != 0 {
                text.push_str(&format!(" [flags {rest:#x}]"));
            }
            out.push(text);
            true
        }
        Expr::Tproxy {
            family,
            reg_addr,
            reg_port,
        } => {
            let family_word = match *family as i32 {
                libc::NFPROTO_IPV4 => " ip",
                libc::NFPROTO_IPV6 => " ip6",
                libc::NFPROTO_UNSPEC => "",
                _ => return false,
            };
            let addr = match reg_addr.map(|r| regs.get(r)) {
                None => String::new(),
                Some(Some(Val::Imm(d))) if d.len() == 4 => value_text(Kind::Ipv4, d),
                Some(Some(Val::Imm(d))) if d.len() == 16 => {
                    format!("[{}]", value_text(Kind::Ipv6, d))
                }
                Some(_) => return false,
            };
            let port = match reg_port.map(|r| regs.get(r)) {
                None => String::new(),
                Some(Some(Val::Imm(d))) => format!(":{}", value_text(Kind::BigEndian, d)),
                Some(_) => return false,
            };
            out.push(format!("tproxy{family_word} to {addr}{port}"));
            true
        }
        Expr::Unknown { .. } => false,
    }
}

/// `left op value`, as nft prints a comparison.
fn cmp_text(left: &Val, op: CmpOp, data: &[u8]) -> String {
    match left {
        // A whole-byte prefix of an address: `ip daddr 10.0.0.0/8`.
        Val::Field {
            name,
            kind,
            len,
            full,
            ..
        } if *len < *full => format!("{name} {}{}", op_text(op), value_text(*kind, data)),
        Val::Masked { of, mask, xor } if xor.iter().all(|b| *b == 0) => {
            let kind = of.kind();
            let zero = data.iter().all(|b| *b == 0);
            match kind {
                // Flags: `ct state established,related` is `(state & bits) != 0`.
                Kind::CtState | Kind::CtStatus if zero && op == CmpOp::Neq => {
                    format!("{} {}", of.text(), value_text(kind, mask))
                }
                Kind::Ipv4 | Kind::Ipv6 if prefix_len(mask).is_some() => format!(
                    "{} {}{}/{}",
                    of.text(),
                    op_text(op),
                    value_text(kind, data),
                    prefix_len(mask).unwrap_or(0)
                ),
                _ => format!(
                    "{} {}{}",
                    left.text(),
                    if op == CmpOp::Eq {
                        "== ".to_owned()
                    } else {
                        op_text(op)
                    },
                    value_text(kind, data)
                ),
            }
        }
        _ => format!(
            "{} {}{}",
            left.text(),
            op_text(op),
            value_text(left.kind(), data)
        ),
    }
}

/// The right side of `… set X`: a constant of the target's kind, or another field (masked).
fn source_text(v: &Val, kind: Kind) -> String {
    match v {
        Val::Imm(d) => value_text(kind, d),
        other => other.text(),
    }
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Continue => "continue".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
        Verdict::Break => "[verdict break]".into(),
        Verdict::Other(code, None) => format!("[verdict {code}]"),
        Verdict::Other(code, Some(c)) => format!("[verdict {code} {c}]"),
    }
}

/// An anonymous set's elements as nft lists them: sorted, `{ a, b }`, each a concatenation
/// `tcp . 80` when the key is one; an interval set's elements as ranges or prefixes.
fn set_text(fields: &[Val], elements: &[SetElem]) -> String {
    let kinds: Vec<(Kind, usize)> = fields
        .iter()
        .map(|f| match f {
            Val::Masked { of, .. } => (of.kind(), f.len()),
            f => (f.kind(), f.len()),
        })
        .collect();
    // The fields of a key, each padded to whole registers.
    let split = |key: &[u8]| -> Vec<Vec<u8>> {
        let mut at = 0;
        kinds
            .iter()
            .map(|(_, len)| {
                let part = key.get(at..at + len).unwrap_or_default().to_vec();
                at += words(*len) * 4;
                part
            })
            .collect()
    };
    // nft sorts by value: a single field numerically (host-order fields as numbers), a
    // concatenation as one host-order number of the whole key (its last byte first).
    let sort_key = |key: &[u8]| -> Vec<u128> {
        if kinds.len() > 1 {
            return key.iter().rev().map(|b| u128::from(*b)).collect();
        }
        split(key)
            .iter()
            .zip(&kinds)
            .map(|(part, (kind, _))| match kind {
                Kind::Mark | Kind::Decimal | Kind::CtState | Kind::CtStatus => {
                    u128::from(host_u32(part))
                }
                _ => big_endian(part),
            })
            .collect()
    };
    let text = |key: &[u8]| -> String {
        split(key)
            .iter()
            .zip(&kinds)
            .map(|(part, (kind, _))| value_text(*kind, part))
            .collect::<Vec<_>>()
            .join(" . ")
    };
    let mut sorted: Vec<&SetElem> = elements.iter().collect();
    sorted.sort_by_key(|e| (sort_key(&e.key), e.interval_end()));
    let items: Vec<String> = if sorted.iter().any(|e| e.interval_end()) && kinds.len() == 1 {
        intervals(&sorted, kinds[0].0)
    } else {
        sorted.iter().map(|e| text(&e.key)).collect()
    };
    format!("{{ {} }}", items.join(", "))
}

/// An interval set's elements (a start, then the end's successor flagged as an end) as nft
/// shows them: a prefix when the range is one, else `first-last`, or a single value.
fn intervals(sorted: &[&SetElem], kind: Kind) -> Vec<String> {
    let mut out = Vec::new();
    let mut start: Option<&[u8]> = None;
    let last_of = |end: &[u8]| -> Vec<u8> {
        // end - 1, big-endian.
        let mut v = end.to_vec();
        for b in v.iter_mut().rev() {
            if *b == 0 {
                *b = 0xff;
            } else {
                *b -= 1;
                break;
            }
        }
        v
    };
    let range = |first: &[u8], last: &[u8]| -> String {
        if first == last {
            return value_text(kind, first);
        }
        let mask: Vec<u8> = first.iter().zip(last).map(|(a, b)| !(a ^ b)).collect();
        let aligned = first.iter().zip(&mask).all(|(a, m)| a & !m == 0)
            && last.iter().zip(&mask).all(|(b, m)| b | m == 0xff);
        match (kind, prefix_len(&mask)) {
            (Kind::Ipv4 | Kind::Ipv6, Some(n)) if aligned => {
                format!("{}/{n}", value_text(kind, first))
            }
            _ => format!("{}-{}", value_text(kind, first), value_text(kind, last)),
        }
    };
    for e in sorted {
        match (start, e.interval_end()) {
            (None, false) => start = Some(&e.key),
            (Some(s), true) => {
                out.push(range(s, &last_of(&e.key)));
                start = None;
            }
            (Some(s), false) => {
                // Open to the end of the key space.
                let max = vec![0xff; s.len()];
                out.push(range(s, &max));
                start = Some(&e.key);
            }
            (None, true) => {}
        }
    }
    if let Some(s) = start {
        out.push(range(s, &vec![0xff; s.len()]));
    }
    out
}

/// An expression shown as it is on the wire, for what the reading above does not recognise:
/// iptables-nft's `match` and `target` by their extension's name, others by their attributes.
pub fn expr_text(e: &Expr) -> String {
    match e {
        Expr::Unknown { name, data } if name == "match" || name == "target" => {
            let mut ext = String::new();
            let mut rev = 0;
            for (kind, v) in attrs(data) {
                match kind {
                    1 => ext = string(v),
                    2 => rev = be_u32(v).unwrap_or(0),
                    _ => {}
                }
            }
            format!("[{name} {ext} rev {rev}]")
        }
        Expr::Unknown { name, data } => {
            let parts: Vec<String> = attrs(data)
                .map(|(kind, v)| format!("{kind}={}", hex(v)))
                .collect();
            format!("[{name} {}]", parts.join(" "))
        }
        other => format!("[{other:?}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::nftables::codec::expr::REG32_01;

    fn rule(exprs: Vec<Expr>) -> Rule {
        Rule {
            table: "t".into(),
            chain: "c".into(),
            exprs,
            ..Rule::default()
        }
    }

    fn meta(key: MetaKey) -> Expr {
        Expr::Meta { key, dreg: REG_1 }
    }

    fn cmp(op: CmpOp, data: &[u8]) -> Expr {
        Expr::Cmp {
            sreg: REG_1,
            op,
            data: data.to_vec(),
        }
    }

    fn counter() -> Expr {
        Expr::Counter {
            packets: 0,
            bytes: 0,
        }
    }

    #[test]
    fn matches_and_statements_read_as_nft_lists_them() {
        let r = rule(vec![
            meta(MetaKey::OifName),
            cmp(CmpOp::Eq, b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            meta(MetaKey::SkUid),
            cmp(CmpOp::Neq, &1337u32.to_ne_bytes()),
            counter(),
            Expr::Verdict(Verdict::Return),
        ]);
        assert_eq!(
            rule_text(&r, &Sets::new()),
            "oifname \"lo\" meta skuid != 1337 counter packets 0 bytes 0 return"
        );
        let r = rule(vec![
            meta(MetaKey::L4Proto),
            cmp(CmpOp::Eq, &[6]),
            counter(),
            Expr::Immediate {
                dreg: REG_1,
                data: 15001u16.to_be_bytes().to_vec(),
            },
            Expr::Redir {
                reg_proto_min: Some(REG_1),
                reg_proto_max: None,
                flags: Some(2),
            },
        ]);
        assert_eq!(
            rule_text(&r, &Sets::new()),
            "meta l4proto tcp counter packets 0 bytes 0 redirect to :15001"
        );
    }

    #[test]
    fn protocol_guards_go_where_a_header_field_shows() {
        let r = rule(vec![
            meta(MetaKey::NfProto),
            cmp(CmpOp::Eq, &[2]),
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 16,
                len: 4,
                dreg: REG_1,
            },
            cmp(CmpOp::Neq, &[127, 0, 0, 1]),
            meta(MetaKey::L4Proto),
            cmp(CmpOp::Eq, &[6]),
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
                dreg: REG_1,
            },
            cmp(CmpOp::Neq, &15008u16.to_be_bytes()),
        ]);
        assert_eq!(
            rule_text(&r, &Sets::new()),
            "ip daddr != 127.0.0.1 tcp dport != 15008"
        );
        // A guard with no field after it stays.
        let r = rule(vec![meta(MetaKey::NfProto), cmp(CmpOp::Eq, &[10])]);
        assert_eq!(rule_text(&r, &Sets::new()), "meta nfproto ipv6");
    }

    #[test]
    fn sets_masks_and_prefixes() {
        let mut sets = Sets::new();
        let key = |p: u16| {
            let b = p.to_be_bytes();
            SetElem {
                key: vec![6, 0, 0, 0, b[0], b[1], 0, 0],
                flags: Some(0),
            }
        };
        sets.insert(("t".into(), "__set0".into()), vec![key(9001), key(80)]);
        let r = rule(vec![
            meta(MetaKey::L4Proto),
            cmp(CmpOp::Eq, &[6]),
            meta(MetaKey::L4Proto),
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
                dreg: REG32_01,
            },
            Expr::Lookup {
                sreg: REG_1,
                set: "__set0".into(),
                set_id: None,
                invert: true,
            },
        ]);
        assert_eq!(
            rule_text(&r, &sets),
            "meta l4proto . tcp dport != { tcp . 9001, tcp . 80 }"
        );
        let r = rule(vec![
            meta(MetaKey::NfProto),
            cmp(CmpOp::Eq, &[2]),
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 16,
                len: 4,
                dreg: REG_1,
            },
            Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                len: 4,
                mask: vec![255, 240, 0, 0],
                xor: vec![0; 4],
            },
            cmp(CmpOp::Eq, &[172, 16, 0, 0]),
        ]);
        assert_eq!(rule_text(&r, &sets), "ip daddr 172.16.0.0/12");
        let r = rule(vec![
            meta(MetaKey::Mark),
            Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                len: 4,
                mask: (!0x100u32).to_ne_bytes().to_vec(),
                xor: 0x100u32.to_ne_bytes().to_vec(),
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: REG_1,
            },
            Expr::Ct {
                key: CtKey::State,
                direction: None,
                dreg: REG_1,
            },
            Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                len: 4,
                mask: 6u32.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            cmp(CmpOp::Neq, &[0; 4]),
        ]);
        assert_eq!(
            rule_text(&r, &sets),
            "meta mark set meta mark | 0x00000100 ct state established,related"
        );
    }

    #[test]
    fn what_it_does_not_recognise_is_shown_not_dropped() {
        let r = rule(vec![
            meta(MetaKey::L4Proto),
            Expr::Unknown {
                name: "quota".into(),
                data: vec![],
            },
            cmp(CmpOp::Eq, &[17]),
            Expr::Cmp {
                sreg: 3,
                op: CmpOp::Eq,
                data: vec![1],
            },
        ]);
        let text = rule_text(&r, &Sets::new());
        assert!(text.starts_with("[quota ] meta l4proto udp [Cmp"), "{text}");
    }

    #[test]
    fn priorities_by_name_where_nft_names_them() {
        assert_eq!(priority_text(0, -300), "raw");
        assert_eq!(priority_text(3, -150), "mangle");
        assert_eq!(priority_text(0, -100), "dstnat");
        assert_eq!(priority_text(3, -100), "-100");
        assert_eq!(priority_text(3, -145), "mangle + 5");
        assert_eq!(priority_text(3, -350), "-350");
    }
}
