/* The policy host's private parts, shared by the files that implement core/policy.h:
 * policy.c (states, loading, calling hooks), policy_alloc.c (the capped allocator),
 * policy_guard.c (what stops a call: the count hook and the guarded pcall, xpcall, sort
 * and callbacks), policy_host_api.c (the tokengate.host module), policy_decision.c
 * (reading and re-validating decisions) and policy_source.c (policy sources and their
 * isolated validation). Nothing outside those files includes it. */
#ifndef TOKENGATE_POLICY_INTERNAL_H
#define TOKENGATE_POLICY_INTERNAL_H

#include "policy.h"
#include "policy_pattern.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define POLICY_SOURCE_MAX (1024 * 1024)
#define HOOK_STEP 1000 /* instructions between two count-hook calls */
#define BUDGET_ERROR "policy exceeded its instruction budget"
/* Nested calls from C back into Lua (gsub with a function or table, sort comparators,
 * __tostring from string.format, pcall/xpcall) one policy call may stack up, and the C
 * stack they may use together: each such level is a C frame that Lua's own stack limit
 * does not see, so `local function f() return (("ab"):gsub(".", f)) end` would otherwise
 * overflow the thread's stack. Lua 5.1 itself allows 200 levels; no policy needs 100.
 * The byte cap is a second net (also checked by the count hook) for a path the wrappers
 * do not know; threads running policies need a stack of at least 2 MiB (glibc's default
 * is 8 MiB). */
#define POLICY_MAX_C_DEPTH 100
#define POLICY_MAX_C_STACK_BYTES (1024 * 1024)
#define C_DEPTH_ERROR "policy exceeded the C call depth limit"
#define DEADLINE_ERROR "policy exceeded its wall-clock limit"
#define DEFAULT_POLICY_PATH "policies/default.lua"
#define POOL_STEP 16       /* size-class granularity of the block pool */
#define POOL_MAX_BLOCK 256 /* larger blocks go straight to malloc */
#define POOL_CLASSES (POOL_MAX_BLOCK / POOL_STEP)
#define POOL_RETAIN_MAX (2u * 1024 * 1024) /* most free-list bytes kept per state */

/* One Lua state and what was read from the policy it runs. The allocator's ud points
 * here, which is how the hook and the allocator find it. */
typedef struct policy_state {
    lua_State *L;
    policy_host *host;
    char chunkname[256];      /* for error messages */
    size_t mem_used, mem_max; /* mem_used: live blocks plus the free lists below */
    /* Free lists of small blocks by size class (see limited_alloc): a policy call makes
     * and drops a few dozen small objects, and recycling them here is several times
     * cheaper than a malloc/free pair each. */
    void *pool[POOL_CLASSES];
    size_t pool_bytes; /* bytes on the free lists (part of mem_used) */
    uint64_t instructions, max_instructions;
    /* The running call (see call_begin): how deep it is in C -> Lua callbacks, where its
     * C stack began, when it must have ended, and whether a hook has stopped it (then
     * nothing of the policy may run on: no pcall catches it, no xpcall handler runs). */
    int c_depth;
    uintptr_t stack_base;
    uint64_t deadline_ns, max_call_ns;
    bool halted;
    pattern_budget patterns; /* instructions and max_instructions, for policy_pattern.c */
    int sandbox_ref;         /* require("tokengate.sandbox") */
    int policy_ref;          /* the checked policy table */
    /* Looked up once per state rather than by name on every call: sandbox.ttl and
     * .anonymous, sandbox.host_interface().authorize_error, and the C closure call_hook
     * (whose upvalues hold the rest, see UV_*). */
    int ttl_ref, anonymous_ref, authorize_error_ref;
    int after_request_ref, after_ref; /* sandbox.host_interface().after_request; the policy's after */
    int call_hook_ref;
    struct {        /* what call_hook is to do, set by run_hook */
        int fn_ref; /* a sandbox function to call with the policy, or LUA_NOREF: the
                     * policy's own authorize, directly */
        const policy_request *req;
        const identity_view *user;
        const policy_outcome *outcome; /* after(): the outcome's parts follow req, user */
        bool reuse_req;                /* after(): req is the view authorize just had */
    } call;
    /* The last call was a successful authorize that kept its req view (the policy has an
     * after hook): after() for the same request may use that view. */
    bool req_kept;
    bool has_ttl, has_anonymous, has_after;
    /* How many of (req, user) the policy's authorize can see: the parameters it declares
     * (2 when it is variadic). An argument it has no parameter for is not built. */
    int authorize_args;
    char *audiences[POLICY_MAX_AUDIENCES];
    size_t n_audiences;
} policy_state;

struct policy_source {
    _Atomic size_t refs;
    char *path;      /* what /policy shows: the file, or "(built-in default)" */
    char *chunkname; /* what error messages name: the file, or policies/default.lua */
    char sha256_hex[65];
    size_t len;
    char bytes[]; /* len bytes and a NUL */
};

struct policy_host {
    custom_metrics *metrics;
    policy_limits limits;
    policy_state *current;
    policy_source *source; /* what current runs */
    double loaded_at;
    char last_error[1024];
};

/* ---- small helpers of every file -------------------------------------------------- */

static inline uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Before every protected call into a policy: a fresh budget, deadline and depth. The
 * stack base is the caller's frame, which lives until its lua_pcall returns. */
static inline __attribute__((always_inline)) void call_begin(policy_state *ps)
{
    ps->instructions = 0;
    ps->c_depth = 0;
    ps->halted = false;
    ps->stack_base = (uintptr_t)__builtin_frame_address(0);
    ps->deadline_ns = monotonic_ns() + ps->max_call_ns;
}

/* The state a Lua state belongs to: the allocator's ud (see limited_alloc). */
static inline policy_state *state_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

/* policy_alloc.c */
void *limited_alloc(void *ud, void *ptr, size_t old_size, size_t new_size);
void pool_drain(policy_state *ps);

/* policy_guard.c */
void count_hook(lua_State *L, lua_Debug *ar);
bool over_budget(lua_State *L);
int budget_pcall(lua_State *L);
int budget_xpcall(lua_State *L);
int depth_guarded(lua_State *L);
int guarded_sort(lua_State *L);
void wrap_library_function(lua_State *L, const char *name, lua_CFunction fn);

/* policy_host_api.c */
int open_host_module(lua_State *L);

/* policy_decision.c */
const char *arena_copy(policy_decision *d, const char *s, size_t len);
void decision_error(policy_decision *d, const char *message);
bool header_value_ok(const char *v, size_t len);
void read_allow(lua_State *L, policy_decision *d);
void read_sar(lua_State *L, policy_decision *d);

#endif
