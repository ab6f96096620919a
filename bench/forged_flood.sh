#!/usr/bin/env bash
# Forged-token flood (issue 14): FORGED (50 000) distinct forged ServiceAccount JWTs — the
# cluster's issuer and key id, a signature that is not the issuer's — from FLOOD_C (64)
# connections, beside a steady caller (200 req/s) with one cached good token, against a
# genuine kube-apiserver; once with --jwt-preverify on (its default) and once off.
#
#   TOKENGATE_KUBE_APISERVER=/path/to/kube-apiserver bench/forged_flood.sh BUILD_DIR
#
# Reports the TokenReviews the API server itself counted (apiserver_request_total), the
# flood's answers and time, and the good caller's answers and p99 during the flood.
# Goal (pre-verification on): 0 TokenReviews, every forged token 401, the good token
# unaffected. Needs etcd (Debian's etcd-server) and the kube-apiserver binary; without the
# variable it says so and exits 0 (nothing measured).
# Last line: RESULT forged_flood key=value ...
# With pre-verification off every forged token costs a TokenReview at --apiserver-qps, so
# that arm sends FORGED_OFF (2000) of them.
# Environment: FORGED (50000), FORGED_OFF (2000), FLOOD_C (64), WORKERS (2), TOKENGATE_KEEP_KUBE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: bench/forged_flood.sh BUILD_DIR}
if [ -z "${TOKENGATE_KUBE_APISERVER:-}" ]; then
  echo "forged_flood: TOKENGATE_KUBE_APISERVER is not set: skipped (needs a kube-apiserver binary)"
  exit 0
fi
echo "== forged flood: ${FORGED:-50000} forged JWTs, genuine $("$TOKENGATE_KUBE_APISERVER" --version);" \
  "this machine: $(nproc) cores, shared"
TOKENGATE_BUILD_DIR=$(cd "$build" && pwd) exec luajit bench/forged_flood.lua
