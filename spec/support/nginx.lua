-- Real nginx for integration specs: a server block (a template with @NAME@ placeholders,
-- e.g. examples/nginx/nginx.conf) run in the foreground on a loopback port, with every
-- file it writes (pid, logs, temp files) under dir: never the system service.
--
--   local nginx = require("support.nginx")
--   local n = nginx.start(dir, template_text, { TOKENGATE = "127.0.0.1:1", UPSTREAM = "127.0.0.1:2" })
--   n.url, n.error_log; n:stop()
local proc = require("support.proc")
local http = require("support.http")

local nginx = {}
local Nginx = {}
Nginx.__index = Nginx

function nginx.binary()
  local out = proc.run("command -v nginx || ls /usr/sbin/nginx")
  return out:match("(%S+)")
end

-- nginx cannot report a port it picked itself, so this takes a free one from
-- proc.free_ports and tries another if a spec running beside this one took it first.
-- values fills @NAME@ placeholders; @LISTEN@ is filled here.
function nginx.start(dir, template, values)
  local binary = assert(nginx.binary(), "nginx is not installed (./run setup installs it)")
  -- Worker processes run as nobody when the spec runs as root: they must reach the temp
  -- dirs nginx makes here.
  proc.run("chmod 755 " .. proc.quote(dir))
  for _ = 1, 10 do
    local port = proc.free_ports(1)[1]
    local conf = template:gsub("@LISTEN@", "127.0.0.1:" .. port)
    for name, value in pairs(values) do conf = conf:gsub("@" .. name .. "@", value) end
    assert(not conf:find("@%u+@"), "a placeholder is left in the nginx template")
    proc.write_file(dir .. "/site.conf", conf)
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
      "  include " .. dir .. "/site.conf;",
      "}", "" }, "\n"))
    local error_log = dir .. "/nginx-error.log"
    proc.write_file(error_log, "")
    -- Removed first: nginx writes it once its listeners are bound.
    local pid_file = dir .. "/nginx.pid"
    os.remove(pid_file)
    local handle = proc.spawn({ binary, "-p", dir, "-c", dir .. "/main.conf", "-e", error_log,
      "-g", "daemon off; pid " .. pid_file .. "; error_log " .. error_log .. " info;" },
      dir .. "/nginx.out")
    local url = "http://127.0.0.1:" .. port
    local deadline = proc.now() + 30
    while proc.now() < deadline and proc.alive(handle) do
      -- nginx writes its pid file only once it has bound its listener: until then an answer
      -- on the port may come from another spec's server that holds it.
      if proc.read_file(pid_file) and http.get(url .. "/", nil, { timeout = 5 }).status ~= 0 then
        return setmetatable({ handle = handle, url = url, port = port, error_log = error_log }, Nginx)
      end
      proc.sleep(0.05)
    end
    local log = (proc.read_file(error_log) or "") .. (proc.read_file(dir .. "/nginx.out") or "")
    proc.stop(handle)
    if not log:find("Address already in use", 1, true) then error("nginx did not start:\n" .. log) end
  end
  error("nginx found no free port")
end

function Nginx:stop()
  if self.handle then
    proc.stop(self.handle)
    self.handle = nil
  end
end

return nginx
