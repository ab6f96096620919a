/* TLS for the main listener: the server certificate context, built from PEM files and
 * swapped on reload. Connections already open keep the context they started with
 * (OpenSSL reference-counts it), so a reload never drops them. */
#ifndef TOKENGATE_TLS_SERVER_H
#define TOKENGATE_TLS_SERVER_H

#include <openssl/ssl.h>
#include <stddef.h>

/* Builds a server context: TLS 1.2 minimum, forward-secret AEAD ciphers for TLS 1.2 (TLS
 * 1.3 uses OpenSSL's defaults), no compression, no renegotiation, ALPN http/1.1. Checks
 * that the key matches the certificate. Returns NULL with a reason (no secrets) in err. */
SSL_CTX *tls_server_context_new(const char *cert_file, const char *key_file, char *err, size_t err_cap);

#endif
