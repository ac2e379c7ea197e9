//! "What the numbers say": the page's reading of this run, sentences templated with its numbers.

use super::PROXY_DEFAULT;
use super::Report;
use super::format::{ratio, times, times_near};
use super::targets::{APPLY_TARGET, DATAPATH_TARGET};
use crate::apply;
use crate::datapath::{self, Direction};
use crate::stats::fmt_secs;
use std::fmt::Write;

impl Report<'_> {
    /// The reading: sentences templated with this run's numbers.
    pub(super) fn reading(&self, s: &mut String) {
        use apply::Series as A;
        use datapath::Series as D;
        let _ = writeln!(s, "## What the numbers say\n");
        let a = self.apply;
        let lengths = self.apply_lengths();
        if let (Some(&first), Some(last)) = (lengths.first(), self.apply_top(A::Netlink)) {
            if let (Some(nl0), Some(f0), Some(nl1), Some(r0), Some(r1)) = (
                a.median(A::Netlink, first),
                a.median(A::Floor, first),
                a.median(A::Netlink, last),
                a.ratio(A::Netlink, A::Floor, first).map(|m| m.median),
                a.ratio(A::Netlink, A::Floor, last).map(|m| m.median),
            ) {
                let near = |r: f64| {
                    if r <= APPLY_TARGET {
                        "near the floor"
                    } else {
                        "above the floor"
                    }
                };
                let _ = writeln!(
                    s,
                    "- **Apply, short lists.** With N={first} the netlink backend installs the \
                     rules in {} against {} for `ip netns exec NS true`: {:.2}×, {} \
                     (loading meshcap, planning and the netlink exchange add {} to starting a \
                     process in the namespace).",
                    fmt_secs(nl0),
                    fmt_secs(f0),
                    r0,
                    near(r0),
                    fmt_secs((nl0 - f0).max(0.0))
                );
                let mut line = format!(
                    "- **Apply, long lists.** At N={last} it takes {} ({:.2}× the floor, {} \
                     N={first}), {}.",
                    fmt_secs(nl1),
                    r1,
                    times(Some(nl1 / nl0)),
                    near(r1)
                );
                if let Some(nf) = a.median(A::NftF, last) {
                    let q = nl1 / nf;
                    let why = if (1.0 / 1.5..=1.5).contains(&q) {
                        "the same order as `nft -f` of the same ruleset, so the growth is what \
                         the kernel charges to load that ruleset (its set elements), paid by \
                         `nft` as well, not meshcap's encoding"
                            .to_owned()
                    } else if q < 1.0 {
                        format!("{:.2}× faster than `nft -f` of the same ruleset", 1.0 / q)
                    } else {
                        format!(
                            "{q:.2}× slower than `nft -f` of the same ruleset: the difference is \
                             meshcap's own encoding or batching"
                        )
                    };
                    let _ = write!(
                        line,
                        " `nft -f` takes {} there: netlink is {why}.",
                        fmt_secs(nf)
                    );
                }
                let mut peers: Vec<(A, f64)> = [A::IptLegacy, A::IptNft, A::NftF, A::PerRule]
                    .iter()
                    .filter_map(|&p| a.median(p, last).map(|m| (p, m)))
                    .collect();
                peers.sort_by(|x, y| x.1.total_cmp(&y.1));
                if let Some((best, t)) = peers.first()
                    && *t < nl1
                {
                    let _ = write!(
                        line,
                        " The fastest installer at N={last} is {} ({}); netlink takes {:.2}× \
                         its time.",
                        best.label(),
                        fmt_secs(*t),
                        nl1 / t
                    );
                } else if !peers.is_empty() {
                    let _ = write!(
                        line,
                        " No peer is faster at N={last}: the nearest, {}, takes {:.2}× \
                         netlink's time.",
                        peers[0].0.label(),
                        peers[0].1 / nl1
                    );
                }
                let _ = writeln!(s, "{line}");
            }
        }
        if let Some(n) = self.apply_top(A::PerRule)
            && let (Some(pr), Some(nl)) = (a.median(A::PerRule, n), a.median(A::Netlink, n))
        {
            let _ = writeln!(
                s,
                "- **One iptables call per rule** (how istio-iptables.sh installed rules) takes \
                 {} at N={n}, {:.0}× meshcap's netlink apply and {} meshcap's \
                 iptables-nft-restore apply.",
                fmt_secs(pr),
                pr / nl,
                times(ratio(Some(pr), a.median(A::IptNft, n)))
            );
        }
        if let Some(p) = a
            .points
            .iter()
            .find(|p| p.series == A::PerRule && p.summary.is_none())
            && let Some(note) = &p.note
        {
            let _ = writeln!(s, "  At N={}: {note}.", p.n);
        }

        let d = self.datapath;
        let dl = self.dp_lengths();
        if let Some(n) = Report::ref_n(&dl) {
            for dir in Direction::ALL {
                let (Some(none), Some(base)) = (
                    d.median(D::NoRules, dir, n),
                    d.median(D::NatBaseline, dir, n),
                ) else {
                    continue;
                };
                let mut line = format!(
                    "- **Data path, {} at N={n}.** No rules: {none:.1} µs per new connection; \
                     the NAT baseline {base:.1} µs, so connection tracking and a NAT hook alone \
                     cost {:.1} µs ({:.2}×).",
                    dir.short(),
                    base - none,
                    base / none
                );
                for sr in [D::Nftables, D::IptNft, D::IptLegacy] {
                    if let (Some(v), Some(r)) = (
                        d.median(sr, dir, n),
                        d.ratio(sr, D::NatBaseline, dir, n).map(|m| m.median),
                    ) {
                        let verdict = if r <= DATAPATH_TARGET {
                            "within 10 % of the baseline"
                        } else {
                            "above the baseline"
                        };
                        let _ = write!(
                            line,
                            " {}: {v:.1} µs, {} ({verdict}).",
                            sr.short(),
                            times_near(r, DATAPATH_TARGET)
                        );
                    }
                }
                let _ = writeln!(s, "{line}");
            }
            if let (Some(&lo), Some(&hi)) = (dl.first(), dl.last())
                && hi > lo
            {
                let mut parts = Vec::new();
                for sr in [D::IptNft, D::IptLegacy, D::Nftables] {
                    let Some(o1) = d.median(sr, Direction::Outbound, hi) else {
                        continue;
                    };
                    let Some(o0) = d.median(sr, Direction::Outbound, lo) else {
                        continue;
                    };
                    let per = (o1 - o0) * 1000.0 / (hi - lo) as f64;
                    parts.push(format!(
                        "{} {:+.1} µs from N={lo} to N={hi} ({per:+.1} ns per entry)",
                        sr.short(),
                        o1 - o0
                    ));
                }
                if !parts.is_empty() {
                    let _ = writeln!(
                        s,
                        "- **Growth with N (outbound).** {}. iptables chains are walked rule by \
                         rule, so their cost grows with the list; meshcap's nftables rules test \
                         one hash lookup per list (per prefix length of an address list), \
                         whatever its size.",
                        parts.join("; ")
                    );
                }
            }
        }

        if let Ok(p) = self.proxy
            && let (Some(direct), Some(def)) = (p.path("direct"), p.path(PROXY_DEFAULT))
            && let (Some(f), Some(added)) = (def.vs_direct, def.added_p50)
        {
            let mut line = format!(
                "- **Proxy.** `meshcap proxy` ({PROXY_DEFAULT}, the default engine) moves \
                 {:.2} Gbit/s, {:.0} % of the direct path's throughput ({:.2} Gbit/s), and adds \
                 {:.1} µs to a 64-byte round trip at p50 ({:.1} → {:.1} µs); medians over {} \
                 runs, ratios and differences taken within each run.",
                def.gbps.median,
                100.0 * f.median,
                direct.gbps.median,
                added.median,
                direct.p50_us.median,
                def.p50_us.median,
                f.n
            );
            if let Some(so) = p.path("socat")
                && let (Some(sf), Some(sa), Some(vs)) = (so.vs_direct, so.added_p50, def.vs_socat)
            {
                let _ = write!(
                    line,
                    " socat in the same place: {:.0} % of direct, {:+.1} µs at p50; meshcap \
                     moves {:.2}× socat's throughput.",
                    100.0 * sf.median,
                    sa.median,
                    vs.median
                );
            }
            if let (Some(dc), Some(pc)) = (direct.cpu_s_per_gib, def.cpu_s_per_gib) {
                let _ = write!(
                    line,
                    " A proxied byte is received and sent once more than on the direct path: \
                     the machine spends {:.2} CPU-seconds per GiB on it against {:.2} direct \
                     ({:.2}×), here on {} CPUs shared by the sender, the proxy and the receiver.",
                    pc.median,
                    dc.median,
                    pc.median / dc.median,
                    self.machine.nproc
                );
            }
            let _ = writeln!(s, "{line}");
        }
        let rss = |label: &str, n: usize| {
            self.footprint
                .rss
                .iter()
                .find(|r| r.label.starts_with(label) && r.n == n)
                .and_then(|r| r.kib.as_ref().ok())
                .map(|k| k.median)
        };
        let top = self.footprint.rss.iter().map(|r| r.n).max().unwrap_or(0);
        if let (Some(nl), Some(ipt)) = (rss("nftables", top), rss("iptables-nft", top)) {
            let _ = writeln!(
                s,
                "- **Memory.** Peak RSS of an apply at N={top}: netlink {:.1} MiB, \
                 iptables-nft (meshcap + iptables-nft-restore, the larger) {:.1} MiB. The \
                 stripped binary is {:.1} MiB.",
                nl / 1024.0,
                ipt / 1024.0,
                self.footprint
                    .stripped_bytes
                    .as_ref()
                    .map_or(f64::NAN, |b| *b as f64 / 1048576.0)
            );
        }
        let _ = writeln!(
            s,
            "- **Noise.** Load average {} at the start, {} at the end on {} CPUs. Medians \
             with min–max over the kept samples (the first of each point is a discarded \
             warm-up); wide min–max ranges mean a busy machine.\n",
            self.machine.load_start, self.load_end, self.machine.nproc
        );
    }
}
