/* apiserver_config.c: the choice of the API server and the gateway's credential — explicit
 * flags, a kubeconfig file or the in-cluster service-account mount, in the order
 * apiserver_config.h gives — and the files that choice reads. The kubeconfig's schema is
 * kubeconfig.c's, its YAML yaml_tree.c's, the URL rule apiserver_url.c's and the TLS
 * material check apiserver_tls_check.c's. Nothing here touches the network. */
#include "apiserver_config.h"
#include "apiserver_text.h"
#include "apiserver_url.h"
#include "kubeconfig.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAMESPACE_FILE_MAX 256 /* the in-cluster namespace file is a DNS label */

void apiserver_settings_free(apiserver_settings *s)
{
    if (!s) return;
    wipe_free(s->token, s->token ? strlen(s->token) : 0);
    wipe_free(s->client_key_pem, s->client_key_pem_len);
    wipe_free(s->client_cert_pem, s->client_cert_pem_len);
    wipe_free(s->ca_pem, s->ca_pem_len);
    free(s->server_url);
    free(s->ca_file);
    free(s->token_file);
    free(s->client_cert_file);
    free(s->client_key_file);
    free(s->namespace_);
    free(s->kubeconfig_path);
    free(s->context);
    free(s->cluster);
    free(s->user);
    OPENSSL_cleanse(s, sizeof(*s));
}

const char *apiserver_source_name(apiserver_source source)
{
    switch (source) {
    case APISERVER_FROM_FLAGS: return "flags";
    case APISERVER_FROM_KUBECONFIG: return "kubeconfig";
    case APISERVER_FROM_IN_CLUSTER: return "in-cluster";
    }
    return "unknown";
}

/* ---- files ---- */

/* Checks that path is a readable file (not a directory). Reports "<what> <path>: <why>". */
static int check_readable(const char *what, const char *path, char *err, size_t cap)
{
    shown b;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* O_NONBLOCK: a FIFO must not hang us */
    if (fd < 0) {
        set_err(err, cap, "%s %s: %s", what, show_path(&b, path), strerror(errno));
        return -1;
    }
    struct stat st;
    int rc = fstat(fd, &st);
    int saved = errno;
    close(fd);
    if (rc != 0 || S_ISDIR(st.st_mode)) {
        set_err(err, cap, "%s %s: %s", what, show_path(&b, path), rc != 0 ? strerror(saved) : "is a directory");
        return -1;
    }
    return 0;
}

/* Reads a whole file of at most max bytes into a NUL-terminated malloc'd buffer. Returns 0,
 * or an errno value (EFBIG when larger than max). */
static int read_file(const char *path, size_t max, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return e;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return EISDIR;
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max) {
        close(fd);
        return EFBIG;
    }
    char *buf = malloc(max + 2);
    if (!buf) {
        close(fd);
        return ENOMEM;
    }
    size_t len = 0;
    while (len <= max) {
        ssize_t n = read(fd, buf + len, max + 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            wipe_free(buf, len);
            return e;
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    if (len > max) {
        wipe_free(buf, len);
        return EFBIG;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

/* ---- the decision ---- */

static int resolve_flags(const apiserver_inputs *in, apiserver_settings *s, char *err, size_t cap)
{
    bool have[3] = {given(in->apiserver), given(in->apiserver_ca), given(in->apiserver_token_file)};
    static const char *const names[3] = {"--apiserver", "--apiserver-ca", "--apiserver-token-file"};
    if (!have[0] || !have[1] || !have[2]) {
        char missing[96] = "";
        for (int i = 0; i < 3; i++)
            if (!have[i]) {
                if (missing[0]) strcat(missing, " and ");
                strcat(missing, names[i]);
            }
        set_err(err, cap,
                "%s missing: --apiserver, --apiserver-ca and --apiserver-token-file are used "
                "together (or use "
                "--kubeconfig, or in-cluster configuration)",
                missing);
        return -1;
    }
    s->source = APISERVER_FROM_FLAGS;
    s->server_url = apiserver_url_normalize(in->apiserver, strlen(in->apiserver), "--apiserver", err, cap);
    if (!s->server_url) return -1;
    if (check_readable("--apiserver-ca", in->apiserver_ca, err, cap) != 0 ||
        check_readable("--apiserver-token-file", in->apiserver_token_file, err, cap) != 0)
        return -1;
    s->ca_file = strdup(in->apiserver_ca);
    s->token_file = strdup(in->apiserver_token_file);
    if (!s->ca_file || !s->token_file) {
        set_err(err, cap, "out of memory");
        return -1;
    }
    shown a, b, c;
    why_append(s, "explicit flags: --apiserver %s, --apiserver-ca %s, --apiserver-token-file %s",
               show_path(&a, s->server_url), show_path(&b, s->ca_file), show_path(&c, s->token_file));
    return 0;
}

/* The absolute form of path (relative to the working directory), or NULL. */
static char *absolute_path(const char *path)
{
    if (path[0] == '/') return strdup(path);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd))) return strdup(path);
    size_t cl = strlen(cwd), pl = strlen(path);
    while (pl >= 2 && path[0] == '.' && path[1] == '/') {
        path += 2;
        pl -= 2;
        while (*path == '/') {
            path++;
            pl--;
        }
    }
    char *p = malloc(cl + 1 + pl + 1);
    if (!p) return NULL;
    memcpy(p, cwd, cl);
    size_t o = cl;
    if (o == 0 || p[o - 1] != '/') p[o++] = '/';
    memcpy(p + o, path, pl + 1);
    return p;
}

static int resolve_kubeconfig(const char *path, const char *origin, const char *context, apiserver_settings *s,
                              char *err, size_t cap)
{
    shown a;
    char *abs = absolute_path(path);
    if (!abs) {
        set_err(err, cap, "out of memory");
        return -1;
    }
    char *text = NULL;
    size_t len = 0;
    int e = read_file(abs, KUBECONFIG_MAX_BYTES, &text, &len);
    if (e != 0) {
        if (e == EFBIG)
            set_err(err, cap, "kubeconfig %s (from %s) is larger than %d bytes", show_path(&a, abs), origin,
                    KUBECONFIG_MAX_BYTES);
        else
            set_err(err, cap, "kubeconfig %s (from %s): %s", show_path(&a, abs), origin, strerror(e));
        free(abs);
        return -1;
    }
    char *slash = strrchr(abs, '/');
    char *dir = dup_n(abs, slash == abs ? 1 : (size_t)(slash - abs));
    char perr[400];
    int rc = dir ? kubeconfig_parse(text, len, context, dir, s, perr, sizeof(perr)) : -1;
    if (!dir) snprintf(perr, sizeof(perr), "out of memory");
    wipe_free(text, len);
    free(dir);
    if (rc == 0) {
        struct {
            const char *path, *what;
        } files[] = {
            {s->ca_file, "certificate-authority"},
            {s->token_file, "tokenFile"},
            {s->client_cert_file, "client-certificate"},
            {s->client_key_file, "client-key"},
        };
        for (size_t i = 0; rc == 0 && i < sizeof(files) / sizeof(files[0]); i++) {
            if (!files[i].path) continue;
            char what[160];
            shown b;
            snprintf(what, sizeof(what), "%s \"%s\": %s", i == 0 ? "cluster" : "user",
                     show_name(&b, i == 0 ? s->cluster : s->user), files[i].what);
            rc = check_readable(what, files[i].path, perr, sizeof(perr));
        }
    }
    if (rc != 0) {
        set_err(err, cap, "kubeconfig %s (from %s): %s", show_path(&a, abs), origin, perr);
        apiserver_settings_free(s);
        free(abs);
        return -1;
    }
    s->kubeconfig_path = abs;
    /* Prefix the parser's why with where the file came from. */
    char tail[sizeof(s->why)];
    memcpy(tail, s->why, sizeof(tail));
    s->why[0] = '\0';
    why_append(s, "kubeconfig %s (from %s): %s", show_path(&a, abs), origin, tail);
    return 0;
}

static bool dns_label_ok(const char *s, size_t len)
{
    if (len == 0 || len > 253) return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '.')) return false;
    return true;
}

static int resolve_in_cluster(const apiserver_inputs *in, const char *sa_dir, apiserver_settings *s, char *err,
                              size_t cap)
{
    shown a, b;
    if (!given(in->service_host) || !given(in->service_port)) {
        set_err(err, cap, "in-cluster: %s is set but %s is not",
                given(in->service_host) ? "KUBERNETES_SERVICE_HOST" : "KUBERNETES_SERVICE_PORT",
                given(in->service_host) ? "KUBERNETES_SERVICE_PORT" : "KUBERNETES_SERVICE_HOST");
        return -1;
    }
    if (!apiserver_url_port_ok(in->service_port, strlen(in->service_port))) {
        set_err(err, cap, "in-cluster: KUBERNETES_SERVICE_PORT \"%s\" is not a port number",
                show_name(&a, in->service_port));
        return -1;
    }
    /* A host name, an IPv4 address or an IPv6 address (bare or bracketed): nothing that
     * could smuggle a path, user information or a second port into the URL. */
    const char *h = in->service_host;
    size_t hl = strlen(h);
    bool bracketed = hl > 2 && h[0] == '[' && h[hl - 1] == ']';
    bool host_ok = hl > 0;
    for (size_t i = bracketed ? 1 : 0; host_ok && i < (bracketed ? hl - 1 : hl); i++)
        host_ok = apiserver_url_host_char(h[i]) || h[i] == ':';
    if (!host_ok) {
        set_err(err, cap, "in-cluster: KUBERNETES_SERVICE_HOST \"%s\" is not a host name or IP address",
                show_name(&a, h));
        return -1;
    }
    bool v6 = strchr(h, ':') && !bracketed;
    char url[512];
    int n = snprintf(url, sizeof(url), "https://%s%s%s:%s", v6 ? "[" : "", in->service_host, v6 ? "]" : "",
                     in->service_port);
    if (n < 0 || (size_t)n >= sizeof(url)) {
        set_err(err, cap, "in-cluster: KUBERNETES_SERVICE_HOST is too long");
        return -1;
    }
    s->source = APISERVER_FROM_IN_CLUSTER;
    s->server_url = apiserver_url_normalize(url, (size_t)n, "in-cluster: KUBERNETES_SERVICE_HOST/PORT give", err, cap);
    if (!s->server_url) return -1;
    size_t dl = strlen(sa_dir);
    while (dl > 1 && sa_dir[dl - 1] == '/') dl--;
    if (asprintf(&s->token_file, "%.*s/token", (int)dl, sa_dir) < 0) s->token_file = NULL;
    if (asprintf(&s->ca_file, "%.*s/ca.crt", (int)dl, sa_dir) < 0) s->ca_file = NULL;
    char *ns_path = NULL;
    if (asprintf(&ns_path, "%.*s/namespace", (int)dl, sa_dir) < 0) ns_path = NULL;
    if (!s->token_file || !s->ca_file || !ns_path) {
        free(ns_path);
        set_err(err, cap, "out of memory");
        return -1;
    }
    char msg[400];
    if (check_readable("service-account token", s->token_file, msg, sizeof(msg)) != 0 ||
        check_readable("service-account CA", s->ca_file, msg, sizeof(msg)) != 0) {
        set_err(err, cap, "in-cluster: %s (is the token mounted? automountServiceAccountToken must not be false)", msg);
        free(ns_path);
        return -1;
    }
    char *ns = NULL;
    size_t ns_len = 0;
    if (read_file(ns_path, NAMESPACE_FILE_MAX, &ns, &ns_len) == 0) {
        while (ns_len &&
               (ns[ns_len - 1] == '\n' || ns[ns_len - 1] == '\r' || ns[ns_len - 1] == ' ' || ns[ns_len - 1] == '\t'))
            ns[--ns_len] = '\0';
        if (dns_label_ok(ns, ns_len)) {
            s->namespace_ = ns;
            ns = NULL;
        }
        free(ns);
    }
    free(ns_path);
    why_append(s, "in-cluster: KUBERNETES_SERVICE_HOST/PORT give %s, token and CA from %s",
               show_path(&a, s->server_url), show_n(&b, sa_dir, dl, SHOW_PATH_MAX));
    if (s->namespace_)
        why_append(s, ", namespace \"%s\"", show_name(&a, s->namespace_));
    else
        why_append(s, ", namespace unknown (no valid namespace file)");
    return 0;
}

/* The first non-empty path of a colon-separated $KUBECONFIG; *count = how many non-empty. */
static char *first_kubeconfig_path(const char *env, size_t *count)
{
    *count = 0;
    if (!env) return NULL;
    char *first = NULL;
    const char *p = env;
    for (;;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        if (len) {
            if (!first) first = dup_n(p, len);
            (*count)++;
        }
        if (!colon) break;
        p = colon + 1;
    }
    return first;
}

void apiserver_inputs_from_env(apiserver_inputs *in)
{
    memset(in, 0, sizeof(*in));
    in->kubeconfig_env = getenv("KUBECONFIG");
    in->service_host = getenv("KUBERNETES_SERVICE_HOST");
    in->service_port = getenv("KUBERNETES_SERVICE_PORT");
    in->serviceaccount_dir = APISERVER_DEFAULT_SERVICEACCOUNT_DIR;
}

int apiserver_resolve(const apiserver_inputs *in, apiserver_settings *out, char *err, size_t err_cap)
{
    memset(out, 0, sizeof(*out));
    if (err && err_cap) err[0] = '\0';
    bool flags = given(in->apiserver) || given(in->apiserver_ca) || given(in->apiserver_token_file);
    bool in_cluster = given(in->service_host) || given(in->service_port);
    size_t env_count = 0;
    char *env_path = first_kubeconfig_path(in->kubeconfig_env, &env_count);
    const char *sa_dir = given(in->serviceaccount_dir) ? in->serviceaccount_dir : APISERVER_DEFAULT_SERVICEACCOUNT_DIR;
    shown a;
    int rc;
    if (given(in->context) && !given(in->kubeconfig) && !env_path) {
        set_err(err, err_cap, "--context %s needs a kubeconfig (--kubeconfig FILE or $KUBECONFIG)",
                show_name(&a, in->context));
        rc = APISERVER_ERROR;
    } else if (flags) {
        rc = resolve_flags(in, out, err, err_cap) == 0 ? APISERVER_OK : APISERVER_ERROR;
        if (rc == APISERVER_OK && (given(in->kubeconfig) || env_path || in_cluster)) {
            why_append(out, "; ignored (explicit flags take precedence):%s%s%s%s",
                       given(in->kubeconfig) ? " --kubeconfig" : "", given(in->context) ? " --context" : "",
                       env_path ? " $KUBECONFIG" : "", in_cluster ? " in-cluster environment" : "");
        }
    } else if (given(in->kubeconfig)) {
        rc = resolve_kubeconfig(in->kubeconfig, "--kubeconfig", in->context, out, err, err_cap) == 0 ? APISERVER_OK
                                                                                                     : APISERVER_ERROR;
        if (rc == APISERVER_OK && (env_path || in_cluster))
            why_append(out, "; ignored (--kubeconfig takes precedence):%s%s", env_path ? " $KUBECONFIG" : "",
                       in_cluster ? " in-cluster environment" : "");
    } else if (env_path) {
        rc = resolve_kubeconfig(env_path, "$KUBECONFIG", in->context, out, err, err_cap) == 0 ? APISERVER_OK
                                                                                              : APISERVER_ERROR;
        if (rc == APISERVER_OK && env_count > 1)
            why_append(out, "; only the first of the %zu paths in $KUBECONFIG is read (no merging)", env_count);
        if (rc == APISERVER_OK && in_cluster)
            why_append(out, "; ignored ($KUBECONFIG takes precedence): in-cluster environment");
    } else if (in_cluster) {
        rc = resolve_in_cluster(in, sa_dir, out, err, err_cap) == 0 ? APISERVER_OK : APISERVER_ERROR;
    } else {
        set_err(err, err_cap,
                "no API server configured: pass --apiserver, --apiserver-ca and "
                "--apiserver-token-file, or "
                "--kubeconfig FILE, or set $KUBECONFIG, or run in a pod "
                "(KUBERNETES_SERVICE_HOST/PORT)");
        rc = APISERVER_NOT_CONFIGURED;
    }
    free(env_path);
    if (rc != APISERVER_OK) apiserver_settings_free(out);
    return rc;
}
