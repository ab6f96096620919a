-- Integration: a corpus of hostile policies against the real gateway. Each attack is run
-- in two places — at the top level of the file (it runs when the file loads) and inside
-- authorize when the request carries X-Attack — and each file goes through every way a
-- policy reaches the gateway: `tokengate --check`, start-up, and SIGHUP over a running
-- good policy. Whatever the attack, the process never dies: a file that misbehaves while
-- loading makes --check exit 1, start-up exit 1 and a reload fail with the old policy
-- still serving; a hook that misbehaves answers 500 and the next request is served.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")

local TOKEN = "tok-team-a-sender"

-- name -> Lua statements. The first group defeated the sandbox before (C stack overflow,
-- an xpcall handler outliving the budget, backtracking inside one C call); the second
-- held already and must keep holding.
local ATTACKS = {
  gsub_function_recursion = [[local function f() return (("ab"):gsub(".", f)) end f()]],
  gsub_table_index_recursion = [[local t; t = setmetatable({}, { __index = function() return (("ab"):gsub(".", t)) end }); local _ = ("ab"):gsub(".", t)]],
  sort_comparator_recursion = [[local function f() table.sort({ 3, 2, 1 }, function(a, b) f() return a < b end) end f()]],
  sort_lt_recursion = [[local mt = {}; mt.__lt = function() table.sort({ setmetatable({}, mt), setmetatable({}, mt), setmetatable({}, mt) }) return false end; table.sort({ setmetatable({}, mt), setmetatable({}, mt), setmetatable({}, mt) })]],
  format_tostring_recursion = [[local t; t = setmetatable({}, { __tostring = function() return string.format("%s", t) end }); local _ = string.format("%s", t)]],
  pcall_recursion = [[local function f() assert(pcall(f)) end f()]],
  xpcall_handler_loop = [[xpcall(function() while true do end end, function() while true do end end)]],
  xpcall_nested_handlers = [[local function h() return xpcall(function() while true do end end, h) end xpcall(function() while true do end end, h)]],
  xpcall_handler_after_pattern = [[xpcall(function() return ("a"):rep(40):find(("a?"):rep(40) .. ("a"):rep(40)) end, function() while true do end end)]],
  backtracking_find = [[local _ = ("a"):rep(40):find(("a?"):rep(40) .. ("a"):rep(40))]],
  backtracking_match = [[local _ = string.match(("a"):rep(40), ("a?"):rep(40) .. ("a"):rep(40))]],
  backtracking_gsub = [[local _ = string.gsub(("a"):rep(40), ("a?"):rep(40) .. ("a"):rep(40), "x")]],
  backtracking_gmatch = [[for _ in string.gmatch(("a"):rep(40), ("a?"):rep(40) .. ("a"):rep(40)) do end]],
  sort_huge = [[local t = {} for i = 1, 300000 do t[i] = -i end table.sort(t)]],

  infinite_loop = [[while true do end]],
  pcall_swallowing = [[while true do pcall(function() while true do end end) end]],
  memory_bomb = [[local t = {} for i = 1, 1e8 do t[i] = string.rep("x", 64) .. i end]],
  string_rep_bomb = [[local s = ("x"):rep(2 ^ 30)]],
  string_rep_separator_bomb = [[local s = ("x"):rep(1e7, ("y"):rep(100))]],
  deep_recursion = [[local function f(n) return 1 + f(n + 1) end f(1)]],
  metamethod_loop = [[local t = setmetatable({}, { __index = function(t, k) return t[k] end }); local _ = t.x]],
  tostring_loop = [[local t; t = setmetatable({}, { __tostring = function() return tostring(t) end }); local _ = tostring(t)]],
  error_object_tostring = [[error(setmetatable({}, { __tostring = function() while true do end end }))]],
  parser_nesting = [[assert(load(("("):rep(100000) .. "1" .. (")"):rep(100000)))]],
}

local GOOD = [[local tg = require("tokengate")
return { authorize = function() return tg.allow{ headers = { ["X-Policy"] = "good" } } end }
]]

-- The attack runs while the file loads.
local function top_level_source(code)
  return "local tg = require('tokengate')\n" .. code ..
    "\nreturn { authorize = function() return tg.allow{ headers = { ['X-Policy'] = 'top' } } end }\n"
end

-- The file loads; authorize runs the attack for a request with X-Attack.
local function hook_source(code)
  return "local tg = require('tokengate')\nreturn { authorize = function(req)\n" ..
    "  if req.headers['x-attack'] then\n" .. code .. "\n  end\n" ..
    "  return tg.allow{ headers = { ['X-Policy'] = 'hook' } }\nend }\n"
end

local function names()
  local list = {}
  for name in pairs(ATTACKS) do list[#list + 1] = name end
  table.sort(list)
  return list
end

local GATEWAY_FLAGS = { "--workers", "1", "--policy-max-memory-bytes", "16777216" }

describe("hostile policies", function()
  local fake, dir, tokengate

  lazy_setup(function()
    fake = fake_mod.start{ tokens = { { token = TOKEN, username = "system:serviceaccount:team-a:sender",
      uid = "uid-a", groups = { "system:authenticated" } } } }
    dir = fake.dir
    tokengate = proc.quote(proc.build_path("core/tokengate"))
  end)
  lazy_teardown(function() if fake then fake:stop() end end)

  local function write(name, source)
    local path = dir .. "/" .. name
    proc.write_file(path, source)
    return path
  end

  -- The attack request answers 500; the process lives; a normal request is served by the
  -- same (only) worker.
  local function assert_hook_contained(gw, name, policy_header)
    local attacked = gw:request(TOKEN, "/", { "X-Attack: 1" })
    assert.equal(500, attacked.status, name .. ": the attack request")
    assert.is_true(gw:alive(), name .. ": the gateway died")
    local after = gw:request(TOKEN, "/")
    assert.equal(200, after.status, name .. ": the request after the attack")
    assert.equal(policy_header, after.headers["x-policy"])
  end

  describe("tokengate --check", function()
    for _, name in ipairs(names()) do
      it("refuses " .. name .. " at load time with exit 1 and accepts it in a hook", function()
        local top = write("check-top-" .. name .. ".lua", top_level_source(ATTACKS[name]))
        local out, code = proc.run("timeout 60 " .. tokengate .. " --check --policy " .. proc.quote(top))
        assert.equal(1, code, out) -- not 124 (hung), not 128+N (killed by a signal)
        assert.truthy(out:find("policy error: ", 1, true), out)
        local hook = write("check-hook-" .. name .. ".lua", hook_source(ATTACKS[name]))
        out, code = proc.run("timeout 60 " .. tokengate .. " --check --policy " .. proc.quote(hook))
        assert.equal(0, code, out)
      end)
    end
  end)

  describe("at start-up", function()
    for _, name in ipairs(names()) do
      it("exits 1 for " .. name .. " while loading, and contains it in a hook", function()
        local top = write("start-top-" .. name .. ".lua", top_level_source(ATTACKS[name]))
        local cmd = table.concat({ "timeout 60", tokengate, "--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0",
          "--apiserver", proc.quote(fake.url), "--apiserver-ca", proc.quote(fake.ca_file),
          "--apiserver-token-file", proc.quote(fake.credential_file), table.concat(GATEWAY_FLAGS, " "),
          "--policy", proc.quote(top) }, " ")
        local out, code = proc.run(cmd)
        assert.equal(1, code, out)

        local hook = write("start-hook-" .. name .. ".lua", hook_source(ATTACKS[name]))
        local args = { "--policy", hook }
        for _, a in ipairs(GATEWAY_FLAGS) do args[#args + 1] = a end
        local gw = gateway_mod.start{ fake = fake, args = args }
        local ok, err = pcall(assert_hook_contained, gw, name, "hook")
        local errors = gw:metric("gateway_policy_errors_total")
        gw:stop()
        assert(ok, err)
        assert.is_true(errors >= 1)
      end)
    end
  end)

  describe("on SIGHUP over a good policy", function()
    local gw, path

    lazy_setup(function()
      path = write("reloaded.lua", GOOD)
      local args = { "--policy", path }
      for _, a in ipairs(GATEWAY_FLAGS) do args[#args + 1] = a end
      gw = gateway_mod.start{ fake = fake, args = args }
    end)
    lazy_teardown(function() if gw then gw:stop() end end)

    -- SIGHUP, then wait (bounded) until the reload counter for result moved.
    local function reload(result)
      local key = 'gateway_policy_reloads_total{result="' .. result .. '"}'
      local before = gw:metric(key)
      proc.signal(gw.handle, "HUP")
      local deadline = proc.now() + 30
      while gw:alive() and gw:metric(key) == before and proc.now() < deadline do proc.sleep(0.05) end
      assert.is_true(gw:alive(), "the gateway died on reload")
      assert.equal(before + 1, gw:metric(key), "no " .. result .. " reload counted:\n" .. gw:log_text())
    end

    for _, name in ipairs(names()) do
      it("keeps the old policy when " .. name .. " fails to load, and contains it in a hook", function()
        proc.write_file(path, GOOD)
        reload("success")
        local good_sha = cjson.decode(http.get(gw.admin_url .. "/policy").body).sha256

        proc.write_file(path, top_level_source(ATTACKS[name]))
        reload("failure")
        local info = cjson.decode(http.get(gw.admin_url .. "/policy").body)
        assert.equal(good_sha, info.sha256, "/policy shows the policy still running")
        assert.truthy(info.last_error ~= "", "/policy shows why the reload failed")
        local res = gw:request(TOKEN, "/")
        assert.equal(200, res.status)
        assert.equal("good", res.headers["x-policy"], "the old policy keeps serving")

        proc.write_file(path, hook_source(ATTACKS[name]))
        reload("success")
        assert_hook_contained(gw, name, "hook")
      end)
    end
  end)
end)
