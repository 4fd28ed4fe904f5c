/*
 * writer.c - the writer thread: dirty sparks in the cache -> Redis.
 *
 * Gateway threads change a spark's record in the cache (cache.c) and, when
 * its wanted state now differs from what Redis has, put it on its shard's
 * dirty list; they wake this thread only if it sleeps (one atomic load on
 * the hot path). They never touch the network.
 *
 * A cycle: take every shard's dirty list at once, then pull the records in
 * order, shard by shard, coalescing each to its net change (a spark
 * connected and disconnected since the last commit costs nothing), and send
 * them as MULTI/EXEC transactions of at most batch_max changes: runs of
 * connects become variadic HSET + SADD, runs of disconnects one EVALSHA of
 * the conditional-delete script (the field goes only while it names this
 * server), at most MPX__CMD_IDS ids per command. Two transactions are in
 * flight at a time: the next one is built while Redis executes the current.
 * Each acknowledged transaction updates the records (HAVE) and the commit
 * latency histogram at once. A transaction that fails is retried whole
 * (they are idempotent), reconnecting with backoff, until it is written, the
 * server unregisters, or destroy gives up. A cycle starts when a change
 * waited batch_delay_ms or batch_max changes wait, or a flush asks for one.
 *
 * flush: a caller bumps `requested` and waits until a cycle that started
 * after that (it read `requested` before taking the lists) completes, so
 * every change made before the call is committed.
 *
 * Resync (this server missing from Redis, or Redis restarted): mark every
 * own spark as not written (the cycle rewrites them all), then scan this
 * server's set in Redis and delete the entries the cache does not want
 * (stale data from an old RDB/AOF).
 *
 * Nothing is written while not registered (active == false): changes stay
 * in the cache until registration. Deactivation waits for the cycle in
 * flight, so after unregister no batch can recreate this server's keys.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "cluster.h"

#define MPX__CMD_IDS 1000 /* ids per HSET / SADD / script call */

struct mpx__writer {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* -> writer: work, flush, stop, activate */
    pthread_cond_t done; /* -> waiters: a cycle completed, busy cleared */
    bool active, busy, stop, resync;
    bool held;                     /* single Redis: this thread's connection saw a new
                                    * run_id; no flush is answered until the heartbeat
                                    * has looked (mpx__writer_checked) */
    uint64_t stop_deadline_ms;
    uint64_t requested, completed; /* flush cycles, under mu */
    uint64_t dropped;              /* flushes up to this one: the writer stopped first */
    uint64_t restarts;             /* times `held` was set */
    char addr[MPX_ADDRESS_MAX + 1];
    char gen[64];                  /* sharded: the registration's generation */
    uint8_t *resync_shards;        /* with resync: only these shards (NULL: all) */
    atomic_bool sleeping;          /* the thread waits for work */
    mpx__conn_t conn;              /* writer thread only */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
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

/* ---- one transaction -------------------------------------------------------- */

typedef struct tx {
    mpx__op_t *ops;
    size_t n;
    int cmds;  /* commands between MULTI and EXEC */
} tx_t;

/* Append the commands for ops[i..j) (one kind) to the pipeline. */
static int append_run(mpx_t *m, mpx__conn_t *c, mpx__argv_t *a, const char *addr,
                      const mpx__op_t *ops, size_t i, size_t j, int *cmds)
{
    size_t alen = strlen(addr);
    int rc;
    for (size_t s = i; s < j; s += MPX__CMD_IDS) {
        size_t e = s + MPX__CMD_IDS < j ? s + MPX__CMD_IDS : j;
        if (ops[i].want) {
            mpx__argv_reset(a);
            rc = mpx__argv_push(a, "HSET", 4);
            rc |= mpx__argv_push(a, m->keys.sparks, m->keys.sparks_len);
            for (size_t k = s; k < e; k++) {
                rc |= mpx__argv_push(a, ops[k].id, ops[k].len);
                rc |= mpx__argv_push(a, addr, alen);
            }
            if (rc)
                return mpx__fail(MPX_ENOMEM, "out of memory building a batch");
            if ((rc = mpx__conn_append(c, a)))
                return rc;
            mpx__argv_reset(a);
            rc = mpx__argv_push(a, "SADD", 4);
            rc |= mpx__key_set(&m->keys, addr, a);
            for (size_t k = s; k < e; k++)
                rc |= mpx__argv_push(a, ops[k].id, ops[k].len);
            if (rc)
                return mpx__fail(MPX_ENOMEM, "out of memory building a batch");
            if ((rc = mpx__conn_append(c, a)))
                return rc;
            *cmds += 2;
        } else {
            mpx__argv_reset(a);
            rc = mpx__argv_push(a, "EVALSHA", 7);
            rc |= mpx__argv_push(a, c->shas[MPX__SCRIPT_DISCONNECT], 40);
            rc |= mpx__argv_push(a, "2", 1);
            rc |= mpx__argv_push(a, m->keys.sparks, m->keys.sparks_len);
            rc |= mpx__key_set(&m->keys, addr, a);
            rc |= mpx__argv_push(a, addr, alen);
            for (size_t k = s; k < e; k++)
                rc |= mpx__argv_push(a, ops[k].id, ops[k].len);
            if (rc)
                return mpx__fail(MPX_ENOMEM, "out of memory building a batch");
            if ((rc = mpx__conn_append(c, a)))
                return rc;
            *cmds += 1;
        }
    }
    return 0;
}

/* Queue MULTI, the commands, EXEC into the connection's output buffer and
 * push them to the socket, without reading. */
static int send_tx(mpx_t *m, mpx__conn_t *c, mpx__argv_t *a, const char *addr, tx_t *t)
{
    int rc;
    t->cmds = 0;
    mpx__argv_reset(a);
    mpx__argv_push(a, "MULTI", 5);
    if ((rc = mpx__conn_append(c, a)))
        return rc;
    for (size_t i = 0; i < t->n;) {
        size_t j = i + 1;
        while (j < t->n && t->ops[j].want == t->ops[i].want)
            j++;
        if ((rc = append_run(m, c, a, addr, t->ops, i, j, &t->cmds)))
            return rc;
        i = j;
    }
    mpx__argv_reset(a);
    mpx__argv_push(a, "EXEC", 4);
    if ((rc = mpx__conn_append(c, a)))
        return rc;
    int done = 0;
    while (!done)
        if (redisBufferWrite(c->ctx, &done) != REDIS_OK)
            return mpx__conn_io_error(c, "write");
    return 0;
}

/* Read the replies of a sent transaction: +OK, QUEUED..., EXEC array. */
static int read_tx(mpx__conn_t *c, tx_t *t)
{
    int rc, first_err = 0;
    char errbuf[256] = "";
    for (int k = 0; k < t->cmds + 2; k++) {
        redisReply *r;
        if ((rc = mpx__conn_read(c, &r)))
            return rc;
        if (r->type == REDIS_REPLY_ERROR && !first_err) {
            first_err = MPX_EREDIS;
            snprintf(errbuf, sizeof errbuf, "%s", r->str);
        }
        if (k == t->cmds + 1 && !first_err) {
            if (r->type != REDIS_REPLY_ARRAY) {
                first_err = MPX_EREDIS;
                snprintf(errbuf, sizeof errbuf, "EXEC aborted");
            } else {
                for (size_t e = 0; e < r->elements; e++)
                    if (r->element[e]->type == REDIS_REPLY_ERROR) {
                        first_err = MPX_EREDIS;
                        snprintf(errbuf, sizeof errbuf, "%s", r->element[e]->str);
                        break;
                    }
            }
        }
        freeReplyObject(r);
    }
    if (first_err) {
        /* NOSCRIPT (a SCRIPT FLUSH) or anything else: reconnecting reloads
         * the scripts, and the transaction is retried whole. */
        mpx__conn_close(c);
        if (c->error_counter)
            atomic_fetch_add_explicit(c->error_counter, 1, memory_order_relaxed);
        return mpx__fail(MPX_EREDIS, "batch write failed: %s", errbuf);
    }
    return 0;
}

static void acknowledged(mpx_t *m, tx_t *t)
{
    mpx__cache_committed(m->cache, t->ops, t->n);
    uint64_t now = now_ns();
    for (size_t i = 0; i < t->n; i++)
        mpx__hist_add(&m->commit_hist, now > t->ops[i].t_ns ? (now - t->ops[i].t_ns) / 1000u : 0);
    atomic_fetch_add_explicit(&m->n.committed, t->n, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->n.batches, 1, memory_order_relaxed);
}

/* Should a retry loop give up? (deactivated, or stopping past deadline) */
static bool give_up(mpx__writer_t *w, uint32_t backoff_ms)
{
    pthread_mutex_lock(&w->mu);
    bool g = !w->active || (w->stop && mpx__now_ms() >= w->stop_deadline_ms);
    if (!g && backoff_ms) {
        struct timespec ts;
        deadline_ts(&ts, backoff_ms);
        pthread_cond_timedwait(&w->cond, &w->mu, &ts);
        g = !w->active || (w->stop && mpx__now_ms() >= w->stop_deadline_ms);
    }
    pthread_mutex_unlock(&w->mu);
    return g;
}

/* Write transactions `t[0..nt)` (already built, maybe partly sent) one by
 * one until each is acknowledged. false if abandoned. */
static bool retry_txs(mpx_t *m, mpx__writer_t *w, mpx__argv_t *a, const char *addr, tx_t *t,
                      int nt)
{
    uint32_t backoff = 50;
    for (int i = 0; i < nt;) {
        atomic_fetch_add_explicit(&m->n.retries, 1, memory_order_relaxed);
        int rc = mpx__conn_ensure(&w->conn, false);
        if (rc == 0 && (rc = send_tx(m, &w->conn, a, addr, &t[i])) == 0 &&
            (rc = read_tx(&w->conn, &t[i])) == 0) {
            acknowledged(m, &t[i]);
            i++;
            backoff = 50;
            continue;
        }
        mpx__report(m, rc, "writer: %s (%zu changes kept, retrying)", mpx_last_error(), t[i].n);
        if (give_up(w, backoff))
            return false;
        backoff = backoff < 1000 ? backoff * 2 : 1000;
    }
    return true;
}

/* One cycle: everything taken from the cache now. false if abandoned. */
static bool write_cycle(mpx_t *m, mpx__writer_t *w, const char *addr, tx_t tx[2],
                        mpx__argv_t *a)
{
    size_t coalesced = 0;
    bool ok = true;
    mpx__cache_take(m->cache);
    int inflight = 0; /* transactions sent, replies not read: tx[0], then tx[1] */
    for (;;) {
        if (give_up(w, 0)) {
            /* Unregistered, or destroy's deadline passed: leave the rest
             * (still counted as pending); replies in flight are dropped
             * with the connection. */
            if (inflight)
                mpx__conn_close(&w->conn);
            ok = false;
            break;
        }
        /* Build the next transaction while the previous one executes. */
        tx_t *next = &tx[inflight];
        next->n = mpx__cache_next_ops(m->cache, next->ops, m->opt.batch_max, &coalesced);
        int rc = 0;
        if (next->n > 0) {
            rc = mpx__conn_ensure(&w->conn, false);
            if (rc == 0)
                rc = send_tx(m, &w->conn, a, addr, next);
            if (rc) {
                ok = retry_txs(m, w, a, addr, tx, inflight + 1);
                inflight = 0;
                if (!ok)
                    break;
                continue;
            }
            inflight++;
        }
        if (inflight == 0)
            break;
        if (inflight == 2 || next->n == 0) {
            /* Read the oldest in flight. */
            if ((rc = read_tx(&w->conn, &tx[0])) != 0) {
                mpx__report(m, rc, "writer: %s (retrying)", mpx_last_error());
                ok = retry_txs(m, w, a, addr, tx, inflight);
                inflight = 0;
                if (!ok)
                    break;
                continue;
            }
            acknowledged(m, &tx[0]);
            if (inflight == 2) {
                tx_t tmp = tx[0];
                tx[0] = tx[1];
                tx[1] = tmp;
            }
            inflight--;
        }
    }
    if (coalesced)
        atomic_fetch_add_explicit(&m->n.coalesced, coalesced, memory_order_relaxed);
    mpx__cache_reclaim(m->cache);
    return ok;
}

/* ---- the sharded layout ------------------------------------------------------
 * A cycle pulls rounds of up to sharded_pull() ops, orders each by
 * shard (a counting sort), and sends one `sharded write` script per shard
 * and per MPX__CMD_IDS ids: single-slot commands, pipelined (per master on
 * a cluster) by mpx__conn_pipeline. No MULTI: each script is atomic and is
 * acknowledged on its own; the ones that fail are sent again (they are
 * idempotent) until written or given up. */

typedef struct sgroup {
    size_t first, n;  /* ops[first .. first + n) of one shard */
    uint32_t shard;
    bool done;
} sgroup_t;

typedef struct sbatch {
    mpx__op_t *ops;        /* ordered by shard */
    uint32_t *shard;       /* per op, before ordering */
    size_t *count;         /* nshards + 1 */
    sgroup_t *g;
    size_t ng, cap_g;
    mpx__pipe_t pipe;      /* one command per group not yet written */
} sbatch_t;

static void sbatch_free(sbatch_t *b)
{
    free(b->ops);
    free(b->shard);
    free(b->count);
    free(b->g);
    mpx__pipe_free(&b->pipe);
    memset(b, 0, sizeof *b);
}

static int sbatch_init(sbatch_t *b, size_t batch_max, uint32_t nshards)
{
    memset(b, 0, sizeof *b);
    b->cap_g = batch_max < (size_t)nshards ? batch_max : (size_t)nshards;
    b->cap_g += batch_max / MPX__CMD_IDS + 1;
    b->ops = malloc(batch_max * sizeof *b->ops);
    b->shard = malloc(batch_max * sizeof *b->shard);
    b->count = malloc(((size_t)nshards + 1) * sizeof *b->count);
    b->g = malloc(b->cap_g * sizeof *b->g);
    if (mpx__pipe_init(&b->pipe, b->cap_g) || !b->ops || !b->shard || !b->count || !b->g) {
        sbatch_free(b);
        return MPX_ENOMEM;
    }
    return 0;
}

/* Order ops[0..n) by shard into b->ops and cut it into groups. */
static void sbatch_group(mpx_t *m, sbatch_t *b, const mpx__op_t *ops, size_t n)
{
    uint32_t ns = m->keys.nshards;
    memset(b->count, 0, ((size_t)ns + 1) * sizeof *b->count);
    for (size_t i = 0; i < n; i++) {
        b->shard[i] = mpx__key_shard(&m->keys, ops[i].id, ops[i].len);
        b->count[b->shard[i] + 1]++;
    }
    for (uint32_t s = 0; s < ns; s++)
        b->count[s + 1] += b->count[s];
    for (size_t i = 0; i < n; i++)
        b->ops[b->count[b->shard[i]]++] = ops[i];
    /* Placed: count[s] is now the end of shard s's run (the start of the
     * next); cut each run into groups of at most MPX__CMD_IDS. */
    b->ng = 0;
    for (uint32_t s = 0; s < ns; s++) {
        size_t end = b->count[s];
        for (size_t p = s ? b->count[s - 1] : 0; p < end; p += MPX__CMD_IDS) {
            size_t q = end - p < MPX__CMD_IDS ? end : p + MPX__CMD_IDS;
            b->g[b->ng++] = (sgroup_t){p, q - p, s, false};
        }
    }
}

/* Send every group not yet done, once. Acknowledges the ones written.
 * Returns 0 when all are done. */
static int sbatch_send(mpx_t *m, mpx__writer_t *w, sbatch_t *b, const char *addr,
                       const char *gen)
{
    mpx__pipe_t *p = &b->pipe;
    mpx__pipe_clear(p);
    for (size_t i = 0; i < b->ng; i++)
        if (!b->g[i].done &&
            mpx__cmd_s_write(&m->keys, mpx__shas(&w->conn), b->g[i].shard, addr, gen,
                             b->ops + b->g[i].first, b->g[i].n, mpx__pipe_add(p)))
            return mpx__fail(MPX_ENOMEM, "out of memory building a batch");
    if (p->n == 0)
        return 0;
    int rc = mpx__pipe_run(p, &w->conn);
    size_t j = 0;
    for (size_t i = 0; i < b->ng; i++) {
        if (b->g[i].done)
            continue;
        if (p->rcs[j] == 0 && p->rep[j]) {
            tx_t t = {b->ops + b->g[i].first, b->g[i].n, 0};
            acknowledged(m, &t);
            b->g[i].done = true;
        }
        j++;
    }
    mpx__pipe_clear(p);
    return rc;
}

/* Changes pulled per round. A round's changes are split over the shards,
 * so in the sharded layout a round takes up to MPX__CMD_IDS per shard (at
 * most 16 batch_max): fewer, fuller scripts. Measured with 64 shards, 1M
 * sparks: 619k -> 758k sparks/s on one Redis (the node layout: 756k),
 * 439k -> 567k on a 3-master cluster. */
static size_t sharded_pull(const mpx_t *m)
{
    size_t b = m->opt.batch_max;
    if (m->keys.layout != MPX_LAYOUT_SHARDED)
        return b;
    size_t want = (size_t)m->keys.nshards * MPX__CMD_IDS;
    return want < b ? b : want > 16 * b ? 16 * b : want;
}

static bool write_cycle_sharded(mpx_t *m, mpx__writer_t *w, const char *addr, const char *gen,
                                tx_t *tx, sbatch_t *b)
{
    size_t coalesced = 0;
    bool ok = true;
    mpx__cache_take(m->cache);
    for (;;) {
        if (give_up(w, 0)) {
            ok = false;
            break;
        }
        tx->n = mpx__cache_next_ops(m->cache, tx->ops, sharded_pull(m), &coalesced);
        if (tx->n == 0)
            break;
        sbatch_group(m, b, tx->ops, tx->n);
        uint32_t backoff = 50;
        for (unsigned attempt = 0;; attempt++) {
            int rc = mpx__conn_ensure(&w->conn, false);
            if (rc == 0)
                rc = sbatch_send(m, w, b, addr, gen);
            if (rc == 0)
                break;
            atomic_fetch_add_explicit(&m->n.retries, 1, memory_order_relaxed);
            size_t left = 0;
            for (size_t i = 0; i < b->ng; i++)
                left += b->g[i].done ? 0 : b->g[i].n;
            if (strstr(mpx_last_error(), "STALEGEN")) {
                /* This registration was retired (a pause past the lease)
                 * and drained, or replaced: the heartbeat registers again
                 * and the writer restarts under the new generation. */
                if (attempt == 0)
                    mpx__report(m, rc, "writer: %s; %zu changes kept until this server is "
                                "registered again", mpx_last_error(), left);
                mpx__lifecycle_kick(m);
            } else {
                mpx__report(m, rc, "writer: %s (%zu changes kept, retrying)", mpx_last_error(),
                            left);
            }
            if (give_up(w, backoff)) {
                ok = false;
                break;
            }
            backoff = backoff < 1000 ? backoff * 2 : 1000;
        }
        if (!ok)
            break;
    }
    if (coalesced)
        atomic_fetch_add_explicit(&m->n.coalesced, coalesced, memory_order_relaxed);
    mpx__cache_reclaim(m->cache);
    return ok;
}

/* After a resync's rewrite: remove this server's stale entries from Redis:
 * ids in its set of which the cache has no record at all. (Records the
 * cache has are settled by the normal path: the resync queued them all.
 * Deleting one of those here would go behind the cache's back.) An id
 * connected while this runs is written by a later cycle, after this. */
static bool remove_stale(mpx_t *m, mpx__writer_t *w, const char *addr, const char *gen,
                         const uint8_t *only, mpx__argv_t *a)
{
    size_t removed = 0;
    for (uint32_t sh = 0; sh < m->keys.nshards; sh++) {
        if (only && !only[sh])
            continue;
        char cursor[32] = "0";
        for (unsigned rounds = 0; rounds < 10000000u; rounds++) {
            if (give_up(w, 0))
                return false; /* unregistered, or destroy's deadline passed */
            mpx__argv_reset(a);
            mpx__argv_push(a, "SSCAN", 5);
            mpx__key_own(&m->keys, sh, addr, gen, a);
            mpx__argv_push(a, cursor, strlen(cursor));
            mpx__argv_push(a, "COUNT", 5);
            mpx__argv_push(a, "1000", 4);
            redisReply *r;
            int rc = mpx__conn_command(&w->conn, a, &r);
            if (rc) {
                mpx__report(m, rc, "writer: reconciling stale entries: %s", mpx_last_error());
                if (give_up(w, 200))
                    return false;
                snprintf(cursor, sizeof cursor, "0"); /* start the scan over */
                continue;
            }
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
                r->element[0]->type != REDIS_REPLY_STRING ||
                r->element[1]->type != REDIS_REPLY_ARRAY) {
                freeReplyObject(r);
                mpx__report(m, MPX_EPROTO, "writer: unexpected SSCAN reply while reconciling");
                return true;
            }
            snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
            redisReply *ids = r->element[1];
            mpx__argv_t del;
            mpx__argv_init(&del);
            mpx__argv_push(&del, "EVALSHA", 7);
            mpx__argv_push(&del, w->conn.shas[MPX__SCRIPT_DISCONNECT], 40);
            mpx__argv_push(&del, "2", 1);
            mpx__key_hash(&m->keys, sh, &del);
            mpx__key_own(&m->keys, sh, addr, gen, &del);
            mpx__argv_push(&del, addr, strlen(addr));
            size_t base = del.argc;
            for (size_t i = 0; i < ids->elements; i++) {
                redisReply *e = ids->element[i];
                if (e->type == REDIS_REPLY_STRING && e->len > 0 && e->len <= MPX_ID_MAX &&
                    !mpx__cache_has_own(m->cache, e->str, e->len))
                    mpx__argv_push(&del, e->str, e->len);
            }
            if (del.argc > base) {
                redisReply *dr;
                removed += del.argc - base;
                if (mpx__conn_command(&w->conn, &del, &dr) == 0)
                    freeReplyObject(dr);
            }
            mpx__argv_free(&del);
            freeReplyObject(r);
            if (strcmp(cursor, "0") == 0)
                break;
        }
    }
    if (removed)
        mpx__report(m, MPX_ESTATE, "writer: removed %zu stale entries of %s left by an old "
                    "Redis state", removed, addr);
    return true;
}

/* ---- rewriting after a failover ----------------------------------------------
 * A promoted replica may lack the last writes its master acknowledged. Only
 * the shards whose slot failed over are rewritten (a node restart: all). */

typedef struct pick_ctx {
    const mpx__keys_t *k;
    const uint8_t *only;
} pick_ctx_t;

static bool pick_shard(const void *id, size_t len, void *ctx)
{
    const pick_ctx_t *p = ctx;
    return p->only[mpx__key_shard(p->k, id, len)] != 0;
}

/* Under w->mu: ask for a rewrite of the shards in `only` (NULL: all). */
static void want_resync(mpx_t *m, mpx__writer_t *w, const uint8_t *only)
{
    if (w->resync && !w->resync_shards)
        return; /* everything is to be rewritten already */
    if (!only) {
        free(w->resync_shards);
        w->resync_shards = NULL;
    } else if (!w->resync || w->resync_shards) {
        if (!w->resync_shards && !(w->resync_shards = calloc(m->keys.nshards, 1))) {
            w->resync = true; /* out of memory: rewrite everything */
            return;
        }
        for (uint32_t s = 0; s < m->keys.nshards; s++)
            w->resync_shards[s] |= only[s];
    }
    w->resync = true;
}

/* Under w->mu, cluster only: after a failover, which shards to rewrite. */
static void failover_resync(mpx_t *m, mpx__writer_t *w)
{
    uint8_t lost[2048];
    if (!mpx__conn_take_lost_slots(&w->conn, lost))
        return;
    uint32_t ns = m->keys.nshards, n = 0;
    uint8_t *only = calloc(ns, 1);
    for (uint32_t s = 0; only && s < ns; s++) {
        unsigned slot = mpx__shard_slot(&m->keys, s);
        only[s] = (lost[slot / 8] >> (slot % 8)) & 1u;
        n += only[s];
    }
    if (only && n == 0) {
        free(only); /* none of our shards' slots */
        return;
    }
    mpx__report(m, MPX_ESTATE, "writer: a Redis Cluster master failed over or restarted; "
                "rewriting the local sparks of %u of %u shards", only ? n : ns, ns);
    want_resync(m, w, only && n < ns ? only : NULL);
    free(only);
}

/* Under w->mu: this thread's connection came back to a Redis that restarted
 * (or, on a cluster, saw a failover). Cluster: rewrite the shards whose
 * slots failed over. Single Redis: the heartbeat decides (rewrite, or
 * register again under a new generation in the sharded layout; a rewrite
 * under the current generation after an empty restart would recreate
 * shard markers nothing drains), so hold flush answers until it has
 * looked. true: kick the heartbeat. */
static bool note_restart(mpx_t *m, mpx__writer_t *w)
{
    if (!w->conn.run_id_changed)
        return false;
    w->conn.run_id_changed = false;
    if (!w->active)
        return false; /* activation rewrites everything */
    if (m->ep.cluster) {
        failover_resync(m, w);
        return false;
    }
    w->held = true;
    w->restarts++;
    return true;
}

static void *writer_main(void *arg)
{
    mpx_t *m = arg;
    mpx__writer_t *w = m->writer;
    mpx__thread_init("mpx-writer");
    tx_t tx[2];
    for (int i = 0; i < 2; i++) {
        tx[i].ops = malloc(sharded_pull(m) * sizeof *tx[i].ops);
        tx[i].n = 0;
    }
    mpx__argv_t a;
    mpx__argv_init(&a);
    char addr[MPX_ADDRESS_MAX + 1], gen[64];
    uint64_t first_seen_ms = 0; /* when the writer first saw pending work */
    bool sharded = m->keys.layout == MPX_LAYOUT_SHARDED;
    sbatch_t sb;
    bool sb_ok = !sharded || sbatch_init(&sb, sharded_pull(m), m->keys.nshards) == 0;
    if (!sb_ok)
        mpx__report(m, MPX_ENOMEM, "writer: out of memory; nothing will be written");

    pthread_mutex_lock(&w->mu);
    uint64_t next_refresh_ms = 0;
    while (tx[0].ops && tx[1].ops && sb_ok) {
        if (m->ep.cluster && w->active && mpx__now_ms() >= next_refresh_ms) {
            /* A failover may have lost acknowledged writes (replication is
             * asynchronous): check the slot map about once a second, and
             * rewrite everything when a replica was promoted. */
            pthread_mutex_unlock(&w->mu);
            mpx__conn_refresh(&w->conn, 1000);
            pthread_mutex_lock(&w->mu);
            next_refresh_ms = mpx__now_ms() + 1000;
        }
        if (note_restart(m, w)) {
            pthread_mutex_unlock(&w->mu);
            mpx__lifecycle_kick(m);
            pthread_mutex_lock(&w->mu);
        }
        mpx__cache_stats_t cs;
        mpx__cache_stats(m->cache, &cs);
        bool flush_wanted = w->requested > w->completed && !w->held;
        bool work = cs.pending > 0 || flush_wanted || w->resync;
        if (w->stop && (!w->active || !work))
            break;
        if (!w->active) {
            /* Nothing can be written until registration (activate signals
             * us); flush waiters time out by themselves. Producers do not
             * wake us: `sleeping` stays false. */
            struct timespec ts;
            deadline_ts(&ts, 1000);
            pthread_cond_timedwait(&w->cond, &w->mu, &ts);
            first_seen_ms = 0;
            continue;
        }
        if (!work) {
            /* Sleep; a producer seeing `sleeping` signals us. The re-check
             * after setting it closes the race with a producer that queued
             * just before (seq_cst fences on both sides). */
            atomic_store(&w->sleeping, true);
            atomic_thread_fence(memory_order_seq_cst); /* store before the re-check */
            mpx__cache_stats(m->cache, &cs);
            if (!w->stop && (!w->active || (cs.pending == 0 && !w->resync &&
                                            (w->requested <= w->completed || w->held)))) {
                struct timespec ts;
                deadline_ts(&ts, 1000);
                pthread_cond_timedwait(&w->cond, &w->mu, &ts);
            }
            atomic_store(&w->sleeping, false);
            first_seen_ms = 0;
            continue;
        }
        uint64_t now = mpx__now_ms();
        if (!first_seen_ms)
            first_seen_ms = now;
        if (!w->stop && !flush_wanted && !w->resync && cs.pending < m->opt.batch_max &&
            now < first_seen_ms + m->opt.batch_delay_ms) {
            struct timespec ts;
            deadline_ts(&ts, first_seen_ms + m->opt.batch_delay_ms - now);
            pthread_cond_timedwait(&w->cond, &w->mu, &ts);
            continue;
        }
        first_seen_ms = 0;
        uint64_t cycle = w->requested;
        bool resync = w->resync;
        uint8_t *only = w->resync_shards;
        w->resync = false;
        w->resync_shards = NULL;
        memcpy(addr, w->addr, sizeof addr);
        memcpy(gen, w->gen, sizeof gen);
        w->busy = true;
        pthread_mutex_unlock(&w->mu);

        pick_ctx_t pick = {&m->keys, only};
        if (resync && only)
            mpx__cache_mark_unwritten_if(m->cache, now_ns(), pick_shard, &pick);
        else if (resync)
            mpx__cache_mark_unwritten(m->cache, now_ns());
        bool ok = sharded ? write_cycle_sharded(m, w, addr, gen, &tx[0], &sb)
                          : write_cycle(m, w, addr, tx, &a);
        if (ok && resync)
            ok = remove_stale(m, w, addr, gen, only, &a);

        pthread_mutex_lock(&w->mu);
        w->busy = false;
        bool kick = note_restart(m, w);
        if (ok) {
            /* Not while a rewrite is owed (Redis restarted or failed over
             * during the cycle): the next cycle, the rewrite, answers. */
            if (cycle > w->completed && !w->resync && !w->held)
                w->completed = cycle;
        } else if (resync && w->active) {
            want_resync(m, w, only); /* still to do */
        }
        free(only);
        pthread_cond_broadcast(&w->done);
        if (kick) {
            pthread_mutex_unlock(&w->mu);
            mpx__lifecycle_kick(m);
            pthread_mutex_lock(&w->mu);
        }
        if (!ok && w->stop)
            break;
    }
    pthread_mutex_unlock(&w->mu);
    mpx__cache_reclaim(m->cache);
    if (sharded && sb_ok)
        sbatch_free(&sb);
    free(tx[0].ops);
    free(tx[1].ops);
    mpx__argv_free(&a);
    mpx__conn_free(&w->conn);
    return NULL;
}

/* ---- API for the other components --------------------------------------------- */

int mpx__writer_start(mpx_t *m)
{
    mpx__writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cond, NULL);
    pthread_cond_init(&w->done, NULL);
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
    mpx__cache_stats_t cs;
    mpx__cache_stats(m->cache, &cs);
    pthread_cond_destroy(&w->cond);
    pthread_cond_destroy(&w->done);
    pthread_mutex_destroy(&w->mu);
    free(w->resync_shards);
    free(w);
    m->writer = NULL;
    return (size_t)cs.pending;
}

void mpx__writer_kick(mpx_t *m)
{
    mpx__writer_t *w = m->writer;
    atomic_thread_fence(memory_order_seq_cst); /* the queued change before the check */
    if (atomic_load(&w->sleeping)) {
        pthread_mutex_lock(&w->mu);
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->mu);
    }
}

int mpx__writer_flush(mpx_t *m, uint32_t timeout_ms)
{
    mpx__writer_t *w = m->writer;
    uint64_t deadline = mpx__now_ms() + timeout_ms;
    pthread_mutex_lock(&w->mu);
    uint64_t target = ++w->requested;
    pthread_cond_signal(&w->cond);
    int rc = 0;
    while (w->completed < target) {
        if (w->dropped >= target) {
            rc = mpx__fail(MPX_ESTATE, "flush: the writer stopped before the changes were "
                           "written (unregistered, the address taken over, or registration "
                           "given up)");
            break;
        }
        uint64_t now = mpx__now_ms();
        if (now >= deadline) {
            mpx__cache_stats_t cs;
            mpx__cache_stats(m->cache, &cs);
            rc = mpx__fail(MPX_ETIMEDOUT, "flush: not committed after %u ms (%llu sparks "
                           "pending%s)", timeout_ms, (unsigned long long)cs.pending,
                           w->active ? "" : ", not registered");
            break;
        }
        struct timespec ts;
        deadline_ts(&ts, deadline - now < 50 ? deadline - now : 50);
        pthread_cond_timedwait(&w->done, &w->mu, &ts);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

static void activate(mpx_t *m, const char *addr, const char *gen, bool pause);

void mpx__writer_activate(mpx_t *m, const char *addr, const char *gen)
{
    activate(m, addr, gen, false);
}

void mpx__writer_pause(mpx_t *m)
{
    activate(m, NULL, NULL, true);
}

static void activate(mpx_t *m, const char *addr, const char *gen, bool pause)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    if (addr) {
        snprintf(w->addr, sizeof w->addr, "%s", addr);
        snprintf(w->gen, sizeof w->gen, "%s", gen ? gen : "");
        w->active = true;
        /* Under the same lock: a cycle run between the activation and the
         * request would find the ids a refused (STALEGEN) or paused cycle
         * held still marked in flight, take nothing and answer flush
         * waiters (test_sharded_faults flush_after_stalegen_waits_for_rewrite). */
        want_resync(m, w, NULL);
        pthread_cond_broadcast(&w->cond);
    } else {
        w->active = false;
        w->resync = false;
        free(w->resync_shards);
        w->resync_shards = NULL;
        pthread_cond_broadcast(&w->cond);
        while (w->busy)
            pthread_cond_wait(&w->done, &w->mu);
        w->held = false;
        if (!pause) {
            /* Nothing will be written any more: release flush waiters,
             * with MPX_ESTATE (their changes were not all written). */
            w->dropped = w->requested;
            pthread_cond_broadcast(&w->done);
        }
    }
    pthread_mutex_unlock(&w->mu);
}

uint64_t mpx__writer_restarts(mpx_t *m)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    uint64_t n = w->restarts;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void mpx__writer_checked(mpx_t *m, uint64_t restarts)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    if (w->held && w->restarts == restarts) {
        w->held = false;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->mu);
}

void mpx__writer_resync(mpx_t *m)
{
    mpx__writer_t *w = m->writer;
    pthread_mutex_lock(&w->mu);
    want_resync(m, w, NULL);
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->mu);
}
