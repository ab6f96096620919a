/* The gateway's configuration: flags, their defaults (SPEC.md "Defaults"), validation and
 * the --check / --help output. Parsing allocates nothing: string fields point into argv. */
#ifndef TOKENGATE_CONFIG_H
#define TOKENGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_MAX_AUDIENCES 16
#define CONFIG_AUDIENCES_TEXT_MAX 4096

typedef enum { CONFIG_RUN, CONFIG_EXIT_OK, CONFIG_EXIT_ERROR } config_action;

typedef struct config {
    const char *listen;       /* host:port of the main listener */
    const char *admin_listen; /* host:port of the admin listener */
    const char *mode;         /* "authz" (only mode so far) */

    int64_t cache_ttl_ms;
    int64_t cache_negative_ttl_ms;
    int64_t cache_max_ttl_ms;
    size_t cache_max_entries;
    int64_t review_timeout_ms;
    size_t max_token_bytes;

    const char *apiserver;            /* https://host:port */
    const char *apiserver_ca;         /* PEM CA bundle file */
    const char *apiserver_token_file; /* the gateway's own bearer credential */

    /* --audiences a,b: copied into audiences_text and split in place. */
    char audiences_text[CONFIG_AUDIENCES_TEXT_MAX];
    const char *audiences[CONFIG_MAX_AUDIENCES];
    size_t n_audiences;

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

/* Prints the effective configuration (what --check shows). Never prints a credential. */
void config_print(const config *cfg, FILE *out);

#endif
