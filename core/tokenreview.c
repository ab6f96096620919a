/* tokenreview.c owns the TokenReview request encoding and the answer's validation. */
#include "tokenreview.h"

#include "identity.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *tokenreview_request_body(const char *token, size_t token_len, const char *const *audiences, size_t n_audiences,
                               size_t *len)
{
    /* Audiences come from configuration and may need escaping; let jansson do it. */
    char *aud_json = NULL;
    if (n_audiences) {
        json_t *arr = json_array();
        bool complete = arr != NULL;
        for (size_t i = 0; complete && i < n_audiences; i++)
            complete = json_array_append_new(arr, json_string(audiences[i])) == 0; /* NULL for bad UTF-8 */
        aud_json = complete ? json_dumps(arr, JSON_COMPACT) : NULL;
        json_decref(arr);
        if (!aud_json) return NULL;
    }
    static const char head[] = "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\","
                               "\"spec\":{\"token\":\"";
    size_t cap = sizeof(head) + token_len + 32 + (aud_json ? strlen(aud_json) : 0);
    char *body = malloc(cap);
    if (!body) {
        free(aud_json);
        return NULL;
    }
    size_t n = 0;
    memcpy(body, head, sizeof(head) - 1);
    n += sizeof(head) - 1;
    memcpy(body + n, token, token_len);
    n += token_len;
    n += (size_t)snprintf(body + n, cap - n, "\"%s%s}}", aud_json ? ",\"audiences\":" : "", aud_json ? aud_json : "");
    free(aud_json);
    *len = n;
    return body;
}

static void set_reason(char *reason, size_t cap, const char *text)
{
    if (cap == 0) return;
    snprintf(reason, cap, "%s", text);
}

/* Appends a JSON array of strings as count + strings; false if it is not one. */
static bool pack_string_array(identity_builder *b, json_t *arr)
{
    if (!arr) {
        identity_builder_count(b, 0);
        return true;
    }
    if (!json_is_array(arr)) return false;
    identity_builder_count(b, json_array_size(arr));
    size_t i;
    json_t *item;
    json_array_foreach(arr, i, item) {
        if (!json_is_string(item)) return false;
        identity_builder_string(b, json_string_value(item), json_string_length(item));
    }
    return true;
}

static bool audiences_accepted(json_t *status, const char *const *audiences, size_t n_audiences)
{
    if (n_audiences == 0) return true;
    json_t *accepted = json_object_get(status, "audiences");
    if (!json_is_array(accepted)) return false;
    size_t i;
    json_t *item;
    json_array_foreach(accepted, i, item) {
        if (!json_is_string(item)) continue;
        for (size_t a = 0; a < n_audiences; a++)
            if (strcmp(json_string_value(item), audiences[a]) == 0) return true;
    }
    return false;
}

typedef enum { PACK_OK, PACK_MALFORMED, PACK_UNREPRESENTABLE } pack_result;

/* Packs status.user: PACK_MALFORMED when it is not shaped like a user (a broken answer),
 * PACK_UNREPRESENTABLE when it is but breaks the identity bounds (identity.h). */
static pack_result pack_user(json_t *user, unsigned char *packed, size_t cap, size_t *packed_len)
{
    if (!json_is_object(user)) return PACK_MALFORMED;
    json_t *username = json_object_get(user, "username");
    json_t *uid = json_object_get(user, "uid");
    if (!json_is_string(username) || json_string_length(username) == 0) return PACK_MALFORMED;
    if (uid && !json_is_string(uid)) return PACK_MALFORMED;

    identity_builder b;
    identity_builder_init(&b, packed, cap);
    identity_builder_string(&b, json_string_value(username), json_string_length(username));
    identity_builder_string(&b, uid ? json_string_value(uid) : "", uid ? json_string_length(uid) : 0);
    if (!pack_string_array(&b, json_object_get(user, "groups"))) return PACK_MALFORMED;

    json_t *extra = json_object_get(user, "extra");
    if (extra && !json_is_object(extra)) return PACK_MALFORMED;
    identity_builder_count(&b, extra ? json_object_size(extra) : 0);
    if (extra) {
        const char *key;
        json_t *values;
        json_object_foreach(extra, key, values) {
            identity_builder_string(&b, key, strlen(key));
            if (!pack_string_array(&b, values)) return PACK_MALFORMED;
        }
    }
    if (b.failed) return PACK_UNREPRESENTABLE;
    *packed_len = b.len;
    return PACK_OK;
}

tokenreview_result tokenreview_parse_response(const char *body, size_t body_len, const char *const *audiences,
                                              size_t n_audiences, unsigned char *packed, size_t packed_cap,
                                              size_t *packed_len, char *reason, size_t reason_cap)
{
    tokenreview_result result = TOKENREVIEW_BAD_RESPONSE;
    json_error_t error;
    json_t *root = json_loadb(body, body_len, JSON_REJECT_DUPLICATES, &error);
    if (!json_is_object(root)) {
        set_reason(reason, reason_cap, "answer is not a JSON object");
        goto done;
    }
    json_t *kind = json_object_get(root, "kind");
    if (kind && !(json_is_string(kind) && strcmp(json_string_value(kind), "TokenReview") == 0)) {
        set_reason(reason, reason_cap, "answer is not a TokenReview");
        goto done;
    }
    json_t *status = json_object_get(root, "status");
    if (!json_is_object(status)) {
        set_reason(reason, reason_cap, "TokenReview has no status");
        goto done;
    }
    json_t *authenticated = json_object_get(status, "authenticated");
    if (authenticated && !json_is_boolean(authenticated)) {
        set_reason(reason, reason_cap, "status.authenticated is not a boolean");
        goto done;
    }
    if (!json_is_true(authenticated)) {
        json_t *err = json_object_get(status, "error");
        set_reason(reason, reason_cap, json_is_string(err) ? json_string_value(err) : "not authenticated");
        result = TOKENREVIEW_UNAUTHENTICATED;
        goto done;
    }
    if (!audiences_accepted(status, audiences, n_audiences)) {
        set_reason(reason, reason_cap, "none of the requested audiences was accepted");
        result = TOKENREVIEW_UNAUTHENTICATED;
        goto done;
    }
    switch (pack_user(json_object_get(status, "user"), packed, packed_cap, packed_len)) {
    case PACK_OK: break;
    case PACK_MALFORMED: set_reason(reason, reason_cap, "status.user is missing or malformed"); goto done;
    case PACK_UNREPRESENTABLE:
        set_reason(reason, reason_cap,
                   "the identity cannot be represented (too many groups or extra values, a string too long or "
                   "with a control character)");
        result = TOKENREVIEW_UNREPRESENTABLE;
        goto done;
    }
    result = TOKENREVIEW_AUTHENTICATED;
done:
    json_decref(root);
    return result;
}
