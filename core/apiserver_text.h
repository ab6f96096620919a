/* Text helpers shared by the files that decide the API server configuration
 * (apiserver_config.c, apiserver_url.c, yaml_tree.c, kubeconfig.c): error messages, the
 * settings' `why` text, a printable quoting of names and paths for both, and copies that
 * are wiped when freed. One copy for the four files, so that each can own its concern
 * while their messages stay alike; internal to them. The show_* helpers are for names and
 * paths only: never pass them a secret. */
#ifndef TOKENGATE_APISERVER_TEXT_H
#define TOKENGATE_APISERVER_TEXT_H

#include "apiserver_config.h"

#include <stdbool.h>
#include <stddef.h>

#define SHOW_NAME_MAX 64  /* longest name quoted in a message */
#define SHOW_PATH_MAX 200 /* longest path or URL quoted in a message */

void set_err(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Appends to s->why; a why that no longer fits ends with "...". */
void why_append(apiserver_settings *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A printable copy of text for messages: non-ASCII and control bytes become '?', and text
 * longer than max is cut with "...". Names and paths only: never call it on a secret. */
typedef struct shown {
    char s[SHOW_PATH_MAX + 4];
} shown;

const char *show_n(shown *b, const char *text, size_t len, size_t max);
const char *show_name(shown *b, const char *text); /* at most SHOW_NAME_MAX characters */
const char *show_path(shown *b, const char *text); /* at most SHOW_PATH_MAX characters */

/* s is neither NULL nor "". */
bool given(const char *s);

/* Wipes the len bytes at p, then frees them; NULL is a no-op. */
void wipe_free(char *p, size_t len);

/* A NUL-terminated malloc'd copy of the len bytes at s, or NULL. */
char *dup_n(const char *s, size_t len);

#endif
