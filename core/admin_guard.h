/* admin_guard.h: who may use the admin listener from a browser's point of view.
 *
 * The admin listener changes state (POST /cache/flush) and has no authentication unless
 * --admin-token-file is given. A web page the operator visits can still send it requests:
 * a cross-site form POST (no CORS preflight for text/plain, form and multipart bodies),
 * or, through DNS rebinding, a same-origin request to a name that resolves to the admin
 * address. These pure checks refuse both; admin_endpoints.c applies them to every admin
 * request. */
#ifndef TOKENGATE_ADMIN_GUARD_H
#define TOKENGATE_ADMIN_GUARD_H

#include <stdbool.h>
#include <stddef.h>

/* True when a request with this Host field may use the admin listener: an IP literal
 * (v4, or v6 in brackets), "localhost", the host of --admin-listen, or one of the names
 * in allowed (comma-separated, from --admin-allowed-hosts; "*" allows any), each with an
 * optional port. A DNS-rebinding page's Host is its own name, so it is refused. No Host
 * (HTTP/1.0) is allowed: browsers always send one. */
bool admin_host_allowed(const char *host, const char *admin_listen, const char *allowed);

/* The reason a request looks cross-site, or NULL: an Origin that is not http(s)://Host,
 * Sec-Fetch-Site other than same-origin/none, or (for POST) a body type a browser may
 * send cross-site without a preflight (text/plain, multipart/form-data, or
 * application/x-www-form-urlencoded with a body). Arguments may be NULL when absent. */
const char *admin_cross_site_violation(bool is_post, const char *host, const char *origin, const char *sec_fetch_site,
                                       const char *content_type, size_t body_len);

/* True when the host part of a host:port listen address is a loopback address or name. */
bool admin_listen_is_loopback(const char *hostport);

#endif
