-- The fake kube-apiserver (spec/support/fake-apiserver) for busted specs.
--
--   local fake = require("support.fake")
--   local f = fake.start{ tokens = { { token = "t", username = "system:serviceaccount:a:b" } },
--                         sar_rules = { { user = "*", verb = "get" } } }
--   f.url, f.control_url, f.ca_file, f.credential, f.credential_file, f.dir
--   f:config{ latency_ms = 200 }   f:stats()   f:reset_stats()   f:reset()
--   f:reload(new_tokens)           f:set_credential("new")       f:stop()
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
  self.log = self.dir .. "/fake-apiserver.log"
  write_tokens(self, opts.tokens, opts.sar_rules)
  -- A trailing newline, as in a mounted token file; the fake trims it.
  proc.write_file(self.credential_file, self.credential .. "\n")

  local argv = {}
  local wrapper = opts.wrapper
  if not wrapper and os.getenv("TOKENGATE_FAKE_WRAPPER") then
    wrapper = {}
    for word in os.getenv("TOKENGATE_FAKE_WRAPPER"):gmatch("%S+") do wrapper[#wrapper + 1] = word end
  end
  for _, a in ipairs(wrapper or {}) do argv[#argv + 1] = a end
  for _, a in ipairs{ proc.build_path("spec/support/fake-apiserver"),
      "--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
      "--cert", self.dir .. "/server.crt", "--key", self.dir .. "/server.key",
      "--tokens", self.tokens_file, "--credential-file", self.credential_file } do
    argv[#argv + 1] = a
  end
  self.handle = proc.spawn(argv, self.log)
  local ok, err = pcall(function()
    self.addr = proc.wait_listening(self.handle, "api", opts.timeout)
    self.control_addr = proc.wait_listening(self.handle, "control", opts.timeout)
  end)
  if not ok then
    self:stop()
    error(err, 0)
  end
  self.url = "https://" .. self.addr
  self.control_url = "http://" .. self.control_addr
  self.tokenreview_url = self.url .. TOKENREVIEW_PATH
  self.sar_url = self.url .. SAR_PATH
  return self
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
