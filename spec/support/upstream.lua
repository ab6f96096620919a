-- The application behind a proxy in integration specs (spec/support/test_upstream.c):
-- answers every request with 200 and records what reached it.
--
--   local upstream = require("support.upstream")
--   local up = upstream.start{ dir = some_dir }
--   up.addr ("127.0.0.1:PORT"), up.url
--   up:requests()      -> list of { method=, uri=, headers={ {name, value}, ... }, body_bytes=,
--                         body_sha256=, connection= (the upstream connection's number) }
--   up:headers(r, name) -> every value of header `name` (case-insensitive) in request r
--   up:clear()         forget what was recorded so far
--   up:stop()
local proc = require("support.proc")
local cjson = require("cjson")

local upstream = {}
local Upstream = {}
Upstream.__index = Upstream

-- opts.dir: where the record and log files go (required: the caller owns the directory).
function upstream.start(opts)
  local self = setmetatable({}, Upstream)
  local id = math.random(1, 1e9)
  self.record = string.format("%s/upstream-%d.jsonl", assert(opts.dir, "upstream.start needs dir"), id)
  self.log = string.format("%s/upstream-%d.log", opts.dir, id)
  proc.write_file(self.record, "")
  self.handle = proc.spawn({ proc.build_path("spec/support/test-upstream"),
    "--listen", "127.0.0.1:0", "--record", self.record }, self.log)
  self.addr = proc.wait_listening(self.handle, "upstream", opts.timeout)
  self.url = "http://" .. self.addr
  return self
end

-- What the upstream received since start() or the last clear(), oldest first.
function Upstream:requests()
  local list = {}
  for line in (proc.read_file(self.record) or ""):gmatch("[^\n]+") do
    list[#list + 1] = cjson.decode(line)
  end
  return list
end

function Upstream:headers(request, name)
  local values = {}
  for _, h in ipairs(request.headers) do
    if h[1]:lower() == name:lower() then values[#values + 1] = h[2] end
  end
  return values
end

function Upstream:clear() proc.write_file(self.record, "") end

function Upstream:stop()
  if self.handle then
    proc.stop(self.handle)
    self.handle = nil
  end
end

return upstream
