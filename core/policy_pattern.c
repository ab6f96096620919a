/* policy_pattern.c: Lua patterns (find, match, gmatch, gsub) with every matcher step
 * charged to the policy call's instruction budget. Written for this project from the Lua
 * 5.1 reference manual's description of patterns (section 5.4.1) and checked against
 * LuaJIT's own string library by spec/unit/test_policy_pattern.c. Character classes are
 * ASCII, as LuaJIT's are (no locale). */
#include "policy_pattern.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define ESCAPE '%'
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)

typedef struct match_state {
    const char *src_init, *src_end; /* the subject */
    const char *p_end;              /* the pattern's end (a Lua string: *p_end == '\0') */
    lua_State *L;
    pattern_budget *budget;
    int level; /* captures open or closed so far */
    int depth; /* matcher recursion */
    struct {
        const char *init;
        ptrdiff_t len; /* or CAP_UNFINISHED, CAP_POSITION */
    } capture[PATTERN_MAX_CAPTURES];
} match_state;

/* One unit of matching work (n units for a comparison of n bytes). */
static void charge(match_state *ms, uint64_t n)
{
    *ms->budget->spent += n;
    if (*ms->budget->spent > *ms->budget->limit)
        luaL_error(ms->L, "pattern matching exceeded the instruction budget (%d instructions)",
                   *ms->budget->limit > INT32_MAX ? INT32_MAX : (int)*ms->budget->limit);
}

static bool is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}
static bool is_lower(int c)
{
    return c >= 'a' && c <= 'z';
}
static bool is_upper(int c)
{
    return c >= 'A' && c <= 'Z';
}
static bool is_space(int c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}
static bool is_cntrl(int c)
{
    return c < 0x20 || c == 0x7f;
}
static bool is_punct(int c)
{
    return c > 0x20 && c < 0x7f && !is_alpha(c) && !is_digit(c);
}
static bool is_xdigit(int c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* c against %cl (cl the letter after the escape). */
static bool class_matches(int c, int cl)
{
    bool res;
    switch (cl | 0x20) {
    case 'a': res = is_alpha(c); break;
    case 'c': res = is_cntrl(c); break;
    case 'd': res = is_digit(c); break;
    case 'g': res = c > 0x20 && c < 0x7f; break; /* LuaJIT has %g too */
    case 'l': res = is_lower(c); break;
    case 'p': res = is_punct(c); break;
    case 's': res = is_space(c); break;
    case 'u': res = is_upper(c); break;
    case 'w': res = is_alpha(c) || is_digit(c); break;
    case 'x': res = is_xdigit(c); break;
    case 'z': res = c == 0; break;
    default: return cl == c; /* %. %% %( ...: the character itself */
    }
    return is_upper(cl) ? !res : res;
}

/* c against the set [ ... ] starting at p ('[') and ending at close (']'). */
static bool set_matches(int c, const char *p, const char *close)
{
    bool in_set = true;
    if (p[1] == '^') {
        in_set = false;
        p++;
    }
    while (++p < close) {
        if (*p == ESCAPE) {
            p++;
            if (class_matches(c, (unsigned char)*p)) return in_set;
        } else if (p[1] == '-' && p + 2 < close) {
            p += 2;
            if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p) return in_set;
        } else if ((unsigned char)*p == c) {
            return in_set;
        }
    }
    return !in_set;
}

/* The end of the single-character class starting at p. */
static const char *class_end(match_state *ms, const char *p)
{
    switch (*p++) {
    case ESCAPE:
        if (p >= ms->p_end) luaL_error(ms->L, "malformed pattern (ends with '%%')");
        return p + 1;
    case '[':
        if (*p == '^') p++;
        do { /* the first character of a set is never its end: "[]]" is a set of ']' */
            if (p >= ms->p_end) luaL_error(ms->L, "malformed pattern (missing ']')");
            if (*(p++) == ESCAPE && p < ms->p_end) p++;
        } while (*p != ']');
        return p + 1;
    default: return p;
    }
}

static bool single_matches(int c, const char *p, const char *ep)
{
    switch (*p) {
    case '.': return true;
    case ESCAPE: return class_matches(c, (unsigned char)p[1]);
    case '[': return set_matches(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

static const char *match(match_state *ms, const char *s, const char *p);

static const char *match_balance(match_state *ms, const char *s, const char *p)
{
    if (p + 1 >= ms->p_end) luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= ms->src_end || *s != *p) return NULL;
    char open = p[0], close = p[1];
    int depth = 1;
    while (++s < ms->src_end) {
        charge(ms, 1);
        if (*s == close) {
            if (--depth == 0) return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

static const char *max_expand(match_state *ms, const char *s, const char *p, const char *ep)
{
    ptrdiff_t i = 0;
    while (s + i < ms->src_end && single_matches((unsigned char)s[i], p, ep)) {
        charge(ms, 1);
        i++;
    }
    for (; i >= 0; i--) { /* the longest run first, then shorter ones */
        charge(ms, 1);
        const char *res = match(ms, s + i, ep + 1);
        if (res) return res;
    }
    return NULL;
}

static const char *min_expand(match_state *ms, const char *s, const char *p, const char *ep)
{
    for (;;) {
        charge(ms, 1);
        const char *res = match(ms, s, ep + 1);
        if (res) return res;
        if (s < ms->src_end && single_matches((unsigned char)*s, p, ep))
            s++;
        else
            return NULL;
    }
}

static const char *start_capture(match_state *ms, const char *s, const char *p, ptrdiff_t what)
{
    if (ms->level >= PATTERN_MAX_CAPTURES) luaL_error(ms->L, "too many captures");
    ms->capture[ms->level].init = s;
    ms->capture[ms->level].len = what;
    ms->level++;
    const char *res = match(ms, s, p);
    if (!res) ms->level--;
    return res;
}

static const char *end_capture(match_state *ms, const char *s, const char *p)
{
    int l = ms->level - 1;
    while (l >= 0 && ms->capture[l].len != CAP_UNFINISHED) l--;
    if (l < 0) luaL_error(ms->L, "invalid pattern capture");
    ms->capture[l].len = s - ms->capture[l].init;
    const char *res = match(ms, s, p);
    if (!res) ms->capture[l].len = CAP_UNFINISHED;
    return res;
}

static const char *match_capture(match_state *ms, const char *s, int digit)
{
    int l = digit - '1';
    if (l < 0 || l >= ms->level || ms->capture[l].len == CAP_UNFINISHED) luaL_error(ms->L, "invalid capture index");
    ptrdiff_t len = ms->capture[l].len;
    if (len < 0) return NULL; /* a position capture matches no text */
    charge(ms, (uint64_t)len + 1);
    if (ms->src_end - s >= len && memcmp(ms->capture[l].init, s, (size_t)len) == 0) return s + len;
    return NULL;
}

static const char *match(match_state *ms, const char *s, const char *p)
{
    if (++ms->depth > PATTERN_MAX_DEPTH) luaL_error(ms->L, "pattern too complex");
    for (;;) {
        charge(ms, 1);
        if (p == ms->p_end) break;
        switch (*p) {
        case '(':
            s = (p + 1 < ms->p_end && p[1] == ')') ? start_capture(ms, s, p + 2, CAP_POSITION)
                                                   : start_capture(ms, s, p + 1, CAP_UNFINISHED);
            goto done;
        case ')': s = end_capture(ms, s, p + 1); goto done;
        case '$':
            if (p + 1 == ms->p_end) {
                if (s != ms->src_end) s = NULL;
                goto done;
            }
            break; /* a '$' elsewhere is the character itself */
        case ESCAPE:
            if (p[1] == 'b') {
                s = match_balance(ms, s, p + 2);
                if (!s) goto done;
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                p += 2;
                if (*p != '[') luaL_error(ms->L, "missing '[' after '%%f' in pattern");
                const char *ep = class_end(ms, p);
                int prev = s == ms->src_init ? 0 : (unsigned char)s[-1];
                int cur = s < ms->src_end ? (unsigned char)*s : 0;
                if (!set_matches(prev, p, ep - 1) && set_matches(cur, p, ep - 1)) {
                    p = ep;
                    continue;
                }
                s = NULL;
                goto done;
            }
            if (is_digit((unsigned char)p[1])) {
                s = match_capture(ms, s, (unsigned char)p[1]);
                if (!s) goto done;
                p += 2;
                continue;
            }
            break;
        default: break;
        }
        /* A single-character class, perhaps with a quantifier. */
        const char *ep = class_end(ms, p);
        bool m = s < ms->src_end && single_matches((unsigned char)*s, p, ep);
        char quantifier = ep < ms->p_end ? *ep : '\0';
        if (quantifier == '?') {
            const char *res;
            if (m && (res = match(ms, s + 1, ep + 1)) != NULL) {
                s = res;
                goto done;
            }
            p = ep + 1;
            continue;
        }
        if (quantifier == '*') {
            s = max_expand(ms, s, p, ep);
            goto done;
        }
        if (quantifier == '+') {
            s = m ? max_expand(ms, s + 1, p, ep) : NULL;
            goto done;
        }
        if (quantifier == '-') {
            s = min_expand(ms, s, p, ep);
            goto done;
        }
        if (!m) {
            s = NULL;
            goto done;
        }
        s++;
        p = ep;
    }
done:
    ms->depth--;
    return s;
}

static void push_capture(match_state *ms, int i, const char *s, const char *e)
{
    if (i >= ms->level) {
        if (i != 0) luaL_error(ms->L, "invalid capture index");
        lua_pushlstring(ms->L, s, (size_t)(e - s)); /* no captures: the whole match */
        return;
    }
    ptrdiff_t len = ms->capture[i].len;
    if (len == CAP_UNFINISHED) luaL_error(ms->L, "unfinished capture");
    if (len == CAP_POSITION)
        lua_pushinteger(ms->L, ms->capture[i].init - ms->src_init + 1);
    else
        lua_pushlstring(ms->L, ms->capture[i].init, (size_t)len);
}

/* Pushes the captures (or the whole match when s is given and there are none). */
static int push_captures(match_state *ms, const char *s, const char *e)
{
    int n = (ms->level == 0 && s) ? 1 : ms->level;
    luaL_checkstack(ms->L, n, "too many captures");
    for (int i = 0; i < n; i++) push_capture(ms, i, s, e);
    return n;
}

static void state_init(match_state *ms, lua_State *L, const char *s, size_t ls, const char *p, size_t lp)
{
    ms->L = L;
    ms->budget = lua_touserdata(L, lua_upvalueindex(1));
    ms->src_init = s;
    ms->src_end = s + ls;
    ms->p_end = p + lp;
    ms->level = 0;
    ms->depth = 0;
}

static bool has_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (strchr("^$*+?.([%-", p[i]) && p[i] != '\0') return true;
    return false;
}

/* A relative string position (negative: from the end) as a 0-based offset, >= 0. */
static ptrdiff_t start_offset(lua_Integer pos, size_t len)
{
    if (pos < 0) pos += (lua_Integer)len + 1;
    return pos > 0 ? (ptrdiff_t)pos - 1 : 0;
}

static int find_or_match(lua_State *L, bool find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    ptrdiff_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if ((size_t)init > ls) init = (ptrdiff_t)ls; /* as Lua 5.1 and LuaJIT: past the end is the end */
    match_state ms;
    state_init(&ms, L, s, ls, p, lp);
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        /* A plain search: at most (ls - init) * lp byte comparisons. */
        charge(&ms, (uint64_t)(ls - (size_t)init) / 16 + 1);
        const char *hit = lp == 0 ? s + init : memmem(s + init, ls - (size_t)init, p, lp);
        if (hit) {
            lua_pushinteger(L, hit - s + 1);
            lua_pushinteger(L, hit - s + (lua_Integer)lp);
            return 2;
        }
        lua_pushnil(L);
        return 1;
    }
    bool anchor = lp > 0 && *p == '^';
    if (anchor) p++;
    const char *s1 = s + init;
    do {
        ms.level = 0;
        ms.depth = 0;
        const char *e = match(&ms, s1, p);
        if (e) {
            if (!find) return push_captures(&ms, s1, e);
            lua_pushinteger(L, s1 - s + 1);
            lua_pushinteger(L, e - s);
            return push_captures(&ms, NULL, NULL) + 2;
        }
    } while (s1++ < ms.src_end && !anchor);
    lua_pushnil(L);
    return 1;
}

static int pattern_find(lua_State *L)
{
    return find_or_match(L, true);
}
static int pattern_match(lua_State *L)
{
    return find_or_match(L, false);
}

/* The iterator: upvalues budget, subject, pattern, next offset. */
static int gmatch_next(lua_State *L)
{
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(3), &lp);
    match_state ms;
    state_init(&ms, L, s, ls, p, lp);
    for (const char *src = s + lua_tointeger(L, lua_upvalueindex(4)); src <= ms.src_end; src++) {
        ms.level = 0;
        ms.depth = 0;
        const char *e = match(&ms, src, p);
        if (e) {
            lua_Integer next = e - s;
            if (e == src) next++; /* an empty match: go on one further */
            lua_pushinteger(L, next);
            lua_replace(L, lua_upvalueindex(4));
            return push_captures(&ms, src, e);
        }
    }
    return 0;
}

static int pattern_gmatch(lua_State *L)
{
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

static void add_replacement_string(match_state *ms, luaL_Buffer *b, const char *s, const char *e)
{
    size_t l;
    const char *news = lua_tolstring(ms->L, 3, &l);
    for (size_t i = 0; i < l; i++) {
        if (news[i] != ESCAPE) {
            luaL_addchar(b, news[i]);
            continue;
        }
        i++; /* news[l] is the string's terminating '\0' */
        if (!is_digit((unsigned char)news[i])) {
            luaL_addchar(b, news[i]);
        } else if (news[i] == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else {
            push_capture(ms, news[i] - '1', s, e);
            luaL_addvalue(b);
        }
    }
}

static void add_replacement(match_state *ms, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = ms->L;
    switch (lua_type(L, 3)) {
    case LUA_TNUMBER:
    case LUA_TSTRING: add_replacement_string(ms, b, s, e); return;
    case LUA_TFUNCTION: {
        lua_pushvalue(L, 3);
        int n = push_captures(ms, s, e);
        lua_call(L, n, 1);
        break;
    }
    default: /* a table */
        push_capture(ms, 0, s, e);
        lua_gettable(L, 3);
        break;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: keep the original text */
        lua_pop(L, 1);
        lua_pushlstring(L, s, (size_t)(e - s));
    } else if (!lua_isstring(L, -1)) {
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    }
    luaL_addvalue(b);
}

static int pattern_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int repl_type = lua_type(L, 3);
    lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argcheck(L,
                  repl_type == LUA_TNUMBER || repl_type == LUA_TSTRING || repl_type == LUA_TFUNCTION ||
                      repl_type == LUA_TTABLE,
                  3, "string/function/table expected");
    bool anchor = lp > 0 && *p == '^';
    if (anchor) p++;
    match_state ms;
    state_init(&ms, L, src, ls, p, anchor ? lp - 1 : lp);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer n = 0;
    while (n < max_n) {
        ms.level = 0;
        ms.depth = 0;
        const char *e = match(&ms, src, p);
        if (e) {
            n++;
            add_replacement(&ms, &b, src, e);
        }
        if (e && e > src)
            src = e;
        else if (src < ms.src_end)
            luaL_addchar(&b, *src++);
        else
            break;
        if (anchor) break;
    }
    luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}

void policy_pattern_register(lua_State *L, pattern_budget *budget)
{
    static const struct {
        const char *name;
        lua_CFunction fn;
    } functions[] = {
        {"find", pattern_find}, {"match", pattern_match}, {"gmatch", pattern_gmatch}, {"gsub", pattern_gsub}};
    for (size_t i = 0; i < sizeof(functions) / sizeof(functions[0]); i++) {
        lua_pushlightuserdata(L, budget);
        lua_pushcclosure(L, functions[i].fn, 1);
        lua_setfield(L, -2, functions[i].name);
    }
}
