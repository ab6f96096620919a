/* The kubeconfig schema: which keys a kubeconfig's contexts, clusters and users may have,
 * what they mean and which the gateway refuses. Reads text already in memory (yaml_tree.h
 * parses it) and fills apiserver_settings; opening the file and checking the files it
 * names is the source decision's part (apiserver_config.c). Separate from that decision
 * so that this parser of untrusted input can be unit-tested and fuzzed alone. */
#ifndef TOKENGATE_KUBECONFIG_H
#define TOKENGATE_KUBECONFIG_H

#include "apiserver_config.h"

#include <stddef.h>

/* Parses kubeconfig text (at most KUBECONFIG_MAX_BYTES, libyaml; JSON works too) and picks
 * context (NULL or "" = current-context). Relative paths in it (certificate-authority,
 * tokenFile, client-certificate, client-key) are resolved against base_dir, the
 * kubeconfig's directory (NULL = leave them as written). Touches no file: does not check
 * that those paths exist (apiserver_resolve does). Fills out (source KUBECONFIG, context,
 * cluster, user, why; kubeconfig_path stays NULL). Returns 0, or -1 with a message in err.
 * Refuses: duplicate mapping keys, YAML aliases, more than one document, a duplicated
 * context/cluster/user name that is used, exec and auth-provider users, basic auth,
 * impersonation, insecure-skip-tls-verify: true, tls-server-name, proxy-url, a server that
 * is not https://, a cluster without a CA, a user without a credential. */
int kubeconfig_parse(const char *yaml_text, size_t len, const char *context, const char *base_dir,
                     apiserver_settings *out, char *err, size_t err_cap);

#endif
