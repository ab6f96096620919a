/* The one base64 decoder (RFC 4648): standard (kubeconfig *-data fields) or base64url (JWT
 * segments), on OpenSSL's EVP_DecodeBlock after a strict check of the alphabet and padding. */
#ifndef TOKENGATE_BASE64_H
#define TOKENGATE_BASE64_H

#include <stddef.h>

enum {
    BASE64_URL = 1,             /* the URL-safe alphabet ('-', '_') instead of '+', '/' */
    BASE64_SKIP_WHITESPACE = 2, /* spaces, tabs and line breaks anywhere are ignored */
};

/* The most bytes base64_decode can write for len input characters. */
#define BASE64_DECODED_MAX(len) ((len) / 4 * 3 + 3)

/* Decodes len characters of in (need not be NUL-terminated) into out (cap bytes) and returns
 * the number of bytes written, or -1 when: a character is outside the alphabet (or is
 * whitespace without BASE64_SKIP_WHITESPACE), a data character follows '=', there are more
 * than two '=', '=' padding does not complete a 4-character group, the data length is 4n+1,
 * or out is too small. Padding is optional. Empty input decodes to 0 bytes. */
long base64_decode(const char *in, size_t len, int flags, unsigned char *out, size_t cap);

#endif
