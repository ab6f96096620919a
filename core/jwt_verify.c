/* Local pre-verification of ServiceAccount JWTs: see jwt_verify.h. */
#include "jwt_verify.h"

#include "base64.h"

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest header and payload decoded (a ServiceAccount token's are a few hundred bytes). */
#define JWT_PART_MAX (16 * 1024)
#define KID_MAX 256

typedef enum { KEY_RSA, KEY_EC_P256, KEY_EC_P384, KEY_EC_P521 } key_type;

typedef struct jwk {
    key_type type;
    char kid[KID_MAX + 1]; /* "" when the JWKS gave none */
    EVP_PKEY *pkey;
} jwk;

struct jwks {
    atomic_int refs;
    char issuer[JWT_ISSUER_MAX + 1];
    size_t n;
    jwk keys[JWKS_MAX_KEYS];
};

long base64url_decode(const char *in, size_t in_len, unsigned char *out, size_t out_cap)
{
    return base64_decode(in, in_len, BASE64_URL, out, out_cap);
}

/* ---- key set ---------------------------------------------------------------------------- */

/* A JWK member (base64url) decoded into a BIGNUM, or NULL. */
static BIGNUM *member_bn(json_t *jwk_obj, const char *name, size_t *len_out)
{
    const char *text = json_string_value(json_object_get(jwk_obj, name));
    if (!text) return NULL;
    unsigned char buf[1024];
    long n = base64url_decode(text, strlen(text), buf, sizeof(buf));
    if (n <= 0) return NULL;
    if (len_out) *len_out = (size_t)n;
    return BN_bin2bn(buf, (int)n, NULL);
}

static EVP_PKEY *rsa_key(json_t *obj)
{
    BIGNUM *n = member_bn(obj, "n", NULL), *e = member_bn(obj, "e", NULL);
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    /* Below 2048 bits nobody signs ServiceAccount tokens; refusing such keys keeps the
     * verification cost of a flood bounded too. */
    if (!n || !e || !bld || BN_num_bits(n) < 2048 || BN_num_bits(n) > 8192) goto done;
    if (!OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        goto done;
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
done:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return pkey;
}

static EVP_PKEY *ec_key(json_t *obj, key_type *type)
{
    const char *crv = json_string_value(json_object_get(obj, "crv"));
    const char *group;
    size_t field;
    if (!crv) return NULL;
    if (strcmp(crv, "P-256") == 0)
        *type = KEY_EC_P256, group = "prime256v1", field = 32;
    else if (strcmp(crv, "P-384") == 0)
        *type = KEY_EC_P384, group = "secp384r1", field = 48;
    else if (strcmp(crv, "P-521") == 0)
        *type = KEY_EC_P521, group = "secp521r1", field = 66;
    else
        return NULL;
    unsigned char point[1 + 2 * 66], x[80], y[80];
    const char *xs = json_string_value(json_object_get(obj, "x"));
    const char *ys = json_string_value(json_object_get(obj, "y"));
    if (!xs || !ys) return NULL;
    long xl = base64url_decode(xs, strlen(xs), x, sizeof(x)), yl = base64url_decode(ys, strlen(ys), y, sizeof(y));
    if (xl <= 0 || yl <= 0 || (size_t)xl > field || (size_t)yl > field) return NULL;
    memset(point, 0, sizeof(point));
    point[0] = 0x04; /* uncompressed: X and Y, each left-padded to the field size */
    memcpy(point + 1 + field - (size_t)xl, x, (size_t)xl);
    memcpy(point + 1 + 2 * field - (size_t)yl, y, (size_t)yl);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * field),
        OSSL_PARAM_construct_end(),
    };
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

jwks *jwks_parse(const char *issuer, const char *json, size_t json_len, char *err, size_t err_cap)
{
    if (!issuer || !*issuer || strlen(issuer) > JWT_ISSUER_MAX) {
        snprintf(err, err_cap, "no usable issuer");
        return NULL;
    }
    if (json_len > JWKS_MAX_BYTES) {
        snprintf(err, err_cap, "JWKS larger than %d bytes", JWKS_MAX_BYTES);
        return NULL;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(json, json_len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *list = doc ? json_object_get(doc, "keys") : NULL;
    if (!json_is_array(list)) {
        snprintf(err, err_cap, "not a JWKS document");
        json_decref(doc);
        return NULL;
    }
    jwks *set = calloc(1, sizeof(*set));
    if (!set) {
        snprintf(err, err_cap, "out of memory");
        json_decref(doc);
        return NULL;
    }
    atomic_init(&set->refs, 1);
    snprintf(set->issuer, sizeof(set->issuer), "%s", issuer);
    size_t i;
    json_t *obj;
    json_array_foreach(list, i, obj) {
        if (set->n == JWKS_MAX_KEYS) break;
        const char *kty = json_string_value(json_object_get(obj, "kty"));
        const char *use = json_string_value(json_object_get(obj, "use"));
        const char *kid = json_string_value(json_object_get(obj, "kid"));
        if (!kty || (use && strcmp(use, "sig") != 0) || (kid && strlen(kid) > KID_MAX)) continue;
        jwk *k = &set->keys[set->n];
        if (strcmp(kty, "RSA") == 0) {
            k->type = KEY_RSA;
            k->pkey = rsa_key(obj);
        } else if (strcmp(kty, "EC") == 0) {
            k->pkey = ec_key(obj, &k->type);
        }
        if (!k->pkey) continue;
        snprintf(k->kid, sizeof(k->kid), "%s", kid ? kid : "");
        set->n++;
    }
    json_decref(doc);
    if (set->n == 0) {
        snprintf(err, err_cap, "no usable key in the JWKS (RSA of 2048+ bits, or EC P-256/384/521)");
        free(set);
        return NULL;
    }
    return set;
}

void jwks_ref(jwks *keys)
{
    atomic_fetch_add(&keys->refs, 1);
}

void jwks_unref(jwks *keys)
{
    if (!keys || atomic_fetch_sub(&keys->refs, 1) != 1) return;
    for (size_t i = 0; i < keys->n; i++) EVP_PKEY_free(keys->keys[i].pkey);
    free(keys);
}

const char *jwks_issuer(const jwks *keys)
{
    return keys->issuer;
}
size_t jwks_count(const jwks *keys)
{
    return keys->n;
}

/* ---- verification ----------------------------------------------------------------------- */

const char *jwt_verdict_name(jwt_verdict verdict)
{
    switch (verdict) {
    case JWT_NOT_JWT: return "not_jwt";
    case JWT_OTHER_ISSUER: return "other_issuer";
    case JWT_UNKNOWN_KID: return "unknown_kid";
    case JWT_UNDECIDED: return "undecided";
    case JWT_VALID: return "valid";
    case JWT_INVALID: return "invalid";
    default: return "unknown";
    }
}

/* Decodes one base64url segment and parses it as a JSON object, or NULL. */
static json_t *decode_json_part(const char *part, size_t len)
{
    if (len == 0 || len > JWT_PART_MAX * 4 / 3 + 4) return NULL;
    unsigned char *buf = malloc(JWT_PART_MAX);
    if (!buf) return NULL;
    long n = base64url_decode(part, len, buf, JWT_PART_MAX);
    json_t *doc = n > 0 ? json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL) : NULL;
    OPENSSL_cleanse(buf, n > 0 ? (size_t)n : 0);
    free(buf);
    if (doc && !json_is_object(doc)) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

static bool audience_named(json_t *aud, const char *const *audiences, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (json_is_string(aud) && strcmp(json_string_value(aud), audiences[i]) == 0) return true;
        size_t j;
        json_t *a;
        json_array_foreach(aud, j, a) {
            if (json_is_string(a) && strcmp(json_string_value(a), audiences[i]) == 0) return true;
        }
    }
    return false;
}

/* Verifies an RS256 / ES* signature of data with pkey. ES signatures are r || s (each
 * field bytes) and become DER for OpenSSL. */
static bool signature_ok(const jwk *key, const EVP_MD *md, size_t ec_field, const unsigned char *sig, size_t sig_len,
                         const char *data, size_t data_len)
{
    unsigned char der[256];
    const unsigned char *to_check = sig;
    size_t check_len = sig_len;
    if (key->type != KEY_RSA) {
        if (sig_len != 2 * ec_field) return false;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)ec_field, NULL), *s = BN_bin2bn(sig + ec_field, (int)ec_field, NULL);
        if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
            ECDSA_SIG_free(es);
            BN_free(r);
            BN_free(s);
            return false;
        }
        unsigned char *p = der;
        int n = i2d_ECDSA_SIG(es, NULL) <= (int)sizeof(der) ? i2d_ECDSA_SIG(es, &p) : -1;
        ECDSA_SIG_free(es);
        if (n <= 0) return false;
        to_check = der;
        check_len = (size_t)n;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, md, NULL, key->pkey) == 1 &&
              EVP_DigestVerify(ctx, to_check, check_len, (const unsigned char *)data, data_len) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

jwt_verdict jwt_preverify(const jwks *keys, const char *token, size_t token_len, int64_t now_s,
                          const char *const *audiences, size_t n_audiences, char *reason, size_t reason_cap)
{
    const char *dot1 = memchr(token, '.', token_len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', token_len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot1 || !dot2 || memchr(dot2 + 1, '.', token_len - (size_t)(dot2 + 1 - token))) return JWT_NOT_JWT;
    const char *sig_text = dot2 + 1;
    size_t sig_text_len = token_len - (size_t)(sig_text - token);
    json_t *header = decode_json_part(token, (size_t)(dot1 - token));
    json_t *payload = header ? decode_json_part(dot1 + 1, (size_t)(dot2 - dot1 - 1)) : NULL;
    jwt_verdict verdict = JWT_NOT_JWT;
    if (!header || !payload) goto done;

    const char *iss = json_string_value(json_object_get(payload, "iss"));
    verdict = JWT_OTHER_ISSUER;
    if (!keys || !iss || strcmp(iss, keys->issuer) != 0) goto done;

    const char *alg = json_string_value(json_object_get(header, "alg"));
    const json_t *kid_value = json_object_get(header, "kid");
    const char *kid = json_string_value(kid_value);
    const EVP_MD *md = NULL;
    key_type want = KEY_RSA;
    size_t ec_field = 0;
    if (!alg) {
        snprintf(reason, reason_cap, "JWT header has no alg");
        verdict = JWT_INVALID;
        goto done;
    }
    if (strcmp(alg, "RS256") == 0)
        md = EVP_sha256();
    else if (strcmp(alg, "ES256") == 0)
        md = EVP_sha256(), want = KEY_EC_P256, ec_field = 32;
    else if (strcmp(alg, "ES384") == 0)
        md = EVP_sha384(), want = KEY_EC_P384, ec_field = 48;
    else if (strcmp(alg, "ES512") == 0)
        md = EVP_sha512(), want = KEY_EC_P521, ec_field = 66;
    else if (strcmp(alg, "none") == 0 || strncmp(alg, "HS", 2) == 0) {
        /* Unsigned or signed with a shared secret: no public key ever verifies those. */
        snprintf(reason, reason_cap, "JWT algorithm is never used for ServiceAccount tokens");
        verdict = JWT_INVALID;
        goto done;
    } else {
        verdict = JWT_UNDECIDED; /* RS384, PS256, ...: the API server decides */
        goto done;
    }

    unsigned char sig[1024];
    long sig_len = base64url_decode(sig_text, sig_text_len, sig, sizeof(sig));
    if (sig_len <= 0) {
        snprintf(reason, reason_cap, "JWT signature is not base64url");
        verdict = JWT_INVALID;
        goto done;
    }
    const char *signed_data = token;
    size_t signed_len = (size_t)(dot2 - token);
    bool candidate = false, verified = false;
    for (size_t i = 0; i < keys->n && !verified; i++) {
        const jwk *k = &keys->keys[i];
        if (kid_value && (!kid || strcmp(kid, k->kid) != 0)) continue;
        candidate = true;
        if (k->type != want) continue; /* the right kid with another key type: cannot verify */
        verified = signature_ok(k, md, ec_field, sig, (size_t)sig_len, signed_data, signed_len);
    }
    if (!candidate) {
        verdict = JWT_UNKNOWN_KID;
        goto done;
    }
    if (!verified) {
        snprintf(reason, reason_cap, "JWT signature does not verify with the issuer's key");
        verdict = JWT_INVALID;
        goto done;
    }
    json_t *exp = json_object_get(payload, "exp"), *nbf = json_object_get(payload, "nbf");
    if (exp && (!json_is_number(exp) || json_number_value(exp) + JWT_LEEWAY_S < (double)now_s)) {
        snprintf(reason, reason_cap, "JWT has expired");
        verdict = JWT_INVALID;
        goto done;
    }
    if (nbf && (!json_is_number(nbf) || json_number_value(nbf) - JWT_LEEWAY_S > (double)now_s)) {
        snprintf(reason, reason_cap, "JWT is not valid yet");
        verdict = JWT_INVALID;
        goto done;
    }
    if (n_audiences && !audience_named(json_object_get(payload, "aud"), audiences, n_audiences)) {
        snprintf(reason, reason_cap, "JWT audiences do not include the requested ones");
        verdict = JWT_INVALID;
        goto done;
    }
    verdict = JWT_VALID;
done:
    json_decref(header);
    json_decref(payload);
    return verdict;
}
