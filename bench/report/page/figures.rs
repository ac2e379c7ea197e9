//! The page's figures (docs/*.svg): apply time and data-path cost against list length, each
//! also relative to its baseline, and the proxy against the direct path.

use super::format::times;
use super::targets::{APPLY_TARGET, DATAPATH_TARGET};
use super::{Figure, PROXY_DEFAULT, Report};
use crate::apply;
use crate::datapath::{self, Direction};
use crate::plot::{self, Bar, COLORS, Chart, Line, Rule};
use crate::proxy::Proxy;
use crate::stats::Summary;
use std::path::Path;

/// Draws every figure into the page's directory; a figure that fails to draw is reported in the
/// page.
pub fn figures(r: &Report) -> Vec<Figure> {
    let dir = &r.settings.out;
    let mut out = vec![
        apply_time(r, dir),
        apply_vs_floor(r, dir),
        datapath_cost(r, dir),
        datapath_vs_nat(r, dir),
    ];
    out.extend(r.proxy.ok().map(|p| proxy(p, dir)));
    out
}

/// The figure `file` as drawn, or why it could not be (also said on stderr).
fn figure(file: &str, caption: String, drawn: Result<(), String>) -> Figure {
    if let Err(e) = &drawn {
        eprintln!("report: figure {file}: {e}");
    }
    Figure {
        file: file.to_owned(),
        caption,
        error: drawn.err(),
    }
}

/// Apply time against N, log-log, with each installer's ratio to the floor in its legend.
fn apply_time(r: &Report, dir: &Path) -> Figure {
    let lengths = r.apply_lengths();
    let labels: Vec<String> = lengths.iter().map(|n| n.to_string()).collect();
    let floor = apply::Series::Floor;
    let rn = Report::ref_n(&lengths);
    let lines: Vec<Line> = apply::Series::ALL
        .iter()
        .map(|&s| {
            let points = lengths
                .iter()
                .enumerate()
                .filter_map(|(i, n)| r.apply.get(s, *n).and_then(|p| p.summary).map(|m| (i, m)))
                .map(|(i, m)| {
                    let ms = Summary {
                        median: m.median * 1e3,
                        min: m.min * 1e3,
                        max: m.max * 1e3,
                        n: m.n,
                    };
                    (i, ms)
                })
                .collect();
            let label = match (s, rn) {
                (apply::Series::Floor, _) | (_, None) => s.label().to_owned(),
                (_, Some(n)) => format!(
                    "{}: {} floor at N={n}",
                    s.label(),
                    times(r.apply.ratio(s, floor, n).map(|m| m.median))
                ),
            };
            Line {
                label,
                color: apply_color(s),
                points,
            }
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    let res = plot::line_chart(
        &dir.join("apply_time.svg"),
        (900, 560),
        &Chart {
            title: "Apply time vs list length (N ports + N CIDRs), log-log",
            x_desc: "N (excluded ports, and as many excluded CIDRs)",
            y_desc: "milliseconds (median, min–max bars)",
            x_labels: &labels,
            log_y: true,
            lines: &lines,
            rules: &[],
            y_range: None,
        },
    );
    let netlink_ratio = rn
        .and_then(|n| r.apply.ratio(apply::Series::Netlink, floor, n))
        .map(|m| m.median);
    figure(
        "apply_time.svg",
        format!(
            "Apply time against N, each sample in a fresh namespace. At N={}: meshcap netlink = {} \
             the `ip netns exec NS true` floor, measured in the same run.",
            rn.unwrap_or(0),
            times(netlink_ratio)
        ),
        res,
    )
}

/// Each installer's apply time divided by the floor's, against N.
fn apply_vs_floor(r: &Report, dir: &Path) -> Figure {
    let lengths = r.apply_lengths();
    let labels: Vec<String> = lengths.iter().map(|n| n.to_string()).collect();
    let floor = apply::Series::Floor;
    let ratio_lines: Vec<Line> = apply::Series::ALL
        .iter()
        .filter(|s| **s != floor)
        .map(|&s| {
            let points = lengths
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((i, r.apply.ratio(s, floor, *n)?)))
                .collect();
            Line {
                label: s.label().to_owned(),
                color: apply_color(s),
                points,
            }
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    let res = plot::line_chart(
        &dir.join("apply_vs_floor.svg"),
        (900, 560),
        &Chart {
            title: "Apply time / floor (ip netns exec NS true), paired per round",
            x_desc: "N (excluded ports, and as many excluded CIDRs)",
            y_desc: "× floor (log)",
            x_labels: &labels,
            log_y: true,
            lines: &ratio_lines,
            rules: &[Rule {
                y: APPLY_TARGET,
                label: format!("reference: {APPLY_TARGET}× floor"),
                color: plotters::style::RGBColor(0, 0, 0),
            }],
            y_range: None,
        },
    );
    figure(
        "apply_vs_floor.svg",
        format!(
            "Each installer's apply time divided by the floor measured at the same N in the same \
             run; the line marks {APPLY_TARGET}× the floor (a reference, no longer a target)."
        ),
        res,
    )
}

/// Whether the values of `lines` span enough to want a log scale.
fn wide_spread(lines: &[Line]) -> bool {
    let v: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1.median))
        .collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    hi / lo > 6.0
}

/// Data path: µs per new connection against N, outbound and inbound side by side.
fn datapath_cost(r: &Report, dir: &Path) -> Figure {
    let dl = r.dp_lengths();
    let dlabels: Vec<String> = dl.iter().map(|n| n.to_string()).collect();
    let drn = Report::ref_n(&dl);
    let dp_lines = |d: Direction| -> Vec<Line> {
        datapath::Series::ALL
            .iter()
            .map(|&s| {
                let points = dl
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| r.datapath.get(s, d, *n)?.summary.map(|m| (i, m)))
                    .collect();
                let label = match (s, drn) {
                    (datapath::Series::NatBaseline, _) | (_, None) => s.short().to_owned(),
                    (_, Some(n)) => format!(
                        "{}: {} NAT baseline at N={n}",
                        s.short(),
                        times(
                            r.datapath
                                .ratio(s, datapath::Series::NatBaseline, d, n)
                                .map(|m| m.median)
                        )
                    ),
                };
                Line {
                    label,
                    color: datapath_color(s),
                    points,
                }
            })
            .filter(|l| !l.points.is_empty())
            .collect()
    };
    let out_lines = dp_lines(Direction::Outbound);
    let in_lines = dp_lines(Direction::Inbound);
    let log_y = wide_spread(&out_lines) || wide_spread(&in_lines);
    let y_desc = if log_y {
        "µs per new connection (log)"
    } else {
        "µs per new connection"
    };
    let mut charts = [
        Chart {
            title: "Outbound: app uid connects, walks N excluded CIDRs",
            x_desc: "N (entries per list; the probe matches the last)",
            y_desc,
            x_labels: &dlabels,
            log_y,
            lines: &out_lines,
            rules: &[],
            y_range: None,
        },
        Chart {
            title: "Inbound: peer connects, walks N excluded ports",
            x_desc: "N (entries per list; the probe matches the last)",
            y_desc,
            x_labels: &dlabels,
            log_y,
            lines: &in_lines,
            rules: &[],
            y_range: None,
        },
    ];
    let shared = plot::shared_y_range(&[&charts[0], &charts[1]]);
    for c in &mut charts {
        c.y_range = Some(shared);
    }
    let res = plot::line_charts(&dir.join("datapath.svg"), (1300, 600), &charts);
    figure(
        "datapath.svg",
        format!(
            "Cost of a new TCP connection through the pod's rules against list length; legends \
             give each rule set's cost relative to the NAT baseline at N={} (same run).",
            drn.unwrap_or(0)
        ),
        res,
    )
}

/// Data path relative to the NAT baseline at the same N, both directions.
fn datapath_vs_nat(r: &Report, dir: &Path) -> Figure {
    let dl = r.dp_lengths();
    let dlabels: Vec<String> = dl.iter().map(|n| n.to_string()).collect();
    let rel = |d: Direction| -> Vec<Line> {
        datapath::Series::ALL
            .iter()
            .filter(|s| s.uses_lists() || **s == datapath::Series::NoRules)
            .map(|&s| {
                let points = dl
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| {
                        Some((
                            i,
                            r.datapath.ratio(s, datapath::Series::NatBaseline, d, *n)?,
                        ))
                    })
                    .collect();
                Line {
                    label: s.short().to_owned(),
                    color: datapath_color(s),
                    points,
                }
            })
            .filter(|l| !l.points.is_empty())
            .collect()
    };
    let rules = [Rule {
        y: DATAPATH_TARGET,
        label: format!("target: ≤ {DATAPATH_TARGET:.2}× NAT baseline"),
        color: plotters::style::RGBColor(0, 0, 0),
    }];
    let (ro, ri) = (rel(Direction::Outbound), rel(Direction::Inbound));
    let rlog = wide_spread(&ro) || wide_spread(&ri);
    let mut charts = [
        Chart {
            title: "Outbound cost / NAT baseline (same N, paired per round)",
            x_desc: "N (entries per list)",
            y_desc: "× NAT baseline",
            x_labels: &dlabels,
            log_y: rlog,
            lines: &ro,
            rules: &rules,
            y_range: None,
        },
        Chart {
            title: "Inbound cost / NAT baseline (same N, paired per round)",
            x_desc: "N (entries per list)",
            y_desc: "× NAT baseline",
            x_labels: &dlabels,
            log_y: rlog,
            lines: &ri,
            rules: &rules,
            y_range: None,
        },
    ];
    let shared = plot::shared_y_range(&[&charts[0], &charts[1]]);
    for c in &mut charts {
        c.y_range = Some(shared);
    }
    let res = plot::line_charts(&dir.join("datapath_vs_nat.svg"), (1300, 600), &charts);
    figure(
        "datapath_vs_nat.svg",
        format!(
            "Cost per connection divided by the NAT baseline's at the same N; the line is the \
             {DATAPATH_TARGET:.2}× target."
        ),
        res,
    )
}

/// The proxy against the direct path and socat: throughput and round-trip latency.
fn proxy(p: &Proxy, dir: &Path) -> Figure {
    let tp: Vec<Bar> = p
        .paths
        .iter()
        .enumerate()
        .map(|(i, path)| Bar {
            label: path.name.clone(),
            value: path.gbps,
            text: match path.vs_direct {
                Some(f) => format!("{:.1} Gbit/s, {:.0} %", path.gbps.median, f.median * 100.0),
                None => format!("{:.1} Gbit/s", path.gbps.median),
            },
            color: COLORS[i % COLORS.len()],
        })
        .collect();
    let lat: Vec<Bar> = p
        .paths
        .iter()
        .enumerate()
        .map(|(i, path)| Bar {
            label: path.name.clone(),
            value: path.p50_us,
            text: match path.added_p50 {
                Some(a) if path.name != "direct" => {
                    format!("{:.0} µs ({:+.0})", path.p50_us.median, a.median)
                }
                _ => format!("{:.0} µs", path.p50_us.median),
            },
            color: COLORS[i % COLORS.len()],
        })
        .collect();
    let res = plot::bar_charts(
        &dir.join("proxy.svg"),
        (1300, 520),
        &[
            (
                "Throughput of one upload (% of direct)".to_owned(),
                "Gbit/s".to_owned(),
                tp,
            ),
            (
                "64-byte round trip, p50 (added vs direct)".to_owned(),
                "µs".to_owned(),
                lat,
            ),
        ],
    );
    let def = p.path(PROXY_DEFAULT);
    figure(
        "proxy.svg",
        format!(
            "meshcap proxy against the direct path and socat, each run measuring all of them: \
                 the default engine moves {} of direct throughput and {} socat's (medians of the \
                 per-run ratios).",
            def.and_then(|d| d.vs_direct)
                .map_or("–".to_owned(), |f| format!("{:.0} %", f.median * 100.0)),
            times(def.and_then(|d| d.vs_socat).map(|f| f.median))
        ),
        res,
    )
}

/// An installer's colour, the same in every apply figure.
fn apply_color(s: apply::Series) -> plotters::style::RGBColor {
    COLORS[apply::Series::ALL.iter().position(|x| *x == s).unwrap_or(0)]
}

/// A rule set's colour, the same in every data-path figure.
fn datapath_color(s: datapath::Series) -> plotters::style::RGBColor {
    match s {
        datapath::Series::NoRules => COLORS[5],
        datapath::Series::NatBaseline => COLORS[6],
        datapath::Series::IptNft => COLORS[3],
        datapath::Series::IptLegacy => COLORS[2],
        datapath::Series::Nftables => COLORS[0],
    }
}
