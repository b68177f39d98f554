# brindle: build, test, e2e, bench, demo, install, lint.
# `make demo` and `make test` install what they need on a fresh Debian 12 machine.

CARGO ?= cargo
RELEASE := target/release

.PHONY: all deps build release lint test bench bench-ipam bench-scale bench-cni bench-docker bench-dataplane demo install clean fuzz

all: build

deps:
	@scripts/install-deps.sh

# brindle-cni is linked statically (its start is most of a CNI call; plugin/cni-bin/),
# which Cargo can only ask for on the binary's own last compile: `cargo rustc`. Linked
# at a fixed address, not as a PIE: a static PIE relocates itself at every start (10,000
# relocations, 40 more page faults, 0.1-0.35 ms a call; docs/benchmarks.md). The
# reference CNI plugins are not PIEs either; the plugin's stack, heap and mappings stay
# randomized, its code and data do not.
STATIC_CNI := -p brindle-cni --bin brindle-cni -- -C target-feature=+crt-static -C relocation-model=static

build:
	$(CARGO) build --workspace --exclude brindle-cni --bins
	$(CARGO) rustc $(STATIC_CNI)

release:
	$(CARGO) build --release --workspace --exclude brindle-cni --bins
	$(CARGO) rustc --release $(STATIC_CNI)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	python3 scripts/module-graph.py --quiet ipam/src bgp-config/src plugin/src plugin/cni-bin/src plugin/dataplane/src

# Everything: format, lint, unit tests, etcd integration tests and the root e2e suites
# (dockerd, BIRD, podman, network namespaces). The suites find the binaries built here.
test: deps lint build
	$(CARGO) test --workspace -- --test-threads=4

demo: deps release
	scripts/demo.sh

bench: bench-ipam bench-scale bench-cni bench-docker bench-dataplane

bench-ipam: deps
	$(CARGO) build --release -p brindle-tests --bin bench-ipam
	$(RELEASE)/bench-ipam

# 100 nodes, 10,000 endpoints, 100,000 allocations on one local etcd; runs the release
# brindled in a network namespace of its own (root). About 2-3 minutes.
bench-scale: deps release
	$(RELEASE)/bench-scale

bench-cni: deps release
	$(RELEASE)/bench-cni

bench-docker: deps release
	$(RELEASE)/bench-docker

bench-dataplane: deps release
	$(RELEASE)/bench-dataplane

# Coverage-guided fuzzing (cargo-fuzz on nightly, in fuzz/): every target for FUZZ_SECONDS,
# one after the other; fails when one finds a crash (see docs/benchmarks.md, Fuzzing).
FUZZ_SECONDS ?= 120
FUZZ_TARGETS ?= docker_requests cni_dispatch records bird_render

fuzz:
	@scripts/install-deps.sh --fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" scripts/fuzz.sh

install: release
	install -d /usr/local/bin /opt/cni/bin
	install -m 0755 $(RELEASE)/brindle $(RELEASE)/brindled /usr/local/bin/
	@if [ -x $(RELEASE)/brindle-cni ]; then \
	  install -m 0755 $(RELEASE)/brindle-cni /opt/cni/bin/brindle; \
	  install -m 0755 $(RELEASE)/brindle-cni /opt/cni/bin/brindle-ipam; \
	fi

clean:
	$(CARGO) clean
