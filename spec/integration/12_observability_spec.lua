-- Integration: the observability kit (examples/prometheus/alerts.yaml, its promtool unit
-- tests, examples/grafana/tokengate.json) checked with Debian's promtool and Prometheus
-- against the real gateway's /metrics, so that a renamed metric or label value, or a
-- query that no longer parses, fails here rather than on someone's dashboard.
local fake_mod = require("support.fake")
local gateway_mod = require("support.gateway")
local proc = require("support.proc")
local http = require("support.http")
local cjson = require("cjson")
local lyaml = require("lyaml")

local ALERTS = "examples/prometheus/alerts.yaml"
local ALERTS_TEST = "examples/prometheus/alerts_test.yaml"
local DASHBOARD = "examples/grafana/tokengate.json"

local function tool(name)
  local out = proc.run("command -v " .. name)
  local path = out:match("(%S+)")
  assert(path, name .. " is not installed (./run setup installs the prometheus package)")
  return path
end

local function alert_rules()
  local text = assert(proc.read_file(ALERTS), "cannot read " .. ALERTS)
  local doc = lyaml.load(text)
  local rules = {}
  for _, group in ipairs(doc.groups) do
    for _, rule in ipairs(group.rules) do rules[#rules + 1] = rule end
  end
  return rules
end

local function dashboard()
  local text = assert(proc.read_file(DASHBOARD), "cannot read " .. DASHBOARD)
  return cjson.decode(text)
end

-- Every panel, including those inside collapsed rows.
local function all_panels(dash)
  local out = {}
  for _, p in ipairs(dash.panels) do
    out[#out + 1] = p
    for _, inner in ipairs(p.panels or {}) do out[#out + 1] = inner end
  end
  return out
end

-- { { where = "...", expr = "..." } } for every PromQL expression of the dashboard: panel
-- targets and annotation queries. Template-variable queries (label_values) are separate.
local function dashboard_exprs(dash)
  local out = {}
  for _, p in ipairs(all_panels(dash)) do
    for _, t in ipairs(p.targets or {}) do
      out[#out + 1] = { where = "panel '" .. p.title .. "' " .. t.refId, expr = t.expr }
    end
  end
  for _, a in ipairs(dash.annotations.list) do
    if a.expr then out[#out + 1] = { where = "annotation '" .. a.name .. "'", expr = a.expr } end
  end
  return out
end

local function variable_queries(dash)
  local out = {}
  for _, v in ipairs(dash.templating.list) do
    if v.type == "query" then out[#out + 1] = { where = "variable $" .. v.name, query = v.query.query } end
  end
  return out
end

-- Grafana's variables replaced by what a query needs to run outside Grafana.
local function expand(expr, rate_interval)
  return (expr:gsub("%$__rate_interval", rate_interval):gsub("%$job", ".+"):gsub("%$instance", ".+"))
end

-- The metric names an expression uses: identifiers that start with gateway_ or process_,
-- with string literals (label values, legend text) removed first.
local function metric_names(expr)
  local names = {}
  local bare = expr:gsub('"[^"]*"', '""')
  for ident in bare:gmatch("[%a_:][%w_:]*") do
    if ident:match("^gateway_") or ident:match("^process_") then names[ident] = true end
  end
  return names
end

-- { { metric =, label =, value = } } for each exact-equality matcher (label="value") on a
-- gateway metric; job/instance/namespace come from the scrape, not from the gateway.
local SCRAPE_LABELS = { job = true, instance = true, namespace = true, pod = true }
local function exact_matchers(expr)
  local out = {}
  for metric, body in expr:gmatch("(gateway_[%w_]+)%s*(%b{})") do
    for label, op, value in body:gmatch('([%a_][%w_]*)%s*([=!~]+)%s*"([^"]*)"') do
      if op == "=" and not SCRAPE_LABELS[label] then
        out[#out + 1] = { metric = metric, label = label, value = value }
      end
    end
  end
  return out
end

-- Sample names and lines of a Prometheus text exposition.
local function exposition(text)
  local names, lines = {}, {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local name = line:match("^([%a_:][%w_:]*)")
      if name then
        names[name] = true
        lines[#lines + 1] = line
      end
    end
  end
  return names, lines
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- Every PromQL expression the kit uses: { { where =, expr = } }.
local function every_expr()
  local exprs = {}
  for _, rule in ipairs(alert_rules()) do
    exprs[#exprs + 1] = { where = "alert " .. rule.alert, expr = rule.expr }
  end
  local dash = dashboard()
  for _, e in ipairs(dashboard_exprs(dash)) do exprs[#exprs + 1] = e end
  for _, v in ipairs(variable_queries(dash)) do exprs[#exprs + 1] = { where = v.where, expr = v.query } end
  return exprs
end

describe("examples/prometheus/alerts.yaml", function()
  it("passes promtool check rules", function()
    local out, code = proc.run(proc.quote(tool("promtool")) .. " check rules " .. proc.quote(ALERTS))
    assert.equal(0, code, out)
    assert.truthy(out:find("SUCCESS", 1, true), out)
  end)

  it("passes its unit tests (promtool test rules alerts_test.yaml)", function()
    local out, code = proc.run(proc.quote(tool("promtool")) .. " test rules " .. proc.quote(ALERTS_TEST))
    assert.equal(0, code, out)
    assert.truthy(out:find("SUCCESS", 1, true), out)
  end)

  it("gives every alert a for:, a severity and summary and description annotations", function()
    local rules = alert_rules()
    assert.is_true(#rules >= 9)
    local seen = {}
    for _, rule in ipairs(rules) do
      assert.is_string(rule.alert)
      assert.is_nil(seen[rule.alert], "duplicate alert " .. rule.alert)
      seen[rule.alert] = true
      assert.is_string(rule["for"], rule.alert .. " has no for:")
      assert.truthy(rule.labels and (rule.labels.severity == "warning" or rule.labels.severity == "critical"),
        rule.alert .. " has no severity warning|critical")
      assert.truthy(rule.annotations and rule.annotations.summary ~= nil and rule.annotations.description ~= nil,
        rule.alert .. " lacks summary or description")
    end
    -- The issue's list: hit rate, API errors, throttling, circuit, policy reloads and
    -- errors, latency, 5xx ratio, stale verdicts.
    for _, name in ipairs{ "TokengateCacheHitRateLow", "TokengateTokenReviewErrors", "TokengateAPIServerThrottling",
        "TokengateCircuitOpen", "TokengatePolicyReloadFailed", "TokengatePolicyErrors", "TokengateRequestLatencyHigh",
        "TokengateHighErrorRatio", "TokengateStaleVerdictsServed" } do
      assert.is_true(seen[name] == true, "missing alert " .. name)
    end
  end)
end)

describe("examples/grafana/tokengate.json", function()
  it("is a schemaVersion 38 dashboard whose panels all use the datasource variable", function()
    local dash = dashboard()
    assert.equal(38, dash.schemaVersion)
    assert.equal("tokengate", dash.uid)
    local ds
    for _, v in ipairs(dash.templating.list) do
      if v.name == "datasource" then ds = v end
    end
    assert.truthy(ds, "no datasource variable")
    assert.equal("datasource", ds.type)
    assert.equal("prometheus", ds.query)
    local ids = {}
    local queries = 0
    for _, p in ipairs(all_panels(dash)) do
      assert.is_nil(ids[p.id], "duplicate panel id " .. tostring(p.id))
      ids[p.id] = true
      local g = p.gridPos
      assert.truthy(g and g.x >= 0 and g.w >= 1 and g.x + g.w <= 24 and g.h >= 1, "bad gridPos in " .. p.title)
      if p.type ~= "row" then
        assert.equal("${datasource}", p.datasource.uid, p.title)
        assert.is_true(#p.targets >= 1, p.title .. " has no query")
        for _, t in ipairs(p.targets) do
          assert.equal("${datasource}", t.datasource.uid, p.title)
          assert.is_string(t.expr)
          queries = queries + 1
        end
      end
    end
    assert.is_true(queries >= 20)
  end)

  it("has panels for what the issue lists", function()
    local text = proc.read_file(DASHBOARD)
    for _, metric in ipairs{ "gateway_tokenreview_cache_hits_total", "gateway_tokenreview_api_calls_total",
        "gateway_tokenreview_api_latency_seconds_bucket", "gateway_tokenreview_coalesced_total",
        "gateway_tokenreview_api_errors_total", "gateway_requests_total", "gateway_tokenreview_cache_entries",
        "gateway_policy_reloads_total", "gateway_subjectaccessreview_api_calls_total", "gateway_apiserver_queue_depth",
        "gateway_apiserver_circuit_open", "gateway_apiserver_retries_total", "gateway_tokenreview_stale_served_total",
        "process_resident_memory_bytes", "gateway_apiserver_concurrency_limit", "gateway_apiserver_throttled_total",
        "gateway_access_log_lines_total",
        "gateway_policy_last_reload_failed", "gateway_policy_file_in_sync", "tokengate_build_info" } do
      assert.truthy(text:find(metric, 1, true), "no panel uses " .. metric)
    end
  end)

  it("has only expressions that promtool parses as PromQL", function()
    -- promtool has no expression checker of its own: each expression becomes a recording
    -- rule of a scratch rules file, which check rules parses.
    local dir = proc.tmpdir()
    local rules = {}
    for i, e in ipairs(dashboard_exprs(dashboard())) do
      rules[#rules + 1] = { record = "tokengate_dashboard:expr_" .. i, expr = expand(e.expr, "5m") }
    end
    local file = dir .. "/dashboard_rules.yaml"
    proc.write_file(file, lyaml.dump{ { groups = { { name = "dashboard", rules = rules } } } })
    local out, code = proc.run(proc.quote(tool("promtool")) .. " check rules " .. proc.quote(file))
    proc.run("rm -rf " .. proc.quote(dir))
    assert.equal(0, code, out)
    assert.truthy(out:find("SUCCESS: " .. #rules .. " rules found", 1, true), out)
  end)
end)

describe("the observability kit against a real gateway", function()
  local fake, gw, text, prom, prom_dir

  local TOKENS = {
    { token = "tok-team-a-sender", username = "system:serviceaccount:team-a:sender", uid = "uid-a",
      groups = { "system:serviceaccounts", "system:authenticated" } },
  }
  -- The built-in default policy asks a non-resource SubjectAccessReview of path and verb.
  local SAR_RULES = { { user = "system:serviceaccount:team-a:sender", verb = "get", path = "/hooks" } }

  local function traffic()
    for _ = 1, 3 do
      assert.equal(200, gw:request("tok-team-a-sender", "/hooks").status)
      assert.equal(403, gw:request("tok-team-a-sender", "/admin").status)
      assert.equal(401, gw:request("not-a-token", "/hooks").status)
    end
  end

  lazy_setup(function()
    fake = fake_mod.start{ tokens = TOKENS, sar_rules = SAR_RULES }
    gw = gateway_mod.start{ fake = fake }
    traffic()
    text = gw:metrics()._text
  end)

  lazy_teardown(function()
    if prom then proc.stop(prom, 10) end
    if prom_dir and not os.getenv("TOKENGATE_KEEP_SPEC_FILES") then proc.run("rm -rf " .. proc.quote(prom_dir)) end
    if gw then gw:stop() end
    if fake then fake:stop() end
  end)

  it("exports every metric name the alerts and the dashboard use", function()
    local exported = exposition(text)
    local used, missing = {}, {}
    for _, e in ipairs(every_expr()) do
      for name in pairs(metric_names(e.expr)) do
        used[name] = true
        if not exported[name] then missing[#missing + 1] = name .. " (" .. e.where .. ")" end
      end
    end
    assert.is_true(#sorted_keys(used) >= 25, "too few metric names found: " .. table.concat(sorted_keys(used), " "))
    assert.same({}, missing)
  end)

  it("exports every label value the alerts and the dashboard match exactly", function()
    local _, lines = exposition(text)
    local missing = {}
    local checked = 0
    for _, e in ipairs(every_expr()) do
      for _, m in ipairs(exact_matchers(e.expr)) do
        checked = checked + 1
        local found = false
        for _, line in ipairs(lines) do
          if line:sub(1, #m.metric + 1) == m.metric .. "{" and
              line:find(m.label .. '="' .. m.value .. '"', 1, true) then
            found = true
            break
          end
        end
        if not found then
          missing[#missing + 1] = string.format('%s{%s="%s"} (%s)', m.metric, m.label, m.value, e.where)
        end
      end
    end
    assert.is_true(checked >= 2) -- reason="throttled" (dashboard x2; the alert counts 429s itself)
    assert.same({}, missing)
  end)

  it("real Prometheus scraping it loads the alerts and answers every dashboard query with data", function()
    local binary = tool("prometheus")
    prom_dir = proc.tmpdir()
    local target = gw.admin_url:gsub("^http://", "")
    local abs_alerts = proc.run("readlink -f " .. proc.quote(ALERTS)):match("(%S+)")
    proc.write_file(prom_dir .. "/prometheus.yml", table.concat({
      "global:",
      "  scrape_interval: 1s",
      "  evaluation_interval: 1s",
      "rule_files: ['" .. abs_alerts .. "']",
      "scrape_configs:",
      "  - job_name: tokengate",
      "    static_configs:",
      "      - targets: ['" .. target .. "']",
      "" }, "\n"))
    -- Prometheus cannot report a port it picked itself: a free one from proc.free_ports, and
    -- another if a spec running beside this one took it first.
    local url
    for _ = 1, 10 do
      local port = proc.free_ports(1)[1]
      prom = proc.spawn({ binary, "--config.file=" .. prom_dir .. "/prometheus.yml",
        "--storage.tsdb.path=" .. prom_dir .. "/data", "--web.listen-address=127.0.0.1:" .. port },
        prom_dir .. "/prometheus.log")
      local deadline = proc.now() + 60
      while proc.now() < deadline and proc.alive(prom) do
        if http.get("http://127.0.0.1:" .. port .. "/-/ready", nil, { timeout = 5 }).status == 200 then
          url = "http://127.0.0.1:" .. port
          break
        end
        proc.sleep(0.1)
      end
      if url then break end
      local log = proc.read_file(prom_dir .. "/prometheus.log") or ""
      proc.stop(prom)
      prom = nil
      assert.truthy(log:find("address already in use", 1, true), "prometheus did not start:\n" .. log)
    end
    assert.truthy(url, "prometheus found no free port")

    local function query(expr)
      local res = http.get(url .. "/api/v1/query?query=" .. urlencode(expr), nil, { timeout = 10 })
      local ok, doc = pcall(cjson.decode, res.body)
      assert.truthy(ok, "prometheus answered " .. res.status .. ": " .. res.body)
      return doc
    end

    -- rate() needs two scrapes in its window: traffic between scrapes, then wait.
    local deadline = proc.now() + 30
    repeat
      traffic()
      proc.sleep(1)
      local doc = query('count(rate(gateway_requests_total{job="tokengate"}[15s]) > 0)')
      local ready = doc.status == "success" and #doc.data.result == 1
    until ready or proc.now() > deadline
    proc.sleep(2)

    local dash = dashboard()
    local failures = {}
    for _, e in ipairs(dashboard_exprs(dash)) do
      local doc = query(expand(e.expr, "15s"))
      if doc.status ~= "success" then
        failures[#failures + 1] = e.where .. ": " .. tostring(doc.error)
      elseif #doc.data.result == 0 and not e.where:match("^annotation") then
        -- The reload annotation is empty unless a policy was loaded in the last 2 min.
        failures[#failures + 1] = e.where .. ": no data for " .. expand(e.expr, "15s")
      end
    end
    for _, v in ipairs(variable_queries(dash)) do
      local metric, label = expand(v.query, "15s"):match("^label_values%((.+),%s*([%w_]+)%)$")
      assert.truthy(metric, v.where .. " is not label_values(selector, label)")
      local res = http.get(url .. "/api/v1/label/" .. label .. "/values?match[]=" .. urlencode(metric))
      local doc = cjson.decode(res.body)
      if doc.status ~= "success" or #doc.data == 0 then
        failures[#failures + 1] = v.where .. ": no values (" .. res.body .. ")"
      end
    end
    for _, rule in ipairs(alert_rules()) do
      local doc = query(rule.expr)
      if doc.status ~= "success" then failures[#failures + 1] = "alert " .. rule.alert .. ": " .. tostring(doc.error) end
    end
    assert.same({}, failures)

    -- The rules file loaded and every alert evaluated without error.
    local loaded
    deadline = proc.now() + 10
    repeat
      local doc = cjson.decode(http.get(url .. "/api/v1/rules").body)
      loaded = {}
      local all_ok = true
      for _, group in ipairs(doc.data.groups) do
        for _, rule in ipairs(group.rules) do
          loaded[#loaded + 1] = rule.name
          if rule.health ~= "ok" then all_ok = false end
        end
      end
      if all_ok and #loaded > 0 then break end
      proc.sleep(0.5)
    until proc.now() > deadline
    assert.equal(#alert_rules(), #loaded)
    local doc = cjson.decode(http.get(url .. "/api/v1/rules").body)
    for _, group in ipairs(doc.data.groups) do
      for _, rule in ipairs(group.rules) do
        assert.equal("ok", rule.health, rule.name .. ": " .. tostring(rule.lastError))
      end
    end
  end)
end)
