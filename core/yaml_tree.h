/* The kubeconfig's YAML reader: one YAML document, read with libyaml's event API, as a small
 * tree of scalars, mappings and sequences, and typed lookups in that tree. A tree of our own
 * rather than libyaml's document API so that every limit is ours: nesting depth, node count
 * and keys per mapping are bounded, duplicate keys, aliases and a second document are
 * refused, and every scalar (a kubeconfig holds tokens and private keys) is wiped when the
 * tree is freed. What the keys mean is kubeconfig.c's business, not this file's. */
#ifndef TOKENGATE_YAML_TREE_H
#define TOKENGATE_YAML_TREE_H

#include <stdbool.h>
#include <stddef.h>

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

/* Parses one YAML document into a tree. NULL with a message when it is not exactly one
 * well-formed document; *empty tells an empty stream apart. */
ynode *yaml_read(const char *text, size_t len, bool *empty, char *err, size_t cap);

/* Frees a tree, wiping every scalar. NULL is a no-op. */
void ynode_free(ynode *n);

/* Absent, "", or a plain ~ / null / Null / NULL scalar. */
bool ynode_is_null(const ynode *n);

/* The value of key in a mapping; NULL when map is not a mapping or has no such key. */
const ynode *ynode_map_get(const ynode *map, const char *key);

/* A string field: 1 (present, *out set), 0 (absent or null), -1 (not a string; message
 * names where/key only). Text fields (binary = false) must not hold NUL bytes. */
int ynode_get_str(const ynode *map, const char *key, const char *where, bool binary, const ynode **out, char *err,
                  size_t cap);

/* YAML 1.1 booleans, as kubectl (go-yaml) reads them. 1 true, 0 false/absent, -1 neither. */
int ynode_get_bool(const ynode *map, const char *key, const char *where, char *err, size_t cap);

#endif
