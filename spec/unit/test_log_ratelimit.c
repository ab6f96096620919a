/* Unit tests for log_ratelimit (log.c): one line per interval, with the count held back,
 * on an injected clock. */
#include "log.h"
#include "unit.h"

int main(void)
{
    log_ratelimit rl = {.interval_ms = 10000};
    uint64_t held = 99;
    CHECK(log_ratelimit_allow(&rl, 1000, &held)); /* the first occurrence is logged */
    CHECK_EQ_INT(held, 0);
    for (int i = 0; i < 1000; i++) CHECK(!log_ratelimit_allow(&rl, 1000 + i, &held));
    CHECK(!log_ratelimit_allow(&rl, 10999, &held)); /* still inside the interval */
    CHECK(log_ratelimit_allow(&rl, 11000, &held));  /* the interval is over */
    CHECK_EQ_INT(held, 1001);
    CHECK(!log_ratelimit_allow(&rl, 11001, &held));
    CHECK(log_ratelimit_allow(&rl, 50000, &held)); /* quiet for long: logged, 1 held back */
    CHECK_EQ_INT(held, 1);
    CHECK(!log_ratelimit_allow(&rl, 50001, &held));
    return UNIT_EXIT();
}
