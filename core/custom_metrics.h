/* Metrics declared by Lua policies (tg.metrics.counter/gauge/histogram): a registry that
 * outlives policy reloads, bounded in metrics, labels, series and buckets, rendered beside
 * the built-in metrics on /metrics.
 *
 * A metric keeps its identity across reloads: declaring an existing name again with the
 * same kind, labels and buckets returns the same id (its values carry on); with anything
 * different the declaration fails, and so does the reload that made it.
 *
 * Threading: thread-safe. One registry serves the policy states of every worker and of the
 * control thread. custom_metrics_update (the policies' hot path) takes no lock: series live
 * in a fixed-size lock-free hash table per metric and their values are relaxed atomics.
 * Declaring, truncating and rendering (policy loads, /metrics) hold the registry's mutex. */
#ifndef TOKENGATE_CUSTOM_METRICS_H
#define TOKENGATE_CUSTOM_METRICS_H

#include "policy_limits.h"

#include <event2/buffer.h>
#include <stddef.h>
#include <stdint.h>

/* The limits are the policy contract's (policy_limits.h), which the busted kit shares. */
#define CUSTOM_METRICS_MAX POLICY_LIMIT_METRICS                /* metrics all policies together may declare */
#define CUSTOM_METRICS_MAX_LABELS POLICY_LIMIT_LABELS          /* labels per metric */
#define CUSTOM_METRICS_MAX_BUCKETS POLICY_LIMIT_BUCKETS        /* histogram buckets */
#define CUSTOM_METRICS_NAME_MAX (POLICY_LIMIT_METRIC_NAME + 1) /* with the NUL */
#define CUSTOM_METRICS_HELP_MAX (POLICY_LIMIT_HELP + 1)        /* with the NUL */
#define CUSTOM_METRICS_LABEL_VALUE_MAX POLICY_LIMIT_LABEL_VALUE

typedef enum { CUSTOM_COUNTER = 0, CUSTOM_GAUGE, CUSTOM_HISTOGRAM } custom_metric_kind;
typedef enum { CUSTOM_OP_INC = 0, CUSTOM_OP_SET, CUSTOM_OP_OBSERVE } custom_metric_op;

typedef struct custom_metrics custom_metrics;

/* max_series: label sets kept per metric; further label sets are counted as overflow in
 * gateway_policy_metric_series_overflow_total{metric} and otherwise dropped. */
custom_metrics *custom_metrics_new(size_t max_series);
void custom_metrics_free(custom_metrics *cm);

/* Declares (or finds) a metric. Names and label names must already be valid Prometheus
 * names (the Lua module validates; this re-checks). Returns the id (>= 0), or -1 with a
 * message in err. */
int custom_metrics_declare(custom_metrics *cm, custom_metric_kind kind, const char *name, const char *help,
                           const char *const *labels, size_t n_labels, const double *buckets, size_t n_buckets,
                           char *err, size_t err_cap);

/* Applies op with value to the series named by label_values (n_values must equal the
 * metric's label count). Returns 0, 1 when the series limit dropped it (counted), or -1
 * with a message in err for a wrong id, op or value. */
int custom_metrics_update(custom_metrics *cm, int id, custom_metric_op op, const char *const *label_values,
                          size_t n_values, double value, char *err, size_t err_cap);

/* Appends every declared metric in the Prometheus text format. Returns 0 or -1. */
int custom_metrics_render(const custom_metrics *cm, struct evbuffer *out);

/* Forgets the metrics declared after the first `count` (a failed policy load must leave
 * no declarations behind). Metrics declared before are kept with their values. */
void custom_metrics_truncate(custom_metrics *cm, size_t count);

/* Number of declared metrics. */
size_t custom_metrics_count(const custom_metrics *cm);

#endif
