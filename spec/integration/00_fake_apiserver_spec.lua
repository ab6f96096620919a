-- The fake kube-apiserver itself: every other integration spec trusts it to behave like
-- the captures in shared/testdata/kube-apiserver-1.26, so its behaviour is pinned here,
-- over real TLS with curl.
local fake = require("support.fake")
local http = require("support.http")
local proc = require("support.proc")
local cjson = require("cjson")

local SENDER = {
  token = "sender-token",
  username = "system:serviceaccount:team-a:sender",
  uid = "84aa73c3-2ab6-4096-82bf-62bbbc52c53a",
  groups = { "system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated" },
  extra = { ["authentication.kubernetes.io/pod-name"] = { "hook-pod" } },
}
local HOOKS = {
  token = "hooks-token",
  username = "system:serviceaccount:team-a:hooks",
  audiences = { "https://hooks.example.com", "https://other.example.com" },
}
local RULES = {
  { user = SENDER.username, verb = "create", namespace = "team-a",
    group = "gateway.example.com", resource = "webhooks" },
  { path = "/hooks/*", verb = "post" },
}
local DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"

-- Poll fn until it returns a truthy value; fail after timeout_s.
local function wait_until(what, fn, timeout_s)
  local deadline = proc.now() + (timeout_s or 5)
  while proc.now() < deadline do
    local v = fn()
    if v then return v end
    proc.sleep(0.02)
  end
  error("timed out waiting for " .. what)
end

-- The shell command of one TokenReview with curl, for background or parallel runs; it
-- prints the status code (or what write_out says, a curl -w format).
local function curl_review(f, token, extra_args, write_out)
  local body = f.dir .. "/review-" .. token .. ".json"
  proc.write_file(body, cjson.encode{ kind = "TokenReview", spec = { token = token } })
  return table.concat({ "curl", "-sS", "-o", "/dev/null", "-w", proc.quote(write_out or "%{http_code}\n"),
    "--cacert", proc.quote(f.ca_file), "-H", proc.quote("Authorization: Bearer " .. f.credential),
    "--data-binary", proc.quote("@" .. body), extra_args or "", proc.quote(f.tokenreview_url) }, " ")
end

-- Start a review in the background; its status code lands in the returned file.
local function review_in_background(f, token, extra_args)
  local out = os.tmpname()
  os.execute("(" .. curl_review(f, token, extra_args) .. " >" .. proc.quote(out) .. " 2>/dev/null) &")
  return out
end

local function count(list, value)
  local n = 0
  for _, v in ipairs(list) do if v == value then n = n + 1 end end
  return n
end

describe("fake kube-apiserver", function()
  local f

  setup(function()
    f = fake.start{ tokens = { SENDER, HOOKS }, sar_rules = RULES }
  end)

  teardown(function()
    if f then f:stop() end
  end)

  before_each(function()
    f:reset()
  end)

  describe("TokenReview", function()
    it("authenticates a known token with 201, the user and the token's audiences", function()
      local res = f:review(SENDER.token)
      assert.are.equal(201, res.status)
      assert.are.equal("application/json", res.headers["content-type"])
      local doc = res.json
      assert.are.equal("TokenReview", doc.kind)
      assert.are.equal("authentication.k8s.io/v1", doc.apiVersion)
      assert.are.equal(cjson.null, doc.metadata.creationTimestamp)
      assert.are.equal(SENDER.token, doc.spec.token) -- echoed, like a real server
      assert.is_true(doc.status.authenticated)
      assert.are.same({ username = SENDER.username, uid = SENDER.uid, groups = SENDER.groups,
        extra = SENDER.extra }, doc.status.user)
      assert.are.same({ DEFAULT_AUDIENCE }, doc.status.audiences)
    end)

    it("leaves out extra when the identity has none", function()
      local doc = f:review(HOOKS.token).json
      assert.is_true(doc.status.authenticated)
      assert.is_nil(doc.status.user.extra)
      assert.is_nil(doc.status.user.groups)
    end)

    it("accepts the requested audiences the token has, and only those", function()
      local doc = f:review(HOOKS.token, { audiences = { "https://x.example.com", "https://hooks.example.com" } }).json
      assert.is_true(doc.status.authenticated)
      assert.are.same({ "https://hooks.example.com" }, doc.status.audiences)
    end)

    it("does not authenticate a token for none of the requested audiences", function()
      local res = f:review(SENDER.token, { audiences = { "https://hooks.example.com" } })
      assert.are.equal(201, res.status)
      assert.is_nil(res.json.status.authenticated)
      assert.are.same({}, res.json.status.user)
      assert.are.equal('[invalid bearer token, token audiences ["' .. DEFAULT_AUDIENCE ..
        '"] is invalid for the target audiences ["https://hooks.example.com"]]', res.json.status.error)
    end)

    it("omits authenticated for an unknown token and says why in error", function()
      local res = f:review("no-such-token")
      assert.are.equal(201, res.status)
      assert.is_nil(res.json.status.authenticated)
      assert.is_truthy(res.body:find('"user":{}', 1, true))
      assert.are.equal("invalid bearer token", res.json.status.error)
    end)

    it("answers 400 with a BadRequest Status for an empty token", function()
      local res = f:review("")
      assert.are.equal(400, res.status)
      assert.are.same({ kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
        message = "token is required for TokenReview in authentication", reason = "BadRequest",
        code = 400 }, res.json)
    end)

    it("answers 400 for a body that is not JSON", function()
      local res = http.post(f.tokenreview_url, "{not json", { "Authorization: Bearer " .. f.credential },
        { cacert = f.ca_file })
      assert.are.equal(400, res.status)
      assert.are.equal("BadRequest", cjson.decode(res.body).reason)
    end)

    it("carries the headers of a real API server", function()
      local res = f:review(SENDER.token)
      assert.matches("^%x+%-%x+%-4%x+%-%x+%-%x+$", res.headers["audit-id"])
      assert.are.equal("no-cache, private", res.headers["cache-control"])
      assert.is_truthy(res.headers["x-kubernetes-pf-flowschema-uid"])
      assert.is_truthy(res.headers["x-kubernetes-pf-prioritylevel-uid"])
      assert.are_not.equal(res.headers["audit-id"], f:review(SENDER.token).headers["audit-id"])
    end)

    it("makes a token unauthenticated once the table is reloaded without it (and its success cache expired)", function()
      assert.is_true(f:review(HOOKS.token).json.status.authenticated)
      f:reload({ SENDER }, RULES)
      finally(function()
        f:config{ success_cache_ms = 10000 }
        f:reload({ SENDER, HOOKS }, RULES)
      end)
      -- As kube-apiserver: a success stays cached for success_cache_ms (10 s by default).
      assert.is_true(f:review(HOOKS.token).json.status.authenticated)
      f:config{ success_cache_ms = 0 }
      assert.is_nil(f:review(HOOKS.token).json.status.authenticated)
      assert.is_true(f:review(SENDER.token).json.status.authenticated)
    end)

    it("caches successes per token and audiences, never failures, as kube-apiserver does", function()
      finally(function()
        f:config{ success_cache_ms = 10000 }
        f:reload({ SENDER, HOOKS }, RULES)
      end)
      f:config{ success_cache_ms = 60000 }
      f:reload({ SENDER }, RULES)
      assert.is_nil(f:review(HOOKS.token).json.status.authenticated)  -- unknown: a failure
      f:reload({ SENDER, HOOKS }, RULES)
      assert.is_true(f:review(HOOKS.token).json.status.authenticated) -- the failure was not cached
      f:reload({ SENDER }, RULES)
      assert.is_true(f:review(HOOKS.token).json.status.authenticated) -- the success was
      -- Another set of audiences is another question.
      assert.is_nil(f:review(HOOKS.token, { audiences = { "other.example" } }).json.status.authenticated)
      -- Each success keeps the lifetime it was cached with; a short one runs out.
      f:config{ success_cache_ms = 50 }
      f:reload({ SENDER, HOOKS }, RULES)
      assert.is_true(f:review(HOOKS.token, { audiences = { "https://hooks.example.com" } }).json.status.authenticated)
      f:reload({ SENDER }, RULES)
      proc.sleep(0.2) -- only ever longer than 50 ms, however loaded the machine
      assert.is_nil(f:review(HOOKS.token, { audiences = { "https://hooks.example.com" } }).json.status.authenticated)
    end)
  end)

  describe("issuer discovery", function()
    local function get(path, accept)
      return http.get(f.url .. path, { "Authorization: Bearer " .. f.credential, "Accept: " .. accept },
        { cacert = f.ca_file })
    end

    it("serves the discovery document and the keys as kube-apiserver does, 406 included", function()
      local doc = get("/.well-known/openid-configuration", "application/json")
      assert.are.equal(200, doc.status)
      assert.are.equal("public, max-age=3600", doc.headers["cache-control"])
      local d = cjson.decode(doc.body)
      assert.are.equal("https://kubernetes.default.svc.cluster.local", d.issuer)
      -- The advertised address, not the one clients use: as the real server's.
      assert.are.equal("https://192.0.2.2:6443/openid/v1/jwks", d.jwks_uri)
      local keys = get("/openid/v1/jwks", "application/jwk-set+json")
      assert.are.equal(200, keys.status)
      assert.are.equal("application/jwk-set+json", keys.headers["content-type"])
      local set = cjson.decode(keys.body)
      assert.are.equal(1, #set.keys)
      assert.are.equal("RSA", set.keys[1].kty)
      assert.are.equal("RS256", set.keys[1].alg)
      assert.matches("^[%w_-]+$", set.keys[1].kid)
      -- kube-apiserver refuses application/json for the keys (and the reverse).
      local refused = get("/openid/v1/jwks", "application/json")
      assert.are.equal(406, refused.status)
      assert.are.equal("406: Not Acceptable\n\nAvailable representations: application/jwk-set+json",
        cjson.decode(refused.body).message)
      assert.are.equal(406, get("/.well-known/openid-configuration", "application/jwk-set+json").status)
      assert.are.equal(200, get("/openid/v1/jwks", "*/*").status)
    end)
  end)

  describe("the caller's own credential", function()
    it("is required: 401 Unauthorized Status without it or with a wrong one", function()
      local res = f:review(SENDER.token, { credential = "wrong" })
      assert.are.equal(401, res.status)
      assert.are.same({ kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
        message = "Unauthorized", reason = "Unauthorized", code = 401 }, res.json)
      res = http.post(f.tokenreview_url, "{}", {}, { cacert = f.ca_file })
      assert.are.equal(401, res.status)
    end)

    it("is re-read from its file on every request", function()
      local old = f.credential
      f:set_credential("rotated-credential")
      finally(function() f:set_credential(old) end)
      assert.are.equal(401, f:review(SENDER.token, { credential = old }).status)
      assert.are.equal(201, f:review(SENDER.token).status)
    end)
  end)

  describe("SubjectAccessReview", function()
    local function resource_spec(namespace)
      return { user = SENDER.username, groups = SENDER.groups, resourceAttributes = {
        namespace = namespace, verb = "create", group = "gateway.example.com", resource = "webhooks" } }
    end

    it("allows what a rule matches, naming the rule", function()
      local res = f:sar(resource_spec("team-a"))
      assert.are.equal(201, res.status)
      assert.are.equal("SubjectAccessReview", res.json.kind)
      assert.are.same({ allowed = true, reason = "RBAC: allowed by fake rule 0" }, res.json.status)
      assert.are.equal("team-a", res.json.spec.resourceAttributes.namespace)
    end)

    it("denies what no rule matches by omitting allowed", function()
      local res = f:sar(resource_spec("team-b"))
      assert.are.equal(201, res.status)
      assert.is_truthy(res.body:find('"status":{}', 1, true))
    end)

    it("sends allowed:false when asked to, as the captures show", function()
      f:config{ sar_send_allowed_false = true }
      local res = f:sar(resource_spec("team-b"))
      assert.are.same({ allowed = false }, res.json.status)
    end)

    it("matches non-resource paths by prefix", function()
      local allowed = f:sar{ user = "anyone", nonResourceAttributes = { path = "/hooks/deliver", verb = "post" } }
      assert.are.same({ allowed = true, reason = "RBAC: allowed by fake rule 1" }, allowed.json.status)
      local denied = f:sar{ user = "anyone", nonResourceAttributes = { path = "/metrics", verb = "post" } }
      assert.is_nil(denied.json.status.allowed)
    end)

    it("answers 422 Invalid without resource or non-resource attributes", function()
      local res = f:sar{ user = SENDER.username }
      assert.are.equal(422, res.status)
      assert.are.equal("Invalid", res.json.reason)
      assert.are.equal("spec.resourceAttributes", res.json.details.causes[1].field)
    end)
  end)

  it("answers 404 NotFound for other paths", function()
    local res = http.get(f.url .. "/api/v1/namespaces", { "Authorization: Bearer " .. f.credential },
      { cacert = f.ca_file })
    assert.are.equal(404, res.status)
    assert.are.equal("NotFound", cjson.decode(res.body).reason)
  end)

  describe("knobs", function()
    it("latency_ms delays answers", function()
      f:config{ latency_ms = 400 }
      local res = f:review(SENDER.token)
      assert.are.equal(201, res.status)
      assert.is_true(res.time >= 0.4, "took " .. res.time)
    end)

    it("max_inflight rejects reviews beyond it with APF's plain-text 429", function()
      f:config{ latency_ms = 1500, max_inflight = 2 }
      local a = review_in_background(f, SENDER.token)
      local b = review_in_background(f, SENDER.token)
      wait_until("two reviews in flight", function() return f:stats().inflight == 2 end)
      local res = f:review(SENDER.token)
      assert.are.equal(429, res.status)
      assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
      assert.are.equal("1", res.headers["retry-after"])
      assert.are.equal("Too many requests, please try again later.\n", res.body)
      wait_until("the admitted reviews", function()
        return proc.read_file(a) == "201\n" and proc.read_file(b) == "201\n"
      end)
      os.remove(a); os.remove(b)
      local stats = f:stats()
      assert.are.equal(1, stats.throttled)
      assert.are.equal(2, stats.max_inflight_seen)
    end)

    it("max_inflight holds under a burst of parallel reviews", function()
      f:config{ latency_ms = 1000, max_inflight = 2, retry_after = 7 }
      local line = {}
      for i = 1, 4 do line[i] = curl_review(f, SENDER.token) .. " &" end
      local out = proc.run(table.concat(line, " ") .. " wait")
      local codes = {}
      for code in out:gmatch("%d%d%d") do codes[#codes + 1] = code end
      assert.are.equal(4, #codes, out)
      assert.are.equal(2, count(codes, "201"), out)
      assert.are.equal(2, count(codes, "429"), out)
    end)

    it("garbage_body answers 201 with a body that is not JSON", function()
      f:config{ garbage_body = true }
      local res = f:review(SENDER.token)
      assert.are.equal(201, res.status)
      assert.is_false((pcall(cjson.decode, res.body)))
    end)

    it("truncated_body cuts the JSON in half", function()
      local whole = f:review(SENDER.token).body
      f:config{ truncated_body = true }
      local res = f:review(SENDER.token)
      assert.are.equal(201, res.status)
      assert.are.equal(math.floor(#whole / 2), #res.body)
      assert.is_false((pcall(cjson.decode, res.body)))
    end)

    it("rbac_forbidden answers 403 Forbidden like a caller without RBAC", function()
      f:config{ rbac_forbidden = true }
      local res = f:review(SENDER.token)
      assert.are.equal(403, res.status)
      assert.are.equal("Forbidden", res.json.reason)
      assert.are.same({ group = "authentication.k8s.io", kind = "tokenreviews" }, res.json.details)
    end)

    it("error_rate answers error_status", function()
      f:config{ error_rate = 1, error_status = 503 }
      local res = f:review(SENDER.token)
      assert.are.equal(503, res.status)
      assert.are.equal("ServiceUnavailable", res.json.reason)
      assert.are.equal("1", res.headers["retry-after"])
    end)

    it("close_connection drops the connection without an answer", function()
      f:config{ close_connection = true }
      local res = f:review(SENDER.token)
      assert.are.equal(0, res.status)
      assert.are.equal(1, f:stats().calls)
    end)

    it("hang holds reviews until cleared, and forgets those whose client left", function()
      f:config{ hang = true }
      local held = review_in_background(f, SENDER.token)
      wait_until("the review to be held", function() return f:stats().inflight == 1 end)
      local gave_up = f:review(SENDER.token, { timeout = 0.5 })
      assert.are.equal(0, gave_up.status)
      wait_until("the abandoned review to be forgotten", function() return f:stats().inflight == 1 end)
      assert.are.equal("", proc.read_file(held))
      f:config{ hang = false }
      wait_until("the held review's answer", function() return proc.read_file(held) == "201\n" end)
      os.remove(held)
      assert.are.equal(0, f:stats().inflight)
    end)

    it("rejects unknown knobs and values out of range", function()
      for _, body in ipairs{ '{"no_such_knob":1}', '{"error_rate":2}', '{"hang":"yes"}', "[]" } do
        local res = http.post(f.control_url .. "/control/config", body)
        assert.are.equal(400, res.status, body)
      end
      assert.are.same(0, f:get_config().latency_ms)
    end)
  end)

  describe("connections", function()
    -- One curl process doing n reviews (reusing its connection); returns a list of
    -- "HTTP-VERSION STATUS" strings, one per review.
    local function reviews_with_curl(n, args)
      local line = curl_review(f, SENDER.token, args, "%{http_version} %{http_code}\n")
      for _ = 2, n do
        line = line .. " -o /dev/null " .. proc.quote(f.tokenreview_url)
      end
      local out = proc.run(line)
      local results = {}
      for v in out:gmatch("([%d%.]+ %d%d%d)\n") do results[#results + 1] = v end
      assert.are.equal(n, #results, out)
      return results
    end

    it("speaks HTTP/2 when ALPN offers it and counts one connection for many reviews", function()
      local results = reviews_with_curl(3, "--http2")
      assert.are.same({ "2 201", "2 201", "2 201" }, results,
        "no HTTP/2: was fake-apiserver built without libnghttp2-dev?")
      local stats = f:stats()
      assert.are.equal(3, stats.tokenreview_calls)
      assert.are.equal(1, stats.connections)
      assert.are.equal(1, stats.h2_connections)
    end)

    it("multiplexes concurrent reviews on one HTTP/2 connection", function()
      f:config{ latency_ms = 600 }
      local results = reviews_with_curl(4, "--http2 --parallel")
      assert.are.same({ "2 201", "2 201", "2 201", "2 201" }, results)
      -- Concurrent: the fake saw all 4 in flight at once (on one connection).
      local stats = f:stats()
      assert.are.equal(4, stats.max_inflight_seen)
      assert.are.equal(1, stats.connections)
    end)

    it("keeps HTTP/1.1 connections alive between reviews", function()
      assert.are.same({ "1.1 201", "1.1 201", "1.1 201" }, reviews_with_curl(3, "--http1.1"))
      local stats = f:stats()
      assert.are.equal(1, stats.connections)
      assert.are.equal(0, stats.h2_connections)
    end)

    it("offers only HTTP/1.1 to new connections while the http2 knob is off", function()
      f:config{ http2 = false }
      assert.are.same({ "1.1 201" }, reviews_with_curl(1, "--http2"))
      assert.are.equal(0, f:stats().h2_connections)
    end)
  end)

  describe("stats", function()
    it("counts every call, per kind and per token", function()
      f:reset_stats()
      for _ = 1, 3 do f:review(SENDER.token) end
      f:review("no-such-token")
      f:review(SENDER.token, { credential = "wrong" })
      f:sar{ user = "anyone", nonResourceAttributes = { path = "/x", verb = "get" } }
      f:sar{ user = "anyone", nonResourceAttributes = { path = "/y", verb = "get" } }
      local stats = f:stats()
      assert.are.equal(7, stats.calls)
      assert.are.equal(5, stats.tokenreview_calls)
      assert.are.equal(2, stats.subjectaccessreview_calls)
      assert.are.equal(1, stats.unauthorized)
      assert.are.equal(0, stats.inflight)
      assert.are.equal(7, stats.connections) -- curl opens one connection per call
      assert.are.same({ [SENDER.token] = 4, ["no-such-token"] = 1 }, stats.by_token)
    end)

    it("reset-stats zeroes the counters but keeps the knobs", function()
      f:config{ latency_ms = 10 }
      f:review(SENDER.token)
      f:reset_stats()
      local stats = f:stats()
      assert.are.equal(0, stats.calls)
      assert.are.same({}, stats.by_token)
      assert.are.equal(10, f:get_config().latency_ms)
    end)
  end)
end)

-- ServiceAccounts and Pods: list (pagination), watch (HTTP/1.1 chunked and HTTP/2), the
-- revocation of tokens by deletions, 410 Gone and the control knobs the revocation watch
-- specs (08_revocation_spec.lua) turn. The model: kube-apiserver 1.26's captured lists and
-- watches (list-serviceaccounts-page.json, watch-*.jsonl).
describe("fake kube-apiserver: ServiceAccounts, Pods and watches", function()
  local f
  local POD_UID = "872f8d49-620a-4db7-83b4-39cbb8cf4aed"
  local TOKENS = {
    { token = "tok-sender", username = "system:serviceaccount:team-a:webhook-sender",
      uid = "84aa73c3-2ab6-4096-82bf-62bbbc52c53a" },
    { token = "tok-sender-pod", username = "system:serviceaccount:team-a:webhook-sender",
      uid = "84aa73c3-2ab6-4096-82bf-62bbbc52c53a",
      extra = { ["authentication.kubernetes.io/pod-name"] = { "hook-pod" },
                ["authentication.kubernetes.io/pod-uid"] = { POD_UID } } },
    { token = "tok-gateway", username = "system:serviceaccount:gateway-system:gateway", uid = "uid-gateway" },
    { token = "tok-jane", username = "jane@example.com" },
  }

  -- Runs a watch with curl in the background; returns a handle for watch_result().
  local function watch_in_background(resource, query, args)
    local base = os.tmpname()
    os.execute("(" .. f:watch_command(resource, query, args) .. " >" .. proc.quote(base .. ".out") .. " 2>" ..
      proc.quote(base .. ".err") .. "; echo $? >" .. proc.quote(base .. ".rc.tmp") .. " && mv " ..
      proc.quote(base .. ".rc.tmp") .. " " .. proc.quote(base .. ".rc") .. ") </dev/null >/dev/null 2>&1 &")
    return base
  end

  -- Waits for the background curl to end: { rc, head (status line and headers), events }.
  -- (.rc appears complete, by a rename: a file being written could be read empty.)
  local function watch_result(base, timeout_s)
    wait_until("the watch to end", function() return proc.read_file(base .. ".rc") end, timeout_s or 10)
    local out = proc.read_file(base .. ".out") or ""
    local res = { rc = tonumber(proc.read_file(base .. ".rc")), raw = out, events = {},
      err = proc.read_file(base .. ".err") }
    local head, body = out:match("^(.-)\r\n\r\n(.*)$")
    res.head, res.body = head or out, body or ""
    if res.head:match("^HTTP/%S+ 200") then -- a watch body: one event a line
      for line in res.body:gmatch("[^\n]+") do res.events[#res.events + 1] = cjson.decode(line) end
    end
    for _, suffix in ipairs{ ".out", ".err", ".rc", "" } do os.remove(base .. suffix) end
    return res
  end

  local function wait_watches(n)
    wait_until(n .. " open watches", function() return f:cluster().watches >= n end)
  end

  local function names(events)
    local out = {}
    for _, e in ipairs(events) do
      out[#out + 1] = e.type .. " " .. (e.object.metadata.namespace or "") .. "/" .. (e.object.metadata.name or "")
    end
    return out
  end

  setup(function()
    f = fake.start{ tokens = TOKENS }
  end)

  teardown(function()
    if f then f:stop() end
  end)

  before_each(function()
    f:reset()
  end)

  it("lists the ServiceAccounts and Pods the token table names", function()
    local res = f:list("serviceaccounts")
    assert.are.equal(200, res.status)
    assert.are.equal("ServiceAccountList", res.json.kind)
    assert.is_truthy(tonumber(res.json.metadata.resourceVersion))
    local seen = {}
    for _, item in ipairs(res.json.items) do seen[item.metadata.namespace .. "/" .. item.metadata.name] = item.metadata.uid end
    assert.are.equal("84aa73c3-2ab6-4096-82bf-62bbbc52c53a", seen["team-a/webhook-sender"])
    assert.are.equal("uid-gateway", seen["gateway-system/gateway"])
    local pods = f:list("pods").json
    assert.are.equal("PodList", pods.kind)
    assert.are.equal(1, #pods.items)
    assert.are.equal(POD_UID, pods.items[1].metadata.uid)
    assert.are.equal("hook-pod", pods.items[1].metadata.name)
    assert.are.equal("webhook-sender", pods.items[1].spec.serviceAccountName)
  end)

  it("requires the caller's credential for lists and watches", function()
    assert.are.equal(401, f:list("serviceaccounts", nil, { credential = "wrong" }).status)
    local out = proc.run((f:watch_command("pods", "", "--max-time 2"):gsub("Bearer [^']*", "Bearer wrong")))
    assert.matches("HTTP/%S+ 401", out)
  end)

  it("pages lists with limit and continue, in key order, as a real API server", function()
    for i = 1, 5 do f:create_serviceaccount("paging", "sa-" .. i) end
    local all = f:list("serviceaccounts").json
    local got, pages, query = {}, 0, "limit=2"
    local rv
    repeat
      local page = f:list("serviceaccounts", query).json
      pages = pages + 1
      rv = rv or page.metadata.resourceVersion
      assert.are.equal(rv, page.metadata.resourceVersion) -- every page names the first's
      assert.is_true(#page.items <= 2)
      for _, item in ipairs(page.items) do got[#got + 1] = item.metadata.namespace .. "/" .. item.metadata.name end
      if page.metadata.continue then
        assert.is_truthy(page.metadata.remainingItemCount)
        query = "limit=2&continue=" .. page.metadata.continue
      end
    until not page.metadata.continue
    local want = {}
    for _, item in ipairs(all.items) do want[#want + 1] = item.metadata.namespace .. "/" .. item.metadata.name end
    assert.are.same(want, got)
    assert.are.equal(math.ceil(#want / 2), pages)
    local sorted = { unpack(want) }
    table.sort(sorted)
    assert.are.same(sorted, want)
  end)

  for _, proto in ipairs{ { "HTTP/1.1", "--http1.1" }, { "HTTP/2", "--http2" } } do
    it("streams watch events over " .. proto[1] .. ", one JSON object a line", function()
      local rv = f:list("serviceaccounts").json.metadata.resourceVersion
      local w = watch_in_background("serviceaccounts", "resourceVersion=" .. rv .. "&allowWatchBookmarks=true",
        proto[2] .. " --max-time 3")
      wait_watches(1)
      local created = f:create_serviceaccount("team-w", "watch-demo")
      assert.are.equal(1, f:send_bookmarks())
      local deleted = f:delete_serviceaccount("team-w", "watch-demo").deleted
      local res = watch_result(w)
      assert.are.equal(28, res.rc) -- curl's --max-time: the watch was still open
      if proto[1] == "HTTP/1.1" then
        assert.matches("^HTTP/1.1 200", res.head)
        assert.matches("Transfer%-Encoding: chunked", res.head)
      else
        assert.matches("^HTTP/2 200", res.head)
      end
      assert.matches("content%-type: application/json", res.head:lower())
      assert.are.same({ "ADDED team-w/watch-demo", "BOOKMARK /", "DELETED team-w/watch-demo" }, names(res.events))
      assert.are.equal(created.metadata.uid, res.events[3].object.metadata.uid)
      assert.are.equal("ServiceAccount", res.events[3].object.kind)
      assert.are.equal(deleted.metadata.resourceVersion, res.events[3].object.metadata.resourceVersion)
      local bookmark_rv = tonumber(res.events[2].object.metadata.resourceVersion)
      assert.is_true(bookmark_rv >= tonumber(res.events[1].object.metadata.resourceVersion))
      assert.is_true(tonumber(res.events[3].object.metadata.resourceVersion) > bookmark_rv)
    end)
  end

  it("replays what happened after a resourceVersion, and everything without one", function()
    local rv = f:list("serviceaccounts").json.metadata.resourceVersion
    f:create_serviceaccount("team-r", "later")
    f:delete_serviceaccount("team-r", "later")
    local res = watch_result(watch_in_background("serviceaccounts", "resourceVersion=" .. rv, "--max-time 1"))
    assert.are.same({ "ADDED team-r/later", "DELETED team-r/later" }, names(res.events))
    res = watch_result(watch_in_background("serviceaccounts", "", "--max-time 1"))
    local n = #f:list("serviceaccounts").json.items
    assert.are.equal(n, #res.events)
    for _, e in ipairs(res.events) do assert.are.equal("ADDED", e.type) end
  end)

  it("revokes a deleted ServiceAccount's tokens, and a deleted Pod's bound tokens only", function()
    f:create_serviceaccount("team-d", "doomed", "uid-doomed")
    f:create_pod{ namespace = "team-d", name = "doomed-pod", uid = "uid-doomed-pod", serviceaccount = "doomed" }
    f:reload{ TOKENS[1], TOKENS[2], TOKENS[3], TOKENS[4],
      { token = "tok-doomed", username = "system:serviceaccount:team-d:doomed", uid = "uid-doomed" },
      { token = "tok-doomed-pod", username = "system:serviceaccount:team-d:doomed", uid = "uid-doomed",
        extra = { ["authentication.kubernetes.io/pod-name"] = { "doomed-pod" },
                  ["authentication.kubernetes.io/pod-uid"] = { "uid-doomed-pod" } } } }
    assert.is_true(f:review("tok-doomed").json.status.authenticated)
    assert.is_true(f:review("tok-doomed-pod").json.status.authenticated)

    local rv = f:list("pods").json.metadata.resourceVersion
    f:delete_pod("team-d", "doomed-pod")
    -- The success cache still vouches for both tokens (as kube-apiserver's does for ~10 s);
    -- with it off, the deletion shows.
    assert.is_true(f:review("tok-doomed-pod").json.status.authenticated)
    f:config{ success_cache_ms = 0 }
    finally(function() f:config{ success_cache_ms = 10000 } end)
    local status = f:review("tok-doomed-pod").json.status
    assert.is_nil(status.authenticated)
    assert.are.equal("[invalid bearer token, service account token has been invalidated]", status.error)
    assert.is_true(f:review("tok-doomed").json.status.authenticated)
    -- As the capture of a force-deleted pod: MODIFIED (deletionTimestamp), then DELETED.
    local res = watch_result(watch_in_background("pods", "resourceVersion=" .. rv, "--max-time 1"))
    assert.are.same({ "MODIFIED team-d/doomed-pod", "DELETED team-d/doomed-pod" }, names(res.events))
    assert.is_truthy(res.events[1].object.metadata.deletionTimestamp)

    f:delete_serviceaccount("team-d", "doomed")
    status = f:review("tok-doomed").json.status
    assert.is_nil(status.authenticated)
    assert.are.equal('[invalid bearer token, serviceaccounts "doomed" not found]', status.error)
    -- Recreated under the same name, it is another object: the old tokens stay revoked.
    f:create_serviceaccount("team-d", "doomed", "uid-doomed-2")
    assert.is_nil(f:review("tok-doomed").json.status.authenticated)
    -- A reload does not bring deleted objects back for tokens the table already had.
    f:reload()
    assert.is_nil(f:review("tok-doomed-pod").json.status.authenticated)
    assert.is_true(f:review("tok-jane").json.status.authenticated) -- not a ServiceAccount: never revoked
  end)

  it("answers a compacted resourceVersion with an ERROR 410 event, or HTTP 410 with watch_gone_http", function()
    local rv = f:list("serviceaccounts").json.metadata.resourceVersion
    f:compact()
    local res = watch_result(watch_in_background("serviceaccounts", "resourceVersion=" .. rv, "--max-time 3"))
    assert.are.equal(0, res.rc) -- the server ended the body after the error
    assert.matches("^HTTP/%S+ 200", res.head)
    assert.are.equal(1, #res.events)
    assert.are.equal("ERROR", res.events[1].type)
    assert.are.same({ "Status", 410, "Expired" },
      { res.events[1].object.kind, res.events[1].object.code, res.events[1].object.reason })
    assert.matches("too old resource version: " .. rv, res.events[1].object.message)

    f:config{ watch_gone_http = true }
    res = watch_result(watch_in_background("serviceaccounts", "resourceVersion=" .. rv, "--max-time 3"))
    assert.matches("^HTTP/%S+ 410", res.head)
    assert.are.equal("Expired", cjson.decode(res.body).reason)
    -- The next list's resourceVersion is valid again.
    local fresh = f:list("serviceaccounts").json.metadata.resourceVersion
    res = watch_result(watch_in_background("serviceaccounts", "resourceVersion=" .. fresh, "--max-time 1"))
    assert.are.equal(28, res.rc)
    assert.matches("^HTTP/%S+ 200", res.head)
  end)

  it("answers an expired continue token with 410", function()
    f:create_serviceaccount("team-c", "one")
    f:create_serviceaccount("team-c", "two")
    local page = f:list("serviceaccounts", "limit=1").json
    f:compact()
    local res = f:list("serviceaccounts", "limit=1&continue=" .. page.metadata.continue)
    assert.are.equal(410, res.status)
    assert.are.equal("Expired", res.json.reason)
  end)

  it("expires, drops and ends open watches on demand", function()
    local rv = f:list("serviceaccounts").json.metadata.resourceVersion
    local a = watch_in_background("serviceaccounts", "resourceVersion=" .. rv, "--http1.1 --max-time 5")
    local b = watch_in_background("pods", "resourceVersion=" .. rv, "--http2 --max-time 5")
    wait_watches(2)
    assert.are.equal(1, f:expire_watches{ resource = "serviceaccounts" })
    local res = watch_result(a)
    assert.are.equal(0, res.rc)
    assert.are.equal("ERROR", res.events[#res.events].type)
    assert.are.equal(410, res.events[#res.events].object.code)
    assert.are.equal(1, f:cluster().watches)
    assert.are.equal(1, f:drop_watches())
    res = watch_result(b)
    assert.are_not.equal(0, res.rc) -- the connection was cut mid-body
    assert.are_not.equal(28, res.rc)

    local c = watch_in_background("pods", "", "--http1.1 --max-time 5")
    wait_watches(1)
    assert.are.equal(1, f:drop_watches{ graceful = true })
    assert.are.equal(0, watch_result(c).rc) -- a clean end of the body

    local d = watch_in_background("pods", "timeoutSeconds=1", "--http2 --max-time 5")
    res = watch_result(d)
    assert.are.equal(0, res.rc) -- timeoutSeconds: the server ends it
  end)

  it("answers lists and watches with watch_error_status while it is set", function()
    f:config{ watch_error_status = 403 }
    local res = f:list("pods")
    assert.are.equal(403, res.status)
    assert.matches('cannot list resource "pods"', res.json.message)
    local out = proc.run(f:watch_command("serviceaccounts", "", "--max-time 2"))
    assert.matches("HTTP/%S+ 403", out)
    assert.matches('cannot watch resource', out)
    f:config{ watch_error_status = 0 }
    assert.are.equal(200, f:list("pods").status)
    local stats = f:stats()
    assert.is_true(stats.list_calls >= 2)
    assert.is_true(stats.watch_calls >= 1)
  end)

  it("bulk-creates ServiceAccounts and sends them to open watches", function()
    local rv = f:list("serviceaccounts").json.metadata.resourceVersion
    local w = watch_in_background("serviceaccounts", "resourceVersion=" .. rv, "--max-time 3")
    wait_watches(1)
    local before = f:cluster().serviceaccounts
    local res = f:bulk_create_serviceaccounts(2000, "bulk-test")
    assert.are.equal(2000, res.created)
    assert.are.equal(before + 2000, res.serviceaccounts)
    assert.are.equal(2000, #watch_result(w).events)
    local page = f:list("serviceaccounts", "limit=500").json
    assert.are.equal(500, #page.items)
    assert.are.equal(before + 2000 - 500, page.metadata.remainingItemCount)
  end)

  it("restarts on the same address, with resourceVersions older than the restart too old", function()
    local rv = f:list("serviceaccounts").json.metadata.resourceVersion
    local addr = f.addr
    f:restart()
    assert.are.equal(addr, f.addr)
    local res = watch_result(watch_in_background("serviceaccounts", "resourceVersion=" .. rv, "--max-time 3"))
    assert.are.equal(410, res.events[1].object.code)
    local fresh = f:list("serviceaccounts").json.metadata.resourceVersion
    assert.is_true(tonumber(fresh) > tonumber(rv))
    assert.is_true(f:review("tok-sender").json.status.authenticated)
  end)
end)
