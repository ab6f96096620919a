/* kubeconfig.c: see kubeconfig.h. */
#include "kubeconfig.h"
#include "apiserver_text.h"
#include "apiserver_url.h"
#include "base64.h"
#include "yaml_tree.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_MAX 16383 /* longest inline token (the API client's credential buffer) */

/* "name1", "name2", ... of the entries of list, cut to fit. */
static void list_names(const ynode *list, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    size_t count = 0;
    for (size_t i = 0; list && list->kind == YN_SEQ && i < list->n; i++) {
        const ynode *name = ynode_map_get(list->items[i], "name");
        if (!name || name->kind != YN_SCALAR) continue;
        shown b;
        int n = snprintf(buf + used, cap - used, "%s\"%s\"", count ? ", " : "",
                         show_n(&b, name->value, name->len, SHOW_NAME_MAX));
        if (n < 0 || (size_t)n >= cap - used) {
            if (cap > 4) memcpy(buf + cap - 4, "...", 4);
            return;
        }
        used += (size_t)n;
        count++;
    }
    if (count == 0) snprintf(buf, cap, "none");
}

/* Finds the entry called name in the top-level list section ("clusters", "users",
 * "contexts") and returns its body mapping (entry[body_key]). */
static const ynode *find_named(const ynode *root, const char *section, const char *kind, const char *name, char *err,
                               size_t cap)
{
    shown b;
    const ynode *list = ynode_map_get(root, section);
    if (!ynode_is_null(list) && list->kind != YN_SEQ) {
        set_err(err, cap, "%s must be a list (line %zu)", section, list->line);
        return NULL;
    }
    const ynode *found = NULL;
    size_t n = ynode_is_null(list) ? 0 : list->n;
    for (size_t i = 0; i < n; i++) {
        const ynode *item = list->items[i];
        if (item->kind != YN_MAP) {
            set_err(err, cap, "%s[%zu] is not a mapping (line %zu)", section, i, item->line);
            return NULL;
        }
        const ynode *item_name = ynode_map_get(item, "name");
        if (ynode_is_null(item_name) || item_name->kind != YN_SCALAR) {
            set_err(err, cap, "%s[%zu] has no name (line %zu)", section, i, item->line);
            return NULL;
        }
        if (strlen(name) != item_name->len || memcmp(item_name->value, name, item_name->len) != 0) continue;
        if (found) {
            set_err(err, cap, "%s \"%s\" is defined twice (lines %zu and %zu)", kind, show_name(&b, name), found->line,
                    item->line);
            return NULL;
        }
        found = item;
    }
    if (!found) {
        char names[256];
        list_names(list, names, sizeof(names));
        set_err(err, cap, "%s \"%s\" not found (available: %s)", kind, show_name(&b, name), names);
        return NULL;
    }
    const ynode *body = ynode_map_get(found, kind);
    if (ynode_is_null(body) || body->kind != YN_MAP) {
        set_err(err, cap, "%s \"%s\" has no %s: mapping (line %zu)", kind, show_name(&b, name), kind, found->line);
        return NULL;
    }
    return body;
}

/* Standard base64 (whitespace ignored, padding optional) into a NUL-terminated buffer. */
static int base64_decode_field(const char *in, size_t len, char **out, size_t *out_len)
{
    size_t cap = BASE64_DECODED_MAX(len) + 1;
    char *buf = malloc(cap);
    if (!buf) return -1;
    long n = base64_decode(in, len, BASE64_SKIP_WHITESPACE, (unsigned char *)buf, cap - 1);
    if (n <= 0) {
        wipe_free(buf, cap);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = (size_t)n;
    return 0;
}

/* Decodes a *-data field and checks it holds the PEM block it should. */
static int decode_pem(const ynode *v, const char *where, const char *key, bool private_key, char **out, size_t *out_len,
                      char *err, size_t cap)
{
    if (base64_decode_field(v->value, v->len, out, out_len) != 0) {
        set_err(err, cap, "%s: %s is not valid base64 (line %zu; it holds the base64 of the PEM file)", where, key,
                v->line);
        return -1;
    }
    bool ok = private_key ? memmem(*out, *out_len, "-----BEGIN ", 11) && memmem(*out, *out_len, "PRIVATE KEY-----", 16)
                          : memmem(*out, *out_len, "-----BEGIN CERTIFICATE-----", 27) != NULL;
    if (!ok) {
        wipe_free(*out, *out_len);
        *out = NULL;
        *out_len = 0;
        set_err(err, cap, "%s: %s does not decode to a PEM %s (line %zu)", where, key,
                private_key ? "private key" : "certificate", v->line);
        return -1;
    }
    return 0;
}

/* A path from the kubeconfig, relative ones taken from base_dir (kubectl does the same). */
static char *resolve_path(const char *base_dir, const ynode *v)
{
    if (!base_dir || !*base_dir || v->value[0] == '/') return dup_n(v->value, v->len);
    size_t bl = strlen(base_dir);
    bool sep = base_dir[bl - 1] != '/';
    char *p = malloc(bl + sep + v->len + 1);
    if (!p) return NULL;
    memcpy(p, base_dir, bl);
    if (sep) p[bl] = '/';
    memcpy(p + bl + sep, v->value, v->len);
    p[bl + sep + v->len] = '\0';
    return p;
}

static bool token_ok(const char *t, size_t len)
{
    if (len == 0 || len > TOKEN_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f) return false;
    return true;
}

static int parse_cluster(const ynode *c, const char *where, const char *base_dir, apiserver_settings *s, char *err,
                         size_t cap)
{
    const ynode *server, *ca, *ca_data, *v;
    int rc = ynode_get_str(c, "server", where, false, &server, err, cap);
    if (rc < 0) return -1;
    if (rc == 0) {
        set_err(err, cap, "%s has no server", where);
        return -1;
    }
    char what[160];
    snprintf(what, sizeof(what), "%s: server", where);
    s->server_url = apiserver_url_normalize(server->value, server->len, what, err, cap);
    if (!s->server_url) return -1;
    rc = ynode_get_bool(c, "insecure-skip-tls-verify", where, err, cap);
    if (rc < 0) return -1;
    if (rc == 1) {
        set_err(err, cap,
                "%s sets insecure-skip-tls-verify: true, which tokengate refuses: TLS to the API "
                "server is always "
                "verified; give the cluster certificate-authority or certificate-authority-data",
                where);
        return -1;
    }
    if ((rc = ynode_get_str(c, "tls-server-name", where, false, &v, err, cap)) != 0) {
        if (rc > 0)
            set_err(err, cap,
                    "%s: tls-server-name is not supported (the server URL's host must match its "
                    "certificate)",
                    where);
        return -1;
    }
    if ((rc = ynode_get_str(c, "proxy-url", where, false, &v, err, cap)) != 0) {
        if (rc > 0)
            set_err(err, cap, "%s: proxy-url is not supported (the gateway connects to the API server directly)",
                    where);
        return -1;
    }
    if (ynode_get_str(c, "certificate-authority-data", where, true, &ca_data, err, cap) < 0 ||
        ynode_get_str(c, "certificate-authority", where, false, &ca, err, cap) < 0)
        return -1;
    if (ca_data) {
        if (decode_pem(ca_data, where, "certificate-authority-data", false, &s->ca_pem, &s->ca_pem_len, err, cap) != 0)
            return -1;
    } else if (ca) {
        s->ca_file = resolve_path(base_dir, ca);
        if (!s->ca_file) {
            set_err(err, cap, "out of memory");
            return -1;
        }
    } else {
        set_err(err, cap,
                "%s has neither certificate-authority nor certificate-authority-data (TLS to the "
                "API server is "
                "always verified against an explicit CA)",
                where);
        return -1;
    }
    return 0;
}

static int parse_user(const ynode *u, const char *where, const char *base_dir, apiserver_settings *s, char *err,
                      size_t cap)
{
    static const struct {
        const char *key, *why;
    } refused[] = {
        {"exec", "uses an exec credential plugin, which is not supported"},
        {"auth-provider", "uses an auth-provider plugin, which is not supported"},
        {"username", "uses basic authentication (username/password), which is not supported"},
        {"password", "uses basic authentication (username/password), which is not supported"},
        {"as", "asks for impersonation (as), which is not supported"},
        {"as-uid", "asks for impersonation (as-uid), which is not supported"},
        {"as-groups", "asks for impersonation (as-groups), which is not supported"},
        {"as-user-extra", "asks for impersonation (as-user-extra), which is not supported"},
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        if (!ynode_is_null(ynode_map_get(u, refused[i].key))) {
            set_err(err, cap,
                    "%s %s: give the gateway a token, tokenFile or client-certificate/client-key "
                    "(for example a "
                    "ServiceAccount token)",
                    where, refused[i].why);
            return -1;
        }
    }
    const ynode *token, *token_file, *cert, *key, *cert_data, *key_data;
    if (ynode_get_str(u, "token", where, true, &token, err, cap) < 0 ||
        ynode_get_str(u, "tokenFile", where, false, &token_file, err, cap) < 0 ||
        ynode_get_str(u, "client-certificate", where, false, &cert, err, cap) < 0 ||
        ynode_get_str(u, "client-key", where, false, &key, err, cap) < 0 ||
        ynode_get_str(u, "client-certificate-data", where, true, &cert_data, err, cap) < 0 ||
        ynode_get_str(u, "client-key-data", where, true, &key_data, err, cap) < 0)
        return -1;
    if (token) {
        if (!token_ok(token->value, token->len)) {
            set_err(err, cap,
                    "%s: token is not a valid bearer token (printable ASCII, no spaces, at most %d "
                    "bytes)",
                    where, TOKEN_MAX);
            return -1;
        }
        s->token = dup_n(token->value, token->len);
        if (!s->token) goto oom;
    } else if (token_file) {
        s->token_file = resolve_path(base_dir, token_file);
        if (!s->token_file) goto oom;
    }
    bool has_cert = cert || cert_data, has_key = key || key_data;
    if (has_cert != has_key) {
        set_err(err, cap, "%s has a client %s but no client %s", where, has_cert ? "certificate" : "key",
                has_cert ? "key (client-key or client-key-data)"
                         : "certificate (client-certificate or client-certificate-data)");
        return -1;
    }
    if (cert_data) {
        if (decode_pem(cert_data, where, "client-certificate-data", false, &s->client_cert_pem, &s->client_cert_pem_len,
                       err, cap) != 0)
            return -1;
    } else if (cert) {
        s->client_cert_file = resolve_path(base_dir, cert);
        if (!s->client_cert_file) goto oom;
    }
    if (key_data) {
        if (decode_pem(key_data, where, "client-key-data", true, &s->client_key_pem, &s->client_key_pem_len, err,
                       cap) != 0)
            return -1;
    } else if (key) {
        s->client_key_file = resolve_path(base_dir, key);
        if (!s->client_key_file) goto oom;
    }
    if (!token && !token_file && !has_cert) {
        set_err(err, cap,
                "%s has no credential: the gateway needs a token, tokenFile or "
                "client-certificate/client-key to "
                "create TokenReviews",
                where);
        return -1;
    }
    return 0;
oom:
    set_err(err, cap, "out of memory");
    return -1;
}

/* The why text of a kubeconfig decision (no secrets: names, paths and the URL only). */
static void kubeconfig_why(apiserver_settings *s, bool context_from_flag, bool token_file_ignored, bool ca_file_ignored)
{
    shown a, b, c;
    why_append(s, "context \"%s\" (%s), cluster \"%s\" at %s", show_name(&a, s->context),
               context_from_flag ? "--context" : "current-context", show_name(&b, s->cluster),
               show_path(&c, s->server_url));
    if (s->ca_pem)
        why_append(s, ", CA from certificate-authority-data%s", ca_file_ignored ? " (over certificate-authority)" : "");
    else
        why_append(s, ", CA file %s", show_path(&a, s->ca_file));
    why_append(s, ", user \"%s\" with ", show_name(&a, s->user));
    const char *sep = "";
    if (s->token) {
        why_append(s, "an inline token%s", token_file_ignored ? " (over tokenFile)" : "");
        sep = " and ";
    } else if (s->token_file) {
        why_append(s, "token file %s", show_path(&a, s->token_file));
        sep = " and ";
    }
    if (s->client_cert_pem || s->client_cert_file)
        why_append(s, "%sa client certificate (%s)", sep,
                   s->client_cert_pem && s->client_key_pem ? "embedded"
                   : s->client_cert_pem                    ? "embedded certificate, key file"
                   : s->client_key_pem                     ? "certificate file, embedded key"
                                                           : "files");
    if (s->namespace_) why_append(s, ", namespace \"%s\"", show_name(&a, s->namespace_));
}

int kubeconfig_parse(const char *yaml_text, size_t len, const char *context, const char *base_dir,
                     apiserver_settings *out, char *err, size_t err_cap)
{
    memset(out, 0, sizeof(*out));
    if (err && err_cap) err[0] = '\0';
    if (len > KUBECONFIG_MAX_BYTES) {
        set_err(err, err_cap, "larger than %d bytes", KUBECONFIG_MAX_BYTES);
        return -1;
    }
    bool empty = false;
    ynode *root = yaml_read(yaml_text, len, &empty, err, err_cap);
    if (!root) {
        if (empty) set_err(err, err_cap, "empty (no clusters, users or contexts)");
        return -1;
    }
    apiserver_settings s;
    memset(&s, 0, sizeof(s));
    s.source = APISERVER_FROM_KUBECONFIG;
    int rc = -1;
    shown b;
    char where[128];
    const ynode *v;
    if (root->kind != YN_MAP) {
        set_err(err, err_cap, ynode_is_null(root) ? "empty (no clusters, users or contexts)" : "not a YAML mapping");
        goto done;
    }
    int got = ynode_get_str(root, "kind", "kubeconfig", false, &v, err, err_cap);
    if (got < 0) goto done;
    if (got > 0 && strcmp(v->value, "Config") != 0) {
        set_err(err, err_cap, "not a kubeconfig: kind is \"%s\", expected Config",
                show_n(&b, v->value, v->len, SHOW_NAME_MAX));
        goto done;
    }
    got = ynode_get_str(root, "apiVersion", "kubeconfig", false, &v, err, err_cap);
    if (got < 0) goto done;
    if (got > 0 && strcmp(v->value, "v1") != 0) {
        set_err(err, err_cap, "unsupported kubeconfig apiVersion \"%s\" (expected v1)",
                show_n(&b, v->value, v->len, SHOW_NAME_MAX));
        goto done;
    }

    /* The context: --context, else current-context. */
    bool from_flag = given(context);
    if (from_flag) {
        s.context = strdup(context);
    } else {
        got = ynode_get_str(root, "current-context", "kubeconfig", false, &v, err, err_cap);
        if (got < 0) goto done;
        if (got == 0) {
            char names[256];
            list_names(ynode_map_get(root, "contexts"), names, sizeof(names));
            set_err(err, err_cap, "no current-context set; pass --context NAME (available: %s)", names);
            goto done;
        }
        s.context = dup_n(v->value, v->len);
    }
    if (!s.context) goto oom;
    const ynode *ctx = find_named(root, "contexts", "context", s.context, err, err_cap);
    if (!ctx) goto done;
    snprintf(where, sizeof(where), "context \"%s\"", show_name(&b, s.context));
    const ynode *cluster_name, *user_name, *ns;
    if (ynode_get_str(ctx, "cluster", where, false, &cluster_name, err, err_cap) < 0 ||
        ynode_get_str(ctx, "user", where, false, &user_name, err, err_cap) < 0 ||
        ynode_get_str(ctx, "namespace", where, false, &ns, err, err_cap) < 0)
        goto done;
    if (!cluster_name || !user_name) {
        set_err(err, err_cap, "%s names no %s", where, !cluster_name ? "cluster" : "user");
        goto done;
    }
    s.cluster = dup_n(cluster_name->value, cluster_name->len);
    s.user = dup_n(user_name->value, user_name->len);
    if (ns) s.namespace_ = dup_n(ns->value, ns->len);
    if (!s.cluster || !s.user || (ns && !s.namespace_)) goto oom;

    const ynode *cluster = find_named(root, "clusters", "cluster", s.cluster, err, err_cap);
    if (!cluster) goto done;
    snprintf(where, sizeof(where), "cluster \"%s\"", show_name(&b, s.cluster));
    if (parse_cluster(cluster, where, base_dir, &s, err, err_cap) != 0) goto done;

    const ynode *user = find_named(root, "users", "user", s.user, err, err_cap);
    if (!user) goto done;
    snprintf(where, sizeof(where), "user \"%s\"", show_name(&b, s.user));
    if (parse_user(user, where, base_dir, &s, err, err_cap) != 0) goto done;

    kubeconfig_why(&s, from_flag, s.token && !ynode_is_null(ynode_map_get(user, "tokenFile")),
                   s.ca_pem && !ynode_is_null(ynode_map_get(cluster, "certificate-authority")));
    rc = 0;
    goto done;
oom:
    set_err(err, err_cap, "out of memory");
done:
    ynode_free(root);
    if (rc == 0) {
        *out = s;
    } else {
        apiserver_settings_free(&s);
    }
    return rc;
}
