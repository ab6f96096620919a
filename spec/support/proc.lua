-- Process helpers for integration specs: start a real program in the background with its
-- output in a log file, find the address it logged, stop it. No luasocket/luaposix on a
-- minimal Debian, so this goes through the shell; every wait is bounded.
local system = require("system")

local proc = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
proc.quote = shell_quote

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end
proc.read_file = read_file

function proc.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- A fresh private directory for one spec's files (certs, logs, token tables).
function proc.tmpdir()
  local p = io.popen("mktemp -d /tmp/tokengate-spec.XXXXXX")
  local dir = p:read("*l")
  p:close()
  return dir
end

-- Runs cmd through sh; returns its output (stdout and stderr) and its exit status.
-- LuaJIT's popen():close() does not report the status, so the shell prints it last.
function proc.run(cmd)
  local p = io.popen("( " .. cmd .. "\n) 2>&1; echo \"__tokengate_exit=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("__tokengate_exit=(%d+)%s*$"))
  out = out:gsub("__tokengate_exit=%d+%s*$", "")
  return out, code or -1
end

-- Start argv (a list) in the background; stdout+stderr go to log_path.
-- Returns a handle { pid, log }.
function proc.spawn(argv, log_path, env)
  -- `exec K=V cmd` is not valid sh: the environment goes through env(1).
  local parts = { "env" }
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. shell_quote(v) end
  for _, a in ipairs(argv) do parts[#parts + 1] = shell_quote(a) end
  local cmd = "exec " .. table.concat(parts, " ") .. " >" .. shell_quote(log_path) .. " 2>&1"
  local p = io.popen("sh -c " .. shell_quote(cmd) .. " </dev/null >/dev/null 2>&1 & echo $!")
  local pid = tonumber(p:read("*l"))
  p:close()
  assert(pid, "could not start " .. argv[1])
  return { pid = pid, log = log_path }
end

-- A process that exited but was not reaped (a zombie: its parent shell is gone and
-- nobody waits for it) counts as dead.
function proc.alive(h)
  local stat = read_file("/proc/" .. h.pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- Wait (bounded) until the process's log has a JSON line with "msg":"listening" for the
-- named listener; return its "addr" (host:port).
function proc.wait_listening(h, listener, timeout_s)
  local deadline = system.gettime() + (timeout_s or 10)
  local pattern = '"msg":"listening"[^\n]*"listener":"' .. listener .. '"[^\n]*"addr":"([^"]+)"'
  while system.gettime() < deadline do
    local log = read_file(h.log) or ""
    local addr = log:match(pattern)
    if addr then return addr end
    if not proc.alive(h) then
      error("process exited before listening on " .. listener .. ":\n" .. log)
    end
    system.sleep(0.02)
  end
  error("timed out waiting for " .. listener .. " listener:\n" .. (read_file(h.log) or ""))
end

function proc.signal(h, sig)
  os.execute("kill -" .. sig .. " " .. h.pid .. " 2>/dev/null")
end

-- Stop with SIGTERM, then SIGKILL after timeout_s. Returns the exit status if it could be
-- observed (it cannot for a process not our child, so this just waits for it to vanish).
function proc.stop(h, timeout_s)
  if not h then return end
  proc.signal(h, "TERM")
  local deadline = system.gettime() + (timeout_s or 5)
  while proc.alive(h) and system.gettime() < deadline do system.sleep(0.02) end
  if proc.alive(h) then proc.signal(h, "KILL") end
end

-- Polls fn every 0.05 s until it returns a true value, which it returns; an error naming
-- what after timeout_s (default 20) seconds.
function proc.wait_until(what, fn, timeout_s)
  local deadline = system.gettime() + (timeout_s or 20)
  while system.gettime() < deadline do
    local v = fn()
    if v then return v end
    system.sleep(0.05)
  end
  error("timed out waiting for " .. what, 2)
end

function proc.sleep(s) system.sleep(s) end
function proc.now() return system.gettime() end

-- count distinct TCP ports for programs that cannot report a port they picked themselves
-- (nginx, etcd, kube-apiserver), for specs that run beside each other (ctest -j). They lie
-- below the kernel's ephemeral range, where no port-0 listener of another spec and no
-- outgoing connection takes one, and none is listening now; the caller still retries on
-- "address in use", for a spec beside it that drew the same port at the same moment.
function proc.free_ports(count)
  local low = tonumber(((read_file("/proc/sys/net/ipv4/ip_local_port_range") or ""):match("^%s*(%d+)"))) or 32768
  local first, last = 20000, math.max(20000 + 1000, low - 1)
  local used = {}
  for _, file in ipairs{ "/proc/net/tcp", "/proc/net/tcp6" } do
    local text = read_file(file) or ""
    for port in text:gmatch("\n%s*%d+: [%x]+:(%x%x%x%x) ") do used[tonumber(port, 16)] = true end
  end
  local urandom = io.open("/dev/urandom", "rb")
  local bytes = urandom and urandom:read(4) or ""
  if urandom then urandom:close() end
  local r = 0
  for i = 1, #bytes do r = r * 256 + bytes:byte(i) end
  local ports, span = {}, last - first + 1
  local p = first + r % span
  for _ = 1, span do
    if not used[p] then
      ports[#ports + 1] = p
      if #ports == count then return ports end
    end
    p = p == last and first or p + 1
  end
  error("no " .. count .. " free ports in " .. first .. ".." .. last)
end

-- Build paths come from CTest's environment; fall back to ./build for manual runs.
function proc.build_path(name)
  local dir = os.getenv("TOKENGATE_BUILD_DIR") or "build"
  return dir .. "/" .. name
end

return proc
