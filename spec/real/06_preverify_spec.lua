-- Local pre-verification of ServiceAccount JWTs (--jwt-preverify, docs/PREVERIFY.md) on a
-- genuine kube-apiserver: the gateway fetches the issuer's keys from the API server and
-- refuses forged, expired and wrong-audience tokens without a TokenReview — counted by the
-- API server itself — while good tokens still go to TokenReview.
local kube_mod = require("support.kube")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local cjson = require("cjson")


describe("--jwt-preverify on a genuine kube-apiserver", function()
  local k, kid, sa

  setup(function()
    k = kube_mod.start()
    k:create_gateway_account("tokengate-system", "tokengate")
    k:create_namespace("team-a")
    sa = k:create_serviceaccount("team-a", "caller")
    kid = k:signing_kid()
  end)

  teardown(function()
    if k then k:stop() end
  end)

  local function start(args)
    local gw = gateway_mod.start{ fake = k:gateway_target("tokengate-system", "tokengate"), args = args }
    return gw
  end

  local function keys_loaded(gw)
    proc.wait_until("the issuer's keys", function() return gw:metric("gateway_jwt_keys") >= 1 end)
  end

  -- n forged tokens: this cluster's issuer and key id, another key's signature, distinct subjects.
  local function forged(n)
    local tokens = {}
    for i = 1, n do
      tokens[i] = k:sign_token("other-sa", "team-a", "caller-" .. i, sa.metadata.uid, nil, { kid = kid })
    end
    return tokens
  end

  it("refuses forged JWTs of this issuer without any TokenReview, and still reviews good tokens", function()
    local gw = start{ "--policy", "none" }
    finally(function() gw:stop() end)
    keys_loaded(gw)
    local tokens = forged(200)
    local before = k:tokenreviews()
    local summary = gw:load{ c = 20, n = 400, tokens = tokens, path = "/x" }
    assert.equal(400, summary.codes["401"], cjson.encode(summary))
    assert.equal(0, k:tokenreviews() - before)
    assert.equal(200, gw:metric("gateway_jwt_preverify_total{verdict=\"invalid\"}"))
    assert.equal(200, gw:metric("gateway_jwt_preverify_refused_total"))

    -- Expired, signed with the cluster's own key: refused locally too.
    local now = os.time()
    local expired = k:sign_token("sa", "team-a", "caller", sa.metadata.uid,
      { iat = now - 7200, nbf = now - 7200, exp = now - 3600 }, { kid = kid })
    assert.equal(401, gw:request(expired, "/x").status)
    -- A key id the issuer does not publish, with keys fetched moments ago: refused.
    local stranger = k:sign_token("other-sa", "team-a", "caller", sa.metadata.uid, nil, { kid = "not-a-published-kid" })
    assert.equal(401, gw:request(stranger, "/x").status)
    assert.equal(0, k:tokenreviews() - before)

    -- A genuine token passes the local check and goes to TokenReview, the authority.
    local good = k:token("team-a", "caller")
    assert.equal(200, gw:request(good, "/x").status)
    assert.equal(1, k:tokenreviews() - before)
    assert.equal(1, gw:metric("gateway_jwt_preverify_total{verdict=\"valid\"}"))
  end)

  it("refuses a token minted for another audience when --audiences is set, without a TokenReview", function()
    local gw = start{ "--policy", "none", "--audiences", "tokengate.example" }
    finally(function() gw:stop() end)
    keys_loaded(gw)
    local for_apiserver = k:token("team-a", "caller", { expiration = 3700 })
    local for_us = k:token("team-a", "caller", { audiences = { "tokengate.example" }, expiration = 3701 })
    local before = k:tokenreviews()
    assert.equal(401, gw:request(for_apiserver, "/x").status)
    assert.equal(0, k:tokenreviews() - before)
    assert.equal(200, gw:request(for_us, "/x").status)
    assert.equal(1, k:tokenreviews() - before)
  end)

  it("sends every forged token to TokenReview with --jwt-preverify off (the comparison)", function()
    local gw = start{ "--policy", "none", "--jwt-preverify", "off" }
    finally(function() gw:stop() end)
    local tokens = forged(50)
    local before = k:tokenreviews()
    local summary = gw:load{ c = 10, n = 50, tokens = tokens, path = "/x" }
    assert.equal(50, summary.codes["401"], cjson.encode(summary))
    assert.equal(50, k:tokenreviews() - before)
    assert.equal(0, gw:metric("gateway_jwt_keys"))
  end)

  it("passes tokens of other authenticators to TokenReview by default, and refuses them with refuse-others", function()
    -- The API server's static token file authenticates the spec's administrator: a token
    -- that is no JWT at all, as a cluster with other authenticators has them.
    -- busted keeps one finally() per test (a second replaces the first): both gateways
    -- are stopped by this one.
    local gw, strict
    finally(function()
      if gw then gw:stop() end
      if strict then strict:stop() end
    end)
    gw = start{ "--policy", "none" }
    keys_loaded(gw)
    local res = gw:request(k.admin_token, "/x")
    assert.equal(200, res.status, res.body)
    assert.equal("tokengate-spec-admin", res.headers["x-remote-user"])

    strict = start{ "--policy", "none", "--jwt-preverify", "refuse-others" }
    keys_loaded(strict)
    local before = k:tokenreviews()
    assert.equal(401, strict:request(k.admin_token, "/x").status)
    assert.equal(0, k:tokenreviews() - before)
    assert.equal(200, strict:request(k:token("team-a", "caller", { expiration = 3702 }), "/x").status)
  end)
end)
