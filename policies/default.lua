-- default.lua: the policy the gateway runs when --policy is not given.
--
-- Every authenticated caller is checked with a non-resource SubjectAccessReview of the
-- request's path and verb, the way kube-rbac-proxy does it, so access is granted with
-- ordinary RBAC, for example:
--
--   kind: ClusterRole
--   rules:
--   - nonResourceURLs: ["/hooks", "/hooks/*"]
--     verbs: ["create"]
--
-- Nothing is allowed without a token (no `anonymous` hook) and verdicts are cached for
-- the gateway's --cache-ttl (no `ttl` hook). A path longer than a SubjectAccessReview
-- attribute may be (tg.limits.sar_path bytes) is denied with a reason rather than turned
-- into a policy error. Start from this file when you only need to add a rule or two: keep
-- the final `return tg.sar{...}` as the fallback.
local tg = require("tokengate")

-- HTTP method -> Kubernetes verb, as kube-rbac-proxy maps them. Anything else (OPTIONS,
-- custom methods) becomes the lower-cased method, which RBAC rules can name too.
local VERBS = {
  GET = "get", HEAD = "get", POST = "create", PUT = "update", PATCH = "patch", DELETE = "delete",
}

local lower = string.lower
local sar = tg.sar
local TOO_LONG = tg.deny("request path is too long to authorize")
local MAX_PATH = tg.limits.sar_path

-- This runs on every request (interpreted: the gateway keeps the JIT off so the
-- instruction budget holds), so it reads each field of req once and keeps tg's
-- functions in locals. It declares no `user` parameter because the SubjectAccessReview
-- carries the identity itself; the gateway then does not build a user table for it.
return {
  authorize = function(req)
    local path = req.path
    if #path > MAX_PATH then
      return TOO_LONG
    end
    local method = req.method
    return sar{ path = path, verb = VERBS[method] or lower(method) }
  end,
}
