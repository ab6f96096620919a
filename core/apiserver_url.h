/* The rule for an API server URL, wherever it comes from (--apiserver, a kubeconfig
 * cluster's server, the in-cluster KUBERNETES_SERVICE_HOST/PORT): https:// only, a host
 * name or IP address, an optional port, an optional path prefix, nothing else (no user
 * information, query or fragment). One checker for the three sources, so they cannot
 * drift apart. */
#ifndef TOKENGATE_APISERVER_URL_H
#define TOKENGATE_APISERVER_URL_H

#include <stdbool.h>
#include <stddef.h>

/* A character of a host name or an IPv4 address. */
bool apiserver_url_host_char(char c);

/* A TCP port in decimal digits only: 1 to 65535. */
bool apiserver_url_port_ok(const char *p, size_t len);

/* Checks an API server URL and returns a normalised copy (lower-case scheme, no trailing
 * slash): https://HOST[:PORT][/path-prefix], HOST a name, an IPv4 address or a bracketed
 * IPv6 address. what names the URL's origin in messages. The URL is quoted in messages
 * only when it cannot carry a password (no '@'). Returns NULL with a message on err. */
char *apiserver_url_normalize(const char *url, size_t len, const char *what, char *err, size_t cap);

#endif
