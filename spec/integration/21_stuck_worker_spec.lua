-- Integration: liveness tells the truth about a worker that never returns to its event
-- loop, and shutdown does not hang on it.
--
-- A worker is made stuck the only way left once the sandbox bounds every policy call: the
-- operator lifts the bounds (--policy-max-instructions 1e12, --policy-max-call-time 1h)
-- and the policy loops for a request carrying X-Stuck. Then:
--   * /livez answers 503 within WORKER_STUCK_MS (5 s) plus a heartbeat, and
--     gateway_workers_stuck is 1 (before it, /livez is 200 and the gauge 0);
--   * SIGTERM ends the process at the latest when --shutdown-grace (here 2 s) and the
--     workers' exit wait (1 s) are over, with status 1 and a log line about the stuck worker;
--   * with a long grace, a second SIGTERM ends it without waiting for the grace.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")

local TOKEN, WAITING = "tok-stuck", "tok-waiting"

local POLICY = [[local tg = require("tokengate")
return { authorize = function(req)
  if req.headers["x-stuck"] then while true do end end
  return tg.allow()
end }
]]

describe("a worker stuck in a callback", function()
  local fake, policy

  lazy_setup(function()
    fake = fake_mod.start{ tokens = {
      { token = TOKEN, username = "system:serviceaccount:a:b", uid = "u", groups = { "system:authenticated" } },
      { token = WAITING, username = "system:serviceaccount:a:c", uid = "v", groups = { "system:authenticated" } } } }
    policy = fake.dir .. "/stuck.lua"
    proc.write_file(policy, POLICY)
  end)
  lazy_teardown(function() if fake then fake:stop() end end)

  local function start(grace)
    return gateway_mod.start{ fake = fake, track_exit = true, args = { "--policy", policy, "--workers", "2",
      "--policy-max-instructions", "1000000000000", "--policy-max-call-time", "1h",
      "--shutdown-grace", grace } }
  end

  -- One request that never gets an answer, sent in the background (curl gives up later).
  local function get_stuck(gw)
    os.execute("curl -s -m 60 -o /dev/null -H " .. proc.quote("Authorization: Bearer " .. TOKEN) ..
      " -H 'X-Stuck: 1' " .. proc.quote(gw.url .. "/") .. " >/dev/null 2>&1 &")
  end

  local function wait_unlive(gw)
    local deadline = proc.now() + 30
    local res
    repeat
      proc.sleep(0.2)
      res = http.get(gw.admin_url .. "/livez")
    until res.status ~= 200 or proc.now() > deadline
    return res
  end

  it("fails /livez, counts it, and SIGTERM ends the process after the grace", function()
    local gw = start("2s")
    assert.equal(200, gw:request(TOKEN).status)
    assert.equal(200, http.get(gw.admin_url .. "/livez").status)
    assert.equal(0, gw:metric("gateway_workers_stuck"))

    get_stuck(gw)
    local res = wait_unlive(gw)
    assert.equal(503, res.status)
    assert.truthy(res.body:find("1 worker(s) stuck", 1, true), res.body)
    assert.equal(1, gw:metric("gateway_workers_stuck"))
    assert.equal(200, http.get(gw.admin_url .. "/healthz").status) -- the process still answers

    proc.signal(gw.handle, "TERM")
    local code = gw:exit_status(20)
    local log = gw:log_text()
    if code == nil then proc.signal(gw.handle, "KILL") end
    assert.equal(1, code, "SIGTERM did not end the process:\n" .. log)
    assert.truthy(log:find("exiting without stuck workers", 1, true), log)
  end)

  it("ends the process on a second SIGTERM without waiting for the grace", function()
    local gw = start("10m")
    get_stuck(gw)
    assert.equal(503, wait_unlive(gw).status)
    -- A request waiting for a review on the live worker keeps the first signal in its
    -- grace: the fake API server holds the review, and its counter shows the live worker
    -- took the request (one sent to the stuck worker is never read; send another).
    fake:config{ hang = true }
    fake:reset_stats()
    local deadline = proc.now() + 30
    repeat
      os.execute("curl -s -m 60 -o /dev/null -H " .. proc.quote("Authorization: Bearer " .. WAITING) .. " " ..
        proc.quote(gw.url .. "/") .. " >/dev/null 2>&1 &")
      local sent = proc.now()
      while fake:stats().tokenreview_calls == 0 and proc.now() < sent + 2 do proc.sleep(0.05) end
    until fake:stats().tokenreview_calls > 0 or proc.now() > deadline
    assert.is_true(fake:stats().tokenreview_calls > 0, "no request reached the live worker")
    proc.signal(gw.handle, "TERM")
    proc.sleep(0.5)
    assert.is_true(gw:alive(), "the first signal waits for the grace (10 minutes)")
    proc.signal(gw.handle, "TERM")
    local code = gw:exit_status(20)
    if code == nil then proc.signal(gw.handle, "KILL") end
    fake:config{ hang = false }
    assert.equal(1, code, "the second SIGTERM did not end the process:\n" .. gw:log_text())
  end)

  it("still exits 0 on SIGTERM when no worker is stuck", function()
    local gw = start("2s")
    assert.equal(200, gw:request(TOKEN).status)
    proc.signal(gw.handle, "TERM")
    assert.equal(0, gw:exit_status(20))
  end)
end)
