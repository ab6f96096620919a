/* admin_auth.c: see admin_auth.h. One admin_check per request waiting for a review; it
 * lives in the admin_auth's list until its verdict is delivered (or the admin_auth is
 * freed at shutdown), and is reused from the TokenReview stage to the SAR stage. */
#include "admin_auth.h"

#include "bearer.h"
#include "identity.h"
#include "sar.h"
#include "token_cache.h"
#include "tokenreview.h"
#include "util.h"
#include "worker.h"

#include <openssl/crypto.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ADMIN_AUTH_PATH_MAX 128
/* Admin reviews share one flow of the review queue (review.h): however many there are,
 * they take turns with the workers' flows and cannot crowd them out. */
#define ADMIN_AUTH_FLOW UINT64_C(0x61646d696e) /* "admin" */

typedef struct admin_check {
    admin_auth *auth;
    struct admin_check *prev, *next; /* in auth->waiting */
    review_waiter waiter;
    void *arg;
    char verb[16];
    char path[ADMIN_AUTH_PATH_MAX];
} admin_check;

struct admin_auth {
    const config *cfg;
    const cache_keyer *keyer;
    review_engine *engine;
    const review_kind *tokenreview;
    const review_kind *sar;
    admin_auth_done_fn done;
    void *ctx;
    admin_check *waiting;
};

admin_auth *admin_auth_new(const config *cfg, const cache_keyer *keyer, review_engine *engine,
                           const review_kind *tokenreview, const review_kind *sar, admin_auth_done_fn done, void *ctx)
{
    admin_auth *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    a->cfg = cfg;
    a->keyer = keyer;
    a->engine = engine;
    a->tokenreview = tokenreview;
    a->sar = sar;
    a->done = done;
    a->ctx = ctx;
    return a;
}

static void check_unlink(admin_check *c)
{
    admin_auth *a = c->auth;
    if (c->prev)
        c->prev->next = c->next;
    else if (a->waiting == c)
        a->waiting = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Delivers the verdict and frees the check. */
static void finish(admin_check *c, admin_auth_verdict v, int retry_after_s)
{
    admin_auth *a = c->auth;
    void *arg = c->arg;
    check_unlink(c);
    free(c);
    a->done(v, retry_after_s, a->ctx, arg);
}

static admin_check *check_new(admin_auth *a, const char *verb, const char *path, void *arg)
{
    admin_check *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->auth = a;
    c->arg = arg;
    snprintf(c->verb, sizeof(c->verb), "%s", verb);
    snprintf(c->path, sizeof(c->path), "%s", path);
    c->next = a->waiting;
    if (a->waiting) a->waiting->prev = c;
    a->waiting = c;
    return c;
}

static void on_sar_done(const review_outcome *outcome, void *arg)
{
    admin_check *c = arg;
    switch (outcome->verdict) {
    case REVIEW_POSITIVE: finish(c, ADMIN_AUTH_ALLOWED, 0); break;
    case REVIEW_NEGATIVE: finish(c, ADMIN_AUTH_FORBIDDEN, 0); break;
    case REVIEW_ERROR: finish(c, ADMIN_AUTH_UNAVAILABLE, outcome->retry_after_s); break;
    }
}

/* The identity is authenticated: may it verb the path? Answers from the SAR cache or a
 * SubjectAccessReview flight (joined when one for the same question runs). */
static void ask_sar(admin_check *c, const unsigned char *packed, size_t packed_len)
{
    admin_auth *a = c->auth;
    identity_view view;
    unsigned char digest[IDENTITY_DIGEST_BYTES];
    sar_attributes attrs = {.nonresource = true, .verb = c->verb, .path = c->path};
    review_request rr = {0};
    if (identity_view_parse(packed, packed_len, &view) != 0 || identity_digest(packed, packed_len, digest) != 0 ||
        sar_cache_key(a->keyer, digest, &attrs, &rr.key) != 0) {
        finish(c, ADMIN_AUTH_UNAVAILABLE, 1);
        return;
    }
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t value_len = 0;
    switch (token_cache_lookup(a->sar->cache, &rr.key, monotonic_ms(), value, sizeof(value), &value_len, NULL)) {
    case TOKEN_CACHE_HIT_POSITIVE: finish(c, ADMIN_AUTH_ALLOWED, 0); return;
    case TOKEN_CACHE_HIT_NEGATIVE: finish(c, ADMIN_AUTH_FORBIDDEN, 0); return;
    case TOKEN_CACHE_STALE_POSITIVE:
    case TOKEN_CACHE_MISS: break;
    }
    c->waiter.done = on_sar_done;
    c->waiter.arg = c;
    if (review_join(a->engine, a->sar, &rr.key, &c->waiter, rr.deadline_ms)) return;
    rr.flow = ADMIN_AUTH_FLOW;
    rr.positive_ttl_ms = rr.positive_ttl_cap_ms = a->cfg->sar_allowed_ttl_ms;
    rr.negative_ttl_ms = a->cfg->sar_denied_ttl_ms;
    sar_parse_arg *identity = malloc(sizeof(*identity) + packed_len);
    if (!identity) {
        finish(c, ADMIN_AUTH_UNAVAILABLE, 1);
        return;
    }
    identity->identity_len = packed_len;
    memcpy(identity->identity, packed, packed_len);
    rr.parse_arg = identity;
    rr.parse_arg_free = free;
    cache_key_id(&rr.key, rr.token_id);
    rr.body = sar_request_body(&view, &attrs, &rr.body_len);
    if (!rr.body) {
        free(identity);
        finish(c, ADMIN_AUTH_UNAVAILABLE, 1);
        return;
    }
    review_start(a->engine, a->sar, &rr, &c->waiter); /* may finish c before it returns */
}

static void on_tokenreview_done(const review_outcome *outcome, void *arg)
{
    admin_check *c = arg;
    switch (outcome->verdict) {
    case REVIEW_POSITIVE: ask_sar(c, outcome->value, outcome->value_len); break;
    case REVIEW_NEGATIVE: finish(c, ADMIN_AUTH_UNAUTHENTICATED, 0); break;
    case REVIEW_ERROR: finish(c, ADMIN_AUTH_UNAVAILABLE, outcome->retry_after_s); break;
    }
}

/* The TokenReview's parse argument: the audiences asked for (--audiences). */
static tokenreview_parse_arg *parse_arg_new(const config *cfg)
{
    size_t bytes = 0;
    for (size_t i = 0; i < cfg->n_audiences; i++) bytes += strlen(cfg->audiences[i]) + 1;
    tokenreview_parse_arg *arg = malloc(sizeof(*arg) + bytes);
    if (!arg) return NULL;
    arg->n_audiences = cfg->n_audiences;
    char *p = arg->strings;
    for (size_t i = 0; i < cfg->n_audiences; i++) {
        size_t len = strlen(cfg->audiences[i]) + 1;
        memcpy(p, cfg->audiences[i], len);
        arg->audiences[i] = p;
        p += len;
    }
    return arg;
}

void admin_auth_check(admin_auth *a, const char *token, size_t token_len, const char *verb, const char *path, void *arg)
{
    const config *cfg = a->cfg;
    admin_check *c = check_new(a, verb, path, arg);
    if (!c) {
        a->done(ADMIN_AUTH_UNAVAILABLE, 1, a->ctx, arg);
        return;
    }
    if (strlen(path) >= sizeof(c->path) || strlen(verb) >= sizeof(c->verb)) {
        finish(c, ADMIN_AUTH_FORBIDDEN, 0);
        return;
    }
    review_request rr = {0};
    if (cache_key_for_token(a->keyer, token, token_len, cfg->audiences, cfg->n_audiences, &rr.key) != 0) {
        finish(c, ADMIN_AUTH_UNAVAILABLE, 1);
        return;
    }
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t value_len = 0;
    switch (
        token_cache_lookup(a->tokenreview->cache, &rr.key, monotonic_ms(), value, sizeof(value), &value_len, NULL)) {
    case TOKEN_CACHE_HIT_POSITIVE:
        ask_sar(c, value, value_len);
        OPENSSL_cleanse(value, value_len);
        return;
    case TOKEN_CACHE_HIT_NEGATIVE: finish(c, ADMIN_AUTH_UNAUTHENTICATED, 0); return;
    case TOKEN_CACHE_STALE_POSITIVE:
    case TOKEN_CACHE_MISS: break;
    }
    c->waiter.done = on_tokenreview_done;
    c->waiter.arg = c;
    if (review_join(a->engine, a->tokenreview, &rr.key, &c->waiter, rr.deadline_ms)) return;
    /* TTLs as the workers use them: --cache-ttl, capped by --cache-max-ttl and the JWT exp. */
    int64_t cap = cfg->cache_max_ttl_ms, exp;
    if (jwt_read_exp(token, token_len, &exp) == 0) {
        int64_t left_ms = (exp - (int64_t)time(NULL)) * 1000;
        if (left_ms < cap) cap = left_ms;
    }
    rr.flow = ADMIN_AUTH_FLOW;
    rr.positive_ttl_cap_ms = cap;
    rr.positive_ttl_ms = cfg->cache_ttl_ms < cap ? cfg->cache_ttl_ms : cap;
    rr.negative_ttl_ms =
        cfg->cache_negative_ttl_ms < cfg->cache_max_ttl_ms ? cfg->cache_negative_ttl_ms : cfg->cache_max_ttl_ms;
    cache_key_id(&rr.key, rr.token_id);
    tokenreview_parse_arg *parse = parse_arg_new(cfg);
    rr.body = parse ? tokenreview_request_body(token, token_len, cfg->audiences, cfg->n_audiences, &rr.body_len) : NULL;
    if (!rr.body) {
        free(parse);
        finish(c, ADMIN_AUTH_UNAVAILABLE, 1);
        return;
    }
    rr.parse_arg = parse;
    rr.parse_arg_free = free;
    review_start(a->engine, a->tokenreview, &rr, &c->waiter); /* may finish c before it returns */
}

void admin_auth_free(admin_auth *a)
{
    if (!a) return;
    while (a->waiting) {
        admin_check *c = a->waiting;
        check_unlink(c);
        free(c);
    }
    free(a);
}
