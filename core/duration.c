/* duration.c owns parsing and printing of Go-style durations. */
#include "duration.h"

#include <stdio.h>
#include <string.h>

#define DURATION_MAX_MS (10LL * 365 * 24 * 3600 * 1000)

/* Unit lengths in nanoseconds. */
static const struct duration_unit {
    const char *name;
    int64_t ns;
} duration_units[] = {
    {"ns", 1LL},
    {"us", 1000LL},
    {"ms", 1000000LL},
    {"s", 1000000000LL},
    {"m", 60LL * 1000000000LL},
    {"h", 3600LL * 1000000000LL},
};

int duration_parse(const char *s, int64_t *out_ms)
{
    if (!s || !*s) return -1;
    if (strcmp(s, "0") == 0) {
        *out_ms = 0;
        return 0;
    }
    /* Accumulated in nanoseconds as a long double: callers need millisecond precision. */
    long double total_ns = 0;
    const char *p = s;
    while (*p) {
        long double value = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            value = value * 10 + (*p - '0');
            p++;
            digits++;
            if (value > 1e15L) return -1;
        }
        if (*p == '.') {
            p++;
            long double scale = 0.1L;
            while (*p >= '0' && *p <= '9') {
                value += (*p - '0') * scale;
                scale /= 10;
                p++;
                digits++;
            }
        }
        if (digits == 0) return -1;
        /* First prefix match wins; the table lists "ms" before "m". */
        const struct duration_unit *unit = NULL;
        for (size_t i = 0; i < sizeof(duration_units) / sizeof(duration_units[0]); i++) {
            if (strncmp(p, duration_units[i].name, strlen(duration_units[i].name)) == 0) {
                unit = &duration_units[i];
                break;
            }
        }
        if (!unit) return -1;
        p += strlen(unit->name);
        total_ns += value * (long double)unit->ns;
        if (total_ns / 1000000.0L > (long double)DURATION_MAX_MS) return -1;
    }
    *out_ms = (int64_t)(total_ns / 1000000.0L);
    return 0;
}

void duration_format(int64_t ms, char *out, size_t cap)
{
    if (ms <= 0) {
        snprintf(out, cap, "0s");
        return;
    }
    if (ms % 1000 != 0) {
        snprintf(out, cap, "%lldms", (long long)ms);
        return;
    }
    long long s = ms / 1000, h = s / 3600, m = (s % 3600) / 60, sec = s % 60;
    size_t used = 0;
    out[0] = '\0';
    if (h) used += (size_t)snprintf(out + used, cap - used, "%lldh", h);
    if (m && used < cap) used += (size_t)snprintf(out + used, cap - used, "%lldm", m);
    if (sec && used < cap) snprintf(out + used, cap - used, "%llds", sec);
}
