/*
 * tgload: a small closed-loop HTTP/1.1 load generator on libevent, used by tokengate's
 * integration specs, the demo and the benchmarks.
 *
 *   tgload --url http://127.0.0.1:PORT/path -c CONCURRENCY (-n TOTAL | -d SECONDS)
 *          [--tokens FILE] [-H "Name: value"]... [--timeout SECONDS]
 *          [--rate REQ_PER_S] [--slow-ms MS]
 *
 * Each connection has exactly one request in flight and reuses the connection (keep-alive)
 * unless the server closes it. All connections are opened before the first request is
 * sent, so "-c 100 -n 100" really puts 100 requests on the wire at the same moment.
 * That is why the client is written on bufferevents rather than evhttp's client:
 * evhttp_connection connects lazily on the first request and closes any socket handed
 * to it beforehand, so it cannot open connections ahead of firing.
 *
 * --tokens FILE: one token per line; request i (0-based, in the order requests are
 * issued) carries line (i mod count) as "Authorization: Bearer <token>"; a line "-"
 * sends no Authorization header. Blank lines are skipped.
 *
 * Output: exactly one JSON line on stdout:
 *   {"requests":N,"codes":{"200":n,...},"errors":n,"p50_ms":x,"p90_ms":x,"p99_ms":x,
 *    "max_ms":x,"elapsed_s":x,"rps":x}
 * requests = responses with a status + errors; errors = transport failures and timeouts
 * (no HTTP status). Latencies (CLOCK_MONOTONIC, from the moment a request is handed to
 * its connection to the end of the response body) are kept for every response with a
 * status and the percentiles are exact (nearest rank over the sorted samples); 0 when
 * there is none. elapsed_s runs from firing the first request to the last completion;
 * rps = requests / elapsed_s. Diagnostics go to stderr. Exit status: 0 when the JSON line
 * was printed (whatever the codes), 2 for a usage error, 1 when the run could not start.
 *
 * --rate R paces the load at about R requests per second in total (steady traffic rather
 * than as fast as the server answers): each connection starts its next request no sooner
 * than c/R seconds after it started the previous one (the connections' first requests are
 * spread over that interval). A request that takes longer delays only its own connection;
 * latency is still measured from the moment a request is handed to its connection.
 * --slow-ms MS adds "slow":n to the JSON line: responses that took more than MS ms.
 * --spray-paths sends request i (0-based, in issue order) to the URL's path followed by i
 * (/x/ → /x/0, /x/1, ...): a caller whose every request is new to a per-path cache.
 *
 * With -d, no request is issued after the deadline and the ones in flight are allowed to
 * finish (each bounded by --timeout). SIGINT/SIGTERM stop at once and report what
 * completed. Memory is bounded: at most TGLOAD_MAX_SAMPLES latency samples are kept; a
 * -d run that reaches that many stops early (with a note on stderr).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#define TGLOAD_MAX_SAMPLES (1u << 24) /* 16.7M samples, 128 MiB */
#define TGLOAD_MAX_CONNS 10000
#define TGLOAD_MAX_LINE 16384       /* longest status/header line accepted */
#define TGLOAD_MAX_ERROR_LOGS 5     /* distinct transport errors echoed on stderr */
#define TGLOAD_RETRY_DELAY_US 10000 /* pause after a failed connect before retrying */

enum parse_state {
    P_STATUS,      /* waiting for the status line */
    P_HEADERS,     /* header lines until the empty one */
    P_BODY_LENGTH, /* Content-Length bytes remain */
    P_CHUNK_SIZE,  /* chunk-size line */
    P_CHUNK_DATA,  /* chunk bytes remain */
    P_CHUNK_END,   /* CRLF after a chunk */
    P_TRAILERS,    /* trailer lines after the last chunk */
    P_BODY_EOF,    /* body delimited by the server closing */
};

enum timer_mode {
    T_NONE,
    T_OPEN,    /* connect deadline while opening all connections */
    T_REQUEST, /* deadline of the request in flight */
    T_RETRY,   /* pause before reconnecting after a failed connect */
    T_PACE,    /* --rate: waiting for this connection's next slot */
};

struct load;

/* One client connection; at most one request in flight on it. */
struct conn {
    struct load *ld;
    struct bufferevent *bev; /* NULL while closed */
    struct event *timer;
    enum timer_mode tmode;
    unsigned gen;  /* bumped whenever bev is freed */
    int connected; /* TCP connection established */
    int busy;      /* a request is outstanding */
    uint64_t req_start_ns;
    uint64_t next_due_ns; /* --rate: earliest start of the next request */
    /* response parser */
    enum parse_state ps;
    int status;
    int keep_alive;
    int chunked;
    int64_t content_length; /* -1: not given */
    uint64_t remaining;
};

struct load {
    struct event_base *base;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *req_head;         /* "GET path HTTP/1.1\r\nHost: ...\r\n" + -H headers (--spray-paths: no request line) */
    const char *spray_path; /* --spray-paths: request i goes to spray_path + i */
    size_t req_head_len;
    char **auth; /* per token line: "Authorization: Bearer x\r\n", or "" for "-" */
    size_t *auth_len;
    size_t ntokens;
    struct conn *conns;
    size_t nconns;
    uint64_t total;  /* -n; 0 when running for a duration */
    double duration; /* -d seconds */
    struct timeval timeout_tv;
    double rate;        /* --rate: requests per second in total; 0 = as fast as possible */
    uint64_t pace_ns;   /* --rate: interval between two requests of one connection */
    double slow_ms;     /* --slow-ms threshold; 0 = not reported */
    uint64_t slow;      /* responses slower than slow_ms */
    int running;        /* all connections opened (or given up on), requests fired */
    int stopping;       /* no more requests to issue */
    size_t opening;     /* connections still opening before the fire */
    size_t open_failed; /* connections that did not open before the fire */
    uint64_t issued;    /* requests handed to a connection */
    uint64_t inflight;
    uint64_t errors;
    uint64_t codes[600];
    uint64_t *samples; /* latency in ns per response with a status */
    size_t nsamples;
    size_t samples_cap;
    uint64_t t_fire_ns;
    uint64_t t_last_ns;
    unsigned error_logs;
    struct event *deadline_ev;
    struct event *sigint_ev;
    struct event *sigterm_ev;
};

static uint64_t now_ns(void);
static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_transport_error(struct load *ld, const char *what, int err);
static void conn_close(struct conn *c);
static int conn_open(struct conn *c);
static void conn_issue(struct conn *c);
static void conn_next(struct conn *c);
static void conn_fail(struct conn *c, const char *what, int err);
static void conn_complete(struct conn *c);
static void conn_arm(struct conn *c, enum timer_mode mode, const struct timeval *tv);
static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void load_fire(struct load *ld);
static void load_maybe_finish(struct load *ld);
static void deadline_cb(evutil_socket_t fd, short what, void *arg);
static void signal_cb(evutil_socket_t fd, short what, void *arg);
static int record_sample(struct load *ld, uint64_t ns);
static int parse_response(struct conn *c, struct evbuffer *in);
static int read_line(struct evbuffer *in, char *out, size_t cap);
static int parse_header(struct conn *c, char *line);
static int headers_done(struct conn *c);
static int parse_url(const char *url, struct load *ld, char **host_hdr, char **path);
static int load_tokens(const char *file, struct load *ld);
static int parse_seconds(const char *s, double *out);
static void usage(FILE *f);
static void print_result(struct load *ld);
static int cmp_u64(const void *a, const void *b);
static double pct_ms(const struct load *ld, unsigned p);
static void raise_nofile(size_t want);

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void logmsg(const char *fmt, ...)
{
    va_list ap;
    fputs("tgload: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Echo the first few transport errors so a failing run says why. */
static void log_transport_error(struct load *ld, const char *what, int err)
{
    if (ld->error_logs >= TGLOAD_MAX_ERROR_LOGS) return;
    ld->error_logs++;
    if (err)
        logmsg("%s: %s%s", what, evutil_socket_error_to_string(err),
               ld->error_logs == TGLOAD_MAX_ERROR_LOGS ? " (further errors not shown)" : "");
    else
        logmsg("%s%s", what, ld->error_logs == TGLOAD_MAX_ERROR_LOGS ? " (further errors not shown)" : "");
}

/* Free the connection's socket (if any); the conn itself stays reusable. */
static void conn_close(struct conn *c)
{
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        c->gen++;
    }
    c->connected = 0;
}

/* Start a non-blocking connect. Returns 0 on success (the outcome arrives in
 * conn_event_cb), -1 if no socket could be set up (errno-style error logged). */
static int conn_open(struct conn *c)
{
    struct load *ld = c->ld;
    int one = 1;
    evutil_socket_t fd;

    fd = socket(ld->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_transport_error(ld, "socket", errno);
        return -1;
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->bev = bufferevent_socket_new(ld->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        evutil_closesocket(fd);
        log_transport_error(ld, "bufferevent_socket_new failed", 0);
        return -1;
    }
    bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ld->addr, (int)ld->addrlen) < 0) {
        int err = EVUTIL_SOCKET_ERROR();
        conn_close(c);
        log_transport_error(ld, "connect", err);
        return -1;
    }
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    return 0;
}

static void conn_arm(struct conn *c, enum timer_mode mode, const struct timeval *tv)
{
    c->tmode = mode;
    evtimer_add(c->timer, tv);
}

/* Hand the next request to c (connecting first if it is closed). */
static void conn_issue(struct conn *c)
{
    struct load *ld = c->ld;
    size_t t = ld->ntokens ? (size_t)(ld->issued % ld->ntokens) : 0;
    struct evbuffer *out;

    ld->issued++;
    ld->inflight++;
    c->busy = 1;
    c->ps = P_STATUS;
    c->status = 0;
    c->req_start_ns = now_ns();
    conn_arm(c, T_REQUEST, &ld->timeout_tv);

    if (!c->bev && conn_open(c) < 0) {
        conn_fail(c, NULL, 0); /* already logged */
        return;
    }
    out = bufferevent_get_output(c->bev);
    if (ld->spray_path)
        evbuffer_add_printf(out, "GET %s%llu HTTP/1.1\r\n", ld->spray_path, (unsigned long long)(ld->issued - 1));
    evbuffer_add(out, ld->req_head, ld->req_head_len);
    if (ld->ntokens && ld->auth_len[t]) evbuffer_add(out, ld->auth[t], ld->auth_len[t]);
    evbuffer_add(out, "\r\n", 2);
}

/* c is free: give it the next request, or note that the run may be over. */
static void conn_next(struct conn *c)
{
    struct load *ld = c->ld;

    if (!ld->stopping && ld->total && ld->issued >= ld->total) ld->stopping = 1;
    if (ld->stopping) {
        load_maybe_finish(ld);
        return;
    }
    if (ld->pace_ns) {
        uint64_t now = now_ns();
        if (c->next_due_ns > now) {
            uint64_t wait = c->next_due_ns - now;
            struct timeval tv = {(time_t)(wait / 1000000000u), (suseconds_t)(wait % 1000000000u / 1000u)};
            conn_arm(c, T_PACE, &tv);
            return;
        }
        /* Due (or late, after a slow answer): start now and keep the schedule from here
         * rather than bursting to catch up. */
        c->next_due_ns = now + ld->pace_ns;
    }
    conn_issue(c);
}

/* The request in flight on c failed without an HTTP status. */
static void conn_fail(struct conn *c, const char *what, int err)
{
    struct load *ld = c->ld;
    int was_connected = c->connected;

    if (what) log_transport_error(ld, what, err);
    evtimer_del(c->timer);
    c->tmode = T_NONE;
    c->busy = 0;
    ld->inflight--;
    ld->errors++;
    ld->t_last_ns = now_ns();
    conn_close(c);
    if (!was_connected && !ld->stopping) {
        /* The server is not accepting: do not spin on refused connects. */
        struct timeval tv = {0, TGLOAD_RETRY_DELAY_US};
        conn_arm(c, T_RETRY, &tv);
        return;
    }
    conn_next(c);
}

/* A full response arrived on c. */
static void conn_complete(struct conn *c)
{
    struct load *ld = c->ld;
    uint64_t t = now_ns();

    evtimer_del(c->timer);
    c->tmode = T_NONE;
    c->busy = 0;
    ld->inflight--;
    ld->codes[c->status]++;
    ld->t_last_ns = t;
    if (ld->slow_ms > 0 && (double)(t - c->req_start_ns) / 1e6 > ld->slow_ms) ld->slow++;
    if (record_sample(ld, t - c->req_start_ns) < 0 && !ld->stopping) {
        logmsg("reached %u latency samples; stopping early", TGLOAD_MAX_SAMPLES);
        ld->stopping = 1;
    }
    if (!c->keep_alive) conn_close(c);
    conn_next(c);
}

static int record_sample(struct load *ld, uint64_t ns)
{
    if (ld->nsamples == ld->samples_cap) {
        size_t cap = ld->samples_cap ? ld->samples_cap * 2 : 65536;
        uint64_t *p;
        if (cap > TGLOAD_MAX_SAMPLES) cap = TGLOAD_MAX_SAMPLES;
        if (cap <= ld->samples_cap) return -1;
        p = realloc(ld->samples, cap * sizeof(*p));
        if (!p) return -1;
        ld->samples = p;
        ld->samples_cap = cap;
    }
    ld->samples[ld->nsamples++] = ns;
    return ld->nsamples < TGLOAD_MAX_SAMPLES ? 0 : -1;
}

/* Copy one line (without its EOL) into out. Returns 1 with a line, 0 when more input is
 * needed, -1 when the line is longer than cap - 1. */
static int read_line(struct evbuffer *in, char *out, size_t cap)
{
    size_t eol_len = 0;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);

    if (p.pos < 0) return evbuffer_get_length(in) >= cap ? -1 : 0;
    if ((size_t)p.pos >= cap) return -1;
    evbuffer_remove(in, out, (size_t)p.pos);
    out[p.pos] = '\0';
    evbuffer_drain(in, eol_len);
    return 1;
}

static int parse_header(struct conn *c, char *line)
{
    char *colon = strchr(line, ':');
    char *v;
    size_t nlen;

    if (!colon) return -1;
    nlen = (size_t)(colon - line);
    v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    if (nlen == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
        char *end;
        unsigned long long n;
        errno = 0;
        n = strtoull(v, &end, 10);
        if (errno || end == v || n > INT64_MAX) return -1;
        c->content_length = (int64_t)n;
    } else if (nlen == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
        if (strcasestr(v, "chunked")) c->chunked = 1;
    } else if (nlen == 10 && strncasecmp(line, "Connection", 10) == 0) {
        if (strcasestr(v, "close"))
            c->keep_alive = 0;
        else if (strcasestr(v, "keep-alive"))
            c->keep_alive = 1;
    }
    return 0;
}

/* Decide how the body is delimited. Returns 1 when the response is complete. */
static int headers_done(struct conn *c)
{
    if (c->status < 200) { /* interim 1xx: the real response follows */
        c->ps = P_STATUS;
        return 0;
    }
    if (c->status == 204 || c->status == 304) return 1;
    if (c->chunked) {
        c->ps = P_CHUNK_SIZE;
        return 0;
    }
    if (c->content_length >= 0) {
        if (c->content_length == 0) return 1;
        c->remaining = (uint64_t)c->content_length;
        c->ps = P_BODY_LENGTH;
        return 0;
    }
    c->keep_alive = 0;
    c->ps = P_BODY_EOF;
    return 0;
}

/* Advance c's parser over the input. Returns 1 when a response is complete, 0 when more
 * input is needed, -1 on a protocol error. */
static int parse_response(struct conn *c, struct evbuffer *in)
{
    char line[TGLOAD_MAX_LINE];

    for (;;) {
        size_t avail = evbuffer_get_length(in);
        int r;

        switch (c->ps) {
        case P_STATUS:
            r = read_line(in, line, sizeof(line));
            if (r <= 0) return r;
            if (line[0] == '\0') continue; /* tolerate a stray CRLF before the status line */
            if (strncmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') || line[8] != ' ' ||
                line[9] < '1' || line[9] > '5' || line[10] < '0' || line[10] > '9' || line[11] < '0' ||
                line[11] > '9' || (line[12] != ' ' && line[12] != '\0'))
                return -1;
            c->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
            c->keep_alive = line[7] == '1';
            c->chunked = 0;
            c->content_length = -1;
            c->ps = P_HEADERS;
            break;
        case P_HEADERS:
            r = read_line(in, line, sizeof(line));
            if (r <= 0) return r;
            if (line[0] == '\0') {
                if (headers_done(c)) return 1;
            } else if (parse_header(c, line) < 0) {
                return -1;
            }
            break;
        case P_BODY_LENGTH:
        case P_CHUNK_DATA: {
            size_t n = avail < c->remaining ? avail : (size_t)c->remaining;
            if (n == 0) return 0;
            evbuffer_drain(in, n);
            c->remaining -= n;
            if (c->remaining == 0) {
                if (c->ps == P_BODY_LENGTH) return 1;
                c->ps = P_CHUNK_END;
            }
            break;
        }
        case P_CHUNK_SIZE: {
            char *end;
            unsigned long long n;
            r = read_line(in, line, sizeof(line));
            if (r <= 0) return r;
            errno = 0;
            n = strtoull(line, &end, 16);
            if (errno || end == line || (*end && *end != ';' && *end != ' ' && *end != '\t')) return -1;
            if (n == 0) {
                c->ps = P_TRAILERS;
            } else {
                c->remaining = n;
                c->ps = P_CHUNK_DATA;
            }
            break;
        }
        case P_CHUNK_END:
            r = read_line(in, line, sizeof(line));
            if (r <= 0) return r;
            if (line[0] != '\0') return -1;
            c->ps = P_CHUNK_SIZE;
            break;
        case P_TRAILERS:
            r = read_line(in, line, sizeof(line));
            if (r <= 0) return r;
            if (line[0] == '\0') return 1;
            break;
        case P_BODY_EOF: evbuffer_drain(in, avail); return 0; /* completed by the server closing */
        }
    }
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    unsigned gen = c->gen;

    while (c->gen == gen && evbuffer_get_length(in) > 0) {
        int r;
        if (!c->busy) {
            /* Bytes nobody asked for: the connection is out of step; drop it. */
            conn_close(c);
            return;
        }
        r = parse_response(c, in);
        if (r == 0) return;
        if (r < 0) {
            conn_fail(c, "malformed response", 0);
            return;
        }
        conn_complete(c); /* may close c's bev or queue the next request */
    }
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    struct load *ld = c->ld;
    (void)bev;

    if (what & BEV_EVENT_CONNECTED) {
        c->connected = 1;
        if (!ld->running) {
            evtimer_del(c->timer);
            c->tmode = T_NONE;
            if (--ld->opening == 0) load_fire(ld);
        }
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) return;

    if (c->busy) {
        if ((what & BEV_EVENT_EOF) && c->ps == P_BODY_EOF) {
            c->keep_alive = 0;
            conn_complete(c);
        } else if (what & BEV_EVENT_EOF) {
            conn_fail(c, "connection closed before a complete response", 0);
        } else {
            conn_fail(c, c->connected ? "read/write" : "connect", EVUTIL_SOCKET_ERROR());
        }
        return;
    }
    /* Idle: the server closed a keep-alive connection, or a connect failed while opening. */
    if (!ld->running && !c->connected) {
        log_transport_error(ld, "connect", EVUTIL_SOCKET_ERROR());
        evtimer_del(c->timer);
        c->tmode = T_NONE;
        conn_close(c);
        ld->open_failed++;
        if (--ld->opening == 0) load_fire(ld);
        return;
    }
    conn_close(c); /* reopened when it gets its next request */
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct load *ld = c->ld;
    enum timer_mode mode = c->tmode;
    (void)fd;
    (void)what;

    c->tmode = T_NONE;
    switch (mode) {
    case T_OPEN:
        log_transport_error(ld, "connect timed out", 0);
        conn_close(c);
        ld->open_failed++;
        if (--ld->opening == 0) load_fire(ld);
        break;
    case T_REQUEST:
        if (c->busy) {
            int was_connected = c->connected;
            conn_fail(c, was_connected ? "request timed out" : "connect timed out", 0);
        }
        break;
    case T_RETRY: conn_next(c); break;
    case T_PACE:
        if (ld->stopping) {
            load_maybe_finish(ld);
            break;
        }
        c->next_due_ns += ld->pace_ns;
        conn_issue(c);
        break;
    case T_NONE: break;
    }
}

/* All connections are open (or given up on): put one request on each. */
static void load_fire(struct load *ld)
{
    size_t i;

    ld->running = 1;
    if (ld->open_failed)
        logmsg("%zu of %zu connections did not open; they retry on their first request", ld->open_failed, ld->nconns);
    ld->t_fire_ns = now_ns();
    ld->t_last_ns = ld->t_fire_ns;
    if (ld->duration > 0) {
        struct timeval tv;
        tv.tv_sec = (time_t)ld->duration;
        tv.tv_usec = (suseconds_t)((ld->duration - (double)tv.tv_sec) * 1e6);
        evtimer_add(ld->deadline_ev, &tv);
    }
    for (i = 0; i < ld->nconns && ld->pace_ns; i++)
        ld->conns[i].next_due_ns = ld->t_fire_ns + ld->pace_ns * i / ld->nconns;
    for (i = 0; i < ld->nconns && !ld->stopping; i++) conn_next(&ld->conns[i]);
}

static void load_maybe_finish(struct load *ld)
{
    if (ld->running && ld->stopping && ld->inflight == 0) event_base_loopbreak(ld->base);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *ld = arg;
    size_t i;
    (void)fd;
    (void)what;

    ld->stopping = 1;
    /* Connections pausing after a failed connect hold no request: stop their timers. */
    for (i = 0; i < ld->nconns; i++) {
        if (ld->conns[i].tmode == T_RETRY || ld->conns[i].tmode == T_PACE) {
            evtimer_del(ld->conns[i].timer);
            ld->conns[i].tmode = T_NONE;
        }
    }
    load_maybe_finish(ld);
}

static void signal_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *ld = arg;
    (void)fd;
    (void)what;

    logmsg("interrupted; reporting what completed");
    ld->stopping = 1;
    ld->t_last_ns = now_ns();
    if (!ld->running) ld->t_fire_ns = ld->t_last_ns;
    event_base_loopbreak(ld->base);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the sorted samples, in ms. */
static double pct_ms(const struct load *ld, unsigned p)
{
    size_t rank;
    if (ld->nsamples == 0) return 0.0;
    rank = (size_t)(((uint64_t)ld->nsamples * p + 99) / 100);
    if (rank == 0) rank = 1;
    return (double)ld->samples[rank - 1] / 1e6;
}

static void print_result(struct load *ld)
{
    uint64_t responses = 0, requests;
    double elapsed;
    int first = 1;
    unsigned code;

    for (code = 0; code < 600; code++) responses += ld->codes[code];
    requests = responses + ld->errors;
    if (ld->nsamples) qsort(ld->samples, ld->nsamples, sizeof(*ld->samples), cmp_u64);
    elapsed = ld->t_last_ns > ld->t_fire_ns ? (double)(ld->t_last_ns - ld->t_fire_ns) / 1e9 : 0.0;

    printf("{\"requests\":%llu,\"codes\":{", (unsigned long long)requests);
    for (code = 0; code < 600; code++) {
        if (!ld->codes[code]) continue;
        printf("%s\"%u\":%llu", first ? "" : ",", code, (unsigned long long)ld->codes[code]);
        first = 0;
    }
    printf("}");
    if (ld->slow_ms > 0) printf(",\"slow\":%llu", (unsigned long long)ld->slow);
    printf(",\"errors\":%llu,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
           "\"elapsed_s\":%.3f,\"rps\":%.1f}\n",
           (unsigned long long)ld->errors, pct_ms(ld, 50), pct_ms(ld, 90), pct_ms(ld, 99),
           ld->nsamples ? (double)ld->samples[ld->nsamples - 1] / 1e6 : 0.0, elapsed,
           elapsed > 0 ? (double)requests / elapsed : 0.0);
    fflush(stdout);
}

/* http://HOST[:PORT][/path] -> resolved address, Host header value, request target. */
static int parse_url(const char *url, struct load *ld, char **host_hdr, char **path)
{
    const char *p, *hstart, *hend, *pstart;
    char host[256], port[8] = "80";
    struct addrinfo hints, *res = NULL;
    int rc;

    if (strncasecmp(url, "http://", 7) != 0) {
        logmsg("--url must start with http:// (got %s)", url);
        return -1;
    }
    hstart = url + 7;
    pstart = hstart + strcspn(hstart, "/?#");
    if (*hstart == '[') {
        hend = strchr(hstart, ']');
        if (!hend || hend > pstart) {
            logmsg("bad IPv6 address in --url");
            return -1;
        }
        p = hend + 1;
        hstart++;
    } else {
        p = memchr(hstart, ':', (size_t)(pstart - hstart));
        hend = p ? p : pstart;
        if (!p) p = pstart;
    }
    if (hend == hstart || (size_t)(hend - hstart) >= sizeof(host)) {
        logmsg("bad host in --url");
        return -1;
    }
    memcpy(host, hstart, (size_t)(hend - hstart));
    host[hend - hstart] = '\0';
    if (*p == ':') {
        size_t n = (size_t)(pstart - p - 1);
        if (n == 0 || n >= sizeof(port) || strspn(p + 1, "0123456789") < n) {
            logmsg("bad port in --url");
            return -1;
        }
        memcpy(port, p + 1, n);
        port[n] = '\0';
    } else if (p != pstart) {
        logmsg("bad --url");
        return -1;
    }

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res) {
        logmsg("cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    memcpy(&ld->addr, res->ai_addr, res->ai_addrlen);
    ld->addrlen = res->ai_addrlen;
    freeaddrinfo(res);

    *host_hdr = strndup(url + 7, (size_t)(pstart - (url + 7)));
    if (*pstart == '/') {
        *path = strndup(pstart, strcspn(pstart, "#"));
    } else if (*pstart == '?') {
        if (asprintf(path, "/%.*s", (int)strcspn(pstart, "#"), pstart) < 0) *path = NULL;
    } else {
        *path = strdup("/");
    }
    if (!*host_hdr || !*path) return -1;
    if (strpbrk(*path, " \r\n")) {
        logmsg("--url path must not contain spaces or line breaks");
        return -1;
    }
    return 0;
}

/* Read the token file into pre-formatted Authorization header lines. */
static int load_tokens(const char *file, struct load *ld)
{
    FILE *f = fopen(file, "r");
    char *line = NULL;
    size_t lcap = 0, cap = 0;
    ssize_t n;
    int rc = -1;

    if (!f) {
        logmsg("cannot open --tokens %s: %s", file, strerror(errno));
        return -1;
    }
    while ((n = getline(&line, &lcap, f)) >= 0) {
        char *hdr = NULL;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        if (memchr(line, '\r', (size_t)n) || memchr(line, '\0', (size_t)n)) {
            logmsg("--tokens: line %zu contains a control character", ld->ntokens + 1);
            goto done;
        }
        if (ld->ntokens == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **a = realloc(ld->auth, ncap * sizeof(*a));
            size_t *l;
            if (!a) goto done;
            ld->auth = a;
            l = realloc(ld->auth_len, ncap * sizeof(*l));
            if (!l) goto done;
            ld->auth_len = l;
            cap = ncap;
        }
        if (strcmp(line, "-") == 0)
            hdr = strdup("");
        else if (asprintf(&hdr, "Authorization: Bearer %s\r\n", line) < 0)
            hdr = NULL;
        if (!hdr) goto done;
        ld->auth[ld->ntokens] = hdr;
        ld->auth_len[ld->ntokens] = strlen(hdr);
        ld->ntokens++;
    }
    if (ld->ntokens == 0) {
        logmsg("--tokens %s has no tokens", file);
        goto done;
    }
    rc = 0;
done:
    free(line);
    fclose(f);
    return rc;
}

static int parse_seconds(const char *s, double *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v > 0) || v > 86400) return -1;
    *out = v;
    return 0;
}

static void usage(FILE *f)
{
    fputs("usage: tgload --url http://HOST:PORT/path -c CONCURRENCY (-n TOTAL | -d SECONDS)\n"
          "              [--tokens FILE] [-H \"Name: value\"]... [--timeout SECONDS]\n"
          "              [--rate REQ_PER_S] [--slow-ms MS] [--spray-paths]\n"
          "  -c N          connections, one request in flight on each (default 1)\n"
          "  -n N          send N requests in total\n"
          "  -d SECONDS    send requests for SECONDS (fractions allowed)\n"
          "  --tokens FILE one token per line, used round-robin as Authorization: Bearer;\n"
          "                a line \"-\" sends no Authorization header\n"
          "  -H HEADER     extra request header (repeatable)\n"
          "  --timeout S   per-request (and connect) timeout in seconds (default 10)\n"
          "  --rate R      pace at about R requests/s in total (default: as fast as answered)\n"
          "  --slow-ms MS  also count responses slower than MS ms (\"slow\" in the JSON)\n"
          "Prints one JSON line: requests, codes, errors, p50/p90/p99/max latency in ms,\n"
          "elapsed_s and rps.\n",
          f);
}

static void raise_nofile(size_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"url", required_argument, NULL, 'u'},     {"tokens", required_argument, NULL, 't'},
        {"timeout", required_argument, NULL, 'T'}, {"rate", required_argument, NULL, 'r'},
        {"slow-ms", required_argument, NULL, 's'}, {"spray-paths", no_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    struct load ld;
    const char *url = NULL, *tokens_file = NULL;
    char *host_hdr = NULL, *path = NULL;
    char **headers = NULL;
    size_t nheaders = 0, i, concurrency = 1;
    double timeout_s = 10.0;
    int have_host = 0, opt, rc = 1;
    struct evbuffer *head = NULL;

    memset(&ld, 0, sizeof(ld));
    headers = calloc((size_t)argc, sizeof(*headers));
    if (!headers) return 1;

    while ((opt = getopt_long(argc, argv, "c:n:d:H:h", longopts, NULL)) != -1) {
        char *end;
        unsigned long long v;
        switch (opt) {
        case 'u': url = optarg; break;
        case 't': tokens_file = optarg; break;
        case 'P':
            ld.spray_path = ""; /* set to the URL's path below */
            break;
        case 'c':
            errno = 0;
            v = strtoull(optarg, &end, 10);
            if (errno || *end || v == 0 || v > TGLOAD_MAX_CONNS) {
                logmsg("-c must be 1..%d", TGLOAD_MAX_CONNS);
                rc = 2;
                goto out;
            }
            concurrency = (size_t)v;
            break;
        case 'n':
            errno = 0;
            v = strtoull(optarg, &end, 10);
            if (errno || *end || v == 0 || v > TGLOAD_MAX_SAMPLES) {
                logmsg("-n must be 1..%u", TGLOAD_MAX_SAMPLES);
                rc = 2;
                goto out;
            }
            ld.total = v;
            break;
        case 'd':
            if (parse_seconds(optarg, &ld.duration) < 0) {
                logmsg("-d must be a positive number of seconds");
                rc = 2;
                goto out;
            }
            break;
        case 'T':
            if (parse_seconds(optarg, &timeout_s) < 0) {
                logmsg("--timeout must be a positive number of seconds");
                rc = 2;
                goto out;
            }
            break;
        case 'r':
            errno = 0;
            ld.rate = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(ld.rate > 0) || ld.rate > 1e7) {
                logmsg("--rate must be a positive number of requests per second");
                rc = 2;
                goto out;
            }
            break;
        case 's':
            if (parse_seconds(optarg, &ld.slow_ms) < 0) {
                logmsg("--slow-ms must be a positive number of milliseconds");
                rc = 2;
                goto out;
            }
            break;
        case 'H':
            if (!strchr(optarg, ':') || strpbrk(optarg, "\r\n") || optarg[0] == ':') {
                logmsg("-H wants \"Name: value\" (got %s)", optarg);
                rc = 2;
                goto out;
            }
            if (strncasecmp(optarg, "Host:", 5) == 0) have_host = 1;
            headers[nheaders++] = optarg;
            break;
        case 'h':
            usage(stdout);
            rc = 0;
            goto out;
        default:
            usage(stderr);
            rc = 2;
            goto out;
        }
    }
    if (optind < argc || !url || (ld.total == 0) == (ld.duration == 0)) {
        if (optind < argc)
            logmsg("unexpected argument: %s", argv[optind]);
        else if (!url)
            logmsg("--url is required");
        else
            logmsg("give exactly one of -n and -d");
        usage(stderr);
        rc = 2;
        goto out;
    }
    if (parse_url(url, &ld, &host_hdr, &path) < 0) {
        rc = 2;
        goto out;
    }
    if (tokens_file && load_tokens(tokens_file, &ld) < 0) {
        rc = 2;
        goto out;
    }
    ld.timeout_tv.tv_sec = (time_t)timeout_s;
    ld.timeout_tv.tv_usec = (suseconds_t)((timeout_s - (double)ld.timeout_tv.tv_sec) * 1e6);

    head = evbuffer_new();
    if (!head) goto out;
    if (ld.spray_path)
        ld.spray_path = path; /* each request's line is written with its number */
    else
        evbuffer_add_printf(head, "GET %s HTTP/1.1\r\n", path);
    if (!have_host) evbuffer_add_printf(head, "Host: %s\r\n", host_hdr);
    for (i = 0; i < nheaders; i++) evbuffer_add_printf(head, "%s\r\n", headers[i]);
    ld.req_head_len = evbuffer_get_length(head);
    ld.req_head = malloc(ld.req_head_len);
    if (!ld.req_head) goto out;
    evbuffer_remove(head, ld.req_head, ld.req_head_len);

    if (ld.total) {
        ld.samples_cap = (size_t)ld.total;
        ld.samples = malloc(ld.samples_cap * sizeof(*ld.samples));
        if (!ld.samples) {
            logmsg("out of memory for %llu samples", (unsigned long long)ld.total);
            goto out;
        }
        if (concurrency > ld.total) concurrency = (size_t)ld.total;
    }
    ld.nconns = concurrency;
    if (ld.rate > 0) ld.pace_ns = (uint64_t)((double)concurrency / ld.rate * 1e9);
    raise_nofile(concurrency + 64);
    signal(SIGPIPE, SIG_IGN);

    ld.base = event_base_new();
    if (!ld.base) goto out;
    ld.deadline_ev = evtimer_new(ld.base, deadline_cb, &ld);
    ld.sigint_ev = evsignal_new(ld.base, SIGINT, signal_cb, &ld);
    ld.sigterm_ev = evsignal_new(ld.base, SIGTERM, signal_cb, &ld);
    ld.conns = calloc(ld.nconns, sizeof(*ld.conns));
    if (!ld.deadline_ev || !ld.sigint_ev || !ld.sigterm_ev || !ld.conns) goto out;
    evsignal_add(ld.sigint_ev, NULL);
    evsignal_add(ld.sigterm_ev, NULL);
    for (i = 0; i < ld.nconns; i++) {
        ld.conns[i].ld = &ld;
        ld.conns[i].timer = evtimer_new(ld.base, conn_timer_cb, &ld.conns[i]);
        if (!ld.conns[i].timer) goto out;
    }

    /* Open every connection first; load_fire runs once the last one is settled. */
    ld.opening = ld.nconns;
    for (i = 0; i < ld.nconns; i++) {
        struct conn *c = &ld.conns[i];
        if (conn_open(c) < 0) {
            ld.open_failed++;
            ld.opening--;
            continue;
        }
        conn_arm(c, T_OPEN, &ld.timeout_tv);
    }
    if (ld.opening == 0) load_fire(&ld);
    event_base_dispatch(ld.base);

    print_result(&ld);
    rc = 0;

out:
    if (ld.conns) {
        for (i = 0; i < ld.nconns; i++) {
            conn_close(&ld.conns[i]);
            if (ld.conns[i].timer) event_free(ld.conns[i].timer);
        }
        free(ld.conns);
    }
    if (ld.deadline_ev) event_free(ld.deadline_ev);
    if (ld.sigint_ev) event_free(ld.sigint_ev);
    if (ld.sigterm_ev) event_free(ld.sigterm_ev);
    if (ld.base) event_base_free(ld.base);
    if (head) evbuffer_free(head);
    for (i = 0; i < ld.ntokens; i++) free(ld.auth[i]);
    free(ld.auth);
    free(ld.auth_len);
    free(ld.samples);
    free(ld.req_head);
    free(host_hdr);
    free(path);
    free(headers);
    libevent_global_shutdown();
    return rc;
}
