/*
 * cache.c - the spark cache: this server's sparks, and other servers'
 * sparks learned from lookups.
 *
 * Layout. MPX__SHARDS shards, chosen by the top bits of a 64-bit hash of
 * the id; each shard is a Concurrency Kit hash set (ck_hs, SPMC, object
 * mode) of pointers to compact records:
 *   own record     { u16 len, u8 state, u8 kind, id[len] }        4 + len bytes
 *   remote record  { u16 len, u8 state, u8 kind, u32, srv*, u64 expiry, id }
 * Server addresses are interned (mpx__srv_t, one copy per server, freed only
 * with the cache), so a remote record holds a pointer, not a string.
 *
 * Concurrency. Readers (lookups, any thread) are lock-free: they run inside
 * an epoch section (one process-wide ck_epoch, a record per thread). Writers
 * of a shard hold its mutex (ck_hs is single-writer): gateway threads insert
 * records and flip their state; only the writer thread (and unregister /
 * destroy, with the writer quiesced) unlinks records. Unlinked records and
 * the old arrays of a growing ck_hs go on a retire list and are freed by
 * the writer thread after an epoch synchronisation, when no reader can
 * still hold them.
 *
 * State of an own record (bits, under the shard mutex; readers load it
 * atomically):
 *   WANT    the spark is connected here (what connect/disconnect last said)
 *   HAVE    Redis holds it, as far as the writer knows (last committed)
 *   QUEUED  the record is on its shard's dirty list
 *   INFLIGHT the writer is sending a change of it (HAVE is about to change)
 *   FORCE   Redis's state is unknown (after a resync): write WANT, whatever
 *           HAVE says
 * A change whose WANT differs from HAVE, or any change while INFLIGHT or
 * FORCE, puts the record on the dirty list (once: QUEUED); the writer takes the lists, writes WANT for each record
 * whose WANT != HAVE, and records HAVE = WANT on acknowledgement. A record
 * that flipped back and forth before the writer saw it costs nothing (it is
 * "coalesced"). A disconnected record stays as a tombstone (WANT = 0) until
 * its deletion is committed, then the writer unlinks it.
 *
 * Under ThreadSanitizer, the publication of records through ck_hs and
 * their reclamation through ck_epoch (both inline assembly or uninstrumented
 * library code) are described to TSan with acquire/release annotations.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ck_epoch.h>
#include <ck_hs.h>

#include "internal.h"

#if defined(__SANITIZE_THREAD__)
#define MPX__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MPX__TSAN 1
#endif
#endif
#ifdef MPX__TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#define TSAN_RELEASE(p) __tsan_release((void *)(p))
#else
#define TSAN_ACQUIRE(p) ((void)0)
#define TSAN_RELEASE(p) ((void)0)
#endif

#define MPX__SHARDS 256
#define SHARD_BITS 8

enum { REC_OWN = 1, REC_REMOTE = 2 };
enum { ST_WANT = 1, ST_HAVE = 2, ST_QUEUED = 4, ST_INFLIGHT = 8, ST_FORCE = 16 };

typedef struct rec {
    uint16_t len;
    _Atomic uint8_t state;
    uint8_t kind;
    char id[];
} rec_t;

typedef struct rrec {
    uint16_t len;
    _Atomic uint8_t state;
    uint8_t kind;
    uint32_t unused_;
    const mpx__srv_t *srv;
    uint64_t expires_ms;
    char id[];
} rrec_t;

static inline const char *rec_id(const rec_t *r)
{
    return r->kind == REC_OWN ? r->id : ((const rrec_t *)r)->id;
}

static inline size_t rec_size(const rec_t *r)
{
    return (r->kind == REC_OWN ? sizeof(rec_t) : sizeof(rrec_t)) + r->len;
}

typedef struct dirty {
    mpx__dirty_t *v;
    size_t n, cap;
} dirty_t;

/* Counters of a shard are written only under its mutex (so a plain
 * load + store, no locked instruction, on the hot path) and read by
 * mpx_stats without it (relaxed atomics). hits and misses are bumped by
 * lock-free readers the same way: two readers of one shard at the same
 * instant may lose a count; they are statistics, not invariants. */
typedef struct shard {
    pthread_mutex_t mu;
    ck_hs_t hs;
    dirty_t dirty;              /* under mu */
    atomic_size_t own;          /* own records with WANT */
    atomic_size_t pending;      /* dirty-list entries + records in flight */
    atomic_size_t remote;       /* remote records */
    atomic_size_t bytes;        /* record bytes */
    atomic_uint_fast64_t queued; /* connect/disconnect calls that changed a spark */
    atomic_uint_fast64_t hits, misses;
} __attribute__((aligned(64))) shard_t;

#define BUMP(field, delta)                                                     \
    atomic_store_explicit(&(field),                                            \
                          atomic_load_explicit(&(field), memory_order_relaxed) + (delta), \
                          memory_order_relaxed)

struct mpx__cache {
    shard_t shards[MPX__SHARDS];
    pthread_mutex_t retire_mu;
    void **retired;        /* under retire_mu */
    size_t nretired, retired_cap;
    atomic_size_t bytes;   /* hash arrays (records are counted per shard) */
    size_t remote_max;
    /* Interned servers. */
    pthread_mutex_t srv_mu;
    mpx__srv_t **srvs;
    size_t nsrvs, srvs_cap;
    /* Writer-side: lists taken from the shards, and a cursor into them. */
    dirty_t taken[MPX__SHARDS];
    size_t take_shard, take_pos;
};

/* ---- epoch: one domain for the process, one record per thread ------------ */

static ck_epoch_t epoch_global;
static pthread_once_t epoch_once = PTHREAD_ONCE_INIT;
static pthread_key_t epoch_key;
static _Thread_local ck_epoch_record_t *epoch_rec;

static void epoch_thread_exit(void *p)
{
    ck_epoch_unregister(p); /* the record is recycled by a later thread */
}

static void epoch_setup(void)
{
    ck_epoch_init(&epoch_global);
    pthread_key_create(&epoch_key, epoch_thread_exit);
}

static ck_epoch_record_t *epoch_record(void)
{
    ck_epoch_record_t *r = epoch_rec;
    if (r)
        return r;
    pthread_once(&epoch_once, epoch_setup);
    r = ck_epoch_recycle(&epoch_global, NULL);
    if (!r) {
        r = malloc(sizeof *r);
        if (!r)
            return NULL;
        ck_epoch_register(&epoch_global, r, NULL);
    }
    epoch_rec = r;
    pthread_setspecific(epoch_key, r);
    return r;
}

/* ---- hashing and the ck_hs callbacks --------------------------------------- */

uint64_t mpx__hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h ^= v * 0xc4ceb9fe1a85ec53ull;
        h = (h << 31 | h >> 33) * 0x9e3779b97f4a7c15ull;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h ^= v * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static unsigned long hs_hash(const void *obj, unsigned long seed)
{
    const rec_t *r = obj;
    return (unsigned long)mpx__hash(rec_id(r), r->len) ^ seed;
}

static bool hs_compare(const void *stored, const void *probe)
{
    const rec_t *x = stored, *y = probe;
    TSAN_ACQUIRE(x); /* published by ck_hs_put after TSAN_RELEASE */
    return x->len == y->len && memcmp(rec_id(x), rec_id(y), x->len) == 0;
}

/* The cache whose shard lock this thread holds, for the deferred free of a
 * ck_hs array that a grow replaced. */
static _Thread_local mpx__cache_t *locked_cache;

static void retire(mpx__cache_t *c, void *p)
{
    pthread_mutex_lock(&c->retire_mu);
    if (c->nretired == c->retired_cap) {
        size_t cap = c->retired_cap ? c->retired_cap * 2 : 256;
        void **v = realloc(c->retired, cap * sizeof *v);
        if (!v) {
            /* Cannot defer: wait for the readers right here instead. */
            pthread_mutex_unlock(&c->retire_mu);
            ck_epoch_synchronize_wait(&epoch_global, NULL, NULL);
            free(p);
            return;
        }
        c->retired = v;
        c->retired_cap = cap;
    }
    c->retired[c->nretired++] = p;
    pthread_mutex_unlock(&c->retire_mu);
}

static void *hs_malloc(size_t n)
{
    void *p = malloc(n);
    if (p && locked_cache)
        atomic_fetch_add_explicit(&locked_cache->bytes, n, memory_order_relaxed);
    return p;
}

static void hs_free(void *p, size_t n, bool defer)
{
    mpx__cache_t *c = locked_cache;
    if (c)
        atomic_fetch_sub_explicit(&c->bytes, n, memory_order_relaxed);
    if (defer && c)
        retire(c, p);
    else
        free(p);
}

static struct ck_malloc allocator = {.malloc = hs_malloc, .free = hs_free};

static shard_t *shard_of(mpx__cache_t *c, uint64_t h)
{
    return &c->shards[h >> (64 - SHARD_BITS)];
}

static void lock_shard(mpx__cache_t *c, shard_t *s)
{
    pthread_mutex_lock(&s->mu);
    locked_cache = c;
}

static void unlock_shard(shard_t *s)
{
    locked_cache = NULL;
    pthread_mutex_unlock(&s->mu);
}

/* ---- create / destroy --------------------------------------------------------- */

mpx__cache_t *mpx__cache_create(size_t size_hint, size_t remote_max)
{
    if (!epoch_record())
        return NULL;
    mpx__cache_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->remote_max = remote_max;
    pthread_mutex_init(&c->retire_mu, NULL);
    pthread_mutex_init(&c->srv_mu, NULL);
    /* ck_hs keeps its load at most 50%: presize for the hint. */
    unsigned long per = (unsigned long)(size_hint / MPX__SHARDS) * 2 + 16;
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &c->shards[i];
        pthread_mutex_init(&s->mu, NULL);
        locked_cache = c;
        bool ok = ck_hs_init(&s->hs, CK_HS_MODE_OBJECT | CK_HS_MODE_SPMC, hs_hash, hs_compare,
                             &allocator, per, 0x5bd1e995ul * (unsigned long)(i + 1));
        locked_cache = NULL;
        if (!ok) {
            pthread_mutex_destroy(&s->mu);
            for (int j = 0; j < i; j++) {
                locked_cache = c;
                ck_hs_destroy(&c->shards[j].hs);
                locked_cache = NULL;
                pthread_mutex_destroy(&c->shards[j].mu);
            }
            free(c);
            return NULL;
        }
    }
    return c;
}

static void free_retired(mpx__cache_t *c, bool wait)
{
    pthread_mutex_lock(&c->retire_mu);
    void **v = c->retired;
    size_t n = c->nretired;
    c->retired = NULL;
    c->nretired = c->retired_cap = 0;
    pthread_mutex_unlock(&c->retire_mu);
    if (!n) {
        free(v);
        return;
    }
    if (wait)
        ck_epoch_synchronize_wait(&epoch_global, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        TSAN_ACQUIRE(&c->retired); /* every reader released it at section end */
        free(v[i]);
    }
    free(v);
}

void mpx__cache_destroy(mpx__cache_t *c)
{
    if (!c)
        return;
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &c->shards[i];
        ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
        void *obj;
        while (ck_hs_next(&s->hs, &it, &obj))
            free(obj);
        locked_cache = c;
        ck_hs_destroy(&s->hs);
        locked_cache = NULL;
        free(s->dirty.v);
        free(c->taken[i].v);
        pthread_mutex_destroy(&s->mu);
    }
    free_retired(c, false); /* no reader is left: the registry is gone */
    for (size_t i = 0; i < c->nsrvs; i++)
        free(c->srvs[i]);
    free(c->srvs);
    pthread_mutex_destroy(&c->retire_mu);
    pthread_mutex_destroy(&c->srv_mu);
    free(c);
}

/* ---- interned servers ------------------------------------------------------------ */

const mpx__srv_t *mpx__cache_intern(mpx__cache_t *c, const char *addr, size_t len)
{
    pthread_mutex_lock(&c->srv_mu);
    mpx__srv_t *found = NULL;
    for (size_t i = 0; i < c->nsrvs; i++) {
        mpx__srv_t *s = c->srvs[i];
        if (s->len == len && memcmp(s->addr, addr, len) == 0) {
            found = s;
            break;
        }
    }
    if (found) {
        /* Found: its liveness is left to mpx__cache_servers_seen (an answer
         * from a not yet drained field must not revive a reaped server). */
    } else if (c->nsrvs < 65536) {
        if (c->nsrvs == c->srvs_cap) {
            size_t cap = c->srvs_cap ? c->srvs_cap * 2 : 16;
            mpx__srv_t **v = realloc(c->srvs, cap * sizeof *v);
            if (v) {
                c->srvs = v;
                c->srvs_cap = cap;
            }
        }
        if (c->nsrvs < c->srvs_cap && (found = malloc(sizeof *found + len + 1))) {
            atomic_init(&found->dead, false);
            found->len = (uint32_t)len;
            memcpy(found->addr, addr, len);
            found->addr[len] = 0;
            c->srvs[c->nsrvs++] = found;
        }
    }
    pthread_mutex_unlock(&c->srv_mu);
    return found;
}

void mpx__cache_server_gone(mpx__cache_t *c, const char *addr)
{
    size_t len = strlen(addr);
    pthread_mutex_lock(&c->srv_mu);
    for (size_t i = 0; i < c->nsrvs; i++) {
        mpx__srv_t *s = c->srvs[i];
        if (s->len == len && memcmp(s->addr, addr, len) == 0)
            atomic_store_explicit(&s->dead, true, memory_order_release);
    }
    pthread_mutex_unlock(&c->srv_mu);
}

void mpx__cache_servers_seen(mpx__cache_t *c, const char *const *addrs, const size_t *lens,
                             size_t n)
{
    pthread_mutex_lock(&c->srv_mu);
    for (size_t i = 0; i < c->nsrvs; i++) {
        mpx__srv_t *s = c->srvs[i];
        bool present = false;
        for (size_t k = 0; k < n && !present; k++)
            present = lens[k] == s->len && memcmp(addrs[k], s->addr, s->len) == 0;
        atomic_store_explicit(&s->dead, !present, memory_order_release);
    }
    pthread_mutex_unlock(&c->srv_mu);
}

/* ---- gateway side: connect / disconnect ----------------------------------------- */

/* A record on the stack to look an id up with (ids are <= MPX_ID_MAX). */
typedef union probe {
    rec_t r;
    char raw[sizeof(rec_t) + MPX_ID_MAX];
} probe_t;

static rec_t *make_probe(probe_t *p, const void *id, size_t len)
{
    rec_t *r = &p->r;
    r->len = (uint16_t)len;
    r->kind = REC_OWN;
    atomic_init(&r->state, 0);
    memcpy(r->id, id, len);
    return r;
}

static int dirty_push(dirty_t *d, rec_t *r, uint64_t t_ns)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        mpx__dirty_t *v = realloc(d->v, cap * sizeof *v);
        if (!v)
            return MPX_ENOMEM;
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n].rec = r;
    d->v[d->n].t_ns = t_ns;
    d->n++;
    return 0;
}

/* Under the shard lock: WANT changed to `want`; queue if it now differs
 * from HAVE and is not queued yet. 1 if queued now, 0 if not, <0 error. */
static int mark(shard_t *s, rec_t *r, bool want, uint64_t t_ns)
{
    uint8_t st = atomic_load_explicit(&r->state, memory_order_relaxed);
    uint8_t nst = want ? (uint8_t)(st | ST_WANT) : (uint8_t)(st & ~ST_WANT);
    int queued = 0;
    if (!(nst & ST_QUEUED) && ((nst & (ST_INFLIGHT | ST_FORCE)) ||
                               ((nst & ST_WANT) != 0) != ((nst & ST_HAVE) != 0))) {
        if (dirty_push(&s->dirty, r, t_ns))
            return MPX_ENOMEM;
        nst |= ST_QUEUED;
        BUMP(s->pending, 1);
        queued = 1;
    }
    atomic_store_explicit(&r->state, nst, memory_order_release);
    return queued;
}

int mpx__cache_connect(mpx__cache_t *c, const void *id, size_t len, uint64_t t_ns)
{
    probe_t p;
    rec_t *probe = make_probe(&p, id, len);
    uint64_t h = mpx__hash(id, len);
    shard_t *s = shard_of(c, h);
    unsigned long hh = (unsigned long)h ^ s->hs.seed;
    int rc = 0;
    lock_shard(c, s);
    rec_t *r = ck_hs_get(&s->hs, hh, probe);
    if (r && r->kind == REC_OWN) {
        if (!(atomic_load_explicit(&r->state, memory_order_relaxed) & ST_WANT)) {
            rc = mark(s, r, true, t_ns);
            if (rc >= 0) {
                BUMP(s->own, 1);
                BUMP(s->queued, 1);
                rc = 1;
            }
        }
        unlock_shard(s);
        return rc;
    }
    /* New own record (replacing a remote one if there is one). */
    rec_t *n = malloc(sizeof *n + len);
    if (!n) {
        unlock_shard(s);
        return MPX_ENOMEM;
    }
    n->len = (uint16_t)len;
    n->kind = REC_OWN;
    atomic_init(&n->state, ST_WANT | ST_QUEUED);
    memcpy(n->id, id, len);
    if (dirty_push(&s->dirty, n, t_ns)) {
        free(n);
        unlock_shard(s);
        return MPX_ENOMEM;
    }
    TSAN_RELEASE(n);
    bool ok;
    if (r) {
        void *prev = NULL;
        ok = ck_hs_set(&s->hs, hh, n, &prev);
        if (ok && prev) {
            BUMP(s->remote, -1);
            BUMP(s->bytes, -rec_size(prev));
            retire(c, prev);
        }
    } else {
        ok = ck_hs_put(&s->hs, hh, n);
    }
    if (!ok) {
        s->dirty.n--;
        free(n);
        unlock_shard(s);
        return MPX_ENOMEM;
    }
    BUMP(s->own, 1);
    BUMP(s->queued, 1);
    BUMP(s->pending, 1);
    BUMP(s->bytes, sizeof *n + len);
    unlock_shard(s);
    return 1;
}

int mpx__cache_disconnect(mpx__cache_t *c, const void *id, size_t len, uint64_t t_ns)
{
    probe_t p;
    rec_t *probe = make_probe(&p, id, len);
    uint64_t h = mpx__hash(id, len);
    shard_t *s = shard_of(c, h);
    int rc = 0;
    lock_shard(c, s);
    rec_t *r = ck_hs_get(&s->hs, (unsigned long)h ^ s->hs.seed, probe);
    if (r && r->kind == REC_OWN &&
        (atomic_load_explicit(&r->state, memory_order_relaxed) & ST_WANT)) {
        rc = mark(s, r, false, t_ns);
        if (rc >= 0) {
            BUMP(s->own, -1);
            BUMP(s->queued, 1);
            rc = 1;
        }
    }
    unlock_shard(s);
    return rc;
}

/* ---- lookups (lock-free) ------------------------------------------------------------ */

int mpx__cache_lookup(mpx__cache_t *c, const void *id, size_t len, const mpx__srv_t **srv)
{
    ck_epoch_record_t *er = epoch_record();
    if (!er)
        return 0;
    probe_t p;
    rec_t *probe = make_probe(&p, id, len);
    uint64_t h = mpx__hash(id, len);
    shard_t *s = shard_of(c, h);
    int found = 0;
    ck_epoch_begin(er, NULL);
    rec_t *r = ck_hs_get(&s->hs, (unsigned long)h ^ s->hs.seed, probe);
    if (r) {
        if (r->kind == REC_OWN) {
            if (atomic_load_explicit(&r->state, memory_order_acquire) & ST_WANT)
                found = 1;
        } else {
            const rrec_t *rr = (const rrec_t *)r;
            if (rr->expires_ms > mpx__now_ms() &&
                !atomic_load_explicit(&rr->srv->dead, memory_order_acquire)) {
                *srv = rr->srv;
                found = 2;
            }
        }
    }
    TSAN_RELEASE(&c->retired); /* this reader is done with what it saw */
    ck_epoch_end(er, NULL);
    if (found)
        BUMP(s->hits, 1);
    else
        BUMP(s->misses, 1);
    return found;
}

void mpx__cache_learn(mpx__cache_t *c, const void *id, size_t len, const mpx__srv_t *srv,
                      uint64_t expires_ms)
{
    if (!srv)
        return;
    probe_t p;
    rec_t *probe = make_probe(&p, id, len);
    uint64_t h = mpx__hash(id, len);
    shard_t *s = shard_of(c, h);
    unsigned long hh = (unsigned long)h ^ s->hs.seed;
    lock_shard(c, s);
    rec_t *r = ck_hs_get(&s->hs, hh, probe);
    if ((r && r->kind == REC_OWN) || /* this server's own records are authoritative */
        (!r && atomic_load_explicit(&s->remote, memory_order_relaxed) >=
                   c->remote_max / MPX__SHARDS + 1)) {
        unlock_shard(s);
        return;
    }
    rrec_t *n = malloc(sizeof *n + len);
    if (!n) {
        unlock_shard(s);
        return;
    }
    n->len = (uint16_t)len;
    n->kind = REC_REMOTE;
    atomic_init(&n->state, 0);
    n->unused_ = 0;
    n->srv = srv;
    n->expires_ms = expires_ms;
    memcpy(n->id, id, len);
    TSAN_RELEASE(n);
    void *prev = NULL;
    if (!ck_hs_set(&s->hs, hh, n, &prev)) {
        free(n);
    } else {
        BUMP(s->bytes, sizeof *n + len);
        if (prev) {
            BUMP(s->bytes, -rec_size(prev));
            retire(c, prev);
        } else {
            BUMP(s->remote, 1);
        }
    }
    unlock_shard(s);
}

/* Remove remote records that expired or whose server is gone. Writer-side
 * housekeeping, shard by shard. */
size_t mpx__cache_sweep_remote(mpx__cache_t *c, uint64_t now_ms)
{
    size_t removed = 0;
    mpx__cache_stats_t st;
    mpx__cache_stats(c, &st);
    if (st.remote == 0)
        return 0;
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &c->shards[i];
        lock_shard(c, s);
        size_t nv = 64;
        while (nv == 64 && atomic_load_explicit(&s->remote, memory_order_relaxed)) {
            ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
            void *obj;
            rec_t *victims[64];
            nv = 0;
            while (nv < 64 && ck_hs_next(&s->hs, &it, &obj)) {
                rrec_t *rr = obj;
                if (rr->kind == REC_REMOTE &&
                    (rr->expires_ms <= now_ms || atomic_load(&rr->srv->dead)))
                    victims[nv++] = obj;
            }
            for (size_t k = 0; k < nv; k++) {
                rec_t *v = victims[k];
                if (ck_hs_remove(&s->hs, hs_hash(v, s->hs.seed), v)) {
                    BUMP(s->remote, -1);
                    BUMP(s->bytes, -rec_size(v));
                    retire(c, v);
                    removed++;
                }
            }
        }
        unlock_shard(s);
    }
    return removed;
}

/* ---- writer side ------------------------------------------------------------------- */

void mpx__cache_take(mpx__cache_t *c)
{
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &c->shards[i];
        dirty_t *t = &c->taken[i];
        /* Entries an abandoned cycle did not reach are still QUEUED: keep
         * them, ahead of the newer ones. */
        size_t from = (size_t)i < c->take_shard ? t->n : (size_t)i == c->take_shard ? c->take_pos : 0;
        size_t left = t->n - from;
        if (left && from)
            memmove(t->v, t->v + from, left * sizeof *t->v);
        t->n = left;
        pthread_mutex_lock(&s->mu);
        if (left == 0) {
            dirty_t tmp = s->dirty;
            s->dirty = *t;
            *t = tmp;
        } else {
            size_t k = 0;
            while (k < s->dirty.n && dirty_push(t, s->dirty.v[k].rec, s->dirty.v[k].t_ns) == 0)
                k++;
            /* On out of memory the rest stays for the next cycle. */
            memmove(s->dirty.v, s->dirty.v + k, (s->dirty.n - k) * sizeof *s->dirty.v);
            s->dirty.n -= k;
        }
        pthread_mutex_unlock(&s->mu);
    }
    c->take_shard = 0;
    c->take_pos = 0;
}

size_t mpx__cache_next_ops(mpx__cache_t *c, mpx__op_t *ops, size_t max, size_t *coalesced)
{
    size_t n = 0;
    while (n < max && c->take_shard < MPX__SHARDS) {
        dirty_t *t = &c->taken[c->take_shard];
        if (c->take_pos >= t->n) {
            c->take_shard++;
            c->take_pos = 0;
            continue;
        }
        shard_t *s = &c->shards[c->take_shard];
        pthread_mutex_lock(&s->mu);
        while (n < max && c->take_pos < t->n) {
            mpx__dirty_t *d = &t->v[c->take_pos++];
            rec_t *r = d->rec;
            uint8_t st = atomic_load_explicit(&r->state, memory_order_relaxed);
            bool force = st & ST_FORCE;
            st &= (uint8_t)~(ST_QUEUED | ST_FORCE);
            bool want = st & ST_WANT, have = st & ST_HAVE;
            if (want == have && !force) {
                BUMP(s->pending, -1); /* nothing to write: settled */
                atomic_store_explicit(&r->state, st, memory_order_release);
                (*coalesced)++;
                if (!want && !(st & ST_INFLIGHT)) {
                    /* A tombstone nobody needs any more. */
                    ck_hs_remove(&s->hs, hs_hash(r, s->hs.seed), r);
                    BUMP(s->bytes, -rec_size(r));
                    retire(c, r);
                }
                continue;
            }
            atomic_store_explicit(&r->state, (uint8_t)(st | ST_INFLIGHT), memory_order_release);
            ops[n].rec = r;
            ops[n].id = r->id;
            ops[n].len = r->len;
            ops[n].want = want;
            ops[n].t_ns = d->t_ns;
            n++;
        }
        pthread_mutex_unlock(&s->mu);
    }
    return n;
}

bool mpx__cache_taken_empty(mpx__cache_t *c)
{
    return c->take_shard >= MPX__SHARDS;
}

void mpx__cache_committed(mpx__cache_t *c, const mpx__op_t *ops, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rec_t *r = ops[i].rec;
        uint64_t h = mpx__hash(r->id, r->len);
        shard_t *s = shard_of(c, h);
        lock_shard(c, s);
        uint8_t st = atomic_load_explicit(&r->state, memory_order_relaxed);
        st = ops[i].want ? (uint8_t)(st | ST_HAVE) : (uint8_t)(st & ~ST_HAVE);
        st &= (uint8_t)~ST_INFLIGHT;
        BUMP(s->pending, -1); /* committed: it was pending since it was queued */
        if (!(st & (ST_WANT | ST_HAVE | ST_QUEUED))) {
            ck_hs_remove(&s->hs, (unsigned long)h ^ s->hs.seed, r);
            BUMP(s->bytes, -rec_size(r));
            retire(c, r);
        } else {
            atomic_store_explicit(&r->state, st, memory_order_release);
        }
        unlock_shard(s);
    }
}

void mpx__cache_reclaim(mpx__cache_t *c)
{
    /* Removals leave tombstones in ck_hs, which lengthen probes: rebuild a
     * shard's array when they outnumber its entries (a grow-like copy, safe
     * for concurrent readers; the old array is retired). */
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &c->shards[i];
        struct ck_hs_stat st;
        lock_shard(c, s);
        ck_hs_stat(&s->hs, &st);
        if (st.tombstones > 64 && st.tombstones > st.n_entries)
            ck_hs_rebuild(&s->hs);
        unlock_shard(s);
    }
    free_retired(c, true);
}

void mpx__cache_mark_unwritten(mpx__cache_t *c, uint64_t t_ns)
{
    mpx__cache_mark_unwritten_if(c, t_ns, NULL, NULL);
}

void mpx__cache_mark_unwritten_if(mpx__cache_t *c, uint64_t t_ns,
                                  bool (*pick)(const void *id, size_t len, void *ctx), void *ctx)
{
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &c->shards[i];
        lock_shard(c, s);
        ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
        void *obj;
        while (ck_hs_next(&s->hs, &it, &obj)) {
            rec_t *r = obj;
            if (r->kind != REC_OWN)
                continue;
            /* Redis may hold anything: whatever the spark's state is when
             * the writer gets to it, write it (connected sparks again,
             * tombstones deleted again, conditionally, so harmlessly). HAVE
             * is not guessed: a spark that flips before the write must not
             * be taken for already written. */
            uint8_t st = atomic_load_explicit(&r->state, memory_order_relaxed);
            /* Not picked: left as it is, unless an abandoned transaction
             * holds it (INFLIGHT), which must be queued again anyway. */
            if (pick && !(st & ST_INFLIGHT) && !pick(r->id, r->len, ctx))
                continue;
            if (st & ST_INFLIGHT)
                BUMP(s->pending, -1); /* a transaction that was abandoned */
            st &= (uint8_t)~ST_INFLIGHT;
            st |= ST_FORCE;
            atomic_store_explicit(&r->state, st, memory_order_relaxed);
            mark(s, r, (st & ST_WANT) != 0, t_ns); /* queues it */
        }
        unlock_shard(s);
    }
}

void mpx__cache_drop_own(mpx__cache_t *c)
{
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &c->shards[i];
        lock_shard(c, s);
        size_t cap = ck_hs_count(&s->hs);
        rec_t **v = cap ? malloc(cap * sizeof *v) : NULL;
        size_t nv = 0;
        ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
        void *obj;
        while (v && nv < cap && ck_hs_next(&s->hs, &it, &obj))
            if (((rec_t *)obj)->kind == REC_OWN)
                v[nv++] = obj;
        for (size_t k = 0; k < nv; k++) {
            rec_t *r = v[k];
            ck_hs_remove(&s->hs, hs_hash(r, s->hs.seed), r);
            BUMP(s->bytes, -rec_size(r));
            retire(c, r);
        }
        free(v);
        s->dirty.n = 0;
        atomic_store_explicit(&s->pending, 0, memory_order_relaxed);
        atomic_store_explicit(&s->own, 0, memory_order_relaxed);
        c->taken[i].n = 0;
        unlock_shard(s);
    }
    c->take_shard = MPX__SHARDS;
}

bool mpx__cache_has_own(mpx__cache_t *c, const void *id, size_t len)
{
    probe_t p;
    rec_t *probe = make_probe(&p, id, len);
    uint64_t h = mpx__hash(id, len);
    shard_t *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    rec_t *r = ck_hs_get(&s->hs, (unsigned long)h ^ s->hs.seed, probe);
    bool own = r && r->kind == REC_OWN;
    pthread_mutex_unlock(&s->mu);
    return own;
}

void mpx__cache_stats(mpx__cache_t *c, mpx__cache_stats_t *st)
{
    memset(st, 0, sizeof *st);
    st->bytes = atomic_load_explicit(&c->bytes, memory_order_relaxed);
    for (int i = 0; i < MPX__SHARDS; i++) {
        const shard_t *s = &c->shards[i];
        st->own += atomic_load_explicit(&s->own, memory_order_relaxed);
        st->pending += atomic_load_explicit(&s->pending, memory_order_relaxed);
        st->remote += atomic_load_explicit(&s->remote, memory_order_relaxed);
        st->bytes += atomic_load_explicit(&s->bytes, memory_order_relaxed);
        st->queued += atomic_load_explicit(&s->queued, memory_order_relaxed);
        st->hits += atomic_load_explicit(&s->hits, memory_order_relaxed);
        st->misses += atomic_load_explicit(&s->misses, memory_order_relaxed);
    }
}
