#!/usr/bin/env bash
# Throttled API server (issue 14): the fake admits MAX_INFLIGHT (5) reviews at once, each
# answered in API_LATENCY_MS (300 ms), and answers 429 with Retry-After beyond that, as API
# Priority and Fairness does with a Reject priority level: about 16.7 calls/s of capacity.
# CLIENTS (200) clients send requests with TOKENS (2000) new tokens for DURATION (30) s
# through tokengate with the default policy (a TokenReview, then a SubjectAccessReview).
#
#   bench/throttled.sh BUILD_DIR
#
# Reports what the fake counted: calls, 429s, answered calls (and their share of the
# capacity), tokens authenticated; and the clients' answers and slowest wait.
# Goals: answered calls >= 80 % of capacity, 429s <= 5 % of calls, no client waiting
# longer than --review-timeout (5 s) + 0.5 s. A missed goal is reported, not a failure.
# Last line: RESULT throttled key=value ...
# Environment: MAX_INFLIGHT (5), API_LATENCY_MS (300), TOKENS (2000), CLIENTS (200),
# DURATION (30), GATEWAY_FLAGS (extra flags), TG_KEEP=1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
tg_init throttled "${1:-}"
tg_need "$TG_GATEWAY" "$TG_FAKE" "$TG_TGLOAD"

MAX_INFLIGHT=${MAX_INFLIGHT:-5}
API_LATENCY_MS=${API_LATENCY_MS:-300}
TOKENS=${TOKENS:-2000}
CLIENTS=${CLIENTS:-200}
DURATION=${DURATION:-30}

echo "== throttled: fake admits $MAX_INFLIGHT in flight x ${API_LATENCY_MS} ms, $TOKENS new tokens from" \
  "$CLIENTS clients for ${DURATION} s, default policy; $TG_MACHINE"
tg_tokens "$TG_TMP/tokens" "$TOKENS"
tg_start_fake "$TG_TMP/tokens.json"
# shellcheck disable=SC2086
tg_start_gateway throttled ${GATEWAY_FLAGS:-}
tg_fake_config "{\"latency_ms\":$API_LATENCY_MS,\"max_inflight\":$MAX_INFLIGHT}"
tg_fake_reset_stats
load=$("$TG_TGLOAD" --url "http://$TG_GW_ADDR/hooks/deliver" -c "$CLIENTS" -d "$DURATION" \
  --tokens "$TG_TMP/tokens.txt" --timeout 20 2>"$TG_TMP/load.err") || { cat "$TG_TMP/load.err" >&2; tg_die "tgload failed"; }
calls=$(tg_fake_stat calls)
throttled=$(tg_fake_stat throttled)
answered=$((calls - throttled))
capacity=$(tg_calc "$DURATION * 1000 / $API_LATENCY_MS * $MAX_INFLIGHT" "%.0f")
share=$(tg_calc "100 * $answered / $capacity" "%.1f")
rate429=$(tg_calc "$calls > 0 ? 100 * $throttled / $calls : 0" "%.1f")
authenticated=$(tg_metric gateway_tokenreview_cache_entries)
max_ms=$(tg_json_num max_ms <<<"$load")
p99_ms=$(tg_json_num p99_ms <<<"$load")
ok=$(tg_code 200 <<<"$load")
unavailable=$(tg_code 503 <<<"$load")
requests=$(tg_json_num requests <<<"$load")
echo "  API calls $calls, 429s $throttled ($rate429 %), answered $answered of a capacity of $capacity ($share %)"
echo "  clients: $requests requests, $ok x 200, $unavailable x 503, p99 $p99_ms ms, slowest $max_ms ms;" \
  "identities cached $authenticated"
goal=$(awk -v a="$answered" -v c="$capacity" -v r="$rate429" -v m="$max_ms" \
  'BEGIN { print (a >= 0.8 * c && r <= 5 && m <= 5500) ? "true" : "false" }')
echo "  goals (>= 80 % of capacity answered, <= 5 % 429s, slowest <= 5.5 s): $([ "$goal" = true ] && echo met || echo NOT met)"
tg_result throttled "max_inflight=$MAX_INFLIGHT api_latency_ms=$API_LATENCY_MS tokens=$TOKENS clients=$CLIENTS" \
  "duration_s=$DURATION calls=$calls throttled=$throttled throttled_pct=$rate429 answered=$answered" \
  "capacity=$capacity capacity_used_pct=$share requests=$requests ok=$ok unavailable=$unavailable" \
  "p99_ms=$p99_ms max_ms=$max_ms identities_cached=$authenticated goal_met=$goal"
