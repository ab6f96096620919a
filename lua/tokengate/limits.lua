-- tokengate.limits: the limits a policy is held to, for the gateway and the busted kit.
-- Generated from core/policy_limits.h by cmake/policy_limits.cmake (every build): do not
-- edit; change the header.
return {
limits = {
  headers = 16, -- headers one tg.allow may add
  header_name = 128, -- bytes of an allow header's name
  header_value = 1024, -- bytes of an allow header's value
  reason = 256, -- bytes of a deny reason
  sar_value = 256, -- bytes of a SubjectAccessReview attribute
  sar_path = 256, -- bytes of a non-resource SubjectAccessReview path
  metrics = 64, -- metrics all policies together may declare
  metric_name = 127, -- bytes of a metric's name
  help = 256, -- bytes of a metric's help
  labels = 8, -- labels per metric
  label_value = 128, -- bytes of a label value (longer ones are cut)
  buckets = 32, -- histogram buckets
  log_message = 4096, -- bytes of a message (longer ones are cut)
  log_fields = 32, -- fields of one line
  audiences = 16, -- entries of `audiences`
  audience = 256, -- bytes of one audience
},
defaults = {
  max_instructions = 1000000,
  max_memory_bytes = 67108864, -- 64 MiB
},
}
