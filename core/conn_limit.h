/* conn_limit: a cap on the open connections of one evhttp server with one listener (the
 * admin listener; the workers count theirs in worker.c). At the cap the listener is
 * disabled and new connections wait in the kernel's accept queue; a closing connection
 * re-enables it (unless an accept back-off is running, which then re-enables it).
 * Runs on the thread of the evhttp's loop. */
#ifndef TOKENGATE_CONN_LIMIT_H
#define TOKENGATE_CONN_LIMIT_H

#include "accept_backoff.h"

#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct conn_limit conn_limit;

/* Counts the connections of http (installs its bevcb: call before it accepts any).
 * Returns NULL without memory. */
conn_limit *conn_limit_new(struct event_base *base, struct evhttp *http, size_t max_connections);

/* The listener to pause at the cap, and the back-off that may hold it (may be NULL). */
void conn_limit_set_listener(conn_limit *limit, struct evconnlistener *listener, const accept_backoff *backoff);

/* For accept_backoff_options.held: true while the cap holds the listener. */
bool conn_limit_holds(void *limit);

size_t conn_limit_open(const conn_limit *limit);

/* Call after evhttp_free(http) (its close callbacks still reach this). */
void conn_limit_free(conn_limit *limit);

#endif
