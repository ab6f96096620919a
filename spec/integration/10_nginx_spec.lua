-- Integration: real nginx running examples/nginx/nginx.conf (the file users copy, only
-- its three address placeholders filled in) in front of a recording upstream, with the
-- real tokengate behind auth_request and the fake API server behind tokengate. Every
-- assertion is about what the client got back, what the application received, or what
-- tokengate's policy was shown.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local upstream_mod = require("support.upstream")
local nginx_mod = require("support.nginx")
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")

local EXAMPLE = "examples/nginx/nginx.conf" -- busted runs from the repository root
local HOST = "hooks.example.com"

local function sa(ns, name)
  return { token = "tok-" .. ns .. "-" .. name, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
end

local TEAM_A = sa("team-a", "sender")
local TEAM_B = sa("team-b", "reader")
local KUBE_SYSTEM = sa("kube-system", "ctrl")
local LATE = sa("team-c", "late") -- never used before the API-server-failure test: cold in the cache
local TOKENS = { TEAM_A, TEAM_B, KUBE_SYSTEM, LATE }

-- team-b:reader may get and create deliveries in team-b, nothing else.
local SAR_RULES = {
  { user = TEAM_B.username, verb = "get", namespace = "team-b", group = "hooks.example.com", resource = "deliveries" },
  { user = TEAM_B.username, verb = "create", namespace = "team-b", group = "hooks.example.com", resource = "deliveries" },
}

-- The policy logs what it was shown, so the spec can compare it with what the client
-- sent to nginx. team-a may only GET/HEAD /hooks/*: a 200 there proves the URI reached
-- tokengate (nginx's subrequest itself is GET /_tokengate), a 403 for POST proves the
-- method did (the subrequest is always a GET, see proxy_method in the example).
local POLICY = [[
local tg = require("tokengate")
local VERBS = { GET = "get", HEAD = "get", POST = "create", PUT = "update", PATCH = "patch", DELETE = "delete" }
return {
  anonymous = function(req) return req.path:sub(1, 8) == "/public/" end,
  authorize = function(req, user)
    tg.log("info", "policy saw", { method = req.method, path = req.path, query = req.query, host = req.host,
      content_length = req.headers["content-length"] or "-", user = user.username })
    if req.path == "/boom" then error("boom") end
    if user.namespace == "kube-system" then return tg.deny("kube-system may not call hooks") end
    if user.namespace == "team-a" then
      if (req.method == "GET" or req.method == "HEAD") and req.path:sub(1, 7) == "/hooks/" then return tg.allow() end
      return tg.deny("team-a may only read /hooks/*")
    end
    return tg.sar{ namespace = user.namespace or "", verb = VERBS[req.method] or "unknown",
                   group = "hooks.example.com", resource = "deliveries" }
  end,
}
]]

-- The example with its placeholders filled, run by support.nginx (foreground, a loopback
-- port, every file under dir).
local function start_nginx(dir, tokengate_addr, upstream_addr)
  local template = assert(proc.read_file(EXAMPLE), "cannot read " .. EXAMPLE)
  return nginx_mod.start(dir, template, { TOKENGATE = tokengate_addr, UPSTREAM = upstream_addr })
end

describe("examples/nginx/nginx.conf with real nginx", function()
  local fake, gw, up, nginx, dir, nginx_dir

  -- Every "policy saw" line the gateway logged, oldest first: tg.log's fields are a
  -- nested JSON object, "fields":{...}.
  local function policy_views()
    local views = {}
    for line in gw:log_text():gmatch("[^\n]+") do
      if line:find('"policy saw"', 1, true) then
        local entry = cjson.decode(line)
        views[#views + 1] = type(entry.fields) == "table" and entry.fields or {}
      end
    end
    return views
  end

  local function last_view()
    local views = policy_views()
    return views[#views]
  end

  -- HEAD goes through `curl --head`: support/http.lua's `-X HEAD` would wait for a body.
  local function head(url, headers)
    local args = { "curl", "-sS", "--head", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20" }
    for _, h in ipairs(headers) do args[#args + 1] = "-H"; args[#args + 1] = h end
    args[#args + 1] = url
    for i, a in ipairs(args) do args[i] = proc.quote(a) end
    local out = proc.run(table.concat(args, " "))
    return { status = tonumber(out:match("(%d%d%d)%s*$")) or 0, headers = {}, body = "" }
  end

  local function request(method, path, headers, body)
    local list = { "Host: " .. HOST }
    for _, h in ipairs(headers or {}) do list[#list + 1] = h end
    if method == "HEAD" then return head(nginx.url .. path, list) end
    return http.request{ method = method, url = nginx.url .. path, headers = list, body = body }
  end

  local function bearer(who) return "Authorization: Bearer " .. who.token end

  local function only(list)
    assert.equal(1, #list, "expected exactly one value, got " .. cjson.encode(list))
    return list[1]
  end

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS, sar_rules = SAR_RULES }
    dir = fake.dir
    local policy = dir .. "/nginx-policy.lua"
    proc.write_file(policy, POLICY)
    gw = gateway_mod.start{ fake = fake, args = { "--policy", policy, "--review-timeout", "1s",
      "--forwarded-headers", "nginx" } }
    up = upstream_mod.start{ dir = dir }
    nginx_dir = proc.tmpdir()
    nginx = start_nginx(nginx_dir, (gw.url:gsub("^http://", "")), up.addr)
  end)

  lazy_teardown(function()
    -- nginx first (SIGTERM to the master: a fast shutdown that also ends its worker),
    -- then what it talks to; check only once everything has been stopped.
    if nginx then proc.stop(nginx.handle) end
    if up then up:stop() end
    if gw then gw:stop() end
    if fake then fake:stop() end
    if nginx_dir and not os.getenv("TOKENGATE_KEEP_SPEC_FILES") then proc.run("rm -rf " .. proc.quote(nginx_dir)) end
    if nginx then assert.is_false(proc.alive(nginx.handle), "nginx is still running") end
  end)

  before_each(function()
    fake:config{ latency_ms = 0 }
    up:clear()
  end)

  describe("a valid token the policy allows", function()
    it("reaches the application with tokengate's identity headers, and nothing else of the kind", function()
      local res = request("GET", "/hooks/deliver?x=1&y=two", { bearer(TEAM_A) })
      assert.equal(200, res.status)
      assert.equal("upstream saw GET /hooks/deliver?x=1&y=two\n", res.body)
      local got = up:requests()
      assert.equal(1, #got)
      assert.equal("GET", got[1].method)
      assert.equal("/hooks/deliver?x=1&y=two", got[1].uri)
      assert.equal(TEAM_A.username, only(up:headers(got[1], "X-Remote-User")))
      assert.equal(TEAM_A.uid, only(up:headers(got[1], "X-Remote-Uid")))
      assert.equal("system:serviceaccounts|system:serviceaccounts:team-a|system:authenticated",
        only(up:headers(got[1], "X-Remote-Groups")))
      assert.same({}, up:headers(got[1], "X-Remote-Group"))
      assert.equal(HOST, only(up:headers(got[1], "Host")))
    end)

    it("shows the policy the client's method, path, query and host, never the subrequest's", function()
      assert.equal(200, request("GET", "/hooks/deliver?x=1&y=two", { bearer(TEAM_A) }).status)
      local saw = last_view()
      assert.equal("GET", saw.method)
      assert.equal("/hooks/deliver", saw.path)
      assert.equal("x=1&y=two", saw.query)
      assert.equal(HOST, saw.host)
      -- team-a is allowed only GET/HEAD: the client's POST must reach the policy as POST
      -- although nginx's subrequest to tokengate is a GET.
      up:clear()
      local res = request("POST", "/hooks/deliver", { bearer(TEAM_A) }, "payload")
      assert.equal(403, res.status)
      assert.equal("POST", last_view().method)
      assert.equal(0, #up:requests())
    end)

    it("passes every method through to the policy and the application", function()
      -- team-b goes through a SubjectAccessReview: get and create allowed, the rest denied.
      local expect = { GET = 200, HEAD = 200, POST = 200, PUT = 403, PATCH = 403, DELETE = 403, OPTIONS = 403 }
      for _, method in ipairs({ "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }) do
        up:clear()
        local res = request(method, "/hooks/m", { bearer(TEAM_B) })
        assert.equal(expect[method], res.status, method)
        assert.equal(method, last_view().method, method)
        local got = up:requests()
        if expect[method] == 200 then
          assert.equal(1, #got, method)
          assert.equal(method, got[1].method)
          assert.equal(TEAM_B.username, only(up:headers(got[1], "X-Remote-User")))
        else
          assert.equal(0, #got, method)
        end
      end
    end)

    it("sends the request body to the application and never to tokengate", function()
      local body = string.rep("x", 100000)
      local res = request("POST", "/hooks/upload", { bearer(TEAM_B), "Content-Type: application/octet-stream" }, body)
      assert.equal(200, res.status)
      assert.equal("-", last_view().content_length) -- the subrequest carried no Content-Length
      local got = up:requests()
      assert.equal(1, #got)
      assert.equal(#body, got[1].body_bytes)
    end)
  end)

  describe("a refused request", function()
    it("answers 401 with tokengate's WWW-Authenticate for an unknown token, and the application sees nothing", function()
      local res = request("GET", "/hooks/deliver", { "Authorization: Bearer no-such-token" })
      assert.equal(401, res.status)
      assert.equal('Bearer realm="tokengate"', res.headers["www-authenticate"])
      assert.equal(401, request("GET", "/hooks/deliver").status)
      assert.equal(401, request("POST", "/hooks/deliver", { "Authorization: Basic dXNlcjpwYXNz" }, "x").status)
      assert.equal(0, #up:requests())
    end)

    it("answers 403 when the policy denies, and the application sees nothing", function()
      assert.equal(403, request("GET", "/hooks/deliver", { bearer(KUBE_SYSTEM) }).status)
      assert.equal(403, request("GET", "/admin", { bearer(TEAM_A) }).status)
      assert.equal(403, request("DELETE", "/hooks/deliver", { bearer(TEAM_B) }).status) -- SubjectAccessReview said no
      assert.equal(0, #up:requests())
    end)

    it("answers 503 when the policy fails (tokengate's 500, which nginx alone would turn into 500)", function()
      local res = request("GET", "/boom", { bearer(TEAM_A) })
      assert.equal(503, res.status)
      assert.equal(0, #up:requests())
    end)

    it("answers 503 with tokengate's Retry-After when the API server is too slow", function()
      fake:config{ latency_ms = 3000 } -- beyond the gateway's --review-timeout of 1s
      local res = request("GET", "/hooks/deliver", { bearer(LATE) })
      fake:config{ latency_ms = 0 }
      assert.equal(503, res.status)
      assert.truthy(tonumber(res.headers["retry-after"]), "Retry-After: " .. tostring(res.headers["retry-after"]))
      assert.equal(0, #up:requests())
    end)
  end)

  describe("identity headers a client sends itself", function()
    local SPOOFS = {
      "X-Remote-User: system:admin",
      "x-remote-user: system:admin",
      "X-Remote-Uid: 0",
      "X-Remote-Groups: system:masters",
      "X-Remote-Group: system:masters",
      "X-Remote-Extra-Scopes: cluster-admin",
      "X_Remote_User: system:admin",
    }

    local function assert_no_spoof(got)
      for _, h in ipairs(got.headers) do
        assert.is_nil(h[2]:find("system:admin", 1, true), "spoofed header reached the application: " .. h[1])
        assert.is_nil(h[2]:find("system:masters", 1, true), "spoofed header reached the application: " .. h[1])
        assert.is_nil(h[2]:find("cluster-admin", 1, true), "spoofed header reached the application: " .. h[1])
        assert.is_nil(h[1]:lower():find("x_remote", 1, true), "spoofed header reached the application: " .. h[1])
      end
    end

    it("never reach the application beside a valid token: only tokengate's values do", function()
      local headers = { bearer(TEAM_A) }
      for _, s in ipairs(SPOOFS) do headers[#headers + 1] = s end
      local res = request("GET", "/hooks/deliver", headers)
      assert.equal(200, res.status)
      local got = up:requests()
      assert.equal(1, #got)
      assert_no_spoof(got[1])
      assert.equal(TEAM_A.username, only(up:headers(got[1], "X-Remote-User")))
      assert.equal(TEAM_A.uid, only(up:headers(got[1], "X-Remote-Uid")))
      assert.equal(1, #up:headers(got[1], "X-Remote-Groups"))
      assert.same({}, up:headers(got[1], "X-Remote-Group"))
      assert.same({}, up:headers(got[1], "X-Remote-Extra-Scopes"))
    end)

    it("never reach the application without a token: 401 and nothing forwarded", function()
      local res = request("GET", "/hooks/deliver", SPOOFS)
      assert.equal(401, res.status)
      assert.equal(0, #up:requests())
    end)

    it("never reach the application when tokengate allows without identity (anonymous)", function()
      -- tokengate answers 200 with no X-Remote-* at all: the application must then get
      -- no X-Remote-User, not the client's.
      local res = request("GET", "/public/page", SPOOFS)
      assert.equal(200, res.status)
      local got = up:requests()
      assert.equal(1, #got)
      assert_no_spoof(got[1])
      assert.same({}, up:headers(got[1], "X-Remote-User"))
      assert.same({}, up:headers(got[1], "X-Remote-Groups"))
    end)
  end)

  describe("forwarding headers a client sends itself", function()
    it("cannot change the method or URI the policy judges", function()
      -- With --forwarded-headers nginx tokengate reads only X-Original-Method/-URI and
      -- refuses any other family's header; the example overwrites X-Original-* and clears
      -- X-Forwarded-Method/-Uri and X-Original-URL, so these lies never reach the policy.
      local cases = {
        { "POST", "/hooks/deliver", { "X-Forwarded-Method: GET" } },
        { "GET", "/admin", { "X-Forwarded-Uri: /hooks/deliver" } },
        { "GET", "/admin", { "X-Original-URI: /hooks/deliver" } },
        { "POST", "/hooks/deliver", { "X-Original-Method: GET" } },
        { "GET", "/admin", { "X-Original-URL: http://" .. HOST .. "/hooks/deliver" } },
      }
      for i, c in ipairs(cases) do
        local headers = { bearer(TEAM_A) }
        for _, h in ipairs(c[3]) do headers[#headers + 1] = h end
        local res = request(c[1], c[2], headers)
        assert.equal(403, res.status, "case " .. i)
        local saw = last_view()
        assert.equal(c[1], saw.method, "case " .. i)
        assert.equal(c[2], saw.path, "case " .. i)
      end
      local res = request("GET", "/hooks/deliver", { bearer(TEAM_A), "X-Forwarded-Host: evil.example" })
      assert.equal(200, res.status)
      assert.equal(HOST, last_view().host)
      assert.equal(1, #up:requests())
    end)
  end)

  describe("a URI an application could read as another path", function()
    -- curl --path-as-is: curl would otherwise resolve the dot segments itself.
    local function raw_get(path)
      local out = proc.run("curl -sS --path-as-is -o /dev/null -w '%{http_code}' -H 'Host: " .. HOST .. "' -H "
        .. proc.quote(bearer(TEAM_A)) .. " " .. proc.quote(nginx.url .. path))
      return tonumber(out:match("(%d%d%d)%s*$"))
    end

    it("is refused with 400 before the policy sees it, so /hooks/* cannot reach /admin", function()
      local views = #policy_views()
      for _, path in ipairs({ "/hooks/../admin", "/hooks/./x", "/hooks/..", "/hooks/%2e%2e/admin",
          "/hooks/%2E%2E/admin", "/hooks/..%2fadmin", "/hooks/x%5c..%5cadmin", "/hooks/x\\..\\admin",
          "//hooks/x", "/hooks//x", "/hooks/..?a=1" }) do
        assert.equal(400, raw_get(path), path)
      end
      assert.equal(views, #policy_views())
      assert.equal(0, #up:requests())
    end)

    it("is not confused with dots and slashes in names or in the query", function()
      assert.equal(200, raw_get("/hooks/v1.2/report..final.json?next=/../x&p=a//b"))
      assert.equal("/hooks/v1.2/report..final.json", last_view().path)
      assert.equal(1, #up:requests())
    end)
  end)

  -- Last: it stops the gateway.
  describe("when tokengate itself is down", function()
    it("answers 503 without Retry-After, and the application sees nothing", function()
      gw:stop()
      local res = request("GET", "/hooks/deliver", { bearer(TEAM_A) })
      assert.equal(503, res.status)
      assert.is_nil(res.headers["retry-after"])
      assert.equal(0, #up:requests())
      gw = nil
    end)
  end)
end)
