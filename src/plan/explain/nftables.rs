//! One nftables rule in the backend's canonical expression text (`[meta load l4proto => r1]
//! [cmp eq r1 06] … [jump istio-output]`), run like the kernel's nf_tables: expressions load
//! packet data into registers, compare, look up sets and apply statements, until one breaks
//! (the rule does not match) or gives a verdict.

use super::super::Family;
use super::rules::{Action, Base, Hook};
use super::{Packet, RuleResult};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    MetaLoad {
        key: String,
        dreg: usize,
    },
    MetaSet {
        key: String,
        sreg: usize,
    },
    Cmp {
        op: u32,
        sreg: usize,
        data: Vec<u8>,
    },
    Payload {
        len: usize,
        base: u32,
        offset: usize,
        dreg: usize,
    },
    Bitwise {
        dreg: usize,
        sreg: usize,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Lookup {
        sreg: usize,
        invert: bool,
        elements: Vec<(Vec<u8>, bool)>,
    },
    Immediate {
        dreg: usize,
        data: Vec<u8>,
    },
    Verdict(Action),
    Counter,
    CtLoad {
        key: String,
        dreg: usize,
    },
    CtSet {
        key: String,
        sreg: usize,
    },
    Redirect {
        sreg: Option<usize>,
    },
    Tproxy {
        sreg: usize,
    },
    Range {
        op: u32,
        sreg: usize,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

/// A parsed rule: its expressions in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    exprs: Vec<Expr>,
}

/// A base chain from its read-back header `chain type KIND hook N priority P`; `None` for hooks
/// explain does not walk (input, forward, postrouting).
pub fn base(chain: &str, header: &str) -> Result<Option<Base>, String> {
    let words: Vec<&str> = header.split_whitespace().collect();
    let ["chain", ..] = words.as_slice() else {
        return Err("expected `chain type KIND hook N priority P`".into());
    };
    let value = |key: &str| {
        words
            .windows(2)
            .find(|w| w[0] == key)
            .map(|w| w[1])
            .ok_or_else(|| format!("no {key} in the chain header"))
    };
    let hook = match value("hook")? {
        "0" => Hook::Prerouting,
        "3" => Hook::Output,
        _ => return Ok(None),
    };
    Ok(Some(Base {
        chain: chain.to_owned(),
        hook,
        priority: value("priority")?
            .parse()
            .map_err(|_| "priority is not a number".to_owned())?,
        nat: value("type")? == "nat",
    }))
}

fn hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err(format!("odd hex {text:?}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| format!("hex {text:?}")))
        .collect()
}

/// Register `rN`: 1-4 are the 16-byte registers, 8-23 the 4-byte ones (the same storage).
fn reg(text: &str) -> Result<usize, String> {
    let n: usize = text
        .strip_prefix('r')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("register {text:?}"))?;
    match n {
        1..=4 => Ok((n - 1) * 16),
        8..=23 => Ok((n - 8) * 4),
        _ => Err(format!("register {text:?}")),
    }
}

fn parse_expr(text: &str) -> Result<Expr, String> {
    let w: Vec<&str> = text.split_whitespace().collect();
    let n = |s: &str| s.parse::<usize>().map_err(|_| format!("number {s:?}"));
    Ok(match w.as_slice() {
        ["meta", "load", key, "=>", r] => Expr::MetaLoad {
            key: key.to_string(),
            dreg: reg(r)?,
        },
        ["meta", "set", key, "<=", r] => Expr::MetaSet {
            key: key.to_string(),
            sreg: reg(r)?,
        },
        ["cmp", op, r, data] => Expr::Cmp {
            op: match *op {
                "eq" => 0,
                "neq" => 1,
                other => other
                    .strip_prefix("op")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("cmp {other}"))?,
            },
            sreg: reg(r)?,
            data: hex(data)?,
        },
        ["payload", "load", len, "@", base, "+", off, "=>", r] => Expr::Payload {
            len: n(len.trim_end_matches('b'))?,
            base: n(base.trim_start_matches("base"))? as u32,
            offset: n(off)?,
            dreg: reg(r)?,
        },
        ["bitwise", d, "=", s, "&", mask, "^", xor] => Expr::Bitwise {
            dreg: reg(d)?,
            sreg: reg(s.trim_start_matches('('))?,
            mask: hex(mask.trim_end_matches(')'))?,
            xor: hex(xor)?,
        },
        ["lookup", r, rest @ ..] => {
            let (invert, set) = match rest {
                ["in", set] => (false, *set),
                ["not", "in", set] => (true, *set),
                _ => return Err("lookup: expected `in {…}`".into()),
            };
            let inner = set
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .ok_or("lookup: set elements not shown")?;
            let elements = inner
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| match e.strip_suffix("/end") {
                    Some(k) => hex(k).map(|k| (k, true)),
                    None => hex(e).map(|k| (k, false)),
                })
                .collect::<Result<_, _>>()?;
            Expr::Lookup {
                sreg: reg(r)?,
                invert,
                elements,
            }
        }
        ["immediate", r, data] => Expr::Immediate {
            dreg: reg(r)?,
            data: hex(data)?,
        },
        ["accept"] => Expr::Verdict(Action::Accept),
        ["drop"] => Expr::Verdict(Action::Drop),
        ["return"] => Expr::Verdict(Action::Return),
        ["jump", chain] => Expr::Verdict(Action::Jump(chain.to_string())),
        ["goto", chain] => Expr::Verdict(Action::Goto(chain.to_string())),
        ["counter", ..] => Expr::Counter,
        ["ct", "load", key, .., "=>", r] => Expr::CtLoad {
            key: key.to_string(),
            dreg: reg(r)?,
        },
        ["ct", "set", key, .., "<=", r] => Expr::CtSet {
            key: key.to_string(),
            sreg: reg(r)?,
        },
        ["redir", "port", r, "flags", _] => Expr::Redirect {
            sreg: Some(reg(r.split('-').next().unwrap_or(r))?),
        },
        ["redir", "port", "flags", _] => Expr::Redirect { sreg: None },
        ["tproxy", "family", _, "addr", "port", r]
        | ["tproxy", "family", _, "addr", _, "port", r] => Expr::Tproxy { sreg: reg(r)? },
        ["range", op, r, span] => {
            let (from, to) = span.split_once('-').ok_or("range: FROM-TO")?;
            Expr::Range {
                op: n(op.trim_start_matches("op"))? as u32,
                sreg: reg(r)?,
                from: hex(from)?,
                to: hex(to)?,
            }
        }
        _ => return Err(format!("expression [{text}] is not modelled")),
    })
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, String> {
        let mut exprs = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let body = rest.strip_prefix('[').ok_or("expected `[`")?;
            let end = body.find(']').ok_or("unclosed `[`")?;
            exprs.push(parse_expr(&body[..end])?);
            rest = body[end + 1..].trim_start();
        }
        Ok(Rule { exprs })
    }

    pub(crate) fn eval(&self, p: &mut Packet) -> RuleResult {
        let mut regs = [0u8; 64];
        let mut effects = Vec::new();
        let result = |matched, action, effects| RuleResult {
            matched,
            action,
            effects,
        };
        for expr in &self.exprs {
            let ok = match expr {
                Expr::Verdict(action) => return result(true, action.clone(), effects),
                Expr::Counter => true,
                Expr::MetaLoad { key, dreg } => load(&mut regs, *dreg, meta(p, key)),
                Expr::Payload {
                    len,
                    base,
                    offset,
                    dreg,
                } => {
                    let header = match base {
                        1 => network_header(p),
                        2 => transport_header(p),
                        _ => Vec::new(),
                    };
                    load(
                        &mut regs,
                        *dreg,
                        header.get(*offset..offset + len).map(<[u8]>::to_vec),
                    )
                }
                Expr::CtLoad { key, dreg } => load(
                    &mut regs,
                    *dreg,
                    match key.as_str() {
                        "state" => Some(p.ctstate.to_ne_bytes().to_vec()),
                        "mark" => Some(p.ctmark.to_ne_bytes().to_vec()),
                        "zone" => Some(p.zone.to_ne_bytes().to_vec()),
                        _ => None,
                    },
                ),
                Expr::Cmp { op, sreg, data } => {
                    let have = &regs[*sreg..sreg + data.len()];
                    let order = have.cmp(data.as_slice());
                    match op {
                        0 => order.is_eq(),
                        1 => order.is_ne(),
                        2 => order.is_lt(),
                        3 => order.is_le(),
                        4 => order.is_gt(),
                        _ => order.is_ge(),
                    }
                }
                Expr::Range { op, sreg, from, to } => {
                    let have = &regs[*sreg..sreg + from.len()];
                    let inside = from.as_slice() <= have && have <= to.as_slice();
                    inside == (*op == 0)
                }
                Expr::Bitwise {
                    dreg,
                    sreg,
                    mask,
                    xor,
                } => {
                    let src: Vec<u8> = regs[*sreg..sreg + mask.len()].to_vec();
                    for (i, b) in src.iter().enumerate() {
                        regs[dreg + i] = (b & mask[i]) ^ xor[i];
                    }
                    true
                }
                Expr::Lookup {
                    sreg,
                    invert,
                    elements,
                } => lookup(&regs, *sreg, elements) != *invert,
                Expr::Immediate { dreg, data } => {
                    regs[*dreg..dreg + data.len()].copy_from_slice(data);
                    true
                }
                Expr::MetaSet { key, sreg } if key == "mark" => {
                    p.mark = word(&regs, *sreg);
                    effects.push(format!("mark {:#x}", p.mark));
                    true
                }
                Expr::CtSet { key, sreg } if key == "mark" => {
                    p.ctmark = word(&regs, *sreg);
                    effects.push(format!("connection mark {:#x}", p.ctmark));
                    true
                }
                Expr::CtSet { key, sreg } if key == "zone" => {
                    p.zone = u16::from_ne_bytes([regs[*sreg], regs[sreg + 1]]);
                    effects.push(format!("conntrack zone {}", p.zone));
                    true
                }
                Expr::MetaSet { key, .. } | Expr::CtSet { key, .. } => {
                    effects.push(format!("sets {key} (not modelled)"));
                    true
                }
                Expr::Redirect { sreg } => {
                    let port = match sreg {
                        Some(r) => u16::from_be_bytes([regs[*r], regs[r + 1]]),
                        None => p.dport,
                    };
                    p.redirect_to(port);
                    effects.push(format!("redirect to port {port}"));
                    return result(true, Action::Accept, effects);
                }
                Expr::Tproxy { sreg } => {
                    let port = u16::from_be_bytes([regs[*sreg], regs[sreg + 1]]);
                    p.tproxy = Some(port);
                    effects.push(format!("tproxy to port {port}"));
                    true
                }
            };
            if !ok {
                return result(false, Action::Continue, effects);
            }
        }
        result(true, Action::Continue, effects)
    }
}

/// Writes `data` into the register at `at`, zeroing the rest of its last 32-bit word (as the
/// kernel's loads do); `None` (no such data, e.g. no socket) breaks the rule.
fn load(regs: &mut [u8; 64], at: usize, data: Option<Vec<u8>>) -> bool {
    let Some(data) = data else { return false };
    let words = data.len().div_ceil(4) * 4;
    regs[at..at + words].fill(0);
    regs[at..at + data.len()].copy_from_slice(&data);
    true
}

fn word(regs: &[u8; 64], at: usize) -> u32 {
    u32::from_ne_bytes([regs[at], regs[at + 1], regs[at + 2], regs[at + 3]])
}

fn meta(p: &Packet, key: &str) -> Option<Vec<u8>> {
    let name = |n: &Option<String>| {
        n.as_ref().map(|n| {
            let mut b = n.as_bytes().to_vec();
            b.resize(16, 0);
            b
        })
    };
    match key {
        "l4proto" => Some(vec![match p.proto {
            super::super::Protocol::Tcp => 6,
            super::super::Protocol::Udp => 17,
        }]),
        "nfproto" => Some(vec![match p.family {
            Family::V4 => 2,
            Family::V6 => 10,
        }]),
        "iifname" => name(&p.iif),
        "oifname" => name(&p.oif),
        "mark" => Some(p.mark.to_ne_bytes().to_vec()),
        "skuid" => p.owner.map(|(uid, _)| uid.to_ne_bytes().to_vec()),
        "skgid" => p.owner.map(|(_, gid)| gid.to_ne_bytes().to_vec()),
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
    let proto = match p.proto {
        super::super::Protocol::Tcp => 6,
        super::super::Protocol::Udp => 17,
    };
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

/// Set membership: exact for plain sets; for interval sets (ends marked `/end`), the key lies
/// in an interval when the greatest element not above it starts one.
fn lookup(regs: &[u8; 64], sreg: usize, elements: &[(Vec<u8>, bool)]) -> bool {
    let Some(len) = elements.first().map(|(k, _)| k.len()) else {
        return false;
    };
    let key = &regs[sreg..sreg + len];
    if !elements.iter().any(|(_, end)| *end) {
        return elements.iter().any(|(k, _)| k.as_slice() == key);
    }
    let mut best: Option<&(Vec<u8>, bool)> = None;
    for e in elements.iter().filter(|(k, _)| k.as_slice() <= key) {
        best = match best {
            Some(b) if b.0 > e.0 || (b.0 == e.0 && !b.1) => Some(b),
            _ => Some(e),
        };
    }
    best.is_some_and(|(_, end)| !end)
}
