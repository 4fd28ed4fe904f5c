/*
 * test_reap_large.c - reaping a dead server of 1,000,000 sparks (divided by
 * MPX_TEST_SCALE) completely, in chunks, while another client PINGs Redis
 * every millisecond.
 *
 * The test asserts that the cleanup is complete and exact. The worst PING
 * wait and the reaping time are measurements, printed (never asserted: a
 * slow or shared machine must not fail the suite). Run alone to see them:
 *   MPX_TEST_REDIS_URL=... build/tests/test_reap_large --verbose
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "support.h"

Test(reap_large, a_dead_server_of_a_million_sparks_is_reaped_in_chunks, .timeout = 600)
{
    int n = 1000000 / t_scale();
    mpx_options_t o;
    t_options(&o, NULL);
    o.command_timeout_ms = 10000;
    redisContext *c = t_connect(NULL);
    const char *dead = "http://10.1.1.1:7000";
    uint64_t t0 = t_now_ms();
    t_plant(c, o.ns, dead, n);
    freeReplyObject(t_cmd(c, "HSET %s:sparks survivor http://10.1.1.2:7000", o.ns));
    freeReplyObject(t_cmd(c, "SADD %s:servers %s", o.ns, dead));
    uint64_t planted_ms = t_now_ms() - t0;
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), (long long)n + 1);

    mpx_t *m = NULL;
    cr_assert_eq(mpx_create(&o, &m), 0);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:7001"), 0, "%s", mpx_last_error());

    t_pinger_t p = {0};
    pthread_t th;
    pthread_create(&th, NULL, t_ping_loop, &p);
    t_sleep_ms(50);
    uint64_t r0 = t_now_ms();
    size_t reaped = 0;
    int rc = mpx_reap(m, &reaped);
    uint64_t reap_ms = t_now_ms() - r0;
    t_sleep_ms(50);
    atomic_store(&p.stop, true);
    pthread_join(th, NULL);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(reaped, 1);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 1, "every dead spark removed, survivor kept");
    cr_assert_eq(t_int(c, "HLEN %s:drains", o.ns), 0);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, dead), 0);
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_eq(st.reaped_sparks, (uint64_t)n);
    cr_assert_gt(p.count, 10, "the pinger ran");
    fprintf(stderr,
            "reap_large: %d sparks planted in %llu ms; reaped in %llu ms (chunk %u); "
            "%llu PINGs, worst PING wait %.1f ms\n",
            n, (unsigned long long)planted_ms, (unsigned long long)reap_ms, o.reap_chunk,
            (unsigned long long)p.count, p.worst_us / 1000.0);
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}
