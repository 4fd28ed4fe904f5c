/*
 * test_cluster.c - Redis Cluster routing (src/cluster.c) through the
 * internal connection API: routing, pipelines, MOVED, ASK, a failover, a
 * live reshard, a crashed master, seeds that are down, a cluster URL naming
 * a single Redis.
 *
 * The cluster: the test command (tools/test.sh) starts one with
 * tools/cluster.sh and exports MPX_TEST_CLUSTER_URL and, for the tests that
 * change it (failover, reshard, crash), MPX_TEST_CLUSTER_DIR. Without the URL the
 * tests are skipped (failed when MPX_TEST_REQUIRE_CLUSTER=1, as test.sh
 * sets). By hand:
 *   bash tools/cluster.sh start /tmp/c        (prints the URL)
 *   MPX_TEST_CLUSTER_URL=... MPX_TEST_CLUSTER_DIR=/tmp/c build/tests/test_cluster
 *   bash tools/cluster.sh stop /tmp/c
 *
 * Criterion runs two tests at a time: every test here holds an exclusive
 * lock (a file named after the URL) for its whole run, so a slot migration
 * or failover never overlaps another test's checks. Keys carry the test's
 * own prefix (t_ns()); slots moved by hand are moved back.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster.h"
#include "internal.h"
#include "support.h"

#define MASTERS_MAX 16

/* ---- fixture ----------------------------------------------------------------- */

static const char *cluster_url(void)
{
    return t_cluster_url();
}

/* One test at a time against the cluster (released when the test's process
 * exits). */
static void lock_cluster(void)
{
    t_lock_cluster();
}

static mpx__redis_endpoint_t EP;

/* A connection to `url` (parsed into `ep`), not yet connected. */
static void conn_open(mpx__conn_t *c, mpx__redis_endpoint_t *ep, const char *url)
{
    memset(ep, 0, sizeof *ep);
    cr_assert_eq(mpx__parse_redis_url(url, ep), 0, "parse %s: %s", url, mpx_last_error());
    mpx__conn_init(c, ep, 1000, 3000, "test", NULL);
}

static void conn_done(mpx__conn_t *c, mpx__redis_endpoint_t *ep)
{
    mpx__conn_free(c);
    mpx__endpoint_free(ep);
}

static void unstick(void);

/* A connected cluster connection on the test cluster. */
static void cluster_conn(mpx__conn_t *c)
{
    lock_cluster();
    unstick();
    conn_open(c, &EP, cluster_url());
    int rc = mpx__conn_ensure(c, true);
    cr_assert_eq(rc, 0, "ensure: %s", mpx_last_error());
    cr_assert(mpx__conn_nodes(c) >= 3, "%zu masters", mpx__conn_nodes(c));
    cr_assert(c->shas[0][0], "script digests known after ensure");
}

/* Run a command given as words (no spaces inside one). */
static int cmd(mpx__conn_t *c, redisReply **r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int cmd(mpx__conn_t *c, redisReply **r, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (char *save = NULL, *w = strtok_r(line, " ", &save); w; w = strtok_r(NULL, " ", &save))
        cr_assert_eq(mpx__argv_pushf(&a, "%s", w), 0);
    redisReply *tmp = NULL;
    int rc = mpx__conn_command(c, &a, r ? r : &tmp);
    if (tmp)
        freeReplyObject(tmp);
    mpx__argv_free(&a);
    return rc;
}

/* ---- direct access to nodes (hiredis, no library) ---------------------------- */

typedef struct tnode {
    char id[41];
    char host[64];
    int port;
} tnode_t;

static redisContext *node_connect(const char *host, int port)
{
    struct timeval tv = {5, 0};
    redisContext *r = redisConnectWithTimeout(host, port, tv);
    cr_assert(r && !r->err, "connect %s:%d: %s", host, port, r ? r->errstr : "oom");
    redisSetTimeout(r, tv);
    return r;
}

static redisContext *seed_connect(void)
{
    mpx__redis_endpoint_t ep;
    memset(&ep, 0, sizeof ep);
    cr_assert_eq(mpx__parse_redis_url(cluster_url(), &ep), 0);
    redisContext *r = node_connect(ep.seeds[0].host, ep.seeds[0].port);
    mpx__endpoint_free(&ep);
    return r;
}

/* The masters serving slots, from CLUSTER NODES; returns how many. If
 * `slot` >= 0, *owner is set to the index of its master. */
static int masters_of(redisContext *r, tnode_t *m, int slot, int *owner)
{
    redisReply *rep = t_cmd(r, "CLUSTER NODES");
    cr_assert_eq(rep->type, REDIS_REPLY_STRING, "CLUSTER NODES");
    int n = 0;
    if (owner)
        *owner = -1;
    char *save = NULL;
    for (char *line = strtok_r(rep->str, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char id[64], addr[128], flags[128];
        int used = 0;
        if (sscanf(line, "%63s %127s %127s %*s %*s %*s %*s %*s%n", id, addr, flags, &used) < 3)
            continue;
        if (!strstr(flags, "master") || strstr(flags, "fail") || !used || !line[used])
            continue; /* a master serves slots when the line has slot fields */
        cr_assert_lt(n, MASTERS_MAX);
        tnode_t *t = &m[n];
        snprintf(t->id, sizeof t->id, "%.40s", id);
        char *colon = strrchr(strtok(addr, "@"), ':');
        cr_assert_not_null(colon, "address %s", addr);
        *colon = 0;
        snprintf(t->host, sizeof t->host, "%.63s", addr);
        t->port = atoi(colon + 1);
        if (slot >= 0)
            for (char *p = line + used; *p;) {
                while (*p == ' ')
                    p++;
                int a = -1, b = -1, k = 0;
                if (*p != '[' && sscanf(p, "%d-%d%n", &a, &b, &k) == 2) {
                } else if (*p != '[' && sscanf(p, "%d%n", &a, &k) == 1) {
                    b = a;
                } else {
                    while (*p && *p != ' ')
                        p++;
                    continue;
                }
                if (slot >= a && slot <= b && owner)
                    *owner = n;
                p += k;
            }
        n++;
    }
    freeReplyObject(rep);
    return n;
}

/* A test that failed half-way through a slot migration leaves the slot
 * MIGRATING/IMPORTING; close any such slot (no migration is legitimately
 * open here: the tests hold the lock), so one failure fails one test. */
static void unstick(void)
{
    redisContext *seed = seed_connect();
    tnode_t m[MASTERS_MAX];
    int nm = masters_of(seed, m, -1, NULL);
    redisFree(seed);
    for (int i = 0; i < nm; i++) {
        redisContext *r = node_connect(m[i].host, m[i].port);
        redisReply *rep = t_cmd(r, "CLUSTER NODES");
        for (const char *p = rep->str; p && (p = strstr(p, "myself")); p = NULL) {
            const char *eol = strchr(p, '\n');
            for (const char *q = p; (q = strchr(q, '[')) && (!eol || q < eol); q++) {
                int slot = atoi(q + 1);
                fprintf(stderr, "test_cluster: slot %d left open on %s:%d: closed\n", slot,
                        m[i].host, m[i].port);
                freeReplyObject(t_cmd(r, "CLUSTER SETSLOT %d STABLE", slot));
            }
        }
        freeReplyObject(rep);
        redisFree(r);
    }
}

static void expect_ok(redisReply *r, const char *what)
{
    cr_assert(r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0, "%s: %s", what,
              r->str ? r->str : "(not a status)");
    freeReplyObject(r);
}

/* A key of our own in slot `slot`: "<prefix>{<tag>}" where tag hashes there. */
static void key_in_slot(char *out, size_t n, const char *prefix, unsigned slot, int nth)
{
    for (unsigned i = 0; i < 10000000; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "t%u", i);
        if (mpx__key_slot(tag, strlen(tag)) == slot && nth-- == 0) {
            snprintf(out, n, "%s{%s}", prefix, tag);
            return;
        }
    }
    cr_assert_fail("no tag for slot %u", slot);
}

/* Slot migration by hand, as redis-cli does it: begin_slot (IMPORTING on
 * the target, MIGRATING on the source), MIGRATE keys, finish_slot (SETSLOT
 * NODE everywhere). */
static void begin_slot(tnode_t *m, int from, int to, unsigned slot)
{
    redisContext *src = node_connect(m[from].host, m[from].port);
    redisContext *dst = node_connect(m[to].host, m[to].port);
    expect_ok(t_cmd(dst, "CLUSTER SETSLOT %u IMPORTING %s", slot, m[from].id), "IMPORTING");
    expect_ok(t_cmd(src, "CLUSTER SETSLOT %u MIGRATING %s", slot, m[to].id), "MIGRATING");
    redisFree(src);
    redisFree(dst);
}

static void migrate_key(tnode_t *m, int from, int to, const char *key)
{
    redisContext *src = node_connect(m[from].host, m[from].port);
    redisReply *r = t_cmd(src, "MIGRATE %s %d %s 0 5000", m[to].host, m[to].port, key);
    cr_assert(r->type == REDIS_REPLY_STATUS, "MIGRATE %s: %s", key, r->str);
    freeReplyObject(r);
    redisFree(src);
}

static void finish_slot(tnode_t *m, int nm, int to, unsigned slot)
{
    /* the importing node first, then the source, then the others */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < nm; i++) {
            if ((pass == 0) != (i == to))
                continue;
            redisContext *r = node_connect(m[i].host, m[i].port);
            expect_ok(t_cmd(r, "CLUSTER SETSLOT %u NODE %s", slot, m[to].id), "SETSLOT NODE");
            redisFree(r);
        }
}

/* MIGRATE every key left in the slot (ours and any other test's). */
static void migrate_rest(tnode_t *m, int from, int to, unsigned slot)
{
    redisContext *src = node_connect(m[from].host, m[from].port);
    for (int round = 0; round < 1000; round++) {
        redisReply *keys = t_cmd(src, "CLUSTER GETKEYSINSLOT %u 100", slot);
        size_t nk = keys->elements;
        for (size_t i = 0; i < nk; i++)
            migrate_key(m, from, to, keys->element[i]->str);
        freeReplyObject(keys);
        if (nk == 0)
            break;
    }
    redisFree(src);
}

/* Move a whole slot (every key) from `from` to `to`. */
static void move_slot(tnode_t *m, int nm, int from, int to, unsigned slot)
{
    begin_slot(m, from, to, slot);
    migrate_rest(m, from, to, slot);
    finish_slot(m, nm, to, slot);
}

/* Run tools/cluster.sh with arguments; its stdout into out[n]. */
static int cluster_sh(char *out, size_t n, const char *args)
{
    const char *src = getenv("MPX_SOURCE_DIR");
    char root[512];
    if (src && *src) {
        snprintf(root, sizeof root, "%s", src);
    } else { /* tests/test_cluster.c -> the source tree */
        snprintf(root, sizeof root, "%s", __FILE__);
        char *p = strrchr(root, '/');
        if (p)
            *p = 0;
        p = strrchr(root, '/');
        if (p)
            *p = 0;
    }
    char cmdline[1200];
    snprintf(cmdline, sizeof cmdline, "timeout 120 bash '%s/tools/cluster.sh' %s", root, args);
    FILE *f = popen(cmdline, "r");
    cr_assert_not_null(f, "popen %s", cmdline);
    size_t got = fread(out, 1, n - 1, f);
    out[got] = 0;
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *cluster_dir(void)
{
    const char *d = getenv("MPX_TEST_CLUSTER_DIR");
    if (!d || !*d)
        cr_skip_test("MPX_TEST_CLUSTER_DIR not set: this test changes the cluster");
    return d;
}

/* ---- pipelines of SET/GET over many keys ---------------------------------------- */

typedef struct batch {
    size_t n;
    mpx__argv_t *a;
    mpx__argv_t **p;
    redisReply **rep;
    int *rcs;
} batch_t;

static void batch_init(batch_t *b, size_t n)
{
    b->n = n;
    b->a = calloc(n, sizeof *b->a);
    b->p = calloc(n, sizeof *b->p);
    b->rep = calloc(n, sizeof *b->rep);
    b->rcs = calloc(n, sizeof *b->rcs);
    cr_assert(b->a && b->p && b->rep && b->rcs);
    for (size_t i = 0; i < n; i++) {
        mpx__argv_init(&b->a[i]);
        b->p[i] = &b->a[i];
    }
}

static void batch_clear_replies(batch_t *b)
{
    for (size_t i = 0; i < b->n; i++) {
        if (b->rep[i])
            freeReplyObject(b->rep[i]);
        b->rep[i] = NULL;
    }
}

static void batch_free(batch_t *b)
{
    batch_clear_replies(b);
    for (size_t i = 0; i < b->n; i++)
        mpx__argv_free(&b->a[i]);
    free(b->a);
    free(b->p);
    free(b->rep);
    free(b->rcs);
}

/* SET prefix:i = "v<gen>-i" for i < n, pipelined; asserts every reply. */
static void set_all(mpx__conn_t *c, batch_t *b, const char *prefix, int gen)
{
    for (size_t i = 0; i < b->n; i++) {
        mpx__argv_reset(&b->a[i]);
        mpx__argv_push(&b->a[i], "SET", 3);
        mpx__argv_pushf(&b->a[i], "%s:%zu", prefix, i);
        mpx__argv_pushf(&b->a[i], "v%d-%zu", gen, i);
    }
    int rc = mpx__conn_pipeline(c, b->n, b->p, b->rep, b->rcs);
    cr_assert_eq(rc, 0, "pipeline SET: %s", mpx_last_error());
    for (size_t i = 0; i < b->n; i++)
        cr_assert(b->rcs[i] == 0 && b->rep[i] && b->rep[i]->type == REDIS_REPLY_STATUS,
                  "SET %zu", i);
    batch_clear_replies(b);
}

/* GET them back: every value is the one written by generation `gen`. */
static void check_all(mpx__conn_t *c, batch_t *b, const char *prefix, int gen)
{
    for (size_t i = 0; i < b->n; i++) {
        mpx__argv_reset(&b->a[i]);
        mpx__argv_push(&b->a[i], "GET", 3);
        mpx__argv_pushf(&b->a[i], "%s:%zu", prefix, i);
    }
    int rc = mpx__conn_pipeline(c, b->n, b->p, b->rep, b->rcs);
    cr_assert_eq(rc, 0, "pipeline GET: %s", mpx_last_error());
    for (size_t i = 0; i < b->n; i++) {
        char want[64];
        snprintf(want, sizeof want, "v%d-%zu", gen, i);
        cr_assert(b->rcs[i] == 0 && b->rep[i], "GET %zu: rc %d", i, b->rcs[i]);
        cr_assert(b->rep[i]->type == REDIS_REPLY_STRING && strcmp(b->rep[i]->str, want) == 0,
                  "GET %s:%zu = %s, want %s", prefix, i,
                  b->rep[i]->type == REDIS_REPLY_STRING ? b->rep[i]->str : "(not a string)",
                  want);
    }
    batch_clear_replies(b);
}

/* DEL them (tidy). */
static void del_all(mpx__conn_t *c, batch_t *b, const char *prefix)
{
    for (size_t i = 0; i < b->n; i++) {
        mpx__argv_reset(&b->a[i]);
        mpx__argv_push(&b->a[i], "DEL", 3);
        mpx__argv_pushf(&b->a[i], "%s:%zu", prefix, i);
    }
    cr_assert_eq(mpx__conn_pipeline(c, b->n, b->p, b->rep, b->rcs), 0, "DEL: %s",
                 mpx_last_error());
    batch_clear_replies(b);
}

TestSuite(cluster, .timeout = 300);

/* ---- routing ---------------------------------------------------------------------- */

Test(cluster, commands_reach_the_master_of_their_slot)
{
    mpx__conn_t c;
    cluster_conn(&c);
    const char *ns = t_ns();
    size_t nm = mpx__conn_nodes(&c);
    size_t per_master[MASTERS_MAX] = {0};
    cr_assert_leq(nm, MASTERS_MAX);
    for (int i = 0; i < 600; i++) {
        char key[128];
        snprintf(key, sizeof key, "%s:r%d", ns, i);
        cr_assert_eq(cmd(&c, NULL, "SET %s %d", key, i), 0, "SET %s: %s", key, mpx_last_error());
        /* Exactly one master has it, and it is the one the map names. */
        const char *routed = mpx__conn_slot_node(&c, mpx__key_slot(key, strlen(key)));
        cr_assert_not_null(routed);
        int holders = 0;
        for (size_t m = 0; m < nm; m++) {
            mpx__argv_t a;
            mpx__argv_init(&a);
            mpx__argv_push(&a, "EXISTS", 6);
            mpx__argv_push(&a, key, strlen(key));
            redisReply *r = NULL;
            int rc = mpx__conn_node_command(&c, m, &a, &r);
            mpx__argv_free(&a);
            if (rc == 0) {
                cr_assert_eq(r->type, REDIS_REPLY_INTEGER);
                cr_assert_eq(r->integer, 1, "%s on its master %s", key,
                             mpx__conn_node_name(&c, m));
                cr_assert_str_eq(mpx__conn_node_name(&c, m), routed);
                holders++;
                per_master[m]++;
                freeReplyObject(r);
            } else {
                cr_assert_eq(rc, MPX_EREDIS, "EXISTS on %s: %s", mpx__conn_node_name(&c, m),
                             mpx_last_error());
                cr_assert(strstr(mpx_last_error(), "MOVED"), "%s", mpx_last_error());
            }
        }
        cr_assert_eq(holders, 1, "%s held by %d masters", key, holders);
        redisReply *r = NULL;
        cr_assert_eq(cmd(&c, &r, "GET %s", key), 0);
        cr_assert_eq(atoi(r->str), i);
        freeReplyObject(r);
        cr_assert_eq(cmd(&c, NULL, "DEL %s", key), 0);
    }
    for (size_t m = 0; m < nm; m++)
        cr_assert_gt(per_master[m], 0, "master %s got no key of 600", mpx__conn_node_name(&c, m));

    /* Scripts: EVAL routes by its first key; numkeys 0 goes to any master. */
    char key[128];
    snprintf(key, sizeof key, "%s:{script}", ns);
    redisReply *r = NULL;
    cr_assert_eq(cmd(&c, &r, "EVAL return(redis.call('INCR',KEYS[1])) 1 %s", key), 0, "%s",
                 mpx_last_error());
    cr_assert_eq(r->integer, 1);
    freeReplyObject(r);
    cr_assert_eq(cmd(&c, &r, "EVAL return(7) 0"), 0, "%s", mpx_last_error());
    cr_assert_eq(r->integer, 7);
    freeReplyObject(r);
    cr_assert_eq(cmd(&c, NULL, "DEL %s", key), 0);
    /* Keyless commands go to one master. */
    cr_assert_eq(cmd(&c, &r, "PING"), 0);
    cr_assert_str_eq(r->str, "PONG");
    freeReplyObject(r);
    conn_done(&c, &EP);
}

Test(cluster, transactions_and_raw_pipelining_are_refused)
{
    mpx__conn_t c;
    cluster_conn(&c);
    cr_assert_eq(cmd(&c, NULL, "MULTI"), MPX_ESTATE);
    cr_assert(strstr(mpx_last_error(), "MULTI"), "%s", mpx_last_error());
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, "PING", 4);
    cr_assert_eq(mpx__conn_append(&c, &a), MPX_ESTATE);
    cr_assert(strstr(mpx_last_error(), "mpx__conn_pipeline"), "%s", mpx_last_error());
    redisReply *r = NULL;
    cr_assert_eq(mpx__conn_read(&c, &r), MPX_ESTATE);
    cr_assert_null(r);
    /* In a pipeline only that command fails. */
    mpx__argv_t b;
    mpx__argv_init(&b);
    mpx__argv_push(&b, "EXEC", 4);
    mpx__argv_t *cmds[2] = {&a, &b};
    redisReply *reps[2];
    int rcs[2];
    cr_assert_eq(mpx__conn_pipeline(&c, 2, cmds, reps, rcs), MPX_ESTATE);
    cr_assert_eq(rcs[0], 0);
    cr_assert_str_eq(reps[0]->str, "PONG");
    cr_assert_eq(rcs[1], MPX_ESTATE);
    cr_assert_null(reps[1]);
    freeReplyObject(reps[0]);
    mpx__argv_free(&a);
    mpx__argv_free(&b);
    conn_done(&c, &EP);
}

Test(cluster, node_calls_list_and_reach_every_master)
{
    mpx__conn_t c;
    cluster_conn(&c);
    redisContext *seed = seed_connect();
    tnode_t m[MASTERS_MAX];
    int nm = masters_of(seed, m, -1, NULL);
    redisFree(seed);
    cr_assert_eq(mpx__conn_nodes(&c), (size_t)nm);
    for (size_t i = 0; i < mpx__conn_nodes(&c); i++) {
        const char *name = mpx__conn_node_name(&c, i);
        bool found = false;
        for (int k = 0; k < nm; k++) {
            char want[128];
            snprintf(want, sizeof want, "%s:%d", m[k].host, m[k].port);
            found |= strcmp(want, name) == 0;
        }
        cr_assert(found, "node %s is not a master", name);
        mpx__argv_t a;
        mpx__argv_init(&a);
        mpx__argv_push(&a, "CLUSTER", 7);
        mpx__argv_push(&a, "MYID", 4);
        redisReply *r = NULL;
        cr_assert_eq(mpx__conn_node_command(&c, i, &a, &r), 0, "%s", mpx_last_error());
        cr_assert_eq(r->type, REDIS_REPLY_STRING);
        freeReplyObject(r);
        mpx__argv_free(&a);
    }
    cr_assert_null(mpx__conn_node_name(&c, (size_t)nm));
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, "DBSIZE", 6);
    redisReply *r = NULL;
    cr_assert_eq(mpx__conn_node_command(&c, (size_t)nm, &a, &r), MPX_EINVAL);
    cr_assert_null(r);
    mpx__argv_free(&a);
    conn_done(&c, &EP);

    /* A single Redis is one node. */
    mpx__redis_endpoint_t ep;
    conn_open(&c, &ep, t_redis_url());
    cr_assert_eq(mpx__conn_nodes(&c), 1);
    cr_assert(strstr(t_redis_url(), mpx__conn_node_name(&c, 0)), "%s", mpx__conn_node_name(&c, 0));
    mpx__argv_init(&a);
    mpx__argv_push(&a, "DBSIZE", 6);
    cr_assert_eq(mpx__conn_node_command(&c, 0, &a, &r), 0, "%s", mpx_last_error());
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
    cr_assert_eq(mpx__conn_node_command(&c, 1, &a, &r), MPX_EINVAL);
    mpx__argv_free(&a);
    cr_assert_eq(mpx__conn_refresh(&c, 0), 0);
    conn_done(&c, &ep);
}

/* ---- pipelines ---------------------------------------------------------------------- */

Test(cluster, a_pipeline_over_every_slot_answers_in_order)
{
    mpx__conn_t c;
    cluster_conn(&c);
    const char *ns = t_ns();
    enum { N = 1000 };
    batch_t b;
    batch_init(&b, N);
    /* INCRBY k_i i on fresh keys answers i; every 7th is a script (routed
     * by its key), every 11th a PING (any master). */
    for (size_t i = 0; i < N; i++) {
        mpx__argv_t *a = &b.a[i];
        if (i % 11 == 5) {
            mpx__argv_push(a, "PING", 4);
        } else if (i % 7 == 3) {
            mpx__argv_push(a, "EVAL", 4);
            mpx__argv_pushf(a, "return redis.call('INCRBY', KEYS[1], ARGV[1])");
            mpx__argv_push(a, "1", 1);
            mpx__argv_pushf(a, "%s:p%zu", ns, i);
            mpx__argv_pushf(a, "%zu", i);
        } else {
            mpx__argv_push(a, "INCRBY", 6);
            mpx__argv_pushf(a, "%s:p%zu", ns, i);
            mpx__argv_pushf(a, "%zu", i);
        }
    }
    int rc = mpx__conn_pipeline(&c, N, b.p, b.rep, b.rcs);
    cr_assert_eq(rc, 0, "pipeline: %s", mpx_last_error());
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(b.rcs[i], 0, "command %zu", i);
        cr_assert_not_null(b.rep[i], "reply %zu", i);
        if (i % 11 == 5) {
            cr_assert_str_eq(b.rep[i]->str, "PONG", "reply %zu", i);
        } else {
            cr_assert_eq(b.rep[i]->type, REDIS_REPLY_INTEGER, "reply %zu", i);
            cr_assert_eq(b.rep[i]->integer, (long long)i, "reply %zu out of order", i);
        }
    }
    batch_clear_replies(&b);
    /* An error reply fails that command only. */
    mpx__argv_reset(&b.a[500]);
    mpx__argv_push(&b.a[500], "HGET", 4);
    mpx__argv_pushf(&b.a[500], "%s:p501", ns); /* a string: WRONGTYPE */
    mpx__argv_push(&b.a[500], "f", 1);
    rc = mpx__conn_pipeline(&c, N, b.p, b.rep, b.rcs);
    cr_assert_eq(rc, MPX_EREDIS);
    cr_assert(strstr(mpx_last_error(), "WRONGTYPE") && strstr(mpx_last_error(), "127.0.0.1:"),
              "the message names the node and the error: %s", mpx_last_error());
    for (size_t i = 0; i < N; i++) {
        if (i == 500) {
            cr_assert_eq(b.rcs[i], MPX_EREDIS);
            cr_assert_null(b.rep[i]);
        } else {
            cr_assert_eq(b.rcs[i], 0, "command %zu", i);
            if (i % 11 != 5)
                cr_assert_eq(b.rep[i]->integer, 2 * (long long)i, "reply %zu", i);
        }
    }
    batch_clear_replies(&b);
    /* NOSCRIPT: scripts flushed on every master; EVALSHA reloads and retries. */
    for (size_t m = 0; m < mpx__conn_nodes(&c); m++) {
        mpx__argv_t a;
        mpx__argv_init(&a);
        mpx__argv_push(&a, "SCRIPT", 6);
        mpx__argv_push(&a, "FLUSH", 5);
        redisReply *r = NULL;
        cr_assert_eq(mpx__conn_node_command(&c, m, &a, &r), 0, "%s", mpx_last_error());
        freeReplyObject(r);
        mpx__argv_free(&a);
    }
    for (size_t i = 0; i < N; i++) {
        mpx__argv_reset(&b.a[i]);
        mpx__argv_push(&b.a[i], "EVALSHA", 7);
        mpx__argv_push(&b.a[i], c.shas[MPX__SCRIPT_DISCONNECT], 40);
        mpx__argv_push(&b.a[i], "2", 1);
        mpx__argv_pushf(&b.a[i], "%s:{h%zu}", ns, i % 64);
        mpx__argv_pushf(&b.a[i], "%s:{h%zu}:set", ns, i % 64);
        mpx__argv_push(&b.a[i], "addr", 4);
        mpx__argv_pushf(&b.a[i], "id%zu", i);
    }
    rc = mpx__conn_pipeline(&c, N, b.p, b.rep, b.rcs);
    cr_assert_eq(rc, 0, "EVALSHA after SCRIPT FLUSH: %s", mpx_last_error());
    for (size_t i = 0; i < N; i++)
        cr_assert(b.rcs[i] == 0 && b.rep[i]->type == REDIS_REPLY_INTEGER, "EVALSHA %zu", i);
    batch_clear_replies(&b);
    for (size_t i = 0; i < N; i++) {
        mpx__argv_reset(&b.a[i]);
        mpx__argv_push(&b.a[i], "DEL", 3);
        mpx__argv_pushf(&b.a[i], "%s:p%zu", ns, i);
    }
    cr_assert_eq(mpx__conn_pipeline(&c, N, b.p, b.rep, b.rcs), 0);
    batch_free(&b);
    conn_done(&c, &EP);
}

Test(cluster, a_pipeline_on_a_single_redis)
{
    mpx__conn_t c;
    mpx__redis_endpoint_t ep;
    conn_open(&c, &ep, t_redis_url());
    const char *ns = t_ns();
    enum { N = 1000 };
    batch_t b;
    batch_init(&b, N);
    for (size_t i = 0; i < N; i++) {
        mpx__argv_push(&b.a[i], "INCRBY", 6);
        mpx__argv_pushf(&b.a[i], "%s:s%zu", ns, i);
        mpx__argv_pushf(&b.a[i], "%zu", i);
    }
    int rc = mpx__conn_pipeline(&c, N, b.p, b.rep, b.rcs);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    for (size_t i = 0; i < N; i++)
        cr_assert(b.rcs[i] == 0 && b.rep[i]->integer == (long long)i, "reply %zu", i);
    batch_clear_replies(&b);
    /* SCRIPT FLUSH behind its back: EVALSHA is retried once after a reload;
     * an error reply fails its command only. */
    redisContext *direct = t_connect(NULL);
    freeReplyObject(t_cmd(direct, "SCRIPT FLUSH"));
    redisFree(direct);
    for (size_t i = 0; i < N; i++) {
        mpx__argv_reset(&b.a[i]);
        if (i == 10) {
            mpx__argv_push(&b.a[i], "HGET", 4);
            mpx__argv_pushf(&b.a[i], "%s:s%zu", ns, i);
            mpx__argv_push(&b.a[i], "f", 1);
            continue;
        }
        mpx__argv_push(&b.a[i], "EVALSHA", 7);
        mpx__argv_push(&b.a[i], c.shas[MPX__SCRIPT_DISCONNECT], 40);
        mpx__argv_push(&b.a[i], "2", 1);
        mpx__argv_pushf(&b.a[i], "%s:h", ns);
        mpx__argv_pushf(&b.a[i], "%s:set", ns);
        mpx__argv_push(&b.a[i], "addr", 4);
        mpx__argv_pushf(&b.a[i], "id%zu", i);
    }
    rc = mpx__conn_pipeline(&c, N, b.p, b.rep, b.rcs);
    cr_assert_eq(rc, MPX_EREDIS, "%s", mpx_last_error());
    cr_assert(strstr(mpx_last_error(), "WRONGTYPE"), "%s", mpx_last_error());
    for (size_t i = 0; i < N; i++) {
        if (i == 10)
            cr_assert(b.rcs[i] == MPX_EREDIS && !b.rep[i]);
        else
            cr_assert(b.rcs[i] == 0 && b.rep[i]->type == REDIS_REPLY_INTEGER, "EVALSHA %zu: %d",
                      i, b.rcs[i]);
    }
    batch_clear_replies(&b);
    for (size_t i = 0; i < N; i++) {
        mpx__argv_reset(&b.a[i]);
        mpx__argv_push(&b.a[i], "DEL", 3);
        mpx__argv_pushf(&b.a[i], "%s:s%zu", ns, i);
    }
    cr_assert_eq(mpx__conn_pipeline(&c, N, b.p, b.rep, b.rcs), 0);
    batch_free(&b);
    conn_done(&c, &ep);

    /* Redis down: every command gets the error, nothing hangs. */
    conn_open(&c, &ep, "redis://127.0.0.1:1");
    batch_init(&b, 3);
    for (size_t i = 0; i < 3; i++)
        mpx__argv_push(&b.a[i], "PING", 4);
    cr_assert_eq(mpx__conn_pipeline(&c, 3, b.p, b.rep, b.rcs), MPX_ECONN);
    for (size_t i = 0; i < 3; i++)
        cr_assert(b.rcs[i] == MPX_ECONN && !b.rep[i]);
    batch_free(&b);
    conn_done(&c, &ep);
}

/* ---- redirections ------------------------------------------------------------------ */

Test(cluster, moved_is_followed_after_a_slot_migration)
{
    mpx__conn_t c, c2;
    mpx__redis_endpoint_t ep2;
    cluster_conn(&c);
    conn_open(&c2, &ep2, cluster_url());
    cr_assert_eq(mpx__conn_ensure(&c2, true), 0, "%s", mpx_last_error());
    const char *ns = t_ns();
    unsigned slot = 1000 + (unsigned)(getpid() % 3000);
    char key[128];
    key_in_slot(key, sizeof key, ns, slot, 0);
    cr_assert_eq(cmd(&c, NULL, "SET %s before", key), 0, "%s", mpx_last_error());

    redisContext *seed = seed_connect();
    tnode_t m[MASTERS_MAX];
    int owner, nm = masters_of(seed, m, (int)slot, &owner);
    cr_assert_geq(owner, 0, "slot %u has no master", slot);
    int to = (owner + 1) % nm;
    char was[128];
    snprintf(was, sizeof was, "%s", mpx__conn_slot_node(&c, slot));
    move_slot(m, nm, owner, to, slot);

    /* c's map still names the old master: the reply is MOVED, followed. */
    redisReply *r = NULL;
    cr_assert_eq(cmd(&c, &r, "GET %s", key), 0, "GET after the move: %s", mpx_last_error());
    cr_assert_str_eq(r->str, "before");
    freeReplyObject(r);
    char now[128];
    snprintf(now, sizeof now, "%s:%d", m[to].host, m[to].port);
    cr_assert_str_eq(mpx__conn_slot_node(&c, slot), now, "the MOVED entry is patched (was %s)",
                     was);
    /* A pipeline on a connection with the old map. */
    mpx__argv_t a[20], *p[20];
    redisReply *reps[20];
    int rcs[20];
    for (int i = 0; i < 20; i++) {
        mpx__argv_init(&a[i]);
        p[i] = &a[i];
        mpx__argv_push(&a[i], "SET", 3);
        char k[160];
        key_in_slot(k, sizeof k, ns, slot, i);
        mpx__argv_pushf(&a[i], "%s", k);
        mpx__argv_pushf(&a[i], "%d", i);
    }
    cr_assert_eq(mpx__conn_pipeline(&c2, 20, p, reps, rcs), 0, "%s", mpx_last_error());
    for (int i = 0; i < 20; i++) {
        cr_assert(rcs[i] == 0 && reps[i]->type == REDIS_REPLY_STATUS, "SET %d", i);
        freeReplyObject(reps[i]);
    }
    cr_assert_str_eq(mpx__conn_slot_node(&c2, slot), now);
    cr_assert_eq(c.run_id_changed, false, "a migration is not a failover");
    cr_assert_eq(mpx__conn_refresh(&c, 0), 0, "%s", mpx_last_error());
    cr_assert_eq(c.run_id_changed, false, "a migration is not a failover");

    /* Put it back; tidy. */
    move_slot(m, nm, to, owner, slot);
    for (int i = 0; i < 20; i++) {
        mpx__argv_reset(&a[i]);
        mpx__argv_push(&a[i], "DEL", 3);
        char k[160];
        key_in_slot(k, sizeof k, ns, slot, i);
        mpx__argv_pushf(&a[i], "%s", k);
    }
    cr_assert_eq(mpx__conn_pipeline(&c, 20, p, reps, rcs), 0, "%s", mpx_last_error());
    for (int i = 0; i < 20; i++) {
        freeReplyObject(reps[i]);
        mpx__argv_free(&a[i]);
    }
    redisFree(seed);
    conn_done(&c2, &ep2);
    conn_done(&c, &EP);
}

Test(cluster, ask_is_followed_during_a_migration)
{
    mpx__conn_t c;
    cluster_conn(&c);
    const char *ns = t_ns();
    unsigned slot = 5000 + (unsigned)(getpid() % 3000);
    char k1[128], k2[128];
    key_in_slot(k1, sizeof k1, ns, slot, 0);
    key_in_slot(k2, sizeof k2, ns, slot, 1);
    cr_assert_eq(cmd(&c, NULL, "SET %s one", k1), 0, "%s", mpx_last_error());
    cr_assert_eq(cmd(&c, NULL, "SET %s two", k2), 0, "%s", mpx_last_error());

    redisContext *seed = seed_connect();
    tnode_t m[MASTERS_MAX];
    int owner, nm = masters_of(seed, m, (int)slot, &owner);
    cr_assert_geq(owner, 0);
    int to = (owner + 1) % nm;
    char src[128];
    snprintf(src, sizeof src, "%s", mpx__conn_slot_node(&c, slot));
    begin_slot(m, owner, to, slot);
    migrate_key(m, owner, to, k1);

    /* k1 moved: the source answers ASK; k2 is still on the source. */
    redisReply *r = NULL;
    cr_assert_eq(cmd(&c, &r, "GET %s", k1), 0, "GET %s during the migration: %s", k1,
                 mpx_last_error());
    cr_assert_str_eq(r->str, "one");
    freeReplyObject(r);
    cr_assert_eq(cmd(&c, &r, "GET %s", k2), 0, "%s", mpx_last_error());
    cr_assert_str_eq(r->str, "two");
    freeReplyObject(r);
    cr_assert_str_eq(mpx__conn_slot_node(&c, slot), src, "ASK leaves the map as it was");
    /* Both in one pipeline, twice each. */
    mpx__argv_t a[4], *p[4];
    redisReply *reps[4];
    int rcs[4];
    for (int i = 0; i < 4; i++) {
        mpx__argv_init(&a[i]);
        p[i] = &a[i];
        mpx__argv_push(&a[i], "GET", 3);
        mpx__argv_pushf(&a[i], "%s", i % 2 ? k2 : k1);
    }
    cr_assert_eq(mpx__conn_pipeline(&c, 4, p, reps, rcs), 0, "%s", mpx_last_error());
    for (int i = 0; i < 4; i++) {
        cr_assert(rcs[i] == 0 && reps[i]->type == REDIS_REPLY_STRING, "GET %d", i);
        cr_assert_str_eq(reps[i]->str, i % 2 ? "two" : "one");
        freeReplyObject(reps[i]);
        mpx__argv_free(&a[i]);
    }

    /* Finish the migration, then put the slot back. */
    migrate_rest(m, owner, to, slot);
    finish_slot(m, nm, to, slot);
    cr_assert_eq(cmd(&c, &r, "GET %s", k2), 0, "%s", mpx_last_error());
    cr_assert_str_eq(r->str, "two");
    freeReplyObject(r);
    move_slot(m, nm, to, owner, slot);
    cr_assert_eq(cmd(&c, NULL, "DEL %s", k1), 0, "%s", mpx_last_error());
    cr_assert_eq(cmd(&c, NULL, "DEL %s", k2), 0, "%s", mpx_last_error());
    cr_assert_eq(c.run_id_changed, false);
    redisFree(seed);
    conn_done(&c, &EP);
}

/* ---- seeds ---------------------------------------------------------------------------- */

Test(cluster, a_seed_list_whose_first_seed_is_down_works)
{
    lock_cluster();
    int port = redis_proc_free_port();
    cr_assert_gt(port, 0);
    char url[1024];
    snprintf(url, sizeof url, "redis-cluster://127.0.0.1:%d,%s", port,
             cluster_url() + strlen("redis-cluster://"));
    mpx__conn_t c;
    mpx__redis_endpoint_t ep;
    conn_open(&c, &ep, url);
    cr_assert_eq(mpx__conn_ensure(&c, false), 0, "%s", mpx_last_error());
    redisReply *r = NULL;
    cr_assert_eq(cmd(&c, &r, "PING"), 0, "%s", mpx_last_error());
    freeReplyObject(r);
    conn_done(&c, &ep);

    /* Every seed down: a clear error, soon. */
    snprintf(url, sizeof url, "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", port, port);
    conn_open(&c, &ep, url);
    int rc = mpx__conn_ensure(&c, true);
    cr_assert_eq(rc, MPX_ECONN, "%d %s", rc, mpx_last_error());
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    cr_assert(strstr(mpx_last_error(), want) && strstr(mpx_last_error(), "slot map"), "%s",
              mpx_last_error());
    cr_assert_eq(cmd(&c, &r, "PING"), MPX_ECONN);
    cr_assert_null(r);
    conn_done(&c, &ep);
}

Test(cluster, a_cluster_url_naming_a_single_redis_fails_clearly)
{
    cluster_url(); /* skip without a cluster: the suite is about clusters */
    const char *single = t_redis_url();
    char url[256];
    snprintf(url, sizeof url, "redis-cluster://%s", single + strlen("redis://"));
    mpx__conn_t c;
    mpx__redis_endpoint_t ep;
    conn_open(&c, &ep, url);
    int rc = mpx__conn_ensure(&c, true);
    cr_assert_eq(rc, MPX_EINVAL, "%d %s", rc, mpx_last_error());
    cr_assert(strstr(mpx_last_error(), "not a Redis Cluster node") &&
                  strstr(mpx_last_error(), single + strlen("redis://")),
              "%s", mpx_last_error());
    redisReply *r = NULL;
    cr_assert_eq(cmd(&c, &r, "GET x"), MPX_EINVAL, "%s", mpx_last_error());
    cr_assert_null(r);
    batch_t b;
    batch_init(&b, 2);
    mpx__argv_push(&b.a[0], "PING", 4);
    mpx__argv_push(&b.a[1], "PING", 4);
    cr_assert_eq(mpx__conn_pipeline(&c, 2, b.p, b.rep, b.rcs), MPX_EINVAL);
    cr_assert(b.rcs[0] == MPX_EINVAL && b.rcs[1] == MPX_EINVAL);
    batch_free(&b);
    cr_assert_eq(mpx__conn_nodes(&c), 0);
    conn_done(&c, &ep);
}

/* ---- failover and reshard ------------------------------------------------------------ */

/* WAIT for the replicas of every master (so a failover loses nothing). */
static void wait_replicas(mpx__conn_t *c)
{
    for (size_t m = 0; m < mpx__conn_nodes(c); m++) {
        mpx__argv_t a;
        mpx__argv_init(&a);
        mpx__argv_push(&a, "WAIT", 4);
        mpx__argv_push(&a, "1", 1);
        mpx__argv_push(&a, "2000", 4); /* below the command timeout */
        redisReply *r = NULL;
        cr_assert_eq(mpx__conn_node_command(c, m, &a, &r), 0, "%s", mpx_last_error());
        cr_assert_eq(r->integer, 1, "WAIT on %s: %lld replicas", mpx__conn_node_name(c, m),
                     r->integer);
        freeReplyObject(r);
        mpx__argv_free(&a);
    }
}

Test(cluster, a_failover_is_survived_and_noticed)
{
    const char *dir = cluster_dir();
    mpx__conn_t c;
    cluster_conn(&c);
    const char *ns = t_ns();
    batch_t b;
    batch_init(&b, 2000);
    set_all(&c, &b, ns, 1);
    wait_replicas(&c);
    /* The map now knows the replicas: promote one. */
    char out[256], args[600];
    snprintf(args, sizeof args, "failover '%s'", dir);
    cr_assert_eq(cluster_sh(out, sizeof out, args), 0, "cluster.sh failover failed");
    int promoted = 0, old = 0;
    cr_assert_eq(sscanf(out, "%d %d", &promoted, &old), 2, "cluster.sh said '%s'", out);
    cr_assert_eq(c.run_id_changed, false);

    /* Everything written before is there, and writing goes on. */
    check_all(&c, &b, ns, 1);
    set_all(&c, &b, ns, 2);
    check_all(&c, &b, ns, 2);
    cr_assert_eq(mpx__conn_refresh(&c, 0), 0, "%s", mpx_last_error());
    cr_assert_eq(c.run_id_changed, true, "promotion of 127.0.0.1:%d (replica of %d) not noticed",
                 promoted, old);
    bool listed = false;
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", promoted);
    for (size_t m = 0; m < mpx__conn_nodes(&c); m++)
        listed |= strcmp(mpx__conn_node_name(&c, m), want) == 0;
    cr_assert(listed, "%s is a master now", want);

    /* A connection opened after the failover sees no failover. */
    mpx__conn_t c2;
    mpx__redis_endpoint_t ep2;
    conn_open(&c2, &ep2, cluster_url());
    check_all(&c2, &b, ns, 2);
    cr_assert_eq(mpx__conn_refresh(&c2, 0), 0);
    cr_assert_eq(c2.run_id_changed, false);
    conn_done(&c2, &ep2);
    del_all(&c, &b, ns);
    batch_free(&b);
    conn_done(&c, &EP);
}

typedef struct reshard_job {
    const char *dir;
    int rc;
    char out[256];
    atomic_bool done;
} reshard_job_t;

static void *reshard_thread(void *arg)
{
    reshard_job_t *j = arg;
    char args[600];
    snprintf(args, sizeof args, "reshard '%s' 200", j->dir);
    j->rc = cluster_sh(j->out, sizeof j->out, args);
    atomic_store(&j->done, true);
    return NULL;
}

Test(cluster, a_live_reshard_loses_nothing_and_is_no_failover)
{
    const char *dir = cluster_dir();
    mpx__conn_t c;
    cluster_conn(&c);
    const char *ns = t_ns();
    batch_t b;
    batch_init(&b, 1000);
    set_all(&c, &b, ns, 0);
    reshard_job_t job = {.dir = dir};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, reshard_thread, &job), 0);
    /* Write and read back while slots move (bounded: 10 minutes at most). */
    int gen = 1, rounds = 0;
    uint64_t end = t_now_ms() + 600000;
    while (!atomic_load(&job.done) && t_now_ms() < end) {
        set_all(&c, &b, ns, gen);
        check_all(&c, &b, ns, gen);
        gen++;
        rounds++;
    }
    pthread_join(th, NULL);
    cr_assert_eq(job.rc, 0, "cluster.sh reshard failed: %s", job.out);
    set_all(&c, &b, ns, gen);
    check_all(&c, &b, ns, gen);
    cr_assert_eq(mpx__conn_refresh(&c, 0), 0, "%s", mpx_last_error());
    cr_assert_eq(c.run_id_changed, false, "a reshard (%s) is not a failover (%d rounds)", job.out,
                 rounds);
    del_all(&c, &b, ns);
    batch_free(&b);
    conn_done(&c, &EP);
}

Test(cluster, a_crashed_master_is_replaced_and_noticed)
{
    const char *dir = cluster_dir();
    mpx__conn_t c;
    cluster_conn(&c);
    const char *ns = t_ns();
    char before[128], during[128];
    snprintf(before, sizeof before, "%s:before", ns);
    snprintf(during, sizeof during, "%s:during", ns);
    batch_t b;
    batch_init(&b, 500);
    set_all(&c, &b, before, 1);
    wait_replicas(&c);

    char out[256], args[600];
    snprintf(args, sizeof args, "kill '%s'", dir);
    cr_assert_eq(cluster_sh(out, sizeof out, args), 0, "cluster.sh kill failed");
    int victim = atoi(out);
    cr_assert_gt(victim, 0, "cluster.sh kill said '%s'", out);

    /* Write on: pipelines fail (bounded by the command timeout) until the
     * replica takes over, then succeed. At most a minute. */
    int failed = 0, ok = 0;
    uint64_t end = t_now_ms() + 60000;
    while (!ok && t_now_ms() < end) {
        for (size_t i = 0; i < b.n; i++) {
            mpx__argv_reset(&b.a[i]);
            mpx__argv_push(&b.a[i], "SET", 3);
            mpx__argv_pushf(&b.a[i], "%s:%zu", during, i);
            mpx__argv_push(&b.a[i], "x", 1);
        }
        int rc = mpx__conn_pipeline(&c, b.n, b.p, b.rep, b.rcs);
        for (size_t i = 0; i < b.n; i++)
            cr_assert((b.rcs[i] == 0) == (b.rep[i] != NULL), "reply xor error, command %zu", i);
        batch_clear_replies(&b);
        if (rc == 0)
            ok = 1;
        else
            cr_assert(++failed < 1000, "%s", mpx_last_error());
    }
    cr_assert(ok, "no pipeline succeeded within a minute of the crash (%d failed): %s", failed,
              mpx_last_error());
    /* Acknowledged and replicated before the crash: all there. */
    check_all(&c, &b, before, 1);
    cr_assert_eq(mpx__conn_refresh(&c, 0), 0, "%s", mpx_last_error());
    cr_assert_eq(c.run_id_changed, true, "the crash of 127.0.0.1:%d and the promotion of its "
                                         "replica are noticed (%d pipelines failed meanwhile)",
                 victim, failed);
    char name[64];
    snprintf(name, sizeof name, "127.0.0.1:%d", victim);
    for (size_t m = 0; m < mpx__conn_nodes(&c); m++)
        cr_assert(strcmp(mpx__conn_node_name(&c, m), name) != 0, "the dead node is no master");

    /* Back as a replica: the cluster and this connection go on. */
    snprintf(args, sizeof args, "revive '%s' %d", dir, victim);
    cr_assert_eq(cluster_sh(out, sizeof out, args), 0, "cluster.sh revive failed");
    check_all(&c, &b, before, 1);
    del_all(&c, &b, before);
    del_all(&c, &b, during);
    batch_free(&b);
    conn_done(&c, &EP);
}

/* ---- the library on a failover ------------------------------------------------ */

typedef struct rewrite_seen {
    pthread_mutex_t mu;
    unsigned shards, of; /* from the writer's report; of == 0: none yet */
} rewrite_seen_t;

static void on_rewrite(mpx_t *m, int err, const char *msg, void *data)
{
    (void)m, (void)err;
    rewrite_seen_t *rs = data;
    unsigned a, b;
    const char *p = strstr(msg, "rewriting the local sparks of ");
    if (p && sscanf(p, "rewriting the local sparks of %u of %u shards", &a, &b) == 2) {
        pthread_mutex_lock(&rs->mu);
        rs->shards = a;
        rs->of = b;
        pthread_mutex_unlock(&rs->mu);
    }
}

/* A promoted replica may lack acknowledged writes, so the writer rewrites,
 * but only the sparks of the shards whose slots failed over (one master of
 * three: about a third), and every spark is right afterwards. */
Test(cluster, a_failover_rewrites_only_the_shards_that_failed_over, .timeout = 180)
{
    lock_cluster();
    const char *dir = cluster_dir();
    rewrite_seen_t rs = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
    mpx_options_t o;
    t_options(&o, cluster_url());
    o.on_error = on_rewrite;
    o.on_error_data = &rs;
    mpx_t *m = NULL;
    cr_assert_eq(mpx_create(&o, &m), 0, "%s", mpx_last_error());
    const char *A = "http://127.0.0.1:8701";
    cr_assert_eq(mpx_register(m, A), 0, "%s", mpx_last_error());
    int n = 3000;
    char id[32];
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "fo%06d", i);
        cr_assert_eq(mpx_connect(m, id, strlen(id)), 0);
    }
    cr_assert_eq(mpx_flush(m, 20000), 0, "%s", mpx_last_error());
    t_sleep_ms(1500); /* the writer's slot map, read with the replicas */
    mpx_stats_t st;
    mpx_stats(m, &st);
    uint64_t before = st.committed;

    char out[256], args[600];
    snprintf(args, sizeof args, "failover '%s'", dir);
    cr_assert_eq(cluster_sh(out, sizeof out, args), 0, "cluster.sh failover failed");
    uint64_t deadline = t_now_ms() + 30000;
    unsigned shards = 0, of = 0;
    while (t_now_ms() < deadline) {
        pthread_mutex_lock(&rs.mu);
        shards = rs.shards;
        of = rs.of;
        pthread_mutex_unlock(&rs.mu);
        if (of)
            break;
        t_sleep_ms(50);
    }
    cr_assert_eq(of, 64, "the writer did not report a rewrite after the failover");
    cr_assert(shards > 0 && shards < of, "rewrote %u of %u shards", shards, of);
    int rc;
    while ((rc = mpx_flush(m, 20000)) == MPX_ESTATE && t_now_ms() < deadline)
        t_sleep_ms(20);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    mpx_stats(m, &st);
    uint64_t rewritten = st.committed - before;
    cr_log_info("failover: %u of %u shards rewritten, %llu of %d sparks", shards, of,
                (unsigned long long)rewritten, n);
    cr_assert(rewritten > 0 && rewritten < (uint64_t)n, "%llu of %d sparks rewritten",
              (unsigned long long)rewritten, n);

    /* Every spark is A's, asked of Redis by another registry. */
    mpx_options_t o2;
    t_options(&o2, cluster_url());
    o2.ns = o.ns;
    mpx_t *q = NULL;
    cr_assert_eq(mpx_create(&o2, &q), 0, "%s", mpx_last_error());
    for (int i = 0; i < n; i += 13) {
        snprintf(id, sizeof id, "fo%06d", i);
        char buf[MPX_ADDRESS_MAX + 1];
        size_t len = sizeof buf;
        cr_assert_eq(mpx_spark(q, id, strlen(id), buf, &len), 0, "%s: %s", id, mpx_last_error());
        cr_assert_str_eq(buf, A);
    }
    mpx_destroy(q);
    mpx_unregister(m);
    mpx_destroy(m);
}
