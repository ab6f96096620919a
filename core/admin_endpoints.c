/* admin_endpoints.c: see admin_endpoints.h. */
#include "admin_endpoints.h"
#include "admin_guard.h"
#include "bearer.h"
#include "http_strict.h"
#include "identity.h"
#include "listener.h"
#include "log.h"
#include "sar.h"
#include "server_internal.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

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

/* Live while every worker's loop turns: a worker stuck in a callback serves nobody, and
 * only a restart gets its connections back. Never depends on the API server. */
static void admin_livez(server *srv, struct evhttp_request *req)
{
    size_t worst;
    int64_t worst_ms;
    size_t stuck = server_stuck_workers(srv, &worst, &worst_ms);
    if (stuck == 0) {
        admin_simple(req, 200, "OK", "ok");
        return;
    }
    char text[160];
    snprintf(text, sizeof(text),
             "not live: %zu worker(s) stuck; worker %zu has not returned to its event loop for %lld ms", stuck, worst,
             (long long)worst_ms);
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
                                  WORKER_STUCK_MS, server_stuck_workers(srv, &worst, &worst_ms)) < 0;
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
    log_info("cache flushed", "scope", scope, "user", filter.user, "namespace", filter.namespace_name,
             LOG_NUMBER "entries", count, NULL);
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
    if (n > ADMIN_TOKEN_MAX)
        bad = "longer than 4096 bytes";
    else if (len == 0)
        bad = "empty";
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
    TAILQ_FOREACH(kv, in, next) {
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
    if (srv->admin_token && token_len == srv->admin_token_len && CRYPTO_memcmp(token, srv->admin_token, token_len) == 0)
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
        if (srv->shutting_down)
            admin_simple(req, 503, "Service Unavailable", "not ready: shutting down");
        else if (!srv->api_ready)
            admin_simple(req, 503, "Service Unavailable", "not ready: the API server has not answered a review");
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

int admin_listener_start(server *srv)
{
    const config *cfg = srv->cfg;
    srv->admin_http = evhttp_new(srv->base);
    if (!srv->admin_http) return -1;
    evhttp_set_allowed_methods(srv->admin_http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
    evhttp_set_max_body_size(srv->admin_http, 4096);
    evhttp_set_timeout(srv->admin_http, 30);
    evhttp_set_gencb(srv->admin_http, admin_handle, srv);
    if (cfg->admin_token_file && load_admin_token(srv, cfg->admin_token_file) != 0) return -1;
    if (cfg->admin_auth_review) {
        srv->admin_auth = admin_auth_new(cfg, srv->keyer, srv->reviews, &srv->tokenreview_kind, &srv->sar_kind,
                                         on_admin_auth_done, srv);
        if (!srv->admin_auth) return -1;
    }
    srv->admin_limit = conn_limit_new(srv->base, srv->admin_http, cfg->admin_max_connections);
    struct evhttp_bound_socket *admin_bound = NULL;
    if (!srv->admin_limit || bind_listener(srv->admin_http, "admin", cfg->admin_listen, &admin_bound) != 0) return -1;
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
    if (!srv->admin_backoff) return -1;
    conn_limit_set_listener(srv->admin_limit, listener, srv->admin_backoff);
    if (!srv->admin_token && !srv->admin_auth && !admin_listen_is_loopback(cfg->admin_listen))
        log_warn("the admin listener is reachable beyond loopback without authentication: whoever reaches it "
                 "can read /metrics and /policy and flush the caches; use --admin-token-file, "
                 "--admin-auth-review or a loopback --admin-listen",
                 "admin_listen", cfg->admin_listen, NULL);
    return 0;
}
