/* conn_limit.c: see conn_limit.h. A new connection is counted when evhttp asks for its
 * bufferevent, and uncounted by the close callback installed at the end of the loop turn
 * that accepted it (the evhttp_connection exists only then), as worker.c does. */
#include "conn_limit.h"

#include <event2/bufferevent.h>
#include <stdlib.h>

#define CONN_LIMIT_ADOPT_MAX 64

struct conn_limit {
    struct evhttp *http;
    struct evconnlistener *listener;
    const accept_backoff *backoff;
    size_t max;
    size_t open;
    bool paused;
    struct event *adopt_event;
    struct bufferevent *adopt[CONN_LIMIT_ADOPT_MAX];
    size_t n_adopt;
};

static void resume(conn_limit *cl)
{
    if (!cl->paused || cl->open >= cl->max) return;
    cl->paused = false;
    if (cl->listener && !accept_backoff_active(cl->backoff)) evconnlistener_enable(cl->listener);
}

static void on_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    conn_limit *cl = arg;
    if (cl->open) cl->open--;
    resume(cl);
}

static void adopt(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_limit *cl = arg;
    for (size_t i = 0; i < cl->n_adopt; i++) {
        struct bufferevent *bev = cl->adopt[i];
        bufferevent_data_cb readcb = NULL;
        void *cbarg = NULL;
        bufferevent_getcb(bev, &readcb, NULL, NULL, &cbarg);
        if (readcb && cbarg)
            evhttp_connection_set_closecb(cbarg, on_closed, cl);
        else
            on_closed(NULL, cl); /* evhttp already dropped it */
        bufferevent_decref(bev);
    }
    cl->n_adopt = 0;
}

static struct bufferevent *new_bufferevent(struct event_base *base, void *arg)
{
    conn_limit *cl = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    /* Without room to adopt it, evhttp keeps the connection uncounted: only laxer. */
    if (!bev || cl->n_adopt == CONN_LIMIT_ADOPT_MAX) return bev;
    bufferevent_incref(bev);
    cl->adopt[cl->n_adopt++] = bev;
    event_active(cl->adopt_event, EV_TIMEOUT, 0);
    if (++cl->open >= cl->max && !cl->paused) {
        cl->paused = true;
        if (cl->listener) evconnlistener_disable(cl->listener);
    }
    return bev;
}

conn_limit *conn_limit_new(struct event_base *base, struct evhttp *http, size_t max_connections)
{
    conn_limit *cl = calloc(1, sizeof(*cl));
    if (!cl) return NULL;
    cl->http = http;
    cl->max = max_connections ? max_connections : 1;
    cl->adopt_event = event_new(base, -1, 0, adopt, cl);
    if (!cl->adopt_event) {
        free(cl);
        return NULL;
    }
    evhttp_set_bevcb(http, new_bufferevent, cl);
    return cl;
}

void conn_limit_set_listener(conn_limit *cl, struct evconnlistener *listener, const accept_backoff *backoff)
{
    cl->listener = listener;
    cl->backoff = backoff;
}

bool conn_limit_holds(void *limit)
{
    conn_limit *cl = limit;
    return cl->paused;
}

size_t conn_limit_open(const conn_limit *cl)
{
    return cl ? cl->open : 0;
}

void conn_limit_free(conn_limit *cl)
{
    if (!cl) return;
    for (size_t i = 0; i < cl->n_adopt; i++) bufferevent_decref(cl->adopt[i]);
    event_free(cl->adopt_event);
    free(cl);
}
