/* api_client.c owns the API server calls: the gateway's credential, every in-flight call (on
 * its own curl_loop: libcurl multi on the event loop) and the classification of answers. */
#include "api_client.h"

#include "curl_loop.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define API_BODY_MAX (1024 * 1024) /* larger answers are bad_response */
#define CREDENTIAL_MAX 16384       /* longest credential file accepted */
#define CREDENTIAL_RECHECK_MS 1000 /* stat the credential file at most this often */
#define RETRY_AFTER_MAX_S 60       /* cap on a Retry-After passed on to clients */

struct api_client {
    struct event_base *base;
    curl_loop *loop;
    char *server_url;
    char *ca_file; /* or ca_pem */
    char *ca_pem;
    size_t ca_pem_len;
    char *token_file; /* NULL: fixed token in credential, or client certificate only */
    char *client_cert_file, *client_key_file;
    char *client_cert_pem, *client_key_pem; /* the key is wiped on free */
    size_t client_cert_pem_len, client_key_pem_len;
    int64_t timeout_ms;
    void (*observe)(const struct api_response *response, void *arg);
    void *observe_arg;
    size_t in_flight;
    struct api_call *calls; /* every running call, so api_client_free can abort them */
    /* The credential: read from token_file, re-read when the file changes or after a 401. */
    char credential[CREDENTIAL_MAX];
    size_t credential_len;
    struct stat credential_stat;
    int64_t credential_checked_ms;
    bool credential_stale;
};

/* One call: owns the easy handle, the request body, the header list and the answer. */
typedef struct api_call {
    api_client *client;
    curl_loop_transfer transfer;  /* CURLOPT_PRIVATE: routes the finished call to on_call_done */
    struct api_call *prev, *next; /* in client->calls while added to the multi handle */
    CURL *easy;
    struct curl_slist *headers;
    char *response;
    size_t response_len, response_cap;
    bool response_too_large;
    int retry_after_s;
    api_done_fn done;
    void *arg;
    struct timespec started;
    char curl_error[CURL_ERROR_SIZE];
} api_call;

static void on_call_done(void *owner, CURL *easy, CURLcode code);

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    api_call *call = arg;
    size_t n = size * nmemb;
    if (call->response_len + n > API_BODY_MAX) {
        call->response_too_large = true;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if (call->response_len + n + 1 > call->response_cap) {
        size_t cap = call->response_cap ? call->response_cap : 4096;
        while (cap < call->response_len + n + 1) cap *= 2;
        /* Answers may echo the token (spec.token): grow by copy-and-wipe, never realloc. */
        char *grown = malloc(cap);
        if (!grown) return 0;
        if (call->response_len) memcpy(grown, call->response, call->response_len);
        if (call->response) {
            OPENSSL_cleanse(call->response, call->response_len);
            free(call->response);
        }
        call->response = grown;
        call->response_cap = cap;
    }
    memcpy(call->response + call->response_len, data, n);
    call->response_len += n;
    call->response[call->response_len] = '\0';
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    api_call *call = arg;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    if (n > sizeof(name) - 1 && strncasecmp(data, name, sizeof(name) - 1) == 0) {
        /* Delay-seconds form only; an HTTP-date is treated as 1 second. */
        long v = 0;
        size_t i = sizeof(name) - 1;
        while (i < n && (data[i] == ' ' || data[i] == '\t')) i++;
        bool digits = false;
        while (i < n && data[i] >= '0' && data[i] <= '9' && v < 100000) {
            v = v * 10 + (data[i++] - '0');
            digits = true;
        }
        call->retry_after_s = digits ? (int)(v > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : v) : 1;
    }
    return n;
}

/* Reads the credential file when it changed (or was marked stale by a 401). The stat is
 * rate-limited so a storm of misses does not become a storm of syscalls. */
static int refresh_credential(api_client *client)
{
    /* A fixed token (or none, with a client certificate) is never re-read. */
    if (!client->token_file)
        return client->credential_len || client->client_cert_file || client->client_cert_pem ? 0 : -1;
    int64_t now = monotonic_ms();
    if (client->credential_len && !client->credential_stale &&
        now - client->credential_checked_ms < CREDENTIAL_RECHECK_MS)
        return 0;
    client->credential_checked_ms = now;
    struct stat st;
    if (stat(client->token_file, &st) != 0) {
        log_error("cannot stat the API credential file", "path", client->token_file, "error", strerror(errno), NULL);
        return client->credential_len ? 0 : -1;
    }
    if (client->credential_len && !client->credential_stale && st.st_ino == client->credential_stat.st_ino &&
        st.st_size == client->credential_stat.st_size && st.st_mtim.tv_sec == client->credential_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == client->credential_stat.st_mtim.tv_nsec)
        return 0;

    int fd = open(client->token_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log_error("cannot open the API credential file", "path", client->token_file, "error", strerror(errno), NULL);
        return client->credential_len ? 0 : -1;
    }
    char buf[CREDENTIAL_MAX];
    ssize_t n = read(fd, buf, sizeof(buf));
    close(fd);
    size_t len = n > 0 ? (size_t)n : 0;
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' || buf[len - 1] == '\t')) len--;
    bool valid = n > 0 && (size_t)n < sizeof(buf) && len > 0;
    for (size_t i = 0; valid && i < len; i++)
        if ((unsigned char)buf[i] <= 0x20 || (unsigned char)buf[i] >= 0x7f) valid = false;
    if (!valid) {
        OPENSSL_cleanse(buf, sizeof(buf));
        log_error("the API credential file is empty, too large or not a bearer token", "path", client->token_file,
                  NULL);
        return client->credential_len ? 0 : -1;
    }
    OPENSSL_cleanse(client->credential, sizeof(client->credential));
    memcpy(client->credential, buf, len);
    client->credential_len = len;
    OPENSSL_cleanse(buf, sizeof(buf));
    client->credential_stat = st;
    client->credential_stale = false;
    log_info("loaded the API credential", "path", client->token_file, NULL);
    return 0;
}

static void wipe_headers(struct curl_slist *list)
{
    for (struct curl_slist *h = list; h; h = h->next) OPENSSL_cleanse(h->data, strlen(h->data));
    curl_slist_free_all(list);
}

static void api_call_free(api_call *call)
{
    if (!call) return;
    if (call->easy) {
        curl_loop_remove(call->client->loop, call->easy);
        curl_easy_cleanup(call->easy);
    }
    if (call->prev || call->next || call->client->calls == call) {
        if (call->prev)
            call->prev->next = call->next;
        else
            call->client->calls = call->next;
        if (call->next) call->next->prev = call->prev;
    }
    wipe_headers(call->headers);
    if (call->response) {
        OPENSSL_cleanse(call->response, call->response_len);
        free(call->response);
    }
    free(call);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* A copy of len bytes plus a NUL, or NULL. */
static char *dup_blob(const char *p, size_t len)
{
    if (!p) return NULL;
    char *b = malloc(len + 1);
    if (!b) return NULL;
    memcpy(b, p, len);
    b[len] = '\0';
    return b;
}

static void wipe_free(char *p, size_t len)
{
    if (!p) return;
    OPENSSL_cleanse(p, len);
    free(p);
}

api_client *api_client_new(struct event_base *base, const api_client_options *options)
{
    api_client *client = calloc(1, sizeof(*client));
    if (!client) return NULL;
    client->base = base;
    client->timeout_ms = options->timeout_ms;
    client->observe = options->observe;
    client->observe_arg = options->observe_arg;
    client->server_url = dup_or_null(options->server_url);
    client->ca_file = dup_or_null(options->ca_file);
    client->ca_pem = dup_blob(options->ca_pem, options->ca_pem_len);
    client->ca_pem_len = options->ca_pem_len;
    client->token_file = dup_or_null(options->token_file);
    client->client_cert_file = dup_or_null(options->client_cert_file);
    client->client_key_file = dup_or_null(options->client_key_file);
    client->client_cert_pem = dup_blob(options->client_cert_pem, options->client_cert_pem_len);
    client->client_cert_pem_len = options->client_cert_pem_len;
    client->client_key_pem = dup_blob(options->client_key_pem, options->client_key_pem_len);
    client->client_key_pem_len = options->client_key_pem_len;
    client->loop = curl_loop_new(base);
    if (!client->server_url || !client->loop || (options->ca_file && !client->ca_file) ||
        (options->ca_pem && !client->ca_pem) || (options->token_file && !client->token_file) ||
        (options->client_cert_file && !client->client_cert_file) ||
        (options->client_key_file && !client->client_key_file) ||
        (options->client_cert_pem && !client->client_cert_pem) || (options->client_key_pem && !client->client_key_pem))
        goto err;
    /* Exactly one CA; a client certificate comes with its key; at most one bearer form. */
    bool has_cert = client->client_cert_file || client->client_cert_pem;
    bool has_key = client->client_key_file || client->client_key_pem;
    if (!client->ca_file == !client->ca_pem || has_cert != has_key || (options->token && client->token_file)) {
        log_error("API client options: need exactly one CA, a client key with its certificate, at most one token",
                  NULL);
        goto err;
    }
    if (options->token) {
        size_t len = strlen(options->token);
        if (len == 0 || len >= sizeof(client->credential)) goto err;
        memcpy(client->credential, options->token, len);
        client->credential_len = len;
    }
    size_t url_len = strlen(client->server_url);
    while (url_len && client->server_url[url_len - 1] == '/') client->server_url[--url_len] = '\0';

    CURLM *multi = curl_loop_multi(client->loop);
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    /* Bounded connections to the API server; beyond it curl queues (still deadline-bound). */
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 32L);
    if (refresh_credential(client) != 0) goto err;
    return client;
err:
    log_error("cannot create the API client", "server", options->server_url, NULL);
    api_client_free(client);
    return NULL;
}

void api_client_free(api_client *client)
{
    if (!client) return;
    /* Abort what is still running; owners are told by being freed themselves. */
    while (client->calls) api_call_free(client->calls);
    curl_loop_free(client->loop);
    free(client->server_url);
    free(client->ca_file);
    free(client->ca_pem);
    free(client->token_file);
    free(client->client_cert_file);
    free(client->client_key_file);
    free(client->client_cert_pem);
    wipe_free(client->client_key_pem, client->client_key_pem_len);
    OPENSSL_cleanse(client->credential, sizeof(client->credential));
    free(client);
}

struct event_base *api_client_base(const api_client *client)
{
    return client->base;
}

size_t api_client_in_flight(const api_client *client)
{
    return client->in_flight;
}

int api_client_prepare(api_client *client, CURL *e, const char *path, const char *const *extra_headers, size_t n_extra,
                       struct curl_slist **headers_out)
{
    struct curl_slist *headers = NULL;
    *headers_out = NULL;
    if (refresh_credential(client) != 0) return -1;
    char url[4096];
    if ((size_t)snprintf(url, sizeof(url), "%s%s", client->server_url, path) >= sizeof(url)) return -1;
    if (client->credential_len) { /* none when a client certificate alone authenticates */
        char auth[CREDENTIAL_MAX + 32];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %.*s", (int)client->credential_len, client->credential);
        headers = curl_slist_append(NULL, auth);
        OPENSSL_cleanse(auth, sizeof(auth));
        if (!headers) return -1;
    }
    for (size_t i = 0; i < n_extra; i++) {
        struct curl_slist *more = curl_slist_append(headers, extra_headers[i]);
        if (!more) {
            api_client_free_headers(headers);
            return -1;
        }
        headers = more;
    }
    curl_easy_setopt(e, CURLOPT_URL, url); /* libcurl copies the URL */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    /* Trust the configured CA and nothing else: libcurl's default CApath (/etc/ssl/certs on
     * Debian) would add every system root, with CAINFO and with CAINFO_BLOB alike. */
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    if (client->ca_pem) {
        struct curl_blob ca = {.data = client->ca_pem, .len = client->ca_pem_len, .flags = CURL_BLOB_NOCOPY};
        curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &ca);
    } else {
        curl_easy_setopt(e, CURLOPT_CAINFO, client->ca_file);
    }
    /* NOCOPY: the client owns the PEM bytes for longer than any easy handle. */
    if (client->client_cert_pem) {
        struct curl_blob cert = {
            .data = client->client_cert_pem, .len = client->client_cert_pem_len, .flags = CURL_BLOB_NOCOPY};
        curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &cert);
    } else if (client->client_cert_file) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, client->client_cert_file);
    }
    if (client->client_key_pem) {
        struct curl_blob key = {
            .data = client->client_key_pem, .len = client->client_key_pem_len, .flags = CURL_BLOB_NOCOPY};
        curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &key);
    } else if (client->client_key_file) {
        curl_easy_setopt(e, CURLOPT_SSLKEY, client->client_key_file);
    }
    if (client->client_cert_file || client->client_cert_pem) {
        curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    }
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L); /* prefer multiplexing on an existing h2 connection */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "tokengate");
    *headers_out = headers;
    return 0;
}

void api_client_free_headers(struct curl_slist *headers)
{
    wipe_headers(headers);
}

void api_client_note_status(api_client *client, long status)
{
    if (status == 401 && client->token_file) {
        /* The gateway's own credential was refused: re-read the file before the next call. */
        client->credential_stale = true;
        log_error("the API server refused the gateway's credential (401); re-reading it", "path", client->token_file,
                  NULL);
    } else if (status == 401) {
        log_error("the API server refused the gateway's credential (401); an inline kubeconfig token or a client "
                  "certificate cannot be re-read: fix the kubeconfig and restart",
                  NULL);
    }
}

/* A POST of a JSON body (borrowed), or a GET asking for accept when body is NULL. */
static int start_call(api_client *client, const char *path, const char *body, size_t body_len, const char *accept,
                      int64_t timeout_ms, api_done_fn done, void *arg);

int api_client_post(api_client *client, const char *path, const char *body, size_t body_len, int64_t timeout_ms,
                    api_done_fn done, void *arg)
{
    return start_call(client, path, body ? body : "", body_len, NULL, timeout_ms, done, arg);
}

int api_client_get(api_client *client, const char *path, const char *accept, int64_t timeout_ms, api_done_fn done,
                   void *arg)
{
    return start_call(client, path, NULL, 0, accept ? accept : "application/json", timeout_ms, done, arg);
}

static int start_call(api_client *client, const char *path, const char *body, size_t body_len, const char *accept,
                      int64_t timeout_ms, api_done_fn done, void *arg)
{
    api_call *call = calloc(1, sizeof(*call));
    if (!call) return -1;
    call->client = client;
    call->done = done;
    call->arg = arg;
    clock_gettime(CLOCK_MONOTONIC, &call->started);
    call->easy = curl_easy_init();
    if (!call->easy) goto err;
    CURL *e = call->easy;
    /* "Expect:" disables 100-continue: it costs a round trip per review. */
    static const char *const fixed_headers[] = {"Content-Type: application/json", "Accept: application/json",
                                                "Expect:"};
    char accept_header[128];
    const char *get_headers[] = {accept_header};
    snprintf(accept_header, sizeof(accept_header), "Accept: %s", accept ? accept : "application/json");
    if (body ? api_client_prepare(client, e, path, fixed_headers, sizeof(fixed_headers) / sizeof(fixed_headers[0]),
                                  &call->headers)
             : api_client_prepare(client, e, path, get_headers, 1, &call->headers))
        goto err;
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
    }
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : client->timeout_ms));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, call);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->curl_error);
    call->transfer = (curl_loop_transfer){.done = on_call_done, .owner = call};
    if (curl_loop_add(client->loop, e, &call->transfer) != 0) goto err;
    call->next = client->calls;
    if (client->calls) client->calls->prev = call;
    client->calls = call;
    client->in_flight++;
    return 0;
err:
    api_call_free(call);
    return -1;
}

/* Classifies a finished transfer. */
static api_error classify(const api_call *call, CURLcode code, long status)
{
    if (code == CURLE_OPERATION_TIMEDOUT) return API_ERROR_TIMEOUT;
    if (code == CURLE_WRITE_ERROR && call->response_too_large) return API_ERROR_BAD_RESPONSE;
    if (code != CURLE_OK) return API_ERROR_NETWORK;
    if (status == 429) return API_ERROR_THROTTLED;
    if (status == 200 || status == 201) return API_ERROR_NONE;
    return API_ERROR_HTTP;
}

static void finish_call(api_client *client, api_call *call, CURLcode code)
{
    long status = 0;
    curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    char detail[CURL_ERROR_SIZE + 64];
    api_response response = {
        .error = classify(call, code, status),
        .http_status = status,
        .retry_after_s = call->retry_after_s,
        .body = call->response ? call->response : "",
        .body_len = call->response_len,
        .latency_s = (double)(now.tv_sec - call->started.tv_sec) + (now.tv_nsec - call->started.tv_nsec) / 1e9,
        .detail = detail,
    };
    if (code != CURLE_OK)
        snprintf(detail, sizeof(detail), "%s", call->curl_error[0] ? call->curl_error : curl_easy_strerror(code));
    else
        snprintf(detail, sizeof(detail), "HTTP %ld", status);
    api_client_note_status(client, status);
    client->in_flight--;
    if (client->observe) client->observe(&response, client->observe_arg);
    call->done(&response, call->arg);
    api_call_free(call);
}

/* curl_loop_transfer.done: the call finished (or failed) on the loop. */
static void on_call_done(void *owner, CURL *easy, CURLcode code)
{
    (void)easy;
    api_call *call = owner;
    finish_call(call->client, call, code);
}
