/* A worker: one event-loop thread serving the main listener. Each worker owns its event
 * base, its evhttp server on its own SO_REUSEPORT listening socket, a cache-key keyer (a
 * clone: same secret), a Lua policy state, a proxy-mode upstream client and its metrics.
 * The verdict caches are shared (sharded, locked per shard); everything else a cached
 * request touches is the worker's own, so the hot path takes no contended lock.
 *
 * A cache miss leaves the worker: its review goes as a review_mail to the control thread
 * (server.c), which owns the API client and the review engine — so single-flight, the
 * token bucket, the 429 pause and the circuit breaker see every worker's misses — and
 * comes back as the same mail, carrying the outcome, to the worker that sent it.
 *
 * Threading: worker_* functions other than worker_post and worker_requests_waiting are
 * called from the control thread only while the worker's thread is not running (before
 * worker_start, after worker_join). */
#ifndef TOKENGATE_WORKER_H
#define TOKENGATE_WORKER_H

#include "cache_key.h"
#include "config.h"
#include "custom_metrics.h"
#include "jwks_source.h"
#include "mailbox.h"
#include "metrics.h"
#include "policy.h"
#include "review.h"
#include "token_cache.h"

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct worker worker;

/* What the TokenReview parser needs: the audiences that were requested. Built by the
 * worker with the review (one allocation: the struct, the pointer array and the strings)
 * and owned by the flight, because a policy reload may change the audiences meanwhile. */
typedef struct tokenreview_parse_arg {
    size_t n_audiences;
    const char *audiences[POLICY_MAX_AUDIENCES > CONFIG_MAX_AUDIENCES ? POLICY_MAX_AUDIENCES : CONFIG_MAX_AUDIENCES];
    char strings[];
} tokenreview_parse_arg;

/* The main listener's TLS context, swapped by the control thread on SIGHUP while workers
 * make connections from it. */
typedef struct tls_holder {
    pthread_mutex_t lock;
    SSL_CTX *ctx; /* NULL: plain HTTP */
} tls_holder;

/* What the control thread shares with every worker; owned by the control thread and
 * valid until every worker has been freed. */
typedef struct worker_shared {
    const config *cfg;
    const cache_keyer *keyer; /* template: each worker clones it */
    token_cache *tokenreview_cache;
    token_cache *sar_cache;
    custom_metrics *custom;              /* thread-safe */
    mailbox *control;                    /* where review_mails go */
    tls_holder *tls;                     /* NULL without --tls-cert-file */
    size_t max_connections;              /* this worker's share of --max-connections */
    size_t upstream_max_connections;     /* this worker's share of --upstream-max-connections */
    jwks_source *jwks;                   /* --jwt-preverify; NULL when off (thread-safe) */
    size_t max_buffered_body_bytes;      /* this worker's share of --max-buffered-body-bytes (0: none) */
    const struct access_log *access_log; /* --access-log; NULL: off */
    policy_source *policy;               /* the validated policy the worker starts with (it takes a reference) */
} worker_shared;

typedef enum {
    MAIL_REVIEW,         /* worker -> control: start or join a review; control -> worker: its outcome */
    MAIL_REFRESH,        /* worker -> control: refresh-ahead review of a cached token (no waiter) */
    MAIL_RELOAD_POLICY,  /* control -> worker: load the policy version in the mail */
    MAIL_STOP_ACCEPTING, /* control -> worker: graceful shutdown has begun */
    MAIL_EXIT,           /* control -> worker: leave the loop now */
} gateway_mail_kind;

typedef enum { REVIEW_KIND_TOKENREVIEW = 0, REVIEW_KIND_SAR } review_kind_id;

/* Every mail between the threads. A review travels worker -> control -> worker in one
 * allocation: the control thread wakes it as the flight's waiter and fills the outcome. */
typedef struct gateway_mail {
    mail link; /* first: the mailbox's view */
    gateway_mail_kind kind;
    /* MAIL_REVIEW / MAIL_REFRESH */
    review_kind_id review;
    worker *from;
    void *request;                    /* the worker's waiting request; NULL for a refresh */
    review_request rr;                /* body and parse_arg owned by the mail until the engine takes them */
    review_waiter waiter;             /* the control thread's waiter for this mail */
    struct gateway_mail *prev, *next; /* control: mails waiting on a flight */
    struct server *control;           /* control: whose list that is */
    /* the outcome, filled on the control thread */
    review_verdict verdict;
    api_error error;
    int retry_after_s;
    unsigned char *value; /* malloc'd copy, or NULL */
    size_t value_len;
    char reason[256];
    /* MAIL_RELOAD_POLICY: the version the control thread validated (a reference) */
    policy_source *policy;
} gateway_mail;

/* What the SubjectAccessReview parser needs: the packed identity the question was asked
 * for, which the cached verdict keeps (sar_cache_value_pack) so revocations can find it. */
typedef struct sar_parse_arg {
    size_t identity_len;
    unsigned char identity[];
} sar_parse_arg;

/* Frees a mail and whatever it still owns (body wiped, value wiped). */
void gateway_mail_free(gateway_mail *m);

/* Creates worker number index: its loop, its evhttp server on listen_fd (a bound,
 * listening socket; the worker owns it from now on, also on failure), its policy state
 * (loaded from cfg->policy), its keyer clone and upstream client. Returns NULL (reason
 * logged) on failure. */
worker *worker_new(const worker_shared *shared, size_t index, int listen_fd);

/* Starts the worker's thread. Returns 0 or -1. */
int worker_start(worker *w);

/* Hands a mail to the worker's loop. Any thread. */
void worker_post(worker *w, gateway_mail *m);

/* Waits for the worker's thread to leave its loop (after MAIL_EXIT). */
void worker_join(worker *w);

/* Liveness. A worker's loop stamps a heartbeat every WORKER_HEARTBEAT_MS; a worker whose
 * loop has not turned for more than WORKER_STUCK_MS (a policy call, a lock or a write
 * that does not return) is stuck: /livez fails and gateway_workers_stuck counts it. */
#define WORKER_HEARTBEAT_MS 250
#define WORKER_STUCK_MS 5000

/* How long the worker's loop has not turned as of now_ms (CLOCK_MONOTONIC, ms); 0 while
 * it turns, before it starts and after it left. Any thread. */
int64_t worker_loop_silence_ms(const worker *w, int64_t now_ms);

/* True once the worker's thread has left its loop (or never started). Any thread. */
bool worker_loop_left(const worker *w);

/* Frees the worker: its open connections, requests still waiting (unanswered: the grace
 * ran out) and undelivered mails. Its thread must have been joined (or never started). */
void worker_free(worker *w);

/* Requests the worker has not finished answering (waiting for a review, being proxied, or
 * an answer still being written while stopping). Any thread; may lag by a moment. */
size_t worker_requests_waiting(const worker *w);

/* Adds the worker's counters to *sum and its stale-served count to *stale_served. Called
 * from the control thread while the worker runs: each counter is written by the worker
 * alone, and a scrape may see one a request behind (see docs/ARCHITECTURE.md). */
/* Requests this worker has answered (gateway_worker_requests_total{worker}). */
uint64_t worker_requests_answered(const worker *w);

void worker_add_metrics(const worker *w, gateway_metrics *sum, uint64_t *stale_served, size_t *connections);

#endif
