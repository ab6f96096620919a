#!/usr/bin/env bash
# Benchmark 1, the cached path: how much does tokengate cost per request once a token's
# verdict is cached, compared with a bare evhttp server that answers the same 200?
#
#   bench/cached_path.sh BUILD_DIR
#
# Starts a fake Kubernetes API server with one ServiceAccount token, tokengate in front of
# it, and bench/bare-server; warms the token with one request; then runs wrk against the
# gateway and the bare server in alternation (ROUNDS x DURATION seconds each, -t1 -cCONNS
# --latency) and prints req/s, p50 and p99 per round, the medians, the gateway/bare ratios,
# whether the gateway's cached p99 is under 1 ms, and the fake's TokenReview call counter
# (it must stay at 1: every measured request is a cache hit). The last line is
# "RESULT {json}". Exits non-zero when the setup fails or when the run was not all 200s on
# the cached path; speed alone never fails it (this machine is small and shared).
#
# Environment: ROUNDS (3), DURATION (5 s), CONNS (64), WORKERS (1 event-loop thread for
# both servers: wrk takes one of the two cores, the server the other).
set -euo pipefail

build=${1:?usage: bench/cached_path.sh BUILD_DIR}
build=$(cd "$build" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
MACHINE="this machine ($(nproc) cores, shared)"

gateway_bin=$build/core/tokengate
fake_bin=$build/spec/support/fake-apiserver
bare_bin=$build/bench/bare-server
gen_certs=$root/spec/support/gen_certs.sh

die() { echo "cached_path: $*" >&2; exit 1; }

for b in "$gateway_bin" "$fake_bin" "$bare_bin"; do
  [ -x "$b" ] || die "missing $b (build it first: cmake --build $build)"
done
[ -f "$gen_certs" ] || die "missing $gen_certs"
command -v wrk >/dev/null || die "wrk is not installed"
command -v curl >/dev/null || die "curl is not installed"
if [ $((ROUNDS * DURATION * 2)) -gt 120 ]; then
  die "ROUNDS x DURATION x 2 must stay within 120 s (got $((ROUNDS * DURATION * 2)))"
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

fake_calls() { curl -sf --max-time 5 "http://$control/control/stats" | json_num tokenreview_calls; }

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

echo "== tokengate benchmark: cached path vs bare evhttp server"
echo "   $MACHINE; wrk -t1 -c$CONNS -d${DURATION}s --latency, $ROUNDS rounds alternating;"
echo "   $WORKERS event-loop thread(s) for both servers"

# --- setup -----------------------------------------------------------------------------
"$gen_certs" "$tmp/certs" >"$tmp/gen_certs.log" 2>&1 || { cat "$tmp/gen_certs.log" >&2; die "gen_certs.sh failed"; }
token="bench.$(openssl rand -hex 24)"
printf '%s\n' "$token" >"$tmp/tokens.txt"
cat >"$tmp/tokens.json" <<EOF
{"tokens":[{"token":"$token","username":"system:serviceaccount:bench:load-client","uid":"0b6f2a8e-3c1d-4e5f-9a7b-8c9d0e1f2a3b","groups":["system:serviceaccounts","system:serviceaccounts:bench","system:authenticated"]}],"sar_rules":[{"verb":"get","path":"/*"}]}
EOF
printf 'gateway-credential-%s\n' "$(openssl rand -hex 16)" >"$tmp/cred.txt"

"$fake_bin" --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
  --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
  --tokens "$tmp/tokens.json" --credential-file "$tmp/cred.txt" >"$tmp/fake-apiserver.log" 2>&1 &
pids+=($!)
fake_pid=$!
api=$(wait_listening "$fake_pid" "$tmp/fake-apiserver.log" api) || die "fake API server did not start"
control=$(wait_listening "$fake_pid" "$tmp/fake-apiserver.log" control) || die "fake API server did not start"

gw_workers=()
if "$gateway_bin" --help 2>&1 | grep -q -- '--workers'; then
  gw_workers=(--workers "$WORKERS")
else
  echo "   (this tokengate build has no --workers flag: it runs with its own default)"
fi
"$gateway_bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --apiserver "https://$api" --apiserver-ca "$tmp/certs/ca.crt" \
  --apiserver-token-file "$tmp/cred.txt" --cache-ttl 10m "${gw_workers[@]}" \
  >"$tmp/tokengate.log" 2>&1 &
pids+=($!)
gw_pid=$!
gw=$(wait_listening "$gw_pid" "$tmp/tokengate.log" main) || die "tokengate did not start"
admin=$(wait_listening "$gw_pid" "$tmp/tokengate.log" admin) || die "tokengate did not start"

"$bare_bin" --listen 127.0.0.1:0 --threads "$WORKERS" >"$tmp/bare-server.log" 2>&1 &
pids+=($!)
bare=$(wait_listening "$!" "$tmp/bare-server.log" main) || die "bare-server did not start"

curl -sf --max-time 5 -X POST "http://$control/control/reset-stats" >/dev/null ||
  die "cannot reset the fake API server's stats"
code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' \
  -H "Authorization: Bearer $token" "http://$gw/bench") || true
[ "$code" = 200 ] || { tail -n 20 "$tmp/tokengate.log" >&2; die "warm-up request answered $code, want 200"; }
calls_warm=$(fake_calls)
gw_threads=$(awk '/^Threads:/ { print $2 }' "/proc/$gw_pid/status" 2>/dev/null || echo "?")
echo "   gateway http://$gw ($gw_threads OS threads), bare server http://$bare, fake API server https://$api"
echo "   warm-up: 200, TokenReview calls so far: ${calls_warm:-?}"
echo

# --- rounds ------------------------------------------------------------------------------
printf '%-6s %-10s %12s %9s %9s %8s %8s %s\n' round server "req/s" "p50 ms" "p99 ms" non-2xx errors \
  "TokenReview calls"
gw_rps=() gw_p50=() gw_p99=() bare_rps=() bare_p50=() bare_p99=()
bad=0 calls=$calls_warm
run_wrk() { # run_wrk ADDR OUTFILE
  TG_TOKENS=$tmp/tokens.txt timeout $((DURATION + 20)) \
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency --timeout 5s \
    -s "$here/wrk_bearer.lua" "http://$1/bench" >"$2" 2>&1 ||
    { cat "$2" >&2; die "wrk failed against $1"; }
}
for r in $(seq "$ROUNDS"); do
  for target in tokengate bare; do
    if [ "$target" = tokengate ]; then addr=$gw; else addr=$bare; fi
    out=$tmp/wrk-$target-$r.txt
    run_wrk "$addr" "$out"
    read -r rps p50 p99 non2xx errs total < <(parse_wrk "$out")
    if [ "$target" = tokengate ]; then
      calls=$(fake_calls)
      gw_rps+=("$rps") gw_p50+=("$p50") gw_p99+=("$p99")
      [ "$non2xx" -eq 0 ] && [ "$errs" -eq 0 ] && [ "$total" -gt 0 ] || bad=1
      printf '%-6s %-10s %12s %9s %9s %8s %8s %s\n' "$r" "$target" "$rps" "$p50" "$p99" "$non2xx" \
        "$errs" "${calls:-?}"
    else
      bare_rps+=("$rps") bare_p50+=("$p50") bare_p99+=("$p99")
      printf '%-6s %-10s %12s %9s %9s %8s %8s %s\n' "$r" "$target" "$rps" "$p50" "$p99" "$non2xx" \
        "$errs" "-"
    fi
  done
done

m_gw_rps=$(median "${gw_rps[@]}") m_gw_p50=$(median "${gw_p50[@]}") m_gw_p99=$(median "${gw_p99[@]}")
m_bare_rps=$(median "${bare_rps[@]}") m_bare_p50=$(median "${bare_p50[@]}")
m_bare_p99=$(median "${bare_p99[@]}")
ratio_rps=$(awk -v a="$m_gw_rps" -v b="$m_bare_rps" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }')
ratio_p99=$(awk -v a="$m_gw_p99" -v b="$m_bare_p99" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }')
under_1ms=$(awk -v p="$m_gw_p99" 'BEGIN { if (p > 0 && p < 1.0) print "true"; else print "false" }')
cached_ok=true
[ "${calls:-x}" = 1 ] && [ "${calls_warm:-x}" = 1 ] || cached_ok=false
hits=$(curl -sf --max-time 5 "http://$admin/metrics" |
  sed -n 's/^gateway_tokenreview_cache_hits_total \([0-9.eE+]*\).*/\1/p' | head -n 1) || true

echo
printf '%-6s %-10s %12s %9s %9s\n' median tokengate "$m_gw_rps" "$m_gw_p50" "$m_gw_p99"
printf '%-6s %-10s %12s %9s %9s\n' median bare "$m_bare_rps" "$m_bare_p50" "$m_bare_p99"
echo
echo "gateway/bare ($MACHINE): req/s ratio $ratio_rps, p99 ratio $ratio_p99"
echo "cached p99 under 1 ms: $([ "$under_1ms" = true ] && echo yes || echo no) (median p99 $m_gw_p99 ms)"
echo "TokenReview calls seen by the fake API server: ${calls:-?} (warm-up only: $([ "$cached_ok" = true ] && echo "yes, every measured request was a cache hit" || echo "NO"))"
[ -n "$hits" ] && echo "gateway cache hits: $hits"

printf 'RESULT {"benchmark":"cached_path","machine":"%s","rounds":%d,"duration_s":%s,"connections":%d,"workers":%d,' \
  "$MACHINE" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS"
printf '"gateway":{"rps":%s,"p50_ms":%s,"p99_ms":%s},"bare":{"rps":%s,"p50_ms":%s,"p99_ms":%s},' \
  "$m_gw_rps" "$m_gw_p50" "$m_gw_p99" "$m_bare_rps" "$m_bare_p50" "$m_bare_p99"
printf '"ratio_rps":%s,"ratio_p99":%s,"cached_p99_under_1ms":%s,"tokenreview_calls":%s,"cached_path":%s,"all_200":%s}\n' \
  "$ratio_rps" "$ratio_p99" "$under_1ms" "${calls:-null}" "$cached_ok" "$([ $bad = 0 ] && echo true || echo false)"

if [ "$bad" != 0 ]; then
  echo "cached_path: the gateway answered something other than 200 or had socket errors" >&2
  exit 1
fi
if [ "$cached_ok" != true ]; then
  echo "cached_path: TokenReview calls changed during the run: not a cached-path measurement" >&2
  exit 1
fi
