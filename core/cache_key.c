/* cache_key.c owns the HMAC secret and the encoding of cache keys. */

/* HMAC-SHA256 is computed here from two SHA-256 states prepared once per keyer (the
 * secret XOR ipad and XOR opad, one block each), copied per key as plain structs: RFC
 * 2104 exactly, so keys equal HMAC()'s (spec/unit/test_cache_key.c checks it against
 * OpenSSL's HMAC), without EVP_MAC's context copy and provider dispatch per key. The
 * low-level SHA256_* functions are deprecated in OpenSSL 3 but kept for this use; the
 * deprecation warning is silenced in this file only. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "cache_key.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HMAC_BLOCK_BYTES 64 /* SHA-256's block */
_Static_assert(CACHE_KEY_SECRET_BYTES <= HMAC_BLOCK_BYTES, "a longer HMAC key would have to be hashed first");

struct cache_keyer {
    unsigned char secret[CACHE_KEY_SECRET_BYTES];
    SHA256_CTX inner; /* after absorbing secret XOR 0x36.. */
    SHA256_CTX outer; /* after absorbing secret XOR 0x5c.. */
};

cache_keyer *cache_keyer_new_with_secret(const unsigned char secret[CACHE_KEY_SECRET_BYTES])
{
    cache_keyer *keyer = calloc(1, sizeof(*keyer));
    if (!keyer) return NULL;
    memcpy(keyer->secret, secret, CACHE_KEY_SECRET_BYTES);
    /* The secret is shorter than a block: it is zero-padded, never hashed first. */
    unsigned char ipad[HMAC_BLOCK_BYTES], opad[HMAC_BLOCK_BYTES];
    memset(ipad, 0x36, sizeof(ipad));
    memset(opad, 0x5c, sizeof(opad));
    for (size_t i = 0; i < CACHE_KEY_SECRET_BYTES; i++) {
        ipad[i] ^= secret[i];
        opad[i] ^= secret[i];
    }
    int ok = SHA256_Init(&keyer->inner) && SHA256_Update(&keyer->inner, ipad, sizeof(ipad)) &&
             SHA256_Init(&keyer->outer) && SHA256_Update(&keyer->outer, opad, sizeof(opad));
    OPENSSL_cleanse(ipad, sizeof(ipad));
    OPENSSL_cleanse(opad, sizeof(opad));
    if (!ok) {
        cache_keyer_free(keyer);
        return NULL;
    }
    return keyer;
}

cache_keyer *cache_keyer_clone(const cache_keyer *keyer)
{
    return cache_keyer_new_with_secret(keyer->secret);
}

cache_keyer *cache_keyer_new(void)
{
    unsigned char secret[CACHE_KEY_SECRET_BYTES];
    if (RAND_bytes(secret, sizeof(secret)) != 1) return NULL;
    cache_keyer *keyer = cache_keyer_new_with_secret(secret);
    OPENSSL_cleanse(secret, sizeof(secret));
    return keyer;
}

void cache_keyer_free(cache_keyer *keyer)
{
    if (!keyer) return;
    OPENSSL_cleanse(keyer, sizeof(*keyer)); /* the secret and the states derived from it */
    free(keyer);
}

/* One key being computed: the inner hash absorbs the encoding as it is produced (no copy
 * of the token into a buffer). The state holds token material: always wiped. */
typedef struct key_hash {
    SHA256_CTX ctx;
    int ok;
} key_hash;

static void key_hash_begin(const cache_keyer *keyer, key_hash *h)
{
    h->ctx = keyer->inner;
    h->ok = 1;
}

static void key_hash_bytes(key_hash *h, const void *data, size_t n)
{
    if (h->ok && n) h->ok = SHA256_Update(&h->ctx, data, n);
}

static void key_hash_be32(key_hash *h, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                          (unsigned char)v};
    key_hash_bytes(h, b, 4);
}

/* Finishes HMAC = H(opad-state || H(ipad-state || encoding)) into out; wipes the state. */
static int key_hash_finish(const cache_keyer *keyer, key_hash *h, cache_key *out)
{
    unsigned char inner[SHA256_DIGEST_LENGTH];
    int ok = h->ok && SHA256_Final(inner, &h->ctx);
    h->ctx = keyer->outer;
    ok = ok && SHA256_Update(&h->ctx, inner, sizeof(inner)) && SHA256_Final(out->bytes, &h->ctx);
    OPENSSL_cleanse(inner, sizeof(inner));
    OPENSSL_cleanse(&h->ctx, sizeof(h->ctx));
    return ok ? 0 : -1;
}

int cache_key_for_parts(const cache_keyer *keyer, uint8_t domain, const char *const *parts, const size_t *lens,
                        size_t n_parts, cache_key *out)
{
    key_hash h;
    key_hash_begin(keyer, &h);
    key_hash_bytes(&h, &domain, 1);
    key_hash_be32(&h, (uint32_t)n_parts);
    for (size_t i = 0; i < n_parts; i++) {
        key_hash_be32(&h, (uint32_t)lens[i]);
        key_hash_bytes(&h, parts[i], lens[i]);
    }
    return key_hash_finish(keyer, &h, out);
}

int cache_key_for_token(const cache_keyer *keyer, const char *token, size_t token_len, const char *const *audiences,
                        size_t n_audiences, cache_key *out)
{
    /* be32(len) token, be32(n_audiences), be32(len) aud... */
    key_hash h;
    key_hash_begin(keyer, &h);
    key_hash_be32(&h, (uint32_t)token_len);
    key_hash_bytes(&h, token, token_len);
    key_hash_be32(&h, (uint32_t)n_audiences);
    for (size_t i = 0; i < n_audiences; i++) {
        size_t len = strlen(audiences[i]);
        key_hash_be32(&h, (uint32_t)len);
        key_hash_bytes(&h, audiences[i], len);
    }
    return key_hash_finish(keyer, &h, out);
}

void cache_key_id(const cache_key *key, char out[9])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 4; i++) {
        out[2 * i] = hex[key->bytes[i] >> 4];
        out[2 * i + 1] = hex[key->bytes[i] & 0xf];
    }
    out[8] = '\0';
}
