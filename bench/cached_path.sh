#!/usr/bin/env bash
# Benchmark 1, the cached path: how much does tokengate cost per request once a token's
# verdict is cached, and how much of that is the Lua policy?
#
#   bench/cached_path.sh BUILD_DIR
#
# Three targets, measured side by side in one run:
#   default  tokengate with the built-in default policy (policies/default.lua: a
#            non-resource SubjectAccessReview of path and verb, answered from the SAR cache)
#   none     tokengate with --policy none (no Lua at all: every authenticated caller allowed)
#   bare     bench/bare-server, a bare evhttp server answering the same 200
# Each gateway has its own fake Kubernetes API server (one ServiceAccount token, a SAR rule
# allowing GET on /*), so each fake's counters belong to one gateway. Both gateways are
# warmed with one request; then wrk runs against the targets in alternation (ROUNDS x
# DURATION seconds each, -t1 -cCONNS --latency; the order rotates every round so no target
# always runs first) and the script prints req/s, p50 and p99 per round, the medians, the
# ratios default/bare, none/bare and default/none, and the policy cost
# 1 - rps(default)/rps(none) (the goal of issue 3 is at most 15 %). It checks that every
# measured request was a cache hit: the default gateway's fake saw exactly 1 TokenReview
# and 1 SubjectAccessReview (the warm-up), the none gateway's fake 1 TokenReview and no
# SubjectAccessReview. The last line is "RESULT {json}". Exits non-zero when the setup
# fails, when a measured request was not a 200, or when the counters moved; speed alone
# never fails it (this machine is small and shared).
#
# Environment: ROUNDS (5), DURATION (4 s), CONNS (64), WORKERS (1 event-loop thread for
# every server: wrk takes one of the two cores, the server the other). PIN (1): every
# server (both gateways, the bare server) runs pinned to the same core, SERVER_CPU (the
# last one), and wrk to LOAD_CPU (0), so the targets compete for the same core and wrk
# never shares it; PIN=0 leaves placement to the scheduler.
# COMPARE_BIN=PATH adds a fourth target, "compare": that tokengate binary with the default
# policy (e.g. a build from before a change), so before/after run side by side too.
# BARE_CHANGELIST=1 adds the target "bare_cl": the bare server with libevent's epoll change
# list (EVENT_EPOLL_USE_CHANGELIST=1), which tokengate's workers use, so the gateway is also
# compared with a bare server configured like it.
# Besides req/s and latency, each round prints the server's CPU time per request (user +
# system, from /proc/PID/stat, in microseconds): unlike req/s it does not depend on how
# fast wrk is on a shared machine, so the medians' cpu ratios are reported too.
# COMPARE_FLAGS="..." adds flags to the compare target only, e.g. the same binary with
# COMPARE_FLAGS="--access-log /tmp/decisions.log" measures the decision log's cost.
set -euo pipefail

build=${1:?usage: bench/cached_path.sh BUILD_DIR}
build=$(cd "$build" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
COMPARE_BIN=${COMPARE_BIN:-}
read -r -a compare_flags <<<"${COMPARE_FLAGS:-}"
PIN=${PIN:-1}
SERVER_CPU=${SERVER_CPU:-$(($(nproc) - 1))}
LOAD_CPU=${LOAD_CPU:-0}
server_on=() load_on=()
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || { echo "cached_path: PIN=1 needs taskset (util-linux)" >&2; exit 1; }
  server_on=(taskset -c "$SERVER_CPU") load_on=(taskset -c "$LOAD_CPU")
fi
MACHINE="this machine ($(nproc) cores, shared)"
[ "$PIN" = 1 ] && MACHINE+="; servers pinned to CPU $SERVER_CPU, wrk to CPU $LOAD_CPU"
POLICY_COST_GOAL=0.15

gateway_bin=$build/core/tokengate
fake_bin=$build/spec/support/fake-apiserver
bare_bin=$build/bench/bare-server
gen_certs=$root/spec/support/gen_certs.sh

die() { echo "cached_path: $*" >&2; exit 1; }

for b in "$gateway_bin" "$fake_bin" "$bare_bin" ${COMPARE_BIN:+"$COMPARE_BIN"}; do
  [ -x "$b" ] || die "missing $b (build it first: cmake --build $build)"
done
[ -f "$gen_certs" ] || die "missing $gen_certs"
command -v wrk >/dev/null || die "wrk is not installed"
command -v curl >/dev/null || die "curl is not installed"
targets=(default none bare)
[ -n "$COMPARE_BIN" ] && targets+=(compare)
[ "${BARE_CHANGELIST:-0}" = 1 ] && targets+=(bare_cl)
if [ $((ROUNDS * DURATION * ${#targets[@]})) -gt 160 ]; then
  die "ROUNDS x DURATION x ${#targets[@]} targets must stay within 160 s (got $((ROUNDS * DURATION * ${#targets[@]})))"
fi

tmp=$(mktemp -d /tmp/tokengate-bench.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_listening PID LOG LISTENER: print the addr the process logged for LISTENER.
wait_listening() {
  local pid=$1 log=$2 listener=$3 addr
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*"msg":"listening".*"listener":"'"$listener"'".*"addr":"\([^"]*\)".*/\1/p' \
      "$log" 2>/dev/null | head -n 1)
    if [ -n "$addr" ]; then echo "$addr"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "cached_path: $(basename "$log" .log) exited before listening ($listener):" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "cached_path: timed out waiting for the $listener listener in $log" >&2
  tail -n 20 "$log" >&2
  return 1
}

# json_num KEY: the number after "KEY": in the JSON on stdin (flat keys only).
json_num() { sed -n 's/.*"'"$1"'":\([0-9.eE+-]*\).*/\1/p' | head -n 1; }

# fake_stats CONTROL_ADDR: "tokenreview_calls subjectaccessreview_calls"
fake_stats() {
  local s
  s=$(curl -sf --max-time 5 "http://$1/control/stats") || { echo "? ?"; return 0; }
  echo "$(json_num tokenreview_calls <<<"$s") $(json_num subjectaccessreview_calls <<<"$s")"
}

# parse_wrk FILE: "rps p50_ms p99_ms non2xx socket_errors requests"
parse_wrk() {
  awk '
    function ms(v,   n, u) {
      n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000
      if (u == "ms") return n
      if (u == "s") return n * 1000
      if (u == "m") return n * 60000
      return n
    }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(",", ""); errs = $4 + $6 + $8 + $10 }
    / requests in / { total = $1 }
    END { printf "%.1f %.3f %.3f %d %d %d\n", rps, p50, p99, non2xx, errs, total }' "$1"
}

# median of the numbers given as arguments
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
  if (NR == 0) { print 0; exit }
  if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ratio A B: A / B with 3 decimals (0 when B is 0)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }'; }

echo "== tokengate benchmark: cached path, default policy vs --policy none vs bare evhttp server"
echo "   $MACHINE; wrk -t1 -c$CONNS -d${DURATION}s --latency, $ROUNDS rounds, targets alternating"
echo "   (${targets[*]}); $WORKERS event-loop thread(s) for every server"

# --- setup -----------------------------------------------------------------------------
"$gen_certs" "$tmp/certs" >"$tmp/gen_certs.log" 2>&1 || { cat "$tmp/gen_certs.log" >&2; die "gen_certs.sh failed"; }
token="bench.$(openssl rand -hex 24)"
printf '%s\n' "$token" >"$tmp/tokens.txt"
cat >"$tmp/tokens.json" <<EOF
{"tokens":[{"token":"$token","username":"system:serviceaccount:bench:load-client","uid":"0b6f2a8e-3c1d-4e5f-9a7b-8c9d0e1f2a3b","groups":["system:serviceaccounts","system:serviceaccounts:bench","system:authenticated"]}],"sar_rules":[{"verb":"get","path":"/*"}]}
EOF
printf 'gateway-credential-%s\n' "$(openssl rand -hex 16)" >"$tmp/cred.txt"

gw_workers=()
if "$gateway_bin" --help 2>&1 | grep -q -- '--workers'; then
  gw_workers=(--workers "$WORKERS")
else
  echo "   (this tokengate build has no --workers flag: it runs with its own default)"
fi

declare -A addr control warm_tr warm_sar pid_of
# start_gateway NAME BINARY [EXTRA FLAGS...]: its own fake API server, then the gateway,
# then one warm-up request that must answer 200.
start_gateway() {
  local name=$1 bin=$2 pid code
  shift 2
  "$fake_bin" --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
    --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
    --tokens "$tmp/tokens.json" --credential-file "$tmp/cred.txt" >"$tmp/fake-$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  local api
  api=$(wait_listening "$pid" "$tmp/fake-$name.log" api) || die "fake API server ($name) did not start"
  control[$name]=$(wait_listening "$pid" "$tmp/fake-$name.log" control) || die "fake API server ($name) did not start"

  local workers=()
  if [ "$bin" = "$gateway_bin" ] || "$bin" --help 2>&1 | grep -q -- '--workers'; then workers=("${gw_workers[@]}"); fi
  "${server_on[@]}" "$bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --apiserver "https://$api" --apiserver-ca "$tmp/certs/ca.crt" \
    --apiserver-token-file "$tmp/cred.txt" --cache-ttl 10m --sar-allowed-ttl 10m \
    "${workers[@]}" "$@" >"$tmp/tokengate-$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  pid_of[$name]=$pid
  addr[$name]=$(wait_listening "$pid" "$tmp/tokengate-$name.log" main) || die "tokengate ($name) did not start"

  curl -sf --max-time 5 -X POST "http://${control[$name]}/control/reset-stats" >/dev/null ||
    die "cannot reset the stats of the fake API server ($name)"
  code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $token" "http://${addr[$name]}/bench") || true
  [ "$code" = 200 ] || { tail -n 20 "$tmp/tokengate-$name.log" >&2; die "warm-up request ($name) answered $code, want 200"; }
  read -r "warm_tr[$name]" "warm_sar[$name]" < <(fake_stats "${control[$name]}")
  local threads
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo "?")
  echo "   $name: tokengate${*:+ $*} http://${addr[$name]} ($threads OS threads); warm-up 200," \
    "TokenReviews ${warm_tr[$name]}, SubjectAccessReviews ${warm_sar[$name]}"
}

start_gateway default "$gateway_bin"
start_gateway none "$gateway_bin" --policy none
[ -n "$COMPARE_BIN" ] && start_gateway compare "$COMPARE_BIN" "${compare_flags[@]}"

"${server_on[@]}" "$bare_bin" --listen 127.0.0.1:0 --threads "$WORKERS" >"$tmp/bare-server.log" 2>&1 &
pids+=($!)
pid_of[bare]=$!
addr[bare]=$(wait_listening "$!" "$tmp/bare-server.log" main) || die "bare-server did not start"
echo "   bare: http://${addr[bare]}"
if [ "${BARE_CHANGELIST:-0}" = 1 ]; then
  EVENT_EPOLL_USE_CHANGELIST=1 "${server_on[@]}" "$bare_bin" --listen 127.0.0.1:0 --threads "$WORKERS" \
    >"$tmp/bare-cl-server.log" 2>&1 &
  pids+=($!)
  pid_of[bare_cl]=$!
  addr[bare_cl]=$(wait_listening "$!" "$tmp/bare-cl-server.log" main) || die "bare-server (change list) did not start"
  echo "   bare_cl: http://${addr[bare_cl]} (EVENT_EPOLL_USE_CHANGELIST=1)"
fi
echo

# --- rounds ------------------------------------------------------------------------------
printf '%-6s %-9s %12s %9s %9s %8s %8s %9s %s\n' round target "req/s" "p50 ms" "p99 ms" non-2xx errors \
  "cpu us/req" "TokenReviews/SARs"
declare -A rps_of p50_of p99_of cpu_of
clock_ticks=$(getconf CLK_TCK)
# cpu_ticks PID: user + system time of the process (all its threads) in clock ticks
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
bad=0
run_wrk() { # run_wrk ADDR OUTFILE
  TG_TOKENS=$tmp/tokens.txt timeout $((DURATION + 20)) \
    "${load_on[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency --timeout 5s \
    -s "$here/wrk_bearer.lua" "http://$1/bench" >"$2" 2>&1 ||
    { cat "$2" >&2; die "wrk failed against $1"; }
}
n_targets=${#targets[@]}
for r in $(seq "$ROUNDS"); do
  for i in $(seq 0 $((n_targets - 1))); do
    target=${targets[$(((i + r - 1) % n_targets))]}
    out=$tmp/wrk-$target-$r.txt
    ticks_before=$(cpu_ticks "${pid_of[$target]}")
    run_wrk "${addr[$target]}" "$out"
    ticks_after=$(cpu_ticks "${pid_of[$target]}")
    read -r rps p50 p99 non2xx errs total < <(parse_wrk "$out")
    cpu_us=$(awk -v t=$((ticks_after - ticks_before)) -v hz="$clock_ticks" -v n="$total" \
      'BEGIN { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print 0 }')
    rps_of[$target]+="$rps " p50_of[$target]+="$p50 " p99_of[$target]+="$p99 " cpu_of[$target]+="$cpu_us "
    calls=-
    if [ "$target" != bare ] && [ "$target" != bare_cl ]; then
      [ "$non2xx" -eq 0 ] && [ "$errs" -eq 0 ] && [ "$total" -gt 0 ] || bad=1
      read -r tr sar < <(fake_stats "${control[$target]}")
      calls="$tr/$sar"
    fi
    printf '%-6s %-9s %12s %9s %9s %8s %8s %9s %s\n' "$r" "$target" "$rps" "$p50" "$p99" "$non2xx" "$errs" "$cpu_us" "$calls"
  done
done

# --- summary -----------------------------------------------------------------------------
declare -A m_rps m_p50 m_p99 m_cpu
for t in "${targets[@]}"; do
  # shellcheck disable=SC2086 # the lists are space-separated numbers
  m_rps[$t]=$(median ${rps_of[$t]}) m_p50[$t]=$(median ${p50_of[$t]}) m_p99[$t]=$(median ${p99_of[$t]})
  # shellcheck disable=SC2086
  m_cpu[$t]=$(median ${cpu_of[$t]})
done
# CPU ratios: the bare server's CPU time per request over the gateway's (higher is better,
# like the req/s ratios: 1 means the gateway costs what the bare server costs).
cpu_ratio=$(ratio "${m_cpu[bare]}" "${m_cpu[default]}")
cpu_ratio_none=$(ratio "${m_cpu[bare]}" "${m_cpu[none]}")
ratio_rps=$(ratio "${m_rps[default]}" "${m_rps[bare]}")
ratio_p99=$(ratio "${m_p99[default]}" "${m_p99[bare]}")
ratio_rps_none=$(ratio "${m_rps[none]}" "${m_rps[bare]}")
ratio_p99_none=$(ratio "${m_p99[none]}" "${m_p99[bare]}")
policy_ratio_rps=$(ratio "${m_rps[default]}" "${m_rps[none]}")
policy_ratio_p99=$(ratio "${m_p99[default]}" "${m_p99[none]}")
policy_cost=$(awk -v r="$policy_ratio_rps" 'BEGIN { printf "%.3f", 1 - r }')
# The same cost from each round's own pair (default and none measured minutes apart at
# most), whose median is less sensitive to the machine's load drifting during the run.
read -r -a d_list <<<"${rps_of[default]}"
read -r -a n_list <<<"${rps_of[none]}"
paired=()
for i in "${!d_list[@]}"; do paired+=("$(awk -v a="${d_list[$i]}" -v b="${n_list[$i]}" 'BEGIN { if (b > 0) printf "%.4f", 1 - a / b; else print 0 }')"); done
policy_cost_paired=$(median "${paired[@]}")
goal_met=$(awk -v c="$policy_cost" -v g="$POLICY_COST_GOAL" 'BEGIN { print (c <= g) ? "true" : "false" }')
under_1ms=$(awk -v p="${m_p99[default]}" 'BEGIN { if (p > 0 && p < 1.0) print "true"; else print "false" }')

read -r tr_default sar_default < <(fake_stats "${control[default]}")
read -r tr_none sar_none < <(fake_stats "${control[none]}")
cached_ok=true
[ "${warm_tr[default]}" = 1 ] && [ "$tr_default" = 1 ] && [ "${warm_sar[default]}" = 1 ] && [ "$sar_default" = 1 ] &&
  [ "${warm_tr[none]}" = 1 ] && [ "$tr_none" = 1 ] && [ "${warm_sar[none]}" = 0 ] && [ "$sar_none" = 0 ] ||
  cached_ok=false
if [ -n "$COMPARE_BIN" ]; then
  read -r tr_compare sar_compare < <(fake_stats "${control[compare]}")
  [ "$tr_compare" = 1 ] && [ "$sar_compare" = 1 ] || cached_ok=false
fi

echo
for t in "${targets[@]}"; do
  printf '%-6s %-9s %12s %9s %9s %26s\n' median "$t" "${m_rps[$t]}" "${m_p50[$t]}" "${m_p99[$t]}" "${m_cpu[$t]}"
done
echo
echo "ratios ($MACHINE; medians):"
echo "  default/bare: req/s $ratio_rps, p99 $ratio_p99"
echo "  none/bare:    req/s $ratio_rps_none, p99 $ratio_p99_none"
echo "  default/none: req/s $policy_ratio_rps, p99 $policy_ratio_p99"
echo "  cpu per request, bare/default: $cpu_ratio, bare/none: $cpu_ratio_none"
if [ "${BARE_CHANGELIST:-0}" = 1 ]; then
  echo "  against bare_cl: default req/s $(ratio "${m_rps[default]}" "${m_rps[bare_cl]}"), none req/s" \
    "$(ratio "${m_rps[none]}" "${m_rps[bare_cl]}"); cpu bare_cl/default $(ratio "${m_cpu[bare_cl]}" "${m_cpu[default]}")," \
    "bare_cl/none $(ratio "${m_cpu[bare_cl]}" "${m_cpu[none]}")"
fi
if [ -n "$COMPARE_BIN" ]; then
  echo "  default/compare: req/s $(ratio "${m_rps[default]}" "${m_rps[compare]}"), p99 $(ratio "${m_p99[default]}" "${m_p99[compare]}")"
fi
echo "policy cost 1 - rps(default)/rps(none): $policy_cost (median of per-round pairs: $policy_cost_paired);" \
  "goal <= $POLICY_COST_GOAL: $([ "$goal_met" = true ] && echo met || echo "NOT met")"
echo "cached p99 under 1 ms (default policy): $([ "$under_1ms" = true ] && echo yes || echo no) (median p99 ${m_p99[default]} ms)"
echo "fake API servers, TokenReviews/SubjectAccessReviews: default $tr_default/$sar_default (want 1/1)," \
  "none $tr_none/$sar_none (want 1/0)$([ -n "$COMPARE_BIN" ] && echo ", compare $tr_compare/$sar_compare (want 1/1)")" \
  "$([ "$cached_ok" = true ] && echo "- every measured request was a cache hit" || echo "- NOT a cached-path measurement")"

printf 'RESULT {"benchmark":"cached_path","machine":"%s","rounds":%d,"duration_s":%s,"connections":%d,"workers":%d,' \
  "$MACHINE" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS"
printf '"gateway":{"policy":"default","rps":%s,"p50_ms":%s,"p99_ms":%s},' \
  "${m_rps[default]}" "${m_p50[default]}" "${m_p99[default]}"
printf '"gateway_no_policy":{"policy":"none","rps":%s,"p50_ms":%s,"p99_ms":%s},' \
  "${m_rps[none]}" "${m_p50[none]}" "${m_p99[none]}"
printf '"bare":{"rps":%s,"p50_ms":%s,"p99_ms":%s},' "${m_rps[bare]}" "${m_p50[bare]}" "${m_p99[bare]}"
if [ -n "$COMPARE_BIN" ]; then
  printf '"compare":{"policy":"default","rps":%s,"p50_ms":%s,"p99_ms":%s},' \
    "${m_rps[compare]}" "${m_p50[compare]}" "${m_p99[compare]}"
fi
printf '"ratio_rps":%s,"ratio_p99":%s,"ratio_rps_no_policy":%s,"ratio_p99_no_policy":%s,' \
  "$ratio_rps" "$ratio_p99" "$ratio_rps_none" "$ratio_p99_none"
printf '"cpu_us_per_request":{"default":%s,"none":%s,"bare":%s},"cpu_ratio":%s,"cpu_ratio_no_policy":%s,' \
  "${m_cpu[default]}" "${m_cpu[none]}" "${m_cpu[bare]}" "$cpu_ratio" "$cpu_ratio_none"
printf '"policy_ratio_rps":%s,"policy_ratio_p99":%s,"policy_cost":%s,"policy_cost_paired":%s,"policy_cost_goal":%s,"policy_cost_goal_met":%s,' \
  "$policy_ratio_rps" "$policy_ratio_p99" "$policy_cost" "$policy_cost_paired" "$POLICY_COST_GOAL" "$goal_met"
printf '"cached_p99_under_1ms":%s,"tokenreview_calls":%s,"subjectaccessreview_calls":%s,"tokenreview_calls_no_policy":%s,"cached_path":%s,"all_200":%s}\n' \
  "$under_1ms" "${tr_default:-null}" "${sar_default:-null}" "${tr_none:-null}" "$cached_ok" \
  "$([ $bad = 0 ] && echo true || echo false)"

if [ "$bad" != 0 ]; then
  echo "cached_path: a gateway answered something other than 200 or had socket errors" >&2
  exit 1
fi
if [ "$cached_ok" != true ]; then
  echo "cached_path: TokenReview or SubjectAccessReview calls changed during the run: not a cached-path measurement" >&2
  exit 1
fi
