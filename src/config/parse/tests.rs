use super::*;
use crate::cli::Inputs;
use crate::config::types::{DnsCapture, InboundPorts, InterceptMode, OutboundCidrs, OwnerGroups};

/// A host with fixed facts.
struct FakeHost {
    ipv6: Option<bool>,
    nameservers: Vec<String>,
}

impl HostFacts for FakeHost {
    fn pod_is_ipv6(&self, _dual_stack: bool) -> Result<Option<bool>, String> {
        Ok(self.ipv6)
    }
    fn resolv_conf_nameservers(&self) -> Result<Vec<String>, String> {
        Ok(self.nameservers.clone())
    }
    fn uid_of(&self, user: &str) -> Option<u32> {
        (user == "envoy").then_some(101)
    }
}

const HOST: FakeHost = FakeHost {
    ipv6: Some(false),
    nameservers: Vec::new(),
};

fn parse_env(args: &[&str], env: &[(&str, &str)], host: &FakeHost) -> Result<Config, ConfigError> {
    let argv = std::iter::once("meshcap").chain(args.iter().copied());
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let inputs = Inputs::parse_from(argv, env).expect("clap accepts the flags");
    Config::from_inputs(&inputs, host)
}

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    parse_env(args, &[], &HOST)
}

#[test]
fn the_quoted_istio_init_invocation_parses() {
    let cfg = parse(&[
        "-p", "15001", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "9080,", "-d", "",
    ])
    .unwrap();
    let c = cfg.capture;
    assert_eq!(c.proxy_port, 15001);
    assert_eq!(c.proxy_uids, vec![1337]);
    assert_eq!(c.proxy_gids, vec![1337], "gid defaults to the uid value");
    assert_eq!(c.mode, InterceptMode::Redirect);
    assert_eq!(c.outbound_cidrs, OutboundCidrs::All);
    assert!(c.outbound_cidrs_exclude.is_empty());
    assert_eq!(c.inbound_ports, InboundPorts::Only(vec![9080]));
    assert_eq!(
        (c.inbound_capture_port, c.inbound_tunnel_port),
        (15006, 15008)
    );
    assert_eq!((c.tproxy_mark, c.tproxy_route_table), (1337, 133));
    assert_eq!(c.owner_groups, OwnerGroups::AllExcept(vec![]));
    assert!(!c.ipv6 && c.dns.is_none());
}

#[test]
fn lists_accept_istio_forms() {
    assert_eq!(split_list(""), Vec::<&str>::new());
    assert_eq!(split_list(",,"), Vec::<&str>::new());
    assert_eq!(split_list(" 80 , ,443,"), vec!["80", "443"]);
    let c = parse(&["-b", "*", "-d", "15090, 15021,,15020,"])
        .unwrap()
        .capture;
    assert_eq!(
        c.inbound_ports,
        InboundPorts::All {
            except: vec![15090, 15021, 15020]
        }
    );
    let c = parse(&["-b", "", "-d", "1,2"]).unwrap().capture;
    assert_eq!(c.inbound_ports, InboundPorts::None);
    // -d is ignored unless -b is '*', as in Istio.
    let c = parse(&["-b", "80", "-d", "1,2"]).unwrap().capture;
    assert_eq!(c.inbound_ports, InboundPorts::Only(vec![80]));
}

#[test]
fn a_later_flag_overrides_an_earlier_one() {
    let c = parse(&["-u", "1337", "-u", "3,4", "-g", "1,2"])
        .unwrap()
        .capture;
    assert_eq!(c.proxy_uids, vec![3, 4]);
    assert_eq!(c.proxy_gids, vec![1, 2]);
}

#[test]
fn proxy_uid_defaults_to_envoy_user_then_1337() {
    let c = parse_env(&[], &[("ENVOY_USER", "envoy")], &HOST)
        .unwrap()
        .capture;
    assert_eq!(
        (c.proxy_uids.clone(), c.proxy_gids.clone()),
        (vec![101], vec![101])
    );
    let c = parse_env(&[], &[("ENVOY_USER", "nobody-here")], &HOST)
        .unwrap()
        .capture;
    assert_eq!(c.proxy_uids, vec![1337]);
}

#[test]
fn mode_is_case_insensitive() {
    for m in ["TPROXY", "tproxy", "TProxy"] {
        assert_eq!(
            parse(&["-m", m]).unwrap().capture.mode,
            InterceptMode::Tproxy
        );
    }
    for m in ["", "redirect", "REDIRECT"] {
        assert_eq!(
            parse(&["-m", m]).unwrap().capture.mode,
            InterceptMode::Redirect
        );
    }
}

#[test]
fn dns_servers_come_from_the_flag_or_resolv_conf() {
    let c = parse(&[
        "--redirect-dns",
        "--dns-servers",
        "192.0.2.53, ::127.0.0.53",
    ])
    .unwrap()
    .capture;
    let Some(DnsCapture::Servers { v4, v6 }) = c.dns else {
        panic!("dns on")
    };
    assert_eq!(
        v4,
        vec!["192.0.2.53".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(v6[0].written, "::127.0.0.53");

    let host = FakeHost {
        ipv6: Some(false),
        nameservers: vec!["198.51.100.53".into(), "2001:db8::53".into()],
    };
    let c = parse_env(&["--redirect-dns"], &[], &host).unwrap().capture;
    let Some(DnsCapture::Servers { v4, v6 }) = c.dns else {
        panic!("dns on")
    };
    assert_eq!((v4.len(), v6.len()), (1, 1));

    // No server: DNS capture is silently off, as in Istio.
    assert_eq!(
        parse(&["--redirect-dns", "--dns-servers", ""])
            .unwrap()
            .capture
            .dns,
        None
    );
    // Capture-all needs no server.
    assert_eq!(
        parse(&["--redirect-dns", "--capture-all-dns"])
            .unwrap()
            .capture
            .dns,
        Some(DnsCapture::All)
    );
    // Without --redirect-dns nothing is captured, whatever the list.
    assert_eq!(
        parse(&["--dns-servers", "192.0.2.53"]).unwrap().capture.dns,
        None
    );
}

#[test]
fn resolv_conf_nameserver_lines() {
    let text = "# comment\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver  fd00::a \noptions ndots:5\n";
    assert_eq!(nameservers(text), vec!["10.96.0.10", "fd00::a"]);
}

#[test]
fn ipv6_auto_follows_the_host() {
    let on = FakeHost {
        ipv6: Some(true),
        nameservers: vec![],
    };
    assert!(parse_env(&[], &[], &on).unwrap().capture.ipv6);
    assert!(
        !parse_env(&["--ipv6", "off"], &[], &on)
            .unwrap()
            .capture
            .ipv6
    );
    let none = FakeHost {
        ipv6: None,
        nameservers: vec![],
    };
    assert!(!parse_env(&[], &[], &none).unwrap().capture.ipv6);
    assert!(parse(&["--ipv6", "on"]).unwrap().capture.ipv6);
}

#[test]
fn owner_groups_from_the_environment() {
    let c = parse_env(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202")], &HOST)
        .unwrap()
        .capture;
    assert_eq!(
        c.owner_groups,
        OwnerGroups::Only(vec![GroupRef::Name("java".into()), GroupRef::Id(202)])
    );
    let c = parse_env(
        &[],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,ftp")],
        &HOST,
    )
    .unwrap()
    .capture;
    assert_eq!(
        c.owner_groups,
        OwnerGroups::AllExcept(vec![GroupRef::Id(888), GroupRef::Name("ftp".into())])
    );
    let c = parse_env(
        &[],
        &[
            ("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "1"),
        ],
        &HOST,
    );
    assert!(c.is_ok(), "'*' with exclusions is the normal form");
}

#[test]
fn durations_in_go_syntax() {
    let raw = |t: &str| Raw {
        text: t.into(),
        origin: Origin::Flag("--probe-timeout".into()),
    };
    assert_eq!(duration(&raw("5s")).unwrap(), Duration::from_secs(5));
    assert_eq!(duration(&raw("500ms")).unwrap(), Duration::from_millis(500));
    assert_eq!(duration(&raw("1m30s")).unwrap(), Duration::from_secs(90));
    assert_eq!(duration(&raw("1.5s")).unwrap(), Duration::from_millis(1500));
    for bad in ["", "5", "s", "5x", "-1s"] {
        assert!(duration(&raw(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn booleans_follow_go_parse_bool() {
    for (t, v) in [
        ("1", true),
        ("t", true),
        ("TRUE", true),
        ("True", true),
        ("0", false),
        ("F", false),
        ("false", false),
    ] {
        let raw = Raw {
            text: t.into(),
            origin: Origin::Env("REDIRECT_DNS".into()),
        };
        assert_eq!(boolean(&raw).unwrap(), v, "{t}");
    }
    for t in ["yes", "on", "", "2", "truee"] {
        let raw = Raw {
            text: t.into(),
            origin: Origin::Env("REDIRECT_DNS".into()),
        };
        assert!(boolean(&raw).is_err(), "{t}");
    }
}

/// Bad flags: each is refused with a message naming the flag and the value.
#[test]
fn bad_flags_are_refused_naming_flag_and_value() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["-p", "0"], "-p/--envoy-port", "\"0\""),
        (&["-p", "65536"], "-p/--envoy-port", "65536"),
        (&["-p", "abc"], "-p/--envoy-port", "abc"),
        (&["-p", "-1"], "-p/--envoy-port", "-1"),
        (&["-p", ""], "-p/--envoy-port", "\"\""),
        (&["-z", "70000"], "-z/--inbound-capture-port", "70000"),
        (&["-e", "x"], "-e/--inbound-tunnel-port", "x"),
        (&["-b", "80,abc"], "-b/--istio-inbound-ports", "abc"),
        (&["-b", "80,*"], "-b/--istio-inbound-ports", "80,*"),
        (
            &["-b", "*", "-d", "0"],
            "-d/--istio-local-exclude-ports",
            "0",
        ),
        (&["-q", "99999"], "-q/--istio-outbound-ports", "99999"),
        (
            &["-o", "1-2"],
            "-o/--istio-local-outbound-ports-exclude",
            "1-2",
        ),
        (
            &["-i", "10.0.0.0/33"],
            "-i/--istio-service-cidr",
            "10.0.0.0/33",
        ),
        (&["-i", "10.0.0.1"], "-i/--istio-service-cidr", "10.0.0.1"),
        (&["-i", "bogus/8"], "-i/--istio-service-cidr", "bogus/8"),
        (&["-x", "*"], "-x/--istio-service-exclude-cidr", "*"),
        (
            &["-x", "2001:db8::/129"],
            "-x/--istio-service-exclude-cidr",
            "2001:db8::/129",
        ),
        (
            &["-m", "TEE"],
            "-m/--istio-inbound-interception-mode",
            "TEE",
        ),
        (&["-u", "root"], "-u/--proxy-uid", "root"),
        (&["-u", "1337,-5"], "-u/--proxy-uid", "-5"),
        (&["-g", "x"], "-g/--proxy-gid", "x"),
        (&["-t", "mark"], "-t/--istio-inbound-tproxy-mark", "mark"),
        (&["-t", "0"], "-t/--istio-inbound-tproxy-mark", "\"0\""),
        (
            &["-r", "main"],
            "-r/--istio-inbound-tproxy-route-table",
            "main",
        ),
        (
            &["-r", "254"],
            "-r/--istio-inbound-tproxy-route-table",
            "254",
        ),
        (
            &["-c", "a-very-long-interface-name"],
            "-c/--istio-exclude-interfaces",
            "a-very-long-interface-name",
        ),
        (&["-c", "eth/0"], "-c/--istio-exclude-interfaces", "eth/0"),
        (&["-k", "eth 0"], "-k/--kube-virt-interfaces", "eth 0"),
        (&["-k", "e+th"], "-k/--kube-virt-interfaces", "e+th"),
        (
            &["--force-iptables-binary", "nf"],
            "--force-iptables-binary",
            "nf",
        ),
        (&["--backend", "ebpf"], "--backend", "ebpf"),
        (&["--ipv6", "maybe"], "--ipv6", "maybe"),
        (
            &["--dns-servers", "dns.example"],
            "--dns-servers",
            "dns.example",
        ),
        (&["--redirect-dns=yes"], "--redirect-dns", "yes"),
        (&["--probe-timeout", "soon"], "--probe-timeout", "soon"),
        (
            &["--iptables-probe-port", "0"],
            "--iptables-probe-port",
            "\"0\"",
        ),
        (
            &["--native-nftables", "--backend", "iptables"],
            "--native-nftables",
            "--backend",
        ),
    ];
    for (args, flag, value) in cases {
        let err = parse(args).expect_err(&format!("{args:?} must be refused"));
        assert_eq!(err.exit_code(), 2, "{args:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(flag),
            "{args:?}: message {msg:?} does not name {flag}"
        );
        assert!(
            msg.contains(value),
            "{args:?}: message {msg:?} does not name {value}"
        );
    }
}

#[test]
fn bad_environment_is_refused_naming_the_variable() {
    let cases: &[(&str, &str)] = &[
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.0/8"),
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.0/7"),
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "not-a-cidr"),
        ("ISTIO_OUTBOUND_OWNER_GROUPS", "Bad Group"),
        ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "-x"),
    ];
    for (var, value) in cases {
        let err = parse_env(&[], &[(var, value)], &HOST)
            .expect_err(&format!("{var}={value} must be refused"));
        let msg = err.to_string();
        assert!(
            msg.contains(var) && msg.contains(value),
            "{var}={value}: {msg}"
        );
        assert_eq!(err.exit_code(), 2);
    }
    let err = parse_env(
        &[],
        &[
            ("ISTIO_OUTBOUND_OWNER_GROUPS", "a"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "b"),
        ],
        &HOST,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ISTIO_OUTBOUND_OWNER_GROUPS")
            && msg.contains("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
        "{msg}"
    );
    let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
    assert!(
        parse_env(
            &[],
            &[("ISTIO_OUTBOUND_OWNER_GROUPS", &many.join(","))],
            &HOST
        )
        .is_err()
    );
}
