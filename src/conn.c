/*
 * conn.c - one blocking hiredis connection with timeouts and reconnects.
 *
 * Each library thread owns its connection (hiredis contexts are not
 * thread-safe): the writer thread, the heartbeat thread (shared with the
 * lifecycle calls under life_mu) and the lookup connection (under sync_mu).
 *
 * Connecting does: TCP or unix connect with connect_timeout_ms, the command
 * timeout, AUTH and SELECT when the URL asks, SCRIPT LOAD of every script
 * (so NOSCRIPT never lands inside a MULTI), and INFO server to learn the
 * run_id: a different run_id than at the previous connect means Redis
 * restarted and may have lost our state (run_id_changed is set).
 *
 * Failure: any I/O error closes the context; the next mpx__conn_ensure()
 * reconnects, no sooner than the backoff (100 ms doubling to 5 s) unless
 * forced.
 *
 * Redis Cluster (a redis-cluster:// endpoint): ensure, close, command,
 * pipeline and refresh hand over to cluster.c, which keeps one connection
 * of this kind per master; c->ctx then stays NULL and the raw pipelining
 * calls (mpx__conn_append / mpx__conn_read) refuse with MPX_ESTATE: use
 * mpx__conn_pipeline, which works in both modes.
 */
#include <errno.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster.h"
#include "internal.h"

/* ---- SIGPIPE --------------------------------------------------------------
 * A write to a socket whose peer is gone raises SIGPIPE, which kills the
 * process by default. hiredis writes with write(2). The library's own
 * threads block SIGPIPE for good (mpx__thread_init); on a caller's thread
 * the signal is blocked around the I/O, and one raised by our write is
 * consumed before the caller's mask is restored, so the application's
 * signal handling is left as it was. */
typedef struct sigpipe_guard {
    sigset_t old;
    bool active, pending_before;
} sigpipe_guard_t;

static void sigpipe_block(sigpipe_guard_t *g)
{
    sigset_t pipe, pend;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    g->active = false;
    if (pthread_sigmask(SIG_BLOCK, &pipe, &g->old) != 0)
        return;
    if (sigismember(&g->old, SIGPIPE))
        return; /* already blocked (a library thread): nothing to undo */
    g->active = true;
    sigpending(&pend);
    g->pending_before = sigismember(&pend, SIGPIPE);
}

static void sigpipe_restore(sigpipe_guard_t *g)
{
    if (!g->active)
        return;
    if (!g->pending_before) {
        sigset_t pipe, pend;
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        sigpending(&pend);
        if (sigismember(&pend, SIGPIPE)) {
            struct timespec zero = {0, 0};
            while (sigtimedwait(&pipe, NULL, &zero) == -1 && errno == EINTR)
                ;
        }
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

void mpx__thread_init(const char *name)
{
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL);
#ifdef __linux__
    pthread_setname_np(pthread_self(), name);
#else
    (void)name;
#endif
}

uint64_t mpx__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t mpx__epoch_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct timeval tv_ms(uint32_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

void mpx__conn_init(mpx__conn_t *c, const mpx__redis_endpoint_t *ep, uint32_t connect_timeout_ms,
                    uint32_t command_timeout_ms, const char *name, atomic_uint_fast64_t *errors)
{
    memset(c, 0, sizeof *c);
    c->ep = ep;
    c->connect_timeout_ms = connect_timeout_ms;
    c->command_timeout_ms = command_timeout_ms;
    c->error_counter = errors;
    snprintf(c->name, sizeof c->name, "%s", name);
}

void mpx__conn_close(mpx__conn_t *c)
{
    if (c->ep && c->ep->cluster)
        mpx__cluster_close(c);
    if (c->ctx) {
        redisFree(c->ctx);
        c->ctx = NULL;
    }
}

void mpx__conn_free(mpx__conn_t *c)
{
    mpx__conn_close(c);
    mpx__cluster_free(c);
}

static void count_error(mpx__conn_t *c)
{
    if (c->error_counter)
        atomic_fetch_add_explicit(c->error_counter, 1, memory_order_relaxed);
}

static const char *where(const mpx__conn_t *c, char *buf, size_t n)
{
    if (c->ep->path)
        snprintf(buf, n, "unix:%s", c->ep->path);
    else
        snprintf(buf, n, "%s:%d", c->ep->host, c->ep->port);
    return buf;
}

int mpx__conn_io_error(mpx__conn_t *c, const char *what)
{
    char w[160];
    int err = MPX_ECONN;
    const char *msg = c->ctx ? c->ctx->errstr : "no connection";
    if (c->ctx && c->ctx->err == REDIS_ERR_IO &&
        (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT))
        err = MPX_ETIMEDOUT;
    if (c->ctx && strstr(msg, "timed out"))
        err = MPX_ETIMEDOUT;
    mpx__fail(err, "redis %s (%s connection): %s: %s", where(c, w, sizeof w), c->name, what,
              err == MPX_ETIMEDOUT ? "timed out" : msg);
    count_error(c);
    if (c->ctx && c->ctx->fd >= 0) {
        /* Close with a reset, not a FIN: commands we sent but gave up on
         * (a timeout on a paused Redis) are then discarded by the server's
         * kernel instead of being read and executed later, after the newer
         * writes we make on the next connection. */
        struct linger l = {1, 0};
        setsockopt(c->ctx->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    mpx__conn_close(c);
    return err;
}

/* Run a simple command during setup; returns the reply or NULL (message set). */
static redisReply *setup_cmd(mpx__conn_t *c, int *rc, int argc, const char **argv,
                             const size_t *lens)
{
    redisReply *r = redisCommandArgv(c->ctx, argc, argv, lens);
    if (!r) {
        *rc = mpx__conn_io_error(c, argv[0]);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char w[160];
        *rc = mpx__fail(MPX_EREDIS, "redis %s: %s failed: %s", where(c, w, sizeof w), argv[0],
                        r->str);
        count_error(c);
        freeReplyObject(r);
        mpx__conn_close(c);
        return NULL;
    }
    return r;
}

static int load_scripts(mpx__conn_t *c)
{
    if (!c->ctx)
        return mpx__fail(MPX_ECONN, "redis: cannot load the scripts: not connected");
    int rc = 0;
    for (int i = 0; i < MPX__SCRIPT_COUNT; i++) {
        const char *src = mpx__script_source(i);
        const char *argv[3] = {"SCRIPT", "LOAD", src};
        size_t lens[3] = {6, 4, strlen(src)};
        redisReply *r = setup_cmd(c, &rc, 3, argv, lens);
        if (!r)
            return rc;
        if (r->type != REDIS_REPLY_STRING || r->len != 40) {
            freeReplyObject(r);
            mpx__conn_close(c);
            return mpx__fail(MPX_EPROTO, "SCRIPT LOAD %s: unexpected reply", mpx__script_name(i));
        }
        memcpy(c->shas[i], r->str, 41);
        freeReplyObject(r);
    }
    return 0;
}

static int read_run_id(mpx__conn_t *c)
{
    int rc = 0;
    const char *argv[2] = {"INFO", "server"};
    size_t lens[2] = {4, 6};
    redisReply *r = setup_cmd(c, &rc, 2, argv, lens);
    if (!r)
        return rc;
    char id[41] = "";
    if (r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, "run_id:");
        if (p && strlen(p + 7) >= 40) {
            memcpy(id, p + 7, 40);
            id[40] = 0;
        }
    }
    freeReplyObject(r);
    if (c->run_id[0] && id[0] && strcmp(id, c->run_id) != 0)
        c->run_id_changed = true;
    if (id[0])
        memcpy(c->run_id, id, 41);
    return 0;
}

int mpx__conn_load_scripts(mpx__conn_t *c)
{
    return load_scripts(c);
}

static int conn_ensure(mpx__conn_t *c, bool force);

int mpx__conn_ensure(mpx__conn_t *c, bool force)
{
    if (c->ctx && !c->ctx->err)
        return 0;
    sigpipe_guard_t g;
    sigpipe_block(&g);
    int rc = c->ep->cluster ? mpx__cluster_ensure(c, force) : conn_ensure(c, force);
    sigpipe_restore(&g);
    return rc;
}

static int conn_ensure(mpx__conn_t *c, bool force)
{
    if (c->ctx && !c->ctx->err)
        return 0;
    mpx__conn_close(c);
    uint64_t now = mpx__now_ms();
    if (!force && now < c->next_attempt_ms) {
        char w[160];
        return mpx__fail(MPX_ECONN, "redis %s unreachable (%s connection); next attempt in %llu ms",
                         where(c, w, sizeof w), c->name,
                         (unsigned long long)(c->next_attempt_ms - now));
    }
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : 100;
    if (c->backoff_ms > 5000)
        c->backoff_ms = 5000;
    c->next_attempt_ms = now + c->backoff_ms;

    struct timeval ct = tv_ms(c->connect_timeout_ms);
    if (c->ep->path)
        c->ctx = redisConnectUnixWithTimeout(c->ep->path, ct);
    else
        c->ctx = redisConnectWithTimeout(c->ep->host, c->ep->port, ct);
    if (!c->ctx)
        return mpx__fail(MPX_ENOMEM, "out of memory (redis context)");
    if (c->ctx->err) {
        char w[160];
        int rc = mpx__fail(MPX_ECONN, "cannot connect to redis %s (%s connection): %s",
                           where(c, w, sizeof w), c->name, c->ctx->errstr);
        count_error(c);
        mpx__conn_close(c);
        return rc;
    }
    redisSetTimeout(c->ctx, tv_ms(c->command_timeout_ms));
    /* TCP keepalive; on a unix socket hiredis 0.14 would fail it and mark
     * the context as broken. */
    if (!c->ep->path && redisEnableKeepAlive(c->ctx) != REDIS_OK) {
        c->ctx->err = 0; /* not fatal: go on without keepalive */
        c->ctx->errstr[0] = 0;
    }

    int rc = 0;
    redisReply *r;
    if (c->ep->password) {
        const char *argv[3] = {"AUTH", c->ep->user, c->ep->password};
        size_t lens[3] = {4, c->ep->user ? strlen(c->ep->user) : 0, strlen(c->ep->password)};
        if (c->ep->user)
            r = setup_cmd(c, &rc, 3, argv, lens);
        else {
            argv[1] = c->ep->password;
            lens[1] = lens[2];
            r = setup_cmd(c, &rc, 2, argv, lens);
        }
        if (!r)
            return rc;
        freeReplyObject(r);
    }
    if (c->ep->db > 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->ep->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        if (!(r = setup_cmd(c, &rc, 2, argv, lens)))
            return rc;
        freeReplyObject(r);
    }
    if ((rc = read_run_id(c)) != 0 || (rc = load_scripts(c)) != 0)
        return rc;
    c->backoff_ms = 0;
    c->next_attempt_ms = 0;
    return 0;
}

static int refuse_raw(const mpx__conn_t *c, const char *what)
{
    return mpx__fail(MPX_ESTATE,
                     "redis cluster (%s connection): %s is for a single Redis; a cluster "
                     "pipelines through mpx__conn_pipeline",
                     c->name, what);
}

int mpx__conn_append(mpx__conn_t *c, mpx__argv_t *a)
{
    if (c->ep->cluster)
        return refuse_raw(c, "mpx__conn_append");
    if (!c->ctx)
        return mpx__conn_io_error(c, "append");
    mpx__argv_finish(a);
    if (redisAppendCommandArgv(c->ctx, (int)a->argc, a->argv, a->lens) != REDIS_OK)
        return mpx__conn_io_error(c, "append");
    return 0;
}

int mpx__conn_read(mpx__conn_t *c, redisReply **out)
{
    void *r = NULL;
    *out = NULL;
    if (c->ep->cluster)
        return refuse_raw(c, "mpx__conn_read");
    if (!c->ctx || redisGetReply(c->ctx, &r) != REDIS_OK || !r)
        return mpx__conn_io_error(c, "read");
    *out = r;
    return 0;
}

static int conn_command(mpx__conn_t *c, mpx__argv_t *a, redisReply **out);

int mpx__conn_command(mpx__conn_t *c, mpx__argv_t *a, redisReply **out)
{
    sigpipe_guard_t g;
    sigpipe_block(&g);
    int rc = c->ep->cluster ? mpx__cluster_command(c, a, out) : conn_command(c, a, out);
    sigpipe_restore(&g);
    return rc;
}

static int conn_command(mpx__conn_t *c, mpx__argv_t *a, redisReply **out)
{
    *out = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc = conn_ensure(c, false);
        if (rc)
            return rc;
        redisReply *r;
        if ((rc = mpx__conn_append(c, a)) || (rc = mpx__conn_read(c, &r)))
            return rc;
        if (r->type != REDIS_REPLY_ERROR) {
            *out = r;
            return 0;
        }
        if (attempt == 0 && strncmp(r->str, "NOSCRIPT", 8) == 0) {
            /* Scripts flushed (SCRIPT FLUSH, failover): load and retry. */
            freeReplyObject(r);
            if ((rc = load_scripts(c)) != 0)
                return rc;
            continue;
        }
        char w[160];
        rc = mpx__fail(MPX_EREDIS, "redis %s: %.*s failed: %s", where(c, w, sizeof w),
                       (int)a->lens[0], a->argv[0], r->str);
        count_error(c);
        freeReplyObject(r);
        return rc;
    }
    return mpx__fail(MPX_EREDIS, "redis: NOSCRIPT after reloading the scripts");
}

/* ---- pipelines ------------------------------------------------------------
 * Single Redis: append every command, write them in one go, read the
 * replies in order. An I/O error fails the command being read and every
 * later one with its code (the connection is closed). Commands answered
 * NOSCRIPT are sent again, once, after the scripts are reloaded. */

#define PIPE_PENDING 1 /* rcs[i] while a command waits to be (re)sent */

static int pipeline_single(mpx__conn_t *c, size_t n, mpx__argv_t *const *cmds,
                           redisReply **replies, int *rcs)
{
    for (size_t i = 0; i < n; i++) {
        replies[i] = NULL;
        rcs[i] = PIPE_PENDING;
    }
    size_t pending = n;
    for (int round = 0; round < 2 && pending > 0; round++) {
        int rc = conn_ensure(c, false);
        for (size_t i = 0; i < n && rc == 0; i++)
            if (rcs[i] == PIPE_PENDING)
                rc = mpx__conn_append(c, cmds[i]);
        int done = 0;
        while (rc == 0 && !done)
            if (redisBufferWrite(c->ctx, &done) != REDIS_OK)
                rc = mpx__conn_io_error(c, "write");
        bool noscript = false;
        for (size_t i = 0; i < n; i++) {
            if (rcs[i] != PIPE_PENDING)
                continue;
            redisReply *r = NULL;
            if (rc == 0)
                rc = mpx__conn_read(c, &r);
            if (rc) { /* this one and every later one */
                rcs[i] = rc;
                pending--;
                continue;
            }
            if (r->type != REDIS_REPLY_ERROR) {
                replies[i] = r;
                rcs[i] = 0;
                pending--;
                continue;
            }
            if (round == 0 && strncmp(r->str, "NOSCRIPT", 8) == 0) {
                noscript = true; /* stays pending */
            } else {
                char w[160];
                rcs[i] = mpx__fail(MPX_EREDIS, "redis %s: %.*s failed: %s", where(c, w, sizeof w),
                                   (int)cmds[i]->lens[0], cmds[i]->argv[0], r->str);
                count_error(c);
                pending--;
            }
            freeReplyObject(r);
        }
        if (noscript && (rc = load_scripts(c)) != 0)
            for (size_t i = 0; i < n; i++)
                if (rcs[i] == PIPE_PENDING) {
                    rcs[i] = rc;
                    pending--;
                }
    }
    for (size_t i = 0; i < n; i++)
        if (rcs[i])
            return rcs[i];
    return 0;
}

int mpx__conn_pipeline(mpx__conn_t *c, size_t n, mpx__argv_t *const *cmds,
                       redisReply **replies, int *rcs)
{
    sigpipe_guard_t g;
    sigpipe_block(&g);
    int rc = c->ep->cluster ? mpx__cluster_pipeline(c, n, cmds, replies, rcs)
                            : pipeline_single(c, n, cmds, replies, rcs);
    sigpipe_restore(&g);
    return rc;
}

int mpx__conn_refresh(mpx__conn_t *c, uint32_t max_age_ms)
{
    if (!c->ep->cluster)
        return 0;
    sigpipe_guard_t g;
    sigpipe_block(&g);
    int rc = mpx__cluster_refresh(c, max_age_ms);
    sigpipe_restore(&g);
    return rc;
}

/* ---- per node (cluster.h) ---------------------------------------------------- */

size_t mpx__conn_nodes(mpx__conn_t *c)
{
    return c->ep->cluster ? mpx__cluster_nodes(c) : 1;
}

const char *mpx__conn_node_name(mpx__conn_t *c, size_t i)
{
    static _Thread_local char name[300];
    if (c->ep->cluster)
        return mpx__cluster_node_name(c, i);
    return i == 0 ? where(c, name, sizeof name) : NULL;
}

const char *mpx__conn_slot_node(mpx__conn_t *c, unsigned slot)
{
    if (c->ep->cluster)
        return mpx__cluster_slot_node(c, slot);
    return mpx__conn_node_name(c, 0);
}

int mpx__conn_node_command(mpx__conn_t *c, size_t i, mpx__argv_t *a, redisReply **out)
{
    if (!c->ep->cluster && i != 0) {
        *out = NULL;
        return mpx__fail(MPX_EINVAL, "redis: no node #%zu (a single Redis has one)", i);
    }
    sigpipe_guard_t g;
    sigpipe_block(&g);
    int rc = c->ep->cluster ? mpx__cluster_node_command(c, i, a, out) : conn_command(c, a, out);
    sigpipe_restore(&g);
    return rc;
}

/* ---- pipelines of many commands --------------------------------------------- */

int mpx__pipe_init(mpx__pipe_t *p, size_t cap)
{
    memset(p, 0, sizeof *p);
    if (cap == 0)
        cap = 1;
    p->cmds = calloc(cap, sizeof *p->cmds);
    p->cp = calloc(cap, sizeof *p->cp);
    p->rep = calloc(cap, sizeof *p->rep);
    p->rcs = calloc(cap, sizeof *p->rcs);
    if (!p->cmds || !p->cp || !p->rep || !p->rcs) {
        mpx__pipe_free(p);
        return MPX_ENOMEM;
    }
    p->cap = cap;
    return 0;
}

mpx__argv_t *mpx__pipe_add(mpx__pipe_t *p)
{
    if (p->n >= p->cap)
        return NULL;
    mpx__argv_t *a = &p->cmds[p->n];
    mpx__argv_reset(a);
    p->cp[p->n++] = a;
    return a;
}

int mpx__pipe_run(mpx__pipe_t *p, mpx__conn_t *c)
{
    for (size_t i = 0; i < p->n; i++)
        mpx__argv_finish(&p->cmds[i]);
    return p->n ? mpx__conn_pipeline(c, p->n, p->cp, p->rep, p->rcs) : 0;
}

void mpx__pipe_clear(mpx__pipe_t *p)
{
    for (size_t i = 0; i < p->n; i++) {
        if (p->rep[i])
            freeReplyObject(p->rep[i]);
        p->rep[i] = NULL;
        p->rcs[i] = 0;
    }
    p->n = 0;
}

void mpx__pipe_free(mpx__pipe_t *p)
{
    if (p->rep)
        mpx__pipe_clear(p);
    for (size_t i = 0; p->cmds && i < p->cap; i++)
        mpx__argv_free(&p->cmds[i]);
    free(p->cmds);
    free(p->cp);
    free(p->rep);
    free(p->rcs);
    memset(p, 0, sizeof *p);
}
