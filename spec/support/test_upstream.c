/*
 * test-upstream - the application behind a proxy in the proxy-integration specs: it
 * answers every request with 200 and records what it received, so a spec can prove
 * which identity headers reached it (and that a denied request never did).
 *
 *   test-upstream --listen 127.0.0.1:0 --record requests.jsonl
 *
 * Once bound it prints {"msg":"listening","listener":"upstream","addr":"127.0.0.1:PORT"}
 * on stderr (the shape support/proc.lua's wait_listening looks for). Each request becomes
 * one JSON line in the record file, written and flushed before the answer is sent:
 *   {"method":"GET","uri":"/hooks/x?a=1","headers":[["Host","..."],...],"body_bytes":0}
 * Headers are kept as a list in arrival order, duplicates included: a header sent twice
 * (say a client's X-Remote-User beside the proxy's) must show up twice, not be folded.
 * Runs until SIGTERM or SIGINT.
 */
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

static FILE *record;

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "?";
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *method = method_name(evhttp_request_get_command(req));
    const char *uri = evhttp_request_get_uri(req);
    json_t *headers = json_array();
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
        json_array_append_new(headers, json_pack("[ss]", kv->key, kv->value));
    json_t *line = json_pack("{ss ss so sI}", "method", method, "uri", uri ? uri : "",
                             "headers", headers, "body_bytes",
                             (json_int_t)evbuffer_get_length(evhttp_request_get_input_buffer(req)));
    char *text = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (text) {
        fprintf(record, "%s\n", text);
        fflush(record); /* the spec reads the file as soon as the client has its answer */
    }
    free(text);
    json_decref(line);

    struct evbuffer *body = evbuffer_new();
    evbuffer_add_printf(body, "upstream saw %s %s\n", method, uri ? uri : "");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Test-Upstream", "1");
    evhttp_send_reply(req, 200, "OK", body);
    evbuffer_free(body);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static int split_hostport(const char *spec, char *host, size_t host_len, unsigned short *port)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= host_len) return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535) return -1;
    *port = (unsigned short)p;
    return 0;
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:0", *record_path = NULL;
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"record", required_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'l') listen = optarg;
        else if (c == 'r') record_path = optarg;
        else {
            fprintf(stderr, "usage: test-upstream --listen HOST:PORT --record FILE\n");
            return 2;
        }
    }
    char host[128];
    unsigned short port;
    if (!record_path || split_hostport(listen, host, sizeof host, &port) != 0) {
        fprintf(stderr, "usage: test-upstream --listen HOST:PORT --record FILE\n");
        return 2;
    }
    record = fopen(record_path, "a");
    if (!record) {
        perror(record_path);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                         EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(http, on_request, NULL);
    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(http, host, port);
    if (!sock) {
        fprintf(stderr, "{\"msg\":\"cannot listen\",\"addr\":\"%s\"}\n", listen);
        return 1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char h[NI_MAXHOST], p[NI_MAXSERV];
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &len) != 0 ||
        getnameinfo((struct sockaddr *)&ss, len, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        perror("getsockname");
        return 1;
    }
    fprintf(stderr, "{\"msg\":\"listening\",\"listener\":\"upstream\",\"addr\":\"%s:%s\"}\n", h, p);
    fflush(stderr);

    struct event *term = evsignal_new(base, SIGTERM, on_signal, base);
    struct event *intr = evsignal_new(base, SIGINT, on_signal, base);
    event_add(term, NULL);
    event_add(intr, NULL);
    event_base_dispatch(base);

    event_free(term);
    event_free(intr);
    evhttp_free(http);
    event_base_free(base);
    fclose(record);
    return 0;
}
