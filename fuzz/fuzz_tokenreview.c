/* fuzz_tokenreview: tokenreview_parse_response (core/tokenreview.h) and the packed identity
 * it produces (core/identity.h).
 *
 * The input is the API server's answer body (an exact-size heap copy, not NUL-terminated),
 * parsed as the gateway does (packed cap TOKEN_CACHE_VALUE_MAX, reason cap 256) with 0, 1
 * and 2 requested audiences.
 *
 * Invariants (abort on violation):
 *  - the result is one of the three; the reason is NUL-terminated inside its buffer
 *    (also for a small exact-size reason buffer);
 *  - audiences only narrow: authenticated with {A} implies authenticated with {} and with
 *    {B, A}, with byte-identical packed identities; unauthenticated with {} stays so with
 *    any audiences;
 *  - on AUTHENTICATED: 0 < packed_len <= cap; identity_view_parse accepts the bytes;
 *    no string holds a C0 control or DEL; the username is not empty; the identity equals
 *    what jansson reads from status.user (username, uid or "", groups, extra in order);
 *    a requested audience appears in status.audiences; identity_join_groups with a large
 *    buffer returns the '|'-joined groups, fits in exactly len+1 bytes and fails in len;
 *    identity_serviceaccount splits system:serviceaccount:NS:NAME consistently;
 *  - the same answer parsed into a buffer of exactly packed_len bytes succeeds with the
 *    same bytes, and into packed_len - 1 bytes does not succeed (exact-size heap buffers);
 *  - on UNAUTHENTICATED without audiences, status.authenticated is not true. */
#include "fuzz_common.h"
#include "identity.h"
#include "tokenreview.h"

#include <jansson.h>

#define PACKED_CAP 16384 /* TOKEN_CACHE_VALUE_MAX */
#define REASON_CAP 256   /* review_parsed.reason */

static const char aud_hooks[] = "https://hooks.example.com";
static const char aud_api[] = "https://kubernetes.default.svc.cluster.local";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_object_seed(1);
    return 0;
}

typedef struct parsed {
    tokenreview_result result;
    unsigned char packed[PACKED_CAP];
    size_t packed_len;
    char reason[REASON_CAP];
} parsed;

static void parse(const char *body, size_t len, const char *const *auds, size_t n, parsed *out)
{
    memset(out->reason, 0x5a, sizeof(out->reason));
    out->packed_len = 0;
    out->result = tokenreview_parse_response(body, len, auds, n, out->packed, sizeof(out->packed), &out->packed_len,
                                             out->reason, sizeof(out->reason));
    FUZZ_CHECK(out->result == TOKENREVIEW_AUTHENTICATED || out->result == TOKENREVIEW_UNAUTHENTICATED ||
               out->result == TOKENREVIEW_BAD_RESPONSE || out->result == TOKENREVIEW_UNREPRESENTABLE);
    if (out->result == TOKENREVIEW_AUTHENTICATED) {
        FUZZ_CHECK(out->packed_len > 0 && out->packed_len <= sizeof(out->packed));
    } else {
        FUZZ_CHECK(memchr(out->reason, '\0', sizeof(out->reason)) != NULL);
    }
}

static bool same_identity(const parsed *a, const parsed *b)
{
    return a->packed_len == b->packed_len && memcmp(a->packed, b->packed, a->packed_len) == 0;
}

static void check_string(str_view s, json_t *want)
{
    FUZZ_CHECK(!fuzz_has_c0_or_del(s.ptr, s.len));
    FUZZ_CHECK(s.len <= IDENTITY_STRING_MAX);
    FUZZ_CHECK(json_is_string(want));
    FUZZ_CHECK(json_string_length(want) == s.len && memcmp(json_string_value(want), s.ptr, s.len) == 0);
}

/* Reads a count and that many strings at *pos; compares with the JSON array (or absent). */
static void check_list(const unsigned char **pos, size_t n, json_t *want)
{
    FUZZ_CHECK(n <= IDENTITY_LIST_MAX);
    FUZZ_CHECK(want == NULL ? n == 0 : json_is_array(want) && json_array_size(want) == n);
    for (size_t i = 0; i < n; i++) {
        str_view s;
        identity_read_string(pos, &s);
        check_string(s, json_array_get(want, i));
    }
}

/* The joined X-Remote-Groups form of an identity whose group names are all unambiguous. */
static void check_joined_groups(const identity_view *view_in, const char *joined, long jl)
{
    identity_view view = *view_in;
    const unsigned char *pos;
    FUZZ_CHECK(jl >= 0 && (size_t)jl < PACKED_CAP + 1 && joined[jl] == '\0');
    size_t want_len = 0;
    pos = view.groups;
    for (size_t i = 0; i < view.n_groups; i++) {
        str_view g;
        identity_read_string(&pos, &g);
        if (i) FUZZ_CHECK(joined[want_len++] == '|');
        FUZZ_CHECK(memcmp(joined + want_len, g.ptr, g.len) == 0);
        want_len += g.len;
    }
    FUZZ_CHECK((size_t)jl == want_len);
    FUZZ_CHECK(!fuzz_has_c0_or_del(joined, (size_t)jl));
    char *exact = fuzz_xmalloc((size_t)jl + 1);
    FUZZ_CHECK(identity_join_groups(&view, exact, (size_t)jl + 1) == jl && memcmp(exact, joined, (size_t)jl + 1) == 0);
    FUZZ_CHECK(identity_join_groups(&view, exact, (size_t)jl) == -1);
    free(exact);
}

static void check_identity(const parsed *p, json_t *status, const char *const *auds, size_t n_auds)
{
    identity_view view;
    FUZZ_CHECK(identity_view_parse(p->packed, p->packed_len, &view) == 0);

    json_t *user = json_object_get(status, "user");
    FUZZ_CHECK(json_is_object(user));
    FUZZ_CHECK(view.username.len > 0);
    check_string(view.username, json_object_get(user, "username"));
    json_t *uid = json_object_get(user, "uid");
    if (uid) {
        check_string(view.uid, uid);
    } else {
        FUZZ_CHECK(view.uid.len == 0);
    }
    const unsigned char *pos = view.groups;
    check_list(&pos, view.n_groups, json_object_get(user, "groups"));
    FUZZ_CHECK(pos == view.extra - 2); /* the extra count follows the last group */

    json_t *extra = json_object_get(user, "extra");
    FUZZ_CHECK(view.n_extra <= IDENTITY_LIST_MAX);
    FUZZ_CHECK(extra == NULL ? view.n_extra == 0 : json_object_size(extra) == view.n_extra);
    pos = view.extra;
    void *it = extra ? json_object_iter(extra) : NULL;
    for (size_t i = 0; i < view.n_extra; i++) {
        FUZZ_CHECK(it != NULL);
        str_view key;
        identity_read_string(&pos, &key);
        FUZZ_CHECK(!fuzz_has_c0_or_del(key.ptr, key.len));
        const char *want_key = json_object_iter_key(it);
        FUZZ_CHECK(strlen(want_key) == key.len && memcmp(want_key, key.ptr, key.len) == 0);
        size_t n_values = identity_read_count(&pos);
        check_list(&pos, n_values, json_object_iter_value(it));
        it = json_object_iter_next(extra, it);
    }
    FUZZ_CHECK(pos == p->packed + p->packed_len);

    if (n_auds) {
        bool found = false;
        json_t *accepted = json_object_get(status, "audiences");
        for (size_t i = 0; i < json_array_size(accepted); i++)
            for (size_t a = 0; a < n_auds; a++)
                if (json_is_string(json_array_get(accepted, i)) &&
                    strcmp(json_string_value(json_array_get(accepted, i)), auds[a]) == 0)
                    found = true;
        FUZZ_CHECK(found);
    }

    /* Groups joined for X-Remote-Groups; an empty group name or one with '|' has no
     * unambiguous joined form and must be refused (-2), never joined. */
    static char joined[PACKED_CAP + 1];
    long jl = identity_join_groups(&view, joined, sizeof(joined));
    bool ambiguous = false;
    pos = view.groups;
    for (size_t i = 0; i < view.n_groups; i++) {
        str_view g;
        identity_read_string(&pos, &g);
        if (g.len == 0 || memchr(g.ptr, '|', g.len)) ambiguous = true;
    }
    if (ambiguous)
        FUZZ_CHECK(jl == -2);
    else
        check_joined_groups(&view, joined, jl);

    str_view ns, name;
    if (identity_serviceaccount(view.username, &ns, &name)) {
        static const char prefix[] = "system:serviceaccount:";
        FUZZ_CHECK(ns.len > 0 && name.len > 0);
        FUZZ_CHECK(memchr(ns.ptr, ':', ns.len) == NULL && memchr(name.ptr, ':', name.len) == NULL);
        FUZZ_CHECK(view.username.len == sizeof(prefix) - 1 + ns.len + 1 + name.len);
        FUZZ_CHECK(memcmp(view.username.ptr, prefix, sizeof(prefix) - 1) == 0);
        FUZZ_CHECK(ns.ptr == view.username.ptr + sizeof(prefix) - 1 && name.ptr == ns.ptr + ns.len + 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static parsed none, one, two;
    char *body = fuzz_copy_exact(data, size);
    const char *const auds_one[] = {aud_hooks};
    const char *const auds_two[] = {aud_api, aud_hooks};
    parse(body, size, NULL, 0, &none);
    parse(body, size, auds_one, 1, &one);
    parse(body, size, auds_two, 2, &two);

    /* Audiences only narrow; the identity does not depend on them. */
    if (one.result == TOKENREVIEW_AUTHENTICATED) {
        FUZZ_CHECK(none.result == TOKENREVIEW_AUTHENTICATED && same_identity(&none, &one));
        FUZZ_CHECK(two.result == TOKENREVIEW_AUTHENTICATED && same_identity(&two, &one));
    }
    if (two.result == TOKENREVIEW_AUTHENTICATED)
        FUZZ_CHECK(none.result == TOKENREVIEW_AUTHENTICATED && same_identity(&none, &two));
    if (none.result == TOKENREVIEW_UNAUTHENTICATED) /* no audience can authenticate it */
        FUZZ_CHECK(one.result == TOKENREVIEW_UNAUTHENTICATED && two.result == TOKENREVIEW_UNAUTHENTICATED);

    if (none.result != TOKENREVIEW_BAD_RESPONSE) {
        json_error_t err;
        json_t *root = json_loadb(body, size, JSON_REJECT_DUPLICATES, &err);
        FUZZ_CHECK(json_is_object(root));
        json_t *status = json_object_get(root, "status");
        FUZZ_CHECK(json_is_object(status));
        if (none.result == TOKENREVIEW_AUTHENTICATED) {
            FUZZ_CHECK(json_is_true(json_object_get(status, "authenticated")));
            check_identity(&none, status, NULL, 0);
            if (one.result == TOKENREVIEW_AUTHENTICATED) check_identity(&one, status, auds_one, 1);
            if (two.result == TOKENREVIEW_AUTHENTICATED) check_identity(&two, status, auds_two, 2);
        } else if (none.result == TOKENREVIEW_UNREPRESENTABLE) {
            /* Authenticated, with a user the identity bounds refuse. */
            FUZZ_CHECK(json_is_true(json_object_get(status, "authenticated")));
            FUZZ_CHECK(json_is_object(json_object_get(status, "user")));
        } else {
            FUZZ_CHECK(!json_is_true(json_object_get(status, "authenticated")));
        }
        json_decref(root);
    }

    if (none.result == TOKENREVIEW_AUTHENTICATED) {
        /* Exactly enough room succeeds with the same bytes; one byte less does not. */
        size_t len = none.packed_len, got = 0;
        unsigned char *exact = fuzz_xmalloc(len);
        char reason[REASON_CAP];
        FUZZ_CHECK(tokenreview_parse_response(body, size, NULL, 0, exact, len, &got, reason, sizeof(reason)) ==
                   TOKENREVIEW_AUTHENTICATED);
        FUZZ_CHECK(got == len && memcmp(exact, none.packed, len) == 0);
        free(exact);
        unsigned char *short_buf = fuzz_xmalloc(len - 1);
        got = 0;
        FUZZ_CHECK(tokenreview_parse_response(body, size, NULL, 0, short_buf, len - 1, &got, reason, sizeof(reason)) ==
                   TOKENREVIEW_UNREPRESENTABLE);
        FUZZ_CHECK(memchr(reason, '\0', sizeof(reason)) != NULL);
        free(short_buf);
    } else {
        /* A small reason buffer (exact size) is still NUL-terminated inside. */
        size_t cap = 1 + size % 16;
        char *reason = fuzz_xmalloc(cap);
        unsigned char packed[64];
        size_t got = 0;
        tokenreview_result r =
            tokenreview_parse_response(body, size, NULL, 0, packed, sizeof(packed), &got, reason, cap);
        FUZZ_CHECK(r == none.result);
        FUZZ_CHECK(memchr(reason, '\0', cap) != NULL);
        FUZZ_CHECK(strncmp(reason, none.reason, cap - 1) == 0);
        free(reason);
    }
    free(body);
    return 0;
}
