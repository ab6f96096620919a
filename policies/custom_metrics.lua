-- custom_metrics.lua: count decisions per namespace and record request body sizes,
-- beside the gateway's own metrics on /metrics.
--
-- Metrics are declared once, when the file loads; they survive reloads, and a reload that
-- declares one of them with another type, other labels or other buckets fails (the old
-- policy keeps running). Label values should come from small sets: the gateway bounds the
-- number of label sets per metric and counts what overflows, but a namespace label is
-- fine, a path or a user name is not.
local tg = require("tokengate")

local decisions = tg.metrics.counter("webhook_decisions_total",
  "Policy decisions by caller namespace and decision", { "namespace", "decision" })

local body_bytes = tg.metrics.histogram("webhook_request_body_bytes",
  "Declared Content-Length of webhook requests", { "namespace" },
  { 256, 1024, 4096, 16384, 65536, 262144, 1048576 })

local ALLOW = tg.allow()
local DENY = tg.deny("only ServiceAccounts may call this service")

return {
  authorize = function(req, user)
    local ns = user.namespace
    if ns == nil then
      decisions:inc{ namespace = "", decision = "deny" }
      return DENY
    end
    local length = tonumber(req.headers["content-length"])
    if length and length >= 0 then
      body_bytes:observe({ namespace = ns }, length)
    end
    decisions:inc{ namespace = ns, decision = "allow" }
    return ALLOW
  end,
}
