/* server.c owns the process: the control thread's event loop, the workers (worker.c), and
 * everything they share. The control thread runs the admin listener (admin_endpoints.c),
 * the API client and the review engine (so single-flight, the rate limit, the 429 pause
 * and the circuit breaker see every worker's misses), the readiness probe, signals,
 * policy reloads and graceful shutdown. Workers send it their reviews as mails and get the
 * outcomes back the same way (worker.h). The listening sockets are listener.c's. */
#include "server.h"
#include "admin_endpoints.h"
#include "identity.h"
#include "listener.h"
#include "log.h"
#include "sar.h"
#include "server_internal.h"
#include "tokenreview.h"
#include "util.h"

#include <errno.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define READINESS_PROBE_INTERVAL_S 5
#define READINESS_PROBE_TOKEN "tokengate-readiness-probe"
#define POLICY_WATCH_INTERVAL_S 2
#define CUSTOM_SERIES_PER_METRIC 1000 /* label sets one policy metric may hold */

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
    case TOKENREVIEW_BAD_RESPONSE: out->verdict = REVIEW_ERROR; break;
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
    case SAR_BAD_RESPONSE: out->verdict = REVIEW_ERROR; break;
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
    char *body =
        tokenreview_request_body(READINESS_PROBE_TOKEN, strlen(READINESS_PROBE_TOKEN), audiences, n_audiences, &len);
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

/* Workers whose loop has not turned for more than WORKER_STUCK_MS; *worst gets the
 * index of the longest silent one and *worst_ms its silence. */
size_t server_stuck_workers(const server *srv, size_t *worst, int64_t *worst_ms)
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
    if (m->prev)
        m->prev->next = m->next;
    else
        srv->on_flights = m->next;
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
                                  .error = API_ERROR_NONE,
                                  .value = value,
                                  .value_len = value_len,
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

/* True once every worker has left its event loop (worker_loop_left). */
static bool all_workers_left(const server *srv)
{
    bool all_left = true;
    for (size_t i = 0; i < srv->n_workers; i++) all_left = all_left && worker_loop_left(srv->workers[i]);
    return all_left;
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
    size_t stuck = server_stuck_workers(srv, &worst, &worst_ms);
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
        if (!all_workers_left(srv)) abandon_workers(srv);
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
        if (all_workers_left(srv))
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
    api_client_free(srv->api);        /* first: its calls borrow the flights' bodies */
    jwks_source_free(srv->jwks);      /* after the client: no fetch can complete any more */
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

/* The API client's options: the chosen API server and credential, the review timeout, and
 * observe_api, through which every answer updates readiness. The revocation watch makes
 * its own client from the same options. */
static api_client_options api_client_options_for(server *srv, const apiserver_settings *api)
{
    return (api_client_options){
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
        .timeout_ms = srv->cfg->review_timeout_ms,
        .observe = observe_api,
        .observe_arg = srv,
    };
}

/* What the process needs before any thread or socket: the start time for
 * process_start_time_seconds, SIGPIPE ignored (a closed peer is an error return, not a
 * signal), and the lock of the TLS context the workers share. */
static void prepare_process(server *srv)
{
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    srv->start_time_s = (double)wall.tv_sec + wall.tv_nsec / 1e9;
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&srv->tls.lock, NULL);
    srv->tls_lock_ready = true;
}

/* The control thread's loop and what every worker shares through it: the cache key
 * secret, both caches, the policy metrics, the inbox for review mails, the API client,
 * the JWKS source (--jwt-preverify), the review engine, and the shutdown and readiness
 * probe timers. Returns 0, or -1 (the teardown frees what was made). */
static int create_control_state(server *srv, const api_client_options *ao)
{
    const config *cfg = srv->cfg;
    srv->base = event_base_new();
    if (!srv->base) return -1;
    srv->keyer = cache_keyer_new();
    token_cache_options co = {.max_entries = cfg->cache_max_entries,
                              .refresh_ahead_percent = cfg->cache_refresh_ahead_percent};
    srv->tokenreview_cache = token_cache_new(&co);
    co.refresh_ahead_percent = 0; /* SubjectAccessReviews are asked again on expiry */
    srv->sar_cache = token_cache_new(&co);
    srv->custom = custom_metrics_new(CUSTOM_SERIES_PER_METRIC);
    srv->inbox = mailbox_new(srv->base, control_deliver, srv);
    srv->api = api_client_new(srv->base, ao);
    jwt_preverify_mode preverify = JWT_PREVERIFY_REVIEW_OTHERS;
    jwt_preverify_mode_parse(cfg->jwt_preverify, &preverify); /* validated by config_validate */
    if (srv->api && preverify != JWT_PREVERIFY_OFF) {
        srv->jwks = jwks_source_new(srv->base, srv->api, preverify);
        if (!srv->jwks) return -1;
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
        return -1;
    return 0;
}

/* --policy: the control thread's own policy state (ttl(), /policy, reload checks), the
 * first load, and the --policy-watch timer. Nothing with --policy none. Returns 0 or -1. */
static int start_policy(server *srv)
{
    const config *cfg = srv->cfg;
    if (!config_policy_enabled(cfg)) return 0;
    policy_limits limits = {.max_instructions = cfg->policy_max_instructions,
                            .max_memory_bytes = cfg->policy_max_memory_bytes,
                            .max_call_ms = (uint32_t)cfg->policy_max_call_ms};
    srv->policy_limits = limits;
    srv->policy = policy_host_new(srv->custom, &limits);
    /* No workers yet: this load tells nobody; each worker loads srv->policy_source later. */
    if (!srv->policy || load_policy(srv, "start-up") != 0) return -1;
    if (cfg->policy_watch) {
        stat(cfg->policy, &srv->policy_file_stat);
        srv->policy_watch_timer = event_new(srv->base, -1, EV_PERSIST, on_policy_watch, srv);
        struct timeval every = {POLICY_WATCH_INTERVAL_S, 0};
        if (!srv->policy_watch_timer || evtimer_add(srv->policy_watch_timer, &every) != 0) return -1;
    }
    return 0;
}

/* The two kinds of review the engine runs for the workers (and the admin authentication):
 * where each is cached, counted, parsed and vetted. */
static void define_review_kinds(server *srv)
{
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
}

/* Creates the workers on their listening sockets (each takes its fd). */
static int create_workers(server *srv, int *fds, size_t n)
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

/* What the workers serve with, then the workers themselves (their threads not started
 * yet): the TLS certificate, enough file descriptors, the decision log, and the main
 * listener's sockets, one per worker. Returns 0, or -1 (reason logged). */
static int prepare_workers(server *srv, size_t n_workers)
{
    const config *cfg = srv->cfg;
    if (cfg->tls_cert_file && load_tls(srv, "start-up") != 0) return -1;
    fd_limit_ensure(fd_limit_needed(cfg->max_connections, cfg->admin_max_connections,
                                    config_proxy_mode(cfg) ? cfg->upstream_max_connections : 0, n_workers));
    if (strcmp(cfg->access_log, "off") != 0) {
        char err[512];
        srv->access_log = access_log_open(cfg->access_log, cfg->access_log_sample_allowed, err, sizeof(err));
        if (!srv->access_log) {
            log_error("cannot open the decision log", "error", err, NULL);
            return -1;
        }
    }
    int fds[CONFIG_MAX_WORKERS];
    if (open_main_listeners(cfg->listen, n_workers, fds) != 0 || create_workers(srv, fds, n_workers) != 0) return -1;
    return 0;
}

/* SIGTERM/SIGINT (graceful shutdown), SIGHUP (reload) and SIGUSR1 (reopen the decision
 * log), handled on the control loop. Returns 0 or -1. */
static int add_signal_events(server *srv)
{
    srv->sigterm_event = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    srv->sigint_event = evsignal_new(srv->base, SIGINT, on_signal, srv);
    srv->sighup_event = evsignal_new(srv->base, SIGHUP, on_sighup, srv);
    srv->sigusr1_event = evsignal_new(srv->base, SIGUSR1, on_sigusr1, srv);
    if (!srv->sigterm_event || !srv->sigint_event || !srv->sighup_event || !srv->sigusr1_event ||
        evsignal_add(srv->sigterm_event, NULL) != 0 || evsignal_add(srv->sigint_event, NULL) != 0 ||
        evsignal_add(srv->sighup_event, NULL) != 0 || evsignal_add(srv->sigusr1_event, NULL) != 0)
        return -1;
    return 0;
}

/* Starts every worker's thread with the handled signals blocked, so that they go to the
 * control thread only (the workers inherit this mask). Returns 0, or -1 (logged) when a
 * thread could not be started; the ones that did run. */
static int start_worker_threads(server *srv)
{
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
        return -1;
    }
    return 0;
}

/* --watch-revocations: the watch, with its own API client made from ao (which must
 * outlive it). Returns 0 (also when off), or -1 (logged). */
static int start_revocation_watch(server *srv, const api_client_options *ao)
{
    const config *cfg = srv->cfg;
    if (!cfg->watch_revocations) return 0;
    revocation_watch_options ro = {
        .api = ao, .watch_pods = cfg->watch_pods, .evict = on_revoked, .collect = on_collect, .ctx = srv};
    srv->revocations = revocation_watch_new(srv->base, &ro);
    if (!srv->revocations) {
        log_error("cannot start the revocation watch", NULL);
        return -1;
    }
    return 0;
}

/* Probes the API server at once (readiness) and logs what the gateway runs with. */
static void announce_started(server *srv, const apiserver_settings *api, const char *workers_why)
{
    const config *cfg = srv->cfg;
    struct timeval now = {0, 0};
    evtimer_add(srv->probe_timer, &now);
    char workers[16];
    snprintf(workers, sizeof(workers), "%zu", srv->n_workers);
    log_info("started", "mode", cfg->mode, "apiserver", api->server_url, "apiserver_source",
             apiserver_source_name(api->source), "upstream", cfg->upstream, LOG_NUMBER "workers", workers,
             "workers_from", workers_why, NULL);
}

/* Waits for every worker to leave its loop, then joins them. Normally they all have
 * already (the shutdown tick waited for it); on a start-up failure they get
 * WORKER_EXIT_WAIT_MS, after which the process ends without them. */
static void join_workers(server *srv)
{
    for (int64_t deadline = monotonic_ms() + WORKER_EXIT_WAIT_MS;;) {
        if (all_workers_left(srv)) break;
        if (monotonic_ms() >= deadline) abandon_workers(srv);
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    for (size_t i = 0; i < srv->n_workers; i++) worker_join(srv->workers[i]);
}

int server_run(const config *cfg, const apiserver_settings *api)
{
    server *srv = calloc(1, sizeof(*srv));
    if (!srv) return 1;
    srv->cfg = cfg;
    int rc = 1;
    char workers_why[CONFIG_WORKERS_WHY_MAX]; /* how the worker count was decided, for the start-up log */
    size_t n_workers = config_workers(cfg, workers_why, sizeof(workers_why));
    api_client_options ao = api_client_options_for(srv, api); /* lives as long as the loop runs */
    prepare_process(srv);

    if (create_control_state(srv, &ao) != 0 || start_policy(srv) != 0) goto done;
    define_review_kinds(srv);
    if (prepare_workers(srv, n_workers) != 0 || admin_listener_start(srv) != 0 || add_signal_events(srv) != 0)
        goto done;
    /* From here on threads run: a failure stops them before the teardown. */
    if (start_worker_threads(srv) != 0 || start_revocation_watch(srv, &ao) != 0) {
        stop_now(srv);
        goto join;
    }
    announce_started(srv, api, workers_why);
    event_base_dispatch(srv->base);
    rc = 0;
join:
    join_workers(srv);
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
