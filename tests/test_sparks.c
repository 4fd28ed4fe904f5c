/*
 * test_sparks.c - connect/disconnect through the writer thread, lookups,
 * against a real redis-server.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "support.h"

static int id_of(char *buf, size_t cap, const char *prefix, int i)
{
    return snprintf(buf, cap, "%s%08d", prefix, i);
}

Test(sparks, connect_and_disconnect_reach_redis_in_the_original_format)
{
    mpx_options_t o;
    t_options(&o, NULL);
    const char *addr = "http://127.0.0.1:8001";
    mpx_t *m = t_make(&o, addr);
    int n = 5000;
    char id[32];
    for (int i = 0; i < n; i++)
        cr_assert_eq(mpx_connect(m, id, (size_t)id_of(id, sizeof id, "c", i)), 0);
    cr_assert_eq(mpx_flush(m, 10000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), n);
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), n);
    redisReply *r = t_cmd(c, "HGET %s:sparks c00000042", o.ns);
    cr_assert_str_eq(r->str, addr);
    freeReplyObject(r);
    for (int i = 0; i < n; i += 2)
        cr_assert_eq(mpx_disconnect(m, id, (size_t)id_of(id, sizeof id, "c", i)), 0);
    cr_assert_eq(mpx_flush(m, 10000), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), n / 2);
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), n / 2);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks c00000000", o.ns), 0);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks c00000001", o.ns), 1);
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_eq(st.local_sparks, (uint64_t)n / 2);
    cr_assert_eq(st.queued, (uint64_t)n + n / 2);
    cr_assert_eq(st.committed, st.queued);
    cr_assert_eq(st.pending, 0);
    cr_assert_lt(st.batches, (uint64_t)n / 10, "many sparks per batch (%llu batches)",
                 (unsigned long long)st.batches);
    mpx_unregister(m);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 0);
    mpx_destroy(m);
    redisFree(c);
}

Test(sparks, binary_ids_round_trip)
{
    mpx_options_t o;
    t_options(&o, NULL);
    const char *addr = "http://127.0.0.1:8002";
    mpx_t *m = t_make(&o, addr);
    const char bin[] = {'a', 0, 'b', (char)0xff, (char)0xc3, ':', '{', '}', 0};
    cr_assert_eq(mpx_connect(m, bin, sizeof bin), 0);
    char big[MPX_ID_MAX];
    memset(big, 'x', sizeof big);
    cr_assert_eq(mpx_connect(m, big, sizeof big), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(NULL);
    redisReply *r = t_cmd(c, "HGET %s:sparks %b", o.ns, bin, sizeof bin);
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_str_eq(r->str, addr);
    freeReplyObject(r);
    cr_assert_eq(t_int(c, "SISMEMBER %s:%s:sparks %b", o.ns, addr, big, sizeof big), 1);
    cr_assert_eq(mpx_disconnect(m, bin, sizeof bin), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks %b", o.ns, bin, sizeof bin), 0);
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

Test(sparks, a_disconnect_never_removes_a_spark_that_moved_elsewhere)
{
    mpx_options_t o;
    t_options(&o, NULL);
    mpx_t *a = t_make(&o, "http://127.0.0.1:8011");
    mpx_t *b = t_make(&o, "http://127.0.0.1:8012");
    cr_assert_eq(mpx_connect(a, "mover", 5), 0);
    cr_assert_eq(mpx_flush(a, 5000), 0);
    cr_assert_eq(mpx_connect(b, "mover", 5), 0); /* reconnected to b */
    cr_assert_eq(mpx_flush(b, 5000), 0);
    cr_assert_eq(mpx_disconnect(a, "mover", 5), 0); /* a learns late */
    cr_assert_eq(mpx_flush(a, 5000), 0);
    redisContext *c = t_connect(NULL);
    redisReply *r = t_cmd(c, "HGET %s:sparks mover", o.ns);
    cr_assert_eq(r->type, REDIS_REPLY_STRING, "the field survived");
    cr_assert_str_eq(r->str, "http://127.0.0.1:8012");
    freeReplyObject(r);
    cr_assert_eq(t_int(c, "SISMEMBER %s:http://127.0.0.1:8011:sparks mover", o.ns), 0);
    cr_assert_eq(t_int(c, "SISMEMBER %s:http://127.0.0.1:8012:sparks mover", o.ns), 1);
    mpx_unregister(a);
    mpx_unregister(b);
    mpx_destroy(a);
    mpx_destroy(b);
    redisFree(c);
}

Test(sparks, churn_of_one_id_keeps_the_last_state)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.batch_delay_ms = 50; /* everything lands in one batch */
    mpx_t *m = t_make(&o, "http://127.0.0.1:8020");
    for (int i = 0; i < 101; i++) {
        cr_assert_eq(mpx_connect(m, "flip", 4), 0);
        if (i < 100)
            cr_assert_eq(mpx_disconnect(m, "flip", 4), 0);
    }
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(mpx_connect(m, "flop", 4), 0);
        cr_assert_eq(mpx_disconnect(m, "flop", 4), 0);
    }
    cr_assert_eq(mpx_flush(m, 5000), 0);
    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks flip", o.ns), 1);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks flop", o.ns), 0);
    cr_assert_eq(t_int(c, "SCARD %s:http://127.0.0.1:8020:sparks", o.ns), 1);
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

typedef struct worker {
    mpx_t *m;
    int t, n;
    int fails;
} worker_t;

static void *churn_worker(void *arg)
{
    worker_t *w = arg;
    char id[32];
    for (int i = 0; i < w->n; i++) {
        int len = snprintf(id, sizeof id, "t%d-%d", w->t, i);
        if (mpx_connect(w->m, id, (size_t)len) != 0)
            w->fails++;
    }
    for (int i = 0; i < w->n; i += 3) {
        int len = snprintf(id, sizeof id, "t%d-%d", w->t, i);
        if (mpx_disconnect(w->m, id, (size_t)len) != 0)
            w->fails++;
    }
    return NULL;
}

Test(sparks, many_threads_connect_and_disconnect_concurrently, .timeout = 300)
{
    mpx_options_t o;
    t_options(&o, NULL);
    const char *addr = "http://127.0.0.1:8030";
    mpx_t *m = t_make(&o, addr);
    enum { T = 8 };
    int n = 100000 / t_scale(); /* per thread: 8 x 100,000 in the normal build */
    pthread_t th[T];
    worker_t w[T];
    for (int t = 0; t < T; t++) {
        w[t] = (worker_t){m, t, n, 0};
        pthread_create(&th[t], NULL, churn_worker, &w[t]);
    }
    for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        cr_assert_eq(w[t].fails, 0);
    }
    cr_assert_eq(mpx_flush(m, 60000), 0, "%s", mpx_last_error());
    int removed = (n + 2) / 3;
    long long expect = (long long)T * (n - removed);
    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), expect);
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), expect);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks t3-0", o.ns), 0);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks t3-1", o.ns), 1);
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

Test(sparks, sparks_connected_before_register_are_written_after)
{
    mpx_options_t o;
    t_options(&o, NULL);
    mpx_t *m = NULL;
    cr_assert_eq(mpx_create(&o, &m), 0);
    cr_assert_eq(mpx_connect(m, "early", 5), 0);
    cr_assert_eq(mpx_flush(m, 100), MPX_ESTATE, "nothing can be written before register");
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:8040"), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks early", o.ns), 1);
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

Test(sparks, lookups_local_remote_and_unknown)
{
    mpx_options_t o;
    t_options(&o, NULL);
    mpx_t *a = t_make(&o, "http://127.0.0.1:8051");
    mpx_t *b = t_make(&o, "http://127.0.0.1:8052");
    cr_assert_eq(mpx_connect(a, "local", 5), 0);
    cr_assert_eq(mpx_connect(b, "remote", 6), 0);
    cr_assert_eq(mpx_flush(b, 5000), 0);

    char buf[64];
    size_t len = sizeof buf;
    cr_assert_eq(mpx_spark(a, "local", 5, buf, &len), 0, "%s", mpx_last_error());
    cr_assert_str_eq(buf, "http://127.0.0.1:8051");
    cr_assert_eq(len, strlen("http://127.0.0.1:8051"));
    len = sizeof buf;
    cr_assert_eq(mpx_spark(a, "remote", 6, buf, &len), 0, "%s", mpx_last_error());
    cr_assert_str_eq(buf, "http://127.0.0.1:8052");
    len = sizeof buf;
    cr_assert_eq(mpx_spark(a, "nobody", 6, buf, &len), MPX_ENOTFOUND);
    len = 5;
    cr_assert_eq(mpx_spark(a, "remote", 6, buf, &len), MPX_ENOSPC);
    cr_assert_eq(len, strlen("http://127.0.0.1:8052"), "needed length reported");
    len = sizeof buf;
    cr_assert_eq(mpx_spark(a, NULL, 3, buf, &len), MPX_EINVAL);

    const char *ids[] = {"remote", "nobody", "local"};
    mpx_list_t *l;
    cr_assert_eq(mpx_sparks(a, (const void *const *)ids, NULL, 3, &l), 0, "%s", mpx_last_error());
    cr_assert_eq(l->count, 3);
    cr_assert_str_eq(l->items[0], "http://127.0.0.1:8052");
    cr_assert_null(l->items[1]);
    cr_assert_str_eq(l->items[2], "http://127.0.0.1:8051");
    mpx_list_free(l);
    const char *bad[] = {"ok", ""};
    cr_assert_eq(mpx_sparks(a, (const void *const *)bad, NULL, 2, &l), MPX_EINVAL);
    cr_assert(strstr(mpx_last_error(), "id 1") != NULL, "%s", mpx_last_error());
    cr_assert_eq(mpx_sparks(a, NULL, NULL, 0, &l), 0);
    cr_assert_eq(l->count, 0);
    mpx_list_free(l);
    mpx_unregister(a);
    mpx_unregister(b);
    mpx_destroy(a);
    mpx_destroy(b);
}

static atomic_int destroy_errors;
static void count_err(mpx_t *m, int err, const char *msg, void *d)
{
    (void)m;
    (void)err;
    (void)msg;
    (void)d;
    atomic_fetch_add(&destroy_errors, 1);
}

Test(sparks, destroy_reports_what_it_could_not_write)
{
    redis_proc_t rp;
    cr_assert_eq(redis_proc_start(&rp, NULL), 0);
    mpx_options_t o;
    t_options(&o, rp.url);
    o.command_timeout_ms = 300;
    o.connect_timeout_ms = 200;
    o.on_error = count_err;
    mpx_t *m = t_make(&o, "http://127.0.0.1:8060");
    redis_proc_kill(&rp);
    for (int i = 0; i < 10; i++) {
        char id[16];
        cr_assert_eq(mpx_connect(m, id, (size_t)snprintf(id, sizeof id, "lost%d", i)), 0);
    }
    uint64_t t0 = t_now_ms();
    mpx_destroy(m);
    cr_assert_lt(t_now_ms() - t0, 5000, "destroy is bounded");
    cr_assert_geq(atomic_load(&destroy_errors), 1, "unwritten changes reported");
    redis_proc_destroy(&rp);
}

Test(sparks, redis_restarted_empty_gets_everything_back, .timeout = 60)
{
    redis_proc_t rp;
    cr_assert_eq(redis_proc_start(&rp, NULL), 0);
    mpx_options_t o;
    t_options(&o, rp.url);
    o.lease_ms = 450;
    o.interval_ms = 5000;
    o.connect_timeout_ms = 200;
    const char *addr = "http://127.0.0.1:8070";
    mpx_t *m = t_make(&o, addr);
    for (int i = 0; i < 1000; i++) {
        char id[16];
        cr_assert_eq(mpx_connect(m, id, (size_t)snprintf(id, sizeof id, "r%d", i)), 0);
    }
    cr_assert_eq(mpx_flush(m, 5000), 0);
    redis_proc_kill(&rp);
    /* Changes while Redis is down are kept. */
    for (int i = 0; i < 100; i++) {
        char id[16];
        cr_assert_eq(mpx_disconnect(m, id, (size_t)snprintf(id, sizeof id, "r%d", i)), 0);
    }
    cr_assert_eq(redis_proc_restart(&rp, NULL), 0);
    redisContext *c = t_connect(rp.url);
    uint64_t end = t_now_ms() + 15000;
    while (t_now_ms() < end && (t_int(c, "HLEN %s:sparks", o.ns) != 900 ||
                                t_int(c, "SISMEMBER %s:servers %s", o.ns, addr) != 1))
        t_sleep_ms(50);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 900);
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), 900);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, addr), 1);
    cr_assert_eq(t_int(c, "EXISTS %s:%s", o.ns, addr), 1);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks r5", o.ns), 0);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks r500", o.ns), 1);
    redisFree(c);
    mpx_unregister(m);
    mpx_destroy(m);
    redis_proc_destroy(&rp);
}
