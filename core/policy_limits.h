/* The limits a policy is held to, declared once for the gateway and the busted kit.
 *
 * Every POLICY_LIMIT_<NAME> below is tg.limits.<name> in Lua, and every
 * POLICY_DEFAULT_<NAME> is the kit's default for the matching gateway flag: the build
 * (cmake/policy_limits.cmake) turns this file into lua/tokengate/limits.lua, which the
 * Lua modules read, which the gateway embeds and which is installed with the kit. So
 * what passes a policy's busted specs is what the gateway accepts; changing a number
 * here changes both (spec/integration/22_policy_contract_spec.lua checks the generated
 * file is current and that both accept and refuse the same files).
 *
 * The generator reads only lines of the form `#define POLICY_LIMIT_NAME <integer>` and
 * `#define POLICY_DEFAULT_NAME <integer>`, each with an optional trailing comment: keep
 * one plain integer per line. */
#ifndef TOKENGATE_POLICY_LIMITS_H
#define TOKENGATE_POLICY_LIMITS_H

/* Decisions (tg.allow, tg.deny, tg.sar); the C host checks each again before use. */
#define POLICY_LIMIT_HEADERS 16        /* headers one tg.allow may add */
#define POLICY_LIMIT_HEADER_NAME 128   /* bytes of an allow header's name */
#define POLICY_LIMIT_HEADER_VALUE 1024 /* bytes of an allow header's value */
#define POLICY_LIMIT_REASON 256        /* bytes of a deny reason */
#define POLICY_LIMIT_SAR_VALUE 256     /* bytes of a SubjectAccessReview attribute */
#define POLICY_LIMIT_SAR_PATH 256      /* bytes of a non-resource SubjectAccessReview path */

/* Metrics (tg.metrics). */
#define POLICY_LIMIT_METRICS 64      /* metrics all policies together may declare */
#define POLICY_LIMIT_METRIC_NAME 127 /* bytes of a metric's name */
#define POLICY_LIMIT_HELP 256        /* bytes of a metric's help */
#define POLICY_LIMIT_LABELS 8        /* labels per metric */
#define POLICY_LIMIT_LABEL_VALUE 128 /* bytes of a label value (longer ones are cut) */
#define POLICY_LIMIT_BUCKETS 32      /* histogram buckets */

/* Logging (tg.log). */
#define POLICY_LIMIT_LOG_MESSAGE 4096 /* bytes of a message (longer ones are cut) */
#define POLICY_LIMIT_LOG_FIELDS 32    /* fields of one line */

/* The policy table. */
#define POLICY_LIMIT_AUDIENCES 16 /* entries of `audiences` */
#define POLICY_LIMIT_AUDIENCE 256 /* bytes of one audience */

/* Per call into a policy: the defaults of --policy-max-instructions and
 * --policy-max-memory-bytes (testing.set_instruction_limit/set_memory_limit(nil)). */
#define POLICY_DEFAULT_MAX_INSTRUCTIONS 1000000
#define POLICY_DEFAULT_MAX_MEMORY_BYTES 67108864 /* 64 MiB */

#endif
