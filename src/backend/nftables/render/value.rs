//! Values as nft prints them, by the kind of field they belong to: protocols, interface
//! names, marks, ids, conntrack bits, addresses, ports; raw bytes in hex.

use crate::backend::address::ntop;
use crate::backend::nftables::codec::CmpOp;
use nix::libc;
use std::net::{Ipv4Addr, Ipv6Addr};

/// How a value of a field is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    NfProto,
    L4Proto,
    IfName,
    /// A 32-bit host-order value nft shows in hex (marks).
    Mark,
    /// A host-order integer nft shows in decimal (uids, gids, zones).
    Decimal,
    CtState,
    CtStatus,
    CtDirection,
    Ipv4,
    Ipv6,
    /// A big-endian integer in decimal (ports).
    BigEndian,
    /// Bytes nft has no type for here: hex.
    Raw,
}

pub(super) fn hex(data: &[u8]) -> String {
    let digits: String = data.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{digits}")
}

pub(super) fn proto_name(p: u8) -> String {
    match i32::from(p) {
        libc::IPPROTO_TCP => "tcp".into(),
        libc::IPPROTO_UDP => "udp".into(),
        libc::IPPROTO_ICMP => "icmp".into(),
        libc::IPPROTO_ICMPV6 => "ipv6-icmp".into(),
        libc::IPPROTO_SCTP => "sctp".into(),
        _ => p.to_string(),
    }
}

pub(super) fn host_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    for (i, v) in data.iter().take(4).enumerate() {
        b[i] = *v;
    }
    u32::from_ne_bytes(b)
}

pub(super) fn big_endian(data: &[u8]) -> u128 {
    data.iter()
        .take(16)
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

pub(super) fn bit_names(value: u32, names: &[(u32, &str)]) -> String {
    let mut rest = value;
    let mut out: Vec<String> = Vec::new();
    for (bit, name) in names {
        if rest & bit != 0 {
            out.push((*name).to_owned());
            rest &= !bit;
        }
    }
    if rest != 0 || out.is_empty() {
        out.push(format!("{rest:#x}"));
    }
    out.join(",")
}

pub(super) const CT_STATES: [(u32, &str); 5] = [
    (1, "invalid"),
    (2, "established"),
    (4, "related"),
    (8, "new"),
    (64, "untracked"),
];

pub(super) const CT_STATUS: [(u32, &str); 6] = [
    (1, "expected"),
    (2, "seen-reply"),
    (4, "assured"),
    (8, "confirmed"),
    (16, "snat"),
    (32, "dnat"),
];

/// A value of `kind` as nft prints it.
pub(super) fn value_text(kind: Kind, data: &[u8]) -> String {
    match kind {
        Kind::NfProto => match data.first().map(|b| i32::from(*b)) {
            Some(libc::NFPROTO_IPV4) => "ipv4".into(),
            Some(libc::NFPROTO_IPV6) => "ipv6".into(),
            _ => hex(data),
        },
        Kind::L4Proto => data.first().map_or_else(|| hex(data), |p| proto_name(*p)),
        Kind::IfName => {
            let end = data.iter().position(|b| *b == 0);
            let name = String::from_utf8_lossy(&data[..end.unwrap_or(data.len())]);
            // A name compared without its NUL is a prefix: iptables' `eth+`, nft's `eth*`.
            let wildcard = if end.is_none() && data.len() < 16 {
                "*"
            } else {
                ""
            };
            format!("\"{name}{wildcard}\"")
        }
        Kind::Mark => format!("{:#010x}", host_u32(data)),
        Kind::Decimal if data.len() == 2 => u16::from_ne_bytes([data[0], data[1]]).to_string(),
        Kind::Decimal if data.len() == 1 => data[0].to_string(),
        Kind::Decimal => host_u32(data).to_string(),
        Kind::CtState => bit_names(host_u32(data), &CT_STATES),
        Kind::CtStatus => bit_names(host_u32(data), &CT_STATUS),
        Kind::CtDirection => match data.first() {
            Some(0) => "original".into(),
            Some(1) => "reply".into(),
            _ => hex(data),
        },
        Kind::Ipv4 if data.len() <= 4 => {
            let mut b = [0u8; 4];
            b[..data.len()].copy_from_slice(data);
            let addr = Ipv4Addr::from(b).to_string();
            if data.len() < 4 {
                format!("{addr}/{}", data.len() * 8)
            } else {
                addr
            }
        }
        Kind::Ipv6 if data.len() <= 16 => {
            let mut b = [0u8; 16];
            b[..data.len()].copy_from_slice(data);
            let addr = ntop(Ipv6Addr::from(b).into());
            if data.len() < 16 {
                format!("{addr}/{}", data.len() * 8)
            } else {
                addr
            }
        }
        Kind::BigEndian if data.len() <= 16 => big_endian(data).to_string(),
        _ => hex(data),
    }
}

/// The number of leading one bits of `mask` when it is a prefix mask (ones, then zeros).
pub(super) fn prefix_len(mask: &[u8]) -> Option<usize> {
    let bits = big_endian(mask);
    let width = mask.len() * 8;
    if mask.is_empty() || width > 128 {
        return None;
    }
    let ones = (bits << (128 - width)).leading_ones() as usize;
    let rebuilt = if ones == 0 {
        0
    } else {
        (u128::MAX << (128 - ones)) >> (128 - width)
    };
    (rebuilt == bits).then_some(ones)
}

pub(super) fn op_text(op: CmpOp) -> String {
    match op {
        CmpOp::Eq => String::new(),
        CmpOp::Neq => "!= ".into(),
        CmpOp::Lt => "< ".into(),
        CmpOp::Lte => "<= ".into(),
        CmpOp::Gt => "> ".into(),
        CmpOp::Gte => ">= ".into(),
        CmpOp::Other(n) => format!("[op {n}] "),
    }
}
