/* Unit tests: flags, defaults, validation and --check output (core/config.h). */
#include "config.h"
#include "unit.h"

#include <stdlib.h>
#include <unistd.h>

#define ARGC(argv) ((int)(sizeof(argv) / sizeof((argv)[0])))

/* Captures what a config function writes to its FILE *. */
typedef struct capture {
    FILE *f;
    char *text;
    size_t len;
} capture;

static void capture_open(capture *c)
{
    c->text = NULL;
    c->len = 0;
    c->f = open_memstream(&c->text, &c->len);
}

/* Closes the stream; c->text stays valid (NUL-terminated) until capture_free. */
static const char *capture_close(capture *c)
{
    if (c->f) fclose(c->f);
    c->f = NULL;
    return c->text ? c->text : "";
}

static void capture_free(capture *c)
{
    free(c->text);
    c->text = NULL;
}

/* Parses argv and returns the action; errors are captured and returned in *errors. */
static config_action parse_args(config *cfg, int argc, char **argv, capture *errors)
{
    capture_open(errors);
    config_action a = config_parse(cfg, argc, argv, errors->f ? errors->f : stderr);
    capture_close(errors);
    return a;
}

static void test_defaults(void)
{
    config cfg;
    char *argv[] = {"tokengate"};
    capture err;
    CHECK_EQ_INT(parse_args(&cfg, ARGC(argv), argv, &err), CONFIG_RUN);
    CHECK_STR(err.text ? err.text : "", "");
    capture_free(&err);
    CHECK_STR(cfg.listen, "0.0.0.0:8080");
    CHECK_STR(cfg.admin_listen, "127.0.0.1:9090");
    CHECK_STR(cfg.mode, "authz");
    CHECK_EQ_INT(cfg.cache_ttl_ms, 2 * 60 * 1000);
    CHECK_EQ_INT(cfg.cache_negative_ttl_ms, 10 * 1000);
    /* docs/POLICIES.md: the same budget as the busted kit's default, and a 64 MiB state */
    CHECK_EQ_INT(cfg.policy_max_instructions, 1000000);
    CHECK_EQ_INT(cfg.policy_max_memory_bytes, 64 * 1024 * 1024);
    CHECK_EQ_INT(cfg.cache_max_ttl_ms, 10 * 60 * 1000);
    CHECK_EQ_INT(cfg.cache_max_entries, 10000);
    CHECK_EQ_INT(cfg.review_timeout_ms, 5000);
    CHECK_EQ_INT(cfg.max_token_bytes, 16384);
    CHECK(cfg.apiserver == NULL);
    CHECK(cfg.apiserver_ca == NULL);
    CHECK(cfg.apiserver_token_file == NULL);
    CHECK_EQ_INT(cfg.n_audiences, 0);
    CHECK_STR(cfg.log_level, "info");
    CHECK(!cfg.check_only);
    CHECK(cfg.upstream == NULL);
    CHECK(cfg.upstream_ca == NULL);
    CHECK_EQ_INT(cfg.upstream_timeout_ms, 30000);
    CHECK_EQ_INT(cfg.upstream_max_connections, 128);
    CHECK_EQ_INT(cfg.max_body_bytes, 10 * 1024 * 1024);
    CHECK(!cfg.upstream_keep_authorization);
    /* Denial-of-service bounds (docs/SECURITY.md). */
    CHECK_EQ_INT(cfg.header_timeout_ms, 10000);
    CHECK_EQ_INT(cfg.body_timeout_ms, 60000);
    CHECK_EQ_INT(cfg.max_unauthenticated_body_bytes, 65536);
    CHECK_EQ_INT(cfg.max_buffered_body_bytes, 128 * 1024 * 1024);
    CHECK_EQ_INT(cfg.admin_max_connections, 64);
}

static void test_flag_forms(void)
{
    config cfg;
    capture err;
    char *spaced[] = {"tokengate", "--cache-ttl", "30s"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(spaced), spaced, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.cache_ttl_ms, 30000);
    char *equals[] = {"tokengate", "--cache-ttl=30s"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(equals), equals, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.cache_ttl_ms, 30000);

    char *all[] = {"tokengate",
                   "--listen",
                   "127.0.0.1:18080",
                   "--admin-listen=127.0.0.1:19090",
                   "--cache-negative-ttl",
                   "500ms",
                   "--cache-max-ttl=1h",
                   "--cache-max-entries",
                   "123",
                   "--review-timeout=1500ms",
                   "--max-token-bytes",
                   "8192",
                   "--apiserver=https://10.0.0.1:6443/path?a=b",
                   "--apiserver-ca",
                   "/etc/ca.pem",
                   "--apiserver-token-file",
                   "/var/run/token",
                   "--log-level",
                   "debug",
                   "--check"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(all), all, &err), CONFIG_RUN);
    CHECK_STR(capture_close(&err), "");
    capture_free(&err);
    CHECK_STR(cfg.listen, "127.0.0.1:18080");
    CHECK_STR(cfg.admin_listen, "127.0.0.1:19090");
    CHECK_EQ_INT(cfg.cache_ttl_ms, 120000); /* untouched default */
    CHECK_EQ_INT(cfg.cache_negative_ttl_ms, 500);
    CHECK_EQ_INT(cfg.cache_max_ttl_ms, 3600000);
    CHECK_EQ_INT(cfg.cache_max_entries, 123);
    CHECK_EQ_INT(cfg.review_timeout_ms, 1500);
    CHECK_EQ_INT(cfg.max_token_bytes, 8192);
    CHECK_STR(cfg.apiserver, "https://10.0.0.1:6443/path?a=b"); /* only the first '=' splits */
    CHECK_STR(cfg.apiserver_ca, "/etc/ca.pem");
    CHECK_STR(cfg.apiserver_token_file, "/var/run/token");
    CHECK_STR(cfg.log_level, "debug");
    CHECK(cfg.check_only);

    /* The last occurrence wins. */
    char *twice[] = {"tokengate", "--cache-ttl", "30s", "--cache-ttl=45s"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(twice), twice, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.cache_ttl_ms, 45000);

    /* --version exits successfully. */
    char *version[] = {"tokengate", "--version"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(version), version, &err), CONFIG_EXIT_OK);
    capture_free(&err);
}

/* Expects CONFIG_EXIT_ERROR with a message that mentions `mention`. */
static void expect_error(int argc, char **argv, const char *mention)
{
    config cfg;
    capture err;
    config_action a = parse_args(&cfg, argc, argv, &err);
    CHECK_EQ_INT(a, CONFIG_EXIT_ERROR);
    const char *text = err.text ? err.text : "";
    CHECK(text[0] != '\0');
    CHECK(strstr(text, mention) != NULL);
    if (a != CONFIG_EXIT_ERROR || !strstr(text, mention))
        fprintf(stderr, "    argv[1]=\"%s\" message: \"%s\"\n", argc > 1 ? argv[1] : "", text);
    capture_free(&err);
}

static void test_flag_errors(void)
{
    char *bad_duration[] = {"tokengate", "--cache-ttl", "30"};
    expect_error(ARGC(bad_duration), bad_duration, "--cache-ttl");
    char *bad_duration2[] = {"tokengate", "--cache-ttl=2 minutes"};
    expect_error(ARGC(bad_duration2), bad_duration2, "--cache-ttl");
    char *negative_duration[] = {"tokengate", "--review-timeout", "-5s"};
    expect_error(ARGC(negative_duration), negative_duration, "--review-timeout");
    char *empty_duration[] = {"tokengate", "--cache-negative-ttl="};
    expect_error(ARGC(empty_duration), empty_duration, "--cache-negative-ttl");
    char *bad_size[] = {"tokengate", "--cache-max-entries", "lots"};
    expect_error(ARGC(bad_size), bad_size, "--cache-max-entries");
    char *neg_size[] = {"tokengate", "--cache-max-entries", "-1"};
    expect_error(ARGC(neg_size), neg_size, "--cache-max-entries");
    /* Kubernetes spells kilo "k": "16K" and "16KB" are refused, not guessed. */
    char *size_suffix[] = {"tokengate", "--max-token-bytes=16K"};
    expect_error(ARGC(size_suffix), size_suffix, "--max-token-bytes");
    char *size_suffix2[] = {"tokengate", "--max-token-bytes=16KB"};
    expect_error(ARGC(size_suffix2), size_suffix2, "--max-token-bytes");
    char *size_fraction[] = {"tokengate", "--max-body-bytes=0.1Ki"};
    expect_error(ARGC(size_fraction), size_fraction, "--max-body-bytes");
    /* Counts are not byte quantities. */
    char *count_suffix[] = {"tokengate", "--cache-max-entries=10k"};
    expect_error(ARGC(count_suffix), count_suffix, "--cache-max-entries");
    char *unknown[] = {"tokengate", "--no-such-flag", "x"};
    expect_error(ARGC(unknown), unknown, "--no-such-flag");
    char *unknown_eq[] = {"tokengate", "--cache-ttlx=5s"};
    expect_error(ARGC(unknown_eq), unknown_eq, "--cache-ttlx");
    char *prefix[] = {"tokengate", "--cache", "5s"};
    expect_error(ARGC(prefix), prefix, "--cache");
    char *positional[] = {"tokengate", "serve"};
    expect_error(ARGC(positional), positional, "serve");
    char *missing[] = {"tokengate", "--cache-ttl"};
    expect_error(ARGC(missing), missing, "--cache-ttl");
    char *missing2[] = {"tokengate", "--listen", "0.0.0.0:1", "--apiserver"};
    expect_error(ARGC(missing2), missing2, "--apiserver");
    char *bool_value[] = {"tokengate", "--check=yes"};
    expect_error(ARGC(bool_value), bool_value, "--check");
    char *bool_empty[] = {"tokengate", "--policy-watch="};
    expect_error(ARGC(bool_empty), bool_empty, "--policy-watch");
    /* An error after good flags still fails. */
    char *late[] = {"tokengate", "--cache-ttl", "30s", "--cache-max-ttl", "forever"};
    expect_error(ARGC(late), late, "--cache-max-ttl");
}

/* Every boolean takes --flag, --flag=true|false and --flag=1|0 (any case for the words). */
static void test_bool_values(void)
{
    config cfg;
    capture err;
    char *bare[] = {"tokengate", "--watch-revocations", "--watch-pods"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(bare), bare, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK(cfg.watch_revocations && cfg.watch_pods);

    char *words[] = {"tokengate", "--watch-revocations=true",       "--watch-pods=TRUE", "--policy-watch=False",
                     "--check=1", "--upstream-keep-authorization=0"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(words), words, &err), CONFIG_RUN);
    CHECK_STR(capture_close(&err), "");
    capture_free(&err);
    CHECK(cfg.watch_revocations);
    CHECK(cfg.watch_pods);
    CHECK(!cfg.policy_watch);
    CHECK(cfg.check_only);
    CHECK(!cfg.upstream_keep_authorization);

    /* =false undoes an earlier bare flag: the last occurrence wins, as for other flags. */
    char *undo[] = {"tokengate", "--watch-revocations", "--watch-revocations=false"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(undo), undo, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK(!cfg.watch_revocations);

    /* "--check false" is a positional argument, not a value. */
    char *spaced[] = {"tokengate", "--check", "false"};
    expect_error(ARGC(spaced), spaced, "false");
    char *yes[] = {"tokengate", "--watch-pods=yes"};
    expect_error(ARGC(yes), yes, "--watch-pods=true");
}

/* Byte sizes are Kubernetes quantities; plain integers still work. */
static void test_byte_quantities(void)
{
    config cfg;
    capture err;
    char *binary[] = {"tokengate", "--max-token-bytes", "16Ki", "--max-body-bytes=10Mi", "--policy-max-memory-bytes",
                      "1Gi"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(binary), binary, &err), CONFIG_RUN);
    CHECK_STR(capture_close(&err), "");
    capture_free(&err);
    CHECK_EQ_INT(cfg.max_token_bytes, 16384);
    CHECK_EQ_INT(cfg.max_body_bytes, 10 * 1024 * 1024);
    CHECK_EQ_INT(cfg.policy_max_memory_bytes, 1024 * 1024 * 1024);

    char *decimal[] = {"tokengate", "--max-token-bytes=500k", "--max-body-bytes=2M", "--policy-max-memory-bytes=1.5Mi"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(decimal), decimal, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.max_token_bytes, 500000);
    CHECK_EQ_INT(cfg.max_body_bytes, 2000000);
    CHECK_EQ_INT(cfg.policy_max_memory_bytes, 1572864);

    char *plain[] = {"tokengate", "--max-token-bytes", "8192"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(plain), plain, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.max_token_bytes, 8192);

    char *huge[] = {"tokengate", "--max-body-bytes=2Ti"};
    expect_error(ARGC(huge), huge, "--max-body-bytes");
    char *negative[] = {"tokengate", "--max-body-bytes=-1Mi"};
    expect_error(ARGC(negative), negative, "--max-body-bytes");
    char *spaced[] = {"tokengate", "--max-body-bytes", "10 Mi"};
    expect_error(ARGC(spaced), spaced, "--max-body-bytes");
    char *suffix_only[] = {"tokengate", "--max-body-bytes=Mi"};
    expect_error(ARGC(suffix_only), suffix_only, "--max-body-bytes");
}

static void test_audiences(void)
{
    config cfg;
    capture err;
    char *three[] = {"tokengate", "--audiences", "a,b,c"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(three), three, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.n_audiences, 3);
    if (cfg.n_audiences == 3) {
        CHECK_STR(cfg.audiences[0], "a");
        CHECK_STR(cfg.audiences[1], "b");
        CHECK_STR(cfg.audiences[2], "c");
    }
    /* Split into a copy: argv is not modified. */
    CHECK_STR(three[2], "a,b,c");

    char *eq[] = {"tokengate", "--audiences=https://kubernetes.default.svc,https://hooks.example.com"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(eq), eq, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.n_audiences, 2);
    if (cfg.n_audiences == 2) {
        CHECK_STR(cfg.audiences[0], "https://kubernetes.default.svc");
        CHECK_STR(cfg.audiences[1], "https://hooks.example.com");
    }

    char *one[] = {"tokengate", "--audiences", "solo"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(one), one, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.n_audiences, 1);

    /* Exactly 16 is fine; 17 is an error. */
    char *sixteen[] = {"tokengate", "--audiences", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(sixteen), sixteen, &err), CONFIG_RUN);
    capture_free(&err);
    CHECK_EQ_INT(cfg.n_audiences, 16);
    if (cfg.n_audiences == 16) CHECK_STR(cfg.audiences[15], "16");
    char *seventeen[] = {"tokengate", "--audiences", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"};
    expect_error(ARGC(seventeen), seventeen, "16");

    /* Longer than the copy buffer: an error, not an overflow. */
    size_t n = CONFIG_AUDIENCES_TEXT_MAX + 10;
    char *arg = malloc(n + 1);
    REQUIRE(arg != NULL);
    memset(arg, 'a', n);
    arg[n] = '\0';
    char *too_long[] = {"tokengate", "--audiences", arg};
    expect_error(ARGC(too_long), too_long, "--audiences");
    free(arg);
}

/* ---- validation ---- */

typedef struct temp_file {
    char path[64];
} temp_file;

/* Every file temp_write made, so main() can check that each test removed its own. */
#define TEMP_FILES_MAX 32
static struct {
    char paths[TEMP_FILES_MAX][64];
    size_t n;
} temp_made;

static int temp_write(temp_file *t, const char *content)
{
    snprintf(t->path, sizeof(t->path), "/tmp/tokengate-unit-XXXXXX");
    int fd = mkstemp(t->path);
    if (fd < 0) return -1;
    if (temp_made.n < TEMP_FILES_MAX) memcpy(temp_made.paths[temp_made.n++], t->path, sizeof(t->path));
    size_t len = strlen(content);
    ssize_t w = write(fd, content, len);
    close(fd);
    return w == (ssize_t)len ? 0 : -1;
}

#define SECRET "eyJhbGciOiJSUzI1NiJ9.SUPER-SECRET-GATEWAY-CREDENTIAL.c2ln"

/* Runs config_validate on argv; returns its result, output in *out. */
static int validate_args(int argc, char **argv, capture *out)
{
    config cfg;
    capture err;
    config_action a = parse_args(&cfg, argc, argv, &err);
    CHECK_EQ_INT(a, CONFIG_RUN);
    capture_free(&err);
    capture_open(out);
    int rc = config_validate(&cfg, out->f ? out->f : stderr);
    capture_close(out);
    return rc;
}

static void test_validate(void)
{
    temp_file ca, tok;
    REQUIRE(temp_write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n") == 0);
    if (temp_write(&tok, SECRET "\n") != 0) {
        unlink(ca.path);
        REQUIRE(false);
    }
    capture out;

    char *good[] = {"tokengate",      "--apiserver", "https://10.0.0.1:6443",
                    "--apiserver-ca", ca.path,       "--apiserver-token-file",
                    tok.path};
    CHECK_EQ_INT(validate_args(ARGC(good), good, &out), 0);
    CHECK_STR(out.text ? out.text : "", "");
    capture_free(&out);

    char *no_apiserver[] = {"tokengate", "--apiserver-ca", ca.path, "--apiserver-token-file", tok.path};
    CHECK_EQ_INT(validate_args(ARGC(no_apiserver), no_apiserver, &out), -1);
    CHECK(out.text && strstr(out.text, "--apiserver"));
    capture_free(&out);

    char *http[] = {"tokengate",      "--apiserver", "http://10.0.0.1:6443",
                    "--apiserver-ca", ca.path,       "--apiserver-token-file",
                    tok.path};
    CHECK_EQ_INT(validate_args(ARGC(http), http, &out), -1);
    CHECK(out.text && strstr(out.text, "https"));
    capture_free(&out);

    /* Root may read any existing file, so "unreadable" is a path that does not exist. */
    char *no_ca[] = {"tokengate",
                     "--apiserver",
                     "https://10.0.0.1:6443",
                     "--apiserver-ca",
                     "/nonexistent/tokengate-unit/ca.pem",
                     "--apiserver-token-file",
                     tok.path};
    CHECK_EQ_INT(validate_args(ARGC(no_ca), no_ca, &out), -1);
    CHECK(out.text && strstr(out.text, "/nonexistent/tokengate-unit/ca.pem"));
    capture_free(&out);

    char *no_token[] = {"tokengate",
                        "--apiserver",
                        "https://10.0.0.1:6443",
                        "--apiserver-ca",
                        ca.path,
                        "--apiserver-token-file",
                        "/nonexistent/tokengate-unit/token"};
    CHECK_EQ_INT(validate_args(ARGC(no_token), no_token, &out), -1);
    capture_free(&out);

    char *proxy[] = {"tokengate",
                     "--mode",
                     "proxy",
                     "--apiserver",
                     "https://10.0.0.1:6443",
                     "--apiserver-ca",
                     ca.path,
                     "--apiserver-token-file",
                     tok.path};
    CHECK_EQ_INT(validate_args(ARGC(proxy), proxy, &out), -1);
    CHECK(out.text && strstr(out.text, "proxy"));
    capture_free(&out);

    char *zero_entries[] = {"tokengate",
                            "--apiserver",
                            "https://10.0.0.1:6443",
                            "--apiserver-ca",
                            ca.path,
                            "--apiserver-token-file",
                            tok.path,
                            "--cache-max-entries",
                            "0"};
    CHECK_EQ_INT(validate_args(ARGC(zero_entries), zero_entries, &out), -1);
    capture_free(&out);

    char *bad_level[] = {"tokengate",      "--apiserver", "https://10.0.0.1:6443",
                         "--apiserver-ca", ca.path,       "--apiserver-token-file",
                         tok.path,         "--log-level", "chatty"};
    CHECK_EQ_INT(validate_args(ARGC(bad_level), bad_level, &out), -1);
    capture_free(&out);

    char *zero_header_timeout[] = {"tokengate",
                                   "--apiserver",
                                   "https://10.0.0.1:6443",
                                   "--apiserver-ca",
                                   ca.path,
                                   "--apiserver-token-file",
                                   tok.path,
                                   "--header-timeout",
                                   "0s"};
    CHECK_EQ_INT(validate_args(ARGC(zero_header_timeout), zero_header_timeout, &out), -1);
    CHECK(out.text && strstr(out.text, "--header-timeout"));
    capture_free(&out);

    char *zero_admin_cap[] = {"tokengate",
                              "--apiserver",
                              "https://10.0.0.1:6443",
                              "--apiserver-ca",
                              ca.path,
                              "--apiserver-token-file",
                              tok.path,
                              "--admin-max-connections",
                              "0"};
    CHECK_EQ_INT(validate_args(ARGC(zero_admin_cap), zero_admin_cap, &out), -1);
    CHECK(out.text && strstr(out.text, "--admin-max-connections"));
    capture_free(&out);

    char *dos_flags[] = {"tokengate",
                         "--apiserver",
                         "https://10.0.0.1:6443",
                         "--apiserver-ca",
                         ca.path,
                         "--apiserver-token-file",
                         tok.path,
                         "--header-timeout",
                         "2s",
                         "--body-timeout",
                         "5m",
                         "--admin-max-connections",
                         "8"};
    CHECK_EQ_INT(validate_args(ARGC(dos_flags), dos_flags, &out), 0);
    capture_free(&out);

    /* Log levels in any case mean the same level, spelled canonically afterwards. */
    char *upper_level[] = {"tokengate",      "--apiserver", "https://10.0.0.1:6443",
                           "--apiserver-ca", ca.path,       "--apiserver-token-file",
                           tok.path,         "--log-level", "DEBUG"};
    CHECK_EQ_INT(validate_args(ARGC(upper_level), upper_level, &out), 0);
    capture_free(&out);
    {
        config cfg;
        capture err;
        char *mixed[] = {"tokengate", "--log-level=Warn"};
        CHECK_EQ_INT(parse_args(&cfg, ARGC(mixed), mixed, &err), CONFIG_RUN);
        capture_free(&err);
        CHECK_STR(cfg.log_level, "warn");
    }

    /* A TTL above its cap is refused, naming both flags and which one is a default. */
    char *ttl_over_cap[] = {"tokengate",       "--apiserver", "https://10.0.0.1:6443",
                            "--apiserver-ca",  ca.path,       "--apiserver-token-file",
                            tok.path,          "--cache-ttl", "1h",
                            "--cache-max-ttl", "10m"};
    CHECK_EQ_INT(validate_args(ARGC(ttl_over_cap), ttl_over_cap, &out), -1);
    CHECK(out.text && strstr(out.text, "--cache-ttl 1h is above --cache-max-ttl 10m (the default)"));
    capture_free(&out);
    char *cap_below_default[] = {"tokengate",      "--apiserver",     "https://10.0.0.1:6443",
                                 "--apiserver-ca", ca.path,           "--apiserver-token-file",
                                 tok.path,         "--cache-max-ttl", "5s"};
    CHECK_EQ_INT(validate_args(ARGC(cap_below_default), cap_below_default, &out), -1);
    CHECK(out.text && strstr(out.text, "--cache-ttl 2m (the default) is above --cache-max-ttl 5s"));
    CHECK(out.text && strstr(out.text, "--cache-negative-ttl 10s (the default) is above --cache-max-ttl 5s"));
    capture_free(&out);
    char *ttl_at_cap[] = {"tokengate",
                          "--apiserver",
                          "https://10.0.0.1:6443",
                          "--apiserver-ca",
                          ca.path,
                          "--apiserver-token-file",
                          tok.path,
                          "--cache-ttl",
                          "10m",
                          "--cache-negative-ttl",
                          "10m"};
    CHECK_EQ_INT(validate_args(ARGC(ttl_at_cap), ttl_at_cap, &out), 0);
    capture_free(&out);

    /* Nothing validate prints reveals the credential. */
    char *all_bad[] = {"tokengate", "--apiserver", "http://x", "--apiserver-ca", tok.path, "--apiserver-token-file",
                       tok.path};
    validate_args(ARGC(all_bad), all_bad, &out);
    CHECK(out.text == NULL || strstr(out.text, "SUPER-SECRET") == NULL);
    capture_free(&out);

    unlink(ca.path);
    unlink(tok.path);
}

static void test_print_never_shows_credential(void)
{
    temp_file ca, tok;
    REQUIRE(temp_write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n") == 0);
    if (temp_write(&tok, SECRET "\n") != 0) {
        unlink(ca.path);
        REQUIRE(false);
    }
    config cfg;
    capture err;
    char *argv[] = {
        "tokengate", "--apiserver", "https://10.0.0.1:6443", "--apiserver-ca", ca.path, "--apiserver-token-file",
        tok.path,    "--audiences", "aud-1,aud-2",           "--cache-ttl",    "90s"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(argv), argv, &err), CONFIG_RUN);
    capture_free(&err);
    capture out;
    capture_open(&out);
    REQUIRE(out.f != NULL);
    config_print(&cfg, out.f);
    const char *text = capture_close(&out);
    CHECK(strstr(text, "SUPER-SECRET") == NULL);
    CHECK(strstr(text, SECRET) == NULL);
    CHECK(strstr(text, tok.path) != NULL); /* the path is shown, not the content */
    CHECK(strstr(text, "https://10.0.0.1:6443") != NULL);
    CHECK(strstr(text, "cache-ttl: 1m30s\n") != NULL);
    CHECK(strstr(text, "cache-negative-ttl: 10s\n") != NULL);
    CHECK(strstr(text, "cache-max-ttl: 10m\n") != NULL);
    CHECK(strstr(text, "cache-max-entries: 10000\n") != NULL);
    CHECK(strstr(text, "review-timeout: 5s\n") != NULL);
    CHECK(strstr(text, "max-token-bytes: 16384\n") != NULL);
    CHECK(strstr(text, "aud-1") != NULL && strstr(text, "aud-2") != NULL);
    CHECK(strstr(text, "listen: 0.0.0.0:8080\n") != NULL);
    CHECK(strstr(text, "admin-listen: 127.0.0.1:9090\n") != NULL);
    capture_free(&out);

    /* Defaults only: prints without a credential configured, too. */
    char *bare[] = {"tokengate"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(bare), bare, &err), CONFIG_RUN);
    capture_free(&err);
    capture_open(&out);
    REQUIRE(out.f != NULL);
    config_print(&cfg, out.f);
    text = capture_close(&out);
    CHECK(strstr(text, "mode: authz\n") != NULL);
    capture_free(&out);

    unlink(ca.path);
    unlink(tok.path);
}

/* --mode proxy: needs --upstream (http/https, no user info, query or fragment); authz
 * takes none of the upstream flags; the policy never reads proxy headers in proxy mode. */
static void test_validate_proxy(void)
{
    temp_file ca, tok;
    REQUIRE(temp_write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n") == 0);
    if (temp_write(&tok, SECRET "\n") != 0) {
        unlink(ca.path);
        REQUIRE(false);
    }
    capture out;
#define API "--apiserver", "https://10.0.0.1:6443", "--apiserver-ca", ca.path, "--apiserver-token-file", tok.path
    char *ok[] = {"tokengate", API, "--mode", "proxy", "--upstream", "http://127.0.0.1:8081/prefix/"};
    CHECK_EQ_INT(validate_args(ARGC(ok), ok, &out), 0);
    capture_free(&out);
    char *ok_tls[] = {"tokengate",
                      API,
                      "--mode",
                      "proxy",
                      "--upstream",
                      "https://app.default.svc:8443",
                      "--upstream-ca",
                      ca.path,
                      "--upstream-keep-authorization",
                      "--forwarded-headers",
                      "none"};
    CHECK_EQ_INT(validate_args(ARGC(ok_tls), ok_tls, &out), 0);
    capture_free(&out);

    const char *bad_urls[] = {"ftp://x",     "http://", "http://user:pw@x", "http://x/?q=1",
                              "http://x/#f", "x:80",    "http://x /y"};
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        char *bad[] = {"tokengate", API, "--mode", "proxy", "--upstream", (char *)bad_urls[i]};
        CHECK_EQ_INT(validate_args(ARGC(bad), bad, &out), -1);
        CHECK(out.text && strstr(out.text, "--upstream"));
        capture_free(&out);
    }
    char *no_upstream[] = {"tokengate", API, "--mode", "proxy"};
    CHECK_EQ_INT(validate_args(ARGC(no_upstream), no_upstream, &out), -1);
    CHECK(out.text && strstr(out.text, "--upstream"));
    capture_free(&out);
    char *authz_upstream[] = {"tokengate", API, "--upstream", "http://127.0.0.1:8081"};
    CHECK_EQ_INT(validate_args(ARGC(authz_upstream), authz_upstream, &out), -1);
    CHECK(out.text && strstr(out.text, "--mode proxy"));
    capture_free(&out);
    char *authz_keep[] = {"tokengate", API, "--upstream-keep-authorization"};
    CHECK_EQ_INT(validate_args(ARGC(authz_keep), authz_keep, &out), -1);
    capture_free(&out);
    char *plain_ca[] = {"tokengate", API, "--mode", "proxy", "--upstream", "http://x", "--upstream-ca", ca.path};
    CHECK_EQ_INT(validate_args(ARGC(plain_ca), plain_ca, &out), -1);
    CHECK(out.text && strstr(out.text, "https"));
    capture_free(&out);
    char *nginx_headers[] = {"tokengate",           API,    "--mode", "proxy", "--upstream", "http://x",
                             "--forwarded-headers", "nginx"};
    CHECK_EQ_INT(validate_args(ARGC(nginx_headers), nginx_headers, &out), -1);
    CHECK(out.text && strstr(out.text, "--forwarded-headers"));
    capture_free(&out);
    /* auto let the client pick the header family: removed, with a message naming the choices. */
    char *auto_headers[] = {"tokengate", API, "--forwarded-headers", "auto"};
    CHECK_EQ_INT(validate_args(ARGC(auto_headers), auto_headers, &out), -1);
    CHECK(out.text && strstr(out.text, "auto was removed") && strstr(out.text, "ingress-nginx"));
    capture_free(&out);
    char *unknown_headers[] = {"tokengate", API, "--forwarded-headers", "haproxy"};
    CHECK_EQ_INT(validate_args(ARGC(unknown_headers), unknown_headers, &out), -1);
    capture_free(&out);
    const char *families[] = {"none", "nginx", "ingress-nginx", "traefik"};
    for (size_t i = 0; i < 4; i++) {
        char *family[] = {"tokengate", API, "--forwarded-headers", (char *)families[i]};
        CHECK_EQ_INT(validate_args(ARGC(family), family, &out), 0);
        capture_free(&out);
    }
    char *ingress_proxy[] = {"tokengate",    API, "--mode", "proxy", "--upstream", "http://x", "--forwarded-headers",
                             "ingress-nginx"};
    CHECK_EQ_INT(validate_args(ARGC(ingress_proxy), ingress_proxy, &out), -1);
    capture_free(&out);
    char *zero_timeout[] = {"tokengate", API, "--mode", "proxy", "--upstream", "http://x", "--upstream-timeout", "0s"};
    CHECK_EQ_INT(validate_args(ARGC(zero_timeout), zero_timeout, &out), -1);
    capture_free(&out);
    char *bad_mode[] = {"tokengate", API, "--mode", "sidecar"};
    CHECK_EQ_INT(validate_args(ARGC(bad_mode), bad_mode, &out), -1);
    CHECK(out.text && strstr(out.text, "authz or proxy"));
    capture_free(&out);
#undef API

    /* --check shows what proxy mode runs with. */
    config cfg;
    capture err;
    char *shown[] = {"tokengate", "--mode", "proxy", "--upstream", "http://127.0.0.1:8081", "--max-body-bytes", "1024"};
    CHECK_EQ_INT(parse_args(&cfg, ARGC(shown), shown, &err), CONFIG_RUN);
    capture_free(&err);
    capture_open(&out);
    REQUIRE(out.f != NULL);
    config_print(&cfg, out.f);
    const char *text = capture_close(&out);
    CHECK(strstr(text, "upstream: http://127.0.0.1:8081\n") != NULL);
    CHECK(strstr(text, "upstream-timeout: 30s\n") != NULL);
    CHECK(strstr(text, "max-body-bytes: 1024\n") != NULL);
    CHECK(strstr(text, "upstream-keep-authorization: no") != NULL);
    capture_free(&out);

    unlink(ca.path);
    unlink(tok.path);
}

/* Each test unlinks the files it wrote; none may be left behind. */
static void test_no_temp_file_left(void)
{
    CHECK(temp_made.n > 0);
    for (size_t i = 0; i < temp_made.n; i++) {
        bool left = access(temp_made.paths[i], F_OK) == 0;
        if (left) fprintf(stderr, "left behind: %s\n", temp_made.paths[i]);
        CHECK(!left);
        if (left) unlink(temp_made.paths[i]);
    }
}

static int require_calls;
static int counted_true(void)
{
    return ++require_calls > 0;
}
static void require_once(void)
{
    REQUIRE(counted_true());
}

static void test_require_evaluates_once(void)
{
    require_once();
    CHECK_EQ_INT(require_calls, 1);
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_flag_forms);
    RUN(test_flag_errors);
    RUN(test_bool_values);
    RUN(test_byte_quantities);
    RUN(test_audiences);
    RUN(test_validate);
    RUN(test_validate_proxy);
    RUN(test_print_never_shows_credential);
    RUN(test_no_temp_file_left);
    RUN(test_require_evaluates_once);
    return UNIT_EXIT();
}
