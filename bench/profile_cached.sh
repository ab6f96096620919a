#!/usr/bin/env bash
# Where the cached path's time goes: runs tokengate under callgrind (one worker, so the
# profile is one thread's) with the default policy and with --policy none, sends REQUESTS
# cached requests to each, and prints instructions per request and the functions that
# cost the most (exclusive), so the next bottleneck is named with evidence; then the
# default policy again with --access-log FILE (the decision log's cost), and with an
# after() hook added (empty, and counting the answer: the hook's cost).
#
#   bench/profile_cached.sh BUILD_DIR
#
# Environment: REQUESTS (20000), CONNS (8), TOP (25), KEEP_PROFILE (set: keep the
# callgrind files and print where). Instruction counts do not depend on
# the machine's load, unlike timings; they include start-up and the one warm-up miss
# (a few million instructions, < 1 % of the total at the default REQUESTS).
# Last line: "RESULT {json}" with instructions per request for each configuration.
set -euo pipefail

build=${1:?usage: bench/profile_cached.sh BUILD_DIR}
build=$(cd "$build" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
REQUESTS=${REQUESTS:-20000}
CONNS=${CONNS:-8}
TOP=${TOP:-25}

gateway_bin=$build/core/tokengate
fake_bin=$build/spec/support/fake-apiserver
tgload_bin=$build/bench/tgload
die() { echo "profile_cached: $*" >&2; exit 1; }
for b in "$gateway_bin" "$fake_bin" "$tgload_bin"; do [ -x "$b" ] || die "missing $b (build it first)"; done
command -v valgrind >/dev/null || die "valgrind is not installed"
command -v callgrind_annotate >/dev/null || die "callgrind_annotate is not installed"

tmp=$(mktemp -d /tmp/tokengate-profile.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP_PROFILE:-}" ] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT

wait_listening() { # PID LOG LISTENER
  local addr
  for _ in $(seq 300); do
    addr=$(sed -n 's/.*"msg":"listening".*"listener":"'"$3"'".*"addr":"\([^"]*\)".*/\1/p' "$2" 2>/dev/null | head -n 1)
    if [ -n "$addr" ]; then echo "$addr"; return 0; fi
    kill -0 "$1" 2>/dev/null || { tail -n 20 "$2" >&2; return 1; }
    sleep 0.1
  done
  return 1
}

"$root/spec/support/gen_certs.sh" "$tmp/certs" >"$tmp/gen_certs.log" 2>&1 || die "gen_certs.sh failed"
token="bench.$(openssl rand -hex 24)"
printf '%s\n' "$token" >"$tmp/tokens.txt"
cat >"$tmp/tokens.json" <<EOF
{"tokens":[{"token":"$token","username":"system:serviceaccount:bench:load-client","uid":"0b6f2a8e-3c1d-4e5f-9a7b-8c9d0e1f2a3b","groups":["system:serviceaccounts","system:serviceaccounts:bench","system:authenticated"]}],"sar_rules":[{"verb":"get","path":"/*"}]}
EOF
printf 'gateway-credential-%s\n' "$(openssl rand -hex 16)" >"$tmp/cred.txt"
"$fake_bin" --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 --cert "$tmp/certs/server.crt" \
  --key "$tmp/certs/server.key" --tokens "$tmp/tokens.json" --credential-file "$tmp/cred.txt" >"$tmp/fake.log" 2>&1 &
pids+=($!)
api=$(wait_listening "$!" "$tmp/fake.log" api) || die "the fake API server did not start"

declare -A per_request
profile() { # NAME [FLAGS...]
  local name=$1 pid addr out total
  shift
  out=$tmp/callgrind.$name.out
  valgrind --tool=callgrind --callgrind-out-file="$out" "$gateway_bin" --workers 1 \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --apiserver "https://$api" --apiserver-ca "$tmp/certs/ca.crt" \
    --apiserver-token-file "$tmp/cred.txt" --cache-ttl 10m --sar-allowed-ttl 10m "$@" >"$tmp/gw-$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  addr=$(wait_listening "$pid" "$tmp/gw-$name.log" main) || die "tokengate ($name) did not start"
  curl -sf --max-time 30 -o /dev/null -H "Authorization: Bearer $token" "http://$addr/bench" || die "warm-up failed ($name)"
  "$tgload_bin" --url "http://$addr/bench" -c "$CONNS" -n "$REQUESTS" --tokens "$tmp/tokens.txt" --timeout 30 \
    >"$tmp/load-$name.json"
  grep -q "\"200\":$REQUESTS" "$tmp/load-$name.json" || die "not every request answered 200 ($name): $(cat "$tmp/load-$name.json")"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }')
  per_request[$name]=$((total / REQUESTS))
  echo "== $name (${*:-default policy}): $REQUESTS cached requests, ${per_request[$name]} instructions per request"
  echo "   top $TOP functions by exclusive instructions:"
  callgrind_annotate --threshold=100 "$out" 2>/dev/null |
    awk -v top="$TOP" '/^-+$/ { sep++ } sep >= 3 && /^ *[0-9,]+ / && n < top { print "   " $0; n++ }'
  echo "   inclusive, per request (the request path's own parts):"
  callgrind_annotate --inclusive=yes --threshold=100 "$out" 2>/dev/null |
    awk -v n="$REQUESTS" '/^ *[0-9,]+ / {
        fn = $0; sub(/^ *[0-9,]+ +(\([ 0-9.]+%\) +)?/, "", fn)
        if (fn ~ /:(authz_handle|cache_key_for_token|sar_cache_key|token_cache_lookup_refresh|token_cache_lookup|policy_authorize|policy_after|describe_request|answer_allowed|evhttp_send_reply|evhttp_parse_headers_|evhttp_read_cb|bearer_extract) /) {
          v = $1; gsub(",", "", v); split(fn, parts, " "); printf "   %9d  %s\n", v / n, parts[1] } }'
}

profile default
profile none --policy none
# The decision log's cost: the default policy with --access-log to a file.
profile access_log --access-log "$tmp/decisions.log"
# The after() hook's cost: the default policy plus an after that does nothing (the call
# itself: the req, user and outcome views), and plus one that counts the answer by
# namespace, decision and source (what docs/POLICIES.md suggests).
with_after() { # BODY: default.lua with after = function(req, user, outcome) BODY end
  awk -v body="$1" '/^return \{$/ && !done {
      print "local bench_answers = require(\"tokengate\").metrics.counter(\"bench_answers_total\", \"x\", { \"namespace\", \"decision\", \"source\" })"
      print; print "  after = function(req, user, outcome) " body " end,"; done = 1; next } { print }' \
    "$root/policies/default.lua"
}
with_after "" >"$tmp/after_empty.lua"
with_after 'bench_answers:inc{ namespace = user.namespace or "", decision = outcome.decision, source = outcome.source }' \
  >"$tmp/after_counter.lua"
profile after_empty --policy "$tmp/after_empty.lua"
profile after_counter --policy "$tmp/after_counter.lua"
echo
echo "RESULT {\"requests\":$REQUESTS,\"instructions_per_request\":{\"default\":${per_request[default]},\"none\":${per_request[none]},\"default_access_log\":${per_request[access_log]},\"default_after_empty\":${per_request[after_empty]},\"default_after_counter\":${per_request[after_counter]}}}"
