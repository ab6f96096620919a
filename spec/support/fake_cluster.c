/*
 * fake_cluster.c - the fake API server's ServiceAccounts and Pods: a store, list, watch,
 * and the event history that watches resume from.
 *
 *   GET /api/v1/serviceaccounts, GET /api/v1/pods
 *       list: limit/continue pagination in key order (namespace/name, as etcd keeps them),
 *       metadata.resourceVersion, metadata.continue and remainingItemCount; a continue token
 *       older than the history's compaction answers 410 Expired, as kube-apiserver does
 *   ...?watch=1&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=T
 *       one JSON event per line (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR), chunked in
 *       HTTP/1.1 and DATA frames in HTTP/2; no resourceVersion (or "0") starts with a
 *       synthetic ADDED for every object; a resourceVersion older than the compacted
 *       history gets 200 and one ERROR event with a 410 Expired Status (the captured
 *       behaviour of the watch cache), or HTTP 410 with the watch_gone_http knob
 *
 * Where objects come from: every token of the token table whose user is
 * system:serviceaccount:NS:NAME has a ServiceAccount (uid = the user's uid, or a random one),
 * and every token whose user has extra authentication.kubernetes.io/pod-uid and pod-name
 * has a Pod; both are created when the token first appears in the table. The control
 * listener creates and deletes more (fake_cluster_control). A deleted ServiceAccount (or a
 * recreated one with another uid), or a deleted Pod, makes later TokenReviews of the related
 * tokens unauthenticated with the captures' wording.
 *
 * resourceVersions are one counter shared by both resources (like etcd's revision), started
 * at the current time in microseconds so that they keep growing across restarts of the
 * fake; a watch that resumes after a restart gets 410 and must relist, as after an etcd
 * compaction. The history keeps the last HISTORY_MAX events of each resource; older ones
 * are compacted.
 *
 * Names are checked when objects are made (DNS labels and subdomains, simple uids), so the
 * JSON below is written without escaping.
 */
#include "fake_apiserver.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/evp.h>

#define SA_PATH "/api/v1/serviceaccounts"
#define POD_PATH "/api/v1/pods"
#define POD_UID_KEY "authentication.kubernetes.io/pod-uid"
#define POD_NAME_KEY "authentication.kubernetes.io/pod-name"
#define SA_PREFIX "system:serviceaccount:"
#define JSON_TYPE "application/json"

enum {
    HISTORY_MAX = 8192, /* events kept per resource for resuming watches */
    NAMESPACE_MAX = 63, /* DNS-1123 label */
    NAME_MAX_LEN = 253, /* DNS-1123 subdomain */
    UID_MAX = 128,
    OBJECT_JSON_MAX = 2048, /* one object as JSON; the names above bound it */
    BULK_MAX = 1000000,
};

struct fake_object {
    unsigned refs; /* the store and history events share versions */
    enum fake_resource res;
    uint64_t rv;
    time_t created;
    bool deleting; /* a Pod's last MODIFIED: deletionTimestamp set */
    const char *namespace_name, *name, *uid;
    const char *serviceaccount; /* Pods: spec.serviceAccountName; "" for ServiceAccounts */
    char data[];                /* the strings above */
};

struct fake_history_event {
    const char *type;        /* ADDED, MODIFIED, DELETED */
    struct fake_object *obj; /* obj->rv is the event's resourceVersion */
};

struct fake_watcher {
    struct fake_server *srv;
    struct fake_exchange *ex;
    enum fake_resource res;
    bool bookmarks;
    struct event *timeout; /* timeoutSeconds */
    LIST_ENTRY(fake_watcher) link;
};

static const char *const resource_plural[FAKE_RESOURCES] = {"serviceaccounts", "pods"};
static const char *const resource_kind[FAKE_RESOURCES] = {"ServiceAccount", "Pod"};

/* ---- names and objects ---- */

/* DNS-1123 label (namespaces) or subdomain (names): lower-case alphanumerics, '-' (and '.'
 * in subdomains), starting and ending alphanumeric. */
static bool valid_dns(const char *s, size_t max, bool dots)
{
    size_t len = s ? strlen(s) : 0;

    if (len == 0 || len > max || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[len - 1])) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(islower(c) || isdigit(c) || c == '-' || (dots && c == '.'))) return false;
    }
    return true;
}

static bool valid_namespace(const char *s)
{
    return valid_dns(s, NAMESPACE_MAX, false);
}

static bool valid_name(const char *s)
{
    return valid_dns(s, NAME_MAX_LEN, true);
}

static bool valid_uid(const char *s)
{
    size_t len = s ? strlen(s) : 0;

    if (len == 0 || len > UID_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '-' || c == '.' || c == '_')) return false;
    }
    return true;
}

static struct fake_object *object_new(enum fake_resource res, const char *ns, const char *name, const char *uid,
                                      const char *serviceaccount, uint64_t rv, time_t created)
{
    size_t lns = strlen(ns) + 1, lname = strlen(name) + 1, luid = strlen(uid) + 1;
    size_t lsa = strlen(serviceaccount) + 1;
    struct fake_object *o = malloc(sizeof *o + lns + lname + luid + lsa);
    char *p;

    if (!o) return NULL;
    o->refs = 1;
    o->res = res;
    o->rv = rv;
    o->created = created;
    o->deleting = false;
    p = o->data;
    o->namespace_name = memcpy(p, ns, lns);
    p += lns;
    o->name = memcpy(p, name, lname);
    p += lname;
    o->uid = memcpy(p, uid, luid);
    p += luid;
    o->serviceaccount = memcpy(p, serviceaccount, lsa);
    return o;
}

/* A new version of o (same object) at rv. */
static struct fake_object *object_version(const struct fake_object *o, uint64_t rv)
{
    struct fake_object *v = object_new(o->res, o->namespace_name, o->name, o->uid, o->serviceaccount, rv, o->created);

    if (v) v->deleting = o->deleting;
    return v;
}

static void object_unref(struct fake_object *o)
{
    if (o && --o->refs == 0) free(o);
}

static void rfc3339(time_t t, char *buf, size_t len)
{
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* o as JSON into buf (OBJECT_JSON_MAX): with kind and apiVersion in watch events, without
 * them in list items (as the captures show). Returns the length. */
static size_t object_json(const struct fake_object *o, bool with_kind, char *buf)
{
    char created[32], deleted[32];
    int n;

    rfc3339(o->created, created, sizeof created);
    n = snprintf(buf, OBJECT_JSON_MAX,
                 "{%s%s%s\"metadata\":{\"name\":\"%s\",\"namespace\":\"%s\","
                 "\"uid\":\"%s\",\"resourceVersion\":\"%" PRIu64 "\","
                 "\"creationTimestamp\":\"%s\"",
                 with_kind ? "\"kind\":\"" : "", with_kind ? resource_kind[o->res] : "",
                 with_kind ? "\",\"apiVersion\":\"v1\"," : "", o->name, o->namespace_name, o->uid, o->rv, created);
    if (o->deleting) {
        rfc3339(time(NULL), deleted, sizeof deleted);
        n += snprintf(buf + n, OBJECT_JSON_MAX - (size_t)n,
                      ",\"deletionTimestamp\":\"%s\",\"deletionGracePeriodSeconds\":0", deleted);
    }
    if (o->res == FAKE_PODS)
        n += snprintf(buf + n, OBJECT_JSON_MAX - (size_t)n,
                      "},\"spec\":{\"containers\":[{\"name\":\"main\",\"image\":"
                      "\"example.invalid/none\"}],\"serviceAccountName\":\"%s\","
                      "\"serviceAccount\":\"%s\"},\"status\":{\"phase\":\"Running\"}}",
                      o->serviceaccount, o->serviceaccount);
    else
        n += snprintf(buf + n, OBJECT_JSON_MAX - (size_t)n, "}}");
    return (size_t)n;
}

/* ---- the store, sorted by "namespace/name" bytes (etcd's key order) ---- */

static int key_cmp(const char *ns_a, const char *name_a, const char *ns_b, const char *name_b)
{
    char a[NAMESPACE_MAX + NAME_MAX_LEN + 2], b[NAMESPACE_MAX + NAME_MAX_LEN + 2];

    snprintf(a, sizeof a, "%s/%s", ns_a, name_a);
    snprintf(b, sizeof b, "%s/%s", ns_b, name_b);
    return strcmp(a, b);
}

/* Index of ns/name, or -1 with *pos set to where it would go. */
static long store_find(const struct fake_store *st, const char *ns, const char *name, size_t *pos)
{
    size_t lo = 0, hi = st->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = key_cmp(st->items[mid]->namespace_name, st->items[mid]->name, ns, name);
        if (c == 0) {
            *pos = mid;
            return (long)mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *pos = lo;
    return -1;
}

/* The first index whose key is after "ns/name" (a continue token's start). */
static size_t store_after(const struct fake_store *st, const char *key)
{
    size_t lo = 0, hi = st->n;
    char k[NAMESPACE_MAX + NAME_MAX_LEN + 2];

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        snprintf(k, sizeof k, "%s/%s", st->items[mid]->namespace_name, st->items[mid]->name);
        if (strcmp(k, key) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int store_insert(struct fake_store *st, size_t pos, struct fake_object *o)
{
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 64;
        struct fake_object **grown = realloc(st->items, cap * sizeof *grown);
        if (!grown) return -1;
        st->items = grown;
        st->cap = cap;
    }
    memmove(st->items + pos + 1, st->items + pos, (st->n - pos) * sizeof *st->items);
    st->items[pos] = o;
    st->n++;
    return 0;
}

static struct fake_object *store_remove(struct fake_store *st, size_t pos)
{
    struct fake_object *o = st->items[pos];

    memmove(st->items + pos, st->items + pos + 1, (st->n - pos - 1) * sizeof *st->items);
    st->n--;
    return o;
}

/* ---- history ---- */

static void history_clear(struct fake_history *h)
{
    for (size_t i = 0; i < h->count; i++) object_unref(h->ring[(h->start + i) % HISTORY_MAX].obj);
    h->start = h->count = 0;
}

/* Keep the event (takes a reference); the oldest one goes when full: compaction. */
static void history_push(struct fake_history *h, const char *type, struct fake_object *o)
{
    struct fake_history_event *slot;

    if (h->count == HISTORY_MAX) {
        slot = &h->ring[h->start];
        h->compacted_rv = slot->obj->rv; /* a watch from before it cannot resume */
        object_unref(slot->obj);
        h->start = (h->start + 1) % HISTORY_MAX;
        h->count--;
    }
    slot = &h->ring[(h->start + h->count) % HISTORY_MAX];
    slot->type = type;
    slot->obj = o;
    o->refs++;
    h->count++;
}

/* ---- watch streams ---- */

static void write_line(struct fake_exchange *ex, const char *type, const struct fake_object *o)
{
    char obj[OBJECT_JSON_MAX], line[OBJECT_JSON_MAX + 64];
    int n;

    object_json(o, true, obj);
    n = snprintf(line, sizeof line, "{\"type\":\"%s\",\"object\":%s}\n", type, obj);
    ex->ops->stream_write(ex, line, (size_t)n);
}

static void write_bookmark(struct fake_watcher *w)
{
    char line[256];
    int n = snprintf(line, sizeof line,
                     "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"%s\",\"apiVersion\":\"v1\","
                     "\"metadata\":{\"resourceVersion\":\"%" PRIu64 "\",\"creationTimestamp\":null}}}\n",
                     resource_kind[w->res], w->srv->cluster.rv);

    w->ex->ops->stream_write(w->ex, line, (size_t)n);
}

/* The ERROR event of a watch from a compacted resourceVersion, as the capture has it. */
static void write_expired(struct fake_exchange *ex, uint64_t from, uint64_t oldest)
{
    char line[512];
    int n = snprintf(line, sizeof line,
                     "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\","
                     "\"metadata\":{},\"status\":\"Failure\",\"message\":\"too old resource "
                     "version: %" PRIu64 " (%" PRIu64 ")\",\"reason\":\"Expired\",\"code\":410}}\n",
                     from, oldest);

    ex->ops->stream_write(ex, line, (size_t)n);
}

/* Forget w and give its exchange back to the transport. */
static struct fake_exchange *watcher_detach(struct fake_watcher *w)
{
    struct fake_exchange *ex = w->ex;

    LIST_REMOVE(w, link);
    if (w->timeout) event_free(w->timeout);
    ex->watch = NULL;
    free(w);
    return ex;
}

/* End a watch: cleanly (the body ends, the client reconnects), or by dropping the
 * connection (abrupt), as a network failure or a dying server would. */
static void watcher_end(struct fake_watcher *w, bool abrupt)
{
    struct fake_exchange *ex = watcher_detach(w);

    if (abrupt)
        ex->ops->close(ex);
    else
        ex->ops->stream_end(ex);
}

static void watch_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    watcher_end(arg, false); /* timeoutSeconds: a normal end */
}

void fake_cluster_cancel(struct fake_exchange *ex)
{
    if (ex->watch) watcher_detach(ex->watch);
}

/* Record an event and send it to the watches of its resource. */
static void emit(struct fake_server *srv, const char *type, struct fake_object *o)
{
    struct fake_watcher *w;

    history_push(&srv->cluster.stores[o->res].history, type, o);
    LIST_FOREACH(w, &srv->cluster.watchers, link) {
        if (w->res == o->res) write_line(w->ex, type, o);
    }
}

static size_t send_bookmarks(struct fake_server *srv, int res)
{
    struct fake_watcher *w;
    size_t n = 0;

    LIST_FOREACH(w, &srv->cluster.watchers, link) {
        if (w->bookmarks && (res < 0 || (int)w->res == res)) {
            write_bookmark(w);
            n++;
        }
    }
    return n;
}

static void bookmark_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    send_bookmarks(arg, -1);
}

void fake_cluster_config_changed(struct fake_server *srv)
{
    int ms = srv->config.watch_bookmark_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    evtimer_del(srv->cluster.bookmark_timer);
    if (ms > 0) evtimer_add(srv->cluster.bookmark_timer, &tv);
}

/* End every watch of res (-1: all). */
static size_t end_watches(struct fake_server *srv, int res, bool abrupt, bool expired)
{
    struct fake_watcher *w = LIST_FIRST(&srv->cluster.watchers), *next;
    size_t n = 0;

    for (; w; w = next) {
        next = LIST_NEXT(w, link);
        if (res >= 0 && (int)w->res != res) continue;
        if (expired)
            write_expired(w->ex, srv->cluster.stores[w->res].history.compacted_rv - 1,
                          srv->cluster.stores[w->res].history.compacted_rv);
        watcher_end(w, abrupt);
        n++;
    }
    return n;
}

/* Forget the history of res (-1: all): watches from any resourceVersion handed out so far
 * get 410. A compaction takes a revision of its own, so the next list's resourceVersion is
 * valid to watch from. */
static void compact(struct fake_server *srv, int res)
{
    srv->cluster.rv++;
    for (int r = 0; r < FAKE_RESOURCES; r++) {
        if (res >= 0 && r != res) continue;
        history_clear(&srv->cluster.stores[r].history);
        srv->cluster.stores[r].history.compacted_rv = srv->cluster.rv;
    }
}

/* ---- creating and deleting ---- */

/* Create an object; returns it (owned by the store), or NULL with *status and *why set. */
static struct fake_object *create(struct fake_server *srv, enum fake_resource res, const char *ns, const char *name,
                                  const char *uid, const char *serviceaccount, int *status, const char **why)
{
    struct fake_store *st = &srv->cluster.stores[res];
    struct fake_object *o;
    char random_uid[37];
    size_t pos;

    if (!valid_namespace(ns) || !valid_name(name) || (uid && !valid_uid(uid)) ||
        (res == FAKE_PODS && !valid_name(serviceaccount))) {
        *status = 400;
        *why = "namespace, name and serviceaccount must be DNS names, uid [A-Za-z0-9._-]";
        return NULL;
    }
    if (store_find(st, ns, name, &pos) >= 0) {
        *status = 409;
        *why = "already exists";
        return NULL;
    }
    if (!uid) {
        fake_random_uuid(random_uid);
        uid = random_uid;
    }
    o = object_new(res, ns, name, uid, res == FAKE_PODS ? serviceaccount : "", srv->cluster.rv + 1, time(NULL));
    if (!o || store_insert(st, pos, o) < 0) {
        object_unref(o);
        *status = 500;
        *why = "out of memory";
        return NULL;
    }
    srv->cluster.rv++;
    emit(srv, "ADDED", o);
    return o;
}

/* Delete ns/name; a Pod is first marked for deletion (MODIFIED with deletionTimestamp), as
 * the captured force-deletion shows. Returns the deleted version (a new reference) or NULL. */
static struct fake_object *delete (struct fake_server *srv, enum fake_resource res, const char *ns, const char *name)
{
    struct fake_store *st = &srv->cluster.stores[res];
    struct fake_object *o, *gone;
    size_t pos;

    if (!ns || !name || store_find(st, ns, name, &pos) < 0) return NULL;
    o = st->items[pos];
    if (res == FAKE_PODS) {
        struct fake_object *marked = object_version(o, srv->cluster.rv + 1);
        if (!marked) return NULL;
        marked->deleting = true;
        srv->cluster.rv++;
        st->items[pos] = marked;
        object_unref(o);
        o = marked;
        emit(srv, "MODIFIED", o);
    }
    gone = object_version(o, srv->cluster.rv + 1);
    if (!gone) return NULL;
    srv->cluster.rv++;
    object_unref(store_remove(st, pos));
    emit(srv, "DELETED", gone);
    return gone;
}

/* ---- tokens ---- */

/* The ServiceAccount of a user object, if its username is a valid system:serviceaccount:
 * name: ns and name are written into the buffers. */
static bool user_serviceaccount(const json_t *user, char ns[NAMESPACE_MAX + 1], char name[NAME_MAX_LEN + 1])
{
    const char *username = json_string_value(json_object_get(user, "username"));
    const char *rest, *colon;

    if (!username || strncmp(username, SA_PREFIX, strlen(SA_PREFIX)) != 0) return false;
    rest = username + strlen(SA_PREFIX);
    colon = strchr(rest, ':');
    if (!colon || (size_t)(colon - rest) > NAMESPACE_MAX || strlen(colon + 1) > NAME_MAX_LEN) return false;
    memcpy(ns, rest, (size_t)(colon - rest));
    ns[colon - rest] = '\0';
    strcpy(name, colon + 1);
    return valid_namespace(ns) && valid_name(name);
}

/* The first value of extra[key], or NULL. */
static const char *user_extra(const json_t *user, const char *key)
{
    return json_string_value(json_array_get(json_object_get(json_object_get(user, "extra"), key), 0));
}

static const char *user_uid(const json_t *user)
{
    const char *uid = json_string_value(json_object_get(user, "uid"));

    return uid && valid_uid(uid) ? uid : NULL;
}

/* A pod-bound user's Pod: its uid and name, when both are usable. */
static bool user_pod(const json_t *user, const char **uid, const char **name)
{
    *uid = user_extra(user, POD_UID_KEY);
    *name = user_extra(user, POD_NAME_KEY);
    return *uid && *name && valid_uid(*uid) && valid_name(*name);
}

int fake_cluster_check_tokens(const json_t *tokens, char *err, size_t errlen)
{
    json_t *sa_uids = json_object(), *pods = json_object();
    const char *token, *pod_uid, *pod_name;
    json_t *entry, *seen;
    char ns[NAMESPACE_MAX + 1], name[NAME_MAX_LEN + 1], key[NAMESPACE_MAX + NAME_MAX_LEN + 2];
    int rc = 0;

    json_object_foreach((json_t *)tokens, token, entry)

    {
        json_t *user = json_object_get(entry, "user");
        const char *uid = user_uid(user);
        if (!user_serviceaccount(user, ns, name)) continue;
        snprintf(key, sizeof key, "%s/%s", ns, name);
        seen = json_object_get(sa_uids, key);
        if (uid && seen && strcmp(json_string_value(seen), uid) != 0) {
            snprintf(err, errlen, "ServiceAccount %s has two uids in the token table (%s, %s)", key,
                     json_string_value(seen), uid);
            rc = -1;
            break;
        }
        if (uid && !seen) json_object_set_new(sa_uids, key, json_string(uid));
        if (!user_pod(user, &pod_uid, &pod_name)) continue;
        snprintf(key, sizeof key, "%s/%s", ns, pod_name);
        seen = json_object_get(pods, pod_uid);
        if (seen && strcmp(json_string_value(seen), key) != 0) {
            snprintf(err, errlen, "Pod uid %s names two pods in the token table", pod_uid);
            rc = -1;
            break;
        }
        json_object_set_new(pods, pod_uid, json_string(key));
    }
    json_decref(sa_uids);
    json_decref(pods);
    return rc;
}

void fake_cluster_add_tokens(struct fake_server *srv, const json_t *old, const json_t *tokens)
{
    const char *token, *why, *pod_uid, *pod_name;
    json_t *entry;
    char ns[NAMESPACE_MAX + 1], name[NAME_MAX_LEN + 1];
    int status;

    /* Two passes: a ServiceAccount takes the uid a token gives it before one is made up
     * for tokens that name none. */
    for (int pass = 0; pass < 2; pass++) {
        json_object_foreach((json_t *)tokens, token, entry) {
            json_t *user = json_object_get(entry, "user");
            const char *uid = user_uid(user);
            size_t pos;
            if ((old && json_object_get(old, token)) || !user_serviceaccount(user, ns, name) ||
                (pass == 0) != (uid != NULL))
                continue;
            if (store_find(&srv->cluster.stores[FAKE_SERVICEACCOUNTS], ns, name, &pos) < 0)
                create(srv, FAKE_SERVICEACCOUNTS, ns, name, uid, "", &status, &why);
            if (user_pod(user, &pod_uid, &pod_name) &&
                store_find(&srv->cluster.stores[FAKE_PODS], ns, pod_name, &pos) < 0)
                create(srv, FAKE_PODS, ns, pod_name, pod_uid, name, &status, &why);
        }
    }
}

const char *fake_cluster_token_error(struct fake_server *srv, const json_t *user)
{
    static char why[512];
    char ns[NAMESPACE_MAX + 1], name[NAME_MAX_LEN + 1];
    const char *uid = user_uid(user), *pod_uid, *pod_name;
    const struct fake_store *pods = &srv->cluster.stores[FAKE_PODS];
    long i;
    size_t pos;

    if (!user_serviceaccount(user, ns, name)) return NULL; /* not a ServiceAccount the fake models: never revoked */
    i = store_find(&srv->cluster.stores[FAKE_SERVICEACCOUNTS], ns, name, &pos);
    if (i < 0) {
        snprintf(why, sizeof why, "serviceaccounts \"%s\" not found", name);
        return why;
    }
    if (uid && strcmp(srv->cluster.stores[FAKE_SERVICEACCOUNTS].items[i]->uid, uid) != 0) {
        snprintf(why, sizeof why, "service account UID (%s) does not match claim (%s)",
                 srv->cluster.stores[FAKE_SERVICEACCOUNTS].items[i]->uid, uid);
        return why;
    }
    if (!user_pod(user, &pod_uid, &pod_name)) return NULL;
    /* As kube-apiserver does: the bound pod, by name in the ServiceAccount's namespace,
     * must still exist with the same uid (a lookup, not a scan: 100 000 pods stay fast). */
    if (pod_name && (i = store_find(pods, ns, pod_name, &pos)) >= 0 && strcmp(pods->items[i]->uid, pod_uid) == 0)
        return NULL;
    return "service account token has been invalidated";
}

/* ---- requests ---- */

struct list_query {
    bool watch, bookmarks;
    bool has_rv;
    uint64_t rv;
    long limit;           /* 0: everything */
    long timeout_seconds; /* 0: none */
    char continue_token[1024];
    bool bad; /* a value the real server would refuse */
};

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decode [s, s+len) into out (cap bytes, NUL-terminated). false if too long. */
static bool url_decode(const char *s, size_t len, char *out, size_t cap)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < len && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
            c = (char)(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (n + 1 >= cap) return false;
        out[n++] = c;
    }
    out[n] = '\0';
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (!*s) return false;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s) || v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

static bool is_true(const char *v)
{
    return strcmp(v, "1") == 0 || strcmp(v, "true") == 0;
}

static void parse_query(const char *query, struct list_query *q)
{
    memset(q, 0, sizeof *q);
    while (query && *query) {
        size_t len = strcspn(query, "&");
        const char *eq = memchr(query, '=', len);
        char name[64], value[1024];
        uint64_t n;

        if (eq && url_decode(query, (size_t)(eq - query), name, sizeof name) &&
            url_decode(eq + 1, len - (size_t)(eq - query) - 1, value, sizeof value)) {
            if (strcmp(name, "watch") == 0)
                q->watch = is_true(value);
            else if (strcmp(name, "allowWatchBookmarks") == 0)
                q->bookmarks = is_true(value);
            else if (strcmp(name, "resourceVersion") == 0 && *value) {
                q->has_rv = true;
                if (!parse_u64(value, &q->rv)) q->bad = true;
            } else if (strcmp(name, "limit") == 0) {
                if (!parse_u64(value, &n) || n > 1000000000)
                    q->bad = true;
                else
                    q->limit = (long)n;
            } else if (strcmp(name, "timeoutSeconds") == 0) {
                if (!parse_u64(value, &n) || n > 86400)
                    q->bad = true;
                else
                    q->timeout_seconds = (long)n;
            } else if (strcmp(name, "continue") == 0) {
                snprintf(q->continue_token, sizeof q->continue_token, "%s", value);
            }
        } else if (eq) {
            q->bad = true; /* too long to be anything a client sends */
        }
        query += len;
        if (*query == '&') query++;
    }
}

/* Continue tokens: base64url (no padding) of {"v":"meta.k8s.io/v1","rv":N,"start":"KEY\0"},
 * the shape kube-apiserver uses. */
static void continue_encode(uint64_t rv, const char *last_key, char *out, size_t cap)
{
    char json[NAMESPACE_MAX + NAME_MAX_LEN + 128];
    unsigned char b64[sizeof json * 4 / 3 + 8];
    int n = snprintf(json, sizeof json, "{\"v\":\"meta.k8s.io/v1\",\"rv\":%" PRIu64 ",\"start\":\"%s\\u0000\"}", rv,
                     last_key);
    int len = EVP_EncodeBlock(b64, (const unsigned char *)json, n);

    while (len > 0 && b64[len - 1] == '=') len--;
    for (int i = 0; i < len; i++) b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
    snprintf(out, cap, "%.*s", len, (const char *)b64);
}

/* Decode a continue token into its resourceVersion and start key; false if malformed. */
static bool continue_decode(const char *token, uint64_t *rv, char *start, size_t cap)
{
    size_t len = strlen(token);
    char b64[1100];
    unsigned char raw[900];
    json_t *doc;
    const char *key;
    int n;
    bool ok = false;

    if (len == 0 || len + 4 >= sizeof b64) return false;
    for (size_t i = 0; i < len; i++) b64[i] = token[i] == '-' ? '+' : token[i] == '_' ? '/' : token[i];
    while (len % 4) b64[len++] = '=';
    b64[len] = '\0';
    n = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)len);
    if (n <= 0) return false;
    while (n > 0 && raw[n - 1] == '\0') n--; /* EVP_DecodeBlock pads its output with zeros */
    doc = json_loadb((const char *)raw, (size_t)n, JSON_ALLOW_NUL, NULL);
    key = json_string_value(json_object_get(doc, "start"));
    if (json_is_integer(json_object_get(doc, "rv")) && key && strlen(key) < cap) {
        *rv = (uint64_t)json_integer_value(json_object_get(doc, "rv"));
        snprintf(start, cap, "%s", key); /* the NUL suffix ends the C string */
        ok = true;
    }
    json_decref(doc);
    return ok;
}

static void answer_list(struct fake_server *srv, struct fake_exchange *ex, enum fake_resource res,
                        const struct list_query *q)
{
    const struct fake_store *st = &srv->cluster.stores[res];
    struct fake_response resp;
    uint64_t rv = srv->cluster.rv;
    size_t first = 0, end, size = 0;
    char start[NAMESPACE_MAX + NAME_MAX_LEN + 2], item[OBJECT_JSON_MAX];
    char *body = NULL;
    FILE *f;

    if (q->continue_token[0]) {
        if (!continue_decode(q->continue_token, &rv, start, sizeof start)) {
            fake_answer_status(&resp, 400, "invalid continue token");
            goto deliver;
        }
        if (rv < st->history.compacted_rv) {
            fake_answer_status(&resp, 410,
                               "The provided continue parameter is too old to display a "
                               "consistent list result. You can start a new list without the "
                               "continue parameter.");
            goto deliver;
        }
        first = store_after(st, start);
    }
    end = q->limit > 0 && (size_t)q->limit < st->n - first ? first + (size_t)q->limit : st->n;

    f = open_memstream(&body, &size);
    if (!f) {
        fake_answer_status(&resp, 500, "fake-apiserver: out of memory");
        goto deliver;
    }
    fprintf(f, "{\"kind\":\"%sList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"%" PRIu64 "\"",
            resource_kind[res], rv);
    if (end < st->n) {
        char token[1024];
        snprintf(start, sizeof start, "%s/%s", st->items[end - 1]->namespace_name, st->items[end - 1]->name);
        continue_encode(rv, start, token, sizeof token);
        fprintf(f, ",\"continue\":\"%s\",\"remainingItemCount\":%zu", token, st->n - end);
    }
    fputs("},\"items\":[", f);
    for (size_t i = first; i < end; i++) {
        object_json(st->items[i], false, item);
        fprintf(f, "%s%s", i > first ? "," : "", item);
    }
    fputs("]}\n", f);
    if (fclose(f) != 0 || !body) {
        free(body);
        fake_answer_status(&resp, 500, "fake-apiserver: out of memory");
        goto deliver;
    }
    fake_answer_start(&resp, 200, JSON_TYPE, true);
    resp.body = body;
    resp.body_len = size;
deliver:
    ex->ops->respond(ex, &resp);
    fake_response_clear(&resp);
}

static void answer_watch(struct fake_server *srv, struct fake_exchange *ex, enum fake_resource res,
                         const struct list_query *q)
{
    const struct fake_store *st = &srv->cluster.stores[res];
    const struct fake_history *h = &st->history;
    struct fake_response head;
    struct fake_watcher *w;
    bool expired = q->has_rv && q->rv != 0 && q->rv < h->compacted_rv;

    if (expired && srv->config.watch_gone_http) {
        char message[128];
        snprintf(message, sizeof message, "too old resource version: %" PRIu64 " (%" PRIu64 ")", q->rv,
                 h->compacted_rv);
        fake_answer_status(&head, 410, message);
        ex->ops->respond(ex, &head);
        fake_response_clear(&head);
        return;
    }
    w = calloc(1, sizeof *w);
    if (w && !expired && q->timeout_seconds > 0) {
        struct timeval tv = {q->timeout_seconds, 0};
        w->timeout = evtimer_new(srv->base, watch_timeout_cb, w);
        if (!w->timeout || evtimer_add(w->timeout, &tv) < 0) {
            if (w->timeout) event_free(w->timeout);
            free(w);
            w = NULL;
        }
    }
    if (!w) {
        fake_answer_status(&head, 500, "fake-apiserver: out of memory");
        ex->ops->respond(ex, &head);
        fake_response_clear(&head);
        return;
    }

    fake_answer_start(&head, 200, JSON_TYPE, true);
    ex->ops->stream_start(ex, &head);
    fake_response_clear(&head);
    if (expired) {
        /* What the watch cache does: 200, one ERROR event, the end. */
        free(w);
        write_expired(ex, q->rv, h->compacted_rv);
        ex->ops->stream_end(ex);
        return;
    }
    w->srv = srv;
    w->ex = ex;
    w->res = res;
    w->bookmarks = q->bookmarks;
    ex->watch = w;
    LIST_INSERT_HEAD(&srv->cluster.watchers, w, link);

    if (!q->has_rv || q->rv == 0) {
        /* "Start at most recent", from scratch: the current state as ADDED events. */
        for (size_t i = 0; i < st->n; i++) write_line(ex, "ADDED", st->items[i]);
    } else {
        for (size_t i = 0; i < h->count; i++) {
            const struct fake_history_event *e = &h->ring[(h->start + i) % HISTORY_MAX];
            if (e->obj->rv > q->rv) write_line(ex, e->type, e->obj);
        }
    }
}

bool fake_cluster_path(const char *path)
{
    size_t len = strcspn(path, "?");

    return (len == strlen(SA_PATH) && strncmp(path, SA_PATH, len) == 0) ||
           (len == strlen(POD_PATH) && strncmp(path, POD_PATH, len) == 0);
}

void fake_cluster_handle(struct fake_server *srv, struct fake_exchange *ex)
{
    const char *path = ex->req.path;
    const char *query = strchr(path, '?');
    enum fake_resource res = strncmp(path, SA_PATH, strlen(SA_PATH)) == 0 ? FAKE_SERVICEACCOUNTS : FAKE_PODS;
    struct fake_response resp;
    struct list_query q;

    parse_query(query ? query + 1 : NULL, &q);
    if (q.watch)
        srv->stats.watch_calls++;
    else
        srv->stats.list_calls++;

    if (strcmp(ex->req.method, "GET") != 0) {
        fake_answer_status(&resp, 405, "the server does not allow this method on the requested resource");
    } else if (srv->config.watch_error_status >= 400) {
        char message[300];
        if (srv->config.watch_error_status == 403)
            snprintf(message, sizeof message,
                     "%s is forbidden: User \"system:serviceaccount:gateway-system:gateway\" "
                     "cannot %s resource \"%s\" in API group \"\" at the cluster scope",
                     resource_plural[res], q.watch ? "watch" : "list", resource_plural[res]);
        else
            snprintf(message, sizeof message, "injected by fake-apiserver (watch_error_status)");
        fake_answer_status(&resp, srv->config.watch_error_status, message);
    } else if (q.bad) {
        fake_answer_status(&resp, 400, "invalid query parameter");
    } else if (q.watch) {
        answer_watch(srv, ex, res, &q);
        return;
    } else {
        answer_list(srv, ex, res, &q);
        return;
    }
    ex->ops->respond(ex, &resp);
    fake_response_clear(&resp);
}

/* ---- control ---- */

static int resource_arg(const json_t *body, int *res)
{
    const char *name = json_string_value(json_object_get(body, "resource"));

    *res = -1;
    if (!json_object_get(body, "resource")) return 0;
    for (int r = 0; r < FAKE_RESOURCES; r++) {
        if (name && strcmp(name, resource_plural[r]) == 0) {
            *res = r;
            return 0;
        }
    }
    return -1;
}

static json_t *object_doc(const struct fake_object *o)
{
    char buf[OBJECT_JSON_MAX];
    size_t len = object_json(o, true, buf);

    return json_loadb(buf, len, 0, NULL);
}

static json_t *error_doc(const char *message)
{
    return json_pack("{ss}", "error", message);
}

static json_t *cluster_doc(const struct fake_server *srv)
{
    const struct fake_cluster *c = &srv->cluster;
    char rv[32], sa_rv[32], pod_rv[32];

    snprintf(rv, sizeof rv, "%" PRIu64, c->rv);
    snprintf(sa_rv, sizeof sa_rv, "%" PRIu64, c->stores[FAKE_SERVICEACCOUNTS].history.compacted_rv);
    snprintf(pod_rv, sizeof pod_rv, "%" PRIu64, c->stores[FAKE_PODS].history.compacted_rv);
    json_t *doc = fake_cluster_stats(srv);
    json_object_set_new(doc, "resourceVersion", json_string(rv));
    json_object_set_new(doc, "compacted", json_pack("{ss ss}", "serviceaccounts", sa_rv, "pods", pod_rv));
    return doc;
}

/* POST /control/{serviceaccounts,pods}/{create,delete}. */
static void control_object(struct fake_server *srv, enum fake_resource res, bool create_it, const json_t *body,
                           int *status, json_t **answer)
{
    const char *ns = json_string_value(json_object_get(body, "namespace"));
    const char *name = json_string_value(json_object_get(body, "name"));
    const char *uid = json_string_value(json_object_get(body, "uid"));
    const char *sa = json_string_value(json_object_get(body, "serviceaccount"));
    const char *why = NULL;
    struct fake_object *o;

    if (!ns || !name) {
        *status = 400;
        *answer = error_doc("give namespace and name");
        return;
    }
    if (create_it) {
        o = create(srv, res, ns, name, uid, sa ? sa : "default", status, &why);
        *answer = o ? object_doc(o) : error_doc(why);
        if (o) *status = 200;
        return;
    }
    o = delete (srv, res, ns, name);
    if (!o) {
        *status = 404;
        *answer = error_doc("not found");
        return;
    }
    *status = 200;
    *answer = json_pack("{so}", "deleted", object_doc(o));
    object_unref(o);
}

static void control_bulk(struct fake_server *srv, const json_t *body, int *status, json_t **answer)
{
    json_t *count = json_object_get(body, "count");
    const char *ns = json_string_value(json_object_get(body, "namespace"));
    const char *why = NULL;
    json_int_t n = json_integer_value(count);
    char name[64];

    if (!ns) ns = "bulk";
    if (!json_is_integer(count) || n < 1 || n > BULK_MAX) {
        *status = 400;
        *answer = error_doc("count must be an integer from 1 to 1000000");
        return;
    }
    for (json_int_t i = 0; i < n; i++) {
        snprintf(name, sizeof name, "sa-%07" PRIu64, ++srv->cluster.bulk_seq);
        if (!create(srv, FAKE_SERVICEACCOUNTS, ns, name, NULL, "", status, &why)) {
            *answer = error_doc(why);
            return;
        }
    }
    *status = 200;
    *answer = cluster_doc(srv);
    json_object_set_new(*answer, "created", json_integer(n));
}

bool fake_cluster_control(struct fake_server *srv, const char *path, bool post, const json_t *body, int *status,
                          json_t **answer)
{
    static const char *const prefixes[FAKE_RESOURCES] = {"/control/serviceaccounts/", "/control/pods/"};
    const char *action;
    int res;

    if (strcmp(path, "/control/cluster") == 0) {
        *status = 200;
        *answer = cluster_doc(srv);
        return true;
    }
    for (int r = 0; r < FAKE_RESOURCES; r++) {
        if (strncmp(path, prefixes[r], strlen(prefixes[r])) != 0) continue;
        action = path + strlen(prefixes[r]);
        if (strcmp(action, "create") != 0 && strcmp(action, "delete") != 0 &&
            (r != FAKE_SERVICEACCOUNTS || strcmp(action, "bulk-create") != 0))
            return false;
        if (!post) {
            *status = 405;
            *answer = error_doc("use POST");
        } else if (strcmp(action, "bulk-create") == 0) {
            control_bulk(srv, body, status, answer);
        } else {
            control_object(srv, (enum fake_resource)r, action[0] == 'c', body, status, answer);
        }
        return true;
    }

    if (strncmp(path, "/control/watch/", 15) != 0) return false;
    action = path + 15;
    if (strcmp(action, "drop") != 0 && strcmp(action, "bookmark") != 0 && strcmp(action, "compact") != 0 &&
        strcmp(action, "expire") != 0)
        return false;
    if (!post) {
        *status = 405;
        *answer = error_doc("use POST");
        return true;
    }
    if (resource_arg(body, &res) < 0) {
        *status = 400;
        *answer = error_doc("resource must be \"serviceaccounts\" or \"pods\"");
        return true;
    }
    *status = 200;
    if (strcmp(action, "drop") == 0) {
        bool graceful = json_is_true(json_object_get(body, "graceful"));
        *answer = json_pack("{sI}", "dropped", (json_int_t)end_watches(srv, res, !graceful, false));
    } else if (strcmp(action, "bookmark") == 0) {
        *answer = json_pack("{sI}", "sent", (json_int_t)send_bookmarks(srv, res));
    } else if (strcmp(action, "compact") == 0) {
        compact(srv, res);
        *answer = cluster_doc(srv);
    } else {
        compact(srv, res);
        *answer = json_pack("{sI}", "expired", (json_int_t)end_watches(srv, res, false, true));
    }
    return true;
}

json_t *fake_cluster_stats(const struct fake_server *srv)
{
    const struct fake_watcher *w;
    json_int_t watches = 0;

    LIST_FOREACH(w, &srv->cluster.watchers, link) {
        watches++;
    }
    return json_pack("{sI sI sI}", "watches", watches, "serviceaccounts",
                     (json_int_t)srv->cluster.stores[FAKE_SERVICEACCOUNTS].n, "pods",
                     (json_int_t)srv->cluster.stores[FAKE_PODS].n);
}

/* ---- lifetime ---- */

int fake_cluster_init(struct fake_server *srv)
{
    struct fake_cluster *c = &srv->cluster;
    struct timeval now;

    gettimeofday(&now, NULL);
    c->rv = (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_usec;
    LIST_INIT(&c->watchers);
    for (int r = 0; r < FAKE_RESOURCES; r++) {
        c->stores[r].history.ring = calloc(HISTORY_MAX, sizeof *c->stores[r].history.ring);
        if (!c->stores[r].history.ring) return -1;
        c->stores[r].history.compacted_rv = c->rv;
    }
    c->bookmark_timer = event_new(srv->base, -1, EV_PERSIST, bookmark_timer_cb, srv);
    return c->bookmark_timer ? 0 : -1;
}

void fake_cluster_free(struct fake_server *srv)
{
    struct fake_cluster *c = &srv->cluster;

    /* Watches belong to connections, which server_free() closes first; any left are only
     * forgotten here. */
    while (!LIST_EMPTY(&c->watchers)) watcher_detach(LIST_FIRST(&c->watchers));
    if (c->bookmark_timer) event_free(c->bookmark_timer);
    for (int r = 0; r < FAKE_RESOURCES; r++) {
        struct fake_store *st = &c->stores[r];
        if (st->history.ring) history_clear(&st->history);
        free(st->history.ring);
        for (size_t i = 0; i < st->n; i++) object_unref(st->items[i]);
        free(st->items);
    }
}
