/* fuzz_kubeconfig: kubeconfig_parse (core/kubeconfig.h) on arbitrary kubeconfig
 * text (an exact-size heap copy, not NUL-terminated).
 *
 * Each input is parsed with base_dir "/etc/tg" and the current-context, then again with
 * base_dir NULL, and, when the first parse succeeded, with its context named explicitly.
 *
 * Invariants (abort on violation):
 *  - the result is 0 or -1 and does not depend on base_dir; err is NUL-terminated; on -1
 *    it is not empty and *out is all zeroes;
 *  - on 0: source is KUBECONFIG, kubeconfig_path is NULL, context/cluster/user are set;
 *    server_url is https://, a non-empty authority without '@', then only printable
 *    ASCII without spaces, '?' or '#', and no trailing '/'; exactly one of ca_file and
 *    ca_pem; at most one of token and token_file; a client certificate and key both or
 *    neither, each as a file or PEM, and some credential; every *_pem_len matches a NUL
 *    at that position; an inline token is printable ASCII without spaces; with base_dir
 *    every path is absolute and, without, the path as written is the resolved one's tail;
 *  - secrets stay out of `why` (NUL-terminated): it shows neither the inline token (when
 *    16 bytes or longer, or marked "tgsecret") nor the client key PEM, unless a field it
 *    may quote (a name, the server, a path) holds the same text;
 *  - naming the chosen context explicitly gives the same server, credential kind, cluster
 *    and user;
 *  - apiserver_settings_free leaves the struct all zeroes. */
#include "fuzz_common.h"
#include "kubeconfig.h"

#define ERR_CAP 512

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return false;
    return true;
}

static bool eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void check_server(const char *url)
{
    FUZZ_CHECK(url && strncmp(url, "https://", 8) == 0);
    const char *auth = url + 8;
    size_t len = strlen(url);
    const char *slash = strchr(auth, '/');
    size_t auth_len = slash ? (size_t)(slash - auth) : strlen(auth);
    FUZZ_CHECK(auth_len > 0 && memchr(auth, '@', auth_len) == NULL);
    for (const char *p = auth; *p; p++) FUZZ_CHECK(*p > 0x20 && *p < 0x7f && *p != '?' && *p != '#');
    FUZZ_CHECK(url[len - 1] != '/');
}

/* resolved is the path with base_dir, as_written the one without. */
static void check_path(const char *resolved, const char *as_written)
{
    FUZZ_CHECK((resolved == NULL) == (as_written == NULL));
    if (!resolved) return;
    FUZZ_CHECK(resolved[0] == '/');
    if (as_written[0] == '/') {
        FUZZ_CHECK(strcmp(resolved, as_written) == 0);
    } else {
        size_t rl = strlen(resolved), wl = strlen(as_written);
        FUZZ_CHECK(rl == strlen("/etc/tg/") + wl && strncmp(resolved, "/etc/tg/", 8) == 0 &&
                   strcmp(resolved + 8, as_written) == 0);
    }
}

static void check_pem(const char *pem, size_t len)
{
    if (pem) {
        FUZZ_CHECK(len > 0 && pem[len] == '\0');
    } else {
        FUZZ_CHECK(len == 0);
    }
}

/* Seeds and the dictionary put this marker in tokens: `why` may show it only when a
 * field it legitimately quotes (a name, the server, a path) holds it too. */
#define SECRET_MARKER "tgsecret"

/* strstr without libFuzzer's strstr hook, which would feed `why` back into the inputs
 * and make the fuzzer copy message words into tokens. */
static bool contains(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] == needle[i]) i++;
        if (i == n) return true;
    }
    return n == 0;
}

static bool public_fields_contain(const apiserver_settings *s, const char *needle)
{
    const char *fields[] = {s->context,    s->cluster,          s->user,
                            s->namespace_, s->server_url,       s->ca_file,
                            s->token_file, s->client_cert_file, s->client_key_file};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (fields[i] && contains(fields[i], needle)) return true;
    return false;
}

static void check_settings(const apiserver_settings *s, const apiserver_settings *plain)
{
    FUZZ_CHECK(s->source == APISERVER_FROM_KUBECONFIG);
    FUZZ_CHECK(s->kubeconfig_path == NULL);
    FUZZ_CHECK(s->context && s->cluster && s->user);
    check_server(s->server_url);
    FUZZ_CHECK((s->ca_file != NULL) + (s->ca_pem != NULL) == 1);
    FUZZ_CHECK(!(s->token && s->token_file));
    bool cert = s->client_cert_file || s->client_cert_pem, key = s->client_key_file || s->client_key_pem;
    FUZZ_CHECK(cert == key);
    FUZZ_CHECK(!(s->client_cert_file && s->client_cert_pem) && !(s->client_key_file && s->client_key_pem));
    FUZZ_CHECK(s->token || s->token_file || cert);
    check_pem(s->ca_pem, s->ca_pem_len);
    check_pem(s->client_cert_pem, s->client_cert_pem_len);
    check_pem(s->client_key_pem, s->client_key_pem_len);
    if (s->token) {
        FUZZ_CHECK(s->token[0] != '\0');
        for (const char *p = s->token; *p; p++) FUZZ_CHECK(*p > 0x20 && *p < 0x7f);
    }

    FUZZ_CHECK(memchr(s->why, '\0', sizeof(s->why)) != NULL);
    if (s->token && contains(s->token, SECRET_MARKER) && contains(s->why, SECRET_MARKER))
        FUZZ_CHECK(public_fields_contain(s, SECRET_MARKER));
    if (s->token && strlen(s->token) >= 16 && contains(s->why, s->token))
        FUZZ_CHECK(public_fields_contain(s, s->token));
    if (s->client_key_pem && strlen(s->client_key_pem) >= 16 && contains(s->why, s->client_key_pem))
        FUZZ_CHECK(public_fields_contain(s, s->client_key_pem));

    /* base_dir only changes relative paths. */
    FUZZ_CHECK(eq(s->server_url, plain->server_url) && eq(s->token, plain->token));
    FUZZ_CHECK(eq(s->context, plain->context) && eq(s->cluster, plain->cluster) && eq(s->user, plain->user));
    FUZZ_CHECK(eq(s->namespace_, plain->namespace_));
    check_path(s->ca_file, plain->ca_file);
    check_path(s->token_file, plain->token_file);
    check_path(s->client_cert_file, plain->client_cert_file);
    check_path(s->client_key_file, plain->client_key_file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_copy_exact(data, size);
    apiserver_settings s, plain, named;
    char err[ERR_CAP], err2[ERR_CAP];
    memset(err, 0x5a, sizeof(err));
    int rc = kubeconfig_parse(text, size, NULL, "/etc/tg", &s, err, sizeof(err));
    FUZZ_CHECK(rc == 0 || rc == -1);
    FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    int rc2 = kubeconfig_parse(text, size, NULL, NULL, &plain, err2, sizeof(err2));
    FUZZ_CHECK(rc2 == rc);
    if (rc != 0) {
        FUZZ_CHECK(err[0] != '\0');
        FUZZ_CHECK(strcmp(err, err2) == 0);
        FUZZ_CHECK(all_zero(&s, sizeof(s)) && all_zero(&plain, sizeof(plain)));
    } else {
        check_settings(&s, &plain);
        char *context = fuzz_copy_cstr((const uint8_t *)s.context, strlen(s.context));
        FUZZ_CHECK(kubeconfig_parse(text, size, context, "/etc/tg", &named, err2, sizeof(err2)) == 0);
        FUZZ_CHECK(eq(named.server_url, s.server_url) && eq(named.token, s.token) &&
                   eq(named.token_file, s.token_file) && eq(named.ca_file, s.ca_file));
        FUZZ_CHECK(eq(named.cluster, s.cluster) && eq(named.user, s.user) && eq(named.context, s.context));
        FUZZ_CHECK(named.ca_pem_len == s.ca_pem_len && named.client_key_pem_len == s.client_key_pem_len);
        apiserver_settings_free(&named);
        FUZZ_CHECK(all_zero(&named, sizeof(named)));
        free(context);
    }
    apiserver_settings_free(&s);
    apiserver_settings_free(&plain);
    FUZZ_CHECK(all_zero(&s, sizeof(s)) && all_zero(&plain, sizeof(plain)));
    free(text);
    return 0;
}
