#!/bin/sh
# Builds meshcap's runtime image without a registry: stages the root filesystem of MESHCAP_BINARY
# (deploy/stage-rootfs.sh, the Dockerfile's own script) in a temporary directory and builds
# deploy/Containerfile (FROM scratch, COPY of that root) with podman. `make image` runs it for
# localhost/meshcap:dev and, with --nftables-only, localhost/meshcap:dev-nft: a scratch image of
# the static binary alone (and its meshcap-cni link).
#
#   deploy/build-image.sh [--nftables-only] TAG MESHCAP_BINARY
set -eu

here=$(cd "$(dirname "$0")" && pwd)
option=""
if [ "${1:-}" = "--nftables-only" ]; then
    option=$1
    shift
fi
tag=$1
meshcap=$2

root=$(mktemp -d "${TMPDIR:-/tmp}/meshcap-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
if [ -n "$option" ] && command -v readelf >/dev/null &&
    ! readelf -d "$meshcap" 2>/dev/null | grep -q NEEDED; then
    # nftables only, static binary (`make build`): it needs nothing from its root (it speaks
    # netlink itself and links no shared library), so the image holds that one file and its
    # CNI name.
    mkdir -p "$root/rootfs/usr/local/bin"
    install -m 0755 "$meshcap" "$root/rootfs/usr/local/bin/meshcap"
    ln -s meshcap "$root/rootfs/usr/local/bin/meshcap-cni"
else
    # Both backends; or nftables only from a dynamic binary (a test build): the shared
    # libraries it links come along.
    # shellcheck disable=SC2086 # $option is empty or one word
    sh "$here/stage-rootfs.sh" $option "$root/rootfs" "$meshcap"
fi
old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
# --layers=false: one image, no intermediate ones left in the storage.
new=$(podman build --quiet --layers=false -f "$here/Containerfile" -t "$tag" "$root/rootfs")
# A rebuild leaves the previous image untagged; remove it unless something still uses it.
if [ -n "$old" ] && [ "$old" != "$new" ] && [ -z "$(podman image inspect --format '{{.RepoTags}}' "$old" | tr -d '[]')" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
fi
echo "$tag: $(podman image inspect --format '{{.Size}}' "$tag") bytes"
