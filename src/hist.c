/*
 * hist.c - a log-linear histogram of microseconds for commit latency.
 *
 * Values below 32 have a bucket each; above, every power of two is split
 * into 32 buckets (about 3% resolution), up to 2^42 us. One writer (the
 * writer thread) adds; any thread reads (relaxed atomics: a quantile is
 * computed from a possibly slightly moving picture, which is fine).
 */
#include "internal.h"

static unsigned bucket_of(uint64_t v)
{
    if (v < 32)
        return (unsigned)v;
    unsigned p = 63u - (unsigned)__builtin_clzll(v); /* >= 5 */
    unsigned sub = (unsigned)(v >> (p - 5)) & 31u;
    unsigned idx = 32u + (p - 5u) * 32u + sub;
    return idx < MPX__HIST_BUCKETS ? idx : MPX__HIST_BUCKETS - 1;
}

/* The upper bound of a bucket (the value reported for it). */
static uint64_t bucket_value(unsigned idx)
{
    if (idx < 32)
        return idx;
    unsigned p = (idx - 32u) / 32u + 5u, sub = (idx - 32u) % 32u;
    return ((uint64_t)(32u + sub) << (p - 5u)) + ((uint64_t)1 << (p - 5u)) - 1u;
}

void mpx__hist_add(mpx__hist_t *h, uint64_t v)
{
    atomic_fetch_add_explicit(&h->b[bucket_of(v)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    uint64_t m = atomic_load_explicit(&h->max, memory_order_relaxed);
    while (v > m && !atomic_compare_exchange_weak_explicit(&h->max, &m, v, memory_order_relaxed,
                                                           memory_order_relaxed))
        ;
}

uint64_t mpx__hist_quantile(const mpx__hist_t *h, double q)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < MPX__HIST_BUCKETS; i++)
        total += atomic_load_explicit(&h->b[i], memory_order_relaxed);
    if (!total)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank >= total)
        rank = total - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < MPX__HIST_BUCKETS; i++) {
        seen += atomic_load_explicit(&h->b[i], memory_order_relaxed);
        if (seen > rank) {
            uint64_t v = bucket_value(i), mx = atomic_load_explicit(&h->max, memory_order_relaxed);
            return v < mx ? v : mx;
        }
    }
    return atomic_load_explicit(&h->max, memory_order_relaxed);
}
