#!/usr/bin/env bash
# Cold burst of distinct tokens (issue 14): BURST (100) requests at once, each with a token
# (and identity) the gateway has never seen, against a healthy fake API server answering
# in API_LATENCY_MS (200 ms); once with the default policy (a TokenReview then a
# SubjectAccessReview per request) and once with --policy none (TokenReview only).
#
#   bench/cold_distinct.sh BUILD_DIR
#
# Goals: every answer 200; the slowest within 2 x API latency + 100 ms (default policy)
# and API latency + 100 ms (--policy none). The bucket (--apiserver-qps 50,
# --apiserver-burst 100 by default) stays a ceiling: 100 distinct identities need 200 calls
# with the default policy, so that run is also made with GATEWAY_FLAGS_DEFAULT
# ("--apiserver-burst 200") to show what the in-flight limit alone allows.
# Last line: RESULT cold_distinct key=value ...
# Rounds are REFILL_S (4.5) s apart so that each starts with a full bucket (a burst that
# meets an empty bucket measures --apiserver-qps, not the burst).
# Environment: BURST (100), API_LATENCY_MS (200), ROUNDS (3), REFILL_S (4.5), TG_KEEP=1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
tg_init cold_distinct "${1:-}"
tg_need "$TG_GATEWAY" "$TG_FAKE" "$TG_TGLOAD"

BURST=${BURST:-100}
API_LATENCY_MS=${API_LATENCY_MS:-200}
ROUNDS=${ROUNDS:-3}
REFILL_S=${REFILL_S:-4.5}

echo "== cold burst of $BURST distinct new tokens at once, API latency ${API_LATENCY_MS} ms, $ROUNDS rounds; $TG_MACHINE"
tg_tokens "$TG_TMP/tokens" $((BURST * ROUNDS * 3))
tg_start_fake "$TG_TMP/tokens.json"
tg_fake_config "{\"latency_ms\":$API_LATENCY_MS}"

results=() offset=0 all_ok=true
run() { # NAME GOAL_MS FLAGS...
  local name=$1 goal_ms=$2
  shift 2
  tg_start_gateway "$name" "$@"
  tg_fake_config "{\"latency_ms\":$API_LATENCY_MS}"
  local worst=0 ok_total=0 calls_total=0
  for r in $(seq "$ROUNDS"); do
    # Each round is a cold burst: let the bucket refill first (200 calls at 50/s).
    [ "$r" = 1 ] || sleep "$REFILL_S"
    sed -n "$((offset + 1)),$((offset + BURST))p" "$TG_TMP/tokens.txt" >"$TG_TMP/round.txt"
    offset=$((offset + BURST))
    tg_fake_reset_stats
    local load
    load=$("$TG_TGLOAD" --url "http://$TG_GW_ADDR/hooks/deliver" -c "$BURST" -n "$BURST" \
      --tokens "$TG_TMP/round.txt" --timeout 10 2>"$TG_TMP/load.err") || { cat "$TG_TMP/load.err" >&2; tg_die "tgload failed"; }
    local ok max calls
    ok=$(tg_code 200 <<<"$load")
    max=$(tg_json_num max_ms <<<"$load")
    calls=$(tg_fake_stat calls)
    ok_total=$((ok_total + ok))
    calls_total=$((calls_total + calls))
    worst=$(awk -v a="$worst" -v b="$max" 'BEGIN { print (b > a) ? b : a }')
    printf '  %-28s round %d: %d x 200 of %d, p50 %s ms, slowest %s ms, API calls %s\n' "$name" "$r" "$ok" "$BURST" \
      "$(tg_json_num p50_ms <<<"$load")" "$max" "$calls"
  done
  local met
  met=$(awk -v w="$worst" -v g="$goal_ms" -v ok="$ok_total" -v n=$((BURST * ROUNDS)) \
    'BEGIN { print (w <= g && ok == n) ? "true" : "false" }')
  [ "$met" = true ] || all_ok=false
  echo "  $name: slowest $worst ms (goal <= $goal_ms ms): $([ "$met" = true ] && echo met || echo NOT met)"
  results+=("${name}_slowest_ms=$worst ${name}_goal_met=$met")
  tg_stop "$TG_GW_PID"
}
run policy_none $((API_LATENCY_MS + 100)) --policy none
run default_policy $((2 * API_LATENCY_MS + 100))
# shellcheck disable=SC2086
run default_policy_burst200 $((2 * API_LATENCY_MS + 100)) ${GATEWAY_FLAGS_DEFAULT:---apiserver-burst 200}
tg_result cold_distinct "burst=$BURST api_latency_ms=$API_LATENCY_MS rounds=$ROUNDS ${results[*]} goal_met=$all_ok"
