/* http_strict.h: the HTTP/1.1 framing and header-syntax checks evhttp does not make,
 * applied to every request on every listener before anything else reads it.
 *
 * evhttp 2.1 takes the first of two Content-Length fields, accepts "+5", ignores a
 * Transfer-Encoding it does not know, keeps "Name :" with the space in the name and
 * answers HTTP/1.1 requests without Host. Behind another proxy each of these is a request
 * smuggling primitive (the two disagree on where a request ends); RFC 9112 asks for 400,
 * as nginx, Envoy and kube-apiserver answer. A refused request is answered 400 and its
 * connection closed, so bytes after it are never read as another request. */
#ifndef TOKENGATE_HTTP_STRICT_H
#define TOKENGATE_HTTP_STRICT_H

#include <stdbool.h>
#include <stddef.h>

struct evhttp_request;
struct evkeyvalq;

/* The reason the request's framing or headers are refused, or NULL when they pass.
 * http_minor: 1 for HTTP/1.1 (Host required), 0 for HTTP/1.0. */
const char *http_strict_headers_violation(const struct evkeyvalq *headers, int http_major, int http_minor);

/* True when s is a Host field value: a reg-name, IPv4 or [IPv6] literal and an optional
 * port (no path, userinfo, spaces or backslash). Also used for forwarded hosts. */
bool http_strict_host_valid(const char *s);

/* The character classes behind these checks, exposed for their unit test: an RFC 9110
 * tchar, and a character allowed in a Host field. */
bool http_strict_token_char(unsigned char c);
bool http_strict_host_char(unsigned char c);

/* The same for an evhttp request (its version read from the request). */
const char *http_strict_violation(struct evhttp_request *req);

#endif
