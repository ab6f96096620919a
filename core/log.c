/* log.c owns the process's log output: JSON lines on stderr. */
#include "log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

/* The only mutable logging state; set once at start-up. */
static struct log_settings {
    log_level min_level;
} log_settings = {LOG_INFO};

void log_set_level(log_level level)
{
    log_settings.min_level = level;
}

static const char *log_level_name(log_level level)
{
    switch (level) {
    case LOG_DEBUG: return "debug";
    case LOG_INFO: return "info";
    case LOG_WARN: return "warn";
    default: return "error";
    }
}

/* Appends s JSON-escaped; never writes past end. Returns the new position. */
static char *append_json_string(char *pos, char *end, const char *s)
{
    if (pos < end) *pos++ = '"';
    for (; *s && pos < end; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            if (end - pos < 2) break;
            *pos++ = '\\';
            *pos++ = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            if (end - pos < 6) break;
            pos += snprintf(pos, 7, "\\u%04x", c);
        } else {
            *pos++ = (char)c;
        }
    }
    if (pos < end) *pos++ = '"';
    return pos;
}

static char *append_raw(char *pos, char *end, const char *s)
{
    while (*s && pos < end) *pos++ = *s++;
    return pos;
}

/* Writes {"ts":...,"level":...,"msg":... into line; returns the position after it. */
static char *begin_line(char *line, char *end, log_level level, const char *msg)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[96];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000));
    char *pos = line;
    pos = append_raw(pos, end, "{\"ts\":\"");
    pos = append_raw(pos, end, ts);
    pos = append_raw(pos, end, "\",\"level\":\"");
    pos = append_raw(pos, end, log_level_name(level));
    pos = append_raw(pos, end, "\",\"msg\":");
    return append_json_string(pos, end, msg);
}

/* True when s is a number by JSON's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
 * (no "+1", "01", ".5", "1.", "NaN" or "inf"), and short enough to be a count or a time. */
static bool is_json_number(const char *s)
{
    const char *p = s;
    if (*p == '-') p++;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (*p >= '0' && *p <= '9') p++;
    else
        return false;
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9')) return false;
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!(*p >= '0' && *p <= '9')) return false;
        while (*p >= '0' && *p <= '9') p++;
    }
    return *p == '\0' && p - s <= 32;
}

/* Appends ,"key":"value" (value NULL: null; key marked LOG_NUMBER: a number if it is one). */
static char *append_pair(char *pos, char *end, const char *key, const char *value)
{
    bool number = key[0] == LOG_NUMBER[0];
    if (number) key++;
    pos = append_raw(pos, end, ",");
    pos = append_json_string(pos, end, key);
    pos = append_raw(pos, end, ":");
    if (!value) return append_raw(pos, end, "null");
    /* A number cut off at the end of the buffer would change its value: only whole. */
    if (number && is_json_number(value) && (size_t)(end - pos) > strlen(value)) return append_raw(pos, end, value);
    return append_json_string(pos, end, value);
}

/* Closes the object (end leaves room for it) and writes the line with one write(2). */
static void finish_line(char *line, char *pos)
{
    *pos++ = '}';
    *pos++ = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, (size_t)(pos - line));
    (void)ignored;
}

void log_event(log_level level, const char *msg, ...)
{
    if (level < log_settings.min_level) return;
    char line[LOG_LINE_MAX];
    char *end = line + sizeof(line) - 2; /* room for '}' and '\n' */
    char *pos = begin_line(line, end, level, msg);
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (!key) break;
        pos = append_pair(pos, end, key, va_arg(ap, const char *));
    }
    va_end(ap);
    finish_line(line, pos);
}

void log_event_fields(log_level level, const char *msg, const char *source, const char *const *keys,
                      const char *const *values, size_t n)
{
    if (level < log_settings.min_level) return;
    char line[LOG_LINE_MAX];
    char *end = line + sizeof(line) - 3; /* room for '}', '}' and '\n' */
    char *pos = begin_line(line, end, level, msg);
    pos = append_pair(pos, end, "source", source);
    pos = append_raw(pos, end, ",\"fields\":{");
    for (size_t i = 0; i < n; i++) {
        if (i) pos = append_raw(pos, end, ",");
        pos = append_json_string(pos, end, keys[i]);
        pos = append_raw(pos, end, ":");
        pos = append_json_string(pos, end, values[i]);
    }
    *pos++ = '}';
    finish_line(line, pos);
}

bool log_ratelimit_allow(log_ratelimit *rl, int64_t now_ms, uint64_t *held_back)
{
    if (rl->started && now_ms - rl->last_ms < rl->interval_ms) {
        rl->suppressed++;
        return false;
    }
    *held_back = rl->suppressed;
    rl->suppressed = 0;
    rl->last_ms = now_ms;
    rl->started = true;
    return true;
}
