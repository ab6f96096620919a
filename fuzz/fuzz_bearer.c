/* fuzz_bearer: bearer_extract (core/bearer.h) on arbitrary Authorization header values.
 *
 * Input: 2 bytes little-endian selecting max_token_bytes (0xFFFF means SIZE_MAX), then the
 * header value (it ends at the first NUL, as a C string does).
 *
 * Invariants (abort on violation):
 *  - the status is one of the four and bearer_status_reason gives a non-empty text;
 *  - the status agrees with an independent POSIX regex of RFC 6750's grammar
 *      ^[Bb][Ee][Aa][Rr][Ee][Rr] +([-A-Za-z0-9._~+/]+=*)[ \t]*$
 *    (match and length <= max → OK; match and longer → TOO_LONG; no match → MALFORMED);
 *  - on OK: the token lies inside the header value, 1 <= len <= max, only b64token
 *    characters with '=' only as trailing padding, it is exactly the regex's group 1, and
 *    only spaces/tabs follow it;
 *  - on anything but OK the output arguments are left untouched;
 *  - NULL → MISSING. */
#include "bearer.h"
#include "fuzz_common.h"

#include <regex.h>
#include <strings.h>

static regex_t grammar;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (regcomp(&grammar, "^[Bb][Ee][Aa][Rr][Ee][Rr] +([-A-Za-z0-9._~+/]+=*)[ \t]*$", REG_EXTENDED) != 0) abort();
    return 0;
}

static bool b64token_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~' || c == '+' || c == '/';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool null_checked;
    if (!null_checked) {
        const char *t = NULL;
        size_t l = 0;
        FUZZ_CHECK(bearer_extract(NULL, 100, &t, &l) == BEARER_MISSING);
        null_checked = true;
    }
    if (size < 2) return 0;
    size_t max = (size_t)data[0] | ((size_t)data[1] << 8);
    if (max == 0xFFFF) max = SIZE_MAX;
    char *header = fuzz_copy_cstr(data + 2, size - 2);
    size_t header_len = strlen(header);

    const char *sentinel = "untouched";
    const char *token = sentinel;
    size_t token_len = 12345;
    bearer_status st = bearer_extract(header, max, &token, &token_len);
    FUZZ_CHECK(st == BEARER_OK || st == BEARER_MISSING || st == BEARER_MALFORMED || st == BEARER_TOO_LONG);
    const char *why = bearer_status_reason(st);
    FUZZ_CHECK(why != NULL && why[0] != '\0');
    FUZZ_CHECK(st != BEARER_MISSING); /* the value is not NULL */

    regmatch_t m[2];
    bool matches = regexec(&grammar, header, 2, m, 0) == 0;
    size_t ref_len = matches ? (size_t)(m[1].rm_eo - m[1].rm_so) : 0;

    if (st == BEARER_OK) {
        FUZZ_CHECK(matches && ref_len <= max);
        FUZZ_CHECK(token >= header && token <= header + header_len);
        FUZZ_CHECK(token_len >= 1 && token_len <= max);
        FUZZ_CHECK(token_len <= header_len - (size_t)(token - header));
        FUZZ_CHECK(token == header + m[1].rm_so && token_len == ref_len);
        FUZZ_CHECK(b64token_char((unsigned char)token[0]));
        bool padding = false;
        for (size_t i = 0; i < token_len; i++) {
            unsigned char c = (unsigned char)token[i];
            if (c == '=') {
                padding = true;
            } else {
                FUZZ_CHECK(!padding && b64token_char(c));
            }
        }
        for (const char *p = token + token_len; *p; p++) FUZZ_CHECK(*p == ' ' || *p == '\t');
        /* The scheme and the separating spaces precede it. */
        FUZZ_CHECK(token - header >= 7 && strncasecmp(header, "bearer", 6) == 0);
        for (const char *p = header + 6; p < token; p++) FUZZ_CHECK(*p == ' ');
    } else {
        FUZZ_CHECK(token == sentinel && token_len == 12345);
        if (st == BEARER_TOO_LONG)
            FUZZ_CHECK(matches && ref_len > max);
        else
            FUZZ_CHECK(!matches);
    }
    free(header);
    return 0;
}
