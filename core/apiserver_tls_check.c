/* apiserver_tls_check.c: see apiserver_tls_check.h. */
#include "apiserver_tls_check.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <stdbool.h>
#include <stdio.h>

static BIO *open_pem(const char *file, const char *pem, size_t pem_len)
{
    if (pem) return BIO_new_mem_buf(pem, (int)pem_len);
    return file ? BIO_new_file(file, "r") : NULL;
}

int apiserver_settings_check_tls(const apiserver_settings *s, char *err, size_t err_cap)
{
    int rc = -1;
    BIO *bio = open_pem(s->ca_file, s->ca_pem, s->ca_pem_len);
    X509 *ca = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    const char *ca_name = s->ca_file ? s->ca_file : "certificate-authority-data";
    if (!ca) {
        snprintf(err, err_cap, "the API server CA (%s) holds no PEM certificate", ca_name);
        goto done;
    }
    bool has_cert = s->client_cert_file || s->client_cert_pem;
    if (has_cert) {
        bio = open_pem(s->client_cert_file, s->client_cert_pem, s->client_cert_pem_len);
        cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        bio = open_pem(s->client_key_file, s->client_key_pem, s->client_key_pem_len);
        key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        const char *cert_name = s->client_cert_file ? s->client_cert_file : "client-certificate-data";
        if (!cert) {
            snprintf(err, err_cap, "the client certificate (%s) is not a PEM certificate", cert_name);
            goto done;
        }
        if (!key) {
            snprintf(err, err_cap, "the client key (%s) is not a PEM private key",
                     s->client_key_file ? s->client_key_file : "client-key-data");
            goto done;
        }
        if (X509_check_private_key(cert, key) != 1) {
            snprintf(err, err_cap, "the client key does not match the client certificate (%s)", cert_name);
            goto done;
        }
    }
    rc = 0;
done:
    ERR_clear_error();
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key); /* OpenSSL wipes key material on free */
    return rc;
}
