//! One nftables rule of the codec's typed model ([`Expr`]), run like the kernel's nf_tables: a
//! small register machine whose loads (meta, ct, payload, immediate) fill registers that
//! bitwise rewrites, cmp, range and lookup test and statements (mark, connection mark, zone,
//! redirect, tproxy, verdicts) act on, until an expression breaks the rule (no match) or gives
//! a verdict.

use super::packet::{Action, Packet, RuleResult};
use crate::backend::nftables::codec::expr::{REG_1, REG32_00};
use crate::backend::nftables::codec::{CmpOp, CtKey, Expr, MetaKey, PayloadBase, SetElem, Verdict};
use crate::backend::nftables::encode::{nfproto, proto_num};
use crate::plan::Family;
use std::collections::BTreeMap;

/// A rule, with the elements of the sets its lookups name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftRule {
    pub exprs: Vec<Expr>,
    pub sets: BTreeMap<String, Vec<SetElem>>,
}

/// The registers: four 16-byte ones, which are also sixteen 4-byte ones.
type Regs = [u8; 64];

/// Where register `reg` starts: 1-4 are the 16-byte registers, 8-23 the 4-byte ones.
fn offset(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some(((reg - REG_1) * 16) as usize),
        8..=23 => Some(((reg - REG32_00) * 4) as usize),
        _ => None,
    }
}

fn slice(regs: &Regs, reg: u32, len: usize) -> Option<&[u8]> {
    let at = offset(reg)?;
    regs.get(at..at + len)
}

/// Writes `data` into register `reg`, zeroing the rest of its last 4-byte word (as the
/// kernel's loads do); `None` (no such data, e.g. no socket) breaks the rule.
fn load(regs: &mut Regs, reg: u32, data: Option<Vec<u8>>) -> bool {
    let (Some(data), Some(at)) = (data, offset(reg)) else {
        return false;
    };
    let words = data.len().div_ceil(4) * 4;
    let Some(dst) = regs.get_mut(at..at + words) else {
        return false;
    };
    dst.fill(0);
    dst[..data.len()].copy_from_slice(&data);
    true
}

fn word(regs: &Regs, reg: u32) -> u32 {
    let b = slice(regs, reg, 4).unwrap_or(&[0; 4]);
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn meta(p: &Packet, key: MetaKey) -> Option<Vec<u8>> {
    let name = |n: &Option<String>| {
        n.as_ref().map(|n| {
            let mut b = n.as_bytes().to_vec();
            b.resize(16, 0);
            b
        })
    };
    match key {
        MetaKey::L4Proto => Some(vec![proto_num(p.proto)]),
        MetaKey::NfProto => Some(vec![nfproto(p.family)]),
        MetaKey::IifName => name(&p.iif),
        MetaKey::OifName => name(&p.oif),
        MetaKey::Mark => Some(p.mark.to_ne_bytes().to_vec()),
        MetaKey::SkUid => p.owner.map(|(uid, _)| uid.to_ne_bytes().to_vec()),
        MetaKey::SkGid => p.owner.map(|(_, gid)| gid.to_ne_bytes().to_vec()),
        _ => None,
    }
}

fn ip_bytes(addr: std::net::IpAddr) -> Vec<u8> {
    match addr {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn network_header(p: &Packet) -> Vec<u8> {
    let proto = proto_num(p.proto);
    match p.family {
        Family::V4 => {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[9] = proto;
            h[12..16].copy_from_slice(&ip_bytes(p.src));
            h[16..20].copy_from_slice(&ip_bytes(p.dst));
            h
        }
        Family::V6 => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[6] = proto;
            h[8..24].copy_from_slice(&ip_bytes(p.src));
            h[24..40].copy_from_slice(&ip_bytes(p.dst));
            h
        }
    }
}

fn transport_header(p: &Packet) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&p.sport.to_be_bytes());
    h[2..4].copy_from_slice(&p.dport.to_be_bytes());
    h
}

/// Set membership: exact for plain sets; for interval sets (ends flagged), the key lies in an
/// interval when the greatest element not above it starts one.
fn lookup(regs: &Regs, sreg: u32, elements: &[SetElem]) -> bool {
    let Some(len) = elements.first().map(|e| e.key.len()) else {
        return false;
    };
    let Some(key) = slice(regs, sreg, len) else {
        return false;
    };
    if !elements.iter().any(SetElem::interval_end) {
        return elements.iter().any(|e| e.key == key);
    }
    let mut best: Option<&SetElem> = None;
    for e in elements.iter().filter(|e| e.key.as_slice() <= key) {
        best = match best {
            Some(b) if b.key > e.key || (b.key == e.key && !b.interval_end()) => Some(b),
            _ => Some(e),
        };
    }
    best.is_some_and(|e| !e.interval_end())
}

fn cmp(op: CmpOp, have: &[u8], data: &[u8]) -> bool {
    let order = have.cmp(data);
    match op {
        CmpOp::Eq => order.is_eq(),
        CmpOp::Neq => order.is_ne(),
        CmpOp::Lt => order.is_lt(),
        CmpOp::Lte => order.is_le(),
        CmpOp::Gt => order.is_gt(),
        CmpOp::Gte => order.is_ge(),
        CmpOp::Other(_) => false,
    }
}

pub(crate) fn eval(rule: &NftRule, p: &mut Packet) -> RuleResult {
    let mut regs: Regs = [0; 64];
    let mut effects = Vec::new();
    let result = |matched, action, effects| RuleResult {
        matched,
        action,
        effects,
    };
    for expr in &rule.exprs {
        let ok = match expr {
            Expr::Verdict(v) => {
                let action = match v {
                    Verdict::Accept => Action::Accept,
                    Verdict::Drop => Action::Drop,
                    Verdict::Return => Action::Return,
                    Verdict::Jump(c) => Action::Jump(c.clone()),
                    Verdict::Goto(c) => Action::Goto(c.clone()),
                    Verdict::Continue => Action::Continue,
                    Verdict::Break => return result(false, Action::Continue, effects),
                    Verdict::Other(code, _) => {
                        effects.push(format!("verdict {code} (not modelled)"));
                        Action::Continue
                    }
                };
                return result(true, action, effects);
            }
            Expr::Counter { .. } => true,
            Expr::Meta { key, dreg } => load(&mut regs, *dreg, meta(p, *key)),
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let header = match base {
                    PayloadBase::Network => network_header(p),
                    PayloadBase::Transport => transport_header(p),
                    _ => Vec::new(),
                };
                let (at, len) = (*offset as usize, *len as usize);
                load(
                    &mut regs,
                    *dreg,
                    header.get(at..at + len).map(<[u8]>::to_vec),
                )
            }
            Expr::Ct { key, dreg, .. } => load(
                &mut regs,
                *dreg,
                match key {
                    CtKey::State => Some(p.ctstate.to_ne_bytes().to_vec()),
                    CtKey::Mark => Some(p.ctmark.to_ne_bytes().to_vec()),
                    CtKey::Zone => Some(p.zone.to_ne_bytes().to_vec()),
                    _ => None,
                },
            ),
            Expr::Cmp { sreg, op, data } => {
                slice(&regs, *sreg, data.len()).is_some_and(|have| cmp(*op, have, data))
            }
            Expr::Range { sreg, op, from, to } => {
                slice(&regs, *sreg, from.len()).is_some_and(|have| {
                    let inside = from.as_slice() <= have && have <= to.as_slice();
                    inside == (*op == CmpOp::Eq)
                })
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
                ..
            } => match slice(&regs, *sreg, mask.len()).map(<[u8]>::to_vec) {
                Some(src) => {
                    let out: Vec<u8> = src
                        .iter()
                        .zip(mask)
                        .zip(xor)
                        .map(|((b, m), x)| (b & m) ^ x)
                        .collect();
                    load(&mut regs, *dreg, Some(out))
                }
                None => false,
            },
            Expr::Lookup {
                sreg, set, invert, ..
            } => {
                let elements = rule.sets.get(set).map(Vec::as_slice).unwrap_or_default();
                lookup(&regs, *sreg, elements) != *invert
            }
            Expr::Immediate { dreg, data } => load(&mut regs, *dreg, Some(data.clone())),
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg,
            } => {
                p.mark = word(&regs, *sreg);
                effects.push(format!("mark {:#x}", p.mark));
                true
            }
            Expr::CtSet {
                key: CtKey::Mark,
                sreg,
            } => {
                p.ctmark = word(&regs, *sreg);
                effects.push(format!("connection mark {:#x}", p.ctmark));
                true
            }
            Expr::CtSet {
                key: CtKey::Zone,
                sreg,
            } => {
                let b = slice(&regs, *sreg, 2).unwrap_or(&[0, 0]);
                p.zone = u16::from_ne_bytes([b[0], b[1]]);
                effects.push(format!("conntrack zone {}", p.zone));
                true
            }
            Expr::MetaSet { key, .. } => {
                effects.push(format!("sets meta {key:?} (not modelled)"));
                true
            }
            Expr::CtSet { key, .. } => {
                effects.push(format!("sets ct {key:?} (not modelled)"));
                true
            }
            Expr::Redir { reg_proto_min, .. } => {
                let port = match reg_proto_min.and_then(|r| slice(&regs, r, 2)) {
                    Some(b) => u16::from_be_bytes([b[0], b[1]]),
                    None => p.dport,
                };
                p.redirect_to(port);
                effects.push(format!("redirect to port {port}"));
                return result(true, Action::Accept, effects);
            }
            Expr::Tproxy { reg_port, .. } => {
                let port = match reg_port.and_then(|r| slice(&regs, r, 2)) {
                    Some(b) => u16::from_be_bytes([b[0], b[1]]),
                    None => p.dport,
                };
                p.tproxy = Some(port);
                effects.push(format!("tproxy to port {port}"));
                true
            }
            // Only the node's probe rule uses it (postrouting, which explain does not walk).
            Expr::Nat { .. } => {
                effects.push("nat (not modelled)".into());
                return result(true, Action::Accept, effects);
            }
            // Refused before the walk (see `Rules::from_nftables`).
            Expr::Unknown { .. } => false,
        };
        if !ok {
            return result(false, Action::Continue, effects);
        }
    }
    result(true, Action::Continue, effects)
}
