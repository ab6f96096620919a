/* The Lua policy host: one LuaJIT state per event loop running a policy file (or the
 * built-in policies/default.lua) inside the sandbox that lua/tokengate/sandbox.lua
 * defines, with an instruction budget (pattern matching and sorting included), a memory
 * cap, a wall-clock limit per call and a bound on nested C -> Lua callbacks enforced from
 * C (docs/POLICIES.md, "What else stops a policy call").
 *
 * Every call into Lua is a protected call whose outcome becomes a value: an error, a
 * timeout (budget) or a wrong return value is reported as POLICY_ERROR, never as an
 * allow. Loading compiles and checks the file in a fresh state and replaces the running
 * policy only on success (hot reload).
 *
 * Threading: a policy_host belongs to one event loop. */
#ifndef TOKENGATE_POLICY_H
#define TOKENGATE_POLICY_H

#include "custom_metrics.h"
#include "identity.h"
#include "policy_limits.h"
#include "sar.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evkeyvalq;

#define POLICY_MAX_HEADERS POLICY_LIMIT_HEADERS
#define POLICY_MAX_AUDIENCES POLICY_LIMIT_AUDIENCES
#define POLICY_ARENA_BYTES 24576

/* The wall-clock limit of one call into a policy (a hook, or running the file when it
 * loads), checked every 1000 instructions; the instruction budget is the tight bound,
 * this one catches what instructions do not measure. */
#define POLICY_DEFAULT_MAX_CALL_MS 1000

typedef struct policy_limits {
    uint64_t max_instructions; /* per hook call (and for loading the file) */
    size_t max_memory_bytes;   /* per Lua state */
    uint32_t max_call_ms;      /* per call; 0: POLICY_DEFAULT_MAX_CALL_MS */
} policy_limits;

/* The request as policies see it (req.method, req.path, ...). */
typedef struct policy_request {
    const char *method, *path, *query, *host, *client_ip;
    const struct evkeyvalq *headers; /* Authorization and Proxy-Authorization are hidden */
} policy_request;

typedef enum { POLICY_ALLOW = 0, POLICY_DENY, POLICY_SAR, POLICY_ERROR } policy_decision_kind;

/* A decision with its strings copied into its own arena: valid as long as the struct. */
typedef struct policy_decision {
    policy_decision_kind kind;
    size_t n_headers; /* ALLOW: extra headers for the upstream/answer */
    const char *header_names[POLICY_MAX_HEADERS];
    const char *header_values[POLICY_MAX_HEADERS];
    const char *message; /* DENY: reason; ERROR: what went wrong (safe to log) */
    sar_attributes sar;  /* SAR: the question */
    char arena[POLICY_ARENA_BYTES];
    size_t arena_used;
} policy_decision;

typedef struct policy_host policy_host;

/* Creates a host with no policy loaded. metrics (not owned) receives tg.metrics
 * declarations and updates and must outlive the host. Returns NULL on failure. */
policy_host *policy_host_new(custom_metrics *metrics, const policy_limits *limits);

/* Closes the Lua state and frees the host. NULL is a no-op. */
void policy_host_free(policy_host *host);

/* Loads path (NULL: the built-in default policy) into a fresh state and checks it. On
 * success it replaces the running policy and returns 0; on failure the running policy is
 * kept, err receives the Lua error with file and line, and -1 is returned. */
int policy_host_load(policy_host *host, const char *path, char *err, size_t err_cap);

/* True when the running policy is what its file holds now: the file's sha256 equals the
 * loaded source's (always true for the built-in default). False when the file changed
 * since the last successful load, cannot be read, or nothing is loaded. Reads the file:
 * for the admin listener, not the request path. */
bool policy_host_file_matches(const policy_host *host);

/* One version of a policy: the bytes read once from its file (or the built-in default),
 * their sha256 and name. Immutable and reference-counted, so the control thread can hand
 * the very bytes it validated to every worker (any thread may ref and unref). */
typedef struct policy_source policy_source;

/* Reads path (NULL: the built-in default). NULL with err on failure. Holds one reference. */
policy_source *policy_source_read(const char *path, char *err, size_t err_cap);
policy_source *policy_source_ref(policy_source *src);
void policy_source_unref(policy_source *src); /* NULL is a no-op */
const char *policy_source_sha256(const policy_source *src);

/* Records a load that failed before reaching the host (reading the file, or the
 * isolated check), for /policy's last_error. */
void policy_host_set_last_error(policy_host *host, const char *err);

/* policy_host_load for bytes already read; the host keeps a reference to src. */
int policy_host_load_source(policy_host *host, policy_source *src, char *err, size_t err_cap);

/* Loads src in a fresh state in a separate, freshly started process, as `nginx -t`
 * checks a configuration: whatever the file does while loading (even crash the process
 * it runs in), the caller lives. The process is this program again (/proc/self/exe) with
 * POLICY_VALIDATE_ARG, the bytes on its stdin: started with posix_spawn, not a bare
 * fork, so it inherits no lock another thread held. 0 when the policy loads; -1 with err
 * (the policy's error, or how the process ended) otherwise. Blocks until the process ends
 * (bounded by the limits: instruction budget, wall-clock limit, memory cap, and a
 * SIGALRM backstop). The caller must ignore SIGPIPE. */
int policy_validate_isolated(const policy_source *src, const policy_limits *limits, char *err, size_t err_cap);

/* What a program calls first when argv[1] is POLICY_VALIDATE_ARG: it is the validating
 * process of policy_validate_isolated. Returns its exit status. */
#define POLICY_VALIDATE_ARG "--internal-validate-policy"
int policy_validate_main(int argc, char **argv);

/* Evaluates authorize(req, user) into *out. Never fails silently: on any problem
 * out->kind is POLICY_ERROR with out->message set. */
void policy_authorize(policy_host *host, const policy_request *req, const identity_view *user, policy_decision *out);

/* Which step gave the answer after() is told about: the policy's own decision (allow,
 * deny, error), a SubjectAccessReview it asked for, or its anonymous() hook. */
typedef enum { POLICY_OUTCOME_POLICY = 0, POLICY_OUTCOME_SAR, POLICY_OUTCOME_ANONYMOUS } policy_outcome_source;

/* What the gateway finally answered a request that reached the policy. The decision
 * after() sees is derived from status: 2xx "allow", 503 "unavailable", other 5xx
 * "error", anything else "deny". */
typedef struct policy_outcome {
    int status;
    policy_outcome_source source;
    const char *reason; /* why it was not allowed, or NULL (then after() sees nil) */
    size_t reason_len;
    int token_cached; /* the TokenReview verdict came from the cache: 1 or 0; -1: no token */
    int sar_cached;   /* source SAR: its verdict came from the cache: 1 or 0; otherwise -1 */
    /* The host's last call was policy_authorize for this very request (nothing ran in
     * between): after() is given the req view authorize had instead of a new one. */
    bool follows_authorize;
} policy_outcome;

/* True when the running policy has an after hook (a field read: cheap enough to ask on
 * every request before gathering an outcome). */
bool policy_has_after(const policy_host *host);

/* True when the running policy has an anonymous hook. */
bool policy_has_anonymous(const policy_host *host);

/* after(req, user, outcome) once the answer is decided. user NULL: none (anonymous). It
 * cannot change the answer: 0 when it ran (or there is none), -1 with err when it failed
 * (raised, or hit the instruction, memory, time or depth limits), for the caller to
 * count as a policy error. */
int policy_after(policy_host *host, const policy_request *req, const identity_view *user, const policy_outcome *outcome,
                 char *err, size_t err_cap);

/* ttl(user) in milliseconds. Returns 1 and sets *ttl_ms when the policy has a ttl hook
 * that answered a number, 0 when it has none or it returned nil (the default TTL), -1
 * (message in err) when the hook failed. */
int policy_ttl(policy_host *host, const identity_view *user, int64_t *ttl_ms, char *err, size_t err_cap);

/* anonymous(req): 1 allow without a token, 0 not (also when there is no hook), -1 error
 * (which never allows). */
int policy_anonymous(policy_host *host, const policy_request *req, char *err, size_t err_cap);

/* The audiences the running policy declares (count; *out points into the host, valid
 * until the next successful load). 0 when it declares none. */
size_t policy_audiences(const policy_host *host, const char *const **out);

/* What GET /policy shows. Strings live in the host. */
typedef struct policy_info {
    const char *path;       /* "(built-in default)" for the embedded policy */
    char sha256_hex[65];    /* of the policy source */
    double loaded_at;       /* Unix time of the last successful load */
    const char *last_error; /* "" when the last load succeeded */
    bool loaded;
} policy_info;

void policy_host_info(const policy_host *host, policy_info *out);

#endif
