//! The page rendered from fixed, made-up measurements, without root or a benchmark run: what
//! `cargo test --bench report` does (the report runs only under `cargo bench`). It checks that
//! every part of the page renders (a missing point, a failed measurement, every figure) and that
//! the page names files relative to the repository, not as paths of the machine it ran on.

use crate::Settings;
use crate::apply::{self, Apply};
use crate::datapath::{self, Datapath, Direction};
use crate::footprint::{Footprint, ImageFile, Rss};
use crate::page::{self, Report};
use crate::proxy::{self, Proxy};
use crate::stats::Summary;
use crate::sys::Machine;
use std::path::Path;

/// Five rounds of `value` with a small spread, round-indexed as the benchmarks record them.
fn rounds(value: f64) -> Vec<(usize, f64)> {
    (0..5)
        .map(|r| (r, value * (1.0 + 0.01 * r as f64)))
        .collect()
}

fn summary(samples: &[(usize, f64)]) -> Option<Summary> {
    Summary::of(&samples.iter().map(|s| s.1).collect::<Vec<_>>())
}

fn apply() -> Apply {
    use apply::Series as A;
    let mut points = Vec::new();
    for series in A::ALL {
        // (seconds at N=0, growth per entry)
        let (base, per) = match series {
            A::Floor => (0.004, 0.0),
            A::Netlink => (0.005, 2e-7),
            A::NftF => (0.016, 4e-7),
            A::IptLegacy => (0.009, 3e-6),
            A::IptNft => (0.011, 2e-6),
            A::PerRule => (0.090, 9e-4),
        };
        for n in apply::LENGTHS {
            if series == A::PerRule && n == 10000 {
                points.push(apply::Point {
                    series,
                    n,
                    summary: None,
                    samples: Vec::new(),
                    note: Some("skipped: over the budget".to_owned()),
                });
                continue;
            }
            let samples = rounds(base + per * n as f64);
            points.push(apply::Point {
                series,
                n,
                summary: summary(&samples),
                samples,
                note: None,
            });
        }
    }
    Apply { points, samples: 5 }
}

fn datapath() -> Datapath {
    use datapath::Series as D;
    let mut points = Vec::new();
    for series in D::ALL {
        let (base, per) = match series {
            D::NoRules => (20.0, 0.0),
            D::NatBaseline => (24.0, 0.0),
            D::Nftables => (24.5, 0.0001),
            D::IptNft => (25.0, 0.02),
            D::IptLegacy => (25.0, 0.015),
        };
        for direction in Direction::ALL {
            for n in datapath::LENGTHS {
                if series == D::IptLegacy && direction == Direction::Inbound && n == 10 {
                    points.push(datapath::Point {
                        series,
                        direction,
                        n,
                        summary: None,
                        samples: Vec::new(),
                        note: Some("install failed: exit 1".to_owned()),
                    });
                    continue;
                }
                let samples = rounds(base + per * n as f64);
                points.push(datapath::Point {
                    series,
                    direction,
                    n,
                    summary: summary(&samples),
                    samples,
                    note: None,
                });
            }
        }
    }
    Datapath {
        points,
        rounds: 5,
        per_round: 200,
        warmup: 50,
    }
}

fn spread(median: f64) -> Summary {
    Summary {
        median,
        min: median * 0.95,
        max: median * 1.05,
        n: 3,
    }
}

fn proxy(repo: &Path) -> Proxy {
    let path = |name: &str, gbps: f64, p50: f64, vs_socat: Option<f64>| proxy::Path {
        name: name.to_owned(),
        gbps: spread(gbps),
        p50_us: spread(p50),
        p99_us: spread(p50 * 2.0),
        cpu_s_per_gib: (name != "socat").then(|| spread(gbps / 10.0)),
        cpus_busy: Some(spread(1.5)),
        vs_direct: (name != "direct").then(|| spread(gbps / 20.0)),
        vs_socat: vs_socat.map(spread),
        added_p50: Some(spread(p50 - 30.0)),
    };
    Proxy {
        runs: 3,
        bytes: 1 << 30,
        rounds: 20000,
        paths: vec![
            path("direct", 20.0, 30.0, None),
            path("meshcap copy", 18.5, 45.0, Some(1.3)),
            path("meshcap splice", 17.0, 47.0, Some(1.2)),
            path("socat", 14.0, 60.0, None),
        ],
        rss_idle_kib: Some(spread(3000.0)),
        rss_loaded_kib: Some(spread(9000.0)),
        rss_peak_kib: Some(spread(12000.0)),
        files: (1..=3)
            .map(|i| {
                repo.join(format!("target/bench-report/proxy_bench.{i}.txt"))
                    .display()
                    .to_string()
            })
            .collect(),
    }
}

fn footprint() -> Footprint {
    Footprint {
        binary_bytes: 4 << 20,
        stripped_bytes: Ok(3 << 20),
        rss: vec![
            Rss {
                label: "nftables (netlink)",
                n: 1000,
                kib: Ok(spread(2500.0)),
            },
            Rss {
                label: "iptables-nft (with iptables-nft-restore)",
                n: 1000,
                kib: Ok(spread(5200.0)),
            },
            Rss {
                label: "iptables-legacy (with iptables-legacy-restore)",
                n: 1000,
                kib: Err("exit 1 | see\nstderr".to_owned()),
            },
        ],
        dockerfile_copies: vec!["COPY --from=build /rootfs/ /".to_owned()],
        image: Ok(vec![
            ImageFile {
                path: "/usr/local/bin/meshcap".to_owned(),
                bytes: 3 << 20,
                what: String::new(),
            },
            ImageFile {
                path: "/tmp/".to_owned(),
                bytes: 0,
                what: "empty directory".to_owned(),
            },
        ]),
        image_total: 9 << 20,
        nft_only_total: Ok(8 << 20),
    }
}

fn machine() -> Machine {
    Machine {
        nproc: 2,
        model: "Sample CPU".to_owned(),
        kernel: "6.1.0".to_owned(),
        os: "Sample OS".to_owned(),
        memory: "4.0 GiB".to_owned(),
        date: "2026-01-01 00:00 UTC".to_owned(),
        load_start: "0.50 0.40 0.30".to_owned(),
        tools: vec![("nft".to_owned(), "nftables v1.0.6".to_owned())],
        revision: "0000000".to_owned(),
    }
}

/// Renders the page and its figures from the sample into `out`; returns the page.
fn render(out: &Path) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let settings = Settings {
        meshcap: repo
            .join("target/bench-report/meshcap")
            .display()
            .to_string(),
        scratch: out.join("scratch"),
        out: out.to_owned(),
        samples: 5,
        quick: false,
        per_rule_budget: 240.0,
    };
    let (machine, apply, datapath, footprint, proxy) =
        (machine(), apply(), datapath(), footprint(), proxy(repo));
    let cni = cni();
    let report = Report {
        machine: &machine,
        load_end: "0.60 0.50 0.40".to_owned(),
        settings: &settings,
        apply: &apply,
        cni: &cni,
        datapath: &datapath,
        footprint: &footprint,
        proxy: Ok(&proxy),
        durations: [
            ("apply time", 100.0),
            ("data path", 50.0),
            ("CNI mode", 20.0),
            ("total", 180.0),
        ],
    };
    let figures = page::figures(&report);
    for f in &figures {
        assert!(f.error.is_none(), "figure {}: {:?}", f.file, f.error);
    }
    report.render(&figures)
}

/// Renders the sample into a scratch directory and checks the page.
pub fn check() {
    let out = std::env::temp_dir().join(format!("meshcap-page-sample-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("scratch directory");
    let _cleanup = crate::Scratch(out.clone());
    let text = render(&out);
    let repo = env!("CARGO_MANIFEST_DIR");
    assert!(
        !text.contains(repo),
        "the page names a path of this machine ({repo}):\n{text}"
    );
    for want in [
        "| meshcap | `target/bench-report/meshcap` |",
        "saved outputs: target/bench-report/proxy_bench.1.txt,",
        "missing: skipped: over the budget",
        "missing: install failed: exit 1",
        "--nftables-only`: no iptables binaries, extensions or their libraries): 8.0 MiB.",
        "| meshcap-cni's ADD (nftables, Istio's CNI defaults) ≤ 0.25× bridge + host-local's ADD \
         | meshcap-cni's ADD (nftables, Istio's CNI defaults) at most 0.25× bridge's ADD: \
         **met** (0.25× ≤ 0.25×) | **met** |",
        "its DEL at most 1× its ADD: **met** (0.86× ≤ 1×) | **met** |",
        "The installer (static binary, nftables) at N=0: 5.10 ms against 4.08 ms for the floor",
    ] {
        assert!(text.contains(want), "the page lacks {want:?}:\n{text}");
    }
    for file in [
        "apply_time.svg",
        "apply_vs_floor.svg",
        "datapath.svg",
        "datapath_vs_nat.svg",
        "proxy.svg",
    ] {
        assert!(
            text.contains(&format!("![{file}]({file})")),
            "{file} not shown"
        );
        assert!(out.join(file).is_file(), "{file} not drawn");
    }
    check_cni();
    eprintln!("report: the page renders from sample measurements (bench/report/sample.rs)");
}

/// CNI mode from fixed samples: bridge 14 ms, meshcap-cni's nftables ADD 3.5 ms (0.25x, within
/// the target) and 25 ms at N=1000; DELs at 0.86x their ADDs.
fn cni() -> crate::cni::CniBench {
    use crate::cni::{Burst, CniBench, STEPS, Series, Step};
    let series_of = |step: Step, secs: f64| {
        let samples: Vec<(usize, f64)> = (1..=5).map(|r| (r, secs)).collect();
        Series {
            step,
            summary: summary(&samples),
            samples,
        }
    };
    let mut series = vec![series_of(Step::Bridge, 0.014)];
    for (step, secs) in STEPS.into_iter().zip([0.0035, 0.020, 0.025, 0.040]) {
        series.push(series_of(step, secs));
        series.push(series_of(step.del().unwrap(), secs * 0.86));
    }
    series.push(series_of(Step::Ambient, 0.021));
    let burst = |nftables| Burst {
        nftables,
        pods: 20,
        parallel: Summary::of(&[0.05]),
        sequential: Summary::of(&[0.08]),
    };
    CniBench {
        series,
        bursts: vec![burst(true), burst(false)],
        samples: 5,
        errors: vec!["round 3 failed: example".to_owned()],
    }
}

fn check_cni() {
    let text = crate::cni::section(&cni());
    for want in [
        "| meshcap-cni, nftables (netlink) ADD | 0 | 3.50 ms (3.50 ms – 3.50 ms) | 0.25× |",
        "| meshcap-cni DEL, nftables (netlink) | 0 | 3.01 ms (3.01 ms – 3.01 ms) | 0.21× |",
        "at most 0.25× bridge's ADD: **met** (0.25× ≤ 0.25×)",
        "its DEL at most 1× its ADD: **met** (0.86× ≤ 1×)",
        "| nftables (netlink) | 20 | 50.00 ms | 80.00 ms | 0.62 |",
        "| ambient ADD (plugin → agent → rules → stand-in ack) | – | 21.00 ms (21.00 ms – 21.00 ms) | 1.50× |",
        "Not measured: round 3 failed: example",
    ] {
        assert!(
            text.contains(want),
            "the CNI section lacks {want:?}:\n{text}"
        );
    }
}
