-- examples/kubernetes and examples/fleet/kubernetes accepted by a genuine kube-apiserver:
-- every object is sent as `kubectl apply --server-side --dry-run=server --validate=strict`
-- sends it (dryRun=All, fieldValidation=Strict), so defaulting, validation, strict field
-- checking and admission all run and nothing is stored. Namespaces are created for real first
-- (namespaced objects cannot be admitted into a namespace that does not exist).
local kube_mod = require("support.kube")
local proc = require("support.proc")
local lyaml = require("lyaml")
local cjson = require("cjson")

-- lyaml's null and empty sequences as JSON wants them.
local function to_json_value(v)
  if v == lyaml.null then return cjson.null end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = to_json_value(x) end
  if next(v) == nil and getmetatable(v) and getmetatable(v)._type == "sequence" then
    return setmetatable({}, cjson.empty_array_mt)
  end
  return out
end

local function manifests(dir)
  local files = {}
  local p = io.popen("ls " .. proc.quote(dir) .. "/*.yaml")
  for line in p:lines() do files[#files + 1] = line end
  p:close()
  local objects = {}
  for _, file in ipairs(files) do
    for _, doc in ipairs(lyaml.load(assert(proc.read_file(file)), { all = true })) do
      if doc ~= lyaml.null and doc ~= nil and doc.kind ~= "Kustomization" then
        objects[#objects + 1] = { file = file, obj = to_json_value(doc) }
      end
    end
  end
  return objects
end

describe("the Kubernetes examples on a genuine kube-apiserver", function()
  local k

  setup(function() k = kube_mod.start() end)
  teardown(function() if k then k:stop() end end)

  for _, dir in ipairs{ "examples/kubernetes", "examples/fleet/kubernetes" } do
    it("accepts every object of " .. dir .. " (server-side dry run, strict field validation)", function()
      local objects = manifests(dir)
      assert.is_true(#objects >= 5, "too few objects in " .. dir)
      -- The namespaces the objects live in, for real (a Namespace object of the example
      -- itself is dry-run like the rest below).
      for _, o in ipairs(objects) do
        local ns = o.obj.metadata and o.obj.metadata.namespace
        if ns then k:create_namespace(ns) end
      end
      local kinds = {}
      for _, o in ipairs(objects) do
        assert.truthy(kube_mod.collection_path(o.obj), o.file .. ": kind " .. tostring(o.obj.kind) .. " has no REST path here")
        local res = k:dry_run_apply(o.obj)
        assert.is_true(res.status == 201 or res.status == 200,
          string.format("%s: %s %s answered %d: %s", o.file, o.obj.kind, o.obj.metadata.name, res.status,
            res.body:sub(1, 800)))
        -- Strict validation reports unknown or duplicate fields as a 400; a warning header
        -- would mean a field the API server ignored.
        assert.is_nil(res.headers["warning"], o.file .. ": " .. tostring(res.headers["warning"]))
        kinds[o.obj.kind] = true
      end
      if dir == "examples/kubernetes" then
        for _, kind in ipairs{ "Deployment", "ServiceAccount", "ClusterRoleBinding", "ConfigMap", "Service" } do
          assert.is_true(kinds[kind] == true, "no " .. kind .. " in " .. dir)
        end
      end
    end)
  end

  it("lets the example's ServiceAccount create TokenReviews and SubjectAccessReviews, as the gateway needs", function()
    local objects = manifests("examples/kubernetes")
    local sa
    for _, o in ipairs(objects) do
      if o.obj.metadata.namespace then k:create_namespace(o.obj.metadata.namespace) end
    end
    -- RBAC for real this time (dry-run stores nothing), then ask the authorizer.
    for _, o in ipairs(objects) do
      local kind = o.obj.kind
      if kind == "ServiceAccount" or kind == "ClusterRole" or kind == "ClusterRoleBinding" or kind == "Role" or
          kind == "RoleBinding" then
        local res = k:raw("POST", kube_mod.collection_path(o.obj), o.obj)
        assert.is_true(res.status == 201 or res.status == 409, res.body)
        if kind == "ServiceAccount" then sa = o.obj end
      end
    end
    assert.truthy(sa, "no ServiceAccount in examples/kubernetes")
    local user = "system:serviceaccount:" .. sa.metadata.namespace .. ":" .. sa.metadata.name
    local function can(group, resource)
      local body = k:api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        apiVersion = "authorization.k8s.io/v1", kind = "SubjectAccessReview",
        spec = { user = user, groups = { "system:serviceaccounts", "system:serviceaccounts:" .. sa.metadata.namespace },
          resourceAttributes = { verb = "create", group = group, resource = resource } } })
      return body.status.allowed == true
    end
    assert.is_true(can("authentication.k8s.io", "tokenreviews"))
    assert.is_true(can("authorization.k8s.io", "subjectaccessreviews"))
    assert.is_false(can("", "secrets"))
  end)
end)
