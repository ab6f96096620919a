-- SubjectAccessReview on a genuine kube-apiserver, against RBAC objects the spec creates:
-- non-resource URLs with the default policy, resource attributes with
-- policies/resource_mapping.lua. The API server's own count of SubjectAccessReviews shows
-- the verdicts are cached and single-flighted.
local kube_mod = require("support.kube")
local gateway_mod = require("support.gateway")
local http = require("support.http")

-- A request with its own method (the gateway judges the request itself).
local function call(gw, method, token, path)
  return http.request{ method = method, url = gw.url .. path, headers = { "Authorization: Bearer " .. token },
    body = method == "POST" and "" or nil }
end

describe("SubjectAccessReview on a genuine kube-apiserver", function()
  local k, target

  setup(function()
    k = kube_mod.start()
    k:create_gateway_account("tokengate-system", "tokengate")
    for _, ns in ipairs{ "team-a", "team-b" } do k:create_namespace(ns) end
    target = k:gateway_target("tokengate-system", "tokengate")
  end)

  teardown(function()
    if k then k:stop() end
  end)

  describe("with the default policy (non-resource URLs)", function()
    local gw, caller, stranger
    setup(function()
      gw = gateway_mod.start{ fake = target }
      k:create_serviceaccount("team-a", "hooks-caller")
      k:create_serviceaccount("team-a", "stranger")
      k:grant{ kind = "ClusterRole", name = "spec:hooks-caller",
        rules = { { nonResourceURLs = { "/hooks/*" }, verbs = { "get", "create" } } },
        subject = { kind = "ServiceAccount", namespace = "team-a", name = "hooks-caller" } }
      caller = k:token("team-a", "hooks-caller")
      stranger = k:token("team-a", "stranger")
    end)
    teardown(function() if gw then gw:stop() end end)

    it("allows exactly what the ClusterRole grants", function()
      assert.equal(200, gw:request(caller, "/hooks/deliver").status)
      assert.equal(200, call(gw, "POST", caller, "/hooks/deliver").status)   -- create
      assert.equal(403, call(gw, "DELETE", caller, "/hooks/deliver").status) -- delete: not granted
      assert.equal(403, gw:request(caller, "/admin/wipe").status)
      assert.equal(403, gw:request(stranger, "/hooks/deliver").status)
    end)

    it("asks the API server once per identity and attributes", function()
      local before = k:subjectaccessreviews()
      for _ = 1, 5 do assert.equal(200, gw:request(caller, "/hooks/once").status) end
      for _ = 1, 5 do assert.equal(403, gw:request(stranger, "/hooks/once").status) end
      assert.equal(2, k:subjectaccessreviews() - before)
    end)

    it("single-flights 100 concurrent requests for one new path into one SubjectAccessReview", function()
      assert.equal(200, gw:request(caller, "/hooks/warm").status) -- the TokenReview is cached
      local before = k:subjectaccessreviews()
      local summary = gw:load{ c = 100, n = 100, tokens = { caller }, path = "/hooks/burst" }
      assert.equal(100, summary.codes["200"], require("cjson").encode(summary))
      assert.equal(1, k:subjectaccessreviews() - before)
    end)
  end)

  describe("with policies/resource_mapping.lua (resource attributes, namespaced Roles)", function()
    local gw, writer
    setup(function()
      gw = gateway_mod.start{ fake = target, args = { "--policy", "policies/resource_mapping.lua" } }
      k:create_serviceaccount("team-a", "writer")
      k:grant{ kind = "Role", namespace = "team-a", name = "deliveries-writer",
        rules = { { apiGroups = { "hooks.example.com" }, resources = { "deliveries" }, verbs = { "create", "get" } } },
        subject = { kind = "ServiceAccount", namespace = "team-a", name = "writer" } }
      writer = k:token("team-a", "writer")
    end)
    teardown(function() if gw then gw:stop() end end)

    it("allows the verbs the Role grants in its namespace only", function()
      assert.equal(200, gw:request(writer, "/apis/hooks/team-a/deliveries/d1").status)  -- get
      assert.equal(403, gw:request(writer, "/apis/hooks/team-a/deliveries").status)     -- list
      assert.equal(403, gw:request(writer, "/apis/hooks/team-b/deliveries/d1").status)  -- other namespace
      assert.equal(403, gw:request(writer, "/apis/hooks/team-a/secrets/s1").status)     -- other resource
      assert.equal(403, gw:request(writer, "/not/a/hook").status)                        -- unmapped: no SAR
    end)

    it("matches what the API server answers for the same attributes", function()
      local function sar(verb, ns, name)
        local body = k:api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
          apiVersion = "authorization.k8s.io/v1", kind = "SubjectAccessReview",
          spec = { user = "system:serviceaccount:team-a:writer",
            groups = { "system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated" },
            resourceAttributes = { namespace = ns, verb = verb, group = "hooks.example.com", resource = "deliveries",
              name = name } } })
        return body.status.allowed == true
      end
      assert.is_true(sar("get", "team-a", "d2"))
      assert.equal(200, gw:request(writer, "/apis/hooks/team-a/deliveries/d2").status)
      assert.is_false(sar("delete", "team-a", "d2"))
      assert.equal(403, call(gw, "DELETE", writer, "/apis/hooks/team-a/deliveries/d2").status)
    end)
  end)
end)
