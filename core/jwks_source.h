/* The cluster issuer's keys for local pre-verification (--jwt-preverify, docs/PREVERIFY.md):
 * fetched from the API server itself (/.well-known/openid-configuration for the issuer,
 * /openid/v1/jwks for the keys: readable by every ServiceAccount through the default
 * system:service-account-issuer-discovery binding), refreshed periodically and, at most
 * once per JWKS_REFETCH_MIN_S, when a token names a key id the set does not have. The
 * keys are fetched from the API server's own URL, never from the discovery document's
 * jwks_uri, which names the API server's advertised address and may not be reachable.
 *
 * Threading: made, fed and freed on the control thread (its api_client). Workers call
 * jwks_source_check and the metrics function from any thread: the current key set is
 * swapped under a mutex and reference-counted, the counters are atomic. */
#ifndef TOKENGATE_JWKS_SOURCE_H
#define TOKENGATE_JWKS_SOURCE_H

#include "api_client.h"
#include "jwt_verify.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    JWT_PREVERIFY_OFF = 0,
    JWT_PREVERIFY_REVIEW_OTHERS, /* verify this issuer's JWTs; other tokens go to TokenReview */
    JWT_PREVERIFY_REFUSE_OTHERS, /* verify this issuer's JWTs; refuse every other token */
} jwt_preverify_mode;

/* "off", "review-others", "refuse-others" -> mode; -1 for anything else. */
int jwt_preverify_mode_parse(const char *text, jwt_preverify_mode *mode);

#define JWKS_REFRESH_S 300    /* periodic re-fetch */
#define JWKS_REFETCH_MIN_S 30 /* an unknown kid re-fetches at most this often */
#define JWKS_RETRY_MAX_S 60   /* failed fetches retry with backoff up to this */

typedef struct jwks_source jwks_source;

/* Starts fetching at once on base with api (borrowed: must outlive the source). NULL on
 * out of memory; a mode of OFF is the caller's business (make none). */
jwks_source *jwks_source_new(struct event_base *base, api_client *api, jwt_preverify_mode mode);

/* Stops the timers; a fetch in flight must not complete afterwards, so call it after the
 * api_client's calls were aborted or before the client is freed (the client never calls
 * back after api_client_free). NULL is ignored. */
void jwks_source_free(jwks_source *src);

/* The decision for one token not in the cache: true means refuse it now (401, a negative
 * cache entry) without a TokenReview, with a reason (safe to log) in reason; false means
 * send it to TokenReview. Counts the verdict. Any thread. */
bool jwks_source_refuse(jwks_source *src, const char *token, size_t token_len, const char *const *audiences,
                        size_t n_audiences, int64_t now_s, char *reason, size_t reason_cap);

/* Appends in the Prometheus text format:
 *   gateway_jwt_preverify_total{verdict}          tokens checked, by jwt_verdict_name
 *   gateway_jwt_preverify_refused_total          of those, refused without an API call
 *   gateway_jwt_keys                             keys in the current set (0: none yet)
 *   gateway_jwt_keys_age_seconds                 since the current set was fetched
 *   gateway_jwt_keys_fetches_total{result}       success / failure
 * Returns 0 or -1. NULL: nothing. Any thread. */
int jwks_source_render_metrics(jwks_source *src, struct evbuffer *out);

/* One line for --check / logs: "issuer https://…, 2 keys, 12s old" or why there are none. */
size_t jwks_source_describe(jwks_source *src, char *buf, size_t cap);

#endif
