/* mailbox.c: a mutex-protected intrusive list plus an eventfd that wakes the owner's
 * loop. The eventfd is written only when the list goes from empty to non-empty, so a
 * burst of mails costs one write and one read; the owner takes the whole list at once. */
#include "mailbox.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct mailbox {
    pthread_mutex_t lock;
    mail *head, *tail; /* guarded by lock */
    int efd;
    struct event *ready;
    mailbox_deliver_fn deliver;
    void *arg;
};

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    mailbox *mb = arg;
    uint64_t count;
    /* Reset the eventfd before taking the list: a post that lands after the take writes
     * again and is seen on the next turn of the loop. */
    while (read(fd, &count, sizeof(count)) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&mb->lock);
    mail *m = mb->head;
    mb->head = mb->tail = NULL;
    pthread_mutex_unlock(&mb->lock);
    while (m) {
        mail *next = m->next;
        mb->deliver(m, mb->arg);
        m = next;
    }
}

mailbox *mailbox_new(struct event_base *base, mailbox_deliver_fn deliver, void *arg)
{
    mailbox *mb = calloc(1, sizeof(*mb));
    if (!mb) return NULL;
    mb->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mb->efd < 0) {
        free(mb);
        return NULL;
    }
    mb->deliver = deliver;
    mb->arg = arg;
    pthread_mutex_init(&mb->lock, NULL);
    mb->ready = event_new(base, mb->efd, EV_READ | EV_PERSIST, on_ready, mb);
    if (!mb->ready || event_add(mb->ready, NULL) != 0) {
        if (mb->ready) event_free(mb->ready);
        pthread_mutex_destroy(&mb->lock);
        close(mb->efd);
        free(mb);
        return NULL;
    }
    return mb;
}

void mailbox_post(mailbox *mb, mail *m)
{
    m->next = NULL;
    pthread_mutex_lock(&mb->lock);
    int was_empty = mb->head == NULL;
    if (mb->tail)
        mb->tail->next = m;
    else
        mb->head = m;
    mb->tail = m;
    pthread_mutex_unlock(&mb->lock);
    if (was_empty) {
        uint64_t one = 1;
        /* Cannot fail short of EINTR: the counter would need 2^64-1 posts to overflow. */
        while (write(mb->efd, &one, sizeof(one)) < 0 && errno == EINTR) {
        }
    }
}

void mailbox_free(mailbox *mb, void (*discard)(mail *m))
{
    if (!mb) return;
    event_free(mb->ready);
    mail *m = mb->head;
    while (m) {
        mail *next = m->next;
        if (discard) discard(m);
        m = next;
    }
    pthread_mutex_destroy(&mb->lock);
    close(mb->efd);
    free(mb);
}
