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

    it("makes a token unauthenticated once the table is reloaded without it", function()
      assert.is_true(f:review(HOOKS.token).json.status.authenticated)
      f:reload({ SENDER }, RULES)
      finally(function() f:reload({ SENDER, HOOKS }, RULES) end)
      assert.is_nil(f:review(HOOKS.token).json.status.authenticated)
      assert.is_true(f:review(SENDER.token).json.status.authenticated)
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
      local started = proc.now()
      local results = reviews_with_curl(4, "--http2 --parallel")
      assert.are.same({ "2 201", "2 201", "2 201", "2 201" }, results)
      assert.is_true(proc.now() - started < 2.0, "the reviews did not run concurrently")
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
