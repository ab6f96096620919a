/* Unit tests: the pure parts of the revocation watch (core/revocation_watch.h) — watch
 * event lines (the captured kube-apiserver 1.26 watches and hostile ones), list pages,
 * target matching against packed identities, the retry backoff and the bounded line
 * splitter. The list/watch state machine runs against the fake API server in
 * spec/integration/08_revocation_spec.lua. */
#include "identity.h"
#include "revocation_watch.h"
#include "unit.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef TOKENGATE_TESTDATA
#error "TOKENGATE_TESTDATA must point at spec/fixtures/kube-apiserver-1.26"
#endif

/* A fixture file, NUL-terminated; NULL if unreadable. */
static char *read_fixture(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", TOKENGATE_TESTDATA, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (!buf) return NULL;
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The lines of a .jsonl fixture, as the splitter delivers them. */
typedef struct collected {
    revocation_event events[8];
    int n, bad;
} collected;

static int collect_event(void *arg, const char *line, size_t len)
{
    collected *c = arg;
    if (c->n == 8) return 1;
    if (revocation_event_parse(line, len, &c->events[c->n]) == 0)
        c->n++;
    else
        c->bad++;
    return 0;
}

static void parse_fixture(const char *name, collected *c)
{
    size_t len = 0;
    char *text = read_fixture(name, &len);
    memset(c, 0, sizeof(*c));
    REQUIRE(text != NULL);
    revocation_lines lines;
    revocation_lines_init(&lines, 1 << 20);
    CHECK_EQ_INT(revocation_lines_feed(&lines, text, len, collect_event, c), 0);
    revocation_lines_free(&lines);
    free(text);
}

/* ---- watch events ---- */

static void test_event_serviceaccount_watch_capture(void)
{
    collected c;
    parse_fixture("watch-serviceaccounts.jsonl", &c);
    CHECK_EQ_INT(c.bad, 0);
    REQUIRE(c.n == 4);
    CHECK_EQ_INT(c.events[0].type, REVOCATION_EVENT_ADDED);
    CHECK_STR(c.events[0].namespace_name, "team-a");
    CHECK_STR(c.events[0].name, "watch-demo");
    CHECK_STR(c.events[0].uid, "eae8e414-f0b2-4226-83a4-dac967605cce");
    CHECK_STR(c.events[0].resource_version, "378");
    CHECK_EQ_INT(c.events[1].type, REVOCATION_EVENT_BOOKMARK);
    CHECK_STR(c.events[1].resource_version, "378");
    CHECK_STR(c.events[1].name, ""); /* a bookmark names nothing */
    CHECK_EQ_INT(c.events[2].type, REVOCATION_EVENT_DELETED);
    CHECK_STR(c.events[2].uid, "eae8e414-f0b2-4226-83a4-dac967605cce");
    CHECK_STR(c.events[2].resource_version, "380");
    CHECK_EQ_INT(c.events[3].type, REVOCATION_EVENT_BOOKMARK);
    CHECK_STR(c.events[3].resource_version, "380");
}

static void test_event_pod_watch_capture(void)
{
    collected c;
    parse_fixture("watch-pods.jsonl", &c);
    CHECK_EQ_INT(c.bad, 0);
    REQUIRE(c.n == 2);
    CHECK_EQ_INT(c.events[0].type, REVOCATION_EVENT_MODIFIED); /* deletionTimestamp set: not gone yet */
    CHECK_EQ_INT(c.events[1].type, REVOCATION_EVENT_DELETED);
    CHECK_STR(c.events[1].namespace_name, "team-a");
    CHECK_STR(c.events[1].name, "hook-pod");
    CHECK_STR(c.events[1].uid, "872f8d49-620a-4db7-83b4-39cbb8cf4aed");
    CHECK_STR(c.events[1].resource_version, "382");
}

static void test_event_expired_capture(void)
{
    collected c;
    parse_fixture("watch-expired.jsonl", &c);
    REQUIRE(c.n == 1);
    CHECK_EQ_INT(c.events[0].type, REVOCATION_EVENT_ERROR);
    CHECK_EQ_INT(c.events[0].code, 410);
    CHECK_STR(c.events[0].resource_version, "");
}

static int parse_text(const char *text, revocation_event *ev)
{
    return revocation_event_parse(text, strlen(text), ev);
}

static void test_event_partial_object_metadata(void)
{
    /* What a metadata-only watch (Accept: as=PartialObjectMetadata) sends. */
    revocation_event ev;
    CHECK_EQ_INT(parse_text("{\"type\":\"DELETED\",\"object\":{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":"
                            "\"meta.k8s.io/v1\",\"metadata\":{\"name\":\"sa\",\"namespace\":\"ns\",\"uid\":\"u-1\","
                            "\"resourceVersion\":\"99\"}}}",
                            &ev),
                 0);
    CHECK_EQ_INT(ev.type, REVOCATION_EVENT_DELETED);
    CHECK_STR(ev.name, "sa");
    CHECK_STR(ev.resource_version, "99");
    /* An ERROR without a code is still an error (not a relist). */
    CHECK_EQ_INT(parse_text("{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"message\":\"internal\"}}", &ev), 0);
    CHECK_EQ_INT(ev.type, REVOCATION_EVENT_ERROR);
    CHECK_EQ_INT(ev.code, 0);
}

static void test_event_hostile(void)
{
    static const char *const bad[] = {
        "",
        "not json",
        "[]",
        "{\"type\":\"ADDED\"}",
        "{\"type\":\"EXPLODED\",\"object\":{\"metadata\":{}}}",
        "{\"type\":7,\"object\":{\"metadata\":{}}}",
        "{\"type\":\"DELETED\",\"object\":\"x\"}",
        "{\"type\":\"DELETED\",\"object\":{\"metadata\":[]}}",
        "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":5}}}",
        "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"uid\":\"a\\u0000b\"}}}",
        "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"x\"}}} trailing",
        "{\"type\":\"deleted\",\"object\":{\"metadata\":{}}}",
    };
    revocation_event ev;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse_text(bad[i], &ev);
        CHECK_EQ_INT(rc, -1);
        if (rc != -1) fprintf(stderr, "  accepted: %s\n", bad[i]);
    }
    /* Fields beyond the Kubernetes bounds are refused, not truncated. */
    char line[1024];
    char longname[REVOCATION_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    snprintf(line, sizeof(line), "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"%s\"}}}", longname);
    CHECK_EQ_INT(parse_text(line, &ev), -1);
    longname[REVOCATION_NAME_MAX] = '\0'; /* exactly the limit: fine */
    snprintf(line, sizeof(line), "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"%s\"}}}", longname);
    CHECK_EQ_INT(parse_text(line, &ev), 0);
    CHECK_EQ_INT(strlen(ev.name), REVOCATION_NAME_MAX);
}

/* ---- list pages ---- */

typedef struct items {
    char names[8][64];
    char uids[8][64];
    int n;
} items;

static void on_item(void *arg, const char *ns, const char *name, const char *uid)
{
    items *it = arg;
    if (it->n == 8) return;
    snprintf(it->names[it->n], sizeof(it->names[0]), "%s/%s", ns, name);
    snprintf(it->uids[it->n], sizeof(it->uids[0]), "%s", uid);
    it->n++;
}

static void test_list_capture(void)
{
    size_t len = 0;
    char *text = read_fixture("list-serviceaccounts-page.json", &len);
    REQUIRE(text != NULL);
    char rv[REVOCATION_RV_MAX + 1], cont[REVOCATION_CONTINUE_MAX + 1];
    items it = {0};
    CHECK_EQ_INT(revocation_list_parse(text, len, rv, cont, on_item, &it), 0);
    CHECK_STR(rv, "377");
    CHECK_STR(cont, "");
    REQUIRE(it.n == 2);
    CHECK_STR(it.names[0], "gateway-system/gateway");
    CHECK_STR(it.uids[0], "31c4a769-d2f1-4385-afd6-88b03e03f9b3");
    CHECK_STR(it.names[1], "team-a/webhook-sender");
    free(text);
}

static void test_list_pages(void)
{
    char rv[REVOCATION_RV_MAX + 1], cont[REVOCATION_CONTINUE_MAX + 1];
    items it = {0};
    const char *page = "{\"kind\":\"PartialObjectMetadataList\",\"metadata\":{\"resourceVersion\":\"10\","
                       "\"continue\":\"eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ\",\"remainingItemCount\":3},"
                       "\"items\":[{\"metadata\":{\"name\":\"a\",\"namespace\":\"n\",\"uid\":\"u\"}},"
                       "{\"metadata\":{\"name\":5}},{\"kind\":\"x\"}]}";
    CHECK_EQ_INT(revocation_list_parse(page, strlen(page), rv, cont, on_item, &it), 0);
    CHECK_STR(rv, "10");
    CHECK_STR(cont, "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ");
    CHECK_EQ_INT(it.n, 1); /* unusable items are skipped */

    const char *empty = "{\"metadata\":{\"resourceVersion\":\"11\"},\"items\":null}";
    it.n = 0;
    CHECK_EQ_INT(revocation_list_parse(empty, strlen(empty), rv, cont, on_item, &it), 0);
    CHECK_EQ_INT(it.n, 0);

    static const char *const bad[] = {
        "",
        "[]",
        "{\"items\":[]}",
        "{\"metadata\":{},\"items\":[]}",
        "{\"metadata\":{\"resourceVersion\":7},\"items\":[]}",
        "{\"metadata\":{\"resourceVersion\":\"1\"},\"items\":{}}",
        "{\"kind\":\"Status\",\"code\":410,\"reason\":\"Expired\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ_INT(revocation_list_parse(bad[i], strlen(bad[i]), rv, cont, on_item, &it), -1);
        CHECK_STR(rv, "");
    }
}

/* ---- matching ---- */

typedef struct packed {
    unsigned char buf[2048];
    identity_view view;
} packed;

/* extra: NULL-terminated key, value pairs (one value each). */
static void pack(packed *p, const char *username, const char *uid, const char *const *extra)
{
    identity_builder b;
    identity_builder_init(&b, p->buf, sizeof(p->buf));
    identity_builder_string(&b, username, strlen(username));
    identity_builder_string(&b, uid, strlen(uid));
    identity_builder_count(&b, 1);
    identity_builder_string(&b, "system:authenticated", 20);
    size_t n = 0;
    while (extra && extra[2 * n]) n++;
    identity_builder_count(&b, n);
    for (size_t i = 0; i < n; i++) {
        identity_builder_string(&b, extra[2 * i], strlen(extra[2 * i]));
        identity_builder_count(&b, 1);
        identity_builder_string(&b, extra[2 * i + 1], strlen(extra[2 * i + 1]));
    }
    CHECK(!b.failed);
    CHECK_EQ_INT(identity_view_parse(p->buf, b.len, &p->view), 0);
}

static void test_target_matches(void)
{
    static const char *const pod1[] = {"authentication.kubernetes.io/pod-name", "hook-pod",
                                       "authentication.kubernetes.io/pod-uid", "pod-uid-1", NULL};
    static const char *const pod2[] = {"authentication.kubernetes.io/pod-uid", "pod-uid-2",
                                       "authentication.kubernetes.io/pod-name", "other-pod", NULL};
    packed sa, sa_nouid, sa_pod1, sa_pod2, other_ns, user;
    pack(&sa, "system:serviceaccount:team-a:sender", "uid-sender", NULL);
    pack(&sa_nouid, "system:serviceaccount:team-a:sender", "", NULL);
    pack(&sa_pod1, "system:serviceaccount:team-a:sender", "uid-sender", pod1);
    pack(&sa_pod2, "system:serviceaccount:team-a:sender", "uid-sender", pod2);
    pack(&other_ns, "system:serviceaccount:team-b:sender", "uid-other", NULL);
    pack(&user, "jane@example.com", "uid-sender", pod1);

    revocation_target t = {REVOCATION_SERVICEACCOUNT, "team-a", "sender", "uid-sender"};
    CHECK(revocation_target_matches(&t, &sa.view));
    CHECK(revocation_target_matches(&t, &sa_nouid.view)); /* no uid to tell: by name */
    CHECK(revocation_target_matches(&t, &sa_pod1.view));  /* pod-bound tokens of that ServiceAccount too */
    CHECK(!revocation_target_matches(&t, &other_ns.view));
    CHECK(!revocation_target_matches(&t, &user.view)); /* a uid alone is not a ServiceAccount */

    /* A recreated ServiceAccount of the same name is another object. */
    revocation_target older = {REVOCATION_SERVICEACCOUNT, "team-a", "sender", "uid-of-a-previous-incarnation"};
    CHECK(!revocation_target_matches(&older, &sa.view));
    CHECK(revocation_target_matches(&older, &sa_nouid.view));
    revocation_target no_uid = {REVOCATION_SERVICEACCOUNT, "team-a", "sender", ""};
    CHECK(revocation_target_matches(&no_uid, &sa.view));
    revocation_target nameless = {REVOCATION_SERVICEACCOUNT, "team-a", "", "uid-sender"};
    CHECK(!revocation_target_matches(&nameless, &sa.view));
    revocation_target prefix = {REVOCATION_SERVICEACCOUNT, "team-a", "send", ""};
    CHECK(!revocation_target_matches(&prefix, &sa.view));

    revocation_target pod = {REVOCATION_POD, "team-a", "hook-pod", "pod-uid-1"};
    CHECK(revocation_target_matches(&pod, &sa_pod1.view));
    CHECK(!revocation_target_matches(&pod, &sa_pod2.view));
    CHECK(!revocation_target_matches(&pod, &sa.view));
    CHECK(revocation_target_matches(&pod, &user.view)); /* the pod-uid is what binds a token */
    revocation_target pod_by_name = {REVOCATION_POD, "team-a", "other-pod", ""};
    CHECK(revocation_target_matches(&pod_by_name, &sa_pod2.view));
    CHECK(!revocation_target_matches(&pod_by_name, &sa_pod1.view));
    revocation_target pod_other_ns = {REVOCATION_POD, "team-b", "other-pod", ""};
    CHECK(!revocation_target_matches(&pod_other_ns, &sa_pod2.view));
    revocation_target null_strings = {REVOCATION_POD, NULL, NULL, NULL};
    CHECK(!revocation_target_matches(&null_strings, &sa_pod1.view));
}

/* ---- backoff ---- */

static void test_backoff(void)
{
    CHECK_EQ_INT(revocation_backoff_ms(0, 0.5), 0);
    CHECK_EQ_INT(revocation_backoff_ms(1, 0.0), REVOCATION_BACKOFF_BASE_MS / 2);
    CHECK(revocation_backoff_ms(1, 0.999) < REVOCATION_BACKOFF_BASE_MS);
    CHECK(revocation_backoff_ms(1, 0.999) >= REVOCATION_BACKOFF_BASE_MS - 1);
    CHECK_EQ_INT(revocation_backoff_ms(2, 0.0), REVOCATION_BACKOFF_BASE_MS);
    CHECK_EQ_INT(revocation_backoff_ms(3, 0.0), REVOCATION_BACKOFF_BASE_MS * 2);
    int64_t prev = 0;
    for (unsigned f = 1; f < 40; f++) {
        int64_t lo = revocation_backoff_ms(f, 0.0), hi = revocation_backoff_ms(f, 0.999999);
        CHECK(lo >= prev);
        CHECK(hi <= REVOCATION_BACKOFF_MAX_MS);
        CHECK(hi >= lo);
        prev = lo;
    }
    CHECK_EQ_INT(revocation_backoff_ms(1000, 0.0), REVOCATION_BACKOFF_MAX_MS / 2);
    CHECK_EQ_INT(revocation_backoff_ms(4000000000u, 5.0), REVOCATION_BACKOFF_MAX_MS - 1); /* unit clamped */
    CHECK_EQ_INT(revocation_backoff_ms(7, -1.0), revocation_backoff_ms(7, 0.0));
}

/* ---- line splitting ---- */

typedef struct seen_lines {
    char text[8][64];
    int n;
    int stop_at; /* return 7 on this line number (1-based), 0: never */
} seen_lines;

static int on_line(void *arg, const char *line, size_t len)
{
    seen_lines *s = arg;
    if (s->n < 8) snprintf(s->text[s->n], sizeof(s->text[0]), "%.*s", (int)len, line);
    s->n++;
    return s->stop_at == s->n ? 7 : 0;
}

static void test_lines(void)
{
    revocation_lines l;
    seen_lines s = {0};
    revocation_lines_init(&l, 16);
    CHECK_EQ_INT(revocation_lines_feed(&l, "one\ntw", 6, on_line, &s), 0);
    CHECK_EQ_INT(revocation_lines_feed(&l, "o", 1, on_line, &s), 0);
    CHECK_EQ_INT(revocation_lines_feed(&l, "\r\n\n\nthree\r", 10, on_line, &s), 0);
    CHECK_EQ_INT(revocation_lines_feed(&l, "\n", 1, on_line, &s), 0);
    REQUIRE(s.n == 3);
    CHECK_STR(s.text[0], "one");
    CHECK_STR(s.text[1], "two");
    CHECK_STR(s.text[2], "three");

    /* A line of exactly max bytes passes; one more byte does not, whether it comes in one
     * chunk or many, and the splitter starts afresh after it. */
    s.n = 0;
    CHECK_EQ_INT(revocation_lines_feed(&l, "0123456789abcdef\n", 17, on_line, &s), 0);
    CHECK_EQ_INT(s.n, 1);
    CHECK_EQ_INT(revocation_lines_feed(&l, "0123456789abcdefX\n", 18, on_line, &s), -1);
    CHECK_EQ_INT(revocation_lines_feed(&l, "0123456789", 10, on_line, &s), 0);
    CHECK_EQ_INT(revocation_lines_feed(&l, "abcdefX", 7, on_line, &s), -1);
    CHECK_EQ_INT(l.len, 0);
    CHECK_EQ_INT(revocation_lines_feed(&l, "ok\n", 3, on_line, &s), 0);
    CHECK_STR(s.text[s.n - 1], "ok");

    /* on_line's non-zero answer stops the feed and is returned. */
    seen_lines stop = {.stop_at = 2};
    CHECK_EQ_INT(revocation_lines_feed(&l, "a\nb\nc\n", 6, on_line, &stop), 7);
    CHECK_EQ_INT(stop.n, 2);
    revocation_lines_free(&l);

    /* Big lines in small chunks use a buffer that is given back afterwards. */
    revocation_lines big;
    revocation_lines_init(&big, 1 << 20);
    seen_lines one = {0};
    char chunk[1000];
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 200; i++) CHECK_EQ_INT(revocation_lines_feed(&big, chunk, sizeof(chunk), on_line, &one), 0);
    CHECK_EQ_INT(big.len, 200000);
    CHECK_EQ_INT(revocation_lines_feed(&big, "\n", 1, on_line, &one), 0);
    CHECK_EQ_INT(one.n, 1);
    CHECK_EQ_INT(big.len, 0);
    CHECK(big.cap <= 64 * 1024);
    revocation_lines_free(&big);
}

/* ---- the module without a watch ---- */

static size_t no_evict(void *ctx, const revocation_target *t)
{
    (void)ctx;
    (void)t;
    return 0;
}

static void test_off_and_bad_options(void)
{
    char text[128];
    CHECK_EQ_INT(revocation_watch_describe(NULL, text, sizeof(text)), strlen("revocation watch: off"));
    CHECK_STR(text, "revocation watch: off");
    CHECK(revocation_watch_healthy(NULL));
    struct evbuffer *out = evbuffer_new();
    REQUIRE(out != NULL);
    CHECK_EQ_INT(revocation_watch_render_metrics(NULL, out), 0);
    CHECK_EQ_INT(evbuffer_get_length(out), 0);
    evbuffer_free(out);
    packed sa;
    pack(&sa, "system:serviceaccount:team-a:sender", "uid-sender", NULL);
    CHECK(!revocation_watch_recently_revoked(NULL, &sa.view, NULL));
    CHECK(!revocation_watch_refuse(NULL, &sa.view));

    struct event_base *base = event_base_new();
    REQUIRE(base != NULL);
    revocation_watch_options opts = {0};
    CHECK(revocation_watch_new(base, &opts) == NULL); /* no API options, no evict */
    api_client_options api = {.server_url = "https://127.0.0.1:1", .ca_file = "/nonexistent", .token = "t"};
    opts.api = &api;
    CHECK(revocation_watch_new(base, &opts) == NULL); /* no evict */
    opts.evict = no_evict;
    revocation_watch *w = revocation_watch_new(base, &opts);
    CHECK(w != NULL);
    if (w) {
        /* Nothing ran yet: listing has not started, nothing is in sync. */
        CHECK(!revocation_watch_healthy(w));
        revocation_watch_describe(w, text, sizeof(text));
        CHECK(strstr(text, "serviceaccounts down") != NULL);
        CHECK(strstr(text, "normal TTL") != NULL);
        CHECK(strstr(text, "pods") == NULL);
        out = evbuffer_new();
        CHECK_EQ_INT(revocation_watch_render_metrics(w, out), 0);
        size_t len = evbuffer_get_length(out);
        char *m = calloc(1, len + 1);
        evbuffer_remove(out, m, len);
        CHECK(strstr(m, "gateway_revocation_watch_up{resource=\"serviceaccounts\"} 0\n") != NULL);
        CHECK(strstr(m, "gateway_revocation_evictions_total{cause=\"serviceaccount_deleted\"} 0\n") != NULL);
        CHECK(strstr(m, "resource=\"pods\"") == NULL);
        CHECK(strstr(m, "cause=\"pod_deleted\"") == NULL);
        CHECK(strstr(m, "# TYPE gateway_revocation_watch_events_total counter\n") != NULL);
        free(m);
        evbuffer_free(out);
        revocation_watch_free(w);
    }
    event_base_free(base);
}

int main(void)
{
    RUN(test_event_serviceaccount_watch_capture);
    RUN(test_event_pod_watch_capture);
    RUN(test_event_expired_capture);
    RUN(test_event_partial_object_metadata);
    RUN(test_event_hostile);
    RUN(test_list_capture);
    RUN(test_list_pages);
    RUN(test_target_matches);
    RUN(test_backoff);
    RUN(test_lines);
    RUN(test_off_and_bad_options);
    return UNIT_EXIT();
}
