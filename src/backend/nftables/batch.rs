//! The one netlink batch that makes the kernel hold a [`Spec`] (or delete meshcap's tables),
//! what each of its messages does (for error messages and the expected read-back), and sending
//! it: the kernel commits all of it or none. The messages are the codec's typed values
//! ([`super::codec`]); this module only decides which ones.

use super::codec::msg::kernel_acks_batch_frame;
use super::codec::{
    Batch, Chain, ChainHook, FinishedBatch, Message, MsgType, Object, Rule, Set, SetElem, SetElems,
    Table,
};
use super::encode::{PROTO_PORT_TYPE, SetRef, addr_bytes, proto_num, proto_port_key, push_item};
use super::ir::{AddrValue, Item, NamedSet, PortValue, RuleSpec, Spec, TableSpec};
use super::names::{BaseChain, Hook, TABLES, table_name};
use super::netlink::{kernel_error, netlink_error};
use super::script::AddChain;
use super::socket::NetlinkSocket;
use crate::backend::firewall::BackendError;
use crate::plan::Family;
use nix::libc;
use std::fmt;
use std::rc::Rc;

/// The family of meshcap's tables.
pub const INET: u8 = libc::NFPROTO_INET as u8;
/// nft's data type ids of address set keys: ipv4_addr, ipv6_addr.
const IPV4_ADDR_TYPE: u32 = 7;
const IPV6_ADDR_TYPE: u32 = 8;
/// The first sequence number of a batch (its own range: acknowledgements are matched by it).
const FIRST_SEQ: u32 = 1;

/// Which of meshcap's tables exist, and their chains.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub tables: Vec<String>,
    pub chains: Vec<Chain>,
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
                write!(f, "{prefix}add rule inet {table} {chain} {rule}")
            }
        }
    }
}

/// A batch and what each of its messages does (for error messages and expected read-back).
pub struct Built {
    pub batch: FinishedBatch,
    /// The batch's messages (between begin and end), typed.
    pub messages: Vec<Message>,
    pub whats: Vec<What>,
}

impl Built {
    pub fn bytes(&self) -> &[u8] {
        &self.batch.bytes
    }
}

/// The messages of a batch being built.
#[derive(Default)]
pub struct Builder {
    messages: Vec<Message>,
    whats: Vec<What>,
    next_set_id: u32,
}

/// The hook, priority and type of a base chain as the kernel holds them.
pub fn chain_hook(base: &BaseChain) -> (ChainHook, &'static str) {
    let hooknum = match base.hook {
        Hook::Prerouting => libc::NF_INET_PRE_ROUTING as u32,
        Hook::Output => libc::NF_INET_LOCAL_OUT as u32,
        Hook::Postrouting => libc::NF_INET_POST_ROUTING as u32,
    };
    (
        ChainHook {
            hooknum,
            priority: base.priority,
        },
        base.kind.name(),
    )
}

/// The chain message of a chain of `table` (a base chain with its hook and type).
pub fn chain(table: &str, name: &str, base: Option<&BaseChain>) -> Chain {
    let (hook, chain_type) = match base.map(chain_hook) {
        Some((hook, kind)) => (Some(hook), Some(kind.to_owned())),
        None => (None, None),
    };
    Chain {
        family: INET,
        table: table.to_owned(),
        name: name.to_owned(),
        hook,
        chain_type,
        ..Chain::default()
    }
}

fn table(name: &str) -> Table {
    Table {
        family: INET,
        name: name.to_owned(),
        // nft and nftnl write the (empty) flags.
        flags: Some(0),
        ..Table::default()
    }
}

/// `NLM_F_*` of each kind of request, as nft (and nftnl) send them.
pub mod flags {
    use nix::libc;
    pub const ADD_TABLE: u16 = libc::NLM_F_ACK as u16;
    pub const ADD_CHAIN: u16 = (libc::NLM_F_ACK | libc::NLM_F_CREATE) as u16;
    pub const ADD_RULE: u16 =
        (libc::NLM_F_CREATE | libc::NLM_F_APPEND | libc::NLM_F_EXCL | libc::NLM_F_ACK) as u16;
    pub const ADD_SET: u16 = (libc::NLM_F_APPEND | libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16;
    pub const ADD_SET_ELEMS: u16 = (libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK) as u16;
    pub const DELETE: u16 = libc::NLM_F_ACK as u16;
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Frames the messages as one batch.
    pub fn finish(self) -> Built {
        let mut batch = Batch::new(FIRST_SEQ, kernel_acks_batch_frame());
        for m in &self.messages {
            batch.add(m);
        }
        Built {
            batch: batch.finish(),
            messages: self.messages,
            whats: self.whats,
        }
    }

    /// Adds a message and what it does.
    pub fn add(&mut self, msg_type: MsgType, flags: u16, object: Object, what: What) {
        self.messages.push(Message::new(msg_type, flags, object));
        self.whats.push(what);
    }

    fn text(&mut self, msg_type: MsgType, flags: u16, object: Object, what: String) {
        self.add(msg_type, flags, object, What::Text(what));
    }

    /// Adds an anonymous constant set with `keys` and its elements; returns how rules name it.
    fn set(
        &mut self,
        table: &str,
        key_type: u32,
        key_len: u32,
        keys: Vec<Vec<u8>>,
        what: &What,
    ) -> SetRef {
        self.next_set_id += 1;
        let id = self.next_set_id;
        let name = "__set%d".to_owned();
        let set = Set {
            family: INET,
            table: table.to_owned(),
            name: name.clone(),
            flags: Some((libc::NFT_SET_ANONYMOUS | libc::NFT_SET_CONSTANT) as u32),
            key_type: Some(key_type),
            key_len: Some(key_len),
            id: Some(id),
            desc_size: Some(keys.len() as u32),
            handle: None,
        };
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
        self.add(
            MsgType::NewSet,
            flags::ADD_SET,
            Object::Set(set),
            part(RulePart::Set),
        );
        let elems = SetElems {
            family: INET,
            table: table.to_owned(),
            set: name.clone(),
            set_id: Some(id),
            // nft writes the (empty) flags of every element.
            elements: keys
                .into_iter()
                .map(|key| SetElem {
                    key,
                    flags: Some(0),
                })
                .collect(),
        };
        for msg in elems.split_to_fit() {
            self.add(
                MsgType::NewSetElem,
                flags::ADD_SET_ELEMS,
                Object::SetElems(msg),
                part(RulePart::Elements),
            );
        }
        SetRef { name, id }
    }

    /// Adds the rule `spec` (and first the sets it looks up) to chain `chain` of `table`;
    /// `tail` are expressions after the spec's items (the trace's marking statement).
    pub fn rule(&mut self, table: &'static str, chain: &'static str, spec: &RuleSpec, what: What) {
        self.rule_with(table, chain, spec, &[], what)
    }

    pub fn rule_with(
        &mut self,
        table: &'static str,
        chain: &'static str,
        spec: &RuleSpec,
        tail: &[super::codec::Expr],
        what: What,
    ) {
        // Sets first: a rule can only look up a set the batch already created.
        let mut lookups = Vec::new();
        for item in &spec.items {
            match item {
                Item::Addr {
                    family,
                    value: AddrValue::Networks { starts, .. },
                    ..
                } => {
                    let keys = starts.iter().map(|s| addr_bytes(*family, *s)).collect();
                    let (key_type, key_len) = match family {
                        Family::V4 => (IPV4_ADDR_TYPE, 4),
                        Family::V6 => (IPV6_ADDR_TYPE, 16),
                    };
                    lookups.push(self.set(table, key_type, key_len, keys, &what));
                }
                Item::Port {
                    proto,
                    value: PortValue::Set(ports),
                    ..
                } => {
                    let keys = ports
                        .iter()
                        .map(|p| proto_port_key(proto_num(*proto), *p))
                        .collect();
                    lookups.push(self.set(table, PROTO_PORT_TYPE, 8, keys, &what));
                }
                _ => {}
            }
        }
        let mut lookups = lookups.into_iter();
        let mut exprs = Vec::new();
        for item in &spec.items {
            push_item(&mut exprs, item, &mut lookups);
        }
        exprs.extend_from_slice(tail);
        let rule = Rule {
            family: INET,
            table: table.to_owned(),
            chain: chain.to_owned(),
            exprs,
            ..Rule::default()
        };
        self.add(MsgType::NewRule, flags::ADD_RULE, Object::Rule(rule), what);
    }

    /// Declares a named set (created when absent; an existing one keeps its elements).
    pub fn named_set(&mut self, table: &str, set: &NamedSet) {
        self.next_set_id += 1;
        let (key_type, key_len, kind) = match set.family {
            Family::V4 => (IPV4_ADDR_TYPE, 4, "ipv4_addr"),
            Family::V6 => (IPV6_ADDR_TYPE, 16, "ipv6_addr"),
        };
        self.text(
            MsgType::NewSet,
            flags::ADD_SET,
            Object::Set(Set {
                family: INET,
                table: table.to_owned(),
                name: set.name.clone(),
                flags: Some(0),
                key_type: Some(key_type),
                key_len: Some(key_len),
                id: Some(self.next_set_id),
                desc_size: None,
                handle: None,
            }),
            format!("add set inet {table} {} {{ type {kind} ; }}", set.name),
        );
    }

    pub fn add_table(&mut self, name: &str) {
        self.text(
            MsgType::NewTable,
            flags::ADD_TABLE,
            Object::Table(table(name)),
            format!("add table inet {name}"),
        );
    }

    pub fn add_chain(&mut self, chain: Chain, what: String) {
        self.text(
            MsgType::NewChain,
            flags::ADD_CHAIN,
            Object::Chain(chain),
            what,
        );
    }

    pub fn delete_table(&mut self, name: &str) {
        self.text(
            MsgType::DelTable,
            flags::DELETE,
            Object::Table(table(name)),
            format!("delete table inet {name}"),
        );
    }
}

/// The batch that makes the kernel hold `spec` in meshcap's tables, given what exists:
/// absent tables are added; present ones are flushed and their chains re-created where they
/// differ from `spec` (see below), so the new rules replace the old in the same transaction
/// without the cost of deleting the table; present tables `spec` does not use are deleted.
pub fn build_batch(spec: &Spec, existing: &Existing) -> Built {
    build_batch_in(spec, existing, &TABLES.map(table_name))
}

/// As [`build_batch`], for a spec whose tables are among `tables` (in creation order): present
/// tables of `tables` that the spec does not use are deleted; no other table is touched.
pub fn build_batch_in(spec: &Spec, existing: &Existing, tables: &[&'static str]) -> Built {
    let mut b = Builder::new();
    for &name in tables {
        let want: Option<&TableSpec> = spec.tables.iter().find(|t| t.name == name);
        let exists = existing.tables.iter().any(|t| t == name);
        let Some(want) = want else {
            if exists {
                b.delete_table(name);
            }
            continue;
        };
        b.add_table(name);
        if exists {
            // The flush half of nft's `flush table`: a rule deletion naming only the table
            // removes every rule of every chain in it (and the anonymous sets they use).
            b.text(
                MsgType::DelRule,
                flags::DELETE,
                Object::Rule(Rule {
                    family: INET,
                    table: name.to_owned(),
                    ..Rule::default()
                }),
                format!("flush table inet {name}"),
            );
            // The kernel lists chains in creation order. Keep the existing chains that already
            // stand where the plan wants them (a common prefix: typically the base chains, whose
            // deletion would cost a hook unregistration); delete and re-create the others, so
            // the result lists exactly as a fresh install.
            let old_chains: Vec<&Chain> =
                existing.chains.iter().filter(|c| c.table == name).collect();
            let kept = old_chains
                .iter()
                .zip(&want.chains)
                .take_while(|(old, c)| {
                    let new = chain(name, c.name, c.base.as_ref());
                    c.name == old.name
                        && new.hook == old.hook
                        && (new.hook.is_none() || new.chain_type == old.chain_type)
                })
                .count();
            for old in old_chains.iter().skip(kept) {
                b.text(
                    MsgType::DelChain,
                    flags::DELETE,
                    Object::Chain(chain(name, &old.name, None)),
                    format!("delete chain inet {name} {}", old.name),
                );
            }
        }
        for set in &want.sets {
            b.named_set(name, set);
        }
        for c in &want.chains {
            b.add_chain(
                chain(name, c.name, c.base.as_ref()),
                AddChain(name, c).to_string(),
            );
        }
        for c in &want.chains {
            for r in &c.rules {
                let what = What::Rule {
                    table: name,
                    chain: c.name,
                    rule: Rc::new(r.clone()),
                    part: RulePart::Rule,
                };
                b.rule(name, c.name, r, what);
            }
        }
    }
    b.finish()
}

/// The batch that deletes the tables in `tables`.
pub fn delete_batch(tables: &[String]) -> Built {
    let mut b = Builder::new();
    for name in tables {
        b.delete_table(name);
    }
    b.finish()
}

/// Sends a batch and checks every acknowledgement; the first refusal is reported with the
/// object it concerned.
pub fn send(nl: &mut NetlinkSocket, built: &Built) -> Result<(), BackendError> {
    let seqs = built.batch.seqs.clone();
    let first_msg_seq = built.batch.first_msg_seq;
    nl.send(built.bytes())
        .map_err(|e| netlink_error("sending the nftables batch", &e))?;
    let acks = nl
        .acks(seqs)
        .map_err(|e| netlink_error("reading nftables acknowledgements", &e))?;
    if let Some((seq, code)) = acks.first_refusal {
        let what = seq
            .checked_sub(first_msg_seq)
            .and_then(|i| built.whats.get(i as usize))
            .map(What::to_string)
            .unwrap_or_else(|| "the nftables batch".to_owned());
        return Err(kernel_error(
            format!("the kernel refused `{what}` (the whole batch was rolled back)"),
            code,
        ));
    }
    if acks.unanswered > 0 {
        return Err(BackendError::Netlink {
            what: "the nftables batch".into(),
            reason: format!("no acknowledgement for {} message(s)", acks.unanswered),
        });
    }
    Ok(())
}
