/*
 * test_sharded_faults.c - the sharded layout when a live server pauses past
 * its lease and is reaped, or cannot register again, on the single test
 * redis-server (raw key checks). Each test reproduced a bug found in review:
 *   - a retired generation's writer kept writing after its drain finished:
 *     the entries named a dead server forever, or its set leaked (fixed by
 *     the drain's tombstone marker and the write script's STALEGEN);
 *   - the writer kept writing while a re-registration failed, and after
 *     the address went to another instance (fixed: the writer stops);
 *   - a layout mismatch left the handle registering forever (EINVAL final).
 * A "pause" deletes the alive key and lease, as their expiry would.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "cluster.h"
#include "support.h"

#define NSH 4

static redisContext *raw;

static void raw_open(void)
{
    raw = t_connect(NULL);
}

static void hash_key(const mpx__keys_t *k, const char *id, char *out, size_t cap)
{
    uint32_t s = mpx__key_shard(k, id, strlen(id));
    snprintf(out, cap, "%s{%s}:sparks", k->ns, k->tags[s]);
}

static void set_key(const mpx__keys_t *k, const char *addr, const char *gen, const char *id,
                    char *out, size_t cap)
{
    uint32_t s = mpx__key_shard(k, id, strlen(id));
    snprintf(out, cap, "%s{%s}:%s:sparks:%s", k->ns, k->tags[s], addr, gen);
}

static void owner(const mpx__keys_t *k, const char *id, char *out, size_t cap)
{
    char hk[256];
    hash_key(k, id, hk, sizeof hk);
    redisReply *r = t_cmd(raw, "HGET %s %s", hk, id);
    snprintf(out, cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

static long long hlen_all(const mpx__keys_t *k)
{
    long long n = 0;
    for (uint32_t s = 0; s < k->nshards; s++)
        n += t_int(raw, "HLEN %s{%s}:sparks", k->ns, k->tags[s]);
    return n;
}

static void opts(mpx_options_t *o, uint32_t interval, uint32_t lease)
{
    t_options(o, NULL);
    o->layout = MPX_LAYOUT_SHARDED;
    o->shards = NSH;
    o->interval_ms = interval;
    o->latency_ms = 1;
    o->lease_ms = lease;
}

/* The three tests of a paused A share this: A registered at `addr`, a
 * second process d to reap it, the key names, and raw. */
typedef struct {
    mpx_options_t o;
    mpx_t *a, *d;
    mpx__keys_t k;
} fx_t;

static void fx_open(fx_t *f, uint32_t interval, uint32_t lease, const char *addr)
{
    raw_open();
    opts(&f->o, interval, lease);
    f->a = t_make(&f->o, addr);
    f->d = t_make(&f->o, NULL);
    mpx__keys_init_layout(&f->k, f->o.ns, MPX_LAYOUT_SHARDED, NSH);
    t_sleep_ms(300); /* the registration's kicked tick */
}

static void fx_close(fx_t *f)
{
    mpx_destroy(f->a);
    mpx_destroy(f->d);
    mpx__keys_free(&f->k);
    redisFree(raw);
}

/* mpx_flush while A registers again (MPX_ESTATE meanwhile), within 10 s. */
static int flush_through_registration(mpx_t *a)
{
    int rc;
    uint64_t dl = t_now_ms() + 10000;
    while ((rc = mpx_flush(a, 10000)) == MPX_ESTATE && t_now_ms() < dl)
        t_sleep_ms(20);
    return rc;
}

/* "Pause" A: its alive key and lease expire (deleted here), another process
 * reaps it and drains its generation completely. */
static void expire_and_reap(mpx_t *d, const mpx__keys_t *k, const char *A)
{
    freeReplyObject(t_cmd(raw, "DEL %salive:%s %slease:%s", k->ctl, A, k->ctl, A));
    size_t n = 0;
    cr_assert_eq(mpx_reap(d, &n), 0, "%s", mpx_last_error());
    cr_assert_eq(n, 1);
    cr_assert_eq(hlen_all(k), 0, "drained");
    cr_assert_eq(t_int(raw, "HLEN %s", k->drains), 0, "drain finished");
}

/* 1. A resumes after its generation was retired and drained: its writer
 *    must not write under that generation (nothing would drain it again);
 *    the write waits for the new registration. Then A crashes and is reaped:
 *    nothing of it is left. */
Test(sharded_faults, stale_gen_write_after_drain_then_crash, .timeout = 60)
{
    const char *A = "http://127.0.0.1:9101";
    fx_t f; /* heartbeat every 20 s: A "paused" between ticks */
    fx_open(&f, 60000, 60000, A);
    mpx_t *a = f.a, *d = f.d;
    char gen1[64], gen2[64];
    mpx__get_gen(a, gen1);
    cr_assert_eq(mpx_connect(a, "x1", 2), 0);
    cr_assert_eq(mpx_flush(a, 5000), 0);

    expire_and_reap(d, &f.k, A);

    /* A resumes: the write under gen1 is refused (STALEGEN), the writer
     * kicks the heartbeat, which registers again; then y1 is written under
     * the new generation. */
    cr_assert_eq(mpx_connect(a, "y1", 2), 0);
    cr_assert_eq(flush_through_registration(a), 0, "%s", mpx_last_error());
    char own[128], sk[256];
    owner(&f.k, "y1", own, sizeof own);
    cr_assert_str_eq(own, A);
    mpx__get_gen(a, gen2);
    cr_assert_neq(strcmp(gen2, gen1), 0, "registered again under a new generation");
    set_key(&f.k, A, gen1, "y1", sk, sizeof sk);
    cr_assert_eq(t_int(raw, "EXISTS %s", sk), 0, "nothing written under the retired generation");

    mpx_destroy(a); /* crash */
    f.a = NULL;
    expire_and_reap(d, &f.k, A);
    char buf[MPX_ADDRESS_MAX + 1];
    size_t len = sizeof buf;
    int rc = mpx_spark(d, "y1", 2, buf, &len);
    cr_assert_eq(rc, MPX_ENOTFOUND, "y1 still resolves to dead server %s", buf);
    fx_close(&f);
}

/* 1b. The re-registration that follows a STALEGEN must rewrite what the
 *     refused cycle held before any flush is answered: the registration
 *     activated the writer and asked for the rewrite in two steps, and a
 *     flush cycle that ran in between took nothing (the refused ids were
 *     still marked in flight), completed, and mpx_flush returned 0 with
 *     the ids in no Redis key. Seen 1 run in ~15 of the test above under
 *     TSan; repeated here to make the window likely. */
Test(sharded_faults, flush_after_stalegen_waits_for_rewrite, .timeout = 120)
{
    const char *A = "http://127.0.0.1:9107";
    fx_t f;
    fx_open(&f, 60000, 60000, A);
    mpx_t *a = f.a, *d = f.d;
    enum { ROUNDS = 25 };
    char id[32], own[128];
    for (int i = 0; i < ROUNDS; i++) {
        snprintf(id, sizeof id, "x%d", i);
        cr_assert_eq(mpx_connect(a, id, strlen(id)), 0);
        cr_assert_eq(mpx_flush(a, 10000), 0, "%s", mpx_last_error());
        expire_and_reap(d, &f.k, A);
        snprintf(id, sizeof id, "y%d", i);
        cr_assert_eq(mpx_connect(a, id, strlen(id)), 0);
        cr_assert_eq(flush_through_registration(a), 0, "round %d: %s", i, mpx_last_error());
        for (int j = 0; j <= i; j++)
            for (int xy = 0; xy < 2; xy++) {
                snprintf(id, sizeof id, "%c%d", xy ? 'y' : 'x', j);
                owner(&f.k, id, own, sizeof own);
                cr_assert_str_eq(own, A, "round %d: flush returned 0 but %s is owned by '%s'",
                                 i, id, own);
            }
    }
    fx_close(&f);
}

/* 2. Same, but A's heartbeat stays paused for a while: nothing is written
 *    under the retired generation; once it registers again the spark is
 *    written, and after everyone unregistered no key is left but the
 *    layout and the shards' tombstone markers. */
Test(sharded_faults, stale_gen_write_after_drain_leaks_set, .timeout = 60)
{
    const char *A = "http://127.0.0.1:9102";
    fx_t f; /* heartbeat every 500 ms */
    fx_open(&f, 60000, 1500, A);
    mpx_t *a = f.a, *d = f.d;
    mpx_options_t o = f.o;
    char gen1[64];
    mpx__get_gen(a, gen1);

    pthread_mutex_lock(&a->life_mu); /* A's heartbeat "paused" */
    expire_and_reap(d, &f.k, A);
    cr_assert_eq(mpx_connect(a, "y2", 2), 0);
    /* Not written under the retired generation while the heartbeat cannot
     * register again. */
    cr_assert_eq(mpx_flush(a, 1000), MPX_ETIMEDOUT, "%s", mpx_last_error());
    char own[128];
    owner(&f.k, "y2", own, sizeof own);
    cr_assert_str_eq(own, "");
    pthread_mutex_unlock(&a->life_mu);

    uint64_t dl = t_now_ms() + 10000;
    for (;;) {
        char g[64];
        bool moved = mpx__get_gen(a, g) == MPX__REGISTERED && strcmp(g, gen1) != 0;
        if (moved || t_now_ms() > dl)
            break;
        t_sleep_ms(20);
    }
    cr_assert_eq(mpx_flush(a, 5000), 0);
    owner(&f.k, "y2", own, sizeof own);
    cr_assert_str_eq(own, A);
    cr_assert_eq(mpx_disconnect(a, "y2", 2), 0);
    cr_assert_eq(mpx_flush(a, 5000), 0);
    cr_assert_eq(mpx_unregister(a), 0, "%s", mpx_last_error());
    size_t n;
    mpx_reap(d, &n);
    mpx_destroy(a);
    mpx_destroy(d);
    f.a = f.d = NULL;

    redisReply *r = t_cmd(raw, "KEYS *%s*", o.ns);
    int leaked = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const char *key = r->element[i]->str;
        if (strstr(key, ":layout"))
            continue;
        if (strstr(key, "}:gens")) {
            /* A shard's generation markers: only tombstones may stay. */
            redisReply *v = t_cmd(raw, "HVALS %s", key);
            for (size_t j = 0; j < v->elements; j++)
                cr_assert_eq(v->element[j]->str[0], '-', "%s: live marker %s left", key,
                             v->element[j]->str);
            freeReplyObject(v);
            continue;
        }
        cr_log_info("left after everyone unregistered: %s", key);
        leaked++;
    }
    freeReplyObject(r);
    cr_assert_eq(leaked, 0, "%d keys leaked (retired generation's set)", leaked);
    fx_close(&f);
}

/* 3. The heartbeat finds A retired, registering again fails, and the
 *    writer stays active under the retired generation: it keeps writing,
 *    even after the address went to another instance and A gave up. */
Test(sharded_faults, writer_active_after_reregistration_fails, .timeout = 60)
{
    const char *A = "http://127.0.0.1:9103";
    fx_t f;
    fx_open(&f, 60000, 1500, A);
    mpx_t *a = f.a, *d = f.d;
    mpx_options_t o = f.o;

    pthread_mutex_lock(&a->life_mu);
    expire_and_reap(d, &f.k, A);
    /* fault injection standing for ECONN/ETIMEDOUT on the control slot at
     * the moment of the re-registration */
    freeReplyObject(t_cmd(raw, "SET %s %s", f.k.layout_key, "sharded 999"));
    pthread_mutex_unlock(&a->life_mu);
    uint64_t dl = t_now_ms() + 5000;
    while (t_now_ms() < dl) {
        char ad[MPX_ADDRESS_MAX + 1];
        if (mpx__get_address(a, ad) == MPX__REGISTERING)
            break;
        t_sleep_ms(20);
    }
    char ad[MPX_ADDRESS_MAX + 1];
    cr_assert_eq(mpx__get_address(a, ad), MPX__REGISTERING);
    cr_assert_eq(mpx_connect(a, "z1", 2), 0);
    int frc = mpx_flush(a, 3000);
    t_sleep_ms(300); /* flush refuses when not REGISTERED; give the writer time */
    char own[128];
    owner(&f.k, "z1", own, sizeof own);
    cr_log_info("A not registered (REGISTERING): flush rc=%d, owner(z1)='%s'", frc, own);
    cr_assert_str_eq(own, "", "written while not registered (invariant 2)");

    /* Another instance takes the address; A gives up. */
    pthread_mutex_lock(&a->life_mu);
    freeReplyObject(t_cmd(raw, "SET %s %s", f.k.layout_key, "sharded 4"));
    mpx_t *p2 = t_make(&o, A);
    pthread_mutex_unlock(&a->life_mu);
    dl = t_now_ms() + 5000;
    while (t_now_ms() < dl && mpx__get_address(a, ad) != MPX__UNREGISTERED)
        t_sleep_ms(20);
    cr_assert_eq(mpx__get_address(a, ad), MPX__UNREGISTERED);
    cr_assert_eq(mpx_connect(a, "z2", 2), 0);
    frc = mpx_flush(a, 3000);
    t_sleep_ms(300);
    owner(&f.k, "z2", own, sizeof own);
    cr_log_info("A gave up (UNREGISTERED, address held by p2): flush rc=%d, owner(z2)='%s'",
                frc, own);
    cr_assert_str_eq(own, "", "A still writes sparks under an address p2 holds");
    char buf[MPX_ADDRESS_MAX + 1];
    size_t len = sizeof buf;
    if (mpx_spark(p2, "z2", 2, buf, &len) == 0)
        cr_log_info("p2 is told z2 is at %s (itself), but it never saw z2", buf);
    /* Even mpx_unregister does not stop it: the address was cleared. */
    cr_assert_eq(mpx_unregister(a), 0);
    cr_assert_eq(mpx_connect(a, "z3", 2), 0);
    t_sleep_ms(300);
    owner(&f.k, "z3", own, sizeof own);
    cr_log_info("after mpx_unregister(a): owner(z3)='%s'", own);
    cr_assert_str_eq(own, "", "still written after mpx_unregister");
    mpx_unregister(p2);
    mpx_destroy(p2);
    fx_close(&f);
}

/* 4. mpx_register failing on a layout mismatch (MPX_EINVAL) leaves the
 *    handle REGISTERING: the heartbeat keeps retrying in the background. */
static atomic_int errors;
static void on_err(mpx_t *m, int code, const char *msg, void *data)
{
    (void)m, (void)code, (void)msg, (void)data;
    atomic_fetch_add(&errors, 1);
}

Test(sharded_faults, layout_einval_keeps_registering, .timeout = 60)
{
    mpx_options_t o;
    opts(&o, 3000, 600);
    mpx_t *a = t_make(&o, "http://127.0.0.1:9104");
    o.shards = 8;
    o.on_error = on_err;
    mpx_t *b = t_make(&o, NULL);
    cr_assert_eq(mpx_register(b, "http://127.0.0.1:9105"), MPX_EINVAL);
    t_sleep_ms(1500);
    char ad[MPX_ADDRESS_MAX + 1];
    int st = mpx__get_address(b, ad);
    int rc2 = mpx_register(b, "http://127.0.0.1:9106");
    cr_log_info("after EINVAL: state=%d addr='%s' on_error calls=%d; register(other)=%d",
                st, ad, atomic_load(&errors), rc2);
    cr_assert_eq(st, MPX__UNREGISTERED, "EINVAL from mpx_register left state REGISTERING");
    mpx_destroy(b);
    mpx_unregister(a);
    mpx_destroy(a);
}
