/* An adaptive limit on API calls in flight (docs/APISERVER.md "Adaptive concurrency").
 *
 * API Priority and Fairness limits seats, that is requests in flight, not a rate. A client
 * that wants to use what it is given without being rejected must find that number. This
 * limiter learns it from what the API server says, in the spirit of TCP congestion control
 * and of Netflix's concurrency-limits (Vegas, gradient):
 *
 *  - slow start: while nothing has said "too much", the limit grows CL_RAMP_FACTOR-fold
 *    once it has been full (every call it allows in flight, more waiting) for CL_RAMP_MS
 *    without a 429: 8, 32, 128, twenty milliseconds to a hundred calls in flight. The
 *    clock starts when the limit fills, not when it was last raised: an idle gateway's
 *    first burst must not find its first step already due (API Priority and Fairness
 *    rejects at once, so CL_RAMP_MS at a level without a 429 is the evidence that the
 *    server holds that level). Answers that come back while it is full are better
 *    evidence still: each adds one call (doubling per round trip, as TCP's slow start)
 *    and holds the time step back, so a server that answers within a step is approached
 *    by doubling, not by fourfold jumps. A cold burst against a healthy but slow server
 *    reaches a hundred calls in flight within a few tens of milliseconds, with no fixed
 *    cap in the way; against a server with five seats, the first rejections come back
 *    before the first step.
 *  - a 429 sets the limit to the calls still in flight when it arrives (what the server
 *    is evidently holding), never below the floor, and ends slow start. The rejected call
 *    itself retries after Retry-After; the others go on. The level it came at is
 *    remembered as the server's known ceiling.
 *  - congestion avoidance: +1 after CL_PROBE_FACTOR x limit answered calls while the
 *    limit is in use. A probe above the server's seats costs one 429; a probe to the
 *    known ceiling waits twice as long after each 429 there (up to 2^CL_PROBE_BACKOFF_MAX
 *    times), so a server whose seats do not change is not asked again every few seconds.
 *  - latency: when the recent latency of answered calls rises above CL_LATENCY_RATIO x
 *    the long-term baseline (queueing inside the server: APF's Queue mode, an overloaded
 *    etcd), the limit shrinks by 10 % at most once per baseline latency, never below 8 on
 *    latency alone (a server slower for everyone must not collapse it to one call).
 *  - after CL_CALM_MS without a 429 or a latency rise, slow start may begin again (the
 *    server's capacity may have grown), but once the server has pushed back it grows by
 *    answers, not by time: +1 per answered call while the limit is in use (doubling per
 *    round trip, as TCP's slow start does), at most once per CL_RAMP_MS, so it meets the
 *    known ceiling with one 429 instead of a wave of them.
 *
 * The caller keeps its QPS/burst bucket as a ceiling beside it. Pure: no clock, no I/O;
 * every function takes now_ms. Not thread-safe (the review engine's loop owns it). */
#ifndef TOKENGATE_CONCURRENCY_LIMIT_H
#define TOKENGATE_CONCURRENCY_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CL_INITIAL 8
#define CL_MIN 1
#define CL_RAMP_MS 10
#define CL_RAMP_FACTOR 4
#define CL_PROBE_FACTOR 8
#define CL_LATENCY_RATIO 2.0
#define CL_CALM_MS 30000
#define CL_PROBE_BACKOFF_MAX 4

typedef struct concurrency_limit {
    double limit;
    double max_limit;
    bool slow_start;
    bool pushed_back;           /* a 429 or a latency cut was ever seen: slow start grows by answers */
    int64_t full_since_ms;      /* slow start by time: when the limit filled up; -1: not full */
    int64_t last_growth_ms;     /* slow start by answers: when it last grew */
    int64_t last_congestion_ms; /* last 429 or latency cut */
    int64_t last_cut_ms;        /* last latency cut */
    double probe_credit;        /* answered calls towards the next +1 */
    size_t known_ceiling;       /* the limit in force at the last 429 (0: none): probing to it is costly */
    int probe_backoff;          /* 429s at the known ceiling in a row: probes to it wait 2^this longer */
    double baseline_ms;         /* long-term latency of answered calls (slow EWMA) */
    double recent_ms;           /* short-term latency (fast EWMA) */
    uint64_t samples;
    uint64_t throttled, latency_cuts;
} concurrency_limit;

/* max_limit >= 1: the ceiling (e.g. --apiserver-burst: more in flight could never be
 * admitted by the bucket anyway). */
void concurrency_limit_init(concurrency_limit *cl, double max_limit, int64_t now_ms);

/* The limit now, as a whole number of calls (>= CL_MIN). */
size_t concurrency_limit_get(const concurrency_limit *cl);

/* Called when in_flight calls run and waiting more want to start: in slow start by time,
 * grows the limit CL_RAMP_FACTOR-fold once it has been full for CL_RAMP_MS. Returns the
 * time (ms) at which the next step could happen while it is blocked (for the caller's
 * timer), 0 when it grew now, or -1 when no growth by time is pending. */
int64_t concurrency_limit_demand(concurrency_limit *cl, size_t in_flight, size_t waiting, int64_t now_ms);

/* An answered call (any status but 429) that took latency_ms; in_flight counts the calls
 * still running after it (the limit was full before it if in_flight + 1 >= the limit). */
void concurrency_limit_answered(concurrency_limit *cl, double latency_ms, size_t in_flight, int64_t now_ms);

/* A 429 from API Priority and Fairness; in_flight counts the calls still running. */
void concurrency_limit_throttled(concurrency_limit *cl, size_t in_flight, int64_t now_ms);

#endif
