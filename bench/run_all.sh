#!/usr/bin/env bash
# Runs tokengate's benchmarks in order and collects their RESULT lines.
#   bench/run_all.sh BUILD_DIR      (./run bench builds first, then runs this)
# Each benchmark prints its own table and a final "RESULT {json}" line; this script
# repeats the RESULT lines at the end and exits non-zero if any benchmark failed.
# Figures are for the machine it runs on (here: 2 cores, shared): compare ratios, not
# absolute numbers, across machines.
set -euo pipefail
build=${1:?usage: bench/run_all.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)

benchmarks=(cached_path.sh)
failed=()
results=()
for b in "${benchmarks[@]}"; do
  log=$(mktemp /tmp/tokengate-bench-log.XXXXXX)
  echo "### $b"
  if "$here/$b" "$build" 2>&1 | tee "$log"; then :; else failed+=("$b"); fi
  while IFS= read -r line; do results+=("$line"); done < <(grep '^RESULT ' "$log" || true)
  rm -f "$log"
  echo
done

echo "### summary ($(nproc) cores, shared machine)"
if [ ${#results[@]} -gt 0 ]; then printf '%s\n' "${results[@]}"; fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "all ${#benchmarks[@]} benchmark(s) passed"
