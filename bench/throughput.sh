#!/usr/bin/env bash
# Throughput with many distinct warm tokens (issue 6): the gateway against a bare evhttp
# server, same load generator, same number of server threads, same run.
#
#   bench/throughput.sh BUILD_DIR
#
# For each K in K_LIST ("1000 100000"): a fake kube-apiserver knowing K ServiceAccount
# tokens (typical pod-bound identities, bench/lib.sh tg_tokens), one tokengate --workers
# WORKERS --policy POLICY (none: the token cache path alone; POLICY=default adds the Lua
# default policy and its cached SubjectAccessReviews), --cache-max-entries 2K, no rate limit
# worth the name during warm-up; every token is warmed once (tgload -n K over the token
# list: K TokenReviews), then wrk -t WRK_THREADS -c CONNS rotating through all K tokens
# (bench/wrk_bearer.lua: request i carries token i mod K) runs ROUNDS (5) x DURATION (4) s against
# the gateway and against bench/bare-server --threads WORKERS (answering 200 with the
# same identity headers), alternating. Medians of req/s, p50, p99 per target; the ratios
# gateway/bare. The fake's TokenReview count must not move while measuring (all hits).
#
# Goal: req/s >= 0.8 x bare and p99 <= 1.25 x bare's p99.
# Last line: RESULT throughput key=value ... (keys suffixed _1000, _100000, ... per K)
# Exits non-zero on a setup failure, a non-2xx answer or socket error from the gateway, or
# a TokenReview during the measured rounds; speed never fails it.
#
# Environment: K_LIST ("1000 100000"), ROUNDS (5), DURATION (4 s), CONNS (64), WORKERS (1:
# on 2 cores wrk takes the other), WRK_THREADS (1), POLICY (none), TG_KEEP=1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
tg_init throughput "${1:-}"
tg_need "$TG_GATEWAY" "$TG_FAKE" "$TG_TGLOAD" "$TG_BARE"
command -v wrk >/dev/null || tg_die "wrk is not installed"

K_LIST=${K_LIST:-"1000 100000"}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
WRK_THREADS=${WRK_THREADS:-1}
POLICY=${POLICY:-none}
RPS_GOAL=0.8
P99_GOAL=1.25
n_k=$(wc -w <<<"$K_LIST")
[ $((ROUNDS * DURATION * 2 * n_k)) -le 300 ] || tg_die "ROUNDS x DURATION x 2 x |K_LIST| must stay within 300 s"
policy_flags=(--policy none)
[ "$POLICY" = none ] || policy_flags=()
[ "$POLICY" = none ] || [ "$POLICY" = default ] || policy_flags=(--policy "$POLICY")

echo "== throughput: K distinct warm tokens ($K_LIST), wrk -t$WRK_THREADS -c$CONNS, $ROUNDS x ${DURATION}s per target," \
  "gateway --workers $WORKERS --policy $POLICY vs bare-server --threads $WORKERS; $TG_MACHINE"

"$TG_BARE" --listen 127.0.0.1:0 --threads "$WORKERS" >"$TG_TMP/bare.log" 2>&1 &
bare_pid=$!
TG_PIDS+=("$bare_pid")
bare_addr=$(tg_wait_listening "$bare_pid" "$TG_TMP/bare.log" main) || tg_die "bare-server did not start"

result=("workers=$WORKERS wrk_threads=$WRK_THREADS conns=$CONNS rounds=$ROUNDS duration_s=$DURATION policy=$POLICY")
bad=0
all_met=true
for k in $K_LIST; do
  tg_tokens "$TG_TMP/tokens-$k" "$k"
  t0=$(date +%s.%N)
  tg_start_fake "$TG_TMP/tokens-$k.json" "fake-$k"
  max_entries=$((2 * k > 10000 ? 2 * k : 10000))
  tg_start_gateway "k$k" --workers "$WORKERS" "${policy_flags[@]}" --cache-max-entries "$max_entries" \
    --cache-ttl 10m --sar-allowed-ttl 10m --apiserver-qps 1000000 --apiserver-burst "$k" \
    --review-max-pending "$max_entries"
  warm=$("$TG_TGLOAD" --url "http://$TG_GW_ADDR/bench" -c 64 -n "$k" --tokens "$TG_TMP/tokens-$k.txt" \
    --timeout 30 2>"$TG_TMP/warm-$k.err") || { cat "$TG_TMP/warm-$k.err" >&2; tg_die "warm-up failed (K=$k)"; }
  [ "$(tg_code 200 <<<"$warm")" = "$k" ] || tg_die "warm-up (K=$k): not every token answered 200: $warm"
  warm_calls=$(tg_fake_stat tokenreview_calls)
  warm_s=$(tg_calc "$(date +%s.%N) - $t0" %.1f)
  rss=$(tg_rss_kb "$TG_GW_PID")
  echo "  K=$k: warmed in ${warm_s}s (fake start included), $warm_calls TokenReviews, gateway RSS ${rss} kB," \
    "$(tg_threads "$TG_GW_PID") OS threads"
  printf '  %-6s %-8s %10s %9s %9s %7s %6s\n' round target "req/s" "p50 ms" "p99 ms" non2xx errors
  declare -A rps_of=() p50_of=() p99_of=()
  for r in $(seq "$ROUNDS"); do
    order=(gateway bare)
    [ $((r % 2)) = 0 ] && order=(bare gateway)
    for target in "${order[@]}"; do
      addr=$TG_GW_ADDR
      [ "$target" = bare ] && addr=$bare_addr
      out=$TG_TMP/wrk-$k-$target-$r.txt
      tg_wrk "http://$addr/bench" "$out" "$TG_TMP/tokens-$k.txt" "$WRK_THREADS" "$CONNS" "$DURATION"
      read -r rps p50 p99 non2xx errs total < <(tg_parse_wrk "$out")
      rps_of[$target]+="$rps " p50_of[$target]+="$p50 " p99_of[$target]+="$p99 "
      if [ "$target" = gateway ] && { [ "$non2xx" -ne 0 ] || [ "$errs" -ne 0 ] || [ "$total" -eq 0 ]; }; then
        bad=1
        tg_note "K=$k round $r: gateway non-2xx $non2xx, socket errors $errs, requests $total"
      fi
      printf '  %-6s %-8s %10s %9s %9s %7s %6s\n' "$r" "$target" "$rps" "$p50" "$p99" "$non2xx" "$errs"
    done
  done
  calls_after=$(tg_fake_stat tokenreview_calls)
  hits_only=true
  [ "$calls_after" = "$warm_calls" ] || { hits_only=false; bad=1; tg_note "K=$k: $((calls_after - warm_calls)) TokenReviews while measuring"; }
  # shellcheck disable=SC2086 # space-separated numbers
  {
    g_rps=$(tg_median ${rps_of[gateway]}) g_p50=$(tg_median ${p50_of[gateway]}) g_p99=$(tg_median ${p99_of[gateway]})
    b_rps=$(tg_median ${rps_of[bare]}) b_p50=$(tg_median ${p50_of[bare]}) b_p99=$(tg_median ${p99_of[bare]})
  }
  r_rps=$(tg_ratio "$g_rps" "$b_rps")
  r_p99=$(tg_ratio "$g_p99" "$b_p99")
  # The same ratios from each round's own pair (measured seconds apart), whose medians
  # drift less when the shared machine's load changes during the run.
  read -r -a g_list <<<"${rps_of[gateway]}"
  read -r -a b_list <<<"${rps_of[bare]}"
  read -r -a g99_list <<<"${p99_of[gateway]}"
  read -r -a b99_list <<<"${p99_of[bare]}"
  pairs_rps=() pairs_p99=()
  for i in "${!g_list[@]}"; do
    pairs_rps+=("$(tg_ratio "${g_list[$i]}" "${b_list[$i]}")")
    pairs_p99+=("$(tg_ratio "${g99_list[$i]}" "${b99_list[$i]}")")
  done
  pr_rps=$(tg_median "${pairs_rps[@]}")
  pr_p99=$(tg_median "${pairs_p99[@]}")
  met=$(tg_calc "$r_rps >= $RPS_GOAL && $r_p99 <= $P99_GOAL" %d)
  [ "$met" = 1 ] && met=true || { met=false; all_met=false; }
  echo "  K=$k medians: gateway $g_rps req/s p50 $g_p50 p99 $g_p99 ms | bare $b_rps req/s p50 $b_p50 p99 $b_p99 ms"
  echo "  K=$k ratios gateway/bare: req/s $r_rps (goal >= $RPS_GOAL), p99 $r_p99 (goal <= $P99_GOAL): $([ "$met" = true ] && echo met || echo NOT met);" \
    "median of per-round pairs: req/s $pr_rps, p99 $pr_p99"
  result+=("gateway_rps_$k=$g_rps gateway_p50_ms_$k=$g_p50 gateway_p99_ms_$k=$g_p99 bare_rps_$k=$b_rps bare_p50_ms_$k=$b_p50 bare_p99_ms_$k=$b_p99 ratio_rps_$k=$r_rps ratio_p99_$k=$r_p99 ratio_rps_paired_$k=$pr_rps ratio_p99_paired_$k=$pr_p99 gateway_rss_kb_$k=$rss hits_only_$k=$hits_only goal_met_$k=$met")
  tg_stop "$TG_GW_PID"
  tg_stop "$TG_FAKE_PID"
  unset rps_of p50_of p99_of g_list b_list g99_list b99_list
done

tg_result throughput "${result[@]}" "goal_met=$all_met"
[ "$bad" = 0 ] || tg_die "the gateway answered non-2xx, had socket errors, or called the API server while measuring"
