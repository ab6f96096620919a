/* revocation_watch.c owns the list and watch transfers of ServiceAccounts and Pods (on its
 * own curl_loop, with its own api_client for the URL, CA and credential), the per-resource
 * state machine (list → watch → relist on 410, reconnect with jittered backoff), the
 * streaming parse of watch bodies, the check for deletions missed across a relist, and the
 * counters behind its metrics. docs/REVOCATION.md explains the behaviour. */
#include "revocation_watch.h"

#include "curl_loop.h"
#include "log.h"
#include "util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WATCH_LINE_MAX (4 * 1024 * 1024) /* one event; objects are < 1.5 MiB in etcd */
#define LIST_PAGE_MAX (32 * 1024 * 1024) /* one list page; beyond it the limit is halved */
#define ERROR_BODY_MAX 4096              /* what is kept of a non-200 answer, for the log */
#define LIST_LIMIT_SERVICEACCOUNTS 500L  /* items per list page */
#define LIST_LIMIT_PODS 250L
#define WATCH_TIMEOUT_MIN_S 300 /* timeoutSeconds, random in [min, 2 min) as client-go */
#define WATCH_HEALTHY_MS 10000  /* a watch this old was healthy: backoff restarts */
#define DEFAULT_REQUEST_TIMEOUT_MS 30000
#define LINES_KEEP (64 * 1024) /* a line buffer grown beyond this is given back */

/* Metadata-only answers where the API server supports them (client-go's metadata
 * informers ask the same); full objects otherwise, which parse the same way. */
static const char list_accept[] =
    "Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
static const char watch_accept[] =
    "Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

static const char *const resource_names[REVOCATION_KINDS] = {"serviceaccounts", "pods"};
static const char *const error_names[REVOCATION_ERROR_KINDS] = {"network", "http", "bad_response", "expired"};

/* ---- types ---- */

typedef struct sweep_entry {
    char *key; /* one allocation: key, namespace, name, uid */
    const char *namespace_name, *name, *uid;
    bool seen;
} sweep_entry;

/* Identities cached when a list began, keyed by ServiceAccount uid (or "/NS/NAME" for one
 * without a uid) or by Pod uid; an open-addressing hash set. */
struct revocation_collector {
    revocation_kind kind;
    sweep_entry *slots;
    size_t cap, n;
    bool overflow;
};

typedef struct tombstone {
    revocation_kind kind;
    uint64_t name_hash; /* ServiceAccount: hash of "NS/NAME" */
    uint64_t uid_hash;  /* the uid's hash; 0 when none */
    int64_t at_ms;
} tombstone;

typedef enum { NEXT_LIST, NEXT_WATCH, NEXT_HEADERS_DEADLINE } next_step;
typedef enum { STOP_NONE, STOP_EXPIRED, STOP_BAD } stop_reason;

typedef struct resource_watch {
    revocation_watch *owner;
    revocation_kind kind;
    bool enabled;

    char rv[REVOCATION_RV_MAX + 1]; /* to resume the watch from */
    char list_rv[REVOCATION_RV_MAX + 1];
    char continue_token[REVOCATION_CONTINUE_MAX + 1];
    long page_limit;
    bool listed_once;
    revocation_collector *sweep; /* during a list, when the owner collects */

    /* The transfer in progress (one at a time). */
    CURL *easy;
    struct curl_slist *headers;
    curl_loop_transfer transfer;
    bool is_watch;
    bool headers_done;
    long status;
    char *body; /* list page, or the start of a non-200 answer */
    size_t body_len, body_cap;
    bool body_too_large;
    revocation_lines lines;
    stop_reason stop;
    int64_t stream_started_ms;
    bool stream_had_events;
    char curl_error[CURL_ERROR_SIZE];

    /* Retries. */
    struct event *timer;
    next_step next;
    unsigned failures;      /* consecutive failed attempts */
    unsigned expired_count; /* consecutive 410s without a healthy watch in between */
    bool forbidden_logged;  /* the RBAC hint, once until the next success */

    /* Reported through the lock. */
    revocation_state state;
    uint64_t events[REVOCATION_EVENT_TYPES];
    uint64_t lists, relists;
    uint64_t errors[REVOCATION_ERROR_KINDS];
    int64_t last_event_ms, down_since_ms;
} resource_watch;

struct revocation_watch {
    struct event_base *base;
    api_client *api;
    curl_loop *loop;
    size_t (*evict)(void *ctx, const revocation_target *target);
    void (*collect)(void *ctx, revocation_kind kind, revocation_collector *collector);
    void *ctx;
    int64_t request_timeout_ms;
    uint64_t rng;
    resource_watch resources[REVOCATION_KINDS];

    /* Everything below is read by other threads: under lock. */
    pthread_mutex_t lock;
    uint64_t evictions[REVOCATION_CAUSES];
    uint64_t refused[REVOCATION_KINDS];
    tombstone tombstones[REVOCATION_TOMBSTONES];
    size_t tombstone_next, tombstone_count;
};

static void start_list(resource_watch *r);
static void start_watch(resource_watch *r);

/* ---- small helpers ---- */

/* FNV-1a, for the hash set and the tombstones. Never 0 (0 means "no uid"). */
static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h ? h : 1;
}

static double random_unit(revocation_watch *w)
{
    /* xorshift64*: jitter only, nothing secret. */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return (double)((w->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static bool str_eq(str_view v, const char *s)
{
    size_t len = strlen(s);
    return v.len == len && memcmp(v.ptr, s, len) == 0;
}

/* The first value of extra[key] in identity, if any. */
static bool identity_extra_first(const identity_view *id, const char *key, str_view *out)
{
    const unsigned char *pos = id->extra;
    for (size_t i = 0; i < id->n_extra; i++) {
        str_view k;
        identity_read_string(&pos, &k);
        size_t n = identity_read_count(&pos);
        bool wanted = str_eq(k, key);
        for (size_t j = 0; j < n; j++) {
            str_view v;
            identity_read_string(&pos, &v);
            if (wanted && j == 0) {
                *out = v;
                return true;
            }
        }
    }
    return false;
}

/* Whether extra[key] of identity holds value. */
static bool identity_extra_has(const identity_view *id, const char *key, const char *value)
{
    const unsigned char *pos = id->extra;
    for (size_t i = 0; i < id->n_extra; i++) {
        str_view k;
        identity_read_string(&pos, &k);
        size_t n = identity_read_count(&pos);
        bool wanted = str_eq(k, key);
        for (size_t j = 0; j < n; j++) {
            str_view v;
            identity_read_string(&pos, &v);
            if (wanted && str_eq(v, value)) return true;
        }
    }
    return false;
}

#define POD_UID_KEY "authentication.kubernetes.io/pod-uid"
#define POD_NAME_KEY "authentication.kubernetes.io/pod-name"

/* ---- names ---- */

const char *revocation_cause_name(revocation_cause cause)
{
    switch (cause) {
    case REVOCATION_CAUSE_SERVICEACCOUNT_DELETED: return "serviceaccount_deleted";
    case REVOCATION_CAUSE_POD_DELETED: return "pod_deleted";
    case REVOCATION_CAUSE_SERVICEACCOUNT_MISSING: return "serviceaccount_missing_at_relist";
    case REVOCATION_CAUSE_POD_MISSING: return "pod_missing_at_relist";
    default: return "unknown";
    }
}

const char *revocation_event_type_name(revocation_event_type type)
{
    switch (type) {
    case REVOCATION_EVENT_ADDED: return "ADDED";
    case REVOCATION_EVENT_MODIFIED: return "MODIFIED";
    case REVOCATION_EVENT_DELETED: return "DELETED";
    case REVOCATION_EVENT_BOOKMARK: return "BOOKMARK";
    case REVOCATION_EVENT_ERROR: return "ERROR";
    default: return "unknown";
    }
}

/* ---- matching ---- */

bool revocation_target_matches(const revocation_target *t, const identity_view *id)
{
    str_view ns, name;
    const char *tns = t->namespace_name ? t->namespace_name : "";
    const char *tname = t->name ? t->name : "";
    const char *tuid = t->uid ? t->uid : "";
    if (t->kind == REVOCATION_SERVICEACCOUNT) {
        if (!*tns || !*tname || !identity_serviceaccount(id->username, &ns, &name)) return false;
        if (!str_eq(ns, tns) || !str_eq(name, tname)) return false;
        return !*tuid || id->uid.len == 0 || str_eq(id->uid, tuid);
    }
    if (t->kind == REVOCATION_POD) {
        if (*tuid) return identity_extra_has(id, POD_UID_KEY, tuid);
        /* No uid (never from a real API server): the pod's name in its namespace. */
        if (!*tns || !*tname || !identity_serviceaccount(id->username, &ns, &name) || !str_eq(ns, tns)) return false;
        return identity_extra_has(id, POD_NAME_KEY, tname);
    }
    return false;
}

/* ---- the collector (deletions missed across a relist) ---- */

static revocation_collector *collector_new(revocation_kind kind)
{
    revocation_collector *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->kind = kind;
    c->cap = 64;
    c->slots = calloc(c->cap, sizeof(*c->slots));
    if (!c->slots) {
        free(c);
        return NULL;
    }
    return c;
}

static void collector_free(revocation_collector *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->cap; i++) free(c->slots[i].key);
    free(c->slots);
    free(c);
}

static sweep_entry *collector_find(const revocation_collector *c, const char *key, size_t len)
{
    size_t mask = c->cap - 1;
    for (size_t i = hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
        sweep_entry *e = &c->slots[i];
        if (!e->key) return e; /* the empty slot where it would go */
        if (strlen(e->key) == len && memcmp(e->key, key, len) == 0) return e;
    }
}

static bool collector_grow(revocation_collector *c)
{
    size_t cap = c->cap * 2;
    sweep_entry *slots = calloc(cap, sizeof(*slots));
    if (!slots) return false;
    sweep_entry *old = c->slots;
    size_t old_cap = c->cap;
    c->slots = slots;
    c->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].key) *collector_find(c, old[i].key, strlen(old[i].key)) = old[i];
    free(old);
    return true;
}

/* Adds key with its target strings (copied), once. */
static void collector_put(revocation_collector *c, str_view key, str_view ns, str_view name, str_view uid)
{
    if (c->overflow || key.len == 0) return;
    if (c->n >= REVOCATION_COLLECT_MAX || ((c->n + 1) * 2 > c->cap && !collector_grow(c))) {
        c->overflow = true;
        return;
    }
    sweep_entry *e = collector_find(c, key.ptr, key.len);
    if (e->key) return;
    char *block = malloc(key.len + ns.len + name.len + uid.len + 4);
    if (!block) {
        c->overflow = true;
        return;
    }
    char *p = block;
    memcpy(p, key.ptr, key.len);
    p[key.len] = '\0';
    p += key.len + 1;
    e->namespace_name = memcpy(p, ns.ptr, ns.len);
    p[ns.len] = '\0';
    p += ns.len + 1;
    e->name = memcpy(p, name.ptr, name.len);
    p[name.len] = '\0';
    p += name.len + 1;
    e->uid = memcpy(p, uid.ptr, uid.len);
    p[uid.len] = '\0';
    e->key = block;
    e->seen = false;
    c->n++;
}

void revocation_collector_add(revocation_collector *c, const identity_view *id)
{
    str_view ns, name, pod_uid, pod_name = {"", 0};
    if (!c || !id || !identity_serviceaccount(id->username, &ns, &name)) return;
    if (ns.len > REVOCATION_NAMESPACE_MAX || name.len > REVOCATION_NAME_MAX) return;
    if (c->kind == REVOCATION_SERVICEACCOUNT) {
        if (id->uid.len > REVOCATION_UID_MAX) return;
        if (id->uid.len) {
            collector_put(c, id->uid, ns, name, id->uid);
        } else {
            char key[REVOCATION_NAMESPACE_MAX + REVOCATION_NAME_MAX + 3];
            int n = snprintf(key, sizeof(key), "/%.*s/%.*s", (int)ns.len, ns.ptr, (int)name.len, name.ptr);
            collector_put(c, (str_view){key, (size_t)n}, ns, name, (str_view){"", 0});
        }
        return;
    }
    if (!identity_extra_first(id, POD_UID_KEY, &pod_uid) || pod_uid.len == 0 || pod_uid.len > REVOCATION_UID_MAX)
        return;
    identity_extra_first(id, POD_NAME_KEY, &pod_name);
    if (pod_name.len > REVOCATION_NAME_MAX) pod_name.len = 0;
    collector_put(c, pod_uid, ns, pod_name, pod_uid);
}

/* A list item: mark what the collector holds for it as still existing. */
static void collector_mark(void *arg, const char *ns, const char *name, const char *uid)
{
    revocation_collector *c = arg;
    if (!c || c->n == 0) return;
    sweep_entry *e;
    if (*uid) {
        e = collector_find(c, uid, strlen(uid));
        if (e->key) e->seen = true;
    }
    if (c->kind == REVOCATION_SERVICEACCOUNT) {
        char key[REVOCATION_NAMESPACE_MAX + REVOCATION_NAME_MAX + 3];
        int n = snprintf(key, sizeof(key), "/%s/%s", ns, name);
        if (n > 0 && (size_t)n < sizeof(key)) {
            e = collector_find(c, key, (size_t)n);
            if (e->key) e->seen = true;
        }
    }
}

/* ---- parsing ---- */

static bool copy_field(const json_t *obj, const char *key, char *out, size_t cap)
{
    const json_t *v = json_object_get(obj, key);
    out[0] = '\0';
    if (!v) return true;
    if (!json_is_string(v) || json_string_length(v) >= cap) return false;
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return strlen(out) == json_string_length(v); /* no embedded NUL */
}

int revocation_event_parse(const char *line, size_t len, revocation_event *ev)
{
    memset(ev, 0, sizeof(*ev));
    json_t *root = json_loadb(line, len, 0, NULL);
    int rc = -1;
    if (!json_is_object(root)) goto done;
    const char *type = json_string_value(json_object_get(root, "type"));
    json_t *object = json_object_get(root, "object");
    if (!type || !json_is_object(object)) goto done;
    revocation_event_type t;
    for (t = 0; t < REVOCATION_EVENT_TYPES; t++)
        if (strcmp(type, revocation_event_type_name(t)) == 0) break;
    if (t == REVOCATION_EVENT_TYPES) goto done;
    ev->type = t;
    if (t == REVOCATION_EVENT_ERROR) {
        json_t *code = json_object_get(object, "code");
        ev->code = json_is_integer(code) ? (long)json_integer_value(code) : 0;
        rc = 0;
        goto done;
    }
    json_t *meta = json_object_get(object, "metadata");
    if (!json_is_object(meta)) goto done;
    if (!copy_field(meta, "resourceVersion", ev->resource_version, sizeof(ev->resource_version)) ||
        !copy_field(meta, "namespace", ev->namespace_name, sizeof(ev->namespace_name)) ||
        !copy_field(meta, "name", ev->name, sizeof(ev->name)) || !copy_field(meta, "uid", ev->uid, sizeof(ev->uid)))
        goto done;
    rc = 0;
done:
    json_decref(root);
    if (rc != 0) memset(ev, 0, sizeof(*ev));
    return rc;
}

int revocation_list_parse(const char *body, size_t len, char rv[REVOCATION_RV_MAX + 1],
                          char continue_token[REVOCATION_CONTINUE_MAX + 1],
                          void (*on_item)(void *arg, const char *ns, const char *name, const char *uid), void *arg)
{
    rv[0] = continue_token[0] = '\0';
    json_t *root = json_loadb(body, len, 0, NULL);
    int rc = -1;
    json_t *meta = json_object_get(root, "metadata");
    json_t *items = json_object_get(root, "items");
    if (!json_is_object(meta) || !(json_is_array(items) || json_is_null(items) || !items)) goto done;
    if (!copy_field(meta, "resourceVersion", rv, REVOCATION_RV_MAX + 1) || !rv[0] ||
        !copy_field(meta, "continue", continue_token, REVOCATION_CONTINUE_MAX + 1))
        goto done;
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) {
        char ns[REVOCATION_NAMESPACE_MAX + 1], name[REVOCATION_NAME_MAX + 1], uid[REVOCATION_UID_MAX + 1];
        json_t *m = json_object_get(item, "metadata");
        if (!json_is_object(m) || !copy_field(m, "namespace", ns, sizeof(ns)) ||
            !copy_field(m, "name", name, sizeof(name)) || !copy_field(m, "uid", uid, sizeof(uid)))
            continue; /* not an object we could match anyway */
        if (on_item) on_item(arg, ns, name, uid);
    }
    rc = 0;
done:
    json_decref(root);
    if (rc != 0) rv[0] = continue_token[0] = '\0';
    return rc;
}

int64_t revocation_backoff_ms(unsigned failures, double unit)
{
    if (failures == 0) return 0;
    int64_t d = REVOCATION_BACKOFF_BASE_MS;
    for (unsigned i = 1; i < failures && d < REVOCATION_BACKOFF_MAX_MS; i++) d *= 2;
    if (d > REVOCATION_BACKOFF_MAX_MS) d = REVOCATION_BACKOFF_MAX_MS;
    if (unit < 0) unit = 0;
    if (unit >= 1) unit = 0.999999;
    return d / 2 + (int64_t)((double)(d - d / 2) * unit);
}

/* ---- lines ---- */

void revocation_lines_init(revocation_lines *l, size_t max)
{
    memset(l, 0, sizeof(*l));
    l->max = max;
}

void revocation_lines_reset(revocation_lines *l)
{
    l->len = 0;
    if (l->cap > LINES_KEEP) {
        free(l->buf);
        l->buf = NULL;
        l->cap = 0;
    }
}

void revocation_lines_free(revocation_lines *l)
{
    free(l->buf);
    l->buf = NULL;
    l->len = l->cap = 0;
}

static int emit_line(const char *p, size_t n, int (*on_line)(void *, const char *, size_t), void *arg)
{
    if (n && p[n - 1] == '\r') n--;
    return n ? on_line(arg, p, n) : 0;
}

int revocation_lines_feed(revocation_lines *l, const char *data, size_t len,
                          int (*on_line)(void *arg, const char *line, size_t len), void *arg)
{
    while (len) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        if (l->len + take > l->max) {
            revocation_lines_reset(l);
            return -1;
        }
        if (nl && l->len == 0) {
            /* The common case: a whole line inside this chunk, no copy. */
            int rc = emit_line(data, take, on_line, arg);
            if (rc) return rc;
        } else {
            if (l->len + take > l->cap) {
                size_t cap = l->cap ? l->cap : 4096;
                while (cap < l->len + take) cap *= 2;
                if (cap > l->max) cap = l->max;
                char *grown = realloc(l->buf, cap);
                if (!grown) {
                    revocation_lines_reset(l);
                    return -1;
                }
                l->buf = grown;
                l->cap = cap;
            }
            if (take) memcpy(l->buf + l->len, data, take);
            l->len += take;
            if (nl) {
                size_t n = l->len;
                l->len = 0;
                int rc = emit_line(l->buf, n, on_line, arg);
                if (l->cap > LINES_KEEP) revocation_lines_reset(l);
                if (rc) return rc;
            }
        }
        if (!nl) break;
        data = nl + 1;
        len -= take + 1;
    }
    return 0;
}

/* ---- state and counters ---- */

static void set_state(resource_watch *r, revocation_state state)
{
    revocation_watch *w = r->owner;
    pthread_mutex_lock(&w->lock);
    if (r->state == REVOCATION_STATE_WATCHING && state != REVOCATION_STATE_WATCHING) r->down_since_ms = monotonic_ms();
    r->state = state;
    pthread_mutex_unlock(&w->lock);
}

static void count_error(resource_watch *r, revocation_error e)
{
    pthread_mutex_lock(&r->owner->lock);
    r->errors[e]++;
    pthread_mutex_unlock(&r->owner->lock);
}

/* Remembers a deleted object (a DELETED event, or one missing from a relist) so that
 * review answers vouching for its identities are refused for REVOCATION_TOMBSTONE_MS. */
static void add_tombstone(revocation_watch *w, const revocation_target *target)
{
    char key[REVOCATION_NAMESPACE_MAX + REVOCATION_NAME_MAX + 2];
    int n = snprintf(key, sizeof(key), "%s/%s", target->namespace_name, target->name);
    if (n < 0 || (size_t)n >= sizeof(key)) n = 0; /* names are bounded by the parser; be safe */
    tombstone t = {.kind = target->kind,
                   .name_hash = n ? hash_bytes(key, (size_t)n) : 0,
                   .uid_hash = target->uid[0] ? hash_bytes(target->uid, strlen(target->uid)) : 0,
                   .at_ms = monotonic_ms()};
    pthread_mutex_lock(&w->lock);
    w->tombstones[w->tombstone_next] = t;
    w->tombstone_next = (w->tombstone_next + 1) % REVOCATION_TOMBSTONES;
    if (w->tombstone_count < REVOCATION_TOMBSTONES) w->tombstone_count++;
    pthread_mutex_unlock(&w->lock);
}

/* Asks the owner to evict what target names; counts and logs it. */
static void evict(resource_watch *r, const revocation_target *target, revocation_cause cause)
{
    revocation_watch *w = r->owner;
    size_t n = w->evict(w->ctx, target);
    pthread_mutex_lock(&w->lock);
    w->evictions[cause] += n;
    pthread_mutex_unlock(&w->lock);
    char count[32];
    snprintf(count, sizeof(count), "%zu", n);
    log_event(n ? LOG_INFO : LOG_DEBUG, "revoked cached identities", "cause", revocation_cause_name(cause), "namespace",
              target->namespace_name, "name", target->name, "uid", target->uid, "evicted", count, NULL);
}

/* ---- transfers ---- */

static void free_transfer(resource_watch *r)
{
    if (r->easy) {
        curl_loop_remove(r->owner->loop, r->easy);
        curl_easy_cleanup(r->easy);
        r->easy = NULL;
    }
    api_client_free_headers(r->headers);
    r->headers = NULL;
    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    revocation_lines_reset(&r->lines);
}

static void schedule(resource_watch *r, next_step next, int64_t delay_ms)
{
    struct timeval tv = {(time_t)(delay_ms / 1000), (suseconds_t)((delay_ms % 1000) * 1000)};
    r->next = next;
    evtimer_add(r->timer, &tv);
}

/* A list or watch attempt failed: not in sync any more; try again after a backoff. */
static void fail(resource_watch *r, revocation_error e, next_step next, const char *detail)
{
    revocation_watch *w = r->owner;
    count_error(r, e);
    set_state(r, REVOCATION_STATE_DOWN);
    r->failures++;
    int64_t delay = revocation_backoff_ms(r->failures, random_unit(w));
    char delay_text[32], failures[16];
    snprintf(delay_text, sizeof(delay_text), "%lld", (long long)delay);
    snprintf(failures, sizeof(failures), "%u", r->failures);
    log_warn("revocation watch down: cached identities expire at their normal TTL until it is back", "resource",
             resource_names[r->kind], "reason", error_names[e], "detail", detail, LOG_NUMBER "failures", failures,
             LOG_NUMBER "retry_ms", delay_text, NULL);
    schedule(r, next, delay);
}

/* 410 Gone / Expired: the resourceVersion is too old; list again (at once the first time,
 * with a backoff when it keeps happening). */
static void expired(resource_watch *r, const char *detail)
{
    count_error(r, REVOCATION_ERROR_EXPIRED);
    r->rv[0] = '\0';
    r->expired_count++;
    int64_t delay = r->expired_count > 1 ? revocation_backoff_ms(r->expired_count - 1, random_unit(r->owner)) : 0;
    log_info("revocation watch: resourceVersion expired (410), listing again", "resource", resource_names[r->kind],
             "detail", detail, NULL);
    set_state(r, REVOCATION_STATE_LISTING);
    schedule(r, NEXT_LIST, delay);
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    resource_watch *r = arg;
    size_t n = size * nmemb;
    if (n == 2 && data[0] == '\r' && data[1] == '\n') {
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200) { /* not an interim 1xx */
            r->status = status;
            r->headers_done = true;
            if (r->is_watch && status == 200) {
                evtimer_del(r->timer); /* the headers deadline */
                r->forbidden_logged = false;
                r->stream_started_ms = monotonic_ms();
                bool was = r->state == REVOCATION_STATE_WATCHING;
                set_state(r, REVOCATION_STATE_WATCHING);
                if (!was)
                    log_info("revocation watch: watching", "resource", resource_names[r->kind], "resourceVersion",
                             r->rv, NULL);
            }
        }
    }
    return n;
}

/* Keeps up to cap bytes of an answer in r->body; false when more than cap arrived. */
static bool keep_body(resource_watch *r, const char *data, size_t n, size_t cap)
{
    if (r->body_len + n > cap) {
        n = cap - r->body_len;
        r->body_too_large = true;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t want = r->body_cap ? r->body_cap : 16384;
        while (want < r->body_len + n + 1) want *= 2;
        if (want > cap + 1) want = cap + 1; /* never more than the cap */
        char *grown = realloc(r->body, want);
        if (!grown) return false;
        r->body = grown;
        r->body_cap = want;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return !r->body_too_large;
}

/* One line of a watch body: an event. Non-zero stops the transfer (r->stop says why). */
static int on_watch_line(void *arg, const char *line, size_t len)
{
    resource_watch *r = arg;
    revocation_watch *w = r->owner;
    revocation_event ev;
    if (revocation_event_parse(line, len, &ev) != 0) {
        r->stop = STOP_BAD;
        return -1;
    }
    pthread_mutex_lock(&w->lock);
    r->events[ev.type]++;
    r->last_event_ms = monotonic_ms();
    pthread_mutex_unlock(&w->lock);
    if (ev.type == REVOCATION_EVENT_ERROR) {
        r->stop = ev.code == 410 ? STOP_EXPIRED : STOP_BAD;
        return -1;
    }
    r->stream_had_events = true;
    r->failures = 0; /* a live watch: the next failure starts the backoff afresh */
    r->expired_count = 0;
    if (ev.resource_version[0]) memcpy(r->rv, ev.resource_version, sizeof(r->rv));
    if (ev.type == REVOCATION_EVENT_DELETED && ev.name[0]) {
        revocation_target t = {r->kind, ev.namespace_name, ev.name, ev.uid};
        add_tombstone(w, &t);
        evict(r, &t,
              r->kind == REVOCATION_SERVICEACCOUNT ? REVOCATION_CAUSE_SERVICEACCOUNT_DELETED
                                                   : REVOCATION_CAUSE_POD_DELETED);
    }
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    resource_watch *r = arg;
    size_t n = size * nmemb;
    if (!r->headers_done) { /* cannot happen with HTTP; be safe */
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
        r->headers_done = true;
    }
    if (r->is_watch && r->status == 200) {
        if (revocation_lines_feed(&r->lines, data, n, on_watch_line, r) == 0) return n;
        if (r->stop == STOP_NONE) r->stop = STOP_BAD; /* a line beyond WATCH_LINE_MAX */
        return 0; /* aborts the transfer (CURLE_WRITE_ERROR); watch_done reads r->stop */
    }
    if (r->is_watch || r->status != 200) {
        keep_body(r, data, n, ERROR_BODY_MAX); /* for the log; the rest is dropped */
        r->body_too_large = false;
        return n;
    }
    return keep_body(r, data, n, LIST_PAGE_MAX) ? n : 0;
}

static void on_done(void *owner, CURL *easy, CURLcode code);

/* Starts a GET of path (a list page or a watch). On failure, schedules a retry. */
static void start_transfer(resource_watch *r, const char *path, bool is_watch, long timeout_ms)
{
    revocation_watch *w = r->owner;
    r->is_watch = is_watch;
    r->headers_done = false;
    r->status = 0;
    r->stop = STOP_NONE;
    r->body_too_large = false;
    r->stream_had_events = false;
    r->curl_error[0] = '\0';
    r->easy = curl_easy_init();
    const char *accept = is_watch ? watch_accept : list_accept;
    if (!r->easy || api_client_prepare(w->api, r->easy, path, &accept, 1, &r->headers) != 0) {
        free_transfer(r);
        fail(r, REVOCATION_ERROR_NETWORK, is_watch ? NEXT_WATCH : NEXT_LIST,
             "cannot start the request (credential unreadable?)");
        return;
    }
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)w->request_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L); /* a silently dead peer is noticed */
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 10L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->curl_error);
    r->transfer = (curl_loop_transfer){.done = on_done, .owner = r};
    if (curl_loop_add(w->loop, e, &r->transfer) != 0) {
        free_transfer(r);
        fail(r, REVOCATION_ERROR_NETWORK, is_watch ? NEXT_WATCH : NEXT_LIST, "libcurl refused the request");
        return;
    }
    if (is_watch) schedule(r, NEXT_HEADERS_DEADLINE, w->request_timeout_ms);
}

static void request_page(resource_watch *r)
{
    char path[REVOCATION_CONTINUE_MAX * 3 + 128];
    int n = snprintf(path, sizeof(path), "/api/v1/%s?limit=%ld", resource_names[r->kind], r->page_limit);
    if (r->continue_token[0]) {
        char *escaped = curl_easy_escape(NULL, r->continue_token, 0);
        if (!escaped) {
            fail(r, REVOCATION_ERROR_NETWORK, NEXT_LIST, "out of memory");
            return;
        }
        snprintf(path + n, sizeof(path) - (size_t)n, "&continue=%s", escaped);
        curl_free(escaped);
    }
    start_transfer(r, path, false, (long)r->owner->request_timeout_ms);
}

static void start_list(resource_watch *r)
{
    revocation_watch *w = r->owner;
    set_state(r, REVOCATION_STATE_LISTING);
    if (r->listed_once) {
        pthread_mutex_lock(&w->lock);
        r->relists++;
        pthread_mutex_unlock(&w->lock);
    }
    collector_free(r->sweep);
    r->sweep = NULL;
    if (w->collect) {
        r->sweep = collector_new(r->kind);
        if (r->sweep) {
            w->collect(w->ctx, r->kind, r->sweep);
            if (r->sweep->overflow)
                log_warn("revocation watch: too many cached identities to check them all after the list", "resource",
                         resource_names[r->kind], NULL);
        }
    }
    r->continue_token[0] = '\0';
    r->list_rv[0] = '\0';
    request_page(r);
}

static void start_watch(resource_watch *r)
{
    revocation_watch *w = r->owner;
    char escaped_rv[REVOCATION_RV_MAX * 3 + 1];
    char *e = curl_easy_escape(NULL, r->rv, 0);
    if (!e) {
        fail(r, REVOCATION_ERROR_NETWORK, NEXT_WATCH, "out of memory");
        return;
    }
    snprintf(escaped_rv, sizeof(escaped_rv), "%s", e);
    curl_free(e);
    /* The server ends the watch after timeoutSeconds; spread over [min, 2 min) so that
     * gateways do not reconnect in step. */
    long timeout_s = WATCH_TIMEOUT_MIN_S + (long)(random_unit(w) * WATCH_TIMEOUT_MIN_S);
    char path[512];
    snprintf(path, sizeof(path), "/api/v1/%s?watch=1&allowWatchBookmarks=true&resourceVersion=%s&timeoutSeconds=%ld",
             resource_names[r->kind], escaped_rv, timeout_s);
    start_transfer(r, path, true, (timeout_s + 60) * 1000);
}

/* After a complete list: evict the collected identities whose object was not in it. */
static void sweep(resource_watch *r)
{
    revocation_collector *c = r->sweep;
    r->sweep = NULL;
    if (!c) return;
    for (size_t i = 0; i < c->cap; i++) {
        sweep_entry *e = &c->slots[i];
        if (!e->key || e->seen) continue;
        revocation_target t = {r->kind, e->namespace_name, e->name, e->uid};
        add_tombstone(r->owner, &t);
        evict(r, &t,
              r->kind == REVOCATION_SERVICEACCOUNT ? REVOCATION_CAUSE_SERVICEACCOUNT_MISSING
                                                   : REVOCATION_CAUSE_POD_MISSING);
    }
    collector_free(c);
}

/* 403: say plainly, once until the next success, what the gateway's ServiceAccount lacks. */
static void forbidden(resource_watch *r, const char *verb)
{
    if (r->forbidden_logged) return;
    r->forbidden_logged = true;
    log_error("the gateway may not list and watch this resource: grant its ServiceAccount list and watch on it "
              "(docs/REVOCATION.md)",
              "resource", resource_names[r->kind], "verb", verb, NULL);
}

static void list_page_done(resource_watch *r, CURLcode code, const char *detail)
{
    revocation_watch *w = r->owner;
    if (r->status == 410) {
        free_transfer(r);
        expired(r, "continue token expired");
        return;
    }
    if (code == CURLE_WRITE_ERROR && r->body_too_large) {
        /* A page over LIST_PAGE_MAX: smaller pages next time, from the start. */
        free_transfer(r);
        if (r->page_limit > 1) r->page_limit /= 2;
        fail(r, REVOCATION_ERROR_BAD_RESPONSE, NEXT_LIST, "list page too large: asking for fewer items");
        return;
    }
    if (code != CURLE_OK || r->status != 200) {
        if (r->status == 403) forbidden(r, "list");
        revocation_error e = code != CURLE_OK ? REVOCATION_ERROR_NETWORK : REVOCATION_ERROR_HTTP;
        free_transfer(r);
        fail(r, e, NEXT_LIST, detail);
        return;
    }
    char rv[REVOCATION_RV_MAX + 1];
    int rc =
        revocation_list_parse(r->body ? r->body : "", r->body_len, rv, r->continue_token, collector_mark, r->sweep);
    free_transfer(r);
    if (rc != 0) {
        fail(r, REVOCATION_ERROR_BAD_RESPONSE, NEXT_LIST, "the list answer is not a list");
        return;
    }
    if (!r->list_rv[0]) memcpy(r->list_rv, rv, sizeof(r->list_rv)); /* every page has the first's */
    if (r->continue_token[0]) {
        request_page(r);
        return;
    }
    /* The whole list is in: from here on, the watch sees every change. */
    sweep(r);
    memcpy(r->rv, r->list_rv, sizeof(r->rv));
    r->listed_once = true;
    pthread_mutex_lock(&w->lock);
    r->lists++;
    r->last_event_ms = monotonic_ms();
    pthread_mutex_unlock(&w->lock);
    start_watch(r);
}

static void watch_done(resource_watch *r, CURLcode code, const char *detail)
{
    int64_t lasted = r->stream_started_ms ? monotonic_ms() - r->stream_started_ms : 0;
    stop_reason stop = r->stop;
    long status = r->status;
    free_transfer(r);
    r->stream_started_ms = 0;
    if (stop == STOP_EXPIRED || status == 410) {
        expired(r, stop == STOP_EXPIRED ? "ERROR event" : "HTTP 410");
        return;
    }
    if (stop == STOP_BAD) {
        /* An event we cannot read (or an ERROR other than 410): start over from a list. */
        r->rv[0] = '\0';
        fail(r, REVOCATION_ERROR_BAD_RESPONSE, NEXT_LIST, "unreadable watch event, or an ERROR event");
        return;
    }
    if (lasted >= WATCH_HEALTHY_MS) r->failures = 0;
    if (code == CURLE_OK && status == 200 && (lasted >= 1000 || r->stream_had_events)) {
        /* The server ended the watch (timeoutSeconds): resume at once, nothing was missed. */
        start_watch(r);
        return;
    }
    if (status == 403) forbidden(r, "watch");
    if (code == CURLE_OK && status == 200) detail = "the server ended the watch at once";
    fail(r, code != CURLE_OK || status == 200 ? REVOCATION_ERROR_NETWORK : REVOCATION_ERROR_HTTP, NEXT_WATCH, detail);
}

/* A short, single-line account of a failed answer for the log: a Status's message, else
 * the start of the body with its whitespace collapsed. */
static void answer_summary(const char *body, size_t len, char *out, size_t cap)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    const char *message = json_string_value(json_object_get(doc, "message"));
    size_t n = 0;
    if (message) {
        body = message;
        len = strlen(message);
    }
    for (size_t i = 0; i < len && n + 1 < cap && n < 200; i++) {
        char c = body[i];
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
        if (c == ' ' && (n == 0 || out[n - 1] == ' ')) continue;
        out[n++] = c;
    }
    out[n] = '\0';
    json_decref(doc);
}

/* curl_loop_transfer.done: a list page or a watch ended. */
static void on_done(void *owner, CURL *easy, CURLcode code)
{
    (void)easy;
    resource_watch *r = owner;
    if (r->is_watch) evtimer_del(r->timer); /* the headers deadline, if still armed */
    api_client_note_status(r->owner->api, r->status);
    char detail[CURL_ERROR_SIZE + 320];
    if (code != CURLE_OK && r->stop == STOP_NONE) {
        snprintf(detail, sizeof(detail), "%s", r->curl_error[0] ? r->curl_error : curl_easy_strerror(code));
    } else if (r->status != 200 && r->body_len) {
        char summary[256];
        answer_summary(r->body, r->body_len, summary, sizeof(summary));
        snprintf(detail, sizeof(detail), "HTTP %ld: %s", r->status, summary);
    } else {
        snprintf(detail, sizeof(detail), "HTTP %ld", r->status);
    }
    if (r->is_watch)
        watch_done(r, code, detail);
    else
        list_page_done(r, code, detail);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    resource_watch *r = arg;
    switch (r->next) {
    case NEXT_LIST: start_list(r); break;
    case NEXT_WATCH: start_watch(r); break;
    case NEXT_HEADERS_DEADLINE:
        /* The watch request got no answer in time: abort it as a network failure. */
        if (r->easy && !r->headers_done) {
            free_transfer(r);
            fail(r, REVOCATION_ERROR_NETWORK, NEXT_WATCH, "no answer to the watch request in time");
        }
        break;
    }
}

/* ---- lifetime ---- */

revocation_watch *revocation_watch_new(struct event_base *base, const revocation_watch_options *options)
{
    if (!base || !options || !options->api || !options->evict) {
        log_error("revocation watch: missing options", NULL);
        return NULL;
    }
    revocation_watch *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    pthread_mutex_init(&w->lock, NULL);
    w->base = base;
    w->evict = options->evict;
    w->collect = options->collect;
    w->ctx = options->ctx;
    w->request_timeout_ms = options->request_timeout_ms > 0 ? options->request_timeout_ms : DEFAULT_REQUEST_TIMEOUT_MS;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    w->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)w;
    if (!w->rng) w->rng = 88172645463325252ULL;
    api_client_options api = *options->api;
    api.observe = NULL;
    api.observe_arg = NULL;
    w->api = api_client_new(base, &api);
    w->loop = curl_loop_new(base);
    if (!w->api || !w->loop) goto err;
    curl_multi_setopt(curl_loop_multi(w->loop), CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    int64_t now = monotonic_ms();
    for (int k = 0; k < REVOCATION_KINDS; k++) {
        resource_watch *r = &w->resources[k];
        r->owner = w;
        r->kind = (revocation_kind)k;
        r->enabled = k == REVOCATION_SERVICEACCOUNT || options->watch_pods;
        r->page_limit = k == REVOCATION_POD ? LIST_LIMIT_PODS : LIST_LIMIT_SERVICEACCOUNTS;
        r->last_event_ms = r->down_since_ms = now;
        revocation_lines_init(&r->lines, WATCH_LINE_MAX);
        if (!r->enabled) continue;
        r->timer = evtimer_new(base, on_timer, r);
        if (!r->timer) goto err;
        schedule(r, NEXT_LIST, 0); /* from the loop, not from here */
    }
    log_info("revocation watch started", "resources", options->watch_pods ? "serviceaccounts, pods" : "serviceaccounts",
             NULL);
    return w;
err:
    log_error("revocation watch: cannot start", NULL);
    revocation_watch_free(w);
    return NULL;
}

void revocation_watch_free(revocation_watch *w)
{
    if (!w) return;
    for (int k = 0; k < REVOCATION_KINDS; k++) {
        resource_watch *r = &w->resources[k];
        free_transfer(r); /* an easy handle exists only once the loop does */
        if (r->timer) event_free(r->timer);
        revocation_lines_free(&r->lines);
        free(r->body);
        collector_free(r->sweep);
    }
    curl_loop_free(w->loop);
    api_client_free(w->api);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* ---- reporting ---- */

static void stats_locked(const revocation_watch *w, revocation_watch_stats *s)
{
    int64_t now = monotonic_ms();
    memset(s, 0, sizeof(*s));
    for (int k = 0; k < REVOCATION_KINDS; k++) {
        const resource_watch *r = &w->resources[k];
        revocation_resource_stats *o = &s->resources[k];
        o->enabled = r->enabled;
        o->state = r->state;
        memcpy(o->events, r->events, sizeof(o->events));
        memcpy(o->errors, r->errors, sizeof(o->errors));
        o->lists = r->lists;
        o->relists = r->relists;
        o->last_event_age_s = (double)(now - r->last_event_ms) / 1000.0;
        o->down_s = r->state == REVOCATION_STATE_WATCHING ? 0 : (double)(now - r->down_since_ms) / 1000.0;
    }
    memcpy(s->evictions, w->evictions, sizeof(s->evictions));
    memcpy(s->refused, w->refused, sizeof(s->refused));
}

void revocation_watch_get_stats(const revocation_watch *w, revocation_watch_stats *s)
{
    if (!w) {
        memset(s, 0, sizeof(*s));
        return;
    }
    pthread_mutex_lock((pthread_mutex_t *)&w->lock);
    stats_locked(w, s);
    pthread_mutex_unlock((pthread_mutex_t *)&w->lock);
}

/* Appends one family's HELP and TYPE lines. */
static int family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    return evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type) < 0 ? -1 : 0;
}

int revocation_watch_render_metrics(const revocation_watch *w, struct evbuffer *out)
{
    if (!w) return 0;
    revocation_watch_stats s;
    revocation_watch_get_stats(w, &s);
    const revocation_resource_stats *res = s.resources;
    int rc = 0;
#define ADD(...) (rc |= evbuffer_add_printf(out, __VA_ARGS__) < 0 ? -1 : 0)
    rc |= family(out, "gateway_revocation_watch_up", "gauge",
                 "1 while the revocation watch of the resource is in sync (watching), else 0: then cached "
                 "identities expire at their normal TTL.");
    for (int k = 0; k < REVOCATION_KINDS; k++)
        if (res[k].enabled)
            ADD("gateway_revocation_watch_up{resource=\"%s\"} %d\n", resource_names[k],
                res[k].state == REVOCATION_STATE_WATCHING);
    rc |= family(out, "gateway_revocation_watch_state", "gauge",
                 "State of the revocation watch: 0 down, 1 listing, 2 watching.");
    for (int k = 0; k < REVOCATION_KINDS; k++)
        if (res[k].enabled)
            ADD("gateway_revocation_watch_state{resource=\"%s\"} %d\n", resource_names[k], (int)res[k].state);
    rc |= family(out, "gateway_revocation_watch_events_total", "counter", "Watch events received, by type.");
    for (int k = 0; k < REVOCATION_KINDS; k++) {
        if (!res[k].enabled) continue;
        for (int t = 0; t < REVOCATION_EVENT_TYPES; t++)
            ADD("gateway_revocation_watch_events_total{resource=\"%s\",type=\"%s\"} %llu\n", resource_names[k],
                revocation_event_type_name((revocation_event_type)t), (unsigned long long)res[k].events[t]);
    }
    rc |= family(out, "gateway_revocation_evictions_total", "counter",
                 "Cache entries evicted because their ServiceAccount or Pod was deleted.");
    for (int c = 0; c < REVOCATION_CAUSES; c++) {
        bool pod_cause = c == REVOCATION_CAUSE_POD_DELETED || c == REVOCATION_CAUSE_POD_MISSING;
        if (pod_cause && !res[REVOCATION_POD].enabled) continue;
        ADD("gateway_revocation_evictions_total{cause=\"%s\"} %llu\n", revocation_cause_name((revocation_cause)c),
            (unsigned long long)s.evictions[c]);
    }
    rc |= family(out, "gateway_revocation_refused_total", "counter",
                 "Review answers that vouched for an identity whose ServiceAccount or Pod was seen deleted, "
                 "refused (the API server caches its own verdicts for a while).");
    for (int k = 0; k < REVOCATION_KINDS; k++)
        if (res[k].enabled)
            ADD("gateway_revocation_refused_total{kind=\"%s\"} %llu\n", k == REVOCATION_POD ? "pod" : "serviceaccount",
                (unsigned long long)s.refused[k]);
    rc |= family(out, "gateway_revocation_watch_last_event_age_seconds", "gauge",
                 "Seconds since the last watch event or completed list.");
    for (int k = 0; k < REVOCATION_KINDS; k++)
        if (res[k].enabled)
            ADD("gateway_revocation_watch_last_event_age_seconds{resource=\"%s\"} %.3f\n", resource_names[k],
                res[k].last_event_age_s);
    rc |= family(out, "gateway_revocation_watch_relists_total", "counter",
                 "Lists after the first one (410 Gone, or starting over).");
    for (int k = 0; k < REVOCATION_KINDS; k++)
        if (res[k].enabled)
            ADD("gateway_revocation_watch_relists_total{resource=\"%s\"} %llu\n", resource_names[k],
                (unsigned long long)res[k].relists);
    rc |= family(out, "gateway_revocation_watch_errors_total", "counter", "Failed list or watch requests, by reason.");
    for (int k = 0; k < REVOCATION_KINDS; k++) {
        if (!res[k].enabled) continue;
        for (int e = 0; e < REVOCATION_ERROR_KINDS; e++)
            ADD("gateway_revocation_watch_errors_total{resource=\"%s\",reason=\"%s\"} %llu\n", resource_names[k],
                error_names[e], (unsigned long long)res[k].errors[e]);
    }
#undef ADD
    return rc ? -1 : 0;
}

bool revocation_watch_healthy(const revocation_watch *w)
{
    if (!w) return true;
    revocation_watch_stats s;
    revocation_watch_get_stats(w, &s);
    for (int k = 0; k < REVOCATION_KINDS; k++)
        if (s.resources[k].enabled && s.resources[k].state != REVOCATION_STATE_WATCHING) return false;
    return true;
}

size_t revocation_watch_describe(const revocation_watch *w, char *buf, size_t cap)
{
    static const char *const state_names[] = {"down", "listing", "watching"};
    char text[256];
    size_t len = 0;
    if (!w) {
        len = (size_t)snprintf(text, sizeof(text), "revocation watch: off");
    } else {
        revocation_watch_stats s;
        revocation_watch_get_stats(w, &s);
        bool healthy = true;
        len = (size_t)snprintf(text, sizeof(text), "revocation watch:");
        for (int k = 0, first = 1; k < REVOCATION_KINDS; k++) {
            const revocation_resource_stats *r = &s.resources[k];
            if (!r->enabled) continue;
            if (r->state != REVOCATION_STATE_WATCHING) healthy = false;
            if (r->state == REVOCATION_STATE_WATCHING)
                len += (size_t)snprintf(text + len, sizeof(text) - len, "%s %s watching", first ? "" : ",",
                                        resource_names[k]);
            else
                len += (size_t)snprintf(text + len, sizeof(text) - len, "%s %s %s for %.0fs", first ? "" : ",",
                                        resource_names[k], state_names[r->state], r->down_s);
            first = 0;
        }
        if (!healthy)
            len += (size_t)snprintf(text + len, sizeof(text) - len,
                                    " (reconnecting; cached identities expire at their normal TTL)");
    }
    if (cap) snprintf(buf, cap, "%s", text);
    return len;
}

bool revocation_watch_recently_revoked(revocation_watch *w, const identity_view *id, revocation_kind *kind)
{
    if (!w) return false;
    str_view ns, name, pod_uid;
    bool is_sa = identity_serviceaccount(id->username, &ns, &name);
    if (!is_sa) return false;
    char key[REVOCATION_NAMESPACE_MAX + REVOCATION_NAME_MAX + 2];
    uint64_t name_hash = 0, uid_hash = 0, pod_hash = 0;
    if (ns.len <= REVOCATION_NAMESPACE_MAX && name.len <= REVOCATION_NAME_MAX) {
        int n = snprintf(key, sizeof(key), "%.*s/%.*s", (int)ns.len, ns.ptr, (int)name.len, name.ptr);
        name_hash = hash_bytes(key, (size_t)n);
    }
    if (id->uid.len) uid_hash = hash_bytes(id->uid.ptr, id->uid.len);
    if (identity_extra_first(id, POD_UID_KEY, &pod_uid) && pod_uid.len) pod_hash = hash_bytes(pod_uid.ptr, pod_uid.len);
    int64_t now = monotonic_ms();
    bool hit = false;
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < w->tombstone_count && !hit; i++) {
        const tombstone *t = &w->tombstones[i];
        if (now - t->at_ms > REVOCATION_TOMBSTONE_MS) continue;
        if (t->kind == REVOCATION_SERVICEACCOUNT)
            hit = name_hash && t->name_hash == name_hash && (!t->uid_hash || !uid_hash || t->uid_hash == uid_hash);
        else
            hit = pod_hash && t->uid_hash == pod_hash;
        if (hit && kind) *kind = t->kind;
    }
    pthread_mutex_unlock(&w->lock);
    return hit;
}

bool revocation_watch_refuse(revocation_watch *w, const identity_view *id)
{
    revocation_kind kind = REVOCATION_SERVICEACCOUNT;
    if (!revocation_watch_recently_revoked(w, id, &kind)) return false;
    pthread_mutex_lock(&w->lock);
    w->refused[kind]++;
    pthread_mutex_unlock(&w->lock);
    return true;
}
