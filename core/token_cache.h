/* The verdict cache: a sharded hash table keyed by cache_key (an HMAC; never the token),
 * one LRU list per shard and per kind of verdict, bounded in entries.
 *
 * Positive and negative verdicts live in separate LRU lists so that a flood of distinct
 * bad tokens only ever evicts other negative entries: negatives may use at most
 * negative_percent of a shard, and a negative insert never evicts a positive entry.
 *
 * Thread safety: each shard has its own mutex; every function may be called from any
 * thread. Values are copied in and out under the shard lock, so a caller never holds a
 * pointer into the cache. The clock is passed in (now_ms) so tests control time. */
#ifndef TOKENGATE_TOKEN_CACHE_H
#define TOKENGATE_TOKEN_CACHE_H

#include "cache_key.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest value (packed identity) one entry may hold. */
#define TOKEN_CACHE_VALUE_MAX 16384

typedef struct token_cache token_cache;

typedef struct token_cache_options {
    size_t max_entries;        /* total bound across shards; >= 1 */
    size_t shards;             /* rounded down to max_entries if larger; 0 means 16 */
    unsigned negative_percent; /* share of each shard negatives may use; 0 means 25 */
    /* Refresh-ahead (token_cache_lookup_refresh): a positive entry becomes due for refresh
     * in the last refresh_ahead_percent of the lifetime it was inserted with; 0: never. */
    unsigned refresh_ahead_percent;
    int64_t refresh_retry_ms; /* after a claim, the next hit may claim again this much later; 0 means 1000 */
} token_cache_options;

typedef enum {
    TOKEN_CACHE_MISS = 0,
    TOKEN_CACHE_HIT_POSITIVE,
    TOKEN_CACHE_HIT_NEGATIVE,
    TOKEN_CACHE_STALE_POSITIVE, /* token_cache_lookup_stale only: expired, within the window */
} token_cache_result;

/* Returns a new empty cache or NULL on allocation failure. Caller owns it. */
token_cache *token_cache_new(const token_cache_options *options);

/* Frees every entry and the cache. NULL is a no-op. No other thread may use it. */
void token_cache_free(token_cache *cache);

/* Looks key up at time now_ms. On a hit that has not expired, copies the value into
 * value_out (value_cap must be >= TOKEN_CACHE_VALUE_MAX or the value's size), sets
 * *value_len and *expires_at_ms (either may be NULL) and marks the entry most recently
 * used. An expired entry is removed and reported as a miss. */
token_cache_result token_cache_lookup(token_cache *cache, const cache_key *key, int64_t now_ms, void *value_out,
                                      size_t value_cap, size_t *value_len, int64_t *expires_at_ms);

/* Like token_cache_lookup, but a positive entry that expired less than stale_ms ago is
 * returned as TOKEN_CACHE_STALE_POSITIVE (value copied, entry kept, LRU unchanged) so the
 * caller can fall back on it if a fresh review fails (--stale-if-error). Negative entries
 * are never returned stale. stale_ms 0 behaves exactly like token_cache_lookup. */
token_cache_result token_cache_lookup_stale(token_cache *cache, const cache_key *key, int64_t now_ms, int64_t stale_ms,
                                            void *value_out, size_t value_cap, size_t *value_len,
                                            int64_t *expires_at_ms);

/* token_cache_lookup_stale, plus refresh-ahead: on a positive hit in the last part of the
 * entry's lifetime (token_cache_options.refresh_ahead_percent) *refresh_due is set to true
 * for exactly one caller per refresh_retry_ms — the claim is made under the shard lock, so
 * concurrent hits on any thread start one refresh, and a refresh that failed is tried
 * again by a later hit. A successful refresh replaces the entry (token_cache_insert), which
 * clears the claim. refresh_due may be NULL. */
token_cache_result token_cache_lookup_refresh(token_cache *cache, const cache_key *key, int64_t now_ms,
                                              int64_t stale_ms, void *value_out, size_t value_cap, size_t *value_len,
                                              bool *refresh_due);

/* Stores a copy of value under key until expires_at_ms, replacing any entry for key.
 * Evicts least recently used entries to stay within bounds (see above). Returns 0 when
 * stored, 1 when a negative verdict was not stored because the negative share is zero,
 * -1 on bad arguments (value too large, already expired) or allocation failure. */
int token_cache_insert(token_cache *cache, const cache_key *key, bool negative, const void *value, size_t value_len,
                       int64_t expires_at_ms, int64_t now_ms);

/* Removes the entry for key if present. Returns 1 if one was removed, else 0. */
int token_cache_remove(token_cache *cache, const cache_key *key);

/* Predicate for token_cache_flush_matching; called under a shard lock: must not call back
 * into the cache. */
typedef bool (*token_cache_match_fn)(const void *value, size_t value_len, bool negative, void *ctx);

/* Removes every entry; returns how many. */
size_t token_cache_flush_all(token_cache *cache);

/* Removes the entries for which match returns true; returns how many. */
size_t token_cache_flush_matching(token_cache *cache, token_cache_match_fn match, void *ctx);

typedef struct token_cache_stats {
    size_t entries;          /* current positive + negative entries */
    size_t negative_entries; /* of which negative */
    uint64_t evictions;      /* entries dropped to make room (not expiries, not flushes) */
    size_t capacity;         /* the bound actually enforced (sum over shards) */
} token_cache_stats;

/* Fills *stats with a snapshot (takes each shard lock in turn). */
void token_cache_get_stats(token_cache *cache, token_cache_stats *stats);

#endif
