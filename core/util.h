/* Small helpers shared by every module: the monotonic clock, freeing memory that held a
 * secret, and invariant checks. Header-only (static inline), no state. */
#ifndef TOKENGATE_UTIL_H
#define TOKENGATE_UTIL_H

#include <openssl/crypto.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Milliseconds of CLOCK_MONOTONIC: for deadlines, TTLs and intervals, never wall time. */
static inline int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wipes the len bytes at p (a token, a credential, a body that echoes one) and frees them.
 * NULL is a no-op. */
static inline void free_secret(void *p, size_t len)
{
    if (!p) return;
    OPENSSL_cleanse(p, len);
    free(p);
}

_Noreturn static inline void bug_on_failed(const char *cond, const char *file, int line)
{
    fprintf(stderr, "{\"level\":\"fatal\",\"msg\":\"invariant violated\",\"cond\":\"%s\",\"at\":\"%s:%d\"}\n", cond,
            file, line);
    fflush(stderr);
    abort();
}

/* An invariant of the code itself, true whatever the input, checked in every build (after
 * HAProxy's BUG_ON): when it is false the state is not what the code was written for, so
 * the process says where and aborts rather than go on and answer wrongly. Never use it for
 * input validation: bad input is refused, not a bug. cond must not have side effects. */
#define BUG_ON(cond)                                                                                                   \
    do {                                                                                                               \
        if (__builtin_expect(!!(cond), 0)) bug_on_failed(#cond, __FILE__, __LINE__);                                   \
    } while (0)

#endif
