-- Conformance on a genuine kube-apiserver (spec/support/kube.lua): authentication of real
-- ServiceAccount tokens, pod-bound tokens, audiences, expired and foreign tokens, and
-- single-flight as the API server itself counts it (apiserver_request_total).
local kube_mod = require("support.kube")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")

local POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
local POD_UID_KEY = "authentication.kubernetes.io/pod-uid"

describe("a genuine kube-apiserver", function()
  local k, target, gw, policy_file

  setup(function()
    k = kube_mod.start()
    k:create_gateway_account("tokengate-system", "tokengate")
    k:create_namespace("team-a")
    target = k:gateway_target("tokengate-system", "tokengate")
    -- Allows every authenticated caller and shows the pod-bound token's extras, so the
    -- spec sees exactly what the API server said about the caller.
    policy_file = k.dir .. "/show-extras.lua"
    proc.write_file(policy_file, [[
local tg = require("tokengate")
return {
  authorize = function(req, user)
    local extra = user.extra or {}
    local name = extra["]] .. POD_NAME_KEY .. [["]
    local uid = extra["]] .. POD_UID_KEY .. [["]
    return tg.allow{ headers = {
      ["X-Pod-Name"] = name and name[1] or "-",
      ["X-Pod-Uid"] = uid and uid[1] or "-",
      ["X-Namespace"] = user.namespace or "-",
    } }
  end,
}
]])
    gw = gateway_mod.start{ fake = target, args = { "--policy", policy_file } }
  end)

  teardown(function()
    if gw then gw:stop() end
    if k then k:stop() end
  end)

  it("admits a bound ServiceAccount token with the identity the API server gives", function()
    local sa = k:create_serviceaccount("team-a", "caller")
    local token = k:token("team-a", "caller")
    local res = gw:request(token, "/anything")
    assert.equal(200, res.status, res.body)
    assert.equal("system:serviceaccount:team-a:caller", res.headers["x-remote-user"])
    assert.equal(sa.metadata.uid, res.headers["x-remote-uid"])
    assert.equal("system:serviceaccounts|system:serviceaccounts:team-a|system:authenticated",
      res.headers["x-remote-groups"])
    assert.equal("team-a", res.headers["x-namespace"])
    assert.equal("-", res.headers["x-pod-name"])
  end)

  it("passes a pod-bound token's pod-name and pod-uid extras to the policy", function()
    k:create_serviceaccount("team-a", "runner")
    local pod = k:create_pod("team-a", "runner-0", "runner")
    local token = k:token("team-a", "runner", { pod = pod })
    local res = gw:request(token, "/x")
    assert.equal(200, res.status, res.body)
    assert.equal("runner-0", res.headers["x-pod-name"])
    assert.equal(pod.metadata.uid, res.headers["x-pod-uid"])
    assert.equal("system:serviceaccount:team-a:runner", res.headers["x-remote-user"])
  end)

  it("refuses an expired token signed with the cluster's own key", function()
    local sa = k:create_serviceaccount("team-a", "expired")
    local now = os.time()
    local token = k:sign_token("sa", "team-a", "expired", sa.metadata.uid,
      { iat = now - 7200, nbf = now - 7200, exp = now - 3600 })
    -- The API server agrees with itself first: not authenticated.
    assert.is_not_true(k:tokenreview(token).authenticated)
    local res = gw:request(token, "/x")
    assert.equal(401, res.status, res.body)
    assert.truthy(res.headers["www-authenticate"])
  end)

  it("refuses a well-formed token signed with another cluster's key", function()
    local sa = k:create_serviceaccount("team-a", "foreign")
    local genuine = k:sign_token("sa", "team-a", "foreign", sa.metadata.uid)
    local forged = k:sign_token("other-sa", "team-a", "foreign", sa.metadata.uid)
    -- The same claims signed with the cluster's key are good: only the key differs.
    assert.equal(200, gw:request(genuine, "/x").status)
    assert.equal(401, gw:request(forged, "/x").status)
    assert.equal(401, gw:request("not-a-jwt-at-all", "/x").status)
  end)

  it("counts one TokenReview at the API server for 100 concurrent requests with one new token", function()
    k:create_serviceaccount("team-a", "burst")
    local token = k:token("team-a", "burst")
    local before = k:tokenreviews()
    local summary = gw:load{ c = 100, n = 100, tokens = { token }, path = "/burst" }
    assert.equal(100, summary.codes["200"], require("cjson").encode(summary))
    assert.equal(1, k:tokenreviews() - before)
    -- The cache answers from now on: still one.
    summary = gw:load{ c = 20, n = 200, tokens = { token }, path = "/burst" }
    assert.equal(200, summary.codes["200"])
    assert.equal(1, k:tokenreviews() - before)
  end)

  describe("with --audiences", function()
    local gw_aud
    setup(function()
      gw_aud = gateway_mod.start{ fake = target, args = { "--policy", policy_file, "--audiences", "tokengate.example" } }
    end)
    teardown(function() if gw_aud then gw_aud:stop() end end)

    it("admits a token minted for that audience and refuses one minted for the API server", function()
      k:create_serviceaccount("team-a", "aud")
      local for_us = k:token("team-a", "aud", { audiences = { "tokengate.example" } })
      local for_apiserver = k:token("team-a", "aud")
      local other = k:token("team-a", "aud", { audiences = { "someone-else.example" } })
      assert.equal(200, gw_aud:request(for_us, "/x").status)
      assert.equal(401, gw_aud:request(for_apiserver, "/x").status)
      assert.equal(401, gw_aud:request(other, "/x").status)
      -- Without --audiences the API server's default audience is the one that counts.
      assert.equal(200, gw:request(for_apiserver, "/x").status)
      assert.equal(401, gw:request(for_us, "/x").status)
    end)
  end)
end)
