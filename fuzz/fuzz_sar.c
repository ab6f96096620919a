/* fuzz_sar: the SubjectAccessReview wire format (core/sar.h): sar_parse_response on the
 * input as an answer body, and sar_request_body / sar_attributes_valid / sar_cache_key on a
 * question and an identity derived from the same input.
 *
 * Derivation: bytes 0..2 are flags (b0 bit0 nonresource, bit1 "force the required fields
 * present"; b1 bit i: attribute i present; b2 bits 0-2 groups, 3-4 extra keys, 5-6 values
 * per key); the rest is split on '"' into the strings used in order: username, uid,
 * groups, extra keys and values, then the present attributes (namespace, verb, group,
 * version, resource, subresource, name, path). Missing strings are "".
 *
 * Invariants (abort on violation):
 * answer parsing
 *  - the result is one of the three; reason is NUL-terminated inside its buffer, valid
 *    UTF-8, without C0, DEL or C1 controls; a small exact-size buffer gets exactly the
 *    longest whole-character prefix that fits; reason NULL with cap 0 gives the same result;
 *  - ALLOWED iff jansson reads an object (kind absent or "SubjectAccessReview") with a
 *    status whose allowed is true and denied is not true; a verdict's reason is
 *    status.reason, else status.evaluationError, else "allowed"/"denied", with controls
 *    replaced by '?' (checked against a reference written here);
 * request body
 *  - sar_attributes_valid agrees with the header's rules, written out here;
 *  - sar_request_body returns NULL exactly when the question is invalid, a string is not
 *    valid UTF-8 or an extra key repeats; otherwise a body of strlen == *len, without raw
 *    control bytes, that jansson parses (rejecting duplicate keys) into exactly the
 *    identity and the present attributes, with uid and extra omitted when empty;
 *  - sar_cache_key is deterministic and tells apart absent from "", and resource from
 *    non-resource questions. */
#include "cache_key.h"
#include "fuzz_common.h"
#include "identity.h"
#include "sar.h"

#include <jansson.h>

#define REASON_CAP 256 /* review_parsed.reason */
#define PACKED_CAP 16384
#define N_ATTRS 8

static cache_keyer *keyer;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_object_seed(1);
    static const unsigned char secret[CACHE_KEY_SECRET_BYTES] = {1, 2, 3, 4, 5, 6, 7, 8};
    keyer = cache_keyer_new_with_secret(secret);
    if (!keyer) abort();
    return 0;
}

/* ---- answer ---- */

/* The reference of set_reason: controls to '?', then the longest whole-character prefix
 * of at most cap - 1 bytes. text must be valid UTF-8. */
static void reference_reason(const char *text, size_t cap, char *out)
{
    size_t n = 0;
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        size_t len = *p < 0x80 ? 1 : *p < 0xE0 ? 2 : *p < 0xF0 ? 3 : 4;
        uint32_t cp = len == 1 ? *p : len == 2 ? (uint32_t)(*p & 0x1F) << 6 | (p[1] & 0x3F) : 0x800;
        bool control = cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f);
        size_t out_len = control ? 1 : len;
        if (n + out_len > cap - 1) break;
        if (control)
            out[n] = '?';
        else
            memcpy(out + n, p, len);
        n += out_len;
        p += len;
    }
    out[n] = '\0';
}

static void check_reason_text(const char *reason, size_t cap)
{
    const char *nul = memchr(reason, '\0', cap);
    FUZZ_CHECK(nul != NULL);
    size_t len = (size_t)(nul - reason);
    FUZZ_CHECK(fuzz_utf8_valid(reason, len));
    FUZZ_CHECK(!fuzz_has_c0_or_del(reason, len));
    FUZZ_CHECK(!fuzz_has_c1(reason, len));
}

static void check_answer(const char *body, size_t size)
{
    char reason[REASON_CAP];
    memset(reason, 0x5a, sizeof(reason));
    sar_result r = sar_parse_response(body, size, reason, sizeof(reason));
    FUZZ_CHECK(r == SAR_ALLOWED || r == SAR_DENIED || r == SAR_BAD_RESPONSE);
    check_reason_text(reason, sizeof(reason));
    FUZZ_CHECK(reason[0] != '\0');
    FUZZ_CHECK(sar_parse_response(body, size, NULL, 0) == r);

    /* A small exact-size buffer: the longest whole-character prefix that fits. */
    size_t cap = 1 + size % 16;
    char *small = fuzz_xmalloc(cap);
    FUZZ_CHECK(sar_parse_response(body, size, small, cap) == r);
    check_reason_text(small, cap);
    char want_small[REASON_CAP];
    reference_reason(reason, cap, want_small);
    FUZZ_CHECK(strcmp(small, want_small) == 0);
    free(small);

    /* The verdict and its reason against jansson's reading. */
    json_error_t err;
    json_t *root = json_loadb(body, size, JSON_REJECT_DUPLICATES, &err);
    json_t *kind = json_object_get(root, "kind");
    json_t *status = json_object_get(root, "status");
    bool shape = json_is_object(root) && json_is_object(status) &&
                 (!kind || (json_is_string(kind) && strcmp(json_string_value(kind), "SubjectAccessReview") == 0));
    if (r != SAR_BAD_RESPONSE) {
        FUZZ_CHECK(shape);
        json_t *allowed = json_object_get(status, "allowed"), *denied = json_object_get(status, "denied");
        FUZZ_CHECK(!allowed || json_is_boolean(allowed));
        FUZZ_CHECK(!denied || json_is_boolean(denied));
        FUZZ_CHECK((r == SAR_ALLOWED) == (json_is_true(allowed) && !json_is_true(denied)));
        json_t *why = json_object_get(status, "reason"), *eval = json_object_get(status, "evaluationError");
        FUZZ_CHECK(!why || json_is_string(why));
        FUZZ_CHECK(!eval || json_is_string(eval));
        const char *text = why && json_string_length(why)     ? json_string_value(why)
                           : eval && json_string_length(eval) ? json_string_value(eval)
                           : r == SAR_ALLOWED                 ? "allowed"
                                                              : "denied";
        char want[REASON_CAP];
        reference_reason(text, sizeof(want), want);
        FUZZ_CHECK(strcmp(reason, want) == 0);
    } else if (shape) {
        /* Bad although the shape is right: a member has the wrong type. */
        json_t *allowed = json_object_get(status, "allowed"), *denied = json_object_get(status, "denied");
        json_t *why = json_object_get(status, "reason"), *eval = json_object_get(status, "evaluationError");
        FUZZ_CHECK((allowed && !json_is_boolean(allowed)) || (denied && !json_is_boolean(denied)) ||
                   (why && !json_is_string(why)) || (eval && !json_is_string(eval)));
    }
    json_decref(root);
}

/* ---- question ---- */

typedef struct piece {
    const char *ptr;
    size_t len;
} piece;

static bool keys_unique(const piece *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (keys[i].len == keys[j].len && memcmp(keys[i].ptr, keys[j].ptr, keys[i].len) == 0) return false;
    return true;
}

static bool json_is_str(json_t *v, const char *s, size_t len)
{
    return json_is_string(v) && json_string_length(v) == len && memcmp(json_string_value(v), s, len) == 0;
}

static void check_question(const uint8_t *data, size_t size)
{
    uint8_t b0 = size > 0 ? data[0] : 0, b1 = size > 1 ? data[1] : 0, b2 = size > 2 ? data[2] : 0;
    /* Split the rest on '"'. */
    const uint8_t *rest = data + (size > 3 ? 3 : size);
    size_t rest_len = size > 3 ? size - 3 : 0;
    piece parts[64];
    size_t n_parts = 0, start = 0;
    for (size_t i = 0; i <= rest_len && n_parts < 64; i++) {
        if (i == rest_len || rest[i] == '"') {
            parts[n_parts].ptr = (const char *)rest + start;
            parts[n_parts].len = i - start;
            n_parts++;
            start = i + 1;
        }
    }
    size_t next = 0;
#define NEXT() (next < n_parts ? parts[next++] : (piece){"", 0})

    /* The identity. */
    size_t n_groups = b2 & 7, n_extra = (b2 >> 3) & 3, n_values = (b2 >> 5) & 3;
    piece username = NEXT(), uid = NEXT(), groups[8], keys[4], values[4][4];
    for (size_t i = 0; i < n_groups; i++) groups[i] = NEXT();
    for (size_t k = 0; k < n_extra; k++) {
        keys[k] = NEXT();
        for (size_t v = 0; v < n_values; v++) values[k][v] = NEXT();
    }
    static unsigned char packed[PACKED_CAP];
    identity_builder b;
    identity_builder_init(&b, packed, sizeof(packed));
    identity_builder_string(&b, username.ptr, username.len);
    identity_builder_string(&b, uid.ptr, uid.len);
    identity_builder_count(&b, n_groups);
    for (size_t i = 0; i < n_groups; i++) identity_builder_string(&b, groups[i].ptr, groups[i].len);
    identity_builder_count(&b, n_extra);
    for (size_t k = 0; k < n_extra; k++) {
        identity_builder_string(&b, keys[k].ptr, keys[k].len);
        identity_builder_count(&b, n_values);
        for (size_t v = 0; v < n_values; v++) identity_builder_string(&b, values[k][v].ptr, values[k][v].len);
    }
    bool has_control = fuzz_has_c0_or_del(username.ptr, username.len) || fuzz_has_c0_or_del(uid.ptr, uid.len);
    for (size_t i = 0; i < n_groups; i++) has_control |= fuzz_has_c0_or_del(groups[i].ptr, groups[i].len);
    for (size_t k = 0; k < n_extra; k++) {
        has_control |= fuzz_has_c0_or_del(keys[k].ptr, keys[k].len);
        for (size_t v = 0; v < n_values; v++) has_control |= fuzz_has_c0_or_del(values[k][v].ptr, values[k][v].len);
    }
    bool too_long = username.len > IDENTITY_STRING_MAX || uid.len > IDENTITY_STRING_MAX;
    for (size_t i = 0; i < n_groups; i++) too_long |= groups[i].len > IDENTITY_STRING_MAX;
    for (size_t k = 0; k < n_extra; k++) {
        too_long |= keys[k].len > IDENTITY_STRING_MAX;
        for (size_t v = 0; v < n_values; v++) too_long |= values[k][v].len > IDENTITY_STRING_MAX;
    }
    /* The builder refuses control characters and over-long strings, and nothing else
     * while there is room (the records add at most 64 bytes to the input's). */
    if (has_control || too_long) FUZZ_CHECK(b.failed);
    if (size + 64 <= sizeof(packed)) FUZZ_CHECK(b.failed == (has_control || too_long));
    if (b.failed) return;
    identity_view user;
    FUZZ_CHECK(identity_view_parse(packed, b.len, &user) == 0);

    /* The question: C strings (an embedded NUL ends the attribute). */
    char *attr_store[N_ATTRS] = {0};
    const char *attr[N_ATTRS] = {0};
    bool nonresource = b0 & 1;
    uint8_t present = b1;
    if (b0 & 2) {
        present |= 1u << 1; /* verb */
        present = nonresource ? (uint8_t)((present & 0x02) | 0x80) : (uint8_t)((present | 0x10) & 0x7f);
    }
    for (int i = 0; i < N_ATTRS; i++) {
        if (!(present & (1u << i))) continue;
        piece p = NEXT();
        attr_store[i] = fuzz_copy_cstr((const uint8_t *)p.ptr, p.len);
        attr[i] = attr_store[i];
    }
#undef NEXT
    sar_attributes attrs = {.nonresource = nonresource,
                            .namespace_ = attr[0],
                            .verb = attr[1],
                            .group = attr[2],
                            .version = attr[3],
                            .resource = attr[4],
                            .subresource = attr[5],
                            .name = attr[6],
                            .path = attr[7]};
    static const char *const attr_names[N_ATTRS] = {"namespace", "verb",        "group", "version",
                                                    "resource",  "subresource", "name",  "path"};

    /* Validity by the header's rules. */
    bool nonempty[N_ATTRS];
    for (int i = 0; i < N_ATTRS; i++) nonempty[i] = attr[i] && attr[i][0];
    bool valid = nonempty[1];
    if (nonresource) {
        valid = valid && nonempty[7];
        for (int i = 0; i < N_ATTRS; i++)
            if (i != 1 && i != 7 && attr[i]) valid = false;
    } else {
        valid = valid && nonempty[4] && !attr[7];
    }
    FUZZ_CHECK(sar_attributes_valid(&attrs) == valid);
    FUZZ_CHECK(!sar_attributes_valid(NULL));

    bool utf8 = fuzz_utf8_valid(username.ptr, username.len) && fuzz_utf8_valid(uid.ptr, uid.len);
    for (size_t i = 0; i < n_groups; i++) utf8 = utf8 && fuzz_utf8_valid(groups[i].ptr, groups[i].len);
    for (size_t k = 0; k < n_extra; k++) {
        utf8 = utf8 && fuzz_utf8_valid(keys[k].ptr, keys[k].len);
        for (size_t v = 0; v < n_values; v++) utf8 = utf8 && fuzz_utf8_valid(values[k][v].ptr, values[k][v].len);
    }
    for (int i = 0; i < N_ATTRS; i++) utf8 = utf8 && (!attr[i] || fuzz_utf8_valid(attr[i], strlen(attr[i])));

    size_t len = 12345;
    char *body = sar_request_body(&user, &attrs, &len);
    bool want_body = valid && utf8 && keys_unique(keys, n_extra);
    FUZZ_CHECK((body != NULL) == want_body);
    if (!body) {
        FUZZ_CHECK(len == 12345);
    } else {
        FUZZ_CHECK(len == strlen(body));
        for (size_t i = 0; i < len; i++) FUZZ_CHECK((unsigned char)body[i] >= 0x20);
        json_error_t err;
        json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
        FUZZ_CHECK(json_is_object(root) && json_object_size(root) == 3);
        FUZZ_CHECK(json_is_str(json_object_get(root, "apiVersion"), "authorization.k8s.io/v1", 23));
        FUZZ_CHECK(json_is_str(json_object_get(root, "kind"), "SubjectAccessReview", 19));
        json_t *spec = json_object_get(root, "spec");
        FUZZ_CHECK(json_is_object(spec));
        FUZZ_CHECK(json_object_size(spec) == 3 + (uid.len > 0) + (n_extra > 0));
        FUZZ_CHECK(json_is_str(json_object_get(spec, "user"), username.ptr, username.len));
        if (uid.len) FUZZ_CHECK(json_is_str(json_object_get(spec, "uid"), uid.ptr, uid.len));
        json_t *g = json_object_get(spec, "groups");
        FUZZ_CHECK(json_is_array(g) && json_array_size(g) == n_groups);
        for (size_t i = 0; i < n_groups; i++)
            FUZZ_CHECK(json_is_str(json_array_get(g, i), groups[i].ptr, groups[i].len));
        if (n_extra) {
            json_t *extra = json_object_get(spec, "extra");
            FUZZ_CHECK(json_is_object(extra) && json_object_size(extra) == n_extra);
            for (size_t k = 0; k < n_extra; k++) {
                json_t *vals = json_object_getn(extra, keys[k].ptr, keys[k].len);
                FUZZ_CHECK(json_is_array(vals) && json_array_size(vals) == n_values);
                for (size_t v = 0; v < n_values; v++)
                    FUZZ_CHECK(json_is_str(json_array_get(vals, v), values[k][v].ptr, values[k][v].len));
            }
        }
        json_t *a = json_object_get(spec, nonresource ? "nonResourceAttributes" : "resourceAttributes");
        FUZZ_CHECK(json_is_object(a));
        size_t n_present = 0;
        for (int i = 0; i < N_ATTRS; i++) {
            json_t *v = json_object_get(a, attr_names[i]);
            if (attr[i]) {
                n_present++;
                FUZZ_CHECK(json_is_str(v, attr[i], strlen(attr[i])));
            } else {
                FUZZ_CHECK(v == NULL);
            }
        }
        FUZZ_CHECK(json_object_size(a) == n_present);
        json_decref(root);
        free(body);
    }

    /* Cache keys: deterministic; absent differs from "", resource from non-resource. */
    cache_key k1, k2;
    unsigned char digest[IDENTITY_DIGEST_BYTES];
    FUZZ_CHECK(identity_digest(packed, b.len, digest) == 0);
    FUZZ_CHECK(sar_cache_key(keyer, digest, &attrs, &k1) == 0);
    FUZZ_CHECK(sar_cache_key(keyer, digest, &attrs, &k2) == 0);
    FUZZ_CHECK(memcmp(&k1, &k2, sizeof(k1)) == 0);
    sar_attributes other = attrs;
    other.nonresource = !other.nonresource;
    FUZZ_CHECK(sar_cache_key(keyer, digest, &other, &k2) == 0);
    FUZZ_CHECK(memcmp(&k1, &k2, sizeof(k1)) != 0);
    for (int i = 0; i < N_ATTRS; i++) {
        if (attr[i] && attr[i][0]) continue;
        other = attrs;
        const char **field[N_ATTRS] = {&other.namespace_, &other.verb,        &other.group, &other.version,
                                       &other.resource,   &other.subresource, &other.name,  &other.path};
        *field[i] = attr[i] ? NULL : ""; /* swap absent and "" */
        FUZZ_CHECK(sar_cache_key(keyer, digest, &other, &k2) == 0);
        FUZZ_CHECK(memcmp(&k1, &k2, sizeof(k1)) != 0);
        break;
    }
    for (int i = 0; i < N_ATTRS; i++) free(attr_store[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = fuzz_copy_exact(data, size);
    check_answer(body, size);
    free(body);
    char reason[REASON_CAP];
    FUZZ_CHECK(sar_parse_response(NULL, 0, reason, sizeof(reason)) == SAR_BAD_RESPONSE);
    check_question(data, size);
    return 0;
}
