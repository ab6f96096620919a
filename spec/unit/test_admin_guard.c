/* Unit tests: the admin listener's Host and cross-site checks (core/admin_guard.h). */
#include "admin_guard.h"
#include "unit.h"

static void test_host(void)
{
    const char *listen = "127.0.0.1:9090";
    CHECK(admin_host_allowed("127.0.0.1:9090", listen, NULL));
    CHECK(admin_host_allowed("10.2.3.4:9090", listen, NULL)); /* kubelet and Prometheus use the pod IP */
    CHECK(admin_host_allowed("[::1]:9090", listen, NULL));
    CHECK(admin_host_allowed("localhost:9090", listen, NULL));
    CHECK(admin_host_allowed("LOCALHOST.", listen, NULL));
    CHECK(admin_host_allowed(NULL, listen, NULL)); /* HTTP/1.0: no browser */
    CHECK(!admin_host_allowed("evil.example:9090", listen, NULL));
    CHECK(!admin_host_allowed("localhost.evil.example", listen, NULL));
    CHECK(!admin_host_allowed("127.0.0.1.nip.io:9090", listen, NULL));
    CHECK(!admin_host_allowed("[::1", listen, NULL));
    CHECK(!admin_host_allowed("", listen, NULL));
    CHECK(!admin_host_allowed(":9090", listen, NULL));
    CHECK(admin_host_allowed("tokengate-admin:9090", "tokengate-admin:9090", NULL));
    CHECK(admin_host_allowed("metrics.internal", listen, "a.example, metrics.internal"));
    CHECK(!admin_host_allowed("metrics.internal.evil", listen, "a.example, metrics.internal"));
    CHECK(admin_host_allowed("anything.example", listen, "*"));
}

static void test_cross_site(void)
{
    /* curl, Prometheus, kubelet: no Origin, no Sec-Fetch-Site. */
    CHECK(admin_cross_site_violation(true, "127.0.0.1:9090", NULL, NULL, NULL, 0) == NULL);
    CHECK(admin_cross_site_violation(true, "127.0.0.1:9090", NULL, NULL, "application/x-www-form-urlencoded", 0) ==
          NULL);
    CHECK(admin_cross_site_violation(true, "127.0.0.1:9090", NULL, NULL, "application/json", 2) == NULL);
    CHECK(admin_cross_site_violation(false, "127.0.0.1:9090", "http://127.0.0.1:9090", "same-origin", NULL, 0) == NULL);
    CHECK(admin_cross_site_violation(false, "h", NULL, "none", NULL, 0) == NULL);
    /* The request: a page on evil.example posting text/plain. */
    CHECK(admin_cross_site_violation(true, "127.0.0.1:9090", "http://evil.example", NULL, "text/plain", 0) != NULL);
    CHECK(admin_cross_site_violation(true, "127.0.0.1:9090", "null", NULL, NULL, 0) != NULL);
    CHECK(admin_cross_site_violation(true, "127.0.0.1:9090", "http://127.0.0.1:9091", NULL, NULL, 0) != NULL);
    CHECK(admin_cross_site_violation(true, NULL, "http://127.0.0.1:9090", NULL, NULL, 0) != NULL);
    CHECK(admin_cross_site_violation(false, "h", NULL, "cross-site", NULL, 0) != NULL);
    CHECK(admin_cross_site_violation(false, "h", NULL, "same-site", NULL, 0) != NULL);
    /* Bodies a browser sends cross-site without a preflight, even with no Origin. */
    CHECK(admin_cross_site_violation(true, "h", NULL, NULL, "text/plain", 0) != NULL);
    CHECK(admin_cross_site_violation(true, "h", NULL, NULL, "Text/Plain; charset=utf-8", 0) != NULL);
    CHECK(admin_cross_site_violation(true, "h", NULL, NULL, "multipart/form-data; boundary=x", 0) != NULL);
    CHECK(admin_cross_site_violation(true, "h", NULL, NULL, "application/x-www-form-urlencoded", 3) != NULL);
    CHECK(admin_cross_site_violation(false, "h", NULL, NULL, "text/plain", 0) == NULL); /* GET: no state change */
}

static void test_loopback(void)
{
    CHECK(admin_listen_is_loopback("127.0.0.1:9090"));
    CHECK(admin_listen_is_loopback("127.1.2.3:9090"));
    CHECK(admin_listen_is_loopback("localhost:9090"));
    CHECK(admin_listen_is_loopback("[::1]:9090"));
    CHECK(!admin_listen_is_loopback("0.0.0.0:9090"));
    CHECK(!admin_listen_is_loopback("[::]:9090"));
    CHECK(!admin_listen_is_loopback("10.0.0.5:9090"));
    CHECK(!admin_listen_is_loopback(":9090"));
}

int main(void)
{
    RUN(test_host);
    RUN(test_cross_site);
    RUN(test_loopback);
    return UNIT_EXIT();
}
