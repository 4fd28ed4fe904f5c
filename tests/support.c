/* support.c - see support.h. */
#include "support.h"
#include "internal.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static redis_proc_t private_redis;
static char private_url[64];

static void stop_private(void)
{
    redis_proc_destroy(&private_redis);
}

const char *t_redis_url(void)
{
    const char *env = getenv("MPX_TEST_REDIS_URL");
    if (env && *env)
        return env;
    if (!private_url[0]) {
        if (redis_proc_start(&private_redis, NULL) != 0)
            cr_assert_fail("cannot start a private redis-server");
        snprintf(private_url, sizeof private_url, "%s", private_redis.url);
        atexit(stop_private);
    }
    return private_url;
}

const char *t_ns(void)
{
    /* A pool of static buffers: nothing to free, nothing for LeakSanitizer. */
    static char pool[64][96];
    static unsigned counter;
    char *buf = pool[counter % 64];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(buf, sizeof pool[0], "mpxt%ld-%u-%ld", (long)getpid(), ++counter,
             (long)(ts.tv_nsec % 1000000));
    return buf;
}

redisContext *t_connect(const char *url)
{
    if (!url)
        url = t_redis_url();
    int port = 0;
    if (sscanf(url, "redis://127.0.0.1:%d", &port) != 1)
        cr_assert_fail("t_connect: unsupported url %s", url);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    cr_assert(c && !c->err, "t_connect: cannot connect to %s", url);
    redisSetTimeout(c, tv);
    return c;
}

redisReply *t_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL, "t_cmd: %s failed: %s", fmt, c->errstr);
    return r;
}

long long t_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL, "t_int: %s failed: %s", fmt, c->errstr);
    cr_assert(r->type == REDIS_REPLY_INTEGER, "t_int: %s: not an integer (type %d %s)", fmt,
              r->type, r->str ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

void t_options(mpx_options_t *o, const char *url)
{
    mpx_options_init(o);
    o->redis_url = url ? url : t_redis_url();
    o->ns = t_ns();
    o->connect_timeout_ms = 1000;
    o->command_timeout_ms = 2000;
}

uint64_t t_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void t_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

mpx_t *t_make(const mpx_options_t *o, const char *addr)
{
    mpx_t *m = NULL;
    cr_assert_eq(mpx_create(o, &m), 0, "mpx_create: %s", mpx_last_error());
    if (addr)
        cr_assert_eq(mpx_register(m, addr), 0, "mpx_register(%s): %s", addr, mpx_last_error());
    return m;
}

int t_scale(void)
{
    const char *s = getenv("MPX_TEST_SCALE");
    int v = s ? atoi(s) : 1;
    return v > 0 ? v : 1;
}

/* Plant n sparks of `addr` (plus `keep` sparks of another server) with
 * variadic commands, pipelined. */
void t_plant(redisContext *c, const char *ns, const char *addr, int n)
{
    enum { CHUNK = 1000 };
    char key_h[256], key_s[512];
    snprintf(key_h, sizeof key_h, "%s:sparks", ns);
    snprintf(key_s, sizeof key_s, "%s:%s:sparks", ns, addr);
    const char **argv = malloc((2 + 2 * CHUNK) * sizeof *argv);
    size_t *lens = malloc((2 + 2 * CHUNK) * sizeof *lens);
    char(*ids)[24] = malloc(CHUNK * sizeof *ids);
    int pending = 0;
    for (int base = 0; base < n; base += CHUNK) {
        int m = n - base < CHUNK ? n - base : CHUNK;
        for (int i = 0; i < m; i++)
            snprintf(ids[i], sizeof ids[i], "dead%09d", base + i);
        argv[0] = "HSET";
        argv[1] = key_h;
        lens[0] = 4;
        lens[1] = strlen(key_h);
        for (int i = 0; i < m; i++) {
            argv[2 + 2 * i] = ids[i];
            lens[2 + 2 * i] = strlen(ids[i]);
            argv[3 + 2 * i] = addr;
            lens[3 + 2 * i] = strlen(addr);
        }
        redisAppendCommandArgv(c, 2 + 2 * m, argv, lens);
        argv[0] = "SADD";
        argv[1] = key_s;
        lens[0] = 4;
        lens[1] = strlen(key_s);
        for (int i = 0; i < m; i++) {
            argv[2 + i] = ids[i];
            lens[2 + i] = strlen(ids[i]);
        }
        redisAppendCommandArgv(c, 2 + m, argv, lens);
        pending += 2;
        if (pending >= 100 || base + CHUNK >= n) {
            for (; pending > 0; pending--) {
                redisReply *r;
                cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
                cr_assert_neq(r->type, REDIS_REPLY_ERROR, "%s", r->str);
                freeReplyObject(r);
            }
        }
    }
    free(argv);
    free(lens);
    free(ids);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void *t_ping_loop(void *arg)
{
    t_pinger_t *p = arg;
    redisContext *c = t_connect(NULL);
    uint64_t end = now_us() + 600ull * 1000000u; /* bounded: 10 minutes */
    while (!atomic_load(&p->stop) && now_us() < end) {
        uint64_t t0 = now_us();
        redisReply *r = redisCommand(c, "PING");
        uint64_t d = now_us() - t0;
        if (r)
            freeReplyObject(r);
        if (d > p->worst_us)
            p->worst_us = d;
        p->count++;
        struct timespec ts = {0, 1000000}; /* every millisecond */
        nanosleep(&ts, NULL);
    }
    redisFree(c);
    return NULL;
}

void t_churn_init(t_churn_t *ch, mpx_t *m)
{
    memset(ch, 0, sizeof *ch);
    ch->m = m;
    char id[32];
    for (int i = 0; i < T_CHURN_IDS; i += 2) {
        snprintf(id, sizeof id, "w%d", i);
        mpx_connect(m, id, strlen(id));
        ch->state[i] = 1;
    }
}

void *t_churn_loop(void *arg)
{
    t_churn_t *ch = arg;
    unsigned seed = 12345;
    char id[32];
    uint64_t end = t_now_ms() + 120000; /* bounded */
    while (!atomic_load(&ch->stop) && t_now_ms() < end) {
        for (int k = 0; k < 200; k++) {
            seed = seed * 1103515245u + 12345u;
            int i = (int)((seed >> 8) % T_CHURN_IDS);
            snprintf(id, sizeof id, "w%d", i);
            if (ch->state[i]) {
                mpx_disconnect(ch->m, id, strlen(id));
                ch->state[i] = 0;
            } else {
                mpx_connect(ch->m, id, strlen(id));
                ch->state[i] = 1;
            }
            ch->ops++;
        }
        t_sleep_ms(1);
    }
    return NULL;
}

/* ---- the test cluster ------------------------------------------------------ */

const char *t_cluster_url(void)
{
    const char *u = getenv("MPX_TEST_CLUSTER_URL");
    if (u && *u)
        return u;
    const char *req = getenv("MPX_TEST_REQUIRE_CLUSTER");
    if (req && strcmp(req, "1") == 0)
        cr_assert_fail("MPX_TEST_CLUSTER_URL is not set (tools/test.sh starts a cluster)");
    cr_skip_test("MPX_TEST_CLUSTER_URL not set: the test command starts a local cluster "
                 "(tools/cluster.sh)");
    return NULL;
}

void t_lock_cluster(void)
{
    const char *url = t_cluster_url();
    char path[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/mpx-test-cluster-%016llx.lock", tmp && *tmp ? tmp : "/tmp",
             (unsigned long long)mpx__hash(url, strlen(url)));
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
    while (flock(fd, LOCK_EX) != 0)
        cr_assert_eq(errno, EINTR, "flock %s: %s", path, strerror(errno));
    /* fd stays open: the lock lasts until the test's process exits */
}

/* ---- the operator CLI ------------------------------------------------------- */

static const char *cli_path(void)
{
    static char path[4200];
    if (path[0])
        return path;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    cr_assert(n > 0, "readlink /proc/self/exe: %s", strerror(errno));
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    cr_assert(slash);
    *slash = 0;
    snprintf(path, sizeof path, "%s/../bin/metroplex", exe);
    cr_assert(access(path, X_OK) == 0, "CLI not built: %s", path);
    return path;
}

static char *slurp(int fd)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    cr_assert(buf);
    lseek(fd, 0, SEEK_SET);
    for (;;) {
        if (len + 4096 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert(buf);
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = 0;
    return buf;
}

static int tmpfile_fd(void)
{
    char name[] = "/tmp/mpx-cli-test-XXXXXX";
    int fd = mkstemp(name);
    cr_assert(fd >= 0, "mkstemp: %s", strerror(errno));
    unlink(name);
    return fd;
}

t_run_t t_cli_v(const char *url, const char *ns, unsigned timeout_ms, va_list ap)
{
    const char *argv[128];
    int argc = 0;
    argv[argc++] = cli_path();
    if (ns) {
        argv[argc++] = "--redis";
        argv[argc++] = url;
        argv[argc++] = "--namespace";
        argv[argc++] = ns;
    }
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 126)
        argv[argc++] = a;
    argv[argc] = NULL;
    int ofd = tmpfile_fd(), efd = tmpfile_fd();
    uint64_t t0 = t_now_ms();
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(ofd, 1);
        dup2(efd, 2);
        int dn = open("/dev/null", O_RDONLY);
        if (dn >= 0)
            dup2(dn, 0);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            break;
        if (t_now_ms() - t0 > timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        t_sleep_ms(5);
    }
    t_run_t r;
    r.ms = t_now_ms() - t0;
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    r.out = slurp(ofd);
    r.err = slurp(efd);
    close(ofd);
    close(efd);
    return r;
}

void t_run_free(t_run_t *r)
{
    free(r->out);
    free(r->err);
}

int t_count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* ---- the Node.js originals ------------------------------------------------- */

/* The test command sets MPX_TEST_REQUIRE_INTEROP=1: there a missing node
 * is a failure, not a skip. */
#define SKIP_OR_FAIL(...)                                                      \
    do {                                                                       \
        const char *req_ = getenv("MPX_TEST_REQUIRE_INTEROP");                 \
        if (req_ && strcmp(req_, "1") == 0)                                    \
            cr_assert_fail(__VA_ARGS__);                                       \
        cr_skip_test(__VA_ARGS__);                                             \
    } while (0)

const char *t_interop_dir(void)
{
    static char dir[4096];
    const char *src = getenv("MPX_SOURCE_DIR");
    if (src && *src) {
        snprintf(dir, sizeof dir, "%s/tests/interop", src);
    } else {
        /* __FILE__ is ".../tests/support.c" */
        const char *file = __FILE__, *slash = strrchr(file, '/');
        snprintf(dir, sizeof dir, "%.*s/interop", slash ? (int)(slash - file) : 1,
                 slash ? file : ".");
    }
    return dir;
}

const char *t_find_node(void)
{
    static char node[4096];
    const char *env = getenv("MPX_NODE");
    if (env && *env)
        return access(env, X_OK) == 0 ? env : NULL;
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        if (n > 0 && n < sizeof node - 8) {
            snprintf(node, sizeof node, "%.*s/node", (int)n, path);
            if (access(node, X_OK) == 0)
                return node;
        }
        if (!end)
            break;
        path = end + 1;
    }
    return NULL;
}

const char *t_require_node(const char *script, ...)
{
    const char *node = t_find_node();
    if (!node)
        SKIP_OR_FAIL("node not found (PATH or $MPX_NODE): interop test skipped");
    const char *dir = t_interop_dir();
    char p[4600];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, script);
    if (stat(p, &st) != 0)
        SKIP_OR_FAIL("%s not found (set MPX_SOURCE_DIR): interop test skipped", p);
    va_list ap;
    va_start(ap, script);
    const char *pkg;
    while ((pkg = va_arg(ap, const char *)) != NULL) {
        snprintf(p, sizeof p, "%s/node_modules/%s/package.json", dir, pkg);
        if (stat(p, &st) != 0) {
            va_end(ap);
            SKIP_OR_FAIL("%s missing (run `npm ci` in %s): interop test skipped", p, dir);
        }
    }
    va_end(ap);
    return node;
}

pid_t t_spawn_peer(const char *const argv[], int *out_fd, int *in_fd)
{
    int out[2], in[2] = {-1, -1};
    cr_assert(pipe2(out, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    if (in_fd)
        cr_assert(pipe2(in, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        if (in_fd) {
            dup2(in[0], 0);
        } else {
            int dn = open("/dev/null", O_RDONLY);
            if (dn >= 0)
                dup2(dn, 0);
        }
        dup2(out[1], 1);
        execv(argv[0], (char *const *)argv);
        /* only async-signal-safe calls here: the parent may have threads */
        static const char msg[] = "error cannot exec node\n";
        ssize_t ignored = write(1, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    close(out[1]);
    *out_fd = out[0];
    if (in_fd) {
        close(in[0]);
        *in_fd = in[1];
    }
    return pid;
}

/* ---- on_error -------------------------------------------------------------- */

static void t_on_error(mpx_t *m, int err, const char *msg, void *d)
{
    (void)m;
    t_errors_t *e = d;
    pthread_mutex_lock(&e->mu);
    size_t n = strlen(e->text);
    snprintf(e->text + n, sizeof e->text - n, "[%s] %s\n", mpx_err_name(err), msg);
    pthread_mutex_unlock(&e->mu);
    atomic_fetch_add(&e->count, 1);
}

void t_with_errors(mpx_options_t *o, t_errors_t *e)
{
    memset(e, 0, sizeof *e);
    pthread_mutex_init(&e->mu, NULL);
    o->on_error = t_on_error;
    o->on_error_data = e;
}

bool t_errors_mention(t_errors_t *e, const char *what)
{
    pthread_mutex_lock(&e->mu);
    bool found = strstr(e->text, what) != NULL;
    pthread_mutex_unlock(&e->mu);
    return found;
}
