/* policy_source.c owns policy sources — the bytes of a policy file (or the built-in
 * default) read once, with their sha256 — and their validation in a separate, freshly
 * started process (policy_validate_isolated / policy_validate_main). */
#include "policy_internal.h"

#include "embedded.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static char *read_policy_file(const char *path, size_t *len, char *err, size_t err_cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_cap, "cannot open %s", path);
        return NULL;
    }
    char *buf = malloc(POLICY_SOURCE_MAX + 1);
    size_t n = buf ? fread(buf, 1, POLICY_SOURCE_MAX + 1, f) : 0;
    bool failed = ferror(f);
    fclose(f);
    if (!buf || failed || n > POLICY_SOURCE_MAX) {
        snprintf(err, err_cap, "cannot read %s (or larger than %d bytes)", path, POLICY_SOURCE_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void sha256_hex(const char *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int md_len = 0;
    static const char hex[] = "0123456789abcdef";
    if (!EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL)) md_len = 0;
    for (unsigned int i = 0; i < 32; i++) {
        out[2 * i] = i < md_len ? hex[md[i] >> 4] : '0';
        out[2 * i + 1] = i < md_len ? hex[md[i] & 0xf] : '0';
    }
    out[64] = '\0';
}

policy_source *policy_source_read(const char *path, char *err, size_t err_cap)
{
    char *owned = NULL;
    const char *data;
    size_t len;
    if (path) {
        owned = read_policy_file(path, &len, err, err_cap);
        if (!owned) return NULL;
        data = owned;
    } else {
        const embedded_file *f = embedded_find(DEFAULT_POLICY_PATH);
        if (!f) {
            snprintf(err, err_cap, "the built-in default policy is missing from this build");
            return NULL;
        }
        data = f->data;
        len = f->size;
    }
    policy_source *src = malloc(sizeof(*src) + len + 1);
    if (src) {
        src->path = strdup(path ? path : "(built-in default)");
        src->chunkname = strdup(path ? path : DEFAULT_POLICY_PATH);
    }
    if (!src || !src->path || !src->chunkname) {
        if (src) free(src->path), free(src->chunkname);
        free(src);
        free(owned);
        snprintf(err, err_cap, "out of memory");
        return NULL;
    }
    atomic_init(&src->refs, 1);
    src->len = len;
    memcpy(src->bytes, data, len);
    src->bytes[len] = '\0';
    sha256_hex(src->bytes, len, src->sha256_hex);
    free(owned);
    return src;
}

policy_source *policy_source_ref(policy_source *src)
{
    if (src) atomic_fetch_add_explicit(&src->refs, 1, memory_order_relaxed);
    return src;
}

void policy_source_unref(policy_source *src)
{
    if (!src || atomic_fetch_sub_explicit(&src->refs, 1, memory_order_acq_rel) != 1) return;
    free(src->path);
    free(src->chunkname);
    free(src);
}

const char *policy_source_sha256(const policy_source *src)
{
    return src->sha256_hex;
}

/* The validating process's exit status when the policy did not load (its message on
 * stdout): any other status but 0 means it died some other way (a signal; a sanitizer's
 * report). */
#define VALIDATE_REFUSED 3

int policy_validate_main(int argc, char **argv)
{
    if (argc != 7 || strcmp(argv[1], POLICY_VALIDATE_ARG) != 0) return 2;
    policy_limits limits = {.max_instructions = strtoull(argv[4], NULL, 10),
                            .max_memory_bytes = (size_t)strtoull(argv[5], NULL, 10),
                            .max_call_ms = (uint32_t)strtoul(argv[6], NULL, 10)};
    /* A backstop for whatever the limits do not stop: SIGALRM's default action ends this
     * process, and the gateway reports the signal. */
    alarm((unsigned)(3 * (limits.max_call_ms ? limits.max_call_ms : POLICY_DEFAULT_MAX_CALL_MS) / 1000 + 2));
    /* The gateway's own load logs what the policy prints while loading; this one is quiet. */
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, STDERR_FILENO);
    char err[1024] = "out of memory";
    policy_source *src = malloc(sizeof(*src) + POLICY_SOURCE_MAX + 1);
    size_t len = 0;
    while (src && len <= POLICY_SOURCE_MAX) {
        ssize_t r = read(STDIN_FILENO, src->bytes + len, POLICY_SOURCE_MAX + 1 - len);
        if (r > 0)
            len += (size_t)r;
        else if (r == 0 || errno != EINTR)
            break;
    }
    int rc = -1;
    if (src) {
        atomic_init(&src->refs, 1);
        src->len = len <= POLICY_SOURCE_MAX ? len : 0;
        src->bytes[src->len] = '\0';
        src->chunkname = strdup(argv[2]);
        src->path = strdup(argv[3]);
    }
    if (src && len <= POLICY_SOURCE_MAX && src->chunkname && src->path) {
        custom_metrics *scratch = custom_metrics_new(1000);
        policy_host *host = scratch ? policy_host_new(scratch, &limits) : NULL;
        rc = host ? policy_host_load_source(host, src, err, sizeof(err)) : -1;
        policy_host_free(host); /* freed, so that a leak checker has nothing to say */
        custom_metrics_free(scratch);
    } else if (src && len > POLICY_SOURCE_MAX) {
        snprintf(err, sizeof(err), "%s: larger than %d bytes", argv[2], POLICY_SOURCE_MAX);
    }
    policy_source_unref(src);
    if (rc != 0) {
        size_t n = strlen(err), off = 0;
        while (off < n) {
            ssize_t w = write(STDOUT_FILENO, err + off, n - off);
            if (w <= 0 && errno != EINTR) break;
            if (w > 0) off += (size_t)w;
        }
    }
    return rc == 0 ? 0 : VALIDATE_REFUSED;
}

/* Writes all of data to fd (a pipe); false if the reader went away (SIGPIPE is ignored by
 * the gateway; the caller then reports how the validating process ended). */
static bool write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t w = write(fd, data, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        data += w;
        len -= (size_t)w;
    }
    return true;
}

int policy_validate_isolated(const policy_source *src, const policy_limits *limits, char *err, size_t err_cap)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
        snprintf(err, err_cap, "cannot check the policy: pipe: %s", strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (in[i] >= 0) close(in[i]);
            if (out[i] >= 0) close(out[i]);
        }
        return -1;
    }
    char instructions[32], memory[32], call_ms[32];
    snprintf(instructions, sizeof(instructions), "%llu", (unsigned long long)limits->max_instructions);
    snprintf(memory, sizeof(memory), "%zu", limits->max_memory_bytes);
    snprintf(call_ms, sizeof(call_ms), "%u", (unsigned)limits->max_call_ms);
    char *argv[] = {"tokengate", POLICY_VALIDATE_ARG, src->chunkname, src->path, instructions, memory, call_ms, NULL};
    /* This program's path as readlink reports it (a tool such as valgrind reports its
     * client's; executing /proc/self/exe itself would start the tool's own binary). */
    char program[4096] = "/proc/self/exe";
    ssize_t n = readlink("/proc/self/exe", program, sizeof(program) - 1);
    if (n > 0) program[n] = '\0';
    if (n <= 0 || access(program, X_OK) != 0) snprintf(program, sizeof(program), "/proc/self/exe");
    posix_spawn_file_actions_t actions;
    pid_t pid = -1;
    int spawn_rc = posix_spawn_file_actions_init(&actions);
    if (spawn_rc == 0) {
        spawn_rc = posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
        if (spawn_rc == 0) spawn_rc = posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        if (spawn_rc == 0) spawn_rc = posix_spawn(&pid, program, &actions, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&actions);
    }
    close(in[0]);
    close(out[1]);
    if (spawn_rc != 0) {
        close(in[1]);
        close(out[0]);
        snprintf(err, err_cap, "cannot check the policy: cannot start the checking process: %s", strerror(spawn_rc));
        return -1;
    }
    write_all(in[1], src->bytes, src->len);
    close(in[1]);
    char msg[1024];
    size_t used = 0;
    for (;;) {
        ssize_t r = read(out[0], msg + used, sizeof(msg) - 1 - used);
        if (r > 0)
            used += (size_t)r;
        else if (r == 0 || errno != EINTR)
            break;
        if (used == sizeof(msg) - 1) break;
    }
    msg[used] = '\0';
    close(out[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == VALIDATE_REFUSED)
        snprintf(err, err_cap, "%s", used ? msg : "the policy did not load");
    else if (WIFEXITED(status))
        snprintf(err, err_cap, "%s: loading it ended the checking process (exit status %d); nothing was loaded",
                 src->chunkname, WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(err, err_cap, "%s: loading it killed the checking process (signal %d, %s); nothing was loaded",
                 src->chunkname, WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(err, err_cap, "%s: the checking process ended abnormally", src->chunkname);
    return -1;
}

bool policy_host_file_matches(const policy_host *host)
{
    if (!host->current || !host->source) return false;
    if (strcmp(host->source->path, "(built-in default)") == 0) return true;
    char err[256];
    size_t len = 0;
    char *source = read_policy_file(host->source->path, &len, err, sizeof(err));
    if (!source) return false;
    char now_hex[65];
    sha256_hex(source, len, now_hex);
    free(source);
    return strcmp(now_hex, host->source->sha256_hex) == 0;
}
