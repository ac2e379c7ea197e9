//! Medians with min–max, and the exclusion lists every part of the report uses.

/// Summary of one measured point: median, min, max of the kept samples (warm-up discarded).
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// Median (mean of the two middle samples for an even count), min and max. None if empty.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: s[0],
            max: s[n - 1],
            n,
        })
    }
}

/// Ratios a/b of samples taken in the same round (paired, so that a busy moment of the machine
/// hits numerator and denominator alike), summarized. None without common rounds.
pub fn paired(a: &[(usize, f64)], b: &[(usize, f64)]) -> Option<Summary> {
    let r: Vec<f64> = a
        .iter()
        .filter_map(|(ra, va)| {
            b.iter()
                .find(|(rb, _)| rb == ra)
                .filter(|(_, vb)| *vb > 0.0)
                .map(|(_, vb)| va / vb)
        })
        .collect();
    Summary::of(&r)
}

/// `n` inbound ports for `-d`: 20000, 20002, … (never adjacent, so that no backend can merge
/// them into ranges; clear of Istio's 150xx ports). With `last`, the last of the `n` is `last`.
pub fn ports(n: usize, last: Option<u16>) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| (20000 + 2 * i).to_string()).collect();
    if let (Some(p), Some(slot)) = (last, v.last_mut()) {
        *slot = p.to_string();
    }
    v
}

/// `n` excluded CIDRs for `-x`: distinct, never adjacent /32s written as short as possible
/// (`1.0.0.0/32`, `1.0.0.2/32`, …), because a flag value cannot exceed the kernel's 128 KiB
/// limit for one argument and 10 000 CIDRs of the form `10.x.y.z/32` would. They are text only:
/// no packet is ever sent to them. With `last`, the last of the `n` is `last`.
pub fn cidrs(n: usize, last: Option<&str>) -> Vec<String> {
    let mut v = Vec::with_capacity(n);
    'outer: for a in (1..=9).chain(11..=99) {
        for b in 0..10 {
            for c in 0..10 {
                for d in (0..10).step_by(2) {
                    if v.len() == n {
                        break 'outer;
                    }
                    v.push(format!("{a}.{b}.{c}.{d}/32"));
                }
            }
        }
    }
    assert_eq!(v.len(), n, "cidrs: at most 49 000 supported");
    if let (Some(l), Some(slot)) = (last, v.last_mut()) {
        *slot = l.to_owned();
    }
    v
}

/// Istio's default istio-init flags with `-b '*'`, the given exclusion lists and IPv4 only.
pub fn meshcap_args(ports: &[String], cidrs: &[String]) -> Vec<String> {
    for list in [ports, cidrs] {
        // The kernel's limit for one argument (MAX_ARG_STRLEN).
        assert!(
            list.join(",").len() < 128 * 1024,
            "a list too long for one argument"
        );
    }
    let mut v: Vec<String> = [
        "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*",
    ]
    .map(String::from)
    .to_vec();
    v.extend([
        "-d".to_owned(),
        ports.join(","),
        "-x".to_owned(),
        cidrs.join(","),
        "--ipv6".to_owned(),
        "off".to_owned(),
    ]);
    v
}

/// Formats a duration in seconds with a unit that fits (µs, ms, s).
pub fn fmt_secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}
