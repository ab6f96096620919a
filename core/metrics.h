/* Metrics: counters and fixed-bucket histograms in structs owned by the server, and their
 * rendering in the Prometheus text format (the metric names are a contract: dashboards use
 * them).
 *
 * Each struct is written by the one event-loop thread that owns it (a worker, or the control
 * thread); a scrape on the control thread sums them (metrics_add) without a lock. So that
 * this is defined behaviour in C11 (and clean under ThreadSanitizer), every counter is an
 * atomic; its one writer updates it with metric_add — a relaxed load and store, which on
 * x86-64 and arm64 are the plain instructions a plain integer would use (no lock prefix,
 * no fence). A scrape may be an update behind, never torn. See docs/ARCHITECTURE.md,
 * "Threads". */
#ifndef TOKENGATE_METRICS_H
#define TOKENGATE_METRICS_H

#include <event2/buffer.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A counter with one writing thread, read by the scrape. */
typedef _Atomic uint64_t metric_counter;
/* A gauge-like double with one writing thread (a histogram's sum, a timestamp). */
typedef _Atomic double metric_double;

/* By the counter's one writer: no read-modify-write instruction is needed. */
static inline void metric_add(metric_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static inline uint64_t metric_get(const metric_counter *c)
{
    return atomic_load_explicit((metric_counter *)c, memory_order_relaxed);
}

static inline void metric_double_set(metric_double *d, double v)
{
    atomic_store_explicit(d, v, memory_order_relaxed);
}

static inline double metric_double_get(const metric_double *d)
{
    return atomic_load_explicit((metric_double *)d, memory_order_relaxed);
}

/* Why an API call failed; the label values of gateway_*_api_errors_total{reason}. */
typedef enum {
    API_ERROR_NONE = -1,
    API_ERROR_TIMEOUT = 0,
    API_ERROR_THROTTLED,
    API_ERROR_HTTP,
    API_ERROR_NETWORK,
    API_ERROR_BAD_RESPONSE,
    API_ERROR_KINDS
} api_error;

const char *api_error_name(api_error error);

#define METRICS_BUCKETS 14

typedef struct metrics_histogram {
    metric_counter bucket_counts[METRICS_BUCKETS]; /* not cumulative; rendered cumulatively */
    metric_counter count;
    metric_double sum;
} metrics_histogram;

void metrics_histogram_observe(metrics_histogram *h, double seconds);

/* One family per kind of review (tokenreview, later subjectaccessreview). */
typedef struct review_metrics {
    metric_counter cache_hits;
    metric_counter cache_misses;
    metric_counter api_calls;
    metric_counter coalesced;
    metric_counter unrepresentable; /* identities refused (cached negative) as not representable */
    metric_counter api_errors[API_ERROR_KINDS];
    metrics_histogram api_latency;
} review_metrics;

#define METRICS_STATUS_MIN 100
#define METRICS_STATUS_MAX 599

typedef struct gateway_metrics {
    review_metrics tokenreview;
    review_metrics subjectaccessreview;
    metric_counter policy_reloads_success;
    metric_counter policy_reloads_failure;
    metric_counter policy_errors;
    metric_double policy_last_reload_success_s; /* Unix time; 0 before the first load */
    metric_counter requests_by_code[METRICS_STATUS_MAX - METRICS_STATUS_MIN + 1];
    metrics_histogram request_duration;
    metric_counter cache_flushes;
    /* Denial-of-service bounds (conn_guard.c, the listeners' accept paths). */
    metric_counter closed_header_timeout;  /* gateway_connections_closed_total{reason="header_timeout"} */
    metric_counter closed_body_timeout;    /* {reason="body_timeout"} */
    metric_counter closed_body_budget;     /* {reason="body_budget"} */
    metric_counter unauthenticated_bodies; /* gateway_unauthenticated_bodies_limited_total */
    metric_counter refused_on_headers;     /* gateway_unauthenticated_bodies_refused_total */
    metric_counter accept_errors;          /* gateway_accept_errors_total (EMFILE and the like) */
    metric_counter accept_backoffs;        /* gateway_accept_backoffs_total */
    /* --access-log lines (summed from the workers' buffers at scrape time) */
    metric_counter access_log_written;
    metric_counter access_log_sampled_out;
    metric_counter access_log_dropped;
} gateway_metrics;

void metrics_count_request(gateway_metrics *m, int status, double seconds);

/* Adds every counter and histogram of from into into (a scrape sums the workers' and the
 * control thread's structs; the latest reload time wins). */
void metrics_add(gateway_metrics *into, const gateway_metrics *from);

/* Counters of the review engine itself (not per kind), kept by review.c. */
typedef struct review_engine_stats {
    size_t queued;                   /* flights waiting for the token bucket or a retry */
    uint64_t queue_rejections;       /* reviews refused because the queue was full */
    uint64_t queue_pushed_out;       /* of those: queued reviews pushed out for a flow below its fair share */
    uint64_t rate_limited;           /* calls that had to wait for the token bucket */
    uint64_t retries;                /* calls repeated after a 429, reset or 5xx */
    uint64_t circuit_opens;          /* times the circuit opened */
    uint64_t circuit_rejections;     /* reviews failed fast while it was open */
    uint64_t queue_timeouts;         /* reviews whose deadline passed while they waited to be sent */
    int circuit_open;                /* 1 while open or half-open */
    uint64_t refreshes_started;      /* refresh-ahead reviews sent */
    uint64_t refreshes_skipped;      /* refresh-ahead reviews not sent (busy, limited or failing) */
    double rate_qps;                 /* the call-rate ceiling (--apiserver-qps) */
    size_t in_flight;                /* API calls running now */
    size_t concurrency_limit;        /* the adaptive limit on them (concurrency_limit.h) */
    uint64_t concurrency_limit_cuts; /* times a 429 or a latency rise lowered it */
    uint64_t concurrency_limited;    /* times a call waited because the limit was reached */
    uint64_t throttled;              /* 429 answers (API Priority and Fairness) */
} review_engine_stats;

/* Values that are read from elsewhere at scrape time. */
typedef struct metrics_gauges {
    review_engine_stats engine;
    uint64_t stale_served;
    size_t tokenreview_cache_entries;
    uint64_t tokenreview_cache_evictions;
    size_t subjectaccessreview_cache_entries;
    uint64_t subjectaccessreview_cache_evictions;
    double process_start_time_seconds;
    size_t workers;                 /* gateway_workers */
    size_t connections_open;        /* gateway_connections_open: main-listener connections, all workers */
    size_t connections_limit;       /* gateway_connections_limit: --max-connections */
    bool policy_last_reload_failed; /* the latest load attempt failed (until one succeeds) */
    bool policy_file_in_sync;       /* the running policy is the file on disk */
} metrics_gauges;

/* Appends the whole exposition to out. Returns 0, or -1 if out could not grow. */
int metrics_render(struct evbuffer *out, const gateway_metrics *m, const metrics_gauges *g);

#endif
