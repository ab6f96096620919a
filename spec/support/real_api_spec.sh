#!/bin/sh
# Runs one spec against a genuine kube-apiserver (spec/real/), or reports it skipped:
# without $TOKENGATE_KUBE_APISERVER this exits 77, which CTest shows as "Skipped" (never
# as passed). Named but unusable (no such binary, no etcd) is a failure, not a skip.
if [ -z "${TOKENGATE_KUBE_APISERVER:-}" ]; then
    echo "skipped: set TOKENGATE_KUBE_APISERVER to a kube-apiserver binary to run the real-API specs (README: Tests)"
    exit 77
fi
if [ ! -x "$TOKENGATE_KUBE_APISERVER" ]; then
    echo "TOKENGATE_KUBE_APISERVER=$TOKENGATE_KUBE_APISERVER is not an executable file" >&2
    exit 1
fi
if ! command -v etcd >/dev/null 2>&1; then
    echo "etcd is not installed (Debian package etcd-server; ./run setup installs it)" >&2
    exit 1
fi
exec "$@"
