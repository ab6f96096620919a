/* policy_validate_isolated: a policy file is loaded in a separate process, so even a load that
 * kills its process leaves the caller running with a clear reason, and a policy that loads
 * or fails normally is reported as the in-process load would. The crash is real: the test
 * lowers RLIMIT_STACK so that a gsub recursion the sandbox allows (below its depth limit)
 * overflows the child's stack. */
#include "policy.h"
#include "unit.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#define MUST(cond)                                                                                                     \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: setup failed: %s\n", __FILE__, __LINE__, #cond);                                   \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

static policy_source *source_of(const char *text)
{
    char path[] = "/tmp/tokengate-isolation-XXXXXX";
    int fd = mkstemp(path);
    MUST(fd >= 0);
    MUST(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    char err[256];
    policy_source *src = policy_source_read(path, err, sizeof(err));
    unlink(path);
    MUST(src != NULL);
    return src;
}

static void test_outcomes(void)
{
    policy_limits limits = {.max_instructions = 1000000, .max_memory_bytes = 16u << 20};
    char err[1024];
    policy_source *good = source_of("return { authorize = function() return require('tokengate').allow() end }");
    CHECK_EQ_INT(policy_validate_isolated(good, &limits, err, sizeof(err)), 0);
    policy_source_unref(good);

    policy_source *broken = source_of("return { authorize = function( end }");
    CHECK_EQ_INT(policy_validate_isolated(broken, &limits, err, sizeof(err)), -1);
    CHECK(strstr(err, "tokengate-isolation-") != NULL && strstr(err, ":1:") != NULL);
    policy_source_unref(broken);

    policy_source *loop = source_of("while true do end");
    CHECK_EQ_INT(policy_validate_isolated(loop, &limits, err, sizeof(err)), -1);
    CHECK(strstr(err, "instruction budget") != NULL);
    policy_source_unref(loop);
}

static void test_crash_is_contained(void)
{
    policy_limits limits = {.max_instructions = 100000000, .max_memory_bytes = 64u << 20};
    /* 90 nested gsub callbacks: under the sandbox's depth limit (100), about 1 MiB of C
     * stack, more than the 128 KiB the child may have. */
    policy_source *deep =
        source_of("local n = 0\n"
                  "local function f() n = n + 1 if n < 90 then return (('ab'):gsub('.', f)) end return 'x' end\n"
                  "f()\n"
                  "return { authorize = function() return require('tokengate').allow() end }");
    struct rlimit saved, small = {.rlim_cur = 128 * 1024, .rlim_max = RLIM_INFINITY};
    REQUIRE(getrlimit(RLIMIT_STACK, &saved) == 0);
    small.rlim_max = saved.rlim_max;
    REQUIRE(setrlimit(RLIMIT_STACK, &small) == 0);
    char err[1024] = "";
    int rc = policy_validate_isolated(deep, &limits, err, sizeof(err));
    setrlimit(RLIMIT_STACK, &saved);
    CHECK_EQ_INT(rc, -1);
    /* A signal (SIGSEGV); under AddressSanitizer, its stack-overflow report and exit 1. */
    CHECK(strstr(err, "killed the checking process (signal") != NULL ||
          strstr(err, "ended the checking process (exit status") != NULL);
    fprintf(stderr, "contained: %s\n", err);
    /* With its normal stack the same file loads: the sandbox allowed it. */
    CHECK_EQ_INT(policy_validate_isolated(deep, &limits, err, sizeof(err)), 0);
    policy_source_unref(deep);
}

int main(int argc, char **argv)
{
    /* The checking process policy_validate_isolated starts is this binary again. */
    if (argc > 1 && strcmp(argv[1], POLICY_VALIDATE_ARG) == 0) return policy_validate_main(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    RUN(test_outcomes);
    RUN(test_crash_is_contained);
    fprintf(stderr, "%d checks, %d failures\n", unit_checks, unit_failures);
    return unit_failures ? 1 : 0;
}
