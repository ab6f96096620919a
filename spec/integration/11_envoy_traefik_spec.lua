-- Integration: the check requests Envoy (ext_authz, HTTP service, examples/envoy/envoy.yaml)
-- and Traefik (forwardAuth, examples/traefik/dynamic.yml) send, replayed against the real
-- gateway, and the answers those proxies need. Neither proxy can be installed here, so
-- the requests are rebuilt from the proxies' source:
--
--   Envoy (source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc and the
--   async HTTP client): the client's method and path with query, `content-length: 0`
--   and no body, the client's Host and Authorization (plus whatever `allowed_headers`
--   matches: nothing else in the example), `x-envoy-internal: true`, Envoy's own
--   address appended to `x-forwarded-for`, and `x-envoy-expected-rq-timeout-ms` from
--   the configured timeout; lower-case names, as Envoy writes them. Envoy allows only
--   on 200; any other status below 500 is passed to the client with its body; 5xx or no
--   answer becomes status_on_error.
--
--   Traefik (pkg/middlewares/auth/forward.go): always GET to the configured address,
--   no body, Host = the address, the client's headers (minus hop-by-hop ones), and
--   X-Forwarded-For/-Method/-Proto/-Host/-Uri set from the real request (the example's
--   trustForwardHeader: false), beside X-Forwarded-Port/-Server and X-Real-Ip from the
--   entry point; Go writes canonical names sorted, then adds Accept-Encoding: gzip.
--   Traefik allows on any 2xx and passes any other answer (status, headers, body) on.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local upstream_mod = require("support.upstream")
local proc = require("support.proc")

local HOST = "hooks.example.com"
local CLIENT_IP = "203.0.113.7"
local ENVOY_IP = "10.0.0.5"
local METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD" }

local function sa(ns, name)
  return { token = "tok-" .. ns .. "-" .. name, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local TEAM_A = sa("team-a", "sender")
local TEAM_B = sa("team-b", "reader")
local KUBE_SYSTEM = sa("kube-system", "ctrl")
local COLD = { sa("team-c", "cold-1"), sa("team-c", "cold-2") } -- first seen by the API-failure tests
local TOKENS = { TEAM_A, TEAM_B, KUBE_SYSTEM, COLD[1], COLD[2] }
local GROUPS_A = "system:serviceaccounts|system:serviceaccounts:team-a|system:authenticated"

local SAR_RULES = {
  { user = TEAM_B.username, verb = "get", namespace = "team-b", group = "hooks.example.com", resource = "deliveries" },
  { user = TEAM_B.username, verb = "create", namespace = "team-b", group = "hooks.example.com", resource = "deliveries" },
}
-- What team-b gets per client method through the SubjectAccessReview above.
local TEAM_B_EXPECT = { GET = 200, HEAD = 200, POST = 200, PUT = 403, PATCH = 403, DELETE = 403, OPTIONS = 403 }

-- The policy answers with what it was shown: X-Seen-* headers on allow, the method and
-- path in the deny reason. team-a may call /hooks/* with any method and nothing else.
local POLICY = [[
local tg = require("tokengate")
local VERBS = { GET = "get", HEAD = "get", OPTIONS = "options", POST = "create", PUT = "update",
                PATCH = "patch", DELETE = "delete" }
return {
  anonymous = function(req) return req.path:sub(1, 8) == "/public/" end,
  authorize = function(req, user)
    if user.namespace == "kube-system" then return tg.deny("kube-system may not call hooks") end
    if user.namespace == "team-a" then
      if req.path:sub(1, 7) == "/hooks/" then
        return tg.allow{ headers = { ["X-Seen-Method"] = req.method, ["X-Seen-Path"] = req.path,
                                     ["X-Seen-Query"] = req.query, ["X-Seen-Host"] = req.host } }
      end
      return tg.deny("team-a may not " .. req.method .. " " .. req.path)
    end
    return tg.sar{ namespace = user.namespace or "", verb = VERBS[req.method] or "unknown",
                   group = "hooks.example.com", resource = "deliveries" }
  end,
}
]]

-- Sends requests exactly as given over one curl invocation (so one kept-alive
-- connection, as a proxy's pool would use): curl's own User-Agent and Accept are removed,
-- and the Host in `headers` replaces curl's. HEAD uses --head so curl reads no body.
-- requests: list of { method =, url =, headers = { {name, value}, ... } }.
-- Returns a list of { status =, headers = {lower-case name -> value}, body =, new_connection = }.
local function send_all(requests)
  local base = os.tmpname()
  local args = { "curl" }
  for i, r in ipairs(requests) do
    if i > 1 then args[#args + 1] = "--next" end
    for _, a in ipairs({ "-sS", "--http1.1", "--max-time", "20", "-D", base .. "." .. i .. ".hdr",
        "-o", base .. "." .. i .. ".body", "-w", "%{http_code} %{num_connects}\\n", "-H", "User-Agent:", "-H", "Accept:" }) do
      args[#args + 1] = a
    end
    if r.method == "HEAD" then
      args[#args + 1] = "--head"
    elseif r.method ~= "GET" then
      args[#args + 1] = "-X"; args[#args + 1] = r.method
    end
    for _, h in ipairs(r.headers) do args[#args + 1] = "-H"; args[#args + 1] = h[1] .. ": " .. h[2] end
    args[#args + 1] = r.url
  end
  for i, a in ipairs(args) do args[i] = proc.quote(a) end
  local out = proc.run(table.concat(args, " "))
  local results, i = {}, 0
  for code, connects in out:gmatch("(%d%d%d) (%d+)") do
    i = i + 1
    local res = { status = tonumber(code), new_connection = tonumber(connects) > 0, headers = {},
      body = proc.read_file(base .. "." .. i .. ".body") or "" }
    for line in (proc.read_file(base .. "." .. i .. ".hdr") or ""):gmatch("[^\r\n]+") do
      local name, value = line:match("^([^:%s]+):%s*(.-)%s*$")
      if name then res.headers[name:lower()] = value end
    end
    os.remove(base .. "." .. i .. ".hdr"); os.remove(base .. "." .. i .. ".body")
    results[i] = res
  end
  os.remove(base)
  assert(#results == #requests, "curl answered " .. #results .. " of " .. #requests .. ":\n" .. out)
  return results
end

local function send(r) return send_all({ r })[1] end

-- The lines of the YAML block under the first `key:` (deeper-indented lines after it),
-- enough to read the examples' lists without a YAML library.
local function yaml_block(text, key)
  local lines, indent, out = {}, nil, {}
  for line in text:gmatch("[^\n]*") do lines[#lines + 1] = line end
  for _, line in ipairs(lines) do
    local stripped = line:gsub("%s+#.*$", "")
    if indent then
      local lead = #stripped:match("^(%s*)")
      if stripped:match("%S") then
        if lead <= indent then break end
        out[#out + 1] = stripped
      end
    elseif stripped:match("^%s*-?%s*" .. key:gsub("%-", "%%-") .. ":") then
      indent = #stripped:match("^(%s*)")
      local inline = stripped:match(":%s*(%S.*)$")
      if inline then out[#out + 1] = inline end
    end
  end
  assert(indent, "no '" .. key .. ":' in the example")
  return out
end

local function yaml_exacts(text, key)
  local names = {}
  for _, line in ipairs(yaml_block(text, key)) do
    local name = line:match("exact:%s*\"?([^\"%s]+)")
    if name then names[#names + 1] = name end
  end
  return names
end

local function yaml_items(text, key)
  local items = {}
  for _, line in ipairs(yaml_block(text, key)) do
    local item = line:match("^%s*%-%s*\"?([^\"%s]+)")
    if item then items[#items + 1] = item end
  end
  return items
end

describe("proxies replayed against the real gateway", function()
  local fake, gw, gw_hostport, up
  -- Traefik's gateway is told which proxy is in front (--forwarded-headers traefik);
  -- Envoy's judges the request itself (the default, none).
  local tgw, tgw_hostport

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS, sar_rules = SAR_RULES }
    local policy = fake.dir .. "/proxies-policy.lua"
    proc.write_file(policy, POLICY)
    gw = gateway_mod.start{ fake = fake, args = { "--policy", policy, "--review-timeout", "1s" } }
    gw_hostport = gw.url:gsub("^http://", "")
    tgw = gateway_mod.start{ fake = fake, args = { "--policy", policy, "--review-timeout", "1s",
      "--forwarded-headers", "traefik" } }
    tgw_hostport = tgw.url:gsub("^http://", "")
    up = upstream_mod.start{ dir = fake.dir }
  end)

  lazy_teardown(function()
    if up then up:stop() end
    if gw then gw:stop() end
    if tgw then tgw:stop() end
    if fake then fake:stop() end
  end)

  before_each(function() fake:config{ latency_ms = 0 } end)

  describe("Envoy ext_authz (examples/envoy/envoy.yaml)", function()
    local example = assert(proc.read_file("examples/envoy/envoy.yaml"))

    -- The check request Envoy sends for a client request `method uri`.
    local function envoy_check(method, uri, token)
      -- "Host", not Envoy's "host": curl always writes that name itself (names are
      -- case-insensitive, and tokengate looks them up that way).
      local headers = { { "Host", HOST }, { "content-length", "0" } }
      if token then headers[#headers + 1] = { "authorization", "Bearer " .. token } end
      headers[#headers + 1] = { "x-envoy-internal", "true" }
      headers[#headers + 1] = { "x-forwarded-for", ENVOY_IP }
      headers[#headers + 1] = { "x-envoy-expected-rq-timeout-ms", "11000" }
      return { method = method, url = gw.url .. uri, headers = headers }
    end

    it("is configured the way these replays assume", function()
      assert.truthy(example:find("envoy.filters.http.ext_authz", 1, true))
      assert.truthy(example:find("\n%s+failure_mode_allow: false\n"))
      assert.truthy(example:find("status_on_error: { code: ServiceUnavailable }", 1, true))
      assert.is_nil(example:find("with_request_body", 1, true)) -- so Content-Length is 0
      -- The policy and the application see one normalized path (tokengate does not
      -- normalize: it judges the path it is given).
      assert.truthy(example:find("\n%s+normalize_path: true\n"))
      assert.truthy(example:find("\n%s+merge_slashes: true\n"))
      assert.truthy(example:find("\n%s+path_with_escaped_slashes_action: REJECT_REQUEST\n"))
      -- Only authorization on top of Envoy's fixed set: no forwarding header a client
      -- could use to change what the policy judges.
      assert.same({ "authorization" }, yaml_exacts(example, "allowed_headers"))
      assert.same({ "x-remote-user", "x-remote-uid", "x-remote-groups" }, yaml_exacts(example, "allowed_upstream_headers"))
      -- Longer than a TokenReview plus a SubjectAccessReview at tokengate's default 5s.
      local timeout = tonumber(example:match("\n%s+timeout: (%d+)s"))
      assert.is_true(timeout > 10, "ext_authz timeout " .. tostring(timeout))
    end)

    it("replays byte-for-byte the headers listed (checked on a recording server)", function()
      local check = envoy_check("POST", "/hooks/deliver?x=1", TEAM_A.token)
      check.url = up.url .. "/hooks/deliver?x=1"
      up:clear()
      send(check)
      local got = up:requests()
      assert.equal(1, #got)
      assert.equal("POST", got[1].method)
      assert.equal("/hooks/deliver?x=1", got[1].uri)
      assert.same(check.headers, got[1].headers)
      assert.equal(0, got[1].body_bytes)
    end)

    it("answers exactly 200 with the identity for every method Envoy forwards, and the policy saw that method", function()
      local checks = {}
      for i, m in ipairs(METHODS) do checks[i] = envoy_check(m, "/hooks/deliver?x=1", TEAM_A.token) end
      local results = send_all(checks)
      for i, m in ipairs(METHODS) do
        local res = results[i]
        assert.equal(200, res.status, m) -- Envoy allows on 200 only, not on any 2xx
        assert.equal(TEAM_A.username, res.headers["x-remote-user"], m)
        assert.equal(TEAM_A.uid, res.headers["x-remote-uid"], m)
        assert.equal(GROUPS_A, res.headers["x-remote-groups"], m)
        assert.equal(m, res.headers["x-seen-method"], m)
        assert.equal("/hooks/deliver", res.headers["x-seen-path"], m)
        assert.equal("x=1", res.headers["x-seen-query"], m)
        assert.equal(HOST, res.headers["x-seen-host"], m)
      end
      -- One connection for all of them, as Envoy's pool reuses it: a POST with
      -- Content-Length: 0 must leave the connection usable for the next check.
      local connects = 0
      for _, res in ipairs(results) do if res.new_connection then connects = connects + 1 end end
      assert.equal(1, connects)
    end)

    it("answers 403 with the policy's reason, naming the method and path it judged", function()
      local checks = {}
      for i, m in ipairs(METHODS) do checks[i] = envoy_check(m, "/admin/users?all=1", TEAM_A.token) end
      for i, res in ipairs(send_all(checks)) do
        local m = METHODS[i]
        assert.equal(403, res.status, m)
        assert.is_nil(res.headers["x-remote-user"], m)
        if m ~= "HEAD" then assert.equal("forbidden: team-a may not " .. m .. " /admin/users" .. "\n", res.body, m) end
      end
      local res = send(envoy_check("GET", "/hooks/deliver", KUBE_SYSTEM.token))
      assert.equal(403, res.status)
      assert.equal("forbidden: kube-system may not call hooks" .. "\n", res.body)
    end)

    it("answers per method what the SubjectAccessReview decides", function()
      local checks = {}
      for i, m in ipairs(METHODS) do checks[i] = envoy_check(m, "/hooks/deliver", TEAM_B.token) end
      for i, res in ipairs(send_all(checks)) do
        local m = METHODS[i]
        assert.equal(TEAM_B_EXPECT[m], res.status, m)
        if res.status == 200 then assert.equal(TEAM_B.username, res.headers["x-remote-user"], m) end
      end
    end)

    it("answers 401 with WWW-Authenticate for an unknown or missing token", function()
      for _, token in ipairs({ "no-such-token", false }) do
        local res = send(envoy_check("POST", "/hooks/deliver", token or nil))
        assert.equal(401, res.status)
        assert.equal('Bearer realm="tokengate"', res.headers["www-authenticate"])
        assert.is_nil(res.headers["x-remote-user"])
      end
    end)

    it("answers 5xx when the API server fails, which Envoy turns into status_on_error (503)", function()
      fake:config{ latency_ms = 3000 }
      local res = send(envoy_check("GET", "/hooks/deliver", COLD[1].token))
      fake:config{ latency_ms = 0 }
      assert.equal(503, res.status)
      assert.is_nil(res.headers["x-remote-user"])
    end)

    it("allows an anonymous path with no identity headers at all (why the example strips X-Remote-* first)", function()
      local res = send(envoy_check("GET", "/public/status", nil))
      assert.equal(200, res.status)
      assert.is_nil(res.headers["x-remote-user"])
      assert.is_nil(res.headers["x-remote-groups"])
      assert.truthy(example:find('string.sub(name, 1, 9) == "x-remote-"', 1, true))
    end)
  end)

  describe("Traefik forwardAuth (examples/traefik/dynamic.yml)", function()
    local example = assert(proc.read_file("examples/traefik/dynamic.yml"))

    -- The request Traefik sends for a client request `method uri` carrying `client`
    -- headers ({name, value} list, canonical names).
    local function traefik_check(method, uri, token, client)
      local map = { ["Accept"] = "*/*" }
      if token then map["Authorization"] = "Bearer " .. token end
      for _, h in ipairs(client or {}) do map[h[1]] = h[2] end
      -- From the entry point (client forwarding headers are not trusted there) ...
      map["X-Forwarded-Port"] = "443"
      map["X-Forwarded-Server"] = "traefik-7d9c5"
      map["X-Real-Ip"] = CLIENT_IP
      -- ... and from forwardAuth with trustForwardHeader: false.
      map["X-Forwarded-For"] = CLIENT_IP
      map["X-Forwarded-Method"] = method
      map["X-Forwarded-Proto"] = "https"
      map["X-Forwarded-Host"] = HOST
      map["X-Forwarded-Uri"] = uri
      local names = {}
      for name in pairs(map) do names[#names + 1] = name end
      table.sort(names)
      local headers = { { "Host", tgw_hostport }, { "User-Agent", "curl/8.5.0" } }
      for _, name in ipairs(names) do headers[#headers + 1] = { name, map[name] } end
      headers[#headers + 1] = { "Accept-Encoding", "gzip" }
      return { method = "GET", url = tgw.url .. "/", headers = headers }
    end

    it("is configured the way these replays assume", function()
      assert.truthy(example:find("\n%s+forwardAuth:\n"))
      assert.truthy(example:find("\n%s+trustForwardHeader: false\n"))
      assert.same({ "X-Remote-User", "X-Remote-Uid", "X-Remote-Groups" }, yaml_items(example, "authResponseHeaders"))
      assert.truthy(example:find('authResponseHeadersRegex: "(?i)^x[-_]remote[-_]"', 1, true))
      assert.is_nil(example:find("forwardBody", 1, true))
    end)

    it("replays byte-for-byte the headers listed (checked on a recording server)", function()
      local check = traefik_check("POST", "/hooks/deliver?x=1", TEAM_A.token)
      check.url = up.url .. "/"
      up:clear()
      send(check)
      local got = up:requests()
      assert.equal(1, #got)
      assert.equal("GET", got[1].method)
      assert.equal("/", got[1].uri)
      assert.same(check.headers, got[1].headers)
    end)

    it("answers 200 with every authResponseHeaders entry for every client method, judged on X-Forwarded-*", function()
      local wanted = yaml_items(example, "authResponseHeaders")
      local checks = {}
      for i, m in ipairs(METHODS) do checks[i] = traefik_check(m, "/hooks/deliver?x=1", TEAM_A.token) end
      for i, res in ipairs(send_all(checks)) do
        local m = METHODS[i]
        assert.equal(200, res.status, m)
        for _, name in ipairs(wanted) do assert.truthy(res.headers[name:lower()], m .. " " .. name) end
        assert.equal(TEAM_A.username, res.headers["x-remote-user"], m)
        assert.equal(TEAM_A.uid, res.headers["x-remote-uid"], m)
        assert.equal(GROUPS_A, res.headers["x-remote-groups"], m)
        assert.equal(m, res.headers["x-seen-method"], m)
        assert.equal("/hooks/deliver", res.headers["x-seen-path"], m)
        assert.equal("x=1", res.headers["x-seen-query"], m)
        assert.equal(HOST, res.headers["x-seen-host"], m)
      end
    end)

    it("answers per client method what the SubjectAccessReview decides", function()
      local checks = {}
      for i, m in ipairs(METHODS) do checks[i] = traefik_check(m, "/hooks/deliver", TEAM_B.token) end
      for i, res in ipairs(send_all(checks)) do
        assert.equal(TEAM_B_EXPECT[METHODS[i]], res.status, METHODS[i])
      end
    end)

    it("refuses a request carrying the client's own X-Original-* (another family), judges X-Forwarded-* despite X-Remote-*", function()
      -- Traefik passes the client's headers through; nginx's family next to Traefik's is
      -- refused outright (400) rather than ignored, whatever the token.
      local res = send(traefik_check("DELETE", "/admin", TEAM_A.token, {
        { "X-Original-Method", "GET" }, { "X-Original-Uri", "/hooks/deliver" } }))
      assert.equal(400, res.status)
      assert.is_nil(res.headers["x-remote-user"])
      res = send(traefik_check("DELETE", "/admin", TEAM_A.token, {
        { "X-Remote-User", "system:admin" }, { "X-Remote-Groups", "system:masters" } }))
      assert.equal(403, res.status)
      assert.equal("forbidden: team-a may not DELETE /admin" .. "\n", res.body)
      res = send(traefik_check("GET", "/hooks/deliver", TEAM_A.token, { { "X-Remote-User", "system:admin" } }))
      assert.equal(200, res.status)
      assert.equal(TEAM_A.username, res.headers["x-remote-user"])
    end)

    it("answers 401 with WWW-Authenticate and 403 with a reason, which Traefik passes to the client", function()
      local res = send(traefik_check("POST", "/hooks/deliver", "no-such-token"))
      assert.equal(401, res.status)
      assert.equal('Bearer realm="tokengate"', res.headers["www-authenticate"])
      assert.is_nil(res.headers["x-remote-user"])
      res = send(traefik_check("POST", "/hooks/deliver", nil))
      assert.equal(401, res.status)
      res = send(traefik_check("PUT", "/hooks/deliver", KUBE_SYSTEM.token))
      assert.equal(403, res.status)
      assert.equal("forbidden: kube-system may not call hooks" .. "\n", res.body)
    end)

    it("answers 503 with Retry-After when the API server fails, which Traefik passes to the client", function()
      fake:config{ latency_ms = 3000 }
      local res = send(traefik_check("GET", "/hooks/deliver", COLD[2].token))
      fake:config{ latency_ms = 0 }
      assert.equal(503, res.status)
      assert.truthy(tonumber(res.headers["retry-after"]))
      assert.is_nil(res.headers["x-remote-user"])
    end)

    it("allows an anonymous path with no identity headers (so Traefik must delete the client's, as it does for listed names)", function()
      local res = send(traefik_check("GET", "/public/status", nil, { { "X-Remote-User", "system:admin" } }))
      assert.equal(200, res.status)
      assert.is_nil(res.headers["x-remote-user"])
    end)
  end)
end)
