/* The SubjectAccessReview wire format (authorization.k8s.io/v1): the request body the
 * gateway sends to ask whether an authenticated identity may do something, the parser for
 * what the API server answers, and the cache key of a question. Pure functions: no I/O,
 * no logging, so they are unit-tested and fuzzed on captured real answers. */
#ifndef TOKENGATE_SAR_H
#define TOKENGATE_SAR_H

#include "cache_key.h"
#include "identity.h"

#include <stdbool.h>
#include <stddef.h>

#define SAR_API_PATH "/apis/authorization.k8s.io/v1/subjectaccessreviews"

/* Domain byte of SubjectAccessReview cache keys (cache_key_for_parts). */
#define SAR_CACHE_KEY_DOMAIN 'S'

/* What is asked about. Each string is a NUL-terminated C string owned by the caller, or
 * NULL when absent; "" is present-but-empty (sent as ""), which is not the same as NULL.
 *
 * nonresource == false: resourceAttributes. verb and resource are required (non-empty);
 *   namespace_, group, version, subresource and name are optional; path must be NULL.
 * nonresource == true: nonResourceAttributes. path and verb are required (non-empty);
 *   every resource field must be NULL.
 *
 * verb is the Kubernetes verb ("get", "create", ...) for resources and the lower-case
 * HTTP method ("get", "post", ...) for non-resource paths; it is sent as given. */
typedef struct sar_attributes {
    bool nonresource;
    const char *namespace_;
    const char *verb;
    const char *group;
    const char *version;
    const char *resource;
    const char *subresource;
    const char *name;
    const char *path;
} sar_attributes;

typedef enum {
    SAR_ALLOWED = 0,
    SAR_DENIED,       /* allowed false or omitted, or denied true: a verdict, cacheable */
    SAR_BAD_RESPONSE, /* not a SubjectAccessReview we can trust: fail closed, not cached */
} sar_result;

/* True when attrs is a well-formed question by the rules above (required fields present
 * and non-empty, no field of the other kind set). Does not check UTF-8 (the request body
 * does). attrs NULL → false. */
bool sar_attributes_valid(const sar_attributes *attrs);

/* Builds the request JSON:
 *   {"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview",
 *    "spec":{"user":U,"uid":ID,"groups":[...],"extra":{K:[...]},
 *            "resourceAttributes":{...} | "nonResourceAttributes":{"path":P,"verb":V}}}
 * uid is omitted when empty, extra when the identity has none; groups is always sent (maybe
 * []); resourceAttributes holds only the fields that are not NULL. Every string is escaped
 * by jansson.
 *
 * user is a view that identity_view_parse accepted; attrs is read only. Nothing is kept.
 * Returns a malloc'd NUL-terminated body (the caller frees it) and its length in *len, or
 * NULL with *len untouched when: an argument is NULL, sar_attributes_valid(attrs) is false,
 * any string (identity or attribute) is not valid UTF-8, the identity repeats an extra key,
 * or memory runs out. */
char *sar_request_body(const identity_view *user, const sar_attributes *attrs, size_t *len);

/* Parses a 200/201 SubjectAccessReview answer of body_len bytes (need not be
 * NUL-terminated). status.allowed true → SAR_ALLOWED; allowed false or omitted (the API
 * server omits it when false) → SAR_DENIED; status.denied true → SAR_DENIED even if
 * allowed is true. Anything else → SAR_BAD_RESPONSE: not JSON, trailing bytes, duplicate
 * keys anywhere, not an object, "kind" present but not "SubjectAccessReview" (e.g. a
 * Status), no status object, allowed/denied present but not booleans, reason or
 * evaluationError present but not strings.
 *
 * reason (caller-owned, reason_cap bytes; may be NULL when reason_cap is 0) always receives
 * a NUL-terminated text: for a verdict, status.reason if non-empty, else
 * status.evaluationError if non-empty, else "allowed" / "denied"; for SAR_BAD_RESPONSE what
 * was wrong. It may be shown to clients in a 403 body: control characters (C0, DEL, C1)
 * are replaced by '?' and truncation never splits a UTF-8 sequence. */
sar_result sar_parse_response(const char *body, size_t body_len, char *reason, size_t reason_cap);

/* Cache key of the question "may user do attrs": cache_key_for_parts with domain
 * SAR_CACHE_KEY_DOMAIN over the parts
 *   identity_digest (32 bytes: SHA-256 of the packed identity, identity_digest()),
 *   "R" | "N" (resource / non-resource),
 *   then namespace, verb, group, version, resource, subresource, name, path, each as an
 *   empty part when NULL or as byte 0x01 followed by the string when present.
 * The packed identity is itself unambiguous (length-prefixed, counted), so its digest
 * stands for every field of the user; length prefixes keep the rest apart: keys differ
 * whenever the identity, the kind, an attribute, or absent-versus-"" differs. attrs is not
 * validated (an invalid question simply never gets a body to be cached under).
 *
 * Writes *out and returns 0, or returns -1 (out unspecified) when an argument is NULL, an
 * attribute is longer than 4 GiB, memory runs out or the HMAC fails. Thread-safe. */
int sar_cache_key(const cache_keyer *keyer, const unsigned char identity_digest[IDENTITY_DIGEST_BYTES],
                  const sar_attributes *attrs, cache_key *out);

/* What the SubjectAccessReview cache keeps per verdict: the packed identity it was asked
 * for (so a revoked identity's verdicts can be found and evicted) followed by the denial
 * reason (empty when allowed). Layout: le32 identity length | identity | reason.
 * sar_cache_value_pack writes at most cap bytes and returns the length; when the identity
 * does not fit beside the reason, it is left out (length 0) and such an entry is evicted
 * by every revocation (sar_cache_value_unpack reports identity_len 0). */
size_t sar_cache_value_pack(const unsigned char *identity, size_t identity_len, const char *reason, size_t reason_len,
                            unsigned char *out, size_t cap);
/* Splits a value made by sar_cache_value_pack. Returns 0, or -1 when it is malformed. */
int sar_cache_value_unpack(const unsigned char *value, size_t value_len, const unsigned char **identity,
                           size_t *identity_len, const char **reason, size_t *reason_len);

#endif
