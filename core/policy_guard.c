/* policy_guard.c owns what stops a policy call that runs too long or too deep: the
 * count hook (instruction budget, wall clock, C stack), pcall and xpcall that cannot
 * swallow a stop, and the nesting guard of library functions that call back into Lua
 * (docs/POLICIES.md, "What else stops a policy call"). */
#include "policy_internal.h"

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

/* Every HOOK_STEP instructions: the budget, the wall clock and the C stack. Whatever
 * stops the call here marks it halted, because LuaJIT runs an xpcall handler for an error
 * raised in a hook with hooks off: the handler must not run at all (budget_xpcall). */
void count_hook(lua_State *L, lua_Debug *ar)
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

/* pcall and xpcall for policies: like the originals, except that once the instruction
 * budget is spent the error propagates instead of being caught — otherwise
 * `while true do pcall(loop) end` would outlive any budget. */
bool over_budget(lua_State *L)
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

int budget_pcall(lua_State *L)
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

int budget_xpcall(lua_State *L)
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
int depth_guarded(lua_State *L)
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
int guarded_sort(lua_State *L)
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
void wrap_library_function(lua_State *L, const char *name, lua_CFunction fn)
{
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
}
