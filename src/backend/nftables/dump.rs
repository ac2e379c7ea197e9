//! Reading tables back from the kernel: which of meshcap's exist, their chains, and their
//! [`Contents`] (chains, rules, and the elements of the sets the rules look up), all decoded by
//! the codec.

use super::batch::INET;
use super::codec::{Chain, Message, MsgType, Object, Rule, SetElem, SetElems, Table};
use super::contents::{Contents, SetKey};
use super::names::is_our_table;
use super::netlink::netlink_error;
use super::socket::NetlinkSocket;
use crate::backend::firewall::BackendError;
use nix::libc;
use std::collections::BTreeMap;

/// Sends `request` as a dump (its objects of one type) and decodes the answer.
pub fn dump(
    nl: &mut NetlinkSocket,
    what: &str,
    msg_type: MsgType,
    request: Object,
) -> Result<Vec<Message>, BackendError> {
    let seq = nl.next_seq();
    let req = Message::new(msg_type, libc::NLM_F_DUMP as u16, request).to_bytes(seq);
    let answers = nl.dump(&req, seq).map_err(|e| netlink_error(what, &e))?;
    Ok(answers
        .iter()
        .filter_map(|bytes| Message::decode(bytes))
        .map(|(_, m)| m)
        .collect())
}

/// Every object of `msg_type` of `family` (`NFPROTO_UNSPEC`: every family).
pub fn dump_all(
    nl: &mut NetlinkSocket,
    what: &str,
    msg_type: MsgType,
    family: u8,
) -> Result<Vec<Object>, BackendError> {
    Ok(dump(nl, what, msg_type, Object::Empty { family })?
        .into_iter()
        .map(|m| m.object)
        .collect())
}

/// The inet tables.
pub fn tables(nl: &mut NetlinkSocket) -> Result<Vec<Table>, BackendError> {
    Ok(
        dump_all(nl, "listing nftables tables", MsgType::GetTable, INET)?
            .into_iter()
            .filter_map(|o| match o {
                Object::Table(t) if t.family == INET => Some(t),
                _ => None,
            })
            .collect(),
    )
}

/// Lists the inet tables among meshcap's (and Istio's) three.
pub fn our_tables(nl: &mut NetlinkSocket) -> Result<Vec<String>, BackendError> {
    Ok(tables(nl)?
        .into_iter()
        .map(|t| t.name)
        .filter(|name| is_our_table(name))
        .collect())
}

/// The inet tables among `names`, in the kernel's order.
pub fn tables_among(nl: &mut NetlinkSocket, names: &[&str]) -> Result<Vec<String>, BackendError> {
    Ok(tables(nl)?
        .into_iter()
        .map(|t| t.name)
        .filter(|name| names.contains(&name.as_str()))
        .collect())
}

/// The chains of the inet tables named in `tables`.
pub fn chains(nl: &mut NetlinkSocket, tables: &[String]) -> Result<Vec<Chain>, BackendError> {
    Ok(
        dump_all(nl, "listing nftables chains", MsgType::GetChain, INET)?
            .into_iter()
            .filter_map(|o| match o {
                Object::Chain(c) if tables.contains(&c.table) => Some(c),
                _ => None,
            })
            .collect(),
    )
}

/// The rules of every table of `family` (`NFPROTO_UNSPEC`: every family).
pub fn rules(nl: &mut NetlinkSocket, family: u8) -> Result<Vec<Rule>, BackendError> {
    Ok(
        dump_all(nl, "listing nftables rules", MsgType::GetRule, family)?
            .into_iter()
            .filter_map(|o| match o {
                Object::Rule(r) => Some(r),
                _ => None,
            })
            .collect(),
    )
}

/// The elements of each set of the inet tables in `tables`.
pub fn set_elements(
    nl: &mut NetlinkSocket,
    tables: &[String],
) -> Result<BTreeMap<SetKey, Vec<SetElem>>, BackendError> {
    let sets: Vec<SetKey> = dump_all(nl, "listing nftables sets", MsgType::GetSet, INET)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Set(s) if tables.contains(&s.table) => Some((s.table, s.name)),
            _ => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    for (table, name) in sets {
        let query = Object::SetElems(SetElems {
            family: INET,
            table: table.clone(),
            set: name.clone(),
            ..SetElems::default()
        });
        let msgs = dump(
            nl,
            &format!("listing the elements of set {name} of inet {table}"),
            MsgType::GetSetElem,
            query,
        )?;
        let elements: Vec<SetElem> = msgs
            .into_iter()
            .filter_map(|m| match m.object {
                Object::SetElems(e) => Some(e.elements),
                _ => None,
            })
            .flatten()
            .collect();
        out.insert((table, name), elements);
    }
    Ok(out)
}

/// What the kernel holds in the inet tables `tables`.
pub fn contents(nl: &mut NetlinkSocket, tables: &[String]) -> Result<Contents, BackendError> {
    if tables.is_empty() {
        return Ok(Contents::default());
    }
    let chains = chains(nl, tables)?;
    contents_with_chains(nl, tables, chains)
}

/// As [`contents`], with the chains already read.
pub fn contents_with_chains(
    nl: &mut NetlinkSocket,
    tables: &[String],
    chains: Vec<Chain>,
) -> Result<Contents, BackendError> {
    let sets = set_elements(nl, tables)?;
    let rules = rules(nl, INET)?
        .into_iter()
        .filter(|r| tables.contains(&r.table))
        .collect();
    Ok(Contents {
        chains,
        rules,
        sets,
    })
}
