/* Unit tests: which API server the gateway talks to and how (core/apiserver_config.h):
 * every precedence branch, every kubeconfig field on the sample files in
 * spec/fixtures/kubeconfig, the in-cluster service-account directory (faked under /tmp),
 * every refusal with its message, and that no token or key ever reaches err or why. */
#include "apiserver_config.h"
#include "kubeconfig.h"
#include "unit.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef TOKENGATE_KUBECONFIG_FIXTURES
#error "TOKENGATE_KUBECONFIG_FIXTURES must point at spec/fixtures/kubeconfig"
#endif
#define FIXDIR TOKENGATE_KUBECONFIG_FIXTURES
#define FIX(name) FIXDIR "/" name

#define ERR_CAP 1024

/* Everything secret in the fixtures and the inline kubeconfigs below. None of it may ever
 * appear in an error message or a why text. */
static const char *const secrets[] = {
    "tgtest-inline-token-7f3a9c",
    "tgtest-dev-token-11aa",
    "tgtest-oidc-id-token-5e5e",
    "tgtest-file-token-b81d",
    "tgtest-sa-token-4242",
    "tgtest-bad token",
    "tgtest-key-material",
    "dGd0ZXN0LWtleS1tYXRlcmlhbD", /* the fake key's PEM body */
    "LS0tLS1CRUdJTiBQUklWQVRF",   /* client-key-data */
    "PRIVATE KEY",
    "hunter2",
};

static char tmp_root[64]; /* per-run scratch directory, removed at the end */

#define CHECK_NO_SECRETS(text) check_no_secrets_at(__LINE__, (text))
static void check_no_secrets_at(int line, const char *text)
{
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
        unit_checks++;
        if (text && strstr(text, secrets[i])) {
            unit_failures++;
            fprintf(stderr, "%s:%d: secret \"%s\" leaked into: %s\n", __FILE__, line, secrets[i], text);
        }
    }
}

#define CHECK_CONTAINS(text, needle) check_contains_at(__LINE__, (text), (needle))
static void check_contains_at(int line, const char *text, const char *needle)
{
    unit_checks++;
    if (!text || !strstr(text, needle)) {
        unit_failures++;
        fprintf(stderr, "%s:%d: expected \"%s\" in: %s\n", __FILE__, line, needle, text ? text : "(null)");
    }
}

/* True when every field of s is zero (the state after a failure or a free). */
static bool settings_zero(const apiserver_settings *s)
{
    static const apiserver_settings zero;
    return memcmp(s, &zero, sizeof(zero)) == 0;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    *len = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf) buf[*len] = '\0';
    return buf;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        return;
    }
    fputs(text, f);
    fclose(f);
}

/* tmp_root/name, in a static buffer (one of four, rotating). */
static const char *tmp_path(const char *name)
{
    static char bufs[4][PATH_MAX];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, PATH_MAX, "%s/%s", tmp_root, name);
    return b;
}

/* Resolves a kubeconfig given by --kubeconfig only. */
static int resolve_kubeconfig(const char *path, const char *context, apiserver_settings *s, char *err)
{
    apiserver_inputs in = {.kubeconfig = path, .context = context};
    return apiserver_resolve(&in, s, err, ERR_CAP);
}

/* Expects apiserver_resolve(in) to fail with rc and an err containing want. */
#define EXPECT_RESOLVE_ERROR(in, rc, want) expect_resolve_error_at(__LINE__, (in), (rc), (want))
static void expect_resolve_error_at(int line, const apiserver_inputs *in, int want_rc, const char *want)
{
    apiserver_settings s;
    char err[ERR_CAP];
    memset(&s, 0x5a, sizeof(s)); /* resolve must not rely on out being initialised */
    int rc = apiserver_resolve(in, &s, err, sizeof(err));
    unit_checks++;
    if (rc != want_rc || !strstr(err, want) || !settings_zero(&s)) {
        unit_failures++;
        fprintf(stderr, "%s:%d: expected rc %d and an error containing \"%s\", got rc %d: %s\n", __FILE__, line,
                want_rc, want, rc, err);
    }
    check_no_secrets_at(line, err);
    apiserver_settings_free(&s);
}

/* Expects kubeconfig_parse(yaml, context) to fail with an err containing want. */
#define EXPECT_PARSE_ERROR(yaml, context, want) expect_parse_error_at(__LINE__, (yaml), (context), (want))
static void expect_parse_error_at(int line, const char *yaml, const char *context, const char *want)
{
    apiserver_settings s;
    char err[ERR_CAP];
    int rc = kubeconfig_parse(yaml, strlen(yaml), context, "/base", &s, err, sizeof(err));
    unit_checks++;
    if (rc != -1 || !strstr(err, want) || !settings_zero(&s)) {
        unit_failures++;
        fprintf(stderr, "%s:%d: expected a parse error containing \"%s\", got rc %d: %s\n", __FILE__, line, want, rc,
                err);
    }
    check_no_secrets_at(line, err);
    apiserver_settings_free(&s);
}

/* A one-cluster, one-user kubeconfig around the given (already indented) bodies. */
static const char *kc(const char *cluster_body, const char *user_body)
{
    static char buf[2][8192];
    static int next;
    char *b = buf[next++ % 2];
    snprintf(b, sizeof(buf[0]),
             "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
             "clusters:\n- name: c\n  cluster:\n%s"
             "users:\n- name: u\n  user:\n%s"
             "contexts:\n- name: c\n  context: {cluster: c, user: u}\n",
             cluster_body, user_body);
    return b;
}

#define OK_CLUSTER "    server: https://h.example.com:6443\n    certificate-authority: ca.crt\n"
#define OK_USER "    token: tgtest-inline-token-7f3a9c\n"

/* Parses yaml that must succeed; fails the test (and frees nothing) otherwise. */
#define PARSE_OK(yaml, context, s) parse_ok_at(__LINE__, (yaml), (context), (s))
static bool parse_ok_at(int line, const char *yaml, const char *context, apiserver_settings *s)
{
    char err[ERR_CAP];
    int rc = kubeconfig_parse(yaml, strlen(yaml), context, "/base", s, err, sizeof(err));
    unit_checks++;
    if (rc != 0) {
        unit_failures++;
        fprintf(stderr, "%s:%d: expected the kubeconfig to parse, got: %s\n", __FILE__, line, err);
        return false;
    }
    check_no_secrets_at(line, s->why);
    return true;
}

/* ---- the sample files, one field at a time ---- */

static void test_token_kubeconfig(void)
{
    int rc;
    apiserver_settings s;
    char err[ERR_CAP];
    rc = resolve_kubeconfig(FIX("token.yaml"), NULL, &s, err);
    REQUIRE(rc == APISERVER_OK);
    CHECK_EQ_INT(s.source, APISERVER_FROM_KUBECONFIG);
    CHECK_STR(s.server_url, "https://127.0.0.1:6443"); /* trailing slash dropped */
    CHECK_STR(s.ca_file, FIX("ca.crt"));               /* relative to the kubeconfig */
    CHECK(s.ca_pem == NULL && s.ca_pem_len == 0);
    CHECK_STR(s.token, "tgtest-inline-token-7f3a9c");
    CHECK(s.token_file == NULL);
    CHECK(s.client_cert_file == NULL && s.client_key_file == NULL);
    CHECK(s.client_cert_pem == NULL && s.client_key_pem == NULL);
    CHECK_STR(s.namespace_, "tokengate-system");
    CHECK_STR(s.kubeconfig_path, FIX("token.yaml"));
    CHECK_STR(s.context, "gateway");
    CHECK_STR(s.cluster, "local");
    CHECK_STR(s.user, "tokengate");
    CHECK_STR(s.why,
              "kubeconfig " FIX("token.yaml") " (from --kubeconfig): context \"gateway\" (current-context), "
                                              "cluster \"local\" at https://127.0.0.1:6443, CA file " FIX(
                                                  "ca.crt") ", user \"tokengate\" "
                                                            "with an inline token, namespace \"tokengate-system\"");
    CHECK_NO_SECRETS(s.why);
    apiserver_settings_free(&s);
    CHECK(settings_zero(&s));
    apiserver_settings_free(&s); /* harmless twice */
}

static void test_tokenfile_kubeconfig(void)
{
    int rc;
    apiserver_settings s;
    char err[ERR_CAP];
    rc = resolve_kubeconfig(FIX("tokenfile.yaml"), NULL, &s, err);
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.server_url, "https://kind-control-plane:6443");
    CHECK_STR(s.ca_file, FIX("./certs/../ca.crt"));
    CHECK(s.token == NULL);
    CHECK_STR(s.token_file, FIX("token")); /* a path: the client re-reads it when it changes */
    CHECK(s.namespace_ == NULL);
    CHECK_STR(s.context, "files");
    CHECK_STR(s.cluster, "kind-tokengate");
    CHECK_STR(s.user, "file-user");
    CHECK_CONTAINS(s.why, "user \"file-user\" with token file " FIX("token"));
    CHECK_NO_SECRETS(s.why);
    apiserver_settings_free(&s);
}

static void test_client_cert_kubeconfig(void)
{
    int rc;
    apiserver_settings s;
    char err[ERR_CAP];
    rc = resolve_kubeconfig(FIX("client-cert.yaml"), NULL, &s, err);
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.server_url, "https://rancher.example.com/k8s/clusters/c-m-abc123");
    CHECK_STR(s.ca_file, FIX("ca.crt"));
    CHECK(s.token == NULL && s.token_file == NULL);
    CHECK_STR(s.client_cert_file, FIX("certs/client.crt"));
    CHECK_STR(s.client_key_file, FIX("certs/client.key"));
    CHECK(s.client_cert_pem == NULL && s.client_key_pem == NULL);
    CHECK_CONTAINS(s.why, "user \"cert-user\" with a client certificate (files)");
    CHECK_NO_SECRETS(s.why);
    apiserver_settings_free(&s);
}

static void test_embedded_kubeconfig(void)
{
    size_t ca_len = 0, crt_len = 0, key_len = 0;
    char *ca = read_all(FIX("ca.crt"), &ca_len);
    char *crt = read_all(FIX("certs/client.crt"), &crt_len);
    char *key = read_all(FIX("certs/client.key"), &key_len);
    apiserver_settings s;
    char err[ERR_CAP];
    int rc = resolve_kubeconfig(FIX("embedded.yaml"), NULL, &s, err);
    CHECK_EQ_INT(rc, APISERVER_OK);
    if (rc == APISERVER_OK && ca && crt && key) {
        CHECK_STR(s.server_url, "https://[fd00::10]:6443");
        CHECK(s.ca_file == NULL);
        CHECK_EQ_INT(s.ca_pem_len, ca_len);
        CHECK_STR(s.ca_pem, ca); /* decoded, NUL-terminated */
        CHECK_EQ_INT(s.client_cert_pem_len, crt_len);
        CHECK_STR(s.client_cert_pem, crt);
        CHECK_EQ_INT(s.client_key_pem_len, key_len);
        CHECK_STR(s.client_key_pem, key);
        CHECK(s.client_cert_file == NULL && s.client_key_file == NULL);
        CHECK(s.token == NULL && s.token_file == NULL);
        CHECK_CONTAINS(s.why, "CA from certificate-authority-data, user \"kind-embedded\" with a client certificate "
                              "(embedded)");
        CHECK_NO_SECRETS(s.why);
    }
    apiserver_settings_free(&s);
    free(ca);
    free(crt);
    free(key);
}

static void test_json_kubeconfig(void)
{
    int rc;
    apiserver_settings s;
    char err[ERR_CAP];
    rc = resolve_kubeconfig(FIX("kubeconfig.json"), NULL, &s, err);
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.server_url, "https://json.example.com:6443");
    CHECK_STR(s.token_file, FIX("token"));
    CHECK_STR(s.namespace_, "from-json");
    apiserver_settings_free(&s);
}

static void test_several_contexts(void)
{
    int rc;
    apiserver_settings s;
    char err[ERR_CAP];
    /* current-context */
    rc = resolve_kubeconfig(FIX("contexts.yaml"), NULL, &s, err);
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.context, "dev");
    CHECK_STR(s.cluster, "dev-cluster");
    CHECK_STR(s.user, "dev-admin");
    CHECK_STR(s.server_url, "https://dev.example.com:6443");
    CHECK_STR(s.token, "tgtest-dev-token-11aa");
    CHECK_STR(s.namespace_, "webhooks");
    CHECK_CONTAINS(s.why, "context \"dev\" (current-context)");
    CHECK_NO_SECRETS(s.why);
    apiserver_settings_free(&s);

    /* --context prod: embedded CA, tokenFile and client certificate files together */
    rc = resolve_kubeconfig(FIX("contexts.yaml"), "prod", &s, err);
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.context, "prod");
    CHECK_STR(s.server_url, "https://prod.example.com");
    CHECK(s.ca_pem != NULL && s.ca_file == NULL);
    CHECK(s.token == NULL);
    CHECK_STR(s.token_file, FIX("token"));
    CHECK_STR(s.client_cert_file, FIX("certs/client.crt"));
    CHECK_STR(s.client_key_file, FIX("certs/client.key"));
    CHECK_STR(s.namespace_, "tokengate");
    CHECK_CONTAINS(s.why, "context \"prod\" (--context)");
    CHECK_CONTAINS(s.why, "token file " FIX("token") " and a client certificate (files)");
    CHECK_NO_SECRETS(s.why);
    apiserver_settings_free(&s);

    /* "" is the same as no --context */
    rc = resolve_kubeconfig(FIX("contexts.yaml"), "", &s, err);
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.context, "dev");
    apiserver_settings_free(&s);

    apiserver_inputs in = {.kubeconfig = FIX("contexts.yaml"), .context = "staging"};
    EXPECT_RESOLVE_ERROR(
        &in, APISERVER_ERROR,
        "kubeconfig " FIX("contexts.yaml") " (from --kubeconfig): cluster \"staging-cluster\": "
                                           "certificate-authority /nonexistent/tokengate-test/ca.crt: No such "
                                           "file or directory");
    in.context = "cloud";
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR,
                         "user \"cloud-user\" uses an exec credential plugin, which is not supported: give the "
                         "gateway a token, tokenFile or client-certificate/client-key");
    in.context = "orphan";
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR,
                         "cluster \"no-such-cluster\" not found (available: \"dev-cluster\", \"prod-cluster\", "
                         "\"staging-cluster\")");
    in.context = "missing";
    EXPECT_RESOLVE_ERROR(
        &in, APISERVER_ERROR,
        "kubeconfig " FIX("contexts.yaml") " (from --kubeconfig): context \"missing\" not found "
                                           "(available: \"dev\", \"prod\", \"staging\", \"cloud\", \"orphan\")");
}

static void test_refused_sample_files(void)
{
    apiserver_inputs in = {.kubeconfig = FIX("exec.yaml")};
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR,
                         "kubeconfig " FIX("exec.yaml") " (from --kubeconfig): user \"eks-user\" uses an exec "
                                                        "credential plugin, which is not supported");
    in.kubeconfig = FIX("auth-provider.yaml");
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR,
                         "user \"oidc-user\" uses an auth-provider plugin, which is not supported");
    in.kubeconfig = FIX("insecure.yaml");
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR,
                         "cluster \"insecure\" sets insecure-skip-tls-verify: true, which tokengate refuses: TLS to "
                         "the API server is always verified");
    in.kubeconfig = FIX("malformed.yaml");
    EXPECT_RESOLVE_ERROR(
        &in, APISERVER_ERROR,
        "kubeconfig " FIX("malformed.yaml") " (from --kubeconfig): YAML error at line 8, column 4: "
                                            "did not find expected key (while parsing a block mapping)");
    in.kubeconfig = FIX("duplicate-key.yaml");
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR, "line 10: duplicate key \"server\" (first at line 8)");
    in.kubeconfig = FIX("http-server.yaml");
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR,
                         "cluster \"plain\": server http://127.0.0.1:8080 uses plain http://: the "
                         "API server must be "
                         "https://");
    in.kubeconfig = FIX("no-such-file.yaml");
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR,
                         "kubeconfig " FIX("no-such-file.yaml") " (from --kubeconfig): No such file or directory");
    in.kubeconfig = FIXDIR;
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR, "kubeconfig " FIXDIR " (from --kubeconfig): Is a directory");
}

/* ---- precedence ---- */

static void test_precedence_flags(void)
{
    int rc;
    apiserver_settings s;
    char err[ERR_CAP];
    apiserver_inputs in = {
        .apiserver = "https://10.0.0.1:6443/", .apiserver_ca = FIX("ca.crt"), .apiserver_token_file = FIX("token")};
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_EQ_INT(s.source, APISERVER_FROM_FLAGS);
    CHECK_STR(s.server_url, "https://10.0.0.1:6443");
    CHECK_STR(s.ca_file, FIX("ca.crt"));
    CHECK_STR(s.token_file, FIX("token"));
    CHECK(s.token == NULL && s.ca_pem == NULL && s.client_cert_file == NULL && s.kubeconfig_path == NULL);
    CHECK_STR(s.why, "explicit flags: --apiserver https://10.0.0.1:6443, --apiserver-ca " FIX(
                         "ca.crt") ", --apiserver-token-file " FIX("token"));
    apiserver_settings_free(&s);

    /* Flags beat everything else, and say what they overrode. */
    in.kubeconfig = FIX("token.yaml");
    in.context = "gateway";
    in.kubeconfig_env = FIX("contexts.yaml");
    in.service_host = "10.96.0.1";
    in.service_port = "443";
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_EQ_INT(s.source, APISERVER_FROM_FLAGS);
    CHECK_CONTAINS(s.why, "; ignored (explicit flags take precedence): --kubeconfig --context $KUBECONFIG in-cluster "
                          "environment");
    apiserver_settings_free(&s);

    /* All three or nothing: the error names what is missing, even when a kubeconfig exists. */
    apiserver_inputs partial = {.apiserver = "https://10.0.0.1:6443", .kubeconfig = FIX("token.yaml")};
    EXPECT_RESOLVE_ERROR(&partial, APISERVER_ERROR,
                         "--apiserver-ca and --apiserver-token-file missing: --apiserver, --apiserver-ca and "
                         "--apiserver-token-file are used together");
    partial = (apiserver_inputs){.apiserver_ca = FIX("ca.crt")};
    EXPECT_RESOLVE_ERROR(&partial, APISERVER_ERROR, "--apiserver and --apiserver-token-file missing:");
    partial = (apiserver_inputs){.apiserver_token_file = FIX("token")};
    EXPECT_RESOLVE_ERROR(&partial, APISERVER_ERROR, "--apiserver and --apiserver-ca missing:");
    partial = (apiserver_inputs){.apiserver = "https://h", .apiserver_ca = FIX("ca.crt")};
    EXPECT_RESOLVE_ERROR(&partial, APISERVER_ERROR, "--apiserver-token-file missing:");
    partial = (apiserver_inputs){.apiserver = "https://h", .apiserver_token_file = FIX("token")};
    EXPECT_RESOLVE_ERROR(&partial, APISERVER_ERROR, "--apiserver-ca missing:");

    /* Each value checked. */
    apiserver_inputs bad = {
        .apiserver = "http://10.0.0.1:8080", .apiserver_ca = FIX("ca.crt"), .apiserver_token_file = FIX("token")};
    EXPECT_RESOLVE_ERROR(&bad, APISERVER_ERROR,
                         "--apiserver http://10.0.0.1:8080 uses plain http://: the API server must be https://");
    bad.apiserver = "10.0.0.1:6443";
    EXPECT_RESOLVE_ERROR(&bad, APISERVER_ERROR, "--apiserver 10.0.0.1:6443 is not an https://HOST[:PORT] URL");
    bad.apiserver = "https://10.0.0.1:6443";
    bad.apiserver_ca = "/nonexistent/ca.crt";
    EXPECT_RESOLVE_ERROR(&bad, APISERVER_ERROR, "--apiserver-ca /nonexistent/ca.crt: No such file or directory");
    bad.apiserver_ca = FIXDIR;
    EXPECT_RESOLVE_ERROR(&bad, APISERVER_ERROR, "--apiserver-ca " FIXDIR ": is a directory");
    bad.apiserver_ca = FIX("ca.crt");
    bad.apiserver_token_file = "/nonexistent/token";
    EXPECT_RESOLVE_ERROR(&bad, APISERVER_ERROR, "--apiserver-token-file /nonexistent/token: No such file or directory");
}

static void test_precedence_kubeconfig(void)
{
    int rc;
    apiserver_settings s;
    char err[ERR_CAP];
    /* --kubeconfig beats $KUBECONFIG and in-cluster. */
    apiserver_inputs in = {.kubeconfig = FIX("token.yaml"),
                           .kubeconfig_env = FIX("contexts.yaml"),
                           .service_host = "10.96.0.1",
                           .service_port = "443"};
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.kubeconfig_path, FIX("token.yaml"));
    CHECK_CONTAINS(s.why, "(from --kubeconfig)");
    CHECK_CONTAINS(s.why, "; ignored (--kubeconfig takes precedence): $KUBECONFIG in-cluster environment");
    apiserver_settings_free(&s);

    /* $KUBECONFIG beats in-cluster; --context applies to it. */
    in.kubeconfig = NULL;
    in.context = "prod";
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_EQ_INT(s.source, APISERVER_FROM_KUBECONFIG);
    CHECK_STR(s.kubeconfig_path, FIX("contexts.yaml"));
    CHECK_STR(s.context, "prod");
    CHECK_CONTAINS(s.why, "kubeconfig " FIX("contexts.yaml") " (from $KUBECONFIG): context \"prod\" (--context)");
    CHECK_CONTAINS(s.why, "; ignored ($KUBECONFIG takes precedence): in-cluster environment");
    apiserver_settings_free(&s);

    /* Only the first non-empty path of $KUBECONFIG is read, and why says so. */
    apiserver_inputs env = {.kubeconfig_env = "::" FIX("tokenfile.yaml") ":" FIX("token.yaml") ":"};
    rc = apiserver_resolve(&env, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.kubeconfig_path, FIX("tokenfile.yaml"));
    CHECK_CONTAINS(s.why, "; only the first of the 2 paths in $KUBECONFIG is read (no merging)");
    apiserver_settings_free(&s);

    env.kubeconfig_env = "/nonexistent/kubeconfig:" FIX("token.yaml");
    EXPECT_RESOLVE_ERROR(&env, APISERVER_ERROR,
                         "kubeconfig /nonexistent/kubeconfig (from $KUBECONFIG): No such file or directory");

    /* --context needs a kubeconfig. */
    apiserver_inputs ctx = {.context = "prod", .service_host = "10.96.0.1", .service_port = "443"};
    EXPECT_RESOLVE_ERROR(&ctx, APISERVER_ERROR, "--context prod needs a kubeconfig (--kubeconfig FILE or $KUBECONFIG)");

    /* Nothing at all. Empty strings count as unset. */
    apiserver_inputs none = {
        .apiserver = "", .kubeconfig = "", .kubeconfig_env = ":", .service_host = "", .service_port = ""};
    EXPECT_RESOLVE_ERROR(&none, APISERVER_NOT_CONFIGURED,
                         "no API server configured: pass --apiserver, --apiserver-ca and --apiserver-token-file, or "
                         "--kubeconfig FILE, or set $KUBECONFIG, or run in a pod (KUBERNETES_SERVICE_HOST/PORT)");
    apiserver_inputs zero = {0};
    EXPECT_RESOLVE_ERROR(&zero, APISERVER_NOT_CONFIGURED, "no API server configured");
}

static void test_relative_kubeconfig_path(void)
{
    char cwd[PATH_MAX];
    REQUIRE(getcwd(cwd, sizeof(cwd)) != NULL);
    int moved = chdir(FIXDIR "/certs");
    REQUIRE(moved == 0);
    apiserver_settings s;
    char err[ERR_CAP];
    int rc = resolve_kubeconfig("../token.yaml", NULL, &s, err);
    CHECK_EQ_INT(rc, APISERVER_OK);
    CHECK_STR(s.kubeconfig_path, FIXDIR "/certs/../token.yaml");
    CHECK_STR(s.ca_file, FIXDIR "/certs/../ca.crt");
    apiserver_settings_free(&s);
    moved = chdir(FIXDIR);
    CHECK(moved == 0);
    rc = resolve_kubeconfig("./token.yaml", NULL, &s, err);
    CHECK_EQ_INT(rc, APISERVER_OK);
    CHECK_STR(s.kubeconfig_path, FIX("token.yaml"));
    apiserver_settings_free(&s);
    CHECK(chdir(cwd) == 0);
}

static void test_kubeconfig_file_limits(void)
{
    int rc;
    /* Over 1 MiB: refused before parsing. */
    const char *big = tmp_path("big.yaml");
    FILE *f = fopen(big, "wb");
    REQUIRE(f != NULL);
    for (size_t i = 0; i < KUBECONFIG_MAX_BYTES / 16 + 1; i++) fputs("# padding......\n", f);
    fclose(f);
    apiserver_inputs in = {.kubeconfig = big};
    char want[PATH_MAX + 128];
    snprintf(want, sizeof(want), "kubeconfig %s (from --kubeconfig) is larger than 1048576 bytes", big);
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR, want);

    /* Files the kubeconfig names must be readable. */
    write_file(tmp_path("ca.crt"), "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
    const char *kc_path = tmp_path("missing-key.yaml");
    write_file(kc_path, kc(OK_CLUSTER, "    client-certificate: ca.crt\n    client-key: missing.key\n"));
    in.kubeconfig = kc_path;
    snprintf(want, sizeof(want), "user \"u\": client-key %s/missing.key: No such file or directory", tmp_root);
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR, want);
    write_file(kc_path, kc(OK_CLUSTER, "    client-certificate: nope.crt\n    client-key: ca.crt\n"));
    snprintf(want, sizeof(want), "user \"u\": client-certificate %s/nope.crt: No such file or directory", tmp_root);
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR, want);
    write_file(kc_path, kc(OK_CLUSTER, "    tokenFile: no-token\n"));
    snprintf(want, sizeof(want), "user \"u\": tokenFile %s/no-token: No such file or directory", tmp_root);
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR, want);

    /* A very long path: why stays within its buffer and ends with "...". */
    char deep[512];
    snprintf(deep, sizeof(deep), "%s/", tmp_root);
    for (int i = 0; i < 6; i++) {
        strcat(deep, "a-rather-long-directory-name-to-make-paths-long/");
        mkdir(deep, 0700);
    }
    char deep_kc[600], deep_ca[600];
    snprintf(deep_kc, sizeof(deep_kc), "%skubeconfig", deep);
    snprintf(deep_ca, sizeof(deep_ca), "%sca.crt", deep);
    write_file(deep_ca, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
    write_file(deep_kc, kc(OK_CLUSTER, OK_USER));
    apiserver_settings s;
    char err[ERR_CAP];
    rc = resolve_kubeconfig(deep_kc, NULL, &s, err);
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.ca_file, deep_ca);
    CHECK(strlen(s.why) < sizeof(s.why));
    CHECK_CONTAINS(s.why, "...");
    CHECK_NO_SECRETS(s.why);
    apiserver_settings_free(&s);
}

/* ---- in-cluster ---- */

static void make_sa_dir(const char *dir, bool token, bool ca, const char *ns)
{
    char p[PATH_MAX + 16];
    mkdir(dir, 0700);
    snprintf(p, sizeof(p), "%s/token", dir);
    if (token)
        write_file(p, "tgtest-sa-token-4242");
    else
        unlink(p);
    snprintf(p, sizeof(p), "%s/ca.crt", dir);
    if (ca)
        write_file(p, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
    else
        unlink(p);
    snprintf(p, sizeof(p), "%s/namespace", dir);
    if (ns)
        write_file(p, ns);
    else
        unlink(p);
}

static void test_in_cluster(void)
{
    int rc;
    char dir[128], want[1024];
    snprintf(dir, sizeof(dir), "%s/serviceaccount", tmp_root);
    make_sa_dir(dir, true, true, "team-a\n");
    apiserver_settings s;
    char err[ERR_CAP];
    apiserver_inputs in = {.service_host = "10.96.0.1", .service_port = "443", .serviceaccount_dir = dir};
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_EQ_INT(s.source, APISERVER_FROM_IN_CLUSTER);
    CHECK_STR(s.server_url, "https://10.96.0.1:443");
    char p[256];
    snprintf(p, sizeof(p), "%s/token", dir);
    CHECK_STR(s.token_file, p); /* the path: the kubelet rotates the projected token */
    snprintf(p, sizeof(p), "%s/ca.crt", dir);
    CHECK_STR(s.ca_file, p);
    CHECK(s.token == NULL && s.ca_pem == NULL && s.client_cert_file == NULL && s.client_cert_pem == NULL);
    CHECK_STR(s.namespace_, "team-a");
    CHECK(s.kubeconfig_path == NULL && s.context == NULL);
    snprintf(want, sizeof(want),
             "in-cluster: KUBERNETES_SERVICE_HOST/PORT give https://10.96.0.1:443, token and CA "
             "from %s, namespace "
             "\"team-a\"",
             dir);
    CHECK_STR(s.why, want);
    CHECK_NO_SECRETS(s.why);
    apiserver_settings_free(&s);

    /* IPv6 service address: bracketed. A trailing slash on the directory is harmless. */
    char slashed[160];
    snprintf(slashed, sizeof(slashed), "%s/", dir);
    in.service_host = "fd00:10:96::1";
    in.serviceaccount_dir = slashed;
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.server_url, "https://[fd00:10:96::1]:443");
    snprintf(p, sizeof(p), "%s/token", dir);
    CHECK_STR(s.token_file, p);
    apiserver_settings_free(&s);
    in.service_host = "[fd00::1]";
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.server_url, "https://[fd00::1]:443");
    apiserver_settings_free(&s);
    in.serviceaccount_dir = dir;

    /* No namespace file, or one that is not a namespace name: unknown, not an error. */
    in.service_host = "kubernetes.default.svc";
    make_sa_dir(dir, true, true, NULL);
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK_STR(s.server_url, "https://kubernetes.default.svc:443");
    CHECK(s.namespace_ == NULL);
    CHECK_CONTAINS(s.why, ", namespace unknown (no valid namespace file)");
    apiserver_settings_free(&s);
    make_sa_dir(dir, true, true, "Not A Namespace!\n");
    rc = apiserver_resolve(&in, &s, err, sizeof(err));
    REQUIRE(rc == APISERVER_OK);
    CHECK(s.namespace_ == NULL);
    apiserver_settings_free(&s);

    /* Refusals. */
    make_sa_dir(dir, false, true, "team-a");
    snprintf(want, sizeof(want),
             "in-cluster: service-account token %s/token: No such file or directory (is the token "
             "mounted? "
             "automountServiceAccountToken must not be false)",
             dir);
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR, want);
    make_sa_dir(dir, true, false, "team-a");
    snprintf(want, sizeof(want), "in-cluster: service-account CA %s/ca.crt: No such file or directory", dir);
    EXPECT_RESOLVE_ERROR(&in, APISERVER_ERROR, want);
    make_sa_dir(dir, true, true, "team-a");

    apiserver_inputs half = {.service_host = "10.96.0.1", .serviceaccount_dir = dir};
    EXPECT_RESOLVE_ERROR(&half, APISERVER_ERROR,
                         "in-cluster: KUBERNETES_SERVICE_HOST is set but KUBERNETES_SERVICE_PORT is not");
    half = (apiserver_inputs){.service_port = "443", .serviceaccount_dir = dir};
    EXPECT_RESOLVE_ERROR(&half, APISERVER_ERROR,
                         "in-cluster: KUBERNETES_SERVICE_PORT is set but KUBERNETES_SERVICE_HOST is not");
    static const char *const bad_ports[] = {"https", "0", "65536", "-1", "443 ", "123456"};
    for (size_t i = 0; i < sizeof(bad_ports) / sizeof(bad_ports[0]); i++) {
        apiserver_inputs bp = {.service_host = "10.96.0.1", .service_port = bad_ports[i], .serviceaccount_dir = dir};
        snprintf(want, sizeof(want), "in-cluster: KUBERNETES_SERVICE_PORT \"%s\" is not a port number", bad_ports[i]);
        EXPECT_RESOLVE_ERROR(&bp, APISERVER_ERROR, want);
    }
    static const char *const bad_hosts[] = {"evil.example.com/x", "user@10.0.0.1", "h?x", "[fd00::1", "h h", "[]"};
    for (size_t i = 0; i < sizeof(bad_hosts) / sizeof(bad_hosts[0]); i++) {
        apiserver_inputs bh = {.service_host = bad_hosts[i], .service_port = "443", .serviceaccount_dir = dir};
        snprintf(want, sizeof(want), "in-cluster: KUBERNETES_SERVICE_HOST \"%s\" is not a host name or IP address",
                 bad_hosts[i]);
        EXPECT_RESOLVE_ERROR(&bh, APISERVER_ERROR, want);
    }
    /* Host characters that pass the first check still go through the URL check. */
    apiserver_inputs bh = {.service_host = "fd00::1]", .service_port = "443", .serviceaccount_dir = dir};
    EXPECT_RESOLVE_ERROR(&bh, APISERVER_ERROR, "in-cluster: KUBERNETES_SERVICE_HOST \"fd00::1]\" is not a host");
    bh.service_host = "g::1";
    EXPECT_RESOLVE_ERROR(&bh, APISERVER_ERROR,
                         "in-cluster: KUBERNETES_SERVICE_HOST/PORT give https://[g::1]:443: not a "
                         "valid https://HOST");
    /* A FIFO where the token should be does not hang the check. */
    char fifo_dir[160], fifo[192];
    snprintf(fifo_dir, sizeof(fifo_dir), "%s/fifo-sa", tmp_root);
    make_sa_dir(fifo_dir, false, true, NULL);
    snprintf(fifo, sizeof(fifo), "%s/token", fifo_dir);
    if (mkfifo(fifo, 0600) == 0) {
        apiserver_inputs ff = {.service_host = "10.96.0.1", .service_port = "443", .serviceaccount_dir = fifo_dir};
        apiserver_settings fs;
        char ferr[ERR_CAP];
        CHECK_EQ_INT(apiserver_resolve(&ff, &fs, ferr, sizeof(ferr)), APISERVER_OK);
        apiserver_settings_free(&fs);
    }

    /* The default directory is the real mount point. */
    if (access(APISERVER_DEFAULT_SERVICEACCOUNT_DIR "/token", F_OK) != 0) {
        apiserver_inputs def = {.service_host = "10.96.0.1", .service_port = "443"};
        EXPECT_RESOLVE_ERROR(&def, APISERVER_ERROR,
                             "in-cluster: service-account token " APISERVER_DEFAULT_SERVICEACCOUNT_DIR "/token: ");
    }
}

static void test_inputs_from_env(void)
{
    setenv("KUBECONFIG", "/a:/b", 1);
    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    apiserver_inputs in;
    memset(&in, 0x5a, sizeof(in));
    apiserver_inputs_from_env(&in);
    CHECK_STR(in.kubeconfig_env, "/a:/b");
    CHECK_STR(in.service_host, "10.96.0.1");
    CHECK_STR(in.service_port, "443");
    CHECK_STR(in.serviceaccount_dir, APISERVER_DEFAULT_SERVICEACCOUNT_DIR);
    CHECK(in.apiserver == NULL && in.apiserver_ca == NULL && in.apiserver_token_file == NULL);
    CHECK(in.kubeconfig == NULL && in.context == NULL);
    unsetenv("KUBECONFIG");
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
    apiserver_inputs_from_env(&in);
    CHECK(in.kubeconfig_env == NULL && in.service_host == NULL && in.service_port == NULL);
    CHECK_STR(apiserver_source_name(APISERVER_FROM_FLAGS), "flags");
    CHECK_STR(apiserver_source_name(APISERVER_FROM_KUBECONFIG), "kubeconfig");
    CHECK_STR(apiserver_source_name(APISERVER_FROM_IN_CLUSTER), "in-cluster");
}

/* ---- kubeconfig_parse on inline documents ---- */

static void test_parse_structure_errors(void)
{
    EXPECT_PARSE_ERROR("", NULL, "empty (no clusters, users or contexts)");
    EXPECT_PARSE_ERROR("# only a comment\n", NULL, "empty (no clusters, users or contexts)");
    EXPECT_PARSE_ERROR("---\n", NULL, "empty (no clusters, users or contexts)");
    EXPECT_PARSE_ERROR("- a\n- b\n", NULL, "not a YAML mapping");
    EXPECT_PARSE_ERROR("just text\n", NULL, "not a YAML mapping");
    EXPECT_PARSE_ERROR("a: 1\n---\nb: 2\n", NULL, "more than one YAML document (a kubeconfig is one)");
    EXPECT_PARSE_ERROR("a: [1, 2\n", NULL, "YAML error at line 2, column 1: did not find expected ',' or ']'");
    EXPECT_PARSE_ERROR("a: \"\x01\"\n", NULL, "YAML error at byte 4: control characters are not allowed");
    EXPECT_PARSE_ERROR("kind: Pod\n", NULL, "not a kubeconfig: kind is \"Pod\", expected Config");
    EXPECT_PARSE_ERROR("kind: [Config]\n", NULL, "kubeconfig: kind must be a string (line 1)");
    EXPECT_PARSE_ERROR("apiVersion: v2\nkind: Config\n", NULL,
                       "unsupported kubeconfig apiVersion \"v2\" (expected v1)");
    EXPECT_PARSE_ERROR("x: &a 1\ny: *a\n", NULL, "line 2: YAML aliases (*name) are not supported in a kubeconfig");
    EXPECT_PARSE_ERROR("? [a]\n: b\n", NULL, "line 1: mapping keys must be strings");
    EXPECT_PARSE_ERROR("\"a\\0b\": 1\n", NULL, "line 1: mapping keys must be strings");
    EXPECT_PARSE_ERROR("a: 1\nb: 2\na: 3\n", NULL, "line 3: duplicate key \"a\" (first at line 1)");
    EXPECT_PARSE_ERROR("\"k\\x01\": 1\n\"k\\x01\": 2\n", NULL, "line 2: duplicate key \"k?\" (first at line 1)");
    /* Duplicates are refused at any depth, also in flow style. */
    EXPECT_PARSE_ERROR("users:\n- name: u\n  user: {token: a, token: b}\n", NULL, "line 3: duplicate key \"token\"");

    /* Bounds: nesting, keys per mapping, nodes, bytes. */
    char deep[512] = "a: ";
    for (int i = 0; i < 70; i++) strcat(deep, "[");
    for (int i = 0; i < 70; i++) strcat(deep, "]");
    EXPECT_PARSE_ERROR(deep, NULL, "line 1: YAML nested deeper than 64 levels");
    size_t cap = 1100 * 16;
    char *wide = malloc(cap);
    REQUIRE(wide != NULL);
    wide[0] = '\0';
    size_t used = 0;
    for (int i = 0; i < 1100; i++) used += (size_t)snprintf(wide + used, cap - used, "k%d: 1\n", i);
    EXPECT_PARSE_ERROR(wide, NULL, "line 1025: more than 1024 keys in one mapping");
    free(wide);
    cap = 2 * 200001 + 8;
    char *many = malloc(cap);
    REQUIRE(many != NULL);
    memcpy(many, "a: [", 4);
    used = 4;
    for (int i = 0; i < 200001; i++) {
        many[used++] = '1';
        many[used++] = ',';
    }
    memcpy(many + used, "]\n", 3);
    EXPECT_PARSE_ERROR(many, NULL, "more than 200000 YAML nodes");
    free(many);
    size_t big_len = KUBECONFIG_MAX_BYTES + 1;
    char *big = malloc(big_len);
    REQUIRE(big != NULL);
    memset(big, '#', big_len);
    apiserver_settings s;
    char err[ERR_CAP];
    CHECK_EQ_INT(kubeconfig_parse(big, big_len, NULL, NULL, &s, err, sizeof(err)), -1);
    CHECK_STR(err, "larger than 1048576 bytes");
    CHECK(settings_zero(&s));
    free(big);
    /* err may be NULL or tiny. */
    CHECK_EQ_INT(kubeconfig_parse("- x\n", 4, NULL, NULL, &s, NULL, 0), -1);
    char tiny[8];
    CHECK_EQ_INT(kubeconfig_parse("- x\n", 4, NULL, NULL, &s, tiny, sizeof(tiny)), -1);
    CHECK_STR(tiny, "not a Y");
}

static void test_parse_context_errors(void)
{
    EXPECT_PARSE_ERROR("contexts:\n- name: a\n  context: {cluster: c, user: u}\n- name: b\n  context: {}\n", NULL,
                       "no current-context set; pass --context NAME (available: \"a\", \"b\")");
    EXPECT_PARSE_ERROR("current-context: \"\"\n", NULL,
                       "no current-context set; pass --context NAME (available: none)");
    EXPECT_PARSE_ERROR("current-context: x\n", NULL, "context \"x\" not found (available: none)");
    EXPECT_PARSE_ERROR("contexts: {}\n", "x", "contexts must be a list (line 1)");
    EXPECT_PARSE_ERROR("contexts: [x]\n", "x", "contexts[0] is not a mapping (line 1)");
    EXPECT_PARSE_ERROR("contexts:\n- context: {}\n", "x", "contexts[0] has no name (line 2)");
    EXPECT_PARSE_ERROR("contexts:\n- {name: x, context: {cluster: c, user: u}}\n- {name: x, context: {}}\n", "x",
                       "context \"x\" is defined twice (lines 2 and 3)");
    EXPECT_PARSE_ERROR("contexts:\n- name: x\n", "x", "context \"x\" has no context: mapping (line 2)");
    EXPECT_PARSE_ERROR("contexts:\n- {name: x, context: [a]}\n", "x", "context \"x\" has no context: mapping");
    EXPECT_PARSE_ERROR("contexts:\n- {name: x, context: {user: u}}\n", "x", "context \"x\" names no cluster");
    EXPECT_PARSE_ERROR("contexts:\n- {name: x, context: {cluster: c}}\n", "x", "context \"x\" names no user");
    EXPECT_PARSE_ERROR("contexts:\n- {name: x, context: {cluster: [c], user: u}}\n", "x",
                       "context \"x\": cluster must be a string (line 2)");
    EXPECT_PARSE_ERROR("contexts:\n- {name: x, context: {cluster: c, user: u}}\n", "x",
                       "cluster \"c\" not found (available: none)");
    EXPECT_PARSE_ERROR("contexts:\n- {name: x, context: {cluster: c, user: u}}\n"
                       "clusters:\n- {name: c, cluster: {server: \"https://h\", certificate-authority: /ca}}\n",
                       "x", "user \"u\" not found (available: none)");
    EXPECT_PARSE_ERROR("contexts:\n- {name: x, context: {cluster: c, user: u}}\n"
                       "clusters:\n- {name: c, cluster: {server: \"https://h\", certificate-authority: /ca}}\n"
                       "- {name: c, cluster: {server: \"https://evil\", certificate-authority: /ca}}\n",
                       "x", "cluster \"c\" is defined twice (lines 4 and 5)");
    /* Names are shown sanitised and bounded. */
    EXPECT_PARSE_ERROR("current-context: \"bad\\tname\"\n", NULL, "context \"bad?name\" not found");
    char long_name[200];
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    char want[128];
    snprintf(want, sizeof(want), "context \"%.64s...\" not found", long_name);
    EXPECT_PARSE_ERROR("{}", long_name, want);
}

static void test_parse_cluster(void)
{
    apiserver_settings s;
    /* Normalisation of the server URL. */
    if (PARSE_OK(kc("    server: HTTPS://Host.Example.com:6443///\n    certificate-authority: ca.crt\n", OK_USER), NULL,
                 &s)) {
        CHECK_STR(s.server_url, "https://Host.Example.com:6443");
        CHECK_STR(s.ca_file, "/base/ca.crt"); /* relative to base_dir */
        CHECK_STR(s.why, "context \"c\" (current-context), cluster \"c\" at "
                         "https://Host.Example.com:6443, CA file "
                         "/base/ca.crt, user \"u\" with an inline token");
        apiserver_settings_free(&s);
    }
    if (PARSE_OK(kc("    server: https://h\n    certificate-authority: /etc/k8s/ca.crt\n", OK_USER), NULL, &s)) {
        CHECK_STR(s.server_url, "https://h");
        CHECK_STR(s.ca_file, "/etc/k8s/ca.crt"); /* absolute paths untouched */
        apiserver_settings_free(&s);
    }
    /* base_dir NULL leaves relative paths as written; "/" does not double the slash. */
    const char *doc = kc(OK_CLUSTER, "    tokenFile: t\n");
    char err[ERR_CAP];
    CHECK_EQ_INT(kubeconfig_parse(doc, strlen(doc), NULL, NULL, &s, err, sizeof(err)), 0);
    CHECK_STR(s.ca_file, "ca.crt");
    CHECK_STR(s.token_file, "t");
    apiserver_settings_free(&s);
    CHECK_EQ_INT(kubeconfig_parse(doc, strlen(doc), NULL, "/", &s, err, sizeof(err)), 0);
    CHECK_STR(s.ca_file, "/ca.crt");
    apiserver_settings_free(&s);
    /* insecure-skip-tls-verify false (any YAML spelling) is fine; CA data beats the CA file. */
    if (PARSE_OK(kc("    server: https://h\n    insecure-skip-tls-verify: no\n    "
                    "certificate-authority: a.crt\n"
                    "    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==\n",
                    OK_USER),
                 NULL, &s)) {
        CHECK(s.ca_file == NULL);
        CHECK_STR(s.ca_pem, "-----BEGIN CERTIFICATE-----\n");
        CHECK_EQ_INT(s.ca_pem_len, 28);
        CHECK_CONTAINS(s.why, "CA from certificate-authority-data (over certificate-authority)");
        apiserver_settings_free(&s);
    }
    /* Unpadded and line-wrapped base64 both decode. */
    if (PARSE_OK(kc("    server: https://h\n    certificate-authority-data: |\n      "
                    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FU\n"
                    "      RS0tLS0tCg\n",
                    OK_USER),
                 NULL, &s)) {
        CHECK_STR(s.ca_pem, "-----BEGIN CERTIFICATE-----\n");
        apiserver_settings_free(&s);
    }

    EXPECT_PARSE_ERROR(kc("    certificate-authority: ca.crt\n", OK_USER), NULL, "cluster \"c\" has no server");
    EXPECT_PARSE_ERROR(kc("    server: ~\n    certificate-authority: ca.crt\n", OK_USER), NULL,
                       "cluster \"c\" has no server");
    EXPECT_PARSE_ERROR(kc("    server: {a: b}\n", OK_USER), NULL, "cluster \"c\": server must be a string (line 7)");
    EXPECT_PARSE_ERROR(kc("    server: ftp://h\n", OK_USER), NULL,
                       "cluster \"c\": server ftp://h is not an https://HOST[:PORT] URL");
    EXPECT_PARSE_ERROR(kc("    server: http://h:8080\n", OK_USER), NULL,
                       "cluster \"c\": server http://h:8080 uses plain http://: the API server "
                       "must be https:// (the "
                       "gateway's credential and callers' tokens travel on that connection)");
    EXPECT_PARSE_ERROR(kc("    server: https://admin:hunter2@h:6443\n", OK_USER), NULL,
                       "cluster \"c\": server: user information (user:password@) in the URL is not supported");
    EXPECT_PARSE_ERROR(kc("    server: http://admin:hunter2@h:6443\n", OK_USER), NULL,
                       "cluster \"c\": server (not shown) uses plain http://");
    static const char *const bad_urls[] = {
        "https://",          "https://:6443", "https://h:0",      "https://h:65536",
        "https://h:x",       "https://h:",    "https://[::1",     "https://[]:6443",
        "https://[::1]6443", "https://h h",   "https://h:6443:1", "https://[fe80::1%25eth0]"};
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        char cluster[256], want[256];
        snprintf(cluster, sizeof(cluster), "    server: \"%s\"\n    certificate-authority: ca.crt\n", bad_urls[i]);
        snprintf(want, sizeof(want),
                 "cluster \"c\": server %s: not a valid https://HOST[:PORT] URL (IPv6 addresses go "
                 "in brackets)",
                 bad_urls[i]);
        EXPECT_PARSE_ERROR(kc(cluster, OK_USER), NULL, want);
    }
    EXPECT_PARSE_ERROR(kc("    server: https://h/api?x=1\n", OK_USER), NULL,
                       "cluster \"c\": server https://h/api?x=1: the URL may hold a path prefix "
                       "but no query, fragment "
                       "or spaces");
    EXPECT_PARSE_ERROR(kc("    server: \"https://h/a b\"\n", OK_USER), NULL, "but no query, fragment or spaces");
    EXPECT_PARSE_ERROR(kc("    server: \"https://h\\0\"\n", OK_USER), NULL,
                       "cluster \"c\": server contains a NUL byte");

    EXPECT_PARSE_ERROR(kc("    server: https://h\n    insecure-skip-tls-verify: yes\n    "
                          "certificate-authority: a\n",
                          OK_USER),
                       NULL,
                       "cluster \"c\" sets insecure-skip-tls-verify: true, which tokengate "
                       "refuses: TLS to the API "
                       "server is always verified; give the cluster certificate-authority or "
                       "certificate-authority-data");
    EXPECT_PARSE_ERROR(kc("    server: https://h\n    insecure-skip-tls-verify: \"True\"\n", OK_USER), NULL,
                       "sets insecure-skip-tls-verify: true");
    EXPECT_PARSE_ERROR(kc("    server: https://h\n    insecure-skip-tls-verify: maybe\n", OK_USER), NULL,
                       "cluster \"c\": insecure-skip-tls-verify must be true or false (line 8)");
    EXPECT_PARSE_ERROR(kc("    server: https://h\n    certificate-authority: a\n    tls-server-name: k8s\n", OK_USER),
                       NULL,
                       "cluster \"c\": tls-server-name is not supported (the server URL's host must match its "
                       "certificate)");
    EXPECT_PARSE_ERROR(
        kc("    server: https://h\n    certificate-authority: a\n    proxy-url: http://p:3128\n", OK_USER), NULL,
        "cluster \"c\": proxy-url is not supported (the gateway connects to the API server "
        "directly)");
    EXPECT_PARSE_ERROR(kc("    server: https://h\n", OK_USER), NULL,
                       "cluster \"c\" has neither certificate-authority nor "
                       "certificate-authority-data (TLS to the API "
                       "server is always verified against an explicit CA)");
    EXPECT_PARSE_ERROR(kc("    server: https://h\n    certificate-authority: \"\"\n    "
                          "certificate-authority-data: ~\n",
                          OK_USER),
                       NULL, "has neither certificate-authority nor certificate-authority-data");
    EXPECT_PARSE_ERROR(kc("    server: https://h\n    certificate-authority: [a]\n", OK_USER), NULL,
                       "cluster \"c\": certificate-authority must be a string (line 8)");
    EXPECT_PARSE_ERROR(kc("    server: https://h\n    certificate-authority-data: \"not base64!\"\n", OK_USER), NULL,
                       "cluster \"c\": certificate-authority-data is not valid base64 (line 8; it holds the "
                       "base64 of "
                       "the PEM file)");
    /* The PEM pasted as is (a common mistake) is not base64 either. */
    EXPECT_PARSE_ERROR(kc("    server: https://h\n    certificate-authority-data: |\n"
                          "      -----BEGIN CERTIFICATE-----\n"
                          "      MIIB\n      -----END CERTIFICATE-----\n",
                          OK_USER),
                       NULL, "certificate-authority-data is not valid base64");
    EXPECT_PARSE_ERROR(kc("    server: https://h\n    certificate-authority-data: aGVsbG8=\n", OK_USER), NULL,
                       "cluster \"c\": certificate-authority-data does not decode to a PEM certificate (line 8)");
    static const char *const bad_b64[] = {"QQ=A", "Q", "QQ===", "QQ=", "====", "Q\\0Q="};
    for (size_t i = 0; i < sizeof(bad_b64) / sizeof(bad_b64[0]); i++) {
        char cluster[256];
        snprintf(cluster, sizeof(cluster), "    server: https://h\n    certificate-authority-data: \"%s\"\n",
                 bad_b64[i]);
        EXPECT_PARSE_ERROR(kc(cluster, OK_USER), NULL, "certificate-authority-data is not valid base64");
    }
}

static void test_parse_user(void)
{
    apiserver_settings s;
    /* token beats tokenFile (as documented for kubeconfig), and why says so. */
    if (PARSE_OK(kc(OK_CLUSTER, "    token: tgtest-inline-token-7f3a9c\n    tokenFile: /t\n"), NULL, &s)) {
        CHECK_STR(s.token, "tgtest-inline-token-7f3a9c");
        CHECK(s.token_file == NULL);
        CHECK_CONTAINS(s.why, "with an inline token (over tokenFile)");
        apiserver_settings_free(&s);
    }
    /* Null and empty values are absent. */
    if (PARSE_OK(kc(OK_CLUSTER, "    token: \"\"\n    tokenFile: /t\n    client-certificate: ~\n   "
                                " client-key: null\n"),
                 NULL, &s)) {
        CHECK(s.token == NULL);
        CHECK_STR(s.token_file, "/t");
        CHECK(s.client_cert_file == NULL && s.client_key_file == NULL);
        apiserver_settings_free(&s);
    }
    /* Mixed certificate forms: data for one, file for the other. */
    if (PARSE_OK(kc(OK_CLUSTER, "    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==\n"
                                "    client-key: k.pem\n"),
                 NULL, &s)) {
        CHECK_STR(s.client_cert_pem, "-----BEGIN CERTIFICATE-----\n");
        CHECK_STR(s.client_key_file, "/base/k.pem");
        CHECK(s.client_cert_file == NULL && s.client_key_pem == NULL);
        CHECK_CONTAINS(s.why, "with a client certificate (embedded certificate, key file)");
        apiserver_settings_free(&s);
    }
    /* -data beats the file form. Base64 of "-----BEGIN EC PRIVATE KEY-----\nhunter2\n". */
    if (PARSE_OK(kc(OK_CLUSTER, "    client-certificate: c.pem\n    client-key: k.pem\n"
                                "    client-key-data: LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCmh1bnRlcjIK\n"
                                "    token: tgtest-inline-token-7f3a9c\n"),
                 NULL, &s)) {
        CHECK_STR(s.client_cert_file, "/base/c.pem");
        CHECK(s.client_key_file == NULL);
        CHECK_STR(s.client_key_pem, "-----BEGIN EC PRIVATE KEY-----\nhunter2\n");
        CHECK_EQ_INT(s.client_key_pem_len, 39);
        CHECK_STR(s.token, "tgtest-inline-token-7f3a9c");
        CHECK_CONTAINS(s.why, "with an inline token and a client certificate (certificate file, embedded key)");
        apiserver_settings_free(&s);
    }

    const char *advice = "give the gateway a token, tokenFile or client-certificate/client-key (for example a "
                         "ServiceAccount token)";
    char want[512];
    snprintf(want, sizeof(want), "user \"u\" uses an exec credential plugin, which is not supported: %s", advice);
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    exec: {command: aws}\n    token: tgtest-inline-token-7f3a9c\n"), NULL, want);
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    auth-provider: {name: gcp}\n"), NULL,
                       "user \"u\" uses an auth-provider plugin, which is not supported");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    username: admin\n    password: hunter2\n"), NULL,
                       "user \"u\" uses basic authentication (username/password), which is not supported");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    password: hunter2\n"), NULL, "uses basic authentication");
    static const char *const imp[] = {"as", "as-uid", "as-groups", "as-user-extra"};
    for (size_t i = 0; i < sizeof(imp) / sizeof(imp[0]); i++) {
        char user[128];
        snprintf(user, sizeof(user), OK_USER "    %s: [someone]\n", imp[i]);
        snprintf(want, sizeof(want), "user \"u\" asks for impersonation (%s), which is not supported", imp[i]);
        EXPECT_PARSE_ERROR(kc(OK_CLUSTER, user), NULL, want);
    }
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    {}\n"), NULL,
                       "user \"u\" has no credential: the gateway needs a token, tokenFile or "
                       "client-certificate/client-key to create TokenReviews");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    token: ~\n"), NULL, "user \"u\" has no credential");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    token: \"tgtest-bad token\"\n"), NULL,
                       "user \"u\": token is not a valid bearer token (printable ASCII, no spaces, at most 16383 "
                       "bytes)");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    token: \"tgtest-bad token\\0\"\n"), NULL, "token is not a valid bearer");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    token: {a: hunter2}\n"), NULL,
                       "user \"u\": token must be a string (line 12)");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    tokenFile: \"/t\\0x\"\n"), NULL,
                       "user \"u\": tokenFile contains a NUL byte");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    client-certificate: c.pem\n"), NULL,
                       "user \"u\" has a client certificate but no client key (client-key or client-key-data)");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    client-key-data: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCg==\n"), NULL,
                       "user \"u\" has a client key but no client certificate (client-certificate or "
                       "client-certificate-data)");
    /* A certificate where the key belongs, and the other way round. */
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    client-certificate: c.pem\n"
                                      "    client-key-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==\n"),
                       NULL, "user \"u\": client-key-data does not decode to a PEM private key (line 13)");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    client-certificate-data: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCg==\n"
                                      "    client-key: k.pem\n"),
                       NULL, "user \"u\": client-certificate-data does not decode to a PEM certificate (line 12)");
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    client-certificate: c.pem\n    client-key-data: \"hunter2!\"\n"), NULL,
                       "user \"u\": client-key-data is not valid base64");

    /* The longest accepted token, and one byte more. */
    size_t n = 16383;
    char *user = malloc(n + 64);
    REQUIRE(user != NULL);
    memcpy(user, "    token: ", 11);
    memset(user + 11, 't', n);
    memcpy(user + 11 + n, "\n", 2);
    char *doc = strdup(kc(OK_CLUSTER, "    token: PLACEHOLDER\n"));
    size_t doc_cap = strlen(doc) + n + 64;
    char *full = malloc(doc_cap);
    if (doc && full) {
        char *at = strstr(doc, "    token: PLACEHOLDER\n");
        *at = '\0';
        snprintf(full, doc_cap, "%s%s%s", doc, user, at + strlen("    token: PLACEHOLDER\n"));
        if (PARSE_OK(full, NULL, &s)) {
            CHECK_EQ_INT(strlen(s.token), n);
            apiserver_settings_free(&s);
        }
        user[11 + n] = 't';
        memcpy(user + 12 + n, "\n", 2);
        snprintf(full, doc_cap, "%s%s%s", doc, user, at + strlen("    token: PLACEHOLDER\n"));
        EXPECT_PARSE_ERROR(full, NULL, "token is not a valid bearer token");
    }
    free(full);
    free(doc);
    free(user);
}

/* Every message of every refusal above was already checked for secrets; this one checks
 * the messages most likely to echo a secret, with the secret in every position. */
static void test_secrets_never_echoed(void)
{
    /* A token where a name or key is expected. */
    EXPECT_PARSE_ERROR("current-context: c\ncontexts:\n- {name: c, context: {cluster: c, user: u}}\n"
                       "clusters:\n- {name: c, cluster: {server: \"https://h\", certificate-authority: /a}}\n"
                       "users:\n- name: u\n  user:\n    token: tgtest-inline-token-7f3a9c\n"
                       "    token: tgtest-dev-token-11aa\n",
                       NULL, "duplicate key \"token\"");
    EXPECT_PARSE_ERROR("current-context: c\ncontexts:\n- {name: c, context: {cluster: c, user: u}}\n"
                       "clusters:\n- {name: c, cluster: {server: \"https://h\", certificate-authority: /a}}\n"
                       "users:\n- name: u\n  user: tgtest-inline-token-7f3a9c\n",
                       NULL, "user \"u\" has no user: mapping");
    /* Syntax errors right inside a token or a key. */
    EXPECT_PARSE_ERROR("users:\n- name: u\n  user:\n    token: \"tgtest-inline-token-7f3a9c\n", NULL,
                       "YAML error at line");
    EXPECT_PARSE_ERROR("users:\n- name: u\n  user:\n    client-key-data: LS0tLS1CRUdJTiBQUklWQVRF: x\n", NULL,
                       "YAML error at line 4");
    /* A password in the server URL. */
    EXPECT_PARSE_ERROR(kc("    server: \"https://u:hunter2@h/x y\"\n", OK_USER), NULL, "not supported");
    /* The exec plugin's environment often carries a secret. */
    EXPECT_PARSE_ERROR(kc(OK_CLUSTER, "    exec:\n      env: [{name: T, value: hunter2}]\n"), NULL, "exec");
    /* And the why of a successful embedded-key kubeconfig. */
    apiserver_settings s;
    char err[ERR_CAP];
    if (resolve_kubeconfig(FIX("embedded.yaml"), NULL, &s, err) == APISERVER_OK) CHECK_NO_SECRETS(s.why);
    apiserver_settings_free(&s);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(void)
{
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/tokengate-apiserver-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    unsetenv("KUBECONFIG");
    RUN(test_token_kubeconfig);
    RUN(test_tokenfile_kubeconfig);
    RUN(test_client_cert_kubeconfig);
    RUN(test_embedded_kubeconfig);
    RUN(test_json_kubeconfig);
    RUN(test_several_contexts);
    RUN(test_refused_sample_files);
    RUN(test_precedence_flags);
    RUN(test_precedence_kubeconfig);
    RUN(test_relative_kubeconfig_path);
    RUN(test_kubeconfig_file_limits);
    RUN(test_in_cluster);
    RUN(test_inputs_from_env);
    RUN(test_parse_structure_errors);
    RUN(test_parse_context_errors);
    RUN(test_parse_cluster);
    RUN(test_parse_user);
    RUN(test_secrets_never_echoed);
    nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return UNIT_EXIT();
}
