//! The text of the rules a trace names by handle: every rule of every table (any family: the
//! nftables backend's inet tables and iptables-nft's ip and ip6 tables alike), spelled as the
//! backend's read-back spells it (iptables-nft's rules as iptables spells them, when
//! `iptables-nft-save` can tell), looked up by (family, table, handle).

use super::super::decode::rule_text;
use super::super::dump::set_texts;
use super::super::netlink_error;
use super::super::object::Rule;
use super::super::socket::{Message, NetlinkSocket};
use super::iptables_nft::{self, ChainKey};
use crate::backend::BackendError;
use nftnl::nftnl_sys::{self as sys, libc};
use std::collections::{HashMap, HashSet};

/// Where a rule lives: table family, table name, handle.
type Key = (u32, String, u64);

/// Rule texts by location, re-read when a trace names a rule added since.
#[derive(Default)]
pub struct RuleBook {
    texts: HashMap<Key, String>,
    /// Rules looked for after a re-read and still missing (not re-read for again).
    missing: HashSet<Key>,
}

/// Dumps `msg_type` objects of every family.
fn dump_all(
    nl: &mut NetlinkSocket,
    msg_type: i32,
    what: &str,
) -> Result<Vec<Message>, BackendError> {
    let seq = nl.next_seq();
    // A bare nfnetlink header: far below this.
    let mut words = vec![0u32; 16];
    let len = unsafe {
        let hdr = sys::nftnl_nlmsg_build_hdr(
            words.as_mut_ptr().cast(),
            msg_type as u16,
            libc::NFPROTO_UNSPEC as u16,
            libc::NLM_F_DUMP as u16,
            seq,
        );
        (*hdr).nlmsg_len as usize
    };
    nl.dump(&Message::from_words(words, len), seq)
        .map_err(|e| netlink_error(what, &e))
}

impl RuleBook {
    /// Reads every rule the kernel holds.
    pub fn load(nl: &mut NetlinkSocket) -> Result<RuleBook, BackendError> {
        let mut book = RuleBook::default();
        book.reload(nl)?;
        Ok(book)
    }

    fn reload(&mut self, nl: &mut NetlinkSocket) -> Result<(), BackendError> {
        let msgs = dump_all(nl, libc::NFT_MSG_GETRULE, "listing nftables rules")?;
        let inet = libc::NFPROTO_INET as u32;
        let mut inet_tables: Vec<String> = msgs
            .iter()
            .filter_map(Rule::parse)
            .filter(|r| r.u32(sys::NFTNL_RULE_FAMILY) == inet)
            .map(|r| r.str(sys::NFTNL_RULE_TABLE))
            .collect();
        inet_tables.sort();
        inet_tables.dedup();
        let sets = set_texts(nl, &inet_tables)?;
        self.texts.clear();
        let mut ip_chains: HashMap<ChainKey, Vec<u64>> = HashMap::new();
        for msg in &msgs {
            let Some(rule) = Rule::parse(msg) else {
                continue;
            };
            let family = rule.u32(sys::NFTNL_RULE_FAMILY);
            let set_text = |table: &str, name: &str, _: Option<u32>| {
                let known = (family == inet)
                    .then(|| sets.get(&(table.to_owned(), name.to_owned())))
                    .flatten();
                known.cloned().unwrap_or_else(|| format!("@{name}"))
            };
            if let Some((table, chain, text)) = rule_text(msg, &set_text) {
                if family != inet {
                    ip_chains
                        .entry((family, table.clone(), chain))
                        .or_default()
                        .push(rule.handle());
                }
                self.texts.insert((family, table, rule.handle()), text);
            }
        }
        // iptables-nft's rules as iptables spells them, where its save program can tell.
        self.texts.extend(iptables_nft::lines(&ip_chains));
        Ok(())
    }

    /// The text of a rule; a rule not seen yet makes it read the rules again, once.
    pub fn text(
        &mut self,
        nl: &mut NetlinkSocket,
        family: u32,
        table: &str,
        handle: u64,
    ) -> String {
        let key = (family, table.to_owned(), handle);
        if !self.texts.contains_key(&key) && !self.missing.contains(&key) {
            if let Err(e) = self.reload(nl) {
                tracing::warn!("re-reading the rules: {e}");
            }
            if !self.texts.contains_key(&key) {
                self.missing.insert(key.clone());
            }
        }
        self.texts
            .get(&key)
            .cloned()
            .unwrap_or_else(|| "(rule no longer in the kernel)".to_owned())
    }
}
