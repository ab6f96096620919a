/* fair_queue: a bounded queue shared fairly between flows, in the spirit of Kubernetes'
 * API Priority and Fairness — the review engine's queue of flights waiting for the token
 * bucket.
 *
 * Every item belongs to a flow (a 64-bit id chosen by the caller: for a TokenReview the
 * client's address, for a SubjectAccessReview the identity asking). Items of one flow are
 * served in order; flows are served round-robin, one item per turn, so a flow with
 * thousands of items waiting gets the same share of the API-call rate as a flow with one.
 *
 * Admission keeps the queue from being taken by one flow: when the queue is full, a new
 * item is admitted only if its flow holds less than its fair share (capacity divided by the
 * flows with items), and then the newest item of the longest flow is pushed out to make
 * room (the caller fails it: 503). A flood from one flow thus fills at most what the other
 * flows leave free and never keeps another flow's item out.
 *
 * Intrusive: items are embedded in the caller's structs; the queue allocates only its flow
 * records (at most one per queued item). Not thread-safe: one owner thread. */
#ifndef TOKENGATE_FAIR_QUEUE_H
#define TOKENGATE_FAIR_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fair_queue_flow fair_queue_flow;

typedef struct fair_queue_item {
    struct fair_queue_item *prev, *next; /* within its flow */
    fair_queue_flow *flow;               /* NULL while not queued */
} fair_queue_item;

typedef struct fair_queue fair_queue;

/* A queue of at most capacity items (>= 1). NULL without memory. */
fair_queue *fair_queue_new(size_t capacity);

/* Frees the queue and its flow records; the items still queued are the caller's (they are
 * just forgotten). */
void fair_queue_free(fair_queue *q);

typedef enum {
    FAIR_QUEUE_ADMITTED = 0,        /* queued */
    FAIR_QUEUE_ADMITTED_PUSHED_OUT, /* queued, and *pushed_out was removed to make room */
    FAIR_QUEUE_FULL,                /* not queued: full, and its flow has its fair share already */
    FAIR_QUEUE_NO_MEMORY,           /* not queued (and *pushed_out, if set, was removed: end both) */
} fair_queue_admission;

/* Queues item at the end of flow's items, subject to admission (above). With force (an item
 * that was admitted before and comes back, e.g. a retry) it is queued even beyond capacity.
 * On ADMITTED_PUSHED_OUT, *pushed_out is an item no longer queued: the caller ends it. */
fair_queue_admission fair_queue_push(fair_queue *q, fair_queue_item *item, uint64_t flow, bool force,
                                     fair_queue_item **pushed_out);

/* Removes a queued item (any position). */
void fair_queue_remove(fair_queue *q, fair_queue_item *item);

/* The next item to serve: taking flows round-robin from where the last turn ended, the
 * first flow with an item for which ready(item, arg) is true (looking at each flow's items
 * in order) gives that item. NULL when no item is ready. The item stays queued: remove it
 * with fair_queue_take (which also ends the flow's turn). */
fair_queue_item *fair_queue_next(fair_queue *q, bool (*ready)(const fair_queue_item *item, void *arg), void *arg);

/* Removes item, found by fair_queue_next, and moves the round-robin past its flow. */
void fair_queue_take(fair_queue *q, fair_queue_item *item);

/* Every queued item, flow by flow (for deadline scans). Do not remove items other than
 * the current one while iterating; fair_queue_iter_next is safe after removing the current
 * one only if called with the successor fetched before removal: use the pattern
 *   for (it = first; it; it = next) { next = fair_queue_iter_next(q, it); ... } */
fair_queue_item *fair_queue_first(const fair_queue *q);
fair_queue_item *fair_queue_iter_next(const fair_queue *q, const fair_queue_item *item);

size_t fair_queue_length(const fair_queue *q);
size_t fair_queue_flows(const fair_queue *q);

#endif
