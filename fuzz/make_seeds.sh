#!/usr/bin/env bash
# Regenerates the committed seed corpora in fuzz/corpus/: the captured kube-apiserver 1.26
# answers (spec/fixtures) plus hand-made seeds. Run from anywhere; the output is
# deterministic (file names are the seed's purpose). Inputs libFuzzer finds later live in
# the build tree (build-fuzz/fuzz/corpus/), never here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../spec/fixtures/kube-apiserver-1.26"
kubeconfigs="$here/../spec/fixtures/kubeconfig"
corpus="$here/corpus"
rm -rf "$corpus"
mkdir -p "$corpus"/{bearer,jwt_exp,duration,tokenreview,sar,kubeconfig}

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# ---- bearer: 2 bytes little-endian max_token_bytes (ff ff = unlimited), then the value ----
bearer() { # name max_lo max_hi value
  printf "\\x$2\\x$3%s" "$4" >"$corpus/bearer/$1"
}
claims=$(tr -d ' \n' <"$fixtures/sa-token-claims-pod-bound.json")
jwt="eyJhbGciOiJSUzI1NiIsImtpZCI6Ik1rX2EifQ.$(printf '%s' "$claims" | b64url).c2lnbmF0dXJlLW5vdC1jaGVja2Vk"
bearer simple 00 10 "Bearer abc"
bearer lower-many-spaces 00 10 "bearer    abc"
bearer upper-padding-trailing ff ff $'BEARER abc==  \t '
bearer all-token-chars 00 10 "Bearer AZaz09-._~+/=="
bearer serviceaccount-jwt 00 10 "Bearer $jwt"
bearer too-long 03 00 "Bearer abcd"
bearer exact-limit 04 00 "Bearer abcd"
bearer zero-limit 00 00 "Bearer a"
bearer padding-inside 00 10 "Bearer ab=c"
bearer only-padding 00 10 "Bearer =="
bearer tab-separator 00 10 $'Bearer\tabc'
bearer no-token 00 10 "Bearer "
bearer scheme-only 00 10 "Bearer"
bearer two-tokens 00 10 "Bearer abc def"
bearer basic 00 10 "Basic dXNlcjpwYXNzd29yZA=="
bearer bearerx 00 10 "Bearerx abc"
bearer crlf 00 10 $'Bearer abc\r\nX-Injected: 1'
bearer non-ascii 00 10 $'Bearer ab\xc3\xa9'

# ---- jwt_exp: each input is tried as a token and as a JWT payload ----
jwt_seed() { printf '%s' "$2" >"$corpus/jwt_exp/$1"; }
cp "$fixtures/sa-token-claims-pod-bound.json" "$corpus/jwt_exp/sa-token-claims-pod-bound.json"
jwt_seed token-serviceaccount "$jwt"
jwt_seed token-padded "eyJhbGciOiJub25lIn0.$(printf '{"exp":170000000}' | base64 -w0 | tr '+/' '-_').c2ln"
jwt_seed token-two-segments "eyJhbGciOiJub25lIn0.eyJleHAiOjF9"
jwt_seed token-four-segments "a.eyJleHAiOjF9.b.c"
jwt_seed token-empty-payload "a..c"
jwt_seed exp-integer '{"exp":1795693987}'
jwt_seed exp-one '{"exp":1}'
jwt_seed exp-real '{"exp":1795693987.5}'
jwt_seed exp-below-one '{"exp":0.5}'
jwt_seed exp-zero '{"exp":0}'
jwt_seed exp-negative '{"exp":-1}'
jwt_seed exp-limit '{"exp":1000000000000000}'
jwt_seed exp-below-limit '{"exp":999999999999999}'
jwt_seed exp-real-limit '{"exp":1e15}'
jwt_seed exp-huge '{"exp":1e300}'
jwt_seed exp-int-overflow '{"exp":99999999999999999999}'
jwt_seed exp-string '{"exp":"1795693987"}'
jwt_seed exp-null '{"exp":null}'
jwt_seed exp-duplicate '{"exp":1,"exp":2}'
jwt_seed exp-nested '{"a":{"exp":1}}'
jwt_seed not-object '[{"exp":1}]'
jwt_seed trailing '{"exp":1} x'

# ---- duration: the text to parse ----
for d in 0 0s 500ms 30s 2m 1h30m 1.5s .5s 5.s 1h1m1s1ms1us1ns 0.001s 0.0005ms 90s 3600000ms \
         87600h 87600h1ms 87599h59m59.999s 315360000000ms 315360000001ms 1000000000000000ns \
         1000000000000001ns 0.000000000000000000001h 00 -1s +1s 1 1x 1.2.3s ms 1m2 5µs 1hh; do
  printf '%s' "$d" >"$corpus/duration/$(printf '%s' "$d" | tr -c 'A-Za-z0-9.+-' '_')"
done

# ---- tokenreview: answer bodies ----
for f in "$fixtures"/tokenreview-*.body "$fixtures"/throttled-429.body; do
  cp "$f" "$corpus/tokenreview/"
done
tr_seed() { printf '%s' "$2" >"$corpus/tokenreview/$1"; }
user='"user":{"username":"system:serviceaccount:team-a:webhook-sender","uid":"84aa73c3","groups":["system:serviceaccounts","system:authenticated"]'
tr_seed minimal '{"status":{"authenticated":true,"user":{"username":"u"}}}'
tr_seed extra-and-audiences "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,$user,\"extra\":{\"authentication.kubernetes.io/pod-name\":[\"hook-pod\"],\"k\":[]}},\"audiences\":[\"https://kubernetes.default.svc.cluster.local\",\"https://hooks.example.com\"]}}"
tr_seed audience-not-string "{\"status\":{\"authenticated\":true,$user},\"audiences\":[1,null,\"https://hooks.example.com\"]}}"
tr_seed control-in-username '{"status":{"authenticated":true,"user":{"username":"a\u0001b"}}}'
tr_seed del-in-group '{"status":{"authenticated":true,"user":{"username":"a","groups":["x\u007f"]}}}'
tr_seed c1-in-uid '{"status":{"authenticated":true,"user":{"username":"a","uid":"\u0085"}}}'
tr_seed crlf-in-extra '{"status":{"authenticated":true,"user":{"username":"a","extra":{"k\r\n":["v"]}}}}'
tr_seed empty-username '{"status":{"authenticated":true,"user":{"username":""}}}'
tr_seed uid-number '{"status":{"authenticated":true,"user":{"username":"a","uid":7}}}'
tr_seed groups-object '{"status":{"authenticated":true,"user":{"username":"a","groups":{}}}}'
tr_seed authenticated-string '{"status":{"authenticated":"true","user":{"username":"a"}}}'
tr_seed status-kind '{"kind":"Status","status":"Failure"}'
tr_seed duplicate-key '{"status":{"authenticated":false,"authenticated":true,"user":{"username":"a"}}}'
tr_seed error-with-controls '{"status":{"error":"bad\u0000\u001b[31m\r\ntoken\u0085"}}'
tr_seed trailing-garbage '{"status":{"authenticated":true,"user":{"username":"a"}}}}'
tr_seed groups-with-pipe '{"status":{"authenticated":true,"user":{"username":"a","groups":["a|b","","c"]}}}'
tr_seed not-serviceaccount '{"status":{"authenticated":true,"user":{"username":"system:serviceaccount:ns:name:extra"}}}'

# ---- sar: answer bodies (the first 3 bytes and the '"'-separated strings also make a question) ----
for f in "$fixtures"/sar-*.body "$fixtures"/throttled-429.body; do
  cp "$f" "$corpus/sar/"
done
sar_seed() { printf '%s' "$2" >"$corpus/sar/$1"; }
sar_seed allowed-minimal '{"status":{"allowed":true}}'
sar_seed allowed-and-denied '{"kind":"SubjectAccessReview","status":{"allowed":true,"denied":true,"reason":"denied wins"}}'
sar_seed denied-omitted '{"status":{}}'
sar_seed evaluation-error '{"status":{"allowed":false,"reason":"","evaluationError":"webhook: timeout"}}'
sar_seed reason-controls '{"status":{"allowed":false,"reason":"a\u0000b\u001b[0m\r\n\u007f\u0085\u009f\u00a0\u2028z"}}'
sar_seed allowed-string '{"status":{"allowed":"true"}}'
sar_seed reason-number '{"status":{"allowed":true,"reason":1}}'
sar_seed status-kind '{"kind":"Status","apiVersion":"v1","status":"Failure","code":403}'
sar_seed duplicate-allowed '{"status":{"allowed":false,"allowed":true}}'
long=$(printf 'é%.0s' $(seq 1 200))
sar_seed reason-long-multibyte "{\"status\":{\"allowed\":false,\"reason\":\"x$long\"}}"
emoji=$(printf '😀%.0s' $(seq 1 80))
sar_seed reason-long-4byte "{\"status\":{\"allowed\":false,\"reason\":\"$emoji\"}}"
# Questions: b0 bit0 non-resource, bit1 required fields forced; b1 attributes present;
# b2 groups | extra keys << 3 | values per key << 5; then '"'-separated strings.
printf '\x02\xff\x2asystem:serviceaccount:team-a:webhook-sender"uid-1"system:serviceaccounts"system:authenticated"authentication.kubernetes.io/pod-name"hook-pod"team-a"create"gateway.example.com"v1"webhooks"status"hook-1' \
  >"$corpus/sar/question-resource"
printf '\x03\x82\x00system:anonymous""get"/healthz' >"$corpus/sar/question-nonresource"
printf '\x02\x12\x30u""k"v"k"w"get"pods' >"$corpus/sar/question-duplicate-extra-key"
printf '\x02\x12\x01u\xc3\x28""g"get"pods' >"$corpus/sar/question-bad-utf8"
printf '\x02\x13\x00u"""get"pods' >"$corpus/sar/question-empty-namespace"
printf '\x00\x00\x00u' >"$corpus/sar/question-invalid"

# ---- kubeconfig: kubeconfig text ----
cp "$kubeconfigs"/*.yaml "$kubeconfigs"/*.json "$corpus/kubeconfig/"
kc_seed() { printf '%s' "$2" >"$corpus/kubeconfig/$1"; }
ca='LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCmZ1enoKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo='
key='LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCmZ1enoKLS0tLS1FTkQgUFJJVkFURSBLRVktLS0tLQo='
head='apiVersion: v1
kind: Config
current-context: c
contexts:
- name: c
  context: {cluster: k, user: u}
'
kc_seed minimal-token "${head}clusters:
- name: k
  cluster: {server: 'https://k.example:6443/', certificate-authority: ca.crt}
users:
- name: u
  user: {token: tgsecret-abc}
"
kc_seed ipv6-path-embedded "${head}clusters:
- name: k
  cluster:
    server: https://[fd00::1]:443/prefix//
    certificate-authority-data: $ca
users:
- name: u
  user:
    client-certificate-data: $ca
    client-key-data: $key
"
kc_seed anchors-aliases "${head}clusters:
- name: k
  cluster: &c {server: 'https://k', certificate-authority: /ca}
- name: k2
  cluster: *c
users:
- name: u
  user: {tokenFile: ./t}
"
kc_seed two-documents "${head}---
clusters: []
"
kc_seed user-in-url "${head}clusters:
- name: k
  cluster: {server: 'https://tgsecret:pw@k', certificate-authority: /ca}
users:
- name: u
  user: {token: x}
"
kc_seed query-in-url "${head}clusters:
- name: k
  cluster: {server: 'https://k/p?x=1#f', certificate-authority: /ca}
users:
- name: u
  user: {token: x}
"
kc_seed token-with-space "${head}clusters:
- name: k
  cluster: {server: 'https://k', certificate-authority: /ca}
users:
- name: u
  user: {token: \"tgsecret with space\"}
"
kc_seed token-and-tokenfile "${head}clusters:
- name: k
  cluster: {server: 'https://k', certificate-authority: /ca}
users:
- name: u
  user: {token: tgsecret-x, tokenFile: t}
"
kc_seed cert-without-key "${head}clusters:
- name: k
  cluster: {server: 'https://k', certificate-authority: /ca}
users:
- name: u
  user: {client-certificate: c.crt}
"
kc_seed duplicate-names "${head}clusters:
- name: k
  cluster: {server: 'https://a', certificate-authority: /ca}
- name: k
  cluster: {server: 'https://b', certificate-authority: /ca}
users:
- name: u
  user: {token: x}
"
kc_seed nul-in-context-name 'apiVersion: v1
current-context: "c\0d"
contexts:
- name: "c\0d"
  context: {cluster: k, user: u}
clusters:
- name: k
  cluster: {server: "https://k\0", certificate-authority: "/ca\0x"}
users:
- name: u
  user: {token: "x\0y"}
'
kc_seed json-flow '{"apiVersion":"v1","kind":"Config","current-context":"c","contexts":[{"name":"c","context":{"cluster":"k","user":"u"}}],"clusters":[{"name":"k","cluster":{"server":"https://k","certificate-authority-data":"'"$ca"'"}}],"users":[{"name":"u","user":{"token":"t"}}]}'
kc_seed deep-nesting "$(printf '[%.0s' $(seq 1 70))"
kc_seed tags-and-blocks "${head}clusters:
- name: !!str k
  cluster:
    server: >-
      https://k
    certificate-authority-data: |
      $ca
users:
- name: u
  user: {token: !!binary dGdzZWNyZXQ=}
"
kc_seed empty ''
kc_seed null-document '~'

echo "$(find "$corpus" -type f | wc -l) seeds, $(cat "$corpus"/*/* | wc -c) bytes"
