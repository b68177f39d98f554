#!/usr/bin/env bash
# CNI part of the demo: podman (CNI backend) with brindle as its network plugin, one
# container with a fixed IP and one with a dynamic IP pinging each other, then
# `brindle endpoints`. Everything runs in a private network namespace with its own etcd,
# podman storage and CNI config, and is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/target/release"
work=$(mktemp -d /tmp/brindle-demo-cni.XXXXXX)
ns="brindle-demo-cni-$$"
image=localhost/brindle-demo-busybox:latest
etcd_pid=""
# podman keeps two things machine-wide whatever its flags: the image blob-info cache
# (/var/lib/containers/cache) and libcni's result cache (/var/lib/cni); removed at the
# end when they were not there before.
had_containers_lib=$([ -e /var/lib/containers ] && echo 1 || echo 0)
had_cni_lib=$([ -e /var/lib/cni ] && echo 1 || echo 0)

# runc's state under $work too, not in /run/runc (no `run --rm` here: its clean-up
# process would not get the flag).
pm() {
  nsenter --net="/run/netns/$ns" -- env CONTAINERS_CONF="$work/containers.conf" podman \
    --runtime-flag "root=$work/runc" \
    --root "$work/root" --runroot "$work/runroot" --tmpdir "$work/tmp" \
    --network-config-dir "$work/net.d" "$@"
}
inns() { ip netns exec "$ns" "$@"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
  set +e
  pm rm -af -t 0 >/dev/null 2>&1
  pm rmi -af >/dev/null 2>&1
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
  # Anything else still running in the namespace (by PID), then the namespace.
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
  if [ "$had_containers_lib" = 0 ]; then
    rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb
    rmdir /var/lib/containers/cache /var/lib/containers 2>/dev/null
  fi
  [ "$had_cni_lib" = 0 ] && rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$ns"
inns ip link set lo up
inns sysctl -qw net.ipv4.ip_forward=1
# An uplink with a default route, as a real host has: the host veths answer ARP for
# 169.254.1.1 (proxy_arp) only when the host has a route for it via another device.
inns ip link add uplink type veth peer name uplink-peer
inns ip link set uplink up
inns ip link set uplink-peer up
inns ip route add default dev uplink
ip netns exec "$ns" etcd --name demo-cni --data-dir "$work/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo-cni=http://127.0.0.1:2380 >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 50); do
  inns env ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

mkdir -p "$work/cni-bin" "$work/net.d" "$work/rootfs/bin"
install -m 0755 "$bin/brindle-cni" "$work/cni-bin/brindle"
install -m 0755 "$bin/brindle-cni" "$work/cni-bin/brindle-ipam"
# podman's settings: the tests' tests/podman/containers.conf (through CONTAINERS_CONF, so
# /etc/containers and the user's own config are neither read nor written) plus this run's
# dirs appended to its last table, [network].
{
  cat tests/podman/containers.conf
  printf 'cni_plugin_dirs = ["%s"]\nnetwork_config_dir = "%s"\n' "$work/cni-bin" "$work/net.d"
} >"$work/containers.conf"
cat >"$work/net.d/demo-cni.conflist" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "demo-cni",
  "plugins": [
    {
      "type": "brindle",
      "etcd_endpoints": "http://127.0.0.1:2379",
      "node": "demo-node",
      "api_socket": "none",
      "capabilities": {"ips": true},
      "ipam": {"type": "brindle-ipam", "pool": "demo-cni"}
    }
  ]
}
JSON
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in sh ip ping sleep; do ln -s busybox "$work/rootfs/bin/$a"; done
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
pm import "$work/rootfs.tar" "$image" >/dev/null

export BRINDLE_ETCD_ENDPOINTS=http://127.0.0.1:2379 BRINDLE_NODE=demo-node
echo "# podman with the CNI backend; brindle is the network plugin (conflist $work/net.d/demo-cni.conflist)"
run inns "$bin/brindle" pool add demo-cni --cidr 10.78.0.0/24 --block-size 28
printf '$ %s\n' "podman run -d --name demo-fixed --network demo-cni --ip 10.78.0.10 $image sleep 300"
pm run -d --name demo-fixed --network demo-cni --ip 10.78.0.10 "$image" sleep 300 >/dev/null
printf '$ %s\n' "podman run -d --name demo-dynamic --network demo-cni $image sleep 300"
pm run -d --name demo-dynamic --network demo-cni "$image" sleep 300 >/dev/null
printf '$ %s\n' "podman exec demo-dynamic ip -4 addr show eth0; ip route"
pm exec demo-dynamic ip -4 addr show eth0
pm exec demo-dynamic ip route
printf '$ %s\n' "podman exec demo-dynamic ping -c 2 10.78.0.10"
pm exec demo-dynamic ping -c 2 -W 2 10.78.0.10
run inns "$bin/brindle" endpoints
printf '$ %s\n' "podman rm -f demo-fixed demo-dynamic   # CNI DEL releases the addresses"
pm rm -f -t 0 demo-fixed demo-dynamic >/dev/null
run inns "$bin/brindle" ipam show
