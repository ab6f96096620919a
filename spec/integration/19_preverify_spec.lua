-- Integration: --jwt-preverify (docs/PREVERIFY.md) against the fake API server, which
-- publishes an issuer key as kube-apiserver does (and answers 406 to the wrong Accept).
-- Forged JWTs of its issuer are refused without a TokenReview (the fake's own count);
-- opaque tokens go to TokenReview by default and are refused with refuse-others.
-- spec/real/06_preverify_spec.lua does the same against a genuine kube-apiserver.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local http = require("support.http")
local proc = require("support.proc")
local kube_mod = require("support.kube") -- only its base64url; no API server is started
local cjson = require("cjson")

local GOOD = { token = "opaque-good-token", username = "system:serviceaccount:team-a:caller", uid = "uid-caller",
  groups = { "system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated" } }


describe("--jwt-preverify against the fake API server", function()
  local fake, kid

  setup(function()
    fake = fake_mod.start{ tokens = { GOOD } }
    local res = http.get(fake.url .. "/openid/v1/jwks",
      { "Authorization: Bearer " .. fake.credential, "Accept: application/jwk-set+json" }, { cacert = fake.ca_file })
    kid = cjson.decode(res.body).keys[1].kid
  end)

  teardown(function()
    if fake then fake:stop() end
  end)

  -- n JWTs of the fake's issuer and key id whose signature is random bytes.
  local function forged(n)
    local tokens = {}
    local f = assert(io.open("/dev/urandom", "rb"))
    local header = kube_mod.base64url(cjson.encode{ alg = "RS256", kid = kid })
    for i = 1, n do
      local payload = kube_mod.base64url(cjson.encode{ iss = kube_mod.ISSUER, sub = "system:serviceaccount:team-a:x",
        aud = { kube_mod.ISSUER }, exp = os.time() + 3600, jti = tostring(i) })
      tokens[i] = header .. "." .. payload .. "." .. kube_mod.base64url(f:read(256))
    end
    f:close()
    return tokens
  end

  local function calls() return fake:stats().tokenreview_calls end

  it("loads the issuer's keys and refuses forged JWTs without a TokenReview", function()
    local gw = gateway_mod.start{ fake = fake, args = { "--policy", "none" } }
    finally(function() gw:stop() end)
    proc.wait_until("the issuer's keys", function() return gw:metric("gateway_jwt_keys") == 1 end)
    local before = calls()
    local summary = gw:load{ c = 8, n = 100, tokens = forged(100), path = "/x" }
    assert.equal(100, summary.codes["401"], cjson.encode(summary))
    assert.equal(before, calls())
    assert.equal(100, gw:metric("gateway_jwt_preverify_refused_total"))
    -- Refused verdicts are cached like any other: asking again costs nothing either.
    assert.equal(100, gw:metric('gateway_jwt_preverify_total{verdict="invalid"}'))
    -- Opaque tokens (not JWTs) still go to TokenReview by default.
    assert.equal(200, gw:request(GOOD.token, "/x").status)
    assert.equal(401, gw:request("opaque-unknown-token", "/x").status)
    assert.equal(before + 2, calls())
    assert.equal(2, gw:metric('gateway_jwt_preverify_total{verdict="not_jwt"}'))
  end)

  it("refuses tokens that are not this issuer's JWTs with refuse-others", function()
    local gw = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--jwt-preverify", "refuse-others" } }
    finally(function() gw:stop() end)
    proc.wait_until("the issuer's keys", function() return gw:metric("gateway_jwt_keys") == 1 end)
    local before = calls()
    assert.equal(401, gw:request(GOOD.token, "/x").status)
    assert.equal(before, calls())
  end)

  it("sends forged JWTs to TokenReview with --jwt-preverify off", function()
    local gw = gateway_mod.start{ fake = fake, args = { "--policy", "none", "--jwt-preverify", "off" } }
    finally(function() gw:stop() end)
    local before = calls()
    local summary = gw:load{ c = 4, n = 20, tokens = forged(20), path = "/x" }
    assert.equal(20, summary.codes["401"], cjson.encode(summary))
    assert.equal(before + 20, calls())
    assert.equal(0, gw:metric("gateway_jwt_keys"))
  end)

  it("answers every token through TokenReview while the keys cannot be fetched", function()
    -- A wrong credential: the discovery requests get 401, so no keys; nothing is refused
    -- locally, and the gateway keeps trying.
    local gw = gateway_mod.start{ fake = fake, args = { "--policy", "none" }, wait_ready = false,
      token_file = (function()
        local p = fake.dir .. "/wrong-credential"
        proc.write_file(p, "wrong\n")
        return p
      end)() }
    finally(function() gw:stop() end)
    proc.wait_until("a failed fetch", function() return gw:metric('gateway_jwt_keys_fetches_total{result="failure"}') >= 1 end)
    assert.equal(0, gw:metric("gateway_jwt_keys"))
    local res = gw:request(forged(1)[1], "/x")
    assert.equal(503, res.status) -- TokenReview itself fails with this credential: fail closed
    assert.equal(0, gw:metric("gateway_jwt_preverify_refused_total"))
  end)
end)
