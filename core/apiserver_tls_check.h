/* The TLS material an apiserver_settings names, loaded once at start-up to see that it is
 * usable. Separate from the source decision (apiserver_config.c), which only checks that
 * files are readable and never parses certificates, so that the decision stays free of
 * OpenSSL's certificate code and this check can run on settings from any source. */
#ifndef TOKENGATE_APISERVER_TLS_CHECK_H
#define TOKENGATE_APISERVER_TLS_CHECK_H

#include "apiserver_config.h"

#include <stddef.h>

/* Loads what the settings point at with OpenSSL, as client-go does when it loads a
 * kubeconfig: the CA (file or data) must hold at least one certificate, and a client
 * certificate must parse and match its key. Catches at start-up (and in --check) what
 * would otherwise fail every review later. Returns 0, or -1 with err (no secrets). */
int apiserver_settings_check_tls(const apiserver_settings *s, char *err, size_t err_cap);

#endif
