-- Integration: examples/fleet with real nginx. Three real gateways behind
-- examples/fleet/nginx.conf (only its placeholders filled in), one fake API server
-- behind all three. Asserts behaviour, never timings:
--   * with the example's `hash $http_authorization consistent;`, through the auth_request
--     server and through the hashing relay alike, each token is reviewed by exactly one
--     replica however often it comes back within the TTL (the fake sees one TokenReview
--     per token), and the two servers share one ring;
--   * with that line deleted (nginx's round-robin), the same traffic makes the fake see
--     several TokenReviews per token;
--   * when a replica dies, only its tokens move (one more TokenReview each, on the next
--     replica of the ring) and every request still gets its answer;
--   * the Kubernetes manifests and the Envoy configuration of examples/fleet parse and
--     agree with each other and with nginx.conf.
-- bench/fleet.sh measures the same set-up (docs/FLEET.md).
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local upstream_mod = require("support.upstream")
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")
local lyaml = require("lyaml")

local EXAMPLE = "examples/fleet/nginx.conf" -- busted runs from the repository root
local K8S = "examples/fleet/kubernetes"
local ENVOY = "examples/fleet/envoy.yaml"
local HASH_LINE = "    hash $http_authorization consistent;\n"
local REPLICAS = 3
-- Not a multiple of 3, so that round-robin over a repeated pass cannot pin each token
-- to one replica by accident.
local K = 20
local PASSES = 6

local TOKENS = {}
for i = 1, K do
  TOKENS[i] = { token = string.format("fleet-token-%02d", i),
    username = string.format("system:serviceaccount:fleet:client-%02d", i), uid = "uid-" .. i,
    groups = { "system:serviceaccounts", "system:serviceaccounts:fleet", "system:authenticated" } }
end

local function plain_find(s, needle) return s:find(needle, 1, true) end

local function nginx_binary()
  local out = proc.run("command -v nginx || ls /usr/sbin/nginx")
  return out:match("(%S+)")
end

-- Fills the example's placeholders (mode "rr" also deletes its hash line) and runs nginx
-- in the foreground with every file it writes in dir, on two ports from proc.free_ports
-- (nginx cannot report a port it picked); others if a spec beside this one took them.
local function start_nginx(dir, mode, gateways, app_addr)
  local binary = assert(nginx_binary(), "nginx is not installed (./run setup installs it)")
  local template = assert(proc.read_file(EXAMPLE), "cannot read " .. EXAMPLE)
  assert(plain_find(template, HASH_LINE), "the example has no `hash $http_authorization consistent;` line")
  if mode == "rr" then
    local i = plain_find(template, HASH_LINE)
    template = template:sub(1, i - 1) .. template:sub(i + #HASH_LINE)
  end
  proc.run("mkdir -p " .. proc.quote(dir) .. " && chmod 755 " .. proc.quote(dir))
  for _ = 1, 10 do
    local ports = proc.free_ports(2)
    local edge, relay = ports[1], ports[2]
    do
      local conf = template:gsub("@LISTEN@", "127.0.0.1:" .. edge):gsub("@ROUTER_LISTEN@", "127.0.0.1:" .. relay)
        :gsub("@UPSTREAM@", app_addr)
      for r = 0, REPLICAS - 1 do
        conf = conf:gsub("@TOKENGATE_" .. r .. "@", (gateways[r + 1].url:gsub("^http://", "")))
      end
      assert(not conf:find("@[%u_%d]+@"), "a placeholder is left in the example")
      proc.write_file(dir .. "/fleet.conf", conf)
      proc.write_file(dir .. "/main.conf", table.concat({
        "worker_processes 1;",
        "events { worker_connections 256; }",
        "http {",
        "  access_log " .. dir .. "/access.log;",
        "  client_body_temp_path " .. dir .. "/tmp-body;",
        "  proxy_temp_path " .. dir .. "/tmp-proxy;",
        "  fastcgi_temp_path " .. dir .. "/tmp-fastcgi;",
        "  uwsgi_temp_path " .. dir .. "/tmp-uwsgi;",
        "  scgi_temp_path " .. dir .. "/tmp-scgi;",
        "  include " .. dir .. "/fleet.conf;",
        "}", "" }, "\n"))
      local error_log = dir .. "/nginx-error.log"
      proc.write_file(error_log, "")
      -- Removed first: nginx writes it once its listeners are bound.
      local pid_file = dir .. "/nginx.pid"
      os.remove(pid_file)
      local handle = proc.spawn({ binary, "-p", dir, "-c", dir .. "/main.conf", "-e", error_log,
        "-g", "daemon off; pid " .. pid_file .. "; error_log " .. error_log .. " info;" }, dir .. "/nginx.out")
      local edge_url, relay_url = "http://127.0.0.1:" .. edge, "http://127.0.0.1:" .. relay
      local deadline = proc.now() + 30
      while proc.now() < deadline and proc.alive(handle) do
        -- nginx writes its pid file once both listeners are bound (before, an answer could
        -- come from another spec's server); then any HTTP answer on both ports means it serves
        -- (401s from tokengate).
        if proc.read_file(pid_file) and http.get(edge_url .. "/", nil, { timeout = 5 }).status ~= 0
            and http.get(relay_url .. "/", nil, { timeout = 5 }).status ~= 0 then
          return { handle = handle, edge = edge_url, relay = relay_url, error_log = error_log }
        end
        proc.sleep(0.05)
      end
      local log = (proc.read_file(error_log) or "") .. (proc.read_file(dir .. "/nginx.out") or "")
      proc.stop(handle)
      if not plain_find(log, "Address already in use") then error("nginx did not start:\n" .. log) end
    end
  end
  error("nginx found no free port")
end

describe("examples/fleet with real nginx and three gateways", function()
  local fake, app, dir, nginx
  local gws = {}

  local function stop_nginx()
    if nginx then proc.stop(nginx.handle) end
    nginx = nil
  end

  -- PASSES passes over the K tokens through url (c connections, request i carries token
  -- i mod K); returns tgload's summary after checking every answer was a 200.
  -- What an ingress-nginx (auth-url pointed at the relay) adds to a question.
  local RELAY_HEADERS = { "X-Original-URL: https://hooks.example/hooks/deliver", "X-Original-Method: POST" }

  local function passes(url, c, tokens, n_passes, headers)
    tokens = tokens or TOKENS
    local file = string.format("%s/tokens-%d.txt", dir, math.random(1, 1e9))
    local list = {}
    for i, t in ipairs(tokens) do list[i] = t.token end
    proc.write_file(file, table.concat(list, "\n") .. "\n")
    local args = { proc.build_path("bench/tgload"), "--url", url, "-c", tostring(c), "-n",
      tostring(#tokens * (n_passes or PASSES)), "--tokens", file, "--timeout", "20" }
    for _, h in ipairs(headers or {}) do args[#args + 1] = "-H"; args[#args + 1] = h end
    for i, a in ipairs(args) do args[i] = proc.quote(a) end
    local out = proc.run(table.concat(args, " ") .. " 2>/dev/null")
    os.remove(file)
    local line = assert(out:match("({[^\n]*})%s*$"), "tgload printed no summary: " .. out)
    local summary = cjson.decode(line)
    assert.equal(0, summary.errors, out)
    assert.equal(#tokens * (n_passes or PASSES), summary.codes["200"], out)
    return summary
  end

  local function api_calls(gw) return gw:metric("gateway_tokenreview_api_calls_total") end

  -- Every gateway's cache emptied and the fake's counters zeroed; returns each gateway's
  -- API call counter, to take differences from.
  local function fresh_start()
    local before = {}
    for r, gw in ipairs(gws) do
      if gw:alive() then
        assert.equal(200, gw:flush().status)
        before[r] = api_calls(gw)
      end
    end
    fake:reset_stats()
    return before
  end

  local function per_token(stats)
    local counts = {}
    for _, t in ipairs(TOKENS) do counts[#counts + 1] = stats.by_token[t.token] or 0 end
    return counts
  end

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS }
    dir = fake.dir
    for r = 1, REPLICAS do
      gws[r] = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--cache-ttl", "5m",
        "--forwarded-headers", "ingress-nginx" } }
    end
    app = upstream_mod.start{ dir = dir }
  end)

  lazy_teardown(function()
    stop_nginx()
    if app then app:stop() end
    for _, gw in ipairs(gws) do if gw:alive() then gw:stop() end end
    if fake then fake:stop() end
  end)

  describe("with consistent hashing (the example as it is)", function()
    lazy_setup(function() nginx = start_nginx(dir .. "/nginx-hash", "hash", gws, app.addr) end)
    lazy_teardown(stop_nginx)

    it("has each token reviewed by exactly one replica through auth_request, and the relay shares the ring", function()
      local before = fresh_start()
      app:clear()
      passes(nginx.edge .. "/hooks/deliver", 4)
      local stats = fake:stats()
      assert.equal(K, stats.tokenreview_calls)
      for i, n in ipairs(per_token(stats)) do assert.equal(1, n, TOKENS[i].token) end
      -- The tokens were shared out, not all sent to one replica.
      local used, total = 0, 0
      for r, gw in ipairs(gws) do
        local d = api_calls(gw) - before[r]
        total = total + d
        if d > 0 then used = used + 1 end
      end
      assert.equal(K, total)
      assert.is_true(used >= 2, "every token went to one replica")
      -- auth_request still does its job: the application got the identity of each caller.
      local got = app:requests()
      assert.equal(K * PASSES, #got)
      for _, req in ipairs(got) do
        local users = app:headers(req, "X-Remote-User")
        assert.equal(1, #users)
        assert.truthy(users[1]:match("^system:serviceaccount:fleet:client%-%d%d$"), users[1])
      end

      -- The relay routes over the same upstream, hence the same ring: every token lands
      -- where its verdict is already cached, and the fake sees nothing new.
      passes(nginx.relay .. "/ingress-auth", 4, nil, nil, RELAY_HEADERS)
      assert.equal(K, fake:stats().tokenreview_calls)
    end)

    it("relays tokengate's answers unchanged", function()
      local ok = http.get(nginx.relay .. "/x", { "Authorization: Bearer " .. TOKENS[2].token, RELAY_HEADERS[1],
        RELAY_HEADERS[2] })
      assert.equal(200, ok.status)
      assert.equal(TOKENS[2].username, ok.headers["x-remote-user"])
      local bad = http.get(nginx.relay .. "/x", { "Authorization: Bearer no-such-token", RELAY_HEADERS[1],
        RELAY_HEADERS[2] })
      assert.equal(401, bad.status)
      assert.equal('Bearer realm="tokengate"', bad.headers["www-authenticate"])
      assert.equal(401, http.get(nginx.edge .. "/x", { "Authorization: Bearer no-such-token" }).status)
    end)
  end)

  describe("with round-robin (the hash line deleted)", function()
    lazy_setup(function() nginx = start_nginx(dir .. "/nginx-rr", "rr", gws, app.addr) end)
    lazy_teardown(stop_nginx)

    it("has the same traffic reviewed several times per token", function()
      fresh_start()
      passes(nginx.edge .. "/hooks/deliver", 1)
      local stats = fake:stats()
      -- One connection, so nginx's rotation is strict: token i of pass p goes to replica
      -- (p*K + i) mod 3, and every token meets every replica (3 reviews each). Asserted
      -- loosely: more than one review per token, which is the point.
      assert.is_true(stats.tokenreview_calls > K, "round-robin made " .. stats.tokenreview_calls .. " reviews")
      local more_than_once = 0
      for _, n in ipairs(per_token(stats)) do if n > 1 then more_than_once = more_than_once + 1 end end
      assert.is_true(more_than_once > K / 2, more_than_once .. " of " .. K .. " tokens reviewed more than once")
    end)
  end)

  -- Last: it stops a gateway.
  describe("when a replica dies, with consistent hashing", function()
    lazy_setup(function() nginx = start_nginx(dir .. "/nginx-hash2", "hash", gws, app.addr) end)
    lazy_teardown(stop_nginx)

    it("moves only that replica's tokens, one more review each, and every request is answered", function()
      local before = fresh_start()
      passes(nginx.edge .. "/hooks/deliver", 1, nil, 1)
      assert.equal(K, fake:stats().tokenreview_calls)
      -- The replica that owns the most tokens dies.
      local victim, share = nil, -1
      for r, gw in ipairs(gws) do
        local d = api_calls(gw) - before[r]
        if d > share then victim, share = r, d end
      end
      assert.is_true(share > 0)
      gws[victim]:stop()

      -- nginx finds it refusing connections, asks the next replica on the ring for those
      -- tokens, then skips it: every answer is still a 200 (checked by passes).
      passes(nginx.edge .. "/hooks/deliver", 1, nil, 3)
      local stats = fake:stats()
      assert.equal(K + share, stats.tokenreview_calls)
      local twice = 0
      for i, n in ipairs(per_token(stats)) do
        assert.is_true(n == 1 or n == 2, TOKENS[i].token .. " reviewed " .. n .. " times")
        if n == 2 then twice = twice + 1 end
      end
      assert.equal(share, twice)

      -- And they stay where they moved: no further review.
      passes(nginx.edge .. "/hooks/deliver", 4, nil, 2)
      assert.equal(K + share, fake:stats().tokenreview_calls)
    end)
  end)
end)

describe("examples/fleet configuration files", function()
  local function load_all(path)
    local docs = {}
    for _, doc in ipairs(lyaml.load(assert(proc.read_file(path), "cannot read " .. path), { all = true })) do
      if doc ~= lyaml.null and doc ~= nil then docs[#docs + 1] = doc end
    end
    return docs
  end

  local objects = {}
  lazy_setup(function()
    for _, file in ipairs({ "services.yaml", "statefulset.yaml", "networkpolicy.yaml", "nginx-configmap.yaml",
        "nginx-deployment.yaml" }) do
      for _, doc in ipairs(load_all(K8S .. "/" .. file)) do
        objects[doc.kind] = objects[doc.kind] or {}
        assert.is_nil(objects[doc.kind][doc.metadata.name], "duplicate " .. doc.kind .. " " .. doc.metadata.name)
        objects[doc.kind][doc.metadata.name] = doc
        assert.equal("tokengate", doc.metadata.namespace, file)
      end
    end
  end)

  it("gives nginx one Service per StatefulSet replica, and the StatefulSet its headless Service", function()
    local sts = objects.StatefulSet.tokengate
    assert.equal(REPLICAS, sts.spec.replicas)
    local headless = objects.Service[sts.spec.serviceName]
    assert.truthy(headless, "no Service " .. tostring(sts.spec.serviceName))
    assert.equal("None", headless.spec.clusterIP)
    local labels = sts.spec.template.metadata.labels
    for k, v in pairs(headless.spec.selector) do assert.equal(v, labels[k]) end
    local conf = objects.ConfigMap["tokengate-edge-nginx"].data["tokengate-fleet.conf"]
    local servers = {}
    for name, port in conf:gmatch("\n%s*server ([%w%.%-]+):(%d+) max_fails") do servers[#servers + 1] = name .. ":" .. port end
    assert.equal(REPLICAS, #servers)
    for r = 0, REPLICAS - 1 do
      local svc = objects.Service["tokengate-" .. r]
      assert.truthy(svc, "no Service tokengate-" .. r)
      assert.equal("tokengate-" .. r, svc.spec.selector["statefulset.kubernetes.io/pod-name"])
      assert.equal("tokengate-" .. r .. ".tokengate.svc.cluster.local:" .. svc.spec.ports[1].port, servers[r + 1])
      for _, p in ipairs(svc.spec.ports) do assert.equal("http", p.targetPort) end -- never the admin port
    end
  end)

  it("runs examples/kubernetes's container unchanged in the StatefulSet", function()
    local deployment
    for _, doc in ipairs(load_all("examples/kubernetes/deployment.yaml")) do
      if doc.kind == "Deployment" then deployment = doc end
    end
    assert.same(deployment.spec.template, objects.StatefulSet.tokengate.spec.template)
  end)

  it("ships nginx.conf in the ConfigMap with only the placeholders filled in", function()
    local values = { ["@LISTEN@"] = "8000", ["@ROUTER_LISTEN@"] = "8081",
      ["@UPSTREAM@"] = "protected-app.apps.svc.cluster.local:80" }
    for r = 0, REPLICAS - 1 do values["@TOKENGATE_" .. r .. "@"] = "tokengate-" .. r .. ".tokengate.svc.cluster.local:8080" end
    local want = {}
    for line in (proc.read_file(EXAMPLE) .. ""):gmatch("([^\n]*)\n") do
      if not line:match("^%s*#") then line = line:gsub("@[%u_%d]+@", values) end
      want[#want + 1] = line
    end
    assert.equal(table.concat(want, "\n") .. "\n", objects.ConfigMap["tokengate-edge-nginx"].data["tokengate-fleet.conf"])
    -- The Deployment mounts that ConfigMap where the image's nginx.conf includes it, and
    -- its ports are the configuration's listeners.
    local pod = objects.Deployment["tokengate-edge"].spec.template.spec
    local mounted
    for _, v in ipairs(pod.volumes) do if v.configMap then mounted = v end end
    assert.equal("tokengate-edge-nginx", mounted.configMap.name)
    local ports = {}
    for _, p in ipairs(pod.containers[1].ports) do ports[p.name] = p.containerPort end
    assert.same({ edge = 8000, relay = 8081 }, ports)
    for _, m in ipairs(pod.containers[1].volumeMounts) do
      if m.name == mounted.name then assert.equal("/etc/nginx/conf.d", m.mountPath) end
      assert.is_nil(m.subPath)
    end
  end)

  it("has Envoy hash the Authorization header on a RING_HASH cluster of the headless Service", function()
    local cfg = load_all(ENVOY)[1].static_resources
    local clusters, listeners = {}, {}
    for _, c in ipairs(cfg.clusters) do clusters[c.name] = c end
    for _, l in ipairs(cfg.listeners) do listeners[l.name] = l end
    local fleet = clusters.tokengate_fleet
    assert.equal("RING_HASH", fleet.lb_policy)
    assert.equal("STRICT_DNS", fleet.type)
    local addr = fleet.load_assignment.endpoints[1].lb_endpoints[1].endpoint.address.socket_address
    assert.equal("tokengate-peers.tokengate.svc.cluster.local", addr.address)
    -- ext_authz asks this Envoy's tokengate_ring listener, whose route hashes on the
    -- authorization header and goes to the fleet.
    local function hcm(listener) return listener.filter_chains[1].filters[1].typed_config end
    local ext_authz
    for _, f in ipairs(hcm(listeners.ingress).http_filters) do
      if f.name == "envoy.filters.http.ext_authz" then ext_authz = f.typed_config end
    end
    local hop = clusters[ext_authz.http_service.server_uri.cluster]
    local hop_addr = hop.load_assignment.endpoints[1].lb_endpoints[1].endpoint.address.socket_address
    local ring_addr = listeners.tokengate_ring.address.socket_address
    assert.equal(ring_addr.address, hop_addr.address)
    assert.equal(ring_addr.port_value, hop_addr.port_value)
    local route = hcm(listeners.tokengate_ring).route_config.virtual_hosts[1].routes[1].route
    assert.equal("tokengate_fleet", route.cluster)
    assert.equal("authorization", route.hash_policy[1].header.header_name)
    local allowed = {}
    for _, p in ipairs(ext_authz.allowed_headers.patterns) do allowed[p.exact] = true end
    assert.is_true(allowed.authorization)
  end)
end)
