//! iptables-nft's rules in iptables' own spelling (`-A ISTIO_REDIRECT -p tcp -j REDIRECT
//! --to-ports 15001`, as `meshcap explain` spells iptables rules): `iptables-nft-save` lists a
//! chain's rules in the kernel's order, so the n-th `-A` line of a chain is the chain's n-th
//! rule in a dump. A chain whose counts differ (changed in between, or not iptables' own) keeps
//! the decoder's expression text.

use crate::backend::iptables::{SavedTables, program, run};
use crate::backend::nftables::encode::nfproto;
use crate::config::IptablesVariant;
use crate::plan::Family;
use std::collections::HashMap;

/// A chain of a table of one family (`NFPROTO_IPV4` or `NFPROTO_IPV6`).
pub type ChainKey = (u32, String, String);

/// The iptables line of each rule handle, for the chains of `handles` (each chain's rule
/// handles in the kernel's order). Without the save program, or when it fails: none.
pub fn lines(handles: &HashMap<ChainKey, Vec<u64>>) -> HashMap<(u32, String, u64), String> {
    let mut out = HashMap::new();
    for family in [Family::V4, Family::V6] {
        let nfproto = u32::from(nfproto(family));
        if !handles.keys().any(|(f, _, _)| *f == nfproto) {
            continue;
        }
        let program = program(family, IptablesVariant::Nft, "save");
        let saved = match run(&program, &[], None) {
            Ok(text) => SavedTables::parse(&text),
            Err(e) => {
                tracing::debug!("{e}: rules keep their expression text");
                continue;
            }
        };
        for ((table, chain), rules) in saved.chains {
            let key = (nfproto, table, chain);
            if let Some(hs) = handles.get(&key)
                && hs.len() == rules.len()
            {
                for (h, line) in hs.iter().zip(rules) {
                    out.insert((nfproto, key.1.clone(), *h), line);
                }
            }
        }
    }
    out
}
