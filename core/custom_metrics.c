/* custom_metrics.c owns the policies' metrics: declarations, series and their values. */
#include "custom_metrics.h"

#include <pthread.h>
#include <stdatomic.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A series: one label set of one metric. Its label values are written before the series is
 * published in its table (a release store) and never change after; its values are relaxed
 * atomics updated in place by any thread. */
typedef struct custom_series {
    uint64_t hash;                    /* of the label values (series_hash) */
    char **label_values;              /* n_labels strings, owned */
    _Atomic uint64_t value;           /* counter, gauge: the bits of a double */
    _Atomic uint64_t count;           /* histogram observations */
    _Atomic uint64_t sum;             /* histogram: the bits of a double */
    _Atomic uint64_t bucket_counts[]; /* histogram: n_buckets, not cumulative */
} custom_series;

/* Open addressing, linear probing, never shrinks: at least twice as many slots as the series
 * limit, so a probe always ends at the series or at an empty slot. A slot goes from NULL to
 * a series once (compare-and-swap) and keeps it while the table lives. */
typedef struct series_table {
    struct series_table *retired_next; /* tables of truncated metrics, freed with the registry */
    size_t mask;                       /* slots - 1 */
    _Atomic size_t n_series;           /* reserved before an insert, released if it loses */
    _Atomic(custom_series *) slots[];
} series_table;

/* A declared metric. Everything but the table's contents and the overflow count is written
 * under the registry lock before n_metrics makes it visible, and read-only after. */
typedef struct custom_metric {
    custom_metric_kind kind;
    char name[CUSTOM_METRICS_NAME_MAX];
    char help[CUSTOM_METRICS_HELP_MAX];
    char *labels[CUSTOM_METRICS_MAX_LABELS];
    size_t n_labels;
    double buckets[CUSTOM_METRICS_MAX_BUCKETS];
    size_t n_buckets;
    _Atomic(series_table *) table; /* NULL while the slot holds no metric */
    series_table *retired;         /* earlier tables of this slot (see custom_metrics_truncate) */
    _Atomic uint64_t overflow;
} custom_metric;

/* The hot path (custom_metrics_update, from a policy on any worker) takes no lock: it finds
 * its series in the metric's table and updates it with relaxed atomics. The lock orders the
 * cold paths: declarations and truncation (policy loads) and rendering (/metrics). */
struct custom_metrics {
    pthread_mutex_t lock;
    custom_metric metrics[CUSTOM_METRICS_MAX];
    _Atomic size_t n_metrics; /* release-stored after a declaration is complete */
    size_t max_series;
};

static double load_double(const _Atomic uint64_t *bits)
{
    uint64_t b = atomic_load_explicit(bits, memory_order_relaxed);
    double d;
    memcpy(&d, &b, sizeof(d));
    return d;
}

static uint64_t double_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof(b));
    return b;
}

static void add_double(_Atomic uint64_t *bits, double delta)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);
    double d;
    do {
        memcpy(&d, &old, sizeof(d));
    } while (!atomic_compare_exchange_weak_explicit(bits, &old, double_bits(d + delta), memory_order_relaxed,
                                                    memory_order_relaxed));
}

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
    atomic_init(&cm->n_metrics, 0);
    pthread_mutex_init(&cm->lock, NULL);
    return cm;
}

static void free_series(const custom_metric *m, custom_series *s)
{
    if (!s) return;
    if (s->label_values)
        for (size_t i = 0; i < m->n_labels; i++) free(s->label_values[i]);
    free(s->label_values);
    free(s);
}

static void free_table(const custom_metric *m, series_table *t)
{
    if (!t) return;
    for (size_t i = 0; i <= t->mask; i++) free_series(m, atomic_load_explicit(&t->slots[i], memory_order_relaxed));
    free(t);
}

static series_table *table_new(size_t max_series)
{
    size_t slots = 2;
    while (slots < 2 * max_series) slots *= 2;
    series_table *t = calloc(1, sizeof(*t) + slots * sizeof(t->slots[0]));
    if (!t) return NULL;
    t->mask = slots - 1;
    atomic_init(&t->n_series, 0);
    for (size_t i = 0; i < slots; i++) atomic_init(&t->slots[i], NULL);
    return t;
}

/* Frees a metric's tables and labels; only when no thread can still update it (the
 * registry is being freed). */
static void free_metric(custom_metric *m)
{
    free_table(m, atomic_load_explicit(&m->table, memory_order_relaxed));
    while (m->retired) {
        series_table *next = m->retired->retired_next;
        free_table(m, m->retired);
        m->retired = next;
    }
    for (size_t l = 0; l < m->n_labels; l++) free(m->labels[l]);
    memset(m, 0, sizeof(*m));
}

void custom_metrics_free(custom_metrics *cm)
{
    if (!cm) return;
    for (size_t i = 0; i < CUSTOM_METRICS_MAX; i++) free_metric(&cm->metrics[i]);
    pthread_mutex_destroy(&cm->lock);
    free(cm);
}

/* A truncated metric's table is unpublished, not freed: a thread that looked its id up just
 * before may still be updating it. It is kept on the slot's retired list until the registry
 * is freed (a failed policy load that declared new metrics costs their series until exit).
 * Its labels stay until the slot is declared again, under the lock. */
static void custom_metrics_truncate_locked(custom_metrics *cm, size_t count)
{
    size_t n = atomic_load_explicit(&cm->n_metrics, memory_order_relaxed);
    if (count >= n) return;
    atomic_store_explicit(&cm->n_metrics, count, memory_order_release);
    for (size_t i = count; i < n; i++) {
        custom_metric *m = &cm->metrics[i];
        series_table *t = atomic_exchange_explicit(&m->table, NULL, memory_order_acq_rel);
        if (t) {
            t->retired_next = m->retired;
            m->retired = t;
        }
    }
}

static size_t custom_metrics_count_locked(const custom_metrics *cm)
{
    return atomic_load_explicit(&cm->n_metrics, memory_order_relaxed);
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

static int custom_metrics_declare_locked(custom_metrics *cm, custom_metric_kind kind, const char *name,
                                         const char *help, const char *const *labels, size_t n_labels,
                                         const double *buckets, size_t n_buckets, char *err, size_t err_cap)
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

    size_t n_metrics = atomic_load_explicit(&cm->n_metrics, memory_order_relaxed);
    for (size_t i = 0; i < n_metrics; i++) {
        custom_metric *m = &cm->metrics[i];
        if (strcmp(m->name, name) != 0) continue;
        if (same_shape(m, kind, labels, n_labels, buckets, n_buckets)) return (int)i;
        snprintf(err, err_cap, "metric %s is already declared as a %s with other labels or buckets", name,
                 kind_name(m->kind));
        return -1;
    }
    if (n_metrics == CUSTOM_METRICS_MAX) {
        snprintf(err, err_cap, "at most %d policy metrics", CUSTOM_METRICS_MAX);
        return -1;
    }
    char *copies[CUSTOM_METRICS_MAX_LABELS] = {0};
    series_table *table = table_new(cm->max_series);
    bool ok = table != NULL;
    for (size_t i = 0; ok && i < n_labels; i++) ok = (copies[i] = strdup(labels[i])) != NULL;
    if (!ok) {
        for (size_t i = 0; i < n_labels; i++) free(copies[i]);
        free(table);
        snprintf(err, err_cap, "out of memory");
        return -1;
    }
    /* The slot may have held a truncated metric: its retired tables stay (see truncate). */
    custom_metric *m = &cm->metrics[n_metrics];
    for (size_t l = 0; l < m->n_labels; l++) free(m->labels[l]);
    series_table *retired = m->retired;
    memset(m, 0, sizeof(*m));
    m->retired = retired;
    memcpy(m->labels, copies, sizeof(copies));
    m->kind = kind;
    snprintf(m->name, sizeof(m->name), "%s", name);
    /* Help text is shown on one line: keep it printable. */
    snprintf(m->help, sizeof(m->help), "%s", help ? help : "");
    for (char *p = m->help; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '\\') *p = ' ';
    m->n_labels = n_labels;
    if (n_buckets) memcpy(m->buckets, buckets, n_buckets * sizeof(double));
    m->n_buckets = n_buckets;
    atomic_init(&m->overflow, 0);
    atomic_store_explicit(&m->table, table, memory_order_release);
    atomic_store_explicit(&cm->n_metrics, n_metrics + 1, memory_order_release);
    return (int)n_metrics;
}

/* FNV-1a over the label values as kept (truncated), each followed by a 0 byte (so ("ab","") != ("a","b")). */
static uint64_t series_hash(const char *const *values, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *v = (const unsigned char *)values[i];
        for (size_t k = 0; k < CUSTOM_METRICS_LABEL_VALUE_MAX && v[k]; k++) h = (h ^ v[k]) * 1099511628211ULL;
        h = (h ^ 0) * 1099511628211ULL;
    }
    return h;
}

/* Label values are kept truncated to CUSTOM_METRICS_LABEL_VALUE_MAX bytes: compare the same way. */
static bool series_is(const custom_metric *m, const custom_series *s, uint64_t hash, const char *const *values)
{
    if (s->hash != hash) return false;
    for (size_t i = 0; i < m->n_labels; i++)
        if (strncmp(s->label_values[i], values[i], CUSTOM_METRICS_LABEL_VALUE_MAX) != 0 ||
            strlen(s->label_values[i]) != strnlen(values[i], CUSTOM_METRICS_LABEL_VALUE_MAX))
            return false;
    return true;
}

static custom_series *series_new(const custom_metric *m, uint64_t hash, const char *const *values)
{
    size_t buckets = m->kind == CUSTOM_HISTOGRAM ? m->n_buckets : 0;
    custom_series *s = calloc(1, sizeof(*s) + buckets * sizeof(s->bucket_counts[0]));
    if (!s) return NULL;
    s->hash = hash;
    atomic_init(&s->value, double_bits(0.0));
    atomic_init(&s->count, 0);
    atomic_init(&s->sum, double_bits(0.0));
    for (size_t b = 0; b < buckets; b++) atomic_init(&s->bucket_counts[b], 0);
    s->label_values = calloc(m->n_labels ? m->n_labels : 1, sizeof(char *));
    bool ok = s->label_values != NULL;
    for (size_t i = 0; ok && i < m->n_labels; i++)
        ok = (s->label_values[i] = strndup(values[i], CUSTOM_METRICS_LABEL_VALUE_MAX)) != NULL;
    if (!ok) {
        free_series(m, s);
        return NULL;
    }
    return s;
}

/* Finds the series of values in t, or adds it. NULL when the series limit is reached (or
 * memory is short): the caller counts the overflow. Lock-free: two threads adding the same
 * series race for one slot; the loser frees its copy and uses the winner's. */
static custom_series *find_or_add_series(const custom_metrics *cm, const custom_metric *m, series_table *t,
                                         const char *const *values)
{
    uint64_t hash = series_hash(values, m->n_labels);
    custom_series *mine = NULL;
    size_t i = (size_t)hash & t->mask;
    for (size_t probes = 0; probes <= t->mask; probes++, i = (i + 1) & t->mask) {
        custom_series *s = atomic_load_explicit(&t->slots[i], memory_order_acquire);
        while (!s) {
            if (!mine) {
                if (atomic_fetch_add_explicit(&t->n_series, 1, memory_order_relaxed) >= cm->max_series) {
                    atomic_fetch_sub_explicit(&t->n_series, 1, memory_order_relaxed);
                    return NULL;
                }
                mine = series_new(m, hash, values);
                if (!mine) {
                    atomic_fetch_sub_explicit(&t->n_series, 1, memory_order_relaxed);
                    return NULL;
                }
            }
            if (atomic_compare_exchange_strong_explicit(&t->slots[i], &s, mine, memory_order_acq_rel,
                                                        memory_order_acquire))
                return mine;
            /* Lost the slot: s is now the winner's series; look at it like any other. */
        }
        if (series_is(m, s, hash, values)) {
            if (mine) {
                free_series(m, mine);
                atomic_fetch_sub_explicit(&t->n_series, 1, memory_order_relaxed);
            }
            return s;
        }
    }
    /* Unreachable: the table has twice as many slots as series may exist. */
    if (mine) {
        free_series(m, mine);
        atomic_fetch_sub_explicit(&t->n_series, 1, memory_order_relaxed);
    }
    return NULL;
}

int custom_metrics_update(custom_metrics *cm, int id, custom_metric_op op, const char *const *label_values,
                          size_t n_values, double value, char *err, size_t err_cap)
{
    if (id < 0 || (size_t)id >= atomic_load_explicit(&cm->n_metrics, memory_order_acquire)) {
        snprintf(err, err_cap, "unknown metric");
        return -1;
    }
    custom_metric *m = &cm->metrics[id];
    series_table *t = atomic_load_explicit(&m->table, memory_order_acquire);
    if (!t) {
        snprintf(err, err_cap, "unknown metric");
        return -1;
    }
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
    custom_series *s = find_or_add_series(cm, m, t, label_values);
    if (!s) {
        atomic_fetch_add_explicit(&m->overflow, 1, memory_order_relaxed);
        return 1;
    }
    switch (op) {
    case CUSTOM_OP_INC: add_double(&s->value, value); break;
    case CUSTOM_OP_SET: atomic_store_explicit(&s->value, double_bits(value), memory_order_relaxed); break;
    case CUSTOM_OP_OBSERVE:
        for (size_t b = 0; b < m->n_buckets; b++)
            if (value <= m->buckets[b]) {
                atomic_fetch_add_explicit(&s->bucket_counts[b], 1, memory_order_relaxed);
                break;
            }
        add_double(&s->sum, value);
        atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
        break;
    }
    return 0;
}

/* Writes a label value escaped for the exposition format. */
static int add_escaped(struct evbuffer *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        int rc = *p == '\\'   ? evbuffer_add(out, "\\\\", 2)
                 : *p == '"'  ? evbuffer_add(out, "\\\"", 2)
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

/* Under the lock (no declaration or truncation meanwhile); series are read while policies
 * update them: each value is one relaxed load, so a scrape may be an update behind. Series
 * come out in table order. */
static int custom_metrics_render_locked(const custom_metrics *cm, struct evbuffer *out)
{
    int rc = 0;
    size_t n_metrics = atomic_load_explicit(&cm->n_metrics, memory_order_relaxed);
    for (size_t i = 0; i < n_metrics && rc == 0; i++) {
        const custom_metric *m = &cm->metrics[i];
        series_table *t = atomic_load_explicit(&m->table, memory_order_acquire);
        rc |=
            evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, kind_name(m->kind)) < 0;
        for (size_t slot = 0; t && slot <= t->mask && rc == 0; slot++) {
            custom_series *se = atomic_load_explicit(&t->slots[slot], memory_order_acquire);
            if (!se) continue;
            if (m->kind != CUSTOM_HISTOGRAM) {
                rc |= evbuffer_add_printf(out, "%s", m->name) < 0;
                rc |= add_labels(out, m, se, NULL);
                rc |= evbuffer_add_printf(out, " %.17g\n", load_double(&se->value)) < 0;
                continue;
            }
            uint64_t cumulative = 0;
            char le[64];
            for (size_t b = 0; b < m->n_buckets && rc == 0; b++) {
                cumulative += atomic_load_explicit(&se->bucket_counts[b], memory_order_relaxed);
                snprintf(le, sizeof(le), "%.17g", m->buckets[b]);
                rc |= evbuffer_add_printf(out, "%s_bucket", m->name) < 0;
                rc |= add_labels(out, m, se, le);
                rc |= evbuffer_add_printf(out, " %llu\n", (unsigned long long)cumulative) < 0;
            }
            /* An observation counts its bucket before its total: a concurrent scrape could see
             * the buckets ahead of the count, which must never be less than the last bucket. */
            uint64_t count = atomic_load_explicit(&se->count, memory_order_relaxed);
            if (count < cumulative) count = cumulative;
            rc |= evbuffer_add_printf(out, "%s_bucket", m->name) < 0;
            rc |= add_labels(out, m, se, "+Inf");
            rc |= evbuffer_add_printf(out, " %llu\n%s_sum", (unsigned long long)count, m->name) < 0;
            rc |= add_labels(out, m, se, NULL);
            rc |= evbuffer_add_printf(out, " %.17g\n%s_count", load_double(&se->sum), m->name) < 0;
            rc |= add_labels(out, m, se, NULL);
            rc |= evbuffer_add_printf(out, " %llu\n", (unsigned long long)count) < 0;
        }
    }
    rc |= evbuffer_add_printf(out, "# HELP gateway_policy_metric_series_overflow_total Policy metric updates dropped "
                                   "because the metric reached its label-set limit.\n"
                                   "# TYPE gateway_policy_metric_series_overflow_total counter\n") < 0;
    for (size_t i = 0; i < n_metrics && rc == 0; i++) {
        uint64_t overflow = atomic_load_explicit(&cm->metrics[i].overflow, memory_order_relaxed);
        if (overflow)
            rc |= evbuffer_add_printf(out, "gateway_policy_metric_series_overflow_total{metric=\"%s\"} %llu\n",
                                      cm->metrics[i].name, (unsigned long long)overflow) < 0;
    }
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

int custom_metrics_render(const custom_metrics *cm, struct evbuffer *out)
{
    custom_metrics *m = (custom_metrics *)cm;
    pthread_mutex_lock(&m->lock);
    int rc = custom_metrics_render_locked(cm, out);
    pthread_mutex_unlock(&m->lock);
    return rc;
}
