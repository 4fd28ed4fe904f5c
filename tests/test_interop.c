/*
 * test_interop.c - metroplex-c and the Node.js original (npm metroplex 1.0.2)
 * sharing one cluster on a real redis-server.
 *
 * The Node side is tests/interop/node_peer.js, run with `node` (from PATH, or
 * $MPX_NODE) and the packages installed by `npm ci` in tests/interop. Each
 * test is skipped when node or tests/interop/node_modules is missing.
 * The script is found through $MPX_SOURCE_DIR (the source tree) when set,
 * else next to this file (__FILE__ is absolute in CMake builds).
 *
 * Every test has its own namespace, and both sides use one interval (1000 ms)
 * and latency (300 ms), as a mixed cluster must. Every child process started
 * here (node peers, C children) is killed and reaped by PID in the test's
 * fini, also when an assertion failed; node peers also die with us
 * (PR_SET_PDEATHSIG) and end by themselves after a deadline.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

#define INTERVAL 1000u
#define LATENCY 300u
#define LEASE 500u

#define A_NODE "http://127.0.0.1:9101"
#define A_C "http://127.0.0.1:9102"

/* Skip the calling test when the Node side cannot run (tests/support.c). */
static void require_node(void)
{
    t_require_node("node_peer.js", "metroplex", "ioredis", NULL);
}

/* ------------------------------------------------------------------------ */
/* Child processes, killed and reaped in the fini                           */
/* ------------------------------------------------------------------------ */

#define MAX_LINES 512

typedef struct peer {
    pid_t pid;
    int in_fd;  /* its stdin (write end), -1 if none/closed */
    int out_fd; /* its stdout (read end), -1 when closed */
    char part[65536];
    size_t plen;
    char *lines[MAX_LINES];
    size_t nlines;
    int eof;
    int status; /* waitpid status once reaped */
    int reaped;
} peer_t;

#define MAX_CHILDREN 8
/* Peers live in static storage: the fini runs after the test's frame is gone
 * (also after a failed assertion). */
static peer_t peer_pool[MAX_CHILDREN];
static peer_t *live_peers[MAX_CHILDREN];
static pid_t live_pids[MAX_CHILDREN]; /* C children */
static mpx_t *live_mpx[MAX_CHILDREN];

static peer_t *peer_alloc(void)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (!live_peers[i]) {
            live_peers[i] = &peer_pool[i];
            return live_peers[i];
        }
    cr_assert_fail("too many peers");
    return NULL;
}

static void track_pid(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (!live_pids[i]) {
            live_pids[i] = pid;
            return;
        }
    cr_assert_fail("too many children");
}

static void untrack_pid(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++)
        if (live_pids[i] == pid)
            live_pids[i] = 0;
}

static void kill_and_reap(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

static void peer_close_fds(peer_t *p)
{
    if (p->in_fd >= 0)
        close(p->in_fd);
    if (p->out_fd >= 0)
        close(p->out_fd);
    p->in_fd = p->out_fd = -1;
}

static void peer_free(peer_t *p)
{
    for (size_t i = 0; i < p->nlines; i++)
        free(p->lines[i]);
    p->nlines = 0;
}

static void interop_init(void)
{
    signal(SIGPIPE, SIG_IGN);
}

static void interop_fini(void)
{
    for (int i = 0; i < MAX_CHILDREN; i++) {
        peer_t *p = live_peers[i];
        if (p) {
            if (p->pid > 0 && !p->reaped)
                kill_and_reap(p->pid);
            p->pid = 0;
            peer_close_fds(p);
            peer_free(p);
            live_peers[i] = NULL;
        }
        if (live_pids[i]) {
            kill_and_reap(live_pids[i]);
            live_pids[i] = 0;
        }
        if (live_mpx[i]) {
            mpx_destroy(live_mpx[i]);
            live_mpx[i] = NULL;
        }
    }
}

TestSuite(interop, .init = interop_init, .fini = interop_fini, .timeout = 60);

/* Everything the peer printed so far, for failure messages (static). */
static const char *peer_transcript(const peer_t *p)
{
    static char buf[8192];
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < p->nlines && n + 2 < sizeof buf; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", i ? " | " : "", p->lines[i]);
    if (n >= sizeof buf)
        n = sizeof buf - 1;
    if (p->plen && n + 2 < sizeof buf)
        snprintf(buf + n, sizeof buf - n, " | (partial) %.*s", (int)p->plen, p->part);
    return buf;
}

/*
 * Start node_peer.js with the common options (url, ns, interval, latency)
 * followed by the NULL-terminated extra arguments. With `with_stdin`, the
 * peer's stdin is a pipe we write commands to; otherwise /dev/null.
 */
static peer_t *peer_start(const char *ns, int with_stdin, ...)
{
    peer_t *p = peer_alloc();
    memset(p, 0, sizeof *p);
    p->in_fd = p->out_fd = -1;

    char script[4600], interval[16], latency[16];
    snprintf(script, sizeof script, "%s/node_peer.js", t_interop_dir());
    snprintf(interval, sizeof interval, "%u", INTERVAL);
    snprintf(latency, sizeof latency, "%u", LATENCY);

    const char *argv[64];
    int argc = 0;
    argv[argc++] = t_find_node();
    argv[argc++] = script;
    argv[argc++] = "--url";
    argv[argc++] = t_redis_url();
    argv[argc++] = "--ns";
    argv[argc++] = ns;
    argv[argc++] = "--interval";
    argv[argc++] = interval;
    argv[argc++] = "--latency";
    argv[argc++] = latency;
    if (with_stdin)
        argv[argc++] = "--stdin";
    va_list ap;
    va_start(ap, with_stdin);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        cr_assert(argc < 62, "too many peer arguments");
        argv[argc++] = a;
    }
    va_end(ap);
    argv[argc] = NULL;

    p->pid = t_spawn_peer(argv, &p->out_fd, with_stdin ? &p->in_fd : NULL);
    return p;
}

/* Read what is available (waiting at most `wait_ms`); split into lines.
 * Returns 0 on timeout, 1 if something was read or EOF was reached. */
static int peer_pump(peer_t *p, int wait_ms)
{
    if (p->eof || p->out_fd < 0)
        return 1;
    struct pollfd pfd = {p->out_fd, POLLIN, 0};
    int r = poll(&pfd, 1, wait_ms < 0 ? 0 : wait_ms);
    if (r < 0 && errno == EINTR)
        return 0;
    cr_assert(r >= 0, "poll: %s", strerror(errno));
    if (r == 0)
        return 0;
    char tmp[4096];
    ssize_t n = read(p->out_fd, tmp, sizeof tmp);
    if (n < 0 && errno == EINTR)
        return 0;
    if (n <= 0) {
        p->eof = 1;
        return 1;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (tmp[i] == '\n') {
            cr_assert(p->nlines < MAX_LINES, "peer printed too many lines");
            p->lines[p->nlines] = strndup(p->part, p->plen);
            cr_assert(p->lines[p->nlines]);
            p->nlines++;
            p->plen = 0;
        } else if (p->plen < sizeof p->part - 1) {
            p->part[p->plen++] = tmp[i];
        }
    }
    return 1;
}

/*
 * Wait (at most timeout_ms) for a line, from index `*from` on, that starts
 * with `prefix`; returns its index and sets *from past it. Fails the test on
 * an "error" line, on EOF, or on timeout, with the transcript.
 */
static size_t peer_expect_from(peer_t *p, size_t *from, const char *prefix, unsigned timeout_ms)
{
    uint64_t deadline = t_now_ms() + timeout_ms;
    size_t plen = strlen(prefix);
    for (;;) {
        for (size_t i = *from; i < p->nlines; i++) {
            if (strncmp(p->lines[i], "error", 5) == 0)
                cr_assert_fail("node peer failed while waiting for \"%s\": %s", prefix,
                               peer_transcript(p));
            if (strncmp(p->lines[i], prefix, plen) == 0) {
                *from = i + 1;
                return i;
            }
        }
        *from = p->nlines;
        if (p->eof)
            cr_assert_fail("node peer exited while waiting for \"%s\": %s", prefix,
                           peer_transcript(p));
        uint64_t now = t_now_ms();
        if (now >= deadline)
            cr_assert_fail("timed out (%u ms) waiting for \"%s\" from node peer: %s", timeout_ms,
                           prefix, peer_transcript(p));
        peer_pump(p, (int)(deadline - now));
    }
}

/* A cursor over the peer's lines: expect() waits for lines after it. */
typedef struct cursor {
    peer_t *p;
    size_t at;
} cursor_t;

static size_t expect(cursor_t *c, const char *prefix, unsigned timeout_ms)
{
    return peer_expect_from(c->p, &c->at, prefix, timeout_ms);
}

/* Is there a line equal to `line` at index from..to-1? */
static int peer_has(const peer_t *p, size_t from, size_t to, const char *line)
{
    for (size_t i = from; i < to && i < p->nlines; i++)
        if (strcmp(p->lines[i], line) == 0)
            return 1;
    return 0;
}

static void peer_send(peer_t *p, const char *line)
{
    cr_assert(p->in_fd >= 0, "peer has no stdin");
    size_t n = strlen(line);
    char buf[4096];
    cr_assert(n + 1 < sizeof buf);
    memcpy(buf, line, n);
    buf[n++] = '\n';
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(p->in_fd, buf + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        cr_assert(w > 0, "write to node peer: %s (%s)", strerror(errno), peer_transcript(p));
        off += (size_t)w;
    }
}

/* Close its stdin, wait (at most timeout_ms) for it to print "done" and exit
 * 0; kill it otherwise, and fail. */
static void peer_finish(peer_t *p, unsigned timeout_ms)
{
    if (p->in_fd >= 0) {
        close(p->in_fd);
        p->in_fd = -1;
    }
    uint64_t deadline = t_now_ms() + timeout_ms;
    while (!p->eof && t_now_ms() < deadline)
        peer_pump(p, 50);
    int status = 0;
    pid_t r = 0;
    while (t_now_ms() < deadline) {
        r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid || (r < 0 && errno != EINTR))
            break;
        t_sleep_ms(20);
    }
    if (r != p->pid) {
        kill_and_reap(p->pid);
        p->reaped = 1;
        cr_assert_fail("node peer did not exit within %u ms: %s", timeout_ms, peer_transcript(p));
    }
    p->reaped = 1;
    p->status = status;
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "node peer ended badly (status 0x%x): %s", status, peer_transcript(p));
    cr_assert(peer_has(p, 0, p->nlines, "done"), "node peer did not print done: %s",
              peer_transcript(p));
}

/* SIGKILL the peer and reap it. */
static void peer_kill(peer_t *p)
{
    kill_and_reap(p->pid);
    p->reaped = 1;
    peer_close_fds(p);
}

/* ------------------------------------------------------------------------ */
/* The C side                                                               */
/* ------------------------------------------------------------------------ */

static void c_options(mpx_options_t *o, const char *ns)
{
    /* As t_options(), with our namespace (t_options would allocate another). */
    mpx_options_init(o);
    o->redis_url = t_redis_url();
    o->connect_timeout_ms = 1000;
    o->command_timeout_ms = 2000;
    o->ns = ns;
    o->interval_ms = INTERVAL;
    o->latency_ms = LATENCY;
    o->lease_ms = LEASE;
}

/* A registry in `ns`, registered at `address` (unless NULL). Destroyed in
 * the fini unless the test does it with c_stop(). */
static mpx_t *c_start(const char *ns, const char *address)
{
    mpx_options_t o;
    c_options(&o, ns);
    mpx_t *m = NULL;
    int rc = mpx_create(&o, &m);
    cr_assert_eq(rc, 0, "mpx_create: %s: %s", mpx_err_name(rc), mpx_last_error());
    int i;
    for (i = 0; i < MAX_CHILDREN && live_mpx[i]; i++)
        ;
    cr_assert(i < MAX_CHILDREN);
    live_mpx[i] = m;
    if (address) {
        rc = mpx_register(m, address);
        cr_assert_eq(rc, 0, "mpx_register(%s): %s: %s", address, mpx_err_name(rc),
                     mpx_last_error());
    }
    return m;
}

static void c_connect(mpx_t *m, const char *const *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = mpx_connect(m, ids[i], strlen(ids[i]));
        cr_assert_eq(rc, 0, "mpx_connect(%s): %s: %s", ids[i], mpx_err_name(rc), mpx_last_error());
    }
    int rc = mpx_flush(m, 5000);
    cr_assert_eq(rc, 0, "mpx_flush: %s: %s", mpx_err_name(rc), mpx_last_error());
}

/* mpx_spark(): 0 and the address in buf, or the error code. */
static int c_spark(mpx_t *m, const char *id, char *buf, size_t cap)
{
    size_t len = cap;
    buf[0] = '\0';
    return mpx_spark(m, id, strlen(id), buf, &len);
}

static void assert_c_spark(mpx_t *m, const char *id, const char *want)
{
    char buf[MPX_ADDRESS_MAX + 1];
    int rc = c_spark(m, id, buf, sizeof buf);
    if (want) {
        cr_assert_eq(rc, 0, "C mpx_spark(%s): %s: %s (want %s)", id, mpx_err_name(rc),
                     mpx_last_error(), want);
        cr_assert_str_eq(buf, want, "C mpx_spark(%s) = %s, want %s", id, buf, want);
    } else {
        cr_assert_eq(rc, MPX_ENOTFOUND, "C mpx_spark(%s) = %s (%s), want MPX_ENOTFOUND", id,
                     mpx_err_name(rc), rc == 0 ? buf : mpx_last_error());
    }
}

static int list_has(const mpx_list_t *l, const char *s)
{
    for (size_t i = 0; i < l->count; i++)
        if (l->items[i] && strcmp(l->items[i], s) == 0)
            return 1;
    return 0;
}

/* Does mpx_servers(include_self) list `address`? */
static int c_servers_has(mpx_t *m, int include_self, const char *address)
{
    mpx_list_t *l = NULL;
    int rc = mpx_servers(m, include_self, &l);
    cr_assert_eq(rc, 0, "mpx_servers: %s: %s", mpx_err_name(rc), mpx_last_error());
    cr_assert_not_null(l);
    int has = list_has(l, address);
    mpx_list_free(l);
    return has;
}

/* ------------------------------------------------------------------------ */
/* Direct Redis checks                                                      */
/* ------------------------------------------------------------------------ */

static long long r_in_servers(redisContext *c, const char *ns, const char *address)
{
    return t_int(c, "SISMEMBER %s:servers %s", ns, address);
}

static long long r_alive_exists(redisContext *c, const char *ns, const char *address)
{
    return t_int(c, "EXISTS %s:%s", ns, address);
}

static long long r_set_exists(redisContext *c, const char *ns, const char *address)
{
    return t_int(c, "EXISTS %s:%s:sparks", ns, address);
}

static long long r_set_card(redisContext *c, const char *ns, const char *address)
{
    return t_int(c, "SCARD %s:%s:sparks", ns, address);
}

static long long r_set_has(redisContext *c, const char *ns, const char *address, const char *id)
{
    return t_int(c, "SISMEMBER %s:%s:sparks %s", ns, address, id);
}

/* HGET NS:sparks id, compared with `want` (NULL: absent). */
static void assert_r_spark(redisContext *c, const char *ns, const char *id, const char *want)
{
    redisReply *r = t_cmd(c, "HGET %s:sparks %s", ns, id);
    if (want) {
        cr_assert(r->type == REDIS_REPLY_STRING && strcmp(r->str, want) == 0,
                  "Redis HGET %s:sparks %s = %s, want %s", ns, id,
                  r->type == REDIS_REPLY_STRING ? r->str : "(nil)", want);
    } else {
        cr_assert(r->type == REDIS_REPLY_NIL, "Redis HGET %s:sparks %s = %s, want (nil)", ns, id,
                  r->type == REDIS_REPLY_STRING ? r->str : "(not nil)");
    }
    freeReplyObject(r);
}

/* The alive key holds epoch milliseconds near now, with an expiry of at most
 * the interval. */
static void assert_r_alive_fresh(redisContext *c, const char *ns, const char *address)
{
    redisReply *r = t_cmd(c, "GET %s:%s", ns, address);
    cr_assert(r->type == REDIS_REPLY_STRING, "alive key %s:%s missing", ns, address);
    char *end = NULL;
    long long stamp = strtoll(r->str, &end, 10);
    cr_assert(end && *end == '\0' && end != r->str, "alive key %s:%s = \"%s\": not decimal", ns,
              address, r->str);
    freeReplyObject(r);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long now = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    cr_assert(llabs(now - stamp) < 10000, "alive key %s:%s = %lld, not epoch ms near now (%lld)",
              ns, address, stamp, now);
    long long pttl = t_int(c, "PTTL %s:%s", ns, address);
    cr_assert(pttl > 0 && pttl <= (long long)INTERVAL, "alive key %s:%s PTTL %lld, want 1..%u", ns,
              address, pttl, INTERVAL);
}

/* Traces of `needle` (an address) anywhere in the namespace: in a key name,
 * a string value, a set member, a hash field or value. Returns how many; a
 * description of them in *what (static, for messages). The test data is
 * small, so whole keys are read. */
static size_t r_traces(redisContext *c, const char *ns, const char *needle, const char **what)
{
    static char buf[4096];
    size_t n = 0, off = 0;
    buf[0] = '\0';
#define TRACE(...)                                                                                 \
    do {                                                                                           \
        n++;                                                                                       \
        if (off + 2 < sizeof buf)                                                                  \
            off += (size_t)snprintf(buf + off, sizeof buf - off, __VA_ARGS__);                     \
        if (off >= sizeof buf)                                                                     \
            off = sizeof buf - 1;                                                                  \
    } while (0)
    char cursor[32] = "0";
    do {
        redisReply *r = t_cmd(c, "SCAN %s MATCH %s:* COUNT 1000", cursor, ns);
        cr_assert(r->type == REDIS_REPLY_ARRAY && r->elements == 2, "SCAN: bad reply");
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *key = keys->element[i]->str;
            if (strstr(key, needle)) {
                TRACE("[key %s] ", key);
                continue;
            }
            redisReply *ty = t_cmd(c, "TYPE %s", key);
            redisReply *v = NULL;
            if (strcmp(ty->str, "string") == 0)
                v = t_cmd(c, "GET %s", key);
            else if (strcmp(ty->str, "set") == 0)
                v = t_cmd(c, "SMEMBERS %s", key);
            else if (strcmp(ty->str, "hash") == 0)
                v = t_cmd(c, "HGETALL %s", key);
            else if (strcmp(ty->str, "zset") == 0)
                v = t_cmd(c, "ZRANGE %s 0 -1", key);
            else if (strcmp(ty->str, "list") == 0)
                v = t_cmd(c, "LRANGE %s 0 -1", key);
            if (v && v->type == REDIS_REPLY_STRING && strstr(v->str, needle))
                TRACE("[%s value] ", key);
            if (v && v->type == REDIS_REPLY_ARRAY)
                for (size_t j = 0; j < v->elements; j++)
                    if (v->element[j]->type == REDIS_REPLY_STRING &&
                        strstr(v->element[j]->str, needle))
                        TRACE("[%s: %s] ", key, v->element[j]->str);
            if (v)
                freeReplyObject(v);
            freeReplyObject(ty);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
#undef TRACE
    if (what)
        *what = buf;
    return n;
}

/* Is every trace of `address` (servers entry, alive key, spark set, the
 * given hash fields) gone? */
static int r_server_gone(redisContext *c, const char *ns, const char *address,
                         const char *const *ids, size_t n)
{
    if (r_in_servers(c, ns, address) || r_alive_exists(c, ns, address) ||
        r_set_exists(c, ns, address))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (t_int(c, "HEXISTS %s:sparks %s", ns, ids[i]))
            return 0;
    return 1;
}

static void assert_r_server_gone(redisContext *c, const char *ns, const char *address,
                                 const char *const *ids, size_t n)
{
    cr_assert_eq(r_in_servers(c, ns, address), 0, "%s still in %s:servers", address, ns);
    cr_assert_eq(r_alive_exists(c, ns, address), 0, "alive key %s:%s still there", ns, address);
    cr_assert_eq(r_set_exists(c, ns, address), 0, "spark set %s:%s:sparks still there", ns,
                 address);
    for (size_t i = 0; i < n; i++)
        assert_r_spark(c, ns, ids[i], NULL);
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* t_ns(), kept reachable from a static so that LeakSanitizer does not flag
 * the by-design allocation once the test's frame is gone. */
static const char *test_ns(void)
{
    static const char *kept[16];
    static size_t n;
    const char *ns = t_ns();
    if (n < NELEM(kept))
        kept[n++] = ns;
    return ns;
}

/* ------------------------------------------------------------------------ */
/* a. each side sees the other in its servers list                          */
/* ------------------------------------------------------------------------ */

Test(interop, servers_seen_both_ways)
{
    require_node();
    const char *ns = test_ns();
    redisContext *rc = t_connect(NULL);
    mpx_t *m = c_start(ns, A_C);

    peer_t *peer = peer_start(ns, 1, "--address", A_NODE, "--print-servers", NULL);
    cursor_t cur = {peer, 0};
    expect(&cur, "registered " A_NODE, 10000);
    size_t from = cur.at;
    size_t end = expect(&cur, "servers ", 5000);
    cr_assert(peer_has(peer, from, end, "server " A_C), "Node servers() lacks the C server: %s",
              peer_transcript(peer));
    cr_assert(!peer_has(peer, from, end, "server " A_NODE), "Node servers() lists itself: %s",
              peer_transcript(peer));

    cr_assert(c_servers_has(m, 0, A_NODE), "C mpx_servers(0) lacks the Node server");
    cr_assert(!c_servers_has(m, 0, A_C), "C mpx_servers(0) lists itself");
    cr_assert(c_servers_has(m, 1, A_C), "C mpx_servers(1) lacks itself");
    cr_assert(c_servers_has(m, 1, A_NODE), "C mpx_servers(1) lacks the Node server");

    /* Several intervals later, both heartbeats ran several times: neither
     * side reaped the other, and both alive keys are fresh epoch ms. */
    t_sleep_ms(INTERVAL * 5 / 2);
    peer_send(peer, "servers");
    from = cur.at;
    end = expect(&cur, "servers ", 5000);
    expect(&cur, "ok servers", 5000);
    cr_assert(peer_has(peer, from, end, "server " A_C),
              "the Node heartbeat reaped the live C server: %s", peer_transcript(peer));
    cr_assert(c_servers_has(m, 0, A_NODE), "the C heartbeat reaped the live Node server");
    cr_assert_eq(r_in_servers(rc, ns, A_C), 1);
    cr_assert_eq(r_in_servers(rc, ns, A_NODE), 1);
    assert_r_alive_fresh(rc, ns, A_C);
    assert_r_alive_fresh(rc, ns, A_NODE);

    peer_send(peer, "end");
    peer_finish(peer, 10000);
    redisFree(rc);
}

/* ------------------------------------------------------------------------ */
/* b. the C side reaps a Node server that was killed                        */
/* ------------------------------------------------------------------------ */

Test(interop, c_reaps_killed_node)
{
    require_node();
    const char *ns = test_ns();
    redisContext *rc = t_connect(NULL);
    mpx_t *m = c_start(ns, A_C);
    static const char *const c_ids[] = {"c-1", "c-2"};
    c_connect(m, c_ids, NELEM(c_ids));

    static const char *const n_ids[] = {"n-1", "n-2", "n:3"};
    peer_t *peer = peer_start(ns, 0, "--address", A_NODE, "--connect", "n-1,n-2,n:3", "--stay-ms",
                              "20000", NULL);
    cursor_t cur = {peer, 0};
    expect(&cur, "registered " A_NODE, 10000);
    expect(&cur, "connected 3", 5000);

    /* The Node server is registered the way the C side expects. */
    for (size_t i = 0; i < NELEM(n_ids); i++) {
        assert_r_spark(rc, ns, n_ids[i], A_NODE);
        assert_c_spark(m, n_ids[i], A_NODE);
    }
    cr_assert_eq(r_set_card(rc, ns, A_NODE), 3);
    cr_assert(c_servers_has(m, 0, A_NODE));

    /* Kill it: it stops heartbeating. */
    peer_kill(peer);
    uint64_t killed = t_now_ms();

    /* Its alive key expires within one interval of its last heartbeat. */
    while (r_alive_exists(rc, ns, A_NODE) && t_now_ms() - killed < INTERVAL + 3000)
        t_sleep_ms(50);
    cr_assert_eq(r_alive_exists(rc, ns, A_NODE), 0, "the Node alive key did not expire");

    /* Reap (or let the C heartbeat do it), bounded. */
    uint64_t deadline = t_now_ms() + 5000;
    size_t reaped_total = 0;
    while (!r_server_gone(rc, ns, A_NODE, n_ids, NELEM(n_ids)) && t_now_ms() < deadline) {
        size_t reaped = 0;
        int r = mpx_reap(m, &reaped);
        cr_assert_eq(r, 0, "mpx_reap: %s: %s", mpx_err_name(r), mpx_last_error());
        reaped_total += reaped;
        t_sleep_ms(100);
    }
    assert_r_server_gone(rc, ns, A_NODE, n_ids, NELEM(n_ids));

    /* No trace of the dead server is left under the namespace (moved-aside
     * sets, pending-cleanup entries, hash fields naming it) once the cleanup
     * is done. */
    const char *what = NULL;
    deadline = t_now_ms() + 3000;
    while (r_traces(rc, ns, A_NODE, &what) && t_now_ms() < deadline)
        t_sleep_ms(100);
    cr_assert_eq(r_traces(rc, ns, A_NODE, &what), 0, "traces of the reaped Node server remain: %s",
                 what);

    /* This process did the reaping, and nothing of the C server went. */
    mpx_stats_t st;
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert(st.reaped_servers >= 1, "reaped_servers = %llu (mpx_reap counted %zu)",
              (unsigned long long)st.reaped_servers, reaped_total);
    for (size_t i = 0; i < NELEM(n_ids); i++)
        assert_c_spark(m, n_ids[i], NULL);
    for (size_t i = 0; i < NELEM(c_ids); i++)
        assert_r_spark(rc, ns, c_ids[i], A_C);
    cr_assert_eq(r_in_servers(rc, ns, A_C), 1);
    cr_assert_eq(r_set_card(rc, ns, A_C), 2);
    cr_assert(!c_servers_has(m, 1, A_NODE));
    redisFree(rc);
}

/* ------------------------------------------------------------------------ */
/* c. the Node heartbeat reaps a C process that was killed                  */
/* ------------------------------------------------------------------------ */

/* In a child process: register A_C with sparks, flush, then die by SIGKILL.
 * Reports failures on `fd` and exits with a non-signal status. */
static void c_child_run_and_die(const char *ns, int fd, const char *const *ids, size_t n)
{
    mpx_options_t o;
    c_options(&o, ns);
    mpx_t *m = NULL;
    int rc = mpx_create(&o, &m);
    if (rc) {
        dprintf(fd, "mpx_create: %s: %s\n", mpx_err_name(rc), mpx_last_error());
        _exit(2);
    }
    rc = mpx_register(m, A_C);
    if (rc) {
        dprintf(fd, "mpx_register: %s: %s\n", mpx_err_name(rc), mpx_last_error());
        _exit(3);
    }
    for (size_t i = 0; i < n; i++) {
        rc = mpx_connect(m, ids[i], strlen(ids[i]));
        if (rc) {
            dprintf(fd, "mpx_connect: %s: %s\n", mpx_err_name(rc), mpx_last_error());
            _exit(4);
        }
    }
    rc = mpx_flush(m, 5000);
    if (rc) {
        dprintf(fd, "mpx_flush: %s: %s\n", mpx_err_name(rc), mpx_last_error());
        _exit(5);
    }
    dprintf(fd, "ok\n");
    raise(SIGKILL);
    _exit(6);
}

Test(interop, node_reaps_killed_c)
{
    require_node();
    const char *ns = test_ns();
    (void)t_redis_url(); /* start a private server, if any, in this process */
    redisContext *rc = t_connect(NULL);
    static const char *const c_ids[] = {"c-1", "c-2", "c:3"};

    int fds[2];
    cr_assert(pipe2(fds, O_CLOEXEC) == 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(fds[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        c_child_run_and_die(ns, fds[1], c_ids, NELEM(c_ids));
    }
    track_pid(pid);
    close(fds[1]);

    /* Its report, then its death. */
    char msg[1024] = "";
    size_t len = 0;
    uint64_t deadline = t_now_ms() + 20000;
    for (;;) {
        struct pollfd pfd = {fds[0], POLLIN, 0};
        uint64_t now = t_now_ms();
        if (now >= deadline)
            break;
        int r = poll(&pfd, 1, (int)(deadline - now));
        if (r <= 0)
            continue;
        ssize_t k = read(fds[0], msg + len, sizeof msg - 1 - len);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    msg[len] = '\0';
    close(fds[0]);
    int status = 0;
    pid_t w = 0;
    while (t_now_ms() < deadline + 2000) {
        w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        t_sleep_ms(20);
    }
    if (w != pid)
        kill_and_reap(pid);
    untrack_pid(pid);
    cr_assert_eq(w, pid, "the C child did not end (it said: %s)", msg);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "the C child failed (status 0x%x): %s", status, msg);
    cr_assert_str_eq(msg, "ok\n");
    uint64_t killed = t_now_ms();

    /* The dead C server is in Redis as the original lays it out. */
    for (size_t i = 0; i < NELEM(c_ids); i++) {
        assert_r_spark(rc, ns, c_ids[i], A_C);
        cr_assert_eq(r_set_has(rc, ns, A_C, c_ids[i]), 1, "%s not in the C spark set", c_ids[i]);
    }
    cr_assert_eq(r_in_servers(rc, ns, A_C), 1);

    /* A Node server whose heartbeat (every interval - latency) runs well
     * after the C alive key expired. Nothing else runs in this namespace. */
    char stay[16];
    snprintf(stay, sizeof stay, "%u", INTERVAL * 4);
    peer_t *peer = peer_start(ns, 0, "--address", A_NODE, "--stay-ms", stay, NULL);
    cursor_t cur = {peer, 0};
    expect(&cur, "registered " A_NODE, 10000);

    deadline = t_now_ms() + INTERVAL * 4 + 2000;
    while (!r_server_gone(rc, ns, A_C, c_ids, NELEM(c_ids)) && t_now_ms() < deadline) {
        peer_pump(peer, 0);
        t_sleep_ms(50);
    }
    assert_r_server_gone(rc, ns, A_C, c_ids, NELEM(c_ids));
    cr_assert_eq(r_in_servers(rc, ns, A_NODE), 1, "the Node server went too");
    peer_finish(peer, INTERVAL * 4 + 10000);

    /* What the original does not know of (our lease) expires by itself:
     * soon no trace of the dead C server is left. */
    const char *what = NULL;
    deadline = killed + LEASE + 3000;
    while (r_traces(rc, ns, A_C, &what) && t_now_ms() < deadline)
        t_sleep_ms(100);
    cr_assert_eq(r_traces(rc, ns, A_C, &what), 0,
                 "traces of the dead C server remain after the Node reap: %s", what);

    /* And the address can be registered again by a new C process. */
    mpx_t *m = c_start(ns, A_C);
    cr_assert(c_servers_has(m, 1, A_C));
    assert_r_alive_fresh(rc, ns, A_C);
    redisFree(rc);
}

/* ------------------------------------------------------------------------ */
/* d. sparks registered by one side are found by the other                  */
/* ------------------------------------------------------------------------ */

Test(interop, sparks_found_across)
{
    require_node();
    const char *ns = test_ns();
    redisContext *rc = t_connect(NULL);
    mpx_t *m = c_start(ns, A_C);
    /* Ids with a colon, a space and UTF-8: binary-safe both ways. */
    static const char *const c_ids[] = {"c-1", "c:2", "c \xc3\xbc 3"};
    static const char *const n_ids[] = {"n-1", "n:2", "n \xc3\xbc 3"};
    c_connect(m, c_ids, NELEM(c_ids));
    cr_assert_eq(r_set_card(rc, ns, A_C), 3, "the C spark set is not the original's layout");
    for (size_t i = 0; i < NELEM(c_ids); i++)
        cr_assert_eq(r_set_has(rc, ns, A_C, c_ids[i]), 1);

    peer_t *peer = peer_start(ns, 1, "--address", A_NODE, "--connect", "n-1,n:2,n \xc3\xbc 3",
                              "--lookup", "c-1,c:2,c \xc3\xbc 3,nobody,n-1", NULL);
    cursor_t cur = {peer, 0};
    expect(&cur, "registered " A_NODE, 10000);
    expect(&cur, "connected 3", 5000);
    size_t from = cur.at;
    size_t end = expect(&cur, "lookup ", 5000);
    for (size_t i = 0; i < NELEM(c_ids); i++) {
        char want[256];
        snprintf(want, sizeof want, "spark " A_C " %s", c_ids[i]);
        cr_assert(peer_has(peer, from, end, want), "Node sparks() did not find %s on C: %s",
                  c_ids[i], peer_transcript(peer));
    }
    cr_assert(peer_has(peer, from, end, "spark null nobody"), "%s", peer_transcript(peer));
    cr_assert(peer_has(peer, from, end, "spark " A_NODE " n-1"), "%s", peer_transcript(peer));

    /* C finds the Node sparks, one by one and at once. */
    for (size_t i = 0; i < NELEM(n_ids); i++)
        assert_c_spark(m, n_ids[i], A_NODE);
    const void *ids[] = {n_ids[0], n_ids[1], n_ids[2], c_ids[0], "nobody"};
    size_t lens[NELEM(ids)];
    for (size_t i = 0; i < NELEM(ids); i++)
        lens[i] = strlen(ids[i]);
    mpx_list_t *l = NULL;
    int r = mpx_sparks(m, ids, lens, NELEM(ids), &l);
    cr_assert_eq(r, 0, "mpx_sparks: %s: %s", mpx_err_name(r), mpx_last_error());
    cr_assert_eq(l->count, NELEM(ids));
    for (size_t i = 0; i < 3; i++) {
        cr_assert(l->items[i] && strcmp(l->items[i], A_NODE) == 0,
                  "mpx_sparks[%zu] = %s, want " A_NODE, i, l->items[i] ? l->items[i] : "NULL");
        cr_assert_eq(l->lens[i], strlen(A_NODE));
    }
    cr_assert(l->items[3] && strcmp(l->items[3], A_C) == 0);
    cr_assert_null(l->items[4], "mpx_sparks: unknown id resolved to %s", l->items[4]);
    mpx_list_free(l);

    /* Disconnects cross over too. */
    peer_send(peer, "disconnect n-1");
    expect(&cur, "ok disconnect", 5000);
    assert_c_spark(m, "n-1", NULL);
    assert_c_spark(m, "n:2", A_NODE);

    r = mpx_disconnect(m, "c-1", 3);
    cr_assert_eq(r, 0);
    r = mpx_flush(m, 5000);
    cr_assert_eq(r, 0, "mpx_flush: %s: %s", mpx_err_name(r), mpx_last_error());
    cr_assert_eq(r_set_has(rc, ns, A_C, "c-1"), 0, "c-1 still in the C spark set");
    peer_send(peer, "lookup c-1,c:2");
    from = cur.at;
    end = expect(&cur, "lookup ", 5000);
    expect(&cur, "ok lookup", 5000);
    cr_assert(peer_has(peer, from, end, "spark null c-1"), "%s", peer_transcript(peer));
    cr_assert(peer_has(peer, from, end, "spark " A_C " c:2"), "%s", peer_transcript(peer));

    peer_send(peer, "end");
    peer_finish(peer, 10000);
    redisFree(rc);
}

/* ------------------------------------------------------------------------ */
/* e. a clean unregister on one side is seen by the other                   */
/* ------------------------------------------------------------------------ */

Test(interop, unregister_seen_across)
{
    require_node();
    const char *ns = test_ns();
    redisContext *rc = t_connect(NULL);
    mpx_t *m = c_start(ns, A_C);
    static const char *const c_ids[] = {"c-1", "c-2", "c-3"};
    static const char *const n_ids[] = {"n-1", "n-2"};
    c_connect(m, c_ids, NELEM(c_ids));

    peer_t *peer = peer_start(ns, 1, "--address", A_NODE, "--connect", "n-1,n-2", "--lookup",
                              "c-1,c-2,c-3", NULL);
    cursor_t cur = {peer, 0};
    expect(&cur, "registered " A_NODE, 10000);
    expect(&cur, "connected 2", 5000);
    size_t from = cur.at;
    size_t end = expect(&cur, "lookup ", 5000);
    for (size_t i = 0; i < NELEM(c_ids); i++) {
        char want[256];
        snprintf(want, sizeof want, "spark " A_C " %s", c_ids[i]);
        cr_assert(peer_has(peer, from, end, want), "%s", peer_transcript(peer));
    }
    for (size_t i = 0; i < NELEM(n_ids); i++)
        assert_c_spark(m, n_ids[i], A_NODE);

    /* Node unregisters: C no longer finds its sparks nor the server. */
    peer_send(peer, "unregister");
    expect(&cur, "unregistered " A_NODE, 5000);
    expect(&cur, "ok unregister", 5000);
    for (size_t i = 0; i < NELEM(n_ids); i++)
        assert_c_spark(m, n_ids[i], NULL);
    cr_assert(!c_servers_has(m, 1, A_NODE), "C still lists the unregistered Node server");
    assert_r_server_gone(rc, ns, A_NODE, n_ids, NELEM(n_ids));
    const char *what = NULL;
    cr_assert_eq(r_traces(rc, ns, A_NODE, &what), 0,
                 "traces of the unregistered Node server remain: %s", what);
    /* ... and the C server is untouched. */
    for (size_t i = 0; i < NELEM(c_ids); i++)
        assert_r_spark(rc, ns, c_ids[i], A_C);

    /* C unregisters: Node no longer finds its sparks nor the server. */
    int r = mpx_unregister(m);
    cr_assert_eq(r, 0, "mpx_unregister: %s: %s", mpx_err_name(r), mpx_last_error());
    peer_send(peer, "lookup c-1,c-2,c-3");
    from = cur.at;
    end = expect(&cur, "lookup ", 5000);
    expect(&cur, "ok lookup", 5000);
    for (size_t i = 0; i < NELEM(c_ids); i++) {
        char want[256];
        snprintf(want, sizeof want, "spark null %s", c_ids[i]);
        cr_assert(peer_has(peer, from, end, want), "Node still finds %s after mpx_unregister: %s",
                  c_ids[i], peer_transcript(peer));
    }
    peer_send(peer, "servers");
    from = cur.at;
    end = expect(&cur, "servers ", 5000);
    expect(&cur, "ok servers", 5000);
    cr_assert(!peer_has(peer, from, end, "server " A_C),
              "Node still lists the C server after mpx_unregister: %s", peer_transcript(peer));
    assert_r_server_gone(rc, ns, A_C, c_ids, NELEM(c_ids));
    cr_assert_eq(t_int(rc, "HLEN %s:sparks", ns), 0, "sparks left in %s:sparks", ns);
    /* A clean unregister leaves nothing behind, our extensions included (the
     * chunked cleanup may finish just after the call returns). */
    uint64_t deadline = t_now_ms() + 3000;
    while (r_traces(rc, ns, A_C, &what) && t_now_ms() < deadline)
        t_sleep_ms(100);
    cr_assert_eq(r_traces(rc, ns, A_C, &what), 0, "traces of the unregistered C server remain: %s",
                 what);

    peer_send(peer, "end");
    peer_finish(peer, 10000);
    redisFree(rc);
}
