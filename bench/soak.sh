#!/usr/bin/env bash
# Soak: tokengate under token churn in front of a misbehaving API server, for a bounded
# time, watching its memory (issue 5, "bench/: a soak script").
#
#   bench/soak.sh BUILD_DIR [SECONDS]          (default 600; SOAK_SECONDS=60 for a quick run)
#
# One fake Kubernetes API server (spec/support/fake-apiserver) and one tokengate with the
# built-in default policy (TokenReview, then a SubjectAccessReview of path and verb) and
# short cache lifetimes, so that verdicts keep expiring and being reviewed again.
# The run is a sequence of phases of SOAK_PHASE seconds (default 5). In each phase:
#   - the API server misbehaves in one way, cycling through
#       ok, slow (300 ms), ok, throttled (3 in flight, 429 Retry-After 1), hang, ok,
#       5xx (half of the calls 500), garbage body, ok, resets (connection closed),
#       truncated JSON, ok, 504s (30 %, 50 ms)
#   - two bench/tgload runs share SOAK_CONNS connections (default 16: 12 + 4) for the phase,
#     each with a fresh token file: a window of 200 valid tokens that slides by 50 every phase
#     (new tokens keep arriving, old ones keep expiring), and 200 invalid tokens never seen
#     before (negative verdicts churn too). Their answers are counted separately.
# It prints the gateway's RSS (VmRSS of /proc/PID/status) at the start, every minute and at
# the end, one line per phase (answers by status, transport errors, p99), and the API
# calls the fake received; then it stops the gateway with SIGTERM and checks it exits 0.
# The last line is "RESULT {json}". Exits non-zero when the setup fails, when the gateway
# dies or does not exit 0, or when it answered 200 to an invalid token (during the run, or
# to a probe after it); memory growth alone never fails it (it is reported: judge the figures).
#
# Environment: SOAK_SECONDS (overrides SECONDS), SOAK_PHASE (5), SOAK_CONNS (16),
# SOAK_KEEP=1 keeps the work directory (logs) and prints its path.
set -euo pipefail

build=${1:?usage: bench/soak.sh BUILD_DIR [SECONDS]}
build=$(cd "$build" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

duration=${SOAK_SECONDS:-${2:-600}}
PHASE=${SOAK_PHASE:-5}
CONNS=${SOAK_CONNS:-16}
INVALID_CONNS=$((CONNS / 4 > 0 ? CONNS / 4 : 1))
VALID_CONNS=$((CONNS - INVALID_CONNS > 0 ? CONNS - INVALID_CONNS : 1))
N_VALID=3000
WINDOW=200
SLIDE=50
MACHINE="this machine ($(nproc) cores, shared)"

gateway_bin=$build/core/tokengate
fake_bin=$build/spec/support/fake-apiserver
tgload_bin=$build/bench/tgload
gen_certs=$root/spec/support/gen_certs.sh

die() { echo "soak: $*" >&2; exit 1; }

if ! [[ $duration =~ ^[0-9]+$ ]] || [ "$duration" -lt 10 ] || [ "$duration" -gt 3600 ]; then
  die "SECONDS must be a whole number from 10 to 3600 (got $duration)"
fi
if ! [[ $PHASE =~ ^[0-9]+$ ]] || [ "$PHASE" -lt 1 ] || [ "$PHASE" -gt 60 ]; then die "SOAK_PHASE must be 1..60 s"; fi
for b in "$gateway_bin" "$fake_bin" "$tgload_bin"; do
  [ -x "$b" ] || die "missing $b (build it first: cmake --build $build)"
done
[ -f "$gen_certs" ] || die "missing $gen_certs"
for tool in curl jq openssl; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

tmp=$(mktemp -d /tmp/tokengate-soak.XXXXXX)
pids=()
loads=() # the tgload runs of the current phase
gw_pid=
cleanup() {
  local pid
  for pid in "${loads[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "${SOAK_KEEP:-}" ]; then echo "soak: files kept in $tmp" >&2; else rm -rf "$tmp"; fi
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
      echo "soak: $(basename "$log" .log) exited before listening ($listener):" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "soak: timed out waiting for the $listener listener in $log" >&2
  return 1
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$gw_pid/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$gw_pid/status" 2>/dev/null || echo 0; }
metric() { # NAME: its value in the gateway's /metrics (0 when absent)
  awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }' "$tmp/metrics.txt"
}

# --- setup -----------------------------------------------------------------------------
echo "== tokengate soak: ${duration}s, phases of ${PHASE}s, $CONNS connections; $MACHINE"
"$gen_certs" "$tmp/certs" >"$tmp/gen_certs.log" 2>&1 || { cat "$tmp/gen_certs.log" >&2; die "gen_certs.sh failed"; }
salt=$(openssl rand -hex 6)
awk -v n="$N_VALID" -v salt="$salt" 'BEGIN {
  printf "{\"tokens\":["
  for (i = 0; i < n; i++) {
    ns = "soak-" (i % 10)
    printf "%s{\"token\":\"soak-%s-%d\",\"username\":\"system:serviceaccount:%s:sa-%d\",\"uid\":\"uid-%d\",", \
      (i ? "," : ""), salt, i, ns, i, i
    printf "\"groups\":[\"system:serviceaccounts\",\"system:serviceaccounts:%s\",\"system:authenticated\"]}", ns
  }
  printf "],\"sar_rules\":[{\"verb\":\"get\",\"path\":\"/*\"}]}\n"
}' >"$tmp/tokens.json"
printf 'gateway-credential-%s\n' "$(openssl rand -hex 16)" >"$tmp/cred.txt"

"$fake_bin" --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
  --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
  --tokens "$tmp/tokens.json" --credential-file "$tmp/cred.txt" >"$tmp/fake.log" 2>&1 &
fake_pid=$!
pids+=("$fake_pid")
api=$(wait_listening "$fake_pid" "$tmp/fake.log" api) || die "the fake API server did not start"
control=$(wait_listening "$fake_pid" "$tmp/fake.log" control) || die "the fake API server did not start"

GATEWAY_FLAGS=(--cache-ttl 5s --cache-negative-ttl 2s --sar-allowed-ttl 5s --sar-denied-ttl 2s
  --cache-max-entries 2000 --review-timeout 1s --apiserver-qps 100 --apiserver-burst 50
  --review-max-pending 200 --circuit-cooldown 2s --stale-if-error 10s --shutdown-grace 5s)
"$gateway_bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --apiserver "https://$api" --apiserver-ca "$tmp/certs/ca.crt" --apiserver-token-file "$tmp/cred.txt" \
  "${GATEWAY_FLAGS[@]}" >"$tmp/tokengate.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
gw_addr=$(wait_listening "$gw_pid" "$tmp/tokengate.log" main) || die "tokengate did not start"
admin_addr=$(wait_listening "$gw_pid" "$tmp/tokengate.log" admin) || die "tokengate did not start"
for _ in $(seq 100); do
  [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://$admin_addr/readyz")" = 200 ] && break
  sleep 0.1
done
[ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://$admin_addr/readyz")" = 200 ] ||
  die "tokengate never became ready"
echo "   fake API server https://$api (control http://$control); tokengate http://$gw_addr (admin $admin_addr)"
echo "   tokengate ${GATEWAY_FLAGS[*]}"
curl -sf --max-time 5 -X POST "http://$control/control/reset-stats" >/dev/null || die "cannot reset the fake's stats"

# --- the run -----------------------------------------------------------------------------
PHASES=(ok slow ok throttled hang ok 5xx garbage ok resets truncated ok 504s)
knobs_of() {
  case $1 in
    ok) echo '{}' ;;
    slow) echo '{"latency_ms":300}' ;;
    throttled) echo '{"max_inflight":3,"retry_after":1,"latency_ms":100}' ;;
    hang) echo '{"hang":true}' ;;
    5xx) echo '{"error_rate":0.5,"error_status":500}' ;;
    garbage) echo '{"garbage_body":true}' ;;
    resets) echo '{"close_connection":true}' ;;
    truncated) echo '{"truncated_body":true}' ;;
    504s) echo '{"error_rate":0.3,"error_status":504,"latency_ms":50}' ;;
  esac
}
DEFAULT_KNOBS='{"latency_ms":0,"hang":false,"close_connection":false,"error_rate":0,"error_status":500,"garbage_body":false,"truncated_body":false,"max_inflight":0,"retry_after":1}'

rss_start=$(rss_kb)
rss_max=$rss_start
rss_samples=("0:$rss_start")
echo "   RSS at start: ${rss_start} kB"
t_start=$(date +%s.%N)
elapsed() { awk -v s="$t_start" -v n="$(date +%s.%N)" 'BEGIN { printf "%d", n - s }'; }
next_report=60
phase=0
: >"$tmp/results.jsonl"
while [ "$(elapsed)" -lt "$duration" ]; do
  name=${PHASES[$((phase % ${#PHASES[@]}))]}
  knobs=$(jq -c -n --argjson d "$DEFAULT_KNOBS" --argjson k "$(knobs_of "$name")" '$d + $k')
  curl -sf --max-time 5 -X POST -H 'Content-Type: application/json' -d "$knobs" \
    "http://$control/control/config" >/dev/null || die "cannot configure the fake ($name)"
  # Two loads at once: a sliding window of valid tokens, and invalid tokens never seen before.
  awk -v start=$(((phase * SLIDE) % N_VALID)) -v w="$WINDOW" -v n="$N_VALID" -v salt="$salt" 'BEGIN {
      for (i = 0; i < w; i++) printf "soak-%s-%d\n", salt, (start + i) % n }' >"$tmp/valid.txt"
  awk -v bad="$(openssl rand -hex 4)" -v ph="$phase" -v w="$WINDOW" 'BEGIN {
      for (i = 0; i < w; i++) printf "soak-invalid-%s-%d-%d\n", bad, ph, i }' >"$tmp/invalid.txt"
  left=$((duration - $(elapsed)))
  d=$PHASE
  [ "$left" -lt "$d" ] && d=$left
  [ "$d" -lt 1 ] && d=1
  "$tgload_bin" --url "http://$gw_addr/soak" -c "$VALID_CONNS" -d "$d" --tokens "$tmp/valid.txt" \
    --timeout 5 >"$tmp/valid.out" 2>>"$tmp/tgload.err" &
  valid_pid=$!
  "$tgload_bin" --url "http://$gw_addr/soak" -c "$INVALID_CONNS" -d "$d" --tokens "$tmp/invalid.txt" \
    --timeout 5 >"$tmp/invalid.out" 2>>"$tmp/tgload.err" &
  invalid_pid=$!
  loads=("$valid_pid" "$invalid_pid")
  wait "$valid_pid" || die "tgload (valid tokens) failed in phase $phase ($name)"
  wait "$invalid_pid" || die "tgload (invalid tokens) failed in phase $phase ($name)"
  loads=()
  for class in valid invalid; do
    jq -c --arg name "$name" --arg class "$class" --argjson phase "$phase" \
      '. + {phase: $phase, name: $name, class: $class}' <(tail -n 1 "$tmp/$class.out") >>"$tmp/results.jsonl"
  done
  kill -0 "$gw_pid" 2>/dev/null || { tail -n 30 "$tmp/tokengate.log" >&2; die "tokengate died in phase $phase ($name)"; }
  rss=$(rss_kb)
  [ "$rss" -gt "$rss_max" ] && rss_max=$rss
  v=$(tail -n 1 "$tmp/valid.out")
  iv=$(tail -n 1 "$tmp/invalid.out")
  printf '   phase %3d %-9s valid %5d req %-24s err %d p99 %5.0f ms | invalid %5d req %-22s err %d | RSS %d kB\n' \
    "$phase" "$name" "$(jq .requests <<<"$v")" "$(jq -c .codes <<<"$v")" "$(jq .errors <<<"$v")" \
    "$(jq .p99_ms <<<"$v")" "$(jq .requests <<<"$iv")" "$(jq -c .codes <<<"$iv")" "$(jq .errors <<<"$iv")" "$rss"
  now=$(elapsed)
  if [ "$now" -ge "$next_report" ]; then
    echo "   RSS at ${now}s: ${rss} kB"
    rss_samples+=("$now:$rss")
    next_report=$((next_report + 60))
  fi
  phase=$((phase + 1))
done
total_s=$(elapsed)

# --- after the run -------------------------------------------------------------------------
curl -sf --max-time 5 -X POST -H 'Content-Type: application/json' -d "$DEFAULT_KNOBS" \
  "http://$control/control/config" >/dev/null || true
rss_end=$(rss_kb)
hwm=$(hwm_kb)
[ "${rss_samples[-1]%%:*}" = "$total_s" ] || rss_samples+=("$total_s:$rss_end")
echo "   RSS at end: ${rss_end} kB (peak VmHWM ${hwm} kB)"
# An invalid token must never pass, whatever happened before.
probe_token="soak-probe-invalid-$(openssl rand -hex 8)"
probe=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $probe_token" "http://$gw_addr/soak")
curl -sf --max-time 10 "http://$admin_addr/metrics" >"$tmp/metrics.txt" || die "cannot read the gateway's metrics"
fake_stats=$(curl -sf --max-time 10 "http://$control/control/stats" | jq -c 'del(.by_token)') || die "cannot read the fake's stats"
alive=true
kill -0 "$gw_pid" 2>/dev/null || alive=false
kill -TERM "$gw_pid" 2>/dev/null || true
exit_status=
for _ in $(seq 100); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$gw_pid" 2>/dev/null; then
  exit_status=timeout
  kill -KILL "$gw_pid" 2>/dev/null || true
fi
set +e
wait "$gw_pid"
st=$?
set -e
[ -z "$exit_status" ] && exit_status=$st

# codes_sum: a jq function adding up the "codes" objects of a list of tgload summaries
codes_sum='def codes_sum: map(.codes | to_entries) | add // [] | group_by(.key) | map({(.[0].key): (map(.value) | add)}) | add // {};'
totals=$(jq -s -c "$codes_sum"' {requests: (map(.requests) | add), errors: (map(.errors) | add), codes: codes_sum,
  valid: (map(select(.class == "valid")) | {requests: (map(.requests) | add), errors: (map(.errors) | add), codes: codes_sum}),
  invalid: (map(select(.class == "invalid")) | {requests: (map(.requests) | add), errors: (map(.errors) | add), codes: codes_sum}),
  by_phase: (group_by(.name) | map({(.[0].name): {phases: (map(.phase) | unique | length),
    valid: (map(select(.class == "valid")) | {requests: (map(.requests) | add), errors: (map(.errors) | add),
      p99_ms_max: (map(.p99_ms) | max), codes: codes_sum}),
    invalid: (map(select(.class == "invalid")) | {requests: (map(.requests) | add), errors: (map(.errors) | add), codes: codes_sum})}}) | add)}' \
  "$tmp/results.jsonl")
gw_metrics=$(jq -n -c \
  --argjson api_calls "$(metric gateway_tokenreview_api_calls_total)" \
  --argjson sar_calls "$(metric gateway_subjectaccessreview_api_calls_total)" \
  --argjson retries "$(metric gateway_apiserver_retries_total)" \
  --argjson circuit_opens "$(metric gateway_apiserver_circuit_opens_total)" \
  --argjson stale "$(metric gateway_tokenreview_stale_served_total)" \
  --argjson queue_rej "$(metric gateway_apiserver_queue_rejections_total)" \
  --argjson throttle_rej "$(metric gateway_apiserver_throttle_rejections_total)" \
  --argjson evictions "$(metric gateway_tokenreview_cache_evictions_total)" \
  --argjson e_timeout "$(metric 'gateway_tokenreview_api_errors_total{reason="timeout"}')" \
  --argjson e_throttled "$(metric 'gateway_tokenreview_api_errors_total{reason="throttled"}')" \
  --argjson e_http "$(metric 'gateway_tokenreview_api_errors_total{reason="http"}')" \
  --argjson e_network "$(metric 'gateway_tokenreview_api_errors_total{reason="network"}')" \
  --argjson e_bad "$(metric 'gateway_tokenreview_api_errors_total{reason="bad_response"}')" \
  '{tokenreview_api_calls: $api_calls, subjectaccessreview_api_calls: $sar_calls, retries: $retries,
    circuit_opens: $circuit_opens, stale_served: $stale, queue_rejections: $queue_rej,
    throttle_rejections: $throttle_rej, cache_evictions: $evictions,
    tokenreview_api_errors: {timeout: $e_timeout, throttled: $e_throttled, http: $e_http,
      network: $e_network, bad_response: $e_bad}}')
samples_json=$(printf '%s\n' "${rss_samples[@]}" | jq -R -s -c 'split("\n") | map(select(length > 0) |
  split(":") | {t_s: (.[0] | tonumber), rss_kb: (.[1] | tonumber)})')

echo "   valid tokens:   $(jq -c .valid.codes <<<"$totals"), transport errors $(jq .valid.errors <<<"$totals") of $(jq .valid.requests <<<"$totals") requests"
echo "   invalid tokens: $(jq -c .invalid.codes <<<"$totals"), transport errors $(jq .invalid.errors <<<"$totals") of $(jq .invalid.requests <<<"$totals") requests"
echo "   API calls received by the fake: $fake_stats"
echo "   gateway: $gw_metrics"
echo "   invalid-token probe after the run: $probe; gateway alive at the end: $alive; exit status after SIGTERM: $exit_status"

result=$(jq -n -c --arg machine "$MACHINE" --argjson seconds "$total_s" --argjson phases "$phase" \
  --argjson phase_s "$PHASE" --argjson conns "$CONNS" --argjson totals "$totals" \
  --argjson rss_start "$rss_start" --argjson rss_end "$rss_end" --argjson rss_max "$rss_max" --argjson hwm "$hwm" \
  --argjson samples "$samples_json" --argjson fake "$fake_stats" --argjson gw "$gw_metrics" \
  --arg probe "$probe" --argjson alive "$alive" --arg exit_status "$exit_status" \
  '{machine: $machine, seconds: $seconds, phases: $phases, phase_s: $phase_s, connections: $conns,
    requests: $totals.requests, transport_errors: $totals.errors, codes: $totals.codes,
    valid_tokens: $totals.valid, invalid_tokens: $totals.invalid,
    rss_kb: {start: $rss_start, end: $rss_end, max_sampled: $rss_max, peak_hwm: $hwm, samples: $samples},
    apiserver: $fake, gateway: $gw, by_phase: $totals.by_phase,
    invalid_probe: $probe, alive_at_end: $alive, exit_status: $exit_status}')
echo "RESULT $result"

[ "$alive" = true ] || die "tokengate died during the soak"
[ "$exit_status" = 0 ] || die "tokengate exited $exit_status after SIGTERM (want 0)"
[ "$probe" = 401 ] || [ "$probe" = 503 ] || die "an invalid token was answered $probe"
[ "$(jq '.invalid.codes["200"] // 0' <<<"$totals")" -eq 0 ] || die "invalid tokens were answered 200"
[ "$(jq '.valid.codes["200"] // 0' <<<"$totals")" -gt 0 ] || die "no valid token was answered 200"
