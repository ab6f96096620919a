/* listener.c: see listener.h. */
#include "listener.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_BACKLOG 1024

int listen_address_split(const char *hostport, char *host, size_t host_cap, long *port)
{
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= host_cap) return -1;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        memmove(host, host + 1, len - 2);
        host[len - 2] = '\0';
    }
    char *end = NULL;
    errno = 0;
    *port = strtol(colon + 1, &end, 10);
    if (!*(colon + 1) || *end || errno || *port < 0 || *port > 65535) return -1;
    return 0;
}

static void format_sockaddr(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(out, cap, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(out, cap, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

/* One listening socket bound to addr; reuse_port when several workers share the port. */
static int listen_socket(const struct sockaddr *addr, socklen_t addr_len, bool reuse_port)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
        bind(fd, addr, addr_len) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* True when some socket (another process's, typically another gateway's) already holds
 * addr. Probed with a bind without SO_REUSEPORT: the kernel refuses it while any socket is
 * bound to the port, with or without SO_REUSEPORT; SO_REUSEADDR keeps TIME_WAIT leftovers
 * of a previous run from counting. Two gateways started within the same few microseconds
 * could both pass; the probe is for the usual mistake (a second Deployment, a forgotten
 * process), where SO_REUSEPORT would otherwise share the port silently. */
static bool address_taken(const struct sockaddr *addr, socklen_t addr_len)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false; /* the real bind will report the problem */
    int one = 1;
    bool taken = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 && bind(fd, addr, addr_len) != 0 &&
                 errno == EADDRINUSE;
    close(fd);
    return taken;
}

int open_main_listeners(const char *hostport, size_t n, int *fds)
{
    char host[256];
    long port;
    if (listen_address_split(hostport, host, sizeof(host), &port) != 0) {
        log_error("listen address must be host:port", "listener", "main", "addr", hostport, NULL);
        return -1;
    }
    char port_text[8];
    snprintf(port_text, sizeof(port_text), "%ld", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host[0] ? host : NULL, port_text, &hints, &ai) != 0 || !ai) {
        log_error("cannot resolve the listen address", "listener", "main", "addr", hostport, NULL);
        return -1;
    }
    /* One gateway per port: SO_REUSEPORT is for this process's workers only. */
    if (port != 0 && address_taken(ai->ai_addr, ai->ai_addrlen)) {
        log_error("another process already listens on this address; refusing to share it (stop it or choose "
                  "another --listen)",
                  "listener", "main", "addr", hostport, NULL);
        freeaddrinfo(ai);
        return -1;
    }
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof(bound);
    size_t opened = 0;
    fds[0] = listen_socket(ai->ai_addr, ai->ai_addrlen, n > 1);
    freeaddrinfo(ai);
    if (fds[0] >= 0 && getsockname(fds[0], (struct sockaddr *)&bound, &bound_len) == 0) {
        opened = 1;
        while (opened < n && (fds[opened] = listen_socket((struct sockaddr *)&bound, bound_len, true)) >= 0) opened++;
    }
    if (opened < n) {
        log_error("cannot listen", "listener", "main", "addr", hostport, "error", strerror(errno), NULL);
        for (size_t i = 0; i < opened; i++) close(fds[i]);
        if (opened == 0 && fds[0] >= 0) close(fds[0]);
        return -1;
    }
    char addr[INET6_ADDRSTRLEN + 16];
    format_sockaddr(&bound, addr, sizeof(addr));
    char workers[16];
    snprintf(workers, sizeof(workers), "%zu", n);
    log_info("listening", "listener", "main", "addr", addr, LOG_NUMBER "workers", workers, NULL);
    return 0;
}

int bind_listener(struct evhttp *http, const char *name, const char *hostport, struct evhttp_bound_socket **bound_out)
{
    char host[256];
    long port;
    if (listen_address_split(hostport, host, sizeof(host), &port) != 0) {
        log_error("listen address must be host:port", "listener", name, "addr", hostport, NULL);
        return -1;
    }
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port);
    if (!bound) {
        log_error("cannot listen", "listener", name, "addr", hostport, NULL);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char addr[INET6_ADDRSTRLEN + 16] = "?";
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &len) == 0)
        format_sockaddr(&ss, addr, sizeof(addr));
    log_info("listening", "listener", name, "addr", addr, NULL);
    if (bound_out) *bound_out = bound;
    return 0;
}
