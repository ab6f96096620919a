-- Starts the real tokengate binary for integration specs, in front of a fake API server
-- started with support.fake, and reads its admin endpoints.
local proc = require("support.proc")
local http = require("support.http")

local gateway = {}
gateway.__index = gateway

-- opts.fake: a running support.fake instance; opts.args: extra flags (list);
-- opts.wait_ready (default true): wait until /readyz answers 200.
function gateway.start(opts)
  local fake = assert(opts.fake, "gateway.start needs a fake API server")
  local dir = opts.dir or fake.dir
  local self = setmetatable({ dir = dir }, gateway)
  self.token_file = opts.token_file or fake.credential_file
  local argv = { proc.build_path("core/tokengate"),
    "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
    "--apiserver", fake.url, "--apiserver-ca", fake.ca_file,
    "--apiserver-token-file", self.token_file }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  self.log = string.format("%s/gateway-%d.log", dir, math.random(1, 1e9))
  self.handle = proc.spawn(argv, self.log, opts.env)
  self.url = "http://" .. proc.wait_listening(self.handle, "main")
  self.admin_url = "http://" .. proc.wait_listening(self.handle, "admin")
  if opts.wait_ready ~= false then self:wait_ready(10) end
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
  local res = http.get(self.admin_url .. "/metrics")
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
function gateway:stop() proc.stop(self.handle) end

-- Runs bench/tgload against the gateway: opts = { c=, n=, tokens={...}, path=, headers={} }.
-- Returns the decoded JSON summary.
function gateway:load(opts)
  local cjson = require("cjson")
  local tokens_file = string.format("%s/tokens-%d.txt", self.dir, math.random(1, 1e9))
  proc.write_file(tokens_file, table.concat(opts.tokens, "\n") .. "\n")
  local args = { proc.build_path("bench/tgload"), "--url", self.url .. (opts.path or "/"),
    "-c", tostring(opts.c or 1), "-n", tostring(opts.n or 1), "--tokens", tokens_file,
    "--timeout", tostring(opts.timeout or 20) }
  for _, h in ipairs(opts.headers or {}) do args[#args + 1] = "-H"; args[#args + 1] = h end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = proc.quote(a) end
  local out = proc.run(table.concat(quoted, " "))
  os.remove(tokens_file)
  local line = out:match("({.*})%s*$")
  assert(line, "tgload printed no summary: " .. out)
  return cjson.decode(line)
end

return gateway
