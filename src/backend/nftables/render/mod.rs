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

mod chain;
mod fields;
mod sets;
mod value;

pub use chain::{header_text, hook_name};

use super::codec::attr::{attrs, be_u32, string};
use super::codec::expr::{CmpOp, Expr, NatType, PayloadBase, Verdict};
use super::codec::{Rule, SetElem};
use super::contents::{Contents, SetKey};
use fields::{Context, Val, ct_field, meta_field, payload_field, raw_payload, reg32, words};
use nix::libc;
use sets::set_text;
use std::collections::BTreeMap;
use value::{Kind, hex, op_text, prefix_len, value_text};

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

    /// An optional register operand that must hold an immediate: `Some(None)` when the
    /// expression has no such register, `None` when it holds anything but a constant.
    fn imm(&self, reg: Option<u32>) -> Option<Option<&[u8]>> {
        match reg {
            None => Some(None),
            Some(r) => match self.get(r) {
                Some(Val::Imm(d)) => Some(Some(d)),
                _ => None,
            },
        }
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
            let anonymous = super::contents::is_anonymous(set);
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
            let port = |reg| {
                regs.imm(reg)
                    .map(|d| d.map(|d| value_text(Kind::BigEndian, d)))
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
            push_nat_flags(&mut text, flags.unwrap_or(0) & !2);
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
            let addr = match regs.imm(*reg_addr) {
                Some(None) => String::new(),
                Some(Some(d)) if d.len() == 4 => value_text(Kind::Ipv4, d),
                Some(Some(d)) if d.len() == 16 => format!("[{}]", value_text(Kind::Ipv6, d)),
                _ => return false,
            };
            let port = match regs.imm(*reg_port) {
                Some(None) => String::new(),
                Some(Some(d)) => format!(":{}", value_text(Kind::BigEndian, d)),
                None => return false,
            };
            out.push(format!("tproxy{family_word} to {addr}{port}"));
            true
        }
        Expr::Nat {
            kind,
            family,
            reg_addr_min,
            reg_addr_max,
            reg_proto_min,
            reg_proto_max,
            flags,
        } => {
            let word = match kind {
                NatType::Snat => "snat",
                NatType::Dnat => "dnat",
                NatType::Other(_) => return false,
            };
            let (family_word, addr_kind) = match *family as i32 {
                libc::NFPROTO_IPV4 => ("ip", Kind::Ipv4),
                libc::NFPROTO_IPV6 => ("ip6", Kind::Ipv6),
                _ => return false,
            };
            let (Some(amin), Some(amax), Some(pmin), Some(pmax)) = (
                regs.imm(*reg_addr_min),
                regs.imm(*reg_addr_max),
                regs.imm(*reg_proto_min),
                regs.imm(*reg_proto_max),
            ) else {
                return false;
            };
            let addr = |d: &[u8]| match addr_kind {
                Kind::Ipv6 if pmin.is_some() => format!("[{}]", value_text(addr_kind, d)),
                _ => value_text(addr_kind, d),
            };
            let mut text = format!("{word} {family_word} to ");
            if let Some(a) = amin {
                text.push_str(&addr(a));
                if let Some(b) = amax.filter(|b| *b != a) {
                    text.push_str(&format!("-{}", addr(b)));
                }
            }
            if let Some(p) = pmin {
                text.push_str(&format!(":{}", value_text(Kind::BigEndian, p)));
                if let Some(q) = pmax.filter(|q| *q != p) {
                    text.push_str(&format!("-{}", value_text(Kind::BigEndian, q)));
                }
            }
            // MAP_IPS (1) and PROTO_SPECIFIED (2) go with the address and the port.
            push_nat_flags(&mut text, flags.unwrap_or(0) & !3);
            out.push(text);
            true
        }
        Expr::Unknown { .. } => false,
    }
}

/// A redirect's or NAT's flags as nft's words; a bit nft has no word for stays a number.
fn push_nat_flags(text: &mut String, mut rest: u32) {
    for (bit, word) in [(4, "random"), (8, "persistent"), (16, "fully-random")] {
        if rest & bit != 0 {
            text.push_str(&format!(" {word}"));
            rest &= !bit;
        }
    }
    if rest != 0 {
        text.push_str(&format!(" [flags {rest:#x}]"));
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
mod tests;
