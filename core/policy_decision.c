/* policy_decision.c owns reading what authorize returned into a policy_decision: the
 * payloads the Lua side validated are copied into the decision's arena and checked again
 * in C (an allow header must never smuggle, a SubjectAccessReview attribute never exceed
 * its limit). */
#include "policy_internal.h"

#include <string.h>
#include <strings.h>

const char *arena_copy(policy_decision *d, const char *s, size_t len)
{
    if (!s || d->arena_used + len + 1 > sizeof(d->arena)) return NULL;
    char *p = d->arena + d->arena_used;
    memcpy(p, s, len);
    p[len] = '\0';
    d->arena_used += len + 1;
    return p;
}

void decision_error(policy_decision *d, const char *message)
{
    d->kind = POLICY_ERROR;
    d->n_headers = 0;
    d->arena_used = 0;
    d->message = arena_copy(d, message, strlen(message));
    if (!d->message) d->message = "policy error";
}

bool header_value_ok(const char *v, size_t len)
{
    if (len > POLICY_LIMIT_HEADER_VALUE || strlen(v) != len) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
    }
    return true;
}

static bool header_name_ok(const char *n, size_t len)
{
    static const char *const refused[] = {"connection", "keep-alive",     "proxy-authenticate", "proxy-authorization",
                                          "te",         "trailer",        "transfer-encoding",  "upgrade",
                                          "host",       "content-length", "authorization",      NULL};
    if (len == 0 || len > POLICY_LIMIT_HEADER_NAME || strlen(n) != len) return false;
    for (size_t i = 0; i < len; i++)
        if (!strchr("!#$%&'*+-.^_`|~", n[i]) &&
            !((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'z') || (n[i] >= 'A' && n[i] <= 'Z')))
            return false;
    if (strncasecmp(n, "x-remote-", 9) == 0) return false;
    for (const char *const *r = refused; *r; r++)
        if (strcasecmp(n, *r) == 0) return false;
    return true;
}

/* Copies the allow payload ({{name, value}, ...}) at the top of the stack, re-validating
 * in C what the Lua module already validated: an allow header must never smuggle. */
void read_allow(lua_State *L, policy_decision *d)
{
    if (!lua_istable(L, -1)) {
        decision_error(d, "allow payload is not a table");
        return;
    }
    size_t n = lua_objlen(L, -1);
    if (n > POLICY_MAX_HEADERS) {
        decision_error(d, "too many allow headers");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        size_t nl = 0, vl = 0;
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nl) : NULL;
        const char *value = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
        bool ok = name && value && header_name_ok(name, nl) && header_value_ok(value, vl);
        if (ok) {
            d->header_names[i] = arena_copy(d, name, nl);
            d->header_values[i] = arena_copy(d, value, vl);
            ok = d->header_names[i] && d->header_values[i];
        }
        lua_pop(L, 3);
        if (!ok) {
            decision_error(d, "policy returned an invalid allow header");
            return;
        }
    }
    d->n_headers = n;
    d->kind = POLICY_ALLOW;
}

/* Reads the packed sar payload at the top (tokengate.unwrap_decision describes it: a tag
 * byte, "\1" resource or "\2" non-resource, then the attribute values joined with "\0"
 * in the order verb, namespace, group, version, resource, subresource, name, or path,
 * verb). Each value is checked again here: at most 256 bytes, no control characters. */
void read_sar(lua_State *L, policy_decision *d)
{
    size_t len = 0;
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (!s || len < 1 || (s[0] != 1 && s[0] != 2)) {
        decision_error(d, "sar payload is not a packed sar");
        return;
    }
    bool nonresource = s[0] == 2;
    /* One copy of the values; the "\0" separators become the strings' terminators. */
    char *values = (char *)arena_copy(d, s + 1, len - 1);
    if (!values) {
        decision_error(d, "policy returned invalid sar attributes");
        return;
    }
    const char *fields[7];
    size_t want = nonresource ? 2 : 7, n = 0;
    const char *end = values + (len - 1);
    for (const char *p = values; n < want; n++) {
        size_t flen = strlen(p);
        size_t max = nonresource && n == 0 ? POLICY_LIMIT_SAR_PATH : POLICY_LIMIT_SAR_VALUE;
        if (flen > max || !header_value_ok(p, flen)) {
            decision_error(d, "policy returned invalid sar attributes");
            return;
        }
        fields[n] = p;
        p += flen + 1;
        if (p > end + 1 || (n + 1 < want && p > end)) {
            decision_error(d, "policy returned invalid sar attributes");
            return;
        }
        if (n + 1 == want && p != end + 1) {
            decision_error(d, "policy returned invalid sar attributes");
            return;
        }
    }
    sar_attributes *a = &d->sar;
    memset(a, 0, sizeof(*a));
    a->nonresource = nonresource;
    if (nonresource) {
        a->path = fields[0];
        a->verb = fields[1];
    } else {
        a->verb = fields[0];
        a->namespace_ = fields[1];
        a->group = fields[2];
        a->version = fields[3];
        a->resource = fields[4];
        a->subresource = fields[5];
        a->name = fields[6];
    }
    if (!sar_attributes_valid(a)) {
        decision_error(d, "policy returned invalid sar attributes");
        return;
    }
    d->kind = POLICY_SAR;
}
