/* duration.c owns the units of flag values: Go-style durations and byte quantities. */
#include "duration.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* 128-bit products of a fraction and a unit (GCC and Clang's builtin type; not ISO C). */
__extension__ typedef unsigned __int128 u128;

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
    /* Exact integer arithmetic in nanoseconds, as Go does: a fraction is added as
     * unit * digits / 10^k, so "0.001s" is exactly 1 ms. */
    const int64_t max_ns = DURATION_MAX_MS * 1000000LL;
    int64_t total_ns = 0;
    const char *p = s;
    while (*p) {
        const char *int_start = p;
        uint64_t whole = 0;
        bool whole_overflow = false;
        while (*p >= '0' && *p <= '9') {
            if (whole > (UINT64_MAX - 9) / 10)
                whole_overflow = true;
            else
                whole = whole * 10 + (uint64_t)(*p - '0');
            p++;
        }
        size_t int_digits = (size_t)(p - int_start);
        uint64_t frac = 0, scale = 1;
        size_t frac_digits = 0;
        if (*p == '.') {
            p++;
            while (*p >= '0' && *p <= '9') {
                if (scale <= UINT64_MAX / 100) { /* digits beyond ~18 cannot matter at ns precision */
                    frac = frac * 10 + (uint64_t)(*p - '0');
                    scale *= 10;
                }
                p++;
                frac_digits++;
            }
        }
        if (int_digits + frac_digits == 0) return -1;
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
        uint64_t unit_ns = (uint64_t)unit->ns;
        if (whole_overflow || whole > (uint64_t)max_ns / unit_ns) return -1;
        uint64_t part = whole * unit_ns;
        /* frac < scale <= 1e18 and unit_ns <= 3.6e12: multiply in 128 bits. */
        part += (uint64_t)(((u128)frac * unit_ns) / scale);
        if (part > (uint64_t)(max_ns - total_ns)) return -1;
        total_ns += (int64_t)part;
    }
    *out_ms = total_ns / 1000000;
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

/* Quantity suffixes, longest first so that "Mi" is not read as "M" followed by junk. */
static const struct quantity_suffix {
    const char *name;
    uint64_t multiplier;
} quantity_suffixes[] = {
    {"Ki", 1ULL << 10}, {"Mi", 1ULL << 20}, {"Gi", 1ULL << 30},   {"Ti", 1ULL << 40},
    {"k", 1000ULL},     {"M", 1000000ULL},  {"G", 1000000000ULL}, {"T", 1000000000000ULL},
};

int quantity_parse_bytes(const char *s, uint64_t max, uint64_t *out_bytes)
{
    if (!s || !*s) return -1;
    const char *p = s;
    /* Digits beyond 19 would overflow; a quantity that long is refused anyway. */
    uint64_t whole = 0;
    size_t int_digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (whole > (UINT64_MAX - 9) / 10) return -1;
        whole = whole * 10 + (uint64_t)(*p - '0');
        p++;
        int_digits++;
    }
    uint64_t frac = 0, scale = 1;
    size_t frac_digits = 0;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (frac_digits == 18) return -1; /* more precision than any byte count needs */
            frac = frac * 10 + (uint64_t)(*p - '0');
            scale *= 10;
            p++;
            frac_digits++;
        }
        if (frac_digits == 0) return -1; /* "1." */
    }
    if (int_digits == 0) return -1; /* ".5Mi", "Mi", "-1" */
    uint64_t multiplier = 1;
    if (*p) {
        const struct quantity_suffix *suffix = NULL;
        for (size_t i = 0; i < sizeof(quantity_suffixes) / sizeof(quantity_suffixes[0]); i++) {
            if (strcmp(p, quantity_suffixes[i].name) == 0) {
                suffix = &quantity_suffixes[i];
                break;
            }
        }
        if (!suffix) return -1;
        multiplier = suffix->multiplier;
    }
    if (whole > max / multiplier) return -1;
    uint64_t bytes = whole * multiplier;
    /* frac < scale <= 1e18 and multiplier <= 2^40: multiply in 128 bits, exactly. */
    u128 frac_bytes = (u128)frac * multiplier;
    if (frac_bytes % scale != 0) return -1; /* "1.5" bytes, "0.1Ki" */
    uint64_t extra = (uint64_t)(frac_bytes / scale);
    if (extra > max - bytes) return -1;
    *out_bytes = bytes + extra;
    return 0;
}
