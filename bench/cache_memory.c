/*
 * cache-memory: what one cached TokenReview verdict costs in memory (issue 6, "memory").
 *
 *   cache-memory [--shape typical|minimal|pod-1.26] N...
 *
 * For each N, in a child process of its own (so one measurement's freed memory cannot
 * flatter the next): create a token_cache bounded at N entries (core/token_cache.h, the
 * gateway's own cache and allocation pattern: one malloc per entry, header + packed
 * identity), then insert N positive verdicts under distinct keys (core/cache_key.h,
 * HMAC-SHA256 of "bench-token-I" under a random secret, as the gateway keys tokens), each
 * the packed identity (core/identity.h) of a distinct ServiceAccount:
 *
 *   typical   username system:serviceaccount:NS:NAME, uid, groups system:serviceaccounts,
 *             system:serviceaccounts:NS, system:authenticated, and the extra keys of a
 *             pod-bound token from a recent kube-apiserver: authentication.kubernetes.io/
 *             pod-name, pod-uid, node-name, node-uid, credential-id
 *   pod-1.26  the same without node-name, node-uid and credential-id (what kube-apiserver
 *             1.26 sends, shared/testdata/kube-apiserver-1.26/tokenreview-pod-bound.body)
 *   minimal   username, uid and groups only (a legacy Secret-based token)
 *
 * Memory is read after malloc_trim(0), before the cache is created and after the last
 * insert: RSS from /proc/self/statm (what the goal is about) and the allocator's
 * bytes in use (mallinfo2: arena + mmap'd chunks in use), each divided by the entries the
 * cache holds at the end (token_cache_get_stats; shards fill unevenly, so a few may have
 * been evicted). The bucket arrays, sized for the bound, are included.
 *
 * Output: one line per N,
 *   cache_memory shape=S n=N entries=E evictions=X value_bytes=V rss_bytes=R
 *                rss_per_entry=B heap_per_entry=H seconds=T
 * and exit 0; 1 on a failure (allocation, HMAC, a child that died).
 */
#include "cache_key.h"
#include "identity.h"
#include "token_cache.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_N 10000000L

enum shape { SHAPE_TYPICAL, SHAPE_POD_126, SHAPE_MINIMAL };

static const char *const shape_names[] = {"typical", "pod-1.26", "minimal"};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Resident bytes of this process (second field of /proc/self/statm, in pages). */
static long rss_bytes(void)
{
    long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

/* Bytes the allocator has handed out and not had back. */
static long heap_bytes(void)
{
    struct mallinfo2 mi = mallinfo2();
    return (long)(mi.uordblks + mi.hblkhd);
}

static void add_string(identity_builder *b, const char *s)
{
    identity_builder_string(b, s, strlen(s));
}

/* A uuid-shaped string that differs for every (a, b). */
static void uuid(char out[37], unsigned long a, unsigned long b)
{
    snprintf(out, 37, "%08lx-%04lx-4%03lx-a%03lx-%012lx", a & 0xffffffffUL, b & 0xffff, (a >> 4) & 0xfff,
             (a * 31 + b) & 0xfff, (a * 2654435761UL + b) & 0xffffffffffffUL);
}

/* The packed identity of ServiceAccount number i; returns its length or 0 on failure. */
static size_t build_identity(enum shape shape, unsigned long i, unsigned char *buf, size_t cap)
{
    char ns[32], name[64], user[160], group_ns[96], id[37], s1[128], s2[37], s3[128], s4[37], s5[48];
    identity_builder b;

    snprintf(ns, sizeof(ns), "team-%lu", i % 50);
    snprintf(name, sizeof(name), "webhook-sender-%lu", i);
    snprintf(user, sizeof(user), "system:serviceaccount:%s:%s", ns, name);
    snprintf(group_ns, sizeof(group_ns), "system:serviceaccounts:%s", ns);
    uuid(id, i, 1);

    identity_builder_init(&b, buf, cap);
    add_string(&b, user);
    add_string(&b, id);
    identity_builder_count(&b, 3);
    add_string(&b, "system:serviceaccounts");
    add_string(&b, group_ns);
    add_string(&b, "system:authenticated");
    if (shape == SHAPE_MINIMAL) {
        identity_builder_count(&b, 0);
        return b.failed ? 0 : b.len;
    }
    snprintf(s1, sizeof(s1), "%s-7d9f8b6c5d-%05lu", name, i % 100000);
    uuid(s2, i, 2);
    snprintf(s3, sizeof(s3), "ip-10-0-%lu-%lu.eu-west-1.compute.internal", (i / 250) % 256, i % 250);
    uuid(s4, i % 500, 3);
    char s5_uuid[37];
    uuid(s5_uuid, i, 4);
    snprintf(s5, sizeof(s5), "JTI=%s", s5_uuid);

    identity_builder_count(&b, shape == SHAPE_TYPICAL ? 5 : 2);
    add_string(&b, "authentication.kubernetes.io/pod-name");
    identity_builder_count(&b, 1);
    add_string(&b, s1);
    add_string(&b, "authentication.kubernetes.io/pod-uid");
    identity_builder_count(&b, 1);
    add_string(&b, s2);
    if (shape == SHAPE_TYPICAL) {
        add_string(&b, "authentication.kubernetes.io/node-name");
        identity_builder_count(&b, 1);
        add_string(&b, s3);
        add_string(&b, "authentication.kubernetes.io/node-uid");
        identity_builder_count(&b, 1);
        add_string(&b, s4);
        add_string(&b, "authentication.kubernetes.io/credential-id");
        identity_builder_count(&b, 1);
        add_string(&b, s5);
    }
    return b.failed ? 0 : b.len;
}

/* One measurement; runs in its own process. Returns the exit status. */
static int measure(enum shape shape, long n)
{
    static unsigned char value[TOKEN_CACHE_VALUE_MAX];
    cache_keyer *keyer = cache_keyer_new();
    if (!keyer) {
        fprintf(stderr, "cache-memory: cache_keyer_new failed\n");
        return 1;
    }
    size_t value_len = build_identity(shape, 0, value, sizeof(value));
    identity_view view;
    if (!value_len || identity_view_parse(value, value_len, &view) != 0) {
        fprintf(stderr, "cache-memory: cannot pack the identity\n");
        return 1;
    }

    malloc_trim(0);
    long rss0 = rss_bytes(), heap0 = heap_bytes();
    double t0 = now_s();
    token_cache_options opts = {.max_entries = (size_t)n};
    token_cache *cache = token_cache_new(&opts);
    if (!cache) {
        fprintf(stderr, "cache-memory: token_cache_new(%ld) failed\n", n);
        return 1;
    }
    size_t value_total = 0;
    const int64_t now = 1000, expires = now + 3600 * 1000;
    for (long i = 0; i < n; i++) {
        char token[48];
        int token_len = snprintf(token, sizeof(token), "bench-token-%ld", i);
        cache_key key;
        if (cache_key_for_token(keyer, token, (size_t)token_len, NULL, 0, &key) != 0) {
            fprintf(stderr, "cache-memory: HMAC failed\n");
            return 1;
        }
        value_len = build_identity(shape, (unsigned long)i, value, sizeof(value));
        if (!value_len || token_cache_insert(cache, &key, false, value, value_len, expires, now) != 0) {
            fprintf(stderr, "cache-memory: insert %ld failed\n", i);
            return 1;
        }
        value_total += value_len;
    }
    double seconds = now_s() - t0;
    malloc_trim(0);
    long rss1 = rss_bytes(), heap1 = heap_bytes();
    token_cache_stats stats;
    token_cache_get_stats(cache, &stats);
    if (stats.entries == 0) {
        fprintf(stderr, "cache-memory: the cache is empty after %ld inserts\n", n);
        return 1;
    }
    printf("cache_memory shape=%s n=%ld entries=%zu evictions=%llu value_bytes=%.1f rss_bytes=%ld "
           "rss_per_entry=%.1f heap_per_entry=%.1f seconds=%.2f\n",
           shape_names[shape], n, stats.entries, (unsigned long long)stats.evictions, (double)value_total / (double)n,
           rss1 - rss0, (double)(rss1 - rss0) / (double)stats.entries, (double)(heap1 - heap0) / (double)stats.entries,
           seconds);
    fflush(stdout);
    token_cache_free(cache);
    cache_keyer_free(keyer);
    return 0;
}

static void usage(FILE *f)
{
    fputs("usage: cache-memory [--shape typical|pod-1.26|minimal] N...\n"
          "  inserts N typical ServiceAccount verdicts into a token_cache bounded at N and prints\n"
          "  the RSS and heap growth per entry, one line per N (each in a fresh process)\n",
          f);
}

int main(int argc, char **argv)
{
    enum shape shape = SHAPE_TYPICAL;
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "--shape") == 0) {
        size_t s;
        for (s = 0; s < sizeof(shape_names) / sizeof(shape_names[0]); s++)
            if (strcmp(argv[2], shape_names[s]) == 0) break;
        if (s == sizeof(shape_names) / sizeof(shape_names[0])) {
            usage(stderr);
            return 2;
        }
        shape = (enum shape)s;
        first = 3;
    }
    if (first >= argc) {
        usage(stderr);
        return 2;
    }
    for (int a = first; a < argc; a++) {
        char *end;
        long n = strtol(argv[a], &end, 10);
        if (*end || n < 1 || n > MAX_N) {
            fprintf(stderr, "cache-memory: N must be 1..%ld (got %s)\n", MAX_N, argv[a]);
            return 2;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            perror("cache-memory: fork");
            return 1;
        }
        if (pid == 0) _exit(measure(shape, n));
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "cache-memory: the measurement of N=%ld failed\n", n);
            return 1;
        }
    }
    return 0;
}
