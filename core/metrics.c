/* metrics.c owns the metric names, bucket bounds and the Prometheus text rendering. */
#include "metrics.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <luajit.h>
#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Seconds; fit both sub-millisecond cache hits and multi-second API stalls. */
static const double bucket_bounds[METRICS_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                      0.025,  0.05,    0.1,    0.25,  0.5,    1,     5};

const char *api_error_name(api_error error)
{
    switch (error) {
    case API_ERROR_TIMEOUT: return "timeout";
    case API_ERROR_THROTTLED: return "throttled";
    case API_ERROR_HTTP: return "http";
    case API_ERROR_NETWORK: return "network";
    case API_ERROR_BAD_RESPONSE: return "bad_response";
    default: return "none";
    }
}

void metrics_histogram_observe(metrics_histogram *h, double seconds)
{
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        if (seconds <= bucket_bounds[i]) {
            metric_add(&h->bucket_counts[i], 1);
            break;
        }
    }
    metric_add(&h->count, 1);
    metric_double_set(&h->sum, metric_double_get(&h->sum) + seconds);
}

void metrics_count_request(gateway_metrics *m, int status, double seconds)
{
    if (status >= METRICS_STATUS_MIN && status <= METRICS_STATUS_MAX)
        metric_add(&m->requests_by_code[status - METRICS_STATUS_MIN], 1);
    metrics_histogram_observe(&m->request_duration, seconds);
}

static int render_counter(struct evbuffer *out, const char *name, const char *help, uint64_t value)
{
    return evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
                               (unsigned long long)value) < 0
               ? -1
               : 0;
}

static int render_gauge(struct evbuffer *out, const char *name, const char *help, double value)
{
    return evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, value) < 0 ? -1
                                                                                                                    : 0;
}

static int render_histogram(struct evbuffer *out, const char *name, const char *help, const metrics_histogram *h)
{
    int rc = evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cumulative = 0;
    for (int i = 0; i < METRICS_BUCKETS && rc >= 0; i++) {
        cumulative += h->bucket_counts[i];
        rc = evbuffer_add_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_bounds[i],
                                 (unsigned long long)cumulative);
    }
    if (rc >= 0)
        rc = evbuffer_add_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", name,
                                 (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
    return rc < 0 ? -1 : 0;
}

static int render_review_family(struct evbuffer *out, const char *family, const review_metrics *r, size_t entries,
                                uint64_t evictions)
{
    char name[128];
    int rc = 0;
#define NAME(suffix) (snprintf(name, sizeof(name), "gateway_%s_%s", family, suffix), name)
    rc |= render_counter(out, NAME("cache_hits_total"), "Lookups answered from the cache.", r->cache_hits);
    rc |= render_counter(out, NAME("cache_misses_total"), "Lookups not in the cache.", r->cache_misses);
    rc |= render_counter(out, NAME("api_calls_total"), "Reviews sent to the API server.", r->api_calls);
    rc |= render_histogram(out, NAME("api_latency_seconds"), "Latency of reviews sent to the API server.",
                           &r->api_latency);
    NAME("api_errors_total");
    rc |= evbuffer_add_printf(out, "# HELP %s Failed API calls by reason.\n# TYPE %s counter\n", name, name) < 0;
    for (int e = 0; e < API_ERROR_KINDS; e++)
        rc |= evbuffer_add_printf(out, "%s{reason=\"%s\"} %llu\n", name, api_error_name((api_error)e),
                                  (unsigned long long)r->api_errors[e]) < 0;
    rc |= render_counter(out, NAME("coalesced_total"), "Requests that joined an in-flight review.", r->coalesced);
    rc |= render_counter(out, NAME("unrepresentable_total"),
                         "Authenticated identities refused (and cached as refused) because the gateway cannot "
                         "carry them: too many groups or extra values, strings too long or with control characters.",
                         r->unrepresentable);
    rc |= render_gauge(out, NAME("cache_entries"), "Entries in the cache.", (double)entries);
    rc |= render_counter(out, NAME("cache_evictions_total"), "Entries evicted to stay within the bound.", evictions);
#undef NAME
    return rc ? -1 : 0;
}

static double process_resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    return n == 2 ? (double)resident * (double)sysconf(_SC_PAGESIZE) : 0;
}

static double process_cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

#ifndef TOKENGATE_VERSION
#define TOKENGATE_VERSION "0.0.0"
#endif
#ifndef TOKENGATE_GIT
#define TOKENGATE_GIT "unknown"
#endif

/* Appends value as a Prometheus label value (\\, \" and \n escaped). */
static int add_label_value(struct evbuffer *out, const char *value)
{
    int rc = 0;
    for (const char *p = value; *p && !rc; p++) {
        const char *esc = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        rc = esc ? evbuffer_add(out, esc, 2) : evbuffer_add(out, p, 1);
    }
    return rc;
}

/* tokengate_build_info{version,revision,luajit,openssl,libevent,libcurl} 1: which build
 * runs where (join it to other series with `* on (instance) group_left(version)`). The
 * library versions are the ones loaded at run time, not the headers'. */
static int render_build_info(struct evbuffer *out)
{
    const curl_version_info_data *curl = curl_version_info(CURLVERSION_NOW);
    const struct {
        const char *name, *value;
    } labels[] = {
        {"version", TOKENGATE_VERSION},    {"revision", TOKENGATE_GIT},
        {"luajit", LUAJIT_VERSION},        {"openssl", OpenSSL_version(OPENSSL_VERSION)},
        {"libevent", event_get_version()}, {"libcurl", curl && curl->version ? curl->version : "unknown"},
    };
    int rc = evbuffer_add_printf(out, "# HELP tokengate_build_info The running build: version, git revision and "
                                      "library versions; always 1.\n"
                                      "# TYPE tokengate_build_info gauge\ntokengate_build_info{") < 0;
    for (size_t i = 0; i < sizeof(labels) / sizeof(labels[0]); i++) {
        rc |= evbuffer_add_printf(out, "%s%s=\"", i ? "," : "", labels[i].name) < 0;
        rc |= add_label_value(out, labels[i].value) != 0;
        rc |= evbuffer_add(out, "\"", 1) != 0;
    }
    rc |= evbuffer_add(out, "} 1\n", 4) != 0;
    return rc;
}

int metrics_render(struct evbuffer *out, const gateway_metrics *m, const metrics_gauges *g)
{
    int rc = render_review_family(out, "tokenreview", &m->tokenreview, g->tokenreview_cache_entries,
                                  g->tokenreview_cache_evictions);
    rc |= render_review_family(out, "subjectaccessreview", &m->subjectaccessreview,
                               g->subjectaccessreview_cache_entries, g->subjectaccessreview_cache_evictions);
    rc |= evbuffer_add_printf(out,
                              "# HELP gateway_policy_reloads_total Policy loads by result.\n"
                              "# TYPE gateway_policy_reloads_total counter\n"
                              "gateway_policy_reloads_total{result=\"success\"} %llu\n"
                              "gateway_policy_reloads_total{result=\"failure\"} %llu\n",
                              (unsigned long long)m->policy_reloads_success,
                              (unsigned long long)m->policy_reloads_failure) < 0;
    const review_engine_stats *e = &g->engine;
    rc |= render_gauge(out, "gateway_apiserver_queue_depth",
                       "Reviews waiting for the client-side rate limit or a retry.", (double)e->queued);
    rc |= render_counter(out, "gateway_apiserver_queue_rejections_total",
                         "Reviews refused at once (503) because the queue was full.", e->queue_rejections);
    rc |= render_counter(out, "gateway_apiserver_queue_pushed_out_total",
                         "Queued reviews refused (503) to make room for a flow below its fair share of the queue.",
                         e->queue_pushed_out);
    rc |= render_counter(out, "gateway_apiserver_rate_limited_total",
                         "Times a call had to wait for the client-side token bucket.", e->rate_limited);
    rc |= render_counter(out, "gateway_apiserver_retries_total", "API calls repeated after a 429, reset or 5xx.",
                         e->retries);
    rc |= render_gauge(out, "gateway_apiserver_circuit_open", "1 while the circuit breaker is open or half-open.",
                       (double)e->circuit_open);
    rc |= render_counter(out, "gateway_apiserver_circuit_opens_total", "Times the circuit breaker opened.",
                         e->circuit_opens);
    rc |= render_counter(out, "gateway_apiserver_circuit_rejections_total",
                         "Reviews failed fast (503) while the circuit was open.", e->circuit_rejections);
    rc |= render_counter(out, "gateway_apiserver_queue_timeouts_total",
                         "Reviews whose deadline passed while they waited to be sent (503).", e->queue_timeouts);
    rc |= render_counter(out, "gateway_tokenreview_stale_served_total",
                         "Requests answered from an expired positive verdict while the API server failed "
                         "(--stale-if-error).",
                         g->stale_served);
    rc |= evbuffer_add_printf(out,
                              "# HELP gateway_tokenreview_refreshes_total Refresh-ahead reviews of cached "
                              "tokens: started, or skipped (a review for the token running, the API server "
                              "throttling or failing, or no rate-limit token to spare).\n"
                              "# TYPE gateway_tokenreview_refreshes_total counter\n"
                              "gateway_tokenreview_refreshes_total{result=\"started\"} %llu\n"
                              "gateway_tokenreview_refreshes_total{result=\"skipped\"} %llu\n",
                              (unsigned long long)e->refreshes_started, (unsigned long long)e->refreshes_skipped) < 0;
    rc |= render_gauge(out, "gateway_apiserver_rate_qps",
                       "The client-side ceiling on API calls per second (--apiserver-qps; --apiserver-burst at once).",
                       e->rate_qps);
    rc |= render_gauge(out, "gateway_apiserver_inflight", "API calls (reviews) running now.", (double)e->in_flight);
    rc |= render_gauge(out, "gateway_apiserver_concurrency_limit",
                       "The adaptive limit on API calls in flight: grows while the API server keeps up, drops to what "
                       "it holds on a 429 and shrinks when its answers slow down.",
                       (double)e->concurrency_limit);
    rc |= render_counter(out, "gateway_apiserver_concurrency_limit_cuts_total",
                         "Times a 429 or a latency rise lowered the in-flight limit.", e->concurrency_limit_cuts);
    rc |=
        render_counter(out, "gateway_apiserver_concurrency_limited_total",
                       "Times a queued review waited because the in-flight limit was reached.", e->concurrency_limited);
    rc |= render_counter(out, "gateway_apiserver_throttled_total",
                         "429 answers from the API server (API Priority and Fairness); each review retries after "
                         "Retry-After within its deadline.",
                         e->throttled);
    rc |= render_gauge(out, "gateway_workers", "Event-loop threads serving the main listener (--workers).",
                       (double)g->workers);
    rc |= render_gauge(out, "gateway_connections_open", "Open client connections on the main listener.",
                       (double)g->connections_open);
    rc |=
        render_gauge(out, "gateway_connections_limit",
                     "Most client connections on the main listener (--max-connections).", (double)g->connections_limit);
    rc |= render_counter(out, "gateway_policy_errors_total",
                         "Policy hook calls that raised an error or returned a wrong value (answered 500).",
                         m->policy_errors);
    rc |= render_gauge(out, "gateway_policy_last_reload_success_timestamp_seconds",
                       "When the running policy was loaded (Unix time).", m->policy_last_reload_success_s);
    rc |= render_gauge(out, "gateway_policy_last_reload_failed",
                       "1 when the latest policy load (SIGHUP, --policy-watch) failed and the previous policy "
                       "kept running; stays 1 until a load succeeds.",
                       g->policy_last_reload_failed ? 1 : 0);
    rc |= render_gauge(out, "gateway_policy_file_in_sync",
                       "1 when the running policy is the --policy file as it is on disk now (always 1 for the "
                       "built-in policy and --policy none); 0 when the file changed since it was loaded, or "
                       "cannot be read.",
                       g->policy_file_in_sync ? 1 : 0);
    rc |= render_build_info(out);
    rc |= evbuffer_add_printf(out, "# HELP gateway_requests_total Answered requests by HTTP status.\n"
                                   "# TYPE gateway_requests_total counter\n") < 0;
    for (int s = METRICS_STATUS_MIN; s <= METRICS_STATUS_MAX; s++) {
        uint64_t v = m->requests_by_code[s - METRICS_STATUS_MIN];
        /* The answers the gateway exists to give are always present, so rate() over them
         * works from the first scrape (a series born at its first 503 would hide it). */
        bool always = s == 200 || s == 401 || s == 403 || s == 500 || s == 503;
        if (v || always)
            rc |= evbuffer_add_printf(out, "gateway_requests_total{code=\"%d\"} %llu\n", s, (unsigned long long)v) < 0;
    }
    rc |=
        render_histogram(out, "gateway_request_duration_seconds", "Time from request to answer.", &m->request_duration);
    rc |= render_counter(out, "gateway_cache_flushes_total", "Cache flushes requested on the admin listener.",
                         m->cache_flushes);
    rc |= evbuffer_add_printf(out,
                              "# HELP gateway_connections_closed_total Main-listener connections the gateway "
                              "closed: the request's headers or body not complete in time (--header-timeout, "
                              "--body-timeout), or the bodies being received over --max-buffered-body-bytes.\n"
                              "# TYPE gateway_connections_closed_total counter\n"
                              "gateway_connections_closed_total{reason=\"header_timeout\"} %llu\n"
                              "gateway_connections_closed_total{reason=\"body_timeout\"} %llu\n"
                              "gateway_connections_closed_total{reason=\"body_budget\"} %llu\n",
                              (unsigned long long)m->closed_header_timeout, (unsigned long long)m->closed_body_timeout,
                              (unsigned long long)m->closed_body_budget) < 0;
    rc |= render_counter(out, "gateway_unauthenticated_bodies_limited_total",
                         "Proxy mode: requests without Authorization held to --max-unauthenticated-body-bytes.",
                         m->unauthenticated_bodies);
    rc |= render_counter(out, "gateway_unauthenticated_bodies_refused_total",
                         "Proxy mode: requests without Authorization answered 401 on their headers, body unread.",
                         m->refused_on_headers);
    rc |= render_counter(out, "gateway_accept_errors_total",
                         "accept() failures on the listeners (out of file descriptors or memory).", m->accept_errors);
    rc |= render_counter(out, "gateway_accept_backoffs_total",
                         "Times a listener stopped accepting for a moment after such a failure.", m->accept_backoffs);
    rc |= evbuffer_add_printf(out,
                              "# HELP gateway_access_log_lines_total Decision log (--access-log) lines: "
                              "written, left out by --access-log-sample-allowed, or lost to a failed write.\n"
                              "# TYPE gateway_access_log_lines_total counter\n"
                              "gateway_access_log_lines_total{result=\"written\"} %llu\n"
                              "gateway_access_log_lines_total{result=\"sampled_out\"} %llu\n"
                              "gateway_access_log_lines_total{result=\"dropped\"} %llu\n",
                              (unsigned long long)m->access_log_written, (unsigned long long)m->access_log_sampled_out,
                              (unsigned long long)m->access_log_dropped) < 0;
    rc |= render_gauge(out, "process_start_time_seconds", "Start time of the process since the Unix epoch.",
                       g->process_start_time_seconds);
    rc |=
        render_gauge(out, "process_resident_memory_bytes", "Resident memory size in bytes.", process_resident_bytes());
    rc |= evbuffer_add_printf(out,
                              "# HELP process_cpu_seconds_total Total user and system CPU time in seconds.\n"
                              "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.6f\n",
                              process_cpu_seconds()) < 0;
    return rc ? -1 : 0;
}

/* into is the scrape's own sum (one thread); from is another thread's, read relaxed. */
static void histogram_add(metrics_histogram *into, const metrics_histogram *from)
{
    for (size_t i = 0; i < METRICS_BUCKETS; i++)
        metric_add(&into->bucket_counts[i], metric_get(&from->bucket_counts[i]));
    metric_add(&into->count, metric_get(&from->count));
    metric_double_set(&into->sum, metric_double_get(&into->sum) + metric_double_get(&from->sum));
}

static void review_metrics_add(review_metrics *into, const review_metrics *from)
{
    metric_add(&into->cache_hits, metric_get(&from->cache_hits));
    metric_add(&into->cache_misses, metric_get(&from->cache_misses));
    metric_add(&into->api_calls, metric_get(&from->api_calls));
    metric_add(&into->coalesced, metric_get(&from->coalesced));
    metric_add(&into->unrepresentable, metric_get(&from->unrepresentable));
    for (size_t i = 0; i < API_ERROR_KINDS; i++) metric_add(&into->api_errors[i], metric_get(&from->api_errors[i]));
    histogram_add(&into->api_latency, &from->api_latency);
}

void metrics_add(gateway_metrics *into, const gateway_metrics *from)
{
    review_metrics_add(&into->tokenreview, &from->tokenreview);
    review_metrics_add(&into->subjectaccessreview, &from->subjectaccessreview);
    metric_add(&into->policy_reloads_success, metric_get(&from->policy_reloads_success));
    metric_add(&into->policy_reloads_failure, metric_get(&from->policy_reloads_failure));
    metric_add(&into->policy_errors, metric_get(&from->policy_errors));
    double reloaded = metric_double_get(&from->policy_last_reload_success_s);
    if (reloaded > metric_double_get(&into->policy_last_reload_success_s))
        metric_double_set(&into->policy_last_reload_success_s, reloaded);
    for (size_t i = 0; i < sizeof(into->requests_by_code) / sizeof(into->requests_by_code[0]); i++)
        metric_add(&into->requests_by_code[i], metric_get(&from->requests_by_code[i]));
    histogram_add(&into->request_duration, &from->request_duration);
    metric_add(&into->cache_flushes, metric_get(&from->cache_flushes));
    metric_add(&into->closed_header_timeout, metric_get(&from->closed_header_timeout));
    metric_add(&into->closed_body_timeout, metric_get(&from->closed_body_timeout));
    metric_add(&into->closed_body_budget, metric_get(&from->closed_body_budget));
    metric_add(&into->unauthenticated_bodies, metric_get(&from->unauthenticated_bodies));
    metric_add(&into->refused_on_headers, metric_get(&from->refused_on_headers));
    metric_add(&into->accept_errors, metric_get(&from->accept_errors));
    metric_add(&into->accept_backoffs, metric_get(&from->accept_backoffs));
    metric_add(&into->access_log_written, metric_get(&from->access_log_written));
    metric_add(&into->access_log_sampled_out, metric_get(&from->access_log_sampled_out));
    metric_add(&into->access_log_dropped, metric_get(&from->access_log_dropped));
}
