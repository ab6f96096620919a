-- Microbenchmark of the Lua side of one policy call, in a state set up like the
-- gateway's: the JIT engine off, and the sandbox loaded without the debug and jit
-- libraries (so it installs no count hook; the gateway's C hook fires every 1000
-- instructions and costs next to nothing).
--
--   luajit bench/policy_hook.lua [ITERATIONS] [POLICY_FILE]     (from the repository root)
--
-- Defaults: 200000 iterations of policies/default.lua. Prints ns per call (median of 5
-- rounds) for:
--   authorize        the policy's authorize and the decision's payload, as the gateway
--                    calls and reads them, with req and user built once:
--                    the hook, the decision it builds (tg.sar for default.lua) and the
--                    sandbox's checks
--   views+authorize  the same with a fresh req view and user table per call, built the
--                    way core/policy.c builds them (sandbox.host_interface: req through
--                    authorize_request, user only if authorize declares it), i.e. what the
--                    gateway runs per request minus the C API calls and the decision copy
--   kit              make_request + make_user + authorize, as tokengate.testing does
-- and the memory each call leaves for the garbage collector (bytes per call).
-- Figures are for the machine it runs on: compare runs of this script, not machines.
-- For instruction counts, which do not depend on the machine's load:
--   ONLY=authorize valgrind --tool=callgrind luajit bench/policy_hook.lua 20000
-- (see ONLY below).

package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

jit.off()
local G = _G
local saved_debug, saved_jit = G.debug, G.jit
-- Without the debug library's hooks; getmetatable stands in for the C host's
-- raw_getmetatable (how the sandbox finds a read-only view's source).
G.debug, G.jit = { getmetatable = saved_debug.getmetatable }, nil
local testing = require("tokengate.testing")
G.debug, G.jit = saved_debug, saved_jit
local sandbox = testing.sandbox
assert(not sandbox.budget_enforced, "the sandbox should run as in the gateway (no debug library)")

local iterations = tonumber(arg[1]) or 200000
local policy_file = arg[2] or "policies/default.lua"
local ROUNDS = 5

local f = assert(io.open(policy_file, "rb"))
local source = f:read("*a")
f:close()
local policy = assert(sandbox.load(source, policy_file))

local USERNAME = "system:serviceaccount:bench:load-client"
local UID = "0b6f2a8e-3c1d-4e5f-9a7b-8c9d0e1f2a3b"
local GROUPS = { "system:serviceaccounts", "system:serviceaccounts:bench", "system:authenticated" }
local HEADERS = { ["Host"] = "127.0.0.1:8080", ["Authorization"] = "Bearer x" }

local host_interface = sandbox.host_interface and sandbox.host_interface()

-- The gateway's host unpacks packed headers in C; the kit's host has no such function, so
-- a Lua stand-in serves policies that read req.headers here.
local host = package.loaded["tokengate.host"]
host.unpack_headers = host.unpack_headers or function(packed)
  local map = {}
  for name, value in packed:gmatch("(%Z*)%z(%Z*)%z") do
    map[name] = map[name] and map[name] .. ", " .. value or value
  end
  return map
end

local PACKED_HEADERS = "host\000127.0.0.1:8080\000"

-- What core/policy.c's call_hook passes the sandbox to build req (older versions, without
-- host_interface().request_view, build it with make_request).
local function c_like_request()
  if not (host_interface and host_interface.request_view) then
    return sandbox.make_request("GET", "/bench", "", "127.0.0.1:8080", "127.0.0.1", HEADERS)
  end
  return host_interface.request_view("GET", "/bench", "", "127.0.0.1:8080", "127.0.0.1", PACKED_HEADERS)
end

-- The gateway builds user only when authorize declares a parameter for it (core/policy.c,
-- count_authorize_args); so does this case, when the sandbox is that version.
local function c_like_user()
  return { username = USERNAME, uid = UID, groups = { GROUPS[1], GROUPS[2], GROUPS[3] }, extra = {},
           namespace = "bench", serviceaccount = "load-client" }
end

-- What the gateway does (core/policy.c): call the policy's authorize in a protected call
-- and look its decision's payload up (a sar's is packed). Older versions: the gateway
-- called sandbox.authorize. The kit case calls sandbox.authorize.
local info = debug.getinfo(policy.authorize, "u")
local builds_user = not host_interface or info.isvararg or info.nparams >= 2
local function user_arg()
  if builds_user then return c_like_user() end
end

local authorize = sandbox.authorize
-- views+authorize: req built per call as call_hook has it built (authorize_request).
local authorize_fresh = function(policy, user)
  return sandbox.authorize(policy, c_like_request(), user)
end
if host_interface then
  local payloads, authorize_error = host_interface.decision_payloads, host_interface.authorize_error
  local function finish(policy, ok, d)
    if not ok then return "error", authorize_error(policy, d, true) end
    local payload = payloads[d]
    if payload == nil then return "error", authorize_error(policy, d, false) end
    return "ok", payload
  end
  authorize = function(policy, req, user)
    return finish(policy, pcall(policy.authorize, req, user))
  end
  local authorize_request = host_interface.authorize_request
  if authorize_request then
    -- As call_hook passes them: the request's strings, then the identity's parts (fresh
    -- groups and extra tables) when authorize declares user.
    authorize_fresh = function(policy)
      if builds_user then
        return finish(policy, pcall(authorize_request, policy.authorize, "GET", "/bench", "", "127.0.0.1:8080",
          "127.0.0.1", PACKED_HEADERS, USERNAME, UID, { GROUPS[1], GROUPS[2], GROUPS[3] }, {}, "bench",
          "load-client"))
      end
      return finish(policy, pcall(authorize_request, policy.authorize, "GET", "/bench", "", "127.0.0.1:8080",
        "127.0.0.1", PACKED_HEADERS))
    end
  else
    authorize_fresh = function(policy, user)
      return authorize(policy, c_like_request(), user)
    end
  end
end
local cases = {
  { "authorize", function(n)
      local req, user = c_like_request(), c_like_user()
      for _ = 1, n do
        local kind = authorize(policy, req, user)
        if kind == "error" then error(select(2, authorize(policy, req, user))) end
      end
    end },
  { "views+authorize", function(n)
      for _ = 1, n do
        local kind = authorize_fresh(policy, user_arg())
        if kind == "error" then error(select(2, authorize_fresh(policy, user_arg()))) end
      end
    end },
  { "kit", function(n)
      for _ = 1, n do
        local req = sandbox.make_request("GET", "/bench", "", "127.0.0.1:8080", "127.0.0.1", HEADERS)
        local user = sandbox.make_user(USERNAME, UID, GROUPS, {})
        local kind = sandbox.authorize(policy, req, user)
        if kind == "error" then error(select(2, sandbox.authorize(policy, req, user))) end
      end
    end },
}

local function median(t)
  table.sort(t)
  return t[math.ceil(#t / 2)]
end

-- ONLY=CASE runs that case once, ITERATIONS times and nothing else: for instruction
-- counts, run it under callgrind twice with different ITERATIONS and divide the difference.
local only = os.getenv("ONLY")
if only then
  for _, case in ipairs(cases) do
    if case[1] == only then case[2](iterations) return end
  end
  error("no case named " .. only)
end

print(string.format("policy_hook: %s, %d iterations x %d rounds, JIT off, no debug library",
  policy_file, iterations, ROUNDS))
print(string.format("%-16s %10s %12s", "case", "ns/call", "bytes/call"))
for _, case in ipairs(cases) do
  local name, run = case[1], case[2]
  run(1000) -- warm up
  local times = {}
  for r = 1, ROUNDS do
    collectgarbage()
    local t0 = os.clock()
    run(iterations) -- with the collector running, as in the gateway: its work is part of the cost
    times[r] = (os.clock() - t0) / iterations * 1e9
  end
  -- Garbage per call, measured apart with the collector stopped.
  local n = math.min(iterations, 10000)
  collectgarbage()
  collectgarbage("stop")
  local kb0 = collectgarbage("count")
  run(n)
  local bytes = (collectgarbage("count") - kb0) * 1024 / n
  collectgarbage("restart")
  collectgarbage()
  print(string.format("%-16s %10.0f %12.0f", name, median(times), bytes))
end
