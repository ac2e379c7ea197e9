#!/bin/sh
# Lays out the runtime image's whole filesystem under ROOTFS: the meshcap binary, iptables
# (legacy and nft variants, with their extension modules) and exactly the shared libraries these
# link (their ldd closure), plus /etc/protocols and an empty /run and /tmp. Nothing else.
# Used by the Dockerfile's build stage and by tests/proxy_image.rs.
#
#   deploy/stage-rootfs.sh ROOTFS MESHCAP_BINARY
set -eu

root=$1
meshcap=$2
[ -x "$meshcap" ] || { echo "stage-rootfs: $meshcap is not an executable" >&2; exit 1; }

mkdir -p "$root/usr/local/bin" "$root/usr/sbin" "$root/etc" "$root/run" "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0755 "$meshcap" "$root/usr/local/bin/meshcap"

# iptables: the two multi-call binaries and the names they answer to.
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
cp /etc/protocols "$root/etc/protocols"

# Every shared library the binaries and extensions link, at the path the loader looks for it.
for f in "$root/usr/local/bin/meshcap" "$root/usr/sbin/xtables-legacy-multi" \
         "$root/usr/sbin/xtables-nft-multi" "$root$xtdir"/*.so; do
    ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
