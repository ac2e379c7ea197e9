//! Fault injection for tests (cargo feature `fault-injection`, which the test build enables and
//! a release build leaves out): with [`TEST_FAIL_BATCH_ENV`] set to `1`, the install batch gets
//! one more rule per table that jumps to a chain that does not exist, so the kernel refuses the
//! whole batch. Integration tests use it to prove that a refused batch changes nothing.

use super::ir::{Item, RuleSpec, Spec, Verdict};

/// The environment variable that turns the fault on.
pub const TEST_FAIL_BATCH_ENV: &str = "MESHCAP_TEST_FAIL_BATCH";

/// The chain the injected rule jumps to; it never exists.
pub const MISSING_CHAIN: &str = "istio-test-missing-chain";

/// Adds the failing rule to the last chain of each table of `spec` when the fault is on.
pub fn inject(spec: &mut Spec) {
    if std::env::var(TEST_FAIL_BATCH_ENV).as_deref() != Ok("1") {
        return;
    }
    for chain in spec.tables.iter_mut().filter_map(|t| t.chains.last_mut()) {
        chain.rules.push(RuleSpec {
            items: vec![Item::Counter, Item::Verdict(Verdict::Jump(MISSING_CHAIN))],
        });
    }
}
