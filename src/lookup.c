/*
 * lookup.c - the lookup thread behind mpx_sparks_async().
 *
 * Callers copy their ids into a request and append it to a queue (mutex +
 * condition variable); they never wait. The thread ("mpx-lookup", its own
 * Redis connection) takes every queued request at once, answers what the
 * cache knows, sends one HMGET per shard for the rest of all of them,
 * pipelined in one round trip (mpx__owners), then runs each request's callback, in submission order.
 * A request whose round trip failed gets its callback with the error.
 * At destroy, requests not yet answered get MPX_ECLOSED.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "cluster.h"

typedef struct req {
    struct req *next;
    mpx_lookup_cb cb;
    void *data;
    size_t n;
    size_t *lens;
    char **ids;        /* copies */
    mpx_list_t *res;
    size_t *miss;      /* indexes of ids not answered from memory */
    size_t nmiss;
    int err;
} req_t;

struct mpx__lookup {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    req_t *head, *tail; /* under mu */
    bool stop;
    mpx__conn_t conn;
};

static void req_free(req_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->ids && i < r->n; i++)
        free(r->ids[i]);
    free(r->ids);
    free(r->lens);
    free(r->miss);
    mpx_list_free(r->res);
    free(r);
}

static void finish(mpx_t *m, req_t *r)
{
    mpx_list_t *res = NULL;
    if (r->err == 0) {
        res = r->res;
        r->res = NULL;
    }
    r->cb(m, r->err, res, r->data);
    req_free(r);
}

/* Answer from memory; list the misses. */
static void prepare(mpx_t *m, req_t *r)
{
    for (size_t i = 0; i < r->n && !r->err; i++) {
        const mpx__srv_t *srv;
        if (mpx__local_hit(m, r->ids[i], r->lens[i], &srv)) {
            if (mpx__list_set(r->res, i, srv->addr, srv->len))
                r->err = MPX_ENOMEM;
        } else {
            r->miss[r->nmiss++] = i;
        }
    }
}

typedef struct flat {
    mpx_t *m;
    req_t **req;     /* the request of each flattened miss */
    size_t *idx;     /* the id's index in its request */
} flat_t;

static void found(void *ctx, size_t i, const char *addr, size_t alen)
{
    flat_t *f = ctx;
    req_t *r = f->req[i];
    size_t k = f->idx[i];
    mpx__learn(f->m, r->ids[k], r->lens[k], addr, alen);
    if (!r->err && mpx__list_set(r->res, k, addr, alen))
        r->err = MPX_ENOMEM;
}

static void serve(mpx_t *m, mpx__lookup_t *lk, req_t *batch)
{
    size_t total = 0;
    for (req_t *r = batch; r; r = r->next) {
        prepare(m, r);
        if (!r->err)
            total += r->nmiss;
    }
    /* Every miss of the batch in one call: one HMGET per shard, all
     * pipelined in one round trip (per node on a cluster). */
    if (total > 0) {
        flat_t f = {m, malloc(total * sizeof *f.req), malloc(total * sizeof *f.idx)};
        const void **ids = malloc(total * sizeof *ids);
        size_t *lens = malloc(total * sizeof *lens);
        int rc = f.req && f.idx && ids && lens ? 0 : MPX_ENOMEM;
        size_t j = 0;
        for (req_t *r = batch; rc == 0 && r; r = r->next)
            for (size_t k = 0; !r->err && k < r->nmiss; k++, j++) {
                f.req[j] = r;
                f.idx[j] = r->miss[k];
                ids[j] = r->ids[r->miss[k]];
                lens[j] = r->lens[r->miss[k]];
            }
        if (rc == 0 && (rc = mpx__conn_ensure(&lk->conn, false)) == 0)
            rc = mpx__owners(m, &lk->conn, total, ids, lens, found, &f);
        if (rc)
            for (req_t *r = batch; r; r = r->next)
                if (r->nmiss && !r->err)
                    r->err = rc;
        free(f.req);
        free(f.idx);
        free(ids);
        free(lens);
    }
    while (batch) {
        req_t *next = batch->next;
        finish(m, batch);
        batch = next;
    }
}

static void *lookup_main(void *arg)
{
    mpx_t *m = arg;
    mpx__lookup_t *lk = m->lookup;
    mpx__thread_init("mpx-lookup");
    pthread_mutex_lock(&lk->mu);
    for (;;) {
        while (!lk->head && !lk->stop)
            pthread_cond_wait(&lk->cond, &lk->mu);
        req_t *batch = lk->head;
        lk->head = lk->tail = NULL;
        bool stop = lk->stop;
        pthread_mutex_unlock(&lk->mu);
        if (stop) {
            while (batch) {
                req_t *next = batch->next;
                batch->err = MPX_ECLOSED;
                finish(m, batch);
                batch = next;
            }
            break;
        }
        serve(m, lk, batch);
        pthread_mutex_lock(&lk->mu);
    }
    mpx__conn_free(&lk->conn);
    return NULL;
}

int mpx__lookup_start(mpx_t *m)
{
    mpx__lookup_t *lk = calloc(1, sizeof *lk);
    if (!lk)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    pthread_mutex_init(&lk->mu, NULL);
    pthread_cond_init(&lk->cond, NULL);
    mpx__conn_init(&lk->conn, &m->ep, m->opt.connect_timeout_ms, m->opt.command_timeout_ms,
                   "async lookup", &m->n.redis_errors);
    m->lookup = lk;
    if (pthread_create(&lk->thread, NULL, lookup_main, m) != 0) {
        m->lookup = NULL;
        pthread_cond_destroy(&lk->cond);
        pthread_mutex_destroy(&lk->mu);
        free(lk);
        return mpx__fail(MPX_ETHREAD, "cannot start the lookup thread");
    }
    return 0;
}

void mpx__lookup_stop(mpx_t *m)
{
    mpx__lookup_t *lk = m->lookup;
    if (!lk)
        return;
    pthread_mutex_lock(&lk->mu);
    lk->stop = true;
    pthread_cond_signal(&lk->cond);
    pthread_mutex_unlock(&lk->mu);
    pthread_join(lk->thread, NULL);
    pthread_cond_destroy(&lk->cond);
    pthread_mutex_destroy(&lk->mu);
    free(lk);
    m->lookup = NULL;
}

int mpx_sparks_async(mpx_t *mpx, const void *const *ids, const size_t *lens, size_t n,
                     mpx_lookup_cb cb, void *data)
{
    mpx__clear_error();
    if (!mpx || !cb || (!ids && n))
        return mpx__fail(MPX_EINVAL, "mpx_sparks_async: NULL argument");
    if (atomic_load(&mpx->closing))
        return mpx__fail(MPX_ECLOSED, "the registry is being destroyed");
    int rc;
    for (size_t i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : (ids[i] ? strlen(ids[i]) : 0);
        if ((rc = mpx__check_id(ids[i], len)) != 0)
            return mpx__fail(rc, "mpx_sparks_async: id %zu: %s", i, mpx_last_error());
    }
    req_t *r = calloc(1, sizeof *r);
    if (!r)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    r->cb = cb;
    r->data = data;
    r->n = n;
    r->ids = calloc(n ? n : 1, sizeof *r->ids);
    r->lens = malloc((n ? n : 1) * sizeof *r->lens);
    r->miss = malloc((n ? n : 1) * sizeof *r->miss);
    r->res = mpx__list_new(n);
    bool ok = r->ids && r->lens && r->miss && r->res;
    for (size_t i = 0; ok && i < n; i++) {
        size_t len = lens ? lens[i] : strlen(ids[i]);
        r->lens[i] = len;
        if (!(r->ids[i] = malloc(len ? len : 1)))
            ok = false;
        else
            memcpy(r->ids[i], ids[i], len);
    }
    if (!ok) {
        req_free(r);
        return mpx__fail(MPX_ENOMEM, "out of memory");
    }
    mpx__lookup_t *lk = mpx->lookup;
    pthread_mutex_lock(&lk->mu);
    if (lk->tail)
        lk->tail->next = r;
    else
        lk->head = r;
    lk->tail = r;
    pthread_cond_signal(&lk->cond);
    pthread_mutex_unlock(&lk->mu);
    return 0;
}
