/* The upstream client of proxy mode: forwards an allowed request to the application behind
 * the gateway and streams its answer back to the client, on the owner's event loop (a
 * curl_loop of its own: libcurl's connection cache is the keep-alive pool).
 *
 * What is forwarded: the method, the request target as the client sent it (behind the
 * upstream URL's path, if it has one), the body (already buffered by evhttp, bounded by
 * --max-body-bytes), and the headers minus hop-by-hop ones, minus every client-supplied
 * identity or forwarding header (X-Remote-*, X-Forwarded-*, Forwarded, X-Original-*,
 * X-Real-IP, X-Auth-Request-*, Impersonate-*), minus Authorization unless kept, minus Host
 * and minus any header the policy sets; then X-Forwarded-For/Proto/Host, the identity
 * headers and the policy's headers are added. The answer's status and headers (minus
 * hop-by-hop ones) go back as soon as they arrive and the body is streamed: the transfer is
 * paused while more than UPSTREAM_PAUSE_BYTES wait to be written to the client.
 *
 * Threading: an upstream belongs to one event loop and is used only from its thread. */
#ifndef TOKENGATE_UPSTREAM_H
#define TOKENGATE_UPSTREAM_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UPSTREAM_PAUSE_BYTES (1024 * 1024) /* answer bytes waiting for a slow client before the upstream is paused */

typedef struct upstream upstream;

typedef struct upstream_options {
    const char *url;         /* http(s)://host[:port][/prefix], as config_validate accepts it */
    const char *ca_file;     /* https: the only CA trusted; NULL: libcurl's default (system) CAs */
    int64_t timeout_ms;      /* connect, first answer byte, and longest silence of the upstream */
    size_t max_connections;  /* open connections to the upstream at once; more requests queue */
    bool keep_authorization; /* forward the client's Authorization header */
    bool listener_tls;       /* the client spoke HTTPS to us: X-Forwarded-Proto: https */
    /* The close callback the owner keeps on every client connection (its connection
     * count). A transfer replaces it while it watches the connection, puts it back when it
     * lets go, and calls it when the connection closes under it. NULL: none. */
    void (*client_closecb)(struct evhttp_connection *evcon, void *arg);
    void *client_closecb_arg;
} upstream_options;

/* One allowed request to forward. Everything is borrowed for the duration of the call
 * only: upstream_forward copies what it needs. */
typedef struct upstream_request {
    struct evhttp_request *req; /* taken over on success: answered exactly once by the upstream module */
    const char *method;         /* req's method, by name ("GET", ...) */
    const char *user;           /* NULL: an anonymous request (no identity headers are added) */
    const char *uid;
    const char *groups;              /* already joined with '|' */
    const char *const *header_names; /* the policy's allow headers (n_headers of each) */
    const char *const *header_values;
    size_t n_headers;
} upstream_request;

/* Told once per forwarded request, when it is over: status is what the client was sent
 * (the upstream's status, or 502/504 from the gateway), or 499 when the client went away
 * before an answer. The request is gone by then. */
typedef void (*upstream_done_fn)(void *arg, int status);

/* Creates the client on base. Returns NULL (and logs why) on failure. Caller owns it. */
upstream *upstream_new(struct event_base *base, const upstream_options *options);

/* Aborts every forwarded request still running (each client connection is closed and its
 * done is called with 499), then frees the client. Call it after the listener's evhttp
 * has been freed or while it is still alive, never from a callback of this module. NULL
 * is ignored. */
void upstream_free(upstream *up);

/* Forwards request->req to the upstream. On success (0) the module owns the request: it
 * answers it (the upstream's answer, streamed; 502 when the upstream refuses, resets or
 * sends something unusable; 504 on --upstream-timeout), aborts the upstream transfer when
 * the client goes away, and calls done exactly once, later, on the loop — never from
 * inside this function. Returns -1 when the request cannot be started (out of memory,
 * libcurl refused it): nothing was sent, done will not be called, the caller answers. */
int upstream_forward(upstream *up, const upstream_request *request, upstream_done_fn done, void *arg);

/* From now on every answer asks the client to close its connection (graceful shutdown). */
void upstream_set_draining(upstream *up);

/* Requests being forwarded right now. */
size_t upstream_in_flight(const upstream *up);

#endif
