#!/bin/sh
# gen_certs.sh DIR - test PKI for the fake API server and the specs, made with the
# openssl CLI (EC P-256: fast to make, accepted everywhere).
#
#   ca.crt/.key                  test CA
#   server.crt/.key              signed by ca; SAN DNS:localhost, IP:127.0.0.1, IP:::1
#   client.crt/.key              signed by ca; clientAuth (kubeconfig client-cert tests)
#   other-ca.crt/.key            an unrelated CA
#   wrong-server.crt/.key        signed by other-ca, same SANs ("certificate from the wrong CA")
#
# Idempotent: when every file is already there it does nothing. Otherwise it makes a fresh
# set in a scratch directory and moves it in, so an interrupted run never leaves a
# mismatched mix. Quiet unless something fails; exits non-zero on failure.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
files="ca.crt ca.key server.crt server.key client.crt client.key
       other-ca.crt other-ca.key wrong-server.crt wrong-server.key"

complete=yes
for f in $files; do
    [ -s "$dir/$f" ] || complete=no
done
[ "$complete" = yes ] && exit 0

mkdir -p "$dir"
work=$(mktemp -d "$dir/.gen_certs.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$work/openssl.log

# A minimal config so that the system openssl.cnf cannot add or clash with extensions.
cat >"$work/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF

run() {
    if ! "$@" >>"$log" 2>&1; then
        echo "gen_certs.sh: failed: $*" >&2
        cat "$log" >&2
        exit 1
    fi
}

newkey() { # NAME
    run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$1.key"
}

make_ca() { # NAME SUBJECT
    newkey "$1"
    run openssl req -config "$work/openssl.cnf" -new -x509 -sha256 -days 3650 \
        -key "$work/$1.key" -subj "$2" -extensions ca_ext -out "$work/$1.crt"
}

make_leaf() { # NAME CA SUBJECT EXTENSIONS
    newkey "$1"
    run openssl req -config "$work/openssl.cnf" -new -sha256 -key "$work/$1.key" \
        -subj "$3" -out "$work/$1.csr"
    run openssl x509 -req -sha256 -days 3650 -in "$work/$1.csr" \
        -CA "$work/$2.crt" -CAkey "$work/$2.key" -CAcreateserial \
        -extfile "$work/openssl.cnf" -extensions "$4" -out "$work/$1.crt"
}

make_ca ca "/CN=tokengate test CA"
make_ca other-ca "/CN=tokengate other test CA"
make_leaf server ca "/CN=localhost" server_ext
make_leaf wrong-server other-ca "/CN=localhost" server_ext
make_leaf client ca "/CN=tokengate-test-client/O=system:authenticated" client_ext

chmod 600 "$work"/*.key
for f in $files; do
    mv -f "$work/$f" "$dir/$f"
done
