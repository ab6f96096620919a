/* A tiny test harness for the C unit tests: CHECK records a failure and goes on; each test
 * binary's main() runs its cases and exits non-zero if any check failed. */
#ifndef TOKENGATE_UNIT_H
#define TOKENGATE_UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_failures;
static int unit_checks;

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        unit_checks++;                                                                                                 \
        if (!(cond)) {                                                                                                 \
            unit_failures++;                                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                                   \
        }                                                                                                              \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                                             \
    do {                                                                                                               \
        long long unit_a_ = (long long)(a), unit_b_ = (long long)(b);                                                  \
        unit_checks++;                                                                                                 \
        if (unit_a_ != unit_b_) {                                                                                      \
            unit_failures++;                                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, #b, unit_a_,     \
                    unit_b_);                                                                                          \
        }                                                                                                              \
    } while (0)

#define CHECK_STR(a, b)                                                                                                \
    do {                                                                                                               \
        const char *unit_a_ = (a), *unit_b_ = (b);                                                                     \
        unit_checks++;                                                                                                 \
        if (!unit_a_ || !unit_b_ || strcmp(unit_a_, unit_b_) != 0) {                                                   \
            unit_failures++;                                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s == \"%s\" (got \"%s\")\n", __FILE__, __LINE__, #a,                \
                    unit_b_ ? unit_b_ : "(null)", unit_a_ ? unit_a_ : "(null)");                                       \
        }                                                                                                              \
    } while (0)

#define CHECK_MEM(a, b, n)                                                                                             \
    do {                                                                                                               \
        unit_checks++;                                                                                                 \
        if (memcmp((a), (b), (n)) != 0) {                                                                              \
            unit_failures++;                                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%zu bytes differ)\n", __FILE__, __LINE__, #a, #b,          \
                    (size_t)(n));                                                                                      \
        }                                                                                                              \
    } while (0)

/* Compares a (pointer, length) string that need not be NUL-terminated with a C string. */
#define CHECK_STRN(ptr, len, expected)                                                                                 \
    do {                                                                                                               \
        const char *unit_p_ = (ptr), *unit_e_ = (expected);                                                            \
        size_t unit_l_ = (size_t)(len);                                                                                \
        unit_checks++;                                                                                                 \
        if (!unit_p_ || unit_l_ != strlen(unit_e_) || memcmp(unit_p_, unit_e_, unit_l_) != 0) {                        \
            unit_failures++;                                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s == \"%s\" (got \"%.*s\")\n", __FILE__, __LINE__, #ptr, unit_e_,   \
                    unit_p_ ? (int)unit_l_ : 6, unit_p_ ? unit_p_ : "(null)");                                         \
        }                                                                                                              \
    } while (0)

/* Checks cond and returns from the (void) test function when it fails. cond is evaluated
 * exactly once (it often has side effects: a file written, a parse). */
#define REQUIRE(cond)                                                                                                  \
    do {                                                                                                               \
        int unit_ok_ = (cond) ? 1 : 0;                                                                                 \
        unit_checks++;                                                                                                 \
        if (!unit_ok_) {                                                                                               \
            unit_failures++;                                                                                           \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);                                 \
            return;                                                                                                    \
        }                                                                                                              \
    } while (0)

#define RUN(test)                                                                                                      \
    do {                                                                                                               \
        int before_ = unit_failures;                                                                                   \
        test();                                                                                                        \
        printf("%s %s\n", unit_failures == before_ ? "ok  " : "FAIL", #test);                                          \
    } while (0)

#define UNIT_EXIT() (printf("%d checks, %d failed\n", unit_checks, unit_failures), unit_failures ? 1 : 0)

#endif
