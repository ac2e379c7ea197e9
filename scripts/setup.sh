#!/usr/bin/env bash
# Installs what meshcap needs to build, run and test on Debian, when it is missing:
# iptables (legacy and nft variants), nftables, iproute2 (ip netns), util-linux (setpriv,
# nsenter, unshare), socat (the proxy benchmark's peer), gcc (the linker; glibc's static
# libraries come with it), for the tests only libnftnl-dev, libmnl-dev and pkg-config (the nftnl
# dev-dependency: libnftnl is the oracle of meshcap's own nf_tables encoder; the release build
# needs none of them),
# and for the CNI and pod tests: podman with runc and its CNI network backend
# (containernetworking-plugins: bridge, host-local), buildah (images from a directory, no
# registry), busybox-static (the test pods' app) and catatonit (the init process of Podman's own
# pause image, which `podman kube play` builds for a pod, and of the containerd tests' sandbox
# image; not pulled in without recommends); for the Kubernetes node tests: containerd (its CRI
# plugin, started by the tests themselves, never as a service) and protobuf-compiler (the CRI
# client's bindings are generated at build time).
# Runs apt-get only when something is missing; needs root then (sudo is used if present).
set -euo pipefail

packages=(iptables nftables libnftnl-dev libmnl-dev pkg-config iproute2 util-linux socat gcc
          podman runc containernetworking-plugins buildah busybox-static catatonit
          containerd protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq </dev/null
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
# The test command runs cargo fmt and cargo clippy: add the components where rustup can.
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "setup: adding the $component component" >&2
        rustup component add "$component" </dev/null
    fi
done
