/* Unit tests for the review engine (review.c) on an injected clock, API call and timer: the
 * token bucket, 429 with Retry-After (that review's retry, the in-flight limit, the deadline),
 * the circuit breaker (open, fail fast, one probe, close), single-flight joins, deadlines in
 * the queue, refresh-ahead admission and bad answers. No sleeping: time is a number here. */
#include "concurrency_limit.h"
#include "review.h"
#include "unit.h"

#include <stdbool.h>
#include <stdlib.h>

/* ---- the world the engine sees ---- */

#define MAX_CALLS 64

typedef struct fake_call {
    int64_t timeout_ms;
    api_done_fn done;
    void *arg;
    bool answered;
    char body[32];
} fake_call;

typedef struct world {
    int64_t now;
    int64_t timer_at; /* -1: disarmed */
    fake_call calls[MAX_CALLS];
    size_t n_calls;
    bool refuse_posts;
} world;

static int64_t world_now(void *ctx)
{
    return ((world *)ctx)->now;
}

static int world_post(void *ctx, const char *path, const char *body, size_t body_len, int64_t timeout_ms,
                      api_done_fn done, void *arg)
{
    world *w = ctx;
    if (w->refuse_posts || w->n_calls == MAX_CALLS || strcmp(path, "/apis/test") != 0) return -1;
    fake_call *c = &w->calls[w->n_calls++];
    *c = (fake_call){.timeout_ms = timeout_ms, .done = done, .arg = arg};
    snprintf(c->body, sizeof(c->body), "%.*s", (int)body_len, body);
    return 0;
}

static void world_arm(void *ctx, int64_t delay_ms)
{
    world *w = ctx;
    w->timer_at = delay_ms < 0 ? -1 : w->now + delay_ms;
}

/* Moves the clock ms forward, firing the engine's timer at each moment it was armed for. */
static void advance(world *w, review_engine *engine, int64_t ms)
{
    int64_t until = w->now + ms;
    while (w->timer_at >= 0 && w->timer_at <= until) {
        w->now = w->timer_at;
        w->timer_at = -1;
        review_engine_on_timer(engine);
    }
    w->now = until;
}

/* Answers call i: error API_ERROR_NONE with body, or an error (http status, Retry-After). */
static void answer(world *w, size_t i, api_error error, long status, int retry_after_s, const char *body)
{
    if (i >= w->n_calls || w->calls[i].answered) {
        CHECK(!"answer: no such open call");
        return;
    }
    w->calls[i].answered = true;
    api_response r = {.error = error,
                      .http_status = status,
                      .retry_after_s = retry_after_s,
                      .body = body,
                      .body_len = body ? strlen(body) : 0,
                      .latency_s = 0.01,
                      .detail = "test"};
    w->calls[i].done(&r, w->calls[i].arg);
}

/* ---- one kind of review ---- */

/* "yes" → positive (value "id"), "no" → negative, anything else → a bad response. */
static void parse_yes_no(const char *body, size_t body_len, const void *parse_arg, unsigned char *value,
                         review_parsed *out)
{
    (void)parse_arg;
    if (body_len == 3 && memcmp(body, "yes", 3) == 0) {
        out->verdict = REVIEW_POSITIVE;
        memcpy(value, "id", 2);
        out->value_len = 2;
    } else if (body_len == 2 && memcmp(body, "no", 2) == 0) {
        out->verdict = REVIEW_NEGATIVE;
        out->value_len = 0;
        snprintf(out->reason, sizeof(out->reason), "denied");
    } else {
        out->verdict = REVIEW_ERROR;
        snprintf(out->reason, sizeof(out->reason), "not yes or no");
    }
}

typedef struct fixture {
    world w;
    review_metrics metrics;
    token_cache *cache;
    review_kind kind;
    review_engine *engine;
} fixture;

static review_limits limits_of(int64_t timeout_ms, double qps, double burst)
{
    return (review_limits){.timeout_ms = timeout_ms,
                           .qps = qps,
                           .burst = burst,
                           .max_pending = 100,
                           .circuit_failures = 5,
                           .circuit_cooldown_ms = 1000,
                           .retry_after_cap_s = 32};
}

static bool fixture_init(fixture *fx, const review_limits *limits)
{
    memset(fx, 0, sizeof(*fx));
    fx->w.timer_at = -1;
    fx->w.now = 1000000; /* any origin: the engine only uses differences */
    token_cache_options co = {.max_entries = 100};
    fx->cache = token_cache_new(&co);
    fx->kind = (review_kind){
        .name = "test", .api_path = "/apis/test", .cache = fx->cache, .metrics = &fx->metrics, .parse = parse_yes_no};
    review_io io = {.now_ms = world_now, .post = world_post, .arm_timer = world_arm, .ctx = &fx->w};
    fx->engine = review_engine_new_with_io(&io, limits);
    return fx->cache && fx->engine;
}

static void fixture_free(fixture *fx)
{
    review_engine_free(fx->engine);
    token_cache_free(fx->cache);
}

/* What one waiter was told. */
typedef struct box {
    review_waiter waiter;
    int told;
    review_verdict verdict;
    api_error error;
    int retry_after_s;
} box;

static void on_done(const review_outcome *o, void *arg)
{
    box *b = arg;
    b->told++;
    b->verdict = o->verdict;
    b->error = o->error;
    b->retry_after_s = o->retry_after_s;
}

static void box_init(box *b)
{
    memset(b, 0, sizeof(*b));
    b->waiter.done = on_done;
    b->waiter.arg = b;
}

static cache_key key_of(unsigned n)
{
    cache_key k;
    memset(&k, 0, sizeof(k));
    memcpy(k.bytes, &n, sizeof(n));
    memcpy(k.bytes + 16, &n, sizeof(n));
    return k;
}

static review_request request_of(unsigned n, int64_t positive_ttl_ms)
{
    review_request r = {.key = key_of(n),
                        .body = strdup("body"),
                        .body_len = 4,
                        .positive_ttl_ms = positive_ttl_ms,
                        .positive_ttl_cap_ms = 3600000,
                        .negative_ttl_ms = 5000};
    snprintf(r.token_id, sizeof(r.token_id), "t%u", n);
    return r;
}

static void start(fixture *fx, unsigned n, box *b)
{
    box_init(b);
    review_request r = request_of(n, 60000);
    review_start(fx->engine, &fx->kind, &r, &b->waiter);
}

static review_engine_stats stats(const fixture *fx)
{
    review_engine_stats s;
    review_engine_get_stats(fx->engine, &s);
    return s;
}

static token_cache_result cached(fixture *fx, unsigned n)
{
    cache_key k = key_of(n);
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t len;
    return token_cache_lookup(fx->cache, &k, fx->w.now, value, sizeof(value), &len, NULL);
}

/* ---- the tests ---- */

static void test_token_bucket(void)
{
    fixture fx;
    review_limits l = limits_of(10000, 10, 2); /* 10 calls/s, burst 2 */
    REQUIRE(fixture_init(&fx, &l));
    box b[5];
    for (unsigned i = 0; i < 5; i++) start(&fx, i + 1, &b[i]);
    CHECK_EQ_INT(fx.w.n_calls, 2); /* the burst */
    CHECK_EQ_INT(stats(&fx).queued, 3);
    CHECK(stats(&fx).rate_limited >= 1);
    CHECK_EQ_INT(fx.w.timer_at - fx.w.now, 100); /* the next token */
    advance(&fx.w, fx.engine, 99);
    CHECK_EQ_INT(fx.w.n_calls, 2);
    advance(&fx.w, fx.engine, 1);
    CHECK_EQ_INT(fx.w.n_calls, 3);
    advance(&fx.w, fx.engine, 200);
    CHECK_EQ_INT(fx.w.n_calls, 5);
    CHECK_EQ_INT(stats(&fx).queued, 0);
    CHECK_EQ_INT(fx.w.timer_at, -1); /* nothing waits: no timer */
    /* each call got what is left of its review's deadline */
    CHECK_EQ_INT(fx.w.calls[0].timeout_ms, 10000);
    CHECK_EQ_INT(fx.w.calls[4].timeout_ms, 10000 - 300);
    CHECK_STR(fx.w.calls[0].body, "body");
    for (size_t i = 0; i < 5; i++) answer(&fx.w, i, API_ERROR_NONE, 201, 0, i == 4 ? "no" : "yes");
    for (unsigned i = 0; i < 4; i++) {
        CHECK_EQ_INT(b[i].told, 1);
        CHECK_EQ_INT(b[i].verdict, REVIEW_POSITIVE);
        CHECK_EQ_INT(cached(&fx, i + 1), TOKEN_CACHE_HIT_POSITIVE);
    }
    CHECK_EQ_INT(b[4].verdict, REVIEW_NEGATIVE);
    CHECK_EQ_INT(cached(&fx, 5), TOKEN_CACHE_HIT_NEGATIVE);
    CHECK_EQ_INT(fx.metrics.api_calls, 5);
    CHECK_EQ_INT(review_engine_flights(fx.engine), 0);
    /* idle for a second: the bucket refills to its burst, not beyond */
    advance(&fx.w, fx.engine, 1000);
    box more[3];
    for (unsigned i = 0; i < 3; i++) start(&fx, 10 + i, &more[i]);
    CHECK_EQ_INT(fx.w.n_calls, 7);
    fixture_free(&fx);
}

static void test_single_flight(void)
{
    fixture fx;
    review_limits l = limits_of(10000, 100, 10);
    REQUIRE(fixture_init(&fx, &l));
    box first, second, third;
    start(&fx, 7, &first);
    box_init(&second);
    box_init(&third);
    cache_key k7 = key_of(7), k8 = key_of(8);
    CHECK(review_join(fx.engine, &fx.kind, &k7, &second.waiter, 0));
    CHECK(review_join(fx.engine, &fx.kind, &k7, &third.waiter, 0));
    box other;
    box_init(&other);
    CHECK(!review_join(fx.engine, &fx.kind, &k8, &other.waiter, 0));
    review_kind another = fx.kind; /* the same key of another kind is another flight */
    CHECK(!review_join(fx.engine, &another, &k7, &other.waiter, 0));
    CHECK_EQ_INT(fx.w.n_calls, 1);
    CHECK_EQ_INT(fx.metrics.coalesced, 2);
    CHECK_EQ_INT(review_engine_flights(fx.engine), 1);
    answer(&fx.w, 0, API_ERROR_NONE, 201, 0, "yes");
    CHECK_EQ_INT(first.told + second.told + third.told, 3);
    CHECK_EQ_INT(third.verdict, REVIEW_POSITIVE);
    CHECK_EQ_INT(other.told, 0);
    CHECK_EQ_INT(review_engine_flights(fx.engine), 0);
    CHECK(!review_join(fx.engine, &fx.kind, &k7, &other.waiter, 0)); /* over: the cache answers now */
    fixture_free(&fx);
}

static void test_429_retry_after(void)
{
    fixture fx;
    review_limits l = limits_of(5000, 100, 10);
    REQUIRE(fixture_init(&fx, &l));
    box a, b;
    start(&fx, 1, &a);
    answer(&fx.w, 0, API_ERROR_THROTTLED, 429, 2, NULL);
    CHECK_EQ_INT(a.told, 0); /* retried after its Retry-After, within its deadline */
    CHECK_EQ_INT(stats(&fx).throttled, 1);
    CHECK_EQ_INT(stats(&fx).concurrency_limit, 1); /* nothing else was in flight: 1 */
    CHECK(stats(&fx).circuit_open == 0);           /* a 429 is not a failure */
    /* Only the rejected review waits: another one is sent at once, within the limit. */
    start(&fx, 2, &b);
    CHECK_EQ_INT(fx.w.n_calls, 2);
    advance(&fx.w, fx.engine, 1999);
    CHECK_EQ_INT(fx.w.n_calls, 2); /* a's Retry-After has not passed */
    answer(&fx.w, 1, API_ERROR_NONE, 201, 0, "yes");
    CHECK_EQ_INT(b.verdict, REVIEW_POSITIVE);
    advance(&fx.w, fx.engine, 1);
    CHECK_EQ_INT(fx.w.n_calls, 3); /* now a is retried */
    CHECK_EQ_INT(stats(&fx).retries, 1);
    answer(&fx.w, 2, API_ERROR_NONE, 201, 0, "yes");
    CHECK_EQ_INT(a.verdict, REVIEW_POSITIVE);

    /* A Retry-After beyond the deadline: no retry, the client gets the API server's wait. */
    box c, d;
    start(&fx, 3, &c);
    answer(&fx.w, 3, API_ERROR_THROTTLED, 429, 9, NULL);
    CHECK_EQ_INT(c.told, 1);
    CHECK_EQ_INT(c.verdict, REVIEW_ERROR);
    CHECK_EQ_INT(c.error, API_ERROR_THROTTLED);
    CHECK_EQ_INT(c.retry_after_s, 9);
    CHECK_EQ_INT(fx.metrics.api_errors[API_ERROR_THROTTLED], 1);
    /* ... and a new review is still sent: the limit, not a pause, holds calls back. */
    start(&fx, 4, &d);
    CHECK_EQ_INT(fx.w.n_calls, 5);
    answer(&fx.w, 4, API_ERROR_NONE, 201, 0, "yes");
    CHECK_EQ_INT(d.verdict, REVIEW_POSITIVE);
    /* Retry-After is capped */
    box e;
    start(&fx, 5, &e);
    answer(&fx.w, 5, API_ERROR_THROTTLED, 429, 3600, NULL);
    CHECK_EQ_INT(e.retry_after_s, 32);
    fixture_free(&fx);
}

static void test_concurrency_limit_wiring(void)
{
    fixture fx;
    review_limits l = limits_of(5000, 1000, 100);
    REQUIRE(fixture_init(&fx, &l));
    box boxes[60];
    /* The gateway sits idle before the first burst: that time is no slow-start step. */
    advance(&fx.w, fx.engine, 5000);
    /* Slow start: 8 calls at once, then 32 one ramp step (CL_RAMP_MS) after the limit
     * filled, no answer needed. */
    for (int i = 0; i < 60; i++) start(&fx, (unsigned)(i + 1), &boxes[i]);
    CHECK_EQ_INT(fx.w.n_calls, 8);
    CHECK_EQ_INT(stats(&fx).in_flight, 8);
    CHECK(stats(&fx).concurrency_limited >= 1);
    CHECK_EQ_INT(fx.w.timer_at, fx.w.now + CL_RAMP_MS); /* the engine wakes for the step */
    advance(&fx.w, fx.engine, CL_RAMP_MS - 1);
    CHECK_EQ_INT(fx.w.n_calls, 8);
    advance(&fx.w, fx.engine, 1);
    CHECK_EQ_INT(fx.w.n_calls, 32);
    advance(&fx.w, fx.engine, CL_RAMP_MS);
    CHECK_EQ_INT(fx.w.n_calls, 60); /* 128 > 60: everything is out after two steps */
    /* Five answered, the sixth rejected: the limit becomes what the server holds. */
    for (int i = 0; i < 5; i++) answer(&fx.w, (size_t)i, API_ERROR_NONE, 201, 0, "yes");
    answer(&fx.w, 5, API_ERROR_THROTTLED, 429, 1, NULL);
    CHECK_EQ_INT(stats(&fx).in_flight, 54);
    CHECK_EQ_INT(stats(&fx).concurrency_limit, 54);
    CHECK_EQ_INT(stats(&fx).concurrency_limit_cuts, 1);
    /* While 54 run, the rejected one waits even after its Retry-After. */
    advance(&fx.w, fx.engine, 1000);
    CHECK_EQ_INT(fx.w.n_calls, 60);
    answer(&fx.w, 6, API_ERROR_NONE, 201, 0, "yes"); /* one seat frees: the retry goes */
    CHECK_EQ_INT(fx.w.n_calls, 61);
    for (size_t i = 7; i < 61; i++) answer(&fx.w, i, API_ERROR_NONE, 201, 0, "yes");
    for (int i = 0; i < 60; i++) CHECK_EQ_INT(boxes[i].verdict, REVIEW_POSITIVE);
    CHECK_EQ_INT(stats(&fx).in_flight, 0);
    fixture_free(&fx);
}

static void test_request_deadline(void)
{
    fixture fx;
    review_limits l = limits_of(5000, 1000, 100);
    REQUIRE(fixture_init(&fx, &l));
    /* A second stage (a SubjectAccessReview) brings the request's deadline: what is left of
     * --review-timeout, not a new one. */
    box a;
    box_init(&a);
    review_request rr = request_of(1, 60000);
    rr.deadline_ms = fx.w.now + 300;
    review_start(fx.engine, &fx.kind, &rr, &a.waiter);
    CHECK_EQ_INT(fx.w.n_calls, 1);
    CHECK(fx.w.calls[0].timeout_ms <= 300);
    answer(&fx.w, 0, API_ERROR_THROTTLED, 429, 1, NULL); /* a retry after 1 s would pass it */
    CHECK_EQ_INT(a.told, 1);
    CHECK_EQ_INT(a.error, API_ERROR_THROTTLED);
    /* A joiner with an earlier deadline brings the flight's forward. */
    box b, c;
    start(&fx, 2, &b);                              /* deadline now + 5 s */
    answer(&fx.w, 1, API_ERROR_HTTP, 503, 0, NULL); /* queued for a retry with backoff */
    box_init(&c);
    cache_key k2 = key_of(2);
    CHECK(review_join(fx.engine, &fx.kind, &k2, &c.waiter, fx.w.now + 50));
    advance(&fx.w, fx.engine, 60);
    CHECK_EQ_INT(b.told, 1);
    CHECK_EQ_INT(c.told, 1);
    CHECK_EQ_INT(c.verdict, REVIEW_ERROR);
    fixture_free(&fx);
}

static void test_circuit_breaker(void)
{
    fixture fx;
    review_limits l = limits_of(10000, 100, 10);
    l.circuit_failures = 2;
    l.circuit_cooldown_ms = 1000;
    REQUIRE(fixture_init(&fx, &l));
    box a;
    start(&fx, 1, &a);
    answer(&fx.w, 0, API_ERROR_NETWORK, 0, 0, NULL); /* failure 1: retried with backoff */
    CHECK_EQ_INT(a.told, 0);
    CHECK(fx.w.timer_at - fx.w.now >= 50 && fx.w.timer_at - fx.w.now <= 150); /* 100 ms, jittered */
    advance(&fx.w, fx.engine, 150);
    CHECK_EQ_INT(fx.w.n_calls, 2);
    answer(&fx.w, 1, API_ERROR_HTTP, 503, 0, NULL); /* failure 2: the circuit opens, no retry */
    CHECK_EQ_INT(a.told, 1);
    CHECK_EQ_INT(a.error, API_ERROR_HTTP);
    CHECK_EQ_INT(stats(&fx).circuit_opens, 1);
    CHECK_EQ_INT(stats(&fx).circuit_open, 1);
    /* Open: fail fast, no call, Retry-After = what is left of the cool-down. */
    box b;
    start(&fx, 2, &b);
    CHECK_EQ_INT(b.told, 1);
    CHECK_EQ_INT(b.retry_after_s, 1);
    CHECK_EQ_INT(stats(&fx).circuit_rejections, 1);
    CHECK_EQ_INT(fx.w.n_calls, 2);
    /* Cool-down over: exactly one probe goes; others wait for its outcome. */
    advance(&fx.w, fx.engine, 1000);
    box probe, waiting;
    start(&fx, 3, &probe);
    start(&fx, 4, &waiting);
    CHECK_EQ_INT(fx.w.n_calls, 3);
    CHECK_EQ_INT(waiting.told, 0);
    /* The probe fails: open again at once, the waiting review fails fast. */
    answer(&fx.w, 2, API_ERROR_NETWORK, 0, 0, NULL);
    CHECK_EQ_INT(probe.told, 1);
    CHECK_EQ_INT(waiting.told, 1);
    CHECK_EQ_INT(stats(&fx).circuit_opens, 2);
    /* Next cool-down: the probe succeeds, the circuit closes, the queue flows again. */
    advance(&fx.w, fx.engine, 1000);
    box p2, w2;
    start(&fx, 5, &p2);
    start(&fx, 6, &w2);
    CHECK_EQ_INT(fx.w.n_calls, 4);
    answer(&fx.w, 3, API_ERROR_NONE, 201, 0, "yes");
    CHECK_EQ_INT(p2.verdict, REVIEW_POSITIVE);
    CHECK_EQ_INT(stats(&fx).circuit_open, 0);
    CHECK_EQ_INT(fx.w.n_calls, 5); /* w2 sent as soon as the circuit closed */
    answer(&fx.w, 4, API_ERROR_NONE, 201, 0, "yes");
    CHECK_EQ_INT(w2.verdict, REVIEW_POSITIVE);
    /* A non-retryable answer (403) fails the review without a retry. */
    box c;
    start(&fx, 7, &c);
    answer(&fx.w, 5, API_ERROR_HTTP, 403, 0, NULL);
    CHECK_EQ_INT(c.told, 1);
    CHECK_EQ_INT(fx.w.n_calls, 6);
    fixture_free(&fx);
}

static void test_deadlines(void)
{
    fixture fx;
    review_limits l = limits_of(500, 1, 1); /* one call a second */
    REQUIRE(fixture_init(&fx, &l));
    box a, b;
    start(&fx, 1, &a);
    start(&fx, 2, &b); /* no token before 1 s: its 500 ms deadline passes in the queue */
    CHECK_EQ_INT(fx.w.n_calls, 1);
    advance(&fx.w, fx.engine, 499);
    CHECK_EQ_INT(b.told, 0);
    advance(&fx.w, fx.engine, 1);
    CHECK_EQ_INT(b.told, 1);
    CHECK_EQ_INT(b.error, API_ERROR_TIMEOUT);
    CHECK_EQ_INT(stats(&fx).queue_timeouts, 1);
    CHECK_EQ_INT(fx.w.n_calls, 1);
    answer(&fx.w, 0, API_ERROR_TIMEOUT, 0, 0, NULL);
    CHECK_EQ_INT(a.error, API_ERROR_TIMEOUT);
    fixture_free(&fx);

    /* A token that comes with less than 50 ms of the deadline left: no call is spent. */
    l = limits_of(140, 10, 1);
    REQUIRE(fixture_init(&fx, &l));
    start(&fx, 1, &a);
    start(&fx, 2, &b);
    advance(&fx.w, fx.engine, 100);
    CHECK_EQ_INT(b.told, 1);
    CHECK_EQ_INT(b.error, API_ERROR_TIMEOUT);
    CHECK_EQ_INT(fx.w.n_calls, 1);
    /* A 5xx whose backoff would end past the deadline is not retried. */
    answer(&fx.w, 0, API_ERROR_HTTP, 500, 0, NULL);
    advance(&fx.w, fx.engine, 40);
    CHECK_EQ_INT(a.told, 1);
    CHECK_EQ_INT(fx.w.n_calls, 1);
    fixture_free(&fx);

    /* A call that cannot be started fails its review at once. */
    l = limits_of(1000, 10, 1);
    REQUIRE(fixture_init(&fx, &l));
    fx.w.refuse_posts = true;
    start(&fx, 1, &a);
    CHECK_EQ_INT(a.told, 1);
    CHECK_EQ_INT(a.error, API_ERROR_NETWORK);
    CHECK_EQ_INT(review_engine_flights(fx.engine), 0);
    fixture_free(&fx);
}

static void test_queue_bound(void)
{
    fixture fx;
    review_limits l = limits_of(1000, 1, 1);
    l.max_pending = 2;
    REQUIRE(fixture_init(&fx, &l));
    box b[4];
    for (unsigned i = 0; i < 4; i++) start(&fx, i + 1, &b[i]); /* 1 calls, 2 wait, 1 refused */
    CHECK_EQ_INT(fx.w.n_calls, 1);
    CHECK_EQ_INT(b[3].told, 1);
    CHECK_EQ_INT(stats(&fx).queue_rejections, 1);
    advance(&fx.w, fx.engine, 1000);
    answer(&fx.w, 0, API_ERROR_NONE, 201, 0, "yes");
    CHECK_EQ_INT(review_engine_flights(fx.engine), 0);
    fixture_free(&fx);
}

static void test_background_refresh(void)
{
    fixture fx;
    review_limits l = limits_of(1000, 1, 1);
    REQUIRE(fixture_init(&fx, &l));
    review_request r = request_of(1, 60000);
    CHECK(review_start_background(fx.engine, &fx.kind, &r));
    CHECK_EQ_INT(fx.w.n_calls, 1);
    CHECK(r.body == NULL);
    /* a miss meanwhile joins the refresh */
    box joined;
    box_init(&joined);
    cache_key k1 = key_of(1);
    CHECK(review_join(fx.engine, &fx.kind, &k1, &joined.waiter, 0));
    /* the bucket is empty now: another refresh is not sent (and its body is freed) */
    review_request r2 = request_of(2, 60000);
    CHECK(!review_start_background(fx.engine, &fx.kind, &r2));
    CHECK(r2.body == NULL);
    CHECK_EQ_INT(stats(&fx).refreshes_started, 1);
    CHECK_EQ_INT(stats(&fx).refreshes_skipped, 1);
    answer(&fx.w, 0, API_ERROR_NONE, 201, 0, "yes");
    CHECK_EQ_INT(joined.verdict, REVIEW_POSITIVE);
    CHECK_EQ_INT(cached(&fx, 1), TOKEN_CACHE_HIT_POSITIVE);
    /* a bad answer is an error, counted, never cached */
    advance(&fx.w, fx.engine, 1000);
    box bad;
    start(&fx, 3, &bad);
    answer(&fx.w, 1, API_ERROR_NONE, 201, 0, "maybe");
    CHECK_EQ_INT(bad.verdict, REVIEW_ERROR);
    CHECK_EQ_INT(bad.error, API_ERROR_BAD_RESPONSE);
    CHECK_EQ_INT(fx.metrics.api_errors[API_ERROR_BAD_RESPONSE], 1);
    CHECK_EQ_INT(cached(&fx, 3), TOKEN_CACHE_MISS);
    fixture_free(&fx);
}

int main(void)
{
    RUN(test_token_bucket);
    RUN(test_single_flight);
    RUN(test_429_retry_after);
    RUN(test_concurrency_limit_wiring);
    RUN(test_request_deadline);
    RUN(test_circuit_breaker);
    RUN(test_deadlines);
    RUN(test_queue_bound);
    RUN(test_background_refresh);
    return UNIT_EXIT();
}
