#!/usr/bin/env bash
# Memory per cached entry (issue 6): bytes of RSS per cached TokenReview verdict at 10 000,
# 100 000 and 1 000 000 entries with typical ServiceAccount identities, plus a check of
# the same figure on the running gateway at 10 000 entries.
#
#   bench/memory.sh BUILD_DIR
#
# 1. bench/cache-memory (bench/cache_memory.c, linked against the gateway's core library):
#    for each N in N_LIST ("10000 100000 1000000"), in a fresh process, a token_cache bounded
#    at N filled with N verdicts under distinct HMAC keys, each the packed identity of a
#    distinct pod-bound ServiceAccount token (username system:serviceaccount:NS:NAME, uid,
#    the three ServiceAccount groups, extra pod-name, pod-uid, node-name, node-uid,
#    credential-id). RSS growth after malloc_trim / entries held (bucket arrays included);
#    also the allocator's bytes in use per entry and the packed identity's own size.
#    Then the same at 100 000 for the identity kube-apiserver 1.26 sends (pod-name and
#    pod-uid only) and for a bare identity (no extra), to show what the extra keys cost.
# 2. Through the fake kube-apiserver: tokengate --policy none --cache-max-entries 2N,
#    warmed with WARM_FIRST (1000) tokens (so connection buffers, libcurl and jansson have
#    settled), RSS read, then GATEWAY_N (10000) more tokens reviewed and cached, RSS read
#    again: growth / GATEWAY_N. This includes allocator fragmentation from the review
#    answers parsed in between, so it reads a little higher than part 1.
#
# Goal: <= 512 bytes per entry (typical identity).
# Last line: RESULT memory bytes_per_entry_10k=... bytes_per_entry_100k=... bytes_per_entry_1m=... ...
# Exits non-zero on a setup failure or when a warm-up request is not answered 200.
#
# Environment: N_LIST ("10000 100000 1000000"), GATEWAY_N (10000; 0 skips part 2),
# WARM_FIRST (1000), TG_KEEP=1.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
tg_init memory "${1:-}"
CACHE_MEMORY=$TG_BUILD/bench/cache-memory
tg_need "$CACHE_MEMORY"

N_LIST=${N_LIST:-"10000 100000 1000000"}
GATEWAY_N=${GATEWAY_N:-10000}
WARM_FIRST=${WARM_FIRST:-1000}
GOAL=512

echo "== memory per cached entry: token_cache at $N_LIST entries, typical pod-bound ServiceAccount identities; $TG_MACHINE"
# shellcheck disable=SC2086 # N_LIST is a list of numbers
"$CACHE_MEMORY" $N_LIST >"$TG_TMP/typical.txt" || tg_die "cache-memory failed"
"$CACHE_MEMORY" --shape pod-1.26 100000 >"$TG_TMP/pod126.txt" || tg_die "cache-memory failed"
"$CACHE_MEMORY" --shape minimal 100000 >"$TG_TMP/minimal.txt" || tg_die "cache-memory failed"
sed 's/^/  /' "$TG_TMP/typical.txt" "$TG_TMP/pod126.txt" "$TG_TMP/minimal.txt"

# field FILE N KEY: KEY=VALUE of the line for N in FILE
field() { awk -v n="$2" -v k="$3" '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  if (f["n"] == n) print f[k] }' "$1"; }
label() { case $1 in 10000) echo 10k ;; 100000) echo 100k ;; 1000000) echo 1m ;; *) echo "$1" ;; esac; }

result=()
worst=0
for n in $N_LIST; do
  b=$(field "$TG_TMP/typical.txt" "$n" rss_per_entry)
  result+=("bytes_per_entry_$(label "$n")=$(tg_calc "$b" %.0f)")
  worst=$(tg_calc "$b > $worst ? $b : $worst" %.1f)
done
first_n=${N_LIST%% *}
result+=("value_bytes=$(field "$TG_TMP/typical.txt" "$first_n" value_bytes)"
  "heap_bytes_per_entry_$(label "$first_n")=$(tg_calc "$(field "$TG_TMP/typical.txt" "$first_n" heap_per_entry)" %.0f)"
  "pod126_bytes_per_entry_100k=$(tg_calc "$(field "$TG_TMP/pod126.txt" 100000 rss_per_entry)" %.0f)"
  "pod126_value_bytes=$(field "$TG_TMP/pod126.txt" 100000 value_bytes)"
  "minimal_bytes_per_entry_100k=$(tg_calc "$(field "$TG_TMP/minimal.txt" 100000 rss_per_entry)" %.0f)")

if [ "$GATEWAY_N" -gt 0 ]; then
  tg_need "$TG_GATEWAY" "$TG_FAKE" "$TG_TGLOAD"
  total=$((WARM_FIRST + GATEWAY_N))
  tg_tokens "$TG_TMP/tokens" "$total"
  head -n "$WARM_FIRST" "$TG_TMP/tokens.txt" >"$TG_TMP/first.txt"
  tail -n "$GATEWAY_N" "$TG_TMP/tokens.txt" >"$TG_TMP/rest.txt"
  tg_start_fake "$TG_TMP/tokens.json"
  tg_start_gateway mem --workers 1 --policy none --cache-max-entries $((2 * total)) --cache-ttl 10m \
    --apiserver-qps 1000000 --apiserver-burst "$total" --review-max-pending "$total"
  for part in first rest; do
    n=$(wc -l <"$TG_TMP/$part.txt")
    load=$("$TG_TGLOAD" --url "http://$TG_GW_ADDR/m" -c 16 -n "$n" --tokens "$TG_TMP/$part.txt" --timeout 30 \
      2>"$TG_TMP/load-$part.err") || { cat "$TG_TMP/load-$part.err" >&2; tg_die "tgload failed ($part)"; }
    [ "$(tg_code 200 <<<"$load")" = "$n" ] || tg_die "warm-up ($part): not every token answered 200: $load"
    sleep 1 # let the last answers' buffers go before reading RSS
    if [ "$part" = first ]; then rss0=$(tg_rss_kb "$TG_GW_PID"); else rss1=$(tg_rss_kb "$TG_GW_PID"); fi
  done
  entries=$(tg_metric gateway_tokenreview_cache_entries)
  gw=$(tg_calc "($rss1 - $rss0) * 1024 / $GATEWAY_N" %.0f)
  echo "  gateway: RSS ${rss0} kB after $WARM_FIRST tokens, ${rss1} kB after $GATEWAY_N more" \
    "(cache entries $entries): $gw bytes per entry"
  result+=("gateway_bytes_per_entry_10k=$gw gateway_cache_entries=$entries")
fi

met=$(tg_calc "$worst <= $GOAL" %d)
echo "  goal <= $GOAL bytes per entry (typical identity): $([ "$met" = 1 ] && echo met || echo "NOT met (worst $worst)")"
tg_result memory "${result[@]}" "goal_met=$([ "$met" = 1 ] && echo true || echo false)"
