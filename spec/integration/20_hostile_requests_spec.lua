-- Integration: a corpus of hostile requests, one case per request-level item of the
-- attack review (forwarded headers, path canonicalization, underscore identity headers,
-- the groups encoding, HTTP/1.1 framing, the admin listener) plus cases that already
-- held. Each runs against the real gateway in authz mode (under each --forwarded-headers
-- family it concerns) and in proxy mode, and where the deployment is nginx, behind real
-- nginx (examples/nginx/nginx.conf, and the auth location ingress-nginx generates). Every
-- case asserts the exact status and, in proxy mode or behind nginx, what the application
-- received (spec/support/test_upstream.c records it).
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local upstream_mod = require("support.upstream")
local nginx_mod = require("support.nginx")
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")

local HOST = "app.example"

local function sa(ns, name)
  return { token = "tok-" .. ns .. "-" .. name, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local TEAM_A = sa("team-a", "sender")
-- Authenticated by the API server with a group whose name holds the separator.
local PIPED = { token = "tok-team-a-piped", username = "system:serviceaccount:team-a:piped", uid = "uid-piped",
  groups = { "dev|system:masters", "system:authenticated" } }
local MONITOR = sa("monitoring", "prometheus")
local TOKENS = { TEAM_A, PIPED, MONITOR }
-- For --admin-auth-review: Prometheus's ServiceAccount may get /metrics, nothing else.
local SAR_RULES = { { user = MONITOR.username, verb = "get", path = "/metrics" } }

-- team-a may do anything under /hooks/team-a/, nothing else; the policy logs what it saw.
local POLICY = [[
local tg = require("tokengate")
return {
  anonymous = function(req) return req.path:sub(1, 8) == "/public/" end,
  authorize = function(req, user)
    tg.log("info", "policy saw", { method = req.method, path = req.path, query = req.query, host = req.host })
    if user.namespace == "team-a" and req.path:sub(1, 14) == "/hooks/team-a/" then return tg.allow() end
    return tg.deny("team-a may not " .. req.method .. " " .. req.path)
  end,
}
]]

-- The paths of the review that passed the old check; each reaches /admin on some server.
local TRAVERSALS = {
  "/hooks/team-a/..;/admin",
  "/hooks/team-a/x/..;foo/..;/admin",
  "/hooks/team-a/..%3b/admin",
  "/hooks/team-a/.;/admin",
  "/hooks/team-a/%252e%252e/admin",
  "/hooks/team-a/%c0%ae%c0%ae/admin",
  -- already refused before: they must stay refused
  "/hooks/team-a/../admin",
  "/hooks/team-a/%2e%2e/admin",
  "/hooks/team-a//admin",
  "/hooks/team-a/%2fadmin",
}

-- Raw bytes inside the request target (the request line is sent as is).
local RAW_TARGETS = {
  { "TAB", "/hooks/team-a/a\tb" },
  { "0x01", "/hooks/team-a/a\1b" },
  { "0xFF", "/hooks/team-a/a\255b" },
  { "space", "/hooks/team-a/a b" },
  { "encoded NUL", "/hooks/team-a/a%00b" },
  { "encoded CR LF", "/hooks/team-a/a%0d%0aX-Remote-User:%20admin" },
  { "bad escape", "/hooks/team-a/a%zz" },
}

-- Sends bytes on a new TCP connection to addr ("host:port") and returns everything the
-- server wrote until it closed (or 5 s): { status = first status, statuses = every status
-- line's code in order, text = raw answer }.
local function raw(addr, bytes)
  local host, port = addr:match("^(.-):(%d+)$")
  local file = os.tmpname()
  proc.write_file(file, bytes)
  local out = proc.run(string.format(
    "bash -c 'exec 3<>/dev/tcp/%s/%s; cat %s >&3; timeout 5 cat <&3' 2>/dev/null", host, port, proc.quote(file)))
  os.remove(file)
  local statuses = {}
  for code in out:gmatch("HTTP/1%.%d (%d%d%d)") do statuses[#statuses + 1] = tonumber(code) end
  return { status = statuses[1], statuses = statuses, text = out }
end

local function hostport(url) return (url:gsub("^http://", "")) end

-- A GET request's bytes with the given target and header lines (CRLF added).
local function request_bytes(method, target, headers)
  local lines = { method .. " " .. target .. " HTTP/1.1" }
  for _, h in ipairs(headers) do lines[#lines + 1] = h end
  lines[#lines + 1] = "Connection: close"
  return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

local function bearer(t) return "Authorization: Bearer " .. t.token end

describe("hostile requests", function()
  local fake, dir, policy, up
  local gw = {} -- by shape: none, nginx, ingress, traefik, proxy
  local started = {}

  local function start(args)
    local all = { "--policy", policy, "--review-timeout", "2s" }
    for _, a in ipairs(args) do all[#all + 1] = a end
    local g = gateway_mod.start{ fake = fake, args = all }
    started[#started + 1] = g
    return g
  end

  -- Every "policy saw" view the gateway logged, oldest first.
  local function policy_views(g)
    local views = {}
    for line in g:log_text():gmatch("[^\n]+") do
      if line:find('"policy saw"', 1, true) then
        local entry = cjson.decode(line)
        views[#views + 1] = type(entry.fields) == "table" and entry.fields or {}
      end
    end
    return views
  end

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS, sar_rules = SAR_RULES }
    dir = fake.dir
    policy = dir .. "/hostile-policy.lua"
    proc.write_file(policy, POLICY)
    up = upstream_mod.start{ dir = dir }
    gw.none = start{}
    gw.nginx = start{ "--forwarded-headers", "nginx" }
    gw.ingress = start{ "--forwarded-headers", "ingress-nginx" }
    gw.traefik = start{ "--forwarded-headers", "traefik" }
    gw.proxy = start{ "--mode", "proxy", "--upstream", up.url }
  end)

  lazy_teardown(function()
    for _, g in ipairs(started) do g:stop() end
    if up then up:stop() end
    if fake then fake:stop() end
  end)

  before_each(function() up:clear() end)

  describe("forwarded headers: the client never chooses what the policy judges", function()
    it("ingress-nginx: the policy judges X-Original-URL and X-Original-Method, not the auth-url's own request", function()
      -- The review's bypass: auth-url /hooks/team-a/auth, client request DELETE /admin/wipe.
      local res = gw.ingress:request(TEAM_A.token, "/hooks/team-a/auth",
        { "X-Original-URL: https://" .. HOST .. "/admin/wipe", "X-Original-Method: DELETE" })
      assert.equal(403, res.status)
      assert.equal("forbidden: team-a may not DELETE /admin/wipe\n", res.body)
      res = gw.ingress:request(TEAM_A.token, "/ingress-auth",
        { "X-Original-URL: https://" .. HOST .. ":8443/hooks/team-a/x?y=1", "X-Original-Method: POST" })
      assert.equal(200, res.status)
      local saw = policy_views(gw.ingress)
      saw = saw[#saw]
      assert.same({ method = "POST", path = "/hooks/team-a/x", query = "y=1", host = HOST .. ":8443" }, saw)
    end)

    it("ingress-nginx: a client's X-Forwarded-*, a differing X-Original-URI, a missing or relative X-Original-URL are refused", function()
      local url = "X-Original-URL: https://" .. HOST .. "/admin/wipe"
      local cases = {
        { url, "X-Original-Method: DELETE", "X-Forwarded-Uri: /hooks/team-a/x" },
        { url, "X-Original-Method: DELETE", "X-Forwarded-Method: GET" },
        { url, "X-Original-Method: DELETE", "X-Original-URI: /hooks/team-a/x" },
        { url, "X-Original-Method: DELETE", "X-Original-URL: https://" .. HOST .. "/hooks/team-a/x" },
        { "X-Original-Method: GET" },
        { url },
        { "X-Original-URL: /hooks/team-a/x", "X-Original-Method: GET" },
        { "X-Original-URL: https://user@" .. HOST .. "/hooks/team-a/x", "X-Original-Method: GET" },
      }
      for i, c in ipairs(cases) do
        local res = gw.ingress:request(TEAM_A.token, "/hooks/team-a/auth", c)
        assert.equal(400, res.status, "case " .. i)
        assert.is_nil(res.headers["x-remote-user"], "case " .. i)
      end
      -- The X-Original-URI ingress-nginx itself adds (auth-method annotation) is the same target.
      local res = gw.ingress:request(TEAM_A.token, "/hooks/team-a/auth", { "X-Original-URL: https://" .. HOST ..
        "/hooks/team-a/x?a=1", "X-Original-URI: /hooks/team-a/x?a=1", "X-Original-Method: GET" })
      assert.equal(200, res.status)
    end)

    it("nginx: a client's X-Forwarded-Uri no longer wins over X-Original-URI (the old auto mode): 400", function()
      local res = gw.nginx:request(TEAM_A.token, "/_tokengate",
        { "X-Original-URI: /admin/wipe", "X-Original-Method: DELETE", "X-Forwarded-Uri: /hooks/team-a/x" })
      assert.equal(400, res.status)
      res = gw.nginx:request(TEAM_A.token, "/_tokengate", { "X-Original-URI: /admin/wipe", "X-Original-Method: DELETE" })
      assert.equal(403, res.status)
      assert.equal("forbidden: team-a may not DELETE /admin/wipe\n", res.body)
    end)

    it("nginx: X-Original-Method without X-Original-URI never falls back to the request's own path: 400", function()
      local res = gw.nginx:request(TEAM_A.token, "/hooks/team-a/x", { "X-Original-Method: DELETE" })
      assert.equal(400, res.status)
      res = gw.nginx:request(TEAM_A.token, "/hooks/team-a/x", { "X-Original-URI: /hooks/team-a/x" })
      assert.equal(400, res.status)
    end)

    it("none (Envoy): any family's header is refused rather than ignored", function()
      for _, h in ipairs{ "X-Original-URI: /hooks/team-a/x", "X-Original-URL: http://h/hooks/team-a/x",
        "X-Original-Method: GET", "X-Forwarded-Uri: /hooks/team-a/x", "X-Forwarded-Method: GET" } do
        assert.equal(400, gw.none:request(TEAM_A.token, "/admin", { h }).status, h)
      end
      assert.equal(200, gw.none:request(TEAM_A.token, "/hooks/team-a/x").status)
    end)

    it("traefik: nginx's headers next to Traefik's are refused; missing X-Forwarded-Host is refused", function()
      local base = { "X-Forwarded-Uri: /admin", "X-Forwarded-Method: GET", "X-Forwarded-Host: " .. HOST }
      assert.equal(403, gw.traefik:request(TEAM_A.token, "/", base).status)
      local with = { base[1], base[2], base[3], "X-Original-URI: /hooks/team-a/x" }
      assert.equal(400, gw.traefik:request(TEAM_A.token, "/", with).status)
      assert.equal(400, gw.traefik:request(TEAM_A.token, "/", { base[1], base[2] }).status)
      -- A forwarded host gets the Host field's syntax check, and is refused twice where read.
      assert.equal(400, gw.traefik:request(TEAM_A.token, "/", { base[1], base[2], "X-Forwarded-Host: evil.example/x" }).status)
      assert.equal(400, gw.traefik:request(TEAM_A.token, "/", { base[1], base[2], base[3], "X-Forwarded-Host: b" }).status)
      assert.equal(400, gw.nginx:request(TEAM_A.token, "/_tokengate", { "X-Original-URI: /hooks/team-a/x",
        "X-Original-Method: GET", "X-Forwarded-Host: a", "X-Forwarded-Host: b" }).status)
      -- where it is not read (none), it is not judged either
      assert.equal(200, gw.none:request(TEAM_A.token, "/hooks/team-a/x", { "X-Forwarded-Host: a",
        "X-Forwarded-Host: b" }).status)
    end)

    it("proxy mode: the family headers are the client's and are ignored, then stripped", function()
      local res = http.get(gw.proxy.url .. "/admin/x", { bearer(TEAM_A), "X-Original-URL: http://h/hooks/team-a/x",
        "X-Forwarded-Uri: /hooks/team-a/x", "X-Original-URI: /hooks/team-a/x" })
      assert.equal(403, res.status)
      assert.equal(0, #up:requests())
      res = http.get(gw.proxy.url .. "/hooks/team-a/x", { bearer(TEAM_A), "X-Original-URL: http://h/admin" })
      assert.equal(200, res.status)
      local got = up:requests()
      assert.equal(1, #got)
      assert.equal("/hooks/team-a/x", got[1].uri)
      assert.same({}, up:headers(got[1], "X-Original-URL"))
    end)
  end)

  describe("path canonicalization, one check for both modes", function()
    it("refuses every traversal with 403 in authz mode (request line, X-Original-URI, X-Original-URL)", function()
      for _, path in ipairs(TRAVERSALS) do
        local res = raw(hostport(gw.none.url), request_bytes("GET", path, { "Host: " .. HOST, bearer(TEAM_A) }))
        assert.equal(403, res.status, "none " .. path)
        res = gw.nginx:request(TEAM_A.token, "/_tokengate", { "X-Original-URI: " .. path, "X-Original-Method: GET" })
        assert.equal(403, res.status, "nginx " .. path)
        res = gw.ingress:request(TEAM_A.token, "/auth", { "X-Original-URL: https://" .. HOST .. path,
          "X-Original-Method: GET" })
        assert.equal(403, res.status, "ingress-nginx " .. path)
      end
      assert.equal(0, gw.none:metric("gateway_policy_errors_total") or 0)
    end)

    it("refuses every traversal with 403 in proxy mode, and the upstream receives nothing", function()
      for _, path in ipairs(TRAVERSALS) do
        local res = raw(hostport(gw.proxy.url), request_bytes("GET", path, { "Host: " .. HOST, bearer(TEAM_A) }))
        assert.equal(403, res.status, path)
      end
      assert.equal(0, #up:requests())
    end)

    it("answers 400 (not 500, not a policy error) for raw TAB, 0x01, 0xFF, space and bad escapes in the target", function()
      for _, c in ipairs(RAW_TARGETS) do
        for _, shape in ipairs{ "none", "proxy" } do
          local res = raw(hostport(gw[shape].url), request_bytes("GET", c[2], { "Host: " .. HOST, bearer(TEAM_A) }))
          assert.equal(400, res.status, shape .. " " .. c[1])
        end
        -- The same bytes inside nginx's X-Original-URI (a header value may hold TAB,
        -- space and 0xFF; 0x01 is refused as a header control character).
        local res = raw(hostport(gw.nginx.url), request_bytes("GET", "/_tokengate", { "Host: " .. HOST,
          bearer(TEAM_A), "X-Original-URI: " .. c[2], "X-Original-Method: GET" }))
        assert.equal(400, res.status, "nginx " .. c[1])
      end
      assert.equal(0, #up:requests())
      assert.equal(0, gw.none:metric("gateway_policy_errors_total") or 0)
      assert.equal(0, gw.proxy:metric("gateway_policy_errors_total") or 0)
    end)

    it("forwards exactly the target the policy judged (encoded UTF-8, encoded space, query untouched)", function()
      local target = "/hooks/team-a/na%C3%AFve%20file?q=a%2Fb&x=..%2F"
      local res = raw(hostport(gw.proxy.url), request_bytes("GET", target, { "Host: " .. HOST, bearer(TEAM_A) }))
      assert.equal(200, res.status)
      local got = up:requests()
      assert.equal(1, #got)
      assert.equal(target, got[1].uri)
      local saw = policy_views(gw.proxy)
      assert.equal("/hooks/team-a/na%C3%AFve%20file", saw[#saw].path)
      assert.equal("q=a%2Fb&x=..%2F", saw[#saw].query)
    end)
  end)

  describe("proxy mode: identity headers in any spelling", function()
    it("drops every client header with an underscore (X_Remote_User, X_REMOTE_GROUPS, Impersonate_User, X_Forwarded_For)", function()
      local res = http.get(gw.proxy.url .. "/hooks/team-a/x", { bearer(TEAM_A), "X_Remote_User: system:admin",
        "X_REMOTE_GROUPS: system:masters", "Impersonate_User: system:admin", "X_Forwarded_For: 10.6.6.6",
        "X-Remote-User: system:admin", "x_remote_uid: 0", "X-Kept: yes" })
      assert.equal(200, res.status)
      local got = up:requests()
      assert.equal(1, #got)
      for _, h in ipairs(got[1].headers) do assert.is_nil(h[1]:find("_", 1, true), h[1]) end
      assert.same({ TEAM_A.username }, up:headers(got[1], "X-Remote-User"))
      assert.same({ "127.0.0.1" }, up:headers(got[1], "X-Forwarded-For"))
      assert.same({ "yes" }, up:headers(got[1], "X-Kept"))
    end)
  end)

  describe("groups: X-Remote-Groups stays unambiguous", function()
    it("answers 403 for an identity with a group containing '|' (authz mode), never a header with it", function()
      local res = gw.none:request(PIPED.token, "/hooks/team-a/x")
      assert.equal(403, res.status)
      assert.is_nil(res.headers["x-remote-groups"])
      assert.equal("forbidden: a group name cannot be sent in X-Remote-Groups\n", res.body)
      -- ordinary groups keep the kube-rbac-proxy form
      res = gw.none:request(TEAM_A.token, "/hooks/team-a/x")
      assert.equal(200, res.status)
      assert.equal(table.concat(TEAM_A.groups, "|"), res.headers["x-remote-groups"])
    end)

    it("never forwards such an identity in proxy mode", function()
      assert.equal(403, http.get(gw.proxy.url .. "/hooks/team-a/x", { bearer(PIPED) }).status)
      assert.equal(0, #up:requests())
    end)
  end)

  describe("HTTP/1.1 framing and header syntax (400 and the connection closed)", function()
    -- Each request is followed on the same connection by a GET /hooks/team-a/smuggled:
    -- after a 400 the connection is closed, so it is never answered nor forwarded.
    local SMUGGLED = "GET /hooks/team-a/smuggled HTTP/1.1\r\nHost: " .. HOST .. "\r\nAuthorization: Bearer "
      .. TEAM_A.token .. "\r\n\r\n"
    local function case(head, body)
      return head .. "\r\n\r\n" .. (body or "") .. SMUGGLED
    end
    local base = "POST /hooks/team-a/x HTTP/1.1\r\nHost: " .. HOST .. "\r\n" .. bearer(TEAM_A)
    -- The ambiguous body framings, after the head of a POST.
    local function framing_cases(post)
      return {
        { "two Content-Length, different values", case(post .. "\r\nContent-Length: 3\r\nContent-Length: 5", "abcde") },
        { "two Content-Length, same value", case(post .. "\r\nContent-Length: 3\r\nContent-Length: 3", "abc") },
        { "Content-Length: +5", case(post .. "\r\nContent-Length: +5", "abcde") },
        { "Content-Length: 0x5", case(post .. "\r\nContent-Length: 0x5", "abcde") },
        { "Transfer-Encoding: xchunked", case(post .. "\r\nTransfer-Encoding: xchunked", "") },
        { "Transfer-Encoding and Content-Length", case(post .. "\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
          "0\r\n\r\n") },
      }
    end
    local CASES = framing_cases(base)
    for _, c in ipairs{
      { "no Host (HTTP/1.1)", case("GET /hooks/team-a/x HTTP/1.1\r\n" .. bearer(TEAM_A)) },
      { "two Host", case(base:gsub("POST", "GET") .. "\r\nHost: evil.example") },
      { "space before the colon", case("GET /hooks/team-a/x HTTP/1.1\r\nHost: " .. HOST ..
        "\r\nAuthorization : Bearer " .. TEAM_A.token) },
      { "control character in a value", case(base:gsub("POST", "GET") .. "\r\nX-Note: a\1b") },
      { "Host with a path", case("GET /hooks/team-a/x HTTP/1.1\r\nHost: evil.example/x\r\n" .. bearer(TEAM_A)) },
    } do CASES[#CASES + 1] = c end

    for _, shape in ipairs{ "none", "proxy" } do
      it("refuses each on the main listener (" .. shape .. ")", function()
        for _, c in ipairs(CASES) do
          local res = raw(hostport(gw[shape].url), c[2])
          assert.same({ 400 }, res.statuses, shape .. ": " .. c[1])
          assert.truthy(res.text:lower():find("connection: close", 1, true), shape .. ": " .. c[1])
        end
        assert.equal(0, #up:requests())
      end)
    end

    it("proxy mode without a token: ambiguous framing is still 400; a clear body is refused 401 on the headers", function()
      local post = "POST /hooks/team-a/x HTTP/1.1\r\nHost: " .. HOST
      local no_token = framing_cases(post)
      no_token[#no_token + 1] = { "two Host", case(post .. "\r\nHost: evil.example\r\nContent-Length: 5", "abcde") }
      no_token[#no_token + 1] = { "no Host", case("POST /hooks/team-a/x HTTP/1.1\r\nContent-Length: 5", "abcde") }
      assert.equal(8, #no_token)
      -- The suite's policy has an anonymous() hook, which must see such requests whole: this
      -- gateway's policy has none, so its answer to them can only be 401.
      local without_anonymous = dir .. "/hostile-policy-no-anonymous.lua"
      proc.write_file(without_anonymous, (POLICY:gsub("\n%s*anonymous = [^\n]*", "")))
      assert.is_nil(proc.read_file(without_anonymous):find("anonymous", 1, true))
      local g = gateway_mod.start{ fake = fake, args = { "--policy", without_anonymous, "--mode", "proxy",
        "--upstream", up.url } }
      started[#started + 1] = g
      for _, c in ipairs(no_token) do
        local res = raw(hostport(g.url), c[2])
        assert.same({ 400 }, res.statuses, c[1])
      end
      assert.equal(0, g:metric("gateway_unauthenticated_bodies_refused_total"))
      -- Well framed, no token: 401 from the headers, the connection closed, so neither the
      -- body nor the request after it is ever read or forwarded.
      for _, framing in ipairs{ "Content-Length: 5\r\n\r\nabcde", "Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n" } do
        local res = raw(hostport(g.url), post .. "\r\n" .. framing .. SMUGGLED)
        assert.same({ 401 }, res.statuses, framing)
        assert.truthy(res.text:lower():find("connection: close", 1, true), framing)
      end
      assert.equal(2, g:metric("gateway_unauthenticated_bodies_refused_total"))
      assert.equal(0, #up:requests())
    end)

    it("refuses a NUL byte in the request head on the main listener (libevent would cut the value there)", function()
      local nul_cases = {
        { "NUL inside Authorization", case("GET /hooks/team-a/x HTTP/1.1\r\nHost: " .. HOST ..
          "\r\nAuthorization: Bearer " .. TEAM_A.token .. "\0garbage") },
        { "NUL inside another value", case(base:gsub("POST", "GET") .. "\r\nX-Note: a\0b") },
        { "NUL in the target", case("GET /hooks/team-a/x\0/../../admin HTTP/1.1\r\nHost: " .. HOST .. "\r\n" ..
          bearer(TEAM_A)) },
      }
      for _, shape in ipairs{ "none", "proxy" } do
        for _, c in ipairs(nul_cases) do
          local res = raw(hostport(gw[shape].url), c[2])
          assert.same({ 400 }, res.statuses, shape .. ": " .. c[1])
        end
      end
      assert.equal(0, #up:requests())
      -- A NUL inside a body is data, not refused.
      local res = raw(hostport(gw.proxy.url), "POST /hooks/team-a/bin HTTP/1.1\r\nHost: " .. HOST .. "\r\n" ..
        bearer(TEAM_A) .. "\r\nContent-Length: 3\r\nConnection: close\r\n\r\na\0b")
      assert.equal(200, res.status)
      assert.equal(3, up:requests()[1].body_bytes)
    end)

    it("refuses each on the admin listener", function()
      for _, c in ipairs(CASES) do
        local admin = c[2]:gsub("/hooks/team%-a/x", "/metrics")
        local res = raw(hostport(gw.none.admin_url), admin)
        assert.same({ 400 }, res.statuses, c[1])
      end
    end)

    it("still answers well-framed requests, keep-alive and chunked included", function()
      local ok = "GET /hooks/team-a/a HTTP/1.1\r\nHost: " .. HOST .. "\r\n" .. bearer(TEAM_A) .. "\r\n\r\n"
      local res = raw(hostport(gw.none.url), ok .. ok:gsub("/a ", "/b ") .. request_bytes("GET", "/hooks/team-a/c",
        { "Host: " .. HOST, bearer(TEAM_A) }))
      assert.same({ 200, 200, 200 }, res.statuses)
      res = raw(hostport(gw.proxy.url), "POST /hooks/team-a/chunked HTTP/1.1\r\nHost: " .. HOST .. "\r\n" ..
        bearer(TEAM_A) .. "\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
      assert.equal(200, res.status)
      local got = up:requests()
      assert.equal(1, #got)
      assert.equal(3, got[1].body_bytes)
    end)
  end)

  describe("cases that already held", function()
    it("several Authorization headers: 401", function()
      local res = gw.none:request(TEAM_A.token, "/hooks/team-a/x", { "Authorization: Bearer other" })
      assert.equal(401, res.status)
    end)

    it("proxy mode: absolute-form and asterisk targets are 400, CONNECT and TRACE never reach the upstream", function()
      local res = raw(hostport(gw.proxy.url), request_bytes("GET", "http://evil.example/hooks/team-a/x",
        { "Host: " .. HOST, bearer(TEAM_A) }))
      assert.equal(400, res.status)
      res = raw(hostport(gw.proxy.url), request_bytes("OPTIONS", "*", { "Host: " .. HOST, bearer(TEAM_A) }))
      assert.equal(400, res.status)
      for _, m in ipairs{ "CONNECT", "TRACE" } do
        res = raw(hostport(gw.proxy.url), request_bytes(m, "/hooks/team-a/x", { "Host: " .. HOST, bearer(TEAM_A) }))
        assert.equal(501, res.status, m) -- evhttp: not an allowed method
      end
      assert.equal(0, #up:requests())
    end)
  end)

  describe("the admin listener", function()
    it("refuses a cross-site POST /cache/flush and a DNS-rebinding Host; curl's POST still works", function()
      local url = gw.none.admin_url .. "/cache/flush"
      local res = http.post(url, "x", { "Origin: http://evil.example", "Content-Type: text/plain" })
      assert.equal(403, res.status)
      res = http.post(url, "", { "Origin: http://evil.example" })
      assert.equal(403, res.status)
      res = http.post(url, "", { "Sec-Fetch-Site: cross-site" })
      assert.equal(403, res.status)
      res = http.post(url, "x", { "Content-Type: text/plain" })
      assert.equal(403, res.status)
      res = http.post(url, "", { "Host: rebind.evil.example:9090" })
      assert.equal(403, res.status)
      res = http.get(gw.none.admin_url .. "/metrics", { "Host: rebind.evil.example" })
      assert.equal(403, res.status)
      assert.equal(0, gw.none:metric("gateway_cache_flushes_total") or 0)
      res = gw.none:flush()
      assert.equal(200, res.status)
      res = http.get(gw.none.admin_url .. "/metrics", { "Host: localhost:9090" })
      assert.equal(200, res.status)
    end)

    it("with --admin-token-file requires the token on /metrics, /policy and /cache/flush, not on probes", function()
      local token_file = dir .. "/admin-token"
      proc.write_file(token_file, "s3cret-admin-token\n")
      local g = start{ "--admin-token-file", token_file, "--admin-listen", "127.0.0.1:0" }
      for _, path in ipairs{ "/metrics", "/policy" } do
        local res = http.get(g.admin_url .. path)
        assert.equal(401, res.status, path)
        assert.equal('Bearer realm="tokengate-admin"', res.headers["www-authenticate"])
        assert.equal(401, http.get(g.admin_url .. path, { "Authorization: Bearer wrong" }).status, path)
        assert.equal(200, http.get(g.admin_url .. path, { "Authorization: Bearer s3cret-admin-token" }).status, path)
      end
      assert.equal(401, http.post(g.admin_url .. "/cache/flush", "").status)
      assert.equal(200, http.post(g.admin_url .. "/cache/flush", "", { "Authorization: Bearer s3cret-admin-token" }).status)
      for _, path in ipairs{ "/healthz", "/livez", "/readyz" } do
        assert.equal(200, http.get(g.admin_url .. path).status, path)
      end
      assert.is_nil(g:log_text():find("s3cret", 1, true))
      g:stop()
    end)

    it("with --admin-auth-review authenticates callers by TokenReview + SubjectAccessReview (kube-rbac-proxy's way)", function()
      local g = start{ "--admin-auth-review" }
      local function get(path, token)
        return http.get(g.admin_url .. path, token and { "Authorization: Bearer " .. token.token } or nil)
      end
      fake:reset_stats()
      assert.equal(200, get("/metrics", MONITOR).status)
      assert.equal(200, get("/metrics", MONITOR).status) -- cached: no new review
      assert.equal(1, fake:stats().tokenreview_calls)
      assert.equal(1, fake:stats().subjectaccessreview_calls)
      assert.equal(403, get("/metrics", TEAM_A).status)  -- authenticated, not allowed
      assert.equal(403, get("/policy", MONITOR).status)  -- allowed /metrics only
      assert.equal(401, get("/metrics", { token = "no-such-token" }).status)
      assert.equal(401, get("/metrics").status)
      local res = http.post(g.admin_url .. "/cache/flush", "", { "Authorization: Bearer " .. MONITOR.token })
      assert.equal(403, res.status) -- POST is verb create
      assert.equal(200, get("/readyz").status)
      -- The API server down: 503, never an allow.
      fake:config{ latency_ms = 5000 }
      res = http.get(g.admin_url .. "/metrics", { "Authorization: Bearer " .. PIPED.token })
      fake:config{ latency_ms = 0 }
      assert.equal(503, res.status)
      assert.truthy(tonumber(res.headers["retry-after"]))
      assert.is_nil(g:log_text():find("beyond loopback", 1, true))
      g:stop()
    end)

    it("has its own connection cap: held admin connections never starve the main listener", function()
      local g = start{ "--admin-max-connections", "2" }
      local host, port = hostport(g.admin_url):match("^(.-):(%d+)$")
      local holders = {}
      for i = 1, 2 do
        holders[i] = proc.spawn({ "bash", "-c", string.format("exec 3<>/dev/tcp/%s/%s; sleep 60", host, port) },
          dir .. "/admin-holder-" .. i .. ".log")
      end
      -- Once both are accepted, a third admin connection waits in the accept queue (no
      -- answer) while the main listener answers.
      local status
      local deadline = proc.now() + 10
      repeat
        status = http.get(g.admin_url .. "/healthz", nil, { timeout = 1 }).status
      until status == 0 or proc.now() > deadline
      assert.equal(0, status)
      assert.equal(200, g:request(TEAM_A.token, "/hooks/team-a/x").status)
      for _, h in ipairs(holders) do proc.stop(h) end
      deadline = proc.now() + 10
      repeat
        status = http.get(g.admin_url .. "/healthz", nil, { timeout = 2 }).status
      until status == 200 or proc.now() > deadline
      assert.equal(200, status)
      g:stop()
    end)

    it("warns at start-up when it listens beyond loopback without authentication", function()
      local g = start{ "--admin-listen", "0.0.0.0:0" }
      assert.truthy(g:log_text():find("admin listener is reachable beyond loopback without authentication", 1, true))
      g:stop()
      assert.is_nil(gw.none:log_text():find("beyond loopback", 1, true))
    end)
  end)

  describe("behind real nginx", function()
    local ndir

    local function nginx_dir()
      local d = dir .. "/nginx-" .. math.random(1, 1e9)
      proc.run("mkdir -p " .. proc.quote(d))
      return d
    end

    describe("examples/nginx/nginx.conf with --forwarded-headers nginx", function()
      local n
      lazy_setup(function()
        ndir = nginx_dir()
        n = nginx_mod.start(ndir, assert(proc.read_file("examples/nginx/nginx.conf")),
          { TOKENGATE = hostport(gw.nginx.url), UPSTREAM = up.addr })
      end)
      lazy_teardown(function() if n then n:stop() end end)

      local function via(path, headers)
        local all = { "Host: " .. HOST }
        for _, h in ipairs(headers or {}) do all[#all + 1] = h end
        return raw(hostport(n.url), request_bytes("GET", path, all))
      end

      it("a client's X-Forwarded-Uri / X-Original-URL / X-Original-URI cannot move the judged path", function()
        for _, h in ipairs{ "X-Forwarded-Uri: /hooks/team-a/x", "X-Original-URL: http://" .. HOST .. "/hooks/team-a/x",
          "X-Original-URI: /hooks/team-a/x", "X-Forwarded-Method: GET" } do
          assert.equal(403, via("/admin/wipe", { bearer(TEAM_A), h }).status, h)
        end
        assert.equal(0, #up:requests())
        assert.equal(200, via("/hooks/team-a/x", { bearer(TEAM_A) }).status)
        assert.equal(1, #up:requests())
      end)

      it("each traversal is refused (400 by the example's own check, else 403 by tokengate) and never proxied", function()
        for _, path in ipairs(TRAVERSALS) do
          local caught_by_nginx = path:lower():find("%2e", 1, true) or path:lower():find("%2f", 1, true)
            or path:find("/%.%.?/") or path:find("//", 1, true)
          local res = via(path, { bearer(TEAM_A) })
          assert.equal(caught_by_nginx and 400 or 403, res.status, path)
        end
        assert.equal(0, #up:requests())
      end)
    end)

    describe("ingress-nginx's auth location (its nginx.tmpl) with --forwarded-headers ingress-nginx", function()
      -- The location ingress-nginx generates for nginx.ingress.kubernetes.io/auth-url
      -- (headers as in its template), in front of the recording upstream.
      local TEMPLATE = [[
server {
    listen @LISTEN@;
    location / {
        auth_request /_external-auth;
        auth_request_set $authHeader0 $upstream_http_x_remote_user;
        proxy_set_header 'X-Remote-User' $authHeader0;
        auth_request_set $authHeader1 $upstream_http_x_remote_uid;
        proxy_set_header 'X-Remote-Uid' $authHeader1;
        auth_request_set $authHeader2 $upstream_http_x_remote_groups;
        proxy_set_header 'X-Remote-Groups' $authHeader2;
        proxy_pass http://@UPSTREAM@;
    }
    location = /_external-auth {
        internal;
        proxy_pass_request_body     off;
        proxy_set_header            Content-Length          "";
        proxy_set_header            X-Forwarded-Proto       "";
        proxy_set_header            X-Request-ID            $request_id;
        proxy_set_header            Host                    tokengate.tokengate.svc.cluster.local;
        proxy_set_header            X-Original-URL          $scheme://$http_host$request_uri;
        proxy_set_header            X-Original-Method       $request_method;
        proxy_set_header            X-Sent-From             "nginx-ingress-controller";
        proxy_set_header            X-Real-IP               $remote_addr;
        proxy_set_header            X-Forwarded-For         $remote_addr;
        proxy_set_header            X-Auth-Request-Redirect $request_uri;
        proxy_http_version          1.1;
        proxy_pass_request_headers  on;
        proxy_pass http://@TOKENGATE@/ingress-auth;
    }
}
]]
      local n
      lazy_setup(function()
        n = nginx_mod.start(nginx_dir(), TEMPLATE, { TOKENGATE = hostport(gw.ingress.url), UPSTREAM = up.addr })
      end)
      lazy_teardown(function() if n then n:stop() end end)

      local function via(method, path, headers)
        local all = { "Host: " .. HOST }
        for _, h in ipairs(headers or {}) do all[#all + 1] = h end
        return raw(hostport(n.url), request_bytes(method, path, all))
      end

      it("judges the client's method and path, not the auth-url's (the review's DELETE /admin/wipe)", function()
        assert.equal(403, via("DELETE", "/admin/wipe", { bearer(TEAM_A) }).status)
        assert.equal(0, #up:requests())
        assert.equal(200, via("DELETE", "/hooks/team-a/x?y=1", { bearer(TEAM_A) }).status)
        local got = up:requests()
        assert.equal(1, #got)
        assert.equal("/hooks/team-a/x?y=1", got[1].uri)
        assert.same({ TEAM_A.username }, up:headers(got[1], "X-Remote-User"))
        local saw = policy_views(gw.ingress)
        assert.same({ method = "DELETE", path = "/hooks/team-a/x", query = "y=1", host = HOST }, saw[#saw])
      end)

      it("a client's X-Forwarded-Uri or X-Original-URI passed through by ingress-nginx fails closed (500), never allows", function()
        for _, h in ipairs{ "X-Forwarded-Uri: /hooks/team-a/x", "X-Original-URI: /hooks/team-a/x",
          "X-Forwarded-Method: GET" } do
          assert.equal(500, via("DELETE", "/admin/wipe", { bearer(TEAM_A), h }).status, h)
        end
        assert.equal(0, #up:requests())
      end)

      it("each traversal is refused (403) and never proxied", function()
        for _, path in ipairs(TRAVERSALS) do
          -- ingress-nginx has no path check of its own: every one is tokengate's 403.
          assert.equal(403, via("GET", path, { bearer(TEAM_A) }).status, path)
        end
        assert.equal(0, #up:requests())
      end)
    end)
  end)
end)
