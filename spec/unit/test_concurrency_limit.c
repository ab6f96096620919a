/* Unit tests of core/concurrency_limit.c with an injected clock: a small discrete-event
 * simulation (1 ms steps) of the review engine's use of the limit against three servers —
 * healthy and slow (a cold burst), API Priority and Fairness rejecting beyond a few seats
 * (429 at once, retried after Retry-After), and a server that queues beyond its seats
 * (latency rises). Each asserts the property the limiter exists for.
 *
 * What bench/throttled.sh showed the first simulation missed: the gateway is idle for a
 * while before the load arrives (the limiter is created at start-up, the first burst comes
 * seconds later), and a 429 takes a few milliseconds to come back through HTTP/2, curl and
 * the engine's loop, not one step. The model has both (idle_ms, reject_ms). */
#include "concurrency_limit.h"
#include "unit.h"

#include <stdlib.h>

#define MAX_CALLS 4096

typedef struct {
    int seats;          /* 0: unlimited */
    bool queue;         /* beyond the seats: queue (latency rises) instead of 429 */
    int latency_ms;     /* service time of one call */
    int retry_after_ms; /* a rejected call waits this long before it is waiting again */
    int reject_ms;      /* how long a 429 takes to come back (0: 1 ms) */
    int idle_ms;        /* the limiter exists this long before the first call is waiting */
} server_model;

typedef struct {
    int64_t done_at, started, service_start;
    bool rejected, active;
} call;

typedef struct {
    uint64_t started, answered, throttled;
    uint64_t first_second_throttled; /* 429s within a second of the first call */
    int64_t last_start_ms;
    size_t max_in_flight;
} sim_result;

typedef struct {
    const server_model *m;
    concurrency_limit *cl;
    call calls[MAX_CALLS];
    size_t active[MAX_CALLS]; /* indexes of the calls in flight (in_flight of them) */
    size_t free_slots[MAX_CALLS], n_free;
    int64_t retry_at[MAX_CALLS];
    size_t n_retry, waiting, in_flight;
    int server_busy;
    int64_t server_free_at[256]; /* queue model: when each seat frees */
    sim_result r;
} sim;

/* The engine's pump: sends waiting calls while the limit allows (growing it in slow start). */
static void sim_pump(sim *s, int64_t t)
{
    const server_model *m = s->m;
    while (s->waiting) {
        if (s->in_flight >= concurrency_limit_get(s->cl)) {
            if (concurrency_limit_demand(s->cl, s->in_flight, s->waiting, t) == 0) continue;
            break;
        }
        if (!s->n_free) break;
        size_t slot = s->free_slots[--s->n_free];
        call *c = &s->calls[slot];
        *c = (call){.active = true, .started = t};
        if (m->queue) {
            /* The earliest free seat serves it: latency = wait + service. */
            int best = 0;
            for (int i = 1; i < m->seats; i++)
                if (s->server_free_at[i] < s->server_free_at[best]) best = i;
            int64_t begin = s->server_free_at[best] > t ? s->server_free_at[best] : t;
            s->server_free_at[best] = begin + m->latency_ms;
            c->done_at = begin + m->latency_ms;
        } else if (m->seats && s->server_busy >= m->seats) {
            c->rejected = true;
            c->done_at = t + (m->reject_ms > 0 ? m->reject_ms : 1); /* APF rejects at once */
        } else {
            if (m->seats) s->server_busy++;
            c->done_at = t + m->latency_ms;
        }
        s->active[s->in_flight++] = slot;
        s->waiting--;
        s->r.started++;
        s->r.last_start_ms = t - m->idle_ms; /* counted from the first call */
        if (s->in_flight > s->r.max_in_flight) s->r.max_in_flight = s->in_flight;
    }
}

/* Runs for duration_ms with `initial` calls waiting at t=idle_ms (the limiter was made at
 * t=0) and, with endless, a new call waiting whenever one is answered (a steady crowd of
 * clients; with the default policy, a TokenReview's answer is followed by the request's
 * SubjectAccessReview). Like the engine, it pumps after every answer, so a freed slot is
 * taken at once and the limit is seen full. */
static sim_result simulate(const server_model *m, concurrency_limit *cl, size_t initial, bool endless,
                           int64_t duration_ms)
{
    static sim s;
    memset(&s, 0, sizeof(s));
    s.m = m;
    s.cl = cl;
    for (size_t i = 0; i < MAX_CALLS; i++) s.free_slots[s.n_free++] = MAX_CALLS - 1 - i;
    for (int64_t t = 0; t < m->idle_ms + duration_ms; t++) {
        if (t == m->idle_ms) s.waiting = initial;
        for (size_t i = 0; i < s.in_flight;) {
            size_t slot = s.active[i];
            call *c = &s.calls[slot];
            if (c->done_at > t) {
                i++;
                continue;
            }
            c->active = false;
            s.active[i] = s.active[--s.in_flight];
            s.free_slots[s.n_free++] = slot;
            if (c->rejected) {
                s.r.throttled++;
                if (t < m->idle_ms + 1000) s.r.first_second_throttled++;
                concurrency_limit_throttled(cl, s.in_flight, t);
                /* Its own Retry-After: rejected flights come back together, a wave. */
                if (s.n_retry < MAX_CALLS) s.retry_at[s.n_retry++] = t + m->retry_after_ms;
            } else {
                if (!m->queue && m->seats) s.server_busy--;
                s.r.answered++;
                concurrency_limit_answered(cl, (double)(t - c->started), s.in_flight, t);
                if (endless) s.waiting++;
            }
            sim_pump(&s, t); /* new calls go to the end of active[]: done_at > t, skipped */
        }
        for (size_t i = 0; i < s.n_retry;) {
            if (s.retry_at[i] <= t) {
                s.waiting++;
                s.retry_at[i] = s.retry_at[--s.n_retry];
            } else {
                i++;
            }
        }
        sim_pump(&s, t);
    }
    return s.r;
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
    CHECK(r.last_start_ms <= 2 * CL_RAMP_MS); /* every call sent within two steps */
    CHECK_EQ_INT(r.max_in_flight, 100);
    /* The same burst after the gateway sat idle for five seconds: the same two steps. */
    healthy.idle_ms = 5000;
    concurrency_limit_init(&cl, 100, 0);
    r = simulate(&healthy, &cl, 100, false, 1000);
    CHECK_EQ_INT(r.answered, 100);
    CHECK(r.last_start_ms <= 2 * CL_RAMP_MS);
    CHECK_EQ_INT(r.max_in_flight, 100);
}

/* Five seats, 300 ms a call, Reject beyond them (about 16.7 calls/s), 200 clients, for
 * run_ms after idle_ms; 429s back after reject_ms. Returns the share of calls refused. */
static double throttled_run(int idle_ms, int reject_ms, int64_t run_ms, sim_result *r, concurrency_limit *cl)
{
    server_model apf = {
        .seats = 5, .latency_ms = 300, .retry_after_ms = 1000, .reject_ms = reject_ms, .idle_ms = idle_ms};
    concurrency_limit_init(cl, 100, 0);
    *r = simulate(&apf, cl, 200, true, run_ms);
    double share = (double)r->throttled / (double)(r->answered + r->throttled);
    printf("  throttled (idle %d ms, 429 back in %d ms, %lld s): %llu answered of %.0f possible, %llu 429s "
           "(%.1f %% of calls, %llu in the first second), limit %zu\n",
           idle_ms, reject_ms, (long long)(run_ms / 1000), (unsigned long long)r->answered, run_ms / 300.0 * 5,
           (unsigned long long)r->throttled, 100.0 * share, (unsigned long long)r->first_second_throttled,
           concurrency_limit_get(cl));
    return share;
}

static void test_throttled_server_is_used_without_wasting_calls(void)
{
    sim_result r;
    concurrency_limit cl;
    double share;
    /* The bench's case: the gateway idle for seconds before the load, 429s back in a few
     * ms (under a slow-start step). The first 8 calls find 5 seats: 3 429s, then the limit
     * holds at 5; probes to 6 cost one 429 each, less often after each. */
    int reject_ms[] = {1, 3, CL_RAMP_MS - 1};
    for (size_t i = 0; i < sizeof(reject_ms) / sizeof(reject_ms[0]); i++) {
        share = throttled_run(5000, reject_ms[i], 30000, &r, &cl);
        CHECK(r.answered >= 0.8 * 500);
        CHECK(share <= 0.02); /* the goal is 5 %: keep a margin for the machine's noise */
        CHECK_EQ_INT(r.first_second_throttled, 8 - 5);
        CHECK(concurrency_limit_get(&cl) >= 5 && concurrency_limit_get(&cl) <= 6);
    }
    /* A server that answers (and rejects) in 5 ms with 10 seats: answers come back within
     * a step, so slow start grows by them and overshoots by at most what one round trip
     * of answers adds, not 4-fold. */
    server_model fast = {.seats = 10, .latency_ms = 5, .retry_after_ms = 1000, .reject_ms = 5, .idle_ms = 5000};
    concurrency_limit_init(&cl, 100, 0);
    r = simulate(&fast, &cl, 200, true, 30000);
    share = (double)r.throttled / (double)(r.answered + r.throttled);
    printf("  fast (10 seats, 5 ms): %llu answered, %llu 429s (%.2f %%, %llu in the first second), limit %zu\n",
           (unsigned long long)r.answered, (unsigned long long)r.throttled, 100.0 * share,
           (unsigned long long)r.first_second_throttled, concurrency_limit_get(&cl));
    CHECK(r.first_second_throttled <= 15); /* by time steps alone (8, 32): 26 */
    CHECK(r.answered >= 0.8 * 30000 / 5 * 10);
    CHECK(share <= 0.005);
    /* Ten minutes: calm periods restart slow start, which grows by answers now that the
     * server has pushed back, so each costs one 429, not a wave. */
    share = throttled_run(5000, 3, 600000, &r, &cl);
    CHECK(r.answered >= 0.95 * 600000 / 300 * 5);
    CHECK(share <= 0.005);
    CHECK(concurrency_limit_get(&cl) >= 5 && concurrency_limit_get(&cl) <= 6);
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
    /* Slow start to the ceiling: each step CL_RAMP_MS after the level filled. */
    for (int64_t s = 0; concurrency_limit_get(&cl) < 100;) {
        int64_t at = concurrency_limit_demand(&cl, concurrency_limit_get(&cl), 100, s);
        CHECK(at >= 0);
        if (at > 0) s = at;
    }
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

static void test_latency_cut_is_a_push_back(void)
{
    concurrency_limit cl;
    concurrency_limit_init(&cl, 100, 0);
    int64_t t = 0;
    /* Answers within a step while the limit is full: one more call each. */
    for (int i = 0; i < 20; i++) concurrency_limit_answered(&cl, 100, concurrency_limit_get(&cl) - 1, t++);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 28);
    CHECK(cl.slow_start);
    /* Four times slower: a latency cut ends slow start, as a 429 would ... */
    for (t = 200; !cl.latency_cuts && t < 300; t++)
        concurrency_limit_answered(&cl, 400, concurrency_limit_get(&cl) - 1, t);
    CHECK_EQ_INT(cl.latency_cuts, 1);
    CHECK(!cl.slow_start);
    size_t after_cut = concurrency_limit_get(&cl);
    CHECK(after_cut < 28 && after_cut >= 8);
    /* ... and after the calm, slow start grows by answers only, never by time. */
    t = cl.last_congestion_ms + CL_CALM_MS;
    CHECK_EQ_INT(concurrency_limit_demand(&cl, after_cut, 10, t), -1);
    CHECK(cl.slow_start);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, after_cut, 10, t + 5 * CL_RAMP_MS), -1);
    CHECK_EQ_INT(concurrency_limit_get(&cl), after_cut);
    concurrency_limit_answered(&cl, 100, after_cut - 1, t + 5 * CL_RAMP_MS);
    CHECK_EQ_INT(concurrency_limit_get(&cl), after_cut + 1);
}

static void test_limits_and_calm(void)
{
    concurrency_limit cl;
    concurrency_limit_init(&cl, 3, 0);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 3);                 /* the ceiling caps even the initial limit */
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 3, 10, 100), -1); /* at the ceiling: no growth */
    concurrency_limit_init(&cl, 100, 0);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 2, 10, 1), -1); /* below the limit: not blocked */
    /* Idle for five seconds, then the limit fills: the step is due CL_RAMP_MS after it
     * filled, not at once (the idle time proves nothing about the server). */
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 8, 10, 5000), 5000 + CL_RAMP_MS);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 8, 10, 5000 + CL_RAMP_MS - 1), 5000 + CL_RAMP_MS);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 8);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 8, 10, 5000 + CL_RAMP_MS), 0);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 8 * CL_RAMP_FACTOR);
    /* Full at 32 from 5020; an answer that finds room below the limit restarts the clock. */
    int64_t t = 5000 + 2 * CL_RAMP_MS;
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 32, 10, t), t + CL_RAMP_MS);
    concurrency_limit_answered(&cl, 200, 10, t + 5); /* 11 of 32 were in flight */
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 32, 10, t + CL_RAMP_MS), t + 2 * CL_RAMP_MS);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 32);
    /* ... an answer while it is full is evidence too: one more call for it (growth by
     * answers, doubling per round trip), and the time step waits CL_RAMP_MS from it. */
    concurrency_limit_answered(&cl, 5, 31, t + CL_RAMP_MS + 1);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 33);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 33, 10, t + 2 * CL_RAMP_MS), t + 2 * CL_RAMP_MS + 1);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 33, 10, t + 2 * CL_RAMP_MS + 1), 0);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 100); /* 132, capped by the ceiling */

    t = 6000;
    concurrency_limit_throttled(&cl, 0, t);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 1); /* never below the floor */
    CHECK(!cl.slow_start);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 1, 10, t + 10), -1); /* no slow start after a 429 ... */
    /* ... until calm; then, the server having pushed back once, it grows by answers (one
     * more call per answer while the limit is full, at most one per CL_RAMP_MS), never by
     * time. */
    t += CL_CALM_MS;
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 1, 10, t), -1);
    CHECK(cl.slow_start);
    CHECK_EQ_INT(concurrency_limit_demand(&cl, 1, 10, t + 10 * CL_RAMP_MS), -1);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 1);
    concurrency_limit_answered(&cl, 200, 0, t + 1); /* it was full: +1 */
    CHECK_EQ_INT(concurrency_limit_get(&cl), 2);
    concurrency_limit_answered(&cl, 200, 1, t + 2); /* full again, but within CL_RAMP_MS */
    CHECK_EQ_INT(concurrency_limit_get(&cl), 2);
    concurrency_limit_answered(&cl, 200, 1, t + 1 + CL_RAMP_MS);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 3);
    concurrency_limit_answered(&cl, 200, 0, t + 1 + 2 * CL_RAMP_MS); /* room to spare: no growth */
    CHECK_EQ_INT(concurrency_limit_get(&cl), 3);
    /* A throttled call never raises the limit. */
    concurrency_limit_throttled(&cl, 50, t + 100);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 3);
    CHECK(!cl.slow_start);
}

/* Answers while the limit is full, 300 ms each, one every ms from *t, until the limit
 * passes `from`; returns how many it took (or -1 after 100 000). */
static long answers_to_grow(concurrency_limit *cl, size_t from, int64_t *t)
{
    for (long n = 1; n <= 100000; n++) {
        concurrency_limit_answered(cl, 300, concurrency_limit_get(cl) - 1, (*t)++);
        if (concurrency_limit_get(cl) > from) return n;
    }
    return -1;
}

static void test_probes_back_off_at_the_known_ceiling(void)
{
    concurrency_limit cl;
    concurrency_limit_init(&cl, 100, 0);
    /* The first burst: 8 calls, 5 seats, three 429s one after the other take the limit to
     * the 5 calls in flight; the last came at 6, the known ceiling. */
    concurrency_limit_throttled(&cl, 7, 1);
    concurrency_limit_throttled(&cl, 6, 1);
    concurrency_limit_throttled(&cl, 5, 1);
    CHECK_EQ_INT(concurrency_limit_get(&cl), 5);
    CHECK_EQ_INT(cl.known_ceiling, 6);
    CHECK_EQ_INT(cl.probe_backoff, 0); /* falling 429s are not failed probes */
    int64_t t = 2;
    /* A probe to 6 after 8 x 5 answers; each 429 there doubles the wait, up to 2^4. */
    long expected[] = {40, 80, 160, 320, 640, 640};
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        CHECK_EQ_INT(answers_to_grow(&cl, 5, &t), expected[i]);
        concurrency_limit_throttled(&cl, 5, t); /* the probe's 429 */
        CHECK_EQ_INT(concurrency_limit_get(&cl), 5);
    }
    CHECK_EQ_INT(cl.probe_backoff, CL_PROBE_BACKOFF_MAX);
    CHECK(t < CL_CALM_MS); /* no calm in between: these were probes, not slow start */
    /* The server grew: 6 holds, and the probe past the known ceiling forgets it. */
    CHECK_EQ_INT(answers_to_grow(&cl, 5, &t), 640);
    CHECK_EQ_INT(answers_to_grow(&cl, 6, &t), 8 * 6 * 16);
    CHECK_EQ_INT(cl.known_ceiling, 0);
    CHECK_EQ_INT(cl.probe_backoff, 0);
    CHECK_EQ_INT(answers_to_grow(&cl, 7, &t), 8 * 7);
    /* A 429 below the known ceiling (the server shrank) is not a failed probe. */
    concurrency_limit_throttled(&cl, 7, t++); /* at 8: known 8 */
    concurrency_limit_throttled(&cl, 6, t++); /* at 7 */
    CHECK_EQ_INT(cl.known_ceiling, 7);
    CHECK_EQ_INT(cl.probe_backoff, 0);
}

int main(void)
{
    RUN(test_cold_burst_reaches_the_burst_at_once);
    RUN(test_throttled_server_is_used_without_wasting_calls);
    RUN(test_queueing_server_shrinks_the_limit);
    RUN(test_latency_rise_cuts_once_per_round_trip);
    RUN(test_latency_cut_is_a_push_back);
    RUN(test_limits_and_calm);
    RUN(test_probes_back_off_at_the_known_ceiling);
    return UNIT_EXIT();
}
