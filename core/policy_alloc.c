/* policy_alloc.c owns the allocator of policy Lua states: the memory cap
 * (--policy-max-memory-bytes) and the per-state free lists of small blocks. */
#include "policy_internal.h"

#include <stdlib.h>
#include <string.h>

/* The allocator of a policy state: every byte is counted against mem_max, so a policy
 * that builds a huge string or table gets "not enough memory" (a policy error) instead
 * of growing the gateway. Blocks of up to POOL_MAX_BLOCK bytes are rounded up to a
 * multiple of POOL_STEP and recycled through per-class free lists; the bytes waiting on
 * those lists stay counted in mem_used (what the state holds is what is capped), are
 * released to malloc when a new block would not fit under the cap, and are bounded by
 * POOL_RETAIN_MAX. Lua passes the block's size back on free and resize (osize), which
 * is how a block's class is known without a header. */
static size_t pool_class(size_t size)
{
    return (size + POOL_STEP - 1) / POOL_STEP - 1;
}

void pool_drain(policy_state *ps)
{
    for (size_t c = 0; c < POOL_CLASSES; c++) {
        while (ps->pool[c]) {
            void *next = *(void **)ps->pool[c];
            free(ps->pool[c]);
            ps->pool[c] = next;
        }
    }
    ps->mem_used -= ps->pool_bytes;
    ps->pool_bytes = 0;
}

/* Counts `charge` more bytes against the cap, first giving the free lists back to malloc
 * if that is what it takes. */
static bool charge_new(policy_state *ps, size_t charge)
{
    if (ps->mem_used + charge <= ps->mem_max && ps->mem_used + charge >= ps->mem_used) return true;
    pool_drain(ps);
    return ps->mem_used + charge <= ps->mem_max && ps->mem_used + charge >= ps->mem_used;
}

/* force: count the block even past the cap (a shrinking resize must not fail). */
static void *block_new(policy_state *ps, size_t size, bool force)
{
    if (size <= POOL_MAX_BLOCK) {
        size_t c = pool_class(size), cs = (c + 1) * POOL_STEP;
        void *p = ps->pool[c];
        if (p) {
            ps->pool[c] = *(void **)p;
            ps->pool_bytes -= cs; /* stays in mem_used: now live instead of free */
            return p;
        }
        if (!force && !charge_new(ps, cs)) return NULL;
        p = malloc(cs);
        if (p) ps->mem_used += cs;
        return p;
    }
    if (!force && !charge_new(ps, size)) return NULL;
    void *p = malloc(size);
    if (p) ps->mem_used += size;
    return p;
}

static void block_free(policy_state *ps, void *ptr, size_t size)
{
    if (size <= POOL_MAX_BLOCK) {
        size_t c = pool_class(size), cs = (c + 1) * POOL_STEP;
        if (ps->pool_bytes + cs <= POOL_RETAIN_MAX) {
            *(void **)ptr = ps->pool[c];
            ps->pool[c] = ptr;
            ps->pool_bytes += cs;
            return;
        }
        free(ptr);
        ps->mem_used -= cs;
        return;
    }
    free(ptr);
    ps->mem_used -= size;
}

void *limited_alloc(void *ud, void *ptr, size_t old_size, size_t new_size)
{
    policy_state *ps = ud;
    if (!ptr) return new_size ? block_new(ps, new_size, false) : NULL;
    if (new_size == 0) {
        block_free(ps, ptr, old_size);
        return NULL;
    }
    bool old_pooled = old_size <= POOL_MAX_BLOCK, new_pooled = new_size <= POOL_MAX_BLOCK;
    if (old_pooled && new_pooled && pool_class(old_size) == pool_class(new_size)) return ptr;
    if (!old_pooled && !new_pooled) {
        if (new_size > old_size && !charge_new(ps, new_size - old_size)) return NULL;
        void *p = realloc(ptr, new_size);
        if (p) ps->mem_used = ps->mem_used - old_size + new_size;
        return p;
    }
    /* Between a pooled class and malloc, or between two classes: move the block. A
     * shrink never fails for want of room (as with realloc before): it frees more than
     * it takes, a moment later. */
    void *p = block_new(ps, new_size, new_size < old_size);
    if (!p) return NULL;
    memcpy(p, ptr, old_size < new_size ? old_size : new_size);
    block_free(ps, ptr, old_size);
    return p;
}
