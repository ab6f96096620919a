/* fair_queue.c: per-flow FIFOs served round-robin, with fair admission (fair_queue.h).
 * Flows with items are kept in a list (the round-robin order) and a hash table by id; a
 * flow record exists only while it has items. */
#include "fair_queue.h"

#include <stdlib.h>

struct fair_queue_flow {
    uint64_t id;
    fair_queue_flow *hash_next;
    fair_queue_flow *prev, *next; /* in the list of flows with items */
    fair_queue_item *head, *tail;
    size_t count;
};

struct fair_queue {
    size_t capacity;
    size_t length;
    size_t n_flows;
    fair_queue_flow **buckets;
    size_t n_buckets; /* a power of two */
    fair_queue_flow *flows_head, *flows_tail;
    fair_queue_flow *cursor; /* the flow whose turn is next; NULL: the first */
};

static size_t bucket_of(const fair_queue *q, uint64_t id)
{
    id ^= id >> 31;
    id *= 0x7fb5d329728ea185ULL;
    id ^= id >> 27;
    return (size_t)id & (q->n_buckets - 1);
}

fair_queue *fair_queue_new(size_t capacity)
{
    fair_queue *q = calloc(1, sizeof(*q));
    if (!q) return NULL;
    q->capacity = capacity ? capacity : 1;
    q->n_buckets = 64;
    while (q->n_buckets < q->capacity && q->n_buckets < 65536) q->n_buckets <<= 1;
    q->buckets = calloc(q->n_buckets, sizeof(*q->buckets));
    if (!q->buckets) {
        free(q);
        return NULL;
    }
    return q;
}

void fair_queue_free(fair_queue *q)
{
    if (!q) return;
    for (fair_queue_flow *f = q->flows_head, *next; f; f = next) {
        next = f->next;
        for (fair_queue_item *it = f->head; it; it = it->next) it->flow = NULL;
        free(f);
    }
    free(q->buckets);
    free(q);
}

static fair_queue_flow *flow_find(const fair_queue *q, uint64_t id)
{
    fair_queue_flow *f = q->buckets[bucket_of(q, id)];
    while (f && f->id != id) f = f->hash_next;
    return f;
}

static fair_queue_flow *flow_create(fair_queue *q, uint64_t id)
{
    fair_queue_flow *f = calloc(1, sizeof(*f));
    if (!f) return NULL;
    f->id = id;
    fair_queue_flow **bucket = &q->buckets[bucket_of(q, id)];
    f->hash_next = *bucket;
    *bucket = f;
    f->prev = q->flows_tail;
    if (q->flows_tail)
        q->flows_tail->next = f;
    else
        q->flows_head = f;
    q->flows_tail = f;
    q->n_flows++;
    return f;
}

static void flow_destroy(fair_queue *q, fair_queue_flow *f)
{
    fair_queue_flow **slot = &q->buckets[bucket_of(q, f->id)];
    while (*slot != f) slot = &(*slot)->hash_next;
    *slot = f->hash_next;
    if (q->cursor == f) q->cursor = f->next;
    if (f->prev)
        f->prev->next = f->next;
    else
        q->flows_head = f->next;
    if (f->next)
        f->next->prev = f->prev;
    else
        q->flows_tail = f->prev;
    q->n_flows--;
    free(f);
}

static void append(fair_queue *q, fair_queue_flow *f, fair_queue_item *item)
{
    item->flow = f;
    item->next = NULL;
    item->prev = f->tail;
    if (f->tail)
        f->tail->next = item;
    else
        f->head = item;
    f->tail = item;
    f->count++;
    q->length++;
}

void fair_queue_remove(fair_queue *q, fair_queue_item *item)
{
    fair_queue_flow *f = item->flow;
    if (!f) return;
    if (item->prev)
        item->prev->next = item->next;
    else
        f->head = item->next;
    if (item->next)
        item->next->prev = item->prev;
    else
        f->tail = item->prev;
    item->prev = item->next = NULL;
    item->flow = NULL;
    f->count--;
    q->length--;
    if (f->count == 0) flow_destroy(q, f);
}

fair_queue_admission fair_queue_push(fair_queue *q, fair_queue_item *item, uint64_t flow, bool force,
                                     fair_queue_item **pushed_out)
{
    *pushed_out = NULL;
    fair_queue_flow *f = flow_find(q, flow);
    if (!force && q->length >= q->capacity) {
        size_t mine = f ? f->count : 0;
        size_t flows = q->n_flows + (f ? 0 : 1);
        size_t share = q->capacity / flows;
        if (share < 1) share = 1;
        if (mine >= share) return FAIR_QUEUE_FULL;
        fair_queue_flow *longest = NULL;
        for (fair_queue_flow *g = q->flows_head; g; g = g->next)
            if (!longest || g->count > longest->count) longest = g;
        /* Pushing out only helps if the longest flow is longer than this one would be. */
        if (!longest || longest == f || longest->count <= mine + 1) return FAIR_QUEUE_FULL;
        fair_queue_item *victim = longest->tail;
        fair_queue_remove(q, victim); /* may free longest; never f (f is not the longest) */
        *pushed_out = victim;
    }
    if (!f) f = flow_create(q, flow);
    if (!f) {
        /* Without memory the pushed-out item, if any, is simply ended by the caller as well:
         * no item is lost track of. */
        return FAIR_QUEUE_NO_MEMORY;
    }
    append(q, f, item);
    return *pushed_out ? FAIR_QUEUE_ADMITTED_PUSHED_OUT : FAIR_QUEUE_ADMITTED;
}

fair_queue_item *fair_queue_next(fair_queue *q, bool (*ready)(const fair_queue_item *item, void *arg), void *arg)
{
    fair_queue_flow *start = q->cursor ? q->cursor : q->flows_head;
    fair_queue_flow *f = start;
    for (size_t visited = 0; f && visited < q->n_flows; visited++) {
        for (fair_queue_item *it = f->head; it; it = it->next)
            if (ready(it, arg)) return it;
        f = f->next ? f->next : q->flows_head;
    }
    return NULL;
}

void fair_queue_take(fair_queue *q, fair_queue_item *item)
{
    fair_queue_flow *f = item->flow;
    if (!f) return;
    q->cursor = f->next; /* NULL: the first flow's turn */
    fair_queue_remove(q, item);
}

fair_queue_item *fair_queue_first(const fair_queue *q)
{
    return q->flows_head ? q->flows_head->head : NULL;
}

fair_queue_item *fair_queue_iter_next(const fair_queue *q, const fair_queue_item *item)
{
    (void)q;
    if (item->next) return item->next;
    fair_queue_flow *f = item->flow ? item->flow->next : NULL;
    return f ? f->head : NULL;
}

size_t fair_queue_length(const fair_queue *q)
{
    return q->length;
}

size_t fair_queue_flows(const fair_queue *q)
{
    return q->n_flows;
}
