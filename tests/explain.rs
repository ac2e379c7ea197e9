//! `meshcap explain` against where connections really land.
//!
//! For every configuration of the probe matrix (rulesets/scenarios.json and Istio's conformance
//! cases, mapped onto the standard pod as tests/probes.rs maps them) and every probe of
//! `standard_matrix()`, the probe becomes a `--flow` (its user, protocol, destination, source,
//! and the interface the standard pod routes it over) and explain's verdict must equal:
//!
//! - plan mode (no privileges): the expected table rulesets/NAME.probes, which
//!   tests/probes.rs proves is where every probe's connection lands under every backend;
//!   explained in both spellings (iptables and nftables read-back text);
//! - `--kernel` mode (root): where the probe's connection really lands, probed in a fresh pod
//!   right after installing with the iptables backend (iptables-legacy) or the nftables
//!   backend, with explain reading back what that pod's namespace holds (and no drift).
//!
//! Outcome classes map onto verdicts: captured-outbound/-inbound/-dns (the pod's listeners on
//! 15001, 15006, 15053) onto the same verdict with that port, `direct app|server` onto
//! `direct`, refused and timeout onto `dropped`; `error` rows (the source address could not
//! be bound, so no packet was sent) are skipped.

mod common;

use common::configs::istio_flags;
use common::{IstioCase, NO_ENV, istio_cases, istio_conformance_part, meshcap, repo, scenarios};
use netns_test_harness::pod::{
    DNS_CAPTURE_PORT, INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT, PROXY_ID, Pod, standard_matrix,
};
use netns_test_harness::probe::{Class, From, Outcome, Probe, Proto, parse_table};
use netns_test_harness::{User, require_root};
use std::net::{IpAddr, SocketAddr};

#[derive(Clone)]
struct Config {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    expected: std::path::PathBuf,
}

fn configs(test: &str) -> Vec<Config> {
    let mut all: Vec<Config> = scenarios()
        .into_iter()
        .map(|s| Config {
            expected: repo().join(format!("rulesets/{}.probes", s.name)),
            name: s.name,
            args: s.args,
            env: s.env,
        })
        .collect();
    if let Some(dir) = istio_conformance_part(test) {
        let cases = istio_cases(&dir);
        assert_eq!(cases.len(), 19, "the conformance set has 19 cases");
        all.extend(cases.into_iter().map(|c: IstioCase| {
            let (args, env) = istio_flags(&c);
            Config {
                expected: repo().join(format!("rulesets/istio/{}.probes", c.name)),
                args,
                env,
                name: c.name,
            }
        }));
    }
    all
}

/// The pod's end of each peer's link, and the peer's addresses.
fn peer(role: &str) -> (&'static str, &'static str, &'static str) {
    match role {
        "net" => ("net0", "192.0.2.2", "2001:db8:100::2"),
        "side" => ("exc0", "192.0.2.130", "2001:db8:101::2"),
        "vm0" => ("virt0", "192.0.2.146", "2001:db8:102::2"),
        "vm1" => ("virt1", "192.0.2.162", "2001:db8:103::2"),
        _ => panic!("peer {role}"),
    }
}

/// The interface the standard pod sends `dst` over, and the source address it picks there.
fn route(dst: IpAddr) -> (&'static str, Option<&'static str>) {
    let own = ["192.0.2.1", "2001:db8:100::1"];
    if dst.is_loopback() || own.contains(&dst.to_string().as_str()) {
        return ("lo", None);
    }
    match (dst.to_string().as_str(), dst.is_ipv4()) {
        ("198.51.100.77", _) => ("exc0", Some("192.0.2.129")),
        ("2001:db8:1::77", _) => ("exc0", Some("2001:db8:101::1")),
        (_, true) => ("net0", Some("192.0.2.1")),
        (_, false) => ("net0", Some("2001:db8:100::1")),
    }
}

fn flow(probe: &Probe) -> String {
    let proto = match probe.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let dst: SocketAddr = probe.dst;
    match &probe.from {
        From::Peer(role) => {
            let (iif, v4, v6) = peer(role);
            let src = if dst.is_ipv4() { v4 } else { v6 };
            format!("dir=in proto={proto} dst={dst} src={src} iif={iif}")
        }
        From::Pod(user) => {
            let (oif, picked) = route(dst.ip());
            let mut words = format!(
                "dir=out proto={proto} dst={dst} uid={} gid={} oif={oif}",
                user.uid, user.gid
            );
            if let Some(src) = probe
                .src
                .map(|s| s.to_string())
                .or(picked.map(str::to_owned))
            {
                words.push_str(&format!(" src={src}"));
            }
            words
        }
    }
}

/// The verdict an outcome stands for; `None` when no packet was sent.
fn verdict_of(outcome: &Outcome) -> Option<String> {
    Some(match outcome.class {
        Class::CapturedOutbound => format!("captured-outbound {OUTBOUND_CAPTURE_PORT}"),
        Class::CapturedInbound => format!("captured-inbound {INBOUND_CAPTURE_PORT}"),
        Class::CapturedDns => format!("captured-dns {DNS_CAPTURE_PORT}"),
        Class::Direct => "direct".into(),
        Class::Refused | Class::Timeout => "dropped".into(),
        Class::Error => return None,
    })
}

/// Runs `meshcap explain ARGS EXTRA --json --flow …` and returns one object per flow.
fn explain(cfg: &Config, extra: &[&str], flows: &[String]) -> Vec<serde_json::Value> {
    let mut args = vec!["explain".to_owned()];
    args.extend(cfg.args.iter().cloned());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--json".into());
    for f in flows {
        args.push("--flow".into());
        args.push(f.clone());
    }
    let out = meshcap(&args, &cfg.env);
    assert!(
        out.status.success(),
        "{}: meshcap explain failed ({}): {}",
        cfg.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("explain --json prints JSON lines"))
        .collect();
    assert_eq!(
        objects.len(),
        flows.len(),
        "{}: one object per flow",
        cfg.name
    );
    objects
}

/// Panics at the first probe whose landing explain does not predict.
fn compare(
    cfg: &Config,
    mode: &str,
    rows: &[(Probe, Outcome)],
    explained: &[serde_json::Value],
) -> usize {
    let mut compared = 0;
    for ((probe, outcome), ex) in rows.iter().zip(explained) {
        let Some(landed) = verdict_of(outcome) else {
            continue;
        };
        compared += 1;
        let said = ex["verdict"].as_str().expect("verdict");
        if said != landed {
            let path: Vec<String> = ex["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .filter(|s| s["matched"] == true)
                .map(|s| format!("    {} {}: {}", s["table"], s["chain"], s["rule"]))
                .collect();
            panic!(
                "{} [{mode}]: probe `{probe}` landed {outcome} ({landed}) but explain says {said}\n  flags: {}\n  flow: {}\n  matched rules:\n{}",
                cfg.name,
                cfg.args.join(" "),
                ex["flow"],
                path.join("\n")
            );
        }
    }
    compared
}

/// Every nftables rule explain shows reads as `nft` syntax: nothing the renderer did not
/// recognise (shown in brackets) and no header field it could not name (`@nh,128,32`).
fn nft_syntax_only(cfg: &Config, explained: &[serde_json::Value]) {
    for ex in explained {
        for step in ex["steps"].as_array().expect("steps") {
            let Some(rule) = step["rule"].as_str() else {
                continue;
            };
            assert!(
                !rule.contains('[') && !rule.contains('@'),
                "{}: not nft syntax: {rule}",
                cfg.name
            );
        }
    }
}

fn probe_flows(rows: &[(Probe, Outcome)]) -> Vec<String> {
    rows.iter().map(|(p, _)| flow(p)).collect()
}

#[test]
fn plan_verdicts_equal_the_probe_tables() {
    let configs = configs("plan_verdicts_equal_the_probe_tables");
    let mut compared = 0;
    for cfg in &configs {
        let text = std::fs::read_to_string(&cfg.expected)
            .unwrap_or_else(|e| panic!("{}: {e}", cfg.expected.display()));
        let rows = parse_table(&text).unwrap_or_else(|e| panic!("{}: {e}", cfg.name));
        let flows = probe_flows(&rows);
        for (spelling, extra) in [
            ("iptables", &[][..]),
            ("nftables", &["--backend", "nftables"][..]),
        ] {
            let explained = explain(cfg, extra, &flows);
            if spelling == "nftables" {
                nft_syntax_only(cfg, &explained);
            }
            compared += compare(
                cfg,
                &format!("plan, {spelling} spelling"),
                &rows,
                &explained,
            );
        }
    }
    println!(
        "{} configurations, {compared} probe verdicts (both spellings) equal the probe tables",
        configs.len()
    );
    assert!(configs.len() >= 9);
}

/// The proxy's identity in a configuration (as tests/probes.rs picks it): the DNS capture
/// listener must be its socket.
fn proxy_user(args: &[String]) -> User {
    let first = |flags: &[&str]| {
        args.windows(2)
            .filter(|w| flags.contains(&w[0].as_str()))
            .map(|w| w[1].as_str())
            .next_back()
            .and_then(|v| v.split(',').find(|s| !s.is_empty()))
            .map(|v| v.parse::<u32>().expect("numeric id"))
    };
    let uid = first(&["-u", "--proxy-uid"]).unwrap_or(PROXY_ID);
    User::new(uid, first(&["-g", "--proxy-gid"]).unwrap_or(uid))
}

fn install(pod: &Pod, cfg: &Config, backend: &[&str]) {
    let mut args = cfg.args.clone();
    args.extend(backend.iter().map(|s| s.to_string()));
    args.extend([
        "--network-namespace".into(),
        pod.pod.path().display().to_string(),
    ]);
    let out = meshcap(&args, &cfg.env);
    assert!(
        out.status.success(),
        "{}: install failed: {}",
        cfg.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kernel_verdicts_equal_real_traffic() {
    if !require_root("kernel_verdicts_equal_real_traffic") {
        return;
    }
    let configs = configs("kernel_verdicts_equal_real_traffic");
    let mut compared = 0;
    for (name, backend) in [
        ("iptables", &["--force-iptables-binary", "legacy"][..]),
        ("nftables", &["--backend", "nftables"][..]),
    ] {
        for cfg in &configs {
            let pod = Pod::with_proxy("xk", proxy_user(&cfg.args));
            install(&pod, cfg, backend);
            let rows = pod.probe(&standard_matrix());
            let ns = pod.pod.path().display().to_string();
            let mut extra = backend.to_vec();
            extra.extend(["--kernel", "--network-namespace", &ns]);
            let explained = explain(cfg, &extra, &probe_flows(&rows));
            // A fresh install reads back exactly as planned (for every case, dns-uid-gid's
            // IPv4-compatible IPv6 resolver included).
            let drift = &explained[0]["drift"];
            assert!(
                drift.as_array().is_none_or(|d| d.is_empty()),
                "{} [{name}]: drift after a fresh install: {drift}",
                cfg.name
            );
            compared += compare(cfg, &format!("kernel, {name} backend"), &rows, &explained);
        }
    }
    println!(
        "{} configurations x 2 backends: {compared} kernel verdicts equal real traffic",
        configs.len()
    );
}

/// Deletes the proxy uid's RETURN rule from the pod's ISTIO_OUTPUT / istio-output.
fn delete_proxy_uid_return(pod: &Pod, backend: &str) {
    let out = match backend {
        "iptables" => pod.pod.exec(&[
            "iptables-legacy",
            "-t",
            "nat",
            "-D",
            "ISTIO_OUTPUT",
            "-m",
            "owner",
            "--uid-owner",
            "1337",
            "-j",
            "RETURN",
        ]),
        _ => {
            let listing = pod.pod.exec_ok(&[
                "nft",
                "-a",
                "list",
                "chain",
                "inet",
                "istio-proxy-nat",
                "istio-output",
            ]);
            let line = listing
                .lines()
                .find(|l| {
                    l.contains("skuid 1337")
                        && l.contains("return")
                        && !l.contains("!=")
                        && !l.contains("oifname")
                })
                .unwrap_or_else(|| panic!("no proxy-uid return rule in:\n{listing}"));
            let handle = line.rsplit("handle ").next().expect("handle").trim();
            pod.pod.exec(&[
                "nft",
                "delete",
                "rule",
                "inet",
                "istio-proxy-nat",
                "istio-output",
                "handle",
                handle,
            ])
        }
    };
    assert!(
        out.status.success(),
        "deleting the rule: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kernel_reports_drift_and_the_new_landing_after_tampering() {
    if !require_root("kernel_reports_drift_and_the_new_landing_after_tampering") {
        return;
    }
    let cfg = configs("kernel_reports_drift_and_the_new_landing_after_tampering")
        .into_iter()
        .find(|c| c.name == "istio-default")
        .expect("scenario istio-default");
    let proxy_flow = vec!["dir=out dst=198.51.100.10:80 uid=1337 gid=1000 oif=net0".to_owned()];
    let plan = explain(&cfg, &[], &proxy_flow);
    assert_eq!(
        plan[0]["verdict"], "direct",
        "the plan leaves the proxy's own traffic alone"
    );
    for (name, backend) in [
        ("iptables", &["--force-iptables-binary", "legacy"][..]),
        ("nftables", &["--backend", "nftables"][..]),
    ] {
        let pod = Pod::new("xt");
        install(&pod, &cfg, backend);
        delete_proxy_uid_return(&pod, name);
        let ns = pod.pod.path().display().to_string();
        let mut extra = backend.to_vec();
        extra.extend(["--kernel", "--network-namespace", &ns]);
        let ex = explain(&cfg, &extra, &proxy_flow);
        assert_eq!(
            ex[0]["verdict"], "captured-outbound 15001",
            "[{name}] {}",
            ex[0]
        );
        let drift: Vec<&str> = ex[0]["drift"]
            .as_array()
            .expect("drift")
            .iter()
            .map(|d| d.as_str().expect("line"))
            .collect();
        let owner = if name == "iptables" {
            "-m owner --uid-owner 1337 -j RETURN"
        } else {
            "meta skuid 1337 counter packets 0 bytes 0 return"
        };
        assert!(
            drift.len() == 1 && drift[0].contains("missing: ") && drift[0].ends_with(owner),
            "[{name}] drift: {drift:?}"
        );
        // The text output says so before it explains.
        let mut args = vec!["explain".to_owned()];
        args.extend(cfg.args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--flow".to_owned(), proxy_flow[0].clone()]);
        let out = meshcap(&args, &cfg.env);
        let text = String::from_utf8_lossy(&out.stdout);
        let drift_at = text.find("differ from the plan").expect("drift reported");
        assert!(
            drift_at < text.find("\nflow ").expect("flow explained"),
            "{text}"
        );
        assert!(text.contains("verdict: captured-outbound 15001"), "{text}");
        // And that is where the proxy's connection really goes now.
        pod.assert_table(
            "pod 1337:1000 tcp 198.51.100.10:80 -> captured-outbound 198.51.100.10:80",
        );
    }
}

/// A plan no backend can install (an owner group this system does not know) is refused in both
/// spellings, naming the group, instead of explained with a rule that matches nobody.
#[test]
fn plan_with_an_unknown_owner_group_is_refused() {
    for backend in ["iptables", "nftables"] {
        let mut args = vec!["explain"];
        args.extend(netns_test_harness::ISTIO_DEFAULT_ARGS);
        args.extend([
            "--backend",
            backend,
            "--flow",
            "dir=out dst=198.51.100.10:80 uid=1000 gid=1000",
        ]);
        let out = meshcap(
            &args,
            &[("ISTIO_OUTBOUND_OWNER_GROUPS", "meshcap-no-such-group")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "[{backend}] {stderr}");
        assert!(
            stderr.contains("meshcap-no-such-group"),
            "[{backend}] {stderr}"
        );
    }
}

#[test]
fn bad_flow_words_exit_2_naming_the_word() {
    for (flow, word) in [
        ("dir=out dst=198.51.100.10", "dst=198.51.100.10"),
        ("dir=out dst=198.51.100.10:80 proto=sctp", "proto=sctp"),
        ("dir=in dst=192.0.2.1:80 uid=1337", "uid=1337"),
        ("dst=192.0.2.1:80", "dir="),
    ] {
        let args: Vec<String> = ["explain", "-u", "1337", "--flow", flow]
            .map(str::to_owned)
            .to_vec();
        let out = meshcap(&args, NO_ENV);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flow}: {stderr}");
        assert!(stderr.contains(word), "{flow}: {stderr}");
    }
}

#[test]
fn kernel_sees_ipv6_rules_the_flags_leave_out() {
    if !require_root("kernel_sees_ipv6_rules_the_flags_leave_out") {
        return;
    }
    let cfg = configs("kernel_sees_ipv6_rules_the_flags_leave_out")
        .into_iter()
        .find(|c| c.name == "istio-default")
        .expect("scenario istio-default");
    let with_ipv6 = Config {
        args: cfg
            .args
            .iter()
            .map(|a| if a == "off" { "on".into() } else { a.clone() })
            .collect(),
        ..cfg.clone()
    };
    let flow = vec!["dir=out dst=[2001:db8:1::10]:80 uid=1000 gid=1000 oif=net0".to_owned()];
    assert_eq!(explain(&cfg, &[], &flow)[0]["verdict"], "direct");
    for backend in [
        &["--force-iptables-binary", "legacy"][..],
        &["--backend", "nftables"][..],
    ] {
        let pod = Pod::new("x6");
        install(&pod, &with_ipv6, backend);
        let ns = pod.pod.path().display().to_string();
        let mut extra = backend.to_vec();
        extra.extend(["--kernel", "--network-namespace", &ns]);
        let ex = &explain(&cfg, &extra, &flow)[0];
        assert_eq!(
            ex["verdict"], "captured-outbound 15001",
            "{backend:?}: {ex}"
        );
        assert!(
            ex["drift"]
                .as_array()
                .expect("drift")
                .iter()
                .any(|d| d.as_str().expect("line").contains(": extra: ")),
            "{backend:?}: {ex}"
        );
    }
}

/// The README's example is the command's real output.
#[test]
fn readme_example_is_real_output() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split("## Where did my connection go?")
        .nth(1)
        .expect("README section");
    let block = section
        .split("```\n")
        .nth(1)
        .expect("code block")
        .trim_end();
    let (command, shown) = block.split_once("\nrules: ").expect("command, then output");
    let mut args = vec!["explain".to_owned()];
    args.extend(netns_test_harness::ISTIO_DEFAULT_ARGS.map(str::to_owned));
    args.extend(
        [
            "--ipv6",
            "off",
            "--flow",
            "dir=out dst=198.51.100.10:80 uid=1000 gid=1000",
            "--flow",
            "dir=in dst=192.0.2.1:15020 iif=eth0",
            "--flow",
            "dir=out dst=198.51.100.10:80 uid=1337 gid=1337",
        ]
        .map(str::to_owned),
    );
    for a in &args[1..] {
        assert!(command.contains(a.as_str()), "README command lacks {a:?}");
    }
    let out = meshcap(&args, NO_ENV);
    assert!(out.status.success());
    assert_eq!(
        format!("rules: {shown}"),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "README.md's explain example differs from the real output"
    );
    // The nftables spelling of the first flow: `nft` syntax.
    let block = section
        .split("```\n")
        .nth(3)
        .expect("second code block")
        .trim_end();
    let (command, shown) = block.split_once("\nrules: ").expect("command, then output");
    let mut args: Vec<String> = args[..args.len() - 4].to_vec();
    args.extend(["--backend", "nftables"].map(str::to_owned));
    for a in &args[1..] {
        assert!(command.contains(a.as_str()), "README command lacks {a:?}");
    }
    let out = meshcap(&args, NO_ENV);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        format!("rules: {shown}"),
        text.trim_end(),
        "README.md's nftables explain example differs from the real output"
    );
    assert!(text.contains("meta l4proto tcp counter redirect to :15001 => accept"));
}

#[test]
fn help_describes_flows_and_verdicts() {
    let out = meshcap(&["explain", "--help"], NO_ENV);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in [
        "--flow",
        "dir=out|in",
        "--kernel",
        "--json",
        "captured-dns PORT",
        "dropped",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}
