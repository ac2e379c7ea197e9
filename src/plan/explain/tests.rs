use super::*;
use std::collections::BTreeMap;

fn rules(chains: &[(&str, &[&str])]) -> Rules {
    let map: BTreeMap<String, Vec<String>> = chains
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    Rules::parse(&map).unwrap_or_else(|e| panic!("{e}"))
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
    assert_eq!(
        verdict(&r, "dir=out dst=198.51.100.10:80 uid=1000 gid=1000"),
        "captured-outbound 15001"
    );
    assert_eq!(
        verdict(&r, "dir=out dst=198.51.100.10:80 uid=1337"),
        "direct"
    );
    assert_eq!(
        verdict(&r, "dir=out dst=192.0.2.1:8080 uid=1337 oif=lo"),
        "captured-inbound 15006"
    );
    assert_eq!(verdict(&r, "dir=out dst=127.0.0.1:8080 uid=1000"), "direct");
    assert_eq!(
        verdict(
            &r,
            "dir=out dst=192.0.2.1:8080 src=127.0.0.6 uid=1337 oif=lo"
        ),
        "direct"
    );
    assert_eq!(
        verdict(&r, "dir=in dst=192.0.2.1:8080 iif=net0"),
        "captured-inbound 15006"
    );
    assert_eq!(verdict(&r, "dir=in dst=192.0.2.1:15008 iif=net0"), "direct");
    // No IPv6 rules: IPv6 is untouched.
    assert_eq!(verdict(&r, "dir=out dst=[2001:db8::1]:80"), "direct");

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

/// The nftables backend's read-back text of an Istio-like output chain and TPROXY chain.
#[test]
fn nftables_expressions_run_like_the_kernel() {
    let r = rules(&[
        (
            "inet istio-proxy-nat output",
            &[
                "chain type nat hook 3 priority -100",
                "[counter] [jump istio-output]",
            ],
        ),
        (
            "inet istio-proxy-nat istio-output",
            &[
                "[meta load oifname => r1] [cmp eq r1 6c6f0000000000000000000000000000] [meta load skuid => r1] [cmp neq r1 39050000] [counter] [return]",
                "[meta load skuid => r1] [cmp eq r1 39050000] [counter] [return]",
                "[meta load nfproto => r1] [cmp eq r1 02] [payload load 4b @ base1 + 16 => r1] [bitwise r1 = (r1 & ffffff00) ^ 00000000] [cmp eq r1 cb007100] [counter] [return]",
                "[meta load nfproto => r1] [cmp eq r1 02] [meta load l4proto => r1] [payload load 2b @ base2 + 2 => r9] [lookup r1 in {060000003aac0000,060000003aad0000}] [counter] [return]",
                "[meta load nfproto => r1] [cmp eq r1 0a] [payload load 16b @ base1 + 24 => r1] [lookup r1 in {20010db8000100000000000000000000,20010db8000200000000000000000000/end}] [counter] [return]",
                "[counter] [jump istio-redirect]",
            ],
        ),
        (
            "inet istio-proxy-nat istio-redirect",
            &[
                "[meta load l4proto => r1] [cmp eq r1 06] [counter] [immediate r1 3a99] [redir port r1 flags 2]",
            ],
        ),
        (
            "inet istio-proxy-mangle prerouting",
            &[
                "chain type filter hook 0 priority -150",
                "[meta load nfproto => r1] [cmp eq r1 02] [payload load 4b @ base1 + 16 => r1] [cmp neq r1 7f000001] [meta load l4proto => r1] [cmp eq r1 06] [payload load 2b @ base2 + 2 => r1] [cmp eq r1 1f90] [immediate r1 3a9e] [tproxy family 2 addr  port r1] [immediate r1 39050000] [meta set mark <= r1] [counter] [accept]",
            ],
        ),
    ]);
    assert_eq!(
        verdict(&r, "dir=out dst=198.51.100.10:80 uid=1000"),
        "captured-outbound 15001"
    );
    assert_eq!(
        verdict(&r, "dir=out dst=198.51.100.10:80 uid=1337"),
        "direct"
    );
    assert_eq!(verdict(&r, "dir=out dst=127.0.0.1:80 uid=1000"), "direct");
    assert_eq!(verdict(&r, "dir=out dst=203.0.113.9:80 uid=1000"), "direct");
    assert_eq!(
        verdict(&r, "dir=out dst=198.51.100.10:15020 uid=1000"),
        "direct"
    );
    assert_eq!(
        verdict(&r, "dir=out dst=198.51.100.10:15021 uid=1000"),
        "direct"
    );
    assert_eq!(
        verdict(&r, "dir=out dst=198.51.100.10:15022 uid=1000"),
        "captured-outbound 15001"
    );
    assert_eq!(
        verdict(&r, "dir=out dst=[2001:db8:1::9]:80 uid=1"),
        "direct"
    );
    assert_eq!(
        verdict(&r, "dir=out dst=[2001:db8:2::9]:80 uid=1"),
        "captured-outbound 15001"
    );
    let ex = explain(
        &r,
        &"dir=in dst=192.0.2.1:8080 iif=net0".parse().unwrap(),
        &LISTENERS,
    );
    assert_eq!(ex.verdict, Verdict::CapturedInbound(15006));
    assert_eq!(ex.steps[0].effects, ["tproxy to port 15006", "mark 0x539"]);
    assert_eq!(verdict(&r, "dir=in dst=192.0.2.1:9090 iif=net0"), "direct");
}

#[test]
fn unknown_text_is_refused_with_its_place() {
    let mut map = BTreeMap::new();
    map.insert(
        "ipv4 nat OUTPUT".to_string(),
        vec!["-A OUTPUT -m frobnicate --level 3 -j ACCEPT".to_string()],
    );
    let e = Rules::parse(&map).unwrap_err().to_string();
    assert!(
        e.contains("ipv4 nat OUTPUT") && e.contains("--level"),
        "{e}"
    );
    map.clear();
    map.insert(
        "inet t c".to_string(),
        vec!["[meta load l4proto => r1] [quota 5]".to_string()],
    );
    let e = Rules::parse(&map).unwrap_err().to_string();
    assert!(e.contains("quota"), "{e}");
}
