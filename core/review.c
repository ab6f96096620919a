/* review.c owns in-flight reviews (flights): the table that makes concurrent misses share
 * one API call, and the path from an API answer to a cached verdict and woken waiters. */
#include "review.h"

#include "log.h"

#include <event2/event.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FLIGHT_BUCKETS 1024 /* power of two */

typedef struct review_flight {
    struct review_flight *hash_next;
    review_engine *engine;
    const review_kind *kind;
    cache_key key;
    review_waiter *waiters, **waiters_tail;
    size_t n_waiters;
    void *parse_arg;
    void (*parse_arg_free)(void *);
    int64_t positive_ttl_ms, positive_ttl_cap_ms, negative_ttl_ms;
    char token_id[9];
    struct event *failed_start; /* set when the API call could not start */
} review_flight;

struct review_engine {
    api_client *client;
    review_flight *buckets[FLIGHT_BUCKETS];
    size_t n_flights;
};

static size_t flight_bucket(const cache_key *key)
{
    size_t h;
    memcpy(&h, key->bytes + 16, sizeof(h));
    return h & (FLIGHT_BUCKETS - 1);
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

review_engine *review_engine_new(api_client *client)
{
    review_engine *engine = calloc(1, sizeof(*engine));
    if (engine) engine->client = client;
    return engine;
}

void review_engine_free(review_engine *engine)
{
    if (!engine) return;
    for (size_t b = 0; b < FLIGHT_BUCKETS; b++) {
        review_flight *f = engine->buckets[b];
        while (f) {
            review_flight *next = f->hash_next;
            if (f->failed_start) event_free(f->failed_start);
            if (f->parse_arg_free) f->parse_arg_free(f->parse_arg);
            free(f);
            f = next;
        }
    }
    free(engine);
}

size_t review_engine_flights(const review_engine *engine)
{
    return engine->n_flights;
}

static review_flight **flight_link(review_engine *engine, const review_kind *kind, const cache_key *key)
{
    review_flight **link = &engine->buckets[flight_bucket(key)];
    while (*link && ((*link)->kind != kind || memcmp((*link)->key.bytes, key->bytes, CACHE_KEY_BYTES) != 0))
        link = &(*link)->hash_next;
    return link;
}

bool review_join(review_engine *engine, const review_kind *kind, const cache_key *key, review_waiter *waiter)
{
    review_flight *flight = *flight_link(engine, kind, key);
    if (!flight) return false;
    waiter->next = NULL;
    *flight->waiters_tail = waiter;
    flight->waiters_tail = &waiter->next;
    flight->n_waiters++;
    kind->metrics->coalesced++;
    return true;
}

/* Removes the flight from the table, then wakes every waiter with outcome. Waiters may
 * start new flights (even for the same key) from their callbacks. Frees the flight. */
static void flight_finish(review_flight *flight, const review_outcome *outcome)
{
    review_engine *engine = flight->engine;
    review_flight **link = flight_link(engine, flight->kind, &flight->key);
    if (*link == flight) *link = flight->hash_next;
    engine->n_flights--;
    review_waiter *w = flight->waiters;
    while (w) {
        review_waiter *next = w->next; /* w may be freed by its callback */
        w->done(outcome, w->arg);
        w = next;
    }
    if (flight->failed_start) event_free(flight->failed_start);
    if (flight->parse_arg_free) flight->parse_arg_free(flight->parse_arg);
    free(flight);
}

static void on_api_done(const api_response *response, void *arg)
{
    review_flight *flight = arg;
    const review_kind *kind = flight->kind;
    kind->metrics->api_calls++;
    metrics_histogram_observe(&kind->metrics->api_latency, response->latency_s);

    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    review_parsed parsed = {.verdict = REVIEW_ERROR};
    review_outcome outcome = {.verdict = REVIEW_ERROR, .error = response->error, .retry_after_s = 1};
    if (response->error == API_ERROR_NONE) {
        kind->parse(response->body, response->body_len, flight->parse_arg, value, &parsed);
        outcome.verdict = parsed.verdict;
        outcome.reason = parsed.reason;
        if (parsed.verdict == REVIEW_ERROR) outcome.error = API_ERROR_BAD_RESPONSE;
    }
    if (outcome.verdict == REVIEW_ERROR) {
        kind->metrics->api_errors[outcome.error]++;
        if (response->error == API_ERROR_THROTTLED && response->retry_after_s > 0)
            outcome.retry_after_s = response->retry_after_s;
        log_warn("review failed", "kind", kind->name, "token_id", flight->token_id, "reason",
                 api_error_name(outcome.error), "detail",
                 response->error == API_ERROR_NONE ? parsed.reason : response->detail, NULL);
    } else {
        int64_t now = monotonic_ms();
        bool negative = outcome.verdict == REVIEW_NEGATIVE;
        outcome.value = value;
        outcome.value_len = parsed.value_len;
        int64_t ttl = flight->negative_ttl_ms;
        if (!negative) {
            ttl = flight->positive_ttl_ms;
            if (kind->positive_ttl) ttl = kind->positive_ttl(kind->ctx, value, parsed.value_len, ttl);
            if (ttl > flight->positive_ttl_cap_ms) ttl = flight->positive_ttl_cap_ms;
        }
        if (ttl > 0)
            token_cache_insert(kind->cache, &flight->key, negative, outcome.value, outcome.value_len, now + ttl, now);
        log_debug("review answered", "kind", kind->name, "token_id", flight->token_id, "verdict",
                  negative ? "negative" : "positive", NULL);
    }
    flight_finish(flight, &outcome);
}

static void on_failed_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    review_flight *flight = arg;
    flight->kind->metrics->api_errors[API_ERROR_NETWORK]++;
    review_outcome outcome = {.verdict = REVIEW_ERROR, .error = API_ERROR_NETWORK, .retry_after_s = 1,
                              .reason = "API call could not be started"};
    flight_finish(flight, &outcome);
}

int review_start(review_engine *engine, const review_kind *kind, review_request *request, review_waiter *waiter)
{
    review_flight *flight = calloc(1, sizeof(*flight));
    if (!flight) {
        /* No memory for even the flight: answer the waiter now with an error. */
        OPENSSL_cleanse(request->body, request->body_len);
        free(request->body);
        if (request->parse_arg_free) request->parse_arg_free(request->parse_arg);
        review_outcome outcome = {.verdict = REVIEW_ERROR, .error = API_ERROR_NETWORK, .retry_after_s = 1,
                                  .reason = "out of memory"};
        waiter->done(&outcome, waiter->arg);
        return 0;
    }
    flight->engine = engine;
    flight->kind = kind;
    flight->key = request->key;
    flight->parse_arg = request->parse_arg;
    flight->parse_arg_free = request->parse_arg_free;
    flight->positive_ttl_ms = request->positive_ttl_ms;
    flight->positive_ttl_cap_ms = request->positive_ttl_cap_ms;
    flight->negative_ttl_ms = request->negative_ttl_ms;
    memcpy(flight->token_id, request->token_id, sizeof(flight->token_id));
    waiter->next = NULL;
    flight->waiters = waiter;
    flight->waiters_tail = &waiter->next;
    flight->n_waiters = 1;

    review_flight **bucket = &engine->buckets[flight_bucket(&request->key)];
    flight->hash_next = *bucket;
    *bucket = flight;
    engine->n_flights++;

    char *body = request->body;
    request->body = NULL;
    if (api_client_post(engine->client, kind->api_path, body, request->body_len, on_api_done, flight) != 0) {
        /* Keep the flight (so joiners share the failure) and fail it on the next turn. */
        flight->failed_start = evtimer_new(api_client_base(engine->client), on_failed_start, flight);
        struct timeval now = {0, 0};
        if (flight->failed_start) evtimer_add(flight->failed_start, &now);
        else on_failed_start(-1, 0, flight);
    }
    return 0;
}
