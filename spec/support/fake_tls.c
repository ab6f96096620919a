/*
 * fake_tls.c - TLS connections of the fake API server's API listener.
 *
 * The listener accepts TCP itself (rather than through evhttp) because the protocol is
 * only known once the TLS handshake has picked one by ALPN: kube-apiserver speaks HTTP/2
 * when offered it and HTTP/1.1 otherwise, on the same port. After the handshake the
 * connection is handed to the matching struct api_proto.
 *
 * A connection is freed in exactly one place, api_conn_free(), which first lets the
 * protocol cancel the reviews it still has in the review core.
 */
#include "fake_apiserver.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>

void fake_http_date(char *buf, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(buf, len, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

int api_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                    unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *selected;
#ifdef FAKE_WITH_HTTP2
    static const unsigned char h2[] = "\x02h2";
    const struct fake_server *srv = arg;

    if (srv->config.http2 &&
        SSL_select_next_proto(&selected, outlen, h2, sizeof h2 - 1, in, inlen) == OPENSSL_NPN_NEGOTIATED) {
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
    }
#else
    (void)arg;
#endif
    (void)ssl;
    if (SSL_select_next_proto(&selected, outlen, http11, sizeof http11 - 1, in, inlen) == OPENSSL_NPN_NEGOTIATED) {
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
    }
    /* No common protocol: go on without ALPN and speak HTTP/1.1, as Go servers do. */
    return SSL_TLSEXT_ERR_NOACK;
}

void api_conn_free(struct api_conn *conn)
{
    if (conn->proto) conn->proto->stop(conn);
    LIST_REMOVE(conn, link);
    if (conn->close_ev) event_free(conn->close_ev);
    bufferevent_free(conn->bev); /* closes the socket and frees the SSL */
    free(conn);
}

static void close_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    api_conn_free(arg);
}

void api_conn_close_later(struct api_conn *conn)
{
    bufferevent_disable(conn->bev, EV_READ); /* no new requests meanwhile */
    event_active(conn->close_ev, EV_TIMEOUT, 1);
}

/* The protocol ALPN chose; HTTP/1.1 when the client offered none. */
static const struct api_proto *negotiated_proto(struct api_conn *conn)
{
#ifdef FAKE_WITH_HTTP2
    const unsigned char *alpn = NULL;
    unsigned int len = 0;

    SSL_get0_alpn_selected(bufferevent_openssl_get_ssl(conn->bev), &alpn, &len);
    if (len == 2 && memcmp(alpn, "h2", 2) == 0) return &fake_http2_proto;
#else
    (void)conn;
#endif
    return &fake_http1_proto;
}

static void handshake_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct api_conn *conn = arg;

    (void)bev;
    if (!(what & BEV_EVENT_CONNECTED)) {
        api_conn_free(conn); /* handshake failed or the client left */
        return;
    }
    conn->srv->stats.connections++;
    conn->proto = negotiated_proto(conn);
    if (conn->proto->start(conn) < 0) {
        conn->proto = NULL; /* start cleaned up after itself */
        api_conn_free(conn);
    }
}

void api_conn_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *addr, int addrlen, void *arg)
{
    struct fake_server *srv = arg;
    struct api_conn *conn = NULL;
    SSL *ssl = NULL;

    (void)listener;
    (void)addr;
    (void)addrlen;
    conn = calloc(1, sizeof *conn);
    ssl = SSL_new(srv->ssl_ctx);
    if (!conn || !ssl) goto error;
    /* Deferred callbacks: no callback of ours runs inside a bufferevent call of ours. */
    conn->bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                               BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!conn->bev) goto error;
    ssl = NULL; /* owned by the bufferevent now, and so is fd */
    fd = -1;
    conn->close_ev = event_new(srv->base, -1, 0, close_cb, conn);
    if (!conn->close_ev) goto error;

    conn->srv = srv;
    LIST_INSERT_HEAD(&srv->conns, conn, link);
    /* A client that drops the TCP connection without close_notify is just gone. */
    bufferevent_openssl_set_allow_dirty_shutdown(conn->bev, 1);
    bufferevent_setcb(conn->bev, NULL, NULL, handshake_event_cb, conn);
    bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
    return;

error:
    log_json("accept failed", NULL);
    if (conn && conn->bev) bufferevent_free(conn->bev);
    free(conn);
    SSL_free(ssl);
    if (fd >= 0) close(fd);
}
