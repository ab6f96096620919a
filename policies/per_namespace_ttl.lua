-- per_namespace_ttl.lua: how long a TokenReview verdict is cached, per namespace.
--
-- Every authenticated caller is allowed (authorization is left to the service behind the
-- gateway); what changes per namespace is how quickly the gateway notices a revoked or
-- deleted ServiceAccount. A short TTL means more TokenReviews; a long one means a deleted
-- token keeps working a little longer. The gateway never caches longer than
-- --cache-max-ttl, nor past the token's own expiry.
local tg = require("tokengate")

-- Seconds. Namespaces not listed get DEFAULT_TTL.
local TTL_BY_NAMESPACE = {
  payments = 30,      -- money moves here: notice revocations quickly
  ["kube-system"] = 10,
}
local DEFAULT_TTL = 120
-- Callers that are not ServiceAccounts (users, nodes) have no namespace.
local NON_SERVICEACCOUNT_TTL = 60

-- Built once: a decision may be returned again and again.
local ALLOW = tg.allow()

return {
  ttl = function(user)
    if user.namespace == nil then return NON_SERVICEACCOUNT_TTL end
    return TTL_BY_NAMESPACE[user.namespace] or DEFAULT_TTL
  end,

  authorize = function(req, user)
    return ALLOW
  end,
}
