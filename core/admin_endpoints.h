/* The admin listener: /metrics, /healthz, /livez, /readyz, /cache/flush and /policy, and
 * the gate every admin request passes first (strict framing, Host and cross-site checks,
 * then the --admin-token-file token or --admin-auth-review). Runs on the control thread
 * and reads the state server.c owns (server_internal.h); kept apart from the process
 * lifecycle because it is the gateway's operator-facing surface, with its own threats
 * (docs/SECURITY.md). */
#ifndef TOKENGATE_ADMIN_ENDPOINTS_H
#define TOKENGATE_ADMIN_ENDPOINTS_H

typedef struct server server;

/* Creates the admin evhttp on the control loop, reads --admin-token-file, sets up
 * --admin-auth-review, binds --admin-listen under --admin-max-connections with its accept
 * backoff, and warns when it is reachable beyond loopback without authentication. Every
 * object it makes is a field of srv, freed by the server's teardown. Returns 0, or -1
 * (reason logged). */
int admin_listener_start(server *srv);

#endif
