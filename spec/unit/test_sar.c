/* Unit tests: the SubjectAccessReview request body, the answer parser (against every
 * captured real kube-apiserver 1.26 answer and hand-made hostile ones) and the cache key
 * of a question (core/sar.h). */
#include "cache_key.h"
#include "identity.h"
#include "sar.h"
#include "tokenreview.h"
#include "unit.h"

#include <dirent.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef TOKENGATE_TESTDATA
#error "TOKENGATE_TESTDATA must point at spec/fixtures/kube-apiserver-1.26"
#endif

#define PACKED_CAP 16384
#define REASON_CAP 512

static const char sa_user[] = "system:serviceaccount:team-a:webhook-sender";
static const char rbac_reason[] = "RBAC: allowed by RoleBinding \"webhook-sender/team-a\" of Role "
                                  "\"webhook-sender\" to ServiceAccount \"webhook-sender/team-a\"";

/* ---- identities ---- */

typedef struct extra_entry {
    const char *key;
    const char *const *values;
    size_t n_values;
} extra_entry;

typedef struct test_user {
    const char *username, *uid;
    const char *const *groups;
    size_t n_groups;
    const extra_entry *extra;
    size_t n_extra;
} test_user;

/* A packed identity and its view; the view points into packed. */
typedef struct packed_user {
    unsigned char packed[PACKED_CAP];
    size_t len;
    identity_view view;
} packed_user;

/* Packs u into *p with identity_builder and parses the view back. Returns 0 or -1. */
static int pack(const test_user *u, packed_user *p)
{
    identity_builder b;
    identity_builder_init(&b, p->packed, sizeof(p->packed));
    identity_builder_string(&b, u->username, strlen(u->username));
    identity_builder_string(&b, u->uid, strlen(u->uid));
    identity_builder_count(&b, u->n_groups);
    for (size_t i = 0; i < u->n_groups; i++) identity_builder_string(&b, u->groups[i], strlen(u->groups[i]));
    identity_builder_count(&b, u->n_extra);
    for (size_t i = 0; i < u->n_extra; i++) {
        identity_builder_string(&b, u->extra[i].key, strlen(u->extra[i].key));
        identity_builder_count(&b, u->extra[i].n_values);
        for (size_t v = 0; v < u->extra[i].n_values; v++)
            identity_builder_string(&b, u->extra[i].values[v], strlen(u->extra[i].values[v]));
    }
    if (b.failed) return -1;
    p->len = b.len;
    return identity_view_parse(p->packed, p->len, &p->view);
}

static const char *const sa_groups[] = {"system:serviceaccounts", "system:serviceaccounts:team-a",
                                        "system:authenticated"};
static const char *const pod_name[] = {"hook-pod"};
static const char *const pod_uid[] = {"872f8d49-620a-4db7-83b4-39cbb8cf4aed"};
static const extra_entry pod_extra[] = {
    {"authentication.kubernetes.io/pod-name", pod_name, 1},
    {"authentication.kubernetes.io/pod-uid", pod_uid, 1},
};
static const test_user webhook_sender = {sa_user, "84aa73c3-2ab6-4096-82bf-62bbbc52c53a", sa_groups, 3, pod_extra, 2};

static const sar_attributes create_webhooks = {
    .nonresource = false,
    .namespace_ = "team-a",
    .verb = "create",
    .group = "gateway.example.com",
    .resource = "webhooks",
};

static json_t *load(const char *body, size_t len)
{
    json_error_t err;
    return json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
}

/* The string member key of obj, or NULL. */
static const char *member(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

/* ---- request body ---- */

static void test_request_body_exact(void)
{
    static const char *const g[] = {"g"};
    test_user u = {"alice", "", g, 1, NULL, 0};
    static packed_user p;
    REQUIRE(pack(&u, &p) == 0);
    sar_attributes a = {.nonresource = true, .path = "/healthz", .verb = "get"};
    size_t len = 0;
    char *body = sar_request_body(&p.view, &a, &len);
    REQUIRE(body != NULL);
    CHECK_STR(body, "{\"apiVersion\":\"authorization.k8s.io/v1\",\"kind\":\"SubjectAccessReview\","
                    "\"spec\":{\"user\":\"alice\",\"groups\":[\"g\"],"
                    "\"nonResourceAttributes\":{\"path\":\"/healthz\",\"verb\":\"get\"}}}");
    CHECK_EQ_INT(len, strlen(body));
    free(body);

    /* No groups: an empty array, still sent. */
    test_user bare = {"bob", "", NULL, 0, NULL, 0};
    REQUIRE(pack(&bare, &p) == 0);
    sar_attributes r = {.verb = "list", .resource = "pods"};
    body = sar_request_body(&p.view, &r, &len);
    REQUIRE(body != NULL);
    CHECK_STR(body, "{\"apiVersion\":\"authorization.k8s.io/v1\",\"kind\":\"SubjectAccessReview\","
                    "\"spec\":{\"user\":\"bob\",\"groups\":[],"
                    "\"resourceAttributes\":{\"verb\":\"list\",\"resource\":\"pods\"}}}");
    free(body);
}

static void test_request_body_resource(void)
{
    static packed_user p;
    REQUIRE(pack(&webhook_sender, &p) == 0);
    sar_attributes a = {
        .namespace_ = "team-a",
        .verb = "update",
        .group = "gateway.example.com",
        .version = "v1",
        .resource = "webhooks",
        .subresource = "status",
        .name = "hook-1",
    };
    size_t len = 0;
    char *body = sar_request_body(&p.view, &a, &len);
    REQUIRE(body != NULL);
    CHECK_EQ_INT(len, strlen(body));
    json_t *root = load(body, len);
    CHECK(json_is_object(root));
    CHECK_EQ_INT(json_object_size(root), 3);
    CHECK_STR(member(root, "apiVersion"), "authorization.k8s.io/v1");
    CHECK_STR(member(root, "kind"), "SubjectAccessReview");
    json_t *spec = json_object_get(root, "spec");
    CHECK_EQ_INT(json_object_size(spec), 5);
    CHECK_STR(member(spec, "user"), sa_user);
    CHECK_STR(member(spec, "uid"), "84aa73c3-2ab6-4096-82bf-62bbbc52c53a");
    CHECK(json_object_get(spec, "nonResourceAttributes") == NULL);
    json_t *ra = json_object_get(spec, "resourceAttributes");
    CHECK(json_is_object(ra));
    CHECK_EQ_INT(json_object_size(ra), 7);
    CHECK_STR(member(ra, "namespace"), "team-a");
    CHECK_STR(member(ra, "verb"), "update");
    CHECK_STR(member(ra, "group"), "gateway.example.com");
    CHECK_STR(member(ra, "version"), "v1");
    CHECK_STR(member(ra, "resource"), "webhooks");
    CHECK_STR(member(ra, "subresource"), "status");
    CHECK_STR(member(ra, "name"), "hook-1");
    json_decref(root);
    free(body);

    /* Only the fields that are set; "" is sent as "" (a cluster-wide namespace). */
    sar_attributes few = {.namespace_ = "", .verb = "create", .resource = "webhooks"};
    body = sar_request_body(&p.view, &few, &len);
    REQUIRE(body != NULL);
    root = load(body, len);
    ra = json_object_get(json_object_get(root, "spec"), "resourceAttributes");
    CHECK_EQ_INT(json_object_size(ra), 3);
    CHECK_STR(member(ra, "namespace"), "");
    CHECK_STR(member(ra, "verb"), "create");
    CHECK_STR(member(ra, "resource"), "webhooks");
    CHECK(json_object_get(ra, "group") == NULL);
    CHECK(json_object_get(ra, "path") == NULL);
    json_decref(root);
    free(body);
}

static void test_request_body_nonresource(void)
{
    static packed_user p;
    REQUIRE(pack(&webhook_sender, &p) == 0);
    sar_attributes a = {.nonresource = true, .path = "/hooks/deliver", .verb = "post"};
    size_t len = 0;
    char *body = sar_request_body(&p.view, &a, &len);
    REQUIRE(body != NULL);
    json_t *root = load(body, len);
    json_t *spec = json_object_get(root, "spec");
    CHECK(json_object_get(spec, "resourceAttributes") == NULL);
    json_t *nra = json_object_get(spec, "nonResourceAttributes");
    CHECK(json_is_object(nra));
    CHECK_EQ_INT(json_object_size(nra), 2);
    CHECK_STR(member(nra, "path"), "/hooks/deliver");
    CHECK_STR(member(nra, "verb"), "post");
    json_decref(root);
    free(body);
}

/* The body built from the identity the captured TokenReview gave asks the same question
 * as the captured SubjectAccessReviews did (their spec echoes what curl sent). */
static char *read_fixture(const char *name, size_t *len);

static void test_request_body_matches_capture(void)
{
    size_t len = 0;
    char *tr = read_fixture("tokenreview-authenticated.body", &len);
    REQUIRE(tr != NULL);
    static packed_user p;
    char reason[REASON_CAP];
    tokenreview_result r =
        tokenreview_parse_response(tr, len, NULL, 0, p.packed, sizeof(p.packed), &p.len, reason, sizeof(reason));
    free(tr);
    REQUIRE(r == TOKENREVIEW_AUTHENTICATED);
    REQUIRE(identity_view_parse(p.packed, p.len, &p.view) == 0);

    static const struct {
        const char *file;
        sar_attributes attrs;
    } cases[] = {
        {"sar-resource-allowed.body",
         {.namespace_ = "team-a", .verb = "create", .group = "gateway.example.com", .resource = "webhooks"}},
        {"sar-resource-denied.body",
         {.namespace_ = "team-b", .verb = "create", .group = "gateway.example.com", .resource = "webhooks"}},
        {"sar-nonresource-denied.body", {.nonresource = true, .path = "/hooks/deliver", .verb = "post"}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *captured = read_fixture(cases[i].file, &len);
        REQUIRE(captured != NULL);
        json_t *want_root = load(captured, len);
        free(captured);
        size_t body_len = 0;
        char *body = sar_request_body(&p.view, &cases[i].attrs, &body_len);
        json_t *got_root = body ? load(body, body_len) : NULL;
        free(body);
        CHECK(json_is_object(want_root));
        CHECK(json_is_object(got_root));
        json_t *want = json_object_get(want_root, "spec"), *got = json_object_get(got_root, "spec");
        const char *kind = cases[i].attrs.nonresource ? "nonResourceAttributes" : "resourceAttributes";
        bool same_attrs = json_equal(json_object_get(got, kind), json_object_get(want, kind));
        CHECK(same_attrs);
        if (!same_attrs) fprintf(stderr, "    file %s\n", cases[i].file);
        CHECK(json_equal(json_object_get(got, "user"), json_object_get(want, "user")));
        /* The nonresource capture was made with two of the three groups only. */
        if (!cases[i].attrs.nonresource)
            CHECK(json_equal(json_object_get(got, "groups"), json_object_get(want, "groups")));
        json_decref(want_root);
        json_decref(got_root);
    }
}

static void test_request_body_escaping(void)
{
    static const char *const g[] = {"we\"ird\\group", "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x94\x91", "</script>"};
    static const char *const vals[] = {"v\"1", "v\\2", "\xe2\x80\xa8"};
    static const extra_entry ex[] = {{"key\"with\\quote", vals, 3}, {"\xc3\xbc", vals, 1}};
    test_user u = {"sys\"tem:\\user", "u\"id", g, 3, ex, 2};
    static packed_user p;
    REQUIRE(pack(&u, &p) == 0);
    sar_attributes a = {
        .namespace_ = "n\"s", .verb = "g\\et", .group = "gr\xc3\xb6up", .resource = "r\n\t", .name = "na\x01me"};
    size_t len = 0;
    char *body = sar_request_body(&p.view, &a, &len);
    REQUIRE(body != NULL);
    CHECK_EQ_INT(len, strlen(body));
    CHECK(strstr(body, "\"user\":\"sys\\\"tem:\\\\user\"") != NULL);
    CHECK(strstr(body, "\"uid\":\"u\\\"id\"") != NULL);
    CHECK(strstr(body, "\"we\\\"ird\\\\group\"") != NULL);
    CHECK(strstr(body, "\"key\\\"with\\\\quote\":[\"v\\\"1\",\"v\\\\2\",") != NULL);
    CHECK(strstr(body, "\"resource\":\"r\\n\\t\"") != NULL);
    CHECK(strstr(body, "\"name\":\"na\\u0001me\"") != NULL);
    for (size_t i = 0; i < len; i++) CHECK((unsigned char)body[i] >= 0x20); /* no raw controls */

    /* Round trip: every string comes back byte for byte. */
    json_t *root = load(body, len);
    REQUIRE(json_is_object(root));
    json_t *spec = json_object_get(root, "spec");
    CHECK_STR(member(spec, "user"), u.username);
    CHECK_STR(member(spec, "uid"), u.uid);
    json_t *groups = json_object_get(spec, "groups");
    CHECK_EQ_INT(json_array_size(groups), 3);
    for (size_t i = 0; i < 3; i++) CHECK_STR(json_string_value(json_array_get(groups, i)), g[i]);
    json_t *extra = json_object_get(spec, "extra");
    CHECK_EQ_INT(json_object_size(extra), 2);
    json_t *v0 = json_object_get(extra, ex[0].key);
    CHECK_EQ_INT(json_array_size(v0), 3);
    for (size_t i = 0; i < 3; i++) CHECK_STR(json_string_value(json_array_get(v0, i)), vals[i]);
    CHECK_EQ_INT(json_array_size(json_object_get(extra, ex[1].key)), 1);
    json_t *ra = json_object_get(spec, "resourceAttributes");
    CHECK_STR(member(ra, "namespace"), a.namespace_);
    CHECK_STR(member(ra, "verb"), a.verb);
    CHECK_STR(member(ra, "group"), a.group);
    CHECK_STR(member(ra, "resource"), a.resource);
    CHECK_STR(member(ra, "name"), a.name);
    json_decref(root);
    free(body);
}

static void test_request_body_extra_and_groups(void)
{
    static const char *const many[] = {"a", "b", "c"};
    static const char *const one[] = {"x"};
    static const extra_entry ex[] = {{"z-last-alphabetically", many, 3}, {"a-first", one, 1}, {"empty", NULL, 0}};
    static const char *const g[] = {"g2", "g1", "g3"};
    test_user u = {"carol", "", g, 3, ex, 3};
    static packed_user p;
    REQUIRE(pack(&u, &p) == 0);
    size_t len = 0;
    char *body = sar_request_body(&p.view, &create_webhooks, &len);
    REQUIRE(body != NULL);
    json_t *root = load(body, len);
    json_t *spec = json_object_get(root, "spec");
    CHECK(json_object_get(spec, "uid") == NULL); /* empty uid omitted */
    json_t *groups = json_object_get(spec, "groups");
    CHECK_EQ_INT(json_array_size(groups), 3);
    for (size_t i = 0; i < 3; i++) CHECK_STR(json_string_value(json_array_get(groups, i)), g[i]);
    json_t *extra = json_object_get(spec, "extra");
    CHECK_EQ_INT(json_object_size(extra), 3);
    json_t *zl = json_object_get(extra, "z-last-alphabetically");
    CHECK_EQ_INT(json_array_size(zl), 3);
    for (size_t i = 0; i < 3; i++) CHECK_STR(json_string_value(json_array_get(zl, i)), many[i]);
    CHECK_STR(json_string_value(json_array_get(json_object_get(extra, "a-first"), 0)), "x");
    CHECK(json_is_array(json_object_get(extra, "empty")));
    CHECK_EQ_INT(json_array_size(json_object_get(extra, "empty")), 0);
    /* Keys are sent in the identity's order, values in theirs. */
    const char *z = strstr(body, "z-last"), *af = strstr(body, "a-first");
    CHECK(z && af && z < af);
    json_decref(root);
    free(body);

    /* No extra: the member is left out. */
    test_user plain = {"carol", "", g, 3, NULL, 0};
    REQUIRE(pack(&plain, &p) == 0);
    body = sar_request_body(&p.view, &create_webhooks, &len);
    REQUIRE(body != NULL);
    root = load(body, len);
    CHECK(json_object_get(json_object_get(root, "spec"), "extra") == NULL);
    json_decref(root);
    free(body);
}

static void expect_refused(const identity_view *view, const sar_attributes *a, const char *what)
{
    size_t len = 12345;
    char *body = sar_request_body(view, a, &len);
    CHECK(body == NULL);
    CHECK_EQ_INT(len, 12345);
    if (body) {
        fprintf(stderr, "    accepted: %s\n    body: %s\n", what, body);
        free(body);
    }
}

static void test_request_body_refused(void)
{
    static packed_user p;
    REQUIRE(pack(&webhook_sender, &p) == 0);

    static const struct {
        sar_attributes attrs;
        const char *what;
        bool shape_ok; /* well-formed, refused only for its bytes */
    } bad[] = {
        {{.resource = "webhooks"}, "no verb", false},
        {{.verb = "", .resource = "webhooks"}, "empty verb", false},
        {{.verb = "create"}, "resource attributes without resource", false},
        {{.verb = "create", .resource = ""}, "empty resource", false},
        {{.namespace_ = "team-a", .verb = "create", .group = "g"}, "group without resource", false},
        {{.verb = "create", .resource = "webhooks", .path = "/x"}, "resource with a path", false},
        {{.nonresource = true, .verb = "get"}, "nonresource without path", false},
        {{.nonresource = true, .verb = "get", .path = ""}, "nonresource with empty path", false},
        {{.nonresource = true, .path = "/x"}, "nonresource without verb", false},
        {{.nonresource = true, .path = "/x", .verb = ""}, "nonresource with empty verb", false},
        {{.nonresource = true, .path = "/x", .verb = "get", .namespace_ = "ns"}, "nonresource with namespace", false},
        {{.nonresource = true, .path = "/x", .verb = "get", .resource = "r"}, "nonresource with resource", false},
        {{.nonresource = true, .path = "/x", .verb = "get", .name = ""}, "nonresource with name", false},
        {{.verb = "create", .resource = "web\xffhooks"}, "resource not UTF-8", true},
        {{.verb = "cr\xc3", .resource = "webhooks"}, "verb cut mid-sequence", true},
        {{.namespace_ = "\xed\xa0\x80", .verb = "get", .resource = "r"}, "namespace a UTF-16 surrogate", true},
        {{.verb = "get", .resource = "r", .subresource = "\xc0\xaf"}, "subresource overlong", true},
        {{.nonresource = true, .path = "/\xfe", .verb = "get"}, "path not UTF-8", true},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ_INT(sar_attributes_valid(&bad[i].attrs), bad[i].shape_ok);
        expect_refused(&p.view, &bad[i].attrs, bad[i].what);
    }
    CHECK(sar_attributes_valid(&create_webhooks));
    CHECK(!sar_attributes_valid(NULL));

    size_t len = 0;
    CHECK(sar_request_body(NULL, &create_webhooks, &len) == NULL);
    CHECK(sar_request_body(&p.view, NULL, &len) == NULL);
    CHECK(sar_request_body(&p.view, &create_webhooks, NULL) == NULL);

    /* Identities jansson cannot encode (the packed format allows any non-control byte). */
    static const char *const bad_group[] = {"ok", "bad\xff"};
    static const char *const bad_value[] = {"\x80"};
    static const char *const ok_value[] = {"v"};
    static const extra_entry bad_key[] = {{"k\xc3(", ok_value, 1}};
    static const extra_entry bad_val[] = {{"k", bad_value, 1}};
    static const extra_entry dup_key[] = {{"k", ok_value, 1}, {"k", ok_value, 1}};
    const struct {
        test_user u;
        const char *what;
    } users[] = {
        {{"al\xffice", "", NULL, 0, NULL, 0}, "username not UTF-8"},
        {{"alice", "\xf8\x88\x80\x80\x80", NULL, 0, NULL, 0}, "uid not UTF-8"},
        {{"alice", "", bad_group, 2, NULL, 0}, "group not UTF-8"},
        {{"alice", "", NULL, 0, bad_key, 1}, "extra key not UTF-8"},
        {{"alice", "", NULL, 0, bad_val, 1}, "extra value not UTF-8"},
        {{"alice", "", NULL, 0, dup_key, 2}, "extra key repeated"},
    };
    for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
        static packed_user q;
        REQUIRE(pack(&users[i].u, &q) == 0);
        expect_refused(&q.view, &create_webhooks, users[i].what);
    }
}

/* ---- parsing helpers ---- */

static char *read_fixture(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", TOKENGATE_TESTDATA, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "    cannot open %s\n", path);
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    fclose(f);
    *len = n;
    return buf;
}

typedef struct parsed {
    sar_result result;
    char reason[REASON_CAP];
} parsed;

/* Parses body into a static result. The body is copied into an exact-size heap buffer so
 * that ASan catches any read past body_len. */
static const parsed *parse(const char *body, size_t body_len)
{
    static parsed p;
    memset(&p, 0, sizeof(p));
    char *copy = malloc(body_len ? body_len : 1);
    if (!copy) {
        p.result = (sar_result)-1;
        return &p;
    }
    memcpy(copy, body, body_len);
    p.result = sar_parse_response(copy, body_len, p.reason, sizeof(p.reason));
    free(copy);
    return &p;
}

static const parsed *parse_str(const char *body)
{
    return parse(body, strlen(body));
}

static const parsed *parse_fixture(const char *name)
{
    size_t len = 0;
    char *body = read_fixture(name, &len);
    if (!body) {
        static parsed missing;
        missing.result = (sar_result)-1;
        return &missing;
    }
    const parsed *p = parse(body, len);
    free(body);
    return p;
}

/* A SubjectAccessReview whose status is the given JSON. */
static const parsed *parse_status(const char *status_json)
{
    static char body[8192];
    snprintf(body, sizeof(body),
             "{\"kind\":\"SubjectAccessReview\",\"apiVersion\":\"authorization.k8s.io/"
             "v1\",\"status\":%s}",
             status_json);
    return parse_str(body);
}

/* ---- captured answers ---- */

static void test_fixture_verdicts(void)
{
    const parsed *p = parse_fixture("sar-resource-allowed.body");
    CHECK_EQ_INT(p->result, SAR_ALLOWED);
    CHECK_STR(p->reason, rbac_reason);

    p = parse_fixture("sar-resource-denied.body");
    CHECK_EQ_INT(p->result, SAR_DENIED);
    CHECK_STR(p->reason, "denied");

    p = parse_fixture("sar-nonresource-denied.body");
    CHECK_EQ_INT(p->result, SAR_DENIED);
    CHECK_STR(p->reason, "denied");

    p = parse_fixture("sar-invalid-spec.body"); /* a 422 Status */
    CHECK_EQ_INT(p->result, SAR_BAD_RESPONSE);
    CHECK(p->reason[0] != '\0');

    /* The reason is truncated to reason_cap, NUL-terminated, never overrun. */
    size_t len = 0;
    char *body = read_fixture("sar-resource-allowed.body", &len);
    REQUIRE(body != NULL);
    char reason[9];
    memset(reason, 'Z', sizeof(reason));
    CHECK_EQ_INT(sar_parse_response(body, len, reason, 8), SAR_ALLOWED);
    CHECK_STR(reason, "RBAC: a");
    CHECK_EQ_INT(reason[8], 'Z');
    /* reason_cap 0: nothing written (reason may be NULL), the verdict is the same. */
    memset(reason, 'Z', sizeof(reason));
    CHECK_EQ_INT(sar_parse_response(body, len, reason, 0), SAR_ALLOWED);
    CHECK_EQ_INT(reason[0], 'Z');
    CHECK_EQ_INT(sar_parse_response(body, len, NULL, 0), SAR_ALLOWED);
    free(body);
}

static void test_fixture_not_sars(void)
{
    static const char *const files[] = {
        "sar-invalid-spec.body",
        "tokenreview-authenticated.body",
        "tokenreview-pod-bound.body",
        "tokenreview-invalid.body",
        "tokenreview-audience-match.body",
        "tokenreview-audience-mismatch.body",
        "tokenreview-serviceaccount-deleted.body",
        "tokenreview-pod-deleted.body",
        "tokenreview-empty-token.body",
        "tokenreview-gateway-credential-invalid.body",
        "tokenreview-caller-lacks-rbac.body",
        "throttled-429.body",
        "list-serviceaccounts-page.json",
        "sa-token-claims-pod-bound.json",
        "watch-expired.jsonl",
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        const parsed *p = parse_fixture(files[i]);
        CHECK_EQ_INT(p->result, SAR_BAD_RESPONSE);
        CHECK(p->reason[0] != '\0');
        if (p->result != SAR_BAD_RESPONSE) fprintf(stderr, "    file %s\n", files[i]);
    }
}

/* Every captured *.body file has an expectation above; a new capture must get one. */
static void test_every_body_fixture_is_covered(void)
{
    static const char *const known[] = {
        "tokenreview-authenticated.body",
        "tokenreview-pod-bound.body",
        "tokenreview-invalid.body",
        "tokenreview-audience-match.body",
        "tokenreview-audience-mismatch.body",
        "tokenreview-serviceaccount-deleted.body",
        "tokenreview-pod-deleted.body",
        "tokenreview-empty-token.body",
        "tokenreview-gateway-credential-invalid.body",
        "tokenreview-caller-lacks-rbac.body",
        "throttled-429.body",
        "sar-resource-allowed.body",
        "sar-resource-denied.body",
        "sar-nonresource-denied.body",
        "sar-invalid-spec.body",
    };
    DIR *dir = opendir(TOKENGATE_TESTDATA);
    REQUIRE(dir != NULL);
    size_t bodies = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 5, ".body") != 0) continue;
        bodies++;
        bool found = false;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            if (strcmp(known[i], de->d_name) == 0) found = true;
        CHECK(found);
        if (!found) fprintf(stderr, "    no expectation for fixture %s\n", de->d_name);
    }
    closedir(dir);
    CHECK_EQ_INT(bodies, sizeof(known) / sizeof(known[0]));
}

static void test_fixture_truncations(void)
{
    static const char *const files[] = {"sar-resource-allowed.body", "sar-resource-denied.body",
                                        "sar-nonresource-denied.body"};
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        size_t len = 0;
        char *body = read_fixture(files[f], &len);
        REQUIRE(body != NULL);
        while (len > 0 && (body[len - 1] == '\n' || body[len - 1] == ' ')) len--;
        int accepted = 0;
        for (size_t cut = 0; cut < len; cut++)
            if (parse(body, cut)->result != SAR_BAD_RESPONSE) accepted++;
        CHECK_EQ_INT(accepted, 0);
        CHECK(parse(body, len)->result != SAR_BAD_RESPONSE);
        free(body);
    }
}

/* ---- hand-made answers ---- */

static void test_handmade_verdicts(void)
{
    static const struct {
        const char *status;
        sar_result want;
        const char *reason;
    } cases[] = {
        {"{\"allowed\":true}", SAR_ALLOWED, "allowed"},
        {"{\"allowed\":true,\"reason\":\"ok by rule\"}", SAR_ALLOWED, "ok by rule"},
        {"{\"allowed\":true,\"denied\":false}", SAR_ALLOWED, "allowed"},
        {"{\"allowed\":false}", SAR_DENIED, "denied"},
        {"{}", SAR_DENIED, "denied"}, /* allowed omitted: false, as kube-apiserver sends it */
        {"{\"reason\":\"no RBAC rule\"}", SAR_DENIED, "no RBAC rule"},
        {"{\"denied\":true,\"reason\":\"webhook says no\"}", SAR_DENIED, "webhook says no"},
        {"{\"allowed\":true,\"denied\":true,\"reason\":\"explicit deny\"}", SAR_DENIED, "explicit deny"},
        {"{\"denied\":true,\"allowed\":true}", SAR_DENIED, "denied"},
        {"{\"allowed\":false,\"denied\":false}", SAR_DENIED, "denied"},
        {"{\"evaluationError\":\"webhook timed out\"}", SAR_DENIED, "webhook timed out"},
        {"{\"reason\":\"\",\"evaluationError\":\"eval failed\"}", SAR_DENIED, "eval failed"},
        {"{\"reason\":\"r\",\"evaluationError\":\"e\"}", SAR_DENIED, "r"},
        {"{\"reason\":\"\",\"evaluationError\":\"\"}", SAR_DENIED, "denied"},
        {"{\"allowed\":true,\"evaluationError\":\"partial\"}", SAR_ALLOWED, "partial"},
        {"{\"allowed\":false,\"unknownField\":{\"x\":[1,2]}}", SAR_DENIED, "denied"},
        /* Reasons may reach clients: controls become '?', UTF-8 is kept. */
        {"{\"reason\":\"line1\\r\\nX-Injected: 1\"}", SAR_DENIED, "line1??X-Injected: 1"},
        {"{\"reason\":\"a\\tb\\u0000c\"}", SAR_BAD_RESPONSE, NULL}, /* NUL inside: refused by the parser */
        {"{\"reason\":\"a\\tb\\u001bc\\u007fd\"}", SAR_DENIED, "a?b?c?d"},
        {"{\"reason\":\"nel\\u0085 csi\\u009b end\"}", SAR_DENIED, "nel? csi? end"},
        {"{\"reason\":\"caf\\u00e9 \\u00a0 \\u2603\"}", SAR_DENIED, "caf\xc3\xa9 \xc2\xa0 \xe2\x98\x83"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const parsed *p = parse_status(cases[i].status);
        CHECK_EQ_INT(p->result, cases[i].want);
        if (cases[i].reason)
            CHECK_STR(p->reason, cases[i].reason);
        else
            CHECK(p->reason[0] != '\0');
        if (p->result != cases[i].want) fprintf(stderr, "    status %s\n", cases[i].status);
    }

    /* No kind at all: judged on its status, as TokenReview answers are. */
    CHECK_EQ_INT(parse_str("{\"status\":{\"allowed\":true}}")->result, SAR_ALLOWED);
}

static void test_handmade_reason_truncation(void)
{
    /* "ab" + U+20AC (3 bytes): a cut never leaves half a character. */
    static const char body[] = "{\"status\":{\"reason\":\"ab\\u20acc\"}}";
    for (size_t cap = 1; cap <= 8; cap++) {
        char reason[16];
        memset(reason, 'Z', sizeof(reason));
        CHECK_EQ_INT(sar_parse_response(body, strlen(body), reason, cap), SAR_DENIED);
        const char *want = cap <= 1   ? ""
                           : cap == 2 ? "a"
                           : cap <= 5 ? "ab"
                           : cap == 6 ? "ab\xe2\x82\xac"
                                      : "ab\xe2\x82\xac"
                                        "c";
        CHECK_STR(reason, want);
        CHECK_EQ_INT(reason[cap], 'Z');
    }
    /* A control character costs one output byte. */
    static const char ctl[] = "{\"status\":{\"reason\":\"\\r\\n\\r\\n\"}}";
    char reason[4];
    CHECK_EQ_INT(sar_parse_response(ctl, strlen(ctl), reason, sizeof(reason)), SAR_DENIED);
    CHECK_STR(reason, "???");
}

static void expect_bad(const parsed *p, const char *what)
{
    CHECK_EQ_INT(p->result, SAR_BAD_RESPONSE);
    if (p->result != SAR_BAD_RESPONSE) fprintf(stderr, "    accepted: %s\n", what);
    CHECK(p->reason[0] != '\0');
}

static void test_handmade_hostile(void)
{
    static const char *const statuses[] = {
        "{\"allowed\":\"true\"}",
        "{\"allowed\":\"false\"}",
        "{\"allowed\":1}",
        "{\"allowed\":0}",
        "{\"allowed\":null}",
        "{\"allowed\":[true]}",
        "{\"allowed\":{}}",
        "{\"allowed\":true,\"denied\":\"false\"}",
        "{\"allowed\":true,\"denied\":0}",
        "{\"allowed\":true,\"denied\":null}",
        "{\"allowed\":true,\"allowed\":true}",
        "{\"allowed\":false,\"allowed\":true}",
        "{\"allowed\":true,\"denied\":true,\"denied\":false}",
        "{\"allowed\":true,\"reason\":\"a\",\"reason\":\"b\"}",
        "{\"allowed\":true,\"reason\":42}",
        "{\"allowed\":false,\"reason\":[\"x\"]}",
        "{\"allowed\":false,\"evaluationError\":{}}",
        "{\"allowed\":true,\"extra\":{\"k\":1,\"k\":2}}", /* duplicates anywhere */
        "\"allowed\"",
        "null",
        "[]",
        "true",
    };
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        expect_bad(parse_status(statuses[i]), statuses[i]);

    static const char *const bodies[] = {
        "",
        " ",
        "null",
        "true",
        "[]",
        "[{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":true}}]",
        "\"SubjectAccessReview\"",
        "{}",
        "{\"kind\":\"SubjectAccessReview\"}",
        "{\"kind\":\"SubjectAccessReview\",\"status\":null}",
        "{\"kind\":\"SubjectAccessReview\",\"status\":\"Success\"}",
        "{\"kind\":\"SubjectAccessReview\",\"status\":[{\"allowed\":true}]}",
        "{\"kind\":\"Status\",\"status\":{\"allowed\":true}}",
        "{\"kind\":\"TokenReview\",\"status\":{\"allowed\":true}}",
        "{\"kind\":\"subjectaccessreview\",\"status\":{\"allowed\":true}}",
        "{\"kind\":\"LocalSubjectAccessReview\",\"status\":{\"allowed\":true}}",
        "{\"kind\":42,\"status\":{\"allowed\":true}}",
        "{\"kind\":null,\"status\":{\"allowed\":true}}",
        "{\"kind\":\"SubjectAccessReview\",\"kind\":\"SubjectAccessReview\",\"status\":{"
        "\"allowed\":true}}",
        "{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":false},\"status\":{\"allowed\":"
        "true}}",
        "{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":true}", /* truncated */
        "{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":tru",
        "{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":true}}x", /* trailing */
        "{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":true}}{}",
        "{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":true,\"reason\":\"\xff\"}}",
        "{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":true,\"reason\":\"a\\u0000b\"}}",
        "Too many requests, please try again later.\n",
        "<html><body>502 Bad Gateway</body></html>",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) expect_bad(parse_str(bodies[i]), bodies[i]);

    static const char raw_nul[] = "{\"kind\":\"SubjectAccessReview\",\"status\":{\"allowed\":true}}\0garbage";
    expect_bad(parse(raw_nul, sizeof(raw_nul) - 1), "NUL then garbage within body_len");
    /* body_len is honoured: what follows is not read. */
    static const char prefix[] = "{\"status\":{\"allowed\":true}}{\"status\":{\"allowed\":false}}";
    CHECK_EQ_INT(parse(prefix, strlen("{\"status\":{\"allowed\":true}}"))->result, SAR_ALLOWED);

    char reason[32];
    CHECK_EQ_INT(sar_parse_response(NULL, 0, reason, sizeof(reason)), SAR_BAD_RESPONSE);
}

/* ---- cache keys ---- */

static const unsigned char secret_a[CACHE_KEY_SECRET_BYTES] = "0123456789abcdef0123456789abcde";
static const unsigned char secret_b[CACHE_KEY_SECRET_BYTES] = "0123456789abcdef0123456789abcdX";

static bool key_of(const cache_keyer *k, const test_user *u, const sar_attributes *a, cache_key *out)
{
    static packed_user p;
    memset(out, 0, sizeof(*out));
    unsigned char digest[IDENTITY_DIGEST_BYTES];
    if (pack(u, &p) != 0 || identity_digest(p.packed, p.len, digest) != 0) return false;
    return sar_cache_key(k, digest, a, out) == 0;
}

static void be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Appends one length-prefixed part to msg. */
static void part(unsigned char *msg, size_t *o, const void *data, size_t len)
{
    be32(msg + *o, (uint32_t)len);
    memcpy(msg + *o + 4, data, len);
    *o += 4 + len;
}

static void test_cache_key_reference(void)
{
    /* sar.h's encoding, built by hand and HMAC'd here independently. */
    static const char *const g[] = {"g"};
    static const char *const v[] = {"v"};
    static const extra_entry ex[] = {{"k", v, 1}};
    test_user u = {"u", "", g, 1, ex, 1};
    sar_attributes a = {.nonresource = true, .path = "/p", .verb = "get"};
    cache_keyer *k = cache_keyer_new_with_secret(secret_a);
    REQUIRE(k != NULL);
    cache_key got;
    CHECK(key_of(k, &u, &a, &got));

    /* The identity enters as the SHA-256 of its packed form (identity.h's layout). */
    static packed_user p;
    REQUIRE(pack(&u, &p) == 0);
    unsigned char packed[64];
    size_t n = 0;
    packed[n++] = 1;
    packed[n++] = 0;
    packed[n++] = 'u'; /* username */
    packed[n++] = 0;
    packed[n++] = 0; /* uid "" */
    packed[n++] = 1;
    packed[n++] = 0; /* 1 group */
    packed[n++] = 1;
    packed[n++] = 0;
    packed[n++] = 'g';
    packed[n++] = 1;
    packed[n++] = 0; /* 1 extra key */
    packed[n++] = 1;
    packed[n++] = 0;
    packed[n++] = 'k';
    packed[n++] = 1;
    packed[n++] = 0; /* 1 value */
    packed[n++] = 1;
    packed[n++] = 0;
    packed[n++] = 'v';
    CHECK_EQ_INT((int)p.len, (int)n);
    CHECK_MEM(p.packed, packed, n);
    unsigned char digest[32];
    CHECK(SHA256(packed, n, digest) != NULL);

    unsigned char msg[512];
    size_t o = 0;
    msg[o++] = 'S';
    be32(msg + o, 10);
    o += 4;
    part(msg, &o, digest, 32);
    part(msg, &o, "N", 1);
    part(msg, &o, "", 0);                             /* namespace */
    part(msg, &o, "\x01get", 4);                      /* verb */
    for (int i = 0; i < 5; i++) part(msg, &o, "", 0); /* group version resource subresource name */
    part(msg, &o, "\x01/p", 3);                       /* path */
    unsigned char want[32];
    unsigned int mac_len = 0;
    CHECK(HMAC(EVP_sha256(), secret_a, CACHE_KEY_SECRET_BYTES, msg, o, want, &mac_len) != NULL);
    CHECK_EQ_INT(mac_len, 32);
    CHECK_MEM(got.bytes, want, 32);
    cache_keyer_free(k);
}

typedef struct key_case {
    const char *what;
    test_user u;
    sar_attributes a;
} key_case;

static void test_cache_key_distinct(void)
{
    static const char *const g3[] = {"g1", "g2", "g3"};
    static const char *const g3_other[] = {"g1", "gX", "g3"};
    static const char *const g3_swapped[] = {"g2", "g1", "g3"};
    static const char *const g2[] = {"g1", "g2"};
    static const char *const g_joined[] = {"g1g2", "g3"};
    static const char *const g4[] = {"g1", "g2", "g3", "k"};
    static const char *const ab[] = {"a", "b"}, *const ba[] = {"b", "a"}, *const ac[] = {"a", "c"};
    static const char *const a1[] = {"a"}, *const c1[] = {"c"}, *const bc[] = {"b", "c"};
    static const extra_entry ex[] = {{"k", ab, 2}, {"l", c1, 1}};
    static const extra_entry ex_value[] = {{"k", ac, 2}, {"l", c1, 1}};
    static const extra_entry ex_value_order[] = {{"k", ba, 2}, {"l", c1, 1}};
    static const extra_entry ex_key[] = {{"K", ab, 2}, {"l", c1, 1}};
    static const extra_entry ex_key_order[] = {{"l", c1, 1}, {"k", ab, 2}};
    static const extra_entry ex_moved[] = {{"k", a1, 1}, {"l", bc, 2}};
    static const extra_entry ex_dropped[] = {{"k", ab, 2}};
    static const extra_entry ex_empty_values[] = {{"k", ab, 2}, {"l", c1, 1}, {"m", NULL, 0}};
    static const extra_entry ex_k_only[] = {{"l", c1, 1}};
#define USER(...) ((test_user){__VA_ARGS__})
    const test_user base = USER("alice", "uid-1", g3, 3, ex, 2);
    const sar_attributes res = {.namespace_ = "ns",
                                .verb = "get",
                                .group = "grp",
                                .version = "v1",
                                .resource = "pods",
                                .subresource = "log",
                                .name = "p1"};
    const sar_attributes nonres = {.nonresource = true, .path = "/metrics", .verb = "get"};
    sar_attributes flipped = res;
    flipped.nonresource = true;
    sar_attributes nonres_flipped = nonres;
    nonres_flipped.nonresource = false;
    sar_attributes tmp;

    key_case cases[64];
    size_t n = 0;
#define CASE(what_, u_, a_) (cases[n++] = (key_case){(what_), (u_), (a_)})
    CASE("base", base, res);
    CASE("username", USER("alicE", "uid-1", g3, 3, ex, 2), res);
    CASE("username prefix", USER("alic", "uid-1", g3, 3, ex, 2), res);
    CASE("uid", USER("alice", "uid-2", g3, 3, ex, 2), res);
    CASE("uid empty", USER("alice", "", g3, 3, ex, 2), res);
    CASE("username/uid boundary", USER("aliceu", "id-1", g3, 3, ex, 2), res);
    CASE("one group", USER("alice", "uid-1", g3_other, 3, ex, 2), res);
    CASE("group order", USER("alice", "uid-1", g3_swapped, 3, ex, 2), res);
    CASE("group dropped", USER("alice", "uid-1", g2, 2, ex, 2), res);
    CASE("groups joined", USER("alice", "uid-1", g_joined, 2, ex, 2), res);
    CASE("no groups", USER("alice", "uid-1", NULL, 0, ex, 2), res);
    CASE("extra key as a group", USER("alice", "uid-1", g4, 4, ex_k_only, 1), res);
    CASE("extra value", USER("alice", "uid-1", g3, 3, ex_value, 2), res);
    CASE("extra value order", USER("alice", "uid-1", g3, 3, ex_value_order, 2), res);
    CASE("extra key", USER("alice", "uid-1", g3, 3, ex_key, 2), res);
    CASE("extra key order", USER("alice", "uid-1", g3, 3, ex_key_order, 2), res);
    CASE("extra value moved to next key", USER("alice", "uid-1", g3, 3, ex_moved, 2), res);
    CASE("extra key dropped", USER("alice", "uid-1", g3, 3, ex_dropped, 1), res);
    CASE("extra key with no values", USER("alice", "uid-1", g3, 3, ex_empty_values, 3), res);
    CASE("no extra", USER("alice", "uid-1", g3, 3, NULL, 0), res);
    const char **fields[] = {&tmp.namespace_, &tmp.verb,        &tmp.group, &tmp.version,
                             &tmp.resource,   &tmp.subresource, &tmp.name,  &tmp.path};
    static const char *const field_names[] = {"namespace", "verb",        "group", "version",
                                              "resource",  "subresource", "name",  "path"};
    static char what[8][3][48];
    for (size_t f = 0; f < 8; f++) {
        tmp = res;
        *fields[f] = "other";
        snprintf(what[f][0], sizeof(what[f][0]), "%s differs", field_names[f]);
        CASE(what[f][0], base, tmp);
        tmp = res;
        *fields[f] = "";
        snprintf(what[f][1], sizeof(what[f][1]), "%s \"\"", field_names[f]);
        CASE(what[f][1], base, tmp);
        if (f != 7) { /* path is already absent in res */
            tmp = res;
            *fields[f] = NULL;
            snprintf(what[f][2], sizeof(what[f][2]), "%s absent", field_names[f]);
            CASE(what[f][2], base, tmp);
        }
    }
    tmp = res;
    tmp.namespace_ = NULL;
    tmp.name = "ns";
    CASE("value moved from namespace to name", base, tmp);
    tmp = res;
    tmp.name = NULL;
    tmp.namespace_ = "nsp1";
    CASE("name folded into namespace", base, tmp);
    CASE("resource flipped to nonresource", base, flipped);
    CASE("nonresource", base, nonres);
    CASE("nonresource flipped to resource", base, nonres_flipped);
    tmp = nonres;
    tmp.path = "/metricz";
    CASE("nonresource path", base, tmp);
    tmp = nonres;
    tmp.verb = "post";
    CASE("nonresource verb", base, tmp);
    REQUIRE(n <= sizeof(cases) / sizeof(cases[0]));

    cache_keyer *k = cache_keyer_new_with_secret(secret_a);
    REQUIRE(k != NULL);
    cache_key keys[64];
    for (size_t i = 0; i < n; i++) CHECK(key_of(k, &cases[i].u, &cases[i].a, &keys[i]));
    /* Pairwise distinct: each case differs from the base and from every other case. */
    int collisions = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (memcmp(keys[i].bytes, keys[j].bytes, CACHE_KEY_BYTES) == 0) {
                collisions++;
                fprintf(stderr, "    same key: \"%s\" and \"%s\"\n", cases[i].what, cases[j].what);
            }
    CHECK_EQ_INT(collisions, 0);
    CHECK(n > 40);

    /* Same inputs (separately packed, separately allocated strings) → same key. */
    for (size_t i = 0; i < n; i++) {
        cache_key again;
        CHECK(key_of(k, &cases[i].u, &cases[i].a, &again));
        CHECK_MEM(again.bytes, keys[i].bytes, CACHE_KEY_BYTES);
    }
    char ns_copy[] = "ns", verb_copy[] = "get";
    tmp = res;
    tmp.namespace_ = ns_copy;
    tmp.verb = verb_copy;
    cache_key same_key;
    CHECK(key_of(k, &base, &tmp, &same_key));
    CHECK_MEM(same_key.bytes, keys[0].bytes, CACHE_KEY_BYTES);
    cache_keyer_free(k);
#undef CASE
#undef USER
}

static void test_cache_key_secret(void)
{
    cache_keyer *a1 = cache_keyer_new_with_secret(secret_a);
    cache_keyer *a2 = cache_keyer_new_with_secret(secret_a);
    cache_keyer *b = cache_keyer_new_with_secret(secret_b);
    cache_keyer *r = cache_keyer_new();
    REQUIRE(a1 && a2 && b && r);
    cache_key k1, k2, kb, kr;
    CHECK(key_of(a1, &webhook_sender, &create_webhooks, &k1));
    CHECK(key_of(a2, &webhook_sender, &create_webhooks, &k2));
    CHECK(key_of(b, &webhook_sender, &create_webhooks, &kb));
    CHECK(key_of(r, &webhook_sender, &create_webhooks, &kr));
    CHECK_MEM(k1.bytes, k2.bytes, CACHE_KEY_BYTES); /* deterministic with a fixed secret */
    CHECK(memcmp(k1.bytes, kb.bytes, CACHE_KEY_BYTES) != 0);
    CHECK(memcmp(k1.bytes, kr.bytes, CACHE_KEY_BYTES) != 0);

    /* Not a token key: the domain byte keeps the encodings apart. */
    cache_key tok;
    CHECK_EQ_INT(cache_key_for_token(a1, sa_user, strlen(sa_user), NULL, 0, &tok), 0);
    CHECK(memcmp(k1.bytes, tok.bytes, CACHE_KEY_BYTES) != 0);

    /* NULL arguments. */
    static packed_user p;
    REQUIRE(pack(&webhook_sender, &p) == 0);
    cache_key out;
    unsigned char digest[IDENTITY_DIGEST_BYTES];
    REQUIRE(identity_digest(p.packed, p.len, digest) == 0);
    CHECK_EQ_INT(sar_cache_key(NULL, digest, &create_webhooks, &out), -1);
    CHECK_EQ_INT(sar_cache_key(a1, NULL, &create_webhooks, &out), -1);
    CHECK_EQ_INT(sar_cache_key(a1, digest, NULL, &out), -1);
    CHECK_EQ_INT(sar_cache_key(a1, digest, &create_webhooks, NULL), -1);

    /* A large identity (256 groups, 256 extra values) still gets a key. */
    static char names[256][16];
    static const char *gs[256];
    for (int i = 0; i < 256; i++) {
        snprintf(names[i], sizeof(names[i]), "g%d", i);
        gs[i] = names[i];
    }
    static const extra_entry big_extra[] = {{"k", gs, 256}, {"l", gs, 256}};
    test_user big = {"big", "", gs, 256, big_extra, 2};
    cache_key kbig;
    CHECK(key_of(a1, &big, &create_webhooks, &kbig));
    test_user big2 = {"big", "", gs, 255, big_extra, 2};
    cache_key kbig2;
    CHECK(key_of(a1, &big2, &create_webhooks, &kbig2));
    CHECK(memcmp(kbig.bytes, kbig2.bytes, CACHE_KEY_BYTES) != 0);

    cache_keyer_free(a1);
    cache_keyer_free(a2);
    cache_keyer_free(b);
    cache_keyer_free(r);
}

/* The cached verdict keeps its identity beside the reason; what does not fit drops the
 * identity (then every revocation evicts it), never the bounds. */
static void test_cache_value_pack(void)
{
    unsigned char out[64];
    const unsigned char id[] = "IDENTITY";
    const unsigned char *identity;
    size_t identity_len, reason_len;
    const char *reason;
    size_t n = sar_cache_value_pack(id, 8, "no access", 9, out, sizeof(out));
    CHECK_EQ_INT((int)n, 4 + 8 + 9);
    CHECK_EQ_INT(sar_cache_value_unpack(out, n, &identity, &identity_len, &reason, &reason_len), 0);
    CHECK_EQ_INT((int)identity_len, 8);
    CHECK(memcmp(identity, "IDENTITY", 8) == 0);
    CHECK_EQ_INT((int)reason_len, 9);
    CHECK(memcmp(reason, "no access", 9) == 0);
    n = sar_cache_value_pack(id, 8, NULL, 0, out, sizeof(out)); /* allowed: no reason */
    CHECK_EQ_INT(sar_cache_value_unpack(out, n, &identity, &identity_len, &reason, &reason_len), 0);
    CHECK_EQ_INT((int)reason_len, 0);
    n = sar_cache_value_pack(id, 8, "a long reason", 13, out, 20); /* 4 + 8 + 13 > 20 */
    CHECK(n <= 20);
    CHECK_EQ_INT(sar_cache_value_unpack(out, n, &identity, &identity_len, &reason, &reason_len), 0);
    CHECK_EQ_INT((int)identity_len, 0);
    CHECK_EQ_INT(sar_cache_value_pack(id, 8, "x", 1, out, 3), 0); /* no room at all */
    out[0] = 200;                                                 /* identity length beyond the value */
    CHECK_EQ_INT(sar_cache_value_unpack(out, 10, &identity, &identity_len, &reason, &reason_len), -1);
    CHECK_EQ_INT(sar_cache_value_unpack(out, 3, &identity, &identity_len, &reason, &reason_len), -1);
}

int main(void)
{
    RUN(test_cache_value_pack);
    RUN(test_request_body_exact);
    RUN(test_request_body_resource);
    RUN(test_request_body_nonresource);
    RUN(test_request_body_matches_capture);
    RUN(test_request_body_escaping);
    RUN(test_request_body_extra_and_groups);
    RUN(test_request_body_refused);
    RUN(test_fixture_verdicts);
    RUN(test_fixture_not_sars);
    RUN(test_every_body_fixture_is_covered);
    RUN(test_fixture_truncations);
    RUN(test_handmade_verdicts);
    RUN(test_handmade_reason_truncation);
    RUN(test_handmade_hostile);
    RUN(test_cache_key_reference);
    RUN(test_cache_key_distinct);
    RUN(test_cache_key_secret);
    return UNIT_EXIT();
}
