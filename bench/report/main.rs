//! The performance report (`make bench` → scripts/bench.sh → `cargo bench --bench report`).
//!
//! Runs, on this machine and in fresh network namespaces: apply time against list length
//! (meshcap's backends against `nft -f`, one iptables call per rule and the `ip netns exec`
//! floor), the data path's cost per new connection against list length, CNI mode's ADD against
//! the bridge plugin's, a pod's start through containerd's CRI with and without meshcap-cni, and
//! the footprint
//! (binary size, peak memory, runtime image); folds in the proxy benchmark's numbers (saved by
//! scripts/bench.sh, see `MESHCAP_PROXY_BENCH`); writes docs/BENCHMARKS.md and docs/*.svg.
//! Needs root. A bench target with `harness = false`: `cargo test` never runs it;
//! `cargo test --bench report` renders the page from sample measurements (sample.rs) instead.
//!
//! Environment:
//! * `MESHCAP_PROXY_BENCH`: `:`-separated files holding proxy_bench outputs.
//! * `MESHCAP_BENCH_SAMPLES` (default 15): kept samples per point (after one warm-up).
//! * `MESHCAP_BENCH_QUICK=1` (or the argument `quick`): a smoke run, N ≤ 1000, few samples.
//! * `MESHCAP_BENCH_PERRULE_BUDGET` (seconds, default 240): what the one-iptables-call-per-rule
//!   peer may take at N=10000.
//! * `MESHCAP_BENCH_OUT` (default docs/ of the workspace): where the report goes.
//! * `MESHCAP_BIN`: the meshcap binary (default: the one cargo built for this bench).

mod apply;
mod cni;
mod podstart;
// The tests' containerd node and API server (the pod start row runs on them); they name the
// binary and the repository through their parent module, this crate's root here.
#[allow(dead_code)]
#[path = "../../tests/common/apiserver.rs"]
mod apiserver;
#[allow(dead_code)]
#[path = "../../tests/common/containerd.rs"]
mod containerd;
// The tests' ztunnel stand-in (the ambient ADD row acks through it).
#[allow(dead_code)]
#[path = "../../tests/ambient_common/standin.rs"]
mod standin;
#[allow(dead_code)]
const MESHCAP: &str = env!("CARGO_BIN_EXE_meshcap");
#[allow(dead_code)]
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
mod datapath;
mod footprint;
mod page;
mod plot;
mod proxy;
mod sample;
mod stats;
mod sys;

use std::path::PathBuf;
use std::time::Instant;

pub struct Settings {
    pub meshcap: String,
    pub scratch: PathBuf,
    pub out: PathBuf,
    pub samples: usize,
    pub quick: bool,
    pub per_rule_budget: f64,
}

fn env_num(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a number")),
        Err(_) => default,
    }
}

/// Removes the scratch directory also when a measurement panics.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench targets without it,
    // and must not start a ten-minute benchmark that rewrites docs/: it checks the page's
    // rendering on sample measurements instead.
    if !std::env::args().any(|a| a == "--bench") {
        sample::check();
        podstart::check();
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("report: needs root (network namespaces); skipped");
        return;
    }
    let started = Instant::now();
    let quick = std::env::args().any(|a| a == "quick")
        || std::env::var("MESHCAP_BENCH_QUICK").as_deref() == Ok("1");
    let scratch = std::env::temp_dir().join(format!("meshcap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let _cleanup = Scratch(scratch.clone());
    let settings = Settings {
        meshcap: std::env::var("MESHCAP_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_meshcap").to_owned()),
        scratch,
        out: std::env::var_os("MESHCAP_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs")),
        samples: env_num("MESHCAP_BENCH_SAMPLES", if quick { 5.0 } else { 15.0 }).max(1.0) as usize,
        quick,
        per_rule_budget: env_num("MESHCAP_BENCH_PERRULE_BUDGET", 240.0),
    };
    netns_test_harness::remove_stale();
    let machine = sys::machine();
    eprintln!(
        "report: {} ({} CPUs), load {}, meshcap {}, {} samples per point{}",
        machine.model,
        machine.nproc,
        machine.load_start,
        settings.meshcap,
        settings.samples,
        if quick { " (quick)" } else { "" }
    );

    let t = Instant::now();
    let apply = apply::run(&settings);
    let apply_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let datapath = datapath::run(&settings);
    let datapath_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cni = cni::run(&settings);
    let cni_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let podstart = podstart::run(&settings);
    eprintln!(
        "report: pod start measured in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let footprint = footprint::run(&settings);
    let proxy = proxy::load();
    if let Err(e) = &proxy {
        eprintln!("report: proxy numbers missing: {e}");
    }

    std::fs::create_dir_all(&settings.out).expect("output directory");
    let report = page::Report {
        machine: &machine,
        load_end: sys::loadavg(),
        settings: &settings,
        apply: &apply,
        cni: &cni,
        datapath: &datapath,
        footprint: &footprint,
        proxy: proxy.as_ref(),
        durations: [
            ("apply time", apply_secs),
            ("data path", datapath_secs),
            ("CNI mode", cni_secs),
            (
                "report total (without builds and the proxy benchmark)",
                started.elapsed().as_secs_f64(),
            ),
        ],
    };
    let figures = page::figures(&report);
    let mut text = report.render(&figures);
    text.push('\n');
    text.push_str(&cni::section(&cni));
    text.push('\n');
    text.push_str(&podstart::section(&podstart));
    let path = settings.out.join("BENCHMARKS.md");
    std::fs::write(&path, text).expect("write BENCHMARKS.md");
    eprintln!(
        "report: wrote {} and {} figures in {:.0} s",
        path.display(),
        figures.iter().filter(|f| f.error.is_none()).count(),
        started.elapsed().as_secs_f64()
    );
    let left = netns_test_harness::own_namespaces();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
