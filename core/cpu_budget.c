/* cpu_budget.c owns finding how many CPUs the process may use (affinity, cgroup quota). */
#include "cpu_budget.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CPU_BUDGET_PATH_MAX 1024
#define CPU_BUDGET_FILE_MAX 65536 /* mountinfo of a busy node is a few KiB; bounded anyway */

/* Parses a non-negative decimal integer spanning [s, end) exactly. */
static int parse_u64(const char *s, const char *end, unsigned long long *out)
{
    if (s == end) return -1;
    unsigned long long v = 0;
    for (const char *p = s; p < end; p++) {
        if (*p < '0' || *p > '9') return -1;
        if (v > (~0ULL - 9) / 10) return -1;
        v = v * 10 + (unsigned long long)(*p - '0');
    }
    *out = v;
    return 0;
}

/* The end of text without trailing whitespace (the files end with '\n'). */
static const char *trimmed_end(const char *text)
{
    const char *end = text + strlen(text);
    while (end > text && (end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t')) end--;
    return end;
}

int cpu_budget_parse_cpu_max(const char *text, double *cpus)
{
    const char *end = trimmed_end(text);
    const char *space = memchr(text, ' ', (size_t)(end - text));
    if (!space) return -1;
    unsigned long long period = 0, quota = 0;
    if (parse_u64(space + 1, end, &period) != 0 || period == 0) return -1;
    if ((size_t)(space - text) == 3 && memcmp(text, "max", 3) == 0) return 0;
    if (parse_u64(text, space, &quota) != 0 || quota == 0) return -1;
    *cpus = (double)quota / (double)period;
    return 1;
}

int cpu_budget_parse_cfs(const char *quota_text, const char *period_text, double *cpus)
{
    const char *quota_end = trimmed_end(quota_text);
    if (quota_end - quota_text == 2 && memcmp(quota_text, "-1", 2) == 0) return 0;
    unsigned long long quota = 0, period = 0;
    if (parse_u64(quota_text, quota_end, &quota) != 0 || quota == 0) return -1;
    if (parse_u64(period_text, trimmed_end(period_text), &period) != 0 || period == 0) return -1;
    *cpus = (double)quota / (double)period;
    return 1;
}

long cpu_budget_parse_cpu_list(const char *text)
{
    const char *end = trimmed_end(text);
    long count = 0;
    const char *p = text;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        const char *dash = memchr(p, '-', (size_t)(item_end - p));
        unsigned long long first = 0, last = 0;
        if (dash) {
            if (parse_u64(p, dash, &first) != 0 || parse_u64(dash + 1, item_end, &last) != 0 || last < first) return -1;
        } else {
            if (parse_u64(p, item_end, &first) != 0) return -1;
            last = first;
        }
        if (last - first >= 1u << 20) return -1; /* no machine has a million CPUs */
        count += (long)(last - first + 1);
        if (count >= 1L << 20) return -1;
        if (!comma) break;
        p = comma + 1;
        if (p == end) return -1; /* "0-3," */
    }
    return count;
}

/* Reads root+path into buf (NUL-terminated, at most cap-1 bytes). Returns 0 or -1. */
static int read_text(const char *root, const char *path, char *buf, size_t cap)
{
    char full[CPU_BUDGET_PATH_MAX];
    if ((size_t)snprintf(full, sizeof(full), "%s%s", root, path) >= sizeof(full)) return -1;
    FILE *f = fopen(full, "re");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    int failed = ferror(f);
    fclose(f);
    if (failed) return -1;
    buf[n] = '\0';
    return 0;
}

/* True when the comma-separated list has the item (controllers "cpu,cpuacct", options). */
static int list_has(const char *list, size_t len, const char *item)
{
    size_t item_len = strlen(item);
    const char *p = list, *end = list + len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        if ((size_t)(item_end - p) == item_len && memcmp(p, item, item_len) == 0) return 1;
        p = comma ? comma + 1 : end;
    }
    return 0;
}

/* From /proc/self/cgroup: the process's cgroup path in the hierarchy that has controller
 * (cgroup v1), or in the unified hierarchy ("0::/path") when controller is NULL. */
static int own_cgroup_path(const char *proc_cgroup, const char *controller, char *path, size_t cap)
{
    for (const char *line = proc_cgroup; *line;) {
        const char *nl = strchr(line, '\n');
        const char *line_end = nl ? nl : line + strlen(line);
        const char *c1 = memchr(line, ':', (size_t)(line_end - line));
        const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(line_end - c1 - 1)) : NULL;
        if (c2) {
            int match = controller ? list_has(c1 + 1, (size_t)(c2 - c1 - 1), controller)
                                   : (c1 - line == 1 && line[0] == '0' && c2 == c1 + 1);
            size_t len = (size_t)(line_end - c2 - 1);
            if (match && len > 0 && len < cap) {
                memcpy(path, c2 + 1, len);
                path[len] = '\0';
                return 0;
            }
        }
        if (!nl) break;
        line = nl + 1;
    }
    return -1;
}

/* From /proc/self/mountinfo: where the hierarchy is mounted (cgroup2 when controller is
 * NULL, else the cgroup v1 mount whose options name controller) and which cgroup is the
 * mount's root (not "/" inside some containers). */
static int cgroup_mount(const char *mountinfo, const char *controller, char *mount_point, char *mount_root, size_t cap)
{
    for (const char *line = mountinfo; *line;) {
        const char *nl = strchr(line, '\n');
        const char *line_end = nl ? nl : line + strlen(line);
        /* id parent major:minor root mount-point options [optional...] - fstype source super-options */
        const char *fields[6];
        size_t lens[6], n = 0;
        const char *p = line;
        while (n < 6 && p < line_end) {
            const char *sp = memchr(p, ' ', (size_t)(line_end - p));
            const char *field_end = sp ? sp : line_end;
            fields[n] = p;
            lens[n] = (size_t)(field_end - p);
            n++;
            p = sp ? sp + 1 : line_end;
        }
        const char *sep = NULL;
        for (const char *q = line; q + 3 <= line_end; q++)
            if (q[0] == ' ' && q[1] == '-' && q[2] == ' ') {
                sep = q + 3;
                break;
            }
        if (n == 6 && sep) {
            const char *fstype_end = memchr(sep, ' ', (size_t)(line_end - sep));
            size_t fstype_len = fstype_end ? (size_t)(fstype_end - sep) : 0;
            const char *super = NULL;
            size_t super_len = 0;
            if (fstype_end) {
                const char *source_end = memchr(fstype_end + 1, ' ', (size_t)(line_end - fstype_end - 1));
                if (source_end) {
                    super = source_end + 1;
                    super_len = (size_t)(line_end - super);
                }
            }
            int match = controller ? (fstype_len == 6 && memcmp(sep, "cgroup", 6) == 0 && super &&
                                      list_has(super, super_len, controller))
                                   : (fstype_len == 7 && memcmp(sep, "cgroup2", 7) == 0);
            if (match && lens[3] < cap && lens[4] < cap) {
                memcpy(mount_root, fields[3], lens[3]);
                mount_root[lens[3]] = '\0';
                memcpy(mount_point, fields[4], lens[4]);
                mount_point[lens[4]] = '\0';
                return 0;
            }
        }
        if (!nl) break;
        line = nl + 1;
    }
    return -1;
}

/* The directory of the process's cgroup for controller (NULL: cgroup v2), without root.
 * A cgroup path outside the mount's root (a namespaced view) means the mount point itself. */
static int cgroup_dir(const char *proc_cgroup, const char *mountinfo, const char *controller, char *dir, size_t cap)
{
    char own[CPU_BUDGET_PATH_MAX], mount_point[CPU_BUDGET_PATH_MAX], mount_root[CPU_BUDGET_PATH_MAX];
    if (own_cgroup_path(proc_cgroup, controller, own, sizeof(own)) != 0) return -1;
    if (cgroup_mount(mountinfo, controller, mount_point, mount_root, sizeof(mount_point)) != 0) return -1;
    const char *rel = own;
    size_t root_len = strlen(mount_root);
    if (strcmp(mount_root, "/") != 0) {
        if (strncmp(own, mount_root, root_len) == 0 && (own[root_len] == '/' || own[root_len] == '\0'))
            rel = own + root_len;
        else
            rel = "";
    }
    if (strcmp(rel, "/") == 0) rel = "";
    if (strstr(rel, "/../") || strstr(rel, "/./")) return -1; /* never leave the mount */
    return (size_t)snprintf(dir, cap, "%s%s", mount_point, rel) < cap ? 0 : -1;
}

/* Walks from dir up to the mount point (stop), keeping the tightest quota: a parent's
 * limit binds its children too. kind: 2 = cpu.max, 1 = cfs files. */
static void tightest_quota(const char *root, char *dir, size_t stop_len, int kind, double *best, char *best_text,
                           size_t text_cap, char *best_dir, size_t dir_cap)
{
    for (;;) {
        char path[CPU_BUDGET_PATH_MAX], period_path[CPU_BUDGET_PATH_MAX], a[128], b[128], candidate[192];
        double cpus = 0;
        int rc = -1;
        if (kind == 2) {
            if ((size_t)snprintf(path, sizeof(path), "%s/cpu.max", dir) < sizeof(path) &&
                read_text(root, path, a, sizeof(a)) == 0) {
                rc = cpu_budget_parse_cpu_max(a, &cpus);
                snprintf(candidate, sizeof(candidate), "cgroup v2 cpu.max \"%.*s\"", (int)(trimmed_end(a) - a), a);
            }
        } else if ((size_t)snprintf(path, sizeof(path), "%s/cpu.cfs_quota_us", dir) < sizeof(path) &&
                   (size_t)snprintf(period_path, sizeof(period_path), "%s/cpu.cfs_period_us", dir) <
                       sizeof(period_path) &&
                   read_text(root, path, a, sizeof(a)) == 0 && read_text(root, period_path, b, sizeof(b)) == 0) {
            rc = cpu_budget_parse_cfs(a, b, &cpus);
            snprintf(candidate, sizeof(candidate), "cgroup v1 cpu.cfs_quota_us %.*s / cpu.cfs_period_us %.*s",
                     (int)(trimmed_end(a) - a), a, (int)(trimmed_end(b) - b), b);
        }
        if (rc == 1 && (*best == 0 || cpus < *best)) {
            *best = cpus;
            snprintf(best_text, text_cap, "%s", candidate);
            snprintf(best_dir, dir_cap, "%s", dir[0] ? dir : "/");
        }
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < stop_len || strlen(dir) <= stop_len) break;
        *slash = '\0';
    }
}

/* CPUs in the process's cgroup cpuset (v1 cpuset.effective_cpus or cpuset.cpus, v2
 * cpuset.cpus.effective); 0 when unknown. */
static size_t cgroup_cpuset_cpus(const char *root, const char *proc_cgroup, const char *mountinfo)
{
    static const struct {
        const char *controller, *file;
    } places[] = {{"cpuset", "cpuset.effective_cpus"}, {"cpuset", "cpuset.cpus"}, {NULL, "cpuset.cpus.effective"}};
    for (size_t i = 0; i < sizeof(places) / sizeof(places[0]); i++) {
        char dir[CPU_BUDGET_PATH_MAX], path[CPU_BUDGET_PATH_MAX], text[4096];
        if (cgroup_dir(proc_cgroup, mountinfo, places[i].controller, dir, sizeof(dir)) != 0) continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, places[i].file) >= sizeof(path)) continue;
        if (read_text(root, path, text, sizeof(text)) != 0) continue;
        long n = cpu_budget_parse_cpu_list(text);
        if (n > 0) return (size_t)n;
    }
    return 0;
}

void cpu_budget_detect_at(cpu_budget *b, const char *root, size_t online_cpus, size_t affinity_cpus)
{
    memset(b, 0, sizeof(*b));
    b->online_cpus = online_cpus;
    b->affinity_cpus = affinity_cpus;
    char *proc_cgroup = malloc(CPU_BUDGET_FILE_MAX);
    char *mountinfo = malloc(CPU_BUDGET_FILE_MAX);
    char quota_text[192] = "", quota_dir[CPU_BUDGET_PATH_MAX] = "";
    if (proc_cgroup && mountinfo && read_text(root, "/proc/self/cgroup", proc_cgroup, CPU_BUDGET_FILE_MAX) == 0 &&
        read_text(root, "/proc/self/mountinfo", mountinfo, CPU_BUDGET_FILE_MAX) == 0) {
        char dir[CPU_BUDGET_PATH_MAX], mount_point[CPU_BUDGET_PATH_MAX], mount_root[CPU_BUDGET_PATH_MAX];
        /* cgroup v1's cpu controller if mounted (a hybrid host has both; v1 holds the
         * controller then), else the unified hierarchy. */
        if (cgroup_dir(proc_cgroup, mountinfo, "cpu", dir, sizeof(dir)) == 0 &&
            cgroup_mount(mountinfo, "cpu", mount_point, mount_root, sizeof(mount_point)) == 0) {
            tightest_quota(root, dir, strlen(mount_point), 1, &b->quota_cpus, quota_text, sizeof(quota_text), quota_dir,
                           sizeof(quota_dir));
        } else if (cgroup_dir(proc_cgroup, mountinfo, NULL, dir, sizeof(dir)) == 0 &&
                   cgroup_mount(mountinfo, NULL, mount_point, mount_root, sizeof(mount_point)) == 0) {
            tightest_quota(root, dir, strlen(mount_point), 2, &b->quota_cpus, quota_text, sizeof(quota_text), quota_dir,
                           sizeof(quota_dir));
        }
    }
    /* The affinity mask already reflects the cpuset; only when it is unknown does the
     * cgroup's cpuset stand in for it. */
    size_t cpuset_cpus = 0;
    if (!affinity_cpus && proc_cgroup && mountinfo) cpuset_cpus = cgroup_cpuset_cpus(root, proc_cgroup, mountinfo);
    free(proc_cgroup);
    free(mountinfo);

    size_t cpus = affinity_cpus ? affinity_cpus : cpuset_cpus ? cpuset_cpus : online_cpus;
    const char *base = affinity_cpus ? "in the affinity mask" : cpuset_cpus ? "in the cgroup's cpuset" : "online";
    if (cpus == 0) cpus = 1;
    /* A quota of 1.5 CPUs lets two threads run half the time each: round up, at least 1. */
    size_t quota_whole = b->quota_cpus > 0 ? (size_t)ceil(b->quota_cpus - 1e-9) : 0;
    if (quota_whole == 0 && b->quota_cpus > 0) quota_whole = 1;
    const char *cpu_word = cpus == 1 ? "CPU" : "CPUs";
    if (quota_whole && quota_whole < cpus) {
        b->cpus = quota_whole;
        snprintf(b->why, sizeof(b->why), "%s at %s: %.2f CPUs, rounded up to %zu (of %zu %s %s)", quota_text, quota_dir,
                 b->quota_cpus, quota_whole, cpus, cpu_word, base);
    } else if (quota_whole) {
        b->cpus = cpus;
        snprintf(b->why, sizeof(b->why), "%zu %s %s; the cgroup quota (%s at %s) allows %.2f", cpus, cpu_word, base,
                 quota_text, quota_dir, b->quota_cpus);
    } else {
        b->cpus = cpus;
        snprintf(b->why, sizeof(b->why), "%zu %s %s; no cgroup CPU quota", cpus, cpu_word, base);
    }
}

void cpu_budget_detect(cpu_budget *b)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    size_t affinity = 0;
    /* Up to 4096 CPUs; on a larger machine the mask is unknown and online CPUs count. */
    cpu_set_t *set = CPU_ALLOC(4096);
    if (set) {
        size_t size = CPU_ALLOC_SIZE(4096);
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) affinity = (size_t)CPU_COUNT_S(size, set);
        CPU_FREE(set);
    }
    cpu_budget_detect_at(b, "", online > 0 ? (size_t)online : 0, affinity);
}
