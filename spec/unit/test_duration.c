/* Unit tests: Go-style duration parsing and formatting. */
#include "duration.h"
#include "unit.h"

#include <stdint.h>

static int64_t parsed(const char *s)
{
    int64_t ms = -12345;
    return duration_parse(s, &ms) == 0 ? ms : -1;
}

static void test_units(void)
{
    CHECK_EQ_INT(parsed("0"), 0);
    CHECK_EQ_INT(parsed("500ms"), 500);
    CHECK_EQ_INT(parsed("30s"), 30000);
    CHECK_EQ_INT(parsed("2m"), 120000);
    CHECK_EQ_INT(parsed("1h"), 3600000);
    CHECK_EQ_INT(parsed("1h30m"), 5400000);
    CHECK_EQ_INT(parsed("1m30s500ms"), 90500);
    CHECK_EQ_INT(parsed("1.5s"), 1500);
    CHECK_EQ_INT(parsed("1500us"), 1);
    CHECK_EQ_INT(parsed("999999ns"), 0);
    CHECK_EQ_INT(parsed("0s"), 0);
    /* Fractions are exact (found by fuzz_duration: floating point made these 1 ms low). */
    CHECK_EQ_INT(parsed("0.001s"), 1);
    CHECK_EQ_INT(parsed("0.007s"), 7);
    CHECK_EQ_INT(parsed("2.3s"), 2300);
    /* Large counts of small units are fine up to ten years. */
    CHECK_EQ_INT(parsed("1000000000000001ns"), 1000000000);
    CHECK_EQ_INT(parsed("87600h"), 315360000000LL);
}

static void test_rejects(void)
{
    CHECK_EQ_INT(parsed(""), -1);
    CHECK_EQ_INT(parsed("5"), -1); /* a unit is required except for "0" */
    CHECK_EQ_INT(parsed("s"), -1);
    CHECK_EQ_INT(parsed("-1s"), -1);
    CHECK_EQ_INT(parsed("1d"), -1);
    CHECK_EQ_INT(parsed("1 s"), -1);
    CHECK_EQ_INT(parsed("1s "), -1);
    CHECK_EQ_INT(parsed("."), -1);
    CHECK_EQ_INT(parsed("99999999999999999h"), -1);
    CHECK_EQ_INT(parsed("100000h"), -1); /* over ten years */
    CHECK_EQ_INT(parsed("87601h"), -1);
}

static void test_format(void)
{
    char buf[32];
    duration_format(120000, buf, sizeof(buf));
    CHECK_STR(buf, "2m");
    duration_format(90000, buf, sizeof(buf));
    CHECK_STR(buf, "1m30s");
    duration_format(500, buf, sizeof(buf));
    CHECK_STR(buf, "500ms");
    duration_format(0, buf, sizeof(buf));
    CHECK_STR(buf, "0s");
    duration_format(3600000, buf, sizeof(buf));
    CHECK_STR(buf, "1h");
}

static void test_quantities(void)
{
    uint64_t v = 0;
    const uint64_t max = 1ULL << 40;
    CHECK_EQ_INT(quantity_parse_bytes("0", max, &v), 0);
    CHECK_EQ_INT(v, 0);
    CHECK_EQ_INT(quantity_parse_bytes("16384", max, &v), 0);
    CHECK_EQ_INT(v, 16384);
    CHECK_EQ_INT(quantity_parse_bytes("16Ki", max, &v), 0);
    CHECK_EQ_INT(v, 16384);
    CHECK_EQ_INT(quantity_parse_bytes("10Mi", max, &v), 0);
    CHECK_EQ_INT(v, 10485760);
    CHECK_EQ_INT(quantity_parse_bytes("1Gi", max, &v), 0);
    CHECK_EQ_INT(v, 1073741824);
    CHECK_EQ_INT(quantity_parse_bytes("1Ti", max, &v), 0);
    CHECK_EQ_INT(v, 1ULL << 40);
    CHECK_EQ_INT(quantity_parse_bytes("500k", max, &v), 0);
    CHECK_EQ_INT(v, 500000);
    CHECK_EQ_INT(quantity_parse_bytes("10M", max, &v), 0);
    CHECK_EQ_INT(v, 10000000);
    CHECK_EQ_INT(quantity_parse_bytes("2G", max, &v), 0);
    CHECK_EQ_INT(v, 2000000000);
    CHECK_EQ_INT(quantity_parse_bytes("1.5Mi", max, &v), 0);
    CHECK_EQ_INT(v, 1572864);
    CHECK_EQ_INT(quantity_parse_bytes("0.5k", max, &v), 0);
    CHECK_EQ_INT(v, 500);
    /* Refused: no whole byte count, above max, not a Kubernetes spelling. */
    const char *bad[] = {"",
                         "Mi",
                         "-1",
                         "+1",
                         "1.",
                         ".5Ki",
                         "0.1Ki",
                         "1.5",
                         "16K",
                         "16KB",
                         "16kb",
                         "1 Mi",
                         "1Mi ",
                         "1e3",
                         "1Pi",
                         "2Ti",
                         "0x10",
                         "18446744073709551616",
                         "1.0000000000000000001Ki"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 12345;
        int rc = quantity_parse_bytes(bad[i], max, &v);
        CHECK_EQ_INT(rc, -1);
        CHECK_EQ_INT(v, 12345); /* untouched on error */
        if (rc != -1) fprintf(stderr, "    accepted \"%s\"\n", bad[i]);
    }
    CHECK_EQ_INT(quantity_parse_bytes("1Mi", 1024 * 1024 - 1, &v), -1);
    CHECK_EQ_INT(quantity_parse_bytes("1Mi", 1024 * 1024, &v), 0);
}

int main(void)
{
    RUN(test_units);
    RUN(test_rejects);
    RUN(test_format);
    RUN(test_quantities);
    return UNIT_EXIT();
}
