/* Unit tests: the TokenReview request body, the answer parser (against every captured real
 * kube-apiserver 1.26 answer and hand-made hostile ones) and packed identities
 * (core/tokenreview.h, core/identity.h). */
#include "identity.h"
#include "tokenreview.h"
#include "unit.h"

#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>

#ifndef TOKENGATE_TESTDATA
#error "TOKENGATE_TESTDATA must point at spec/fixtures/kube-apiserver-1.26"
#endif

#define PACKED_CAP 16384
#define REASON_CAP 512

static const char sa_user[] = "system:serviceaccount:team-a:webhook-sender";
static const char sa_uid[] = "84aa73c3-2ab6-4096-82bf-62bbbc52c53a";
static const char sa_groups[] = "system:serviceaccounts|system:serviceaccounts:team-a|system:authenticated";
static const char apiserver_aud[] = "https://kubernetes.default.svc.cluster.local";
static const char hooks_aud[] = "https://hooks.example.com";

/* ---- request body ---- */

static void test_request_body_no_audiences(void)
{
    size_t len = 0;
    const char token[] = "eyJhbGciOi.eyJleHAiOjF9.sig-_~+/==";
    char *body = tokenreview_request_body(token, strlen(token), NULL, 0, &len);
    REQUIRE(body != NULL);
    CHECK_STR(body, "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\","
                    "\"spec\":{\"token\":\"eyJhbGciOi.eyJleHAiOjF9.sig-_~+/==\"}}");
    CHECK_EQ_INT(len, strlen(body));

    json_error_t err;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
    CHECK(json_is_object(root));
    CHECK_STR(json_string_value(json_object_get(root, "apiVersion")), "authentication.k8s.io/v1");
    CHECK_STR(json_string_value(json_object_get(root, "kind")), "TokenReview");
    json_t *spec = json_object_get(root, "spec");
    CHECK_STR(json_string_value(json_object_get(spec, "token")), token);
    CHECK(json_object_get(spec, "audiences") == NULL);
    CHECK_EQ_INT(json_object_size(spec), 1);
    json_decref(root);
    free(body);

    /* token_len is honoured: the token need not be NUL-terminated. */
    body = tokenreview_request_body("abcdef", 3, NULL, 0, &len);
    REQUIRE(body != NULL);
    CHECK_STR(body, "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\","
                    "\"spec\":{\"token\":\"abc\"}}");
    free(body);
}

static void test_request_body_audiences(void)
{
    const char *const auds[] = {"https://hooks.example.com", "we\"ird\\aud\t\xc3\xa9"};
    size_t len = 0;
    char *body = tokenreview_request_body("tok", 3, auds, 2, &len);
    REQUIRE(body != NULL);
    CHECK_EQ_INT(len, strlen(body));
    CHECK_STR(body, "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\","
                    "\"spec\":{\"token\":\"tok\",\"audiences\":[\"https://hooks.example.com\","
                    "\"we\\\"ird\\\\aud\\t\xc3\xa9\"]}}");
    json_error_t err;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
    CHECK(json_is_object(root));
    json_t *spec = json_object_get(root, "spec");
    CHECK_STR(json_string_value(json_object_get(spec, "token")), "tok");
    json_t *arr = json_object_get(spec, "audiences");
    CHECK(json_is_array(arr));
    CHECK_EQ_INT(json_array_size(arr), 2);
    CHECK_STR(json_string_value(json_array_get(arr, 0)), auds[0]);
    CHECK_STR(json_string_value(json_array_get(arr, 1)), auds[1]);
    json_decref(root);
    free(body);
}

static void test_request_body_audience_not_utf8(void)
{
    /* An audience jansson cannot encode (invalid UTF-8) must not be dropped silently: the
     * API server would then review against a different audience set than the one the
     * answer is checked against. Either the body is refused (NULL) or it holds them all. */
    const char *const auds[] = {"https://ok.example", "bad\xff"};
    size_t len = 0;
    char *body = tokenreview_request_body("tok", 3, auds, 2, &len);
    if (!body) {
        CHECK(body == NULL);
        return;
    }
    json_error_t err;
    json_t *root = json_loadb(body, len, 0, &err);
    json_t *arr = json_object_get(json_object_get(root, "spec"), "audiences");
    CHECK_EQ_INT(json_array_size(arr), 2);
    if (json_array_size(arr) != 2) fprintf(stderr, "    body: %s\n", body);
    json_decref(root);
    free(body);
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
    tokenreview_result result;
    unsigned char packed[PACKED_CAP];
    size_t packed_len;
    char reason[REASON_CAP];
} parsed;

/* Parses body with the given requested audiences into a static result. The body is copied
 * into an exact-size heap buffer so that ASan catches any read past body_len. */
static const parsed *parse(const char *body, size_t body_len, const char *const *auds, size_t n_auds)
{
    static parsed p;
    memset(&p, 0, sizeof(p));
    p.packed_len = (size_t)-1;
    char *copy = malloc(body_len ? body_len : 1);
    if (!copy) {
        p.result = (tokenreview_result)-1;
        return &p;
    }
    memcpy(copy, body, body_len);
    p.result = tokenreview_parse_response(copy, body_len, auds, n_auds, p.packed, sizeof(p.packed), &p.packed_len,
                                          p.reason, sizeof(p.reason));
    free(copy);
    return &p;
}

static const parsed *parse_str(const char *body)
{
    return parse(body, strlen(body), NULL, 0);
}

static const parsed *parse_fixture(const char *name, const char *const *auds, size_t n_auds)
{
    size_t len = 0;
    char *body = read_fixture(name, &len);
    if (!body) {
        static parsed missing;
        missing.result = (tokenreview_result)-1;
        return &missing;
    }
    const parsed *p = parse(body, len, auds, n_auds);
    free(body);
    return p;
}

/* Checks the packed identity of webhook-sender; returns the view for further checks. */
static void check_webhook_sender(const parsed *p, size_t want_extra, identity_view *view_out)
{
    identity_view view;
    CHECK(p->packed_len > 0 && p->packed_len <= PACKED_CAP);
    int rc = identity_view_parse(p->packed, p->packed_len, &view);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0) return;
    CHECK_STRN(view.username.ptr, view.username.len, sa_user);
    CHECK_STRN(view.uid.ptr, view.uid.len, sa_uid);
    CHECK_EQ_INT(view.n_groups, 3);
    const unsigned char *pos = view.groups;
    str_view g;
    identity_read_string(&pos, &g);
    CHECK_STRN(g.ptr, g.len, "system:serviceaccounts");
    identity_read_string(&pos, &g);
    CHECK_STRN(g.ptr, g.len, "system:serviceaccounts:team-a");
    identity_read_string(&pos, &g);
    CHECK_STRN(g.ptr, g.len, "system:authenticated");
    char joined[256];
    CHECK_EQ_INT(identity_join_groups(&view, joined, sizeof(joined)), strlen(sa_groups));
    CHECK_STR(joined, sa_groups);
    /* Exactly enough room (with the NUL) works; one byte less does not. */
    CHECK_EQ_INT(identity_join_groups(&view, joined, strlen(sa_groups) + 1), strlen(sa_groups));
    CHECK_EQ_INT(identity_join_groups(&view, joined, strlen(sa_groups)), -1);
    CHECK_EQ_INT(view.n_extra, want_extra);
    str_view ns, name;
    CHECK(identity_serviceaccount(view.username, &ns, &name));
    CHECK_STRN(ns.ptr, ns.len, "team-a");
    CHECK_STRN(name.ptr, name.len, "webhook-sender");
    if (view_out) *view_out = view;
}

/* ---- captured answers ---- */

static void test_fixture_authenticated(void)
{
    const parsed *p = parse_fixture("tokenreview-authenticated.body", NULL, 0);
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    if (p->result == TOKENREVIEW_AUTHENTICATED) check_webhook_sender(p, 0, NULL);

    const char *const right[] = {apiserver_aud};
    p = parse_fixture("tokenreview-authenticated.body", right, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    if (p->result == TOKENREVIEW_AUTHENTICATED) check_webhook_sender(p, 0, NULL);

    const char *const wrong[] = {hooks_aud};
    p = parse_fixture("tokenreview-authenticated.body", wrong, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
    CHECK(p->reason[0] != '\0');

    const char *const either[] = {hooks_aud, apiserver_aud}; /* one accepted is enough */
    p = parse_fixture("tokenreview-authenticated.body", either, 2);
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
}

static void test_fixture_pod_bound(void)
{
    const parsed *p = parse_fixture("tokenreview-pod-bound.body", NULL, 0);
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    if (p->result != TOKENREVIEW_AUTHENTICATED) return;
    identity_view view;
    memset(&view, 0, sizeof(view));
    check_webhook_sender(p, 2, &view);
    if (view.n_extra != 2) return;
    /* jansson keeps object insertion order by default: keys come out as sent. */
    const unsigned char *pos = view.extra;
    str_view key, val;
    identity_read_string(&pos, &key);
    CHECK_STRN(key.ptr, key.len, "authentication.kubernetes.io/pod-name");
    CHECK_EQ_INT(identity_read_count(&pos), 1);
    identity_read_string(&pos, &val);
    CHECK_STRN(val.ptr, val.len, "hook-pod");
    identity_read_string(&pos, &key);
    CHECK_STRN(key.ptr, key.len, "authentication.kubernetes.io/pod-uid");
    CHECK_EQ_INT(identity_read_count(&pos), 1);
    identity_read_string(&pos, &val);
    CHECK_STRN(val.ptr, val.len, "872f8d49-620a-4db7-83b4-39cbb8cf4aed");
    CHECK(pos == p->packed + p->packed_len);
}

static void test_fixture_unauthenticated(void)
{
    static const struct {
        const char *file;
        const char *error;
        int with_audience;
    } cases[] = {
        {"tokenreview-invalid.body", "invalid bearer token", 0},
        {"tokenreview-audience-mismatch.body",
         "[invalid bearer token, token audiences [\"https://kubernetes.default.svc.cluster.local\"] is "
         "invalid for the target audiences [\"https://hooks.example.com\"]]",
         1},
        {"tokenreview-serviceaccount-deleted.body", "[invalid bearer token, serviceaccounts \"doomed\" not found]", 0},
        {"tokenreview-pod-deleted.body", "[invalid bearer token, service account token has been invalidated]", 0},
    };
    const char *const auds[] = {hooks_aud};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* Same verdict with and without requested audiences. */
        for (int with = 0; with < 2; with++) {
            const parsed *p = parse_fixture(cases[i].file, with ? auds : NULL, with ? 1 : 0);
            CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
            CHECK_STR(p->reason, cases[i].error);
            if (p->result != TOKENREVIEW_UNAUTHENTICATED) fprintf(stderr, "    file %s\n", cases[i].file);
        }
    }

    /* The reason is truncated to reason_cap, NUL-terminated, never overrun. */
    size_t len = 0;
    char *body = read_fixture("tokenreview-invalid.body", &len);
    REQUIRE(body != NULL);
    unsigned char packed[64];
    size_t packed_len = 0;
    char reason[9];
    memset(reason, 'Z', sizeof(reason));
    CHECK_EQ_INT(tokenreview_parse_response(body, len, NULL, 0, packed, sizeof(packed), &packed_len, reason, 8),
                 TOKENREVIEW_UNAUTHENTICATED);
    CHECK_STR(reason, "invalid");
    CHECK_EQ_INT(reason[8], 'Z');
    /* reason_cap 0: nothing written, the verdict is the same. */
    memset(reason, 'Z', sizeof(reason));
    CHECK_EQ_INT(tokenreview_parse_response(body, len, NULL, 0, packed, sizeof(packed), &packed_len, reason, 0),
                 TOKENREVIEW_UNAUTHENTICATED);
    CHECK_EQ_INT(reason[0], 'Z');
    free(body);
}

static void test_fixture_audience_match(void)
{
    const char *const right[] = {hooks_aud};
    const parsed *p = parse_fixture("tokenreview-audience-match.body", right, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    if (p->result == TOKENREVIEW_AUTHENTICATED) check_webhook_sender(p, 0, NULL);

    const char *const other[] = {"https://other.example.com"};
    p = parse_fixture("tokenreview-audience-match.body", other, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);

    const char *const apiserver[] = {apiserver_aud};
    p = parse_fixture("tokenreview-audience-match.body", apiserver, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);

    /* A prefix or a case variant of the accepted audience is not it. */
    const char *const prefix[] = {"https://hooks.example"};
    p = parse_fixture("tokenreview-audience-match.body", prefix, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
    const char *const upper[] = {"https://HOOKS.example.com"};
    p = parse_fixture("tokenreview-audience-match.body", upper, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
}

static void test_fixture_not_tokenreviews(void)
{
    static const char *const files[] = {
        "tokenreview-empty-token.body",       "tokenreview-gateway-credential-invalid.body",
        "tokenreview-caller-lacks-rbac.body", "throttled-429.body",
        "sar-resource-allowed.body",          "sar-resource-denied.body",
        "sar-nonresource-denied.body",        "sar-invalid-spec.body",
        "list-serviceaccounts-page.json",     "sa-token-claims-pod-bound.json",
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        const parsed *p = parse_fixture(files[i], NULL, 0);
        CHECK_EQ_INT(p->result, TOKENREVIEW_BAD_RESPONSE);
        CHECK(p->reason[0] != '\0');
        if (p->result != TOKENREVIEW_BAD_RESPONSE) fprintf(stderr, "    file %s\n", files[i]);
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

/* ---- hand-made answers ---- */

/* A TokenReview whose status is the given JSON. */
static const parsed *parse_status(const char *status_json)
{
    static char body[65536 + 1024];
    snprintf(body, sizeof(body), "{\"kind\":\"TokenReview\",\"apiVersion\":\"authentication.k8s.io/v1\",\"status\":%s}",
             status_json);
    return parse_str(body);
}

#define GOOD_USER "\"user\":{\"username\":\"system:serviceaccount:ns:sa\",\"uid\":\"u-1\",\"groups\":[\"g1\",\"g2\"]}"

static void test_handmade_ok(void)
{
    const parsed *p = parse_status("{\"authenticated\":true," GOOD_USER "}");
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    identity_view view;
    CHECK_EQ_INT(identity_view_parse(p->packed, p->packed_len, &view), 0);
    CHECK_STRN(view.username.ptr, view.username.len, "system:serviceaccount:ns:sa");
    CHECK_STRN(view.uid.ptr, view.uid.len, "u-1");
    char joined[64];
    CHECK_EQ_INT(identity_join_groups(&view, joined, sizeof(joined)), 5);
    CHECK_STR(joined, "g1|g2");

    /* A '|' inside a group name, or an empty name, has no unambiguous joined form. */
    p = parse_status(
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"groups\":[\"dev|system:masters\",\"g2\"]}}");
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    CHECK_EQ_INT(identity_view_parse(p->packed, p->packed_len, &view), 0);
    CHECK_EQ_INT(identity_join_groups(&view, joined, sizeof(joined)), -2);
    p = parse_status("{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"groups\":[\"g1\",\"\"]}}");
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    CHECK_EQ_INT(identity_view_parse(p->packed, p->packed_len, &view), 0);
    CHECK_EQ_INT(identity_join_groups(&view, joined, sizeof(joined)), -2);

    /* No uid, no groups, no extra: a valid, minimal identity. */
    p = parse_status("{\"authenticated\":true,\"user\":{\"username\":\"alice\"}}");
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    CHECK_EQ_INT(identity_view_parse(p->packed, p->packed_len, &view), 0);
    CHECK_STRN(view.username.ptr, view.username.len, "alice");
    CHECK_EQ_INT(view.uid.len, 0);
    CHECK_EQ_INT(view.n_groups, 0);
    CHECK_EQ_INT(view.n_extra, 0);
    CHECK_EQ_INT(identity_join_groups(&view, joined, sizeof(joined)), 0);
    CHECK_STR(joined, "");

    /* kube-apiserver omits "authenticated" when false; false and absent both mean no. */
    p = parse_status("{\"authenticated\":false}");
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
    CHECK(p->reason[0] != '\0');
    p = parse_status("{\"user\":{}}");
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
    p = parse_status("{}");
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
    p = parse_status("{\"authenticated\":false,\"error\":\"nope\"," GOOD_USER "}");
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
    CHECK_STR(p->reason, "nope");

    /* Requested audiences with no status.audiences at all: not accepted. */
    const char *const auds[] = {"a"};
    char body[1024];
    snprintf(body, sizeof(body), "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,%s}}", GOOD_USER);
    p = parse(body, strlen(body), auds, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
    snprintf(body, sizeof(body), "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"audiences\":[],%s}}",
             GOOD_USER);
    p = parse(body, strlen(body), auds, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNAUTHENTICATED);
    snprintf(body, sizeof(body),
             "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"audiences\":[\"b\",\"a\"],%s}}",
             GOOD_USER);
    p = parse(body, strlen(body), auds, 1);
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
}

/* Hostile or broken answers: never AUTHENTICATED, never UNAUTHENTICATED (which would be
 * cached as a verdict): BAD_RESPONSE. */
static void expect_bad(const parsed *p, const char *what)
{
    CHECK_EQ_INT(p->result, TOKENREVIEW_BAD_RESPONSE);
    if (p->result != TOKENREVIEW_BAD_RESPONSE) fprintf(stderr, "    accepted: %s\n", what);
    CHECK(p->reason[0] != '\0');
}

static void expect_unrepresentable(const parsed *p, const char *what)
{
    CHECK_EQ_INT(p->result, TOKENREVIEW_UNREPRESENTABLE);
    if (p->result != TOKENREVIEW_UNREPRESENTABLE) fprintf(stderr, "    not refused as unrepresentable: %s\n", what);
    CHECK(p->reason[0] != '\0');
}

static void test_handmade_hostile(void)
{
    static const char *const statuses[] = {
        "{\"authenticated\":\"true\"," GOOD_USER "}",
        "{\"authenticated\":1," GOOD_USER "}",
        "{\"authenticated\":[true]," GOOD_USER "}",
        "{\"authenticated\":true}", /* no user */
        "{\"authenticated\":true,\"user\":null}",
        "{\"authenticated\":true,\"user\":[]}",
        "{\"authenticated\":true,\"user\":\"alice\"}",
        "{\"authenticated\":true,\"user\":{}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"\"}}",
        "{\"authenticated\":true,\"user\":{\"username\":null}}",
        "{\"authenticated\":true,\"user\":{\"username\":42}}",
        "{\"authenticated\":true,\"user\":{\"username\":[\"alice\"]}}",
        "{\"authenticated\":true,\"user\":{\"uid\":\"u\",\"groups\":[]}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"uid\":7}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"groups\":\"g1\"}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"groups\":{\"a\":\"b\"}}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"groups\":[\"g1\",2]}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"groups\":[null]}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"extra\":[]}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"extra\":{\"k\":\"v\"}}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"extra\":{\"k\":[1]}}}",
        "\"ok\"",
        "null",
        "[]",
        "true",
    };
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        expect_bad(parse_status(statuses[i]), statuses[i]);

    /* Authenticated and well-formed, but not representable (control characters would be
     * header injection): refused as unauthenticated — a verdict, cached — never allowed. */
    static const char *const unrepresentable[] = {
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\\r\\nX-Remote-Group: admin\"}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\\n\"}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"al\\u0001ice\"}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"al\\u007fice\"}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"al\\tice\"}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"uid\":\"u\\r\\n\"}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"groups\":[\"ok\",\"g\\r\\nX: y\"]}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"extra\":{\"k\":[\"v\\n\"]}}}",
        "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"extra\":{\"k\\r\\n\":[\"v\"]}}}",
    };
    for (size_t i = 0; i < sizeof(unrepresentable) / sizeof(unrepresentable[0]); i++)
        expect_unrepresentable(parse_status(unrepresentable[i]), unrepresentable[i]);

    static const char *const bodies[] = {
        "",
        "null",
        "true",
        "[]",
        "[{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true," GOOD_USER "}}]",
        "\"TokenReview\"",
        "{}", /* missing status */
        "{\"kind\":\"TokenReview\"}",
        "{\"kind\":\"TokenReview\",\"status\":null}",
        "{\"kind\":\"Status\",\"status\":{\"authenticated\":true," GOOD_USER "}}",
        "{\"kind\":42,\"status\":{\"authenticated\":true," GOOD_USER "}}",
        "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"authenticated\":true," GOOD_USER "}}",
        "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":false,\"authenticated\":true," GOOD_USER "}}",
        "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true," GOOD_USER "},"
        "\"status\":{\"authenticated\":true," GOOD_USER "}}",
        "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true," GOOD_USER "}",   /* truncated */
        "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true," GOOD_USER "}}x", /* trailing */
        "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true," GOOD_USER "}}{}",
        "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{\"username\":\"al\xff\"}}}",
        "Too many requests, please try again later.\n",
        "<html><body>502 Bad Gateway</body></html>",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) expect_bad(parse_str(bodies[i]), bodies[i]);

    /* A NUL inside the body (within body_len) is not a TokenReview either. */
    static const char with_nul[] = "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,"
                                   "\"user\":{\"username\":\"al\\u0000ice\"}}}";
    expect_bad(parse_str(with_nul), "\\u0000 in username");
    static const char raw_nul[] = "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,"
                                  "\"user\":{\"username\":\"alice\"}}}\0garbage";
    expect_bad(parse(raw_nul, sizeof(raw_nul) - 1, NULL, 0), "NUL then garbage within body_len");

    /* Each truncation of a real authenticated answer is rejected. */
    size_t len = 0;
    char *body = read_fixture("tokenreview-authenticated.body", &len);
    REQUIRE(body != NULL);
    while (len > 0 && (body[len - 1] == '\n' || body[len - 1] == ' ')) len--;
    int accepted = 0;
    for (size_t cut = 0; cut < len; cut++)
        if (parse(body, cut, NULL, 0)->result != TOKENREVIEW_BAD_RESPONSE) accepted++;
    CHECK_EQ_INT(accepted, 0);
    CHECK_EQ_INT(parse(body, len, NULL, 0)->result, TOKENREVIEW_AUTHENTICATED);
    free(body);
}

static void test_handmade_limits(void)
{
    static char status[65536];
    /* 4096 is the longest string an identity holds; 5000 is refused. */
    char *name = malloc(5001);
    REQUIRE(name != NULL);
    memset(name, 'u', 5000);
    name[5000] = '\0';
    snprintf(status, sizeof(status), "{\"authenticated\":true,\"user\":{\"username\":\"%s\"}}", name);
    expect_unrepresentable(parse_status(status), "5000-char username");
    name[IDENTITY_STRING_MAX] = '\0';
    snprintf(status, sizeof(status), "{\"authenticated\":true,\"user\":{\"username\":\"%s\"}}", name);
    const parsed *p = parse_status(status);
    CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
    name[IDENTITY_STRING_MAX] = 'u';
    name[IDENTITY_STRING_MAX + 1] = '\0';
    snprintf(status, sizeof(status), "{\"authenticated\":true,\"user\":{\"username\":\"%s\"}}", name);
    expect_unrepresentable(parse_status(status), "4097-char username");
    free(name);

    /* 300 groups refused; 256 accepted. */
    for (int n_groups = 256; n_groups <= 300; n_groups += 44) {
        size_t o = (size_t)snprintf(status, sizeof(status),
                                    "{\"authenticated\":true,\"user\":{\"username\":\"alice\",\"groups\":[");
        for (int i = 0; i < n_groups; i++)
            o += (size_t)snprintf(status + o, sizeof(status) - o, "%s\"g%d\"", i ? "," : "", i);
        snprintf(status + o, sizeof(status) - o, "]}}");
        p = parse_status(status);
        if (n_groups == 300) {
            expect_unrepresentable(p, "300 groups");
        } else {
            CHECK_EQ_INT(p->result, TOKENREVIEW_AUTHENTICATED);
            identity_view view;
            CHECK_EQ_INT(identity_view_parse(p->packed, p->packed_len, &view), 0);
            CHECK_EQ_INT(view.n_groups, 256);
        }
    }

    /* An identity larger than the caller's buffer: refused as unrepresentable, no overrun. */
    static const char body[] = "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true," GOOD_USER "}}";
    unsigned char small[24];
    memset(small, 0xCC, sizeof(small));
    size_t packed_len = 999;
    char reason[128] = "";
    CHECK_EQ_INT(
        tokenreview_parse_response(body, strlen(body), NULL, 0, small, 16, &packed_len, reason, sizeof(reason)),
        TOKENREVIEW_UNREPRESENTABLE);
    for (size_t i = 16; i < sizeof(small); i++) CHECK_EQ_INT(small[i], 0xCC);
    CHECK(reason[0] != '\0');
}

/* ---- identity ---- */

static str_view sv(const char *s)
{
    str_view v = {s, strlen(s)};
    return v;
}

static void test_identity_serviceaccount(void)
{
    str_view ns = {NULL, 0}, name = {NULL, 0};
    CHECK(identity_serviceaccount(sv("system:serviceaccount:team-a:webhook-sender"), &ns, &name));
    CHECK_STRN(ns.ptr, ns.len, "team-a");
    CHECK_STRN(name.ptr, name.len, "webhook-sender");
    CHECK(identity_serviceaccount(sv("system:serviceaccount:a:b"), &ns, &name));
    CHECK_STRN(ns.ptr, ns.len, "a");
    CHECK_STRN(name.ptr, name.len, "b");

    static const char *const no[] = {
        "team-a:webhook-sender", /* no prefix */
        "alice",
        "system:serviceaccounts:team-a",         /* a group, not a user */
        "system:serviceaccount:team-a:",         /* missing name */
        "system:serviceaccount:team-a",          /* missing name and colon */
        "system:serviceaccount::webhook-sender", /* empty namespace */
        "system:serviceaccount:",
        "system:serviceaccount::",
        "system:serviceaccount:team-a:webhook:sender", /* extra colon */
        "system:serviceaccount:team-a:webhook-sender:",
        "System:ServiceAccount:team-a:webhook-sender",
        "xsystem:serviceaccount:team-a:webhook-sender",
        "",
    };
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        str_view n2 = {"untouched", 9}, m2 = {"untouched", 9};
        bool ok = identity_serviceaccount(sv(no[i]), &n2, &m2);
        CHECK(!ok);
        if (ok) fprintf(stderr, "    accepted \"%s\"\n", no[i]);
    }

    /* The length is honoured: the view need not be NUL-terminated. */
    const char *buf = "system:serviceaccount:ns:name:trailing";
    str_view cut = {buf, strlen("system:serviceaccount:ns:name")};
    CHECK(identity_serviceaccount(cut, &ns, &name));
    CHECK_STRN(ns.ptr, ns.len, "ns");
    CHECK_STRN(name.ptr, name.len, "name");
}

static void test_identity_builder_and_view(void)
{
    unsigned char buf[128];
    identity_builder b;
    identity_builder_init(&b, buf, sizeof(buf));
    identity_builder_string(&b, "bob", 3);
    identity_builder_string(&b, "", 0);
    identity_builder_count(&b, 2);
    identity_builder_string(&b, "a", 1);
    identity_builder_string(&b, "bc", 2);
    identity_builder_count(&b, 1);
    identity_builder_string(&b, "k", 1);
    identity_builder_count(&b, 2);
    identity_builder_string(&b, "v1", 2);
    identity_builder_string(&b, "v2", 2);
    CHECK(!b.failed);
    static const unsigned char want[] = {3, 0, 'b', 'o', 'b', 0, 0, 2, 0, 1,   0,   'a', 2, 0,   'b', 'c',
                                         1, 0, 1,   0,   'k', 2, 0, 2, 0, 'v', '1', 2,   0, 'v', '2'};
    CHECK_EQ_INT(b.len, sizeof(want));
    CHECK_MEM(buf, want, sizeof(want));
    identity_view view;
    CHECK_EQ_INT(identity_view_parse(buf, b.len, &view), 0);
    CHECK_EQ_INT(view.n_groups, 2);
    CHECK_EQ_INT(view.n_extra, 1);
    char joined[8];
    CHECK_EQ_INT(identity_join_groups(&view, joined, sizeof(joined)), 4);
    CHECK_STR(joined, "a|bc");
    /* Every strict prefix and any trailing byte is malformed. */
    int accepted = 0;
    for (size_t n = 0; n < b.len; n++) accepted += identity_view_parse(buf, n, &view) == 0;
    CHECK_EQ_INT(accepted, 0);
    CHECK_EQ_INT(identity_view_parse(buf, b.len + 1, &view), -1);

    /* Failures stick. */
    identity_builder_init(&b, buf, sizeof(buf));
    identity_builder_string(&b, "a\nb", 3);
    CHECK(b.failed);
    identity_builder_string(&b, "ok", 2);
    CHECK(b.failed);
    identity_builder_init(&b, buf, 4);
    identity_builder_string(&b, "abc", 3); /* needs 5 bytes */
    CHECK(b.failed);
    identity_builder_init(&b, buf, sizeof(buf));
    identity_builder_count(&b, IDENTITY_LIST_MAX + 1);
    CHECK(b.failed);
}

/* Well-known strings are stored as 2-byte codes and read back as themselves; an unknown
 * code is refused by identity_view_parse. */
static void test_identity_well_known_strings(void)
{
    unsigned char buf[512];
    identity_builder b;
    identity_builder_init(&b, buf, sizeof(buf));
    identity_builder_string(&b, "system:serviceaccount:ns:app", 28);
    identity_builder_string(&b, "u-1", 3);
    identity_builder_count(&b, 3);
    identity_builder_string(&b, "system:serviceaccounts", 22);
    identity_builder_string(&b, "system:serviceaccounts:ns", 25);
    identity_builder_string(&b, "system:authenticated", 20);
    identity_builder_count(&b, 1);
    identity_builder_string(&b, "authentication.kubernetes.io/pod-uid", 36);
    identity_builder_count(&b, 1);
    identity_builder_string(&b, "pod-uid-1", 9);
    CHECK(!b.failed);
    /* 2+28 2+3 2 | 2 2+25 2 | 2 2 2 2+9 */
    CHECK_EQ_INT((int)b.len, 30 + 5 + 2 + 2 + 27 + 2 + 2 + 2 + 2 + 11);
    identity_view v;
    CHECK_EQ_INT(identity_view_parse(buf, b.len, &v), 0);
    const unsigned char *pos = v.groups;
    str_view s;
    identity_read_string(&pos, &s);
    CHECK(s.len == 22 && memcmp(s.ptr, "system:serviceaccounts", 22) == 0);
    identity_read_string(&pos, &s);
    CHECK(s.len == 25 && memcmp(s.ptr, "system:serviceaccounts:ns", 25) == 0);
    identity_read_string(&pos, &s);
    CHECK(s.len == 20 && memcmp(s.ptr, "system:authenticated", 20) == 0);
    char groups[128];
    CHECK_EQ_INT((int)identity_join_groups(&v, groups, sizeof(groups)), 69);
    CHECK_STR(groups, "system:serviceaccounts|system:serviceaccounts:ns|system:authenticated");
    pos = v.extra;
    identity_read_string(&pos, &s);
    CHECK(s.len == 36 && memcmp(s.ptr, "authentication.kubernetes.io/pod-uid", 36) == 0);
    CHECK_EQ_INT((int)identity_read_count(&pos), 1);
    identity_read_string(&pos, &s);
    CHECK(s.len == 9 && memcmp(s.ptr, "pod-uid-1", 9) == 0);
    /* Exactly enough room for a well-known string's code is enough. */
    unsigned char two[2];
    identity_builder_init(&b, two, sizeof(two));
    identity_builder_string(&b, "system:authenticated", 20);
    CHECK(!b.failed);
    CHECK_EQ_INT((int)b.len, 2);
    identity_builder_string(&b, "", 0);
    CHECK(b.failed); /* no room left for even a length */
    /* A code past the table is malformed. */
    unsigned char bad[] = {0xff, 0x80, 0, 0, 0, 0, 0, 0};
    CHECK_EQ_INT(identity_view_parse(bad, sizeof(bad), &v), -1);
}

int main(void)
{
    RUN(test_identity_well_known_strings);
    RUN(test_request_body_no_audiences);
    RUN(test_request_body_audiences);
    RUN(test_request_body_audience_not_utf8);
    RUN(test_fixture_authenticated);
    RUN(test_fixture_pod_bound);
    RUN(test_fixture_unauthenticated);
    RUN(test_fixture_audience_match);
    RUN(test_fixture_not_tokenreviews);
    RUN(test_every_body_fixture_is_covered);
    RUN(test_handmade_ok);
    RUN(test_handmade_hostile);
    RUN(test_handmade_limits);
    RUN(test_identity_serviceaccount);
    RUN(test_identity_builder_and_view);
    return UNIT_EXIT();
}
