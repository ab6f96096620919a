/* Listening sockets: the one host:port parser the --listen and --admin-listen flags go
 * through, the main listener's per-worker SO_REUSEPORT sockets and the admin listener's
 * evhttp socket, each logged once with the address it is bound to. No server state:
 * server.c and admin_endpoints.c pass in what to bind and keep what comes back. */
#ifndef TOKENGATE_LISTENER_H
#define TOKENGATE_LISTENER_H

#include <event2/http.h>
#include <stddef.h>

/* Splits "host:port" at its last ':' into host (brackets of "[v6]" removed; "" for
 * ":port") and a port of 0 to 65535 (0: the kernel picks a free one). Returns 0, or -1
 * when there is no ':', the host does not fit host_cap, or the port is not a number in
 * range. */
int listen_address_split(const char *hostport, char *host, size_t host_cap, long *port);

/* The main listener: one socket per worker on the same address (SO_REUSEPORT: the kernel
 * spreads new connections across them), so no worker waits on another's accept. The
 * first socket picks the port (":0" = a free one), the others bind exactly that. Refuses
 * an address another process already listens on. Logs the bound address once. Returns 0
 * with fds[0..n) open, or -1 (all closed, reason logged). */
int open_main_listeners(const char *hostport, size_t n, int *fds);

/* Binds http to hostport and logs the bound address under the listener's name; *bound_out
 * (if not NULL) gets the bound socket. Returns 0, or -1 (reason logged). */
int bind_listener(struct evhttp *http, const char *name, const char *hostport, struct evhttp_bound_socket **bound_out);

#endif
