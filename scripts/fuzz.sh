#!/usr/bin/env bash
# `make fuzz`: build every fuzz target once (cargo-fuzz, nightly, fuzz/target), then run
# each for FUZZ_SECONDS, one at a time on one core, and print per target the executions,
# the corpus size and any crash. Exits 1 when any target found a crash, a timeout or
# ran out of memory; the input is in fuzz/artifacts/TARGET/ (replay it with
# `fuzz/target/TRIPLE/release/TARGET FILE`, then turn it into a unit test).
#
# The binaries run directly rather than through `cargo fuzz run`, so the build happens
# once even when sources change during the run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-120}
read -r -a targets <<<"${FUZZ_TARGETS:-docker_requests cni_dispatch records bird_render}"

cd "$root/fuzz"
# No sanitizer: the product is safe Rust, and without ASan the targets run about
# twice as fast. Debug assertions keep overflow checks on, as in the unit tests.
cargo +nightly fuzz build --sanitizer none --debug-assertions
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bins="$root/fuzz/target/$triple/release"

failed=()
printf '\n%-16s %12s %8s %10s %s\n' target executions seconds corpus result
for t in "${targets[@]}"; do
  corpus="corpus/$t"
  artifacts="artifacts/$t"
  log="artifacts/$t.log"
  mkdir -p "$corpus" "$artifacts"
  status=0
  # stdin from /dev/null: nothing a target reads may wait for a terminal.
  "$bins/$t" "$corpus" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 \
    </dev/null >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  files=$(find "$corpus" -type f | wc -l)
  size=$(du -sh "$corpus" | cut -f1)
  if ((status == 0)); then
    result=ok
  else
    result="FAILED (exit $status): $(ls "$artifacts" | head -3 | tr '\n' ' ')see $log"
    failed+=("$t")
  fi
  printf '%-16s %12s %8s %10s %s\n' "$t" "${runs:-?}" "$seconds" "$files/$size" "$result"
done

if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
