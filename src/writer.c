/*
 * writer.c - the writer thread: queued spark changes -> Redis batches.
 *
 * Producers (gateway threads in mpx_connect / mpx_disconnect) append a
 * change to the queue under w->mu, while holding the spark's table shard
 * lock, so the queue order of one id's changes is the order in which the
 * table saw them. They never touch the network.
 *
 * The writer thread takes the whole queue when it holds batch_max changes
 * or its oldest change waited batch_delay_ms, and sends it as pipelined
 * MULTI/EXEC transactions of at most batch_max changes each. Within a
 * transaction, runs of consecutive connects become variadic HSET + SADD,
 * runs of disconnects one EVALSHA of the conditional-delete script (the
 * hash field goes only while it still names this server), each command
 * carrying at most MPX__CMD_IDS ids. Order is kept, so the result equals
 * applying the changes one by one; every batch is idempotent, so a failed
 * batch is retried whole (reconnecting with backoff) until it is written,
 * the registry is unregistered, or destroy gives up.
 *
 * While this server is not registered (state != REGISTERED) nothing is
 * written: changes wait in the queue and go out once it is.
 *
 * Resync: when the heartbeat finds this server missing from Redis (reaped
 * during a pause, Redis restarted empty), it asks for every spark in the
 * local table to be written again; the writer walks the table shard by
 * shard and writes connects for all of them.
 *
 * Invariants: committed <= queued (sequence numbers); `busy` is true while
 * a batch is in flight, and mpx__writer_activate(NULL) waits for it to
 * clear, so after unregister no batch can recreate this server's keys.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define MPX__CMD_IDS 1000 /* ids per HSET / SADD / script call */

typedef struct op {
    uint32_t off;  /* offset of the id in the arena */
    uint16_t len;
    uint8_t kind;  /* MPX__OP_CONNECT / MPX__OP_DISCONNECT */
} op_t;

typedef struct opq {
    op_t *ops;
    size_t n, cap;
    mpx__buf_t arena;
} opq_t;

struct mpx__writer {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;      /* producers -> writer: work, stop, activate */
    pthread_cond_t done;      /* writer -> flushers / deactivate: progress */
    opq_t q;                  /* under mu */
    uint64_t oldest_ms;       /* enqueue time of q's first change */
    uint64_t seq_queued;      /* under mu */
    uint64_t seq_committed;   /* under mu */
    bool active, busy, stop, resync;
    uint64_t stop_deadline_ms;
    char addr[MPX_ADDRESS_MAX + 1]; /* under mu; valid while active */
    mpx__conn_t conn;         /* writer thread only */
};

static int opq_push(opq_t *q, int kind, const void *id, size_t len)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 1024;
        op_t *o = realloc(q->ops, cap * sizeof *o);
        if (!o)
            return MPX_ENOMEM;
        q->ops = o;
        q->cap = cap;
    }
    if (q->arena.len + len > UINT32_MAX)
        return MPX_ENOMEM;
    uint32_t off = (uint32_t)q->arena.len;
    if (mpx__buf_append(&q->arena, id, len))
        return MPX_ENOMEM;
    q->ops[q->n++] = (op_t){off, (uint16_t)len, (uint8_t)kind};
    return 0;
}

static void opq_clear(opq_t *q)
{
    q->n = 0;
    q->arena.len = 0;
}

static void opq_free(opq_t *q)
{
    free(q->ops);
    mpx__buf_free(&q->arena);
    memset(q, 0, sizeof *q);
}

static void deadline_ts(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ---- building and sending a batch ---------------------------------------- */

typedef struct batch_ctx {
    mpx_t *m;
    const char *addr;
    mpx__argv_t a;
} batch_ctx_t;

/* Append the commands for ops[i..j) (all of one kind) to the pipeline.
 * Returns the number of commands appended, or an error. */
static int append_run(batch_ctx_t *b, mpx__conn_t *c, const opq_t *q, size_t i, size_t j)
{
    mpx_t *m = b->m;
    int cmds = 0, rc;
    const char *addr = b->addr;
    size_t alen = strlen(addr);
    for (size_t s = i; s < j; s += MPX__CMD_IDS) {
        size_t e = s + MPX__CMD_IDS < j ? s + MPX__CMD_IDS : j;
        if (q->ops[i].kind == MPX__OP_CONNECT) {
            mpx__argv_reset(&b->a);
            rc = mpx__argv_push(&b->a, "HSET", 4);
            rc |= mpx__argv_push(&b->a, m->keys.sparks, m->keys.sparks_len);
            for (size_t k = s; k < e; k++) {
                rc |= mpx__argv_push(&b->a, q->arena.data + q->ops[k].off, q->ops[k].len);
                rc |= mpx__argv_push(&b->a, addr, alen);
            }
            if (rc)
                return MPX_ENOMEM;
            if ((rc = mpx__conn_append(c, &b->a)))
                return rc;
            mpx__argv_reset(&b->a);
            rc = mpx__argv_push(&b->a, "SADD", 4);
            rc |= mpx__key_set(&m->keys, addr, &b->a);
            for (size_t k = s; k < e; k++)
                rc |= mpx__argv_push(&b->a, q->arena.data + q->ops[k].off, q->ops[k].len);
            if (rc)
                return MPX_ENOMEM;
            if ((rc = mpx__conn_append(c, &b->a)))
                return rc;
            cmds += 2;
        } else {
            mpx__argv_reset(&b->a);
            rc = mpx__argv_push(&b->a, "EVALSHA", 7);
            rc |= mpx__argv_push(&b->a, c->shas[MPX__SCRIPT_DISCONNECT], 40);
            rc |= mpx__argv_push(&b->a, "2", 1);
            rc |= mpx__argv_push(&b->a, m->keys.sparks, m->keys.sparks_len);
            rc |= mpx__key_set(&m->keys, addr, &b->a);
            rc |= mpx__argv_push(&b->a, addr, alen);
            for (size_t k = s; k < e; k++)
                rc |= mpx__argv_push(&b->a, q->arena.data + q->ops[k].off, q->ops[k].len);
            if (rc)
                return MPX_ENOMEM;
            if ((rc = mpx__conn_append(c, &b->a)))
                return rc;
            cmds += 1;
        }
    }
    return cmds;
}

/* Send ops[from..to) as one MULTI/EXEC. 0 or an error (message set). */
static int send_tx(batch_ctx_t *b, mpx__conn_t *c, const opq_t *q, size_t from, size_t to)
{
    int rc;
    mpx__argv_reset(&b->a);
    mpx__argv_push(&b->a, "MULTI", 5);
    if ((rc = mpx__conn_append(c, &b->a)))
        return rc;
    int cmds = 0;
    for (size_t i = from; i < to;) {
        size_t j = i + 1;
        while (j < to && q->ops[j].kind == q->ops[i].kind)
            j++;
        int n = append_run(b, c, q, i, j);
        if (n < 0)
            return n;
        cmds += n;
        i = j;
    }
    mpx__argv_reset(&b->a);
    mpx__argv_push(&b->a, "EXEC", 4);
    if ((rc = mpx__conn_append(c, &b->a)))
        return rc;

    /* Replies: +OK, cmds x +QUEUED, then the EXEC array. */
    int first_err = 0;
    char errbuf[256] = "";
    for (int k = 0; k < cmds + 2; k++) {
        redisReply *r;
        if ((rc = mpx__conn_read(c, &r)))
            return rc;
        if (r->type == REDIS_REPLY_ERROR && !first_err) {
            first_err = MPX_EREDIS;
            snprintf(errbuf, sizeof errbuf, "%s", r->str);
        }
        if (k == cmds + 1 && !first_err) {
            if (r->type != REDIS_REPLY_ARRAY) {
                first_err = MPX_EREDIS;
                snprintf(errbuf, sizeof errbuf, "EXEC aborted");
            } else {
                for (size_t e = 0; e < r->elements; e++) {
                    if (r->element[e]->type == REDIS_REPLY_ERROR) {
                        first_err = MPX_EREDIS;
                        snprintf(errbuf, sizeof errbuf, "%s", r->element[e]->str);
                        break;
                    }
                }
            }
        }
        freeReplyObject(r);
    }
    if (first_err) {
        if (strncmp(errbuf, "NOSCRIPT", 8) == 0)
            mpx__conn_close(c); /* reconnect reloads the scripts */
        if (c->error_counter)
            atomic_fetch_add_explicit(c->error_counter, 1, memory_order_relaxed);
        return mpx__fail(MPX_EREDIS, "batch write failed: %s", errbuf);
    }
    return 0;
}

/* Write the whole queue copy `q` (pipelined transactions). */
static int send_all(mpx_t *m, mpx__conn_t *c, const opq_t *q, const char *addr)
{
    batch_ctx_t b = {.m = m, .addr = addr};
    mpx__argv_init(&b.a);
    int rc = mpx__conn_ensure(c, false);
    size_t step = m->opt.batch_max;
    for (size_t i = 0; rc == 0 && i < q->n; i += step) {
        size_t to = i + step < q->n ? i + step : q->n;
        rc = send_tx(&b, c, q, i, to);
        if (rc == 0)
            atomic_fetch_add_explicit(&m->n.batches, 1, memory_order_relaxed);
    }
    mpx__argv_free(&b.a);
    return rc;
}

/* ---- resync ---------------------------------------------------------------- */

typedef struct resync_ctx {
    opq_t q;
    int err;
} resync_ctx_t;

static int collect(const void *id, size_t len, void *data)
{
    resync_ctx_t *r = data;
    if (opq_push(&r->q, MPX__OP_CONNECT, id, len)) {
        r->err = MPX_ENOMEM;
        return 1;
    }
    return 0;
}

/* ---- the thread ------------------------------------------------------------ */

/* Retry `q` until written; false if abandoned (deactivated or stopping past
 * the deadline). Called without w->mu. */
static bool write_until_done(mpx_t *m, mpx__writer_t *w, const opq_t *q, const char *addr)
{
    uint32_t backoff = 50;
    for (unsigned attempt = 0;; attempt++) {
        int rc = send_all(m, &w->conn, q, addr);
        if (rc == 0)
            return true;
        if (attempt == 0 || attempt % 20 == 0)
            mpx__report(m, rc, "writer: %s (%zu changes kept, retrying)", mpx_last_error(), q->n);
        atomic_fetch_add_explicit(&m->n.retries, 1, memory_order_relaxed);
        pthread_mutex_lock(&w->mu);
        bool give_up = !w->active || (w->stop && mpx__now_ms() >= w->stop_deadline_ms);
        if (!give_up) {
            struct timespec ts;
            deadline_ts(&ts, backoff);
            pthread_cond_timedwait(&w->cond, &w->mu, &ts);
            give_up = !w->active || (w->stop && mpx__now_ms() >= w->stop_deadline_ms);
        }
        pthread_mutex_unlock(&w->mu);
        if (give_up)
            return false;
        backoff = backoff < 1000 ? backoff * 2 : 1000;
    }
}

static void *writer_main(void *arg)
{
    mpx_t *m = arg;
    mpx__writer_t *w = m->writer;
    opq_t batch = {0};
    char addr[MPX_ADDRESS_MAX + 1];
#ifdef __linux__
    pthread_setname_np(pthread_self(), "mpx-writer");
#endif
    pthread_mutex_lock(&w->mu);
    for (;;) {
        bool have = w->active && (w->q.n > 0 || w->resync);
        if (!have) {
            if (w->stop)
                break;
            pthread_cond_wait(&w->cond, &w->mu);
            continue;
        }
        /* Wait for a full batch or the delay, unless stopping or resyncing. */
        uint64_t now = mpx__now_ms();
        if (!w->stop && !w->resync && w->q.n < m->opt.batch_max &&
            now < w->oldest_ms + m->opt.batch_delay_ms) {
            struct timespec ts;
            deadline_ts(&ts, w->oldest_ms + m->opt.batch_delay_ms - now);
            pthread_cond_timedwait(&w->cond, &w->mu, &ts);
            continue;
        }
        memcpy(addr, w->addr, sizeof addr);
        bool resync = w->resync;
        w->resync = false;
        /* Take the queue: swap with the (empty) batch buffers. */
        opq_t tmp = w->q;
        w->q = batch;
        batch = tmp;
        uint64_t upto = w->seq_queued;
        w->busy = true;
        pthread_mutex_unlock(&w->mu);

        bool ok = true;
        if (resync) {
            resync_ctx_t r = {0};
            mpx__table_each(m->table, collect, &r);
            if (r.err)
                mpx__report(m, r.err, "writer: out of memory while rewriting local sparks");
            ok = write_until_done(m, w, &r.q, addr);
            opq_free(&r.q);
            if (!ok) {
                pthread_mutex_lock(&w->mu);
                w->resync = w->active; /* still wanted if we only stopped */
                pthread_mutex_unlock(&w->mu);
            }
        }
        if (ok && batch.n > 0)
            ok = write_until_done(m, w, &batch, addr);

        pthread_mutex_lock(&w->mu);
        w->busy = false;
        if (ok || !w->active) {
            /* Written, or dropped because this server unregistered. */
            if (ok)
                atomic_fetch_add_explicit(&m->n.committed, batch.n, memory_order_relaxed);
            if (upto > w->seq_committed)
                w->seq_committed = upto;
            opq_clear(&batch);
        } else {
            /* Stopping past the deadline: keep the batch for the count. */
            pthread_cond_broadcast(&w->done);
            break;
        }
        pthread_cond_broadcast(&w->done);
    }
    pthread_mutex_unlock(&w->mu);
    opq_free(&batch);
    mpx__conn_close(&w->conn);
    return NULL;
}

/* ---- API for the other components ------------------------------------------ */

int mpx__writer_start(mpx_t *m)
{
    mpx__writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&w->cond, &ca);
    pthread_cond_init(&w->done, &ca);
    pthread_condattr_destroy(&ca);
    mpx__conn_init(&w->conn, &m->ep, m->opt.connect_timeout_ms, m->opt.command_timeout_ms,
                   "writer", &m->n.redis_errors);
    m->writer = w;
    if (pthread_create(&w->thread, NULL, writer_main, m) != 0) {
        m->writer = NULL;
        pthread_cond_destroy(&w->cond);
        pthread_cond_destroy(&w->done);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return mpx__fail(MPX_ETHREAD, "cannot start the writer thread");
    }
    return 0;
}

size_t mpx__writer_stop(mpx_t *m, uint32_t timeout_ms)
{
    mpx__writer_t *w = m->writer;
    if (!w)
        return 0;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    w->stop_deadline_ms = mpx__now_ms() + timeout_ms;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    size_t left = (size_t)(w->seq_queued - w->seq_committed);
    opq_free(&w->q);
    pthread_cond_destroy(&w->cond);
    pthread_cond_destroy(&w->done);
    pthread_mutex_destroy(&w->mu);
    free(w);
    m->writer = NULL;
    return left;
}

int mpx__writer_push(mpx_t *m, int kind, const void *id, size_t len)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    int rc = opq_push(&w->q, kind, id, len);
    if (rc == 0) {
        if (w->q.n == 1)
            w->oldest_ms = mpx__now_ms();
        w->seq_queued++;
        if (w->active && (w->q.n == 1 || w->q.n >= m->opt.batch_max))
            pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&w->mu);
    if (rc)
        return mpx__fail(rc, "out of memory queueing a change");
    atomic_fetch_add_explicit(&m->n.queued, 1, memory_order_relaxed);
    return 0;
}

int mpx__writer_flush(mpx_t *m, uint32_t timeout_ms)
{
    mpx__writer_t *w = m->writer;
    uint64_t deadline = mpx__now_ms() + timeout_ms;
    pthread_mutex_lock(&w->mu);
    uint64_t target = w->seq_queued;
    int rc = 0;
    pthread_cond_signal(&w->cond); /* no need to wait out the batch delay */
    while (w->seq_committed < target) {
        uint64_t now = mpx__now_ms();
        if (now >= deadline) {
            rc = mpx__fail(MPX_ETIMEDOUT, "flush: %llu changes not committed after %u ms%s",
                           (unsigned long long)(target - w->seq_committed), timeout_ms,
                           w->active ? "" : " (not registered)");
            break;
        }
        struct timespec ts;
        deadline_ts(&ts, deadline - now < 50 ? deadline - now : 50);
        pthread_cond_timedwait(&w->done, &w->mu, &ts);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void mpx__writer_activate(mpx_t *m, const char *addr)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    if (addr) {
        snprintf(w->addr, sizeof w->addr, "%s", addr);
        w->active = true;
        w->oldest_ms = mpx__now_ms();
        pthread_cond_broadcast(&w->cond);
    } else {
        w->active = false;
        pthread_cond_broadcast(&w->cond);
        while (w->busy)
            pthread_cond_wait(&w->done, &w->mu);
    }
    pthread_mutex_unlock(&w->mu);
}

void mpx__writer_discard(mpx_t *m)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    opq_clear(&w->q);
    w->resync = false;
    w->seq_committed = w->seq_queued;
    pthread_cond_broadcast(&w->done);
    pthread_mutex_unlock(&w->mu);
}

void mpx__writer_resync(mpx_t *m)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    w->resync = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

uint64_t mpx__writer_pending(mpx_t *m)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    uint64_t n = w->seq_queued - w->seq_committed;
    pthread_mutex_unlock(&w->mu);
    return n;
}
