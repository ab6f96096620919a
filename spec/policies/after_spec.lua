-- The after(req, user, outcome) hook in the busted kit: a spec drives a request through
-- authorize -> outcome -> after as the gateway does (p:decide), or calls p:after with an
-- outcome of its own (testing.outcome). spec/integration/23_policy_after_spec.lua checks
-- the same hook against the real gateway.
local testing = require("tokengate.testing")

local COUNTING = [[
local tg = require("tokengate")
local answers = tg.metrics.counter("kit_answers_total", "Final answers", { "namespace", "decision", "source" })
return {
  authorize = function(req, user)
    if req.path == "/deny" then return tg.deny("kept out") end
    if req.path == "/sar" then
      return tg.sar{ namespace = user.namespace, verb = "create", resource = "deliveries" }
    end
    return tg.allow()
  end,
  after = function(req, user, outcome)
    answers:inc{ namespace = user and user.namespace or "", decision = outcome.decision, source = outcome.source }
    if outcome.reason then tg.log("info", "refused", { reason = outcome.reason, status = outcome.status }) end
  end,
}
]]

local function after_only(body)
  return "local tg = require('tokengate')\nreturn { authorize = function() return tg.allow() end,\n" ..
    "  after = function(req, user, outcome)\n" .. body .. "\n  end }\n"
end

describe("after(req, user, outcome) in the kit", function()
  local p
  lazy_setup(function()
    testing.forget_metrics()
    p = testing.load_source(COUNTING, "counting.lua")
  end)
  before_each(function()
    testing.reset()
    testing.set_instruction_limit(nil)
  end)

  it("counts what was finally answered by namespace, SubjectAccessReview verdicts included", function()
    local a, b = testing.serviceaccount("team-a", "x"), testing.serviceaccount("team-b", "y")
    local d, o, ok, err = p:decide({ path = "/sar" }, a, { sar = true })
    assert.equal("sar", d.kind)
    assert.same({ status = 200, decision = "allow", source = "sar", token_cached = false, sar_cached = false }, o)
    assert.is_true(ok, err)
    p:decide({ path = "/sar" }, b, { sar = false, sar_reason = "no RBAC rule", sar_cached = true })
    p:decide({ path = "/sar" }, b, { sar = "error" })
    p:decide({ path = "/deny" }, a)
    p:decide({ path = "/" }, a, { token_cached = true })
    assert.equal(1, testing.metric("kit_answers_total", { namespace = "team-a", decision = "allow", source = "sar" }))
    assert.equal(1, testing.metric("kit_answers_total", { namespace = "team-b", decision = "deny", source = "sar" }))
    assert.equal(1, testing.metric("kit_answers_total",
      { namespace = "team-b", decision = "unavailable", source = "sar" }))
    assert.equal(1, testing.metric("kit_answers_total", { namespace = "team-a", decision = "deny", source = "policy" }))
    assert.equal(1, testing.metric("kit_answers_total", { namespace = "team-a", decision = "allow", source = "policy" }))
    local logs = testing.logs()
    assert.equal(3, #logs)
    assert.same({ reason = "no RBAC rule", status = 403 }, logs[1].fields)
    assert.same({ reason = "access review unavailable", status = 503 }, logs[2].fields)
    assert.same({ reason = "kept out", status = 403 }, logs[3].fields)
  end)

  it("is told about anonymous requests with no user", function()
    local ok, err = p:after({ path = "/open" }, nil, { status = 200, decision = "allow", source = "anonymous" })
    assert.is_true(ok, err)
    assert.equal(1, testing.metric("kit_answers_total", { namespace = "", decision = "allow", source = "anonymous" }))
  end)

  it("needs to be told how a SubjectAccessReview turned out", function()
    local d = p:authorize({ path = "/sar" }, testing.serviceaccount("team-a", "x"))
    assert.has_error(function() testing.outcome(d) end,
      "testing.outcome: a sar decision needs opts.sar = true (allowed), false (denied) or \"error\"")
    assert.has_error(function() testing.outcome(d, { sar = true, sra_cached = true }) end,
      "testing.outcome: unknown field 'sra_cached'")
  end)

  it("refuses outcomes the gateway never sends", function()
    local user = testing.serviceaccount("team-a", "x")
    for _, bad in ipairs({
      { status = 200, decision = "deny", source = "policy" },
      { status = 403, decision = "allow", source = "policy" },
      { status = 99, decision = "deny", source = "policy" },
      { status = 200, decision = "allow", source = "cache" },
      { status = 200, decision = "allow", source = "policy", colour = "red" },
      { status = 200, decision = "allow", source = "policy", sar_cached = "yes" },
    }) do
      assert.has_error(function() p:after(nil, user, bad) end)
    end
  end)

  it("shows after() a read-only outcome: writes and misspelt fields are errors of the hook", function()
    local q = testing.load_source(after_only("outcome.status = 200"), "write.lua")
    local ok, err = q:after(nil, testing.user(), { status = 403, decision = "deny", source = "policy", reason = "x" })
    assert.is_false(ok)
    assert.equal("write.lua:4: outcome is read-only (cannot set 'status')", err)
    q = testing.load_source(after_only("return outcome.stauts"), "typo.lua")
    ok, err = q:after(nil, testing.user(), { status = 200, decision = "allow", source = "policy" })
    assert.is_false(ok)
    assert.equal("typo.lua:4: outcome has no field 'stauts'", err)
    q = testing.load_source(after_only("assert(outcome.reason == nil and outcome.sar_cached == nil)\n" ..
      "assert(outcome.allowed == true)\nassert(tostring(outcome):find('status = 200', 1, true))"), "optional.lua")
    assert.is_true(q:after(nil, testing.user(), { status = 200, decision = "allow", source = "policy" }))
  end)

  it("runs under the instruction budget and the memory cap, and cannot change the decision", function()
    local q = testing.load_source(after_only("while true do end"), "loop.lua")
    testing.set_instruction_limit(10000)
    local d, _, ok, err = q:decide(nil, testing.user())
    assert.equal("allow", d.kind)
    assert.is_false(ok)
    assert.truthy(err:find("instruction limit of 10000 exceeded", 1, true), err)
    q = testing.load_source(after_only("local s = ('x'):rep(2 ^ 20) local t = {} for i = 1, 1e6 do t[i] = s .. i end"), "bomb.lua")
    testing.set_instruction_limit(nil)
    d, _, ok, err = q:decide(nil, testing.user())
    assert.equal("allow", d.kind)
    assert.is_false(ok)
    assert.truthy(err:find("not enough memory", 1, true), err)
    q = testing.load_source(after_only("error('after failed')"), "raise.lua")
    d, _, ok, err = q:decide(nil, testing.user())
    assert.equal("allow", d.kind)
    assert.equal("raise.lua:4: after failed", err)
  end)

  it("is optional, and checked at load like the other hooks", function()
    local q = testing.load_source("return { authorize = function() return require('tokengate').allow() end }")
    assert.is_true(q:after(nil, testing.user(), { status = 200, decision = "allow", source = "policy" }))
    local ok, err = pcall(testing.load_source, "return { authorize = function() end, after = 1 }", "bad.lua")
    assert.is_false(ok)
    assert.equal("bad.lua: policy field 'after' must be a function (got number)", err)
    ok, err = pcall(testing.load_source, "return { authorize = function() end, aftre = function() end }", "typo.lua")
    assert.is_false(ok)
    assert.equal("typo.lua: unknown policy field 'aftre' (known: authorize, ttl, anonymous, after, audiences)", err)
  end)
end)
