/* Identities as the cache stores them: one compact, self-describing byte string per
 * authenticated user (username, uid, groups, extra), packed so that a cache entry is a
 * single allocation and a cache hit copies one contiguous block.
 *
 * Layout (lengths are little-endian uint16):
 *   len username | len uid | n_groups {len group}* | n_extra {len key n_vals {len val}*}*
 * A string that is one of a few well-known ones (system:serviceaccounts,
 * system:authenticated, the authentication.kubernetes.io/ extra keys) is stored as its
 * 2-byte code alone (high bit set): a typical ServiceAccount identity shrinks by ~200
 * bytes. Readers get the string either way (a str_view may point into a static table). */
#ifndef TOKENGATE_IDENTITY_H
#define TOKENGATE_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IDENTITY_STRING_MAX 4096 /* longest username, uid, group, extra key or value */
#define IDENTITY_LIST_MAX 256    /* most groups, extra keys, or values per extra key */

typedef struct str_view {
    const char *ptr;
    size_t len;
} str_view;

/* Writes a packed identity into a caller-owned buffer. Any failed append (too long, too
 * many, no room, control characters) sets failed; check it once at the end. */
typedef struct identity_builder {
    unsigned char *buf;
    size_t cap, len;
    bool failed;
} identity_builder;

void identity_builder_init(identity_builder *b, unsigned char *buf, size_t cap);
/* Appends a uint16 count (groups, extra keys, values). */
void identity_builder_count(identity_builder *b, size_t n);
/* Appends a string; rejects control characters (these values become HTTP headers). */
void identity_builder_string(identity_builder *b, const char *s, size_t len);

/* A validated view of a packed identity; pointers go into the packed bytes. */
typedef struct identity_view {
    str_view username, uid;
    size_t n_groups;
    const unsigned char *groups; /* first group record */
    size_t n_extra;
    const unsigned char *extra; /* first extra record */
} identity_view;

/* Validates the packed bytes and fills *view. Returns 0, or -1 if malformed. */
int identity_view_parse(const void *packed, size_t len, identity_view *view);

/* Reads the string record at *pos into *out and advances *pos. Only for positions inside
 * a view that identity_view_parse accepted. */
void identity_read_string(const unsigned char **pos, str_view *out);
/* Reads a count record at *pos and advances. Same precondition. */
size_t identity_read_count(const unsigned char **pos);

/* If username is "system:serviceaccount:NS:NAME", stores NS and NAME and returns true. */
bool identity_serviceaccount(str_view username, str_view *namespace_out, str_view *name_out);

#define IDENTITY_DIGEST_BYTES 32

/* SHA-256 of a packed identity: a fixed-size stand-in for all of it (the SubjectAccessReview
 * cache key hashes this instead of every field). Returns 0, or -1 if hashing fails. */
int identity_digest(const void *packed, size_t len, unsigned char out[IDENTITY_DIGEST_BYTES]);

/* Joins the groups with '|' (kube-rbac-proxy's X-Remote-Groups form) into out.
 * Returns the length, -1 if it does not fit, or -2 if a group name is empty or contains
 * '|' (the joined form would be ambiguous: such an identity is answered closed). */
long identity_join_groups(const identity_view *view, char *out, size_t cap);

#endif
