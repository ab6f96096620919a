-- Integration: how the real tokengate binary finds its API server (docs/APISERVER.md):
-- kubeconfig files (--kubeconfig, --context, $KUBECONFIG), the in-cluster service-account
-- mount, and explicit flags winning over both, each proved end to end against the fake
-- API server over TLS with real requests. Plus the configurations it must refuse at
-- start-up, with and without --check.
--
-- support.gateway.start always passes --apiserver/--apiserver-ca/--apiserver-token-file,
-- so this spec spawns the gateway itself (same listeners and log as gateway.lua) and
-- scrubs $KUBECONFIG and $KUBERNETES_SERVICE_HOST/PORT from its environment, so that a
-- runner inside a pod or with a kubeconfig of its own cannot change what is tested.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")

local USER_PREFIX = "system:serviceaccount:cfg:"

-- 60 distinct valid tokens: each test takes fresh ones, so every request it makes is a
-- cold one that really reaches the API server (no cache hit can hide a broken config).
local token_table, next_index = {}, 0
for i = 1, 60 do
  local name = string.format("sa-%02d", i)
  token_table[i] = { token = "tok-cfg-" .. name, username = USER_PREFIX .. name, uid = "uid-" .. name,
    groups = { "system:serviceaccounts", "system:serviceaccounts:cfg", "system:authenticated" } }
end
local function cold()
  next_index = next_index + 1
  local entry = assert(token_table[next_index], "the spec ran out of tokens")
  return entry.token, entry.username
end

local SCRUB = { "env", "-u", "KUBECONFIG", "-u", "KUBERNETES_SERVICE_HOST", "-u", "KUBERNETES_SERVICE_PORT" }

-- The tokengate argv (after the scrubbing env and the given VAR=value pairs).
local function command(args, env)
  local argv = {}
  for _, a in ipairs(SCRUB) do argv[#argv + 1] = a end
  local names = {}
  for k in pairs(env or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do argv[#argv + 1] = k .. "=" .. env[k] end
  return argv
end

local function quote_all(argv)
  local q = {}
  for i, a in ipairs(argv) do q[i] = proc.quote(a) end
  return table.concat(q, " ")
end

describe("tokengate API server configuration", function()
  local fake, dir, port, original_credential
  local started = {}

  -- Runs `tokengate ARGS` to its end (bounded by `timeout 60`, whose exit status 124 the
  -- callers reject); returns stdout, stderr and exit status.
  local function run(args, env)
    local argv = command(args, env)
    argv[#argv + 1] = "timeout"
    argv[#argv + 1] = "60"
    argv[#argv + 1] = proc.build_path("core/tokengate")
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local base = string.format("%s/run-%d", dir, math.random(1, 1e9))
    local _, code = proc.run(quote_all(argv) .. " >" .. proc.quote(base .. ".out") .. " 2>" .. proc.quote(base .. ".err"))
    local out, err = proc.read_file(base .. ".out") or "", proc.read_file(base .. ".err") or ""
    os.remove(base .. ".out"); os.remove(base .. ".err")
    return out, err, code
  end

  -- Starts a serving gateway (--policy none) with these flags and environment; returns an
  -- object with support.gateway's methods (request, metrics, stop, alive, log_text, ...).
  local function start(args, env, opts)
    opts = opts or {}
    local argv = command(args, env)
    local wrapper = gateway_mod.env_wrapper and gateway_mod.env_wrapper()
    for _, a in ipairs(wrapper or {}) do argv[#argv + 1] = a end
    for _, a in ipairs{ proc.build_path("core/tokengate"), "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--policy", "none" } do
      argv[#argv + 1] = a
    end
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local self = setmetatable({ dir = dir, wrapped = wrapper ~= nil }, gateway_mod)
    self.log = string.format("%s/gateway-%d.log", dir, math.random(1, 1e9))
    self.handle = proc.spawn(argv, self.log)
    started[#started + 1] = self
    local timeout = wrapper and 60 or 10
    self.url = "http://" .. proc.wait_listening(self.handle, "main", timeout)
    self.admin_url = "http://" .. proc.wait_listening(self.handle, "admin", timeout)
    if opts.wait_ready ~= false then self:wait_ready(timeout) end
    return self
  end

  -- A request with a fresh token must be authenticated by the fake: 200 with its identity.
  local function assert_authenticates(gw, what)
    local token, user = cold()
    local res = gw:request(token)
    assert.equal(200, res.status, (what or "") .. ": " .. res.body)
    assert.equal(user, res.headers["x-remote-user"], what)
    assert.equal(1, fake:stats().by_token[token], what .. ": the fake reviewed the token once")
    return res
  end

  -- The kubeconfig shape kubectl writes. clusters: { name, server, ca (path), ca_data,
  -- extra (lines) }; users: { name, token, tokenFile, cert, key, cert_data, key_data, extra };
  -- contexts: { name, cluster, user, namespace }.
  local function kubeconfig(path, kc)
    local function q(v)
      assert(not tostring(v):find('["\\\n]'), "value needs no escaping")
      return '"' .. tostring(v) .. '"'
    end
    local lines = { "apiVersion: v1", "kind: Config", "preferences: {}" }
    if kc.current then lines[#lines + 1] = "current-context: " .. q(kc.current) end
    lines[#lines + 1] = "clusters:"
    for _, c in ipairs(kc.clusters) do
      lines[#lines + 1] = "- name: " .. q(c.name)
      lines[#lines + 1] = "  cluster:"
      lines[#lines + 1] = "    server: " .. q(c.server)
      if c.ca then lines[#lines + 1] = "    certificate-authority: " .. q(c.ca) end
      if c.ca_data then lines[#lines + 1] = "    certificate-authority-data: " .. c.ca_data end
      for _, l in ipairs(c.extra or {}) do lines[#lines + 1] = "    " .. l end
    end
    lines[#lines + 1] = "users:"
    for _, u in ipairs(kc.users) do
      lines[#lines + 1] = "- name: " .. q(u.name)
      lines[#lines + 1] = "  user:"
      if u.token then lines[#lines + 1] = "    token: " .. q(u.token) end
      if u.tokenFile then lines[#lines + 1] = "    tokenFile: " .. q(u.tokenFile) end
      if u.cert then lines[#lines + 1] = "    client-certificate: " .. q(u.cert) end
      if u.key then lines[#lines + 1] = "    client-key: " .. q(u.key) end
      if u.cert_data then lines[#lines + 1] = "    client-certificate-data: " .. u.cert_data end
      if u.key_data then lines[#lines + 1] = "    client-key-data: " .. u.key_data end
      for _, l in ipairs(u.extra or {}) do lines[#lines + 1] = "    " .. l end
    end
    lines[#lines + 1] = "contexts:"
    for _, c in ipairs(kc.contexts) do
      lines[#lines + 1] = "- name: " .. q(c.name)
      lines[#lines + 1] = "  context:"
      lines[#lines + 1] = "    cluster: " .. q(c.cluster)
      lines[#lines + 1] = "    user: " .. q(c.user)
      if c.namespace then lines[#lines + 1] = "    namespace: " .. q(c.namespace) end
    end
    proc.write_file(path, table.concat(lines, "\n") .. "\n")
    return path
  end

  local function base64_of(path)
    local out, code = proc.run("base64 -w0 " .. proc.quote(path))
    assert(code == 0 and out:match("^[A-Za-z0-9+/=]+$"), "base64 of " .. path .. ": " .. out)
    return out
  end

  -- A kubeconfig with one cluster/user/context ("gw"), the fake's CA file and its credential
  -- inline unless cluster/user fields are given.
  local function simple(path, cluster, user, namespace)
    cluster = cluster or {}
    cluster.name = "fake"
    cluster.server = cluster.server or fake.url
    if not cluster.ca and not cluster.ca_data then cluster.ca = fake.ca_file end
    user = user or { token = fake.credential }
    user.name = "tokengate"
    return kubeconfig(path, { current = "gw", clusters = { cluster }, users = { user },
      contexts = { { name = "gw", cluster = "fake", user = "tokengate", namespace = namespace } } })
  end

  -- No secret in anything the gateway printed or logged.
  local function assert_no_secret(text, what)
    assert.is_nil(text:find(fake.credential, 1, true), what .. " shows the gateway's credential")
    for _, entry in ipairs(token_table) do
      assert.is_nil(text:find(entry.token, 1, true), what .. " shows a caller's token")
    end
    assert.is_nil(text:find("PRIVATE KEY", 1, true), what .. " shows a private key")
  end

  lazy_setup(function()
    fake = fake_mod.start{ tokens = token_table }
    dir = fake.dir
    port = fake.addr:match(":(%d+)$")
    original_credential = fake.credential
    assert.truthy(proc.read_file(dir .. "/other-ca.crt"), "gen_certs.sh made other-ca.crt")
  end)

  after_each(function()
    for _, gw in ipairs(started) do
      if gw:alive() then gw:stop() end
      assert_no_secret(gw:log_text(), "the gateway log")
    end
    started = {}
    -- Back to the credential the fake started with, for the next test.
    if fake.credential ~= original_credential then fake:set_credential(original_credential) end
  end)

  lazy_teardown(function()
    if fake then fake:stop() end
  end)

  describe("a kubeconfig with a CA file and an inline token", function()
    it("authenticates callers, and --check names the source and context but not the token", function()
      local kc = simple(dir .. "/inline.yaml", nil, nil, "tokengate-system")
      local out, err, code = run({ "--check", "--policy", "none", "--kubeconfig", kc })
      assert.equal(0, code, err)
      assert.truthy(out:find('apiserver: kubeconfig ' .. kc .. ' (from --kubeconfig): context "gw" (current-context), ' ..
        'cluster "fake" at ' .. fake.url .. ', CA file ' .. fake.ca_file .. ', user "tokengate" with an inline token, ' ..
        'namespace "tokengate-system"', 1, true), out)
      assert_no_secret(out .. err, "--check")

      local gw = start({ "--kubeconfig", kc })
      assert_authenticates(gw, "inline token")
      local res = gw:request("not-a-known-token")
      assert.equal(401, res.status) -- really reviewed: the fake said authenticated: false
      assert.truthy(gw:log_text():find('"source":"kubeconfig"', 1, true), gw:log_text())

      -- An inline token cannot rotate: once the API server refuses it, reviews fail closed
      -- and the log says to fix the kubeconfig.
      fake:set_credential("cred-the-inline-token-never-learns")
      assert.equal(503, gw:request((cold())).status)
      assert.truthy(gw:log_text():find("an inline kubeconfig token or a client certificate cannot be re-read", 1, true),
        gw:log_text())
    end)
  end)

  describe("a kubeconfig with certificate-authority-data and a tokenFile", function()
    it("authenticates callers and follows the token file when it rotates", function()
      -- Relative tokenFile: resolved against the kubeconfig's directory, not the cwd.
      local sub = dir .. "/kc-data"
      os.execute("mkdir -p " .. proc.quote(sub))
      local token_file = sub .. "/gateway.token"
      proc.write_file(token_file, fake.credential .. "\n")
      local kc = simple(sub .. "/config", { ca_data = base64_of(fake.ca_file) }, { tokenFile = "gateway.token" })
      local out, err, code = run({ "--check", "--kubeconfig", kc })
      assert.equal(0, code, err)
      assert.truthy(out:find("CA from certificate-authority-data, user \"tokengate\" with token file " .. token_file, 1, true), out)
      assert_no_secret(out .. err, "--check")

      local gw = start({ "--kubeconfig", kc })
      assert_authenticates(gw, "token file")

      -- Rotation seen by the file check: new content first, then the fake switches.
      local before = fake:stats().unauthorized
      proc.write_file(token_file, "cred-rotated-by-file-change\n")
      fake:set_credential("cred-rotated-by-file-change")
      proc.sleep(1.2) -- the file is checked at most once a second
      assert_authenticates(gw, "after the token file changed")
      assert.equal(before, fake:stats().unauthorized, "the new credential was read before any call with the old")

      -- Rotation seen by a 401: the fake switches first, the file follows.
      fake:set_credential("cred-rotated-before-the-file")
      local stale = gw:request((cold()))
      assert.equal(503, stale.status) -- the API server refused the old credential: fail closed
      assert.is_true(fake:stats().unauthorized > before)
      proc.write_file(token_file, "cred-rotated-before-the-file\n")
      proc.wait_until("the gateway to re-read the token file after the 401", function()
        local token, user = cold()
        local res = gw:request(token)
        if res.status ~= 200 then return false end
        assert.equal(user, res.headers["x-remote-user"])
        return true
      end, 30)
    end)
  end)

  describe("a kubeconfig with several contexts", function()
    local kc
    before_each(function()
      kc = kubeconfig(dir .. "/contexts.yaml", {
        current = "wrong-ca",
        clusters = {
          { name = "untrusted", server = fake.url, ca = "other-ca.crt" }, -- relative to the file
          { name = "trusted", server = fake.url, ca = "ca.crt" },
        },
        users = { { name = "gateway", token = fake.credential } },
        contexts = {
          { name = "wrong-ca", cluster = "untrusted", user = "gateway" },
          { name = "good", cluster = "trusted", user = "gateway", namespace = "good-ns" },
        },
      })
    end)

    it("uses current-context (here a cluster with the wrong CA: 503 for cold tokens)", function()
      local out, err, code = run({ "--check", "--kubeconfig", kc })
      assert.equal(0, code, err)
      assert.truthy(out:find('context "wrong-ca" (current-context), cluster "untrusted"', 1, true), out)
      local gw = start({ "--kubeconfig", kc }, nil, { wait_ready = false })
      for _ = 1, 3 do
        local token = cold()
        assert.equal(503, gw:request(token).status)
        assert.is_nil(fake:stats().by_token[token], "no review may cross a TLS connection it could not verify")
      end
      assert.is_true(gw:alive())
    end)

    it("uses --context instead", function()
      local out, err, code = run({ "--check", "--kubeconfig", kc, "--context", "good" })
      assert.equal(0, code, err)
      assert.truthy(out:find('context "good" (--context), cluster "trusted" at ' .. fake.url .. ", CA file " .. dir .. "/ca.crt", 1, true), out)
      local gw = start({ "--kubeconfig", kc, "--context", "good" })
      assert_authenticates(gw, "--context good")
    end)
  end)

  describe("a cluster whose certificate-authority-data is not the API server's CA", function()
    it("answers 503, never 200, and the gateway stays up", function()
      local kc = simple(dir .. "/wrong-ca-data.yaml", { ca_data = base64_of(dir .. "/other-ca.crt") })
      local gw = start({ "--kubeconfig", kc }, nil, { wait_ready = false })
      local before = fake:stats().tokenreview_calls
      for _ = 1, 8 do -- beyond the circuit breaker's threshold too
        local res = gw:request((cold()))
        assert.equal(503, res.status)
        assert.is_nil(res.headers["x-remote-user"])
      end
      assert.equal(before, fake:stats().tokenreview_calls, "no review crossed the unverified connection")
      assert.is_true(gw:alive())
      assert.equal(200, http.get(gw.admin_url .. "/healthz").status)
      assert.equal(503, http.get(gw.admin_url .. "/readyz").status)
      assert.is_true(gw:metric('gateway_tokenreview_api_errors_total{reason="network"}') >= 1)
    end)
  end)

  describe("precedence", function()
    it("reads $KUBECONFIG (its first path only) when --kubeconfig is absent", function()
      local kc = simple(dir .. "/from-env.yaml")
      local env = { KUBECONFIG = kc .. "::" .. dir .. "/does-not-exist.yaml" }
      local out, err, code = run({ "--check" }, env)
      assert.equal(0, code, err)
      assert.truthy(out:find("apiserver: kubeconfig " .. kc .. " (from $KUBECONFIG)", 1, true), out)
      assert.truthy(out:find("only the first of the 2 paths in $KUBECONFIG is read (no merging)", 1, true), out)
      local gw = start({}, env)
      assert_authenticates(gw, "$KUBECONFIG")
    end)

    it("prefers --kubeconfig over $KUBECONFIG", function()
      local kc = simple(dir .. "/flag.yaml")
      local env = { KUBECONFIG = dir .. "/does-not-exist.yaml" }
      local out, err, code = run({ "--check", "--kubeconfig", kc }, env)
      assert.equal(0, code, err)
      assert.truthy(out:find("(from --kubeconfig)", 1, true), out)
      assert.truthy(out:find("ignored (--kubeconfig takes precedence): $KUBECONFIG", 1, true), out)
      assert_authenticates(start({ "--kubeconfig", kc }, env), "--kubeconfig over $KUBECONFIG")
    end)

    it("prefers explicit --apiserver flags over --kubeconfig, $KUBECONFIG and in-cluster", function()
      local broken = dir .. "/broken.yaml"
      proc.write_file(broken, "apiVersion: v1\nkind: Config\nclusters: [\n")
      local env = { KUBECONFIG = dir .. "/does-not-exist.yaml",
        KUBERNETES_SERVICE_HOST = "127.0.0.1", KUBERNETES_SERVICE_PORT = "1" }
      local args = { "--apiserver", fake.url, "--apiserver-ca", fake.ca_file,
        "--apiserver-token-file", fake.credential_file, "--kubeconfig", broken, "--context", "nope",
        "--serviceaccount-dir", dir .. "/no-such-dir" }
      -- Each of the lower sources alone is an error: the flags must be what saves it.
      local _, err_alone, code_alone = run({ "--check", "--kubeconfig", broken })
      assert.are_not.equal(0, code_alone)
      assert.truthy(err_alone:find("YAML", 1, true), err_alone)
      local _, err_env, code_env = run({ "--check" }, env)
      assert.are_not.equal(0, code_env)
      assert.truthy(err_env:find("does-not-exist.yaml (from $KUBECONFIG)", 1, true), err_env)

      local check_args = { "--check" }
      for _, a in ipairs(args) do check_args[#check_args + 1] = a end
      local out, err, code = run(check_args, env)
      assert.equal(0, code, err)
      assert.truthy(out:find("ignored (explicit flags take precedence): --kubeconfig --context $KUBECONFIG " ..
        "in-cluster environment", 1, true), out)
      local gw = start(args, env)
      assert_authenticates(gw, "explicit flags")
      assert.truthy(gw:log_text():find('"source":"flags"', 1, true), gw:log_text())
    end)
  end)

  describe("in-cluster", function()
    -- A service-account mount as the kubelet makes it: token, ca.crt and namespace are
    -- symlinks into ..data, itself a symlink to a timestamped directory swapped atomically.
    local sa_dir
    local function project(version, credential)
      local data = string.format("..%d_tokens", version)
      os.execute("mkdir -p " .. proc.quote(sa_dir .. "/" .. data))
      proc.write_file(sa_dir .. "/" .. data .. "/token", credential)
      proc.write_file(sa_dir .. "/" .. data .. "/ca.crt", proc.read_file(fake.ca_file))
      proc.write_file(sa_dir .. "/" .. data .. "/namespace", "tokengate-ns")
      local _, code = proc.run(string.format("cd %s && ln -sfn %s ..data_tmp && mv -T ..data_tmp ..data && " ..
        "for f in token ca.crt namespace; do [ -L $f ] || ln -s ..data/$f $f; done", proc.quote(sa_dir), data))
      assert.equal(0, code)
    end

    before_each(function()
      sa_dir = string.format("%s/serviceaccount-%d", dir, math.random(1, 1e9))
      os.execute("mkdir -p " .. proc.quote(sa_dir))
      project(1, fake.credential)
    end)

    it("serves from KUBERNETES_SERVICE_HOST/PORT and --serviceaccount-dir, and --check says in-cluster", function()
      local env = { KUBERNETES_SERVICE_HOST = "127.0.0.1", KUBERNETES_SERVICE_PORT = port }
      local out, err, code = run({ "--check", "--serviceaccount-dir", sa_dir }, env)
      assert.equal(0, code, err)
      assert.truthy(out:find("apiserver: in-cluster: KUBERNETES_SERVICE_HOST/PORT give https://127.0.0.1:" .. port ..
        ", token and CA from " .. sa_dir .. ', namespace "tokengate-ns"', 1, true), out)
      assert_no_secret(out .. err, "--check")
      local gw = start({ "--serviceaccount-dir", sa_dir }, env)
      assert_authenticates(gw, "in-cluster")
      assert.truthy(gw:log_text():find('"source":"in-cluster"', 1, true), gw:log_text())

      -- The kubelet rotates the projected token by swapping ..data.
      project(2, "cred-projected-rotation")
      fake:set_credential("cred-projected-rotation")
      proc.sleep(1.2)
      assert_authenticates(gw, "after the kubelet-style rotation")
    end)
  end)

  describe("client certificates (the fake never asks for one)", function()
    local function mtls(path, key_file, data_form)
      local user = { token = fake.credential }
      if data_form then
        user.cert_data = base64_of(dir .. "/client.crt")
        user.key_data = base64_of(key_file)
      else
        user.cert, user.key = dir .. "/client.crt", key_file
      end
      return simple(path, nil, user)
    end

    it("load with their key, and are reported by --check", function()
      for _, data_form in ipairs{ false, true } do
        local kc = mtls(dir .. "/mtls.yaml", dir .. "/client.key", data_form)
        local out, err, code = run({ "--check", "--kubeconfig", kc })
        assert.equal(0, code, err)
        assert.truthy(out:find("an inline token and a client certificate (" .. (data_form and "embedded" or "files") .. ")", 1, true), out)
        assert_no_secret(out .. err, "--check")
        local gw = start({ "--kubeconfig", kc })
        assert_authenticates(gw, data_form and "embedded client certificate" or "client certificate files")
        gw:stop()
      end
    end)

    it("with a key that is not the certificate's: refused at start-up and by --check", function()
      for _, data_form in ipairs{ false, true } do
        local kc = mtls(dir .. "/mtls-mismatch.yaml", dir .. "/other-ca.key", data_form)
        local _, err, code = run({ "--check", "--kubeconfig", kc })
        assert.are_not.equal(0, code)
        assert.truthy(err:find("the client key does not match the client certificate", 1, true), err)
        assert_no_secret(err, "--check")
        _, err, code = run({ "--kubeconfig", kc, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0" })
        assert.are_not.equal(0, code)
        assert.truthy(err:find("does not match", 1, true), err)
      end
    end)

    it("with a CA that holds no certificate: refused at start-up", function()
      proc.write_file(dir .. "/garbage-ca.crt", "not a certificate\n")
      local kc = dir .. "/garbage-ca.yaml"
      proc.write_file(kc, (proc.read_file(mtls(dir .. "/mtls.yaml", dir .. "/client.key", false)) or "")
        :gsub("certificate%-authority: [^\n]+", "certificate-authority: " .. dir .. "/garbage-ca.crt"))
      local _, err, code = run({ "--check", "--kubeconfig", kc })
      assert.are_not.equal(0, code)
      assert.truthy(err:find("holds no PEM certificate", 1, true), err)
    end)

    it("is refused at start-up without its key, or with an unreadable key file", function()
      local no_key = simple(dir .. "/mtls-nokey.yaml", nil, { cert = dir .. "/client.crt" })
      local _, err, code = run({ "--check", "--kubeconfig", no_key })
      assert.are_not.equal(0, code)
      assert.truthy(err:find('user "tokengate" has a client certificate but no client key', 1, true), err)
      local missing = simple(dir .. "/mtls-missing.yaml", nil,
        { cert = dir .. "/client.crt", key = dir .. "/no-such.key" })
      _, err, code = run({ "--check", "--kubeconfig", missing })
      assert.are_not.equal(0, code)
      assert.truthy(err:find('user "tokengate": client-key ' .. dir .. "/no-such.key: No such file or directory", 1, true), err)
    end)
  end)

  describe("start-up errors", function()
    -- Both `--check` and a real start must fail fast: exit non-zero by themselves, with this
    -- text on stderr, no secret, never listening, and without a single TLS connection to
    -- the API server (the fake counts them: no retry loop, no probe, the configuration
    -- alone is refused). `timeout 60` only keeps a hung gateway from hanging the suite.
    local function refused(args, env, expected)
      local check_args = { "--check" }
      for _, a in ipairs(args) do check_args[#check_args + 1] = a end
      for _, argv in ipairs{ check_args, args } do
        local connections = fake:stats().connections
        local out, err, code = run(argv, env)
        local what = table.concat(argv, " ")
        assert.are_not.equal(0, code, what .. ": " .. out .. err)
        assert.are_not.equal(124, code, what .. " did not exit by itself")
        assert.are.equal(connections, fake:stats().connections, what .. " connected to the API server")
        for _, text in ipairs(expected) do
          assert.truthy(err:find(text, 1, true), what .. ": expected " .. text .. " in: " .. err)
        end
        assert.is_nil((out .. err):find('"msg":"listening"', 1, true), what .. " started listening")
        assert_no_secret(out .. err, what)
      end
    end

    it("refuses insecure-skip-tls-verify: true", function()
      local kc = simple(dir .. "/insecure.yaml", { extra = { "insecure-skip-tls-verify: true" } })
      refused({ "--kubeconfig", kc }, nil, { "kubeconfig " .. kc .. " (from --kubeconfig)",
        'cluster "fake" sets insecure-skip-tls-verify: true, which tokengate refuses' })
    end)

    it("refuses an http:// server", function()
      local kc = simple(dir .. "/http.yaml", { server = "http://127.0.0.1:" .. port })
      refused({ "--kubeconfig", kc }, nil, { 'cluster "fake": server http://127.0.0.1:' .. port .. " uses plain http://" })
    end)

    it("refuses an exec user", function()
      local kc = simple(dir .. "/exec.yaml", nil, { extra = { "exec:",
        "  apiVersion: client.authentication.k8s.io/v1beta1", "  command: gke-gcloud-auth-plugin" } })
      refused({ "--kubeconfig", kc }, nil, { 'user "tokengate" uses an exec credential plugin, which is not supported' })
    end)

    it("refuses an unknown --context and names the available ones", function()
      local kc = kubeconfig(dir .. "/two-contexts.yaml", {
        current = "dev",
        clusters = { { name = "c", server = fake.url, ca = fake.ca_file } },
        users = { { name = "u", token = fake.credential } },
        contexts = { { name = "dev", cluster = "c", user = "u" }, { name = "staging", cluster = "c", user = "u" } },
      })
      refused({ "--kubeconfig", kc, "--context", "prod" }, nil,
        { 'context "prod" not found (available: "dev", "staging")' })
    end)

    it("refuses a missing $KUBECONFIG file rather than falling back", function()
      refused({}, { KUBECONFIG = dir .. "/does-not-exist.yaml" },
        { "kubeconfig " .. dir .. "/does-not-exist.yaml (from $KUBECONFIG): No such file or directory" })
    end)

    it("refuses in-cluster without the service-account files", function()
      refused({ "--serviceaccount-dir", dir .. "/no-such-dir" },
        { KUBERNETES_SERVICE_HOST = "127.0.0.1", KUBERNETES_SERVICE_PORT = port },
        { "in-cluster: service-account token " .. dir .. "/no-such-dir/token: No such file or directory",
          "automountServiceAccountToken" })
    end)

    it("refuses --context without a kubeconfig", function()
      refused({ "--context", "dev" }, { KUBERNETES_SERVICE_HOST = "127.0.0.1", KUBERNETES_SERVICE_PORT = port },
        { "--context dev needs a kubeconfig (--kubeconfig FILE or $KUBECONFIG)" })
    end)

    it("refuses part of the explicit flags", function()
      refused({ "--apiserver", fake.url }, nil,
        { "--apiserver-ca and --apiserver-token-file missing" })
    end)

    it("refuses to serve with no API server configured at all; --check only notes it", function()
      -- No flags, no $KUBECONFIG, no KUBERNETES_SERVICE_*: the service-account directory
      -- alone (even an existing one, or a missing one) is not a source.
      local sa = dir .. "/lonely-sa"
      os.execute("mkdir -p " .. proc.quote(sa))
      proc.write_file(sa .. "/token", fake.credential)
      proc.write_file(sa .. "/ca.crt", proc.read_file(fake.ca_file))
      for _, sa_dir in ipairs{ sa, dir .. "/no-such-dir" } do
        local connections = fake:stats().connections
        local out, err, code = run({ "--serviceaccount-dir", sa_dir })
        assert.equal(1, code, out .. err)
        assert.are.equal(connections, fake:stats().connections, "connected to an API server")
        assert.truthy(err:find("no API server configured: pass --apiserver, --apiserver-ca and --apiserver-token-file, " ..
          "or --kubeconfig FILE, or set $KUBECONFIG, or run in a pod", 1, true), err)
        assert.is_nil(out:find('"msg":"listening"', 1, true))
      end
      -- `--check` validates flags and policy without a server (like nginx -t), and says so.
      local out, err, code = run({ "--check" })
      assert.equal(0, code, err)
      assert.truthy(err:find("note: no API server configured", 1, true), err)
      assert.truthy(out:find("apiserver: (none configured)", 1, true), out)
    end)
  end)
end)
