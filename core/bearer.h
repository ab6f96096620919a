/* Bearer tokens on incoming requests: extraction from the Authorization header (RFC 6750)
 * and reading a JWT's exp claim (only to bound a cache TTL; never a trust decision). */
#ifndef TOKENGATE_BEARER_H
#define TOKENGATE_BEARER_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    BEARER_OK = 0,
    BEARER_MISSING,   /* no header value */
    BEARER_MALFORMED, /* not "Bearer <b64token>" */
    BEARER_TOO_LONG,  /* token longer than the limit */
} bearer_status;

/* Extracts the token from an Authorization header value: scheme "Bearer" matched
 * case-insensitively, one or more spaces, then an RFC 6750 b64token
 * (1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="), nothing after it but
 * trailing spaces/tabs. On BEARER_OK, *token points into header_value (no copy) and
 * *token_len is its length. header_value may be NULL (→ BEARER_MISSING). */
bearer_status bearer_extract(const char *header_value, size_t max_token_bytes, const char **token, size_t *token_len);

/* Returns a constant, human-readable reason for a status (safe to log and to send). */
const char *bearer_status_reason(bearer_status status);

/* If token is a JWT (three base64url segments) whose payload is a JSON object with a
 * numeric "exp" in (0, 1e15), stores it (seconds since the epoch) in *exp_out and returns 0;
 * otherwise returns -1. The signature is not checked. Allocates only inside jansson while parsing. */
int jwt_read_exp(const char *token, size_t token_len, int64_t *exp_out);

#endif
