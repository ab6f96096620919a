/* admin_guard.c: see admin_guard.h. */
#include "admin_guard.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

/* The host part of "host[:port]" or "[v6][:port]": [*start, *start + *len). */
static void host_part(const char *hostport, const char **start, size_t *len)
{
    if (hostport[0] == '[') {
        const char *close = strchr(hostport, ']');
        *start = hostport;
        *len = close ? (size_t)(close - hostport) + 1 : strlen(hostport);
        return;
    }
    const char *colon = strrchr(hostport, ':');
    *start = hostport;
    *len = colon ? (size_t)(colon - hostport) : strlen(hostport);
}

static bool is_ip_literal(const char *h, size_t len)
{
    char buf[64];
    unsigned char addr[16];
    if (len >= sizeof(buf) || len == 0) return false;
    if (h[0] == '[') {
        if (len < 3 || h[len - 1] != ']') return false;
        memcpy(buf, h + 1, len - 2);
        buf[len - 2] = '\0';
        return inet_pton(AF_INET6, buf, addr) == 1;
    }
    memcpy(buf, h, len);
    buf[len] = '\0';
    return inet_pton(AF_INET, buf, addr) == 1;
}

static bool same_name(const char *a, size_t a_len, const char *b, size_t b_len)
{
    /* A trailing dot names the same host ("localhost." is localhost). */
    if (a_len && a[a_len - 1] == '.') a_len--;
    if (b_len && b[b_len - 1] == '.') b_len--;
    return a_len == b_len && a_len > 0 && strncasecmp(a, b, a_len) == 0;
}

bool admin_host_allowed(const char *host, const char *admin_listen, const char *allowed)
{
    if (!host) return true;
    const char *h;
    size_t h_len;
    host_part(host, &h, &h_len);
    if (h_len == 0) return false;
    if (is_ip_literal(h, h_len) || same_name(h, h_len, "localhost", 9)) return true;
    if (admin_listen) {
        const char *l;
        size_t l_len;
        host_part(admin_listen, &l, &l_len);
        if (same_name(h, h_len, l, l_len)) return true;
    }
    for (const char *p = allowed; p && *p;) {
        size_t n = strcspn(p, ",");
        const char *name = p;
        size_t name_len = n;
        while (name_len && *name == ' ') name++, name_len--;
        while (name_len && name[name_len - 1] == ' ') name_len--;
        if ((name_len == 1 && name[0] == '*') || same_name(h, h_len, name, name_len)) return true;
        p += n + (p[n] == ',');
    }
    return false;
}

/* The media type of a Content-Type value, without parameters or spaces, compared. */
static bool media_type_is(const char *content_type, const char *type)
{
    while (*content_type == ' ' || *content_type == '\t') content_type++;
    size_t n = strcspn(content_type, "; \t");
    return n == strlen(type) && strncasecmp(content_type, type, n) == 0;
}

const char *admin_cross_site_violation(bool is_post, const char *host, const char *origin, const char *sec_fetch_site,
                                       const char *content_type, size_t body_len)
{
    if (origin) {
        const char *rest = strncasecmp(origin, "http://", 7) == 0    ? origin + 7
                           : strncasecmp(origin, "https://", 8) == 0 ? origin + 8
                                                                     : NULL;
        if (!rest || !host || strcasecmp(rest, host) != 0) return "cross-origin request";
    }
    if (sec_fetch_site && strcasecmp(sec_fetch_site, "same-origin") != 0 && strcasecmp(sec_fetch_site, "none") != 0)
        return "cross-site request";
    if (is_post && content_type &&
        (media_type_is(content_type, "text/plain") || media_type_is(content_type, "multipart/form-data") ||
         (media_type_is(content_type, "application/x-www-form-urlencoded") && body_len > 0)))
        return "a form or text body is not accepted";
    return NULL;
}

bool admin_listen_is_loopback(const char *hostport)
{
    const char *h;
    size_t len;
    char buf[64];
    unsigned char addr[16];
    host_part(hostport, &h, &len);
    if (same_name(h, len, "localhost", 9)) return true;
    if (len >= sizeof(buf) || len == 0) return false;
    if (h[0] == '[' && len > 2) {
        memcpy(buf, h + 1, len - 2);
        buf[len - 2] = '\0';
        return inet_pton(AF_INET6, buf, addr) == 1 && memcmp(addr, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
    }
    memcpy(buf, h, len);
    buf[len] = '\0';
    return inet_pton(AF_INET, buf, addr) == 1 && addr[0] == 127;
}
