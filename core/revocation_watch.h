/* The revocation watch (--watch-revocations, docs/REVOCATION.md): lists then watches
 * ServiceAccounts, and Pods when enabled, on the API server, and asks its owner to evict
 * the cached identities of the ones deleted. It never touches a cache itself: every
 * eviction goes through the evict callback of its options, with a revocation_target that
 * revocation_target_matches() tests against cached identities.
 *
 * What it keeps is bounded whatever the cluster size: per resource a resourceVersion, one
 * list page or one watch line at a time (both capped), and during a list the identities
 * that were cached when it began (bounded by the caches, not the cluster); plus a ring of
 * recently deleted uids. It keeps no copy of the cluster's objects.
 *
 * Threading: a revocation_watch runs on ONE event loop — the gateway's control thread —
 * and revocation_watch_new / _free are called on that thread; so are the evict and collect
 * callbacks (from inside the loop, never from inside _new or _free). The read-only
 * functions (_get_stats, _render_metrics, _healthy, _describe, _recently_revoked) take an
 * internal lock and may be called from any thread while the watch exists.
 * revocation_target_matches() and the parsing helpers at the end are pure. */
#ifndef TOKENGATE_REVOCATION_WATCH_H
#define TOKENGATE_REVOCATION_WATCH_H

#include "api_client.h"
#include "identity.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { REVOCATION_SERVICEACCOUNT = 0, REVOCATION_POD, REVOCATION_KINDS } revocation_kind;

/* What was revoked: a deleted ServiceAccount or Pod. Strings are NUL-terminated and valid
 * only during the callback; "" when unknown. */
typedef struct revocation_target {
    revocation_kind kind;
    const char *namespace_name;
    const char *name;
    const char *uid;
} revocation_target;

/* True when identity was authenticated through target:
 *   ServiceAccount: username is system:serviceaccount:NS:NAME of the target and, when both
 *     have a uid, the uids are equal (a recreated ServiceAccount of the same name is another
 *     object: its identities stay);
 *   Pod: extra["authentication.kubernetes.io/pod-uid"] holds the target's uid (without a
 *     target uid: extra pod-name equals the name, in the target's namespace).
 * Pure; safe from any thread (e.g. inside a token_cache_flush_matching predicate). */
bool revocation_target_matches(const revocation_target *target, const identity_view *identity);

/* Why identities were evicted; the label values of gateway_revocation_evictions_total{cause}. */
typedef enum {
    REVOCATION_CAUSE_SERVICEACCOUNT_DELETED = 0, /* a DELETED event */
    REVOCATION_CAUSE_POD_DELETED,
    REVOCATION_CAUSE_SERVICEACCOUNT_MISSING, /* absent from a relist: its deletion was missed */
    REVOCATION_CAUSE_POD_MISSING,
    REVOCATION_CAUSES
} revocation_cause;

const char *revocation_cause_name(revocation_cause cause);

/* Collects the identities cached when a list begins (see the collect callback). */
typedef struct revocation_collector revocation_collector;

/* Adds one cached identity: for a ServiceAccount list, a ServiceAccount's identity (its
 * namespace, name and uid are copied); for a Pod list, a pod-bound one (its pod uid).
 * Others are ignored, and so is everything beyond a fixed bound (REVOCATION_COLLECT_MAX).
 * Only during the collect callback, on the watch's thread. */
void revocation_collector_add(revocation_collector *collector, const identity_view *identity);

#define REVOCATION_COLLECT_MAX 262144

typedef struct revocation_watch_options {
    /* How to reach the API server: copied (the watch makes its own api_client from it on
     * base; observe is ignored). Required. */
    const api_client_options *api;
    bool watch_pods; /* also Pods (--watch-pods); ServiceAccounts always */
    /* Deadline of one list page, and the connect timeout of a watch; <= 0: 30 s. */
    int64_t request_timeout_ms;
    /* Required. Evict every cached identity (both caches: TokenReview and
     * SubjectAccessReview) for which revocation_target_matches(target, identity) is true;
     * return how many entries went. Called on the watch's thread, possibly from inside a
     * libcurl callback: it must not call back into this module except the read-only
     * functions, and must not block for long. */
    size_t (*evict)(void *ctx, const revocation_target *target);
    /* Optional: the check for deletions missed while the watch was down. Called when a
     * list of kind begins; report every identity currently cached in the TokenReview cache
     * with revocation_collector_add. When the list completes, each reported identity whose
     * ServiceAccount (Pod) was not in it is evicted (cause *_MISSING): it was deleted while
     * nobody watched. Without it, such identities simply expire at their normal TTL. */
    void (*collect)(void *ctx, revocation_kind kind, revocation_collector *collector);
    void *ctx;
} revocation_watch_options;

typedef struct revocation_watch revocation_watch;

/* Creates the watch on base and starts listing at once (the first callbacks come from the
 * loop, later). Returns NULL (logged) when options are incomplete or the API client
 * cannot be made (e.g. the credential file is unreadable). The caller owns the result. */
revocation_watch *revocation_watch_new(struct event_base *base, const revocation_watch_options *options);

/* Aborts the list or watch transfers, frees everything. No callback runs during or after
 * it. On the watch's thread, before base is freed; any thread using the read-only
 * functions must have stopped. NULL is ignored. */
void revocation_watch_free(revocation_watch *watch);

typedef enum {
    REVOCATION_STATE_DOWN = 0,    /* not in sync: waiting to retry, or the watch request failed */
    REVOCATION_STATE_LISTING = 1, /* listing (or the watch after a list is being set up) */
    REVOCATION_STATE_WATCHING = 2 /* watching: deletions are seen as they happen */
} revocation_state;

typedef enum {
    REVOCATION_EVENT_ADDED = 0,
    REVOCATION_EVENT_MODIFIED,
    REVOCATION_EVENT_DELETED,
    REVOCATION_EVENT_BOOKMARK,
    REVOCATION_EVENT_ERROR,
    REVOCATION_EVENT_TYPES
} revocation_event_type;

const char *revocation_event_type_name(revocation_event_type type);

/* Why a list or watch request failed; the label values of
 * gateway_revocation_watch_errors_total{resource,reason}. */
typedef enum {
    REVOCATION_ERROR_NETWORK = 0,  /* no answer, connection lost mid-stream, timeout */
    REVOCATION_ERROR_HTTP,         /* a status other than 200 and 410 (403: RBAC, see the log) */
    REVOCATION_ERROR_BAD_RESPONSE, /* not JSON, a line or page too large, an ERROR event */
    REVOCATION_ERROR_EXPIRED,      /* 410 Gone / Expired: the resourceVersion was compacted */
    REVOCATION_ERROR_KINDS
} revocation_error;

typedef struct revocation_resource_stats {
    bool enabled;
    revocation_state state;
    uint64_t events[REVOCATION_EVENT_TYPES];
    uint64_t lists;   /* lists completed */
    uint64_t relists; /* lists begun after the first one (410, restart from scratch) */
    uint64_t errors[REVOCATION_ERROR_KINDS];
    double last_event_age_s; /* since the last event or completed list (since the start before any) */
    double down_s;           /* since it stopped watching; 0 while watching */
} revocation_resource_stats;

typedef struct revocation_watch_stats {
    revocation_resource_stats resources[REVOCATION_KINDS];
    uint64_t evictions[REVOCATION_CAUSES]; /* entries the evict callback reported */
    uint64_t refused[REVOCATION_KINDS];    /* review answers refused by a tombstone */
} revocation_watch_stats;

/* A snapshot of the counters. Any thread. */
void revocation_watch_get_stats(const revocation_watch *watch, revocation_watch_stats *stats);

/* Appends the watch's families in the Prometheus text format:
 *   gateway_revocation_watch_up{resource}            1 while watching, else 0
 *   gateway_revocation_watch_state{resource}         0 down, 1 listing, 2 watching
 *   gateway_revocation_watch_events_total{resource,type}
 *   gateway_revocation_evictions_total{cause}
 *   gateway_revocation_refused_total{kind}           answers refused by a tombstone
 *   gateway_revocation_watch_last_event_age_seconds{resource}
 *   gateway_revocation_watch_relists_total{resource}
 *   gateway_revocation_watch_errors_total{resource,reason}
 * resource is "serviceaccounts" or "pods" (only the enabled ones). Returns 0, or -1 if out
 * could not grow. NULL watch (the feature off): appends nothing, returns 0. Any thread. */
int revocation_watch_render_metrics(const revocation_watch *watch, struct evbuffer *out);

/* True while every enabled resource is WATCHING; true for NULL (off). This is not a
 * readiness condition — while it is false, cached identities still expire at their normal
 * TTL, never later — only something to report. Any thread. */
bool revocation_watch_healthy(const revocation_watch *watch);

/* One line for /readyz detail, e.g. "revocation watch: serviceaccounts watching, pods down
 * for 12s (reconnecting; cached identities expire at their normal TTL)"; NULL watch:
 * "revocation watch: off". Writes at most cap bytes (NUL included) and returns the length
 * it wanted, as snprintf does. Any thread. */
size_t revocation_watch_describe(const revocation_watch *watch, char *buf, size_t cap);

/* True when identity's ServiceAccount or Pod was seen deleted (a DELETED event, or missing
 * from a relist) in the last REVOCATION_TOMBSTONE_MS; at most REVOCATION_TOMBSTONES are
 * remembered, the oldest forgotten first. A deleted object's uid is never reused, so the
 * tombstone holds by uid; a ServiceAccount recreated under the same name has another uid
 * and is not matched. *kind (may be NULL) says which tombstone matched. false for NULL.
 * Any thread. */
bool revocation_watch_recently_revoked(revocation_watch *watch, const identity_view *identity, revocation_kind *kind);

/* For the review path: true when a review answer that vouches for identity must be
 * refused because its ServiceAccount or Pod was seen deleted (recently_revoked), and then
 * counts it (gateway_revocation_refused_total{kind}). kube-apiserver caches successful
 * token authentications for about 10 s, so a TokenReview keeps saying "authenticated" for
 * a while after a deletion; the tombstone outlives that window many times over. false for
 * NULL. Any thread. */
bool revocation_watch_refuse(revocation_watch *watch, const identity_view *identity);

#define REVOCATION_TOMBSTONES 4096
#define REVOCATION_TOMBSTONE_MS (120 * 1000)

/* ---- pure helpers, exposed for the unit tests ---- */

#define REVOCATION_RV_MAX 64
#define REVOCATION_NAMESPACE_MAX 63
#define REVOCATION_NAME_MAX 253
#define REVOCATION_UID_MAX 128
#define REVOCATION_CONTINUE_MAX 4096

/* One watch event, reduced to what eviction needs. */
typedef struct revocation_event {
    revocation_event_type type;
    char resource_version[REVOCATION_RV_MAX + 1]; /* "" when absent */
    char namespace_name[REVOCATION_NAMESPACE_MAX + 1];
    char name[REVOCATION_NAME_MAX + 1];
    char uid[REVOCATION_UID_MAX + 1];
    long code; /* ERROR: the Status code (410: relist); 0 otherwise */
} revocation_event;

/* Parses one line of a watch body ({"type":...,"object":{...}}). Returns 0, or -1 when it
 * is not a watch event: not JSON, unknown type, no object, or a field longer than the
 * bounds above. */
int revocation_event_parse(const char *line, size_t len, revocation_event *event);

/* Parses one list page: stores metadata.resourceVersion (required) and metadata.continue
 * ("" on the last page), and calls on_item for every item with its namespace, name and uid
 * ("" when absent). Returns 0, or -1 when the page is not a list. */
int revocation_list_parse(const char *body, size_t len, char rv[REVOCATION_RV_MAX + 1],
                          char continue_token[REVOCATION_CONTINUE_MAX + 1],
                          void (*on_item)(void *arg, const char *namespace_name, const char *name, const char *uid),
                          void *arg);

/* Delay before retry number failures (>= 1) in ms: doubling from REVOCATION_BACKOFF_BASE_MS
 * up to REVOCATION_BACKOFF_MAX_MS, then "equal jitter": half of it fixed, half scaled by
 * unit (a random number in [0, 1)). 0 for failures == 0. */
int64_t revocation_backoff_ms(unsigned failures, double unit);

#define REVOCATION_BACKOFF_BASE_MS 250
#define REVOCATION_BACKOFF_MAX_MS 30000

/* Splits a stream into lines with a bounded buffer. */
typedef struct revocation_lines {
    char *buf; /* an incomplete line carried over between chunks */
    size_t len, cap;
    size_t max; /* longest line accepted */
} revocation_lines;

void revocation_lines_init(revocation_lines *lines, size_t max);
/* Forgets a partial line and gives back a buffer grown beyond 64 KiB. */
void revocation_lines_reset(revocation_lines *lines);
void revocation_lines_free(revocation_lines *lines);

/* Appends data and calls on_line for each complete line (without "\n" or "\r\n"; empty
 * lines are skipped). Returns 0; -1 when a line grows beyond max (the buffer is reset) or
 * memory runs out; or the first non-zero value on_line returned (the rest is dropped). */
int revocation_lines_feed(revocation_lines *lines, const char *data, size_t len,
                          int (*on_line)(void *arg, const char *line, size_t len), void *arg);

#endif
