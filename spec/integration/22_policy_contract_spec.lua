-- Integration: the busted kit (lua/tokengate/testing.lua) and the gateway hold a policy
-- to the same contract. A policy author runs busted on a laptop and trusts that what
-- passes there loads in production: so every limit the kit applies must be the C host's,
-- and every file at a limit's edge must be accepted, or refused, by both.
--   * the numbers: they are declared once, in core/policy_limits.h, and the build
--     generates lua/tokengate/limits.lua from it, which the Lua modules (the gateway's
--     embedded copy and the kit) read: the generated file must be current (every
--     #define in the header, and nothing else, in tg.limits and the kit's defaults), and
--     the C host's own names must be those numbers;
--   * the files: each case below through testing.load_source and `tokengate --check`;
--   * every policy shipped in policies/ passes `tokengate --check`.
local proc = require("support.proc")
local testing = require("tokengate.testing")
local tg = require("tokengate")

-- name -> value or macro text of each #define of a header.
local function c_defines(path)
  local defines = {}
  local text = assert(proc.read_file(path), "cannot read " .. path)
  for line in text:gmatch("[^\n]+") do
    local name, value = line:match("^#define%s+([%w_]+)[ \t]+(.-)%s*$")
    if name then
      value = value:gsub("%s*/%*.-%*/$", "")
      defines[name] = tonumber(value) or value
    end
  end
  return defines
end

local function check_file(path)
  return proc.run("timeout 60 " .. proc.quote(proc.build_path("core/tokengate")) .. " --check --policy " ..
    proc.quote(path))
end

describe("the policy contract", function()
  local dir

  lazy_setup(function()
    dir = proc.tmpdir()
  end)

  it("has exactly the limits of core/policy_limits.h in tg.limits and the kit's defaults", function()
    local header = c_defines("core/policy_limits.h")
    local generated = require("tokengate.limits")
    local want_limits, want_defaults = {}, {}
    for name, value in pairs(header) do
      local key = name:match("^POLICY_LIMIT_(.+)$")
      if key then want_limits[key:lower()] = value end
      key = name:match("^POLICY_DEFAULT_(.+)$")
      if key then want_defaults[key:lower()] = value end
    end
    assert.is_true(next(want_limits) ~= nil)
    -- A mismatch here: lua/tokengate/limits.lua is stale; rebuild (it is regenerated) and commit it.
    assert.same(want_limits, generated.limits)
    assert.same(want_defaults, generated.defaults)
    assert.same(want_limits, tg.limits)
    assert.equal(want_defaults.max_instructions, testing.sandbox.instruction_limit())
  end)

  it("gives the C host's own names the contract's numbers", function()
    local metrics = c_defines("core/custom_metrics.h")
    local policy = c_defines("core/policy.h")
    assert.equal("POLICY_LIMIT_LABELS", metrics.CUSTOM_METRICS_MAX_LABELS)
    assert.equal("POLICY_LIMIT_BUCKETS", metrics.CUSTOM_METRICS_MAX_BUCKETS)
    assert.equal("(POLICY_LIMIT_HELP + 1)", metrics.CUSTOM_METRICS_HELP_MAX) -- the C arrays keep a NUL
    assert.equal("(POLICY_LIMIT_METRIC_NAME + 1)", metrics.CUSTOM_METRICS_NAME_MAX)
    assert.equal("POLICY_LIMIT_LABEL_VALUE", metrics.CUSTOM_METRICS_LABEL_VALUE_MAX)
    assert.equal("POLICY_LIMIT_METRICS", metrics.CUSTOM_METRICS_MAX)
    assert.equal("POLICY_LIMIT_HEADERS", policy.POLICY_MAX_HEADERS)
    assert.equal("POLICY_LIMIT_AUDIENCES", policy.POLICY_MAX_AUDIENCES)
    -- The gateway's flag defaults are the kit's (--check prints the settings in force).
    local defaults = require("tokengate.limits").defaults
    local out = check_file("policies/default.lua")
    assert.truthy(out:find("\npolicy-max-instructions: " .. defaults.max_instructions .. "\n", 1, true), out)
    assert.truthy(out:find("\npolicy-max-memory-bytes: " .. defaults.max_memory_bytes .. "\n", 1, true), out)
  end)

  -- name -> { expected to load?, source }. Metric names are unique per case: the kit's
  -- host, like the gateway's, keeps a declaration for the life of the process.
  local function n_list(n, fmt)
    local t = {}
    for i = 1, n do t[i] = string.format(fmt, i) end
    return "{" .. table.concat(t, ",") .. "}"
  end
  local ALLOW = "\nreturn { authorize = function() return require('tokengate').allow() end }\n"
  local TG = "local tg = require('tokengate')\n"
  local CASES = {
    buckets_at_limit = { true, TG .. "tg.metrics.histogram('c_b32', 'x', {}, " .. n_list(tg.limits.buckets, "%d") .. ")" .. ALLOW },
    buckets_over_limit = { false, TG .. "tg.metrics.histogram('c_b33', 'x', {}, " .. n_list(tg.limits.buckets + 1, "%d") .. ")" .. ALLOW },
    label_le_on_counter = { false, TG .. "tg.metrics.counter('c_le_total', 'x', { 'le' })" .. ALLOW },
    label_le_on_histogram = { false, TG .. "tg.metrics.histogram('c_le_h', 'x', { 'le' })" .. ALLOW },
    labels_at_limit = { true, TG .. "tg.metrics.counter('c_l8_total', 'x', " .. n_list(tg.limits.labels, "'l%d'") .. ")" .. ALLOW },
    labels_over_limit = { false, TG .. "tg.metrics.counter('c_l9_total', 'x', " .. n_list(tg.limits.labels + 1, "'l%d'") .. ")" .. ALLOW },
    label_reserved = { false, TG .. "tg.metrics.counter('c_res_total', 'x', { '__x' })" .. ALLOW },
    name_at_limit = { true, TG .. "tg.metrics.counter('c' .. string.rep('n', " .. (tg.limits.metric_name - 1) .. "), 'x')" .. ALLOW },
    name_over_limit = { false, TG .. "tg.metrics.counter('d' .. string.rep('n', " .. tg.limits.metric_name .. "), 'x')" .. ALLOW },
    name_reserved = { false, TG .. "tg.metrics.counter('gateway_mine_total', 'x')" .. ALLOW },
    help_at_limit = { true, TG .. "tg.metrics.counter('c_help_at_total', string.rep('h', " .. tg.limits.help .. "))" .. ALLOW },
    help_over_limit = { false, TG .. "tg.metrics.counter('c_help_total', string.rep('h', " .. (tg.limits.help + 1) .. "))" .. ALLOW },
    metrics_over_limit = { false, TG .. "for i = 1, " .. (tg.limits.metrics + 1) .. " do tg.metrics.counter('c_many_' .. i, 'x') end" .. ALLOW },
    audiences_at_limit = { true, "return { audiences = " .. n_list(tg.limits.audiences, "'a%d'") .. ", authorize = function() return require('tokengate').allow() end }" },
    audiences_over_limit = { false, "return { audiences = " .. n_list(tg.limits.audiences + 1, "'a%d'") .. ", authorize = function() return require('tokengate').allow() end }" },
    audience_at_length = { true, "return { audiences = { ('a'):rep(" .. tg.limits.audience .. ") }, authorize = function() return require('tokengate').allow() end }" },
    audience_over_length = { false, "return { audiences = { ('a'):rep(" .. (tg.limits.audience + 1) .. ") }, authorize = function() return require('tokengate').allow() end }" },
    after_not_a_function = { false, "return { after = 'later', authorize = function() return require('tokengate').allow() end }" },
    after_spent_budget_loading = { false, "while true do end return { after = function() end, authorize = function() end }" },
    unknown_field = { false, "return { authorise = function() end, authorize = function() end }" },
    no_authorize = { false, "return {}" },
    budget_spent_loading = { false, "while true do end" .. ALLOW },
    budget_kept_loading = { true, "local n = 0 for i = 1, 10000 do n = n + i end" .. ALLOW },
    memory_bomb_loading = { false, "local t = {} for i = 1, 1e7 do t[i] = ('x'):rep(64) .. i end" .. ALLOW },
  }

  for name, case in pairs(CASES) do
    it("gives busted and the gateway the same answer: " .. name, function()
      testing.forget_metrics()
      local kit_ok, kit_err = pcall(testing.load_source, case[2], name .. ".lua")
      local path = dir .. "/" .. name .. ".lua"
      proc.write_file(path, case[2])
      local out, code = check_file(path)
      assert.equal(case[1], kit_ok, "busted: " .. tostring(kit_err))
      assert.equal(case[1] and 0 or 1, code, "gateway --check: " .. out)
    end)
  end

  it("passes every policy shipped in policies/ through tokengate --check", function()
    local listing = proc.run("ls policies/*.lua")
    local n = 0
    for path in listing:gmatch("%S+%.lua") do
      local out, code = check_file(path)
      assert.equal(0, code, path .. ": " .. out)
      assert.truthy(out:find("policy ok: " .. path, 1, true), out)
      n = n + 1
    end
    assert.is_true(n >= 5, "found only " .. n .. " policies")
  end)
end)
