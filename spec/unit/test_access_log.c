/* Unit tests: the decision log's line format, escaping, bounds, sampling and writing
 * (core/access_log.h). Every line written is parsed back with jansson. */
#include "access_log.h"
#include "unit.h"

#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct temp_log {
    char path[64];
    access_log *log;
} temp_log;

static void temp_log_open(temp_log *t, double sample_allowed)
{
    snprintf(t->path, sizeof(t->path), "/tmp/tokengate-unit-alog-XXXXXX");
    int fd = mkstemp(t->path);
    REQUIRE(fd >= 0);
    close(fd);
    char err[256];
    t->log = access_log_open(t->path, sample_allowed, err, sizeof(err));
    REQUIRE(t->log != NULL);
}

/* Reads the file's lines into out (at most max); returns how many. */
static size_t read_lines(const char *path, json_t **out, size_t max, size_t *longest)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    *longest = 0;
    while ((len = getline(&line, &cap, f)) > 0 && n < max) {
        if ((size_t)len > *longest) *longest = (size_t)len;
        json_error_t error;
        out[n] = json_loadb(line, (size_t)len, 0, &error);
        CHECK(out[n] != NULL);
        if (!out[n])
            fprintf(stderr, "    not JSON: %s (%s)\n", line, error.text);
        else
            n++;
    }
    free(line);
    fclose(f);
    return n;
}

static const char *str(json_t *doc, const char *key)
{
    return json_string_value(json_object_get(doc, key));
}

static void test_fields_and_escaping(void)
{
    temp_log t;
    temp_log_open(&t, 1);
    access_log_buffer *buf = malloc(sizeof(*buf));
    REQUIRE(buf != NULL);
    access_log_buffer_init(buf, 42);

    static const char hostile_path[] = "/a\"b\\c\n\x01\x7f\xff\xc3\xa9/d";
    access_log_entry e = {
        .method = "GET",
        .path = hostile_path,
        .path_len = sizeof(hostile_path) - 1,
        .status = 403,
        .user = "system:serviceaccount:team-a:app",
        .user_len = 32,
        .uid = "uid-1",
        .uid_len = 5,
        .namespace_name = "team-a",
        .namespace_len = 6,
        .source = DECISION_POLICY,
        .reason = "forbidden: \"no\"",
        .latency_s = 0.0012345,
        .cache_hit = 1,
        .policy_sha256 = "abc123",
    };
    access_log_add(t.log, buf, &e);

    /* Oversized fields are cut, and the line stays bounded and valid. */
    size_t big = 20000;
    char *long_path = malloc(big);
    REQUIRE(long_path != NULL);
    for (size_t i = 0; i < big; i++) long_path[i] = i % 7 ? 'p' : '\xff';
    access_log_entry huge = {.method = "POST",
                             .path = long_path,
                             .path_len = big,
                             .status = 200,
                             .user = long_path,
                             .user_len = big,
                             .uid = long_path,
                             .uid_len = big,
                             .namespace_name = long_path,
                             .namespace_len = big,
                             .source = DECISION_CACHE,
                             .reason = NULL,
                             .latency_s = 2.5,
                             .cache_hit = -1,
                             .policy_sha256 = NULL};
    huge.reason = NULL;
    access_log_add(t.log, buf, &huge);
    access_log_entry anonymous = {.method = "HEAD",
                                  .path = "/x",
                                  .path_len = 2,
                                  .status = 401,
                                  .source = DECISION_ANONYMOUS,
                                  .reason = "no bearer token",
                                  .cache_hit = -1};
    access_log_add(t.log, buf, &anonymous);
    access_log_flush(t.log, buf);
    CHECK_EQ_INT(buf->written, 3);
    CHECK_EQ_INT(buf->dropped, 0);
    CHECK_EQ_INT(buf->len, 0);

    json_t *lines[4] = {0};
    size_t longest = 0;
    size_t n = read_lines(t.path, lines, 4, &longest);
    CHECK_EQ_INT(n, 3);
    CHECK(longest <= ACCESS_LOG_LINE_MAX);
    if (n == 3) {
        /* Decoded, the escapes give the original bytes back (the non-ASCII ones as U+00XX). */
        CHECK_STR(str(lines[0], "path"), "/a\"b\\c\n\x01\x7f\xc3\xbf\xc3\x83\xc2\xa9/d");
        CHECK_EQ_INT(json_integer_value(json_object_get(lines[0], "status")), 403);
        CHECK_STR(str(lines[0], "source"), "policy");
        CHECK_STR(str(lines[0], "reason"), "forbidden: \"no\"");
        CHECK_STR(str(lines[0], "namespace"), "team-a");
        CHECK(json_is_true(json_object_get(lines[0], "cache_hit")));
        double latency = json_real_value(json_object_get(lines[0], "latency_ms"));
        CHECK(latency > 1.233 && latency < 1.236);
        CHECK(strlen(str(lines[0], "time")) == 24);

        const char *cut = str(lines[1], "path");
        CHECK(cut && strlen(cut) < 1024 && strcmp(cut + strlen(cut) - 3, "...") == 0);
        CHECK(json_is_null(json_object_get(lines[1], "cache_hit")));
        CHECK(json_is_null(json_object_get(lines[1], "reason")));
        CHECK(json_is_null(json_object_get(lines[1], "policy_sha256")));
        CHECK(json_real_value(json_object_get(lines[1], "latency_ms")) == 2500.0);

        CHECK(json_is_null(json_object_get(lines[2], "user")));
        CHECK_STR(str(lines[2], "source"), "anonymous");
    }
    for (size_t i = 0; i < n; i++) json_decref(lines[i]);
    free(long_path);
    free(buf);
    access_log_free(t.log);
    unlink(t.path);
}

/* Sampling drops allowed answers only; a full buffer is written in whole lines. */
static void test_sampling_and_buffering(void)
{
    temp_log t;
    temp_log_open(&t, 0.25);
    access_log_buffer *buf = malloc(sizeof(*buf));
    REQUIRE(buf != NULL);
    access_log_buffer_init(buf, 7);
    access_log_entry allowed = {
        .method = "GET", .path = "/ok", .path_len = 3, .status = 200, .source = DECISION_CACHE, .cache_hit = 1};
    access_log_entry denied = {.method = "GET",
                               .path = "/no",
                               .path_len = 3,
                               .status = 403,
                               .source = DECISION_CACHE,
                               .reason = "forbidden",
                               .cache_hit = 1};
    for (int i = 0; i < 4000; i++) access_log_add(t.log, buf, &allowed);
    for (int i = 0; i < 500; i++) access_log_add(t.log, buf, &denied);
    access_log_flush(t.log, buf);
    uint64_t kept_allowed = 4000 - buf->sampled_out;
    CHECK(kept_allowed > 800 && kept_allowed < 1200); /* about a quarter */
    CHECK_EQ_INT(buf->written, kept_allowed + 500);

    json_t **lines = calloc(6000, sizeof(*lines));
    REQUIRE(lines != NULL);
    size_t longest = 0;
    size_t n = read_lines(t.path, lines, 6000, &longest);
    CHECK_EQ_INT(n, kept_allowed + 500);
    size_t denials = 0;
    for (size_t i = 0; i < n; i++) {
        denials += json_integer_value(json_object_get(lines[i], "status")) == 403;
        json_decref(lines[i]);
    }
    CHECK_EQ_INT(denials, 500);
    free(lines);
    free(buf);
    access_log_free(t.log);
    unlink(t.path);
}

static void test_open_errors(void)
{
    char err[256];
    CHECK(access_log_open("/nonexistent-dir/tokengate/x.log", 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "/nonexistent-dir/tokengate/x.log") != NULL);
    CHECK(access_log_open("stdout", 1.5, err, sizeof(err)) == NULL);
    CHECK(access_log_open("stdout", -0.1, err, sizeof(err)) == NULL);
    access_log *out = access_log_open("stdout", 0, err, sizeof(err));
    CHECK(out != NULL);
    CHECK_EQ_INT(access_log_reopen(out, err, sizeof(err)), 0); /* stdout: nothing to reopen */
    access_log_free(out);
}

int main(void)
{
    RUN(test_fields_and_escaping);
    RUN(test_sampling_and_buffering);
    RUN(test_open_errors);
    return UNIT_EXIT();
}
