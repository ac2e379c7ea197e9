#!/bin/sh
# Lays out the runtime image's whole filesystem under ROOTFS: the meshcap binary (and meshcap-cni,
# a symlink to it: the CNI plugin), iptables (legacy and nft variants, with their extension
# modules) and exactly the shared libraries these link (their ldd closure), plus /etc/protocols
# and an empty /run and /tmp. Nothing else.
# With --nftables-only: no iptables at all (binaries, extensions or their libraries); meshcap's
# nftables backend talks netlink itself, so `--backend nftables` is all that image can run.
# Used by the Dockerfile's build stage, by deploy/build-image.sh (`make image`) and by the tests.
#
#   deploy/stage-rootfs.sh [--nftables-only] ROOTFS MESHCAP_BINARY
set -eu

iptables=yes
if [ "${1:-}" = "--nftables-only" ]; then
    iptables=no
    shift
fi
root=$1
meshcap=$2
[ -x "$meshcap" ] || { echo "stage-rootfs: $meshcap is not an executable" >&2; exit 1; }

mkdir -p "$root/usr/local/bin" "$root/etc" "$root/run" "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0755 "$meshcap" "$root/usr/local/bin/meshcap"
# Under this name the binary is the CNI plugin (for a node installer to copy out of the image).
ln -sf meshcap "$root/usr/local/bin/meshcap-cni"
cp /etc/protocols "$root/etc/protocols"
binaries="$root/usr/local/bin/meshcap"

if [ "$iptables" = yes ]; then
    # iptables: the two multi-call binaries and the names they answer to.
    mkdir -p "$root/usr/sbin"
    for multi in xtables-legacy-multi xtables-nft-multi; do
        cp -L "/usr/sbin/$multi" "$root/usr/sbin/$multi"
    done
    for variant in legacy nft; do
        for cmd in iptables ip6tables; do
            for suffix in "" -save -restore; do
                ln -sf "xtables-$variant-multi" "$root/usr/sbin/$cmd-$variant$suffix"
            done
        done
    done
    # Plain names follow Debian's default alternative (nft).
    for cmd in iptables ip6tables; do
        for suffix in "" -save -restore; do
            ln -sf "xtables-nft-multi" "$root/usr/sbin/$cmd$suffix"
        done
    done

    # The match/target extensions iptables loads at run time.
    xtdir=$(dirname "$(find /usr/lib /lib -path '*/xtables/libxt_owner.so' 2>/dev/null | head -n 1)")
    [ -d "$xtdir" ] || { echo "stage-rootfs: iptables extensions not found" >&2; exit 1; }
    mkdir -p "$root$xtdir"
    cp -L "$xtdir"/*.so "$root$xtdir/"
    binaries="$binaries $root/usr/sbin/xtables-legacy-multi $root/usr/sbin/xtables-nft-multi $(echo "$root$xtdir"/*.so)"
fi

# Every shared library the binaries (and extensions) link, at the path the loader looks for it.
for f in $binaries; do
    ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
