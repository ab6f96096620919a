/* worker.c owns the request path on one event-loop thread: a request enters
 * authz_handle(), is answered from the cache or waits on a review (sent to the control
 * thread, see worker.h), and leaves through exactly one reply_*() call — or, allowed in
 * proxy mode, is handed to upstream.c, which answers it. It also owns the worker's
 * connections: their count against --max-connections, and TLS on them. */
#include "worker.h"

#include "accept_backoff.h"
#include "access_log.h"
#include "bearer.h"
#include "conn_guard.h"
#include "http_strict.h"
#include "identity.h"
#include "log.h"
#include "request_target.h"
#include "sar.h"
#include "tokenreview.h"
#include "upstream.h"
#include "util.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GROUPS_HEADER_MAX 8192
#define MAIN_MAX_BODY_BYTES 65536
#define URI_MAX 8192
#define ADOPT_BATCH_MAX 256           /* connections accepted in one loop turn before they are adopted */
#define DIGEST_MEMO_SLOTS 64          /* identities whose digest a worker remembers */
#define DIGEST_MEMO_IDENTITY_MAX 1024 /* longer identities are hashed every time */
#define SAR_KEY_MEMO_SLOTS 32         /* SubjectAccessReview keys a worker remembers */
#define SAR_KEY_MEMO_MATERIAL_MAX 512 /* longer questions are keyed every time */

/* The last identities seen by this worker's SubjectAccessReview step and their digests:
 * the same few callers come back on every request, and their identities arrive as fresh
 * copies from the cache, so they are compared byte for byte (never trusted by slot). */
typedef struct digest_memo_slot {
    size_t len; /* 0: empty */
    unsigned char digest[IDENTITY_DIGEST_BYTES];
    unsigned char identity[DIGEST_MEMO_IDENTITY_MAX];
} digest_memo_slot;

/* What the decision log says about the request being answered, filled along the request
 * path with --access-log (w->access_log set) and read by reply(). The pointers are valid
 * until the reply: they point into the request, the cache's copy or the caller's stack. */
typedef struct decision_note {
    decision_source source;
    int cache_hit;                 /* the token's verdict was cached: 1, 0, -1 (no token) */
    const unsigned char *identity; /* packed identity, or NULL */
    size_t identity_len;
    const char *method; /* as judged; NULL: the request's own */
    const char *path;   /* as judged, without the query; NULL: the request's own */
} decision_note;

/* The last SubjectAccessReview keys this worker computed, by what they were computed from
 * (the identity's digest and the attributes, in an injective encoding of this file's own,
 * compared byte for byte): the same callers ask the same questions, and each key is an
 * HMAC of two to three SHA-256 blocks. Holds no secret: digests and attributes only. */
typedef struct sar_key_memo_slot {
    size_t len; /* 0: empty */
    cache_key key;
    unsigned char material[SAR_KEY_MEMO_MATERIAL_MAX];
} sar_key_memo_slot;

/* --forwarded-headers, decided once (proxy mode: always the request itself). */
typedef enum {
    FORWARDED_NONE,          /* the request itself (Envoy ext_authz) */
    FORWARDED_NGINX,         /* X-Original-Method/-URI (+ X-Forwarded-Host) */
    FORWARDED_INGRESS_NGINX, /* X-Original-URL (absolute) + X-Original-Method */
    FORWARDED_TRAEFIK,       /* X-Forwarded-Method/-Uri/-Host */
    FORWARDED_PROXY,         /* proxy mode: the request itself; family headers ignored and stripped */
} forwarded_mode;

struct worker {
    worker_shared shared;
    forwarded_mode forwarded_mode;
    const config *cfg;
    size_t index;
    pthread_t thread;
    bool thread_started;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    mailbox *inbox;
    cache_keyer *keyer;
    token_cache *tokenreview_cache;
    token_cache *sar_cache;
    policy_host *policy;             /* NULL with --policy none */
    policy_decision decision;        /* scratch for authorize_identity(); ~24 KiB, so not on the heap per request */
    upstream *upstream;              /* proxy mode: where allowed requests go; NULL in authz mode */
    gateway_metrics metrics;         /* written by this thread only */
    metric_counter stale_served;     /* gateway_tokenreview_stale_served_total */
    struct authz_request *waiting;   /* every authz_request alive, for worker_free */
    _Atomic size_t requests_waiting; /* what graceful shutdown waits for */
    bool shutting_down;

    /* Liveness: a timer of the worker's own loop stamps heartbeat_ms (CLOCK_MONOTONIC)
     * every WORKER_HEARTBEAT_MS, so a loop that stops turning (a callback that never
     * returns) shows as a stamp that ages; loop_left is set once the thread has left its
     * loop for good. Both are read by the control thread (/livez, metrics, shutdown). */
    struct event *heartbeat_event;
    _Atomic int64_t heartbeat_ms;
    _Atomic bool loop_left;

    /* --max-connections: this worker's share. A new connection is counted when evhttp
     * asks for its bufferevent and uncounted in its close callback, which is installed at
     * the end of the loop turn that accepted it (adopt_new_connections); at the limit the
     * listener is disabled and new connections wait in the kernel's accept queue. */
    _Atomic size_t connections;
    bool accept_paused;
    struct bufferevent *adopt[ADOPT_BATCH_MAX];
    size_t n_adopt;
    struct event *adopt_event;
    uint64_t connection_limit_pauses;
    conn_guard_set *guards;      /* request deadlines and body bounds per connection */
    accept_backoff *backoff;     /* pauses the listener when accept() runs out of fds; worker thread only */
    uint64_t forwarded_refusals; /* requests refused for their forwarded headers (logged 1 in 1000) */
    digest_memo_slot digest_memo[DIGEST_MEMO_SLOTS];
    sar_key_memo_slot sar_key_memo[SAR_KEY_MEMO_SLOTS];

    /* --access-log: the shared log (NULL: off), this worker's buffer, its flush timer and
     * the note of the request being answered. */
    const access_log *access_log;
    access_log_buffer *access_log_buffer;
    struct event *access_log_timer;
    decision_note note;

    /* The policy's after() for the request being answered: armed (arm_after) only while a
     * request that reached the policy is being answered, and only if the policy has the
     * hook; fired once, with the answer's status, by reply() or forward_allowed(). req and
     * user point into the caller's frame, so whoever arms it disarms it before returning. */
    struct {
        bool armed;
        policy_outcome outcome;
        const policy_request *req;
        const identity_view *user;
    } after;
};

/* A request handed to the upstream: what its end needs for the metrics and, with
 * --access-log, a copy of its decision note (the strings follow the struct). */
typedef struct proxied_request {
    worker *w;
    struct timespec started;
    decision_note note;
    char storage[];
} proxied_request;

/* One request waiting for a review; freed by the reply. In the SubjectAccessReview stage
 * it carries the packed identity it will answer with. */
typedef struct authz_request {
    worker *w;
    struct authz_request *prev, *next; /* in w->waiting */
    struct evhttp_request *req;
    struct timespec started;
    review_waiter waiter;
    char token_id[9];
    int token_cache_hit; /* SAR stage: the decision note's cache_hit when the SAR was asked */
    int token_cached;    /* SAR stage, for after(): the TokenReview verdict was cached (1, 0) */
    size_t identity_len; /* SAR stage: the identity; TokenReview stage: a stale verdict or 0 */
    unsigned char identity[];
} authz_request;

static void send_review(worker *w, struct authz_request *ar, review_kind_id which, review_request *rr);
static void reply_forbidden(worker *w, struct evhttp_request *req, const struct timespec *started, const char *reason,
                            size_t reason_len);
static void send_refresh(worker *w, const char *token, size_t token_len, const char *const *audiences,
                         size_t n_audiences, const cache_key *key);
static void on_connection_closed(struct evhttp_connection *evcon, void *arg);
struct proxied_request;
static void record_proxied_decision(struct proxied_request *p, int status, double latency_s);

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

/* ---- the decision log ------------------------------------------------------------------ */

/* Starts the note of a request (or of its next stage after a review). */
static void note_begin(worker *w, decision_source source, int cache_hit)
{
    if (!w->access_log) return;
    w->note = (decision_note){.source = source, .cache_hit = cache_hit};
}

/* Completes e with the noted identity (user, uid, a ServiceAccount's namespace) and the
 * worker's policy, and adds the line to the worker's buffer. */
static void entry_add(worker *w, access_log_entry *e, const decision_note *note)
{
    identity_view view;
    if (note->identity && identity_view_parse(note->identity, note->identity_len, &view) == 0) {
        e->user = view.username.ptr;
        e->user_len = view.username.len;
        e->uid = view.uid.ptr;
        e->uid_len = view.uid.len;
        str_view ns, name;
        if (identity_serviceaccount(view.username, &ns, &name)) {
            e->namespace_name = ns.ptr;
            e->namespace_len = ns.len;
        }
    }
    policy_info info;
    if (w->policy) {
        policy_host_info(w->policy, &info);
        e->policy_sha256 = info.sha256_hex;
    }
    access_log_add(w->access_log, w->access_log_buffer, e);
}

/* Writes the decision log line of an answered request. reason: why it was refused. */
static void record_decision(worker *w, struct evhttp_request *req, const decision_note *note, int status,
                            const char *reason, double latency_s)
{
    access_log_entry e = {
        .method = note->method ? note->method : method_name(evhttp_request_get_command(req)),
        .status = status,
        .source = note->source,
        .reason = reason,
        .latency_s = latency_s,
        .cache_hit = note->cache_hit,
    };
    if (note->path) {
        e.path = note->path;
        e.path_len = strlen(note->path);
    } else {
        /* No policy judged it: the request's own path, never its query. */
        const char *uri = evhttp_request_get_uri(req);
        e.path = uri ? uri : "";
        e.path_len = strcspn(e.path, "?");
    }
    entry_add(w, &e, note);
}

static void on_access_log_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker *w = arg;
    if (w->access_log_buffer->len) access_log_flush(w->access_log, w->access_log_buffer);
}

/* ---- answers ------------------------------------------------------------------------ */

/* Graceful shutdown: an answer sent while stopping stays in requests_waiting until evhttp
 * has written its last byte, or its connection is gone — else the process could exit with
 * the answer still in a buffer. (Proxied answers are tracked the same way by upstream.c.) */
typedef struct answer_in_flight {
    worker *w;
    struct evhttp_connection *evcon;
} answer_in_flight;

static void on_answer_written(struct evhttp_request *req, void *arg)
{
    (void)req;
    answer_in_flight *a = arg;
    /* Back to the connection's own close callback (the connection count). */
    evhttp_connection_set_closecb(a->evcon, on_connection_closed, a->w);
    a->w->requests_waiting--;
    free(a);
}

static void on_answer_connection_closed(struct evhttp_connection *evcon, void *arg)
{
    answer_in_flight *a = arg;
    a->w->requests_waiting--;
    on_connection_closed(evcon, a->w); /* it stood in for the connection's own callback */
    free(a);
}

static void track_answer_while_stopping(worker *w, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!w->shutting_down || !evcon) return; /* no connection: the client is gone, nothing to write */
    answer_in_flight *a = malloc(sizeof(*a));
    if (!a) return;
    a->w = w;
    a->evcon = evcon;
    evhttp_request_set_on_complete_cb(req, on_answer_written, a);
    evhttp_connection_set_closecb(evcon, on_answer_connection_closed, a);
    w->requests_waiting++;
}

/* The challenge of every 401 of the main listener (RFC 6750). */
#define BEARER_CHALLENGE "Bearer realm=\"tokengate\""

/* ---- proxy mode: answering on the headers ----------------------------------------------- */

/* conn_guard's refuse callback: a request without Authorization whose body was announced
 * and will not be read gets the answer reply_unauthorized would give, closing the
 * connection, and is counted and logged like any other answer. */
static void refuse_on_headers(void *arg, const conn_guard_refusal *request, struct evbuffer *response)
{
    worker *w = arg;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    const char *why = bearer_status_reason(BEARER_MISSING);
    char date[64];
    if (!evutil_date_rfc1123(date, sizeof(date), NULL)) date[0] = '\0';
    evbuffer_add_printf(response,
                        "HTTP/1.1 401 Unauthorized\r\n"
                        "WWW-Authenticate: " BEARER_CHALLENGE "\r\n"
                        "Cache-Control: no-store\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        "Date: %s\r\n"
                        "Connection: close\r\n"
                        "Content-Length: %zu\r\n\r\n%s\n",
                        date, strlen(why) + 1, why);
    double latency_s = seconds_since(&started);
    metrics_count_request(&w->metrics, 401, latency_s);
    if (!w->access_log) return;
    note_begin(w, DECISION_ANONYMOUS, -1);
    char method[32] = "";
    if (request->method_len < sizeof(method)) {
        memcpy(method, request->method, request->method_len);
        method[request->method_len] = '\0';
    }
    access_log_entry e = {
        .method = method,
        .path = request->path ? request->path : "",
        .path_len = request->path_len,
        .status = 401,
        .source = DECISION_ANONYMOUS,
        .reason = why,
        .latency_s = latency_s,
        .cache_hit = -1,
    };
    entry_add(w, &e, &w->note);
}

/* In proxy mode a request without a token can only be answered 401 unless the policy's
 * anonymous() may let it through; then (and while stopping) it is read whole as usual. */
static void update_refusal_on_headers(worker *w)
{
    bool refuse = w->upstream && !w->shutting_down && !(w->policy && policy_has_anonymous(w->policy));
    conn_guard_set_refuse_unauthenticated(w->guards, refuse);
}

/* ---- after(): the policy hears what was answered ------------------------------------- */

/* Arms after() for the request the policy is judging (see worker.after). follows_authorize:
 * armed right after policy_authorize for this request, and no other hook runs before the
 * answer (the synchronous path), so after() may reuse authorize's req view. */
static void arm_after(worker *w, policy_outcome_source source, int token_cached, bool follows_authorize,
                      const policy_request *pr, const identity_view *user)
{
    if (!w->policy || !policy_has_after(w->policy)) return;
    w->after.armed = true;
    w->after.outcome = (policy_outcome){.source = source,
                                        .token_cached = token_cached,
                                        .sar_cached = source == POLICY_OUTCOME_SAR ? 0 : -1,
                                        .follows_authorize = follows_authorize};
    w->after.req = pr;
    w->after.user = user;
}

/* Runs the armed after() with the answer already decided. body: the answer's text, the
 * outcome's reason unless a more exact one was set (a deny's own reason). A failure is a
 * policy error, counted and logged; the answer stands. */
static void fire_after(worker *w, int status, const char *body)
{
    w->after.armed = false;
    policy_outcome o = w->after.outcome;
    o.status = status;
    if (status < 300) {
        o.reason = NULL;
    } else if (!o.reason && body) {
        o.reason = body;
        o.reason_len = strlen(body);
    }
    char err[512];
    if (policy_after(w->policy, w->after.req, w->after.user, &o, err, sizeof(err)) != 0) {
        metric_add(&w->metrics.policy_errors, 1);
        log_warn("policy error in after(); the answer stands", "hook", "after", "error", err, NULL);
    }
}

/* After an answer: the policy's after() hook, the request metrics, the decision log. */
static void account_answer(worker *w, struct evhttp_request *req, const struct timespec *started, int status,
                           const char *body)
{
    if (w->after.armed) fire_after(w, status, body);
    double latency_s = seconds_since(started);
    metrics_count_request(&w->metrics, status, latency_s);
    if (w->access_log) record_decision(w, req, &w->note, status, status >= 300 ? body : NULL, latency_s);
}

static void reply(worker *w, struct evhttp_request *req, const struct timespec *started, int status, const char *reason,
                  const char *body)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Cache-Control", "no-store");
    if (w->shutting_down) evhttp_add_header(out, "Connection", "close");
    /* Only an answer with a body has a type: evhttp's default (text/html) is off for the
     * whole listener, and each header costs a formatted line (evbuffer_add_printf) on the
     * cached path's 200s. */
    struct evbuffer *buf = NULL;
    if (body) {
        evhttp_add_header(out, "Content-Type", "text/plain; charset=utf-8");
        buf = evbuffer_new();
        if (buf) evbuffer_add_printf(buf, "%s\n", body);
    }
    track_answer_while_stopping(w, req);
    /* What follows the answer (after(), the request metrics, the decision log) reads the
     * request, so it runs once the answer is queued, unless the client is gone: evhttp then
     * frees the request inside evhttp_send_reply, and it all runs just before. */
    bool client_gone = evhttp_request_get_connection(req) == NULL;
    if (client_gone) account_answer(w, req, started, status, body);
    evhttp_send_reply(req, status, reason, buf);
    if (buf) evbuffer_free(buf);
    if (!client_gone) account_answer(w, req, started, status, body);
}

static void reply_unauthorized(worker *w, struct evhttp_request *req, const struct timespec *started, const char *why)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", BEARER_CHALLENGE);
    reply(w, req, started, 401, "Unauthorized", why);
}

static void reply_unavailable(worker *w, struct evhttp_request *req, const struct timespec *started, int retry_after_s,
                              const char *why)
{
    char value[16];
    snprintf(value, sizeof(value), "%d", retry_after_s > 0 ? retry_after_s : 1);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", value);
    reply(w, req, started, 503, "Service Unavailable", why);
}

/* The identity headers' values, from a packed identity. */
typedef struct identity_text {
    char user[IDENTITY_STRING_MAX + 1];
    char uid[IDENTITY_STRING_MAX + 1];
    char groups[GROUPS_HEADER_MAX];
} identity_text;

/* Returns 0, -1 for a malformed identity (or groups too long for the header), -2 for
 * one whose groups cannot be joined unambiguously (see identity_join_groups). */
static int identity_text_from(const unsigned char *packed, size_t packed_len, identity_text *out)
{
    identity_view view;
    if (identity_view_parse(packed, packed_len, &view) != 0) return -1;
    long joined = identity_join_groups(&view, out->groups, sizeof(out->groups));
    if (joined < 0) return joined == -2 ? -2 : -1;
    memcpy(out->user, view.username.ptr, view.username.len);
    out->user[view.username.len] = '\0';
    memcpy(out->uid, view.uid.ptr, view.uid.len);
    out->uid[view.uid.len] = '\0';
    return 0;
}

static void on_proxied_done(void *arg, int status)
{
    proxied_request *p = arg;
    double latency_s = seconds_since(&p->started);
    metrics_count_request(&p->w->metrics, status, latency_s);
    if (p->w->access_log) record_proxied_decision(p, status, latency_s);
    p->w->requests_waiting--;
    free(p);
}

/* The decision log line of a proxied request, from the note copied when it was forwarded. */
static void record_proxied_decision(struct proxied_request *p, int status, double latency_s)
{
    access_log_entry e = {
        .method = p->note.method,
        .path = p->note.path,
        .path_len = p->note.path ? strlen(p->note.path) : 0,
        .status = status,
        .source = p->note.source,
        .reason = status >= 300 ? "answered by the upstream" : NULL,
        .latency_s = latency_s,
        .cache_hit = p->note.cache_hit,
    };
    entry_add(p->w, &e, &p->note);
}

/* A proxied_request with, when the decision log is on, a copy of the current note (its
 * method, path and identity live in the allocation). */
static proxied_request *proxied_request_new(worker *w, struct evhttp_request *req)
{
    if (!w->access_log) return calloc(1, sizeof(proxied_request));
    const decision_note *n = &w->note;
    const char *method = n->method ? n->method : method_name(evhttp_request_get_command(req));
    const char *path = n->path;
    size_t path_len;
    if (path) {
        path_len = strlen(path);
    } else {
        const char *uri = evhttp_request_get_uri(req);
        path = uri ? uri : "";
        path_len = strcspn(path, "?");
    }
    if (path_len > URI_MAX) path_len = URI_MAX;
    size_t method_len = strlen(method);
    if (method_len > 32) method_len = 32;
    proxied_request *p = calloc(1, sizeof(*p) + method_len + 1 + path_len + 1 + n->identity_len);
    if (!p) return NULL;
    char *at = p->storage;
    memcpy(at, method, method_len);
    p->note.method = at;
    at += method_len + 1;
    memcpy(at, path, path_len);
    p->note.path = at;
    at += path_len + 1;
    if (n->identity) {
        memcpy(at, n->identity, n->identity_len);
        p->note.identity = (const unsigned char *)at;
        p->note.identity_len = n->identity_len;
    }
    p->note.source = n->source;
    p->note.cache_hit = n->cache_hit;
    return p;
}

/* Proxy mode: the request is allowed; the upstream answers it. id NULL: anonymous. */
static void forward_allowed(worker *w, struct evhttp_request *req, const struct timespec *started,
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
    proxied_request *p = proxied_request_new(w, req);
    if (!p || upstream_forward(w->upstream, &ur, on_proxied_done, p) != 0) {
        free(p);
        reply_unavailable(w, req, started, 1, "cannot forward the request");
        return;
    }
    p->w = w;
    p->started = *started;
    w->requests_waiting++;
    /* Forwarded: the gateway's answer is 200 (the upstream's own status is not the
     * policy's decision). */
    if (w->after.armed) fire_after(w, 200, NULL);
}

/* The request is allowed: in authz mode 200 with the identity headers (and the policy's
 * allow headers, if any); in proxy mode it goes to the upstream with them. The packed
 * identity was validated when it was cached; it is checked again here because a
 * malformed one must never become an allow. */
static void answer_allowed(worker *w, struct evhttp_request *req, const struct timespec *started,
                           const unsigned char *packed, size_t packed_len, const policy_decision *allow)
{
    identity_text id;
    int text_rc = identity_text_from(packed, packed_len, &id);
    if (text_rc == -2) {
        /* Authenticated and allowed, but X-Remote-Groups could not say who it is: a group
         * "dev|system:masters" must never read as the group system:masters. */
        log_debug("identity has a group with '|' or an empty group; answering 403", NULL);
        reply_forbidden(w, req, started, "a group name cannot be sent in X-Remote-Groups",
                        strlen("a group name cannot be sent in X-Remote-Groups"));
        return;
    }
    if (text_rc != 0) {
        log_error("cached identity is malformed; failing closed", NULL);
        reply(w, req, started, 500, "Internal Server Error", "internal error");
        return;
    }
    if (w->upstream) {
        forward_allowed(w, req, started, &id, allow);
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    if (allow)
        for (size_t i = 0; i < allow->n_headers; i++)
            evhttp_add_header(out, allow->header_names[i], allow->header_values[i]);
    evhttp_add_header(out, "X-Remote-User", id.user);
    evhttp_add_header(out, "X-Remote-Uid", id.uid);
    evhttp_add_header(out, "X-Remote-Groups", id.groups);
    reply(w, req, started, 200, "OK", NULL);
}

static void reply_forbidden(worker *w, struct evhttp_request *req, const struct timespec *started, const char *reason,
                            size_t reason_len)
{
    char body[320];
    snprintf(body, sizeof(body), "forbidden: %.*s", (int)(reason_len > 256 ? 256 : reason_len), reason);
    if (w->after.armed) {
        w->after.outcome.reason = reason;
        w->after.outcome.reason_len = reason_len > 256 ? 256 : reason_len;
    }
    reply(w, req, started, 403, "Forbidden", body);
}

/* A denied SubjectAccessReview verdict as cached: its reason follows the identity. */
static void reply_forbidden_cached(worker *w, struct evhttp_request *req, const struct timespec *started,
                                   const unsigned char *value, size_t value_len)
{
    const unsigned char *identity;
    size_t identity_len, reason_len;
    const char *reason;
    if (sar_cache_value_unpack(value, value_len, &identity, &identity_len, &reason, &reason_len) != 0) {
        reason = "denied";
        reason_len = strlen(reason);
    }
    reply_forbidden(w, req, started, reason, reason_len);
}

static void reply_policy_error(worker *w, struct evhttp_request *req, const struct timespec *started, const char *hook,
                               const char *message)
{
    metric_add(&w->metrics.policy_errors, 1);
    log_warn("policy error; answering 500", "hook", hook, "error", message, NULL);
    reply(w, req, started, 500, "Internal Server Error", "policy error");
}

/* ---- what the policy sees of a request ---------------------------------------------- */

/* Storage for a policy_request's strings that are not header values. */
typedef struct request_text {
    char uri[URI_MAX];
    char host[256];
    char client_ip[64];
} request_text;

/* What the policy judges, described once per request: pr points into text, so the pair
 * is never copied. */
typedef struct described_request {
    policy_request pr;
    request_text text;
} described_request;

/* Why describe_request refused a request: the status and the body's reason. */
typedef enum {
    DESCRIBED = 0,
    DESCRIBE_TOO_LONG,  /* 414 */
    DESCRIBE_MALFORMED, /* 400: a malformed target or method */
    DESCRIBE_TRAVERSAL, /* 403: a path another server could read as another path */
    DESCRIBE_FORWARDED, /* 400: forwarded headers of another family, missing or repeated */
} describe_result;

/* The proxy headers describe_request knows, found in one pass over the headers. Each of
 * the family headers must appear at most once: a second one is a client's addition. */
typedef struct forwarded_headers {
    const char *forwarded_uri, *forwarded_method, *forwarded_host;
    const char *original_uri, *original_url, *original_method;
    const char *host;
    const char *repeated; /* the name of a family header seen twice, or NULL */
    bool forwarded_host_repeated;
} forwarded_headers;

static void scan_forwarded_headers(const struct evkeyvalq *headers, forwarded_headers *f)
{
    memset(f, 0, sizeof(*f));
    const struct evkeyval *kv;
    TAILQ_FOREACH(kv, headers, next) {
        const char *k = kv->key;
        /* Most headers are told apart by their length alone. */
#define TAKE(field, name)                                                                                              \
    if (strcasecmp(k, name) == 0) {                                                                                    \
        if (f->field && !f->repeated) f->repeated = name;                                                              \
        f->field = f->field ? f->field : kv->value;                                                                    \
    }
        switch (strlen(k)) {
        case 4: TAKE(host, "Host"); break;
        case 14:
            TAKE(original_uri, "X-Original-URI")
            else TAKE(original_url, "X-Original-URL");
            break;
        case 15: TAKE(forwarded_uri, "X-Forwarded-Uri"); break;
        case 16:
            if (strcasecmp(k, "X-Forwarded-Host") == 0) {
                f->forwarded_host_repeated |= f->forwarded_host != NULL;
                if (!f->forwarded_host) f->forwarded_host = kv->value;
            }
            break;
        case 17: TAKE(original_method, "X-Original-Method"); break;
        case 18: TAKE(forwarded_method, "X-Forwarded-Method"); break;
        default: break;
        }
#undef TAKE
    }
}

/* The first header of list (name/value pairs, NULL-ended) that is present, or NULL. */
static const char *first_present(const char *const *list)
{
    for (; list[0]; list += 2)
        if (list[1]) return list[0];
    return NULL;
}

/* Fills pr from req: the original method, URI and host as the proxy in front reports
 * them — exactly one family of headers, the one --forwarded-headers names (see config.h)
 * — else the request itself (Envoy ext_authz forwards the client's method and path; in
 * proxy mode it is what goes upstream, and the family headers are the client's own, so
 * they are ignored here and stripped before forwarding). A request that carries another
 * family's headers, lacks the named family's, or repeats one is refused: the client must
 * never choose what the policy judges, and a proxy that does not send what the operator
 * said is a misconfiguration to fail closed on. The target, wherever it comes from, must
 * pass request_target_check. *why: the reason for a refusal. */
static describe_result describe_request(const worker *w, struct evhttp_request *req, policy_request *pr,
                                        request_text *text, const char **why)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    forwarded_headers f;
    scan_forwarded_headers(h, &f);
    const char *method = NULL, *uri = NULL, *host = NULL;
    size_t uri_len = 0, host_len = 0;
    *why = NULL;
    /* X-Forwarded-Host only matters (and is only refused twice) where it is read. */
    bool reads_forwarded_host = w->forwarded_mode == FORWARDED_NGINX || w->forwarded_mode == FORWARDED_TRAEFIK;
    if (w->forwarded_mode != FORWARDED_PROXY && (f.repeated || (reads_forwarded_host && f.forwarded_host_repeated))) {
        *why = "a forwarded header is repeated";
        return DESCRIBE_FORWARDED;
    }
    const char *foreign = NULL, *missing = NULL;
    switch (w->forwarded_mode) {
    case FORWARDED_PROXY: break;
    case FORWARDED_NONE: {
        const char *const other[] = {"X-Original-URI",
                                     f.original_uri,
                                     "X-Original-URL",
                                     f.original_url,
                                     "X-Original-Method",
                                     f.original_method,
                                     "X-Forwarded-Uri",
                                     f.forwarded_uri,
                                     "X-Forwarded-Method",
                                     f.forwarded_method,
                                     NULL,
                                     NULL};
        foreign = first_present(other);
        break;
    }
    case FORWARDED_NGINX: {
        const char *const other[] = {"X-Original-URL",
                                     f.original_url,
                                     "X-Forwarded-Uri",
                                     f.forwarded_uri,
                                     "X-Forwarded-Method",
                                     f.forwarded_method,
                                     NULL,
                                     NULL};
        foreign = first_present(other);
        missing = !f.original_uri ? "X-Original-URI" : !f.original_method ? "X-Original-Method" : NULL;
        method = f.original_method;
        uri = f.original_uri;
        host = f.forwarded_host;
        break;
    }
    case FORWARDED_INGRESS_NGINX: {
        const char *const other[] = {
            "X-Forwarded-Uri", f.forwarded_uri, "X-Forwarded-Method", f.forwarded_method, NULL, NULL};
        foreign = first_present(other);
        missing = !f.original_url ? "X-Original-URL" : !f.original_method ? "X-Original-Method" : NULL;
        if (!foreign && !missing) {
            if (request_url_split(f.original_url, strlen(f.original_url), &host, &host_len, &uri, &uri_len) != 0) {
                *why = "X-Original-URL is not an absolute http(s) URL";
                return DESCRIBE_FORWARDED;
            }
            /* ingress-nginx sets X-Original-URI too when auth-method is annotated; else a
             * client's X-Original-URI passes through: only the same target is accepted. */
            if (f.original_uri && (strlen(f.original_uri) != uri_len || memcmp(f.original_uri, uri, uri_len) != 0)) {
                *why = "X-Original-URI differs from X-Original-URL";
                return DESCRIBE_FORWARDED;
            }
        }
        method = f.original_method;
        break;
    }
    case FORWARDED_TRAEFIK: {
        const char *const other[] = {"X-Original-URI",
                                     f.original_uri,
                                     "X-Original-URL",
                                     f.original_url,
                                     "X-Original-Method",
                                     f.original_method,
                                     NULL,
                                     NULL};
        foreign = first_present(other);
        missing = !f.forwarded_uri      ? "X-Forwarded-Uri"
                  : !f.forwarded_method ? "X-Forwarded-Method"
                  : !f.forwarded_host   ? "X-Forwarded-Host"
                                        : NULL;
        method = f.forwarded_method;
        uri = f.forwarded_uri;
        host = f.forwarded_host;
        break;
    }
    }
    if (foreign) {
        *why = foreign; /* the header's name: "forwarded header not sent by the configured proxy" */
        return DESCRIBE_FORWARDED;
    }
    if (missing) {
        *why = missing;
        return DESCRIBE_FORWARDED;
    }
    if (method && !request_method_valid(method, strlen(method))) {
        *why = "malformed forwarded method";
        return DESCRIBE_MALFORMED;
    }
    if (!uri) uri = evhttp_request_get_uri(req);
    if (!uri) {
        *why = "no request target";
        return DESCRIBE_MALFORMED;
    }
    if (!uri_len) uri_len = strlen(uri);
    if (uri_len >= sizeof(text->uri)) {
        *why = "request URI too long";
        return DESCRIBE_TOO_LONG;
    }
    switch (request_target_check(uri, uri_len, why)) {
    case TARGET_OK: break;
    case TARGET_MALFORMED: return DESCRIBE_MALFORMED;
    case TARGET_TRAVERSAL: return DESCRIBE_TRAVERSAL;
    }
    memcpy(text->uri, uri, uri_len);
    text->uri[uri_len] = '\0';
    char *q = strchr(text->uri, '?');
    if (q) *q++ = '\0';
    if (!host) host = f.host;
    if (host && !host_len) host_len = strlen(host);
    if (host_len >= sizeof(text->host)) {
        *why = "host too long";
        return DESCRIBE_MALFORMED;
    }
    if (host) memcpy(text->host, host, host_len);
    text->host[host_len] = '\0';
    /* The Host field was checked with the framing; a forwarded host gets the same check. */
    if (!http_strict_host_valid(text->host)) {
        *why = "malformed forwarded host";
        return DESCRIBE_MALFORMED;
    }
    text->client_ip[0] = '\0';
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    if (conn) {
        char *addr = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(conn, &addr, &port);
        size_t addr_len = addr ? strnlen(addr, sizeof(text->client_ip)) : 0;
        if (addr && addr_len < sizeof(text->client_ip)) memcpy(text->client_ip, addr, addr_len + 1);
    }
    pr->method = method ? method : method_name(evhttp_request_get_command(req));
    pr->path = text->uri;
    pr->query = q ? q : "";
    pr->host = text->host;
    pr->client_ip = text->client_ip;
    pr->headers = h;
    return DESCRIBED;
}

/* Answers a request describe_request refused; exactly one reply. */
static void reply_undescribable(worker *w, struct evhttp_request *req, const struct timespec *started,
                                describe_result r, const char *why)
{
    char body[160];
    switch (r) {
    case DESCRIBED: break;
    case DESCRIBE_TOO_LONG: reply(w, req, started, 414, "URI Too Long", "request URI too long"); return;
    case DESCRIBE_MALFORMED:
        snprintf(body, sizeof(body), "bad request: %s", why ? why : "malformed request");
        reply(w, req, started, 400, "Bad Request", body);
        return;
    case DESCRIBE_TRAVERSAL:
        reply_forbidden(w, req, started, why ? why : "path is not normalized",
                        strlen(why ? why : "path is not normalized"));
        return;
    case DESCRIBE_FORWARDED:
        /* The proxy in front is not the one --forwarded-headers names, or a client added
         * headers it passes through: logged (behind nginx the body is dropped), the
         * first time and then once per 1000, so a hostile client cannot flood the log. */
        if (w->forwarded_refusals++ % 1000 == 0) {
            char count[24];
            snprintf(count, sizeof(count), "%llu", (unsigned long long)w->forwarded_refusals);
            log_warn("request refused: its forwarded headers do not match --forwarded-headers", "mode",
                     w->cfg->forwarded_headers, "detail", why, "refused_so_far", count, NULL);
        }
        snprintf(body, sizeof(body), "bad request: forwarded headers do not match --forwarded-headers %s (%s)",
                 w->cfg->forwarded_headers, why ? why : "");
        reply(w, req, started, 400, "Bad Request", body);
        return;
    }
}

/* ---- the authz request path -------------------------------------------------------- */

static void sar_ask(worker *w, struct evhttp_request *req, const struct timespec *started, const unsigned char *packed,
                    size_t packed_len, const identity_view *view, const sar_attributes *attrs);

/* An authenticated identity: let the policy decide (or allow, with --policy none).
 * described: the request as authz_handle described it, when this runs in the same turn;
 * NULL after a review (the request is described again: same input, same answer).
 * token_cached: the TokenReview verdict came from the cache (1) or a review (0). */
static void authorize_identity(worker *w, struct evhttp_request *req, const struct timespec *started,
                               const unsigned char *packed, size_t packed_len, const described_request *described,
                               int token_cached)
{
    if (w->access_log) {
        w->note.identity = packed;
        w->note.identity_len = packed_len;
    }
    if (!w->policy) {
        answer_allowed(w, req, started, packed, packed_len, NULL);
        return;
    }
    identity_view view;
    if (identity_view_parse(packed, packed_len, &view) != 0) {
        reply(w, req, started, 500, "Internal Server Error", "internal error");
        return;
    }
    described_request again;
    if (!described) {
        const char *why;
        describe_result result = describe_request(w, req, &again.pr, &again.text, &why);
        if (result != DESCRIBED) {
            reply_undescribable(w, req, started, result, why);
            return;
        }
        described = &again;
    }
    const policy_request *pr = &described->pr;
    if (w->access_log) {
        w->note.method = pr->method;
        w->note.path = pr->path;
    }
    /* One decision buffer per loop, reused: it is used and done with before this returns. */
    policy_decision *d = &w->decision;
    policy_authorize(w->policy, pr, &view, d);
    if (d->kind != POLICY_SAR && w->access_log) w->note.source = DECISION_POLICY;
    arm_after(w, d->kind == POLICY_SAR ? POLICY_OUTCOME_SAR : POLICY_OUTCOME_POLICY, token_cached, true, pr, &view);
    switch (d->kind) {
    case POLICY_ALLOW: answer_allowed(w, req, started, packed, packed_len, d); break;
    case POLICY_DENY:
        /* Behind nginx the 403 body is dropped: the reason is only visible here. */
        log_debug("policy denied", "method", pr->method, "path", pr->path, "reason", d->message, NULL);
        reply_forbidden(w, req, started, d->message, strlen(d->message));
        break;
    case POLICY_ERROR: reply_policy_error(w, req, started, "authorize", d->message); break;
    case POLICY_SAR: sar_ask(w, req, started, packed, packed_len, &view, &d->sar); break;
    }
    w->after.armed = false; /* a SubjectAccessReview on its way: on_sar_done arms it again */
}

static void authz_request_free(authz_request *ar)
{
    if (ar->prev)
        ar->prev->next = ar->next;
    else
        ar->w->waiting = ar->next;
    if (ar->next) ar->next->prev = ar->prev;
    ar->w->requests_waiting--;
    OPENSSL_cleanse(ar->identity, ar->identity_len);
    free(ar);
}

static void on_tokenreview_done(const review_outcome *outcome, void *arg)
{
    authz_request *ar = arg;
    note_begin(ar->w, DECISION_TOKENREVIEW, 0);
    switch (outcome->verdict) {
    case REVIEW_POSITIVE:
        authorize_identity(ar->w, ar->req, &ar->started, outcome->value, outcome->value_len, NULL, 0);
        break;
    case REVIEW_NEGATIVE: reply_unauthorized(ar->w, ar->req, &ar->started, "token not authenticated"); break;
    case REVIEW_ERROR:
        if (ar->identity_len) {
            /* --stale-if-error: the API server failed and this token had a positive verdict
             * that expired less than the window ago. Opt-in; counted and logged. */
            metric_add(&ar->w->stale_served, 1);
            note_begin(ar->w, DECISION_CACHE, 1);
            log_warn("API server failing; served a stale verdict", "token_id", ar->token_id, "reason",
                     api_error_name(outcome->error), NULL);
            authorize_identity(ar->w, ar->req, &ar->started, ar->identity, ar->identity_len, NULL, 1);
            break;
        }
        reply_unavailable(ar->w, ar->req, &ar->started, outcome->retry_after_s,
                          outcome->error == API_ERROR_THROTTLED ? "API server throttled the review"
                                                                : "token review unavailable");
        break;
    }
    authz_request_free(ar);
}

static void on_sar_done(const review_outcome *outcome, void *arg)
{
    authz_request *ar = arg;
    note_begin(ar->w, DECISION_SUBJECTACCESSREVIEW, ar->token_cache_hit);
    if (ar->w->access_log) {
        ar->w->note.identity = ar->identity;
        ar->w->note.identity_len = ar->identity_len;
    }
    /* after() hears the SubjectAccessReview's verdict: the request and identity it judged
     * are described again (the same answer as when authorize ran). */
    policy_request pr;
    request_text text;
    identity_view view;
    const char *why;
    if (ar->w->policy && policy_has_after(ar->w->policy) &&
        identity_view_parse(ar->identity, ar->identity_len, &view) == 0 &&
        describe_request(ar->w, ar->req, &pr, &text, &why) == DESCRIBED)
        arm_after(ar->w, POLICY_OUTCOME_SAR, ar->token_cached, false, &pr, &view);
    switch (outcome->verdict) {
    case REVIEW_POSITIVE: answer_allowed(ar->w, ar->req, &ar->started, ar->identity, ar->identity_len, NULL); break;
    case REVIEW_NEGATIVE:
        reply_forbidden_cached(ar->w, ar->req, &ar->started, outcome->value, outcome->value_len);
        break;
    case REVIEW_ERROR:
        reply_unavailable(ar->w, ar->req, &ar->started, outcome->retry_after_s,
                          outcome->error == API_ERROR_THROTTLED ? "API server throttled the review"
                                                                : "access review unavailable");
        break;
    }
    ar->w->after.armed = false;
    authz_request_free(ar);
}

static authz_request *authz_request_new(worker *w, struct evhttp_request *req, const struct timespec *started,
                                        review_done_fn done, const unsigned char *identity, size_t identity_len)
{
    authz_request *ar = malloc(sizeof(*ar) + identity_len);
    if (!ar) return NULL;
    memset(ar, 0, sizeof(*ar));
    ar->w = w;
    ar->req = req;
    ar->started = *started;
    ar->waiter.done = done;
    ar->waiter.arg = ar;
    ar->identity_len = identity_len;
    if (identity_len) memcpy(ar->identity, identity, identity_len);
    ar->next = w->waiting;
    if (w->waiting) w->waiting->prev = ar;
    w->waiting = ar;
    w->requests_waiting++;
    return ar;
}

/* ---- flows: who a review is for, for the review queue's fairness ---------------------- */

#define FLOW_FNV_OFFSET 1469598103934665603ULL
#define FLOW_FNV_PRIME 1099511628211ULL

static uint64_t flow_mix(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * FLOW_FNV_PRIME;
    return h;
}

/* Shaped like a JWT (three non-empty dot-separated segments), as every ServiceAccount
 * token is; says nothing about validity, only which flow a review goes to. */
static bool jwt_shaped(const char *token, size_t len)
{
    const char *dot1 = memchr(token, '.', len);
    if (!dot1 || dot1 == token) return false;
    const char *rest = dot1 + 1;
    const char *dot2 = memchr(rest, '.', len - (size_t)(rest - token));
    return dot2 && dot2 > rest && dot2 + 1 < token + len && !memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token));
}

/* A TokenReview's flow: the connection's source address, and whether the token is shaped
 * like a ServiceAccount token — so a flood of unknown tokens from one source shares one
 * flow, and a flood of strings that cannot be tokens does not share the flow of real new
 * tokens from the same source (a proxy in front). See docs/SECURITY.md. */
static uint64_t tokenreview_flow(struct evhttp_request *req, const char *token, size_t token_len)
{
    uint64_t h = flow_mix(FLOW_FNV_OFFSET, "tokenreview", 11);
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    char *addr = NULL;
    ev_uint16_t port = 0;
    if (conn) evhttp_connection_get_peer(conn, &addr, &port);
    if (addr) h = flow_mix(h, addr, strnlen(addr, 64));
    unsigned char shaped = jwt_shaped(token, token_len);
    return flow_mix(h, &shaped, 1);
}

/* SHA-256 of the packed identity, from the worker's memo when it saw this identity last. */
static int memo_identity_digest(worker *w, const unsigned char *packed, size_t len,
                                unsigned char out[IDENTITY_DIGEST_BYTES])
{
    if (len == 0 || len > DIGEST_MEMO_IDENTITY_MAX) return identity_digest(packed, len, out);
    uint64_t h = 1469598103934665603ULL ^ len; /* FNV-1a over a sample: picks a slot only */
    for (size_t i = 0; i < len; i += 1 + len / 32) h = (h ^ packed[i]) * 1099511628211ULL;
    digest_memo_slot *slot = &w->digest_memo[h % DIGEST_MEMO_SLOTS];
    if (slot->len == len && memcmp(slot->identity, packed, len) == 0) {
        memcpy(out, slot->digest, IDENTITY_DIGEST_BYTES);
        return 0;
    }
    if (identity_digest(packed, len, out) != 0) return -1;
    slot->len = len;
    memcpy(slot->identity, packed, len);
    memcpy(slot->digest, out, IDENTITY_DIGEST_BYTES);
    return 0;
}

/* Encodes digest and attrs into out: digest, the resource kind, then per attribute a
 * presence byte and, when present, be32(length) and the bytes. Returns the length, or 0
 * when it does not fit (the key is then computed without the memo). */
static size_t sar_key_material(const unsigned char digest[IDENTITY_DIGEST_BYTES], const sar_attributes *attrs,
                               unsigned char *out, size_t cap)
{
    const char *values[] = {attrs->namespace_, attrs->verb,        attrs->group, attrs->version,
                            attrs->resource,   attrs->subresource, attrs->name,  attrs->path};
    if (cap < IDENTITY_DIGEST_BYTES + 1) return 0;
    memcpy(out, digest, IDENTITY_DIGEST_BYTES);
    size_t n = IDENTITY_DIGEST_BYTES;
    out[n++] = attrs->nonresource ? 'N' : 'R';
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        if (!values[i]) {
            if (n + 1 > cap) return 0;
            out[n++] = 0;
            continue;
        }
        size_t len = strlen(values[i]);
        if (len > cap || n + 5 + len > cap) return 0;
        out[n++] = 1;
        out[n++] = (unsigned char)(len >> 24);
        out[n++] = (unsigned char)(len >> 16);
        out[n++] = (unsigned char)(len >> 8);
        out[n++] = (unsigned char)len;
        memcpy(out + n, values[i], len);
        n += len;
    }
    return n;
}

/* sar_cache_key, from the worker's memo when it asked this question for this identity last. */
static int memo_sar_cache_key(worker *w, const unsigned char digest[IDENTITY_DIGEST_BYTES], const sar_attributes *attrs,
                              cache_key *out)
{
    unsigned char material[SAR_KEY_MEMO_MATERIAL_MAX];
    size_t len = sar_key_material(digest, attrs, material, sizeof(material));
    if (len == 0) return sar_cache_key(w->keyer, digest, attrs, out);
    /* The slot: a few digest bytes (already uniform) mixed with a sample of the rest. */
    uint64_t h = 1469598103934665603ULL ^ len;
    for (size_t i = 0; i < len; i += 1 + len / 24) h = (h ^ material[i]) * 1099511628211ULL;
    sar_key_memo_slot *slot = &w->sar_key_memo[h % SAR_KEY_MEMO_SLOTS];
    if (slot->len == len && memcmp(slot->material, material, len) == 0) {
        *out = slot->key;
        return 0;
    }
    if (sar_cache_key(w->keyer, digest, attrs, out) != 0) return -1;
    slot->len = len;
    memcpy(slot->material, material, len);
    slot->key = *out;
    return 0;
}

/* The whole request's deadline on the review engine's clock (CLOCK_MONOTONIC ms): its start
 * plus --review-timeout, shared by its TokenReview and its SubjectAccessReview. */
static int64_t request_deadline_ms(const worker *w, const struct timespec *started)
{
    return (int64_t)started->tv_sec * 1000 + started->tv_nsec / 1000000 + w->cfg->review_timeout_ms;
}

/* The policy asked a SubjectAccessReview: answer from the cache or wait for one. */
static void sar_ask(worker *w, struct evhttp_request *req, const struct timespec *started, const unsigned char *packed,
                    size_t packed_len, const identity_view *view, const sar_attributes *attrs)
{
    cache_key key;
    unsigned char digest[IDENTITY_DIGEST_BYTES];
    if (memo_identity_digest(w, packed, packed_len, digest) != 0 || memo_sar_cache_key(w, digest, attrs, &key) != 0) {
        reply(w, req, started, 500, "Internal Server Error", "internal error");
        return;
    }
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t value_len = 0;
    review_metrics *rm = &w->metrics.subjectaccessreview;
    switch (token_cache_lookup(w->sar_cache, &key, monotonic_ms(), value, sizeof(value), &value_len, NULL)) {
    case TOKEN_CACHE_HIT_POSITIVE:
        metric_add(&rm->cache_hits, 1);
        if (w->access_log) w->note.source = DECISION_CACHE;
        w->after.outcome.sar_cached = 1;
        answer_allowed(w, req, started, packed, packed_len, NULL);
        return;
    case TOKEN_CACHE_HIT_NEGATIVE:
        metric_add(&rm->cache_hits, 1);
        if (w->access_log) w->note.source = DECISION_CACHE;
        w->after.outcome.sar_cached = 1;
        reply_forbidden_cached(w, req, started, value, value_len);
        return;
    case TOKEN_CACHE_STALE_POSITIVE: /* not asked for: lookup without a stale window */
    case TOKEN_CACHE_MISS: metric_add(&rm->cache_misses, 1); break;
    }
    authz_request *ar = authz_request_new(w, req, started, on_sar_done, packed, packed_len);
    if (!ar) {
        reply_unavailable(w, req, started, 1, "out of memory");
        return;
    }
    ar->token_cache_hit = w->note.cache_hit;
    ar->token_cached = w->after.armed ? w->after.outcome.token_cached : 0;
    review_request rr = {.key = key, .deadline_ms = request_deadline_ms(w, started)};
    /* A SubjectAccessReview's flow is the identity asking: one caller spraying distinct
     * requests (one review each) takes turns with everyone else. */
    rr.flow = flow_mix(flow_mix(FLOW_FNV_OFFSET, "sar", 3), digest, sizeof(digest));
    rr.positive_ttl_ms = rr.positive_ttl_cap_ms = w->cfg->sar_allowed_ttl_ms;
    rr.negative_ttl_ms = w->cfg->sar_denied_ttl_ms;
    sar_parse_arg *identity = malloc(sizeof(*identity) + packed_len);
    if (!identity) {
        authz_request_free(ar);
        reply_unavailable(w, req, started, 1, "out of memory");
        return;
    }
    identity->identity_len = packed_len;
    memcpy(identity->identity, packed, packed_len);
    rr.parse_arg = identity;
    rr.parse_arg_free = free;
    cache_key_id(&key, rr.token_id);
    rr.body = sar_request_body(view, attrs, &rr.body_len);
    if (!rr.body) {
        authz_request_free(ar);
        reply_policy_error(w, req, started, "authorize", "the SubjectAccessReview could not be encoded");
        return;
    }
    send_review(w, ar, REVIEW_KIND_SAR, &rr);
}

/* Returns the only Authorization header's value, NULL if there is none, and sets
 * *several when there is more than one (ambiguous: refused). */
static const char *single_authorization(struct evkeyvalq *headers, bool *several)
{
    const char *value = NULL;
    *several = false;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, headers, next) {
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
static size_t current_audiences(const worker *w, const char *const **out)
{
    size_t n = w->policy ? policy_audiences(w->policy, out) : 0;
    if (n) return n;
    *out = w->cfg->audiences;
    return w->cfg->n_audiences;
}

/* No usable token: 401, unless the policy's anonymous(req) lets the request through
 * (answered 200, or forwarded in proxy mode, without identity headers). described: the
 * request as authz_handle described it (the decision note points into it until the reply). */
static void handle_no_token(worker *w, struct evhttp_request *req, const struct timespec *started, const char *why,
                            const described_request *described)
{
    note_begin(w, DECISION_ANONYMOUS, -1);
    if (w->policy) {
        const policy_request *pr = &described->pr;
        if (w->access_log) {
            w->note.method = pr->method;
            w->note.path = pr->path;
        }
        char err[512];
        int rc = policy_anonymous(w->policy, pr, err, sizeof(err));
        /* after() only when the policy's anonymous() judged the request */
        if (policy_has_anonymous(w->policy)) arm_after(w, POLICY_OUTCOME_ANONYMOUS, -1, false, pr, NULL);
        if (rc < 0)
            reply_policy_error(w, req, started, "anonymous", err);
        else if (rc == 1 && w->upstream)
            forward_allowed(w, req, started, NULL, NULL);
        else if (rc == 1)
            reply(w, req, started, 200, "OK", NULL);
        else
            reply_unauthorized(w, req, started, why);
        w->after.armed = false;
        return;
    }
    reply_unauthorized(w, req, started, why);
}

/* The TokenReview to send for token: its body, what the parser needs, its TTL bounds. */
static int tokenreview_request_new(worker *w, const char *token, size_t token_len, const char *const *audiences,
                                   size_t n_audiences, const cache_key *key, review_request *rr)
{
    const config *cfg = w->cfg;
    memset(rr, 0, sizeof(*rr));
    rr->key = *key;
    positive_ttls(cfg, token, token_len, &rr->positive_ttl_ms, &rr->positive_ttl_cap_ms);
    rr->negative_ttl_ms =
        cfg->cache_negative_ttl_ms < cfg->cache_max_ttl_ms ? cfg->cache_negative_ttl_ms : cfg->cache_max_ttl_ms;
    cache_key_id(key, rr->token_id);
    rr->parse_arg = tokenreview_parse_arg_new(audiences, n_audiences);
    rr->parse_arg_free = free;
    rr->body = rr->parse_arg ? tokenreview_request_body(token, token_len, audiences, n_audiences, &rr->body_len) : NULL;
    if (!rr->body) {
        free(rr->parse_arg);
        return -1;
    }
    return 0;
}

/* Hands a review to the control thread; its outcome comes back to ar->waiter on this
 * worker (worker_deliver). Takes rr's body and parse_arg in every case. */
static void send_review(worker *w, authz_request *ar, review_kind_id which, review_request *rr)
{
    gateway_mail *m = calloc(1, sizeof(*m));
    if (!m) {
        OPENSSL_cleanse(rr->body, rr->body_len);
        free(rr->body);
        if (rr->parse_arg_free) rr->parse_arg_free(rr->parse_arg);
        review_outcome outcome = {
            .verdict = REVIEW_ERROR, .error = API_ERROR_NETWORK, .retry_after_s = 1, .reason = "out of memory"};
        ar->waiter.done(&outcome, ar);
        return;
    }
    m->kind = MAIL_REVIEW;
    m->review = which;
    m->from = w;
    m->request = ar;
    m->rr = *rr;
    mailbox_post(w->shared.control, &m->link);
}

/* Refresh-ahead: asks the control thread for a background review of a cached token. Best
 * effort: without memory it is simply not refreshed (the entry keeps its expiry). */
static void send_refresh(worker *w, const char *token, size_t token_len, const char *const *audiences,
                         size_t n_audiences, const cache_key *key)
{
    gateway_mail *m = calloc(1, sizeof(*m));
    if (!m) return;
    if (tokenreview_request_new(w, token, token_len, audiences, n_audiences, key, &m->rr) != 0) {
        free(m);
        return;
    }
    m->kind = MAIL_REFRESH;
    m->review = REVIEW_KIND_TOKENREVIEW;
    m->from = w;
    mailbox_post(w->shared.control, &m->link);
}

static void authz_handle(struct evhttp_request *req, void *arg)
{
    worker *w = arg;
    const config *cfg = w->cfg;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    bool nul_in_head = conn_guard_request_has_nul(w->guards, evhttp_request_get_connection(req));
    conn_guard_request_read(w->guards, evhttp_request_get_connection(req));
    note_begin(w, DECISION_REQUEST, -1);

    size_t n_headers = 0;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) n_headers++;
    if (n_headers > cfg->max_header_count) {
        reply(w, req, &started, 431, "Request Header Fields Too Large", "too many header fields");
        return;
    }
    const char *framing = nul_in_head ? "NUL byte in the request head" : http_strict_violation(req);
    if (framing) {
        /* Where this request ends is in doubt: answer it and close the connection, so
         * nothing after it is read as another request. */
        char body[128];
        snprintf(body, sizeof(body), "bad request: %s", framing);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        reply(w, req, &started, 400, "Bad Request", body);
        return;
    }
    /* What the policy would judge (and, in proxy mode, what would be forwarded) is
     * checked before any review is spent on it: a malformed target, a traversal, the
     * wrong forwarded headers. evhttp already refuses CONNECT and TRACE (not in the
     * allowed methods). The description serves the policy hooks of this turn too. */
    described_request described;
    {
        const char *why;
        describe_result result = describe_request(w, req, &described.pr, &described.text, &why);
        if (result != DESCRIBED) {
            reply_undescribable(w, req, &started, result, why);
            return;
        }
    }
    bool several = false;
    const char *header = single_authorization(evhttp_request_get_input_headers(req), &several);
    if (several) {
        reply_unauthorized(w, req, &started, "several Authorization headers");
        return;
    }
    const char *token;
    size_t token_len;
    bearer_status bs = bearer_extract(header, cfg->max_token_bytes, &token, &token_len);
    if (bs != BEARER_OK) {
        handle_no_token(w, req, &started, bearer_status_reason(bs), &described);
        return;
    }

    const char *const *audiences;
    size_t n_audiences = current_audiences(w, &audiences);
    cache_key key;
    if (cache_key_for_token(w->keyer, token, token_len, audiences, n_audiences, &key) != 0) {
        reply(w, req, &started, 500, "Internal Server Error", "internal error");
        return;
    }
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t value_len = 0;
    size_t stale_len = 0;
    review_metrics *rm = &w->metrics.tokenreview;
    bool refresh_due = false;
    switch (token_cache_lookup_refresh(w->tokenreview_cache, &key, monotonic_ms(), cfg->stale_if_error_ms, value,
                                       sizeof(value), &value_len, &refresh_due)) {
    case TOKEN_CACHE_HIT_POSITIVE:
        metric_add(&rm->cache_hits, 1);
        note_begin(w, DECISION_CACHE, 1);
        /* Refresh-ahead: this hit is in the last part of the entry's TTL and won the
         * entry's refresh claim (one per entry and retry interval, across workers). */
        if (refresh_due) send_refresh(w, token, token_len, audiences, n_audiences, &key);
        authorize_identity(w, req, &started, value, value_len, &described, 1);
        return;
    case TOKEN_CACHE_HIT_NEGATIVE:
        metric_add(&rm->cache_hits, 1);
        note_begin(w, DECISION_CACHE, 1);
        reply_unauthorized(w, req, &started, "token not authenticated");
        return;
    case TOKEN_CACHE_STALE_POSITIVE:
        stale_len = value_len; /* kept for a fallback if the fresh review fails */
        metric_add(&rm->cache_misses, 1);
        break;
    case TOKEN_CACHE_MISS:
        metric_add(&rm->cache_misses, 1);
        /* --jwt-preverify: a token the API server is certain to refuse (a forged or expired
         * JWT of this cluster's issuer) is refused here, and cached as refused, without a
         * TokenReview. Tokens that pass still go to TokenReview: it stays the authority. */
        if (w->shared.jwks) {
            char why[128];
            if (jwks_source_refuse(w->shared.jwks, token, token_len, audiences, n_audiences, (int64_t)time(NULL), why,
                                   sizeof(why))) {
                int64_t now = monotonic_ms();
                int64_t ttl = cfg->cache_negative_ttl_ms < cfg->cache_max_ttl_ms ? cfg->cache_negative_ttl_ms
                                                                                 : cfg->cache_max_ttl_ms;
                if (ttl > 0) token_cache_insert(w->tokenreview_cache, &key, true, NULL, 0, now + ttl, now);
                note_begin(w, DECISION_JWT_PREVERIFY, 0);
                reply_unauthorized(w, req, &started, why);
                return;
            }
        }
        break;
    }

    authz_request *ar = authz_request_new(w, req, &started, on_tokenreview_done, value, stale_len);
    if (!ar) {
        reply_unavailable(w, req, &started, 1, "out of memory");
        return;
    }
    cache_key_id(&key, ar->token_id);

    review_request rr;
    if (tokenreview_request_new(w, token, token_len, audiences, n_audiences, &key, &rr) != 0) {
        authz_request_free(ar);
        reply_unavailable(w, req, &started, 1, "out of memory");
        return;
    }
    rr.deadline_ms = request_deadline_ms(w, &started);
    rr.flow = tokenreview_flow(req, token, token_len);
    send_review(w, ar, REVIEW_KIND_TOKENREVIEW, &rr);
}

/* ---- connections ------------------------------------------------------------------------ */

static void resume_accepting(worker *w)
{
    if (!w->accept_paused || w->shutting_down || !w->bound) return;
    w->accept_paused = false;
    if (accept_backoff_active(w->backoff)) return; /* its timer re-enables the listener */
    struct evconnlistener *l = evhttp_bound_socket_get_listener(w->bound);
    if (l) evconnlistener_enable(l);
}

static void on_connection_closed(struct evhttp_connection *evcon, void *arg)
{
    worker *w = arg;
    conn_guard_detach(w->guards, evcon);
    /* Only counted connections get this callback (adopt_new_connections), so the count is
     * never 0 here; should that invariant ever break, the count saturates instead of
     * wrapping (a wrapped count would disable the listener for good). Only this worker's
     * thread writes the count. */
    size_t open = atomic_load_explicit(&w->connections, memory_order_relaxed);
    if (open > 0) atomic_store_explicit(&w->connections, --open, memory_order_relaxed);
    if (open < w->shared.max_connections) resume_accepting(w);
}

/* Runs once per loop turn that accepted connections, after evhttp set each one up: the
 * bufferevent's callback argument is then its evhttp_connection, which gets our close
 * callback. A connection evhttp already freed in between (only on its own allocation
 * failures) is recognised by its cleared callbacks; the extra reference taken in
 * new_connection_bufferevent keeps its memory readable until here. */
static void adopt_new_connections(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker *w = arg;
    for (size_t i = 0; i < w->n_adopt; i++) {
        struct bufferevent *bev = w->adopt[i];
        bufferevent_data_cb readcb = NULL;
        void *cbarg = NULL;
        bufferevent_getcb(bev, &readcb, NULL, NULL, &cbarg);
        if (readcb && cbarg) {
            evhttp_connection_set_closecb(cbarg, on_connection_closed, w);
            /* Unguarded, a connection could be held open for ever: fail closed. */
            if (conn_guard_attach(w->guards, cbarg) != 0) shutdown(bufferevent_getfd(bev), SHUT_RDWR);
        } else {
            on_connection_closed(NULL, w);
        }
        bufferevent_decref(bev);
    }
    w->n_adopt = 0;
}

/* evhttp_set_bevcb: called for every accepted connection before evhttp wraps it. Counts
 * it, pauses the listener at this worker's share of --max-connections, and makes the
 * connection's bufferevent (TLS on the current certificate when configured). */
static struct bufferevent *new_connection_bufferevent(struct event_base *base, void *arg)
{
    worker *w = arg;
    struct bufferevent *bev = NULL;
    if (w->shared.tls) {
        pthread_mutex_lock(&w->shared.tls->lock);
        SSL *ssl = SSL_new(w->shared.tls->ctx);
        pthread_mutex_unlock(&w->shared.tls->lock);
        if (ssl) {
            bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                 BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
            if (!bev) SSL_free(ssl);
        }
    } else {
        bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    /* Without a bufferevent of ours (out of memory) evhttp makes its own and the
     * connection goes uncounted (and unguarded): it can only make the limit lax. */
    if (!bev) return bev;
    /* A full batch: every connection in it was accepted earlier in this turn, and evhttp
     * finished setting each up before accepting the next, so they can be adopted now. */
    if (w->n_adopt == ADOPT_BATCH_MAX) adopt_new_connections(-1, 0, w);
    bufferevent_incref(bev);
    w->adopt[w->n_adopt++] = bev;
    event_active(w->adopt_event, EV_TIMEOUT, 0);
    size_t open = atomic_fetch_add_explicit(&w->connections, 1, memory_order_relaxed) + 1;
    if (open >= w->shared.max_connections && !w->accept_paused && w->bound) {
        struct evconnlistener *l = evhttp_bound_socket_get_listener(w->bound);
        if (l) evconnlistener_disable(l);
        w->accept_paused = true;
        if (w->connection_limit_pauses++ == 0 || w->connection_limit_pauses % 1000 == 0)
            log_warn("--max-connections reached: new connections wait in the accept queue", NULL);
    }
    return bev;
}

/* ---- mails from the control thread --------------------------------------------------- */

void gateway_mail_free(gateway_mail *m)
{
    if (!m) return;
    if (m->rr.body) {
        OPENSSL_cleanse(m->rr.body, m->rr.body_len);
        free(m->rr.body);
    }
    if (m->rr.parse_arg && m->rr.parse_arg_free) m->rr.parse_arg_free(m->rr.parse_arg);
    if (m->value) {
        OPENSSL_cleanse(m->value, m->value_len);
        free(m->value);
    }
    policy_source_unref(m->policy);
    free(m);
}

static void stop_accepting(worker *w)
{
    w->shutting_down = true;
    update_refusal_on_headers(w);
    accept_backoff_free(w->backoff); /* before its listener goes */
    w->backoff = NULL;
    if (w->upstream) upstream_set_draining(w->upstream);
    if (w->bound) {
        evhttp_del_accept_socket(w->http, w->bound);
        w->bound = NULL;
    }
}

/* Loads the very bytes the control thread read and validated (never the file again), so
 * every worker runs the same version. */
static void reload_policy(worker *w, policy_source *src)
{
    char err[1024];
    if (!w->policy || !src || policy_host_load_source(w->policy, src, err, sizeof(err)) == 0) {
        update_refusal_on_headers(w);
        return;
    }
    char index[16];
    snprintf(index, sizeof(index), "%zu", w->index);
    log_error("policy reload failed on a worker; it keeps the previous policy", LOG_NUMBER "worker", index, "error",
              err, NULL);
}

static void worker_deliver(mail *link, void *arg)
{
    worker *w = arg;
    gateway_mail *m = (gateway_mail *)link;
    switch (m->kind) {
    case MAIL_REVIEW: {
        authz_request *ar = m->request;
        review_outcome outcome = {.verdict = m->verdict,
                                  .error = m->error,
                                  .retry_after_s = m->retry_after_s,
                                  .value = m->value,
                                  .value_len = m->value_len,
                                  .reason = m->reason};
        ar->waiter.done(&outcome, ar);
        break;
    }
    case MAIL_RELOAD_POLICY: reload_policy(w, m->policy); break;
    case MAIL_STOP_ACCEPTING: stop_accepting(w); break;
    case MAIL_EXIT: event_base_loopexit(w->base, NULL); break;
    case MAIL_REFRESH: break; /* never sent to a worker */
    }
    gateway_mail_free(m);
}

static void discard_mail(mail *link)
{
    gateway_mail_free((gateway_mail *)link);
}

/* ---- life cycle ------------------------------------------------------------------------ */

static int64_t clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    worker *w = arg;
    atomic_store_explicit(&w->heartbeat_ms, clock_ms(), memory_order_relaxed);
}

/* A worker's event loop. With the epoll backend, changes to a connection's events are
 * kept in a change list and applied once per loop turn: evhttp enables and disables
 * reading and writing around every response, and the list folds those into one
 * epoll_ctl per request instead of four (bench/cached_path.sh measures the difference).
 * libevent's caveat for the change list is file descriptors cloned with dup(): a worker
 * never dups the sockets its loop watches (its connections, the mailbox's eventfd). */
static struct event_base *worker_event_base_new(void)
{
    struct event_config *ec = event_config_new();
    if (!ec) return NULL;
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(ec);
    event_config_free(ec);
    return base;
}

worker *worker_new(const worker_shared *shared, size_t index, int listen_fd)
{
    const config *cfg = shared->cfg;
    worker *w = calloc(1, sizeof(*w));
    if (!w) {
        close(listen_fd);
        return NULL;
    }
    w->shared = *shared;
    w->cfg = cfg;
    const char *fh = cfg->forwarded_headers;
    w->forwarded_mode = config_proxy_mode(cfg)             ? FORWARDED_PROXY
                        : strcmp(fh, "traefik") == 0       ? FORWARDED_TRAEFIK
                        : strcmp(fh, "nginx") == 0         ? FORWARDED_NGINX
                        : strcmp(fh, "ingress-nginx") == 0 ? FORWARDED_INGRESS_NGINX
                                                           : FORWARDED_NONE;
    w->index = index;
    w->tokenreview_cache = shared->tokenreview_cache;
    w->sar_cache = shared->sar_cache;
    atomic_init(&w->requests_waiting, 0);
    atomic_init(&w->connections, 0);
    atomic_init(&w->heartbeat_ms, clock_ms());
    atomic_init(&w->loop_left, false);
    w->base = worker_event_base_new();
    if (!w->base) goto fail_fd;
    w->heartbeat_event = event_new(w->base, -1, EV_PERSIST, on_heartbeat, w);
    struct timeval heartbeat_every = {WORKER_HEARTBEAT_MS / 1000, (WORKER_HEARTBEAT_MS % 1000) * 1000};
    if (!w->heartbeat_event || event_add(w->heartbeat_event, &heartbeat_every) != 0) goto fail_fd;
    w->keyer = cache_keyer_clone(shared->keyer);
    w->inbox = mailbox_new(w->base, worker_deliver, w);
    w->adopt_event = event_new(w->base, -1, 0, adopt_new_connections, w);
    w->http = evhttp_new(w->base);
    conn_guard_options guard_options = {
        .header_timeout_ms = cfg->header_timeout_ms,
        .body_timeout_ms = cfg->body_timeout_ms,
        .max_buffered_body = config_proxy_mode(cfg) ? shared->max_buffered_body_bytes : 0, /* authz: 64 KiB each */
        .bound_unauthenticated_body = config_proxy_mode(cfg),
        .max_unauthenticated_body = cfg->max_unauthenticated_body_bytes,
        .max_body = cfg->max_body_bytes,
        .expected_connections = shared->max_connections,
        .refuse = refuse_on_headers,
        .refuse_arg = w,
    };
    w->guards = conn_guard_set_new(w->base, &guard_options);
    if (!w->keyer || !w->inbox || !w->adopt_event || !w->http || !w->guards) goto fail_fd;
    if (config_proxy_mode(cfg)) {
        upstream_options uo = {
            .url = cfg->upstream,
            .ca_file = cfg->upstream_ca,
            .timeout_ms = cfg->upstream_timeout_ms,
            .max_connections = shared->upstream_max_connections,
            .keep_authorization = cfg->upstream_keep_authorization,
            .listener_tls = cfg->tls_cert_file != NULL,
            .client_closecb = on_connection_closed,
            .client_closecb_arg = w,
        };
        w->upstream = upstream_new(w->base, &uo);
        if (!w->upstream) goto fail_fd;
    }
    if (config_policy_enabled(cfg)) {
        policy_limits limits = {.max_instructions = cfg->policy_max_instructions,
                                .max_memory_bytes = cfg->policy_max_memory_bytes,
                                .max_call_ms = (uint32_t)cfg->policy_max_call_ms};
        char err[1024];
        w->policy = policy_host_new(shared->custom, &limits);
        if (!w->policy) goto fail_fd;
        if (!shared->policy || policy_host_load_source(w->policy, shared->policy, err, sizeof(err)) != 0) {
            log_error("policy load failed on a worker", "error", err, NULL);
            goto fail_fd;
        }
    }
    /* authz mode: auth_request / ext_authz / forwardAuth send any method, rarely a body.
     * Proxy mode: the same methods (never CONNECT or TRACE) and bodies up to
     * --max-body-bytes, buffered whole by evhttp before the request is authorized. */
    evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(w->http, (ev_ssize_t)(cfg->max_token_bytes + 32768));
    if (w->upstream) {
        evhttp_set_max_body_size(w->http, (ev_ssize_t)cfg->max_body_bytes);
        /* Read (and drop) an oversized body before answering 413, so the client gets the
         * 413 rather than a reset; an upstream answer without Content-Type keeps none. */
        evhttp_set_flags(w->http, EVHTTP_SERVER_LINGERING_CLOSE);
        evhttp_set_default_content_type(w->http, NULL);
    } else {
        evhttp_set_max_body_size(w->http, MAIN_MAX_BODY_BYTES);
    }
    /* evhttp's timeout is an idle one (re-armed by every byte); conn_guard adds the total
     * deadlines for a request's headers and body, and bounds the bodies buffered. */
    struct timeval read_timeout = {cfg->read_timeout_ms / 1000, (cfg->read_timeout_ms % 1000) * 1000};
    evhttp_set_timeout_tv(w->http, &read_timeout);
    evhttp_set_default_content_type(w->http, NULL); /* bodiless answers carry no type (reply()) */
    evhttp_set_gencb(w->http, authz_handle, w);
    evhttp_set_bevcb(w->http, new_connection_bufferevent, w);
    if (shared->access_log) {
        /* Flushed every 200 ms at most late, and whenever the buffer fills. */
        w->access_log = shared->access_log;
        w->access_log_buffer = malloc(sizeof(*w->access_log_buffer));
        w->access_log_timer = event_new(w->base, -1, EV_PERSIST, on_access_log_timer, w);
        struct timeval every = {0, 200000};
        if (!w->access_log_buffer || !w->access_log_timer || event_add(w->access_log_timer, &every) != 0) goto fail_fd;
        access_log_buffer_init(w->access_log_buffer, 0x9e3779b97f4a7c15ULL * (index + 1) ^ (uint64_t)time(NULL));
    }
    w->bound = evhttp_accept_socket_with_handle(w->http, listen_fd);
    if (!w->bound) goto fail_fd;
    update_refusal_on_headers(w);
    return w;
fail_fd:
    if (!w->bound) close(listen_fd);
    worker_free(w);
    return NULL;
}

/* accept_backoff_options.held: the connection limit holds the listener. */
static bool listener_held(void *arg)
{
    worker *w = arg;
    return w->accept_paused || w->shutting_down;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    /* The back-off is registered on the thread that runs the listener (accept_backoff.h).
     * Without it accept() failures would spin: the worker does not serve (fail closed). */
    struct evconnlistener *l = w->bound ? evhttp_bound_socket_get_listener(w->bound) : NULL;
    accept_backoff_options options = {
        .listener_name = "main",
        .pause_ms = ACCEPT_BACKOFF_PAUSE_MS,
        .log_interval_ms = ACCEPT_BACKOFF_LOG_INTERVAL_MS,
        .errors = &w->metrics.accept_errors,
        .backoffs = &w->metrics.accept_backoffs,
        .held = listener_held,
        .held_arg = w,
    };
    atomic_store_explicit(&w->heartbeat_ms, clock_ms(), memory_order_relaxed);
    if (l) w->backoff = accept_backoff_new(w->base, l, w->http, &options);
    if (l && !w->backoff) {
        log_error("out of memory starting a worker; it does not accept connections", NULL);
        stop_accepting(w);
    }
    event_base_dispatch(w->base);
    accept_backoff_free(w->backoff);
    w->backoff = NULL;
    if (w->access_log_buffer && w->access_log_buffer->len) access_log_flush(w->access_log, w->access_log_buffer);
    atomic_store_explicit(&w->loop_left, true, memory_order_release);
    return NULL;
}

int64_t worker_loop_silence_ms(const worker *w, int64_t now_ms)
{
    if (!w->thread_started || atomic_load_explicit(&w->loop_left, memory_order_acquire)) return 0;
    int64_t silence = now_ms - atomic_load_explicit(&w->heartbeat_ms, memory_order_relaxed);
    return silence > WORKER_HEARTBEAT_MS ? silence : 0;
}

bool worker_loop_left(const worker *w)
{
    return !w->thread_started || atomic_load_explicit(&w->loop_left, memory_order_acquire);
}

int worker_start(worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) return -1;
    w->thread_started = true;
    return 0;
}

void worker_post(worker *w, gateway_mail *m)
{
    mailbox_post(w->inbox, &m->link);
}

void worker_join(worker *w)
{
    if (!w->thread_started) return;
    pthread_join(w->thread, NULL);
    w->thread_started = false;
}

void worker_free(worker *w)
{
    if (!w) return;
    /* Connections first: evhttp_free ends proxied requests still running (their close
     * callbacks still find the worker, and must not resume a listener evhttp frees). */
    w->shutting_down = true;
    w->bound = NULL;
    if (w->http) evhttp_free(w->http);
    conn_guard_set_free(w->guards);
    upstream_free(w->upstream);
    /* --shutdown-grace ran out: requests still waiting for a review went with evhttp. */
    while (w->waiting) authz_request_free(w->waiting);
    mailbox_free(w->inbox, discard_mail);
    for (size_t i = 0; i < w->n_adopt; i++) bufferevent_decref(w->adopt[i]);
    if (w->adopt_event) event_free(w->adopt_event);
    if (w->heartbeat_event) event_free(w->heartbeat_event);
    policy_host_free(w->policy);
    cache_keyer_free(w->keyer);
    if (w->access_log_timer) event_free(w->access_log_timer);
    if (w->access_log_buffer && w->access_log_buffer->len) access_log_flush(w->access_log, w->access_log_buffer);
    free(w->access_log_buffer);
    if (w->base) event_base_free(w->base);
    free(w);
}

size_t worker_requests_waiting(const worker *w)
{
    return atomic_load_explicit(&w->requests_waiting, memory_order_relaxed);
}

void worker_add_metrics(const worker *w, gateway_metrics *sum, uint64_t *stale_served, size_t *connections)
{
    metrics_add(sum, &w->metrics);
    conn_guard_stats gs;
    conn_guard_get_stats(w->guards, &gs);
    metric_add(&sum->closed_header_timeout, gs.header_timeouts);
    metric_add(&sum->closed_body_timeout, gs.body_timeouts);
    metric_add(&sum->closed_body_budget, gs.body_budget_closes);
    metric_add(&sum->unauthenticated_bodies, gs.unauthenticated_bodies);
    metric_add(&sum->refused_on_headers, gs.refused_on_headers);
    if (w->access_log_buffer) {
        metric_add(&sum->access_log_written, metric_get(&w->access_log_buffer->written));
        metric_add(&sum->access_log_sampled_out, metric_get(&w->access_log_buffer->sampled_out));
        metric_add(&sum->access_log_dropped, metric_get(&w->access_log_buffer->dropped));
    }
    *stale_served += metric_get(&w->stale_served);
    *connections += atomic_load_explicit(&w->connections, memory_order_relaxed);
}

uint64_t worker_requests_answered(const worker *w)
{
    uint64_t n = 0;
    for (size_t i = 0; i < sizeof(w->metrics.requests_by_code) / sizeof(w->metrics.requests_by_code[0]); i++)
        n += metric_get(&w->metrics.requests_by_code[i]);
    return n;
}
