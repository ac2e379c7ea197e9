//! The page's first table: each target of the project, whether this run meets it, and the
//! numbers that say so.

use super::PROXY_DEFAULT;
use super::Report;
use super::format::{times_near, verdict};
use crate::apply;
use crate::cni;
use crate::datapath::{self, Direction};
use crate::stats::fmt_secs;
use std::fmt::Write;

/// A reference line for the apply time against the floor (figures, wording): the netlink apply
/// within 1.5× the floor was a target until issue #19 replaced it with the CNI targets.
pub(super) const APPLY_TARGET: f64 = 1.5;
/// Issue #3: the netlink apply at 1000 + 1000 entries within 2× its N=0 time.
const LONG_LIST_TARGET: f64 = 2.0;
/// A new connection through meshcap's rules within this factor of the NAT baseline's.
pub(super) const DATAPATH_TARGET: f64 = 1.10;
/// The proxy's default engine at least this fraction of the direct path's throughput.
const PROXY_TARGET: f64 = 0.90;

impl Report<'_> {
    /// The installer's apply at N=0 (Istio's defaults) against the floor: not a target, a row
    /// of the table below it.
    fn installer_floor(&self) -> Option<String> {
        let n = 0;
        let nl = self.apply.median(apply::Series::Netlink, n)?;
        let floor = self.apply.median(apply::Series::Floor, n)?;
        let r = self
            .apply
            .ratio(apply::Series::Netlink, apply::Series::Floor, n)?
            .median;
        Some(format!(
            "The installer (static binary, nftables) at N=0: {} against {} for the floor \
             (`ip netns exec NS true`), {r:.2}× (+{}).",
            fmt_secs(nl),
            fmt_secs(floor),
            fmt_secs((nl - floor).max(0.0))
        ))
    }

    /// (met, text) of "at 1000 + 1000 entries, ≤ 2× its own default time" (issue #3).
    fn long_list_target(&self) -> Option<(bool, String)> {
        let n = 1000;
        let long = self.apply.median(apply::Series::Netlink, n)?;
        let short = self.apply.median(apply::Series::Netlink, 0)?;
        let r = long / short;
        Some((
            r <= LONG_LIST_TARGET,
            format!(
                "N={n}: {} vs N=0: {} = {}",
                fmt_secs(long),
                fmt_secs(short),
                times_near(r, LONG_LIST_TARGET)
            ),
        ))
    }

    fn datapath_target(&self) -> Option<(bool, String)> {
        let n = 1000;
        let mut ok = true;
        let mut parts = Vec::new();
        for d in Direction::ALL {
            let r = self
                .datapath
                .ratio(
                    datapath::Series::Nftables,
                    datapath::Series::NatBaseline,
                    d,
                    n,
                )?
                .median;
            ok &= r <= DATAPATH_TARGET;
            parts.push(format!(
                "{}: {:.1} µs vs {:.1} µs, paired ratio {}",
                d.short(),
                self.datapath.median(datapath::Series::Nftables, d, n)?,
                self.datapath.median(datapath::Series::NatBaseline, d, n)?,
                times_near(r, DATAPATH_TARGET)
            ));
        }
        Some((
            ok,
            format!("meshcap nftables at N=1000: {}", parts.join("; ")),
        ))
    }

    fn proxy_target(&self) -> Option<(bool, String)> {
        let p = self.proxy.ok()?;
        let def = p.path(PROXY_DEFAULT)?;
        let f = def.vs_direct?;
        let others: Vec<String> = p
            .paths
            .iter()
            .filter(|x| x.name != "direct" && x.name != PROXY_DEFAULT)
            .filter_map(|x| Some(format!("{} {:.0} %", x.name, 100.0 * x.vs_direct?.median)))
            .collect();
        Some((
            f.median >= PROXY_TARGET,
            format!(
                "{PROXY_DEFAULT} (default engine): {:.0} % of direct ({:.0}–{:.0} % over {} \
                 runs; {:.2} vs {:.2} Gbit/s); other paths: {}",
                100.0 * f.median,
                100.0 * f.min,
                100.0 * f.max,
                f.n,
                def.gbps.median,
                p.path("direct").map_or(f64::NAN, |d| d.gbps.median),
                others.join(", ")
            ),
        ))
    }

    pub(super) fn targets(&self, s: &mut String) {
        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target | measured in this run | |\n|---|---|---|");
        let row = |s: &mut String, name: &str, t: Option<(bool, String)>, why: &str| {
            let _ = match t {
                Some((ok, text)) => writeln!(s, "| {name} | {text} | {} |", verdict(ok)),
                None => writeln!(s, "| {name} | not measured: {why} | **unknown** |"),
            };
        };
        let (met, text) = cni::add_target(self.cni);
        row(
            s,
            "meshcap-cni's ADD (nftables, Istio's CNI defaults) ≤ 0.25× bridge + host-local's ADD",
            met.map(|m| (m, text)),
            "a CNI round is missing (see CNI mode)",
        );
        let (met, text) = cni::del_target(self.cni);
        row(
            s,
            "meshcap-cni's DEL no slower than its ADD (nftables, Istio's CNI defaults)",
            met.map(|m| (m, text)),
            "a CNI round is missing (see CNI mode)",
        );
        row(
            s,
            "netlink apply at 1000 ports + 1000 CIDRs ≤ 2× its own default (N=0) time",
            self.long_list_target(),
            "a netlink point at N=0 or N=1000 is missing",
        );
        row(
            s,
            "data path, 1000 + 1000 entries, within 10 % of the NAT baseline",
            self.datapath_target(),
            "a point at N=1000 is missing (see Data path)",
        );
        row(
            s,
            "proxy ≥ 90 % of direct throughput",
            self.proxy_target(),
            match &self.proxy {
                Err(e) => e.as_str(),
                Ok(_) => "no direct or default-engine row",
            },
        );
        let _ = writeln!(s);
        if let Some(line) = self.installer_floor() {
            let _ = writeln!(s, "{line}\n");
        }
    }
}
