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
-- into a policy error. Start from this file when you only need to add a rule or two: add
-- them before the memo lookup, and keep the memoized `tg.sar{...}` as the fallback.
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

-- Decisions already made, by method and then path. Building a decision (tg.sar's checks
-- and tables) is most of what this hook costs, and a decision is immutable once built
-- (the gateway uses what tg.sar validated, whatever happens to the table afterwards), so
-- the one built for a method and path answers every later request with the same pair,
-- as POLICIES.md allows ("a decision can be built once"); the gateway's
-- SubjectAccessReview cache then answers the question itself, per identity. Paths come
-- from clients, so the memo is bounded: once it holds MEMO_MAX decisions it starts over
-- (at most about 1 MiB of the policy's memory: a path is at most MAX_PATH bytes).
local MEMO_MAX = 1024
local memo, memo_size = {}, 0

-- This runs on every request (interpreted: the gateway keeps the JIT off so the
-- instruction budget holds), so it reads each field of req once and keeps tg's
-- functions in locals. It declares no `user` parameter because the SubjectAccessReview
-- carries the identity itself; the gateway then does not build a user table for it.
return {
  authorize = function(req)
    local path, method = req.path, req.method
    local by_path = memo[method]
    local d = by_path and by_path[path]
    if d then return d end
    if #path > MAX_PATH then
      return TOO_LONG
    end
    d = sar{ path = path, verb = VERBS[method] or lower(method) }
    if memo_size >= MEMO_MAX then memo, memo_size = {}, 0 end
    by_path = memo[method]
    if not by_path then
      by_path = {}
      memo[method] = by_path
    end
    by_path[path] = d
    memo_size = memo_size + 1
    return d
  end,
}
