/* JSON log lines on stderr.
 *
 * One event per line: {"ts":"...","level":"info","msg":"...", key: value ...}. Fields are
 * key/value pairs given as strings; values are JSON-escaped strings, or numbers where the
 * caller marks the key (LOG_NUMBER). Nothing secret may be passed here: the
 * callers log a token only as its token_id (first 8 hex digits of its cache key). */
#ifndef TOKENGATE_LOG_H
#define TOKENGATE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Sets the minimum level written. Call before threads start. */
void log_set_level(log_level level);

/* Writes one line: msg plus NULL-terminated (key, value) string pairs. A NULL value is
 * written as JSON null. A key that starts with LOG_NUMBER ("#") is written without it, and
 * its value as a JSON number ("workers":2) when the value is one by JSON's grammar, else as
 * a string: a log line is always valid JSON, and a field's type never depends on luck. Thread-safe: the line is
 * formatted in a local buffer (truncated at 4 KiB) and written with one write(2). */
void log_event(log_level level, const char *msg, ...);

/* Writes one line whose caller-supplied fields go in a nested object,
 * "fields":{"k":"v",...}, so that they can never pose as the line's own keys (tg.log).
 * keys and values are n strings each. */
void log_event_fields(log_level level, const char *msg, const char *source, const char *const *keys,
                      const char *const *values, size_t n);

/* Rate limit for a message that can repeat at machine speed (accept() failing with
 * EMFILE): at most one line per interval, which reports how many were held back. Owned by
 * the caller, used from one thread. */
typedef struct log_ratelimit {
    int64_t interval_ms;
    int64_t last_ms;     /* when the last line was let through */
    uint64_t suppressed; /* occurrences held back since then */
    bool started;
} log_ratelimit;

/* An occurrence at now_ms (any monotonic clock): returns true when a line should be
 * written now, with *held_back set to the occurrences suppressed since the previous line;
 * false (and counted) otherwise. */
bool log_ratelimit_allow(log_ratelimit *rl, int64_t now_ms, uint64_t *held_back);
/* Marks a key whose value is a number: log_info("listening", LOG_NUMBER "workers", "2", NULL). */
#define LOG_NUMBER "#"

#define log_info(...) log_event(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_event(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_event(LOG_ERROR, __VA_ARGS__)
#define log_debug(...) log_event(LOG_DEBUG, __VA_ARGS__)

#endif
