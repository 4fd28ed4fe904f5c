/*
 * lookup.c - the lookup thread behind mpx_sparks_async().
 *
 * Callers copy their ids into a request and append it to a queue (mutex +
 * condition variable); they never wait. The thread ("mpx-lookup", its own
 * Redis connection) takes every queued request at once, answers what the
 * cache knows, sends one HMGET per request for the rest, all pipelined in
 * one round trip, then runs each request's callback, in submission order.
 * A request whose round trip failed gets its callback with the error.
 * At destroy, requests not yet answered get MPX_ECLOSED.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

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

static void serve(mpx_t *m, mpx__lookup_t *lk, req_t *batch)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    int rc = 0;
    for (req_t *r = batch; r; r = r->next)
        prepare(m, r);
    /* Send one HMGET per request with misses, pipelined. */
    bool any = false;
    for (req_t *r = batch; r; r = r->next)
        any |= r->nmiss > 0 && !r->err;
    if (any && (rc = mpx__conn_ensure(&lk->conn, false)) != 0) {
        for (req_t *r = batch; r; r = r->next)
            if (r->nmiss && !r->err)
                r->err = rc;
        any = false;
    }
    size_t sent = 0;
    for (req_t *r = batch; any && r && !rc; r = r->next) {
        if (!r->nmiss || r->err)
            continue;
        mpx__argv_reset(&a);
        rc = mpx__argv_push(&a, "HMGET", 5) |
             mpx__argv_push(&a, m->keys.sparks, m->keys.sparks_len);
        for (size_t k = 0; k < r->nmiss && !rc; k++)
            rc = mpx__argv_push(&a, r->ids[r->miss[k]], r->lens[r->miss[k]]);
        if (rc)
            rc = MPX_ENOMEM;
        else
            rc = mpx__conn_append(&lk->conn, &a);
        if (!rc)
            sent++;
    }
    if (rc && sent) {
        /* Could not build every request: the ones already appended are
         * failed below, and their unread replies must not be taken for the
         * next batch's: drop the connection. */
        mpx__conn_close(&lk->conn);
        for (req_t *r = batch; r; r = r->next)
            if (r->nmiss && !r->err)
                r->err = rc;
        any = false;
    }
    /* Read the replies in order; an I/O error fails every request sent. */
    for (req_t *r = batch; any && r; r = r->next) {
        if (!r->nmiss || r->err)
            continue;
        if (sent == 0) {
            r->err = rc ? rc : MPX_ECONN;
            continue;
        }
        sent--;
        redisReply *rep = NULL;
        int rrc = rc ? rc : mpx__conn_read(&lk->conn, &rep);
        if (rrc) {
            rc = rrc;
            r->err = rrc;
            continue;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            r->err = MPX_EREDIS;
        } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != r->nmiss) {
            r->err = MPX_EPROTO;
        } else {
            for (size_t k = 0; k < r->nmiss && !r->err; k++) {
                redisReply *e = rep->element[k];
                if (e->type != REDIS_REPLY_STRING)
                    continue;
                size_t i = r->miss[k];
                mpx__learn(m, r->ids[i], r->lens[i], e->str, e->len);
                if (mpx__list_set(r->res, i, e->str, e->len))
                    r->err = MPX_ENOMEM;
            }
        }
        freeReplyObject(rep);
    }
    mpx__argv_free(&a);
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
    mpx__conn_close(&lk->conn);
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
