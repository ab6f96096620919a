-- Starts the real tokengate binary for integration specs, in front of a fake API server
-- started with support.fake, and reads its admin endpoints.
local proc = require("support.proc")
local http = require("support.http")

local gateway = {}
gateway.__index = gateway

-- The words of $TOKENGATE_GATEWAY_WRAPPER, put in front of every gateway's argv, e.g.
--   TOKENGATE_GATEWAY_WRAPPER="valgrind --leak-check=full --error-exitcode=99"
-- to run the specs' gateway processes under a tool (exit status tracked, see below).
function gateway.env_wrapper()
  local text = os.getenv("TOKENGATE_GATEWAY_WRAPPER")
  if not text or text:match("^%s*$") then return nil end
  local words = {}
  for word in text:gmatch("%S+") do words[#words + 1] = word end
  return words
end

-- Starts argv in the background through a shell that waits for it and writes its exit
-- status (128+N when killed by signal N) to status_file. The handle's pid is the program's
-- own (read back from pid_file), so signals reach it and not the shell.
local function spawn_tracked(argv, log_path, env, pid_file, status_file)
  local parts = {}
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. proc.quote(v) end
  for _, a in ipairs(argv) do parts[#parts + 1] = proc.quote(a) end
  local inner = table.concat(parts, " ") .. " >" .. proc.quote(log_path) .. " 2>&1 </dev/null & " ..
    "echo $! >" .. proc.quote(pid_file .. ".tmp") .. " && mv " .. proc.quote(pid_file .. ".tmp") .. " " ..
    proc.quote(pid_file) .. "; wait $!; echo $? >" .. proc.quote(status_file .. ".tmp") .. " && mv " ..
    proc.quote(status_file .. ".tmp") .. " " .. proc.quote(status_file)
  os.execute("sh -c " .. proc.quote(inner) .. " </dev/null >/dev/null 2>&1 &")
  local deadline = proc.now() + 10
  while proc.now() < deadline do
    local pid = tonumber(proc.read_file(pid_file) or "")
    if pid then return { pid = pid, log = log_path } end
    proc.sleep(0.01)
  end
  error("could not start " .. argv[1])
end

-- opts.fake: a running support.fake instance; opts.args: extra flags (list);
-- opts.wait_ready (default true): wait until /readyz answers 200;
-- opts.dir: where the log (and exit status) go (default: the fake's directory);
-- opts.wrapper: argv list put in front of the gateway (default: $TOKENGATE_GATEWAY_WRAPPER);
-- opts.track_exit: record the exit status (always on with a wrapper): gw:exit_status();
-- opts.start_timeout: seconds to wait for the listeners (default 10, 60 with a wrapper).
function gateway.start(opts)
  local fake = assert(opts.fake, "gateway.start needs a fake API server")
  local dir = opts.dir or fake.dir
  local self = setmetatable({ dir = dir }, gateway)
  self.token_file = opts.token_file or fake.credential_file
  local wrapper = opts.wrapper or gateway.env_wrapper()
  local argv = {}
  for _, a in ipairs(wrapper or {}) do argv[#argv + 1] = a end
  for _, a in ipairs{ proc.build_path("core/tokengate"),
      "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
      "--apiserver", opts.apiserver or fake.url, "--apiserver-ca", opts.apiserver_ca or fake.ca_file,
      "--apiserver-token-file", self.token_file } do
    argv[#argv + 1] = a
  end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  local id = math.random(1, 1e9)
  self.log = string.format("%s/gateway-%d.log", dir, id)
  self.wrapped = wrapper ~= nil
  if opts.track_exit or self.wrapped then
    self.status_file = string.format("%s/gateway-%d.exit", dir, id)
    self.handle = spawn_tracked(argv, self.log, opts.env, string.format("%s/gateway-%d.pid", dir, id),
      self.status_file)
  else
    self.handle = proc.spawn(argv, self.log, opts.env)
  end
  local start_timeout = opts.start_timeout or (self.wrapped and 60 or 10)
  self.url = "http://" .. proc.wait_listening(self.handle, "main", start_timeout)
  self.admin_url = "http://" .. proc.wait_listening(self.handle, "admin", start_timeout)
  if opts.wait_ready ~= false then self:wait_ready(start_timeout) end
  return self
end

function gateway:wait_ready(timeout_s)
  local deadline = proc.now() + (timeout_s or 10)
  while proc.now() < deadline do
    if http.get(self.admin_url .. "/readyz").status == 200 then return true end
    proc.sleep(0.05)
  end
  error("gateway never became ready:\n" .. (proc.read_file(self.log) or ""))
end

-- GET url path on the main listener with a bearer token (or raw headers).
function gateway:request(token, path, extra_headers)
  local headers = {}
  if token then headers[#headers + 1] = "Authorization: Bearer " .. token end
  for _, h in ipairs(extra_headers or {}) do headers[#headers + 1] = h end
  return http.get(self.url .. (path or "/"), headers)
end

-- Parses the Prometheus text exposition: { ["name{labels}"] = value, ... }.
function gateway:metrics()
  local res = http.get(self.admin_url .. "/metrics", self.admin_headers) -- admin_headers: --admin-token-file
  assert(res.status == 200, "metrics answered " .. res.status)
  local values = { _text = res.body }
  for line in res.body:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local name, value = line:match("^(%S+)%s+(%S+)$")
      if name then values[name] = tonumber(value) end
    end
  end
  return values
end

function gateway:metric(name)
  return self:metrics()[name] or 0
end

function gateway:flush(query)
  return http.post(self.admin_url .. "/cache/flush" .. (query or ""), "")
end

function gateway:alive() return proc.alive(self.handle) end
function gateway:log_text() return proc.read_file(self.log) or "" end
function gateway:pid() return self.handle.pid end

-- The exit status (started with track_exit or a wrapper), waiting up to timeout_s (default
-- 0) for the process to end; nil while it runs or when not tracked.
function gateway:exit_status(timeout_s)
  if not self.status_file then return nil end
  local deadline = proc.now() + (timeout_s or 0)
  repeat
    local code = tonumber(proc.read_file(self.status_file) or "")
    if code then return code end
    if proc.now() >= deadline then return nil end
    proc.sleep(0.02)
  until false
end

-- SIGTERM, then SIGKILL after timeout_s (default 5, 60 under a wrapper such as valgrind,
-- whose leak check runs at exit). Returns the exit status when it is tracked. Under
-- $TOKENGATE_GATEWAY_WRAPPER a non-zero status is reported on stderr, and raised as an
-- error when $TOKENGATE_GATEWAY_WRAPPER_CHECK is set (so a whole suite run under valgrind
-- fails on the first gateway with a memory error or leak).
function gateway:stop(timeout_s)
  proc.stop(self.handle, timeout_s or (self.wrapped and 60 or 5))
  local code = self:exit_status(5)
  if self.wrapped and code ~= 0 then
    local msg = string.format("gateway under %s exited %s (log %s)", os.getenv("TOKENGATE_GATEWAY_WRAPPER") or "a wrapper",
      tostring(code), self.log)
    io.stderr:write(msg .. "\n")
    if os.getenv("TOKENGATE_GATEWAY_WRAPPER_CHECK") then error(msg, 2) end
  end
  -- A ThreadSanitizer build (./run test-tsan) reports a data race on the gateway's stderr
  -- and goes on: any report fails the spec that started this gateway.
  local log = self:log_text()
  local race = log:find("WARNING: ThreadSanitizer", 1, true)
  if race then
    error(string.format("ThreadSanitizer reported in %s:\n%s", self.log, log:sub(race, race + 4000)), 2)
  end
  return code
end

-- bench/tgload's command line for opts = { c=, n= or d=, tokens={...}, path=, headers={},
-- timeout=, rate= (requests per second in total, paced), spray_paths= (request i goes to path .. i) }, with
-- the token file written; returns the quoted command and the token file.
function gateway:load_command(opts)
  local tokens_file = string.format("%s/tokens-%d.txt", self.dir, math.random(1, 1e9))
  proc.write_file(tokens_file, table.concat(opts.tokens, "\n") .. "\n")
  local args = { proc.build_path("bench/tgload"), "--url", self.url .. (opts.path or "/"),
    "-c", tostring(opts.c or 1), "--tokens", tokens_file, "--timeout", tostring(opts.timeout or 20) }
  if opts.d then
    args[#args + 1] = "-d"; args[#args + 1] = tostring(opts.d)
  else
    args[#args + 1] = "-n"; args[#args + 1] = tostring(opts.n or 1)
  end
  for _, h in ipairs(opts.headers or {}) do args[#args + 1] = "-H"; args[#args + 1] = h end
  if opts.rate then args[#args + 1] = "--rate"; args[#args + 1] = tostring(opts.rate) end
  if opts.spray_paths then args[#args + 1] = "--spray-paths" end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = proc.quote(a) end
  return table.concat(quoted, " "), tokens_file
end

local function decode_summary(out)
  local cjson = require("cjson")
  local line = out:match("({[^\n]*})%s*$")
  assert(line, "tgload printed no summary: " .. out)
  return cjson.decode(line)
end

-- Runs bench/tgload against the gateway: opts = { c=, n= (or d= seconds), tokens={...},
-- path=, headers={}, timeout= }. Returns the decoded JSON summary.
function gateway:load(opts)
  local cmd, tokens_file = self:load_command(opts)
  local out = proc.run(cmd)
  os.remove(tokens_file)
  return decode_summary(out)
end

-- Starts bench/tgload in the background (same opts as load); returns a handle whose
-- :wait(timeout_s) returns the summary once tgload has finished (error on timeout).
function gateway:load_start(opts)
  local cmd, tokens_file = self:load_command(opts)
  local base = string.format("%s/tgload-%d", self.dir, math.random(1, 1e9))
  os.execute("sh -c " .. proc.quote(cmd .. " >" .. proc.quote(base .. ".out") .. " 2>" .. proc.quote(base .. ".err") ..
    "; mv " .. proc.quote(base .. ".out") .. " " .. proc.quote(base .. ".done")) .. " </dev/null >/dev/null 2>&1 &")
  local handle = {}
  -- The summary once tgload has finished, else nil (does not wait).
  function handle.poll(_)
    local out = proc.read_file(base .. ".done")
    if not out then return nil end
    local summary = decode_summary(out)
    summary.stderr = proc.read_file(base .. ".err") or "" -- tgload's diagnostics
    os.remove(base .. ".done"); os.remove(base .. ".err"); os.remove(tokens_file)
    return summary
  end
  function handle.wait(self, timeout_s)
    local deadline = proc.now() + (timeout_s or 60)
    while proc.now() < deadline do
      local summary = self:poll()
      if summary then return summary end
      proc.sleep(0.02)
    end
    error("tgload did not finish in " .. tostring(timeout_s) .. " s: " .. (proc.read_file(base .. ".err") or ""))
  end
  return handle
end

return gateway
