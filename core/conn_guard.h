/* conn_guard: deadlines and memory bounds on a worker's client connections while they
 * send a request — what evhttp 2.1 does not bound by itself.
 *
 * evhttp's --read-timeout is an idle timeout: it is re-armed by every byte, so a client
 * sending one header byte every few seconds (slowloris) keeps a connection, and a slot of
 * --max-connections, for ever. A guard watches the bytes arriving on one connection (a
 * callback on its bufferevent's input buffer, plain text after TLS) and closes the
 * connection when
 *   - the request line and headers are not complete header_timeout after the request's
 *     first byte (for the connection's first request: after the connection was accepted,
 *     so a TLS handshake or an idle new connection counts too), or
 *   - the body is not complete body_timeout after the end of the headers;
 * "complete" is when evhttp hands the request to the gateway (conn_guard_request_read).
 * Between requests on a kept-alive connection only the idle timeout applies.
 *
 * It also bounds the memory held in request bodies that evhttp buffers before the request
 * is authorized (proxy mode):
 *   - a request without an Authorization header may carry at most
 *     max_unauthenticated_body bytes (evhttp's per-connection body limit is lowered for
 *     that request when its headers end; a larger body is read and dropped, never
 *     buffered, and answered 413);
 *   - the bodies being read on this worker's connections together stay under
 *     max_buffered_body: the connection whose body would pass it is closed.
 *
 * Proxy mode, with no anonymous() hook in the policy (conn_guard_set_refuse_unauthenticated),
 * a request that has no Authorization header and announces a body (one Content-Length above
 * 0, or Transfer-Encoding: chunked; one Host field) is decided on its headers, as nginx's auth_request does:
 * its answer can only be 401, so the guard answers it itself when the headers end, before
 * any byte of the body is read or buffered and without a 100 Continue. The guard takes the
 * connection over from evhttp (its bufferevent callbacks), writes the answer the worker
 * formats (refuse callback: it also counts the request and logs the decision), shuts the
 * write side once it is sent, and reads and drops what the client still sends (a
 * lingering close: closing at once with unread bytes would reset the connection and could
 * destroy the answer) until the client closes, LINGER_IDLE_MS pass without a byte or
 * LINGER_TOTAL_MS in all; it then hands the connection back to evhttp as closed by the
 * client. Requests whose framing is ambiguous, pipelined behind another one, or arriving
 * while an answer is being written take the usual path (bounded as above).
 *
 * A connection is closed by shutting its socket down: evhttp then sees the end of the
 * stream and frees the connection its usual way (no request is handed to the gateway).
 * All of it runs on the worker's loop thread; nothing here is shared. */
#ifndef TOKENGATE_CONN_GUARD_H
#define TOKENGATE_CONN_GUARD_H

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What is known of a request refused on its headers: its request line's method and path
 * (the target up to '?'), as sent; either may be empty when the line was too long to keep.
 * Neither is validated beyond being printable ASCII without spaces. */
typedef struct conn_guard_refusal {
    const char *method;
    size_t method_len;
    const char *path;
    size_t path_len;
} conn_guard_refusal;

typedef struct conn_guard_options {
    int64_t header_timeout_ms;       /* > 0 */
    int64_t body_timeout_ms;         /* > 0 */
    size_t max_buffered_body;        /* this worker's share; 0: no bound */
    bool bound_unauthenticated_body; /* proxy mode: apply max_unauthenticated_body */
    size_t max_unauthenticated_body;
    size_t max_body;             /* evhttp's body limit for other requests (restored) */
    size_t expected_connections; /* sizes the lookup table (this worker's share) */
    /* Formats the 401 for a request refused on its headers into response (a complete HTTP
     * answer, closing the connection), and accounts for it. NULL: no early refusal. */
    void (*refuse)(void *arg, const conn_guard_refusal *request, struct evbuffer *response);
    void *refuse_arg;
} conn_guard_options;

typedef struct conn_guard_stats {
    uint64_t header_timeouts;        /* connections closed: headers not complete in time */
    uint64_t body_timeouts;          /* connections closed: body not complete in time */
    uint64_t body_budget_closes;     /* connections closed: max_buffered_body reached */
    uint64_t unauthenticated_bodies; /* requests without Authorization whose limit was lowered */
    uint64_t refused_on_headers;     /* requests without Authorization answered 401 before their body */
    size_t buffered_body;            /* body bytes being read now */
    size_t guarded;                  /* connections watched now */
} conn_guard_stats;

typedef struct conn_guard_set conn_guard_set;

/* Returns a set for connections on base, or NULL without memory. */
conn_guard_set *conn_guard_set_new(struct event_base *base, const conn_guard_options *options);

/* Frees the set and the guards still in it (call after evhttp_free: their connections are
 * gone; their input-buffer callbacks went with them). */
void conn_guard_set_free(conn_guard_set *set);

/* Whether requests without Authorization that announce a body are answered 401 on their
 * headers (see above; needs options.refuse). The worker turns it on in proxy mode when its
 * policy has no anonymous() hook (that hook may let such a request through, so it must see
 * it whole), and off when it stops. */
void conn_guard_set_refuse_unauthenticated(conn_guard_set *set, bool refuse);

/* Starts guarding a newly accepted connection: its header deadline runs from now.
 * Returns 0, or -1 without memory (the caller closes the connection: fail closed). */
int conn_guard_attach(conn_guard_set *set, struct evhttp_connection *evcon);

/* True when the request evhttp is handing over had a NUL byte in its request line or
 * headers: evhttp's parser cuts a line there ("Bearer good\0garbage" reads as
 * "Bearer good"), so such a request must be refused, not judged on what is left. Call it
 * before conn_guard_request_read (which starts the next request's scan). */
bool conn_guard_request_has_nul(conn_guard_set *set, struct evhttp_connection *evcon);

/* evhttp handed a complete request of evcon to the gateway: no deadline runs until the
 * next request's first byte. Unknown connections are ignored. */
void conn_guard_request_read(conn_guard_set *set, struct evhttp_connection *evcon);

/* evcon is closing: forget it. Unknown connections are ignored. */
void conn_guard_detach(conn_guard_set *set, struct evhttp_connection *evcon);

void conn_guard_get_stats(const conn_guard_set *set, conn_guard_stats *out);

#endif
