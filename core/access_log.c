/* access_log.c owns the decision log: its file, the line format, sampling and writing. */
#include "access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Field budgets in written bytes (after escaping): a line always fits ACCESS_LOG_LINE_MAX,
 * whatever a request carries. */
#define FIELD_METHOD_MAX 32
#define FIELD_PATH_MAX 1024
#define FIELD_USER_MAX 768
#define FIELD_UID_MAX 160
#define FIELD_NAMESPACE_MAX 200
#define FIELD_REASON_MAX 512
#define FIELD_SHA256_MAX 80

struct access_log {
    int fd;     /* STDOUT_FILENO, or the file's descriptor (kept across reopens) */
    char *path; /* NULL for stdout */
    double sample_allowed;
};

static int open_append(const char *path, char *err, size_t err_cap)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) snprintf(err, err_cap, "--access-log %s: %s", path, strerror(errno));
    return fd;
}

access_log *access_log_open(const char *target, double sample_allowed, char *err, size_t err_cap)
{
    if (!(sample_allowed >= 0 && sample_allowed <= 1)) {
        snprintf(err, err_cap, "--access-log-sample-allowed must be between 0 and 1");
        return NULL;
    }
    access_log *log = calloc(1, sizeof(*log));
    if (!log) {
        snprintf(err, err_cap, "out of memory");
        return NULL;
    }
    log->sample_allowed = sample_allowed;
    if (strcmp(target, "stdout") == 0) {
        log->fd = STDOUT_FILENO;
        return log;
    }
    log->path = strdup(target);
    log->fd = log->path ? open_append(target, err, err_cap) : -1;
    if (log->fd < 0) {
        if (!log->path) snprintf(err, err_cap, "out of memory");
        free(log->path);
        free(log);
        return NULL;
    }
    return log;
}

int access_log_reopen(access_log *log, char *err, size_t err_cap)
{
    if (!log->path) return 0;
    int fd = open_append(log->path, err, err_cap);
    if (fd < 0) return -1;
    /* dup2 replaces the file behind log->fd in one step: a worker writing at this moment
     * writes whole to the old file or to the new one, never to a closed descriptor. */
    int rc = dup2(fd, log->fd) < 0 ? -1 : 0;
    if (rc != 0) snprintf(err, err_cap, "--access-log %s: %s", log->path, strerror(errno));
    close(fd);
    return rc;
}

void access_log_free(access_log *log)
{
    if (!log) return;
    if (log->path) close(log->fd);
    free(log->path);
    free(log);
}

const char *decision_source_name(decision_source source)
{
    switch (source) {
    case DECISION_REQUEST: return "request";
    case DECISION_ANONYMOUS: return "anonymous";
    case DECISION_CACHE: return "cache";
    case DECISION_TOKENREVIEW: return "tokenreview";
    case DECISION_SUBJECTACCESSREVIEW: return "subjectaccessreview";
    case DECISION_POLICY: return "policy";
    case DECISION_JWT_PREVERIFY: return "jwt_preverify";
    }
    return "request";
}

void access_log_buffer_init(access_log_buffer *buf, uint64_t seed)
{
    memset(buf, 0, sizeof(*buf));
    buf->rng = seed ? seed : 0x9e3779b97f4a7c15ULL;
    buf->stamp_second = (time_t)-1;
}

/* xorshift64*: a uniform double in [0, 1). Sampling needs no cryptographic quality. */
static double next_uniform(access_log_buffer *buf)
{
    uint64_t x = buf->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    buf->rng = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

/* A bounded writer over a line buffer. */
typedef struct line_writer {
    char *pos, *end;
} line_writer;

static void put_raw(line_writer *w, const char *s, size_t len)
{
    if ((size_t)(w->end - w->pos) < len) len = (size_t)(w->end - w->pos);
    memcpy(w->pos, s, len);
    w->pos += len;
}

static void put_text(line_writer *w, const char *s)
{
    put_raw(w, s, strlen(s));
}

/* A JSON string written in at most budget bytes, quotes included ("..." ends a string that
 * was cut). Control bytes, DEL and every byte >= 0x80 are written as \u00XX, so the line
 * is valid JSON (and plain ASCII) whatever the request carried. NULL: null. */
static void put_string(line_writer *w, const char *s, size_t len, size_t budget)
{
    static const char hex[] = "0123456789abcdef";
    if (!s) {
        put_text(w, "null");
        return;
    }
    const char *limit = w->pos + budget - 4; /* room for "..." and the closing quote */
    put_raw(w, "\"", 1);
    size_t i = 0;
    while (i < len) {
        /* A run of bytes written as they are, copied at once. */
        size_t run = i;
        while (run < len) {
            unsigned char c = (unsigned char)s[run];
            if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') break;
            run++;
        }
        if (run > i) {
            size_t n = run - i;
            bool cut = w->pos + n > limit;
            if (cut) n = limit > w->pos ? (size_t)(limit - w->pos) : 0;
            put_raw(w, s + i, n);
            if (cut) {
                put_raw(w, "...", 3);
                break;
            }
            i = run;
            if (i == len) break;
        }
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t n = 2;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
        } else {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            n = 6;
        }
        if (w->pos + n > limit) {
            put_raw(w, "...", 3);
            break;
        }
        put_raw(w, esc, n);
        i++;
    }
    put_raw(w, "\"", 1);
}

/* Appends v in decimal. */
static void put_uint(line_writer *w, uint64_t v)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof(digits) - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < sizeof(digits));
    put_raw(w, digits + sizeof(digits) - n, n);
}

/* Appends v (>= 0) with exactly `decimals` digits after the point, from an integer count of
 * 10^-decimals units: no floating-point formatting on the request path. */
static void put_fixed(line_writer *w, uint64_t units, unsigned decimals)
{
    uint64_t scale = 1;
    for (unsigned i = 0; i < decimals; i++) scale *= 10;
    put_uint(w, units / scale);
    char frac[8];
    uint64_t rest = units % scale;
    for (unsigned i = decimals; i > 0; i--) {
        frac[i] = (char)('0' + rest % 10);
        rest /= 10;
    }
    frac[0] = '.';
    put_raw(w, frac, decimals + 1);
}

/* Writes buf->data[0..len) with as few write(2) calls as it takes; what cannot be
 * written is counted as dropped lines. */
void access_log_flush(const access_log *log, access_log_buffer *buf)
{
    size_t done = 0;
    while (done < buf->len) {
        ssize_t n = write(log->fd, buf->data + done, buf->len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += (size_t)n;
    }
    if (done == buf->len) {
        metric_add(&buf->written, buf->lines);
    } else { /* rare: count what got out */
        uint64_t lines_written = 0;
        for (size_t i = 0; i < done; i++) lines_written += buf->data[i] == '\n';
        metric_add(&buf->written, lines_written);
        metric_add(&buf->dropped, buf->lines - lines_written);
    }
    buf->len = 0;
    buf->lines = 0;
}

void access_log_add(const access_log *log, access_log_buffer *buf, const access_log_entry *e)
{
    bool allowed = e->status >= 200 && e->status < 300;
    if (allowed && log->sample_allowed < 1 && next_uniform(buf) >= log->sample_allowed) {
        metric_add(&buf->sampled_out, 1);
        return;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != buf->stamp_second) { /* one gmtime_r per second, not per line */
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        if (strftime(buf->stamp_text, sizeof(buf->stamp_text), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
            buf->stamp_text[0] = '\0';
        buf->stamp_second = now.tv_sec;
    }
    char line[ACCESS_LOG_LINE_MAX];
    line_writer w = {line, line + sizeof(line) - 1}; /* room for '\n' */
    put_text(&w, "{\"time\":\"");
    put_text(&w, buf->stamp_text);
    char millis[5] = {'.', (char)('0' + now.tv_nsec / 100000000), (char)('0' + now.tv_nsec / 10000000 % 10),
                      (char)('0' + now.tv_nsec / 1000000 % 10), 'Z'};
    put_raw(&w, millis, sizeof(millis));
    put_text(&w, "\",\"method\":");
    put_string(&w, e->method, e->method ? strlen(e->method) : 0, FIELD_METHOD_MAX);
    put_text(&w, ",\"path\":");
    put_string(&w, e->path, e->path_len, FIELD_PATH_MAX);
    put_text(&w, ",\"status\":");
    put_uint(&w, e->status > 0 && e->status < 1000 ? (uint64_t)e->status : 0);
    put_text(&w, ",\"user\":");
    put_string(&w, e->user, e->user_len, FIELD_USER_MAX);
    put_text(&w, ",\"uid\":");
    put_string(&w, e->uid, e->uid_len, FIELD_UID_MAX);
    put_text(&w, ",\"namespace\":");
    put_string(&w, e->namespace_name, e->namespace_len, FIELD_NAMESPACE_MAX);
    put_text(&w, ",\"source\":\"");
    put_text(&w, decision_source_name(e->source));
    put_text(&w, "\",\"reason\":");
    put_string(&w, e->reason, e->reason ? strlen(e->reason) : 0, FIELD_REASON_MAX);
    put_text(&w, ",\"latency_ms\":");
    /* Microseconds, written as milliseconds with three decimals; at most a day. */
    double us = e->latency_s > 0 ? e->latency_s * 1e6 + 0.5 : 0;
    put_fixed(&w, us < 86400e6 ? (uint64_t)us : (uint64_t)86400e6, 3);
    put_text(&w, e->cache_hit > 0    ? ",\"cache_hit\":true"
                 : e->cache_hit == 0 ? ",\"cache_hit\":false"
                                     : ",\"cache_hit\":null");
    put_text(&w, ",\"policy_sha256\":");
    put_string(&w, e->policy_sha256, e->policy_sha256 ? strlen(e->policy_sha256) : 0, FIELD_SHA256_MAX);
    put_raw(&w, "}", 1);
    *w.pos++ = '\n';
    size_t len = (size_t)(w.pos - line);
    if (buf->len + len > sizeof(buf->data)) access_log_flush(log, buf);
    memcpy(buf->data + buf->len, line, len);
    buf->len += len;
    buf->lines++;
}
