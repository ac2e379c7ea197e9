# The two commands of the README:
#   make run    installs what is missing, builds, prints Istio's default rules (--dry-run)
#   make test   installs what is missing, then formatting, clippy and the whole test suite
# and `make bench` for the benchmark report, `make image` for the container images (no registry):
# localhost/meshcap:dev (both backends) and localhost/meshcap:dev-nft (nftables only, no iptables).

ISTIO_DEFAULT = -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020

.PHONY: run setup build test bench image

run: build
	./target/release/meshcap $(ISTIO_DEFAULT) --ipv6 off --dry-run

setup:
	./scripts/setup.sh

build: setup
	cargo build --release --locked

test:
	./scripts/test.sh

bench: build
	./scripts/bench.sh

image: build
	deploy/build-image.sh localhost/meshcap:dev target/release/meshcap
	deploy/build-image.sh --nftables-only localhost/meshcap:dev-nft target/release/meshcap
