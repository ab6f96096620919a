/* admin_auth.h: the admin listener's callers authenticated the way kube-rbac-proxy
 * protects /metrics — a bearer token a TokenReview authenticates, then a non-resource
 * SubjectAccessReview (verb, path) that allows it. Runs on the control thread with the
 * gateway's own review engine and caches, so admin checks are single-flighted, rate
 * limited and cached like every other review. */
#ifndef TOKENGATE_ADMIN_AUTH_H
#define TOKENGATE_ADMIN_AUTH_H

#include "cache_key.h"
#include "config.h"
#include "review.h"

#include <stddef.h>

typedef struct admin_auth admin_auth;

typedef enum {
    ADMIN_AUTH_ALLOWED,         /* authenticated and allowed */
    ADMIN_AUTH_UNAUTHENTICATED, /* 401 */
    ADMIN_AUTH_FORBIDDEN,       /* 403 */
    ADMIN_AUTH_UNAVAILABLE,     /* 503: the API server could not answer (never an allow) */
} admin_auth_verdict;

/* Called exactly once per admin_auth_check (possibly before it returns) with the ctx
 * given to admin_auth_new and the check's own arg. */
typedef void (*admin_auth_done_fn)(admin_auth_verdict verdict, int retry_after_s, void *ctx, void *arg);

/* The engine, keyer and kinds are borrowed and must outlive the admin_auth. */
admin_auth *admin_auth_new(const config *cfg, const cache_keyer *keyer, review_engine *engine,
                           const review_kind *tokenreview, const review_kind *sar, admin_auth_done_fn done, void *ctx);

/* May token (token_len bytes) `verb` the non-resource `path`? Answers through done. */
void admin_auth_check(admin_auth *a, const char *token, size_t token_len, const char *verb, const char *path,
                      void *arg);

/* Frees the admin_auth. Checks still waiting for a review are dropped without calling
 * done: call it after the review engine is freed (which never calls waiters) and after
 * the admin listener (whose requests they answered) is gone. */
void admin_auth_free(admin_auth *a);

#endif
