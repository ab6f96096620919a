/* apiserver_text.c: see apiserver_text.h. */
#include "apiserver_text.h"

#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void set_err(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

void why_append(apiserver_settings *s, const char *fmt, ...)
{
    size_t used = strnlen(s->why, sizeof(s->why));
    if (used + 1 >= sizeof(s->why)) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->why + used, sizeof(s->why) - used, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= sizeof(s->why) - used) memcpy(s->why + sizeof(s->why) - 4, "...", 4);
}

const char *show_n(shown *b, const char *text, size_t len, size_t max)
{
    if (max > SHOW_PATH_MAX) max = SHOW_PATH_MAX;
    size_t o = 0;
    for (size_t i = 0; i < len && o < max; i++) {
        unsigned char c = (unsigned char)text[i];
        b->s[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (len > max) {
        memcpy(b->s + o, "...", 3);
        o += 3;
    }
    b->s[o] = '\0';
    return b->s;
}

const char *show_name(shown *b, const char *text)
{
    return show_n(b, text, strlen(text), SHOW_NAME_MAX);
}

const char *show_path(shown *b, const char *text)
{
    return show_n(b, text, strlen(text), SHOW_PATH_MAX);
}

bool given(const char *s)
{
    return s && *s;
}

void wipe_free(char *p, size_t len)
{
    if (!p) return;
    OPENSSL_cleanse(p, len);
    free(p);
}

char *dup_n(const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (!p) return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}
