/*
 * omega_send.c - sending: mpx_forward_spark / sparks / broadcast and their
 * non-blocking forms.
 *
 * A send is a "job": resolve the ids (mpx_sparks / mpx_sparks_async: memory
 * first, one HMGET for the rest) or list the servers (mpx_servers), deliver
 * what is on this server through the deliver callbacks, group the rest by
 * server and build one omega-supreme request body per server. The HTTP
 * requests of every job go through one thread per messenger ("mpx-omega")
 * that drives a libcurl multi handle: connections stay open and are reused,
 * at most `concurrency` requests are in flight (the others wait in a FIFO),
 * each has a connect and a whole-request timeout. The job completes when
 * every request answered or failed: a blocking caller is woken, or the
 * async callback runs on mpx-omega.
 *
 * Blocking forms resolve and deliver locally on the calling thread, then
 * wait for the thread. Async forms resolve on the registry's lookup thread
 * (mpx_sparks_async), whose callback only queues the job; local delivery,
 * grouping and (for broadcast) the servers lookup happen on mpx-omega.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "omega_internal.h"

#define RESP_MAX (64 * 1024)

enum { K_SPARK, K_SPARKS, K_BROADCAST };

typedef struct job job_t;

typedef struct hreq {
    struct hreq *next;
    job_t *job;
    char *server;
    size_t nids;
    mpx__buf_t body;
    mpx__buf_t resp;
    bool resp_too_big;
    CURL *easy;
    size_t slot; /* index in sender->live while in flight */
    char errbuf[CURL_ERROR_SIZE];
} hreq_t;

struct job {
    job_t *next;
    mpx_omega_t *om;
    int kind;
    const char *msg;
    size_t msg_len;
    char *msg_copy;
    /* spark / sparks: the ids (borrowed when blocking, copies when async) */
    size_t n;
    const void *const *ids;
    const size_t *lens;
    char **id_copies;
    size_t *len_copies;
    mpx_list_t *addrs;     /* resolved addresses (spark, sparks), or servers (broadcast) */
    int err;               /* lookup error (async) */
    bool resolved;
    hreq_t **reqs;
    size_t nreq, ndone;
    mpx_forward_result_t *res;
    mpx_forward_cb cb;
    void *data;
    bool blocking, done;
};

struct mpx__omega_sender {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;   /* job done (blocking callers), lookups drained */
    job_t *qhead, *qtail;  /* under mu */
    bool stopping, stop;   /* under mu */
    size_t lookups;        /* async lookups outstanding, under mu */
    CURLM *multi;
    struct curl_slist *headers;
    /* mpx-omega only */
    hreq_t *phead, *ptail;
    size_t inflight;
    hreq_t **live; /* the requests in flight, [0, inflight) */
    CURL **pool;
    size_t npool;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_ALL);
}

/* ---- results ---------------------------------------------------------------- */

void mpx_forward_result_free(mpx_forward_result_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nfailed; i++) {
        free(r->failed[i].server);
        free(r->failed[i].reason);
    }
    free(r->failed);
    free(r);
}

static char *str_dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Record a failure (best effort under memory pressure). */
static void add_failure(mpx_forward_result_t *r, const char *server, int err, int status,
                        const char *reason, size_t sparks)
{
    mpx_forward_failure_t *f = realloc(r->failed, (r->nfailed + 1) * sizeof *f);
    if (!f)
        return;
    r->failed = f;
    f += r->nfailed++;
    f->server = str_dup(server ? server : "");
    f->err = err;
    f->status = status;
    f->reason = str_dup(reason ? reason : mpx_strerror(err));
    f->sparks = sparks;
}

/* ---- jobs ---------------------------------------------------------------------- */

static void req_free(hreq_t *q)
{
    if (!q)
        return;
    free(q->server);
    mpx__buf_free(&q->body);
    mpx__buf_free(&q->resp);
    free(q);
}

static void job_free(job_t *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->nreq; i++)
        req_free(j->reqs[i]);
    free(j->reqs);
    for (size_t i = 0; j->id_copies && i < j->n; i++)
        free(j->id_copies[i]);
    free(j->id_copies);
    free(j->len_copies);
    free(j->msg_copy);
    mpx_list_free(j->addrs);
    mpx_forward_result_free(j->res);
    free(j);
}

static size_t id_len(const job_t *j, size_t i)
{
    return j->lens ? j->lens[i] : strlen((const char *)j->ids[i]);
}

/* The request for `server`, created with the body's head on first use. */
static int group_for(job_t *j, const char *server, hreq_t **out)
{
    for (size_t g = j->nreq; g-- > 0;) {
        if (strcmp(j->reqs[g]->server, server) == 0) {
            *out = j->reqs[g];
            return 0;
        }
    }
    hreq_t **rs = realloc(j->reqs, (j->nreq + 1) * sizeof *rs);
    if (!rs)
        return MPX_ENOMEM;
    j->reqs = rs;
    hreq_t *q = calloc(1, sizeof *q);
    if (!q || !(q->server = str_dup(server))) {
        free(q);
        return MPX_ENOMEM;
    }
    q->job = j;
    const char *tail = j->kind == K_SPARKS ? ",\"sparks\":[" : ",\"sparks\":";
    if (mpx__buf_append(&q->body, "{\"msg\":", 7) ||
        mpx__buf_append(&q->body, j->msg, j->msg_len) ||
        mpx__buf_append(&q->body, tail, strlen(tail))) {
        req_free(q);
        return MPX_ENOMEM;
    }
    j->reqs[j->nreq++] = q;
    *out = q;
    return 0;
}

/* Resolve-independent part: deliver locally, build the requests. */
static int prepare(job_t *j)
{
    mpx_omega_t *om = j->om;
    mpx_forward_result_t *r = j->res;
    char self[MPX_ADDRESS_MAX + 1];
    mpx__get_address(om->mpx, self);
    int rc = 0;
    if (j->kind == K_BROADCAST) {
        if (om->opt.deliver_all) {
            r->local = om->opt.deliver_all(om, j->msg, j->msg_len, om->opt.deliver_data);
            r->sent += r->local;
        }
        for (size_t i = 0; rc == 0 && i < j->addrs->count; i++) {
            const char *a = j->addrs->items[i];
            if (!a || (self[0] && strcmp(a, self) == 0))
                continue;
            hreq_t *q;
            rc = group_for(j, a, &q);
            if (rc == 0)
                rc = mpx__buf_append(&q->body, "\"\"}", 3) ? MPX_ENOMEM : 0;
        }
        r->servers = j->nreq;
        return rc;
    }
    for (size_t i = 0; rc == 0 && i < j->n; i++) {
        const char *a = i < j->addrs->count ? j->addrs->items[i] : NULL;
        const char *id = j->ids[i];
        size_t len = id_len(j, i);
        if (!a) {
            r->unknown++;
            continue;
        }
        if (self[0] && strcmp(a, self) == 0) {
            if (om->opt.deliver) {
                /* The callback gets a NUL-terminated id. */
                char small[256];
                char *idz = len < sizeof small ? small : malloc(len + 1);
                if (!idz)
                    return MPX_ENOMEM;
                memcpy(idz, id, len);
                idz[len] = 0;
                if (om->opt.deliver(om, idz, len, j->msg, j->msg_len, om->opt.deliver_data) > 0)
                    r->local++;
                if (idz != small)
                    free(idz);
            }
            continue;
        }
        hreq_t *q;
        rc = group_for(j, a, &q);
        if (rc == 0 && q->nids > 0 && mpx__buf_append(&q->body, ",", 1))
            rc = MPX_ENOMEM;
        if (rc == 0)
            rc = mpx__json_append_string(&q->body, id, len);
        if (rc == 0)
            q->nids++;
    }
    for (size_t g = 0; rc == 0 && g < j->nreq; g++) {
        const char *end = j->kind == K_SPARKS ? "]}" : "}";
        if (mpx__buf_append(&j->reqs[g]->body, end, strlen(end)))
            rc = MPX_ENOMEM;
    }
    r->sent += r->local;
    r->servers = j->nreq;
    return rc;
}

/* ---- the thread ---------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t nmemb, void *data)
{
    hreq_t *q = data;
    size_t n = size * nmemb;
    if (q->resp.len + n > RESP_MAX) {
        q->resp_too_big = true;
        return 0;
    }
    return mpx__buf_append(&q->resp, p, n) ? 0 : n;
}

static void origin_url(const mpx_omega_t *om, const char *server, mpx__buf_t *u)
{
    /* url.resolve(server, path) with an absolute path: the origin + path. */
    const char *p = strstr(server, "://");
    size_t n = strlen(server);
    if (p) {
        const char *q = p + 3;
        while (*q && *q != '/' && *q != '?' && *q != '#')
            q++;
        n = (size_t)(q - server);
    }
    u->len = 0;
    mpx__buf_append(u, server, n);
    mpx__buf_append(u, om->path, strlen(om->path));
    mpx__buf_append(u, "", 1);
}

static void complete_job(mpx_omega_t *om, job_t *j)
{
    mpx__omega_sender_t *s = om->sender;
    if (j->blocking) {
        pthread_mutex_lock(&s->mu);
        j->done = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    mpx_forward_result_t *r = j->err ? NULL : j->res;
    if (!j->err)
        j->res = NULL;
    j->cb(om, j->err, r, j->data);
    job_free(j);
}

static void req_done(mpx_omega_t *om, hreq_t *q)
{
    job_t *j = q->job;
    if (++j->ndone == j->nreq)
        complete_job(om, j);
}

static void req_fail(mpx_omega_t *om, hreq_t *q, int err, const char *reason)
{
    add_failure(q->job->res, q->server, err, 0, reason,
                q->job->kind == K_BROADCAST ? 0 : q->nids);
    req_done(om, q);
}

static int launch(mpx_omega_t *om, hreq_t *q)
{
    mpx__omega_sender_t *s = om->sender;
    CURL *e = s->npool ? s->pool[--s->npool] : curl_easy_init();
    if (!e)
        return MPX_ENOMEM;
    curl_easy_reset(e);
    mpx__buf_t url = {0};
    origin_url(om, q->server, &url);
    if (!url.data) {
        curl_easy_cleanup(e);
        return MPX_ENOMEM;
    }
    q->errbuf[0] = 0;
    curl_easy_setopt(e, CURLOPT_URL, url.data);
    mpx__buf_free(&url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, om->method);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body.len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->headers);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)om->opt.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)om->opt.request_timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, q);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, q);
    if (curl_multi_add_handle(s->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        return MPX_ENOMEM;
    }
    q->easy = e;
    q->slot = s->inflight;
    s->live[s->inflight++] = q;
    return 0;
}

static void release_easy(mpx__omega_sender_t *s, CURL *e, size_t keep)
{
    curl_multi_remove_handle(s->multi, e);
    if (s->npool < keep)
        s->pool[s->npool++] = e;
    else
        curl_easy_cleanup(e);
}

/* A transfer ended: judge it as the original does. */
static void finished(mpx_omega_t *om, hreq_t *q, CURLcode cc)
{
    mpx__omega_sender_t *s = om->sender;
    long status = 0;
    curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
    release_easy(s, q->easy, om->opt.concurrency);
    q->easy = NULL;
    s->live[q->slot] = s->live[--s->inflight];
    s->live[q->slot]->slot = q->slot;
    mpx_forward_result_t *r = q->job->res;
    size_t nsp = q->job->kind == K_BROADCAST ? 0 : q->nids;
    if (cc != CURLE_OK) {
        int err = cc == CURLE_OPERATION_TIMEDOUT ? MPX_ETIMEDOUT
                  : q->resp_too_big              ? MPX_EPROTO
                                                 : MPX_ECONN;
        char why[CURL_ERROR_SIZE + 64];
        snprintf(why, sizeof why, "%s", q->resp_too_big ? "reply larger than 64 KiB"
                                        : q->errbuf[0]  ? q->errbuf
                                                        : curl_easy_strerror(cc));
        add_failure(r, q->server, err, (int)status, why, nsp);
        req_done(om, q);
        return;
    }
    json_t *body = json_loadb(q->resp.data ? q->resp.data : "", q->resp.len, JSON_DECODE_ANY,
                              NULL);
    json_t *reason = json_is_object(body) ? json_object_get(body, "reason") : NULL;
    const char *rs = json_is_string(reason) ? json_string_value(reason) : NULL;
    char why[128];
    if (status != 200) {
        snprintf(why, sizeof why, "Invalid status code (%ld) returned", status);
        add_failure(r, q->server, MPX_EPROTO, (int)status, rs && *rs ? rs : why, nsp);
    } else if (!json_is_object(body) || !json_is_true(json_object_get(body, "ok"))) {
        add_failure(r, q->server, MPX_EPROTO, (int)status,
                    rs && *rs ? rs : "Unable to process the request", nsp);
    } else {
        json_t *send = json_object_get(body, "send");
        if (json_is_number(send) && json_number_value(send) > 0)
            r->sent += (uint64_t)json_number_value(send);
    }
    json_decref(body);
    req_done(om, q);
}

/* Start a queued job on this thread: finish resolving, deliver locally,
 * queue its requests. */
static void start_job(mpx_omega_t *om, job_t *j)
{
    mpx__omega_sender_t *s = om->sender;
    if (!j->resolved) { /* async broadcast: the servers lookup */
        j->err = mpx_servers(om->mpx, 0, &j->addrs);
        j->resolved = true;
    }
    if (!j->err && !j->blocking)
        j->err = prepare(j);
    if (j->err || j->nreq == 0) {
        complete_job(om, j);
        return;
    }
    for (size_t i = 0; i < j->nreq; i++) {
        hreq_t *q = j->reqs[i];
        q->next = NULL;
        if (s->ptail)
            s->ptail->next = q;
        else
            s->phead = q;
        s->ptail = q;
    }
}

static void launch_pending(mpx_omega_t *om)
{
    mpx__omega_sender_t *s = om->sender;
    while (s->phead && s->inflight < om->opt.concurrency) {
        hreq_t *q = s->phead;
        s->phead = q->next;
        if (!s->phead)
            s->ptail = NULL;
        if (launch(om, q) != 0)
            req_fail(om, q, MPX_ENOMEM, "cannot start the request");
    }
}

static void *sender_main(void *arg)
{
    mpx_omega_t *om = arg;
    mpx__omega_sender_t *s = om->sender;
    mpx__thread_init("mpx-omega");
    for (;;) {
        pthread_mutex_lock(&s->mu);
        job_t *batch = s->qhead;
        s->qhead = s->qtail = NULL;
        bool stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        while (batch) {
            job_t *next = batch->next;
            if (stop) {
                batch->err = batch->blocking ? 0 : MPX_ECLOSED;
                if (batch->blocking) {
                    for (size_t i = 0; i < batch->nreq; i++)
                        add_failure(batch->res, batch->reqs[i]->server, MPX_ECLOSED, 0,
                                    "the messenger is being destroyed", batch->reqs[i]->nids);
                }
                complete_job(om, batch);
            } else {
                start_job(om, batch);
            }
            batch = next;
        }
        if (stop)
            break;
        launch_pending(om);
        int running = 0;
        curl_multi_perform(s->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            hreq_t *q = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
            finished(om, q, m->data.result);
        }
        launch_pending(om);
        curl_multi_poll(s->multi, NULL, 0, 1000, NULL);
    }
    /* Stopping: fail what is left. */
    while (s->phead) {
        hreq_t *q = s->phead;
        s->phead = q->next;
        req_fail(om, q, MPX_ECLOSED, "the messenger is being destroyed");
    }
    s->ptail = NULL;
    while (s->inflight > 0) {
        hreq_t *q = s->live[--s->inflight];
        curl_multi_remove_handle(s->multi, q->easy);
        curl_easy_cleanup(q->easy);
        q->easy = NULL;
        req_fail(om, q, MPX_ECLOSED, "the messenger is being destroyed");
    }
    return NULL;
}

/* ---- start / stop ---------------------------------------------------------------- */

int mpx__omega_sender_start(mpx_omega_t *om)
{
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return mpx__fail(MPX_ENOMEM, "curl_global_init failed: %s",
                         curl_easy_strerror(curl_init_rc));
    mpx__omega_sender_t *s = calloc(1, sizeof *s);
    if (!s)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    s->pool = calloc(om->opt.concurrency, sizeof *s->pool);
    s->live = calloc(om->opt.concurrency, sizeof *s->live);
    s->multi = curl_multi_init();
    struct curl_slist *h = NULL, *t;
    const char *hs[] = {"Content-Type: application/json", "Accept: application/json", "Expect:",
                        om->auth_header};
    bool ok = s->pool && s->live && s->multi;
    for (size_t i = 0; ok && i < sizeof hs / sizeof *hs; i++) {
        if (!(t = curl_slist_append(h, hs[i])))
            ok = false;
        else
            h = t;
    }
    s->headers = h;
    if (!ok) {
        curl_slist_free_all(s->headers);
        if (s->multi)
            curl_multi_cleanup(s->multi);
        free(s->pool);
        free(s->live);
        free(s);
        return mpx__fail(MPX_ENOMEM, "out of memory");
    }
    long maxconn = om->opt.concurrency < 16 ? 16 : (long)om->opt.concurrency;
    curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, maxconn);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    om->sender = s;
    if (pthread_create(&s->thread, NULL, sender_main, om) != 0) {
        om->sender = NULL;
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->mu);
        curl_slist_free_all(s->headers);
        curl_multi_cleanup(s->multi);
        free(s->pool);
        free(s->live);
        free(s);
        return mpx__fail(MPX_ETHREAD, "cannot start the omega thread");
    }
    return 0;
}

void mpx__omega_sender_stop(mpx_omega_t *om)
{
    mpx__omega_sender_t *s = om->sender;
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    while (s->lookups > 0) /* async lookups answer within the command timeout */
        pthread_cond_wait(&s->cond, &s->mu);
    s->stop = true;
    pthread_mutex_unlock(&s->mu);
    curl_multi_wakeup(s->multi);
    pthread_join(s->thread, NULL);
    for (size_t i = 0; i < s->npool; i++)
        curl_easy_cleanup(s->pool[i]);
    curl_multi_cleanup(s->multi);
    curl_slist_free_all(s->headers);
    free(s->pool);
    free(s->live);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    free(s);
    om->sender = NULL;
}

/* ---- the API ---------------------------------------------------------------------- */

static int check_common(mpx_omega_t *om, const char *msg, size_t *msg_len)
{
    if (!om || !msg)
        return mpx__fail(MPX_EINVAL, "mpx_forward: NULL argument");
    if (!om->mpx)
        return mpx__fail(MPX_ESTATE, "mpx_forward: this messenger has no registry (receive only)");
    if (*msg_len == 0)
        *msg_len = strlen(msg);
    return mpx__json_check(msg, *msg_len, "msg");
}

static int check_ids(const void *const *ids, const size_t *lens, size_t n)
{
    if (!ids && n)
        return mpx__fail(MPX_EINVAL, "mpx_forward: ids is NULL");
    for (size_t i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : (ids[i] ? strlen(ids[i]) : 0);
        int rc = mpx__check_id(ids[i], len);
        if (rc)
            return mpx__fail(rc, "mpx_forward: id %zu: %s", i, mpx_last_error());
        mpx__buf_t b = {0};
        rc = mpx__json_append_string(&b, ids[i], len);
        mpx__buf_free(&b);
        if (rc == MPX_EINVAL)
            return mpx__fail(rc, "mpx_forward: id %zu is not valid UTF-8", i);
        if (rc)
            return mpx__fail(rc, "out of memory");
    }
    return 0;
}

static job_t *job_new(mpx_omega_t *om, int kind, const char *msg, size_t msg_len)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->om = om;
    j->kind = kind;
    j->msg = msg;
    j->msg_len = msg_len;
    if (!(j->res = calloc(1, sizeof *j->res))) {
        free(j);
        return NULL;
    }
    return j;
}

static int enqueue(mpx_omega_t *om, job_t *j, bool from_lookup)
{
    mpx__omega_sender_t *s = om->sender;
    pthread_mutex_lock(&s->mu);
    if (s->stopping && !from_lookup) {
        pthread_mutex_unlock(&s->mu);
        return MPX_ECLOSED;
    }
    j->next = NULL;
    if (s->qtail)
        s->qtail->next = j;
    else
        s->qhead = j;
    s->qtail = j;
    if (from_lookup) {
        s->lookups--;
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->mu);
    curl_multi_wakeup(s->multi);
    return 0;
}

/* Blocking: prepare here, then let the thread do the HTTP part. */
static int run_blocking(mpx_omega_t *om, job_t *j, mpx_forward_result_t **out)
{
    int rc = prepare(j);
    if (rc == 0 && j->nreq > 0) {
        j->blocking = true;
        j->resolved = true;
        rc = enqueue(om, j, false);
        if (rc == 0) {
            mpx__omega_sender_t *s = om->sender;
            pthread_mutex_lock(&s->mu);
            while (!j->done)
                pthread_cond_wait(&s->cond, &s->mu);
            pthread_mutex_unlock(&s->mu);
        }
    }
    if (rc) {
        job_free(j);
        return mpx__fail(rc, "mpx_forward: %s", mpx_strerror(rc));
    }
    *out = j->res;
    j->res = NULL;
    job_free(j);
    return 0;
}

static int forward_ids(mpx_omega_t *om, int kind, const void *const *ids, const size_t *lens,
                       size_t n, const char *msg, size_t msg_len, mpx_forward_result_t **out)
{
    mpx__clear_error();
    if (!out)
        return mpx__fail(MPX_EINVAL, "mpx_forward: out is NULL");
    *out = NULL;
    int rc = check_common(om, msg, &msg_len);
    if (rc || (rc = check_ids(ids, lens, n)) != 0)
        return rc;
    job_t *j = job_new(om, kind, msg, msg_len);
    if (!j)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    j->ids = ids;
    j->lens = lens;
    j->n = n;
    if ((rc = mpx_sparks(om->mpx, ids, lens, n, &j->addrs)) != 0) {
        job_free(j);
        return rc; /* message set by mpx_sparks */
    }
    return run_blocking(om, j, out);
}

int mpx_forward_spark(mpx_omega_t *om, const void *id, size_t len, const char *msg,
                      size_t msg_len, mpx_forward_result_t **out)
{
    const void *ids[1] = {id};
    size_t lens[1] = {len};
    return forward_ids(om, K_SPARK, ids, lens, 1, msg, msg_len, out);
}

int mpx_forward_sparks(mpx_omega_t *om, const void *const *ids, const size_t *lens, size_t n,
                       const char *msg, size_t msg_len, mpx_forward_result_t **out)
{
    return forward_ids(om, K_SPARKS, ids, lens, n, msg, msg_len, out);
}

int mpx_forward_broadcast(mpx_omega_t *om, const char *msg, size_t msg_len,
                          mpx_forward_result_t **out)
{
    mpx__clear_error();
    if (!out)
        return mpx__fail(MPX_EINVAL, "mpx_forward: out is NULL");
    *out = NULL;
    int rc = check_common(om, msg, &msg_len);
    if (rc)
        return rc;
    job_t *j = job_new(om, K_BROADCAST, msg, msg_len);
    if (!j)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    if ((rc = mpx_servers(om->mpx, 0, &j->addrs)) != 0) {
        job_free(j);
        return rc;
    }
    return run_blocking(om, j, out);
}

/* ---- non-blocking ------------------------------------------------------------------ */

static job_t *job_new_async(mpx_omega_t *om, int kind, const char *msg, size_t msg_len,
                            mpx_forward_cb cb, void *data)
{
    job_t *j = job_new(om, kind, NULL, msg_len);
    if (!j)
        return NULL;
    if (!(j->msg_copy = malloc(msg_len + 1))) {
        job_free(j);
        return NULL;
    }
    memcpy(j->msg_copy, msg, msg_len);
    j->msg_copy[msg_len] = 0;
    j->msg = j->msg_copy;
    j->cb = cb;
    j->data = data;
    return j;
}

static void on_resolved(mpx_t *mpx, int err, mpx_list_t *result, void *data)
{
    (void)mpx;
    job_t *j = data;
    j->err = err;
    j->addrs = result;
    j->resolved = true;
    enqueue(j->om, j, true);
}

static int forward_ids_async(mpx_omega_t *om, int kind, const void *const *ids,
                             const size_t *lens, size_t n, const char *msg, size_t msg_len,
                             mpx_forward_cb cb, void *data)
{
    mpx__clear_error();
    if (!cb)
        return mpx__fail(MPX_EINVAL, "mpx_forward: cb is NULL");
    int rc = check_common(om, msg, &msg_len);
    if (rc || (rc = check_ids(ids, lens, n)) != 0)
        return rc;
    job_t *j = job_new_async(om, kind, msg, msg_len, cb, data);
    if (!j)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    j->n = n;
    j->id_copies = calloc(n ? n : 1, sizeof *j->id_copies);
    j->len_copies = malloc((n ? n : 1) * sizeof *j->len_copies);
    bool ok = j->id_copies && j->len_copies;
    for (size_t i = 0; ok && i < n; i++) {
        size_t len = lens ? lens[i] : strlen(ids[i]);
        j->len_copies[i] = len;
        if (!(j->id_copies[i] = malloc(len + 1)))
            ok = false;
        else {
            memcpy(j->id_copies[i], ids[i], len);
            j->id_copies[i][len] = 0;
        }
    }
    if (!ok) {
        job_free(j);
        return mpx__fail(MPX_ENOMEM, "out of memory");
    }
    j->ids = (const void *const *)j->id_copies;
    j->lens = j->len_copies;
    mpx__omega_sender_t *s = om->sender;
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        job_free(j);
        return mpx__fail(MPX_ECLOSED, "the messenger is being destroyed");
    }
    s->lookups++;
    pthread_mutex_unlock(&s->mu);
    rc = mpx_sparks_async(om->mpx, j->ids, j->lens, n, on_resolved, j);
    if (rc) {
        pthread_mutex_lock(&s->mu);
        s->lookups--;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        job_free(j);
        return rc;
    }
    return 0;
}

int mpx_forward_spark_async(mpx_omega_t *om, const void *id, size_t len, const char *msg,
                            size_t msg_len, mpx_forward_cb cb, void *data)
{
    const void *ids[1] = {id};
    size_t lens[1] = {len};
    return forward_ids_async(om, K_SPARK, ids, lens, 1, msg, msg_len, cb, data);
}

int mpx_forward_sparks_async(mpx_omega_t *om, const void *const *ids, const size_t *lens,
                             size_t n, const char *msg, size_t msg_len, mpx_forward_cb cb,
                             void *data)
{
    return forward_ids_async(om, K_SPARKS, ids, lens, n, msg, msg_len, cb, data);
}

int mpx_forward_broadcast_async(mpx_omega_t *om, const char *msg, size_t msg_len,
                                mpx_forward_cb cb, void *data)
{
    mpx__clear_error();
    if (!cb)
        return mpx__fail(MPX_EINVAL, "mpx_forward: cb is NULL");
    int rc = check_common(om, msg, &msg_len);
    if (rc)
        return rc;
    job_t *j = job_new_async(om, K_BROADCAST, msg, msg_len, cb, data);
    if (!j)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    if ((rc = enqueue(om, j, false)) != 0) {
        job_free(j);
        return mpx__fail(rc, "the messenger is being destroyed");
    }
    return 0;
}
