/* policy.c owns the Lua states that run policies: their creation (the capped allocator of
 * policy_alloc.c, JIT off so the instruction hook of policy_guard.c fires, only the
 * libraries the sandbox needs, the embedded tokengate modules and the tokengate.host
 * module of policy_host_api.c), loading a policy_source (policy_source.c) into a state,
 * and every protected call into a hook (decisions read by policy_decision.c). The
 * sandbox rules themselves live in lua/tokengate/sandbox.lua, shared with the busted kit.
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
#include "policy_internal.h"

#include "embedded.h"
#include "log.h"

#include <event2/keyvalq_struct.h>
#include <luajit.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

/* ---- the state -------------------------------------------------------------------- */

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
    UV_REQUEST_VIEW = 1,       /* request_view(<REQUEST_ARGS>) */
    UV_USER,                   /* user(<USER_ARGS>) */
    UV_AUTHORIZE_REQUEST,      /* authorize_request(authorize, <REQUEST_ARGS>[, <USER_ARGS>]) */
    UV_PAYLOADS,               /* decision -> validated payload */
    UV_AUTHORIZE,              /* the policy's authorize */
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
    lua_pop(L, 1);                                  /* host_interface() */
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
    lua_pushstring(L, o->status < 300    ? "allow"
                      : o->status == 503 ? "unavailable"
                      : o->status >= 500 ? "error"
                                         : "deny");
    lua_pushstring(L, sources[(unsigned)o->source < 3 ? o->source : 0]);
    if (o->reason)
        lua_pushlstring(L, o->reason, o->reason_len);
    else
        lua_pushnil(L);
    if (o->token_cached >= 0)
        lua_pushboolean(L, o->token_cached);
    else
        lua_pushnil(L);
    if (o->sar_cached >= 0)
        lua_pushboolean(L, o->sar_cached);
    else
        lua_pushnil(L);
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

int policy_after(policy_host *host, const policy_request *req, const identity_view *user, const policy_outcome *outcome,
                 char *err, size_t err_cap)
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
