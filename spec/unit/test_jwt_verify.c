/* Unit tests of core/jwt_verify.c: keys made here (RSA 2048 and EC P-256), published as a
 * JWKS the way kube-apiserver's /openid/v1/jwks is, tokens signed here, and every verdict:
 * valid, forged, tampered, expired and not-yet-valid (with the 60 s leeway), wrong
 * audience, unknown kid, another issuer, not a JWT, unsigned and HMAC algorithms, and the
 * algorithms left to the API server. */
#include "jwt_verify.h"
#include "unit.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <stdlib.h>

#define ISSUER "https://kubernetes.default.svc.cluster.local"
#define NOW 1800000000

static void b64url(const unsigned char *in, size_t len, char *out, size_t cap)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < cap; i += 3) {
        unsigned v =
            (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        if (i + 1 < len) out[o++] = alphabet[v >> 6 & 63];
        if (i + 2 < len) out[o++] = alphabet[v & 63];
    }
    out[o] = 0;
}

static void b64url_str(const char *s, char *out, size_t cap)
{
    b64url((const unsigned char *)s, strlen(s), out, cap);
}

static void bn_b64url(EVP_PKEY *key, const char *param, size_t pad, char *out, size_t cap)
{
    BIGNUM *bn = NULL;
    EVP_PKEY_get_bn_param(key, param, &bn);
    unsigned char buf[600];
    int n = pad ? BN_bn2binpad(bn, buf, (int)pad) : BN_bn2bin(bn, buf);
    b64url(buf, (size_t)n, out, cap);
    BN_free(bn);
}

/* Signs header.payload (given as JSON) with key: RS256 or ES256. */
static char *sign(EVP_PKEY *key, bool ec, const char *header_json, const char *payload_json)
{
    char h[1024], p[2048];
    b64url_str(header_json, h, sizeof(h));
    b64url_str(payload_json, p, sizeof(p));
    size_t input_len = strlen(h) + 1 + strlen(p);
    char *token = malloc(input_len + 1024);
    sprintf(token, "%s.%s", h, p);
    unsigned char sig[512];
    size_t sig_len = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key);
    EVP_DigestSign(ctx, sig, &sig_len, (const unsigned char *)token, input_len);
    EVP_MD_CTX_free(ctx);
    if (ec) { /* DER -> r || s */
        const unsigned char *q = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)sig_len);
        unsigned char raw[64];
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
        ECDSA_SIG_free(es);
        memcpy(sig, raw, 64);
        sig_len = 64;
    }
    char s[1024];
    b64url(sig, sig_len, s, sizeof(s));
    sprintf(token + input_len, ".%s", s);
    return token;
}

static EVP_PKEY *rsa_key, *other_rsa_key, *ec_key;
static jwks *keys;

static char *payload(long exp, long nbf, const char *aud, const char *iss)
{
    static char buf[1024];
    snprintf(buf, sizeof(buf),
             "{\"iss\":\"%s\",\"sub\":\"system:serviceaccount:team-a:caller\",\"aud\":%s,\"exp\":%ld,\"nbf\":%ld,"
             "\"iat\":%ld}",
             iss, aud, exp, nbf, nbf);
    return buf;
}

static jwt_verdict check(const char *token, const char *const *aud, size_t n_aud)
{
    char reason[128] = "";
    jwt_verdict v = jwt_preverify(keys, token, strlen(token), NOW, aud, n_aud, reason, sizeof(reason));
    if (v == JWT_INVALID) CHECK(reason[0] != 0);
    return v;
}

static void setup_keys(void)
{
    rsa_key = EVP_RSA_gen(2048);
    other_rsa_key = EVP_RSA_gen(2048);
    ec_key = EVP_EC_gen("P-256");
    char n[600], e[16], x[64], y[64], jwks_json[2048];
    bn_b64url(rsa_key, OSSL_PKEY_PARAM_RSA_N, 0, n, sizeof(n));
    bn_b64url(rsa_key, OSSL_PKEY_PARAM_RSA_E, 0, e, sizeof(e));
    bn_b64url(ec_key, OSSL_PKEY_PARAM_EC_PUB_X, 32, x, sizeof(x));
    bn_b64url(ec_key, OSSL_PKEY_PARAM_EC_PUB_Y, 32, y, sizeof(y));
    snprintf(
        jwks_json, sizeof(jwks_json),
        "{\"keys\":[{\"use\":\"sig\",\"kty\":\"RSA\",\"kid\":\"rsa-1\",\"alg\":\"RS256\",\"n\":\"%s\",\"e\":\"%s\"},"
        "{\"use\":\"sig\",\"kty\":\"EC\",\"kid\":\"ec-1\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
        "{\"use\":\"enc\",\"kty\":\"RSA\",\"kid\":\"skipped\",\"n\":\"%s\",\"e\":\"%s\"},"
        "{\"kty\":\"oct\",\"kid\":\"secret\",\"k\":\"AAAA\"}]}",
        n, e, x, y, n, e);
    char err[256];
    keys = jwks_parse(ISSUER, jwks_json, strlen(jwks_json), err, sizeof(err));
}

static void test_jwks_parse(void)
{
    REQUIRE(keys != NULL);
    CHECK_EQ_INT(jwks_count(keys), 2); /* the "enc" key and the symmetric one are skipped */
    CHECK_STR(jwks_issuer(keys), ISSUER);
    char err[256];
    CHECK(jwks_parse(ISSUER, "{\"keys\":[]}", 11, err, sizeof(err)) == NULL);
    CHECK(jwks_parse(ISSUER, "[1,2]", 5, err, sizeof(err)) == NULL);
    CHECK(jwks_parse("", "{\"keys\":[]}", 11, err, sizeof(err)) == NULL);
    /* A 1024-bit RSA key is refused: nobody signs ServiceAccount tokens with one. */
    EVP_PKEY *small = EVP_RSA_gen(1024);
    char n[300], e[16], doc[600];
    bn_b64url(small, OSSL_PKEY_PARAM_RSA_N, 0, n, sizeof(n));
    bn_b64url(small, OSSL_PKEY_PARAM_RSA_E, 0, e, sizeof(e));
    snprintf(doc, sizeof(doc), "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"k\",\"n\":\"%s\",\"e\":\"%s\"}]}", n, e);
    CHECK(jwks_parse(ISSUER, doc, strlen(doc), err, sizeof(err)) == NULL);
    EVP_PKEY_free(small);
}

static void test_valid_tokens(void)
{
    char *rs =
        sign(rsa_key, false, "{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}", payload(NOW + 3600, NOW, "[\"api\"]", ISSUER));
    char *es =
        sign(ec_key, true, "{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", payload(NOW + 3600, NOW, "[\"api\"]", ISSUER));
    char *no_kid = sign(rsa_key, false, "{\"alg\":\"RS256\"}", payload(NOW + 3600, NOW, "\"api\"", ISSUER));
    CHECK_EQ_INT(check(rs, NULL, 0), JWT_VALID);
    CHECK_EQ_INT(check(es, NULL, 0), JWT_VALID);
    CHECK_EQ_INT(check(no_kid, NULL, 0), JWT_VALID); /* every key of the type is tried */
    const char *aud[] = {"other", "api"};
    CHECK_EQ_INT(check(rs, aud, 2), JWT_VALID);
    CHECK_EQ_INT(check(no_kid, aud, 2), JWT_VALID); /* aud as a single string */
    free(rs);
    free(es);
    free(no_kid);
}

static void test_refused_tokens(void)
{
    const char *hdr = "{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}";
    char *forged = sign(other_rsa_key, false, hdr, payload(NOW + 3600, NOW, "[\"api\"]", ISSUER));
    CHECK_EQ_INT(check(forged, NULL, 0), JWT_INVALID);
    /* The right signature over another payload: swap the payload segment. */
    char *good = sign(rsa_key, false, hdr, payload(NOW + 3600, NOW, "[\"api\"]", ISSUER));
    char *other = sign(rsa_key, false, hdr, payload(NOW + 7200, NOW, "[\"api\"]", ISSUER));
    char tampered[4096];
    const char *g1 = strchr(good, '.'), *g2 = strchr(g1 + 1, '.');
    const char *o1 = strchr(other, '.'), *o2 = strchr(o1 + 1, '.');
    snprintf(tampered, sizeof(tampered), "%.*s%.*s%s", (int)(g1 - good), good, (int)(o2 - o1), o1, g2);
    CHECK_EQ_INT(check(tampered, NULL, 0), JWT_INVALID);
    /* Expiry and not-before, with the API server's 60 s leeway. */
    char *expired = sign(rsa_key, false, hdr, payload(NOW - 61, NOW - 3600, "[\"api\"]", ISSUER));
    char *just_expired = sign(rsa_key, false, hdr, payload(NOW - 59, NOW - 3600, "[\"api\"]", ISSUER));
    char *future = sign(rsa_key, false, hdr, payload(NOW + 7200, NOW + 61, "[\"api\"]", ISSUER));
    CHECK_EQ_INT(check(expired, NULL, 0), JWT_INVALID);
    CHECK_EQ_INT(check(just_expired, NULL, 0), JWT_VALID);
    CHECK_EQ_INT(check(future, NULL, 0), JWT_INVALID);
    /* Audiences: only checked when some are asked for. */
    const char *aud[] = {"tokengate"};
    CHECK_EQ_INT(check(good, aud, 1), JWT_INVALID);
    /* The right kid with the wrong key type cannot verify. */
    char *kid_mismatch =
        sign(ec_key, true, "{\"alg\":\"ES256\",\"kid\":\"rsa-1\"}", payload(NOW + 3600, NOW, "[\"api\"]", ISSUER));
    CHECK_EQ_INT(check(kid_mismatch, NULL, 0), JWT_INVALID);
    /* Algorithms no public key verifies. */
    char h[256], p[1024], t[2048];
    b64url_str("{\"alg\":\"none\",\"kid\":\"rsa-1\"}", h, sizeof(h));
    b64url_str(payload(NOW + 3600, NOW, "[\"api\"]", ISSUER), p, sizeof(p));
    snprintf(t, sizeof(t), "%s.%s.", h, p);
    CHECK_EQ_INT(check(t, NULL, 0), JWT_INVALID);
    b64url_str("{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}", h, sizeof(h));
    snprintf(t, sizeof(t), "%s.%s.c2lnbmF0dXJl", h, p);
    CHECK_EQ_INT(check(t, NULL, 0), JWT_INVALID);
    free(forged);
    free(good);
    free(other);
    free(expired);
    free(just_expired);
    free(future);
    free(kid_mismatch);
}

static void test_undecided_tokens(void)
{
    char h[256], p[1024], t[2048];
    b64url_str(payload(NOW + 3600, NOW, "[\"api\"]", ISSUER), p, sizeof(p));
    /* An algorithm this module does not check: the API server decides. */
    b64url_str("{\"alg\":\"PS256\",\"kid\":\"rsa-1\"}", h, sizeof(h));
    snprintf(t, sizeof(t), "%s.%s.c2ln", h, p);
    CHECK_EQ_INT(check(t, NULL, 0), JWT_UNDECIDED);
    /* A key id not in the set (a rotation the gateway has not seen yet). */
    char *unknown =
        sign(rsa_key, false, "{\"alg\":\"RS256\",\"kid\":\"rsa-2\"}", payload(NOW + 3600, NOW, "[\"api\"]", ISSUER));
    CHECK_EQ_INT(check(unknown, NULL, 0), JWT_UNKNOWN_KID);
    /* Another issuer (an OIDC provider, a legacy Secret-based token). */
    char *oidc = sign(rsa_key, false, "{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}",
                      payload(NOW + 3600, NOW, "[\"api\"]", "https://accounts.example.com"));
    CHECK_EQ_INT(check(oidc, NULL, 0), JWT_OTHER_ISSUER);
    /* Not JWTs at all. */
    CHECK_EQ_INT(check("static-token-0123456789", NULL, 0), JWT_NOT_JWT);
    CHECK_EQ_INT(check("abcdef.0123456789abcdef", NULL, 0), JWT_NOT_JWT); /* a bootstrap token */
    CHECK_EQ_INT(check("a.b.c", NULL, 0), JWT_NOT_JWT);
    CHECK_EQ_INT(check("a.b.c.d", NULL, 0), JWT_NOT_JWT);
    CHECK_EQ_INT(check("...", NULL, 0), JWT_NOT_JWT);
    /* Without keys nothing is refused. */
    char reason[64];
    char *good = sign(rsa_key, false, "{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}",
                      payload(NOW - 3600, NOW - 7200, "[\"api\"]", ISSUER));
    CHECK_EQ_INT(jwt_preverify(NULL, good, strlen(good), NOW, NULL, 0, reason, sizeof(reason)), JWT_OTHER_ISSUER);
    free(unknown);
    free(oidc);
    free(good);
}

static void test_base64url(void)
{
    unsigned char out[16];
    CHECK_EQ_INT(base64url_decode("aGk", 3, out, sizeof(out)), 2);
    CHECK_MEM(out, "hi", 2);
    CHECK_EQ_INT(base64url_decode("aGk=", 4, out, sizeof(out)), 2);
    CHECK_EQ_INT(base64url_decode("-_-_", 4, out, sizeof(out)), 3);
    CHECK_EQ_INT(base64url_decode("+/+/", 4, out, sizeof(out)), -1); /* the standard alphabet is not base64url */
    CHECK_EQ_INT(base64url_decode("a", 1, out, sizeof(out)), -1);
    CHECK_EQ_INT(base64url_decode("aGVsbG8gd29ybGQ", 15, out, 4), -1); /* too small */
    CHECK_EQ_INT(base64url_decode("", 0, out, sizeof(out)), 0);
}

int main(void)
{
    setup_keys();
    RUN(test_jwks_parse);
    RUN(test_valid_tokens);
    RUN(test_refused_tokens);
    RUN(test_undecided_tokens);
    RUN(test_base64url);
    jwks_unref(keys);
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(other_rsa_key);
    EVP_PKEY_free(ec_key);
    return UNIT_EXIT();
}
