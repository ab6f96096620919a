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

  local function worker_requests(gw)
    local m = gw:metrics()
    return m['gateway_worker_requests_total{worker="0"}'] or 0, m['gateway_worker_requests_total{worker="1"}'] or 0
  end

  it("shares one TokenReview among 100 concurrent cold requests spread over 2 workers", function()
    fake:config{ latency_ms = 200 }
    with_gateway({ "--workers", "2", "--policy", "none" }, function(gw)
      assert.equal(2, gw:metric("gateway_workers"))
      local before0, before1 = worker_requests(gw)
      local r = gw:load{ c = 100, n = 100, tokens = { "tok-worker-1" } }
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

  it("refreshes a steadily used token before it expires, without a caller waiting", function()
    with_gateway({ "--workers", "2", "--policy", "none", "--cache-ttl", "2s", "--cache-refresh-ahead", "50%" },
      function(gw)
        assert.equal(200, gw:request("tok-worker-2").status)
        assert.equal(1, gw:metric("gateway_tokenreview_cache_misses_total"))
        -- 3.5 s of steady traffic on both workers: the entry (2 s) is refreshed once its
        -- second half begins (then every second), so it never expires and no request
        -- misses again.
        local r = gw:load{ c = 4, d = 3.5, tokens = { "tok-worker-2" } }
        assert.equal(0, r.errors)
        assert.equal(r.requests, r.codes["200"])
        local calls = fake:stats().tokenreview_calls
        io.stderr:write(string.format("\n    %d requests over 3.5 s, TTL 2 s: %d TokenReviews, slowest %.1f ms\n",
          r.requests, calls, r.max_ms))
        assert.equal(1, gw:metric("gateway_tokenreview_cache_misses_total"))
        assert.is_true(calls >= 3, "refreshes did not reach the API server (" .. calls .. " calls)")
        -- At most one refresh per claim interval per entry, across both workers: the first
        -- review, then one about every second for 3.5 s.
        assert.is_true(calls <= 5, calls .. " TokenReviews: refreshes were not deduplicated")
        assert.equal(calls - 1, gw:metric('gateway_tokenreview_refreshes_total{result="started"}'))
      end)
  end)

  it("keeps an entry only until its original expiry when the refresh fails", function()
    with_gateway({ "--workers", "2", "--policy", "none", "--cache-ttl", "2s", "--cache-refresh-ahead", "50%",
        "--circuit-failure-threshold", "100" }, function(gw)
      local t0 = proc.now()
      assert.equal(200, gw:request("tok-worker-3").status)
      fake:config{ error_rate = 1, error_status = 500 }
      proc.sleep(math.max(0, 1.2 - (proc.now() - t0)))
      -- In the refresh window: answered from the cache at once; the refresh fails behind it.
      assert.equal(200, gw:request("tok-worker-3").status)
      proc.sleep(0.3)
      assert.equal(200, gw:request("tok-worker-3").status)
      local refreshed = fake:stats().tokenreview_calls
      assert.is_true(refreshed >= 2, "the refresh was not attempted")
      -- Past the original expiry: the entry is gone, the API still fails: 503, not 200.
      proc.sleep(math.max(0, 2.3 - (proc.now() - t0)))
      assert.equal(503, gw:request("tok-worker-3").status)
    end)
  end)

  it("holds new connections in the accept queue beyond --max-connections", function()
    with_gateway({ "--workers", "1", "--policy", "none", "--max-connections", "3" }, function(gw)
      assert.equal(200, gw:request("tok-worker-4").status)
      assert.equal(3, gw:metric("gateway_connections_limit"))
      -- 5 keep-alive connections at once: 3 are served, 2 wait (accepted by the kernel,
      -- not by the gateway) and time out while the first 3 stay open.
      local r = gw:load{ c = 5, n = 5, tokens = { "tok-worker-4" }, timeout = 1.5 }
      assert.equal(3, r.codes["200"])
      assert.equal(2, r.errors)
      -- Every connection closed again: the count is back to 0 and new ones are served.
      local deadline = proc.now() + 5
      while gw:metric("gateway_connections_open") > 0 and proc.now() < deadline do proc.sleep(0.05) end
      assert.equal(0, gw:metric("gateway_connections_open"))
      local again = gw:load{ c = 3, n = 30, tokens = { "tok-worker-4" }, timeout = 5 }
      assert.equal(30, again.codes["200"])
    end)
  end)
end)
