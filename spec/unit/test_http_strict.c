/* Unit tests: HTTP/1.1 framing and header syntax evhttp lets through (core/http_strict.h). */
#include "http_strict.h"
#include "unit.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

/* Builds a header list from "Name", "value" pairs (NULL-ended) and checks it as HTTP/1.minor. */
static const char *check(int minor, const char *const *fields)
{
    struct evkeyvalq h;
    TAILQ_INIT(&h);
    for (; fields[0]; fields += 2) evhttp_add_header(&h, fields[0], fields[1]);
    const char *why = http_strict_headers_violation(&h, 1, minor);
    evhttp_clear_headers(&h);
    return why;
}

#define EXPECT_OK(minor, ...)                                                                                          \
    do {                                                                                                               \
        const char *const f_[] = {__VA_ARGS__, NULL};                                                                  \
        const char *why_ = check(minor, f_);                                                                           \
        CHECK(why_ == NULL);                                                                                           \
        if (why_) fprintf(stderr, "    refused: %s\n", why_);                                                          \
    } while (0)

#define EXPECT_REFUSED(minor, ...)                                                                                     \
    do {                                                                                                               \
        const char *const f_[] = {__VA_ARGS__, NULL};                                                                  \
        CHECK(check(minor, f_) != NULL);                                                                               \
    } while (0)

static void test_ordinary_requests_pass(void)
{
    EXPECT_OK(1, "Host", "app.example");
    EXPECT_OK(1, "Host", "app.example:8080", "Content-Length", "5", "Content-Type", "text/plain");
    EXPECT_OK(1, "Host", "[::1]:9090", "Transfer-Encoding", "chunked");
    EXPECT_OK(1, "Host", "10.0.0.1", "Transfer-Encoding", "Chunked", "User-Agent", "x\ty");
    EXPECT_OK(1, "Host", "h", "Content-Length", "0", "X-Obs", "caf\xc3\xa9");
    EXPECT_OK(0, "Content-Length", "3"); /* HTTP/1.0 needs no Host */
}

static void test_framing_refused(void)
{
    EXPECT_REFUSED(1, "Host", "h", "Content-Length", "5", "Content-Length", "6");
    EXPECT_REFUSED(1, "Host", "h", "Content-Length", "5", "Content-Length", "5");
    EXPECT_REFUSED(1, "Host", "h", "Content-Length", "+5");
    EXPECT_REFUSED(1, "Host", "h", "Content-Length", "-1");
    EXPECT_REFUSED(1, "Host", "h", "Content-Length", "5 5");
    EXPECT_REFUSED(1, "Host", "h", "Content-Length", "0x10");
    EXPECT_REFUSED(1, "Host", "h", "Content-Length", "");
    EXPECT_REFUSED(1, "Host", "h", "Content-Length", "1234567890123456789");
    EXPECT_REFUSED(1, "Host", "h", "Transfer-Encoding", "xchunked");
    EXPECT_REFUSED(1, "Host", "h", "Transfer-Encoding", "gzip, chunked");
    EXPECT_REFUSED(1, "Host", "h", "Transfer-Encoding", "chunked", "Transfer-Encoding", "chunked");
    EXPECT_REFUSED(1, "Host", "h", "Transfer-Encoding", "chunked", "Content-Length", "5");
    EXPECT_REFUSED(0, "Transfer-Encoding", "chunked");
}

static void test_host_refused(void)
{
    EXPECT_REFUSED(1, "Accept", "*/*");
    EXPECT_REFUSED(1, "Host", "a", "Host", "b");
    EXPECT_REFUSED(0, "Host", "a", "Host", "a");
    EXPECT_REFUSED(1, "Host", "a b");
    EXPECT_REFUSED(1, "Host", "evil.example/x");
    EXPECT_REFUSED(1, "Host", "a\\b");
    EXPECT_REFUSED(1, "Host", "user@h");
}

static void test_syntax_refused(void)
{
    EXPECT_REFUSED(1, "Host", "h", "Authorization ", "Bearer x"); /* space before the colon */
    EXPECT_REFUSED(1, "Host", "h", "Author ization", "Bearer x");
    EXPECT_REFUSED(1, "Host", "h", "X-A\x01", "v");
    EXPECT_REFUSED(1, "Host", "h", "", "v");
    EXPECT_REFUSED(1, "Host", "h", "X-A",
                   "a\x01"
                   "b");
    EXPECT_REFUSED(1, "Host", "h", "X-A", "a\x7f");
    EXPECT_REFUSED(1, "Host", "h", "X-A", "a\x1b[31m");
}

/* The bit masks behind the checks equal their definitions, for every byte. */
static void test_character_classes_match_their_definitions(void)
{
    for (int c = 0; c < 256; c++) {
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        bool tchar = c != 0 && (alnum || strchr("!#$%&'*+-.^_`|~", c) != NULL);
        bool host = c != 0 && (alnum || strchr("-._~:[]!$&'()*+,;=%", c) != NULL);
        CHECK(http_strict_token_char((unsigned char)c) == tchar);
        CHECK(http_strict_host_char((unsigned char)c) == host);
    }
    /* Field values: every byte but the controls (TAB allowed), each tried in a value. */
    for (int c = 1; c < 256; c++) {
        if (c == '\r' || c == '\n') continue; /* evhttp_add_header refuses to store these */
        char value[4] = {'a', (char)c, 'b', '\0'};
        const char *const f[] = {"Host", "app.example", "X-Value", value, NULL};
        bool control = (c < 0x20 && c != '\t') || c == 0x7f;
        CHECK((check(1, f) == NULL) == !control);
    }
    /* Through the public checks too: a name with a byte >= 128 and a host with one. */
    EXPECT_REFUSED(1, "Host", "app.example", "X-Caf\xc3\xa9", "1");
    EXPECT_REFUSED(1, "Host", "caf\xc3\xa9.example");
    EXPECT_OK(1, "Host", "a-b.c_d~e:1", "X-A!#$%&'*+-.^_`|~9", "v");
}

int main(void)
{
    RUN(test_ordinary_requests_pass);
    RUN(test_framing_refused);
    RUN(test_host_refused);
    RUN(test_syntax_refused);
    RUN(test_character_classes_match_their_definitions);
    return UNIT_EXIT();
}
