/* Unit tests: the CPU budget behind the default --workers (core/cpu_budget.h), over sample
 * cgroup v2 (cpu.max, cpuset.cpus.effective) and cgroup v1 (cpu.cfs_quota_us,
 * cpu.cfs_period_us, cpuset.cpus) files laid out in a fake root directory as a kubelet
 * or Docker lays them out. */
#include "cpu_budget.h"
#include "unit.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_parse_cpu_max(void)
{
    double cpus = 0;
    CHECK_EQ_INT(cpu_budget_parse_cpu_max("max 100000\n", &cpus), 0);
    CHECK_EQ_INT(cpu_budget_parse_cpu_max("150000 100000\n", &cpus), 1);
    CHECK(cpus > 1.4999 && cpus < 1.5001);
    CHECK_EQ_INT(cpu_budget_parse_cpu_max("50000 100000", &cpus), 1);
    CHECK(cpus > 0.4999 && cpus < 0.5001);
    const char *bad[] = {"",          "\n",    "max",        "150000",         "150000 0",       "0 100000",
                         "-1 100000", "max x", "1.5 100000", "150000  100000", "150000 100000 7"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = cpu_budget_parse_cpu_max(bad[i], &cpus);
        CHECK_EQ_INT(rc, -1);
        if (rc != -1) fprintf(stderr, "    accepted \"%s\"\n", bad[i]);
    }
}

static void test_parse_cfs(void)
{
    double cpus = 0;
    CHECK_EQ_INT(cpu_budget_parse_cfs("-1\n", "100000\n", &cpus), 0);
    CHECK_EQ_INT(cpu_budget_parse_cfs("250000\n", "100000\n", &cpus), 1);
    CHECK(cpus > 2.4999 && cpus < 2.5001);
    CHECK_EQ_INT(cpu_budget_parse_cfs("250000", "0", &cpus), -1);
    CHECK_EQ_INT(cpu_budget_parse_cfs("", "100000", &cpus), -1);
    CHECK_EQ_INT(cpu_budget_parse_cfs("-2", "100000", &cpus), -1);
    CHECK_EQ_INT(cpu_budget_parse_cfs("0", "100000", &cpus), -1);
    CHECK_EQ_INT(cpu_budget_parse_cfs("1000", "x", &cpus), -1);
}

static void test_parse_cpu_list(void)
{
    CHECK_EQ_INT(cpu_budget_parse_cpu_list("0-3\n"), 4);
    CHECK_EQ_INT(cpu_budget_parse_cpu_list("0"), 1);
    CHECK_EQ_INT(cpu_budget_parse_cpu_list("0-3,8,10-11\n"), 7);
    CHECK_EQ_INT(cpu_budget_parse_cpu_list("\n"), 0);
    CHECK_EQ_INT(cpu_budget_parse_cpu_list("3-1"), -1);
    CHECK_EQ_INT(cpu_budget_parse_cpu_list("0-3,"), -1);
    CHECK_EQ_INT(cpu_budget_parse_cpu_list(",1"), -1);
    CHECK_EQ_INT(cpu_budget_parse_cpu_list("a-b"), -1);
    CHECK_EQ_INT(cpu_budget_parse_cpu_list("0-99999999"), -1);
}

/* ---- fake roots ---- */

typedef struct fake_root {
    char dir[64];
} fake_root;

/* Writes root/path, creating the directories on the way. */
static void put(const fake_root *r, const char *path, const char *content)
{
    char full[512];
    snprintf(full, sizeof(full), "%s%s", r->dir, path);
    for (char *p = full + strlen(r->dir) + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(full, 0700) != 0 && errno != EEXIST) fprintf(stderr, "mkdir %s: %s\n", full, strerror(errno));
        *p = '/';
    }
    FILE *f = fopen(full, "w");
    REQUIRE(f != NULL);
    fputs(content, f);
    fclose(f);
}

static void fake_open(fake_root *r)
{
    snprintf(r->dir, sizeof(r->dir), "/tmp/tokengate-cpu-XXXXXX");
    REQUIRE(mkdtemp(r->dir) != NULL);
}

static void fake_close(fake_root *r)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
    CHECK_EQ_INT(system(cmd), 0);
}

#define V2_MOUNTINFO                                                                                                   \
    "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"                                                                     \
    "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"

/* A kubelet pod on cgroup v2: the container has no quota, the pod has 1.5 CPUs. The
 * tightest quota on the way up binds; 1.5 rounds up to 2. */
static void test_v2_pod_quota(void)
{
    fake_root r;
    fake_open(&r);
    put(&r, "/proc/self/cgroup", "0::/kubepods.slice/pod1/ctr\n");
    put(&r, "/proc/self/mountinfo", V2_MOUNTINFO);
    put(&r, "/sys/fs/cgroup/kubepods.slice/pod1/ctr/cpu.max", "max 100000\n");
    put(&r, "/sys/fs/cgroup/kubepods.slice/pod1/cpu.max", "150000 100000\n");
    put(&r, "/sys/fs/cgroup/kubepods.slice/cpu.max", "max 100000\n");
    put(&r, "/sys/fs/cgroup/cpu.max", "garbage\n"); /* ignored, not fatal */
    cpu_budget b;
    cpu_budget_detect_at(&b, r.dir, 64, 64);
    CHECK_EQ_INT(b.cpus, 2);
    CHECK(b.quota_cpus > 1.49 && b.quota_cpus < 1.51);
    CHECK(strstr(b.why, "cgroup v2 cpu.max \"150000 100000\" at /sys/fs/cgroup/kubepods.slice/pod1") != NULL);
    CHECK(strstr(b.why, "rounded up to 2 (of 64 CPUs in the affinity mask)") != NULL);
    /* A parent tighter than the child wins, whatever the order. */
    put(&r, "/sys/fs/cgroup/kubepods.slice/pod1/ctr/cpu.max", "50000 100000\n");
    cpu_budget_detect_at(&b, r.dir, 64, 64);
    CHECK_EQ_INT(b.cpus, 1);
    CHECK(strstr(b.why, "/sys/fs/cgroup/kubepods.slice/pod1/ctr") != NULL);
    /* The affinity mask binds when it is the smaller. */
    put(&r, "/sys/fs/cgroup/kubepods.slice/pod1/ctr/cpu.max", "400000 100000\n");
    cpu_budget_detect_at(&b, r.dir, 64, 1);
    CHECK_EQ_INT(b.cpus, 1);
    CHECK(strstr(b.why, "1 CPU in the affinity mask; the cgroup quota") != NULL);
    fake_close(&r);
}

/* Inside a cgroup namespace the process sees itself at "/": the quota is on the mount's
 * root directory. */
static void test_v2_namespaced(void)
{
    fake_root r;
    fake_open(&r);
    put(&r, "/proc/self/cgroup", "0::/\n");
    put(&r, "/proc/self/mountinfo", V2_MOUNTINFO);
    put(&r, "/sys/fs/cgroup/cpu.max", "200000 100000\n");
    cpu_budget b;
    cpu_budget_detect_at(&b, r.dir, 16, 16);
    CHECK_EQ_INT(b.cpus, 2);
    CHECK(strstr(b.why, "at /sys/fs/cgroup:") != NULL);
    /* No quota: the affinity mask. */
    put(&r, "/sys/fs/cgroup/cpu.max", "max 100000\n");
    cpu_budget_detect_at(&b, r.dir, 16, 16);
    CHECK_EQ_INT(b.cpus, 16);
    CHECK_STR(b.why, "16 CPUs in the affinity mask; no cgroup CPU quota");
    /* Unknown affinity: the cgroup's cpuset stands in for it. */
    put(&r, "/sys/fs/cgroup/cpuset.cpus.effective", "0-2,5\n");
    cpu_budget_detect_at(&b, r.dir, 16, 0);
    CHECK_EQ_INT(b.cpus, 4);
    CHECK(strstr(b.why, "4 CPUs in the cgroup's cpuset") != NULL);
    fake_close(&r);
}

/* Docker on a cgroup v1 host: cpu and cpuacct share a mount; the quota is 2.5 CPUs. A
 * hybrid host also mounts cgroup2 (without the cpu controller): v1's files count. */
static void test_v1(void)
{
    fake_root r;
    fake_open(&r);
    put(&r, "/proc/self/cgroup",
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:cpuset:/docker/abc\n0::/docker/abc\n");
    put(&r, "/proc/self/mountinfo",
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
        "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n");
    put(&r, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n");
    put(&r, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    put(&r, "/sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us", "-1\n");
    put(&r, "/sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
    put(&r, "/sys/fs/cgroup/unified/docker/abc/cpu.max", "100000 100000\n"); /* not the cpu hierarchy here */
    cpu_budget b;
    cpu_budget_detect_at(&b, r.dir, 8, 8);
    CHECK_EQ_INT(b.cpus, 3);
    CHECK(strstr(b.why, "cgroup v1 cpu.cfs_quota_us 250000 / cpu.cfs_period_us 100000 at "
                        "/sys/fs/cgroup/cpu,cpuacct/docker/abc") != NULL);
    put(&r, "/sys/fs/cgroup/cpuset/docker/abc/cpuset.cpus", "1,3\n");
    cpu_budget_detect_at(&b, r.dir, 8, 0);
    CHECK_EQ_INT(b.cpus, 2);
    CHECK(strstr(b.why, "of 2 CPUs in the cgroup's cpuset") == NULL); /* the quota (3) does not bind */
    CHECK(strstr(b.why, "2 CPUs in the cgroup's cpuset") != NULL);
    fake_close(&r);
}

/* A container that bind-mounts its own cgroup as the hierarchy's root (mountinfo root
 * field /docker/abc): the files are at the mount point itself. */
static void test_v1_mount_root(void)
{
    fake_root r;
    fake_open(&r);
    put(&r, "/proc/self/cgroup", "4:cpu,cpuacct:/docker/abc\n");
    put(&r, "/proc/self/mountinfo",
        "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n");
    put(&r, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "100000\n");
    put(&r, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    cpu_budget b;
    cpu_budget_detect_at(&b, r.dir, 4, 4);
    CHECK_EQ_INT(b.cpus, 1);
    CHECK(strstr(b.why, "1.00 CPUs, rounded up to 1 (of 4 CPUs in the affinity mask)") != NULL);
    fake_close(&r);
}

/* Nothing readable (no /proc, no cgroup): the caller's numbers, never 0. */
static void test_nothing_readable(void)
{
    cpu_budget b;
    cpu_budget_detect_at(&b, "/nonexistent/tokengate-unit", 6, 0);
    CHECK_EQ_INT(b.cpus, 6);
    CHECK_STR(b.why, "6 CPUs online; no cgroup CPU quota");
    cpu_budget_detect_at(&b, "/nonexistent/tokengate-unit", 0, 0);
    CHECK_EQ_INT(b.cpus, 1);
}

/* The live system answers something sane (at least 1, at most the online CPUs). */
static void test_live(void)
{
    cpu_budget b;
    cpu_budget_detect(&b);
    CHECK(b.cpus >= 1);
    CHECK(b.online_cpus == 0 || b.cpus <= b.online_cpus);
    CHECK(b.why[0] != '\0');
}

int main(void)
{
    RUN(test_parse_cpu_max);
    RUN(test_parse_cfs);
    RUN(test_parse_cpu_list);
    RUN(test_v2_pod_quota);
    RUN(test_v2_namespaced);
    RUN(test_v1);
    RUN(test_v1_mount_root);
    RUN(test_nothing_readable);
    RUN(test_live);
    return UNIT_EXIT();
}
