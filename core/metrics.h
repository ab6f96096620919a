/* Metrics: plain counters and fixed-bucket histograms in structs owned by the server, and
 * their rendering in the Prometheus text format (names are SPEC.md's contract).
 *
 * The counters are plain integers, each struct written by the one event-loop thread that
 * owns it (a worker, or the control thread); a scrape on the control thread sums them
 * (metrics_add) without a lock — see docs/ARCHITECTURE.md, "Threads". */
#ifndef TOKENGATE_METRICS_H
#define TOKENGATE_METRICS_H

#include <event2/buffer.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
    uint64_t bucket_counts[METRICS_BUCKETS]; /* not cumulative; rendered cumulatively */
    uint64_t count;
    double sum;
} metrics_histogram;

void metrics_histogram_observe(metrics_histogram *h, double seconds);

/* One family per kind of review (tokenreview, later subjectaccessreview). */
typedef struct review_metrics {
    uint64_t cache_hits;
    uint64_t cache_misses;
    uint64_t api_calls;
    uint64_t coalesced;
    uint64_t unrepresentable; /* identities refused (cached negative) as not representable */
    uint64_t api_errors[API_ERROR_KINDS];
    metrics_histogram api_latency;
} review_metrics;

#define METRICS_STATUS_MIN 100
#define METRICS_STATUS_MAX 599

typedef struct gateway_metrics {
    review_metrics tokenreview;
    review_metrics subjectaccessreview;
    uint64_t policy_reloads_success;
    uint64_t policy_reloads_failure;
    uint64_t policy_errors;
    double policy_last_reload_success_s; /* Unix time; 0 before the first load */
    uint64_t requests_by_code[METRICS_STATUS_MAX - METRICS_STATUS_MIN + 1];
    metrics_histogram request_duration;
    uint64_t cache_flushes;
    /* Denial-of-service bounds (conn_guard.c, the listeners' accept paths). */
    uint64_t closed_header_timeout;  /* gateway_connections_closed_total{reason="header_timeout"} */
    uint64_t closed_body_timeout;    /* {reason="body_timeout"} */
    uint64_t closed_body_budget;     /* {reason="body_budget"} */
    uint64_t unauthenticated_bodies; /* gateway_unauthenticated_bodies_limited_total */
    uint64_t accept_errors;          /* gateway_accept_errors_total (EMFILE and the like) */
    uint64_t accept_backoffs;        /* gateway_accept_backoffs_total */
    /* --access-log lines (summed from the workers' buffers at scrape time) */
    uint64_t access_log_written;
    uint64_t access_log_sampled_out;
    uint64_t access_log_dropped;
} gateway_metrics;

void metrics_count_request(gateway_metrics *m, int status, double seconds);

/* Adds every counter and histogram of from into into (a scrape sums the workers' and the
 * control thread's structs; the latest reload time wins). */
void metrics_add(gateway_metrics *into, const gateway_metrics *from);

/* Counters of the review engine itself (not per kind), kept by review.c. */
typedef struct review_engine_stats {
    size_t queued;              /* flights waiting for the token bucket or a retry */
    uint64_t queue_rejections;  /* reviews refused because the queue was full */
    uint64_t queue_pushed_out;  /* of those: queued reviews pushed out for a flow below its fair share */
    uint64_t rate_limited;      /* calls that had to wait for the token bucket */
    uint64_t retries;           /* calls repeated after a 429, reset or 5xx */
    uint64_t circuit_opens;     /* times the circuit opened */
    uint64_t circuit_rejections; /* reviews failed fast while it was open */
    uint64_t throttle_rejections; /* reviews failed fast during a 429 pause longer than their deadline */
    uint64_t queue_timeouts;     /* reviews whose deadline passed while they waited to be sent */
    int circuit_open;           /* 1 while open or half-open */
    uint64_t refreshes_started;  /* refresh-ahead reviews sent */
    uint64_t refreshes_skipped;  /* refresh-ahead reviews not sent (busy, limited or failing) */
    uint64_t rate_cuts;          /* times a 429 halved the adaptive call rate */
    double rate_qps;             /* the adaptive call rate now (at most --apiserver-qps) */
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
    size_t workers;           /* gateway_workers */
    size_t connections_open;  /* gateway_connections_open: main-listener connections, all workers */
    size_t connections_limit; /* gateway_connections_limit: --max-connections */
    bool policy_last_reload_failed; /* the latest load attempt failed (until one succeeds) */
    bool policy_file_in_sync;       /* the running policy is the file on disk */
} metrics_gauges;

/* Appends the whole exposition to out. Returns 0, or -1 if out could not grow. */
int metrics_render(struct evbuffer *out, const gateway_metrics *m, const metrics_gauges *g);

#endif
