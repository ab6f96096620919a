-- wrk script for tokengate benchmarks: sends "Authorization: Bearer <token>".
--
--   TG_TOKENS=FILE wrk ... -s bench/wrk_bearer.lua URL   (one token per line; a line "-"
--                                                          sends no Authorization header)
--   TG_TOKEN=TOKEN wrk ... -s bench/wrk_bearer.lua URL
--
-- With several tokens, request i carries token (i mod count), like tgload --tokens; the
-- requests are built once in init() so request() is a table lookup. With one token the
-- header goes into wrk.headers and no request() is defined, so wrk keeps its static-request
-- fast path (it decides that from whether the script defines request() at load time, which
-- is why the token file is named by an environment variable rather than a script argument).

local tokens = {}
local path = os.getenv("TG_TOKENS")
if path and path ~= "" then
  local f = assert(io.open(path, "r"), "wrk_bearer.lua: cannot open TG_TOKENS file " .. path)
  for line in f:lines() do
    line = line:gsub("\r$", "")
    if line ~= "" then tokens[#tokens + 1] = line end
  end
  f:close()
  assert(#tokens > 0, "wrk_bearer.lua: TG_TOKENS file has no tokens")
elseif os.getenv("TG_TOKEN") and os.getenv("TG_TOKEN") ~= "" then
  tokens[1] = os.getenv("TG_TOKEN")
end

if #tokens == 1 then
  if tokens[1] ~= "-" then
    wrk.headers["Authorization"] = "Bearer " .. tokens[1]
  end
elseif #tokens > 1 then
  local requests, n = {}, 0

  function init(args)
    for i, token in ipairs(tokens) do
      local headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end
      if token ~= "-" then headers["Authorization"] = "Bearer " .. token end
      requests[i] = wrk.format(nil, nil, headers)
    end
  end

  function request()
    n = n % #requests + 1
    return requests[n]
  end
end
