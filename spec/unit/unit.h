/* A tiny test harness for the C unit tests: CHECK records a failure and goes on; each test
 * binary's main() runs its cases and exits non-zero if any check failed. */
#ifndef TOKENGATE_UNIT_H
#define TOKENGATE_UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_failures;
static int unit_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        unit_checks++;                                                                             \
        if (!(cond)) {                                                                             \
            unit_failures++;                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long unit_a_ = (long long)(a), unit_b_ = (long long)(b);                              \
        unit_checks++;                                                                             \
        if (unit_a_ != unit_b_) {                                                                  \
            unit_failures++;                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__,  \
                    #a, #b, unit_a_, unit_b_);                                                     \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *unit_a_ = (a), *unit_b_ = (b);                                                 \
        unit_checks++;                                                                             \
        if (!unit_a_ || !unit_b_ || strcmp(unit_a_, unit_b_) != 0) {                               \
            unit_failures++;                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s == \"%s\" (got \"%s\")\n", __FILE__,          \
                    __LINE__, #a, unit_b_ ? unit_b_ : "(null)", unit_a_ ? unit_a_ : "(null)");     \
        }                                                                                          \
    } while (0)

#define RUN(test)                                                                                  \
    do {                                                                                           \
        int before_ = unit_failures;                                                               \
        test();                                                                                    \
        printf("%s %s\n", unit_failures == before_ ? "ok  " : "FAIL", #test);                      \
    } while (0)

#define UNIT_EXIT()                                                                                \
    (printf("%d checks, %d failed\n", unit_checks, unit_failures), unit_failures ? 1 : 0)

#endif
