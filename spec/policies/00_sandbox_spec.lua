-- The tokengate module and the policy sandbox, narrow to broad: what a policy can reach,
-- what stops it, and what it may return. Every policy here is inline, loaded through the
-- same tokengate.sandbox the gateway embeds.
local testing = require("tokengate.testing")
local sandbox = testing.sandbox

-- A policy whose authorize body is `body` (line 3 of "inline.lua" is its first line).
local function with_authorize(body, extra_fields)
  return testing.load_source("local tg = require('tokengate')\n"
    .. "return { " .. (extra_fields or "") .. " authorize = function(req, user)\n"
    .. body .. "\nend }")
end

local function authorize(body, req, user)
  return with_authorize(body):authorize(req or testing.request(), user or testing.serviceaccount("team-a", "sender"))
end

-- The message sandbox.load returns for a broken policy.
local function load_error(source, chunkname)
  local policy, err = sandbox.load(source, chunkname or "inline.lua")
  assert.is_nil(policy)
  assert.is_string(err)
  return err
end

local function assert_error_decision(pattern, d)
  assert.equal("error", d.kind)
  assert.matches(pattern, d.message)
end

local SA = testing.serviceaccount("team-a", "sender")

describe("tokengate sandbox", function()
  before_each(function()
    testing.reset()
    testing.set_instruction_limit(nil)
    testing.set_clock(nil)
  end)

  describe("when loading a policy", function()
    it("returns a policy with its hooks and a copy of its audiences", function()
      local p = testing.load_source([[
        local tg = require("tokengate")
        return {
          audiences = { "https://kubernetes.default.svc", "tokengate" },
          ttl = function(user) return 5 end,
          anonymous = function(req) return req.path == "/healthz" end,
          authorize = function(req, user) return tg.deny("no") end,
        }]])
      assert.same({ "https://kubernetes.default.svc", "tokengate" }, p.audiences)
      assert.equal(5, p:ttl(SA))
      assert.is_true(p:anonymous(testing.request{ path = "/healthz" }))
      assert.same({ kind = "deny", reason = "no" }, p:authorize(nil, SA))
    end)

    it("refuses precompiled bytecode", function()
      local bytecode = string.dump(loadstring("return { authorize = function() end }"))
      assert.matches("inline.lua: precompiled bytecode is refused", load_error(bytecode), 1, true)
    end)

    it("reports a syntax error with the chunk name and line", function()
      assert.matches("^inline.lua:2: ", load_error("return {\n  authorize = function( end }"))
    end)

    it("reports an error raised at load time with its line", function()
      assert.equal("inline.lua:2: boom", load_error("local x = 1\nerror('boom')\nreturn {}"))
    end)

    it("refuses a file that does not return a table", function()
      assert.equal("inline.lua: a policy must return a table (got nil)", load_error("local x = 1"))
      assert.equal("inline.lua: a policy must return a table (got string)", load_error("return 'allow'"))
    end)

    it("requires authorize", function()
      assert.equal("inline.lua: a policy must define authorize(req, user)",
        load_error("return { ttl = function() return 1 end }"))
    end)

    it("refuses unknown fields, so a misspelt hook is not silently ignored", function()
      assert.matches("inline.lua: unknown policy field 'authorise'",
        load_error("return { authorise = function() end }"), 1, true)
      assert.matches("unknown policy field '1'", load_error("return { function() end }"), 1, true)
    end)

    it("requires hooks to be functions", function()
      assert.equal("inline.lua: policy field 'authorize' must be a function (got number)",
        load_error("return { authorize = 30 }"))
      for _, field in ipairs{ "ttl", "anonymous" } do
        local err = load_error("return { authorize = function() end, " .. field .. " = 30 }")
        assert.equal("inline.lua: policy field '" .. field .. "' must be a function (got number)", err)
      end
    end)

    it("checks audiences", function()
      local function audiences(list)
        return load_error("return { authorize = function() end, audiences = " .. list .. " }")
      end
      assert.matches("audiences must be a list of strings %(got string%)", audiences("'api'"))
      assert.matches("audiences must be a list of 1 to 16 strings", audiences("{}"))
      assert.matches("audiences must be a list", audiences("{ a = 'x' }"))
      assert.matches("audiences must be a list", audiences("{ 'a', nil, 'c' }"))
      assert.matches("audiences%[1%] must be a non%-empty string", audiences("{ '' }"))
      assert.matches("audiences%[2%] must be a non%-empty string", audiences("{ 'a', 7 }"))
      assert.matches("audiences%[1%] must be a non%-empty string", audiences("{ 'a\\nb' }"))
      assert.matches("audiences%[1%]", audiences("{ string.rep('a', 257) }"))
      local seventeen = {}
      for i = 1, 17 do seventeen[i] = "'aud" .. i .. "'" end
      assert.matches("1 to 16 strings", audiences("{" .. table.concat(seventeen, ",") .. "}"))
    end)

    it("refuses a source or chunk name that is not a string", function()
      assert.equal("inline.lua: policy source must be a string (got nil)", load_error(nil))
      local policy, err = sandbox.load("return {}", 42)
      assert.is_nil(policy)
      assert.equal("policy chunkname must be a string", err)
    end)

    it("stops an endless loop in the file's top-level code", function()
      testing.set_instruction_limit(100000)
      assert.equal("inline.lua:2: instruction limit of 100000 exceeded",
        load_error("local n = 0\nwhile true do n = n + 1 end"))
    end)

    it("reads undefined globals as an error at load time", function()
      assert.equal("inline.lua:1: undefined global 'undefined_thing'",
        load_error("local x = undefined_thing\nreturn { authorize = function() end }"))
    end)

    it("lets top-level code define globals, and hooks read them", function()
      local p = testing.load_source([[
        LIMIT = 3
        local tg = require("tokengate")
        return { authorize = function() return tg.deny("limit " .. LIMIT) end }]])
      assert.same({ kind = "deny", reason = "limit 3" }, p:authorize(nil, SA))
    end)
  end)

  describe("environment", function()
    it("reading an undefined global in a hook is an error", function()
      assert_error_decision("^inline.lua:3: undefined global 'nope'$", authorize("return nope"))
    end)

    it("hooks cannot create globals once the file has loaded", function()
      assert_error_decision("^inline.lua:3: assignment to undefined global 'counter' after the policy has loaded$",
        authorize("counter = 1"))
    end)

    local absent = {
      "io", "loadfile", "dofile", "loadstring", "debug", "ffi", "jit", "package", "getfenv",
      "setfenv", "collectgarbage", "newproxy", "coroutine", "module", "gcinfo", "bit", "_G", "arg",
    }
    for _, name in ipairs(absent) do
      it("has no " .. name, function()
        assert_error_decision("undefined global '" .. name .. "'", authorize("return " .. name))
      end)
    end

    it("refuses io.open", function()
      assert_error_decision("undefined global 'io'", authorize("io.open('/etc/passwd')"))
    end)

    for _, fn in ipairs{ "execute", "exit", "getenv", "remove", "rename", "tmpname", "setlocale" } do
      it("has no os." .. fn, function()
        assert_error_decision("attempt to call field '" .. fn .. "' %(a nil value%)",
          authorize("os." .. fn .. "('true')"))
      end)
    end

    it("keeps os.time, os.clock and os.date", function()
      local d = authorize("return tg.deny(type(os.time()) .. type(os.clock()) .. type(os.date('!%Y')))")
      assert.same({ kind = "deny", reason = "numbernumberstring" }, d)
    end)

    it("lets specs set the clock policies see", function()
      testing.set_clock(86400)
      local d = authorize("return tg.deny(os.time() .. ' ' .. os.date('!%Y-%m-%d'))")
      assert.same({ kind = "deny", reason = "86400 1970-01-02" }, d)
      testing.set_clock(function() return 0 end)
      assert.equal("0", authorize("return tg.deny(tostring(os.time()))").reason)
      testing.set_clock(nil)
      assert.is_true(tonumber(authorize("return tg.deny(tostring(os.time()))").reason) > 1600000000)
      assert.has_error(function() testing.set_clock("noon") end,
        "testing.set_clock expects a number, a function or nil")
      assert.same({ nil, "clock must be a function or false" }, { sandbox.configure{ clock = 5 } })
    end)

    for _, name in ipairs{ "ffi", "io", "os", "debug", "jit", "string", "tokengate.sandbox", "tokengate.testing", "tokengate.host" } do
      it("refuses require('" .. name .. "')", function()
        assert_error_decision("^inline.lua:3: module '" .. name:gsub("%.", "%%.") .. "' is not available to policies$",
          authorize("local m = require('" .. name .. "')\nreturn m"))
      end)
    end

    it("gives every policy the same read-only tokengate view", function()
      local d = authorize("return tg.deny(tostring(require('tokengate') == tg))")
      assert.equal("true", d.reason)
      assert.equal(testing.tg._VERSION, authorize("return tg.deny(tg._VERSION)").reason)
    end)

    it("does not let a policy patch tokengate for the policies after it", function()
      assert_error_decision("tokengate is read%-only %(cannot set 'deny'%)", authorize("tg.deny = tg.allow"))
      assert_error_decision("attempt to modify a read%-only table", authorize("rawset(tg, 'deny', tg.allow)"))
      assert_error_decision("tokengate.metrics is read%-only", authorize("tg.metrics.counter = nil"))
      assert_error_decision("cannot change a protected metatable", authorize("setmetatable(tg, {})"))
      assert.equal("false", authorize("return tg.deny(tostring(getmetatable(tg)))").reason)
      -- The decision registry is not part of the view.
      assert_error_decision("tokengate has no field 'unwrap_decision'", authorize("return tg.unwrap_decision"))
      -- and a later policy still gets the real deny
      assert.same({ kind = "deny", reason = "still" }, authorize("return tg.deny('still')"))
    end)

    it("iterates the tokengate view without exposing what is behind it", function()
      local d = authorize([[
        local names = {}
        for k in pairs(tg) do names[#names + 1] = k end
        table.sort(names)
        local f, state = pairs(tg)
        return tg.deny(table.concat(names, ",") .. " " .. tostring(state == tg))]])
      assert.equal("_VERSION,allow,deny,limits,log,metrics,sar true", d.reason)
    end)

    it("has no string.dump, by name or through the string metatable", function()
      assert.equal("nil nil nil", authorize(
        "return tg.deny(tostring(string.dump) .. ' ' .. tostring(('').dump) .. ' ' .. tostring(getmetatable('')))").reason)
      -- host code keeps it
      assert.is_function(string.dump)
    end)

    it("refuses to load bytecode from inside a policy", function()
      local bytecode = string.dump(function() return 42 end)
      local p = testing.load_source(string.format([[
        local tg = require("tokengate")
        local code = %q
        return { authorize = function()
          local f, err = load(code)
          if f then return tg.allow() end
          return tg.deny(err)
        end }]], bytecode))
      assert.same({ kind = "deny", reason = "load: precompiled bytecode is refused" }, p:authorize(nil, SA))
    end)

    it("refuses bytecode even with an explicit binary mode", function()
      local bytecode = string.dump(function() return 42 end)
      local p = testing.load_source(string.format([[
        local tg = require("tokengate")
        local code = %q
        return { authorize = function()
          local f, err = load(" " .. code, "=x", "b")
          return tg.deny(tostring(f) .. " " .. tostring(err))
        end }]], bytecode))
      -- Text mode is forced: the leading space makes it text, which then fails to parse.
      assert.matches("^nil x:1: ", p:authorize(nil, SA).reason)
    end)

    it("load compiles text into the policy's own environment, whatever env is passed", function()
      local d = authorize([[
        local f = assert(load("return LIMIT, type(io)", "=snippet", "t", { io = {}, LIMIT = 1 }))
        local ok, err = pcall(f)
        return tg.deny(tostring(ok) .. " " .. err)]], nil, nil)
      assert.equal("false snippet:1: undefined global 'LIMIT'", d.reason)
    end)

    it("load refuses reader functions and bad chunk names", function()
      assert.equal("load: policies may only load a string of Lua source",
        authorize("local f, err = load(function() return nil end) return tg.deny(err)").reason)
      assert.equal("load: chunkname must be a string",
        authorize("local f, err = load('return 1', {}) return tg.deny(err)").reason)
    end)

    it("load returns compile errors like Lua does", function()
      assert.equal("snippet:1: unexpected symbol near ')'",
        authorize("local f, err = load(')', '=snippet') return tg.deny(err)").reason)
    end)

    it("routes print to the log at info level", function()
      authorize("print('hello', 42, nil) return tg.deny()")
      assert.same({ { level = "info", message = "hello\t42\tnil", fields = {} } }, testing.logs())
    end)

    it("gives each policy its own copies of string, table and math", function()
      local first = with_authorize("return tg.deny(string.upper('x'))")
      testing.load_source("string.upper = function() return 'patched' end\n"
        .. "math.floor = nil\nreturn { authorize = function() end }")
      assert.equal("X", first:authorize(nil, SA).reason)
      assert.equal("X", authorize("return tg.deny(string.upper('x') .. math.floor(1.5))").reason:sub(1, 1))
    end)

    it("keeps string methods working through the metatable", function()
      assert.equal("ABC-3", authorize("return tg.deny(('abc'):upper() .. '-' .. ('abc'):len())").reason)
    end)

    it("offers the allow-listed base functions", function()
      local d = authorize([[
        local t = setmetatable({}, { __index = function() return 1 end })
        local names = { "assert", "error", "ipairs", "next", "pairs", "pcall", "select",
          "tonumber", "tostring", "type", "unpack", "xpcall", "rawequal", "rawget", "rawset",
          "setmetatable", "getmetatable", "load", "require", "print" }
        for _, n in ipairs(names) do
          assert(type(({ assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
            pcall = pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
            unpack = unpack, xpcall = xpcall, rawequal = rawequal, rawget = rawget, rawset = rawset,
            setmetatable = setmetatable, getmetatable = getmetatable, load = load,
            require = require, print = print })[n]) == "function", n)
        end
        return tg.deny(_VERSION .. " " .. t.x .. " " .. select("#", unpack({ 1, 2 })))]])
      assert.equal("Lua 5.1 1 2", d.reason)
    end)

    it("reports bad arguments to the wrapped iterators at the policy's line", function()
      assert_error_decision("^inline.lua:3: bad argument #1 to 'pairs' %(table expected, got nil%)",
        authorize("for k in pairs(nil) do end"))
      assert_error_decision("^inline.lua:3: bad argument #1 to 'ipairs'", authorize("for k in ipairs(1) do end"))
      assert_error_decision("^inline.lua:3: bad argument #1 to 'next'", authorize("next('x')"))
      assert_error_decision("bad argument #1 to 'rawset'", authorize("rawset(nil, 1, 2)"))
    end)

    it("lets policies use rawset on their own tables", function()
      assert.equal("1", authorize("local t = {} rawset(t, 'a', 1) return tg.deny(tostring(t.a))").reason)
    end)
  end)

  describe("instruction budget", function()
    it("stops an endless loop in authorize within a bounded time", function()
      local started = os.clock()
      local d = authorize("while true do end")
      assert.same({ kind = "error", message = "inline.lua:3: instruction limit of 1000000 exceeded" }, d)
      assert.is_true(os.clock() - started < 5)
    end)

    it("cannot be swallowed by pcall inside the policy", function()
      assert_error_decision("instruction limit", authorize([[
        local allow = tg.allow()
        pcall(function() while true do end end)
        return allow]]))
      assert_error_decision("instruction limit", authorize([[
        while true do pcall(function() while true do end end) end]]))
    end)

    it("cannot be swallowed by xpcall and a message handler", function()
      assert_error_decision("instruction limit", authorize([[
        local allow = tg.allow()
        xpcall(function() while true do end end, function(e) return e end)
        return allow]]))
    end)

    it("stops loops in code the policy loads at run time", function()
      assert_error_decision("instruction limit", authorize("assert(load('while true do end'))()"))
    end)

    it("stops loops that would otherwise be compiled by the JIT", function()
      testing.set_instruction_limit(1000000)
      assert_error_decision("instruction limit", authorize([[
        local n = 0
        for i = 1, 1e9 do n = n + i end
        return tg.deny(tostring(n))]]))
    end)

    it("names the policy when the limit hits inside tokengate's own code", function()
      testing.set_instruction_limit(1000)
      local d = authorize("while true do tg.allow{ headers = { ['X-A'] = 'b' } } end")
      assert_error_decision("^inline.lua", d)
      assert.matches("instruction limit of 1000 exceeded", d.message)
    end)

    it("stops a hook that keeps growing the heap past the memory limit, as the gateway's cap does", function()
      testing.set_memory_limit(8 * 1024 * 1024)
      local d = authorize([[
        local t = {}
        for i = 1, 1e6 do t[i] = ("x"):rep(100) .. i end
        return tg.allow()]])
      testing.set_memory_limit(nil)
      assert_error_decision("not enough memory", d)
      assert.matches("^inline.lua:%d+: not enough memory %(the heap grew by more than 8388608 bytes%)$", d.message)
      -- the same policy with room to spare
      assert.equal("allow", authorize([[
        local t = {}
        for i = 1, 1000 do t[i] = ("x"):rep(100) .. i end
        return tg.allow()]]).kind)
      assert.has_error(function() testing.set_memory_limit(1000) end,
        "memory_limit must be an integer number of bytes >= 1048576")
    end)

    it("stops an endless ttl or anonymous hook", function()
      local p = with_authorize("return tg.deny()",
        "ttl = function() while true do end end, anonymous = function() while true do end end,")
      local ttl, err = p:ttl(SA)
      assert.is_nil(ttl)
      assert.matches("instruction limit", err)
      local anon, aerr = p:anonymous(testing.request())
      assert.is_false(anon)
      assert.matches("instruction limit", aerr)
    end)

    it("starts every call with a full budget", function()
      local p = with_authorize([[
        local n = 0
        for i = 1, 200000 do n = n + 1 end
        return tg.deny(tostring(n))]])
      testing.set_instruction_limit(5000000)
      for _ = 1, 10 do assert.equal("200000", p:authorize(nil, SA).reason) end
      testing.set_instruction_limit(100000)
      assert_error_decision("instruction limit", p:authorize(nil, SA))
      testing.set_instruction_limit(nil)
      assert.equal("200000", p:authorize(nil, SA).reason)
    end)

    it("turns endless recursion into an error", function()
      assert_error_decision("stack overflow", authorize("local function f() return 1 + f() end return f()"))
    end)

    it("refuses a bad limit", function()
      assert.has_error(function() testing.set_instruction_limit(0) end,
        "instruction_limit must be an integer between 1 and 2147483647")
      assert.has_error(function() testing.set_instruction_limit(1.5) end)
      assert.same({ nil, "configure expects a table" }, { sandbox.configure(5) })
      -- the same default as the gateway's --policy-max-instructions
      assert.equal(1000000, sandbox.instruction_limit())
    end)

    it("is enforced in this Lua state", function()
      assert.is_true(sandbox.budget_enforced)
    end)
  end)

  describe("without the debug and jit libraries, as in the gateway's Lua state", function()
    local bare

    lazy_setup(function()
      -- A second instance of the module, loaded while debug and jit are hidden; the C host
      -- enforces the budget there (see core/policy.c).
      local G = _G -- busted runs specs in their own environment; modules see the real one
      local saved_debug, saved_jit, saved_module = G.debug, G.jit, package.loaded["tokengate.sandbox"]
      G.debug, G.jit, package.loaded["tokengate.sandbox"] = nil, nil, nil
      local ok, mod = pcall(require, "tokengate.sandbox")
      G.debug, G.jit, package.loaded["tokengate.sandbox"] = saved_debug, saved_jit, saved_module
      assert(ok, mod)
      bare = mod
    end)

    it("says it does not enforce the budget itself", function()
      assert.is_false(bare.budget_enforced)
    end)

    it("loads and runs policies the same way", function()
      local policy = assert(bare.load("local tg = require('tokengate')\n"
        .. "return { authorize = function(req) return tg.sar{ path = req.path, verb = 'get' } end }", "bare.lua"))
      local kind, attrs = bare.authorize(policy, bare.make_request("GET", "/x"), bare.make_user("u"))
      assert.equal("sar", kind)
      assert.same({ kind = "nonresource", path = "/x", verb = "get" }, attrs)
    end)

    it("names the file, without a line, when a tail call lost it", function()
      local policy = assert(bare.load("local tg = require('tokengate')\n"
        .. "return { authorize = function() return tg.deny({}) end, ttl = function() return 'x' end }", "bare.lua"))
      assert.same({ "error", "bare.lua: in authorize: deny reason must be a string (got table)" },
        { bare.authorize(policy, bare.make_request(), bare.make_user("u")) })
      assert.same({ nil, "bare.lua: ttl must return a finite number of seconds >= 0 (got string)" },
        { bare.ttl(policy, bare.make_user("u")) })
    end)
  end)

  describe("errors raised by a policy", function()
    it("carry the chunk name and line", function()
      assert.same({ kind = "error", message = "inline.lua:4: nope" }, authorize("local x = 1\nerror('nope')"))
    end)

    it("name the hook and its line when a tail call lost the line", function()
      assert.same({ kind = "error", message = "inline.lua:2: in authorize: deny reason must be a string (got table)" },
        authorize("return tg.deny({})"))
      assert.same({ kind = "error", message = "inline.lua:2: in authorize: plain" }, authorize("error('plain', 0)"))
      assert.equal("inline.lua: module 'io' is not available to policies",
        load_error("return require('io')"))
    end)

    it("do not run a table's __tostring outside the budget", function()
      assert.same({ kind = "error", message = "inline.lua:2: in authorize: (error object is a table value)" }, authorize(
        "error(setmetatable({}, { __tostring = function() while true do end end }))"))
      assert.same({ kind = "error", message = "inline.lua:3: 42" }, authorize("error(42)"))
    end)

    it("are truncated when huge", function()
      local d = authorize("error(string.rep('x', 100000), 0)")
      assert.equal("inline.lua:2: in authorize: " .. string.rep("x", 1024) .. "...(truncated)", d.message)
    end)

    it("are never an allow, even after tg.allow was called", function()
      assert_error_decision("inline.lua:4: late", authorize("local d = tg.allow()\nerror('late')\nreturn d"))
    end)
  end)

  describe("request and user views", function()
    it("req is read-only", function()
      assert_error_decision("^inline.lua:3: req is read%-only %(cannot set 'path'%)", authorize("req.path = '/admin'"))
      assert_error_decision("req.headers is read%-only", authorize("req.headers['x-a'] = 'b'"))
      assert_error_decision("attempt to modify a read%-only table", authorize("rawset(req, 'path', '/admin')"))
      assert_error_decision("cannot change a protected metatable", authorize("setmetatable(req, nil)"))
    end)

    it("reading a field req does not have is an error", function()
      assert_error_decision("^inline.lua:3: req has no field 'pth'$", authorize("return req.pth"))
    end)

    it("has the request's fields", function()
      local req = testing.request{ method = "PUT", path = "/a", query = "x=1", host = "svc.ns", client_ip = "10.1.2.3" }
      local d = authorize([[return tg.deny(table.concat({ req.method, req.path, req.query, req.host, req.client_ip }, " "))]], req)
      assert.equal("PUT /a x=1 svc.ns 10.1.2.3", d.reason)
    end)

    it("lower-cases header names and looks them up case-insensitively", function()
      local req = testing.request{ headers = { ["Content-Type"] = "application/json", ["X-Trace"] = { "a", "b" } } }
      local d = authorize([[
        local seen = {}
        for k, v in pairs(req.headers) do seen[#seen + 1] = k .. "=" .. v end
        table.sort(seen)
        return tg.deny(table.concat(seen, ";") .. " " .. req.headers["Content-Type"] .. " " .. tostring(next(req.headers) ~= nil))]], req)
      assert.equal("content-type=application/json;x-trace=a, b application/json true", d.reason)
    end)

    it("iterates read-only lists with ipairs", function()
      assert.equal("0", authorize("local n = 0 for _ in ipairs(req.headers) do n = n + 1 end return tg.deny(tostring(n))").reason)
    end)

    it("joins repeated headers whose names differ only in case", function()
      local req = sandbox.make_request("GET", "/", "", "h", "ip", { ["X-A"] = "1", ["x-a"] = "1" })
      assert.equal("1, 1", req.headers["x-a"])
    end)

    it("never shows the bearer token to a policy", function()
      local req = testing.request{ headers = { Authorization = "Bearer secret", ["Proxy-Authorization"] = "Basic x", Accept = "*/*" } }
      assert.is_nil(req.headers.authorization)
      assert.is_nil(req.headers["proxy-authorization"])
      assert.equal("*/*", req.headers.accept)
    end)

    it("ignores malformed header entries and fields from the host", function()
      local req = sandbox.make_request(nil, 5, nil, nil, nil, { [1] = "x", ["x-n"] = 5, ["x-ok"] = "y" })
      assert.equal("", req.method)
      assert.equal("", req.path)
      assert.is_nil(req.headers["x-n"])
      assert.equal("y", req.headers["x-ok"])
      assert.is_nil(req.headers[1])
      assert.equal("", sandbox.make_request().headers["x"] or "")
    end)

    it("parses ServiceAccount usernames", function()
      local u = sandbox.make_user("system:serviceaccount:team-a:sender", "u1",
        { "system:serviceaccounts", 7 }, { ["authentication.kubernetes.io/pod-name"] = { "p-1" }, [2] = { "x" } })
      assert.same({
        username = "system:serviceaccount:team-a:sender", uid = "u1", groups = { "system:serviceaccounts" },
        extra = { ["authentication.kubernetes.io/pod-name"] = { "p-1" } },
        namespace = "team-a", serviceaccount = "sender",
      }, u)
    end)

    it("gives other users no namespace", function()
      local u = sandbox.make_user("jane@example.com", nil, nil, nil)
      assert.same({ username = "jane@example.com", uid = "", groups = {}, extra = {} }, u)
      assert.is_nil(sandbox.make_user("system:serviceaccount:only-namespace").namespace)
    end)

    it("builds a fresh user per call, so one call cannot change the next", function()
      local p = with_authorize([[
        local was = user.groups[1]
        user.groups[1] = "system:masters"
        return tg.deny(was)]])
      local user = testing.serviceaccount("team-a", "sender")
      assert.equal("system:serviceaccounts", p:authorize(nil, user).reason)
      assert.equal("system:serviceaccounts", p:authorize(nil, user).reason)
    end)
  end)

  describe("decisions", function()
    it("refuses a hand-made decision table", function()
      assert.same({ kind = "error",
        message = "inline.lua:2: authorize must return tg.allow(), tg.deny() or tg.sar() (got a table not built by tg.allow, tg.deny or tg.sar)" },
        authorize("return { decision = 'allow', headers = {} }"))
    end)

    it("refuses nil and other values", function()
      assert_error_decision("authorize must return .* %(got nil%)", authorize("return nil"))
      assert_error_decision("%(got string%)", authorize("return 'allow'"))
      assert_error_decision("%(got boolean%)", authorize("return true"))
    end)

    it("hands the policy a description of the decision", function()
      local d = authorize([[
        local a = tg.allow{ headers = { ["X-A"] = "1" } }
        local s = tg.sar{ path = "/x", verb = "get" }
        return tg.deny(a.decision .. a.headers[1][1] .. s.decision .. s.attributes.kind .. tg.deny().decision)]])
      assert.equal("allowX-Asarnonresourcedeny", d.reason)
    end)

    it("ignores what the policy does to a decision after building it", function()
      local d = authorize([[
        local d = tg.allow{ headers = { ["X-Tenant"] = "team-a" } }
        d.headers[1] = { "X-Remote-User", "admin" }
        d.decision = "deny"
        return d]])
      assert.same({ kind = "allow", headers = { { "X-Tenant", "team-a" } } }, d)
    end)

    it("lets a policy return one decision built at load time", function()
      local p = testing.load_source([[
        local tg = require("tokengate")
        local ALLOW = tg.allow{ headers = { ["X-Policy"] = "v1" } }
        return { authorize = function() return ALLOW end }]])
      for _ = 1, 3 do
        collectgarbage()
        assert.same({ kind = "allow", headers = { { "X-Policy", "v1" } } }, p:authorize(nil, SA))
      end
    end)

    it("gives specs copies, so a spec cannot corrupt a shared decision", function()
      local p = testing.load_source([[
        local tg = require("tokengate")
        local ALLOW = tg.allow{ headers = { ["X-Policy"] = "v1" } }
        return { authorize = function() return ALLOW end }]])
      p:authorize(nil, SA).headers[1][2] = "changed"
      assert.same({ { "X-Policy", "v1" } }, p:authorize(nil, SA).headers)
    end)

    it("refuses decisions from anything but a loaded policy", function()
      assert.same({ "error", "not a policy loaded by tokengate.sandbox" },
        { sandbox.authorize({ authorize = function() return testing.tg.allow() end }, testing.request(), SA) })
      assert.same({ nil, "not a policy loaded by tokengate.sandbox" }, { sandbox.ttl({}, SA) })
      assert.same({ false, "not a policy loaded by tokengate.sandbox" }, { sandbox.anonymous(nil, testing.request()) })
    end)
  end)

  describe("tg.allow", function()
    -- Not `return tg.allow{...}`: a tail call would hide the policy's line (see below).
    local function allow(headers_src)
      return authorize("local d = tg.allow{ headers = " .. headers_src .. " }\nreturn d")
    end

    it("allows without headers", function()
      assert.same({ kind = "allow", headers = {} }, authorize("return tg.allow()"))
      assert.same({ kind = "allow", headers = {} }, authorize("return tg.allow{}"))
    end)

    it("returns headers sorted by name, case preserved", function()
      assert.same({ kind = "allow", headers = { { "a-first", "1" }, { "X-Tenant", "team-a" }, { "X-Trace", "t\t2" } } },
        allow("{ ['X-Tenant'] = 'team-a', ['X-Trace'] = 't\\t2', ['a-first'] = '1' }"))
    end)

    it("refuses CR, LF, NUL and other control characters in values", function()
      for _, bad in ipairs{ "'a\\r\\nX-Remote-User: admin'", "'a\\n'", "'a\\0b'", "'\\27[31m'", "'a\\127'" } do
        assert_error_decision("^inline.lua:3: allow header X%-A contains a control character$",
          allow("{ ['X-A'] = " .. bad .. " }"))
      end
    end)

    it("refuses X-Remote-* in any case", function()
      for _, name in ipairs{ "X-Remote-User", "x-remote-groups", "X-REMOTE-UID", "X-Remote-Extra-Scopes" } do
        assert_error_decision("X%-Remote%-%* identity headers come only from the TokenReview",
          allow("{ ['" .. name .. "'] = 'admin' }"))
      end
    end)

    it("refuses hop-by-hop, framing, routing and credential headers", function()
      for _, name in ipairs{ "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Authorization", "host" } do
        assert_error_decision("^inline.lua:3: allow may not set header \"" .. name:gsub("%-", "%%-") .. "\"",
          allow("{ ['" .. name .. "'] = 'x' }"))
      end
    end)

    it("allows 16 headers and refuses 17", function()
      local parts = {}
      for i = 1, 16 do parts[i] = "['X-H" .. i .. "'] = 'v'" end
      assert.equal(16, #allow("{" .. table.concat(parts, ",") .. "}").headers)
      parts[17] = "['X-H17'] = 'v'"
      assert_error_decision("allow sets more than 16 headers", allow("{" .. table.concat(parts, ",") .. "}"))
    end)

    it("refuses names that are not HTTP tokens", function()
      assert_error_decision("allow header name \"Bad Header\" is not a valid HTTP header name", allow("{ ['Bad Header'] = 'x' }"))
      assert_error_decision("allow header name \"X%-A%?%?\" is not a valid", allow("{ ['X-A\\r\\n'] = 'x' }"))
      assert_error_decision("allow header name \"\" is not", allow("{ [''] = 'x' }"))
      assert_error_decision("allow header names must be strings %(got number%)", allow("{ 'x' }"))
      assert.equal(128, #allow("{ [string.rep('a', 128)] = 'x' }").headers[1][1])
      assert_error_decision("not a valid HTTP header name", allow("{ [string.rep('a', 129)] = 'x' }"))
    end)

    it("refuses values that are not short strings", function()
      assert_error_decision("allow header X%-A must be a string %(got number%)", allow("{ ['X-A'] = 1 }"))
      assert_error_decision("allow header X%-A is 1025 bytes long; the limit is 1024",
        allow("{ ['X-A'] = string.rep('a', 1025) }"))
      assert.equal(1024, #allow("{ ['X-A'] = string.rep('a', 1024) }").headers[1][2])
    end)

    it("refuses the same header twice in different case", function()
      assert_error_decision("allow sets header .* twice", allow("{ ['X-A'] = '1', ['x-a'] = '2' }"))
    end)

    it("refuses unknown options and odd tables", function()
      assert_error_decision("^inline.lua:3: unknown allow option \"header\" %(only headers%)",
        authorize("local d = tg.allow{ header = {} }\nreturn d"))
      assert_error_decision("allow options must be a table %(got string%)", authorize("return tg.allow('x')"))
      assert_error_decision("allow headers must be a table %(got string%)", allow("'X-A: b'"))
      assert_error_decision("allow headers must be a plain table without a metatable", allow("req.headers"))
    end)
  end)

  describe("tg.deny", function()
    it("has a default reason", function()
      assert.same({ kind = "deny", reason = "denied by policy" }, authorize("return tg.deny()"))
      assert.same({ kind = "deny", reason = "denied by policy" }, authorize("return tg.deny('')"))
    end)

    it("refuses reasons that are not short printable strings", function()
      assert_error_decision("^inline.lua:3: deny reason contains a control character$",
        authorize("local d = tg.deny('a\\r\\nb')\nreturn d"))
      assert_error_decision("deny reason contains a control character", authorize("return tg.deny('a\\tb')"))
      assert_error_decision("deny reason is 257 bytes long; the limit is 256", authorize("return tg.deny(string.rep('r', 257))"))
      assert_error_decision("deny reason must be a string %(got table%)", authorize("return tg.deny({})"))
    end)
  end)

  describe("tg.sar", function()
    local function sar(attrs_src)
      return authorize("local d = tg.sar" .. attrs_src .. "\nreturn d")
    end

    it("builds resource attributes, absent ones as empty strings", function()
      assert.same({ kind = "sar", attributes = { kind = "resource", verb = "create", namespace = "team-a",
        group = "hooks.example.com", version = "", resource = "deliveries", subresource = "", name = "" } },
        sar("{ verb = 'create', namespace = 'team-a', group = 'hooks.example.com', resource = 'deliveries' }"))
      assert.same({ kind = "resource", verb = "get", namespace = "n", group = "g", version = "v1",
        resource = "pods", subresource = "log", name = "p" },
        sar("{ verb = 'get', namespace = 'n', group = 'g', version = 'v1', resource = 'pods', subresource = 'log', name = 'p' }").attributes)
    end)

    it("builds non-resource attributes", function()
      assert.same({ kind = "sar", attributes = { kind = "nonresource", path = "/metrics", verb = "get" } },
        sar("{ path = '/metrics', verb = 'get' }"))
    end)

    it("refuses mixing path with resource attributes", function()
      assert_error_decision("^inline.lua:3: SubjectAccessReview attribute 'namespace' cannot be mixed with path",
        sar("{ path = '/x', verb = 'get', namespace = 'a' }"))
    end)

    it("refuses unknown attributes", function()
      assert_error_decision("unknown SubjectAccessReview attribute \"resources\"", sar("{ verb = 'get', resources = 'pods' }"))
      assert_error_decision("unknown SubjectAccessReview attribute 1", sar("{ 'get' }"))
    end)

    it("requires verb, resource and a path starting with /", function()
      assert_error_decision("^inline.lua:3: SubjectAccessReview attribute 'verb' is required$", sar("{ resource = 'pods' }"))
      assert_error_decision("attribute 'resource' is required", sar("{ verb = 'get' }"))
      assert_error_decision("attribute 'verb' is required", sar("{ path = '/x' }"))
      assert_error_decision("attribute 'verb' must not be empty", sar("{ verb = '', resource = 'pods' }"))
      assert_error_decision("path must start with '/' %(got \"metrics\"%)", sar("{ path = 'metrics', verb = 'get' }"))
      assert_error_decision("attribute 'path' must not be empty", sar("{ path = '', verb = 'get' }"))
    end)

    it("refuses values that are not short printable strings", function()
      assert_error_decision("attribute 'namespace' must be a string %(got number%)", sar("{ verb = 'get', resource = 'p', namespace = 1 }"))
      assert_error_decision("attribute 'name' contains a control character", sar("{ verb = 'get', resource = 'p', name = 'a\\nb' }"))
      assert_error_decision("attribute 'group' is 257 bytes long; the limit is 256",
        sar("{ verb = 'get', resource = 'p', group = string.rep('g', 257) }"))
      assert_error_decision("SubjectAccessReview attributes must be a table %(got nil%)", sar("()"))
    end)

    it("accepts paths up to tg.limits.sar_path bytes", function()
      assert.equal(256, testing.tg.limits.sar_path)
      assert.equal(256, #sar("{ path = '/' .. string.rep('p', 255), verb = 'get' }").attributes.path)
      assert_error_decision("attribute 'path' is 257 bytes long; the limit is 256",
        sar("{ path = '/' .. string.rep('p', 256), verb = 'get' }"))
    end)
  end)

  describe("metrics", function()
    -- Each metric test uses its own names: declarations last for the whole file, as they
    -- last for the life of the gateway.
    local function load_with(top_level, body)
      return testing.load_source("local tg = require('tokengate')\n" .. top_level
        .. "\nreturn { authorize = function(req, user)\n" .. (body or "") .. "\nreturn tg.deny() end }")
    end

    it("counts with a counter", function()
      local p = load_with("local c = tg.metrics.counter('t_calls_total', 'Calls', { 'namespace', 'code' })",
        "c:inc{ namespace = user.namespace, code = 200 }\nc:inc({ namespace = user.namespace }, 2.5)")
      p:authorize(nil, SA)
      p:authorize(nil, SA)
      assert.equal(2, testing.metric("t_calls_total", { namespace = "team-a", code = 200 }))
      assert.equal(5, testing.metric("t_calls_total", { namespace = "team-a", code = "" }))
      assert.is_nil(testing.metric("t_calls_total", { namespace = "team-b" }))
    end)

    it("sets and moves a gauge", function()
      local p = load_with("local g = tg.metrics.gauge('t_level', 'Level')",
        "g:set(nil, 10)\ng:inc()\ng:inc({}, -4)")
      p:authorize(nil, SA)
      assert.equal(7, testing.metric("t_level"))
    end)

    it("observes with a histogram", function()
      local p = load_with("local h = tg.metrics.histogram('t_size_bytes', 'Size', { 'ns' }, { 10, 100 })",
        "h:observe({ ns = 'a' }, 5)\nh:observe({ ns = 'a' }, 500)")
      p:authorize(nil, SA)
      assert.same({ count = 2, sum = 505 }, testing.metric("t_size_bytes", { ns = "a" }))
      load_with("tg.metrics.histogram('t_default_buckets', 'Default buckets')")
    end)

    it("refuses bad amounts", function()
      local function bad(decl, call)
        return load_with(decl, call):authorize(nil, SA)
      end
      assert_error_decision("^inline.lua:4: counter increment must not be negative %(got %-1%)$",
        bad("local c = tg.metrics.counter('t_neg_total', 'x')", "c:inc(nil, -1)"))
      assert_error_decision("counter increment must be a finite number %(got nan%)",
        bad("local c = tg.metrics.counter('t_nan_total', 'x')", "c:inc(nil, 0/0)"))
      assert_error_decision("counter increment must be a finite number %(got string%)",
        bad("local c = tg.metrics.counter('t_str_total', 'x')", "c:inc(nil, '1')"))
      assert_error_decision("gauge value must be a finite number %(got inf%)",
        bad("local g = tg.metrics.gauge('t_inf', 'x')", "g:set(nil, math.huge)"))
      assert_error_decision("gauge value must be a finite number %(got nil%)",
        bad("local g = tg.metrics.gauge('t_nil', 'x')", "g:set()"))
      assert_error_decision("gauge increment must be a finite number",
        bad("local g = tg.metrics.gauge('t_ginc', 'x')", "g:inc(nil, 'x')"))
      assert_error_decision("observed value must be a finite number",
        bad("local h = tg.metrics.histogram('t_obs', 'x')", "h:observe(nil, -1/0)"))
    end)

    it("validates metric names", function()
      for _, name in ipairs{ "9lives", "bad-name", "with space", "" } do
        assert.matches("invalid metric name", load_error("local tg = require('tokengate')\n"
          .. "tg.metrics.counter('" .. name .. "', 'x')\nreturn {}"))
      end
      assert.equal("inline.lua:2: invalid metric name number (must match [a-zA-Z_:][a-zA-Z0-9_:]* in at most 127 bytes)",
        load_error("local tg = require('tokengate')\ntg.metrics.gauge(42, 'x')\nreturn {}"))
      for _, name in ipairs{ "gateway_requests_total", "process_start_time_seconds" } do
        assert.equal("inline.lua:2: metric name \"" .. name .. "\" is reserved: gateway_* and process_* are the gateway's own",
          load_error("local tg = require('tokengate')\ntg.metrics.counter('" .. name .. "', 'x')\nreturn {}"))
      end
      load_with("tg.metrics.counter('ns:ok_total', 'colons are allowed')")
    end)

    it("validates label names", function()
      local function labels(src, kind)
        return load_error("local tg = require('tokengate')\ntg.metrics." .. (kind or "counter")
          .. "('t_labels_total', 'x', " .. src .. ")\nreturn {}")
      end
      assert.matches("^inline.lua:2: invalid label name \"__reserved\"", labels("{ '__reserved' }"))
      assert.matches("invalid label name \"bad%-label\"", labels("{ 'bad-label' }"))
      assert.matches("invalid label name \"9x\"", labels("{ '9x' }"))
      assert.matches("label \"ns\" is declared twice", labels("{ 'ns', 'ns' }"))
      assert.matches("metric labels has 9 entries; the limit is 8", labels("{ 'a','b','c','d','e','f','g','h','i' }"))
      assert.matches("metric labels must be a table %(got string%)", labels("'ns'"))
      assert.matches("metric labels%[1%] must be a string %(got number%)", labels("{ 1 }"))
      assert.matches("metric labels must be a list %(found key \"ns\"%)", labels("{ ns = true }"))
      assert.matches("a metric cannot have a label named 'le'", labels("{ 'le' }", "histogram"))
      load_with("tg.metrics.counter('t_eight_total', 'x', { 'a','b','c','d','e','f','g','h' })")
    end)

    it("validates help", function()
      assert.matches("help of metric t_help_total is 257 bytes long",
        load_error("local tg = require('tokengate')\ntg.metrics.counter('t_help_total', string.rep('h', 257))\nreturn {}"))
      assert.matches("help of metric t_help_total must be a string %(got table%)",
        load_error("local tg = require('tokengate')\ntg.metrics.counter('t_help_total', {})\nreturn {}"))
      load_with("tg.metrics.counter('t_nohelp_total')")
    end)

    it("validates histogram buckets", function()
      local function buckets(src)
        return load_error("local tg = require('tokengate')\ntg.metrics.histogram('t_b', 'x', nil, " .. src .. ")\nreturn {}")
      end
      assert.matches("^inline.lua:2: histogram buckets must be strictly increasing %(bucket 2 is 1 after 1%)$", buckets("{ 1, 1 }"))
      assert.matches("strictly increasing %(bucket 3 is 2 after 5%)", buckets("{ 1, 5, 2 }"))
      assert.matches("histogram buckets must be a non%-empty list", buckets("{}"))
      assert.matches("histogram buckets must be a non%-empty list", buckets("{ 1, x = 2 }"))
      assert.matches("histogram bucket 1 must be a finite number", buckets("{ 'a' }"))
      assert.matches("histogram bucket 2 must be a finite number", buckets("{ 1, math.huge }"))
      local many = {}
      for i = 1, 33 do many[i] = tostring(i) end
      assert.matches("histogram has 33 buckets; the limit is 32", buckets("{" .. table.concat(many, ",") .. "}"))
    end)

    it("refuses re-declaring a metric with other labels, kind or buckets", function()
      load_with("tg.metrics.counter('t_redeclare_total', 'x', { 'namespace' })")
      assert.equal("inline.lua:2: cannot declare counter t_redeclare_total: t_redeclare_total is already declared with labels {namespace}",
        load_error("local tg = require('tokengate')\ntg.metrics.counter('t_redeclare_total', 'x', { 'namespace', 'code' })\nreturn {}"))
      assert.matches("t_redeclare_total is already declared as a counter",
        load_error("local tg = require('tokengate')\ntg.metrics.gauge('t_redeclare_total', 'x', { 'namespace' })\nreturn {}"))
      load_with("tg.metrics.histogram('t_redeclare_seconds', 'x', nil, { 1, 2 })")
      assert.matches("already declared with buckets {1, 2}",
        load_error("local tg = require('tokengate')\ntg.metrics.histogram('t_redeclare_seconds', 'x', nil, { 1, 3 })\nreturn {}"))
    end)

    it("keeps a metric's values when a policy declares it again the same way (a reload)", function()
      local decl = "local c = tg.metrics.counter('t_reload_total', 'x', { 'ns' })"
      load_with(decl, "c:inc{ ns = 'a' }"):authorize(nil, SA)
      load_with(decl, "c:inc{ ns = 'a' }"):authorize(nil, SA)
      assert.equal(2, testing.metric("t_reload_total", { ns = "a" }))
    end)

    it("refuses label values for labels the metric does not have", function()
      local p = load_with("local c = tg.metrics.counter('t_undeclared_total', 'x', { 'namespace' })",
        "c:inc{ namespace = 'a', pod = 'p-1' }")
      assert_error_decision("^inline.lua:4: metric t_undeclared_total has no label \"pod\" %(declared: namespace%)$",
        p:authorize(nil, SA))
      local q = load_with("local c = tg.metrics.counter('t_nolabels_total', 'x')", "c:inc{ x = 1 }")
      assert_error_decision("has no label \"x\" %(declared: none%)", q:authorize(nil, SA))
    end)

    it("converts label values and truncates them to 128 bytes", function()
      local p = load_with("local c = tg.metrics.counter('t_values_total', 'x', { 'a', 'b', 'c' })",
        "c:inc{ a = 1.5, b = true, c = string.rep('v', 300) }")
      p:authorize(nil, SA)
      assert.equal(1, testing.metric("t_values_total", { a = "1.5", b = "true", c = string.rep("v", 128) }))
    end)

    it("refuses label values that are not strings, numbers or booleans", function()
      local p = load_with("local c = tg.metrics.counter('t_tablevalue_total', 'x', { 'a' })", "c:inc{ a = {} }")
      assert_error_decision("label a of t_tablevalue_total must be a string, number or boolean %(got table%)", p:authorize(nil, SA))
      local q = load_with("local c = tg.metrics.counter('t_labelstr_total', 'x', { 'a' })", "c:inc('a')")
      assert_error_decision("label values of t_labelstr_total must be a table %(got string%)", q:authorize(nil, SA))
    end)

    it("explains misuse of metric objects", function()
      local decl = "local c = tg.metrics.counter('t_misuse_total', 'x')"
      assert_error_decision("^inline.lua:4: inc must be called on a metric %(use metric:inc%(...%), not metric.inc%(...%)%)$",
        load_with(decl, "c.inc()"):authorize(nil, SA))
      assert_error_decision("^inline.lua:4: a counter has no method 'set'$", load_with(decl, "c:set(nil, 1)"):authorize(nil, SA))
      assert_error_decision("metric objects are read%-only", load_with(decl, "c.inc = nil"):authorize(nil, SA))
      assert.equal("inline.lua:3: in authorize: counter t_misuse_total",
        load_with(decl, "error(tostring(c), 0)"):authorize(nil, SA).message)
    end)

    it("reports the host's refusal", function()
      local host = package.loaded["tokengate.host"]
      local declare = host.metric_declare
      host.metric_declare = function() return nil end
      local err = load_error("local tg = require('tokengate')\ntg.metrics.counter('t_refused_total', 'x')\nreturn {}")
      host.metric_declare = declare
      assert.equal("inline.lua:2: cannot declare counter t_refused_total: rejected by the host", err)
    end)
  end)

  describe("tg.log", function()
    it("records level, message and fields", function()
      authorize("tg.log('warn', 'slow caller', { namespace = user.namespace, ms = 12, cached = false })\nreturn tg.deny()")
      assert.same({ { level = "warn", message = "slow caller",
        fields = { namespace = "team-a", ms = 12, cached = false } } }, testing.logs())
    end)

    it("refuses bad levels, messages and fields", function()
      assert_error_decision("^inline.lua:3: log level must be debug, info, warn or error %(got \"trace\"%)$",
        authorize("tg.log('trace', 'x')"))
      assert_error_decision("log level must be .* %(got nil%)", authorize("tg.log()"))
      assert_error_decision("log message must be a string %(got number%)", authorize("tg.log('info', 42)"))
      assert_error_decision("log field nested must be a string, number or boolean %(got table%)",
        authorize("tg.log('info', 'x', { nested = {} })"))
      assert_error_decision("log field names must be identifiers %(got \"bad name\"%)", authorize("tg.log('info', 'x', { ['bad name'] = 1 })"))
      assert_error_decision("log field names must be identifiers %(got number%)", authorize("tg.log('info', 'x', { 1 })"))
      assert_error_decision("log fields must be a table %(got string%)", authorize("tg.log('info', 'x', 'y')"))
      local many = {}
      for i = 1, 33 do many[i] = "f" .. i .. " = 1" end
      assert_error_decision("log has more than 32 fields", authorize("tg.log('info', 'x', {" .. table.concat(many, ",") .. "})"))
    end)

    it("truncates long messages and field values", function()
      authorize("tg.log('error', string.rep('m', 5000), { v = string.rep('f', 5000) })\nreturn tg.deny()")
      local entry = testing.logs()[1]
      assert.equal(4096 + #"...(truncated)", #entry.message)
      assert.equal(4096, #entry.fields.v)
    end)
  end)

  describe("ttl hook", function()
    local function ttl_of(expr)
      return with_authorize("return tg.deny()", "ttl = function(user) return " .. expr .. " end,"):ttl(SA)
    end

    it("returns seconds", function()
      assert.equal(30, ttl_of("30"))
      assert.equal(0, ttl_of("0"))
      assert.equal(1.5, ttl_of("1.5"))
    end)

    it("returns nil without an error when the policy has no ttl hook (the gateway's --cache-ttl applies)", function()
      assert.same({}, { with_authorize("return tg.deny()"):ttl(SA) })
    end)

    it("returns nil without an error when the hook returns nil (the default TTL)", function()
      assert.same({}, { ttl_of("nil") })
    end)

    it("refuses negative, infinite, NaN and non-numbers", function()
      for expr, got in pairs{ ["-1"] = "-1", ["math.huge"] = "inf", ["0/0"] = "nan", ["'30'"] = "string" } do
        local ttl, err = ttl_of(expr)
        assert.is_nil(ttl)
        assert.equal("inline.lua:2: ttl must return a finite number of seconds >= 0 (got " .. got .. ")", err)
      end
    end)

    it("reports errors", function()
      local ttl, err = ttl_of("user.nope.x")
      assert.is_nil(ttl)
      assert.matches("^inline.lua:2: attempt to index field 'nope'", err)
    end)
  end)

  describe("anonymous hook", function()
    local function anonymous_of(expr)
      return with_authorize("return tg.deny()", "anonymous = function(req) return " .. expr .. " end,")
        :anonymous(testing.request{ path = "/healthz" })
    end

    it("lets a caller in without a token only for true", function()
      assert.same({ true }, { anonymous_of("req.path == '/healthz'") })
      assert.same({ false }, { anonymous_of("false") })
      assert.same({ false }, { anonymous_of("nil") })
      assert.same({ false }, { with_authorize("return tg.deny()"):anonymous(testing.request()) })
    end)

    it("treats other values and errors as no", function()
      assert.same({ false, "inline.lua:2: anonymous must return a boolean (got string)" }, { anonymous_of("'yes'") })
      assert.same({ false, "inline.lua:2: anonymous must return a boolean (got number)" }, { anonymous_of("1") })
      local ok, err = anonymous_of("error('down')")
      assert.is_false(ok)
      -- `return error(...)` is a tail call: the hook's own line stands in for the lost one.
      assert.equal("inline.lua:2: in anonymous: down", err)
    end)
  end)
end)
