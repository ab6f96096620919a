/* The cluster issuer's keys, fetched from the API server: see jwks_source.h. */
#include "jwks_source.h"

#include "log.h"
#include "util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DISCOVERY_PATH "/.well-known/openid-configuration"
#define JWKS_PATH "/openid/v1/jwks"
#define FETCH_TIMEOUT_MS 10000
#define RETRY_BASE_S 5

struct jwks_source {
    struct event_base *base;
    api_client *api;
    jwt_preverify_mode mode;
    struct event *refresh_timer; /* the next periodic fetch, or a retry after a failure */
    struct event *kid_timer;     /* every second: is a re-fetch for an unknown kid wanted? */

    /* Control thread only. */
    bool fetching;
    int64_t fetch_started_ms;
    unsigned failures;
    char issuer[JWT_ISSUER_MAX + 1]; /* from the discovery document of the fetch under way */

    /* Shared with the workers. */
    pthread_mutex_t lock;
    jwks *current;              /* under lock; NULL until the first fetch succeeds */
    int64_t current_fetched_ms; /* under lock: when the fetch that made current began */
    atomic_bool refetch_wanted;
    atomic_int_fast64_t last_fetch_started_ms; /* for the unknown-kid rate limit */
    atomic_uint_fast64_t verdicts[JWT_VERDICTS];
    atomic_uint_fast64_t refused;
    atomic_uint_fast64_t fetch_ok, fetch_failed;
};

int jwt_preverify_mode_parse(const char *text, jwt_preverify_mode *mode)
{
    if (!text) return -1;
    if (strcmp(text, "off") == 0)
        *mode = JWT_PREVERIFY_OFF;
    else if (strcmp(text, "review-others") == 0)
        *mode = JWT_PREVERIFY_REVIEW_OTHERS;
    else if (strcmp(text, "refuse-others") == 0)
        *mode = JWT_PREVERIFY_REFUSE_OTHERS;
    else
        return -1;
    return 0;
}

static void fetch_start(jwks_source *src);

static void schedule(jwks_source *src, int seconds)
{
    struct timeval tv = {seconds, 0};
    evtimer_add(src->refresh_timer, &tv);
}

static void fetch_failed(jwks_source *src, const char *what, const char *detail)
{
    src->fetching = false;
    src->failures++;
    atomic_fetch_add(&src->fetch_failed, 1);
    int delay = RETRY_BASE_S << (src->failures > 4 ? 4 : src->failures - 1);
    if (delay > JWKS_RETRY_MAX_S) delay = JWKS_RETRY_MAX_S;
    char retry[16];
    snprintf(retry, sizeof(retry), "%ds", delay);
    /* Without keys every token simply goes to TokenReview: a warning, not an error. */
    log_warn("could not fetch the issuer's keys for --jwt-preverify; tokens go to TokenReview meanwhile", "step", what,
             "detail", detail ? detail : "", "retry_in", retry, NULL);
    schedule(src, delay);
}

static void on_jwks(const api_response *response, void *arg)
{
    jwks_source *src = arg;
    if (response->error != API_ERROR_NONE) {
        fetch_failed(src, JWKS_PATH, response->detail);
        return;
    }
    char err[256];
    jwks *keys = jwks_parse(src->issuer, response->body, response->body_len, err, sizeof(err));
    if (!keys) {
        fetch_failed(src, JWKS_PATH, err);
        return;
    }
    pthread_mutex_lock(&src->lock);
    jwks *old = src->current;
    bool changed = !old || strcmp(jwks_issuer(old), jwks_issuer(keys)) != 0 || jwks_count(old) != jwks_count(keys);
    src->current = keys;
    src->current_fetched_ms = src->fetch_started_ms;
    pthread_mutex_unlock(&src->lock);
    jwks_unref(old);
    if (changed) {
        char count[16];
        snprintf(count, sizeof(count), "%zu", jwks_count(keys));
        log_info("issuer keys loaded for --jwt-preverify", "issuer", src->issuer, LOG_NUMBER "keys", count, NULL);
    }
    src->fetching = false;
    src->failures = 0;
    atomic_fetch_add(&src->fetch_ok, 1);
    schedule(src, JWKS_REFRESH_S);
}

static void on_discovery(const api_response *response, void *arg)
{
    jwks_source *src = arg;
    if (response->error != API_ERROR_NONE) {
        fetch_failed(src, DISCOVERY_PATH, response->detail);
        return;
    }
    json_t *doc = json_loadb(response->body, response->body_len, 0, NULL);
    const char *issuer = json_string_value(json_object_get(doc, "issuer"));
    if (!issuer || !*issuer || strlen(issuer) > JWT_ISSUER_MAX) {
        json_decref(doc);
        fetch_failed(src, DISCOVERY_PATH, "no issuer in the discovery document");
        return;
    }
    snprintf(src->issuer, sizeof(src->issuer), "%s", issuer);
    json_decref(doc);
    /* The keys come from the API server's own URL: jwks_uri names its advertised address. */
    if (api_client_get(src->api, JWKS_PATH, "application/jwk-set+json, application/json", FETCH_TIMEOUT_MS, on_jwks,
                       src) != 0)
        fetch_failed(src, JWKS_PATH, "the request could not be started");
}

static void fetch_start(jwks_source *src)
{
    if (src->fetching) return;
    src->fetching = true;
    src->fetch_started_ms = monotonic_ms();
    atomic_store(&src->last_fetch_started_ms, src->fetch_started_ms);
    if (api_client_get(src->api, DISCOVERY_PATH, "application/json", FETCH_TIMEOUT_MS, on_discovery, src) != 0)
        fetch_failed(src, DISCOVERY_PATH, "the request could not be started");
}

static void on_refresh_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fetch_start(arg);
}

static void on_kid_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    jwks_source *src = arg;
    if (!atomic_load(&src->refetch_wanted) || src->fetching) return;
    if (monotonic_ms() - atomic_load(&src->last_fetch_started_ms) < JWKS_REFETCH_MIN_S * 1000) return;
    atomic_store(&src->refetch_wanted, false);
    log_info("a token names a key id the issuer's keys do not have: fetching them again", NULL);
    evtimer_del(src->refresh_timer);
    fetch_start(src);
}

jwks_source *jwks_source_new(struct event_base *base, api_client *api, jwt_preverify_mode mode)
{
    jwks_source *src = calloc(1, sizeof(*src));
    if (!src) return NULL;
    src->base = base;
    src->api = api;
    src->mode = mode;
    pthread_mutex_init(&src->lock, NULL);
    atomic_init(&src->refetch_wanted, false);
    atomic_init(&src->last_fetch_started_ms, 0);
    for (int i = 0; i < JWT_VERDICTS; i++) atomic_init(&src->verdicts[i], 0);
    atomic_init(&src->refused, 0);
    atomic_init(&src->fetch_ok, 0);
    atomic_init(&src->fetch_failed, 0);
    src->refresh_timer = evtimer_new(base, on_refresh_timer, src);
    src->kid_timer = event_new(base, -1, EV_PERSIST, on_kid_timer, src);
    struct timeval second = {1, 0};
    if (!src->refresh_timer || !src->kid_timer || evtimer_add(src->kid_timer, &second) != 0) {
        jwks_source_free(src);
        return NULL;
    }
    schedule(src, 0); /* from the loop: never call back from inside _new */
    return src;
}

void jwks_source_free(jwks_source *src)
{
    if (!src) return;
    if (src->refresh_timer) event_free(src->refresh_timer);
    if (src->kid_timer) event_free(src->kid_timer);
    jwks_unref(src->current);
    pthread_mutex_destroy(&src->lock);
    free(src);
}

bool jwks_source_refuse(jwks_source *src, const char *token, size_t token_len, const char *const *audiences,
                        size_t n_audiences, int64_t now_s, char *reason, size_t reason_cap)
{
    pthread_mutex_lock(&src->lock);
    jwks *keys = src->current;
    if (keys) jwks_ref(keys);
    int64_t fetched_ms = src->current_fetched_ms;
    pthread_mutex_unlock(&src->lock);

    jwt_verdict verdict = jwt_preverify(keys, token, token_len, now_s, audiences, n_audiences, reason, reason_cap);
    atomic_fetch_add(&src->verdicts[verdict], 1);
    bool refuse = false;
    switch (verdict) {
    case JWT_INVALID: refuse = true; break;
    case JWT_UNKNOWN_KID:
        /* Keys fetched less than JWKS_REFETCH_MIN_S ago are taken as complete (a new key is
         * published before anything is signed with it); older ones are fetched again, and
         * this token goes to TokenReview meanwhile. */
        if (monotonic_ms() - fetched_ms < JWKS_REFETCH_MIN_S * 1000) {
            snprintf(reason, reason_cap, "JWT signed by a key the issuer does not publish");
            refuse = true;
        } else {
            atomic_store(&src->refetch_wanted, true);
        }
        break;
    case JWT_NOT_JWT:
    case JWT_OTHER_ISSUER:
        if (src->mode == JWT_PREVERIFY_REFUSE_OTHERS && keys) {
            snprintf(reason, reason_cap, "not a ServiceAccount token of this cluster's issuer");
            refuse = true;
        }
        break;
    default: break;
    }
    jwks_unref(keys);
    if (refuse) atomic_fetch_add(&src->refused, 1);
    return refuse;
}

int jwks_source_render_metrics(jwks_source *src, struct evbuffer *out)
{
    if (!src) return 0;
    pthread_mutex_lock(&src->lock);
    size_t n_keys = src->current ? jwks_count(src->current) : 0;
    double age_s = src->current ? (double)(monotonic_ms() - src->current_fetched_ms) / 1000.0 : 0;
    pthread_mutex_unlock(&src->lock);
    int rc = 0;
#define ADD(...) (rc |= evbuffer_add_printf(out, __VA_ARGS__) < 0 ? -1 : 0)
    ADD("# HELP gateway_jwt_preverify_total Tokens not in the cache checked locally (--jwt-preverify), by "
        "verdict.\n# TYPE gateway_jwt_preverify_total counter\n");
    for (int v = 0; v < JWT_VERDICTS; v++)
        ADD("gateway_jwt_preverify_total{verdict=\"%s\"} %llu\n", jwt_verdict_name((jwt_verdict)v),
            (unsigned long long)atomic_load(&src->verdicts[v]));
    ADD("# HELP gateway_jwt_preverify_refused_total Tokens refused locally, without a TokenReview.\n"
        "# TYPE gateway_jwt_preverify_refused_total counter\ngateway_jwt_preverify_refused_total %llu\n",
        (unsigned long long)atomic_load(&src->refused));
    ADD("# HELP gateway_jwt_keys Public keys of the cluster issuer in hand (0: none yet: every token goes to "
        "TokenReview).\n# TYPE gateway_jwt_keys gauge\ngateway_jwt_keys %zu\n",
        n_keys);
    ADD("# HELP gateway_jwt_keys_age_seconds Seconds since the keys in hand were fetched.\n"
        "# TYPE gateway_jwt_keys_age_seconds gauge\ngateway_jwt_keys_age_seconds %.3f\n",
        age_s);
    ADD("# HELP gateway_jwt_keys_fetches_total Fetches of the issuer's keys from the API server.\n"
        "# TYPE gateway_jwt_keys_fetches_total counter\n"
        "gateway_jwt_keys_fetches_total{result=\"success\"} %llu\ngateway_jwt_keys_fetches_total{result=\"failure\"} "
        "%llu\n",
        (unsigned long long)atomic_load(&src->fetch_ok), (unsigned long long)atomic_load(&src->fetch_failed));
#undef ADD
    return rc;
}

size_t jwks_source_describe(jwks_source *src, char *buf, size_t cap)
{
    pthread_mutex_lock(&src->lock);
    int n = src->current
                ? snprintf(buf, cap, "issuer %s, %zu keys, %.0fs old", jwks_issuer(src->current),
                           jwks_count(src->current), (double)(monotonic_ms() - src->current_fetched_ms) / 1000.0)
                : snprintf(buf, cap, "no keys yet (every token goes to TokenReview)");
    pthread_mutex_unlock(&src->lock);
    return n < 0 ? 0 : (size_t)n;
}
