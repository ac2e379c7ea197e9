//! The text of the rules a trace names by handle: every rule of every table (any family: the
//! nftables backend's inet tables and iptables-nft's ip and ip6 tables alike), spelled as the
//! backend's read-back spells it (`nft` syntax without counter values; iptables-nft's rules as
//! iptables spells them, when `iptables-nft-save` can tell), looked up by (family, table,
//! handle).

use super::iptables_nft::{self, ChainKey};
use crate::backend::BackendError;
use crate::backend::nftables::batch::INET;
use crate::backend::nftables::dump::{rules, set_elements};
use crate::backend::nftables::render::stateless_rule_text;
use crate::backend::nftables::socket::NetlinkSocket;
use nix::libc;
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

impl RuleBook {
    /// Reads every rule the kernel holds.
    pub fn load(nl: &mut NetlinkSocket) -> Result<RuleBook, BackendError> {
        let mut book = RuleBook::default();
        book.reload(nl)?;
        Ok(book)
    }

    fn reload(&mut self, nl: &mut NetlinkSocket) -> Result<(), BackendError> {
        let all = rules(nl, libc::NFPROTO_UNSPEC as u8)?;
        let mut inet_tables: Vec<String> = all
            .iter()
            .filter(|r| r.family == INET)
            .map(|r| r.table.clone())
            .collect();
        inet_tables.sort();
        inet_tables.dedup();
        let sets = set_elements(nl, &inet_tables)?;
        self.texts.clear();
        let mut ip_chains: HashMap<ChainKey, Vec<u64>> = HashMap::new();
        for rule in &all {
            let family = u32::from(rule.family);
            let handle = rule.handle.unwrap_or(0);
            if rule.family != INET {
                ip_chains
                    .entry((family, rule.table.clone(), rule.chain.clone()))
                    .or_default()
                    .push(handle);
            }
            self.texts.insert(
                (family, rule.table.clone(), handle),
                stateless_rule_text(rule, &sets),
            );
        }
        // iptables-nft's rules as iptables spells them, where its save program can tell.
        self.texts.extend(iptables_nft::lines(&ip_chains));
        Ok(())
    }

    /// Whether any rule is one of ambient's (see [`super::verdict::is_ambient`]).
    pub fn holds_ambient(&self) -> bool {
        self.texts
            .iter()
            .any(|((_, table, _), text)| super::verdict::is_ambient(table, text))
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
