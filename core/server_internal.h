/* The control thread's state, shared by the files that run it: server.c (the process
 * lifecycle: start-up, signals, reloads, reviews for the workers, shutdown, teardown) and
 * admin_endpoints.c (the admin listener). Internal to those two: everything else sees
 * server.h. One struct rather than one per file because the admin endpoints report on
 * everything the lifecycle owns (caches, workers, engine, readiness, shutdown). */
#ifndef TOKENGATE_SERVER_INTERNAL_H
#define TOKENGATE_SERVER_INTERNAL_H

#include "accept_backoff.h"
#include "access_log.h"
#include "admin_auth.h"
#include "api_client.h"
#include "cache_key.h"
#include "config.h"
#include "conn_limit.h"
#include "custom_metrics.h"
#include "jwks_source.h"
#include "mailbox.h"
#include "metrics.h"
#include "policy.h"
#include "review.h"
#include "revocation_watch.h"
#include "tls_server.h"
#include "token_cache.h"
#include "worker.h"

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

typedef struct server {
    const config *cfg;
    struct event_base *base; /* the control thread's loop */
    struct evhttp *admin_http;
    conn_limit *admin_limit;       /* --admin-max-connections */
    accept_backoff *admin_backoff; /* pauses the admin listener when accept() runs out of fds */
    struct event *sigterm_event, *sigint_event, *sighup_event;
    struct event *sigusr1_event; /* reopens --access-log */
    access_log *access_log;      /* --access-log; NULL: off. Freed after the workers. */
    struct event *probe_timer;
    struct event *policy_watch_timer;
    struct stat policy_file_stat; /* what --policy-watch compares against */
    cache_keyer *keyer;           /* the secret; workers use clones */
    token_cache *tokenreview_cache;
    token_cache *sar_cache;
    api_client *api;
    review_engine *reviews;
    review_kind tokenreview_kind;
    review_kind sar_kind;
    custom_metrics *custom;
    policy_host *policy; /* the control thread's own state: ttl(), /policy, reload checks; NULL with --policy none */
    gateway_metrics metrics; /* the control thread's counters (API calls, reloads, flushes) */
    double start_time_s;
    bool api_ready; /* the API server answered a review */
    bool probe_running;
    char *probe_body; /* borrowed by the running probe call */
    size_t probe_body_len;
    mailbox *inbox;           /* review mails from the workers */
    gateway_mail *on_flights; /* review mails waiting on a flight, for teardown */
    worker **workers;
    size_t n_workers;
    tls_holder tls; /* tls.ctx NULL for plain HTTP; swapped on SIGHUP */
    bool tls_lock_ready;
    bool shutting_down;
    int64_t shutdown_deadline_ms;
    struct event *shutdown_timer;
    bool exiting;             /* MAIL_EXIT sent: waiting for the workers to leave their loops */
    int64_t exit_deadline_ms; /* then a worker still in a callback is abandoned (_exit) */
    policy_limits policy_limits;
    policy_source *policy_source;  /* the version every worker runs (validated, a reference) */
    revocation_watch *revocations; /* --watch-revocations; NULL when off */
    jwks_source *jwks;             /* --jwt-preverify; NULL when off */
    uint64_t admin_refusals;       /* Host/cross-site refusals on the admin listener (logged 1 in 1000) */
    char *admin_token;             /* --admin-token-file's token; NULL: no admin authentication */
    admin_auth *admin_auth;        /* --admin-auth-review; NULL when off */
    size_t admin_token_len;
} server;

/* Workers whose loop has not turned for more than WORKER_STUCK_MS; *worst gets the
 * index of the longest silent one and *worst_ms its silence. */
size_t server_stuck_workers(const server *srv, size_t *worst, int64_t *worst_ms);

#endif
