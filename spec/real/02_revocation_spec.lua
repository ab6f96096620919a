-- Revocation against a genuine kube-apiserver. The API server caches successful token
-- authentications itself (about 10 s in 1.26), so right after a ServiceAccount or Pod is
-- deleted a TokenReview of its token still answers authenticated:true. The gateway's watch
-- sees the deletion and evicts the cached identity, and must then refuse the token whatever
-- a TokenReview says during that window (docs/REVOCATION.md: tombstones).
local kube_mod = require("support.kube")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")

local SA_UP = 'gateway_revocation_watch_up{resource="serviceaccounts"}'
local POD_UP = 'gateway_revocation_watch_up{resource="pods"}'
local function deleted_events(resource)
  return string.format('gateway_revocation_watch_events_total{resource="%s",type="DELETED"}', resource)
end


describe("revocation on a genuine kube-apiserver", function()
  local k, gw

  setup(function()
    k = kube_mod.start()
    k:create_gateway_account("tokengate-system", "tokengate", { watch = true })
    k:create_namespace("team-a")
    gw = gateway_mod.start{ fake = k:gateway_target("tokengate-system", "tokengate"),
      args = { "--policy", "none", "--watch-revocations", "--watch-pods" } }
    proc.wait_until("the revocation watches to be up", function()
      local m = gw:metrics()
      return m[SA_UP] == 1 and m[POD_UP] == 1
    end)
  end)

  teardown(function()
    if gw then gw:stop() end
    if k then k:stop() end
  end)

  -- Requests token every 0.25 s for seconds s; returns the set of statuses seen.
  local function statuses_during(token, seconds)
    local seen, deadline = {}, proc.now() + seconds
    repeat
      local status = gw:request(token, "/x").status
      seen[status] = (seen[status] or 0) + 1
      proc.sleep(0.25)
    until proc.now() >= deadline
    return seen
  end

  -- Requests each token n times; asserts 200 and that the gateway asked nothing new.
  local function assert_still_cached(tokens, n)
    local misses = gw:metric("gateway_tokenreview_cache_misses_total")
    local apiserver_reviews = k:tokenreviews()
    for _ = 1, n do
      for name, token in pairs(tokens) do assert.equal(200, gw:request(token, "/x").status, name) end
    end
    assert.equal(misses, gw:metric("gateway_tokenreview_cache_misses_total"))
    assert.equal(apiserver_reviews, k:tokenreviews())
  end

  -- Deletes an object (delete()) whose identity token is cached, and asserts what the
  -- issue promises: the API server itself still vouches for the token (so the spec tests
  -- the tombstone, not the API server), the gateway refuses it soon after the deletion,
  -- at every request for 6 s after, and again 15 s after; and counts the refusal.
  local function assert_revoked(token, resource, kind, delete)
    local events = gw:metric(deleted_events(resource))
    delete()
    local deleted_at = proc.now()
    assert.is_true(k:tokenreview(token).authenticated == true,
      "the API server no longer caches the verdict: this spec would not test the tombstone")
    proc.wait_until("the watch to see the deletion", function()
      return gw:metric(deleted_events(resource)) > events
    end)
    -- Once the gateway has seen the deletion, the very next request is refused.
    assert.equal(401, gw:request(token, "/x").status)
    local refused_after = proc.now() - deleted_at
    io.stderr:write(string.format("[revocation] %s deleted: 401 %.3f s later\n", kind, refused_after))
    -- The watch's delivery time depends on the machine's load: the generous bound is the API
    -- server's own 10 s token cache, inside which only the gateway's tombstone can refuse.
    assert.is_true(refused_after < 10, string.format("refused only %.2f s after the deletion", refused_after))
    -- Through the API server's own cache window and beyond: never 200 again.
    local seen = statuses_during(token, 6)
    assert.same({ [401] = seen[401] }, seen)
    proc.sleep(math.max(0, deleted_at + 15 - proc.now()))
    assert.equal(401, gw:request(token, "/x").status)
    assert.is_true(gw:metric('gateway_revocation_refused_total{kind="' .. kind .. '"}') >= 1)
  end

  it("refuses a deleted ServiceAccount's cached token at once and keeps refusing it", function()
    k:create_serviceaccount("team-a", "doomed")
    k:create_serviceaccount("team-a", "bystander")
    local doomed = k:token("team-a", "doomed")
    local bystander = k:token("team-a", "bystander")
    assert.equal(200, gw:request(doomed, "/x").status)
    assert.equal(200, gw:request(bystander, "/x").status)
    assert_revoked(doomed, "serviceaccounts", "serviceaccount",
      function() k:delete_serviceaccount("team-a", "doomed") end)
    assert_still_cached({ bystander = bystander }, 5)
  end)

  it("refuses a deleted Pod's bound token and keeps the rest of its ServiceAccount cached", function()
    k:create_serviceaccount("team-a", "runner")
    local pod0 = k:create_pod("team-a", "runner-0", "runner")
    local pod1 = k:create_pod("team-a", "runner-1", "runner")
    local bound0 = k:token("team-a", "runner", { pod = pod0 })
    local bound1 = k:token("team-a", "runner", { pod = pod1, expiration = 3601 })
    local plain = k:token("team-a", "runner", { expiration = 3602 })
    for _, t in ipairs{ bound0, bound1, plain } do assert.equal(200, gw:request(t, "/x").status) end
    assert_revoked(bound0, "pods", "pod", function() k:delete_pod("team-a", "runner-0") end)
    assert_still_cached({ bound1 = bound1, plain = plain }, 5)
  end)

  it("admits a ServiceAccount recreated under the same name (another uid)", function()
    k:create_serviceaccount("team-a", "phoenix")
    local old = k:token("team-a", "phoenix")
    assert.equal(200, gw:request(old, "/x").status)
    local events = gw:metric(deleted_events("serviceaccounts"))
    k:delete_serviceaccount("team-a", "phoenix")
    proc.wait_until("the watch to see the deletion", function()
      return gw:metric(deleted_events("serviceaccounts")) > events
    end)
    assert.equal(401, gw:request(old, "/x").status)
    local reborn = k:create_serviceaccount("team-a", "phoenix")
    local new = k:token("team-a", "phoenix", { expiration = 3603 })
    local res = gw:request(new, "/x")
    assert.equal(200, res.status, res.body)
    assert.equal(reborn.metadata.uid, res.headers["x-remote-uid"])
  end)
end)
