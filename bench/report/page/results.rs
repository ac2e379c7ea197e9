//! The page's measurement sections: apply time, data path, proxy and footprint, each with its
//! method, figures and tables.

use super::format::{secs_with_range, shown_path, times, us_with_range};
use super::{Figure, Report};
use crate::apply;
use crate::datapath::{self, Direction};
use crate::stats::Summary;
use std::fmt::Write;

impl Report<'_> {
    pub(super) fn apply_section(&self, s: &mut String, figures: &[Figure]) {
        use apply::Series as A;
        let a = self.apply;
        let _ = writeln!(s, "## Apply time\n");
        let _ = writeln!(
            s,
            "What a pod's start-up waits for: installing the interception rules. For each N, \
             every installer runs {} times after one discarded warm-up (the one-call-per-rule \
             peer fewer at large N, see n), each sample in a fresh namespace created and deleted \
             outside the timed region; the installers take turns within each round. Wall time \
             from spawn to reaped exit.\n",
            a.samples
        );
        let _ = writeln!(
            s,
            "`ARGS` = `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -b '*' -d <N ports> -x <N \
             CIDRs> --ipv6 off`: ports 20000, 20002, …; CIDRs 1.0.0.0/32, 1.0.0.2/32, … (never \
             adjacent, so nothing merges them; text only, no traffic; written short because \
             10 000 CIDRs must fit one 128 KiB argument).\n"
        );
        let _ = writeln!(s, "| series | command |\n|---|---|");
        for sr in A::ALL {
            let _ = writeln!(s, "| {} | `{}` |", sr.label(), sr.command());
        }
        let _ = writeln!(s);
        self.figure(s, figures, "apply_time.svg");
        self.figure(s, figures, "apply_vs_floor.svg");
        let lengths = self.apply_lengths();
        let _ = write!(
            s,
            "Median (min–max), n={} unless noted:\n\n| N |",
            a.samples
        );
        for sr in A::ALL {
            let _ = write!(s, " {} |", sr.label());
        }
        let _ = write!(s, "\n|---|");
        for _ in A::ALL {
            let _ = write!(s, "---|");
        }
        let _ = writeln!(s);
        for &n in &lengths {
            let _ = write!(s, "| {n} |");
            for sr in A::ALL {
                let cell = match a.get(sr, n) {
                    Some(p) => match (&p.summary, &p.note) {
                        (Some(m), _) => secs_with_range(m, a.samples),
                        (None, Some(note)) => format!("missing: {note}"),
                        (None, None) => "missing".to_owned(),
                    },
                    None => "–".to_owned(),
                };
                let _ = write!(s, " {} |", cell.replace('|', "/").replace('\n', " "));
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "\nRatios, paired: each round's sample of one installer divided by the same round's \
             sample of the other, median over the rounds:\n\n| N | netlink / floor | nft -f / netlink | \
             iptables-legacy-restore / netlink | iptables-nft-restore / netlink | one call per \
             rule / netlink |\n|---|---|---|---|---|---|"
        );
        for &n in &lengths {
            let r = |x: A, y: A| a.ratio(x, y, n).map(|m| m.median);
            let _ = writeln!(
                s,
                "| {n} | {} | {} | {} | {} | {} |",
                times(r(A::Netlink, A::Floor)),
                times(r(A::NftF, A::Netlink)),
                times(r(A::IptLegacy, A::Netlink)),
                times(r(A::IptNft, A::Netlink)),
                times(r(A::PerRule, A::Netlink)),
            );
        }
        let _ = writeln!(s);
    }

    pub(super) fn datapath_section(&self, s: &mut String, figures: &[Figure]) {
        use datapath::Series as D;
        let d = self.datapath;
        let _ = writeln!(s, "## Data path\n");
        let _ = writeln!(
            s,
            "What every new connection pays afterwards. Two namespaces joined by a veth: the pod \
             (203.0.113.1) and a peer (203.0.113.2). The pod's rules are meshcap's ARGS with N \
             entries per list whose **last** entry is the probed one:\n\n\
             - **outbound**: a client in the pod, as the app's uid 1000 (so it passes the \
             loopback and proxy-uid rules of ISTIO_OUTPUT), connects to 203.0.113.2:9080; the \
             last excluded CIDR is 203.0.113.2/32, so the connection goes direct after walking \
             all N (were it captured, it would be refused: nothing listens on 15001);\n\
             - **inbound**: a client in the peer connects to the pod's port 9080, the last of \
             the N excluded ports, so ISTIO_INBOUND walks them all and returns.\n\n\
             Only a connection's first packet walks the nat rules, so the cost is per \
             connection: connect() then close with SO_LINGER 0 (a reset: no TIME_WAIT). Each \
             (rule set, N, direction) gets fresh namespaces and makes {} warm-up connections, \
             then {} rounds of {}; the value is the round's time / connections, median (min–max) \
             over the rounds. The ephemeral range is widened so no 4-tuple repeats.\n",
            d.warmup, d.rounds, d.per_round
        );
        let _ = writeln!(s, "| rule set | installed with |\n|---|---|");
        for sr in D::ALL {
            let _ = writeln!(s, "| {} | {} |", sr.label(), sr.install());
        }
        let _ = writeln!(s);
        self.figure(s, figures, "datapath.svg");
        self.figure(s, figures, "datapath_vs_nat.svg");
        let dl = self.dp_lengths();
        for dir in Direction::ALL {
            let _ = write!(
                s,
                "{}, µs per new connection, median (min–max), and × NAT baseline at the same \
                 N (paired per round, median):\n\n| N |",
                dir.label()
            );
            for sr in D::ALL {
                let _ = write!(s, " {} |", sr.short());
            }
            for sr in D::ALL.iter().filter(|x| x.uses_lists()) {
                let _ = write!(s, " {} / NAT |", sr.short());
            }
            let _ = write!(s, "\n|---|");
            for _ in 0..D::ALL.len() + 3 {
                let _ = write!(s, "---|");
            }
            let _ = writeln!(s);
            for &n in &dl {
                let _ = write!(s, "| {n} |");
                for sr in D::ALL {
                    let cell = match d.get(sr, dir, n) {
                        Some(p) => match (&p.summary, &p.note) {
                            (Some(m), _) => us_with_range(m),
                            (None, Some(e)) => format!("missing: {e}"),
                            (None, None) => "missing".to_owned(),
                        },
                        None => "–".to_owned(),
                    };
                    let _ = write!(s, " {} |", cell.replace('|', "/").replace('\n', " "));
                }
                for sr in D::ALL.iter().filter(|x| x.uses_lists()) {
                    let r = d.ratio(*sr, D::NatBaseline, dir, n).map(|m| m.median);
                    let _ = write!(s, " {} |", times(r));
                }
                let _ = writeln!(s);
            }
            let _ = writeln!(s);
        }
    }

    pub(super) fn proxy_section(&self, s: &mut String, figures: &[Figure]) {
        let _ = writeln!(s, "## Proxy\n");
        let p = match self.proxy {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(s, "Missing: {e}.\n");
                return;
            }
        };
        let _ = writeln!(
            s,
            "From bench/proxy_bench.rs (`cargo bench --bench proxy_bench`), run {} times by \
             scripts/bench.sh: the inbound path (peer namespace → the pod's app through the \
             REDIRECT capture and the proxy) against the same path without rules or proxy \
             (direct) and with socat as the proxy. Per run: the best of two {} MiB uploads, and \
             p50/p99 of {} 64-byte round trips on one connection; below, the median (min–max) \
             over the runs (saved outputs: {}).\n",
            p.runs,
            p.bytes >> 20,
            p.rounds,
            p.files
                .iter()
                .map(|f| shown_path(f))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.figure(s, figures, "proxy.svg");
        let _ = writeln!(
            s,
            "Ratios and differences are taken within each run (so every path is compared with \
             the direct path measured minutes apart at most), then the median (min–max) over \
             the runs. CPU-s/GiB is the CPU time of the whole machine (sender, proxy, receiver \
             and the kernel's packet processing) per GiB uploaded, and CPUs busy its average \
             over the upload; both from /proc/stat, for the best upload of each run.\n\n\
             | path | Gbit/s | % of direct | × socat | CPU-s/GiB | CPUs busy | p50 µs | p99 µs \
             | added p50 µs |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        let pct = |v: Option<Summary>| {
            v.map_or("–".to_owned(), |f| {
                format!(
                    "{:.0} % ({:.0}–{:.0})",
                    f.median * 100.0,
                    f.min * 100.0,
                    f.max * 100.0
                )
            })
        };
        for path in &p.paths {
            let _ = writeln!(
                s,
                "| {} | {:.2} ({:.2}–{:.2}) | {} | {} | {} | {} | {} | {:.1} | {} |",
                path.name,
                path.gbps.median,
                path.gbps.min,
                path.gbps.max,
                pct(path.vs_direct),
                times(path.vs_socat.map(|f| f.median)),
                path.cpu_s_per_gib
                    .map_or("–".to_owned(), |c| format!("{:.2}", c.median)),
                path.cpus_busy
                    .map_or("–".to_owned(), |c| format!("{:.2}", c.median)),
                us_with_range(&path.p50_us),
                path.p99_us.median,
                path.added_p50.map_or("–".to_owned(), |a| format!(
                    "{:+.1} ({:+.1}–{:+.1})",
                    a.median, a.min, a.max
                )),
            );
        }
        if let (Some(idle), Some(loaded)) = (p.rss_idle_kib, p.rss_loaded_kib) {
            let _ = writeln!(
                s,
                "\n`meshcap proxy` resident memory (copy engine, the default; medians over the \
                 runs): idle after its uploads and round trips {:.0} KiB, with 1000 idle \
                 connections {:.0} KiB ({:.1} KiB per connection){}.",
                idle.median,
                loaded.median,
                (loaded.median - idle.median) / 1000.0,
                p.rss_peak_kib.map_or(String::new(), |peak| format!(
                    "; peak over the run {:.0} KiB (its 1 GiB uploads grow one connection's \
                     buffers to 1 MiB each way)",
                    peak.median
                ))
            );
        }
        let _ = writeln!(s);
    }

    pub(super) fn footprint_section(&self, s: &mut String) {
        let f = self.footprint;
        let _ = writeln!(s, "## Footprint\n");
        let _ = writeln!(
            s,
            "Binary (`cargo build --release`): {:.2} MiB; stripped (`strip`): {}.\n",
            f.binary_bytes as f64 / 1048576.0,
            match &f.stripped_bytes {
                Ok(b) => format!("{:.2} MiB", *b as f64 / 1048576.0),
                Err(e) => format!("not measured ({e})"),
            }
        );
        let _ = writeln!(
            s,
            "Peak resident memory of one apply (getrusage of the reaped process: the largest of \
             meshcap and the children it waited for, i.e. iptables-restore), meshcap entering a \
             fresh namespace itself (`--network-namespace`), median of 3:\n\n\
             | N | mode | peak RSS |\n|---|---|---|"
        );
        for r in &f.rss {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                r.n,
                r.label,
                match &r.kib {
                    Ok(k) => format!("{:.1} MiB", k.median / 1024.0),
                    Err(e) => format!("failed: {}", e.replace('|', "/").replace('\n', " ")),
                }
            );
        }
        let _ = writeln!(
            s,
            "\nRuntime image: the Dockerfile's final stage is\n\n```\n{}\n```\n\nand /rootfs is \
             laid out by deploy/stage-rootfs.sh, run here into a scratch directory:\n",
            f.dockerfile_copies.join("\n")
        );
        match &f.image {
            Ok(files) => {
                let _ = writeln!(s, "| path | size | |\n|---|---|---|");
                for file in files {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} |",
                        file.path,
                        if file.bytes > 0 {
                            format!("{:.0} KiB", file.bytes as f64 / 1024.0)
                        } else {
                            String::new()
                        },
                        file.what
                    );
                }
                let _ = writeln!(
                    s,
                    "\nTotal: {:.1} MiB (the image's only layer). The nftables-only image \
                     (`make image`'s `localhost/meshcap:dev-nft`, `stage-rootfs.sh \
                     --nftables-only`: no iptables binaries, extensions or their libraries): {}.\n",
                    f.image_total as f64 / 1048576.0,
                    match &f.nft_only_total {
                        Ok(total) => format!("{:.1} MiB", *total as f64 / 1048576.0),
                        Err(e) => format!("not staged: {e}"),
                    }
                );
            }
            Err(e) => {
                let _ = writeln!(s, "Not listed: {e}.\n");
            }
        }
    }
}
