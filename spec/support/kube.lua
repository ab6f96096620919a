-- A genuine Kubernetes control plane for integration specs, in the spirit of envtest: a
-- real kube-apiserver (the binary named by $TOKENGATE_KUBE_APISERVER) on Debian's etcd,
-- both on loopback, with a PKI made here. Only the API server runs (no controller-manager,
-- scheduler or kubelet): the spec creates the namespaces, ServiceAccounts, Pods, RBAC
-- objects and tokens it needs through the API itself.
--
--   local kube = require("support.kube")
--   if not kube.available() then ... end          -- the spec runner skips without it
--   local k = kube.start()
--   k:create_namespace("team-a")
--   local sa = k:create_serviceaccount("team-a", "caller")
--   local token = k:token("team-a", "caller", { audiences = {...}, pod = podobj })
--   local gw = gateway.start{ fake = k:gateway_target("tokengate-system", "tokengate"), ... }
--   k:stop()
--
-- Administration uses a static bearer token in system:masters (--token-auth-file); the
-- gateway itself authenticates as a real ServiceAccount bound to system:auth-delegator,
-- as it would in a cluster.
local cjson = require("cjson")
local proc = require("support.proc")
local http = require("support.http")

local kube = {}
local Kube = {}
Kube.__index = Kube

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/support"

kube.ISSUER = "https://kubernetes.default.svc.cluster.local"

-- The kube-apiserver binary, or nil (the specs are then reported as skipped).
function kube.available()
  local path = os.getenv("TOKENGATE_KUBE_APISERVER")
  if not path or path == "" then return nil end
  local f = io.open(path, "rb")
  if not f then return nil end
  f:close()
  return path
end

-- etcd and kube-apiserver are given their ports: proc.free_ports (several specs may run
-- at once).
local free_ports = proc.free_ports

local function random_hex(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(n)
  f:close()
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function must(cmd)
  local out, code = proc.run(cmd)
  assert(code == 0, cmd .. " failed:\n" .. out)
  return out
end

-- The certificates of gen_certs.sh (CA, serving certificate for 127.0.0.1/localhost), plus
-- the RSA key pair that signs ServiceAccount tokens and an unrelated one ("another
-- cluster's key").
local function make_pki(dir)
  must("sh " .. proc.quote(here .. "/gen_certs.sh") .. " " .. proc.quote(dir))
  for _, name in ipairs{ "sa", "other-sa" } do
    must(string.format("openssl genrsa -out %s 2048 && openssl rsa -in %s -pubout -out %s",
      proc.quote(dir .. "/" .. name .. ".key"), proc.quote(dir .. "/" .. name .. ".key"),
      proc.quote(dir .. "/" .. name .. ".pub")))
  end
end

local function wait_until(what, timeout_s, fn, log_path)
  local deadline = proc.now() + timeout_s
  while proc.now() < deadline do
    if fn() then return true end
    proc.sleep(0.1)
  end
  error("timed out waiting for " .. what .. (log_path and (":\n" .. (proc.read_file(log_path) or ""):sub(-3000)) or ""))
end

-- opts.apiserver_args: extra kube-apiserver flags (list); opts.timeout: seconds to wait for
-- etcd and the API server (default 90: a loaded 2-core machine is slow to start them).
function kube.start(opts)
  opts = opts or {}
  local binary = assert(kube.available(), "TOKENGATE_KUBE_APISERVER does not name a kube-apiserver binary")
  local self = setmetatable({}, Kube)
  self.binary = binary
  self.timeout = opts.timeout or 90
  self.dir = proc.tmpdir()
  make_pki(self.dir)
  self.ca_file = self.dir .. "/ca.crt"
  self.admin_token = random_hex(24)
  proc.write_file(self.dir .. "/static-tokens.csv", self.admin_token .. ",tokengate-spec-admin,spec-admin-uid,system:masters\n")
  self.extra_args = opts.apiserver_args or {}
  local ok, err = pcall(function()
    self:_start_etcd()
    self:_start_apiserver()
  end)
  if not ok then
    self:stop()
    error(err, 0)
  end
  return self
end

function Kube:_start_etcd()
  local ports = free_ports(3)
  self.etcd_url = "http://127.0.0.1:" .. ports[1]
  local peer = "http://127.0.0.1:" .. ports[2]
  self.etcd_log = self.dir .. "/etcd.log"
  self.etcd = proc.spawn({ "etcd", "--name", "kube", "--data-dir", self.dir .. "/etcd",
    "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
    "--initial-cluster", "kube=" .. peer, "--listen-metrics-urls", "http://127.0.0.1:" .. ports[3] }, self.etcd_log)
  wait_until("etcd", self.timeout, function()
    if not proc.alive(self.etcd) then error("etcd exited:\n" .. (proc.read_file(self.etcd_log) or "")) end
    return http.get(self.etcd_url .. "/health", nil, { timeout = 2 }).body:find('"health":"true"', 1, true) ~= nil
  end, self.etcd_log)
end

function Kube:_start_apiserver()
  self.port = self.port or free_ports(1)[1]
  self.url = "https://127.0.0.1:" .. self.port
  self.runs = (self.runs or 0) + 1
  self.apiserver_log = string.format("%s/kube-apiserver-%d.log", self.dir, self.runs)
  local argv = { self.binary,
    "--bind-address=127.0.0.1", "--secure-port=" .. self.port,
    "--etcd-servers=" .. self.etcd_url,
    "--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
    "--tls-cert-file=" .. self.dir .. "/server.crt", "--tls-private-key-file=" .. self.dir .. "/server.key",
    "--client-ca-file=" .. self.ca_file,
    "--service-account-issuer=" .. kube.ISSUER,
    "--service-account-key-file=" .. self.dir .. "/sa.pub",
    "--service-account-signing-key-file=" .. self.dir .. "/sa.key",
    "--authorization-mode=RBAC",
    "--token-auth-file=" .. self.dir .. "/static-tokens.csv",
    "--profiling=false" }
  for _, a in ipairs(self.extra_args) do argv[#argv + 1] = a end
  self.apiserver = proc.spawn(argv, self.apiserver_log)
  wait_until("kube-apiserver /readyz", self.timeout, function()
    if not proc.alive(self.apiserver) then
      error("kube-apiserver exited:\n" .. (proc.read_file(self.apiserver_log) or ""):sub(-3000))
    end
    return self:raw("GET", "/readyz", nil, { timeout = 3 }).status == 200
  end, self.apiserver_log)
end

-- Stops the API server (etcd keeps the cluster's state), waits down_s seconds, starts it
-- again on the same port with the same keys: tokens minted before stay valid.
function Kube:restart_apiserver(down_s)
  self:stop_apiserver()
  if down_s and down_s > 0 then proc.sleep(down_s) end
  self:_start_apiserver()
end

function Kube:stop_apiserver()
  proc.stop(self.apiserver, 20)
  self.apiserver = nil
end

function Kube:stop()
  if self.apiserver then proc.stop(self.apiserver, 20) end
  if self.etcd then proc.stop(self.etcd, 20) end
  self.apiserver, self.etcd = nil, nil
  if self.dir and not os.getenv("TOKENGATE_KEEP_KUBE") then os.execute("rm -rf " .. proc.quote(self.dir)) end
end

-- ---- REST -------------------------------------------------------------------------------

-- An API request as the administrator (or with opts.token). body: a Lua table (JSON) or a
-- string. Returns the http.lua result with .json decoded when the body is JSON.
function Kube:raw(method, path, body, opts)
  opts = opts or {}
  local headers = { "Authorization: Bearer " .. (opts.token or self.admin_token),
    "Accept: " .. (opts.accept or "application/json") }
  if body ~= nil then headers[#headers + 1] = "Content-Type: " .. (opts.content_type or "application/json") end
  -- cjson escapes "/" as "\/": valid JSON, but not a YAML escape, and apply patches are
  -- read as YAML. JSON never needs it, so undo it (a real backslash is "\\" and stays).
  if type(body) == "table" then body = cjson.encode(body):gsub("\\/", "/") end
  local res = http.request{ method = method, url = self.url .. path, headers = headers, body = body,
    cacert = self.ca_file, timeout = opts.timeout or 30 }
  local ok, decoded = pcall(cjson.decode, res.body)
  if ok and type(decoded) == "table" then res.json = decoded end
  return res
end

-- Like raw, but a status outside expect (default 2xx) is an error naming the answer.
function Kube:api(method, path, body, expect, opts)
  local res = self:raw(method, path, body, opts)
  local good = expect and expect[res.status] or (not expect and res.status >= 200 and res.status < 300)
  assert(good, string.format("%s %s answered %d: %s", method, path, res.status, res.body:sub(1, 600)))
  return res.json or {}, res
end

function Kube:create_namespace(name)
  return self:api("POST", "/api/v1/namespaces",
    { apiVersion = "v1", kind = "Namespace", metadata = { name = name } }, { [201] = true, [409] = true })
end

function Kube:create_serviceaccount(ns, name)
  return self:api("POST", "/api/v1/namespaces/" .. ns .. "/serviceaccounts",
    { apiVersion = "v1", kind = "ServiceAccount", metadata = { name = name } })
end

function Kube:delete_serviceaccount(ns, name)
  return self:api("DELETE", "/api/v1/namespaces/" .. ns .. "/serviceaccounts/" .. name)
end

-- A Pod object (never runs: no kubelet). Deleting it is immediate for the same reason.
function Kube:create_pod(ns, name, serviceaccount)
  return self:api("POST", "/api/v1/namespaces/" .. ns .. "/pods", {
    apiVersion = "v1", kind = "Pod", metadata = { name = name },
    spec = { serviceAccountName = serviceaccount, containers = { { name = "c", image = "example.invalid/none" } } },
  })
end

function Kube:delete_pod(ns, name)
  return self:api("DELETE", "/api/v1/namespaces/" .. ns .. "/pods/" .. name .. "?gracePeriodSeconds=0")
end

-- A token from the TokenRequest API. opts.audiences (list), opts.expiration (seconds,
-- default 3600; tokens minted in the same second with the same claims are the same string,
-- so vary it for distinct tokens), opts.pod (a Pod object: a pod-bound token).
function Kube:token(ns, sa, opts)
  opts = opts or {}
  local spec = { expirationSeconds = opts.expiration or 3600 }
  if opts.audiences then spec.audiences = opts.audiences end
  if opts.pod then
    spec.boundObjectRef = { kind = "Pod", apiVersion = "v1", name = opts.pod.metadata.name, uid = opts.pod.metadata.uid }
  end
  local body = self:api("POST", string.format("/api/v1/namespaces/%s/serviceaccounts/%s/token", ns, sa),
    { apiVersion = "authentication.k8s.io/v1", kind = "TokenRequest", spec = spec })
  return assert(body.status and body.status.token, "no token in the TokenRequest answer")
end

-- A direct TokenReview (as the administrator): the API server's own verdict.
function Kube:tokenreview(token, audiences)
  local spec = { token = token }
  if audiences then spec.audiences = audiences end
  local body = self:api("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
    { apiVersion = "authentication.k8s.io/v1", kind = "TokenReview", spec = spec })
  return body.status or {}
end

-- A ServiceAccount for the gateway, bound to system:auth-delegator (create tokenreviews
-- and subjectaccessreviews) and, with opts.watch, allowed to list and watch
-- serviceaccounts and pods (--watch-revocations). Returns the ServiceAccount object.
function Kube:create_gateway_account(ns, name, opts)
  opts = opts or {}
  self:create_namespace(ns)
  local sa = self:create_serviceaccount(ns, name)
  local function bind(binding, role)
    self:api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
      apiVersion = "rbac.authorization.k8s.io/v1", kind = "ClusterRoleBinding",
      metadata = { name = binding },
      roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = role },
      subjects = { { kind = "ServiceAccount", namespace = ns, name = name } },
    })
  end
  bind(ns .. ":" .. name .. ":auth-delegator", "system:auth-delegator")
  if opts.watch then
    self:api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
      apiVersion = "rbac.authorization.k8s.io/v1", kind = "ClusterRole",
      metadata = { name = ns .. ":" .. name .. ":revocations" },
      rules = { { apiGroups = { "" }, resources = { "serviceaccounts", "pods" }, verbs = { "list", "watch" } } },
    })
    bind(ns .. ":" .. name .. ":revocations", ns .. ":" .. name .. ":revocations")
  end
  return sa
end

-- What gateway.start needs of an API server ({url, ca_file, credential_file, dir}), the
-- credential being a fresh token of the ServiceAccount ns/name (opts as for token()).
function Kube:gateway_target(ns, name, opts)
  local file = string.format("%s/credential-%s-%s-%s", self.dir, ns, name, random_hex(4))
  proc.write_file(file, self:token(ns, name, opts) .. "\n")
  return { url = self.url, ca_file = self.ca_file, credential_file = file, dir = self.dir }
end

-- Binds a role: kind "Role" (in ns) or "ClusterRole"; subject a ServiceAccount.
function Kube:grant(opts)
  local rbac = "/apis/rbac.authorization.k8s.io/v1"
  local namespaced = opts.kind == "Role"
  local base = namespaced and (rbac .. "/namespaces/" .. opts.namespace) or rbac
  self:api("POST", base .. (namespaced and "/roles" or "/clusterroles"), {
    apiVersion = "rbac.authorization.k8s.io/v1", kind = opts.kind,
    metadata = { name = opts.name, namespace = namespaced and opts.namespace or nil }, rules = opts.rules,
  }, { [201] = true, [409] = true })
  self:api("POST", base .. (namespaced and "/rolebindings" or "/clusterrolebindings"), {
    apiVersion = "rbac.authorization.k8s.io/v1", kind = namespaced and "RoleBinding" or "ClusterRoleBinding",
    metadata = { name = opts.name, namespace = namespaced and opts.namespace or nil },
    roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = opts.kind, name = opts.name },
    subjects = { opts.subject },
  })
end

-- ---- the API server's own counters -------------------------------------------------------

-- Sum of the series of metric name in a Prometheus text whose labels include every pair
-- of match (e.g. { resource = "tokenreviews", code = "201" }).
function kube.sum_metric(text, name, match)
  local total = 0
  for labels, value in text:gmatch("\n" .. name .. "{([^}]*)} (%S+)") do
    local ok = true
    for k, v in pairs(match or {}) do
      if not labels:find(k .. '="' .. v .. '"', 1, true) then ok = false; break end
    end
    if ok then total = total + tonumber(value) end
  end
  return total
end

function Kube:metrics_text()
  return self:raw("GET", "/metrics").body
end

-- TokenReviews the API server has answered so far (any code).
function Kube:tokenreviews()
  return kube.sum_metric(self:metrics_text(), "apiserver_request_total", { resource = "tokenreviews", verb = "POST" })
end

function Kube:subjectaccessreviews()
  return kube.sum_metric(self:metrics_text(), "apiserver_request_total",
    { resource = "subjectaccessreviews", verb = "POST" })
end

-- ---- tokens made here -------------------------------------------------------------------

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function base64url(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chunk = {}
    for j = 3, 0, -1 do
      local idx = math.floor(n / (64 ^ j)) % 64 + 1
      chunk[#chunk + 1] = b64chars:sub(idx, idx)
    end
    local keep = c and 4 or (b and 3 or 2)
    out[#out + 1] = table.concat(chunk):sub(1, keep)
  end
  return table.concat(out)
end
kube.base64url = base64url

-- A ServiceAccount JWT signed here (RS256) with key ("sa": this cluster's signing key;
-- "other-sa": another cluster's). claims overrides the defaults (a valid token of
-- ns/name that expires in an hour); header adds to {alg = "RS256", typ = "JWT"} (e.g. a kid).
function Kube:sign_token(key, ns, name, uid, claims, header)
  local now = os.time()
  local payload = {
    iss = kube.ISSUER, aud = { kube.ISSUER }, sub = "system:serviceaccount:" .. ns .. ":" .. name,
    iat = now, nbf = now, exp = now + 3600,
    ["kubernetes.io"] = { namespace = ns, serviceaccount = { name = name, uid = uid } },
  }
  for k, v in pairs(claims or {}) do payload[k] = v end
  local head = { alg = "RS256", typ = "JWT" }
  for k, v in pairs(header or {}) do head[k] = v end
  local input = base64url(cjson.encode(head)) .. "." .. base64url(cjson.encode(payload))
  local tmp = self.dir .. "/sign-" .. random_hex(4)
  proc.write_file(tmp, input)
  local out = must(string.format("openssl dgst -sha256 -sign %s %s | od -An -v -tx1",
    proc.quote(self.dir .. "/" .. key .. ".key"), proc.quote(tmp)))
  os.remove(tmp)
  local sig = out:gsub("%s", ""):gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  return input .. "." .. base64url(sig)
end

-- The key id kube-apiserver puts in the tokens it signs (its published JWKS has one key).
function Kube:signing_kid()
  -- kube-apiserver answers 406 to Accept: application/json here.
  local body = self:api("GET", "/openid/v1/jwks", nil, nil, { accept = "application/jwk-set+json" })
  return assert(body.keys and body.keys[1] and body.keys[1].kid, "no kid in /openid/v1/jwks")
end

-- ---- manifests ----------------------------------------------------------------------------

-- REST collection paths of the kinds the examples use.
local collections = {
  Namespace = { "/api/v1", "namespaces", false },
  ServiceAccount = { "/api/v1", "serviceaccounts", true },
  ConfigMap = { "/api/v1", "configmaps", true },
  Service = { "/api/v1", "services", true },
  Secret = { "/api/v1", "secrets", true },
  Deployment = { "/apis/apps/v1", "deployments", true },
  StatefulSet = { "/apis/apps/v1", "statefulsets", true },
  PodDisruptionBudget = { "/apis/policy/v1", "poddisruptionbudgets", true },
  NetworkPolicy = { "/apis/networking.k8s.io/v1", "networkpolicies", true },
  ClusterRole = { "/apis/rbac.authorization.k8s.io/v1", "clusterroles", false },
  ClusterRoleBinding = { "/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", false },
  Role = { "/apis/rbac.authorization.k8s.io/v1", "roles", true },
  RoleBinding = { "/apis/rbac.authorization.k8s.io/v1", "rolebindings", true },
}
kube.collections = collections

-- The collection URL path of a manifest object (nil for kinds not listed above).
function kube.collection_path(obj)
  local c = collections[obj.kind]
  if not c then return nil end
  if c[3] then
    return string.format("%s/namespaces/%s/%s", c[1], (obj.metadata or {}).namespace or "default", c[2])
  end
  return c[1] .. "/" .. c[2]
end

-- Server-side apply of obj (a decoded manifest) with dryRun=All and strict field
-- validation, as `kubectl apply --server-side --dry-run=server --validate=strict` sends it:
-- the API server runs defaulting, validation and admission, whether the object exists or
-- not, and stores nothing. Returns the http.lua result.
function Kube:dry_run_apply(obj)
  local path = assert(kube.collection_path(obj), "no REST path known for kind " .. tostring(obj.kind))
  return self:raw("PATCH", path .. "/" .. obj.metadata.name ..
    "?dryRun=All&fieldManager=tokengate-spec&fieldValidation=Strict&force=true", obj,
    { content_type = "application/apply-patch+yaml" })
end

return kube
