/* Unit tests for core/base64.c: RFC 4648's test vectors in both alphabets, with and without
 * padding, whitespace, and every refusal the header lists. */
#include "base64.h"
#include "unit.h"

static long dec(const char *in, int flags, char *out, size_t cap)
{
    long n = base64_decode(in, strlen(in), flags, (unsigned char *)out, cap);
    if (n >= 0 && (size_t)n < cap) out[n] = '\0';
    return n;
}

static void test_rfc4648_vectors(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const padded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    static const char *const bare[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    char out[16];
    for (size_t i = 0; i < 7; i++) {
        CHECK_EQ_INT(dec(padded[i], 0, out, sizeof(out)), strlen(plain[i]));
        CHECK_STR(out, plain[i]);
        CHECK_EQ_INT(dec(bare[i], 0, out, sizeof(out)), strlen(plain[i]));
        CHECK_STR(out, plain[i]);
        CHECK_EQ_INT(dec(bare[i], BASE64_URL, out, sizeof(out)), strlen(plain[i]));
        CHECK_STR(out, plain[i]);
    }
}

static void test_alphabets(void)
{
    unsigned char out[8];
    /* 0xfb 0xff 0xbf is "+/+/" in the standard alphabet and "-_-_" in base64url */
    CHECK_EQ_INT(base64_decode("+/+/", 4, 0, out, sizeof(out)), 3);
    CHECK_MEM(out, "\xfb\xff\xbf", 3);
    CHECK_EQ_INT(base64_decode("-_-_", 4, BASE64_URL, out, sizeof(out)), 3);
    CHECK_MEM(out, "\xfb\xff\xbf", 3);
    CHECK_EQ_INT(base64_decode("-_-_", 4, 0, out, sizeof(out)), -1);
    CHECK_EQ_INT(base64_decode("+/+/", 4, BASE64_URL, out, sizeof(out)), -1);
}

static void test_refusals(void)
{
    char out[16];
    CHECK_EQ_INT(dec("Zm9v!", 0, out, sizeof(out)), -1);     /* outside the alphabet */
    CHECK_EQ_INT(dec("Zm9vY", 0, out, sizeof(out)), -1);     /* 4n+1 characters */
    CHECK_EQ_INT(dec("Zg=x", 0, out, sizeof(out)), -1);      /* data after '=' */
    CHECK_EQ_INT(dec("Zg===", 0, out, sizeof(out)), -1);     /* three '=' */
    CHECK_EQ_INT(dec("Zm8==", 0, out, sizeof(out)), -1);     /* padding past the group */
    CHECK_EQ_INT(dec("Zg=", 0, out, sizeof(out)), -1);       /* padding short of the group */
    CHECK_EQ_INT(dec("Zm9v Zg==", 0, out, sizeof(out)), -1); /* whitespace not allowed */
    CHECK_EQ_INT(dec("Zm9vYmFy", 0, out, 5), -1);            /* out too small */
    CHECK_EQ_INT(dec("Zm9vYmFy", 0, out, 6), 6);             /* exactly big enough */
    unsigned char nul[4];
    CHECK_EQ_INT(base64_decode("Zm\0v", 4, 0, nul, sizeof(nul)), -1); /* a NUL inside */
}

static void test_whitespace(void)
{
    char out[16];
    CHECK_EQ_INT(dec(" Zm9v\r\n  Ym\tFy\n", BASE64_SKIP_WHITESPACE, out, sizeof(out)), 6);
    CHECK_STR(out, "foobar");
    CHECK_EQ_INT(dec("Zg\n=\n=\n", BASE64_SKIP_WHITESPACE, out, sizeof(out)), 1);
    CHECK_STR(out, "f");
}

int main(void)
{
    RUN(test_rfc4648_vectors);
    RUN(test_alphabets);
    RUN(test_refusals);
    RUN(test_whitespace);
    return UNIT_EXIT();
}
