/* Unit tests for custom_metrics.c: declarations, series and their limit, rendering, and the
 * lock-free update path (exact totals from concurrent threads; an update never waits for a
 * scrape in progress). */
#include "custom_metrics.h"
#include "unit.h"

#include <event2/buffer.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

static char *render(custom_metrics *cm)
{
    struct evbuffer *buf = evbuffer_new();
    if (!buf) return NULL;
    if (custom_metrics_render(cm, buf) != 0) {
        evbuffer_free(buf);
        return NULL;
    }
    size_t n = evbuffer_get_length(buf);
    char *text = malloc(n + 1);
    if (text) {
        evbuffer_remove(buf, text, n);
        text[n] = '\0';
    }
    evbuffer_free(buf);
    return text;
}

static bool contains(const char *text, const char *line)
{
    return text && strstr(text, line) != NULL;
}

static void test_counter_gauge_histogram(void)
{
    custom_metrics *cm = custom_metrics_new(10);
    REQUIRE(cm != NULL);
    char err[256];
    const char *labels[] = {"namespace", "decision"};
    int c = custom_metrics_declare(cm, CUSTOM_COUNTER, "decisions_total", "Decisions", labels, 2, NULL, 0, err,
                                   sizeof(err));
    int g = custom_metrics_declare(cm, CUSTOM_GAUGE, "temperature", "T", NULL, 0, NULL, 0, err, sizeof(err));
    const double buckets[] = {0.1, 1};
    int h = custom_metrics_declare(cm, CUSTOM_HISTOGRAM, "latency", "L", NULL, 0, buckets, 2, err, sizeof(err));
    CHECK_EQ_INT(c, 0);
    CHECK_EQ_INT(g, 1);
    CHECK_EQ_INT(h, 2);
    /* the same declaration again finds the same metric; another shape fails */
    CHECK_EQ_INT(
        custom_metrics_declare(cm, CUSTOM_COUNTER, "decisions_total", "", labels, 2, NULL, 0, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_declare(cm, CUSTOM_GAUGE, "decisions_total", "", labels, 2, NULL, 0, err, sizeof(err)),
                 -1);
    const char *a[] = {"team-a", "allow"}, *b[] = {"team-b", "deny"};
    CHECK_EQ_INT(custom_metrics_update(cm, c, CUSTOM_OP_INC, a, 2, 1, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_update(cm, c, CUSTOM_OP_INC, a, 2, 2.5, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_update(cm, c, CUSTOM_OP_INC, b, 2, 1, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_update(cm, c, CUSTOM_OP_INC, b, 2, -1, err, sizeof(err)), -1); /* counters only go up */
    CHECK_EQ_INT(custom_metrics_update(cm, c, CUSTOM_OP_SET, b, 2, 1, err, sizeof(err)), -1);
    CHECK_EQ_INT(custom_metrics_update(cm, c, CUSTOM_OP_INC, a, 1, 1, err, sizeof(err)), -1); /* label count */
    CHECK_EQ_INT(custom_metrics_update(cm, 7, CUSTOM_OP_INC, a, 2, 1, err, sizeof(err)), -1); /* unknown id */
    CHECK_EQ_INT(custom_metrics_update(cm, g, CUSTOM_OP_SET, NULL, 0, 5, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_update(cm, g, CUSTOM_OP_INC, NULL, 0, -7, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_update(cm, h, CUSTOM_OP_OBSERVE, NULL, 0, 0.05, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_update(cm, h, CUSTOM_OP_OBSERVE, NULL, 0, 0.5, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_update(cm, h, CUSTOM_OP_OBSERVE, NULL, 0, 5, err, sizeof(err)), 0);
    char *text = render(cm);
    CHECK(contains(text, "# TYPE decisions_total counter\n"));
    CHECK(contains(text, "decisions_total{namespace=\"team-a\",decision=\"allow\"} 3.5\n"));
    CHECK(contains(text, "decisions_total{namespace=\"team-b\",decision=\"deny\"} 1\n"));
    CHECK(contains(text, "temperature -2\n"));
    CHECK(contains(text, "latency_bucket{le=\"0.10000000000000001\"} 1\n"));
    CHECK(contains(text, "latency_bucket{le=\"1\"} 2\n"));
    CHECK(contains(text, "latency_bucket{le=\"+Inf\"} 3\n"));
    CHECK(contains(text, "latency_sum 5.5499999999999998\n"));
    CHECK(contains(text, "latency_count 3\n"));
    free(text);
    custom_metrics_free(cm);
}

static void test_series_limit(void)
{
    custom_metrics *cm = custom_metrics_new(3);
    REQUIRE(cm != NULL);
    char err[256];
    const char *labels[] = {"id"};
    int c = custom_metrics_declare(cm, CUSTOM_COUNTER, "ids_total", "", labels, 1, NULL, 0, err, sizeof(err));
    REQUIRE(c == 0);
    char value[16];
    int dropped = 0;
    for (int i = 0; i < 10; i++) {
        snprintf(value, sizeof(value), "v%d", i);
        const char *v[] = {value};
        int rc = custom_metrics_update(cm, c, CUSTOM_OP_INC, v, 1, 1, err, sizeof(err));
        CHECK(rc == 0 || rc == 1);
        dropped += rc == 1;
    }
    CHECK_EQ_INT(dropped, 7);
    /* a kept series still updates at the limit */
    const char *v0[] = {"v0"};
    CHECK_EQ_INT(custom_metrics_update(cm, c, CUSTOM_OP_INC, v0, 1, 1, err, sizeof(err)), 0);
    /* values are kept to CUSTOM_METRICS_LABEL_VALUE_MAX bytes: a longer one is one series */
    custom_metrics *cm2 = custom_metrics_new(2);
    REQUIRE(cm2 != NULL);
    int c2 = custom_metrics_declare(cm2, CUSTOM_COUNTER, "long_total", "", labels, 1, NULL, 0, err, sizeof(err));
    char long_value[CUSTOM_METRICS_LABEL_VALUE_MAX + 50];
    memset(long_value, 'x', sizeof(long_value) - 1);
    long_value[sizeof(long_value) - 1] = '\0';
    const char *lv[] = {long_value};
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(custom_metrics_update(cm2, c2, CUSTOM_OP_INC, lv, 1, 1, err, sizeof(err)), 0);
    char *text = render(cm);
    CHECK(contains(text, "ids_total{id=\"v0\"} 2\n"));
    CHECK(contains(text, "gateway_policy_metric_series_overflow_total{metric=\"ids_total\"} 7\n"));
    free(text);
    text = render(cm2);
    CHECK(contains(text, "} 5\n"));
    CHECK(!contains(text, "gateway_policy_metric_series_overflow_total{"));
    free(text);
    custom_metrics_free(cm2);
    custom_metrics_free(cm);
}

static void test_truncate(void)
{
    custom_metrics *cm = custom_metrics_new(4);
    REQUIRE(cm != NULL);
    char err[256];
    int kept = custom_metrics_declare(cm, CUSTOM_COUNTER, "kept_total", "", NULL, 0, NULL, 0, err, sizeof(err));
    int gone = custom_metrics_declare(cm, CUSTOM_COUNTER, "gone_total", "", NULL, 0, NULL, 0, err, sizeof(err));
    CHECK_EQ_INT(custom_metrics_update(cm, kept, CUSTOM_OP_INC, NULL, 0, 1, err, sizeof(err)), 0);
    CHECK_EQ_INT(custom_metrics_update(cm, gone, CUSTOM_OP_INC, NULL, 0, 1, err, sizeof(err)), 0);
    custom_metrics_truncate(cm, 1);
    CHECK_EQ_INT(custom_metrics_count(cm), 1);
    CHECK_EQ_INT(custom_metrics_update(cm, gone, CUSTOM_OP_INC, NULL, 0, 1, err, sizeof(err)), -1);
    /* the slot is declared again from scratch */
    const char *labels[] = {"l"};
    int again = custom_metrics_declare(cm, CUSTOM_GAUGE, "other", "", labels, 1, NULL, 0, err, sizeof(err));
    CHECK_EQ_INT(again, 1);
    const char *v[] = {"x"};
    CHECK_EQ_INT(custom_metrics_update(cm, again, CUSTOM_OP_SET, v, 1, 4, err, sizeof(err)), 0);
    char *text = render(cm);
    CHECK(contains(text, "kept_total 1\n"));
    CHECK(!contains(text, "gone_total"));
    CHECK(contains(text, "other{l=\"x\"} 4\n"));
    free(text);
    custom_metrics_free(cm);
}

/* ---- concurrency ---- */

#define THREADS 4
#define ROUNDS 20000

typedef struct hammer {
    custom_metrics *cm;
    int counter, histogram;
    int index;
} hammer;

static void *hammer_run(void *arg)
{
    hammer *h = arg;
    char err[128];
    const char *names[] = {"a", "b", "c"};
    for (int i = 0; i < ROUNDS; i++) {
        const char *v[] = {names[(i + h->index) % 3]};
        custom_metrics_update(h->cm, h->counter, CUSTOM_OP_INC, v, 1, 1, err, sizeof(err));
        custom_metrics_update(h->cm, h->histogram, CUSTOM_OP_OBSERVE, NULL, 0, (i % 2) ? 0.5 : 2, err, sizeof(err));
    }
    return NULL;
}

static void test_concurrent_updates_are_exact(void)
{
    custom_metrics *cm = custom_metrics_new(8);
    REQUIRE(cm != NULL);
    char err[256];
    const char *labels[] = {"who"};
    const double buckets[] = {1};
    hammer hs[THREADS];
    pthread_t threads[THREADS];
    int counter = custom_metrics_declare(cm, CUSTOM_COUNTER, "hits_total", "", labels, 1, NULL, 0, err, sizeof(err));
    int histogram = custom_metrics_declare(cm, CUSTOM_HISTOGRAM, "sizes", "", NULL, 0, buckets, 1, err, sizeof(err));
    for (int t = 0; t < THREADS; t++) {
        hs[t] = (hammer){cm, counter, histogram, t};
        REQUIRE(pthread_create(&threads[t], NULL, hammer_run, &hs[t]) == 0);
    }
    /* scrapes while they run */
    for (int i = 0; i < 20; i++) free(render(cm));
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    char *text = render(cm);
    char line[128];
    double total = (double)THREADS * ROUNDS;
    /* THREADS * ROUNDS increments over 3 label values, each exactly once per (thread, i) */
    long per[3] = {0, 0, 0};
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < ROUNDS; i++) per[(i + t) % 3]++;
    const char *names[] = {"a", "b", "c"};
    for (int k = 0; k < 3; k++) {
        snprintf(line, sizeof(line), "hits_total{who=\"%s\"} %ld\n", names[k], per[k]);
        CHECK(contains(text, line));
    }
    snprintf(line, sizeof(line), "sizes_count %.0f\n", total);
    CHECK(contains(text, line));
    snprintf(line, sizeof(line), "sizes_bucket{le=\"1\"} %.0f\n", total / 2);
    CHECK(contains(text, line));
    snprintf(line, sizeof(line), "sizes_sum %.17g\n", total / 2 * 0.5 + total / 2 * 2);
    CHECK(contains(text, line));
    free(text);
    custom_metrics_free(cm);
}

/* An update must not wait for a scrape: the render holds the registry lock while it writes
 * into the evbuffer, whose change callback runs an update on another thread and waits for it
 * (bounded, so a regression fails instead of hanging). */
typedef struct probe {
    custom_metrics *cm;
    int id;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done, tried;
    bool finished_in_time;
} probe;

static void *probe_update(void *arg)
{
    probe *p = arg;
    char err[128];
    custom_metrics_update(p->cm, p->id, CUSTOM_OP_INC, NULL, 0, 1, err, sizeof(err));
    pthread_mutex_lock(&p->lock);
    p->done = true;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static void on_render_write(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    (void)info;
    probe *p = arg;
    if (p->tried) return;
    p->tried = true;
    pthread_t thread;
    if (pthread_create(&thread, NULL, probe_update, p) != 0) return;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&p->lock);
    while (!p->done)
        if (pthread_cond_timedwait(&p->cond, &p->lock, &until) != 0) break;
    p->finished_in_time = p->done;
    pthread_mutex_unlock(&p->lock);
    if (p->finished_in_time)
        pthread_join(thread, NULL);
    else
        pthread_detach(thread); /* it finishes once the render lets go */
}

static void test_update_never_waits_for_a_scrape(void)
{
    custom_metrics *cm = custom_metrics_new(4);
    REQUIRE(cm != NULL);
    char err[256];
    probe p = {.cm = cm};
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.cond, NULL);
    p.id = custom_metrics_declare(cm, CUSTOM_COUNTER, "probe_total", "", NULL, 0, NULL, 0, err, sizeof(err));
    REQUIRE(p.id == 0);
    struct evbuffer *buf = evbuffer_new();
    REQUIRE(buf != NULL);
    evbuffer_add_cb(buf, on_render_write, &p);
    CHECK_EQ_INT(custom_metrics_render(cm, buf), 0);
    evbuffer_free(buf);
    CHECK(p.tried);
    CHECK(p.finished_in_time);
    if (!p.finished_in_time) { /* let the blocked update finish before freeing what it uses */
        pthread_mutex_lock(&p.lock);
        while (!p.done) pthread_cond_wait(&p.cond, &p.lock);
        pthread_mutex_unlock(&p.lock);
    }
    char *text = render(cm);
    CHECK(contains(text, "probe_total 1\n"));
    free(text);
    custom_metrics_free(cm);
    pthread_cond_destroy(&p.cond);
    pthread_mutex_destroy(&p.lock);
}

int main(void)
{
    RUN(test_counter_gauge_histogram);
    RUN(test_series_limit);
    RUN(test_truncate);
    RUN(test_concurrent_updates_are_exact);
    RUN(test_update_never_waits_for_a_scrape);
    return UNIT_EXIT();
}
