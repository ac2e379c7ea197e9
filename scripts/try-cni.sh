#!/usr/bin/env bash
# Tries CNI mode with Podman, as root, without touching this machine's own network namespace:
# a throwaway namespace plays the node; Podman (CNI backend, runc) runs a busybox container on
# the network of deploy/meshcap-cni.conflist (bridge + host-local on 198.51.100.0/24, then
# meshcap-cni), which installs the capture rules in the container's namespace. The script prints
# those rules and `meshcap diff`'s verdict, removes the container (the runtime's DEL) and shows the
# namespace is gone; everything it made is removed on exit, also on failure.
#
#   make build && sudo scripts/try-cni.sh [BACKEND]     (BACKEND: nftables, the default, or iptables)
set -euo pipefail

cd "$(dirname "$0")/.."
backend=${1:-nftables}
meshcap=${MESHCAP_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/meshcap}
[ "$(id -u)" -eq 0 ] || { echo "try-cni: needs root (network namespaces, podman)" >&2; exit 1; }
[ -x "$meshcap" ] || { echo "try-cni: $meshcap missing: run make build first" >&2; exit 1; }
command -v podman >/dev/null || { echo "try-cni: podman missing: run scripts/setup.sh" >&2; exit 1; }

id=$$
ns=meshcap-try-$id
dir=$(mktemp -d /tmp/meshcap-try-cni.XXXXXX)
image=localhost/meshcap-try-app:$id
ctr=meshcap-try-$id
cleanup() {
    set +e
    podman_ rm -f -t 0 "$ctr" >/dev/null 2>&1
    podman_ rmi -f "$image" >/dev/null 2>&1
    ip netns del "$ns" 2>/dev/null
    rm -rf "$dir"
}
podman_() {
    CONTAINERS_CONF=$dir/containers.conf nsenter --net="/run/netns/$ns" \
        podman --runtime runc --cgroup-manager cgroupfs "$@"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
mkdir -p "$dir/net" "$dir/bin" "$dir/ipam" "$dir/app/bin"
ln -s "$meshcap" "$dir/bin/meshcap-cni"
# The example network, with host-local's state and the backend of this try.
sed -e "s|\"type\": \"host-local\",|\"type\": \"host-local\", \"dataDir\": \"$dir/ipam\",|" \
    -e "s|\"backend\": \"nftables\"|\"backend\": \"$backend\"|" \
    deploy/meshcap-cni.conflist >"$dir/net/meshcap.conflist"
cat >"$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni", "$dir/bin"]
network_config_dir = "$dir/net"
default_network = "meshcap"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$dir/events.log"
EOF
cp /usr/bin/busybox "$dir/app/bin/busybox"
printf 'FROM scratch\nCOPY . /\nENTRYPOINT ["/bin/busybox", "sleep", "600"]\n' >"$dir/Containerfile"
podman_ build --quiet --layers=false -f "$dir/Containerfile" -t "$image" "$dir/app" >/dev/null

echo "== podman run --network meshcap (bridge + host-local + meshcap-cni, backend $backend)"
podman_ run -d --name "$ctr" --user 1000:1000 "$image" >/dev/null
sandbox=$(podman_ inspect --format '{{.NetworkSettings.SandboxKey}}' "$ctr")
echo "container namespace: $sandbox"
echo
echo "== the capture rules meshcap-cni installed there"
if [ "$backend" = nftables ]; then
    nsenter --net="$sandbox" nft list ruleset
else
    nsenter --net="$sandbox" iptables-save -t nat
fi
echo
echo "== meshcap diff (Istio's CNI defaults) against that namespace"
ip netns exec "$ns" "$meshcap" diff -p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i '*' -x "" \
    -b '*' -d 15020,15021,15090 -o 15020 --ipv6 off --backend "$backend" \
    --network-namespace "$sandbox"
echo
echo "== podman rm (the runtime's DEL)"
podman_ rm -f -t 0 "$ctr" >/dev/null
[ ! -e "$sandbox" ] && echo "the container's namespace and its rules are gone"
