-- policies/default.lua: a non-resource SubjectAccessReview of path and verb, as
-- kube-rbac-proxy asks it.
local testing = require("tokengate.testing")

describe("policies/default.lua", function()
  local policy
  local sender = testing.serviceaccount("team-a", "sender")

  lazy_setup(function()
    policy = testing.load_policy("policies/default.lua")
  end)

  before_each(function()
    testing.reset()
  end)

  describe("when an authenticated caller makes a request", function()
    it("asks a non-resource SubjectAccessReview of the path and verb", function()
      assert.same({ kind = "sar", attributes = { kind = "nonresource", path = "/hooks/deliveries", verb = "create" } },
        policy:authorize(testing.request{ method = "POST", path = "/hooks/deliveries" }, sender))
    end)

    local verbs = {
      GET = "get", HEAD = "get", POST = "create", PUT = "update", PATCH = "patch", DELETE = "delete",
      OPTIONS = "options", PROPFIND = "propfind",
    }
    for method, verb in pairs(verbs) do
      it("maps " .. method .. " to the verb " .. verb, function()
        local d = policy:authorize(testing.request{ method = method, path = "/x" }, sender)
        assert.equal("sar", d.kind)
        assert.equal(verb, d.attributes.verb)
      end)
    end

    it("leaves the query string out of the path", function()
      local d = policy:authorize(testing.request{ path = "/metrics?format=json" }, sender)
      assert.same({ kind = "nonresource", path = "/metrics", verb = "get" }, d.attributes)
    end)

    it("asks the same question for users that are not ServiceAccounts", function()
      local d = policy:authorize(testing.request{ path = "/healthz" }, testing.user{ username = "jane@example.com" })
      assert.same({ kind = "nonresource", path = "/healthz", verb = "get" }, d.attributes)
    end)

    it("asks about paths up to the SubjectAccessReview limit", function()
      local path = "/" .. string.rep("p", 255)
      assert.equal(path, policy:authorize(testing.request{ path = path }, sender).attributes.path)
    end)

    it("denies longer paths with a reason instead of failing", function()
      assert.same({ kind = "deny", reason = "request path is too long to authorize" },
        policy:authorize(testing.request{ path = "/" .. string.rep("p", 256) }, sender))
    end)
  end)

  describe("decisions it has made before", function()
    -- The hook itself, called as the gateway calls it, to see which table it returns.
    local function raw_authorize(method, path)
      return policy.policy.authorize(testing.request{ method = method, path = path })
    end

    it("answers a repeated method and path with the decision made the first time", function()
      local first = raw_authorize("GET", "/memo/a")
      assert.equal(first, raw_authorize("GET", "/memo/a"))
      assert.are_not.equal(first, raw_authorize("GET", "/memo/b"))
    end)

    it("keeps methods apart", function()
      assert.equal("get", policy:authorize(testing.request{ method = "GET", path = "/memo/m" }, sender).attributes.verb)
      assert.equal("create", policy:authorize(testing.request{ method = "POST", path = "/memo/m" }, sender).attributes.verb)
      assert.equal("get", policy:authorize(testing.request{ method = "GET", path = "/memo/m" }, sender).attributes.verb)
    end)

    it("is not changed by a change to a decision table it returned", function()
      local d = raw_authorize("GET", "/memo/c")
      d.attributes.path, d.decision = "/admin", "allow"
      assert.same({ kind = "sar", attributes = { kind = "nonresource", path = "/memo/c", verb = "get" } },
        policy:authorize(testing.request{ path = "/memo/c" }, sender))
    end)

    it("starts over once it holds 1024 decisions, answering as before", function()
      local first = raw_authorize("GET", "/memo/0")
      for i = 1, 1100 do
        local path = "/memo/" .. i
        assert.same({ kind = "nonresource", path = path, verb = "get" },
          policy:authorize(testing.request{ path = path }, sender).attributes)
      end
      local again = raw_authorize("GET", "/memo/0")
      assert.are_not.equal(first, again)
      assert.same({ kind = "sar", attributes = { kind = "nonresource", path = "/memo/0", verb = "get" } },
        policy:authorize(testing.request{ path = "/memo/0" }, sender))
    end)
  end)

  describe("hooks it leaves to the gateway", function()
    it("has no ttl hook, so --cache-ttl applies", function()
      assert.same({}, { policy:ttl(sender) })
    end)

    it("lets no one in without a token", function()
      assert.same({ false }, { policy:anonymous(testing.request{ path = "/healthz" }) })
    end)

    it("declares no audiences, so --audiences applies", function()
      assert.is_nil(policy.audiences)
    end)

    it("logs nothing on the request path", function()
      policy:authorize(testing.request(), sender)
      assert.same({}, testing.logs())
    end)
  end)
end)
