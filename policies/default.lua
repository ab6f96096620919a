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

local function verb_of(method)
  return VERBS[method] or string.lower(method)
end

local MAX_PATH = tg.limits.sar_path

return {
  authorize = function(req, user)
    if #req.path > MAX_PATH then
      return tg.deny("request path is too long to authorize")
    end
    return tg.sar{ path = req.path, verb = verb_of(req.method) }
  end,
}
