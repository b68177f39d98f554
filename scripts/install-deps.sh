#!/usr/bin/env bash
# Install (idempotently, quietly) everything brindle's build, tests, benchmarks and demo
# need on a fresh Debian 12 machine. Safe to run again: it does nothing when all is there.
set -euo pipefail

# `--fuzz` (used by `make fuzz` only): also the nightly toolchain and cargo-fuzz, so
# `make test` and CI never pay for them.
fuzz=false
for arg in "$@"; do
  case "$arg" in
    --fuzz) fuzz=true ;;
    *) echo "usage: $0 [--fuzz]" >&2; exit 2 ;;
  esac
done

packages=(
  protobuf-compiler      # etcd-client's build.rs runs protoc
  libprotobuf-dev        # protoc's well-known types (google/protobuf/*.proto), a recommends of protoc
  etcd-server etcd-client # real etcd for integration tests (etcd, etcdctl)
  docker.io              # real dockerd for the Docker driver e2e tests
  bird2                  # real BIRD 2 for the BGP tests
  busybox-static         # the rootfs of the test container images (no registry here)
  podman containernetworking-plugins  # CNI e2e: podman with the CNI backend, stock ptp/host-local
  iperf3                 # dataplane benchmark
  nftables iptables      # host firewall: nft, iptables-restore, iptables-{nft,legacy}-save
  iproute2 openssl jq
  python3-minimal        # scripts/module-graph.py: `make lint` checks for import cycles
)

missing=()
for p in "${packages[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# podman's settings (CNI backend, no default ulimits, cgroupfs) live in the tests' and the
# demo's own tests/podman/containers.conf, passed with CONTAINERS_CONF: nothing under
# /etc/containers is written. Earlier versions of this script overwrote
# /etc/containers/containers.conf; remove that file only if it is exactly what they wrote.
old_conf=/etc/containers/containers.conf
if [ -f "$old_conf" ] && cmp -s "$old_conf" - <<'CONF'
# written by brindle's scripts/install-deps.sh
[containers]
default_ulimits = []

[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
network_config_dir = "/etc/cni/net.d"
CONF
then
  echo "install-deps: removing $old_conf written by an earlier brindle install-deps.sh"
  rm -f "$old_conf"
fi

command -v cargo >/dev/null || { echo "install-deps: cargo (Rust toolchain) is required" >&2; exit 1; }

# cargo-fuzz builds with libFuzzer, which needs a nightly toolchain.
install_fuzz_tools() {
  if ! cargo +nightly --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || { echo "install-deps: make fuzz needs rustup or a nightly toolchain" >&2; exit 1; }
    echo "install-deps: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "install-deps: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
  fi
}

if $fuzz; then
  install_fuzz_tools
fi
