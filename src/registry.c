/*
 * registry.c - the handle: create/destroy, connect/disconnect, lookups,
 * servers, stats.
 *
 * mpx_create validates the options, copies the strings it keeps, and
 * starts two threads: the writer (writer.c) and the heartbeat
 * (lifecycle.c). It never talks to Redis itself.
 *
 * Lookups and mpx_servers share one connection (sync_conn) under sync_mu;
 * this server's own sparks are answered from the cache without
 * Redis.
 */
#include <fcntl.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "cluster.h"

_Thread_local int mpx__in_callback;

int mpx__refuse_in_callback(const char *what)
{
    return mpx__fail(MPX_ESTATE, "%s: not allowed from inside a metroplex callback (it would "
                     "wait on the library thread that runs the callback)", what);
}

void mpx__report(mpx_t *m, int err, const char *fmt, ...)
{
    if (!m->opt.on_error)
        return;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mpx__in_callback++;
    m->opt.on_error(m, err, msg, m->opt.on_error_data);
    mpx__in_callback--;
}

void mpx__emit_register(mpx_t *m, const char *address)
{
    if (!m->opt.on_register)
        return;
    mpx__in_callback++;
    m->opt.on_register(m, address, m->opt.on_register_data);
    mpx__in_callback--;
}

void mpx__token(mpx_t *m, char out[64])
{
    unsigned long long seq = atomic_fetch_add_explicit(&m->token_seq, 1, memory_order_relaxed);
    snprintf(out, 64, "%s-%llu", m->instance, seq);
}

static void make_instance_id(char out[40])
{
    unsigned char rnd[12] = {0};
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, rnd, sizeof rnd) : -1;
    if (fd >= 0)
        close(fd);
    if (got != (ssize_t)sizeof rnd) {
        /* Fall back on time and pid: unique enough per host. */
        uint64_t t = mpx__epoch_ms() ^ ((uint64_t)getpid() << 32) ^ mpx__now_ms();
        memcpy(rnd, &t, sizeof t);
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(out + 2 * i, 3, "%02x", rnd[i]);
}

static char *dup_str(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static void free_handle(mpx_t *m)
{
    mpx__cache_destroy(m->cache);
    mpx__conn_free(&m->life_conn);
    mpx__conn_free(&m->sync_conn);
    mpx__keys_free(&m->keys);
    mpx__endpoint_free(&m->ep);
    free(m->redis_url);
    free(m->ns);
    pthread_mutex_destroy(&m->life_mu);
    pthread_mutex_destroy(&m->addr_mu);
    pthread_mutex_destroy(&m->hb_mu);
    pthread_cond_destroy(&m->hb_cond);
    pthread_mutex_destroy(&m->sync_mu);
    free(m);
}

int mpx_create(const mpx_options_t *opts, mpx_t **out)
{
    mpx__clear_error();
    if (!out)
        return mpx__fail(MPX_EINVAL, "mpx_create: out must not be NULL");
    *out = NULL;
    mpx_options_t o;
    int rc = mpx__check_options(opts, &o);
    if (rc)
        return rc;
    mpx_t *m = calloc(1, sizeof *m);
    if (!m)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    pthread_mutex_init(&m->life_mu, NULL);
    pthread_mutex_init(&m->addr_mu, NULL);
    pthread_mutex_init(&m->hb_mu, NULL);
    pthread_cond_init(&m->hb_cond, NULL);
    pthread_mutex_init(&m->sync_mu, NULL);
    m->opt = o;
    m->redis_url = dup_str(o.redis_url);
    m->ns = dup_str(o.ns);
    if (!m->redis_url || !m->ns) {
        free_handle(m);
        return mpx__fail(MPX_ENOMEM, "out of memory");
    }
    m->opt.redis_url = m->redis_url;
    m->opt.ns = m->ns;
    m->opt.address = NULL; /* copied into m->address below */
    if ((rc = mpx__parse_redis_url(m->redis_url, &m->ep)) != 0 ||
        (rc = mpx__keys_init_layout(&m->keys, m->ns, o.layout, o.shards)) != 0) {
        free_handle(m);
        return rc == MPX_ENOMEM ? mpx__fail(rc, "out of memory") : rc;
    }
    if (!(m->cache = mpx__cache_create(o.size_hint, o.remote_max))) {
        free_handle(m);
        return mpx__fail(MPX_ENOMEM, "out of memory (spark cache)");
    }
    make_instance_id(m->instance);
    mpx__conn_init(&m->life_conn, &m->ep, o.connect_timeout_ms, o.command_timeout_ms,
                   "heartbeat", &m->n.redis_errors);
    mpx__conn_init(&m->sync_conn, &m->ep, o.connect_timeout_ms, o.command_timeout_ms, "lookup",
                   &m->n.redis_errors);
    if (o.address) {
        mpx__check_address(o.address, "options.address", m->address);
        m->state = MPX__REGISTERING; /* the heartbeat thread registers it */
    }
    if ((rc = mpx__writer_start(m)) != 0) {
        free_handle(m);
        return rc;
    }
    if ((rc = mpx__lookup_start(m)) != 0) {
        mpx__writer_stop(m, 0);
        free_handle(m);
        return rc;
    }
    if ((rc = mpx__lifecycle_start(m)) != 0) {
        mpx__lookup_stop(m);
        mpx__writer_stop(m, 0);
        free_handle(m);
        return rc;
    }
    *out = m;
    return 0;
}

void mpx_destroy(mpx_t *mpx)
{
    if (!mpx)
        return;
    atomic_store(&mpx->closing, true);
    mpx__lifecycle_stop(mpx);
    mpx__lookup_stop(mpx);
    size_t left = mpx__writer_stop(mpx, 2 * mpx->opt.command_timeout_ms);
    if (left)
        mpx__report(mpx, MPX_ETIMEDOUT, "destroy: %zu sparks' changes could not be written", left);
    free_handle(mpx);
}

/* ---- sparks --------------------------------------------------------------------- */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int change(mpx_t *mpx, bool connect, const void *id, size_t len)
{
    mpx__clear_error();
    if (!mpx)
        return mpx__fail(MPX_EINVAL, "registry is NULL");
    int rc = mpx__check_id(id, len);
    if (rc)
        return rc;
    if (atomic_load_explicit(&mpx->closing, memory_order_relaxed))
        return mpx__fail(MPX_ECLOSED, "the registry is being destroyed");
    uint64_t t = mono_ns();
    rc = connect ? mpx__cache_connect(mpx->cache, id, len, t)
                 : mpx__cache_disconnect(mpx->cache, id, len, t);
    if (rc < 0)
        return mpx__fail(rc, "out of memory recording a spark");
    if (rc > 0)
        mpx__writer_kick(mpx);
    return 0;
}

int mpx_connect(mpx_t *mpx, const void *id, size_t len)
{
    return change(mpx, true, id, len);
}

int mpx_disconnect(mpx_t *mpx, const void *id, size_t len)
{
    return change(mpx, false, id, len);
}

int mpx_flush(mpx_t *mpx, uint32_t timeout_ms)
{
    mpx__clear_error();
    if (!mpx)
        return mpx__fail(MPX_EINVAL, "registry is NULL");
    if (mpx__in_callback)
        return mpx__refuse_in_callback("mpx_flush");
    char addr[MPX_ADDRESS_MAX + 1];
    mpx__cache_stats_t cs;
    mpx__cache_stats(mpx->cache, &cs);
    int state = mpx__get_address(mpx, addr);
    if (state != MPX__REGISTERED) {
        /* Registering (again): every local spark is (re)written once it is
         * registered, also those already settled (it was reaped, or Redis
         * lost them: the registration rewrites them). */
        uint64_t waiting = state == MPX__REGISTERING && cs.own > cs.pending ? cs.own : cs.pending;
        if (waiting == 0)
            return 0; /* nothing to write */
        return mpx__fail(MPX_ESTATE, "flush: not registered; %llu sparks wait for registration",
                         (unsigned long long)waiting);
    }
    return mpx__writer_flush(mpx, timeout_ms);
}

/* ---- lookups ---------------------------------------------------------------------- */

static int copy_out(const char *s, size_t n, char *buf, size_t *buflen)
{
    size_t cap = *buflen;
    *buflen = n;
    if (!buf || cap < n + 1)
        return mpx__fail(MPX_ENOSPC, "buffer of %zu bytes is too small for %zu bytes + NUL", cap,
                         n);
    memcpy(buf, s, n);
    buf[n] = 0;
    return 0;
}

int mpx_address(mpx_t *mpx, char *buf, size_t *len)
{
    mpx__clear_error();
    if (!mpx || !len)
        return mpx__fail(MPX_EINVAL, "mpx_address: NULL argument");
    char addr[MPX_ADDRESS_MAX + 1];
    mpx__get_address(mpx, addr);
    if (!addr[0])
        return mpx__fail(MPX_ENOTFOUND, "no address: not registered");
    return copy_out(addr, strlen(addr), buf, len);
}

/* Answered from memory? Own sparks (once this server has an address) and,
 * with remote_ttl_ms, fresh entries learned from earlier lookups. Sets *srv. */
bool mpx__local_hit(mpx_t *m, const void *id, size_t len, const mpx__srv_t **srv)
{
    int k = mpx__cache_lookup(m->cache, id, len, srv);
    if (k == 1) {
        *srv = atomic_load_explicit(&m->self_srv, memory_order_acquire);
        return *srv != NULL;
    }
    return k == 2;
}

/* Remember a remote answer, if remote caching is on. */
void mpx__learn(mpx_t *m, const void *id, size_t len, const char *addr, size_t alen)
{
    if (!m->opt.remote_ttl_ms)
        return;
    const mpx__srv_t *self = atomic_load_explicit(&m->self_srv, memory_order_acquire);
    if (self && self->len == alen && memcmp(self->addr, addr, alen) == 0)
        return; /* our own spark, about to be (or just) disconnected: not cached */
    const mpx__srv_t *srv = mpx__cache_intern(m->cache, addr, alen);
    if (srv && !atomic_load(&srv->dead))
        mpx__cache_learn(m->cache, id, len, srv, mpx__now_ms() + m->opt.remote_ttl_ms);
}

/* ---- owners in Redis -------------------------------------------------------------- */

typedef struct owner {
    bool found;
    size_t len;
    char addr[MPX_ADDRESS_MAX + 1];
} owner_t;

static void one_owner(void *ctx, size_t i, const char *addr, size_t alen)
{
    owner_t *o = ctx;
    (void)i;
    if (alen > MPX_ADDRESS_MAX)
        alen = MPX_ADDRESS_MAX;
    memcpy(o->addr, addr, alen);
    o->addr[alen] = 0;
    o->len = alen;
    o->found = true;
}

#define OWNERS_PER_CMD 1000

int mpx__owners(mpx_t *m, mpx__conn_t *c, size_t n, const void *const *ids, const size_t *lens,
                void (*found)(void *ctx, size_t i, const char *addr, size_t alen), void *ctx)
{
    if (n == 0)
        return 0;
    const mpx__keys_t *k = &m->keys;
    /* Order the ids by shard (a counting sort), then one HMGET per shard
     * and per OWNERS_PER_CMD ids, all pipelined. */
    uint32_t ns = k->nshards;
    size_t *count = calloc((size_t)ns + 1, sizeof *count);
    size_t *order = malloc(n * sizeof *order);
    uint32_t *shard = malloc(n * sizeof *shard);
    size_t ncmd_max = n / OWNERS_PER_CMD + (n < ns ? n : ns) + 1;
    size_t *first = malloc(ncmd_max * sizeof *first);
    mpx__pipe_t p;
    bool pipe_ok = mpx__pipe_init(&p, ncmd_max) == 0;
    int rc = 0;
    if (!count || !order || !shard || !first || !pipe_ok) {
        rc = mpx__fail(MPX_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        shard[i] = mpx__key_shard(k, ids[i], lens[i]);
        count[shard[i] + 1]++;
    }
    for (uint32_t s = 0; s < ns; s++)
        count[s + 1] += count[s];
    for (size_t i = 0; i < n; i++)
        order[count[shard[i]]++] = i;
    for (size_t q0 = 0; q0 < n && rc == 0;) {
        uint32_t s = shard[order[q0]];
        size_t q = q0;
        first[p.n] = q0;
        mpx__argv_t *a = mpx__pipe_add(&p);
        int r = !a || mpx__argv_push(a, "HMGET", 5) || mpx__key_hash(k, s, a);
        while (!r && q < n && q - q0 < OWNERS_PER_CMD && shard[order[q]] == s) {
            r |= mpx__argv_push(a, ids[order[q]], lens[order[q]]);
            q++;
        }
        if (r)
            rc = mpx__fail(MPX_ENOMEM, "out of memory");
        q0 = q;
    }
    if (rc == 0)
        rc = mpx__pipe_run(&p, c);
    for (size_t j = 0; rc == 0 && j < p.n; j++) {
        const mpx__argv_t *a = &p.cmds[j];
        size_t want = a->argc - 2;
        if (p.rep[j]->type != REDIS_REPLY_ARRAY || p.rep[j]->elements != want) {
            rc = mpx__fail(MPX_EPROTO, "HMGET %.*s: unexpected reply", (int)a->lens[1],
                           a->argv[1]);
            break;
        }
        for (size_t e = 0; e < want; e++) {
            redisReply *x = p.rep[j]->element[e];
            if (x->type == REDIS_REPLY_STRING)
                found(ctx, order[first[j] + e], x->str, x->len);
        }
    }
out:
    if (pipe_ok)
        mpx__pipe_free(&p);
    free(count);
    free(order);
    free(shard);
    free(first);
    return rc;
}

static int sync_command(mpx_t *m, mpx__argv_t *a, redisReply **r)
{
    pthread_mutex_lock(&m->sync_mu);
    int rc = mpx__conn_command(&m->sync_conn, a, r);
    pthread_mutex_unlock(&m->sync_mu);
    return rc;
}

int mpx_spark(mpx_t *mpx, const void *id, size_t len, char *buf, size_t *buflen)
{
    mpx__clear_error();
    if (!mpx || !buflen)
        return mpx__fail(MPX_EINVAL, "mpx_spark: NULL argument");
    int rc = mpx__check_id(id, len);
    if (rc)
        return rc;
    const mpx__srv_t *srv;
    if (mpx__local_hit(mpx, id, len, &srv))
        return copy_out(srv->addr, srv->len, buf, buflen);
    owner_t o = {0};
    pthread_mutex_lock(&mpx->sync_mu);
    rc = mpx__owners(mpx, &mpx->sync_conn, 1, &id, &len, one_owner, &o);
    pthread_mutex_unlock(&mpx->sync_mu);
    if (rc == 0 && !o.found)
        rc = mpx__fail(MPX_ENOTFOUND, "spark not found");
    else if (rc == 0) {
        mpx__learn(mpx, id, len, o.addr, o.len);
        rc = copy_out(o.addr, o.len, buf, buflen);
    }
    return rc;
}

void mpx_list_free(mpx_list_t *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->count; i++)
        free(list->items[i]);
    free(list->items);
    free(list->lens);
    free(list);
}

mpx_list_t *mpx__list_new(size_t n)
{
    mpx_list_t *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->items = calloc(n ? n : 1, sizeof *l->items);
    l->lens = calloc(n ? n : 1, sizeof *l->lens);
    if (!l->items || !l->lens) {
        mpx_list_free(l);
        return NULL;
    }
    l->count = n;
    return l;
}

int mpx__list_set(mpx_list_t *l, size_t i, const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return MPX_ENOMEM;
    memcpy(d, s, n);
    d[n] = 0;
    l->items[i] = d;
    l->lens[i] = n;
    return 0;
}

typedef struct many {
    mpx_t *m;
    mpx_list_t *l;
    const size_t *miss;
    const void **ids;
    const size_t *lens;
    int err;
} many_t;

static void many_owner(void *ctx, size_t k, const char *addr, size_t alen)
{
    many_t *c = ctx;
    mpx__learn(c->m, c->ids[k], c->lens[k], addr, alen);
    if (mpx__list_set(c->l, c->miss[k], addr, alen))
        c->err = MPX_ENOMEM;
}

int mpx_sparks(mpx_t *mpx, const void *const *ids, const size_t *lens, size_t n,
               mpx_list_t **out)
{
    mpx__clear_error();
    if (!mpx || !out || (!ids && n))
        return mpx__fail(MPX_EINVAL, "mpx_sparks: NULL argument");
    *out = NULL;
    int rc;
    for (size_t i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : (ids[i] ? strlen(ids[i]) : 0);
        if ((rc = mpx__check_id(ids[i], len)) != 0)
            return mpx__fail(rc, "mpx_sparks: id %zu: %s", i, mpx_last_error());
    }
    mpx_list_t *l = mpx__list_new(n);
    if (!l)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    size_t *miss = malloc((n ? n : 1) * sizeof *miss), nmiss = 0;
    const void **mids = malloc((n ? n : 1) * sizeof *mids);
    size_t *mlens = malloc((n ? n : 1) * sizeof *mlens);
    rc = miss && mids && mlens ? 0 : MPX_ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t len = lens ? lens[i] : strlen(ids[i]);
        const mpx__srv_t *srv;
        if (mpx__local_hit(mpx, ids[i], len, &srv)) {
            rc = mpx__list_set(l, i, srv->addr, srv->len);
        } else {
            mids[nmiss] = ids[i];
            mlens[nmiss] = len;
            miss[nmiss++] = i;
        }
    }
    if (rc) {
        rc = mpx__fail(MPX_ENOMEM, "out of memory");
    } else if (nmiss > 0) {
        many_t ctx = {mpx, l, miss, mids, mlens, 0};
        pthread_mutex_lock(&mpx->sync_mu);
        rc = mpx__owners(mpx, &mpx->sync_conn, nmiss, mids, mlens, many_owner, &ctx);
        pthread_mutex_unlock(&mpx->sync_mu);
        if (rc == 0 && ctx.err)
            rc = mpx__fail(MPX_ENOMEM, "out of memory");
    }
    free(miss);
    free(mids);
    free(mlens);
    if (rc) {
        mpx_list_free(l);
        return rc;
    }
    *out = l;
    return 0;
}

int mpx_servers(mpx_t *mpx, int include_self, mpx_list_t **out)
{
    mpx__clear_error();
    if (!mpx || !out)
        return mpx__fail(MPX_EINVAL, "mpx_servers: NULL argument");
    *out = NULL;
    char self[MPX_ADDRESS_MAX + 1];
    mpx__get_address(mpx, self);
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, "SMEMBERS", 8);
    mpx__argv_push(&a, mpx->keys.servers, mpx->keys.servers_len);
    redisReply *r;
    int rc = sync_command(mpx, &a, &r);
    mpx__argv_free(&a);
    if (rc)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return mpx__fail(MPX_EPROTO, "SMEMBERS %s: not a set", mpx->keys.servers);
    }
    mpx_list_t *l = mpx__list_new(r->elements);
    size_t k = 0;
    for (size_t i = 0; l && rc == 0 && i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        if (!include_self && self[0] && strcmp(e->str, self) == 0)
            continue;
        rc = mpx__list_set(l, k++, e->str, e->len);
    }
    freeReplyObject(r);
    if (!l || rc) {
        mpx_list_free(l);
        return mpx__fail(MPX_ENOMEM, "out of memory");
    }
    l->count = k;
    *out = l;
    return 0;
}

int mpx_stats(mpx_t *mpx, mpx_stats_t *out)
{
    mpx__clear_error();
    if (!mpx || !out)
        return mpx__fail(MPX_EINVAL, "mpx_stats: NULL argument");
    memset(out, 0, sizeof *out);
    mpx__cache_stats_t cs;
    mpx__cache_stats(mpx->cache, &cs);
#define LOAD(f) atomic_load_explicit(&mpx->n.f, memory_order_relaxed)
    out->local_sparks = cs.own;
    out->queued = cs.queued;
    out->committed = LOAD(committed);
    out->coalesced = LOAD(coalesced);
    out->pending = cs.pending;
    out->batches = LOAD(batches);
    out->redis_errors = LOAD(redis_errors);
    out->retries = LOAD(retries);
    out->heartbeats = LOAD(heartbeats);
    out->reaped_servers = LOAD(reaped_servers);
    out->reaped_sparks = LOAD(reaped_sparks);
    out->reregistered = LOAD(reregistered);
#undef LOAD
    out->cache_entries = cs.own + cs.remote;
    out->cache_bytes = cs.bytes;
    out->lookup_hits = cs.hits;
    out->lookup_misses = cs.misses;
    const mpx__hist_t *h = &mpx->commit_hist;
    out->commit_latency_p50_us = mpx__hist_quantile(h, 0.50);
    out->commit_latency_p99_us = mpx__hist_quantile(h, 0.99);
    out->commit_latency_p999_us = mpx__hist_quantile(h, 0.999);
    out->commit_latency_max_us = atomic_load_explicit(&h->max, memory_order_relaxed);
    out->commit_latency_count = atomic_load_explicit(&h->count, memory_order_relaxed);
    return 0;
}
