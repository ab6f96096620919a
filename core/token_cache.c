/* token_cache.c owns cached verdicts: their memory, their LRU order and their bounds. */
#include "token_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct cache_entry {
    struct cache_entry *hash_next;
    struct cache_entry *lru_prev, *lru_next; /* prev = more recently used */
    cache_key key;
    int64_t expires_at_ms;
    int64_t refresh_at_ms; /* positive: a hit from then on claims a refresh (INT64_MAX: never) */
    uint32_t value_len;
    uint8_t negative;
    unsigned char value[]; /* packed with the entry: one allocation per entry */
} cache_entry;

typedef struct lru_list {
    cache_entry *head; /* most recently used */
    cache_entry *tail; /* next to evict */
    size_t count;
} lru_list;

/* Aligned to a cache line so that two shards' locks never share one. */
typedef struct cache_shard {
    pthread_mutex_t lock;
    cache_entry **buckets;
    size_t bucket_mask;
    lru_list positive, negative;
    size_t capacity;          /* positive + negative bound */
    size_t negative_capacity; /* negative bound */
    uint64_t evictions;
} __attribute__((aligned(64))) cache_shard;

struct token_cache {
    cache_shard *shards;
    size_t n_shards;
    unsigned refresh_ahead_percent;
    int64_t refresh_retry_ms;
};

static uint64_t key_hash(const cache_key *key)
{
    uint64_t h;
    memcpy(&h, key->bytes, sizeof(h)); /* the key is an HMAC: already uniform */
    return h;
}

static size_t key_shard(const token_cache *cache, const cache_key *key)
{
    uint32_t s;
    memcpy(&s, key->bytes + 8, sizeof(s));
    return s % cache->n_shards;
}

static size_t round_up_pow2(size_t n)
{
    size_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

token_cache *token_cache_new(const token_cache_options *options)
{
    if (!options || options->max_entries == 0) return NULL;
    size_t n_shards = options->shards ? options->shards : 16;
    if (n_shards > options->max_entries) n_shards = options->max_entries;
    unsigned negative_percent = options->negative_percent ? options->negative_percent : 25;
    if (negative_percent > 100) negative_percent = 100;

    token_cache *cache = calloc(1, sizeof(*cache));
    if (!cache) return NULL;
    cache->shards = aligned_alloc(64, sizeof(cache_shard) * n_shards);
    if (!cache->shards) goto err;
    memset(cache->shards, 0, sizeof(cache_shard) * n_shards);
    cache->n_shards = n_shards;
    cache->refresh_ahead_percent = options->refresh_ahead_percent > 100 ? 100 : options->refresh_ahead_percent;
    cache->refresh_retry_ms = options->refresh_retry_ms > 0 ? options->refresh_retry_ms : 1000;

    for (size_t i = 0; i < n_shards; i++) {
        cache_shard *shard = &cache->shards[i];
        /* Spread the bound exactly: the shards' capacities add up to max_entries. */
        shard->capacity = options->max_entries / n_shards + (i < options->max_entries % n_shards ? 1 : 0);
        shard->negative_capacity = shard->capacity * negative_percent / 100;
        /* Even a small shard keeps one negative, so a garbage-token flood stays cached. */
        if (shard->negative_capacity == 0 && shard->capacity >= 2) shard->negative_capacity = 1;
        size_t n_buckets = round_up_pow2(shard->capacity < 8 ? 8 : shard->capacity);
        shard->buckets = calloc(n_buckets, sizeof(cache_entry *));
        if (!shard->buckets) goto err;
        shard->bucket_mask = n_buckets - 1;
        pthread_mutex_init(&shard->lock, NULL);
    }
    return cache;
err:
    if (cache->shards) {
        for (size_t i = 0; i < n_shards; i++) free(cache->shards[i].buckets);
        free(cache->shards);
    }
    free(cache);
    return NULL;
}

static void lru_unlink(lru_list *list, cache_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        list->head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        list->tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
    list->count--;
}

static void lru_push_head(lru_list *list, cache_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = list->head;
    if (list->head) list->head->lru_prev = e;
    list->head = e;
    if (!list->tail) list->tail = e;
    list->count++;
}

static lru_list *entry_list(cache_shard *shard, const cache_entry *e)
{
    return e->negative ? &shard->negative : &shard->positive;
}

/* Finds key's entry and the link that points at it (for unlinking). Lock held. */
static cache_entry **shard_find_link(cache_shard *shard, const cache_key *key)
{
    cache_entry **link = &shard->buckets[key_hash(key) & shard->bucket_mask];
    while (*link && memcmp((*link)->key.bytes, key->bytes, CACHE_KEY_BYTES) != 0) link = &(*link)->hash_next;
    return link;
}

/* Unlinks e from its bucket and LRU list and frees it. Lock held. */
static void shard_remove_entry(cache_shard *shard, cache_entry *e)
{
    cache_entry **link = shard_find_link(shard, &e->key);
    if (*link == e) *link = e->hash_next;
    lru_unlink(entry_list(shard, e), e);
    free(e);
}

void token_cache_free(token_cache *cache)
{
    if (!cache) return;
    token_cache_flush_all(cache);
    for (size_t i = 0; i < cache->n_shards; i++) {
        pthread_mutex_destroy(&cache->shards[i].lock);
        free(cache->shards[i].buckets);
    }
    free(cache->shards);
    free(cache);
}

static token_cache_result lookup(token_cache *cache, const cache_key *key, int64_t now_ms, int64_t stale_ms,
                                 void *value_out, size_t value_cap, size_t *value_len, int64_t *expires_at_ms,
                                 bool *refresh_due);

token_cache_result token_cache_lookup(token_cache *cache, const cache_key *key, int64_t now_ms, void *value_out,
                                      size_t value_cap, size_t *value_len, int64_t *expires_at_ms)
{
    return token_cache_lookup_stale(cache, key, now_ms, 0, value_out, value_cap, value_len, expires_at_ms);
}

token_cache_result token_cache_lookup_stale(token_cache *cache, const cache_key *key, int64_t now_ms, int64_t stale_ms,
                                            void *value_out, size_t value_cap, size_t *value_len,
                                            int64_t *expires_at_ms)
{
    return lookup(cache, key, now_ms, stale_ms, value_out, value_cap, value_len, expires_at_ms, NULL);
}

token_cache_result token_cache_lookup_refresh(token_cache *cache, const cache_key *key, int64_t now_ms,
                                              int64_t stale_ms, void *value_out, size_t value_cap, size_t *value_len,
                                              bool *refresh_due)
{
    return lookup(cache, key, now_ms, stale_ms, value_out, value_cap, value_len, NULL, refresh_due);
}

static token_cache_result lookup(token_cache *cache, const cache_key *key, int64_t now_ms, int64_t stale_ms,
                                 void *value_out, size_t value_cap, size_t *value_len, int64_t *expires_at_ms,
                                 bool *refresh_due)
{
    if (refresh_due) *refresh_due = false;
    cache_shard *shard = &cache->shards[key_shard(cache, key)];
    token_cache_result result = TOKEN_CACHE_MISS;
    pthread_mutex_lock(&shard->lock);
    cache_entry *e = *shard_find_link(shard, key);
    if (!e) goto done;
    if (e->expires_at_ms <= now_ms) {
        if (!e->negative && stale_ms > 0 && now_ms - e->expires_at_ms < stale_ms && e->value_len <= value_cap) {
            if (value_out && e->value_len) memcpy(value_out, e->value, e->value_len);
            if (value_len) *value_len = e->value_len;
            if (expires_at_ms) *expires_at_ms = e->expires_at_ms;
            result = TOKEN_CACHE_STALE_POSITIVE;
            goto done;
        }
        shard_remove_entry(shard, e);
        goto done;
    }
    if (e->value_len > value_cap) goto done; /* caller's buffer too small: treat as miss */
    lru_list *list = entry_list(shard, e);
    if (list->head != e) {
        lru_unlink(list, e);
        lru_push_head(list, e);
    }
    if (value_out && e->value_len) memcpy(value_out, e->value, e->value_len);
    if (value_len) *value_len = e->value_len;
    if (expires_at_ms) *expires_at_ms = e->expires_at_ms;
    if (refresh_due && now_ms >= e->refresh_at_ms) {
        /* Claimed: no other hit refreshes this entry before the retry interval passes. */
        e->refresh_at_ms = now_ms + cache->refresh_retry_ms;
        *refresh_due = true;
    }
    result = e->negative ? TOKEN_CACHE_HIT_NEGATIVE : TOKEN_CACHE_HIT_POSITIVE;
done:
    pthread_mutex_unlock(&shard->lock);
    return result;
}

/* Evicts the LRU tail of list. Lock held; list non-empty. */
static void shard_evict_tail(cache_shard *shard, lru_list *list)
{
    shard_remove_entry(shard, list->tail);
    shard->evictions++;
}

int token_cache_insert(token_cache *cache, const cache_key *key, bool negative, const void *value, size_t value_len,
                       int64_t expires_at_ms, int64_t now_ms)
{
    if (value_len > TOKEN_CACHE_VALUE_MAX || expires_at_ms <= now_ms) return -1;
    cache_shard *shard = &cache->shards[key_shard(cache, key)];
    if (negative && shard->negative_capacity == 0) {
        /* Not stored, but the verdict is newer than any entry for key: drop that entry. */
        token_cache_remove(cache, key);
        return 1;
    }

    /* Allocate outside the lock; the lock covers only pointer work. */
    cache_entry *fresh = malloc(sizeof(*fresh) + value_len);
    if (!fresh) return -1;
    memset(fresh, 0, sizeof(*fresh));
    fresh->key = *key;
    fresh->expires_at_ms = expires_at_ms;
    fresh->refresh_at_ms = INT64_MAX;
    if (!negative && cache->refresh_ahead_percent)
        fresh->refresh_at_ms = expires_at_ms - (expires_at_ms - now_ms) * cache->refresh_ahead_percent / 100;
    fresh->value_len = (uint32_t)value_len;
    fresh->negative = negative ? 1 : 0;
    if (value_len) memcpy(fresh->value, value, value_len);

    pthread_mutex_lock(&shard->lock);
    cache_entry *old = *shard_find_link(shard, key);
    if (old) shard_remove_entry(shard, old);

    if (negative) {
        /* Room for a negative is only ever made by evicting negatives. */
        while (shard->negative.count >= shard->negative_capacity ||
               shard->negative.count + shard->positive.count >= shard->capacity) {
            if (shard->negative.count == 0) {
                pthread_mutex_unlock(&shard->lock);
                free(fresh);
                return 1;
            }
            shard_evict_tail(shard, &shard->negative);
        }
    } else {
        while (shard->negative.count + shard->positive.count >= shard->capacity)
            shard_evict_tail(shard, shard->negative.count ? &shard->negative : &shard->positive);
    }
    cache_entry **bucket = &shard->buckets[key_hash(key) & shard->bucket_mask];
    fresh->hash_next = *bucket;
    *bucket = fresh;
    lru_push_head(entry_list(shard, fresh), fresh);
    pthread_mutex_unlock(&shard->lock);
    return 0;
}

int token_cache_remove(token_cache *cache, const cache_key *key)
{
    cache_shard *shard = &cache->shards[key_shard(cache, key)];
    pthread_mutex_lock(&shard->lock);
    cache_entry *e = *shard_find_link(shard, key);
    if (e) shard_remove_entry(shard, e);
    pthread_mutex_unlock(&shard->lock);
    return e ? 1 : 0;
}

/* Removes the entries of one list that match (all when match is NULL). Lock held. */
static size_t shard_flush_list(cache_shard *shard, lru_list *list, token_cache_match_fn match, void *ctx)
{
    size_t removed = 0;
    cache_entry *e = list->head;
    while (e) {
        cache_entry *next = e->lru_next;
        if (!match || match(e->value, e->value_len, e->negative != 0, ctx)) {
            shard_remove_entry(shard, e);
            removed++;
        }
        e = next;
    }
    return removed;
}

size_t token_cache_flush_matching(token_cache *cache, token_cache_match_fn match, void *ctx)
{
    size_t removed = 0;
    for (size_t i = 0; i < cache->n_shards; i++) {
        cache_shard *shard = &cache->shards[i];
        pthread_mutex_lock(&shard->lock);
        removed += shard_flush_list(shard, &shard->positive, match, ctx);
        removed += shard_flush_list(shard, &shard->negative, match, ctx);
        pthread_mutex_unlock(&shard->lock);
    }
    return removed;
}

size_t token_cache_flush_all(token_cache *cache)
{
    return token_cache_flush_matching(cache, NULL, NULL);
}

void token_cache_get_stats(token_cache *cache, token_cache_stats *stats)
{
    memset(stats, 0, sizeof(*stats));
    for (size_t i = 0; i < cache->n_shards; i++) {
        cache_shard *shard = &cache->shards[i];
        pthread_mutex_lock(&shard->lock);
        stats->entries += shard->positive.count + shard->negative.count;
        stats->negative_entries += shard->negative.count;
        stats->evictions += shard->evictions;
        stats->capacity += shard->capacity;
        pthread_mutex_unlock(&shard->lock);
    }
}
