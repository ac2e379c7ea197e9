//! The proxy's numbers, from bench/proxy_bench.rs: scripts/bench.sh runs it several times and
//! saves its output; each run ends with one JSON line (`{"bench":"proxy",…}`), read here.

use crate::stats::Summary;
use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Path {
    pub name: String,
    pub gbps: Summary,
    pub p50_us: Summary,
    pub p99_us: Summary,
    /// CPU time of the whole machine per GiB uploaded (None for outputs that predate it).
    pub cpu_s_per_gib: Option<Summary>,
    /// Busy CPUs during the upload, on average.
    pub cpus_busy: Option<Summary>,
    /// Per run: this path's throughput / direct's in the same run; then over the runs.
    pub vs_direct: Option<Summary>,
    /// Per run: this path's throughput / socat's in the same run.
    pub vs_socat: Option<Summary>,
    /// Per run: this path's p50 minus direct's p50 in the same run (µs).
    pub added_p50: Option<Summary>,
}

#[derive(Clone, Debug)]
pub struct Proxy {
    pub runs: usize,
    pub bytes: u64,
    pub rounds: u64,
    pub paths: Vec<Path>,
    pub rss_idle_kib: Option<Summary>,
    pub rss_loaded_kib: Option<Summary>,
    pub rss_peak_kib: Option<Summary>,
    pub files: Vec<String>,
}

impl Proxy {
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.paths.iter().find(|p| p.name == name)
    }
}

/// Reads the saved outputs named by `MESHCAP_PROXY_BENCH` (paths separated by `:`).
/// Err says why there are no numbers.
pub fn load() -> Result<Proxy, String> {
    let list = std::env::var("MESHCAP_PROXY_BENCH").map_err(|_| {
        "MESHCAP_PROXY_BENCH is not set (scripts/bench.sh runs the proxy benchmark and sets it)"
            .to_owned()
    })?;
    let files: Vec<String> = list
        .split(':')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut runs: Vec<Value> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        let found = text
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["bench"] == "proxy");
        runs.extend(found);
    }
    if runs.is_empty() {
        return Err(format!(
            "no proxy_bench JSON line in {} (did it run as root, with socat?)",
            files.join(", ")
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for r in &runs {
        for p in r["results"].as_array().into_iter().flatten() {
            if let Some(n) = p["name"].as_str()
                && !names.iter().any(|x| x == n)
            {
                names.push(n.to_owned());
            }
        }
    }
    let field = |name: &str, key: &str| -> Vec<f64> {
        runs.iter()
            .flat_map(|r| r["results"].as_array().into_iter().flatten())
            .filter(|p| p["name"] == name)
            .filter_map(|p| p[key].as_f64())
            .collect()
    };
    // Per run, a path's value relative to another path's in the same run.
    let relative = |name: &str, other: &str, key: &str, f: fn(f64, f64) -> f64| {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| {
                let rows = r["results"].as_array()?;
                let get = |n: &str| {
                    rows.iter()
                        .find(|p| p["name"] == n)
                        .and_then(|p| p[key].as_f64())
                };
                Some(f(get(name)?, get(other)?))
            })
            .collect();
        Summary::of(&v)
    };
    let paths = names
        .iter()
        .filter_map(|n| {
            Some(Path {
                name: n.clone(),
                gbps: Summary::of(&field(n, "gbps"))?,
                p50_us: Summary::of(&field(n, "p50_us"))?,
                p99_us: Summary::of(&field(n, "p99_us"))?,
                cpu_s_per_gib: Summary::of(&field(n, "cpu_s_per_gib")),
                cpus_busy: Summary::of(&field(n, "cpus_busy")),
                vs_direct: relative(n, "direct", "gbps", |a, b| a / b),
                vs_socat: relative(n, "socat", "gbps", |a, b| a / b),
                added_p50: relative(n, "direct", "p50_us", |a, b| a - b),
            })
        })
        .collect();
    let top = |key: &str| -> Option<Summary> {
        Summary::of(
            &runs
                .iter()
                .filter_map(|r| r[key].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    Ok(Proxy {
        runs: runs.len(),
        bytes: runs[0]["bytes"].as_u64().unwrap_or(0),
        rounds: runs[0]["rounds"].as_u64().unwrap_or(0),
        paths,
        rss_idle_kib: top("rss_idle_kib"),
        rss_loaded_kib: top("rss_1000_idle_conns_kib"),
        rss_peak_kib: top("rss_peak_kib"),
        files,
    })
}
