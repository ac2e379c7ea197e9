//! The `nft` binary as the oracle of meshcap's own rendering of nftables rules (what read-back,
//! `diff`, `explain` and `trace` show): for every configuration (common::configs: the probe
//! matrix's 28, Istio's CNI defaults, 1000 ports + 1000 CIDRs per family), after a real
//! install in a throwaway namespace, meshcap's text of each chain equals `nft list chain inet
//! TABLE CHAIN` line for line, counters aside: both the text of the rules read back from the
//! kernel and the text of the plan's rules (the batch's typed messages), with anonymous sets
//! spelled out as nft lists them. The chains are the ones `nft list table` shows, no more, no
//! fewer. Beyond meshcap's own patterns, a table written for this test (tests/nft_render.nft:
//! named and interval sets, ranges, goto, continue, ct state, mark arithmetic, tproxy, a bare
//! transport header field) reads as nft lists it too.

mod common;

use common::configs::{cases, plan_of};
use common::{NFT_TABLES, without_counters};
use meshcap::backend::Firewall;
use meshcap::backend::nftables::NftablesBackend;
use meshcap::backend::nftables::render::{ChainTexts, chain_texts};
use meshcap::backend::nftables::{dump, netlink};
use netns_test_harness::{Netns, require_root};
use std::collections::BTreeMap;

/// The lines inside a chain's braces in `nft list chain` output, counters dropped.
fn nft_chain(ns: &Netns, table: &str, chain: &str) -> Vec<String> {
    let out = ns.exec(&["nft", "list", "chain", "inet", table, chain]);
    assert!(
        out.status.success(),
        "nft list chain inet {table} {chain}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = without_counters(&String::from_utf8_lossy(&out.stdout));
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && *l != "}"
                && !l.starts_with(&format!("table inet {table} "))
                && *l != format!("chain {chain} {{")
        })
        .map(str::to_owned)
        .collect()
}

/// The chains `nft list table` shows for each of meshcap's tables present.
fn nft_chains(ns: &Netns) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for table in NFT_TABLES {
        let listed = ns.exec(&["nft", "list", "table", "inet", table]);
        if !listed.status.success() {
            continue;
        }
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            if let Some(name) = line.trim().strip_prefix("chain ") {
                let name = name.trim_end_matches('{').trim();
                out.push((table.to_owned(), name.to_owned()));
            }
        }
    }
    out
}

fn without_counts(texts: &ChainTexts) -> BTreeMap<String, Vec<String>> {
    texts
        .iter()
        .map(|(k, lines)| {
            let lines = lines
                .iter()
                .map(|l| without_counters(l).trim_end().to_owned())
                .collect();
            (k.clone(), lines)
        })
        .collect()
}

#[test]
fn rendering_equals_nft_list_chain_for_every_configuration() {
    if !require_root("rendering_equals_nft_list_chain_for_every_configuration") {
        return;
    }
    let cases = cases("nft_render");
    let mut chains = 0;
    let mut rules = 0;
    for case in &cases {
        let plan = plan_of(case);
        let ns = Netns::new("render");
        let p = plan.clone();
        let (applied, kernel) = ns.run(move || {
            let applied = NftablesBackend.apply(&p).map(|_| ());
            (applied, NftablesBackend.contents())
        });
        applied.unwrap_or_else(|e| panic!("{}: install: {e}", case.name));
        let kernel = without_counts(&chain_texts(&kernel.expect("read back")));
        let planned = without_counts(&chain_texts(&NftablesBackend.expected_contents(&plan)));
        assert_eq!(
            kernel, planned,
            "{}: the kernel's rules and the plan's read differently",
            case.name
        );
        let listed = nft_chains(&ns);
        let keys: Vec<String> = listed
            .iter()
            .map(|(t, c)| format!("inet {t} {c}"))
            .collect();
        let mut ours: Vec<&String> = kernel.keys().collect();
        let mut theirs: Vec<&String> = keys.iter().collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{}: chains", case.name);
        for (table, chain) in &listed {
            let want = nft_chain(&ns, table, chain);
            let have = &kernel[&format!("inet {table} {chain}")];
            for (i, (h, w)) in have.iter().zip(&want).enumerate() {
                assert_eq!(
                    h, w,
                    "{}: inet {table} {chain}: line {i} differs from nft's",
                    case.name
                );
            }
            assert_eq!(
                have.len(),
                want.len(),
                "{}: inet {table} {chain}: line count\n ours: {have:#?}\n nft: {want:#?}",
                case.name
            );
            chains += 1;
            rules += want.len();
        }
    }
    eprintln!(
        "{} configurations, {chains} chains, {rules} lines equal to nft's",
        cases.len()
    );
    assert!(cases.len() >= 11);
}

#[test]
fn rendering_equals_nft_list_chain_beyond_meshcaps_patterns() {
    if !require_root("rendering_equals_nft_list_chain_beyond_meshcaps_patterns") {
        return;
    }
    const TABLE: &str = "meshcap-render-t";
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nft_render.nft"),
    )
    .expect("tests/nft_render.nft");
    let ns = Netns::new("render");
    let out = ns.exec_with_input(&["nft", "-f", "-"], &script);
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The kernel's names and counts as they are (not canonical: named sets keep their names).
    let contents = ns
        .run(|| dump::contents(&mut netlink::open()?, &[TABLE.to_owned()]))
        .expect("dump");
    let ours = without_counts(&chain_texts(&contents));
    let mut lines = 0;
    for chain in ["c", "d", "n"] {
        let want = nft_chain(&ns, TABLE, chain);
        let have = &ours[&format!("inet {TABLE} {chain}")];
        assert_eq!(have, &want, "inet {TABLE} {chain}");
        lines += want.len();
    }
    assert_eq!(ours.len(), 3, "{ours:#?}");
    eprintln!("{lines} lines equal to nft's");
}

/// Ambient's rules (tables `inet istio-ambient-*`: masked marks, the connection mark's bits, ct
/// zone, SNAT to the probe address, a named-set lookup, skuid) installed by meshcap: the text of
/// the kernel's rules and of the plan's equal `nft list chain`, line for line.
#[test]
fn rendering_of_ambient_rules_equals_nft_list_chain() {
    use meshcap::ambient::config::{
        HostConfig, NodeSettings, PodConfig, PodOverrides, ProbeSource,
    };
    use meshcap::ambient::nftables::install;
    use meshcap::ambient::plan;
    if !require_root("rendering_of_ambient_rules_equals_nft_list_chain") {
        return;
    }
    let node = NodeSettings {
        dns_capture: true,
        ipv6: true,
        ..NodeSettings::default()
    };
    let plans = [
        plan::pod(&PodConfig::new(
            &node,
            &PodOverrides {
                virtual_interfaces: vec!["virt0".into(), "virt1".into()],
                ..PodOverrides::default()
            },
        )),
        plan::pod(&PodConfig::new(
            &NodeSettings::default(),
            &PodOverrides {
                bypass_inbound_capture: true,
                ..PodOverrides::default()
            },
        )),
        plan::host(&HostConfig::new(&node, ProbeSource::Uid(1000))),
        plan::host(&HostConfig::new(&node, ProbeSource::AnyLocalSocket)),
    ];
    let mut lines = 0;
    for (i, plan) in plans.into_iter().enumerate() {
        let ns = Netns::new("renderamb");
        let p = plan.clone();
        let kernel = ns
            .run(move || install::apply(&p).and_then(|_| install::current(&p)))
            .unwrap_or_else(|e| panic!("ambient plan {i}: {e}"));
        let kernel = without_counts(&chain_texts(&kernel));
        let planned = without_counts(&chain_texts(&install::expected(&plan)));
        assert_eq!(
            kernel, planned,
            "ambient plan {i}: kernel and plan read differently"
        );
        for key in kernel.keys() {
            let mut parts = key.split(' ').skip(1);
            let (table, chain) = (parts.next().unwrap(), parts.next().unwrap());
            let want = nft_chain(&ns, table, chain);
            assert_eq!(&kernel[key], &want, "ambient plan {i}: {key}");
            lines += want.len();
        }
    }
    eprintln!("ambient: {lines} lines equal to nft's");
}
