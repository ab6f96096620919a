/*
 * fake_state.c - the fake API server's knobs, counters, token table and SAR rules.
 *
 * Knobs are described by one table so that parsing, validation and GET /control/config
 * cannot drift apart. Token tables are validated strictly (unknown fields are errors)
 * because a typo in a test's token table should fail loudly, not silently authenticate
 * nobody.
 */
#include "fake_apiserver.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_AUDIENCE "https://kubernetes.default.svc.cluster.local"

/* ---- knobs ---- */

enum knob_type { KNOB_BOOL, KNOB_INT, KNOB_RATIO };

struct knob {
    const char *name;
    enum knob_type type;
    size_t offset; /* into struct fake_config */
    int min, max;  /* for KNOB_INT */
};

/* clang-format off */
#define KNOB(field, type, lo, hi) {#field, type, offsetof(struct fake_config, field), lo, hi}

static const struct knob knobs[] = {
    KNOB(latency_ms, KNOB_INT, 0, 3600 * 1000),
    KNOB(hang, KNOB_BOOL, 0, 0),
    KNOB(close_connection, KNOB_BOOL, 0, 0),
    KNOB(error_rate, KNOB_RATIO, 0, 0),
    KNOB(error_status, KNOB_INT, 400, 599),
    KNOB(garbage_body, KNOB_BOOL, 0, 0),
    KNOB(truncated_body, KNOB_BOOL, 0, 0),
    KNOB(max_inflight, KNOB_INT, 0, 1000 * 1000),
    KNOB(retry_after, KNOB_INT, 0, 3600),
    KNOB(rbac_forbidden, KNOB_BOOL, 0, 0),
    KNOB(sar_send_allowed_false, KNOB_BOOL, 0, 0),
    KNOB(http2, KNOB_BOOL, 0, 0),
    KNOB(watch_gone_http, KNOB_BOOL, 0, 0),
    KNOB(watch_error_status, KNOB_INT, 0, 599),
    KNOB(watch_bookmark_ms, KNOB_INT, 0, 3600 * 1000),
    KNOB(success_cache_ms, KNOB_INT, 0, 3600 * 1000),
};
/* clang-format on */

static void *knob_field(struct fake_config *config, const struct knob *k)
{
    return (char *)config + k->offset;
}

static const struct knob *knob_find(const char *name)
{
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        if (strcmp(knobs[i].name, name) == 0) return &knobs[i];
    }
    return NULL;
}

void config_defaults(struct fake_config *config)
{
    memset(config, 0, sizeof *config);
    config->error_status = 500;
    config->retry_after = 1;
    config->http2 = true;
    config->success_cache_ms = 10000;
}

json_t *config_to_json(const struct fake_config *config)
{
    struct fake_config copy = *config; /* knob_field() wants a mutable pointer */
    json_t *out = json_object();

    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        const struct knob *k = &knobs[i];
        void *field = knob_field(&copy, k);
        json_t *v = k->type == KNOB_BOOL  ? json_boolean(*(bool *)field)
                    : k->type == KNOB_INT ? json_integer(*(int *)field)
                                          : json_real(*(double *)field);
        json_object_set_new(out, k->name, v);
    }
    return out;
}

/* Store one JSON value into a knob of *config; -1 with a message when it does not fit. */
static int knob_set(struct fake_config *config, const struct knob *k, const json_t *v, char *err, size_t errlen)
{
    void *field = knob_field(config, k);

    switch (k->type) {
    case KNOB_BOOL:
        if (!json_is_boolean(v)) goto wrong;
        *(bool *)field = json_is_true(v);
        return 0;
    case KNOB_INT:
        if (!json_is_integer(v) || json_integer_value(v) < k->min || json_integer_value(v) > k->max) goto wrong;
        *(int *)field = (int)json_integer_value(v);
        return 0;
    case KNOB_RATIO:
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1) goto wrong;
        *(double *)field = json_number_value(v);
        return 0;
    }
wrong:
    if (k->type == KNOB_BOOL)
        snprintf(err, errlen, "%s must be true or false", k->name);
    else if (k->type == KNOB_INT)
        snprintf(err, errlen, "%s must be an integer from %d to %d", k->name, k->min, k->max);
    else
        snprintf(err, errlen, "%s must be a number from 0 to 1", k->name);
    return -1;
}

int config_merge(struct fake_config *config, const json_t *patch, char *err, size_t errlen)
{
    struct fake_config next = *config; /* all or nothing: edit a copy */
    const char *name;
    json_t *value;

    if (!json_is_object(patch)) {
        snprintf(err, errlen, "config must be a JSON object");
        return -1;
    }
    json_object_foreach((json_t *)patch, name, value) {
        const struct knob *k = knob_find(name);
        if (!k) {
            snprintf(err, errlen, "unknown config field \"%s\"", name);
            return -1;
        }
        if (knob_set(&next, k, value, err, errlen) < 0) return -1;
    }
    *config = next;
    return 0;
}

/* ---- counters ---- */

void stats_reset(struct fake_server *srv)
{
    json_t *by_token = srv->stats.by_token;

    json_object_clear(by_token);
    memset(&srv->stats, 0, sizeof srv->stats);
    srv->stats.by_token = by_token;
    /* inflight is a gauge of live reviews, not a counter: it survives, and so the
     * high-water mark restarts from it. */
    srv->stats.max_inflight_seen = srv->inflight;
}

json_t *stats_to_json(const struct fake_server *srv)
{
    const struct fake_stats *s = &srv->stats;

    json_t *out = json_pack(
        "{sI sI sI sI sI sI sI sI sI sI sI sO}", "calls", (json_int_t)s->calls, "tokenreview_calls",
        (json_int_t)s->tokenreview_calls, "subjectaccessreview_calls", (json_int_t)s->subjectaccessreview_calls,
        "inflight", (json_int_t)srv->inflight, "max_inflight_seen", (json_int_t)s->max_inflight_seen, "throttled",
        (json_int_t)s->throttled, "connections", (json_int_t)s->connections, "h2_connections",
        (json_int_t)s->h2_connections, "unauthorized", (json_int_t)s->unauthorized, "list_calls",
        (json_int_t)s->list_calls, "watch_calls", (json_int_t)s->watch_calls, "by_token", s->by_token);

    json_t *cluster = fake_cluster_stats(srv); /* open watches, object counts */

    json_object_update(out, cluster);
    json_decref(cluster);
    return out;
}

void stats_count_token(struct fake_server *srv, const char *token)
{
    json_t *n = json_object_get(srv->stats.by_token, token);

    if (n)
        json_integer_set(n, json_integer_value(n) + 1);
    else
        json_object_set_new(srv->stats.by_token, token, json_integer(1));
}

/* ---- token table and SAR rules ---- */

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static bool is_string_array(const json_t *v)
{
    size_t i;
    json_t *item;

    if (!json_is_array(v)) return false;
    json_array_foreach(v, i, item) {
        if (!json_is_string(item)) return false;
    }
    return true;
}

/* extra is {"key": ["value", ...]}, as in TokenReview's user.extra. */
static bool is_extra(const json_t *v)
{
    const char *key;
    json_t *item;

    if (!json_is_object(v)) return false;
    json_object_foreach((json_t *)v, key, item) {
        if (!is_string_array(item)) return false;
    }
    return true;
}

static bool field_allowed(const char *name, const char *const *allowed)
{
    for (; *allowed; allowed++) {
        if (strcmp(name, *allowed) == 0) return true;
    }
    return false;
}

static int check_fields(const json_t *obj, const char *const *allowed, const char *what, size_t index, char *err,
                        size_t errlen)
{
    const char *name;
    json_t *value;

    json_object_foreach((json_t *)obj, name, value) {
        if (!field_allowed(name, allowed)) return fail(err, errlen, "%s %zu: unknown field \"%s\"", what, index, name);
    }
    return 0;
}

/* The user object exactly as TokenReview's status.user has it: empty parts omitted. */
static json_t *token_user(const json_t *in)
{
    json_t *user = json_pack("{sO}", "username", json_object_get(in, "username"));
    json_t *uid = json_object_get(in, "uid");
    json_t *groups = json_object_get(in, "groups");
    json_t *extra = json_object_get(in, "extra");

    if (uid && json_string_length(uid) > 0) json_object_set(user, "uid", uid);
    if (groups && json_array_size(groups) > 0) json_object_set(user, "groups", groups);
    if (extra && json_object_size(extra) > 0) json_object_set(user, "extra", extra);
    return user;
}

/* Validate one entry of "tokens" and add it to the table keyed by token. */
static int token_add(json_t *table, const json_t *in, size_t i, char *err, size_t errlen)
{
    static const char *const allowed[] = {"token", "username", "uid", "groups", "extra", "audiences", "error", NULL};
    const char *token = json_string_value(json_object_get(in, "token"));
    json_t *audiences, *error, *entry;

    if (!json_is_object(in)) return fail(err, errlen, "token %zu: not an object", i);
    if (check_fields(in, allowed, "token", i, err, errlen) < 0) return -1;
    if (!token || !*token) return fail(err, errlen, "token %zu: \"token\" must be a non-empty string", i);
    if (json_object_get(table, token)) return fail(err, errlen, "token %zu: duplicate token", i);
    if (!json_is_string(json_object_get(in, "username")))
        return fail(err, errlen, "token %zu: \"username\" must be a string", i);
    if (json_object_get(in, "uid") && !json_is_string(json_object_get(in, "uid")))
        return fail(err, errlen, "token %zu: \"uid\" must be a string", i);
    if (json_object_get(in, "groups") && !is_string_array(json_object_get(in, "groups")))
        return fail(err, errlen, "token %zu: \"groups\" must be a list of strings", i);
    if (json_object_get(in, "extra") && !is_extra(json_object_get(in, "extra")))
        return fail(err, errlen, "token %zu: \"extra\" must map names to lists of strings", i);
    audiences = json_object_get(in, "audiences");
    if (audiences && !is_string_array(audiences))
        return fail(err, errlen, "token %zu: \"audiences\" must be a list of strings", i);
    error = json_object_get(in, "error");
    if (error && !json_is_string(error)) return fail(err, errlen, "token %zu: \"error\" must be a string", i);

    entry = json_pack("{so}", "user", token_user(in));
    if (audiences)
        json_object_set(entry, "audiences", audiences);
    else
        json_object_set_new(entry, "audiences", json_pack("[s]", DEFAULT_AUDIENCE));
    if (error) json_object_set(entry, "error", error);
    json_object_set_new(table, token, entry);
    return 0;
}

static int rules_check(const json_t *rules, char *err, size_t errlen)
{
    static const char *const allowed[] = {"user",        "verb", "namespace", "group", "resource",
                                          "subresource", "name", "path",      NULL};
    size_t i;
    json_t *rule, *value;
    const char *name;

    if (!json_is_array(rules)) return fail(err, errlen, "\"sar_rules\" must be a list");
    json_array_foreach(rules, i, rule) {
        if (!json_is_object(rule)) return fail(err, errlen, "sar rule %zu: not an object", i);
        if (check_fields(rule, allowed, "sar rule", i, err, errlen) < 0) return -1;
        json_object_foreach(rule, name, value) {
            if (!json_is_string(value)) return fail(err, errlen, "sar rule %zu: \"%s\" must be a string", i, name);
        }
    }
    return 0;
}

static json_t *load_json(const char *path, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);

    if (!doc) fail(err, errlen, "%s:%d: %s", path, jerr.line, jerr.text);
    return doc;
}

/* Build the token map from the "tokens" list of doc. */
static json_t *tokens_build(const json_t *doc, char *err, size_t errlen)
{
    json_t *list = json_object_get(doc, "tokens");
    json_t *table = json_object();
    json_t *item;
    size_t i;

    if (!json_is_array(list)) {
        fail(err, errlen, "\"tokens\" must be a list");
        goto error;
    }
    json_array_foreach(list, i, item) {
        if (token_add(table, item, i, err, errlen) < 0) goto error;
    }
    return table;
error:
    json_decref(table);
    return NULL;
}

/* The rules: from --sar-rules (a list, or an object with "sar_rules") if given, else
 * from the token file's "sar_rules", else none. Returns a new reference. */
static json_t *rules_build(const struct fake_server *srv, const json_t *token_doc, char *err, size_t errlen)
{
    json_t *doc = NULL, *rules;

    if (srv->sar_rules_path) {
        doc = load_json(srv->sar_rules_path, err, errlen);
        if (!doc) return NULL;
        rules = json_is_object(doc) ? json_object_get(doc, "sar_rules") : doc;
    } else {
        rules = json_object_get(token_doc, "sar_rules");
    }
    rules = rules ? json_incref(rules) : json_array();
    json_decref(doc);
    if (rules_check(rules, err, errlen) < 0) {
        json_decref(rules);
        return NULL;
    }
    return rules;
}

int tables_load(struct fake_server *srv, char *err, size_t errlen)
{
    static const char *const allowed[] = {"tokens", "sar_rules", NULL};
    json_t *doc, *tokens = NULL, *rules = NULL;
    int rc = -1;

    doc = load_json(srv->tokens_path, err, errlen);
    if (!doc) return -1;
    if (!json_is_object(doc)) {
        fail(err, errlen, "%s: must be a JSON object", srv->tokens_path);
        goto cleanup;
    }
    if (check_fields(doc, allowed, "token file", 0, err, errlen) < 0) goto cleanup;
    tokens = tokens_build(doc, err, errlen);
    if (!tokens) goto cleanup;
    rules = rules_build(srv, doc, err, errlen);
    if (!rules) goto cleanup;
    if (fake_cluster_check_tokens(tokens, err, errlen) < 0) goto cleanup;

    /* Tokens new to the table get their ServiceAccount and Pod; deleted ones stay deleted
     * for the tokens the table already had. */
    fake_cluster_add_tokens(srv, srv->tables.tokens, tokens);
    tables_free(&srv->tables);
    srv->tables.tokens = tokens;
    srv->tables.sar_rules = rules;
    tokens = rules = NULL;
    rc = 0;
cleanup:
    json_decref(tokens);
    json_decref(rules);
    json_decref(doc);
    return rc;
}

void tables_free(struct fake_tables *tables)
{
    json_decref(tables->tokens);
    json_decref(tables->sar_rules);
    tables->tokens = NULL;
    tables->sar_rules = NULL;
}
