# meshcap's image: one binary for both containers of the pod
#   init container:  meshcap <istio-init flags>   (installs the capture rules)
#   sidecar:         meshcap proxy                (the transparent L4 proxy)
# The runtime stage holds meshcap (and meshcap-cni, the CNI plugin's name for it), iptables (legacy
# and nft) and the libraries they link: nothing else (deploy/stage-rootfs.sh lays it out).
#
#   podman build -t meshcap .     (or docker build; needs the registry's Rust image)
#   make image                    (no registry: the same script and final stage, see deploy/README.md)

FROM docker.io/library/rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The README's build: one static file (scripts/build-static.sh), whatever the build stage links.
RUN make build \
 && sh deploy/stage-rootfs.sh /rootfs target/x86_64-unknown-linux-gnu/release/meshcap

FROM scratch
COPY --from=build /rootfs/ /
ENTRYPOINT ["/usr/local/bin/meshcap"]
