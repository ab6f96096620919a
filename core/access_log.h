/* The decision log (--access-log): one JSON line per answered request, saying who asked
 * what, what was decided and by which step, so that "who called /hooks/payments at 03:12
 * and why was it allowed?" has an answer (docs/OPERATIONS.md).
 *
 * Never written: a token or any part of it, the query string, a header value. The path is
 * the one the policy judged (the forwarded headers applied), without its query.
 *
 * Threads: the access_log itself (the file descriptor, the sampling rate) is shared and
 * read-only but for access_log_reopen, which swaps the file under the same descriptor
 * number (dup2) so a worker's write(2) never reaches a closed or reused descriptor. Each
 * worker owns an access_log_buffer: lines are formatted into it and written in whole
 * lines, at most PIPE_BUF bytes per write(2) on an O_APPEND descriptor, so lines of
 * different workers never interleave (in a file or in a pipe to the container runtime). */
#ifndef TOKENGATE_ACCESS_LOG_H
#define TOKENGATE_ACCESS_LOG_H

#include "metrics.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ACCESS_LOG_LINE_MAX 3584     /* one line at most (the fields are cut to fit) */
#define ACCESS_LOG_BUFFER_BYTES 4096 /* PIPE_BUF: one write(2) is atomic on a pipe */

typedef struct access_log access_log;

/* Opens target: "stdout", or a file path (created 0640, appended to). sample_allowed is the
 * share of allowed (2xx) answers written, 0 to 1; every other answer is always written.
 * Returns NULL with a message in err. */
access_log *access_log_open(const char *target, double sample_allowed, char *err, size_t err_cap);

/* Reopens a file target at the same path (after logrotate renamed it): SIGUSR1. A no-op
 * for stdout. Returns 0, or -1 with a message in err (the old file stays in use). */
int access_log_reopen(access_log *log, char *err, size_t err_cap);

void access_log_free(access_log *log);

/* Which step decided the answer. */
typedef enum {
    DECISION_REQUEST = 0,         /* refused before any step: header count, URI, several tokens */
    DECISION_ANONYMOUS,           /* no bearer token: 401, or the policy's anonymous() allowed it */
    DECISION_CACHE,               /* a cached verdict (TokenReview or SubjectAccessReview) */
    DECISION_TOKENREVIEW,         /* a TokenReview answered (or failed) for this request */
    DECISION_SUBJECTACCESSREVIEW, /* a SubjectAccessReview answered (or failed) for this request */
    DECISION_POLICY,              /* the policy's authorize() */
    DECISION_JWT_PREVERIFY,       /* --jwt-preverify refused a forged or expired JWT, no TokenReview */
} decision_source;

const char *decision_source_name(decision_source source);

/* One answered request. Strings may be NULL (written as null); none is kept. */
typedef struct access_log_entry {
    const char *method;
    const char *path;
    size_t path_len;
    int status;
    const char *user;
    size_t user_len;
    const char *uid;
    size_t uid_len;
    const char *namespace_name; /* a ServiceAccount's namespace */
    size_t namespace_len;
    decision_source source;
    const char *reason; /* why it was refused (status >= 400); NULL when allowed */
    double latency_s;
    int cache_hit;             /* the token's verdict came from the cache: 1, 0, or -1 (no token) */
    const char *policy_sha256; /* the worker's running policy, NULL without one */
} access_log_entry;

/* One worker's buffer and sampling state. */
typedef struct access_log_buffer {
    uint64_t rng;               /* xorshift64* state for sampling; never 0 */
    time_t stamp_second;        /* the second stamp_text is for */
    char stamp_text[32];        /* "2026-12-07T03:12:45" */
    metric_counter written;     /* lines handed to write(2) successfully */
    metric_counter sampled_out; /* allowed answers left out by --access-log-sample-allowed */
    metric_counter dropped;     /* lines lost to a failed or short write */
    size_t len;
    uint64_t lines; /* whole lines in data */
    char data[ACCESS_LOG_BUFFER_BYTES];
} access_log_buffer;

void access_log_buffer_init(access_log_buffer *buf, uint64_t seed);

/* Formats e into buf (writing buf out first when the line does not fit), unless it is an
 * allowed answer that sampling leaves out. */
void access_log_add(const access_log *log, access_log_buffer *buf, const access_log_entry *e);

/* Writes what buf holds. Called on a timer and before the worker exits. */
void access_log_flush(const access_log *log, access_log_buffer *buf);

#endif
