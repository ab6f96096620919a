/*
 * fake-apiserver - a stand-in for kube-apiserver's TokenReview and SubjectAccessReview
 * APIs, used by tokengate's tests, benchmarks and demo.
 *
 *   fake-apiserver --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
 *       --cert server.crt --key server.key --tokens tokens.json \
 *       --credential-file cred.txt [--sar-rules rules.json] [--signing-key sa.key]
 *
 * --signing-key: the RSA private key (PEM) whose public half the issuer discovery
 * publishes, so that tokens signed with it pass a gateway's local pre-verification, as
 * tokens signed by kube-apiserver's --service-account-signing-key-file do. Without it a key
 * is made at start-up.
 *
 * Once both listeners are bound it prints one line per listener on stderr:
 *   {"msg":"listening","listener":"api","addr":"127.0.0.1:43123"}
 * and runs until SIGTERM or SIGINT, after which it frees everything and exits 0.
 * fake_apiserver.h describes the pieces.
 */
#include "fake_apiserver.h"

#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <openssl/err.h>

struct options {
    const char *listen;
    const char *control_listen;
    const char *cert;
    const char *key;
};

/* ---- logging ---- */

void log_json(const char *msg, json_t *extra)
{
    json_t *line = json_pack("{ss}", "msg", msg);
    char *text;

    if (extra) json_object_update(line, extra);
    json_decref(extra);
    text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text) fprintf(stderr, "%s\n", text);
    fflush(stderr); /* tests wait for these lines in a log file */
    free(text);
    json_decref(line);
}

int log_listening(const char *name, int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[128], addr[160];
    const void *ip;
    int port;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return -1;
    if (ss.ss_family == AF_INET6) {
        ip = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    } else {
        ip = &((struct sockaddr_in *)&ss)->sin_addr;
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    if (!evutil_inet_ntop(ss.ss_family, ip, host, sizeof host)) return -1;
    snprintf(addr, sizeof addr, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port);
    log_json("listening", json_pack("{ss ss}", "listener", name, "addr", addr));
    return 0;
}

/* ---- setup ---- */

int parse_listen_addr(const char *addr, struct sockaddr_storage *ss, int *len)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    const char *colon = strrchr(addr, ':');
    char host[256];
    size_t hostlen;

    if (!colon || colon[1] == '\0') return -1;
    hostlen = (size_t)(colon - addr);
    if (hostlen >= 2 && addr[0] == '[' && addr[hostlen - 1] == ']') {
        addr++; /* [v6]:port */
        hostlen -= 2;
    }
    if (hostlen >= sizeof host) return -1;
    memcpy(host, addr, hostlen);
    host[hostlen] = '\0';
    /* evutil_parse_sockaddr_port() refuses port 0, which the tests need. */
    if (getaddrinfo(hostlen ? host : NULL, colon + 1, &hints, &res) != 0) return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = (int)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: fake-apiserver --listen HOST:PORT --control-listen HOST:PORT\n"
                    "         --cert FILE --key FILE --tokens FILE --credential-file FILE\n"
                    "         [--sar-rules FILE] [--signing-key FILE]\n");
}

static int parse_args(int argc, char **argv, struct options *opt, struct fake_server *srv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"control-listen", required_argument, NULL, 'c'},
        {"cert", required_argument, NULL, 'C'},
        {"key", required_argument, NULL, 'K'},
        {"tokens", required_argument, NULL, 't'},
        {"credential-file", required_argument, NULL, 'f'},
        {"sar-rules", required_argument, NULL, 's'},
        {"signing-key", required_argument, NULL, 'S'},
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        /* clang-format off */
        switch (c) {
        case 'l': opt->listen = optarg; break;
        case 'c': opt->control_listen = optarg; break;
        case 'C': opt->cert = optarg; break;
        case 'K': opt->key = optarg; break;
        case 't': srv->tokens_path = optarg; break;
        case 'f': srv->credential_path = optarg; break;
        case 's': srv->sar_rules_path = optarg; break;
        case 'S': srv->signing_key_path = optarg; break;
        default: return -1;
        }
        /* clang-format on */
    }
    if (optind != argc || !opt->listen || !opt->control_listen || !opt->cert || !opt->key || !srv->tokens_path ||
        !srv->credential_path)
        return -1;
    return 0;
}

/* TLS 1.2+ with the given pair; ALPN picks the protocol per connection. */
static SSL_CTX *tls_context(struct fake_server *srv, const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (!ctx) return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_alpn_select_cb(ctx, api_alpn_select, srv);
    return ctx;
}

static int api_listen(struct fake_server *srv, const char *addr)
{
    struct sockaddr_storage ss;
    int sslen = sizeof ss;

    if (parse_listen_addr(addr, &ss, &sslen) < 0) return -1;
    srv->api_listener = evconnlistener_new_bind(srv->base, api_conn_accept, srv,
                                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 128,
                                                (struct sockaddr *)&ss, sslen);
    if (!srv->api_listener) return -1;
    return log_listening("api", evconnlistener_get_fd(srv->api_listener));
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct fake_server *srv = arg;

    (void)what;
    log_json("stopping", json_pack("{si}", "signal", (int)sig));
    event_base_loopbreak(srv->base);
}

static int signals_start(struct fake_server *srv)
{
    srv->sigterm = evsignal_new(srv->base, SIGTERM, signal_cb, srv);
    srv->sigint = evsignal_new(srv->base, SIGINT, signal_cb, srv);
    if (!srv->sigterm || !srv->sigint || evsignal_add(srv->sigterm, NULL) < 0 || evsignal_add(srv->sigint, NULL) < 0)
        return -1;
    return 0;
}

static int server_start(struct fake_server *srv, const struct options *opt)
{
    char err[512];

    if (fake_cluster_init(srv) < 0) {
        log_json("out of memory", NULL);
        return -1;
    }
    if (tables_load(srv, err, sizeof err) < 0) {
        log_json("cannot load tokens", json_pack("{ss}", "error", err));
        return -1;
    }
    srv->ssl_ctx = tls_context(srv, opt->cert, opt->key);
    if (!srv->ssl_ctx) {
        log_json("cannot load certificate", json_pack("{ss ss}", "cert", opt->cert, "key", opt->key));
        return -1;
    }
    if (api_listen(srv, opt->listen) < 0) {
        log_json("cannot listen", json_pack("{ss ss}", "listener", "api", "addr", opt->listen));
        return -1;
    }
    if (control_start(srv, opt->control_listen) < 0) {
        log_json("cannot listen", json_pack("{ss ss}", "listener", "control", "addr", opt->control_listen));
        return -1;
    }
    if (signals_start(srv) < 0) {
        log_json("cannot handle signals", NULL);
        return -1;
    }
    return 0;
}

/* Free everything server_start() made, in any state it left. Connections go first: their
 * reviews hold timers on the base and entries on srv->pending. */
static void server_free(struct fake_server *srv)
{
    if (srv->api_listener) evconnlistener_free(srv->api_listener);
    while (!LIST_EMPTY(&srv->conns)) api_conn_free(LIST_FIRST(&srv->conns));
    if (srv->control) evhttp_free(srv->control);
    if (srv->sigterm) event_free(srv->sigterm);
    if (srv->sigint) event_free(srv->sigint);
    SSL_CTX_free(srv->ssl_ctx);
    fake_cluster_free(srv);
    tables_free(&srv->tables);
    json_decref(srv->stats.by_token);
    json_decref(srv->success_cache);
    free(srv->jwks_json);
    if (srv->base) event_base_free(srv->base);
}

int main(int argc, char **argv)
{
    struct fake_server srv = {0};
    struct options opt = {0};
    int rc = 1;

    if (parse_args(argc, argv, &opt, &srv) < 0) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a client closing mid-answer must not kill the fake */
    config_defaults(&srv.config);
    TAILQ_INIT(&srv.pending);
    LIST_INIT(&srv.conns);
    srv.stats.by_token = json_object();
    srv.success_cache = json_object();
    srv.base = event_base_new();
    if (!srv.base || !srv.stats.by_token || !srv.success_cache || fake_issuer_init(&srv) != 0) goto cleanup;
    if (server_start(&srv, &opt) < 0) goto cleanup;

    if (event_base_dispatch(srv.base) == 0 || event_base_got_break(srv.base)) rc = 0;
cleanup:
    server_free(&srv);
    libevent_global_shutdown(); /* so that valgrind sees no leftovers */
    return rc;
}
