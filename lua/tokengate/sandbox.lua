-- tokengate.sandbox: compiles policy files into an allow-listed environment and calls
-- their hooks under an instruction budget.
--
-- Owns: the policy environment (what a policy can reach), the instruction budget, the
-- read-only request view, and the checks on what a policy returns. The gateway's C host
-- embeds this file: it loads policies and calls ttl/anonymous through the same functions
-- busted calls through tokengate.testing, so one definition of the sandbox is tested and
-- shipped. For authorize, which runs on every request, the host does what
-- sandbox.authorize does with the parts host_interface() hands it (the request view's
-- constructor, the decision -> payload table, the error messages), in one protected
-- call instead of three: see host_interface below and core/policy.c.
--
-- The budget has two enforcers, one per host:
--   * under busted (and any state with the `debug` and `jit` libraries) this module sets a
--     count hook around each call and switches the JIT off for policy functions;
--   * the gateway (core/policy.c, core/policy_guard.c) opens neither library: it turns
--     the JIT engine off for the whole state, runs its own C count hook and replaces
--     pcall/xpcall with versions that re-raise a spent budget. There the functions below raise once the budget is
--     spent, and the C side's lua_pcall turns that into a policy error.
-- _M.budget_enforced says whether this module enforces it. Policies never see `debug`.
--
-- Otherwise, functions that run policy code never raise: they return nil, err (load,
-- ttl), false, err (anonymous) or "error", message (authorize).

local tg = require("tokengate")
local host = require("tokengate.host")

local type = type
local next = next
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local error = error
local select = select
local tostring = tostring
local load = load
local rawget = rawget
local rawset = rawset
local getmetatable = getmetatable
local setmetatable = setmetatable
local byte = string.byte
local sub = string.sub
local find = string.find
local match = string.match
local lower = string.lower
local format = string.format
local concat = table.concat
local huge = math.huge
local os_time = os.time
local os_date = os.date
local os_clock = os.clock
local collectgarbage = collectgarbage

local sethook = debug and debug.sethook
local gethook = debug and debug.gethook
local getinfo = debug and debug.getinfo
local jit_off = jit and jit.off

local _M = { _VERSION = "0.1.0" }

-- Count hooks are how Lua 5.1 stops a runaway script, and LuaJIT only calls them from the
-- interpreter: compiled traces run without hooks. So the budget holds only because
-- load() switches the JIT off for every function of a policy (jit.off(chunk, true)).
-- (Plain Lua 5.1 has no JIT, so there the hook alone is enough.)
_M.budget_enforced = sethook ~= nil and (jit_off ~= nil or jit == nil)

-- The C host's limits and flag defaults (core/policy_limits.h, generated into
-- tokengate.limits). The instruction budget is --policy-max-instructions' default, so a
-- policy that passes its specs fits the production budget.
local generated = require("tokengate.limits")
local DEFAULT_INSTRUCTION_LIMIT = generated.defaults.max_instructions
local MAX_ERROR_MESSAGE = 1024
local MAX_AUDIENCES = generated.limits.audiences
local MAX_AUDIENCE = generated.limits.audience
local SA_PATTERN = "^system:serviceaccount:([^:]+):([^:]+)$"
local POLICY_FIELDS = { authorize = "function", ttl = "function", anonymous = "function", after = "function",
  audiences = "list" }
-- The bearer token stays with the gateway: a policy has the TokenReview's user instead.
local HIDDEN_REQUEST_HEADERS = { authorization = true, ["proxy-authorization"] = true }

-- The gateway's --policy-max-memory-bytes default. Under busted the cap is approximate:
-- the Lua heap's growth since the call began, checked every MEMORY_CHECK_STEP
-- instructions (the gateway's allocator refuses the very allocation instead).
local DEFAULT_MEMORY_LIMIT = generated.defaults.max_memory_bytes
local MEMORY_CHECK_STEP = 1000
local config = { instruction_limit = DEFAULT_INSTRUCTION_LIMIT, memory_limit = DEFAULT_MEMORY_LIMIT, clock = nil }

-- Policies loaded here; authorize/ttl/anonymous refuse anything else.
local loaded_policies = setmetatable({}, { __mode = "k" })


-- Strings ------------------------------------------------------------------------------

-- ("").dump would reach string.dump through the one metatable all strings share, so the
-- methods table strings index loses dump. Process-wide, once; host code keeps
-- string.dump itself. The fallback keeps functions added to `string` later visible.
local function harden_string_metatable()
  local mt = getmetatable("")
  if mt == nil or mt.__index ~= string then return end
  local methods = {}
  for k, v in pairs(string) do
    if k ~= "dump" then methods[k] = v end
  end
  setmetatable(methods, { __index = function(_, k)
    if k ~= "dump" then return string[k] end
  end })
  mt.__index = methods
end

harden_string_metatable()


-- Read-only views ------------------------------------------------------------------------

-- A view is an empty proxy table with a metatable of its own: __index is the view's
-- source table, so a read that hits is a plain table lookup (no function call, which
-- matters for req: policies run interpreted, and read req on every request); only a
-- miss reaches the source's shared metatable, whose __index raises "has no field" with
-- the reading line (or answers nil, for headers). Writes hit __newindex and raise.
-- __metatable = false hides the metatable, and with it the source, from policies; the
-- proxy stays empty, so nothing a policy can do to the table itself (rawget,
-- table.foreach, table.maxn, ...) reaches the source either. Lua 5.1 has no __pairs, so
-- the sandbox's pairs/next/ipairs find the source through source_of, which reads the
-- metatable with raw_getmetatable (the debug library under busted, a C function of the
-- gateway's host: neither is in the policy environment) and the private key VIEW.
--
-- No weak table maps views to sources. LuaJIT has no ephemerons: a weak-keyed table
-- marks its values, so with one fresh source per request each source outlived its view
-- by a collector cycle and counted as live, the collector's threshold grew cycle after
-- cycle, and a policy allocating little else (one returning a prebuilt decision) ran
-- into the memory cap after some 600,000 requests. A metatable per view costs about what
-- that table's entry did, and dies with its view.
local VIEW = {}   -- metatable[VIEW] = the view's source
local PACKED = {} -- source[PACKED] = a request's headers, still packed (see below)

local raw_getmetatable = (debug and debug.getmetatable) or host.raw_getmetatable
assert(raw_getmetatable, "tokengate.sandbox needs debug.getmetatable or tokengate.host.raw_getmetatable")

local function make_view(src, newindex)
  return setmetatable({}, { __index = src, __newindex = newindex, __metatable = false, [VIEW] = src })
end

-- A view that raises on a read of a field src does not have.
local function readonly(src, what)
  setmetatable(src, { __index = function(_, k)
    error(format("%s has no field '%s'", what, tostring(k)), 2)
  end })
  return make_view(src, function(_, k)
    error(format("%s is read-only (cannot set '%s')", what, tostring(k)), 2)
  end)
end

-- Header names are stored lower-case; a lookup with another case is lower-cased once.
local HEADERS_SOURCE_MT = {
  __index = function(map, k)
    if type(k) ~= "string" then return nil end
    local lk = lower(k)
    if lk ~= k then return rawget(map, lk) end
    return nil
  end,
}

local function headers_newindex(_, k)
  error(format("req.headers is read-only (cannot set '%s')", tostring(k)), 2)
end

local function headers_view(map)
  return make_view(setmetatable(map, HEADERS_SOURCE_MT), headers_newindex)
end

-- Requests are made for every call. Their sources share one metatable, which raises for
-- a field req does not have and makes the headers view the first time anything reads
-- req.headers (or iterates req): the gateway's C host leaves a request's headers packed
-- in source[PACKED], one string of lower-case "name\0value\0" pairs with the credentials
-- already left out, so a policy that never looks at headers costs no header table. The
-- packed string is a copy, so a req kept past its call still shows its own request's
-- headers. Sources that make_request builds (specs) have their headers view from the
-- start.
local unpack_headers -- the host's unpacker, looked up when first needed

-- Replaces the packed headers of a request source with their view; returns the view.
local function unpacked_headers(src)
  local packed = rawget(src, PACKED)
  unpack_headers = unpack_headers or host.unpack_headers
  local h = headers_view(unpack_headers(packed))
  rawset(src, PACKED, nil)
  rawset(src, "headers", h)
  return h
end

local REQUEST_SOURCE_MT = {
  __index = function(src, k)
    if k == "headers" and rawget(src, PACKED) ~= nil then return unpacked_headers(src) end
    error(format("req has no field '%s'", tostring(k)), 2)
  end,
}

local function request_newindex(_, k)
  error(format("req is read-only (cannot set '%s')", tostring(k)), 2)
end

-- The req view of a request whose headers are packed (the C host's requests).
local function packed_request_view(method, path, query, host_name, client_ip, packed)
  return make_view(setmetatable({ method = method, path = path, query = query, host = host_name,
    client_ip = client_ip, [PACKED] = packed }, REQUEST_SOURCE_MT), request_newindex)
end

-- The source behind a view (nil for any other value), with its headers unpacked.
local function source_of(t)
  local mt = raw_getmetatable(t)
  local src = type(mt) == "table" and rawget(mt, VIEW) or nil
  if src ~= nil and rawget(src, PACKED) ~= nil then unpacked_headers(src) end
  return src
end

function _M.is_readonly(t)
  return source_of(t) ~= nil
end

local function copy_table(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- What `require("tokengate")` gives a policy: only the public API, read-only, one view
-- shared by every policy in this state, so no policy can change what the next one sees.
local policy_tg = readonly({
  _VERSION = tg._VERSION,
  allow = tg.allow,
  deny = tg.deny,
  sar = tg.sar,
  log = tg.log,
  metrics = readonly(copy_table(tg.metrics), "tokengate.metrics"),
  limits = readonly(copy_table(tg.limits), "tokengate.limits"),
}, "tokengate")


-- Instruction budget ---------------------------------------------------------------------

-- remaining: instructions left; step: the hook's current count; memory_base: the heap
-- (KiB) when the call began.
local budget = { exhausted = false, message = nil, chunkname = nil, remaining = 0, step = 0, memory_base = 0 }
local run_protected -- forward: the hook must recognise its frame

local function budget_message(level, what)
  local info = getinfo(level, "Sl")
  what = what or format("instruction limit of %d exceeded", config.instruction_limit)
  if info and info.source == "=" .. budget.chunkname and info.currentline > 0 then
    return format("%s:%d: %s", budget.chunkname, info.currentline, what)
  end
  if info and info.currentline > 0 then
    return format("%s: %s (stopped in %s:%d)", budget.chunkname, what, info.short_src, info.currentline)
  end
  return format("%s: %s", budget.chunkname, what)
end

-- Fires once when the budget is spent, then on every instruction: a policy that wraps the
-- loop in pcall gets the error again on its next instruction, so it cannot swallow the
-- stop and carry on. Only run_protected's own frame runs on, to clear the hook.
local function on_budget()
  if budget.exhausted then
    if getinfo(2, "f").func == run_protected then return end
    error(budget.message, 0)
  end
  -- The hook fires every MEMORY_CHECK_STEP instructions (the last step shorter, so the
  -- instruction count stays exact) and checks the heap on the way.
  budget.remaining = budget.remaining - budget.step
  if budget.remaining > 0 then
    local grown = (collectgarbage("count") - budget.memory_base) * 1024
    if grown <= config.memory_limit then
      budget.step = budget.remaining < MEMORY_CHECK_STEP and budget.remaining or MEMORY_CHECK_STEP
      sethook(on_budget, "", budget.step)
      return
    end
    budget.message = budget_message(3, format("not enough memory (the heap grew by more than %d bytes)",
      config.memory_limit))
  else
    budget.message = budget_message(3)
  end
  budget.exhausted = true
  sethook(on_budget, "", 1)
  error(budget.message, 0)
end

local function error_text(e)
  local t = type(e)
  if t == "number" then e = tostring(e) end
  -- Never tostring() a table: its __tostring is policy code and would run unbudgeted.
  if type(e) ~= "string" then return format("(error object is a %s value)", t) end
  if #e > MAX_ERROR_MESSAGE then e = sub(e, 1, MAX_ERROR_MESSAGE) .. "...(truncated)" end
  return e
end

-- Calls fn(a, b, c) under the budget. Returns true, result or false, message.
-- Where this module sets no hook (the gateway: its C host counts instructions, and its
-- pcall re-raises a spent budget, see core/policy_guard.c), that is just a pcall.
local function run_unhooked(_, fn, a, b, c)
  local ok, res = pcall(fn, a, b, c)
  if not ok then return false, error_text(res) end
  return true, res
end

run_protected = function(chunkname, fn, a, b, c)
  budget.exhausted, budget.message, budget.chunkname = false, nil, chunkname
  local saved_hook, saved_mask, saved_count
  if sethook then
    saved_hook, saved_mask, saved_count = gethook()
    budget.remaining = config.instruction_limit
    budget.step = budget.remaining < MEMORY_CHECK_STEP and budget.remaining or MEMORY_CHECK_STEP
    budget.memory_base = collectgarbage("count")
    sethook(on_budget, "", budget.step)
  end
  local ok, res = pcall(fn, a, b, c)
  if sethook then
    if saved_hook then sethook(saved_hook, saved_mask, saved_count) else sethook() end
  end
  if budget.exhausted then return false, budget.message end
  if not ok then return false, error_text(res) end
  return true, res
end
if not sethook then run_protected = run_unhooked end

-- The policy environment ------------------------------------------------------------------

local function check_table_arg(fname, t)
  if type(t) ~= "table" then
    error(format("bad argument #1 to '%s' (table expected, got %s)", fname, type(t)), 3)
  end
end

local function sb_next(t, k)
  check_table_arg("next", t)
  return next(source_of(t) or t, k)
end

local function sb_pairs(t)
  check_table_arg("pairs", t)
  local src = source_of(t)
  if src == nil then return next, t, nil end
  -- A closure, not (next, src): the source table must never reach policy code.
  return function(_, k) return next(src, k) end, t, nil
end

local function sb_ipairs(t)
  check_table_arg("ipairs", t)
  local src = source_of(t)
  if src == nil then return ipairs(t) end
  return function(_, i)
    i = i + 1
    local v = rawget(src, i) -- raw: a strict view's source raises on a missing key
    if v ~= nil then return i, v end
  end, t, 0
end

local function sb_rawset(t, k, v)
  check_table_arg("rawset", t)
  if source_of(t) then error("attempt to modify a read-only table", 2) end
  return rawset(t, k, v)
end

-- Strings share one metatable with the host; handing it out would let a policy change
-- string methods for the gateway's own Lua code.
local function sb_getmetatable(v)
  if type(v) == "string" then return nil end
  return getmetatable(v)
end

local function sb_require(name)
  if name == "tokengate" then return policy_tg end
  error(format("module '%s' is not available to policies", tostring(name)), 2)
end

local function sb_print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  tg.log("info", concat(parts, "\t"))
end

local function sb_os()
  return {
    clock = os_clock,
    time = function(t)
      if t == nil and config.clock then return config.clock() end
      return os_time(t)
    end,
    date = function(fmt, t)
      if t == nil and config.clock then t = config.clock() end
      return os_date(fmt, t)
    end,
  }
end

local function without_dump(t)
  local c = copy_table(t)
  c.dump = nil
  return c
end

-- A load() that compiles source only and always into the policy's own environment.
local function make_load(env)
  return function(chunk, chunkname)
    if type(chunk) ~= "string" then
      return nil, "load: policies may only load a string of Lua source"
    end
    if byte(chunk, 1) == 27 then
      return nil, "load: precompiled bytecode is refused"
    end
    if chunkname ~= nil and type(chunkname) ~= "string" then
      return nil, "load: chunkname must be a string"
    end
    local fn, err = load(chunk, chunkname or "=(load)", "t", env)
    if fn and jit_off then jit_off(fn, true) end
    return fn, err
  end
end

-- Returns a fresh environment and the function that freezes it once the chunk has run.
local function new_env()
  local loading = true
  local env = {
    assert = assert, error = error, ipairs = sb_ipairs, next = sb_next, pairs = sb_pairs,
    pcall = pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
    unpack = unpack, xpcall = xpcall, rawequal = rawequal, rawget = rawget,
    rawset = sb_rawset, setmetatable = setmetatable, getmetatable = sb_getmetatable,
    _VERSION = _VERSION,
    string = without_dump(string), table = copy_table(table), math = copy_table(math),
    os = sb_os(), require = sb_require, print = sb_print,
  }
  env.load = make_load(env)
  setmetatable(env, {
    -- Like Redis: a typo in a global name is an error, not a silent nil.
    __index = function(_, k)
      error(format("undefined global '%s'", tostring(k)), 2)
    end,
    -- Top-level code may define globals while the file loads; hooks may not add more,
    -- so per-request state cannot creep in through a misspelt local.
    __newindex = function(t, k, v)
      if not loading then
        error(format("assignment to undefined global '%s' after the policy has loaded", tostring(k)), 2)
      end
      rawset(t, k, v)
    end,
    __metatable = false,
  })
  return env, function() loading = false end
end


-- Loading -------------------------------------------------------------------------------

local function where(chunkname, fn)
  if getinfo then
    local info = getinfo(fn, "S")
    if info and info.linedefined and info.linedefined > 0 and info.source == "=" .. chunkname then
      return format("%s:%d", chunkname, info.linedefined)
    end
  end
  return chunkname
end

-- Lua drops the frame of a tail call, so an error raised in `return tg.allow{...}` (or an
-- error(msg, 0)) arrives without "name:line:". Name the hook and its first line instead,
-- keeping the "name:line:" shape log readers and editors understand.
local function located(message, chunkname, fn, hookname)
  if find(message, "^[^\n]-:%d+: ") then return message end
  if hookname == nil then return chunkname .. ": " .. message end
  return format("%s: in %s: %s", where(chunkname, fn), hookname, message)
end

-- run_protected for a hook: the message always carries the policy's name.
local function call_hook(policy, hookname, a, b, c)
  local fn = policy[hookname]
  local ok, res = run_protected(policy.chunkname, fn, a, b, c)
  if not ok then return false, located(res, policy.chunkname, fn, hookname) end
  return true, res
end

local function check_audiences(list, chunkname)
  if type(list) ~= "table" then
    return nil, format("%s: audiences must be a list of strings (got %s)", chunkname, type(list))
  end
  local n, count = #list, 0
  for k in next, list do
    count = count + 1
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      return nil, format("%s: audiences must be a list of strings", chunkname)
    end
  end
  if count ~= n or n == 0 or n > MAX_AUDIENCES then
    return nil, format("%s: audiences must be a list of 1 to %d strings", chunkname, MAX_AUDIENCES)
  end
  local copy = {}
  for i = 1, n do
    local a = list[i]
    if type(a) ~= "string" or a == "" or #a > MAX_AUDIENCE or find(a, "[%z\1-\31\127]") then
      return nil, format("%s: audiences[%d] must be a non-empty string of at most %d printable bytes",
        chunkname, i, MAX_AUDIENCE)
    end
    copy[i] = a
  end
  return copy
end

-- Reads the returned table raw (next, never metamethods: this runs outside the budget).
local function check_policy(t, chunkname)
  if type(t) ~= "table" then
    return nil, format("%s: a policy must return a table (got %s)", chunkname, type(t))
  end
  local policy = { chunkname = chunkname }
  for k, v in next, t do
    local want = type(k) == "string" and POLICY_FIELDS[k]
    if not want then
      return nil, format("%s: unknown policy field '%s' (known: authorize, ttl, anonymous, after, audiences)",
        chunkname, tostring(k))
    end
    if want == "function" and type(v) ~= "function" then
      return nil, format("%s: policy field '%s' must be a function (got %s)", chunkname, k, type(v))
    end
    if want == "list" then
      local list, err = check_audiences(v, chunkname)
      if not list then return nil, err end
      v = list
    end
    policy[k] = v
  end
  if policy.authorize == nil then
    return nil, format("%s: a policy must define authorize(req, user)", chunkname)
  end
  return policy
end

-- syntax: policy, err = sandbox.load(source, chunkname)
-- Compiles source (text only) in a fresh environment, runs it under the budget and checks
-- what it returns. policy.audiences is the checked list (or nil).
function _M.load(source, chunkname)
  if chunkname == nil then chunkname = "policy" end
  if type(chunkname) ~= "string" then return nil, "policy chunkname must be a string" end
  if type(source) ~= "string" then
    return nil, format("%s: policy source must be a string (got %s)", chunkname, type(source))
  end
  if byte(source, 1) == 27 then
    return nil, chunkname .. ": precompiled bytecode is refused; load the Lua source"
  end
  local env, freeze = new_env()
  local chunk, err = load(source, "=" .. chunkname, "t", env)
  if not chunk then return nil, err end
  if jit_off then jit_off(chunk, true) end
  local ok, res = run_protected(chunkname, chunk)
  freeze()
  if not ok then return nil, located(res, chunkname) end
  local policy, perr = check_policy(res, chunkname)
  if not policy then return nil, perr end
  loaded_policies[policy] = true
  return policy
end


-- Calling hooks -------------------------------------------------------------------------

local function describe(v)
  if type(v) == "table" then return "a table not built by tg.allow, tg.deny or tg.sar" end
  return type(v)
end

local unwrap_decision = tg.unwrap_decision

-- The message for an authorize call that raised (raised = true, value = the error
-- object) or returned value, which is not a decision.
local function authorize_error(policy, value, raised)
  local fn = policy.authorize
  if raised then return located(error_text(value), policy.chunkname, fn, "authorize") end
  return format("%s: authorize must return tg.allow(), tg.deny() or tg.sar() (got %s)",
    where(policy.chunkname, fn), describe(value))
end

-- syntax: kind, payload = sandbox.authorize(policy, req, user, packed)
-- kind: "allow" (payload: {{name, value}, ...}), "deny" (reason), "sar" (attributes with
-- kind = "resource" | "nonresource"; with packed = true the packed string that
-- tokengate.unwrap_decision describes), "error" (message). Never raises.
local function authorize(policy, req, user, packed)
  if not loaded_policies[policy] then return "error", "not a policy loaded by tokengate.sandbox" end
  local fn = policy.authorize
  local ok, res
  if sethook then
    ok, res = run_protected(policy.chunkname, fn, req, user)
    if not ok then return "error", located(res, policy.chunkname, fn, "authorize") end
  else
    ok, res = pcall(fn, req, user) -- what run_protected does without a hook, inlined
    if not ok then return "error", authorize_error(policy, res, true) end
  end
  local kind, payload = unwrap_decision(res, packed)
  if kind == nil then return "error", authorize_error(policy, res, false) end
  return kind, payload
end
_M.authorize = authorize

-- syntax: seconds, err = sandbox.ttl(policy, user)
-- nil without err when the policy has no ttl hook or the hook returns nil: the gateway
-- then uses --cache-ttl (so a policy says "the default" without copying the flag's value).
-- Any other value that is not a finite number >= 0 is an error: the gateway does not
-- cache that verdict, rather than guess.
function _M.ttl(policy, user)
  if not loaded_policies[policy] then return nil, "not a policy loaded by tokengate.sandbox" end
  if policy.ttl == nil then return nil end
  local ok, res = call_hook(policy, "ttl", user)
  if not ok then return nil, res end
  if res == nil then return nil end
  if type(res) ~= "number" or res ~= res or res == huge or res < 0 then
    return nil, format("%s: ttl must return a finite number of seconds >= 0 (got %s)",
      where(policy.chunkname, policy.ttl), type(res) == "number" and tostring(res) or type(res))
  end
  return res
end

-- syntax: ok, err = sandbox.anonymous(policy, req)
-- true only when the hook returns true; an error or any other value never lets a caller
-- in without a token.
function _M.anonymous(policy, req)
  if not loaded_policies[policy] then return false, "not a policy loaded by tokengate.sandbox" end
  if policy.anonymous == nil then return false end
  local ok, res = call_hook(policy, "anonymous", req)
  if not ok then return false, res end
  if res == true then return true end
  if res == false or res == nil then return false end
  return false, format("%s: anonymous must return a boolean (got %s)",
    where(policy.chunkname, policy.anonymous), type(res))
end

-- The outcome after() sees: what the gateway finally answered, read-only. Its fields
-- are fixed (OUTCOME_FIELDS); the optional ones read as nil when absent and a misspelt
-- field raises, as req does.
local OUTCOME_FIELDS = { status = true, allowed = true, decision = true, source = true, reason = true,
  token_cached = true, sar_cached = true }
local OUTCOME_DECISIONS = { allow = true, deny = true, error = true, unavailable = true }
local OUTCOME_SOURCES = { policy = true, sar = true, anonymous = true }
local OUTCOME_SOURCE_MT = {
  __index = function(_, k)
    if OUTCOME_FIELDS[k] then return nil end
    error(format("outcome has no field '%s'", tostring(k)), 2)
  end,
}

local function outcome_newindex(_, k)
  error(format("outcome is read-only (cannot set '%s')", tostring(k)), 2)
end

local function describe_outcome(view)
  local src = source_of(view)
  return format("outcome{ status = %d, decision = %q, source = %q, reason = %s, token_cached = %s, sar_cached = %s }",
    src.status, src.decision, src.source, src.reason and format("%q", src.reason) or "nil",
    tostring(src.token_cached), tostring(src.sar_cached))
end

-- The view the C host builds; its arguments are the gateway's own, already valid.
local function outcome_view(status, decision, source, reason, token_cached, sar_cached)
  local src = setmetatable({ status = status, allowed = decision == "allow", decision = decision, source = source,
    reason = reason, token_cached = token_cached, sar_cached = sar_cached }, OUTCOME_SOURCE_MT)
  return setmetatable({}, { __index = src, __newindex = outcome_newindex, __metatable = false,
    __tostring = describe_outcome, [VIEW] = src })
end

-- syntax: outcome = sandbox.make_outcome{ status =, decision =, source =, reason =, token_cached =, sar_cached = }
-- The read-only outcome after() receives, checked (for the busted kit). Returns nil, err
-- for a field the gateway would never send.
function _M.make_outcome(t)
  if type(t) ~= "table" then return nil, "an outcome must be a table" end
  for k in next, t do
    if not OUTCOME_FIELDS[k] then return nil, format("an outcome has no field '%s'", tostring(k)) end
  end
  local status = t.status
  if type(status) ~= "number" or status % 1 ~= 0 or status < 100 or status > 599 then
    return nil, "outcome.status must be an HTTP status code"
  end
  if not OUTCOME_DECISIONS[t.decision] then
    return nil, "outcome.decision must be \"allow\", \"deny\", \"error\" or \"unavailable\""
  end
  if (t.decision == "allow") ~= (status < 300) then
    return nil, format("outcome.decision %q does not go with status %d", t.decision, status)
  end
  if not OUTCOME_SOURCES[t.source] then return nil, "outcome.source must be \"policy\", \"sar\" or \"anonymous\"" end
  if t.reason ~= nil and type(t.reason) ~= "string" then return nil, "outcome.reason must be a string or nil" end
  for _, k in ipairs({ "token_cached", "sar_cached" }) do
    if t[k] ~= nil and type(t[k]) ~= "boolean" then return nil, format("outcome.%s must be a boolean or nil", k) end
  end
  if t.allowed ~= nil and t.allowed ~= (t.decision == "allow") then
    return nil, "outcome.allowed must agree with outcome.decision"
  end
  return outcome_view(status, t.decision, t.source, t.reason, t.token_cached, t.sar_cached)
end

-- syntax: ok, err = sandbox.after(policy, req, user, outcome)
-- Runs the policy's after(req, user, outcome) under the budget once the answer is
-- decided: true when it returned (whatever it returned), false, err when it raised. It
-- has no way to change the answer; the gateway counts its errors as policy errors.
local function after(policy, req, user, outcome)
  if not loaded_policies[policy] then return false, "not a policy loaded by tokengate.sandbox" end
  if policy.after == nil then return true end
  local ok, res = call_hook(policy, "after", req, user, outcome)
  if not ok then return false, res end
  return true
end
_M.after = after

-- What the C host calls for after(), made once per Lua state (host_interface), in a
-- pair:
--   * authorize_request_keep: authorize_request, which also keeps the req view it built
--     (the host uses it instead of authorize_request when the policy has an after hook);
--   * after_request(after, reuse, <request_view's six>, <user's six>, <outcome's six>):
--     after(req, user, outcome), as a tail call, where req is the kept view when reuse
--     is true (the host says so only right after a successful authorize of the same
--     request; it then passes nils for the request) and otherwise built inline, user is
--     built inline, and outcome is the state's one outcome view, refilled.
-- One call per request, a req view built once for both hooks, and no outcome tables to
-- build and collect: after runs on every request, and building its three views fresh
-- cost more than the default policy's authorize. So the outcome view describes the
-- current call's request only while after runs.
local function new_after_pair()
  local kept_req
  local osrc = setmetatable({}, OUTCOME_SOURCE_MT)
  local outcome = setmetatable({}, { __index = osrc, __newindex = outcome_newindex, __metatable = false,
    __tostring = describe_outcome, [VIEW] = osrc })

  local function authorize_request_keep(authorize_fn, method, path, query, host_name, client_ip, packed,
                                        username, uid, groups, extra, namespace, serviceaccount)
    kept_req = nil
    local src = setmetatable({ method = method, path = path, query = query, host = host_name,
      client_ip = client_ip, [PACKED] = packed }, REQUEST_SOURCE_MT)
    local user
    if username ~= nil then
      user = { username = username, uid = uid, groups = groups, extra = extra, namespace = namespace,
               serviceaccount = serviceaccount }
    end
    kept_req = setmetatable({}, { __index = src, __newindex = request_newindex, __metatable = false, [VIEW] = src })
    return authorize_fn(kept_req, user)
  end

  local function after_request(after_fn, reuse, method, path, query, host_name, client_ip, packed,
                               username, uid, groups, extra, namespace, serviceaccount,
                               status, decision, source, reason, token_cached, sar_cached)
    local req = kept_req
    kept_req = nil
    if not reuse or req == nil then
      local src = setmetatable({ method = method, path = path, query = query, host = host_name,
        client_ip = client_ip, [PACKED] = packed }, REQUEST_SOURCE_MT)
      req = setmetatable({}, { __index = src, __newindex = request_newindex, __metatable = false, [VIEW] = src })
    end
    local user
    if username ~= nil then
      user = { username = username, uid = uid, groups = groups, extra = extra, namespace = namespace,
               serviceaccount = serviceaccount }
    end
    osrc.status, osrc.allowed, osrc.decision, osrc.source = status, decision == "allow", decision, source
    osrc.reason, osrc.token_cached, osrc.sar_cached = reason, token_cached, sar_cached
    return after_fn(req, user, outcome)
  end

  return after_request, authorize_request_keep
end


-- What hooks see ------------------------------------------------------------------------

local function string_list(list)
  local out = {}
  if type(list) == "table" then
    for i = 1, #list do
      if type(list[i]) == "string" then out[#out + 1] = list[i] end
    end
  end
  return out
end

-- syntax: user = sandbox.make_user(username, uid, groups, extra)
-- A fresh plain table per call: what one call does to it is never seen by the next.
function _M.make_user(username, uid, groups, extra)
  local user = {
    username = type(username) == "string" and username or "",
    uid = type(uid) == "string" and uid or "",
    groups = string_list(groups),
    extra = {},
  }
  if type(extra) == "table" then
    for k, v in pairs(extra) do
      if type(k) == "string" then user.extra[k] = string_list(v) end
    end
  end
  local ns, name = match(user.username, SA_PATTERN)
  if ns then user.namespace, user.serviceaccount = ns, name end
  return user
end

local function header_value(v)
  if type(v) == "string" then return v end
  if type(v) == "table" then return concat(string_list(v), ", ") end
  return nil
end

local function request_headers(map)
  local headers = {}
  if type(map) ~= "table" then map = {} end
  for name, value in pairs(map) do
    local v = type(name) == "string" and header_value(value)
    if v then
      local lname = lower(name)
      if not HIDDEN_REQUEST_HEADERS[lname] then
        -- Repeated fields combine as RFC 9110 section 5.3 allows.
        headers[lname] = headers[lname] and headers[lname] .. ", " .. v or v
      end
    end
  end
  -- Case-insensitive lookups: req.headers["Content-Type"] finds "content-type".
  return headers_view(headers)
end

local function opt_string(v)
  return type(v) == "string" and v or ""
end

-- What print(req) and tostring(req) show for a request made here (specs): the fields and
-- the headers, sorted, instead of the empty proxy's "{}" or an address. (The gateway's
-- per-request views do not carry this: it would cost every request a metatable field.)
local function describe_request(view)
  local src = source_of(view)
  local names, parts = {}, {}
  for name in next, source_of(src.headers) do names[#names + 1] = name end
  table.sort(names)
  for i, name in ipairs(names) do parts[i] = format("[%q] = %q", name, rawget(source_of(src.headers), name)) end
  return format("req{ method = %q, path = %q, query = %q, host = %q, client_ip = %q, headers = { %s } }",
    src.method, src.path, src.query, src.host, src.client_ip, concat(parts, ", "))
end

-- syntax: req = sandbox.make_request(method, path, query, host, client_ip, headers_map)
-- A read-only view; headers_map values may be strings or lists of strings.
function _M.make_request(method, path, query, host_name, client_ip, headers_map)
  local src = setmetatable({
    method = opt_string(method), path = opt_string(path), query = opt_string(query),
    host = opt_string(host_name), client_ip = opt_string(client_ip),
    headers = request_headers(headers_map),
  }, REQUEST_SOURCE_MT)
  return setmetatable({}, { __index = src, __newindex = request_newindex, __metatable = false, [VIEW] = src,
    __tostring = describe_request })
end

-- What the C host calls for authorize when the policy's authorize declares a req
-- parameter: builds the req view (as packed_request_view does) and, when username is
-- given, the user table (as host_user below does), and calls authorize(req, user) as a
-- tail call, so no frame of this function stands between the policy and the host (an
-- error(msg, 2) in authorize reports the same place as when the host calls it
-- directly). Both are built here, inline, by table constructors: cheaper than C API
-- calls or a call per table, and this runs on every request.
local function authorize_request(authorize_fn, method, path, query, host_name, client_ip, packed,
                                 username, uid, groups, extra, namespace, serviceaccount)
  local src = setmetatable({ method = method, path = path, query = query, host = host_name,
    client_ip = client_ip, [PACKED] = packed }, REQUEST_SOURCE_MT)
  local user
  if username ~= nil then
    user = { username = username, uid = uid, groups = groups, extra = extra, namespace = namespace,
             serviceaccount = serviceaccount }
  end
  return authorize_fn(setmetatable({}, { __index = src, __newindex = request_newindex, __metatable = false,
    [VIEW] = src }), user)
end

-- The user table of a hook, as make_user builds it, from parts the C host has read from
-- the TokenReview's identity: groups is a fresh list and extra a fresh table of fresh
-- lists; namespace and serviceaccount are nil unless username is a ServiceAccount's
-- (system:serviceaccount:NS:NAME, parsed as SA_PATTERN does).
local function host_user(username, uid, groups, extra, namespace, serviceaccount)
  return { username = username, uid = uid, groups = groups, extra = extra, namespace = namespace,
           serviceaccount = serviceaccount }
end

-- syntax: t = sandbox.host_interface()
-- For the gateway's C host, which calls a policy's authorize itself, in one protected
-- call per request:
--   t.request_view(method, path, query, host, client_ip, packed_headers): a req view
--     whose headers are packed (see REQUEST_SOURCE_MT; the host's unpack_headers turns
--     them into the map of lower-case names to values);
--   t.user(username, uid, groups, extra, namespace, serviceaccount): a user table;
--   t.authorize_request(authorize, <request_view's six>[, <user's six>]):
--     authorize(request_view(...), user(...)), as a tail call;
--   t.decision_payloads: decision -> validated payload (tokengate.unwrap_decision
--     describes them; sar payloads are packed);
--   t.authorize_error(policy, value, raised): the message sandbox.authorize reports for
--     a call that raised value (raised = true) or returned value, not a decision;
--   t.after_request, t.authorize_request_keep: for after(), see new_after_pair (what
--     sandbox.after does, minus its pcall).
-- policy is what sandbox.load returned.
function _M.host_interface()
  local after_request, authorize_request_keep = new_after_pair()
  return {
    request_view = packed_request_view,
    user = host_user,
    authorize_request = authorize_request,
    decision_payloads = tg.decision_payloads,
    authorize_error = authorize_error,
    after_request = after_request,
    authorize_request_keep = authorize_request_keep,
  }
end


-- Configuration -------------------------------------------------------------------------

-- syntax: ok, err = sandbox.configure{ instruction_limit = n, memory_limit = bytes, clock = fn | false }
-- clock: returns the epoch seconds policies see from os.time()/os.date(); false restores
-- the real clock. Settings apply to every policy in this Lua state.
function _M.configure(opts)
  if type(opts) ~= "table" then return nil, "configure expects a table" end
  local limit = opts.instruction_limit
  if limit ~= nil then
    if type(limit) ~= "number" or limit < 1 or limit > 2147483647 or limit % 1 ~= 0 then
      return nil, "instruction_limit must be an integer between 1 and 2147483647"
    end
    config.instruction_limit = limit
  end
  local memory = opts.memory_limit
  if memory ~= nil then
    if type(memory) ~= "number" or memory < 1024 * 1024 or memory % 1 ~= 0 or memory ~= memory or memory == huge then
      return nil, "memory_limit must be an integer number of bytes >= 1048576"
    end
    config.memory_limit = memory
  end
  if opts.clock ~= nil then
    if opts.clock ~= false and type(opts.clock) ~= "function" then
      return nil, "clock must be a function or false"
    end
    config.clock = opts.clock or nil
  end
  return true
end

function _M.instruction_limit()
  return config.instruction_limit
end

return _M
