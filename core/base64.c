/* base64.c: input checked here, decoding done by OpenSSL's EVP_DecodeBlock. */
#include "base64.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdlib.h>

static bool standard_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

#define STACK_BYTES 1024 /* inputs up to this size (a JWT segment, a key) use no heap */

long base64_decode(const char *in, size_t len, int flags, unsigned char *out, size_t cap)
{
    if (len > ((size_t)1 << 30)) return -1;
    /* The data characters in the standard alphabet, padded to a whole group of four; then
     * what EVP_DecodeBlock makes of them (whole groups of 3, padding bytes as zeros). */
    unsigned char group_stack[STACK_BYTES + 4], block_stack[STACK_BYTES];
    unsigned char *group = len <= STACK_BYTES ? group_stack : malloc(len + 4);
    unsigned char *block = NULL;
    if (!group) return -1;
    size_t n = 0, pad = 0;
    long rc = -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            if (flags & BASE64_SKIP_WHITESPACE) continue;
            goto done;
        }
        if (c == '=') {
            pad++;
            continue;
        }
        if (flags & BASE64_URL) {
            if (c == '-')
                c = '+';
            else if (c == '_')
                c = '/';
            else if (c == '+' || c == '/')
                goto done;
        }
        if (!standard_char(c) || pad) goto done;
        group[n++] = c;
    }
    if (n % 4 == 1 || pad > 2 || (pad && (n + pad) % 4 != 0)) goto done;
    size_t missing = (4 - n % 4) % 4;
    size_t decoded = n / 4 * 3 + (missing ? 3 - missing : 0);
    if (decoded > cap) goto done;
    if (n == 0) {
        rc = 0;
        goto done;
    }
    for (size_t i = 0; i < missing; i++) group[n++] = '=';
    size_t whole = n / 4 * 3;
    block = whole <= sizeof(block_stack) ? block_stack : malloc(whole);
    if (!block) goto done;
    int got = EVP_DecodeBlock(block, group, (int)n);
    if (got >= 0 && (size_t)got == whole) {
        for (size_t i = 0; i < decoded; i++) out[i] = block[i];
        rc = (long)decoded;
    }
    OPENSSL_cleanse(block, whole);
done:
    if (block && block != block_stack) free(block);
    OPENSSL_cleanse(group, n);
    if (group != group_stack) free(group);
    return rc;
}
