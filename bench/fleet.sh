#!/usr/bin/env bash
# Fleet benchmark (issue 7): three tokengate replicas behind real nginx. How many
# TokenReviews does the fleet make per token per cache TTL when nginx spreads requests
# round-robin, and when it hashes the Authorization header (examples/fleet/nginx.conf)?
# And what does the extra nginx hop cost?
#
#   bench/fleet.sh BUILD_DIR
#
# Setup: one fake Kubernetes API server (spec/support/fake-apiserver, TLS, generated
# certificates) knowing TOKENS ServiceAccount tokens; three gateways on it with
# --policy none (TokenReviews only), the same --cache-ttl TTL, an API rate limit high
# enough never to be the bottleneck, one event loop each; bench/bare-server as the
# protected application; nginx running examples/fleet/nginx.conf itself (placeholders
# filled in, nothing else changed) in the foreground with its files in a private directory.
#
# 1. Calls per token per TTL. For each mode, rr (the example with its
#    `hash $http_authorization consistent;` line deleted: nginx's default round-robin)
#    and hash (the example as it is): a fresh nginx, every gateway's cache flushed, the
#    fake's counters zeroed, then bench/tgload sends the same traffic through nginx's
#    auth_request server (the first server block) for WINDOWS x TTL - 1 seconds:
#    CONNS connections cycling through the TOKENS tokens (request i carries token
#    i mod TOKENS). The fake counts the TokenReviews it received, in total and per
#    token: calls per token per TTL = calls / (TOKENS x WINDOWS). Ideal: REPLICAS (3)
#    for round-robin (every replica reviews every token once per TTL), 1 for hashing.
#    Each gateway's own gateway_tokenreview_api_calls_total shows how the tokens were
#    shared out.
# 2. The extra hop. With the hash nginx still running and every token warm, tgload
#    alternates HOP_ROUNDS times between replica 0 directly and the example's hashing
#    relay (the second server block: nginx in front of the three replicas, same requests,
#    same answers), HOP_DURATION seconds each; medians of req/s, p50 and p99.
#
# Prints a summary, then "RESULT fleet key=value ..." as its last line. Exits non-zero
# when the setup fails or an answer is not 200; the figures themselves never fail it (this
# machine is small and shared: nginx, three gateways, the fake and the load generator
# share its cores, so absolute rates are this machine's).
#
# Environment: TOKENS (200), TTL (10, seconds), WINDOWS (3), CONNS (32), HOP_ROUNDS (3),
# HOP_DURATION (5), HOP_CONNS (16), FLEET_KEEP=1 keeps the work directory (logs).
# The whole run must stay under 150 s of measurement (checked before starting).
set -euo pipefail

build=${1:?usage: bench/fleet.sh BUILD_DIR}
build=$(cd "$build" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

TOKENS=${TOKENS:-200}
TTL=${TTL:-10}
WINDOWS=${WINDOWS:-3}
CONNS=${CONNS:-32}
HOP_ROUNDS=${HOP_ROUNDS:-3}
HOP_DURATION=${HOP_DURATION:-5}
HOP_CONNS=${HOP_CONNS:-16}
REPLICAS=3 # the example lists three servers
MACHINE="this machine ($(nproc) cores, shared)"

gateway_bin=$build/core/tokengate
fake_bin=$build/spec/support/fake-apiserver
tgload_bin=$build/bench/tgload
bare_bin=$build/bench/bare-server
gen_certs=$root/spec/support/gen_certs.sh
example=$root/examples/fleet/nginx.conf

die() { echo "fleet: $*" >&2; exit 1; }

for v in TOKENS TTL WINDOWS CONNS HOP_ROUNDS HOP_DURATION HOP_CONNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive whole number (got ${!v})"
done
[ "$TTL" -ge 2 ] || die "TTL must be at least 2 s"
measure=$((2 * (WINDOWS * TTL - 1) + 2 * HOP_ROUNDS * HOP_DURATION))
[ "$measure" -le 150 ] || die "2 x (WINDOWS x TTL - 1) + 2 x HOP_ROUNDS x HOP_DURATION must stay within 150 s (got $measure)"
for b in "$gateway_bin" "$fake_bin" "$tgload_bin" "$bare_bin"; do
  [ -x "$b" ] || die "missing $b (build it first: cmake --build $build)"
done
[ -f "$gen_certs" ] || die "missing $gen_certs"
[ -f "$example" ] || die "missing $example"
for tool in curl jq openssl awk; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
nginx_bin=$(command -v nginx || true)
if [ -z "$nginx_bin" ] && [ -x /usr/sbin/nginx ]; then nginx_bin=/usr/sbin/nginx; fi
[ -n "$nginx_bin" ] || die "nginx is not installed"

tmp=$(mktemp -d /tmp/tokengate-fleet.XXXXXX)
pids=()
nginx_pid=
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  [ -n "$nginx_pid" ] && stop_pid "$nginx_pid"
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  if [ "${FLEET_KEEP:-}" = 1 ]; then echo "fleet: work directory kept: $tmp" >&2; else rm -rf "$tmp"; fi
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
      echo "fleet: $(basename "$log" .log) exited before listening ($listener):" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "fleet: timed out waiting for the $listener listener in $log" >&2
  return 1
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
  if (NR == 0) { print 0; exit }
  if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }'; }

echo "== tokengate benchmark: a fleet of $REPLICAS replicas behind nginx, round-robin vs consistent hash"
echo "   $MACHINE; $TOKENS tokens, --cache-ttl ${TTL}s, $WINDOWS TTLs per mode, tgload -c $CONNS"
echo "   $("$nginx_bin" -v 2>&1)"

# --- setup -----------------------------------------------------------------------------
"$gen_certs" "$tmp/certs" >"$tmp/gen_certs.log" 2>&1 || { cat "$tmp/gen_certs.log" >&2; die "gen_certs.sh failed"; }
prefix="fleet.$(openssl rand -hex 12)"
: >"$tmp/tokens.txt"
{
  printf '{"tokens":['
  for i in $(seq 0 $((TOKENS - 1))); do
    [ "$i" -gt 0 ] && printf ','
    printf '{"token":"%s.%d","username":"system:serviceaccount:fleet:client-%d","uid":"uid-%d","groups":["system:serviceaccounts","system:serviceaccounts:fleet","system:authenticated"]}' \
      "$prefix" "$i" "$i" "$i"
    printf '%s.%d\n' "$prefix" "$i" >>"$tmp/tokens.txt"
  done
  printf '],"sar_rules":[]}\n'
} >"$tmp/tokens.json"
printf 'gateway-credential-%s\n' "$(openssl rand -hex 16)" >"$tmp/cred.txt"

"$fake_bin" --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
  --cert "$tmp/certs/server.crt" --key "$tmp/certs/server.key" \
  --tokens "$tmp/tokens.json" --credential-file "$tmp/cred.txt" >"$tmp/fake.log" 2>&1 &
pids+=($!)
api=$(wait_listening "$!" "$tmp/fake.log" api) || die "the fake API server did not start"
control=$(wait_listening "${pids[-1]}" "$tmp/fake.log" control) || die "the fake API server did not start"

gw_workers=()
"$gateway_bin" --help 2>&1 | grep -q -- '--workers' && gw_workers=(--workers 1)
gw_addr=() gw_admin=()
for r in $(seq 0 $((REPLICAS - 1))); do
  "$gateway_bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --apiserver "https://$api" --apiserver-ca "$tmp/certs/ca.crt" --apiserver-token-file "$tmp/cred.txt" \
    --policy none --cache-ttl "${TTL}s" --apiserver-qps 5000 --apiserver-burst 5000 \
    "${gw_workers[@]}" >"$tmp/tokengate-$r.log" 2>&1 &
  pids+=($!)
  gw_addr[r]=$(wait_listening "$!" "$tmp/tokengate-$r.log" main) || die "tokengate $r did not start"
  gw_admin[r]=$(wait_listening "${pids[-1]}" "$tmp/tokengate-$r.log" admin) || die "tokengate $r did not start"
done
for r in $(seq 0 $((REPLICAS - 1))); do
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://${gw_admin[r]}/readyz")" = 200 ] && break
    sleep 0.1
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://${gw_admin[r]}/readyz")" = 200 ] ||
    { tail -n 20 "$tmp/tokengate-$r.log" >&2; die "tokengate $r never became ready"; }
  echo "   replica $r: tokengate --policy none --cache-ttl ${TTL}s http://${gw_addr[r]}"
done

"$bare_bin" --listen 127.0.0.1:0 >"$tmp/bare-server.log" 2>&1 &
pids+=($!)
app=$(wait_listening "$!" "$tmp/bare-server.log" main) || die "bare-server did not start"

# start_nginx MODE: the example, placeholders filled in; MODE rr deletes its hash line.
# nginx cannot pick a free port itself: random ports below the ephemeral range until
# both bind. Sets nginx_pid, edge_url, router_url.
start_nginx() {
  local mode=$1 dir=$tmp/nginx-$1 edge router
  mkdir -p "$dir"
  chmod 755 "$dir" # worker processes run as nobody when this runs as root
  # shellcheck disable=SC2016 # a literal nginx variable
  grep -q '^    hash \$http_authorization consistent;$' "$example" || die "the example has no hash line"
  for _ in $(seq 10); do
    edge=$((20000 + RANDOM % 12000)) router=$((20000 + RANDOM % 12000))
    [ "$edge" != "$router" ] || continue
    sed -e "s/@LISTEN@/127.0.0.1:$edge/" -e "s/@ROUTER_LISTEN@/127.0.0.1:$router/" \
      -e "s/@TOKENGATE_0@/${gw_addr[0]}/" -e "s/@TOKENGATE_1@/${gw_addr[1]}/" \
      -e "s/@TOKENGATE_2@/${gw_addr[2]}/" -e "s/@UPSTREAM@/$app/" "$example" >"$dir/fleet.conf"
    # shellcheck disable=SC2016 # a literal nginx variable
    if [ "$mode" = rr ]; then sed -i '/^    hash \$http_authorization consistent;$/d' "$dir/fleet.conf"; fi
    ! grep -q '@[A-Z_0-9]*@' "$dir/fleet.conf" || die "a placeholder is left in the example"
    cat >"$dir/main.conf" <<EOF
worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/tmp-body;
  proxy_temp_path $dir/tmp-proxy;
  fastcgi_temp_path $dir/tmp-fastcgi;
  uwsgi_temp_path $dir/tmp-uwsgi;
  scgi_temp_path $dir/tmp-scgi;
  include $dir/fleet.conf;
}
EOF
    "$nginx_bin" -t -p "$dir" -c "$dir/main.conf" -e "$dir/error.log" -g "pid $dir/nginx.pid;" \
      >"$dir/nginx-t.log" 2>&1 || { cat "$dir/nginx-t.log" >&2; die "nginx -t failed ($mode)"; }
    "$nginx_bin" -p "$dir" -c "$dir/main.conf" -e "$dir/error.log" \
      -g "daemon off; pid $dir/nginx.pid; error_log $dir/error.log warn;" >"$dir/nginx.out" 2>&1 &
    nginx_pid=$!
    for _ in $(seq 50); do
      if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$edge/")" = 401 ] &&
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$router/")" = 401 ]; then
        edge_url="http://127.0.0.1:$edge" router_url="http://127.0.0.1:$router"
        return 0
      fi
      kill -0 "$nginx_pid" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$nginx_pid"
    nginx_pid=
    grep -q "Address already in use" "$dir/error.log" "$dir/nginx.out" 2>/dev/null ||
      { cat "$dir/error.log" "$dir/nginx.out" >&2 2>/dev/null; die "nginx ($mode) did not start"; }
  done
  die "nginx found no free port"
}

# tgload_run URL CONNS SECONDS OUT: the JSON summary line in OUT.
tgload_run() {
  timeout $(($3 + 30)) "$tgload_bin" --url "$1" -c "$2" -d "$3" --tokens "$tmp/tokens.txt" --timeout 10 \
    >"$4" 2>"$4.err" || { cat "$4.err" >&2; die "tgload failed against $1"; }
}
jget() { jq -r "$1" "$2"; }
gw_calls() { curl -sf --max-time 5 "http://$1/metrics" | awk '$1 == "gateway_tokenreview_api_calls_total" { print $2 + 0 }'; }

# --- 1. calls per token per TTL ----------------------------------------------------------
run_s=$((WINDOWS * TTL - 1))
declare -A per_token per_calls per_min per_max per_codes per_rps per_split
bad=0
for mode in rr hash; do
  start_nginx "$mode"
  for r in $(seq 0 $((REPLICAS - 1))); do
    curl -sf --max-time 5 -X POST "http://${gw_admin[r]}/cache/flush" >/dev/null || die "cannot flush replica $r"
  done
  before=()
  for r in $(seq 0 $((REPLICAS - 1))); do before[r]=$(gw_calls "${gw_admin[r]}"); done
  curl -sf --max-time 5 -X POST "http://$control/control/reset-stats" >/dev/null || die "cannot reset the fake's counters"
  tgload_run "$edge_url/bench" "$CONNS" "$run_s" "$tmp/calls-$mode.json"
  curl -sf --max-time 5 "http://$control/control/stats" >"$tmp/stats-$mode.json" || die "cannot read the fake's counters"
  split=
  for r in $(seq 0 $((REPLICAS - 1))); do
    split+="$(awk -v a="$(gw_calls "${gw_admin[r]}")" -v b="${before[r]}" 'BEGIN { print a - b }')/"
  done
  per_split[$mode]=${split%/}
  per_calls[$mode]=$(jget .tokenreview_calls "$tmp/stats-$mode.json")
  per_min[$mode]=$(jget '[.by_token[]] | min // 0' "$tmp/stats-$mode.json")
  per_max[$mode]=$(jget '[.by_token[]] | max // 0' "$tmp/stats-$mode.json")
  reviewed=$(jget '.by_token | length' "$tmp/stats-$mode.json")
  per_token[$mode]=$(awk -v c="${per_calls[$mode]}" -v n="$TOKENS" -v w="$WINDOWS" 'BEGIN { printf "%.3f", c / (n * w) }')
  per_codes[$mode]=$(jget '.codes | to_entries | map("\(.key)x\(.value)") | join(",")' "$tmp/calls-$mode.json")
  per_rps[$mode]=$(jget '.rps | floor' "$tmp/calls-$mode.json")
  requests=$(jget .requests "$tmp/calls-$mode.json")
  ok=$(jget '.codes["200"] // 0' "$tmp/calls-$mode.json")
  errors=$(jget .errors "$tmp/calls-$mode.json")
  [ "$ok" = "$requests" ] && [ "$errors" = 0 ] && [ "$reviewed" = "$TOKENS" ] || bad=1
  printf '   %-4s %7s requests (%s req/s; %s; %s transport errors) in %ss: %5s TokenReviews, %s tokens reviewed,\n' \
    "$mode" "$requests" "${per_rps[$mode]}" "${per_codes[$mode]}" "$errors" "$run_s" "${per_calls[$mode]}" "$reviewed"
  printf '        per token %s..%s over %s TTLs -> %s per token per TTL; by replica %s\n' \
    "${per_min[$mode]}" "${per_max[$mode]}" "$WINDOWS" "${per_token[$mode]}" "${per_split[$mode]}"
  if [ "$mode" = rr ]; then stop_pid "$nginx_pid"; nginx_pid=; fi
done

# --- 2. the extra hop -----------------------------------------------------------------------
echo
printf '   %-6s %-26s %10s %8s %8s %s\n' round target "req/s" "p50 ms" "p99 ms" answers
declare -A rps_of p50_of p99_of
for round in $(seq "$HOP_ROUNDS"); do
  order=(direct nginx)
  [ $((round % 2)) = 0 ] && order=(nginx direct)
  for target in "${order[@]}"; do
    if [ "$target" = direct ]; then url="http://${gw_addr[0]}/bench"; label="replica 0 directly"
    else url="$router_url/bench"; label="nginx hash relay -> fleet"; fi
    out=$tmp/hop-$target-$round.json
    tgload_run "$url" "$HOP_CONNS" "$HOP_DURATION" "$out"
    rps=$(jget '.rps' "$out") p50=$(jget '.p50_ms' "$out") p99=$(jget '.p99_ms' "$out")
    codes=$(jget '.codes | to_entries | map("\(.key)x\(.value)") | join(",")' "$out")
    [ "$(jget '.codes["200"] // 0' "$out")" = "$(jget .requests "$out")" ] && [ "$(jget .errors "$out")" = 0 ] || bad=1
    rps_of[$target]+="$rps " p50_of[$target]+="$p50 " p99_of[$target]+="$p99 "
    printf '   %-6s %-26s %10.0f %8.3f %8.3f %s\n' "$round" "$label" "$rps" "$p50" "$p99" "$codes"
  done
done
# shellcheck disable=SC2086 # space-separated number lists
{
  d_rps=$(median ${rps_of[direct]}) d_p50=$(median ${p50_of[direct]}) d_p99=$(median ${p99_of[direct]})
  n_rps=$(median ${rps_of[nginx]}) n_p50=$(median ${p50_of[nginx]}) n_p99=$(median ${p99_of[nginx]})
}
d_rps=$(printf '%.0f' "$d_rps") n_rps=$(printf '%.0f' "$n_rps")

echo
echo "summary ($MACHINE):"
echo "  TokenReviews per token per TTL, $REPLICAS replicas: round-robin ${per_token[rr]} (ideal $REPLICAS)," \
  "consistent hash ${per_token[hash]} (ideal 1): hashing made $(ratio "${per_calls[rr]}" "${per_calls[hash]}")x fewer API calls"
echo "  extra hop (medians of $HOP_ROUNDS x ${HOP_DURATION}s, tgload -c $HOP_CONNS): direct $d_rps req/s p50 $d_p50 ms p99 $d_p99 ms;" \
  "through nginx $n_rps req/s p50 $n_p50 ms p99 $n_p99 ms (req/s x$(ratio "$n_rps" "$d_rps"), p99 x$(ratio "$n_p99" "$d_p99");" \
  "the hop adds $(awk -v a="$n_p50" -v b="$d_p50" 'BEGIN { printf "%.3f", a - b }') ms at p50," \
  "$(awk -v a="$n_p99" -v b="$d_p99" 'BEGIN { printf "%.3f", a - b }') ms at p99)"
echo "RESULT fleet replicas=$REPLICAS tokens=$TOKENS ttl_s=$TTL windows=$WINDOWS" \
  "rr_calls=${per_calls[rr]} hash_calls=${per_calls[hash]}" \
  "rr_calls_per_token_ttl=${per_token[rr]} hash_calls_per_token_ttl=${per_token[hash]}" \
  "direct_rps=$d_rps nginx_rps=$n_rps direct_p50_ms=$d_p50 nginx_p50_ms=$n_p50" \
  "direct_p99_ms=$d_p99 nginx_p99_ms=$n_p99 all_200=$([ "$bad" = 0 ] && echo true || echo false)"
[ "$bad" = 0 ] || die "an answer was not 200, a request failed, or a token was never reviewed (logs: FLEET_KEEP=1)"
