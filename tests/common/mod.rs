//! Helpers shared by the integration tests: the binary and how to run it, Istio's conformance
//! data and the repository's scenarios, and comparisons of rule listings.
//!
//! A test that cannot run here (no root, no `../shared`) reports it through
//! `netns_test_harness::skip`, so that scripts/test.sh counts it as skipped.
#![allow(dead_code)]

pub mod apiserver;
pub mod cni;
pub mod configs;
pub mod containerd;
pub mod podman;

use netns_test_harness::Netns;
use netns_test_harness::skip::{Need, skip, skip_part};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");

/// meshcap's nftables tables, in nat, mangle, raw order.
pub const NFT_TABLES: [&str; 3] = ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"];

/// For the `env` argument of [`meshcap`] and [`meshcap_in`]: no variables.
pub const NO_ENV: &[(&str, &str)] = &[];

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Istio's default injected flags (`netns_test_harness::ISTIO_DEFAULT_ARGS`) followed by
/// `extra`, which override them as later flags do in Istio's CLI.
pub fn istio_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = netns_test_harness::ISTIO_DEFAULT_ARGS.to_vec();
    args.extend(extra);
    args
}

/// A process's stdout then stderr, for checks and messages that look at both.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics with meshcap's stderr unless it succeeded; returns its stderr (where it reports).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "meshcap failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn shared_istio() -> Result<PathBuf, String> {
    let dir = repo().join("../shared/conformance/istio");
    if dir.join("cases.json").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "{} is absent (no ../shared beside the checkout)",
            dir.display()
        ))
    }
}

/// `../shared/conformance/istio`, or `None` with `test` reported as skipped when the checkout has
/// no `../shared` (a user's clone). With MESHCAP_REQUIRE_SHARED=1 (CI) its absence is a failure.
pub fn istio_conformance(test: &str) -> Option<PathBuf> {
    match shared_istio() {
        Ok(dir) => Some(dir),
        Err(reason) => {
            skip(test, Need::Shared, &reason);
            None
        }
    }
}

/// As [`istio_conformance`] for a test that also checks other things: only its Istio cases are
/// reported as skipped.
pub fn istio_conformance_part(test: &str) -> Option<PathBuf> {
    match shared_istio() {
        Ok(dir) => Some(dir),
        Err(reason) => {
            skip_part(test, "the Istio cases", Need::Shared, &reason);
            None
        }
    }
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

/// Runs `cmd` with `stdin` written to its standard input; its output.
pub fn output_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("output")
}

/// Runs the meshcap binary with exactly these arguments and extra environment variables.
/// Variables meshcap reads are cleared first, so the caller's environment cannot leak in.
pub fn meshcap(
    args: &[impl AsRef<OsStr>],
    env: &[(impl AsRef<OsStr>, impl AsRef<OsStr>)],
) -> Output {
    run_clean(Command::new(MESHCAP), args, env)
}

/// As [`meshcap`], inside `ns`.
pub fn meshcap_in(
    ns: &Netns,
    args: &[impl AsRef<OsStr>],
    env: &[(impl AsRef<OsStr>, impl AsRef<OsStr>)],
) -> Output {
    run_clean(ns.command(&[MESHCAP]), args, env)
}

fn run_clean(
    mut cmd: Command,
    args: &[impl AsRef<OsStr>],
    env: &[(impl AsRef<OsStr>, impl AsRef<OsStr>)],
) -> Output {
    for (k, _) in std::env::vars() {
        if ["ISTIO_", "MESHCAP_", "INBOUND_", "PROXY_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run meshcap")
}

/// The plan meshcap builds from these flags (without `argv[0]`) on this host.
pub fn plan_of(args: &[String]) -> meshcap::plan::Plan {
    let mut argv = vec!["meshcap".to_owned()];
    argv.extend(args.iter().cloned());
    let inputs = meshcap::cli::Inputs::parse_from(argv, vec![]).expect("flags parse");
    let config = meshcap::config::Config::from_inputs(&inputs, &meshcap::config::SystemHost)
        .expect("valid config");
    meshcap::plan::build(&config.capture)
}

/// `counter packets N bytes M` → `counter`: counters move with traffic, rules do not.
pub fn without_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let mut kept = Vec::new();
        let mut i = 0;
        while i < words.len() {
            kept.push(words[i]);
            if words[i].trim() == "counter" && words.get(i + 1) == Some(&"packets") {
                i += 5;
            } else {
                i += 1;
            }
        }
        out.push_str(&kept.join(" "));
        out.push('\n');
    }
    out
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

/// The connections `meshcap proxy` counted (inbound, outbound), from its Prometheus metrics.
pub fn proxy_connections(metrics: &str) -> (u64, u64) {
    let value = |direction: &str| -> u64 {
        let key = format!("meshcap_connections_total{{direction=\"{direction}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {key} in the metrics:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    (value("inbound"), value("outbound"))
}

/// Deletes behind meshcap's back the rule of `inet table`'s chain `chain` that is `line` of an
/// `nft -a` listing (found by its `# handle N`); `what` names it when `line` is `None`.
pub fn delete_nft_rule(ns: &Netns, table: &str, chain: &str, line: Option<&str>, what: &str) {
    let handle = line
        .and_then(|l| l.rsplit("# handle ").next())
        .expect(what)
        .trim()
        .to_owned();
    ns.exec_ok(&[
        "nft", "delete", "rule", "inet", table, chain, "handle", &handle,
    ]);
}

/// Runs `f` on a thread inside the network namespace at `netns` (a pod's or container's).
pub fn in_netns<T: Send + 'static>(
    netns: &std::path::Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let file = std::fs::File::open(netns).expect("open the pod's namespace");
    std::thread::spawn(move || {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in the pod's namespace")
}

/// (inbound, outbound) connections the proxy in `netns` counted, from its metrics on
/// 127.0.0.1:15090.
pub fn proxy_connections_in(netns: &std::path::Path) -> (u64, u64) {
    use std::io::{Read, Write};
    use std::time::Duration;
    let text = in_netns(netns, || {
        let addr: std::net::SocketAddr = "127.0.0.1:15090".parse().unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /stats/prometheus HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    });
    proxy_connections(&text)
}

/// A plain HTTP/1.0 GET; the body of a 200 answer, trimmed.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let err = |e: std::io::Error| format!("GET {addr}{path}: {e}");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .map_err(err)?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .map_err(err)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(err)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(err)?;
    http_body(&format!("GET {addr}{path}"), &answer)
}

/// The body of a 200 answer, trimmed, with an IPv4-mapped address (`[::ffff:a.b.c.d]`, how
/// busybox httpd on a dual-stack socket reports IPv4 peers) shortened to `a.b.c.d`; an error
/// naming `what` otherwise. (The CGI script's header ends with a bare `\n\n`.)
pub fn http_body(what: &str, answer: &str) -> Result<String, String> {
    if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("{what}: {answer:?}"));
    }
    let body = answer
        .split_once("\r\n\r\n")
        .or_else(|| answer.split_once("\n\n"))
        .map(|(_, body)| body.trim())
        .ok_or_else(|| format!("{what}: no HTTP body: {answer:?}"))?;
    let unbracketed = body.trim_start_matches('[').trim_end_matches(']');
    Ok(unbracketed
        .strip_prefix("::ffff:")
        .unwrap_or(body)
        .to_owned())
}
