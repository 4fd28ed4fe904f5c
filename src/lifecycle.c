/*
 * lifecycle.c - register, unregister, the heartbeat thread and reaping.
 *
 * Threads: the heartbeat thread ("mpx-heartbeat") and callers of
 * mpx_register / mpx_unregister / mpx_reap. life_mu serialises the
 * lifecycle work and guards life_conn; state and address change with both
 * life_mu and addr_mu held.
 *
 * The heartbeat ticks every min(interval - latency, lease / 3) ms. Each tick
 * runs one script that refreshes the alive key (PSETEX interval, value =
 * epoch ms, as the original) and the address lease, and reports whether
 * this server was still in the servers set; if it was not (it was reaped
 * during a long pause, or Redis restarted empty) it has put itself back,
 * and the writer rewrites every local spark. A changed Redis run_id also
 * triggers the rewrite. Every interval - latency ms it reaps.
 *
 * Reaping (docs/keyspace.md, "Cleaning a server in chunks"): for each other
 * registered address, the retire script atomically checks that neither
 * its alive key nor its lease exists (we never reap a server whose alive
 * key exists, and never compare clocks), removes it from the servers set,
 * deletes its alive key, and renames its spark set to an aside key listed
 * in NS drains. Aside sets are then drained in chunks of reap_chunk ids:
 * each chunk script pops ids and deletes a hash field only while it still
 * names the dead address and the address's live set lacks the id. Any
 * server finishes any drain it finds listed, so a drain cut short by a
 * crash is completed by the next heartbeat anywhere; SPOP makes concurrent
 * drains of one set safe.
 *
 * Address ownership (our extension): a live C process holds a lease key on
 * its address (its instance id, PX lease_ms). register fails with
 * MPX_EADDRINUSE while another instance's lease exists; a process restarted
 * after a crash can register once the old lease expires (at most lease_ms).
 * If a live holder finds its lease taken by another instance (it paused
 * longer than the lease and another process registered the address), it
 * stops writing and reports MPX_EADDRINUSE through on_error; its sparks are
 * not silently dropped from memory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

int mpx__get_address(mpx_t *m, char out[MPX_ADDRESS_MAX + 1])
{
    pthread_mutex_lock(&m->addr_mu);
    memcpy(out, m->address, MPX_ADDRESS_MAX + 1);
    int st = m->state;
    pthread_mutex_unlock(&m->addr_mu);
    return st;
}

int mpx__get_gen(mpx_t *m, char out[64])
{
    pthread_mutex_lock(&m->addr_mu);
    memcpy(out, m->gen, sizeof m->gen);
    int st = m->state;
    pthread_mutex_unlock(&m->addr_mu);
    return st;
}

static size_t own_count(mpx_t *m)
{
    mpx__cache_stats_t cs;
    mpx__cache_stats(m->cache, &cs);
    return (size_t)cs.own;
}

static void set_state(mpx_t *m, int state, const char *addr)
{
    pthread_mutex_lock(&m->addr_mu);
    m->state = state;
    if (addr != m->address)
        snprintf(m->address, sizeof m->address, "%s", addr ? addr : "");
    pthread_mutex_unlock(&m->addr_mu);
}

static uint32_t tick_ms(const mpx_t *m)
{
    uint32_t hb = m->opt.interval_ms - m->opt.latency_ms;
    uint32_t lease = m->opt.lease_ms / 3;
    uint32_t t = hb < lease ? hb : lease;
    return t ? t : 1;
}

/* Reply helpers: an array of integers. */
static long long elem_int(const redisReply *r, size_t i)
{
    if (r->type != REDIS_REPLY_ARRAY || i >= r->elements ||
        r->element[i]->type != REDIS_REPLY_INTEGER)
        return -1000;
    return r->element[i]->integer;
}

static const char *elem_str(const redisReply *r, size_t i)
{
    if (r->type != REDIS_REPLY_ARRAY || i >= r->elements ||
        r->element[i]->type != REDIS_REPLY_STRING)
        return "?";
    return r->element[i]->str;
}

/* ---- register --------------------------------------------------------------- */

/* Under life_mu; state is REGISTERING with m->address set. */
static void kick_heartbeat(mpx_t *m);

/* Sharded: mark generation `gen` as the address's live one in every shard
 * (drains of older generations then spare its sparks). */
static int mark_shards(mpx_t *m, mpx__conn_t *c, const char *gen)
{
    uint32_t ns = m->keys.nshards;
    mpx__pipe_t p;
    if (mpx__pipe_init(&p, ns))
        return mpx__fail(MPX_ENOMEM, "out of memory");
    int rc = 0;
    for (uint32_t s = 0; rc == 0 && s < ns; s++) {
        mpx__argv_t *a = mpx__pipe_add(&p);
        if (mpx__argv_push(a, "HSET", 4) || mpx__key_shard_gens(&m->keys, s, a) ||
            mpx__argv_push(a, m->address, strlen(m->address)) ||
            mpx__argv_push(a, gen, strlen(gen)))
            rc = mpx__fail(MPX_ENOMEM, "out of memory");
    }
    if (rc == 0)
        rc = mpx__pipe_run(&p, c);
    mpx__pipe_free(&p);
    return rc;
}

/* *partial is set when the address was registered in Redis but a later
 * step failed: the caller must keep trying (state REGISTERING), not give
 * up, or the address would stay held in Redis by nobody. */
static int do_register(mpx_t *m, mpx__conn_t *c, bool *partial)
{
    bool sharded = m->keys.layout == MPX_LAYOUT_SHARDED;
    *partial = false;
    char token[64];
    mpx__token(m, token);
    mpx__argv_t a;
    mpx__argv_init(&a);
    int rc = mpx__conn_ensure(c, true);
    if (rc == 0 && sharded)
        rc = mpx__cmd_s_register(&m->keys, mpx__shas(c), m->address,
                                 m->opt.interval_ms, mpx__epoch_ms(), m->instance,
                                 m->opt.lease_ms, token, &a);
    else if (rc == 0)
        rc = mpx__cmd_register(&m->keys, c->shas[MPX__SCRIPT_REGISTER], m->address,
                               m->opt.interval_ms, mpx__epoch_ms(), m->instance, m->opt.lease_ms,
                               token, &a);
    redisReply *r = NULL;
    if (rc == 0)
        rc = mpx__conn_command(c, &a, &r);
    mpx__argv_free(&a);
    if (rc == MPX_EREDIS && strstr(mpx_last_error(), "LAYOUT ")) {
        char why[256];
        snprintf(why, sizeof why, "%s", strstr(mpx_last_error(), "LAYOUT ") + 7);
        return mpx__fail(MPX_EINVAL, "register %s: %s (options.layout and options.shards must "
                         "match every process of namespace '%s')", m->address, why, m->ns);
    }
    if (rc)
        return rc;
    if (sharded && elem_int(r, 0) == 1 && (rc = mark_shards(m, c, token)) != 0) {
        freeReplyObject(r);
        *partial = true;
        return rc;
    }
    long long status = elem_int(r, 0);
    if (status == -1) {
        rc = mpx__fail(MPX_EADDRINUSE,
                       "register %s: the address is held by live instance %s; its lease "
                       "expires in %lld ms unless that process keeps it",
                       m->address, elem_str(r, 2), elem_int(r, 1));
    } else if (status != 1) {
        rc = mpx__fail(MPX_EPROTO, "register %s: unexpected reply from the register script",
                       m->address);
    } else {
        c->run_id_changed = false;
        atomic_store(&m->self_srv, mpx__cache_intern(m->cache, m->address, strlen(m->address)));
        pthread_mutex_lock(&m->addr_mu); /* readers: mpx__get_gen */
        memcpy(m->gen, token, sizeof m->gen);
        pthread_mutex_unlock(&m->addr_mu);
        set_state(m, MPX__REGISTERED, m->address);
        /* Start writing under this registration and write every spark
         * connected so far (also after the address was lost and registered
         * again), in one step: a resync cycle that started before the
         * activation would rewrite the sparks under the old generation,
         * whose sets are being drained (test_sharded lost_registration);
         * a cycle between the two would answer flush waiters early. */
        mpx__writer_activate(m, m->address, m->gen);
        /* A move-aside (elem 1) is drained by the heartbeat thread. */
    }
    freeReplyObject(r);
    return rc;
}

void mpx__lifecycle_kick(mpx_t *m)
{
    kick_heartbeat(m);
}

static void kick_heartbeat(mpx_t *m)
{
    pthread_mutex_lock(&m->hb_mu);
    m->hb_kick = true;
    pthread_cond_signal(&m->hb_cond);
    pthread_mutex_unlock(&m->hb_mu);
}

int mpx_register(mpx_t *mpx, const char *address)
{
    mpx__clear_error();
    if (!mpx)
        return mpx__fail(MPX_EINVAL, "mpx_register: registry is NULL");
    if (mpx__in_callback)
        return mpx__refuse_in_callback("mpx_register");
    char canon[MPX_ADDRESS_MAX + 1];
    int rc = mpx__check_address(address, "address", canon);
    if (rc)
        return rc;
    pthread_mutex_lock(&mpx->life_mu);
    if (mpx->state != MPX__UNREGISTERED && strcmp(mpx->address, canon) != 0) {
        rc = mpx__fail(MPX_ESTATE, "mpx_register: already registered as %s; unregister first",
                       mpx->address);
    } else if (mpx->state == MPX__REGISTERED) {
        rc = 0;
    } else {
        set_state(mpx, MPX__REGISTERING, canon);
        mpx->address_from_api = true;
        bool partial;
        rc = do_register(mpx, &mpx->life_conn, &partial);
        if (!partial && (rc == MPX_EADDRINUSE || rc == MPX_EREDIS || rc == MPX_EPROTO ||
                         rc == MPX_ENOMEM || rc == MPX_EINVAL))
            set_state(mpx, MPX__UNREGISTERED, NULL);
        /* ECONN / ETIMEDOUT, or registered in Redis but not finished: stay
         * REGISTERING; the heartbeat retries. */
    }
    pthread_mutex_unlock(&mpx->life_mu);
    if (rc == 0) {
        mpx__emit_register(mpx, canon);
        kick_heartbeat(mpx); /* drain leftovers soon */
    }
    return rc;
}

/* ---- draining and reaping --------------------------------------------------- */

/* Drain one aside set until empty or the deadline (0: none). */
static int drain_one(mpx_t *m, mpx__conn_t *c, const char *aside, size_t aside_len,
                     const char *addr, uint64_t deadline, bool *more)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    int rc = 0;
    for (;;) {
        if (deadline && mpx__now_ms() >= deadline) {
            *more = true;
            break;
        }
        mpx__argv_reset(&a);
        if ((rc = mpx__cmd_drain(&m->keys, c->shas[MPX__SCRIPT_DRAIN], aside, aside_len, addr,
                                 m->opt.reap_chunk, &a)))
            break;
        redisReply *r;
        if ((rc = mpx__conn_command(c, &a, &r)))
            break;
        long long removed = elem_int(r, 1), left = elem_int(r, 2);
        freeReplyObject(r);
        if (removed < 0 || left < 0) {
            rc = mpx__fail(MPX_EPROTO, "drain: unexpected reply from the drain script");
            break;
        }
        atomic_fetch_add_explicit(&m->n.reaped_sparks, (uint64_t)removed, memory_order_relaxed);
        if (left == 0)
            break;
    }
    mpx__argv_free(&a);
    return rc;
}

/* Sharded: drain generation `gen` of addr in every shard (one chunk per
 * shard per round, the shards' scripts pipelined), until every shard is
 * empty or the deadline (0: none); then drop the drains entry. */
static int drain_gen(mpx_t *m, mpx__conn_t *c, const char *addr, const char *gen,
                     uint64_t deadline, bool *more)
{
    const mpx__keys_t *k = &m->keys;
    uint32_t ns = k->nshards;
    char live0[64] = "";
    mpx__argv_t a;
    mpx__argv_init(&a);
    redisReply *r = NULL;
    int rc = mpx__argv_push(&a, "HGET", 4) | mpx__argv_push(&a, k->gens, k->gens_len) |
             mpx__argv_push(&a, addr, strlen(addr));
    if (rc)
        rc = mpx__fail(MPX_ENOMEM, "out of memory");
    else if ((rc = mpx__conn_command(c, &a, &r)) == 0) {
        if (r->type == REDIS_REPLY_STRING && r->len < sizeof live0)
            memcpy(live0, r->str, r->len + 1);
        freeReplyObject(r);
    }
    mpx__argv_free(&a);
    if (rc)
        return rc;
    if (strcmp(live0, gen) == 0)
        return mpx__fail(MPX_ESTATE, "drain of %s generation %s: it is still the live "
                         "generation in %s; left alone", addr, gen, k->gens);

    uint32_t *act = malloc(ns * sizeof *act), nact = ns;
    char (*live)[64] = malloc(ns * sizeof *live);
    mpx__pipe_t p;
    bool pipe_ok = mpx__pipe_init(&p, ns) == 0;
    if (!act || !live || !pipe_ok) {
        rc = mpx__fail(MPX_ENOMEM, "out of memory");
        nact = 0;
    }
    for (uint32_t i = 0; i < nact; i++) {
        act[i] = i;
        memcpy(live[i], live0, sizeof live0);
    }
    int first_err = 0;
    char first_msg[256] = "";
    for (unsigned round = 0; rc == 0 && nact > 0 && round < 10000000u; round++) {
        if (deadline && mpx__now_ms() >= deadline) {
            *more = true;
            break;
        }
        mpx__pipe_clear(&p);
        for (uint32_t j = 0; j < nact; j++)
            if (mpx__cmd_s_drain(k, mpx__shas(c), act[j], addr, gen, live[act[j]],
                                 m->opt.reap_chunk, mpx__pipe_add(&p)))
                rc = mpx__fail(MPX_ENOMEM, "out of memory");
        if (rc)
            break;
        int prc = mpx__pipe_run(&p, c);
        redisReply **rep = p.rep;
        const int *rcs = p.rcs;
        uint32_t keep = 0;
        for (uint32_t j = 0; j < nact; j++) {
            uint32_t sh = act[j];
            if (rcs[j] == MPX_EREDIS || rcs[j] == MPX_EPROTO) {
                /* A broken shard (e.g. the set of a wrong type, discarded by
                 * the script) must not block the others. */
                if (!first_err) {
                    first_err = rcs[j];
                    snprintf(first_msg, sizeof first_msg, "%s", mpx_last_error());
                }
                continue;
            } else if (rcs[j] || !rep[j]) {
                rc = rcs[j] ? rcs[j] : prc ? prc : MPX_EPROTO;
                act[keep++] = sh;
                continue;
            }
            long long e0 = elem_int(rep[j], 0);
            if (e0 == -2 && strlen(elem_str(rep[j], 1)) >= sizeof live[sh]) {
                if (!first_err) {
                    first_err = MPX_EPROTO;
                    snprintf(first_msg, sizeof first_msg,
                             "shard %u: the generation marker is not one of ours", sh);
                }
            } else if (e0 == -2) {
                snprintf(live[sh], sizeof live[sh], "%s", elem_str(rep[j], 1));
                act[keep++] = sh;
            } else if (e0 < 0 || elem_int(rep[j], 1) < 0 || elem_int(rep[j], 2) < 0) {
                if (!first_err) {
                    first_err = MPX_EPROTO;
                    snprintf(first_msg, sizeof first_msg,
                             "unexpected reply from the sharded drain script");
                }
            } else {
                atomic_fetch_add_explicit(&m->n.reaped_sparks, (uint64_t)elem_int(rep[j], 1),
                                          memory_order_relaxed);
                if (elem_int(rep[j], 2) > 0)
                    act[keep++] = sh;
            }
        }
        nact = keep;
    }
    if (pipe_ok)
        mpx__pipe_free(&p);
    free(act);
    free(live);
    if (rc == 0 && nact == 0 && !*more && !first_err) {
        mpx__argv_init(&a);
        if (mpx__argv_push(&a, "HDEL", 4) | mpx__argv_push(&a, k->drains, k->drains_len) |
            mpx__argv_push(&a, gen, strlen(gen)))
            rc = mpx__fail(MPX_ENOMEM, "out of memory");
        else if ((rc = mpx__conn_command(c, &a, &r)) == 0)
            freeReplyObject(r);
        mpx__argv_free(&a);
    }
    if (rc == 0 && first_err)
        rc = mpx__fail(first_err, "drain of %s generation %s: %s", addr, gen, first_msg);
    return rc;
}

int mpx__drain_all(mpx_t *m, mpx__conn_t *c, uint64_t budget_ms, bool *more)
{
    uint64_t deadline = budget_ms ? mpx__now_ms() + budget_ms : 0;
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, "HGETALL", 7);
    mpx__argv_push(&a, m->keys.drains, m->keys.drains_len);
    redisReply *r;
    int rc = mpx__conn_command(c, &a, &r);
    mpx__argv_free(&a);
    if (rc)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return mpx__fail(MPX_EPROTO, "%s is not a hash", m->keys.drains);
    }
    int first_err = 0;
    for (size_t i = 0; rc == 0 && i + 1 < r->elements; i += 2) {
        redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        char addr[MPX_ADDRESS_MAX + 1];
        if (v->len > MPX_ADDRESS_MAX)
            continue;
        memcpy(addr, v->str, v->len + 1);
        int one;
        if (m->keys.layout == MPX_LAYOUT_SHARDED)
            one = k->len < 64 ? drain_gen(m, c, addr, k->str, deadline, more)
                              : mpx__fail(MPX_EPROTO, "generation name too long");
        else
            one = drain_one(m, c, k->str, k->len, addr, deadline, more);
        if (one == MPX_EREDIS || one == MPX_EPROTO || one == MPX_ESTATE) {
            /* A broken entry (e.g. the aside key of a wrong type) must not
             * block the others: report it and go on. */
            mpx__report(m, one, "reaping: drain of %.*s: %s", (int)k->len, k->str,
                        mpx_last_error());
            if (first_err == 0)
                first_err = one;
        } else if (one) {
            rc = one; /* connection trouble: stop here, retry later */
        }
        if (*more)
            break;
    }
    if (rc == 0 && first_err)
        rc = mpx__fail(first_err, "reaping: some cleanups failed (reported through on_error)");
    freeReplyObject(r);
    return rc;
}

int mpx__reap_pass(mpx_t *m, mpx__conn_t *c, size_t *reaped, uint64_t drain_budget_ms, bool *more)
{
    char self[MPX_ADDRESS_MAX + 1];
    mpx__get_address(m, self);
    *reaped = 0;
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, "SMEMBERS", 8);
    mpx__argv_push(&a, m->keys.servers, m->keys.servers_len);
    redisReply *list;
    int rc = mpx__conn_command(c, &a, &list);
    if (rc) {
        mpx__argv_free(&a);
        return rc;
    }
    if (list->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(list);
        mpx__argv_free(&a);
        return mpx__fail(MPX_EPROTO, "%s is not a set", m->keys.servers);
    }
    {
        /* Cached entries of servers no longer registered are stale. */
        const char **names = malloc((list->elements + 1) * sizeof *names);
        size_t *lens = malloc((list->elements + 1) * sizeof *lens), n = 0;
        for (size_t i = 0; names && lens && i < list->elements; i++)
            if (list->element[i]->type == REDIS_REPLY_STRING) {
                names[n] = list->element[i]->str;
                lens[n++] = list->element[i]->len;
            }
        if (names && lens)
            mpx__cache_servers_seen(m->cache, names, lens, n);
        free(names);
        free(lens);
        mpx__cache_sweep_remote(m->cache, mpx__now_ms());
    }
    for (size_t i = 0; rc == 0 && i < list->elements; i++) {
        redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len == 0 || e->len > MPX_ADDRESS_MAX ||
            memchr(e->str, 0, e->len) || strcmp(e->str, self) == 0)
            continue;
        char token[64];
        mpx__token(m, token);
        mpx__argv_reset(&a);
        if (m->keys.layout == MPX_LAYOUT_SHARDED)
            rc = mpx__cmd_s_retire(&m->keys, mpx__shas(c), e->str, m->instance, 0,
                                   &a);
        else
            rc = mpx__cmd_retire(&m->keys, c->shas[MPX__SCRIPT_RETIRE], e->str, m->instance,
                                 token, 0, &a);
        if (rc)
            break;
        redisReply *r;
        if ((rc = mpx__conn_command(c, &a, &r)))
            break;
        if (elem_int(r, 0) == 1) {
            mpx__cache_server_gone(m->cache, e->str);
            (*reaped)++;
            atomic_fetch_add_explicit(&m->n.reaped_servers, 1, memory_order_relaxed);
        }
        freeReplyObject(r);
    }
    freeReplyObject(list);
    mpx__argv_free(&a);
    if (rc == 0)
        rc = mpx__drain_all(m, c, drain_budget_ms, more);
    return rc;
}

int mpx_reap(mpx_t *mpx, size_t *reaped)
{
    mpx__clear_error();
    size_t n = 0;
    if (reaped)
        *reaped = 0;
    if (!mpx)
        return mpx__fail(MPX_EINVAL, "mpx_reap: registry is NULL");
    if (mpx__in_callback)
        return mpx__refuse_in_callback("mpx_reap");
    /* In slices of 200 ms, so lookups on the same connection are not held
     * up for the whole cleanup of a large server. */
    int rc;
    bool more;
    do {
        size_t k = 0;
        more = false;
        pthread_mutex_lock(&mpx->sync_mu);
        rc = mpx__reap_pass(mpx, &mpx->sync_conn, &k, 200, &more);
        pthread_mutex_unlock(&mpx->sync_mu);
        n += k;
    } while (rc == 0 && more);
    if (reaped)
        *reaped = n;
    return rc;
}

/* ---- unregister --------------------------------------------------------------- */

int mpx_unregister(mpx_t *mpx)
{
    mpx__clear_error();
    if (!mpx)
        return mpx__fail(MPX_EINVAL, "mpx_unregister: registry is NULL");
    if (mpx__in_callback)
        return mpx__refuse_in_callback("mpx_unregister");
    pthread_mutex_lock(&mpx->life_mu);
    if (mpx->state == MPX__UNREGISTERED) {
        char lost[MPX_ADDRESS_MAX + 1];
        memcpy(lost, mpx->address, sizeof lost);
        if (lost[0]) {
            /* The address was taken over by another instance: its keys are
             * that instance's now; forget ours locally. */
            set_state(mpx, MPX__UNREGISTERED, NULL);
            atomic_store(&mpx->self_srv, NULL);
            mpx__cache_drop_own(mpx->cache);
        }
        pthread_mutex_unlock(&mpx->life_mu);
        if (lost[0] && mpx->opt.on_unregister)
            mpx->opt.on_unregister(mpx, lost, mpx->opt.on_unregister_data);
        return 0;
    }
    char addr[MPX_ADDRESS_MAX + 1];
    memcpy(addr, mpx->address, sizeof addr);
    bool was_registered = mpx->state == MPX__REGISTERED;
    /* No batch may run after the retire script, or it would recreate keys. */
    mpx__writer_activate(mpx, NULL, NULL);
    set_state(mpx, MPX__UNREGISTERED, NULL);
    atomic_store(&mpx->self_srv, NULL);
    mpx__cache_drop_own(mpx->cache);

    int rc = 0;
    if (was_registered) {
        mpx__conn_t *c = &mpx->life_conn;
        char token[64];
        mpx__token(mpx, token);
        mpx__argv_t a;
        mpx__argv_init(&a);
        redisReply *r = NULL;
        rc = mpx__conn_ensure(c, true);
        bool sharded = mpx->keys.layout == MPX_LAYOUT_SHARDED;
        if (rc == 0 && sharded)
            rc = mpx__cmd_s_retire(&mpx->keys, mpx__shas(c), addr, mpx->instance,
                                   1, &a);
        else if (rc == 0)
            rc = mpx__cmd_retire(&mpx->keys, c->shas[MPX__SCRIPT_RETIRE], addr, mpx->instance,
                                 token, 1, &a);
        if (rc == 0)
            rc = mpx__conn_command(c, &a, &r);
        if (rc == 0) {
            if (elem_int(r, 0) == -1)
                rc = mpx__fail(MPX_EADDRINUSE,
                               "unregister %s: the address is now held by another instance; "
                               "its keys were left alone",
                               addr);
            else if (elem_int(r, 1) == 1 && sharded) {
                /* Drain our own generation now, in chunks. */
                char gen[64];
                snprintf(gen, sizeof gen, "%s", elem_str(r, 2));
                bool more = false;
                rc = drain_gen(mpx, c, addr, gen, 0, &more);
            } else if (elem_int(r, 1) == 1) {
                /* Drain our own aside set now, in chunks. */
                mpx__argv_reset(&a);
                mpx__key_aside(&mpx->keys, addr, token, &a);
                mpx__argv_finish(&a);
                bool more = false;
                rc = drain_one(mpx, c, a.argv[0], a.lens[0], addr, 0, &more);
            }
        }
        if (r)
            freeReplyObject(r);
        mpx__argv_free(&a);
    }
    pthread_mutex_unlock(&mpx->life_mu);
    if (mpx->opt.on_unregister)
        mpx->opt.on_unregister(mpx, addr, mpx->opt.on_unregister_data);
    return rc;
}

/* ---- the heartbeat thread ----------------------------------------------------- */

typedef struct hb_state {
    bool down;              /* Redis unreachable at the last tick */
    uint64_t next_reap_ms;
    uint64_t last_inuse_report_ms;
    bool drains_pending;
} hb_state_t;

/* One tick: under life_mu. */
static void tick(mpx_t *m, hb_state_t *hs)
{
    mpx__conn_t *c = &m->life_conn;
    if (m->state == MPX__UNREGISTERED)
        return; /* nothing to keep alive; do not even connect */
    uint64_t restarts = mpx__writer_restarts(m); /* before this tick looks at Redis */
    int rc = mpx__conn_ensure(c, false);
    if (rc) {
        if (!hs->down)
            mpx__report(m, rc, "heartbeat: %s", mpx_last_error());
        hs->down = true;
        return;
    }
    hs->down = false;

    if (m->state == MPX__REGISTERING) {
        bool partial;
        rc = do_register(m, c, &partial);
        if (rc == 0) {
            mpx__emit_register(m, m->address);
            hs->drains_pending = true;
        } else if (!partial && ((rc == MPX_EADDRINUSE && m->address_from_api) ||
                                rc == MPX_EINVAL)) {
            /* mpx_register said EADDRINUSE is final for an address it was
             * given: stop trying rather than take it once the holder's
             * lease lapses. A layout mismatch (EINVAL) needs an operator.
             * The writer stops (it may still run after a re-registration
             * failed); the address stays known so that mpx_unregister
             * forgets the local sparks. */
            mpx__report(m, rc, "registration given up: %s", mpx_last_error());
            mpx__writer_activate(m, NULL, NULL);
            set_state(m, MPX__UNREGISTERED, m->address);
            return;
        } else {
            uint64_t now = mpx__now_ms();
            if (rc != MPX_EADDRINUSE || now - hs->last_inuse_report_ms >= 30000) {
                mpx__report(m, rc, "background registration: %s (retrying)", mpx_last_error());
                hs->last_inuse_report_ms = now;
            }
            return;
        }
    }
    if (m->state != MPX__REGISTERED)
        return;

    mpx__argv_t a;
    mpx__argv_init(&a);
    redisReply *r = NULL;
    bool sharded = m->keys.layout == MPX_LAYOUT_SHARDED;
    if (sharded)
        rc = mpx__cmd_s_heartbeat(&m->keys, mpx__shas(c), m->address,
                                  m->opt.interval_ms, mpx__epoch_ms(), m->instance,
                                  m->opt.lease_ms, m->gen, &a);
    else
        rc = mpx__cmd_heartbeat(&m->keys, c->shas[MPX__SCRIPT_HEARTBEAT], m->address,
                                m->opt.interval_ms, mpx__epoch_ms(), m->instance,
                                m->opt.lease_ms, 1, &a);
    if (rc == 0)
        rc = mpx__conn_command(c, &a, &r);
    mpx__argv_free(&a);
    if (rc) {
        mpx__report(m, rc, "heartbeat: %s", mpx_last_error());
        hs->down = true; /* try again soon (a restart is seen at the reconnect) */
        return;
    }
    /* Taken only now that the heartbeat went through: a restart seen at a
     * reconnect must not be forgotten with a command that then failed.
     * (A registration above cleared it: its activation rewrites all.) On a
     * cluster the writer watches for failovers itself (and the control
     * keys' loss shows as "missing" below): no second rewrite. */
    bool restarted = c->run_id_changed && !m->ep.cluster;
    c->run_id_changed = false;
    long long present = elem_int(r, 0);
    if (present == -1) {
        mpx__report(m, MPX_EADDRINUSE,
                    "heartbeat: address %s was taken over by instance %s (this process paused "
                    "longer than the lease?); stopped writing, %zu local sparks kept in memory",
                    m->address, elem_str(r, 1), own_count(m));
        freeReplyObject(r);
        mpx__writer_activate(m, NULL, NULL);
        set_state(m, MPX__UNREGISTERED, m->address);
        return;
    }
    freeReplyObject(r);
    atomic_fetch_add_explicit(&m->n.heartbeats, 1, memory_order_relaxed);
    if (sharded && present == 0) {
        /* Reaped (or the control keys lost): register again under a new
         * generation; the old one is being drained. Registering rewrites
         * every local spark. */
        atomic_fetch_add_explicit(&m->n.reregistered, 1, memory_order_relaxed);
        mpx__report(m, MPX_ESTATE,
                    "heartbeat: %s was missing from the servers set (reaped, or Redis lost its "
                    "data); registering again and rewriting %zu local sparks",
                    m->address, own_count(m));
        /* Nothing may be written under the retired generation meanwhile:
         * stop the writer (a failed registration leaves it stopped; a
         * successful one restarts it under the new generation). */
        mpx__writer_pause(m);
        set_state(m, MPX__REGISTERING, m->address);
        bool partial;
        if ((rc = do_register(m, c, &partial)) == 0) {
            mpx__emit_register(m, m->address);
            hs->drains_pending = true;
        } else {
            mpx__report(m, rc, "registering again: %s (retrying)", mpx_last_error());
        }
        return;
    }
    if (present == 0 || restarted) {
        atomic_fetch_add_explicit(&m->n.reregistered, 1, memory_order_relaxed);
        mpx__report(m, MPX_ESTATE,
                    "heartbeat: %s was %s; put it back and rewriting %zu local sparks",
                    m->address,
                    present == 0 ? "missing from the servers set (reaped, or Redis lost its data)"
                                 : "on a Redis that restarted (run_id changed)",
                    own_count(m));
        mpx__writer_resync(m);
        if (present == 0)
            mpx__emit_register(m, m->address);
    }
    /* Any restart the writer saw before this tick is handled (a rewrite
     * requested above, or none needed). */
    mpx__writer_checked(m, restarts);
}

static void *heartbeat_main(void *arg)
{
    mpx_t *m = arg;
    mpx__thread_init("mpx-heartbeat");
    hb_state_t hs = {0};
    uint32_t period = tick_ms(m);
    uint32_t reap_every = m->opt.interval_ms - m->opt.latency_ms;
    hs.next_reap_ms = mpx__now_ms() + reap_every;
    uint64_t next_tick = mpx__now_ms(); /* first tick at once */
    pthread_mutex_lock(&m->hb_mu);
    while (!m->hb_stop) {
        uint64_t now = mpx__now_ms();
        uint64_t wake = next_tick;
        if (hs.drains_pending && wake > now + 10)
            wake = now + 10;
        if (!m->hb_kick && now < wake) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t d = wake - now;
            ts.tv_sec += (time_t)(d / 1000);
            ts.tv_nsec += (long)(d % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&m->hb_cond, &m->hb_mu, &ts);
            continue;
        }
        bool kicked = m->hb_kick;
        m->hb_kick = false;
        pthread_mutex_unlock(&m->hb_mu);

        pthread_mutex_lock(&m->life_mu);
        now = mpx__now_ms();
        if (now >= next_tick || kicked) {
            tick(m, &hs);
            next_tick = mpx__now_ms() + (hs.down ? (period < 500 ? period : 500) : period);
        }
        if (!hs.down && m->state == MPX__REGISTERED &&
            (now >= hs.next_reap_ms || hs.drains_pending || kicked)) {
            size_t reaped = 0;
            bool more = false;
            int rc;
            if (now >= hs.next_reap_ms) {
                hs.next_reap_ms = now + reap_every;
                rc = mpx__reap_pass(m, &m->life_conn, &reaped, 200, &more);
            } else {
                rc = mpx__drain_all(m, &m->life_conn, 200, &more);
            }
            if (rc)
                mpx__report(m, rc, "reaping: %s", mpx_last_error());
            hs.drains_pending = more;
        }
        pthread_mutex_unlock(&m->life_mu);
        pthread_mutex_lock(&m->hb_mu);
    }
    pthread_mutex_unlock(&m->hb_mu);
    return NULL;
}

int mpx__lifecycle_start(mpx_t *m)
{
    if (pthread_create(&m->hb_thread, NULL, heartbeat_main, m) != 0)
        return mpx__fail(MPX_ETHREAD, "cannot start the heartbeat thread");
    m->hb_started = true;
    return 0;
}

void mpx__lifecycle_stop(mpx_t *m)
{
    if (!m->hb_started)
        return;
    pthread_mutex_lock(&m->hb_mu);
    m->hb_stop = true;
    pthread_cond_signal(&m->hb_cond);
    pthread_mutex_unlock(&m->hb_mu);
    pthread_join(m->hb_thread, NULL);
    m->hb_started = false;
}
