//! Apply-time benchmark (run as root: `cargo bench --bench nft_apply`; not part of `cargo test`).
//!
//! In fresh network namespaces, times how long installing Istio's default configuration takes,
//! and the same with 1000 excluded inbound ports and 1000 excluded CIDRs, for:
//! meshcap's nftables backend (netlink), meshcap's iptables backend through iptables-nft-restore
//! and iptables-legacy-restore, `nft -f` of meshcap's dry-run script, and the floor
//! `ip netns exec NS true`. Every measurement runs through `ip netns exec`, so all include the same
//! exec floor. Prints medians and ratios from one run. Uses the meshcap binary built next to this
//! benchmark (build it with `cargo build --release` first).

use netns_test_harness::{ISTIO_DEFAULT_ARGS, Netns};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 21;

fn meshcap_bin() -> String {
    if let Ok(path) = std::env::var("MESHCAP_BIN") {
        return path;
    }
    // target/release/deps/nft_apply-… → target/release/meshcap
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("meshcap").to_string_lossy().into_owned()
}

fn default_args() -> Vec<String> {
    ISTIO_DEFAULT_ARGS
        .iter()
        .chain(&["--ipv6", "off"])
        .map(|s| s.to_string())
        .collect()
}

fn long_args() -> Vec<String> {
    let ports: Vec<String> = (1..=1000).map(|p| p.to_string()).collect();
    let cidrs: Vec<String> = (0..1000)
        .map(|i| format!("10.{}.{}.0/24", i / 100, (i % 100) * 2))
        .collect();
    let mut args = default_args();
    args.extend(["-d".into(), ports.join(","), "-x".into(), cidrs.join(",")]);
    args
}

/// Median wall time of `argv` run via `ip netns exec` in a fresh namespace each time.
fn time(argv: &[String], stdin: Option<&str>) -> Duration {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let ns = Netns::new("bench");
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = ns.command(&refs);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let start = Instant::now();
        let mut child = cmd.spawn().expect("spawn");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
        }
        let out = child.wait_with_output().expect("wait");
        let elapsed = start.elapsed();
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        samples.push(elapsed);
    }
    samples.sort();
    samples[RUNS / 2]
}

fn ms(d: Duration) -> String {
    format!("{:7.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("nft_apply: needs root to create network namespaces; skipped");
        return;
    }
    let bin = meshcap_bin();
    let floor = time(&["true".to_owned()], None);
    println!("floor (ip netns exec NS true): {}", ms(floor));
    let mut default_netlink: Option<Duration> = None;
    for (label, args) in [
        ("default", default_args()),
        ("1000 ports + 1000 CIDRs", long_args()),
    ] {
        let run = |extra: &[&str]| -> Vec<String> {
            let mut v = vec![bin.clone()];
            v.extend(args.iter().cloned());
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let script = Command::new(&bin)
            .args(&args)
            .args(["--backend", "nftables", "--dry-run"])
            .output()
            .expect("dry run");
        let script = String::from_utf8_lossy(&script.stdout).into_owned();
        let netlink = time(&run(&["--backend", "nftables"]), None);
        let ipt_nft = time(
            &run(&["--backend", "iptables", "--force-iptables-binary", "nft"]),
            None,
        );
        let ipt_legacy = time(
            &run(&["--backend", "iptables", "--force-iptables-binary", "legacy"]),
            None,
        );
        let nft_f = time(
            &["nft".to_owned(), "-f".to_owned(), "-".to_owned()],
            Some(&script),
        );
        println!("\n{label} (median of {RUNS}, each in a fresh namespace):");
        println!("  meshcap nftables (netlink)     {}", ms(netlink));
        println!("  meshcap iptables-nft-restore   {}", ms(ipt_nft));
        println!("  meshcap iptables-legacy-restore{}", ms(ipt_legacy));
        println!("  nft -f dry-run script          {}", ms(nft_f));
        let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "  netlink / floor                {:5.2}x",
            r(netlink, floor)
        );
        println!(
            "  nft -f / netlink               {:5.2}x",
            r(nft_f, netlink)
        );
        println!(
            "  iptables-nft / netlink         {:5.2}x",
            r(ipt_nft, netlink)
        );
        println!(
            "  iptables-legacy / netlink      {:5.2}x",
            r(ipt_legacy, netlink)
        );
        match default_netlink {
            None => default_netlink = Some(netlink),
            Some(default) => println!(
                "  netlink 1000+1000 / default    {:5.2}x",
                r(netlink, default)
            ),
        }
    }
}
