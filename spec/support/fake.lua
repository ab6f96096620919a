-- The fake kube-apiserver (spec/support/fake-apiserver) for busted specs.
--
--   local fake = require("support.fake")
--   local f = fake.start{ tokens = { { token = "t", username = "system:serviceaccount:a:b" } },
--                         sar_rules = { { user = "*", verb = "get" } } }
--   f.url, f.control_url, f.ca_file, f.credential, f.credential_file, f.dir
--   f:config{ latency_ms = 200 }   f:stats()   f:reset_stats()   f:reset()
--   f:reload(new_tokens)           f:set_credential("new")       f:stop()   f:restart()
--
-- ServiceAccounts and Pods (list/watch, see fake_cluster.c): every ServiceAccount token of
-- the table has its ServiceAccount (uid = the user's uid), every token with extra
-- authentication.kubernetes.io/pod-uid and pod-name its Pod.
--   f:cluster()                                   resourceVersion, counts, open watches
--   f:create_serviceaccount(ns, name, uid?)       f:delete_serviceaccount(ns, name)
--   f:bulk_create_serviceaccounts(n, ns?)         f:create_pod{ namespace=, name=, uid=?, serviceaccount=? }
--   f:delete_pod(ns, name)                        deleting revokes the related tokens
--   f:drop_watches{ resource=?, graceful=? }      f:send_bookmarks{ resource=? }
--   f:compact{ resource=? }                       f:expire_watches{ resource=? }
--   f:list(resource, query)  -> http result with .json   (resource: "serviceaccounts"/"pods")
--   f:watch_command(resource, query, args)         a curl command line streaming a watch
--
-- start() makes certificates (gen_certs.sh), a token file and a credential file in a
-- private directory, runs the binary from the build tree and waits until both listeners
-- are up. stop() stops it and removes the directory unless the caller provided it.
-- Knob and stats names are those of the control API (see fake_control.c).
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")

local fake = {}
local Fake = {}
Fake.__index = Fake

local TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
local SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
fake.TOKENREVIEW_PATH = TOKENREVIEW_PATH
fake.SAR_PATH = SAR_PATH

-- The directory of this file, to find gen_certs.sh whatever the working directory.
local here = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "spec/support"

-- lua-cjson encodes an empty table as {}; the fake wants [] for these lists.
local EMPTY = "\1empty-array\1"
local ARRAY_KEYS = { tokens = true, sar_rules = true, groups = true, audiences = true }

local function mark_empty_arrays(v, key)
  if type(v) ~= "table" then return v end
  if next(v) == nil and ARRAY_KEYS[key] then return EMPTY end
  local out = {}
  for k, item in pairs(v) do out[k] = mark_empty_arrays(item, k) end
  return out
end

local function encode(v)
  local text = cjson.encode(mark_empty_arrays(v))
  return (text:gsub('"\\u0001empty%-array\\u0001"', "[]"))
end
fake.encode = encode

local function write_tokens(self, tokens, sar_rules)
  self.tokens, self.sar_rules = tokens or {}, sar_rules or {}
  proc.write_file(self.tokens_file, encode{ tokens = self.tokens, sar_rules = self.sar_rules })
end

-- busted never seeds math.random, so every spec process would draw the same numbers: the
-- same "random" credentials, and the same temporary file names in support/http.lua, which
-- collide when specs run in parallel (ctest -j). Seed once from the kernel.
local function seed_random()
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(4) or ""
  if f then f:close() end
  local seed = os.time()
  for i = 1, #bytes do seed = seed * 256 + bytes:byte(i) end
  math.randomseed(seed % 2147483647)
end
seed_random()

local function random_credential()
  local chars = {}
  for i = 1, 32 do chars[i] = string.char(string.byte("a") + math.random(0, 25)) end
  return "cred-" .. table.concat(chars)
end

-- Start a fake API server. opts: tokens (list), sar_rules (list), credential (string,
-- random by default), dir (keep files there instead of a temporary directory),
-- listen / control_listen (addresses, default 127.0.0.1:0),
-- wrapper (argv list put in front, e.g. { "valgrind", "--error-exitcode=9" }; default:
-- the words of $TOKENGATE_FAKE_WRAPPER, to run every spec's fake under a tool),
-- timeout (seconds to wait for the listeners, default 10).
function fake.start(opts)
  opts = opts or {}
  local self = setmetatable({}, Fake)
  self.dir = opts.dir or proc.tmpdir()
  self.owns_dir = opts.dir == nil
  local out, code = proc.run("sh " .. proc.quote(here .. "/gen_certs.sh") .. " " .. proc.quote(self.dir))
  assert(code == 0, "gen_certs.sh failed:\n" .. out)

  self.ca_file = self.dir .. "/ca.crt"
  self.tokens_file = self.dir .. "/tokens.json"
  self.credential_file = self.dir .. "/credential"
  self.credential = opts.credential or random_credential()
  write_tokens(self, opts.tokens, opts.sar_rules)
  -- A trailing newline, as in a mounted token file; the fake trims it.
  proc.write_file(self.credential_file, self.credential .. "\n")

  self.wrapper = opts.wrapper
  if not self.wrapper and os.getenv("TOKENGATE_FAKE_WRAPPER") then
    self.wrapper = {}
    for word in os.getenv("TOKENGATE_FAKE_WRAPPER"):gmatch("%S+") do self.wrapper[#self.wrapper + 1] = word end
  end
  self.timeout = opts.timeout
  self.runs = 0
  local ok, err = pcall(self._spawn, self, opts.listen or "127.0.0.1:0", opts.control_listen or "127.0.0.1:0")
  if not ok then
    self:stop()
    error(err, 0)
  end
  return self
end

-- Run the binary on the given addresses and wait for both listeners.
function Fake:_spawn(listen, control_listen)
  self.runs = self.runs + 1
  -- One log per run, so that a restart's "listening" lines are its own.
  self.log = self.dir .. (self.runs == 1 and "/fake-apiserver.log" or ("/fake-apiserver-" .. self.runs .. ".log"))
  local argv = {}
  for _, a in ipairs(self.wrapper or {}) do argv[#argv + 1] = a end
  for _, a in ipairs{ proc.build_path("spec/support/fake-apiserver"),
      "--listen", listen, "--control-listen", control_listen,
      "--cert", self.dir .. "/server.crt", "--key", self.dir .. "/server.key",
      "--tokens", self.tokens_file, "--credential-file", self.credential_file } do
    argv[#argv + 1] = a
  end
  self.handle = proc.spawn(argv, self.log)
  local ok, err = pcall(function()
    self.addr = proc.wait_listening(self.handle, "api", self.timeout)
    self.control_addr = proc.wait_listening(self.handle, "control", self.timeout)
  end)
  if not ok then
    proc.stop(self.handle)
    self.handle = nil
    error(err, 0)
  end
  self.url = "https://" .. self.addr
  self.control_url = "http://" .. self.control_addr
  self.tokenreview_url = self.url .. TOKENREVIEW_PATH
  self.sar_url = self.url .. SAR_PATH
end

-- Stop the process and start a new one on the same addresses, files and credential, as
-- when kube-apiserver restarts: open connections and watches are cut, the ServiceAccounts
-- and Pods are those of the current token table again (objects created or deleted at the
-- control listener are forgotten), and resourceVersions handed out before are too old to
-- watch from (410). down_s: seconds to stay down in between (default 0).
function Fake:restart(down_s)
  local addr, control_addr = self.addr, self.control_addr
  proc.stop(self.handle)
  self.handle = nil
  if down_s and down_s > 0 then proc.sleep(down_s) end
  -- The port was just released; another process could take it in between, but on a
  -- test machine's loopback that does not happen in practice. Retry a few times for
  -- TIME_WAIT-free rebinding delays.
  local last_err
  for _ = 1, 20 do
    local ok, err = pcall(self._spawn, self, addr, control_addr)
    if ok then return self end
    last_err = err
    proc.sleep(0.1)
  end
  error("fake-apiserver did not restart on " .. addr .. ": " .. tostring(last_err))
end

-- POST or GET on the control listener; returns the decoded JSON answer, errors otherwise.
function Fake:control(method, path, body)
  local res = http.request{ method = method, url = self.control_url .. path, body = body,
    headers = body and { "Content-Type: application/json" } or nil, timeout = 10 }
  if res.status ~= 200 then
    error(string.format("%s %s: %d %s", method, path, res.status, res.body), 2)
  end
  return cjson.decode(res.body)
end

-- Merge knobs into the current configuration; returns the resulting configuration.
function Fake:config(knobs)
  return self:control("POST", "/control/config", cjson.encode(knobs))
end

function Fake:get_config() return self:control("GET", "/control/config") end
function Fake:stats() return self:control("GET", "/control/stats") end
function Fake:reset_stats() return self:control("POST", "/control/reset-stats", "") end
-- Counters and knobs back to their defaults.
function Fake:reset() return self:control("POST", "/control/reset", "") end

-- Re-read the token table; with arguments, first replace its tokens (and the SAR rules,
-- which otherwise stay as they were), e.g. to delete a ServiceAccount.
function Fake:reload(tokens, sar_rules)
  if tokens then write_tokens(self, tokens, sar_rules or self.sar_rules) end
  return self:control("POST", "/control/reload", "")
end

-- Rotate the credential the fake accepts (it re-reads the file on every request).
function Fake:set_credential(credential)
  self.credential = credential
  proc.write_file(self.credential_file, credential .. "\n")
end

-- One TokenReview over TLS with the current credential; returns the http.lua result with
-- .json (decoded body, when JSON). opts: audiences, credential, timeout.
function Fake:review(token, opts)
  opts = opts or {}
  local spec = { token = token }
  if opts.audiences then spec.audiences = opts.audiences end
  local res = http.post(self.tokenreview_url,
    cjson.encode{ apiVersion = "authentication.k8s.io/v1", kind = "TokenReview", spec = spec },
    { "Authorization: Bearer " .. (opts.credential or self.credential),
      "Content-Type: application/json" },
    { cacert = self.ca_file, timeout = opts.timeout })
  local ok, doc = pcall(cjson.decode, res.body)
  res.json = ok and doc or nil
  return res
end

-- One SubjectAccessReview with the given spec table; same result shape as review().
function Fake:sar(spec, opts)
  opts = opts or {}
  local res = http.post(self.sar_url,
    cjson.encode{ apiVersion = "authorization.k8s.io/v1", kind = "SubjectAccessReview", spec = spec },
    { "Authorization: Bearer " .. (opts.credential or self.credential),
      "Content-Type: application/json" },
    { cacert = self.ca_file, timeout = opts.timeout })
  local ok, doc = pcall(cjson.decode, res.body)
  res.json = ok and doc or nil
  return res
end

-- ---- ServiceAccounts, Pods and watches ----

-- lua-cjson encodes an empty table as {}, which is what the control API wants here.
local function json_body(t) return cjson.encode(t or {}) end

function Fake:cluster() return self:control("GET", "/control/cluster") end

function Fake:create_serviceaccount(ns, name, uid)
  return self:control("POST", "/control/serviceaccounts/create", json_body{ namespace = ns, name = name, uid = uid })
end

-- Deletes the ServiceAccount: a DELETED event on every serviceaccounts watch, and later
-- TokenReviews of its tokens are unauthenticated. Returns { deleted = object }.
function Fake:delete_serviceaccount(ns, name)
  return self:control("POST", "/control/serviceaccounts/delete", json_body{ namespace = ns, name = name })
end

-- n ServiceAccounts named bulk/sa-NNNNNNN (or in namespace ns), with ADDED events.
function Fake:bulk_create_serviceaccounts(n, ns)
  return self:control("POST", "/control/serviceaccounts/bulk-create", json_body{ count = n, namespace = ns })
end

-- pod = { namespace =, name =, uid = (optional), serviceaccount = (default "default") }
function Fake:create_pod(pod)
  return self:control("POST", "/control/pods/create", json_body(pod))
end

-- MODIFIED (deletionTimestamp) then DELETED on every pods watch; tokens bound to the pod
-- are unauthenticated from then on.
function Fake:delete_pod(ns, name)
  return self:control("POST", "/control/pods/delete", json_body{ namespace = ns, name = name })
end

-- Cut open watches (opts.resource: "serviceaccounts" or "pods", default both): the
-- connection is closed, or with opts.graceful the body just ends. Returns the count.
function Fake:drop_watches(opts)
  return self:control("POST", "/control/watch/drop", json_body(opts)).dropped
end

-- A BOOKMARK event on every open watch that allowed bookmarks. Returns the count.
function Fake:send_bookmarks(opts)
  return self:control("POST", "/control/watch/bookmark", json_body(opts)).sent
end

-- Forget the event history: every resourceVersion handed out so far becomes too old to
-- watch from or continue a list with (410). Open watches go on.
function Fake:compact(opts)
  return self:control("POST", "/control/watch/compact", json_body(opts))
end

-- Compact, then end every open watch with an ERROR event holding a 410 Expired Status.
function Fake:expire_watches(opts)
  return self:control("POST", "/control/watch/expire", json_body(opts)).expired
end

local RESOURCE_PATHS = { serviceaccounts = "/api/v1/serviceaccounts", pods = "/api/v1/pods" }
fake.RESOURCE_PATHS = RESOURCE_PATHS

-- GET a list (query: a string such as "limit=2", optional); .json holds the decoded body.
function Fake:list(resource, query, opts)
  opts = opts or {}
  local url = self.url .. assert(RESOURCE_PATHS[resource], "unknown resource") .. (query and ("?" .. query) or "")
  local res = http.get(url, { "Authorization: Bearer " .. (opts.credential or self.credential) },
    { cacert = self.ca_file, timeout = opts.timeout })
  local ok, doc = pcall(cjson.decode, res.body)
  res.json = ok and doc or nil
  return res
end

-- The shell command of a watch with curl (-N, headers to stdout with -i), e.g. to run in
-- the background with its output in a file: query like "resourceVersion=12&allowWatchBookmarks=true";
-- args: extra curl arguments ("--http1.1", "--max-time 3").
function Fake:watch_command(resource, query, args)
  local url = self.url .. assert(RESOURCE_PATHS[resource], "unknown resource") .. "?watch=1" ..
    (query and query ~= "" and ("&" .. query) or "")
  return table.concat({ "curl", "-sS", "-N", "-i", "--cacert", proc.quote(self.ca_file),
    "-H", proc.quote("Authorization: Bearer " .. self.credential), args or "", proc.quote(url) }, " ")
end

function Fake:read_log() return proc.read_file(self.log) or "" end

-- Stop the process (SIGTERM, then SIGKILL) and remove the directory start() made.
function Fake:stop(timeout_s)
  if self.handle then
    proc.stop(self.handle, timeout_s)
    self.handle = nil
  end
  if self.owns_dir and self.dir and not os.getenv("TOKENGATE_KEEP_SPEC_FILES") then
    proc.run("rm -rf " .. proc.quote(self.dir))
  end
end

return fake
