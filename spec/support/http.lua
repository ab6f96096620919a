-- A minimal HTTP client for specs, on top of the curl command line tool.
-- http.request{ method=, url=, headers={...} (list of "Name: value" strings or map),
--               body=, cacert=, timeout= } -> { status=, headers={lower-case name -> value},
--               header_list={ {name, value}, ... }, body=, time= }
local proc = require("support.proc")

local http = {}
local counter = 0

function http.request(opts)
  counter = counter + 1
  -- os.tmpname() creates a unique file: its name is a safe prefix even when several spec
  -- processes run at once (math.random is not seeded per process).
  local base = os.tmpname()
  local args = { "curl", "-sS", "-o", base .. ".body", "-D", base .. ".hdr",
    "-w", "%{http_code} %{time_total}", "-X", opts.method or "GET",
    "--max-time", tostring(opts.timeout or 20) }
  if opts.cacert then args[#args + 1] = "--cacert"; args[#args + 1] = opts.cacert end
  local headers = opts.headers or {}
  if headers[1] == nil then
    local list = {}
    for k, v in pairs(headers) do list[#list + 1] = k .. ": " .. v end
    headers = list
  end
  for _, h in ipairs(headers) do args[#args + 1] = "-H"; args[#args + 1] = h end
  if opts.body then
    proc.write_file(base .. ".req", opts.body)
    args[#args + 1] = "--data-binary"; args[#args + 1] = "@" .. base .. ".req"
  end
  args[#args + 1] = opts.url
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = proc.quote(a) end
  local out = proc.run(table.concat(quoted, " "))
  local code, t = out:match("(%d%d%d) ([%d%.]+)%s*$")
  local res = { status = tonumber(code) or 0, time = tonumber(t), raw = out,
    headers = {}, header_list = {}, body = proc.read_file(base .. ".body") or "" }
  local hdr = proc.read_file(base .. ".hdr") or ""
  for line in hdr:gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:%s]+):%s*(.-)%s*$")
    if name then
      res.headers[name:lower()] = value
      res.header_list[#res.header_list + 1] = { name, value }
    end
  end
  os.remove(base .. ".body"); os.remove(base .. ".hdr"); os.remove(base .. ".req"); os.remove(base)
  return res
end

function http.get(url, headers, opts)
  opts = opts or {}
  opts.url = url; opts.headers = headers; opts.method = "GET"
  return http.request(opts)
end

function http.post(url, body, headers, opts)
  opts = opts or {}
  opts.url = url; opts.body = body or ""; opts.headers = headers; opts.method = "POST"
  return http.request(opts)
end

return http
