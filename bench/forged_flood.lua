-- Forged-token flood (bench/forged_flood.sh): a genuine kube-apiserver, one gateway, a
-- flood of FORGED distinct JWTs (this cluster's issuer and key id, a signature that is not
-- the issuer's) beside a steady caller with one cached good token; once with
-- --jwt-preverify on (the default) and once off. Reports what the API server counted
-- (apiserver_request_total for tokenreviews), the flood's answers, and the good caller's
-- answers and latency during the flood. Last line: RESULT forged_flood key=value ...
package.path = "spec/?.lua;" .. package.path
local kube_mod = require("support.kube")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local cjson = require("cjson")

local FORGED = tonumber(os.getenv("FORGED") or "50000")
-- With pre-verification off each forged token costs a TokenReview at --apiserver-qps (50/s):
-- that arm sends fewer (the cost per token is what compares).
local FORGED_OFF = math.min(FORGED, tonumber(os.getenv("FORGED_OFF") or "2000"))
local FLOOD_C = tonumber(os.getenv("FLOOD_C") or "64")
local WORKERS = os.getenv("WORKERS") or "2"

local k = kube_mod.start()
local ok, err = pcall(function()
  k:create_gateway_account("tokengate-system", "tokengate")
  k:create_namespace("team-a")
  local sa = k:create_serviceaccount("team-a", "caller")
  local kid = k:signing_kid()
  local good = k:token("team-a", "caller")

  -- Forged tokens: a genuine header (alg, kid), distinct payloads, random signature bytes.
  local urandom = assert(io.open("/dev/urandom", "rb"))
  local header = kube_mod.base64url(cjson.encode{ alg = "RS256", kid = kid })
  local now = os.time()
  local lines = {}
  for i = 1, FORGED do
    local payload = kube_mod.base64url(cjson.encode{ iss = kube_mod.ISSUER, aud = { kube_mod.ISSUER },
      sub = "system:serviceaccount:team-a:caller", exp = now + 3600, iat = now, nbf = now, jti = tostring(i),
      ["kubernetes.io"] = { namespace = "team-a", serviceaccount = { name = "caller", uid = sa.metadata.uid } } })
    lines[i] = header .. "." .. payload .. "." .. kube_mod.base64url(urandom:read(256))
  end
  urandom:close()

  local results = {}
  for _, mode in ipairs{ "review-others", "off" } do
    local gw = gateway_mod.start{ fake = k:gateway_target("tokengate-system", "tokengate", { expiration = 3600 + #results }),
      args = { "--policy", "none", "--workers", WORKERS, "--jwt-preverify", mode } }
    if mode ~= "off" then
      local deadline = proc.now() + 30
      while gw:metric("gateway_jwt_keys") < 1 and proc.now() < deadline do proc.sleep(0.1) end
    end
    assert(gw:request(good, "/x").status == 200, "the good token is not admitted")
    local reviews_before = k:tokenreviews()
    local steady = gw:load_start{ c = 2, d = 3600, tokens = { good }, path = "/steady", timeout = 10, rate = 200 }
    local started = proc.now()
    local n = mode == "off" and FORGED_OFF or FORGED
    local flood = gw:load{ c = FLOOD_C, n = n, tokens = lines, path = "/flood", timeout = 30 }
    local flood_s = proc.now() - started
    -- Stop the steady caller (its own argv[0] is tgload; the sh that started it is not).
    proc.run("pkill -INT -f '^[^ ]*/tgload .*/steady'")
    local good_summary = steady:wait(30)
    local reviews = k:tokenreviews() - reviews_before
    gw:stop()
    results[#results + 1] = { mode = mode, n = n, reviews = reviews, flood = flood, flood_s = flood_s, good = good_summary }
    io.stdout:write(string.format(
      "--jwt-preverify %-13s: %d forged tokens in %.1f s -> %s; TokenReviews at the API server: %d; " ..
      "good token meanwhile: %s, p99 %.2f ms\n", mode, n, flood_s, cjson.encode(flood.codes), reviews,
      cjson.encode(good_summary.codes), good_summary.p99_ms or -1))
  end
  local on, off = results[1], results[2]
  print(string.format("RESULT forged_flood forged=%d forged_off=%d reviews_preverify=%d reviews_off=%d refused_401_preverify=%d " ..
    "good_200_preverify=%d good_non200_preverify=%d good_p99_ms_preverify=%.2f good_p99_ms_off=%.2f flood_s_preverify=%.1f flood_s_off=%.1f",
    FORGED, off.n, on.reviews, off.reviews, on.flood.codes["401"] or 0, on.good.codes["200"] or 0,
    (on.good.requests or 0) - (on.good.codes["200"] or 0), on.good.p99_ms or -1, off.good.p99_ms or -1, on.flood_s,
    off.flood_s))
end)
k:stop()
if not ok then error(err, 0) end
