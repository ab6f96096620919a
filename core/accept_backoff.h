/* accept_backoff: a listener running out of file descriptors, handled as nginx does.
 *
 * When accept() fails with EMFILE or ENFILE (or ENOBUFS/ENOMEM) the pending connection
 * stays in the kernel's queue and the listening socket stays readable: a loop that keeps
 * calling accept() spins at 100 % CPU and, with libevent's default handler, logs one line
 * per attempt. Instead the listener is disabled for pause_ms (nginx: 500 ms) and the
 * failure is logged at most once per log interval, with the count held back. Connections
 * closing in the meantime give descriptors back; the pending ones are accepted after the
 * pause.
 *
 * fd_limit_ensure() is the start-up half: raise RLIMIT_NOFILE's soft limit toward what the
 * configuration needs (up to the hard limit), and warn when it stays below. */
#ifndef TOKENGATE_ACCEPT_BACKOFF_H
#define TOKENGATE_ACCEPT_BACKOFF_H

#include "metrics.h"

#include <event2/event.h>
#include <event2/listener.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ACCEPT_BACKOFF_PAUSE_MS 500
#define ACCEPT_BACKOFF_LOG_INTERVAL_MS 10000

typedef struct accept_backoff_options {
    const char *listener_name; /* in the log line */
    int64_t pause_ms;
    int64_t log_interval_ms;
    metric_counter *errors;   /* incremented per failed accept(); owned by the caller */
    metric_counter *backoffs; /* incremented per pause */
    /* Asked when a pause ends: true if the listener must stay disabled for another reason
     * (its connection limit); the owner then re-enables it itself. May be NULL. */
    bool (*held)(void *arg);
    void *held_arg;
} accept_backoff_options;

typedef struct accept_backoff accept_backoff;

/* Installs the error callback on listener (borrowed), whose callback argument (evhttp's)
 * is listener_arg. Call from the thread that runs the listener, at most 4 per thread.
 * Free this on the same thread; it never touches the listener then (it may be gone).
 * Returns NULL without memory. */
accept_backoff *accept_backoff_new(struct event_base *base, struct evconnlistener *listener, void *listener_arg,
                                   const accept_backoff_options *options);

/* True while the listener is paused after a failure: its owner must not enable it. */
bool accept_backoff_active(const accept_backoff *b);

void accept_backoff_free(accept_backoff *b);

/* Descriptors the configuration may hold at once: every client connection, the admin
 * connections, the upstream pool, and a margin for listeners, loop internals, the API
 * client and files. */
size_t fd_limit_needed(size_t max_connections, size_t admin_max_connections, size_t upstream_max_connections,
                       size_t workers);

/* Raises the soft RLIMIT_NOFILE to needed if the hard limit allows, else as far as it can,
 * and logs a warning when the limit stays below needed. Returns the soft limit in force. */
size_t fd_limit_ensure(size_t needed);

#endif
