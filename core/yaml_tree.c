/* yaml_tree.c: see yaml_tree.h. */
#include "yaml_tree.h"
#include "apiserver_text.h"

#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YAML_MAX_DEPTH 64      /* nesting deeper than this is refused */
#define YAML_MAX_NODES 200000  /* scalars + mappings + sequences in one kubeconfig */
#define YAML_MAX_MAP_KEYS 1024 /* keys in one mapping (duplicate check is quadratic) */

void ynode_free(ynode *n)
{
    if (!n) return;
    wipe_free(n->value, n->len); /* scalars may be tokens or keys: wipe them all */
    for (size_t i = 0; i < n->n; i++) ynode_free(n->items[i]);
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
    if (yaml_parser_parse(&r->parser, ev)) return 0;
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
                r->parser.problem ? r->parser.problem : "malformed YAML", r->parser.context ? " (" : "",
                r->parser.context ? r->parser.context : "", r->parser.context ? ")" : "");
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
        if (next_event(r, &ev) != 0) return -1;
        if (ev.type == YAML_MAPPING_END_EVENT || ev.type == YAML_SEQUENCE_END_EVENT) {
            event_drop(&ev);
            return 0;
        }
        ynode *child = read_node(r, &ev, depth + 1);
        if (!child) return -1;
        if (is_map) {
            shown b;
            if (child->kind != YN_SCALAR || memchr(child->value, '\0', child->len)) {
                set_err(r->err, r->err_cap, "line %zu: mapping keys must be strings", child->line);
                ynode_free(child);
                return -1;
            }
            if (n->n / 2 >= YAML_MAX_MAP_KEYS) {
                set_err(r->err, r->err_cap, "line %zu: more than %d keys in one mapping", child->line,
                        YAML_MAX_MAP_KEYS);
                ynode_free(child);
                return -1;
            }
            for (size_t i = 0; i < n->n; i += 2) {
                const ynode *k = n->items[i];
                if (k->len == child->len && memcmp(k->value, child->value, k->len) == 0) {
                    set_err(r->err, r->err_cap, "line %zu: duplicate key \"%s\" (first at line %zu)", child->line,
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
            if (next_event(r, &ev) != 0) return -1;
            ynode *value = read_node(r, &ev, depth + 1);
            if (!value) return -1;
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
            set_err(r->err, r->err_cap, "line %zu: YAML nested deeper than %d levels", line, YAML_MAX_DEPTH);
            return NULL;
        }
        ynode *n = new_node(r, kind, line);
        if (!n) return NULL;
        if (read_children(r, n, depth) != 0) {
            ynode_free(n);
            return NULL;
        }
        return n;
    }
    case YAML_ALIAS_EVENT:
        set_err(r->err, r->err_cap, "line %zu: YAML aliases (*name) are not supported in a kubeconfig", line);
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
ynode *yaml_read(const char *text, size_t len, bool *empty, char *err, size_t cap)
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
    if (next_event(&r, &ev) != 0) goto done;
    event_drop(&ev);
    if (next_event(&r, &ev) != 0) goto done;
    if (ev.type == YAML_STREAM_END_EVENT) {
        event_drop(&ev);
        *empty = true;
        goto done;
    }
    event_drop(&ev);
    if (next_event(&r, &ev) != 0) goto done;
    root = read_node(&r, &ev, 0);
    if (!root) goto done;
    if (next_event(&r, &ev) != 0) goto fail;
    event_drop(&ev);
    if (next_event(&r, &ev) != 0) goto fail;
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

bool ynode_is_null(const ynode *n)
{
    if (!n) return true;
    if (n->kind != YN_SCALAR) return false;
    if (n->len == 0) /* "" is Go's zero value: kubectl treats it as unset too */
        return true;
    return n->plain && (strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 || strcmp(n->value, "Null") == 0 ||
                        strcmp(n->value, "NULL") == 0);
}

const ynode *ynode_map_get(const ynode *map, const char *key)
{
    if (!map || map->kind != YN_MAP) return NULL;
    size_t klen = strlen(key);
    for (size_t i = 0; i + 1 < map->n; i += 2)
        if (map->items[i]->len == klen && memcmp(map->items[i]->value, key, klen) == 0) return map->items[i + 1];
    return NULL;
}

/* A string field: 1 (present, *out set), 0 (absent or null), -1 (not a string; message
 * names where/key only). Text fields (binary = false) must not hold NUL bytes. */
int ynode_get_str(const ynode *map, const char *key, const char *where, bool binary, const ynode **out, char *err,
                  size_t cap)
{
    const ynode *v = ynode_map_get(map, key);
    *out = NULL;
    if (ynode_is_null(v)) return 0;
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
int ynode_get_bool(const ynode *map, const char *key, const char *where, char *err, size_t cap)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N"};
    const ynode *v = ynode_map_get(map, key);
    if (ynode_is_null(v)) return 0;
    if (v->kind == YN_SCALAR) {
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
            if (strcmp(v->value, yes[i]) == 0) return 1;
        for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
            if (strcmp(v->value, no[i]) == 0) return 0;
    }
    set_err(err, cap, "%s: %s must be true or false (line %zu)", where, key, v->line);
    return -1;
}
