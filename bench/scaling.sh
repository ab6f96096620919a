#!/usr/bin/env bash
# Scaling (issue 6): tokengate --workers 1 against --workers 2 in one run, with the bare
# evhttp server at 1 and 2 threads as the reference for what this machine allows.
#
#   bench/scaling.sh BUILD_DIR
#
# One fake kube-apiserver knowing K (1000) tokens; two gateways (--workers 1, --workers 2,
# --policy none), each warmed with every token once; two bare-servers (--threads 1, 2).
# wrk -t WRK_THREADS (2) -c CONNS (64), tokens rotating (bench/wrk_bearer.lua), ROUNDS (5) x
# DURATION (4 s) per target, the order rotating every round. Medians of req/s, p50, p99;
# speed-ups w2/w1 for the gateway and t2/t1 for the bare server. On a 2-core machine the
# load generator competes with the servers for the same cores, so read the gateway's
# speed-up against the bare server's, not against 2.
#
# Last line: RESULT scaling key=value ...
# Exits non-zero on a setup failure, a non-2xx answer or socket error from a gateway, or a
# TokenReview while measuring; speed never fails it.
#
# Environment: K (1000), ROUNDS (5), DURATION (4 s), CONNS (64), WRK_THREADS (2), TG_KEEP=1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
tg_init scaling "${1:-}"
tg_need "$TG_GATEWAY" "$TG_FAKE" "$TG_TGLOAD" "$TG_BARE"
command -v wrk >/dev/null || tg_die "wrk is not installed"

K=${K:-1000}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
targets=(gw1 gw2 bare1 bare2)
[ $((ROUNDS * DURATION * ${#targets[@]})) -le 160 ] || tg_die "ROUNDS x DURATION x 4 targets must stay within 160 s"

echo "== scaling: tokengate --workers 1 vs 2 (bare-server --threads 1 vs 2 as reference), $K warm tokens," \
  "wrk -t$WRK_THREADS -c$CONNS, $ROUNDS x ${DURATION}s per target; $TG_MACHINE"
tg_tokens "$TG_TMP/tokens" "$K"
tg_start_fake "$TG_TMP/tokens.json"

declare -A addr threads
for w in 1 2; do
  tg_start_gateway "w$w" --workers "$w" --policy none --cache-ttl 10m --cache-max-entries $((2 * K > 10000 ? 2 * K : 10000)) \
    --apiserver-qps 1000000 --apiserver-burst "$K"
  warm=$("$TG_TGLOAD" --url "http://$TG_GW_ADDR/bench" -c 32 -n "$K" --tokens "$TG_TMP/tokens.txt" \
    --timeout 30 2>"$TG_TMP/warm-$w.err") || { cat "$TG_TMP/warm-$w.err" >&2; tg_die "warm-up failed (workers $w)"; }
  [ "$(tg_code 200 <<<"$warm")" = "$K" ] || tg_die "warm-up (workers $w): not every token answered 200: $warm"
  addr[gw$w]=$TG_GW_ADDR
  threads[gw$w]=$(tg_threads "$TG_GW_PID")
  "$TG_BARE" --listen 127.0.0.1:0 --threads "$w" >"$TG_TMP/bare-$w.log" 2>&1 &
  TG_PIDS+=("$!")
  addr[bare$w]=$(tg_wait_listening "$!" "$TG_TMP/bare-$w.log" main) || tg_die "bare-server ($w threads) did not start"
  threads[bare$w]=$(tg_threads "$!")
done
tg_fake_reset_stats
echo "  OS threads: gateway --workers 1: ${threads[gw1]}, --workers 2: ${threads[gw2]}; bare 1: ${threads[bare1]}, 2: ${threads[bare2]}"

printf '  %-6s %-7s %10s %9s %9s %7s %6s\n' round target "req/s" "p50 ms" "p99 ms" non2xx errors
declare -A rps_of p50_of p99_of
bad=0
for r in $(seq "$ROUNDS"); do
  for i in 0 1 2 3; do
    t=${targets[$(((i + r - 1) % 4))]}
    out=$TG_TMP/wrk-$t-$r.txt
    tg_wrk "http://${addr[$t]}/bench" "$out" "$TG_TMP/tokens.txt" "$WRK_THREADS" "$CONNS" "$DURATION"
    read -r rps p50 p99 non2xx errs total < <(tg_parse_wrk "$out")
    rps_of[$t]+="$rps " p50_of[$t]+="$p50 " p99_of[$t]+="$p99 "
    if [[ $t == gw* ]] && { [ "$non2xx" -ne 0 ] || [ "$errs" -ne 0 ] || [ "$total" -eq 0 ]; }; then
      bad=1
      tg_note "round $r $t: non-2xx $non2xx, socket errors $errs, requests $total"
    fi
    printf '  %-6s %-7s %10s %9s %9s %7s %6s\n' "$r" "$t" "$rps" "$p50" "$p99" "$non2xx" "$errs"
  done
done
calls=$(tg_fake_stat tokenreview_calls)
[ "$calls" = 0 ] || { bad=1; tg_note "$calls TokenReviews while measuring (want 0: every token was warm)"; }

declare -A m_rps m_p50 m_p99
for t in "${targets[@]}"; do
  # shellcheck disable=SC2086 # space-separated numbers
  m_rps[$t]=$(tg_median ${rps_of[$t]}) m_p50[$t]=$(tg_median ${p50_of[$t]}) m_p99[$t]=$(tg_median ${p99_of[$t]})
  printf '  median %-7s %10s req/s  p50 %s ms  p99 %s ms\n' "$t" "${m_rps[$t]}" "${m_p50[$t]}" "${m_p99[$t]}"
done
gw_speedup=$(tg_ratio "${m_rps[gw2]}" "${m_rps[gw1]}")
bare_speedup=$(tg_ratio "${m_rps[bare2]}" "${m_rps[bare1]}")
echo "  speed-up with 2 threads: gateway $gw_speedup, bare server $bare_speedup;" \
  "gateway/bare req/s at 1: $(tg_ratio "${m_rps[gw1]}" "${m_rps[bare1]}"), at 2: $(tg_ratio "${m_rps[gw2]}" "${m_rps[bare2]}")"
tg_result scaling "tokens=$K wrk_threads=$WRK_THREADS conns=$CONNS rounds=$ROUNDS duration_s=$DURATION" \
  "os_threads_w1=${threads[gw1]} os_threads_w2=${threads[gw2]}" \
  "gateway_rps_w1=${m_rps[gw1]} gateway_p99_ms_w1=${m_p99[gw1]} gateway_rps_w2=${m_rps[gw2]} gateway_p99_ms_w2=${m_p99[gw2]}" \
  "bare_rps_t1=${m_rps[bare1]} bare_p99_ms_t1=${m_p99[bare1]} bare_rps_t2=${m_rps[bare2]} bare_p99_ms_t2=${m_p99[bare2]}" \
  "gateway_speedup=$gw_speedup bare_speedup=$bare_speedup" \
  "ratio_rps_w1=$(tg_ratio "${m_rps[gw1]}" "${m_rps[bare1]}") ratio_rps_w2=$(tg_ratio "${m_rps[gw2]}" "${m_rps[bare2]}") hits_only=$([ "$calls" = 0 ] && echo true || echo false)"
[ "$bad" = 0 ] || tg_die "a gateway answered non-2xx, had socket errors, or called the API server while measuring"
