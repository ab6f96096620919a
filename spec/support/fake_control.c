/*
 * fake_control.c - the control listener: plain HTTP on loopback for the tests.
 *
 *   GET  /control/config        current knobs
 *   POST /control/config        merge a JSON object of knobs (unknown fields: 400)
 *   GET  /control/stats         counters
 *   POST /control/reset-stats   zero the counters, keep the knobs
 *   POST /control/reset         zero the counters and restore the default knobs
 *   POST /control/reload        re-read the token table and SAR rules
 *
 * ServiceAccounts, Pods and their watches (fake_cluster.c); bodies are JSON objects:
 *   GET  /control/cluster                       resourceVersion, object and watch counts
 *   POST /control/serviceaccounts/create        {"namespace","name","uid"?}
 *   POST /control/serviceaccounts/delete        {"namespace","name"}: DELETED event, and its
 *                                               tokens are no longer authenticated
 *   POST /control/serviceaccounts/bulk-create   {"count", "namespace"? = "bulk"}
 *   POST /control/pods/create                   {"namespace","name","uid"?,"serviceaccount"?}
 *   POST /control/pods/delete                   {"namespace","name"}: MODIFIED then DELETED;
 *                                               tokens bound to it are no longer authenticated
 *   POST /control/watch/drop                    {"resource"?, "graceful"?}: close open watches
 *                                               (the connection; graceful: end the body)
 *   POST /control/watch/bookmark                {"resource"?}: a BOOKMARK on open watches
 *   POST /control/watch/compact                 {"resource"?}: resourceVersions handed out
 *                                               so far become too old (410)
 *   POST /control/watch/expire                  {"resource"?}: compact, then an ERROR 410
 *                                               event ends every open watch
 * The review knobs (latency, hang, errors, close_connection) do not apply to lists and
 * watches; watch_error_status, watch_gone_http and watch_bookmark_ms do.
 *
 * Every answer is JSON; errors are {"error": "..."}. Clearing the hang knob (by config
 * or reset) answers the parked reviews.
 */
#include "fake_apiserver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

static void reply_json(struct evhttp_request *req, int code, json_t *doc)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;

    json_decref(doc);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    if (text) {
        evbuffer_add(out, text, strlen(text));
        evbuffer_add(out, "\n", 1);
    }
    free(text);
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", NULL);
}

static void reply_error(struct evhttp_request *req, int code, const char *message)
{
    reply_json(req, code, json_pack("{ss}", "error", message));
}

/* The request body as JSON, or NULL after replying 400. */
static json_t *read_json(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    json_error_t jerr;
    json_t *doc;

    doc = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &jerr);
    if (!doc) reply_error(req, 400, jerr.text);
    return doc;
}

/* Apply a new set of knobs; clearing hang answers the reviews it held. */
static void set_config(struct fake_server *srv, const struct fake_config *next)
{
    bool was_hung = srv->config.hang;

    srv->config = *next;
    if (was_hung && !next->hang) fake_review_release_hung(srv);
    fake_cluster_config_changed(srv);
}

static void post_config(struct fake_server *srv, struct evhttp_request *req)
{
    struct fake_config next = srv->config;
    char err[256];
    json_t *patch = read_json(req);

    if (!patch) return;
    if (config_merge(&next, patch, err, sizeof err) < 0) {
        reply_error(req, 400, err);
    } else {
        set_config(srv, &next);
        log_json("config", config_to_json(&srv->config));
        reply_json(req, 200, config_to_json(&srv->config));
    }
    json_decref(patch);
}

static void post_reset(struct fake_server *srv, struct evhttp_request *req)
{
    struct fake_config defaults;

    config_defaults(&defaults);
    set_config(srv, &defaults);
    stats_reset(srv);
    json_object_clear(srv->success_cache);
    reply_json(req, 200, config_to_json(&srv->config));
}

static void post_reload(struct fake_server *srv, struct evhttp_request *req)
{
    char err[512];

    if (tables_load(srv, err, sizeof err) < 0) {
        log_json("reload failed", json_pack("{ss}", "error", err));
        reply_error(req, 500, err);
        return;
    }
    log_json("reloaded", json_pack("{sI sI}", "tokens", (json_int_t)json_object_size(srv->tables.tokens), "sar_rules",
                                   (json_int_t)json_array_size(srv->tables.sar_rules)));
    reply_json(req, 200,
               json_pack("{sI sI}", "tokens", (json_int_t)json_object_size(srv->tables.tokens), "sar_rules",
                         (json_int_t)json_array_size(srv->tables.sar_rules)));
}

/* A request the cluster answers; false when path is none of its endpoints. */
static bool cluster_control(struct fake_server *srv, struct evhttp_request *req, const char *path, bool post)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    json_t *body = NULL, *answer = NULL;
    int status = 500;
    bool handled;

    if (post && evbuffer_get_length(in) > 0) {
        body = read_json(req);
        if (!body) return true; /* answered 400 */
    } else {
        body = json_object();
    }
    handled = fake_cluster_control(srv, path, post, body, &status, &answer);
    if (handled) {
        if (post) log_json("cluster", json_pack("{ss si}", "control", path, "status", status));
        reply_json(req, status, answer ? answer : json_pack("{ss}", "error", "out of memory"));
    }
    json_decref(body);
    return handled;
}

static void control_cb(struct evhttp_request *req, void *arg)
{
    struct fake_server *srv = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    bool get = evhttp_request_get_command(req) == EVHTTP_REQ_GET;
    bool post = evhttp_request_get_command(req) == EVHTTP_REQ_POST;

    if (!path) path = "";
    if (strcmp(path, "/control/config") == 0 && get)
        reply_json(req, 200, config_to_json(&srv->config));
    else if (strcmp(path, "/control/config") == 0 && post)
        post_config(srv, req);
    else if (strcmp(path, "/control/stats") == 0 && get)
        reply_json(req, 200, stats_to_json(srv));
    else if (strcmp(path, "/control/reset-stats") == 0 && post) {
        stats_reset(srv);
        reply_json(req, 200, stats_to_json(srv));
    } else if (strcmp(path, "/control/reset") == 0 && post)
        post_reset(srv, req);
    else if (strcmp(path, "/control/reload") == 0 && post)
        post_reload(srv, req);
    else if (!cluster_control(srv, req, path, post))
        reply_error(req, 404, "no such control endpoint (or wrong method)");
}

int control_start(struct fake_server *srv, const char *addr)
{
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    char host[256];
    struct evhttp_bound_socket *sock;
    unsigned short port;

    if (parse_listen_addr(addr, &ss, &sslen) < 0) return -1;
    /* evhttp binds by host string and port; recover them from the parsed address. */
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        evutil_inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
        port = ntohs(sin6->sin6_port);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        evutil_inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
        port = ntohs(sin->sin_port);
    }

    srv->control = evhttp_new(srv->base);
    if (!srv->control) return -1;
    evhttp_set_allowed_methods(srv->control, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_gencb(srv->control, control_cb, srv);
    sock = evhttp_bind_socket_with_handle(srv->control, host, port);
    if (!sock) return -1;
    return log_listening("control", evhttp_bound_socket_get_fd(sock));
}
