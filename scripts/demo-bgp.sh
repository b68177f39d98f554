#!/usr/bin/env bash
# brindle BGP demo: two hosts (network namespaces on a bridged fabric), each running
# brindled and BIRD 2, one etcd. A container on each host (placed with brindle-cni when
# it is built, wired by hand otherwise) reaches the other by its own address, over
# routes the hosts learned from each other with BGP: no tunnel, no NAT. Then an address
# borrowed from the other host's block, routed as a /32, and `brindle routes` for
# routers without BGP.
#
# Self-contained: its own etcd (on 127.0.0.1 and on the fabric, so that the host
# namespaces reach it), its own pool (with an `unreachable` route in the root namespace
# so no packet of it leaves the machine). Everything it starts is killed by PID and
# every namespace and link it made is removed on exit, also on Ctrl-C or failure.
# Uses the release binaries (make release); needs root, bird2, etcd, busybox.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BRINDLE_BIN:-$PWD/target/release}"

if [ "$(id -u)" != 0 ]; then
  echo "demo-bgp: needs root (network namespaces); skipped"
  exit 0
fi
for tool in bird birdc etcd etcdctl ip busybox jq; do
  command -v "$tool" >/dev/null || { echo "demo-bgp: $tool is missing (make deps)"; exit 1; }
done
for b in brindle brindled; do
  [ -x "$BIN/$b" ] || { echo "demo-bgp: $BIN/$b is missing: run make release"; exit 1; }
done

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
inns() { local ns=$1; shift; printf '[%s]$ %s\n' "$ns" "$*"; ip netns exec "$ns" "$@"; }

work=$(mktemp -d /tmp/brindle-demo-bgp.XXXXXX)
tag="bdemo$$"
R="$tag-r" H1="$tag-h1" H2="$tag-h2" C1="$tag-c1" C2="$tag-c2" C3="$tag-c3"
rootif="bdf$(( $$ % 100000 ))"
pids=()
made_ns=()
pool=""

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for ns in "${made_ns[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  ip link del "$rootif" 2>/dev/null
  [ -n "$pool" ] && ip route del unreachable "$pool" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fabric /24 of 198.18.0.0/15 and a pool nobody on this machine uses.
routes=$(ip -4 route show table all; ip -4 -o addr)
fab=""
for i in $(seq 200 254); do
  if ! grep -q "198\.18\.$i\." <<<"$routes" && ! grep -q "10\.$i\." <<<"$routes"; then
    fab="198.18.$i"; pool="10.$i.0.0/16"; break
  fi
done
[ -n "$fab" ] || { echo "demo-bgp: no free 198.18.X.0/24 for the fabric"; exit 1; }
ip route add unreachable "$pool"

newns() { ip netns add "$1"; made_ns+=("$1"); ip -n "$1" link set lo up; }

step "a fabric: router namespace with bridge fab0 ($fab.1), hosts h1 ($fab.11) and h2 ($fab.12)"
newns "$R"
ip -n "$R" link add fab0 type bridge
ip -n "$R" addr add "$fab.1/24" dev fab0
ip -n "$R" link set fab0 up
# the root namespace's foot on the fabric: only for etcd
ip link add "$rootif" type veth peer name root netns "$R"
ip addr add "$fab.254/24" dev "$rootif"
ip link set "$rootif" up
ip -n "$R" link set root master fab0 up
n=0
for H in "$H1" "$H2"; do
  n=$((n + 1))
  newns "$H"
  ip link add eth0 netns "$H" type veth peer name "p$n" netns "$R"
  ip -n "$R" link set "p$n" master fab0 up
  ip -n "$H" addr add "$fab.1$n/24" dev eth0
  ip -n "$H" link set eth0 up
  ip -n "$H" route add default via "$fab.1"
  mkdir -p "$work/h$n"
done

port=$(( 20000 + $$ % 20000 ))
step "etcd on 127.0.0.1:$port and $fab.254:$port"
etcd --name demo-bgp --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$port,http://$fab.254:$port" \
  --advertise-client-urls "http://127.0.0.1:$port" \
  --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
  --initial-cluster "demo-bgp=http://127.0.0.1:$((port + 1))" >"$work/etcd.log" 2>&1 &
pids+=($!)
export BRINDLE_ETCD_ENDPOINTS="http://127.0.0.1:$port"
unset BRINDLE_NODE
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$BRINDLE_ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
brindle() { "$BIN/brindle" "$@"; }

step "a pool, and fast BGP timers for the demo"
run brindle pool add demo-bgp --cidr "$pool" --block-size 26
run brindle bgp set --connect-delay 1 --connect-retry 1 --error-wait 1,5 --hold 9 >/dev/null
run brindle bgp show

step "brindled on each host (it registers the node and renders BIRD's config), then BIRD"
for n in 1 2; do
  H="$tag-h$n"; d="$work/h$n"
  ip netns exec "$H" env BRINDLE_LOG=info "$BIN/brindled" --node "h$n" --node-ip "$fab.1$n" \
    --etcd-endpoints "http://$fab.254:$port" \
    --bird-config "$d/bird.conf" --birdc-socket "$d/bird.ctl" \
    --docker-plugin-dir "$d/plugins" --api-socket "$d/brindled.sock" >"$d/brindled.log" 2>&1 &
  pids+=($!)
  echo "h$n: brindled pid $! (log $d/brindled.log)"
done
for n in 1 2; do
  H="$tag-h$n"; d="$work/h$n"
  for _ in $(seq 150); do [ -f "$d/bird.conf" ] && break; sleep 0.1; done
  [ -f "$d/bird.conf" ] || { echo "brindled on h$n wrote no BIRD config:"; cat "$d/brindled.log"; exit 1; }
  ip netns exec "$H" bird -f -c "$d/bird.conf" -s "$d/bird.ctl" -P "$d/bird.pid" >"$d/bird.log" 2>&1 &
  pids+=($!)
  echo "h$n: BIRD pid $!"
done
for _ in $(seq 100); do
  birdc -s "$work/h1/bird.ctl" show protocols 2>/dev/null | grep -q Established && break
  sleep 0.1
done
printf '$ birdc -s h1/bird.ctl show protocols\n'
birdc -s "$work/h1/bird.ctl" show protocols

# A container: a namespace with eth0 wired Calico-style to its host.
cni_dir="$work/cni"
if [ -x "$BIN/brindle-cni" ]; then
  mkdir -p "$cni_dir"
  ln -s "$BIN/brindle-cni" "$cni_dir/brindle"
  ln -s "$BIN/brindle-cni" "$cni_dir/brindle-ipam"
fi
container() { # NS HOSTNUM [FIXED_IP] -> prints the address (NS made by the caller:
  # this runs in a subshell, where newns could not record it for the cleanup)
  local C=$1 n=$2 fixed=${3:-} H="$tag-h$2"
  if [ -x "$cni_dir/brindle" ]; then
    local conf
    conf=$(jq -n --arg e "http://$fab.254:$port" --arg node "h$n" --arg sock "$work/h$n/brindled.sock" \
      '{cniVersion:"1.0.0", name:"demo-bgp", type:"brindle", etcd_endpoints:$e, node:$node,
        api_socket:$sock, ipam:{type:"brindle-ipam", pool:"demo-bgp"}}')
    ip netns exec "$H" env CNI_COMMAND=ADD CNI_CONTAINERID="$C" CNI_NETNS="/run/netns/$C" \
      CNI_IFNAME=eth0 CNI_PATH="$cni_dir" ${fixed:+CNI_ARGS=IP=$fixed} \
      "$cni_dir/brindle" <<<"$conf" | jq -r '.ips[0].address' | cut -d/ -f1
  else
    local ip hif="brl$(printf '%011x' $((RANDOM * 65536 + RANDOM)))"
    ip=$("$BIN/brindle" --node "h$n" ipam alloc --handle "$C" ${fixed:+--ip $fixed})
    ip link add "$hif" netns "$H" type veth peer name eth0 netns "$C"
    ip -n "$H" link set "$hif" address ee:ee:ee:ee:ee:ee up
    ip netns exec "$H" sysctl -qw "net.ipv4.conf.$hif.proxy_arp=1" "net.ipv4.neigh.$hif.proxy_delay=0"
    ip -n "$C" addr add "$ip/32" dev eth0
    ip -n "$C" link set eth0 up
    ip -n "$C" route add 169.254.1.1 dev eth0 scope link
    ip -n "$C" route add default via 169.254.1.1 dev eth0
    ETCDCTL_API=3 etcdctl --endpoints "$BRINDLE_ETCD_ENDPOINTS" put \
      "/brindle/v1/endpoints/h$n/$C" \
      "{\"id\":\"$C\",\"node\":\"h$n\",\"orchestrator\":\"demo\",\"container_id\":\"$C\",\"network\":\"demo\",\"ip\":\"$ip\",\"mac\":null,\"host_ifname\":\"$hif\",\"handle\":\"$C\"}" >/dev/null
    echo "$ip"
  fi
}
wait_route() { # NS DST
  for _ in $(seq 100); do ip -n "$1" route show "$2" | grep -q . && return 0; sleep 0.05; done
  echo "no route to $2 in $1"; return 1
}

if [ -x "$cni_dir/brindle" ]; then how="brindle-cni ADD"; else how="the demo (brindle-cni not built)"; fi
step "one container per host, placed by $how"
newns "$C1"
newns "$C2"
ip1=$(container "$C1" 1)
ip2=$(container "$C2" 2)
echo "c1 on h1: $ip1"
echo "c2 on h2: $ip2"
block() { local a b c d; IFS=. read -r a b c d <<<"$1"; echo "$a.$b.$c.$(( d / 64 * 64 ))/26"; }
wait_route "$H1" "$(block "$ip2")"
wait_route "$H2" "$(block "$ip1")"

run brindle node list

step "each host: its own block as a blackhole (proto 98, from brindled), its container's /32, the other block via the other host (proto bird)"
inns "$H1" ip route
inns "$H2" ip route

step "c1 and c2 reach each other by their own addresses"
inns "$C1" busybox ping -c 3 -W 2 "$ip2"
inns "$C2" busybox ping -c 3 -W 2 "$ip1"
echo "# no tunnel device on the hosts:"
ip -n "$H1" -d -o link | grep -E ' (ipip|gre|vxlan|wireguard|geneve) ' || echo "(none)"

step "an address borrowed from h1's block, used on h2: routed as a /32"
base=$(block "$ip1" | cut -d/ -f1)
IFS=. read -r a b c d <<<"$base"
borrowed="$a.$b.$c.$((d + 40))"
newns "$C3"
ip3=$(container "$C3" 2 "$borrowed")
echo "c3 on h2: $ip3"
wait_route "$H1" "$ip3"
inns "$H1" ip route show "$ip3"
inns "$C1" busybox ping -c 3 -W 2 "$ip3"

step "for routers without BGP: brindle routes"
run brindle routes --format iproute2
run brindle routes --format ios

step "demo-bgp finished; cleaning up"
