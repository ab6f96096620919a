/* policy_host_api.c owns tokengate.host, the C module the embedded Lua modules call
 * for what needs the gateway: metric declarations and updates (custom_metrics.c), log
 * lines, and a few fast paths (control-character scan, header unpacking). Policies
 * never reach it directly. */
#include "policy_internal.h"

#include "log.h"

#include <stdio.h>
#include <string.h>

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
    custom_metric_kind kind = strcmp(kind_text, "counter") == 0     ? CUSTOM_COUNTER
                              : strcmp(kind_text, "gauge") == 0     ? CUSTOM_GAUGE
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
        id = custom_metrics_declare(ps->host->metrics, kind, name, help, labels, (size_t)n_labels, buckets, n_buckets,
                                    err, sizeof(err));
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
    custom_metric_op op = strcmp(op_text, "inc") == 0       ? CUSTOM_OP_INC
                          : strcmp(op_text, "set") == 0     ? CUSTOM_OP_SET
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
    log_level lv = strcmp(level, "debug") == 0   ? LOG_DEBUG
                   : strcmp(level, "warn") == 0  ? LOG_WARN
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

/* has_control(s, allow_tab): true when s has an ASCII control character (0x00-0x1f or
 * 0x7f; a tab is fine when allow_tab). The Lua module's fallback is the patterns
 * "[%z\1-\31\127]" and "[%z\1-\8\10-\31\127]", which mean the same. */
static int host_has_control(lua_State *L)
{
    size_t len = 0;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    bool allow_tab = lua_toboolean(L, 2);
    bool found = false;
    for (size_t i = 0; i < len && !found; i++) found = (s[i] < 0x20 && !(allow_tab && s[i] == '\t')) || s[i] == 0x7f;
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

int open_host_module(lua_State *L)
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
