/* http_strict.c: see http_strict.h. */
#include "http_strict.h"

#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

/* Character classes, one table lookup per byte: these checks run on every header of
 * every request. Bits: CHAR_TOKEN an RFC 9110 tchar (ALPHA / DIGIT / "!#$%&'*+-.^_`|~"),
 * CHAR_HOST a Host field character (ALPHA / DIGIT / "-._~:[]!$&'()*+,;=%": reg-name, IP
 * literals, port), CHAR_VALUE a field-value character (anything but controls other than
 * TAB; obs-text allowed). spec/unit/test_http_strict.c checks the table against these
 * definitions byte by byte. */
enum { CHAR_TOKEN = 1, CHAR_HOST = 2, CHAR_VALUE = 4 };
// clang-format off: one row of 16 bytes a line
static const unsigned char char_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    4, 7, 4, 5, 7, 7, 7, 7, 6, 6, 7, 7, 6, 7, 7, 4, /* 0x20 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 4, 6, 4, 4, /* 0x30 */
    4, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, /* 0x40 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 4, 6, 5, 7, /* 0x50 */
    5, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, /* 0x60 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 4, 5, 4, 7, 0, /* 0x70 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0x80 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0x90 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xa0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xb0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xc0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xd0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xe0 */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* 0xf0 */
};
// clang-format on

bool http_strict_token_char(unsigned char c)
{
    return char_class[c] & CHAR_TOKEN;
}

bool http_strict_host_char(unsigned char c)
{
    return char_class[c] & CHAR_HOST;
}

/* A field name (1*tchar); its length in *len. */
static bool is_token(const char *s, size_t *len)
{
    const char *p = s;
    while (char_class[(unsigned char)*p] & CHAR_TOKEN) p++;
    *len = (size_t)(p - s);
    return *p == '\0' && p != s;
}

/* A field value: visible characters, spaces and tabs (obs-text allowed), no controls. */
static bool is_field_value(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (char_class[*p] & CHAR_VALUE) p++;
    return *p == '\0';
}

/* 1*DIGIT, at most 18 of them (fits an int64 whatever the digits). */
static bool is_content_length(const char *s)
{
    size_t n = strspn(s, "0123456789");
    return n > 0 && n <= 18 && s[n] == '\0';
}

/* The Host field: a reg-name, IPv4 or [IPv6] literal and an optional port. Anything else
 * (a path, userinfo, spaces, a backslash) could be read differently by the next hop. */
bool http_strict_host_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (char_class[*p] & CHAR_HOST) p++;
    return *p == '\0';
}

const char *http_strict_headers_violation(const struct evkeyvalq *headers, int http_major, int http_minor)
{
    size_t n_host = 0, n_length = 0, n_encoding = 0;
    const char *encoding = NULL;
    const struct evkeyval *kv;
    TAILQ_FOREACH(kv, headers, next) {
        size_t key_len;
        if (!is_token(kv->key, &key_len)) return "malformed header field name";
        if (!is_field_value(kv->value)) return "control character in a header field value";
        /* The three framing fields have distinct lengths: most fields skip strcasecmp. */
        if (key_len == 4 && strcasecmp(kv->key, "Host") == 0) {
            n_host++;
            if (!http_strict_host_valid(kv->value)) return "malformed Host";
        } else if (key_len == 14 && strcasecmp(kv->key, "Content-Length") == 0) {
            n_length++;
            if (!is_content_length(kv->value)) return "malformed Content-Length";
        } else if (key_len == 17 && strcasecmp(kv->key, "Transfer-Encoding") == 0) {
            n_encoding++;
            encoding = kv->value;
        }
    }
    if (n_length > 1) return "several Content-Length fields";
    if (n_encoding > 1) return "several Transfer-Encoding fields";
    if (encoding && strcasecmp(encoding, "chunked") != 0) return "unsupported Transfer-Encoding";
    if (encoding && http_major == 1 && http_minor == 0) return "Transfer-Encoding in an HTTP/1.0 request";
    if (encoding && n_length) return "both Transfer-Encoding and Content-Length";
    if (n_host > 1) return "several Host fields";
    if (n_host == 0 && (http_major > 1 || (http_major == 1 && http_minor >= 1))) return "no Host field";
    return NULL;
}

const char *http_strict_violation(struct evhttp_request *req)
{
    return http_strict_headers_violation(evhttp_request_get_input_headers(req), req->major, req->minor);
}
