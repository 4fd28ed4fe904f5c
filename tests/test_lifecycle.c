/*
 * test_lifecycle.c - register, unregister, heartbeat, reaping, address
 * ownership and Redis failures, against a real redis-server.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "support.h"

typedef struct events {
    atomic_int registered, unregistered, errors;
    atomic_int last_error;
    char last_msg[512];
} events_t;

static void on_reg(mpx_t *m, const char *addr, void *d)
{
    (void)m;
    (void)addr;
    atomic_fetch_add(&((events_t *)d)->registered, 1);
}

static void on_unreg(mpx_t *m, const char *addr, void *d)
{
    (void)m;
    (void)addr;
    atomic_fetch_add(&((events_t *)d)->unregistered, 1);
}

static void on_err(mpx_t *m, int err, const char *msg, void *d)
{
    (void)m;
    events_t *e = d;
    atomic_store(&e->last_error, err);
    snprintf(e->last_msg, sizeof e->last_msg, "%s", msg);
    atomic_fetch_add(&e->errors, 1);
}

static void with_events(mpx_options_t *o, events_t *e)
{
    memset(e, 0, sizeof *e);
    o->on_register = on_reg;
    o->on_register_data = e;
    o->on_unregister = on_unreg;
    o->on_unregister_data = e;
    o->on_error = on_err;
    o->on_error_data = e;
}

static mpx_t *make(mpx_options_t *o)
{
    mpx_t *m = NULL;
    int rc = mpx_create(o, &m);
    cr_assert_eq(rc, 0, "mpx_create: %s", mpx_last_error());
    return m;
}

Test(lifecycle, register_writes_the_original_keys)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.interval_ms = 60000;
    events_t ev;
    with_events(&o, &ev);
    mpx_t *m = make(&o);
    redisContext *c = t_connect(NULL);
    uint64_t before = (uint64_t)time(NULL) * 1000;
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9001"), 0, "%s", mpx_last_error());
    cr_assert_eq(atomic_load(&ev.registered), 1);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, "http://127.0.0.1:9001"), 1);
    redisReply *r = t_cmd(c, "GET %s:%s", o.ns, "http://127.0.0.1:9001");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    uint64_t stamp = strtoull(r->str, NULL, 10);
    cr_assert(stamp + 2000 >= before && stamp <= before + 5000, "alive value %s is epoch ms", r->str);
    freeReplyObject(r);
    long long pttl = t_int(c, "PTTL %s:%s", o.ns, "http://127.0.0.1:9001");
    cr_assert(pttl > 50000 && pttl <= 60000, "alive key expires after interval (pttl %lld)", pttl);
    cr_assert_eq(t_int(c, "EXISTS %s:http://127.0.0.1:9001:lease", o.ns), 1);

    char buf[64];
    size_t len = sizeof buf;
    cr_assert_eq(mpx_address(m, buf, &len), 0);
    cr_assert_str_eq(buf, "http://127.0.0.1:9001");
    /* Same address again: no-op. Another: ESTATE. */
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9001"), 0);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9002"), MPX_ESTATE);

    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(atomic_load(&ev.unregistered), 1);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, "http://127.0.0.1:9001"), 0);
    cr_assert_eq(t_int(c, "EXISTS %s:http://127.0.0.1:9001", o.ns), 0);
    cr_assert_eq(t_int(c, "EXISTS %s:http://127.0.0.1:9001:lease", o.ns), 0);
    cr_assert_eq(mpx_unregister(m), 0, "unregister twice is a no-op");
    mpx_destroy(m);
    redisFree(c);
}

Test(lifecycle, servers_with_and_without_self)
{
    mpx_options_t o;
    t_options(&o, NULL);
    mpx_t *a = make(&o), *b = make(&o);
    cr_assert_eq(mpx_register(a, "http://10.0.0.1:80"), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_register(b, "http://10.0.0.2:80"), 0, "%s", mpx_last_error());
    mpx_list_t *l;
    cr_assert_eq(mpx_servers(a, 0, &l), 0);
    cr_assert_eq(l->count, 1);
    cr_assert_str_eq(l->items[0], "http://10.0.0.2:80");
    mpx_list_free(l);
    cr_assert_eq(mpx_servers(a, 1, &l), 0);
    cr_assert_eq(l->count, 2);
    mpx_list_free(l);
    mpx_unregister(a);
    mpx_unregister(b);
    mpx_destroy(a);
    mpx_destroy(b);
}

Test(lifecycle, register_cleans_leftovers_of_a_previous_process)
{
    mpx_options_t o;
    t_options(&o, NULL);
    redisContext *c = t_connect(NULL);
    const char *addr = "http://127.0.0.1:9100";
    /* A previous process at this address left 2500 sparks (more than Lua's
     * unpack limit in the original) and one spark that moved elsewhere. */
    for (int i = 0; i < 2500; i++) {
        freeReplyObject(t_cmd(c, "HSET %s:sparks old%d %s", o.ns, i, addr));
        freeReplyObject(t_cmd(c, "SADD %s:%s:sparks old%d", o.ns, addr, i));
    }
    freeReplyObject(t_cmd(c, "HSET %s:sparks moved http://elsewhere:1", o.ns));
    freeReplyObject(t_cmd(c, "SADD %s:%s:sparks moved", o.ns, addr));
    freeReplyObject(t_cmd(c, "SADD %s:servers %s", o.ns, addr));

    o.reap_chunk = 100;
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_connect(m, "new1", 4), 0);
    cr_assert_eq(mpx_register(m, addr), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    WAIT_UNTIL(t_int(c, "HLEN %s:sparks", o.ns) == 2, 10000);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 2, "only new1 and moved remain");
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks new1", o.ns), 1);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks moved", o.ns), 1, "a field naming another server stays");
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), 1);
    WAIT_UNTIL(t_int(c, "HLEN %s:drains", o.ns) == 0, 5000);
    cr_assert_eq(t_int(c, "HLEN %s:drains", o.ns), 0, "drain index emptied");
    mpx_unregister(m);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 1, "unregister removed new1");
    mpx_destroy(m);
    redisFree(c);
}

Test(lifecycle, a_live_holder_keeps_its_address)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.lease_ms = 600;
    o.interval_ms = 10000;
    events_t ev;
    with_events(&o, &ev);
    mpx_t *a = make(&o);
    const char *addr = "http://127.0.0.1:9200";
    cr_assert_eq(mpx_register(a, addr), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_connect(a, "s1", 2), 0);
    cr_assert_eq(mpx_flush(a, 5000), 0);

    mpx_options_t o2 = o;
    o2.on_error = NULL;
    mpx_t *b = make(&o2);
    int rc = mpx_register(b, addr);
    cr_assert_eq(rc, MPX_EADDRINUSE, "got %s: %s", mpx_err_name(rc), mpx_last_error());
    cr_assert(strstr(mpx_last_error(), "lease") != NULL, "message says why: %s", mpx_last_error());
    /* Still refused after several lease periods: the holder keeps it fresh. */
    t_sleep_ms(1500);
    cr_assert_eq(mpx_register(b, addr), MPX_EADDRINUSE);
    char buf[64];
    size_t len = sizeof buf;
    cr_assert_eq(mpx_spark(b, "s1", 2, buf, &len), 0, "%s", mpx_last_error());
    cr_assert_str_eq(buf, addr, "the holder's spark is intact");
    mpx_destroy(b);
    mpx_unregister(a);
    mpx_destroy(a);
}

Test(lifecycle, a_restarted_gateway_registers_after_the_lease_not_the_interval)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.lease_ms = 500;
    o.interval_ms = 60000;
    const char *addr = "http://127.0.0.1:9300";
    pid_t pid = fork();
    if (pid == 0) {
        mpx_t *m;
        if (mpx_create(&o, &m) || mpx_register(m, addr))
            _exit(3);
        mpx_connect(m, "crashed1", 8);
        mpx_flush(m, 5000);
        raise(SIGKILL); /* a crash: no unregister */
        _exit(4);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child crashed as planned");
    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "EXISTS %s:%s", o.ns, addr), 1, "alive key still there");
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks crashed1", o.ns), 1);

    mpx_t *m = make(&o);
    uint64_t start = t_now_ms();
    int rc;
    while ((rc = mpx_register(m, addr)) == MPX_EADDRINUSE && t_now_ms() - start < 5000)
        t_sleep_ms(50);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert(t_now_ms() - start < 5000, "registered within seconds, not the 60 s interval");
    WAIT_UNTIL(t_int(c, "HEXISTS %s:sparks crashed1", o.ns) == 0, 5000);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks crashed1", o.ns), 0, "old process's sparks cleaned");
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

Test(lifecycle, reaps_a_dead_server_but_never_one_whose_alive_key_exists)
{
    mpx_options_t o;
    t_options(&o, NULL);
    redisContext *c = t_connect(NULL);
    const char *dead = "http://10.9.9.9:1", *alive = "http://10.9.9.8:1";
    for (int i = 0; i < 10; i++) {
        freeReplyObject(t_cmd(c, "HSET %s:sparks d%d %s", o.ns, i, dead));
        freeReplyObject(t_cmd(c, "SADD %s:%s:sparks d%d", o.ns, dead, i));
        freeReplyObject(t_cmd(c, "HSET %s:sparks a%d %s", o.ns, i, alive));
        freeReplyObject(t_cmd(c, "SADD %s:%s:sparks a%d", o.ns, alive, i));
    }
    freeReplyObject(t_cmd(c, "SADD %s:servers %s %s", o.ns, dead, alive));
    /* The live one's stamp is ancient (clock skew): it must still not be reaped. */
    freeReplyObject(t_cmd(c, "PSETEX %s:%s 60000 1", o.ns, alive));

    mpx_t *m = make(&o);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9400"), 0, "%s", mpx_last_error());
    size_t reaped = 99;
    cr_assert_eq(mpx_reap(m, &reaped), 0, "%s", mpx_last_error());
    cr_assert_eq(reaped, 1);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, dead), 0);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, alive), 1);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 10, "only the live server's sparks remain");
    cr_assert_eq(t_int(c, "EXISTS %s:%s:sparks", o.ns, dead), 0);
    cr_assert_eq(t_int(c, "HLEN %s:drains", o.ns), 0);
    cr_assert_eq(mpx_reap(m, &reaped), 0);
    cr_assert_eq(reaped, 0, "reaping is idempotent");
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_eq(st.reaped_servers, 1);
    cr_assert_eq(st.reaped_sparks, 10);
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

Test(lifecycle, the_heartbeat_refreshes_and_reaps)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.interval_ms = 600;
    o.latency_ms = 100;
    o.lease_ms = 600;
    redisContext *c = t_connect(NULL);
    const char *dead = "http://10.9.9.7:1";
    freeReplyObject(t_cmd(c, "HSET %s:sparks x %s", o.ns, dead));
    freeReplyObject(t_cmd(c, "SADD %s:%s:sparks x", o.ns, dead));
    freeReplyObject(t_cmd(c, "SADD %s:servers %s", o.ns, dead));
    mpx_t *m = make(&o);
    const char *addr = "http://127.0.0.1:9500";
    cr_assert_eq(mpx_register(m, addr), 0, "%s", mpx_last_error());
    /* Three intervals later the alive key still exists: it was refreshed. */
    t_sleep_ms(1800);
    cr_assert_eq(t_int(c, "EXISTS %s:%s", o.ns, addr), 1);
    WAIT_UNTIL(t_int(c, "SISMEMBER %s:servers %s", o.ns, dead) == 0, 3000);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, dead), 0, "heartbeat reaped it");
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks x", o.ns), 0);
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_geq(st.heartbeats, 3);
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

Test(lifecycle, a_reaped_server_puts_itself_and_its_sparks_back)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.interval_ms = 3000;
    o.lease_ms = 450; /* heartbeat every 150 ms */
    events_t ev;
    with_events(&o, &ev);
    mpx_t *m = make(&o);
    const char *addr = "http://127.0.0.1:9600";
    cr_assert_eq(mpx_register(m, addr), 0, "%s", mpx_last_error());
    for (int i = 0; i < 500; i++) {
        char id[16];
        int n = snprintf(id, sizeof id, "sp%d", i);
        cr_assert_eq(mpx_connect(m, id, (size_t)n), 0);
    }
    cr_assert_eq(mpx_flush(m, 5000), 0);
    redisContext *c = t_connect(NULL);
    /* Simulate Redis losing everything (FLUSHDB of our keys). */
    freeReplyObject(t_cmd(c, "DEL %s:sparks %s:servers %s:%s %s:%s:sparks %s:%s:lease", o.ns,
                          o.ns, o.ns, addr, o.ns, addr, o.ns, addr));
    WAIT_UNTIL(t_int(c, "HLEN %s:sparks", o.ns) == 500, 5000);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 500, "sparks rewritten");
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), 500);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, addr), 1);
    cr_assert_eq(t_int(c, "EXISTS %s:%s", o.ns, addr), 1);
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_geq(st.reregistered, 1);
    cr_assert_geq(atomic_load(&ev.errors), 1, "reported through on_error");
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

typedef struct reaper {
    mpx_t *m;
    int rc;
} reaper_t;

static void *reap_thread(void *p)
{
    reaper_t *r = p;
    size_t n;
    r->rc = mpx_reap(r->m, &n);
    return NULL;
}

Test(lifecycle, two_servers_reaping_the_same_dead_server_at_once)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.reap_chunk = 50;
    redisContext *c = t_connect(NULL);
    const char *dead = "http://10.9.9.6:1";
    redisAppendCommand(c, "MULTI");
    for (int i = 0; i < 20000; i++) {
        redisAppendCommand(c, "HSET %s:sparks z%d %s", o.ns, i, dead);
        redisAppendCommand(c, "SADD %s:%s:sparks z%d", o.ns, dead, i);
    }
    redisAppendCommand(c, "EXEC");
    for (int i = 0; i < 40002; i++) {
        redisReply *r;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        freeReplyObject(r);
    }
    freeReplyObject(t_cmd(c, "SADD %s:servers %s", o.ns, dead));
    mpx_t *a = make(&o), *b = make(&o);
    cr_assert_eq(mpx_register(a, "http://127.0.0.1:9701"), 0);
    cr_assert_eq(mpx_register(b, "http://127.0.0.1:9702"), 0);
    /* b reaps on another thread while a does. (It was a forked child: a
     * fork of this process, whose library threads may hold locks, hung
     * in the child on a busy machine.) */
    reaper_t rb = {b, -1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, reap_thread, &rb), 0);
    size_t n1;
    cr_assert_eq(mpx_reap(a, &n1), 0, "%s", mpx_last_error());
    pthread_join(th, NULL);
    cr_assert_eq(rb.rc, 0, "the second reaper failed (%d)", rb.rc);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 0);
    cr_assert_eq(t_int(c, "HLEN %s:drains", o.ns), 0);
    cr_assert_eq(t_int(c, "SCARD %s:servers", o.ns), 2);
    mpx_unregister(a);
    mpx_unregister(b);
    mpx_destroy(a);
    mpx_destroy(b);
    redisFree(c);
}

Test(lifecycle, an_unfinished_drain_is_finished_by_the_next_server)
{
    mpx_options_t o;
    t_options(&o, NULL);
    redisContext *c = t_connect(NULL);
    const char *dead = "http://10.9.9.5:1";
    const char *aside = "sparks:draining:crashed-7";
    for (int i = 0; i < 30; i++) {
        freeReplyObject(t_cmd(c, "HSET %s:sparks q%d %s", o.ns, i, dead));
        freeReplyObject(t_cmd(c, "SADD %s:%s:%s q%d", o.ns, dead, aside, i));
    }
    freeReplyObject(t_cmd(c, "HSET %s:drains %s:%s:%s %s", o.ns, o.ns, dead, aside, dead));
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9800"), 0);
    cr_assert_eq(mpx_reap(m, NULL), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 0);
    cr_assert_eq(t_int(c, "HLEN %s:drains", o.ns), 0);
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

Test(lifecycle, unreachable_redis_is_an_error_not_a_crash)
{
    mpx_options_t o;
    int port = redis_proc_free_port();
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    t_options(&o, url);
    o.connect_timeout_ms = 200;
    mpx_t *m = make(&o);
    int rc = mpx_register(m, "http://127.0.0.1:9900");
    cr_assert_eq(rc, MPX_ECONN, "got %s", mpx_err_name(rc));
    cr_assert(strstr(mpx_last_error(), "connect") != NULL, "%s", mpx_last_error());
    mpx_list_t *l;
    cr_assert_eq(mpx_servers(m, 1, &l), MPX_ECONN);
    char buf[64];
    size_t len = sizeof buf;
    cr_assert_eq(mpx_spark(m, "x", 1, buf, &len), MPX_ECONN);
    cr_assert_eq(mpx_connect(m, "x", 1), 0, "connect works while Redis is down");
    cr_assert_eq(mpx_flush(m, 100), MPX_ESTATE, "registration still pending: nothing can be written");
    mpx_destroy(m);
}

Test(lifecycle, registration_resumes_when_redis_comes_back)
{
    redis_proc_t rp;
    cr_assert_eq(redis_proc_start(&rp, NULL), 0);
    redis_proc_kill(&rp);
    mpx_options_t o;
    t_options(&o, rp.url);
    o.connect_timeout_ms = 200;
    o.lease_ms = 600;
    events_t ev;
    with_events(&o, &ev);
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_connect(m, "early", 5), 0);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9901"), MPX_ECONN);
    cr_assert_eq(redis_proc_restart(&rp, NULL), 0);
    WAIT_UNTIL(atomic_load(&ev.registered) == 1, 8000);
    cr_assert_eq(atomic_load(&ev.registered), 1, "registered in the background");
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(rp.url);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks early", o.ns), 1, "spark connected before is written");
    redisFree(c);
    mpx_destroy(m);
    redis_proc_destroy(&rp);
}

Test(lifecycle, a_redis_that_answers_errors)
{
    const char *extra[] = {"--requirepass", "sekret", NULL};
    redis_proc_t rp;
    cr_assert_eq(redis_proc_start(&rp, extra), 0);
    mpx_options_t o;
    t_options(&o, rp.url); /* no password */
    mpx_t *m = make(&o);
    int rc = mpx_register(m, "http://127.0.0.1:9902");
    cr_assert_eq(rc, MPX_EREDIS, "got %s: %s", mpx_err_name(rc), mpx_last_error());
    cr_assert(strstr(mpx_last_error(), "NOAUTH") != NULL, "%s", mpx_last_error());
    mpx_destroy(m);

    char url[128];
    snprintf(url, sizeof url, "redis://:sekret@127.0.0.1:%d/3", rp.port);
    t_options(&o, url);
    m = make(&o);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9902"), 0, "%s", mpx_last_error());
    mpx_destroy(m);
    redis_proc_destroy(&rp);
}

Test(lifecycle, wrong_type_keys_give_a_clear_error)
{
    mpx_options_t o;
    t_options(&o, NULL);
    redisContext *c = t_connect(NULL);
    freeReplyObject(t_cmd(c, "SET %s:servers oops", o.ns));
    mpx_t *m = make(&o);
    int rc = mpx_register(m, "http://127.0.0.1:9903");
    cr_assert_eq(rc, MPX_EREDIS, "got %s", mpx_err_name(rc));
    cr_assert(strstr(mpx_last_error(), "WRONGTYPE") != NULL, "%s", mpx_last_error());
    mpx_destroy(m);
    redisFree(c);
}

Test(lifecycle, a_unix_socket_url_works)
{
    redis_proc_t rp;
    char sock[300], arg[300];
    /* The socket goes in a directory of ours; redis_proc makes its own dir. */
    char dir[] = "/tmp/mpx-sock-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    snprintf(sock, sizeof sock, "%s/r.sock", dir);
    snprintf(arg, sizeof arg, "%s", sock);
    const char *extra[] = {"--unixsocket", arg, NULL};
    cr_assert_eq(redis_proc_start(&rp, extra), 0);
    char url[400];
    snprintf(url, sizeof url, "unix://%s?db=2", sock);
    mpx_options_t o;
    t_options(&o, url);
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9910"), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_connect(m, "u1", 2), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(rp.url);
    freeReplyObject(t_cmd(c, "SELECT 2"));
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks u1", o.ns), 1, "written through the socket, db 2");
    redisFree(c);
    mpx_unregister(m);
    mpx_destroy(m);
    redis_proc_destroy(&rp);
    unlink(sock);
    rmdir(dir);
}

static atomic_int cb_result = 1;
static mpx_t *cb_registry;
static void reentrant_on_register(mpx_t *m, const char *addr, void *d)
{
    (void)addr;
    (void)d;
    /* Lifecycle calls from inside a callback would wait on this very thread. */
    atomic_store(&cb_result, mpx_unregister(m));
    cb_registry = m;
}

Test(lifecycle, lifecycle_calls_from_a_callback_are_refused_not_deadlocked)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.on_register = reentrant_on_register;
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:9920"), 0, "%s", mpx_last_error());
    cr_assert_eq(atomic_load(&cb_result), MPX_ESTATE);
    cr_assert_eq(cb_registry, m);
    mpx_stats_t st;
    cr_assert_eq(mpx_flush(m, 1000), 0, "nothing pending");
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert_eq(mpx_unregister(m), 0, "allowed outside the callback");
    cr_assert_eq(mpx_flush(m, 100), 0, "unregistered, nothing pending: 0 at once");
    mpx_destroy(m);
}
