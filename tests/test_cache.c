/*
 * test_cache.c - the cache's record state machine, without Redis or the
 * writer thread: the writer-side calls are made by hand.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "internal.h"

static size_t pull(mpx__cache_t *c, mpx__op_t *ops, size_t max, size_t *coalesced)
{
    mpx__cache_take(c);
    size_t n = 0, k;
    while ((k = mpx__cache_next_ops(c, ops + n, max - n, coalesced)) > 0)
        n += k;
    return n;
}

Test(cache, a_flip_after_a_resync_is_still_written)
{
    /* Found by metroplex-chaos: after a resync (Redis restarted, state
     * unknown), a spark disconnected and reconnected before the writer got
     * to it was taken for already written and never reached Redis. */
    mpx__cache_t *c = mpx__cache_create(0, 0);
    cr_assert_not_null(c);
    mpx__op_t ops[8];
    size_t co = 0;
    cr_assert_eq(mpx__cache_connect(c, "x", 1, 1), 1);
    cr_assert_eq(pull(c, ops, 8, &co), 1);
    cr_assert(ops[0].want);
    mpx__cache_committed(c, ops, 1); /* Redis has x */

    cr_assert_eq(mpx__cache_disconnect(c, "x", 1, 2), 1); /* a tombstone, queued */
    mpx__cache_mark_unwritten(c, 3);                      /* Redis restarted */
    cr_assert_eq(mpx__cache_connect(c, "x", 1, 4), 1);    /* back before the writer */
    size_t n = pull(c, ops, 8, &co);
    cr_assert_eq(n, 1, "x must be written again: Redis lost it");
    cr_assert(ops[0].want);
    mpx__cache_committed(c, ops, 1);
    mpx__cache_reclaim(c);
    mpx__cache_destroy(c);
}

Test(cache, resync_rewrites_connected_and_deletes_tombstones)
{
    mpx__cache_t *c = mpx__cache_create(0, 0);
    mpx__op_t ops[8];
    size_t co = 0;
    mpx__cache_connect(c, "a", 1, 1);
    mpx__cache_connect(c, "b", 1, 1);
    cr_assert_eq(pull(c, ops, 8, &co), 2);
    mpx__cache_committed(c, ops, 2);
    cr_assert_eq(pull(c, ops, 8, &co), 0, "nothing pending");
    mpx__cache_disconnect(c, "b", 1, 2);
    mpx__cache_mark_unwritten(c, 3);
    size_t n = pull(c, ops, 8, &co);
    cr_assert_eq(n, 2, "a written again, b deleted again");
    int connects = 0, deletes = 0;
    for (size_t i = 0; i < n; i++)
        ops[i].want ? connects++ : deletes++;
    cr_assert_eq(connects, 1);
    cr_assert_eq(deletes, 1);
    mpx__cache_committed(c, ops, n);
    mpx__cache_stats_t st;
    mpx__cache_stats(c, &st);
    cr_assert_eq(st.own, 1);
    cr_assert_eq(st.pending, 0);
    mpx__cache_reclaim(c);
    mpx__cache_destroy(c);
}

Test(cache, changes_that_cancel_out_are_coalesced)
{
    mpx__cache_t *c = mpx__cache_create(0, 0);
    mpx__op_t ops[8];
    size_t co = 0;
    mpx__cache_connect(c, "a", 1, 1);
    mpx__cache_disconnect(c, "a", 1, 1);
    mpx__cache_connect(c, "a", 1, 1);
    mpx__cache_disconnect(c, "a", 1, 1);
    cr_assert_eq(pull(c, ops, 8, &co), 0);
    cr_assert_eq(co, 1);
    mpx__cache_stats_t st;
    mpx__cache_stats(c, &st);
    cr_assert_eq(st.pending, 0);
    cr_assert_eq(st.own, 0);
    mpx__cache_reclaim(c);
    mpx__cache_destroy(c);
}
