#!/usr/bin/env bash
# brindle demo: a local etcd (or $BRINDLE_ETCD_ENDPOINTS), a pool, fixed and dynamic
# addresses for two nodes, then the Docker, podman and two-host BGP parts when present.
# Uses the release binaries (make demo builds them). Cleans up everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
export BRINDLE_BIN="$PWD/target/release"
export PATH="$BRINDLE_BIN:$PATH"

work=$(mktemp -d /tmp/brindle-demo.XXXXXX)
etcd_pid=""

# The demo leaves the machine as it found it: every part runs in network namespaces of
# its own and removes what it made outside them. As a check, the root namespace's
# forwarding sysctls, routes, rules, links and firewall (iptables nft and legacy, nft)
# are recorded now and compared at the end; a sysctl found changed is put back, any
# other difference is shown (not reverted: it may be someone else's change meanwhile).
sysctls=(net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding
  net.ipv6.conf.all.forwarding net.ipv6.conf.default.forwarding
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
declare -A sysctl_before=()
for s in "${sysctls[@]}"; do
  v=$(sysctl -n "$s" 2>/dev/null) && sysctl_before[$s]=$v
done
host_state() {
  ip -4 route show table all; ip -6 route show table all; ip -4 rule; ip -6 rule
  ip -o link show | awk -F': ' '{print $2}' | sort
  local save
  for save in iptables-nft-save iptables-legacy-save ip6tables-nft-save ip6tables-legacy-save; do
    command -v "$save" >/dev/null || continue
    echo "# $save"
    "$save" 2>/dev/null | sed -e '/^#/d' -e 's/ \[[0-9]*:[0-9]*\]$//'
  done
  if command -v nft >/dev/null; then
    echo "# nft list ruleset"
    nft list ruleset 2>/dev/null | sed -e 's/counter packets [0-9]* bytes [0-9]*/counter/'
  fi
}
host_state >"$work/host-before" 2>/dev/null || true

check_host() {
  local s now
  for s in "${!sysctl_before[@]}"; do
    now=$(sysctl -n "$s" 2>/dev/null) || continue
    if [ "$now" != "${sysctl_before[$s]}" ]; then
      echo "demo: restoring $s = ${sysctl_before[$s]} (was changed to $now)"
      sysctl -qw "$s=${sysctl_before[$s]}"
    fi
  done
  host_state >"$work/host-after" 2>/dev/null
  if diff -q "$work/host-before" "$work/host-after" >/dev/null; then
    echo "demo: routes, links and firewall of the root namespace are as found"
  else
    echo "demo: the root namespace differs from before the demo (another program's doing?):"
    diff "$work/host-before" "$work/host-after" | sed 's/^/  /' || true
  fi
}

cleanup() {
  set +e
  brindle ipam release --handle demo-db >/dev/null 2>&1
  brindle ipam release --handle demo-web-a >/dev/null 2>&1
  brindle ipam release --handle demo-web-b >/dev/null 2>&1
  brindle pool rm demo-ipam --force >/dev/null 2>&1
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
  check_host
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

if [ -z "${BRINDLE_ETCD_ENDPOINTS:-}" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  peer=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  step "starting a single-node etcd in $work/etcd (client port $port)"
  etcd --name demo --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "demo=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  export BRINDLE_ETCD_ENDPOINTS="http://127.0.0.1:$port"
  for _ in $(seq 50); do
    ETCDCTL_API=3 etcdctl --endpoints "$BRINDLE_ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
echo "etcd: $BRINDLE_ETCD_ENDPOINTS"

step "IPAM: a pool split into per-node /26 blocks"
run brindle pool add demo-ipam --cidr 10.77.0.0/16
run brindle pool list

step "a fixed address for a stateful service on node-a, dynamic ones on node-a and node-b"
run brindle ipam alloc --node node-a --handle demo-db --ip 10.77.3.10 --attr container=db
run brindle ipam alloc --node node-a --handle demo-web-a --attr container=web-a
run brindle ipam alloc --node node-b --handle demo-web-b --attr container=web-b
echo "# the same handle asking again gets the same address:"
run brindle ipam alloc --node node-b --handle demo-web-b
echo "# a taken fixed address is refused, naming its holder:"
printf '$ %s\n' "brindle ipam alloc --node node-b --handle other --ip 10.77.3.10"
brindle ipam alloc --node node-b --handle other --ip 10.77.3.10 || true

step "brindle ipam show"
run brindle ipam show --blocks
run brindle ipam show --ip 10.77.3.10
run brindle ipam check

for part in demo-docker demo-cni demo-bgp; do
  if [ -x "scripts/$part.sh" ]; then
    step "running scripts/$part.sh"
    "scripts/$part.sh"
  fi
done
step "demo finished; cleaning up"
