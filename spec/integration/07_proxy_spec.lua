-- Integration: the real tokengate binary in proxy mode (--mode proxy --upstream URL) between
-- a client (the curl command line tool) and spec/support/test-upstream, which records
-- every request it receives; the fake API server answers the reviews. Every assertion is
-- about what the client got back, what the application received, or what the gateway
-- process did (its memory, its metrics).
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local upstream_mod = require("support.upstream")
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")

local MiB = 1024 * 1024

local function sa(ns, name)
  return { token = "tok-" .. ns .. "-" .. name, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local TEAM_A = sa("team-a", "sender")
local KUBE_SYSTEM = sa("kube-system", "ctrl")
local COLD = sa("team-c", "cold") -- first used while the API server fails: never cached before
local TOKENS = { TEAM_A, KUBE_SYSTEM, COLD }
local GROUPS_A = "system:serviceaccounts|system:serviceaccounts:team-a|system:authenticated"

-- Allows everyone but kube-system and /admin/*, adding X-Tenant; anonymous under /public/.
local POLICY = [[
local tg = require("tokengate")
return {
  anonymous = function(req) return req.path:sub(1, 8) == "/public/" end,
  authorize = function(req, user)
    if req.path == "/boom" then error("boom") end
    if user.namespace == "kube-system" then return tg.deny("kube-system may not call") end
    if req.path:sub(1, 7) == "/admin/" then return tg.deny("nobody may call /admin/") end
    return tg.allow{ headers = { ["X-Tenant"] = user.namespace or "" } }
  end,
}
]]

-- What the gateway sets itself: never the client's. Everything else must arrive as sent.
local GATEWAY_SET = { host = true, ["content-length"] = true, authorization = true, ["x-forwarded-for"] = true,
  ["x-forwarded-proto"] = true, ["x-forwarded-host"] = true, ["x-remote-user"] = true, ["x-remote-uid"] = true,
  ["x-remote-groups"] = true, ["x-tenant"] = true }

local function client_part(request)
  local list = {}
  for _, h in ipairs(request.headers) do
    if not GATEWAY_SET[h[1]:lower()] then list[#list + 1] = h end
  end
  return list
end

local function bearer(who) return "Authorization: Bearer " .. who.token end

local function only(list)
  assert.equal(1, #list, "expected exactly one value, got " .. cjson.encode(list))
  return list[1]
end

-- n bytes of test-upstream's pattern: byte i is i % 251.
local function pattern(n)
  local block = {}
  for i = 0, 250 do block[#block + 1] = string.char(i) end
  local unit = table.concat(block)
  return (string.rep(unit, math.floor(n / 251) + 1)):sub(1, n)
end

local function sha256_file(path)
  local out = proc.run("sha256sum " .. proc.quote(path))
  return out:match("^(%x+)")
end

local function sha256(data)
  local path = os.tmpname()
  proc.write_file(path, data)
  local sum = sha256_file(path)
  os.remove(path)
  return sum
end

-- Runs the curl tool with args (a list); returns its output and exit status.
local function curl(args)
  local quoted = { "curl", "-sS" }
  for _, a in ipairs(args) do quoted[#quoted + 1] = proc.quote(a) end
  return proc.run(table.concat(quoted, " "))
end

-- VmRSS and VmHWM (peak) of pid, in bytes.
local function memory(pid)
  local status = proc.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(status:match("VmRSS:%s*(%d+)")) * 1024, tonumber(status:match("VmHWM:%s*(%d+)")) * 1024
end

-- True when the gateway binary is built with AddressSanitizer, whose quarantine keeps freed
-- memory resident: its memory figures say nothing about the gateway's own buffering.
local function sanitized_build()
  local out = proc.run("ldd " .. proc.quote(proc.build_path("core/tokengate")))
  return out:find("libasan", 1, true) ~= nil or out:find("libtsan", 1, true) ~= nil
end

local function wait_until(what, timeout_s, check)
  local deadline = proc.now() + timeout_s
  while proc.now() < deadline do
    if check() then return true end
    proc.sleep(0.05)
  end
  error("timed out waiting for " .. what)
end

describe("tokengate proxy mode", function()
  local fake, up, gw, dir, policy
  local gateways = {} -- every gateway started, stopped at teardown

  local function start_gateway(args, opts)
    local all = { "--mode", "proxy", "--policy", policy }
    for _, a in ipairs(args) do all[#all + 1] = a end
    opts = opts or {}
    opts.fake, opts.args = fake, all
    local g = gateway_mod.start(opts)
    gateways[#gateways + 1] = g
    return g
  end

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS }
    dir = fake.dir
    policy = dir .. "/proxy-policy.lua"
    proc.write_file(policy, POLICY)
    up = upstream_mod.start{ dir = dir }
    gw = start_gateway{ "--upstream", up.url, "--review-timeout", "2s" }
  end)

  lazy_teardown(function()
    local logs = {}
    for _, g in ipairs(gateways) do
      logs[#logs + 1] = g:log_text()
      local code = g:stop()
      if g.wrapped then assert.equal(0, code, "gateway under a wrapper exited " .. tostring(code)) end
    end
    if up then up:stop() end
    if fake then fake:stop() end
    -- No token may reach a gateway log line, whatever was forwarded.
    for _, log in ipairs(logs) do
      for _, who in ipairs(TOKENS) do assert.is_nil(log:find(who.token, 1, true), "token leaked into a log") end
    end
  end)

  before_each(function()
    fake:config{ error_rate = 0 }
    up:clear()
  end)

  describe("an allowed request", function()
    it("reaches the upstream byte for byte: method, target, body and the client's headers", function()
      local body = "payload\0with\r\nbinary \255 bytes"
      local target = "/hooks/deliver?a=1&b=%2F&c=d%20e"
      local headers = { bearer(TEAM_A), "Content-Type: application/x-test", "X-Custom: one",
        "X-Custom: two", "X-Empty;", "Accept: text/plain" }
      -- The same request straight to the upstream shows what the client sends.
      local direct = http.request{ method = "PUT", url = up.url .. target, headers = headers, body = body }
      assert.equal(200, direct.status)
      local res = http.request{ method = "PUT", url = gw.url .. target, headers = headers, body = body }
      assert.equal(200, res.status)
      assert.equal("upstream saw PUT " .. target .. "\n", res.body)
      assert.equal("1", res.headers["x-test-upstream"])
      local got = up:requests()
      assert.equal(2, #got)
      local sent, proxied = got[1], got[2]
      assert.equal("PUT", proxied.method)
      assert.equal(target, proxied.uri)
      assert.equal(#body, proxied.body_bytes)
      assert.equal(sha256(body), proxied.body_sha256)
      assert.same(client_part(sent), client_part(proxied))
      assert.equal(only(up:headers(sent, "Content-Length")), only(up:headers(proxied, "Content-Length")))
      assert.equal(TEAM_A.username, only(up:headers(proxied, "X-Remote-User")))
      assert.equal(TEAM_A.uid, only(up:headers(proxied, "X-Remote-Uid")))
      assert.equal(GROUPS_A, only(up:headers(proxied, "X-Remote-Groups")))
      assert.equal("team-a", only(up:headers(proxied, "X-Tenant")))
      assert.equal("127.0.0.1", only(up:headers(proxied, "X-Forwarded-For")))
      assert.equal("http", only(up:headers(proxied, "X-Forwarded-Proto")))
      assert.equal(gw.url:gsub("^http://", ""), only(up:headers(proxied, "X-Forwarded-Host")))
      assert.equal(up.addr, only(up:headers(proxied, "Host")))
    end)

    it("keeps every method, and sends no body where the client sent none", function()
      for _, method in ipairs({ "GET", "POST", "DELETE", "OPTIONS", "PATCH" }) do
        up:clear()
        local res = http.request{ method = method, url = gw.url .. "/m/" .. method, headers = { bearer(TEAM_A) } }
        assert.equal(200, res.status, method)
        local got = only(up:requests())
        assert.equal(method, got.method)
        assert.equal("/m/" .. method, got.uri)
        assert.equal(0, got.body_bytes)
      end
      up:clear()
      local out = curl{ "--head", "-o", "/dev/null", "-w", "%{http_code}", "-H", bearer(TEAM_A), gw.url .. "/m/HEAD" }
      assert.equal("200", out:match("(%d+)%s*$"))
      assert.equal("HEAD", only(up:requests()).method)
      -- HEAD: the upstream's Content-Length, no body.
      out = curl{ "--head", "-H", bearer(TEAM_A), gw.url .. "/_test/bytes/300000" }
      assert.matches("\r\nContent%-Length: 300000\r\n", out)
    end)

    it("removes spoofed identity, forwarding and hop-by-hop headers and sets its own", function()
      local spoofed = { bearer(TEAM_A), "X-Remote-User: system:admin", "X-Remote-Group: system:masters",
        "X-Remote-Groups: system:masters", "X-Remote-Extra-Scopes: all", "X-Forwarded-For: 10.6.6.6",
        "X-Forwarded-Proto: https", "X-Forwarded-Host: evil.example", "X-Forwarded-User: admin",
        "X-Forwarded-Groups: system:masters", "X-Forwarded-Email: admin@example.com",
        "X-Forwarded-Uri: /admin/x", "X-Auth-Request-User: admin", "X-Auth-Request-Email: admin@example.com",
        "Impersonate-User: system:admin", "Impersonate-Group: system:masters", "Forwarded: for=10.6.6.6",
        "X-Real-IP: 10.6.6.6", "X-Original-URI: /admin/x", "Connection: X-Secret-Hop", "X-Secret-Hop: 1",
        "Keep-Alive: timeout=5", "TE: trailers", "Proxy-Authorization: Basic YTpi", "Upgrade: websocket",
        "X-Tenant: team-evil", "X-Kept: yes" }
      local res = http.get(gw.url .. "/hooks/spoof", spoofed)
      assert.equal(200, res.status)
      local got = only(up:requests())
      local names = {}
      for _, h in ipairs(got.headers) do names[h[1]:lower()] = (names[h[1]:lower()] or 0) + 1 end
      for _, gone in ipairs({ "x-remote-group", "x-remote-extra-scopes", "x-forwarded-user", "x-forwarded-groups",
          "x-forwarded-email", "x-forwarded-uri", "x-auth-request-user", "x-auth-request-email", "impersonate-user",
          "impersonate-group", "forwarded", "x-real-ip", "x-original-uri", "connection", "x-secret-hop",
          "keep-alive", "te", "proxy-authorization", "upgrade", "authorization" }) do
        assert.is_nil(names[gone], gone .. " reached the upstream")
      end
      assert.equal(TEAM_A.username, only(up:headers(got, "X-Remote-User")))
      assert.equal(GROUPS_A, only(up:headers(got, "X-Remote-Groups")))
      assert.equal("127.0.0.1", only(up:headers(got, "X-Forwarded-For")))
      assert.equal("http", only(up:headers(got, "X-Forwarded-Proto")))
      assert.equal(gw.url:gsub("^http://", ""), only(up:headers(got, "X-Forwarded-Host")))
      assert.equal("team-a", only(up:headers(got, "X-Tenant")))
      assert.equal("yes", only(up:headers(got, "X-Kept")))
    end)

    it("shows the policy the request itself, never X-Forwarded-Uri or X-Original-URI", function()
      local res = http.get(gw.url .. "/admin/x", { bearer(TEAM_A), "X-Original-URI: /hooks/ok",
        "X-Forwarded-Uri: /hooks/ok" })
      assert.equal(403, res.status)
      assert.equal(200, http.get(gw.url .. "/hooks/ok", { bearer(TEAM_A), "X-Original-URI: /admin/x",
        "X-Forwarded-Uri: /admin/x" }).status)
      assert.equal("/hooks/ok", only(up:requests()).uri)
    end)

    it("forwards an anonymous request the policy lets through without identity headers", function()
      local res = http.get(gw.url .. "/public/page", { "X-Remote-User: system:admin" })
      assert.equal(200, res.status)
      local got = only(up:requests())
      assert.equal("/public/page", got.uri)
      assert.same({}, up:headers(got, "X-Remote-User"))
      assert.same({}, up:headers(got, "X-Remote-Groups"))
      assert.equal("127.0.0.1", only(up:headers(got, "X-Forwarded-For")))
    end)

    it("passes the upstream's status, headers and body back, minus hop-by-hop headers", function()
      local res = http.get(gw.url .. "/_test/status/404", { bearer(TEAM_A) })
      assert.equal(404, res.status)
      assert.equal("status 404\n", res.body)
      assert.equal("1", res.headers["x-test-status"])
      assert.equal(201, http.get(gw.url .. "/_test/status/201", { bearer(TEAM_A) }).status)
      assert.equal(503, http.get(gw.url .. "/_test/status/503", { bearer(TEAM_A) }).status)

      res = http.get(gw.url .. "/_test/hop", { bearer(TEAM_A) })
      assert.equal(200, res.status)
      assert.equal("hop\n", res.body)
      assert.equal("yes", res.headers["x-kept"])
      local cookies = {}
      for _, h in ipairs(res.header_list) do
        local name = h[1]:lower()
        assert.is_not.equal("x-hop-named", name)
        assert.is_not.equal("keep-alive", name)
        assert.is_not.equal("proxy-authenticate", name)
        assert.is_not.equal("upgrade", name)
        assert.is_not.equal("trailer", name)
        if name == "set-cookie" then cookies[#cookies + 1] = h[2] end
      end
      assert.same({ "a=1", "b=2" }, cookies)
    end)
  end)

  describe("the client's HTTP", function()
    it("tells the upstream the client spoke HTTPS when the listener does", function()
      local tls = start_gateway{ "--upstream", up.url, "--tls-cert-file", fake.dir .. "/server.crt",
        "--tls-key-file", fake.dir .. "/server.key" }
      local res = http.get((tls.url:gsub("^http:", "https:")) .. "/hooks/tls", { bearer(TEAM_A) },
        { cacert = fake.ca_file })
      assert.equal(200, res.status)
      assert.equal("https", only(up:headers(only(up:requests()), "X-Forwarded-Proto")))
    end)

    it("answers an HTTP/1.0 client without chunks, the body ending with the connection", function()
      local file = dir .. "/http10.bin"
      local out = curl{ "--http1.0", "-D", dir .. "/http10.hdr", "-o", file, "-w", "%{http_code} %{size_download}",
        "-H", bearer(TEAM_A), "-H", "Connection: keep-alive", gw.url .. "/_test/bytes/300000?chunked=1" }
      assert.equal("200 300000", out:match("(%d+ %d+)%s*$"))
      assert.equal(pattern(300000), proc.read_file(file))
      local head = proc.read_file(dir .. "/http10.hdr")
      assert.is_nil(head:lower():find("transfer-encoding", 1, true))
      assert.is_nil(head:lower():find("content-length", 1, true))
      os.remove(file)
    end)
  end)

  describe("the Authorization header", function()
    it("is removed before forwarding by default", function()
      assert.equal(200, http.get(gw.url .. "/hooks/x", { bearer(TEAM_A) }).status)
      assert.same({}, up:headers(only(up:requests()), "Authorization"))
    end)

    it("is forwarded unchanged with --upstream-keep-authorization", function()
      local keep = start_gateway{ "--upstream", up.url, "--upstream-keep-authorization" }
      assert.equal(200, http.get(keep.url .. "/hooks/x", { bearer(TEAM_A) }).status)
      assert.equal("Bearer " .. TEAM_A.token, only(up:headers(only(up:requests()), "Authorization")))
    end)
  end)

  describe("a request the gateway refuses", function()
    it("never reaches the upstream: 401, 403, 500 and 503 come from the gateway", function()
      local res = http.get(gw.url .. "/hooks/x")
      assert.equal(401, res.status)
      assert.equal('Bearer realm="tokengate"', res.headers["www-authenticate"])
      assert.equal(401, http.get(gw.url .. "/hooks/x", { "Authorization: Bearer no-such-token" }).status)
      assert.equal(403, http.get(gw.url .. "/hooks/x", { bearer(KUBE_SYSTEM) }).status)
      assert.equal(403, http.post(gw.url .. "/admin/x", "body", { bearer(TEAM_A) }).status)
      assert.equal(500, http.get(gw.url .. "/boom", { bearer(TEAM_A) }).status)
      local out = curl{ "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", "-H", bearer(TEAM_A),
        gw.url .. "/hooks/../admin/x" }
      assert.equal("403", out:match("(%d%d%d)%s*$")) -- not normalized: refused, never forwarded as is
      fake:config{ error_rate = 1, error_status = 500 }
      res = http.get(gw.url .. "/hooks/x", { bearer(COLD) })
      assert.equal(503, res.status)
      assert.is_not_nil(res.headers["retry-after"])
      assert.equal(0, #up:requests())
    end)

    it("refuses TRACE and CONNECT", function()
      assert.equal(501, http.request{ method = "TRACE", url = gw.url .. "/hooks/x", headers = { bearer(TEAM_A) } }.status)
      -- (curl keeps waiting after a CONNECT's answer, hence the short --max-time)
      local out = curl{ "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "-X", "CONNECT",
        "-H", bearer(TEAM_A), gw.url .. "/hooks/x" }
      assert.equal("501", out:match("(%d%d%d)%s*$"))
      assert.equal(0, #up:requests())
    end)
  end)

  describe("when the upstream fails", function()
    local fast

    lazy_setup(function()
      fast = start_gateway{ "--upstream", up.url, "--upstream-timeout", "1s" }
    end)

    it("answers 502 when nothing listens at the upstream address", function()
      local gone = upstream_mod.start{ dir = dir }
      local addr = gone.url
      gone:stop()
      local refused = start_gateway{ "--upstream", addr }
      local res = http.get(refused.url .. "/hooks/x", { bearer(TEAM_A) })
      assert.equal(502, res.status)
      assert.equal("bad gateway\n", res.body)
      assert.matches('"msg":"upstream request failed"[^\n]*"status":502[,}]', refused:log_text()) -- a JSON number
    end)

    it("answers 502 when the upstream closes the connection without an answer", function()
      assert.equal(502, http.get(fast.url .. "/_test/reset", { bearer(TEAM_A) }).status)
      assert.equal(1, #up:requests()) -- it did reach the upstream
    end)

    it("answers 504 when the upstream is slower than --upstream-timeout", function()
      -- The upstream would answer after 60 s, the client gives up after 20 s: a 504 can only
      -- come from the gateway's 1 s timeout, and never before it.
      local t0 = proc.now()
      local res = http.get(fast.url .. "/_test/sleep/60000", { bearer(TEAM_A) })
      local took = proc.now() - t0
      assert.equal(504, res.status)
      assert.equal("upstream timed out\n", res.body)
      assert.is_true(took >= 0.9, "took " .. took .. " s")
      -- Within the deadline the answer passes.
      assert.equal(200, http.get(fast.url .. "/_test/sleep/100", { bearer(TEAM_A) }).status)
    end)

    it("cuts the answer (and closes the connection) when the upstream stalls after its headers", function()
      local file = dir .. "/stalled.bin"
      local out, code = curl{ "-o", file, "-w", "%{http_code}", "--max-time", "10", "-H", bearer(TEAM_A),
        fast.url .. "/_test/stall/100000/4000" }
      assert.equal("200", out:match("(%d%d%d)%s*$"))
      assert.is_not.equal(0, code) -- curl: transfer closed with bytes remaining
      local got = proc.read_file(file) or ""
      assert.is_true(#got < 200000, "got " .. #got .. " bytes of 200000")
      assert.equal(pattern(#got), got)
    end)
  end)

  describe("https to the upstream", function()
    it("verifies the upstream against --upstream-ca", function()
      -- The fake API server is an HTTPS server with a test CA. It answers this request (the
      -- gateway removed the client's token) with its own JSON 401: the TLS connection was made.
      local tls = start_gateway{ "--upstream", fake.url, "--upstream-ca", fake.ca_file }
      local res = http.get(tls.url .. "/no-such-path", { bearer(TEAM_A) })
      assert.equal(401, res.status)
      assert.equal("Status", cjson.decode(res.body).kind)
    end)

    it("refuses an upstream certificate the system CAs do not know", function()
      local tls = start_gateway{ "--upstream", fake.url }
      assert.equal(502, http.get(tls.url .. "/no-such-path", { bearer(TEAM_A) }).status)
      assert.matches("certificate", tls:log_text())
    end)
  end)

  describe("bodies of 10 MiB", function()
    it("uploads 10 MiB intact, and answers 413 to one byte more", function()
      local file = dir .. "/upload.bin"
      local data = pattern(10 * MiB)
      proc.write_file(file, data)
      local out = curl{ "-o", "/dev/null", "-w", "%{http_code}", "-H", bearer(TEAM_A), "--data-binary", "@" .. file,
        gw.url .. "/upload" }
      assert.equal("200", out:match("(%d%d%d)%s*$"))
      local got = only(up:requests())
      assert.equal(10 * MiB, got.body_bytes)
      assert.equal(sha256_file(file), got.body_sha256)

      up:clear()
      proc.write_file(file, data .. "x")
      for _, expect in ipairs({ "Expect: 100-continue", "Expect:" }) do
        out = curl{ "-o", "/dev/null", "-w", "%{http_code}", "-H", bearer(TEAM_A), "-H", expect,
          "--data-binary", "@" .. file, gw.url .. "/upload" }
        assert.equal("413", out:match("(%d%d%d)%s*$"), expect .. ": " .. out)
      end
      assert.equal(0, #up:requests())
      os.remove(file)
    end)

    it("streams a 10 MiB download to a slow client without holding it in memory", function()
      local rss = start_gateway{ "--upstream", up.url }
      -- Warm up: the first transfer sets up libcurl's and the connection's buffers.
      assert.equal(200, http.get(rss.url .. "/_test/bytes/100000", { bearer(TEAM_A) }).status)
      local before = memory(rss:pid())
      local file = dir .. "/download.bin"
      local out = curl{ "-o", file, "-w", "%{http_code} %{size_download}", "--limit-rate", "3M",
        "-H", bearer(TEAM_A), rss.url .. "/_test/bytes/" .. (10 * MiB) }
      local _, peak = memory(rss:pid())
      assert.equal("200 " .. (10 * MiB), out:match("(%d+ %d+)%s*$"))
      assert.equal(sha256(pattern(10 * MiB)), sha256_file(file))
      local growth = peak - before
      io.stderr:write(string.format("\n    gateway VmRSS before %.1f MiB, VmHWM after %.1f MiB: peak growth %.1f MiB " ..
        "for a 10 MiB download\n", before / MiB, peak / MiB, growth / MiB))
      if not rss.wrapped and not sanitized_build() then -- under valgrind or ASan they mean nothing
        assert.is_true(growth < 6 * MiB, string.format("the gateway grew by %.1f MiB", growth / MiB))
      end
      os.remove(file)
    end)

    it("streams a chunked 10 MiB answer intact", function()
      local file = dir .. "/chunked.bin"
      local out = curl{ "-o", file, "-w", "%{http_code} %{size_download}", "-H", bearer(TEAM_A),
        gw.url .. "/_test/bytes/" .. (10 * MiB) .. "?chunked=1" }
      assert.equal("200 " .. (10 * MiB), out:match("(%d+ %d+)%s*$"))
      assert.equal(sha256(pattern(10 * MiB)), sha256_file(file))
      os.remove(file)
    end)
  end)

  describe("connections to the upstream", function()
    -- How many requests the upstream received on each of its connections (test-upstream
    -- numbers them in accept order).
    local function per_connection()
      local counts, n = {}, 0
      for _, r in ipairs(up:requests()) do
        if not counts[r.connection] then n = n + 1 end
        counts[r.connection] = (counts[r.connection] or 0) + 1
      end
      return n, counts
    end

    it("are kept alive and reused across requests", function()
      for i = 1, 30 do
        assert.equal(200, http.get(gw.url .. "/hooks/seq" .. i, { bearer(TEAM_A) }).status)
      end
      local n = per_connection()
      io.stderr:write(string.format("\n    30 sequential requests (30 client connections): %d upstream connection(s)\n", n))
      assert.equal(30, #up:requests())
      assert.is_true(n <= 2, n .. " upstream connections") -- 2: the upstream may close an idle one

      up:clear()
      local summary = gw:load{ c = 8, n = 400, tokens = { TEAM_A.token }, path = "/hooks/load" }
      assert.equal(400, summary.codes["200"])
      assert.equal(400, #up:requests())
      n = per_connection()
      io.stderr:write(string.format("    400 requests, 8 at a time: %d upstream connections\n", n))
      assert.is_true(n <= 8, n .. " upstream connections")
    end)

    it("are bounded by --upstream-max-connections", function()
      local small = start_gateway{ "--upstream", up.url, "--upstream-max-connections", "2" }
      local summary = small:load{ c = 8, n = 200, tokens = { TEAM_A.token }, path = "/hooks/small" }
      assert.equal(200, summary.codes["200"])
      assert.equal(200, #up:requests())
      local n = per_connection()
      assert.is_true(n <= 2, n .. " upstream connections")
    end)
  end)

  describe("client connections", function()
    -- More connections than one loop turn adopts (ADOPT_BATCH_MAX, 256) wait in the kernel's
    -- accept queue while the gateway is stopped, so its one worker accepts them in a single
    -- turn. Every one is proxied (the transfer re-installs the close callback that counts
    -- down), so a connection left uncounted would drive gateway_connections_open below zero.
    it("counts a burst larger than one accept batch exactly: the open count ends at 0", function()
      local N = 290
      local g = start_gateway{ "--upstream", up.url, "--workers", "1", "--max-connections", "10000" }
      assert.equal(200, http.get(g.url .. "/hooks/warm", { bearer(TEAM_A) }).status) -- reviewed and cached
      local port = g.url:match(":(%d+)$")
      local args = { "curl", "-sS", "--parallel", "--parallel-immediate", "--parallel-max", tostring(N),
        "-H", bearer(TEAM_A), "-w", "%{http_code}\n" }
      for i = 1, N do
        args[#args + 1] = "-o"
        args[#args + 1] = "/dev/null"
        args[#args + 1] = g.url .. "/hooks/burst/" .. i
      end
      proc.signal(g.handle, "STOP")
      local client = proc.spawn(args, dir .. "/burst.out")
      local established = function()
        local out = proc.run("ss -Htn state established '( dport = :" .. port .. " )' | wc -l")
        return tonumber(out:match("%d+")) or 0
      end
      local ok, err = pcall(wait_until, "the burst in the accept queue", 60, function() return established() >= N end)
      proc.signal(g.handle, "CONT")
      assert(ok, err)
      wait_until("the client's end", 120, function() return not proc.alive(client) end)
      local codes = proc.read_file(dir .. "/burst.out")
      local _, n200 = codes:gsub("200\n", "")
      assert.equal(N, n200, codes)
      wait_until("every connection closed", 30, function() return g:metric("gateway_connections_open") == 0 end)
      assert.equal(N + 1, g:metric('gateway_requests_total{code="200"}'))
    end)
  end)

  describe("when the client goes away", function()
    local watched

    lazy_setup(function()
      watched = start_gateway({ "--upstream", up.url }, {})
    end)

    local function metric_499() return watched:metric('gateway_requests_total{code="499"}') end
    local function metric_200() return watched:metric('gateway_requests_total{code="200"}') end

    it("aborts the upstream request while the upstream has not answered", function()
      curl{ "-o", "/dev/null", "--max-time", "1", "-H", bearer(TEAM_A), watched.url .. "/_test/sleep/60000" }
      -- Counted as 499 (client closed) once the client left, long before the upstream's
      -- answer (60 s) could have ended the transfer.
      wait_until("the 499", 30, function() return metric_499() == 1 end)
    end)

    it("aborts the upstream transfer in the middle of a large answer", function()
      -- The upstream streams (headers first), so the answer has begun when the client, reading
      -- at 1 MiB/s, leaves after 1 s: counted with the status it got (200), not as a 499.
      local before, before_499 = metric_200(), metric_499()
      curl{ "-o", "/dev/null", "--max-time", "1", "--limit-rate", "1M", "-H", bearer(TEAM_A),
        watched.url .. "/_test/bytes/" .. (200 * MiB) }
      wait_until("the transfer's end", 30, function() return metric_200() == before + 1 end)
      assert.equal(before_499, metric_499())
      -- and the gateway still serves
      assert.equal(200, http.get(watched.url .. "/hooks/after", { bearer(TEAM_A) }).status)
    end)
  end)

  describe("graceful shutdown", function()
    it("waits for a proxied request in flight, then exits", function()
      local drain = start_gateway({ "--upstream", up.url }, { track_exit = true })
      local out_file = dir .. "/drain.out"
      os.execute("sh -c " .. proc.quote("curl -sS -o /dev/null -w '%{http_code}' -H " .. proc.quote(bearer(TEAM_A)) ..
        " " .. proc.quote(drain.url .. "/_test/sleep/1500") .. " >" .. proc.quote(out_file) .. ".tmp; mv " ..
        proc.quote(out_file) .. ".tmp " .. proc.quote(out_file)) .. " </dev/null >/dev/null 2>&1 &")
      wait_until("the request to reach the upstream", 5, function() return #up:requests() == 1 end)
      proc.signal(drain.handle, "TERM")
      wait_until("the client's answer", 10, function() return proc.read_file(out_file) ~= nil end)
      assert.equal("200", proc.read_file(out_file))
      assert.equal(0, drain:exit_status(10))
    end)

    it("closes a proxied request still running when --shutdown-grace runs out, and exits cleanly", function()
      local drain = start_gateway({ "--upstream", up.url, "--shutdown-grace", "500ms" }, { track_exit = true })
      local out_file = dir .. "/grace.out"
      os.execute("sh -c " .. proc.quote("curl -sS -o /dev/null -w '%{http_code}' -H " .. proc.quote(bearer(TEAM_A)) ..
        " " .. proc.quote(drain.url .. "/_test/sleep/60000") .. " >" .. proc.quote(out_file) .. ".tmp 2>/dev/null; mv " ..
        proc.quote(out_file) .. ".tmp " .. proc.quote(out_file)) .. " </dev/null >/dev/null 2>&1 &")
      wait_until("the request to reach the upstream", 5, function() return #up:requests() == 1 end)
      -- The upstream would answer after 60 s: an exit well before that is the grace's doing.
      proc.signal(drain.handle, "TERM")
      assert.equal(0, drain:exit_status(30))
      wait_until("the client's end", 10, function() return proc.read_file(out_file) ~= nil end)
      assert.equal("000", proc.read_file(out_file)) -- the connection closed without an answer
    end)
  end)
end)
