//! The one netlink batch that makes the kernel hold a [`Spec`] (or delete meshcap's tables),
//! what each of its messages does (for error messages and the expected read-back), and sending
//! it: the kernel commits all of it or none.

use super::decode::{ChainInfo, base_info};
use super::encode::{add_item, addr_bytes, proto_num};
use super::expr;
use super::ir::{AddrValue, Item, PortValue, RuleSpec, Spec, TableSpec};
use super::names::{ChainType, Hook, TABLES, table_name};
use super::object::{Payload, Rule, write_request};
use super::script::AddChain;
use super::socket::NetlinkSocket;
use super::{kernel_error, netlink_error};
use crate::backend::BackendError;
use crate::plan::Family;
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::{Set, SetKey};
use nftnl::{Batch, FinalizedBatch, MsgType, NlMsg, ProtoFamily};
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_void};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

/// Which of meshcap's tables exist, and their chains.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub tables: Vec<String>,
    pub chains: Vec<ChainInfo>,
}

/// The flush half of nft's `flush table`: a rule deletion naming only the table removes every
/// rule of every chain in it (and with them the anonymous sets they use).
struct FlushTable {
    rule: Rule,
}

impl FlushTable {
    fn new(table: &CStr) -> FlushTable {
        let mut rule = Rule::new();
        rule.set_u32(sys::NFTNL_RULE_FAMILY, libc::NFPROTO_INET as u32);
        rule.set_str(sys::NFTNL_RULE_TABLE, table);
        FlushTable { rule }
    }
}

// Safety: writes one DELRULE message, far smaller than nft_nlmsg_maxsize.
unsafe impl NlMsg for FlushTable {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        unsafe {
            write_request(
                buf,
                libc::NFT_MSG_DELRULE as u16,
                libc::NLM_F_ACK as u16,
                seq,
                Payload::Rule(&self.rule),
            );
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
                write!(f, "{prefix}add rule inet {table} {chain} {rule}")
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

impl Built {
    /// The batch's pages joined into one buffer, with memcpy (a byte-wise copy is a noticeable
    /// share of a whole install).
    pub fn bytes(&self) -> Vec<u8> {
        let mut data = Vec::new();
        for page in self.batch.iter() {
            data.extend_from_slice(page);
        }
        data
    }
}

struct Builder {
    batch: Batch,
    whats: Vec<What>,
    sets: HashMap<u32, Vec<(Vec<u8>, bool)>>,
    next_set_id: u32,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            batch: Batch::new(),
            whats: Vec::new(),
            sets: HashMap::new(),
            next_set_id: 0,
        }
    }

    fn finish(self) -> Built {
        Built {
            batch: self.batch.finalize(),
            whats: self.whats,
            sets: self.sets,
        }
    }

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

fn nft_chain_type(kind: ChainType) -> nftnl::ChainType {
    match kind {
        ChainType::Filter => nftnl::ChainType::Filter,
        ChainType::Route => nftnl::ChainType::Route,
        ChainType::Nat => nftnl::ChainType::Nat,
    }
}

/// The batch that makes the kernel hold `spec` in meshcap's tables, given what exists:
/// absent tables are added; present ones are flushed and their chains re-created where they
/// differ from `spec` (see below), so the new rules replace the old in the same transaction
/// without the cost of deleting the table; present tables `spec` does not use are deleted.
pub fn build_batch(spec: &Spec, existing: &Existing) -> Built {
    let mut b = Builder::new();
    for name in TABLES.map(table_name) {
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
            b.add(chain, MsgType::Add, AddChain(name, c).to_string());
        }
        for (c, chain) in want.chains.iter().zip(&chains) {
            for r in &c.rules {
                b.rule(&table, chain, (name, c.name), r);
            }
        }
    }
    b.finish()
}

/// The batch that deletes the tables in `tables`.
pub fn delete_batch(tables: &[String]) -> Built {
    let mut b = Builder::new();
    for name in tables {
        let cname = CString::new(name.as_str()).unwrap_or_default();
        let table = nftnl::Table::new(&cname, ProtoFamily::Inet);
        b.add(&table, MsgType::Del, format!("delete table inet {name}"));
    }
    b.finish()
}

/// Sends a batch and checks every acknowledgement; the first refusal is reported with the
/// object it concerned.
pub fn send(nl: &mut NetlinkSocket, built: &Built) -> Result<(), BackendError> {
    let seqs = built.batch.sequence_numbers();
    // With acknowledged batch begin/end messages (kernel 6.10+) the range holds two more.
    let first_msg_seq = if seqs.len() == built.whats.len() + 2 {
        seqs.start + 1
    } else {
        seqs.start
    };
    nl.send(&built.bytes())
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
