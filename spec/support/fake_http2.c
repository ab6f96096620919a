/*
 * fake_http2.c - the HTTP/2 transport of the fake API server (nghttp2).
 *
 * kube-apiserver speaks HTTP/2 whenever ALPN offers it, and clients multiplex many
 * reviews on one connection; tokengate's libcurl client does the same. Each stream
 * carries one request to the review core, exactly as an HTTP/1.1 request does, so every
 * knob behaves the same on both transports. close_connection drops the whole connection,
 * like a server going away; a stream reset by the client cancels its review.
 *
 * nghttp2 is driven with mem_recv/mem_send over the TLS bufferevent. Its send functions
 * must not run inside its own callbacks, so answers given while it is parsing are queued
 * by nghttp2 and sent once parsing returns.
 *
 * A watch is a stream whose body has no known length: its data source answers
 * NGHTTP2_ERR_DEFERRED while no event is waiting and is resumed by each new one; the end
 * of the watch is END_STREAM on an empty DATA frame.
 */
#include "fake_apiserver.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>

enum { MAX_BODY = 4 * 1024 * 1024, MAX_STREAMS = 250 };

struct h2_stream {
    struct fake_exchange ex; /* ex.owner points back to this stream */
    struct h2_state *h2;
    int32_t id;
    size_t body_cap;
    bool too_large;
    char *answer; /* response body being sent (a watch: the events not sent yet) */
    size_t answer_len, answer_off, answer_cap;
    bool streaming;   /* a watch: more body may come */
    bool stream_done; /* the watch ended: END_STREAM once the rest is sent */
    LIST_ENTRY(h2_stream) link;
};

struct h2_state {
    struct api_conn *conn;
    nghttp2_session *session;
    bool in_recv; /* inside nghttp2_session_mem_recv(): no sending now */
    bool closing; /* free the connection once the output is flushed */
    LIST_HEAD(, h2_stream) streams;
};

static struct h2_state *state_of(struct api_conn *conn)
{
    return conn->proto_state;
}

/* ---- streams ---- */

static void stream_free(struct h2_stream *s)
{
    fake_review_cancel(&s->ex);
    LIST_REMOVE(s, link);
    free(s->ex.req.method);
    free(s->ex.req.path);
    free(s->ex.req.authorization);
    free(s->ex.req.accept);
    free(s->ex.req.body);
    free(s->answer);
    free(s);
}

static char *copy_value(const uint8_t *value, size_t len)
{
    char *s = malloc(len + 1);

    if (s) {
        memcpy(s, value, len);
        s[len] = '\0';
    }
    return s;
}

/* Append a DATA chunk to the request body; bodies beyond MAX_BODY are refused at the end. */
static void body_append(struct h2_stream *s, const uint8_t *data, size_t len)
{
    struct fake_request *req = &s->ex.req;
    char *grown;

    if (s->too_large || req->body_len + len > MAX_BODY) {
        s->too_large = true;
        return;
    }
    if (req->body_len + len + 1 > s->body_cap) {
        size_t cap = (req->body_len + len + 1) * 2;
        grown = realloc(req->body, cap);
        if (!grown) {
            s->too_large = true;
            return;
        }
        req->body = grown;
        s->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    req->body[req->body_len] = '\0';
}

/* ---- sending ---- */

/* Stop reading and close once what is queued has been written (see h2_write_cb). */
static void close_after_output(struct h2_state *h2)
{
    h2->closing = true;
    bufferevent_disable(h2->conn->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(h2->conn->bev)) == 0) api_conn_close_later(h2->conn);
}

/* Move everything nghttp2 has to send into the bufferevent; close when both sides are
 * done (GOAWAY exchanged) or nghttp2 failed. */
static void flush(struct h2_state *h2)
{
    struct evbuffer *out = bufferevent_get_output(h2->conn->bev);
    const uint8_t *data;
    ssize_t n;

    if (h2->in_recv || h2->closing) return;
    while ((n = nghttp2_session_mem_send(h2->session, &data)) > 0) evbuffer_add(out, data, (size_t)n);
    if (n < 0 || (!nghttp2_session_want_read(h2->session) && !nghttp2_session_want_write(h2->session)))
        close_after_output(h2);
}

static ssize_t answer_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                              uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    struct h2_stream *s = source->ptr;
    size_t n = s->answer_len - s->answer_off;

    (void)session;
    (void)stream_id;
    (void)user_data;
    if (n == 0 && s->streaming && !s->stream_done)
        return NGHTTP2_ERR_DEFERRED; /* resumed by h2_stream_write or h2_stream_end */
    if (n > length) n = length;
    if (n > 0) memcpy(buf, s->answer + s->answer_off, n);
    s->answer_off += n;
    if (s->answer_off == s->answer_len) {
        if (!s->streaming || s->stream_done) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        s->answer_off = s->answer_len = 0; /* a watch reuses the buffer */
    }
    return (ssize_t)n;
}

static nghttp2_nv make_nv(const char *name, const char *value)
{
    nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value), NGHTTP2_NV_FLAG_NONE};
    return nv;
}

/* Queue resp on stream s (nghttp2 copies the header fields; the body is kept in s). */
static int submit_answer(struct h2_stream *s, const struct fake_response *resp)
{
    nghttp2_nv nva[FAKE_MAX_HEADERS + 3];
    char status[8], length[24], date[64];
    size_t n = 0;
    nghttp2_data_provider provider = {.source.ptr = s, .read_callback = answer_read_cb};

    snprintf(status, sizeof status, "%d", resp->status);
    snprintf(length, sizeof length, "%zu", resp->body_len);
    fake_http_date(date, sizeof date);
    nva[n++] = make_nv(":status", status);
    for (size_t i = 0; i < resp->n_headers; i++) nva[n++] = make_nv(resp->headers[i].name, resp->headers[i].value);
    nva[n++] = make_nv("content-length", length);
    nva[n++] = make_nv("date", date);

    free(s->answer);
    s->answer = NULL;
    s->answer_len = s->answer_off = s->answer_cap = 0;
    if (resp->body_len > 0) {
        s->answer = malloc(resp->body_len);
        if (!s->answer) return -1;
        memcpy(s->answer, resp->body, resp->body_len);
        s->answer_len = s->answer_cap = resp->body_len;
    }
    return nghttp2_submit_response(s->h2->session, s->id, nva, n, s->answer_len ? &provider : NULL);
}

/* ---- the review core's callbacks ---- */

static void h2_respond(struct fake_exchange *ex, const struct fake_response *resp)
{
    struct h2_stream *s = ex->owner;

    if (submit_answer(s, resp) != 0)
        nghttp2_submit_rst_stream(s->h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    flush(s->h2);
}

static void h2_close(struct fake_exchange *ex)
{
    struct h2_stream *s = ex->owner;

    s->h2->closing = true;
    api_conn_close_later(s->h2->conn);
}

static void h2_stream_start(struct fake_exchange *ex, const struct fake_response *head)
{
    struct h2_stream *s = ex->owner;
    nghttp2_nv nva[FAKE_MAX_HEADERS + 2];
    char status[8], date[64];
    size_t n = 0;
    nghttp2_data_provider provider = {.source.ptr = s, .read_callback = answer_read_cb};

    snprintf(status, sizeof status, "%d", head->status);
    fake_http_date(date, sizeof date);
    nva[n++] = make_nv(":status", status);
    for (size_t i = 0; i < head->n_headers; i++) nva[n++] = make_nv(head->headers[i].name, head->headers[i].value);
    nva[n++] = make_nv("date", date);
    s->streaming = true;
    if (nghttp2_submit_response(s->h2->session, s->id, nva, n, &provider) != 0)
        nghttp2_submit_rst_stream(s->h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    flush(s->h2);
}

static void h2_stream_write(struct fake_exchange *ex, const char *data, size_t len)
{
    struct h2_stream *s = ex->owner;

    if (s->answer_off > 0) { /* move what is left to the front */
        memmove(s->answer, s->answer + s->answer_off, s->answer_len - s->answer_off);
        s->answer_len -= s->answer_off;
        s->answer_off = 0;
    }
    if (s->answer_len + len > s->answer_cap) {
        size_t cap = (s->answer_len + len) * 2;
        char *grown = realloc(s->answer, cap);
        if (!grown) {
            nghttp2_submit_rst_stream(s->h2->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
            flush(s->h2);
            return;
        }
        s->answer = grown;
        s->answer_cap = cap;
    }
    memcpy(s->answer + s->answer_len, data, len);
    s->answer_len += len;
    nghttp2_session_resume_data(s->h2->session, s->id); /* fails harmlessly if not deferred */
    flush(s->h2);
}

static void h2_stream_end(struct fake_exchange *ex)
{
    struct h2_stream *s = ex->owner;

    s->stream_done = true;
    nghttp2_session_resume_data(s->h2->session, s->id);
    flush(s->h2);
}

static const struct fake_exchange_ops h2_ops = {h2_respond, h2_close, h2_stream_start, h2_stream_write, h2_stream_end};

/* A request stream is complete: hand it to the review core. */
static void dispatch(struct h2_stream *s)
{
    if (s->too_large || !s->ex.req.method || !s->ex.req.path) {
        struct fake_response resp = {.status = s->too_large ? 413 : 400};
        h2_respond(&s->ex, &resp);
        return;
    }
    fake_review_handle(s->h2->conn->srv, &s->ex);
}

/* ---- nghttp2 callbacks ---- */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2_state *h2 = user_data;
    struct h2_stream *s;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    s = calloc(1, sizeof *s);
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets just this stream */
    s->h2 = h2;
    s->id = frame->hd.stream_id;
    s->ex.ops = &h2_ops;
    s->ex.owner = s;
    LIST_INSERT_HEAD(&h2->streams, s, link);
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    char **slot = NULL;

    (void)flags;
    (void)user_data;
    if (!s || frame->hd.type != NGHTTP2_HEADERS) return 0;
    /* nghttp2 has already checked the pseudo-headers and lower-cased names. */
    if (namelen == 7 && memcmp(name, ":method", 7) == 0)
        slot = &s->ex.req.method;
    else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
        slot = &s->ex.req.path;
    else if (namelen == 13 && memcmp(name, "authorization", 13) == 0)
        slot = &s->ex.req.authorization;
    else if (namelen == 6 && memcmp(name, "accept", 6) == 0)
        slot = &s->ex.req.accept;
    if (slot) {
        free(*slot);
        *slot = copy_value(value, valuelen);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                         void *user_data)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);

    (void)flags;
    (void)user_data;
    if (s) body_append(s, data, len);
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2_stream *s;

    (void)user_data;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s) dispatch(s);
    return 0;
}

/* Answered, or reset by the client: either way the stream's review is over. */
static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);

    (void)error_code;
    (void)user_data;
    if (s) {
        nghttp2_session_set_stream_user_data(session, stream_id, NULL);
        stream_free(s);
    }
    return 0;
}

static nghttp2_session_callbacks *make_callbacks(void)
{
    nghttp2_session_callbacks *cbs;

    if (nghttp2_session_callbacks_new(&cbs) != 0) return NULL;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    return cbs;
}

/* ---- bufferevent callbacks ---- */

static void h2_read_cb(struct bufferevent *bev, void *arg)
{
    struct api_conn *conn = arg;
    struct h2_state *h2 = state_of(conn);
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    ssize_t n;

    if (h2->closing || len == 0) return;
    h2->in_recv = true;
    n = nghttp2_session_mem_recv(h2->session, evbuffer_pullup(in, -1), len);
    h2->in_recv = false;
    if (n < 0) {
        /* Not HTTP/2 (bad preface) or a protocol error: nghttp2 queued a GOAWAY if it
         * could; send it and close. */
        evbuffer_drain(in, len);
        nghttp2_session_terminate_session(h2->session, NGHTTP2_PROTOCOL_ERROR);
        flush(h2);
        if (!h2->closing) close_after_output(h2);
        return;
    }
    evbuffer_drain(in, (size_t)n);
    flush(h2);
}

static void h2_write_cb(struct bufferevent *bev, void *arg)
{
    struct api_conn *conn = arg;

    (void)bev;
    if (state_of(conn)->closing) api_conn_close_later(conn); /* everything we had to say is out */
}

static void h2_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        api_conn_free(arg); /* the client left: stop cancels its reviews */
}

/* ---- struct api_proto ---- */

static int h2_start(struct api_conn *conn)
{
    nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS}};
    nghttp2_session_callbacks *cbs = make_callbacks();
    struct h2_state *h2 = calloc(1, sizeof *h2);
    int rc = -1;

    if (!cbs || !h2) goto cleanup;
    h2->conn = conn;
    LIST_INIT(&h2->streams);
    if (nghttp2_session_server_new(&h2->session, cbs, h2) != 0) goto cleanup;
    if (nghttp2_submit_settings(h2->session, NGHTTP2_FLAG_NONE, settings, 1) != 0) {
        nghttp2_session_del(h2->session);
        goto cleanup;
    }
    conn->proto_state = h2;
    h2 = NULL;
    conn->srv->stats.h2_connections++;
    bufferevent_setcb(conn->bev, h2_read_cb, h2_write_cb, h2_event_cb, conn);
    bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
    flush(state_of(conn)); /* our SETTINGS */
    if (evbuffer_get_length(bufferevent_get_input(conn->bev)) > 0)
        bufferevent_trigger(conn->bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
    rc = 0;
cleanup:
    nghttp2_session_callbacks_del(cbs);
    free(h2);
    return rc;
}

static void h2_stop(struct api_conn *conn)
{
    struct h2_state *h2 = state_of(conn);

    /* Free the streams ourselves (cancelling their reviews) and unhook them first, so
     * nothing nghttp2 does while being deleted can reach a freed stream. */
    while (!LIST_EMPTY(&h2->streams)) {
        struct h2_stream *s = LIST_FIRST(&h2->streams);
        nghttp2_session_set_stream_user_data(h2->session, s->id, NULL);
        stream_free(s);
    }
    nghttp2_session_del(h2->session);
    free(h2);
    conn->proto_state = NULL;
}

const struct api_proto fake_http2_proto = {"h2", h2_start, h2_stop};
