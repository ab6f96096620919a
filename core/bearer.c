/* bearer.c owns the parsing of untrusted token text: the Authorization header and the
 * unverified JWT payload. Every length is bounded before anything is copied. */
#include "bearer.h"

#include "base64.h"

#include <jansson.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

/* A JWT payload larger than this is not read (the token limit bounds it anyway). */
#define JWT_PAYLOAD_MAX 8192

/* RFC 6750 b64token characters (ALPHA / DIGIT / "-._~+/"; '=' only as trailing
 * padding), one table lookup per byte: a ServiceAccount token is about a kilobyte and is
 * scanned on every request. spec/unit/test_bearer.c checks the table against this
 * definition for every byte. */
// clang-format off: one row of 16 bytes a line
static const unsigned char b64token_char[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, /* 0x20 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, /* 0x30 */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, /* 0x50 */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, /* 0x70 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x80 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x90 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xa0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xb0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xc0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xd0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xe0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xf0 */
};
// clang-format on

bearer_status bearer_extract(const char *header_value, size_t max_token_bytes, const char **token, size_t *token_len)
{
    if (!header_value) return BEARER_MISSING;
    const char *p = header_value;
    if (strncasecmp(p, "Bearer", 6) != 0) return BEARER_MALFORMED;
    p += 6;
    if (*p != ' ') return BEARER_MALFORMED;
    while (*p == ' ') p++;

    const char *start = p;
    while (b64token_char[(unsigned char)*p]) p++;
    if (p == start) return BEARER_MALFORMED;
    while (*p == '=') p++;
    size_t len = (size_t)(p - start);
    while (*p == ' ' || *p == '\t') p++;
    if (*p != '\0') return BEARER_MALFORMED;
    if (len > max_token_bytes) return BEARER_TOO_LONG;
    *token = start;
    *token_len = len;
    return BEARER_OK;
}

const char *bearer_status_reason(bearer_status status)
{
    switch (status) {
    case BEARER_OK: return "ok";
    case BEARER_MISSING: return "missing bearer token";
    case BEARER_MALFORMED: return "malformed bearer token";
    case BEARER_TOO_LONG: return "bearer token too long";
    }
    return "invalid bearer token";
}

int jwt_read_exp(const char *token, size_t token_len, int64_t *exp_out)
{
    const char *dot1 = memchr(token, '.', token_len);
    if (!dot1) return -1;
    const char *payload = dot1 + 1;
    size_t rest = token_len - (size_t)(payload - token);
    const char *dot2 = memchr(payload, '.', rest);
    if (!dot2 || memchr(dot2 + 1, '.', token_len - (size_t)(dot2 + 1 - token))) return -1;
    size_t payload_len = (size_t)(dot2 - payload);
    if (payload_len == 0 || payload_len > JWT_PAYLOAD_MAX * 4 / 3 + 4) return -1;

    unsigned char decoded[JWT_PAYLOAD_MAX];
    long decoded_len = base64_decode(payload, payload_len, BASE64_URL, decoded, sizeof(decoded));
    if (decoded_len <= 0) return -1;

    json_error_t error;
    json_t *claims = json_loadb((const char *)decoded, (size_t)decoded_len, JSON_REJECT_DUPLICATES, &error);
    int rc = -1;
    if (!claims || !json_is_object(claims)) goto done;
    json_t *exp = json_object_get(claims, "exp");
    /* Bounded like the real branch: later arithmetic (ms, differences) must not overflow. */
    if (json_is_integer(exp)) {
        json_int_t v = json_integer_value(exp);
        if (v > 0 && v < 1000000000000000LL) {
            *exp_out = (int64_t)v;
            rc = 0;
        }
    } else if (json_is_real(exp)) {
        double v = json_real_value(exp);
        if (v >= 1 && v < 1e15) { /* (0, 1e15) as whole seconds: 0.5 would truncate to 0 */
            *exp_out = (int64_t)v;
            rc = 0;
        }
    }
done:
    json_decref(claims);
    return rc;
}
