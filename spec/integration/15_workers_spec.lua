-- Integration: several worker threads (--workers), cross-worker single-flight,
-- refresh-ahead (--cache-refresh-ahead) and the connection limit (--max-connections),
-- against the real gateway and the fake API server over TLS. No assertion here is about
-- speed: the counters the fake and the gateway keep are what is checked.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")

local function sa(ns, name, token)
  return { token = token, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local token_table = {}
for i = 1, 20 do token_table[i] = sa("team-a", "app-" .. i, "tok-worker-" .. i) end

describe("tokengate with several workers", function()
  local fake

  lazy_setup(function() fake = fake_mod.start{ tokens = token_table } end)
  lazy_teardown(function() if fake then fake:stop() end end)

  before_each(function()
    fake:config{ latency_ms = 0, error_rate = 0, hang = false, max_inflight = 0 }
    fake:reset_stats()
  end)

  -- Starts a gateway for one test and makes sure it is stopped even when an assertion fails.
  local function with_gateway(args, body)
    local gw = gateway_mod.start{ fake = fake, args = args }
    fake:reset_stats() -- the readiness probe's TokenReview is not the test's
    local ok, err = pcall(body, gw)
    local log = gw:log_text()
    gw:stop()
    for _, entry in ipairs(token_table) do
      assert.is_nil(log:find(entry.token, 1, true), "token leaked into the gateway log")
    end
    if not ok then error(err, 0) end
  end

  local function wait_until(what, timeout_s, check)
    local deadline = proc.now() + timeout_s
    while proc.now() < deadline do
      if check() then return true end
      proc.sleep(0.02)
    end
    error("timed out waiting for " .. what)
  end

  local function worker_requests(gw)
    local m = gw:metrics()
    return m['gateway_worker_requests_total{worker="0"}'] or 0, m['gateway_worker_requests_total{worker="1"}'] or 0
  end

  it("shares one TokenReview among 100 concurrent cold requests spread over 2 workers", function()
    with_gateway({ "--workers", "2", "--policy", "none", "--review-timeout", "60s" }, function(gw)
      assert.equal(2, gw:metric("gateway_workers"))
      local before0, before1 = worker_requests(gw)
      -- The fake holds the review until all 100 requests have joined it, however slowly
      -- a loaded machine delivers them.
      fake:config{ hang = true }
      local load = gw:load_start{ c = 100, n = 100, tokens = { "tok-worker-1" } }
      local ok, err = pcall(wait_until, "99 requests to join the one review", 60, function()
        return gw:metric("gateway_tokenreview_coalesced_total") == 99
      end)
      fake:config{ hang = false }
      assert(ok, err)
      local r = load:wait(60)
      assert.equal(100, r.codes["200"])
      assert.equal(0, r.errors)
      assert.equal(1, fake:stats().tokenreview_calls)
      local after0, after1 = worker_requests(gw)
      local w0, w1 = after0 - before0, after1 - before1
      io.stderr:write(string.format("\n    100 cold requests: worker 0 answered %d, worker 1 answered %d, 1 TokenReview\n",
        w0, w1))
      -- Both workers took part: the one review was shared across threads.
      assert.equal(100, w0 + w1)
      assert.is_true(w0 > 0 and w1 > 0, "the kernel gave every connection to one worker: " .. w0 .. "/" .. w1)
      assert.equal(99, gw:metric("gateway_tokenreview_coalesced_total"))
    end)
  end)

  it("sums the workers' counters on every scrape while they serve", function()
    with_gateway({ "--workers", "2", "--policy", "none" }, function(gw)
      assert.equal(200, gw:request("tok-worker-5").status)
      local function answered()
        local m = gw:metrics()
        return m['gateway_requests_total{code="200"}'] or 0, m["gateway_tokenreview_cache_hits_total"] or 0
      end
      -- Scrapes on the control thread while both workers count: never a step back, and
      -- (in the ThreadSanitizer build) no data race between the counters' writers and readers.
      local load = gw:load_start{ c = 4, d = 2, tokens = { "tok-worker-5" } }
      local last_answered, last_hits = answered()
      local scrapes = 0
      local r
      repeat
        local a, h = answered()
        assert.is_true(a >= last_answered and h >= last_hits, "a counter went back")
        last_answered, last_hits, scrapes = a, h, scrapes + 1
        r = load:poll()
      until r
      assert.is_true(scrapes >= 2)
      assert.equal(0, r.errors)
      local a, h = answered()
      assert.equal(r.requests + 1, a)
      assert.equal(r.requests, h)
      local w0, w1 = worker_requests(gw)
      assert.equal(r.requests + 1, w0 + w1)
    end)
  end)

  it("refreshes a steadily used token before it expires, without a caller waiting", function()
    -- A 4 s entry is due for refresh in its second half: 2 s of margin before it could
    -- expire, even on a machine too busy to refresh it at once.
    with_gateway({ "--workers", "2", "--policy", "none", "--cache-ttl", "4s", "--cache-refresh-ahead", "50%" },
      function(gw)
        assert.equal(200, gw:request("tok-worker-2").status)
        assert.equal(1, gw:metric("gateway_tokenreview_cache_misses_total"))
        -- 5 s of steady traffic on both workers: the entry is refreshed in its window (then
        -- the new entry in its own), so it never expires and no request misses again.
        local D = 5
        local r = gw:load{ c = 4, d = D, tokens = { "tok-worker-2" } }
        assert.equal(0, r.errors)
        assert.equal(r.requests, r.codes["200"])
        local calls = fake:stats().tokenreview_calls
        io.stderr:write(string.format("\n    %d requests over %d s, TTL 4 s: %d TokenReviews\n", r.requests, D, calls))
        assert.equal(1, gw:metric("gateway_tokenreview_cache_misses_total"))
        assert.is_true(calls >= 2, "no refresh reached the API server")
        -- At most one refresh per claim interval (1 s) per entry, across both workers
        -- (fewer on a slow machine, and every 2 s here at best).
        assert.is_true(calls <= 1 + D, calls .. " TokenReviews: refreshes were not deduplicated")
        assert.equal(calls - 1, gw:metric('gateway_tokenreview_refreshes_total{result="started"}'))
      end)
  end)

  it("keeps an entry only until its original expiry when the refresh fails", function()
    -- 6 s entries, due for refresh in their second half; each failed review ends within 1 s.
    with_gateway({ "--workers", "2", "--policy", "none", "--cache-ttl", "6s", "--cache-refresh-ahead", "50%",
        "--review-timeout", "1s", "--circuit-failure-threshold", "100" }, function(gw)
      local t0 = proc.now()
      assert.equal(200, gw:request("tok-worker-3").status)
      fake:config{ error_rate = 1, error_status = 500 }
      -- Hits until the refresh window opens: the first hit there starts a refresh, and is
      -- answered from the cache at once.
      wait_until("a refresh to start", 30, function()
        assert.equal(200, gw:request("tok-worker-3").status)
        return gw:metric('gateway_tokenreview_refreshes_total{result="started"}') >= 1
      end)
      wait_until("the refresh to reach the failing API server", 10, function()
        return fake:stats().tokenreview_calls >= 2
      end)
      -- The failed refresh leaves the entry as it was: still served.
      assert.equal(200, gw:request("tok-worker-3").status)
      assert.equal(1, gw:metric("gateway_tokenreview_cache_misses_total"))
      -- Past the original expiry the entry is gone and the API still fails: 503, not 200.
      local first_503
      wait_until("the entry to expire", 30, function()
        local sent = proc.now()
        local status = gw:request("tok-worker-3").status
        if status == 503 then first_503 = sent return true end
        assert.equal(200, status)
        return false
      end)
      assert.equal(2, gw:metric("gateway_tokenreview_cache_misses_total"))
      -- Not extended by the failed refresh: an extended entry would live until at least
      -- 3 s (the refresh) + 6 s; the original one ends 6 s after the first answer.
      assert.is_true(first_503 - t0 < 8.5, "the entry outlived its expiry by " .. (first_503 - t0 - 6) .. " s")
    end)
  end)

  it("holds new connections in the accept queue beyond --max-connections", function()
    with_gateway({ "--workers", "1", "--policy", "none", "--max-connections", "3" }, function(gw)
      assert.equal(200, gw:request("tok-worker-4").status)
      assert.equal(3, gw:metric("gateway_connections_limit"))
      -- 5 keep-alive connections at once: 3 are served, 2 wait (accepted by the kernel,
      -- not by the gateway) and time out while the first 3 stay open.
      local r = gw:load{ c = 5, n = 5, tokens = { "tok-worker-4" }, timeout = 3 }
      assert.equal(3, r.codes["200"])
      assert.equal(2, r.errors)
      -- Every connection closed again: the count is back to 0 and new ones are served.
      wait_until("every connection to close", 30, function() return gw:metric("gateway_connections_open") == 0 end)
      local again = gw:load{ c = 3, n = 30, tokens = { "tok-worker-4" }, timeout = 5 }
      assert.equal(30, again.codes["200"])
    end)
  end)
end)
