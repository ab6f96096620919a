/* curl_loop.c owns a libcurl multi handle on a libevent loop: one context per socket
 * (curl_multi_assign, cleared on CURL_POLL_REMOVE as curl's multi-event.c does), persistent
 * socket events, one timer that libcurl only arms, and a drain of curl_multi_info_read
 * after every curl_multi_socket_action that hands each finished transfer to its owner. */
#include "curl_loop.h"

#include <stdlib.h>

struct curl_loop {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
};

/* One per socket curl asks us to watch, freed on CURL_POLL_REMOVE. */
typedef struct loop_socket {
    curl_socket_t fd;
    struct event *ev;
} loop_socket;

/* Hands every finished transfer to its owner. The owner may remove (and free) its handle,
 * or add new ones, from done: both are allowed between curl_multi_info_read calls. */
static void check_multi_info(curl_loop *loop)
{
    CURLMsg *msg;
    int pending;
    while ((msg = curl_multi_info_read(loop->multi, &pending))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *easy = msg->easy_handle;
        CURLcode code = msg->data.result;
        curl_loop_transfer *transfer = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&transfer);
        if (transfer && transfer->done) transfer->done(transfer->owner, easy, code);
    }
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    curl_loop *loop = arg;
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    curl_multi_socket_action(loop->multi, fd, action, &running);
    check_multi_info(loop);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    curl_loop *loop = arg;
    int running = 0;
    curl_multi_socket_action(loop->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(loop);
}

/* CURLMOPT_TIMERFUNCTION: only (re)arms our timer; libcurl is never called from here. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *arg)
{
    (void)multi;
    curl_loop *loop = arg;
    if (timeout_ms < 0) {
        evtimer_del(loop->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(loop->timer, &tv); /* cannot fail for an initialized timer; -1 would kill the multi handle */
    return 0;
}

/* CURLMOPT_SOCKETFUNCTION: mirror what curl wants to wait for onto a persistent event. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *arg, void *socket_arg)
{
    (void)easy;
    curl_loop *loop = arg;
    loop_socket *sock = socket_arg;
    if (what == CURL_POLL_REMOVE) {
        if (sock) {
            if (sock->ev) event_free(sock->ev);
            free(sock);
            curl_multi_assign(loop->multi, fd, NULL);
        }
        return 0;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (!sock) {
        sock = calloc(1, sizeof(*sock));
        if (!sock) return -1;
        sock->fd = fd;
        curl_multi_assign(loop->multi, fd, sock);
    } else if (sock->ev) {
        event_free(sock->ev);
    }
    sock->ev = event_new(loop->base, fd, kind, on_socket_event, loop);
    if (!sock->ev || event_add(sock->ev, NULL) != 0) return -1;
    return 0;
}

curl_loop *curl_loop_new(struct event_base *base)
{
    curl_loop *loop = calloc(1, sizeof(*loop));
    if (!loop) return NULL;
    loop->base = base;
    loop->multi = curl_multi_init();
    loop->timer = evtimer_new(base, on_timer, loop);
    if (!loop->multi || !loop->timer) goto err;
    if (curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
        curl_multi_setopt(loop->multi, CURLMOPT_SOCKETDATA, loop) != CURLM_OK ||
        curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
        curl_multi_setopt(loop->multi, CURLMOPT_TIMERDATA, loop) != CURLM_OK)
        goto err;
    return loop;
err:
    curl_loop_free(loop);
    return NULL;
}

void curl_loop_free(curl_loop *loop)
{
    if (!loop) return;
    /* Closing the cached connections reports CURL_POLL_REMOVE for each: their events are
     * freed by on_curl_socket before the timer goes. */
    if (loop->multi) curl_multi_cleanup(loop->multi);
    if (loop->timer) event_free(loop->timer);
    free(loop);
}

CURLM *curl_loop_multi(const curl_loop *loop)
{
    return loop->multi;
}

int curl_loop_add(curl_loop *loop, CURL *easy, curl_loop_transfer *transfer)
{
    if (curl_easy_setopt(easy, CURLOPT_PRIVATE, transfer) != CURLE_OK) return -1;
    return curl_multi_add_handle(loop->multi, easy) == CURLM_OK ? 0 : -1;
}

void curl_loop_remove(curl_loop *loop, CURL *easy)
{
    curl_multi_remove_handle(loop->multi, easy);
}
