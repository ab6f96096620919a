/* http_strict.c: see http_strict.h. */
#include "http_strict.h"

#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

/* RFC 9110 5.6.2 token characters: what a field name is made of. */
static bool is_token(const char *s)
{
    if (!*s) return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c)))
            return false;
    }
    return true;
}

/* A field value: visible characters, spaces and tabs (obs-text allowed), no controls. */
static bool is_field_value(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
    }
    return true;
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
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("-._~:[]!$&'()*+,;=%", c)))
            return false;
    }
    return true;
}

const char *http_strict_headers_violation(const struct evkeyvalq *headers, int http_major, int http_minor)
{
    size_t n_host = 0, n_length = 0, n_encoding = 0;
    const char *encoding = NULL;
    const struct evkeyval *kv;
    TAILQ_FOREACH(kv, headers, next)
    {
        if (!is_token(kv->key)) return "malformed header field name";
        if (!is_field_value(kv->value)) return "control character in a header field value";
        if (strcasecmp(kv->key, "Host") == 0) {
            n_host++;
            if (!http_strict_host_valid(kv->value)) return "malformed Host";
        } else if (strcasecmp(kv->key, "Content-Length") == 0) {
            n_length++;
            if (!is_content_length(kv->value)) return "malformed Content-Length";
        } else if (strcasecmp(kv->key, "Transfer-Encoding") == 0) {
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
