//! The page's sections around the measurements: the machine they come from, and how to
//! reproduce them.

use super::Report;
use super::format::shown_path;
use std::fmt::Write;

impl Report<'_> {
    pub(super) fn machine_section(&self, s: &mut String) {
        let m = self.machine;
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| CPU | {} |", m.model);
        let _ = writeln!(s, "| CPUs (nproc) | {} |", m.nproc);
        let _ = writeln!(s, "| memory | {} |", m.memory);
        let _ = writeln!(s, "| kernel | {} |", m.kernel);
        let _ = writeln!(s, "| OS | {} |", m.os);
        for (tool, v) in &m.tools {
            let _ = writeln!(s, "| {tool} | {v} |");
        }
        let _ = writeln!(s, "| date | {} |", m.date);
        let _ = writeln!(
            s,
            "| load average (1, 5, 15 min) | start {}, end {} |",
            m.load_start, self.load_end
        );
        let _ = writeln!(
            s,
            "| meshcap | `{}` |\n",
            shown_path(&self.settings.meshcap)
        );
    }

    pub(super) fn runtime_section(&self, s: &mut String) {
        let _ = writeln!(s, "## Reproducing\n");
        let _ = writeln!(
            s,
            "`make bench` as root: scripts/bench.sh installs what is missing, builds the \
             release binary, runs the proxy benchmark and then this report \
             (`cargo bench --bench report`), which writes docs/BENCHMARKS.md and docs/*.svg. \
             Environment: `MESHCAP_BENCH_SAMPLES` (samples per point, default 15), \
             `MESHCAP_BENCH_PERRULE_BUDGET` (seconds the one-call-per-rule peer may take at \
             N=10000, default 240), `MESHCAP_BENCH_PROXY_RUNS` (default 3), \
             `MESHCAP_BENCH_QUICK=1` (smoke run).\n"
        );
        let _ = write!(s, "Time taken by this run:");
        for (what, secs) in self.durations {
            let _ = write!(s, " {what} {secs:.0} s;");
        }
        if let Some(total) = std::env::var("MESHCAP_BENCH_STARTED")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(|t0| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|now| now.as_secs().saturating_sub(t0))
            })
        {
            let _ = write!(
                s,
                " `make bench` up to writing this page, builds included: {total} s."
            );
        }
        let _ = writeln!(s);
    }
}
