/*
 * bare-server: the "bare evhttp server" baseline of tokengate's benchmarks. It answers
 * every request 200 with an empty body and the same identity headers the gateway sends
 * on an allowed request (constant values of realistic length), so the two responses are
 * about the same size and a benchmark measures only what the gateway adds.
 *
 *   bare-server --listen HOST:PORT [--threads N]
 *
 * --threads N runs N event-loop threads, each with its own evhttp on its own
 * SO_REUSEPORT socket bound to the same address (the kernel spreads connections over
 * them); default 1. Port 0 picks a free port, shared by all threads. Once listening it
 * logs {"msg":"listening","listener":"main","addr":"HOST:PORT","threads":N} on stderr.
 * SIGINT/SIGTERM stop it cleanly (exit 0).
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <event2/util.h>

#define BARE_MAX_THREADS 64

/* What tokengate sends for an allowed ServiceAccount (README, "What it does"). */
#define BARE_REMOTE_USER "system:serviceaccount:team-a:webhook-sender"
#define BARE_REMOTE_UID "5d0c1f2e-8b7a-4c3d-9e6f-1a2b3c4d5e6f"
#define BARE_REMOTE_GROUPS "system:serviceaccounts|system:serviceaccounts:team-a|system:authenticated"

struct worker {
    pthread_t thread;
    int started;
    struct event_base *base;
    struct evhttp *http;
};

static void handle_request(struct evhttp_request *req, void *arg);
static int bind_listener(const struct sockaddr *sa, socklen_t len);
static void *worker_main(void *arg);
static void stop_cb(evutil_socket_t fd, short what, void *arg);
static void usage(FILE *f);

static void handle_request(struct evhttp_request *req, void *arg)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    (void)arg;

    evhttp_add_header(h, "X-Remote-User", BARE_REMOTE_USER);
    evhttp_add_header(h, "X-Remote-Uid", BARE_REMOTE_UID);
    evhttp_add_header(h, "X-Remote-Groups", BARE_REMOTE_GROUPS);
    evhttp_send_reply(req, 200, "OK", NULL);
}

/* A non-blocking listening socket with SO_REUSEPORT; -1 on error (errno set). */
static int bind_listener(const struct sockaddr *sa, socklen_t len)
{
    int one = 1;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 || bind(fd, sa, len) < 0 ||
        listen(fd, 1024) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static void usage(FILE *f)
{
    fputs("usage: bare-server --listen HOST:PORT [--threads N]\n"
          "Answers every request 200 (empty body, constant X-Remote-* headers).\n",
          f);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct worker workers[BARE_MAX_THREADS];
    const char *listen_arg = "127.0.0.1:8080";
    char host[256], port[16], addr_out[300], hbuf[NI_MAXHOST], pbuf[NI_MAXSERV];
    struct addrinfo hints, *res = NULL;
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof(bound);
    struct event_base *main_base = NULL;
    struct event *sigint_ev = NULL, *sigterm_ev = NULL;
    sigset_t blocked, old;
    int nthreads = 1, opt, i, rc = 1, gai;
    const char *colon;

    memset(workers, 0, sizeof(workers));
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        char *end;
        long v;
        switch (opt) {
        case 'l': listen_arg = optarg; break;
        case 't':
            v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > BARE_MAX_THREADS) {
                fprintf(stderr, "bare-server: --threads must be 1..%d\n", BARE_MAX_THREADS);
                return 2;
            }
            nthreads = (int)v;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }

    /* HOST:PORT or [V6]:PORT */
    colon = strrchr(listen_arg, ':');
    if (!colon || colon == listen_arg || strlen(colon + 1) >= sizeof(port) ||
        (size_t)(colon - listen_arg) >= sizeof(host)) {
        fprintf(stderr, "bare-server: --listen wants HOST:PORT\n");
        return 2;
    }
    if (listen_arg[0] == '[' && colon[-1] == ']') {
        memcpy(host, listen_arg + 1, (size_t)(colon - listen_arg - 2));
        host[colon - listen_arg - 2] = '\0';
    } else {
        memcpy(host, listen_arg, (size_t)(colon - listen_arg));
        host[colon - listen_arg] = '\0';
    }
    strcpy(port, colon + 1);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0 || !res) {
        fprintf(stderr, "bare-server: cannot resolve %s: %s\n", listen_arg, gai_strerror(gai));
        return 2;
    }

    if (evthread_use_pthreads() < 0) {
        fprintf(stderr, "bare-server: evthread_use_pthreads failed\n");
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);

    for (i = 0; i < nthreads; i++) {
        struct worker *w = &workers[i];
        int fd;
        /* The first socket may pick the port (":0"); the others join it. */
        fd = bind_listener(i == 0 ? res->ai_addr : (struct sockaddr *)&bound, i == 0 ? res->ai_addrlen : bound_len);
        if (fd < 0) {
            fprintf(stderr, "bare-server: cannot listen on %s: %s\n", listen_arg, strerror(errno));
            goto out;
        }
        if (i == 0 && getsockname(fd, (struct sockaddr *)&bound, &bound_len) < 0) {
            close(fd);
            goto out;
        }
        w->base = event_base_new();
        w->http = w->base ? evhttp_new(w->base) : NULL;
        if (!w->http || !evhttp_accept_socket_with_handle(w->http, fd)) {
            close(fd);
            fprintf(stderr, "bare-server: cannot set up evhttp\n");
            goto out;
        }
        evhttp_set_gencb(w->http, handle_request, NULL);
    }

    /* Signals go to the main thread only; it stops the workers. */
    main_base = event_base_new();
    if (!main_base) goto out;
    sigint_ev = evsignal_new(main_base, SIGINT, stop_cb, main_base);
    sigterm_ev = evsignal_new(main_base, SIGTERM, stop_cb, main_base);
    if (!sigint_ev || !sigterm_ev || evsignal_add(sigint_ev, NULL) < 0 || evsignal_add(sigterm_ev, NULL) < 0) goto out;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &blocked, &old);
    for (i = 0; i < nthreads; i++) {
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            fprintf(stderr, "bare-server: pthread_create failed\n");
            goto out;
        }
        workers[i].started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (getnameinfo((struct sockaddr *)&bound, bound_len, hbuf, sizeof(hbuf), pbuf, sizeof(pbuf),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        goto out;
    snprintf(addr_out, sizeof(addr_out), bound.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", hbuf, pbuf);
    fprintf(stderr, "{\"msg\":\"listening\",\"listener\":\"main\",\"addr\":\"%s\",\"threads\":%d}\n", addr_out,
            nthreads);

    event_base_dispatch(main_base);
    rc = 0;

out:
    for (i = 0; i < nthreads; i++) {
        if (workers[i].started) {
            event_base_loopbreak(workers[i].base);
            pthread_join(workers[i].thread, NULL);
        }
    }
    for (i = 0; i < nthreads; i++) {
        if (workers[i].http) evhttp_free(workers[i].http);
        if (workers[i].base) event_base_free(workers[i].base);
    }
    if (sigint_ev) event_free(sigint_ev);
    if (sigterm_ev) event_free(sigterm_ev);
    if (main_base) event_base_free(main_base);
    if (res) freeaddrinfo(res);
    libevent_global_shutdown();
    if (rc == 0) fprintf(stderr, "{\"msg\":\"stopped\"}\n");
    return rc;
}
