//! Reading meshcap's tables back from the kernel: which of them exist, their chains, and every
//! chain's rules (with the elements of the sets they look up) in canonical text.

use super::decode::{ChainInfo, ChainTexts, chain_key, elements_text, rule_text};
use super::names::is_our_table;
use super::netlink_error;
use super::object::{Payload, Set, Table, request};
use super::socket::{Message, NetlinkSocket};
use crate::backend::BackendError;
use nftnl::nftnl_sys::{self as sys, libc};
use std::collections::HashMap;
use std::ffi::CString;

/// Dumps the objects of `msg_type` (an `NFT_MSG_GET*`); `payload` narrows the request.
fn dump(
    nl: &mut NetlinkSocket,
    what: &str,
    msg_type: libc::c_int,
    payload: Payload<'_>,
) -> Result<Vec<Message>, BackendError> {
    let seq = nl.next_seq();
    let req = request(msg_type as u16, libc::NLM_F_DUMP as u16, seq, payload);
    nl.dump(&req, seq).map_err(|e| netlink_error(what, &e))
}

/// Lists the inet tables among meshcap's (and Istio's) three.
pub fn our_tables(nl: &mut NetlinkSocket) -> Result<Vec<String>, BackendError> {
    let msgs = dump(
        nl,
        "listing nftables tables",
        libc::NFT_MSG_GETTABLE,
        Payload::None,
    )?;
    Ok(msgs
        .iter()
        .filter_map(Table::parse)
        .filter(|t| t.u32(sys::NFTNL_TABLE_FAMILY) == libc::NFPROTO_INET as u32)
        .map(|t| t.str(sys::NFTNL_TABLE_NAME))
        .filter(|name| is_our_table(name))
        .collect())
}

/// The chains of the inet tables named in `tables`.
pub fn chains(nl: &mut NetlinkSocket, tables: &[String]) -> Result<Vec<ChainInfo>, BackendError> {
    let msgs = dump(
        nl,
        "listing nftables chains",
        libc::NFT_MSG_GETCHAIN,
        Payload::None,
    )?;
    Ok(msgs
        .iter()
        .filter_map(ChainInfo::parse)
        .filter(|c| tables.contains(&c.table))
        .collect())
}

/// The canonical text of the elements of each set in `tables`, by (table, set name).
pub fn set_texts(
    nl: &mut NetlinkSocket,
    tables: &[String],
) -> Result<HashMap<(String, String), String>, BackendError> {
    let msgs = dump(
        nl,
        "listing nftables sets",
        libc::NFT_MSG_GETSET,
        Payload::None,
    )?;
    let names: Vec<(String, String)> = msgs
        .iter()
        .filter_map(Set::parse)
        .map(|s| (s.str(sys::NFTNL_SET_TABLE), s.str(sys::NFTNL_SET_NAME)))
        .filter(|(table, _)| tables.contains(table))
        .collect();
    let mut sets = HashMap::new();
    for (table, name) in names {
        let mut query = Set::new();
        query.set_str(
            sys::NFTNL_SET_TABLE,
            &CString::new(table.as_str()).unwrap_or_default(),
        );
        query.set_str(
            sys::NFTNL_SET_NAME,
            &CString::new(name.as_str()).unwrap_or_default(),
        );
        let msgs = dump(
            nl,
            &format!("listing the elements of set {name} of inet {table}"),
            libc::NFT_MSG_GETSETELEM,
            Payload::SetElements(&query),
        )?;
        let mut elements: Vec<(Vec<u8>, bool)> = msgs
            .iter()
            .filter_map(Set::parse_elements)
            .flat_map(|s| s.elements())
            .collect();
        sets.insert((table, name), elements_text(&mut elements));
    }
    Ok(sets)
}

/// What the kernel holds in `tables`, in canonical text.
pub fn read_texts(nl: &mut NetlinkSocket, tables: &[String]) -> Result<ChainTexts, BackendError> {
    let mut out = ChainTexts::new();
    if tables.is_empty() {
        return Ok(out);
    }
    for c in chains(nl, tables)? {
        let entry = out.entry(chain_key(&c.table, &c.name)).or_default();
        if let Some(h) = c.header_text() {
            entry.push(h);
        }
    }
    let sets = set_texts(nl, tables)?;
    let msgs = dump(
        nl,
        "listing nftables rules",
        libc::NFT_MSG_GETRULE,
        Payload::None,
    )?;
    let set_text = |table: &str, name: &str, _: Option<u32>| {
        sets.get(&(table.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_else(|| format!("@{name}"))
    };
    for msg in &msgs {
        if let Some((table, chain, text)) = rule_text(msg, &set_text)
            && tables.contains(&table)
        {
            out.entry(chain_key(&table, &chain)).or_default().push(text);
        }
    }
    Ok(out)
}
