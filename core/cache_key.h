/* Cache keys: HMAC-SHA256 under a per-process random secret over an unambiguous encoding
 * of the looked-up material (a token and its audiences, or later the attributes of a
 * SubjectAccessReview). Only keys are stored; the material is never kept. */
#ifndef TOKENGATE_CACHE_KEY_H
#define TOKENGATE_CACHE_KEY_H

#include <stddef.h>
#include <stdint.h>

#define CACHE_KEY_BYTES 32
#define CACHE_KEY_SECRET_BYTES 32

typedef struct cache_key {
    unsigned char bytes[CACHE_KEY_BYTES];
} cache_key;

/* A keyer holds the secret and the HMAC's prepared inner and outer SHA-256 states; it is
 * only read while keys are computed. Each event-loop thread still uses its own
 * (cache_keyer_clone), so keys agree across threads and no cache line is shared. */
typedef struct cache_keyer cache_keyer;

/* Creates a keyer with a fresh secret from the OpenSSL CSPRNG. Returns NULL on failure.
 * The caller owns the result (cache_keyer_free). */
cache_keyer *cache_keyer_new(void);

/* Same, with a fixed secret (tests only). */
cache_keyer *cache_keyer_new_with_secret(const unsigned char secret[CACHE_KEY_SECRET_BYTES]);

/* A keyer with the same secret (same keys) for another thread. NULL on failure. */
cache_keyer *cache_keyer_clone(const cache_keyer *keyer);

/* Wipes the secret and frees. NULL is a no-op. */
void cache_keyer_free(cache_keyer *keyer);

/* Key of a TokenReview: HMAC over be32(len(token)) token be32(n_audiences)
 * { be32(len(aud)) aud }*. Returns 0, or -1 if HMAC fails. */
int cache_key_for_token(const cache_keyer *keyer, const char *token, size_t token_len, const char *const *audiences,
                        size_t n_audiences, cache_key *out);

/* Key over a list of byte strings: domain byte, be32(n_parts), then each part
 * length-prefixed (for SubjectAccessReview attributes). A non-zero domain keeps these
 * encodings distinct from token keys, whose first byte is the high byte of a length. */
int cache_key_for_parts(const cache_keyer *keyer, uint8_t domain, const char *const *parts, const size_t *lens,
                        size_t n_parts, cache_key *out);

/* Writes the first 8 hex digits of key and a NUL into out: the token_id logs may show. */
void cache_key_id(const cache_key *key, char out[9]);

#endif
