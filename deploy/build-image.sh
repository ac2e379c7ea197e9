#!/bin/sh
# Builds meshcap's runtime image without a registry: stages the root filesystem of MESHCAP_BINARY
# (deploy/stage-rootfs.sh, the Dockerfile's own script) in a temporary directory and builds
# deploy/Containerfile (FROM scratch, COPY of that root) with podman. `make image` runs it for
# localhost/meshcap:dev and, with --nftables-only, localhost/meshcap:dev-nft.
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
# shellcheck disable=SC2086 # $option is empty or one word
sh "$here/stage-rootfs.sh" $option "$root/rootfs" "$meshcap"
old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
# --layers=false: one image, no intermediate ones left in the storage.
new=$(podman build --quiet --layers=false -f "$here/Containerfile" -t "$tag" "$root/rootfs")
# A rebuild leaves the previous image untagged; remove it unless something still uses it.
if [ -n "$old" ] && [ "$old" != "$new" ] && [ -z "$(podman image inspect --format '{{.RepoTags}}' "$old" | tr -d '[]')" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
fi
echo "$tag: $(podman image inspect --format '{{.Size}}' "$tag") bytes"
