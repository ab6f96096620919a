/* Unit tests: the sharded LRU verdict cache (core/token_cache.h). */
#include "token_cache.h"
#include "unit.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* Keys are HMACs in production: uniform bytes. Derive them from an index with splitmix64 so
 * that they spread over shards and buckets like real keys, and differ per (index, salt). */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static cache_key key_of(uint64_t index)
{
    cache_key key;
    uint64_t state = index * 0x100000001b3ULL + 12345;
    for (size_t i = 0; i < CACHE_KEY_BYTES; i += 8) {
        uint64_t w = splitmix64(&state);
        memcpy(key.bytes + i, &w, 8);
    }
    return key;
}

static token_cache *new_cache(size_t max_entries, size_t shards, unsigned negative_percent)
{
    token_cache_options options = {.max_entries = max_entries, .shards = shards, .negative_percent = negative_percent};
    return token_cache_new(&options);
}

static token_cache_stats stats_of(token_cache *cache)
{
    token_cache_stats stats;
    token_cache_get_stats(cache, &stats);
    return stats;
}

/* Looks a key up at now_ms with a full-size buffer; returns the result only. */
static token_cache_result look(token_cache *cache, uint64_t index, int64_t now_ms)
{
    unsigned char value[TOKEN_CACHE_VALUE_MAX];
    size_t len = 0;
    cache_key key = key_of(index);
    return token_cache_lookup(cache, &key, now_ms, value, sizeof(value), &len, NULL);
}

static int put(token_cache *cache, uint64_t index, bool negative, const char *value, int64_t expires_at_ms,
               int64_t now_ms)
{
    cache_key key = key_of(index);
    return token_cache_insert(cache, &key, negative, value, strlen(value), expires_at_ms, now_ms);
}

static void test_new_rejects_bad_options(void)
{
    CHECK(token_cache_new(NULL) == NULL);
    token_cache_options zero = {.max_entries = 0, .shards = 1};
    CHECK(token_cache_new(&zero) == NULL);
    token_cache_free(NULL); /* no-op */
}

static void test_hit_miss_and_exact_copy(void)
{
    token_cache *cache = new_cache(100, 1, 0);
    REQUIRE(cache != NULL);
    cache_key k1 = key_of(1), k2 = key_of(2);

    unsigned char out[TOKEN_CACHE_VALUE_MAX];
    size_t len = 999;
    int64_t exp = -1;
    CHECK_EQ_INT(token_cache_lookup(cache, &k1, 0, out, sizeof(out), &len, &exp), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(len, 999); /* untouched on a miss */
    CHECK_EQ_INT(exp, -1);

    /* A value with NUL bytes and high bytes: copied byte for byte, length included. */
    const unsigned char value[] = {0x00, 0x01, 'a', 0xff, 0x00, 0x7f, 'z', 0x80};
    CHECK_EQ_INT(token_cache_insert(cache, &k1, false, value, sizeof(value), 5000, 1000), 0);
    memset(out, 0xAA, sizeof(out));
    CHECK_EQ_INT(token_cache_lookup(cache, &k1, 1000, out, sizeof(out), &len, &exp), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(len, sizeof(value));
    CHECK_MEM(out, value, sizeof(value));
    CHECK_EQ_INT(out[sizeof(value)], 0xAA); /* nothing written past the value */
    CHECK_EQ_INT(exp, 5000);

    /* value_len and expires_at_ms may be NULL. */
    CHECK_EQ_INT(token_cache_lookup(cache, &k1, 1000, out, sizeof(out), NULL, NULL), TOKEN_CACHE_HIT_POSITIVE);

    /* Another key still misses; a negative entry is reported as such. */
    CHECK_EQ_INT(token_cache_lookup(cache, &k2, 1000, out, sizeof(out), &len, &exp), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(token_cache_insert(cache, &k2, true, "no", 2, 3000, 1000), 0);
    CHECK_EQ_INT(token_cache_lookup(cache, &k2, 1000, out, sizeof(out), &len, &exp), TOKEN_CACHE_HIT_NEGATIVE);
    CHECK_EQ_INT(len, 2);
    CHECK_MEM(out, "no", 2);
    CHECK_EQ_INT(exp, 3000);

    /* A value of exactly TOKEN_CACHE_VALUE_MAX bytes round-trips. */
    static unsigned char big[TOKEN_CACHE_VALUE_MAX];
    for (size_t i = 0; i < sizeof(big); i++) big[i] = (unsigned char)(i * 7 + 3);
    cache_key k3 = key_of(3);
    CHECK_EQ_INT(token_cache_insert(cache, &k3, false, big, sizeof(big), 5000, 1000), 0);
    memset(out, 0, sizeof(out));
    CHECK_EQ_INT(token_cache_lookup(cache, &k3, 1000, out, sizeof(out), &len, NULL), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(len, sizeof(big));
    CHECK_MEM(out, big, sizeof(big));

    /* An empty value is a valid entry. */
    cache_key k4 = key_of(4);
    CHECK_EQ_INT(token_cache_insert(cache, &k4, false, NULL, 0, 5000, 1000), 0);
    len = 77;
    CHECK_EQ_INT(token_cache_lookup(cache, &k4, 1000, out, sizeof(out), &len, NULL), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(len, 0);

    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 4);
    CHECK_EQ_INT(st.negative_entries, 1);
    CHECK_EQ_INT(st.evictions, 0);
    CHECK_EQ_INT(st.capacity, 100);
    token_cache_free(cache);
}

static void test_expiry_boundary(void)
{
    token_cache *cache = new_cache(100, 4, 0);
    REQUIRE(cache != NULL);
    CHECK_EQ_INT(put(cache, 1, false, "pos", 2000, 1000), 0);
    CHECK_EQ_INT(put(cache, 2, true, "neg", 2000, 1000), 0);
    CHECK_EQ_INT(stats_of(cache).entries, 2);

    CHECK_EQ_INT(look(cache, 1, 1999), TOKEN_CACHE_HIT_POSITIVE); /* one ms before */
    CHECK_EQ_INT(look(cache, 2, 1999), TOKEN_CACHE_HIT_NEGATIVE);
    CHECK_EQ_INT(stats_of(cache).entries, 2);

    CHECK_EQ_INT(look(cache, 1, 2000), TOKEN_CACHE_MISS); /* now == expires_at: expired */
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 1); /* the expired entry was removed */
    CHECK_EQ_INT(st.negative_entries, 1);
    CHECK_EQ_INT(st.evictions, 0); /* expiry is not an eviction */
    /* Removed, not just hidden: even an earlier clock does not bring it back. */
    CHECK_EQ_INT(look(cache, 1, 1500), TOKEN_CACHE_MISS);

    CHECK_EQ_INT(look(cache, 2, 2500), TOKEN_CACHE_MISS);
    st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.negative_entries, 0);
    CHECK_EQ_INT(st.evictions, 0);
    token_cache_free(cache);
}

static void test_insert_rejects(void)
{
    token_cache *cache = new_cache(100, 1, 0);
    REQUIRE(cache != NULL);
    static unsigned char big[TOKEN_CACHE_VALUE_MAX + 1];
    cache_key k = key_of(1);
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, big, sizeof(big), 5000, 1000), -1);
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "x", 1, 1000, 1000), -1); /* expires now */
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "x", 1, 999, 1000), -1);  /* in the past */
    CHECK_EQ_INT(token_cache_insert(cache, &k, true, "x", 1, 999, 1000), -1);
    CHECK_EQ_INT(stats_of(cache).entries, 0);
    CHECK_EQ_INT(look(cache, 1, 0), TOKEN_CACHE_MISS);

    /* A rejected insert does not disturb an existing entry for the key. */
    CHECK_EQ_INT(put(cache, 1, false, "kept", 5000, 1000), 0);
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, big, sizeof(big), 5000, 1000), -1);
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "y", 1, 10, 1000), -1);
    unsigned char out[TOKEN_CACHE_VALUE_MAX];
    size_t len = 0;
    CHECK_EQ_INT(token_cache_lookup(cache, &k, 1000, out, sizeof(out), &len, NULL), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_STRN((const char *)out, len, "kept");
    token_cache_free(cache);
}

static void test_small_value_cap(void)
{
    /* The contract requires value_cap >= the value's size; with less, the cache neither
     * overflows the buffer nor reports a hit, and the entry stays for a proper lookup. */
    token_cache *cache = new_cache(10, 1, 0);
    REQUIRE(cache != NULL);
    cache_key k = key_of(7);
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "0123456789", 10, 5000, 1000), 0);
    unsigned char out[16];
    memset(out, 0xEE, sizeof(out));
    size_t len = 12345;
    int64_t exp = -7;
    CHECK_EQ_INT(token_cache_lookup(cache, &k, 1000, out, 9, &len, &exp), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(out[0], 0xEE);
    CHECK_EQ_INT(out[8], 0xEE);
    CHECK_EQ_INT(len, 12345);
    CHECK_EQ_INT(exp, -7);
    CHECK_EQ_INT(stats_of(cache).entries, 1);
    /* value_cap == the value's size is enough. */
    CHECK_EQ_INT(token_cache_lookup(cache, &k, 1000, out, 10, &len, &exp), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(len, 10);
    CHECK_MEM(out, "0123456789", 10);
    CHECK_EQ_INT(out[10], 0xEE);
    token_cache_free(cache);
}

static void test_lru_order_one_shard(void)
{
    token_cache *cache = new_cache(3, 1, 0);
    REQUIRE(cache != NULL);
    enum { A = 10, B = 11, C = 12, D = 13, E = 14 };
    CHECK_EQ_INT(put(cache, A, false, "a", 10000, 0), 0);
    CHECK_EQ_INT(put(cache, B, false, "b", 10000, 0), 0);
    CHECK_EQ_INT(put(cache, C, false, "c", 10000, 0), 0);
    CHECK_EQ_INT(stats_of(cache).entries, 3);
    CHECK_EQ_INT(stats_of(cache).evictions, 0);

    CHECK_EQ_INT(look(cache, A, 1), TOKEN_CACHE_HIT_POSITIVE); /* touch a: b is now LRU */
    CHECK_EQ_INT(put(cache, D, false, "d", 10000, 1), 0);
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 3);
    CHECK_EQ_INT(st.evictions, 1);
    CHECK_EQ_INT(look(cache, B, 2), TOKEN_CACHE_MISS);
    /* Order now (MRU first): d a c. Looking each up reorders: check c is next to go. */
    CHECK_EQ_INT(put(cache, E, false, "e", 10000, 2), 0);
    CHECK_EQ_INT(look(cache, C, 3), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(look(cache, A, 3), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(look(cache, D, 3), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(look(cache, E, 3), TOKEN_CACHE_HIT_POSITIVE);
    st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 3);
    CHECK_EQ_INT(st.evictions, 2);

    /* Replacing an existing key refreshes it without evicting anything. */
    CHECK_EQ_INT(put(cache, A, false, "a2", 10000, 4), 0); /* order: a e d */
    CHECK_EQ_INT(stats_of(cache).evictions, 2);
    CHECK_EQ_INT(put(cache, B, false, "b", 10000, 4), 0); /* evicts d */
    CHECK_EQ_INT(look(cache, D, 5), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(look(cache, A, 5), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(look(cache, E, 5), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(look(cache, B, 5), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_EQ_INT(stats_of(cache).evictions, 3);
    token_cache_free(cache);
}

static void test_capacity_and_bound(void)
{
    static const size_t bounds[] = {10000, 7, 1, 16, 17, 100};
    for (size_t b = 0; b < sizeof(bounds) / sizeof(bounds[0]); b++) {
        size_t max = bounds[b];
        token_cache *cache = new_cache(max, 16, 0);
        CHECK(cache != NULL);
        if (!cache) continue;
        CHECK_EQ_INT(stats_of(cache).capacity, max);
        size_t inserts = max * 10 + 50;
        int over = 0;
        for (size_t i = 0; i < inserts; i++) {
            if (put(cache, 1000000 * b + i, false, "v", 100000, 0) != 0) over++;
            if (i % 97 == 0 && stats_of(cache).entries > max) over++;
        }
        CHECK_EQ_INT(over, 0);
        token_cache_stats st = stats_of(cache);
        CHECK_EQ_INT(st.entries, max); /* ten times the bound: every shard is full */
        CHECK_EQ_INT(st.capacity, max);
        CHECK_EQ_INT(st.evictions, inserts - max);
        CHECK_EQ_INT(st.negative_entries, 0);
        /* The most recent insert is always present. */
        CHECK_EQ_INT(look(cache, 1000000 * b + inserts - 1, 1), TOKEN_CACHE_HIT_POSITIVE);
        token_cache_free(cache);
    }
    /* shards = 0 means 16; capacity is still exactly the bound. */
    token_cache *cache = new_cache(10000, 0, 0);
    REQUIRE(cache != NULL);
    CHECK_EQ_INT(stats_of(cache).capacity, 10000);
    token_cache_free(cache);
}

static void test_negatives_never_evict_positives(void)
{
    /* One shard, exactly full of positives: no negative finds room. */
    token_cache *cache = new_cache(100, 1, 0);
    REQUIRE(cache != NULL);
    for (uint64_t i = 0; i < 100; i++) CHECK_EQ_INT(put(cache, i, false, "good", 100000, 0), 0);
    int stored = 0;
    for (uint64_t i = 0; i < 1000; i++)
        if (put(cache, 5000 + i, true, "bad", 100000, 0) == 0) stored++;
    CHECK_EQ_INT(stored, 0);
    int present = 0;
    for (uint64_t i = 0; i < 100; i++) present += look(cache, i, 1) == TOKEN_CACHE_HIT_POSITIVE;
    CHECK_EQ_INT(present, 100);
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 100);
    CHECK_EQ_INT(st.negative_entries, 0);
    CHECK_EQ_INT(st.evictions, 0);
    token_cache_free(cache);

    /* 16 shards, positives at about half the bound, then ten times as many negatives. */
    cache = new_cache(1000, 16, 0);
    REQUIRE(cache != NULL);
    for (uint64_t i = 0; i < 400; i++) CHECK_EQ_INT(put(cache, i, false, "good", 100000, 0), 0);
    present = 0;
    for (uint64_t i = 0; i < 400; i++) present += look(cache, i, 1) == TOKEN_CACHE_HIT_POSITIVE;
    CHECK_EQ_INT(present, 400); /* no shard overflowed before the flood */
    for (uint64_t i = 0; i < 4000; i++) {
        int rc = put(cache, 100000 + i, true, "bad", 100000, 1);
        CHECK(rc == 0 || rc == 1);
    }
    present = 0;
    for (uint64_t i = 0; i < 400; i++) present += look(cache, i, 2) == TOKEN_CACHE_HIT_POSITIVE;
    CHECK_EQ_INT(present, 400);
    st = stats_of(cache);
    CHECK_EQ_INT(st.entries - st.negative_entries, 400);
    CHECK(st.negative_entries > 0);
    CHECK(st.negative_entries <= st.capacity / 4);
    CHECK(st.entries <= st.capacity);

    /* A positive insert into a full shard makes room by evicting negatives first. */
    token_cache_free(cache);
    cache = new_cache(8, 1, 0); /* negative share: 2 */
    REQUIRE(cache != NULL);
    for (uint64_t i = 0; i < 6; i++) CHECK_EQ_INT(put(cache, i, false, "good", 100000, 0), 0);
    CHECK_EQ_INT(put(cache, 100, true, "bad", 100000, 0), 0);
    CHECK_EQ_INT(put(cache, 101, true, "bad", 100000, 0), 0);
    CHECK_EQ_INT(put(cache, 6, false, "good", 100000, 0), 0);
    CHECK_EQ_INT(look(cache, 100, 1), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(look(cache, 101, 1), TOKEN_CACHE_HIT_NEGATIVE);
    present = 0;
    for (uint64_t i = 0; i < 7; i++) present += look(cache, i, 1) == TOKEN_CACHE_HIT_POSITIVE;
    CHECK_EQ_INT(present, 7);
    CHECK_EQ_INT(stats_of(cache).evictions, 1);
    token_cache_free(cache);
}

static void test_negative_share_bound(void)
{
    /* One shard of 100: at most 25 negatives, the newest ones. */
    token_cache *cache = new_cache(100, 1, 0);
    REQUIRE(cache != NULL);
    for (uint64_t i = 0; i < 1000; i++) CHECK_EQ_INT(put(cache, i, true, "bad", 100000, 0), 0);
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.negative_entries, 25);
    CHECK_EQ_INT(st.entries, 25);
    CHECK_EQ_INT(st.evictions, 975);
    CHECK_EQ_INT(look(cache, 999, 1), TOKEN_CACHE_HIT_NEGATIVE);
    CHECK_EQ_INT(look(cache, 975, 1), TOKEN_CACHE_HIT_NEGATIVE);
    CHECK_EQ_INT(look(cache, 974, 1), TOKEN_CACHE_MISS);
    /* Positives still get the rest of the shard. */
    for (uint64_t i = 0; i < 75; i++) CHECK_EQ_INT(put(cache, 10000 + i, false, "good", 100000, 0), 0);
    st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 100);
    CHECK_EQ_INT(st.negative_entries, 25);
    token_cache_free(cache);

    /* 16 shards with the default share: never more than 25% of the capacity. */
    cache = new_cache(10000, 16, 0);
    REQUIRE(cache != NULL);
    int over = 0;
    for (uint64_t i = 0; i < 30000; i++) {
        put(cache, i, true, "bad", 100000, 0);
        if (i % 101 == 0 && stats_of(cache).negative_entries > 2500) over++;
    }
    CHECK_EQ_INT(over, 0);
    st = stats_of(cache);
    CHECK(st.negative_entries <= st.capacity / 4);
    CHECK(st.negative_entries >= st.capacity / 4 - 16); /* floor per shard loses < 1 each */
    CHECK_EQ_INT(st.entries, st.negative_entries);
    token_cache_free(cache);

    /* An explicit share. */
    cache = new_cache(100, 1, 50);
    REQUIRE(cache != NULL);
    for (uint64_t i = 0; i < 500; i++) put(cache, i, true, "bad", 100000, 0);
    CHECK_EQ_INT(stats_of(cache).negative_entries, 50);
    token_cache_free(cache);
}

static void test_negative_share_zero(void)
{
    /* A one-entry shard has no negative share (shards of 2+ keep at least one). */
    token_cache *cache = new_cache(1, 1, 0);
    REQUIRE(cache != NULL);
    CHECK_EQ_INT(put(cache, 1, true, "bad", 10000, 0), 1);
    CHECK_EQ_INT(look(cache, 1, 1), TOKEN_CACHE_MISS);
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.negative_entries, 0);
    CHECK_EQ_INT(st.evictions, 0);
    CHECK_EQ_INT(put(cache, 2, false, "good", 10000, 0), 0);
    CHECK_EQ_INT(look(cache, 2, 1), TOKEN_CACHE_HIT_POSITIVE);
    token_cache_free(cache);

    /* 3 entries * 25% rounds down to 0, but a shard of 2+ keeps one negative. */
    cache = new_cache(3, 1, 0);
    REQUIRE(cache != NULL);
    CHECK_EQ_INT(put(cache, 1, true, "bad", 10000, 0), 0);
    CHECK_EQ_INT(put(cache, 2, true, "bad", 10000, 0), 0);
    CHECK_EQ_INT(stats_of(cache).negative_entries, 1);
    token_cache_free(cache);
}

static void test_replace_same_key(void)
{
    token_cache *cache = new_cache(100, 1, 0);
    REQUIRE(cache != NULL);
    unsigned char out[TOKEN_CACHE_VALUE_MAX];
    size_t len = 0;
    int64_t exp = 0;
    cache_key k = key_of(42);

    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "alice", 5, 5000, 0), 0);
    CHECK_EQ_INT(token_cache_insert(cache, &k, true, "nope", 4, 3000, 0), 0);
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 1);
    CHECK_EQ_INT(st.negative_entries, 1);
    CHECK_EQ_INT(token_cache_lookup(cache, &k, 1, out, sizeof(out), &len, &exp), TOKEN_CACHE_HIT_NEGATIVE);
    CHECK_STRN((const char *)out, len, "nope");
    CHECK_EQ_INT(exp, 3000);

    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "bob", 3, 7000, 0), 0);
    st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 1);
    CHECK_EQ_INT(st.negative_entries, 0);
    CHECK_EQ_INT(token_cache_lookup(cache, &k, 1, out, sizeof(out), &len, &exp), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_STRN((const char *)out, len, "bob");
    CHECK_EQ_INT(exp, 7000);

    /* Same kind, new value and a shorter lifetime: the new one wins. */
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "carol", 5, 2000, 0), 0);
    CHECK_EQ_INT(token_cache_lookup(cache, &k, 1, out, sizeof(out), &len, &exp), TOKEN_CACHE_HIT_POSITIVE);
    CHECK_STRN((const char *)out, len, "carol");
    CHECK_EQ_INT(exp, 2000);
    CHECK_EQ_INT(look(cache, 42, 2000), TOKEN_CACHE_MISS);
    st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.evictions, 0); /* replacing is not evicting */
    token_cache_free(cache);
}

/* "Stores ... replacing any entry for key": a newer negative verdict that cannot be stored
 * must still not leave the older positive one answering for the key (a revoked token would
 * keep passing until the old TTL ends). Both ways a negative goes unstored are covered. */
static void test_unstored_negative_drops_old_positive(void)
{
    /* 1. The negative share is zero (a one-entry shard). */
    token_cache *cache = new_cache(1, 1, 0);
    REQUIRE(cache != NULL);
    CHECK_EQ_INT(put(cache, 1, false, "alice", 10000, 0), 0);
    CHECK_EQ_INT(put(cache, 1, true, "revoked", 10000, 1), 1);
    CHECK_EQ_INT(look(cache, 1, 2), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(stats_of(cache).entries, 0);
    token_cache_free(cache);

    /* 2. The shard is full of positives and holds no negative to evict. */
    cache = new_cache(4, 1, 0); /* negative share: 1 */
    REQUIRE(cache != NULL);
    for (uint64_t i = 1; i <= 4; i++) CHECK_EQ_INT(put(cache, i, false, "good", 10000, 0), 0);
    CHECK_EQ_INT(put(cache, 1, true, "revoked", 10000, 1), 0); /* room made by replacing */
    CHECK_EQ_INT(look(cache, 1, 2), TOKEN_CACHE_HIT_NEGATIVE);
    token_cache_free(cache);
}

static void test_remove(void)
{
    token_cache *cache = new_cache(100, 4, 0);
    REQUIRE(cache != NULL);
    cache_key k1 = key_of(1), k2 = key_of(2), k3 = key_of(3);
    CHECK_EQ_INT(put(cache, 1, false, "one", 5000, 0), 0);
    CHECK_EQ_INT(put(cache, 2, true, "two", 5000, 0), 0);
    CHECK_EQ_INT(token_cache_remove(cache, &k1), 1);
    CHECK_EQ_INT(token_cache_remove(cache, &k1), 0);
    CHECK_EQ_INT(token_cache_remove(cache, &k3), 0);
    CHECK_EQ_INT(look(cache, 1, 1), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(look(cache, 2, 1), TOKEN_CACHE_HIT_NEGATIVE);
    CHECK_EQ_INT(token_cache_remove(cache, &k2), 1);
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.negative_entries, 0);
    CHECK_EQ_INT(st.evictions, 0);
    token_cache_free(cache);
}

static void test_flush_all(void)
{
    token_cache *cache = new_cache(1000, 16, 0);
    REQUIRE(cache != NULL);
    CHECK_EQ_INT(token_cache_flush_all(cache), 0);
    for (uint64_t i = 0; i < 300; i++) CHECK_EQ_INT(put(cache, i, i % 3 == 0, "v", 5000, 0), 0);
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 300);
    CHECK_EQ_INT(st.negative_entries, 100);
    CHECK_EQ_INT(token_cache_flush_all(cache), 300);
    st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.negative_entries, 0);
    CHECK_EQ_INT(st.evictions, 0); /* flushes are not evictions */
    CHECK_EQ_INT(look(cache, 1, 1), TOKEN_CACHE_MISS);
    CHECK_EQ_INT(token_cache_flush_all(cache), 0);
    /* Still usable after a flush. */
    CHECK_EQ_INT(put(cache, 1, false, "v", 5000, 0), 0);
    CHECK_EQ_INT(look(cache, 1, 1), TOKEN_CACHE_HIT_POSITIVE);
    token_cache_free(cache);
}

typedef struct match_ctx {
    int calls;
    int negatives_seen;
} match_ctx;

static bool starts_with_A(const void *value, size_t value_len, bool negative, void *ctx)
{
    match_ctx *m = ctx;
    m->calls++;
    if (negative) m->negatives_seen++;
    return value_len > 0 && ((const char *)value)[0] == 'A';
}

static void test_flush_matching(void)
{
    token_cache *cache = new_cache(1000, 16, 0);
    REQUIRE(cache != NULL);
    /* 0..49: "Alice..." positive; 50..99: "Bob..." positive; 100..109: "A-neg" negative. */
    for (uint64_t i = 0; i < 50; i++) CHECK_EQ_INT(put(cache, i, false, "Alice", 5000, 0), 0);
    for (uint64_t i = 50; i < 100; i++) CHECK_EQ_INT(put(cache, i, false, "Bob", 5000, 0), 0);
    for (uint64_t i = 100; i < 110; i++) CHECK_EQ_INT(put(cache, i, true, "A-neg", 5000, 0), 0);
    match_ctx m = {0, 0};
    CHECK_EQ_INT(token_cache_flush_matching(cache, starts_with_A, &m), 60);
    CHECK_EQ_INT(m.calls, 110);
    CHECK_EQ_INT(m.negatives_seen, 10);
    int alice = 0, bob = 0, neg = 0;
    for (uint64_t i = 0; i < 50; i++) alice += look(cache, i, 1) != TOKEN_CACHE_MISS;
    for (uint64_t i = 50; i < 100; i++) bob += look(cache, i, 1) == TOKEN_CACHE_HIT_POSITIVE;
    for (uint64_t i = 100; i < 110; i++) neg += look(cache, i, 1) != TOKEN_CACHE_MISS;
    CHECK_EQ_INT(alice, 0);
    CHECK_EQ_INT(bob, 50);
    CHECK_EQ_INT(neg, 0);
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 50);
    CHECK_EQ_INT(st.negative_entries, 0);
    m.calls = 0;
    CHECK_EQ_INT(token_cache_flush_matching(cache, starts_with_A, &m), 0);
    CHECK_EQ_INT(m.calls, 50);
    token_cache_free(cache);
}

/* ---- concurrency smoke test ---- */

#define CONC_KEYS 256
#define CONC_VALUE 24

typedef struct conc_shared {
    token_cache *cache;
    struct timespec deadline;
    int corrupt; /* a hit with a value that is not the key's */
    int bad_rc;  /* an insert result outside the contract */
    long ops;
} conc_shared;

typedef struct conc_thread {
    conc_shared *shared;
    uint64_t seed;
    int corrupt, bad_rc;
    long ops;
} conc_thread;

/* Value of key i: CONC_VALUE bytes, [0] = i & 0xff, [1] = negative, rest = i ^ position. */
static void conc_value(uint64_t i, bool negative, unsigned char *out)
{
    out[0] = (unsigned char)i;
    out[1] = negative ? 1 : 0;
    for (size_t p = 2; p < CONC_VALUE; p++) out[p] = (unsigned char)(i ^ p);
}

static bool conc_value_ok(uint64_t i, const unsigned char *value, size_t len, bool negative)
{
    unsigned char want[CONC_VALUE];
    conc_value(i, negative, want);
    return len == CONC_VALUE && memcmp(value, want, CONC_VALUE) == 0;
}

static bool conc_match(const void *value, size_t value_len, bool negative, void *ctx)
{
    int *corrupt = ctx;
    const unsigned char *v = value;
    if (value_len != CONC_VALUE || v[1] != (negative ? 1 : 0)) (*corrupt)++;
    return v[0] % 7 == 0;
}

static bool past(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

static void *conc_worker(void *arg)
{
    conc_thread *t = arg;
    token_cache *cache = t->shared->cache;
    uint64_t state = t->seed;
    unsigned char value[CONC_VALUE], out[TOKEN_CACHE_VALUE_MAX];
    while (!past(&t->shared->deadline)) {
        for (int n = 0; n < 64; n++) {
            uint64_t r = splitmix64(&state);
            uint64_t i = r % CONC_KEYS;
            cache_key key = key_of(i);
            int64_t now = (int64_t)((r >> 16) % 1000);
            unsigned op = (unsigned)((r >> 32) % 100);
            if (op < 45) {
                bool negative = (i % 2) == 1; /* a key's kind is fixed: values can be checked */
                conc_value(i, negative, value);
                int rc = token_cache_insert(cache, &key, negative, value, sizeof(value),
                                            now + 1 + (int64_t)((r >> 40) % 1000), now);
                if (rc != 0 && !(rc == 1 && negative)) t->bad_rc++;
            } else if (op < 95) {
                size_t len = 0;
                token_cache_result res = token_cache_lookup(cache, &key, now, out, sizeof(out), &len, NULL);
                if (res == TOKEN_CACHE_HIT_POSITIVE && (i % 2 != 0 || !conc_value_ok(i, out, len, false))) t->corrupt++;
                if (res == TOKEN_CACHE_HIT_NEGATIVE && (i % 2 != 1 || !conc_value_ok(i, out, len, true))) t->corrupt++;
            } else if (op < 97) {
                token_cache_remove(cache, &key);
            } else if (op < 99) {
                token_cache_flush_matching(cache, conc_match, &t->corrupt);
            } else if ((r >> 48) % 8 == 0) {
                token_cache_flush_all(cache);
            } else {
                token_cache_stats st;
                token_cache_get_stats(cache, &st);
                if (st.entries > st.capacity || st.negative_entries > st.entries) t->corrupt++;
            }
            t->ops++;
        }
    }
    return NULL;
}

/* Refresh-ahead: a positive entry inserted at 0 expiring at 1000 with 10 % becomes due at
 * 900; exactly one hit claims it per retry interval; a new insert clears the claim;
 * negatives never become due; 0 % never. */
static void test_refresh_ahead_claims(void)
{
    token_cache_options options = {
        .max_entries = 100, .shards = 1, .refresh_ahead_percent = 10, .refresh_retry_ms = 200};
    token_cache *cache = token_cache_new(&options);
    CHECK(cache != NULL);
    cache_key k = key_of(1), n = key_of(2);
    unsigned char out[TOKEN_CACHE_VALUE_MAX];
    size_t len = 0;
    bool due = true;
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "id", 2, 1000, 0), 0);
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 899, 0, out, sizeof(out), &len, &due), TOKEN_CACHE_HIT_POSITIVE);
    CHECK(!due);
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 900, 0, out, sizeof(out), &len, &due), TOKEN_CACHE_HIT_POSITIVE);
    CHECK(due); /* the first hit in the window claims it */
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 901, 0, out, sizeof(out), &len, &due), TOKEN_CACHE_HIT_POSITIVE);
    CHECK(!due); /* claimed: no second refresh */
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 1099, 0, out, sizeof(out), &len, &due), TOKEN_CACHE_MISS);
    CHECK(!due); /* expired: a miss, never a refresh */
    /* A failed refresh: the claim lapses after refresh_retry_ms and a later hit retries. */
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "id", 2, 3000, 1000), 0);
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 2800, 0, out, sizeof(out), &len, &due),
                 TOKEN_CACHE_HIT_POSITIVE);
    CHECK(due);
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 2999, 0, out, sizeof(out), &len, &due),
                 TOKEN_CACHE_HIT_POSITIVE);
    CHECK(!due);
    CHECK_EQ_INT(token_cache_insert(cache, &k, false, "id", 2, 10000, 2000), 0);
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 2001, 0, out, sizeof(out), &len, &due),
                 TOKEN_CACHE_HIT_POSITIVE);
    CHECK(!due); /* replaced: due again only at 9200 */
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 9200, 0, out, sizeof(out), &len, &due),
                 TOKEN_CACHE_HIT_POSITIVE);
    CHECK(due);
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 9300, 0, out, sizeof(out), &len, &due),
                 TOKEN_CACHE_HIT_POSITIVE);
    CHECK(!due);
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &k, 9400, 0, out, sizeof(out), &len, &due),
                 TOKEN_CACHE_HIT_POSITIVE);
    CHECK(due); /* 200 ms after the last claim */
    CHECK_EQ_INT(token_cache_insert(cache, &n, true, "", 0, 1000, 0), 0);
    CHECK_EQ_INT(token_cache_lookup_refresh(cache, &n, 999, 0, out, sizeof(out), &len, &due), TOKEN_CACHE_HIT_NEGATIVE);
    CHECK(!due);
    token_cache_free(cache);

    token_cache *off = new_cache(100, 1, 0);
    CHECK_EQ_INT(token_cache_insert(off, &k, false, "id", 2, 1000, 0), 0);
    CHECK_EQ_INT(token_cache_lookup_refresh(off, &k, 999, 0, out, sizeof(out), &len, &due), TOKEN_CACHE_HIT_POSITIVE);
    CHECK(!due);
    token_cache_free(off);
}

static void test_concurrency_smoke(void)
{
    token_cache *cache = new_cache(64, 4, 0); /* 16 per shard, 4 negatives per shard */
    REQUIRE(cache != NULL);
    conc_shared shared = {cache, {0, 0}, 0, 0, 0};
    clock_gettime(CLOCK_MONOTONIC, &shared.deadline);
    shared.deadline.tv_nsec += 300 * 1000 * 1000;
    if (shared.deadline.tv_nsec >= 1000000000L) {
        shared.deadline.tv_sec++;
        shared.deadline.tv_nsec -= 1000000000L;
    }
    enum { THREADS = 4 };
    pthread_t tids[THREADS];
    conc_thread threads[THREADS];
    int started = 0;
    for (int i = 0; i < THREADS; i++) {
        threads[i] = (conc_thread){&shared, 0x1234u + (uint64_t)i * 7919u, 0, 0, 0};
        if (pthread_create(&tids[i], NULL, conc_worker, &threads[i]) == 0)
            started++;
        else
            break;
    }
    CHECK_EQ_INT(started, THREADS);
    for (int i = 0; i < started; i++) {
        pthread_join(tids[i], NULL);
        shared.corrupt += threads[i].corrupt;
        shared.bad_rc += threads[i].bad_rc;
        shared.ops += threads[i].ops;
    }
    CHECK_EQ_INT(shared.corrupt, 0);
    CHECK_EQ_INT(shared.bad_rc, 0);
    CHECK(shared.ops > 1000);

    /* Quiescent now: the stats must agree with what lookups find. now = 0 expires nothing
     * (every entry was inserted to expire after its own now >= 0). */
    token_cache_stats st = stats_of(cache);
    CHECK_EQ_INT(st.capacity, 64);
    CHECK(st.entries <= 64);
    CHECK(st.negative_entries <= 16);
    size_t pos = 0, neg = 0;
    unsigned char out[TOKEN_CACHE_VALUE_MAX];
    for (uint64_t i = 0; i < CONC_KEYS; i++) {
        cache_key key = key_of(i);
        size_t len = 0;
        token_cache_result res = token_cache_lookup(cache, &key, 0, out, sizeof(out), &len, NULL);
        if (res == TOKEN_CACHE_HIT_POSITIVE) {
            pos++;
            CHECK(conc_value_ok(i, out, len, false));
        } else if (res == TOKEN_CACHE_HIT_NEGATIVE) {
            neg++;
            CHECK(conc_value_ok(i, out, len, true));
        }
    }
    CHECK_EQ_INT(pos + neg, st.entries);
    CHECK_EQ_INT(neg, st.negative_entries);
    CHECK_EQ_INT(token_cache_flush_all(cache), st.entries);
    st = stats_of(cache);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.negative_entries, 0);
    printf("     (%ld operations in 4 threads)\n", shared.ops);
    token_cache_free(cache);
}

int main(void)
{
    RUN(test_new_rejects_bad_options);
    RUN(test_hit_miss_and_exact_copy);
    RUN(test_expiry_boundary);
    RUN(test_insert_rejects);
    RUN(test_small_value_cap);
    RUN(test_lru_order_one_shard);
    RUN(test_capacity_and_bound);
    RUN(test_negatives_never_evict_positives);
    RUN(test_negative_share_bound);
    RUN(test_negative_share_zero);
    RUN(test_replace_same_key);
    RUN(test_unstored_negative_drops_old_positive);
    RUN(test_remove);
    RUN(test_flush_all);
    RUN(test_flush_matching);
    RUN(test_refresh_ahead_claims);
    RUN(test_concurrency_smoke);
    return UNIT_EXIT();
}
