/*
 * fake_http1.c - the HTTP/1.1 transport of the fake API server.
 *
 * Just enough HTTP/1.1 for API clients: keep-alive, pipelining (one request served at a
 * time, the rest wait in the input buffer), Content-Length bodies and
 * "Expect: 100-continue", which curl and libcurl send for larger bodies. Chunked request
 * bodies are refused with 501: no Kubernetes client sends them for reviews.
 *
 * While a request is with the review core (latency, hang) the connection keeps reading,
 * so that a client that gives up is noticed at once and its review cancelled.
 *
 * Watches answer with "Transfer-Encoding: chunked", one chunk per event, as kube-apiserver
 * does on HTTP/1.1; the connection serves nothing else until the watch ends.
 */
#include "fake_apiserver.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

enum { MAX_HEAD = 64 * 1024, MAX_BODY = 4 * 1024 * 1024 };

enum h1_phase {
    H1_HEAD, /* waiting for a complete request head */
    H1_BODY, /* head parsed, waiting for content_length bytes */
    H1_BUSY, /* the request is with the review core */
    H1_DONE, /* closing: no more requests on this connection */
};

struct h1_state {
    struct fake_exchange ex;
    enum h1_phase phase;
    size_t content_length;
    bool keep_alive;
};

/* Parsed request head, before it becomes the exchange's request. */
struct h1_head {
    char *method, *path, *authorization, *accept;
    size_t content_length;
    bool keep_alive;
    bool expect_continue;
    int error; /* HTTP status to refuse the request with, 0 if fine */
};

static struct h1_state *state_of(struct api_conn *conn)
{
    return conn->proto_state;
}

static void request_clear(struct fake_request *req)
{
    free(req->method);
    free(req->path);
    free(req->authorization);
    free(req->accept);
    free(req->body);
    memset(req, 0, sizeof *req);
}

/* ---- writing ---- */

/* Header names as Go's net/http writes them on HTTP/1.1: "Audit-Id". */
static void add_canonical_name(struct evbuffer *out, const char *name)
{
    bool upper = true;

    for (; *name; name++) {
        char c = upper ? (char)toupper((unsigned char)*name) : *name;
        evbuffer_add(out, &c, 1);
        upper = *name == '-';
    }
}

/* The status line and headers, without the blank line that ends them. */
static void write_head(struct evbuffer *out, const struct fake_response *resp)
{
    char date[64];

    fake_http_date(date, sizeof date);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", resp->status, fake_reason_phrase(resp->status));
    for (size_t i = 0; i < resp->n_headers; i++) {
        add_canonical_name(out, resp->headers[i].name);
        evbuffer_add_printf(out, ": %s\r\n", resp->headers[i].value);
    }
    evbuffer_add_printf(out, "Date: %s\r\n", date);
}

static void write_response(struct api_conn *conn, const struct fake_response *resp, bool keep_alive)
{
    struct evbuffer *out = bufferevent_get_output(conn->bev);

    write_head(out, resp);
    evbuffer_add_printf(out, "Content-Length: %zu\r\n%s\r\n", resp->body_len,
                        keep_alive ? "" : "Connection: close\r\n");
    evbuffer_add(out, resp->body, resp->body_len);
}

/* Stop reading requests; the write callback frees the connection once all is sent. */
static void finish_connection(struct api_conn *conn)
{
    state_of(conn)->phase = H1_DONE;
    bufferevent_disable(conn->bev, EV_READ);
}

/* Refuse a request the transport cannot take (malformed, too large) and close. */
static void refuse(struct api_conn *conn, int status)
{
    struct fake_response resp = {.status = status};

    resp.n_headers = 1;
    resp.headers[0].name = "content-type";
    strcpy(resp.headers[0].value, "text/plain; charset=utf-8");
    resp.body = (char *)fake_reason_phrase(status);
    resp.body_len = strlen(resp.body);
    write_response(conn, &resp, false);
    finish_connection(conn);
}

/* ---- the review core's callbacks ---- */

/* The answer is out (or queued): on to the next request, or close. */
static void request_done(struct api_conn *conn)
{
    struct h1_state *st = state_of(conn);

    request_clear(&st->ex.req);
    if (!st->keep_alive) {
        finish_connection(conn);
        return;
    }
    st->phase = H1_HEAD;
    /* A pipelined request may already be waiting: serve it from the event loop (the read
     * callback) instead of recursing into the parser from here. */
    if (evbuffer_get_length(bufferevent_get_input(conn->bev)) > 0)
        bufferevent_trigger(conn->bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
}

static void h1_respond(struct fake_exchange *ex, const struct fake_response *resp)
{
    struct api_conn *conn = ex->owner;

    write_response(conn, resp, state_of(conn)->keep_alive);
    request_done(conn);
}

static void h1_stream_start(struct fake_exchange *ex, const struct fake_response *head)
{
    struct api_conn *conn = ex->owner;
    struct evbuffer *out = bufferevent_get_output(conn->bev);

    write_head(out, head);
    evbuffer_add_printf(out, "Transfer-Encoding: chunked\r\n%s\r\n",
                        state_of(conn)->keep_alive ? "" : "Connection: close\r\n");
}

static void h1_stream_write(struct fake_exchange *ex, const char *data, size_t len)
{
    struct evbuffer *out = bufferevent_get_output(((struct api_conn *)ex->owner)->bev);

    if (len == 0) return; /* a zero-length chunk would end the body */
    evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    evbuffer_add(out, "\r\n", 2);
}

static void h1_stream_end(struct fake_exchange *ex)
{
    struct api_conn *conn = ex->owner;

    evbuffer_add(bufferevent_get_output(conn->bev), "0\r\n\r\n", 5);
    request_done(conn);
}

static void h1_close(struct fake_exchange *ex)
{
    struct api_conn *conn = ex->owner;

    request_clear(&ex->req);
    state_of(conn)->phase = H1_DONE;
    api_conn_close_later(conn);
}

static const struct fake_exchange_ops h1_ops = {h1_respond, h1_close, h1_stream_start, h1_stream_write, h1_stream_end};

/* ---- parsing ---- */

static bool token_in_list(const char *list, const char *token)
{
    size_t len = strlen(token);

    for (const char *p = list; *p;) {
        p += strspn(p, " \t,");
        if (strncasecmp(p, token, len) == 0 && strchr(" \t,", p[len])) return true;
        p += strcspn(p, ",");
    }
    return false;
}

/* Digits only, as RFC 9110 demands; returns false for anything else or too large. */
static bool parse_length(const char *s, size_t *out)
{
    size_t n = 0;

    if (!*s) return false;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s) || n > MAX_BODY) return false;
        n = n * 10 + (size_t)(*s - '0');
    }
    *out = n;
    return true;
}

static void parse_header(struct h1_head *h, char *name, char *value)
{
    size_t n;

    if (strcasecmp(name, "content-length") == 0) {
        if (!parse_length(value, &n))
            h->error = 400;
        else if (n > MAX_BODY)
            h->error = 413;
        else
            h->content_length = n;
    } else if (strcasecmp(name, "transfer-encoding") == 0) {
        h->error = 501;
    } else if (strcasecmp(name, "authorization") == 0) {
        free(h->authorization);
        h->authorization = strdup(value);
    } else if (strcasecmp(name, "accept") == 0) {
        free(h->accept);
        h->accept = strdup(value);
    } else if (strcasecmp(name, "connection") == 0) {
        if (token_in_list(value, "close"))
            h->keep_alive = false;
        else if (token_in_list(value, "keep-alive"))
            h->keep_alive = true;
    } else if (strcasecmp(name, "expect") == 0) {
        h->expect_continue = strcasecmp(value, "100-continue") == 0;
    }
}

/* "METHOD SP target SP HTTP/1.x"; sets keep_alive from the version. */
static void parse_request_line(struct h1_head *h, char *line)
{
    char *method = line, *path, *version;

    path = strchr(method, ' ');
    if (!path) goto bad;
    *path++ = '\0';
    version = strchr(path, ' ');
    if (!version) goto bad;
    *version++ = '\0';
    if (strncmp(version, "HTTP/1.", 7) != 0 || !*method || *path != '/') goto bad;
    h->keep_alive = strcmp(version, "HTTP/1.0") != 0;
    h->method = strdup(method);
    h->path = strdup(path);
    return;
bad:
    h->error = 400;
}

static char *trim(char *s)
{
    char *end;

    s += strspn(s, " \t");
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t')) *--end = '\0';
    return s;
}

/* Parse a NUL-terminated head (request line and header lines, CRLF separated). */
static void parse_head(struct h1_head *h, char *text)
{
    char *line = text, *next, *colon;

    for (bool first = true; line && *line && !h->error; line = next, first = false) {
        next = strstr(line, "\r\n");
        if (next) {
            *next = '\0';
            next += 2;
        }
        if (first) {
            parse_request_line(h, line);
            continue;
        }
        colon = strchr(line, ':');
        if (!colon || colon == line) {
            h->error = 400;
            break;
        }
        *colon = '\0';
        parse_header(h, line, trim(colon + 1));
    }
    if (!h->error && (!h->method || !h->path)) h->error = h->method ? 500 : 400; /* strdup failed, or no request line */
}

static void head_free(struct h1_head *h)
{
    free(h->method);
    free(h->path);
    free(h->authorization);
    free(h->accept);
}

/* Read one request head if complete. 1: got it; 0: need more; -1: refused. */
static int read_head(struct api_conn *conn)
{
    struct h1_state *st = state_of(conn);
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    struct h1_head h = {0};
    char *text;

    if (end.pos < 0 || end.pos + 4 > MAX_HEAD) {
        if (evbuffer_get_length(in) < MAX_HEAD) return 0;
        refuse(conn, 431);
        return -1;
    }
    text = malloc((size_t)end.pos + 3);
    if (!text) {
        refuse(conn, 500);
        return -1;
    }
    evbuffer_remove(in, text, (size_t)end.pos + 2);
    evbuffer_drain(in, 2);
    text[end.pos + 2] = '\0';
    parse_head(&h, text);
    free(text);
    if (h.error) {
        head_free(&h);
        refuse(conn, h.error);
        return -1;
    }

    st->ex.req.method = h.method;
    st->ex.req.path = h.path;
    st->ex.req.authorization = h.authorization;
    st->ex.req.accept = h.accept;
    st->content_length = h.content_length;
    st->keep_alive = h.keep_alive;
    st->phase = H1_BODY;
    if (h.expect_continue && evbuffer_get_length(in) < h.content_length)
        evbuffer_add_printf(bufferevent_get_output(conn->bev), "HTTP/1.1 100 Continue\r\n\r\n");
    return 1;
}

/* Take the body if it is all there. 1: got it; 0: need more; -1: refused. */
static int read_body(struct api_conn *conn)
{
    struct h1_state *st = state_of(conn);
    struct evbuffer *in = bufferevent_get_input(conn->bev);

    if (evbuffer_get_length(in) < st->content_length) return 0;
    st->ex.req.body = malloc(st->content_length + 1);
    if (!st->ex.req.body) {
        request_clear(&st->ex.req);
        refuse(conn, 500);
        return -1;
    }
    evbuffer_remove(in, st->ex.req.body, st->content_length);
    st->ex.req.body[st->content_length] = '\0';
    st->ex.req.body_len = st->content_length;
    return 1;
}

/* Advance the one request in progress as far as the buffered input allows. */
static void serve(struct api_conn *conn)
{
    struct h1_state *st = state_of(conn);

    if (st->phase == H1_HEAD && read_head(conn) <= 0) return;
    if (st->phase != H1_BODY || read_body(conn) <= 0) return;
    st->phase = H1_BUSY;
    st->ex.ops = &h1_ops;
    st->ex.owner = conn;
    fake_review_handle(conn->srv, &st->ex);
}

/* ---- bufferevent callbacks ---- */

static void h1_read_cb(struct bufferevent *bev, void *arg)
{
    struct api_conn *conn = arg;

    (void)bev;
    if (state_of(conn)->phase == H1_BUSY) {
        /* Pipelined bytes wait their turn; EOF still reaches h1_event_cb. A client that
         * floods meanwhile is cut off. */
        if (evbuffer_get_length(bufferevent_get_input(conn->bev)) > MAX_HEAD + MAX_BODY) api_conn_close_later(conn);
        return;
    }
    serve(conn);
}

static void h1_write_cb(struct bufferevent *bev, void *arg)
{
    struct api_conn *conn = arg;

    (void)bev;
    if (state_of(conn)->phase == H1_DONE) api_conn_free(conn); /* the last answer is out */
}

static void h1_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        api_conn_free(arg); /* the client went away: stop cancels its review */
}

/* ---- struct api_proto ---- */

static int h1_start(struct api_conn *conn)
{
    struct h1_state *st = calloc(1, sizeof *st);

    if (!st) return -1;
    conn->proto_state = st;
    bufferevent_setcb(conn->bev, h1_read_cb, h1_write_cb, h1_event_cb, conn);
    bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
    /* The request may have arrived together with the end of the handshake. */
    if (evbuffer_get_length(bufferevent_get_input(conn->bev)) > 0)
        bufferevent_trigger(conn->bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
    return 0;
}

static void h1_stop(struct api_conn *conn)
{
    struct h1_state *st = state_of(conn);

    fake_review_cancel(&st->ex);
    request_clear(&st->ex.req);
    free(st);
    conn->proto_state = NULL;
}

const struct api_proto fake_http1_proto = {"http/1.1", h1_start, h1_stop};
