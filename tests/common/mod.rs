//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod apiserver;
pub mod cni;

use std::path::PathBuf;
use std::process::{Command, Output};

pub const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/conformance/istio`, or `None` with a printed reason when the checkout has no
/// `../shared` (a user's clone). With MESHCAP_REQUIRE_SHARED=1 (CI) its absence is a failure.
pub fn istio_conformance(test: &str) -> Option<PathBuf> {
    let dir = repo().join("../shared/conformance/istio");
    if dir.join("cases.json").is_file() {
        return Some(dir);
    }
    let reason = format!(
        "{test}: skipped: {} is absent (no ../shared beside the checkout)",
        dir.display()
    );
    if std::env::var("MESHCAP_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("{reason} and MESHCAP_REQUIRE_SHARED=1 forbids skipping");
    }
    eprintln!("{reason}");
    None
}

/// Whether expected outputs are to be rewritten instead of compared.
pub fn blessing() -> bool {
    std::env::var("MESHCAP_BLESS").as_deref() == Ok("1")
}

/// A named scenario of rulesets/scenarios.json.
pub struct Scenario {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub fn scenarios() -> Vec<Scenario> {
    let text = std::fs::read_to_string(repo().join("rulesets/scenarios.json"))
        .expect("rulesets/scenarios.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("scenarios.json is JSON");
    json["scenarios"]
        .as_array()
        .expect("scenarios array")
        .iter()
        .map(|s| Scenario {
            name: s["name"].as_str().expect("name").to_owned(),
            args: s["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("arg").to_owned())
                .collect(),
            env: s["env"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().expect("env value").to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// An Istio conformance case with the flags that reproduce it (see the folder's README).
pub struct IstioCase {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub backends: Vec<String>,
}

pub fn istio_cases(dir: &std::path::Path) -> Vec<IstioCase> {
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|a| a.as_str().expect("string").to_owned())
            .collect()
    };
    let base = strings(&json["base_args"]);
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let mut args = base.clone();
            args.extend(strings(&c["extra_args"]));
            args.push("--ipv6".into());
            args.push(
                if c["enable_ipv6"].as_bool().expect("enable_ipv6") {
                    "on"
                } else {
                    "off"
                }
                .into(),
            );
            let mut dns = strings(&c["dns_servers_v4"]);
            dns.extend(strings(&c["dns_servers_v6"]));
            args.push("--dns-servers".into());
            args.push(dns.join(","));
            IstioCase {
                name: c["name"].as_str().expect("name").to_owned(),
                args,
                env: c["env"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().expect("env").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                backends: strings(&c["backends"]),
            }
        })
        .collect()
}

/// Runs the meshcap binary with exactly these arguments and extra environment variables.
/// Variables meshcap reads are cleared first, so the caller's environment cannot leak in.
pub fn meshcap(args: &[String], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(MESHCAP);
    for (k, _) in std::env::vars() {
        if k.starts_with("ISTIO_")
            || k.starts_with("MESHCAP_")
            || k.starts_with("INBOUND_")
            || k.starts_with("PROXY_")
        {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run meshcap")
}

/// The meaningful lines of a dry run or golden: trimmed, without comments, blanks and Istio's
/// bare `iptables-save` / `ip6tables-save` state reads.
pub fn rule_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && *l != "iptables-save" && *l != "ip6tables-save"
        })
        .map(str::to_owned)
        .collect()
}

/// A line-by-line report of the first differences between two texts.
pub fn first_difference(want: &[String], got: &[String]) -> String {
    let n = want.len().max(got.len());
    for i in 0..n {
        let (w, g) = (want.get(i), got.get(i));
        if w != g {
            return format!("line {}: expected {:?}, got {:?}", i + 1, w, g);
        }
    }
    "identical".into()
}
