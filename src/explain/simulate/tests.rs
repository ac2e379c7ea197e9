use super::*;
use crate::backend::iptables::saved::{SavedRules, typed};
use crate::backend::nftables::Contents;
use crate::backend::nftables::codec::expr::{REG_1, REG32_01};
use crate::backend::nftables::codec::{
    Chain, ChainHook, CmpOp, Expr, MetaKey, PayloadBase, Rule, SetElem, Verdict as NftVerdict,
};
use std::collections::BTreeMap;

fn saved(chains: &[(&str, &[&str])]) -> SavedRules {
    typed(
        &chains
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect(),
    )
}

/// iptables rules from `iptables-save` lines per `ipv4|ipv6 TABLE CHAIN`.
fn rules(chains: &[(&str, &[&str])]) -> Rules {
    Rules::from_iptables(&saved(chains)).unwrap_or_else(|e| panic!("{e}"))
}

const LISTENERS: Listeners = Listeners {
    outbound: 15001,
    inbound: 15006,
    dns: 15053,
};

fn verdict(rules: &Rules, flow: &str) -> String {
    explain(rules, &flow.parse().unwrap(), &LISTENERS)
        .verdict
        .to_string()
}

/// Asserts each flow's verdict; a failure names its flow.
fn assert_verdicts(rules: &Rules, cases: &[(&str, &str)]) {
    for (flow, want) in cases {
        assert_eq!(verdict(rules, flow), *want, "{flow}");
    }
}

/// Istio's default outbound rules (IPv4), as iptables-save prints them.
fn istio_iptables() -> Rules {
    rules(&[
        ("ipv4 nat OUTPUT", &["-A OUTPUT -j ISTIO_OUTPUT"]),
        (
            "ipv4 nat ISTIO_OUTPUT",
            &[
                "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            ],
        ),
        (
            "ipv4 nat ISTIO_REDIRECT",
            &["-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"],
        ),
        (
            "ipv4 nat ISTIO_IN_REDIRECT",
            &["-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"],
        ),
        (
            "ipv4 nat PREROUTING",
            &["-A PREROUTING -p tcp -j ISTIO_INBOUND"],
        ),
        (
            "ipv4 nat ISTIO_INBOUND",
            &[
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            ],
        ),
    ])
}

#[test]
fn iptables_walk_follows_jumps_and_returns() {
    let r = istio_iptables();
    assert_verdicts(
        &r,
        &[
            (
                "dir=out dst=198.51.100.10:80 uid=1000 gid=1000",
                "captured-outbound 15001",
            ),
            ("dir=out dst=198.51.100.10:80 uid=1337", "direct"),
            (
                "dir=out dst=192.0.2.1:8080 uid=1337 oif=lo",
                "captured-inbound 15006",
            ),
            ("dir=out dst=127.0.0.1:8080 uid=1000", "direct"),
            (
                "dir=out dst=192.0.2.1:8080 src=127.0.0.6 uid=1337 oif=lo",
                "direct",
            ),
            (
                "dir=in dst=192.0.2.1:8080 iif=net0",
                "captured-inbound 15006",
            ),
            ("dir=in dst=192.0.2.1:15008 iif=net0", "direct"),
            // No IPv6 rules: IPv6 is untouched.
            ("dir=out dst=[2001:db8::1]:80", "direct"),
        ],
    );

    let ex = explain(
        &r,
        &"dir=out dst=198.51.100.10:80 uid=1000".parse().unwrap(),
        &LISTENERS,
    );
    let path: Vec<String> = ex
        .steps
        .iter()
        .map(|s| format!("{} {} {}", s.chain, s.matched, s.action))
        .collect();
    assert_eq!(
        path,
        [
            "OUTPUT true jump ISTIO_OUTPUT",
            "ISTIO_OUTPUT false ",
            "ISTIO_OUTPUT false ",
            "ISTIO_OUTPUT false ",
            "ISTIO_OUTPUT false ",
            "ISTIO_OUTPUT false ",
            "ISTIO_OUTPUT true jump ISTIO_REDIRECT",
            "ISTIO_REDIRECT true accept",
        ]
    );
    assert_eq!(ex.steps[7].effects, ["redirect to port 15001"]);
}

#[test]
fn marks_zones_tproxy_and_drops() {
    let r = rules(&[
        (
            "ipv4 raw OUTPUT",
            &["-A OUTPUT -p udp -m udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1"],
        ),
        (
            "ipv4 mangle PREROUTING",
            &[
                "-A PREROUTING -m conntrack --ctstate INVALID -j DROP",
                "-A PREROUTING -i lo -p tcp -m mark ! --mark 0x53a -j RETURN",
                "-A PREROUTING -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j MARK --set-xmark 0x539/0xffffffff",
                "-A PREROUTING -p tcp -m mark --mark 0x539 -j ACCEPT",
                "-A PREROUTING ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff",
            ],
        ),
        (
            "ipv4 mangle OUTPUT",
            &[
                "-A OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff",
            ],
        ),
    ]);
    let ex = explain(
        &r,
        &"dir=out proto=udp dst=192.0.2.53:53 uid=1337"
            .parse()
            .unwrap(),
        &LISTENERS,
    );
    assert_eq!(ex.steps[0].effects, ["conntrack zone 1"]);
    assert_eq!(ex.verdict, Verdict::Direct);
    assert_eq!(
        verdict(&r, "dir=in dst=192.0.2.1:8080 iif=net0"),
        "captured-inbound 15006"
    );
    // The proxy's call to the pod's own address is marked in OUTPUT, then TPROXYed on lo.
    assert_eq!(
        verdict(&r, "dir=out dst=192.0.2.1:8080 uid=1337 oif=lo"),
        "captured-inbound 15006"
    );
    assert_eq!(
        verdict(&r, "dir=out dst=192.0.2.1:8080 uid=1000 oif=lo"),
        "direct"
    );
    // A later packet of the TPROXYed connection is marked and accepted; it lands where the
    // connection did.
    let ex = explain(
        &r,
        &"dir=in dst=192.0.2.1:8080 iif=net0 state=established"
            .parse()
            .unwrap(),
        &LISTENERS,
    );
    assert_eq!(ex.verdict, Verdict::CapturedInbound(15006));
    let accepted = ex.steps.iter().find(|s| s.action == "accept").unwrap();
    assert_eq!(accepted.effects, Vec::<String>::new());
    assert!(ex.steps.iter().any(|s| s.effects == ["mark 0x539"]));
    // A drop ends the walk, whatever comes later.
    let r2 = rules(&[
        (
            "ipv4 mangle PREROUTING",
            &["-A PREROUTING -p tcp -m tcp --dport 9 -j ISTIO_DROP"],
        ),
        ("ipv4 mangle ISTIO_DROP", &["-A ISTIO_DROP -j DROP"]),
        (
            "ipv4 nat PREROUTING",
            &["-A PREROUTING -p tcp -j REDIRECT --to-ports 15006"],
        ),
    ]);
    assert_eq!(verdict(&r2, "dir=in dst=192.0.2.1:9 iif=net0"), "dropped");
    assert_eq!(
        verdict(&r2, "dir=in dst=192.0.2.1:9 iif=net0 state=established"),
        "dropped"
    );
    assert_eq!(
        verdict(&r2, "dir=in dst=192.0.2.1:10 iif=net0"),
        "captured-inbound 15006"
    );
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

fn imm(data: &[u8]) -> Expr {
    Expr::Immediate {
        dreg: REG_1,
        data: data.to_vec(),
    }
}

const COUNTER: Expr = Expr::Counter {
    packets: 0,
    bytes: 0,
};

fn verdict_expr(v: NftVerdict) -> Expr {
    Expr::Verdict(v)
}

fn lookup(set: &str) -> Expr {
    Expr::Lookup {
        sreg: REG_1,
        set: set.into(),
        set_id: None,
        invert: false,
    }
}

fn chain(table: &str, name: &str, base: Option<(&str, u32, i32)>) -> Chain {
    Chain {
        family: 1,
        table: table.into(),
        name: name.into(),
        hook: base.map(|(_, hooknum, priority)| ChainHook { hooknum, priority }),
        chain_type: base.map(|(kind, _, _)| kind.to_owned()),
        ..Chain::default()
    }
}

fn rule(table: &str, chain: &str, exprs: Vec<Expr>) -> Rule {
    Rule {
        family: 1,
        table: table.into(),
        chain: chain.into(),
        exprs,
        ..Rule::default()
    }
}

/// Typed nftables rules of an Istio-like output chain and TPROXY chain, as the nftables
/// backend hands them over: a prefix through a mask, a concatenated set, an interval set.
fn istio_nftables() -> Contents {
    let nat = "istio-proxy-nat";
    let mangle = "istio-proxy-mangle";
    let uid = 1337u32.to_ne_bytes();
    let port_key = |p: u16| {
        let b = p.to_be_bytes();
        SetElem {
            key: vec![6, 0, 0, 0, b[0], b[1], 0, 0],
            flags: Some(0),
        }
    };
    let v6 = |text: &str, end: bool| SetElem {
        key: text
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec(),
        flags: Some(u32::from(end)),
    };
    let mut sets = BTreeMap::new();
    sets.insert(
        (nat.to_owned(), "__set0".to_owned()),
        vec![port_key(15020), port_key(15021)],
    );
    sets.insert(
        (nat.to_owned(), "__set1".to_owned()),
        vec![v6("2001:db8:1::", false), v6("2001:db8:2::", true)],
    );
    let mut lo = b"lo".to_vec();
    lo.resize(16, 0);
    Contents {
        chains: vec![
            chain(nat, "output", Some(("nat", 3, -100))),
            chain(nat, "istio-output", None),
            chain(nat, "istio-redirect", None),
            chain(mangle, "prerouting", Some(("filter", 0, -150))),
        ],
        rules: vec![
            rule(
                nat,
                "output",
                vec![
                    COUNTER,
                    verdict_expr(NftVerdict::Jump("istio-output".into())),
                ],
            ),
            rule(
                nat,
                "istio-output",
                vec![
                    meta(MetaKey::OifName),
                    cmp(CmpOp::Eq, &lo),
                    meta(MetaKey::SkUid),
                    cmp(CmpOp::Neq, &uid),
                    COUNTER,
                    verdict_expr(NftVerdict::Return),
                ],
            ),
            rule(
                nat,
                "istio-output",
                vec![
                    meta(MetaKey::SkUid),
                    cmp(CmpOp::Eq, &uid),
                    COUNTER,
                    verdict_expr(NftVerdict::Return),
                ],
            ),
            rule(
                nat,
                "istio-output",
                vec![
                    meta(MetaKey::NfProto),
                    cmp(CmpOp::Eq, &[2]),
                    payload(PayloadBase::Network, 16, 4, REG_1),
                    Expr::Bitwise {
                        sreg: REG_1,
                        dreg: REG_1,
                        len: 4,
                        mask: vec![255, 255, 255, 0],
                        xor: vec![0; 4],
                    },
                    cmp(CmpOp::Eq, &[203, 0, 113, 0]),
                    COUNTER,
                    verdict_expr(NftVerdict::Return),
                ],
            ),
            rule(
                nat,
                "istio-output",
                vec![
                    meta(MetaKey::NfProto),
                    cmp(CmpOp::Eq, &[2]),
                    meta(MetaKey::L4Proto),
                    cmp(CmpOp::Eq, &[6]),
                    meta(MetaKey::L4Proto),
                    payload(PayloadBase::Transport, 2, 2, REG32_01),
                    lookup("__set0"),
                    COUNTER,
                    verdict_expr(NftVerdict::Return),
                ],
            ),
            rule(
                nat,
                "istio-output",
                vec![
                    meta(MetaKey::NfProto),
                    cmp(CmpOp::Eq, &[10]),
                    payload(PayloadBase::Network, 24, 16, REG_1),
                    lookup("__set1"),
                    COUNTER,
                    verdict_expr(NftVerdict::Return),
                ],
            ),
            rule(
                nat,
                "istio-output",
                vec![
                    COUNTER,
                    verdict_expr(NftVerdict::Jump("istio-redirect".into())),
                ],
            ),
            rule(
                nat,
                "istio-redirect",
                vec![
                    meta(MetaKey::L4Proto),
                    cmp(CmpOp::Eq, &[6]),
                    COUNTER,
                    imm(&15001u16.to_be_bytes()),
                    Expr::Redir {
                        reg_proto_min: Some(REG_1),
                        reg_proto_max: None,
                        flags: Some(2),
                    },
                ],
            ),
            rule(
                mangle,
                "prerouting",
                vec![
                    meta(MetaKey::NfProto),
                    cmp(CmpOp::Eq, &[2]),
                    payload(PayloadBase::Network, 16, 4, REG_1),
                    cmp(CmpOp::Neq, &[127, 0, 0, 1]),
                    meta(MetaKey::L4Proto),
                    cmp(CmpOp::Eq, &[6]),
                    payload(PayloadBase::Transport, 2, 2, REG_1),
                    cmp(CmpOp::Eq, &8080u16.to_be_bytes()),
                    imm(&15006u16.to_be_bytes()),
                    Expr::Tproxy {
                        family: 2,
                        reg_addr: None,
                        reg_port: Some(REG_1),
                    },
                    imm(&0x539u32.to_ne_bytes()),
                    Expr::MetaSet {
                        key: MetaKey::Mark,
                        sreg: REG_1,
                    },
                    COUNTER,
                    verdict_expr(NftVerdict::Accept),
                ],
            ),
        ],
        sets,
    }
}

#[test]
fn nftables_expressions_run_like_the_kernel() {
    let r = Rules::from_nftables(&istio_nftables()).unwrap_or_else(|e| panic!("{e}"));
    assert_verdicts(
        &r,
        &[
            (
                "dir=out dst=198.51.100.10:80 uid=1000",
                "captured-outbound 15001",
            ),
            ("dir=out dst=198.51.100.10:80 uid=1337", "direct"),
            ("dir=out dst=127.0.0.1:80 uid=1000", "direct"),
            ("dir=out dst=203.0.113.9:80 uid=1000", "direct"),
            ("dir=out dst=198.51.100.10:15020 uid=1000", "direct"),
            ("dir=out dst=198.51.100.10:15021 uid=1000", "direct"),
            (
                "dir=out dst=198.51.100.10:15022 uid=1000",
                "captured-outbound 15001",
            ),
            ("dir=out dst=[2001:db8:1::9]:80 uid=1", "direct"),
            (
                "dir=out dst=[2001:db8:2::9]:80 uid=1",
                "captured-outbound 15001",
            ),
        ],
    );
    let ex = explain(
        &r,
        &"dir=in dst=192.0.2.1:8080 iif=net0".parse().unwrap(),
        &LISTENERS,
    );
    assert_eq!(ex.verdict, Verdict::CapturedInbound(15006));
    assert_eq!(ex.steps[0].effects, ["tproxy to port 15006", "mark 0x539"]);
    // Each rule is shown in nft syntax.
    assert_eq!(
        ex.steps[0].rule.as_deref(),
        Some(
            "ip daddr != 127.0.0.1 tcp dport 8080 tproxy ip to :15006 meta mark set 0x00000539 \
             counter accept"
        )
    );
    assert_eq!(verdict(&r, "dir=in dst=192.0.2.1:9090 iif=net0"), "direct");
    let ex = explain(
        &r,
        &"dir=out dst=198.51.100.10:15021 uid=1000".parse().unwrap(),
        &LISTENERS,
    );
    let texts: Vec<&str> = ex.steps.iter().filter_map(|s| s.rule.as_deref()).collect();
    assert!(
        texts.contains(&"meta nfproto ipv4 meta l4proto . tcp dport { tcp . 15020, tcp . 15021 } counter return"),
        "{texts:#?}"
    );
    assert_eq!(texts[1], "oifname \"lo\" meta skuid != 1337 counter return");
}

#[test]
fn unknown_rules_are_refused_with_their_place() {
    let e = Rules::from_iptables(&saved(&[(
        "ipv4 nat OUTPUT",
        &["-A OUTPUT -m frobnicate --level 3 -j ACCEPT"],
    )]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("ipv4 nat OUTPUT") && e.contains("--level"),
        "{e}"
    );
    let contents = Contents {
        chains: vec![chain("t", "c", None)],
        rules: vec![rule(
            "t",
            "c",
            vec![
                meta(MetaKey::L4Proto),
                Expr::Unknown {
                    name: "quota".into(),
                    data: vec![],
                },
            ],
        )],
        sets: BTreeMap::new(),
    };
    let e = Rules::from_nftables(&contents).unwrap_err().to_string();
    assert!(e.contains("inet t c") && e.contains("quota"), "{e}");
}
