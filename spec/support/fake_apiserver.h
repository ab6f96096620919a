/*
 * fake_apiserver.h - internals shared by the source files of the fake kube-apiserver.
 *
 * The fake answers TokenReview and SubjectAccessReview like kube-apiserver 1.26 does
 * (spec/fixtures/kube-apiserver-1.26: captured answers, and behaviour measured on the
 * genuine binary, such as its 10 s cache of successful token authentications), with knobs
 * that tests turn to make it slow, throttled, broken or hung. It also lists and watches ServiceAccounts and Pods (the
 * revocation watch of docs/REVOCATION.md): deleting one at the control listener makes the
 * related tokens unauthenticated and is announced to every open watch. Its pieces:
 *
 *   fake_apiserver.c  main(): flags, TLS context, listeners, signals, teardown
 *   fake_state.c      knobs, counters, token table and SAR rules (the server's state)
 *   fake_review.c     what the API answers, independent of HTTP/1.1 or HTTP/2
 *   fake_cluster.c    ServiceAccounts and Pods: the store, list, watch, event history
 *   fake_tls.c        TLS connections of the API listener, ALPN, connection lifetime
 *   fake_http1.c      the HTTP/1.1 transport
 *   fake_http2.c      the HTTP/2 transport (nghttp2)
 *   fake_control.c    the plain-HTTP control listener (knobs, stats, reload)
 *
 * All mutable state lives in one struct fake_server, created by main() and handed to
 * every callback; there are no other mutable globals. Everything runs on one libevent
 * thread, so nothing here is locked.
 */
#ifndef TOKENGATE_FAKE_APISERVER_H
#define TOKENGATE_FAKE_APISERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/util.h>
#include <jansson.h>
#include <openssl/ssl.h>

struct event;
struct event_base;
struct evconnlistener;
struct evhttp;
struct bufferevent;

/* The knobs of POST /control/config. Defaults come from config_defaults(). */
struct fake_config {
    int latency_ms;              /* delay before answering an admitted review */
    bool hang;                   /* park admitted reviews until hang is cleared */
    bool close_connection;       /* drop the connection instead of answering a review */
    double error_rate;           /* probability of answering error_status instead */
    int error_status;            /* status of injected errors (default 500) */
    bool garbage_body;           /* 201 with a body that is not JSON */
    bool truncated_body;         /* 201 with the JSON cut in half */
    int max_inflight;            /* 0 = unlimited; else 429 beyond this many admitted */
    int retry_after;             /* seconds in Retry-After of 429 and 503 answers */
    bool rbac_forbidden;         /* 403: the caller may not create reviews */
    bool sar_send_allowed_false; /* send "allowed":false instead of omitting it */
    bool http2;                  /* offer h2 in ALPN (new connections only) */
    /* Lists and watches of ServiceAccounts and Pods (fake_cluster.c). */
    bool watch_gone_http;   /* too old resourceVersion: HTTP 410, not 200 + ERROR event */
    int watch_error_status; /* 0, or the status every list and watch is answered with */
    int watch_bookmark_ms;  /* 0, or send BOOKMARK events this often (bookmark watches) */
    /* kube-apiserver caches successful token authentications (10 s in 1.26; failures are
     * not cached): within that time a TokenReview of the same token and audiences gets the
     * same "authenticated" answer even after its ServiceAccount or Pod was deleted. 0 turns
     * the cache off. Default 10000, as the real server. */
    int success_cache_ms;
};

/* Counters of GET /control/stats. */
struct fake_stats {
    uint64_t calls; /* every request to a review path, answered or not */
    uint64_t tokenreview_calls;
    uint64_t subjectaccessreview_calls;
    uint64_t max_inflight_seen;
    uint64_t throttled;   /* 429 answers */
    uint64_t connections; /* completed TLS handshakes */
    uint64_t h2_connections;
    uint64_t unauthorized; /* 401 answers (wrong or missing credential) */
    uint64_t list_calls;   /* GET of serviceaccounts or pods without watch */
    uint64_t watch_calls;  /* GET with watch=1 */
    json_t *by_token;      /* object: reviewed token -> number of TokenReviews */
};

/*
 * The identities the fake knows, replaced as a whole by a successful reload.
 * tokens maps each token to {"user":{...}, "audiences":[...], "error":"..."?} with the
 * user object already in the shape TokenReview returns; sar_rules is the validated list.
 */
struct fake_tables {
    json_t *tokens;
    json_t *sar_rules;
};

struct fake_exchange;
struct api_conn;
struct fake_watcher;
TAILQ_HEAD(fake_exchange_list, fake_exchange);
LIST_HEAD(api_conn_list, api_conn);
LIST_HEAD(fake_watcher_list, fake_watcher);

/* ---- the cluster: ServiceAccounts and Pods (fake_cluster.c) ---- */

enum fake_resource { FAKE_SERVICEACCOUNTS, FAKE_PODS, FAKE_RESOURCES };

struct fake_object;

/* A bounded history of one resource's events, for watches that resume from a
 * resourceVersion; older ones are "compacted" (410 Gone). */
struct fake_history {
    struct fake_history_event *ring;
    size_t start, count;
    uint64_t compacted_rv; /* a watch from a resourceVersion below this gets 410 */
};

/* The objects of one resource, sorted by namespace/name (the order of a real list). */
struct fake_store {
    struct fake_object **items;
    size_t n, cap;
    struct fake_history history;
};

struct fake_cluster {
    uint64_t rv;       /* the last resourceVersion handed out (shared, like etcd's) */
    uint64_t bulk_seq; /* names of bulk-created ServiceAccounts */
    struct fake_store stores[FAKE_RESOURCES];
    struct fake_watcher_list watchers; /* open watch streams */
    struct event *bookmark_timer;      /* the watch_bookmark_ms knob */
};

/* The whole mutable state of the process. */
struct fake_server {
    struct event_base *base;
    SSL_CTX *ssl_ctx;
    struct evconnlistener *api_listener;
    struct evhttp *control;
    struct event *sigterm;
    struct event *sigint;

    const char *tokens_path;      /* --tokens */
    const char *sar_rules_path;   /* --sar-rules, or NULL: rules come from tokens_path */
    const char *credential_path;  /* --credential-file, re-read on every request */
    const char *signing_key_path; /* --signing-key, or NULL: a key made at start-up */

    struct fake_config config;
    struct fake_stats stats;
    struct fake_tables tables;

    unsigned inflight;                 /* admitted reviews not answered yet */
    struct fake_exchange_list pending; /* those reviews, for hang release */
    struct api_conn_list conns;        /* live API connections, for shutdown */
    struct fake_cluster cluster;       /* ServiceAccounts, Pods and their watches */
    /* The success_cache_ms cache: "audiences JSON\ntoken" -> {"status": the answer's
     * status, "until": expiry in monotonic ms}. Cleared whole beyond
     * FAKE_SUCCESS_CACHE_MAX entries and by /control/reset. */
    json_t *success_cache;
    /* Issuer discovery (GET /.well-known/openid-configuration, /openid/v1/jwks): the JWKS
     * of an RSA key made at start-up, as kube-apiserver publishes its ServiceAccount key. */
    char *jwks_json;
};

enum { FAKE_SUCCESS_CACHE_MAX = 65536 };

/* ---- one request and its answer, as every transport sees them ---- */

enum { FAKE_MAX_HEADERS = 12 };

struct fake_header {
    const char *name; /* lower case, static storage */
    char value[96];
};

/* A complete answer. The body is malloc'd and owned by whoever holds the struct. */
struct fake_response {
    int status;
    size_t n_headers;
    struct fake_header headers[FAKE_MAX_HEADERS];
    char *body;
    size_t body_len;
};

/* A request as read by a transport; all strings NUL-terminated and owned by it. */
struct fake_request {
    char *method;
    char *path;          /* may carry a query string */
    char *authorization; /* NULL when absent */
    char *accept;        /* NULL when absent */
    char *body;
    size_t body_len;
};

/*
 * How the review core hands its verdict back. Exactly one of respond/close is called
 * for each fake_review_handle(), unless the transport cancels first. The transport must
 * copy what it needs from resp before returning, and must not free the connection
 * synchronously from either callback (it may be deep inside its own read path).
 *
 * A watch answers in pieces instead: stream_start (status and headers; the body's length
 * is unknown: chunked in HTTP/1.1, DATA frames in HTTP/2), any number of stream_write,
 * then stream_end (a clean end of the body) or close (the connection is dropped). The
 * transport copies the bytes it is given.
 */
struct fake_exchange_ops {
    void (*respond)(struct fake_exchange *ex, const struct fake_response *resp);
    void (*close)(struct fake_exchange *ex);
    void (*stream_start)(struct fake_exchange *ex, const struct fake_response *head);
    void (*stream_write)(struct fake_exchange *ex, const char *data, size_t len);
    void (*stream_end)(struct fake_exchange *ex);
};

enum fake_review_kind { REVIEW_NONE, REVIEW_TOKEN, REVIEW_SAR };

/* One request travelling through the review core. Memory belongs to the transport. */
struct fake_exchange {
    struct fake_request req;             /* filled by the transport */
    const struct fake_exchange_ops *ops; /* set by the transport */
    void *owner;                         /* the transport's connection or stream */

    /* Private to fake_review.c while the core holds the exchange. */
    struct fake_server *srv;
    enum fake_review_kind kind;
    json_t *doc;         /* parsed body, or NULL when it is not JSON */
    char *parse_error;   /* why doc is NULL */
    struct event *timer; /* latency wait and hang release */
    bool admitted;       /* counted in srv->inflight and on srv->pending */
    bool hung;
    struct fake_watcher *watch; /* set while the exchange is an open watch stream */
    TAILQ_ENTRY(fake_exchange) link;
};

/* ---- fake_review.c ---- */

/* Start handling a request whose req/ops/owner are set; see fake_exchange_ops. */
void fake_review_handle(struct fake_server *srv, struct fake_exchange *ex);

/* Makes srv->jwks_json: the public half of --signing-key (else a fresh RSA 2048 key) as
 * kube-apiserver publishes it (kid = base64url(SHA-256(DER SubjectPublicKeyInfo))).
 * Returns 0 or -1. */
int fake_issuer_init(struct fake_server *srv);

#define FAKE_ISSUER "https://kubernetes.default.svc.cluster.local"
/* The client went away: forget the exchange without answering. Safe on idle ones. */
void fake_review_cancel(struct fake_exchange *ex);
/* hang was cleared: answer every parked review from the event loop. */
void fake_review_release_hung(struct fake_server *srv);
/* Free the body of a response (the struct itself is usually on the stack). */
void fake_response_clear(struct fake_response *resp);
/* Reason phrase of an HTTP status, for HTTP/1.1 status lines. */
const char *fake_reason_phrase(int status);
/* Shared with fake_cluster.c: the common headers of an answer (flow: add the API Priority
 * and Fairness ones), a metav1.Status failure answer, a JSON body (doc stolen). */
void fake_answer_start(struct fake_response *r, int status, const char *content_type, bool flow);
void fake_answer_status(struct fake_response *r, int code, const char *message);
void fake_answer_json(struct fake_response *r, json_t *doc);
/* A random version-4 UUID. */
void fake_random_uuid(char out[37]);

/* ---- fake_cluster.c ---- */

/* Set up the empty cluster (resourceVersions start at the current time in microseconds,
 * so that they keep growing across restarts of the fake, as a real cluster's do). */
int fake_cluster_init(struct fake_server *srv);
/* End every watch and free every object (shutdown). */
void fake_cluster_free(struct fake_server *srv);
/* True when path (query string allowed) is a list/watch path the cluster serves. */
bool fake_cluster_path(const char *path);
/* Answer a list or watch request whose caller is already authenticated. */
void fake_cluster_handle(struct fake_server *srv, struct fake_exchange *ex);
/* The client of a watch went away: forget the stream without writing to it. */
void fake_cluster_cancel(struct fake_exchange *ex);
/* Check a new token table (object of token -> entry, as fake_state.c builds it): one uid
 * per ServiceAccount and one name per Pod. -1 with a message when it contradicts itself. */
int fake_cluster_check_tokens(const json_t *tokens, char *err, size_t errlen);
/* Create the ServiceAccounts and Pods that tokens new to the table (not in old, which may
 * be NULL) name and that do not exist yet. */
void fake_cluster_add_tokens(struct fake_server *srv, const json_t *old, const json_t *tokens);
/* Why a known token's user is no longer authenticated (its ServiceAccount or Pod was
 * deleted), or NULL when it still is. */
const char *fake_cluster_token_error(struct fake_server *srv, const json_t *user);
/* The watch_bookmark_ms knob changed. */
void fake_cluster_config_changed(struct fake_server *srv);
/* A control request under /control/ that the cluster answers (ServiceAccounts, Pods,
 * watches); returns false when path is not one of them. Sets *status and *answer (a new
 * reference) otherwise. */
bool fake_cluster_control(struct fake_server *srv, const char *path, bool post, const json_t *body, int *status,
                          json_t **answer);
/* Counters for GET /control/stats. */
json_t *fake_cluster_stats(const struct fake_server *srv);

/* ---- fake_state.c ---- */

void config_defaults(struct fake_config *config);
json_t *config_to_json(const struct fake_config *config);
/* Merge a JSON object of knobs into *config; all or nothing. On error returns -1 and
 * writes a message to err. */
int config_merge(struct fake_config *config, const json_t *patch, char *err, size_t errlen);
void stats_reset(struct fake_server *srv);
json_t *stats_to_json(const struct fake_server *srv);
void stats_count_token(struct fake_server *srv, const char *token);
/* (Re)load the token table and SAR rules; on failure keeps the current tables, returns -1
 * and writes a message to err. */
int tables_load(struct fake_server *srv, char *err, size_t errlen);
void tables_free(struct fake_tables *tables);

/* ---- fake_tls.c: connections of the API listener ---- */

/* A TLS connection of the API listener, whichever protocol it speaks. */
struct api_conn {
    struct fake_server *srv;
    struct bufferevent *bev;
    struct event *close_ev;        /* deferred close, see api_conn_close_later() */
    const struct api_proto *proto; /* NULL until the TLS handshake completes */
    void *proto_state;
    LIST_ENTRY(api_conn) link;
};

/* A protocol spoken over an api_conn after ALPN. */
struct api_proto {
    const char *alpn;
    /* Take over the connection's callbacks; -1 closes the connection. */
    int (*start)(struct api_conn *conn);
    /* Cancel its exchanges and free proto_state (the connection is being freed). */
    void (*stop)(struct api_conn *conn);
};

extern const struct api_proto fake_http1_proto; /* fake_http1.c */
#ifdef FAKE_WITH_HTTP2
extern const struct api_proto fake_http2_proto; /* fake_http2.c */
#endif

/* Accept callback of the API listener (an evconnlistener_cb). */
void api_conn_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *addr, int addrlen,
                     void *arg);
/* Close from the event loop, so no caller up the stack is left holding a freed conn. */
void api_conn_close_later(struct api_conn *conn);
/* Close now; only from a libevent callback or at shutdown. */
void api_conn_free(struct api_conn *conn);
/* The SSL_CTX ALPN selection callback: h2 when offered and enabled, else http/1.1. */
int api_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                    unsigned int inlen, void *arg);
/* Write an HTTP date (RFC 9110 IMF-fixdate) of now into buf. */
void fake_http_date(char *buf, size_t len);

/* ---- fake_control.c ---- */

/* Bind the control listener; prints its "listening" line. -1 on failure. */
int control_start(struct fake_server *srv, const char *addr);

/* ---- fake_apiserver.c ---- */

/* Parse "HOST:PORT" or "[V6]:PORT" (port 0 = any free port) for bind(). -1 if invalid. */
int parse_listen_addr(const char *addr, struct sockaddr_storage *ss, int *len);
/* Print {"msg":"listening","listener":NAME,"addr":"HOST:PORT"} for a bound socket. */
int log_listening(const char *name, int fd);
/* Print one JSON log line {"msg":msg, ...extra fields} to stderr; extra is stolen. */
void log_json(const char *msg, json_t *extra);

#endif
