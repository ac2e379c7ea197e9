//! The canonical text of nftables messages: chains (a base chain's hook, priority and type) and
//! rules (each expression), decoded the same way from the kernel's dumps for read-back and from
//! the messages of an install batch for the expected side, so the two differ only where the
//! kernel holds something else.

use super::batch::Built;
use super::names::{BaseChain, Hook};
use super::object::{Chain, Expr, Rule};
use super::socket::{Message, messages};
use nftnl::nftnl_sys::{self as sys, libc};
use std::collections::BTreeMap;

const NFT_TYPE_BASE: u16 = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;

/// Per chain key (`inet TABLE CHAIN`), the base chain header (if any) then the rules' text.
pub type ChainTexts = BTreeMap<String, Vec<String>>;

pub fn chain_key(table: &str, chain: &str) -> String {
    format!("inet {table} {chain}")
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
    pub fn parse(msg: &Message) -> Option<ChainInfo> {
        let c = Chain::parse(msg)?;
        Some(ChainInfo {
            table: c.str(sys::NFTNL_CHAIN_TABLE),
            name: c.str(sys::NFTNL_CHAIN_NAME),
            base: c.has(sys::NFTNL_CHAIN_HOOKNUM).then(|| {
                (
                    c.u32(sys::NFTNL_CHAIN_HOOKNUM),
                    // The priority is a signed 32-bit attribute.
                    c.u32(sys::NFTNL_CHAIN_PRIO) as i32,
                    c.str(sys::NFTNL_CHAIN_TYPE),
                )
            }),
        })
    }

    /// The pseudo-rule that stands for a base chain's definition in read-back.
    pub fn header_text(&self) -> Option<String> {
        self.base
            .as_ref()
            .map(|(hook, prio, kind)| format!("chain type {kind} hook {hook} priority {prio}"))
    }
}

/// A base chain of the description as [`ChainInfo::base`] holds it.
pub fn base_info(b: &BaseChain) -> (u32, i32, String) {
    let hook = match b.hook {
        Hook::Prerouting => libc::NF_INET_PRE_ROUTING as u32,
        Hook::Output => libc::NF_INET_LOCAL_OUT as u32,
    };
    (hook, b.priority, b.kind.name().to_owned())
}

/// Canonical text of a set's elements: sorted keys, interval ends marked.
pub fn elements_text(elements: &mut [(Vec<u8>, bool)]) -> String {
    elements.sort();
    let parts: Vec<String> = elements
        .iter()
        .map(|(k, end)| format!("{}{}", hex(k), if *end { "/end" } else { "" }))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Canonical text of one rule message (a kernel dump or a batch request): its table, chain and
/// the text of each expression; `set_text` spells a looked-up set by name or batch id.
pub fn rule_text(
    msg: &Message,
    set_text: &dyn Fn(&str, &str, Option<u32>) -> String,
) -> Option<(String, String, String)> {
    let r = Rule::parse(msg)?;
    let table = r.str(sys::NFTNL_RULE_TABLE);
    let chain = r.str(sys::NFTNL_RULE_CHAIN);
    let parts: Vec<String> = r
        .exprs()
        .iter()
        .map(|e| expr_text(e, &|name, id| set_text(&table, name, id)))
        .collect();
    Some((table, chain, parts.join(" ")))
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

fn verdict_name(code: i32) -> String {
    match code {
        libc::NF_ACCEPT => "accept".to_owned(),
        libc::NF_DROP => "drop".to_owned(),
        libc::NFT_JUMP => "jump".to_owned(),
        libc::NFT_GOTO => "goto".to_owned(),
        libc::NFT_RETURN => "return".to_owned(),
        other => format!("verdict{other}"),
    }
}

/// One expression in canonical text. Counters print without their values (they change with
/// traffic); expressions meshcap never writes fall back to libnftnl's own text.
fn expr_text(e: &Expr<'_>, set_text: &dyn Fn(&str, Option<u32>) -> String) -> String {
    let reg = |attr: u32| e.opt_u32(attr).map(|r| format!("r{r}")).unwrap_or_default();
    let name = e.name();
    match name.as_str() {
        "meta" => {
            let key = meta_key(e.u32(sys::NFTNL_EXPR_META_KEY));
            match e.opt_u32(sys::NFTNL_EXPR_META_DREG) {
                Some(_) => format!("[meta load {key} => {}]", reg(sys::NFTNL_EXPR_META_DREG)),
                None => format!("[meta set {key} <= {}]", reg(sys::NFTNL_EXPR_META_SREG)),
            }
        }
        "cmp" => format!(
            "[cmp {} {} {}]",
            match e.u32(sys::NFTNL_EXPR_CMP_OP) as i32 {
                libc::NFT_CMP_EQ => "eq".to_owned(),
                libc::NFT_CMP_NEQ => "neq".to_owned(),
                other => format!("op{other}"),
            },
            reg(sys::NFTNL_EXPR_CMP_SREG),
            hex(&e.data(sys::NFTNL_EXPR_CMP_DATA))
        ),
        "payload" => format!(
            "[payload load {}b @ base{} + {} => {}]",
            e.opt_u32(sys::NFTNL_EXPR_PAYLOAD_LEN).unwrap_or(0),
            e.opt_u32(sys::NFTNL_EXPR_PAYLOAD_BASE).unwrap_or(0),
            e.opt_u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET).unwrap_or(0),
            reg(sys::NFTNL_EXPR_PAYLOAD_DREG)
        ),
        "bitwise" => format!(
            "[bitwise {} = ({} & {}) ^ {}{}]",
            reg(sys::NFTNL_EXPR_BITWISE_DREG),
            reg(sys::NFTNL_EXPR_BITWISE_SREG),
            hex(&e.data(sys::NFTNL_EXPR_BITWISE_MASK)),
            hex(&e.data(sys::NFTNL_EXPR_BITWISE_XOR)),
            match e.opt_u32(sys::NFTNL_EXPR_BITWISE_OP) {
                Some(op) if op != 0 => format!(" op{op}"),
                _ => String::new(),
            }
        ),
        "lookup" => {
            let set = e.str(sys::NFTNL_EXPR_LOOKUP_SET);
            let id = e.opt_u32(sys::NFTNL_EXPR_LOOKUP_SET_ID);
            let inv = e.opt_u32(sys::NFTNL_EXPR_LOOKUP_FLAGS).unwrap_or(0)
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
            let dreg = e.opt_u32(sys::NFTNL_EXPR_IMM_DREG).unwrap_or(0);
            if dreg == libc::NFT_REG_VERDICT as u32 {
                let chain = if e.has(sys::NFTNL_EXPR_IMM_CHAIN) {
                    format!(" {}", e.str(sys::NFTNL_EXPR_IMM_CHAIN))
                } else {
                    String::new()
                };
                let v = verdict_name(e.u32(sys::NFTNL_EXPR_IMM_VERDICT) as i32);
                format!("[{v}{chain}]")
            } else {
                format!(
                    "[immediate r{dreg} {}]",
                    hex(&e.data(sys::NFTNL_EXPR_IMM_DATA))
                )
            }
        }
        "counter" => "[counter]".into(),
        "ct" => {
            let key = ct_key(e.u32(sys::NFTNL_EXPR_CT_KEY));
            let dir = e
                .opt_u32(sys::NFTNL_EXPR_CT_DIR)
                .map(|d| format!(" dir{d}"))
                .unwrap_or_default();
            match e.opt_u32(sys::NFTNL_EXPR_CT_DREG) {
                Some(_) => format!("[ct load {key}{dir} => {}]", reg(sys::NFTNL_EXPR_CT_DREG)),
                None => format!("[ct set {key}{dir} <= {}]", reg(sys::NFTNL_EXPR_CT_SREG)),
            }
        }
        "redir" => {
            // The kernel reports a single port register as min and max alike.
            let min = e.opt_u32(sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN);
            let max = e
                .opt_u32(sys::NFTNL_EXPR_REDIR_REG_PROTO_MAX)
                .filter(|m| Some(*m) != min);
            format!(
                "[redir port {}{} flags {}]",
                reg(sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN),
                max.map(|r| format!("-r{r}")).unwrap_or_default(),
                e.opt_u32(sys::NFTNL_EXPR_REDIR_FLAGS).unwrap_or(0)
            )
        }
        "tproxy" => format!(
            "[tproxy family {} addr {} port {}]",
            e.opt_u32(sys::NFTNL_EXPR_TPROXY_FAMILY).unwrap_or(0),
            reg(sys::NFTNL_EXPR_TPROXY_REG_ADDR),
            reg(sys::NFTNL_EXPR_TPROXY_REG_PORT)
        ),
        "range" => format!(
            "[range op{} {} {}-{}]",
            e.opt_u32(sys::NFTNL_EXPR_RANGE_OP).unwrap_or(0),
            reg(sys::NFTNL_EXPR_RANGE_SREG),
            hex(&e.data(sys::NFTNL_EXPR_RANGE_FROM_DATA)),
            hex(&e.data(sys::NFTNL_EXPR_RANGE_TO_DATA))
        ),
        _ => format!("[{name} {}]", e.libnftnl_text().trim()),
    }
}

/// What a batch would leave in a fresh namespace, in canonical text.
pub fn batch_texts(built: &Built) -> ChainTexts {
    let mut out = ChainTexts::new();
    let set_text = |_: &str, _: &str, id: Option<u32>| {
        id.and_then(|id| built.sets.get(&id))
            .map(|elements| elements_text(&mut elements.clone()))
            .unwrap_or_else(|| "{?}".to_owned())
    };
    let data = built.bytes();
    let (new_chain, new_rule) = (
        NFT_TYPE_BASE | libc::NFT_MSG_NEWCHAIN as u16,
        NFT_TYPE_BASE | libc::NFT_MSG_NEWRULE as u16,
    );
    for msg in messages(&data) {
        let ty = msg.message_type();
        if ty != new_chain && ty != new_rule {
            continue;
        }
        let msg = Message::copy(msg.into_inner());
        if ty == new_chain {
            if let Some(c) = ChainInfo::parse(&msg) {
                let entry = out.entry(chain_key(&c.table, &c.name)).or_default();
                if let Some(h) = c.header_text() {
                    entry.insert(0, h);
                }
            }
        } else if let Some((table, chain, text)) = rule_text(&msg, &set_text) {
            out.entry(chain_key(&table, &chain)).or_default().push(text);
        }
    }
    out
}
