/* A libcurl multi handle driven by a libevent loop (curl's docs/examples/hiperfifo.c
 * pattern): curl's sockets are mirrored onto persistent events, its single timeout onto
 * one timer, and every finished transfer is handed to the completion callback its owner
 * attached to it. The API client and the upstream client each own one; this file is the
 * only copy of the glue.
 *
 * Threading: a curl_loop belongs to one event loop and is used only from its thread. */
#ifndef TOKENGATE_CURL_LOOP_H
#define TOKENGATE_CURL_LOOP_H

#include <curl/curl.h>
#include <event2/event.h>

typedef struct curl_loop curl_loop;

/* What a transfer's owner attaches to its easy handle (as CURLOPT_PRIVATE). done is called
 * once, from the loop (never from inside a libcurl callback), when the transfer finished
 * or failed; the easy handle is still added to the multi handle then, and the owner
 * removes it (curl_loop_remove) and cleans it up. The struct must stay valid until then;
 * owners usually embed it in their per-transfer context. */
typedef struct curl_loop_transfer {
    void (*done)(void *owner, CURL *easy, CURLcode code);
    void *owner;
} curl_loop_transfer;

/* Creates a multi handle whose sockets and timer run on base. Returns NULL on failure
 * (out of memory). The caller owns the result and frees it with curl_loop_free. */
curl_loop *curl_loop_new(struct event_base *base);

/* Frees the multi handle, its socket events and its timer. Every transfer must have been
 * removed first (owners abort theirs: curl_loop_remove + curl_easy_cleanup); idle cached
 * connections are closed here. NULL is ignored. */
void curl_loop_free(curl_loop *loop);

/* The multi handle, for the owner's options (CURLMOPT_MAX_HOST_CONNECTIONS, ...). Still
 * owned by the loop: never clean it up, and never replace its socket or timer callbacks. */
CURLM *curl_loop_multi(const curl_loop *loop);

/* Starts easy on the loop: sets its CURLOPT_PRIVATE to transfer (borrowed until done runs
 * or the handle is removed) and adds it to the multi handle. Returns 0, or -1 when libcurl
 * refuses the handle (nothing was added; transfer->done will not be called). */
int curl_loop_add(curl_loop *loop, CURL *easy, curl_loop_transfer *transfer);

/* Removes easy from the multi handle, finished or not (an unfinished transfer is aborted
 * and its done is not called). The caller still owns easy. Safe from done and from event
 * callbacks; never call it from inside a libcurl callback. */
void curl_loop_remove(curl_loop *loop, CURL *easy);

#endif
