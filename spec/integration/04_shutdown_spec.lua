-- Integration: graceful shutdown (issue 5) and the gateway process under valgrind.
--
-- SIGTERM/SIGINT flip /readyz to 503, close the main listener, let requests in flight finish
-- up to --shutdown-grace, then exit 0; a second signal exits at once. The gateways here are
-- started with track_exit (support/gateway.lua), so their real exit status is asserted.
--
-- Valgrind: the block tagged #valgrind runs the gateway under
--   valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99
-- with the built-in default policy (LuaJIT, SubjectAccessReviews) through valid, invalid,
-- denied, timed-out, throttled (429), reset, 5xx and garbage reviews and a SIGTERM with a
-- review in flight, and asserts exit status 0: no memory error, no definite leak. It takes
-- about 20-40 s. Run only it:     busted --lua=luajit --tags=valgrind spec/integration/04_shutdown_spec.lua
-- Skip it:                        busted --lua=luajit --exclude-tags=valgrind ...  or TOKENGATE_SKIP_VALGRIND=1
-- (skipped with a pending note when valgrind is not installed). To run every spec's gateway
-- under a tool instead, set TOKENGATE_GATEWAY_WRAPPER (see support/gateway.lua).
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")

local function sa(ns, name, token)
  return { token = token, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local VALID, TOKEN_TABLE = {}, {}
for i = 1, 1000 do
  VALID[i] = "tok-shut-" .. i
  TOKEN_TABLE[i] = sa("team-" .. (i % 2), "sa-" .. i, VALID[i])
end
local used = 0
local function next_tokens(n)
  local list = {}
  for i = 1, n do
    used = used + 1
    list[i] = assert(VALID[used], "ran out of valid tokens")
  end
  return list
end

local function wait_until(what, fn, timeout_s)
  local deadline = proc.now() + timeout_s
  repeat
    local v = fn()
    if v then return v end
    proc.sleep(0.02)
  until proc.now() >= deadline
  error("timed out after " .. timeout_s .. " s waiting for " .. what)
end

-- The gateway logs "stopping: finishing in-flight requests" once it has handled the first
-- signal: waiting for that line (not a sleep) is what makes a second signal a second one.
local function wait_stopping(gw)
  wait_until("the first signal to be handled", function()
    return gw:log_text():find('"msg":"stopping: finishing in-flight requests"', 1, true)
  end, 30)
end

describe("graceful shutdown", function()
  local fake, dir
  local gateways = {}

  local function start_gateway(args, opts)
    opts = opts or {}
    -- --policy none unless asked for the built-in default policy (LuaJIT + SubjectAccessReview)
    local all = opts.default_policy and {} or { "--policy", "none" }
    for _, a in ipairs(args) do all[#all + 1] = a end
    local gw = gateway_mod.start{ fake = fake, dir = dir, args = all, track_exit = true, wrapper = opts.wrapper,
      start_timeout = opts.start_timeout }
    gateways[#gateways + 1] = gw
    return gw
  end

  lazy_setup(function()
    dir = proc.tmpdir()
    -- The default policy asks a SubjectAccessReview for the path: GET anywhere is allowed.
    fake = fake_mod.start{ tokens = TOKEN_TABLE, sar_rules = { { user = "*", verb = "get", path = "/*" } } }
  end)

  lazy_teardown(function()
    for _, gw in ipairs(gateways) do
      if gw:alive() then proc.stop(gw.handle) end
    end
    if fake then fake:stop() end
    if dir and not os.getenv("TOKENGATE_KEEP_SPEC_FILES") then proc.run("rm -rf " .. proc.quote(dir)) end
  end)

  before_each(function()
    fake:reset()
  end)

  it("on SIGTERM answers every request in flight, refuses new connections, fails /readyz, and exits 0", function()
    -- The fake holds every review (hang) until the checks below are done, so they happen
    -- during the grace period whatever the machine's load; the grace period is far longer
    -- than anything here, so the exit can only come from the last answer being sent.
    local N = 30
    local gw = start_gateway{ "--shutdown-grace", "120s", "--review-timeout", "60s" }
    -- Background load on warm tokens, before and across the signal.
    local warm = next_tokens(4)
    assert.equal(4, gw:load{ c = 4, n = 4, tokens = warm }.codes["200"])
    fake:config{ hang = true }
    fake:reset_stats()
    local background = gw:load_start{ c = 4, d = 3, tokens = warm }
    -- One burst of N concurrent cold requests, each held at the API server.
    local burst = gw:load_start{ c = N, n = N, tokens = next_tokens(N), timeout = 60 }
    wait_until(N .. " reviews in flight at the API server", function() return fake:stats().inflight >= N end, 30)

    proc.signal(gw.handle, "TERM")
    wait_stopping(gw)
    -- During the grace period: not ready, the listener closed (the workers close theirs when
    -- told, just after the signal is handled), the process waits.
    wait_until("/readyz to answer 503", function()
      return http.get(gw.admin_url .. "/readyz", nil, { timeout = 10 }).status == 503
    end, 30)
    wait_until("the main listener to refuse new connections", function()
      local fresh = http.get(gw.url .. "/", { "Authorization: Bearer " .. warm[1] }, { timeout = 10 })
      assert.is_true(fresh.status == 0 or fresh.status == 200, "answered " .. fresh.status)
      return fresh.status == 0
    end, 30)
    assert.is_true(gw:alive())
    assert.equal(N, fake:stats().inflight, "a review held at the API server ended before it was released")

    -- Every request of the burst was in flight at the signal: each one gets its answer.
    fake:config{ hang = false }
    local r = burst:wait(60)
    assert.equal(N, r.requests)
    assert.equal(0, r.errors, "requests in flight were dropped: " .. cjson.encode(r))
    assert.equal(N, r.codes["200"])
    assert.equal(N, fake:stats().tokenreview_calls)
    -- The background load saw only answers to what it sent before the listener closed;
    -- connection errors after that are expected, any answer other than 200 is not.
    local b = background:wait(60)
    assert.is_true((b.codes["200"] or 0) > 0)
    for code in pairs(b.codes) do assert.equal("200", code) end

    -- Then it exits 0 because nothing is left in flight, not because the grace ran out.
    assert.equal(0, gw:exit_status(60))
    local log = gw:log_text()
    assert.truthy(log:find('"msg":"stopped: no request in flight"', 1, true), log)
    assert.is_nil(log:find("--shutdown-grace ran out", 1, true), log)
  end)

  it("does not drop answers written just before it exits (repeated bursts, short reviews)", function()
    -- The last answers are written right before the event loop stops: they must reach the
    -- client, not be discarded with their connection. Whether an exit races the last writes
    -- depends on the instant the answers arrive relative to the shutdown's polling, so this
    -- repeats the scenario: on this 2-core machine about one round in 20 hit the race while
    -- the gateway had it (losing most of that round's answers), so 40 rounds catch it in
    -- most runs (~20 s).
    local ROUNDS, N = 40, 20
    fake:config{ latency_ms = 200 }
    for round = 1, ROUNDS do
      local gw = start_gateway{ "--shutdown-grace", "10s" }
      fake:reset_stats()
      local burst = gw:load_start{ c = N, n = N, tokens = next_tokens(N), timeout = 20 }
      -- All N reviews reached the API server (cumulative, so a slow poll cannot miss it).
      wait_until("reviews in flight", function() return fake:stats().tokenreview_calls >= N end, 10)
      proc.signal(gw.handle, "TERM")
      local r = burst:wait(30)
      assert.equal(0, r.errors, "round " .. round .. ": answers were lost: " .. cjson.encode(r) .. "\n" .. gw:log_text())
      assert.equal(N, r.codes["200"], "round " .. round)
      assert.equal(0, gw:exit_status(10), "round " .. round)
    end
  end)

  it("waits for a hung review until --shutdown-grace runs out, then exits 0", function()
    -- The grace period IS a time bound: the exit comes no earlier than 2 s after the signal
    -- (a lower bound, which load cannot break), and not long after it (generous).
    local GRACE_S = 2
    local gw = start_gateway{ "--shutdown-grace", GRACE_S .. "s", "--review-timeout", "60s" }
    fake:config{ hang = true }
    local waiting = gw:load_start{ c = 1, n = 1, tokens = next_tokens(1), timeout = 60 }
    wait_until("the review to be held", function() return fake:stats().inflight >= 1 end, 30)
    local t0 = proc.now()
    proc.signal(gw.handle, "TERM")
    local code = gw:exit_status(GRACE_S + 30)
    local took = proc.now() - t0
    assert.equal(0, code)
    assert.is_true(took >= GRACE_S - 0.1, "exited " .. took .. " s after SIGTERM, before the grace period ran out")
    local log = gw:log_text()
    assert.truthy(log:find('"msg":"stopped: --shutdown-grace ran out"', 1, true), log)
    assert.truthy(log:find('"requests_waiting":1', 1, true), log)
    -- The client is not left hanging: it gets an answer or its connection closes.
    local r = waiting:wait(30)
    assert.equal(1, r.requests)
    fake:config{ hang = false }
  end)

  it("exits at once on a second SIGTERM", function()
    -- A grace period and review timeout far longer than the test's bound: an exit within
    -- the bound can only be the second signal's doing.
    local gw = start_gateway{ "--shutdown-grace", "600s", "--review-timeout", "600s" }
    fake:config{ hang = true }
    local waiting = gw:load_start{ c = 1, n = 1, tokens = next_tokens(1), timeout = 60 }
    wait_until("the review to be held", function() return fake:stats().inflight >= 1 end, 30)
    proc.signal(gw.handle, "TERM")
    wait_stopping(gw)
    assert.is_true(gw:alive(), "the first SIGTERM did not wait for the request in flight")
    proc.signal(gw.handle, "TERM")
    assert.equal(0, gw:exit_status(60), "still running 60 s after the second SIGTERM (grace 600 s)")
    local log = gw:log_text()
    assert.truthy(log:find("second signal", 1, true), log)
    assert.is_nil(log:find('"msg":"stopped: no request in flight"', 1, true), log)
    waiting:wait(30)
    fake:config{ hang = false }
  end)

  it("stops the same way on SIGINT", function()
    local gw = start_gateway{ "--shutdown-grace", "5s" }
    assert.equal(200, gw:request(next_tokens(1)[1]).status)
    proc.signal(gw.handle, "INT")
    assert.equal(0, gw:exit_status(5))
    assert.truthy(gw:log_text():find('"signal":"SIGINT"', 1, true))
  end)

  describe("under valgrind #valgrind", function()
    it("has no memory error and no definite leak through valid, invalid, timed-out, throttled and reset reviews and a SIGTERM", function()
      if os.getenv("TOKENGATE_SKIP_VALGRIND") then
        pending("TOKENGATE_SKIP_VALGRIND is set")
        return
      end
      local _, has = proc.run("command -v valgrind")
      if has ~= 0 then
        pending("valgrind is not installed")
        return
      end
      local vg_log = dir .. "/valgrind.log"
      local wrapper = { "valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite",
        "--error-exitcode=99", "--track-fds=no", "--log-file=" .. vg_log }
      -- A review timeout far above what valgrind on a busy machine takes to answer one review;
      -- the timed-out case below holds its review until the gateway has given up.
      local gw = start_gateway({ "--review-timeout", "5s", "--shutdown-grace", "30s", "--cache-negative-ttl", "1s",
        "--circuit-failure-threshold", "1000" }, { wrapper = wrapper, start_timeout = 60, default_policy = true })
      local t = next_tokens(12)
      -- valid, then from the cache; invalid, twice; several Authorization forms
      assert.equal(200, gw:request(t[1]).status)
      assert.equal(200, gw:request(t[1]).status)
      assert.equal(401, gw:request("no-such-token").status)
      assert.equal(401, gw:request("no-such-token").status)
      assert.equal(401, gw:request(nil).status)
      -- the default policy's SubjectAccessReview: POST is "create", which no rule allows
      assert.equal(403, http.request{ method = "POST", url = gw.url .. "/hooks", body = "{}",
        headers = { "Authorization: Bearer " .. t[1] } }.status)
      -- single-flight with a few concurrent requests
      fake:config{ latency_ms = 200 }
      local r = gw:load{ c = 8, n = 16, tokens = { t[2], t[3] } }
      assert.equal(16, r.codes["200"])
      -- timeout: the API server holds the review past --review-timeout (then lets it go)
      fake:config{ hang = true }
      assert.equal(503, gw:request(t[4]).status)
      fake:config{ hang = false }
      -- 429: one seat, several reviews at once, Retry-After 1
      fake:config{ latency_ms = 300, max_inflight = 1, retry_after = 1 }
      local throttled = gw:load{ c = 4, n = 4, tokens = { t[5], t[6], t[7], t[8] } }
      assert.equal(4, throttled.requests)
      -- resets and 5xx, retried
      fake:reset()
      fake:config{ close_connection = true }
      assert.equal(503, gw:request(t[9]).status)
      fake:config{ close_connection = false, error_rate = 1, error_status = 500 }
      assert.equal(503, gw:request(t[10]).status)
      fake:config{ error_rate = 0, garbage_body = true }
      assert.equal(503, gw:request(t[11]).status)
      fake:reset()
      assert.equal(200, gw:request(t[12]).status)
      -- SIGTERM with a review in flight: it is answered, then the process exits.
      fake:config{ latency_ms = 500 } -- under the review timeout
      fake:reset_stats()
      local last = gw:load_start{ c = 1, n = 1, tokens = { next_tokens(1)[1] }, timeout = 30 }
      wait_until("the review in flight", function() return fake:stats().tokenreview_calls >= 1 end, 20)
      proc.signal(gw.handle, "TERM")
      -- Its answer is not asserted here: whether it survives the exit is the business of the
      -- "does not drop answers" case above; this one is about memory.
      last:wait(30)
      local code = gw:exit_status(60)
      local report = proc.read_file(vg_log) or ""
      assert.equal(0, code, "valgrind reported errors or leaks (exit " .. tostring(code) .. "):\n" .. report)
      assert.truthy(report:find("ERROR SUMMARY: 0 errors", 1, true), report)
    end)

    it("has no definite leak when --shutdown-grace runs out with reviews still in flight", function()
      if os.getenv("TOKENGATE_SKIP_VALGRIND") then
        pending("TOKENGATE_SKIP_VALGRIND is set")
        return
      end
      local _, has = proc.run("command -v valgrind")
      if has ~= 0 then
        pending("valgrind is not installed")
        return
      end
      local vg_log = dir .. "/valgrind-grace.log"
      local gw = start_gateway({ "--review-timeout", "30s", "--shutdown-grace", "1s" }, { wrapper = { "valgrind",
        "--leak-check=full", "--errors-for-leak-kinds=definite", "--error-exitcode=99", "--log-file=" .. vg_log },
        start_timeout = 60 })
      fake:config{ hang = true }
      local waiting = gw:load_start{ c = 2, n = 2, tokens = next_tokens(2), timeout = 30 }
      wait_until("two reviews held", function() return fake:stats().inflight >= 2 end, 20)
      proc.signal(gw.handle, "TERM")
      local code = gw:exit_status(60)
      waiting:wait(30)
      fake:config{ hang = false }
      local report = proc.read_file(vg_log) or ""
      assert.equal(0, code, "valgrind reported errors or leaks (exit " .. tostring(code) .. "):\n" .. report)
    end)
  end)
end)
