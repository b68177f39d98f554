#!/usr/bin/env bash
# Docker part of the demo: a brindle network, a fixed-IP and a dynamic container pinging
# each other, then `brindle endpoints`. bench-docker --demo runs its own etcd, dockerd and
# brindled in a private network namespace (containers, routes, Docker's iptables rules
# and forwarding sysctl all live there) and removes all of it when it ends.
#
# What remains is what dockerd and the harness do outside that namespace, undone here
# when it was not there before, also when bench-docker is killed or Ctrl-C'd (then its
# own clean-up does not run): the namespace (brldock-<its PID>-N) and whatever still runs
# in it, its temp dirs and their mounts, the `unreachable` guard route of the demo subnet,
# the plugin spec /etc/docker/plugins/brindledemo.spec, the trust key dockerd 20.10 writes
# to /etc/docker/key.json, /run/docker, dockerd's parent cgroups and, after a kill, the
# containers still running, and the br_netfilter module dockerd loads (which would send
# the machine's own bridged traffic through iptables).
set -euo pipefail
cd "$(dirname "$0")/.."

subnet=10.230.0.0/24 # bench-docker's DEMO_SUBNET
spec=/etc/docker/plugins/brindledemo.spec
work=$(mktemp -d /tmp/brindle-demo-docker.XXXXXX)
had() { [ -e "$1" ] && echo 1 || echo 0; }
had_plugins_dir=$(had /etc/docker/plugins)
had_spec=$(had "$spec")
had_key=$(had /etc/docker/key.json)
had_run_docker=$(had /run/docker)
had_br_netfilter=$(had /sys/module/br_netfilter)
had_route=$(ip route show exact "$subnet" type unreachable)
# dockerd's parent cgroups (cgroupfs driver): /sys/fs/cgroup/<controller>/docker, or
# /sys/fs/cgroup/docker on cgroup v2.
new_cgroups=()
for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  [ -e "${d}docker" ] || new_cgroups+=("${d}docker")
done
pid=""

cleanup() {
  set +e
  if [ -s "$work/pid" ]; then
    pid=$(cat "$work/pid")
    # still running only if killed with us (checked by name: the PID may be reused)
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = bench-docker ] && kill "$pid" && sleep 1
    for ns in $(ip netns list | awk -v p="brldock-$pid-" 'index($1, p) == 1 {print $1}'); do
      ip netns pids "$ns" | xargs -r kill -9 2>/dev/null
      ip netns del "$ns"
    done
  fi
  # Containers a killed dockerd left running (their IDs from its data root), by cgroup.
  for id in $(ls "$work"/brindle-docker-*/data/containers 2>/dev/null); do
    cat /sys/fs/cgroup/*/docker/"$id"/cgroup.procs /sys/fs/cgroup/docker/"$id"/cgroup.procs \
      2>/dev/null | sort -u | xargs -r kill -9 2>/dev/null
    sleep 0.2
    rmdir /sys/fs/cgroup/*/docker/"$id" /sys/fs/cgroup/docker/"$id" 2>/dev/null
  done
  ((${#new_cgroups[@]})) && rmdir "${new_cgroups[@]}" 2>/dev/null
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
  [ -z "$had_route" ] && ip route del unreachable "$subnet" 2>/dev/null
  [ "$had_spec" = 0 ] && rm -f "$spec"
  [ "$had_plugins_dir" = 0 ] && rmdir /etc/docker/plugins 2>/dev/null
  [ "$had_key" = 0 ] && rm -f /etc/docker/key.json
  # (its empty directories only: a dockerd started meanwhile keeps its sockets)
  [ "$had_run_docker" = 0 ] && find /run/docker -depth -type d -empty -delete 2>/dev/null
  if [ "$had_br_netfilter" = 0 ] && [ -e /sys/module/br_netfilter ]; then
    modprobe -r br_netfilter 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# In the foreground (so Ctrl-C reaches it), its PID recorded for the clean-up above, and
# its temp dirs (dockerd's data root and mounts among them) under $work.
TMPDIR="$work" bash -c 'echo $$ >"$1"; exec "$2" --demo' _ "$work/pid" target/release/bench-docker
