-- Integration: a policy's after(req, user, outcome) hook against the real gateway and the
-- fake API server. The policy counts what was finally answered by namespace, decision,
-- source and whether a SubjectAccessReview verdict came from the cache; the counts are
-- read back from /metrics. SubjectAccessReviews the policy asked for report their real
-- verdict (allowed by the fake's RBAC rule, or denied), an after() that loops or raises
-- leaves the answer as it was (and the next request is served), and requests that never
-- reached the policy (a token the TokenReview refused) do not call it.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local upstream_mod = require("support.upstream")

local function sa(ns, name)
  return { token = "tok-" .. ns .. "-" .. name, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

-- team-a may create deliveries in team-a; team-b may not (no rule).
local SAR_RULES = {
  { user = "system:serviceaccount:team-a:sender", verb = "create", namespace = "team-a",
    group = "hooks.example.com", resource = "deliveries" },
}

local POLICY = [[
local tg = require("tokengate")
local answers = tg.metrics.counter("after_answers_total", "Final answers",
  { "namespace", "decision", "source", "status", "sar_cached", "token_cached" })
local reasons = tg.metrics.counter("after_deny_reasons_total", "Deny reasons", { "reason" })
local paths = tg.metrics.counter("after_paths_total", "What after saw of the request", { "path", "user", "via" })
return {
  anonymous = function(req) return req.path == "/open" end,
  authorize = function(req, user)
    if req.path == "/deny" then return tg.deny("kept-out") end
    if req.path == "/boom" then error("authorize failed on purpose") end
    if req.path == "/sar-get" then -- a question no rule allows, asked once per spec run
      return tg.sar{ namespace = user.namespace, verb = "get", group = "hooks.example.com", resource = "deliveries" }
    end
    if req.path == "/sar" then
      return tg.sar{ namespace = user.namespace, verb = "create", group = "hooks.example.com",
                     resource = "deliveries" }
    end
    return tg.allow()
  end,
  after = function(req, user, outcome)
    answers:inc{ namespace = user and user.namespace or "(anonymous)", decision = outcome.decision,
                 source = outcome.source, status = outcome.status, sar_cached = outcome.sar_cached,
                 token_cached = outcome.token_cached }
    if outcome.decision == "deny" and outcome.source == "policy" then reasons:inc{ reason = outcome.reason } end
    assert(outcome.allowed == (outcome.status == 200))
    paths:inc{ path = req.path, user = user and user.serviceaccount or "", via = req.headers["x-via"] or "" }
    local mode = req.headers["x-after"]
    if mode == "loop" then while true do end end
    if mode == "error" then error("after failed on purpose") end
    if mode == "write" then outcome.status = 200 end
  end,
}
]]

-- The metric's key as the gateway renders it (labels in declaration order).
local function answers_key(ns, decision, source, status, sar_cached, token_cached)
  return string.format('after_answers_total{namespace="%s",decision="%s",source="%s",status="%d",' ..
    'sar_cached="%s",token_cached="%s"}', ns, decision, source, status, sar_cached, token_cached)
end

describe("the after() hook", function()
  local fake, gw

  lazy_setup(function()
    fake = fake_mod.start{ tokens = { sa("team-a", "sender"), sa("team-b", "reader") }, sar_rules = SAR_RULES }
    local path = fake.dir .. "/after_policy.lua"
    proc.write_file(path, POLICY)
    gw = gateway_mod.start{ fake = fake, args = { "--policy", path, "--workers", "1" } }
  end)
  lazy_teardown(function()
    if gw then gw:stop() end
    if fake then fake:stop() end
  end)
  before_each(function() fake:config{ hang = false, latency_ms = 0 } end)

  -- The change of every after_answers_total series across fn().
  local function counted(fn)
    local before = gw:metrics()
    fn()
    local after = gw:metrics()
    local delta = {}
    for k, v in pairs(after) do
      if type(v) == "number" and k:find("^after_answers_total{") and v ~= (before[k] or 0) then
        delta[k] = v - (before[k] or 0)
      end
    end
    return delta, after
  end

  local function paths_key(path, user, via)
    return string.format('after_paths_total{path="%s",user="%s",via="%s"}', path, user, via)
  end

  it("counts the SubjectAccessReview's real verdict: allowed, denied, then both from the cache", function()
    local calls = fake:stats().subjectaccessreview_calls
    local delta, m = counted(function()
      assert.equal(200, gw:request("tok-team-a-sender", "/sar", { "X-Via: sar-a" }).status)
      assert.equal(403, gw:request("tok-team-b-reader", "/sar", { "X-Via: sar-b" }).status)
    end)
    -- after the review the request was described again: its own path, headers and user
    assert.equal(1, m[paths_key("/sar", "sender", "sar-a")])
    assert.equal(1, m[paths_key("/sar", "reader", "sar-b")])
    assert.equal(calls + 2, fake:stats().subjectaccessreview_calls)
    assert.same({
      [answers_key("team-a", "allow", "sar", 200, "false", "false")] = 1,
      [answers_key("team-b", "deny", "sar", 403, "false", "false")] = 1,
    }, delta)

    delta = counted(function()
      assert.equal(200, gw:request("tok-team-a-sender", "/sar").status)
      assert.equal(403, gw:request("tok-team-b-reader", "/sar").status)
    end)
    assert.equal(calls + 2, fake:stats().subjectaccessreview_calls) -- both answered from the cache
    assert.same({
      [answers_key("team-a", "allow", "sar", 200, "true", "true")] = 1,
      [answers_key("team-b", "deny", "sar", 403, "true", "true")] = 1,
    }, delta)
  end)

  it("tells after() about the request it judged while another request was answered meanwhile", function()
    -- A waits for its SubjectAccessReview (the fake holds it until released); B is
    -- answered from the caches meanwhile on the same worker. Each after() must see its
    -- own request.
    fake:config{ hang = true }
    local asked = fake:stats().subjectaccessreview_calls
    local out = fake.dir .. "/slow-answer.txt"
    local slow = proc.spawn({ "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
      "-H", "Authorization: Bearer tok-team-a-sender", "-H", "X-Via: slow", gw.url .. "/sar-get" }, out)
    proc.wait_until("the SubjectAccessReview to be asked", function()
      return fake:stats().subjectaccessreview_calls > asked -- counted when it arrives
    end, 10)
    local fast = gw:request("tok-team-a-sender", "/allowed", { "X-Via: fast" })
    assert.equal(200, fast.status)
    assert.is_true(proc.alive(slow), "the held request was answered before the fast one")
    fake:config{ hang = false } -- releases the held review
    proc.wait_until("the slow request to be answered", function() return not proc.alive(slow) end, 20)
    assert.equal("403", proc.read_file(out))
    local m = gw:metrics()
    assert.equal(1, m[paths_key("/sar-get", "sender", "slow")])
    assert.equal(1, m[paths_key("/allowed", "sender", "fast")])
  end)

  it("counts the policy's own allow, deny (with its reason) and error", function()
    assert.equal(200, gw:request("tok-team-a-sender", "/warm").status) -- the token is cached from here on
    local m0 = gw:metrics()
    local delta, m = counted(function()
      assert.equal(200, gw:request("tok-team-a-sender", "/allowed").status)
      assert.equal(403, gw:request("tok-team-a-sender", "/deny").status)
      assert.equal(500, gw:request("tok-team-a-sender", "/boom").status)
    end)
    assert.same({
      [answers_key("team-a", "allow", "policy", 200, "", "true")] = 1,
      [answers_key("team-a", "deny", "policy", 403, "", "true")] = 1,
      [answers_key("team-a", "error", "policy", 500, "", "true")] = 1,
    }, delta)
    -- (a reason without spaces: support.gateway's /metrics parser splits lines on spaces)
    local key = 'after_deny_reasons_total{reason="kept-out"}'
    assert.equal((m0[key] or 0) + 1, m[key])
  end)

  it("hears what the policy's anonymous() decided, and nothing of requests that never reached the policy", function()
    local delta = counted(function()
      assert.equal(200, gw:request(nil, "/open").status)
      assert.equal(401, gw:request(nil, "/closed").status)
      assert.equal(401, gw:request("tok-nobody-knows", "/allowed").status) -- the TokenReview refused it
    end)
    assert.same({
      [answers_key("(anonymous)", "allow", "anonymous", 200, "", "")] = 1,
      [answers_key("(anonymous)", "deny", "anonymous", 401, "", "")] = 1,
    }, delta)
  end)

  for _, mode in ipairs({ "loop", "error", "write" }) do
    it("keeps the answer when after() " .. mode .. "s, counts a policy error and serves the next request", function()
      local errors = gw:metric("gateway_policy_errors_total")
      local allowed = gw:request("tok-team-a-sender", "/allowed", { "X-After: " .. mode })
      assert.equal(200, allowed.status)
      assert.equal("system:serviceaccount:team-a:sender", allowed.headers["x-remote-user"])
      local denied = gw:request("tok-team-b-reader", "/deny", { "X-After: " .. mode })
      assert.equal(403, denied.status)
      assert.truthy(denied.body:find("kept-out", 1, true))
      assert.equal(errors + 2, gw:metric("gateway_policy_errors_total"))
      assert.is_true(gw:alive())
      assert.equal(200, gw:request("tok-team-a-sender", "/allowed").status)
      assert.equal(errors + 2, gw:metric("gateway_policy_errors_total"))
      assert.truthy(gw:log_text():find("policy error in after()", 1, true))
    end)
  end

  describe("in proxy mode", function()
    local up, proxy
    lazy_setup(function()
      up = upstream_mod.start{ dir = fake.dir }
      proxy = gateway_mod.start{ fake = fake, args = { "--mode", "proxy", "--upstream", up.url, "--policy",
        fake.dir .. "/after_policy.lua", "--workers", "1" } }
    end)
    lazy_teardown(function()
      if proxy then proxy:stop() end
      if up then up:stop() end
    end)

    it("hears 200 for a forwarded request, the refusals as in authz mode, and the answer stands", function()
      local delta = {}
      local before = proxy:metrics()
      up:clear()
      assert.equal(200, proxy:request("tok-team-a-sender", "/allowed", { "X-Via: proxied" }).status)
      assert.equal(403, proxy:request("tok-team-b-reader", "/sar").status)
      local errors = proxy:metric("gateway_policy_errors_total")
      assert.equal(200, proxy:request("tok-team-a-sender", "/allowed", { "X-After: error" }).status)
      assert.equal(errors + 1, proxy:metric("gateway_policy_errors_total"))
      assert.equal(2, #up:requests()) -- both allowed requests reached the upstream, nothing else
      local m = proxy:metrics()
      for k, v in pairs(m) do
        if type(v) == "number" and k:find("^after_answers_total{") and v ~= (before[k] or 0) then
          delta[k] = v - (before[k] or 0)
        end
      end
      assert.same({
        [answers_key("team-a", "allow", "policy", 200, "", "false")] = 1,
        [answers_key("team-a", "allow", "policy", 200, "", "true")] = 1,
        [answers_key("team-b", "deny", "sar", 403, "false", "false")] = 1,
      }, delta)
      assert.equal(1, m[paths_key("/allowed", "sender", "proxied")])
    end)
  end)
end)
