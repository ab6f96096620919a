-- policies/per_namespace_ttl.lua: allow every authenticated caller, cache per namespace.
local testing = require("tokengate.testing")

describe("policies/per_namespace_ttl.lua", function()
  local policy

  lazy_setup(function()
    policy = testing.load_policy("policies/per_namespace_ttl.lua")
  end)

  describe("ttl", function()
    it("caches payments verdicts for 30 s", function()
      assert.equal(30, policy:ttl(testing.serviceaccount("payments", "charger")))
    end)

    it("caches kube-system verdicts for 10 s", function()
      assert.equal(10, policy:ttl(testing.serviceaccount("kube-system", "controller")))
    end)

    it("caches other namespaces for 120 s", function()
      assert.equal(120, policy:ttl(testing.serviceaccount("team-a", "sender")))
      assert.equal(120, policy:ttl(testing.serviceaccount("default", "default")))
    end)

    it("caches callers that are not ServiceAccounts for 60 s", function()
      assert.equal(60, policy:ttl(testing.user{ username = "jane@example.com" }))
      assert.equal(60, policy:ttl(testing.user{ username = "system:node:worker-1", groups = { "system:nodes" } }))
    end)

    it("never errors", function()
      local ttl, err = policy:ttl(testing.serviceaccount("payments", "charger"))
      assert.equal(30, ttl)
      assert.is_nil(err)
    end)
  end)

  describe("authorize", function()
    it("allows every authenticated caller without extra headers", function()
      for _, user in ipairs{ testing.serviceaccount("payments", "charger"),
        testing.serviceaccount("kube-system", "controller"), testing.user{ username = "jane@example.com" } } do
        assert.same({ kind = "allow", headers = {} },
          policy:authorize(testing.request{ method = "POST", path = "/hooks" }, user))
      end
    end)

    it("lets no one in without a token", function()
      assert.is_false(policy:anonymous(testing.request()))
    end)
  end)
end)
