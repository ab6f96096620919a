/* request_target.h: the one check of a request target (path and query) shared by authz
 * mode (the path a proxy in front reports) and proxy mode (the path forwarded upstream).
 *
 * The gateway never rewrites a path: it judges the raw target and refuses any target that
 * another component could read as a different path, so what the policy judged is exactly
 * what the upstream (or the application behind the proxy in front) receives. */
#ifndef TOKENGATE_REQUEST_TARGET_H
#define TOKENGATE_REQUEST_TARGET_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    TARGET_OK = 0,
    /* Not a well-formed origin-form target (RFC 9112 3.2.1 / RFC 3986): a byte outside
     * the allowed set (space, TAB, control, DEL, raw non-ASCII, '#', ...), a '%' not
     * followed by two hex digits, a decoded control character, invalid UTF-8. → 400 */
    TARGET_MALFORMED,
    /* Well formed, but a path some server reads as another path: empty, "." or ".."
     * segments, a backslash, ';' path parameters (Tomcat/Jetty/Spring resolve "..;" to the
     * parent), encoded '.', '/', '\', ';', double encoding (%25 + two hex digits) and
     * overlong UTF-8. → 403 */
    TARGET_TRAVERSAL,
} target_verdict;

/* Checks an origin-form target "path[?query]" of len bytes (it may hold NUL bytes, which
 * are refused). *why is set to a short static reason when the verdict is not TARGET_OK. */
target_verdict request_target_check(const char *target, size_t len, const char **why);

/* Splits an absolute URL "http(s)://authority/path[?query]" (ingress-nginx's X-Original-URL)
 * into its authority and its origin-form target, both pointing into url. The scheme must
 * be http or https, the authority non-empty, without userinfo ('@') and made of host
 * characters; the target must start with '/'. Returns 0, or -1 when url is not of that
 * form (the target itself is not checked here: use request_target_check). */
int request_url_split(const char *url, size_t len, const char **authority, size_t *authority_len, const char **target,
                      size_t *target_len);

/* True when s[0..len) is an HTTP method as a proxy reports it: 1 to 20 upper-case letters,
 * '-' or '_' after the first (WebDAV's VERSION-CONTROL). */
bool request_method_valid(const char *s, size_t len);

#endif
