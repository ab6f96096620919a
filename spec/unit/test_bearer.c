/* Unit tests: Authorization header parsing and the unverified JWT exp claim (core/bearer.h). */
#include "bearer.h"
#include "unit.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef TOKENGATE_TESTDATA
#error "TOKENGATE_TESTDATA must point at spec/fixtures/kube-apiserver-1.26"
#endif

#define MAX_TOKEN 16384

/* Runs bearer_extract with the default limit and returns the status. */
static bearer_status extract(const char *header)
{
    const char *token = NULL;
    size_t len = 0;
    return bearer_extract(header, MAX_TOKEN, &token, &len);
}

/* Expects BEARER_OK and the token at header + offset with the given text. */
static void expect_token(const char *header, size_t offset, const char *expected)
{
    const char *token = NULL;
    size_t len = 0;
    bearer_status st = bearer_extract(header, MAX_TOKEN, &token, &len);
    CHECK_EQ_INT(st, BEARER_OK);
    if (st != BEARER_OK) {
        fprintf(stderr, "    header: \"%s\"\n", header);
        return;
    }
    CHECK(token == header + offset); /* points into the input, no copy */
    CHECK_STRN(token, len, expected);
}

static void test_extract_ok(void)
{
    expect_token("Bearer abc", 7, "abc");
    expect_token("bearer abc", 7, "abc");
    expect_token("BEARER abc", 7, "abc");
    expect_token("bEaReR abc", 7, "abc");
    expect_token("Bearer    abc", 10, "abc");
    expect_token("Bearer abc   ", 7, "abc");
    expect_token("Bearer abc\t", 7, "abc");
    expect_token("Bearer abc \t \t", 7, "abc");
    expect_token("Bearer abc==", 7, "abc==");
    expect_token("Bearer abc=", 7, "abc=");
    expect_token("Bearer abc== \t", 7, "abc==");
    expect_token("Bearer A-._~+/z09", 7, "A-._~+/z09");
    expect_token("Bearer ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/", 7,
                 "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/");
    expect_token("Bearer x", 7, "x");
    expect_token("Bearer eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln", 7, "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln");
}

/* Every byte: a token "a<c>b" is accepted exactly when c is a b64token character. */
static void test_extract_every_byte(void)
{
    for (int c = 1; c < 256; c++) {
        char header[16] = "Bearer a";
        header[8] = (char)c;
        header[9] = 'b';
        header[10] = '\0';
        bool b64 = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   (c != 0 && strchr("-._~+/", c) != NULL);
        CHECK((extract(header) == BEARER_OK) == b64);
    }
}

static void test_extract_rejects(void)
{
    const char *token = (const char *)1;
    size_t len = 4242;
    CHECK_EQ_INT(bearer_extract(NULL, MAX_TOKEN, &token, &len), BEARER_MISSING);
    CHECK(token == (const char *)1); /* outputs untouched on failure */
    CHECK_EQ_INT(len, 4242);
    CHECK_EQ_INT(extract(NULL), BEARER_MISSING);
    CHECK_EQ_INT(extract(""), BEARER_MALFORMED);

    static const char *const malformed[] = {
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Bearer \t",
        "Basic abc",
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearerabc",
        "Bearer\tabc",
        "Bear abc",
        "Bearer a b",
        "Bearer a,b",
        "Bearer a\"b",
        "Bearer \"abc\"",
        "Bearer a;b",
        "Bearer a:b",
        "Bearer a\\b",
        "Bearer a%20b",
        "Bearer ab=c",
        "Bearer =abc",
        "Bearer ==",
        "Bearer abc=d=",
        "Bearer a\x01"
        "b",
        "Bearer a\x7f"
        "b",
        "Bearer abc\x1b",
        "Bearer \x01",
        "Bearer caf\xc3\xa9",
        "Bearer \xc3\xa9t\xc3\xa9",
        "Bearer abc\r\n",
        "Bearer abc\rdef",
        "Bearer abc\ndef",
        "Bearer abc\r\nX-Remote-User: admin",
        "Bearer abc\n",
        "Bearer abc\v",
        "Bearer abc\f",
        " Bearer abc",
        "Bearer abc, Basic xyz",
    };
    for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
        token = NULL;
        bearer_status st = bearer_extract(malformed[i], MAX_TOKEN, &token, &len);
        CHECK_EQ_INT(st, BEARER_MALFORMED);
        if (st != BEARER_MALFORMED) fprintf(stderr, "    case %zu accepted\n", i);
        CHECK(token == NULL);
    }
}

static void test_extract_length_limit(void)
{
    enum { MAX = 64 };
    char header[7 + MAX + 2 + 1];
    memcpy(header, "Bearer ", 7);
    memset(header + 7, 'a', MAX);
    header[7 + MAX] = '\0';
    const char *token = NULL;
    size_t len = 0;
    CHECK_EQ_INT(bearer_extract(header, MAX, &token, &len), BEARER_OK);
    CHECK_EQ_INT(len, MAX);
    CHECK(token == header + 7);

    header[7 + MAX] = 'a';
    header[7 + MAX + 1] = '\0';
    token = NULL;
    CHECK_EQ_INT(bearer_extract(header, MAX, &token, &len), BEARER_TOO_LONG);
    CHECK(token == NULL);
    CHECK_EQ_INT(bearer_extract(header, MAX + 1, &token, &len), BEARER_OK);
    CHECK_EQ_INT(len, MAX + 1);

    /* Padding counts towards the length; trailing whitespace does not. */
    CHECK_EQ_INT(bearer_extract("Bearer abc==", 5, &token, &len), BEARER_OK);
    CHECK_EQ_INT(len, 5);
    CHECK_EQ_INT(bearer_extract("Bearer abc==", 4, &token, &len), BEARER_TOO_LONG);
    CHECK_EQ_INT(bearer_extract("Bearer abc     ", 3, &token, &len), BEARER_OK);
    CHECK_EQ_INT(len, 3);

    /* A very long header with the default limit. */
    size_t big = 1 << 20;
    char *huge = malloc(7 + big + 1);
    REQUIRE(huge != NULL);
    memcpy(huge, "Bearer ", 7);
    memset(huge + 7, 'Z', big);
    huge[7 + big] = '\0';
    CHECK_EQ_INT(bearer_extract(huge, MAX_TOKEN, &token, &len), BEARER_TOO_LONG);
    huge[7 + MAX_TOKEN] = '\0';
    CHECK_EQ_INT(bearer_extract(huge, MAX_TOKEN, &token, &len), BEARER_OK);
    CHECK_EQ_INT(len, MAX_TOKEN);
    free(huge);
}

static void test_status_reason(void)
{
    const bearer_status all[] = {BEARER_OK, BEARER_MISSING, BEARER_MALFORMED, BEARER_TOO_LONG};
    for (size_t i = 0; i < 4; i++) {
        const char *r = bearer_status_reason(all[i]);
        CHECK(r != NULL && r[0] != '\0');
        for (size_t j = 0; j < i; j++) CHECK(r && strcmp(r, bearer_status_reason(all[j])) != 0);
    }
}

/* ---- JWTs ---- */

/* base64url without padding of n bytes into out (NUL-terminated); returns the length. */
static size_t b64url(const void *data, size_t n, char *out)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *in = data;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        out[o++] = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

#define JWT_BUF 32768
static const char jwt_header[] = "{\"alg\":\"RS256\",\"kid\":\"x9Kq\"}";

/* header.payload.signature with a fake signature; returns a static buffer. */
static const char *make_jwt(const char *payload_json)
{
    static char jwt[JWT_BUF];
    size_t n = b64url(jwt_header, strlen(jwt_header), jwt);
    jwt[n++] = '.';
    n += b64url(payload_json, strlen(payload_json), jwt + n);
    jwt[n++] = '.';
    memcpy(jwt + n, "ZmFrZS1zaWduYXR1cmU", 20); /* includes the NUL */
    return jwt;
}

/* jwt_read_exp on a NUL-terminated token; returns the exp or a sentinel for failure. */
#define NO_EXP INT64_MIN
static int64_t exp_of(const char *token)
{
    int64_t exp = 424242;
    int rc = jwt_read_exp(token, strlen(token), &exp);
    if (rc != 0) {
        if (rc != -1) fprintf(stderr, "    jwt_read_exp returned %d (not 0 or -1)\n", rc);
        if (exp != 424242) fprintf(stderr, "    jwt_read_exp wrote exp on failure\n");
        return rc == -1 && exp == 424242 ? NO_EXP : NO_EXP + 1;
    }
    return exp;
}

static void test_jwt_exp_ok(void)
{
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1795693987}")), 1795693987);
    CHECK_EQ_INT(exp_of(make_jwt("{\"iss\":\"x\",\"exp\":1700000000,\"aud\":[\"a\"]}")), 1700000000);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1.7e9}")), 1700000000);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1700000000.75}")), 1700000000);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":253402300799}")), 253402300799LL); /* 9999-12-31 */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":4102444800}")), 4102444800LL);     /* past 2^32 */
    CHECK_EQ_INT(exp_of(make_jwt(" { \"exp\" : 12 } ")), 12);
    /* Payload lengths 1, 2 and 0 mod 3 give every unpadded tail length. */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1}")), 1);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":12}")), 12);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":123}")), 123);

    /* '=' padding on the payload segment is tolerated. */
    const char *payload = "{\"exp\":10}"; /* 10 bytes: two '=' in padded base64 */
    char jwt[256];
    size_t n = b64url(jwt_header, strlen(jwt_header), jwt);
    jwt[n++] = '.';
    n += b64url(payload, strlen(payload), jwt + n);
    memcpy(jwt + n, "==.c2ln", 8);
    CHECK_EQ_INT(exp_of(jwt), 10);

    /* token_len is honoured: nothing after it is read. */
    const char *t = make_jwt("{\"exp\":77}");
    char copy[256];
    size_t tl = strlen(t);
    memcpy(copy, t, tl);
    memcpy(copy + tl, ".extra.segments", 16);
    int64_t exp = 0;
    CHECK_EQ_INT(jwt_read_exp(copy, tl, &exp), 0);
    CHECK_EQ_INT(exp, 77);
}

static void test_jwt_exp_rejects(void)
{
    CHECK_EQ_INT(exp_of(make_jwt("{\"iat\":1700000000}")), NO_EXP);     /* missing */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":\"1700000000\"}")), NO_EXP); /* string */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":null}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":true}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":[1700000000]}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":{\"v\":1}}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"nested\":{\"exp\":1700000000}}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("not json")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("[{\"exp\":1700000000}]")), NO_EXP); /* array */
    CHECK_EQ_INT(exp_of(make_jwt("1700000000")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("\"exp\"")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1700000000")), NO_EXP);   /* truncated */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1700000000}x")), NO_EXP); /* trailing garbage */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1,\"exp\":2}")), NO_EXP); /* duplicate key */
    CHECK_EQ_INT(exp_of(make_jwt("")), NO_EXP);                      /* empty payload */

    char seg_h[64], seg_p[64];
    b64url(jwt_header, strlen(jwt_header), seg_h);
    b64url("{\"exp\":1700000000}", 18, seg_p);
    char buf[512];
    snprintf(buf, sizeof(buf), "%s.%s", seg_h, seg_p); /* two segments */
    CHECK_EQ_INT(exp_of(buf), NO_EXP);
    snprintf(buf, sizeof(buf), "%s.%s.c2ln.c2ln", seg_h, seg_p); /* four segments */
    CHECK_EQ_INT(exp_of(buf), NO_EXP);
    snprintf(buf, sizeof(buf), "%s", seg_p); /* one segment */
    CHECK_EQ_INT(exp_of(buf), NO_EXP);
    snprintf(buf, sizeof(buf), "%s..c2ln", seg_h); /* empty payload segment */
    CHECK_EQ_INT(exp_of(buf), NO_EXP);
    CHECK_EQ_INT(exp_of(".."), NO_EXP);
    CHECK_EQ_INT(exp_of(""), NO_EXP);
    CHECK_EQ_INT(exp_of("opaque-token-without-dots"), NO_EXP);

    /* Bad base64url characters in the payload segment. */
    static const char bad[] = {'+', '/', '*', '!', ' ', '=', '~'};
    for (size_t i = 0; i < sizeof(bad); i++) {
        char p[64];
        memcpy(p, seg_p, strlen(seg_p) + 1);
        p[4] = bad[i];
        snprintf(buf, sizeof(buf), "%s.%s.c2ln", seg_h, p);
        CHECK_EQ_INT(exp_of(buf), NO_EXP);
    }
    /* Standard base64's '+' and '/' are not base64url's '-' and '_': a payload whose
     * encoding has '-' or '_' stops decoding when they are swapped. */
    const char *claims = "{\"exp\":1700000000,\"x\":\"?\?>>?\?\"}";
    char seg[128];
    b64url(claims, strlen(claims), seg);
    snprintf(buf, sizeof(buf), "%s.%s.c2ln", seg_h, seg);
    CHECK_EQ_INT(exp_of(buf), 1700000000);
    for (int which = 0; which < 2; which++) {
        char swapped[128];
        memcpy(swapped, seg, strlen(seg) + 1);
        char *at = strchr(swapped, which ? '-' : '_');
        CHECK(at != NULL);
        if (!at) continue;
        *at = which ? '+' : '/';
        snprintf(buf, sizeof(buf), "%s.%s.c2ln", seg_h, swapped);
        CHECK_EQ_INT(exp_of(buf), NO_EXP);
    }

    /* A base64 length that cannot be (4n + 1). */
    snprintf(buf, sizeof(buf), "%s.%sA.c2ln", seg_h, seg_p);
    if (strlen(seg_p) % 4 == 0) CHECK_EQ_INT(exp_of(buf), NO_EXP);
}

/* The caller turns exp into a TTL: (exp - now) * 1000 in int64 milliseconds
 * (core/server.c positive_ttl_ms), before the token has been reviewed. An exp that makes
 * that overflow must not come back; jwt_read_exp already bounds a real-valued exp to
 * (0, 1e15), and an integer exp needs the same bound. */
static void test_jwt_exp_hostile_values(void)
{
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":9223372036854775807}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":-9223372036854775808}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1000000000000000}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":-9000000000000000}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":9223372036854775808}")), NO_EXP); /* not an int64 */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1e15}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":1e300}")), NO_EXP);
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":-1.5e9}")), NO_EXP);
    /* Found by fuzz_jwt_exp: 0.5 truncated to exp 0, outside (0, 1e15). */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":0.5}")), NO_EXP);
    /* The largest plausible values still work. */
    CHECK_EQ_INT(exp_of(make_jwt("{\"exp\":999999999999999}")), 999999999999999LL);
}

static void test_jwt_big_payload(void)
{
    /* A payload far larger than any real token's: -1 (bounded work), no overflow. */
    size_t n = 20000;
    char *json = malloc(n + 64);
    REQUIRE(json != NULL);
    strcpy(json, "{\"exp\":1,\"pad\":\"");
    size_t len = strlen(json);
    memset(json + len, 'x', n);
    strcpy(json + len + n, "\"}");
    size_t cap = 2 * n + 256;
    char *jwt = malloc(cap);
    if (!jwt) {
        free(json);
        REQUIRE(jwt != NULL);
    }
    size_t o = b64url(jwt_header, strlen(jwt_header), jwt);
    jwt[o++] = '.';
    o += b64url(json, strlen(json), jwt + o);
    memcpy(jwt + o, ".c2ln", 6);
    CHECK_EQ_INT(exp_of(jwt), NO_EXP);

    /* A 6 KB payload (a JWT with many claims) still works. */
    memset(json + len, 'y', 6000);
    strcpy(json + len + 6000, "\"}");
    o = b64url(jwt_header, strlen(jwt_header), jwt);
    jwt[o++] = '.';
    o += b64url(json, strlen(json), jwt + o);
    memcpy(jwt + o, ".c2ln", 6);
    CHECK_EQ_INT(exp_of(jwt), 1);
    free(jwt);
    free(json);
}

static void test_jwt_real_claims(void)
{
    const char *path = TOKENGATE_TESTDATA "/sa-token-claims-pod-bound.json";
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) {
        fprintf(stderr, "    cannot open %s\n", path);
        return;
    }
    static char claims[8192];
    size_t n = fread(claims, 1, sizeof(claims) - 1, f);
    fclose(f);
    claims[n] = '\0';
    CHECK(n > 100 && n < sizeof(claims) - 1);
    CHECK_EQ_INT(exp_of(make_jwt(claims)), 1795693987);
}

int main(void)
{
    RUN(test_extract_ok);
    RUN(test_extract_every_byte);
    RUN(test_extract_rejects);
    RUN(test_extract_length_limit);
    RUN(test_status_reason);
    RUN(test_jwt_exp_ok);
    RUN(test_jwt_exp_rejects);
    RUN(test_jwt_exp_hostile_values);
    RUN(test_jwt_big_payload);
    RUN(test_jwt_real_claims);
    return UNIT_EXIT();
}
