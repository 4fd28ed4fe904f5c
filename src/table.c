/*
 * table.c - this server's sparks, in memory.
 *
 * The local table is the truth for this server's sparks: the writer thread
 * writes it to Redis, and it is written again whenever Redis is found to
 * have lost it (this server reaped during a pause, Redis restarted).
 *
 * Layout: MPX__SHARDS Concurrency Kit hash sets (ck_hs, object mode), each
 * holding pointers to compact records { uint16 length, id bytes }. A record
 * is one malloc of 2 + len bytes; the set costs a pointer slot per entry at
 * ck_hs's load factor. Sharding by the top bits of a 64-bit hash keeps each
 * set small, so one set's growth is a short pause.
 *
 * Threads: any gateway thread (connect/disconnect/lookup) and the writer
 * thread (resync walks). Each shard has a mutex held for every operation;
 * ck_hs is single-writer, and with the mutex held on reads as well, memory
 * is freed at once (no deferred reclamation needed).
 */
#include <stdlib.h>
#include <string.h>

#include <ck_hs.h>

#include "internal.h"

#define MPX__SHARDS 64

typedef struct rec {
    uint16_t len;
    char id[];
} rec_t;

typedef struct shard {
    pthread_mutex_t mu;
    ck_hs_t hs;
    char pad[64];
} shard_t;

struct mpx__table {
    shard_t shards[MPX__SHARDS];
    atomic_size_t count;
};

/* 64-bit hash of a byte string: 8 bytes at a time, multiply-xorshift mix. */
static uint64_t hash_bytes(const void *p, size_t n)
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
    return (unsigned long)(hash_bytes(r->id, r->len) ^ seed);
}

static bool hs_compare(const void *a, const void *b)
{
    const rec_t *x = a, *y = b;
    return x->len == y->len && memcmp(x->id, y->id, x->len) == 0;
}

static void *hs_malloc(size_t n)
{
    return malloc(n);
}

static void hs_free(void *p, size_t n, bool defer)
{
    (void)n;
    (void)defer; /* every access holds the shard mutex: nobody can still read */
    free(p);
}

static struct ck_malloc allocator = {.malloc = hs_malloc, .free = hs_free};

static shard_t *shard_of(mpx__table_t *t, uint64_t h)
{
    return &t->shards[h >> 58]; /* top 6 bits: 64 shards */
}

mpx__table_t *mpx__table_create(size_t size_hint)
{
    mpx__table_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    unsigned long per = (unsigned long)(size_hint / MPX__SHARDS) + 64;
    for (int i = 0; i < MPX__SHARDS; i++) {
        pthread_mutex_init(&t->shards[i].mu, NULL);
        if (!ck_hs_init(&t->shards[i].hs, CK_HS_MODE_OBJECT | CK_HS_MODE_SPMC, hs_hash,
                        hs_compare, &allocator, per, 0x5bd1e995ul + (unsigned long)i)) {
            for (int j = 0; j < i; j++) {
                ck_hs_destroy(&t->shards[j].hs);
                pthread_mutex_destroy(&t->shards[j].mu);
            }
            pthread_mutex_destroy(&t->shards[i].mu);
            free(t);
            return NULL;
        }
    }
    return t;
}

static void free_all(shard_t *s)
{
    ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
    void *obj;
    while (ck_hs_next(&s->hs, &it, &obj))
        free(obj);
}

void mpx__table_destroy(mpx__table_t *t)
{
    if (!t)
        return;
    for (int i = 0; i < MPX__SHARDS; i++) {
        free_all(&t->shards[i]);
        ck_hs_destroy(&t->shards[i].hs);
        pthread_mutex_destroy(&t->shards[i].mu);
    }
    free(t);
}

/* A probe record on the stack: ids are at most MPX_ID_MAX bytes. */
typedef struct probe {
    rec_t r;
    char id[MPX_ID_MAX];
} probe_t;

static void make_probe(probe_t *p, const void *id, size_t len)
{
    p->r.len = (uint16_t)len;
    memcpy(p->r.id, id, len);
}

int mpx__table_add(mpx__table_t *t, const void *id, size_t len, mpx__table_hook hook,
                   void *data)
{
    probe_t p;
    make_probe(&p, id, len);
    uint64_t h = hash_bytes(id, len);
    shard_t *s = shard_of(t, h);
    unsigned long hh = (unsigned long)h ^ s->hs.seed;
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (!ck_hs_get(&s->hs, hh, &p.r)) {
        rec_t *r = malloc(sizeof *r + len);
        if (!r) {
            rc = MPX_ENOMEM;
        } else {
            r->len = (uint16_t)len;
            memcpy(r->id, id, len);
            if (!ck_hs_put(&s->hs, hh, r)) {
                free(r);
                rc = MPX_ENOMEM;
            } else if (hook && (rc = hook(id, len, data)) < 0) {
                ck_hs_remove(&s->hs, hh, r); /* undo: nothing was queued */
                free(r);
            } else {
                atomic_fetch_add_explicit(&t->count, 1, memory_order_relaxed);
                rc = 1;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int mpx__table_del(mpx__table_t *t, const void *id, size_t len, mpx__table_hook hook,
                   void *data)
{
    probe_t p;
    make_probe(&p, id, len);
    uint64_t h = hash_bytes(id, len);
    shard_t *s = shard_of(t, h);
    unsigned long hh = (unsigned long)h ^ s->hs.seed;
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    void *r = ck_hs_get(&s->hs, hh, &p.r);
    if (r && hook && (rc = hook(id, len, data)) < 0)
        r = NULL; /* could not queue: keep the spark */
    if (r) {
        ck_hs_remove(&s->hs, hh, &p.r);
        free(r);
        atomic_fetch_sub_explicit(&t->count, 1, memory_order_relaxed);
        rc = 1;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

bool mpx__table_has(mpx__table_t *t, const void *id, size_t len)
{
    probe_t p;
    make_probe(&p, id, len);
    uint64_t h = hash_bytes(id, len);
    shard_t *s = shard_of(t, h);
    pthread_mutex_lock(&s->mu);
    bool found = ck_hs_get(&s->hs, (unsigned long)h ^ s->hs.seed, &p.r) != NULL;
    pthread_mutex_unlock(&s->mu);
    return found;
}

size_t mpx__table_count(mpx__table_t *t)
{
    return atomic_load_explicit(&t->count, memory_order_relaxed);
}

void mpx__table_clear(mpx__table_t *t)
{
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &t->shards[i];
        pthread_mutex_lock(&s->mu);
        size_t n = ck_hs_count(&s->hs);
        free_all(s);
        ck_hs_reset(&s->hs);
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_sub_explicit(&t->count, n, memory_order_relaxed);
    }
}

int mpx__table_each(mpx__table_t *t, mpx__table_fn fn, void *data)
{
    for (int i = 0; i < MPX__SHARDS; i++) {
        shard_t *s = &t->shards[i];
        pthread_mutex_lock(&s->mu);
        ck_hs_iterator_t it = CK_HS_ITERATOR_INITIALIZER;
        void *obj;
        int stop = 0;
        while (!stop && ck_hs_next(&s->hs, &it, &obj)) {
            rec_t *r = obj;
            stop = fn(r->id, r->len, data);
        }
        pthread_mutex_unlock(&s->mu);
        if (stop)
            return stop;
    }
    return 0;
}
