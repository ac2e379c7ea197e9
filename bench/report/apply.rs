//! Apply time against list length: how long installing the rules takes, each sample in a fresh
//! namespace (created and deleted outside the timed region), every series through
//! `ip netns exec NS …` so that all share the same exec floor.

use crate::Settings;
use crate::stats::{self, Summary};
use crate::sys;
use netns_test_harness::Netns;
use std::path::Path;
use std::process::Command;

/// List lengths: N excluded ports and as many excluded CIDRs.
pub const LENGTHS: [usize; 5] = [0, 10, 100, 1000, 10000];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    Floor,
    Netlink,
    IptNft,
    IptLegacy,
    NftF,
    PerRule,
}

impl Series {
    pub const ALL: [Series; 6] = [
        Series::Netlink,
        Series::NftF,
        Series::IptLegacy,
        Series::IptNft,
        Series::PerRule,
        Series::Floor,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Series::Floor => "floor: ip netns exec NS true",
            Series::Netlink => "meshcap nftables (netlink)",
            Series::IptNft => "meshcap iptables-nft-restore",
            Series::IptLegacy => "meshcap iptables-legacy-restore",
            Series::NftF => "nft -f (meshcap's script)",
            Series::PerRule => "one iptables-nft call per rule",
        }
    }

    /// The command, as the report prints it.
    pub fn command(self) -> &'static str {
        match self {
            Series::Floor => "ip netns exec NS true",
            Series::Netlink => "ip netns exec NS meshcap ARGS --backend nftables",
            Series::IptNft => "ip netns exec NS meshcap ARGS --force-iptables-binary nft",
            Series::IptLegacy => "ip netns exec NS meshcap ARGS --force-iptables-binary legacy",
            Series::NftF => {
                "ip netns exec NS nft -f FILE   (FILE: meshcap ARGS --backend nftables --dry-run)"
            }
            Series::PerRule => {
                "ip netns exec NS sh -e FILE   (FILE: one line iptables-nft -t TABLE RULE per rule \
                 of meshcap ARGS --dry-run, as istio-iptables.sh did)"
            }
        }
    }
}

/// One measured point.
#[derive(Clone, Debug)]
pub struct Point {
    pub series: Series,
    pub n: usize,
    pub summary: Option<Summary>,
    /// The kept samples, with the round each was taken in (seconds).
    pub samples: Vec<(usize, f64)>,
    /// Why there is no number (missing, skipped), or a remark.
    pub note: Option<String>,
}

pub struct Apply {
    pub points: Vec<Point>,
    pub samples: usize,
}

impl Apply {
    pub fn get(&self, series: Series, n: usize) -> Option<&Point> {
        self.points.iter().find(|p| p.series == series && p.n == n)
    }

    /// Paired ratio a/b at N (see [`stats::paired`]).
    pub fn ratio(&self, a: Series, b: Series, n: usize) -> Option<Summary> {
        let pa = self.get(a, n).filter(|p| p.summary.is_some())?;
        let pb = self.get(b, n).filter(|p| p.summary.is_some())?;
        stats::paired(&pa.samples, &pb.samples)
    }

    pub fn median(&self, series: Series, n: usize) -> Option<f64> {
        self.get(series, n)
            .and_then(|p| p.summary)
            .map(|s| s.median)
    }
}

/// The per-rule shell script for restore text: `iptables-nft -t TABLE <line>` per rule line.
pub fn per_rule_script(restore: &str) -> (String, usize) {
    let mut table = "filter".to_owned();
    let mut out = String::from("# one iptables call per rule, as istio-iptables.sh did\n");
    let mut rules = 0;
    for line in restore.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
            continue;
        }
        let line = match line.strip_prefix(':') {
            Some(decl) => {
                let chain = decl.split_whitespace().next().unwrap_or_default();
                if chain.chars().all(|c| c.is_ascii_uppercase()) && !chain.contains('_') {
                    continue; // a built-in chain (PREROUTING, OUTPUT, …)
                }
                format!("-N {chain}")
            }
            None => line.to_owned(),
        };
        // Restore text and sh split words alike for these rules; quote anything unusual.
        let words: Vec<String> = if line.contains('"') {
            vec![line.clone()]
        } else {
            line.split_whitespace().map(sh_word).collect()
        };
        if line.starts_with("-A ") || line.starts_with("-I ") {
            rules += 1;
        }
        out.push_str(&format!("iptables-nft -t {table} {}\n", words.join(" ")));
    }
    (out, rules)
}

fn sh_word(w: &str) -> String {
    if w.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:,!=+-@%".contains(c))
    {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// Texts of meshcap's dry runs for `args` (iptables restore text, nftables script).
fn dry_run(meshcap: &str, args: &[String], extra: &[&str]) -> Result<String, String> {
    let out = Command::new(meshcap)
        .args(args)
        .args(extra)
        .arg("--dry-run")
        .output()
        .map_err(|e| format!("spawn {meshcap}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "meshcap --dry-run {}: {}",
            extra.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The argv (after `ip netns exec NS`) of a series at one length.
fn argv(series: Series, meshcap: &str, args: &[String], files: &Path, n: usize) -> Vec<String> {
    let m = |extra: &[&str]| {
        let mut v = vec![meshcap.to_owned()];
        v.extend(args.iter().cloned());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    match series {
        Series::Floor => vec!["true".to_owned()],
        Series::Netlink => m(&["--backend", "nftables"]),
        Series::IptNft => m(&["--force-iptables-binary", "nft"]),
        Series::IptLegacy => m(&["--force-iptables-binary", "legacy"]),
        Series::NftF => vec![
            "nft".to_owned(),
            "-f".to_owned(),
            files.join(format!("apply-{n}.nft")).display().to_string(),
        ],
        Series::PerRule => vec![
            "sh".to_owned(),
            "-e".to_owned(),
            files.join(format!("apply-{n}.sh")).display().to_string(),
        ],
    }
}

/// One sample: a fresh namespace, the timed command, a check, the namespace removed.
fn sample(argv: &[String], check_rules: Option<usize>) -> Result<sys::Run, String> {
    let ns = Netns::new("apply");
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let run = sys::run_timed(ns.command(&refs))?;
    if let Some(want) = check_rules {
        let saved = ns.exec_ok(&["iptables-nft-save", "-t", "nat"]);
        let got = saved.lines().filter(|l| l.starts_with("-A ")).count();
        if got != want {
            return Err(format!(
                "the per-rule script left {got} rules, the plan has {want}"
            ));
        }
    }
    Ok(run)
}

pub fn run(settings: &Settings) -> Apply {
    let meshcap = settings.meshcap.as_str();
    let files = settings.scratch.as_path();
    let mut points: Vec<Point> = Vec::new();
    let mut broken: Vec<(Series, String)> = Vec::new();

    for &n in &LENGTHS {
        if settings.quick && n > 1000 {
            continue;
        }
        let args = stats::meshcap_args(&stats::ports(n, None), &stats::cidrs(n, None));
        let mut rule_count = None;
        match dry_run(meshcap, &args, &[]) {
            Ok(text) => {
                let (script, rules) = per_rule_script(&text);
                std::fs::write(files.join(format!("apply-{n}.sh")), script).expect("write");
                rule_count = Some(rules);
            }
            Err(e) => broken.push((Series::PerRule, e)),
        }
        match dry_run(meshcap, &args, &["--backend", "nftables"]) {
            Ok(text) => std::fs::write(files.join(format!("apply-{n}.nft")), text).expect("write"),
            Err(e) => broken.push((Series::NftF, e)),
        }

        // How many kept samples each series gets at this length, after how many warm-ups.
        let mut plan: Vec<(Series, usize, usize)> = Vec::new();
        for s in Series::ALL {
            if let Some((_, why)) = broken.iter().find(|(b, _)| *b == s) {
                points.push(Point {
                    series: s,
                    n,
                    summary: None,
                    samples: Vec::new(),
                    note: Some(why.clone()),
                });
                continue;
            }
            let (warm, keep) = match s {
                Series::PerRule if n >= 10000 => {
                    match per_rule_budget(&points, settings.per_rule_budget) {
                        Ok(()) => (0, 3),
                        Err(why) => {
                            eprintln!("apply: {} at N={n}: {why}", s.label());
                            points.push(Point {
                                series: s,
                                n,
                                summary: None,
                                samples: Vec::new(),
                                note: Some(why),
                            });
                            continue;
                        }
                    }
                }
                Series::PerRule if n >= 1000 => (1, settings.samples.min(7)),
                _ => (1, settings.samples),
            };
            plan.push((s, warm, keep));
        }

        let rounds = plan.iter().map(|(_, w, k)| w + k).max().unwrap_or(0);
        let mut got: Vec<(Series, Vec<sys::Run>, Option<String>)> = plan
            .iter()
            .map(|(s, _, _)| (*s, Vec::new(), None))
            .collect();
        let mut rounds_of: Vec<Vec<usize>> = vec![Vec::new(); plan.len()];
        // The per-rule peer at N=10000 stops early when another sample would pass its budget.
        let budgeted = |s: Series| s == Series::PerRule && n >= 10000;
        for round in 0..rounds {
            // Rotate the order every round, so no series always runs right after another.
            for i in 0..plan.len() {
                let k = (i + round) % plan.len();
                let (s, warm, keep) = plan[k];
                if round >= warm + keep || got[k].2.is_some() {
                    continue;
                }
                if budgeted(s) {
                    let spent: f64 = got[k].1.iter().map(|r| r.secs).sum();
                    let last = got[k].1.last().map_or(0.0, |r| r.secs);
                    if spent + last > settings.per_rule_budget {
                        continue;
                    }
                }
                let argv = argv(s, meshcap, &args, files, n);
                let check = (s == Series::PerRule && round == warm).then_some(rule_count);
                match sample(&argv, check.flatten()) {
                    Ok(r) if round >= warm => {
                        got[k].1.push(r);
                        rounds_of[k].push(round);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("apply: {} at N={n} failed: {e}", s.label());
                        got[k].2 = Some(format!("failed: {e}"));
                    }
                }
            }
        }
        for ((s, runs, err), rounds) in got.into_iter().zip(rounds_of) {
            let secs: Vec<f64> = runs.iter().map(|r| r.secs).collect();
            let summary = if err.is_some() {
                None
            } else {
                Summary::of(&secs)
            };
            if let Some(sm) = summary {
                eprintln!(
                    "apply: N={n:>5} {:<34} {:>10} ({} – {}, n={})",
                    s.label(),
                    stats::fmt_secs(sm.median),
                    stats::fmt_secs(sm.min),
                    stats::fmt_secs(sm.max),
                    sm.n
                );
            }
            points.push(Point {
                series: s,
                n,
                summary,
                samples: rounds.into_iter().zip(secs).collect(),
                note: err,
            });
        }
    }
    Apply {
        points,
        samples: settings.samples,
    }
}

/// Whether the per-rule peer runs at N=10000: its time there is estimated from N=1000 and its
/// growth per decade so far (at least 20×: each call re-reads a growing ruleset, so the growth
/// is worse than linear); it runs when one sample fits the budget. It then takes up to 3
/// samples, as long as the next one is likely to fit.
fn per_rule_budget(points: &[Point], budget: f64) -> Result<(), String> {
    let at = |n| {
        points
            .iter()
            .find(|p| p.series == Series::PerRule && p.n == n)
            .and_then(|p| p.summary)
            .map(|s| s.median)
    };
    let (Some(t100), Some(t1000)) = (at(100), at(1000)) else {
        return Err("skipped: no measurement at N=100 and N=1000 to estimate from".to_owned());
    };
    let estimate = t1000 * (t1000 / t100).max(20.0);
    if estimate <= budget {
        Ok(())
    } else {
        Err(format!(
            "skipped: estimated {:.0} s per sample (N=1000 took {}, N=100 {}), over the \
             {budget:.0} s budget of this peer (MESHCAP_BENCH_PERRULE_BUDGET)",
            estimate,
            stats::fmt_secs(t1000),
            stats::fmt_secs(t100)
        ))
    }
}
