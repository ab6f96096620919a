-- Integration: the gateway when the API server is at its worst (issue 5, "What it must
-- show"). Real processes only: the tokengate binary in front of the fake API server, whose
-- fault knobs (hang, close_connection, error_rate/error_status, garbage_body,
-- truncated_body, max_inflight/retry_after, latency_ms) make the API server misbehave.
-- Every case asserts what the client got (status, an upper bound on its wait), what the API
-- server received (the fake's call counters), the gateway's own counters, and that the
-- gateway process is still up.
--
-- No assertion is a tight wall-clock window: the machine running the suite may be small,
-- shared and busy. A deadline is shown by an answer at all (the fake holds or fails every
-- call, so without the deadline the client would wait until its own timeout) within a
-- generous bound (MARGIN_S over the configured deadline); failing fast by the counters (no
-- API call, a circuit rejection). Every wait is a bounded loop.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")

local MARGIN_S = 10.0

local function sa(ns, name, token)
  return { token = token, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

-- 2000 valid tokens; next_token() hands out one never used before in this file, so each
-- "cold" request really is a cache miss whatever gateway it goes to.
local VALID = {}
local TOKEN_TABLE = {}
for i = 1, 2000 do
  VALID[i] = "tok-res-" .. i
  TOKEN_TABLE[i] = sa("team-" .. (i % 3), "sa-" .. i, VALID[i])
end
local used = 0
local function next_token()
  used = used + 1
  assert(used <= #VALID, "ran out of valid tokens")
  return VALID[used]
end
local function next_tokens(n)
  local list = {}
  for i = 1, n do list[i] = next_token() end
  return list
end

local function wait_until(what, fn, timeout_s)
  local deadline = proc.now() + timeout_s
  repeat
    local v = fn()
    if v then return v end
    proc.sleep(0.1)
  until proc.now() >= deadline
  error("timed out after " .. timeout_s .. " s waiting for " .. what)
end

-- One request; returns the http.lua result (res.time is curl's own time_total).
local function ask(gw, token) return gw:request(token) end

-- Asserts a cold request failed closed: 503 with Retry-After, answered within bound_s.
local function assert_unavailable(res, bound_s, what)
  assert.equal(503, res.status, what .. ": status " .. res.status .. " " .. res.body)
  assert.truthy(tonumber(res.headers["retry-after"]), what .. ": no Retry-After")
  assert.is_true(res.time < bound_s, string.format("%s: answered after %.3f s (bound %.1f s)", what, res.time, bound_s))
end

local function new_gateway(fake, args, opts)
  opts = opts or {}
  local all = { "--policy", "none" }
  for _, a in ipairs(args) do all[#all + 1] = a end
  return gateway_mod.start{ fake = fake, dir = opts.dir, args = all, wait_ready = opts.wait_ready,
    apiserver = opts.apiserver, apiserver_ca = opts.apiserver_ca }
end

local function count_keys(t)
  local n = 0
  for _ in pairs(t or {}) do n = n + 1 end
  return n
end

describe("resilience", function()
  local fake
  local gateways = {}
  local dir

  local function start_gateway(args, opts)
    opts = opts or {}
    opts.dir = opts.dir or dir
    local gw = new_gateway(opts.fake or fake, args, opts)
    gateways[#gateways + 1] = gw
    return gw
  end

  local function calls() return fake:stats().tokenreview_calls end

  lazy_setup(function()
    dir = proc.tmpdir()
    fake = fake_mod.start{ tokens = TOKEN_TABLE }
  end)

  lazy_teardown(function()
    for _, gw in ipairs(gateways) do
      if gw:alive() then gw:stop() end
      local log = gw:log_text()
      for i = 1, used do
        assert.is_nil(log:find(VALID[i], 1, true), "token leaked into the gateway log")
      end
    end
    if fake then fake:stop() end
    if dir and not os.getenv("TOKENGATE_KEEP_SPEC_FILES") then proc.run("rm -rf " .. proc.quote(dir)) end
  end)

  before_each(function()
    fake:reset()
  end)

  describe("when the API server hangs", function()
    it("answers cold tokens 503 within --review-timeout, keeps warm tokens at 200, and recovers by itself", function()
      local TIMEOUT_S, COOLDOWN_S = 1, 2
      local gw = start_gateway{ "--review-timeout", "1s", "--circuit-cooldown", "2s", "--cache-ttl", "2m" }
      local warm = next_tokens(10)
      local r = gw:load{ c = 10, n = 10, tokens = warm }
      assert.equal(10, r.codes["200"])

      fake:config{ hang = true }
      fake:reset_stats()
      -- A burst of cold tokens: each one waits for the API server at most --review-timeout.
      local cold = next_tokens(8)
      local burst = gw:load{ c = 8, n = 8, tokens = cold }
      assert.equal(8, burst.codes["503"], "cold burst: " .. require("cjson").encode(burst))
      assert.equal(0, burst.errors)
      assert.is_true(burst.max_ms < (TIMEOUT_S + MARGIN_S) * 1000, "slowest cold answer " .. burst.max_ms .. " ms")
      -- Warm tokens answer from the cache while the API server hangs: all 200 are cache
      -- hits (and none reaches the API server, checked below).
      local hits = gw:metric("gateway_tokenreview_cache_hits_total")
      local w = gw:load{ c = 10, n = 200, tokens = warm }
      assert.equal(200, w.codes["200"])
      assert.equal(hits + 200, gw:metric("gateway_tokenreview_cache_hits_total"))
      -- More cold tokens, one at a time: still 503 within the deadline (or at once, while
      -- the circuit breaker is open after the run of timeouts).
      for i = 1, 3 do
        assert_unavailable(ask(gw, next_token()), TIMEOUT_S + MARGIN_S, "cold request " .. i)
        assert.equal(200, ask(gw, warm[i]).status)
      end
      -- A timed-out review is not repeated: the API server saw at most one call per cold token.
      local hung_calls = calls()
      assert.is_true(hung_calls >= 1 and hung_calls <= 8 + 3, "calls during the hang: " .. hung_calls)
      local by_token = fake:stats().by_token
      for _, t in ipairs(warm) do assert.is_nil(by_token[t], "a warm token reached the API server") end
      assert.is_true(gw:metric('gateway_tokenreview_api_errors_total{reason="timeout"}') >= 1)
      assert.is_true(gw:alive())

      -- The API server answers again: the gateway recovers without help, at the latest once
      -- the circuit breaker's cool-down has passed and its probe succeeded.
      fake:config{ hang = false }
      local recovered = wait_until("a cold token to be answered 200 again", function()
        return ask(gw, next_token()).status == 200
      end, COOLDOWN_S + TIMEOUT_S + MARGIN_S)
      assert.truthy(recovered)
      fake:reset_stats()
      local after = next_tokens(5)
      local a = gw:load{ c = 5, n = 5, tokens = after }
      assert.equal(5, a.codes["200"])
      assert.equal(5, calls())
      assert.equal(0, gw:metric("gateway_apiserver_circuit_open"))
      gw:stop()
    end)
  end)

  describe("when the API server fails", function()
    -- Each case gets a fresh gateway (a closed circuit breaker), warms one token with the
    -- API server healthy, turns the fault on and sends cold tokens one at a time.
    local TIMEOUT_S = 2
    local ARGS = { "--review-timeout", "2s", "--circuit-cooldown", "1s" }

    local function fault_case(knobs, expect)
      local gw = start_gateway(ARGS)
      local warm = next_token()
      assert.equal(200, ask(gw, warm).status)
      fake:config(knobs)
      fake:reset_stats()
      local n = 5
      for i = 1, n do
        assert_unavailable(ask(gw, next_token()), TIMEOUT_S + MARGIN_S, "cold request " .. i)
        assert.equal(200, ask(gw, warm).status, "warm token during the fault")
      end
      assert.is_true(gw:alive(), "the gateway died")
      local m = gw:metrics()
      local c = calls()
      expect(c, m, n)
      -- Healthy again: cold tokens pass once the circuit breaker's 1 s cool-down is over.
      fake:reset()
      wait_until("recovery", function() return ask(gw, next_token()).status == 200 end, 1 + TIMEOUT_S + MARGIN_S)
      fake:reset_stats()
      assert.equal(200, ask(gw, next_token()).status)
      assert.equal(1, calls())
      gw:stop()
    end

    it("answers 503 when the API server closes connections (resets), and retries them", function()
      fault_case({ close_connection = true }, function(c, m, n)
        assert.is_true(c > 1, "resets are retried: " .. c .. " calls for " .. n .. " requests")
        assert.is_true(m["gateway_apiserver_retries_total"] >= 1)
        assert.is_true(m['gateway_tokenreview_api_errors_total{reason="network"}'] >= 1)
      end)
    end)

    for _, status in ipairs{ 500, 504 } do
      it("answers 503 during a burst of " .. status .. "s, retries them with backoff, and recovers", function()
        fault_case({ error_rate = 1, error_status = status }, function(c, m, n)
          assert.is_true(c > 1, status .. "s are retried: " .. c .. " calls for " .. n .. " requests")
          assert.is_true(m["gateway_apiserver_retries_total"] >= 1)
          assert.is_true(m['gateway_tokenreview_api_errors_total{reason="http"}'] >= 1)
        end)
      end)
    end

    it("answers 503 to a garbage body, one call per request", function()
      fault_case({ garbage_body = true }, function(c, m, n)
        -- A 201 the gateway cannot read is a bad response: failed, not cached, not retried.
        assert.equal(n, c)
        assert.equal(n, m['gateway_tokenreview_api_errors_total{reason="bad_response"}'])
      end)
    end)

    it("answers 503 to truncated JSON, one call per request", function()
      fault_case({ truncated_body = true }, function(c, m, n)
        assert.equal(n, c)
        assert.equal(n, m['gateway_tokenreview_api_errors_total{reason="bad_response"}'])
      end)
    end)

    it("answers 503 when the API server is down (connection refused), retrying within the deadline", function()
      -- A fake of its own, stopped after warming: its port then refuses connections.
      local own_dir = proc.tmpdir()
      local down = fake_mod.start{ tokens = TOKEN_TABLE, dir = own_dir }
      local gw = start_gateway(ARGS, { fake = down })
      local warm = next_token()
      assert.equal(200, ask(gw, warm).status)
      proc.stop(down.handle)
      down.handle = nil
      for i = 1, 5 do
        assert_unavailable(ask(gw, next_token()), TIMEOUT_S + MARGIN_S, "cold request " .. i)
        assert.equal(200, ask(gw, warm).status, "warm token while the API server is down")
      end
      assert.is_true(gw:alive())
      local m = gw:metrics()
      assert.is_true(m["gateway_apiserver_retries_total"] >= 1)
      assert.is_true(m['gateway_tokenreview_api_errors_total{reason="network"}'] >= 1)
      gw:stop()
      down:stop()
      proc.run("rm -rf " .. proc.quote(own_dir))
    end)

    it("answers 503 and sends no token when the API server's certificate is from another CA", function()
      fake:reset_stats()
      local gw = start_gateway(ARGS, { apiserver_ca = fake.dir .. "/other-ca.crt", wait_ready = false })
      for i = 1, 5 do
        assert_unavailable(ask(gw, next_token()), TIMEOUT_S + MARGIN_S, "cold request " .. i)
      end
      assert.equal(503, http.get(gw.admin_url .. "/readyz").status)
      assert.is_true(gw:alive())
      -- The TLS handshake failed: no request, let alone a token, reached that server.
      assert.equal(0, fake:stats().calls)
      assert.is_true(gw:metric('gateway_tokenreview_api_errors_total{reason="network"}') >= 1)
      assert.equal(0, gw:metric('gateway_requests_total{code="200"}'))
      gw:stop()
    end)
  end)

  describe("the circuit breaker", function()
    it("fails fast without calling the API server once open, then lets one probe through", function()
      -- A 30 s review timeout: "at once" (no API call, a circuit rejection) is then far
      -- from anything a deadline would produce, even on a slow machine.
      local REVIEW_TIMEOUT_S, AT_ONCE_S = 30, 10
      local gw = start_gateway{ "--circuit-failure-threshold", "3", "--circuit-cooldown", "2s", "--review-timeout", "30s" }
      assert.equal(200, ask(gw, next_token()).status)
      fake:config{ error_rate = 1, error_status = 500 }
      fake:reset_stats()

      -- One cold token: its call and two retries fail; the third failure opens the circuit.
      assert_unavailable(ask(gw, next_token()), REVIEW_TIMEOUT_S, "first cold request")
      local opened = proc.now()
      assert.equal(3, calls())
      assert.equal(1, gw:metric("gateway_apiserver_circuit_open"))
      assert.equal(1, gw:metric("gateway_apiserver_circuit_opens_total"))

      -- Open: cold tokens fail at once (far under the review timeout), no API call.
      local rejections = gw:metric("gateway_apiserver_circuit_rejections_total")
      for i = 1, 5 do
        assert_unavailable(ask(gw, next_token()), AT_ONCE_S, "cold request " .. i .. " while open")
      end
      assert.equal(rejections + 5, gw:metric("gateway_apiserver_circuit_rejections_total"))
      assert.equal(3, calls())
      assert.is_true(gw:metric("gateway_apiserver_circuit_rejections_total") >= 5)

      -- Still within the cool-down, even a healthy API server is not called.
      fake:config{ error_rate = 0 }
      if proc.now() - opened < 1.5 then
        assert_unavailable(ask(gw, next_token()), AT_ONCE_S, "cold request within the cool-down")
        assert.equal(3, calls())
      end

      -- After the cool-down, with the API server failing again: of 10 concurrent cold
      -- tokens exactly one call (the probe) reaches it; the circuit opens again.
      fake:config{ error_rate = 1, latency_ms = 300 }
      proc.sleep(math.max(0, opened + 2.2 - proc.now()))
      fake:reset_stats()
      local r = gw:load{ c = 10, n = 10, tokens = next_tokens(10) }
      assert.equal(10, r.codes["503"])
      assert.is_true(r.max_ms < REVIEW_TIMEOUT_S * 1000)
      assert.equal(1, calls())
      assert.equal(1, gw:metric("gateway_apiserver_circuit_open"))
      assert.equal(2, gw:metric("gateway_apiserver_circuit_opens_total"))
      local reopened = proc.now() -- the probe failed before tgload returned

      -- After the next cool-down with the API server healthy: the probe succeeds and closes
      -- the circuit; every request passes again.
      fake:config{ error_rate = 0, latency_ms = 0 }
      proc.sleep(math.max(0, reopened + 2.2 - proc.now()))
      fake:reset_stats()
      assert.equal(200, ask(gw, next_token()).status)
      assert.equal(1, calls())
      assert.equal(0, gw:metric("gateway_apiserver_circuit_open"))
      local ok = gw:load{ c = 10, n = 10, tokens = next_tokens(10) }
      assert.equal(10, ok.codes["200"])
      assert.equal(11, calls())
      assert.is_true(gw:alive())
      gw:stop()
    end)
  end)

  describe("a 429 storm", function()
    -- The fake admits 5 reviews at once and answers the rest 429 with Retry-After: 1;
    -- each review takes ~200 ms. The gateway may call 20/s with a burst of 10.
    local QPS, BURST = 20, 10
    -- Tolerance on the bound: 2 calls, for the instants at which the gateway's bucket and
    -- the wall clock around tgload are read (the window measured here encloses the gateway's).
    local TOLERANCE = 2

    it("never calls faster than QPS plus burst, and serves the second pass from the cache", function()
      local gw = start_gateway{ "--apiserver-qps", tostring(QPS), "--apiserver-burst", tostring(BURST),
        "--review-timeout", "5s", "--circuit-cooldown", "1s" }
      -- 50 connections over 200 distinct tokens: far more demand than 20 calls/s.
      local tokens = next_tokens(200)
      fake:config{ max_inflight = 5, retry_after = 1, latency_ms = 200 }
      proc.sleep(BURST / QPS + 0.2) -- the bucket is full (as after a quiet period)
      fake:reset_stats()
      local t0 = proc.now()
      local r = gw:load{ c = 50, d = 4, tokens = tokens, timeout = 10 }
      local duration = proc.now() - t0
      local s = fake:stats()
      local bound = QPS * duration + BURST + TOLERANCE
      io.stderr:write(string.format("\n[429 storm] %d calls (%d throttled) in %.2f s, bound %.1f; answers %s\n",
        s.calls, s.throttled, duration, bound, require("cjson").encode(r.codes)))
      assert.is_true(s.throttled >= 1, "the API server never throttled: no storm")
      assert.is_true(s.max_inflight_seen <= 5)
      assert.is_true(s.calls <= bound,
        string.format("%d calls in %.2f s: more than %d/s + %d burst (+%d)", s.calls, duration, QPS, BURST, TOLERANCE))
      -- Only verdicts or 503: never a transport error, never anything else.
      assert.equal(0, r.errors)
      assert.equal(r.requests, (r.codes["200"] or 0) + (r.codes["503"] or 0))
      assert.is_true((r.codes["200"] or 0) > 0)
      assert.is_true(r.max_ms < (5 + MARGIN_S) * 1000, "slowest answer " .. r.max_ms .. " ms")
      assert.is_true(gw:metric('gateway_tokenreview_api_errors_total{reason="throttled"}') +
        gw:metric("gateway_apiserver_retries_total") >= 1)

      local storm_metrics = gw:metrics()
      -- The 429s lowered the in-flight limit to about what the API server holds (5 seats);
      -- the call rate never passed the flag (s.calls above).
      assert.is_true(storm_metrics["gateway_apiserver_concurrency_limit_cuts_total"] >= 1, "no 429 lowered the limit")
      assert.is_true(storm_metrics["gateway_apiserver_concurrency_limit"] <= 8,
        "limit " .. storm_metrics["gateway_apiserver_concurrency_limit"])
      assert.equal(QPS, storm_metrics["gateway_apiserver_rate_qps"])
      local cached = storm_metrics["gateway_tokenreview_cache_entries"]
      assert.is_true(cached >= 10, "only " .. cached .. " tokens got a verdict during the storm")

      -- Second pass over the same tokens, API server healthy: only the tokens that never got
      -- a verdict in the storm are reviewed; every token that got one comes from the cache.
      -- (The 1 s sleep lets a circuit breaker the storm may have opened reach its probe:
      -- whether it may open at all is asserted last.)
      fake:reset()
      proc.sleep(1.2)
      local r2 = gw:load{ c = 10, n = 200, tokens = tokens }
      assert.equal(200, r2.codes["200"], "second pass: " .. require("cjson").encode(r2))
      local s2 = fake:stats()
      assert.equal(200 - cached, s2.tokenreview_calls)
      assert.equal(200 - cached, count_keys(s2.by_token))
      assert.is_true(gw:alive())
      gw:stop()

      -- A 429 is the API server telling the gateway how to behave, not a failure: a storm of
      -- them must not open the circuit breaker (which would then refuse every cold token for
      -- the cool-down, although the API server answers). Nor may the calls the gateway makes
      -- with too little of their review's deadline left (after waiting out Retry-After
      -- pauses) time out and count as API server failures.
      assert.equal(0, storm_metrics["gateway_apiserver_circuit_opens_total"],
        "a 429 storm opened the circuit breaker; API calls that timed out: " ..
        storm_metrics['gateway_tokenreview_api_errors_total{reason="timeout"}'] ..
        "; see the gateway log for 'Operation timed out after N milliseconds'")
    end)

  end)

  describe("with --stale-if-error", function()
    -- A warm token outlives its TTL while the API server is out; a token never seen gets
    -- 503; the same gateway without the flag answers 503 after the TTL.
    for _, outage in ipairs{ "stopped", "hanging" } do
      it("warm tokens survive a full outage (API server " .. outage .. ") past their TTL", function()
        local own_dir = proc.tmpdir()
        local f = fake_mod.start{ tokens = TOKEN_TABLE, dir = own_dir }
        local common = { "--cache-ttl", "2s", "--review-timeout", "1s", "--circuit-cooldown", "5s" }
        local stale_args = { "--stale-if-error", "30s" }
        for _, a in ipairs(common) do stale_args[#stale_args + 1] = a end
        local gw_stale = start_gateway(stale_args, { fake = f })
        local gw_plain = start_gateway(common, { fake = f })
        local warm = next_tokens(5)
        for _, t in ipairs(warm) do
          assert.equal(200, ask(gw_stale, t).status)
          assert.equal(200, ask(gw_plain, t).status)
        end
        f:reset_stats()
        if outage == "stopped" then
          proc.stop(f.handle)
          f.handle = nil
        else
          f:config{ hang = true }
        end
        proc.sleep(4) -- twice the TTL
        -- The warm tokens, all at once: each waits for its fresh review to fail (at most
        -- --review-timeout), then the gateway with the flag serves the stale verdict.
        local r_stale = gw_stale:load{ c = 5, n = 5, tokens = warm }
        assert.equal(5, r_stale.codes["200"], "stale-if-error: " .. require("cjson").encode(r_stale))
        assert.is_true(r_stale.max_ms < (1 + MARGIN_S) * 1000, "slowest stale answer " .. r_stale.max_ms .. " ms")
        local r_plain = gw_plain:load{ c = 5, n = 5, tokens = warm }
        assert.equal(5, r_plain.codes["503"], "no stale-if-error: " .. require("cjson").encode(r_plain))
        assert.is_true(r_plain.max_ms < (1 + MARGIN_S) * 1000, "slowest 503 " .. r_plain.max_ms .. " ms")
        assert_unavailable(ask(gw_stale, next_token()), 1 + MARGIN_S, "a token never seen")
        assert.equal(5, gw_stale:metric("gateway_tokenreview_stale_served_total"))
        assert.equal(0, gw_plain:metric("gateway_tokenreview_stale_served_total"))
        assert.truthy(gw_stale:log_text():find("served a stale verdict", 1, true))
        assert.is_true(gw_stale:alive() and gw_plain:alive())
        if outage == "hanging" then
          -- At most one (timed-out) attempt per request made during the outage: 5 + 1 to the
          -- gateway with the flag, 5 to the one without.
          assert.is_true(f:stats().tokenreview_calls <= 11)
        end
        gw_stale:stop()
        gw_plain:stop()
        if f.handle then f:config{ hang = false } end
        f:stop()
        proc.run("rm -rf " .. proc.quote(own_dir))
      end)
    end
  end)

  describe("a flood of distinct garbage tokens", function()
    local QPS, BURST, PENDING = 50, 100, 100
    local TOLERANCE = 2 -- as in the 429 storm: the reading instants of bucket and clock

    it("costs at most QPS x duration + burst API calls and evicts no cached good token", function()
      -- A small cache (400 entries, 25% for negatives) so that negatives must be evicted.
      local gw = start_gateway{ "--apiserver-qps", tostring(QPS), "--apiserver-burst", tostring(BURST),
        "--review-max-pending", tostring(PENDING), "--cache-max-entries", "400", "--cache-negative-ttl", "5m",
        "--cache-ttl", "5m" }
      local good = next_tokens(50)
      local w = gw:load{ c = 10, n = 50, tokens = good }
      assert.equal(50, w.codes["200"])
      assert.equal(50, gw:metric("gateway_tokenreview_cache_entries"))
      local evictions_before = gw:metric("gateway_tokenreview_cache_evictions_total")

      local garbage = {}
      local salt = tostring(math.random(1, 1e9))
      for i = 1, 10000 do garbage[i] = "garbage-" .. salt .. "-" .. i end
      fake:reset_stats()
      local t0 = proc.now()
      local r = gw:load{ c = 200, n = 10000, tokens = garbage, timeout = 20 }
      local duration = proc.now() - t0
      local s = fake:stats()
      local bound = QPS * duration + BURST + TOLERANCE
      io.stderr:write(string.format("\n[garbage flood] %d calls in %.2f s, bound %.1f; answers %s\n",
        s.tokenreview_calls, duration, bound, require("cjson").encode(r.codes)))
      assert.is_true(s.tokenreview_calls <= bound,
        string.format("%d calls in %.2f s: more than %d/s + %d burst (+%d)", s.tokenreview_calls, duration, QPS,
          BURST, TOLERANCE))
      assert.equal(10000, r.requests)
      assert.equal(0, r.errors)
      assert.is_nil(r.codes["200"])
      -- Each reviewed garbage token got its 401; the rest were turned away with 503.
      assert.equal(s.tokenreview_calls, r.codes["401"])
      assert.equal(10000 - s.tokenreview_calls, r.codes["503"])
      local m = gw:metrics()
      assert.is_true(m["gateway_apiserver_queue_rejections_total"] > 0, "the review queue never overflowed")
      -- Negatives were evicted (only negatives may be, to make room for negatives) ...
      assert.is_true(m["gateway_tokenreview_cache_evictions_total"] > evictions_before)
      assert.is_true(gw:alive())

      -- ... and every good token is still cached: 200 without a call to the API server.
      fake:reset_stats()
      local again = gw:load{ c = 10, n = 50, tokens = good }
      assert.equal(50, again.codes["200"])
      assert.equal(0, calls())
      assert.equal(0, count_keys(fake:stats().by_token))
      gw:stop()
    end)
  end)
end)
