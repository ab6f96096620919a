/* main.c: flags in, server out. Also makes jansson wipe what it frees, because the JSON
 * the gateway parses and builds can hold tokens (a TokenReview answer echoes spec.token). */
#include "apiserver_config.h"
#include "apiserver_tls_check.h"
#include "config.h"
#include "log.h"
#include "policy.h"
#include "server.h"

#include <curl/curl.h>
#include <jansson.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *wiping_json_malloc(size_t size)
{
    return malloc(size);
}

static void wiping_json_free(void *ptr)
{
    if (!ptr) return;
    OPENSSL_cleanse(ptr, malloc_usable_size(ptr));
    free(ptr);
}

int main(int argc, char **argv)
{
    /* The process that checks a policy file for a reload or --check (policy.h). */
    if (argc > 1 && strcmp(argv[1], POLICY_VALIDATE_ARG) == 0) return policy_validate_main(argc, argv);
    config cfg;
    switch (config_parse(&cfg, argc, argv, stderr)) {
    case CONFIG_EXIT_OK: return 0;
    case CONFIG_EXIT_ERROR: return 2;
    case CONFIG_RUN: break;
    }
    if (config_validate(&cfg, stderr) != 0) return 1;
    /* Which API server, and how (docs/APISERVER.md). config_validate has already reported
     * any problem with the same inputs; only --check may go on without one. */
    apiserver_inputs api_in;
    config_apiserver_inputs(&cfg, &api_in);
    apiserver_settings api;
    char api_err[1024];
    int api_rc = apiserver_resolve(&api_in, &api, api_err, sizeof(api_err));
    if (api_rc == APISERVER_OK && apiserver_settings_check_tls(&api, api_err, sizeof(api_err)) != 0) {
        apiserver_settings_free(&api);
        api_rc = APISERVER_ERROR;
    }
    if (api_rc != APISERVER_OK && !(api_rc == APISERVER_NOT_CONFIGURED && cfg.check_only)) {
        fprintf(stderr, "tokengate: %s\n", api_err);
        return 1;
    }
    if (cfg.check_only) {
        config_print(&cfg, stdout);
        printf("apiserver: %s\n", api_rc == APISERVER_OK ? api.why : "(none configured)");
        apiserver_settings_free(&api);
        json_set_alloc_funcs(wiping_json_malloc, wiping_json_free);
        signal(SIGPIPE, SIG_IGN); /* the policy's checking process may end before reading it all */
        if (server_check_policy(&cfg, stdout) != 0) return 1;
        printf("configuration ok\n");
        return 0;
    }
    log_set_level(strcmp(cfg.log_level, "debug") == 0   ? LOG_DEBUG
                  : strcmp(cfg.log_level, "warn") == 0  ? LOG_WARN
                  : strcmp(cfg.log_level, "error") == 0 ? LOG_ERROR
                                                        : LOG_INFO);
    json_set_alloc_funcs(wiping_json_malloc, wiping_json_free);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("curl_global_init failed", NULL);
        apiserver_settings_free(&api);
        return 1;
    }
    log_info("API server", "source", apiserver_source_name(api.source), "why", api.why, NULL);
    int rc = server_run(&cfg, &api);
    apiserver_settings_free(&api);
    curl_global_cleanup();
    return rc;
}
