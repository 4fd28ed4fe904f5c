/*
 * test_badinput.c - bad input everywhere it enters, against a real
 * redis-server (issue 5):
 *
 *  - spark ids and addresses that are NULL, empty, over the documented
 *    maximum (up to 1 MiB), binary with NUL bytes, invalid UTF-8, or
 *    containing ':' and '{}', through mpx_connect / disconnect / spark /
 *    sparks / sparks_async / register and the options: each gives a clear
 *    error, or (valid but odd binary ids) round-trips exactly through Redis;
 *    the registry and Redis stay consistent;
 *  - keys of the wrong type planted in the namespace: every operation
 *    returns or reports a clear error, never crashes or hangs, and the
 *    registry recovers once the key is removed;
 *  - a second process registering an address a live process holds.
 *
 * The last tests reproduce bugs this suite found (scripts that failed
 * half-way after a rename, a pending count that missed changes in flight);
 * they failed before the fixes.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "support.h"

#define MIB (1024u * 1024u)

static mpx_t *make(mpx_options_t *o)
{
    mpx_t *m = NULL;
    int rc = mpx_create(o, &m);
    cr_assert_eq(rc, 0, "mpx_create: %s", mpx_last_error());
    cr_assert_not_null(m);
    return m;
}

/* Number of keys in namespace `ns` (SCAN, so it is safe on a shared server). */
static long count_keys(redisContext *c, const char *ns)
{
    long n = 0;
    char cursor[32] = "0";
    do {
        redisReply *r = t_cmd(c, "SCAN %s MATCH %s:* COUNT 1000", cursor, ns);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        n += (long)r->element[1]->elements;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

/* A message is set and mentions `what`. */
static void assert_msg(const char *what)
{
    const char *m = mpx_last_error();
    cr_assert(m[0] != 0, "an error message is set");
    cr_assert(strstr(m, what) != NULL, "message '%s' mentions '%s'", m, what);
}

/* ---- ids ---------------------------------------------------------------- */

typedef struct async_result {
    atomic_int done;
    int err;
    mpx_list_t *list;
} async_result_t;

static void async_cb(mpx_t *m, int err, mpx_list_t *l, void *d)
{
    (void)m;
    async_result_t *r = d;
    r->err = err;
    r->list = l;
    atomic_store(&r->done, 1);
}

/* Every entry point that takes an id rejects `id`/`len` with `want`. */
static void assert_id_rejected(mpx_t *m, const void *id, size_t len, int want, const char *what)
{
    char buf[300];
    size_t bl = sizeof buf;
    int rc;
    cr_assert_eq(rc = mpx_connect(m, id, len), want, "connect(%s): %s", what, mpx_err_name(rc));
    assert_msg("spark id");
    cr_assert_eq(rc = mpx_disconnect(m, id, len), want, "disconnect(%s): %s", what,
                 mpx_err_name(rc));
    assert_msg("spark id");
    cr_assert_eq(rc = mpx_spark(m, id, len, buf, &bl), want, "spark(%s): %s", what,
                 mpx_err_name(rc));
    assert_msg("spark id");
    /* In a list, after a good id: the error names the bad one's index. */
    const void *ids[2] = {"good", id};
    size_t lens[2] = {4, len};
    mpx_list_t *l = (mpx_list_t *)0x1;
    cr_assert_eq(rc = mpx_sparks(m, ids, lens, 2, &l), want, "sparks(%s): %s", what,
                 mpx_err_name(rc));
    assert_msg("id 1");
    cr_assert_null(l, "sparks leaves *out NULL on error");
    async_result_t ar = {0};
    cr_assert_eq(rc = mpx_sparks_async(m, ids, lens, 2, async_cb, &ar), want,
                 "sparks_async(%s): %s", what, mpx_err_name(rc));
    assert_msg("id 1");
    t_sleep_ms(20);
    cr_assert_eq(atomic_load(&ar.done), 0, "the callback never runs after an error return");
}

Test(badinput, bad_ids_are_rejected_everywhere_and_nothing_reaches_redis)
{
    mpx_options_t o;
    t_options(&o, NULL);
    mpx_t *m = make(&o);
    const char *addr = "http://127.0.0.1:7101";
    cr_assert_eq(mpx_register(m, addr), 0, "%s", mpx_last_error());

    char *big = malloc(MIB);
    cr_assert_not_null(big);
    memset(big, 'x', MIB);
    assert_id_rejected(m, NULL, 0, MPX_EINVAL, "NULL, 0");
    assert_id_rejected(m, NULL, 5, MPX_EINVAL, "NULL, 5");
    assert_id_rejected(m, "abc", 0, MPX_EINVAL, "empty");
    assert_id_rejected(m, big, MPX_ID_MAX + 1, MPX_ETOOBIG, "MPX_ID_MAX + 1");
    assert_id_rejected(m, big, MIB, MPX_ETOOBIG, "1 MiB");
    assert_id_rejected(m, big, SIZE_MAX, MPX_ETOOBIG, "SIZE_MAX");
    /* NULL id with lens == NULL in a list (strlen would crash). */
    const void *ids[2] = {"good", NULL};
    mpx_list_t *l = NULL;
    cr_assert_eq(mpx_sparks(m, ids, NULL, 2, &l), MPX_EINVAL);
    async_result_t ar = {0};
    cr_assert_eq(mpx_sparks_async(m, ids, NULL, 2, async_cb, &ar), MPX_EINVAL);
    /* NULL list / callback / out. */
    cr_assert_eq(mpx_sparks(m, NULL, NULL, 1, &l), MPX_EINVAL);
    cr_assert_eq(mpx_sparks(m, ids, NULL, 1, NULL), MPX_EINVAL);
    cr_assert_eq(mpx_sparks_async(m, ids, NULL, 1, NULL, NULL), MPX_EINVAL);
    cr_assert_eq(mpx_sparks_async(m, NULL, NULL, 1, async_cb, &ar), MPX_EINVAL);
    char buf[8];
    cr_assert_eq(mpx_spark(m, "a", 1, buf, NULL), MPX_EINVAL);
    /* NULL registry. */
    cr_assert_eq(mpx_connect(NULL, "a", 1), MPX_EINVAL);
    cr_assert_eq(mpx_disconnect(NULL, "a", 1), MPX_EINVAL);
    free(big);

    /* Nothing was queued or written. */
    mpx_stats_t st;
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert_eq(st.queued, 0, "no change queued by a rejected call");
    cr_assert_eq(st.local_sparks, 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "EXISTS %s:sparks", o.ns), 0, "no hash field written");
    cr_assert_eq(t_int(c, "EXISTS %s:%s:sparks", o.ns, addr), 0, "no set member written");
    /* The registry still works. */
    cr_assert_eq(mpx_connect(m, "ok", 2), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 1);
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0, "unregister leaves nothing");
    mpx_destroy(m);
    redisFree(c);
}

/* Odd but valid ids. */
#define N_ODD 12
static void odd_ids(char ids[N_ODD][MPX_ID_MAX], size_t lens[N_ODD])
{
    static const struct {
        const char *s;
        size_t n;
    } fixed[] = {
        {"\0", 1},                       /* a single NUL */
        {"a\0b\0\0c", 6},                /* NULs inside */
        {"\0\0\0\0", 4},                 /* only NULs: not the same id as "\0" */
        {"\xff\xfe\xfd", 3},             /* invalid UTF-8 */
        {"\x80", 1},                     /* a lone continuation byte */
        {"\xc0\xaf", 2},                 /* overlong encoding of '/' */
        {"\xed\xa0\x80", 3},             /* a UTF-16 surrogate in UTF-8 */
        {"ns:sparks:servers", 17},       /* separators */
        {"{hash}tag:{}", 12},            /* braces (cluster hash tags) */
        {":", 1},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        memcpy(ids[i], fixed[i].s, fixed[i].n);
        lens[i] = fixed[i].n;
    }
    /* MPX_ID_MAX bytes of every byte value, and MPX_ID_MAX - 1 of them. */
    for (size_t k = 0; k < MPX_ID_MAX; k++)
        ids[10][k] = ids[11][k] = (char)(k * 7 + 3);
    lens[10] = MPX_ID_MAX;
    lens[11] = MPX_ID_MAX - 1;
}

Test(badinput, odd_binary_ids_round_trip_exactly_through_redis)
{
    static char ids[N_ODD][MPX_ID_MAX];
    size_t lens[N_ODD];
    odd_ids(ids, lens);
    mpx_options_t o;
    t_options(&o, NULL);
    const char *addr = "http://127.0.0.1:7102";
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_register(m, addr), 0, "%s", mpx_last_error());
    for (int i = 0; i < N_ODD; i++)
        cr_assert_eq(mpx_connect(m, ids[i], lens[i]), 0, "id %d: %s", i, mpx_last_error());
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());

    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), N_ODD, "one field per id, none merged");
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), N_ODD);
    for (int i = 0; i < N_ODD; i++) {
        redisReply *r = t_cmd(c, "HGET %s:sparks %b", o.ns, ids[i], lens[i]);
        cr_assert_eq(r->type, REDIS_REPLY_STRING, "id %d is a field, byte for byte", i);
        cr_assert_str_eq(r->str, addr);
        freeReplyObject(r);
        cr_assert_eq(t_int(c, "SISMEMBER %s:%s:sparks %b", o.ns, addr, ids[i], lens[i]), 1,
                     "id %d in the set", i);
    }
    /* The ids came back exactly: the set's members are the ids. */
    redisReply *r = t_cmd(c, "SMEMBERS %s:%s:sparks", o.ns, addr);
    cr_assert_eq(r->elements, N_ODD);
    for (size_t e = 0; e < r->elements; e++) {
        bool found = false;
        for (int i = 0; i < N_ODD && !found; i++)
            found = r->element[e]->len == lens[i] && memcmp(r->element[e]->str, ids[i], lens[i]) == 0;
        cr_assert(found, "member %zu is one of the ids", e);
    }
    freeReplyObject(r);
    cr_assert_eq(count_keys(c, o.ns), 5, "sparks, servers, alive, set, lease: no key from an id");

    /* Another registry looks them up through Redis: sync, list and async. */
    mpx_options_t o2 = o;
    mpx_t *other = make(&o2);
    const void *pids[N_ODD];
    for (int i = 0; i < N_ODD; i++) {
        char buf[64];
        size_t bl = sizeof buf;
        cr_assert_eq(mpx_spark(other, ids[i], lens[i], buf, &bl), 0, "id %d: %s", i,
                     mpx_last_error());
        cr_assert_str_eq(buf, addr);
        bl = sizeof buf;
        cr_assert_eq(mpx_spark(m, ids[i], lens[i], buf, &bl), 0, "own id %d", i);
        cr_assert_str_eq(buf, addr);
        pids[i] = ids[i];
    }
    mpx_list_t *l = NULL;
    cr_assert_eq(mpx_sparks(other, pids, lens, N_ODD, &l), 0, "%s", mpx_last_error());
    cr_assert_eq(l->count, N_ODD);
    for (int i = 0; i < N_ODD; i++)
        cr_assert(l->items[i] && strcmp(l->items[i], addr) == 0, "sparks item %d", i);
    mpx_list_free(l);
    async_result_t ar = {0};
    cr_assert_eq(mpx_sparks_async(other, pids, lens, N_ODD, async_cb, &ar), 0);
    WAIT_UNTIL(atomic_load(&ar.done), 5000);
    cr_assert(atomic_load(&ar.done), "async lookup answered");
    cr_assert_eq(ar.err, 0);
    for (int i = 0; i < N_ODD; i++)
        cr_assert(ar.list->items[i] && strcmp(ar.list->items[i], addr) == 0, "async item %d", i);
    mpx_list_free(ar.list);
    /* "\0" and "\0\0\0\0" are different ids: disconnecting one keeps the other. */
    cr_assert_eq(mpx_disconnect(m, ids[0], lens[0]), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks %b", o.ns, ids[0], lens[0]), 0);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks %b", o.ns, ids[2], lens[2]), 1);
    char buf[64];
    size_t bl = sizeof buf;
    cr_assert_eq(mpx_spark(other, ids[0], lens[0], buf, &bl), MPX_ENOTFOUND);
    for (int i = 1; i < N_ODD; i++)
        cr_assert_eq(mpx_disconnect(m, ids[i], lens[i]), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "EXISTS %s:sparks", o.ns), 0, "every field removed");
    cr_assert_eq(t_int(c, "EXISTS %s:%s:sparks", o.ns, addr), 0, "set emptied");
    mpx_destroy(other);
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0);
    mpx_destroy(m);
    redisFree(c);
}

/* ---- addresses ---------------------------------------------------------- */

Test(badinput, bad_addresses_are_rejected_and_leave_nothing_in_redis)
{
    mpx_options_t o;
    t_options(&o, NULL);
    mpx_t *m = make(&o);
    char *big = malloc(MIB + 1);
    cr_assert_not_null(big);
    memcpy(big, "http://", 7);
    memset(big + 7, 'a', MIB - 7);
    big[MIB] = 0;
    char max1[MPX_ADDRESS_MAX + 2]; /* valid form, one byte too long */
    memcpy(max1, "http://", 7);
    memset(max1 + 7, 'h', MPX_ADDRESS_MAX - 7 - 5);
    memcpy(max1 + MPX_ADDRESS_MAX - 5, ":8080", 6);
    cr_assert_eq(strlen(max1), MPX_ADDRESS_MAX);
    char max2[MPX_ADDRESS_MAX + 2];
    memcpy(max2, "http://h", 8);
    memcpy(max2 + 8, max1 + 7, MPX_ADDRESS_MAX - 7 + 1);
    cr_assert_eq(strlen(max2), MPX_ADDRESS_MAX + 1);

    static const struct {
        const char *addr;
        int want;
        const char *mentions;
    } bad[] = {
        {"", MPX_EINVAL, "empty"},
        {"http://h\xff\xfe:80", MPX_EINVAL, "0xff"},     /* invalid UTF-8 */
        {"http://h\xc3\xa9:80", MPX_EINVAL, "0xc3"},     /* valid UTF-8, not a host */
        {"http://h:1:2", MPX_EINVAL, "0x3a"},           /* ':' in the host */
        {"http://h:80:", MPX_EINVAL, "0x3a"},
        {"http://{h}:80", MPX_EINVAL, "0x7b"},          /* braces */
        {"http://h{a}:80", MPX_EINVAL, "0x7b"},
        {"http://h:8{0}", MPX_EINVAL, "port"},
        {"http://h:80/x", MPX_EINVAL, "path"},
        {"http://u@h:80", MPX_EINVAL, "user info"},
        {"http://h:80?q", MPX_EINVAL, "query"},
        {"http://h:0", MPX_EINVAL, "port"},
        {"http://h:65536", MPX_EINVAL, "port"},
        {"http://h", MPX_EINVAL, "no port"},
        {"h:80", MPX_EINVAL, "http://"},
        {"http://h :80", MPX_EINVAL, "0x20"},
        {"http://h\n:80", MPX_EINVAL, "0x0a"},
        {"http://[::1:80", MPX_EINVAL, "port"},
        {"http://[zz]:80", MPX_EINVAL, "IPv6"},
    };
    int rc;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = mpx_register(m, bad[i].addr);
        cr_assert_eq(rc, bad[i].want, "register('%s') = %s, want %s", bad[i].addr,
                     mpx_err_name(rc), mpx_err_name(bad[i].want));
        assert_msg(bad[i].mentions);
    }
    cr_assert_eq(rc = mpx_register(m, NULL), MPX_EINVAL, "%s", mpx_err_name(rc));
    assert_msg("NULL");
    cr_assert_eq(rc = mpx_register(m, max2), MPX_ETOOBIG, "%s", mpx_err_name(rc));
    assert_msg("maximum");
    cr_assert_eq(rc = mpx_register(m, big), MPX_ETOOBIG, "%s", mpx_err_name(rc));
    assert_msg("maximum");
    cr_assert(strlen(mpx_last_error()) < 4096, "the message does not echo 1 MiB");
    cr_assert_eq(mpx_register(NULL, "http://h:1"), MPX_EINVAL);
    /* A NUL byte ends a C string: "http://h:81\0junk" is "http://h:81". */

    /* Nothing happened: not registered, nothing in Redis. */
    char buf[300];
    size_t bl = sizeof buf;
    cr_assert_eq(mpx_address(m, buf, &bl), MPX_ENOTFOUND);
    redisContext *c = t_connect(NULL);
    cr_assert_eq(count_keys(c, o.ns), 0, "no key written by a rejected register");

    /* The longest valid address works, keys and all. */
    cr_assert_eq(mpx_register(m, max1), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_connect(m, "s", 1), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, max1), 1);
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, max1), 1);
    cr_assert_eq(t_int(c, "EXISTS %s:%s:lease", o.ns, max1), 1);
    /* Registered: a bad address is still EINVAL (checked first), not ESTATE. */
    cr_assert_eq(mpx_register(m, "http://h:1/"), MPX_EINVAL);
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0);
    mpx_destroy(m);
    free(big);
    redisFree(c);
}

Test(badinput, bad_options_strings_are_rejected_by_create)
{
    char *big = malloc(MIB + 1);
    cr_assert_not_null(big);
    memset(big, 'a', MIB);
    big[MIB] = 0;
    char ns129[MPX_NAMESPACE_MAX + 2];
    memset(ns129, 'n', MPX_NAMESPACE_MAX + 1);
    ns129[MPX_NAMESPACE_MAX + 1] = 0;
    static const struct {
        int field; /* 0 url, 1 ns, 2 address */
        const char *value;
        int want;
        const char *mentions;
    } bad[] = {
        {0, "", MPX_EINVAL, "redis_url"},
        {0, "redis://h\xff:1", MPX_EINVAL, "0xff"},
        {0, "redis://{h}:1", MPX_EINVAL, "0x7b"},
        {0, "redis://h:1:2", MPX_EINVAL, "port"},
        {0, "redis://h:1/x", MPX_EINVAL, "db"},
        {0, "unix://rel/path", MPX_EINVAL, "absolute"},
        {0, "unix:///s?db=1&junk", MPX_EINVAL, "parameter"},
        {1, "", MPX_EINVAL, "ns"},
        {1, "a b", MPX_EINVAL, "0x20"},
        {1, "{tag}", MPX_EINVAL, "0x7b"},
        {1, "ns}", MPX_EINVAL, "0x7d"},
        {1, "\xc3\xa9t\xc3\xa9", MPX_EINVAL, "0xc3"},
        {1, "\xff", MPX_EINVAL, "0xff"},
        {1, "a\tb", MPX_EINVAL, "0x09"},
        {2, "", MPX_EINVAL, "options.address"},
        {2, "http://h\xff:1", MPX_EINVAL, "options.address"},
        {2, "http://h:1:2", MPX_EINVAL, "options.address"},
        {2, "http://{h}:1", MPX_EINVAL, "options.address"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mpx_options_t o;
        t_options(&o, NULL);
        if (bad[i].field == 0)
            o.redis_url = bad[i].value;
        else if (bad[i].field == 1)
            o.ns = bad[i].value;
        else
            o.address = bad[i].value;
        mpx_t *m = (mpx_t *)0x1;
        int rc = mpx_create(&o, &m);
        cr_assert_eq(rc, bad[i].want, "case %zu: %s", i, mpx_err_name(rc));
        cr_assert_null(m, "case %zu: *out is NULL on error", i);
        assert_msg(bad[i].mentions);
    }
    /* Over-long strings, up to 1 MiB. */
    struct {
        int field;
        const char *value;
        int want;
    } longs[] = {
        {0, big, MPX_EINVAL},   {1, big, MPX_EINVAL},  {1, ns129, MPX_EINVAL},
        {2, big, MPX_ETOOBIG},
    };
    for (size_t i = 0; i < sizeof longs / sizeof longs[0]; i++) {
        mpx_options_t o;
        t_options(&o, NULL);
        if (longs[i].field == 0)
            o.redis_url = longs[i].value;
        else if (longs[i].field == 1)
            o.ns = longs[i].value;
        else
            o.address = longs[i].value;
        mpx_t *m = (mpx_t *)0x1;
        int rc = mpx_create(&o, &m);
        cr_assert_eq(rc, longs[i].want, "long case %zu: %s", i, mpx_err_name(rc));
        cr_assert_null(m);
        cr_assert(strlen(mpx_last_error()) > 0 && strlen(mpx_last_error()) < 4096,
                  "a short message for a 1 MiB string");
    }
    /* ':' is allowed in a namespace: "a:b" and "a" + ":b..." never share keys
     * with each other's sparks hash. */
    mpx_options_t o;
    t_options(&o, NULL);
    char ns[128];
    snprintf(ns, sizeof ns, "%s:inner", o.ns);
    o.ns = ns;
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_register(m, "http://127.0.0.1:7103"), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_connect(m, "x", 1), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0);
    redisContext *c = t_connect(NULL);
    cr_assert_eq(t_int(c, "HLEN %s:sparks", ns), 1);
    cr_assert_eq(mpx_unregister(m), 0);
    cr_assert_eq(count_keys(c, ns), 0);
    mpx_destroy(m);
    redisFree(c);
    free(big);
}

/* ---- keys of the wrong type ---------------------------------------------- */

static mpx_t *make_reg(mpx_options_t *o, t_errors_t *e, const char *addr)
{
    t_with_errors(o, e);
    mpx_t *m = make(o);
    cr_assert_eq(mpx_register(m, addr), 0, "register: %s", mpx_last_error());
    return m;
}

Test(badinput, sparks_hash_as_a_string)
{
    mpx_options_t o;
    t_options(&o, NULL);
    t_errors_t ev;
    const char *addr = "http://127.0.0.1:7201";
    mpx_t *m = make_reg(&o, &ev, addr);
    redisContext *c = t_connect(NULL);
    freeReplyObject(t_cmd(c, "SET %s:sparks planted", o.ns));

    /* Writes fail inside the transaction: reported, kept, retried. */
    cr_assert_eq(mpx_connect(m, "w1", 2), 0);
    cr_assert_eq(mpx_connect(m, "w2", 2), 0);
    uint64_t t0 = t_now_ms();
    int rc = mpx_flush(m, 1000);
    cr_assert_eq(rc, MPX_ETIMEDOUT, "flush: %s", mpx_err_name(rc));
    cr_assert(t_now_ms() - t0 < 3000, "flush honours its timeout");
    WAIT_UNTIL(t_errors_mention(&ev, "WRONGTYPE"), 3000);
    cr_assert(t_errors_mention(&ev, "WRONGTYPE"), "on_error has Redis's text: %s", ev.text);
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_eq(st.local_sparks, 2, "the changes are kept");
    cr_assert_eq(st.committed, 0, "nothing counted as committed");

    /* Lookups of other servers' sparks: a clear error. */
    char buf[64];
    size_t bl = sizeof buf;
    rc = mpx_spark(m, "remote", 6, buf, &bl);
    cr_assert_eq(rc, MPX_EREDIS, "spark: %s", mpx_err_name(rc));
    assert_msg("WRONGTYPE");
    const void *ids[2] = {"w1", "remote"};
    mpx_list_t *l = NULL;
    rc = mpx_sparks(m, ids, NULL, 2, &l);
    cr_assert_eq(rc, MPX_EREDIS, "sparks: %s", mpx_err_name(rc));
    cr_assert_null(l);
    async_result_t ar = {0};
    cr_assert_eq(mpx_sparks_async(m, ids, NULL, 2, async_cb, &ar), 0);
    WAIT_UNTIL(atomic_load(&ar.done), 5000);
    cr_assert(atomic_load(&ar.done));
    cr_assert_eq(ar.err, MPX_EREDIS, "async: %s", mpx_err_name(ar.err));
    cr_assert_null(ar.list);
    /* Own sparks are still answered from memory. */
    bl = sizeof buf;
    cr_assert_eq(mpx_spark(m, "w1", 2, buf, &bl), 0);

    /* Removed: the writer's retry gets through; Redis matches. */
    freeReplyObject(t_cmd(c, "DEL %s:sparks", o.ns));
    cr_assert_eq(mpx_flush(m, 10000), 0, "after the fix: %s", mpx_last_error());
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 2);
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), 2);
    redisReply *r = t_cmd(c, "HGET %s:sparks w2", o.ns);
    cr_assert(r->type == REDIS_REPLY_STRING && strcmp(r->str, addr) == 0);
    freeReplyObject(r);
    bl = sizeof buf;
    cr_assert_eq(mpx_spark(m, "remote", 6, buf, &bl), MPX_ENOTFOUND);
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0, "unregister cleans everything");
    mpx_destroy(m);
    redisFree(c);
}

Test(badinput, servers_set_as_a_hash)
{
    mpx_options_t o;
    t_options(&o, NULL);
    t_errors_t ev;
    t_with_errors(&o, &ev);
    redisContext *c = t_connect(NULL);
    freeReplyObject(t_cmd(c, "HSET %s:servers f v", o.ns));
    const char *addr = "http://127.0.0.1:7202";
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_connect(m, "s1", 2), 0);
    int rc = mpx_register(m, addr);
    cr_assert_eq(rc, MPX_EREDIS, "register: %s", mpx_err_name(rc));
    assert_msg("WRONGTYPE");
    char buf[64];
    size_t bl = sizeof buf;
    cr_assert_eq(mpx_address(m, buf, &bl), MPX_ENOTFOUND, "not registered after EREDIS");
    mpx_list_t *l = NULL;
    rc = mpx_servers(m, 1, &l);
    cr_assert_eq(rc, MPX_EREDIS, "servers: %s", mpx_err_name(rc));
    cr_assert_null(l);
    size_t reaped = 7;
    rc = mpx_reap(m, &reaped);
    cr_assert_eq(rc, MPX_EREDIS, "reap: %s", mpx_err_name(rc));
    cr_assert_eq(reaped, 0);
    cr_assert_eq(mpx_unregister(m), 0, "not registered: no-op");
    cr_assert_eq(t_int(c, "EXISTS %s:%s", o.ns, addr), 0, "no alive key left behind");
    cr_assert_eq(t_int(c, "EXISTS %s:%s:lease", o.ns, addr), 0, "no lease left behind");

    freeReplyObject(t_cmd(c, "DEL %s:servers", o.ns));
    cr_assert_eq(mpx_register(m, addr), 0, "after the fix: %s", mpx_last_error());
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 1, "the spark queued before is written");
    cr_assert_eq(mpx_servers(m, 1, &l), 0);
    cr_assert_eq(l->count, 1);
    cr_assert_str_eq(l->items[0], addr);
    mpx_list_free(l);
    cr_assert_eq(mpx_reap(m, &reaped), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0);
    mpx_destroy(m);
    redisFree(c);
}

Test(badinput, servers_set_turns_into_a_hash_while_registered)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.interval_ms = 3000;
    o.latency_ms = 2700; /* heartbeat every 300 ms */
    o.lease_ms = 900;
    t_errors_t ev;
    const char *addr = "http://127.0.0.1:7203";
    mpx_t *m = make_reg(&o, &ev, addr);
    cr_assert_eq(mpx_connect(m, "s1", 2), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0);
    redisContext *c = t_connect(NULL);
    freeReplyObject(t_cmd(c, "DEL %s:servers", o.ns));
    freeReplyObject(t_cmd(c, "HSET %s:servers f v", o.ns));
    /* The heartbeat fails and says so, repeatedly, without crashing. */
    WAIT_UNTIL(t_errors_mention(&ev, "heartbeat") && t_errors_mention(&ev, "WRONGTYPE"), 3000);
    cr_assert(t_errors_mention(&ev, "WRONGTYPE"), "heartbeat error reported: %s", ev.text);
    /* Meanwhile the alive key expires: nothing else of ours is lost. */
    freeReplyObject(t_cmd(c, "DEL %s:servers", o.ns));
    /* The next heartbeat puts the server back. */
    WAIT_UNTIL(t_int(c, "SISMEMBER %s:servers %s", o.ns, addr) == 1, 3000);
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, addr), 1, "back in the servers set");
    cr_assert_eq(t_int(c, "EXISTS %s:%s", o.ns, addr), 1, "alive key refreshed");
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks s1", o.ns), 1);
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0);
    mpx_destroy(m);
    redisFree(c);
}

Test(badinput, own_spark_set_as_a_string)
{
    mpx_options_t o;
    t_options(&o, NULL);
    t_errors_t ev;
    const char *addr = "http://127.0.0.1:7204";
    mpx_t *m = make_reg(&o, &ev, addr);
    redisContext *c = t_connect(NULL);
    freeReplyObject(t_cmd(c, "SET %s:%s:sparks planted", o.ns, addr));
    cr_assert_eq(mpx_connect(m, "a", 1), 0);
    int rc = mpx_flush(m, 1000);
    cr_assert_eq(rc, MPX_ETIMEDOUT, "flush: %s", mpx_err_name(rc));
    WAIT_UNTIL(t_errors_mention(&ev, "WRONGTYPE"), 3000);
    cr_assert(t_errors_mention(&ev, "writer") && t_errors_mention(&ev, "WRONGTYPE"), "%s", ev.text);
    freeReplyObject(t_cmd(c, "DEL %s:%s:sparks", o.ns, addr));
    cr_assert_eq(mpx_flush(m, 10000), 0, "after the fix: %s", mpx_last_error());
    cr_assert_eq(t_int(c, "SISMEMBER %s:%s:sparks a", o.ns, addr), 1);
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks a", o.ns), 1);
    /* Disconnects go through the script: the same. */
    freeReplyObject(t_cmd(c, "DEL %s:%s:sparks", o.ns, addr));
    freeReplyObject(t_cmd(c, "SET %s:%s:sparks planted", o.ns, addr));
    cr_assert_eq(mpx_disconnect(m, "a", 1), 0);
    cr_assert_eq(mpx_flush(m, 1000), MPX_ETIMEDOUT);
    freeReplyObject(t_cmd(c, "DEL %s:%s:sparks", o.ns, addr));
    cr_assert_eq(mpx_flush(m, 10000), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "HEXISTS %s:sparks a", o.ns), 0);
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0);
    mpx_destroy(m);
    redisFree(c);
}

Test(badinput, a_leftover_spark_set_of_the_wrong_type_at_register)
{
    /* A previous process "left" a string where its spark set should be: it is
     * moved aside like a set, so that this server's own set works, and the
     * drain discards it (it holds no spark ids) with a clear report. */
    mpx_options_t o;
    t_options(&o, NULL);
    t_errors_t ev;
    redisContext *c = t_connect(NULL);
    const char *addr = "http://127.0.0.1:7205";
    freeReplyObject(t_cmd(c, "SET %s:%s:sparks planted", o.ns, addr));
    mpx_t *m = make_reg(&o, &ev, addr);
    cr_assert_eq(mpx_connect(m, "a", 1), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "own writes are not blocked: %s", mpx_last_error());
    cr_assert_eq(t_int(c, "SISMEMBER %s:%s:sparks a", o.ns, addr), 1);
    size_t reaped;
    mpx_reap(m, &reaped); /* the heartbeat may have drained it already */
    WAIT_UNTIL(t_errors_mention(&ev, "discarded"), 3000);
    cr_assert(t_errors_mention(&ev, "WRONGTYPE") && t_errors_mention(&ev, "discarded"), "%s",
              ev.text);
    cr_assert_eq(t_int(c, "EXISTS %s:drains", o.ns), 0, "drain index emptied");
    cr_assert_eq(mpx_reap(m, &reaped), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0, "the planted string is gone too");
    mpx_destroy(m);
    redisFree(c);
}

Test(badinput, drains_index_as_a_string)
{
    mpx_options_t o;
    t_options(&o, NULL);
    t_errors_t ev;
    redisContext *c = t_connect(NULL);
    freeReplyObject(t_cmd(c, "SET %s:drains planted", o.ns));
    const char *addr = "http://127.0.0.1:7206";
    mpx_t *m = make_reg(&o, &ev, addr); /* no leftover set: register does not touch drains */
    cr_assert_eq(mpx_connect(m, "a", 1), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    size_t reaped;
    int rc = mpx_reap(m, &reaped);
    cr_assert_eq(rc, MPX_EREDIS, "reap: %s", mpx_err_name(rc));
    assert_msg("WRONGTYPE");
    /* The heartbeat's reaping reports it too (register kicked it). */
    WAIT_UNTIL(t_errors_mention(&ev, "reaping"), 3000);
    cr_assert(t_errors_mention(&ev, "reaping") && t_errors_mention(&ev, "WRONGTYPE"), "%s",
              ev.text);
    char buf[64];
    size_t bl = sizeof buf;
    cr_assert_eq(mpx_spark(m, "a", 1, buf, &bl), 0, "lookups unaffected");
    freeReplyObject(t_cmd(c, "DEL %s:drains", o.ns));
    cr_assert_eq(mpx_reap(m, &reaped), 0, "after the fix: %s", mpx_last_error());
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0);
    mpx_destroy(m);
    redisFree(c);
}

/* Was a bug: the retire script (keys.c) RENAMEs the server's spark set to the
 * aside key before HSET on NS drains; when NS drains is not a hash the HSET
 * fails after the RENAME (Redis does not roll scripts back), so the aside
 * set is never listed, never drained, and this server's hash fields stay
 * forever naming an unregistered address. The same ordering is in the
 * register script (a leftover set moved aside and orphaned). */
Test(badinput, unregister_with_a_bad_drains_index_orphans_no_spark)
{
    mpx_options_t o;
    t_options(&o, NULL);
    t_errors_t ev;
    const char *addr = "http://127.0.0.1:7207";
    mpx_t *m = make_reg(&o, &ev, addr);
    for (int i = 0; i < 10; i++) {
        char id[8];
        snprintf(id, sizeof id, "s%d", i);
        cr_assert_eq(mpx_connect(m, id, strlen(id)), 0);
    }
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(NULL);
    freeReplyObject(t_cmd(c, "SET %s:drains planted", o.ns));
    int rc = mpx_unregister(m);
    cr_assert_eq(rc, MPX_EREDIS, "a clear error: %s", mpx_err_name(rc));
    freeReplyObject(t_cmd(c, "DEL %s:drains", o.ns));
    /* Whatever remains must be reapable by any server once the key is gone. */
    mpx_options_t o2 = o;
    o2.on_error = NULL;
    mpx_t *other = make(&o2);
    cr_assert_eq(mpx_register(other, "http://127.0.0.1:7208"), 0, "%s", mpx_last_error());
    freeReplyObject(t_cmd(c, "DEL %s:%s %s:%s:lease", o.ns, addr, o.ns, addr));
    size_t reaped;
    cr_assert_eq(mpx_reap(other, &reaped), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 0,
                 "the unregistered server's 10 sparks are cleaned (left: %lld)",
                 t_int(c, "HLEN %s:sparks", o.ns));
    mpx_unregister(other);
    mpx_destroy(other);
    mpx_destroy(m);
    redisFree(c);
}

/* Was a bug: mpx_stats().pending is documented as "sparks whose change is not yet
 * committed", but cache.c decrements it when the writer takes a change into
 * a transaction, not when Redis acknowledges it: while a batch is retried
 * (Redis down, WRONGTYPE) pending reads 0. mpx_destroy uses the same count
 * for its "could not be written" report (see test_resources.c). */
Test(badinput, pending_counts_changes_being_retried)
{
    mpx_options_t o;
    t_options(&o, NULL);
    t_errors_t ev;
    const char *addr = "http://127.0.0.1:7209";
    mpx_t *m = make_reg(&o, &ev, addr);
    redisContext *c = t_connect(NULL);
    freeReplyObject(t_cmd(c, "SET %s:sparks planted", o.ns));
    cr_assert_eq(mpx_connect(m, "w1", 2), 0);
    cr_assert_eq(mpx_connect(m, "w2", 2), 0);
    cr_assert_eq(mpx_flush(m, 500), MPX_ETIMEDOUT);
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_eq(st.committed, 0);
    cr_assert_eq(st.pending, 2, "2 changes are not committed, pending says %llu",
                 (unsigned long long)st.pending);
    freeReplyObject(t_cmd(c, "DEL %s:sparks", o.ns));
    mpx_unregister(m);
    mpx_destroy(m);
    redisFree(c);
}

/* ---- a second process and a live holder ------------------------------------ */

Test(badinput, a_second_process_cannot_take_a_live_address)
{
    mpx_options_t o;
    t_options(&o, NULL);
    o.lease_ms = 600;
    o.interval_ms = 20000;
    const char *addr = "http://127.0.0.1:7301";
    int go[2], res[2];
    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(res), 0);
    /* Fork before this process starts any library thread. */
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        close(go[1]);
        close(res[0]);
        char b;
        if (read(go[0], &b, 1) != 1)
            _exit(10);
        mpx_t *m;
        if (mpx_create(&o, &m))
            _exit(11);
        int code = 0;
        /* 1. mpx_register: EADDRINUSE, several times over several leases. */
        for (int i = 0; i < 4 && !code; i++) {
            int rc = mpx_register(m, addr);
            if (rc != MPX_EADDRINUSE || !strstr(mpx_last_error(), "lease"))
                code = 20 + i;
            t_sleep_ms(300);
        }
        /* Connects while refused stay local; unregister is a no-op. */
        if (!code && (mpx_connect(m, "held", 4) || mpx_unregister(m)))
            code = 30;
        char buf[64];
        size_t bl = sizeof buf;
        if (!code && mpx_address(m, buf, &bl) != MPX_ENOTFOUND)
            code = 31;
        mpx_destroy(m);
        /* 2. Background registration (options.address): keeps failing. */
        mpx_options_t o2 = o;
        o2.address = addr;
        if (!code && mpx_create(&o2, &m) == 0) {
            t_sleep_ms(1500);
            mpx_destroy(m);
        }
        if (write(res[1], &code, sizeof code) != sizeof code)
            _exit(12);
        _exit(code);
    }
    close(go[0]);
    close(res[1]);
    mpx_t *m = make(&o);
    cr_assert_eq(mpx_register(m, addr), 0, "%s", mpx_last_error());
    cr_assert_eq(mpx_connect(m, "held", 4), 0);
    cr_assert_eq(mpx_connect(m, "held2", 5), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    redisContext *c = t_connect(NULL);
    redisReply *r = t_cmd(c, "GET %s:%s:lease", o.ns, addr);
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    char holder[64];
    snprintf(holder, sizeof holder, "%s", r->str);
    freeReplyObject(r);

    cr_assert_eq(write(go[1], "g", 1), 1);
    int status, code = -1;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert_eq(read(res[0], &code, sizeof code), (ssize_t)sizeof code, "child reported");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child step failed: code %d", code);

    /* The live holder lost nothing. */
    r = t_cmd(c, "GET %s:%s:lease", o.ns, addr);
    cr_assert(r->type == REDIS_REPLY_STRING && strcmp(r->str, holder) == 0, "lease still ours");
    freeReplyObject(r);
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), 2, "set intact");
    cr_assert_eq(t_int(c, "HLEN %s:sparks", o.ns), 2, "hash intact");
    r = t_cmd(c, "HGET %s:sparks held", o.ns);
    cr_assert(r->type == REDIS_REPLY_STRING && strcmp(r->str, addr) == 0);
    freeReplyObject(r);
    cr_assert_eq(t_int(c, "HLEN %s:drains", o.ns), 0, "nothing moved aside");
    cr_assert_eq(t_int(c, "SISMEMBER %s:servers %s", o.ns, addr), 1);
    char buf[64];
    size_t bl = sizeof buf;
    cr_assert_eq(mpx_address(m, buf, &bl), 0);
    mpx_stats_t st;
    mpx_stats(m, &st);
    cr_assert_eq(st.local_sparks, 2);
    /* And it still writes. */
    cr_assert_eq(mpx_connect(m, "held3", 5), 0);
    cr_assert_eq(mpx_flush(m, 5000), 0, "%s", mpx_last_error());
    cr_assert_eq(t_int(c, "SCARD %s:%s:sparks", o.ns, addr), 3);
    cr_assert_eq(mpx_unregister(m), 0, "%s", mpx_last_error());
    cr_assert_eq(count_keys(c, o.ns), 0);
    mpx_destroy(m);
    redisFree(c);
    close(go[1]);
    close(res[0]);
}
