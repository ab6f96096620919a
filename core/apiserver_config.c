/* apiserver_config.c: the API server decision (explicit flags, kubeconfig, in-cluster) and
 * a small kubeconfig reader on libyaml's event API. Nothing here touches the network. */
#include "apiserver_config.h"
#include "base64.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define YAML_MAX_DEPTH 64      /* nesting deeper than this is refused */
#define YAML_MAX_NODES 200000  /* scalars + mappings + sequences in one kubeconfig */
#define YAML_MAX_MAP_KEYS 1024 /* keys in one mapping (duplicate check is quadratic) */
#define SHOW_NAME_MAX 64       /* longest name quoted in a message */
#define SHOW_PATH_MAX 200      /* longest path or URL quoted in a message */
#define TOKEN_MAX 16383        /* longest inline token (the API client's credential buffer) */
#define NAMESPACE_FILE_MAX 256 /* the in-cluster namespace file is a DNS label */

/* ---- small helpers ---- */

static void set_err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

static void why_append(apiserver_settings *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void why_append(apiserver_settings *s, const char *fmt, ...)
{
    size_t used = strnlen(s->why, sizeof(s->why));
    if (used + 1 >= sizeof(s->why))
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->why + used, sizeof(s->why) - used, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= sizeof(s->why) - used)
        memcpy(s->why + sizeof(s->why) - 4, "...", 4);
}

/* A printable copy of text for messages: non-ASCII and control bytes become '?', and text
 * longer than max is cut with "...". Names and paths only: never call it on a secret. */
typedef struct shown {
    char s[SHOW_PATH_MAX + 4];
} shown;

static const char *show_n(shown *b, const char *text, size_t len, size_t max)
{
    if (max > SHOW_PATH_MAX)
        max = SHOW_PATH_MAX;
    size_t o = 0;
    for (size_t i = 0; i < len && o < max; i++) {
        unsigned char c = (unsigned char)text[i];
        b->s[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (len > max) {
        memcpy(b->s + o, "...", 3);
        o += 3;
    }
    b->s[o] = '\0';
    return b->s;
}

static const char *show_name(shown *b, const char *text)
{
    return show_n(b, text, strlen(text), SHOW_NAME_MAX);
}

static const char *show_path(shown *b, const char *text)
{
    return show_n(b, text, strlen(text), SHOW_PATH_MAX);
}

static bool given(const char *s)
{
    return s && *s;
}

static void wipe_free(char *p, size_t len)
{
    if (!p)
        return;
    OPENSSL_cleanse(p, len);
    free(p);
}

static char *dup_n(const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (!p)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void apiserver_settings_free(apiserver_settings *s)
{
    if (!s)
        return;
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
    case APISERVER_FROM_FLAGS:
        return "flags";
    case APISERVER_FROM_KUBECONFIG:
        return "kubeconfig";
    case APISERVER_FROM_IN_CLUSTER:
        return "in-cluster";
    }
    return "unknown";
}

/* ---- server URL ---- */

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

static bool port_ok(const char *p, size_t len)
{
    if (len == 0 || len > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

/* Checks an API server URL and returns a normalised copy (lower-case scheme, no trailing
 * slash): https://HOST[:PORT][/path-prefix], HOST a name, an IPv4 address or a bracketed
 * IPv6 address. The URL is quoted in messages only when it cannot carry a password (no
 * '@'). Returns NULL with a message on err. */
static char *normalize_server(const char *url, size_t len, const char *what, char *err, size_t cap)
{
    bool has_at = memchr(url, '@', len) != NULL;
    shown b;
    const char *quoted = has_at ? "(not shown)" : show_n(&b, url, len, SHOW_PATH_MAX);
    if (memchr(url, '\0', len)) {
        set_err(err, cap, "%s contains a NUL byte", what);
        return NULL;
    }
    if (len >= 7 && strncasecmp(url, "http://", 7) == 0) {
        set_err(err, cap,
                "%s %s uses plain http://: the API server must be https:// (the gateway's "
                "credential and "
                "callers' tokens travel on that connection)",
                what, quoted);
        return NULL;
    }
    if (len < 8 || strncasecmp(url, "https://", 8) != 0) {
        set_err(err, cap, "%s %s is not an https://HOST[:PORT] URL", what, quoted);
        return NULL;
    }
    const char *auth = url + 8, *end = url + len;
    const char *slash = memchr(auth, '/', (size_t)(end - auth));
    const char *auth_end = slash ? slash : end;
    if (memchr(auth, '@', (size_t)(auth_end - auth))) {
        set_err(err, cap, "%s: user information (user:password@) in the URL is not supported",
                what);
        return NULL;
    }
    bool ok = auth_end > auth;
    const char *port = NULL;
    if (ok && *auth == '[') {
        const char *close = memchr(auth, ']', (size_t)(auth_end - auth));
        ok = close && close > auth + 1;
        for (const char *p = auth + 1; ok && p < close; p++)
            ok = (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F') ||
                 *p == ':' || *p == '.';
        if (ok && close + 1 < auth_end) {
            ok = close[1] == ':';
            port = close + 2;
        }
    } else if (ok) {
        const char *colon = memchr(auth, ':', (size_t)(auth_end - auth));
        const char *host_end = colon ? colon : auth_end;
        ok = host_end > auth;
        for (const char *p = auth; ok && p < host_end; p++)
            ok = host_char(*p);
        if (colon)
            port = colon + 1;
    }
    if (ok && port)
        ok = port_ok(port, (size_t)(auth_end - port));
    if (!ok) {
        set_err(err, cap,
                "%s %s: not a valid https://HOST[:PORT] URL (IPv6 addresses go in brackets)", what,
                quoted);
        return NULL;
    }
    const char *path_end = end;
    for (const char *p = auth_end; ok && p < end; p++)
        ok = *p > 0x20 && *p < 0x7f && *p != '?' && *p != '#';
    if (!ok) {
        set_err(err, cap, "%s %s: the URL may hold a path prefix but no query, fragment or spaces",
                what, quoted);
        return NULL;
    }
    while (path_end > auth_end && path_end[-1] == '/')
        path_end--;
    size_t out_len = 8 + (size_t)(path_end - auth);
    char *out = malloc(out_len + 1);
    if (!out) {
        set_err(err, cap, "out of memory");
        return NULL;
    }
    memcpy(out, "https://", 8);
    memcpy(out + 8, auth, (size_t)(path_end - auth));
    out[out_len] = '\0';
    return out;
}

/* ---- files ---- */

/* Checks that path is a readable file (not a directory). Reports "<what> <path>: <why>". */
static int check_readable(const char *what, const char *path, char *err, size_t cap)
{
    shown b;
    int fd =
        open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* O_NONBLOCK: a FIFO must not hang us */
    if (fd < 0) {
        set_err(err, cap, "%s %s: %s", what, show_path(&b, path), strerror(errno));
        return -1;
    }
    struct stat st;
    int rc = fstat(fd, &st);
    int saved = errno;
    close(fd);
    if (rc != 0 || S_ISDIR(st.st_mode)) {
        set_err(err, cap, "%s %s: %s", what, show_path(&b, path),
                rc != 0 ? strerror(saved) : "is a directory");
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
    if (fd < 0)
        return errno;
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
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            wipe_free(buf, len);
            return e;
        }
        if (n == 0)
            break;
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

/* ---- YAML: a small tree built from libyaml events ---- */

typedef enum { YN_SCALAR, YN_MAP, YN_SEQ } ynode_kind;

typedef struct ynode {
    ynode_kind kind;
    bool plain;  /* scalar written without quotes (only plain scalars can be null) */
    size_t line; /* 1-based, for messages */
    char *value; /* scalar, NUL-terminated; may hold NUL bytes (check len) */
    size_t len;
    struct ynode **items; /* sequence: items; mapping: key, value, key, value, ... */
    size_t n, cap;
} ynode;

static void ynode_free(ynode *n)
{
    if (!n)
        return;
    wipe_free(n->value, n->len); /* scalars may be tokens or keys: wipe them all */
    for (size_t i = 0; i < n->n; i++)
        ynode_free(n->items[i]);
    free(n->items);
    free(n);
}

typedef struct yreader {
    yaml_parser_t parser;
    size_t nodes;
    char *err;
    size_t err_cap;
} yreader;

static void event_drop(yaml_event_t *ev)
{
    if (ev->type == YAML_SCALAR_EVENT && ev->data.scalar.value)
        OPENSSL_cleanse(ev->data.scalar.value, ev->data.scalar.length);
    yaml_event_delete(ev);
}

static int next_event(yreader *r, yaml_event_t *ev)
{
    if (yaml_parser_parse(&r->parser, ev))
        return 0;
    /* libyaml's problem and context strings are fixed texts, never input. */
    if (r->parser.error == YAML_MEMORY_ERROR) {
        set_err(r->err, r->err_cap, "out of memory while parsing YAML");
    } else if (r->parser.error == YAML_READER_ERROR) {
        /* Encoding problems carry a byte offset, not a line. */
        set_err(r->err, r->err_cap, "YAML error at byte %zu: %s", (size_t)r->parser.problem_offset,
                r->parser.problem ? r->parser.problem : "unreadable input");
    } else {
        set_err(r->err, r->err_cap, "YAML error at line %zu, column %zu: %s%s%s%s",
                (size_t)r->parser.problem_mark.line + 1, (size_t)r->parser.problem_mark.column + 1,
                r->parser.problem ? r->parser.problem : "malformed YAML",
                r->parser.context ? " (" : "", r->parser.context ? r->parser.context : "",
                r->parser.context ? ")" : "");
    }
    return -1;
}

static ynode *new_node(yreader *r, ynode_kind kind, size_t line)
{
    if (++r->nodes > YAML_MAX_NODES) {
        set_err(r->err, r->err_cap, "line %zu: more than %d YAML nodes", line, YAML_MAX_NODES);
        return NULL;
    }
    ynode *n = calloc(1, sizeof(*n));
    if (!n) {
        set_err(r->err, r->err_cap, "out of memory");
        return NULL;
    }
    n->kind = kind;
    n->line = line;
    return n;
}

static int push_item(yreader *r, ynode *parent, ynode *child)
{
    if (parent->n == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 8;
        ynode **items = realloc(parent->items, cap * sizeof(*items));
        if (!items) {
            set_err(r->err, r->err_cap, "out of memory");
            return -1;
        }
        parent->items = items;
        parent->cap = cap;
    }
    parent->items[parent->n++] = child;
    return 0;
}

static ynode *read_node(yreader *r, yaml_event_t *ev, int depth);

/* Reads the children of a mapping or sequence up to its end event. */
static int read_children(yreader *r, ynode *n, int depth)
{
    bool is_map = n->kind == YN_MAP;
    for (;;) {
        yaml_event_t ev;
        if (next_event(r, &ev) != 0)
            return -1;
        if (ev.type == YAML_MAPPING_END_EVENT || ev.type == YAML_SEQUENCE_END_EVENT) {
            event_drop(&ev);
            return 0;
        }
        ynode *child = read_node(r, &ev, depth + 1);
        if (!child)
            return -1;
        if (is_map) {
            shown b;
            if (child->kind != YN_SCALAR || memchr(child->value, '\0', child->len)) {
                set_err(r->err, r->err_cap, "line %zu: mapping keys must be strings", child->line);
                ynode_free(child);
                return -1;
            }
            if (n->n / 2 >= YAML_MAX_MAP_KEYS) {
                set_err(r->err, r->err_cap, "line %zu: more than %d keys in one mapping",
                        child->line, YAML_MAX_MAP_KEYS);
                ynode_free(child);
                return -1;
            }
            for (size_t i = 0; i < n->n; i += 2) {
                const ynode *k = n->items[i];
                if (k->len == child->len && memcmp(k->value, child->value, k->len) == 0) {
                    set_err(r->err, r->err_cap,
                            "line %zu: duplicate key \"%s\" (first at line %zu)", child->line,
                            show_n(&b, child->value, child->len, SHOW_NAME_MAX), k->line);
                    ynode_free(child);
                    return -1;
                }
            }
        }
        if (push_item(r, n, child) != 0) {
            ynode_free(child);
            return -1;
        }
        if (is_map) {
            if (next_event(r, &ev) != 0)
                return -1;
            ynode *value = read_node(r, &ev, depth + 1);
            if (!value)
                return -1;
            if (push_item(r, n, value) != 0) {
                ynode_free(value);
                return -1;
            }
        }
    }
}

/* Turns ev (owned, consumed) and what follows it into a node. */
static ynode *read_node(yreader *r, yaml_event_t *ev, int depth)
{
    size_t line = (size_t)ev->start_mark.line + 1;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        ynode *n = new_node(r, YN_SCALAR, line);
        if (n) {
            n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            n->len = ev->data.scalar.length;
            n->value = dup_n((const char *)ev->data.scalar.value, n->len);
            if (!n->value) {
                set_err(r->err, r->err_cap, "out of memory");
                n->len = 0;
                ynode_free(n);
                n = NULL;
            }
        }
        event_drop(ev);
        return n;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        ynode_kind kind = ev->type == YAML_MAPPING_START_EVENT ? YN_MAP : YN_SEQ;
        event_drop(ev);
        if (depth >= YAML_MAX_DEPTH) {
            set_err(r->err, r->err_cap, "line %zu: YAML nested deeper than %d levels", line,
                    YAML_MAX_DEPTH);
            return NULL;
        }
        ynode *n = new_node(r, kind, line);
        if (!n)
            return NULL;
        if (read_children(r, n, depth) != 0) {
            ynode_free(n);
            return NULL;
        }
        return n;
    }
    case YAML_ALIAS_EVENT:
        set_err(r->err, r->err_cap,
                "line %zu: YAML aliases (*name) are not supported in a kubeconfig", line);
        event_drop(ev);
        return NULL;
    default:
        set_err(r->err, r->err_cap, "line %zu: unexpected YAML structure", line);
        event_drop(ev);
        return NULL;
    }
}

/* Wipes what libyaml still holds of the input: its read buffers and unconsumed tokens.
 * (Best effort: the scanner's temporary strings are freed without wiping.) */
static void wipe_parser(yaml_parser_t *p)
{
    if (p->buffer.start && p->buffer.end > p->buffer.start)
        OPENSSL_cleanse(p->buffer.start, (size_t)(p->buffer.end - p->buffer.start));
    if (p->raw_buffer.start && p->raw_buffer.end > p->raw_buffer.start)
        OPENSSL_cleanse(p->raw_buffer.start, (size_t)(p->raw_buffer.end - p->raw_buffer.start));
    for (yaml_token_t *t = p->tokens.head; t && t < p->tokens.tail; t++)
        if (t->type == YAML_SCALAR_TOKEN && t->data.scalar.value)
            OPENSSL_cleanse(t->data.scalar.value, t->data.scalar.length);
}

/* Parses one YAML document into a tree. NULL with a message when it is not exactly one
 * well-formed document; *empty tells an empty stream apart. */
static ynode *yaml_read(const char *text, size_t len, bool *empty, char *err, size_t cap)
{
    *empty = false;
    yreader r = {.err = err, .err_cap = cap};
    if (!yaml_parser_initialize(&r.parser)) {
        set_err(err, cap, "out of memory");
        return NULL;
    }
    yaml_parser_set_input_string(&r.parser, (const unsigned char *)text, len);
    ynode *root = NULL;
    yaml_event_t ev;
    /* stream start, document start (or stream end: empty), the root node, document end,
     * stream end */
    if (next_event(&r, &ev) != 0)
        goto done;
    event_drop(&ev);
    if (next_event(&r, &ev) != 0)
        goto done;
    if (ev.type == YAML_STREAM_END_EVENT) {
        event_drop(&ev);
        *empty = true;
        goto done;
    }
    event_drop(&ev);
    if (next_event(&r, &ev) != 0)
        goto done;
    root = read_node(&r, &ev, 0);
    if (!root)
        goto done;
    if (next_event(&r, &ev) != 0)
        goto fail;
    event_drop(&ev);
    if (next_event(&r, &ev) != 0)
        goto fail;
    bool more = ev.type != YAML_STREAM_END_EVENT;
    event_drop(&ev);
    if (more) {
        set_err(err, cap, "more than one YAML document (a kubeconfig is one)");
        goto fail;
    }
    goto done;
fail:
    ynode_free(root);
    root = NULL;
done:
    wipe_parser(&r.parser);
    yaml_parser_delete(&r.parser);
    return root;
}

/* ---- kubeconfig ---- */

static bool is_null(const ynode *n)
{
    if (!n)
        return true;
    if (n->kind != YN_SCALAR)
        return false;
    if (n->len == 0) /* "" is Go's zero value: kubectl treats it as unset too */
        return true;
    return n->plain && (strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 ||
                        strcmp(n->value, "Null") == 0 || strcmp(n->value, "NULL") == 0);
}

static const ynode *map_get(const ynode *map, const char *key)
{
    if (!map || map->kind != YN_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (size_t i = 0; i + 1 < map->n; i += 2)
        if (map->items[i]->len == klen && memcmp(map->items[i]->value, key, klen) == 0)
            return map->items[i + 1];
    return NULL;
}

/* A string field: 1 (present, *out set), 0 (absent or null), -1 (not a string; message
 * names where/key only). Text fields (binary = false) must not hold NUL bytes. */
static int get_str(const ynode *map, const char *key, const char *where, bool binary,
                   const ynode **out, char *err, size_t cap)
{
    const ynode *v = map_get(map, key);
    *out = NULL;
    if (is_null(v))
        return 0;
    if (v->kind != YN_SCALAR) {
        set_err(err, cap, "%s: %s must be a string (line %zu)", where, key, v->line);
        return -1;
    }
    if (!binary && memchr(v->value, '\0', v->len)) {
        set_err(err, cap, "%s: %s contains a NUL byte (line %zu)", where, key, v->line);
        return -1;
    }
    *out = v;
    return 1;
}

/* YAML 1.1 booleans, as kubectl (go-yaml) reads them. 1 true, 0 false/absent, -1 neither. */
static int get_bool(const ynode *map, const char *key, const char *where, char *err, size_t cap)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES",
                                      "on",   "On",   "ON",   "y",   "Y"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO",
                                     "off",   "Off",   "OFF",   "n",  "N"};
    const ynode *v = map_get(map, key);
    if (is_null(v))
        return 0;
    if (v->kind == YN_SCALAR) {
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
            if (strcmp(v->value, yes[i]) == 0)
                return 1;
        for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
            if (strcmp(v->value, no[i]) == 0)
                return 0;
    }
    set_err(err, cap, "%s: %s must be true or false (line %zu)", where, key, v->line);
    return -1;
}

/* "name1", "name2", ... of the entries of list, cut to fit. */
static void list_names(const ynode *list, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    size_t count = 0;
    for (size_t i = 0; list && list->kind == YN_SEQ && i < list->n; i++) {
        const ynode *name = map_get(list->items[i], "name");
        if (!name || name->kind != YN_SCALAR)
            continue;
        shown b;
        int n = snprintf(buf + used, cap - used, "%s\"%s\"", count ? ", " : "",
                         show_n(&b, name->value, name->len, SHOW_NAME_MAX));
        if (n < 0 || (size_t)n >= cap - used) {
            if (cap > 4)
                memcpy(buf + cap - 4, "...", 4);
            return;
        }
        used += (size_t)n;
        count++;
    }
    if (count == 0)
        snprintf(buf, cap, "none");
}

/* Finds the entry called name in the top-level list section ("clusters", "users",
 * "contexts") and returns its body mapping (entry[body_key]). */
static const ynode *find_named(const ynode *root, const char *section, const char *kind,
                               const char *name, char *err, size_t cap)
{
    shown b;
    const ynode *list = map_get(root, section);
    if (!is_null(list) && list->kind != YN_SEQ) {
        set_err(err, cap, "%s must be a list (line %zu)", section, list->line);
        return NULL;
    }
    const ynode *found = NULL;
    size_t n = is_null(list) ? 0 : list->n;
    for (size_t i = 0; i < n; i++) {
        const ynode *item = list->items[i];
        if (item->kind != YN_MAP) {
            set_err(err, cap, "%s[%zu] is not a mapping (line %zu)", section, i, item->line);
            return NULL;
        }
        const ynode *item_name = map_get(item, "name");
        if (is_null(item_name) || item_name->kind != YN_SCALAR) {
            set_err(err, cap, "%s[%zu] has no name (line %zu)", section, i, item->line);
            return NULL;
        }
        if (strlen(name) != item_name->len || memcmp(item_name->value, name, item_name->len) != 0)
            continue;
        if (found) {
            set_err(err, cap, "%s \"%s\" is defined twice (lines %zu and %zu)", kind,
                    show_name(&b, name), found->line, item->line);
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
    const ynode *body = map_get(found, kind);
    if (is_null(body) || body->kind != YN_MAP) {
        set_err(err, cap, "%s \"%s\" has no %s: mapping (line %zu)", kind, show_name(&b, name),
                kind, found->line);
        return NULL;
    }
    return body;
}

/* Standard base64 (whitespace ignored, padding optional) into a NUL-terminated buffer. */
static int base64_decode_field(const char *in, size_t len, char **out, size_t *out_len)
{
    size_t cap = BASE64_DECODED_MAX(len) + 1;
    char *buf = malloc(cap);
    if (!buf)
        return -1;
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
static int decode_pem(const ynode *v, const char *where, const char *key, bool private_key,
                      char **out, size_t *out_len, char *err, size_t cap)
{
    if (base64_decode_field(v->value, v->len, out, out_len) != 0) {
        set_err(err, cap,
                "%s: %s is not valid base64 (line %zu; it holds the base64 of the PEM file)", where,
                key, v->line);
        return -1;
    }
    bool ok = private_key ? memmem(*out, *out_len, "-----BEGIN ", 11) &&
                                memmem(*out, *out_len, "PRIVATE KEY-----", 16)
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
    if (!base_dir || !*base_dir || v->value[0] == '/')
        return dup_n(v->value, v->len);
    size_t bl = strlen(base_dir);
    bool sep = base_dir[bl - 1] != '/';
    char *p = malloc(bl + sep + v->len + 1);
    if (!p)
        return NULL;
    memcpy(p, base_dir, bl);
    if (sep)
        p[bl] = '/';
    memcpy(p + bl + sep, v->value, v->len);
    p[bl + sep + v->len] = '\0';
    return p;
}

static bool token_ok(const char *t, size_t len)
{
    if (len == 0 || len > TOKEN_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
            return false;
    return true;
}

static int parse_cluster(const ynode *c, const char *where, const char *base_dir,
                         apiserver_settings *s, char *err, size_t cap)
{
    const ynode *server, *ca, *ca_data, *v;
    int rc = get_str(c, "server", where, false, &server, err, cap);
    if (rc < 0)
        return -1;
    if (rc == 0) {
        set_err(err, cap, "%s has no server", where);
        return -1;
    }
    char what[160];
    snprintf(what, sizeof(what), "%s: server", where);
    s->server_url = normalize_server(server->value, server->len, what, err, cap);
    if (!s->server_url)
        return -1;
    rc = get_bool(c, "insecure-skip-tls-verify", where, err, cap);
    if (rc < 0)
        return -1;
    if (rc == 1) {
        set_err(err, cap,
                "%s sets insecure-skip-tls-verify: true, which tokengate refuses: TLS to the API "
                "server is always "
                "verified; give the cluster certificate-authority or certificate-authority-data",
                where);
        return -1;
    }
    if ((rc = get_str(c, "tls-server-name", where, false, &v, err, cap)) != 0) {
        if (rc > 0)
            set_err(err, cap,
                    "%s: tls-server-name is not supported (the server URL's host must match its "
                    "certificate)",
                    where);
        return -1;
    }
    if ((rc = get_str(c, "proxy-url", where, false, &v, err, cap)) != 0) {
        if (rc > 0)
            set_err(
                err, cap,
                "%s: proxy-url is not supported (the gateway connects to the API server directly)",
                where);
        return -1;
    }
    if (get_str(c, "certificate-authority-data", where, true, &ca_data, err, cap) < 0 ||
        get_str(c, "certificate-authority", where, false, &ca, err, cap) < 0)
        return -1;
    if (ca_data) {
        if (decode_pem(ca_data, where, "certificate-authority-data", false, &s->ca_pem,
                       &s->ca_pem_len, err, cap) != 0)
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

static int parse_user(const ynode *u, const char *where, const char *base_dir,
                      apiserver_settings *s, char *err, size_t cap)
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
        if (!is_null(map_get(u, refused[i].key))) {
            set_err(err, cap,
                    "%s %s: give the gateway a token, tokenFile or client-certificate/client-key "
                    "(for example a "
                    "ServiceAccount token)",
                    where, refused[i].why);
            return -1;
        }
    }
    const ynode *token, *token_file, *cert, *key, *cert_data, *key_data;
    if (get_str(u, "token", where, true, &token, err, cap) < 0 ||
        get_str(u, "tokenFile", where, false, &token_file, err, cap) < 0 ||
        get_str(u, "client-certificate", where, false, &cert, err, cap) < 0 ||
        get_str(u, "client-key", where, false, &key, err, cap) < 0 ||
        get_str(u, "client-certificate-data", where, true, &cert_data, err, cap) < 0 ||
        get_str(u, "client-key-data", where, true, &key_data, err, cap) < 0)
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
        if (!s->token)
            goto oom;
    } else if (token_file) {
        s->token_file = resolve_path(base_dir, token_file);
        if (!s->token_file)
            goto oom;
    }
    bool has_cert = cert || cert_data, has_key = key || key_data;
    if (has_cert != has_key) {
        set_err(err, cap, "%s has a client %s but no client %s", where,
                has_cert ? "certificate" : "key",
                has_cert ? "key (client-key or client-key-data)"
                         : "certificate (client-certificate or client-certificate-data)");
        return -1;
    }
    if (cert_data) {
        if (decode_pem(cert_data, where, "client-certificate-data", false, &s->client_cert_pem,
                       &s->client_cert_pem_len, err, cap) != 0)
            return -1;
    } else if (cert) {
        s->client_cert_file = resolve_path(base_dir, cert);
        if (!s->client_cert_file)
            goto oom;
    }
    if (key_data) {
        if (decode_pem(key_data, where, "client-key-data", true, &s->client_key_pem,
                       &s->client_key_pem_len, err, cap) != 0)
            return -1;
    } else if (key) {
        s->client_key_file = resolve_path(base_dir, key);
        if (!s->client_key_file)
            goto oom;
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
static void kubeconfig_why(apiserver_settings *s, bool context_from_flag, bool token_file_ignored,
                           bool ca_file_ignored)
{
    shown a, b, c;
    why_append(s, "context \"%s\" (%s), cluster \"%s\" at %s", show_name(&a, s->context),
               context_from_flag ? "--context" : "current-context", show_name(&b, s->cluster),
               show_path(&c, s->server_url));
    if (s->ca_pem)
        why_append(s, ", CA from certificate-authority-data%s",
                   ca_file_ignored ? " (over certificate-authority)" : "");
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
    if (s->namespace_)
        why_append(s, ", namespace \"%s\"", show_name(&a, s->namespace_));
}

int kubeconfig_parse(const char *yaml_text, size_t len, const char *context, const char *base_dir,
                     apiserver_settings *out, char *err, size_t err_cap)
{
    memset(out, 0, sizeof(*out));
    if (err && err_cap)
        err[0] = '\0';
    if (len > KUBECONFIG_MAX_BYTES) {
        set_err(err, err_cap, "larger than %d bytes", KUBECONFIG_MAX_BYTES);
        return -1;
    }
    bool empty = false;
    ynode *root = yaml_read(yaml_text, len, &empty, err, err_cap);
    if (!root) {
        if (empty)
            set_err(err, err_cap, "empty (no clusters, users or contexts)");
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
        set_err(err, err_cap,
                is_null(root) ? "empty (no clusters, users or contexts)" : "not a YAML mapping");
        goto done;
    }
    int got = get_str(root, "kind", "kubeconfig", false, &v, err, err_cap);
    if (got < 0)
        goto done;
    if (got > 0 && strcmp(v->value, "Config") != 0) {
        set_err(err, err_cap, "not a kubeconfig: kind is \"%s\", expected Config",
                show_n(&b, v->value, v->len, SHOW_NAME_MAX));
        goto done;
    }
    got = get_str(root, "apiVersion", "kubeconfig", false, &v, err, err_cap);
    if (got < 0)
        goto done;
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
        got = get_str(root, "current-context", "kubeconfig", false, &v, err, err_cap);
        if (got < 0)
            goto done;
        if (got == 0) {
            char names[256];
            list_names(map_get(root, "contexts"), names, sizeof(names));
            set_err(err, err_cap, "no current-context set; pass --context NAME (available: %s)",
                    names);
            goto done;
        }
        s.context = dup_n(v->value, v->len);
    }
    if (!s.context)
        goto oom;
    const ynode *ctx = find_named(root, "contexts", "context", s.context, err, err_cap);
    if (!ctx)
        goto done;
    snprintf(where, sizeof(where), "context \"%s\"", show_name(&b, s.context));
    const ynode *cluster_name, *user_name, *ns;
    if (get_str(ctx, "cluster", where, false, &cluster_name, err, err_cap) < 0 ||
        get_str(ctx, "user", where, false, &user_name, err, err_cap) < 0 ||
        get_str(ctx, "namespace", where, false, &ns, err, err_cap) < 0)
        goto done;
    if (!cluster_name || !user_name) {
        set_err(err, err_cap, "%s names no %s", where, !cluster_name ? "cluster" : "user");
        goto done;
    }
    s.cluster = dup_n(cluster_name->value, cluster_name->len);
    s.user = dup_n(user_name->value, user_name->len);
    if (ns)
        s.namespace_ = dup_n(ns->value, ns->len);
    if (!s.cluster || !s.user || (ns && !s.namespace_))
        goto oom;

    const ynode *cluster = find_named(root, "clusters", "cluster", s.cluster, err, err_cap);
    if (!cluster)
        goto done;
    snprintf(where, sizeof(where), "cluster \"%s\"", show_name(&b, s.cluster));
    if (parse_cluster(cluster, where, base_dir, &s, err, err_cap) != 0)
        goto done;

    const ynode *user = find_named(root, "users", "user", s.user, err, err_cap);
    if (!user)
        goto done;
    snprintf(where, sizeof(where), "user \"%s\"", show_name(&b, s.user));
    if (parse_user(user, where, base_dir, &s, err, err_cap) != 0)
        goto done;

    kubeconfig_why(&s, from_flag, s.token && !is_null(map_get(user, "tokenFile")),
                   s.ca_pem && !is_null(map_get(cluster, "certificate-authority")));
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

/* ---- the decision ---- */

static int resolve_flags(const apiserver_inputs *in, apiserver_settings *s, char *err, size_t cap)
{
    bool have[3] = {given(in->apiserver), given(in->apiserver_ca), given(in->apiserver_token_file)};
    static const char *const names[3] = {"--apiserver", "--apiserver-ca", "--apiserver-token-file"};
    if (!have[0] || !have[1] || !have[2]) {
        char missing[96] = "";
        for (int i = 0; i < 3; i++)
            if (!have[i]) {
                if (missing[0])
                    strcat(missing, " and ");
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
    s->server_url = normalize_server(in->apiserver, strlen(in->apiserver), "--apiserver", err, cap);
    if (!s->server_url)
        return -1;
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
               show_path(&a, s->server_url), show_path(&b, s->ca_file),
               show_path(&c, s->token_file));
    return 0;
}

/* The absolute form of path (relative to the working directory), or NULL. */
static char *absolute_path(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return strdup(path);
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
    if (!p)
        return NULL;
    memcpy(p, cwd, cl);
    size_t o = cl;
    if (o == 0 || p[o - 1] != '/')
        p[o++] = '/';
    memcpy(p + o, path, pl + 1);
    return p;
}

static int resolve_kubeconfig(const char *path, const char *origin, const char *context,
                              apiserver_settings *s, char *err, size_t cap)
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
            set_err(err, cap, "kubeconfig %s (from %s) is larger than %d bytes", show_path(&a, abs),
                    origin, KUBECONFIG_MAX_BYTES);
        else
            set_err(err, cap, "kubeconfig %s (from %s): %s", show_path(&a, abs), origin,
                    strerror(e));
        free(abs);
        return -1;
    }
    char *slash = strrchr(abs, '/');
    char *dir = dup_n(abs, slash == abs ? 1 : (size_t)(slash - abs));
    char perr[400];
    int rc = dir ? kubeconfig_parse(text, len, context, dir, s, perr, sizeof(perr)) : -1;
    if (!dir)
        snprintf(perr, sizeof(perr), "out of memory");
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
            if (!files[i].path)
                continue;
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
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-' ||
              s[i] == '.'))
            return false;
    return true;
}

static int resolve_in_cluster(const apiserver_inputs *in, const char *sa_dir, apiserver_settings *s,
                              char *err, size_t cap)
{
    shown a, b;
    if (!given(in->service_host) || !given(in->service_port)) {
        set_err(err, cap, "in-cluster: %s is set but %s is not",
                given(in->service_host) ? "KUBERNETES_SERVICE_HOST" : "KUBERNETES_SERVICE_PORT",
                given(in->service_host) ? "KUBERNETES_SERVICE_PORT" : "KUBERNETES_SERVICE_HOST");
        return -1;
    }
    if (!port_ok(in->service_port, strlen(in->service_port))) {
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
        host_ok = host_char(h[i]) || h[i] == ':';
    if (!host_ok) {
        set_err(err, cap,
                "in-cluster: KUBERNETES_SERVICE_HOST \"%s\" is not a host name or IP address",
                show_name(&a, h));
        return -1;
    }
    bool v6 = strchr(h, ':') && !bracketed;
    char url[512];
    int n = snprintf(url, sizeof(url), "https://%s%s%s:%s", v6 ? "[" : "", in->service_host,
                     v6 ? "]" : "", in->service_port);
    if (n < 0 || (size_t)n >= sizeof(url)) {
        set_err(err, cap, "in-cluster: KUBERNETES_SERVICE_HOST is too long");
        return -1;
    }
    s->source = APISERVER_FROM_IN_CLUSTER;
    s->server_url =
        normalize_server(url, (size_t)n, "in-cluster: KUBERNETES_SERVICE_HOST/PORT give", err, cap);
    if (!s->server_url)
        return -1;
    size_t dl = strlen(sa_dir);
    while (dl > 1 && sa_dir[dl - 1] == '/')
        dl--;
    if (asprintf(&s->token_file, "%.*s/token", (int)dl, sa_dir) < 0)
        s->token_file = NULL;
    if (asprintf(&s->ca_file, "%.*s/ca.crt", (int)dl, sa_dir) < 0)
        s->ca_file = NULL;
    char *ns_path = NULL;
    if (asprintf(&ns_path, "%.*s/namespace", (int)dl, sa_dir) < 0)
        ns_path = NULL;
    if (!s->token_file || !s->ca_file || !ns_path) {
        free(ns_path);
        set_err(err, cap, "out of memory");
        return -1;
    }
    char msg[400];
    if (check_readable("service-account token", s->token_file, msg, sizeof(msg)) != 0 ||
        check_readable("service-account CA", s->ca_file, msg, sizeof(msg)) != 0) {
        set_err(
            err, cap,
            "in-cluster: %s (is the token mounted? automountServiceAccountToken must not be false)",
            msg);
        free(ns_path);
        return -1;
    }
    char *ns = NULL;
    size_t ns_len = 0;
    if (read_file(ns_path, NAMESPACE_FILE_MAX, &ns, &ns_len) == 0) {
        while (ns_len && (ns[ns_len - 1] == '\n' || ns[ns_len - 1] == '\r' ||
                          ns[ns_len - 1] == ' ' || ns[ns_len - 1] == '\t'))
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
    if (!env)
        return NULL;
    char *first = NULL;
    const char *p = env;
    for (;;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        if (len) {
            if (!first)
                first = dup_n(p, len);
            (*count)++;
        }
        if (!colon)
            break;
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

int apiserver_resolve(const apiserver_inputs *in, apiserver_settings *out, char *err,
                      size_t err_cap)
{
    memset(out, 0, sizeof(*out));
    if (err && err_cap)
        err[0] = '\0';
    bool flags = given(in->apiserver) || given(in->apiserver_ca) || given(in->apiserver_token_file);
    bool in_cluster = given(in->service_host) || given(in->service_port);
    size_t env_count = 0;
    char *env_path = first_kubeconfig_path(in->kubeconfig_env, &env_count);
    const char *sa_dir = given(in->serviceaccount_dir) ? in->serviceaccount_dir
                                                       : APISERVER_DEFAULT_SERVICEACCOUNT_DIR;
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
                       given(in->kubeconfig) ? " --kubeconfig" : "",
                       given(in->context) ? " --context" : "", env_path ? " $KUBECONFIG" : "",
                       in_cluster ? " in-cluster environment" : "");
        }
    } else if (given(in->kubeconfig)) {
        rc = resolve_kubeconfig(in->kubeconfig, "--kubeconfig", in->context, out, err, err_cap) == 0
                 ? APISERVER_OK
                 : APISERVER_ERROR;
        if (rc == APISERVER_OK && (env_path || in_cluster))
            why_append(out, "; ignored (--kubeconfig takes precedence):%s%s",
                       env_path ? " $KUBECONFIG" : "", in_cluster ? " in-cluster environment" : "");
    } else if (env_path) {
        rc = resolve_kubeconfig(env_path, "$KUBECONFIG", in->context, out, err, err_cap) == 0
                 ? APISERVER_OK
                 : APISERVER_ERROR;
        if (rc == APISERVER_OK && env_count > 1)
            why_append(out, "; only the first of the %zu paths in $KUBECONFIG is read (no merging)",
                       env_count);
        if (rc == APISERVER_OK && in_cluster)
            why_append(out, "; ignored ($KUBECONFIG takes precedence): in-cluster environment");
    } else if (in_cluster) {
        rc =
            resolve_in_cluster(in, sa_dir, out, err, err_cap) == 0 ? APISERVER_OK : APISERVER_ERROR;
    } else {
        set_err(err, err_cap,
                "no API server configured: pass --apiserver, --apiserver-ca and "
                "--apiserver-token-file, or "
                "--kubeconfig FILE, or set $KUBECONFIG, or run in a pod "
                "(KUBERNETES_SERVICE_HOST/PORT)");
        rc = APISERVER_NOT_CONFIGURED;
    }
    free(env_path);
    if (rc != APISERVER_OK)
        apiserver_settings_free(out);
    return rc;
}

/* ---- TLS material check --------------------------------------------------------------- */

static BIO *open_pem(const char *file, const char *pem, size_t pem_len)
{
    if (pem) return BIO_new_mem_buf(pem, (int)pem_len);
    return file ? BIO_new_file(file, "r") : NULL;
}

int apiserver_settings_check_tls(const apiserver_settings *s, char *err, size_t err_cap)
{
    int rc = -1;
    BIO *bio = open_pem(s->ca_file, s->ca_pem, s->ca_pem_len);
    X509 *ca = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    const char *ca_name = s->ca_file ? s->ca_file : "certificate-authority-data";
    if (!ca) {
        snprintf(err, err_cap, "the API server CA (%s) holds no PEM certificate", ca_name);
        goto done;
    }
    bool has_cert = s->client_cert_file || s->client_cert_pem;
    if (has_cert) {
        bio = open_pem(s->client_cert_file, s->client_cert_pem, s->client_cert_pem_len);
        cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        bio = open_pem(s->client_key_file, s->client_key_pem, s->client_key_pem_len);
        key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        const char *cert_name = s->client_cert_file ? s->client_cert_file : "client-certificate-data";
        if (!cert) {
            snprintf(err, err_cap, "the client certificate (%s) is not a PEM certificate", cert_name);
            goto done;
        }
        if (!key) {
            snprintf(err, err_cap, "the client key (%s) is not a PEM private key",
                     s->client_key_file ? s->client_key_file : "client-key-data");
            goto done;
        }
        if (X509_check_private_key(cert, key) != 1) {
            snprintf(err, err_cap, "the client key does not match the client certificate (%s)", cert_name);
            goto done;
        }
    }
    rc = 0;
done:
    ERR_clear_error();
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key); /* OpenSSL wipes key material on free */
    return rc;
}
