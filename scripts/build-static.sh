#!/bin/sh
# Builds the release binary `make build` ships: one static file, printed on stdout when done.
#
# glibc linked in (`+crt-static`) and a non-PIE executable (`relocation-model=static`), so the
# file has no dynamic section at all (`readelf -d`: none; `ldd`: not a dynamic executable) and
# runs on any x86-64 Linux node whatever its libraries or glibc version. Why glibc and not musl:
# the musl target's standard library cannot be installed on this machine (rustup has no
# network), and a static glibc serves once the names it would look up through NSS are read from
# the root's files (src/backend/host.rs). The flags need an explicit --target: without one,
# cargo would apply them to proc-macros as well, which cannot be built static; hence the
# binary's path, target/x86_64-unknown-linux-gnu/release/meshcap.
set -eu
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release --locked --target "$target" >&2
echo "target/$target/release/meshcap"
