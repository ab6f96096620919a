/* review.c owns in-flight reviews (flights) and how they reach the API server: the table
 * that makes concurrent misses share one API call, the token bucket and bounded queue in
 * front of the API server, retries (429 after Retry-After, resets and 5xx with jittered
 * backoff) within each review's deadline, the circuit breaker, and the path from an API
 * answer to a cached verdict and woken waiters.
 *
 * A flight is QUEUED (waiting for the bucket, a pause after 429, or its retry backoff) or
 * CALLING (an API call is running). Everything runs on the engine's loop; one timer wakes
 * the pump for the next thing that can happen (a token, a pause's end, a deadline). */
#include "review.h"

#include "concurrency_limit.h"
#include "fair_queue.h"
#include "log.h"
#include "util.h"

#include <event2/event.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FLIGHT_BUCKETS 1024 /* power of two */
#define RETRY_BASE_MS 100
#define RETRY_MAX_BACKOFF_MS 2000
#define DEADLINE_SLACK_MS 20 /* a retry needs at least this much time left to be worth it */
#define MIN_CALL_MS 50       /* a call with less time left than this is not started */

typedef enum { FLIGHT_QUEUED, FLIGHT_CALLING } flight_state;
typedef enum { CIRCUIT_CLOSED, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN } circuit_state;

typedef struct review_flight {
    struct review_flight *hash_next;
    fair_queue_item queue_item; /* in engine's queue while QUEUED */
    uint64_t flow;              /* whose flight: its share of the queue (review_request.flow) */
    review_engine *engine;
    const review_kind *kind;
    cache_key key;
    review_waiter *waiters, **waiters_tail;
    size_t n_waiters;
    void *parse_arg;
    void (*parse_arg_free)(void *);
    char *body; /* owned, wiped: it holds the token or the identity */
    size_t body_len;
    int64_t positive_ttl_ms, positive_ttl_cap_ms, negative_ttl_ms;
    int64_t deadline_ms;
    int64_t not_before_ms; /* retry backoff */
    int attempts;
    bool is_probe;          /* the one call let through a half-open circuit */
    bool throttled;         /* its last attempt got a 429: it waits for Retry-After (not_before_ms) */
    int64_t call_budget_ms; /* the deadline the running call was given */
    flight_state state;
    char token_id[9];
} review_flight;

struct review_engine {
    review_io io;        /* clock, API call, timer: the gateway's or a test's */
    api_client *client;  /* the gateway's io only */
    struct event *timer; /* the gateway's io only */
    review_limits limits;
    review_flight *buckets[FLIGHT_BUCKETS];
    size_t n_flights;
    fair_queue *queue; /* flights waiting to be sent, shared fairly between flows */
    double tokens;
    int64_t refilled_ms;
    /* Calls in flight and the adaptive limit on them (concurrency_limit.h): API Priority
     * and Fairness limits seats, and this learns how many the API server gives us. The
     * bucket above stays the ceiling (--apiserver-qps, --apiserver-burst). */
    size_t in_flight;
    concurrency_limit limit;
    int64_t timer_at_ms; /* when the timer is armed for; -1: disarmed */
    circuit_state circuit;
    int consecutive_failures;
    int64_t circuit_open_until_ms;
    bool probe_running;
    review_engine_stats stats;
};

static size_t flight_bucket(const cache_key *key)
{
    size_t h;
    memcpy(&h, key->bytes + 16, sizeof(h));
    return h & (FLIGHT_BUCKETS - 1);
}

static void pump(review_engine *engine);

static int64_t engine_now(const review_engine *engine)
{
    return engine->io.now_ms(engine->io.ctx);
}

/* ---- the gateway's io: the monotonic clock, api_client_post, a libevent timer ---------- */

static int64_t io_monotonic_ms(void *ctx)
{
    (void)ctx;
    return monotonic_ms();
}

static int io_api_client_post(void *ctx, const char *path, const char *body, size_t body_len, int64_t timeout_ms,
                              api_done_fn done, void *arg)
{
    review_engine *engine = ctx;
    return api_client_post(engine->client, path, body, body_len, timeout_ms, done, arg);
}

static void io_evtimer_arm(void *ctx, int64_t delay_ms)
{
    review_engine *engine = ctx;
    if (delay_ms < 0) {
        evtimer_del(engine->timer);
        return;
    }
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(engine->timer, &tv);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

void review_engine_on_timer(review_engine *engine)
{
    pump(engine);
}

/* The in-flight limit never needs to pass what the bucket can send within one deadline
 * (--apiserver-qps x --review-timeout, at least the burst). */
static double limit_ceiling(const review_limits *l)
{
    double c = l->qps * (double)l->timeout_ms / 1000.0;
    if (c < l->burst) c = l->burst;
    if (c < CL_INITIAL) c = CL_INITIAL;
    return c > 10000 ? 10000 : c;
}

/* An engine with limits (defaults filled in), a full bucket and an empty queue; its io is
 * set by the caller. */
static review_engine *engine_alloc(const review_limits *limits)
{
    review_engine *engine = calloc(1, sizeof(*engine));
    if (!engine) return NULL;
    engine->limits = *limits;
    if (engine->limits.qps <= 0) engine->limits.qps = 50;
    if (engine->limits.burst < 1) engine->limits.burst = 1;
    if (engine->limits.max_pending == 0) engine->limits.max_pending = 1;
    if (engine->limits.circuit_failures < 1) engine->limits.circuit_failures = 5;
    if (engine->limits.retry_after_cap_s < 1) engine->limits.retry_after_cap_s = 32;
    engine->tokens = engine->limits.burst;
    engine->timer_at_ms = -1;

    engine->queue = fair_queue_new(engine->limits.max_pending);
    if (!engine->queue) {
        free(engine);
        return NULL;
    }
    return engine;
}

review_engine *review_engine_new(api_client *client, struct event_base *base, const review_limits *limits)
{
    review_engine *engine = engine_alloc(limits);
    if (!engine) return NULL;
    engine->client = client;
    engine->timer = evtimer_new(base, on_timer, engine);
    if (!engine->timer) {
        fair_queue_free(engine->queue);
        free(engine);
        return NULL;
    }
    engine->io =
        (review_io){.now_ms = io_monotonic_ms, .post = io_api_client_post, .arm_timer = io_evtimer_arm, .ctx = engine};
    engine->refilled_ms = engine_now(engine);
    concurrency_limit_init(&engine->limit, limit_ceiling(&engine->limits), engine->refilled_ms);
    return engine;
}

review_engine *review_engine_new_with_io(const review_io *io, const review_limits *limits)
{
    review_engine *engine = engine_alloc(limits);
    if (!engine) return NULL;
    engine->io = *io;
    engine->refilled_ms = engine_now(engine);
    concurrency_limit_init(&engine->limit, limit_ceiling(&engine->limits), engine->refilled_ms);
    return engine;
}

static void flight_free(review_flight *f)
{
    free_secret(f->body, f->body_len);
    if (f->parse_arg_free) f->parse_arg_free(f->parse_arg);
    free(f);
}

void review_engine_free(review_engine *engine)
{
    if (!engine) return;
    /* The queue first: freeing it touches the queued flights' embedded items. */
    fair_queue_free(engine->queue);
    for (size_t b = 0; b < FLIGHT_BUCKETS; b++) {
        review_flight *f = engine->buckets[b];
        while (f) {
            review_flight *next = f->hash_next;
            flight_free(f);
            f = next;
        }
    }
    if (engine->timer) event_free(engine->timer);
    free(engine);
}

size_t review_engine_flights(const review_engine *engine)
{
    return engine->n_flights;
}

void review_engine_get_stats(const review_engine *engine, review_engine_stats *out)
{
    *out = engine->stats;
    out->queued = fair_queue_length(engine->queue);
    out->rate_qps = engine->limits.qps;
    out->in_flight = engine->in_flight;
    out->concurrency_limit = concurrency_limit_get(&engine->limit);
    out->concurrency_limit_cuts = engine->limit.throttled + engine->limit.latency_cuts;
    out->circuit_open = engine->circuit != CIRCUIT_CLOSED;
}

static review_flight **flight_link(review_engine *engine, const review_kind *kind, const cache_key *key)
{
    review_flight **link = &engine->buckets[flight_bucket(key)];
    while (*link && ((*link)->kind != kind || memcmp((*link)->key.bytes, key->bytes, CACHE_KEY_BYTES) != 0))
        link = &(*link)->hash_next;
    return link;
}

bool review_join(review_engine *engine, const review_kind *kind, const cache_key *key, review_waiter *waiter,
                 int64_t deadline_ms)
{
    review_flight *flight = *flight_link(engine, kind, key);
    if (!flight) return false;
    /* A waiter with an earlier deadline brings the flight's forward: every waiter has its
     * answer by its own deadline (a call already running keeps its budget). */
    if (deadline_ms > 0 && deadline_ms < flight->deadline_ms) {
        flight->deadline_ms = deadline_ms;
        /* Waiting in the queue: wake up by then (no callback may run from inside a join). */
        if (flight->state == FLIGHT_QUEUED && (engine->timer_at_ms < 0 || deadline_ms < engine->timer_at_ms)) {
            int64_t delay = deadline_ms - engine_now(engine);
            if (delay < 1) delay = 1;
            engine->io.arm_timer(engine->io.ctx, delay);
            engine->timer_at_ms = engine_now(engine) + delay;
        }
    }
    waiter->next = NULL;
    *flight->waiters_tail = waiter;
    flight->waiters_tail = &waiter->next;
    flight->n_waiters++;
    kind->metrics->coalesced++;
    return true;
}

/* ---- the queue ------------------------------------------------------------------------ */

#define FLIGHT_OF_ITEM(item) ((review_flight *)((char *)(item)-offsetof(review_flight, queue_item)))

static review_flight *queue_first(const review_engine *engine)
{
    fair_queue_item *it = fair_queue_first(engine->queue);
    return it ? FLIGHT_OF_ITEM(it) : NULL;
}

/* The queued flight after f (flow by flow); fetch it before f leaves the queue. */
static review_flight *queue_after(const review_engine *engine, const review_flight *f)
{
    fair_queue_item *it = fair_queue_iter_next(engine->queue, &f->queue_item);
    return it ? FLIGHT_OF_ITEM(it) : NULL;
}

static bool flight_ready(const fair_queue_item *item, void *now_ms)
{
    return FLIGHT_OF_ITEM(item)->not_before_ms <= *(const int64_t *)now_ms;
}

/* Back in the queue after a failed attempt: it was admitted already, so it always fits. */
static void queue_push(review_engine *engine, review_flight *f)
{
    f->state = FLIGHT_QUEUED;
    fair_queue_item *pushed_out = NULL;
    fair_queue_push(engine->queue, &f->queue_item, f->flow, true, &pushed_out);
}

static void queue_remove(review_engine *engine, review_flight *f)
{
    BUG_ON(f->state != FLIGHT_QUEUED);
    fair_queue_remove(engine->queue, &f->queue_item);
}

/* ---- finishing ------------------------------------------------------------------------ */

/* Removes the flight from the table, then wakes every waiter with outcome. Waiters may
 * start new flights (even for the same key) from their callbacks. Frees the flight. */
static void flight_finish(review_flight *flight, const review_outcome *outcome)
{
    review_engine *engine = flight->engine;
    review_flight **link = flight_link(engine, flight->kind, &flight->key);
    BUG_ON(*link != flight || engine->n_flights == 0); /* a flight is in the table until it finishes */
    *link = flight->hash_next;
    engine->n_flights--;
    review_waiter *w = flight->waiters;
    while (w) {
        review_waiter *next = w->next; /* w may be freed by its callback */
        w->done(outcome, w->arg);
        w = next;
    }
    flight_free(flight);
}

/* Fails a flight that got no verdict. error is what the client's 503 reflects. */
static void flight_fail(review_flight *f, api_error error, int retry_after_s, const char *reason)
{
    review_outcome outcome = {.verdict = REVIEW_ERROR,
                              .error = error,
                              .retry_after_s = retry_after_s > 0 ? retry_after_s : 1,
                              .reason = reason};
    flight_finish(f, &outcome);
}

/* ---- the circuit breaker ---------------------------------------------------------------- */

static void circuit_success(review_engine *engine)
{
    engine->consecutive_failures = 0;
    if (engine->circuit != CIRCUIT_CLOSED) log_info("API server answered again; circuit closed", NULL);
    engine->circuit = CIRCUIT_CLOSED;
}

static void circuit_failure(review_engine *engine, int64_t now)
{
    engine->consecutive_failures++;
    bool reopen = engine->circuit == CIRCUIT_HALF_OPEN;
    if (reopen ||
        (engine->circuit == CIRCUIT_CLOSED && engine->consecutive_failures >= engine->limits.circuit_failures)) {
        engine->circuit = CIRCUIT_OPEN;
        engine->circuit_open_until_ms = now + engine->limits.circuit_cooldown_ms;
        engine->stats.circuit_opens++;
        char n[32];
        snprintf(n, sizeof(n), "%d", engine->consecutive_failures);
        log_warn("API server failing; circuit open: reviews fail fast until a probe succeeds",
                 LOG_NUMBER "consecutive_failures", n, NULL);
    }
}

/* ---- calling ------------------------------------------------------------------------- */

static void on_api_done(const api_response *response, void *arg);

static void flight_call(review_engine *engine, review_flight *f, int64_t now)
{
    f->state = FLIGHT_CALLING;
    f->throttled = false;
    f->attempts++;
    if (f->attempts > 1) engine->stats.retries++;
    if (engine->circuit == CIRCUIT_HALF_OPEN) {
        f->is_probe = true;
        engine->probe_running = true;
    }
    int64_t left = f->deadline_ms - now;
    f->call_budget_ms = left;
    engine->in_flight++;
    if (engine->io.post(engine->io.ctx, f->kind->api_path, f->body, f->body_len, left > 1 ? left : 1, on_api_done, f) !=
        0) {
        engine->in_flight--;
        if (f->is_probe) engine->probe_running = false;
        f->kind->metrics->api_errors[API_ERROR_NETWORK]++;
        flight_fail(f, API_ERROR_NETWORK, 1, "API call could not be started");
    }
}

static int64_t jittered_backoff_ms(int attempt)
{
    int64_t base = RETRY_BASE_MS << (attempt > 5 ? 5 : attempt - 1);
    if (base > RETRY_MAX_BACKOFF_MS) base = RETRY_MAX_BACKOFF_MS;
    unsigned char r = 0;
    RAND_bytes(&r, 1);
    return base / 2 + (base * r) / 255; /* 0.5x .. 1.5x */
}

/* Parses a 2xx answer into a verdict, caches it, and finishes the flight. */
static void flight_answered(review_flight *flight, const api_response *response)
{
    const review_kind *kind = flight->kind;
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    review_parsed parsed = {.verdict = REVIEW_ERROR};
    kind->parse(response->body, response->body_len, flight->parse_arg, value, &parsed);
    if (parsed.unrepresentable) {
        kind->metrics->unrepresentable++;
        log_warn("identity cannot be represented; refused and cached as unauthenticated", "kind", kind->name,
                 "token_id", flight->token_id, NULL);
    }
    if (parsed.verdict == REVIEW_ERROR) {
        kind->metrics->api_errors[API_ERROR_BAD_RESPONSE]++;
        log_warn("review failed", "kind", kind->name, "token_id", flight->token_id, "reason", "bad_response", "detail",
                 parsed.reason, NULL);
        flight_fail(flight, API_ERROR_BAD_RESPONSE, 1, parsed.reason);
        return;
    }
    if (parsed.verdict == REVIEW_POSITIVE && kind->vet &&
        !kind->vet(kind->ctx, value, &parsed.value_len, parsed.reason, sizeof(parsed.reason)))
        parsed.verdict = REVIEW_NEGATIVE; /* cached and told as the API server's own "no" */
    review_outcome outcome = {.verdict = parsed.verdict,
                              .error = API_ERROR_NONE,
                              .value = value,
                              .value_len = parsed.value_len,
                              .reason = parsed.reason};
    int64_t now = engine_now(flight->engine);
    bool negative = parsed.verdict == REVIEW_NEGATIVE;
    int64_t ttl = flight->negative_ttl_ms;
    if (!negative) {
        ttl = flight->positive_ttl_ms;
        if (kind->positive_ttl) ttl = kind->positive_ttl(kind->ctx, value, parsed.value_len, ttl);
        if (ttl > flight->positive_ttl_cap_ms) ttl = flight->positive_ttl_cap_ms;
    }
    if (ttl > 0) token_cache_insert(kind->cache, &flight->key, negative, value, parsed.value_len, now + ttl, now);
    flight_finish(flight, &outcome);
}

static bool retryable_status(long status)
{
    return status == 500 || status == 502 || status == 503 || status == 504;
}

static void on_api_done(const api_response *response, void *arg)
{
    review_flight *flight = arg;
    review_engine *engine = flight->engine;
    const review_kind *kind = flight->kind;
    int64_t now = engine_now(engine);
    kind->metrics->api_calls++;
    metrics_histogram_observe(&kind->metrics->api_latency, response->latency_s);
    if (flight->is_probe) engine->probe_running = false;
    if (engine->in_flight) engine->in_flight--;
    /* Every answer but a 429 teaches the limit the API server's latency. */
    if (response->error != API_ERROR_THROTTLED && response->http_status)
        concurrency_limit_answered(&engine->limit, response->latency_s * 1000.0, engine->in_flight, now);

    if (response->error == API_ERROR_NONE) {
        circuit_success(engine);
        flight_answered(flight, response);
        pump(engine);
        return;
    }

    int retry_after = response->retry_after_s > 0 ? response->retry_after_s : 1;
    if (retry_after > engine->limits.retry_after_cap_s) retry_after = engine->limits.retry_after_cap_s;
    int64_t retry_at = -1;
    if (response->error == API_ERROR_THROTTLED) {
        /* API Priority and Fairness rejected this call: it alone waits for Retry-After (as
         * client-go retries a 429), and the in-flight limit drops to the calls the server
         * is evidently holding, so the others go on without overrunning its seats again.
         * Not a circuit failure: the API server is up and telling us how to behave. */
        retry_at = now + retry_after * 1000;
        flight->throttled = true;
        concurrency_limit_throttled(&engine->limit, engine->in_flight, now);
        engine->stats.throttled++;
    } else {
        bool retryable = response->error == API_ERROR_NETWORK ||
                         (response->error == API_ERROR_HTTP && retryable_status(response->http_status));
        /* A timeout is evidence against the API server only if the call had a fair share of
         * the review's time; a call squeezed in at the end of its deadline says nothing. */
        bool fair_timeout =
            response->error == API_ERROR_TIMEOUT && flight->call_budget_ms * 2 >= engine->limits.timeout_ms;
        if (response->error == API_ERROR_NETWORK || fair_timeout ||
            (response->error == API_ERROR_HTTP && retryable_status(response->http_status)))
            circuit_failure(engine, now);
        if (retryable && engine->circuit == CIRCUIT_CLOSED) retry_at = now + jittered_backoff_ms(flight->attempts);
    }
    if (retry_at >= 0 && retry_at + DEADLINE_SLACK_MS < flight->deadline_ms) {
        flight->not_before_ms = retry_at;
        queue_push(engine, flight);
        log_debug("review will be retried", "kind", kind->name, "token_id", flight->token_id, "reason",
                  api_error_name(response->error), "detail", response->detail, NULL);
        pump(engine);
        return;
    }
    kind->metrics->api_errors[response->error]++;
    log_warn("review failed", "kind", kind->name, "token_id", flight->token_id, "reason",
             api_error_name(response->error), "detail", response->detail, NULL);
    flight_fail(flight, response->error, response->error == API_ERROR_THROTTLED ? retry_after : 1,
                api_error_name(response->error));
    pump(engine);
}

/* ---- the pump --------------------------------------------------------------------------- */

/* Fails every queued flight (circuit open). */
static void fail_queue(review_engine *engine, const char *reason, int retry_after_s)
{
    while (queue_first(engine)) {
        review_flight *f = queue_first(engine);
        queue_remove(engine, f);
        engine->stats.circuit_rejections++;
        flight_fail(f, API_ERROR_NETWORK, retry_after_s, reason);
    }
}

/* Adds the tokens earned since the last refill (none during a 429 pause), up to the burst. */
static void bucket_refill(review_engine *engine, int64_t now)
{
    double elapsed = (double)(now - engine->refilled_ms);
    engine->tokens += elapsed * engine->limits.qps / 1000.0;
    if (engine->tokens > engine->limits.burst) engine->tokens = engine->limits.burst;
    engine->refilled_ms = now;
}

/* Deadlines first: a queued review that can no longer be answered in time is answered now. */
static void expire_queued(review_engine *engine, int64_t now)
{
    for (review_flight *f = queue_first(engine), *next; f; f = next) {
        next = queue_after(engine, f);
        if (f->deadline_ms > now) continue;
        queue_remove(engine, f);
        engine->stats.queue_timeouts++;
        if (f->throttled && f->not_before_ms > now)
            flight_fail(f, API_ERROR_THROTTLED, (int)((f->not_before_ms - now + 999) / 1000),
                        "API server asked to retry later");
        else
            flight_fail(f, API_ERROR_TIMEOUT, 1, "deadline passed while waiting to call the API server");
        next = queue_first(engine); /* callbacks may have changed the queue: rescan */
    }
}

/* An open circuit becomes half-open when its cool-down is over; while open, everything
 * queued fails fast. */
static void circuit_settle(review_engine *engine, int64_t now)
{
    if (engine->circuit == CIRCUIT_OPEN && now >= engine->circuit_open_until_ms) engine->circuit = CIRCUIT_HALF_OPEN;
    if (engine->circuit == CIRCUIT_OPEN) {
        int left_s = (int)((engine->circuit_open_until_ms - now + 999) / 1000);
        fail_queue(engine, "circuit open", left_s);
    }
}

/* Calls the queued flights whose backoff is over, flows taking turns, while the bucket has
 * tokens (one probe at a time through a half-open circuit). Returns when the bucket's next
 * token is due if that is what stopped it, else -1. */
static int64_t send_ready(review_engine *engine, int64_t now)
{
    while (queue_first(engine)) {
        if (engine->circuit == CIRCUIT_HALF_OPEN && engine->probe_running) break;
        if (engine->in_flight >= concurrency_limit_get(&engine->limit)) {
            /* The in-flight limit holds the rest back; in slow start it grows with time. */
            int64_t grow_at =
                concurrency_limit_demand(&engine->limit, engine->in_flight, fair_queue_length(engine->queue), now);
            if (grow_at == 0) continue;
            engine->stats.concurrency_limited++;
            return grow_at; /* -1: an answer will pump again */
        }
        /* Flows take turns (fair_queue): a flood from one flow gets one call in n. */
        fair_queue_item *next_item = fair_queue_next(engine->queue, flight_ready, &now);
        if (!next_item) break;
        review_flight *ready = FLIGHT_OF_ITEM(next_item);
        if (engine->tokens < 1.0) {
            engine->stats.rate_limited++;
            return now + (int64_t)ceil((1.0 - engine->tokens) * 1000.0 / engine->limits.qps);
        }
        fair_queue_take(engine->queue, next_item);
        if (ready->deadline_ms - now < MIN_CALL_MS) {
            /* Too late to be answered in time: fail it here instead of spending an API
             * call (and an API Priority and Fairness seat) that would time out. */
            engine->stats.queue_timeouts++;
            flight_fail(ready, API_ERROR_TIMEOUT, 1, "too little time left to call the API server");
            continue;
        }
        engine->tokens -= 1.0;
        flight_call(engine, ready, now);
        if (engine->circuit == CIRCUIT_HALF_OPEN) break; /* one probe at a time */
    }
    return -1;
}

/* Arms the timer for the earliest of: a token (wake, or -1), the pause's end, a backoff, a
 * deadline, the circuit's cool-down; disarms it when nothing waits. */
static void arm_next_wake(review_engine *engine, int64_t now, int64_t wake)
{
    for (review_flight *f = queue_first(engine); f; f = queue_after(engine, f)) {
        int64_t t = f->deadline_ms;
        if (f->not_before_ms > now && f->not_before_ms < t) t = f->not_before_ms;
        if (wake < 0 || t < wake) wake = t;
    }
    if (queue_first(engine) && engine->circuit == CIRCUIT_OPEN && (wake < 0 || engine->circuit_open_until_ms < wake))
        wake = engine->circuit_open_until_ms;
    if (wake < 0) {
        engine->io.arm_timer(engine->io.ctx, -1);
        engine->timer_at_ms = -1;
        return;
    }
    int64_t delay = wake - now;
    if (delay < 1) delay = 1;
    engine->io.arm_timer(engine->io.ctx, delay);
    engine->timer_at_ms = now + delay;
}

/* Sends what may be sent now, fails what has expired, and arms the timer for the next
 * moment something can change. Re-entrant safe: callbacks it triggers may call it. */
static void pump(review_engine *engine)
{
    int64_t now = engine_now(engine);
    bucket_refill(engine, now);
    expire_queued(engine, now);
    circuit_settle(engine, now);
    int64_t wake = send_ready(engine, now);
    arm_next_wake(engine, now, wake);
}

/* A new flight for request, taking its body and parse argument, with no waiter yet, in the
 * flight table (so callers that miss meanwhile join it). NULL when memory runs out (the
 * request keeps what it had). */
static review_flight *flight_new(review_engine *engine, const review_kind *kind, review_request *request, int64_t now)
{
    review_flight *flight = calloc(1, sizeof(*flight));
    if (!flight) return NULL;
    flight->engine = engine;
    flight->kind = kind;
    flight->key = request->key;
    flight->parse_arg = request->parse_arg;
    flight->parse_arg_free = request->parse_arg_free;
    flight->body = request->body;
    flight->body_len = request->body_len;
    request->body = NULL;
    request->parse_arg = NULL;
    flight->positive_ttl_ms = request->positive_ttl_ms;
    flight->positive_ttl_cap_ms = request->positive_ttl_cap_ms;
    flight->negative_ttl_ms = request->negative_ttl_ms;
    /* One deadline for the whole request (TokenReview, SubjectAccessReview, queueing):
     * the request's own when it brings one, never later than --review-timeout from now. */
    flight->deadline_ms = now + engine->limits.timeout_ms;
    if (request->deadline_ms > 0 && request->deadline_ms < flight->deadline_ms)
        flight->deadline_ms = request->deadline_ms;
    memcpy(flight->token_id, request->token_id, sizeof(flight->token_id));
    flight->waiters = NULL;
    flight->waiters_tail = &flight->waiters;
    review_flight **bucket = &engine->buckets[flight_bucket(&request->key)];
    flight->hash_next = *bucket;
    *bucket = flight;
    engine->n_flights++;
    return flight;
}

static void request_discard(review_request *request);

void review_start(review_engine *engine, const review_kind *kind, review_request *request, review_waiter *waiter)
{
    int64_t now = engine_now(engine);
    review_flight *flight = flight_new(engine, kind, request, now);
    if (!flight) {
        request_discard(request);
        review_outcome outcome = {
            .verdict = REVIEW_ERROR, .error = API_ERROR_NETWORK, .retry_after_s = 1, .reason = "out of memory"};
        waiter->done(&outcome, waiter->arg);
        return;
    }
    waiter->next = NULL;
    flight->waiters = waiter;
    flight->waiters_tail = &waiter->next;
    flight->n_waiters = 1;

    if (engine->circuit == CIRCUIT_OPEN && now < engine->circuit_open_until_ms) {
        engine->stats.circuit_rejections++;
        flight_fail(flight, API_ERROR_NETWORK, (int)((engine->circuit_open_until_ms - now + 999) / 1000),
                    "circuit open");
        return;
    }
    /* A full queue admits a flight whose flow holds less than its fair share, pushing out
     * the newest flight of the longest flow (fair_queue.h). */
    flight->flow = request->flow;
    flight->state = FLIGHT_QUEUED;
    fair_queue_item *pushed_out = NULL;
    switch (fair_queue_push(engine->queue, &flight->queue_item, flight->flow, false, &pushed_out)) {
    case FAIR_QUEUE_ADMITTED: break;
    case FAIR_QUEUE_ADMITTED_PUSHED_OUT:
        engine->stats.queue_rejections++;
        engine->stats.queue_pushed_out++;
        flight_fail(FLIGHT_OF_ITEM(pushed_out), API_ERROR_NETWORK, 1, "review queue full");
        break;
    case FAIR_QUEUE_FULL:
    case FAIR_QUEUE_NO_MEMORY:
        engine->stats.queue_rejections++;
        if (pushed_out) flight_fail(FLIGHT_OF_ITEM(pushed_out), API_ERROR_NETWORK, 1, "review queue full");
        flight_fail(flight, API_ERROR_NETWORK, 1, "review queue full");
        return;
    }
    pump(engine);
}

/* Drops the body (wiped) and parse argument of a request no flight took. */
static void request_discard(review_request *request)
{
    free_secret(request->body, request->body_len);
    request->body = NULL;
    if (request->parse_arg_free) request->parse_arg_free(request->parse_arg);
    request->parse_arg = NULL;
}

bool review_start_background(review_engine *engine, const review_kind *kind, review_request *request)
{
    int64_t now = engine_now(engine);
    pump(engine); /* refills the bucket and settles the circuit's state for now */
    if (*flight_link(engine, kind, &request->key) || engine->circuit != CIRCUIT_CLOSED || queue_first(engine) ||
        engine->tokens < 1.0 || engine->in_flight >= concurrency_limit_get(&engine->limit)) {
        engine->stats.refreshes_skipped++;
        request_discard(request);
        return false;
    }
    review_flight *flight = flight_new(engine, kind, request, now);
    if (!flight) {
        engine->stats.refreshes_skipped++;
        request_discard(request);
        return false;
    }
    engine->stats.refreshes_started++;
    engine->tokens -= 1.0;
    flight_call(engine, flight, now);
    return true;
}
