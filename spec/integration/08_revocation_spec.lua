-- Integration: the revocation watch (--watch-revocations, --watch-pods; docs/REVOCATION.md)
-- of the real tokengate binary against the fake API server's lists and watches. What is
-- asserted is what a client sees (401 once the ServiceAccount or Pod is gone), what the
-- API server sees (no extra TokenReview for identities that stay cached) and the gateway's
-- own metrics, /readyz detail and memory.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")

local POD_UID_KEY = "authentication.kubernetes.io/pod-uid"
local POD_NAME_KEY = "authentication.kubernetes.io/pod-name"

-- A ServiceAccount token; pod: { name, uid } for a token bound to that pod.
local function sa(ns, name, token, pod)
  local t = { token = token, username = "system:serviceaccount:" .. ns .. ":" .. name,
    uid = "uid-" .. ns .. "-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:" .. ns, "system:authenticated" } }
  if pod then t.extra = { [POD_NAME_KEY] = { pod[1] }, [POD_UID_KEY] = { pod[2] } } end
  return t
end

-- Every test deletes its own ServiceAccounts, so that the order of tests does not matter.
local TOKENS = {
  sa("team-a", "survivor", "tok-survivor"),
  sa("team-b", "bystander", "tok-bystander"),
  sa("team-d", "doomed", "tok-doomed"),
  sa("team-d", "doomed", "tok-doomed-2"),                                   -- a second token of it
  sa("team-p", "runner", "tok-runner"),                                     -- not pod-bound
  sa("team-p", "runner", "tok-runner-pod-1", { "runner-1", "uid-runner-1" }),
  sa("team-p", "runner", "tok-runner-pod-2", { "runner-2", "uid-runner-2" }),
  sa("team-r", "after-drop", "tok-after-drop"),
  sa("team-r", "after-drop-h1", "tok-after-drop-h1"),
  sa("team-r", "after-expire", "tok-after-expire"),
  sa("team-r", "after-gone", "tok-after-gone"),
  sa("team-r", "after-restart", "tok-after-restart"),
  sa("team-g", "gap", "tok-gap"),
  sa("team-t", "ttl", "tok-ttl"),
  { token = "tok-jane", username = "jane@example.com", uid = "uid-jane" },
}

local SA_UP = 'gateway_revocation_watch_up{resource="serviceaccounts"}'
local POD_UP = 'gateway_revocation_watch_up{resource="pods"}'
local function events(resource, type)
  return string.format('gateway_revocation_watch_events_total{resource="%s",type="%s"}', resource, type)
end
local function evictions(cause) return string.format('gateway_revocation_evictions_total{cause="%s"}', cause) end
local function relists(resource) return string.format('gateway_revocation_watch_relists_total{resource="%s"}', resource) end
local function errors(resource, reason)
  return string.format('gateway_revocation_watch_errors_total{resource="%s",reason="%s"}', resource, reason)
end

local function wait_until(what, fn, timeout_s)
  local deadline = proc.now() + (timeout_s or 30)
  while proc.now() < deadline do
    local v = fn()
    if v then return v end
    proc.sleep(0.05)
  end
  error("timed out waiting for " .. what, 2)
end

-- Waits until token gets 401 from the gateway. The identities of these specs are cached for
-- 5 minutes, so a 401 within this wait can only come from the revocation watch evicting
-- them (the callers also check the eviction counters): that is the behaviour asserted, not
-- how many milliseconds the event took to arrive on a busy machine.
local function wait_refused(gw, token)
  wait_until(token .. " to be refused", function() return gw:request(token).status == 401 end, 30)
end

-- Both watches in sync (only serviceaccounts when pods is false).
local function wait_watching(gw, pods, timeout_s)
  wait_until("the revocation watch to be up", function()
    local m = gw:metrics()
    return m[SA_UP] == 1 and (pods == false or m[POD_UP] == 1)
  end, timeout_s or 40)
end

-- Requests each token once so that it is cached; all must be allowed.
local function warm(gw, tokens)
  for _, t in ipairs(tokens) do assert.are.equal(200, gw:request(t).status, t) end
end

-- TokenReviews the fake received for each token since the last reset_stats.
local function reviews_of(fake, token) return fake:stats().by_token[token] or 0 end

local function rss_bytes(pid)
  local status = proc.read_file("/proc/" .. pid .. "/status") or ""
  local kb = tonumber(status:match("VmRSS:%s*(%d+)%s*kB"))
  return kb and kb * 1024
end

describe("tokengate revocation watch", function()
  local fake, gw

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS }
    gw = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--cache-ttl", "5m",
      "--watch-revocations", "--watch-pods" } }
    wait_watching(gw)
  end)

  lazy_teardown(function()
    if gw then
      local log = gw:log_text()
      gw:stop()
      for _, entry in ipairs(TOKENS) do
        assert.is_nil(log:find(entry.token, 1, true), "token leaked into the gateway log")
      end
      assert.is_nil(log:find(fake.credential, 1, true), "the gateway's credential leaked into its log")
    end
    if fake then fake:stop() end
  end)

  before_each(function()
    fake:config{ watch_error_status = 0, watch_gone_http = false, http2 = true }
    wait_watching(gw)
  end)

  describe("when it is up", function()
    it("lists then watches ServiceAccounts and Pods, and says so in metrics and /readyz", function()
      local m = gw:metrics()
      assert.are.equal(1, m[SA_UP])
      assert.are.equal(1, m[POD_UP])
      assert.are.equal(2, m['gateway_revocation_watch_state{resource="serviceaccounts"}'])
      assert.are.equal(2, m['gateway_revocation_watch_state{resource="pods"}'])
      for _, name in ipairs{ events("serviceaccounts", "ADDED"), events("serviceaccounts", "DELETED"),
          events("pods", "BOOKMARK"), evictions("serviceaccount_deleted"), evictions("pod_deleted"),
          relists("serviceaccounts"), relists("pods"),
          'gateway_revocation_watch_last_event_age_seconds{resource="serviceaccounts"}' } do
        assert.is_not_nil(m[name], name .. " is missing from /metrics")
      end
      local stats = fake:stats()
      assert.is_true(stats.list_calls >= 2)  -- one list of each resource at least
      assert.is_true(stats.watch_calls >= 2)
      local ready = http.get(gw.admin_url .. "/readyz")
      assert.are.equal(200, ready.status)
      assert.matches("revocation watch", ready.body)
      assert.matches("serviceaccounts watching", ready.body)
      assert.matches("pods watching", ready.body)
    end)

    it("counts bookmarks and keeps the time since the last event", function()
      local before = gw:metrics()
      local sent = proc.now()
      assert.is_true(fake:send_bookmarks() >= 2)
      wait_until("the bookmarks to be counted", function()
        local m = gw:metrics()
        return m[events("serviceaccounts", "BOOKMARK")] > before[events("serviceaccounts", "BOOKMARK")] and
          m[events("pods", "BOOKMARK")] > before[events("pods", "BOOKMARK")]
      end, 30)
      -- The age counts from the bookmark, which arrived after it was sent: it cannot exceed
      -- the time since then (plus the metric's rounding), however slow the machine is.
      local age = gw:metric('gateway_revocation_watch_last_event_age_seconds{resource="pods"}')
      assert.is_true(age <= proc.now() - sent + 0.01, "age " .. age .. " s")
    end)
  end)

  describe("when a ServiceAccount is deleted", function()
    it("refuses its cached tokens long before their TTL and keeps every other identity cached", function()
      local others = { "tok-survivor", "tok-bystander", "tok-runner", "tok-jane" }
      warm(gw, { "tok-doomed", "tok-doomed-2" })
      warm(gw, others)
      fake:reset_stats()
      local evicted = gw:metric(evictions("serviceaccount_deleted"))

      fake:delete_serviceaccount("team-d", "doomed")
      wait_refused(gw, "tok-doomed")
      assert.are.equal(401, gw:request("tok-doomed-2").status)
      assert.are.equal(1, reviews_of(fake, "tok-doomed"))   -- evicted, reviewed again, refused
      assert.is_true(gw:metric(evictions("serviceaccount_deleted")) >= evicted + 2)

      -- The others are still answered from the cache: no API call for any of them.
      warm(gw, others)
      for _, t in ipairs(others) do assert.are.equal(0, reviews_of(fake, t), t) end
    end)
  end)

  describe("when a Pod is deleted", function()
    it("refuses only the tokens bound to that pod", function()
      warm(gw, { "tok-runner", "tok-runner-pod-1", "tok-runner-pod-2" })
      fake:reset_stats()
      local evicted = gw:metric(evictions("pod_deleted"))

      fake:delete_pod("team-p", "runner-1")
      wait_refused(gw, "tok-runner-pod-1")
      assert.is_true(gw:metric(evictions("pod_deleted")) >= evicted + 1)
      warm(gw, { "tok-runner", "tok-runner-pod-2" })
      assert.are.equal(0, reviews_of(fake, "tok-runner"))
      assert.are.equal(0, reviews_of(fake, "tok-runner-pod-2"))
    end)
  end)

  describe("when the watch stream drops", function()
    it("resumes by itself and sees later deletions", function()
      warm(gw, { "tok-after-drop", "tok-survivor" })
      local errs = gw:metric(errors("serviceaccounts", "network"))
      assert.is_true(fake:drop_watches() >= 2)
      wait_until("the drop to be noticed", function()
        return gw:metric(errors("serviceaccounts", "network")) > errs
      end, 30)
      wait_watching(gw)
      fake:reset_stats()
      local evicted = gw:metric(evictions("serviceaccount_deleted"))
      fake:delete_serviceaccount("team-r", "after-drop")
      wait_refused(gw, "tok-after-drop")
      assert.is_true(gw:metric(evictions("serviceaccount_deleted")) > evicted)
      warm(gw, { "tok-survivor" })
      assert.are.equal(0, reviews_of(fake, "tok-survivor"))
    end)

    it("resumes over HTTP/1.1 (a chunked body) as well", function()
      fake:config{ http2 = false } -- new connections only speak HTTP/1.1
      warm(gw, { "tok-after-drop-h1" })
      fake:reset_stats()
      fake:drop_watches()
      wait_until("the watches to reconnect over HTTP/1.1", function()
        return gw:metric(SA_UP) == 1 and fake:cluster().watches >= 2 and fake:stats().h2_connections == 0
      end, 40)
      local evicted = gw:metric(evictions("serviceaccount_deleted"))
      fake:delete_serviceaccount("team-r", "after-drop-h1")
      wait_refused(gw, "tok-after-drop-h1")
      assert.is_true(gw:metric(evictions("serviceaccount_deleted")) > evicted)
    end)
  end)

  describe("when the resourceVersion expires", function()
    it("relists after an ERROR 410 event and sees later deletions", function()
      warm(gw, { "tok-after-expire", "tok-survivor" })
      local before = gw:metrics()
      assert.is_true(fake:expire_watches() >= 2)
      wait_until("the relists", function()
        local m = gw:metrics()
        return m[relists("serviceaccounts")] > before[relists("serviceaccounts")] and
          m[relists("pods")] > before[relists("pods")] and m[SA_UP] == 1 and m[POD_UP] == 1
      end, 30)
      assert.is_true(gw:metric(errors("serviceaccounts", "expired")) > before[errors("serviceaccounts", "expired")])
      fake:reset_stats()
      local evicted = gw:metric(evictions("serviceaccount_deleted"))
      fake:delete_serviceaccount("team-r", "after-expire")
      wait_refused(gw, "tok-after-expire")
      assert.is_true(gw:metric(evictions("serviceaccount_deleted")) > evicted)
      warm(gw, { "tok-survivor" })
      assert.are.equal(0, reviews_of(fake, "tok-survivor")) -- a relist does not flush the cache
    end)

    it("relists after HTTP 410 Gone on the watch request", function()
      warm(gw, { "tok-after-gone" })
      local before = gw:metric(relists("serviceaccounts"))
      fake:config{ watch_gone_http = true }
      fake:compact()      -- every resourceVersion the gateway has is now too old...
      fake:drop_watches() -- ...and it has to reconnect with one
      wait_until("a relist", function()
        return gw:metric(relists("serviceaccounts")) > before and gw:metric(SA_UP) == 1
      end, 40)
      local evicted = gw:metric(evictions("serviceaccount_deleted"))
      fake:delete_serviceaccount("team-r", "after-gone")
      wait_refused(gw, "tok-after-gone")
      assert.is_true(gw:metric(evictions("serviceaccount_deleted")) > evicted)
    end)
  end)

  describe("while the watch is down", function()
    it("says so in a metric and /readyz, stays ready, and catches up on deletions it missed", function()
      warm(gw, { "tok-gap", "tok-survivor" })
      fake:config{ watch_error_status = 503 } -- lists and watches fail; reviews still work
      fake:drop_watches()
      wait_until("the watch to be down", function() return gw:metric(SA_UP) == 0 end, 30)
      local ready = http.get(gw.admin_url .. "/readyz")
      assert.are.equal(200, ready.status) -- down watch: normal TTLs, not unready
      assert.matches("normal TTL", ready.body)
      wait_until("a 503 to be counted", function() return gw:metric(errors("serviceaccounts", "http")) > 0 end, 30)

      -- Deleted while nobody watches: the cached identity lives on (its normal TTL)...
      fake:delete_serviceaccount("team-g", "gap")
      assert.are.equal(200, gw:request("tok-gap").status)
      -- ...until the watch is back. The history is gone (410), so it relists, and the list
      -- no longer has the ServiceAccount of a cached identity.
      fake:compact()
      local missing = gw:metric(evictions("serviceaccount_missing_at_relist"))
      fake:config{ watch_error_status = 0 }
      wait_watching(gw, true, 40)
      assert.are.equal(401, gw:request("tok-gap").status)
      assert.is_true(gw:metric(evictions("serviceaccount_missing_at_relist")) > missing)
      fake:reset_stats()
      warm(gw, { "tok-survivor" })
      assert.are.equal(0, reviews_of(fake, "tok-survivor"))
    end)

    it("logs plainly when the gateway may not list or watch (RBAC)", function()
      fake:config{ watch_error_status = 403 }
      fake:drop_watches()
      wait_until("the watch to be down", function() return gw:metric(SA_UP) == 0 end, 30)
      wait_until("the RBAC hint in the log", function()
        return gw:log_text():find("list and watch", 1, true)
      end, 30)
      fake:config{ watch_error_status = 0 }
      wait_watching(gw, true, 40)
    end)
  end)

  describe("when the API server restarts", function()
    it("resumes by itself (a relist: its resourceVersions are new) and sees later deletions", function()
      warm(gw, { "tok-after-restart" })
      local before = gw:metric(relists("serviceaccounts"))
      fake:restart(0.5)
      wait_until("the watch to be back after the restart", function()
        return gw:metric(relists("serviceaccounts")) > before and gw:metric(SA_UP) == 1 and gw:metric(POD_UP) == 1
      end, 40)
      local evicted = gw:metric(evictions("serviceaccount_deleted"))
      fake:delete_serviceaccount("team-r", "after-restart")
      wait_refused(gw, "tok-after-restart")
      assert.is_true(gw:metric(evictions("serviceaccount_deleted")) > evicted)
    end)
  end)
end)

describe("tokengate revocation watch and TTLs", function()
  local fake, gw

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS }
    -- 4 s: two requests in a row fall within it even on a busy machine.
    gw = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--cache-ttl", "4s",
      "--watch-revocations" } }
    wait_watching(gw, false)
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if fake then fake:stop() end
  end)

  it("watches ServiceAccounts only without --watch-pods", function()
    local m = gw:metrics()
    assert.are.equal(1, m[SA_UP])
    assert.is_nil(m[POD_UP])
  end)

  it("never keeps an entry past its normal TTL while the watch is down", function()
    fake:config{ watch_error_status = 503 }
    fake:drop_watches()
    wait_until("the watch to be down", function() return gw:metric(SA_UP) == 0 end, 30)
    fake:reset_stats()
    warm(gw, { "tok-ttl" })
    warm(gw, { "tok-ttl" })
    assert.are.equal(1, reviews_of(fake, "tok-ttl")) -- the second was a cache hit
    proc.sleep(4.5)                                   -- past --cache-ttl
    warm(gw, { "tok-ttl" })
    assert.are.equal(2, reviews_of(fake, "tok-ttl")) -- expired at its TTL: reviewed again
    fake:config{ watch_error_status = 0 }
    wait_watching(gw, false, 40)
  end)
end)

describe("tokengate revocation watch and SubjectAccessReviews", function()
  local fake, gw

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS,
      sar_rules = { { user = "*", verb = "create", group = "hooks.example.com", resource = "deliveries" } } }
    local policy = fake.dir .. "/sar-policy.lua"
    proc.write_file(policy, [[
      local tg = require("tokengate")
      return {
        authorize = function(req, user)
          return tg.sar{ namespace = user.namespace or "default", verb = "create",
                         group = "hooks.example.com", resource = "deliveries" }
        end,
      }
    ]])
    gw = gateway_mod.start{ fake = fake, args = { "--policy", policy, "--cache-ttl", "5m",
      "--sar-allowed-ttl", "5m", "--watch-revocations" } }
    wait_watching(gw, false)
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if fake then fake:stop() end
  end)

  it("evicts the SubjectAccessReview verdicts of a deleted ServiceAccount's identities too", function()
    warm(gw, { "tok-doomed", "tok-survivor" })
    local sar_entries = gw:metric("gateway_subjectaccessreview_cache_entries")
    assert.is_true(sar_entries >= 2)
    fake:reset_stats()
    local evicted = gw:metric(evictions("serviceaccount_deleted"))
    fake:delete_serviceaccount("team-d", "doomed")
    wait_until("the SubjectAccessReview entry to go", function()
      return gw:metric("gateway_subjectaccessreview_cache_entries") == sar_entries - 1
    end, 30)
    wait_refused(gw, "tok-doomed")
    assert.is_true(gw:metric(evictions("serviceaccount_deleted")) > evicted)
    warm(gw, { "tok-survivor" })
    local stats = fake:stats()
    assert.are.equal(0, stats.subjectaccessreview_calls) -- the survivor's verdict is still cached
    assert.are.equal(0, reviews_of(fake, "tok-survivor"))
  end)
end)

describe("tokengate revocation watch with 100 000 ServiceAccounts", function()
  local fake, gw
  local N = 100000

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS }
    gw = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--watch-revocations" } }
    wait_watching(gw, false)
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if fake then fake:stop() end
  end)

  it("keeps its memory bounded while it watches them being created and lists them all", function()
    if gw.wrapped then pending("RSS is the wrapper's under $TOKENGATE_GATEWAY_WRAPPER") return end
    warm(gw, { "tok-survivor", "tok-bystander", "tok-jane" })
    local rss0 = rss_bytes(gw:pid())
    assert.is_truthy(rss0)
    local metric0 = gw:metric("process_resident_memory_bytes")
    assert.is_true(metric0 > 0)

    -- 100 000 ADDED events on the open watch...
    local added0 = gw:metric(events("serviceaccounts", "ADDED"))
    assert.are.equal(N, fake:bulk_create_serviceaccounts(N).created)
    wait_until("the ADDED events to be read", function()
      return gw:metric(events("serviceaccounts", "ADDED")) >= added0 + N
    end, 120)
    -- ...then a list of all of them (410: start over), in pages.
    fake:reset_stats()
    local relists0 = gw:metric(relists("serviceaccounts"))
    fake:expire_watches()
    wait_until("the relist of 100 000 ServiceAccounts", function()
      return gw:metric(relists("serviceaccounts")) > relists0 and gw:metric(SA_UP) == 1
    end, 120)
    local pages = fake:stats().list_calls
    assert.is_true(pages >= N / 1000, "the list was not paginated (" .. pages .. " calls)")
    assert.is_true(pages <= N / 100, "pages far smaller than needed (" .. pages .. " calls)")

    -- The gateway keeps no copy of them: its RSS grew by far less than one copy would take
    -- (100 000 ServiceAccounts are ~18 MB as JSON, far more as parsed objects).
    local rss1 = rss_bytes(gw:pid())
    local growth = rss1 - rss0
    print(string.format("[100k ServiceAccounts] %d list pages; RSS %.1f -> %.1f MiB", pages, rss0 / 1048576,
      rss1 / 1048576))
    -- AddressSanitizer's quarantine keeps freed memory resident (hundreds of MiB here):
    -- there RSS says nothing about what the gateway keeps, so only the normal build checks it.
    local ldd = proc.run("ldd " .. proc.quote(proc.build_path("core/tokengate")))
    local sanitized = ldd:find("libasan", 1, true) or ldd:find("libtsan", 1, true)
    if not sanitized then
      assert.is_true(growth < 8 * 1024 * 1024,
        string.format("RSS grew by %.1f MiB (%.1f -> %.1f MiB)", growth / 1048576, rss0 / 1048576, rss1 / 1048576))
      assert.is_true(gw:metric("process_resident_memory_bytes") < metric0 + 8 * 1024 * 1024)
    end
    -- And it still answers, from the cache, at once.
    fake:reset_stats()
    warm(gw, { "tok-survivor" })
    assert.are.equal(0, reviews_of(fake, "tok-survivor"))
  end)
end)
