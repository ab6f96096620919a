/* The API server client: HTTPS POSTs of review objects through one libcurl multi handle
 * driven by the owner's libevent loop (the hiperfifo pattern). Nothing here blocks: calls
 * complete through a callback on the loop. Connections are reused (HTTP/2 multiplexing
 * when the server offers it), TLS is always verified against the configured CA, and every
 * call has a hard deadline.
 *
 * Threading: an api_client belongs to one event loop and is used only from its thread. */
#ifndef TOKENGATE_API_CLIENT_H
#define TOKENGATE_API_CLIENT_H

#include "metrics.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct api_client api_client;
struct api_response;

typedef struct api_client_options {
    const char *server_url; /* "https://host:port[/prefix]", no trailing slash */
    /* The CA that signs the API server's certificate, and the only one trusted: a PEM file,
     * or PEM bytes in memory (kubeconfig certificate-authority-data). Exactly one of them. */
    const char *ca_file;
    const char *ca_pem;
    size_t ca_pem_len;
    /* The gateway's bearer credential: a file, re-read when it changes and after a 401, or
     * a fixed token (kubeconfig user.token). At most one; neither only with a client
     * certificate. */
    const char *token_file;
    const char *token;
    /* Optional client certificate and its key (PEM): files, or bytes in memory. */
    const char *client_cert_file, *client_key_file;
    const char *client_cert_pem, *client_key_pem;
    size_t client_cert_pem_len, client_key_pem_len;
    int64_t timeout_ms; /* deadline of one call, connect included */
    /* Optional: told of every finished call before its own callback (readiness tracking). */
    void (*observe)(const struct api_response *response, void *arg);
    void *observe_arg;
} api_client_options;

/* The outcome of one call. body is valid only during the callback. */
typedef struct api_response {
    api_error error;   /* API_ERROR_NONE for a 200/201 answer */
    long http_status;  /* 0 when no HTTP answer arrived */
    int retry_after_s; /* from a Retry-After header, 0 if none */
    const char *body;
    size_t body_len;
    double latency_s;
    const char *detail; /* short diagnostic for logs (curl's message, "HTTP 403"); no secrets */
} api_response;

typedef void (*api_done_fn)(const api_response *response, void *arg);

/* Creates a client on base. Returns NULL (and logs why) on failure. Caller owns it. */
api_client *api_client_new(struct event_base *base, const api_client_options *options);

/* Aborts calls still running (their callbacks are NOT called) and frees the client. */
void api_client_free(api_client *client);

/* Starts an HTTPS POST of body to server_url + path with a deadline of timeout_ms (<= 0:
 * the client's default). body is borrowed: it must stay valid and unchanged until done
 * runs (or the client is freed); the caller wipes it afterwards, since review bodies hold
 * tokens. done is called exactly once, later, on the loop — never from inside this
 * function. Returns 0, or -1 (done not called) when the call cannot be started, e.g. the
 * credential file is unreadable. */
int api_client_post(api_client *client, const char *path, const char *body, size_t body_len, int64_t timeout_ms,
                    api_done_fn done, void *arg);

/* Starts an HTTPS GET of server_url + path asking for the media type accept (NULL:
 * application/json), for small documents such as the issuer's keys; otherwise exactly as
 * api_client_post. kube-apiserver answers 406 to /openid/v1/jwks unless accept allows
 * application/jwk-set+json. */
int api_client_get(api_client *client, const char *path, const char *accept, int64_t timeout_ms, api_done_fn done,
                   void *arg);

/* For other requests to the API server made by the client's owner on the same thread (the
 * revocation watch's lists and watches, on its own curl_loop): sets up easy exactly as
 * api_client_post's calls are — URL server_url + path (path includes any query; https only),
 * the configured CA and nothing else, the client certificate, peer and host verification,
 * HTTP/2 over TLS, no signals, the User-Agent — and a new header list holding the bearer
 * credential (the token file is re-read when it changed or after a 401) followed by the
 * n_extra extra_headers, set as CURLOPT_HTTPHEADER and returned in *headers (NULL when
 * there is nothing to send). The caller sets the method, callbacks and timeouts; after
 * curl_easy_cleanup(easy) it frees *headers with api_client_free_headers, which wipes the
 * credential. easy borrows the client's CA and key bytes: the client must outlive it.
 * Returns 0, or -1 (nothing to free; logged when the credential is unreadable) when the
 * credential cannot be read, the URL is too long or memory runs out. */
int api_client_prepare(api_client *client, CURL *easy, const char *path, const char *const *extra_headers,
                       size_t n_extra, struct curl_slist **headers);

/* Frees (and wipes) a header list made by api_client_prepare. NULL is ignored. */
void api_client_free_headers(struct curl_slist *headers);

/* Tells the client the HTTP status a prepared request got: a 401 is logged and makes the
 * client re-read its credential file before the next request. Other statuses are ignored. */
void api_client_note_status(api_client *client, long http_status);

/* The event base the client runs on. */
struct event_base *api_client_base(const api_client *client);

/* Calls currently running. */
size_t api_client_in_flight(const api_client *client);

#endif
