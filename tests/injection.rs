//! Istio's injector, exactly: every distinct init container of Istio's injector goldens
//! (`../shared/conformance/istio-injection/cases.json`: args, env, securityContext as injected)
//! runs with meshcap as its image's entrypoint.
//!
//! For each container:
//! * its args with `--dry-run` print exactly what the installer flags alone print (the args
//!   without pilot-agent's subcommand word and Istio's `--log_*` flags);
//! * `istio-init`: run in a fresh pod namespace as uid 0 with only `NET_ADMIN` and `NET_RAW` and
//!   no new privileges, it installs the rules; `meshcap diff` with the installer flags then finds
//!   no drift, and the same args after `istio-clean-iptables` remove them (and without
//!   `NET_ADMIN` it fails: the capability sets are in force);
//! * `istio-validation`: after the rules are installed, it passes as the container's uid and gid,
//!   with no capability, no new privileges and `/`, `/run`, `/tmp` read-only (a private mount
//!   namespace); in a namespace without rules it fails with 126.
//!
//! Without `../shared` the cases are skipped (a failure under MESHCAP_REQUIRE_SHARED=1).

mod common;

use common::{MESHCAP, text};
use netns_test_harness::skip::{Need, skip};
use netns_test_harness::{Netns, require_root};
use std::path::PathBuf;
use std::process::{Command, Output};

/// One init container as Istio's injector writes it.
#[derive(Clone)]
struct Injected {
    name: String,
    container: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    uid: u32,
    gid: u32,
    read_only_root: bool,
    added_caps: Vec<String>,
}

impl Injected {
    /// The installer's own flags: the args without pilot-agent's `istio-iptables` and Istio's
    /// logging flags.
    fn installer_flags(&self) -> Vec<String> {
        assert_eq!(self.args[0], "istio-iptables", "{}", self.name);
        self.args[1..]
            .iter()
            .filter(|a| {
                let logging = a.starts_with("--log_");
                assert!(!logging || a.contains('='), "{}: {a} without =", self.name);
                !logging
            })
            .cloned()
            .collect()
    }

    /// [`Injected::installer_flags`] without the validation's own flags: the rules the CNI
    /// plugin (or istio-init) installs before `istio-validation` checks them.
    fn rule_flags(&self) -> Vec<String> {
        self.installer_flags()
            .into_iter()
            .filter(|a| a != "--run-validation" && a != "--skip-rule-apply")
            .collect()
    }
}

fn shared_dir() -> PathBuf {
    common::repo().join("../shared/conformance/istio-injection")
}

/// The containers of cases.json, or `None` with `test` reported as skipped.
fn injected(test: &str) -> Option<Vec<Injected>> {
    let file = shared_dir().join("cases.json");
    let Ok(text) = std::fs::read_to_string(&file) else {
        skip(
            test,
            Need::Shared,
            &format!(
                "{} is absent (no ../shared beside the checkout)",
                file.display()
            ),
        );
        return None;
    };
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().expect("string").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let cases: Vec<Injected> = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let sc = &c["securityContext"];
            Injected {
                name: c["name"].as_str().expect("name").to_owned(),
                container: c["container"].as_str().expect("container").to_owned(),
                args: strings(&c["args"]),
                env: c["env"]
                    .as_array()
                    .expect("env")
                    .iter()
                    .map(|e| {
                        let value = e["value"].as_str().expect("env values are literal");
                        (
                            e["name"].as_str().expect("name").to_owned(),
                            value.to_owned(),
                        )
                    })
                    .collect(),
                uid: sc["runAsUser"].as_u64().expect("runAsUser") as u32,
                gid: sc["runAsGroup"].as_u64().expect("runAsGroup") as u32,
                read_only_root: sc["readOnlyRootFilesystem"].as_bool().expect("readOnly"),
                added_caps: strings(&sc["capabilities"]["add"]),
            }
        })
        .collect();
    assert_eq!(cases.len(), 12, "cases.json's containers");
    Some(cases)
}

/// `argv` with exactly the environment `env` (and a PATH for iptables): nothing of the test's
/// own environment leaks in.
fn run(argv: &[String], env: &[(String, String)]) -> Output {
    Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"))
}

fn meshcap(args: &[String], env: &[(String, String)]) -> Output {
    let mut argv = vec![MESHCAP.to_owned()];
    argv.extend(args.iter().cloned());
    run(&argv, env)
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[test]
fn injected_args_dry_run_prints_what_the_installer_flags_print() {
    let Some(cases) = injected("injected_args_dry_run_prints_what_the_installer_flags_print")
    else {
        return;
    };
    for case in &cases {
        let dry = |mut args: Vec<String>| {
            args.push("--dry-run".into());
            let out = meshcap(&args, &case.env);
            assert!(
                out.status.success(),
                "{}: {args:?}: {}",
                case.name,
                text(&out)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let want = dry(case.installer_flags());
        assert!(want.contains("ISTIO_OUTPUT"), "{}: {want}", case.name);
        assert_eq!(dry(case.args.clone()), want, "{}", case.name);
        // With `global.logAsJson` the injector adds --log_as_json.
        let mut json = case.args.clone();
        json.push("--log_as_json".into());
        assert_eq!(dry(json), want, "{} with --log_as_json", case.name);
    }
}

/// The mesh's proxyMetadata reaches the init container as environment variables: the
/// installer's own keep their meaning, the others change nothing.
#[test]
fn proxy_metadata_variables_keep_the_installers_meaning_and_others_are_ignored() {
    let mut args = vec!["istio-iptables"];
    args.extend(netns_test_harness::ISTIO_DEFAULT_ARGS);
    args.extend([
        "--log_output_level=default:info",
        "--dry-run",
        "--dns-servers",
        "192.0.2.53",
    ]);
    let args = strings(&args);
    let dry = |env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = meshcap(&args, &env);
        assert!(out.status.success(), "{env:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let bare = dry(&[]);
    // Variables of the injected sidecar's env and typical proxyMetadata: not the installer's.
    let foreign = [
        ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("ISTIO_META_INTERCEPTION_MODE", "TPROXY"),
        ("ISTIO_META_NETWORK", "network1"),
        ("ISTIO_META_MESH_ID", "cluster.local"),
        ("TRUST_DOMAIN", "cluster.local"),
        ("PROXY_CONFIG", "{\"interceptionMode\":\"TPROXY\"}"),
        ("ISTIO_META_ENABLE_HBONE", "true"),
        ("BOOTSTRAP_XDS_AGENT", "true"),
    ];
    assert_eq!(dry(&foreign), bare, "foreign variables changed the rules");
    // Istio's DNS capture switch (proxyMetadata ISTIO_META_DNS_CAPTURE) is the installer's.
    let mut dns = foreign.to_vec();
    dns.push(("ISTIO_META_DNS_CAPTURE", "true"));
    let with_dns = dry(&dns);
    assert!(!bare.contains("15053"), "{bare}");
    assert!(
        with_dns.contains("--to-ports 15053"),
        "ISTIO_META_DNS_CAPTURE=true must capture DNS:\n{with_dns}"
    );
}

/// `setpriv` words for a container's identity: its uid and gid, no supplementary group, no new
/// privileges, and only `caps` (lower case, e.g. `net_admin`) in every capability set.
fn identity(uid: u32, gid: u32, caps: &[String]) -> Vec<String> {
    let set: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut words = strings(&["setpriv", "--reuid"]);
    words.push(uid.to_string());
    words.push("--regid".into());
    words.push(gid.to_string());
    words.extend(strings(&["--clear-groups", "--no-new-privs"]));
    words.push(format!("--inh-caps={set}"));
    words.push(format!("--bounding-set={set}"));
    if uid != 0 && !caps.is_empty() {
        words.push(format!("--ambient-caps={set}"));
    }
    words
}

/// Runs `args` (meshcap's) as the container would: in `ns`, as its identity, and with `/`,
/// `/run` and `/tmp` read-only when its root filesystem is (a private mount namespace: the
/// machine's mounts are untouched).
fn run_as_container(ns: &Netns, case: &Injected, args: &[String]) -> Output {
    // The rest of the arguments: setpriv's words, meshcap and its args.
    const READ_ONLY: &str = r#"set -e
for d in /run /tmp; do mount --rbind "$d" "$d"; done
for d in / /run /tmp; do mount -o remount,ro,bind "$d"; done
if touch /tmp/.meshcap-injection-rw 2>/dev/null; then
    rm -f /tmp/.meshcap-injection-rw; echo "/tmp is writable" >&2; exit 99
fi
exec "$@""#;
    let mut argv = vec![
        "nsenter".to_owned(),
        format!("--net={}", ns.path().display()),
    ];
    if case.read_only_root {
        argv.extend(strings(&[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
        ]));
        argv.extend([READ_ONLY.to_owned(), "sh".to_owned()]);
    }
    argv.extend(identity(case.uid, case.gid, &case.added_caps));
    argv.push(MESHCAP.to_owned());
    argv.extend(args.iter().cloned());
    run(&argv, &case.env)
}

#[test]
fn istio_init_installs_with_only_net_admin_and_net_raw_and_diff_finds_no_drift() {
    let test = "istio_init_installs_with_only_net_admin_and_net_raw_and_diff_finds_no_drift";
    if !require_root(test) {
        return;
    }
    let Some(cases) = injected(test) else {
        return;
    };
    let inits: Vec<&Injected> = cases
        .iter()
        .filter(|c| c.container == "istio-init")
        .collect();
    assert_eq!(inits.len(), 10);
    // The capability sets are in force: without NET_ADMIN the same container cannot install.
    let without_net_admin = Injected {
        added_caps: vec!["NET_RAW".into()],
        ..inits[0].clone()
    };
    let ns = Netns::new("noadmin");
    let out = run_as_container(&ns, &without_net_admin, &without_net_admin.args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    drop(ns);
    for case in inits {
        assert_eq!(
            (case.uid, case.gid, case.read_only_root),
            (0, 0, false),
            "{}",
            case.name
        );
        assert_eq!(case.added_caps, ["NET_ADMIN", "NET_RAW"], "{}", case.name);
        let ns = Netns::new("inject");
        let out = run_as_container(&ns, case, &case.args);
        assert!(out.status.success(), "{}: {}", case.name, text(&out));
        let mut diff = vec![
            "nsenter".to_owned(),
            format!("--net={}", ns.path().display()),
            MESHCAP.to_owned(),
            "diff".to_owned(),
        ];
        diff.extend(case.installer_flags());
        let out = run(&diff, &case.env);
        assert_eq!(out.status.code(), Some(0), "{}: {}", case.name, text(&out));
        assert!(
            text(&out).contains("in sync"),
            "{}: {}",
            case.name,
            text(&out)
        );
        // pilot-agent's istio-clean-iptables, with the same args, removes them again.
        let mut clean = case.args.clone();
        clean[0] = "istio-clean-iptables".into();
        let out = run_as_container(&ns, case, &clean);
        assert!(out.status.success(), "{}: {}", case.name, text(&out));
        let out = run(&diff, &case.env);
        assert_eq!(out.status.code(), Some(3), "{}: {}", case.name, text(&out));
    }
}

#[test]
fn istio_validation_passes_as_injected_once_the_rules_redirect() {
    let test = "istio_validation_passes_as_injected_once_the_rules_redirect";
    if !require_root(test) {
        return;
    }
    let Some(cases) = injected(test) else {
        return;
    };
    let validations: Vec<&Injected> = cases
        .iter()
        .filter(|c| c.container == "istio-validation")
        .collect();
    assert_eq!(validations.len(), 2);
    for case in validations {
        assert!(case.uid != 0 && case.read_only_root, "{}", case.name);
        assert!(case.added_caps.is_empty(), "{}", case.name);
        // Without rules the probe is not redirected: 126 (a short probe keeps this quick).
        let bare = Netns::new("novalid");
        let mut quick = case.args.clone();
        quick.extend(strings(&["--probe-timeout", "1s"]));
        let out = run_as_container(&bare, case, &quick);
        assert_eq!(
            out.status.code(),
            Some(126),
            "{}: {}",
            case.name,
            text(&out)
        );
        drop(bare);

        // The rules of the same flags, installed as the CNI plugin would (as root).
        let ns = Netns::new("valid");
        let mut install = vec![
            "nsenter".to_owned(),
            format!("--net={}", ns.path().display()),
        ];
        install.push(MESHCAP.to_owned());
        install.extend(case.rule_flags());
        let out = run(&install, &case.env);
        assert!(out.status.success(), "{}: {}", case.name, text(&out));
        let out = run_as_container(&ns, case, &case.args);
        assert_eq!(out.status.code(), Some(0), "{}: {}", case.name, text(&out));
        assert!(
            text(&out).contains("validation passed"),
            "{}: {}",
            case.name,
            text(&out)
        );
    }
}
