/* server.c owns the listeners and the request path: a request enters authz_handle(), is
 * answered from the cache or waits on a review, and leaves through exactly one reply_*()
 * call — or, allowed in proxy mode, is handed to upstream.c, which answers it. The admin
 * listener's handlers are at the end of the file. */
#include "server.h"

#include "api_client.h"
#include "bearer.h"
#include "cache_key.h"
#include "custom_metrics.h"
#include "identity.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "review.h"
#include "sar.h"
#include "tls_server.h"
#include "token_cache.h"
#include "tokenreview.h"
#include "upstream.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <sys/queue.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#define READINESS_PROBE_INTERVAL_S 5
#define READINESS_PROBE_TOKEN "tokengate-readiness-probe"
#define GROUPS_HEADER_MAX 8192
#define MAIN_MAX_BODY_BYTES 65536
#define URI_MAX 8192
#define POLICY_WATCH_INTERVAL_S 2
#define CUSTOM_SERIES_PER_METRIC 1000 /* label sets one policy metric may hold */

/* What kind->parse needs for a TokenReview: the audiences that were requested. Owned by
 * the flight (one allocation: the struct, the pointer array and the strings), because a
 * policy reload may change the audiences while the review runs. */
typedef struct tokenreview_parse_arg {
    size_t n_audiences;
    const char *audiences[POLICY_MAX_AUDIENCES > CONFIG_MAX_AUDIENCES ? POLICY_MAX_AUDIENCES : CONFIG_MAX_AUDIENCES];
    char strings[];
} tokenreview_parse_arg;

typedef struct server {
    const config *cfg;
    struct event_base *base;
    struct evhttp *main_http;
    struct evhttp *admin_http;
    struct event *sigterm_event, *sigint_event, *sighup_event;
    struct event *probe_timer;
    struct event *policy_watch_timer;
    struct stat policy_file_stat; /* what --policy-watch compares against */
    cache_keyer *keyer;
    token_cache *tokenreview_cache;
    token_cache *sar_cache;
    api_client *api;
    review_engine *reviews;
    review_kind tokenreview_kind;
    review_kind sar_kind;
    custom_metrics *custom;
    policy_host *policy; /* NULL with --policy none */
    policy_decision decision; /* scratch for authorize_identity(); ~24 KiB, so not on the heap per request */
    gateway_metrics metrics;
    double start_time_s;
    bool api_ready; /* the API server answered a review */
    bool probe_running;
    char *probe_body; /* borrowed by the running probe call */
    size_t probe_body_len;
    struct evhttp_bound_socket *main_bound;
    size_t requests_waiting; /* authz_requests and proxied requests alive: what graceful shutdown waits for */
    bool shutting_down;
    int64_t shutdown_deadline_ms;
    struct event *shutdown_timer;
    uint64_t stale_served; /* gateway_tokenreview_stale_served_total */
    SSL_CTX *tls; /* main listener's TLS context, NULL for plain HTTP; swapped on SIGHUP */
    upstream *upstream; /* proxy mode: where allowed requests go; NULL in authz mode */
    struct authz_request *waiting; /* every authz_request alive, for server_teardown */
} server;

/* A request handed to the upstream: what its end needs for the metrics. */
typedef struct proxied_request {
    server *srv;
    struct timespec started;
} proxied_request;

/* One request waiting for a review; freed by the reply. In the SubjectAccessReview stage
 * it carries the packed identity it will answer with. */
typedef struct authz_request {
    server *srv;
    struct authz_request *prev, *next; /* in srv->waiting */
    struct evhttp_request *req;
    struct timespec started;
    review_waiter waiter;
    char token_id[9];
    size_t identity_len; /* SAR stage: the identity; TokenReview stage: a stale verdict or 0 */
    unsigned char identity[];
} authz_request;

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "GET";
}

/* ---- answers ------------------------------------------------------------------------ */

/* Graceful shutdown: an answer sent while stopping stays in requests_waiting until evhttp
 * has written its last byte, or its connection is gone — else the process could exit with
 * the answer still in a buffer. (Proxied answers are tracked the same way by upstream.c.) */
typedef struct answer_in_flight {
    server *srv;
    struct evhttp_connection *evcon;
} answer_in_flight;

static void on_answer_written(struct evhttp_request *req, void *arg)
{
    (void)req;
    answer_in_flight *a = arg;
    evhttp_connection_set_closecb(a->evcon, NULL, NULL); /* evhttp may free it right after */
    a->srv->requests_waiting--;
    free(a);
}

static void on_answer_connection_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    answer_in_flight *a = arg;
    a->srv->requests_waiting--;
    free(a);
}

static void track_answer_while_stopping(server *srv, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!srv->shutting_down || !evcon) return; /* no connection: the client is gone, nothing to write */
    answer_in_flight *a = malloc(sizeof(*a));
    if (!a) return;
    a->srv = srv;
    a->evcon = evcon;
    evhttp_request_set_on_complete_cb(req, on_answer_written, a);
    evhttp_connection_set_closecb(evcon, on_answer_connection_closed, a);
    srv->requests_waiting++;
}

static void reply(server *srv, struct evhttp_request *req, const struct timespec *started, int status,
                  const char *reason, const char *body)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Cache-Control", "no-store");
    if (srv->shutting_down) evhttp_add_header(out, "Connection", "close");
    /* Always set: evhttp would otherwise label an empty answer text/html. */
    evhttp_add_header(out, "Content-Type", "text/plain; charset=utf-8");
    struct evbuffer *buf = NULL;
    if (body) {
        buf = evbuffer_new();
        if (buf) evbuffer_add_printf(buf, "%s\n", body);
    }
    track_answer_while_stopping(srv, req);
    evhttp_send_reply(req, status, reason, buf);
    if (buf) evbuffer_free(buf);
    metrics_count_request(&srv->metrics, status, seconds_since(started));
}

static void reply_unauthorized(server *srv, struct evhttp_request *req, const struct timespec *started,
                               const char *why)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer realm=\"tokengate\"");
    reply(srv, req, started, 401, "Unauthorized", why);
}

static void reply_unavailable(server *srv, struct evhttp_request *req, const struct timespec *started,
                              int retry_after_s, const char *why)
{
    char value[16];
    snprintf(value, sizeof(value), "%d", retry_after_s > 0 ? retry_after_s : 1);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", value);
    reply(srv, req, started, 503, "Service Unavailable", why);
}

/* The identity headers' values, from a packed identity. */
typedef struct identity_text {
    char user[IDENTITY_STRING_MAX + 1];
    char uid[IDENTITY_STRING_MAX + 1];
    char groups[GROUPS_HEADER_MAX];
} identity_text;

static int identity_text_from(const unsigned char *packed, size_t packed_len, identity_text *out)
{
    identity_view view;
    if (identity_view_parse(packed, packed_len, &view) != 0 ||
        identity_join_groups(&view, out->groups, sizeof(out->groups)) < 0)
        return -1;
    memcpy(out->user, view.username.ptr, view.username.len);
    out->user[view.username.len] = '\0';
    memcpy(out->uid, view.uid.ptr, view.uid.len);
    out->uid[view.uid.len] = '\0';
    return 0;
}

static void on_proxied_done(void *arg, int status)
{
    proxied_request *p = arg;
    metrics_count_request(&p->srv->metrics, status, seconds_since(&p->started));
    p->srv->requests_waiting--;
    free(p);
}

/* Proxy mode: the request is allowed; the upstream answers it. id NULL: anonymous. */
static void forward_allowed(server *srv, struct evhttp_request *req, const struct timespec *started,
                            const identity_text *id, const policy_decision *allow)
{
    upstream_request ur = {
        .req = req,
        .method = method_name(evhttp_request_get_command(req)),
        .user = id ? id->user : NULL,
        .uid = id ? id->uid : NULL,
        .groups = id ? id->groups : NULL,
        .header_names = allow ? (const char *const *)allow->header_names : NULL,
        .header_values = allow ? (const char *const *)allow->header_values : NULL,
        .n_headers = allow ? allow->n_headers : 0,
    };
    proxied_request *p = malloc(sizeof(*p));
    if (!p || upstream_forward(srv->upstream, &ur, on_proxied_done, p) != 0) {
        free(p);
        reply_unavailable(srv, req, started, 1, "cannot forward the request");
        return;
    }
    p->srv = srv;
    p->started = *started;
    srv->requests_waiting++;
}

/* The request is allowed: in authz mode 200 with the identity headers (and the policy's
 * allow headers, if any); in proxy mode it goes to the upstream with them. The packed
 * identity was validated when it was cached; it is checked again here because a
 * malformed one must never become an allow. */
static void answer_allowed(server *srv, struct evhttp_request *req, const struct timespec *started,
                           const unsigned char *packed, size_t packed_len, const policy_decision *allow)
{
    identity_text id;
    if (identity_text_from(packed, packed_len, &id) != 0) {
        log_error("cached identity is malformed; failing closed", NULL);
        reply(srv, req, started, 500, "Internal Server Error", "internal error");
        return;
    }
    if (srv->upstream) {
        forward_allowed(srv, req, started, &id, allow);
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    if (allow)
        for (size_t i = 0; i < allow->n_headers; i++) evhttp_add_header(out, allow->header_names[i], allow->header_values[i]);
    evhttp_add_header(out, "X-Remote-User", id.user);
    evhttp_add_header(out, "X-Remote-Uid", id.uid);
    evhttp_add_header(out, "X-Remote-Groups", id.groups);
    reply(srv, req, started, 200, "OK", NULL);
}

static void reply_forbidden(server *srv, struct evhttp_request *req, const struct timespec *started,
                            const char *reason, size_t reason_len)
{
    char body[320];
    snprintf(body, sizeof(body), "forbidden: %.*s", (int)(reason_len > 256 ? 256 : reason_len), reason);
    reply(srv, req, started, 403, "Forbidden", body);
}

static void reply_policy_error(server *srv, struct evhttp_request *req, const struct timespec *started,
                               const char *hook, const char *message)
{
    srv->metrics.policy_errors++;
    log_warn("policy error; answering 500", "hook", hook, "error", message, NULL);
    reply(srv, req, started, 500, "Internal Server Error", "policy error");
}

/* ---- what the policy sees of a request ---------------------------------------------- */

/* Storage for a policy_request's strings that are not header values. */
typedef struct request_text {
    char uri[URI_MAX];
    char client_ip[64];
} request_text;

/* True when path (no query) is in the form policies can safely match on: no empty,
 * "." or ".." segments, no percent-encoded dot, slash or backslash, no backslash. A path
 * like /hooks/../admin would otherwise pass a rule for the /hooks/ prefix while the upstream serves
 * /admin; such requests are refused (fail closed) rather than normalised here. */
static bool path_is_normalized(const char *path)
{
    if (path[0] != '/') return false;
    for (const char *p = path; *p; p++) {
        if (*p == '\\') return false;
        if (*p == '%' && p[1] && p[2]) {
            char a = p[1], b = (char)(p[2] | 0x20);
            if ((a == '2' && (b == 'e' || b == 'f')) || (a == '5' && b == 'c')) return false;
        }
        if (*p != '/') continue;
        const char *seg = p + 1;
        size_t len = strcspn(seg, "/");
        if (seg[len] == '/' && len == 0) return false;                           /* "//" */
        if ((len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.')) return false;
    }
    return true;
}

/* Fills pr from req: the original method, URI and host as the proxy in front reports
 * them — one family of headers, never mixed, chosen by --forwarded-headers (see config.h)
 * — else the request itself (Envoy ext_authz forwards the client's method and path). In
 * proxy mode always the request itself: it is what goes upstream, and those headers come
 * from the client, who must never choose what the policy judges.
 * Returns -1 if the URI is too long, -2 if its path is not normalized. */
static int describe_request(const server *srv, struct evhttp_request *req, policy_request *pr,
                            request_text *text)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *mode = srv->upstream ? "none" : srv->cfg->forwarded_headers;
    bool traefik = strcmp(mode, "traefik") == 0 ||
                   (strcmp(mode, "auto") == 0 && evhttp_find_header(h, "X-Forwarded-Uri"));
    bool nginx = !traefik && (strcmp(mode, "nginx") == 0 ||
                              (strcmp(mode, "auto") == 0 && evhttp_find_header(h, "X-Original-URI")));
    const char *method = NULL, *uri = NULL, *host = NULL;
    if (traefik) {
        method = evhttp_find_header(h, "X-Forwarded-Method");
        uri = evhttp_find_header(h, "X-Forwarded-Uri");
        host = evhttp_find_header(h, "X-Forwarded-Host");
    } else if (nginx) {
        method = evhttp_find_header(h, "X-Original-Method");
        uri = evhttp_find_header(h, "X-Original-URI");
        host = evhttp_find_header(h, "X-Forwarded-Host");
    }
    if (!uri) uri = evhttp_request_get_uri(req);
    if (!host) host = evhttp_find_header(h, "Host");
    if (!uri || strlen(uri) >= sizeof(text->uri)) return -1;
    strcpy(text->uri, uri);
    char *q = strchr(text->uri, '?');
    if (q) *q++ = '\0';
    if (!path_is_normalized(text->uri[0] ? text->uri : "/")) return -2;
    text->client_ip[0] = '\0';
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    if (conn) {
        char *addr = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(conn, &addr, &port);
        if (addr) snprintf(text->client_ip, sizeof(text->client_ip), "%s", addr);
    }
    pr->method = method ? method : method_name(evhttp_request_get_command(req));
    pr->path = text->uri[0] ? text->uri : "/";
    pr->query = q ? q : "";
    pr->host = host ? host : "";
    pr->client_ip = text->client_ip;
    pr->headers = h;
    return 0;
}

/* ---- the authz request path -------------------------------------------------------- */

static void sar_ask(server *srv, struct evhttp_request *req, const struct timespec *started,
                    const unsigned char *packed, size_t packed_len, const identity_view *view,
                    const sar_attributes *attrs);

/* An authenticated identity: let the policy decide (or allow, with --policy none). */
static void authorize_identity(server *srv, struct evhttp_request *req, const struct timespec *started,
                               const unsigned char *packed, size_t packed_len)
{
    if (!srv->policy) {
        answer_allowed(srv, req, started, packed, packed_len, NULL);
        return;
    }
    identity_view view;
    if (identity_view_parse(packed, packed_len, &view) != 0) {
        reply(srv, req, started, 500, "Internal Server Error", "internal error");
        return;
    }
    policy_request pr;
    request_text text;
    switch (describe_request(srv, req, &pr, &text)) {
    case -1: reply(srv, req, started, 414, "URI Too Long", "request URI too long"); return;
    case -2: reply_forbidden(srv, req, started, "path is not normalized", strlen("path is not normalized")); return;
    default: break;
    }
    /* One decision buffer per loop, reused: it is used and done with before this returns. */
    policy_decision *d = &srv->decision;
    policy_authorize(srv->policy, &pr, &view, d);
    switch (d->kind) {
    case POLICY_ALLOW: answer_allowed(srv, req, started, packed, packed_len, d); break;
    case POLICY_DENY:
        /* Behind nginx the 403 body is dropped: the reason is only visible here. */
        log_debug("policy denied", "method", pr.method, "path", pr.path, "reason", d->message, NULL);
        reply_forbidden(srv, req, started, d->message, strlen(d->message));
        break;
    case POLICY_ERROR: reply_policy_error(srv, req, started, "authorize", d->message); break;
    case POLICY_SAR: sar_ask(srv, req, started, packed, packed_len, &view, &d->sar); break;
    }
}

static void authz_request_free(authz_request *ar)
{
    if (ar->prev) ar->prev->next = ar->next;
    else ar->srv->waiting = ar->next;
    if (ar->next) ar->next->prev = ar->prev;
    ar->srv->requests_waiting--;
    OPENSSL_cleanse(ar->identity, ar->identity_len);
    free(ar);
}

static void on_tokenreview_done(const review_outcome *outcome, void *arg)
{
    authz_request *ar = arg;
    switch (outcome->verdict) {
    case REVIEW_POSITIVE:
        authorize_identity(ar->srv, ar->req, &ar->started, outcome->value, outcome->value_len);
        break;
    case REVIEW_NEGATIVE:
        reply_unauthorized(ar->srv, ar->req, &ar->started, "token not authenticated");
        break;
    case REVIEW_ERROR:
        if (ar->identity_len) {
            /* --stale-if-error: the API server failed and this token had a positive verdict
             * that expired less than the window ago. Opt-in; counted and logged. */
            ar->srv->stale_served++;
            log_warn("API server failing; served a stale verdict", "token_id", ar->token_id, "reason",
                     api_error_name(outcome->error), NULL);
            authorize_identity(ar->srv, ar->req, &ar->started, ar->identity, ar->identity_len);
            break;
        }
        reply_unavailable(ar->srv, ar->req, &ar->started, outcome->retry_after_s,
                          outcome->error == API_ERROR_THROTTLED ? "API server throttled the review"
                                                                : "token review unavailable");
        break;
    }
    authz_request_free(ar);
}

static void on_sar_done(const review_outcome *outcome, void *arg)
{
    authz_request *ar = arg;
    switch (outcome->verdict) {
    case REVIEW_POSITIVE:
        answer_allowed(ar->srv, ar->req, &ar->started, ar->identity, ar->identity_len, NULL);
        break;
    case REVIEW_NEGATIVE:
        reply_forbidden(ar->srv, ar->req, &ar->started, (const char *)outcome->value, outcome->value_len);
        break;
    case REVIEW_ERROR:
        reply_unavailable(ar->srv, ar->req, &ar->started, outcome->retry_after_s,
                          outcome->error == API_ERROR_THROTTLED ? "API server throttled the review"
                                                                : "access review unavailable");
        break;
    }
    authz_request_free(ar);
}

static authz_request *authz_request_new(server *srv, struct evhttp_request *req, const struct timespec *started,
                                        review_done_fn done, const unsigned char *identity, size_t identity_len)
{
    authz_request *ar = malloc(sizeof(*ar) + identity_len);
    if (!ar) return NULL;
    memset(ar, 0, sizeof(*ar));
    ar->srv = srv;
    ar->req = req;
    ar->started = *started;
    ar->waiter.done = done;
    ar->waiter.arg = ar;
    ar->identity_len = identity_len;
    if (identity_len) memcpy(ar->identity, identity, identity_len);
    ar->next = srv->waiting;
    if (srv->waiting) srv->waiting->prev = ar;
    srv->waiting = ar;
    srv->requests_waiting++;
    return ar;
}

/* The policy asked a SubjectAccessReview: answer from the cache or wait for one. */
static void sar_ask(server *srv, struct evhttp_request *req, const struct timespec *started,
                    const unsigned char *packed, size_t packed_len, const identity_view *view,
                    const sar_attributes *attrs)
{
    cache_key key;
    if (sar_cache_key(srv->keyer, view, attrs, &key) != 0) {
        reply(srv, req, started, 500, "Internal Server Error", "internal error");
        return;
    }
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t value_len = 0;
    review_metrics *rm = &srv->metrics.subjectaccessreview;
    switch (token_cache_lookup(srv->sar_cache, &key, monotonic_ms(), value, sizeof(value), &value_len, NULL)) {
    case TOKEN_CACHE_HIT_POSITIVE:
        rm->cache_hits++;
        answer_allowed(srv, req, started, packed, packed_len, NULL);
        return;
    case TOKEN_CACHE_HIT_NEGATIVE:
        rm->cache_hits++;
        reply_forbidden(srv, req, started, (const char *)value, value_len);
        return;
    case TOKEN_CACHE_STALE_POSITIVE: /* not asked for: lookup without a stale window */
    case TOKEN_CACHE_MISS:
        rm->cache_misses++;
        break;
    }
    authz_request *ar = authz_request_new(srv, req, started, on_sar_done, packed, packed_len);
    if (!ar) {
        reply_unavailable(srv, req, started, 1, "out of memory");
        return;
    }
    if (review_join(srv->reviews, &srv->sar_kind, &key, &ar->waiter)) return;
    review_request rr = {.key = key};
    rr.positive_ttl_ms = rr.positive_ttl_cap_ms = srv->cfg->sar_allowed_ttl_ms;
    rr.negative_ttl_ms = srv->cfg->sar_denied_ttl_ms;
    cache_key_id(&key, rr.token_id);
    rr.body = sar_request_body(view, attrs, &rr.body_len);
    if (!rr.body) {
        authz_request_free(ar);
        reply_policy_error(srv, req, started, "authorize", "the SubjectAccessReview could not be encoded");
        return;
    }
    review_start(srv->reviews, &srv->sar_kind, &rr, &ar->waiter);
}

/* Returns the only Authorization header's value, NULL if there is none, and sets
 * *several when there is more than one (ambiguous: refused). */
static const char *single_authorization(struct evkeyvalq *headers, bool *several)
{
    const char *value = NULL;
    *several = false;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, headers, next)
    {
        if (strcasecmp(kv->key, "Authorization") != 0) continue;
        if (value) *several = true;
        value = kv->value;
    }
    return value;
}

/* Default TTL of a positive verdict and its cap: --cache-ttl, bounded by --cache-max-ttl
 * and the JWT's exp. */
static void positive_ttls(const config *cfg, const char *token, size_t token_len, int64_t *ttl_ms, int64_t *cap_ms)
{
    int64_t cap = cfg->cache_max_ttl_ms;
    int64_t exp;
    if (jwt_read_exp(token, token_len, &exp) == 0) { /* exp is bounded: no overflow here */
        int64_t left_ms = (exp - (int64_t)time(NULL)) * 1000;
        if (left_ms < cap) cap = left_ms;
    }
    *cap_ms = cap;
    *ttl_ms = cfg->cache_ttl_ms < cap ? cfg->cache_ttl_ms : cap;
}

/* kind->positive_ttl for TokenReview: the policy's ttl(user), if it has one. */
static int64_t tokenreview_policy_ttl(void *ctx, const unsigned char *value, size_t value_len, int64_t default_ms)
{
    server *srv = ctx;
    identity_view view;
    if (!srv->policy || identity_view_parse(value, value_len, &view) != 0) return default_ms;
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

static tokenreview_parse_arg *tokenreview_parse_arg_new(const char *const *audiences, size_t n)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += strlen(audiences[i]) + 1;
    tokenreview_parse_arg *arg = malloc(sizeof(*arg) + bytes);
    if (!arg) return NULL;
    arg->n_audiences = n;
    char *p = arg->strings;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(audiences[i]) + 1;
        memcpy(p, audiences[i], len);
        arg->audiences[i] = p;
        p += len;
    }
    return arg;
}

/* The audiences in force: the policy's if it declares any, else --audiences. */
static size_t current_audiences(const server *srv, const char *const **out)
{
    size_t n = srv->policy ? policy_audiences(srv->policy, out) : 0;
    if (n) return n;
    *out = srv->cfg->audiences;
    return srv->cfg->n_audiences;
}

/* No usable token: 401, unless the policy's anonymous(req) lets the request through
 * (answered 200, or forwarded in proxy mode, without identity headers). */
static void handle_no_token(server *srv, struct evhttp_request *req, const struct timespec *started, const char *why)
{
    if (srv->policy) {
        policy_request pr;
        request_text text;
        char err[512];
        if (describe_request(srv, req, &pr, &text) == 0) {
            int rc = policy_anonymous(srv->policy, &pr, err, sizeof(err));
            if (rc < 0) {
                reply_policy_error(srv, req, started, "anonymous", err);
                return;
            }
            if (rc == 1 && srv->upstream) {
                forward_allowed(srv, req, started, NULL, NULL);
                return;
            }
            if (rc == 1) {
                reply(srv, req, started, 200, "OK", NULL);
                return;
            }
        }
    }
    reply_unauthorized(srv, req, started, why);
}

static void authz_handle(struct evhttp_request *req, void *arg)
{
    server *srv = arg;
    const config *cfg = srv->cfg;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);

    size_t n_headers = 0;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) n_headers++;
    if (n_headers > cfg->max_header_count) {
        reply(srv, req, &started, 431, "Request Header Fields Too Large", "too many header fields");
        return;
    }
    if (srv->upstream) {
        /* What could not be forwarded is refused before any review is spent on it. evhttp
         * already refuses CONNECT and TRACE (not in the allowed methods). */
        const char *uri = evhttp_request_get_uri(req);
        if (!uri || uri[0] != '/') {
            reply(srv, req, &started, 400, "Bad Request", "the request target must be an absolute path");
            return;
        }
        if (strlen(uri) >= URI_MAX) {
            reply(srv, req, &started, 414, "URI Too Long", "request URI too long");
            return;
        }
    }
    bool several = false;
    const char *header = single_authorization(evhttp_request_get_input_headers(req), &several);
    if (several) {
        reply_unauthorized(srv, req, &started, "several Authorization headers");
        return;
    }
    const char *token;
    size_t token_len;
    bearer_status bs = bearer_extract(header, cfg->max_token_bytes, &token, &token_len);
    if (bs != BEARER_OK) {
        handle_no_token(srv, req, &started, bearer_status_reason(bs));
        return;
    }

    const char *const *audiences;
    size_t n_audiences = current_audiences(srv, &audiences);
    cache_key key;
    if (cache_key_for_token(srv->keyer, token, token_len, audiences, n_audiences, &key) != 0) {
        reply(srv, req, &started, 500, "Internal Server Error", "internal error");
        return;
    }
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t value_len = 0;
    size_t stale_len = 0;
    review_metrics *rm = &srv->metrics.tokenreview;
    switch (token_cache_lookup_stale(srv->tokenreview_cache, &key, monotonic_ms(), cfg->stale_if_error_ms, value,
                                     sizeof(value), &value_len, NULL)) {
    case TOKEN_CACHE_HIT_POSITIVE:
        rm->cache_hits++;
        authorize_identity(srv, req, &started, value, value_len);
        return;
    case TOKEN_CACHE_HIT_NEGATIVE:
        rm->cache_hits++;
        reply_unauthorized(srv, req, &started, "token not authenticated");
        return;
    case TOKEN_CACHE_STALE_POSITIVE:
        stale_len = value_len; /* kept for a fallback if the fresh review fails */
        rm->cache_misses++;
        break;
    case TOKEN_CACHE_MISS:
        rm->cache_misses++;
        break;
    }

    authz_request *ar = authz_request_new(srv, req, &started, on_tokenreview_done, value, stale_len);
    if (!ar) {
        reply_unavailable(srv, req, &started, 1, "out of memory");
        return;
    }
    cache_key_id(&key, ar->token_id);
    if (review_join(srv->reviews, &srv->tokenreview_kind, &key, &ar->waiter)) return;

    review_request rr = {.key = key};
    positive_ttls(cfg, token, token_len, &rr.positive_ttl_ms, &rr.positive_ttl_cap_ms);
    rr.negative_ttl_ms = cfg->cache_negative_ttl_ms < cfg->cache_max_ttl_ms ? cfg->cache_negative_ttl_ms
                                                                             : cfg->cache_max_ttl_ms;
    cache_key_id(&key, rr.token_id);
    rr.parse_arg = tokenreview_parse_arg_new(audiences, n_audiences);
    rr.parse_arg_free = free;
    rr.body = rr.parse_arg ? tokenreview_request_body(token, token_len, audiences, n_audiences, &rr.body_len) : NULL;
    if (!rr.body) {
        free(rr.parse_arg);
        authz_request_free(ar);
        reply_unavailable(srv, req, &started, 1, "out of memory");
        return;
    }
    review_start(srv->reviews, &srv->tokenreview_kind, &rr, &ar->waiter);
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
    case TOKENREVIEW_BAD_RESPONSE:
        out->verdict = REVIEW_ERROR;
        break;
    }
}

/* kind->parse for SubjectAccessReview: a denied verdict keeps its reason as its value. */
static void sar_parse(const char *body, size_t body_len, const void *parse_arg, unsigned char *value,
                      review_parsed *out)
{
    (void)parse_arg;
    switch (sar_parse_response(body, body_len, out->reason, sizeof(out->reason))) {
    case SAR_ALLOWED:
        out->verdict = REVIEW_POSITIVE;
        out->value_len = 0;
        break;
    case SAR_DENIED:
        out->verdict = REVIEW_NEGATIVE;
        out->value_len = strlen(out->reason);
        memcpy(value, out->reason, out->value_len);
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
        .stale_served = srv->stale_served,
    };
    review_engine_get_stats(srv->reviews, &g.engine);
    struct evbuffer *buf = evbuffer_new();
    if (!buf || metrics_render(buf, &srv->metrics, &g) != 0 || custom_metrics_render(srv->custom, buf) != 0) {
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
    } else {
        flushed = token_cache_flush_all(srv->tokenreview_cache);
    }
    srv->metrics.cache_flushes++;
    char count[32];
    snprintf(count, sizeof(count), "%zu", flushed);
    log_info("cache flushed", "scope", scope, "user", filter.user, "namespace", filter.namespace_name, "entries",
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

static void admin_handle(struct evhttp_request *req, void *arg)
{
    server *srv = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (!path) path = "/";
    if (strcmp(path, "/metrics") == 0) {
        admin_metrics(srv, req);
    } else if (strcmp(path, "/healthz") == 0 || strcmp(path, "/livez") == 0) {
        admin_simple(req, 200, "OK", "ok");
    } else if (strcmp(path, "/readyz") == 0) {
        if (srv->shutting_down) admin_simple(req, 503, "Service Unavailable", "not ready: shutting down");
        else if (!srv->api_ready) admin_simple(req, 503, "Service Unavailable", "not ready: the API server has not answered a review");
        else admin_simple(req, 200, "OK", "ok");
    } else if (strcmp(path, "/cache/flush") == 0) {
        admin_flush(srv, req);
    } else if (strcmp(path, "/policy") == 0) {
        admin_policy(srv, req);
    } else {
        admin_simple(req, 404, "Not Found", "not found");
    }
}

/* ---- policy loading and hot reload ------------------------------------------------- */

/* Loads (or reloads) the policy file. On failure the running policy keeps serving. */
static int load_policy(server *srv, const char *trigger)
{
    char err[1024];
    const char *path = srv->cfg->policy;
    if (policy_host_load(srv->policy, path, err, sizeof(err)) != 0) {
        srv->metrics.policy_reloads_failure++;
        log_error("policy load failed; the previous policy keeps running", "trigger", trigger, "path",
                  path ? path : "(built-in default)", "error", err, NULL);
        return -1;
    }
    policy_info info;
    policy_host_info(srv->policy, &info);
    srv->metrics.policy_reloads_success++;
    srv->metrics.policy_last_reload_success_s = info.loaded_at;
    log_info("policy loaded", "trigger", trigger, "path", info.path, "sha256", info.sha256_hex, NULL);
    return 0;
}

/* evhttp_set_bevcb: every new main-listener connection gets a TLS bufferevent on the
 * current context; a reload changes only what later connections get. */
static struct bufferevent *new_tls_bufferevent(struct event_base *base, void *arg)
{
    server *srv = arg;
    SSL *ssl = SSL_new(srv->tls);
    if (!ssl) return NULL;
    return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                          BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
}

/* Re-reads the certificate and key; on failure the current ones keep serving. */
static int load_tls(server *srv, const char *trigger)
{
    char err[512];
    SSL_CTX *ctx = tls_server_context_new(srv->cfg->tls_cert_file, srv->cfg->tls_key_file, err, sizeof(err));
    if (!ctx) {
        log_error("TLS certificate load failed; the previous one keeps serving", "trigger", trigger, "error", err,
                  NULL);
        return -1;
    }
    SSL_CTX_free(srv->tls); /* open connections hold their own reference */
    srv->tls = ctx;
    log_info("TLS certificate loaded", "trigger", trigger, "cert", srv->cfg->tls_cert_file, NULL);
    return 0;
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    server *srv = arg;
    if (srv->policy) load_policy(srv, "SIGHUP");
    if (srv->tls) load_tls(srv, "SIGHUP");
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

/* ---- start-up and shutdown ---------------------------------------------------------- */

/* Graceful shutdown: /readyz answers 503, the main listener stops accepting, answers
 * carry "Connection: close", and the process exits once no request is waiting for a
 * review, or when --shutdown-grace runs out. A second signal exits at once. */
static void on_shutdown_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    server *srv = arg;
    if (srv->requests_waiting == 0) {
        log_info("stopped: no request in flight", NULL);
        event_base_loopexit(srv->base, NULL);
    } else if (monotonic_ms() >= srv->shutdown_deadline_ms) {
        char n[32];
        snprintf(n, sizeof(n), "%zu", srv->requests_waiting);
        log_warn("stopped: --shutdown-grace ran out", "requests_waiting", n, NULL);
        event_base_loopexit(srv->base, NULL);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    server *srv = arg;
    const char *name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
    if (srv->shutting_down) {
        log_info("second signal: exiting now", "signal", name, NULL);
        event_base_loopexit(srv->base, NULL);
        return;
    }
    srv->shutting_down = true;
    if (srv->upstream) upstream_set_draining(srv->upstream);
    srv->shutdown_deadline_ms = monotonic_ms() + srv->cfg->shutdown_grace_ms;
    char grace[32];
    snprintf(grace, sizeof(grace), "%lld", (long long)srv->cfg->shutdown_grace_ms);
    log_info("stopping: finishing in-flight requests", "signal", name, "grace_ms", grace, NULL);
    if (srv->main_bound) {
        evhttp_del_accept_socket(srv->main_http, srv->main_bound);
        srv->main_bound = NULL;
    }
    struct timeval every = {0, 20000};
    if (!srv->shutdown_timer || evtimer_add(srv->shutdown_timer, &every) != 0) event_base_loopexit(srv->base, NULL);
}

/* Binds http to "host:port" and logs the bound address (port 0 picks a free one). */
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

static void server_teardown(server *srv)
{
    if (srv->main_http) evhttp_free(srv->main_http); /* ends proxied requests still running */
    if (srv->admin_http) evhttp_free(srv->admin_http);
    upstream_free(srv->upstream);
    api_client_free(srv->api); /* first: its calls borrow the flights' bodies */
    review_engine_free(srv->reviews);
    /* --shutdown-grace ran out: requests still waiting for a review went with evhttp, and
     * the engine never calls their waiters now. */
    while (srv->waiting) authz_request_free(srv->waiting);
    policy_host_free(srv->policy);
    custom_metrics_free(srv->custom);
    token_cache_free(srv->sar_cache);
    token_cache_free(srv->tokenreview_cache);
    cache_keyer_free(srv->keyer);
    if (srv->probe_timer) event_free(srv->probe_timer);
    if (srv->sigterm_event) event_free(srv->sigterm_event);
    if (srv->sigint_event) event_free(srv->sigint_event);
    if (srv->sighup_event) event_free(srv->sighup_event);
    if (srv->policy_watch_timer) event_free(srv->policy_watch_timer);
    if (srv->shutdown_timer) event_free(srv->shutdown_timer);
    SSL_CTX_free(srv->tls);
    free_probe_body(srv);
    if (srv->base) event_base_free(srv->base);
}

int server_run(const config *cfg, const apiserver_settings *api)
{
    server *srv = calloc(1, sizeof(*srv));
    if (!srv) return 1;
    srv->cfg = cfg;
    int rc = 1;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    srv->start_time_s = (double)wall.tv_sec + wall.tv_nsec / 1e9;
    signal(SIGPIPE, SIG_IGN);

    srv->base = event_base_new();
    if (!srv->base) goto done;
    srv->keyer = cache_keyer_new();
    token_cache_options co = {.max_entries = cfg->cache_max_entries};
    srv->tokenreview_cache = token_cache_new(&co);
    srv->sar_cache = token_cache_new(&co);
    srv->custom = custom_metrics_new(CUSTOM_SERIES_PER_METRIC);
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
    if (config_proxy_mode(cfg)) {
        upstream_options uo = {
            .url = cfg->upstream,
            .ca_file = cfg->upstream_ca,
            .timeout_ms = cfg->upstream_timeout_ms,
            .max_connections = cfg->upstream_max_connections,
            .keep_authorization = cfg->upstream_keep_authorization,
            .listener_tls = cfg->tls_cert_file != NULL,
        };
        srv->upstream = upstream_new(srv->base, &uo);
        if (!srv->upstream) goto done;
    }
    srv->shutdown_timer = event_new(srv->base, -1, EV_PERSIST, on_shutdown_tick, srv);
    srv->probe_timer = evtimer_new(srv->base, on_probe_timer, srv);
    if (!srv->keyer || !srv->tokenreview_cache || !srv->sar_cache || !srv->custom || !srv->api || !srv->reviews ||
        !srv->probe_timer || !srv->shutdown_timer)
        goto done;
    if (config_policy_enabled(cfg)) {
        policy_limits limits = {.max_instructions = cfg->policy_max_instructions,
                                .max_memory_bytes = cfg->policy_max_memory_bytes};
        srv->policy = policy_host_new(srv->custom, &limits);
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
        .ctx = srv,
    };
    srv->sar_kind = (review_kind){
        .name = "subjectaccessreview",
        .api_path = SAR_API_PATH,
        .cache = srv->sar_cache,
        .metrics = &srv->metrics.subjectaccessreview,
        .parse = sar_parse,
    };

    srv->main_http = evhttp_new(srv->base);
    srv->admin_http = evhttp_new(srv->base);
    if (!srv->main_http || !srv->admin_http) goto done;
    /* authz mode: auth_request / ext_authz / forwardAuth send any method, rarely a body.
     * Proxy mode: the same methods (never CONNECT or TRACE) and bodies up to
     * --max-body-bytes, buffered whole by evhttp before the request is authorized. */
    evhttp_set_allowed_methods(srv->main_http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                                   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                                   EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(srv->main_http, (ev_ssize_t)(cfg->max_token_bytes + 32768));
    if (srv->upstream) {
        evhttp_set_max_body_size(srv->main_http, (ev_ssize_t)cfg->max_body_bytes);
        /* Read (and drop) an oversized body before answering 413, so the client gets the
         * 413 rather than a reset; an upstream answer without Content-Type keeps none. */
        evhttp_set_flags(srv->main_http, EVHTTP_SERVER_LINGERING_CLOSE);
        evhttp_set_default_content_type(srv->main_http, NULL);
    } else {
        evhttp_set_max_body_size(srv->main_http, MAIN_MAX_BODY_BYTES);
    }
    /* evhttp 2.1 has no separate header deadline: this inactivity timeout, the header
     * size bound and the body bound are what limit a slow or oversized client. */
    struct timeval read_timeout = {cfg->read_timeout_ms / 1000, (cfg->read_timeout_ms % 1000) * 1000};
    evhttp_set_timeout_tv(srv->main_http, &read_timeout);
    evhttp_set_gencb(srv->main_http, authz_handle, srv);
    if (cfg->tls_cert_file) {
        if (load_tls(srv, "start-up") != 0) goto done;
        evhttp_set_bevcb(srv->main_http, new_tls_bufferevent, srv);
    }
    evhttp_set_allowed_methods(srv->admin_http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
    evhttp_set_max_body_size(srv->admin_http, 4096);
    evhttp_set_timeout(srv->admin_http, 30);
    evhttp_set_gencb(srv->admin_http, admin_handle, srv);
    if (bind_listener(srv->main_http, "main", cfg->listen, &srv->main_bound) != 0 ||
        bind_listener(srv->admin_http, "admin", cfg->admin_listen, NULL) != 0)
        goto done;

    srv->sigterm_event = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    srv->sigint_event = evsignal_new(srv->base, SIGINT, on_signal, srv);
    srv->sighup_event = evsignal_new(srv->base, SIGHUP, on_sighup, srv);
    if (!srv->sigterm_event || !srv->sigint_event || !srv->sighup_event ||
        evsignal_add(srv->sigterm_event, NULL) != 0 || evsignal_add(srv->sigint_event, NULL) != 0 ||
        evsignal_add(srv->sighup_event, NULL) != 0)
        goto done;

    struct timeval now = {0, 0};
    evtimer_add(srv->probe_timer, &now);
    log_info("started", "mode", cfg->mode, "apiserver", api->server_url, "apiserver_source",
             apiserver_source_name(api->source), "upstream", cfg->upstream, NULL);
    event_base_dispatch(srv->base);
    rc = 0;
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
                            .max_memory_bytes = cfg->policy_max_memory_bytes};
    policy_host *host = scratch ? policy_host_new(scratch, &limits) : NULL;
    char err[1024] = "out of memory";
    int rc = host ? policy_host_load(host, cfg->policy, err, sizeof(err)) : -1;
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
