#!/usr/bin/env bash
# `make bench`: the whole benchmark suite on this machine, in fresh network namespaces, then
# docs/BENCHMARKS.md and docs/*.svg written from the numbers of this one run.
#
#   1. installs what is missing (scripts/setup.sh) and builds the release binary;
#   2. runs the proxy benchmark (bench/proxy_bench.rs) MESHCAP_BENCH_PROXY_RUNS times (default 3),
#      saving each output under target/bench-report/;
#   3. runs the report (bench/report/, `cargo bench --bench report`): apply time and data-path
#      cost against list length, footprint, and the proxy's saved numbers; writes docs/.
#
# Needs root. About 10 minutes on 2 CPUs (builds included). Knobs (see docs/BENCHMARKS.md):
# MESHCAP_BENCH_SAMPLES, MESHCAP_BENCH_PERRULE_BUDGET, MESHCAP_BENCH_PROXY_RUNS,
# MESHCAP_BENCH_QUICK=1 (a smoke run: few samples, N <= 1000, short proxy transfers).
set -euo pipefail

cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "bench: needs root (it creates network namespaces); run as root or with sudo" >&2
    exit 1
fi
MESHCAP_BENCH_STARTED=$(date +%s)
export MESHCAP_BENCH_STARTED

./scripts/setup.sh
# The static release binary `make build` ships (see the Makefile); built here when not given.
static_bin=${MESHCAP_STATIC_BIN:-}
if [ -z "$static_bin" ]; then
    static_bin=$(./scripts/build-static.sh)
fi

target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
out="${target_dir:-$PWD/target}/bench-report"
mkdir -p "$out"
# The binary `make build` ships, kept aside: the report measures (and sizes) the real one, not
# the test build `cargo bench` makes with the dev-dependencies' features.
cp "$static_bin" "$out/meshcap"
MESHCAP_BIN="$out/meshcap"
export MESHCAP_BIN

proxy_args=()
if [ "${MESHCAP_BENCH_QUICK:-0}" = 1 ]; then
    proxy_args=(-- quick)
fi
files=()
for i in $(seq 1 "${MESHCAP_BENCH_PROXY_RUNS:-3}"); do
    f="$out/proxy_bench.$i.txt"
    echo "bench: proxy benchmark, run $i" >&2
    cargo bench --locked --bench proxy_bench "${proxy_args[@]}" >"$f"
    files+=("$f")
done
MESHCAP_PROXY_BENCH=$(IFS=:; echo "${files[*]}")
export MESHCAP_PROXY_BENCH

cargo bench --locked --bench report
echo "bench: done in $(($(date +%s) - MESHCAP_BENCH_STARTED)) s: docs/BENCHMARKS.md, docs/*.svg" >&2
