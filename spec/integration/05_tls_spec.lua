-- Integration: HTTPS on the main listener (--tls-cert-file/--tls-key-file) with
-- certificates made by spec/support/gen_certs.sh, and a certificate reload on SIGHUP
-- under load without a failed request.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")

local TOKEN = "tok-tls-client"

describe("tokengate TLS on the main listener", function()
  local fake, gw, dir, https_url

  lazy_setup(function()
    fake = fake_mod.start{ tokens = { { token = TOKEN, username = "system:serviceaccount:team-a:tls",
      uid = "uid-tls", groups = { "system:serviceaccounts", "system:authenticated" } } } }
    dir = fake.dir .. "/tls"
    os.execute("mkdir -p " .. dir)
    -- The gateway serves copies, so the spec can swap them for the reload.
    os.execute(string.format("cp %s/server.crt %s/serving.crt && cp %s/server.key %s/serving.key",
      fake.dir, dir, fake.dir, dir))
    -- gen_certs.sh puts the CA and server files beside the fake's token table.
    assert.truthy(proc.read_file(fake.dir .. "/other-ca.crt"), "gen_certs.sh made other-ca.crt")
    proc.write_file(dir .. "/both-cas.crt", proc.read_file(fake.dir .. "/ca.crt") .. proc.read_file(fake.dir .. "/other-ca.crt"))
    gw = gateway_mod.start{ fake = fake, args = { "--policy", "none",
      "--tls-cert-file", dir .. "/serving.crt", "--tls-key-file", dir .. "/serving.key" } }
    https_url = gw.url:gsub("^http://", "https://")
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if fake then fake:stop() end
  end)

  local function curl(args)
    local out = proc.run("curl -s -o /dev/null -w '%{http_code} %{http_version}' " .. args)
    return out
  end

  it("answers over HTTPS with a certificate the client verifies", function()
    local out = curl(string.format("--cacert %s/ca.crt -H 'Authorization: Bearer %s' %s/x", fake.dir, TOKEN, https_url))
    assert.equal("200 1.1", out)
  end)

  it("refuses plain HTTP, TLS below 1.2, and a client that does not trust the CA", function()
    assert.equal("000 0", curl(gw.url .. "/x"))
    assert.equal("000 0", curl(string.format("--cacert %s/ca.crt --tlsv1.1 --tls-max 1.1 %s/x", fake.dir, https_url)))
    assert.equal("000 0", curl(string.format("--cacert %s/other-ca.crt %s/x", fake.dir, https_url)))
  end)

  it("reloads the certificate on SIGHUP under load without failing a request", function()
    local results = dir .. "/reload-results.txt"
    -- 150 new connections, one after the other, trusting both CAs, while the files change.
    local urls = {}
    for _ = 1, 150 do urls[#urls + 1] = https_url .. "/x" end
    os.execute(string.format(
      "(for i in $(seq 150); do curl -s -o /dev/null -w '%%{http_code}\\n' --cacert %s/both-cas.crt " ..
      "-H 'Authorization: Bearer %s' %s/x; done > %s; echo done >> %s) &",
      dir, TOKEN, https_url, results, results))
    -- and one long-lived keep-alive connection making 300 requests across the reload
    local keepalive = dir .. "/keepalive-results.txt"
    os.execute(string.format("(curl -s --cacert %s/both-cas.crt -H 'Authorization: Bearer %s' -o /dev/null " ..
      "-w '%%{http_code}\\n' %s > %s; echo done >> %s) &", dir, TOKEN,
      table.concat((function() local t = {} for _ = 1, 300 do t[#t + 1] = https_url .. "/k" end return t end)(), " "),
      keepalive, keepalive))
    proc.sleep(0.3)
    os.execute(string.format("cp %s/wrong-server.crt %s/serving.crt && cp %s/wrong-server.key %s/serving.key",
      fake.dir, dir, fake.dir, dir))
    proc.signal(gw.handle, "HUP")
    local deadline = proc.now() + 60
    local function finished(f) return (proc.read_file(f) or ""):find("done", 1, true) end
    while not (finished(results) and finished(keepalive)) and proc.now() < deadline do proc.sleep(0.1) end
    for _, f in ipairs({ results, keepalive }) do
      local codes = {}
      for code in (proc.read_file(f) or ""):gmatch("(%d%d%d)") do codes[code] = (codes[code] or 0) + 1 end
      local total = 0
      for _, n in pairs(codes) do total = total + n end
      assert.equal(total, codes["200"] or 0, f .. ": every request answered 200")
      assert.is_true(total >= 150, f .. " made its requests")
    end
    -- After the reload new connections get the new certificate (signed by the other CA).
    assert.equal("200 1.1", curl(string.format("--cacert %s/other-ca.crt -H 'Authorization: Bearer %s' %s/x",
      fake.dir, TOKEN, https_url)))
    assert.equal("000 0", curl(string.format("--cacert %s/ca.crt %s/x", fake.dir, https_url)))
    assert.truthy(gw:log_text():find('"msg":"TLS certificate loaded","trigger":"SIGHUP"', 1, true))
  end)

  it("keeps the old certificate when the new files are broken", function()
    proc.write_file(dir .. "/serving.key", "not a key\n")
    proc.signal(gw.handle, "HUP")
    proc.sleep(0.3)
    assert.equal("200 1.1", curl(string.format("--cacert %s/other-ca.crt -H 'Authorization: Bearer %s' %s/x",
      fake.dir, TOKEN, https_url)))
    assert.truthy(gw:log_text():find("TLS certificate load failed", 1, true))
  end)
end)
