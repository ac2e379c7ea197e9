//! What a register holds while a rule is read ([`Val`]): a packet or socket field by its nft
//! name (`meta skuid`, `ct mark`, `ip daddr`, `tcp dport`), a constant, or a masked field; and
//! the register numbering it is read by.

use super::value::{Kind, hex, value_text};
use crate::backend::nftables::codec::expr::{REG_1, REG32_00};
use crate::backend::nftables::codec::{CtKey, MetaKey, PayloadBase};
use nix::libc;

/// What a register holds.
#[derive(Clone, Debug)]
pub(super) enum Val {
    /// A packet or socket property: its nft name, how its values read, its length in bytes,
    /// and (for a header field) the layer it was loaded from and, for a field loaded in part,
    /// the field's whole length (nft's whole-byte prefix match).
    Field {
        name: String,
        kind: Kind,
        len: usize,
        layer: Option<PayloadBase>,
        full: usize,
    },
    /// A constant (`immediate`).
    Imm(Vec<u8>),
    /// `(field & mask) ^ xor`.
    Masked {
        of: Box<Val>,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
}

impl Val {
    pub(super) fn len(&self) -> usize {
        match self {
            Val::Field { len, .. } => *len,
            Val::Imm(d) => d.len(),
            Val::Masked { mask, .. } => mask.len(),
        }
    }

    pub(super) fn kind(&self) -> Kind {
        match self {
            Val::Field { kind, .. } => *kind,
            Val::Imm(_) => Kind::Raw,
            Val::Masked { of, .. } => of.kind(),
        }
    }

    /// The header layer the value was loaded from, if any.
    pub(super) fn layer(&self) -> Option<PayloadBase> {
        match self {
            Val::Field { layer, .. } => *layer,
            Val::Masked { of, .. } => of.layer(),
            Val::Imm(_) => None,
        }
    }

    pub(super) fn text(&self) -> String {
        match self {
            Val::Field { name, .. } => name.clone(),
            Val::Imm(d) => hex(d),
            Val::Masked { of, mask, xor } => masked_text(of, mask, xor),
        }
    }
}

/// 4-byte registers: register 1 is 8 to 11, 2 is 12 to 15, …
pub(super) fn reg32(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some(((reg - REG_1) * 4) as usize),
        8..=23 => Some((reg - REG32_00) as usize),
        _ => None,
    }
}

pub(super) fn words(len: usize) -> usize {
    len.div_ceil(4).max(1)
}

/// nft's name of a meta key; `iifname` and the like are unqualified.
pub(super) fn meta_field(key: MetaKey) -> (String, Kind, usize) {
    let (name, kind, len) = match key {
        MetaKey::NfProto => ("meta nfproto", Kind::NfProto, 1),
        MetaKey::L4Proto => ("meta l4proto", Kind::L4Proto, 1),
        MetaKey::IifName => ("iifname", Kind::IfName, 16),
        MetaKey::OifName => ("oifname", Kind::IfName, 16),
        MetaKey::Iif => ("iif", Kind::Decimal, 4),
        MetaKey::Oif => ("oif", Kind::Decimal, 4),
        MetaKey::Mark => ("meta mark", Kind::Mark, 4),
        MetaKey::SkUid => ("meta skuid", Kind::Decimal, 4),
        MetaKey::SkGid => ("meta skgid", Kind::Decimal, 4),
        MetaKey::NfTrace => ("meta nftrace", Kind::Decimal, 1),
        MetaKey::Other(n) => return (format!("[meta key {n}]"), Kind::Raw, 4),
    };
    (name.to_owned(), kind, len)
}

pub(super) fn ct_field(key: CtKey, direction: Option<u8>) -> (String, Kind, usize) {
    let (name, kind, len) = match key {
        CtKey::State => ("state", Kind::CtState, 4),
        CtKey::Status => ("status", Kind::CtStatus, 4),
        CtKey::Direction => ("direction", Kind::CtDirection, 1),
        CtKey::Mark => ("mark", Kind::Mark, 4),
        CtKey::Zone => ("zone", Kind::Decimal, 2),
        CtKey::Other(n) => return (format!("[ct key {n}]"), Kind::Raw, 4),
    };
    let dir = match direction {
        None => "",
        Some(0) => "original ",
        Some(_) => "reply ",
    };
    (format!("ct {dir}{name}"), kind, len)
}

/// The protocols the rule has established so far (nft's protocol context).
#[derive(Default)]
pub(super) struct Context {
    pub(super) nfproto: Option<u8>,
    pub(super) l4proto: Option<u8>,
}

/// A header field by nft's name: (name, kind, the field's whole length).
pub(super) fn payload_field(
    ctx: &Context,
    base: PayloadBase,
    offset: u32,
    len: u32,
) -> Option<(String, Kind, usize)> {
    let nf = ctx.nfproto.map(i32::from);
    let l4 = ctx.l4proto.map(i32::from);
    let (proto, field, kind, full) = match (base, nf, l4, offset) {
        (PayloadBase::Network, Some(libc::NFPROTO_IPV4), _, 12) => ("ip", "saddr", Kind::Ipv4, 4),
        (PayloadBase::Network, Some(libc::NFPROTO_IPV4), _, 16) => ("ip", "daddr", Kind::Ipv4, 4),
        (PayloadBase::Network, Some(libc::NFPROTO_IPV4), _, 9) => {
            ("ip", "protocol", Kind::L4Proto, 1)
        }
        (PayloadBase::Network, Some(libc::NFPROTO_IPV6), _, 8) => ("ip6", "saddr", Kind::Ipv6, 16),
        (PayloadBase::Network, Some(libc::NFPROTO_IPV6), _, 24) => ("ip6", "daddr", Kind::Ipv6, 16),
        (PayloadBase::Network, Some(libc::NFPROTO_IPV6), _, 6) => {
            ("ip6", "nexthdr", Kind::L4Proto, 1)
        }
        (PayloadBase::Transport, _, Some(libc::IPPROTO_TCP), 0) => {
            ("tcp", "sport", Kind::BigEndian, 2)
        }
        (PayloadBase::Transport, _, Some(libc::IPPROTO_TCP), 2) => {
            ("tcp", "dport", Kind::BigEndian, 2)
        }
        (PayloadBase::Transport, _, Some(libc::IPPROTO_UDP), 0) => {
            ("udp", "sport", Kind::BigEndian, 2)
        }
        (PayloadBase::Transport, _, Some(libc::IPPROTO_UDP), 2) => {
            ("udp", "dport", Kind::BigEndian, 2)
        }
        (PayloadBase::Transport, _, _, 0) => ("th", "sport", Kind::BigEndian, 2),
        (PayloadBase::Transport, _, _, 2) => ("th", "dport", Kind::BigEndian, 2),
        _ => return None,
    };
    // A whole field, or (addresses) a whole-byte prefix of one.
    let fits = len as usize == full
        || (matches!(kind, Kind::Ipv4 | Kind::Ipv6) && (len as usize) < full && len > 0);
    fits.then(|| (format!("{proto} {field}"), kind, full))
}

/// `@nh,128,32`: a header field nft has no name for here.
pub(super) fn raw_payload(base: PayloadBase, offset: u32, len: u32) -> String {
    let base = match base {
        PayloadBase::LinkLayer => "ll".to_owned(),
        PayloadBase::Network => "nh".to_owned(),
        PayloadBase::Transport => "th".to_owned(),
        PayloadBase::Other(n) => format!("base{n}"),
    };
    format!("@{base},{},{}", offset * 8, len * 8)
}

/// `(of & mask) ^ xor` as nft simplifies it: an xor of bits the mask clears is an or, and an
/// all-ones mask or a zero xor is left out.
pub(super) fn masked_text(of: &Val, mask: &[u8], xor: &[u8]) -> String {
    let kind = of.kind();
    let ored: Vec<u8> = xor.iter().zip(mask).map(|(x, m)| x & !m).collect();
    let is_or = ored == xor;
    let mask: Vec<u8> = if is_or {
        mask.iter().zip(xor).map(|(m, x)| m | x).collect()
    } else {
        mask.to_vec()
    };
    let mut out = of.text();
    if mask.iter().any(|b| *b != 0xff) {
        out.push_str(&format!(" & {}", value_text(kind, &mask)));
    }
    if xor.iter().any(|b| *b != 0) {
        out.push_str(&format!(
            " {} {}",
            if is_or { "|" } else { "^" },
            value_text(kind, xor)
        ));
    }
    out
}
