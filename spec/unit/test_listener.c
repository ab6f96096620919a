/* Unit tests: the one host:port parser behind --listen and --admin-listen
 * (core/listener.h listen_address_split), on the forms operators write and the ones it
 * must refuse. */
#include "listener.h"
#include "unit.h"

static void check_split(const char *hostport, const char *want_host, long want_port)
{
    char host[64] = "unchanged";
    long port = -1;
    CHECK_EQ_INT(listen_address_split(hostport, host, sizeof(host), &port), 0);
    CHECK_STR(host, want_host);
    CHECK_EQ_INT(port, want_port);
}

static void test_accepted(void)
{
    check_split("0.0.0.0:8080", "0.0.0.0", 8080);
    check_split("127.0.0.1:9090", "127.0.0.1", 9090);
    check_split("localhost:1", "localhost", 1);
    check_split("[::1]:9090", "::1", 9090); /* brackets removed for getaddrinfo */
    check_split("[::]:65535", "::", 65535);
    check_split(":8080", "", 8080);             /* every address */
    check_split("127.0.0.1:0", "127.0.0.1", 0); /* the kernel picks the port */
}

static void test_refused(void)
{
    static const char *const bad[] = {
        "8080",                              /* no colon */
        "localhost",                         /* no colon */
        "127.0.0.1:",                        /* no port */
        "127.0.0.1:80x",                     /* trailing garbage */
        "127.0.0.1:65536",                   /* out of range */
        "127.0.0.1:-1",                      /* negative */
        "127.0.0.1:99999999999999999999999", /* overflows long */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char host[64];
        long port;
        CHECK_EQ_INT(listen_address_split(bad[i], host, sizeof(host), &port), -1);
    }
    /* A host longer than the caller's buffer is refused, not cut. */
    char small[4];
    long port;
    CHECK_EQ_INT(listen_address_split("abcd:80", small, sizeof(small), &port), -1);
    CHECK_EQ_INT(listen_address_split("abc:80", small, sizeof(small), &port), 0);
    CHECK_STR(small, "abc");
}

int main(void)
{
    RUN(test_accepted);
    RUN(test_refused);
    return UNIT_EXIT();
}
