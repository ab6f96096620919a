/* Unit tests: the request-target check shared by authz and proxy mode (core/request_target.h). */
#include "request_target.h"
#include "unit.h"

static target_verdict check(const char *target)
{
    const char *why = NULL;
    target_verdict v = request_target_check(target, strlen(target), &why);
    if (v != TARGET_OK) CHECK(why != NULL);
    return v;
}

static void expect(const char *target, target_verdict expected)
{
    target_verdict v = check(target);
    CHECK_EQ_INT(v, expected);
    if (v != expected) fprintf(stderr, "    target: \"%s\"\n", target);
}

static void test_ordinary_targets_pass(void)
{
    expect("/", TARGET_OK);
    expect("/hooks/deliver", TARGET_OK);
    expect("/hooks/", TARGET_OK); /* a trailing slash is an ordinary path */
    expect("/api/v1.2/x..y", TARGET_OK);
    expect("/a/.hidden/b", TARGET_OK);
    expect("/a/...", TARGET_OK);
    expect("/files/na%C3%AFve", TARGET_OK);   /* U+00EF */
    expect("/files/%E2%82%AC", TARGET_OK);    /* U+20AC */
    expect("/files/%F0%9F%98%80", TARGET_OK); /* U+1F600 */
    expect("/files/a%20b", TARGET_OK);        /* an encoded space is data */
    expect("/files/100%25", TARGET_OK);       /* an encoded '%' not followed by hex */
    expect("/x:y@z!$&'()*+,=~_-", TARGET_OK);
    expect("/search?q=a/../b&x=%2e%2e;y|z[]", TARGET_OK); /* the query is not a path */
    expect("/p?", TARGET_OK);
}

/* Every traversal of the issue: each would reach /admin on some server. */
static void test_traversals_are_403(void)
{
    expect("/hooks/../admin", TARGET_TRAVERSAL);
    expect("/hooks/./admin", TARGET_TRAVERSAL);
    expect("/hooks/..", TARGET_TRAVERSAL);
    expect("/hooks//admin", TARGET_TRAVERSAL);
    expect("//admin", TARGET_TRAVERSAL);
    expect("/hooks/..;/admin", TARGET_TRAVERSAL);
    expect("/hooks/x/..;foo/..;/admin", TARGET_TRAVERSAL);
    expect("/hooks/..%3b/admin", TARGET_TRAVERSAL);
    expect("/hooks/..%3B/admin", TARGET_TRAVERSAL);
    expect("/hooks/.;/admin", TARGET_TRAVERSAL);
    expect("/hooks;jsessionid=1/admin", TARGET_TRAVERSAL);
    expect("/hooks/%2e%2e/admin", TARGET_TRAVERSAL);
    expect("/hooks/%2E./admin", TARGET_TRAVERSAL);
    expect("/hooks%2fadmin", TARGET_TRAVERSAL);
    expect("/hooks%5cadmin", TARGET_TRAVERSAL);
    expect("/hooks\\..\\admin", TARGET_TRAVERSAL);
    expect("/hooks/%252e%252e/admin", TARGET_TRAVERSAL);
    expect("/hooks/%25%32%65", TARGET_TRAVERSAL); /* %25 then an escape: double encoding */
    expect("/hooks/%c0%ae%c0%ae/admin", TARGET_TRAVERSAL);
    expect("/hooks/%C0%AF", TARGET_TRAVERSAL);
    expect("/hooks/%e0%80%ae", TARGET_TRAVERSAL);
    expect("/hooks/%f0%80%80%ae", TARGET_TRAVERSAL);
}

static void test_malformed_targets_are_400(void)
{
    expect("", TARGET_MALFORMED);
    expect("hooks/x", TARGET_MALFORMED);
    expect("http://evil.example/x", TARGET_MALFORMED);
    expect("*", TARGET_MALFORMED);
    expect("/a b", TARGET_MALFORMED);
    expect("/a\tb", TARGET_MALFORMED);
    expect("/a\x01"
           "b",
           TARGET_MALFORMED);
    expect("/a\x7f", TARGET_MALFORMED);
    expect("/a\xff", TARGET_MALFORMED);
    expect("/caf\xc3\xa9", TARGET_MALFORMED); /* raw non-ASCII: must be encoded */
    expect("/a#frag", TARGET_MALFORMED);
    expect("/a\"b", TARGET_MALFORMED);
    expect("/a<b>", TARGET_MALFORMED);
    expect("/a|b", TARGET_MALFORMED);
    expect("/a%", TARGET_MALFORMED);
    expect("/a%2", TARGET_MALFORMED);
    expect("/a%zz", TARGET_MALFORMED);
    expect("/a%00b", TARGET_MALFORMED);
    expect("/a%0d%0aSet-Cookie:x", TARGET_MALFORMED);
    expect("/a%09", TARGET_MALFORMED);
    expect("/a%7F", TARGET_MALFORMED);
    expect("/a%80", TARGET_MALFORMED); /* a lone continuation byte */
    expect("/a%C3", TARGET_MALFORMED); /* truncated */
    expect("/a%C3x", TARGET_MALFORMED);
    expect("/a%C3%28", TARGET_MALFORMED);       /* not a continuation */
    expect("/a%ED%A0%80", TARGET_MALFORMED);    /* a UTF-16 surrogate */
    expect("/a%F4%90%80%80", TARGET_MALFORMED); /* beyond U+10FFFF */
    expect("/a%F5%80%80%80", TARGET_MALFORMED);
    expect("/a%FF", TARGET_MALFORMED);
    expect("/a?b c", TARGET_MALFORMED);
    expect("/a?b\x01", TARGET_MALFORMED);
    expect("/a?b\xff", TARGET_MALFORMED);
    expect("/a?b#c", TARGET_MALFORMED);
    /* A NUL inside the given length is refused, not read as the end. */
    const char with_nul[] = "/a\0/../admin";
    CHECK_EQ_INT(request_target_check(with_nul, sizeof(with_nul) - 1, NULL), TARGET_MALFORMED);
    CHECK_EQ_INT(request_target_check(NULL, 0, NULL), TARGET_MALFORMED);
}

static void test_url_split(void)
{
    const char *a, *t;
    size_t al, tl;
    const char *url = "https://app.example:8443/hooks/x?y=1";
    CHECK_EQ_INT(request_url_split(url, strlen(url), &a, &al, &t, &tl), 0);
    CHECK_STRN(a, al, "app.example:8443");
    CHECK_STRN(t, tl, "/hooks/x?y=1");
    url = "HTTP://[::1]/";
    CHECK_EQ_INT(request_url_split(url, strlen(url), &a, &al, &t, &tl), 0);
    CHECK_STRN(a, al, "[::1]");
    CHECK_STRN(t, tl, "/");
    const char *bad[] = {
        "/hooks/x",         "ftp://h/x",      "https://",      "https:///x",   "https://h", "https://h?x=/y",
        "https://user@h/x", "https://h%2f/x", "https://h x/y", "https://h#/x", "//h/x",     "https:/h/x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = request_url_split(bad[i], strlen(bad[i]), &a, &al, &t, &tl);
        CHECK_EQ_INT(rc, -1);
        if (rc != -1) fprintf(stderr, "    url: \"%s\"\n", bad[i]);
    }
}

static void test_method(void)
{
    CHECK(request_method_valid("GET", 3));
    CHECK(request_method_valid("PROPFIND", 8));
    CHECK(request_method_valid("VERSION-CONTROL", 15));
    CHECK(!request_method_valid("-GET", 4));
    CHECK(!request_method_valid("", 0));
    CHECK(!request_method_valid("get", 3));
    CHECK(!request_method_valid("GET ", 4));
    CHECK(!request_method_valid("GE\tT", 4));
    CHECK(!request_method_valid("ABCDEFGHIJKLMNOPQRSTU", 21));
    CHECK(!request_method_valid(NULL, 0));
}

int main(void)
{
    RUN(test_ordinary_targets_pass);
    RUN(test_traversals_are_403);
    RUN(test_malformed_targets_are_400);
    RUN(test_url_split);
    RUN(test_method);
    return UNIT_EXIT();
}
