/* sar.c owns the SubjectAccessReview request encoding, the answer's validation and the
 * encoding of SubjectAccessReview cache keys. */
#include "sar.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- attributes ---- */

static bool nonempty(const char *s)
{
    return s && s[0] != '\0';
}

bool sar_attributes_valid(const sar_attributes *attrs)
{
    if (!attrs || !nonempty(attrs->verb)) return false;
    if (attrs->nonresource)
        return nonempty(attrs->path) && !attrs->namespace_ && !attrs->group && !attrs->version && !attrs->resource &&
               !attrs->subresource && !attrs->name;
    return nonempty(attrs->resource) && !attrs->path;
}

/* ---- request body ---- */

/* Sets key to a JSON string of s (NULL s: nothing to do). Returns 0, or -1 when s is not
 * valid UTF-8 or memory runs out (json_string returns NULL; set_new then fails). */
static int set_string(json_t *obj, const char *key, const char *s)
{
    if (!s) return 0;
    return json_object_set_new(obj, key, json_string(s));
}

static int set_stringn(json_t *obj, const char *key, str_view s)
{
    return json_object_set_new(obj, key, json_stringn(s.ptr, s.len));
}

/* Reads n string records at *pos into a new JSON array; NULL on bad UTF-8 or no memory. */
static json_t *string_array(const unsigned char **pos, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        str_view s;
        identity_read_string(pos, &s);
        if (json_array_append_new(arr, json_stringn(s.ptr, s.len)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

/* The "extra" object of the identity; NULL on bad UTF-8, a repeated key or no memory. */
static json_t *extra_object(const identity_view *user)
{
    json_t *obj = json_object();
    const unsigned char *pos = user->extra;
    for (size_t i = 0; obj && i < user->n_extra; i++) {
        str_view key;
        identity_read_string(&pos, &key);
        size_t n_values = identity_read_count(&pos);
        /* A repeated key would silently replace the first one's values: refuse it. */
        bool ok = json_object_getn(obj, key.ptr, key.len) == NULL;
        /* setn_new consumes values (NULL included) and checks the key's UTF-8. */
        ok = ok && json_object_setn_new(obj, key.ptr, key.len, string_array(&pos, n_values)) == 0;
        if (!ok) {
            json_decref(obj);
            obj = NULL;
        }
    }
    return obj;
}

static json_t *attributes_object(const sar_attributes *attrs)
{
    json_t *obj = json_object();
    if (!obj) return NULL;
    int rc = 0;
    if (attrs->nonresource) {
        rc |= set_string(obj, "path", attrs->path);
        rc |= set_string(obj, "verb", attrs->verb);
    } else {
        rc |= set_string(obj, "namespace", attrs->namespace_);
        rc |= set_string(obj, "verb", attrs->verb);
        rc |= set_string(obj, "group", attrs->group);
        rc |= set_string(obj, "version", attrs->version);
        rc |= set_string(obj, "resource", attrs->resource);
        rc |= set_string(obj, "subresource", attrs->subresource);
        rc |= set_string(obj, "name", attrs->name);
    }
    if (rc != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

static json_t *spec_object(const identity_view *user, const sar_attributes *attrs)
{
    json_t *spec = json_object();
    if (!spec) return NULL;
    int rc = set_stringn(spec, "user", user->username);
    if (user->uid.len) rc |= set_stringn(spec, "uid", user->uid);
    const unsigned char *pos = user->groups;
    rc |= json_object_set_new(spec, "groups", string_array(&pos, user->n_groups));
    if (user->n_extra) rc |= json_object_set_new(spec, "extra", extra_object(user));
    rc |= json_object_set_new(spec, attrs->nonresource ? "nonResourceAttributes" : "resourceAttributes",
                              attributes_object(attrs));
    if (rc != 0) {
        json_decref(spec);
        return NULL;
    }
    return spec;
}

char *sar_request_body(const identity_view *user, const sar_attributes *attrs, size_t *len)
{
    if (!user || !len || !sar_attributes_valid(attrs)) return NULL;
    json_t *root = json_object();
    if (!root) return NULL;
    /* json_object_set_new consumes its value even on failure, NULL included. */
    int rc = json_object_set_new(root, "apiVersion", json_string("authorization.k8s.io/v1"));
    rc |= json_object_set_new(root, "kind", json_string("SubjectAccessReview"));
    rc |= json_object_set_new(root, "spec", spec_object(user, attrs));
    char *body = rc == 0 ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (body) *len = strlen(body); /* jansson escapes NUL as \u0000: strlen is the length */
    return body;
}

/* ---- answer ---- */

/* Copies the NUL-terminated UTF-8 text into reason (cap bytes, NUL-terminated), replacing
 * C0 controls, DEL and C1 controls (U+0080..U+009F) with '?' and stopping before a
 * character that does not fit, so a truncated reason is still valid UTF-8. */
static void set_reason(char *reason, size_t cap, const char *text)
{
    if (!reason || cap == 0) return;
    size_t out = 0;
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        unsigned char c = *p;
        size_t in_len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        for (size_t i = 1; i < in_len; i++)
            if (p[i] == '\0') in_len = 0; /* cut short: stop (jansson gives valid UTF-8) */
        if (in_len == 0) break;
        bool control = c < 0x20 || c == 0x7f || (c == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F);
        size_t out_len = control ? 1 : in_len;
        if (out + out_len > cap - 1) break;
        if (control)
            reason[out] = '?';
        else
            memcpy(reason + out, p, in_len);
        out += out_len;
        p += in_len;
    }
    reason[out] = '\0';
}

/* *out = the string member key of obj, or NULL when absent or empty. False when the
 * member is present but not a string. */
static bool optional_string(json_t *obj, const char *key, const char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v) return true;
    if (!json_is_string(v)) return false;
    if (json_string_length(v) > 0) *out = json_string_value(v);
    return true;
}

sar_result sar_parse_response(const char *body, size_t body_len, char *reason, size_t reason_cap)
{
    sar_result result = SAR_BAD_RESPONSE;
    json_error_t error;
    json_t *root = body ? json_loadb(body, body_len, JSON_REJECT_DUPLICATES, &error) : NULL;
    if (!json_is_object(root)) {
        set_reason(reason, reason_cap, "answer is not a JSON object");
        goto done;
    }
    json_t *kind = json_object_get(root, "kind");
    if (kind && !(json_is_string(kind) && strcmp(json_string_value(kind), "SubjectAccessReview") == 0)) {
        set_reason(reason, reason_cap, "answer is not a SubjectAccessReview");
        goto done;
    }
    json_t *status = json_object_get(root, "status");
    if (!json_is_object(status)) {
        set_reason(reason, reason_cap, "SubjectAccessReview has no status");
        goto done;
    }
    json_t *allowed = json_object_get(status, "allowed");
    json_t *denied = json_object_get(status, "denied");
    if ((allowed && !json_is_boolean(allowed)) || (denied && !json_is_boolean(denied))) {
        set_reason(reason, reason_cap, "status.allowed or status.denied is not a boolean");
        goto done;
    }
    const char *why = NULL, *evaluation_error = NULL;
    if (!optional_string(status, "reason", &why) || !optional_string(status, "evaluationError", &evaluation_error)) {
        set_reason(reason, reason_cap, "status.reason or status.evaluationError is not a string");
        goto done;
    }
    /* denied:true is authoritative even next to allowed:true (k8s semantics). */
    result = json_is_true(allowed) && !json_is_true(denied) ? SAR_ALLOWED : SAR_DENIED;
    set_reason(reason, reason_cap,
               why                     ? why
               : evaluation_error      ? evaluation_error
               : result == SAR_ALLOWED ? "allowed"
                                       : "denied");
done:
    json_decref(root);
    return result;
}

/* ---- cache key ---- */

#define SAR_KEY_ATTRS 8

int sar_cache_key(const cache_keyer *keyer, const unsigned char identity_digest[IDENTITY_DIGEST_BYTES],
                  const sar_attributes *attrs, cache_key *out)
{
    if (!keyer || !identity_digest || !attrs || !out) return -1;
    const char *values[SAR_KEY_ATTRS] = {attrs->namespace_, attrs->verb,        attrs->group, attrs->version,
                                         attrs->resource,   attrs->subresource, attrs->name,  attrs->path};
    size_t attr_bytes = 0;
    size_t value_lens[SAR_KEY_ATTRS];
    for (size_t i = 0; i < SAR_KEY_ATTRS; i++) {
        value_lens[i] = values[i] ? strlen(values[i]) : 0;
        if (value_lens[i] >= UINT32_MAX) return -1;
        attr_bytes += values[i] ? 1 + value_lens[i] : 0;
    }
    /* The identity enters as its SHA-256 (identity_digest): the key stays a keyed hash of
     * user and attributes, and hashing it costs two SHA-256 blocks, not the whole identity
     * on every request. */
    enum { N_PARTS = 2 + SAR_KEY_ATTRS, STACK_ATTR_BYTES = 2048 };
    const char *parts[N_PARTS];
    size_t lens[N_PARTS];
    char attr_stack[STACK_ATTR_BYTES];
    char *attr_buf = attr_bytes <= STACK_ATTR_BYTES ? attr_stack : malloc(attr_bytes);
    if (!attr_buf) return -1;
    size_t n = 0;
    parts[n] = (const char *)identity_digest;
    lens[n++] = IDENTITY_DIGEST_BYTES;
    parts[n] = attrs->nonresource ? "N" : "R";
    lens[n++] = 1;
    /* Absent: an empty part. Present: 0x01 then the string, so "" is one byte long. */
    size_t a = 0;
    for (size_t i = 0; i < SAR_KEY_ATTRS; i++) {
        if (!values[i]) {
            parts[n] = "";
            lens[n++] = 0;
            continue;
        }
        attr_buf[a] = '\x01';
        memcpy(attr_buf + a + 1, values[i], value_lens[i]);
        parts[n] = attr_buf + a;
        lens[n++] = 1 + value_lens[i];
        a += 1 + value_lens[i];
    }
    int rc = cache_key_for_parts(keyer, SAR_CACHE_KEY_DOMAIN, parts, lens, N_PARTS, out);
    if (attr_buf != attr_stack) free(attr_buf);
    return rc;
}

size_t sar_cache_value_pack(const unsigned char *identity, size_t identity_len, const char *reason, size_t reason_len,
                            unsigned char *out, size_t cap)
{
    if (cap < 4) return 0;
    if (reason_len > cap - 4) reason_len = cap - 4;
    if (identity_len > cap - 4 - reason_len) identity_len = 0; /* does not fit: evicted by any revocation */
    out[0] = (unsigned char)(identity_len & 0xff);
    out[1] = (unsigned char)((identity_len >> 8) & 0xff);
    out[2] = (unsigned char)((identity_len >> 16) & 0xff);
    out[3] = (unsigned char)((identity_len >> 24) & 0xff);
    if (identity_len) memcpy(out + 4, identity, identity_len);
    if (reason_len) memcpy(out + 4 + identity_len, reason, reason_len);
    return 4 + identity_len + reason_len;
}

int sar_cache_value_unpack(const unsigned char *value, size_t value_len, const unsigned char **identity,
                           size_t *identity_len, const char **reason, size_t *reason_len)
{
    if (value_len < 4) return -1;
    size_t n = (size_t)value[0] | (size_t)value[1] << 8 | (size_t)value[2] << 16 | (size_t)value[3] << 24;
    if (n > value_len - 4) return -1;
    *identity = value + 4;
    *identity_len = n;
    *reason = (const char *)value + 4 + n;
    *reason_len = value_len - 4 - n;
    return 0;
}
