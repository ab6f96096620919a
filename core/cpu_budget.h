/* How many CPUs this process may really use: the scheduler affinity mask (taskset, a
 * cpuset, Kubernetes' static CPU manager) and the CPU quota of its cgroup (a container's
 * `resources.limits.cpu`: cgroup v2 cpu.max, cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us).
 * The default --workers is this budget, so a pod limited to one CPU on a 64-core node runs
 * one event loop, not 64 that the kernel throttles.
 *
 * The parsers take file contents and are pure; cpu_budget_detect reads the files under a
 * root directory ("" on a live system, a fake tree in the unit tests). */
#ifndef TOKENGATE_CPU_BUDGET_H
#define TOKENGATE_CPU_BUDGET_H

#include <stdbool.h>
#include <stddef.h>

#define CPU_BUDGET_WHY_MAX 1536 /* room for a quota file path (1024) and its numbers */

/* cgroup v2 cpu.max: "max 100000" (no quota) or "150000 100000" (1.5 CPUs). Returns 1 with
 * *cpus set for a quota, 0 for "max", -1 when text is malformed. */
int cpu_budget_parse_cpu_max(const char *text, double *cpus);

/* cgroup v1: cpu.cfs_quota_us ("-1": no quota) and cpu.cfs_period_us. Same results. */
int cpu_budget_parse_cfs(const char *quota_text, const char *period_text, double *cpus);

/* A CPU list as in cpuset.cpus(.effective) or /sys/devices/system/cpu/online: "0-3,8,10-11".
 * Returns how many CPUs it names (0 for an empty list), or -1 when malformed. */
long cpu_budget_parse_cpu_list(const char *text);

typedef struct cpu_budget {
    size_t online_cpus;   /* sysconf(_SC_NPROCESSORS_ONLN), the old default */
    size_t affinity_cpus; /* CPUs in the sched affinity mask; 0: unknown */
    double quota_cpus;    /* the tightest cgroup CPU quota on the way to the root; 0: none */
    size_t cpus;          /* the budget: the smaller of the two, quota rounded up, at least 1 */
    /* What decided it, for --check and the start-up log, e.g. "cgroup v2 cpu.max 150000
     * 100000 at /sys/fs/cgroup/kubepods/pod1 (1.5 CPUs, rounded up)". */
    char why[CPU_BUDGET_WHY_MAX];
} cpu_budget;

/* Fills b from the files under root ("" for the live system: /proc/self/cgroup,
 * /proc/self/mountinfo, the cgroup files they lead to). affinity_cpus and online_cpus are
 * given by the caller (0: unknown). Never fails: what cannot be read does not limit. */
void cpu_budget_detect_at(cpu_budget *b, const char *root, size_t online_cpus, size_t affinity_cpus);

/* cpu_budget_detect_at on the live system, with sched_getaffinity and sysconf. */
void cpu_budget_detect(cpu_budget *b);

#endif
