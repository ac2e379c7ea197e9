use super::chain::priority_text;
use super::*;
use crate::backend::nftables::codec::expr::{REG_1, REG32_01};
use crate::backend::nftables::codec::{CtKey, MetaKey};

fn rule(exprs: Vec<Expr>) -> Rule {
    Rule {
        table: "t".into(),
        chain: "c".into(),
        exprs,
        ..Rule::default()
    }
}

fn meta(key: MetaKey) -> Expr {
    Expr::Meta { key, dreg: REG_1 }
}

fn cmp(op: CmpOp, data: &[u8]) -> Expr {
    Expr::Cmp {
        sreg: REG_1,
        op,
        data: data.to_vec(),
    }
}

fn payload(base: PayloadBase, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::Payload {
        base,
        offset,
        len,
        dreg,
    }
}

fn counter() -> Expr {
    Expr::Counter {
        packets: 0,
        bytes: 0,
    }
}

#[test]
fn matches_and_statements_read_as_nft_lists_them() {
    let r = rule(vec![
        meta(MetaKey::OifName),
        cmp(CmpOp::Eq, b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
        meta(MetaKey::SkUid),
        cmp(CmpOp::Neq, &1337u32.to_ne_bytes()),
        counter(),
        Expr::Verdict(Verdict::Return),
    ]);
    assert_eq!(
        rule_text(&r, &Sets::new()),
        "oifname \"lo\" meta skuid != 1337 counter packets 0 bytes 0 return"
    );
    let r = rule(vec![
        meta(MetaKey::L4Proto),
        cmp(CmpOp::Eq, &[6]),
        counter(),
        Expr::Immediate {
            dreg: REG_1,
            data: 15001u16.to_be_bytes().to_vec(),
        },
        Expr::Redir {
            reg_proto_min: Some(REG_1),
            reg_proto_max: None,
            flags: Some(2),
        },
    ]);
    assert_eq!(
        rule_text(&r, &Sets::new()),
        "meta l4proto tcp counter packets 0 bytes 0 redirect to :15001"
    );
}

#[test]
fn protocol_guards_go_where_a_header_field_shows() {
    let r = rule(vec![
        meta(MetaKey::NfProto),
        cmp(CmpOp::Eq, &[2]),
        payload(PayloadBase::Network, 16, 4, REG_1),
        cmp(CmpOp::Neq, &[127, 0, 0, 1]),
        meta(MetaKey::L4Proto),
        cmp(CmpOp::Eq, &[6]),
        payload(PayloadBase::Transport, 2, 2, REG_1),
        cmp(CmpOp::Neq, &15008u16.to_be_bytes()),
    ]);
    assert_eq!(
        rule_text(&r, &Sets::new()),
        "ip daddr != 127.0.0.1 tcp dport != 15008"
    );
    // A guard with no field after it stays.
    let r = rule(vec![meta(MetaKey::NfProto), cmp(CmpOp::Eq, &[10])]);
    assert_eq!(rule_text(&r, &Sets::new()), "meta nfproto ipv6");
}

#[test]
fn sets_masks_and_prefixes() {
    let mut sets = Sets::new();
    let key = |p: u16| {
        let b = p.to_be_bytes();
        SetElem {
            key: vec![6, 0, 0, 0, b[0], b[1], 0, 0],
            flags: Some(0),
        }
    };
    sets.insert(("t".into(), "__set0".into()), vec![key(9001), key(80)]);
    let r = rule(vec![
        meta(MetaKey::L4Proto),
        cmp(CmpOp::Eq, &[6]),
        meta(MetaKey::L4Proto),
        payload(PayloadBase::Transport, 2, 2, REG32_01),
        Expr::Lookup {
            sreg: REG_1,
            set: "__set0".into(),
            set_id: None,
            invert: true,
        },
    ]);
    assert_eq!(
        rule_text(&r, &sets),
        "meta l4proto . tcp dport != { tcp . 9001, tcp . 80 }"
    );
    let r = rule(vec![
        meta(MetaKey::NfProto),
        cmp(CmpOp::Eq, &[2]),
        payload(PayloadBase::Network, 16, 4, REG_1),
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            len: 4,
            mask: vec![255, 240, 0, 0],
            xor: vec![0; 4],
        },
        cmp(CmpOp::Eq, &[172, 16, 0, 0]),
    ]);
    assert_eq!(rule_text(&r, &sets), "ip daddr 172.16.0.0/12");
    let r = rule(vec![
        meta(MetaKey::Mark),
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            len: 4,
            mask: (!0x100u32).to_ne_bytes().to_vec(),
            xor: 0x100u32.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: REG_1,
        },
        Expr::Ct {
            key: CtKey::State,
            direction: None,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            len: 4,
            mask: 6u32.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp(CmpOp::Neq, &[0; 4]),
    ]);
    assert_eq!(
        rule_text(&r, &sets),
        "meta mark set meta mark | 0x00000100 ct state established,related"
    );
}

#[test]
fn what_it_does_not_recognise_is_shown_not_dropped() {
    let r = rule(vec![
        meta(MetaKey::L4Proto),
        Expr::Unknown {
            name: "quota".into(),
            data: vec![],
        },
        cmp(CmpOp::Eq, &[17]),
        Expr::Cmp {
            sreg: 3,
            op: CmpOp::Eq,
            data: vec![1],
        },
    ]);
    let text = rule_text(&r, &Sets::new());
    assert!(text.starts_with("[quota ] meta l4proto udp [Cmp"), "{text}");
}

#[test]
fn priorities_by_name_where_nft_names_them() {
    assert_eq!(priority_text(0, -300), "raw");
    assert_eq!(priority_text(3, -150), "mangle");
    assert_eq!(priority_text(0, -100), "dstnat");
    assert_eq!(priority_text(3, -100), "-100");
    assert_eq!(priority_text(3, -145), "mangle + 5");
    assert_eq!(priority_text(3, -350), "-350");
}

#[test]
fn nat_reads_as_nft_lists_it() {
    let snat = |addr: Vec<u8>, family: i32, port: Option<u16>| {
        let mut exprs = vec![Expr::Immediate {
            dreg: REG_1,
            data: addr,
        }];
        if let Some(p) = port {
            exprs.push(Expr::Immediate {
                dreg: 2,
                data: p.to_be_bytes().to_vec(),
            });
        }
        exprs.push(Expr::Nat {
            kind: crate::backend::nftables::codec::NatType::Snat,
            family: family as u32,
            reg_addr_min: Some(REG_1),
            reg_addr_max: None,
            reg_proto_min: port.map(|_| 2),
            reg_proto_max: None,
            flags: Some(if port.is_some() { 3 } else { 1 }),
        });
        rule_text(&rule(exprs), &Sets::new())
    };
    assert_eq!(
        snat(vec![169, 254, 7, 127], libc::NFPROTO_IPV4, None),
        "snat ip to 169.254.7.127"
    );
    let v6: std::net::Ipv6Addr = "fd16::1".parse().unwrap();
    assert_eq!(
        snat(v6.octets().to_vec(), libc::NFPROTO_IPV6, None),
        "snat ip6 to fd16::1"
    );
    assert_eq!(
        snat(v6.octets().to_vec(), libc::NFPROTO_IPV6, Some(80)),
        "snat ip6 to [fd16::1]:80"
    );
}
