/* tls_server.c owns the construction of the main listener's TLS context. */
#include "tls_server.h"

#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

static const char tls12_ciphers[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/* Offers only http/1.1: evhttp speaks nothing else. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *out_len, const unsigned char *in,
                       unsigned int in_len, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    unsigned char *selected = NULL;
    if (SSL_select_next_proto(&selected, out_len, http11, sizeof(http11), in, in_len) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

static void openssl_reason(char *err, size_t err_cap, const char *what, const char *path)
{
    unsigned long code = ERR_get_error();
    char detail[256] = "";
    if (code) ERR_error_string_n(code, detail, sizeof(detail));
    ERR_clear_error();
    snprintf(err, err_cap, "%s %s%s%s", what, path, detail[0] ? ": " : "", detail);
}

SSL_CTX *tls_server_context_new(const char *cert_file, const char *key_file, char *err, size_t err_cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, err_cap, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(ctx, tls12_ciphers) != 1) {
        openssl_reason(err, err_cap, "cipher list", "");
        goto err;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        openssl_reason(err, err_cap, "cannot load the certificate", cert_file);
        goto err;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        openssl_reason(err, err_cap, "cannot load the private key", key_file);
        goto err;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        openssl_reason(err, err_cap, "the private key does not match the certificate", cert_file);
        goto err;
    }
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    return ctx;
err:
    SSL_CTX_free(ctx);
    return NULL;
}
