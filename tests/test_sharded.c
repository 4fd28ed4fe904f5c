/*
 * test_sharded.c - the sharded key layout (issue #8): hash slots, shard
 * tags and their spread over cluster masters (no Redis needed), then the
 * library in the sharded layout against the single test redis-server and,
 * when the test command started one (MPX_TEST_CLUSTER_URL), against a
 * local Redis Cluster. Each live test runs in both places.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "cluster.h"
#include "support.h"

/* ---- slots, tags and spread ------------------------------------------------ */

Test(sharded, key_slot_matches_redis_cluster)
{
    /* Values from the Redis Cluster specification and CLUSTER KEYSLOT. */
    cr_assert_eq(mpx__key_slot("123456789", 9), 0x31C3u & 16383u);
    cr_assert_eq(mpx__key_slot("foo", 3), 12182u);
    cr_assert_eq(mpx__key_slot("{user1000}.following", 20), mpx__key_slot("user1000", 8));
    cr_assert_eq(mpx__key_slot("foo{}{bar}", 10), mpx__key_slot("foo{}{bar}", 10));
    cr_assert_eq(mpx__key_slot("foo{{bar}}zap", 13), mpx__key_slot("{bar", 4));
    cr_assert_eq(mpx__key_slot("foo{bar}{zap}", 13), mpx__key_slot("bar", 3));
    cr_assert_eq(mpx__key_slot("{}", 2), mpx__key_slot("{}", 2)); /* empty tag: whole key */
    cr_assert_neq(mpx__key_slot("{}a", 3), mpx__key_slot("a", 1));
}

Test(sharded, every_slot_has_a_short_tag)
{
    for (unsigned slot = 0; slot < 16384; slot++) {
        char t[8];
        mpx__tag_for_slot(slot, t);
        size_t n = strlen(t);
        cr_assert(n >= 1 && n <= 3, "slot %u: tag '%s'", slot, t);
        cr_assert_eq(mpx__key_slot(t, n), slot, "tag '%s' is not in slot %u", t, slot);
    }
}

/* The slot ranges redis-cli --cluster create gives `masters` masters. */
static unsigned master_of(unsigned slot, unsigned masters)
{
    double per = 16384.0 / masters;
    for (unsigned i = 0; i < masters; i++) {
        unsigned last = (unsigned)((i + 1) * per + 0.5) - 1;
        if (i == masters - 1 || slot <= last)
            return i;
    }
    return masters - 1;
}

/* Worst master's share of shards over its fair share, for shard slots. */
static double worst_share(const unsigned *slots, unsigned nshards, unsigned masters)
{
    unsigned count[64] = {0};
    for (unsigned s = 0; s < nshards; s++)
        count[master_of(slots[s], masters)]++;
    unsigned worst = 0;
    for (unsigned i = 0; i < masters; i++)
        worst = count[i] > worst ? count[i] : worst;
    return worst / ((double)nshards / masters);
}

Test(sharded, shards_spread_evenly_over_masters)
{
    static const unsigned masters[] = {3, 6, 8, 16, 32};
    static const unsigned shard_counts[] = {32, 64, 100, 256, 1000, 4096};
    for (size_t c = 0; c < sizeof shard_counts / sizeof *shard_counts; c++) {
        unsigned S = shard_counts[c];
        mpx__keys_t k;
        cr_assert_eq(mpx__keys_init_layout(&k, "metroplex", MPX_LAYOUT_SHARDED, S), 0);
        unsigned *slots = malloc(S * sizeof *slots), *naive = malloc(S * sizeof *naive);
        cr_assert(slots && naive);
        for (unsigned s = 0; s < S; s++) {
            slots[s] = mpx__shard_slot(&k, s);
            char t[16];
            int n = snprintf(t, sizeof t, "%u", s);
            naive[s] = mpx__key_slot(t, (size_t)n); /* what sequential tags would give */
        }
        for (size_t i = 0; i < sizeof masters / sizeof *masters; i++) {
            unsigned M = masters[i];
            if (S < M)
                continue;
            double w = worst_share(slots, S, M), nv = worst_share(naive, S, M);
            cr_log_info("shards %u, masters %u: worst master %.2fx its fair share "
                        "(sequential tags: %.2fx)", S, M, w, nv);
            cr_assert_leq(w, 1.5, "%u shards over %u masters: a master holds %.2fx its fair "
                          "share", S, M, w);
        }
        free(slots);
        free(naive);
        mpx__keys_free(&k);
    }
}

Test(sharded, key_names)
{
    mpx__keys_t k;
    cr_assert_eq(mpx__keys_init_layout(&k, "ns", MPX_LAYOUT_SHARDED, 64), 0);
    cr_assert_str_eq(k.servers, "{ns}:servers");
    cr_assert_str_eq(k.drains, "{ns}:drains");
    cr_assert_str_eq(k.gens, "{ns}:gens");
    cr_assert_str_eq(k.layout_key, "{ns}:layout");
    cr_assert_str_eq(k.desc, "sharded 64");
    mpx__argv_t a;
    mpx__argv_init(&a);
    cr_assert_eq(mpx__key_alive(&k, "http://h:1", &a), 0);
    cr_assert_eq(mpx__key_lease(&k, "http://h:1", &a), 0);
    cr_assert_eq(mpx__key_hash(&k, 3, &a), 0);
    cr_assert_eq(mpx__key_own(&k, 3, "http://h:1", "g-1", &a), 0);
    cr_assert_eq(mpx__key_shard_gens(&k, 3, &a), 0);
    mpx__argv_finish(&a);
    char want[128];
    cr_assert_str_eq(a.argv[0], "{ns}:alive:http://h:1");
    cr_assert_str_eq(a.argv[1], "{ns}:lease:http://h:1");
    snprintf(want, sizeof want, "ns:{%s}:sparks", k.tags[3]);
    cr_assert_str_eq(a.argv[2], want);
    snprintf(want, sizeof want, "ns:{%s}:http://h:1:sparks:g-1", k.tags[3]);
    cr_assert_str_eq(a.argv[3], want);
    snprintf(want, sizeof want, "ns:{%s}:gens", k.tags[3]);
    cr_assert_str_eq(a.argv[4], want);
    /* Every key of a shard is in the shard's slot; control keys share one. */
    for (int i = 2; i < 5; i++)
        cr_assert_eq(mpx__key_slot(a.argv[i], a.lens[i]), mpx__shard_slot(&k, 3));
    cr_assert_eq(mpx__key_slot(a.argv[0], a.lens[0]), mpx__key_slot(k.servers, k.servers_len));
    /* The shard of an id is FNV-1a 32 mod S (docs/keyspace.md). */
    cr_assert_eq(mpx__key_shard(&k, "a", 1), 0xe40c292cu % 64);
    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

Test(sharded, node_layout_refused_on_a_cluster_url)
{
    mpx_options_t o;
    mpx_options_init(&o);
    o.redis_url = "redis-cluster://127.0.0.1:1,127.0.0.1:2";
    o.layout = MPX_LAYOUT_NODE;
    mpx_t *m = NULL;
    cr_assert_eq(mpx_create(&o, &m), MPX_EINVAL);
    cr_assert(strstr(mpx_last_error(), "cannot run on Redis Cluster"), "%s", mpx_last_error());
    o.layout = 7;
    o.redis_url = "redis://127.0.0.1:1";
    cr_assert_eq(mpx_create(&o, &m), MPX_EINVAL);
    o.layout = MPX_LAYOUT_SHARDED;
    o.shards = 0;
    cr_assert_eq(mpx_create(&o, &m), MPX_EINVAL);
    o.shards = 16385;
    cr_assert_eq(mpx_create(&o, &m), MPX_EINVAL);
}

/* ---- live, in both places ------------------------------------------------------ */

typedef struct verifier {
    mpx__redis_endpoint_t ep;
    mpx__conn_t c;
    mpx__keys_t k;
} verifier_t;

/* The single test Redis, or the test cluster (serialised with the tests
 * that fail it over or reshard it). */
static const char *target_url(int cluster)
{
    if (!cluster)
        return t_redis_url();
    t_lock_cluster();
    return t_cluster_url();
}

static void v_open(verifier_t *v, const char *url, const char *ns, uint32_t shards)
{
    memset(v, 0, sizeof *v);
    cr_assert_eq(mpx__parse_redis_url(url, &v->ep), 0);
    mpx__conn_init(&v->c, &v->ep, 1000, 5000, "verify", NULL);
    cr_assert_eq(mpx__conn_ensure(&v->c, true), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx__keys_init_layout(&v->k, ns, MPX_LAYOUT_SHARDED, shards), 0);
}

static void v_close(verifier_t *v)
{
    mpx__conn_free(&v->c);
    mpx__keys_free(&v->k);
    mpx__endpoint_free(&v->ep);
}

/* Run a command built by the caller; returns the reply (never NULL). */
static redisReply *v_run(verifier_t *v, mpx__argv_t *a)
{
    redisReply *r = NULL;
    int rc = mpx__conn_command(&v->c, a, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    mpx__argv_free(a);
    return r;
}

/* The owner of `id` in the spark hash ("" if none). */
static void v_owner(verifier_t *v, const char *id, char *out, size_t cap)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, "HGET", 4);
    mpx__key_hash(&v->k, mpx__key_shard(&v->k, id, strlen(id)), &a);
    mpx__argv_push(&a, id, strlen(id));
    redisReply *r = v_run(v, &a);
    snprintf(out, cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

/* Is `id` in addr's set of generation gen? */
static long long v_member(verifier_t *v, const char *addr, const char *gen, const char *id)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, "SISMEMBER", 9);
    mpx__key_own(&v->k, mpx__key_shard(&v->k, id, strlen(id)), addr, gen, &a);
    mpx__argv_push(&a, id, strlen(id));
    redisReply *r = v_run(v, &a);
    long long x = r->integer;
    freeReplyObject(r);
    return x;
}

/* An integer command on a control key: cmd key [arg]. */
static long long v_ctl(verifier_t *v, const char *cmd, const char *key, const char *arg)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, cmd, strlen(cmd));
    mpx__argv_push(&a, key, strlen(key));
    if (arg)
        mpx__argv_push(&a, arg, strlen(arg));
    redisReply *r = v_run(v, &a);
    long long x = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return x;
}

/* Sum over shards of HLEN of the spark hash. */
static long long v_hlen_all(verifier_t *v)
{
    long long sum = 0;
    for (uint32_t s = 0; s < v->k.nshards; s++) {
        mpx__argv_t a;
        mpx__argv_init(&a);
        mpx__argv_push(&a, "HLEN", 4);
        mpx__key_hash(&v->k, s, &a);
        redisReply *r = v_run(v, &a);
        sum += r->integer;
        freeReplyObject(r);
    }
    return sum;
}

static void sharded_options(mpx_options_t *o, const char *url, uint32_t shards)
{
    t_options(o, url);
    o->layout = MPX_LAYOUT_SHARDED;
    o->shards = shards;
    o->interval_ms = 1500;
    o->latency_ms = 500;
    o->lease_ms = 600; /* heartbeat every 200 ms, reap every 1000 ms */
}

static void id_of(char *buf, size_t cap, const char *prefix, int i)
{
    snprintf(buf, cap, "%s%07d", prefix, i);
}

static void roundtrip(int cluster)
{
    const char *url = target_url(cluster);
    mpx_options_t o;
    sharded_options(&o, url, 64);
    const char *A = "http://127.0.0.1:8101", *B = "http://127.0.0.1:8102";
    mpx_t *a = t_make(&o, A), *b = t_make(&o, B);
    verifier_t v;
    v_open(&v, url, o.ns, 64);
    int n = 3000 / t_scale();
    char id[32], owner[128];
    for (int i = 0; i < n; i++) {
        id_of(id, sizeof id, "a", i);
        cr_assert_eq(mpx_connect(a, id, strlen(id)), 0);
        id_of(id, sizeof id, "b", i);
        cr_assert_eq(mpx_connect(b, id, strlen(id)), 0);
    }
    cr_assert_eq(mpx_flush(a, 20000), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_flush(b, 20000), 0, "%s", mpx_last_error());
    cr_assert_eq(v_hlen_all(&v), 2 * n);
    for (int i = 0; i < n; i += 97) {
        id_of(id, sizeof id, "a", i);
        v_owner(&v, id, owner, sizeof owner);
        cr_assert_str_eq(owner, A, "%s", id);
        cr_assert_eq(v_member(&v, A, a->gen, id), 1);
        /* B finds A's spark through Redis. */
        char buf[MPX_ADDRESS_MAX + 1];
        size_t len = sizeof buf;
        cr_assert_eq(mpx_spark(b, id, strlen(id), buf, &len), 0, "%s", mpx_last_error());
        cr_assert_str_eq(buf, A);
    }
    /* Many ids at once, spread over every shard. */
    const void **ids = malloc(2 * (size_t)n * sizeof *ids);
    size_t *lens = malloc(2 * (size_t)n * sizeof *lens);
    char (*store)[16] = malloc(2 * (size_t)n * sizeof *store);
    for (int i = 0; i < 2 * n; i++) {
        id_of(store[i], sizeof store[i], i % 2 ? "a" : "b", i / 2);
        ids[i] = store[i];
        lens[i] = strlen(store[i]);
    }
    mpx_list_t *l = NULL;
    cr_assert_eq(mpx_sparks(b, ids, lens, 2 * (size_t)n, &l), 0, "%s", mpx_last_error());
    for (int i = 0; i < 2 * n; i++)
        cr_assert_str_eq(l->items[i], i % 2 ? A : B, "%s", store[i]);
    mpx_list_free(l);

    /* Disconnects: the fields go, from every shard. */
    for (int i = 0; i < n; i += 2) {
        id_of(id, sizeof id, "a", i);
        cr_assert_eq(mpx_disconnect(a, id, strlen(id)), 0);
    }
    cr_assert_eq(mpx_flush(a, 20000), 0, "%s", mpx_last_error());
    cr_assert_eq(v_hlen_all(&v), 2 * n - (n + 1) / 2);
    id_of(id, sizeof id, "a", 0);
    v_owner(&v, id, owner, sizeof owner);
    cr_assert_str_eq(owner, "");
    cr_assert_eq(v_member(&v, A, a->gen, id), 0);
    char buf[MPX_ADDRESS_MAX + 1];
    size_t len = sizeof buf;
    cr_assert_eq(mpx_spark(b, id, strlen(id), buf, &len), MPX_ENOTFOUND);

    /* Unregister removes A's sparks from every shard and its control keys. */
    cr_assert_eq(mpx_unregister(a), 0, "%s", mpx_last_error());
    cr_assert_eq(v_hlen_all(&v), n);
    cr_assert_eq(v_ctl(&v, "SISMEMBER", v.k.servers, A), 0);
    cr_assert_eq(v_ctl(&v, "HEXISTS", v.k.gens, A), 0);
    cr_assert_eq(v_ctl(&v, "HLEN", v.k.drains, NULL), 0);
    cr_assert_eq(v_ctl(&v, "SISMEMBER", v.k.servers, B), 1);
    mpx_destroy(a);
    mpx_unregister(b);
    cr_assert_eq(v_hlen_all(&v), 0);
    mpx_destroy(b);
    free(ids);
    free(lens);
    free(store);
    v_close(&v);
}

Test(sharded_single, roundtrip, .timeout = 120) { roundtrip(0); }
Test(sharded_cluster, roundtrip, .timeout = 120) { roundtrip(1); }

/* A server that dies (destroyed without unregistering) is reaped by
 * another: every one of its sparks goes, from every shard. */
static void reap_dead(int cluster)
{
    const char *url = target_url(cluster);
    mpx_options_t o;
    sharded_options(&o, url, 64);
    const char *A = "http://127.0.0.1:8201", *B = "http://127.0.0.1:8202";
    mpx_t *a = t_make(&o, A);
    int n = 5000 / t_scale();
    char id[32];
    for (int i = 0; i < n; i++) {
        id_of(id, sizeof id, "d", i);
        cr_assert_eq(mpx_connect(a, id, strlen(id)), 0);
    }
    cr_assert_eq(mpx_flush(a, 20000), 0, "%s", mpx_last_error());
    mpx_destroy(a); /* no unregister: its keys stay until the alive key expires */
    mpx_t *b = t_make(&o, B);
    verifier_t v;
    v_open(&v, url, o.ns, 64);
    cr_assert_eq(v_hlen_all(&v), n);
    uint64_t deadline = t_now_ms() + 20000;
    size_t reaped = 0;
    while (t_now_ms() < deadline) {
        size_t k = 0;
        int rc = mpx_reap(b, &k);
        cr_assert(rc == 0, "mpx_reap: %s", mpx_last_error());
        reaped += k;
        if (reaped && v_hlen_all(&v) == 0)
            break;
        t_sleep_ms(100);
    }
    cr_assert_eq(reaped, 1);
    cr_assert_eq(v_hlen_all(&v), 0);
    cr_assert_eq(v_ctl(&v, "SISMEMBER", v.k.servers, A), 0);
    cr_assert_eq(v_ctl(&v, "HLEN", v.k.drains, NULL), 0);
    mpx_stats_t st;
    mpx_stats(b, &st);
    cr_assert_eq(st.reaped_sparks, (uint64_t)n);
    mpx_unregister(b);
    mpx_destroy(b);
    v_close(&v);
}

Test(sharded_single, reap_dead, .timeout = 120) { reap_dead(0); }
Test(sharded_cluster, reap_dead, .timeout = 120) { reap_dead(1); }

/* A live server whose control keys vanish (reaped during a pause, or the
 * control slot's data lost) registers again under a new generation and
 * rewrites its sparks; the old generation is drained without touching
 * them. */
static void lost_registration(int cluster)
{
    const char *url = target_url(cluster);
    mpx_options_t o;
    sharded_options(&o, url, 16);
    const char *A = "http://127.0.0.1:8301";
    mpx_t *a = t_make(&o, A);
    int n = 2000 / t_scale();
    char id[32], owner[128];
    for (int i = 0; i < n; i++) {
        id_of(id, sizeof id, "l", i);
        cr_assert_eq(mpx_connect(a, id, strlen(id)), 0);
    }
    cr_assert_eq(mpx_flush(a, 20000), 0, "%s", mpx_last_error());
    char gen1[64];
    mpx__get_gen(a, gen1);
    verifier_t v;
    v_open(&v, url, o.ns, 16);
    /* Retire it behind its back, atomically, as a reaper would after a
     * long pause (the retire script, forced: the lease is its own). */
    mpx__argv_t c;
    mpx__argv_init(&c);
    mpx__cmd_s_retire(&v.k, mpx__shas(&v.c), A, a->instance, 1, &c);
    redisReply *rr = v_run(&v, &c);
    cr_assert_eq(rr->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(rr->element[1]->integer, 1, "generation listed for draining");
    freeReplyObject(rr);
    /* Within a few heartbeats: registered again under a new generation,
     * the old one drained, every spark A's again (the drain may remove a
     * field the rewrite then puts back). */
    uint64_t deadline = t_now_ms() + 20000;
    while (t_now_ms() < deadline) {
        char gen[64];
        mpx__get_gen(a, gen);
        id_of(id, sizeof id, "l", n - 1);
        if (strcmp(gen, gen1) != 0 && v_ctl(&v, "HLEN", v.k.drains, NULL) == 0 &&
            v_ctl(&v, "SISMEMBER", v.k.servers, A) == 1 && v_hlen_all(&v) == n &&
            v_member(&v, A, gen, id) == 1)
            break;
        t_sleep_ms(50);
    }
    cr_assert_eq(mpx_flush(a, 20000), 0, "%s", mpx_last_error());
    char gen2[64];
    mpx__get_gen(a, gen2);
    cr_assert_neq(strcmp(gen2, gen1), 0, "no new generation");
    cr_assert_eq(v_ctl(&v, "HLEN", v.k.drains, NULL), 0, "old generation not drained");
    cr_assert_eq(v_hlen_all(&v), n);
    for (int i = 0; i < n; i += 7) {
        id_of(id, sizeof id, "l", i);
        v_owner(&v, id, owner, sizeof owner);
        cr_assert_str_eq(owner, A, "%s", id);
        cr_assert_eq(v_member(&v, A, gen2, id), 1);
        cr_assert_eq(v_member(&v, A, gen1, id), 0);
    }
    mpx_unregister(a);
    cr_assert_eq(v_hlen_all(&v), 0);
    mpx_destroy(a);
    v_close(&v);
}

Test(sharded_single, lost_registration, .timeout = 120) { lost_registration(0); }
Test(sharded_cluster, lost_registration, .timeout = 120) { lost_registration(1); }

/* Processes configured with different shard counts cannot share a
 * namespace: the second one's registration says why. */
static void layout_mismatch(int cluster)
{
    const char *url = target_url(cluster);
    mpx_options_t o;
    sharded_options(&o, url, 16);
    mpx_t *a = t_make(&o, "http://127.0.0.1:8401");
    o.shards = 32;
    mpx_t *b = t_make(&o, NULL);
    cr_assert_eq(mpx_register(b, "http://127.0.0.1:8402"), MPX_EINVAL);
    cr_assert(strstr(mpx_last_error(), "sharded 16") && strstr(mpx_last_error(), "sharded 32"),
              "%s", mpx_last_error());
    mpx_destroy(b);
    mpx_unregister(a);
    mpx_destroy(a);
}

Test(sharded_single, layout_mismatch, .timeout = 60) { layout_mismatch(0); }
Test(sharded_cluster, layout_mismatch, .timeout = 60) { layout_mismatch(1); }

/* Binary ids (NUL, braces, high bytes) and ids of the maximum length are
 * sharded, written, found (also asynchronously) and deleted like others;
 * bad ids are refused with a clear error and change nothing. */
typedef struct async_result {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool done;
    int err;
    mpx_list_t *list;
} async_result_t;

static void on_lookup(mpx_t *m, int err, mpx_list_t *l, void *data)
{
    (void)m;
    async_result_t *ar = data;
    pthread_mutex_lock(&ar->mu);
    ar->err = err;
    ar->list = l;
    ar->done = true;
    pthread_cond_signal(&ar->cond);
    pthread_mutex_unlock(&ar->mu);
}

static void binary_ids(int cluster)
{
    const char *url = target_url(cluster);
    mpx_options_t o;
    sharded_options(&o, url, 64);
    const char *A = "http://127.0.0.1:8501", *B = "http://127.0.0.1:8502";
    mpx_t *a = t_make(&o, A), *b = t_make(&o, B);
    enum { N = 200 };
    static char ids[N][MPX_ID_MAX];
    size_t lens[N];
    const void *ptrs[N];
    for (int i = 0; i < N; i++) {
        /* every byte value, braces and NULs included; some at the maximum */
        lens[i] = i % 10 == 0 ? MPX_ID_MAX : (size_t)(3 + i % 40);
        for (size_t j = 0; j < lens[i]; j++)
            ids[i][j] = (char)((i * 31 + (int)j * 7) & 0xff);
        ids[i][0] = (char)i; /* distinct */
        ids[i][1] = i % 2 ? '{' : '\0';
        ids[i][2] = '}';
        ptrs[i] = ids[i];
        cr_assert_eq(mpx_connect(a, ids[i], lens[i]), 0, "%d: %s", i, mpx_last_error());
    }
    cr_assert_eq(mpx_flush(a, 20000), 0, "%s", mpx_last_error());
    mpx_list_t *l = NULL;
    cr_assert_eq(mpx_sparks(b, ptrs, lens, N, &l), 0, "%s", mpx_last_error());
    for (int i = 0; i < N; i++)
        cr_assert(l->items[i] && strcmp(l->items[i], A) == 0, "id %d not found", i);
    mpx_list_free(l);
    async_result_t ar = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, NULL};
    cr_assert_eq(mpx_sparks_async(b, ptrs, lens, N, on_lookup, &ar), 0, "%s", mpx_last_error());
    pthread_mutex_lock(&ar.mu);
    uint64_t deadline = t_now_ms() + 20000;
    while (!ar.done && t_now_ms() < deadline) {
        pthread_mutex_unlock(&ar.mu);
        t_sleep_ms(10);
        pthread_mutex_lock(&ar.mu);
    }
    pthread_mutex_unlock(&ar.mu);
    cr_assert(ar.done, "async lookup never answered");
    cr_assert_eq(ar.err, 0);
    for (int i = 0; i < N; i++)
        cr_assert(ar.list->items[i] && strcmp(ar.list->items[i], A) == 0, "async: id %d", i);
    mpx_list_free(ar.list);

    /* Bad ids: refused, nothing queued. */
    mpx_stats_t st0, st1;
    mpx_stats(a, &st0);
    cr_assert_eq(mpx_connect(a, NULL, 3), MPX_EINVAL);
    cr_assert_eq(mpx_connect(a, "x", 0), MPX_EINVAL);
    cr_assert_eq(mpx_connect(a, ids[0], MPX_ID_MAX + 1), MPX_ETOOBIG);
    mpx_stats(a, &st1);
    cr_assert_eq(st1.queued, st0.queued);

    for (int i = 0; i < N; i++)
        cr_assert_eq(mpx_disconnect(a, ids[i], lens[i]), 0);
    cr_assert_eq(mpx_flush(a, 20000), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_sparks(b, ptrs, lens, N, &l), 0, "%s", mpx_last_error());
    for (int i = 0; i < N; i++)
        cr_assert_null(l->items[i], "id %d still found", i);
    mpx_list_free(l);
    mpx_unregister(a);
    mpx_unregister(b);
    mpx_destroy(a);
    mpx_destroy(b);
}

Test(sharded_single, binary_ids, .timeout = 120) { binary_ids(0); }
Test(sharded_cluster, binary_ids, .timeout = 120) { binary_ids(1); }
