/*
 * test_hotpath.c - the cache and the writer under failures: Redis killed
 * in the middle of batches and restarted empty or from old data; remote
 * caching; asynchronous lookups; coalescing and latency counters.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "support.h"

static void connect_range(mpx_t *m, const char *prefix, int from, int to)
{
    char id[32];
    for (int i = from; i < to; i++)
        cr_assert_eq(mpx_connect(m, id, (size_t)snprintf(id, sizeof id, "%s%d", prefix, i)), 0);
}

static void disconnect_range(mpx_t *m, const char *prefix, int from, int to)
{
    char id[32];
    for (int i = from; i < to; i++)
        cr_assert_eq(mpx_disconnect(m, id, (size_t)snprintf(id, sizeof id, "%s%d", prefix, i)),
                     0);
}

/* Does Redis hold ids prefix[from..to) (sampled) as `present` says? */
static bool sample_ok(redisContext *c, const char *ns, const char *addr, const char *prefix,
                      int from, int to, bool present)
{
    for (int i = from; i < to; i += 97) {
        redisReply *r = t_cmd(c, "HGET %s:sparks %s%d", ns, prefix, i);
        bool ok = present ? (r->type == REDIS_REPLY_STRING && strcmp(r->str, addr) == 0)
                          : r->type == REDIS_REPLY_NIL;
        freeReplyObject(r);
        if (!ok)
            return false;
    }
    return true;
}

typedef struct expect {
    const char *prefix;
    int from, to;
    bool present;
} expect_t;

/* Wait (bounded) until Redis holds exactly `n` sparks, all in our set, and
 * every expectation holds (counts alone can match half-way through a
 * rewrite that has not removed the stale entries yet). */
static void converge(redisContext *c, const char *ns, const char *addr, long long n,
                     const expect_t *ex, size_t nex, unsigned ms)
{
    uint64_t end = t_now_ms() + ms;
    while (t_now_ms() < end) {
        bool ok = t_int(c, "HLEN %s:sparks", ns) == n &&
                  t_int(c, "SCARD %s:%s:sparks", ns, addr) == n &&
                  t_int(c, "SISMEMBER %s:servers %s", ns, addr) == 1;
        for (size_t i = 0; ok && i < nex; i++)
            ok = sample_ok(c, ns, addr, ex[i].prefix, ex[i].from, ex[i].to, ex[i].present);
        if (ok)
            return;
        t_sleep_ms(50);
    }
    cr_assert_fail("not converged after %u ms: HLEN %lld SCARD %lld (want %lld)", ms,
                   t_int(c, "HLEN %s:sparks", ns), t_int(c, "SCARD %s:%s:sparks", ns, addr), n);
}

static void expect_present(redisContext *c, const char *ns, const char *addr, const char *prefix,
                           int from, int to, bool present)
{
    for (int i = from; i < to; i += 97) {
        redisReply *r = t_cmd(c, "HGET %s:sparks %s%d", ns, prefix, i);
        if (present) {
            cr_assert_eq(r->type, REDIS_REPLY_STRING, "%s%d missing", prefix, i);
            cr_assert_str_eq(r->str, addr);
        } else {
            cr_assert_eq(r->type, REDIS_REPLY_NIL, "%s%d should be gone", prefix, i);
        }
        freeReplyObject(r);
    }
}

static void restart_mid_batch(bool with_old_data)
{
    int n = 20000 / t_scale();
    redis_proc_t rp;
    const char *extra[] = {"--dbfilename", "dump.rdb", NULL};
    cr_assert_eq(redis_proc_start(&rp, extra), 0);
    mpx_options_t o;
    t_options(&o, rp.url);
    o.lease_ms = 450; /* heartbeat every 150 ms */
    o.interval_ms = 60000;
    o.connect_timeout_ms = 300;
    const char *addr = "http://127.0.0.1:8100";
    mpx_t *m = t_make(&o, addr);
    connect_range(m, "a", 0, n);
    cr_assert_eq(mpx_flush(m, 20000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(rp.url);
    if (with_old_data) {
        redisReply *r = t_cmd(c, "SAVE");
        cr_assert_eq(r->type, REDIS_REPLY_STATUS, "SAVE: %s", r->str ? r->str : "");
        freeReplyObject(r);
    }
    /* After the snapshot: a0..a(n/4) leave, b* arrive, then c* while Redis
     * is killed in the middle of writing them. */
    disconnect_range(m, "a", 0, n / 4);
    connect_range(m, "b", 0, n / 2);
    cr_assert_eq(mpx_flush(m, 20000), 0, "%s", mpx_last_error());
    connect_range(m, "c", 0, n);
    redisFree(c);
    redis_proc_kill(&rp);
    disconnect_range(m, "b", 0, n / 4); /* while Redis is down */
    cr_assert_eq(redis_proc_restart(&rp, extra), 0);
    c = t_connect(rp.url);
    if (with_old_data)
        cr_assert_geq(t_int(c, "HLEN %s:sparks", o.ns), n / 2, "Redis came back with old data");
    long long want = (long long)(n - n / 4) + (n / 2 - n / 4) + n;
    const expect_t ex[] = {{"a", 0, n / 4, false}, {"a", n / 4, n, true},
                           {"b", 0, n / 4, false}, {"b", n / 4, n / 2, true},
                           {"c", 0, n, true}};
    converge(c, o.ns, addr, want, ex, sizeof ex / sizeof ex[0], 30000);
    expect_present(c, o.ns, addr, "a", 0, n / 4, false);
    expect_present(c, o.ns, addr, "a", n / 4, n, true);
    expect_present(c, o.ns, addr, "b", 0, n / 4, false);
    expect_present(c, o.ns, addr, "b", n / 4, n / 2, true);
    expect_present(c, o.ns, addr, "c", 0, n, true);
    cr_assert_eq(t_int(c, "EXISTS %s:%s", o.ns, addr), 1, "alive key back");
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_geq(st.reregistered, 1);
    redisFree(c);
    mpx_unregister(m);
    mpx_destroy(m);
    redis_proc_destroy(&rp);
}

Test(hotpath, redis_killed_mid_batch_and_restarted_empty, .timeout = 120)
{
    restart_mid_batch(false);
}

Test(hotpath, redis_killed_mid_batch_and_restarted_with_old_data, .timeout = 120)
{
    restart_mid_batch(true);
}

Test(hotpath, churn_is_coalesced_and_latency_is_measured)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.batch_delay_ms = 200;
    mpx_t *m = t_make(&o, "http://127.0.0.1:8110");
    cr_assert_eq(mpx_flush(m, 5000), 0);
    for (int k = 0; k < 10; k++) {
        connect_range(m, "z", 0, 100);
        disconnect_range(m, "z", 0, 100);
    }
    connect_range(m, "y", 0, 50);
    cr_assert_eq(mpx_flush(m, 5000), 0);
    mpx_stats_t st;
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert_eq(st.local_sparks, 50);
    cr_assert_eq(st.queued, 2050, "every change counted (%llu)", (unsigned long long)st.queued);
    cr_assert_geq(st.coalesced, 100, "z* cancelled out before being written (%llu)",
                  (unsigned long long)st.coalesced);
    cr_assert_eq(st.committed, 50, "only y* were written (%llu)", (unsigned long long)st.committed);
    cr_assert_eq(st.commit_latency_count, st.committed);
    cr_assert_geq(st.commit_latency_p50_us, 1, "latency recorded");
    cr_assert_leq(st.commit_latency_p50_us, st.commit_latency_p99_us);
    cr_assert_leq(st.commit_latency_p99_us, st.commit_latency_max_us);
    cr_assert_eq(st.pending, 0);
    cr_assert_gt(st.cache_bytes, 50 * 4);
    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 50);
    redisFree(c);
    mpx_unregister(m);
    mpx_destroy(m);
}

Test(hotpath, remote_sparks_are_cached_then_dropped_with_their_server)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.remote_ttl_ms = 60000;
    mpx_t *a = t_make(&o, "http://127.0.0.1:8121");
    mpx_options_t ob = o;
    ob.remote_ttl_ms = 0;
    mpx_t *b = t_make(&ob, "http://127.0.0.1:8122");
    cr_assert_eq(mpx_connect(b, "far", 3), 0);
    cr_assert_eq(mpx_flush(b, 5000), 0);
    char buf[64];
    size_t len = sizeof buf;
    mpx_stats_t s0, s1, s2;
    mpx_stats(a, &s0);
    cr_assert_eq(mpx_spark(a, "far", 3, buf, &len), 0);
    mpx_stats(a, &s1);
    cr_assert_eq(s1.lookup_misses, s0.lookup_misses + 1, "first lookup asks Redis");
    len = sizeof buf;
    cr_assert_eq(mpx_spark(a, "far", 3, buf, &len), 0);
    cr_assert_str_eq(buf, "http://127.0.0.1:8122");
    mpx_stats(a, &s2);
    cr_assert_eq(s2.lookup_hits, s1.lookup_hits + 1, "second lookup answered from memory");
    cr_assert_eq(s2.cache_entries, 1);
    /* b leaves; once a has seen that (its reap pass reads the servers set),
     * the cached entry is not used any more. */
    cr_assert_eq(mpx_unregister(b), 0);
    cr_assert_eq(mpx_reap(a, NULL), 0);
    len = sizeof buf;
    cr_assert_eq(mpx_spark(a, "far", 3, buf, &len), MPX_ENOTFOUND);
    mpx_destroy(b);
    mpx_unregister(a);
    mpx_destroy(a);
}

typedef struct async_result {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int calls, err;
    pthread_t thread;
    mpx_list_t *list;
} async_result_t;

static void on_lookup(mpx_t *m, int err, mpx_list_t *list, void *data)
{
    (void)m;
    async_result_t *r = data;
    pthread_mutex_lock(&r->mu);
    r->calls++;
    r->err = err;
    r->list = list;
    r->thread = pthread_self();
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->mu);
}

static void wait_result(async_result_t *r)
{
    uint64_t end = t_now_ms() + 10000;
    pthread_mutex_lock(&r->mu);
    while (r->calls == 0 && t_now_ms() < end) {
        pthread_mutex_unlock(&r->mu);
        t_sleep_ms(5);
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    cr_assert_eq(r->calls, 1, "the callback ran once");
}

Test(hotpath, asynchronous_lookups)
{
    mpx_options_t o;
    t_options(&o, NULL);
    mpx_t *a = t_make(&o, "http://127.0.0.1:8131");
    mpx_t *b = t_make(&o, "http://127.0.0.1:8132");
    cr_assert_eq(mpx_connect(a, "mine", 4), 0);
    cr_assert_eq(mpx_connect(b, "theirs", 6), 0);
    cr_assert_eq(mpx_flush(b, 5000), 0);
    const char *ids[] = {"theirs", "mine", "nobody"};
    async_result_t r = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    cr_assert_eq(mpx_sparks_async(a, (const void *const *)ids, NULL, 3, on_lookup, &r), 0);
    wait_result(&r);
    cr_assert_eq(r.err, 0);
    cr_assert(!pthread_equal(r.thread, pthread_self()), "runs on the lookup thread");
    cr_assert_not_null(r.list);
    cr_assert_eq(r.list->count, 3);
    cr_assert_str_eq(r.list->items[0], "http://127.0.0.1:8132");
    cr_assert_str_eq(r.list->items[1], "http://127.0.0.1:8131");
    cr_assert_null(r.list->items[2]);
    mpx_list_free(r.list);

    const char *bad[] = {"ok", ""};
    async_result_t never = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    cr_assert_eq(mpx_sparks_async(a, (const void *const *)bad, NULL, 2, on_lookup, &never),
                 MPX_EINVAL);
    cr_assert_eq(mpx_sparks_async(a, (const void *const *)ids, NULL, 1, NULL, NULL), MPX_EINVAL);
    t_sleep_ms(50);
    cr_assert_eq(never.calls, 0, "a refused request never calls back");
    mpx_unregister(a);
    mpx_unregister(b);
    mpx_destroy(a);
    mpx_destroy(b);
}

Test(hotpath, asynchronous_lookup_with_redis_down_reports_the_error)
{
    int port = redis_proc_free_port();
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    mpx_options_t o;
    t_options(&o, url);
    o.connect_timeout_ms = 200;
    mpx_t *m = NULL;
    cr_assert_eq(mpx_create(&o, &m), 0);
    const char *ids[] = {"x"};
    async_result_t r = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    cr_assert_eq(mpx_sparks_async(m, (const void *const *)ids, NULL, 1, on_lookup, &r), 0);
    wait_result(&r);
    cr_assert_eq(r.err, MPX_ECONN, "got %s", mpx_err_name(r.err));
    cr_assert_null(r.list);
    mpx_destroy(m);
}

typedef struct reader_arg {
    mpx_t *m;
    atomic_bool *stop;
    long hits, wrong;
} reader_arg_t;

static void *reader(void *p)
{
    reader_arg_t *a = p;
    char buf[64], id[32];
    for (int k = 0; !atomic_load(a->stop) && k < 5000000; k++) {
        int i = k % 1000;
        size_t len = sizeof buf;
        int rc = mpx_spark(a->m, id, (size_t)snprintf(id, sizeof id, "s%d", i), buf, &len);
        if (rc == 0) {
            a->hits++;
            if (strcmp(buf, "http://127.0.0.1:8140") != 0)
                a->wrong++;
        }
    }
    return NULL;
}

Test(hotpath, lock_free_readers_while_the_tables_change, .timeout = 120)
{
    mpx_options_t o;
    t_options(&o, NULL);
    mpx_t *m = t_make(&o, "http://127.0.0.1:8140");
    connect_range(m, "s", 0, 1000);
    atomic_bool stop = false;
    reader_arg_t ra[2] = {{m, &stop, 0, 0}, {m, &stop, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, reader, &ra[i]);
    /* Grow and shrink the tables under the readers. */
    int n = 200000 / t_scale();
    for (int round = 0; round < 3; round++) {
        connect_range(m, "g", 0, n);
        disconnect_range(m, "g", 0, n);
        cr_assert_eq(mpx_flush(m, 30000), 0, "%s", mpx_last_error());
    }
    atomic_store(&stop, true);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        cr_assert_gt(ra[i].hits, 0);
        cr_assert_eq(ra[i].wrong, 0);
    }
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_eq(st.local_sparks, 1000);
    cr_assert_eq(st.cache_entries, 1000, "tombstones reclaimed after their deletes committed");
    mpx_unregister(m);
    mpx_destroy(m);
}
