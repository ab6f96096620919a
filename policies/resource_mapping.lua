-- resource_mapping.lua: map request paths and methods to Kubernetes resource attributes,
-- so access is granted with namespaced RBAC Roles instead of cluster-wide
-- nonResourceURLs.
--
--   /apis/hooks/<namespace>/<resource>          collection: GET list, POST create,
--                                               DELETE deletecollection
--   /apis/hooks/<namespace>/<resource>/<name>   one object: GET get, PUT update,
--                                               PATCH patch, DELETE delete
--
-- are checked with a SubjectAccessReview of group hooks.example.com, for example
--
--   kind: Role
--   metadata: { namespace: team-a }
--   rules:
--   - apiGroups: ["hooks.example.com"]
--     resources: ["deliveries"]
--     verbs: ["create"]
--
-- Every other path, method or malformed segment is denied without asking the API server.
local tg = require("tokengate")

local GROUP = "hooks.example.com"
local VERSION = "v1"

local COLLECTION_VERBS = { GET = "list", HEAD = "list", POST = "create", DELETE = "deletecollection" }
local OBJECT_VERBS = { GET = "get", HEAD = "get", PUT = "update", PATCH = "patch", DELETE = "delete" }

-- Kubernetes names (RFC 1123 labels): lower-case alphanumerics and '-', at most 63
-- bytes, starting and ending alphanumeric. Lua patterns have no optional groups, hence
-- two checks.
local function is_dns_label(s)
  return s ~= nil and #s <= 63 and s:find("^[a-z0-9][-a-z0-9]*$") ~= nil and s:find("[a-z0-9]$") ~= nil
end

-- Returns namespace, resource, name (name nil for a collection), or nil.
local function parse(path)
  local ns, resource, name = path:match("^/apis/hooks/([^/]+)/([^/]+)/([^/]+)$")
  if not ns then
    ns, resource = path:match("^/apis/hooks/([^/]+)/([^/]+)$")
  end
  if not (is_dns_label(ns) and is_dns_label(resource)) then return nil end
  if name ~= nil and not is_dns_label(name) then return nil end
  return ns, resource, name
end

return {
  authorize = function(req, user)
    local ns, resource, name = parse(req.path)
    if not ns then
      return tg.deny("no rule for this path")
    end
    local verb = (name and OBJECT_VERBS or COLLECTION_VERBS)[req.method]
    if not verb then
      return tg.deny("method " .. req.method .. " is not supported here")
    end
    return tg.sar{
      namespace = ns, group = GROUP, version = VERSION,
      resource = resource, name = name, verb = verb,
    }
  end,
}
