//! The nf_tables expressions of one [`Item`], as nft generates them for the same text (checked
//! with `nft --debug=netlink`), so that a ruleset installed over netlink lists like one loaded
//! with `nft -f`.

use super::codec::expr::{REG_1, REG32_01};
use super::codec::{CmpOp, CtKey, Expr, MetaKey, NatType, PayloadBase, Verdict as NftVerdict};
use super::ir::{AddrField, AddrValue, Dir, Gid, Item, PortField, PortValue, Verdict};
use super::prefix::netmask;
use crate::plan::{Family, Protocol};
use nix::libc;

/// `NF_NAT_RANGE_PROTO_SPECIFIED`: nft sets it when a redirect names a port.
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
/// `NF_NAT_RANGE_MAP_IPS`: a NAT to an address.
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
/// `IFNAMSIZ`: nft compares a whole interface name buffer, NUL padded.
const IFNAMSIZ: usize = 16;

/// An address of `family` in network order (IPv4 in the low 32 bits of `v`).
pub fn addr_bytes(family: Family, v: u128) -> Vec<u8> {
    match family {
        Family::V4 => (v as u32).to_be_bytes().to_vec(),
        Family::V6 => v.to_be_bytes().to_vec(),
    }
}

pub fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

/// The `NFPROTO_*` of a family.
pub fn nfproto(f: Family) -> u8 {
    match f {
        Family::V4 => libc::NFPROTO_IPV4 as u8,
        Family::V6 => libc::NFPROTO_IPV6 as u8,
    }
}

/// nft's `inet_proto . inet_service` key: a transport protocol and a port, each field padded to
/// 4 bytes as registers hold them (`meta l4proto . tcp dport`).
pub fn proto_port_key(proto: u8, port: u16) -> Vec<u8> {
    let p = port.to_be_bytes();
    vec![proto, 0, 0, 0, p[0], p[1], 0, 0]
}

/// nft's concatenated type id of [`proto_port_key`], 6 bits per field: inet_proto (12),
/// inet_service (13).
pub const PROTO_PORT_TYPE: u32 = (12 << 6) | 13;

fn cmp_op(negated: bool) -> CmpOp {
    if negated { CmpOp::Neq } else { CmpOp::Eq }
}

fn meta(key: MetaKey) -> Expr {
    Expr::Meta { key, dreg: REG_1 }
}

fn cmp(op: CmpOp, data: impl Into<Vec<u8>>) -> Expr {
    Expr::Cmp {
        sreg: REG_1,
        op,
        data: data.into(),
    }
}

fn bitwise(mask: Vec<u8>, xor: Vec<u8>) -> Expr {
    Expr::Bitwise {
        sreg: REG_1,
        dreg: REG_1,
        len: mask.len() as u32,
        mask,
        xor,
    }
}

fn immediate(data: impl Into<Vec<u8>>) -> Expr {
    Expr::Immediate {
        dreg: REG_1,
        data: data.into(),
    }
}

/// A set the batch creates for a rule: its name and transaction id.
#[derive(Clone, Debug)]
pub struct SetRef {
    pub name: String,
    pub id: u32,
}

/// Appends the expressions of one item; `lookups` yields the sets created for the rule, in
/// the order its items look them up.
pub fn push_item(out: &mut Vec<Expr>, item: &Item, lookups: &mut dyn Iterator<Item = SetRef>) {
    let mut lookup = |negated: bool| {
        let set = lookups.next().expect("set created for the rule");
        Expr::Lookup {
            sreg: REG_1,
            set: set.name,
            set_id: Some(set.id),
            invert: negated,
        }
    };
    match item {
        Item::NfProto(f) => {
            out.push(meta(MetaKey::NfProto));
            out.push(cmp(CmpOp::Eq, [nfproto(*f)]));
        }
        Item::L4Proto(p) => {
            out.push(meta(MetaKey::L4Proto));
            out.push(cmp(CmpOp::Eq, [proto_num(*p)]));
        }
        Item::Iface {
            dir,
            name,
            prefix,
            negated,
        } => {
            out.push(meta(match dir {
                Dir::In => MetaKey::IifName,
                Dir::Out => MetaKey::OifName,
            }));
            let mut data = name.as_bytes().to_vec();
            if !*prefix {
                data.resize(IFNAMSIZ, 0);
            }
            out.push(cmp(cmp_op(*negated), data));
        }
        Item::Addr {
            family,
            field,
            negated,
            value,
        } => {
            let (offset, full) = addr_offset(*family, *field);
            let load = |len: u32| Expr::Payload {
                base: PayloadBase::Network,
                offset,
                len,
                dreg: REG_1,
            };
            let mask = |prefix: u8| addr_bytes(*family, netmask(*family, prefix));
            match value {
                AddrValue::Prefix(net) => {
                    let bytes = match net.network() {
                        std::net::IpAddr::V4(a) => a.octets().to_vec(),
                        std::net::IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    let plen = net.prefix() as usize;
                    if plen > 0 && plen % 8 == 0 {
                        // Whole bytes: nft loads only the prefix bytes.
                        out.push(load((plen / 8) as u32));
                        out.push(cmp(cmp_op(*negated), &bytes[..plen / 8]));
                    } else {
                        out.push(load(full));
                        out.push(bitwise(mask(plen as u8), vec![0; full as usize]));
                        out.push(cmp(cmp_op(*negated), bytes));
                    }
                }
                AddrValue::Range(iv) => {
                    out.push(load(full));
                    out.push(Expr::Range {
                        sreg: REG_1,
                        op: cmp_op(*negated),
                        from: addr_bytes(*family, iv.start),
                        to: addr_bytes(*family, iv.end),
                    });
                }
                AddrValue::Networks { prefix, .. } => {
                    out.push(load(full));
                    if u32::from(*prefix) < full * 8 {
                        out.push(bitwise(mask(*prefix), vec![0; full as usize]));
                    }
                    out.push(lookup(*negated));
                }
            }
        }
        Item::Port {
            proto: _,
            field,
            negated,
            value,
        } => {
            let offset = match field {
                PortField::Sport => 0,
                PortField::Dport => 2,
            };
            match value {
                PortValue::One(p) => {
                    out.push(Expr::Payload {
                        base: PayloadBase::Transport,
                        offset,
                        len: 2,
                        dreg: REG_1,
                    });
                    out.push(cmp(cmp_op(*negated), p.to_be_bytes()));
                }
                PortValue::Set(_) => {
                    // `meta l4proto . tcp dport`: the protocol in register 1, the port in the
                    // next 32-bit register (see `proto_port_key`).
                    out.push(meta(MetaKey::L4Proto));
                    out.push(Expr::Payload {
                        base: PayloadBase::Transport,
                        offset,
                        len: 2,
                        dreg: REG32_01,
                    });
                    out.push(lookup(*negated));
                }
            }
        }
        Item::SkUid { uid, negated } => {
            out.push(meta(MetaKey::SkUid));
            out.push(cmp(cmp_op(*negated), uid.to_ne_bytes()));
        }
        Item::SkGid { gid, negated } => {
            out.push(meta(MetaKey::SkGid));
            // Names were resolved (or refused) before the batch was built; see `Spec::unresolved`.
            let gid = match gid {
                Gid::Id(id) => *id,
                Gid::Name(_) => u32::MAX,
            };
            out.push(cmp(cmp_op(*negated), gid.to_ne_bytes()));
        }
        Item::Mark { value, negated } => {
            out.push(meta(MetaKey::Mark));
            out.push(cmp(cmp_op(*negated), value.to_ne_bytes()));
        }
        Item::CtMark(v) => {
            out.push(ct(CtKey::Mark));
            out.push(cmp(CmpOp::Eq, v.to_ne_bytes()));
        }
        Item::MarkMasked {
            value,
            mask,
            negated,
        } => {
            out.push(meta(MetaKey::Mark));
            out.push(bitwise(mask.to_ne_bytes().to_vec(), vec![0; 4]));
            out.push(cmp(cmp_op(*negated), value.to_ne_bytes()));
        }
        Item::CtMarkMasked { value, mask } => {
            out.push(ct(CtKey::Mark));
            out.push(bitwise(mask.to_ne_bytes().to_vec(), vec![0; 4]));
            out.push(cmp(CmpOp::Eq, value.to_ne_bytes()));
        }
        Item::HasSocketOwner => {
            out.push(meta(MetaKey::SkUid));
            out.push(cmp(CmpOp::Gte, 0u32.to_ne_bytes()));
        }
        Item::AddrInSet { family, field, set } => {
            let (offset, len) = addr_offset(*family, *field);
            out.push(Expr::Payload {
                base: PayloadBase::Network,
                offset,
                len,
                dreg: REG_1,
            });
            // By name: the set is the table's own, declared before the rule (nft also sends
            // the set's transaction id when the batch creates it; the kernel finds it by name).
            out.push(Expr::Lookup {
                sreg: REG_1,
                set: set.clone(),
                set_id: None,
                invert: false,
            });
        }
        Item::SetCtMark { value, mask } => {
            out.push(ct(CtKey::Mark));
            out.push(bitwise(
                (!*mask).to_ne_bytes().to_vec(),
                value.to_ne_bytes().to_vec(),
            ));
            out.push(Expr::CtSet {
                key: CtKey::Mark,
                sreg: REG_1,
            });
        }
        Item::Snat(addr) => {
            let (family, bytes) = match addr {
                std::net::IpAddr::V4(a) => (Family::V4, a.octets().to_vec()),
                std::net::IpAddr::V6(a) => (Family::V6, a.octets().to_vec()),
            };
            out.push(immediate(bytes));
            out.push(Expr::Nat {
                kind: NatType::Snat,
                family: u32::from(nfproto(family)),
                reg_addr_min: Some(REG_1),
                reg_addr_max: None,
                reg_proto_min: None,
                reg_proto_max: None,
                // The kernel sets MAP_IPS for an address and dumps it; sent so that the
                // read-back equals the batch.
                flags: Some(NF_NAT_RANGE_MAP_IPS),
            });
        }
        Item::CtState(mask) => {
            out.push(ct(CtKey::State));
            out.push(bitwise(mask.to_ne_bytes().to_vec(), vec![0; 4]));
            out.push(cmp(CmpOp::Neq, [0; 4]));
        }
        Item::Counter => out.push(Expr::Counter {
            packets: 0,
            bytes: 0,
        }),
        Item::SetMark { value, mask } => {
            if *mask == u32::MAX {
                out.push(immediate(value.to_ne_bytes()));
            } else {
                out.push(meta(MetaKey::Mark));
                out.push(bitwise(
                    (!*mask).to_ne_bytes().to_vec(),
                    value.to_ne_bytes().to_vec(),
                ));
            }
            out.push(meta_set(MetaKey::Mark));
        }
        Item::SaveMark => {
            out.push(meta(MetaKey::Mark));
            out.push(Expr::CtSet {
                key: CtKey::Mark,
                sreg: REG_1,
            });
        }
        Item::RestoreMark => {
            out.push(ct(CtKey::Mark));
            out.push(meta_set(MetaKey::Mark));
        }
        Item::CtZone(z) => {
            // nft's ct zone is a 16-bit host-order integer.
            out.push(immediate(z.to_ne_bytes()));
            out.push(Expr::CtSet {
                key: CtKey::Zone,
                sreg: REG_1,
            });
        }
        Item::Redirect(port) => {
            out.push(immediate(port.to_be_bytes()));
            out.push(Expr::Redir {
                reg_proto_min: Some(REG_1),
                reg_proto_max: None,
                flags: Some(NF_NAT_RANGE_PROTO_SPECIFIED),
            });
        }
        Item::Tproxy { family, port } => {
            out.push(immediate(port.to_be_bytes()));
            out.push(Expr::Tproxy {
                family: family.map_or(libc::NFPROTO_UNSPEC as u32, |f| u32::from(nfproto(f))),
                reg_addr: None,
                reg_port: Some(REG_1),
            });
        }
        Item::Verdict(v) => out.push(Expr::Verdict(match v {
            Verdict::Jump(c) => NftVerdict::Jump((*c).to_owned()),
            Verdict::Return => NftVerdict::Return,
            Verdict::Accept => NftVerdict::Accept,
            Verdict::Drop => NftVerdict::Drop,
        })),
    }
}

/// Where an address field lies in the network header: (offset, length).
fn addr_offset(family: Family, field: AddrField) -> (u32, u32) {
    match (family, field) {
        (Family::V4, AddrField::Saddr) => (12, 4),
        (Family::V4, AddrField::Daddr) => (16, 4),
        (Family::V6, AddrField::Saddr) => (8, 16),
        (Family::V6, AddrField::Daddr) => (24, 16),
    }
}

fn ct(key: CtKey) -> Expr {
    Expr::Ct {
        key,
        direction: None,
        dreg: REG_1,
    }
}

fn meta_set(key: MetaKey) -> Expr {
    Expr::MetaSet { key, sreg: REG_1 }
}
