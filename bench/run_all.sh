#!/usr/bin/env bash
# Runs tokengate's benchmark suite in order and collects the RESULT lines.
#   bench/run_all.sh BUILD_DIR [NAME...]     (./run bench builds first, then runs this)
# NAME picks benchmarks by script name without .sh (e.g. "throughput memory"); default all.
# The benchmarks run one after another, never two at once (they share the machine's
# cores). Each prints its own table and a final "RESULT ..." line; this script repeats the
# RESULT lines at the end and exits non-zero if any benchmark failed (setup failure or a
# broken invariant; a missed speed goal is reported in its RESULT line, not a failure).
# bench/README.md describes each one. soak.sh is not part of the suite (it runs 10 min by
# default): run it on its own.
# Figures are for the machine it runs on (here: 2 cores, shared): compare ratios, not
# absolute numbers, across machines.
set -euo pipefail
build=${1:?usage: bench/run_all.sh BUILD_DIR [NAME...]}
shift
here=$(cd "$(dirname "$0")" && pwd)

all=(cached_path original_scenario cold_burst throughput scaling memory ttl_boundary)
benchmarks=("$@")
[ ${#benchmarks[@]} -gt 0 ] || benchmarks=("${all[@]}")
for b in "${benchmarks[@]}"; do
  [ -x "$here/$b.sh" ] || { echo "run_all: no benchmark $b (have: ${all[*]} soak)" >&2; exit 2; }
done

failed=()
results=()
start=$(date +%s)
for b in "${benchmarks[@]}"; do
  log=$(mktemp /tmp/tokengate-bench-log.XXXXXX)
  echo "### $b ($(date -u +%H:%M:%SZ))"
  if "$here/$b.sh" "$build" 2>&1 | tee "$log"; then :; else failed+=("$b"); fi
  while IFS= read -r line; do results+=("$line"); done < <(grep '^RESULT ' "$log" || true)
  rm -f "$log"
  echo
done

echo "### summary ($(nproc) cores, shared machine; $(($(date +%s) - start)) s)"
if [ ${#results[@]} -gt 0 ]; then printf '%s\n' "${results[@]}"; fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "all ${#benchmarks[@]} benchmark(s) passed"
