/*
 * test-upstream - the application behind a proxy in the proxy-integration specs: it
 * answers every request with 200 and records what it received, so a spec can prove
 * which identity headers reached it (and that a denied request never did).
 *
 *   test-upstream --listen 127.0.0.1:0 --record requests.jsonl
 *
 * Once bound it prints {"msg":"listening","listener":"upstream","addr":"127.0.0.1:PORT"}
 * on stderr (the shape support/proc.lua's wait_listening looks for). Each request becomes
 * one JSON line in the record file, written and flushed before the answer is sent:
 *   {"method":"GET","uri":"/hooks/x?a=1","headers":[["Host","..."],...],"body_bytes":0,
 *    "body_sha256":"e3b0...","connection":1}
 * Headers are kept as a list in arrival order, duplicates included: a header sent twice
 * (say a client's X-Remote-User beside the proxy's) must show up twice, not be folded.
 * "connection" numbers the TCP connection the request came on (1, 2, ... in accept order).
 *
 * Paths under /_test/ answer differently (and are recorded all the same):
 *   /_test/bytes/N        N bytes of the pattern byte[i] = i % 251, with Content-Length;
 *                         ?chunked=1 sends them chunked instead; either way streamed:
 *                         headers at once, then 256 KiB at a time as the client reads
 *   /_test/sleep/MS       answers 200 after MS milliseconds
 *   /_test/stall/N/MS     promises 2N bytes, sends N, the other N after MS milliseconds
 *   /_test/status/CODE    answers CODE with a short body and an X-Test-Status header
 *   /_test/hop            answers 200 with hop-by-hop headers (Connection: X-Hop-Named,
 *                         X-Hop-Named, Keep-Alive, Proxy-Authenticate, Upgrade, Trailer)
 *                         beside end-to-end ones (X-Kept, two Set-Cookie)
 *   /_test/reset          closes the connection without answering
 * Runs until SIGTERM or SIGINT.
 */
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/evp.h>

#define PATTERN_MOD 251
#define CHUNK_BYTES (64 * 1024)

static FILE *record;
static struct event_base *base;

/* Connections in accept order: evhttp_set_bevcb sees each new one. A freed bufferevent's
 * address can come back for a later connection, so lookups go newest first. */
static struct {
    struct bufferevent **bevs;
    size_t n, cap;
} connections;

static struct bufferevent *new_connection(struct event_base *b, void *arg)
{
    (void)arg;
    struct bufferevent *bev = bufferevent_socket_new(b, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) return NULL;
    if (connections.n == connections.cap) {
        size_t cap = connections.cap ? connections.cap * 2 : 64;
        struct bufferevent **grown = realloc(connections.bevs, cap * sizeof(*grown));
        if (!grown) return bev; /* counted as connection 0 */
        connections.bevs = grown;
        connections.cap = cap;
    }
    connections.bevs[connections.n++] = bev;
    return bev;
}

static size_t connection_number(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    for (size_t i = connections.n; bev && i > 0; i--)
        if (connections.bevs[i - 1] == bev) return i;
    return 0;
}

static void body_sha256(struct evbuffer *body, char hex[65])
{
    unsigned char digest[32];
    unsigned int len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    int n = evbuffer_peek(body, -1, NULL, NULL, 0);
    struct evbuffer_iovec *v = n > 0 ? calloc((size_t)n, sizeof(*v)) : NULL;
    if (v) {
        evbuffer_peek(body, -1, NULL, v, n);
        for (int i = 0; i < n; i++) EVP_DigestUpdate(ctx, v[i].iov_base, v[i].iov_len);
        free(v);
    }
    EVP_DigestFinal_ex(ctx, digest, &len);
    EVP_MD_CTX_free(ctx);
    for (unsigned int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
}

static void add_pattern(struct evbuffer *out, size_t from, size_t n)
{
    unsigned char block[CHUNK_BYTES];
    while (n) {
        size_t len = n < sizeof(block) ? n : sizeof(block);
        for (size_t i = 0; i < len; i++) block[i] = (unsigned char)((from + i) % PATTERN_MOD);
        evbuffer_add(out, block, len);
        from += len;
        n -= len;
    }
}

/* A reply that finishes later, from a timer; all of them listed, to be freed at exit. */
typedef struct later {
    struct later *prev, *next;
    struct evhttp_request *req;
    struct event *timer;
    size_t from, n; /* stall: the pattern bytes still to send */
    bool stall;
} later;

static later *laters;

static void later_free(later *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        laters = l->next;
    if (l->next) l->next->prev = l->prev;
    event_free(l->timer);
    free(l);
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    later *l = arg;
    struct evbuffer *body = evbuffer_new();
    if (l->stall) {
        add_pattern(body, l->from, l->n);
        evhttp_send_reply_chunk(l->req, body);
        evhttp_send_reply_end(l->req);
    } else {
        evbuffer_add_printf(body, "slept\n");
        evhttp_send_reply(l->req, 200, "OK", body);
    }
    evbuffer_free(body);
    later_free(l);
}

static void reply_later(struct evhttp_request *req, long ms, bool stall, size_t from, size_t n)
{
    later *l = calloc(1, sizeof(*l));
    l->req = req;
    l->stall = stall;
    l->from = from;
    l->n = n;
    l->timer = evtimer_new(base, on_later, l);
    l->next = laters;
    if (laters) laters->prev = l;
    laters = l;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(l->timer, &tv);
}

/* A large answer streamed: the headers go out first, then the pattern a few chunks at a
 * time, each batch added once the previous one is written (so the first byte leaves at
 * once and memory stays small, whatever N is). Listed, to be freed at exit: a client that
 * leaves mid-answer takes the request with it and the stream simply stops. */
#define STREAM_BATCH_BYTES (4 * CHUNK_BYTES)

typedef struct stream {
    struct stream *prev, *next;
    struct evhttp_request *req;
    size_t from, total;
} stream;

static stream *streams;

static void stream_free(stream *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        streams = st->next;
    if (st->next) st->next->prev = st->prev;
    free(st);
}

static void stream_next(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    stream *st = arg;
    if (st->from == st->total) {
        evhttp_send_reply_end(st->req);
        stream_free(st);
        return;
    }
    size_t n = st->total - st->from < STREAM_BATCH_BYTES ? st->total - st->from : STREAM_BATCH_BYTES;
    struct evbuffer *body = evbuffer_new();
    add_pattern(body, st->from, n);
    st->from += n;
    evhttp_send_reply_chunk_with_cb(st->req, body, stream_next, st);
    evbuffer_free(body);
}

/* Sends the headers now (with Content-Length unless chunked) and total pattern bytes after. */
static void reply_stream(struct evhttp_request *req, size_t total, bool chunked)
{
    if (!chunked) {
        char length[32];
        snprintf(length, sizeof(length), "%zu", total);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", length);
    }
    evhttp_send_reply_start(req, 200, "OK");
    stream *st = calloc(1, sizeof(*st));
    if (!st) {
        evhttp_send_reply_end(req);
        return;
    }
    st->req = req;
    st->total = total;
    st->next = streams;
    if (streams) streams->prev = st;
    streams = st;
    stream_next(NULL, st);
}

static void free_connection_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evhttp_connection_free(arg);
}

/* The /_test/ paths; returns 0 when path was one of them (and is answered). */
static int test_path(struct evhttp_request *req, const char *path, const char *query)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evbuffer *body = evbuffer_new();
    unsigned long a = 0, b = 0;
    int rc = 0;
    if (sscanf(path, "/_test/bytes/%lu", &a) == 1) {
        evhttp_add_header(out, "Content-Type", "application/octet-stream");
        bool chunked = query && strstr(query, "chunked=1");
        if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD && !chunked) {
            /* Explicit, so that a HEAD gets it too (evhttp adds one only when there is a body). */
            char length[32];
            snprintf(length, sizeof(length), "%lu", a);
            evhttp_add_header(out, "Content-Length", length);
            evhttp_send_reply(req, 200, "OK", body);
        } else {
            reply_stream(req, a, chunked);
        }
    } else if (sscanf(path, "/_test/sleep/%lu", &a) == 1) {
        reply_later(req, (long)a, false, 0, 0);
    } else if (sscanf(path, "/_test/stall/%lu/%lu", &a, &b) == 2) {
        char length[32];
        snprintf(length, sizeof(length), "%lu", 2 * a);
        evhttp_add_header(out, "Content-Length", length);
        evhttp_send_reply_start(req, 200, "OK");
        add_pattern(body, 0, a);
        evhttp_send_reply_chunk(req, body);
        reply_later(req, (long)b, true, a, a);
    } else if (sscanf(path, "/_test/status/%lu", &a) == 1 && a >= 200 && a <= 599) {
        evhttp_add_header(out, "Content-Type", "text/plain");
        evhttp_add_header(out, "X-Test-Status", "1");
        if (a != 204 && a != 304) evbuffer_add_printf(body, "status %lu\n", a);
        evhttp_send_reply(req, (int)a, "Test Status", body);
    } else if (strcmp(path, "/_test/hop") == 0) {
        evhttp_add_header(out, "Content-Type", "text/plain");
        evhttp_add_header(out, "Connection", "X-Hop-Named");
        evhttp_add_header(out, "X-Hop-Named", "must not pass");
        evhttp_add_header(out, "Keep-Alive", "timeout=5");
        evhttp_add_header(out, "Proxy-Authenticate", "Basic realm=\"upstream\"");
        evhttp_add_header(out, "Upgrade", "h2c");
        evhttp_add_header(out, "Trailer", "X-Checksum");
        evhttp_add_header(out, "X-Kept", "yes");
        evhttp_add_header(out, "Set-Cookie", "a=1");
        evhttp_add_header(out, "Set-Cookie", "b=2");
        evbuffer_add_printf(body, "hop\n");
        evhttp_send_reply(req, 200, "OK", body);
    } else if (strcmp(path, "/_test/reset") == 0) {
        /* Not from inside evhttp's own callback: after it has returned. */
        struct timeval now = {0, 0};
        event_base_once(base, -1, EV_TIMEOUT, free_connection_later, evhttp_request_get_connection(req), &now);
    } else {
        rc = -1;
    }
    evbuffer_free(body);
    return rc;
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "?";
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *method = method_name(evhttp_request_get_command(req));
    const char *uri = evhttp_request_get_uri(req);
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    char sha[65];
    body_sha256(evhttp_request_get_input_buffer(req), sha);
    json_t *headers = json_array();
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
        json_array_append_new(headers, json_pack("[ss]", kv->key, kv->value));
    json_t *line = json_pack("{ss ss so sI ss sI}", "method", method, "uri", uri ? uri : "", "headers", headers,
                             "body_bytes", (json_int_t)evbuffer_get_length(evhttp_request_get_input_buffer(req)),
                             "body_sha256", sha, "connection", (json_int_t)connection_number(req));
    char *text = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (text) {
        fprintf(record, "%s\n", text);
        fflush(record); /* the spec reads the file as soon as the client has its answer */
    }
    free(text);
    json_decref(line);

    if (path && strncmp(path, "/_test/", 7) == 0 &&
        test_path(req, path, evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req))) == 0)
        return;
    struct evbuffer *body = evbuffer_new();
    evbuffer_add_printf(body, "upstream saw %s %s\n", method, uri ? uri : "");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Test-Upstream", "1");
    evhttp_send_reply(req, 200, "OK", body);
    evbuffer_free(body);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static int split_hostport(const char *spec, char *host, size_t host_len, unsigned short *port)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= host_len) return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535) return -1;
    *port = (unsigned short)p;
    return 0;
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:0", *record_path = NULL;
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"record", required_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'l')
            listen = optarg;
        else if (c == 'r')
            record_path = optarg;
        else {
            fprintf(stderr, "usage: test-upstream --listen HOST:PORT --record FILE\n");
            return 2;
        }
    }
    char host[128];
    unsigned short port;
    if (!record_path || split_hostport(listen, host, sizeof host, &port) != 0) {
        fprintf(stderr, "usage: test-upstream --listen HOST:PORT --record FILE\n");
        return 2;
    }
    record = fopen(record_path, "a");
    if (!record) {
        perror(record_path);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    evhttp_set_bevcb(http, new_connection, NULL);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                         EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(http, on_request, NULL);
    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(http, host, port);
    if (!sock) {
        fprintf(stderr, "{\"msg\":\"cannot listen\",\"addr\":\"%s\"}\n", listen);
        return 1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char h[NI_MAXHOST], p[NI_MAXSERV];
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &len) != 0 ||
        getnameinfo((struct sockaddr *)&ss, len, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        perror("getsockname");
        return 1;
    }
    fprintf(stderr, "{\"msg\":\"listening\",\"listener\":\"upstream\",\"addr\":\"%s:%s\"}\n", h, p);
    fflush(stderr);

    struct event *term = evsignal_new(base, SIGTERM, on_signal, base);
    struct event *intr = evsignal_new(base, SIGINT, on_signal, base);
    event_add(term, NULL);
    event_add(intr, NULL);
    event_base_dispatch(base);

    event_free(term);
    event_free(intr);
    while (laters) later_free(laters); /* their requests go with evhttp */
    while (streams) stream_free(streams);
    evhttp_free(http);
    event_base_free(base);
    fclose(record);
    free(connections.bevs);
    return 0;
}
