/* accept_backoff.c: pausing a listener when accept() runs out of descriptors, and the
 * start-up RLIMIT_NOFILE check (see accept_backoff.h). */
#include "accept_backoff.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct accept_backoff {
    struct evconnlistener *listener;
    void *listener_arg; /* evhttp's argument on the listener: how the error callback finds us */
    struct event *resume;
    accept_backoff_options options;
    log_ratelimit log_limit;
    bool active;
};

/* libevent calls a listener's error callback with the listener's own argument, which evhttp
 * owns (its struct evhttp); there is no slot for ours. Each thread therefore keeps the
 * back-offs of the listeners it runs (a worker: one; the control thread: the admin one),
 * found by that argument. Written and read by the owning thread only. */
#define BACKOFFS_PER_THREAD 4
static _Thread_local struct thread_backoffs {
    accept_backoff *list[BACKOFFS_PER_THREAD];
} thread_backoffs;

static accept_backoff *backoff_for(void *listener_arg)
{
    for (size_t i = 0; i < BACKOFFS_PER_THREAD; i++)
        if (thread_backoffs.list[i] && thread_backoffs.list[i]->listener_arg == listener_arg)
            return thread_backoffs.list[i];
    return NULL;
}

static bool out_of_resources(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    accept_backoff *b = arg;
    b->active = false;
    if (b->options.held && b->options.held(b->options.held_arg)) return;
    evconnlistener_enable(b->listener);
}

static void on_accept_error(struct evconnlistener *listener, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    accept_backoff *b = backoff_for(arg);
    if (!b || b->listener != listener) return;
    if (b->options.errors) metric_add(b->options.errors, 1);
    bool pause = out_of_resources(err);
    if (pause && !b->active) {
        evconnlistener_disable(b->listener);
        b->active = true;
        if (b->options.backoffs) metric_add(b->options.backoffs, 1);
        struct timeval tv = {(time_t)(b->options.pause_ms / 1000), (suseconds_t)((b->options.pause_ms % 1000) * 1000)};
        evtimer_add(b->resume, &tv);
    }
    uint64_t held_back = 0;
    if (!log_ratelimit_allow(&b->log_limit, monotonic_ms(), &held_back)) return;
    char held[32];
    snprintf(held, sizeof(held), "%llu", (unsigned long long)held_back);
    log_error(pause ? "accept() failed: out of descriptors or memory; the listener pauses" : "accept() failed",
              "listener", b->options.listener_name, "error", strerror(err), "repeats_not_logged", held, NULL);
}

accept_backoff *accept_backoff_new(struct event_base *base, struct evconnlistener *listener, void *listener_arg,
                                   const accept_backoff_options *options)
{
    size_t slot = 0;
    while (slot < BACKOFFS_PER_THREAD && thread_backoffs.list[slot]) slot++;
    if (slot == BACKOFFS_PER_THREAD) return NULL;
    accept_backoff *b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    b->listener_arg = listener_arg;
    b->listener = listener;
    b->options = *options;
    b->log_limit.interval_ms = options->log_interval_ms;
    b->resume = evtimer_new(base, on_resume, b);
    if (!b->resume) {
        free(b);
        return NULL;
    }
    thread_backoffs.list[slot] = b;
    evconnlistener_set_error_cb(listener, on_accept_error);
    return b;
}

bool accept_backoff_active(const accept_backoff *b)
{
    return b && b->active;
}

void accept_backoff_free(accept_backoff *b)
{
    if (!b) return;
    for (size_t i = 0; i < BACKOFFS_PER_THREAD; i++)
        if (thread_backoffs.list[i] == b) thread_backoffs.list[i] = NULL;
    /* The listener may already be gone (freed with its evhttp): it is not touched here. */
    event_free(b->resume);
    free(b);
}

size_t fd_limit_needed(size_t max_connections, size_t admin_max_connections, size_t upstream_max_connections,
                       size_t workers)
{
    /* Per worker: its listening socket, event loop, mailbox eventfd and timers; per
     * process: the admin listener, the API client's pool (HTTP/2: a few), the revocation
     * watch, the credential/policy files, stdio. */
    return max_connections + admin_max_connections + upstream_max_connections + 8 * workers + 64;
}

size_t fd_limit_ensure(size_t needed)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < needed) {
        rlim_t want = (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= needed) ? (rlim_t)needed : rl.rlim_max;
        struct rlimit raised = {want, rl.rlim_max};
        if (want > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            char from[32], to[32];
            snprintf(from, sizeof(from), "%llu", (unsigned long long)rl.rlim_cur);
            snprintf(to, sizeof(to), "%llu", (unsigned long long)want);
            log_info("raised the open-files limit (RLIMIT_NOFILE)", "from", from, "to", to, NULL);
            rl.rlim_cur = want;
        }
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < needed) {
        char have[32], need[32];
        snprintf(have, sizeof(have), "%llu", (unsigned long long)rl.rlim_cur);
        snprintf(need, sizeof(need), "%zu", needed);
        log_warn("the open-files limit (ulimit -n) is below what --max-connections, --admin-max-connections and "
                 "--upstream-max-connections need: at the limit the listeners pause accepting",
                 "limit", have, "needed", need, NULL);
    }
    return rl.rlim_cur == RLIM_INFINITY ? SIZE_MAX : (size_t)rl.rlim_cur;
}
