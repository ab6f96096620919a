-- tokengate.testing: the busted kit for policy authors.
--
-- Owns: an in-memory stand-in for the gateway's host bindings (metrics and log recorded
-- in tables, re-declarations checked like the C host checks them) and helpers to load a
-- policy file in the very sandbox the gateway uses (tokengate.sandbox), build requests
-- and users, call the hooks and read back decisions, metrics and log lines.
--
--   local testing = require("tokengate.testing")
--   local p = testing.load_policy("policies/default.lua")
--   local d = p:authorize(testing.request{ method = "POST", path = "/hooks" },
--                         testing.serviceaccount("team-a", "sender"))
--   assert.same({ kind = "nonresource", path = "/hooks", verb = "create" }, d.attributes)
--
-- The instruction budget applies here too. LuaJIT calls count hooks only from the
-- interpreter, never inside compiled traces, so tokengate.sandbox switches the JIT off
-- for every function of a loaded policy (jit.off(chunk, true)); the rest of the busted
-- process keeps its JIT.
--
-- Require this module before anything requires "tokengate": it installs the host
-- bindings tokengate loads from package.loaded["tokengate.host"].

local type = type
local next = next
local pairs = pairs
local ipairs = ipairs
local assert = assert
local error = error
local tostring = tostring
local setmetatable = setmetatable
local format = string.format
local concat = table.concat
local sub = string.sub
local find = string.find

local _M = { _VERSION = "0.1.0" }

-- The gateway's limits and flag defaults (core/policy_limits.h, generated into tokengate.limits).
local generated = require("tokengate.limits")
local MAX_LABEL_VALUE = generated.limits.label_value
local DEFAULT_INSTRUCTION_LIMIT = generated.defaults.max_instructions -- --policy-max-instructions
local DEFAULT_MEMORY_LIMIT = generated.defaults.max_memory_bytes -- --policy-max-memory-bytes


-- The in-memory host ------------------------------------------------------------------

local function same_list(a, b)
  if (a == nil) ~= (b == nil) then return false end
  if a == nil then return true end
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i] ~= b[i] then return false end
  end
  return true
end

local function list_text(list)
  local parts = {}
  for i = 1, #(list or {}) do parts[i] = tostring(list[i]) end
  return "{" .. concat(parts, ", ") .. "}"
end

local function new_host()
  local host = { _testing = true, metrics = {}, log_entries = {} }

  -- The C host's raw_getmetatable (lua_getmetatable, which ignores __metatable), which
  -- tokengate.sandbox uses to find a read-only view's source when it runs without the
  -- debug library (as in the gateway). Sandbox code calls it; policies never see it.
  host.raw_getmetatable = debug and debug.getmetatable

  -- Same rule as the gateway: a name keeps its kind, labels and buckets for the life of
  -- the process (a reload that changes them fails); help text may change.
  function host.metric_declare(kind, name, help, labels, buckets)
    local m = host.metrics[name]
    if m == nil then
      local n = 0
      for _ in pairs(host.metrics) do n = n + 1 end
      local max = require("tokengate").limits.metrics
      if n >= max then return nil, format("at most %d policy metrics", max) end
      m = { kind = kind, name = name, help = help, labels = labels, buckets = buckets, series = {} }
      host.metrics[name] = m
      return m
    end
    if m.kind ~= kind then
      return nil, format("%s is already declared as a %s", name, m.kind)
    end
    if not same_list(m.labels, labels) then
      return nil, format("%s is already declared with labels %s", name, list_text(m.labels))
    end
    if not same_list(m.buckets, buckets) then
      return nil, format("%s is already declared with buckets %s", name, list_text(m.buckets))
    end
    m.help = help
    return m
  end

  local function observe(m, s, v)
    if s == nil then
      s = { count = 0, sum = 0, buckets = {} }
      for i = 1, #m.buckets do s.buckets[i] = 0 end
    end
    s.count, s.sum = s.count + 1, s.sum + v
    for i = 1, #m.buckets do
      if v <= m.buckets[i] then s.buckets[i] = s.buckets[i] + 1 end
    end
    return s
  end

  -- Mirrors the C host's checks, so a bug in tokengate's Lua side fails specs too.
  function host.metric_update(m, op, values, v)
    if type(m) ~= "table" or host.metrics[m.name] ~= m then error("testing host: unknown metric handle", 2) end
    if #values ~= #m.labels then error("testing host: wrong number of label values for " .. m.name, 2) end
    local key = concat(values, "\0")
    local s = m.series[key]
    if op == "inc" and (m.kind == "counter" or m.kind == "gauge") then
      m.series[key] = (s or 0) + v
    elseif op == "set" and m.kind == "gauge" then
      m.series[key] = v
    elseif op == "observe" and m.kind == "histogram" then
      m.series[key] = observe(m, s, v)
    else
      error(format("testing host: %s is not an operation of a %s", tostring(op), m.kind), 2)
    end
  end

  function host.log(level, msg, fields)
    local entry = { level = level, message = msg, fields = {} }
    for k, v in pairs(fields or {}) do entry.fields[k] = v end
    host.log_entries[#host.log_entries + 1] = entry
  end

  return host
end

local function install_host()
  local current = package.loaded["tokengate.host"]
  if type(current) == "table" and current._testing then return current end
  if package.loaded["tokengate"] ~= nil then
    error("require tokengate.testing before tokengate: tokengate is already bound to another host", 3)
  end
  local host = new_host()
  package.loaded["tokengate.host"] = host
  return host
end

local host = install_host()
local tg = require("tokengate")
local sandbox = require("tokengate.sandbox")

_M.tg = tg
_M.sandbox = sandbox


-- Requests and users ------------------------------------------------------------------

local function check_fields(t, allowed, fname)
  if t == nil then return {} end
  if type(t) ~= "table" then error(format("%s expects a table (got %s)", fname, type(t)), 3) end
  for k in next, t do
    if not allowed[k] then error(format("%s: unknown field '%s'", fname, tostring(k)), 3) end
  end
  return t
end

local REQUEST_KEYS = { method = true, path = true, query = true, host = true, client_ip = true, headers = true }
local USER_KEYS = { username = true, uid = true, groups = true, extra = true }

-- syntax: req = testing.request{ method=, path=, query=, host=, client_ip=, headers= }
-- Defaults: GET / on host "svc" from 10.0.0.1. A path with "?" is split into path and
-- query as the gateway splits the original URI.
function _M.request(t)
  t = check_fields(t, REQUEST_KEYS, "testing.request")
  local path, query = t.path or "/", t.query
  if query == nil then
    local q = find(path, "?", 1, true)
    if q then path, query = sub(path, 1, q - 1), sub(path, q + 1) end
  end
  return sandbox.make_request(t.method or "GET", path, query or "", t.host or "svc",
    t.client_ip or "10.0.0.1", t.headers or {})
end

-- syntax: user = testing.user{ username=, uid=, groups=, extra= }
function _M.user(t)
  t = check_fields(t, USER_KEYS, "testing.user")
  return sandbox.make_user(t.username or "test-user", t.uid or "test-uid",
    t.groups or { "system:authenticated" }, t.extra or {})
end

-- syntax: user = testing.serviceaccount(namespace, name, extra?)
-- The identity a TokenReview returns for a ServiceAccount token, with its three groups.
function _M.serviceaccount(namespace, name, extra)
  if type(namespace) ~= "string" or type(name) ~= "string" then
    error("testing.serviceaccount(namespace, name) expects two strings", 2)
  end
  return sandbox.make_user("system:serviceaccount:" .. namespace .. ":" .. name,
    "uid-" .. namespace .. "-" .. name,
    { "system:serviceaccounts", "system:serviceaccounts:" .. namespace, "system:authenticated" },
    extra or {})
end

local function as_request(req)
  if req == nil then return _M.request() end
  if sandbox.is_readonly(req) then return req end
  return _M.request(req)
end

-- Rebuilt for every call, like the gateway does, so a hook that edits its user cannot
-- leak into the next call of the same spec.
local function as_user(user)
  if type(user) ~= "table" then
    error("pass a user: testing.user{...} or testing.serviceaccount(namespace, name)", 3)
  end
  return sandbox.make_user(user.username, user.uid, user.groups, user.extra)
end


-- Policies ------------------------------------------------------------------------------

local Policy = {}
Policy.__index = Policy

local function copy_headers(list)
  local out = {}
  for i = 1, #list do out[i] = { list[i][1], list[i][2] } end
  return out
end

local function copy_map(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

-- syntax: decision = p:authorize(req, user)
-- { kind = "allow", headers = {{name, value}, ...} } | { kind = "deny", reason = }
-- | { kind = "sar", attributes = {...} } | { kind = "error", message = }
function Policy:authorize(req, user)
  local kind, payload = sandbox.authorize(self.policy, as_request(req), as_user(user))
  if kind == "allow" then return { kind = kind, headers = copy_headers(payload) } end
  if kind == "deny" then return { kind = kind, reason = payload } end
  if kind == "sar" then return { kind = kind, attributes = copy_map(payload) } end
  return { kind = kind, message = payload }
end

-- syntax: seconds, err = p:ttl(user)
function Policy:ttl(user)
  return sandbox.ttl(self.policy, as_user(user))
end

-- syntax: ok, err = p:anonymous(req)
function Policy:anonymous(req)
  return sandbox.anonymous(self.policy, as_request(req))
end

-- syntax: ok, err = p:after(req, user, outcome)
-- Runs the policy's after hook (true when it has none). outcome is a table with the
-- fields the gateway sends (status, decision, source, reason, token_cached, sar_cached;
-- testing.outcome builds one from a decision) and reaches the hook read-only. user may be
-- nil, as for an anonymous request.
function Policy:after(req, user, outcome)
  local view, err = sandbox.make_outcome(outcome)
  if not view then error("p:after: " .. err, 2) end
  return sandbox.after(self.policy, as_request(req), user ~= nil and as_user(user) or nil, view)
end

local OUTCOME_OPTS = { sar = true, sar_reason = true, sar_cached = true, token_cached = true }

-- syntax: outcome = testing.outcome(decision, opts?)
-- The outcome the gateway would hand after() for a decision p:authorize returned:
-- allow -> 200, deny -> 403 with its reason, error -> 500. A sar decision is answered by
-- the SubjectAccessReview, so opts.sar says how it turned out: true (allowed, 200), false
-- (denied, 403, reason opts.sar_reason or "") or "error" (the review failed, 503);
-- opts.sar_cached: its verdict came from the gateway's cache. opts.token_cached: the
-- TokenReview verdict came from the cache (default false).
function _M.outcome(decision, opts)
  opts = check_fields(opts, OUTCOME_OPTS, "testing.outcome")
  if type(decision) ~= "table" then error("testing.outcome expects a decision from p:authorize", 2) end
  local token_cached = opts.token_cached == true
  local kind = decision.kind
  if kind == "allow" then
    return { status = 200, decision = "allow", source = "policy", token_cached = token_cached }
  elseif kind == "deny" then
    return { status = 403, decision = "deny", source = "policy", reason = decision.reason, token_cached = token_cached }
  elseif kind == "error" then
    return { status = 500, decision = "error", source = "policy", reason = "policy error", token_cached = token_cached }
  elseif kind == "sar" then
    local sar_cached = opts.sar_cached == true
    if opts.sar == true then
      return { status = 200, decision = "allow", source = "sar", token_cached = token_cached, sar_cached = sar_cached }
    elseif opts.sar == false then
      return { status = 403, decision = "deny", source = "sar", reason = opts.sar_reason or "",
               token_cached = token_cached, sar_cached = sar_cached }
    elseif opts.sar == "error" then
      return { status = 503, decision = "unavailable", source = "sar", reason = "access review unavailable",
               token_cached = token_cached, sar_cached = false }
    end
    error("testing.outcome: a sar decision needs opts.sar = true (allowed), false (denied) or \"error\"", 2)
  end
  error("testing.outcome: not a decision: " .. tostring(kind), 2)
end

-- syntax: decision, outcome, ok, err = p:decide(req, user, opts?)
-- A request through the policy as the gateway takes it: authorize, the outcome of its
-- decision (testing.outcome with opts: say how a SubjectAccessReview turns out), then
-- after with that outcome. ok, err are after's.
function Policy:decide(req, user, opts)
  req = as_request(req)
  local decision = self:authorize(req, user)
  local outcome = _M.outcome(decision, opts)
  local ok, err = self:after(req, user, outcome)
  return decision, outcome, ok, err
end

local function wrap(policy, name)
  return setmetatable({ policy = policy, name = name, audiences = policy.audiences }, Policy)
end

-- syntax: p = testing.load_source(source, chunkname?)
-- Raises the sandbox's message unchanged ("chunkname:line: ...") on a broken policy.
function _M.load_source(source, chunkname)
  chunkname = chunkname or "inline.lua"
  local policy, err = sandbox.load(source, chunkname)
  if not policy then error(err, 0) end
  return wrap(policy, chunkname)
end

-- syntax: p = testing.load_policy(path)
-- path is relative to the directory busted runs in (the repository root).
function _M.load_policy(path)
  local f, err = io.open(path, "rb")
  if not f then error("cannot read policy: " .. tostring(err), 2) end
  local source = f:read("*a")
  f:close()
  local p = _M.load_source(source, path)
  return p
end


-- Recorded metrics and log --------------------------------------------------------------

local function series_key(m, labels)
  labels = labels or {}
  if type(labels) ~= "table" then error("testing.metric: labels must be a table", 3) end
  local index = {}
  for i = 1, #m.labels do index[m.labels[i]] = true end
  for k in next, labels do
    if not index[k] then error(format("testing.metric: %s has no label '%s'", m.name, tostring(k)), 3) end
  end
  local values = {}
  for i = 1, #m.labels do
    local v = labels[m.labels[i]]
    v = v == nil and "" or tostring(v)
    values[i] = sub(v, 1, MAX_LABEL_VALUE)
  end
  return concat(values, "\0")
end

-- syntax: value = testing.metric(name, labels?)
-- Counters and gauges: a number; histograms: { count =, sum = }; nil when that label set
-- was never updated. Raises for a name no policy declared (a typo in the spec).
function _M.metric(name, labels)
  local m = host.metrics[name]
  if m == nil then error(format("testing.metric: no metric named '%s' was declared", tostring(name)), 2) end
  local s = m.series[series_key(m, labels)]
  if m.kind == "histogram" and s ~= nil then return { count = s.count, sum = s.sum } end
  return s
end

-- syntax: entries = testing.logs()  -- { { level =, message =, fields = {} }, ... }
function _M.logs()
  local out = {}
  for i, e in ipairs(host.log_entries) do
    out[i] = { level = e.level, message = e.message, fields = copy_map(e.fields) }
  end
  return out
end

-- syntax: testing.reset()
-- Clears recorded metric values and log lines. Declarations stay, as they do across
-- reloads in the gateway, so re-declaring with other labels still fails after a reset.
function _M.reset()
  for _, m in pairs(host.metrics) do m.series = {} end
  host.log_entries = {}
end

-- syntax: testing.forget_metrics()
-- Forgets every metric declaration too, as a fresh gateway process would start: for specs
-- that load unrelated policies one after the other and count declarations.
function _M.forget_metrics()
  host.metrics = {}
  host.log_entries = {}
end

-- syntax: testing.set_clock(epoch_seconds | fn | nil)
-- What os.time()/os.date() return inside policies; nil restores the real clock.
function _M.set_clock(v)
  local clock = false
  if type(v) == "number" then
    clock = function() return v end
  elseif type(v) == "function" then
    clock = v
  elseif v ~= nil then
    error("testing.set_clock expects a number, a function or nil", 2)
  end
  assert(sandbox.configure{ clock = clock })
end

-- syntax: testing.set_instruction_limit(n | nil)
-- Mirror the gateway's --policy-max-instructions; nil restores the default (1 million).
function _M.set_instruction_limit(n)
  local ok, err = sandbox.configure{ instruction_limit = n or DEFAULT_INSTRUCTION_LIMIT }
  if not ok then error(err, 2) end
end

-- syntax: testing.set_memory_limit(bytes | nil)
-- Mirror the gateway's --policy-max-memory-bytes; nil restores the default (64 MiB). Under
-- busted the cap is the heap's growth during one call, checked every 1000 instructions:
-- gradual growth fails as in the gateway, but one huge allocation is not caught before it
-- happens (the gateway's allocator refuses it).
function _M.set_memory_limit(n)
  local ok, err = sandbox.configure{ memory_limit = n or DEFAULT_MEMORY_LIMIT }
  if not ok then error(err, 2) end
end

return _M
