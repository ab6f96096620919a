/* Unit tests: HMAC cache keys (core/cache_key.h), checked against an HMAC-SHA256 computed
 * here independently over the documented encoding (docs/ARCHITECTURE.md, step 3). */
#include "cache_key.h"
#include "unit.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

static const unsigned char secret_a[CACHE_KEY_SECRET_BYTES] = "0123456789abcdef0123456789abcde";
static const unsigned char secret_b[CACHE_KEY_SECRET_BYTES] = "0123456789abcdef0123456789abcdX";

static void be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* be32(len) token be32(n_aud) {be32(len) aud}, HMAC-SHA256 (docs/ARCHITECTURE.md, step 3). */
static int reference_key(const unsigned char *secret, const char *token, size_t token_len, const char *const *auds,
                         size_t n_auds, unsigned char out[32])
{
    size_t total = 4 + token_len + 4;
    for (size_t i = 0; i < n_auds; i++) total += 4 + strlen(auds[i]);
    unsigned char *msg = malloc(total);
    if (!msg) return -1;
    size_t o = 0;
    be32(msg + o, (uint32_t)token_len);
    o += 4;
    memcpy(msg + o, token, token_len);
    o += token_len;
    be32(msg + o, (uint32_t)n_auds);
    o += 4;
    for (size_t i = 0; i < n_auds; i++) {
        size_t l = strlen(auds[i]);
        be32(msg + o, (uint32_t)l);
        o += 4;
        memcpy(msg + o, auds[i], l);
        o += l;
    }
    unsigned int mac_len = 0;
    unsigned char *ok = HMAC(EVP_sha256(), secret, CACHE_KEY_SECRET_BYTES, msg, o, out, &mac_len);
    free(msg);
    return ok && mac_len == 32 && o == total ? 0 : -1;
}

static cache_key key_for(const cache_keyer *k, const char *token, const char *const *auds, size_t n)
{
    cache_key key;
    memset(&key, 0, sizeof(key));
    CHECK_EQ_INT(cache_key_for_token(k, token, strlen(token), auds, n, &key), 0);
    return key;
}

static bool same(const cache_key *a, const cache_key *b)
{
    return memcmp(a->bytes, b->bytes, CACHE_KEY_BYTES) == 0;
}

static void test_matches_reference_hmac(void)
{
    cache_keyer *k = cache_keyer_new_with_secret(secret_a);
    REQUIRE(k != NULL);
    unsigned char ref[32];
    static const char token[] = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln";
    const char *const auds[] = {"https://kubernetes.default.svc", "https://hooks.example.com"};

    cache_key key = key_for(k, token, NULL, 0);
    CHECK_EQ_INT(reference_key(secret_a, token, strlen(token), NULL, 0, ref), 0);
    CHECK_MEM(key.bytes, ref, 32);

    key = key_for(k, token, auds, 2);
    CHECK_EQ_INT(reference_key(secret_a, token, strlen(token), auds, 2, ref), 0);
    CHECK_MEM(key.bytes, ref, 32);

    /* An empty audience string is encoded as a zero length, distinct from none. */
    const char *const empty_aud[] = {""};
    key = key_for(k, token, empty_aud, 1);
    CHECK_EQ_INT(reference_key(secret_a, token, strlen(token), empty_aud, 1, ref), 0);
    CHECK_MEM(key.bytes, ref, 32);
    cache_key none = key_for(k, token, NULL, 0);
    CHECK(!same(&key, &none));

    /* The key is not a plain hash of the token. */
    unsigned char sha[32];
    SHA256((const unsigned char *)token, strlen(token), sha);
    CHECK(memcmp(none.bytes, sha, 32) != 0);

    /* Known answer: pins the encoding and the secret handling together. */
    key = key_for(k, "abc", NULL, 0);
    CHECK_EQ_INT(reference_key(secret_a, "abc", 3, NULL, 0, ref), 0);
    CHECK_MEM(key.bytes, ref, 32);
    cache_keyer_free(k);
}

static void test_deterministic_and_secret(void)
{
    cache_keyer *a1 = cache_keyer_new_with_secret(secret_a);
    cache_keyer *a2 = cache_keyer_new_with_secret(secret_a);
    cache_keyer *b = cache_keyer_new_with_secret(secret_b);
    if (!a1 || !a2 || !b) {
        cache_keyer_free(a1);
        cache_keyer_free(a2);
        cache_keyer_free(b);
        REQUIRE(false);
    }
    const char *const auds[] = {"x"};
    cache_key k1 = key_for(a1, "token-1", auds, 1);
    cache_key k1again = key_for(a1, "token-1", auds, 1);
    cache_key k1other = key_for(a2, "token-1", auds, 1);
    cache_key kb = key_for(b, "token-1", auds, 1);
    CHECK(same(&k1, &k1again));
    CHECK(same(&k1, &k1other));
    CHECK(!same(&k1, &kb));
    cache_key k2 = key_for(a1, "token-2", auds, 1);
    CHECK(!same(&k1, &k2));
    cache_keyer_free(a1);
    cache_keyer_free(a2);
    cache_keyer_free(b);
    cache_keyer_free(NULL);
}

static void test_unambiguous_encoding(void)
{
    cache_keyer *k = cache_keyer_new_with_secret(secret_a);
    REQUIRE(k != NULL);
    const char *const c[] = {"c"};
    const char *const bc[] = {"bc"};
    const char *const b_c[] = {"b", "c"};
    const char *const c_b[] = {"c", "b"};
    const char *const bc_[] = {"bc", ""};
    const char *const empty[] = {""};
    cache_key ab_c = key_for(k, "ab", c, 1);
    cache_key a_bc = key_for(k, "a", bc, 1);
    cache_key abc = key_for(k, "abc", NULL, 0);
    cache_key a_b_c = key_for(k, "a", b_c, 2);
    cache_key a_c_b = key_for(k, "a", c_b, 2);
    cache_key a_bc_e = key_for(k, "a", bc_, 2);
    cache_key abc_e = key_for(k, "abc", empty, 1);
    const cache_key *all[] = {&ab_c, &a_bc, &abc, &a_b_c, &a_c_b, &a_bc_e, &abc_e};
    size_t n = sizeof(all) / sizeof(all[0]);
    int collisions = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) collisions += same(all[i], all[j]);
    CHECK_EQ_INT(collisions, 0);

    /* The token's length is what token_len says, not strlen. */
    cache_key part = {{0}};
    CHECK_EQ_INT(cache_key_for_token(k, "abcdef", 3, NULL, 0, &part), 0);
    CHECK(same(&part, &abc));
    cache_keyer_free(k);
}

static void test_key_id(void)
{
    cache_key key;
    for (int i = 0; i < CACHE_KEY_BYTES; i++) key.bytes[i] = (unsigned char)(0xF0 - i * 7);
    key.bytes[0] = 0x0a;
    key.bytes[1] = 0xb3;
    key.bytes[2] = 0x00;
    key.bytes[3] = 0xff;
    char id[9];
    memset(id, 'Q', sizeof(id));
    cache_key_id(&key, id);
    CHECK_STR(id, "0ab300ff");
    CHECK_EQ_INT(id[8], '\0');

    cache_keyer *k = cache_keyer_new_with_secret(secret_a);
    REQUIRE(k != NULL);
    cache_key real = key_for(k, "tok", NULL, 0);
    cache_key_id(&real, id);
    char want[9];
    snprintf(want, sizeof(want), "%02x%02x%02x%02x", real.bytes[0], real.bytes[1], real.bytes[2], real.bytes[3]);
    CHECK_STR(id, want);
    CHECK(strstr(id, "tok") == NULL);
    cache_keyer_free(k);
}

static void test_random_secrets(void)
{
    cache_keyer *a = cache_keyer_new();
    cache_keyer *b = cache_keyer_new();
    if (!a || !b) {
        cache_keyer_free(a);
        cache_keyer_free(b);
        REQUIRE(false);
    }
    cache_key ka = key_for(a, "same-token", NULL, 0);
    cache_key kb = key_for(b, "same-token", NULL, 0);
    CHECK(!same(&ka, &kb));
    /* Neither used an all-zero or the test secret. */
    unsigned char zero[CACHE_KEY_SECRET_BYTES] = {0}, ref[32];
    CHECK_EQ_INT(reference_key(zero, "same-token", 10, NULL, 0, ref), 0);
    CHECK(memcmp(ka.bytes, ref, 32) != 0);
    CHECK(memcmp(kb.bytes, ref, 32) != 0);
    cache_key again = key_for(a, "same-token", NULL, 0);
    CHECK(same(&ka, &again));
    cache_keyer_free(a);
    cache_keyer_free(b);
}

static void test_parts_and_domains(void)
{
    cache_keyer *k = cache_keyer_new_with_secret(secret_a);
    REQUIRE(k != NULL);
    const char *const parts[] = {"user", "ns", "create"};
    const size_t lens[] = {4, 2, 6};
    cache_key d1, d2, d1again;
    CHECK_EQ_INT(cache_key_for_parts(k, 1, parts, lens, 3, &d1), 0);
    CHECK_EQ_INT(cache_key_for_parts(k, 2, parts, lens, 3, &d2), 0);
    CHECK_EQ_INT(cache_key_for_parts(k, 1, parts, lens, 3, &d1again), 0);
    CHECK(!same(&d1, &d2));
    CHECK(same(&d1, &d1again));

    /* Boundaries between parts matter; lens (not NULs) delimit parts. */
    const char *const joined[] = {"userns", "create"};
    const size_t jlens[] = {6, 6};
    cache_key j;
    CHECK_EQ_INT(cache_key_for_parts(k, 1, joined, jlens, 2, &j), 0);
    CHECK(!same(&d1, &j));
    const char *const with_nul[] = {"a\0b", "c"};
    const size_t nlens[] = {3, 1};
    const size_t nlens_short[] = {1, 1};
    cache_key n1, n2;
    CHECK_EQ_INT(cache_key_for_parts(k, 1, with_nul, nlens, 2, &n1), 0);
    CHECK_EQ_INT(cache_key_for_parts(k, 1, with_nul, nlens_short, 2, &n2), 0);
    CHECK(!same(&n1, &n2));
    cache_key zero_parts, one_empty;
    const char *const e[] = {""};
    const size_t elen[] = {0};
    CHECK_EQ_INT(cache_key_for_parts(k, 1, NULL, NULL, 0, &zero_parts), 0);
    CHECK_EQ_INT(cache_key_for_parts(k, 1, e, elen, 1, &one_empty), 0);
    CHECK(!same(&zero_parts, &one_empty));
    /* Another secret: another key. */
    cache_keyer *other = cache_keyer_new_with_secret(secret_b);
    REQUIRE(other != NULL);
    cache_key o;
    CHECK_EQ_INT(cache_key_for_parts(other, 1, parts, lens, 3, &o), 0);
    CHECK(!same(&d1, &o));
    cache_keyer_free(other);
    cache_keyer_free(k);
}

/* The keys are computed from precomputed inner/outer SHA-256 states and streamed input:
 * equal to OpenSSL's HMAC() over the whole encoding at every length around SHA-256's
 * block boundaries (the ipad block, then 64-byte blocks of input), for token keys and for
 * part lists (the SubjectAccessReview key), from a keyer and from its clone. */
static void test_precomputed_states_equal_hmac(void)
{
    cache_keyer *k = cache_keyer_new_with_secret(secret_b);
    REQUIRE(k != NULL);
    cache_keyer *clone = cache_keyer_clone(k);
    REQUIRE(clone != NULL);
    char text[400];
    for (size_t i = 0; i < sizeof(text); i++) text[i] = (char)('a' + i % 26);
    const char *const auds[] = {"https://kubernetes.default.svc"};
    int mismatches = 0;
    for (size_t len = 0; len <= 300; len++) {
        unsigned char ref[32];
        cache_key key, key2;
        CHECK_EQ_INT(cache_key_for_token(k, text, len, auds, len % 2, &key), 0);
        CHECK_EQ_INT(cache_key_for_token(clone, text, len, auds, len % 2, &key2), 0);
        CHECK_EQ_INT(reference_key(secret_b, text, len, auds, len % 2, ref), 0);
        mismatches += memcmp(key.bytes, ref, 32) != 0 || memcmp(key2.bytes, ref, 32) != 0;

        /* Parts: domain byte, be32(n), { be32(len) part }, as HMAC() over one buffer. */
        const char *parts[2] = {text, text + 7};
        size_t lens[2] = {len, len / 3};
        unsigned char msg[1 + 4 + 4 + 400 + 4 + 400];
        size_t o = 0;
        msg[o++] = 9;
        be32(msg + o, 2);
        o += 4;
        for (size_t i = 0; i < 2; i++) {
            be32(msg + o, (uint32_t)lens[i]);
            o += 4;
            memcpy(msg + o, parts[i], lens[i]);
            o += lens[i];
        }
        unsigned int mac_len = 0;
        CHECK(HMAC(EVP_sha256(), secret_b, CACHE_KEY_SECRET_BYTES, msg, o, ref, &mac_len) != NULL);
        CHECK_EQ_INT(cache_key_for_parts(k, 9, parts, lens, 2, &key), 0);
        mismatches += memcmp(key.bytes, ref, 32) != 0;
    }
    CHECK_EQ_INT(mismatches, 0);
    cache_keyer_free(clone);
    cache_keyer_free(k);
}

static void test_large_tokens(void)
{
    cache_keyer *k = cache_keyer_new_with_secret(secret_a);
    REQUIRE(k != NULL);
    size_t big = 100 * 1024;
    char *token = malloc(big + 1);
    if (!token) {
        cache_keyer_free(k);
        REQUIRE(token != NULL);
    }
    for (size_t i = 0; i < big; i++)
        token[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i % 64];
    token[big] = '\0';
    const char *const auds[] = {"https://kubernetes.default.svc", "aud-2"};
    unsigned char ref[32];
    cache_key key;
    CHECK_EQ_INT(cache_key_for_token(k, token, big, auds, 2, &key), 0);
    CHECK_EQ_INT(reference_key(secret_a, token, big, auds, 2, ref), 0);
    CHECK_MEM(key.bytes, ref, 32);

    /* Around the point where the encoding moves from the stack to the heap, including
     * when the audiences (not the token) push it over. */
    int mismatches = 0;
    for (size_t len = 20400; len <= 20500; len++) {
        CHECK_EQ_INT(cache_key_for_token(k, token, len, auds, 2, &key), 0);
        CHECK_EQ_INT(reference_key(secret_a, token, len, auds, 2, ref), 0);
        mismatches += memcmp(key.bytes, ref, 32) != 0;
    }
    CHECK_EQ_INT(mismatches, 0);

    /* One byte changed at the very end of a 100 KB token changes the key. */
    CHECK_EQ_INT(cache_key_for_token(k, token, big, auds, 2, &key), 0);
    token[big - 1] ^= 1;
    cache_key changed;
    CHECK_EQ_INT(cache_key_for_token(k, token, big, auds, 2, &changed), 0);
    CHECK(!same(&key, &changed));

    /* A large part through cache_key_for_parts. */
    const char *parts[] = {token};
    size_t lens[] = {big};
    cache_key p1, p2;
    CHECK_EQ_INT(cache_key_for_parts(k, 3, parts, lens, 1, &p1), 0);
    CHECK_EQ_INT(cache_key_for_parts(k, 3, parts, lens, 1, &p2), 0);
    CHECK(same(&p1, &p2));
    free(token);
    cache_keyer_free(k);
}

int main(void)
{
    RUN(test_matches_reference_hmac);
    RUN(test_precomputed_states_equal_hmac);
    RUN(test_deterministic_and_secret);
    RUN(test_unambiguous_encoding);
    RUN(test_key_id);
    RUN(test_random_secrets);
    RUN(test_parts_and_domains);
    RUN(test_large_tokens);
    return UNIT_EXIT();
}
