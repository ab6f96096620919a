/* Local pre-verification of ServiceAccount JWTs (docs/PREVERIFY.md): the cluster issuer's
 * public keys (a JWKS, as /openid/v1/jwks serves it) and the checks a token must pass
 * before it is worth a TokenReview. It never admits anything: a token that passes still
 * goes to TokenReview, which stays the authority (revocation, bound objects). It only
 * refuses tokens that the API server is certain to refuse too: a JWT claiming this
 * cluster's issuer whose signature does not verify with the issuer's key of that kid, that
 * expired (or is not yet valid) beyond the API server's own leeway, whose algorithm no
 * ServiceAccount key signs with, or that names none of the audiences asked for.
 *
 * Pure and thread-safe: a jwks is immutable once made and reference-counted, so workers
 * verify with the set they took while the control thread publishes a new one. */
#ifndef TOKENGATE_JWT_VERIFY_H
#define TOKENGATE_JWT_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct jwks jwks;

#define JWKS_MAX_KEYS 32
#define JWKS_MAX_BYTES (256 * 1024)
#define JWT_ISSUER_MAX 1024
/* The leeway kube-apiserver allows on exp and nbf (go-jose's DefaultLeeway). */
#define JWT_LEEWAY_S 60

/* Makes a key set from a JWKS document ({"keys":[...]}) for issuer. RSA keys (n, e) and EC
 * keys on P-256, P-384 and P-521 (x, y) are kept; others (and keys with "use" other than
 * "sig") are skipped. Returns NULL with a reason in err when the document is not a JWKS,
 * the issuer is empty or too long, or no usable key is in it. The result has one
 * reference. */
jwks *jwks_parse(const char *issuer, const char *json, size_t json_len, char *err, size_t err_cap);

void jwks_ref(jwks *keys);
/* Drops a reference; the last one frees the set. NULL is ignored. */
void jwks_unref(jwks *keys);

const char *jwks_issuer(const jwks *keys);
size_t jwks_count(const jwks *keys);

typedef enum {
    JWT_NOT_JWT = 0,  /* not three base64url segments with a JSON header and payload */
    JWT_OTHER_ISSUER, /* a JWT, but iss is not this cluster's issuer (or absent) */
    JWT_UNKNOWN_KID,  /* this issuer, signed by a key the set does not have (rotation?) */
    JWT_UNDECIDED,    /* this issuer, an algorithm this module does not check: ask TokenReview */
    JWT_VALID,        /* signature, exp/nbf and audiences check out: ask TokenReview */
    JWT_INVALID,      /* refuse: the API server would */
    JWT_VERDICTS
} jwt_verdict;

const char *jwt_verdict_name(jwt_verdict verdict);

/* Checks token against keys at time now_s (seconds since the epoch). With n_audiences > 0
 * the token's aud must name one of audiences. keys may be NULL (no set yet): then a JWT is
 * JWT_OTHER_ISSUER or JWT_UNDECIDED at most, never refused. On JWT_INVALID a short reason
 * (safe to log: never token material) goes to reason. */
jwt_verdict jwt_preverify(const jwks *keys, const char *token, size_t token_len, int64_t now_s,
                          const char *const *audiences, size_t n_audiences, char *reason, size_t reason_cap);

/* Decodes base64url (RFC 4648 §5, padding optional) into out. Returns the decoded length,
 * or -1 when in has a character outside the alphabet or out is too small. */
long base64url_decode(const char *in, size_t in_len, unsigned char *out, size_t out_cap);

#endif
