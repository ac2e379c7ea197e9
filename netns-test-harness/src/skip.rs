//! Skipping a test that cannot run here (no root, no `../shared`), so that the skip is seen and
//! counted rather than passing silently.
//!
//! Every skip prints `SKIP: <test>: <reason>` on stderr. libtest captures the output of a test
//! that passes, and a skipped test passes, so when [`SKIP_LOG`] names a file (scripts/test.sh
//! sets it) each skip also appends one line to it: the test binary, the test's name as libtest
//! prints it, whether the whole test or a part of it was skipped, and the message.
//! scripts/test.sh counts the tests that passed and have a whole-test line as skipped. Test
//! threads and binaries append concurrently: each line is one `write` to a file opened with
//! `O_APPEND`, so lines do not interleave.
//!
//! Setting a requirement's variable to 1 (CI) turns its skips into failures.

use std::io::Write;

/// The variable naming the file skips are recorded in.
pub const SKIP_LOG: &str = "MESHCAP_SKIP_LOG";

/// What a test needs and may not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Root, to create network namespaces.
    Root,
    /// The read-only conformance data in `../shared` beside the checkout.
    Shared,
}

impl Need {
    /// The variable that, set to 1, forbids skipping for want of this.
    pub fn required_by(self) -> &'static str {
        match self {
            Need::Root => "MESHCAP_REQUIRE_NETNS",
            Need::Shared => "MESHCAP_REQUIRE_SHARED",
        }
    }
}

/// Reports that `test` does not run because it lacks `need` (`reason` says what is missing);
/// the caller then returns. Panics instead when the need's variable is 1.
pub fn skip(test: &str, need: Need, reason: &str) {
    record(test, need, "whole", &format!("SKIP: {test}: {reason}"));
}

/// Reports that `part` of `test` does not run (the rest does, so the test still counts as
/// run). Panics instead when the need's variable is 1.
pub fn skip_part(test: &str, part: &str, need: Need, reason: &str) {
    record(
        test,
        need,
        "part",
        &format!("SKIP: {test}: {part}: {reason}"),
    );
}

fn record(test: &str, need: Need, extent: &str, message: &str) {
    let var = need.required_by();
    if std::env::var(var).as_deref() == Ok("1") {
        panic!("{message} ({var}=1 forbids skipping)");
    }
    eprintln!("{message}");
    let Some(log) = std::env::var_os(SKIP_LOG) else {
        return;
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // libtest runs each test on a thread named after it: the name its result line carries.
    let current = std::thread::current();
    let name = match current.name() {
        Some(n) if n != "main" => n,
        _ => test,
    };
    let line = format!("{binary}\t{name}\t{extent}\t{message}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("{SKIP_LOG}={}: {e}", log.to_string_lossy());
    }
}
