#!/usr/bin/env bash
# tokengate demo (what `./run demo` runs): starts a fake Kubernetes API server that knows
# five ServiceAccounts and takes 50 ms per TokenReview (like a real one under load),
# starts tokengate in front of it, sends real traffic with tgload, and explains what
# happened in plain text.
#
#   tools/demo.sh BUILD_DIR [--keep]
#
# Everything lives in a temporary directory and is stopped and removed on exit, unless
# --keep is given: then the servers stay up and the script prints their URLs, PIDs and
# how to stop them. Exits non-zero when something is clearly wrong (a server did not
# start, no 200s, transport errors, more TokenReview calls than the cache allows).
set -euo pipefail

usage() { echo "usage: tools/demo.sh BUILD_DIR [--keep]" >&2; exit 2; }
build=""
keep=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) [ -z "$build" ] || usage; build=$arg ;;
  esac
done
[ -n "$build" ] || usage
build=$(cd "$build" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)

gateway_bin=$build/core/tokengate
fake_bin=$build/spec/support/fake-apiserver
tgload_bin=$build/bench/tgload
gen_certs=$root/spec/support/gen_certs.sh
LATENCY_MS=50

die() {
  echo >&2
  echo "demo: $*" >&2
  exit 1
}
for b in "$gateway_bin" "$fake_bin" "$tgload_bin"; do
  [ -x "$b" ] || die "missing $b (build first: ./run build)"
done
[ -f "$gen_certs" ] || die "missing $gen_certs"
command -v curl >/dev/null || die "curl is not installed"
command -v openssl >/dev/null || die "openssl is not installed"

tmp=$(mktemp -d /tmp/tokengate-demo.XXXXXX)
pids=()
leave_running=0
cleanup() {
  local rc=$? pid
  if [ "$leave_running" = 1 ]; then return; fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" != 0 ] && [ -d "$tmp" ]; then
    for log in "$tmp"/*.log; do
      [ -s "$log" ] || continue
      echo "--- last lines of $(basename "$log")" >&2
      tail -n 15 "$log" >&2
    done
  fi
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
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# json_num KEY: the number after "KEY": in the JSON on stdin.
json_num() { sed -n 's/.*"'"$1"'":\([0-9.eE+-]*\).*/\1/p' | head -n 1; }
# codes_of: "200 x 1430, 401 x 570" from a tgload result on stdin.
codes_of() { sed -n 's/.*"codes":{\([^}]*\)}.*/\1/p' | tr -d '"' | sed 's/:/ x /g; s/,/, /g'; }
code_count() { # code_count CODE < tgload-json
  sed -n 's/.*"codes":{[^}]*"'"$1"'":\([0-9]*\).*/\1/p' | head -n 1 | grep . || echo 0
}
metric() { # metric NAME: value of an unlabelled metric from the gateway's /metrics (0 if absent)
  local text
  text=$(curl -sf --max-time 5 "http://$admin/metrics") || text=""
  awk -v n="$1" '$1 == n && !found { v = $2 + 0; found = 1 } END { printf "%d\n", v }' <<<"$text"
}
review_calls() { curl -sf --max-time 5 "http://$control/control/stats" | json_num tokenreview_calls; }
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "n/a" }'; }

# sa_token NAMESPACE NAME UID: a projected ServiceAccount token (a JWT valid for an hour),
# signed with the demo cluster's key, which the fake API server publishes as
# kube-apiserver does (/openid/v1/jwks, kid = base64url(SHA-256 of the public key's DER)).
# tokengate checks the signature itself (--jwt-preverify) and still asks the API server
# (TokenReview), whose token table decides.
now=$(date +%s)
openssl genrsa -out "$tmp/sa.key" 2048 2>/dev/null || die "cannot make the demo's signing key"
kid=$(openssl rsa -in "$tmp/sa.key" -pubout -outform DER 2>/dev/null | openssl dgst -sha256 -binary | b64url)
sa_token() {
  local header payload sig
  header=$(printf '{"alg":"RS256","kid":"%s"}' "$kid" | b64url)
  payload=$(printf '{"aud":["https://kubernetes.default.svc.cluster.local"],"exp":%d,"iat":%d,"iss":"https://kubernetes.default.svc.cluster.local","kubernetes.io":{"namespace":"%s","serviceaccount":{"name":"%s","uid":"%s"}},"nbf":%d,"sub":"system:serviceaccount:%s:%s"}' \
    $((now + 3600)) "$now" "$1" "$2" "$3" "$now" "$1" "$2" | b64url)
  sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$tmp/sa.key" | b64url)
  printf '%s.%s.%s' "$header" "$payload" "$sig"
}

# namespace name uid
accounts=(
  "team-a webhook-sender 6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
  "team-b billing-exporter 9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
  "payments settlement-worker 2b3c4d5e-6f70-4182-93a4-b5c6d7e8f901"
  "monitoring prometheus 0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
  "ci release-bot 7e6d5c4b-3a29-4180-9f8e-7d6c5b4a3928"
)

cat <<EOF
tokengate demo
==============
tokengate answers "may this caller in?" for a service (like nginx auth_request): it takes
the caller's Kubernetes ServiceAccount token, asks the API server once (TokenReview),
caches the verdict, and answers 200 with the caller's identity, or 401.

Setting up in $tmp:
EOF

# --- certificates, token table, the fake API server --------------------------------------
"$gen_certs" "$tmp/certs" >"$tmp/gen_certs.log" 2>&1 || die "spec/support/gen_certs.sh failed"
echo "  - TLS certificates for a fake Kubernetes API server"

{
  printf '{"tokens":['
  sep=""
  for a in "${accounts[@]}"; do
    read -r ns name uid <<<"$a"
    tok=$(sa_token "$ns" "$name" "$uid")
    printf '%s\n' "$tok" >>"$tmp/valid-tokens.txt"
    printf '%s{"token":"%s","username":"system:serviceaccount:%s:%s","uid":"%s","groups":["system:serviceaccounts","system:serviceaccounts:%s","system:authenticated"]}' \
      "$sep" "$tok" "$ns" "$name" "$uid" "$ns"
    sep=","
  done
  # RBAC of the fake API server, asked by the default policy's SubjectAccessReview
  # (non-resource: the request's path and verb): every ServiceAccount may GET any path.
  printf '],"sar_rules":[{"verb":"get","path":"/*"}]}\n'
} >"$tmp/tokens.json"
# A token of a ServiceAccount that was deleted: well-formed, but the API server says no.
invalid_token=$(sa_token team-a old-deployer 11111111-2222-4333-8444-555555555555)
printf 'gateway-sa-%s\n' "$(openssl rand -hex 24)" >"$tmp/gateway-credential.txt"

echo "  - 5 ServiceAccounts the API server knows:"
for a in "${accounts[@]}"; do
  read -r ns name uid <<<"$a"
  echo "      system:serviceaccount:$ns:$name"
done

"$fake_bin" --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
  --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
  --tokens "$tmp/tokens.json" --credential-file "$tmp/gateway-credential.txt" --signing-key "$tmp/sa.key" \
  >"$tmp/fake-apiserver.log" 2>&1 &
fake_pid=$!
pids+=("$fake_pid")
api=$(wait_listening "$fake_pid" "$tmp/fake-apiserver.log" api) || die "the fake API server did not start"
control=$(wait_listening "$fake_pid" "$tmp/fake-apiserver.log" control) ||
  die "the fake API server did not start (control listener)"
curl -sf --max-time 5 -X POST -H 'Content-Type: application/json' \
  -d "{\"latency_ms\":$LATENCY_MS}" "http://$control/control/config" >/dev/null ||
  die "could not configure the fake API server"
echo "  - fake API server on https://$api, answering each TokenReview after ${LATENCY_MS} ms"

"$gateway_bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --apiserver "https://$api" --apiserver-ca "$tmp/certs/ca.crt" \
  --apiserver-token-file "$tmp/gateway-credential.txt" >"$tmp/tokengate.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
gw=$(wait_listening "$gw_pid" "$tmp/tokengate.log" main) || die "tokengate did not start"
admin=$(wait_listening "$gw_pid" "$tmp/tokengate.log" admin) || die "tokengate did not start (admin listener)"
echo "  - tokengate on http://$gw (metrics on http://$admin/metrics)"

problems=()
curl -sf --max-time 5 -X POST "http://$control/control/reset-stats" >/dev/null ||
  die "could not reset the fake API server's counters"

# --- (a) cold burst ------------------------------------------------------------------------
head -n 1 "$tmp/valid-tokens.txt" >"$tmp/burst-token.txt"
cat <<EOF

1. A cold burst: 100 requests at the same moment, all carrying the same token
   (team-a:webhook-sender), which tokengate has never seen.
EOF
coalesced0=$(metric gateway_tokenreview_coalesced_total)
burst=$("$tgload_bin" --url "http://$gw/hooks/deliver" -c 100 -n 100 \
  --tokens "$tmp/burst-token.txt" --timeout 10 2>"$tmp/tgload-burst.err") ||
  die "tgload failed: $(cat "$tmp/tgload-burst.err")"
burst_calls=$(review_calls)
burst_200=$(code_count 200 <<<"$burst")
coalesced=$(($(metric gateway_tokenreview_coalesced_total) - coalesced0))
echo "   answers:             $(codes_of <<<"$burst")"
echo "   latency:             p50 $(json_num p50_ms <<<"$burst") ms, p99 $(json_num p99_ms <<<"$burst") ms" \
  "(one ${LATENCY_MS} ms TokenReview, shared)"
echo "   TokenReview calls:   ${burst_calls:-?} (the API server was asked once; $coalesced requests waited for"
echo "                        that answer instead of asking again)"
[ "$burst_200" = 100 ] || problems+=("cold burst: $burst_200 of 100 requests answered 200")
[ "${burst_calls:-x}" = 1 ] ||
  problems+=("cold burst: ${burst_calls:-unknown} TokenReview calls for one token (want 1)")

# --- (b) mixed traffic ----------------------------------------------------------------------
{
  cat "$tmp/valid-tokens.txt"
  printf '%s\n' "$invalid_token"
  printf -- '-\n'
} >"$tmp/mixed-tokens.txt"
total=2000
ncallers=$(wc -l <"$tmp/mixed-tokens.txt")
# request i uses line i mod 7: lines 1-5 valid, 6 the deleted account's token, 7 no header
want_200=0 want_401=0
for i in $(seq 0 $((ncallers - 1))); do
  n=$(((total - i + ncallers - 1) / ncallers))
  if [ "$i" -lt 5 ]; then want_200=$((want_200 + n)); else want_401=$((want_401 + n)); fi
done
cat <<EOF

2. Mixed traffic: $total requests over 64 connections, rotating over 7 callers:
   the 5 ServiceAccounts, 1 token of a deleted ServiceAccount (the API server says
   "not authenticated"), and 1 caller that sends no Authorization header at all.
EOF
calls0=$(review_calls)
hits0=$(metric gateway_tokenreview_cache_hits_total)
misses0=$(metric gateway_tokenreview_cache_misses_total)
coal0=$(metric gateway_tokenreview_coalesced_total)
mixed=$("$tgload_bin" --url "http://$gw/hooks/deliver" -c 64 -n "$total" \
  --tokens "$tmp/mixed-tokens.txt" --timeout 10 2>"$tmp/tgload-mixed.err") ||
  die "tgload failed: $(cat "$tmp/tgload-mixed.err")"
calls1=$(review_calls)
hits=$(($(metric gateway_tokenreview_cache_hits_total) - hits0))
misses=$(($(metric gateway_tokenreview_cache_misses_total) - misses0))
coal=$(($(metric gateway_tokenreview_coalesced_total) - coal0))
mixed_calls=$((${calls1:-0} - ${calls0:-0}))
got_200=$(code_count 200 <<<"$mixed")
got_401=$(code_count 401 <<<"$mixed")
errors=$(json_num errors <<<"$mixed")

# --- (c) what happened ----------------------------------------------------------------------
cat <<EOF

3. What happened during those $total requests
   requests by status:  $(codes_of <<<"$mixed")   (expected 200 x $want_200, 401 x $want_401)
   transport errors:    ${errors:-?}
   TokenReview calls:   $mixed_calls for $total requests (4 new ServiceAccounts + 1 unknown token; the
                        caller without a token is refused without asking). Whole demo: ${calls1:-?}
                        calls for $((total + 100)) requests.
   cache hit rate:      $(pct "$hits" $((hits + misses))) ($hits hits, $misses misses, $coal requests joined a
                        review already in flight)
   latency:             p50 $(json_num p50_ms <<<"$mixed") ms, p90 $(json_num p90_ms <<<"$mixed") ms, p99 $(json_num p99_ms <<<"$mixed") ms, max $(json_num max_ms <<<"$mixed") ms
                        (a TokenReview alone takes ${LATENCY_MS} ms here; only the first request of each
                        new token waits for one)
   throughput:          $(json_num rps <<<"$mixed") requests/s on this machine ($(nproc) cores, shared; tgload,
                        tokengate and the fake API server all on it)
EOF
[ "${got_200:-0}" -gt 0 ] || problems+=("mixed traffic: no 200 answers")
[ "${errors:-1}" = 0 ] || problems+=("mixed traffic: ${errors:-unknown} transport errors")
[ "$got_200" = "$want_200" ] && [ "$got_401" = "$want_401" ] ||
  problems+=("mixed traffic: got 200 x $got_200 and 401 x $got_401, want 200 x $want_200 and 401 x $want_401")
[ "$mixed_calls" -le 5 ] ||
  problems+=("mixed traffic: $mixed_calls TokenReview calls, want at most 5 (one per new token)")

# --- (d) one answer up close ----------------------------------------------------------------
tok1=$(head -n 1 "$tmp/valid-tokens.txt")
cat <<EOF

4. One allowed request up close, as nginx auth_request / Envoy ext_authz / Traefik
   forwardAuth would send it:
   $ curl -i -H 'Authorization: Bearer <team-a:webhook-sender's token>' http://$gw/hooks/deliver
EOF
curl -si --max-time 10 -H "Authorization: Bearer $tok1" "http://$gw/hooks/deliver" >"$tmp/curl-200.txt" || true
sed 's/\r$//' "$tmp/curl-200.txt" | sed '/^$/d; s/^/   /'
head -n 1 "$tmp/curl-200.txt" | grep -q ' 200' || problems+=("curl with a valid token did not get 200")
grep -qi '^X-Remote-User: system:serviceaccount:team-a:webhook-sender' "$tmp/curl-200.txt" ||
  problems+=("the 200 answer lacks X-Remote-User: system:serviceaccount:team-a:webhook-sender")
echo "   And the deleted ServiceAccount's token (from the cache now, no API call):"
curl -si --max-time 10 -H "Authorization: Bearer $invalid_token" "http://$gw/hooks/deliver" \
  >"$tmp/curl-401.txt" || true
sed 's/\r$//' "$tmp/curl-401.txt" | grep -iE '^(HTTP/|WWW-Authenticate)' | sed 's/^/   /'

echo
if [ ${#problems[@]} -gt 0 ]; then
  echo "Something is wrong:"
  printf '  - %s\n' "${problems[@]}"
  exit 1
fi
echo "All as expected: one TokenReview per token, however many requests carried it."

if [ "$keep" = 1 ]; then
  leave_running=1
  cat <<EOF

Left running (--keep):
  tokengate        http://$gw  (pid $gw_pid), metrics: http://$admin/metrics
  fake API server  https://$api  (pid $fake_pid), stats: http://$control/control/stats
  files            $tmp  (tokens: valid-tokens.txt, mixed-tokens.txt; logs: *.log)
Try:
  curl -i -H "Authorization: Bearer \$(head -n 1 $tmp/valid-tokens.txt)" http://$gw/
  $tgload_bin --url http://$gw/ -c 32 -d 3 --tokens $tmp/mixed-tokens.txt
Stop:
  kill $gw_pid $fake_pid && rm -rf $tmp
EOF
fi
