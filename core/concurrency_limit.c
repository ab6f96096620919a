/* An adaptive limit on API calls in flight: see concurrency_limit.h. */
#include "concurrency_limit.h"

#include <math.h>

#define RECENT_WEIGHT 0.2 /* fast EWMA of answered latency */
#define BASELINE_UP 0.002 /* the baseline follows rises slowly ... */
#define BASELINE_DOWN 0.2 /* ... and falls quickly: it estimates the unloaded latency */
#define LATENCY_MIN_SAMPLES 10
#define LATENCY_CUT 0.9
#define HOLD_RATIO 1.5
#define MIN_CUT_INTERVAL_MS 10
/* Latency alone never takes the limit below this: a server that is slower for everyone
 * (not queueing) must not collapse the gateway to one call; only 429s go lower. */
#define LATENCY_FLOOR 8.0

void concurrency_limit_init(concurrency_limit *cl, double max_limit, int64_t now_ms)
{
    *cl = (concurrency_limit){0};
    cl->max_limit = max_limit >= CL_MIN ? max_limit : CL_MIN;
    cl->limit = CL_INITIAL < cl->max_limit ? CL_INITIAL : cl->max_limit;
    cl->slow_start = true;
    cl->full_since_ms = -1;
    cl->last_growth_ms = now_ms;
    cl->last_congestion_ms = now_ms;
    cl->last_cut_ms = now_ms;
}

size_t concurrency_limit_get(const concurrency_limit *cl)
{
    double l = floor(cl->limit);
    return l < CL_MIN ? CL_MIN : (size_t)l;
}

/* After a long calm the server may have more room: slow start again (by time until the
 * server has ever pushed back, by answers after). */
static void calm_check(concurrency_limit *cl, int64_t now_ms)
{
    if (cl->slow_start || now_ms - cl->last_congestion_ms < CL_CALM_MS) return;
    cl->slow_start = true;
    cl->full_since_ms = -1;
    cl->probe_credit = 0;
}

int64_t concurrency_limit_demand(concurrency_limit *cl, size_t in_flight, size_t waiting, int64_t now_ms)
{
    calm_check(cl, now_ms);
    if (!waiting || in_flight < concurrency_limit_get(cl) || !cl->slow_start || cl->pushed_back ||
        cl->limit >= cl->max_limit)
        return -1;
    /* The step is earned by CL_RAMP_MS at this level without a 429, counted from when the
     * level filled up: time spent idle (or below the limit) proves nothing. */
    if (cl->full_since_ms < 0) cl->full_since_ms = now_ms;
    if (now_ms - cl->full_since_ms < CL_RAMP_MS) return cl->full_since_ms + CL_RAMP_MS;
    cl->limit = cl->limit * CL_RAMP_FACTOR < cl->max_limit ? cl->limit * CL_RAMP_FACTOR : cl->max_limit;
    cl->full_since_ms = -1;
    return 0;
}

void concurrency_limit_answered(concurrency_limit *cl, double latency_ms, size_t in_flight, int64_t now_ms)
{
    if (latency_ms < 0) latency_ms = 0;
    if (cl->samples++ == 0) {
        cl->baseline_ms = cl->recent_ms = latency_ms;
    } else {
        cl->recent_ms += (latency_ms - cl->recent_ms) * RECENT_WEIGHT;
        cl->baseline_ms +=
            (latency_ms - cl->baseline_ms) * (latency_ms < cl->baseline_ms ? BASELINE_DOWN : BASELINE_UP);
    }
    double cut_interval = cl->baseline_ms > MIN_CUT_INTERVAL_MS ? cl->baseline_ms : MIN_CUT_INTERVAL_MS;
    if (cl->samples >= LATENCY_MIN_SAMPLES && cl->recent_ms > CL_LATENCY_RATIO * cl->baseline_ms &&
        (double)(now_ms - cl->last_cut_ms) >= cut_interval && cl->limit > LATENCY_FLOOR) {
        /* Answers slow down: the server queues. Give back a little, once per round trip. */
        cl->limit = cl->limit * LATENCY_CUT > LATENCY_FLOOR ? cl->limit * LATENCY_CUT : LATENCY_FLOOR;
        cl->slow_start = false;
        cl->pushed_back = true;
        cl->full_since_ms = -1;
        cl->last_cut_ms = cl->last_congestion_ms = now_ms;
        cl->probe_credit = 0;
        cl->latency_cuts++;
        return;
    }
    /* Growth only while the limit is what holds calls back (this call's slot was in use):
     * an idle limit proves nothing, and slow start's clock waits for it to fill again. */
    bool was_full = in_flight + 1 >= concurrency_limit_get(cl);
    if (!was_full) cl->full_since_ms = -1;
    calm_check(cl, now_ms);
    if (cl->slow_start) {
        /* Before any push-back slow start grows by time (concurrency_limit_demand); after
         * one, by answers: one more call per answered call (doubling per round trip), at
         * most one per CL_RAMP_MS so that the extra call's 429 can come back before the
         * next: answers that arrive together (seats that free together) must not add a
         * call each above the known ceiling, which would be a wave of 429s again. */
        if (cl->pushed_back && was_full && now_ms - cl->last_growth_ms >= CL_RAMP_MS) {
            cl->limit = cl->limit + 1 < cl->max_limit ? cl->limit + 1 : cl->max_limit;
            cl->last_growth_ms = now_ms;
        } else if (!cl->pushed_back && was_full) {
            /* Answers that come back within a step are better evidence than time: grow by
             * them (doubling per round trip) and hold the time step back until they stop
             * (a server answering in 5 ms, seats 10, sees 16 calls, not 32). */
            cl->limit = cl->limit + 1 < cl->max_limit ? cl->limit + 1 : cl->max_limit;
            cl->full_since_ms = now_ms;
        }
        return;
    }
    /* Vegas: hold while answers are already slower than usual; grow only when they are not. */
    if (cl->samples >= LATENCY_MIN_SAMPLES && cl->recent_ms > HOLD_RATIO * cl->baseline_ms) return;
    if (!was_full) return;
    cl->probe_credit += 1;
    /* Additive increase. A probe to the level that drew the last 429 waits 2^probe_backoff
     * times longer: a server whose seats are fixed is not asked again every few seconds. */
    double needed = CL_PROBE_FACTOR * cl->limit;
    if (cl->known_ceiling && concurrency_limit_get(cl) + 1 >= cl->known_ceiling)
        needed *= (double)(1 << cl->probe_backoff);
    if (cl->probe_credit >= needed) {
        cl->limit = cl->limit + 1 < cl->max_limit ? cl->limit + 1 : cl->max_limit;
        cl->probe_credit = 0;
        if (concurrency_limit_get(cl) > cl->known_ceiling) {
            /* The known ceiling held (a full probe period without a 429): the server grew. */
            cl->known_ceiling = 0;
            cl->probe_backoff = 0;
        }
    }
}

void concurrency_limit_throttled(concurrency_limit *cl, size_t in_flight, int64_t now_ms)
{
    /* The level this 429 came at is the server's known ceiling; a 429 again at (or above)
     * it means the last probe there was wasted: the next waits longer. */
    size_t level = concurrency_limit_get(cl);
    if (cl->known_ceiling && level >= cl->known_ceiling && cl->probe_backoff < CL_PROBE_BACKOFF_MAX)
        cl->probe_backoff++;
    cl->known_ceiling = level;
    double held = in_flight > CL_MIN ? (double)in_flight : CL_MIN;
    if (held < cl->limit) cl->limit = held;
    cl->slow_start = false;
    cl->pushed_back = true;
    cl->full_since_ms = -1;
    cl->last_congestion_ms = now_ms;
    cl->probe_credit = 0;
    cl->throttled++;
}
