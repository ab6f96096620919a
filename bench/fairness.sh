#!/usr/bin/env bash
# Fairness of the API budget (issue 12): legitimate callers with tokens the gateway has not
# seen yet, alone, next to a garbage-token flood, and next to one authenticated caller
# spraying distinct paths (one SubjectAccessReview each under the default policy).
#
#   bench/fairness.sh BUILD_DIR
#
# One fake kube-apiserver (latency API_LATENCY_MS, 20 ms) and one tokengate --workers 2
# with the default policy and default API limits (--apiserver-qps 50, --apiserver-burst
# 100, --review-max-pending 1000, --review-timeout 5s). The legitimate callers: LEGIT_C (4)
# connections at LEGIT_RATE (20) requests/s in total, every request carrying a token not
# seen before (JWT-shaped, as ServiceAccount tokens are), so each needs a TokenReview and
# a SubjectAccessReview. Three phases of PHASE_S (8) seconds each, a fresh gateway each:
#   alone  — the legitimate callers only
#   flood  — plus ATTACK_C (1500) connections sending distinct garbage tokens as fast as the
#            gateway answers (never a repeat: every one costs a TokenReview)
#   spray  — plus ATTACK_C connections of one valid identity, each request to a new path
# Per phase: the legitimate callers' requests, share answered 200, p50 and p99 latency, and
# the attacker's answers. Run it on two builds to compare (e.g. before/after a change).
#
# Last line: RESULT fairness key=value ...  (no goal is enforced: the figures are for
# reading; the spec 16_dos_spec.lua asserts the behaviour). Environment: LEGIT_C, LEGIT_RATE,
# ATTACK_C, PHASE_S, API_LATENCY_MS, TG_KEEP=1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
tg_init fairness "${1:-}"
tg_need "$TG_GATEWAY" "$TG_FAKE" "$TG_TGLOAD"

LEGIT_C=${LEGIT_C:-4}
LEGIT_RATE=${LEGIT_RATE:-20}
ATTACK_C=${ATTACK_C:-1500}
PHASE_S=${PHASE_S:-8}
API_LATENCY_MS=${API_LATENCY_MS:-20}

echo "== fairness: $LEGIT_C legitimate connections at $LEGIT_RATE req/s, every request a new token;" \
  "attackers $ATTACK_C connections; ${PHASE_S} s per phase; API latency ${API_LATENCY_MS} ms; $TG_MACHINE (noisy)"
n_legit=$(awk -v r="$LEGIT_RATE" -v s="$PHASE_S" 'BEGIN { printf "%d", r * s * 3 + 100 }')
TG_TOKENS_SUFFIX=.c2lnbmF0dXJl tg_tokens "$TG_TMP/legit" "$n_legit" "eyJhbGciOiJSUzI1NiJ9.bGVnaXQ"
tg_start_fake "$TG_TMP/legit.json"
tg_fake_config "{\"latency_ms\":$API_LATENCY_MS}"
awk -v n=200000 -v salt="$(openssl rand -hex 4)" 'BEGIN { for (i = 0; i < n; i++) printf "garbage-%s-%d\n", salt, i }' \
  >"$TG_TMP/garbage.txt"
head -n 1 "$TG_TMP/legit.txt" >"$TG_TMP/sprayer.txt" # a valid identity; its own token is not "new"

results=()
phase_no=0
for phase in alone flood spray; do
  phase_no=$((phase_no + 1))
  tg_start_gateway "$phase" --workers 2
  # This phase's legitimate tokens: a slice never used before (the sprayer's is line 1).
  first=$(( (phase_no - 1) * (n_legit / 3) + 2 ))
  sed -n "${first},$((first + n_legit / 3 - 1))p" "$TG_TMP/legit.txt" >"$TG_TMP/legit-$phase.txt"
  attack_pid=
  case $phase in
    flood)
      "$TG_TGLOAD" --url "http://$TG_GW_ADDR/hooks/deliver" -c "$ATTACK_C" -d "$((PHASE_S + 2))" \
        --tokens "$TG_TMP/garbage.txt" --timeout 10 >"$TG_TMP/attack-$phase.json" 2>"$TG_TMP/attack-$phase.err" &
      attack_pid=$! ;;
    spray)
      "$TG_TGLOAD" --url "http://$TG_GW_ADDR/spray/" --spray-paths -c "$ATTACK_C" -d "$((PHASE_S + 2))" \
        --tokens "$TG_TMP/sprayer.txt" --timeout 10 >"$TG_TMP/attack-$phase.json" 2>"$TG_TMP/attack-$phase.err" &
      attack_pid=$! ;;
  esac
  [ -z "$attack_pid" ] || sleep 1 # let the attack fill the queue first
  legit=$("$TG_TGLOAD" --url "http://$TG_GW_ADDR/hooks/deliver" -c "$LEGIT_C" -d "$PHASE_S" --rate "$LEGIT_RATE" \
    --tokens "$TG_TMP/legit-$phase.txt" --timeout 10 2>"$TG_TMP/legit-$phase.err") ||
    { cat "$TG_TMP/legit-$phase.err" >&2; tg_die "tgload failed ($phase)"; }
  attack="{}"
  if [ -n "$attack_pid" ]; then wait "$attack_pid" || true; attack=$(cat "$TG_TMP/attack-$phase.json"); fi
  requests=$(tg_json_num requests <<<"$legit")
  ok=$(tg_code 200 <<<"$legit")
  share=$(tg_calc "$requests > 0 ? 100 * $ok / $requests : 0" "%.1f")
  p50=$(tg_json_num p50_ms <<<"$legit")
  p99=$(tg_json_num p99_ms <<<"$legit")
  pushed=$(tg_metric gateway_apiserver_queue_pushed_out_total)
  printf '  %-5s legitimate: %4d requests, %5s %% answered 200, p50 %7s ms, p99 %7s ms | attacker: %s | pushed out %s\n' \
    "$phase" "$requests" "$share" "$p50" "$p99" \
    "$(sed -n 's/.*"requests":\([0-9]*\).*"codes":\({[^}]*}\).*/\1 requests \2/p' <<<"$attack")" "$pushed"
  results+=("${phase}_ok_pct=$share ${phase}_p50_ms=$p50 ${phase}_p99_ms=$p99")
  tg_stop "$TG_GW_PID"
done
tg_result fairness "legit_c=$LEGIT_C legit_rate=$LEGIT_RATE attack_c=$ATTACK_C phase_s=$PHASE_S" \
  "api_latency_ms=$API_LATENCY_MS ${results[*]}"
