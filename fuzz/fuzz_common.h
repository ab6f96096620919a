/* Shared helpers of the libFuzzer targets: an invariant check that aborts (so libFuzzer
 * records the input as a crash), exact-size heap copies (so ASan catches any read past the
 * end), and reference checks for UTF-8 and control characters written independently of
 * core/. */
#ifndef TOKENGATE_FUZZ_COMMON_H
#define TOKENGATE_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* An invariant of the code under test does not hold: say which, then abort() so that
 * libFuzzer saves the input as crash-<sha1>. */
#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond);                             \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* malloc that never returns NULL (an out-of-memory here is not a finding). */
static inline void *fuzz_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

/* An exact-size heap copy of data: no NUL after it, so an over-read is an ASan report. */
static inline char *fuzz_copy_exact(const uint8_t *data, size_t size)
{
    char *p = fuzz_xmalloc(size);
    if (size) memcpy(p, data, size);
    return p;
}

/* A heap copy with a NUL appended (embedded NULs end the C string early). */
static inline char *fuzz_copy_cstr(const uint8_t *data, size_t size)
{
    char *p = fuzz_xmalloc(size + 1);
    if (size) memcpy(p, data, size);
    p[size] = '\0';
    return p;
}

/* True when s[0..len) holds a C0 control (0x00..0x1F) or DEL. */
static inline bool fuzz_has_c0_or_del(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return true;
    }
    return false;
}

/* Strict UTF-8 (RFC 3629, as jansson checks it): no overlong forms, no surrogates, nothing
 * above U+10FFFF. NUL bytes count as valid (U+0000). */
static inline bool fuzz_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned char c = *p;
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if ((size_t)(end - p) < n) return false;
        for (size_t i = 1; i < n; i++) {
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        p += n;
    }
    return true;
}

/* True when valid UTF-8 s[0..len) holds a C1 control (U+0080..U+009F, i.e. C2 80..C2 9F). */
static inline bool fuzz_has_c1(const char *s, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++)
        if ((unsigned char)s[i] == 0xC2 && (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0x9F)
            return true;
    return false;
}

#endif
