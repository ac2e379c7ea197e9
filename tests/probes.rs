//! Differential traffic tests: golden text proves the spelling, only traffic proves the
//! interception.
//!
//! For every scenario of rulesets/scenarios.json and every Istio conformance case (flags, golden
//! text and environment mapped onto the standard pod's addresses and interfaces, see
//! `netns_test_harness::pod::map_istio`), a fresh standard pod gets the rules of one *column* and
//! then every probe of the standard matrix runs. The classification must equal the expected table
//! (rulesets/NAME.probes, rulesets/istio/NAME.probes) in every column:
//!
//! - `restore-text`: the reference restore text (rulesets/NAME.iptables, or Istio's
//!   iptables/NAME.golden) loaded with iptables-legacy-restore, plus Istio's `ip` routing
//!   commands;
//! - `iptables-legacy`, `iptables-nft`: meshcap's iptables backend with
//!   `--force-iptables-binary legacy|nft`;
//! - `nftables`: meshcap's native backend, `--backend nftables`;
//! - `istio-nftables`: Istio's own nftables golden loaded with `nft -f` plus Istio's routing
//!   commands; equal except the IPv6 rows of the README's "Known divergence" section, which must
//!   differ exactly as listed in [`KNOWN_DIVERGENCE`].
//!
//! `MESHCAP_BLESS=1` writes the expected tables from the first column that installs (in the
//! order above) instead of comparing; run again without it to compare every column.

mod common;

use common::{
    IstioCase, blessing, istio_cases, istio_conformance, istio_conformance_part, meshcap, repo,
    scenarios,
};
use netns_test_harness::install::{IstioRouting, load_nft, load_restore_text};
use netns_test_harness::pod::{PROXY_ID, Pod, map_istio, standard_matrix};
use netns_test_harness::probe::{Mismatch, Outcome, Probe, compare, parse_table, render_table};
use netns_test_harness::{User, own_namespaces, require_root};
use std::path::PathBuf;

/// One configuration to probe: a scenario or a mapped Istio case.
#[derive(Clone, Debug)]
struct Config {
    name: String,
    /// "scenario" or "istio".
    kind: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    routing: IstioRouting,
    /// Reference restore text, when there is one.
    restore_text: Option<String>,
    /// Istio's nftables golden (mapped), for Istio cases that have one.
    istio_nft: Option<String>,
    expected: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    RestoreText,
    IptablesLegacy,
    IptablesNft,
    Nftables,
    IstioNftables,
}

/// Blessing takes the first of these that installs.
const BLESS_ORDER: [Column; 5] = [
    Column::RestoreText,
    Column::IptablesLegacy,
    Column::IptablesNft,
    Column::Nftables,
    Column::IstioNftables,
];

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::RestoreText => "restore-text",
            Column::IptablesLegacy => "iptables-legacy",
            Column::IptablesNft => "iptables-nft",
            Column::Nftables => "nftables",
            Column::IstioNftables => "istio-nftables",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Column::RestoreText => "rt",
            Column::IptablesLegacy => "lg",
            Column::IptablesNft => "nf",
            Column::Nftables => "nt",
            Column::IstioNftables => "in",
        }
    }

    fn applies(self, cfg: &Config) -> bool {
        match self {
            Column::RestoreText => cfg.restore_text.is_some(),
            Column::IstioNftables => cfg.istio_nft.is_some(),
            _ => true,
        }
    }
}

/// Rows of Istio's nftables goldens that classify differently from meshcap (and from Istio's own
/// iptables rules): the README's "Known divergence between Istio's own two backends". Istio has
/// IPv6 off in these cases, but its nftables rules are `inet` rules without a family qualifier,
/// so they capture IPv6 too. Each entry: case, probe, what meshcap (and Istio's iptables) do,
/// what Istio's nftables rules do. The README counts 3, 7 and 4 rows with its own probe set; the
/// standard matrix probes IPv6 inbound from more places (every app port, the excluded and both
/// KubeVirt interfaces, forwarded VM traffic) and IPv6 outbound to one included address, hence
/// 2, 17 and 2 rows here: the same three cases, IPv6 only, nothing else.
const KNOWN_DIVERGENCE: &[(&str, &str, &str, &str)] = &[
    (
        "inbound-ports-include",
        "peer net tcp [2001:db8:100::1]:31000",
        "direct app [2001:db8:100::1]:31000",
        "captured-inbound [2001:db8:100::1]:31000",
    ),
    (
        "inbound-ports-include",
        "peer net tcp [2001:db8:100::1]:32000",
        "direct app [2001:db8:100::1]:32000",
        "captured-inbound [2001:db8:100::1]:32000",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:8080",
        "direct app [2001:db8:100::1]:8080",
        "captured-inbound [2001:db8:100::1]:8080",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:9080",
        "direct app [2001:db8:100::1]:9080",
        "captured-inbound [2001:db8:100::1]:9080",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:31000",
        "direct app [2001:db8:100::1]:31000",
        "captured-inbound [2001:db8:100::1]:31000",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:32000",
        "direct app [2001:db8:100::1]:32000",
        "captured-inbound [2001:db8:100::1]:32000",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:4000",
        "direct app [2001:db8:100::1]:4000",
        "captured-inbound [2001:db8:100::1]:4000",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:5000",
        "direct app [2001:db8:100::1]:5000",
        "captured-inbound [2001:db8:100::1]:5000",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:7070",
        "direct app [2001:db8:100::1]:7070",
        "captured-inbound [2001:db8:100::1]:7070",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:15020",
        "direct app [2001:db8:100::1]:15020",
        "captured-inbound [2001:db8:100::1]:15020",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:15021",
        "direct app [2001:db8:100::1]:15021",
        "captured-inbound [2001:db8:100::1]:15021",
    ),
    (
        "inbound-ports-wildcard",
        "peer net tcp [2001:db8:100::1]:15090",
        "direct app [2001:db8:100::1]:15090",
        "captured-inbound [2001:db8:100::1]:15090",
    ),
    (
        "inbound-ports-wildcard",
        "peer side tcp [2001:db8:101::1]:8080",
        "direct app [2001:db8:101::1]:8080",
        "captured-inbound [2001:db8:101::1]:8080",
    ),
    (
        "inbound-ports-wildcard",
        "peer vm0 tcp [2001:db8:102::1]:8080",
        "direct app [2001:db8:102::1]:8080",
        "captured-inbound [2001:db8:102::1]:8080",
    ),
    (
        "inbound-ports-wildcard",
        "peer vm0 tcp [2001:db8:1::10]:80",
        "direct server [2001:db8:1::10]:80",
        "captured-inbound [2001:db8:1::10]:80",
    ),
    (
        "inbound-ports-wildcard",
        "peer vm0 tcp [2001:db8:2::10]:80",
        "direct server [2001:db8:2::10]:80",
        "captured-inbound [2001:db8:2::10]:80",
    ),
    (
        "inbound-ports-wildcard",
        "peer vm1 tcp [2001:db8:103::1]:8080",
        "direct app [2001:db8:103::1]:8080",
        "captured-inbound [2001:db8:103::1]:8080",
    ),
    (
        "inbound-ports-wildcard",
        "peer vm1 tcp [2001:db8:1::10]:80",
        "direct server [2001:db8:1::10]:80",
        "captured-inbound [2001:db8:1::10]:80",
    ),
    (
        "inbound-ports-wildcard",
        "peer vm1 tcp [2001:db8:2::10]:80",
        "direct server [2001:db8:2::10]:80",
        "captured-inbound [2001:db8:2::10]:80",
    ),
    (
        "outbound-ports-include",
        "pod 1000:1000 tcp [2001:db8:1::10]:31000",
        "direct server [2001:db8:1::10]:31000",
        "captured-outbound [2001:db8:1::10]:31000",
    ),
    (
        "outbound-ports-include",
        "pod 1000:1000 tcp [2001:db8:1::10]:32000",
        "direct server [2001:db8:1::10]:32000",
        "captured-outbound [2001:db8:1::10]:32000",
    ),
];

fn last_value<'a>(args: &'a [String], flags: &[&str]) -> Option<&'a str> {
    args.windows(2)
        .filter(|w| flags.contains(&w[0].as_str()))
        .map(|w| w[1].as_str())
        .next_back()
}

/// The proxy's identity in a configuration: the first `-u` uid, the first `-g` gid (default:
/// the uid), 1337 when not given.
fn proxy_user(args: &[String]) -> User {
    let first = |flags: &[&str]| {
        last_value(args, flags)
            .and_then(|v| v.split(',').find(|s| !s.is_empty()))
            .map(|v| v.parse::<u32>().expect("numeric id"))
    };
    let uid = first(&["-u", "--proxy-uid"]).unwrap_or(PROXY_ID);
    User::new(uid, first(&["-g", "--proxy-gid"]).unwrap_or(uid))
}

/// Istio's routing commands for a configuration's flags.
fn routing_of(args: &[String]) -> IstioRouting {
    let mode = last_value(args, &["-m", "--istio-inbound-interception-mode"]).unwrap_or("");
    let number = |flags: &[&str], default: u32| {
        last_value(args, flags)
            .map(|v| v.parse().expect("numeric flag"))
            .unwrap_or(default)
    };
    IstioRouting {
        tproxy: mode.eq_ignore_ascii_case("tproxy").then(|| {
            (
                number(&["-t", "--istio-inbound-tproxy-mark"], 1337),
                number(&["-r", "--istio-inbound-tproxy-route-table"], 133),
            )
        }),
        ipv6: last_value(args, &["--ipv6"]) == Some("on"),
    }
}

fn scenario_configs() -> Vec<Config> {
    scenarios()
        .into_iter()
        .map(|s| {
            let text =
                std::fs::read_to_string(repo().join(format!("rulesets/{}.iptables", s.name))).ok();
            Config {
                routing: routing_of(&s.args),
                expected: repo().join(format!("rulesets/{}.probes", s.name)),
                name: s.name,
                kind: "scenario",
                args: s.args,
                env: s.env,
                restore_text: text,
                istio_nft: None,
            }
        })
        .collect()
}

fn istio_config(dir: &std::path::Path, case: IstioCase) -> Config {
    // `-n` is Istio's dry run: the rules are to be applied here.
    let args: Vec<String> = case
        .args
        .iter()
        .filter(|a| *a != "-n")
        .map(|a| map_istio(a))
        .collect();
    let golden = |backend: &str| {
        case.backends.iter().any(|b| b == backend).then(|| {
            let path = dir.join(format!("{backend}/{}.golden", case.name));
            map_istio(&std::fs::read_to_string(&path).expect("golden"))
        })
    };
    Config {
        routing: routing_of(&args),
        expected: repo().join(format!("rulesets/istio/{}.probes", case.name)),
        restore_text: golden("iptables"),
        istio_nft: golden("nftables"),
        env: case
            .env
            .iter()
            .map(|(k, v)| (k.clone(), map_istio(v)))
            .collect(),
        name: case.name,
        kind: "istio",
        args,
    }
}

/// The configurations `column` applies to: the scenarios, and the Istio cases when ../shared is
/// there. Without ../shared, `None` (`test` skipped) when the column applies to Istio cases only.
fn configs(test: &str, column: Column) -> Option<Vec<Config>> {
    let mut all = scenario_configs();
    assert!(all.len() >= 6, "rulesets/scenarios.json has its scenarios");
    let istio = if all.iter().any(|c| column.applies(c)) {
        istio_conformance_part(test)
    } else {
        Some(istio_conformance(test)?)
    };
    if let Some(dir) = istio {
        let cases = istio_cases(&dir);
        assert_eq!(cases.len(), 19, "the conformance set has 19 cases");
        all.extend(cases.into_iter().map(|c| istio_config(&dir, c)));
    }
    all.retain(|c| column.applies(c));
    Some(all)
}

/// Installs a column's rules for `cfg` in the pod.
fn install(pod: &Pod, cfg: &Config, column: Column) -> Result<(), String> {
    let ns_path = pod.pod.path().display().to_string();
    let run_meshcap = |extra: &[&str]| {
        let mut args = cfg.args.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--network-namespace".to_owned(), ns_path.clone()]);
        let out = meshcap(&args, &cfg.env);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "meshcap {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    match column {
        Column::RestoreText => {
            load_restore_text(
                &pod.pod,
                cfg.restore_text.as_deref().expect("text"),
                "legacy",
            )?;
            cfg.routing.apply(&pod.pod);
            Ok(())
        }
        Column::IptablesLegacy => run_meshcap(&["--force-iptables-binary", "legacy"]),
        Column::IptablesNft => run_meshcap(&["--force-iptables-binary", "nft"]),
        Column::Nftables => run_meshcap(&["--backend", "nftables"]),
        Column::IstioNftables => {
            load_nft(&pod.pod, cfg.istio_nft.as_deref().expect("golden"))?;
            cfg.routing.apply(&pod.pod);
            Ok(())
        }
    }
}

/// A fresh pod with the column's rules, probed with the standard matrix. The pod and its
/// namespaces are gone when this returns.
fn observe(cfg: &Config, column: Column, dump: bool) -> Result<Vec<(Probe, Outcome)>, String> {
    let pod = Pod::with_proxy(column.tag(), proxy_user(&cfg.args));
    install(&pod, cfg, column)?;
    let rows = pod.probe(&standard_matrix());
    if dump {
        eprintln!("{}", pod.pod.dump_rulesets());
    }
    Ok(rows)
}

fn header(cfg: &Config, column: Column) -> String {
    format!(
        "# Where every probe of the standard matrix (netns-test-harness/src/pod.rs) goes for\n\
         # {} {:?}: meshcap {}{}\n\
         # Written by MESHCAP_BLESS=1 cargo test --test probes (from the {} column); every\n\
         # backend must classify exactly so. Classes: captured-outbound/-inbound/-dns ORIGINAL-DST,\n\
         # direct app|server ADDR (accepted by the destination itself), refused, timeout, error.\n\n",
        cfg.kind,
        cfg.name,
        cfg.args
            .iter()
            .map(|a| if a.is_empty() {
                "\"\"".to_owned()
            } else {
                a.clone()
            })
            .collect::<Vec<_>>()
            .join(" "),
        if cfg.env.is_empty() {
            String::new()
        } else {
            format!(
                " (env {})",
                cfg.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
        column.name()
    )
}

fn expected_rows(cfg: &Config) -> Result<Vec<(Probe, Outcome)>, String> {
    let text = std::fs::read_to_string(&cfg.expected).map_err(|e| {
        format!(
            "{}: {e} (write it with MESHCAP_BLESS=1 cargo test --test probes)",
            cfg.expected.display()
        )
    })?;
    parse_table(&text).map_err(|e| format!("{}: {e}", cfg.expected.display()))
}

/// The first column of [`BLESS_ORDER`] that applies to `cfg`.
fn bless_source(cfg: &Config) -> Column {
    BLESS_ORDER
        .into_iter()
        .find(|c| c.applies(cfg))
        .expect("some column")
}

/// Probes every configuration in `column` and compares with the expected tables; panics with
/// every difference. Returns early, reported as skipped, when it cannot run here.
fn check_column(test: &str, column: Column) {
    if !require_root(test) {
        return;
    }
    let Some(configs) = configs(test, column) else {
        return;
    };
    let bless = blessing();
    let mut failures: Vec<String> = Vec::new();
    let mut probes = 0;
    for cfg in &configs {
        let observed = match observe(cfg, column, false) {
            Ok(rows) => rows,
            Err(e) => {
                failures.push(format!(
                    "{} {}: rules not installed: {e}",
                    cfg.kind, cfg.name
                ));
                continue;
            }
        };
        probes += observed.len();
        if bless && bless_source(cfg) == column {
            let text = header(cfg, column) + &render_table(&observed);
            std::fs::create_dir_all(cfg.expected.parent().expect("dir")).expect("mkdir");
            std::fs::write(&cfg.expected, text).expect("write expected table");
            println!("{column:?}: wrote {}", cfg.expected.display());
            continue;
        }
        let expected = match expected_rows(cfg) {
            Ok(rows) => rows,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let diff = compare(&expected, &observed);
        let (known, unexpected): (Vec<&Mismatch>, Vec<&Mismatch>) =
            if column == Column::IstioNftables {
                diff.iter().partition(|m| known_divergence(&cfg.name, m))
            } else {
                (Vec::new(), diff.iter().collect())
            };
        if column == Column::IstioNftables {
            for m in &known {
                println!(
                    "istio-nftables {}: known divergence (README): {} -> meshcap and Istio's iptables: {}; Istio's nftables: {}",
                    cfg.name,
                    m.probe,
                    show(&m.expected),
                    show(&m.observed)
                );
            }
            let listed = KNOWN_DIVERGENCE
                .iter()
                .filter(|(case, ..)| *case == cfg.name)
                .count();
            if known.len() != listed {
                failures.push(format!(
                    "istio {}: {} of the {listed} known divergent rows of Istio's nftables rules differ; the others now agree (update KNOWN_DIVERGENCE)",
                    cfg.name,
                    known.len()
                ));
            }
        }
        if !unexpected.is_empty() {
            let lines: Vec<String> = unexpected.iter().map(|m| format!("    {m}")).collect();
            failures.push(format!(
                "{} {} [{}]: {} of {} probes differ from {}:\n{}",
                cfg.kind,
                cfg.name,
                column.name(),
                unexpected.len(),
                observed.len(),
                cfg.expected.display(),
                lines.join("\n")
            ));
        }
    }
    let ok = configs.len() - failures.len().min(configs.len());
    println!(
        "{}: {ok} of {} configurations classify as expected ({probes} probes run)",
        column.name(),
        configs.len()
    );
    let leaked: Vec<String> = own_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&format!("meshcap-{}", column.tag())))
        .collect();
    assert!(leaked.is_empty(), "namespaces left behind: {leaked:?}");
    assert!(
        failures.is_empty(),
        "{}: {} configuration(s) fail:\n{}",
        column.name(),
        failures.len(),
        failures.join("\n")
    );
}

fn show(o: &Option<Outcome>) -> String {
    o.as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "(none)".into())
}

fn known_divergence(case: &str, m: &Mismatch) -> bool {
    KNOWN_DIVERGENCE.iter().any(|(c, probe, ours, theirs)| {
        *c == case
            && m.probe.to_string() == *probe
            && show(&m.expected) == *ours
            && show(&m.observed) == *theirs
    })
}

/// The divergence list names only the README's three cases and only IPv6 probes.
#[test]
fn known_divergence_is_ipv6_rows_of_the_readme_cases() {
    for (case, probe, ours, theirs) in KNOWN_DIVERGENCE {
        assert!(
            [
                "inbound-ports-include",
                "inbound-ports-wildcard",
                "outbound-ports-include"
            ]
            .contains(case),
            "{case}"
        );
        let probe: Probe = probe.parse().expect("probe");
        assert_eq!(probe.family(), "v6", "{probe}");
        assert_ne!(ours, theirs);
    }
    let count = |c: &str| {
        KNOWN_DIVERGENCE
            .iter()
            .filter(|(case, ..)| *case == c)
            .count()
    };
    assert_eq!(
        [
            count("inbound-ports-include"),
            count("inbound-ports-wildcard"),
            count("outbound-ports-include")
        ],
        [2, 17, 2]
    );
}

#[test]
fn probes_restore_text_reference() {
    check_column("probes_restore_text_reference", Column::RestoreText);
}

#[test]
fn probes_iptables_legacy() {
    check_column("probes_iptables_legacy", Column::IptablesLegacy);
}

#[test]
fn probes_iptables_nft() {
    check_column("probes_iptables_nft", Column::IptablesNft);
}

#[test]
fn probes_nftables_backend() {
    check_column("probes_nftables_backend", Column::Nftables);
}

#[test]
fn probes_istio_nftables_goldens() {
    check_column("probes_istio_nftables_goldens", Column::IstioNftables);
}

/// Prints (with --nocapture) where every connection goes under Istio's default istio-init
/// configuration, as meshcap's iptables backend installs it, and checks it against the table.
#[test]
fn istio_default_classification_table() {
    if !require_root("istio_default_classification_table") {
        return;
    }
    let cfg = scenario_configs()
        .into_iter()
        .find(|c| c.name == "istio-default")
        .expect("scenario istio-default");
    let rows = observe(&cfg, Column::IptablesLegacy, false).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "Where connections go under Istio's default istio-init ({}), meshcap iptables backend:\n",
        cfg.args
            .iter()
            .map(|a| if a.is_empty() { "\"\"" } else { a.as_str() })
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("{}", render_table(&rows));
    if !blessing() {
        let expected = expected_rows(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let diff = compare(&expected, &rows);
        let lines: Vec<String> = diff.iter().map(ToString::to_string).collect();
        assert!(diff.is_empty(), "{}", lines.join("\n"));
    }
}
