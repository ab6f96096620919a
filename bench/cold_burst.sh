#!/usr/bin/env bash
# Cold burst (issue 6): 100 concurrent requests carrying one token the gateway has never
# seen, against an API server that takes 200 ms to answer, with --workers 2: exactly one
# TokenReview must reach the API server (single-flight across workers).
#
#   bench/cold_burst.sh BUILD_DIR
#
# One fake kube-apiserver (latency API_LATENCY_MS, 200 ms) and one tokengate --workers
# WORKERS (2) --policy none. Each of ROUNDS (5) rounds takes a token not used before (so
# the cache is cold for it) and fires BURST (100) requests at once with bench/tgload
# (-c 100 -n 100: all 100 connections are opened first, then one request is put on each at
# the same moment; the kernel spreads the connections over the workers' SO_REUSEPORT
# sockets). Per round: answers, p50/max latency, TokenReviews the fake received, and the
# gateway's gateway_tokenreview_coalesced_total increase.
#
# Goal: exactly 1 API call per round, every answer 200.
# Last line: RESULT cold_burst key=value ...
# Exits non-zero on a setup failure, a non-200 answer, or a round with other than 1 API
# call (single-flight is a correctness property, not a speed one).
#
# Environment: WORKERS (2), BURST (100), ROUNDS (5), API_LATENCY_MS (200), TG_KEEP=1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
tg_init cold_burst "${1:-}"
tg_need "$TG_GATEWAY" "$TG_FAKE" "$TG_TGLOAD"

WORKERS=${WORKERS:-2}
BURST=${BURST:-100}
ROUNDS=${ROUNDS:-5}
API_LATENCY_MS=${API_LATENCY_MS:-200}
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 100 ] || tg_die "ROUNDS must be 1..100"

echo "== cold burst: $BURST concurrent requests, one new token per round, API latency ${API_LATENCY_MS} ms," \
  "tokengate --workers $WORKERS, $ROUNDS rounds; $TG_MACHINE"
tg_tokens "$TG_TMP/tokens" "$ROUNDS"
tg_start_fake "$TG_TMP/tokens.json"
tg_start_gateway burst --workers "$WORKERS" --policy none
tg_fake_config "{\"latency_ms\":$API_LATENCY_MS}"
threads=$(tg_threads "$TG_GW_PID")
echo "  tokengate http://$TG_GW_ADDR: $threads OS threads"

calls_list=() ok_total=0 bad=0 max_list=() p50_list=()
for r in $(seq "$ROUNDS"); do
  sed -n "${r}p" "$TG_TMP/tokens.txt" >"$TG_TMP/round.txt"
  tg_fake_reset_stats
  coalesced_before=$(tg_metric gateway_tokenreview_coalesced_total)
  load=$("$TG_TGLOAD" --url "http://$TG_GW_ADDR/hooks/deliver" -c "$BURST" -n "$BURST" \
    --tokens "$TG_TMP/round.txt" --timeout 10 2>"$TG_TMP/load-$r.err") ||
    { cat "$TG_TMP/load-$r.err" >&2; tg_die "tgload failed (round $r)"; }
  calls=$(tg_fake_stat tokenreview_calls)
  coalesced=$(($(tg_metric gateway_tokenreview_coalesced_total) - coalesced_before))
  ok=$(tg_code 200 <<<"$load")
  ok_total=$((ok_total + ok))
  calls_list+=("$calls")
  p50_list+=("$(tg_json_num p50_ms <<<"$load")")
  max_list+=("$(tg_json_num max_ms <<<"$load")")
  [ "$ok" -eq "$BURST" ] || { bad=1; tg_note "round $r: $ok of $BURST answered 200: $load"; }
  [ "$calls" = 1 ] || { bad=1; tg_note "round $r: $calls TokenReviews for one token (want 1)"; }
  printf '  round %d: %d x 200 of %d, p50 %s ms, max %s ms, TokenReviews %s, coalesced %s\n' \
    "$r" "$ok" "$BURST" "$(tg_json_num p50_ms <<<"$load")" "$(tg_json_num max_ms <<<"$load")" "$calls" "$coalesced"
done

max_calls=$(printf '%s\n' "${calls_list[@]}" | sort -n | tail -n 1)
total_calls=$(printf '%s\n' "${calls_list[@]}" | awk '{ s += $1 } END { print s + 0 }')
goal=$([ "$bad" = 0 ] && echo true || echo false)
echo "  goal (1 API call per burst, all 200): $([ "$goal" = true ] && echo met || echo NOT met)"
tg_result cold_burst "workers=$WORKERS os_threads=$threads burst=$BURST rounds=$ROUNDS api_latency_ms=$API_LATENCY_MS" \
  "api_calls_per_burst_max=$max_calls api_calls_total=$total_calls ok=$ok_total of=$((BURST * ROUNDS))" \
  "p50_ms=$(tg_median "${p50_list[@]}") max_ms=$(printf '%s\n' "${max_list[@]}" | sort -g | tail -n 1) goal_met=$goal"
[ "$bad" = 0 ] || tg_die "a burst made other than 1 API call or got a non-200 answer"
