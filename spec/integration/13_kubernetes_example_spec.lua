-- Integration: examples/kubernetes without a cluster. There is no cluster or container
-- engine where these specs run, so this proves what can be proved here:
--   * the manifests parse, agree with each other (names, labels, ports, probe paths, the
--     policy path) and keep the promises the README makes (RBAC, security context,
--     grace periods, no subPath, admin port only in-cluster);
--   * the ConfigMap's policy is policies/default.lua;
--   * the Deployment's own container args, with in-cluster configuration (the
--     KUBERNETES_SERVICE_HOST/PORT variables and a service-account directory), serve
--     against the fake API server, answer the manifest's probe paths, and follow a
--     kubelet-style ConfigMap update (the ..data symlink swap), keeping the old policy
--     when the new one is broken;
--   * `cmake --install` gives the layout the Dockerfile copies, and the Dockerfile's
--     runtime packages provide every library the binary is linked against.
-- What stays unproved (the image build, admission, scheduling, NetworkPolicy
-- enforcement) is listed in examples/kubernetes/README.md.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")
local lyaml = require("lyaml")

local DIR = "examples/kubernetes"
-- The admin token this spec puts where the Deployment's Secret volume would be.
local ADMIN_TOKEN = "example-admin-token-0123456789abcdef"
local ADMIN_HEADERS = { "Authorization: Bearer " .. ADMIN_TOKEN }
local FILES = { "namespace.yaml", "rbac.yaml", "configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml",
  "networkpolicy.yaml" }

-- { kind = { name = object } } over every document of every manifest.
local function load_manifests()
  local objects, list = {}, {}
  for _, file in ipairs(FILES) do
    local text = assert(proc.read_file(DIR .. "/" .. file), "cannot read " .. file)
    for _, doc in ipairs(lyaml.load(text, { all = true })) do
      if doc ~= lyaml.null and doc ~= nil then
        assert.is_string(doc.kind, file)
        objects[doc.kind] = objects[doc.kind] or {}
        assert.is_nil(objects[doc.kind][doc.metadata.name], "duplicate " .. doc.kind .. " " .. doc.metadata.name)
        objects[doc.kind][doc.metadata.name] = doc
        list[#list + 1] = { file = file, doc = doc }
      end
    end
  end
  return objects, list
end

local function only(objects, kind)
  local found
  for _, obj in pairs(objects[kind] or {}) do
    assert.is_nil(found, "more than one " .. kind)
    found = obj
  end
  assert.truthy(found, "no " .. kind)
  return found
end

-- "--flag value" pairs and bare "--flag"s of an argument list.
local function parse_args(args)
  local flags = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    assert.truthy(a:match("^%-%-"), "unexpected argument " .. a)
    if args[i + 1] and not args[i + 1]:match("^%-%-") then
      flags[a] = args[i + 1]
      i = i + 2
    else
      flags[a] = true
      i = i + 1
    end
  end
  return flags
end

local function seconds(duration)
  local n, unit = duration:match("^(%d+)(%a+)$")
  local mult = { s = 1, m = 60, h = 3600 }
  assert.truthy(n and mult[unit], "cannot read duration " .. duration)
  return tonumber(n) * mult[unit]
end

local function matches(selector, labels)
  for k, v in pairs(selector) do
    if labels[k] ~= v then return false end
  end
  return true
end

describe("examples/kubernetes manifests", function()
  local objects, list, deploy, pod, container, flags, ports

  lazy_setup(function()
    objects, list = load_manifests()
    deploy = only(objects, "Deployment")
    pod = deploy.spec.template.spec
    assert.equal(1, #pod.containers)
    container = pod.containers[1]
    flags = parse_args(container.args)
    ports = {}
    for _, p in ipairs(container.ports) do ports[p.name] = p.containerPort end
  end)

  it("put every namespaced object in the one namespace, and the Namespace enforces 'restricted'", function()
    local ns = only(objects, "Namespace")
    assert.equal("restricted", ns.metadata.labels["pod-security.kubernetes.io/enforce"])
    local cluster_scoped = { Namespace = true, ClusterRole = true, ClusterRoleBinding = true }
    for _, entry in ipairs(list) do
      if not cluster_scoped[entry.doc.kind] then
        assert.equal(ns.metadata.name, entry.doc.metadata.namespace, entry.file .. " " .. entry.doc.kind)
      end
    end
  end)

  it("grant create on tokenreviews and subjectaccessreviews and nothing else, to the pods' ServiceAccount", function()
    local role = only(objects, "ClusterRole")
    local grants = {}
    for _, rule in ipairs(role.rules) do
      assert.is_nil(rule.nonResourceURLs)
      assert.is_nil(rule.resourceNames)
      for _, g in ipairs(rule.apiGroups) do
        for _, r in ipairs(rule.resources) do
          for _, v in ipairs(rule.verbs) do grants[#grants + 1] = g .. "/" .. r .. ":" .. v end
        end
      end
    end
    table.sort(grants)
    assert.same({ "authentication.k8s.io/tokenreviews:create", "authorization.k8s.io/subjectaccessreviews:create" },
      grants)
    local binding = only(objects, "ClusterRoleBinding")
    assert.same({ apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = role.metadata.name },
      binding.roleRef)
    local sa = only(objects, "ServiceAccount")
    assert.same({ { kind = "ServiceAccount", name = sa.metadata.name, namespace = sa.metadata.namespace } },
      binding.subjects)
    assert.equal(sa.metadata.name, pod.serviceAccountName)
    assert.is_not_false(pod.automountServiceAccountToken)
  end)

  it("run 2 replicas that select their own pods, spread across nodes", function()
    assert.equal(2, deploy.spec.replicas)
    local labels = deploy.spec.template.metadata.labels
    assert.is_true(matches(deploy.spec.selector.matchLabels, labels))
    local hostname_spread
    for _, c in ipairs(pod.topologySpreadConstraints or {}) do
      if c.topologyKey == "kubernetes.io/hostname" then hostname_spread = c end
    end
    assert.truthy(hostname_spread, "no spread across kubernetes.io/hostname")
    assert.equal("DoNotSchedule", hostname_spread.whenUnsatisfiable)
    assert.is_true(matches(hostname_spread.labelSelector.matchLabels, labels))
    assert.equal(0, deploy.spec.strategy.rollingUpdate.maxUnavailable)
  end)

  it("run the container locked down: non-root 65532, read-only root, no escalation, no capabilities, RuntimeDefault seccomp", function()
    local sc = container.securityContext
    assert.is_true(sc.runAsNonRoot)
    assert.equal(65532, sc.runAsUser)
    assert.is_true(sc.readOnlyRootFilesystem)
    assert.is_false(sc.allowPrivilegeEscalation)
    assert.same({ "ALL" }, sc.capabilities.drop)
    assert.is_nil(sc.capabilities.add)
    assert.equal("RuntimeDefault", sc.seccompProfile.type)
    assert.is_nil(sc.privileged)
    assert.equal("RuntimeDefault", pod.securityContext.seccompProfile.type)
    assert.is_true(pod.securityContext.runAsNonRoot)
    assert.is_nil(pod.hostNetwork)
    for _, k in ipairs{ "cpu", "memory" } do
      assert.truthy(container.resources.requests[k], "no " .. k .. " request")
      assert.truthy(container.resources.limits[k], "no " .. k .. " limit")
    end
  end)

  it("give the gateway the issue's flags, and no API server flags (in-cluster configuration)", function()
    assert.equal("0.0.0.0:8080", flags["--listen"])
    assert.equal("0.0.0.0:9090", flags["--admin-listen"])
    assert.equal("/etc/tokengate/policy.lua", flags["--policy"])
    assert.is_true(flags["--policy-watch"])
    for _, f in ipairs{ "--apiserver", "--apiserver-ca", "--apiserver-token-file", "--kubeconfig", "--context" } do
      assert.is_nil(flags[f], f .. " would replace the in-cluster configuration")
    end
    assert.equal(8080, ports.http)
    assert.equal(9090, ports.admin)
  end)

  it("probe /livez and /readyz on the admin port", function()
    assert.equal("/livez", container.livenessProbe.httpGet.path)
    assert.equal("/readyz", container.readinessProbe.httpGet.path)
    for _, probe in ipairs{ container.livenessProbe, container.readinessProbe } do
      local port = probe.httpGet.port
      assert.equal(9090, type(port) == "string" and ports[port] or port)
    end
  end)

  it("outlast the preStop sleep plus --shutdown-grace before the kubelet kills the pod", function()
    local cmd = container.lifecycle.preStop.exec.command
    assert.equal("sleep", cmd[1])
    local sleep_s = tonumber(cmd[2])
    local grace_s = seconds(flags["--shutdown-grace"] or "20s")
    assert.is_true(pod.terminationGracePeriodSeconds > sleep_s + grace_s,
      string.format("terminationGracePeriodSeconds %d <= preStop %d + --shutdown-grace %d",
        pod.terminationGracePeriodSeconds, sleep_s, grace_s))
  end)

  it("mount the policy ConfigMap as a directory (never subPath) where --policy points", function()
    local cm = only(objects, "ConfigMap")
    assert.is_nil(cm.immutable)
    local volume
    for _, v in ipairs(pod.volumes) do
      if v.configMap and v.configMap.name == cm.metadata.name then volume = v end
    end
    assert.truthy(volume, "the ConfigMap is not a volume of the pod")
    assert.is_nil(volume.configMap.items, "items would rename or drop keys")
    local mount
    for _, m in ipairs(container.volumeMounts) do
      assert.is_nil(m.subPath, "subPath mounts never receive ConfigMap updates")
      assert.is_nil(m.subPathExpr)
      if m.name == volume.name then mount = m end
    end
    assert.truthy(mount)
    local key = flags["--policy"]:sub(#mount.mountPath + 2)
    assert.equal(mount.mountPath .. "/" .. key, flags["--policy"])
    assert.is_string(cm.data[key], "the ConfigMap has no key " .. key)
  end)

  it("hold policies/default.lua in the ConfigMap", function()
    local cm = only(objects, "ConfigMap")
    local policy = proc.read_file("policies/default.lua")
    assert.is_true(cm.data["policy.lua"] == policy,
      "examples/kubernetes/configmap.yaml differs from policies/default.lua; regenerate it as its README says")
  end)

  it("expose only the main port in a Service", function()
    local labels = deploy.spec.template.metadata.labels
    for _, svc in pairs(objects.Service) do
      assert.is_true(matches(svc.spec.selector, labels))
      for _, p in ipairs(svc.spec.ports) do
        local target = type(p.targetPort) == "string" and ports[p.targetPort] or p.targetPort
        assert.equal(8080, target, "Service " .. svc.metadata.name .. " exposes port " .. tostring(target))
      end
    end
  end)

  it("keep one replica through voluntary disruptions", function()
    local pdb = only(objects, "PodDisruptionBudget")
    assert.equal(1, pdb.spec.minAvailable)
    assert.is_true(matches(pdb.spec.selector.matchLabels, deploy.spec.template.metadata.labels))
  end)

  it("let only the monitoring namespace reach the admin port, and clients the main port", function()
    local np = only(objects, "NetworkPolicy")
    assert.is_true(matches(np.spec.podSelector.matchLabels, deploy.spec.template.metadata.labels))
    assert.same({ "Ingress" }, np.spec.policyTypes)
    local admin_rules, main_rules = 0, 0
    for _, rule in ipairs(np.spec.ingress) do
      assert.truthy(rule.from and #rule.from > 0, "an ingress rule without from: allows everyone")
      assert.truthy(rule.ports and #rule.ports > 0, "an ingress rule without ports: allows every port")
      for _, p in ipairs(rule.ports) do
        local port = type(p.port) == "string" and ports[p.port] or p.port
        if port == 9090 then
          admin_rules = admin_rules + 1
          assert.same({ { namespaceSelector = { matchLabels = { ["kubernetes.io/metadata.name"] = "monitoring" } } } },
            rule.from)
        else
          assert.equal(8080, port)
          main_rules = main_rules + 1
          for _, peer in ipairs(rule.from) do assert.is_nil(peer.ipBlock, "the main port open to an address block") end
        end
      end
    end
    assert.equal(1, admin_rules)
    assert.equal(1, main_rules)
  end)

  it("annotate the pods for Prometheus on the admin port", function()
    local a = deploy.spec.template.metadata.annotations
    assert.equal("true", a["prometheus.io/scrape"])
    assert.equal(tostring(ports.admin), a["prometheus.io/port"])
    assert.equal("/metrics", a["prometheus.io/path"])
  end)
end)

describe("the Deployment's container, run here with in-cluster configuration", function()
  local fake, gw, dir, cm_dir, sa_dir, container, flags, version

  local TOKENS = {
    { token = "tok-team-a-sender", username = "system:serviceaccount:team-a:sender", uid = "uid-a",
      groups = { "system:serviceaccounts", "system:authenticated" } },
  }
  -- policies/default.lua asks a non-resource SubjectAccessReview of path and verb.
  local SAR_RULES = { { user = "system:serviceaccount:team-a:sender", verb = "create", path = "/hooks" } }

  -- The kubelet's ConfigMap volume layout: ..<timestamp>/<key>, ..data -> ..<timestamp>,
  -- <key> -> ..data/<key>; an update writes a new timestamped directory and renames a new
  -- ..data symlink over the old one (atomic), then removes the old directory.
  local function project(files)
    version = (version or 0) + 1
    local data = string.format("..2025_01_0%d_00_00_00.00000000%d", version, version)
    os.execute("mkdir -p " .. proc.quote(cm_dir .. "/" .. data))
    for key, content in pairs(files) do proc.write_file(cm_dir .. "/" .. data .. "/" .. key, content) end
    local old = proc.run("readlink " .. proc.quote(cm_dir .. "/..data") .. " 2>/dev/null"):match("(%S+)")
    local script = "cd " .. proc.quote(cm_dir) .. " && ln -s " .. proc.quote(data) .. " ..data_tmp && mv -T ..data_tmp ..data"
    for key in pairs(files) do
      script = script .. " && { [ -L " .. proc.quote(key) .. " ] || ln -s " .. proc.quote("..data/" .. key) .. " " ..
        proc.quote(key) .. "; }"
    end
    if old then script = script .. " && rm -rf " .. proc.quote(old) end
    local out, code = proc.run(script)
    assert.equal(0, code, out)
  end

  -- The container's args, with the listeners on loopback ports and the policy path moved
  -- from the mount path to this test's ConfigMap-style directory.
  local function argv_for(extra)
    local argv = { "env", "-u", "KUBECONFIG", "KUBERNETES_SERVICE_HOST=127.0.0.1",
      "KUBERNETES_SERVICE_PORT=" .. fake.addr:match(":(%d+)$"), proc.build_path("core/tokengate") }
    local replace = { ["--listen"] = "127.0.0.1:0", ["--admin-listen"] = "127.0.0.1:0",
      ["--policy"] = cm_dir .. "/policy.lua", ["--admin-token-file"] = dir .. "/admin-token" }
    local args = container.args
    local i = 1
    while i <= #args do
      argv[#argv + 1] = args[i]
      if replace[args[i]] then
        argv[#argv + 1] = replace[args[i]]
        i = i + 2
      else
        i = i + 1
      end
    end
    -- The only flag the pod does not have: where the service-account files are.
    argv[#argv + 1] = "--serviceaccount-dir"
    argv[#argv + 1] = sa_dir
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    return argv
  end

  local function policy_info()
    return cjson.decode(http.get(gw.admin_url .. "/policy", ADMIN_HEADERS).body)
  end

  lazy_setup(function()
    local text = assert(proc.read_file(DIR .. "/deployment.yaml"))
    container = lyaml.load(text).spec.template.spec.containers[1]
    flags = parse_args(container.args)
    local cm = lyaml.load((assert(proc.read_file(DIR .. "/configmap.yaml"))))
    fake = fake_mod.start{ tokens = TOKENS, sar_rules = SAR_RULES }
    dir = fake.dir
    cm_dir = dir .. "/configmap"
    sa_dir = dir .. "/serviceaccount"
    os.execute("mkdir -p " .. proc.quote(cm_dir) .. " " .. proc.quote(sa_dir))
    proc.write_file(sa_dir .. "/token", fake.credential)
    proc.write_file(sa_dir .. "/ca.crt", proc.read_file(fake.ca_file))
    proc.write_file(sa_dir .. "/namespace", "tokengate")
    -- What the Secret tokengate-admin-token projects as .../token.
    proc.write_file(dir .. "/admin-token", ADMIN_TOKEN .. "\n")
    project(cm.data)
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if fake then fake:stop() end
  end)

  it("passes --check, which chooses the in-cluster configuration", function()
    local quoted = {}
    for i, a in ipairs(argv_for{ "--check" }) do quoted[i] = proc.quote(a) end
    local out, code = proc.run(table.concat(quoted, " "))
    assert.equal(0, code, out)
    assert.truthy(out:find("apiserver: in-cluster", 1, true), out)
    assert.truthy(out:find("policy ok: " .. cm_dir .. "/policy.lua", 1, true), out)
  end)

  it("serves, answers the manifest's probe paths, and authorizes with the ConfigMap's policy", function()
    gw = setmetatable({ dir = dir }, gateway_mod)
    gw.log = dir .. "/gateway.log"
    gw.handle = proc.spawn(argv_for(), gw.log)
    gw.url = "http://" .. proc.wait_listening(gw.handle, "main", 10)
    gw.admin_url = "http://" .. proc.wait_listening(gw.handle, "admin", 10)
    gw.admin_headers = ADMIN_HEADERS
    assert.truthy(gw:log_text():find('"source":"in-cluster"', 1, true), gw:log_text())
    local deadline = proc.now() + 10
    local ready
    repeat
      ready = http.get(gw.admin_url .. container.readinessProbe.httpGet.path).status
      if ready ~= 200 then proc.sleep(0.1) end
    until ready == 200 or proc.now() > deadline
    assert.equal(200, ready)
    assert.equal(200, http.get(gw.admin_url .. container.livenessProbe.httpGet.path).status)
    -- Probes need no token; what Prometheus and operators read does.
    assert.equal(401, http.get(gw.admin_url .. "/metrics").status)
    assert.equal(200, http.get(gw.admin_url .. "/metrics", ADMIN_HEADERS).status)
    assert.is_nil(gw:log_text():find("beyond loopback", 1, true))

    -- The Deployment names ingress-nginx as the proxy in front: its auth subrequest
    -- carries the client's request as X-Original-URL and X-Original-Method.
    local function subrequest(token, method)
      return gw:request(token, "/auth", { "X-Original-URL: https://app.example/hooks", "X-Original-Method: " .. method })
    end
    local allowed = subrequest("tok-team-a-sender", "POST")
    assert.equal(200, allowed.status)
    assert.equal("system:serviceaccount:team-a:sender", allowed.headers["x-remote-user"])
    assert.equal(403, subrequest("tok-team-a-sender", "GET").status) -- GET: verb get, not granted
    assert.equal(401, subrequest("not-a-token", "POST").status)
    assert.equal(400, gw:request("tok-team-a-sender", "/hooks").status) -- not from ingress-nginx
  end)

  it("keeps the running policy when the ConfigMap is updated with a broken one, and reports it", function()
    local before = policy_info()
    assert.is_true(before.watch)
    assert.equal(0, before.reloads.failure)
    project{ ["policy.lua"] = "return { authorize = function(req, user) return tg.allow{ end }\n" }
    local deadline = proc.now() + 10
    local m
    repeat
      proc.sleep(0.2)
      m = gw:metrics()
    until m['gateway_policy_reloads_total{result="failure"}'] == 1 or proc.now() > deadline
    assert.equal(1, m['gateway_policy_reloads_total{result="failure"}'])
    local after = policy_info()
    assert.equal(before.sha256, after.sha256)
    assert.truthy(after.last_error ~= "", "GET /policy shows no error")
    assert.equal(200, gw:request("tok-team-a-sender", "/auth", { "X-Original-URL: https://app.example/hooks",
      "X-Original-Method: POST" }).status)
    assert.truthy(gw:log_text():find("policy load failed", 1, true))
  end)

  it("loads the fixed policy at the next ConfigMap update", function()
    local before = policy_info()
    local fixed = "-- fixed\n" .. proc.read_file("policies/default.lua")
    project{ ["policy.lua"] = fixed }
    local deadline = proc.now() + 10
    local after
    repeat
      proc.sleep(0.2)
      after = policy_info()
    until after.sha256 ~= before.sha256 or proc.now() > deadline
    assert.are_not.equal(before.sha256, after.sha256)
    assert.equal(before.reloads.success + 1, after.reloads.success)
    assert.equal(200, gw:request("tok-team-a-sender", "/auth", { "X-Original-URL: https://app.example/hooks",
      "X-Original-Method: POST" }).status)
  end)
end)

describe("what examples/kubernetes/Dockerfile relies on", function()
  local dockerfile = proc.read_file(DIR .. "/Dockerfile") or ""

  -- The runtime stage's apt-get install list.
  local function runtime_packages()
    local runtime = dockerfile:match(".*\nFROM ([^\n]*\n.*)$")
    local install = runtime:match("apt%-get install (.-)&&")
    local pkgs = {}
    for word in install:gsub("\\\n", " "):gmatch("%S+") do
      if not word:match("^%-") then pkgs[word] = true end
    end
    return pkgs
  end

  it("builds on Debian 12 in two stages and runs as 65532 with the tokengate entrypoint", function()
    local froms = {}
    for from in dockerfile:gmatch("\nFROM ([^\n]+)") do froms[#froms + 1] = from end
    assert.same({ "debian:12-slim AS build", "debian:12-slim" }, froms)
    assert.truthy(dockerfile:find('\nUSER 65532:65532\n', 1, true))
    assert.truthy(dockerfile:find('\nENTRYPOINT %["tokengate"%]\n'))
    assert.truthy(dockerfile:find("cmake --install /tmp/build --prefix /usr/local", 1, true))
  end)

  it("installs, with cmake --install, a binary that tells its build and checks the shipped policies", function()
    local prefix = proc.tmpdir()
    local out, code = proc.run("cmake --install " .. proc.quote(os.getenv("TOKENGATE_BUILD_DIR") or "build") ..
      " --prefix " .. proc.quote(prefix))
    assert.equal(0, code, out)
    local bin = prefix .. "/bin/tokengate"
    out, code = proc.run(proc.quote(bin) .. " --version")
    assert.equal(0, code, out)
    assert.truthy(out:match("^tokengate %d+%.%d+%.%d+ %(.+%)\n$"), out)
    for _, f in ipairs{ "default.lua", "per_namespace_ttl.lua", "resource_mapping.lua" } do
      out, code = proc.run(proc.quote(bin) .. " --check --policy " .. proc.quote(prefix .. "/share/tokengate/policies/" .. f))
      assert.equal(0, code, out)
      assert.truthy(out:find("configuration ok", 1, true), out)
    end
    -- The policy-testing helpers for busted users.
    assert.truthy(proc.read_file(prefix .. "/share/tokengate/lua/tokengate/testing.lua"))
    proc.run("rm -rf " .. proc.quote(prefix))
  end)

  it("lists, in the runtime stage, the Debian package of every library the binary links", function()
    local pkgs = runtime_packages()
    assert.is_true(pkgs["ca-certificates"])
    local bin = proc.build_path("core/tokengate")
    local out, code = proc.run("readelf -d " .. proc.quote(bin))
    assert.equal(0, code, out)
    local missing = {}
    local n = 0
    for lib in out:gmatch("NEEDED%)%s+Shared library: %[([^%]]+)%]") do
      n = n + 1
      local path = proc.run("ldconfig -p | awk -v l=" .. proc.quote(lib) .. " '$1 == l { print $NF; exit }'"):match("(%S+)")
      assert.truthy(path, "cannot find " .. lib)
      -- dpkg knows a file by the path its package installed it at, which on a merged-/usr
      -- system may be the name ldconfig reports or the one it resolves to.
      local owner
      for _, candidate in ipairs{ path, proc.run("readlink -f " .. proc.quote(path)):match("(%S+)") } do
        local listing, status = proc.run("dpkg -S " .. proc.quote(candidate))
        if status == 0 then
          owner = listing:match("^([^:,]+)")
          break
        end
      end
      assert.truthy(owner, "no package owns " .. lib)
      -- libc6 is in the base image; the sanitizer runtimes (./run test-asan's build) are
      -- never in an image.
      local sanitizer = owner:match("^lib%a*san%d+$")
      if owner ~= "libc6" and not sanitizer and not pkgs[owner] then
        missing[#missing + 1] = lib .. " (" .. owner .. ")"
      end
    end
    assert.is_true(n >= 6)
    assert.same({}, missing)
  end)
end)
