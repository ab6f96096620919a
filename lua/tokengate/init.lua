-- tokengate: the API policy files use (decisions, metrics, log).
--
-- Owns: building and validating decisions (tg.allow / tg.deny / tg.sar), declaring and
-- updating policy metrics, and tg.log. Everything that touches the gateway goes through
-- the host bindings in "tokengate.host": a C module inside the gateway, a Lua
-- implementation installed by tokengate.testing under busted. Policies never see this
-- table itself: tokengate.sandbox hands them a read-only view of the public fields, so a
-- policy cannot patch the API that the next policy (after a reload) will use.
--
-- Every function validates its arguments and raises with error(msg, 2) so the message
-- points at the policy line that made the bad call; in the gateway that error becomes a
-- 500, never an allow.

local host = require("tokengate.host")

local type = type
local next = next
local ipairs = ipairs
local error = error
local tostring = tostring
local getmetatable = getmetatable
local setmetatable = setmetatable
local sort = table.sort
local concat = table.concat
local byte = string.byte
local find = string.find
local lower = string.lower
local sub = string.sub
local format = string.format
local gsub = string.gsub
local huge = math.huge

local _M = { _VERSION = "0.1.0" }

-- Limits: the C host's, declared once in core/policy_limits.h and generated into
-- tokengate.limits, so the gateway and the busted kit hold a policy to the same numbers.
-- Exported read-only through the policy view (tg.limits) so authors can read them.
local LIMITS = require("tokengate.limits").limits
local MAX_HEADERS = LIMITS.headers
local MAX_HEADER_NAME = LIMITS.header_name -- the C host re-checks allow headers with the same limits
local MAX_HEADER_VALUE = LIMITS.header_value
local MAX_REASON = LIMITS.reason
local MAX_SAR_VALUE = LIMITS.sar_value
local MAX_SAR_PATH = LIMITS.sar_path
local MAX_HELP = LIMITS.help
local MAX_LABELS = LIMITS.labels
local MAX_LABEL_VALUE = LIMITS.label_value
local MAX_BUCKETS = LIMITS.buckets
local MAX_METRIC_NAME = LIMITS.metric_name
local MAX_LOG_MESSAGE = LIMITS.log_message
local MAX_LOG_FIELDS = LIMITS.log_fields

local DEFAULT_DENY_REASON = "denied by policy"
local DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

local TOKEN_PATTERN = "^[!#$%%&'*+%-.^_`|~0-9A-Za-z]+$"
-- Any ASCII control character except horizontal tab (allowed inside header values).
local CTL_BUT_TAB = "[%z\1-\8\10-\31\127]"
local CTL = "[%z\1-\31\127]"
local METRIC_NAME_PATTERN = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
local LABEL_NAME_PATTERN = "^[a-zA-Z_][a-zA-Z0-9_]*$"
local LOG_FIELD_PATTERN = "^[a-zA-Z_][a-zA-Z0-9_.%-]*$"

-- Headers a policy may not add: hop-by-hop and framing headers would corrupt the
-- forwarded request; authorization would replace the caller's credential; host would
-- re-route it. x-remote-* is refused separately: identity comes only from TokenReview.
local FORBIDDEN_HEADERS = {
  ["connection"] = true, ["keep-alive"] = true, ["proxy-authenticate"] = true,
  ["proxy-authorization"] = true, ["te"] = true, ["trailer"] = true,
  ["transfer-encoding"] = true, ["upgrade"] = true, ["host"] = true,
  ["content-length"] = true, ["authorization"] = true,
}

local RESOURCE_ATTRIBUTES = { "verb", "namespace", "group", "version", "resource", "subresource", "name" }
local NONRESOURCE_ATTRIBUTES = { "path", "verb" }
local RESOURCE_KEYS, NONRESOURCE_KEYS = {}, {}
for _, k in ipairs(RESOURCE_ATTRIBUTES) do RESOURCE_KEYS[k] = true end
for _, k in ipairs(NONRESOURCE_ATTRIBUTES) do NONRESOURCE_KEYS[k] = true end

local LOG_LEVELS = { debug = true, info = true, warn = true, error = true }

-- has_control(s, allow_tab): does s contain an ASCII control character (CTL, or
-- CTL_BUT_TAB when allow_tab)? Every decision checks its strings, and a Lua pattern
-- costs the interpreter about 150 instructions per byte, so the gateway's host offers a
-- C scan with the same meaning; hosts without one (the busted kit) use the patterns.
local has_control = host.has_control or function(s, allow_tab)
  return find(s, allow_tab and CTL_BUT_TAB or CTL) ~= nil
end

-- Decisions handed out by allow/deny/sar, mapped to the validated payload the gateway
-- uses: the header list of an allow, the reason string of a deny, and for a sar one
-- packed string (see SAR_RESOURCE below). Keys are weak so per-request decisions are collected; a
-- policy may keep one decision in an upvalue and return it on every call. The gateway
-- reads the payload, not the public table, so a policy that edits a decision after
-- building it changes nothing; no payload is ever handed to policy code.
local issued = setmetatable({}, { __mode = "k" })
-- For tokengate.sandbox and the gateway's C host only (never in the policy view): the
-- host reads a decision's payload here directly, see sandbox.host_interface.
_M.decision_payloads = issued


-- Shared argument checks -------------------------------------------------------------

-- Echoes caller input in messages without letting control characters into the log.
local function printable(s)
  return '"' .. gsub(sub(s, 1, 64), CTL, "?") .. '"'
end

local function keyname(k)
  if type(k) == "string" then return printable(k) end
  return tostring(k)
end

local function fail(level, fmt, ...)
  error(format(fmt, ...), level + 1)
end

-- Option tables must be plain tables: we read them with next(), and a metatable would
-- either be ignored silently or run policy code where the caller does not expect it.
local function check_plain_table(v, what, level)
  if type(v) ~= "table" then
    fail(level + 1, "%s must be a table (got %s)", what, type(v))
  end
  if getmetatable(v) ~= nil then
    fail(level + 1, "%s must be a plain table without a metatable", what)
  end
end

local function check_string(v, what, max, ctl_pattern, level)
  if type(v) ~= "string" then
    fail(level + 1, "%s must be a string (got %s)", what, type(v))
  end
  if #v > max then
    fail(level + 1, "%s is %d bytes long; the limit is %d", what, #v, max)
  end
  if has_control(v, ctl_pattern == CTL_BUT_TAB) then
    fail(level + 1, "%s contains a control character", what)
  end
end

-- Returns a copy of an array of strings, checking it is a proper list with no holes.
local function string_list(list, what, max_items, level)
  check_plain_table(list, what, level + 1)
  local n = #list
  local count = 0
  for k in next, list do
    count = count + 1
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      fail(level + 1, "%s must be a list (found key %s)", what, keyname(k))
    end
  end
  if count ~= n then fail(level + 1, "%s must be a list without holes", what) end
  if n > max_items then fail(level + 1, "%s has %d entries; the limit is %d", what, n, max_items) end
  local copy = {}
  for i = 1, n do
    if type(list[i]) ~= "string" then
      fail(level + 1, "%s[%d] must be a string (got %s)", what, i, type(list[i]))
    end
    copy[i] = list[i]
  end
  return copy
end

local function is_finite(n)
  return n == n and n ~= huge and n ~= -huge
end


-- Decisions ---------------------------------------------------------------------------

local function issue(public, payload)
  issued[public] = payload
  return public
end

-- Validates one allow header; returns its lower-cased name for the duplicate check.
local function check_header(name, value)
  if type(name) ~= "string" then
    fail(4, "allow header names must be strings (got %s)", type(name))
  end
  if #name > MAX_HEADER_NAME or not find(name, TOKEN_PATTERN) then
    fail(4, "allow header name %s is not a valid HTTP header name", printable(name))
  end
  local lname = lower(name)
  if FORBIDDEN_HEADERS[lname] then
    fail(4, "allow may not set header %q (hop-by-hop, framing, routing or credential header)", name)
  end
  if sub(lname, 1, 9) == "x-remote-" then
    fail(4, "allow may not set header %q: X-Remote-* identity headers come only from the TokenReview", name)
  end
  -- The message (and its concatenation) only when the value is bad.
  if type(value) ~= "string" or #value > MAX_HEADER_VALUE or has_control(value, true) then
    check_string(value, "allow header " .. name, MAX_HEADER_VALUE, CTL_BUT_TAB, 4)
  end
  return lname
end

local function by_lower_name(a, b)
  return lower(a[1]) < lower(b[1])
end

local function allow_headers(headers)
  if headers == nil then return {} end
  check_plain_table(headers, "allow headers", 3)
  local list, seen = {}, {}
  for name, value in next, headers do
    if #list == MAX_HEADERS then
      fail(3, "allow sets more than %d headers", MAX_HEADERS)
    end
    local lname = check_header(name, value)
    if seen[lname] then fail(3, "allow sets header %q twice (names are case-insensitive)", name) end
    seen[lname] = true
    list[#list + 1] = { name, value }
  end
  -- pairs() order is arbitrary; a stable order keeps answers and tests reproducible.
  sort(list, by_lower_name)
  return list
end

local function copy_headers(list)
  local copy = {}
  for i = 1, #list do copy[i] = { list[i][1], list[i][2] } end
  return copy
end

-- syntax: decision = tg.allow(opts?)  -- opts = { headers = { ["X-Name"] = "value" } }
function _M.allow(opts)
  local headers = nil
  if opts ~= nil then
    check_plain_table(opts, "allow options", 2)
    for k in next, opts do
      if k ~= "headers" then fail(2, "unknown allow option %s (only headers)", keyname(k)) end
    end
    headers = opts.headers
  end
  local list = allow_headers(headers)
  return issue({ decision = "allow", headers = copy_headers(list) }, list)
end

-- syntax: decision = tg.deny(reason?)
function _M.deny(reason)
  if reason == nil or reason == "" then
    reason = DEFAULT_DENY_REASON
  else
    check_string(reason, "deny reason", MAX_REASON, CTL, 2)
  end
  return issue({ decision = "deny", reason = reason }, reason)
end

local function sar_value(attrs, key, required)
  local v = attrs[key]
  if v == nil then
    if required then fail(3, "SubjectAccessReview attribute '%s' is required", key) end
    return ""
  end
  local max = key == "path" and MAX_SAR_PATH or MAX_SAR_VALUE
  -- The message (and its concatenation) only when the value is bad.
  if type(v) ~= "string" or #v > max or has_control(v, false) then
    check_string(v, "SubjectAccessReview attribute '" .. key .. "'", max, CTL, 3)
  end
  if required and v == "" then fail(3, "SubjectAccessReview attribute '%s' must not be empty", key) end
  return v
end

local function sar_keys(attrs)
  local nonresource = attrs.path ~= nil
  for k in next, attrs do
    if type(k) ~= "string" or not (RESOURCE_KEYS[k] or NONRESOURCE_KEYS[k]) then
      fail(3, "unknown SubjectAccessReview attribute %s", keyname(k))
    end
    if nonresource and not NONRESOURCE_KEYS[k] then
      fail(3, "SubjectAccessReview attribute '%s' cannot be mixed with path "
        .. "(path makes it a non-resource review: only path and verb)", k)
    end
  end
  return nonresource
end

-- syntax: decision = tg.sar{ verb=, resource=, namespace=?, group=?, version=?, subresource=?, name=? }
--         decision = tg.sar{ path = "/...", verb = }
-- Absent optional attributes become "" so the host always reads seven (or two) strings.
-- A sar payload is a string, immutable and cheaper to build than a table: a tag byte
-- ("\1" resource, "\2" non-resource) and the attribute values joined with "\0", in the
-- order of RESOURCE_ATTRIBUTES or NONRESOURCE_ATTRIBUTES. Values never contain control
-- characters (sar_value refuses them), so neither the tag nor "\0" can be forged, and a
-- deny reason (the other string payload) never starts with a control character.
local SAR_RESOURCE, SAR_NONRESOURCE = "\1", "\2"

-- tg.sar with every check in the documented order and a precise message for the first
-- problem found (errors point at the policy's line: see the levels passed to fail).
local function sar_checked(attrs)
  check_plain_table(attrs, "SubjectAccessReview attributes", 2)
  if sar_keys(attrs) then
    local path = sar_value(attrs, "path", true)
    local verb = sar_value(attrs, "verb", true)
    if sub(path, 1, 1) ~= "/" then
      fail(2, "SubjectAccessReview path must start with '/' (got %s)", printable(path))
    end
    return issue({ decision = "sar", attributes = { kind = "nonresource", path = path, verb = verb } },
      SAR_NONRESOURCE .. path .. "\0" .. verb)
  end
  local verb = sar_value(attrs, "verb", true)
  local namespace = sar_value(attrs, "namespace", false)
  local group = sar_value(attrs, "group", false)
  local version = sar_value(attrs, "version", false)
  local resource = sar_value(attrs, "resource", true)
  local subresource = sar_value(attrs, "subresource", false)
  local name = sar_value(attrs, "name", false)
  return issue({ decision = "sar", attributes = { kind = "resource", verb = verb, namespace = namespace,
      group = group, version = version, resource = resource, subresource = subresource, name = name } },
    SAR_RESOURCE .. verb .. "\0" .. namespace .. "\0" .. group .. "\0" .. version .. "\0" .. resource
      .. "\0" .. subresource .. "\0" .. name)
end

-- The common case, a well-formed non-resource review, is checked here in few bytecodes
-- (the interpreter runs each of them on every request, under the instruction-count
-- hook); it accepts exactly what sar_checked accepts for it: a plain table whose only
-- keys are path and verb (both present, and two keys in all), both strings within their
-- limits without control characters, verb not empty, path starting with "/". Anything
-- else, including every error, goes to sar_checked, by a tail call so that the error
-- levels there still point at the policy's line.
function _M.sar(attrs)
  if type(attrs) == "table" and getmetatable(attrs) == nil then
    local path, verb = attrs.path, attrs.verb
    if type(path) == "string" and type(verb) == "string" and byte(path) == 47 and verb ~= ""
        and #path <= MAX_SAR_PATH and #verb <= MAX_SAR_VALUE
        and next(attrs, next(attrs, (next(attrs)))) == nil
        and not has_control(path, false) and not has_control(verb, false) then
      return issue({ decision = "sar", attributes = { kind = "nonresource", path = path, verb = verb } },
        SAR_NONRESOURCE .. path .. "\0" .. verb)
    end
  end
  return sar_checked(attrs)
end

-- The attribute table of a packed sar payload (what sandbox.authorize returns to specs).
local function unpack_sar(packed)
  local keys = byte(packed, 1) == 1 and RESOURCE_ATTRIBUTES or NONRESOURCE_ATTRIBUTES
  local attributes = { kind = keys == RESOURCE_ATTRIBUTES and "resource" or "nonresource" }
  local pos = 2
  for i = 1, #keys do
    local stop = find(packed, "\0", pos, true) or #packed + 1
    attributes[keys[i]] = sub(packed, pos, stop - 1)
    pos = stop + 1
  end
  return attributes
end

-- For tokengate.sandbox only (not in the policy view): the validated kind and payload of
-- a decision built by allow/deny/sar, or nil for anything else (a hand-made table). The
-- payload of a sar is its attribute table, or with packed = true the packed string
-- described above (what the gateway's C host reads).
function _M.unwrap_decision(d, packed)
  local payload = issued[d]
  if type(payload) == "string" then
    local tag = byte(payload)
    if tag == 1 or tag == 2 then return "sar", packed and payload or unpack_sar(payload) end
    return "deny", payload
  end
  if payload == nil then return nil end
  return "allow", payload
end


-- Metrics -----------------------------------------------------------------------------

-- Metric objects are empty tables; their state lives here so a policy cannot rewrite a
-- metric's label list or handle and slip past the checks.
local metric_state = setmetatable({}, { __mode = "k" })

local function check_metric_name(name)
  if type(name) ~= "string" or not find(name, METRIC_NAME_PATTERN) or #name > MAX_METRIC_NAME then
    fail(4, "invalid metric name %s (must match [a-zA-Z_:][a-zA-Z0-9_:]* in at most 127 bytes)",
      type(name) == "string" and printable(name) or type(name))
  end
  if sub(name, 1, 8) == "gateway_" or sub(name, 1, 8) == "process_" then
    fail(4, "metric name %q is reserved: gateway_* and process_* are the gateway's own", name)
  end
end

local function check_label_names(labels, kind)
  if labels == nil then return {} end
  local list = string_list(labels, "metric labels", MAX_LABELS, 4)
  local seen = {}
  for i = 1, #list do
    local l = list[i]
    if not find(l, LABEL_NAME_PATTERN) or sub(l, 1, 2) == "__" then
      fail(4, "invalid label name %s (must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __)", printable(l))
    end
    if l == "le" then -- as the gateway: not on any kind, so a metric can become a histogram
      fail(4, "a metric cannot have a label named 'le' (Prometheus uses it for histogram buckets)")
    end
    if seen[l] then fail(4, "label %q is declared twice", l) end
    seen[l] = true
  end
  return list
end

local function check_buckets(buckets)
  if buckets == nil then
    local copy = {}
    for i = 1, #DEFAULT_BUCKETS do copy[i] = DEFAULT_BUCKETS[i] end
    return copy
  end
  check_plain_table(buckets, "histogram buckets", 4)
  local n = #buckets
  local count = 0
  for _ in next, buckets do count = count + 1 end
  if n == 0 or count ~= n then fail(4, "histogram buckets must be a non-empty list") end
  if n > MAX_BUCKETS then fail(4, "histogram has %d buckets; the limit is %d", n, MAX_BUCKETS) end
  local copy = {}
  for i = 1, n do
    local b = buckets[i]
    if type(b) ~= "number" or not is_finite(b) then
      fail(4, "histogram bucket %d must be a finite number", i)
    end
    if i > 1 and b <= copy[i - 1] then
      fail(4, "histogram buckets must be strictly increasing (bucket %d is %s after %s)",
        i, tostring(b), tostring(copy[i - 1]))
    end
    copy[i] = b
  end
  return copy
end

-- Turns {label = value} into the ordered value list the host expects.
local function label_values(state, values)
  local names = state.labels
  if values == nil then values = {} end
  check_plain_table(values, "label values of " .. state.name, 4)
  for k in next, values do
    if not state.index[k] then
      fail(4, "metric %s has no label %s (declared: %s)", state.name, keyname(k),
        #names > 0 and concat(names, ", ") or "none")
    end
  end
  local list = {}
  for i = 1, #names do
    local v = values[names[i]]
    local t = type(v)
    if v == nil then
      v = ""
    elseif t == "number" or t == "boolean" then
      v = tostring(v)
    elseif t ~= "string" then
      fail(4, "label %s of %s must be a string, number or boolean (got %s)", names[i], state.name, t)
    end
    if #v > MAX_LABEL_VALUE then v = sub(v, 1, MAX_LABEL_VALUE) end
    list[i] = v
  end
  return list
end

local function update(self, method, values, n, op)
  local state = metric_state[self]
  if state == nil then
    fail(3, "%s must be called on a metric (use metric:%s(...), not metric.%s(...))", method, method, method)
  end
  local list = label_values(state, values)
  host.metric_update(state.handle, op, list, n)
end

local function check_amount(n, what, non_negative)
  if type(n) ~= "number" or not is_finite(n) then
    fail(3, "%s must be a finite number (got %s)", what, type(n) == "number" and tostring(n) or type(n))
  end
  if non_negative and n < 0 then fail(3, "%s must not be negative (got %s)", what, tostring(n)) end
end

local counter_methods = {
  -- syntax: counter:inc(labels?, n?)  -- n defaults to 1 and must be >= 0
  inc = function(self, values, n)
    if n == nil then n = 1 end
    check_amount(n, "counter increment", true)
    update(self, "inc", values, n, "inc")
  end,
}

local gauge_methods = {
  -- syntax: gauge:set(labels?, v)
  set = function(self, values, v)
    check_amount(v, "gauge value", false)
    update(self, "set", values, v, "set")
  end,
  -- syntax: gauge:inc(labels?, n?)  -- n defaults to 1 and may be negative
  inc = function(self, values, n)
    if n == nil then n = 1 end
    check_amount(n, "gauge increment", false)
    update(self, "inc", values, n, "inc")
  end,
}

local histogram_methods = {
  -- syntax: histogram:observe(labels?, v)
  observe = function(self, values, v)
    check_amount(v, "observed value", false)
    update(self, "observe", values, v, "observe")
  end,
}

local function metric_metatable(kind, methods)
  return {
    __index = function(_, key)
      local m = methods[key]
      if m == nil then fail(2, "a %s has no method '%s'", kind, tostring(key)) end
      return m
    end,
    __newindex = function() fail(2, "metric objects are read-only") end,
    __tostring = function(self) return kind .. " " .. metric_state[self].name end,
    __metatable = false,
  }
end

local METATABLES = {
  counter = metric_metatable("counter", counter_methods),
  gauge = metric_metatable("gauge", gauge_methods),
  histogram = metric_metatable("histogram", histogram_methods),
}

local function declare(kind, name, help, labels, buckets)
  check_metric_name(name)
  if help == nil then help = "" end
  check_string(help, "help of metric " .. name, MAX_HELP, CTL, 3)
  local names = check_label_names(labels, kind)
  if kind == "histogram" then
    buckets = check_buckets(buckets)
  end
  local handle, err = host.metric_declare(kind, name, help, names, buckets)
  if handle == nil then
    fail(3, "cannot declare %s %s: %s", kind, name, tostring(err or "rejected by the host"))
  end
  local index = {}
  for i = 1, #names do index[names[i]] = i end
  local obj = setmetatable({}, METATABLES[kind])
  metric_state[obj] = { name = name, labels = names, index = index, handle = handle }
  return obj
end

_M.metrics = {
  -- syntax: c = tg.metrics.counter(name, help, labels?)
  -- (Each wrapper keeps its frame, no tail call, so error levels point at the policy.)
  counter = function(name, help, labels)
    local m = declare("counter", name, help, labels)
    return m
  end,
  -- syntax: g = tg.metrics.gauge(name, help, labels?)
  gauge = function(name, help, labels)
    local m = declare("gauge", name, help, labels)
    return m
  end,
  -- syntax: h = tg.metrics.histogram(name, help, labels?, buckets?)
  histogram = function(name, help, labels, buckets)
    local m = declare("histogram", name, help, labels, buckets)
    return m
  end,
}


-- Log ---------------------------------------------------------------------------------

local function log_fields(fields)
  if fields == nil then return nil end
  check_plain_table(fields, "log fields", 3)
  local copy, count = {}, 0
  for k, v in next, fields do
    count = count + 1
    if count > MAX_LOG_FIELDS then fail(3, "log has more than %d fields", MAX_LOG_FIELDS) end
    if type(k) ~= "string" or not find(k, LOG_FIELD_PATTERN) or #k > 64 then
      fail(3, "log field names must be identifiers (got %s)", type(k) == "string" and printable(k) or type(k))
    end
    local t = type(v)
    if t ~= "string" and t ~= "number" and t ~= "boolean" then
      fail(3, "log field %s must be a string, number or boolean (got %s)", k, t)
    end
    if t == "string" and #v > MAX_LOG_MESSAGE then v = sub(v, 1, MAX_LOG_MESSAGE) end
    copy[k] = v
  end
  return copy
end

-- syntax: tg.log(level, msg, fields?)  -- level: "debug" | "info" | "warn" | "error"
function _M.log(level, msg, fields)
  if not LOG_LEVELS[level] then
    fail(2, "log level must be debug, info, warn or error (got %s)",
      type(level) == "string" and printable(level) or type(level))
  end
  if type(msg) ~= "string" then fail(2, "log message must be a string (got %s)", type(msg)) end
  -- Bounded so one policy line cannot write megabytes per request into the log.
  if #msg > MAX_LOG_MESSAGE then msg = sub(msg, 1, MAX_LOG_MESSAGE) .. "...(truncated)" end
  host.log(level, msg, log_fields(fields))
end

-- A copy: the generated module's table is shared with tokengate.sandbox and the kit.
_M.limits = {}
for k, v in next, LIMITS do _M.limits[k] = v end

return _M
