/* Unit tests for fair_queue.c: round-robin service between flows, FIFO within a flow, fair
 * admission with push-out, forced re-queueing, iteration and flow bookkeeping. */
#include "fair_queue.h"
#include "unit.h"

#include <stdlib.h>

typedef struct entry {
    fair_queue_item item; /* first: an item pointer is its entry's */
    int flow;
    int seq;
    bool ready;
} entry;

static bool entry_ready(const fair_queue_item *item, void *arg)
{
    (void)arg;
    return ((const entry *)item)->ready;
}

static entry *take_next(fair_queue *q)
{
    fair_queue_item *it = fair_queue_next(q, entry_ready, NULL);
    if (it) fair_queue_take(q, it);
    return (entry *)it;
}

static void test_round_robin_between_flows_fifo_within(void)
{
    fair_queue *q = fair_queue_new(100);
    entry a[5], b[2];
    fair_queue_item *out;
    for (int i = 0; i < 5; i++) {
        a[i] = (entry){.flow = 1, .seq = i, .ready = true};
        CHECK_EQ_INT(fair_queue_push(q, &a[i].item, 1, false, &out), FAIR_QUEUE_ADMITTED);
    }
    for (int i = 0; i < 2; i++) {
        b[i] = (entry){.flow = 2, .seq = i, .ready = true};
        CHECK_EQ_INT(fair_queue_push(q, &b[i].item, 2, false, &out), FAIR_QUEUE_ADMITTED);
    }
    CHECK_EQ_INT(fair_queue_flows(q), 2);
    /* A flow with 5 waiting and one with 2 alternate until the short one is empty. */
    const int want_flow[] = {1, 2, 1, 2, 1, 1, 1};
    const int want_seq[] = {0, 0, 1, 1, 2, 3, 4};
    for (int i = 0; i < 7; i++) {
        entry *e = take_next(q);
        CHECK(e != NULL);
        if (!e) break;
        CHECK_EQ_INT(e->flow, want_flow[i]);
        CHECK_EQ_INT(e->seq, want_seq[i]);
    }
    CHECK(take_next(q) == NULL);
    CHECK_EQ_INT(fair_queue_length(q), 0);
    CHECK_EQ_INT(fair_queue_flows(q), 0);
    fair_queue_free(q);
}

static void test_ready_predicate_skips_items_not_ready(void)
{
    fair_queue *q = fair_queue_new(10);
    entry e[3] = {{.flow = 1, .seq = 0, .ready = false},
                  {.flow = 1, .seq = 1, .ready = true},
                  {.flow = 2, .seq = 0, .ready = false}};
    fair_queue_item *out;
    fair_queue_push(q, &e[0].item, 1, false, &out);
    fair_queue_push(q, &e[1].item, 1, false, &out);
    fair_queue_push(q, &e[2].item, 2, false, &out);
    entry *got = take_next(q);
    CHECK(got == &e[1]);
    CHECK(take_next(q) == NULL); /* nothing else ready */
    e[2].ready = true;
    CHECK(take_next(q) == &e[2]);
    fair_queue_free(q);
}

static void test_a_flood_cannot_keep_another_flow_out(void)
{
    enum { CAP = 10 };
    fair_queue *q = fair_queue_new(CAP);
    entry flood[CAP + 1], other[CAP];
    fair_queue_item *out = NULL;
    for (int i = 0; i < CAP; i++) {
        flood[i] = (entry){.flow = 1, .seq = i, .ready = true};
        CHECK_EQ_INT(fair_queue_push(q, &flood[i].item, 1, false, &out), FAIR_QUEUE_ADMITTED);
    }
    /* Full: the flooding flow gets no more. */
    flood[CAP] = (entry){.flow = 1, .seq = CAP, .ready = true};
    CHECK_EQ_INT(fair_queue_push(q, &flood[CAP].item, 1, false, &out), FAIR_QUEUE_FULL);
    CHECK(out == NULL);
    CHECK(flood[CAP].item.flow == NULL);
    /* Another flow is admitted up to its fair share (CAP / 2 flows), each time pushing out
     * the flood's newest item. */
    for (int i = 0; i < CAP / 2; i++) {
        other[i] = (entry){.flow = 2, .seq = i, .ready = true};
        CHECK_EQ_INT(fair_queue_push(q, &other[i].item, 2, false, &out), FAIR_QUEUE_ADMITTED_PUSHED_OUT);
        CHECK(out == &flood[CAP - 1 - i].item);
        CHECK(out->flow == NULL);
    }
    other[CAP / 2] = (entry){.flow = 2, .seq = CAP / 2, .ready = true};
    CHECK_EQ_INT(fair_queue_push(q, &other[CAP / 2].item, 2, false, &out), FAIR_QUEUE_FULL);
    CHECK_EQ_INT(fair_queue_length(q), CAP);
    /* A third flow: share CAP/3 = 3, so it gets 3, pushed out of the longer flows. */
    entry third[4];
    int admitted = 0;
    for (int i = 0; i < 4; i++) {
        third[i] = (entry){.flow = 3, .seq = i, .ready = true};
        fair_queue_admission a = fair_queue_push(q, &third[i].item, 3, false, &out);
        if (a == FAIR_QUEUE_ADMITTED_PUSHED_OUT)
            admitted++;
        else
            CHECK_EQ_INT(a, FAIR_QUEUE_FULL);
    }
    CHECK_EQ_INT(admitted, 3);
    CHECK_EQ_INT(fair_queue_length(q), CAP);
    fair_queue_free(q);
}

static void test_force_requeues_beyond_capacity(void)
{
    fair_queue *q = fair_queue_new(1);
    entry e[2] = {{.flow = 1, .ready = true}, {.flow = 1, .seq = 1, .ready = true}};
    fair_queue_item *out;
    CHECK_EQ_INT(fair_queue_push(q, &e[0].item, 1, false, &out), FAIR_QUEUE_ADMITTED);
    CHECK_EQ_INT(fair_queue_push(q, &e[1].item, 1, false, &out), FAIR_QUEUE_FULL);
    CHECK_EQ_INT(fair_queue_push(q, &e[1].item, 1, true, &out), FAIR_QUEUE_ADMITTED);
    CHECK_EQ_INT(fair_queue_length(q), 2);
    fair_queue_free(q);
}

static void test_iteration_and_removal(void)
{
    fair_queue *q = fair_queue_new(100);
    entry e[6];
    fair_queue_item *out;
    for (int i = 0; i < 6; i++) {
        e[i] = (entry){.flow = i % 3, .seq = i, .ready = true};
        fair_queue_push(q, &e[i].item, (uint64_t)(i % 3), false, &out);
    }
    int seen = 0;
    for (fair_queue_item *it = fair_queue_first(q); it; it = fair_queue_iter_next(q, it)) seen++;
    CHECK_EQ_INT(seen, 6);
    /* Remove every item of flow 1 while iterating (successor fetched first). */
    for (fair_queue_item *it = fair_queue_first(q), *next; it; it = next) {
        next = fair_queue_iter_next(q, it);
        if (((entry *)it)->flow == 1) fair_queue_remove(q, it);
    }
    CHECK_EQ_INT(fair_queue_length(q), 4);
    CHECK_EQ_INT(fair_queue_flows(q), 2);
    fair_queue_remove(q, &e[1].item); /* not queued any more: ignored */
    CHECK_EQ_INT(fair_queue_length(q), 4);
    fair_queue_free(q);
}

int main(void)
{
    test_round_robin_between_flows_fifo_within();
    test_ready_predicate_skips_items_not_ready();
    test_a_flood_cannot_keep_another_flow_out();
    test_force_requeues_beyond_capacity();
    test_iteration_and_removal();
    return UNIT_EXIT();
}
