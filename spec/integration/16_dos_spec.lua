-- Integration: denial-of-service bounds of the real gateway against misbehaving clients
-- (spec/support/raw-client): slow headers and bodies (--header-timeout, --body-timeout),
-- large bodies without a token in proxy mode (--max-unauthenticated-body-bytes), and
-- running out of file descriptors (accept back-off, one log line per interval). The
-- assertions are on what the clients saw (closed, answered), the gateway's metrics, its
-- log and /proc — never on a tight time window: deadlines are short (1 s) and the
-- observation windows generous.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local upstream_mod = require("support.upstream")
local proc = require("support.proc")
local cjson = require("cjson")

local MiB = 1024 * 1024

local TOKEN = { token = "tok-dos-legit", username = "system:serviceaccount:team-a:legit", uid = "uid-legit",
  groups = { "system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated" } }

-- Runs raw-client against addr ("host:port") with opts; returns its JSON summary.
local function raw(addr, opts)
  local args = { proc.build_path("spec/support/raw-client"), "--addr", addr }
  for _, k in ipairs{ "mode", "connections", "duration-s", "interval-ms", "body-bytes", "path" } do
    if opts[k] then args[#args + 1] = "--" .. k; args[#args + 1] = tostring(opts[k]) end
  end
  for _, h in ipairs(opts.headers or {}) do args[#args + 1] = "--header"; args[#args + 1] = h end
  local quoted = {}
  for _, a in ipairs(args) do quoted[#quoted + 1] = proc.quote(a) end
  local out, code = proc.run(table.concat(quoted, " "))
  assert.equal(0, code, out)
  return cjson.decode(out:match("({.*})%s*$"))
end

local function addr_of(url) return (url:gsub("^http://", "")) end

local function sanitized_build()
  local out = proc.run("ldd " .. proc.quote(proc.build_path("core/tokengate")))
  return out:find("libasan", 1, true) ~= nil or out:find("libtsan", 1, true) ~= nil
end

local function rss_bytes(pid)
  local status = proc.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(status:match("VmRSS:%s*(%d+)")) * 1024
end

-- utime + stime of pid in clock ticks (/proc/PID/stat fields 14 and 15).
local function cpu_ticks(pid)
  local stat = proc.read_file("/proc/" .. pid .. "/stat") or ""
  local rest = stat:match("%) (.*)$") or ""
  local fields = {}
  for f in rest:gmatch("%S+") do fields[#fields + 1] = f end
  -- rest starts at field 3 (state): utime is field 14, stime 15.
  return tonumber(fields[12]) + tonumber(fields[13])
end

describe("tokengate under hostile clients", function()
  local fake

  lazy_setup(function() fake = fake_mod.start{ tokens = { TOKEN } } end)
  lazy_teardown(function() if fake then fake:stop() end end)

  local function with_gateway(opts, body)
    local gw = gateway_mod.start{ fake = fake, args = opts.args, env = opts.env, wrapper = opts.wrapper }
    local ok, err = pcall(body, gw)
    gw:stop()
    if not ok then error(err, 0) end
  end

  describe("slow clients (slowloris)", function()
    it("closes connections whose headers do not complete within --header-timeout", function()
      with_gateway({ args = { "--policy", "none", "--workers", "1", "--header-timeout", "1s",
                              "--read-timeout", "30s" } }, function(gw)
        -- One header byte every 200 ms keeps the idle timeout (30 s) from ever firing; for
        -- 6 s, six times the deadline.
        local r = raw(addr_of(gw.url), { mode = "slowloris", connections = 20, ["interval-ms"] = 200,
          ["duration-s"] = 6 })
        assert.equal(20, r.opened)
        assert.equal(20, r.closed_by_server)
        assert.equal(0, r.still_open)
        assert.same({}, r.answered) -- closed without an answer, as nginx does
        assert.equal(20, gw:metric('gateway_connections_closed_total{reason="header_timeout"}'))
        assert.equal(0, gw:metric("gateway_connections_open"))
        -- The gateway still serves.
        assert.equal(200, gw:request(TOKEN.token).status)
      end)
    end)

    it("closes connections that are accepted and send nothing, counting from the accept", function()
      with_gateway({ args = { "--policy", "none", "--workers", "1", "--header-timeout", "1s" } }, function(gw)
        -- 600 at once: more than one loop turn's batch of new connections (256).
        local r = raw(addr_of(gw.url), { mode = "idle", connections = 600, ["duration-s"] = 8 })
        assert.equal(600, r.opened)
        assert.equal(600, r.closed_by_server)
        assert.equal(600, gw:metric('gateway_connections_closed_total{reason="header_timeout"}'))
        assert.equal(0, gw:metric("gateway_connections_open"))
      end)
    end)

    it("closes connections whose body does not complete within --body-timeout", function()
      with_gateway({ args = { "--policy", "none", "--workers", "1", "--body-timeout", "1s" } }, function(gw)
        local r = raw(addr_of(gw.url), { mode = "slowbody", connections = 10, ["body-bytes"] = 1000,
          ["interval-ms"] = 200, ["duration-s"] = 6, headers = { "Authorization: Bearer " .. TOKEN.token } })
        assert.equal(10, r.closed_by_server)
        assert.equal(10, gw:metric('gateway_connections_closed_total{reason="body_timeout"}'))
        assert.equal(0, gw:metric('gateway_connections_closed_total{reason="header_timeout"}'))
      end)
    end)

    it("does not close a kept-alive connection that waits between requests, nor a prompt request", function()
      with_gateway({ args = { "--policy", "none", "--workers", "1", "--header-timeout", "1s" } }, function(gw)
        -- tgload keeps its connections alive across 2.5 s of requests: every request is
        -- prompt, so none is closed however long the connection lives.
        local r = gw:load{ c = 4, d = 2.5, tokens = { TOKEN.token } }
        assert.equal(0, r.errors)
        assert.equal(r.requests, r.codes["200"])
        assert.equal(0, gw:metric('gateway_connections_closed_total{reason="header_timeout"}'))
      end)
    end)
  end)

  describe("proxy mode: request bodies before authorization", function()
    local up
    lazy_setup(function() up = upstream_mod.start{ dir = fake.dir } end)
    lazy_teardown(function() if up then up:stop() end end)
    before_each(function() up:clear() end)

    local function proxy_args(extra)
      local args = { "--mode", "proxy", "--upstream", up.url, "--policy", "none", "--workers", "2" }
      for _, a in ipairs(extra or {}) do args[#args + 1] = a end
      return args
    end

    it("answers 401 on the headers of requests without a token, never reading their bodies: 60 x 10 MiB", function()
      with_gateway({ args = proxy_args() }, function(gw)
        local before = rss_bytes(gw:pid())
        local r = raw(addr_of(gw.url), { mode = "body", connections = 60, ["body-bytes"] = 10 * MiB,
          ["duration-s"] = 60, path = "/upload" })
        local after = rss_bytes(gw:pid())
        io.stderr:write(string.format("\n    60 x 10 MiB without a token: VmRSS %.1f MiB before, %.1f MiB after; " ..
          "%.1f MiB of body sent before the answers\n", before / MiB, after / MiB, (r.sent_bytes or 0) / MiB))
        assert.equal(60, r.opened)
        assert.same({ ["401"] = 60 }, r.answered)
        assert.equal(60, gw:metric("gateway_unauthenticated_bodies_refused_total"))
        assert.equal(0, gw:metric("gateway_unauthenticated_bodies_limited_total"))
        assert.equal(60, gw:metric('gateway_requests_total{code="401"}'))
        assert.equal(0, #up:requests())
        if not sanitized_build() then -- ASan's quarantine (TSan's shadow) keeps memory resident
          assert.is_true(after - before < 48 * MiB, "RSS grew by " .. (after - before) / MiB .. " MiB")
        end
        -- The gateway still serves, and the connections are all gone.
        assert.equal(200, gw:request(TOKEN.token).status)
        -- (The clients closed on reading the answer; what they had sent is still read and
        -- dropped from the sockets before the gateway sees the close.)
        local deadline = proc.now() + 40
        while gw:metric("gateway_connections_open") > 0 and proc.now() < deadline do proc.sleep(0.1) end
        assert.equal(0, gw:metric("gateway_connections_open"))
      end)
    end)

    it("answers before any byte of the body is sent: headers announcing 10 MiB, then nothing", function()
      with_gateway({ args = proxy_args() }, function(gw)
        -- slowbody with a tick longer than the run: the headers and not one body byte. The
        -- answer and the end of the stream come without the body (else nothing would come
        -- before --body-timeout, 10 s by default, and the connection would be closed
        -- without an answer).
        local r = raw(addr_of(gw.url), { mode = "slowbody", connections = 20, ["body-bytes"] = 10 * MiB,
          ["interval-ms"] = 60000, ["duration-s"] = 5, path = "/upload" })
        assert.equal(20, r.opened)
        assert.same({ ["401"] = 20 }, r.answered)
        assert.equal(20, r.closed_by_server)
        assert.equal(20, gw:metric("gateway_unauthenticated_bodies_refused_total"))
        assert.equal(0, gw:metric('gateway_connections_closed_total{reason="body_timeout"}'))
      end)
    end)

    it("ends the lingering after the 401 when the client neither sends nor closes", function()
      with_gateway({ args = proxy_args() }, function(gw)
        -- The clients announce 10 MiB, send nothing more and keep their sockets open for
        -- 20 s, even after the gateway's end of stream (--hold). After its 401 the gateway
        -- lingers 5 s without a byte, then closes and frees the slot while the clients
        -- still hold theirs.
        local log = fake.dir .. "/raw-linger.json"
        local client = proc.spawn({ proc.build_path("spec/support/raw-client"), "--addr", addr_of(gw.url),
          "--mode", "slowbody", "--connections", "10", "--body-bytes", tostring(10 * MiB),
          "--interval-ms", "60000", "--duration-s", "20", "--path", "/upload", "--hold", "1" }, log)
        proc.wait_until("10 refusals", function()
          return gw:metric("gateway_unauthenticated_bodies_refused_total") == 10
        end, 15)
        proc.wait_until("the lingering connections closed", function()
          return gw:metric("gateway_connections_open") == 0
        end, 14)
        assert.is_true(proc.alive(client), "the clients were meant to outlive the lingering")
        proc.wait_until("raw-client to finish", function() return not proc.alive(client) end, 30)
        local r = cjson.decode(proc.read_file(log):match("({.*})%s*$"))
        assert.same({ ["401"] = 10 }, r.answered)
        assert.equal(10, r.closed_by_server)
      end)
    end)

    it("answers curl's uploads on the headers over plain and TLS listeners, chunked or not", function()
      local file = fake.dir .. "/upload-2m.bin"
      proc.write_file(file, string.rep("u", 2 * MiB))
      local function upload(url, extra)
        local args = { "curl", "-sS", "-k", "-o", "/dev/null", "-D", "-", "-w", "\n%{http_code} %{size_upload}\n",
          "--max-time", "30", "-T", file }
        for _, a in ipairs(extra or {}) do args[#args + 1] = a end
        args[#args + 1] = url .. "/upload"
        local quoted = {}
        for _, a in ipairs(args) do quoted[#quoted + 1] = proc.quote(a) end
        return proc.run(table.concat(quoted, " "))
      end
      local function check(gw, url)
        -- curl asks Expect: 100-continue for a body this large: the 401 comes instead of the
        -- 100, so not one byte of the body is sent.
        local out = upload(url)
        assert.equal("401 0", out:match("(%d+ %d+)%s*$"), out)
        assert.truthy(out:find('WWW-Authenticate: Bearer realm="tokengate"', 1, true), out)
        assert.truthy(out:lower():find("connection: close", 1, true), out)
        assert.truthy(out:find("Cache-Control: no-store", 1, true), out)
        -- Without Expect, and chunked: the body starts at once and is dropped as it comes.
        out = upload(url, { "-H", "Expect:" })
        assert.equal("401", out:match("(%d+) %d+%s*$"), out)
        out = upload(url, { "-H", "Expect:", "-H", "Transfer-Encoding: chunked" })
        assert.equal("401", out:match("(%d+) %d+%s*$"), out)
        assert.equal(3, gw:metric("gateway_unauthenticated_bodies_refused_total"))
        assert.equal(0, #up:requests())
        -- The same upload with a token goes through whole.
        out = upload(url, { "-H", "Authorization: Bearer " .. TOKEN.token })
        assert.equal("200 " .. 2 * MiB, out:match("(%d+ %d+)%s*$"), out)
        assert.equal(2 * MiB, up:requests()[1].body_bytes)
        up:clear()
      end
      with_gateway({ args = proxy_args() }, function(gw) check(gw, gw.url) end)
      with_gateway({ args = proxy_args{ "--tls-cert-file", fake.dir .. "/server.crt",
                                        "--tls-key-file", fake.dir .. "/server.key" } }, function(gw)
        check(gw, (gw.url:gsub("^http:", "https:")))
      end)
      os.remove(file)
    end)

    it("reads the body when the policy's anonymous() may let the request through, and follows reloads", function()
      local policy = fake.dir .. "/anonymous-uploads.lua"
      local without_hook = "return { authorize = function(req, user) return true end }\n"
      local with_hook = "return { authorize = function(req, user) return true end,\n" ..
        "  anonymous = function(req) return req.path == '/public' end }\n"
      proc.write_file(policy, with_hook)
      local args = proxy_args()
      for i, a in ipairs(args) do if a == "none" then args[i] = policy end end
      with_gateway({ args = args }, function(gw)
        local ok = raw(addr_of(gw.url), { mode = "body", connections = 1, ["body-bytes"] = 1000, ["duration-s"] = 10,
          path = "/public" })
        assert.same({ ["200"] = 1 }, ok.answered)
        assert.equal(1000, up:requests()[1].body_bytes)
        up:clear()
        local no = raw(addr_of(gw.url), { mode = "body", connections = 1, ["body-bytes"] = 1000, ["duration-s"] = 10,
          path = "/private" })
        assert.same({ ["401"] = 1 }, no.answered)
        assert.equal(0, gw:metric("gateway_unauthenticated_bodies_refused_total"))
        assert.equal(2, gw:metric("gateway_unauthenticated_bodies_limited_total"))
        -- Reloaded without the hook: the next upload without a token is refused on its headers.
        proc.write_file(policy, without_hook)
        proc.signal(gw.handle, "HUP")
        local deadline = proc.now() + 30
        local refused = 0
        while refused == 0 and proc.now() < deadline do
          local r = raw(addr_of(gw.url), { mode = "slowbody", connections = 1, ["body-bytes"] = 1000,
            ["interval-ms"] = 60000, ["duration-s"] = 1, path = "/public" })
          refused = gw:metric("gateway_unauthenticated_bodies_refused_total")
          if refused == 0 then proc.sleep(0.1) else assert.same({ ["401"] = 1 }, r.answered) end
        end
        assert.equal(1, refused)
        assert.equal(0, #up:requests())
      end)
    end)

    it("still answers 401 to a small body without a token, and forwards an allowed upload", function()
      with_gateway({ args = proxy_args() }, function(gw)
        local r = raw(addr_of(gw.url), { mode = "body", connections = 1, ["body-bytes"] = 1000, ["duration-s"] = 10 })
        assert.same({ ["401"] = 1 }, r.answered)
        local ok = raw(addr_of(gw.url), { mode = "body", connections = 1, ["body-bytes"] = 5 * MiB, ["duration-s"] = 20,
          headers = { "Authorization: Bearer " .. TOKEN.token } })
        assert.same({ ["200"] = 1 }, ok.answered)
        assert.equal(5 * MiB, up:requests()[1].body_bytes)
      end)
    end)

    it("bounds the bodies of requests whose token is not (yet) authenticated (--max-buffered-body-bytes)", function()
      with_gateway({ args = proxy_args{ "--max-buffered-body-bytes", tostring(32 * MiB) } }, function(gw)
        local before = rss_bytes(gw:pid())
        local r = raw(addr_of(gw.url), { mode = "body", connections = 40, ["body-bytes"] = 10 * MiB,
          ["duration-s"] = 60, headers = { "Authorization: Bearer garbage-token" } })
        local after = rss_bytes(gw:pid())
        io.stderr:write(string.format("\n    40 x 10 MiB with a garbage token: VmRSS %.1f MiB before, %.1f MiB after, " ..
          "%d closed over the budget\n", before / MiB, after / MiB,
          gw:metric('gateway_connections_closed_total{reason="body_budget"}')))
        assert.equal(40, r.opened)
        local closed = gw:metric('gateway_connections_closed_total{reason="body_budget"}')
        assert.is_true(closed > 0)
        -- Every connection was either answered 401 (its body fitted in the budget) or closed.
        assert.equal(40, (r.answered["401"] or 0) + closed)
        if not sanitized_build() then
          assert.is_true(after - before < 96 * MiB, "RSS grew by " .. (after - before) / MiB .. " MiB")
        end
      end)
    end)
  end)

  describe("running out of file descriptors", function()
    -- The gateway under a low open-files limit: soft and hard (ulimit -n) unless soft_only.
    local function limited(n, soft_only)
      return { "sh", "-c", (soft_only and "ulimit -S -n " or "ulimit -n ") .. n .. ' && exec "$@"', "sh" }
    end

    local function count_lines(text, needle)
      local n = 0
      for line in text:gmatch("[^\n]+") do
        if line:find(needle, 1, true) then n = n + 1 end
      end
      return n
    end

    it("pauses accepting instead of spinning, logs once per interval, and serves again afterwards", function()
      with_gateway({ args = { "--policy", "none", "--workers", "1" }, wrapper = limited(128) }, function(gw)
        assert.truthy(gw:log_text():find("open-files limit (ulimit -n) is below", 1, true))
        assert.equal(200, gw:request(TOKEN.token).status)
        -- 300 idle connections against 128 descriptors, held 5 s; the CPU the gateway uses
        -- in the middle 2 s of it is measured.
        local client = io.popen(table.concat({ proc.quote(proc.build_path("spec/support/raw-client")), "--addr",
          addr_of(gw.url), "--mode idle --connections 300 --duration-s 5" }, " "))
        proc.sleep(1.5)
        local t0 = cpu_ticks(gw:pid())
        proc.sleep(2)
        local used = cpu_ticks(gw:pid()) - t0
        local out = client:read("*a")
        client:close()
        local r = cjson.decode(out:match("({.*})%s*$"))
        assert.equal(300, r.opened) -- the kernel took them all (listen backlog)
        local log = gw:log_text()
        local accept_lines = count_lines(log, "accept() failed")
        io.stderr:write(string.format("\n    300 idle connections, 128 fds: %d CPU ticks in 2 s, %d accept log lines, " ..
          "%d accept errors, %d back-offs\n", used, accept_lines, gw:metric("gateway_accept_errors_total"),
          gw:metric("gateway_accept_backoffs_total")))
        assert.is_true(gw:metric("gateway_accept_backoffs_total") >= 1)
        assert.is_true(accept_lines >= 1 and accept_lines <= 3, accept_lines .. " accept() log lines")
        assert.is_true(used < 100, "the gateway used " .. used .. " CPU ticks in 2 s") -- spinning: ~200
        -- The connections are gone: it serves again.
        local deadline = proc.now() + 10
        local status
        repeat
          status = gw:request(TOKEN.token).status
          if status ~= 200 then proc.sleep(0.2) end
        until status == 200 or proc.now() > deadline
        assert.equal(200, status)
      end)
    end)

    it("raises its soft open-files limit to what the configuration needs when the hard limit allows", function()
      with_gateway({ args = { "--policy", "none", "--workers", "1", "--max-connections", "500" },
                     wrapper = limited(128, true) }, function(gw)
        local limits = proc.read_file("/proc/" .. gw:pid() .. "/limits") or ""
        local soft = tonumber(limits:match("Max open files%s+(%d+)"))
        assert.is_true(soft >= 500, "soft limit " .. tostring(soft))
        assert.truthy(gw:log_text():find("raised the open-files limit", 1, true))
        assert.is_nil(gw:log_text():find("is below", 1, true))
      end)
    end)

    it("caps the admin listener's connections (--admin-max-connections) without starving the main one", function()
      with_gateway({ args = { "--policy", "none", "--workers", "1", "--admin-max-connections", "4" } }, function(gw)
        local client = io.popen(table.concat({ proc.quote(proc.build_path("spec/support/raw-client")), "--addr",
          addr_of(gw.admin_url), "--mode idle --connections 50 --duration-s 6" }, " "))
        -- Once the idle connections are in (however long a busy machine takes to open them),
        -- the admin listener is at its cap: a new admin connection waits in the accept queue
        -- and gets no answer...
        proc.wait_until("the admin listener to be at its cap", function()
          return proc.run("curl -s -o /dev/null -w '%{http_code}' --max-time 1 " ..
            proc.quote(gw.admin_url .. "/healthz")) == "000"
        end, 5)
        -- ...while the main listener goes on answering.
        assert.equal(200, gw:request(TOKEN.token).status)
        client:read("*a")
        client:close()
        local deadline = proc.now() + 10
        local code
        repeat
          code = proc.run("curl -s -o /dev/null -w '%{http_code}' --max-time 2 " .. proc.quote(gw.admin_url .. "/healthz"))
          if code ~= "200" then proc.sleep(0.2) end
        until code == "200" or proc.now() > deadline
        assert.equal("200", code)
      end)
    end)
  end)

  describe("fair sharing of the API budget", function()
    -- Slow enough that a flood fills the queue: 20 calls/s, 100 ms each, 20 waiting at most.
    local LIMITS = { "--workers", "1", "--apiserver-qps", "20", "--apiserver-burst", "1", "--review-max-pending", "20" }

    local function args_with(extra)
      local args = {}
      for _, a in ipairs(LIMITS) do args[#args + 1] = a end
      for _, a in ipairs(extra) do args[#args + 1] = a end
      return args
    end

    local function garbage(n)
      local list = {}
      for i = 1, n do list[i] = string.format("garbage-%d-%d", math.random(1, 1e9), i) end
      return list
    end

    -- ServiceAccount tokens are JWTs: these are shaped like one (the fake knows them).
    local function jwt_like(name)
      return "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiI" .. name .. "In0.c2lnbmF0dXJl"
    end

    it("a flood of unknown tokens from one source cannot keep new legitimate tokens out", function()
      local legit = {}
      for i = 1, 8 do
        legit[i] = { token = jwt_like("legit" .. i), username = "system:serviceaccount:team-a:app" .. i,
          uid = "uid-app" .. i, groups = { "system:serviceaccounts", "system:authenticated" } }
      end
      local all = { TOKEN }
      for _, t in ipairs(legit) do all[#all + 1] = t end
      fake:reload(all)
      fake:config{ latency_ms = 100 }
      with_gateway({ args = args_with{ "--policy", "none" } }, function(gw)
        local flood = gw:load_start{ c = 40, d = 5, tokens = garbage(5000), timeout = 10 }
        proc.sleep(1.5) -- the queue is full of the flood's reviews by now
        local codes = {}
        for _, t in ipairs(legit) do
          local status = gw:request(t.token).status
          codes[tostring(status)] = (codes[tostring(status)] or 0) + 1
        end
        local f = flood:wait(30)
        io.stderr:write(string.format("\n    flood: %d requests (%s); new legitimate tokens: %s; %d queued reviews " ..
          "pushed out\n", f.requests, cjson.encode(f.codes), cjson.encode(codes),
          gw:metric("gateway_apiserver_queue_pushed_out_total")))
        assert.equal(#legit, codes["200"])
        -- The flood did fill the queue: it was refused, not the legitimate tokens.
        assert.is_true((f.codes["503"] or 0) > 0, "the flood never filled the queue: " .. cjson.encode(f.codes))
      end)
      fake:config{ latency_ms = 0 }
      fake:reload{ TOKEN }
    end)

    it("one identity spraying SubjectAccessReviews cannot keep another identity's out", function()
      local sprayer = { token = jwt_like("sprayer"), username = "system:serviceaccount:team-s:sprayer",
        uid = "uid-sprayer", groups = { "system:serviceaccounts", "system:authenticated" } }
      fake:reload({ TOKEN, sprayer }, { { user = "*", verb = "get" } })
      fake:config{ latency_ms = 100 }
      -- The default policy: one SubjectAccessReview per distinct path.
      with_gateway({ args = args_with{} }, function(gw)
        local spray = gw:load_start{ c = 40, d = 5, tokens = { sprayer.token }, path = "/spray/", spray_paths = true,
          timeout = 10 }
        proc.sleep(1.5)
        local codes = {}
        for i = 1, 8 do
          local status = gw:request(TOKEN.token, "/mine/" .. i).status
          codes[tostring(status)] = (codes[tostring(status)] or 0) + 1
        end
        local s = spray:wait(30)
        io.stderr:write(string.format("\n    spray: %d requests (%s); the other identity: %s\n", s.requests,
          cjson.encode(s.codes), cjson.encode(codes)))
        assert.equal(8, codes["200"])
        assert.is_true((s.codes["503"] or 0) > 0, "the spray never filled the queue: " .. cjson.encode(s.codes))
      end)
      fake:config{ latency_ms = 0 }
      fake:reload({ TOKEN }, {})
    end)
  end)

  describe("identities the gateway cannot represent", function()
    it("refuses them with a cached 401 and a metric, not a 503 and a review on every request", function()
      local groups = {}
      for i = 1, 300 do groups[i] = "group-" .. i end
      local many_groups = { token = "tok-many-groups", username = "system:serviceaccount:team-a:many", uid = "uid-many",
        groups = groups }
      local control = { token = "tok-control-char", username = "system:serviceaccount:team-a:bad\001name",
        uid = "uid-control", groups = { "system:authenticated" } }
      fake:reload{ TOKEN, many_groups, control }
      with_gateway({ args = { "--policy", "none", "--workers", "1" } }, function(gw)
        fake:reset_stats()
        for _, who in ipairs{ many_groups, control } do
          for _ = 1, 5 do
            local res = gw:request(who.token)
            assert.equal(401, res.status)
            assert.is_nil(res.headers and res.headers["retry-after"])
          end
        end
        -- One review per identity; the four requests after it were answered from the cache.
        assert.equal(2, fake:stats().tokenreview_calls)
        assert.equal(2, gw:metric("gateway_tokenreview_unrepresentable_total"))
        assert.equal(8, gw:metric("gateway_tokenreview_cache_hits_total"))
        assert.equal(0, gw:metric('gateway_requests_total{code="503"}'))
        assert.equal(200, gw:request(TOKEN.token).status)
      end)
      fake:reload{ TOKEN }
    end)
  end)
end)
