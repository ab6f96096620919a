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
    CHECK_EQ_INT(parsed("5"), -1);  /* a unit is required except for "0" */
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

int main(void)
{
    RUN(test_units);
    RUN(test_rejects);
    RUN(test_format);
    return UNIT_EXIT();
}
