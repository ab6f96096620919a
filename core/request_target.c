/* request_target.c: see request_target.h. One pass over the raw bytes; nothing is
 * decoded into a buffer, the percent-escapes are only looked through. */
#include "request_target.h"

#include <string.h>
#include <strings.h>

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of the escape "%XY" at p (p[0] == '%'), or -1 when XY are not two hex digits
 * inside [p, end). */
static int escape_at(const char *p, const char *end)
{
    if (end - p < 3) return -1;
    int hi = hex_value((unsigned char)p[1]), lo = hex_value((unsigned char)p[2]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* The byte at p decoded once: a raw byte, or an escape's value; *len is what it took. */
static int decoded_at(const char *p, const char *end, size_t *len)
{
    if (p >= end) return -1;
    if (*p != '%') {
        *len = 1;
        return (unsigned char)*p;
    }
    *len = 3;
    return escape_at(p, end);
}

/* True when the bytes at p, decoded once, start with two hex digits: after an encoded
 * '%' that makes a second escape ("%252e" and "%25%32%65" both decode to "%2e"). */
static bool hex_pair_after_decoding(const char *p, const char *end)
{
    size_t l1 = 0, l2 = 0;
    int a = decoded_at(p, end, &l1);
    int b = a < 0 ? -1 : decoded_at(p + l1, end, &l2);
    return a >= 0 && b >= 0 && hex_value((unsigned char)a) >= 0 && hex_value((unsigned char)b) >= 0;
}

/* RFC 3986 pchar minus '%' and ';' (handled apart), as raw bytes in a path segment. */
static bool path_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c && strchr("-._~!$&'()*+,=:@", c) != NULL;
}

static target_verdict refuse(target_verdict v, const char **why, const char *reason)
{
    if (why) *why = reason;
    return v;
}

/* A percent-encoded UTF-8 sequence starting with the escape at *pp whose byte is lead
 * (>= 0x80): checks it is one well-formed, shortest-form code point and moves *pp past it. */
static target_verdict check_encoded_utf8(const char **pp, const char *end, int lead, const char **why)
{
    int need;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the first continuation byte */
    if (lead < 0xC0) return refuse(TARGET_MALFORMED, why, "invalid UTF-8 in the path");
    if (lead < 0xC2) return refuse(TARGET_TRAVERSAL, why, "overlong UTF-8 in the path");
    if (lead < 0xE0)
        need = 1;
    else if (lead < 0xF0) {
        need = 2;
        if (lead == 0xE0)
            lo = 0xA0; /* below: overlong */
        else if (lead == 0xED)
            hi = 0x9F; /* above: a UTF-16 surrogate */
    } else if (lead < 0xF5) {
        need = 3;
        if (lead == 0xF0)
            lo = 0x90; /* below: overlong */
        else if (lead == 0xF4)
            hi = 0x8F; /* above: beyond U+10FFFF */
    } else {
        return refuse(TARGET_MALFORMED, why, "invalid UTF-8 in the path");
    }
    const char *p = *pp + 3;
    for (int i = 0; i < need; i++, p += 3) {
        int c = p < end && *p == '%' ? escape_at(p, end) : -1;
        if (c < 0) return refuse(TARGET_MALFORMED, why, "invalid UTF-8 in the path");
        if (i == 0 && c < lo && (lead == 0xE0 || lead == 0xF0))
            return refuse(TARGET_TRAVERSAL, why, "overlong UTF-8 in the path");
        if (c < (i == 0 ? lo : 0x80) || c > (i == 0 ? hi : 0xBF))
            return refuse(TARGET_MALFORMED, why, "invalid UTF-8 in the path");
    }
    *pp = p;
    return TARGET_OK;
}

/* The path: "/" then segments of path characters and escapes. */
static target_verdict check_path(const char *path, const char *end, const char **why)
{
    if (path == end || *path != '/') return refuse(TARGET_MALFORMED, why, "the path must start with '/'");
    const char *p = path;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '/') {
            const char *seg = p + 1, *seg_end = seg;
            while (seg_end < end && *seg_end != '/') seg_end++;
            size_t len = (size_t)(seg_end - seg);
            if (len == 0 && seg_end < end) return refuse(TARGET_TRAVERSAL, why, "empty path segment");
            if ((len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
                return refuse(TARGET_TRAVERSAL, why, "dot segment in the path");
            p++;
            continue;
        }
        if (c == '\\') return refuse(TARGET_TRAVERSAL, why, "backslash in the path");
        if (c == ';') return refuse(TARGET_TRAVERSAL, why, "';' parameter in the path");
        if (c == '%') {
            int b = escape_at(p, end);
            if (b < 0) return refuse(TARGET_MALFORMED, why, "malformed percent-encoding in the path");
            if (b == '.' || b == '/' || b == '\\' || b == ';')
                return refuse(TARGET_TRAVERSAL, why, "encoded '.', '/', '\\' or ';' in the path");
            if (b == '%' && hex_pair_after_decoding(p + 3, end))
                return refuse(TARGET_TRAVERSAL, why, "double percent-encoding in the path");
            if (b < 0x20 || b == 0x7f) return refuse(TARGET_MALFORMED, why, "encoded control character in the path");
            if (b >= 0x80) {
                target_verdict v = check_encoded_utf8(&p, end, b, why);
                if (v != TARGET_OK) return v;
                continue;
            }
            p += 3;
            continue;
        }
        if (!path_char(c)) return refuse(TARGET_MALFORMED, why, "invalid character in the path");
        p++;
    }
    return TARGET_OK;
}

target_verdict request_target_check(const char *target, size_t len, const char **why)
{
    if (why) *why = NULL;
    if (!target) return refuse(TARGET_MALFORMED, why, "no request target");
    const char *end = target + len;
    const char *q = memchr(target, '?', len);
    target_verdict v = check_path(target, q ? q : end, why);
    if (v != TARGET_OK || !q) return v;
    /* The query is the application's: any visible ASCII but '#', as clients send it. */
    for (const char *p = q + 1; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f || c == '#') return refuse(TARGET_MALFORMED, why, "invalid character in the query");
    }
    return TARGET_OK;
}

int request_url_split(const char *url, size_t len, const char **authority, size_t *authority_len, const char **target,
                      size_t *target_len)
{
    size_t scheme_len;
    if (len > 7 && strncasecmp(url, "http://", 7) == 0)
        scheme_len = 7;
    else if (len > 8 && strncasecmp(url, "https://", 8) == 0)
        scheme_len = 8;
    else
        return -1;
    const char *a = url + scheme_len, *end = url + len, *slash = a;
    while (slash < end && *slash != '/' && *slash != '?' && *slash != '#') slash++;
    if (slash == a || slash == end || *slash != '/') return -1;
    for (const char *p = a; p < slash; p++) {
        unsigned char c = (unsigned char)*p;
        /* reg-name, IPv4, [IPv6] and :port characters; no userinfo, no escapes */
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
              c == ':' || c == '[' || c == ']' || c == '_'))
            return -1;
    }
    *authority = a;
    *authority_len = (size_t)(slash - a);
    *target = slash;
    *target_len = (size_t)(end - slash);
    return 0;
}

bool request_method_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > 20) return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || ((s[i] == '-' || s[i] == '_') && i > 0))) return false;
    return true;
}
