//! Property tests (run briefly on every `cargo test`; raise PROPTEST_CASES to dig deeper):
//! - any text in any flag either parses or is refused with exit 2 naming that flag, never a panic;
//! - lists in Istio's forms parse to what they list;
//! - any valid configuration renders to restore text that iptables-restore --test accepts, for
//!   both families and both variants, and to an nftables script `nft -c -f` accepts (in a
//!   throwaway namespace, as root).

mod common;

use meshcap::cli::Inputs;
use meshcap::config::{Config, ConfigError, HostFacts};
use netns_test_harness::{Netns, require_root};
use proptest::prelude::*;

struct Host;
impl HostFacts for Host {
    fn pod_is_ipv6(&self, _: bool) -> Result<Option<bool>, String> {
        Ok(Some(false))
    }
    fn resolv_conf_nameservers(&self) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
    fn uid_of(&self, _: &str) -> Option<u32> {
        None
    }
}

fn parse(args: &[String]) -> Result<Config, ConfigError> {
    let argv = std::iter::once("meshcap".to_owned()).chain(args.iter().cloned());
    let inputs = Inputs::parse_from(argv, vec![]).expect("clap takes any value");
    Config::from_inputs(&inputs, &Host)
}

const VALUE_FLAGS: &[&str] = &[
    "-p",
    "-z",
    "-e",
    "-u",
    "-g",
    "-m",
    "-b",
    "-d",
    "-c",
    "-i",
    "-x",
    "-q",
    "-o",
    "-k",
    "-t",
    "-r",
    "--ipv6",
    "--backend",
    "--force-iptables-binary",
    "--dns-servers",
    "--iptables-probe-port",
    "--probe-timeout",
];

fn port() -> impl Strategy<Value = u16> {
    1u16..=65535
}

fn ports(max: usize) -> impl Strategy<Value = Vec<u16>> {
    prop::collection::vec(port(), 0..max)
}

fn v4_cidr() -> impl Strategy<Value = String> {
    (any::<[u8; 4]>(), 0u8..=32)
        .prop_map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3]))
}

fn v6_cidr() -> impl Strategy<Value = String> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, p)| format!("{}/{p}", std::net::Ipv6Addr::from(a)))
}

fn iface() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,10}\\+?"
}

/// Flags of a valid configuration, in Istio's list forms (stray commas, spaces).
fn valid_args() -> impl Strategy<Value = Vec<String>> {
    let join = |v: Vec<String>| v.join(",");
    (
        (
            port(),
            port(),
            port(),
            prop::sample::select(vec!["", "REDIRECT", "TPROXY", "tproxy"]),
        ),
        (prop::option::of(ports(6)), ports(6), ports(4), ports(4)),
        (
            prop::collection::vec(prop_oneof![v4_cidr(), v6_cidr()], 0..5),
            prop::collection::vec(prop_oneof![v4_cidr(), v6_cidr()], 0..5),
            any::<bool>(),
        ),
        (
            prop::collection::vec(iface(), 0..3),
            prop::collection::vec(iface(), 0..3),
        ),
        (
            prop::collection::vec(1u32..100_000, 1..3),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            move |(
                (p, z, e, m),
                (inb, exc, outp, outx),
                (inc, xc, star),
                (cif, kif),
                (uids, dns, drop, ipv6),
            )| {
                let list = |v: &[u16]| {
                    v.iter()
                        .map(|x| format!(" {x}"))
                        .collect::<Vec<_>>()
                        .join(",")
                        + ","
                };
                let mut args: Vec<String> = vec![
                    "-p".into(),
                    p.to_string(),
                    "-z".into(),
                    z.to_string(),
                    "-e".into(),
                    e.to_string(),
                    "-m".into(),
                    m.into(),
                    "-b".into(),
                    inb.map(|v| list(&v)).unwrap_or_else(|| "*".into()),
                    "-d".into(),
                    list(&exc),
                    "-q".into(),
                    list(&outp),
                    "-o".into(),
                    list(&outx),
                    "-i".into(),
                    if star { "*".into() } else { join(inc) },
                    "-x".into(),
                    join(xc),
                    "-c".into(),
                    join(cif),
                    "-k".into(),
                    join(kif),
                    "-u".into(),
                    uids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    "--ipv6".into(),
                    if ipv6 { "on" } else { "off" }.into(),
                    "--dns-servers".into(),
                    "192.0.2.53,2001:db8::53".into(),
                ];
                if dns {
                    args.push("--redirect-dns".into());
                }
                if drop {
                    args.push("--drop-invalid".into());
                }
                args
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_value_parses_or_names_its_flag(flag in prop::sample::select(VALUE_FLAGS), value in ".{0,40}") {
        match parse(&[flag.to_owned(), value.clone()]) {
            Ok(_) => {}
            Err(e) => {
                prop_assert_eq!(e.exit_code(), 2);
                let msg = e.to_string();
                prop_assert!(msg.contains(flag), "{} does not name {}", msg, flag);
            }
        }
    }

    #[test]
    fn port_lists_parse_to_what_they_list(list in ports(20), sep in prop::sample::select(vec![",", ", ", " ,", ",,"])) {
        let text = list.iter().map(u16::to_string).collect::<Vec<_>>().join(sep) + sep;
        let cfg = parse(&["-q".into(), text]).expect("valid list");
        prop_assert_eq!(cfg.capture.outbound_ports, list);
    }

    #[test]
    fn valid_configurations_always_parse(args in valid_args()) {
        prop_assert!(parse(&args).is_ok(), "{:?}: {:?}", args, parse(&args).err());
    }
}

/// Rendering is checked by the tools' own parsers: iptables-restore --test and nft -c -f, in a
/// namespace.
#[test]
fn rendered_rules_pass_iptables_restore_test_and_nft_check() {
    if !require_root("rendered_rules_pass_iptables_restore_test_and_nft_check") {
        return;
    }
    let ns = Netns::new("fuzzrender");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&valid_args(), |args| {
            let cfg = parse(&args).expect("valid");
            let plan = meshcap::plan::build(&cfg.capture);
            // The nftables backend's dry-run script, checked by nft itself.
            let script = meshcap::backend::Firewall::render(
                &meshcap::backend::nftables::NftablesBackend,
                &plan,
            );
            let out = ns.exec_with_input(&["nft", "-c", "-f", "-"], &script);
            prop_assert!(
                out.status.success(),
                "nft -c refused {args:?}:\n{}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
            for family in plan.families() {
                let text = meshcap::backend::iptables::spell::restore_text(family);
                let tool = match family.family {
                    meshcap::plan::Family::V4 => "iptables",
                    meshcap::plan::Family::V6 => "ip6tables",
                };
                for variant in ["nft", "legacy"] {
                    let out = ns.exec_with_input(
                        &[&format!("{tool}-{variant}-restore"), "--test", "--noflush"],
                        &text,
                    );
                    prop_assert!(
                        out.status.success(),
                        "{tool}-{variant}-restore refused {args:?}:\n{}\n{text}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}
