//! The elements of the node's probe sets (`istio-inpod-probes-v4`/`-v6` in `inet
//! istio-ambient-nat`) over netlink: the agent adds each enrolled pod's addresses and removes
//! them at DEL, one small batch each. Adding an address that is there and removing one that is
//! not both succeed, so enrolment and its undo can be repeated.

use super::super::plan::Table;
use super::names::table_name;
use crate::backend::BackendError;
use crate::backend::nftables::batch::{Builder, INET, What, flags, send};
use crate::backend::nftables::codec::{MsgType, Object, SetElem, SetElems};
use crate::backend::nftables::{dump, open};
use nix::libc;
use std::net::IpAddr;

fn elems(set: &str, addr: IpAddr) -> SetElems {
    let key = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    SetElems {
        family: INET,
        table: table_name(Table::Nat).to_owned(),
        set: set.to_owned(),
        set_id: None,
        elements: vec![SetElem { key, flags: None }],
    }
}

fn change(
    msg_type: MsgType,
    flags: u16,
    set: &str,
    addr: IpAddr,
    verb: &str,
) -> Result<(), BackendError> {
    let mut b = Builder::new();
    let what = format!(
        "{verb} element inet {} {set} {{ {addr} }}",
        table_name(Table::Nat)
    );
    b.add(
        msg_type,
        flags,
        Object::SetElems(elems(set, addr)),
        What::Text(what),
    );
    send(&mut open()?, &b.finish())
}

/// Adds `addr` to the set (already there: fine).
pub fn add(set: &str, addr: IpAddr) -> Result<(), BackendError> {
    // Without NLM_F_EXCL: an element that exists is not an error.
    let create = (libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16;
    change(MsgType::NewSetElem, create, set, addr, "add")
}

/// Removes `addr` from the set (absent, or no set: fine).
pub fn del(set: &str, addr: IpAddr) -> Result<(), BackendError> {
    match change(MsgType::DelSetElem, flags::DELETE, set, addr, "delete") {
        Err(BackendError::Netlink { reason, .. })
            if reason.starts_with(&std::io::Error::from_raw_os_error(libc::ENOENT).to_string()) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Whether `addr` is in the set.
pub fn contains(set: &str, addr: IpAddr) -> Result<bool, BackendError> {
    let table = table_name(Table::Nat).to_owned();
    let mut nl = open()?;
    let sets = dump::set_elements(&mut nl, std::slice::from_ref(&table))?;
    let want = elems(set, addr).elements.remove(0).key;
    Ok(sets
        .get(&(table, set.to_owned()))
        .is_some_and(|e| e.iter().any(|e| e.key == want)))
}
