-- policies/namespace_allowlist.lua: ServiceAccounts of listed namespaces get in, with
-- their namespace in X-Tenant; everyone else is denied with a reason.
local testing = require("tokengate.testing")

describe("policies/namespace_allowlist.lua", function()
  local policy
  local req = testing.request{ method = "POST", path = "/hooks" }

  lazy_setup(function()
    policy = testing.load_policy("policies/namespace_allowlist.lua")
  end)

  describe("when the caller's namespace is allowed", function()
    for _, ns in ipairs{ "team-a", "team-b" } do
      it("allows " .. ns .. " and names the tenant in X-Tenant", function()
        assert.same({ kind = "allow", headers = { { "X-Tenant", ns } } },
          policy:authorize(req, testing.serviceaccount(ns, "sender")))
      end)
    end
  end)

  describe("when it is not", function()
    it("denies other namespaces, naming the namespace", function()
      assert.same({ kind = "deny", reason = "namespace payments is not allowed to call this service" },
        policy:authorize(req, testing.serviceaccount("payments", "charger")))
    end)

    it("denies callers that are not ServiceAccounts", function()
      assert.same({ kind = "deny", reason = "only ServiceAccounts may call this service" },
        policy:authorize(req, testing.user{ username = "jane@example.com" }))
    end)

    it("is not fooled by a group naming an allowed namespace", function()
      local user = testing.user{ username = "mallory", groups = { "system:serviceaccounts:team-a" } }
      assert.equal("deny", policy:authorize(req, user).kind)
    end)

    it("is not fooled by an X-Tenant header from the client", function()
      local spoofed = testing.request{ headers = { ["X-Tenant"] = "team-a" } }
      assert.equal("deny", policy:authorize(spoofed, testing.serviceaccount("payments", "charger")).kind)
      assert.same({ { "X-Tenant", "team-b" } }, policy:authorize(spoofed, testing.serviceaccount("team-b", "s")).headers)
    end)
  end)

  it("lets no one in without a token and keeps the default TTL", function()
    assert.is_false(policy:anonymous(req))
    assert.same({}, { policy:ttl(testing.serviceaccount("team-a", "sender")) })
  end)
end)
