/* Unit tests of core/concurrency_limit.c with an injected clock: a small discrete-event
 * simulation (1 ms steps) of the review engine's use of the limit against three servers —
 * healthy and slow (a cold burst), API Priority and Fairness rejecting beyond a few seats
 * (429 at once, retried after Retry-After), and a server that queues beyond its seats
 * (latency rises). Each asserts the property the limiter exists for. */
#include "concurrency_limit.h"
#include "unit.h"

#include <stdlib.h>

#define MAX_CALLS 4096

typedef struct {
    int seats;          /* 0: unlimited */
    bool queue;         /* beyond the seats: queue (latency rises) instead of 429 */
    int latency_ms;     /* service time of one call */
    int retry_after_ms; /* a rejected call waits this long before it is waiting again */
} server_model;

typedef struct {
    int64_t done_at, started, service_start;
    bool rejected, active;
} call;

typedef struct {
    uint64_t started, answered, throttled;
    int64_t last_start_ms;
    size_t max_in_flight;
} sim_result;

/* Runs for duration_ms with `initial` calls waiting at t=0 and, with endless, a new call
 * waiting whenever one is answered or refused for good (a steady crowd of clients). */
static sim_result simulate(const server_model *m, concurrency_limit *cl, size_t initial, bool endless,
                           int64_t duration_ms)
{
    static call calls[MAX_CALLS];
    static int64_t retry_at[MAX_CALLS];
    size_t n_retry = 0, waiting = initial, in_flight = 0;
    int server_busy = 0;
    int64_t server_free_at[256] = {0}; /* queue model: when each seat frees */
    sim_result r = {0};
    memset(calls, 0, sizeof(calls));
    for (int64_t t = 0; t < duration_ms; t++) {
        for (size_t i = 0; i < MAX_CALLS; i++) {
            call *c = &calls[i];
            if (!c->active || c->done_at > t) continue;
            c->active = false;
            in_flight--;
            if (c->rejected) {
                r.throttled++;
                concurrency_limit_throttled(cl, in_flight, t);
                if (n_retry < MAX_CALLS) retry_at[n_retry++] = t + m->retry_after_ms;
            } else {
                if (!m->queue && m->seats) server_busy--;
                r.answered++;
                concurrency_limit_answered(cl, (double)(t - c->started), in_flight, t);
                if (endless) waiting++;
            }
        }
        for (size_t i = 0; i < n_retry;) {
            if (retry_at[i] <= t) {
                waiting++;
                retry_at[i] = retry_at[--n_retry];
            } else {
                i++;
            }
        }
        while (waiting) {
            if (in_flight >= concurrency_limit_get(cl)) {
                if (concurrency_limit_demand(cl, in_flight, waiting, t) == 0) continue;
                break;
            }
            size_t slot = 0;
            while (slot < MAX_CALLS && calls[slot].active) slot++;
            if (slot == MAX_CALLS) break;
            call *c = &calls[slot];
            *c = (call){.active = true, .started = t};
            if (m->queue) {
                /* The earliest free seat serves it: latency = wait + service. */
                int best = 0;
                for (int s = 1; s < m->seats; s++)
                    if (server_free_at[s] < server_free_at[best]) best = s;
                int64_t begin = server_free_at[best] > t ? server_free_at[best] : t;
                server_free_at[best] = begin + m->latency_ms;
                c->done_at = begin + m->latency_ms;
            } else if (m->seats && server_busy >= m->seats) {
                c->rejected = true;
                c->done_at = t + 1; /* APF rejects at once */
            } else {
                if (m->seats) server_busy++;
                c->done_at = t + m->latency_ms;
            }
            in_flight++;
            waiting--;
            r.started++;
            r.last_start_ms = t;
            if (in_flight > r.max_in_flight) r.max_in_flight = in_flight;
        }
    }
    return r;
}

static void test_cold_burst_reaches_the_burst_at_once(void)
{
    /* 100 new tokens, a healthy server answering in 200 ms, the bucket's burst 100. */
    server_model healthy = {.latency_ms = 200};
    concurrency_limit cl;
    concurrency_limit_init(&cl, 100, 0);
    sim_result r = simulate(&healthy, &cl, 100, false, 1000);
    CHECK_EQ_INT(r.started, 100);
    CHECK_EQ_INT(r.answered, 100);
    CHECK_EQ_INT(r.throttled, 0);
    CHECK(r.last_start_ms <= 2 * CL_RAMP_MS); /* every call sent within 10 ms */
    CHECK_EQ_INT(r.max_in_flight, 100);
}

static void test_throttled_server_is_used_without_wasting_calls(void)
{
    /* Five seats, 300 ms a call, Reject beyond them (about 16.7 calls/s), 200 clients. */
    server_model apf = {.seats = 5, .latency_ms = 300, .retry_after_ms = 1000};
    concurrency_limit cl;
    concurrency_limit_init(&cl, 100, 0);
    sim_result r = simulate(&apf, &cl, 200, true, 30000);
    double capacity = 30000.0 / 300 * 5; /* 500 answered calls at most */
    printf("  throttled: %llu answered of %.0f possible, %llu 429s (%.1f %% of calls), limit %zu\n",
           (unsigned long long)r.answered, capacity, (unsigned long long)r.throttled,
           100.0 * (double)r.throttled / (double)(r.answered + r.throttled), concurrency_limit_get(&cl));
    CHECK(r.answered >= 0.8 * capacity);
    CHECK(r.throttled * 100 <= 5 * (r.answered + r.throttled));
    CHECK(concurrency_limit_get(&cl) >= 4 && concurrency_limit_get(&cl) <= 7);
}

static void test_queueing_server_shrinks_the_limit(void)
{
    /* Ten seats, 100 ms a call, queueing beyond them: capacity 100 calls/s; every call in
     * flight beyond ten only adds latency. */
    server_model queueing = {.seats = 10, .queue = true, .latency_ms = 100};
    concurrency_limit cl;
    concurrency_limit_init(&cl, 100, 0);
    sim_result r = simulate(&queueing, &cl, 200, true, 20000);
    printf("  queueing: %llu answered (capacity 2000), limit %zu, %llu latency cuts\n", (unsigned long long)r.answered,
           concurrency_limit_get(&cl), (unsigned long long)cl.latency_cuts);
    CHECK(cl.latency_cuts > 0);
    CHECK(concurrency_limit_get(&cl) <= 60); /* well below the 100 slow start reached */
    CHECK(r.answered >= 1800);               /* and the seats stay busy */
}

static void test_latency_rise_cuts_once_per_round_trip(void)
{
    concurrency_limit cl;
    concurrency_limit_init(&cl, 100, 0);
    for (int64_t s = CL_RAMP_MS; s <= 2 * CL_RAMP_MS; s += CL_RAMP_MS) concurrency_limit_demand(&cl, 100, 100, s);
    concurrency_limit_throttled(&cl, 50, 30); /* out of slow start at 50 */
    CHECK_EQ_INT(concurrency_limit_get(&cl), 50);
    int64_t t = 31;
    for (int i = 0; i < 20; i++) concurrency_limit_answered(&cl, 100, 49, t++); /* baseline 100 ms */
    CHECK_EQ_INT(cl.latency_cuts, 0);
    for (int i = 0; i < 20; i++) concurrency_limit_answered(&cl, 400, 49, t++); /* 4x slower, 20 ms */
    CHECK_EQ_INT(cl.latency_cuts, 0); /* a round trip (the 100 ms baseline) has not passed since t=0 */
    t = 200;
    for (int i = 0; i < 5; i++) concurrency_limit_answered(&cl, 400, 49, t++);
    CHECK_EQ_INT(cl.latency_cuts, 1); /* one cut, then none before another round trip */
    CHECK_EQ_INT(concurrency_limit_get(&cl), 45);
    /* Slow answers never raise the limit (hold), and latency never takes it below 8. */
    size_t before = concurrency_limit_get(&cl), lowest = before;
    bool rose = false;
    for (t = 300; t < 300 + 50 * 150; t += 150) { /* while answers are still much slower than usual */
        size_t was = concurrency_limit_get(&cl);
        concurrency_limit_answered(&cl, 2000, 49, t);
        if (concurrency_limit_get(&cl) > was && cl.recent_ms > 1.5 * cl.baseline_ms) rose = true;
        if (concurrency_limit_get(&cl) < lowest) lowest = concurrency_limit_get(&cl);
    }
    CHECK(!rose);
    CHECK(lowest < before);
    CHECK(lowest >= 8);
}

static void test_limits_and_calm(void)
{
    concurrency_limit cl;
    concurrency_limit_init(&cl, 3, 0);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 3); /* the ceiling caps even the initial limit */
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 3, 10, 100), -1); /* at the ceiling: no growth */
    concurrency_limit_init(&cl, 100, 0);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 2, 10, 1), -1);  /* below the limit: not blocked */
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 8, 10, 2), CL_RAMP_MS); /* blocked: the next step */
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 8, 10, CL_RAMP_MS), 0);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 8 * CL_RAMP_FACTOR);
    concurrency_limit_throttled(&cl, 0, 20);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 1); /* never below the floor */
    CHECK(!cl.slow_start);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 1, 10, 30), -1); /* no slow start after a 429 ... */
    /* ... until calm: slow start again, its first step one ramp interval later. */
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 1, 10, 20 + CL_CALM_MS), 20 + CL_CALM_MS + CL_RAMP_MS);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 1, 10, 20 + CL_CALM_MS + CL_RAMP_MS), 0);
    CHECK_EQ_INT(concurrency_limit_get(&cl), CL_RAMP_FACTOR);
    /* A throttled call never raises the limit. */
    concurrency_limit_throttled(&cl, 50, 20 + CL_CALM_MS + CL_RAMP_MS + 1);
    CHECK_EQ_INT(concurrency_limit_get(&cl), CL_RAMP_FACTOR);
}

int main(void)
{
    RUN(test_cold_burst_reaches_the_burst_at_once);
    RUN(test_throttled_server_is_used_without_wasting_calls);
    RUN(test_queueing_server_shrinks_the_limit);
    RUN(test_latency_rise_cuts_once_per_round_trip);
    RUN(test_limits_and_calm);
    return UNIT_EXIT();
}
