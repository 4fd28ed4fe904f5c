/*
 * test_cli.c - the operator CLI (build/bin/metroplex) against a real
 * redis-server: every command, a keyspace damaged on purpose in each way
 * `check` looks for (then `repair` fixes it and `check` finds nothing), a
 * keyspace written by the Node.js original (tests/interop/node_peer.js;
 * skipped without node unless MPX_TEST_REQUIRE_INTEROP=1), `repair` while a
 * registry keeps writing, and `check` over 1,000,000 sparks (divided by
 * MPX_TEST_SCALE) while a client PINGs every millisecond: the time and the
 * worst PING wait are printed, never asserted.
 *
 * The binary is run with fork/exec; it is found next to the test binary's
 * directory: <dir of /proc/self/exe>/../bin/metroplex.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

/* ------------------------------------------------------------------------ */
/* Running the CLI                                                          */
/* ------------------------------------------------------------------------ */

/* The CLI against the shared test server (tests/support.c runs it). */
static t_run_t cli(const char *ns, ...)
{
    va_list ap;
    va_start(ap, ns);
    t_run_t r = t_cli_v(t_redis_url(), ns, 120000, ap);
    va_end(ap);
    return r;
}

static void rcmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r, "redis: %s", c->errstr);
    cr_assert(r->type != REDIS_REPLY_ERROR, "%s: %s", fmt, r->str);
    freeReplyObject(r);
}

static char *hget(redisContext *c, const char *ns, const char *id)
{
    redisReply *r = t_cmd(c, "HGET %s:sparks %s", ns, id);
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

/* ------------------------------------------------------------------------ */
/* Child processes (node peer), killed in the fini                         */
/* ------------------------------------------------------------------------ */

static pid_t child_pid;
static mpx_t *live_mpx;

static void cli_init(void)
{
    signal(SIGPIPE, SIG_IGN);
}

static void cli_fini(void)
{
    if (child_pid > 0) {
        kill(child_pid, SIGKILL);
        waitpid(child_pid, NULL, 0);
        child_pid = 0;
    }
    if (live_mpx) {
        mpx_destroy(live_mpx);
        live_mpx = NULL;
    }
}

TestSuite(cli, .init = cli_init, .fini = cli_fini, .timeout = 180);

/* ------------------------------------------------------------------------ */
/* Usage and errors                                                         */
/* ------------------------------------------------------------------------ */

Test(cli, help_usage_and_errors)
{
    t_run_t r = cli(NULL, "--help", NULL);
    T_EXPECT_RC(r, 0);
    const char *words[] = {"servers", "spark ID", "stats",   "check",     "repair", "reap",
                           "watch",   "--redis",  "--namespace", "--json", "--interval",
                           "--dry-run", "Exit status"};
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        cr_assert(strstr(r.out, words[i]), "--help lacks %s", words[i]);
    t_run_free(&r);

    r = cli(NULL, NULL);
    T_EXPECT_RC(r, 2);
    cr_assert_eq(t_count_of(r.err, "\n"), 1, "one line: %s", r.err);
    t_run_free(&r);

    r = cli(NULL, "frobnicate", NULL);
    T_EXPECT_RC(r, 2);
    cr_assert(strstr(r.err, "unknown command"), "%s", r.err);
    t_run_free(&r);

    r = cli(NULL, "--interval", "abc", "check", NULL);
    T_EXPECT_RC(r, 2);
    t_run_free(&r);

    r = cli(NULL, "--dry-run", "check", NULL);
    T_EXPECT_RC(r, 2);
    t_run_free(&r);

    /* nothing listens there: connection error, exit 2, one line */
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_proc_free_port());
    r = cli(NULL, "--redis", url, "servers", NULL);
    T_EXPECT_RC(r, 2);
    cr_assert_eq(t_count_of(r.err, "\n"), 1, "one line: %s", r.err);
    cr_assert_eq(r.out[0], 0);
    t_run_free(&r);
}

/* ------------------------------------------------------------------------ */
/* servers, spark, stats, watch, reap                                       */
/* ------------------------------------------------------------------------ */

Test(cli, servers_spark_stats_watch_reap)
{
    mpx_options_t o;
    t_options(&o, NULL);
    const char *ns = o.ns;
    const char *live = "http://127.0.0.1:9301", *dead = "http://10.9.9.9:9302";
    cr_assert_eq(mpx_create(&o, &live_mpx), 0);
    cr_assert_eq(mpx_register(live_mpx, live), 0, "%s", mpx_last_error());
    char id[32];
    for (int i = 0; i < 50; i++) {
        snprintf(id, sizeof id, "L%d", i);
        cr_assert_eq(mpx_connect(live_mpx, id, strlen(id)), 0);
    }
    cr_assert_eq(mpx_flush(live_mpx, 5000), 0);
    redisContext *c = t_connect(NULL);
    /* a dead server: registered, with sparks, no alive key */
    rcmd(c, "SADD %s:servers %s", ns, dead);
    for (int i = 0; i < 7; i++) {
        rcmd(c, "HSET %s:sparks D%d %s", ns, i, dead);
        rcmd(c, "SADD %s:%s:sparks D%d", ns, dead, i);
    }

    t_run_t r = cli(ns, "servers", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert(strstr(r.out, live) && strstr(r.out, dead), "%s", r.out);
    cr_assert(strstr(r.out, "2 servers: 1 live, 1 dead"), "%s", r.out);
    t_run_free(&r);
    r = cli(ns, "--json", "servers", NULL);
    T_EXPECT_RC(r, 0);
    char want[256];
    snprintf(want, sizeof want, "{\"address\":\"%s\",\"live\":true,\"sparks\":50,\"age_ms\":", live);
    cr_assert(strstr(r.out, want), "%s", r.out);
    snprintf(want, sizeof want,
             "{\"address\":\"%s\",\"live\":false,\"sparks\":7,\"age_ms\":null,\"ttl_ms\":null",
             dead);
    cr_assert(strstr(r.out, want), "%s", r.out);
    cr_assert(strstr(r.out, "\"total\":2,\"live\":1,\"dead\":1"), "%s", r.out);
    t_run_free(&r);

    r = cli(ns, "spark", "L3", "D2", "nope", NULL);
    T_EXPECT_RC(r, 0);
    snprintf(want, sizeof want, "L3\t%s\nD2\t%s\nnope\t-\n", live, dead);
    cr_assert_str_eq(r.out, want);
    t_run_free(&r);
    r = cli(ns, "-j", "spark", "L3", "nope", NULL);
    T_EXPECT_RC(r, 0);
    snprintf(want, sizeof want,
             "\"sparks\":[{\"id\":\"L3\",\"server\":\"%s\"},{\"id\":\"nope\",\"server\":null}],"
             "\"unknown\":1}",
             live);
    cr_assert(strstr(r.out, want), "%s", r.out);
    t_run_free(&r);

    r = cli(ns, "--json", "stats", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert(strstr(r.out, "\"servers\":2,\"live\":1,\"dead\":1,\"sparks\":57,"), "%s", r.out);
    cr_assert(strstr(r.out, "\"memory_bytes\":"), "%s", r.out);
    snprintf(want, sizeof want, "\"largest\":[{\"address\":\"%s\",\"sparks\":50,\"live\":true}",
             live);
    cr_assert(strstr(r.out, want), "%s", r.out);
    t_run_free(&r);
    r = cli(ns, "stats", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert(strstr(r.out, "sparks          57"), "%s", r.out);
    t_run_free(&r);

    r = cli(ns, "--json", "watch", "--count", "2", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert_eq(t_count_of(r.out, "\n"), 2, "%s", r.out);
    cr_assert(strstr(r.out, "\"tick\":0,") && strstr(r.out, "\"tick\":1,"), "%s", r.out);
    cr_assert(strstr(r.out, "\"sparks\":57,\"sparks_per_s\":null"), "%s", r.out);
    cr_assert(strstr(r.out, "\"sparks\":57,\"sparks_per_s\":0.0"), "%s", r.out);
    cr_assert_geq(r.ms, 900, "refreshed every second");
    t_run_free(&r);
    r = cli(ns, "watch", "-c", "1", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert(strstr(r.out, "servers 2 (1 live)  sparks 57"), "%s", r.out);
    t_run_free(&r);

    r = cli(ns, "--json", "reap", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert(strstr(r.out, "\"reaped\":1,\"sparks_removed\":7"), "%s", r.out);
    t_run_free(&r);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", ns, dead), 0);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", ns), 50);
    r = cli(ns, "reap", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert(strstr(r.out, "reaped 0 servers"), "%s", r.out);
    t_run_free(&r);
    r = cli(ns, "check", NULL);
    T_EXPECT_RC(r, 0);
    t_run_free(&r);
    mpx_unregister(live_mpx);
    redisFree(c);
}

/* ------------------------------------------------------------------------ */
/* Damage of every kind: check finds it, repair fixes it                    */
/* ------------------------------------------------------------------------ */

Test(cli, check_finds_each_damage_and_repair_fixes_it)
{
    mpx_options_t o;
    t_options(&o, NULL);
    const char *ns = o.ns;
    const char *A = "http://127.0.0.1:9311";
    cr_assert_eq(mpx_create(&o, &live_mpx), 0);
    cr_assert_eq(mpx_register(live_mpx, A), 0, "%s", mpx_last_error());
    char id[32];
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof id, "a%d", i);
        cr_assert_eq(mpx_connect(live_mpx, id, strlen(id)), 0);
    }
    cr_assert_eq(mpx_flush(live_mpx, 5000), 0);
    redisContext *c = t_connect(NULL);

    t_run_t r = cli(ns, "check", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert(strstr(r.out, "check: 0 problems"), "%s", r.out);
    t_run_free(&r);

    /* hash-not-in-set: a live server's entry missing from its set */
    rcmd(c, "SREM %s:%s:sparks a1", ns, A);
    /* hash-unregistered: entries naming a server nobody registered */
    rcmd(c, "HSET %s:sparks orphan1 http://10.0.0.3:1 orphan2 http://10.0.0.3:1", ns);
    /* set-stale: member naming another server, member with no entry */
    rcmd(c, "HSET %s:sparks other1 http://10.0.0.4:1", ns);
    rcmd(c, "SADD %s:%s:sparks other1 ghost1", ns, A);
    /* set-unregistered (dead): a set left behind, no servers entry */
    rcmd(c, "SADD %s:http://10.0.0.5:1:sparks left1 left2", ns);
    rcmd(c, "HSET %s:sparks left1 http://10.0.0.5:1", ns);
    /* alive-unregistered: a live server missing from the servers set */
    rcmd(c, "PSETEX %s:http://10.0.0.6:1 60000 %llu", ns,
         (unsigned long long)time(NULL) * 1000ull);
    /* server-no-alive: registered, alive key gone */
    rcmd(c, "SADD %s:servers http://10.0.0.7:1", ns);
    rcmd(c, "SADD %s:http://10.0.0.7:1:sparks dead1 dead2", ns);
    rcmd(c, "HSET %s:sparks dead1 http://10.0.0.7:1 dead2 http://10.0.0.7:1 dead3 "
            "http://10.0.0.7:1",
         ns); /* dead3: also missing from its set */
    /* aside-unlisted: a cleanup set nobody lists */
    rcmd(c, "SADD %s:http://10.0.0.8:1:sparks:draining:x1 asd1", ns);
    rcmd(c, "HSET %s:sparks asd1 http://10.0.0.8:1", ns);

    const char *expect[] = {
        "{\"kind\":\"hash-not-in-set\",\"address\":\"http://127.0.0.1:9311\",\"id\":\"a1\",",
        "{\"kind\":\"hash-unregistered\",\"address\":\"http://10.0.0.3:1\",\"id\":\"orphan1\",",
        "{\"kind\":\"hash-unregistered\",\"address\":\"http://10.0.0.3:1\",\"id\":\"orphan2\",",
        "{\"kind\":\"hash-unregistered\",\"address\":\"http://10.0.0.4:1\",\"id\":\"other1\",",
        "{\"kind\":\"set-stale\",\"address\":\"http://127.0.0.1:9311\",\"id\":\"other1\","
        "\"detail\":\"hash names another server\"",
        "{\"kind\":\"set-stale\",\"address\":\"http://127.0.0.1:9311\",\"id\":\"ghost1\","
        "\"detail\":\"hash has no entry\"",
        "{\"kind\":\"set-unregistered\",\"address\":\"http://10.0.0.5:1\",",
        "{\"kind\":\"hash-unregistered\",\"address\":\"http://10.0.0.5:1\",\"id\":\"left1\",",
        "{\"kind\":\"set-stale\",\"address\":\"http://10.0.0.5:1\",\"id\":\"left2\",",
        "{\"kind\":\"alive-unregistered\",\"address\":\"http://10.0.0.6:1\",",
        "{\"kind\":\"server-no-alive\",\"address\":\"http://10.0.0.7:1\",",
        "{\"kind\":\"hash-not-in-set\",\"address\":\"http://10.0.0.7:1\",\"id\":\"dead3\","
        "\"detail\":\"server dead\"",
        "{\"kind\":\"aside-unlisted\",\"address\":\"http://10.0.0.8:1\",",
        "{\"kind\":\"hash-unregistered\",\"address\":\"http://10.0.0.8:1\",\"id\":\"asd1\",",
    };
    /* In one SCAN reply (the default chunk), and spread over many (--chunk
     * 1): the check once reused the command buffer of a fix script from
     * one SCAN reply for the next reply's TYPE probes, so the damage found
     * after the first repaired key was missed, more so in big keyspaces. */
    const char *chunks[] = {"1000", "1", "3"};
    for (size_t c_i = 0; c_i < sizeof chunks / sizeof *chunks; c_i++) {
        r = cli(ns, "--json", "--chunk", chunks[c_i], "check", NULL);
        T_EXPECT_RC(r, 1);
        for (size_t i = 0; i < sizeof expect / sizeof *expect; i++)
            cr_assert(strstr(r.out, expect[i]), "--chunk %s: missing %s in %s", chunks[c_i],
                      expect[i], r.out);
        cr_assert(strstr(r.out, "\"problems\":14,"), "--chunk %s: %s", chunks[c_i], r.out);
        t_run_free(&r);
    }

    /* a dry run changes nothing */
    long long hlen = t_int(c, "HLEN %s:sparks", ns);
    r = cli(ns, "repair", "--dry-run", NULL);
    T_EXPECT_RC(r, 1);
    cr_assert(strstr(r.out, "would delete"), "%s", r.out);
    t_run_free(&r);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", ns), hlen);
    cr_assert_eq(t_int(c, "SISMEMBER %s:%s:sparks ghost1", ns, A), 1);

    /* --no-wait: the dead server stays, so something remains: exit 1 */
    r = cli(ns, "repair", "--no-wait", NULL);
    T_EXPECT_RC(r, 1);
    t_run_free(&r);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers http://10.0.0.7:1", ns), 1);

    uint64_t t0 = t_now_ms();
    r = cli(ns, "--json", "--interval", "400", "repair", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert_geq(t_now_ms() - t0, 400, "waited --interval before reaping");
    cr_assert(strstr(r.out, "\"action\":\"reaped\""), "%s", r.out);
    cr_assert(strstr(r.out, "\"remaining\":0,\"reaped\":1,"), "%s", r.out);
    t_run_free(&r);

    r = cli(ns, "check", NULL);
    T_EXPECT_RC(r, 0);
    cr_assert(strstr(r.out, "check: 0 problems"), "%s", r.out);
    t_run_free(&r);

    /* the live server's sparks are all there; the damage is gone */
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof id, "a%d", i);
        char *v = hget(c, ns, id);
        cr_assert(v && strcmp(v, A) == 0, "%s lost", id);
        free(v);
        cr_assert_eq(t_int(c, "SISMEMBER %s:%s:sparks %s", ns, A, id), 1, "%s not in set", id);
    }
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", ns, A), 20);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", ns), 20);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers http://10.0.0.6:1", ns), 1, "re-registered");
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers http://10.0.0.7:1", ns), 0, "reaped");
    cr_assert_eq(t_int(c, "EXISTS %s:http://10.0.0.5:1:sparks", ns), 0);
    cr_assert_eq(t_int(c, "EXISTS %s:http://10.0.0.8:1:sparks:draining:x1", ns), 0);
    cr_assert_eq(t_int(c, "HLEN %s:drains", ns), 0);
    mpx_unregister(live_mpx);
    redisFree(c);
}

/* ------------------------------------------------------------------------ */
/* A keyspace written by the Node.js original                               */
/* ------------------------------------------------------------------------ */

Test(cli, a_keyspace_written_by_the_node_original)
{
    const char *node = t_require_node("node_peer.js", "metroplex", NULL);
    char script[4200];
    snprintf(script, sizeof script, "%s/node_peer.js", t_interop_dir());

    const char *ns = t_ns();
    const char *addr = "http://127.0.0.1:9321";
    const char *argv[] = {node,          script,     "--url",      t_redis_url(), "--ns",
                          ns,            "--interval", "1000",     "--latency",   "300",
                          "--address",   addr,       "--connect", "n1,n2,n3,n4", "--stay-ms",
                          "30000",       NULL};
    int out_fd;
    child_pid = t_spawn_peer(argv, &out_fd, NULL);
    /* wait for "connected 4" */
    char buf[8192];
    size_t len = 0;
    buf[0] = 0;
    uint64_t deadline = t_now_ms() + 20000;
    while (!strstr(buf, "connected 4")) {
        cr_assert(!strstr(buf, "error"), "node peer: %s", buf);
        cr_assert(t_now_ms() < deadline, "node peer did not connect: %s", buf);
        struct pollfd p = {out_fd, POLLIN, 0};
        if (poll(&p, 1, 100) > 0) {
            ssize_t n = read(out_fd, buf + len, sizeof buf - 1 - len);
            cr_assert(n > 0, "node peer exited: %.*s", (int)len, buf);
            len += (size_t)n;
        }
        buf[len] = 0;
    }

    t_run_t r = cli(ns, "check", NULL);
    T_EXPECT_RC(r, 0);
    t_run_free(&r);
    r = cli(ns, "--json", "servers", NULL);
    T_EXPECT_RC(r, 0);
    char want[256];
    snprintf(want, sizeof want, "{\"address\":\"%s\",\"live\":true,\"sparks\":4,", addr);
    cr_assert(strstr(r.out, want), "%s", r.out);
    t_run_free(&r);
    r = cli(ns, "spark", "n3", NULL);
    T_EXPECT_RC(r, 0);
    snprintf(want, sizeof want, "n3\t%s\n", addr);
    cr_assert_str_eq(r.out, want);
    t_run_free(&r);

    /* the Node server dies: its alive key expires, check reports it */
    kill(child_pid, SIGKILL);
    waitpid(child_pid, NULL, 0);
    child_pid = 0;
    close(out_fd); /* only now: the peer writes to it until it dies */
    redisContext *c = t_connect(NULL);
    deadline = t_now_ms() + 5000;
    while (t_int(c, "EXISTS %s:%s", ns, addr) == 1) {
        cr_assert(t_now_ms() < deadline, "alive key of the dead node server never expired");
        t_sleep_ms(50);
    }
    r = cli(ns, "check", NULL);
    T_EXPECT_RC(r, 1);
    cr_assert(strstr(r.out, "server-no-alive http://127.0.0.1:9321"), "%s", r.out);
    t_run_free(&r);
    r = cli(ns, "--interval", "1000", "repair", NULL);
    T_EXPECT_RC(r, 0);
    t_run_free(&r);
    r = cli(ns, "check", NULL);
    T_EXPECT_RC(r, 0);
    t_run_free(&r);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", ns), 0);
    cr_assert_eq(t_int(c, "SCARD %s:servers", ns), 0);
    redisFree(c);
}

/* ------------------------------------------------------------------------ */
/* repair while a registry keeps writing                                    */
/* ------------------------------------------------------------------------ */

Test(cli, repair_while_a_registry_writes_loses_nothing_live)
{
    mpx_options_t o;
    t_options(&o, NULL);
    const char *ns = o.ns;
    const char *A = "http://127.0.0.1:9331";
    cr_assert_eq(mpx_create(&o, &live_mpx), 0);
    cr_assert_eq(mpx_register(live_mpx, A), 0, "%s", mpx_last_error());
    static t_churn_t ch;
    t_churn_init(&ch, live_mpx); /* half connected to start with */
    char id[32];
    cr_assert_eq(mpx_flush(live_mpx, 5000), 0);
    redisContext *c = t_connect(NULL);
    /* damage around the live server */
    for (int i = 0; i < 500; i++) {
        rcmd(c, "HSET %s:sparks orphan%d http://10.0.1.1:1", ns, i);
        rcmd(c, "SADD %s:%s:sparks ghost%d", ns, A, i);
    }
    for (int i = 0; i < T_CHURN_IDS; i += 10)
        rcmd(c, "SREM %s:%s:sparks w%d", ns, A, i);

    pthread_t th;
    pthread_create(&th, NULL, t_churn_loop, &ch);
    t_sleep_ms(100);
    /* small chunks: many script calls interleaved with the writer */
    t_run_t r = cli(ns, "--chunk", "50", "repair", "--no-wait", NULL);
    t_sleep_ms(100);
    atomic_store(&ch.stop, true);
    pthread_join(th, NULL);
    cr_assert_eq(mpx_flush(live_mpx, 10000), 0);
    cr_assert(r.status == 0 || r.status == 1, "exit %d: %s %s", r.status, r.out, r.err);
    cr_assert(strstr(r.out, "removed from the set") && strstr(r.out, "deleted"), "%s", r.out);
    t_run_free(&r);

    /* every live spark is in the hash and in the set; nothing else is */
    long long connected = 0;
    for (int i = 0; i < T_CHURN_IDS; i++) {
        snprintf(id, sizeof id, "w%d", i);
        char *v = hget(c, ns, id);
        long long in_set = t_int(c, "SISMEMBER %s:%s:sparks %s", ns, A, id);
        if (ch.state[i]) {
            connected++;
            cr_assert(v && strcmp(v, A) == 0, "live spark %s lost from the hash", id);
        } else {
            cr_assert(v == NULL, "disconnected spark %s still in the hash", id);
            cr_assert_eq(in_set, 0, "disconnected spark %s still in the set", id);
        }
        free(v);
    }
    /* ids removed from the set by the damage and never touched by the
     * writer again may still be missing: a second repair adds them (the
     * first one may have scanned before the damage of a few) */
    r = cli(ns, "repair", NULL);
    T_EXPECT_RC(r, 0);
    t_run_free(&r);
    for (int i = 0; i < T_CHURN_IDS; i++) {
        if (!ch.state[i])
            continue;
        snprintf(id, sizeof id, "w%d", i);
        cr_assert_eq(t_int(c, "SISMEMBER %s:%s:sparks %s", ns, A, id), 1, "%s not in the set",
                     id);
    }
    cr_assert_eq(t_int(c, "HLEN %s:sparks", ns), connected);
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", ns, A), connected);
    r = cli(ns, "check", NULL);
    T_EXPECT_RC(r, 0);
    t_run_free(&r);
    fprintf(stderr, "cli repair under writes: %llu connect/disconnect calls during the run\n",
            (unsigned long long)ch.ops);
    mpx_unregister(live_mpx);
    redisFree(c);
}

/* ------------------------------------------------------------------------ */
/* check over 1,000,000 sparks: time and worst PING wait (printed)          */
/* ------------------------------------------------------------------------ */

Test(cli_large, check_over_a_million_sparks_keeps_redis_responsive, .timeout = 600)
{
    int n = 1000000 / t_scale();
    const char *ns = t_ns();
    const char *addr = "http://10.2.2.2:7000";
    redisContext *c = t_connect(NULL);
    uint64_t t0 = t_now_ms();
    t_plant(c, ns, addr, n);
    rcmd(c, "SADD %s:servers %s", ns, addr);
    rcmd(c, "PSETEX %s:%s 600000 %llu", ns, addr, (unsigned long long)time(NULL) * 1000ull);
    for (int i = 0; i < 5; i++) {
        rcmd(c, "HSET %s:sparks bad%d http://10.2.2.3:1", ns, i); /* hash-unregistered */
        rcmd(c, "SADD %s:%s:sparks ghost%d", ns, addr, i);        /* set-stale */
    }
    uint64_t planted_ms = t_now_ms() - t0;

    t_pinger_t p = {0};
    pthread_t th;
    pthread_create(&th, NULL, t_ping_loop, &p);
    t_sleep_ms(50);
    t_run_t r = cli(ns, "--json", "check", NULL);
    t_sleep_ms(50);
    atomic_store(&p.stop, true);
    pthread_join(th, NULL);
    T_EXPECT_RC(r, 1);
    cr_assert(strstr(r.out, "\"problems\":10,"), "%.2000s", r.out);
    cr_assert_eq(t_count_of(r.out, "\"kind\":\"hash-unregistered\""), 5);
    cr_assert_eq(t_count_of(r.out, "\"kind\":\"set-stale\""), 5);
    cr_assert_gt(p.count, 10, "the pinger ran");
    fprintf(stderr,
            "cli check: %d sparks planted in %llu ms; check took %llu ms (chunk 1000); "
            "%llu PINGs, worst PING wait %.1f ms\n",
            n, (unsigned long long)planted_ms, (unsigned long long)r.ms,
            (unsigned long long)p.count, p.worst_us / 1000.0);
    t_run_free(&r);
    rcmd(c, "DEL %s:sparks %s:%s:sparks %s:servers %s:%s", ns, ns, addr, ns, ns, addr);
    redisFree(c);
}
