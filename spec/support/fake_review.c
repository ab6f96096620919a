/*
 * fake_review.c - what the fake API server answers, whatever the transport.
 *
 * A transport hands over a complete request (method, path, Authorization, body) as a
 * struct fake_exchange and gets back either a response, or a request to close the
 * connection, now or later (latency knob, hang knob). The order of checks follows the
 * real handler chain of kube-apiserver: authentication (401), then API Priority and
 * Fairness (429), then authorization (403), then the review itself. Lists and watches of
 * ServiceAccounts and Pods pass the same authentication and go to fake_cluster.c.
 *
 * Answers copy the shape of the captures in shared/testdata/kube-apiserver-1.26:
 * Status bodies are indented JSON without a trailing newline, review bodies are compact
 * JSON with one, and the 429 of APF is plain text.
 */
#include "fake_apiserver.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#define TOKENREVIEW_PATH "/apis/authentication.k8s.io/v1/tokenreviews"
#define SAR_PATH "/apis/authorization.k8s.io/v1/subjectaccessreviews"
#define JSON_TYPE "application/json"
/* The caller named in 403 answers; the fake does not know who the caller is. */
#define CALLER "system:serviceaccount:gateway-system:gateway"
#define MAX_CREDENTIAL 65536

/* Headers beyond the common ones (audit-id, cache-control, content-type). */
enum { HDR_FLOW = 1, HDR_NOSNIFF = 2 };

/* ---- responses ---- */

void fake_response_clear(struct fake_response *resp)
{
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
}

static void resp_header(struct fake_response *r, const char *name, const char *fmt, ...)
{
    va_list ap;
    struct fake_header *h;

    if (r->n_headers == FAKE_MAX_HEADERS) abort(); /* a programming error: every answer has a fixed set of headers */
    h = &r->headers[r->n_headers++];
    h->name = name;
    va_start(ap, fmt);
    vsnprintf(h->value, sizeof h->value, fmt, ap);
    va_end(ap);
}

/* A random version-4 UUID, as kube-apiserver uses for audit-id (and the fake for uids). */
void fake_random_uuid(char out[37])
{
    unsigned char b[16];

    if (RAND_bytes(b, sizeof b) != 1) memset(b, 0x5a, sizeof b); /* not worth failing an answer over */
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
             b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* Begin an answer with the headers every kube-apiserver answer has. HDR_FLOW adds the
 * API Priority and Fairness UIDs that requests past authentication carry. */
static void resp_start(struct fake_response *r, int status, const char *content_type, unsigned flags)
{
    char uuid[37];

    memset(r, 0, sizeof *r);
    r->status = status;
    fake_random_uuid(uuid);
    resp_header(r, "audit-id", "%s", uuid);
    resp_header(r, "cache-control", "no-cache, private");
    resp_header(r, "content-type", "%s", content_type);
    if (flags & HDR_NOSNIFF) resp_header(r, "x-content-type-options", "nosniff");
    if (flags & HDR_FLOW) {
        resp_header(r, "x-kubernetes-pf-flowschema-uid", "fc3e4398-1b50-4cbd-a1c6-28eccc7ed471");
        resp_header(r, "x-kubernetes-pf-prioritylevel-uid", "be18b8ad-25d4-4f85-9875-b675cdbb7ff7");
    }
}

static void resp_body(struct fake_response *r, const char *text)
{
    r->body = strdup(text);
    r->body_len = r->body ? strlen(r->body) : 0;
}

/* Serialise doc (stolen) as the body. Reviews are compact with a trailing newline;
 * Status objects are indented without one, as the captures show. */
static void resp_json(struct fake_response *r, json_t *doc, bool indented)
{
    size_t flags = JSON_PRESERVE_ORDER | (indented ? JSON_INDENT(2) : JSON_COMPACT);
    char *text = doc ? json_dumps(doc, flags) : NULL;

    json_decref(doc);
    if (!text) return; /* out of memory: an empty body is still a well-formed answer */
    if (!indented) {
        size_t len = strlen(text);
        char *grown = realloc(text, len + 2);
        if (grown) {
            text = grown;
            memcpy(text + len, "\n", 2);
        }
    }
    r->body = text;
    r->body_len = strlen(text);
}

const char *fake_reason_phrase(int status)
{
    /* clang-format off */
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
    /* clang-format on */
}

/* metav1.StatusReason for a code, "" where Kubernetes has none (then it is omitted). */
static const char *status_reason(int code)
{
    /* clang-format off */
    switch (code) {
    case 400: return "BadRequest";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "NotFound";
    case 405: return "MethodNotAllowed";
    case 409: return "Conflict";
    case 410: return "Expired";
    case 413: return "RequestEntityTooLarge";
    case 415: return "UnsupportedMediaType";
    case 422: return "Invalid";
    case 429: return "TooManyRequests";
    case 500: return "InternalError";
    case 503: return "ServiceUnavailable";
    case 504: return "Timeout";
    default: return "";
    }
    /* clang-format on */
}

/* A metav1.Status failure object; details (stolen) may be NULL. */
static json_t *k8s_status(int code, const char *message, json_t *details)
{
    json_t *st = json_pack("{ss ss s{} ss ss}", "kind", "Status", "apiVersion", "v1", "metadata", "status", "Failure",
                           "message", message);
    const char *reason = status_reason(code);

    if (*reason) json_object_set_new(st, "reason", json_string(reason));
    if (details) json_object_set_new(st, "details", details);
    json_object_set_new(st, "code", json_integer(code));
    return st;
}

static void answer_status(struct fake_response *r, int code, unsigned flags, const char *message, json_t *details)
{
    resp_start(r, code, JSON_TYPE, flags);
    resp_json(r, k8s_status(code, message, details), true);
}

void fake_answer_start(struct fake_response *r, int status, const char *content_type, bool flow)
{
    resp_start(r, status, content_type, flow ? HDR_FLOW : 0);
}

void fake_answer_status(struct fake_response *r, int code, const char *message)
{
    answer_status(r, code, HDR_FLOW, message, NULL);
}

void fake_answer_json(struct fake_response *r, json_t *doc)
{
    resp_json(r, doc, false);
}

/* Exactly what API Priority and Fairness sends when it rejects a request. */
static void answer_throttled(struct fake_server *srv, struct fake_response *r)
{
    srv->stats.throttled++;
    resp_start(r, 429, "text/plain; charset=utf-8", HDR_FLOW | HDR_NOSNIFF);
    resp_header(r, "retry-after", "%d", srv->config.retry_after);
    resp_body(r, "Too many requests, please try again later.\n");
}

static void answer_forbidden(struct fake_response *r, enum fake_review_kind kind)
{
    const char *resource = kind == REVIEW_TOKEN ? "tokenreviews" : "subjectaccessreviews";
    const char *group = kind == REVIEW_TOKEN ? "authentication.k8s.io" : "authorization.k8s.io";
    char message[300];

    snprintf(message, sizeof message,
             "%s.%s is forbidden: User \"%s\" cannot create resource \"%s\" in API group \"%s\" "
             "at the cluster scope",
             resource, group, CALLER, resource, group);
    answer_status(r, 403, HDR_FLOW | HDR_NOSNIFF, message, json_pack("{ss ss}", "group", group, "kind", resource));
}

/* The error_rate knob's answer: error_status in the shape the real server uses for it. */
static void answer_injected(struct fake_server *srv, struct fake_response *r)
{
    int code = srv->config.error_status;

    if (code == 429) {
        answer_throttled(srv, r);
    } else if (code == 503) {
        answer_status(r, code, HDR_FLOW, "the server is currently unable to handle the request", json_object());
        resp_header(r, "retry-after", "%d", srv->config.retry_after);
    } else if (code == 504) {
        answer_status(r, code, HDR_FLOW,
                      "the server was unable to return a response in the time allotted, but may "
                      "still be processing the request",
                      json_object());
    } else {
        answer_status(r, code, HDR_FLOW, "Internal error occurred: injected by fake-apiserver", NULL);
    }
}

static void answer_bad_json(struct fake_exchange *ex, struct fake_response *r)
{
    char message[300];

    snprintf(message, sizeof message, "couldn't get version/kind; json parse error: %s",
             ex->parse_error ? ex->parse_error : "not a JSON object");
    answer_status(r, 400, HDR_FLOW, message, NULL);
}

/* ---- TokenReview ---- */

/* Go's %q of a []string, as in kube-apiserver's audience error: ["a" "b"]. */
static void quote_list(const json_t *list, char *out, size_t len)
{
    size_t i, used = 0;
    json_t *item;

    used += (size_t)snprintf(out, len, "[");
    json_array_foreach(list, i, item) {
        if (used >= len) break;
        used += (size_t)snprintf(out + used, len - used, "%s\"%s\"", i ? " " : "", json_string_value(item));
    }
    if (used < len) snprintf(out + used, len - used, "]");
}

static bool is_string_list(const json_t *v)
{
    size_t i;
    json_t *item;

    if (!json_is_array(v)) return false;
    json_array_foreach(v, i, item) {
        if (!json_is_string(item)) return false;
    }
    return true;
}

/* Requested audiences the token also has, in request order. */
static json_t *audience_intersection(const json_t *requested, const json_t *token_aud)
{
    json_t *out = json_array();
    size_t i, j;
    json_t *want, *have;

    json_array_foreach(requested, i, want) {
        json_array_foreach(token_aud, j, have) {
            if (json_equal(want, have)) {
                json_array_append(out, want);
                break;
            }
        }
    }
    return out;
}

static json_t *unauthenticated(const char *error)
{
    return json_pack("{s{} ss}", "user", "error", error);
}

/* status of a TokenReview of a known token. */
static json_t *tokenreview_known(struct fake_server *srv, const json_t *entry, const json_t *requested)
{
    json_t *token_aud = json_object_get(entry, "audiences");
    json_t *accepted;
    char error[1024], have[400], want[400];
    const char *revoked;

    if (json_object_get(entry, "error")) {
        snprintf(error, sizeof error, "[invalid bearer token, %s]", json_string_value(json_object_get(entry, "error")));
        return unauthenticated(error);
    }
    /* Its ServiceAccount or its Pod was deleted: the captures' wording. */
    revoked = fake_cluster_token_error(srv, json_object_get(entry, "user"));
    if (revoked) {
        snprintf(error, sizeof error, "[invalid bearer token, %s]", revoked);
        return unauthenticated(error);
    }
    if (json_array_size(requested) == 0)
        return json_pack("{sb sO sO}", "authenticated", 1, "user", json_object_get(entry, "user"), "audiences",
                         token_aud);

    accepted = audience_intersection(requested, token_aud);
    if (json_array_size(accepted) > 0)
        return json_pack("{sb sO so}", "authenticated", 1, "user", json_object_get(entry, "user"), "audiences",
                         accepted);
    json_decref(accepted);
    quote_list(token_aud, have, sizeof have);
    quote_list(requested, want, sizeof want);
    snprintf(error, sizeof error, "[invalid bearer token, token audiences %s is invalid for the target audiences %s]",
             have, want);
    return unauthenticated(error);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The success cache's key: the requested audiences (as sent) and the token. */
static char *success_cache_key(const char *token, const json_t *requested)
{
    char *aud = requested ? json_dumps(requested, JSON_COMPACT) : NULL;
    size_t len = (aud ? strlen(aud) : 0) + strlen(token) + 2;
    char *key = malloc(len);
    if (key) snprintf(key, len, "%s\n%s", aud ? aud : "", token);
    free(aud);
    return key;
}

/* A copy of the cached status of an authenticated answer, or NULL. */
static json_t *success_cache_get(struct fake_server *srv, const char *token, const json_t *requested)
{
    json_t *hit = NULL;
    char *key;

    if (srv->config.success_cache_ms <= 0) return NULL;
    key = success_cache_key(token, requested);
    if (!key) return NULL;
    json_t *entry = json_object_get(srv->success_cache, key);
    if (entry && json_integer_value(json_object_get(entry, "until")) > now_ms())
        hit = json_deep_copy(json_object_get(entry, "status"));
    else if (entry)
        json_object_del(srv->success_cache, key);
    free(key);
    return hit;
}

static void success_cache_put(struct fake_server *srv, const char *token, const json_t *requested, const json_t *status)
{
    char *key;

    if (srv->config.success_cache_ms <= 0 || !json_is_true(json_object_get(status, "authenticated"))) return;
    if (json_object_size(srv->success_cache) >= FAKE_SUCCESS_CACHE_MAX) json_object_clear(srv->success_cache);
    key = success_cache_key(token, requested);
    if (!key) return;
    json_object_set_new(
        srv->success_cache, key,
        json_pack("{sO sI}", "status", status, "until", (json_int_t)(now_ms() + srv->config.success_cache_ms)));
    free(key);
}

static void answer_tokenreview(struct fake_server *srv, struct fake_exchange *ex, struct fake_response *r)
{
    json_t *spec = json_object_get(ex->doc, "spec");
    const char *token = json_string_value(json_object_get(spec, "token"));
    json_t *requested = json_object_get(spec, "audiences");
    json_t *entry, *echo, *status;

    if (!json_is_object(ex->doc)) {
        answer_bad_json(ex, r);
        return;
    }
    if (!token || !*token) {
        answer_status(r, 400, HDR_FLOW, "token is required for TokenReview in authentication", NULL);
        return;
    }
    if (requested && !is_string_list(requested)) {
        answer_status(r, 400, HDR_FLOW,
                      "TokenReview in version \"v1\" cannot be handled as a TokenReview: "
                      "spec.audiences must be a list of strings",
                      NULL);
        return;
    }

    status = success_cache_get(srv, token, requested);
    if (!status) {
        entry = json_object_get(srv->tables.tokens, token);
        status = entry ? tokenreview_known(srv, entry, requested) : unauthenticated("invalid bearer token");
        success_cache_put(srv, token, requested, status);
    }
    /* A real server echoes the spec, token included. */
    echo = json_pack("{ss}", "token", token);
    if (requested) json_object_set(echo, "audiences", requested);

    resp_start(r, 201, JSON_TYPE, HDR_FLOW);
    resp_json(r,
              json_pack("{ss ss s{sn} so so}", "kind", "TokenReview", "apiVersion", "authentication.k8s.io/v1",
                        "metadata", "creationTimestamp", "spec", echo, "status", status),
              false);
}

/* ---- SubjectAccessReview ---- */

/* A rule value matches when absent or "*"; a path ending in '*' matches as a prefix. */
static bool rule_value_matches(const json_t *rule, const char *field, const char *actual)
{
    const char *want = json_string_value(json_object_get(rule, field));
    size_t len;

    if (!want || strcmp(want, "*") == 0) return true;
    if (!actual) return false;
    len = strlen(want);
    if (strcmp(field, "path") == 0 && len > 0 && want[len - 1] == '*') return strncmp(want, actual, len - 1) == 0;
    return strcmp(want, actual) == 0;
}

/* Does rule allow the request? attrs is resourceAttributes or nonResourceAttributes. */
static bool rule_matches(const json_t *rule, const char *user, const json_t *attrs, bool resource)
{
    static const char *const fields[] = {"verb", "namespace", "group", "resource", "subresource", "name", "path"};

    /* A rule about paths is for non-resource requests only, and vice versa. */
    if (json_object_get(rule, "path") && resource) return false;
    if (json_object_get(rule, "resource") && !resource) return false;
    if (!rule_value_matches(rule, "user", user)) return false;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *actual = json_string_value(json_object_get(attrs, fields[i]));
        /* Kubernetes treats an absent namespace/group of a resource request as "". */
        if (!actual && resource && strcmp(fields[i], "path") != 0) actual = "";
        if (!rule_value_matches(rule, fields[i], actual)) return false;
    }
    return true;
}

/* Index of the first matching rule, or -1. */
static long sar_match(const struct fake_server *srv, const json_t *spec)
{
    const char *user = json_string_value(json_object_get(spec, "user"));
    json_t *attrs = json_object_get(spec, "resourceAttributes");
    bool resource = attrs != NULL;
    size_t i;
    json_t *rule;

    if (!resource) attrs = json_object_get(spec, "nonResourceAttributes");
    json_array_foreach(srv->tables.sar_rules, i, rule) {
        if (rule_matches(rule, user, attrs, resource)) return (long)i;
    }
    return -1;
}

/* 422 as the real server words a SubjectAccessReview spec it rejects. */
static void answer_sar_invalid(struct fake_response *r, const char *field, const char *value, const char *detail)
{
    char cause[300], message[400];

    snprintf(cause, sizeof cause, "Invalid value: \"%s\": %s", value, detail);
    snprintf(message, sizeof message, ".authorization.k8s.io \"\" is invalid: %s: %s", field, cause);
    answer_status(r, 422, HDR_FLOW, message,
                  json_pack("{ss s[{ss ss ss}]}", "group", "authorization.k8s.io", "causes", "reason",
                            "FieldValueInvalid", "message", cause, "field", field));
}

/* The validation kube-apiserver does before authorizing; 0 when the spec is fine. */
static int sar_validate(const json_t *spec, struct fake_response *r)
{
    bool has_res = json_is_object(json_object_get(spec, "resourceAttributes"));
    bool has_nonres = json_is_object(json_object_get(spec, "nonResourceAttributes"));
    const char *user = json_string_value(json_object_get(spec, "user"));

    if (has_res && has_nonres) {
        answer_sar_invalid(r, "spec.nonResourceAttributes", "object",
                           "cannot be specified in combination with resourceAttributes");
        return -1;
    }
    if (!has_res && !has_nonres) {
        answer_sar_invalid(r, "spec.resourceAttributes", "null",
                           "exactly one of nonResourceAttributes or resourceAttributes must be "
                           "specified");
        return -1;
    }
    if ((!user || !*user) && json_array_size(json_object_get(spec, "groups")) == 0) {
        answer_sar_invalid(r, "spec.user", "", "at least one of user or group must be specified");
        return -1;
    }
    return 0;
}

static void answer_sar(struct fake_server *srv, struct fake_exchange *ex, struct fake_response *r)
{
    json_t *spec = json_object_get(ex->doc, "spec");
    json_t *status;
    long rule;
    char reason[64];

    if (!json_is_object(ex->doc)) {
        answer_bad_json(ex, r);
        return;
    }
    if (!json_is_object(spec)) spec = NULL;
    if (sar_validate(spec, r) < 0) return;

    rule = sar_match(srv, spec);
    if (rule >= 0) {
        snprintf(reason, sizeof reason, "RBAC: allowed by fake rule %ld", rule);
        status = json_pack("{sb ss}", "allowed", 1, "reason", reason);
    } else {
        /* The API omits allowed when false; the knob mimics the captures, which have it. */
        status = srv->config.sar_send_allowed_false ? json_pack("{sb}", "allowed", 0) : json_object();
    }
    resp_start(r, 201, JSON_TYPE, HDR_FLOW);
    resp_json(r,
              json_pack("{ss ss s{sn} sO so}", "kind", "SubjectAccessReview", "apiVersion", "authorization.k8s.io/v1",
                        "metadata", "creationTimestamp", "spec", spec, "status", status),
              false);
}

/* ---- the request path ---- */

/* A uniform random number in [0, 1). */
static double random_unit(void)
{
    uint64_t x = 0;

    if (RAND_bytes((unsigned char *)&x, sizeof x) != 1) return 1.0; /* never inject an error by accident */
    return (double)(x >> 11) / (double)(UINT64_C(1) << 53);
}

/* The answer of an admitted review, after any latency or hang: knobs first. */
static void answer_review(struct fake_server *srv, struct fake_exchange *ex, struct fake_response *r)
{
    const struct fake_config *c = &srv->config;

    if (c->rbac_forbidden) {
        answer_forbidden(r, ex->kind);
        return;
    }
    if (c->error_rate > 0 && random_unit() < c->error_rate) {
        answer_injected(srv, r);
        return;
    }
    if (c->garbage_body) {
        resp_start(r, 201, JSON_TYPE, HDR_FLOW);
        resp_body(r, "<html><body><h1>502 Bad Gateway</h1></body></html>\n");
        return;
    }
    if (ex->kind == REVIEW_TOKEN)
        answer_tokenreview(srv, ex, r);
    else
        answer_sar(srv, ex, r);
    if (c->truncated_body && r->status == 201) r->body_len /= 2; /* the framing stays right: the JSON itself is cut */
}

static enum fake_review_kind review_kind(const char *path)
{
    size_t len = strcspn(path, "?");

    if (len == strlen(TOKENREVIEW_PATH) && strncmp(path, TOKENREVIEW_PATH, len) == 0) return REVIEW_TOKEN;
    if (len == strlen(SAR_PATH) && strncmp(path, SAR_PATH, len) == 0) return REVIEW_SAR;
    return REVIEW_NONE;
}

/* The credential file's content without trailing whitespace, or NULL (none/unreadable).
 * Re-read on every request because tests rotate it, as the kubelet does. */
static char *read_credential(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len;

    if (!f) return NULL;
    buf = malloc(MAX_CREDENTIAL + 1);
    if (!buf) goto cleanup;
    len = fread(buf, 1, MAX_CREDENTIAL, f);
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        len--;
    buf[len] = '\0';
    if (len == 0 || memchr(buf, '\0', len)) {
        free(buf);
        buf = NULL;
    }
cleanup:
    fclose(f);
    return buf;
}

static bool credential_ok(const struct fake_server *srv, const char *authorization)
{
    char *credential;
    bool ok;

    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) return false;
    authorization += 7;
    while (*authorization == ' ') authorization++;
    credential = read_credential(srv->credential_path);
    ok = credential && strcmp(credential, authorization) == 0;
    free(credential);
    return ok;
}

/* Count a review request and parse its body; every later step reads ex->doc. */
static void review_arrived(struct fake_server *srv, struct fake_exchange *ex)
{
    json_error_t jerr;
    const char *token;

    srv->stats.calls++;
    if (ex->kind == REVIEW_TOKEN)
        srv->stats.tokenreview_calls++;
    else
        srv->stats.subjectaccessreview_calls++;

    ex->doc = json_loadb(ex->req.body ? ex->req.body : "", ex->req.body_len, 0, &jerr);
    if (!ex->doc) {
        ex->parse_error = strdup(jerr.text);
        return;
    }
    token = json_string_value(json_object_get(json_object_get(ex->doc, "spec"), "token"));
    if (ex->kind == REVIEW_TOKEN && token && *token) stats_count_token(srv, token);
}

/* Drop everything the core holds for ex, leaving it ready for the next request. */
static void release(struct fake_exchange *ex)
{
    if (ex->admitted) {
        TAILQ_REMOVE(&ex->srv->pending, ex, link);
        ex->srv->inflight--;
        ex->admitted = false;
    }
    if (ex->timer) {
        event_free(ex->timer);
        ex->timer = NULL;
    }
    json_decref(ex->doc);
    ex->doc = NULL;
    free(ex->parse_error);
    ex->parse_error = NULL;
    ex->hung = false;
}

/* Hand resp to the transport; ex is the transport's again from here on. */
static void deliver(struct fake_exchange *ex, struct fake_response *resp)
{
    release(ex);
    ex->ops->respond(ex, resp);
    fake_response_clear(resp);
}

static void finish(struct fake_exchange *ex)
{
    struct fake_response resp;

    answer_review(ex->srv, ex, &resp);
    deliver(ex, &resp);
}

/* Latency elapsed, or a hang was released. */
static void review_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fake_exchange *ex = arg;

    (void)fd;
    (void)what;
    if (ex->srv->config.hang) {
        ex->hung = true; /* hang was switched on while this one waited */
        return;
    }
    finish(ex);
}

/* An admitted review occupies a seat (inflight) until answered or cancelled. */
static void admit(struct fake_server *srv, struct fake_exchange *ex)
{
    struct timeval delay;

    ex->timer = evtimer_new(srv->base, review_timer_cb, ex);
    if (!ex->timer) {
        struct fake_response resp;
        answer_status(&resp, 500, HDR_FLOW, "fake-apiserver: out of memory", NULL);
        deliver(ex, &resp);
        return;
    }
    ex->admitted = true;
    srv->inflight++;
    if (srv->inflight > srv->stats.max_inflight_seen) srv->stats.max_inflight_seen = srv->inflight;
    TAILQ_INSERT_TAIL(&srv->pending, ex, link);

    if (srv->config.hang) {
        ex->hung = true;
    } else if (srv->config.latency_ms > 0) {
        delay.tv_sec = srv->config.latency_ms / 1000;
        delay.tv_usec = (srv->config.latency_ms % 1000) * 1000;
        evtimer_add(ex->timer, &delay);
    } else {
        finish(ex);
    }
}

static bool throttle(const struct fake_server *srv)
{
    return srv->config.max_inflight > 0 && srv->inflight >= (unsigned)srv->config.max_inflight;
}

/* ---- issuer discovery ---- */

#define DISCOVERY_PATH "/.well-known/openid-configuration"
#define JWKS_PATH "/openid/v1/jwks"

static void b64url(const unsigned char *in, size_t len, char *out, size_t cap)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;

    for (size_t i = 0; i < len && o + 5 < cap; i += 3) {
        unsigned v =
            (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        if (i + 1 < len) out[o++] = alphabet[v >> 6 & 63];
        if (i + 2 < len) out[o++] = alphabet[v & 63];
    }
    out[o] = 0;
}

int fake_issuer_init(struct fake_server *srv)
{
    EVP_PKEY *key = NULL;
    if (srv->signing_key_path) {
        FILE *f = fopen(srv->signing_key_path, "r");
        if (f) {
            key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
            fclose(f);
        }
    } else {
        key = EVP_RSA_gen(2048);
    }
    BIGNUM *n = NULL, *e = NULL;
    unsigned char *der = NULL, buf[512], digest[32];
    char n64[400], e64[16], kid[64];
    int der_len, rc = -1;

    if (!key || !EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e))
        goto done;
    der_len = i2d_PUBKEY(key, &der);
    if (der_len <= 0) goto done;
    SHA256(der, (size_t)der_len, digest);
    b64url(digest, sizeof digest, kid, sizeof kid);
    b64url(buf, (size_t)BN_bn2bin(n, buf), n64, sizeof n64);
    b64url(buf, (size_t)BN_bn2bin(e, buf), e64, sizeof e64);
    srv->jwks_json = json_dumps(json_pack("{s[{ss ss ss ss ss ss}]}", "keys", "use", "sig", "kty", "RSA", "kid", kid,
                                          "alg", "RS256", "n", n64, "e", e64),
                                JSON_COMPACT | JSON_PRESERVE_ORDER);
    rc = srv->jwks_json ? 0 : -1;
done:
    OPENSSL_free(der);
    BN_free(n);
    BN_free(e);
    EVP_PKEY_free(key);
    return rc;
}

/* What kube-apiserver answers on its two issuer discovery paths: the document (JSON) and
 * the keys (only as application/jwk-set+json: an Accept that does not allow it is 406). */
static void answer_issuer(struct fake_server *srv, const struct fake_exchange *ex, struct fake_response *r, bool jwks)
{
    const char *type = jwks ? "application/jwk-set+json" : JSON_TYPE;
    const char *accept = ex->req.accept;
    char message[128];

    if (accept && *accept && !strstr(accept, type) && !strstr(accept, "*/*")) {
        snprintf(message, sizeof message, "406: Not Acceptable\n\nAvailable representations: %s", type);
        answer_status(r, 406, HDR_FLOW, message, json_object());
        return;
    }
    resp_start(r, 200, type, HDR_FLOW);
    /* Unlike every other answer, these may be cached for an hour. */
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcmp(r->headers[i].name, "cache-control") == 0)
            snprintf(r->headers[i].value, sizeof r->headers[i].value, "public, max-age=3600");
    if (jwks) {
        resp_body(r, srv->jwks_json);
        return;
    }
    /* jwks_uri names the advertised address, which clients may not reach: as the real one. */
    resp_json(r,
              json_pack("{ss ss s[s] s[s] s[s]}", "issuer", FAKE_ISSUER, "jwks_uri", "https://192.0.2.2:6443" JWKS_PATH,
                        "response_types_supported", "id_token", "subject_types_supported", "public",
                        "id_token_signing_alg_values_supported", "RS256"),
              false);
}

void fake_review_handle(struct fake_server *srv, struct fake_exchange *ex)
{
    struct fake_response resp;

    ex->srv = srv;
    ex->kind = review_kind(ex->req.path ? ex->req.path : "/");
    if (ex->kind != REVIEW_NONE) {
        review_arrived(srv, ex);
        if (srv->config.close_connection) {
            release(ex);
            ex->ops->close(ex);
            return;
        }
    }

    if (!credential_ok(srv, ex->req.authorization)) {
        srv->stats.unauthorized++;
        /* The capture of this answer has no APF headers: it never reached APF. */
        answer_status(&resp, 401, 0, "Unauthorized", NULL);
    } else if (ex->kind == REVIEW_NONE && fake_cluster_path(ex->req.path ? ex->req.path : "/")) {
        fake_cluster_handle(srv, ex); /* list or watch of serviceaccounts or pods */
        return;
    } else if (ex->kind == REVIEW_NONE && ex->req.path &&
               (strcmp(ex->req.path, DISCOVERY_PATH) == 0 || strcmp(ex->req.path, JWKS_PATH) == 0)) {
        answer_issuer(srv, ex, &resp, strcmp(ex->req.path, JWKS_PATH) == 0);
    } else if (ex->kind == REVIEW_NONE) {
        answer_status(&resp, 404, HDR_FLOW, "the server could not find the requested resource", json_object());
    } else if (strcmp(ex->req.method, "POST") != 0) {
        answer_status(&resp, 405, HDR_FLOW, "the server does not allow this method on the requested resource",
                      json_object());
    } else if (throttle(srv)) {
        answer_throttled(srv, &resp);
    } else {
        admit(srv, ex);
        return;
    }
    deliver(ex, &resp);
}

void fake_review_cancel(struct fake_exchange *ex)
{
    if (ex->watch) fake_cluster_cancel(ex);
    if (ex->srv) release(ex);
}

void fake_review_release_hung(struct fake_server *srv)
{
    struct fake_exchange *ex;

    /* Answer from the event loop rather than here: answering lets a transport start its
     * next request, which could change the list being walked. */
    TAILQ_FOREACH(ex, &srv->pending, link) {
        if (ex->hung) {
            ex->hung = false;
            event_active(ex->timer, EV_TIMEOUT, 1);
        }
    }
}
