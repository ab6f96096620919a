/* identity.c owns the packed identity format used by cache entries. */
#include "identity.h"

#include <openssl/evp.h>

#include <string.h>

/* Strings nearly every ServiceAccount identity carries, stored as a 2-byte code instead
 * of their bytes (a string record whose length field has the high bit set names one by
 * index). Real lengths never have that bit (IDENTITY_STRING_MAX is 4096). Appending to
 * this table is compatible; reordering is not (codes live in cache entries only, which
 * do not outlive the process, so that would merely be a rebuild). */
#define WELL_KNOWN_CODE 0x8000u
static const str_view well_known[] = {
#define WK(s)                                                                                                          \
    {                                                                                                                  \
        s, sizeof(s) - 1                                                                                               \
    }
    WK("system:serviceaccounts"),
    WK("system:authenticated"),
    WK("authentication.kubernetes.io/pod-name"),
    WK("authentication.kubernetes.io/pod-uid"),
    WK("authentication.kubernetes.io/node-name"),
    WK("authentication.kubernetes.io/node-uid"),
    WK("authentication.kubernetes.io/credential-id"),
#undef WK
};
#define N_WELL_KNOWN (sizeof(well_known) / sizeof(well_known[0]))

static int well_known_index(const char *s, size_t len)
{
    for (size_t i = 0; i < N_WELL_KNOWN; i++)
        if (well_known[i].len == len && memcmp(well_known[i].ptr, s, len) == 0) return (int)i;
    return -1;
}

static void put_u16(unsigned char *p, size_t v)
{
    p[0] = (unsigned char)(v & 0xff);
    p[1] = (unsigned char)(v >> 8);
}

static size_t get_u16(const unsigned char *p)
{
    return (size_t)p[0] | ((size_t)p[1] << 8);
}

void identity_builder_init(identity_builder *b, unsigned char *buf, size_t cap)
{
    b->buf = buf;
    b->cap = cap;
    b->len = 0;
    b->failed = false;
}

void identity_builder_count(identity_builder *b, size_t n)
{
    if (b->failed || n > IDENTITY_LIST_MAX || b->cap - b->len < 2) {
        b->failed = true;
        return;
    }
    put_u16(b->buf + b->len, n);
    b->len += 2;
}

void identity_builder_string(identity_builder *b, const char *s, size_t len)
{
    if (b->failed || len > IDENTITY_STRING_MAX) {
        b->failed = true;
        return;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            b->failed = true;
            return;
        }
    }
    /* Room is checked for what is written: a well-known string takes its code only. */
    int code = well_known_index(s, len);
    size_t need = code >= 0 ? 2 : 2 + len;
    if (b->cap - b->len < need) {
        b->failed = true;
        return;
    }
    if (code >= 0) {
        put_u16(b->buf + b->len, WELL_KNOWN_CODE | (size_t)code);
        b->len += 2;
        return;
    }
    put_u16(b->buf + b->len, len);
    memcpy(b->buf + b->len + 2, s, len);
    b->len += 2 + len;
}

/* Bounds-checked readers for validation. */
typedef struct reader {
    const unsigned char *pos, *end;
    bool failed;
} reader;

static size_t reader_u16(reader *r)
{
    if (r->failed || r->end - r->pos < 2) {
        r->failed = true;
        return 0;
    }
    size_t v = get_u16(r->pos);
    r->pos += 2;
    return v;
}

static void reader_string(reader *r, str_view *out)
{
    size_t len = reader_u16(r);
    if (!r->failed && (len & WELL_KNOWN_CODE)) {
        size_t code = len & ~(size_t)WELL_KNOWN_CODE;
        if (code >= N_WELL_KNOWN) {
            r->failed = true;
            return;
        }
        if (out) *out = well_known[code];
        return;
    }
    if (r->failed || (size_t)(r->end - r->pos) < len) {
        r->failed = true;
        return;
    }
    if (out) {
        out->ptr = (const char *)r->pos;
        out->len = len;
    }
    r->pos += len;
}

int identity_view_parse(const void *packed, size_t len, identity_view *view)
{
    reader r = {packed, (const unsigned char *)packed + len, false};
    memset(view, 0, sizeof(*view));
    reader_string(&r, &view->username);
    reader_string(&r, &view->uid);
    view->n_groups = reader_u16(&r);
    view->groups = r.pos;
    for (size_t i = 0; i < view->n_groups && !r.failed; i++) reader_string(&r, NULL);
    view->n_extra = reader_u16(&r);
    view->extra = r.pos;
    for (size_t i = 0; i < view->n_extra && !r.failed; i++) {
        reader_string(&r, NULL);
        size_t n_values = reader_u16(&r);
        for (size_t v = 0; v < n_values && !r.failed; v++) reader_string(&r, NULL);
    }
    return r.failed || r.pos != r.end ? -1 : 0;
}

void identity_read_string(const unsigned char **pos, str_view *out)
{
    size_t len = get_u16(*pos);
    if (len & WELL_KNOWN_CODE) { /* validated by identity_view_parse */
        *out = well_known[len & ~(size_t)WELL_KNOWN_CODE];
        *pos += 2;
        return;
    }
    out->len = len;
    out->ptr = (const char *)*pos + 2;
    *pos += 2 + len;
}

size_t identity_read_count(const unsigned char **pos)
{
    size_t n = get_u16(*pos);
    *pos += 2;
    return n;
}

bool identity_serviceaccount(str_view username, str_view *namespace_out, str_view *name_out)
{
    static const char prefix[] = "system:serviceaccount:";
    const size_t plen = sizeof(prefix) - 1;
    if (username.len <= plen || memcmp(username.ptr, prefix, plen) != 0) return false;
    const char *ns = username.ptr + plen;
    size_t rest = username.len - plen;
    const char *colon = memchr(ns, ':', rest);
    if (!colon || colon == ns || (size_t)(colon - ns) + 1 >= rest) return false;
    const char *name = colon + 1;
    size_t name_len = rest - (size_t)(name - ns);
    if (memchr(name, ':', name_len)) return false;
    namespace_out->ptr = ns;
    namespace_out->len = (size_t)(colon - ns);
    name_out->ptr = name;
    name_out->len = name_len;
    return true;
}

long identity_join_groups(const identity_view *view, char *out, size_t cap)
{
    size_t len = 0;
    const unsigned char *pos = view->groups;
    for (size_t i = 0; i < view->n_groups; i++) {
        str_view g;
        identity_read_string(&pos, &g);
        /* '|' inside a name would read as two groups ("dev|system:masters"), an empty
         * name as none: such an identity has no unambiguous form in this header. */
        if (g.len == 0 || memchr(g.ptr, '|', g.len)) return -2;
        if (len + g.len + (i ? 1 : 0) + 1 > cap) return -1;
        if (i) out[len++] = '|';
        memcpy(out + len, g.ptr, g.len);
        len += g.len;
    }
    if (cap == 0) return -1;
    out[len] = '\0';
    return (long)len;
}

int identity_digest(const void *packed, size_t len, unsigned char out[IDENTITY_DIGEST_BYTES])
{
    unsigned int n = 0;
    return EVP_Digest(packed, len, out, &n, EVP_sha256(), NULL) == 1 && n == IDENTITY_DIGEST_BYTES ? 0 : -1;
}
