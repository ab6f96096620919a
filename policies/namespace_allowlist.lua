-- namespace_allowlist.lua: only ServiceAccounts of listed namespaces may call the
-- service, and the upstream learns which tenant is calling from an X-Tenant header.
--
-- The header is added to the 200 answer (authz mode; configure nginx/Envoy/Traefik to copy
-- it upstream) or to the forwarded request (proxy mode). A policy cannot set X-Remote-*
-- headers: the caller's identity always comes from the TokenReview.
local tg = require("tokengate")

local ALLOWED_NAMESPACES = {
  ["team-a"] = true,
  ["team-b"] = true,
}

return {
  authorize = function(req, user)
    local ns = user.namespace
    if ns == nil then
      return tg.deny("only ServiceAccounts may call this service")
    end
    if not ALLOWED_NAMESPACES[ns] then
      return tg.deny("namespace " .. ns .. " is not allowed to call this service")
    end
    return tg.allow{ headers = { ["X-Tenant"] = ns } }
  end,
}
