/* raw-client: many plain-TCP connections behaving badly on purpose, for the
 * denial-of-service specs. One thread, poll(2); prints one JSON summary line.
 *
 *   raw-client --addr HOST:PORT --connections N --mode MODE [options]
 *   modes:
 *     slowloris  send a request line, then one header byte every --interval-ms; never
 *                finish the headers
 *     slowbody   send complete headers announcing --body-bytes, then one body byte every
 *                --interval-ms
 *     idle       connect and send nothing
 *     body       send headers (plus each --header) announcing --body-bytes, then the body
 *                as fast as the server reads it, and read the answer (then close)
 *   --duration-s S   how long to run (default 5); connections still open then are counted
 *   --path P         request target (default /)
 *   --header H       an extra header line (repeatable, at most 8)
 *   --hold 1         after the server's end of stream, keep the socket open (neither read
 *                    nor closed) until the run ends, as a client that never closes would
 *
 * Summary: {"opened":..,"connect_errors":..,"closed_by_server":..,"still_open":..,
 *           "answered":{"STATUS":count,...},"sent_bytes":..}
 * A connection counts as closed by the server when a read returns end of stream or a
 * reset; its status is the one of the first answer line it read, if any. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 8
#define MAX_STATUS 600

typedef struct conn {
    int fd;
    bool open;
    bool held;       /* --hold: the server ended the stream; the socket is kept, unread */
    size_t sent;     /* bytes of the request sent */
    char answer[16]; /* the first bytes of the answer */
    size_t answer_len;
} conn;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int connect_to(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *mode = "idle", *path = "/";
    const char *headers[MAX_HEADERS];
    size_t n_headers = 0, n_conns = 1, body_bytes = 0;
    double duration_s = 5, interval_s = 0.5;
    bool hold = false;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--addr"))
            addr = argv[i + 1];
        else if (!strcmp(argv[i], "--connections"))
            n_conns = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--mode"))
            mode = argv[i + 1];
        else if (!strcmp(argv[i], "--duration-s"))
            duration_s = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--interval-ms"))
            interval_s = atof(argv[i + 1]) / 1000;
        else if (!strcmp(argv[i], "--body-bytes"))
            body_bytes = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--hold"))
            hold = atoi(argv[i + 1]) != 0;
        else if (!strcmp(argv[i], "--path"))
            path = argv[i + 1];
        else if (!strcmp(argv[i], "--header") && n_headers < MAX_HEADERS)
            headers[n_headers++] = argv[i + 1];
        else {
            fprintf(stderr, "raw-client: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon || n_conns < 1) {
        fprintf(stderr, "raw-client: --addr HOST:PORT and --connections N >= 1 are needed\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    char host[64];
    snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "raw-client: %s is not an IPv4 address\n", host);
        return 2;
    }
    bool slowloris = !strcmp(mode, "slowloris"), slowbody = !strcmp(mode, "slowbody");
    bool body = !strcmp(mode, "body"), idle = !strcmp(mode, "idle");
    if (!slowloris && !slowbody && !body && !idle) {
        fprintf(stderr, "raw-client: unknown mode %s\n", mode);
        return 2;
    }

    /* The request head every connection sends (slowloris: byte by byte, never ending). */
    char head[4096];
    int head_len =
        snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: %s\r\n", body_bytes ? "POST" : "GET", path, addr);
    for (size_t i = 0; i < n_headers; i++)
        head_len += snprintf(head + head_len, sizeof(head) - (size_t)head_len, "%s\r\n", headers[i]);
    if (slowloris)
        head_len += snprintf(head + head_len, sizeof(head) - (size_t)head_len, "X-Slow: ");
    else
        head_len +=
            snprintf(head + head_len, sizeof(head) - (size_t)head_len, "Content-Length: %zu\r\n\r\n", body_bytes);
    if (head_len >= (int)sizeof(head)) return 2;

    conn *conns = calloc(n_conns, sizeof(*conns));
    struct pollfd *pfds = calloc(n_conns, sizeof(*pfds));
    static char zeros[65536];
    if (!conns || !pfds) return 2;
    size_t opened = 0, connect_errors = 0;
    for (size_t i = 0; i < n_conns; i++) {
        conns[i].fd = connect_to(&sa);
        if (conns[i].fd < 0) {
            connect_errors++;
            continue;
        }
        conns[i].open = true;
        opened++;
        if (!idle) {
            /* The request line at once; the rest as the mode says. */
            size_t first = slowloris ? (size_t)(strchr(head, '\n') - head + 1) : (size_t)head_len;
            ssize_t n = send(conns[i].fd, head, first, MSG_NOSIGNAL);
            if (n > 0) conns[i].sent = (size_t)n;
        }
    }

    size_t closed = 0, sent_bytes = 0;
    double start = now_s(), next_tick = start + interval_s;
    while (now_s() - start < duration_s) {
        size_t n_open = 0;
        for (size_t i = 0; i < n_conns; i++) {
            pfds[i].fd = conns[i].open ? conns[i].fd : -1;
            pfds[i].events = POLLIN;
            size_t total = (size_t)head_len + body_bytes;
            if (body && conns[i].open && conns[i].sent < total && conns[i].answer_len == 0) pfds[i].events |= POLLOUT;
            if (conns[i].open) n_open++;
        }
        if (n_open == 0 && !hold) break;
        int timeout_ms = (int)((next_tick - now_s()) * 1000);
        if (timeout_ms < 0) timeout_ms = 0;
        if (timeout_ms > 100) timeout_ms = 100;
        if (poll(pfds, n_conns, timeout_ms) < 0 && errno != EINTR) break;
        for (size_t i = 0; i < n_conns; i++) {
            conn *c = &conns[i];
            if (!c->open) continue;
            if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                char buf[4096];
                ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
                if (n > 0 && c->answer_len < sizeof(c->answer) - 1) {
                    size_t take = (size_t)n < sizeof(c->answer) - 1 - c->answer_len
                                      ? (size_t)n
                                      : sizeof(c->answer) - 1 - c->answer_len;
                    memcpy(c->answer + c->answer_len, buf, take);
                    c->answer_len += take;
                }
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                    c->open = false;
                    if (hold && n == 0)
                        c->held = true;
                    else
                        close(c->fd);
                    closed++;
                    continue;
                }
                if (body && c->answer_len >= 12) { /* answered: this client is done */
                    c->open = false;
                    close(c->fd);
                    continue;
                }
            }
            if (body && (pfds[i].revents & POLLOUT)) {
                size_t total = (size_t)head_len + body_bytes;
                while (c->sent < total) {
                    const char *p = c->sent < (size_t)head_len ? head + c->sent : zeros;
                    size_t len = c->sent < (size_t)head_len ? (size_t)head_len - c->sent : total - c->sent;
                    if (len > sizeof(zeros)) len = sizeof(zeros);
                    ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
                    if (n <= 0) break;
                    c->sent += (size_t)n;
                    sent_bytes += (size_t)n;
                }
            }
        }
        if (now_s() >= next_tick) {
            next_tick += interval_s;
            for (size_t i = 0; i < n_conns; i++) {
                conn *c = &conns[i];
                if (!c->open) continue;
                if (slowloris) {
                    if (send(c->fd, "a", 1, MSG_NOSIGNAL) == 1) sent_bytes++;
                } else if (slowbody && c->sent < (size_t)head_len + body_bytes) {
                    if (send(c->fd, "b", 1, MSG_NOSIGNAL) == 1) c->sent++, sent_bytes++;
                }
            }
        }
    }

    size_t answered[MAX_STATUS] = {0};
    size_t still_open = 0;
    for (size_t i = 0; i < n_conns; i++) {
        conn *c = &conns[i];
        int status = 0;
        if (c->answer_len >= 12 && sscanf(c->answer, "HTTP/1.%*c %3d", &status) == 1 && status > 0 &&
            status < MAX_STATUS)
            answered[status]++;
        if (c->open) {
            still_open++;
            close(c->fd);
        } else if (c->held) {
            close(c->fd);
        }
    }
    printf("{\"opened\":%zu,\"connect_errors\":%zu,\"closed_by_server\":%zu,\"still_open\":%zu,\"sent_bytes\":%zu,"
           "\"answered\":{",
           opened, connect_errors, closed, still_open, sent_bytes);
    bool first = true;
    for (int s = 0; s < MAX_STATUS; s++) {
        if (!answered[s]) continue;
        printf("%s\"%d\":%zu", first ? "" : ",", s, answered[s]);
        first = false;
    }
    printf("}}\n");
    free(conns);
    free(pfds);
    return 0;
}
