/* Which API server the gateway talks to, and with which credential: explicit flags, a
 * kubeconfig file, or the in-cluster service-account mount. Pure decision code: it reads
 * the kubeconfig and a few small files, never touches the network.
 *
 * Precedence (docs/APISERVER.md explains each step):
 *   1. explicit flags --apiserver, --apiserver-ca, --apiserver-token-file (all three, or error
 *      naming the missing ones); --kubeconfig, $KUBECONFIG and the in-cluster environment
 *      are then ignored (and said so in `why`);
 *   2. --kubeconfig FILE (context: --context, else the file's current-context);
 *   3. $KUBECONFIG: its FIRST non-empty path only (no merging of several files, unlike
 *      kubectl); ~/.kube/config is never read implicitly;
 *   4. in-cluster: $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT with
 *      <serviceaccount_dir>/token, ca.crt and namespace;
 *   5. otherwise APISERVER_NOT_CONFIGURED, "no API server configured".
 *
 * TLS to the API server is always verified: a kubeconfig cluster must name a CA
 * (certificate-authority or certificate-authority-data), insecure-skip-tls-verify: true is
 * refused, and the server must be https://. Secrets (tokens, private keys) never appear in
 * err or why, and apiserver_settings_free wipes them.
 *
 * The parts of that decision have headers of their own: kubeconfig.h (the kubeconfig
 * schema, on yaml_tree.h), apiserver_url.h (the URL rule) and apiserver_tls_check.h
 * (loading the TLS material once at start-up). */
#ifndef TOKENGATE_APISERVER_CONFIG_H
#define TOKENGATE_APISERVER_CONFIG_H

#include <stddef.h>

#define APISERVER_DEFAULT_SERVICEACCOUNT_DIR "/var/run/secrets/kubernetes.io/serviceaccount"
#define KUBECONFIG_MAX_BYTES (1024 * 1024) /* larger kubeconfig files are refused */

/* apiserver_resolve results. */
#define APISERVER_OK 0
#define APISERVER_ERROR (-1)       /* something is configured but wrong: err says what */
#define APISERVER_NOT_CONFIGURED 1 /* nothing is configured at all: err says how to */

typedef enum { APISERVER_FROM_FLAGS, APISERVER_FROM_KUBECONFIG, APISERVER_FROM_IN_CLUSTER } apiserver_source;

/* The decision. Every pointer is malloc'd and owned by the struct (NULL when absent);
 * PEM blobs are NUL-terminated, their *_len excludes the NUL. */
typedef struct apiserver_settings {
    apiserver_source source;
    char *server_url; /* https://host[:port][/path-prefix], no trailing slash */

    /* Exactly one of ca_file / ca_pem is set. */
    char *ca_file;
    char *ca_pem; /* certificate-authority-data, decoded (PEM) */
    size_t ca_pem_len;

    /* Bearer credential: at most one of token / token_file. Neither is set only when a
     * client certificate authenticates the gateway. */
    char *token;      /* kubeconfig user.token: fixed, cannot be re-read */
    char *token_file; /* --apiserver-token-file, user.tokenFile or the in-cluster token;
                         the client re-reads it when it changes (projected tokens rotate) */

    /* Client certificate: a file pair or a PEM pair (the -data forms), or nothing. */
    char *client_cert_file, *client_key_file;
    char *client_cert_pem, *client_key_pem;
    size_t client_cert_pem_len, client_key_pem_len;

    char *namespace_; /* in-cluster namespace file or the kubeconfig context's; may be NULL */

    /* Kubeconfig only (NULL otherwise): where the answer came from, for logs. */
    char *kubeconfig_path, *context, *cluster, *user;

    char why[1024]; /* which source was chosen and why; no secrets (printed by --check) */
} apiserver_settings;

/* What the flags and the environment say. NULL or "" = not given. */
typedef struct apiserver_inputs {
    const char *apiserver, *apiserver_ca, *apiserver_token_file; /* explicit flags */
    const char *kubeconfig;                                      /* --kubeconfig */
    const char *context;                     /* --context; NULL = the kubeconfig's current-context */
    const char *kubeconfig_env;              /* $KUBECONFIG, colon-separated; only the first non-empty path is used */
    const char *service_host, *service_port; /* $KUBERNETES_SERVICE_HOST / _PORT */
    const char *serviceaccount_dir;          /* NULL = APISERVER_DEFAULT_SERVICEACCOUNT_DIR */
} apiserver_inputs;

/* Fills in from the real environment ($KUBECONFIG, $KUBERNETES_SERVICE_HOST/PORT) and the
 * default service-account directory; the flag fields are left NULL for the caller. */
void apiserver_inputs_from_env(apiserver_inputs *in);

/* Decides per the precedence above. out need not be initialised; on failure it is left
 * zeroed (freeing it is harmless). Checks that every file it names is readable, so a
 * successful answer can be handed to the API client as is. Returns APISERVER_OK,
 * APISERVER_ERROR or APISERVER_NOT_CONFIGURED, the last two with a message in err. */
int apiserver_resolve(const apiserver_inputs *in, apiserver_settings *out, char *err, size_t err_cap);

/* Frees what out owns, wiping the token and the PEM blobs first; leaves it zeroed. */
void apiserver_settings_free(apiserver_settings *s);

/* "flags", "kubeconfig" or "in-cluster". */
const char *apiserver_source_name(apiserver_source source);

#endif
