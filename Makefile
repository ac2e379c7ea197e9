# The two commands of the README:
#   make run    installs what is missing, builds, prints Istio's default rules (--dry-run)
#   make test   installs what is missing, then formatting, clippy and the whole test suite
# and `make bench` for the benchmark report, `make image` for the container images (no registry):
# localhost/meshcap:dev (both backends) and localhost/meshcap:dev-nft (nftables only, no iptables).
#
# `make build` produces one static file, $(BIN) (scripts/build-static.sh says how and why):
# it runs on any x86-64 Linux node whatever its libraries (`readelf -d` shows no dynamic section).

ISTIO_DEFAULT = -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020
BIN = target/x86_64-unknown-linux-gnu/release/meshcap

.PHONY: run setup build test bench image

run: build
	./$(BIN) $(ISTIO_DEFAULT) --ipv6 off --dry-run

setup:
	./scripts/setup.sh

build: setup
	./scripts/build-static.sh

test:
	./scripts/test.sh

bench: build
	MESHCAP_STATIC_BIN=$(BIN) ./scripts/bench.sh

image: build
	deploy/build-image.sh localhost/meshcap:dev $(BIN)
	deploy/build-image.sh --nftables-only localhost/meshcap:dev-nft $(BIN)
