-- The gateway under a genuine kube-apiserver's own defences and failures: API Priority and
-- Fairness rejecting its TokenReviews, its own credential being rotated (and the old one
-- invalidated), and the API server restarting mid-run.
local kube_mod = require("support.kube")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local cjson = require("cjson")

local FLOWCONTROL = "/apis/flowcontrol.apiserver.k8s.io/v1beta3"


-- n distinct tokens of one new ServiceAccount (tokens minted in the same second with the
-- same claims are the same string, so each gets its own lifetime).
local function mint(k, ns, name, n)
  k:create_serviceaccount(ns, name)
  local tokens = {}
  for i = 1, n do tokens[i] = k:token(ns, name, { expiration = 3600 + i }) end
  return tokens
end

describe("resilience on a genuine kube-apiserver", function()
  local k

  setup(function()
    k = kube_mod.start()
    k:create_gateway_account("tokengate-system", "tokengate")
    k:create_namespace("team-a")
  end)

  teardown(function()
    if k then k:stop() end
  end)

  it("answers only 200 or 503 while API Priority and Fairness rejects its reviews, and all 200 after", function()
    local gw = gateway_mod.start{ fake = k:gateway_target("tokengate-system", "tokengate"), args = { "--policy", "none" } }
    finally(function() gw:stop() end)
    -- One concurrency share, Reject: the gateway's ServiceAccount alone is squeezed.
    k:api("POST", FLOWCONTROL .. "/prioritylevelconfigurations", {
      apiVersion = "flowcontrol.apiserver.k8s.io/v1beta3", kind = "PriorityLevelConfiguration",
      metadata = { name = "tokengate-squeeze" },
      spec = { type = "Limited", limited = { nominalConcurrencyShares = 1, limitResponse = { type = "Reject" } } } })
    k:api("POST", FLOWCONTROL .. "/flowschemas", {
      apiVersion = "flowcontrol.apiserver.k8s.io/v1beta3", kind = "FlowSchema",
      metadata = { name = "tokengate-squeeze" },
      spec = { priorityLevelConfiguration = { name = "tokengate-squeeze" }, matchingPrecedence = 500,
        distinguisherMethod = { type = "ByUser" },
        rules = { { subjects = { { kind = "ServiceAccount",
          serviceAccount = { namespace = "tokengate-system", name = "tokengate" } } },
          resourceRules = { { verbs = { "*" }, apiGroups = { "*" }, resources = { "*" }, clusterScope = true,
            namespaces = { "*" } } } } } } })
    -- The API server applies flow-control objects asynchronously: wait until its level is in force.
    proc.wait_until("the priority level to be in force", function()
      return k:metrics_text():find('priority_level="tokengate-squeeze"', 1, true) ~= nil
    end, 30)

    local tokens = mint(k, "team-a", "crowd", 100)
    local rejected_before = kube_mod.sum_metric(k:metrics_text(), "apiserver_flowcontrol_rejected_requests_total",
      { priority_level = "tokengate-squeeze" })
    local summary = gw:load{ c = 100, n = 100, tokens = tokens, path = "/x", timeout = 30 }
    local codes = summary.codes
    assert.equal(100, (codes["200"] or 0) + (codes["503"] or 0), cjson.encode(summary))
    assert.equal(0, summary.errors or 0, cjson.encode(summary))
    local rejected = kube_mod.sum_metric(k:metrics_text(), "apiserver_flowcontrol_rejected_requests_total",
      { priority_level = "tokengate-squeeze" }) - rejected_before
    -- The squeeze was real: the API server itself rejected some of the gateway's calls.
    assert.is_true(rejected > 0, "API Priority and Fairness rejected nothing: " .. cjson.encode(summary))
    io.stderr:write(string.format("APF burst: %d x 200, %d x 503; API server rejected %d calls (429)\n",
      codes["200"] or 0, codes["503"] or 0, rejected))

    k:api("DELETE", FLOWCONTROL .. "/flowschemas/tokengate-squeeze")
    k:api("DELETE", FLOWCONTROL .. "/prioritylevelconfigurations/tokengate-squeeze")
    -- Every token is admitted once the squeeze is gone; nothing in between is 401 or 500.
    local pending = {}
    for i = 1, #tokens do pending[i] = tokens[i] end
    proc.wait_until("every token to be admitted", function()
      local left = {}
      for _, t in ipairs(pending) do
        local status = gw:request(t, "/x").status
        assert.is_true(status == 200 or status == 503, "status " .. status)
        if status ~= 200 then left[#left + 1] = t end
      end
      pending = left
      return #pending == 0
    end, 90)
  end)

  it("follows its own credential's rotation, after the old one was invalidated", function()
    local pod1 = k:create_pod("tokengate-system", "tokengate-1", "tokengate")
    local target = k:gateway_target("tokengate-system", "tokengate", { pod = pod1 })
    local old_credential = proc.read_file(target.credential_file):gsub("%s+$", "")
    local gw = gateway_mod.start{ fake = target, args = { "--policy", "none" } }
    finally(function() gw:stop() end)
    local tokens = mint(k, "team-a", "rotation", 3)
    assert.equal(200, gw:request(tokens[1], "/x").status)

    -- The old credential dies with its Pod (after the API server's own cache lets go).
    k:delete_pod("tokengate-system", "tokengate-1")
    proc.wait_until("the old credential to be refused by the API server", function()
      return k:raw("GET", "/api", nil, { token = old_credential }).status == 401
    end, 60)
    -- Fail closed while the gateway has no valid credential; the warm token stays cached.
    local res = gw:request(tokens[2], "/x")
    assert.equal(503, res.status, res.body)
    assert.truthy(res.headers["retry-after"])
    assert.equal(200, gw:request(tokens[1], "/x").status)

    -- The kubelet writes the new token (an atomic replace); the gateway picks it up itself.
    local pod2 = k:create_pod("tokengate-system", "tokengate-2", "tokengate")
    local tmp = target.credential_file .. ".new"
    proc.write_file(tmp, k:token("tokengate-system", "tokengate", { pod = pod2, expiration = 3605 }) .. "\n")
    assert(os.rename(tmp, target.credential_file))
    proc.wait_until("a new token to be admitted with the new credential", function()
      return gw:request(tokens[2], "/x").status == 200
    end, 30)
    assert.equal(200, gw:request(tokens[3], "/x").status)
  end)

  it("keeps warm tokens answering while the API server restarts, and recovers by itself", function()
    local gw = gateway_mod.start{ fake = k:gateway_target("tokengate-system", "tokengate"), args = { "--policy", "none" } }
    finally(function() gw:stop() end)
    local tokens = mint(k, "team-a", "restart", 3)
    assert.equal(200, gw:request(tokens[1], "/x").status)

    k:stop_apiserver()
    assert.equal(200, gw:request(tokens[1], "/x").status) -- cached
    local res = gw:request(tokens[2], "/x")
    assert.equal(503, res.status, res.body)               -- cold: fail closed
    assert.truthy(res.headers["retry-after"])

    k:restart_apiserver()
    proc.wait_until("a cold token to be admitted after the restart", function()
      return gw:request(tokens[2], "/x").status == 200
    end, 60)
    assert.equal(200, gw:request(tokens[3], "/x").status)
    assert.equal(200, gw:request(tokens[1], "/x").status)
  end)
end)
