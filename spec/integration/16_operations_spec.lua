-- Integration: what an operator relies on (docs/OPERATIONS.md), against the real gateway
-- and the fake API server: the default --workers follows the CPUs the process may use
-- (affinity mask, cgroup CPU quota), a second gateway on a taken port is refused, and
-- start-up log fields that are numbers are JSON numbers.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local cjson = require("cjson")
local http = require("support.http")
local upstream_mod = require("support.upstream")

local TOKENGATE = proc.build_path("core/tokengate")

local function sa(ns, name, token)
  return { token = token, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local TOKENS = { sa("team-a", "app", "tok-ops-app-7f3a9c"), sa("team-b", "batch", "tok-ops-batch-1d2e8b") }
-- GETs are allowed by SubjectAccessReview, anything else is denied.
local SAR_RULES = { { user = "*", verb = "get" } }
-- Every token string a spec here sends, valid or not: none may show up in any log.
local TOKENS_USED = { "tok-ops-app-7f3a9c", "tok-ops-batch-1d2e8b", "tok-ops-not-a-real-token-5b7c1a" }

-- The JSON log line whose msg is msg (the first one), decoded.
local function log_line(text, msg)
  for line in text:gmatch("[^\n]+") do
    local ok, doc = pcall(cjson.decode, line)
    if ok and type(doc) == "table" and doc.msg == msg then return doc end
  end
  return nil
end

local function have(cmd)
  local _, code = proc.run("command -v " .. cmd .. " >/dev/null")
  return code == 0
end

describe("tokengate operations", function()
  local fake

  lazy_setup(function() fake = fake_mod.start{ tokens = TOKENS, sar_rules = SAR_RULES } end)
  lazy_teardown(function() if fake then fake:stop() end end)

  describe("default --workers", function()
    it("is 1 under taskset -c 0, and --check and the start-up log say why", function()
      assert.is_true(have("taskset"), "taskset (util-linux) is needed for this spec")
      local out, code = proc.run("taskset -c 0 " .. proc.quote(TOKENGATE) .. " --check --policy none")
      assert.equal(0, code, out)
      assert.truthy(out:find("\nworkers: 1 (1 CPU in the affinity mask", 1, true), out)

      local gw = gateway_mod.start{ fake = fake, args = { "--policy", "none" }, wrapper = { "taskset", "-c", "0" } }
      local ok, err = pcall(function()
        assert.equal(1, gw:metric("gateway_workers"))
        local started = assert(log_line(gw:log_text(), "started"), gw:log_text())
        -- A number, not "1".
        assert.equal("number", type(started.workers))
        assert.equal(1, started.workers)
        assert.truthy(started.workers_from:find("1 CPU in the affinity mask", 1, true), started.workers_from)
        local listening = assert(log_line(gw:log_text(), "listening"))
        assert.equal(1, listening.workers)
      end)
      gw:stop()
      if not ok then error(err, 0) end
    end)

    it("follows an explicit --workers, whatever the mask", function()
      local out, code = proc.run("taskset -c 0 " .. proc.quote(TOKENGATE) .. " --check --policy none --workers 3")
      assert.equal(0, code, out)
      assert.truthy(out:find("\nworkers: 3 (--workers)\n", 1, true), out)
    end)

    -- A cgroup made by the spec, where this machine lets it (root with a writable cgroup v1
    -- cpu hierarchy, or cgroup v2 with the cpu controller delegated); elsewhere the unit
    -- test spec/unit/test_cpu_budget.c covers the same files.
    it("is the cgroup CPU quota rounded up (a cgroup made here)", function()
      local name = string.format("tokengate-spec-%d", math.random(1, 1e9))
      local dir, quota_cmd
      local v1 = "/sys/fs/cgroup/cpu"
      local _, v1_ok = proc.run("test -w " .. v1 .. "/cgroup.procs && test -f " .. v1 .. "/cpu.cfs_quota_us")
      local _, v2_ok = proc.run("grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control")
      if v1_ok == 0 then
        dir = v1 .. "/" .. name
        quota_cmd = "echo 50000 > " .. dir .. "/cpu.cfs_quota_us && echo 100000 > " .. dir .. "/cpu.cfs_period_us"
      elseif v2_ok == 0 then
        dir = "/sys/fs/cgroup/" .. name
        quota_cmd = "echo '50000 100000' > " .. dir .. "/cpu.max"
      end
      local made = dir and select(2, proc.run("mkdir " .. dir)) == 0
      if not made then
        pending("no cgroup with a CPU controller can be made here; spec/unit/test_cpu_budget.c covers the parser")
        return
      end
      local ok, err = pcall(function()
        local out, code = proc.run(quota_cmd)
        assert.equal(0, code, out)
        out, code = proc.run("sh -c " .. proc.quote("echo $$ > " .. dir .. "/cgroup.procs && exec " ..
          proc.quote(TOKENGATE) .. " --check --policy none"))
        assert.equal(0, code, out)
        assert.truthy(out:find("\nworkers: 1 %(cgroup v%d [^\n]*at " .. dir:gsub("%-", "%%-") ..
          ": 0%.50 CPUs, rounded up to 1"), out)
      end)
      proc.run("rmdir " .. dir)
      if not ok then error(err, 0) end
    end)
  end)

  describe("one gateway per port", function()
    it("refuses a second gateway on a taken address, and the first keeps serving", function()
      local first = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--workers", "2" } }
      local ok, err = pcall(function()
        local addr = first.url:gsub("^http://", "")
        local out, code = proc.run("timeout 20 " .. table.concat({ proc.quote(TOKENGATE), "--listen", addr,
          "--admin-listen", "127.0.0.1:0", "--apiserver", fake.url, "--apiserver-ca", proc.quote(fake.ca_file),
          "--apiserver-token-file", proc.quote(fake.credential_file), "--policy", "none", "--workers", "2" }, " "))
        assert.is_not.equal(0, code, out)
        assert.is_not.equal(124, code, "the second gateway did not exit:\n" .. out) -- timeout(1)
        local refused = assert(log_line(out, "another process already listens on this address; refusing to share " ..
          "it (stop it or choose another --listen)"), out)
        assert.equal(addr, refused.addr)
        assert.equal("error", refused.level)
        -- The first gateway still answers every request itself.
        for _ = 1, 20 do assert.equal(200, first:request("tok-ops-app-7f3a9c").status) end
        assert.is_true(first:alive())
      end)
      first:stop()
      if not ok then error(err, 0) end
    end)

    it("refuses a port another program listens on, with one worker too", function()
      local holder = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--workers", "1" } }
      local ok, err = pcall(function()
        local addr = holder.url:gsub("^http://", "")
        local out, code = proc.run("timeout 20 " .. table.concat({ proc.quote(TOKENGATE), "--listen", addr,
          "--admin-listen", "127.0.0.1:0", "--apiserver", fake.url, "--apiserver-ca", proc.quote(fake.ca_file),
          "--apiserver-token-file", proc.quote(fake.credential_file), "--policy", "none", "--workers", "1" }, " "))
        assert.is_not.equal(0, code, out)
        assert.truthy(out:find("another process already listens on this address", 1, true), out)
        assert.equal(200, holder:request("tok-ops-batch-1d2e8b").status)
      end)
      holder:stop()
      if not ok then error(err, 0) end
    end)
  end)
  describe("signals", function()
    local ALLOW_A = [[ local tg = require("tokengate")
      return { authorize = function(req, user) return tg.allow{ headers = { ["X-Policy"] = "A" } } end } ]]
    local ALLOW_B = [[ local tg = require("tokengate")
      return { authorize = function(req, user) return tg.allow{ headers = { ["X-Policy"] = "B" } } end } ]]
    local BROKEN = [[ return { authorize = function(req, user) return tg.allow{ end } ]]

    -- Waits (bounded) until the control thread has handled the SIGHUP: the reload counters move.
    local function hup_and_wait(gw)
      local m = gw:metrics()
      local before = (m['gateway_policy_reloads_total{result="success"}'] or 0) +
        (m['gateway_policy_reloads_total{result="failure"}'] or 0)
      proc.signal(gw.handle, "HUP")
      local deadline = proc.now() + 10
      repeat
        m = gw:metrics()
        local after = (m['gateway_policy_reloads_total{result="success"}'] or 0) +
          (m['gateway_policy_reloads_total{result="failure"}'] or 0)
        if after > before then return m end
        proc.sleep(0.05)
      until proc.now() > deadline
      error("the gateway did not reload within 10 s")
    end

    it("keeps gateway_policy_last_reload_failed at 1 until a reload succeeds, and says when the file differs", function()
      local path = fake.dir .. "/ops-policy.lua"
      proc.write_file(path, ALLOW_A)
      local gw = gateway_mod.start{ fake = fake, args = { "--policy", path } }
      local ok, err = pcall(function()
        local m = gw:metrics()
        assert.equal(0, m["gateway_policy_last_reload_failed"])
        assert.equal(1, m["gateway_policy_file_in_sync"])

        -- The file changes on disk; nothing reloaded yet: out of sync, not failed.
        proc.write_file(path, BROKEN)
        m = gw:metrics()
        assert.equal(0, m["gateway_policy_file_in_sync"])
        assert.equal(0, m["gateway_policy_last_reload_failed"])

        -- A reload fails: 1, and still 1 on later scrapes and after a second failure.
        m = hup_and_wait(gw)
        assert.equal(1, m["gateway_policy_last_reload_failed"])
        assert.equal(0, m["gateway_policy_file_in_sync"])
        assert.equal("A", gw:request("tok-ops-app-7f3a9c").headers["x-policy"]) -- the previous policy serves
        m = hup_and_wait(gw)
        assert.equal(1, m["gateway_policy_last_reload_failed"])
        assert.equal(1, gw:metric("gateway_policy_last_reload_failed"))

        -- Only a successful reload clears it.
        proc.write_file(path, ALLOW_B)
        assert.equal(1, gw:metric("gateway_policy_last_reload_failed"))
        m = hup_and_wait(gw)
        assert.equal(0, m["gateway_policy_last_reload_failed"])
        assert.equal(1, m["gateway_policy_file_in_sync"])
        assert.equal("B", gw:request("tok-ops-app-7f3a9c").headers["x-policy"])

        -- A file that disappears is not "in sync".
        os.remove(path)
        assert.equal(0, gw:metric("gateway_policy_file_in_sync"))
      end)
      gw:stop()
      if not ok then error(err, 0) end
    end)

    it("exports tokengate_build_info with the version and the library versions", function()
      local gw = gateway_mod.start{ fake = fake, args = { "--policy", "none" } }
      local ok, err = pcall(function()
        local text = gw:metrics()._text
        local line = text:match("\n(tokengate_build_info{[^\n]*)")
        assert.truthy(line, text)
        local version = proc.run(proc.quote(TOKENGATE) .. " --version"):match("^tokengate (%S+) %((%S+)%)")
        assert.truthy(line:find('version="' .. version .. '"', 1, true), line)
        for _, label in ipairs{ "revision", "luajit", "openssl", "libevent", "libcurl" } do
          assert.truthy(line:find(label .. '="[^"]+"'), label .. " missing in " .. line)
        end
        assert.truthy(line:find('luajit="LuaJIT ', 1, true), line)
        assert.truthy(line:match("} 1$"), line)
        -- The built-in "policy" has no file: in sync, never failed.
        assert.equal(1, gw:metric("gateway_policy_file_in_sync"))
        assert.equal(0, gw:metric("gateway_policy_last_reload_failed"))
      end)
      gw:stop()
      if not ok then error(err, 0) end
    end)
  end)
  describe("the decision log (--access-log)", function()
    -- The decoded lines of a decision log file.
    local function lines_of(path)
      local out = {}
      for line in (proc.read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
      return out
    end

    -- Waits (bounded) until the file holds n lines (a worker flushes within 200 ms).
    local function wait_lines(path, n)
      local deadline = proc.now() + 10
      repeat
        local lines = lines_of(path)
        if #lines >= n then return lines end
        proc.sleep(0.05)
      until proc.now() > deadline
      error(string.format("%s: %d lines, expected %d:\n%s", path, #lines_of(path), n, proc.read_file(path) or ""))
    end

    local function no_token_in(path)
      local text = proc.read_file(path) or ""
      for _, token in ipairs(TOKENS_USED) do
        assert.is_nil(text:find(token, 1, true), "token " .. token .. " found in " .. path)
        -- Nor any 8-character piece of it.
        for i = 1, #token - 7 do
          assert.is_nil(text:find(token:sub(i, i + 7), 1, true), "part of a token found in " .. path)
        end
      end
    end

    local function get(gw, token, path, method)
      local headers = token and { "Authorization: Bearer " .. token } or {}
      if method == "POST" then return http.post(gw.url .. path, "", headers) end
      return http.get(gw.url .. path, headers)
    end

    local function check_common(line)
      assert.truthy(line.time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), line.time)
      assert.equal("number", type(line.status))
      assert.equal("number", type(line.latency_ms))
      assert.is_true(line.latency_ms >= 0)
    end

    it("says who, what, which step decided and why, for each decision source", function()
      local log_path = fake.dir .. "/decisions-default.log"
      local gw = gateway_mod.start{ fake = fake, args = { "--access-log", log_path, "--workers", "1" } }
      local ok, err = pcall(function()
        assert.equal(401, get(gw, nil, "/hooks/payments").status)                                   -- 1
        assert.equal(200, get(gw, "tok-ops-app-7f3a9c", "/hooks/payments?secret=s3cr3t").status)     -- 2
        assert.equal(200, get(gw, "tok-ops-app-7f3a9c", "/hooks/payments").status)                  -- 3
        assert.equal(403, get(gw, "tok-ops-app-7f3a9c", "/hooks/payments", "POST").status)          -- 4
        assert.equal(403, get(gw, "tok-ops-app-7f3a9c", "/hooks/payments", "POST").status)          -- 5
        assert.equal(401, get(gw, "tok-ops-not-a-real-token-5b7c1a", "/hooks/payments").status)     -- 6
        assert.equal(401, get(gw, "tok-ops-not-a-real-token-5b7c1a", "/hooks/payments").status)     -- 7
        local lines = wait_lines(log_path, 7)
        assert.equal(7, #lines)
        for _, line in ipairs(lines) do check_common(line) end
        local sha = assert(gw:metrics()._text and http.get(gw.admin_url .. "/policy").body:match('"sha256":%s*"(%x+)"'))

        -- 1: no token.
        assert.same({ "GET", "/hooks/payments", 401, "anonymous", cjson.null, cjson.null },
          { lines[1].method, lines[1].path, lines[1].status, lines[1].source, lines[1].user, lines[1].cache_hit })
        assert.truthy(lines[1].reason:find("token", 1, true), lines[1].reason)
        -- 2: a TokenReview, the policy, then a SubjectAccessReview decided; the query is not logged.
        assert.equal("subjectaccessreview", lines[2].source)
        assert.equal("/hooks/payments", lines[2].path)
        assert.equal(200, lines[2].status)
        assert.equal("system:serviceaccount:team-a:app", lines[2].user)
        assert.equal("uid-team-a-app", lines[2].uid)
        assert.equal("team-a", lines[2].namespace)
        assert.is_false(lines[2].cache_hit)
        assert.equal(cjson.null, lines[2].reason)
        assert.equal(sha, lines[2].policy_sha256)
        -- 3: both verdicts cached.
        assert.equal("cache", lines[3].source)
        assert.is_true(lines[3].cache_hit)
        assert.equal("team-a", lines[3].namespace)
        -- 4, 5: denied by a SubjectAccessReview, then by its cached verdict, with the reason.
        assert.same({ "POST", 403, "subjectaccessreview", true }, { lines[4].method, lines[4].status, lines[4].source, lines[4].cache_hit })
        assert.truthy(lines[4].reason:find("forbidden", 1, true), lines[4].reason)
        assert.same({ 403, "cache" }, { lines[5].status, lines[5].source })
        assert.equal(lines[4].reason, lines[5].reason)
        -- 6, 7: a TokenReview said no, then its cached verdict did.
        assert.same({ 401, "tokenreview", false, cjson.null }, { lines[6].status, lines[6].source, lines[6].cache_hit, lines[6].user })
        assert.equal("token not authenticated", lines[6].reason)
        assert.same({ 401, "cache", true }, { lines[7].status, lines[7].source, lines[7].cache_hit })

        assert.equal(7, gw:metric('gateway_access_log_lines_total{result="written"}'))
        assert.equal(0, gw:metric('gateway_access_log_lines_total{result="dropped"}'))
      end)
      local gateway_log = gw.log
      gw:stop()
      no_token_in(log_path)
      no_token_in(gateway_log)
      if not ok then error(err, 0) end
    end)

    it("names the policy when it decides, and TokenReview / cache with --policy none", function()
      local policy_path = fake.dir .. "/decisions-policy.lua"
      proc.write_file(policy_path, [[ local tg = require("tokengate")
        return { authorize = function(req, user)
          if req.path:sub(1, 7) == "/admin/" then return tg.deny("admins only") end
          return tg.allow{} end } ]])
      local log_path = fake.dir .. "/decisions-policy.log"
      local gw = gateway_mod.start{ fake = fake, args = { "--access-log", log_path, "--policy", policy_path,
        "--workers", "1", "--forwarded-headers", "nginx" } }
      local ok, err = pcall(function()
        -- nginx's auth_request sends the original URI in X-Original-URI: that is the path judged.
        local res = http.get(gw.url .. "/auth", { "Authorization: Bearer tok-ops-batch-1d2e8b",
          "X-Original-URI: /admin/users?page=2", "X-Original-Method: DELETE" })
        assert.equal(403, res.status)
        assert.equal(200, http.get(gw.url .. "/auth", { "Authorization: Bearer tok-ops-batch-1d2e8b",
          "X-Original-URI: /reports", "X-Original-Method: GET" }).status)
        local lines = wait_lines(log_path, 2)
        assert.same({ "DELETE", "/admin/users", 403, "policy", "forbidden: admins only", false, "team-b" },
          { lines[1].method, lines[1].path, lines[1].status, lines[1].source, lines[1].reason, lines[1].cache_hit,
            lines[1].namespace })
        assert.same({ "/reports", 200, "policy", true }, { lines[2].path, lines[2].status, lines[2].source, lines[2].cache_hit })
      end)
      gw:stop()
      no_token_in(log_path)
      if not ok then error(err, 0) end

      log_path = fake.dir .. "/decisions-none.log"
      fake:reset_stats()
      -- One worker: its lines are in the order of the answers (each worker has its own buffer).
      gw = gateway_mod.start{ fake = fake, args = { "--access-log", log_path, "--policy", "none", "--workers", "1" } }
      ok, err = pcall(function()
        assert.equal(200, get(gw, "tok-ops-batch-1d2e8b", "/x").status)
        assert.equal(200, get(gw, "tok-ops-batch-1d2e8b", "/x").status)
        local lines = wait_lines(log_path, 2)
        assert.same({ "tokenreview", false, cjson.null }, { lines[1].source, lines[1].cache_hit, lines[1].policy_sha256 })
        assert.same({ "cache", true, cjson.null }, { lines[2].source, lines[2].cache_hit, lines[2].policy_sha256 })
      end)
      gw:stop()
      no_token_in(log_path)
      if not ok then error(err, 0) end
    end)

    it("samples allowed answers only, never refusals", function()
      local log_path = fake.dir .. "/decisions-sampled.log"
      local gw = gateway_mod.start{ fake = fake, args = { "--access-log", log_path, "--access-log-sample-allowed", "0",
        "--policy", "none" } }
      local ok, err = pcall(function()
        for _ = 1, 20 do assert.equal(200, get(gw, "tok-ops-app-7f3a9c", "/ok").status) end
        for _ = 1, 5 do assert.equal(401, get(gw, "tok-ops-not-a-real-token-5b7c1a", "/no").status) end
        local lines = wait_lines(log_path, 5)
        proc.sleep(0.5) -- a late line would show up by now
        lines = lines_of(log_path)
        assert.equal(5, #lines)
        for _, line in ipairs(lines) do assert.equal(401, line.status) end
        assert.equal(20, gw:metric('gateway_access_log_lines_total{result="sampled_out"}'))
      end)
      gw:stop()
      if not ok then error(err, 0) end
    end)

    it("keeps lines whole when two workers write under load", function()
      local log_path = fake.dir .. "/decisions-load.log"
      local gw = gateway_mod.start{ fake = fake, args = { "--access-log", log_path, "--policy", "none", "--workers", "2" } }
      local ok, err = pcall(function()
        local r = gw:load{ c = 16, n = 3000, tokens = { "tok-ops-app-7f3a9c", "tok-ops-batch-1d2e8b" } }
        assert.equal(3000, r.codes["200"])
        local lines = wait_lines(log_path, 3000) -- every line decodes as JSON, or this raises
        assert.equal(3000, #lines)
        local per_namespace = {}
        for _, line in ipairs(lines) do
          assert.equal(200, line.status)
          per_namespace[line.namespace] = (per_namespace[line.namespace] or 0) + 1
        end
        assert.equal(3000, (per_namespace["team-a"] or 0) + (per_namespace["team-b"] or 0))
        assert.equal(3000, gw:metric('gateway_access_log_lines_total{result="written"}'))
        -- Both workers wrote (the kernel spread the connections), so lines really met in one file.
        local m = gw:metrics()
        assert.is_true(m['gateway_worker_requests_total{worker="0"}'] > 0 and m['gateway_worker_requests_total{worker="1"}'] > 0)
      end)
      gw:stop()
      no_token_in(log_path)
      if not ok then error(err, 0) end
    end)

    it("reopens its file on SIGUSR1 after logrotate renamed it", function()
      local log_path = fake.dir .. "/decisions-rotated.log"
      local gw = gateway_mod.start{ fake = fake, args = { "--access-log", log_path, "--policy", "none", "--workers", "2" } }
      local ok, err = pcall(function()
        for _ = 1, 3 do assert.equal(200, get(gw, "tok-ops-app-7f3a9c", "/before").status) end
        wait_lines(log_path, 3)
        assert.is_true(os.rename(log_path, log_path .. ".1"))
        proc.signal(gw.handle, "USR1")
        local deadline = proc.now() + 10
        while not gw:log_text():find('"msg":"decision log reopened"', 1, true) and proc.now() < deadline do
          proc.sleep(0.05)
        end
        assert.truthy(gw:log_text():find('"msg":"decision log reopened"', 1, true), gw:log_text())
        for _ = 1, 4 do assert.equal(200, get(gw, "tok-ops-app-7f3a9c", "/after").status) end
        local after = wait_lines(log_path, 4)
        for _, line in ipairs(after) do assert.equal("/after", line.path) end
        local before = lines_of(log_path .. ".1")
        assert.equal(3, #before)
        for _, line in ipairs(before) do assert.equal("/before", line.path) end
      end)
      gw:stop()
      no_token_in(log_path)
      no_token_in(log_path .. ".1")
      if not ok then error(err, 0) end
    end)

    it("logs proxied requests when the upstream has answered, with its status", function()
      local up = upstream_mod.start{ dir = fake.dir }
      local log_path = fake.dir .. "/decisions-proxy.log"
      local gw = gateway_mod.start{ fake = fake, args = { "--mode", "proxy", "--upstream", up.url, "--access-log", log_path,
        "--workers", "1" } }
      local ok, err = pcall(function()
        assert.equal(200, get(gw, "tok-ops-app-7f3a9c", "/orders/42?token=tok-ops-app-7f3a9c").status)
        assert.equal(403, get(gw, "tok-ops-app-7f3a9c", "/orders/42", "POST").status) -- the SAR says no: never forwarded
        local lines = wait_lines(log_path, 2)
        assert.same({ "GET", "/orders/42", 200, "subjectaccessreview", "team-a", cjson.null },
          { lines[1].method, lines[1].path, lines[1].status, lines[1].source, lines[1].namespace, lines[1].reason })
        assert.same({ "POST", 403, "subjectaccessreview", true }, { lines[2].method, lines[2].status, lines[2].source,
          lines[2].cache_hit })
        assert.equal(1, #up:requests())
      end)
      gw:stop()
      up:stop()
      no_token_in(log_path)
      if not ok then error(err, 0) end
    end)

    it("logs the decision of a request whose client left before its answer", function()
      -- The TokenReview is held by the fake; the client gives up; the answer then goes to a
      -- closed connection. The decision is still logged, and the gateway still serves.
      local log_path = fake.dir .. "/decisions-gone.log"
      local gw = gateway_mod.start{ fake = fake, args = { "--access-log", log_path, "--policy", "none", "--workers", "1" } }
      local ok, err = pcall(function()
        fake:config{ hang = true }
        local asked = fake:stats().tokenreview_calls
        local out = fake.dir .. "/gone-answer.txt"
        local client = proc.spawn({ "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
          "-H", "Authorization: Bearer tok-ops-batch-1d2e8b", gw.url .. "/gone" }, out)
        proc.wait_until("the TokenReview to be asked", function()
          return fake:stats().tokenreview_calls > asked
        end, 10)
        proc.signal(client, "KILL")
        proc.wait_until("the client to be gone", function() return not proc.alive(client) end, 10)
        fake:config{ hang = false } -- the held review is answered; its client is gone
        local lines = wait_lines(log_path, 1)
        assert.same({ "/gone", "tokenreview" }, { lines[1].path, lines[1].source })
        -- the gateway is still serving
        assert.equal(200, get(gw, "tok-ops-batch-1d2e8b", "/after-gone").status)
        assert.equal(2, #wait_lines(log_path, 2))
      end)
      fake:config{ hang = false }
      gw:stop()
      if not ok then error(err, 0) end
    end)

    it("names --jwt-preverify when it refused a forged JWT without a TokenReview", function()
      local kube_mod = require("support.kube") -- only its base64url and issuer
      local res = http.get(fake.url .. "/openid/v1/jwks",
        { "Authorization: Bearer " .. fake.credential, "Accept: application/jwk-set+json" }, { cacert = fake.ca_file })
      local kid = cjson.decode(res.body).keys[1].kid
      local forged = kube_mod.base64url(cjson.encode{ alg = "RS256", kid = kid }) .. "." ..
        kube_mod.base64url(cjson.encode{ iss = kube_mod.ISSUER, sub = "system:serviceaccount:team-a:x",
          aud = { kube_mod.ISSUER }, exp = os.time() + 3600 }) .. "." .. kube_mod.base64url(string.rep("\1", 256))
      local log_path = fake.dir .. "/decisions-preverify.log"
      local gw = gateway_mod.start{ fake = fake, args = { "--access-log", log_path, "--policy", "none", "--workers", "1" } }
      local ok, err = pcall(function()
        local deadline = proc.now() + 20
        while not gw:log_text():find("issuer keys loaded", 1, true) and proc.now() < deadline do proc.sleep(0.05) end
        assert.equal(401, get(gw, forged, "/x").status)
        local lines = wait_lines(log_path, 1)
        assert.same({ 401, "jwt_preverify", false }, { lines[1].status, lines[1].source, lines[1].cache_hit })
        local text = proc.read_file(log_path)
        assert.is_nil(text:find(forged:sub(1, 40), 1, true))
        assert.is_nil(text:find(forged:sub(-40), 1, true))
      end)
      gw:stop()
      if not ok then error(err, 0) end
    end)

    it("refuses to start when the file cannot be created, and --check says so", function()
      local out, code = proc.run(proc.quote(TOKENGATE) ..
        " --check --policy none --access-log /nonexistent-dir/tokengate/decisions.log")
      assert.equal(1, code, out)
      assert.truthy(out:find("--access-log /nonexistent-dir/tokengate/decisions.log: cannot create it in", 1, true), out)
      out, code = proc.run(proc.quote(TOKENGATE) .. " --check --policy none --access-log-sample-allowed 0.5")
      assert.equal(1, code, out)
      assert.truthy(out:find("--access-log-sample-allowed needs --access-log", 1, true), out)
      out, code = proc.run(proc.quote(TOKENGATE) .. " --check --policy none --access-log stdout --access-log-sample-allowed 1.5")
      assert.equal(2, code, out)
    end)
  end)
end)
