/* An adaptive limit on API calls in flight: see concurrency_limit.h. */
#include "concurrency_limit.h"

#include <math.h>

#define RECENT_WEIGHT 0.2     /* fast EWMA of answered latency */
#define BASELINE_UP 0.002     /* the baseline follows rises slowly ... */
#define BASELINE_DOWN 0.2     /* ... and falls quickly: it estimates the unloaded latency */
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
    cl->last_ramp_ms = now_ms;
    cl->last_congestion_ms = now_ms;
    cl->last_cut_ms = now_ms;
}

size_t concurrency_limit_get(const concurrency_limit *cl)
{
    double l = floor(cl->limit);
    return l < CL_MIN ? CL_MIN : (size_t)l;
}

int64_t concurrency_limit_demand(concurrency_limit *cl, size_t in_flight, size_t waiting, int64_t now_ms)
{
    if (!cl->slow_start && now_ms - cl->last_congestion_ms >= CL_CALM_MS) {
        /* Long calm: the server may have more room now. */
        cl->slow_start = true;
        cl->last_ramp_ms = now_ms;
    }
    if (!waiting || in_flight < concurrency_limit_get(cl) || !cl->slow_start || cl->limit >= cl->max_limit) return -1;
    if (now_ms - cl->last_ramp_ms < CL_RAMP_MS) return cl->last_ramp_ms + CL_RAMP_MS;
    cl->limit = cl->limit * CL_RAMP_FACTOR < cl->max_limit ? cl->limit * CL_RAMP_FACTOR : cl->max_limit;
    cl->last_ramp_ms = now_ms;
    return 0;
}

void concurrency_limit_answered(concurrency_limit *cl, double latency_ms, size_t in_flight, int64_t now_ms)
{
    if (latency_ms < 0) latency_ms = 0;
    if (cl->samples++ == 0) {
        cl->baseline_ms = cl->recent_ms = latency_ms;
    } else {
        cl->recent_ms += (latency_ms - cl->recent_ms) * RECENT_WEIGHT;
        cl->baseline_ms += (latency_ms - cl->baseline_ms) * (latency_ms < cl->baseline_ms ? BASELINE_DOWN : BASELINE_UP);
    }
    double cut_interval = cl->baseline_ms > MIN_CUT_INTERVAL_MS ? cl->baseline_ms : MIN_CUT_INTERVAL_MS;
    if (cl->samples >= LATENCY_MIN_SAMPLES && cl->recent_ms > CL_LATENCY_RATIO * cl->baseline_ms &&
        (double)(now_ms - cl->last_cut_ms) >= cut_interval && cl->limit > LATENCY_FLOOR) {
        /* Answers slow down: the server queues. Give back a little, once per round trip. */
        cl->limit = cl->limit * LATENCY_CUT > LATENCY_FLOOR ? cl->limit * LATENCY_CUT : LATENCY_FLOOR;
        cl->slow_start = false;
        cl->last_cut_ms = cl->last_congestion_ms = now_ms;
        cl->probe_credit = 0;
        cl->latency_cuts++;
        return;
    }
    if (cl->slow_start) return; /* slow start grows by time (concurrency_limit_demand) */
    /* Vegas: hold while answers are already slower than usual; grow only when they are not. */
    if (cl->samples >= LATENCY_MIN_SAMPLES && cl->recent_ms > HOLD_RATIO * cl->baseline_ms) return;
    /* Additive increase, only while the limit is what holds calls back (this call's slot
     * was in use): an idle limit proves nothing. */
    if (in_flight + 1 < concurrency_limit_get(cl)) return;
    cl->probe_credit += 1;
    if (cl->probe_credit >= CL_PROBE_FACTOR * cl->limit) {
        cl->limit = cl->limit + 1 < cl->max_limit ? cl->limit + 1 : cl->max_limit;
        cl->probe_credit = 0;
    }
}

void concurrency_limit_throttled(concurrency_limit *cl, size_t in_flight, int64_t now_ms)
{
    double held = in_flight > CL_MIN ? (double)in_flight : CL_MIN;
    if (held < cl->limit) cl->limit = held;
    cl->slow_start = false;
    cl->last_congestion_ms = now_ms;
    cl->probe_credit = 0;
    cl->throttled++;
}
