-- tokengate.testing, the kit the policy specs use: its helpers and its stand-in host.
local testing = require("tokengate.testing")

local SOURCE = [[
local tg = require("tokengate")
local calls = tg.metrics.counter("kit_calls_total", "Calls", { "path" })
local level = tg.metrics.gauge("kit_level", "Level")
local size = tg.metrics.histogram("kit_size", "Size", nil, { 1, 10 })
return {
  audiences = { "aud" },
  ttl = function(user) return #user.groups end,
  anonymous = function(req) return req.path == "/open" end,
  authorize = function(req, user)
    calls:inc{ path = req.path }
    level:set(nil, 3)
    size:observe(nil, 4)
    tg.log("debug", "seen", { user = user.username })
    return tg.deny(req.method .. " " .. req.path .. " " .. req.query .. " " .. req.host .. " " .. req.client_ip)
  end,
}]]

describe("tokengate.testing", function()
  local p

  lazy_setup(function()
    p = testing.load_source(SOURCE, "kit.lua")
  end)

  before_each(function()
    testing.reset()
  end)

  describe("request", function()
    it("prints readably: fields and sorted headers, not an empty table", function()
      local req = testing.request{ method = "POST", path = "/x?a=1", headers = { ["X-B"] = "2", ["Content-Type"] = "t" } }
      assert.equal('req{ method = "POST", path = "/x", query = "a=1", host = "svc", client_ip = "10.0.0.1", ' ..
        'headers = { ["content-type"] = "t", ["x-b"] = "2" } }', tostring(req))
    end)
  end)

  describe("load_policy", function()
    it("raises when the file cannot be read", function()
      assert.error_matches(function() testing.load_policy("policies/no-such-policy.lua") end,
        "cannot read policy: policies/no%-such%-policy.lua: No such file or directory")
    end)

    it("raises the sandbox's message, with file and line, for a broken policy", function()
      local ok, err = pcall(testing.load_source, "return {\nauthorize = 1 +\n}", "broken.lua")
      assert.is_false(ok)
      assert.matches("^broken.lua:3: unexpected symbol near '}'", err)
    end)

    it("exposes the audiences", function()
      assert.same({ "aud" }, p.audiences)
    end)
  end)

  describe("request", function()
    it("has defaults", function()
      -- method, path, query (empty), host, client_ip
      assert.equal("GET /  svc 10.0.0.1", p:authorize(testing.request(), testing.user()).reason)
    end)

    it("splits a query string off the path", function()
      local req = testing.request{ path = "/a?b=1&c" }
      assert.equal("/a", req.path)
      assert.equal("b=1&c", req.query)
      assert.equal("/a?x", testing.request{ path = "/a?x", query = "given" }.path)
    end)

    it("accepts a plain table where a request is expected", function()
      assert.equal("PUT /x  svc 10.0.0.1", p:authorize({ method = "PUT", path = "/x" }, testing.user()).reason)
      assert.equal("GET /  svc 10.0.0.1", p:authorize(nil, testing.user()).reason)
    end)

    it("refuses unknown fields, catching typos in specs", function()
      assert.has_error(function() testing.request{ pth = "/" } end, "testing.request: unknown field 'pth'")
      assert.has_error(function() testing.request("GET") end, "testing.request expects a table (got string)")
    end)
  end)

  describe("user and serviceaccount", function()
    it("builds a default user", function()
      assert.same({ username = "test-user", uid = "test-uid", groups = { "system:authenticated" }, extra = {} },
        testing.user())
    end)

    it("builds a ServiceAccount with its three groups", function()
      assert.same({
        username = "system:serviceaccount:team-a:sender", uid = "uid-team-a-sender",
        groups = { "system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated" },
        extra = { ["authentication.kubernetes.io/pod-name"] = { "sender-1" } },
        namespace = "team-a", serviceaccount = "sender",
      }, testing.serviceaccount("team-a", "sender", { ["authentication.kubernetes.io/pod-name"] = { "sender-1" } }))
    end)

    it("refuses bad arguments", function()
      assert.has_error(function() testing.serviceaccount("team-a") end,
        "testing.serviceaccount(namespace, name) expects two strings")
      assert.has_error(function() testing.user{ name = "x" } end, "testing.user: unknown field 'name'")
    end)

    it("is required by authorize and ttl", function()
      assert.has_error(function() p:authorize(testing.request()) end,
        "pass a user: testing.user{...} or testing.serviceaccount(namespace, name)")
      assert.has_error(function() p:ttl() end)
    end)

    it("accepts a plain table where a user is expected", function()
      assert.equal(2, p:ttl({ username = "u", groups = { "a", "b" } }))
    end)
  end)

  describe("hooks", function()
    it("calls ttl and anonymous", function()
      assert.equal(3, p:ttl(testing.serviceaccount("a", "b")))
      assert.is_true(p:anonymous(testing.request{ path = "/open" }))
      assert.is_false(p:anonymous({ path = "/closed" }))
    end)
  end)

  describe("metric", function()
    it("reads counters, gauges and histograms", function()
      p:authorize(testing.request{ path = "/m" }, testing.user())
      assert.equal(1, testing.metric("kit_calls_total", { path = "/m" }))
      assert.equal(3, testing.metric("kit_level"))
      assert.same({ count = 1, sum = 4 }, testing.metric("kit_size", {}))
    end)

    it("returns nil for a label set never updated", function()
      assert.is_nil(testing.metric("kit_calls_total", { path = "/never" }))
      assert.is_nil(testing.metric("kit_size"))
    end)

    it("raises for undeclared metrics and labels", function()
      assert.has_error(function() testing.metric("kit_typo_total") end,
        "testing.metric: no metric named 'kit_typo_total' was declared")
      assert.has_error(function() testing.metric("kit_calls_total", { route = "/" }) end,
        "testing.metric: kit_calls_total has no label 'route'")
      assert.has_error(function() testing.metric("kit_calls_total", "/") end, "testing.metric: labels must be a table")
    end)
  end)

  describe("logs", function()
    it("records tg.log calls as copies", function()
      p:authorize(testing.request(), testing.user())
      local logs = testing.logs()
      assert.same({ { level = "debug", message = "seen", fields = { user = "test-user" } } }, logs)
      logs[1].fields.user = "changed"
      assert.equal("test-user", testing.logs()[1].fields.user)
    end)
  end)

  describe("reset", function()
    it("clears values and logs but keeps declarations", function()
      p:authorize(testing.request(), testing.user())
      testing.reset()
      assert.same({}, testing.logs())
      assert.is_nil(testing.metric("kit_calls_total", { path = "/" }))
      local ok, err = pcall(testing.load_source,
        "require('tokengate').metrics.gauge('kit_calls_total', 'x', { 'path' })\nreturn {}", "again.lua")
      assert.is_false(ok)
      assert.equal("again.lua:1: cannot declare gauge kit_calls_total: kit_calls_total is already declared as a counter", err)
    end)
  end)

  describe("the stand-in host", function()
    local host = package.loaded["tokengate.host"]

    it("refuses operations a metric does not have, like the C host", function()
      local handle = host.metrics.kit_level
      assert.has_error(function() host.metric_update(handle, "observe", {}, 1) end,
        "testing host: observe is not an operation of a gauge")
      assert.has_error(function() host.metric_update({}, "inc", {}, 1) end, "testing host: unknown metric handle")
      assert.has_error(function() host.metric_update(host.metrics.kit_calls_total, "inc", {}, 1) end,
        "testing host: wrong number of label values for kit_calls_total")
    end)

    it("lets help text change on re-declaration", function()
      assert.is_truthy(host.metric_declare("counter", "kit_calls_total", "New help", { "path" }, nil))
      assert.equal("New help", host.metrics.kit_calls_total.help)
    end)
  end)

  describe("when tokengate was loaded before the kit", function()
    it("refuses to install its host", function()
      local names = { "tokengate.testing", "tokengate.host", "tokengate" }
      local saved = {}
      for _, name in ipairs(names) do saved[name] = package.loaded[name] end
      -- insulate() would not put back entries a test removes: restore them by hand.
      finally(function()
        for _, name in ipairs(names) do package.loaded[name] = saved[name] end
      end)
      package.loaded["tokengate.testing"] = nil
      package.loaded["tokengate.host"] = nil
      package.loaded["tokengate"] = {}
      assert.error_matches(function() require("tokengate.testing") end,
        "require tokengate.testing before tokengate")
    end)
  end)
end)
