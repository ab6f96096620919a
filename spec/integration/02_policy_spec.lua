-- Integration: Lua policies in the real gateway: decisions, SubjectAccessReviews through
-- the fake API server, TTL per namespace, custom metrics, the sandbox, and hot reload.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")

local function sa(ns, name)
  return { token = "tok-" .. ns .. "-" .. name, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local TOKENS = { sa("team-a", "sender"), sa("payments", "charger"), sa("kube-system", "ctrl"), sa("team-b", "reader") }

-- team-a may create deliveries in team-a and GET /healthz-like paths; nobody else may.
local SAR_RULES = {
  { user = "system:serviceaccount:team-a:sender", verb = "create", namespace = "team-a",
    group = "hooks.example.com", resource = "deliveries" },
  { user = "system:serviceaccount:team-a:sender", verb = "get", path = "/api/*" },
}

local function write_policy(dir, name, source)
  local path = dir .. "/" .. name
  proc.write_file(path, source)
  return path
end

describe("tokengate Lua policies", function()
  local fake, dir

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS, sar_rules = SAR_RULES }
    dir = fake.dir
  end)
  lazy_teardown(function() if fake then fake:stop() end end)
  before_each(function()
    fake:config{ latency_ms = 0, hang = false }
    fake:reset_stats()
  end)

  describe("with the built-in default policy", function()
    local gw
    lazy_setup(function() gw = gateway_mod.start{ fake = fake } end)
    lazy_teardown(function() if gw then gw:stop() end end)

    it("asks a non-resource SubjectAccessReview of the path and verb and caches it", function()
      fake:reset_stats()
      local ok = gw:request("tok-team-a-sender", "/api/v1/things")
      assert.equal(200, ok.status)
      assert.equal("system:serviceaccount:team-a:sender", ok.headers["x-remote-user"])
      local denied = gw:request("tok-team-a-sender", "/metrics")
      assert.equal(403, denied.status)
      assert.equal(2, fake:stats().subjectaccessreview_calls)
      -- cached: the same questions make no new call
      assert.equal(200, gw:request("tok-team-a-sender", "/api/v1/things").status)
      assert.equal(403, gw:request("tok-team-a-sender", "/metrics").status)
      assert.equal(2, fake:stats().subjectaccessreview_calls)
      assert.equal(1, fake:stats().tokenreview_calls)
      local m = gw:metrics()
      assert.equal(2, m["gateway_subjectaccessreview_api_calls_total"])
      assert.equal(2, m["gateway_subjectaccessreview_cache_hits_total"])
    end)

    it("flushes SubjectAccessReview verdicts with POST /cache/flush (all, ?user=, ?namespace=)", function()
      local path = "/api/flush-me"
      assert.equal(200, gw:request("tok-team-a-sender", path).status)
      local asked = fake:stats().subjectaccessreview_calls
      assert.equal(200, gw:request("tok-team-a-sender", path).status)
      assert.equal(asked, fake:stats().subjectaccessreview_calls) -- cached
      for _, query in ipairs({ "", "?user=system:serviceaccount:team-a:sender", "?namespace=team-a" }) do
        assert.equal(200, gw:flush(query).status)
        assert.equal(200, gw:request("tok-team-a-sender", path).status)
        asked = asked + 1
        assert.equal(asked, fake:stats().subjectaccessreview_calls, "flush" .. query)
      end
      -- A filter that names someone else leaves this verdict cached.
      assert.equal(200, gw:flush("?namespace=payments").status)
      assert.equal(200, gw:request("tok-team-a-sender", path).status)
      assert.equal(asked, fake:stats().subjectaccessreview_calls)
      -- The grant is revoked in the cluster: after the operator's flush, it no longer works.
      fake:reload(TOKENS, { SAR_RULES[1] })
      assert.equal(200, gw:flush().status)
      assert.equal(403, gw:request("tok-team-a-sender", path).status)
      fake:reload(TOKENS, SAR_RULES)
    end)

    describe("behind a named proxy (--forwarded-headers)", function()
      local ngw, tgw
      lazy_setup(function()
        ngw = gateway_mod.start{ fake = fake, args = { "--forwarded-headers", "nginx" } }
        tgw = gateway_mod.start{ fake = fake, args = { "--forwarded-headers", "traefik" } }
      end)
      lazy_teardown(function()
        if ngw then ngw:stop() end
        if tgw then tgw:stop() end
      end)

      it("uses the method of X-Original-Method (nginx) / X-Forwarded-Method (traefik) as the verb", function()
        local res = ngw:request("tok-team-a-sender", "/", { "X-Original-URI: /api/x", "X-Original-Method: GET" })
        assert.equal(200, res.status)
        res = ngw:request("tok-team-a-sender", "/", { "X-Original-URI: /api/x", "X-Original-Method: DELETE" })
        assert.equal(403, res.status)
        res = tgw:request("tok-team-a-sender", "/", { "X-Forwarded-Uri: /api/x", "X-Forwarded-Method: GET",
          "X-Forwarded-Host: app.example" })
        assert.equal(200, res.status)
        res = tgw:request("tok-team-a-sender", "/", { "X-Forwarded-Uri: /api/x", "X-Forwarded-Method: DELETE",
          "X-Forwarded-Host: app.example" })
        assert.equal(403, res.status)
      end)

      it("never mixes families: another family's header or a missing one is refused (400)", function()
        local cases = {
          { ngw, { "X-Original-URI: /api/x", "X-Original-Method: GET", "X-Forwarded-Method: DELETE" } },
          { ngw, { "X-Original-URI: /api/x", "X-Original-Method: GET", "X-Forwarded-Uri: /metrics" } },
          { ngw, { "X-Original-URI: /api/x", "X-Original-Method: GET", "X-Original-URL: http://h/metrics" } },
          { ngw, { "X-Original-URI: /api/x" } },         -- no method: never the subrequest's own GET
          { ngw, { "X-Original-Method: GET" } },         -- no URI: never the subrequest's own path
          { ngw, { "X-Original-URI: /api/x", "X-Original-URI: /metrics", "X-Original-Method: GET" } },
          { ngw, { "X-Original-URI: /api/x", "X-Original-Method: get x" } },
          { tgw, { "X-Forwarded-Uri: /api/x", "X-Forwarded-Method: GET", "X-Forwarded-Host: h", "X-Original-URI: /metrics" } },
          { tgw, { "X-Forwarded-Uri: /api/x", "X-Forwarded-Method: GET" } }, -- no host
          { tgw, { "X-Forwarded-Uri: /api/x", "X-Forwarded-Host: h" } },     -- no method
        }
        for i, c in ipairs(cases) do
          local res = c[1]:request("tok-team-a-sender", "/", c[2])
          assert.equal(400, res.status, "case " .. i)
          assert.is_nil(res.headers["x-remote-user"], "case " .. i)
        end
      end)

      it("refuses paths that are not normalized before any policy sees them", function()
        for _, path in ipairs({ "/api/../metrics", "/api/%2e%2e/metrics", "/api//x", "/api/./x", "/api/%2Fx", "/api/x\\y",
          "/api/..;/metrics", "/api/%252e%252e/metrics", "/api/%c0%ae%c0%ae/metrics" }) do
          local res = ngw:request("tok-team-a-sender", "/", { "X-Original-URI: " .. path, "X-Original-Method: GET" })
          assert.equal(403, res.status, path)
          assert.truthy(res.body:find("^forbidden: "), path)
        end
        assert.equal(200, ngw:request("tok-team-a-sender", "/", { "X-Original-URI: /api/v1.2/x..y?a=../b",
          "X-Original-Method: GET" }).status)
      end)
    end)

    it("with --forwarded-headers none (the default) judges the request itself and refuses proxy headers (Envoy)", function()
      assert.equal(403, gw:request("tok-team-a-sender", "/metrics").status)
      assert.equal(200, gw:request("tok-team-a-sender", "/api/x").status)
      -- A client's X-Original-URI can neither help nor be silently ignored: refused.
      assert.equal(400, gw:request("tok-team-a-sender", "/metrics", { "X-Original-URI: /api/x" }).status)
      assert.equal(400, gw:request("tok-team-a-sender", "/api/x", { "X-Forwarded-Uri: /metrics" }).status)
    end)

    it("answers 503 when the SubjectAccessReview times out, and caches nothing", function()
      local gw2 = gateway_mod.start{ fake = fake, args = { "--review-timeout", "400ms" } }
      assert.equal(200, gw2:request("tok-team-a-sender", "/api/warm").status) -- TokenReview cached
      -- The fake holds the SubjectAccessReview for good: only the gateway's deadline can
      -- answer this request (else it would wait for the client's 20 s timeout).
      fake:config{ hang = true }
      local res = gw2:request("tok-team-a-sender", "/api/cold")
      fake:config{ hang = false }
      assert.equal(503, res.status)
      assert.equal(200, gw2:request("tok-team-a-sender", "/api/cold").status)
      gw2:stop()
    end)
  end)

  describe("with a resource-mapping policy", function()
    local gw
    lazy_setup(function()
      local p = write_policy(dir, "resource.lua", [[
        local tg = require("tokengate")
        local decisions = tg.metrics.counter("policy_decisions_total", "Decisions by namespace", {"namespace", "decision"})
        return {
          ttl = function(user)
            if user.namespace == "payments" then return 1 end
            if user.namespace == "team-b" then return nil end -- the default, --cache-ttl
            return 120
          end,
          authorize = function(req, user)
            if user.namespace == "kube-system" then
              decisions:inc{ namespace = user.namespace, decision = "deny" }
              return tg.deny("kube-system may not call webhooks")
            end
            if user.namespace == "payments" then
              decisions:inc{ namespace = user.namespace, decision = "allow" }
              return tg.allow{ headers = { ["X-Tenant"] = user.namespace } }
            end
            if req.path == "/boom" then error("policy bug") end
            if req.path == "/bad-return" then return { decision = "allow" } end
            decisions:inc{ namespace = user.namespace or "", decision = "sar" }
            return tg.sar{ namespace = user.namespace, verb = "create", group = "hooks.example.com",
                           resource = "deliveries" }
          end,
        }
      ]])
      gw = gateway_mod.start{ fake = fake, args = { "--policy", p } }
    end)
    lazy_teardown(function() if gw then gw:stop() end end)

    it("allows with the policy's headers, denies with its reason, asks resource SARs", function()
      local res = gw:request("tok-payments-charger")
      assert.equal(200, res.status)
      assert.equal("payments", res.headers["x-tenant"])
      res = gw:request("tok-kube-system-ctrl")
      assert.equal(403, res.status)
      assert.truthy(res.body:find("kube-system may not call webhooks", 1, true))
      assert.equal(200, gw:request("tok-team-a-sender").status)
      assert.equal(403, gw:request("tok-team-b-reader").status)
    end)

    it("answers 500 and never 200 when the policy raises or returns a hand-made decision", function()
      local before = gw:metric("gateway_policy_errors_total")
      assert.equal(500, gw:request("tok-team-a-sender", "/boom").status)
      assert.equal(500, gw:request("tok-team-a-sender", "/bad-return").status)
      assert.equal(before + 2, gw:metric("gateway_policy_errors_total"))
    end)

    it("uses ttl(user) for the TokenReview cache entry of each namespace", function()
      fake:reset_stats()
      assert.equal(200, gw:request("tok-payments-charger").status)
      assert.equal(403, gw:request("tok-kube-system-ctrl").status)
      local base = fake:stats().tokenreview_calls -- 0, 1 or 2 depending on what is cached
      proc.sleep(1.3)
      gw:request("tok-payments-charger") -- 1 s TTL: expired, reviewed again
      gw:request("tok-kube-system-ctrl") -- 120 s TTL: still cached
      local by = fake:stats().by_token
      assert.equal(base + 1, fake:stats().tokenreview_calls)
      assert.truthy(by["tok-payments-charger"] >= 1)
    end)

    it("caches for --cache-ttl when ttl(user) returns nil, without a policy error", function()
      fake:reset_stats()
      local errors = gw:metric("gateway_policy_errors_total")
      assert.equal(403, gw:request("tok-team-b-reader").status)
      assert.equal(403, gw:request("tok-team-b-reader").status)
      assert.equal(403, gw:request("tok-team-b-reader").status)
      assert.truthy((fake:stats().by_token["tok-team-b-reader"] or 0) <= 1, "reviewed again: not cached")
      assert.equal(errors, gw:metric("gateway_policy_errors_total"))
    end)

    it("shows the policy's metrics on /metrics after real traffic", function()
      local m = gw:metrics()
      local before = m['policy_decisions_total{namespace="kube-system",decision="deny"}'] or 0
      for _ = 1, 5 do gw:request("tok-kube-system-ctrl") end
      m = gw:metrics()
      assert.equal(before + 5, m['policy_decisions_total{namespace="kube-system",decision="deny"}'])
      assert.truthy(m._text:find("# TYPE policy_decisions_total counter", 1, true))
      proc.write_file(dir .. "/m.txt", m._text)
      local out, code = proc.run("promtool check metrics < " .. proc.quote(dir .. "/m.txt"))
      assert.equal(0, code, out)
    end)
  end)

  describe("the sandbox", function()
    local escapes = {
      io_open = [[ return { authorize = function() local f = io.open("/etc/passwd") return require("tokengate").allow{} end } ]],
      os_execute = [[ return { authorize = function() os.execute("true") return require("tokengate").allow{} end } ]],
      ffi = [[ return { authorize = function() local ffi = require("ffi") return require("tokengate").allow{} end } ]],
      string_dump = [[ return { authorize = function() local b = string.dump(function() end) return require("tokengate").allow{} end } ]],
      method_dump = [[ return { authorize = function() local b = (""):dump() return require("tokengate").allow{} end } ]],
      bytecode = [[ return { authorize = function() local f = load("\27LJ\2\0", "x", "b") f() return require("tokengate").allow{} end } ]],
      endless = [[ return { authorize = function() while true do end end } ]],
      pcall_endless = [[ return { authorize = function() while true do pcall(function() while true do end end) end end } ]],
      memory = [[ return { authorize = function() local t = {} for i = 1, 1e8 do t[i] = string.rep("x", 64) .. i end end } ]],
      getfenv = [[ return { authorize = function() local g = getfenv(0) return require("tokengate").allow{} end } ]],
    }
    for name, source in pairs(escapes) do
      it("refuses or stops " .. name .. " with a 500, never a 200", function()
        local p = write_policy(dir, "escape-" .. name .. ".lua", source)
        local gw = gateway_mod.start{ fake = fake, args = { "--policy", p, "--policy-max-memory-bytes", "16777216" } }
        -- An escape that ran unchecked would never answer (the client gives up after 20 s)
        -- or answer 200; the instruction and memory budgets make it a 500, and the worker
        -- goes on serving.
        local res = gw:request("tok-team-a-sender")
        local again = gw:request("tok-team-a-sender")
        local alive = gw:alive()
        gw:stop()
        assert.equal(500, res.status, name)
        assert.equal(500, again.status, name)
        assert.is_true(alive)
      end)
    end

    it("logs tg.log fields as JSON members a request cannot forge", function()
      local p = write_policy(dir, "logging.lua", [[
        local tg = require("tokengate")
        return { authorize = function(req)
          tg.log("info", "policy saw", { agent = req.headers["user-agent"], n = 7 })
          return tg.allow{}
        end }
      ]])
      local gw = gateway_mod.start{ fake = fake, args = { "--policy", p } }
      assert.equal(200, gw:request("tok-team-a-sender", "/", { 'User-Agent: x level=error msg="forged" "}' }).status)
      local log = gw:log_text()
      gw:stop()
      local entry
      for line in log:gmatch("[^\n]+") do
        if line:find('"policy saw"', 1, true) then entry = require("cjson").decode(line) end
      end
      assert.truthy(entry, log)
      assert.equal("policy saw", entry.msg)
      assert.equal("info", entry.level)
      assert.equal('x level=error msg="forged" "}', entry.fields.agent)
      assert.equal("7", entry.fields.n)
    end)

    it("refuses to start with a policy that does not compile, and --check says why", function()
      local p = write_policy(dir, "broken.lua", "return { authorize = function( end }")
      local out, code = proc.run(proc.quote(proc.build_path("core/tokengate")) .. " --check --policy " .. proc.quote(p))
      assert.is_not.equal(0, code)
      assert.truthy(out:find("broken.lua:1", 1, true), out)
      local good = write_policy(dir, "good.lua", "return { authorize = function() return require('tokengate').allow{} end }")
      out, code = proc.run(proc.quote(proc.build_path("core/tokengate")) .. " --check --policy " .. proc.quote(good))
      assert.equal(0, code, out)
    end)
  end)

  -- What docs/POLICIES.md says the gateway does around a policy, each statement checked.
  describe("as docs/POLICIES.md describes it", function()
    local gw
    lazy_setup(function()
      local p = write_policy(dir, "documented.lua", [[
        local tg = require("tokengate")
        local by_path = tg.metrics.counter("documented_paths_total", "Requests by path", {"path"})
        return {
          ttl = function(user)
            if user.namespace == "payments" then error("ttl hook bug") end
            return 120
          end,
          anonymous = function(req)
            if req.path == "/anon-boom" then error("anonymous hook bug") end
            return req.path == "/anon-ok"
          end,
          authorize = function(req, user)
            if req.path:sub(1, 7) == "/label/" then by_path:inc{ path = req.path } end
            if req.path == "/loop" then while true do end end
            if req.path == "/boom" then error("authorize bug") end
            if req.path == "/tail-call" then return tg.allow{ headers = { ["X-Remote-User"] = "x" } } end
            return tg.allow{}
          end,
        }
      ]])
      gw = gateway_mod.start{ fake = fake, args = { "--policy", p } }
    end)
    lazy_teardown(function() if gw then gw:stop() end end)

    it("does not cache a verdict whose ttl hook failed, and counts the error", function()
      local errors = gw:metric("gateway_policy_errors_total")
      fake:reset_stats()
      assert.equal(200, gw:request("tok-payments-charger").status)
      assert.equal(200, gw:request("tok-payments-charger").status)
      assert.equal(2, fake:stats().tokenreview_calls) -- reviewed each time: nothing was cached
      assert.is_true(gw:metric("gateway_policy_errors_total") >= errors + 2)
      -- a namespace whose ttl works is cached as usual
      assert.equal(200, gw:request("tok-team-b-reader").status)
      assert.equal(200, gw:request("tok-team-b-reader").status)
      assert.equal(3, fake:stats().tokenreview_calls)
    end)

    it("answers 500 when anonymous(req) fails, and never lets the request in", function()
      assert.equal(200, http.get(gw.url .. "/anon-ok").status)
      assert.equal(500, http.get(gw.url .. "/anon-boom").status)
      assert.equal(401, http.get(gw.url .. "/anon-no").status)
    end)

    it("answers 500 to an error, counts it and logs its message with the file name", function()
      local errors = gw:metric("gateway_policy_errors_total")
      assert.equal(500, gw:request("tok-team-a-sender", "/boom").status)
      assert.equal(errors + 1, gw:metric("gateway_policy_errors_total"))
      local log = gw:log_text()
      assert.truthy(log:find("documented.lua:%d+: authorize bug"), log)
      -- An error raised by tg.* in a tail call: without a debug library the gateway can
      -- name only the file and the hook.
      assert.equal(500, gw:request("tok-team-a-sender", "/tail-call").status)
      assert.truthy(gw:log_text():find("documented.lua: in authorize: allow may not set header", 1, true))
    end)

    it("stops a runaway call at the instruction budget with a 500 and says so in the log", function()
      assert.equal(500, gw:request("tok-team-a-sender", "/loop").status)
      assert.truthy(gw:log_text():find("policy exceeded its instruction budget", 1, true))
      assert.equal(200, gw:request("tok-team-a-sender", "/after-loop").status)
    end)

    it("keeps at most 1000 label sets per policy metric and counts the dropped updates", function()
      -- 1002 distinct paths through one curl process (keep-alive), listed in a config file.
      local lines = { 'header = "Authorization: Bearer tok-team-a-sender"', 'write-out = "%{http_code}\\n"' }
      for i = 1, 1002 do
        lines[#lines + 1] = string.format('url = "%s/label/%d"', gw.url, i)
        lines[#lines + 1] = 'output = "/dev/null"'
      end
      local config = dir .. "/labels.curl"
      proc.write_file(config, table.concat(lines, "\n") .. "\n")
      local out = proc.run("curl -sS -K " .. proc.quote(config))
      local _, ok = out:gsub("200\n", "")
      assert.equal(1002, ok, out:sub(1, 200))
      local m = gw:metrics()
      local series = 0
      for line in m._text:gmatch("[^\n]+") do
        if line:find("^documented_paths_total{") then series = series + 1 end
      end
      assert.equal(1000, series)
      assert.equal(2, m['gateway_policy_metric_series_overflow_total{metric="documented_paths_total"}'])
    end)

    it("reports the policy it runs on /policy", function()
      local info = require("cjson").decode(http.get(gw.admin_url .. "/policy").body)
      assert.truthy(info.path:find("documented.lua", 1, true))
      local sum = proc.run("sha256sum " .. proc.quote(info.path)):match("^(%x+)")
      assert.equal(sum, info.sha256)
      for _, key in ipairs({ "loaded_at", "last_error", "loaded", "reloads", "watch" }) do
        assert.is_not_nil(info[key], key)
      end
      assert.is_not_nil(info.reloads.success)
      assert.is_not_nil(info.reloads.failure)
    end)
  end)

  describe("hot reload", function()
    local ALLOW_A = [[ local tg = require("tokengate")
      return { authorize = function(req, user) return tg.allow{ headers = { ["X-Policy"] = "A" } } end } ]]
    local ALLOW_B = [[ local tg = require("tokengate")
      return { authorize = function(req, user) return tg.allow{ headers = { ["X-Policy"] = "B" } } end } ]]
    local BROKEN = [[ return { authorize = function(req, user) return tg.allow{ end } ]]

    it("swaps policies on SIGHUP under load; a broken file keeps the previous one", function()
      local path = dir .. "/reload.lua"
      proc.write_file(path, ALLOW_A)
      local gw = gateway_mod.start{ fake = fake, args = { "--policy", path } }
      assert.equal("A", gw:request("tok-team-a-sender").headers["x-policy"])
      -- A load loop in the background while 20 SIGHUPs rotate A, B, broken.
      local load_out = dir .. "/reload-load.json"
      local tokens_file = dir .. "/reload-tokens.txt"
      proc.write_file(tokens_file, "tok-team-a-sender\n")
      local cmd = string.format("%s --url %s/ -c 8 -d 6 --tokens %s > %s 2>&1 &",
        proc.quote(proc.build_path("bench/tgload")), gw.url, tokens_file, load_out)
      os.execute(cmd)
      local seen = {}
      local versions = { ALLOW_A, ALLOW_B, BROKEN }
      local function reloads()
        local m = gw:metrics()
        return (m['gateway_policy_reloads_total{result="success"}'] or 0) +
          (m['gateway_policy_reloads_total{result="failure"}'] or 0)
      end
      for i = 1, 20 do
        proc.write_file(path, versions[(i % 3) + 1])
        local before = reloads()
        proc.signal(gw.handle, "HUP")
        -- One SIGHUP, one reload: wait for it (two signals sent at once could merge).
        local deadline = proc.now() + 20
        while reloads() == before and proc.now() < deadline do proc.sleep(0.02) end
        assert.equal(before + 1, reloads(), "SIGHUP " .. i .. " was not handled")
        local h = gw:request("tok-team-a-sender").headers["x-policy"]
        seen[h or "none"] = true
      end
      -- The load loop runs for 6 s; wait (bounded) for its summary line.
      local summary
      local deadline = proc.now() + 20
      repeat
        proc.sleep(0.2)
        summary = (proc.read_file(load_out) or ""):match("({.*})")
      until summary or proc.now() > deadline
      assert.truthy(summary, "tgload printed no summary")
      local result = require("cjson").decode(summary)
      local m = gw:metrics()
      local info = require("cjson").decode(http.get(gw.admin_url .. "/policy").body)
      gw:stop()
      assert.is_true(result.requests > 100)
      assert.equal(result.requests, result.codes["200"], "every request under reload was allowed")
      assert.equal(0, result.errors)
      assert.is_nil(seen.none)
      assert.is_true(seen.A and seen.B)
      assert.equal(7, m['gateway_policy_reloads_total{result="failure"}']) -- i % 3 == 2: i = 2,5,...,20
      assert.equal(14, m['gateway_policy_reloads_total{result="success"}']) -- 13 good + start-up
      assert.truthy(info.last_error == "" or info.last_error:find("reload.lua:1", 1, true))
      assert.equal(64, #info.sha256)
    end)

    it("reloads when a ConfigMap-style symlink swap changes the file, with --policy-watch", function()
      local d = dir .. "/cm"
      os.execute("rm -rf " .. d .. " && mkdir -p " .. d .. "/v1 " .. d .. "/v2")
      proc.write_file(d .. "/v1/policy.lua", ALLOW_A)
      proc.write_file(d .. "/v2/policy.lua", ALLOW_B)
      os.execute(string.format("ln -s v1 %s/..data && ln -s ..data/policy.lua %s/policy.lua", d, d))
      local gw = gateway_mod.start{ fake = fake, args = { "--policy", d .. "/policy.lua", "--policy-watch" } }
      assert.equal("A", gw:request("tok-team-a-sender").headers["x-policy"])
      -- The kubelet's atomic swap: a new ..data symlink renamed over the old one.
      os.execute(string.format("ln -s v2 %s/..data_tmp && mv -T %s/..data_tmp %s/..data", d, d, d))
      local deadline = proc.now() + 6
      local got
      repeat
        proc.sleep(0.2)
        got = gw:request("tok-team-a-sender").headers["x-policy"]
      until got == "B" or proc.now() > deadline
      gw:stop()
      assert.equal("B", got)
    end)
  end)
end)
