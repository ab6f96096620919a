/* The gateway's configuration: flags, their defaults (listed by --help), validation and
 * the --check / --help output. Parsing allocates nothing: string fields point into argv. */
#ifndef TOKENGATE_CONFIG_H
#define TOKENGATE_CONFIG_H

#include "apiserver_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_MAX_AUDIENCES 16
#define CONFIG_AUDIENCES_TEXT_MAX 4096
#define CONFIG_MAX_WORKERS 64
#define CONFIG_WORKERS_WHY_MAX 1600 /* config_workers' explanation, at most */

typedef enum { CONFIG_RUN, CONFIG_EXIT_OK, CONFIG_EXIT_ERROR } config_action;

typedef struct config {
    const char *listen;       /* host:port of the main listener */
    const char *admin_listen; /* host:port of the admin listener */
    const char *mode;         /* "authz" or "proxy" (config_proxy_mode) */

    int64_t cache_ttl_ms;
    int64_t cache_negative_ttl_ms;
    int64_t cache_max_ttl_ms;
    size_t cache_max_entries;
    int64_t review_timeout_ms;
    size_t max_token_bytes;

    const char *apiserver;            /* https://host:port */
    const char *apiserver_ca;         /* PEM CA bundle file */
    const char *apiserver_token_file; /* the gateway's own bearer credential */
    const char *kubeconfig;           /* --kubeconfig FILE (docs/APISERVER.md: precedence) */
    const char *context;              /* --context NAME, else the kubeconfig's current-context */
    const char *serviceaccount_dir;   /* in-cluster mount (default APISERVER_DEFAULT_SERVICEACCOUNT_DIR) */

    /* --audiences a,b: copied into audiences_text and split in place. */
    char audiences_text[CONFIG_AUDIENCES_TEXT_MAX];
    const char *audiences[CONFIG_MAX_AUDIENCES];
    size_t n_audiences;

    /* Lua policy: NULL = the built-in default; "none" = no policy (every authenticated
     * identity allowed, no Lua on the request path). */
    const char *policy;
    bool policy_watch; /* reload when the file changes on disk */
    size_t policy_max_instructions;
    size_t policy_max_memory_bytes;
    int64_t policy_max_call_ms; /* wall-clock limit of one policy call */
    int64_t sar_allowed_ttl_ms;
    int64_t sar_denied_ttl_ms;

    /* Protecting the API server (issue: resilience). */
    double apiserver_qps;
    size_t apiserver_burst;
    size_t review_max_pending;
    size_t circuit_failure_threshold;
    int64_t circuit_cooldown_ms;
    int64_t stale_if_error_ms; /* 0: off */
    int64_t shutdown_grace_ms;
    int64_t read_timeout_ms;               /* main listener: idle/read/write timeout of a connection */
    size_t max_header_count;               /* more request header fields than this: 431 */
    size_t max_connections;                /* main listener: open client connections at most (all workers) */
    int64_t header_timeout_ms;             /* main listener: a request's line and headers complete within this */
    int64_t body_timeout_ms;               /* main listener: a request's body complete within this after its headers */
    size_t max_unauthenticated_body_bytes; /* proxy mode: body of a request without Authorization */
    size_t max_buffered_body_bytes;        /* proxy mode: bodies being read, all workers together */
    size_t admin_max_connections;          /* admin listener: open connections at most */

    /* Performance (issue: workers). */
    size_t workers;                       /* event-loop threads serving the main listener; 0 = the CPU budget */
    unsigned cache_refresh_ahead_percent; /* refresh a hit entry in this last share of its TTL; 0: off */

    /* Revocation watches (docs/REVOCATION.md). */
    bool watch_revocations; /* watch ServiceAccounts: evict the identities of deleted ones */
    bool watch_pods;        /* also watch Pods: evict pod-bound identities of deleted pods */

    /* Local pre-verification of ServiceAccount JWTs (docs/PREVERIFY.md): "review-others"
     * (default), "refuse-others" or "off". */
    const char *jwt_preverify;

    /* HTTPS on the main listener: both or neither. Re-read on SIGHUP. */
    const char *tls_cert_file;
    const char *tls_key_file;

    /* The proxy in front, whose headers describe the original request to policies:
     * "none" (the request itself: Envoy), "nginx" (X-Original-Method/-URI), "ingress-nginx"
     * (X-Original-URL/-Method) or "traefik" (X-Forwarded-Method/-Uri/-Host). Exactly that
     * family is read; a request with another family's headers, or without this one's, is
     * refused. ("auto", which guessed from the request, was removed.) */
    const char *forwarded_headers;

    /* The admin listener: Host names it accepts besides IP literals, localhost and its
     * own listen host (comma-separated; "*": any), and a file holding a bearer token that
     * /metrics, /policy and /cache/flush then require (NULL: no authentication). */
    const char *admin_allowed_hosts;
    const char *admin_token_file;
    bool admin_auth_review; /* admin callers may also be a token a TokenReview + SAR allows */

    /* --mode proxy: where allowed requests go, and how. */
    const char *upstream;             /* http:// or https:// URL, optionally with a path prefix */
    const char *upstream_ca;          /* PEM CA bundle for an https upstream; NULL: the system CAs */
    int64_t upstream_timeout_ms;      /* longest wait for the upstream's headers or next bytes */
    size_t upstream_max_connections;  /* connections to the upstream at once (pooled, kept alive) */
    size_t max_body_bytes;            /* largest request body forwarded; larger: 413 */
    bool upstream_keep_authorization; /* forward the client's Authorization header (default: removed) */

    /* The decision log (core/access_log.h): "off" (default), "stdout" or a file path;
     * allowed answers written at this rate (0 to 1), every refusal always. */
    const char *access_log;
    double access_log_sample_allowed;

    const char *log_level;
    bool check_only; /* --check */
} config;

/* Fills cfg with defaults and then applies argv. Writes errors to out and --help/--version
 * text to stdout. Returns CONFIG_RUN when the gateway should start, CONFIG_EXIT_OK after --help or
 * --version, CONFIG_EXIT_ERROR on a bad flag or value (message already written).
 * cfg keeps pointers into argv: argv must outlive cfg. */
config_action config_parse(config *cfg, int argc, char **argv, FILE *out);

/* Checks cross-flag rules and that files are readable. Returns 0 or -1 with a message on
 * out. Does not contact the API server. */
int config_validate(const config *cfg, FILE *out);

/* What the flags and the environment ($KUBECONFIG, $KUBERNETES_SERVICE_HOST/PORT) say about
 * the API server, for apiserver_resolve(). in points into cfg and the environment. */
void config_apiserver_inputs(const config *cfg, apiserver_inputs *in);

/* --workers, or when unset the CPUs this process may use (core/cpu_budget.h): 1 to
 * CONFIG_MAX_WORKERS. When why is not NULL, it receives how the number was decided. */
size_t config_workers(const config *cfg, char *why, size_t why_cap);

/* True with --mode proxy. */
bool config_proxy_mode(const config *cfg);

/* True when requests go through a Lua policy (--policy is not "none"). */
bool config_policy_enabled(const config *cfg);

/* Prints the effective configuration (what --check shows). Never prints a credential. */
void config_print(const config *cfg, FILE *out);

#endif
