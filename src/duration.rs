//! The one duration grammar of meshcap's flags: Go's `time.ParseDuration`, as Istio's flags take
//! it (`5s`, `500ms`, `1m30s`, `1.5h`, `1h2m3.5s`; units ns, us, µs, ms, s, m, h; a lone `0`).
//!
//! Two departures, both refusals or leniencies Go's callers would not notice: a negative duration
//! is refused (every meshcap duration is a timeout), and surrounding whitespace is ignored (the
//! installer trims every flag and variable value).

use std::time::Duration;

/// What every refusal says the grammar is.
const EXPECTED: &str = "expected a duration such as 5s, 500ms or 1m30s";
/// The units, as a refusal lists them.
const UNITS: &str = "ns, us, µs, ms, s, m, h";

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Nanoseconds per unit (Go's `unitMap`, both spellings of micro included).
fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// Parses a duration in Go's syntax. The error says what is wrong, without the value (callers
/// name the flag and quote the value themselves).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    // Go's special case: a lone zero needs no unit.
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    // Go's range: nanoseconds in an int64.
    let max = u128::from(i64::MAX as u64);
    let out_of_range = || "out of range: at most 2562047h47m16.854775807s".to_owned();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = split_digits(rest);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let (fraction, after) = split_digits(after);
                (Some(fraction), after)
            }
            None => (None, after),
        };
        if whole.is_empty() && fraction.is_none_or(str::is_empty) {
            return Err(EXPECTED.to_owned());
        }
        let unit_len = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let unit = &after[..unit_len];
        if unit.is_empty() {
            return Err(format!("missing unit ({UNITS}): {EXPECTED}"));
        }
        let nanos =
            u128::from(unit_nanos(unit).ok_or_else(|| format!("unknown unit {unit:?} ({UNITS})"))?);
        rest = &after[unit_len..];

        // Exact integer arithmetic, the fraction rounded down to the nanosecond (Go goes through
        // float64 for the fraction, which can differ in the last nanosecond of a long one).
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| out_of_range())?
        };
        total = total.saturating_add(whole.saturating_mul(nanos));
        if let Some(fraction) = fraction {
            total = total.saturating_add(fraction_nanos(fraction, nanos));
        }
        if total > max {
            return Err(out_of_range());
        }
    }
    if negative && total > 0 {
        return Err("negative durations are not allowed".to_owned());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// `0.<digits>` units in nanoseconds, rounded down: Horner's scheme from the last digit, each
/// step `(digit × unit + carry) / 10`; flooring at every step floors the whole (⌊(a + ⌊b⌋)/10⌋ =
/// ⌊(a + b)/10⌋ for an integer a), and the carry stays below one unit, so any number of digits
/// is exact.
fn fraction_nanos(digits: &str, unit: u128) -> u128 {
    digits
        .bytes()
        .rev()
        .fold(0, |carry, d| (u128::from(d - b'0') * unit + carry) / 10)
}

/// Splits off the leading ASCII digits.
fn split_digits(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse(text).unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
    }

    #[test]
    fn go_examples() {
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("1h2m3.5s"), Duration::from_millis(3_723_500));
        assert_eq!(ok("2h45m"), Duration::from_secs(9900));
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("10µs"), Duration::from_micros(10));
        assert_eq!(ok("10μs"), Duration::from_micros(10));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("1h1h"), Duration::from_secs(7200), "units may repeat");
        assert_eq!(ok("1s1h"), Duration::from_secs(3601), "in any order");
    }

    #[test]
    fn zero_signs_and_decimals() {
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("+0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("-0s"), Duration::ZERO);
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("1.000000001s"), Duration::from_nanos(1_000_000_001));
        assert_eq!(
            ok("0.3333333333333333333333333333333h"),
            Duration::from_nanos(1_199_999_999_999),
            "truncated to the nanosecond"
        );
        assert_eq!(
            ok("0.33333333333333333333333333334h"),
            Duration::from_nanos(1_200_000_000_000),
            "every digit counts"
        );
        assert_eq!(ok(" 5s\n"), Duration::from_secs(5), "trimmed");
    }

    #[test]
    fn go_range_is_the_limit() {
        assert_eq!(
            ok("2562047h47m16.854775807s"),
            Duration::from_nanos(i64::MAX as u64)
        );
        assert_eq!(
            ok("9223372036854775807ns"),
            Duration::from_nanos(i64::MAX as u64)
        );
        for text in [
            "2562047h47m16.854775808s",
            "9223372036854775808ns",
            "2562048h",
            "99999999999999999999999999999999999999999h",
        ] {
            assert!(
                parse(text).unwrap_err().starts_with("out of range"),
                "{text}"
            );
        }
    }

    #[test]
    fn refusals_say_why() {
        for (text, why) in [
            ("", EXPECTED),
            ("+", EXPECTED),
            ("-", EXPECTED),
            ("s", EXPECTED),
            (".s", EXPECTED),
            ("-.s", EXPECTED),
            ("1.2.3s", "missing unit"),
            ("5", "missing unit"),
            ("1m30", "missing unit"),
            ("00", "missing unit"),
            ("5x", "unknown unit \"x\""),
            ("1d", "unknown unit \"d\""),
            ("5S", "unknown unit \"S\""),
            ("5 s", "unknown unit \" s\""),
            ("5sec", "unknown unit \"sec\""),
            ("-1s", "negative"),
            ("1s-1s", "unknown unit \"s-\""),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.starts_with(why), "{text:?}: {err}");
        }
    }

    /// The installer's `--probe-timeout` and each of the proxy's duration flags take exactly this
    /// grammar: the same values in, the same values out.
    #[test]
    fn installer_and_proxy_agree() {
        use crate::cli::Inputs;
        use crate::config::{Config, SystemHost};
        use crate::proxy::ProxyArgs;
        use clap::Parser;

        const PROXY_FLAGS: [&str; 3] = ["--connect-timeout", "--idle-timeout", "--drain-timeout"];
        // --ipv6 off: the host is never consulted.
        let installer = |text: &str| {
            let argv = ["meshcap", "--ipv6", "off", "--probe-timeout", text];
            let inputs = Inputs::parse_from(argv, Vec::new()).expect("clap takes any text");
            Config::from_inputs(&inputs, &SystemHost).map(|c| c.run.probe_timeout)
        };
        let proxy = |flag: &str, text: &str| ProxyArgs::try_parse_from(["proxy", flag, text]);

        for good in ["1m30s", "0", "1.5h", "250ms", "1h2m3.5s", "10µs"] {
            let want = parse(good).unwrap();
            assert_eq!(installer(good).expect(good), want, "{good}");
            for flag in PROXY_FLAGS {
                let a = proxy(flag, good).unwrap_or_else(|e| panic!("{flag} {good}: {e}"));
                let got = match flag {
                    "--connect-timeout" => a.connect_timeout,
                    "--idle-timeout" => a.idle_timeout,
                    _ => a.drain_timeout,
                };
                assert_eq!(got, want, "{flag} {good}");
            }
        }
        for bad in ["", "5", "1m30", "1d", "5x", "s", ".s", "-1s", "2562048h"] {
            let err = installer(bad).expect_err(bad).to_string();
            assert!(err.contains("--probe-timeout"), "{bad:?}: {err}");
            for flag in PROXY_FLAGS {
                assert!(proxy(flag, bad).is_err(), "{flag} {bad:?} must be refused");
            }
        }
    }
}
