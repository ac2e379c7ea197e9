#!/usr/bin/env bash
# The whole test suite: formatting, clippy, every test of the workspace; ends with the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo clippy --locked --all-targets -- -D warnings
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
status=0
# A test that cannot run here passes after appending a line to this file (binary, test, whole or
# part, message; see netns-test-harness/src/skip.rs); the totals count it as skipped.
MESHCAP_SKIP_LOG="$skips" cargo test --locked --workspace 2>&1 | tee "$log" || status=$?
# The benchmark report's page, rendered from fixed sample measurements (no benchmark runs).
cargo test --locked --bench report 2>&1 | tee -a "$log" || status=$?
# First cargo's output: one "test result:" line per test binary (the last is often a doc-test
# run of 0), and which tests passed in which binary. Then the skip records.
awk '
FNR == NR {
    if ($0 ~ /^ *Running /) { bin = $NF; sub(/\)$/, "", bin); sub(/^.*\//, "", bin) }
    else if ($0 ~ /^ *Doc-tests /) bin = ""
    else if ($0 ~ /^test .* \.\.\. ok$/) passing[bin SUBSEP $2] = 1
    else if ($0 ~ /^test result:/) {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i
            if ($(i+1) ~ /^failed/) f += $i
            if ($(i+1) ~ /^ignored/) s += $i
        }
    }
    next
}
{
    split($0, r, "\t")
    key = r[1] SUBSEP r[2]
    if (r[3] != "whole") notes = notes "\n  " r[4] " (the rest ran)"
    else if (!(key in passing)) notes = notes "\n  " r[4] " (not counted: " r[2] " did not pass in " r[1] ")"
    else if (!(key in counted)) { counted[key] = 1; p--; s++; notes = notes "\n  " r[4] }
}
END {
    if (notes != "") printf "\nskipped:%s\n", notes
    printf "\ntotal: %d passed, %d failed, %d skipped\n", p, f, s
}' "$log" "$skips"
exit "$status"
