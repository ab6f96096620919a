/* apiserver_url.c: see apiserver_url.h. */
#include "apiserver_url.h"
#include "apiserver_text.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool apiserver_url_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
}

bool apiserver_url_port_ok(const char *p, size_t len)
{
    if (len == 0 || len > 5) return false;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') return false;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

/* Checks an API server URL and returns a normalised copy (lower-case scheme, no trailing
 * slash): https://HOST[:PORT][/path-prefix], HOST a name, an IPv4 address or a bracketed
 * IPv6 address. The URL is quoted in messages only when it cannot carry a password (no
 * '@'). Returns NULL with a message on err. */
char *apiserver_url_normalize(const char *url, size_t len, const char *what, char *err, size_t cap)
{
    bool has_at = memchr(url, '@', len) != NULL;
    shown b;
    const char *quoted = has_at ? "(not shown)" : show_n(&b, url, len, SHOW_PATH_MAX);
    if (memchr(url, '\0', len)) {
        set_err(err, cap, "%s contains a NUL byte", what);
        return NULL;
    }
    if (len >= 7 && strncasecmp(url, "http://", 7) == 0) {
        set_err(err, cap,
                "%s %s uses plain http://: the API server must be https:// (the gateway's "
                "credential and "
                "callers' tokens travel on that connection)",
                what, quoted);
        return NULL;
    }
    if (len < 8 || strncasecmp(url, "https://", 8) != 0) {
        set_err(err, cap, "%s %s is not an https://HOST[:PORT] URL", what, quoted);
        return NULL;
    }
    const char *auth = url + 8, *end = url + len;
    const char *slash = memchr(auth, '/', (size_t)(end - auth));
    const char *auth_end = slash ? slash : end;
    if (memchr(auth, '@', (size_t)(auth_end - auth))) {
        set_err(err, cap, "%s: user information (user:password@) in the URL is not supported", what);
        return NULL;
    }
    bool ok = auth_end > auth;
    const char *port = NULL;
    if (ok && *auth == '[') {
        const char *close = memchr(auth, ']', (size_t)(auth_end - auth));
        ok = close && close > auth + 1;
        for (const char *p = auth + 1; ok && p < close; p++)
            ok = (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F') || *p == ':' ||
                 *p == '.';
        if (ok && close + 1 < auth_end) {
            ok = close[1] == ':';
            port = close + 2;
        }
    } else if (ok) {
        const char *colon = memchr(auth, ':', (size_t)(auth_end - auth));
        const char *host_end = colon ? colon : auth_end;
        ok = host_end > auth;
        for (const char *p = auth; ok && p < host_end; p++) ok = apiserver_url_host_char(*p);
        if (colon) port = colon + 1;
    }
    if (ok && port) ok = apiserver_url_port_ok(port, (size_t)(auth_end - port));
    if (!ok) {
        set_err(err, cap, "%s %s: not a valid https://HOST[:PORT] URL (IPv6 addresses go in brackets)", what, quoted);
        return NULL;
    }
    const char *path_end = end;
    for (const char *p = auth_end; ok && p < end; p++) ok = *p > 0x20 && *p < 0x7f && *p != '?' && *p != '#';
    if (!ok) {
        set_err(err, cap, "%s %s: the URL may hold a path prefix but no query, fragment or spaces", what, quoted);
        return NULL;
    }
    while (path_end > auth_end && path_end[-1] == '/') path_end--;
    size_t out_len = 8 + (size_t)(path_end - auth);
    char *out = malloc(out_len + 1);
    if (!out) {
        set_err(err, cap, "out of memory");
        return NULL;
    }
    memcpy(out, "https://", 8);
    memcpy(out + 8, auth, (size_t)(path_end - auth));
    out[out_len] = '\0';
    return out;
}
