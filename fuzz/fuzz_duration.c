/* fuzz_duration: duration_parse and duration_format (core/duration.h).
 *
 * The input is the text to parse (it ends at the first NUL). Its first 8 bytes, read as a
 * little-endian int64, are also formatted directly.
 *
 * Invariants (abort on violation):
 *  - success implies 0 <= ms <= 10 years (the documented bound); failure leaves *out untouched;
 *  - the answer agrees with an exact reference parser written here (integer arithmetic,
 *    no floating point): malformed text → -1; a well-formed value whose exact size is at
 *    least 1 ms below 10 years → success; at least 1 ms above → -1; on success the value is
 *    within 1 ms of the exact floor (the implementation accumulates in long double).
 *    Two known deviations from the header are tolerated unless TOKENGATE_FUZZ_STRICT is
 *    defined (see fuzz/README.md): an integer part above 1e15 is rejected whatever its
 *    unit, and decimal fractions may come out 1 ms low ("0.001s" → 0);
 *  - round trip: duration_format(ms) is canonical Go-style text ("0s", "<n>ms" or
 *    [<h>h][<m>m][<s>s]) and parses back to exactly ms, for parsed values and for int64
 *    values taken from the input;
 *  - duration_format into a smaller buffer writes the NUL-terminated prefix that fits
 *    (exact-size heap buffers, so ASan sees any overflow). */
#include "duration.h"
#include "fuzz_common.h"

#define MAX_MS (10LL * 365 * 24 * 3600 * 1000)

__extension__ typedef __int128 i128; /* GCC/Clang builtin type */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

enum ref_status { REF_MALFORMED, REF_VALID, REF_INT_LIMIT };

/* Exact reference. On REF_VALID/REF_INT_LIMIT: the exact value in ns lies in
 * [*lo_ns, *lo_ns + *slack_ns). */
static enum ref_status reference(const char *s, i128 *lo_ns, i128 *slack_ns)
{
    static const struct {
        const char *name;
        long long ns;
    } units[] = {{"ns", 1},           {"us", 1000},         {"ms", 1000000},
                 {"s", 1000000000LL}, {"m", 60000000000LL}, {"h", 3600000000000LL}};
    *lo_ns = 0;
    *slack_ns = 0;
    if (s[0] == '\0') return REF_MALFORMED;
    if (strcmp(s, "0") == 0) return REF_VALID;
    bool int_limit = false;
    const char *p = s;
    while (*p) {
        i128 ipart = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            /* Exact up to 1e20 (ten years is 3.2e17 ns); beyond, only "far above ten
             * years" matters: saturate at 1e21 (no i128 overflow for fuzzer-sized input). */
            const i128 exact_limit = (i128)100000000000000000LL * 1000;
            if (ipart <= exact_limit)
                ipart = ipart * 10 + (*p - '0');
            else
                ipart = exact_limit * 10;
            p++;
            digits++;
        }
        if (ipart > (i128)1000000000000000LL) int_limit = true; /* the old parser's limit */
        long long frac = 0, scale = 1;
        bool frac_rest = false;
        if (*p == '.') {
            p++;
            while (*p >= '0' && *p <= '9') {
                if (scale < 1000000000000000000LL) {
                    frac = frac * 10 + (*p - '0');
                    scale *= 10;
                } else if (*p != '0') {
                    frac_rest = true;
                }
                p++;
                digits++;
            }
        }
        if (digits == 0) return REF_MALFORMED;
        long long unit = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t n = strlen(units[i].name);
            if (strncmp(p, units[i].name, n) == 0) {
                unit = units[i].ns;
                p += n;
                break;
            }
        }
        if (!unit) return REF_MALFORMED;
        /* ipart is capped near 1e15 and the sum cannot overflow 128 bits for any input
         * libFuzzer produces (< 2^20 components of < 2^92 each). */
        i128 frac_ns = (i128)frac * unit;
        *lo_ns += ipart * unit + frac_ns / scale;
        *slack_ns += 1 + (frac_rest ? 1 : 0); /* the dropped remainder is < 1 ns each */
    }
    return int_limit ? REF_INT_LIMIT : REF_VALID;
}

/* True when text is canonical duration_format output. */
static bool canonical(const char *t)
{
    if (strcmp(t, "0s") == 0) return true;
    const char *p = t;
    size_t len = strlen(t);
    if (len > 2 && strcmp(t + len - 2, "ms") == 0) {
        if (t[0] == '0') return false;
        for (size_t i = 0; i < len - 2; i++)
            if (t[i] < '0' || t[i] > '9') return false;
        return true;
    }
    static const char order[] = "hms";
    size_t next = 0;
    bool any = false;
    while (*p) {
        if (*p < '1' || *p > '9') return false; /* no leading zeros, no zero parts */
        while (*p >= '0' && *p <= '9') p++;
        const char *u = strchr(order + next, *p);
        if (!*p || !u) return false;
        next = (size_t)(u - order) + 1;
        p++;
        any = true;
    }
    return any;
}

static void check_format(int64_t ms)
{
    char full[64];
    duration_format(ms, full, sizeof(full));
    size_t full_len = strlen(full);
    FUZZ_CHECK(full_len < sizeof(full) - 1);
    FUZZ_CHECK(canonical(full));
    if (ms <= 0) FUZZ_CHECK(strcmp(full, "0s") == 0);

    int64_t back = -42;
    int rc = duration_parse(full, &back);
    if (ms <= 0) {
        FUZZ_CHECK(rc == 0 && back == 0);
    } else if (ms <= MAX_MS) {
        FUZZ_CHECK(rc == 0 && back == ms);
    } else {
        FUZZ_CHECK(rc == -1 && back == -42);
    }

    /* Every smaller buffer gets the prefix that fits, NUL-terminated. */
    for (size_t cap = 1; cap <= full_len + 1; cap++) {
        char *out = fuzz_xmalloc(cap);
        duration_format(ms, out, cap);
        size_t want = full_len < cap - 1 ? full_len : cap - 1;
        FUZZ_CHECK(memchr(out, '\0', cap) == out + want);
        FUZZ_CHECK(memcmp(out, full, want) == 0);
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_copy_cstr(data, size);
    int64_t ms = -42;
    int rc = duration_parse(s, &ms);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        FUZZ_CHECK(ms >= 0 && ms <= MAX_MS);
    } else {
        FUZZ_CHECK(ms == -42);
    }

    i128 lo_ns, slack_ns;
    enum ref_status ref = reference(s, &lo_ns, &slack_ns);
    const i128 max_ns = (i128)MAX_MS * 1000000;
    if (ref == REF_MALFORMED) {
        FUZZ_CHECK(rc == -1);
    } else {
        bool in_range = lo_ns + slack_ns <= max_ns - 1000000;
        if (ref == REF_VALID && in_range) FUZZ_CHECK(rc == 0);
        if (lo_ns > max_ns + 1000000) FUZZ_CHECK(rc == -1);
        if (rc == 0) {
            i128 ms_lo = lo_ns / 1000000, ms_hi = (lo_ns + slack_ns) / 1000000;
            FUZZ_CHECK((i128)ms >= ms_lo - 1 && (i128)ms <= ms_hi + 1);
#ifdef TOKENGATE_FUZZ_STRICT
            /* The header's exact contract: the floor of the exact value ("0.001s" is 1 ms). */
            if (ms_lo == ms_hi) FUZZ_CHECK((i128)ms == ms_lo);
#endif
        }
#ifdef TOKENGATE_FUZZ_STRICT
        /* Only "above 10 years" may be refused, whatever the unit ("1000000000000001ns"). */
        if (in_range) FUZZ_CHECK(rc == 0);
#endif
    }

    if (rc == 0) check_format(ms);
    if (size >= 8) {
        uint64_t v = 0;
        for (int i = 7; i >= 0; i--) v = v << 8 | data[i];
        check_format((int64_t)v);
        check_format((int64_t)(v % (uint64_t)(MAX_MS + 2)));
    }
    free(s);
    return 0;
}
