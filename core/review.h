/* The review machinery shared by every kind of review (TokenReview now,
 * SubjectAccessReview later): single-flight of concurrent misses for one cache key, the
 * API call, classification of its answer, storing the verdict in that kind's cache, and
 * waking every waiter.
 *
 * A flight lives independently of its waiters: a waiter whose client went away is still
 * answered (evhttp keeps such requests until answered), and the verdict is cached for the
 * next caller. Errors are never cached.
 *
 * Threading: a review_engine belongs to one event loop (its api_client's). */
#ifndef TOKENGATE_REVIEW_H
#define TOKENGATE_REVIEW_H

#include "api_client.h"
#include "cache_key.h"
#include "metrics.h"
#include "token_cache.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    REVIEW_POSITIVE = 0, /* authenticated / allowed */
    REVIEW_NEGATIVE,     /* not authenticated / denied: a verdict, cached briefly */
    REVIEW_ERROR,        /* no verdict (API error, bad answer): never cached, fail closed */
} review_verdict;

/* What a kind's parser makes of a 200/201 answer. */
typedef struct review_parsed {
    review_verdict verdict; /* POSITIVE, NEGATIVE, or ERROR for a bad response */
    size_t value_len;       /* bytes written to the value buffer: what the cache keeps */
    char reason[256];       /* NEGATIVE or ERROR: why, safe to log */
    bool unrepresentable;   /* NEGATIVE because the identity cannot be carried (counted) */
} review_parsed;

/* One kind of review: where it is posted, how its answer is read, where verdicts go. */
typedef struct review_kind {
    const char *name;     /* "tokenreview": for logs */
    const char *api_path; /* e.g. TOKENREVIEW_API_PATH */
    token_cache *cache;   /* verdicts of this kind (not owned) */
    review_metrics *metrics;
    /* Parses body into value (cap TOKEN_CACHE_VALUE_MAX) and *out. parse_arg comes from
     * the review_request. Must not log the body: it may echo the token. */
    void (*parse)(const char *body, size_t body_len, const void *parse_arg, unsigned char *value, review_parsed *out);
    /* Optional: TTL of a positive verdict given its value (e.g. the policy's ttl(user)).
     * Returns milliseconds, or default_ms when it has no opinion; <= 0 means don't cache.
     * The engine bounds the result by the request's positive_ttl_cap_ms. */
    int64_t (*positive_ttl)(void *ctx, const unsigned char *value, size_t value_len, int64_t default_ms);
    /* Optional: a last word on a POSITIVE answer, before it is cached or told. Returns true
     * to keep it; false turns it NEGATIVE, after rewriting value / *value_len into that
     * kind's negative form and writing why into reason (cap bytes, NUL-terminated, safe to
     * log). The gateway refuses this way the identities of ServiceAccounts and Pods it saw
     * deleted while the API server's own cache still vouches for them. */
    bool (*vet)(void *ctx, unsigned char *value, size_t *value_len, char *reason, size_t cap);
    void *ctx;
} review_kind;

/* What a waiter is told. Pointers are valid only during the callback. */
typedef struct review_outcome {
    review_verdict verdict;
    api_error error;   /* REVIEW_ERROR: the reason class */
    int retry_after_s; /* REVIEW_ERROR: seconds for the client's Retry-After (>= 1) */
    const unsigned char *value;
    size_t value_len;
    const char *reason;
} review_outcome;

typedef void (*review_done_fn)(const review_outcome *outcome, void *arg);

/* Embedded in the waiting request's own context: joining a flight allocates nothing. */
typedef struct review_waiter {
    review_done_fn done;
    void *arg;
    struct review_waiter *next;
} review_waiter;

/* A new flight's parameters. */
typedef struct review_request {
    cache_key key;
    char *body; /* ownership passes to review_start; wiped and freed */
    size_t body_len;
    void *parse_arg;                /* handed to kind->parse; owned by the flight */
    void (*parse_arg_free)(void *); /* frees parse_arg when the flight ends; may be NULL */
    int64_t positive_ttl_ms;        /* default TTL of a positive verdict; <= 0: don't cache */
    int64_t positive_ttl_cap_ms;    /* upper bound (max TTL, token expiry) of any positive TTL */
    int64_t negative_ttl_ms;        /* <= 0: don't cache */
    /* The whole request's deadline (monotonic ms, the engine's clock), so that a TokenReview
     * and then a SubjectAccessReview share --review-timeout instead of stacking two; 0: the
     * flight's own --review-timeout from its start. */
    int64_t deadline_ms;
    char token_id[9]; /* for logs */
    /* Whose review this is, for the queue's fairness (fair_queue.h): flights of one flow
     * take turns with other flows' and cannot hold more than their share of a full queue.
     * The worker sets it (docs/SECURITY.md, "Fair sharing of the API budget"). */
    uint64_t flow;
} review_request;

/* How the engine protects the API server (and itself). */
typedef struct review_limits {
    int64_t timeout_ms; /* deadline of one review: queueing, retries and calls together */
    double qps;         /* token bucket shared by every kind of review */
    double burst;
    size_t max_pending;          /* flights waiting for the bucket; beyond: 503 at once */
    int circuit_failures;        /* consecutive failed calls that open the circuit */
    int64_t circuit_cooldown_ms; /* how long an open circuit fails fast before one probe */
    int retry_after_cap_s;       /* longest Retry-After honoured (and passed on) */
} review_limits;

typedef struct review_engine review_engine;

/* What the engine uses of the world: a monotonic clock, the API call and one timer. The
 * gateway's (review_engine_new) are CLOCK_MONOTONIC, api_client_post and a libevent timer
 * on the client's loop; a unit test injects its own and drives time itself. */
typedef struct review_io {
    int64_t (*now_ms)(void *ctx); /* monotonic milliseconds */
    /* As api_client_post: 0 and done called exactly once later (never from inside post), or
     * -1 and done never called. body stays valid until done. */
    int (*post)(void *ctx, const char *path, const char *body, size_t body_len, int64_t timeout_ms, api_done_fn done,
                void *arg);
    /* Arms the one timer to call review_engine_on_timer after delay_ms (>= 1), replacing
     * any earlier arming; delay_ms < 0 disarms it. */
    void (*arm_timer)(void *ctx, int64_t delay_ms);
    void *ctx;
} review_io;

/* Creates an engine on client. Returns NULL on allocation failure. Caller owns it. */
review_engine *review_engine_new(api_client *client, struct event_base *base, const review_limits *limits);

/* Creates an engine on io (copied). Returns NULL on allocation failure. Caller owns it. */
review_engine *review_engine_new_with_io(const review_io *io, const review_limits *limits);

/* The timer armed through review_io fired: sends what may be sent now, fails what expired. */
void review_engine_on_timer(review_engine *engine);

/* Frees the engine. Waiters of unfinished flights are not called: free only after the
 * loop has stopped and their requests are gone. */
void review_engine_free(review_engine *engine);

/* If a flight for key is running, adds waiter to it and returns true (counted as
 * coalesced in kind's metrics); a deadline_ms (> 0, engine clock) earlier than the
 * flight's becomes the flight's. Otherwise returns false and does nothing. */
bool review_join(review_engine *engine, const review_kind *kind, const cache_key *key, review_waiter *waiter,
                 int64_t deadline_ms);

/* Starts a flight for request->key with waiter as its first waiter; the caller has checked
 * review_join first. Takes ownership of request->body and request->parse_arg in every case.
 * The flight waits for the token bucket (bounded queue), retries 429s within its deadline
 * after Retry-After and resets/5xx with jittered backoff, and fails fast while the circuit
 * is open. The waiter may be called before this returns (queue full, circuit open): the
 * caller must not touch the waiter's owner afterwards. */
void review_start(review_engine *engine, const review_kind *kind, review_request *request, review_waiter *waiter);

/* Refresh-ahead: starts a flight for request->key with no waiter, at the lowest priority —
 * only when no flight for that key runs, the circuit is closed, no 429 pause is on, no
 * review is queued and the token bucket has a token now; otherwise nothing is sent. The
 * verdict is cached as any other (a positive one replaces the entry, a negative one
 * evicts it); an error leaves the entry to its original expiry. Takes ownership of
 * request->body and parse_arg in every case. Returns true when a call was started. */
bool review_start_background(review_engine *engine, const review_kind *kind, review_request *request);

/* Flights currently running (queued or calling). */
size_t review_engine_flights(const review_engine *engine);

void review_engine_get_stats(const review_engine *engine, review_engine_stats *out);

#endif
