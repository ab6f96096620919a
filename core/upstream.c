/* upstream.c owns proxy mode's way to the application: the request forwarded upstream
 * (headers filtered, identity added, body read from evhttp's buffer), the answer streamed
 * back with flow control, the deadlines, and what happens when either side goes away.
 *
 * One proxy_transfer per forwarded request, from upstream_forward to transfer_end, which
 * calls the owner's done last. It ends in one of these ways:
 *   the upstream answered   on_transfer_done: evhttp_send_reply_end; the transfer ends in
 *                           on_reply_flushed once the client has every byte (so graceful
 *                           shutdown never exits with an answer still in a buffer)
 *   the upstream failed     transfer_fail: before the answer began, 502/504 (then as
 *                           above); after, the client connection is closed so that the
 *                           cut is visible, and the transfer ends at once
 *   the client went away    on_client_close, when evhttp frees the connection (a write
 *                           failed or timed out, or client_watch saw the client close):
 *                           the upstream side is aborted
 *   shutdown                upstream_free frees each client connection (then as above) */
#include "upstream.h"

#include "curl_loop.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* the client's HTTP version: libevent 2.1 has no accessor */
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>

#define RESPONSE_HEADERS_MAX (64 * 1024) /* the upstream's header block; larger: 502 */
#define REQUEST_TARGET_MAX 16384

struct upstream {
    struct event_base *base;
    curl_loop *loop;
    char *origin;  /* "scheme://authority/": CURLOPT_URL */
    char *prefix;  /* the upstream URL's path without its trailing '/', or "" */
    char *ca_file; /* NULL: libcurl's default CAs */
    int64_t timeout_ms;
    bool keep_authorization;
    bool listener_tls;
    bool draining;
    size_t in_flight;
    struct proxy_transfer *transfers;                                   /* every running transfer, for upstream_free */
    void (*client_closecb)(struct evhttp_connection *evcon, void *arg); /* upstream_options */
    void *client_closecb_arg;
};

/* One forwarded request. */
typedef struct proxy_transfer {
    upstream *up;
    curl_loop_transfer transfer; /* CURLOPT_PRIVATE: routes the finished transfer to on_transfer_done */
    struct proxy_transfer *prev, *next;
    struct evhttp_request *req;      /* the client's request; NULL once handed back to evhttp */
    struct evhttp_connection *evcon; /* its connection, carrying our closecb; NULL once detached */
    CURL *easy;
    struct curl_slist *headers; /* may hold the client's Authorization: wiped on free */
    char *target;               /* the request target sent upstream */
    struct event *client_watch; /* notices the client closing while nothing is written to it */
    struct event *idle_timer;   /* --upstream-timeout: the upstream's silence */
    struct evbuffer *chunk;     /* staging for evhttp_send_reply_chunk_with_cb */
    int64_t last_activity_ms;   /* last byte to or from the upstream */
    size_t body_len, body_off;  /* the request body, read from evhttp's input buffer */
    struct evbuffer_ptr body_pos;
    size_t response_header_bytes;
    int status; /* of the header block being read, then of the answer */
    char reason[128];
    const char *error;  /* why a callback aborted the transfer (static text) */
    bool head;          /* HEAD: no answer body either way */
    bool in_block;      /* between a status line and the blank line ending its block */
    bool headers_done;  /* the final header block arrived */
    bool reply_started; /* status and headers went to the client */
    bool paused;        /* receiving paused: the client has not drained what it got */
    bool handed_over;   /* the upstream side is over; evhttp writes out the answer */
    int final_status;   /* what the client was sent, once handed over */
    upstream_done_fn done;
    void *done_arg;
    char curl_error[CURL_ERROR_SIZE];
} proxy_transfer;

static void on_transfer_done(void *owner, CURL *easy, CURLcode code);
static void on_client_drained(struct evhttp_connection *evcon, void *arg);

/* ---- which headers cross ------------------------------------------------------------- */

/* Hop-by-hop fields (RFC 9110 7.6.1), plus the non-standard Proxy-Connection. */
static const char *const hop_by_hop_fields[] = {
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    NULL,
};

/* Set by the gateway or by libcurl, never taken from the client. */
static const char *const replaced_request_fields[] = {
    "Host", "Content-Length", "Expect", "Forwarded", "X-Real-IP", NULL,
};

/* A client that sends one of these is trying to choose its identity or its origin. */
static const char *const spoofable_prefixes[] = {
    "X-Remote-", "X-Forwarded-", "X-Original-", "X-Auth-Request-", "Impersonate-", NULL,
};

static bool in_list(const char *name, const char *const *list)
{
    for (; *list; list++)
        if (strcasecmp(name, *list) == 0) return true;
    return false;
}

static bool has_prefix(const char *name, const char *const *prefixes)
{
    for (; *prefixes; prefixes++)
        if (strncasecmp(name, *prefixes, strlen(*prefixes)) == 0) return true;
    return false;
}

/* True when name[0..len) is an RFC 9110 token, the only form a field name may take. */
static bool is_token(const char *name, size_t len)
{
    static const char symbols[] = "!#$%&'*+-.^_`|~";
    if (len == 0) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              memchr(symbols, c, sizeof(symbols) - 1)))
            return false;
    }
    return true;
}

/* True when a Connection field of headers lists name as a connection option. */
static bool named_by_connection(const struct evkeyvalq *headers, const char *name)
{
    size_t name_len = strlen(name);
    const struct evkeyval *kv;
    TAILQ_FOREACH(kv, headers, next) {
        if (strcasecmp(kv->key, "Connection") != 0) continue;
        for (const char *p = kv->value; *p;) {
            p += strspn(p, " \t,");
            size_t len = strcspn(p, " \t,");
            if (len == name_len && strncasecmp(p, name, len) == 0) return true;
            p += len;
        }
    }
    return false;
}

static bool hop_by_hop(const struct evkeyvalq *headers, const char *name)
{
    return in_list(name, hop_by_hop_fields) || named_by_connection(headers, name);
}

/* Appends "name: value" (or "name;", libcurl's way to send an empty value). */
static int append_header(struct curl_slist **list, const char *name, const char *value)
{
    size_t len = strlen(name) + strlen(value) + 3;
    char *line = malloc(len);
    if (!line) return -1;
    if (*value)
        snprintf(line, len, "%s: %s", name, value);
    else
        snprintf(line, len, "%s;", name);
    struct curl_slist *more = curl_slist_append(*list, line);
    OPENSSL_cleanse(line, len); /* may be the client's Authorization */
    free(line);
    if (!more) return -1;
    *list = more;
    return 0;
}

static void wipe_headers(struct curl_slist *list)
{
    for (struct curl_slist *h = list; h; h = h->next) OPENSSL_cleanse(h->data, strlen(h->data));
    curl_slist_free_all(list);
}

/* The header list sent upstream: the client's fields in their order minus hop-by-hop,
 * underscored, gateway-set, spoofable and policy-set ones (and Authorization unless kept), then the
 * gateway's own. body tells whether the request carries a body (libcurl then sends its
 * Content-Length). Returns 0, or -1 when out of memory. */
static int build_request_headers(const upstream *up, const upstream_request *r, bool body, struct curl_slist **out)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(r->req);
    struct curl_slist *list = NULL;
    bool has_accept = false, has_content_type = false;
    const struct evkeyval *kv;
    TAILQ_FOREACH(kv, in, next) {
        const char *name = kv->key;
        bool policy_set = false;
        for (size_t i = 0; i < r->n_headers && !policy_set; i++) policy_set = strcasecmp(name, r->header_names[i]) == 0;
        /* A name with '_' is dropped whatever it spells, as nginx does by default
         * (underscores_in_headers off): CGI, WSGI, PHP and Rack map X_Remote_User and
         * X-Remote-User to the same HTTP_X_REMOTE_USER, so a client could otherwise pass
         * an identity, an Impersonate-* or a forwarding header next to the gateway's. */
        if (policy_set || !is_token(name, strlen(name)) || strchr(name, '_') || hop_by_hop(in, name) ||
            in_list(name, replaced_request_fields) || has_prefix(name, spoofable_prefixes) ||
            (!up->keep_authorization && strcasecmp(name, "Authorization") == 0))
            continue;
        has_accept |= strcasecmp(name, "Accept") == 0;
        has_content_type |= strcasecmp(name, "Content-Type") == 0;
        if (append_header(&list, name, kv->value) != 0) goto err;
    }

    char *client_ip = NULL;
    ev_uint16_t client_port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(r->req), &client_ip, &client_port);
    const char *host = evhttp_find_header(in, "Host");
    if ((client_ip && append_header(&list, "X-Forwarded-For", client_ip) != 0) ||
        append_header(&list, "X-Forwarded-Proto", up->listener_tls ? "https" : "http") != 0 ||
        (host && append_header(&list, "X-Forwarded-Host", host) != 0))
        goto err;
    if (r->user && (append_header(&list, "X-Remote-User", r->user) != 0 ||
                    append_header(&list, "X-Remote-Uid", r->uid ? r->uid : "") != 0 ||
                    append_header(&list, "X-Remote-Groups", r->groups ? r->groups : "") != 0))
        goto err;
    for (size_t i = 0; i < r->n_headers; i++)
        if (append_header(&list, r->header_names[i], r->header_values[i]) != 0) goto err;

    /* What libcurl would add on its own: "Name:" removes it. Without these the upstream
     * would see an Accept, a form Content-Type or an Expect the client never sent. */
    static const char *const suppress[] = {"Expect:", "Accept:", "Content-Type:"};
    for (size_t i = 0; i < sizeof(suppress) / sizeof(suppress[0]); i++) {
        if ((i == 1 && has_accept) || (i == 2 && (has_content_type || !body))) continue;
        struct curl_slist *more = curl_slist_append(list, suppress[i]);
        if (!more) goto err;
        list = more;
    }
    *out = list;
    return 0;
err:
    wipe_headers(list);
    return -1;
}

/* ---- ending a transfer ------------------------------------------------------------- */

/* Stops watching the client connection and the clock. The request is untouched. */
static void detach_client(proxy_transfer *t)
{
    if (t->evcon) evhttp_connection_set_closecb(t->evcon, t->up->client_closecb, t->up->client_closecb_arg);
    t->evcon = NULL;
    if (t->client_watch) event_del(t->client_watch);
    if (t->idle_timer) event_del(t->idle_timer);
}

/* Aborts the upstream side if it still runs. Its callbacks read the request's body, so
 * this comes before the request is answered or freed. */
static void stop_upstream(proxy_transfer *t)
{
    if (!t->easy) return;
    curl_loop_remove(t->up->loop, t->easy);
    curl_easy_cleanup(t->easy);
    t->easy = NULL;
}

/* Frees t (the request must have been handed back already) and tells the owner. */
static void transfer_end(proxy_transfer *t, int status)
{
    upstream *up = t->up;
    detach_client(t);
    stop_upstream(t);
    if (t->prev)
        t->prev->next = t->next;
    else
        up->transfers = t->next;
    if (t->next) t->next->prev = t->prev;
    up->in_flight--;
    wipe_headers(t->headers);
    free(t->target);
    if (t->client_watch) event_free(t->client_watch);
    if (t->idle_timer) event_free(t->idle_timer);
    if (t->chunk) evbuffer_free(t->chunk);
    upstream_done_fn done = t->done;
    void *arg = t->done_arg;
    free(t);
    if (done) done(arg, status);
}

/* The gateway's own answer when the upstream failed before anything was sent. */
static void reply_gateway_error(const upstream *up, struct evhttp_request *req, int status, const char *text)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_clear_headers(out); /* whatever an unfinished header block left there */
    evhttp_add_header(out, "Cache-Control", "no-store");
    evhttp_add_header(out, "Content-Type", "text/plain; charset=utf-8");
    if (up->draining) evhttp_add_header(out, "Connection", "close");
    struct evbuffer *body = evbuffer_new();
    if (body) evbuffer_add_printf(body, "%s\n", text);
    evhttp_send_reply(req, status, status == 504 ? "Gateway Timeout" : "Bad Gateway", body);
    if (body) evbuffer_free(body);
}

/* evhttp_request_set_on_complete_cb: the last byte of the answer was written. evhttp
 * frees the request (and maybe the connection) right after this returns. */
static void on_reply_flushed(struct evhttp_request *req, void *arg)
{
    (void)req;
    proxy_transfer *t = arg;
    t->req = NULL;
    detach_client(t);
    transfer_end(t, t->final_status);
}

/* The upstream side is over and status is what the client gets: from here evhttp writes
 * out the answer, and the transfer ends when it is written or the client is gone. The
 * caller then sends (or ends) the answer; t may be gone when that returns. */
static void hand_over(proxy_transfer *t, int status)
{
    stop_upstream(t);
    if (t->client_watch) event_del(t->client_watch); /* a write error tells from now on */
    event_del(t->idle_timer);
    t->handed_over = true;
    t->final_status = status;
    evhttp_request_set_on_complete_cb(t->req, on_reply_flushed, t);
}

/* The upstream failed (status 502 or 504). Before the answer began the client gets that
 * status; after, its connection is closed so the cut is visible (a short Content-Length
 * or a missing last chunk), never a complete-looking answer. */
static void transfer_fail(proxy_transfer *t, int status, const char *why)
{
    char code[8];
    snprintf(code, sizeof(code), "%d", status);
    log_warn("upstream request failed", LOG_NUMBER "status", code, "error", why, "answer_started",
             t->reply_started ? "yes" : "no", NULL);
    if (!t->reply_started) {
        struct evhttp_request *req = t->req;
        upstream *up = t->up;
        hand_over(t, status);
        reply_gateway_error(up, req, status, status == 504 ? "upstream timed out" : "bad gateway");
        return;
    }
    struct evhttp_connection *evcon = t->evcon;
    detach_client(t);
    stop_upstream(t);
    t->req = NULL;
    if (evcon) evhttp_connection_free(evcon); /* frees the request with it */
    transfer_end(t, t->status);
}

/* curl_loop_transfer.done: the transfer is over, on the loop. */
static void on_transfer_done(void *owner, CURL *easy, CURLcode code)
{
    (void)easy;
    proxy_transfer *t = owner;
    if (code != CURLE_OK || !t->reply_started) {
        const char *why = t->error           ? t->error
                          : t->curl_error[0] ? t->curl_error
                          : code != CURLE_OK ? curl_easy_strerror(code)
                                             : "the upstream sent no complete answer";
        transfer_fail(t, code == CURLE_OPERATION_TIMEDOUT ? 504 : 502, why);
        return;
    }
    struct evhttp_request *req = t->req;
    hand_over(t, t->status);
    evhttp_send_reply_end(req);
}

/* evhttp is freeing the client connection: the client closed it, a write failed or timed
 * out, our client_watch freed it, or the listener is being freed. */
static void on_client_close(struct evhttp_connection *evcon, void *arg)
{
    proxy_transfer *t = arg;
    /* On a failed connection evhttp detaches a request it was still waiting on us for and
     * leaves it to us; otherwise the request goes with the connection after this returns. */
    struct evhttp_request *req = t->req;
    bool ours = evhttp_request_get_connection(req) == NULL;
    t->evcon = NULL; /* being freed: its callbacks are not ours to clear */
    t->req = NULL;
    if (t->up->client_closecb) t->up->client_closecb(evcon, t->up->client_closecb_arg);
    int status = t->handed_over ? t->final_status : t->reply_started ? t->status : 499;
    if (!t->handed_over) log_debug("the client went away; upstream transfer aborted", NULL);
    transfer_end(t, status);
    if (ours) evhttp_request_free(req);
}

/* The client's socket became readable while evhttp is not reading it (it reads nothing
 * between a request and its answer): end of stream or an error means the client is gone.
 * Pipelined bytes cannot be told apart from a later close, so watching stops there. */
static void on_client_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    proxy_transfer *t = arg;
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        event_add(t->client_watch, NULL);
        return;
    }
    evhttp_connection_free(t->evcon); /* runs on_client_close, which ends t */
}

static void arm_idle_timer(proxy_transfer *t, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(t->idle_timer, &tv);
}

/* --upstream-timeout: re-armed lazily from last_activity_ms rather than on every byte. */
static void on_idle_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    proxy_transfer *t = arg;
    int64_t left = t->last_activity_ms + t->up->timeout_ms - monotonic_ms();
    if (left > 0) {
        arm_idle_timer(t, left);
        return;
    }
    transfer_fail(t, 504, "the upstream did not answer within --upstream-timeout");
}

/* ---- the answer, from libcurl's callbacks -------------------------------------------- */

/* Sends the status line and headers: the final header block minus hop-by-hop fields. */
static void start_reply(proxy_transfer *t)
{
    struct evhttp_request *req = t->req;
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    /* With Transfer-Encoding libcurl decodes the chunks: a Content-Length beside it would lie. */
    bool chunked_upstream = evhttp_find_header(out, "Transfer-Encoding") != NULL;
    struct evkeyvalq kept;
    TAILQ_INIT(&kept);
    struct evkeyval *kv, *next;
    for (kv = TAILQ_FIRST(out); kv; kv = next) {
        next = TAILQ_NEXT(kv, next);
        if (hop_by_hop(out, kv->key) || (chunked_upstream && strcasecmp(kv->key, "Content-Length") == 0)) continue;
        TAILQ_REMOVE(out, kv, next);
        TAILQ_INSERT_TAIL(&kept, kv, next);
    }
    evhttp_clear_headers(out);
    while ((kv = TAILQ_FIRST(&kept))) {
        TAILQ_REMOVE(&kept, kv, next);
        TAILQ_INSERT_TAIL(out, kv, next);
    }
    if (t->up->draining) evhttp_add_header(out, "Connection", "close");
    bool body = !t->head && t->status != 204 && t->status != 304;
    if (body && !evhttp_find_header(out, "Content-Length") && req->major == 1 && req->minor == 0) {
        /* An HTTP/1.0 client cannot take chunks: the body ends when the connection closes.
         * Forget its keep-alive wish, or evhttp would promise keep-alive with a
         * Content-Length of 0. (The upstream has already been sent its headers.) */
        while (evhttp_remove_header(evhttp_request_get_input_headers(req), "Connection") == 0) continue;
    }
    evhttp_send_reply_start(req, t->status, t->reason[0] ? t->reason : NULL);
    t->reply_started = true;
}

/* Parses "HTTP/x[.y] NNN [reason]". */
static int parse_status_line(proxy_transfer *t, const char *line, size_t len)
{
    const char *sp = memchr(line, ' ', len);
    if (!sp || (size_t)(line + len - sp) < 4) return -1;
    const char *code = sp + 1;
    if (code[0] < '1' || code[0] > '5' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9') return -1;
    t->status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
    t->reason[0] = '\0';
    const char *reason = code + 3;
    size_t reason_len = (size_t)(line + len - reason);
    if (reason_len && *reason != ' ') return -1;
    if (reason_len) reason++, reason_len--;
    if (reason_len >= sizeof(t->reason)) reason_len = sizeof(t->reason) - 1;
    for (size_t i = 0; i < reason_len; i++)
        if (reason[i] < 0x20 || reason[i] > 0x7e) return 0; /* an odd reason: evhttp's standard one */
    memcpy(t->reason, reason, reason_len);
    t->reason[reason_len] = '\0';
    return 0;
}

/* Adds "Name: value" to the answer's headers. */
static int add_response_header(proxy_transfer *t, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : 0;
    if (!is_token(line, name_len)) return -1;
    const char *value = colon + 1;
    const char *end = line + len;
    while (value < end && (*value == ' ' || *value == '\t')) value++;
    while (end > value && (end[-1] == ' ' || end[-1] == '\t')) end--;
    if (memchr(value, '\0', (size_t)(end - value))) return -1;
    char *copy = malloc(len + 2);
    if (!copy) return -1;
    memcpy(copy, line, name_len);
    copy[name_len] = '\0';
    char *value_copy = copy + name_len + 1;
    memcpy(value_copy, value, (size_t)(end - value));
    value_copy[end - value] = '\0';
    int rc = evhttp_add_header(evhttp_request_get_output_headers(t->req), copy, value_copy);
    free(copy);
    return rc;
}

/* CURLOPT_HEADERFUNCTION: one line at a time, status lines included; interim (1xx) blocks
 * are dropped, the final block is sent to the client as soon as its blank line arrives.
 * Returning anything but n aborts the transfer (502, t->error says why). */
static size_t on_response_header(char *data, size_t size, size_t nitems, void *arg)
{
    proxy_transfer *t = arg;
    size_t n = size * nitems;
    t->last_activity_ms = monotonic_ms();
    if (t->headers_done) return n; /* trailers of a chunked body: not forwarded */
    t->response_header_bytes += n;
    if (t->response_header_bytes > RESPONSE_HEADERS_MAX) {
        t->error = "the upstream's headers are too large";
        return 0;
    }
    size_t len = n;
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r')) len--;
    if (!t->in_block) {
        if (len < 5 || memcmp(data, "HTTP/", 5) != 0 || parse_status_line(t, data, len) != 0) {
            t->error = "the upstream sent a malformed status line";
            return 0;
        }
        evhttp_clear_headers(evhttp_request_get_output_headers(t->req));
        t->in_block = true;
        return n;
    }
    if (len == 0) { /* the end of a header block */
        t->in_block = false;
        if (t->status == 101) {
            t->error = "the upstream switched protocols";
            return 0;
        }
        if (t->status < 200) return n; /* 100 Continue, 103 Early Hints: not forwarded */
        t->headers_done = true;
        start_reply(t);
        return n;
    }
    if (data[0] == ' ' || data[0] == '\t' || add_response_header(t, data, len) != 0) {
        t->error = "the upstream sent a malformed header field";
        return 0;
    }
    return n;
}

/* CURLOPT_WRITEFUNCTION: body bytes go to the client as they come. While more than
 * UPSTREAM_PAUSE_BYTES still wait to be written to the client the transfer pauses (these
 * bytes stay with libcurl) and on_client_drained resumes it. */
static size_t on_response_body(char *data, size_t size, size_t nmemb, void *arg)
{
    proxy_transfer *t = arg;
    size_t n = size * nmemb;
    if (!t->reply_started || !t->evcon) {
        t->error = "the upstream sent a body before its headers";
        return 0;
    }
    struct evbuffer *pending = bufferevent_get_output(evhttp_connection_get_bufferevent(t->evcon));
    if (evbuffer_get_length(pending) >= UPSTREAM_PAUSE_BYTES) {
        t->paused = true;
        event_del(t->idle_timer); /* a slow client is not a silent upstream */
        return CURL_WRITEFUNC_PAUSE;
    }
    t->last_activity_ms = monotonic_ms();
    if (evbuffer_add(t->chunk, data, n) != 0) {
        t->error = "out of memory";
        return 0;
    }
    /* The callback's argument is the upstream, not t: evhttp keeps the last callback set
     * after the answer ends, and may still run it (deferred, on TLS connections). */
    evhttp_send_reply_chunk_with_cb(t->req, t->chunk, on_client_drained, t->up);
    evbuffer_drain(t->chunk, evbuffer_get_length(t->chunk)); /* not taken for HEAD, 204, 304 */
    return n;
}

/* evhttp wrote everything queued for a client (its chunk callback; arg is the upstream).
 * Resumes the transfer of that connection if it was paused: from here, never from inside
 * a libcurl callback. curl_easy_pause may deliver the held bytes at once, through
 * on_response_body. */
static void on_client_drained(struct evhttp_connection *evcon, void *arg)
{
    upstream *up = arg;
    proxy_transfer *t = up->transfers;
    while (t && t->evcon != evcon) t = t->next;
    if (!t || !t->paused) return;
    t->paused = false;
    t->last_activity_ms = monotonic_ms();
    arm_idle_timer(t, up->timeout_ms);
    curl_easy_pause(t->easy, CURLPAUSE_CONT);
}

/* ---- the request body, from libcurl's callbacks --------------------------------------- */

/* CURLOPT_READFUNCTION: copies from evhttp's input buffer, which stays untouched until
 * the request is answered, so nothing is copied twice and a retry can rewind. */
static size_t on_request_body(char *dst, size_t size, size_t nitems, void *arg)
{
    proxy_transfer *t = arg;
    size_t want = size * nitems, left = t->body_len - t->body_off;
    if (left == 0) return 0;
    if (want > left) want = left;
    struct evbuffer *in = evhttp_request_get_input_buffer(t->req);
    ev_ssize_t got = evbuffer_copyout_from(in, &t->body_pos, dst, want);
    if (got <= 0) return CURL_READFUNC_ABORT;
    t->body_off += (size_t)got;
    if (t->body_off < t->body_len && evbuffer_ptr_set(in, &t->body_pos, (size_t)got, EVBUFFER_PTR_ADD) != 0)
        return CURL_READFUNC_ABORT;
    t->last_activity_ms = monotonic_ms();
    return (size_t)got;
}

/* CURLOPT_SEEKFUNCTION: libcurl rewinds when it resends on a fresh connection. */
static int on_request_seek(void *arg, curl_off_t offset, int origin)
{
    proxy_transfer *t = arg;
    if (origin != SEEK_SET || offset < 0 || (curl_off_t)t->body_len < offset) return CURL_SEEKFUNC_FAIL;
    t->body_off = (size_t)offset;
    if (t->body_off < t->body_len &&
        evbuffer_ptr_set(evhttp_request_get_input_buffer(t->req), &t->body_pos, t->body_off, EVBUFFER_PTR_SET) != 0)
        return CURL_SEEKFUNC_FAIL;
    return CURL_SEEKFUNC_OK;
}

/* ---- starting a transfer ---------------------------------------------------------------- */

/* The easy handle for t: method, target, body, headers, TLS and callbacks. */
static int setup_easy(proxy_transfer *t, const char *method, bool body)
{
    const upstream *up = t->up;
    CURL *e = t->easy = curl_easy_init();
    if (!e) return -1;
    CURLcode rc = CURLE_OK;
#define SET(option, value)                                                                                             \
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, option, value)
    SET(CURLOPT_URL, up->origin);
    SET(CURLOPT_REQUEST_TARGET, t->target); /* verbatim: no dot-segment removal, no re-encoding */
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_HTTPHEADER, t->headers);
    SET(CURLOPT_HTTP_CONTENT_DECODING, 0L); /* Content-Encoding passes through untouched */
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)up->timeout_ms);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (up->ca_file) {
        /* The configured CA and nothing else: libcurl's default CApath would add every system root.
         */
        SET(CURLOPT_CAINFO, up->ca_file);
        SET(CURLOPT_CAPATH, NULL);
    }
    if (strcmp(method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (body) {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->body_len);
        SET(CURLOPT_READFUNCTION, on_request_body);
        SET(CURLOPT_READDATA, t);
        SET(CURLOPT_SEEKFUNCTION, on_request_seek);
        SET(CURLOPT_SEEKDATA, t);
    }
    /* GET and HEAD are libcurl's own; a GET with a body (POST above) stays a GET. */
    if (body || (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)) {
        SET(CURLOPT_CUSTOMREQUEST, method);
    }
    SET(CURLOPT_HEADERFUNCTION, on_response_header);
    SET(CURLOPT_HEADERDATA, t);
    SET(CURLOPT_WRITEFUNCTION, on_response_body);
    SET(CURLOPT_WRITEDATA, t);
    SET(CURLOPT_ERRORBUFFER, t->curl_error);
#undef SET
    return rc == CURLE_OK ? 0 : -1;
}

int upstream_forward(upstream *up, const upstream_request *r, upstream_done_fn done, void *arg)
{
    struct evhttp_request *req = r->req;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    const char *method = r->method;
    const char *uri = evhttp_request_get_uri(req);
    /* TRACE would echo the gateway's headers back; CONNECT is a tunnel no policy can judge. */
    if (!evcon || !uri || uri[0] != '/' || strcmp(method, "TRACE") == 0 || strcmp(method, "CONNECT") == 0) return -1;
    size_t target_len = strlen(up->prefix) + strlen(uri);
    if (target_len >= REQUEST_TARGET_MAX) return -1;

    proxy_transfer *t = calloc(1, sizeof(*t));
    if (!t) return -1;
    t->up = up;
    t->done = done;
    t->done_arg = arg;
    t->head = strcmp(method, "HEAD") == 0;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    t->body_len = evbuffer_get_length(in);
    struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
    /* A body, or the framing of one, goes upstream as a body (libcurl sends its length). */
    bool body = t->body_len > 0 || evhttp_find_header(headers, "Content-Length") ||
                evhttp_find_header(headers, "Transfer-Encoding") || strcmp(method, "POST") == 0 ||
                strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
    if (t->body_len && evbuffer_ptr_set(in, &t->body_pos, 0, EVBUFFER_PTR_SET) != 0) goto err;
    t->target = malloc(target_len + 1);
    if (!t->target) goto err;
    snprintf(t->target, target_len + 1, "%s%s", up->prefix, uri);
    t->chunk = evbuffer_new();
    t->idle_timer = evtimer_new(up->base, on_idle_timer, t);
    evutil_socket_t fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
    t->client_watch = fd >= 0 ? event_new(up->base, fd, EV_READ, on_client_readable, t) : NULL;
    if (!t->chunk || !t->idle_timer || (fd >= 0 && !t->client_watch) ||
        build_request_headers(up, r, body && !t->head, &t->headers) != 0 ||
        setup_easy(t, method, body && !t->head) != 0)
        goto err;
    t->transfer = (curl_loop_transfer){.done = on_transfer_done, .owner = t};
    if (curl_loop_add(up->loop, t->easy, &t->transfer) != 0) goto err;

    /* Running: from here on t is ended only through transfer_end. */
    t->req = req;
    t->evcon = evcon;
    t->next = up->transfers;
    if (up->transfers) up->transfers->prev = t;
    up->transfers = t;
    up->in_flight++;
    evhttp_connection_set_closecb(evcon, on_client_close, t);
    if (t->client_watch) event_add(t->client_watch, NULL);
    t->last_activity_ms = monotonic_ms();
    arm_idle_timer(t, up->timeout_ms);
    return 0;
err:
    if (t->easy) curl_easy_cleanup(t->easy);
    wipe_headers(t->headers);
    free(t->target);
    if (t->chunk) evbuffer_free(t->chunk);
    if (t->idle_timer) event_free(t->idle_timer);
    if (t->client_watch) event_free(t->client_watch);
    free(t);
    return -1;
}

/* ---- the client itself ---------------------------------------------------------------- */

upstream *upstream_new(struct event_base *base, const upstream_options *options)
{
    upstream *up = calloc(1, sizeof(*up));
    if (!up) return NULL;
    up->base = base;
    up->timeout_ms = options->timeout_ms;
    up->keep_authorization = options->keep_authorization;
    up->listener_tls = options->listener_tls;
    up->client_closecb = options->client_closecb;
    up->client_closecb_arg = options->client_closecb_arg;
    const char *url = options->url;
    const char *authority = strstr(url, "://");
    if (!authority || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) goto err;
    authority += 3;
    const char *path = authority + strcspn(authority, "/");
    size_t path_len = strlen(path);
    while (path_len && path[path_len - 1] == '/') path_len--;
    up->origin = malloc((size_t)(path - url) + 2);
    up->prefix = malloc(path_len + 1);
    up->ca_file = options->ca_file ? strdup(options->ca_file) : NULL;
    up->loop = curl_loop_new(base);
    if (path == authority || !up->origin || !up->prefix || (options->ca_file && !up->ca_file) || !up->loop) goto err;
    memcpy(up->origin, url, (size_t)(path - url));
    memcpy(up->origin + (path - url), "/", 2);
    memcpy(up->prefix, path, path_len);
    up->prefix[path_len] = '\0';

    /* The keep-alive pool is libcurl's connection cache: at most max_connections open to
     * the upstream (more transfers queue inside libcurl, under --upstream-timeout), and as
     * many kept idle for reuse. HTTP/1.1 only, so no multiplexing. */
    CURLM *multi = curl_loop_multi(up->loop);
    long max = options->max_connections > 100000 ? 100000L : (long)options->max_connections;
    if (curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, max) != CURLM_OK ||
        curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, max) != CURLM_OK ||
        curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, max) != CURLM_OK ||
        curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING) != CURLM_OK)
        goto err;
    return up;
err:
    log_error("cannot create the upstream client", "upstream", options->url, NULL);
    upstream_free(up);
    return NULL;
}

void upstream_free(upstream *up)
{
    if (!up) return;
    /* Freeing a client connection runs on_client_close, which ends its transfer. */
    while (up->transfers) {
        proxy_transfer *t = up->transfers;
        if (t->evcon)
            evhttp_connection_free(t->evcon);
        else
            transfer_end(t, 499); /* not reached: a running transfer always has its connection */
    }
    curl_loop_free(up->loop);
    free(up->origin);
    free(up->prefix);
    free(up->ca_file);
    free(up);
}

void upstream_set_draining(upstream *up)
{
    up->draining = true;
}

size_t upstream_in_flight(const upstream *up)
{
    return up->in_flight;
}
