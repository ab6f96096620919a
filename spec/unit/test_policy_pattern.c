/* Differential test of core/policy_pattern.c: the bounded find/match/gmatch/gsub must
 * answer exactly what LuaJIT's own string library answers (results, or an error) over a
 * corpus of subjects, patterns and replacements, and must stop a backtracking pattern
 * within the budget instead of running for hours. */
#include "policy_pattern.h"
#include "unit.h"

#include <lauxlib.h>
#include <lualib.h>

/* Runs in a state where `bounded` holds the bounded functions and `string` LuaJIT's.
 * Returns the number of mismatches and prints each. */
static const char *const DIFFERENTIAL = "\
local subjects = { '', 'a', 'abc', 'hello world', '  trim me  ', 'key=value; k2=v2', \
  '/apis/hooks/team-a/deliveries/x1', '/api/v1/namespaces/default/pods', 'aaa', 'aaab', \
  'THE (quick) fox', 'f(a(b)c)d', '[x]', 'x%y', 'a.b.c', 'a\\0b', '123abc456', 'tab\\there', \
  'system:serviceaccount:ns:name', 'abcabcabc', 'ab$', '^ab', '-x-' } \
local patterns = { '', 'a', '^a', 'a$', '^$', '.', '.-', '.*', 'a*', 'a+', 'a-b', 'a?b', \
  '%a+', '%d+', '%s*(.-)%s*$', '(%w+)=(%w+)', '^/apis/([^/]+)/([^/]+)/([^/]+)/?(.*)$', \
  '()a()', '(a)(b)(c)', '%((%w+)%)', '%b()', '%f[%w]%w+', '[%]]', '[^%s]+', '[a-c]+', \
  '[]', '[^]', '%', '(', ')', '(()', '%1', '(a)%1', '(.)%1', '[a-]', '[-a]', '%.', \
  'x%%y', '^system:serviceaccount:([^:]+):([^:]+)$', '(b)(c)$', '$x', 'a$b', '%z', \
  '[%z]', '%S+', '%A', '%u%l*', '%x+', '%p', '%c', '%b', '%bx', '%f', '%fa', '[a', '%g', \
  '(a*(.)%w(%s*))', '^(%d+)', 'abc', 'b', 'c$', '%W', '[%a%d]+', '^-', '-', '.+b' } \
local inits = { nil, 1, 2, -1, -3, 0, 4, 10, 100, -100 } \
local function pack(ok, ...) return { ok = ok, n = select('#', ...), ... } end \
local function same(a, b) \
  if a.ok ~= b.ok then return false end \
  if not a.ok then return true end \
  if a.n ~= b.n then return false end \
  for i = 1, a.n do if a[i] ~= b[i] then return false end end \
  return true \
end \
local function show(r) \
  local t = {} \
  for i = 1, r.n do t[#t + 1] = tostring(r[i]) end \
  return (r.ok and 'ok ' or 'error ') .. table.concat(t, ', ') \
end \
local bad, cases = 0, 0 \
local function compare(what, f1, f2, ...) \
  cases = cases + 1 \
  local a, b = pack(pcall(f1, ...)), pack(pcall(f2, ...)) \
  if not same(a, b) then \
    bad = bad + 1 \
    local args = {} \
    for i = 1, select('#', ...) do args[#args + 1] = string.format('%q', tostring((select(i, ...)))) end \
    io.stderr:write(what, '(', table.concat(args, ', '), '): luajit ', show(a), ' | bounded ', show(b), '\\n') \
  end \
end \
local function collect(gm, s, p) \
  local out = {} \
  for a, b, c in gm(s, p) do out[#out + 1] = tostring(a) .. '|' .. tostring(b) .. '|' .. tostring(c) end \
  return table.concat(out, ';') \
end \
local repls = { '', 'x', '%0', '<%1>', '%2%1', '%%', '%', '%x', \
  function(a, b) return b and (b .. a) or nil end, function() return false end, \
  function(a) return #a end, { a = 'A', abc = 1, hello = false }, function() return {} end } \
for _, s in ipairs(subjects) do \
  for _, p in ipairs(patterns) do \
    for i = 1, #inits + 1 do \
      local init = inits[i] \
      compare('find', string.find, bounded.find, s, p, init) \
      compare('match', string.match, bounded.match, s, p, init) \
      compare('find plain', string.find, bounded.find, s, p, init, true) \
    end \
    compare('gmatch', function() return collect(string.gmatch, s, p) end, \
                      function() return collect(bounded.gmatch, s, p) end) \
    for _, r in ipairs(repls) do \
      compare('gsub', string.gsub, bounded.gsub, s, p, r) \
      compare('gsub max', string.gsub, bounded.gsub, s, p, r, 1) \
    end \
  end \
end \
compare('gsub bad repl', string.gsub, bounded.gsub, 'abc', 'a', true) \
compare('find number subject', string.find, bounded.find, 12345, '3') \
compare('gsub number repl', string.gsub, bounded.gsub, 'abc', 'b', 7) \
return bad, cases";

int main(void)
{
    uint64_t spent = 0, limit = UINT64_MAX / 2;
    pattern_budget budget = {.spent = &spent, .limit = &limit};
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_newtable(L);
    policy_pattern_register(L, &budget);
    lua_setglobal(L, "bounded");

    /* 1. Same answers as LuaJIT's own string library. */
    CHECK(luaL_loadstring(L, DIFFERENTIAL) == 0);
    if (lua_pcall(L, 0, 2, 0) != 0) {
        fprintf(stderr, "differential script failed: %s\n", lua_tostring(L, -1));
        CHECK(0);
    } else {
        CHECK_EQ_INT(lua_tointeger(L, -2), 0);
        CHECK(lua_tointeger(L, -1) > 20000);
        fprintf(stderr, "%lld cases compared\n", (long long)lua_tointeger(L, -1));
    }
    lua_settop(L, 0);
    CHECK(spent > 0); /* every call charged the budget */

    /* 2. A backtracking pattern (2^40 steps unbounded) stops at the budget. */
    spent = 0;
    limit = 1000000;
    CHECK(luaL_loadstring(L, "return bounded.find(('a'):rep(40), ('a?'):rep(40) .. ('a'):rep(40))") == 0);
    CHECK(lua_pcall(L, 0, 1, 0) != 0);
    CHECK(strstr(lua_tostring(L, -1), "exceeded the instruction budget") != NULL);
    CHECK(spent > limit && spent < limit + 1000);
    lua_settop(L, 0);

    /* 3. Once spent, the next call fails at once (the budget is per policy call). */
    CHECK(luaL_loadstring(L, "return bounded.match('abc', 'b')") == 0);
    CHECK(lua_pcall(L, 0, 1, 0) != 0);
    lua_settop(L, 0);

    /* 4. Deep matcher recursion is refused, not a C stack overflow. */
    spent = 0;
    limit = UINT64_MAX / 2;
    CHECK(luaL_loadstring(L, "return bounded.match(('a'):rep(1000), ('a?'):rep(1000))") == 0);
    CHECK(lua_pcall(L, 0, 1, 0) != 0);
    CHECK(strstr(lua_tostring(L, -1), "pattern too complex") != NULL);
    lua_settop(L, 0);

    /* 5. A gmatch iterator charges the budget on every step too. */
    spent = 0;
    limit = 100;
    CHECK(luaL_loadstring(L, "local n = 0 for _ in bounded.gmatch(('x'):rep(1000), 'x') do n = n + 1 end return n") ==
          0);
    CHECK(lua_pcall(L, 0, 1, 0) != 0);
    lua_settop(L, 0);

    lua_close(L);
    fprintf(stderr, "%d checks, %d failures\n", unit_checks, unit_failures);
    return unit_failures ? 1 : 0;
}
