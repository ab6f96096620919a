-- policies/resource_mapping.lua: /apis/hooks/<ns>/<resource>[/<name>] → resource
-- SubjectAccessReviews of hooks.example.com; everything else denied.
local testing = require("tokengate.testing")

describe("policies/resource_mapping.lua", function()
  local policy
  local caller = testing.serviceaccount("team-b", "sender")

  lazy_setup(function()
    policy = testing.load_policy("policies/resource_mapping.lua")
  end)

  local function decide(method, path)
    return policy:authorize(testing.request{ method = method, path = path }, caller)
  end

  local function attributes(verb, name)
    return { kind = "resource", namespace = "team-a", group = "hooks.example.com", version = "v1",
      resource = "deliveries", subresource = "", name = name or "", verb = verb }
  end

  describe("when the path names a collection", function()
    for method, verb in pairs{ GET = "list", HEAD = "list", POST = "create", DELETE = "deletecollection" } do
      it("asks " .. verb .. " for " .. method, function()
        assert.same({ kind = "sar", attributes = attributes(verb) }, decide(method, "/apis/hooks/team-a/deliveries"))
      end)
    end

    it("denies methods that make no sense on a collection", function()
      assert.same({ kind = "deny", reason = "method PUT is not supported here" },
        decide("PUT", "/apis/hooks/team-a/deliveries"))
    end)
  end)

  describe("when the path names one object", function()
    for method, verb in pairs{ GET = "get", HEAD = "get", PUT = "update", PATCH = "patch", DELETE = "delete" } do
      it("asks " .. verb .. " for " .. method, function()
        assert.same({ kind = "sar", attributes = attributes(verb, "d-42") }, decide(method, "/apis/hooks/team-a/deliveries/d-42"))
      end)
    end

    it("denies POST to an object", function()
      assert.same({ kind = "deny", reason = "method POST is not supported here" },
        decide("POST", "/apis/hooks/team-a/deliveries/d-42"))
    end)
  end)

  describe("namespace", function()
    it("comes from the path, not the caller: RBAC in that namespace decides", function()
      assert.equal("team-a", decide("POST", "/apis/hooks/team-a/deliveries").attributes.namespace)
      assert.equal("team-b", caller.namespace)
    end)
  end)

  describe("when the path is not a hooks path", function()
    local paths = {
      "/", "/healthz", "/apis/hooks", "/apis/hooks/team-a", "/apis/hooks/team-a/deliveries/d-1/status",
      "/apis/other/team-a/deliveries", "/apis/hooks/Team-A/deliveries", "/apis/hooks/team-a-/deliveries",
      "/apis/hooks/-team/deliveries", "/apis/hooks/team_a/deliveries", "/apis/hooks//deliveries",
      "/apis/hooks/team-a/deliveries/", "/apis/hooks/../deliveries", "/apis/hooks/team-a/deliveries/D-1",
      "/apis/hooks/" .. string.rep("a", 64) .. "/deliveries",
    }
    for _, path in ipairs(paths) do
      it("denies " .. path:sub(1, 60), function()
        assert.same({ kind = "deny", reason = "no rule for this path" }, decide("GET", path))
      end)
    end

    it("accepts a 63-byte namespace", function()
      local ns = string.rep("a", 63)
      assert.equal(ns, decide("GET", "/apis/hooks/" .. ns .. "/deliveries").attributes.namespace)
    end)
  end)
end)
