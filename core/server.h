/* The gateway process: its event loop, the main (authz) and admin listeners, and the
 * objects every request touches (keyer, cache, API client, review engine, metrics). */
#ifndef TOKENGATE_SERVER_H
#define TOKENGATE_SERVER_H

#include "apiserver_config.h"
#include "config.h"

#include <stdio.h>

/* Builds everything from cfg and api (the API server apiserver_resolve chose; both must
 * outlive the call), serves until SIGTERM/SIGINT, tears everything down. Returns the
 * process exit code: 0 after a signal, 1 when start-up failed (reason logged). */
int server_run(const config *cfg, const apiserver_settings *api);

/* --check: loads the configured policy in a scratch host, prints the outcome to out.
 * Returns 0 when it loads (or --policy none), -1 otherwise. */
int server_check_policy(const config *cfg, FILE *out);

#endif
