-- Integration: what an operator relies on (docs/OPERATIONS.md), against the real gateway
-- and the fake API server: the default --workers follows the CPUs the process may use
-- (affinity mask, cgroup CPU quota), a second gateway on a taken port is refused, and
-- start-up log fields that are numbers are JSON numbers.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local cjson = require("cjson")

local TOKENGATE = proc.build_path("core/tokengate")

local function sa(ns, name, token)
  return { token = token, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local TOKENS = { sa("team-a", "app", "tok-ops-app-7f3a9c"), sa("team-b", "batch", "tok-ops-batch-1d2e8b") }

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

  lazy_setup(function() fake = fake_mod.start{ tokens = TOKENS } end)
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
end)
