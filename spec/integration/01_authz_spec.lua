-- Integration: the real tokengate binary in authz mode in front of the fake API server
-- over TLS. Each assertion is about what a client or the API server actually saw.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")

local function sa(ns, name, token)
  return { token = token, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

-- base64url without padding, for building JWT-shaped tokens.
local function b64url(s)
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for k = 1, chars do
      local idx = math.floor(n / 2 ^ (6 * (4 - k))) % 64
      out[#out + 1] = alphabet:sub(idx + 1, idx + 1)
    end
  end
  return table.concat(out)
end

local function jwt_expiring_in(seconds, salt)
  local header = b64url('{"alg":"RS256","kid":"test"}')
  local payload = b64url(string.format('{"sub":"%s","exp":%d}', salt, os.time() + seconds))
  return header .. "." .. payload .. ".c2lnbmF0dXJl"
end

-- 100 distinct valid tokens across two namespaces, plus a few named ones.
local TOKENS = {}
local token_table = { sa("team-a", "webhook-sender", "tok-team-a-sender"), sa("team-b", "billing", "tok-team-b-billing") }
for i = 1, 100 do
  local ns = (i % 2 == 0) and "team-a" or "team-b"
  local t = "tok-bulk-" .. i
  TOKENS[i] = t
  token_table[#token_table + 1] = sa(ns, "bulk-" .. i, t)
end

describe("tokengate authz mode", function()
  local fake, gw

  local function calls() return fake:stats().tokenreview_calls end

  lazy_setup(function()
    fake = fake_mod.start{ tokens = token_table }
    -- --policy none: every authenticated identity is allowed (policies have their own spec).
    gw = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--cache-ttl", "2m", "--cache-negative-ttl", "2s" } }
  end)

  lazy_teardown(function()
    if gw then
      local log = gw:log_text()
      gw:stop()
      -- No token may ever reach a log line.
      for _, entry in ipairs(token_table) do
        assert.is_nil(log:find(entry.token, 1, true), "token leaked into the gateway log")
      end
    end
    if fake then fake:stop() end
  end)

  before_each(function()
    gw:flush()
    fake:config{ latency_ms = 0, max_inflight = 0, hang = false }
    fake:reset_stats()
  end)

  describe("when the token is valid", function()
    it("answers 200 with the identity headers", function()
      local res = gw:request("tok-team-a-sender")
      assert.equal(200, res.status)
      assert.equal("system:serviceaccount:team-a:webhook-sender", res.headers["x-remote-user"])
      assert.equal("uid-team-a-webhook-sender", res.headers["x-remote-uid"])
      assert.equal("system:serviceaccounts|system:serviceaccounts:team-a|system:authenticated",
        res.headers["x-remote-groups"])
      assert.equal(1, calls())
    end)

    it("answers every method and path (auth_request and ext_authz forward them)", function()
      for _, m in ipairs({ "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS" }) do
        local res = http.request{ method = m, url = gw.url .. "/any/path?q=1",
          headers = { "Authorization: Bearer tok-team-a-sender" } }
        assert.equal(200, res.status, m)
      end
      assert.equal(1, calls())
    end)
  end)

  describe("when the token is unknown", function()
    it("answers 401 with WWW-Authenticate and caches the negative verdict for its TTL", function()
      local res = gw:request("not-a-real-token")
      assert.equal(401, res.status)
      assert.equal('Bearer realm="tokengate"', res.headers["www-authenticate"])
      assert.is_nil(res.headers["x-remote-user"])
      assert.equal(401, gw:request("not-a-real-token").status)
      assert.equal(1, calls())
      proc.sleep(2.3)
      assert.equal(401, gw:request("not-a-real-token").status)
      assert.equal(2, calls())
    end)
  end)

  describe("when the Authorization header is missing or malformed", function()
    it("answers 401 without calling the API server and keeps running", function()
      local cases = {
        {},
        { "Authorization: Basic dXNlcjpwYXNz" },
        { "Authorization: Bearer" },
        { "Authorization: Bearer a b" },
        { "Authorization: Bearer tok\"en" },
        { "Authorization: Bearerabc" },
        { "Authorization: Bearer " .. string.rep("a", 16385) },
        { "Authorization: Bearer tok-team-a-sender", "Authorization: Bearer tok-team-b-billing" },
        { "Authorization: Bearer t\195\169st" },
      }
      for i, headers in ipairs(cases) do
        local res = http.get(gw.url .. "/", headers)
        assert.equal(401, res.status, "case " .. i)
        assert.equal('Bearer realm="tokengate"', res.headers["www-authenticate"], "case " .. i)
      end
      assert.equal(0, calls())
      assert.is_true(gw:alive())
    end)

    it("accepts a token of exactly --max-token-bytes", function()
      local res = gw:request(string.rep("a", 16384))
      assert.equal(401, res.status) -- reviewed (unknown), not refused as too long
      assert.equal(1, calls())
    end)
  end)

  describe("when the input is hostile", function()
    it("refuses too many header fields (431) and oversized headers, and keeps running", function()
      local many = {}
      for i = 1, 120 do many[#many + 1] = "X-Filler-" .. i .. ": x" end
      many[#many + 1] = "Authorization: Bearer tok-team-a-sender"
      assert.equal(431, http.get(gw.url .. "/", many).status)
      local huge = http.get(gw.url .. "/", { "Authorization: Bearer tok-team-a-sender", "X-Big: " .. string.rep("b", 60000) })
      assert.is_true(huge.status >= 400 and huge.status < 500, "status " .. huge.status)
      assert.equal(200, gw:request("tok-team-a-sender").status)
      assert.is_true(gw:alive())
    end)

    it("closes a connection that sends nothing within --read-timeout (slowloris)", function()
      local gw2 = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--read-timeout", "1s" } }
      local host, port = gw2.url:match("http://([^:]+):(%d+)")
      -- Open a connection, send half a request line, then wait: the gateway must hang up.
      local out = proc.run(string.format(
        "bash -c 'exec 3<>/dev/tcp/%s/%s; printf \"GET / HT\" >&3; t0=$(date +%%s%%N); " ..
        "cat <&3 >/dev/null; t1=$(date +%%s%%N); echo closed_after_ms=$(( (t1 - t0) / 1000000 ))'", host, port))
      gw2:stop()
      local ms = tonumber(out:match("closed_after_ms=(%d+)"))
      assert.truthy(ms, out)
      assert.is_true(ms >= 800 and ms < 4000, "closed after " .. tostring(ms) .. " ms")
    end)
  end)

  describe("single-flight", function()
    it("makes exactly 1 TokenReview for 100 concurrent requests with one token on a cold cache", function()
      fake:config{ latency_ms = 300 }
      local r = gw:load{ c = 100, n = 100, tokens = { "tok-team-b-billing" } }
      assert.equal(100, r.requests)
      assert.equal(100, r.codes["200"])
      assert.equal(1, calls())
      assert.is_true(gw:metric("gateway_tokenreview_coalesced_total") >= 99)
    end)

    it("makes 100 calls for 100 distinct tokens, and 0 when they are warm", function()
      local cold = gw:load{ c = 50, n = 100, tokens = TOKENS }
      assert.equal(100, cold.codes["200"])
      assert.equal(100, calls())
      fake:reset_stats()
      local warm = gw:load{ c = 50, n = 100, tokens = TOKENS }
      assert.equal(100, warm.codes["200"])
      assert.equal(0, calls())
    end)
  end)

  describe("when the API server is slower than --review-timeout", function()
    it("answers 503 with Retry-After at its deadline, and caches nothing", function()
      local gw2 = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--review-timeout", "500ms" } }
      fake:reset_stats()
      -- The fake holds the review for good: only the gateway's deadline can answer (else
      -- the client's own 20 s timeout would end the request).
      fake:config{ hang = true }
      local res = gw2:request("tok-team-a-sender")
      fake:config{ hang = false }
      local timeouts = gw2:metric('gateway_tokenreview_api_errors_total{reason="timeout"}')
      gw2:stop()
      assert.equal(503, res.status)
      assert.truthy(tonumber(res.headers["retry-after"]))
      assert.is_true(timeouts >= 1)
    end)
  end)

  describe("when the API server throttles (429)", function()
    -- curl several requests at once; returns { {status=, retry_after=}, ... }
    local function parallel(url, tokens)
      local cmd, files = {}, {}
      for i, t in ipairs(tokens) do
        files[i] = os.tmpname()
        cmd[#cmd + 1] = string.format("curl -s -o /dev/null -D %s -H 'Authorization: Bearer %s' %s/ &",
          files[i], t, url)
      end
      proc.run(table.concat(cmd, " ") .. " wait")
      local answers = {}
      for i, f in ipairs(files) do
        local head = proc.read_file(f) or ""
        os.remove(f)
        answers[i] = { status = tonumber(head:match("^HTTP/1%.1 (%d+)")),
          retry_after = head:match("[Rr]etry%-[Aa]fter: (%d+)") }
      end
      return answers
    end

    it("answers 503 at once with the API server's Retry-After when it exceeds the review deadline", function()
      local gw2 = gateway_mod.start{ fake = fake, args = { "--policy", "none" } }
      fake:reset_stats()
      fake:config{ latency_ms = 400, max_inflight = 1, retry_after = 7 }
      local answers = parallel(gw2.url, { TOKENS[1], TOKENS[2], TOKENS[3], TOKENS[4], TOKENS[5], TOKENS[6] })
      assert.equal(6, #answers)
      local ok, throttled = 0, 0
      for _, a in ipairs(answers) do
        if a.status == 200 then ok = ok + 1 end
        if a.status == 503 then
          throttled = throttled + 1
          -- each refused review got its own 429: the API server's 7 s, passed on
          assert.equal("7", a.retry_after)
        end
      end
      -- One seat: the first call is admitted, the others that arrive while it runs get a
      -- 429 each and give up at once (7 s is past their deadline); one that arrives after it
      -- finished is admitted too (no global pause).
      assert.is_true(ok >= 1)
      assert.equal(6, ok + throttled)
      assert.is_true(throttled >= 1)
      local m = gw2:metrics()
      local api_throttled = m['gateway_tokenreview_api_errors_total{reason="throttled"}']
      assert.equal(fake:stats().throttled, api_throttled)
      assert.equal(throttled, api_throttled)
      assert.equal(throttled, m["gateway_apiserver_throttled_total"])
      -- The in-flight limit fell to what the API server held (one seat) ...
      assert.equal(1, m["gateway_apiserver_concurrency_limit"])
      -- ... and a 429 pauses nobody else: a new token is sent at once and admitted.
      local res = gw2:request(TOKENS[7])
      assert.equal(200, res.status)
      assert.equal(throttled, fake:stats().throttled)
      gw2:stop()
    end)

    it("retries a 429 after Retry-After when it fits in the review deadline", function()
      local gw2 = gateway_mod.start{ fake = fake, args = { "--policy", "none" } }
      fake:reset_stats()
      fake:config{ latency_ms = 300, max_inflight = 1, retry_after = 1 }
      local answers = parallel(gw2.url, { TOKENS[8], TOKENS[9], TOKENS[10] })
      fake:config{ latency_ms = 0, max_inflight = 0 }
      local ok = 0
      for _, a in ipairs(answers) do if a.status == 200 then ok = ok + 1 end end
      assert.equal(3, ok)
      assert.is_true(fake:stats().throttled >= 1)
      assert.is_true(gw2:metric("gateway_apiserver_retries_total") >= 1)
      gw2:stop()
    end)
  end)

  describe("cache expiry", function()
    it("makes exactly one new call after --cache-ttl", function()
      local gw2 = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--cache-ttl", "1s" } }
      fake:reset_stats()
      assert.equal(200, gw2:request("tok-team-a-sender").status)
      assert.equal(200, gw2:request("tok-team-a-sender").status)
      assert.equal(1, calls())
      proc.sleep(1.3)
      local r = gw2:load{ c = 20, n = 40, tokens = { "tok-team-a-sender" } }
      gw2:stop()
      assert.equal(40, r.codes["200"])
      assert.equal(2, calls())
    end)

    it("never caches past a JWT's exp claim", function()
      local JWT_SHORT = jwt_expiring_in(2, "short")
      token_table[#token_table + 1] = sa("team-c", "short-lived", JWT_SHORT)
      fake:reload(token_table)
      assert.equal(200, gw:request(JWT_SHORT).status)
      assert.equal(200, gw:request(JWT_SHORT).status)
      assert.equal(1, calls())
      proc.sleep(2.5)
      gw:request(JWT_SHORT)
      assert.equal(2, calls())
    end)
  end)

  describe("the admin listener", function()
    it("flushes exactly one namespace's entries", function()
      for i = 1, 20 do assert.equal(200, gw:request(TOKENS[i]).status) end
      fake:reset_stats()
      local res = gw:flush("?namespace=team-a")
      assert.equal(200, res.status)
      assert.equal('{"flushed":10}', res.body:gsub("%s+$", ""))
      for i = 1, 20 do assert.equal(200, gw:request(TOKENS[i]).status) end
      assert.equal(10, calls()) -- only the even (team-a) tokens were reviewed again
    end)

    it("flushes one user's entries", function()
      assert.equal(200, gw:request("tok-team-a-sender").status)
      assert.equal(200, gw:request("tok-team-b-billing").status)
      local res = gw:flush("?user=system:serviceaccount:team-a:webhook-sender")
      assert.equal('{"flushed":1}', res.body:gsub("%s+$", ""))
      fake:reset_stats()
      gw:request("tok-team-a-sender")
      gw:request("tok-team-b-billing")
      assert.equal(1, calls())
    end)

    it("refuses GET on /cache/flush and ambiguous filters", function()
      assert.equal(405, http.get(gw.admin_url .. "/cache/flush").status)
      assert.equal(400, gw:flush("?user=a&namespace=b").status)
    end)

    it("answers health and readiness", function()
      assert.equal(200, http.get(gw.admin_url .. "/healthz").status)
      assert.equal(200, http.get(gw.admin_url .. "/livez").status)
      assert.equal(200, http.get(gw.admin_url .. "/readyz").status)
      assert.equal(404, http.get(gw.admin_url .. "/nope").status)
    end)

    it("reports metrics that agree with the fake's counters", function()
      local before = gw:metrics()
      gw:load{ c = 10, n = 200, tokens = { TOKENS[30], TOKENS[31], TOKENS[32], "bad-token-x" } }
      local after = gw:metrics()
      local d = function(name) return (after[name] or 0) - (before[name] or 0) end
      assert.equal(calls(), d("gateway_tokenreview_api_calls_total"))
      assert.equal(4, calls())
      assert.equal(200, d("gateway_tokenreview_cache_hits_total") + d("gateway_tokenreview_cache_misses_total"))
      assert.equal(150, d('gateway_requests_total{code="200"}'))
      assert.equal(50, d('gateway_requests_total{code="401"}'))
      assert.equal(200, d("gateway_request_duration_seconds_count"))
      assert.is_true(after["gateway_tokenreview_cache_entries"] >= 4)
      assert.truthy(after["process_resident_memory_bytes"] > 0)
    end)

    it("passes promtool check metrics", function()
      local text = gw:metrics()._text
      local file = gw.dir .. "/metrics.txt"
      proc.write_file(file, text)
      local out, code = proc.run("promtool check metrics < " .. proc.quote(file))
      assert.equal(0, code, out)
    end)
  end)

  describe("the gateway's own credential", function()
    it("is re-read from its file when it changes", function()
      local cred = fake.dir .. "/gateway-cred.txt"
      proc.write_file(cred, "stale-credential\n")
      local gw2 = gateway_mod.start{ fake = fake, token_file = cred, wait_ready = false, args = { "--policy", "none" } }
      fake:reset_stats()
      local res = gw2:request("tok-team-a-sender")
      assert.equal(503, res.status) -- the API server answered 401 to the gateway: fail closed
      assert.equal(503, http.get(gw2.admin_url .. "/readyz").status)
      proc.write_file(cred, proc.read_file(fake.credential_file))
      proc.sleep(1.1) -- the file is checked at most once a second
      local ok = gw2:request("tok-team-a-sender")
      gw2:stop()
      assert.equal(200, ok.status)
    end)
  end)
end)
