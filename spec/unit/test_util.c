/* Unit tests for core/util.h: the monotonic clock, free_secret, and BUG_ON (which must abort
 * the process, in every build, when its invariant is false). */
#include "unit.h"
#include "util.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_monotonic_ms(void)
{
    int64_t a = monotonic_ms();
    struct timespec pause = {0, 2 * 1000 * 1000};
    nanosleep(&pause, NULL);
    int64_t b = monotonic_ms();
    CHECK(a > 0);
    CHECK(b >= a + 2); /* a lower bound only: a busy machine may sleep longer */
}

static void test_free_secret(void)
{
    free_secret(NULL, 10); /* no-op */
    char *s = strdup("a secret");
    REQUIRE(s != NULL);
    free_secret(s, strlen(s)); /* under ASan: a leak or double free would be reported */
}

/* Runs BUG_ON(cond) in a child; returns the signal it died of, 0 if it exited normally. */
static int bug_on_in_child(int cond)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        BUG_ON(cond);
        _exit(0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static void test_bug_on(void)
{
    CHECK_EQ_INT(bug_on_in_child(0), 0);
    CHECK_EQ_INT(bug_on_in_child(1), SIGABRT);
}

int main(void)
{
    RUN(test_monotonic_ms);
    RUN(test_free_secret);
    RUN(test_bug_on);
    return UNIT_EXIT();
}
