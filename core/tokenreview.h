/* The TokenReview wire format (authentication.k8s.io/v1): the request body the gateway
 * sends and the parser for what the API server answers. Pure functions: no I/O, no
 * logging, so they are unit-tested and fuzzed on captured real answers. */
#ifndef TOKENGATE_TOKENREVIEW_H
#define TOKENGATE_TOKENREVIEW_H

#include <stddef.h>

#define TOKENREVIEW_API_PATH "/apis/authentication.k8s.io/v1/tokenreviews"

typedef enum {
    TOKENREVIEW_AUTHENTICATED = 0,
    TOKENREVIEW_UNAUTHENTICATED, /* includes "no requested audience accepted" */
    TOKENREVIEW_BAD_RESPONSE,    /* not a TokenReview we can trust: fail closed */
    /* Authenticated, well-formed, but an identity the gateway cannot carry (more than 256
     * groups or extra values, a string over 4096 bytes or with a control character, or too
     * large in all): refused like an unauthenticated token, and cached as such, rather
     * than failed (an error is never cached and would cost a review on every request). */
    TOKENREVIEW_UNREPRESENTABLE,
} tokenreview_result;

/* Builds the request JSON for token (which must be a validated b64token: it is inserted
 * without escaping) and the audiences. Returns a malloc'd NUL-terminated body and its
 * length in *len, or NULL (also when an audience is not valid UTF-8). The body contains the token: the caller must
 * OPENSSL_cleanse it before free. */
char *tokenreview_request_body(const char *token, size_t token_len, const char *const *audiences, size_t n_audiences,
                               size_t *len);

/* Parses a 200/201 TokenReview answer. On TOKENREVIEW_AUTHENTICATED the identity is packed
 * (identity.h) into packed[0..*packed_len). On TOKENREVIEW_UNAUTHENTICATED and
 * TOKENREVIEW_BAD_RESPONSE a short reason (status.error truncated, or what was wrong) is
 * written to reason. `authenticated` omitted means false, as kube-apiserver sends it.
 * When audiences were requested, at least one must appear in status.audiences. */
tokenreview_result tokenreview_parse_response(const char *body, size_t body_len, const char *const *audiences,
                                              size_t n_audiences, unsigned char *packed, size_t packed_cap,
                                              size_t *packed_len, char *reason, size_t reason_cap);

#endif
