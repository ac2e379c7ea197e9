//! The nftables expressions of one [`Item`], as nft generates them for the same text.

use super::expr;
use super::ir::{AddrField, AddrValue, Dir, Gid, Item, PortField, PortValue, Verdict};
use super::prefix::netmask;
use crate::plan::{Family, Protocol};
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Counter, Immediate, Meta, Payload, Register, TcpHeaderField,
    TransportHeaderField, UdpHeaderField,
};
use nftnl::nftnl_sys::libc;
use std::ffi::CString;

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

fn cmp_op(negated: bool) -> CmpOp {
    if negated { CmpOp::Neq } else { CmpOp::Eq }
}

/// The expressions of one item, as nft generates them for the same text.
pub fn add_item(
    rule: &mut nftnl::Rule,
    item: &Item,
    lookups: &mut impl Iterator<Item = (CString, u32)>,
) {
    match item {
        Item::NfProto(f) => {
            rule.add_expr(&Meta::NfProto);
            let v = match f {
                Family::V4 => libc::NFPROTO_IPV4,
                Family::V6 => libc::NFPROTO_IPV6,
            };
            rule.add_expr(&Cmp::new(CmpOp::Eq, v as u8));
        }
        Item::L4Proto(p) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, proto_num(*p)));
        }
        Item::Iface {
            dir,
            name,
            prefix,
            negated,
        } => {
            rule.add_expr(&match dir {
                Dir::In => Meta::IifName,
                Dir::Out => Meta::OifName,
            });
            let data: Vec<u8> = if *prefix {
                name.as_bytes().to_vec()
            } else {
                // nft compares the whole IFNAMSIZ buffer, NUL padded.
                let mut b = name.as_bytes().to_vec();
                b.resize(libc::IFNAMSIZ, 0);
                b
            };
            rule.add_expr(&Cmp::new(cmp_op(*negated), data.as_slice()));
        }
        Item::Addr {
            family,
            field,
            negated,
            value,
        } => {
            let (full, offset) = match (family, field) {
                (Family::V4, AddrField::Saddr) => (4, 12),
                (Family::V4, AddrField::Daddr) => (4, 16),
                (Family::V6, AddrField::Saddr) => (16, 8),
                (Family::V6, AddrField::Daddr) => (16, 24),
            };
            let load = |len: u32| expr::PayloadLoad {
                base: libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                offset,
                len,
                dreg: expr::REG_1,
            };
            match value {
                AddrValue::Prefix(net) => {
                    let bytes = match net.network() {
                        std::net::IpAddr::V4(a) => a.octets().to_vec(),
                        std::net::IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    let plen = net.prefix() as usize;
                    if plen > 0 && plen % 8 == 0 {
                        // Whole bytes: nft loads only the prefix bytes.
                        rule.add_expr(&load((plen / 8) as u32));
                        rule.add_expr(&Cmp::new(cmp_op(*negated), &bytes[..plen / 8]));
                    } else {
                        let mask = addr_bytes(*family, netmask(*family, plen as u8));
                        let zero = vec![0u8; full as usize];
                        rule.add_expr(&load(full));
                        rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
                        rule.add_expr(&Cmp::new(cmp_op(*negated), bytes.as_slice()));
                    }
                }
                AddrValue::Range(iv) => {
                    rule.add_expr(&load(full));
                    rule.add_expr(&expr::Range {
                        from: addr_bytes(*family, iv.start),
                        to: addr_bytes(*family, iv.end),
                        negated: *negated,
                    });
                }
                AddrValue::Networks { prefix, .. } => {
                    rule.add_expr(&load(full));
                    let plen = *prefix as usize;
                    if plen < full as usize * 8 {
                        let mask = addr_bytes(*family, netmask(*family, *prefix));
                        let zero = vec![0u8; full as usize];
                        rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
                    }
                    let (set_name, set_id) = lookups.next().expect("set created for the rule");
                    rule.add_expr(&expr::Lookup {
                        set_name,
                        set_id,
                        inverted: *negated,
                    });
                }
            }
        }
        Item::Port {
            proto,
            field,
            negated,
            value,
        } => {
            let header = match (proto, field) {
                (Protocol::Tcp, PortField::Dport) => {
                    TransportHeaderField::Tcp(TcpHeaderField::Dport)
                }
                (Protocol::Tcp, PortField::Sport) => {
                    TransportHeaderField::Tcp(TcpHeaderField::Sport)
                }
                (Protocol::Udp, PortField::Dport) => {
                    TransportHeaderField::Udp(UdpHeaderField::Dport)
                }
                (Protocol::Udp, PortField::Sport) => {
                    TransportHeaderField::Udp(UdpHeaderField::Sport)
                }
            };
            match value {
                PortValue::One(p) => {
                    rule.add_expr(&Payload::Transport(header));
                    rule.add_expr(&Cmp::new(cmp_op(*negated), &p.to_be_bytes()[..]));
                }
                PortValue::Set(_) => {
                    // `meta l4proto . tcp dport`: the protocol in register 1, the port in the
                    // next 32-bit register (see `ProtoPortKey`).
                    rule.add_expr(&Meta::L4Proto);
                    rule.add_expr(&expr::PayloadLoad {
                        base: libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
                        offset: match field {
                            PortField::Sport => 0,
                            PortField::Dport => 2,
                        },
                        len: 2,
                        dreg: expr::REG32_01,
                    });
                    let (set_name, set_id) = lookups.next().expect("set created for the rule");
                    rule.add_expr(&expr::Lookup {
                        set_name,
                        set_id,
                        inverted: *negated,
                    });
                }
            }
        }
        Item::SkUid { uid, negated } => {
            rule.add_expr(&Meta::SkUid);
            rule.add_expr(&Cmp::new(cmp_op(*negated), *uid));
        }
        Item::SkGid { gid, negated } => {
            rule.add_expr(&Meta::SkGid);
            // Names were resolved (or refused) before the batch was built; see `Spec::unresolved`.
            let gid = match gid {
                Gid::Id(id) => *id,
                Gid::Name(_) => u32::MAX,
            };
            rule.add_expr(&Cmp::new(cmp_op(*negated), gid));
        }
        Item::Mark { value, negated } => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Cmp::new(cmp_op(*negated), *value));
        }
        Item::CtMark(v) => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Cmp::new(CmpOp::Eq, *v));
        }
        Item::CtState(mask) => {
            rule.add_expr(&Conntrack::State);
            rule.add_expr(&Bitwise::new(*mask, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Item::Counter => rule.add_expr(&Counter),
        Item::SetMark { value, mask } => {
            if *mask == u32::MAX {
                rule.add_expr(&Immediate::new(*value, Register::Reg1));
            } else {
                rule.add_expr(&Meta::Mark { set: false });
                rule.add_expr(&Bitwise::new(!*mask, *value));
            }
            rule.add_expr(&Meta::Mark { set: true });
        }
        Item::SaveMark => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Conntrack::Mark { set: true });
        }
        Item::RestoreMark => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Meta::Mark { set: true });
        }
        Item::CtZone(z) => {
            // nft's ct zone is a 16-bit host-order integer.
            rule.add_expr(&Immediate::new(*z, Register::Reg1));
            rule.add_expr(&expr::CtSet {
                key: libc::NFT_CT_ZONE as u32,
            });
        }
        Item::Redirect(port) => {
            rule.add_expr(&Immediate::new(port.to_be_bytes(), Register::Reg1));
            rule.add_expr(&expr::Redirect);
        }
        Item::Tproxy { family, port } => {
            rule.add_expr(&Immediate::new(port.to_be_bytes(), Register::Reg1));
            let nfproto = match family {
                Some(Family::V4) => libc::NFPROTO_IPV4,
                Some(Family::V6) => libc::NFPROTO_IPV6,
                None => libc::NFPROTO_UNSPEC,
            };
            rule.add_expr(&expr::Tproxy {
                nfproto: nfproto as u32,
            });
        }
        Item::Verdict(v) => rule.add_expr(&match v {
            Verdict::Jump(c) => nftnl::expr::Verdict::Jump {
                chain: CString::new(*c).expect("chain names have no NUL"),
            },
            Verdict::Return => nftnl::expr::Verdict::Return,
            Verdict::Accept => nftnl::expr::Verdict::Accept,
            Verdict::Drop => nftnl::expr::Verdict::Drop,
        }),
    }
}
