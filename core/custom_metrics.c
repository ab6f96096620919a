/* custom_metrics.c owns the policies' metrics: declarations, series and their values. */
#include "custom_metrics.h"

#include <pthread.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct custom_series {
    char **label_values; /* n_labels strings, owned */
    double value;        /* counter, gauge */
    uint64_t *bucket_counts; /* histogram: n_buckets, not cumulative */
    uint64_t count;
    double sum;
} custom_series;

typedef struct custom_metric {
    custom_metric_kind kind;
    char name[CUSTOM_METRICS_NAME_MAX];
    char help[CUSTOM_METRICS_HELP_MAX];
    char *labels[CUSTOM_METRICS_MAX_LABELS];
    size_t n_labels;
    double buckets[CUSTOM_METRICS_MAX_BUCKETS];
    size_t n_buckets;
    custom_series *series;
    size_t n_series;
    uint64_t overflow;
} custom_metric;

struct custom_metrics {
    pthread_mutex_t lock; /* every public function holds it: policies on every worker share one registry */
    custom_metric metrics[CUSTOM_METRICS_MAX];
    size_t n_metrics;
    size_t max_series;
};

static const char *kind_name(custom_metric_kind kind)
{
    return kind == CUSTOM_COUNTER ? "counter" : kind == CUSTOM_GAUGE ? "gauge" : "histogram";
}

static bool valid_name(const char *s, bool allow_colon)
{
    if (!s || !*s || strlen(s) >= CUSTOM_METRICS_NAME_MAX) return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':') ||
                  (p != s && c >= '0' && c <= '9');
        if (!ok) return false;
    }
    return true;
}

custom_metrics *custom_metrics_new(size_t max_series)
{
    custom_metrics *cm = calloc(1, sizeof(*cm));
    if (!cm) return NULL;
    cm->max_series = max_series ? max_series : 1;
    pthread_mutex_init(&cm->lock, NULL);
    return cm;
}

static void free_series(custom_metric *m, custom_series *s)
{
    for (size_t i = 0; i < m->n_labels; i++) free(s->label_values[i]);
    free(s->label_values);
    free(s->bucket_counts);
}

static void free_metric(custom_metric *m);

void custom_metrics_free(custom_metrics *cm)
{
    if (!cm) return;
    custom_metrics_truncate(cm, 0);
    pthread_mutex_destroy(&cm->lock);
    free(cm);
}

static void free_metric(custom_metric *m)
{
    for (size_t s = 0; s < m->n_series; s++) free_series(m, &m->series[s]);
    free(m->series);
    for (size_t l = 0; l < m->n_labels; l++) free(m->labels[l]);
    memset(m, 0, sizeof(*m));
}

static void custom_metrics_truncate_locked(custom_metrics *cm, size_t count)
{
    while (cm->n_metrics > count) free_metric(&cm->metrics[--cm->n_metrics]);
}

static size_t custom_metrics_count_locked(const custom_metrics *cm)
{
    return cm->n_metrics;
}

/* True when the declaration matches the existing metric m exactly (help aside). */
static bool same_shape(const custom_metric *m, custom_metric_kind kind, const char *const *labels, size_t n_labels,
                       const double *buckets, size_t n_buckets)
{
    if (m->kind != kind || m->n_labels != n_labels || m->n_buckets != n_buckets) return false;
    for (size_t i = 0; i < n_labels; i++)
        if (strcmp(m->labels[i], labels[i]) != 0) return false;
    for (size_t i = 0; i < n_buckets; i++)
        if (m->buckets[i] != buckets[i]) return false;
    return true;
}

static int custom_metrics_declare_locked(custom_metrics *cm, custom_metric_kind kind, const char *name, const char *help,
                           const char *const *labels, size_t n_labels, const double *buckets, size_t n_buckets,
                           char *err, size_t err_cap)
{
    if (!valid_name(name, true) || strncmp(name, "gateway_", 8) == 0 || strncmp(name, "process_", 8) == 0) {
        snprintf(err, err_cap, "invalid or reserved metric name");
        return -1;
    }
    if (n_labels > CUSTOM_METRICS_MAX_LABELS) {
        snprintf(err, err_cap, "metric %s: at most %d labels", name, CUSTOM_METRICS_MAX_LABELS);
        return -1;
    }
    for (size_t i = 0; i < n_labels; i++) {
        if (!valid_name(labels[i], false) || strncmp(labels[i], "__", 2) == 0 || strcmp(labels[i], "le") == 0) {
            snprintf(err, err_cap, "metric %s: invalid label name", name);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0) {
                snprintf(err, err_cap, "metric %s: duplicate label %s", name, labels[i]);
                return -1;
            }
    }
    if (kind == CUSTOM_HISTOGRAM) {
        if (n_buckets == 0 || n_buckets > CUSTOM_METRICS_MAX_BUCKETS) {
            snprintf(err, err_cap, "metric %s: 1 to %d buckets", name, CUSTOM_METRICS_MAX_BUCKETS);
            return -1;
        }
        for (size_t i = 0; i < n_buckets; i++)
            if (!isfinite(buckets[i]) || (i && buckets[i] <= buckets[i - 1])) {
                snprintf(err, err_cap, "metric %s: buckets must be finite and increasing", name);
                return -1;
            }
    } else if (n_buckets) {
        snprintf(err, err_cap, "metric %s: only histograms have buckets", name);
        return -1;
    }

    for (size_t i = 0; i < cm->n_metrics; i++) {
        custom_metric *m = &cm->metrics[i];
        if (strcmp(m->name, name) != 0) continue;
        if (same_shape(m, kind, labels, n_labels, buckets, n_buckets)) return (int)i;
        snprintf(err, err_cap, "metric %s is already declared as a %s with other labels or buckets", name,
                 kind_name(m->kind));
        return -1;
    }
    if (cm->n_metrics == CUSTOM_METRICS_MAX) {
        snprintf(err, err_cap, "at most %d policy metrics", CUSTOM_METRICS_MAX);
        return -1;
    }
    custom_metric *m = &cm->metrics[cm->n_metrics];
    memset(m, 0, sizeof(*m));
    for (size_t i = 0; i < n_labels; i++) {
        m->labels[i] = strdup(labels[i]);
        if (!m->labels[i]) {
            for (size_t j = 0; j < i; j++) free(m->labels[j]);
            snprintf(err, err_cap, "out of memory");
            return -1;
        }
    }
    m->kind = kind;
    snprintf(m->name, sizeof(m->name), "%s", name);
    /* Help text is shown on one line: keep it printable. */
    snprintf(m->help, sizeof(m->help), "%s", help ? help : "");
    for (char *p = m->help; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '\\') *p = ' ';
    m->n_labels = n_labels;
    memcpy(m->buckets, buckets, n_buckets * sizeof(double));
    m->n_buckets = n_buckets;
    return (int)cm->n_metrics++;
}

static custom_series *find_series(custom_metric *m, const char *const *values)
{
    for (size_t s = 0; s < m->n_series; s++) {
        size_t i = 0;
        while (i < m->n_labels && strcmp(m->series[s].label_values[i], values[i]) == 0) i++;
        if (i == m->n_labels) return &m->series[s];
    }
    return NULL;
}

/* Adds a series; NULL when the limit is reached or memory is short. */
static custom_series *add_series(custom_metrics *cm, custom_metric *m, const char *const *values)
{
    if (m->n_series >= cm->max_series) return NULL;
    custom_series *grown = realloc(m->series, (m->n_series + 1) * sizeof(*grown));
    if (!grown) return NULL;
    m->series = grown;
    custom_series *s = &m->series[m->n_series];
    memset(s, 0, sizeof(*s));
    s->label_values = calloc(m->n_labels ? m->n_labels : 1, sizeof(char *));
    s->bucket_counts = m->kind == CUSTOM_HISTOGRAM ? calloc(m->n_buckets, sizeof(uint64_t)) : NULL;
    bool ok = s->label_values && (m->kind != CUSTOM_HISTOGRAM || s->bucket_counts);
    for (size_t i = 0; ok && i < m->n_labels; i++) {
        s->label_values[i] = strndup(values[i], CUSTOM_METRICS_LABEL_VALUE_MAX);
        ok = s->label_values[i] != NULL;
    }
    if (!ok) {
        free_series(m, s);
        return NULL;
    }
    m->n_series++;
    return s;
}

static int custom_metrics_update_locked(custom_metrics *cm, int id, custom_metric_op op, const char *const *label_values,
                          size_t n_values, double value, char *err, size_t err_cap)
{
    if (id < 0 || (size_t)id >= cm->n_metrics) {
        snprintf(err, err_cap, "unknown metric");
        return -1;
    }
    custom_metric *m = &cm->metrics[id];
    if (n_values != m->n_labels) {
        snprintf(err, err_cap, "metric %s takes %zu label values", m->name, m->n_labels);
        return -1;
    }
    bool op_ok = (m->kind == CUSTOM_COUNTER && op == CUSTOM_OP_INC) ||
                 (m->kind == CUSTOM_GAUGE && (op == CUSTOM_OP_INC || op == CUSTOM_OP_SET)) ||
                 (m->kind == CUSTOM_HISTOGRAM && op == CUSTOM_OP_OBSERVE);
    if (!op_ok || !isfinite(value) || (m->kind == CUSTOM_COUNTER && value < 0)) {
        snprintf(err, err_cap, "metric %s: operation or value not valid for a %s", m->name, kind_name(m->kind));
        return -1;
    }
    custom_series *s = find_series(m, label_values);
    if (!s) s = add_series(cm, m, label_values);
    if (!s) {
        m->overflow++;
        return 1;
    }
    switch (op) {
    case CUSTOM_OP_INC: s->value += value; break;
    case CUSTOM_OP_SET: s->value = value; break;
    case CUSTOM_OP_OBSERVE:
        for (size_t b = 0; b < m->n_buckets; b++)
            if (value <= m->buckets[b]) {
                s->bucket_counts[b]++;
                break;
            }
        s->count++;
        s->sum += value;
        break;
    }
    return 0;
}

/* Writes a label value escaped for the exposition format. */
static int add_escaped(struct evbuffer *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        int rc = *p == '\\' ? evbuffer_add(out, "\\\\", 2)
                 : *p == '"' ? evbuffer_add(out, "\\\"", 2)
                 : *p == '\n' ? evbuffer_add(out, "\\n", 2)
                              : evbuffer_add(out, p, 1);
        if (rc != 0) return -1;
    }
    return 0;
}

/* Writes {a="x",b="y"[,le="..."]}; nothing when there are no labels and no le. */
static int add_labels(struct evbuffer *out, const custom_metric *m, const custom_series *s, const char *le)
{
    if (m->n_labels == 0 && !le) return 0;
    int rc = evbuffer_add(out, "{", 1);
    for (size_t i = 0; rc == 0 && i < m->n_labels; i++) {
        rc |= evbuffer_add_printf(out, "%s%s=\"", i ? "," : "", m->labels[i]) < 0;
        rc |= add_escaped(out, s->label_values[i]);
        rc |= evbuffer_add(out, "\"", 1);
    }
    if (rc == 0 && le) rc |= evbuffer_add_printf(out, "%sle=\"%s\"", m->n_labels ? "," : "", le) < 0;
    rc |= evbuffer_add(out, "}", 1);
    return rc ? -1 : 0;
}

static int custom_metrics_render_locked(const custom_metrics *cm, struct evbuffer *out)
{
    int rc = 0;
    for (size_t i = 0; i < cm->n_metrics && rc == 0; i++) {
        const custom_metric *m = &cm->metrics[i];
        rc |= evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, kind_name(m->kind)) < 0;
        for (size_t s = 0; s < m->n_series && rc == 0; s++) {
            const custom_series *se = &m->series[s];
            if (m->kind != CUSTOM_HISTOGRAM) {
                rc |= evbuffer_add_printf(out, "%s", m->name) < 0;
                rc |= add_labels(out, m, se, NULL);
                rc |= evbuffer_add_printf(out, " %.17g\n", se->value) < 0;
                continue;
            }
            uint64_t cumulative = 0;
            char le[64];
            for (size_t b = 0; b < m->n_buckets && rc == 0; b++) {
                cumulative += se->bucket_counts[b];
                snprintf(le, sizeof(le), "%.17g", m->buckets[b]);
                rc |= evbuffer_add_printf(out, "%s_bucket", m->name) < 0;
                rc |= add_labels(out, m, se, le);
                rc |= evbuffer_add_printf(out, " %llu\n", (unsigned long long)cumulative) < 0;
            }
            rc |= evbuffer_add_printf(out, "%s_bucket", m->name) < 0;
            rc |= add_labels(out, m, se, "+Inf");
            rc |= evbuffer_add_printf(out, " %llu\n%s_sum", (unsigned long long)se->count, m->name) < 0;
            rc |= add_labels(out, m, se, NULL);
            rc |= evbuffer_add_printf(out, " %.17g\n%s_count", se->sum, m->name) < 0;
            rc |= add_labels(out, m, se, NULL);
            rc |= evbuffer_add_printf(out, " %llu\n", (unsigned long long)se->count) < 0;
        }
    }
    rc |= evbuffer_add_printf(out, "# HELP gateway_policy_metric_series_overflow_total Policy metric updates dropped "
                                   "because the metric reached its label-set limit.\n"
                                   "# TYPE gateway_policy_metric_series_overflow_total counter\n") < 0;
    for (size_t i = 0; i < cm->n_metrics && rc == 0; i++)
        if (cm->metrics[i].overflow)
            rc |= evbuffer_add_printf(out, "gateway_policy_metric_series_overflow_total{metric=\"%s\"} %llu\n",
                                      cm->metrics[i].name, (unsigned long long)cm->metrics[i].overflow) < 0;
    return rc ? -1 : 0;
}

/* ---- the thread-safe interface ------------------------------------------------------ */

void custom_metrics_truncate(custom_metrics *cm, size_t count)
{
    pthread_mutex_lock(&cm->lock);
    custom_metrics_truncate_locked(cm, count);
    pthread_mutex_unlock(&cm->lock);
}

size_t custom_metrics_count(const custom_metrics *cm)
{
    custom_metrics *m = (custom_metrics *)cm; /* the lock is not part of the value */
    pthread_mutex_lock(&m->lock);
    size_t n = custom_metrics_count_locked(cm);
    pthread_mutex_unlock(&m->lock);
    return n;
}

int custom_metrics_declare(custom_metrics *cm, custom_metric_kind kind, const char *name, const char *help,
                           const char *const *labels, size_t n_labels, const double *buckets, size_t n_buckets,
                           char *err, size_t err_cap)
{
    pthread_mutex_lock(&cm->lock);
    int rc = custom_metrics_declare_locked(cm, kind, name, help, labels, n_labels, buckets, n_buckets, err, err_cap);
    pthread_mutex_unlock(&cm->lock);
    return rc;
}

int custom_metrics_update(custom_metrics *cm, int id, custom_metric_op op, const char *const *label_values,
                          size_t n_values, double value, char *err, size_t err_cap)
{
    pthread_mutex_lock(&cm->lock);
    int rc = custom_metrics_update_locked(cm, id, op, label_values, n_values, value, err, err_cap);
    pthread_mutex_unlock(&cm->lock);
    return rc;
}

int custom_metrics_render(const custom_metrics *cm, struct evbuffer *out)
{
    custom_metrics *m = (custom_metrics *)cm;
    pthread_mutex_lock(&m->lock);
    int rc = custom_metrics_render_locked(cm, out);
    pthread_mutex_unlock(&m->lock);
    return rc;
}
