/* server.c owns the process: the control thread's event loop, the workers (worker.c), and
 * everything they share. The control thread runs the admin listener, the API client and
 * the review engine (so single-flight, the rate limit, the 429 pause and the circuit
 * breaker see every worker's misses), the readiness probe, signals, policy reloads and
 * graceful shutdown. Workers send it their reviews as mails and get the outcomes back the
 * same way (worker.h). */
#include "server.h"
#include "admin_auth.h"
#include "admin_guard.h"

#include "accept_backoff.h"
#include "access_log.h"
#include "api_client.h"
#include "bearer.h"
#include "cache_key.h"
#include "conn_limit.h"
#include "custom_metrics.h"
#include "http_strict.h"
#include "identity.h"
#include "log.h"
#include "mailbox.h"
#include "metrics.h"
#include "policy.h"
#include "review.h"
#include "revocation_watch.h"
#include "sar.h"
#include "tls_server.h"
#include "token_cache.h"
#include "tokenreview.h"
#include "worker.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define READINESS_PROBE_INTERVAL_S 5
#define READINESS_PROBE_TOKEN "tokengate-readiness-probe"
#define POLICY_WATCH_INTERVAL_S 2
#define CUSTOM_SERIES_PER_METRIC 1000 /* label sets one policy metric may hold */
#define LISTEN_BACKLOG 1024

typedef struct server {
    const config *cfg;
    struct event_base *base; /* the control thread's loop */
    struct evhttp *admin_http;
    conn_limit *admin_limit;       /* --admin-max-connections */
    accept_backoff *admin_backoff; /* pauses the admin listener when accept() runs out of fds */
    struct event *sigterm_event, *sigint_event, *sighup_event;
    struct event *sigusr1_event; /* reopens --access-log */
    access_log *access_log;      /* --access-log; NULL: off. Freed after the workers. */
    struct event *probe_timer;
    struct event *policy_watch_timer;
    struct stat policy_file_stat; /* what --policy-watch compares against */
    cache_keyer *keyer;           /* the secret; workers use clones */
    token_cache *tokenreview_cache;
    token_cache *sar_cache;
    api_client *api;
    review_engine *reviews;
    review_kind tokenreview_kind;
    review_kind sar_kind;
    custom_metrics *custom;
    policy_host *policy; /* the control thread's own state: ttl(), /policy, reload checks; NULL with --policy none */
    gateway_metrics metrics; /* the control thread's counters (API calls, reloads, flushes) */
    double start_time_s;
    bool api_ready; /* the API server answered a review */
    bool probe_running;
    char *probe_body; /* borrowed by the running probe call */
    size_t probe_body_len;
    mailbox *inbox;                /* review mails from the workers */
    gateway_mail *on_flights;      /* review mails waiting on a flight, for teardown */
    worker **workers;
    size_t n_workers;
    tls_holder tls;                /* tls.ctx NULL for plain HTTP; swapped on SIGHUP */
    bool tls_lock_ready;
    bool shutting_down;
    int64_t shutdown_deadline_ms;
    struct event *shutdown_timer;
    bool exiting;              /* MAIL_EXIT sent: waiting for the workers to leave their loops */
    int64_t exit_deadline_ms;  /* then a worker still in a callback is abandoned (_exit) */
    policy_limits policy_limits;
    policy_source *policy_source; /* the version every worker runs (validated, a reference) */
    revocation_watch *revocations; /* --watch-revocations; NULL when off */
    jwks_source *jwks;             /* --jwt-preverify; NULL when off */
    uint64_t admin_refusals;       /* Host/cross-site refusals on the admin listener (logged 1 in 1000) */
    char *admin_token;             /* --admin-token-file's token; NULL: no admin authentication */
    admin_auth *admin_auth;        /* --admin-auth-review; NULL when off */
    size_t admin_token_len;
} server;

/* ---- revocations (--watch-revocations, docs/REVOCATION.md) ---------------------------- */

static bool revoked_identity(const void *value, size_t value_len, bool negative, void *ctx)
{
    identity_view view;
    if (negative || identity_view_parse(value, value_len, &view) != 0) return false;
    return revocation_target_matches(ctx, &view);
}

/* A SubjectAccessReview verdict goes with its identity; one whose identity could not be
 * kept (sar_cache_value_pack) goes with every revocation — fail closed. */
static bool revoked_sar_verdict(const void *value, size_t value_len, bool negative, void *ctx)
{
    (void)negative;
    const unsigned char *identity;
    size_t identity_len, reason_len;
    const char *reason;
    identity_view view;
    if (sar_cache_value_unpack(value, value_len, &identity, &identity_len, &reason, &reason_len) != 0 ||
        identity_len == 0 || identity_view_parse(identity, identity_len, &view) != 0)
        return true;
    return revocation_target_matches(ctx, &view);
}

static size_t on_revoked(void *arg, const revocation_target *target)
{
    server *srv = arg;
    size_t n = token_cache_flush_matching(srv->tokenreview_cache, revoked_identity, (void *)target);
    return n + token_cache_flush_matching(srv->sar_cache, revoked_sar_verdict, (void *)target);
}

static bool collect_identity(const void *value, size_t value_len, bool negative, void *ctx)
{
    identity_view view;
    if (!negative && identity_view_parse(value, value_len, &view) == 0) revocation_collector_add(ctx, &view);
    return false; /* only looking */
}

/* Before a relist: every identity cached now, so the ones whose ServiceAccount or Pod is
 * missing from the list (deleted while nobody watched) can be evicted. */
static void on_collect(void *arg, revocation_kind kind, revocation_collector *collector)
{
    (void)kind;
    server *srv = arg;
    token_cache_flush_matching(srv->tokenreview_cache, collect_identity, collector);
}

/* kind->positive_ttl for TokenReview: the policy's ttl(user), if it has one. */
static int64_t tokenreview_policy_ttl(void *ctx, const unsigned char *value, size_t value_len, int64_t default_ms)
{
    server *srv = ctx;
    identity_view view;
    if (identity_view_parse(value, value_len, &view) != 0) return default_ms;
    if (!srv->policy) return default_ms;
    int64_t ttl_ms = 0;
    char err[512];
    switch (policy_ttl(srv->policy, &view, &ttl_ms, err, sizeof(err))) {
    case 1: return ttl_ms;
    case 0: return default_ms;
    default:
        /* A failing ttl hook must not extend trust: don't cache this verdict at all. */
        srv->metrics.policy_errors++;
        log_warn("policy error; verdict not cached", "hook", "ttl", "error", err, NULL);
        return 0;
    }
}

/* kind->vet for TokenReview: an identity whose ServiceAccount or Pod the revocation watch
 * saw deleted is refused even when the API server still says "authenticated" (its own
 * success cache outlives the deletion by seconds). The refusal is an ordinary negative
 * verdict: 401, cached for --cache-negative-ttl. */
static bool tokenreview_vet(void *ctx, unsigned char *value, size_t *value_len, char *reason, size_t cap)
{
    server *srv = ctx;
    identity_view view;
    if (!srv->revocations || identity_view_parse(value, *value_len, &view) != 0) return true;
    if (!revocation_watch_refuse(srv->revocations, &view)) return true;
    snprintf(reason, cap, "the ServiceAccount or Pod of this identity was deleted");
    char user[320];
    snprintf(user, sizeof(user), "%.*s", (int)view.username.len, view.username.ptr);
    log_info("review answer refused: the identity's ServiceAccount or Pod was deleted", "user", user, NULL);
    *value_len = 0;
    return false;
}

/* kind->vet for SubjectAccessReview: an "allowed" for a revoked identity becomes a denial. */
static bool sar_vet(void *ctx, unsigned char *value, size_t *value_len, char *reason, size_t cap)
{
    server *srv = ctx;
    const unsigned char *identity;
    size_t identity_len, old_reason_len;
    const char *old_reason;
    identity_view view;
    if (!srv->revocations ||
        sar_cache_value_unpack(value, *value_len, &identity, &identity_len, &old_reason, &old_reason_len) != 0 ||
        identity_len == 0 || identity_view_parse(identity, identity_len, &view) != 0)
        return true;
    if (!revocation_watch_refuse(srv->revocations, &view)) return true;
    snprintf(reason, cap, "the ServiceAccount or Pod of this identity was deleted");
    unsigned char copy[TOKEN_CACHE_VALUE_MAX];
    memcpy(copy, identity, identity_len);
    *value_len = sar_cache_value_pack(copy, identity_len, reason, strlen(reason), value, TOKEN_CACHE_VALUE_MAX);
    return false;
}

/* The audiences in force: the policy's if it declares any, else --audiences. */
static size_t current_audiences(const server *srv, const char *const **out)
{
    size_t n = srv->policy ? policy_audiences(srv->policy, out) : 0;
    if (n) return n;
    *out = srv->cfg->audiences;
    return srv->cfg->n_audiences;
}

/* kind->parse for TokenReview. */
static void tokenreview_parse(const char *body, size_t body_len, const void *parse_arg, unsigned char *value,
                              review_parsed *out)
{
    const tokenreview_parse_arg *arg = parse_arg;
    size_t len = 0;
    switch (tokenreview_parse_response(body, body_len, arg->audiences, arg->n_audiences, value, TOKEN_CACHE_VALUE_MAX,
                                       &len, out->reason, sizeof(out->reason))) {
    case TOKENREVIEW_AUTHENTICATED:
        out->verdict = REVIEW_POSITIVE;
        out->value_len = len;
        break;
    case TOKENREVIEW_UNAUTHENTICATED:
        out->verdict = REVIEW_NEGATIVE;
        out->value_len = 0;
        break;
    case TOKENREVIEW_UNREPRESENTABLE:
        out->verdict = REVIEW_NEGATIVE; /* cached: the next request is refused without a review */
        out->value_len = 0;
        out->unrepresentable = true;
        break;
    case TOKENREVIEW_BAD_RESPONSE:
        out->verdict = REVIEW_ERROR;
        break;
    }
}

/* kind->parse for SubjectAccessReview: a denied verdict keeps its reason as its value. */
static void sar_parse(const char *body, size_t body_len, const void *parse_arg, unsigned char *value,
                      review_parsed *out)
{
    const sar_parse_arg *arg = parse_arg;
    switch (sar_parse_response(body, body_len, out->reason, sizeof(out->reason))) {
    case SAR_ALLOWED:
        out->verdict = REVIEW_POSITIVE;
        out->value_len = sar_cache_value_pack(arg->identity, arg->identity_len, NULL, 0, value, TOKEN_CACHE_VALUE_MAX);
        break;
    case SAR_DENIED:
        out->verdict = REVIEW_NEGATIVE;
        out->value_len = sar_cache_value_pack(arg->identity, arg->identity_len, out->reason, strlen(out->reason), value,
                                              TOKEN_CACHE_VALUE_MAX);
        break;
    case SAR_BAD_RESPONSE:
        out->verdict = REVIEW_ERROR;
        break;
    }
}

/* ---- readiness ---------------------------------------------------------------------- */

static void schedule_probe(server *srv);

/* Every API answer updates readiness: a review answer proves the API server and the
 * gateway's RBAC work; 401/403 prove the gateway's own credential or RBAC does not. */
static void observe_api(const api_response *response, void *arg)
{
    server *srv = arg;
    if (response->error == API_ERROR_NONE) {
        if (!srv->api_ready) log_info("API server answered; ready", NULL);
        srv->api_ready = true;
    } else if (response->http_status == 401 || response->http_status == 403) {
        if (response->http_status == 403)
            log_error("the gateway's ServiceAccount may not create tokenreviews (403 Forbidden); grant it "
                      "create on tokenreviews.authentication.k8s.io",
                      NULL);
        srv->api_ready = false;
        schedule_probe(srv);
    }
}

static void free_probe_body(server *srv)
{
    if (!srv->probe_body) return;
    OPENSSL_cleanse(srv->probe_body, srv->probe_body_len);
    free(srv->probe_body);
    srv->probe_body = NULL;
}

static void on_probe_done(const api_response *response, void *arg)
{
    server *srv = arg;
    srv->probe_running = false;
    free_probe_body(srv);
    /* The probe is a real API call: count it with the others. */
    srv->metrics.tokenreview.api_calls++;
    metrics_histogram_observe(&srv->metrics.tokenreview.api_latency, response->latency_s);
    if (response->error != API_ERROR_NONE) {
        srv->metrics.tokenreview.api_errors[response->error]++;
        log_warn("readiness probe of the API server failed", "detail", response->detail, NULL);
        schedule_probe(srv);
    }
}

static void on_probe_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    server *srv = arg;
    if (srv->api_ready || srv->probe_running) return;
    size_t len = 0;
    const char *const *audiences;
    size_t n_audiences = current_audiences(srv, &audiences);
    char *body = tokenreview_request_body(READINESS_PROBE_TOKEN, strlen(READINESS_PROBE_TOKEN), audiences,
                                          n_audiences, &len);
    srv->probe_body = body;
    srv->probe_body_len = len;
    if (body && api_client_post(srv->api, TOKENREVIEW_API_PATH, body, len, 0, on_probe_done, srv) == 0) {
        srv->probe_running = true;
    } else {
        free_probe_body(srv);
        schedule_probe(srv);
    }
}

static void schedule_probe(server *srv)
{
    if (srv->probe_running || evtimer_pending(srv->probe_timer, NULL)) return;
    struct timeval tv = {READINESS_PROBE_INTERVAL_S, 0};
    evtimer_add(srv->probe_timer, &tv);
}

/* ---- admin listener ------------------------------------------------------------------ */

static void admin_text(struct evhttp_request *req, int status, const char *reason, const char *content_type,
                       struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    evhttp_send_reply(req, status, reason, body);
}

static void admin_simple(struct evhttp_request *req, int status, const char *reason, const char *text)
{
    struct evbuffer *buf = evbuffer_new();
    if (buf) evbuffer_add_printf(buf, "%s\n", text);
    admin_text(req, status, reason, "text/plain; charset=utf-8", buf);
    if (buf) evbuffer_free(buf);
}

/* Workers whose loop has not turned for more than WORKER_STUCK_MS; *worst gets the
 * index of the longest silent one and *worst_ms its silence. */
static size_t stuck_workers(const server *srv, size_t *worst, int64_t *worst_ms)
{
    int64_t now = monotonic_ms();
    size_t n = 0;
    *worst = 0;
    *worst_ms = 0;
    for (size_t i = 0; i < srv->n_workers; i++) {
        int64_t silence = worker_loop_silence_ms(srv->workers[i], now);
        if (silence <= WORKER_STUCK_MS) continue;
        n++;
        if (silence > *worst_ms) *worst = i, *worst_ms = silence;
    }
    return n;
}

/* Live while every worker's loop turns: a worker stuck in a callback serves nobody, and
 * only a restart gets its connections back. Never depends on the API server. */
static void admin_livez(server *srv, struct evhttp_request *req)
{
    size_t worst;
    int64_t worst_ms;
    size_t stuck = stuck_workers(srv, &worst, &worst_ms);
    if (stuck == 0) {
        admin_simple(req, 200, "OK", "ok");
        return;
    }
    char text[160];
    snprintf(text, sizeof(text), "not live: %zu worker(s) stuck; worker %zu has not returned to its event loop for %lld ms",
             stuck, worst, (long long)worst_ms);
    admin_simple(req, 503, "Service Unavailable", text);
}

static void admin_metrics(server *srv, struct evhttp_request *req)
{
    token_cache_stats cs, ss;
    token_cache_get_stats(srv->tokenreview_cache, &cs);
    token_cache_get_stats(srv->sar_cache, &ss);
    metrics_gauges g = {
        .tokenreview_cache_entries = cs.entries,
        .tokenreview_cache_evictions = cs.evictions,
        .subjectaccessreview_cache_entries = ss.entries,
        .subjectaccessreview_cache_evictions = ss.evictions,
        .process_start_time_seconds = srv->start_time_s,
        .workers = srv->n_workers,
        .connections_limit = srv->cfg->max_connections,
        .policy_file_in_sync = true,
    };
    if (srv->policy) {
        policy_info info;
        policy_host_info(srv->policy, &info);
        g.policy_last_reload_failed = info.last_error[0] != '\0';
        g.policy_file_in_sync = policy_host_file_matches(srv->policy);
    }
    review_engine_get_stats(srv->reviews, &g.engine);
    /* Each worker keeps its own counters (no shared cache line on the hot path); the
     * exposition is their sum with the control thread's. */
    gateway_metrics sum = srv->metrics;
    for (size_t i = 0; i < srv->n_workers; i++)
        worker_add_metrics(srv->workers[i], &sum, &g.stale_served, &g.connections_open);
    struct evbuffer *buf = evbuffer_new();
    int rc = !buf || metrics_render(buf, &sum, &g) != 0;
    if (!rc && srv->revocations) rc = revocation_watch_render_metrics(srv->revocations, buf) != 0;
    if (!rc && srv->jwks) rc = jwks_source_render_metrics(srv->jwks, buf) != 0;
    if (!rc) {
        /* How evenly the kernel spreads connections over the workers' sockets. */
        rc |= evbuffer_add_printf(buf, "# HELP gateway_worker_requests_total Requests answered, by worker.\n"
                                       "# TYPE gateway_worker_requests_total counter\n") < 0;
        for (size_t i = 0; i < srv->n_workers; i++)
            rc |= evbuffer_add_printf(buf, "gateway_worker_requests_total{worker=\"%zu\"} %llu\n", i,
                                      (unsigned long long)worker_requests_answered(srv->workers[i])) < 0;
        size_t worst;
        int64_t worst_ms;
        rc |= evbuffer_add_printf(buf,
                                  "# HELP gateway_workers_stuck Workers whose event loop has not turned for more "
                                  "than %d ms (what fails /livez).\n# TYPE gateway_workers_stuck gauge\n"
                                  "gateway_workers_stuck %zu\n",
                                  WORKER_STUCK_MS, stuck_workers(srv, &worst, &worst_ms)) < 0;
    }
    if (rc || custom_metrics_render(srv->custom, buf) != 0) {
        if (buf) evbuffer_free(buf);
        evhttp_send_error(req, 500, "metrics unavailable");
        return;
    }
    admin_text(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", buf);
    evbuffer_free(buf);
}

typedef struct flush_filter {
    const char *user;
    const char *namespace_name;
} flush_filter;

static bool flush_matches(const void *value, size_t value_len, bool negative, void *ctx)
{
    const flush_filter *f = ctx;
    identity_view view;
    if (negative || identity_view_parse(value, value_len, &view) != 0) return false;
    if (f->user)
        return view.username.len == strlen(f->user) && memcmp(view.username.ptr, f->user, view.username.len) == 0;
    str_view ns, name;
    return identity_serviceaccount(view.username, &ns, &name) && ns.len == strlen(f->namespace_name) &&
           memcmp(ns.ptr, f->namespace_name, ns.len) == 0;
}

/* A SubjectAccessReview verdict (allowed or denied) is flushed with the identity it was
 * asked for; one whose identity could not be kept goes with every filtered flush (fail
 * closed: an operator's flush must never leave a grant behind). */
static bool flush_matches_sar_verdict(const void *value, size_t value_len, bool negative, void *ctx)
{
    (void)negative;
    const unsigned char *identity;
    size_t identity_len, reason_len;
    const char *reason;
    if (sar_cache_value_unpack(value, value_len, &identity, &identity_len, &reason, &reason_len) != 0 ||
        identity_len == 0)
        return true;
    return flush_matches(identity, identity_len, false, ctx);
}

static void admin_flush(server *srv, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        admin_simple(req, 405, "Method Not Allowed", "use POST");
        return;
    }
    struct evkeyvalq query;
    TAILQ_INIT(&query);
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (q && evhttp_parse_query_str(q, &query) != 0) {
        admin_simple(req, 400, "Bad Request", "malformed query");
        return;
    }
    flush_filter filter = {evhttp_find_header(&query, "user"), evhttp_find_header(&query, "namespace")};
    const char *scope = "all";
    size_t flushed;
    if ((filter.user && filter.namespace_name) || (filter.user && !*filter.user) ||
        (filter.namespace_name && !*filter.namespace_name)) {
        evhttp_clear_headers(&query);
        admin_simple(req, 400, "Bad Request", "give at most one of user= or namespace=, non-empty");
        return;
    }
    if (filter.user || filter.namespace_name) {
        scope = filter.user ? "user" : "namespace";
        flushed = token_cache_flush_matching(srv->tokenreview_cache, flush_matches, &filter);
        flushed += token_cache_flush_matching(srv->sar_cache, flush_matches_sar_verdict, &filter);
    } else {
        flushed = token_cache_flush_all(srv->tokenreview_cache);
        flushed += token_cache_flush_all(srv->sar_cache);
    }
    srv->metrics.cache_flushes++;
    char count[32];
    snprintf(count, sizeof(count), "%zu", flushed);
    log_info("cache flushed", "scope", scope, "user", filter.user, "namespace", filter.namespace_name, LOG_NUMBER "entries",
             count, NULL);
    struct evbuffer *buf = evbuffer_new();
    if (buf) evbuffer_add_printf(buf, "{\"flushed\":%zu}\n", flushed);
    evhttp_clear_headers(&query);
    admin_text(req, 200, "OK", "application/json", buf);
    if (buf) evbuffer_free(buf);
}

/* GET /policy: which policy runs, its sha256, when it was loaded, the last reload error. */
static void admin_policy(server *srv, struct evhttp_request *req)
{
    json_t *doc;
    if (srv->policy) {
        policy_info info;
        policy_host_info(srv->policy, &info);
        doc = json_pack("{s:s, s:s, s:f, s:s, s:b, s:{s:I, s:I}, s:b}", "path", info.path, "sha256", info.sha256_hex,
                        "loaded_at", info.loaded_at, "last_error", info.last_error, "loaded", info.loaded, "reloads",
                        "success", (json_int_t)srv->metrics.policy_reloads_success, "failure",
                        (json_int_t)srv->metrics.policy_reloads_failure, "watch", srv->cfg->policy_watch);
    } else {
        doc = json_pack("{s:s, s:b}", "path", "none", "loaded", 0);
    }
    char *text = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    json_decref(doc);
    struct evbuffer *buf = evbuffer_new();
    if (!text || !buf) {
        free(text);
        if (buf) evbuffer_free(buf);
        evhttp_send_error(req, 500, "policy info unavailable");
        return;
    }
    evbuffer_add_printf(buf, "%s\n", text);
    free(text);
    admin_text(req, 200, "OK", "application/json", buf);
    evbuffer_free(buf);
}

#define ADMIN_TOKEN_MAX 4096

/* Reads --admin-token-file: one token (token68 characters), surrounding whitespace and a
 * final newline ignored. Returns 0, or -1 with an error logged (never the token). */
static int load_admin_token(server *srv, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        log_error("cannot read --admin-token-file", "path", path, "error", strerror(errno), NULL);
        return -1;
    }
    char *buf = calloc(1, ADMIN_TOKEN_MAX + 2);
    size_t n = buf ? fread(buf, 1, ADMIN_TOKEN_MAX + 1, f) : 0;
    fclose(f);
    if (!buf) return -1;
    size_t start = strspn(buf, " \t\r\n");
    while (n > start && strchr(" \t\r\n", buf[n - 1])) n--;
    size_t len = n > start ? n - start : 0;
    const char *bad = NULL;
    if (n > ADMIN_TOKEN_MAX) bad = "longer than 4096 bytes";
    else if (len == 0) bad = "empty";
    for (size_t i = start; !bad && i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-._~+/=", c)))
            bad = "not a bearer token (token68 characters only)";
    }
    if (bad) {
        OPENSSL_cleanse(buf, ADMIN_TOKEN_MAX + 2);
        free(buf);
        log_error("unusable --admin-token-file", "path", path, "error", bad, NULL);
        return -1;
    }
    memmove(buf, buf + start, len);
    OPENSSL_cleanse(buf + len, ADMIN_TOKEN_MAX + 2 - len);
    srv->admin_token = buf;
    srv->admin_token_len = len;
    return 0;
}

/* The bearer token of the request's only Authorization header; false when there is none,
 * several, or it is not "Bearer <token>". */
static bool admin_bearer(const server *srv, struct evhttp_request *req, const char **token, size_t *token_len)
{
    const struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *header = NULL;
    const struct evkeyval *kv;
    TAILQ_FOREACH(kv, in, next)
    {
        if (strcasecmp(kv->key, "Authorization") != 0) continue;
        if (header) return false;
        header = kv->value;
    }
    size_t max = srv->cfg->max_token_bytes > ADMIN_TOKEN_MAX ? srv->cfg->max_token_bytes : ADMIN_TOKEN_MAX;
    return bearer_extract(header, max, token, token_len) == BEARER_OK;
}

static void admin_unauthorized(struct evhttp_request *req)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer realm=\"tokengate-admin\"");
    admin_simple(req, 401, "Unauthorized", "unauthorized");
}

typedef enum { ADMIN_ANSWERED, ADMIN_PASS, ADMIN_PENDING } admin_gate;

/* Every admin request passes here first: strict framing, a Host a DNS-rebinding page
 * cannot send, nothing cross-site, and the caller's token when authentication is on
 * (health endpoints stay open: kubelet probes carry none): the static --admin-token-file
 * token, else (--admin-auth-review) a TokenReview and a non-resource SubjectAccessReview
 * of the path, answered later through on_admin_auth_done (ADMIN_PENDING). */
static admin_gate admin_request_allowed(server *srv, struct evhttp_request *req, const char *path)
{
    const config *cfg = srv->cfg;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    const char *framing = http_strict_violation(req);
    if (framing) {
        evhttp_add_header(out, "Connection", "close");
        admin_simple(req, 400, "Bad Request", framing);
        return ADMIN_ANSWERED;
    }
    const char *host = evhttp_find_header(in, "Host");
    if (!admin_host_allowed(host, cfg->admin_listen, cfg->admin_allowed_hosts)) {
        if (srv->admin_refusals++ % 1000 == 0)
            log_warn("admin request refused: Host not allowed (DNS rebinding?); see --admin-allowed-hosts", NULL);
        admin_simple(req, 403, "Forbidden", "forbidden: Host not allowed on the admin listener");
        return ADMIN_ANSWERED;
    }
    bool is_post = evhttp_request_get_command(req) == EVHTTP_REQ_POST;
    const char *cross = admin_cross_site_violation(
        is_post, host, evhttp_find_header(in, "Origin"), evhttp_find_header(in, "Sec-Fetch-Site"),
        evhttp_find_header(in, "Content-Type"), evbuffer_get_length(evhttp_request_get_input_buffer(req)));
    if (cross) {
        if (srv->admin_refusals++ % 1000 == 0) log_warn("admin request refused: cross-site", "reason", cross, NULL);
        char body[128];
        snprintf(body, sizeof(body), "forbidden: %s", cross);
        admin_simple(req, 403, "Forbidden", body);
        return ADMIN_ANSWERED;
    }
    bool open = strcmp(path, "/healthz") == 0 || strcmp(path, "/livez") == 0 || strcmp(path, "/readyz") == 0;
    if (open || (!srv->admin_token && !srv->admin_auth)) return ADMIN_PASS;
    const char *token;
    size_t token_len;
    if (!admin_bearer(srv, req, &token, &token_len)) {
        admin_unauthorized(req);
        return ADMIN_ANSWERED;
    }
    if (srv->admin_token && token_len == srv->admin_token_len &&
        CRYPTO_memcmp(token, srv->admin_token, token_len) == 0)
        return ADMIN_PASS;
    if (srv->admin_auth) {
        /* kube-rbac-proxy's mapping: GET/HEAD read (get), POST changes (create). */
        admin_auth_check(srv->admin_auth, token, token_len, is_post ? "create" : "get", path, req);
        return ADMIN_PENDING;
    }
    admin_unauthorized(req);
    return ADMIN_ANSWERED;
}

static void admin_dispatch(server *srv, struct evhttp_request *req, const char *path);

static const char *admin_path(struct evhttp_request *req)
{
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    return path ? path : "/";
}

static void on_admin_auth_done(admin_auth_verdict verdict, int retry_after_s, void *ctx, void *arg)
{
    server *srv = ctx;
    struct evhttp_request *req = arg;
    switch (verdict) {
    case ADMIN_AUTH_ALLOWED: admin_dispatch(srv, req, admin_path(req)); break;
    case ADMIN_AUTH_UNAUTHENTICATED: admin_unauthorized(req); break;
    case ADMIN_AUTH_FORBIDDEN: admin_simple(req, 403, "Forbidden", "forbidden"); break;
    case ADMIN_AUTH_UNAVAILABLE: {
        char value[16];
        snprintf(value, sizeof(value), "%d", retry_after_s > 0 ? retry_after_s : 1);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", value);
        admin_simple(req, 503, "Service Unavailable", "authentication unavailable");
        break;
    }
    }
}

static void admin_handle(struct evhttp_request *req, void *arg)
{
    server *srv = arg;
    const char *path = admin_path(req);
    if (admin_request_allowed(srv, req, path) == ADMIN_PASS) admin_dispatch(srv, req, path);
}

static void admin_dispatch(server *srv, struct evhttp_request *req, const char *path)
{
    if (strcmp(path, "/metrics") == 0) {
        admin_metrics(srv, req);
    } else if (strcmp(path, "/healthz") == 0) {
        admin_simple(req, 200, "OK", "ok");
    } else if (strcmp(path, "/livez") == 0) {
        admin_livez(srv, req);
    } else if (strcmp(path, "/readyz") == 0) {
        if (srv->shutting_down) admin_simple(req, 503, "Service Unavailable", "not ready: shutting down");
        else if (!srv->api_ready) admin_simple(req, 503, "Service Unavailable", "not ready: the API server has not answered a review");
        else if (srv->revocations) {
            /* Ready either way: while the watch is down, entries live their normal TTL. */
            char detail[512] = "ok\n";
            revocation_watch_describe(srv->revocations, detail + 3, sizeof(detail) - 3);
            admin_simple(req, 200, "OK", detail);
        } else {
            admin_simple(req, 200, "OK", "ok");
        }
    } else if (strcmp(path, "/cache/flush") == 0) {
        admin_flush(srv, req);
    } else if (strcmp(path, "/policy") == 0) {
        admin_policy(srv, req);
    } else {
        admin_simple(req, 404, "Not Found", "not found");
    }
}

/* ---- policy loading and hot reload ------------------------------------------------- */

static void post_to_workers(server *srv, gateway_mail_kind kind)
{
    for (size_t i = 0; i < srv->n_workers; i++) {
        gateway_mail *m = calloc(1, sizeof(*m));
        if (!m) {
            /* A worker that misses a reload keeps its policy; one that misses a stop is
             * stopped by the deadline. Both are logged. */
            log_error("out of memory: a worker was not told", "what", kind == MAIL_RELOAD_POLICY ? "reload" : "stop",
                      NULL);
            continue;
        }
        m->kind = kind;
        if (kind == MAIL_RELOAD_POLICY) m->policy = policy_source_ref(srv->policy_source);
        worker_post(srv->workers[i], m);
    }
}

/* Loads (or reloads) the policy file. The file is read once; those bytes are loaded in a
 * separate process first (policy_validate_isolated: a file that crashes its process
 * takes only that one), then into the control thread's state, and only then handed, the same
 * bytes with their sha256, to every worker. On failure the running policy keeps serving
 * everywhere. */
static int load_policy(server *srv, const char *trigger)
{
    char err[1024];
    const char *path = srv->cfg->policy;
    policy_source *src = policy_source_read(path, err, sizeof(err));
    if (!src || policy_validate_isolated(src, &srv->policy_limits, err, sizeof(err)) != 0 ||
        policy_host_load_source(srv->policy, src, err, sizeof(err)) != 0) {
        policy_source_unref(src);
        policy_host_set_last_error(srv->policy, err);
        srv->metrics.policy_reloads_failure++;
        log_error("policy load failed; the previous policy keeps running", "trigger", trigger, "path",
                  path ? path : "(built-in default)", "error", err, NULL);
        return -1;
    }
    policy_source_unref(srv->policy_source);
    srv->policy_source = src;
    policy_info info;
    policy_host_info(srv->policy, &info);
    srv->metrics.policy_reloads_success++;
    srv->metrics.policy_last_reload_success_s = info.loaded_at;
    post_to_workers(srv, MAIL_RELOAD_POLICY);
    log_info("policy loaded", "trigger", trigger, "path", info.path, "sha256", info.sha256_hex, NULL);
    return 0;
}

/* Re-reads the certificate and key; on failure the current ones keep serving. Workers
 * take the context under the holder's lock for each new connection. */
static int load_tls(server *srv, const char *trigger)
{
    char err[512];
    SSL_CTX *ctx = tls_server_context_new(srv->cfg->tls_cert_file, srv->cfg->tls_key_file, err, sizeof(err));
    if (!ctx) {
        log_error("TLS certificate load failed; the previous one keeps serving", "trigger", trigger, "error", err,
                  NULL);
        return -1;
    }
    pthread_mutex_lock(&srv->tls.lock);
    SSL_CTX *old = srv->tls.ctx;
    srv->tls.ctx = ctx;
    pthread_mutex_unlock(&srv->tls.lock);
    SSL_CTX_free(old); /* open connections hold their own reference */
    log_info("TLS certificate loaded", "trigger", trigger, "cert", srv->cfg->tls_cert_file, NULL);
    return 0;
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    server *srv = arg;
    if (srv->policy) load_policy(srv, "SIGHUP");
    if (srv->tls.ctx) load_tls(srv, "SIGHUP");
}

/* SIGUSR1: reopen the decision log file (logrotate renamed it), as nginx does. */
static void on_sigusr1(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    server *srv = arg;
    if (!srv->access_log) return;
    char err[512];
    if (access_log_reopen(srv->access_log, err, sizeof(err)) != 0)
        log_error("cannot reopen the decision log; it stays on the old file", "error", err, NULL);
    else
        log_info("decision log reopened", "trigger", "SIGUSR1", "path", srv->cfg->access_log, NULL);
}

static bool same_file_version(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* --policy-watch: stat() follows symlinks, so a ConfigMap's atomic ..data swap shows up
 * as a new inode even though the path never changes. */
static void on_policy_watch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    server *srv = arg;
    struct stat st;
    if (stat(srv->cfg->policy, &st) != 0 || same_file_version(&st, &srv->policy_file_stat)) return;
    srv->policy_file_stat = st;
    load_policy(srv, "file changed");
}

/* ---- reviews for the workers ------------------------------------------------------------ */

static void on_flights_unlink(server *srv, gateway_mail *m)
{
    if (m->prev) m->prev->next = m->next;
    else srv->on_flights = m->next;
    if (m->next) m->next->prev = m->prev;
    m->prev = m->next = NULL;
}

/* A flight finished: the mail that joined it carries the outcome back to its worker. The
 * value is copied (the outcome's pointers die with this call); without memory for the
 * copy the worker is told "out of memory" instead — a worker is always answered. */
static void review_mail_done(const review_outcome *outcome, void *arg)
{
    gateway_mail *m = arg;
    on_flights_unlink(m->control, m);
    m->verdict = outcome->verdict;
    m->error = outcome->error;
    m->retry_after_s = outcome->retry_after_s;
    snprintf(m->reason, sizeof(m->reason), "%s", outcome->reason ? outcome->reason : "");
    if (outcome->value_len) {
        m->value = malloc(outcome->value_len);
        if (m->value) {
            memcpy(m->value, outcome->value, outcome->value_len);
            m->value_len = outcome->value_len;
        } else {
            m->verdict = REVIEW_ERROR;
            m->error = API_ERROR_NETWORK;
            m->retry_after_s = 1;
            snprintf(m->reason, sizeof(m->reason), "out of memory");
        }
    }
    worker_post(m->from, m);
}

static void control_deliver(mail *link, void *arg)
{
    server *srv = arg;
    gateway_mail *m = (gateway_mail *)link;
    const review_kind *kind = m->review == REVIEW_KIND_SAR ? &srv->sar_kind : &srv->tokenreview_kind;
    if (m->kind == MAIL_REFRESH) {
        review_start_background(srv->reviews, kind, &m->rr);
        gateway_mail_free(m);
        return;
    }
    if (m->kind != MAIL_REVIEW) {
        gateway_mail_free(m);
        return;
    }
    m->waiter.done = review_mail_done;
    m->waiter.arg = m;
    m->control = srv;
    m->next = srv->on_flights;
    m->prev = NULL;
    if (srv->on_flights) srv->on_flights->prev = m;
    srv->on_flights = m;
    /* The worker's lookup missed, but a flight may have finished since (it caches before
     * it wakes its waiters, both on this thread): then the verdict is here and no call is
     * needed. This is what keeps single-flight exact across threads. */
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t value_len = 0;
    token_cache_result cached =
        token_cache_lookup(kind->cache, &m->rr.key, monotonic_ms(), value, sizeof(value), &value_len, NULL);
    if (cached == TOKEN_CACHE_HIT_POSITIVE || cached == TOKEN_CACHE_HIT_NEGATIVE) {
        kind->metrics->coalesced++;
        review_outcome outcome = {.verdict = cached == TOKEN_CACHE_HIT_POSITIVE ? REVIEW_POSITIVE : REVIEW_NEGATIVE,
                                  .error = API_ERROR_NONE, .value = value, .value_len = value_len,
                                  .reason = "cached"};
        review_mail_done(&outcome, m); /* unlinks it and sends it back */
        OPENSSL_cleanse(value, value_len);
        return;
    }
    if (review_join(srv->reviews, kind, &m->rr.key, &m->waiter, m->rr.deadline_ms)) {
        /* The running flight has its own body: this one is not needed. */
        OPENSSL_cleanse(m->rr.body, m->rr.body_len);
        free(m->rr.body);
        m->rr.body = NULL;
        if (m->rr.parse_arg_free) m->rr.parse_arg_free(m->rr.parse_arg);
        m->rr.parse_arg = NULL;
        return;
    }
    review_request rr = m->rr;
    m->rr.body = NULL; /* the engine owns them now */
    m->rr.parse_arg = NULL;
    review_start(srv->reviews, kind, &rr, &m->waiter);
}

/* ---- shutdown ---------------------------------------------------------------------------- */

static size_t requests_waiting(const server *srv)
{
    size_t n = 0;
    for (size_t i = 0; i < srv->n_workers; i++) n += worker_requests_waiting(srv->workers[i]);
    return n;
}

/* How long the workers get to leave their loops once told to (or after a second signal),
 * before a worker still inside a callback is abandoned with the process. */
#define WORKER_EXIT_WAIT_MS 1000

/* A worker that does not leave its loop cannot be joined or freed, and waiting for it
 * would make shutdown hang: the process ends without it. */
static _Noreturn void abandon_workers(const server *srv)
{
    size_t worst;
    int64_t worst_ms;
    size_t stuck = stuck_workers(srv, &worst, &worst_ms);
    char n[32];
    snprintf(n, sizeof(n), "%zu", stuck);
    log_error("exiting without stuck workers: a worker did not leave its event loop", "stuck_workers", n, NULL);
    fflush(stderr);
    _exit(1);
}

/* Tells every worker to leave its loop; the shutdown tick leaves the control loop once
 * they all have (server_run then joins them), or abandons them at exit_deadline_ms. A
 * second call (another signal while leaving) abandons them at once. */
static void stop_now(server *srv)
{
    if (srv->exiting) {
        bool all_left = true;
        for (size_t i = 0; i < srv->n_workers; i++) all_left = all_left && worker_loop_left(srv->workers[i]);
        if (!all_left) abandon_workers(srv);
        return;
    }
    srv->exiting = true;
    srv->exit_deadline_ms = monotonic_ms() + WORKER_EXIT_WAIT_MS;
    post_to_workers(srv, MAIL_EXIT);
    struct timeval every = {0, 20000};
    if (!srv->shutdown_timer || evtimer_add(srv->shutdown_timer, &every) != 0) event_base_loopexit(srv->base, NULL);
}

/* Graceful shutdown: /readyz answers 503, the workers stop accepting and answer with
 * "Connection: close", and the process exits once no request is waiting for a review,
 * or when --shutdown-grace runs out. A second signal exits at once. */
static void on_shutdown_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    server *srv = arg;
    if (srv->exiting) {
        bool all_left = true;
        for (size_t i = 0; i < srv->n_workers; i++) all_left = all_left && worker_loop_left(srv->workers[i]);
        if (all_left)
            event_base_loopexit(srv->base, NULL);
        else if (monotonic_ms() >= srv->exit_deadline_ms)
            abandon_workers(srv);
        return;
    }
    size_t waiting = requests_waiting(srv);
    if (waiting == 0) {
        log_info("stopped: no request in flight", NULL);
        stop_now(srv);
    } else if (monotonic_ms() >= srv->shutdown_deadline_ms) {
        char n[32];
        snprintf(n, sizeof(n), "%zu", waiting);
        log_warn("stopped: --shutdown-grace ran out", LOG_NUMBER "requests_waiting", n, NULL);
        stop_now(srv);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    server *srv = arg;
    const char *name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
    if (srv->shutting_down) {
        log_info("second signal: exiting now", "signal", name, NULL);
        /* The workers get WORKER_EXIT_WAIT_MS to leave their loops, or none when they were
         * already told to: a worker stuck in a callback goes with the process. */
        stop_now(srv);
        return;
    }
    srv->shutting_down = true;
    srv->shutdown_deadline_ms = monotonic_ms() + srv->cfg->shutdown_grace_ms;
    char grace[32];
    snprintf(grace, sizeof(grace), "%lld", (long long)srv->cfg->shutdown_grace_ms);
    log_info("stopping: finishing in-flight requests", "signal", name, LOG_NUMBER "grace_ms", grace, NULL);
    post_to_workers(srv, MAIL_STOP_ACCEPTING);
    struct timeval every = {0, 20000};
    if (!srv->shutdown_timer || evtimer_add(srv->shutdown_timer, &every) != 0) stop_now(srv);
}

/* ---- listeners -------------------------------------------------------------------------- */

/* Splits "host:port" (host may be "[v6]") into host and port. Returns 0 or -1. */
static int split_hostport(const char *hostport, char *host, size_t host_cap, long *port)
{
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= host_cap) return -1;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        memmove(host, host + 1, len - 2);
        host[len - 2] = '\0';
    }
    char *end = NULL;
    errno = 0;
    *port = strtol(colon + 1, &end, 10);
    if (!*(colon + 1) || *end || errno || *port < 0 || *port > 65535) return -1;
    return 0;
}

static void format_sockaddr(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(out, cap, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(out, cap, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

/* One listening socket bound to addr; reuse_port when several workers share the port. */
static int listen_socket(const struct sockaddr *addr, socklen_t addr_len, bool reuse_port)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
        bind(fd, addr, addr_len) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* True when some socket (another process's, typically another gateway's) already holds
 * addr. Probed with a bind without SO_REUSEPORT: the kernel refuses it while any socket is
 * bound to the port, with or without SO_REUSEPORT; SO_REUSEADDR keeps TIME_WAIT leftovers
 * of a previous run from counting. Two gateways started within the same few microseconds
 * could both pass; the probe is for the usual mistake (a second Deployment, a forgotten
 * process), where SO_REUSEPORT would otherwise share the port silently. */
static bool address_taken(const struct sockaddr *addr, socklen_t addr_len)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false; /* the real bind will report the problem */
    int one = 1;
    bool taken = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 && bind(fd, addr, addr_len) != 0 &&
                 errno == EADDRINUSE;
    close(fd);
    return taken;
}

/* The main listener: one socket per worker on the same address (SO_REUSEPORT: the kernel
 * spreads new connections across them), so no worker waits on another's accept. The
 * first socket picks the port (":0" = a free one), the others bind exactly that. Logs the
 * bound address once. Returns 0 with fds[0..n) open, or -1 (all closed, reason logged). */
static int open_main_listeners(const char *hostport, size_t n, int *fds)
{
    char host[256];
    long port;
    if (split_hostport(hostport, host, sizeof(host), &port) != 0) {
        log_error("listen address must be host:port", "listener", "main", "addr", hostport, NULL);
        return -1;
    }
    char port_text[8];
    snprintf(port_text, sizeof(port_text), "%ld", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host[0] ? host : NULL, port_text, &hints, &ai) != 0 || !ai) {
        log_error("cannot resolve the listen address", "listener", "main", "addr", hostport, NULL);
        return -1;
    }
    /* One gateway per port: SO_REUSEPORT is for this process's workers only. */
    if (port != 0 && address_taken(ai->ai_addr, ai->ai_addrlen)) {
        log_error("another process already listens on this address; refusing to share it (stop it or choose "
                  "another --listen)",
                  "listener", "main", "addr", hostport, NULL);
        freeaddrinfo(ai);
        return -1;
    }
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof(bound);
    size_t opened = 0;
    fds[0] = listen_socket(ai->ai_addr, ai->ai_addrlen, n > 1);
    freeaddrinfo(ai);
    if (fds[0] >= 0 && getsockname(fds[0], (struct sockaddr *)&bound, &bound_len) == 0) {
        opened = 1;
        while (opened < n && (fds[opened] = listen_socket((struct sockaddr *)&bound, bound_len, true)) >= 0) opened++;
    }
    if (opened < n) {
        log_error("cannot listen", "listener", "main", "addr", hostport, "error", strerror(errno), NULL);
        for (size_t i = 0; i < opened; i++) close(fds[i]);
        if (opened == 0 && fds[0] >= 0) close(fds[0]);
        return -1;
    }
    char addr[INET6_ADDRSTRLEN + 16];
    format_sockaddr(&bound, addr, sizeof(addr));
    char workers[16];
    snprintf(workers, sizeof(workers), "%zu", n);
    log_info("listening", "listener", "main", "addr", addr, LOG_NUMBER "workers", workers, NULL);
    return 0;
}

static int bind_listener(struct evhttp *http, const char *name, const char *hostport,
                         struct evhttp_bound_socket **bound_out)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof(host)) {
        log_error("listen address must be host:port", "listener", name, "addr", hostport, NULL);
        return -1;
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    /* Accept "[::1]:8080". */
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = '\0';
        h++;
    }
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (!*(colon + 1) || *end || port < 0 || port > 65535) {
        log_error("bad port", "listener", name, "addr", hostport, NULL);
        return -1;
    }
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(http, h, (ev_uint16_t)port);
    if (!bound) {
        log_error("cannot listen", "listener", name, "addr", hostport, NULL);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char addr[INET6_ADDRSTRLEN + 16] = "?";
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &len) == 0) {
        char ip[INET6_ADDRSTRLEN];
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
            snprintf(addr, sizeof(addr), "[%s]:%u", ip, ntohs(s6->sin6_port));
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
            snprintf(addr, sizeof(addr), "%s:%u", ip, ntohs(s4->sin_port));
        }
    }
    log_info("listening", "listener", name, "addr", addr, NULL);
    if (bound_out) *bound_out = bound;
    return 0;
}

/* ---- start-up and teardown -------------------------------------------------------------- */

static void discard_control_mail(mail *link)
{
    gateway_mail_free((gateway_mail *)link);
}

/* Runs on the control thread after every worker thread has been joined (or never ran). */
static void server_teardown(server *srv)
{
    for (size_t i = 0; i < srv->n_workers; i++) worker_free(srv->workers[i]);
    free(srv->workers);
    srv->workers = NULL;
    srv->n_workers = 0;
    accept_backoff_free(srv->admin_backoff);
    if (srv->admin_http) evhttp_free(srv->admin_http);
    conn_limit_free(srv->admin_limit); /* after evhttp_free: its close callbacks count down */
    if (srv->admin_token) {
        OPENSSL_cleanse(srv->admin_token, srv->admin_token_len);
        free(srv->admin_token);
        srv->admin_token = NULL;
    }
    revocation_watch_free(srv->revocations);
    api_client_free(srv->api); /* first: its calls borrow the flights' bodies */
    jwks_source_free(srv->jwks); /* after the client: no fetch can complete any more */
    review_engine_free(srv->reviews); /* never calls the waiters, i.e. the mails below */
    admin_auth_free(srv->admin_auth); /* after the engine: no verdict can reach it now */
    srv->admin_auth = NULL;
    while (srv->on_flights) {
        gateway_mail *m = srv->on_flights;
        on_flights_unlink(srv, m);
        gateway_mail_free(m);
    }
    mailbox_free(srv->inbox, discard_control_mail);
    policy_host_free(srv->policy);
    policy_source_unref(srv->policy_source);
    custom_metrics_free(srv->custom);
    token_cache_free(srv->sar_cache);
    token_cache_free(srv->tokenreview_cache);
    cache_keyer_free(srv->keyer);
    if (srv->probe_timer) event_free(srv->probe_timer);
    if (srv->sigterm_event) event_free(srv->sigterm_event);
    if (srv->sigint_event) event_free(srv->sigint_event);
    if (srv->sighup_event) event_free(srv->sighup_event);
    if (srv->sigusr1_event) event_free(srv->sigusr1_event);
    access_log_free(srv->access_log); /* the workers that wrote to it are gone */
    if (srv->policy_watch_timer) event_free(srv->policy_watch_timer);
    if (srv->shutdown_timer) event_free(srv->shutdown_timer);
    SSL_CTX_free(srv->tls.ctx);
    if (srv->tls_lock_ready) pthread_mutex_destroy(&srv->tls.lock);
    free_probe_body(srv);
    if (srv->base) event_base_free(srv->base);
}

/* Creates the workers on their listening sockets (each takes its fd). */
static int start_workers(server *srv, int *fds, size_t n)
{
    const config *cfg = srv->cfg;
    srv->workers = calloc(n, sizeof(*srv->workers));
    if (!srv->workers) {
        for (size_t i = 0; i < n; i++) close(fds[i]);
        return -1;
    }
    worker_shared shared = {
        .cfg = cfg,
        .keyer = srv->keyer,
        .tokenreview_cache = srv->tokenreview_cache,
        .sar_cache = srv->sar_cache,
        .custom = srv->custom,
        .control = srv->inbox,
        .tls = cfg->tls_cert_file ? &srv->tls : NULL,
        /* Each worker gets an equal share, rounded up: the total may exceed the flag by
         * less than one connection per worker. */
        .max_connections = (cfg->max_connections + n - 1) / n,
        .upstream_max_connections = (cfg->upstream_max_connections + n - 1) / n,
        .jwks = srv->jwks,
        .max_buffered_body_bytes = (cfg->max_buffered_body_bytes + n - 1) / n,
        .access_log = srv->access_log,
        .policy = srv->policy_source,
    };
    for (size_t i = 0; i < n; i++) {
        srv->workers[i] = worker_new(&shared, i, fds[i]);
        if (!srv->workers[i]) {
            for (size_t j = i + 1; j < n; j++) close(fds[j]);
            return -1;
        }
        srv->n_workers++;
    }
    return 0;
}

int server_run(const config *cfg, const apiserver_settings *api)
{
    server *srv = calloc(1, sizeof(*srv));
    if (!srv) return 1;
    srv->cfg = cfg;
    int rc = 1;
    char workers_why[CONFIG_WORKERS_WHY_MAX]; /* how the worker count was decided, for the start-up log */
    size_t n_workers = config_workers(cfg, workers_why, sizeof(workers_why));
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    srv->start_time_s = (double)wall.tv_sec + wall.tv_nsec / 1e9;
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&srv->tls.lock, NULL);
    srv->tls_lock_ready = true;

    srv->base = event_base_new();
    if (!srv->base) goto done;
    srv->keyer = cache_keyer_new();
    token_cache_options co = {.max_entries = cfg->cache_max_entries,
                              .refresh_ahead_percent = cfg->cache_refresh_ahead_percent};
    srv->tokenreview_cache = token_cache_new(&co);
    co.refresh_ahead_percent = 0; /* SubjectAccessReviews are asked again on expiry */
    srv->sar_cache = token_cache_new(&co);
    srv->custom = custom_metrics_new(CUSTOM_SERIES_PER_METRIC);
    srv->inbox = mailbox_new(srv->base, control_deliver, srv);
    api_client_options ao = {
        .server_url = api->server_url,
        .ca_file = api->ca_file,
        .ca_pem = api->ca_pem,
        .ca_pem_len = api->ca_pem_len,
        .token_file = api->token_file,
        .token = api->token,
        .client_cert_file = api->client_cert_file,
        .client_key_file = api->client_key_file,
        .client_cert_pem = api->client_cert_pem,
        .client_cert_pem_len = api->client_cert_pem_len,
        .client_key_pem = api->client_key_pem,
        .client_key_pem_len = api->client_key_pem_len,
        .timeout_ms = cfg->review_timeout_ms,
        .observe = observe_api,
        .observe_arg = srv,
    };
    srv->api = api_client_new(srv->base, &ao);
    jwt_preverify_mode preverify = JWT_PREVERIFY_REVIEW_OTHERS;
    jwt_preverify_mode_parse(cfg->jwt_preverify, &preverify); /* validated by config_validate */
    if (srv->api && preverify != JWT_PREVERIFY_OFF) {
        srv->jwks = jwks_source_new(srv->base, srv->api, preverify);
        if (!srv->jwks) goto done;
    }
    review_limits review_bounds = {
        .timeout_ms = cfg->review_timeout_ms,
        .qps = cfg->apiserver_qps,
        .burst = (double)cfg->apiserver_burst,
        .max_pending = cfg->review_max_pending,
        .circuit_failures = (int)cfg->circuit_failure_threshold,
        .circuit_cooldown_ms = cfg->circuit_cooldown_ms,
        .retry_after_cap_s = 32,
    };
    srv->reviews = srv->api ? review_engine_new(srv->api, srv->base, &review_bounds) : NULL;
    srv->shutdown_timer = event_new(srv->base, -1, EV_PERSIST, on_shutdown_tick, srv);
    srv->probe_timer = evtimer_new(srv->base, on_probe_timer, srv);
    if (!srv->keyer || !srv->tokenreview_cache || !srv->sar_cache || !srv->custom || !srv->inbox || !srv->api ||
        !srv->reviews || !srv->probe_timer || !srv->shutdown_timer)
        goto done;
    if (config_policy_enabled(cfg)) {
        policy_limits limits = {.max_instructions = cfg->policy_max_instructions,
                                .max_memory_bytes = cfg->policy_max_memory_bytes,
                                .max_call_ms = (uint32_t)cfg->policy_max_call_ms};
        srv->policy_limits = limits;
        srv->policy = policy_host_new(srv->custom, &limits);
        /* No workers yet: this load tells nobody; each worker loads srv->policy_source below. */
        if (!srv->policy || load_policy(srv, "start-up") != 0) goto done;
        if (cfg->policy_watch) {
            stat(cfg->policy, &srv->policy_file_stat);
            srv->policy_watch_timer = event_new(srv->base, -1, EV_PERSIST, on_policy_watch, srv);
            struct timeval every = {POLICY_WATCH_INTERVAL_S, 0};
            if (!srv->policy_watch_timer || evtimer_add(srv->policy_watch_timer, &every) != 0) goto done;
        }
    }

    srv->tokenreview_kind = (review_kind){
        .name = "tokenreview",
        .api_path = TOKENREVIEW_API_PATH,
        .cache = srv->tokenreview_cache,
        .metrics = &srv->metrics.tokenreview,
        .parse = tokenreview_parse,
        .positive_ttl = tokenreview_policy_ttl,
        .vet = tokenreview_vet,
        .ctx = srv,
    };
    srv->sar_kind = (review_kind){
        .name = "subjectaccessreview",
        .api_path = SAR_API_PATH,
        .cache = srv->sar_cache,
        .metrics = &srv->metrics.subjectaccessreview,
        .parse = sar_parse,
        .vet = sar_vet,
        .ctx = srv,
    };

    if (cfg->tls_cert_file && load_tls(srv, "start-up") != 0) goto done;
    fd_limit_ensure(fd_limit_needed(cfg->max_connections, cfg->admin_max_connections,
                                    config_proxy_mode(cfg) ? cfg->upstream_max_connections : 0, n_workers));
    if (strcmp(cfg->access_log, "off") != 0) {
        char err[512];
        srv->access_log = access_log_open(cfg->access_log, cfg->access_log_sample_allowed, err, sizeof(err));
        if (!srv->access_log) {
            log_error("cannot open the decision log", "error", err, NULL);
            goto done;
        }
    }
    int fds[CONFIG_MAX_WORKERS];
    if (open_main_listeners(cfg->listen, n_workers, fds) != 0 || start_workers(srv, fds, n_workers) != 0) goto done;

    srv->admin_http = evhttp_new(srv->base);
    if (!srv->admin_http) goto done;
    evhttp_set_allowed_methods(srv->admin_http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
    evhttp_set_max_body_size(srv->admin_http, 4096);
    evhttp_set_timeout(srv->admin_http, 30);
    evhttp_set_gencb(srv->admin_http, admin_handle, srv);
    if (cfg->admin_token_file && load_admin_token(srv, cfg->admin_token_file) != 0) goto done;
    if (cfg->admin_auth_review) {
        srv->admin_auth = admin_auth_new(cfg, srv->keyer, srv->reviews, &srv->tokenreview_kind, &srv->sar_kind,
                                         on_admin_auth_done, srv);
        if (!srv->admin_auth) goto done;
    }
    srv->admin_limit = conn_limit_new(srv->base, srv->admin_http, cfg->admin_max_connections);
    struct evhttp_bound_socket *admin_bound = NULL;
    if (!srv->admin_limit || bind_listener(srv->admin_http, "admin", cfg->admin_listen, &admin_bound) != 0) goto done;
    {
        struct evconnlistener *listener = evhttp_bound_socket_get_listener(admin_bound);
        accept_backoff_options backoff = {
            .listener_name = "admin",
            .pause_ms = ACCEPT_BACKOFF_PAUSE_MS,
            .log_interval_ms = ACCEPT_BACKOFF_LOG_INTERVAL_MS,
            .errors = &srv->metrics.accept_errors,
            .backoffs = &srv->metrics.accept_backoffs,
            .held = conn_limit_holds,
            .held_arg = srv->admin_limit,
        };
        srv->admin_backoff = accept_backoff_new(srv->base, listener, srv->admin_http, &backoff);
        if (!srv->admin_backoff) goto done;
        conn_limit_set_listener(srv->admin_limit, listener, srv->admin_backoff);
    }
    if (!srv->admin_token && !srv->admin_auth && !admin_listen_is_loopback(cfg->admin_listen))
        log_warn("the admin listener is reachable beyond loopback without authentication: whoever reaches it "
                 "can read /metrics and /policy and flush the caches; use --admin-token-file, "
                 "--admin-auth-review or a loopback --admin-listen",
                 "admin_listen", cfg->admin_listen, NULL);

    srv->sigterm_event = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    srv->sigint_event = evsignal_new(srv->base, SIGINT, on_signal, srv);
    srv->sighup_event = evsignal_new(srv->base, SIGHUP, on_sighup, srv);
    srv->sigusr1_event = evsignal_new(srv->base, SIGUSR1, on_sigusr1, srv);
    if (!srv->sigterm_event || !srv->sigint_event || !srv->sighup_event || !srv->sigusr1_event ||
        evsignal_add(srv->sigterm_event, NULL) != 0 || evsignal_add(srv->sigint_event, NULL) != 0 ||
        evsignal_add(srv->sighup_event, NULL) != 0 || evsignal_add(srv->sigusr1_event, NULL) != 0)
        goto done;
    /* Signals go to the control thread only: workers block them (they inherit this mask). */
    sigset_t blocked, previous;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGHUP);
    sigaddset(&blocked, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &blocked, &previous);
    bool started_all = true;
    for (size_t i = 0; i < srv->n_workers; i++)
        if (worker_start(srv->workers[i]) != 0) started_all = false;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (!started_all) {
        log_error("cannot start the worker threads", NULL);
        stop_now(srv);
        goto join;
    }

    if (cfg->watch_revocations) {
        revocation_watch_options ro = {.api = &ao, .watch_pods = cfg->watch_pods, .evict = on_revoked,
                                       .collect = on_collect, .ctx = srv};
        srv->revocations = revocation_watch_new(srv->base, &ro);
        if (!srv->revocations) {
            log_error("cannot start the revocation watch", NULL);
            stop_now(srv);
            goto join;
        }
    }
    struct timeval now = {0, 0};
    evtimer_add(srv->probe_timer, &now);
    char workers[16];
    snprintf(workers, sizeof(workers), "%zu", srv->n_workers);
    log_info("started", "mode", cfg->mode, "apiserver", api->server_url, "apiserver_source",
             apiserver_source_name(api->source), "upstream", cfg->upstream, LOG_NUMBER "workers", workers, "workers_from",
             workers_why, NULL);
    event_base_dispatch(srv->base);
    rc = 0;
join:
    /* Normally every worker has left its loop already (the shutdown tick waited for it);
     * on a start-up failure they get WORKER_EXIT_WAIT_MS. */
    for (int64_t deadline = monotonic_ms() + WORKER_EXIT_WAIT_MS;;) {
        bool all_left = true;
        for (size_t i = 0; i < srv->n_workers; i++) all_left = all_left && worker_loop_left(srv->workers[i]);
        if (all_left) break;
        if (monotonic_ms() >= deadline) abandon_workers(srv);
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    for (size_t i = 0; i < srv->n_workers; i++) worker_join(srv->workers[i]);
done:
    if (rc != 0) log_error("start-up failed", NULL);
    server_teardown(srv);
    free(srv);
    return rc;
}

int server_check_policy(const config *cfg, FILE *out)
{
    if (!config_policy_enabled(cfg)) {
        fprintf(out, "policy: none (every authenticated caller is allowed)\n");
        return 0;
    }
    custom_metrics *scratch = custom_metrics_new(CUSTOM_SERIES_PER_METRIC);
    policy_limits limits = {.max_instructions = cfg->policy_max_instructions,
                            .max_memory_bytes = cfg->policy_max_memory_bytes,
                            .max_call_ms = (uint32_t)cfg->policy_max_call_ms};
    policy_host *host = scratch ? policy_host_new(scratch, &limits) : NULL;
    char err[1024] = "out of memory";
    /* In a separate process first, as a reload does: a file that crashes its process makes
     * this check fail (exit 1) with the reason instead of killing it. */
    policy_source *src = host ? policy_source_read(cfg->policy, err, sizeof(err)) : NULL;
    int rc = src && policy_validate_isolated(src, &limits, err, sizeof(err)) == 0
                 ? policy_host_load_source(host, src, err, sizeof(err))
                 : -1;
    policy_source_unref(src);
    if (rc == 0) {
        policy_info info;
        policy_host_info(host, &info);
        const char *const *aud;
        size_t n = policy_audiences(host, &aud);
        fprintf(out, "policy ok: %s (sha256 %s, %zu audiences, %zu metrics)\n", info.path, info.sha256_hex, n,
                custom_metrics_count(scratch));
    } else {
        fprintf(out, "policy error: %s\n", err);
    }
    policy_host_free(host);
    custom_metrics_free(scratch);
    return rc;
}
