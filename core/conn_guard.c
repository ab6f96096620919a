/* conn_guard.c: request deadlines and body-memory bounds per client connection (see
 * conn_guard.h). A guard is found from its evhttp_connection through a small chained hash
 * table owned by the worker's set. */
#include "conn_guard.h"
#include "util.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* By a counter's one writer (this set's thread): no read-modify-write instruction needed. */
#define STAT_ADD(field, n)                                                                                             \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n), memory_order_relaxed)
#define STAT_SUB(field, n)                                                                                             \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) - (n), memory_order_relaxed)

#define AUTHORIZATION_PREFIX "authorization:"
#define AUTHORIZATION_PREFIX_LEN (sizeof(AUTHORIZATION_PREFIX) - 1)
#define CONTENT_LENGTH_PREFIX "content-length:"
#define TRANSFER_ENCODING_PREFIX "transfer-encoding:"
#define HOST_PREFIX "host:"

/* Proxy mode keeps the first bytes of each line: enough of a header line for its name and
 * a Content-Length or Transfer-Encoding value, enough of the request line for the decision
 * log of a request refused on its headers (a longer line is logged without its path). */
#define HEADER_HEAD_KEEP 48
#define REQUEST_LINE_KEEP 256

/* The lingering close after an answer given on the headers (nginx's lingering_timeout and
 * lingering_time): what the client still sends is read and dropped until it closes, this
 * long without a byte, or this long in all. */
#define LINGER_IDLE_MS 5000
#define LINGER_TOTAL_MS 30000

typedef enum {
    PHASE_HEADERS, /* a request (or the connection) started; its headers are not complete */
    PHASE_BODY,    /* headers complete; evhttp reads the body */
    PHASE_BETWEEN, /* the request was handed over; nothing of the next one arrived yet */
    PHASE_LINGER,  /* answered on its headers: the guard owns the connection until it closes */
} guard_phase;

typedef struct conn_guard {
    conn_guard_set *set;
    struct conn_guard *next_in_bucket;
    struct evhttp_connection *evcon;
    struct evbuffer *input;
    struct evbuffer_cb_entry *input_cb;
    struct event *deadline;
    /* The phase's deadline (monotonic ms), and when the timer, if pending, fires. The
     * timer is re-armed lazily: a request moving to its next phase only moves deadline_ms;
     * a timer already due no later is left alone and re-armed for the rest when it fires,
     * so a kept-alive request costs no event_add (nginx's timers are lazy the same way). */
    int64_t deadline_ms;
    int64_t timer_fires_ms;
    bool timer_pending;
    guard_phase phase;
    /* Header scanner: where the headers end, whether an Authorization field is among them
     * (its value is never looked at or kept), and, in proxy mode, whether a body is
     * announced unambiguously (one framing field, a value read whole). */
    bool request_line_seen;
    bool has_authorization;
    bool nul_in_head; /* a NUL byte in the request line or headers (libevent cuts the value there) */
    bool body_announced;
    bool framing_unclear; /* a framing field with a value not read whole or not understood */
    unsigned framing_fields;
    unsigned host_fields;
    bool limit_lowered; /* headers_complete lowered evhttp's body limit for this request */
    size_t line_len;    /* the current line's bytes, CRs at its start excluded */
    size_t head_kept;   /* how many of them are kept (CRs skipped): in line_head, or in
                         * request_line for the request line */
    char line_head[HEADER_HEAD_KEEP];
    char request_line[REQUEST_LINE_KEEP]; /* proxy mode: the request line, if it fitted */
    size_t request_line_len;
    /* While lingering: evhttp's bufferevent callbacks, given back when the connection ends,
     * and when the lingering must end at the latest. */
    bufferevent_data_cb evhttp_readcb, evhttp_writecb;
    bufferevent_event_cb evhttp_eventcb;
    void *evhttp_cbarg;
    int64_t linger_end_ms;
    /* Body bytes of this request counted in set->buffered_body, and the most it may count. */
    size_t body_counted;
    size_t body_count_cap;
} conn_guard;

struct conn_guard_set {
    struct event_base *base;
    conn_guard_options options;
    /* Written by this set's thread, read by the scrape (conn_guard_get_stats): relaxed
     * atomics, each updated by its one writer with a load and a store. */
    struct {
        _Atomic uint64_t header_timeouts, body_timeouts, body_budget_closes, unauthenticated_bodies, refused_on_headers;
        _Atomic size_t buffered_body, guarded;
    } stats;
    conn_guard **buckets;
    size_t n_buckets;            /* a power of two */
    bool refuse_unauthenticated; /* conn_guard_set_refuse_unauthenticated */
};

static size_t bucket_of(const conn_guard_set *set, const struct evhttp_connection *evcon)
{
    uint64_t h = (uint64_t)(uintptr_t)evcon;
    h ^= h >> 29;
    h *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(h >> 32) & (set->n_buckets - 1);
}

static conn_guard **find_slot(conn_guard_set *set, const struct evhttp_connection *evcon)
{
    conn_guard **slot = &set->buckets[bucket_of(set, evcon)];
    while (*slot && (*slot)->evcon != evcon) slot = &(*slot)->next_in_bucket;
    return slot;
}

conn_guard_set *conn_guard_set_new(struct event_base *base, const conn_guard_options *options)
{
    conn_guard_set *set = calloc(1, sizeof(*set));
    if (!set) return NULL;
    set->base = base;
    set->options = *options;
    set->n_buckets = 1024;
    while (set->n_buckets < options->expected_connections && set->n_buckets < ((size_t)1 << 20)) set->n_buckets <<= 1;
    set->buckets = calloc(set->n_buckets, sizeof(*set->buckets));
    if (!set->buckets) {
        free(set);
        return NULL;
    }
    return set;
}

static void release_body(conn_guard *g)
{
    STAT_SUB(g->set->stats.buffered_body, g->body_counted);
    g->body_counted = 0;
}

static void guard_free(conn_guard *g, bool connection_alive)
{
    release_body(g);
    if (connection_alive && g->input_cb) evbuffer_remove_cb_entry(g->input, g->input_cb);
    if (g->deadline) event_free(g->deadline);
    STAT_SUB(g->set->stats.guarded, 1);
    free(g);
}

void conn_guard_set_free(conn_guard_set *set)
{
    if (!set) return;
    for (size_t i = 0; i < set->n_buckets; i++) {
        while (set->buckets[i]) {
            conn_guard *g = set->buckets[i];
            set->buckets[i] = g->next_in_bucket;
            guard_free(g, false);
        }
    }
    free(set->buckets);
    free(set);
}

static void set_timer(conn_guard *g, int64_t now_ms, int64_t fires_ms)
{
    int64_t ms = fires_ms > now_ms ? fires_ms - now_ms : 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(g->deadline, &tv);
    g->timer_fires_ms = fires_ms;
    g->timer_pending = true;
}

/* The current phase must end within ms from now. */
static void arm(conn_guard *g, int64_t ms)
{
    int64_t now = monotonic_ms();
    g->deadline_ms = now + ms;
    if (g->timer_pending && g->timer_fires_ms <= g->deadline_ms) return; /* fires first, then re-arms */
    set_timer(g, now, g->deadline_ms);
}

static void disarm(conn_guard *g)
{
    evtimer_del(g->deadline);
    g->timer_pending = false;
}

/* Ends the connection as if the client had gone: evhttp reads the end of the stream and
 * frees the connection (its close callback detaches this guard). */
static void close_connection(conn_guard *g)
{
    disarm(g);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(g->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
}

static void end_linger(conn_guard *g);

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_guard *g = arg;
    g->timer_pending = false;
    if (g->phase == PHASE_BETWEEN) return; /* no phase running: nothing to watch */
    int64_t now = monotonic_ms();
    if (now < g->deadline_ms) {
        set_timer(g, now, g->deadline_ms); /* armed for an earlier phase: the rest of this one */
        return;
    }
    if (g->phase == PHASE_LINGER) {
        end_linger(g); /* frees g */
        return;
    }
    if (g->phase == PHASE_HEADERS)
        STAT_ADD(g->set->stats.header_timeouts, 1);
    else
        STAT_ADD(g->set->stats.body_timeouts, 1);
    close_connection(g);
}

static void start_request(conn_guard *g)
{
    release_body(g); /* the previous request's body is no longer being read */
    g->phase = PHASE_HEADERS;
    g->request_line_seen = false;
    g->has_authorization = false;
    g->nul_in_head = false;
    g->body_announced = false;
    g->framing_unclear = false;
    g->framing_fields = 0;
    g->host_fields = 0;
    g->limit_lowered = false;
    g->line_len = 0;
    g->head_kept = 0;
    g->request_line_len = 0;
    arm(g, g->set->options.header_timeout_ms);
}

/* The request's answer can only be 401 and the guard may give it on the headers: see
 * conn_guard.h. Its framing must be unambiguous and it must have one Host field, so the
 * framing and Host errors RFC 9112 answers with 400 keep their 400 (from evhttp's path);
 * other syntax errors of such a request get this 401, on a closed connection too. */
static bool refusable_on_headers(const conn_guard *g)
{
    return g->set->refuse_unauthenticated && g->set->options.refuse && !g->has_authorization && g->body_announced &&
           g->framing_fields == 1 && !g->framing_unclear && g->host_fields == 1;
}

/* The blank line ending the headers was seen: the body phase starts, with its own deadline
 * and, without Authorization in proxy mode, the lower body limit. */
static void headers_complete(conn_guard *g)
{
    const conn_guard_options *o = &g->set->options;
    g->phase = PHASE_BODY;
    g->body_count_cap = SIZE_MAX;
    arm(g, o->body_timeout_ms);
    if (!o->bound_unauthenticated_body) return;
    size_t limit = o->max_body;
    if (!g->has_authorization && o->max_unauthenticated_body < limit) {
        limit = o->max_unauthenticated_body;
        g->body_count_cap = limit; /* a larger body is read and dropped, not buffered */
        /* Counted by scan_input unless the request is answered on its headers. */
        g->limit_lowered = true;
    }
    /* evhttp checks this when it parses the headers, after this callback. */
    evhttp_connection_set_max_body_size(g->evcon, (ev_ssize_t)limit);
}

/* Skips optional whitespace (RFC 9110, 5.6.3) from p up to end. */
static const char *skip_ows(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    return p;
}

/* A Content-Length or Transfer-Encoding field of a proxy-mode request (its lowercased head
 * in line_head, whole when it fitted). A value is understood only when read whole: one
 * decimal number, or exactly "chunked"; anything else leaves the request to evhttp and
 * the strict framing checks (400). */
static void framing_field(conn_guard *g, size_t name_len, bool is_length)
{
    g->framing_fields++;
    const char *p = g->line_head + name_len, *end = g->line_head + g->head_kept;
    if (g->line_len > g->head_kept) { /* longer than what was kept */
        g->framing_unclear = true;
        return;
    }
    p = skip_ows(p, end);
    while (end > p && (end[-1] == ' ' || end[-1] == '\t')) end--;
    if (is_length) {
        bool nonzero = false;
        if (p == end || end - p > 19) { /* empty, or past what an int64 holds for sure */
            g->framing_unclear = true;
            return;
        }
        for (; p < end; p++) {
            if (*p < '0' || *p > '9') {
                g->framing_unclear = true;
                return;
            }
            if (*p != '0') nonzero = true;
        }
        if (nonzero) g->body_announced = true;
    } else if ((size_t)(end - p) == 7 && memcmp(p, "chunked", 7) == 0) {
        g->body_announced = true;
    } else {
        g->framing_unclear = true;
    }
}

/* One header line ended (its bytes, CR excluded, were counted in line_len). */
static void line_complete(conn_guard *g)
{
    const bool heads = g->set->options.bound_unauthenticated_body;
    if (g->line_len == 0) {
        /* Empty lines before the request line are tolerated (RFC 9112, 2.2). */
        if (g->request_line_seen) headers_complete(g);
    } else if (!g->request_line_seen) {
        g->request_line_seen = true;
        if (heads && g->line_len <= REQUEST_LINE_KEEP) g->request_line_len = g->head_kept;
    } else if (heads) {
        /* Header names are matched lowercased (line_head holds them so). */
        if (g->head_kept >= AUTHORIZATION_PREFIX_LEN &&
            memcmp(g->line_head, AUTHORIZATION_PREFIX, AUTHORIZATION_PREFIX_LEN) == 0)
            g->has_authorization = true;
        else if (g->head_kept >= sizeof(CONTENT_LENGTH_PREFIX) - 1 &&
                 memcmp(g->line_head, CONTENT_LENGTH_PREFIX, sizeof(CONTENT_LENGTH_PREFIX) - 1) == 0)
            framing_field(g, sizeof(CONTENT_LENGTH_PREFIX) - 1, true);
        else if (g->head_kept >= sizeof(TRANSFER_ENCODING_PREFIX) - 1 &&
                 memcmp(g->line_head, TRANSFER_ENCODING_PREFIX, sizeof(TRANSFER_ENCODING_PREFIX) - 1) == 0)
            framing_field(g, sizeof(TRANSFER_ENCODING_PREFIX) - 1, false);
        else if (g->head_kept >= sizeof(HOST_PREFIX) - 1 &&
                 memcmp(g->line_head, HOST_PREFIX, sizeof(HOST_PREFIX) - 1) == 0)
            g->host_fields++;
    }
    g->line_len = 0;
    g->head_kept = 0;
}

/* Scans bytes of the header block; returns how many belong to it (the rest is body).
 * Line by line (memchr finds the ends). A line's first bytes are kept only where they
 * matter (proxy mode: the Authorization field, the framing fields, the request line), and
 * only up to the keep; otherwise a line only counts as empty or not. */
static size_t scan_headers(conn_guard *g, const unsigned char *p, size_t n)
{
    const bool heads = g->set->options.bound_unauthenticated_body;
    size_t i = 0, used = n;
    while (i < n) {
        const unsigned char *nl = memchr(p + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - p) : n;
        if (heads) {
            const bool header_line = g->request_line_seen;
            const size_t keep = header_line ? HEADER_HEAD_KEEP : REQUEST_LINE_KEEP;
            char *kept = header_line ? g->line_head : g->request_line;
            for (; i < end && g->line_len < keep; i++) {
                unsigned char c = p[i];
                if (c == '\r') continue;
                if (header_line && c >= 'A' && c <= 'Z') c = (unsigned char)(c + ('a' - 'A'));
                kept[g->line_len++] = (char)c;
                g->head_kept++;
            }
        } else {
            /* Without heads: skip carriage returns at the start, as line_len does not count them. */
            while (i < end && g->line_len == 0 && p[i] == '\r') i++;
        }
        if (i < end) g->line_len += end - i; /* any other byte makes the line non-empty */
        i = end;
        if (!nl) break;
        i++; /* the '\n' */
        line_complete(g);
        if (g->phase == PHASE_BODY) {
            used = i;
            break;
        }
    }
    /* libevent cuts a header value at a NUL byte: one search per chunk of the head. */
    if (memchr(p, '\0', used)) g->nul_in_head = true;
    return used;
}

static void count_body(conn_guard *g, size_t n)
{
    size_t room = g->body_count_cap - g->body_counted;
    if (n > room) n = room;
    g->body_counted += n;
    STAT_ADD(g->set->stats.buffered_body, n);
    size_t max = g->set->options.max_buffered_body;
    if (max && atomic_load_explicit(&g->set->stats.buffered_body, memory_order_relaxed) > max) {
        STAT_ADD(g->set->stats.body_budget_closes, 1);
        release_body(g);
        g->body_count_cap = 0;
        close_connection(g);
    }
}

/* ---- answering on the headers, and the lingering close --------------------------------- */

/* The method and path of the kept request line, when they are printable ASCII. */
static void refusal_of(const conn_guard *g, conn_guard_refusal *r)
{
    memset(r, 0, sizeof(*r));
    const char *line = g->request_line, *end = line + g->request_line_len;
    const char *sp = memchr(line, ' ', (size_t)(end - line));
    if (!sp) return;
    const char *target = sp + 1;
    const char *target_end = memchr(target, ' ', (size_t)(end - target));
    if (!target_end) target_end = end;
    const char *path_end = memchr(target, '?', (size_t)(target_end - target));
    if (!path_end) path_end = target_end;
    for (const char *q = line; q < path_end; q++) {
        if (q == sp) continue;
        if (*q <= ' ' || *q > '~') return;
    }
    r->method = line;
    r->method_len = (size_t)(sp - line);
    r->path = target;
    r->path_len = (size_t)(path_end - target);
}

/* While lingering, evhttp's deferred read may still call the read callback with its own
 * argument: this callback uses none. */
static void linger_read(struct bufferevent *bev, void *unused)
{
    (void)unused;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* The answer is written: no more bytes go out (FIN), the client's still come in. */
static void linger_written(struct bufferevent *bev, void *arg)
{
    (void)arg;
    bufferevent_disable(bev, EV_WRITE);
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd >= 0) shutdown(fd, SHUT_WR);
}

/* The client closed, an error, or evhttp's idle timeout: the lingering is over. */
static void linger_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    end_linger(arg);
}

/* Gives the connection back to evhttp as one its client closed: evhttp frees it (and the
 * request it was reading, never handed to the gateway), and its close callback frees g. */
static void end_linger(conn_guard *g)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(g->evcon);
    bufferevent_event_cb eventcb = g->evhttp_eventcb;
    void *cbarg = g->evhttp_cbarg;
    disarm(g);
    bufferevent_setcb(bev, g->evhttp_readcb, g->evhttp_writecb, eventcb, cbarg);
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
    eventcb(bev, BEV_EVENT_READING | BEV_EVENT_EOF, cbarg);
}

/* Answers the request whose headers just ended with the worker's 401 (see conn_guard.h).
 * Only from bytes the bufferevent just read, while evhttp is reading a request (its read
 * callback set: none while it writes an answer) and nothing of an earlier answer waits to
 * be written — then no request of this connection is with the gateway (evhttp stops
 * reading while one is), and evhttp has not parsed this one's last header line. */
static bool take_over(conn_guard *g)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(g->evcon);
    if (!bev) return false;
    bufferevent_data_cb readcb = NULL;
    bufferevent_getcb(bev, &readcb, NULL, NULL, NULL);
    struct evbuffer *out = bufferevent_get_output(bev);
    if (!readcb || evbuffer_get_length(out) != 0) return false;
    bufferevent_getcb(bev, &g->evhttp_readcb, &g->evhttp_writecb, &g->evhttp_eventcb, &g->evhttp_cbarg);
    if (!g->evhttp_eventcb) return false;
    bufferevent_setcb(bev, linger_read, linger_written, linger_event, g);
    release_body(g);
    g->phase = PHASE_LINGER;
    evbuffer_drain(g->input, evbuffer_get_length(g->input)); /* the rest of the head, the body so far */
    conn_guard_refusal request;
    refusal_of(g, &request);
    g->set->options.refuse(g->set->options.refuse_arg, &request, out);
    STAT_ADD(g->set->stats.refused_on_headers, 1);
    int64_t now = monotonic_ms();
    g->linger_end_ms = now + LINGER_TOTAL_MS;
    g->deadline_ms = now + LINGER_IDLE_MS;
    set_timer(g, now, g->deadline_ms);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return true;
}

/* Scans the n bytes at the end of buf for the request's head (and counts its body).
 * may_take_over: they were just read from the socket (see take_over). */
static void scan_input(conn_guard *g, struct evbuffer *buf, size_t n, bool may_take_over)
{
    if (g->phase == PHASE_LINGER) {
        /* Read and dropped (linger_read); each byte keeps the lingering up to its end. */
        int64_t idle_end = monotonic_ms() + LINGER_IDLE_MS;
        g->deadline_ms = idle_end < g->linger_end_ms ? idle_end : g->linger_end_ms;
        return;
    }
    if (g->phase == PHASE_BETWEEN) start_request(g);
    size_t len = evbuffer_get_length(buf);
    if (n > len) n = len;
    if (g->phase == PHASE_BODY) {
        count_body(g, n);
        return;
    }
    struct evbuffer_ptr pos;
    if (evbuffer_ptr_set(buf, &pos, len - n, EVBUFFER_PTR_SET) != 0) return;
    struct evbuffer_iovec vec[8];
    while (n > 0 && g->phase == PHASE_HEADERS) {
        int nvec = evbuffer_peek(buf, (ev_ssize_t)n, &pos, vec, 8);
        if (nvec <= 0) return;
        size_t seen = 0;
        for (int i = 0; i < nvec && i < 8 && seen < n && g->phase == PHASE_HEADERS; i++) {
            size_t chunk = vec[i].iov_len < n - seen ? vec[i].iov_len : n - seen;
            size_t used = scan_headers(g, vec[i].iov_base, chunk);
            seen += used;
            if (g->phase == PHASE_BODY) {
                if (may_take_over && refusable_on_headers(g) && take_over(g)) return;
                if (g->limit_lowered) STAT_ADD(g->set->stats.unauthenticated_bodies, 1);
                if (n - seen > 0) count_body(g, n - seen);
                return;
            }
        }
        if (seen == 0) return;
        n -= seen;
        if (evbuffer_ptr_set(buf, &pos, seen, EVBUFFER_PTR_ADD) != 0) return;
    }
}

/* Bytes were added to (or drained from) the connection's input buffer. The new bytes are
 * the last n_added ones. */
static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    if (info->n_added == 0) return;
    scan_input(arg, buf, info->n_added, true);
}

void conn_guard_set_refuse_unauthenticated(conn_guard_set *set, bool refuse)
{
    if (set) set->refuse_unauthenticated = refuse;
}

int conn_guard_attach(conn_guard_set *set, struct evhttp_connection *evcon)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    conn_guard *g = calloc(1, sizeof(*g));
    if (!g || !bev) {
        free(g);
        return -1;
    }
    g->set = set;
    g->evcon = evcon;
    g->input = bufferevent_get_input(bev);
    g->deadline = evtimer_new(set->base, on_deadline, g);
    g->input_cb = g->deadline ? evbuffer_add_cb(g->input, on_input, g) : NULL;
    if (!g->input_cb) {
        if (g->deadline) event_free(g->deadline);
        free(g);
        return -1;
    }
    STAT_ADD(set->stats.guarded, 1);
    conn_guard **slot = &set->buckets[bucket_of(set, evcon)];
    g->next_in_bucket = *slot;
    *slot = g;
    start_request(g);
    /* Bytes that arrived before the guard (same loop turn as the accept) are scanned now. */
    size_t already = evbuffer_get_length(g->input);
    if (already) scan_input(g, g->input, already, false);
    return 0;
}

bool conn_guard_request_has_nul(conn_guard_set *set, struct evhttp_connection *evcon)
{
    if (!set || !evcon) return false;
    conn_guard *g = *find_slot(set, evcon);
    return g && g->nul_in_head;
}

void conn_guard_request_read(conn_guard_set *set, struct evhttp_connection *evcon)
{
    if (!set || !evcon) return;
    conn_guard *g = *find_slot(set, evcon);
    if (!g) return;
    /* The timer stays pending (lazily): in between it fires to no effect, and the next
     * request's header deadline, later than it, needs no event_add. */
    g->phase = PHASE_BETWEEN;
    /* A pipelined request already waiting in the buffer starts its clock now. */
    size_t pending = evbuffer_get_length(g->input);
    if (pending) scan_input(g, g->input, pending, false);
}

void conn_guard_detach(conn_guard_set *set, struct evhttp_connection *evcon)
{
    if (!set || !evcon) return;
    conn_guard **slot = find_slot(set, evcon);
    conn_guard *g = *slot;
    if (!g) return;
    *slot = g->next_in_bucket;
    guard_free(g, true);
}

void conn_guard_get_stats(const conn_guard_set *set, conn_guard_stats *out)
{
    if (!set) {
        memset(out, 0, sizeof(*out));
        return;
    }
    out->header_timeouts = atomic_load_explicit(&set->stats.header_timeouts, memory_order_relaxed);
    out->body_timeouts = atomic_load_explicit(&set->stats.body_timeouts, memory_order_relaxed);
    out->body_budget_closes = atomic_load_explicit(&set->stats.body_budget_closes, memory_order_relaxed);
    out->unauthenticated_bodies = atomic_load_explicit(&set->stats.unauthenticated_bodies, memory_order_relaxed);
    out->refused_on_headers = atomic_load_explicit(&set->stats.refused_on_headers, memory_order_relaxed);
    out->buffered_body = atomic_load_explicit(&set->stats.buffered_body, memory_order_relaxed);
    out->guarded = atomic_load_explicit(&set->stats.guarded, memory_order_relaxed);
}
