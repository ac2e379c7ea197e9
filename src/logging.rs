//! meshcap's own log lines (stderr, or where Istio's `--log_target` says), and Istio's logging
//! flags mapped onto them.
//!
//! pilot-agent, whose place meshcap takes in Istio's injected init container, accepts Istio's
//! logging flags on every subcommand, and the injector always passes some
//! (`--log_output_level=default:info`, and `--log_as_json` when `global.logAsJson` is set). What
//! maps onto meshcap's logging is honoured:
//! * `--log_output_level`: the `default` scope's level (or a bare level) is meshcap's level;
//!   other scopes are Istio's components and are accepted without effect;
//! * `--log_as_json`: one JSON object per line, with Istio's keys (`time`, `level`, `msg`);
//! * `--log_caller`: any scope named adds the source file and line;
//! * `--log_target`: the first target, `stdout`, `stderr` or a file (appended to).
//!
//! Rotation (`--log_rotate*`) and stack traces (`--log_stacktrace_level`) have no meaning for a
//! process that lives for milliseconds and has no Go stack: they are accepted and ignored.
//! `MESHCAP_LOG`, when set to a valid `tracing` filter, beats `--log_output_level`: it is the
//! switch an operator adds to a pod to debug meshcap, while the level flag is the injector's.

use std::fmt;
use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Istio's log levels, in its spelling (`fatal` is Istio's too: only fatal errors).
const LEVELS: [(&str, LevelFilter); 6] = [
    ("none", LevelFilter::OFF),
    ("fatal", LevelFilter::ERROR),
    ("error", LevelFilter::ERROR),
    ("warn", LevelFilter::WARN),
    ("info", LevelFilter::INFO),
    ("debug", LevelFilter::DEBUG),
];

/// The scopes whose level is meshcap's: Istio's `default` scope, and `all`.
const OWN_SCOPES: [&str; 2] = ["default", "all"];

/// A parsed `--log_output_level`: the level it gives meshcap, if any of its pairs does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLevels {
    pub own: Option<LevelFilter>,
}

impl OutputLevels {
    /// Parses `scope:level` pairs joined by commas (a bare `level` is every scope's). Unknown
    /// scopes are fine (they are Istio's components); an unknown level is an error naming it.
    pub fn parse(text: &str) -> Result<OutputLevels, String> {
        let mut own = None;
        for pair in text.split(',').filter(|p| !p.is_empty()) {
            let (scope, level) = pair.rsplit_once(':').unwrap_or(("all", pair));
            let filter = LEVELS
                .iter()
                .find(|(name, _)| *name == level)
                .map(|(_, filter)| *filter)
                .ok_or_else(|| {
                    format!("unknown level {level:?} (levels: none, error, warn, info, debug)")
                })?;
            if OWN_SCOPES.contains(&scope) {
                own = Some(filter);
            }
        }
        Ok(OutputLevels { own })
    }
}

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stderr,
    Stdout,
    File(std::path::PathBuf),
}

impl Target {
    /// Istio's `--log_target` value: `stdout`, `stderr`, or a file path.
    pub fn parse(text: &str) -> Target {
        match text {
            "stdout" => Target::Stdout,
            "stderr" => Target::Stderr,
            path => Target::File(path.into()),
        }
    }
}

/// How meshcap logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub level: LevelFilter,
    pub json: bool,
    pub caller: bool,
    pub target: Target,
}

impl Default for Settings {
    /// Plain lines at `info` on stderr: the runtime keeps a CNI plugin's or an init container's
    /// stderr in its logs, and stdout carries the dry run's rules.
    fn default() -> Settings {
        Settings {
            level: LevelFilter::INFO,
            json: false,
            caller: false,
            target: Target::Stderr,
        }
    }
}

/// Installs the process's log subscriber. A log file that cannot be opened falls back to stderr
/// with a warning: losing logs must not fail the pod.
pub fn init(settings: &Settings) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let (writer, ansi, unopened) = match &settings.target {
        Target::Stderr => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
            None,
        ),
        Target::Stdout => (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
            None,
        ),
        Target::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => (BoxMakeWriter::new(std::sync::Mutex::new(file)), false, None),
            Err(e) => (
                BoxMakeWriter::new(std::io::stderr),
                std::io::stderr().is_terminal(),
                Some(format!("{}: {e}", path.display())),
            ),
        },
    };
    // A plain level filter when MESHCAP_LOG is unset (or invalid): an EnvFilter is costly to
    // build, and every pod start pays for it.
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(ansi && !settings.json)
        .with_file(settings.caller)
        .with_line_number(settings.caller)
        .without_time();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCAP_LOG");
    match (filter, settings.json) {
        (Ok(filter), false) => builder.with_env_filter(filter).init(),
        (Ok(filter), true) => builder
            .with_env_filter(filter)
            .event_format(JsonLine {
                caller: settings.caller,
            })
            .init(),
        (Err(_), false) => builder.with_max_level(settings.level).init(),
        (Err(_), true) => builder
            .with_max_level(settings.level)
            .event_format(JsonLine {
                caller: settings.caller,
            })
            .init(),
    }
    if let Some(why) = unopened {
        tracing::warn!("--log_target {why}; logging to stderr");
    }
}

/// One JSON object per event, with the keys of Istio's JSON logs: `time` (RFC 3339, UTC,
/// microseconds), `level` (lower case), `msg`, `caller` with `--log_caller`, and the event's
/// other fields by name.
struct JsonLine {
    caller: bool,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut object = serde_json::Map::new();
        object.insert("time".into(), utc_now().into());
        object.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        if self.caller
            && let (Some(file), Some(line)) = (meta.file(), meta.line())
        {
            object.insert("caller".into(), format!("{file}:{line}").into());
        }
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        let msg = fields.0.remove("message").unwrap_or_default();
        object.insert("msg".into(), msg);
        object.extend(fields.0);
        let line = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// An event's fields as JSON values.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// The current time as RFC 3339 in UTC with microseconds, e.g. `2026-12-03T08:41:26.123456Z`.
fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_micros())
}

/// Seconds since the epoch as a UTC date and time (proleptic Gregorian calendar; the days to
/// civil date conversion of Howard Hinnant's `civil_from_days`).
fn rfc3339(secs: u64, micros: u32) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_levels_take_the_default_scope_and_accept_others() {
        let parse = |t| OutputLevels::parse(t).map(|l| l.own);
        assert_eq!(parse("default:info"), Ok(Some(LevelFilter::INFO)));
        assert_eq!(
            parse("ads:debug,default:warn,cache:none"),
            Ok(Some(LevelFilter::WARN))
        );
        assert_eq!(parse("ads:debug"), Ok(None));
        assert_eq!(parse("none"), Ok(Some(LevelFilter::OFF)));
        assert_eq!(parse("all:debug"), Ok(Some(LevelFilter::DEBUG)));
        assert_eq!(parse(""), Ok(None));
        let err = parse("default:verbose").unwrap_err();
        assert!(err.contains("\"verbose\""), "{err}");
        assert!(
            parse("ads:loud").is_err(),
            "a bad level is bad in any scope"
        );
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("stdout"), Target::Stdout);
        assert_eq!(Target::parse("stderr"), Target::Stderr);
        assert_eq!(
            Target::parse("/var/log/x"),
            Target::File("/var/log/x".into())
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day of a century year) 12:34:56.
        assert_eq!(rfc3339(951_827_696, 7), "2000-02-29T12:34:56.000007Z");
        assert_eq!(rfc3339(1_796_287_286, 0), "2026-12-03T08:41:26.000000Z");
    }
}
