-- policies/custom_metrics.lua: decisions counted by namespace and decision, request body
-- sizes in a histogram.
local testing = require("tokengate.testing")

describe("policies/custom_metrics.lua", function()
  local policy
  local sender = testing.serviceaccount("team-a", "sender")

  lazy_setup(function()
    policy = testing.load_policy("policies/custom_metrics.lua")
  end)

  before_each(function()
    testing.reset()
  end)

  local function post(bytes)
    local headers = bytes and { ["Content-Length"] = tostring(bytes) } or {}
    return testing.request{ method = "POST", path = "/hooks", headers = headers }
  end

  describe("webhook_decisions_total", function()
    it("counts allowed ServiceAccount calls by namespace", function()
      assert.same({ kind = "allow", headers = {} }, policy:authorize(post(), sender))
      policy:authorize(post(), sender)
      policy:authorize(post(), testing.serviceaccount("team-b", "billing"))
      assert.equal(2, testing.metric("webhook_decisions_total", { namespace = "team-a", decision = "allow" }))
      assert.equal(1, testing.metric("webhook_decisions_total", { namespace = "team-b", decision = "allow" }))
      assert.is_nil(testing.metric("webhook_decisions_total", { namespace = "team-a", decision = "deny" }))
    end)

    it("counts denied callers that are not ServiceAccounts under an empty namespace", function()
      assert.same({ kind = "deny", reason = "only ServiceAccounts may call this service" },
        policy:authorize(post(), testing.user{ username = "jane@example.com" }))
      assert.equal(1, testing.metric("webhook_decisions_total", { namespace = "", decision = "deny" }))
    end)
  end)

  describe("webhook_request_body_bytes", function()
    it("observes the declared Content-Length per namespace", function()
      policy:authorize(post(300), sender)
      policy:authorize(post(5000), sender)
      assert.same({ count = 2, sum = 5300 }, testing.metric("webhook_request_body_bytes", { namespace = "team-a" }))
    end)

    it("observes nothing without a usable Content-Length", function()
      policy:authorize(post(), sender)
      policy:authorize(post("chunked"), sender)
      policy:authorize(post(-5), sender)
      assert.is_nil(testing.metric("webhook_request_body_bytes", { namespace = "team-a" }))
      assert.equal(3, testing.metric("webhook_decisions_total", { namespace = "team-a", decision = "allow" }))
    end)
  end)

  describe("on reload", function()
    it("keeps counting into the same series", function()
      policy:authorize(post(), sender)
      local reloaded = testing.load_policy("policies/custom_metrics.lua")
      reloaded:authorize(post(), sender)
      assert.equal(2, testing.metric("webhook_decisions_total", { namespace = "team-a", decision = "allow" }))
    end)

    it("fails when a new version declares a metric with other labels", function()
      -- pcall, not assert.has_error: luassert strips the "file:line:" this spec checks.
      local ok, err = pcall(testing.load_source, [[
        local tg = require("tokengate")
        tg.metrics.counter("webhook_decisions_total", "Decisions", { "namespace" })
        return { authorize = function() return tg.allow() end }]], "policies/custom_metrics.lua")
      assert.is_false(ok)
      assert.equal("policies/custom_metrics.lua:2: cannot declare counter webhook_decisions_total: "
        .. "webhook_decisions_total is already declared with labels {namespace, decision}", err)
    end)
  end)
end)
