/* A mailbox: how one event loop hands work to another thread's loop. Any thread may post;
 * the owner's loop delivers the mails, in the order they were posted, from an eventfd
 * read event, so the receiving side runs them on its own thread like any other event.
 *
 * Mails are intrusive: the sender embeds a `mail` as the first member of its message and
 * allocates it; ownership passes to the receiver's deliver callback (or to the discard
 * callback when the mailbox is freed with mails still in it). Posting never allocates and
 * never fails, so a waiter can always be woken. */
#ifndef TOKENGATE_MAILBOX_H
#define TOKENGATE_MAILBOX_H

#include <event2/event.h>

typedef struct mail {
    struct mail *next;
} mail;

typedef struct mailbox mailbox;

/* Called on the owner's loop for each mail; takes ownership of it. */
typedef void (*mailbox_deliver_fn)(mail *m, void *arg);

/* Creates a mailbox delivered on base (the owner's loop). Returns NULL on failure. */
mailbox *mailbox_new(struct event_base *base, mailbox_deliver_fn deliver, void *arg);

/* Queues m and wakes the owner's loop. Safe from any thread, including the owner's. */
void mailbox_post(mailbox *mb, mail *m);

/* Frees the mailbox on the owner's thread once nobody posts any more. Mails still queued
 * are handed to discard (may be NULL when the caller knows there are none). */
void mailbox_free(mailbox *mb, void (*discard)(mail *m));

#endif
