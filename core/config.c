/* config.c owns the command line: the flag table, defaults, parsing and --check output. */
#include "config.h"

#include "cpu_budget.h"
#include "duration.h"
#include "policy_limits.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define TOKENGATE_STRINGIFY_(x) #x
#define TOKENGATE_STRINGIFY(x) TOKENGATE_STRINGIFY_(x) /* a macro's value as a string literal */

#ifndef TOKENGATE_VERSION
#define TOKENGATE_VERSION "0.0.0"
#endif
#ifndef TOKENGATE_GIT
#define TOKENGATE_GIT "unknown"
#endif

typedef enum {
    FLAG_STRING,
    FLAG_DURATION,
    FLAG_SIZE,
    FLAG_BYTES,
    FLAG_DOUBLE,
    FLAG_FRACTION,
    FLAG_AUDIENCES,
    FLAG_BOOL,
    FLAG_PERCENT
} flag_kind;

/* One row per flag; offset locates the field in struct config. */
typedef struct flag_spec {
    const char *name;
    flag_kind kind;
    size_t offset;
    const char *help;
} flag_spec;

#define FIELD(f) offsetof(config, f)

static const flag_spec flag_table[] = {
    {"--listen", FLAG_STRING, FIELD(listen), "main listener host:port (default 0.0.0.0:8080)"},
    {"--admin-listen", FLAG_STRING, FIELD(admin_listen),
     "admin listener: metrics, health, cache flush (default 127.0.0.1:9090)"},
    {"--admin-allowed-hosts", FLAG_STRING, FIELD(admin_allowed_hosts),
     "admin listener: Host names accepted besides IP literals, localhost and its own host (comma-separated; "
     "default none: a DNS-rebinding page is refused)"},
    {"--admin-token-file", FLAG_STRING, FIELD(admin_token_file),
     "admin listener: a file holding a bearer token that /metrics, /policy and /cache/flush then require "
     "(health endpoints stay open for probes)"},
    {"--admin-auth-review", FLAG_BOOL, FIELD(admin_auth_review),
     "admin listener: /metrics, /policy and /cache/flush also accept a bearer token that a TokenReview "
     "authenticates and a non-resource SubjectAccessReview allows (get, or create for POST, on the path), as "
     "kube-rbac-proxy protects /metrics"},
    {"--mode", FLAG_STRING, FIELD(mode),
     "authz (default: external auth service for nginx/Envoy/Traefik) or proxy (reverse proxy: allowed requests "
     "are forwarded to --upstream)"},
    {"--upstream", FLAG_STRING, FIELD(upstream),
     "proxy mode: the application's URL, http:// or https:// (a path in it prefixes every forwarded path)"},
    {"--upstream-ca", FLAG_STRING, FIELD(upstream_ca),
     "proxy mode: PEM CA bundle that signs an https upstream's certificate (default: the system CAs)"},
    {"--upstream-timeout", FLAG_DURATION, FIELD(upstream_timeout_ms),
     "proxy mode: how long the upstream may stay silent (to connect, to start its answer, between two reads or "
     "writes) before 504, or a closed connection once the answer has begun (default 30s)"},
    {"--upstream-max-connections", FLAG_SIZE, FIELD(upstream_max_connections),
     "proxy mode: connections to the upstream at once, all workers together (each gets an equal share, rounded up), "
     "kept alive and reused; more requests queue (default 128)"},
    {"--upstream-keep-authorization", FLAG_BOOL, FIELD(upstream_keep_authorization),
     "proxy mode: forward the client's Authorization header. Off by default: the bearer token is a credential "
     "the upstream could replay against the API server or other services, and the upstream gets the identity "
     "in X-Remote-* instead"},
    {"--max-body-bytes", FLAG_BYTES, FIELD(max_body_bytes),
     "proxy mode: largest request body, buffered in memory before it is forwarded; larger: 413 "
     "(default 10Mi)"},
    {"--cache-ttl", FLAG_DURATION, FIELD(cache_ttl_ms), "positive TokenReview TTL (default 2m)"},
    {"--cache-negative-ttl", FLAG_DURATION, FIELD(cache_negative_ttl_ms),
     "TTL of authenticated:false verdicts (default 10s)"},
    {"--cache-max-ttl", FLAG_DURATION, FIELD(cache_max_ttl_ms), "upper bound of any TTL (default 10m)"},
    {"--cache-max-entries", FLAG_SIZE, FIELD(cache_max_entries), "cache bound, all shards together (default 10000)"},
    {"--review-timeout", FLAG_DURATION, FIELD(review_timeout_ms), "hard deadline of one TokenReview (default 5s)"},
    {"--max-token-bytes", FLAG_BYTES, FIELD(max_token_bytes), "longest accepted token (default 16Ki)"},
    {"--apiserver", FLAG_STRING, FIELD(apiserver), "API server URL, https://host:port"},
    {"--apiserver-ca", FLAG_STRING, FIELD(apiserver_ca), "CA bundle that signs the API server's certificate"},
    {"--apiserver-token-file", FLAG_STRING, FIELD(apiserver_token_file),
     "file holding the gateway's own bearer credential; re-read when it changes"},
    {"--kubeconfig", FLAG_STRING, FIELD(kubeconfig),
     "take the API server and credential from this kubeconfig (else $KUBECONFIG's first file, else in-cluster; "
     "explicit --apiserver flags win; see docs/APISERVER.md)"},
    {"--context", FLAG_STRING, FIELD(context), "kubeconfig context to use (default: its current-context)"},
    {"--serviceaccount-dir", FLAG_STRING, FIELD(serviceaccount_dir),
     "in-cluster: where token, ca.crt and namespace are mounted (default "
     "/var/run/secrets/kubernetes.io/serviceaccount)"},
    {"--audiences", FLAG_AUDIENCES, 0, "comma-separated audiences sent in each TokenReview"},
    {"--policy", FLAG_STRING, FIELD(policy),
     "Lua policy file, reloaded on SIGHUP (default: built-in policies/default.lua; \"none\": allow every "
     "authenticated caller without running Lua)"},
    {"--policy-watch", FLAG_BOOL, FIELD(policy_watch),
     "also reload the policy when its file changes (ConfigMap volumes swap a symlink)"},
    {"--policy-max-instructions", FLAG_SIZE, FIELD(policy_max_instructions),
     "Lua instructions one policy hook may run (default " TOKENGATE_STRINGIFY(POLICY_DEFAULT_MAX_INSTRUCTIONS) ")"},
    {"--policy-max-memory-bytes", FLAG_BYTES, FIELD(policy_max_memory_bytes),
     "memory cap of each policy Lua state (default 64Mi)"},
    {"--policy-max-call-time", FLAG_DURATION, FIELD(policy_max_call_ms),
     "wall-clock limit of one policy call, hook or load (default 1s)"},
    {"--sar-allowed-ttl", FLAG_DURATION, FIELD(sar_allowed_ttl_ms), "TTL of allowed SubjectAccessReviews (default 5m)"},
    {"--sar-denied-ttl", FLAG_DURATION, FIELD(sar_denied_ttl_ms), "TTL of denied SubjectAccessReviews (default 30s)"},
    {"--apiserver-qps", FLAG_DOUBLE, FIELD(apiserver_qps),
     "API calls per second, TokenReview and SubjectAccessReview together (default 50)"},
    {"--apiserver-burst", FLAG_SIZE, FIELD(apiserver_burst), "API calls allowed at once above the rate (default 100)"},
    {"--review-max-pending", FLAG_SIZE, FIELD(review_max_pending),
     "reviews that may wait for the rate limit; beyond it requests get 503 at once (default 1000)"},
    {"--circuit-failure-threshold", FLAG_SIZE, FIELD(circuit_failure_threshold),
     "consecutive failed API calls that open the circuit (default 5)"},
    {"--circuit-cooldown", FLAG_DURATION, FIELD(circuit_cooldown_ms),
     "how long an open circuit fails fast before one probe call (default 5s)"},
    {"--stale-if-error", FLAG_DURATION, FIELD(stale_if_error_ms),
     "serve a positive verdict up to this long past its expiry while the API server fails (default 0: off; "
     "see the README's security note)"},
    {"--shutdown-grace", FLAG_DURATION, FIELD(shutdown_grace_ms),
     "on SIGTERM/SIGINT, how long in-flight requests may finish (default 20s)"},
    {"--tls-cert-file", FLAG_STRING, FIELD(tls_cert_file),
     "serve HTTPS on the main listener with this PEM certificate chain (TLS 1.2+; re-read on SIGHUP)"},
    {"--tls-key-file", FLAG_STRING, FIELD(tls_key_file), "the private key of --tls-cert-file"},
    {"--forwarded-headers", FLAG_STRING, FIELD(forwarded_headers),
     "the proxy in front, whose headers give policies the original method/URI/host: none (default: "
     "the request itself, as Envoy ext_authz sends it), nginx (X-Original-Method/-URI), ingress-nginx "
     "(X-Original-URL/-Method), traefik (X-Forwarded-Method/-Uri/-Host); a request with another "
     "family's headers, or without the named family's, is refused (400)"},
    {"--read-timeout", FLAG_DURATION, FIELD(read_timeout_ms),
     "main listener: a connection idle this long (reading or writing) is closed (default 30s)"},
    {"--max-header-count", FLAG_SIZE, FIELD(max_header_count),
     "requests with more header fields are refused with 431 (default 100)"},
    {"--max-connections", FLAG_SIZE, FIELD(max_connections),
     "main listener: open client connections at most, all workers together; beyond it new connections wait in "
     "the kernel's accept queue (default 10000)"},
    {"--header-timeout", FLAG_DURATION, FIELD(header_timeout_ms),
     "main listener: the request line and headers must arrive within this, counted from the request's first "
     "byte (a new connection: from its accept, TLS handshake included); else the connection is closed "
     "(default 10s)"},
    {"--body-timeout", FLAG_DURATION, FIELD(body_timeout_ms),
     "main listener: the request body must arrive within this after the headers; else the connection is "
     "closed (default 60s)"},
    {"--max-unauthenticated-body-bytes", FLAG_SIZE, FIELD(max_unauthenticated_body_bytes),
     "proxy mode: largest body of a request without an Authorization header; larger: read and dropped, never "
     "buffered, answered 413 (default 65536)"},
    {"--max-buffered-body-bytes", FLAG_SIZE, FIELD(max_buffered_body_bytes),
     "proxy mode: request bodies being received before authorization, all connections together; the "
     "connection whose body would pass it is closed (default 134217728; 0: no bound)"},
    {"--admin-max-connections", FLAG_SIZE, FIELD(admin_max_connections),
     "admin listener: open connections at most; beyond it new ones wait in the accept queue (default 64)"},
    {"--workers", FLAG_SIZE, FIELD(workers),
     "event-loop threads serving the main listener (default: the CPUs this process may use: the affinity mask, "
     "capped by the cgroup CPU quota rounded up, at least 1)"},
    {"--cache-refresh-ahead", FLAG_PERCENT, FIELD(cache_refresh_ahead_percent),
     "a hit in the last PERCENT of a positive entry's TTL starts one background review and is answered from "
     "the cache at once (default 10%; 0: off)"},
    {"--watch-revocations", FLAG_BOOL, FIELD(watch_revocations),
     "watch ServiceAccounts and evict the cached identities of deleted ones (needs list/watch on "
     "serviceaccounts; see docs/REVOCATION.md)"},
    {"--watch-pods", FLAG_BOOL, FIELD(watch_pods),
     "with --watch-revocations: also watch Pods and evict tokens bound to deleted pods (needs list/watch on "
     "pods)"},
    {"--jwt-preverify", FLAG_STRING, FIELD(jwt_preverify),
     "check ServiceAccount JWTs against the cluster issuer's public keys before TokenReview and refuse "
     "forged, expired or wrong-audience ones without an API call: review-others (default: tokens that are not "
     "this issuer's JWTs still go to TokenReview), refuse-others (refuse them), off (docs/PREVERIFY.md)"},
    {"--access-log", FLAG_STRING, FIELD(access_log),
     "the decision log, one JSON line per answer (who, what, decided by which step, why): off (default), "
     "stdout, or a file path (reopened on SIGUSR1, for logrotate); see docs/OPERATIONS.md"},
    {"--access-log-sample-allowed", FLAG_FRACTION, FIELD(access_log_sample_allowed),
     "share of allowed answers written to the decision log, 0 to 1 (default 1); refusals are always written"},
    {"--log-level", FLAG_STRING, FIELD(log_level), "debug, info (default), warn, error (any case)"},
    {"--check", FLAG_BOOL, FIELD(check_only), "validate the configuration, print it, exit 0 or 1"},
};

/* The TTL defaults, also named in validate_ttl_caps' messages. */
typedef struct config_defaults_ttl {
    int64_t cache_ttl_ms, cache_negative_ttl_ms, cache_max_ttl_ms;
} config_defaults_ttl;
static const config_defaults_ttl default_ttls = {2 * 60 * 1000, 10 * 1000, 10 * 60 * 1000};

static void config_defaults(config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = "0.0.0.0:8080";
    cfg->admin_listen = "127.0.0.1:9090";
    cfg->mode = "authz";
    cfg->cache_ttl_ms = default_ttls.cache_ttl_ms;
    cfg->cache_negative_ttl_ms = default_ttls.cache_negative_ttl_ms;
    cfg->cache_max_ttl_ms = default_ttls.cache_max_ttl_ms;
    cfg->cache_max_entries = 10000;
    cfg->review_timeout_ms = 5000;
    cfg->max_token_bytes = 16384;
    cfg->log_level = "info";
    cfg->access_log = "off";
    cfg->access_log_sample_allowed = 1;
    cfg->forwarded_headers = "none";
    cfg->jwt_preverify = "review-others";
    cfg->policy_max_instructions = POLICY_DEFAULT_MAX_INSTRUCTIONS;
    cfg->policy_max_memory_bytes = POLICY_DEFAULT_MAX_MEMORY_BYTES;
    cfg->policy_max_call_ms = 1000;
    cfg->sar_allowed_ttl_ms = 5 * 60 * 1000;
    cfg->sar_denied_ttl_ms = 30 * 1000;
    cfg->apiserver_qps = 50;
    cfg->apiserver_burst = 100;
    cfg->review_max_pending = 1000;
    cfg->circuit_failure_threshold = 5;
    cfg->circuit_cooldown_ms = 5000;
    cfg->stale_if_error_ms = 0;
    cfg->shutdown_grace_ms = 20000;
    cfg->read_timeout_ms = 30000;
    cfg->max_header_count = 100;
    cfg->max_connections = 10000;
    cfg->header_timeout_ms = 10000;
    cfg->body_timeout_ms = 60000;
    cfg->max_unauthenticated_body_bytes = 65536;
    cfg->max_buffered_body_bytes = 128 * 1024 * 1024;
    cfg->admin_max_connections = 64;
    cfg->workers = 0; /* 0: config_workers() answers the CPUs the process may use */
    cfg->cache_refresh_ahead_percent = 10;
    cfg->upstream_timeout_ms = 30000;
    cfg->upstream_max_connections = 128;
    cfg->max_body_bytes = 10 * 1024 * 1024;
}

void config_apiserver_inputs(const config *cfg, apiserver_inputs *in)
{
    apiserver_inputs_from_env(in);
    in->apiserver = cfg->apiserver;
    in->apiserver_ca = cfg->apiserver_ca;
    in->apiserver_token_file = cfg->apiserver_token_file;
    in->kubeconfig = cfg->kubeconfig;
    in->context = cfg->context;
    if (cfg->serviceaccount_dir) in->serviceaccount_dir = cfg->serviceaccount_dir;
}

bool config_proxy_mode(const config *cfg)
{
    return strcmp(cfg->mode, "proxy") == 0;
}

bool config_policy_enabled(const config *cfg)
{
    return !(cfg->policy && strcmp(cfg->policy, "none") == 0);
}

static void print_help(FILE *out)
{
    fprintf(out, "usage: tokengate [flags]\n\n"
                 "Authenticates Kubernetes ServiceAccount tokens with cached TokenReviews.\n\n");
    for (size_t i = 0; i < sizeof(flag_table) / sizeof(flag_table[0]); i++) {
        const char *arg = flag_table[i].kind == FLAG_BOOL       ? ""
                          : flag_table[i].kind == FLAG_DURATION ? " DURATION"
                          : flag_table[i].kind == FLAG_SIZE     ? " N"
                          : flag_table[i].kind == FLAG_BYTES    ? " BYTES"
                          : flag_table[i].kind == FLAG_DOUBLE   ? " NUMBER"
                          : flag_table[i].kind == FLAG_FRACTION ? " FRACTION"
                          : flag_table[i].kind == FLAG_PERCENT  ? " PERCENT"
                                                                : " VALUE";
        fprintf(out, "  %s%s\n      %s\n", flag_table[i].name, arg, flag_table[i].help);
    }
    fprintf(out, "  --help, --version\n\n"
                 "Durations are Go-style: 500ms, 30s, 2m, 1h30m. BYTES are Kubernetes quantities: 16384, 16Ki,\n"
                 "10Mi, 1Gi (powers of 1024) or 500k, 10M (powers of 1000). A flag without a value is true;\n"
                 "--flag=true, --flag=false, --flag=1 and --flag=0 are accepted too.\n");
}

/* Splits text (a copy owned by cfg) on commas into cfg->audiences. */
static int parse_audiences(config *cfg, const char *text, FILE *out)
{
    size_t len = strlen(text);
    if (len >= sizeof(cfg->audiences_text)) {
        fprintf(out, "tokengate: --audiences is longer than %zu bytes\n", sizeof(cfg->audiences_text) - 1);
        return -1;
    }
    memcpy(cfg->audiences_text, text, len + 1);
    cfg->n_audiences = 0;
    char *save = NULL;
    for (char *tok = strtok_r(cfg->audiences_text, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (cfg->n_audiences == CONFIG_MAX_AUDIENCES) {
            fprintf(out, "tokengate: at most %d audiences\n", CONFIG_MAX_AUDIENCES);
            return -1;
        }
        cfg->audiences[cfg->n_audiences++] = tok;
    }
    return 0;
}

static int parse_size(const char *text, size_t *out_value)
{
    if (!text || !*text || *text == '-') return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || v > (1ULL << 40)) return -1;
    *out_value = (size_t)v;
    return 0;
}

static int apply_flag(config *cfg, const flag_spec *spec, const char *value, FILE *out)
{
    char *field = (char *)cfg + spec->offset;
    switch (spec->kind) {
    case FLAG_STRING: *(const char **)field = value; return 0;
    case FLAG_DURATION:
        if (duration_parse(value, (int64_t *)field) == 0) return 0;
        fprintf(out, "tokengate: %s: not a duration: \"%s\" (use e.g. 500ms, 30s, 2m)\n", spec->name, value);
        return -1;
    case FLAG_SIZE:
        if (parse_size(value, (size_t *)field) == 0) return 0;
        fprintf(out, "tokengate: %s: not a non-negative integer: \"%s\"\n", spec->name, value);
        return -1;
    case FLAG_BYTES: {
        uint64_t bytes = 0;
        if (quantity_parse_bytes(value, 1ULL << 40, &bytes) == 0) {
            *(size_t *)field = (size_t)bytes;
            return 0;
        }
        fprintf(out, "tokengate: %s: not a byte quantity: \"%s\" (use e.g. 16384, 16Ki, 10Mi, 1Gi, 500k)\n", spec->name,
                value);
        return -1;
    }
    case FLAG_DOUBLE: {
        char *end = NULL;
        errno = 0;
        double v = strtod(value, &end);
        if (!errno && end != value && !*end && v > 0 && v <= 1e6) {
            *(double *)field = v;
            return 0;
        }
        fprintf(out, "tokengate: %s: not a positive number: \"%s\"\n", spec->name, value);
        return -1;
    }
    case FLAG_FRACTION: {
        char *end = NULL;
        errno = 0;
        double v = strtod(value, &end);
        if (!errno && end != value && !*end && v >= 0 && v <= 1) {
            *(double *)field = v;
            return 0;
        }
        fprintf(out, "tokengate: %s: not a number from 0 to 1: \"%s\"\n", spec->name, value);
        return -1;
    }
    case FLAG_PERCENT: {
        /* "10%" or "10": a whole percentage, 0 to 50 (refreshing earlier than half-way
         * through a TTL would double the API calls for nothing). */
        char *end = NULL;
        errno = 0;
        unsigned long v = strtoul(value, &end, 10);
        if (!errno && end != value && (!*end || (end[0] == '%' && !end[1])) && value[0] != '-' && v <= 50) {
            *(unsigned *)field = (unsigned)v;
            return 0;
        }
        fprintf(out, "tokengate: %s: not a percentage from 0 to 50: \"%s\" (e.g. 10%%)\n", spec->name, value);
        return -1;
    }
    case FLAG_AUDIENCES: return parse_audiences(cfg, value, out);
    case FLAG_BOOL:
        /* No value: true. "--flag=VALUE": true/false/1/0, any case (templated manifests
         * write "--flag={{ .Values.x }}"). Anything else is refused, not guessed. */
        if (!value || strcasecmp(value, "true") == 0 || strcmp(value, "1") == 0) {
            *(bool *)field = true;
            return 0;
        }
        if (strcasecmp(value, "false") == 0 || strcmp(value, "0") == 0) {
            *(bool *)field = false;
            return 0;
        }
        fprintf(out, "tokengate: %s=%s: use %s, %s=true or %s=false\n", spec->name, value, spec->name, spec->name,
                spec->name);
        return -1;
    }
    return -1;
}

/* The canonical spelling of a log level given in any case, or NULL. */
static const char *canonical_log_level(const char *level)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
        if (strcasecmp(level, levels[i]) == 0) return levels[i];
    return NULL;
}

config_action config_parse(config *cfg, int argc, char **argv, FILE *out)
{
    config_defaults(cfg);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            (void)out;
            print_help(stdout);
            return CONFIG_EXIT_OK;
        }
        if (strcmp(arg, "--version") == 0) {
            printf("tokengate %s (%s)\n", TOKENGATE_VERSION, TOKENGATE_GIT);
            return CONFIG_EXIT_OK;
        }
        /* Accept both "--flag value" and "--flag=value". */
        const char *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const flag_spec *spec = NULL;
        for (size_t f = 0; f < sizeof(flag_table) / sizeof(flag_table[0]); f++) {
            if (strlen(flag_table[f].name) == name_len && strncmp(flag_table[f].name, arg, name_len) == 0) {
                spec = &flag_table[f];
                break;
            }
        }
        if (!spec) {
            fprintf(out, "tokengate: unknown flag %.*s (see --help)\n", (int)name_len, arg);
            return CONFIG_EXIT_ERROR;
        }
        const char *value = NULL;
        if (spec->kind == FLAG_BOOL) {
            /* A boolean takes its value only after '=': "--check false" would otherwise
             * be ambiguous with a positional argument. */
            if (eq) value = eq + 1;
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fprintf(out, "tokengate: %s needs a value\n", spec->name);
            return CONFIG_EXIT_ERROR;
        }
        if (apply_flag(cfg, spec, value, out) != 0) return CONFIG_EXIT_ERROR;
    }
    /* "DEBUG" and "Info" mean what "debug" and "info" mean; an unknown level is left as
     * given for config_validate to refuse. */
    const char *level = canonical_log_level(cfg->log_level);
    if (level) cfg->log_level = level;
    return CONFIG_RUN;
}

static int check_readable(const char *flag, const char *path, FILE *out)
{
    if (access(path, R_OK) == 0) return 0;
    fprintf(out, "tokengate: %s %s: %s\n", flag, path, strerror(errno));
    return -1;
}

/* An upstream URL the proxy can use: http:// or https://, a host, an optional port and
 * path; no user info, query or fragment (they would be ambiguous or leak credentials). */
static bool upstream_url_ok(const char *url)
{
    const char *rest = strncmp(url, "http://", 7) == 0 ? url + 7 : strncmp(url, "https://", 8) == 0 ? url + 8 : NULL;
    if (!rest) return false;
    size_t authority = strcspn(rest, "/");
    if (authority == 0 || memchr(rest, '@', authority)) return false;
    for (const char *p = url; *p; p++)
        if (*p == '?' || *p == '#' || (unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) return false;
    return true;
}

/* The proxy-mode flags: --mode proxy needs an upstream; authz mode takes none. */
static int validate_mode(const config *cfg, FILE *out)
{
    int rc = 0;
    bool proxy = config_proxy_mode(cfg);
    if (!proxy && strcmp(cfg->mode, "authz") != 0) {
        fprintf(out, "tokengate: --mode %s: use authz or proxy\n", cfg->mode);
        return -1;
    }
    if (!proxy) {
        if (cfg->upstream || cfg->upstream_ca || cfg->upstream_keep_authorization) {
            fprintf(out, "tokengate: --upstream, --upstream-ca and --upstream-keep-authorization need --mode proxy\n");
            rc = -1;
        }
        return rc;
    }
    if (!cfg->upstream) {
        fprintf(out, "tokengate: --mode proxy needs --upstream URL\n");
        return -1;
    }
    if (!upstream_url_ok(cfg->upstream)) {
        fprintf(out,
                "tokengate: --upstream %s: use http://host[:port][/path] or https://...; no user info, query "
                "or fragment\n",
                cfg->upstream);
        rc = -1;
    }
    if (cfg->upstream_ca) {
        if (strncmp(cfg->upstream, "https://", 8) != 0) {
            fprintf(out, "tokengate: --upstream-ca needs an https:// --upstream\n");
            rc = -1;
        } else if (check_readable("--upstream-ca", cfg->upstream_ca, out) != 0) {
            rc = -1;
        }
    }
    if (cfg->upstream_timeout_ms < 1 || cfg->upstream_max_connections < 1) {
        fprintf(out, "tokengate: --upstream-timeout must be positive and --upstream-max-connections >= 1\n");
        rc = -1;
    }
    if (cfg->max_body_bytes > (size_t)1 << 30) {
        fprintf(out, "tokengate: --max-body-bytes is at most 1073741824 (bodies are buffered in memory)\n");
        rc = -1;
    }
    /* The policy must judge the request the client actually sends to the upstream. */
    if (strcmp(cfg->forwarded_headers, "none") != 0) {
        fprintf(out, "tokengate: --forwarded-headers %s: in proxy mode the policy always sees the request itself\n",
                cfg->forwarded_headers);
        rc = -1;
    }
    return rc;
}

/* One TTL flag above its cap would be clamped without a word, so the operator's number
 * would not be the one in force. Refused (not warned): a warning scrolls past in a pod's
 * log while the surprise lasts. The message names the value that is a default. */
static int validate_ttl_caps(const config *cfg, FILE *out)
{
    const config_defaults_ttl defaults = default_ttls;
    const struct {
        const char *name;
        int64_t value, default_value;
    } capped[] = {
        {"--cache-ttl", cfg->cache_ttl_ms, defaults.cache_ttl_ms},
        {"--cache-negative-ttl", cfg->cache_negative_ttl_ms, defaults.cache_negative_ttl_ms},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof(capped) / sizeof(capped[0]); i++) {
        if (capped[i].value <= cfg->cache_max_ttl_ms) continue;
        char value[32], cap[32];
        duration_format(capped[i].value, value, sizeof(value));
        duration_format(cfg->cache_max_ttl_ms, cap, sizeof(cap));
        fprintf(out,
                "tokengate: %s %s%s is above --cache-max-ttl %s%s: lower %s or raise --cache-max-ttl (no TTL may "
                "exceed it)\n",
                capped[i].name, value, capped[i].value == capped[i].default_value ? " (the default)" : "", cap,
                cfg->cache_max_ttl_ms == defaults.cache_max_ttl_ms ? " (the default)" : "", capped[i].name);
        rc = -1;
    }
    return rc;
}

/* --access-log FILE: the file, or its directory when it does not exist yet, must be
 * writable (checked without creating it: --check writes nothing). */
static int validate_access_log(const config *cfg, FILE *out)
{
    const char *target = cfg->access_log;
    if (!target[0]) {
        fprintf(out, "tokengate: --access-log: use off, stdout or a file path\n");
        return -1;
    }
    if (strcmp(target, "off") == 0 || strcmp(target, "stdout") == 0) {
        if (strcmp(target, "off") == 0 && cfg->access_log_sample_allowed < 1) {
            fprintf(out, "tokengate: --access-log-sample-allowed needs --access-log\n");
            return -1;
        }
        return 0;
    }
    if (access(target, F_OK) == 0) {
        if (access(target, W_OK) == 0) return 0;
        fprintf(out, "tokengate: --access-log %s: %s\n", target, strerror(errno));
        return -1;
    }
    char dir[4096];
    const char *slash = strrchr(target, '/');
    size_t dir_len = slash ? (size_t)(slash - target) : 0;
    if (dir_len >= sizeof(dir)) {
        fprintf(out, "tokengate: --access-log: path too long\n");
        return -1;
    }
    if (slash) memcpy(dir, target, dir_len);
    dir[dir_len] = '\0';
    const char *where = !slash ? "." : dir_len ? dir : "/";
    if (access(where, W_OK) == 0) return 0;
    fprintf(out, "tokengate: --access-log %s: cannot create it in %s: %s\n", target, where, strerror(errno));
    return -1;
}

int config_validate(const config *cfg, FILE *out)
{
    int rc = validate_mode(cfg, out);
    /* The API server: explicit flags > --kubeconfig > $KUBECONFIG > in-cluster. `--check
     * --policy FILE` alone validates a policy: no API server is then only a note. */
    apiserver_inputs api_in;
    config_apiserver_inputs(cfg, &api_in);
    apiserver_settings api;
    char api_err[1024];
    int api_rc = apiserver_resolve(&api_in, &api, api_err, sizeof(api_err));
    apiserver_settings_free(&api);
    if (api_rc == APISERVER_NOT_CONFIGURED && cfg->check_only) {
        fprintf(out, "tokengate: note: %s (needed to serve, not to check a policy)\n", api_err);
    } else if (api_rc != APISERVER_OK) {
        fprintf(out, "tokengate: %s\n", api_err);
        rc = -1;
    }
    if (cfg->cache_max_entries == 0) {
        fprintf(out, "tokengate: --cache-max-entries must be at least 1\n");
        rc = -1;
    }
    if (validate_ttl_caps(cfg, out) != 0) rc = -1;
    if (cfg->review_timeout_ms < 1) {
        fprintf(out, "tokengate: --review-timeout must be positive\n");
        rc = -1;
    }
    if (cfg->max_token_bytes < 1 || cfg->max_token_bytes > 1024 * 1024) {
        fprintf(out, "tokengate: --max-token-bytes must be between 1 and 1048576\n");
        rc = -1;
    }
    if (cfg->policy && config_policy_enabled(cfg) && check_readable("--policy", cfg->policy, out) != 0) rc = -1;
    if (cfg->admin_token_file && check_readable("--admin-token-file", cfg->admin_token_file, out) != 0) rc = -1;
    if (cfg->policy_watch && !(cfg->policy && config_policy_enabled(cfg))) {
        fprintf(out, "tokengate: --policy-watch needs --policy FILE\n");
        rc = -1;
    }
    if (cfg->policy_max_instructions < 1000 || cfg->policy_max_memory_bytes < 1024 * 1024) {
        fprintf(out, "tokengate: --policy-max-instructions must be >= 1000 and --policy-max-memory-bytes >= 1048576\n");
        rc = -1;
    }
    if (cfg->policy_max_call_ms < 10 || cfg->policy_max_call_ms > 3600000) {
        fprintf(out, "tokengate: --policy-max-call-time must be between 10ms and 1h\n");
        rc = -1;
    }
    if (cfg->apiserver_burst < 1 || cfg->review_max_pending < 1 || cfg->circuit_failure_threshold < 1) {
        fprintf(out,
                "tokengate: --apiserver-burst, --review-max-pending and --circuit-failure-threshold must be >= 1\n");
        rc = -1;
    }
    if (cfg->max_connections < 1 || cfg->admin_max_connections < 1) {
        fprintf(out, "tokengate: --max-connections and --admin-max-connections must be at least 1\n");
        rc = -1;
    }
    if (cfg->header_timeout_ms < 1 || cfg->body_timeout_ms < 1) {
        fprintf(out, "tokengate: --header-timeout and --body-timeout must be positive\n");
        rc = -1;
    }
    if (cfg->workers > CONFIG_MAX_WORKERS) {
        fprintf(out, "tokengate: --workers must be between 1 and %d (0 or unset: the CPUs this process may use)\n",
                CONFIG_MAX_WORKERS);
        rc = -1;
    }
    if (cfg->watch_pods && !cfg->watch_revocations) {
        fprintf(out, "tokengate: --watch-pods needs --watch-revocations\n");
        rc = -1;
    }
    if (!cfg->tls_cert_file != !cfg->tls_key_file) {
        fprintf(out, "tokengate: --tls-cert-file and --tls-key-file go together\n");
        rc = -1;
    } else if (cfg->tls_cert_file && (check_readable("--tls-cert-file", cfg->tls_cert_file, out) != 0 ||
                                      check_readable("--tls-key-file", cfg->tls_key_file, out) != 0)) {
        rc = -1;
    }
    if (strcmp(cfg->jwt_preverify, "review-others") && strcmp(cfg->jwt_preverify, "refuse-others") &&
        strcmp(cfg->jwt_preverify, "off")) {
        fprintf(out, "tokengate: --jwt-preverify %s: use review-others, refuse-others or off\n", cfg->jwt_preverify);
        rc = -1;
    }
    if (strcmp(cfg->forwarded_headers, "auto") == 0) {
        /* Removed: it picked the header family from what the request carried, so a client
         * could add X-Forwarded-Uri behind nginx and choose the path the policy judged. */
        fprintf(out, "tokengate: --forwarded-headers auto was removed (the client could choose which headers "
                     "were judged): name the proxy in front: none, nginx, ingress-nginx or traefik\n");
        rc = -1;
    } else if (strcmp(cfg->forwarded_headers, "traefik") && strcmp(cfg->forwarded_headers, "nginx") &&
               strcmp(cfg->forwarded_headers, "ingress-nginx") && strcmp(cfg->forwarded_headers, "none")) {
        fprintf(out, "tokengate: --forwarded-headers %s: use none, nginx, ingress-nginx or traefik\n",
                cfg->forwarded_headers);
        rc = -1;
    }
    if (validate_access_log(cfg, out) != 0) rc = -1;
    if (!canonical_log_level(cfg->log_level)) {
        fprintf(out, "tokengate: --log-level %s: use debug, info, warn or error\n", cfg->log_level);
        rc = -1;
    }
    return rc;
}

void config_print(const config *cfg, FILE *out)
{
    char ttl[32], neg[32], max[32], timeout[32];
    duration_format(cfg->cache_ttl_ms, ttl, sizeof(ttl));
    duration_format(cfg->cache_negative_ttl_ms, neg, sizeof(neg));
    duration_format(cfg->cache_max_ttl_ms, max, sizeof(max));
    duration_format(cfg->review_timeout_ms, timeout, sizeof(timeout));
    fprintf(out, "mode: %s\nlisten: %s\nadmin-listen: %s\n", cfg->mode, cfg->listen, cfg->admin_listen);
    /* The flags as given; main prints the API server actually chosen ("apiserver: ..."). */
    fprintf(out, "apiserver-flag: %s\n", cfg->apiserver ? cfg->apiserver : "(none)");
    fprintf(out, "apiserver-ca: %s\napiserver-token-file: %s\n", cfg->apiserver_ca ? cfg->apiserver_ca : "(none)",
            cfg->apiserver_token_file ? cfg->apiserver_token_file : "(none)");
    fprintf(out, "kubeconfig: %s\ncontext: %s\n", cfg->kubeconfig ? cfg->kubeconfig : "(none)",
            cfg->context ? cfg->context : "(current-context)");
    fprintf(out, "cache-ttl: %s\ncache-negative-ttl: %s\ncache-max-ttl: %s\ncache-max-entries: %zu\n", ttl, neg, max,
            cfg->cache_max_entries);
    fprintf(out, "review-timeout: %s\nmax-token-bytes: %zu\naudiences:", timeout, cfg->max_token_bytes);
    if (cfg->n_audiences == 0) fprintf(out, " (none)");
    for (size_t i = 0; i < cfg->n_audiences; i++) fprintf(out, " %s", cfg->audiences[i]);
    char sar_allowed[32], sar_denied[32];
    duration_format(cfg->sar_allowed_ttl_ms, sar_allowed, sizeof(sar_allowed));
    duration_format(cfg->sar_denied_ttl_ms, sar_denied, sizeof(sar_denied));
    fprintf(out, "\npolicy: %s%s\n", cfg->policy ? cfg->policy : "(built-in default)",
            cfg->policy_watch ? " (watched)" : "");
    fprintf(out, "policy-max-instructions: %zu\npolicy-max-memory-bytes: %zu\npolicy-max-call-time: %lldms\n",
            cfg->policy_max_instructions, cfg->policy_max_memory_bytes, (long long)cfg->policy_max_call_ms);
    fprintf(out, "sar-allowed-ttl: %s\nsar-denied-ttl: %s\n", sar_allowed, sar_denied);
    char cooldown[32], stale[32], grace[32];
    duration_format(cfg->circuit_cooldown_ms, cooldown, sizeof(cooldown));
    duration_format(cfg->stale_if_error_ms, stale, sizeof(stale));
    duration_format(cfg->shutdown_grace_ms, grace, sizeof(grace));
    fprintf(out, "apiserver-qps: %g\napiserver-burst: %zu\nreview-max-pending: %zu\n", cfg->apiserver_qps,
            cfg->apiserver_burst, cfg->review_max_pending);
    fprintf(out, "circuit-failure-threshold: %zu\ncircuit-cooldown: %s\nstale-if-error: %s%s\nshutdown-grace: %s\n",
            cfg->circuit_failure_threshold, cooldown, stale, cfg->stale_if_error_ms ? "" : " (off)", grace);
    fprintf(out, "tls: %s%s%s\n", cfg->tls_cert_file ? cfg->tls_cert_file : "off (plain HTTP)",
            cfg->tls_cert_file ? ", key " : "", cfg->tls_key_file ? cfg->tls_key_file : "");
    fprintf(out, "forwarded-headers: %s%s\n", cfg->forwarded_headers,
            config_proxy_mode(cfg) ? " (proxy mode: the request itself)" : "");
    if (config_proxy_mode(cfg)) {
        char upstream_timeout[32];
        duration_format(cfg->upstream_timeout_ms, upstream_timeout, sizeof(upstream_timeout));
        fprintf(out, "upstream: %s\nupstream-ca: %s\nupstream-timeout: %s\nupstream-max-connections: %zu\n",
                cfg->upstream ? cfg->upstream : "(none)", cfg->upstream_ca ? cfg->upstream_ca : "(system CAs)",
                upstream_timeout, cfg->upstream_max_connections);
        fprintf(out, "upstream-keep-authorization: %s\nmax-body-bytes: %zu\n",
                cfg->upstream_keep_authorization ? "yes" : "no (removed before forwarding)", cfg->max_body_bytes);
    }
    fprintf(out, "max-connections: %zu\nadmin-max-connections: %zu\n", cfg->max_connections,
            cfg->admin_max_connections);
    {
        char header_timeout[32], body_timeout[32];
        duration_format(cfg->header_timeout_ms, header_timeout, sizeof(header_timeout));
        duration_format(cfg->body_timeout_ms, body_timeout, sizeof(body_timeout));
        fprintf(out, "header-timeout: %s\nbody-timeout: %s\n", header_timeout, body_timeout);
    }
    if (config_proxy_mode(cfg))
        fprintf(out, "max-unauthenticated-body-bytes: %zu\nmax-buffered-body-bytes: %zu%s\n",
                cfg->max_unauthenticated_body_bytes, cfg->max_buffered_body_bytes,
                cfg->max_buffered_body_bytes ? "" : " (no bound)");
    char workers_why[CONFIG_WORKERS_WHY_MAX];
    size_t workers = config_workers(cfg, workers_why, sizeof(workers_why));
    fprintf(out, "workers: %zu (%s)\ncache-refresh-ahead: %u%%%s\n", workers, workers_why,
            cfg->cache_refresh_ahead_percent, cfg->cache_refresh_ahead_percent ? "" : " (off)");
    fprintf(out, "watch-revocations: %s\n",
            cfg->watch_revocations ? (cfg->watch_pods ? "serviceaccounts, pods" : "serviceaccounts") : "off");
    fprintf(out, "jwt-preverify: %s\n", cfg->jwt_preverify);
    if (cfg->access_log_sample_allowed < 1 && strcmp(cfg->access_log, "off") != 0)
        fprintf(out, "access-log: %s (allowed answers sampled at %g, refusals all)\n", cfg->access_log,
                cfg->access_log_sample_allowed);
    else
        fprintf(out, "access-log: %s\n", cfg->access_log);
    fprintf(out, "log-level: %s\n", cfg->log_level);
}

size_t config_workers(const config *cfg, char *why, size_t why_cap)
{
    if (cfg->workers) {
        if (why) snprintf(why, why_cap, "--workers");
        return cfg->workers;
    }
    cpu_budget budget;
    cpu_budget_detect(&budget);
    size_t n = budget.cpus > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS : budget.cpus;
    if (why) snprintf(why, why_cap, "%s%s", budget.why, n < budget.cpus ? "; at most 64" : "");
    return n;
}
