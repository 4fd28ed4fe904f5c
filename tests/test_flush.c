/*
 * test_flush.c - mpx_flush must not return 0 while a change made before the
 * call is not in Redis. Each test failed before its fix (a review of the
 * writer's flush paths found them):
 *   1. the heartbeat finds the address taken over while a flush waits: the
 *      deactivation answered the waiter with 0 (now MPX_ESTATE);
 *   2. mpx_unregister while a flush waits: the same;
 *   3. sharded: the heartbeat finds A retired, pauses the writer, and the
 *      re-registration fails: the "not registered, nothing pending" shortcut
 *      returned 0 though every spark is owed a rewrite;
 *   4. Redis restarted empty (both layouts): the writer reconnected, saw the
 *      new run_id, wrote the new change and answered the flush before any
 *      rewrite (now flush answers wait until the heartbeat has looked);
 *   5. a restart seen at the heartbeat's reconnect, whose next command then
 *      failed, was forgotten: no rewrite ever.
 * Tests 4 and 5 run their own redis-server (tools/redis_proc.c).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "support.h"

typedef struct flusher {
    mpx_t *m;
    uint32_t timeout_ms;
    int rc;
    uint64_t ms;
    char err[512];
} flusher_t;

static void *flush_thread(void *p)
{
    flusher_t *f = p;
    uint64_t t0 = t_now_ms();
    f->rc = mpx_flush(f->m, f->timeout_ms);
    f->ms = t_now_ms() - t0;
    snprintf(f->err, sizeof f->err, "%s", mpx_last_error());
    return NULL;
}

static void lease_key(const mpx_t *m, const char *addr, char *out, size_t cap)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    cr_assert_eq(mpx__key_lease(&m->keys, addr, &a), 0);
    mpx__argv_finish(&a);
    snprintf(out, cap, "%.*s", (int)a.lens[0], a.argv[0]);
    mpx__argv_free(&a);
}

/* Node layout, A registered, its writer stuck (NS sparks is a string: every
 * batch fails with WRONGTYPE and is retried), x1 connected, a flush waiting
 * in thread th. */
typedef struct stuck {
    mpx_options_t o;
    mpx_t *a;
    redisContext *raw;
    flusher_t f;
    pthread_t th;
} stuck_t;

static void stuck_flush(stuck_t *s, const char *A)
{
    memset(s, 0, sizeof *s);
    t_options(&s->o, NULL);
    s->o.interval_ms = 60000;
    s->o.lease_ms = 1500; /* heartbeat every 500 ms */
    s->a = t_make(&s->o, A);
    s->raw = t_connect(NULL);
    freeReplyObject(t_cmd(s->raw, "SET %s blocked", s->a->keys.sparks));
    cr_assert_eq(mpx_connect(s->a, "x1", 2), 0);
    s->f.m = s->a;
    s->f.timeout_ms = 8000;
    cr_assert_eq(pthread_create(&s->th, NULL, flush_thread, &s->f), 0);
    t_sleep_ms(300); /* the flush waits on the stuck writer */
}

Test(flush, takeover_while_flush_waits, .timeout = 60)
{
    const char *A = "http://127.0.0.1:9201";
    stuck_t s;
    stuck_flush(&s, A);
    char lk[512];
    lease_key(s.a, A, lk, sizeof lk);
    /* Another instance holds the address now (A paused past its lease). */
    freeReplyObject(t_cmd(s.raw, "SET %s someone-else PX 60000", lk));
    pthread_join(s.th, NULL);
    freeReplyObject(t_cmd(s.raw, "DEL %s", s.a->keys.sparks));
    long long in_redis = t_int(s.raw, "HEXISTS %s x1", s.a->keys.sparks);
    char ad[MPX_ADDRESS_MAX + 1];
    int st = mpx__get_address(s.a, ad);
    cr_log_info("takeover: flush rc=%d after %llu ms (%s), state=%d, x1 in Redis=%lld", s.f.rc,
                (unsigned long long)s.f.ms, s.f.err, st, in_redis);
    cr_assert_eq(s.f.rc, MPX_ESTATE, "mpx_flush returned %d after %llu ms but x1 was never "
                 "written (the writer was deactivated: address taken over)", s.f.rc,
                 (unsigned long long)s.f.ms);
    mpx_destroy(s.a);
    freeReplyObject(t_cmd(s.raw, "DEL %s", lk));
    redisFree(s.raw);
}

Test(flush, unregister_while_flush_waits, .timeout = 60)
{
    stuck_t s;
    stuck_flush(&s, "http://127.0.0.1:9202");
    /* (Its retire script fails on the blocked key: not the point here.) */
    int urc = mpx_unregister(s.a);
    pthread_join(s.th, NULL);
    freeReplyObject(t_cmd(s.raw, "DEL %s", s.a->keys.sparks));
    cr_log_info("unregister: rc=%d; flush rc=%d after %llu ms (%s)", urc, s.f.rc,
                (unsigned long long)s.f.ms, s.f.err);
    cr_assert_eq(s.f.rc, MPX_ESTATE, "mpx_flush returned %d after %llu ms but x1 was never "
                 "written (unregistered meanwhile)", s.f.rc, (unsigned long long)s.f.ms);
    mpx_destroy(s.a);
    redisReply *r = t_cmd(s.raw, "KEYS %s*", s.o.ns);
    for (size_t i = 0; i < r->elements; i++)
        freeReplyObject(t_cmd(s.raw, "DEL %s", r->element[i]->str));
    freeReplyObject(r);
    redisFree(s.raw);
}

/* ---- sharded: the re-registration after a reap fails ----------------------- */

#define NSH 4

Test(flush, sharded_flush_while_reregistering_after_reap, .timeout = 60)
{
    const char *A = "http://127.0.0.1:9203";
    mpx_options_t o;
    t_options(&o, NULL);
    o.layout = MPX_LAYOUT_SHARDED;
    o.shards = NSH;
    o.interval_ms = 60000;
    o.latency_ms = 1;
    o.lease_ms = 1500;
    mpx_t *a = t_make(&o, A);
    mpx_t *d = t_make(&o, NULL);
    redisContext *raw = t_connect(NULL);
    mpx__keys_t k;
    mpx__keys_init_layout(&k, o.ns, MPX_LAYOUT_SHARDED, NSH);
    t_sleep_ms(300);
    cr_assert_eq(mpx_connect(a, "x1", 2), 0);
    cr_assert_eq(mpx_flush(a, 5000), 0, "%s", mpx_last_error());
    char buf[MPX_ADDRESS_MAX + 1];
    size_t len = sizeof buf;
    cr_assert_eq(mpx_spark(d, "x1", 2, buf, &len), 0, "x1 written");

    /* A "paused": its alive key and lease expire, d reaps and drains it;
     * A's re-registration then fails (the control gens hash has the wrong
     * type: standing for any failure of the register script). */
    pthread_mutex_lock(&a->life_mu);
    freeReplyObject(t_cmd(raw, "DEL %salive:%s %slease:%s", k.ctl, A, k.ctl, A));
    size_t n = 0;
    cr_assert_eq(mpx_reap(d, &n), 0, "%s", mpx_last_error());
    cr_assert_eq(n, 1);
    freeReplyObject(t_cmd(raw, "DEL %s", k.gens));
    freeReplyObject(t_cmd(raw, "SET %s not-a-hash", k.gens));
    pthread_mutex_unlock(&a->life_mu);
    char ad[MPX_ADDRESS_MAX + 1];
    uint64_t dl = t_now_ms() + 5000;
    while (t_now_ms() < dl && mpx__get_address(a, ad) != MPX__REGISTERING)
        t_sleep_ms(10);
    cr_assert_eq(mpx__get_address(a, ad), MPX__REGISTERING);
    len = sizeof buf;
    int look = mpx_spark(d, "x1", 2, buf, &len);
    int rc = mpx_flush(a, 2000);
    cr_log_info("re-registration failing: flush rc=%d (%s); x1 lookup from d: %d",
                rc, rc ? mpx_last_error() : "", look);
    cr_assert_eq(look, MPX_ENOTFOUND, "x1 was drained");
    cr_assert_eq(rc, MPX_ESTATE, "mpx_flush returned %d while x1 (connected before) is in no "
                 "key and owed a rewrite by the pending registration", rc);

    /* Registration possible again: x1 comes back. */
    freeReplyObject(t_cmd(raw, "DEL %s", k.gens));
    dl = t_now_ms() + 10000;
    while ((rc = mpx_flush(a, 5000)) == MPX_ESTATE && t_now_ms() < dl)
        t_sleep_ms(20);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    len = sizeof buf;
    cr_assert_eq(mpx_spark(d, "x1", 2, buf, &len), 0, "x1 rewritten");
    mpx_unregister(a);
    mpx_destroy(a);
    mpx_destroy(d);
    mpx__keys_free(&k);
    redisFree(raw);
}

/* ---- Redis restarted empty ---------------------------------------------- */

Test(flush, flush_after_redis_restart_waits_for_rewrite, .timeout = 60)
{
    redis_proc_t rp;
    cr_assert_eq(redis_proc_start(&rp, NULL), 0);
    mpx_options_t o;
    t_options(&o, rp.url);
    o.interval_ms = 60000;
    o.lease_ms = 30000; /* heartbeat every 10 s: it does not notice first */
    o.connect_timeout_ms = 300;
    mpx_t *m = t_make(&o, "http://127.0.0.1:9204");
    for (int i = 0; i < 100; i++) {
        char id[16];
        cr_assert_eq(mpx_connect(m, id, (size_t)snprintf(id, sizeof id, "r%d", i)), 0);
    }
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    t_sleep_ms(200); /* not on the first tick after registration */
    redis_proc_kill(&rp);
    cr_assert_eq(redis_proc_restart(&rp, NULL), 0);
    cr_assert_eq(mpx_connect(m, "z1", 2), 0);
    uint64_t t0 = t_now_ms();
    int rc = mpx_flush(m, 10000);
    uint64_t ms = t_now_ms() - t0;
    redisContext *c = t_connect(rp.url);
    long long hlen = t_int(c, "HLEN %s:sparks", o.ns);
    cr_log_info("restart: flush rc=%d after %llu ms; HLEN=%lld (want 101)", rc,
                (unsigned long long)ms, hlen);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(hlen, 101, "mpx_flush returned 0 after %llu ms with %lld of 101 sparks in "
                 "Redis (the writer saw the new run_id when it reconnected)",
                 (unsigned long long)ms, hlen);
    redisFree(c);
    mpx_unregister(m);
    mpx_destroy(m);
    redis_proc_destroy(&rp);
}

Test(flush, sharded_flush_after_redis_restart_waits_for_rewrite, .timeout = 60)
{
    redis_proc_t rp;
    cr_assert_eq(redis_proc_start(&rp, NULL), 0);
    mpx_options_t o;
    t_options(&o, rp.url);
    o.layout = MPX_LAYOUT_SHARDED;
    o.shards = NSH;
    o.interval_ms = 60000;
    o.lease_ms = 30000;
    o.connect_timeout_ms = 300;
    const char *A = "http://127.0.0.1:9205";
    mpx_t *m = t_make(&o, A);
    mpx_t *d = t_make(&o, NULL);
    char gen1[64];
    mpx__get_gen(m, gen1);
    for (int i = 0; i < 100; i++) {
        char id[16];
        cr_assert_eq(mpx_connect(m, id, (size_t)snprintf(id, sizeof id, "r%d", i)), 0);
    }
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    t_sleep_ms(200);
    redis_proc_kill(&rp);
    cr_assert_eq(redis_proc_restart(&rp, NULL), 0);
    cr_assert_eq(mpx_connect(m, "z1", 2), 0);
    uint64_t t0 = t_now_ms();
    int rc;
    while ((rc = mpx_flush(m, 10000)) == MPX_ESTATE && t_now_ms() < t0 + 10000)
        t_sleep_ms(20);
    uint64_t ms = t_now_ms() - t0;
    const void *ids[101];
    size_t lens[101];
    char names[101][16];
    for (int i = 0; i < 101; i++) {
        lens[i] = i < 100 ? (size_t)snprintf(names[i], 16, "r%d", i)
                          : (size_t)snprintf(names[i], 16, "z1");
        ids[i] = names[i];
    }
    mpx_list_t *l = NULL;
    cr_assert_eq(mpx_sparks(d, ids, lens, 101, &l), 0, "%s", mpx_last_error());
    int found = 0;
    for (size_t i = 0; i < l->count; i++)
        found += l->items[i] != NULL;
    mpx_list_free(l);
    cr_log_info("sharded restart: flush rc=%d after %llu ms; %d of 101 found", rc,
                (unsigned long long)ms, found);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(found, 101, "mpx_flush returned 0 after %llu ms with %d of 101 sparks in Redis",
                 (unsigned long long)ms, found);
    /* Let the heartbeat settle, then look for sets of the first generation. */
    t_sleep_ms(1500);
    redisContext *c = t_connect(rp.url);
    char pat[256];
    snprintf(pat, sizeof pat, "*%s*", gen1);
    redisReply *r = t_cmd(c, "KEYS %s", pat);
    for (size_t i = 0; i < r->elements; i++)
        cr_log_info("key of the pre-restart generation %s left: %s", gen1, r->element[i]->str);
    size_t left = r->elements;
    freeReplyObject(r);
    char gen2[64];
    mpx__get_gen(m, gen2);
    cr_log_info("generation now %s (was %s); %zu keys of the old one", gen2, gen1, left);
    redisFree(c);
    mpx_unregister(m);
    mpx_destroy(m);
    mpx_destroy(d);
    redis_proc_destroy(&rp);
}

static atomic_int saw_wrongtype;
static void ts_on_error(mpx_t *m, int err, const char *msg, void *d)
{
    (void)m;
    (void)d;
    (void)err;
    if (strstr(msg, "WRONGTYPE"))
        atomic_store(&saw_wrongtype, 1);
}

/* 5. Redis restarted from an old snapshot; the heartbeat's reconnect sees
 *    the new run_id, but its first heartbeat command fails (here: the lease
 *    key has the wrong type; in life: a timeout, a dropped connection, or
 *    -LOADING). The restart was forgotten with the failed tick: no rewrite
 *    ever, and mpx_flush keeps returning 0 without the sparks connected
 *    after the snapshot. */
Test(flush, restart_seen_by_a_failed_heartbeat_is_not_forgotten, .timeout = 60)
{
    redis_proc_t rp;
    const char *extra[] = {"--dbfilename", "dump.rdb", NULL};
    cr_assert_eq(redis_proc_start(&rp, extra), 0);
    mpx_options_t o;
    t_options(&o, rp.url);
    o.interval_ms = 60000;
    o.lease_ms = 1500; /* heartbeat every 500 ms */
    o.connect_timeout_ms = 300;
    o.on_error = ts_on_error;
    const char *A = "http://127.0.0.1:9206";
    mpx_t *m = t_make(&o, A);
    char lk[512];
    lease_key(m, A, lk, sizeof lk);
    char id[16];
    for (int i = 0; i < 50; i++)
        cr_assert_eq(mpx_connect(m, id, (size_t)snprintf(id, sizeof id, "r%d", i)), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(rp.url);
    redisReply *r = t_cmd(c, "SAVE");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    for (int i = 0; i < 50; i++)
        cr_assert_eq(mpx_connect(m, id, (size_t)snprintf(id, sizeof id, "s%d", i)), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisFree(c);

    pthread_mutex_lock(&m->life_mu); /* no tick while Redis restarts */
    redis_proc_kill(&rp);
    cr_assert_eq(redis_proc_restart(&rp, extra), 0);
    c = t_connect(rp.url);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 50, "the snapshot: r* only");
    freeReplyObject(t_cmd(c, "DEL %s", lk));
    freeReplyObject(t_cmd(c, "HSET %s x y", lk)); /* the next heartbeat command fails */
    pthread_mutex_unlock(&m->life_mu);
    WAIT_UNTIL(atomic_load(&saw_wrongtype), 5000);
    cr_assert(atomic_load(&saw_wrongtype), "the heartbeat failed after the reconnect");
    freeReplyObject(t_cmd(c, "DEL %s", lk)); /* the lease repaired */
    t_sleep_ms(1500); /* ticks that succeed */
    int rc = mpx_flush(m, 5000);
    long long hlen = t_int(c, "HLEN %s:sparks", o.ns);
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_log_info("restart + failed heartbeat: flush rc=%d, HLEN=%lld (want 100), reregistered=%llu",
                rc, hlen, (unsigned long long)st.reregistered);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(hlen, 100, "mpx_flush returned 0 with %lld of 100 sparks in Redis: the restart "
                 "was forgotten with the failed heartbeat", hlen);
    redisFree(c);
    mpx_unregister(m);
    mpx_destroy(m);
    redis_proc_destroy(&rp);
}
