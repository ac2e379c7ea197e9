//! How the page writes numbers, ratios and paths.

use crate::stats::{Summary, fmt_secs};
use std::path::Path;

/// a / b, when both are known and b is positive.
pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A ratio as `1.23×`, or `–` when unknown.
pub(super) fn times(r: Option<f64>) -> String {
    r.map_or("–".to_owned(), |r| format!("{r:.2}×"))
}

/// A ratio judged against threshold `t`: three decimals where two would round onto `t`.
pub(super) fn times_near(r: f64, t: f64) -> String {
    if (r * 100.0).round() == (t * 100.0).round() && r != t {
        format!("{r:.3}×")
    } else {
        format!("{r:.2}×")
    }
}

/// Whether a target is met, as the targets table says it.
pub(super) fn verdict(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// Median (min–max) of seconds; `n=` only where it differs from `default_n`.
pub(super) fn secs_with_range(s: &Summary, default_n: usize) -> String {
    let n = if s.n == default_n {
        String::new()
    } else {
        format!(", n={}", s.n)
    };
    format!(
        "{} ({}–{}{n})",
        fmt_secs(s.median),
        fmt_secs(s.min),
        fmt_secs(s.max)
    )
}

/// Median (min–max) of microseconds.
pub(super) fn us_with_range(s: &Summary) -> String {
    format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max)
}

/// A file as the page names it: relative to the repository when inside it, so that the page
/// does not carry the layout of the machine it was generated on.
pub(super) fn shown_path(path: &str) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    match Path::new(path).strip_prefix(repo) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => path.to_owned(),
    }
}
