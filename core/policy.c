/* policy.c owns the Lua states that run policies: their creation (allocator with a cap,
 * JIT off so the instruction hook fires, only the libraries the sandbox needs, embedded
 * tokengate modules), the C functions policies reach through tokengate.host, and every
 * protected call into Lua. The sandbox rules themselves live in lua/tokengate/sandbox.lua,
 * shared with the busted kit.
 *
 * The per-request path (policy_authorize) is kept short because it runs on every cached
 * request: one lua_pcall of the C closure call_hook, which pushes the request's strings
 * (its headers packed into one string that is unpacked only if a policy reads them) and
 * the identity's for the sandbox's authorize_request, which builds the read-only req
 * view and the user table and tail-calls the policy's authorize; req and user each only
 * if authorize declares a parameter for it. References are taken once per state; the
 * decision's validated payload is looked up directly; small blocks come from per-state
 * free lists (see limited_alloc). bench/policy_hook.lua and bench/cached_path.sh
 * measure it. */
#include "policy.h"

#include "embedded.h"
#include "log.h"
#include "policy_pattern.h"

#include <errno.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <math.h>
#include <openssl/evp.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

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
#define POOL_STEP 16                       /* size-class granularity of the block pool */
#define POOL_MAX_BLOCK 256                 /* larger blocks go straight to malloc */
#define POOL_CLASSES (POOL_MAX_BLOCK / POOL_STEP)
#define POOL_RETAIN_MAX (2u * 1024 * 1024) /* most free-list bytes kept per state */

/* One Lua state and what was read from the policy it runs. The allocator's ud points
 * here, which is how the hook and the allocator find it. */
typedef struct policy_state {
    lua_State *L;
    policy_host *host;
    char chunkname[256]; /* for error messages */
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
    int sandbox_ref; /* require("tokengate.sandbox") */
    int policy_ref;  /* the checked policy table */
    /* Looked up once per state rather than by name on every call: sandbox.ttl and
     * .anonymous, sandbox.host_interface().authorize_error, and the C closure call_hook
     * (whose upvalues hold the rest, see UV_*). */
    int ttl_ref, anonymous_ref, authorize_error_ref;
    int after_request_ref, after_ref; /* sandbox.host_interface().after_request; the policy's after */
    int call_hook_ref;
    struct {          /* what call_hook is to do, set by run_hook */
        int fn_ref;   /* a sandbox function to call with the policy, or LUA_NOREF: the
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
    char *path;          /* what /policy shows: the file, or "(built-in default)" */
    char *chunkname;     /* what error messages name: the file, or policies/default.lua */
    char sha256_hex[65];
    size_t len;
    char bytes[];        /* len bytes and a NUL */
};

struct policy_host {
    custom_metrics *metrics;
    policy_limits limits;
    policy_state *current;
    policy_source *source; /* what current runs */
    double loaded_at;
    char last_error[1024];
};

/* ---- the state -------------------------------------------------------------------- */

/* The allocator of a policy state: every byte is counted against mem_max, so a policy
 * that builds a huge string or table gets "not enough memory" (a policy error) instead
 * of growing the gateway. Blocks of up to POOL_MAX_BLOCK bytes are rounded up to a
 * multiple of POOL_STEP and recycled through per-class free lists; the bytes waiting on
 * those lists stay counted in mem_used (what the state holds is what is capped), are
 * released to malloc when a new block would not fit under the cap, and are bounded by
 * POOL_RETAIN_MAX. Lua passes the block's size back on free and resize (osize), which
 * is how a block's class is known without a header. */
static size_t pool_class(size_t size)
{
    return (size + POOL_STEP - 1) / POOL_STEP - 1;
}

static void pool_drain(policy_state *ps)
{
    for (size_t c = 0; c < POOL_CLASSES; c++) {
        while (ps->pool[c]) {
            void *next = *(void **)ps->pool[c];
            free(ps->pool[c]);
            ps->pool[c] = next;
        }
    }
    ps->mem_used -= ps->pool_bytes;
    ps->pool_bytes = 0;
}

/* Counts `charge` more bytes against the cap, first giving the free lists back to malloc
 * if that is what it takes. */
static bool charge_new(policy_state *ps, size_t charge)
{
    if (ps->mem_used + charge <= ps->mem_max && ps->mem_used + charge >= ps->mem_used) return true;
    pool_drain(ps);
    return ps->mem_used + charge <= ps->mem_max && ps->mem_used + charge >= ps->mem_used;
}

/* force: count the block even past the cap (a shrinking resize must not fail). */
static void *block_new(policy_state *ps, size_t size, bool force)
{
    if (size <= POOL_MAX_BLOCK) {
        size_t c = pool_class(size), cs = (c + 1) * POOL_STEP;
        void *p = ps->pool[c];
        if (p) {
            ps->pool[c] = *(void **)p;
            ps->pool_bytes -= cs; /* stays in mem_used: now live instead of free */
            return p;
        }
        if (!force && !charge_new(ps, cs)) return NULL;
        p = malloc(cs);
        if (p) ps->mem_used += cs;
        return p;
    }
    if (!force && !charge_new(ps, size)) return NULL;
    void *p = malloc(size);
    if (p) ps->mem_used += size;
    return p;
}

static void block_free(policy_state *ps, void *ptr, size_t size)
{
    if (size <= POOL_MAX_BLOCK) {
        size_t c = pool_class(size), cs = (c + 1) * POOL_STEP;
        if (ps->pool_bytes + cs <= POOL_RETAIN_MAX) {
            *(void **)ptr = ps->pool[c];
            ps->pool[c] = ptr;
            ps->pool_bytes += cs;
            return;
        }
        free(ptr);
        ps->mem_used -= cs;
        return;
    }
    free(ptr);
    ps->mem_used -= size;
}

static void *limited_alloc(void *ud, void *ptr, size_t old_size, size_t new_size)
{
    policy_state *ps = ud;
    if (!ptr) return new_size ? block_new(ps, new_size, false) : NULL;
    if (new_size == 0) {
        block_free(ps, ptr, old_size);
        return NULL;
    }
    bool old_pooled = old_size <= POOL_MAX_BLOCK, new_pooled = new_size <= POOL_MAX_BLOCK;
    if (old_pooled && new_pooled && pool_class(old_size) == pool_class(new_size)) return ptr;
    if (!old_pooled && !new_pooled) {
        if (new_size > old_size && !charge_new(ps, new_size - old_size)) return NULL;
        void *p = realloc(ptr, new_size);
        if (p) ps->mem_used = ps->mem_used - old_size + new_size;
        return p;
    }
    /* Between a pooled class and malloc, or between two classes: move the block. A
     * shrink never fails for want of room (as with realloc before): it frees more than
     * it takes, a moment later. */
    void *p = block_new(ps, new_size, new_size < old_size);
    if (!p) return NULL;
    memcpy(p, ptr, old_size < new_size ? old_size : new_size);
    block_free(ps, ptr, old_size);
    return p;
}

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The budget as lua_pushfstring can print it (it knows %d, not %llu). */
static int budget_shown(const policy_state *ps)
{
    return ps->max_instructions > INT32_MAX ? INT32_MAX : (int)ps->max_instructions;
}

/* The C stack the running call has used so far (stacks grow down on every target). */
static size_t c_stack_used(const policy_state *ps)
{
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    return ps->stack_base > here ? ps->stack_base - here : 0;
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

/* Every HOOK_STEP instructions: the budget, the wall clock and the C stack. Whatever
 * stops the call here marks it halted, because LuaJIT runs an xpcall handler for an error
 * raised in a hook with hooks off: the handler must not run at all (budget_xpcall). */
static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    void *ud = NULL;
    lua_getallocf(L, &ud);
    policy_state *ps = ud;
    ps->instructions += HOOK_STEP;
    if (ps->instructions > ps->max_instructions) {
        ps->halted = true;
        luaL_error(L, "%s: %s (%d instructions)", ps->chunkname, BUDGET_ERROR, budget_shown(ps));
    }
    if (monotonic_ns() > ps->deadline_ns) {
        ps->halted = true;
        luaL_error(L, "%s: %s (%d ms)", ps->chunkname, DEADLINE_ERROR, (int)(ps->max_call_ns / 1000000u));
    }
    if (c_stack_used(ps) > POLICY_MAX_C_STACK_BYTES) {
        ps->halted = true;
        luaL_error(L, "%s: %s (C stack)", ps->chunkname, C_DEPTH_ERROR);
    }
}

static int on_panic(lua_State *L)
{
    log_error("unprotected Lua error; aborting (fail closed)", "error", lua_tostring(L, -1), NULL);
    abort();
}

static int load_embedded_module(lua_State *L)
{
    const embedded_file *f = lua_touserdata(L, lua_upvalueindex(1));
    char chunkname[256];
    snprintf(chunkname, sizeof(chunkname), "=%s", f->path);
    if (luaL_loadbuffer(L, f->data, f->size, chunkname) != 0) return lua_error(L);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    return 1;
}

/* ---- tokengate.host: the C side of tg.metrics and tg.log ---------------------------- */

static policy_state *state_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

/* Reads a list of at most max strings at index idx into out (pointers into Lua strings,
 * valid while they stay on the stack/in the table). Returns the count or -1. */
static int read_string_list(lua_State *L, int idx, const char **out, size_t max)
{
    if (lua_isnoneornil(L, idx)) return 0;
    if (!lua_istable(L, idx)) return -1;
    size_t n = lua_objlen(L, idx);
    if (n > max) return -1;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (int)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            return -1;
        }
        out[i] = lua_tostring(L, -1);
        lua_pop(L, 1); /* still referenced by the table */
    }
    return (int)n;
}

static int host_metric_declare(lua_State *L)
{
    policy_state *ps = state_of(L);
    const char *kind_text = luaL_checkstring(L, 1);
    const char *name = luaL_checkstring(L, 2);
    const char *help = luaL_optstring(L, 3, "");
    custom_metric_kind kind = strcmp(kind_text, "counter") == 0 ? CUSTOM_COUNTER
                              : strcmp(kind_text, "gauge") == 0 ? CUSTOM_GAUGE
                              : strcmp(kind_text, "histogram") == 0 ? CUSTOM_HISTOGRAM
                                                                    : (custom_metric_kind)-1;
    const char *labels[CUSTOM_METRICS_MAX_LABELS];
    int n_labels = read_string_list(L, 4, labels, CUSTOM_METRICS_MAX_LABELS);
    double buckets[CUSTOM_METRICS_MAX_BUCKETS];
    size_t n_buckets = 0;
    if (lua_istable(L, 5)) {
        n_buckets = lua_objlen(L, 5);
        if (n_buckets > CUSTOM_METRICS_MAX_BUCKETS) n_labels = -1;
        for (size_t i = 0; n_labels >= 0 && i < n_buckets; i++) {
            lua_rawgeti(L, 5, (int)i + 1);
            buckets[i] = lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    }
    char err[256] = "invalid metric declaration";
    int id = -1;
    if ((int)kind >= 0 && n_labels >= 0)
        id = custom_metrics_declare(ps->host->metrics, kind, name, help, labels, (size_t)n_labels, buckets,
                                    n_buckets, err, sizeof(err));
    if (id < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, id);
    return 1;
}

static int host_metric_update(lua_State *L)
{
    policy_state *ps = state_of(L);
    int id = (int)luaL_checkinteger(L, 1);
    const char *op_text = luaL_checkstring(L, 2);
    const char *values[CUSTOM_METRICS_MAX_LABELS];
    int n = read_string_list(L, 3, values, CUSTOM_METRICS_MAX_LABELS);
    double value = luaL_checknumber(L, 4);
    custom_metric_op op = strcmp(op_text, "inc") == 0 ? CUSTOM_OP_INC
                          : strcmp(op_text, "set") == 0 ? CUSTOM_OP_SET
                          : strcmp(op_text, "observe") == 0 ? CUSTOM_OP_OBSERVE
                                                            : (custom_metric_op)-1;
    char err[256] = "invalid metric update";
    if (n < 0 || (int)op < 0 ||
        custom_metrics_update(ps->host->metrics, id, op, values, (size_t)n, value, err, sizeof(err)) < 0)
        return luaL_error(L, "%s", err);
    return 0;
}

static int host_log(lua_State *L)
{
    const char *level = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    log_level lv = strcmp(level, "debug") == 0 ? LOG_DEBUG
                   : strcmp(level, "warn") == 0 ? LOG_WARN
                   : strcmp(level, "error") == 0 ? LOG_ERROR
                                                 : LOG_INFO;
    /* Each field is its own JSON member (values escaped), never "k=v" text a request-
     * derived value could forge. Bounded like the Lua side: 32 fields. */
    enum { MAX_FIELDS = POLICY_LIMIT_LOG_FIELDS };
    const char *keys[MAX_FIELDS], *values[MAX_FIELDS];
    char text[4096]; /* copies: a number's string form lives only on the stack */
    size_t n = 0, used = 0;
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3) != 0) {
            if (n < MAX_FIELDS && lua_type(L, -2) == LUA_TSTRING) {
                const char *v = lua_isboolean(L, -1) ? (lua_toboolean(L, -1) ? "true" : "false") : lua_tostring(L, -1);
                const char *k = lua_tostring(L, -2);
                int w = snprintf(text + used, sizeof(text) - used, "%s%c%s", k, '\0', v ? v : "?");
                if (w > 0 && (size_t)w < sizeof(text) - used) {
                    keys[n] = text + used;
                    values[n] = text + used + strlen(k) + 1;
                    used += (size_t)w + 1;
                    n++;
                }
            }
            lua_pop(L, 1);
        }
    }
    log_event_fields(lv, msg, "policy", keys, values, n);
    return 0;
}

/* pcall and xpcall for policies: like the originals, except that once the instruction
 * budget is spent the error propagates instead of being caught — otherwise
 * `while true do pcall(loop) end` would outlive any budget. */
static bool over_budget(lua_State *L)
{
    policy_state *ps = state_of(L);
    return ps->halted || ps->instructions > ps->max_instructions;
}

/* Entering a C function that calls back into Lua: one more nesting level, refused past
 * POLICY_MAX_C_DEPTH levels or POLICY_MAX_C_STACK_BYTES of C stack. The level is given
 * back by c_call_leave on a normal return; an error that unwinds past it is accounted by
 * the pcall that catches it (which restores its own depth) or by the next call_begin. */
static void c_call_enter(lua_State *L, policy_state *ps)
{
    if (ps->c_depth >= POLICY_MAX_C_DEPTH || c_stack_used(ps) > POLICY_MAX_C_STACK_BYTES)
        luaL_error(L, "%s (%d nested calls from C into Lua)", C_DEPTH_ERROR, POLICY_MAX_C_DEPTH);
    ps->c_depth++;
}

static int budget_pcall(lua_State *L)
{
    policy_state *ps = state_of(L);
    luaL_checkany(L, 1);
    int depth = ps->c_depth;
    c_call_enter(L, ps);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    ps->c_depth = depth;
    if (status != 0 && over_budget(L)) return lua_error(L);
    lua_pushboolean(L, status == 0);
    lua_insert(L, 1);
    return lua_gettop(L);
}

/* The error handler budget_xpcall installs: the policy's handler (upvalue 1), unless a
 * hook stopped the call. LuaJIT runs the handler of an error raised in a hook with hooks
 * disabled, so `xpcall(loop, loop)` would otherwise spin for ever once the budget fired. */
static int guarded_handler(lua_State *L)
{
    policy_state *ps = state_of(L);
    if (ps->halted || ps->instructions > ps->max_instructions) return 1; /* the error as it is */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int budget_xpcall(lua_State *L)
{
    policy_state *ps = state_of(L);
    int n = lua_gettop(L);
    luaL_checkany(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, guarded_handler, 1); /* the handler, at n + 1 */
    lua_pushvalue(L, 1);
    for (int i = 3; i <= n; i++) lua_pushvalue(L, i);
    int depth = ps->c_depth;
    c_call_enter(L, ps);
    int status = lua_pcall(L, n > 2 ? n - 2 : 0, LUA_MULTRET, n + 1);
    ps->c_depth = depth;
    if (status != 0 && over_budget(L)) return lua_error(L);
    lua_pushboolean(L, status == 0);
    lua_replace(L, n + 1);
    return lua_gettop(L) - n;
}

/* A library function that calls back into Lua (upvalue 1), run as one nesting level. */
static int depth_guarded(lua_State *L)
{
    policy_state *ps = state_of(L);
    c_call_enter(L, ps);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    ps->c_depth--;
    return lua_gettop(L);
}

/* table.sort: a nesting level (comparators, __lt) that is also charged n*log2(n)
 * instructions up front, since sorting without a comparator runs in C where no hook
 * counts (a 4-million-element sort would take a second). */
static int guarded_sort(lua_State *L)
{
    policy_state *ps = state_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    uint64_t n = lua_objlen(L, 1), cost = n;
    for (uint64_t m = n; m > 1; m >>= 1) cost += n;
    ps->instructions += cost;
    if (ps->instructions > ps->max_instructions)
        return luaL_error(L, "%s: %s (%d instructions)", ps->chunkname, BUDGET_ERROR, budget_shown(ps));
    return depth_guarded(L);
}

/* Replaces table[name] (the table at the top) with fn wrapping the original. */
static void wrap_library_function(lua_State *L, const char *name, lua_CFunction fn)
{
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
}

/* has_control(s, allow_tab): true when s has an ASCII control character (0x00-0x1f or
 * 0x7f; a tab is fine when allow_tab). The Lua module's fallback is the patterns
 * "[%z\1-\31\127]" and "[%z\1-\8\10-\31\127]", which mean the same. */
static int host_has_control(lua_State *L)
{
    size_t len = 0;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    bool allow_tab = lua_toboolean(L, 2);
    bool found = false;
    for (size_t i = 0; i < len && !found; i++)
        found = (s[i] < 0x20 && !(allow_tab && s[i] == '\t')) || s[i] == 0x7f;
    lua_pushboolean(L, found);
    return 1;
}

/* unpack_headers(packed): the map of req.headers from the packed string push_request
 * builds ("name\0value\0" pairs, names already lower-case); repeated fields are joined
 * with ", " as RFC 9110 section 5.3 allows (as the Lua kit does). */
static int host_unpack_headers(lua_State *L)
{
    size_t len = 0;
    const char *p = luaL_checklstring(L, 1, &len);
    const char *end = p + len;
    lua_createtable(L, 0, 4);
    while (p < end) {
        const char *name = p;
        size_t name_len = strlen(name); /* Lua strings end with a NUL: never past end */
        p += name_len + 1;
        if (p >= end) break;
        const char *value = p;
        size_t value_len = strlen(value);
        p += value_len + 1;
        lua_pushlstring(L, name, name_len);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_type(L, -1) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, value, value_len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, value, value_len);
        }
        lua_rawset(L, -3);
    }
    return 1;
}

/* raw_getmetatable(v): v's metatable even when __metatable hides it (nil if none). The
 * sandbox finds a read-only view's source in its metatable this way; policies cannot
 * reach this module, so to them the metatable stays hidden. */
static int host_raw_getmetatable(lua_State *L)
{
    if (lua_gettop(L) < 1 || !lua_getmetatable(L, 1)) lua_pushnil(L);
    return 1;
}

static int open_host_module(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"has_control", host_has_control},
        {"unpack_headers", host_unpack_headers},
        {"raw_getmetatable", host_raw_getmetatable},
        {"metric_declare", host_metric_declare},
        {"metric_update", host_metric_update},
        {"log", host_log},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, functions);
    return 1;
}

/* Opens one standard library by its luaopen_ function (LuaJIT wants lua_call). */
static void open_library(lua_State *L, lua_CFunction open, const char *name)
{
    lua_pushcfunction(L, open);
    lua_pushstring(L, name);
    lua_call(L, 1, 0);
}

/* Sets up the libraries and module searchers of a fresh state. Runs under lua_cpcall. */
static int prepare_state(lua_State *L)
{
    open_library(L, luaopen_base, "");
    open_library(L, luaopen_table, LUA_TABLIBNAME);
    open_library(L, luaopen_string, LUA_STRLIBNAME);
    open_library(L, luaopen_math, LUA_MATHLIBNAME);
    open_library(L, luaopen_os, LUA_OSLIBNAME);
    open_library(L, luaopen_package, LUA_LOADLIBNAME);

    lua_pushcfunction(L, budget_pcall);
    lua_setglobal(L, "pcall");
    lua_pushcfunction(L, budget_xpcall);
    lua_setglobal(L, "xpcall");
    lua_getglobal(L, "table");
    wrap_library_function(L, "sort", guarded_sort);
    lua_pop(L, 1);
    lua_getglobal(L, "string");
    wrap_library_function(L, "format", depth_guarded); /* %s calls __tostring */
    lua_pop(L, 1);

    /* string.dump stays reachable through ("").dump whatever the env holds: remove it
     * from the real table (the sandbox module also hides it from the string methods). */
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);

    /* Modules come only from package.preload: the embedded tokengate modules and the C host. */
    lua_getglobal(L, "package");
    lua_pushstring(L, "");
    lua_setfield(L, -2, "path");
    lua_pushstring(L, "");
    lua_setfield(L, -2, "cpath");
    lua_getfield(L, -1, "loaders");
    for (int i = (int)lua_objlen(L, -1); i >= 2; i--) {
        lua_pushnil(L);
        lua_rawseti(L, -2, i);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, open_host_module);
    lua_setfield(L, -2, "tokengate.host");
    for (const embedded_file *f = embedded_files; f->path; f++) {
        static const char prefix[] = "lua/";
        size_t len = strlen(f->path);
        if (strncmp(f->path, prefix, 4) != 0 || len < 8 || strcmp(f->path + len - 4, ".lua") != 0) continue;
        /* lua/tokengate/init.lua → tokengate; lua/tokengate/sandbox.lua → tokengate.sandbox */
        char module[128];
        snprintf(module, sizeof(module), "%.*s", (int)(len - 4 - 4), f->path + 4);
        for (char *p = module; *p; p++)
            if (*p == '/') *p = '.';
        size_t mlen = strlen(module);
        if (mlen > 5 && strcmp(module + mlen - 5, ".init") == 0) module[mlen - 5] = '\0';
        lua_pushlightuserdata(L, (void *)f);
        lua_pushcclosure(L, load_embedded_module, 1);
        lua_setfield(L, -2, module);
    }
    lua_pop(L, 2);
    return 0;
}

/* After the sandbox module has loaded (its own code keeps LuaJIT's pattern functions, on
 * inputs it bounds): policies get policy_pattern.c's, through the string table their
 * environment copies and through the methods table strings index ("x"):find(...). gsub
 * calls back into Lua, so it is depth-guarded too. Runs under lua_cpcall. */
static int install_bounded_patterns(lua_State *L)
{
    policy_state *ps = state_of(L);
    ps->patterns.spent = &ps->instructions;
    ps->patterns.limit = &ps->max_instructions;
    lua_getglobal(L, "string");
    policy_pattern_register(L, &ps->patterns);
    wrap_library_function(L, "gsub", depth_guarded);
    lua_pushstring(L, "");
    if (!lua_getmetatable(L, -1)) return luaL_error(L, "strings have no metatable");
    lua_getfield(L, -1, "__index");
    if (!lua_istable(L, -1)) return luaL_error(L, "the string methods are not a table");
    policy_pattern_register(L, &ps->patterns);
    wrap_library_function(L, "gsub", depth_guarded);
    return 0;
}

static void state_free(policy_state *ps)
{
    if (!ps) return;
    if (ps->L) lua_close(ps->L);
    pool_drain(ps);
    for (size_t i = 0; i < ps->n_audiences; i++) free(ps->audiences[i]);
    free(ps);
}

/* Pushes the error value at the top as text into err. */
static void copy_error(lua_State *L, char *err, size_t err_cap)
{
    const char *msg = lua_tostring(L, -1);
    snprintf(err, err_cap, "%s", msg ? msg : "(error object is not a string)");
}

/* Reads what the checked policy declares: hooks present, audiences. */
static int read_policy_fields(policy_state *ps, char *err, size_t err_cap)
{
    lua_State *L = ps->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->policy_ref);
    lua_getfield(L, -1, "ttl");
    ps->has_ttl = lua_isfunction(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "anonymous");
    ps->has_anonymous = lua_isfunction(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "after");
    ps->has_after = lua_isfunction(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "audiences");
    int rc = 0;
    if (lua_istable(L, -1)) {
        size_t n = lua_objlen(L, -1);
        for (size_t i = 0; i < n && rc == 0; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            size_t len = 0;
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (!s || len == 0 || len > POLICY_LIMIT_AUDIENCE || strlen(s) != len || i >= POLICY_MAX_AUDIENCES ||
                !(ps->audiences[ps->n_audiences] = strdup(s))) {
                snprintf(err, err_cap, "audiences must be at most %d non-empty strings of at most %d bytes",
                         POLICY_MAX_AUDIENCES, POLICY_LIMIT_AUDIENCE);
                rc = -1;
            } else {
                ps->n_audiences++;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 2);
    return rc;
}

/* call_hook is a C closure whose upvalues are what it builds requests and users with
 * and calls: from sandbox.host_interface() the req view and user constructors, the
 * function that builds both and calls authorize with them, and the decision -> payload
 * table; and the policy's authorize. */
enum {
    UV_REQUEST_VIEW = 1,  /* request_view(<REQUEST_ARGS>) */
    UV_USER,              /* user(<USER_ARGS>) */
    UV_AUTHORIZE_REQUEST, /* authorize_request(authorize, <REQUEST_ARGS>[, <USER_ARGS>]) */
    UV_PAYLOADS,          /* decision -> validated payload */
    UV_AUTHORIZE,         /* the policy's authorize */
    UV_AUTHORIZE_REQUEST_KEEP, /* authorize_request that also keeps req for after() */
    UV_COUNT = UV_AUTHORIZE_REQUEST_KEEP
};

static int call_hook(lua_State *L);

/* Sets ps->authorize_args from debug.getinfo(authorize, "u") (LuaJIT reports nparams
 * and isvararg), with the debug library opened only for that and removed again: the
 * policy's code has finished loading and runs in its own environment, so it never sees
 * `debug`. A function that declares fewer parameters has no way to reach the arguments
 * it did not declare (a fixed-parameter Lua function has no `...` and no `arg`), so not
 * building them changes nothing a policy can observe. Runs under lua_cpcall. */
static int count_authorize_args(lua_State *L)
{
    policy_state *ps = state_of(L);
    ps->authorize_args = 2;
    lua_pushcfunction(L, luaopen_debug);
    lua_pushstring(L, LUA_DBLIBNAME);
    lua_call(L, 1, 1);
    lua_pushnil(L);
    lua_setglobal(L, LUA_DBLIBNAME);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_pushnil(L);
    lua_setfield(L, -2, LUA_DBLIBNAME);
    lua_pop(L, 1);
    lua_getfield(L, -1, "getinfo");
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->policy_ref);
    lua_getfield(L, -1, "authorize");
    lua_remove(L, -2);
    lua_pushliteral(L, "u");
    lua_call(L, 2, 1);
    lua_getfield(L, -1, "nparams");
    lua_getfield(L, -2, "isvararg");
    if (lua_type(L, -2) == LUA_TNUMBER && lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        lua_Integer n = lua_tointeger(L, -2);
        ps->authorize_args = n < 0 ? 0 : n > 2 ? 2 : (int)n;
    }
    return 0;
}

/* Once the policy has loaded: keeps references to what the calls below use. */
static int take_refs(policy_state *ps, char *err, size_t err_cap)
{
    lua_State *L = ps->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->sandbox_ref);
    int sandbox = lua_gettop(L);
    lua_getfield(L, sandbox, "ttl");
    lua_getfield(L, sandbox, "anonymous");
    lua_getfield(L, sandbox, "host_interface");
    call_begin(ps);
    if (!lua_isfunction(L, -3) || !lua_isfunction(L, -2) || lua_pcall(L, 0, 1, 0) != 0 || !lua_istable(L, -1)) {
        snprintf(err, err_cap, "tokengate.sandbox lacks ttl, anonymous or host_interface");
        lua_settop(L, top);
        return -1;
    }
    int hi = lua_gettop(L);
    static const char *const fields[] = {"request_view", "user", "authorize_request", "decision_payloads"};
    for (size_t i = 0; i < 4; i++) {
        lua_getfield(L, hi, fields[i]);
        if (lua_type(L, -1) != (i < 3 ? LUA_TFUNCTION : LUA_TTABLE)) {
            snprintf(err, err_cap, "tokengate.sandbox.host_interface() lacks %s", fields[i]);
            lua_settop(L, top);
            return -1;
        }
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->policy_ref);
    lua_getfield(L, -1, "authorize");
    lua_remove(L, -2);
    lua_getfield(L, hi, "authorize_error");
    if (!lua_isfunction(L, -2) || !lua_isfunction(L, -1)) {
        snprintf(err, err_cap, "no authorize or authorize_error function");
        lua_settop(L, top);
        return -1;
    }
    ps->authorize_error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, hi, "authorize_request_keep");
    if (!lua_isfunction(L, -1)) {
        snprintf(err, err_cap, "tokengate.sandbox.host_interface() lacks authorize_request_keep");
        lua_settop(L, top);
        return -1;
    }
    lua_pushcclosure(L, call_hook, UV_COUNT);
    ps->call_hook_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, hi, "after_request");
    if (!lua_isfunction(L, -1)) {
        snprintf(err, err_cap, "tokengate.sandbox.host_interface() lacks after_request");
        lua_settop(L, top);
        return -1;
    }
    ps->after_request_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->policy_ref);
    lua_getfield(L, -1, "after");
    lua_remove(L, -2);
    ps->after_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* LUA_REFNIL when the policy has none */
    lua_pop(L, 1); /* host_interface() */
    ps->anonymous_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ps->ttl_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, top);
    if (lua_cpcall(L, count_authorize_args, NULL) != 0) {
        copy_error(L, err, err_cap);
        lua_settop(L, top);
        return -1;
    }
    return 0;
}

/* Builds a state running source; NULL with err on any failure. */
static policy_state *state_load(policy_host *host, const char *source, size_t source_len, const char *chunkname,
                                char *err, size_t err_cap)
{
    policy_state *ps = calloc(1, sizeof(*ps));
    if (!ps) {
        snprintf(err, err_cap, "out of memory");
        return NULL;
    }
    ps->host = host;
    snprintf(ps->chunkname, sizeof(ps->chunkname), "%s", chunkname);
    ps->mem_max = host->limits.max_memory_bytes;
    ps->max_instructions = host->limits.max_instructions;
    ps->max_call_ns = (uint64_t)host->limits.max_call_ms * 1000000u;
    ps->sandbox_ref = ps->policy_ref = LUA_NOREF;
    ps->ttl_ref = ps->anonymous_ref = ps->authorize_error_ref = LUA_NOREF;
    ps->call_hook_ref = ps->after_request_ref = ps->after_ref = LUA_NOREF;
    ps->L = lua_newstate(limited_alloc, ps);
    if (!ps->L) {
        snprintf(err, err_cap, "cannot create a Lua state");
        goto err;
    }
    lua_State *L = ps->L;
    lua_atpanic(L, on_panic);
    /* Hooks do not fire inside compiled traces: the budget needs the interpreter. */
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    if (lua_cpcall(L, prepare_state, NULL) != 0) {
        copy_error(L, err, err_cap);
        goto err;
    }
    lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_STEP);

    lua_getglobal(L, "require");
    lua_pushstring(L, "tokengate.sandbox");
    call_begin(ps);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        copy_error(L, err, err_cap);
        goto err;
    }
    ps->sandbox_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (lua_cpcall(L, install_bounded_patterns, NULL) != 0) {
        copy_error(L, err, err_cap);
        goto err;
    }
    /* The sandbox module has set up the string metatable; now freeze it so a policy can
     * neither read nor replace it (getmetatable("") returns false). */
    lua_pushstring(L, "");
    if (lua_getmetatable(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_pushlstring(L, source, source_len);
    lua_pushstring(L, chunkname);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->sandbox_ref);
    lua_getfield(L, -1, "load");
    lua_remove(L, -2);
    lua_insert(L, -3);
    call_begin(ps);
    if (lua_pcall(L, 2, 2, 0) != 0) {
        copy_error(L, err, err_cap);
        goto err;
    }
    if (!lua_istable(L, -2)) {
        const char *msg = lua_tostring(L, -1);
        snprintf(err, err_cap, "%s", msg ? msg : "policy did not load");
        goto err;
    }
    lua_pop(L, 1);
    ps->policy_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (take_refs(ps, err, err_cap) != 0 || read_policy_fields(ps, err, err_cap) != 0) goto err;
    return ps;
err:
    state_free(ps);
    return NULL;
}

/* ---- host ------------------------------------------------------------------------- */

policy_host *policy_host_new(custom_metrics *metrics, const policy_limits *limits)
{
    policy_host *host = calloc(1, sizeof(*host));
    if (!host) return NULL;
    host->metrics = metrics;
    host->limits = *limits;
    if (!host->limits.max_instructions) host->limits.max_instructions = POLICY_DEFAULT_MAX_INSTRUCTIONS;
    if (!host->limits.max_memory_bytes) host->limits.max_memory_bytes = POLICY_DEFAULT_MAX_MEMORY_BYTES;
    if (!host->limits.max_call_ms) host->limits.max_call_ms = POLICY_DEFAULT_MAX_CALL_MS;
    return host;
}

void policy_host_free(policy_host *host)
{
    if (!host) return;
    state_free(host->current);
    policy_source_unref(host->source);
    free(host);
}

static char *read_policy_file(const char *path, size_t *len, char *err, size_t err_cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_cap, "cannot open %s", path);
        return NULL;
    }
    char *buf = malloc(POLICY_SOURCE_MAX + 1);
    size_t n = buf ? fread(buf, 1, POLICY_SOURCE_MAX + 1, f) : 0;
    bool failed = ferror(f);
    fclose(f);
    if (!buf || failed || n > POLICY_SOURCE_MAX) {
        snprintf(err, err_cap, "cannot read %s (or larger than %d bytes)", path, POLICY_SOURCE_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void sha256_hex(const char *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int md_len = 0;
    static const char hex[] = "0123456789abcdef";
    if (!EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL)) md_len = 0;
    for (unsigned int i = 0; i < 32; i++) {
        out[2 * i] = i < md_len ? hex[md[i] >> 4] : '0';
        out[2 * i + 1] = i < md_len ? hex[md[i] & 0xf] : '0';
    }
    out[64] = '\0';
}

policy_source *policy_source_read(const char *path, char *err, size_t err_cap)
{
    char *owned = NULL;
    const char *data;
    size_t len;
    if (path) {
        owned = read_policy_file(path, &len, err, err_cap);
        if (!owned) return NULL;
        data = owned;
    } else {
        const embedded_file *f = embedded_find(DEFAULT_POLICY_PATH);
        if (!f) {
            snprintf(err, err_cap, "the built-in default policy is missing from this build");
            return NULL;
        }
        data = f->data;
        len = f->size;
    }
    policy_source *src = malloc(sizeof(*src) + len + 1);
    if (src) {
        src->path = strdup(path ? path : "(built-in default)");
        src->chunkname = strdup(path ? path : DEFAULT_POLICY_PATH);
    }
    if (!src || !src->path || !src->chunkname) {
        if (src) free(src->path), free(src->chunkname);
        free(src);
        free(owned);
        snprintf(err, err_cap, "out of memory");
        return NULL;
    }
    atomic_init(&src->refs, 1);
    src->len = len;
    memcpy(src->bytes, data, len);
    src->bytes[len] = '\0';
    sha256_hex(src->bytes, len, src->sha256_hex);
    free(owned);
    return src;
}

policy_source *policy_source_ref(policy_source *src)
{
    if (src) atomic_fetch_add_explicit(&src->refs, 1, memory_order_relaxed);
    return src;
}

void policy_source_unref(policy_source *src)
{
    if (!src || atomic_fetch_sub_explicit(&src->refs, 1, memory_order_acq_rel) != 1) return;
    free(src->path);
    free(src->chunkname);
    free(src);
}

const char *policy_source_sha256(const policy_source *src)
{
    return src->sha256_hex;
}

int policy_host_load_source(policy_host *host, policy_source *src, char *err, size_t err_cap)
{
    size_t metrics_before = custom_metrics_count(host->metrics);
    policy_state *ps = state_load(host, src->bytes, src->len, src->chunkname, err, err_cap);
    if (!ps) {
        custom_metrics_truncate(host->metrics, metrics_before);
        snprintf(host->last_error, sizeof(host->last_error), "%s", err);
        return -1;
    }
    state_free(host->current);
    host->current = ps;
    policy_source_unref(host->source);
    host->source = policy_source_ref(src);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    host->loaded_at = (double)now.tv_sec + now.tv_nsec / 1e9;
    host->last_error[0] = '\0';
    return 0;
}

void policy_host_set_last_error(policy_host *host, const char *err)
{
    snprintf(host->last_error, sizeof(host->last_error), "%s", err);
}

int policy_host_load(policy_host *host, const char *path, char *err, size_t err_cap)
{
    policy_source *src = policy_source_read(path, err, err_cap);
    if (!src) {
        snprintf(host->last_error, sizeof(host->last_error), "%s", err);
        return -1;
    }
    int rc = policy_host_load_source(host, src, err, err_cap);
    policy_source_unref(src);
    return rc;
}

/* The validating process's exit status when the policy did not load (its message on
 * stdout): any other status but 0 means it died some other way (a signal; a sanitizer's
 * report). */
#define VALIDATE_REFUSED 3

int policy_validate_main(int argc, char **argv)
{
    if (argc != 7 || strcmp(argv[1], POLICY_VALIDATE_ARG) != 0) return 2;
    policy_limits limits = {.max_instructions = strtoull(argv[4], NULL, 10),
                            .max_memory_bytes = (size_t)strtoull(argv[5], NULL, 10),
                            .max_call_ms = (uint32_t)strtoul(argv[6], NULL, 10)};
    /* A backstop for whatever the limits do not stop: SIGALRM's default action ends this
     * process, and the gateway reports the signal. */
    alarm((unsigned)(3 * (limits.max_call_ms ? limits.max_call_ms : POLICY_DEFAULT_MAX_CALL_MS) / 1000 + 2));
    /* The gateway's own load logs what the policy prints while loading; this one is quiet. */
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, STDERR_FILENO);
    char err[1024] = "out of memory";
    policy_source *src = malloc(sizeof(*src) + POLICY_SOURCE_MAX + 1);
    size_t len = 0;
    while (src && len <= POLICY_SOURCE_MAX) {
        ssize_t r = read(STDIN_FILENO, src->bytes + len, POLICY_SOURCE_MAX + 1 - len);
        if (r > 0) len += (size_t)r;
        else if (r == 0 || errno != EINTR) break;
    }
    int rc = -1;
    if (src) {
        atomic_init(&src->refs, 1);
        src->len = len <= POLICY_SOURCE_MAX ? len : 0;
        src->bytes[src->len] = '\0';
        src->chunkname = strdup(argv[2]);
        src->path = strdup(argv[3]);
    }
    if (src && len <= POLICY_SOURCE_MAX && src->chunkname && src->path) {
        custom_metrics *scratch = custom_metrics_new(1000);
        policy_host *host = scratch ? policy_host_new(scratch, &limits) : NULL;
        rc = host ? policy_host_load_source(host, src, err, sizeof(err)) : -1;
        policy_host_free(host); /* freed, so that a leak checker has nothing to say */
        custom_metrics_free(scratch);
    } else if (src && len > POLICY_SOURCE_MAX) {
        snprintf(err, sizeof(err), "%s: larger than %d bytes", argv[2], POLICY_SOURCE_MAX);
    }
    policy_source_unref(src);
    if (rc != 0) {
        size_t n = strlen(err), off = 0;
        while (off < n) {
            ssize_t w = write(STDOUT_FILENO, err + off, n - off);
            if (w <= 0 && errno != EINTR) break;
            if (w > 0) off += (size_t)w;
        }
    }
    return rc == 0 ? 0 : VALIDATE_REFUSED;
}

/* Writes all of data to fd (a pipe); false if the reader went away (SIGPIPE is ignored by
 * the gateway; the caller then reports how the validating process ended). */
static bool write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t w = write(fd, data, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        data += w;
        len -= (size_t)w;
    }
    return true;
}

int policy_validate_isolated(const policy_source *src, const policy_limits *limits, char *err, size_t err_cap)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
        snprintf(err, err_cap, "cannot check the policy: pipe: %s", strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (in[i] >= 0) close(in[i]);
            if (out[i] >= 0) close(out[i]);
        }
        return -1;
    }
    char instructions[32], memory[32], call_ms[32];
    snprintf(instructions, sizeof(instructions), "%llu", (unsigned long long)limits->max_instructions);
    snprintf(memory, sizeof(memory), "%zu", limits->max_memory_bytes);
    snprintf(call_ms, sizeof(call_ms), "%u", (unsigned)limits->max_call_ms);
    char *argv[] = {"tokengate", POLICY_VALIDATE_ARG, src->chunkname, src->path, instructions, memory, call_ms, NULL};
    /* This program's path as readlink reports it (a tool such as valgrind reports its
     * client's; executing /proc/self/exe itself would start the tool's own binary). */
    char program[4096] = "/proc/self/exe";
    ssize_t n = readlink("/proc/self/exe", program, sizeof(program) - 1);
    if (n > 0) program[n] = '\0';
    if (n <= 0 || access(program, X_OK) != 0) snprintf(program, sizeof(program), "/proc/self/exe");
    posix_spawn_file_actions_t actions;
    pid_t pid = -1;
    int spawn_rc = posix_spawn_file_actions_init(&actions);
    if (spawn_rc == 0) {
        spawn_rc = posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
        if (spawn_rc == 0) spawn_rc = posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        if (spawn_rc == 0) spawn_rc = posix_spawn(&pid, program, &actions, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&actions);
    }
    close(in[0]);
    close(out[1]);
    if (spawn_rc != 0) {
        close(in[1]);
        close(out[0]);
        snprintf(err, err_cap, "cannot check the policy: cannot start the checking process: %s", strerror(spawn_rc));
        return -1;
    }
    write_all(in[1], src->bytes, src->len);
    close(in[1]);
    char msg[1024];
    size_t used = 0;
    for (;;) {
        ssize_t r = read(out[0], msg + used, sizeof(msg) - 1 - used);
        if (r > 0) used += (size_t)r;
        else if (r == 0 || errno != EINTR) break;
        if (used == sizeof(msg) - 1) break;
    }
    msg[used] = '\0';
    close(out[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == VALIDATE_REFUSED)
        snprintf(err, err_cap, "%s", used ? msg : "the policy did not load");
    else if (WIFEXITED(status))
        snprintf(err, err_cap, "%s: loading it ended the checking process (exit status %d); nothing was loaded",
                 src->chunkname, WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(err, err_cap, "%s: loading it killed the checking process (signal %d, %s); nothing was loaded",
                 src->chunkname, WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(err, err_cap, "%s: the checking process ended abnormally", src->chunkname);
    return -1;
}

bool policy_host_file_matches(const policy_host *host)
{
    if (!host->current || !host->source) return false;
    if (strcmp(host->source->path, "(built-in default)") == 0) return true;
    char err[256];
    size_t len = 0;
    char *source = read_policy_file(host->source->path, &len, err, sizeof(err));
    if (!source) return false;
    char now_hex[65];
    sha256_hex(source, len, now_hex);
    free(source);
    return strcmp(now_hex, host->source->sha256_hex) == 0;
}

void policy_host_info(const policy_host *host, policy_info *out)
{
    memset(out, 0, sizeof(*out));
    out->path = host->source ? host->source->path : "";
    if (host->source) memcpy(out->sha256_hex, host->source->sha256_hex, sizeof(out->sha256_hex));
    out->loaded_at = host->loaded_at;
    out->last_error = host->last_error;
    out->loaded = host->current != NULL;
}

size_t policy_audiences(const policy_host *host, const char *const **out)
{
    if (!host->current) return 0;
    *out = (const char *const *)host->current->audiences;
    return host->current->n_audiences;
}

/* ---- calling hooks -------------------------------------------------------------------- */

/* Pushes the six arguments of the sandbox's user (and authorize_request after the
 * request's): username, uid, groups (a fresh list), extra (a fresh table of fresh lists),
 * and namespace and serviceaccount for system:serviceaccount:NS:NAME, which
 * identity_serviceaccount parses as sandbox.make_user's pattern does (else nil, nil).
 * Runs inside call_hook, under lua_pcall: running out of memory here is a policy error,
 * not a panic. */
#define USER_ARGS 6
static void push_user_args(lua_State *L, const identity_view *user)
{
    lua_pushlstring(L, user->username.ptr, user->username.len);
    lua_pushlstring(L, user->uid.ptr, user->uid.len);
    lua_createtable(L, (int)user->n_groups, 0);
    const unsigned char *pos = user->groups;
    for (size_t i = 0; i < user->n_groups; i++) {
        str_view g;
        identity_read_string(&pos, &g);
        lua_pushlstring(L, g.ptr, g.len);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_createtable(L, 0, (int)user->n_extra);
    pos = user->extra;
    for (size_t i = 0; i < user->n_extra; i++) {
        str_view key;
        identity_read_string(&pos, &key);
        size_t n_values = identity_read_count(&pos);
        lua_pushlstring(L, key.ptr, key.len);
        lua_createtable(L, (int)n_values, 0);
        for (size_t v = 0; v < n_values; v++) {
            str_view value;
            identity_read_string(&pos, &value);
            lua_pushlstring(L, value.ptr, value.len);
            lua_rawseti(L, -2, (int)v + 1);
        }
        lua_rawset(L, -3);
    }
    str_view ns, name;
    if (identity_serviceaccount(user->username, &ns, &name)) {
        lua_pushlstring(L, ns.ptr, ns.len);
        lua_pushlstring(L, name.ptr, name.len);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
}

static void push_cstring(lua_State *L, const char *s, const char *fallback)
{
    lua_pushstring(L, s ? s : fallback);
}

/* Pushes the six arguments of the sandbox's request_view (and authorize_request after
 * authorize): method, path, query, host, client_ip, and the headers packed into one
 * string, "name\0value\0..." with lower-case names, which the sandbox unpacks
 * (host_unpack_headers) only if the policy reads them. The credential headers are never
 * shown to policies. */
#define REQUEST_ARGS 6
static void push_request_args(lua_State *L, const policy_request *req)
{
    push_cstring(L, req->method, "");
    push_cstring(L, req->path, "/");
    push_cstring(L, req->query, "");
    push_cstring(L, req->host, "");
    push_cstring(L, req->client_ip, "");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (req->headers) {
        struct evkeyval *kv;
        TAILQ_FOREACH(kv, req->headers, next) {
            char first = (char)(kv->key[0] | 0x20); /* lower-case for letters */
            if ((first == 'a' && strcasecmp(kv->key, "authorization") == 0) ||
                (first == 'p' && strcasecmp(kv->key, "proxy-authorization") == 0))
                continue;
            for (const char *c = kv->key; *c; c++) luaL_addchar(&b, (*c >= 'A' && *c <= 'Z') ? *c + 32 : *c);
            luaL_addchar(&b, '\0');
            luaL_addstring(&b, kv->value);
            luaL_addchar(&b, '\0');
        }
    }
    luaL_pushresult(&b);
}

/* after()'s outcome as the sandbox's after_request takes it: status, decision, source,
 * reason (or nil), token_cached and sar_cached (each a boolean, or nil when unknown). */
#define OUTCOME_ARGS 6
static void push_outcome_args(lua_State *L, const policy_outcome *o)
{
    static const char *const sources[] = {"policy", "sar", "anonymous"};
    lua_pushinteger(L, o->status);
    lua_pushstring(L, o->status < 300 ? "allow" : o->status == 503 ? "unavailable" : o->status >= 500 ? "error" : "deny");
    lua_pushstring(L, sources[(unsigned)o->source < 3 ? o->source : 0]);
    if (o->reason) lua_pushlstring(L, o->reason, o->reason_len);
    else lua_pushnil(L);
    if (o->token_cached >= 0) lua_pushboolean(L, o->token_cached);
    else lua_pushnil(L);
    if (o->sar_cached >= 0) lua_pushboolean(L, o->sar_cached);
    else lua_pushnil(L);
}

/* The protected part of every hook call, run by lua_pcall as a C function so that
 * building the arguments (which allocates under the state's memory cap) can fail as a
 * Lua error. With ps->call.fn_ref set, calls that sandbox function with the policy and
 * then req and/or user, and returns its two results. Without, calls the policy's
 * authorize(req, user) itself (what sandbox.authorize does, minus its own pcall: an
 * error propagates to run_hook's lua_pcall), through the sandbox's authorize_request
 * when it takes req, and returns the value and its payload (nil when the value is not a
 * decision). */
static int call_hook(lua_State *L)
{
    policy_state *ps = state_of(L);
    lua_settop(L, 0);
    /* the most pushed at once: two functions, the arguments, what building them needs */
    luaL_checkstack(L, 3 + REQUEST_ARGS + USER_ARGS + OUTCOME_ARGS + 8, "call_hook");
    if (ps->call.outcome) {
        /* after_request(after, reuse, <REQUEST_ARGS or nils>, <USER_ARGS or nils>, <OUTCOME_ARGS>) */
        lua_rawgeti(L, LUA_REGISTRYINDEX, ps->after_request_ref);
        lua_rawgeti(L, LUA_REGISTRYINDEX, ps->after_ref);
        lua_pushboolean(L, ps->call.reuse_req);
        if (ps->call.reuse_req) {
            for (int i = 0; i < REQUEST_ARGS; i++) lua_pushnil(L);
        } else {
            push_request_args(L, ps->call.req);
        }
        if (ps->call.user) {
            push_user_args(L, ps->call.user);
        } else {
            for (int i = 0; i < USER_ARGS; i++) lua_pushnil(L);
        }
        push_outcome_args(L, ps->call.outcome);
        lua_call(L, 2 + REQUEST_ARGS + USER_ARGS + OUTCOME_ARGS, 0);
        return 0;
    }
    if (ps->call.fn_ref == LUA_NOREF) {
        int nargs = 0;
        if (ps->call.req) {
            lua_pushvalue(L, lua_upvalueindex(ps->has_after ? UV_AUTHORIZE_REQUEST_KEEP : UV_AUTHORIZE_REQUEST));
            lua_pushvalue(L, lua_upvalueindex(UV_AUTHORIZE));
            push_request_args(L, ps->call.req);
            nargs = 1 + REQUEST_ARGS;
            if (ps->call.user) {
                push_user_args(L, ps->call.user);
                nargs += USER_ARGS;
            }
        } else {
            /* authorize declares no parameter, so it takes no user either */
            lua_pushvalue(L, lua_upvalueindex(UV_AUTHORIZE));
        }
        lua_call(L, nargs, 1);
        lua_pushvalue(L, 1);
        lua_rawget(L, lua_upvalueindex(UV_PAYLOADS));
        return 2;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->call.fn_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->policy_ref);
    int nargs = 1;
    if (ps->call.req) {
        lua_pushvalue(L, lua_upvalueindex(UV_REQUEST_VIEW));
        push_request_args(L, ps->call.req);
        lua_call(L, REQUEST_ARGS, 1);
        nargs++;
    }
    if (ps->call.user) {
        lua_pushvalue(L, lua_upvalueindex(UV_USER));
        push_user_args(L, ps->call.user);
        lua_call(L, USER_ARGS, 1);
        nargs++;
    }
    lua_call(L, nargs, 2);
    return 2;
}

/* Runs call_hook for sandbox function fn_ref(policy, [req], [user]), or for the policy's
 * authorize when fn_ref is LUA_NOREF, with a fresh instruction budget; leaves its two
 * results (or the error) on the stack. Returns lua_pcall's code. */
static int run_hook(policy_state *ps, int fn_ref, const policy_request *req, const identity_view *user)
{
    lua_State *L = ps->L;
    ps->call.fn_ref = fn_ref;
    ps->call.req = req;
    ps->call.user = user;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->call_hook_ref);
    call_begin(ps);
    int rc = lua_pcall(L, 0, 2, 0);
    ps->call.req = NULL;
    ps->call.user = NULL;
    ps->call.outcome = NULL;
    return rc;
}

static const char *arena_copy(policy_decision *d, const char *s, size_t len)
{
    if (!s || d->arena_used + len + 1 > sizeof(d->arena)) return NULL;
    char *p = d->arena + d->arena_used;
    memcpy(p, s, len);
    p[len] = '\0';
    d->arena_used += len + 1;
    return p;
}

static void decision_error(policy_decision *d, const char *message)
{
    d->kind = POLICY_ERROR;
    d->n_headers = 0;
    d->arena_used = 0;
    d->message = arena_copy(d, message, strlen(message));
    if (!d->message) d->message = "policy error";
}

static bool header_value_ok(const char *v, size_t len)
{
    if (len > POLICY_LIMIT_HEADER_VALUE || strlen(v) != len) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
    }
    return true;
}

static bool header_name_ok(const char *n, size_t len)
{
    static const char *const refused[] = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                                          "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
                                          "authorization", NULL};
    if (len == 0 || len > POLICY_LIMIT_HEADER_NAME || strlen(n) != len) return false;
    for (size_t i = 0; i < len; i++)
        if (!strchr("!#$%&'*+-.^_`|~", n[i]) && !((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'z') ||
                                                 (n[i] >= 'A' && n[i] <= 'Z')))
            return false;
    if (strncasecmp(n, "x-remote-", 9) == 0) return false;
    for (const char *const *r = refused; *r; r++)
        if (strcasecmp(n, *r) == 0) return false;
    return true;
}

/* Copies the allow payload ({{name, value}, ...}) at the top of the stack, re-validating
 * in C what the Lua module already validated: an allow header must never smuggle. */
static void read_allow(lua_State *L, policy_decision *d)
{
    if (!lua_istable(L, -1)) {
        decision_error(d, "allow payload is not a table");
        return;
    }
    size_t n = lua_objlen(L, -1);
    if (n > POLICY_MAX_HEADERS) {
        decision_error(d, "too many allow headers");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        size_t nl = 0, vl = 0;
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nl) : NULL;
        const char *value = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
        bool ok = name && value && header_name_ok(name, nl) && header_value_ok(value, vl);
        if (ok) {
            d->header_names[i] = arena_copy(d, name, nl);
            d->header_values[i] = arena_copy(d, value, vl);
            ok = d->header_names[i] && d->header_values[i];
        }
        lua_pop(L, 3);
        if (!ok) {
            decision_error(d, "policy returned an invalid allow header");
            return;
        }
    }
    d->n_headers = n;
    d->kind = POLICY_ALLOW;
}

/* Reads the packed sar payload at the top (tokengate.unwrap_decision describes it: a tag
 * byte, "\1" resource or "\2" non-resource, then the attribute values joined with "\0"
 * in the order verb, namespace, group, version, resource, subresource, name, or path,
 * verb). Each value is checked again here: at most 256 bytes, no control characters. */
static void read_sar(lua_State *L, policy_decision *d)
{
    size_t len = 0;
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (!s || len < 1 || (s[0] != 1 && s[0] != 2)) {
        decision_error(d, "sar payload is not a packed sar");
        return;
    }
    bool nonresource = s[0] == 2;
    /* One copy of the values; the "\0" separators become the strings' terminators. */
    char *values = (char *)arena_copy(d, s + 1, len - 1);
    if (!values) {
        decision_error(d, "policy returned invalid sar attributes");
        return;
    }
    const char *fields[7];
    size_t want = nonresource ? 2 : 7, n = 0;
    const char *end = values + (len - 1);
    for (const char *p = values; n < want; n++) {
        size_t flen = strlen(p);
        size_t max = nonresource && n == 0 ? POLICY_LIMIT_SAR_PATH : POLICY_LIMIT_SAR_VALUE;
        if (flen > max || !header_value_ok(p, flen)) {
            decision_error(d, "policy returned invalid sar attributes");
            return;
        }
        fields[n] = p;
        p += flen + 1;
        if (p > end + 1 || (n + 1 < want && p > end)) {
            decision_error(d, "policy returned invalid sar attributes");
            return;
        }
        if (n + 1 == want && p != end + 1) {
            decision_error(d, "policy returned invalid sar attributes");
            return;
        }
    }
    sar_attributes *a = &d->sar;
    memset(a, 0, sizeof(*a));
    a->nonresource = nonresource;
    if (nonresource) {
        a->path = fields[0];
        a->verb = fields[1];
    } else {
        a->verb = fields[0];
        a->namespace_ = fields[1];
        a->group = fields[2];
        a->version = fields[3];
        a->resource = fields[4];
        a->subresource = fields[5];
        a->name = fields[6];
    }
    if (!sar_attributes_valid(a)) {
        decision_error(d, "policy returned invalid sar attributes");
        return;
    }
    d->kind = POLICY_SAR;
}

/* The sandbox's message for an authorize call that raised (the error at the top) or
 * returned something that is not a decision (the value at the top), into out. */
static void authorize_error(policy_state *ps, bool raised, policy_decision *out)
{
    lua_State *L = ps->L;
    if (raised && over_budget(L)) {
        /* The count hook's own message; nothing more may run in this call. */
        decision_error(out, lua_tostring(L, -1) ? lua_tostring(L, -1) : BUDGET_ERROR);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->authorize_error_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ps->policy_ref);
    lua_pushvalue(L, -3);
    lua_pushboolean(L, raised);
    call_begin(ps);
    if (lua_pcall(L, 3, 1, 0) == 0 && lua_type(L, -1) == LUA_TSTRING)
        decision_error(out, lua_tostring(L, -1));
    else
        decision_error(out, raised ? "authorize failed" : "authorize returned no decision");
    lua_pop(L, 1);
}

void policy_authorize(policy_host *host, const policy_request *req, const identity_view *user, policy_decision *out)
{
    memset(out, 0, offsetof(policy_decision, arena));
    out->arena_used = 0;
    policy_state *ps = host->current;
    if (!ps) {
        decision_error(out, "no policy loaded");
        return;
    }
    lua_State *L = ps->L;
    int top = lua_gettop(L);
    ps->req_kept = false;
    if (run_hook(ps, LUA_NOREF, ps->authorize_args >= 1 ? req : NULL, ps->authorize_args >= 2 ? user : NULL) != 0) {
        authorize_error(ps, true, out);
        lua_settop(L, top);
        return;
    }
    ps->req_kept = ps->has_after && ps->authorize_args >= 1;
    /* The decision, then its payload (tokengate.unwrap_decision describes them): a
     * header list (allow), a packed string tagged 1 or 2 (sar), any other string (deny
     * reason), nil (not a decision). */
    switch (lua_type(L, -1)) {
    case LUA_TTABLE: read_allow(L, out); break;
    case LUA_TSTRING: {
        size_t len = 0;
        const char *s = lua_tolstring(L, -1, &len);
        if (len > 0 && (s[0] == 1 || s[0] == 2)) {
            read_sar(L, out);
        } else {
            const char *reason = s;
            if (len > POLICY_LIMIT_REASON) len = POLICY_LIMIT_REASON;
            if (!header_value_ok(reason, len)) reason = "denied by policy", len = strlen(reason);
            out->kind = POLICY_DENY;
            out->message = arena_copy(out, reason, len);
            if (!out->message) out->message = "denied by policy";
        }
        break;
    }
    default:
        lua_pop(L, 1);
        authorize_error(ps, false, out);
        break;
    }
    lua_settop(L, top);
}

int policy_ttl(policy_host *host, const identity_view *user, int64_t *ttl_ms, char *err, size_t err_cap)
{
    policy_state *ps = host->current;
    if (!ps || !ps->has_ttl) return 0;
    ps->req_kept = false;
    lua_State *L = ps->L;
    int top = lua_gettop(L);
    if (run_hook(ps, ps->ttl_ref, NULL, user) != 0) {
        copy_error(L, err, err_cap);
        lua_settop(L, top);
        return -1;
    }
    int rc = -1;
    if (lua_isnil(L, -2) && lua_isnil(L, -1)) {
        rc = 0; /* the hook returned nil: the default TTL */
    } else if (lua_type(L, -2) == LUA_TNUMBER) {
        double seconds = lua_tonumber(L, -2);
        if (isfinite(seconds) && seconds >= 0 && seconds < 1e9) {
            *ttl_ms = (int64_t)(seconds * 1000);
            rc = 1;
        }
    }
    if (rc < 0) snprintf(err, err_cap, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "ttl returned no number");
    lua_settop(L, top);
    return rc;
}

int policy_anonymous(policy_host *host, const policy_request *req, char *err, size_t err_cap)
{
    policy_state *ps = host->current;
    if (!ps || !ps->has_anonymous) return 0;
    ps->req_kept = false;
    lua_State *L = ps->L;
    int top = lua_gettop(L);
    if (run_hook(ps, ps->anonymous_ref, req, NULL) != 0) {
        copy_error(L, err, err_cap);
        lua_settop(L, top);
        return -1;
    }
    int rc;
    if (lua_isstring(L, -1)) {
        snprintf(err, err_cap, "%s", lua_tostring(L, -1));
        rc = -1;
    } else {
        rc = lua_toboolean(L, -2) ? 1 : 0;
    }
    lua_settop(L, top);
    return rc;
}

bool policy_has_anonymous(const policy_host *host)
{
    return host->current && host->current->has_anonymous;
}

bool policy_has_after(const policy_host *host)
{
    return host->current && host->current->has_after;
}

int policy_after(policy_host *host, const policy_request *req, const identity_view *user,
                 const policy_outcome *outcome, char *err, size_t err_cap)
{
    policy_state *ps = host->current;
    if (!ps || !ps->has_after) return 0;
    lua_State *L = ps->L;
    int top = lua_gettop(L);
    static const policy_request no_request = {0};
    ps->call.outcome = outcome; /* call_hook's after branch; run_hook clears it */
    ps->call.reuse_req = ps->req_kept && outcome->follows_authorize;
    ps->req_kept = false;
    int rc = run_hook(ps, LUA_NOREF, req ? req : &no_request, user) == 0 ? 0 : -1;
    ps->call.reuse_req = false;
    if (rc < 0) copy_error(L, err, err_cap);
    lua_settop(L, top);
    return rc;
}
