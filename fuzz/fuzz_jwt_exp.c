/* fuzz_jwt_exp: jwt_read_exp (core/bearer.h), the unverified read of a JWT's exp claim
 * that bounds a positive cache TTL.
 *
 * Each input is used twice:
 *  1. as the token text itself (an exact-size heap copy, not NUL-terminated);
 *  2. as the JSON payload of a token built here: "<header>." base64url(input) ".<sig>",
 *     once unpadded and once '='-padded.
 *
 * Invariants (abort on violation):
 *  - success (0) implies 0 <= exp < 1e15, so the caller's (exp - now) * 1000 cannot
 *    overflow, and the token has exactly two dots (three segments). The header promises
 *    exp > 0, but a real exp in (0, 1) is truncated to 0; that is tolerated unless
 *    TOKENGATE_FUZZ_STRICT is defined (see fuzz/README.md);
 *  - failure leaves *exp_out untouched;
 *  - for 2., the result agrees with jansson's own reading of the payload: an object whose
 *    "exp" is an integer in (0, 1e15) → 0 and that value; a real in (0, 1e15) → 0 and the
 *    value truncated; anything else, an empty payload or one above 8192 bytes → -1; the
 *    padded and unpadded encodings give the same answer. */
#include "bearer.h"
#include "fuzz_common.h"

#include <jansson.h>

#define PAYLOAD_MAX 8192 /* JWT_PAYLOAD_MAX in core/bearer.c */
#define EXP_LIMIT 1000000000000000LL
#ifdef TOKENGATE_FUZZ_STRICT
#define EXP_MIN 1 /* the header: exp in (0, 1e15) */
#else
#define EXP_MIN 0 /* what callers need: no overflow */
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_object_seed(1); /* reproducible hashing */
    return 0;
}

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Appends base64url(data) to out; returns the new length. */
static size_t encode(char *out, size_t n, const uint8_t *data, size_t size, bool pad)
{
    size_t i = 0;
    for (; i + 3 <= size; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        out[n++] = b64url[v >> 18];
        out[n++] = b64url[(v >> 12) & 63];
        out[n++] = b64url[(v >> 6) & 63];
        out[n++] = b64url[v & 63];
    }
    if (size - i == 1) {
        uint32_t v = (uint32_t)data[i] << 16;
        out[n++] = b64url[v >> 18];
        out[n++] = b64url[(v >> 12) & 63];
        if (pad) out[n++] = '=', out[n++] = '=';
    } else if (size - i == 2) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
        out[n++] = b64url[v >> 18];
        out[n++] = b64url[(v >> 12) & 63];
        out[n++] = b64url[(v >> 6) & 63];
        if (pad) out[n++] = '=';
    }
    return n;
}

/* What jwt_read_exp must answer for this payload, by the header's contract. */
static int expected(const uint8_t *data, size_t size, int64_t *exp)
{
    if (size == 0 || size > PAYLOAD_MAX) return -1;
    json_error_t err;
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &err);
    int rc = -1;
    json_t *e = json_is_object(root) ? json_object_get(root, "exp") : NULL;
    if (json_is_integer(e) && json_integer_value(e) > 0 && json_integer_value(e) < EXP_LIMIT) {
        *exp = (int64_t)json_integer_value(e);
        rc = 0;
    } else if (json_is_real(e) && json_real_value(e) >= EXP_MIN && json_real_value(e) < 1e15) {
        *exp = (int64_t)json_real_value(e);
        rc = 0;
    }
    json_decref(root);
    return rc;
}

static size_t count_dots(const char *s, size_t n)
{
    size_t dots = 0;
    for (size_t i = 0; i < n; i++) dots += s[i] == '.';
    return dots;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* 1. The input as a token. */
    char *raw = fuzz_copy_exact(data, size);
    int64_t exp = -42;
    if (jwt_read_exp(raw, size, &exp) == 0) {
        FUZZ_CHECK(exp >= EXP_MIN && exp < EXP_LIMIT);
        FUZZ_CHECK(count_dots(raw, size) == 2);
    } else {
        FUZZ_CHECK(exp == -42);
    }
    free(raw);

    /* 2. The input as the payload of a well-formed token. */
    static const char head[] = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZ1enoifQ.";
    static const char sig[] = ".c2lnbmF0dXJl";
    int64_t want = 0;
    int want_rc = expected(data, size, &want);
    for (int pad = 0; pad < 2; pad++) {
        size_t cap = sizeof(head) + (size + 2) / 3 * 4 + sizeof(sig);
        char *token = fuzz_xmalloc(cap);
        size_t n = sizeof(head) - 1;
        memcpy(token, head, n);
        n = encode(token, n, data, size, pad);
        memcpy(token + n, sig, sizeof(sig) - 1);
        n += sizeof(sig) - 1;
        /* Shrink to the exact length so that ASan sees any over-read. */
        char *exact = fuzz_copy_exact((const uint8_t *)token, n);
        free(token);
        int64_t got = -42;
        int rc = jwt_read_exp(exact, n, &got);
        FUZZ_CHECK(rc == want_rc);
        if (rc == 0) {
            FUZZ_CHECK(got == want);
            FUZZ_CHECK(got >= EXP_MIN && got < EXP_LIMIT);
        } else {
            FUZZ_CHECK(got == -42);
        }
        free(exact);
    }
    return 0;
}
