# bench/lib.sh: process helpers shared by the issue-6 benchmark scripts (sourced, not run).
# shellcheck shell=bash disable=SC2034 # the TG_* globals are read by the scripts that source this
#
#   . "$(dirname "$0")/lib.sh"
#   tg_init NAME BUILD_DIR        # work dir, binaries, cleanup trap; NAME prefixes messages
#   tg_tokens FILE N [PREFIX]     # FILE.json (fake token table) + FILE.txt (one token a line)
#   tg_start_fake TOKENS_JSON     # -> TG_FAKE_PID TG_FAKE_API TG_FAKE_CONTROL
#   tg_start_gateway NAME [FLAGS] # against TG_FAKE_API; waits for /readyz; resets the fake's
#                                 # counters -> TG_GW_PID TG_GW_ADDR TG_GW_ADMIN
#   tg_stop PID                   # SIGTERM, then SIGKILL after 5 s
#
# Every process started here is recorded in TG_PIDS and stopped by the EXIT trap, which
# also removes the work directory (TG_KEEP=1 keeps it and prints its path). Helpers that
# "return" several values set TG_* globals: command substitution would run them in a
# subshell, where the PIDs they record would be lost.
#
# Result lines: tg_result NAME KEY=VALUE... prints "RESULT NAME KEY=VALUE ..." (the last
# line of every script; bench/run_all.sh collects them).

TG_PIDS=()

tg_die() { echo "$TG_NAME: $*" >&2; exit 1; }
tg_note() { echo "$TG_NAME: $*" >&2; }

# tg_init NAME BUILD_DIR: paths, binaries, a private work directory and the cleanup trap.
tg_init() {
  TG_NAME=$1
  [ -n "${2:-}" ] || { echo "usage: bench/$TG_NAME.sh BUILD_DIR" >&2; exit 2; }
  [ -d "$2" ] || { echo "$TG_NAME: no build directory $2" >&2; exit 2; }
  TG_BUILD=$(cd "$2" && pwd)
  TG_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  TG_ROOT=$(dirname "$TG_HERE")
  TG_GATEWAY=$TG_BUILD/core/tokengate
  TG_FAKE=$TG_BUILD/spec/support/fake-apiserver
  TG_TGLOAD=$TG_BUILD/bench/tgload
  TG_BARE=$TG_BUILD/bench/bare-server
  TG_MACHINE="$(nproc) cores, shared"
  for tool in curl openssl awk; do command -v "$tool" >/dev/null || tg_die "$tool is not installed"; done
  TG_TMP=$(mktemp -d "/tmp/tokengate-$TG_NAME.XXXXXX")
  trap tg_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# tg_need FILE...: each must be an executable in the build tree.
tg_need() {
  local b
  for b in "$@"; do [ -x "$b" ] || tg_die "missing $b (build it first: cmake --build $TG_BUILD)"; done
}

tg_cleanup() {
  local pid
  for pid in "${TG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${TG_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "${TG_KEEP:-}" ]; then echo "$TG_NAME: files kept in $TG_TMP" >&2; else rm -rf "$TG_TMP"; fi
}

# tg_stop PID: stop one process started here (SIGTERM, SIGKILL after 5 s) and forget it.
tg_stop() {
  local pid=$1 p keep=()
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${TG_PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  TG_PIDS=("${keep[@]}")
}

# tg_wait_listening PID LOG LISTENER: print the address the process logged for LISTENER
# ({"msg":"listening","listener":NAME,"addr":"HOST:PORT"}); fails if it exits or takes > 30 s.
tg_wait_listening() {
  local pid=$1 log=$2 listener=$3 addr
  for _ in $(seq 300); do
    addr=$(sed -n 's/.*"msg":"listening".*"listener":"'"$listener"'".*"addr":"\([^"]*\)".*/\1/p' \
      "$log" 2>/dev/null | head -n 1)
    if [ -n "$addr" ]; then echo "$addr"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$TG_NAME: $(basename "$log") exited before listening ($listener):" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$TG_NAME: timed out waiting for the $listener listener in $log" >&2
  tail -n 20 "$log" >&2
  return 1
}

# tg_certs: the test PKI (spec/support/gen_certs.sh) and a gateway credential, once.
tg_certs() {
  [ -f "$TG_TMP/certs/ca.crt" ] && return 0
  "$TG_ROOT/spec/support/gen_certs.sh" "$TG_TMP/certs" >"$TG_TMP/gen_certs.log" 2>&1 ||
    { cat "$TG_TMP/gen_certs.log" >&2; tg_die "gen_certs.sh failed"; }
  printf 'gateway-credential-%s\n' "$(openssl rand -hex 16)" >"$TG_TMP/cred.txt"
}

# tg_tokens BASE N [PREFIX]: N distinct ServiceAccount tokens in BASE.json (the fake's token
# table, with a SAR rule allowing GET /*) and BASE.txt (one token a line, in order).
# Identities are typical of pod-bound ServiceAccount tokens: system:serviceaccount:NS:NAME
# over 20 namespaces, a uid, the three ServiceAccount groups, and the extra keys a recent
# kube-apiserver adds (pod-name, pod-uid, node-name, node-uid, credential-id).
# TG_TOKENS_EXTRA=0 leaves extra out; TG_TOKENS_SUFFIX is appended to every token (e.g.
# ".c2ln" with a PREFIX ending in "." makes them JWT-shaped). One awk process, whatever N.
tg_tokens() {
  local base=$1 n=$2 prefix=${3:-bench}
  local salt
  salt=$(openssl rand -hex 6)
  awk -v n="$n" -v prefix="$prefix-$salt" -v extra="${TG_TOKENS_EXTRA:-1}" -v suffix="${TG_TOKENS_SUFFIX:-}" \
    -v txt="$base.txt" '
    function uuid(a, b) { return sprintf("%08x-%04x-4%03x-a%03x-%012d", a, b % 65536, a % 4096, b % 4096, a * 7919 + b) }
    BEGIN {
      printf "{\"tokens\":["
      for (i = 0; i < n; i++) {
        ns = "team-" (i % 20)
        sa = "webhook-sender-" i
        tok = prefix "-" i suffix
        print tok > txt
        printf "%s{\"token\":\"%s\",\"username\":\"system:serviceaccount:%s:%s\",\"uid\":\"%s\",", \
          (i ? "," : ""), tok, ns, sa, uuid(i, 1)
        printf "\"groups\":[\"system:serviceaccounts\",\"system:serviceaccounts:%s\",\"system:authenticated\"]", ns
        if (extra) {
          printf ",\"extra\":{\"authentication.kubernetes.io/pod-name\":[\"%s-7d9f8b6c5d-%05d\"],", sa, i % 100000
          printf "\"authentication.kubernetes.io/pod-uid\":[\"%s\"],", uuid(i, 2)
          printf "\"authentication.kubernetes.io/node-name\":[\"node-%03d.eu-west-1.compute.internal\"],", i % 500
          printf "\"authentication.kubernetes.io/node-uid\":[\"%s\"],", uuid(i % 500, 3)
          printf "\"authentication.kubernetes.io/credential-id\":[\"JTI=%s\"]}", uuid(i, 4)
        }
        printf "}"
      }
      printf "],\"sar_rules\":[{\"verb\":\"get\",\"path\":\"/*\"}]}\n"
    }' >"$base.json" || tg_die "cannot write $base.json"
}

# tg_start_fake TOKENS_JSON [LOGNAME]: a fake kube-apiserver on free ports.
# Sets TG_FAKE_PID, TG_FAKE_API (host:port, HTTPS) and TG_FAKE_CONTROL (host:port, HTTP).
tg_start_fake() {
  local tokens=$1 log=$TG_TMP/${2:-fake}.log
  tg_certs
  "$TG_FAKE" --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
    --cert "$TG_TMP/certs/server.crt" --key "$TG_TMP/certs/server.key" \
    --tokens "$tokens" --credential-file "$TG_TMP/cred.txt" >"$log" 2>&1 &
  TG_FAKE_PID=$!
  TG_PIDS+=("$TG_FAKE_PID")
  TG_FAKE_API=$(tg_wait_listening "$TG_FAKE_PID" "$log" api) || tg_die "the fake API server did not start"
  TG_FAKE_CONTROL=$(tg_wait_listening "$TG_FAKE_PID" "$log" control) || tg_die "the fake API server did not start"
}

# tg_fake_config JSON: merge knobs into the fake's configuration (POST /control/config).
tg_fake_config() {
  curl -sf --max-time 10 -X POST -H 'Content-Type: application/json' -d "$1" \
    "http://$TG_FAKE_CONTROL/control/config" >/dev/null || tg_die "cannot configure the fake: $1"
}

# tg_fake_reset: counters back to zero, knobs back to defaults.
tg_fake_reset() {
  curl -sf --max-time 10 -X POST "http://$TG_FAKE_CONTROL/control/reset" >/dev/null || tg_die "cannot reset the fake"
}

tg_fake_reset_stats() {
  curl -sf --max-time 10 -X POST "http://$TG_FAKE_CONTROL/control/reset-stats" >/dev/null ||
    tg_die "cannot reset the fake's counters"
}

# tg_fake_stat KEY: one counter of GET /control/stats (tokenreview_calls, throttled, ...).
tg_fake_stat() {
  curl -sf --max-time 30 "http://$TG_FAKE_CONTROL/control/stats" | tg_json_num "$1"
}

# tg_start_gateway NAME [FLAGS...]: tokengate in front of the current fake, on free ports,
# with FLAGS after the API server flags. Waits until /readyz answers 200 (the gateway's
# start-up probe reached the fake), then zeroes the fake's counters so that they count this
# benchmark's reviews only. Sets TG_GW_PID, TG_GW_ADDR, TG_GW_ADMIN.
tg_start_gateway() {
  local name=$1 log=$TG_TMP/tokengate-$1.log
  shift
  "$TG_GATEWAY" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --apiserver "https://$TG_FAKE_API" --apiserver-ca "$TG_TMP/certs/ca.crt" \
    --apiserver-token-file "$TG_TMP/cred.txt" "$@" >"$log" 2>&1 &
  TG_GW_PID=$!
  TG_PIDS+=("$TG_GW_PID")
  TG_GW_ADDR=$(tg_wait_listening "$TG_GW_PID" "$log" main) || tg_die "tokengate ($name) did not start"
  TG_GW_ADMIN=$(tg_wait_listening "$TG_GW_PID" "$log" admin) || tg_die "tokengate ($name) did not start"
  local code=
  for _ in $(seq 200); do
    code=$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://$TG_GW_ADMIN/readyz") || true
    [ "$code" = 200 ] && break
    kill -0 "$TG_GW_PID" 2>/dev/null || break
    sleep 0.05
  done
  [ "$code" = 200 ] || { tail -n 20 "$log" >&2; tg_die "tokengate ($name) never became ready (/readyz $code)"; }
  tg_fake_reset_stats
}

# tg_gateway_threads PID: OS threads of a process (workers + libcurl resolver etc.).
tg_threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

# tg_rss_kb PID: resident set size in kB.
tg_rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# tg_metric NAME: a sample of the current gateway's /metrics (exact series name, labels
# included, e.g. 'gateway_requests_total{code="200"}'); 0 when absent.
tg_metric() {
  curl -sf --max-time 10 "http://$TG_GW_ADMIN/metrics" |
    awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}

# tg_json_num KEY: the number after "KEY": in the JSON on stdin (first occurrence).
tg_json_num() { sed -n 's/.*"'"$1"'":\([0-9.eE+-]*\).*/\1/p' | head -n 1; }

# tg_code N < tgload-json: how many answers had status N.
tg_code() { sed -n 's/.*"codes":{\([^}]*\)}.*/\1/p' | tr ',' '\n' | awk -F: -v c="\"$1\"" '$1 == c { n = $2 } END { print n + 0 }'; }

# tg_parse_wrk FILE: "rps p50_ms p99_ms non2xx socket_errors requests" of a wrk --latency run.
tg_parse_wrk() {
  awk '
    function ms(v,   n, u) {
      n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000
      if (u == "ms") return n
      if (u == "s") return n * 1000
      if (u == "m") return n * 60000
      return n
    }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(",", ""); errs = $4 + $6 + $8 + $10 }
    / requests in / { total = $1 }
    END { printf "%.1f %.3f %.3f %d %d %d\n", rps, p50, p99, non2xx, errs, total }' "$1"
}

# tg_wrk URL OUT TOKENS_FILE THREADS CONNS SECONDS: one wrk --latency run with the tokens
# of TOKENS_FILE rotating (bench/wrk_bearer.lua); its output in OUT.
tg_wrk() {
  TG_TOKENS=$3 timeout $(($6 + 60)) wrk -t"$4" -c"$5" -d"${6}s" --latency --timeout 5s \
    -s "$TG_HERE/wrk_bearer.lua" "$1" >"$2" 2>&1 || { cat "$2" >&2; tg_die "wrk failed against $1"; }
}

# tg_median NUMBERS...: their median.
tg_median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print 0; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# tg_ratio A B: A / B with 3 decimals (0 when B is 0).
tg_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }'; }

# tg_calc EXPR [FMT]: awk arithmetic, e.g. tg_calc "100 * 3 / 7" %.2f (default %g).
tg_calc() { awk "BEGIN { printf \"${2:-%g}\", ($1) }"; }

# tg_result NAME KEY=VALUE...: the machine-readable last line.
tg_result() { local name=$1; shift; echo "RESULT $name $*"; }
