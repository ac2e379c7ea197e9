# meshcap's image: one binary for both containers of the pod
#   init container:  meshcap <istio-init flags>   (installs the capture rules)
#   sidecar:         meshcap proxy                (the transparent L4 proxy)
# The runtime stage holds meshcap, iptables (legacy and nft) and the libraries they link: nothing else.
#
#   podman build -t meshcap .     (or docker build)

FROM docker.io/library/rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The README's build (its setup step installs iptables, libnftnl-dev, libmnl-dev, pkg-config).
RUN make build \
 && sh deploy/stage-rootfs.sh /rootfs target/release/meshcap

FROM scratch
COPY --from=build /rootfs/ /
ENTRYPOINT ["/usr/local/bin/meshcap"]
