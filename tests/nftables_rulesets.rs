//! On a real kernel, for every named scenario (rulesets/scenarios.json) and every Istio
//! conformance case: the nftables backend applied in a throwaway namespace lists
//! (`nft list table inet istio-proxy-*`) exactly rulesets/NAME.nft (rulesets/istio/NAME.nft);
//! its read-back equals its expected ruleset; its `--dry-run` script passes `nft -c -f` and,
//! loaded with `nft -f` into a second fresh namespace, lists identically.
//! `MESHCAP_BLESS=1` rewrites the listing files instead of comparing.

mod common;

use common::{
    NFT_TABLES, blessing, istio_cases, istio_conformance, meshcap, meshcap_in, plan_of, repo,
    scenarios, without_counters,
};
use meshcap::backend::Firewall;
use meshcap::backend::nftables::NftablesBackend;
use netns_test_harness::{Netns, require_root};
use std::path::PathBuf;

/// The listing of meshcap's tables that exist in `ns`, in nat, mangle, raw order.
pub fn listing(ns: &Netns) -> String {
    let mut out = String::new();
    for t in NFT_TABLES {
        let o = ns.exec(&["nft", "list", "table", "inet", t]);
        if o.status.success() {
            out.push_str(&without_counters(&String::from_utf8_lossy(&o.stdout)));
        }
    }
    out
}

/// Applies one configuration and checks it; returns a failure description.
fn check(name: &str, args: &[String], env: &[(String, String)], golden: PathBuf) -> Option<String> {
    let mut args = args.to_vec();
    args.extend(["--backend".into(), "nftables".into()]);

    // Dry-run first: it needs no namespace and tells which groups cannot be resolved.
    let mut dry = args.clone();
    dry.push("--dry-run".into());
    let out = meshcap(&dry, env);
    if !out.status.success() {
        return Some(format!(
            "{name}: dry run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let script = String::from_utf8_lossy(&out.stdout).into_owned();

    let ns = Netns::new(&format!("nft{name}"));
    let out = meshcap_in(&ns, &args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Owner groups by name that this machine lacks cannot be matched: the run must fail
    // naming the group and leave nothing installed.
    let unknown: Vec<&str> = env
        .iter()
        .filter(|(k, _)| k.starts_with("ISTIO_OUTBOUND_OWNER_GROUPS"))
        .flat_map(|(_, v)| v.split(','))
        .filter(|g| {
            g.parse::<u32>().is_err() && nix::unistd::Group::from_name(g).ok().flatten().is_none()
        })
        .collect();
    if !unknown.is_empty() {
        if out.status.code() != Some(1) || !unknown.iter().any(|g| stderr.contains(g)) {
            return Some(format!(
                "{name}: expected a failure naming {unknown:?}, got {}: {stderr}",
                out.status
            ));
        }
        if !listing(&ns).is_empty() {
            return Some(format!("{name}: a refused run left tables behind"));
        }
        eprintln!("{name}: groups {unknown:?} do not exist here; checked the refusal only");
        return None;
    }
    if !out.status.success() {
        return Some(format!("{name}: apply failed ({}): {stderr}", out.status));
    }
    let got = listing(&ns);

    // Read-back equals expected (only for cases without environment: clap reads the process's).
    if env.is_empty() {
        let plan = plan_of(&args);
        let (p, b) = (plan.clone(), NftablesBackend);
        let read = ns.run(move || b.read_back(&p)).expect("read back");
        let diff = read.diff(&NftablesBackend.expected(&plan));
        if !diff.is_empty() {
            return Some(format!(
                "{name}: read-back differs from expected: {diff:#?}"
            ));
        }
    }

    // The dry-run script: valid, and loading it lists the same as the netlink install.
    let ns2 = Netns::new(&format!("nfs{name}"));
    let c = ns2.exec_with_input(&["nft", "-c", "-f", "-"], &script);
    if !c.status.success() {
        return Some(format!(
            "{name}: nft -c -f rejects the dry run: {}",
            String::from_utf8_lossy(&c.stderr)
        ));
    }
    let l = ns2.exec_with_input(&["nft", "-f", "-"], &script);
    if !l.status.success() {
        return Some(format!(
            "{name}: nft -f fails: {}",
            String::from_utf8_lossy(&l.stderr)
        ));
    }
    let scripted = listing(&ns2);
    if scripted != got {
        return Some(format!(
            "{name}: nft -f of the dry run lists differently:\n--- netlink\n{got}\n--- nft -f\n{scripted}"
        ));
    }

    if blessing() {
        std::fs::create_dir_all(golden.parent().expect("dir")).expect("mkdir");
        std::fs::write(&golden, &got).expect("write listing");
        return None;
    }
    match std::fs::read_to_string(&golden) {
        Ok(want) if want == got => None,
        Ok(want) => Some(format!(
            "{name}: listing differs from {}:\n--- expected\n{want}\n--- got\n{got}",
            golden.display()
        )),
        Err(e) => Some(format!(
            "{}: {e} (bless with MESHCAP_BLESS=1)",
            golden.display()
        )),
    }
}

#[test]
fn every_scenario_lists_its_nft_golden() {
    if !require_root("every_scenario_lists_its_nft_golden") {
        return;
    }
    let scenarios = scenarios();
    assert!(scenarios.len() >= 5);
    let failures: Vec<String> = scenarios
        .iter()
        .filter_map(|s| {
            check(
                &s.name,
                &s.args,
                &s.env,
                repo().join(format!("rulesets/{}.nft", s.name)),
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_istio_case_lists_its_nft_golden() {
    if !require_root("every_istio_case_lists_its_nft_golden") {
        return;
    }
    let Some(dir) = istio_conformance("every_istio_case_lists_its_nft_golden") else {
        return;
    };
    let cases = istio_cases(&dir);
    assert!(cases.len() >= 19);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            // `-n` is Istio's dry run (meshcap's too); these cases are applied for real.
            let args: Vec<String> = c.args.iter().filter(|a| *a != "-n").cloned().collect();
            check(
                &c.name,
                &args,
                &c.env,
                repo().join(format!("rulesets/istio/{}.nft", c.name)),
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
