//! A deterministic text of [`Contents`] for read-back and diff: per chain, a base chain's header
//! then one line per rule, each expression in brackets (`[meta load l4proto => r1] [cmp eq r1
//! 06] [counter] [jump istio-output]`), a looked-up set spelled by its elements. Counters print
//! without their values (they change with traffic).

use super::codec::expr::{CmpOp, CtKey, Expr, MetaKey, PayloadBase, Verdict};
use super::codec::{Chain, Rule, SetElem};
use super::contents::Contents;
use std::collections::BTreeMap;

/// Per chain key (`inet TABLE CHAIN`), the base chain header (if any) then the rules' text.
pub type ChainTexts = BTreeMap<String, Vec<String>>;

pub fn chain_key(table: &str, chain: &str) -> String {
    format!("inet {table} {chain}")
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// The pseudo-rule that stands for a base chain's definition.
pub fn header_text(c: &Chain) -> Option<String> {
    let hook = c.hook?;
    Some(format!(
        "chain type {} hook {} priority {}",
        c.chain_type.as_deref().unwrap_or(""),
        hook.hooknum,
        hook.priority
    ))
}

/// The texts of every chain of `contents` (canonical).
pub fn chain_texts(contents: &Contents) -> ChainTexts {
    let mut out = ChainTexts::new();
    for c in &contents.chains {
        let entry = out.entry(chain_key(&c.table, &c.name)).or_default();
        entry.extend(header_text(c));
    }
    for r in &contents.rules {
        let set_text = |name: &str| match contents.set(&r.table, name) {
            Some(elements) => elements_text(elements),
            None => format!("@{name}"),
        };
        out.entry(chain_key(&r.table, &r.chain))
            .or_default()
            .push(rule_text(r, &set_text));
    }
    out
}

/// A set's elements: sorted keys, interval ends marked.
pub fn elements_text(elements: &[SetElem]) -> String {
    let mut parts: Vec<(Vec<u8>, bool)> = elements
        .iter()
        .map(|e| (e.key.clone(), e.interval_end()))
        .collect();
    parts.sort();
    let parts: Vec<String> = parts
        .iter()
        .map(|(k, end)| format!("{}{}", hex(k), if *end { "/end" } else { "" }))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// One rule: the text of each expression; `set_text` spells a looked-up set by name.
pub fn rule_text(rule: &Rule, set_text: &dyn Fn(&str) -> String) -> String {
    rule.exprs
        .iter()
        .map(|e| expr_text(e, set_text))
        .collect::<Vec<_>>()
        .join(" ")
}

fn meta_key(k: MetaKey) -> String {
    match k {
        MetaKey::Mark => "mark".into(),
        MetaKey::IifName => "iifname".into(),
        MetaKey::OifName => "oifname".into(),
        MetaKey::SkUid => "skuid".into(),
        MetaKey::SkGid => "skgid".into(),
        MetaKey::NfProto => "nfproto".into(),
        MetaKey::L4Proto => "l4proto".into(),
        MetaKey::NfTrace => "nftrace".into(),
        MetaKey::Iif => "iif".into(),
        MetaKey::Oif => "oif".into(),
        MetaKey::Other(n) => format!("key{n}"),
    }
}

fn ct_key(k: CtKey) -> String {
    match k {
        CtKey::State => "state".into(),
        CtKey::Mark => "mark".into(),
        CtKey::Zone => "zone".into(),
        CtKey::Direction => "direction".into(),
        CtKey::Status => "status".into(),
        CtKey::Other(n) => format!("key{n}"),
    }
}

fn op_name(op: CmpOp) -> String {
    match op {
        CmpOp::Eq => "eq".into(),
        CmpOp::Neq => "neq".into(),
        other => format!("op{}", other.to_wire()),
    }
}

fn verdict_text(v: &Verdict) -> String {
    let name = match v {
        Verdict::Accept => "accept".to_owned(),
        Verdict::Drop => "drop".to_owned(),
        Verdict::Continue => "continue".to_owned(),
        Verdict::Break => "break".to_owned(),
        Verdict::Jump(_) => "jump".to_owned(),
        Verdict::Goto(_) => "goto".to_owned(),
        Verdict::Return => "return".to_owned(),
        Verdict::Other(code, _) => format!("verdict{code}"),
    };
    match v.chain() {
        Some(chain) => format!("[{name} {chain}]"),
        None => format!("[{name}]"),
    }
}

/// One expression.
pub fn expr_text(e: &Expr, set_text: &dyn Fn(&str) -> String) -> String {
    match e {
        Expr::Meta { key, dreg } => format!("[meta load {} => r{dreg}]", meta_key(*key)),
        Expr::MetaSet { key, sreg } => format!("[meta set {} <= r{sreg}]", meta_key(*key)),
        Expr::Cmp { sreg, op, data } => format!("[cmp {} r{sreg} {}]", op_name(*op), hex(data)),
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => format!(
            "[payload load {len}b @ base{} + {offset} => r{dreg}]",
            match base {
                PayloadBase::Other(n) => *n,
                b => b.to_wire(),
            }
        ),
        Expr::Bitwise {
            sreg,
            dreg,
            mask,
            xor,
            ..
        } => format!(
            "[bitwise r{dreg} = (r{sreg} & {}) ^ {}]",
            hex(mask),
            hex(xor)
        ),
        Expr::Lookup {
            sreg, set, invert, ..
        } => format!(
            "[lookup r{sreg} {}in {}]",
            if *invert { "not " } else { "" },
            set_text(set)
        ),
        Expr::Immediate { dreg, data } => format!("[immediate r{dreg} {}]", hex(data)),
        Expr::Verdict(v) => verdict_text(v),
        Expr::Counter { .. } => "[counter]".into(),
        Expr::Ct {
            key,
            direction,
            dreg,
        } => format!(
            "[ct load {}{} => r{dreg}]",
            ct_key(*key),
            direction.map(|d| format!(" dir{d}")).unwrap_or_default()
        ),
        Expr::CtSet { key, sreg } => format!("[ct set {} <= r{sreg}]", ct_key(*key)),
        Expr::Redir {
            reg_proto_min,
            reg_proto_max,
            flags,
        } => format!(
            "[redir port {}{} flags {}]",
            reg_proto_min.map(|r| format!("r{r}")).unwrap_or_default(),
            reg_proto_max.map(|r| format!("-r{r}")).unwrap_or_default(),
            flags.unwrap_or(0)
        ),
        Expr::Tproxy {
            family,
            reg_addr,
            reg_port,
        } => format!(
            "[tproxy family {family} addr {} port {}]",
            reg_addr.map(|r| format!("r{r}")).unwrap_or_default(),
            reg_port.map(|r| format!("r{r}")).unwrap_or_default()
        ),
        Expr::Range { sreg, op, from, to } => format!(
            "[range op{} r{sreg} {}-{}]",
            op.to_wire(),
            hex(from),
            hex(to)
        ),
        Expr::Unknown { name, data } => unknown_text(name, data),
    }
}

/// An expression this model does not type: iptables-nft's `match` and `target` by their
/// extension's name and revision, others by their raw attributes.
fn unknown_text(name: &str, data: &[u8]) -> String {
    use super::codec::attr::{attrs, be_u32, string};
    if name == "match" || name == "target" {
        let mut ext = String::new();
        let mut rev = 0;
        for (kind, v) in attrs(data) {
            match kind {
                1 => ext = string(v),
                2 => rev = be_u32(v).unwrap_or(0),
                _ => {}
            }
        }
        return format!("[{name} name {ext} rev {rev}]");
    }
    let parts: Vec<String> = attrs(data)
        .map(|(kind, v)| format!("{kind}={}", hex(v)))
        .collect();
    format!("[{name} {}]", parts.join(" "))
}
