#!/usr/bin/env bash
# Docker part of the demo: a brindle network, a fixed-IP and a dynamic container pinging
# each other, then `brindle endpoints`. bench-docker --demo runs its own etcd, dockerd and
# brindled in a private network namespace and cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
exec target/release/bench-docker --demo
