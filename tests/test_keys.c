/*
 * test_keys.c - key names, argument vectors, script commands and the
 * growable buffer (src/keys.c). Pure functions: no Redis.
 *
 * The key names are the compatibility contract with the Node.js original
 * (docs/keyspace.md): "NS sparks", "NS servers", "NS <address>",
 * "NS <address>:sparks"; plus our extensions "NS drains",
 * "NS <address>:lease" and "NS <address>:sparks:draining:<token>".
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SHA "0123456789abcdef0123456789abcdef01234567"
#define ADDR "http://h:1"

/* ---- helpers ------------------------------------------------------------------- */

typedef struct arg {
    const char *p;
    size_t n;
} arg_t;

#define S(s) {(s), sizeof(s) - 1}

/* argv (after finish) must be exactly `want`. */
static void expect_argv(const mpx__argv_t *a, const arg_t *want, size_t n, const char *what)
{
    cr_assert_eq(a->argc, n, "%s: argc %zu, expected %zu", what, a->argc, n);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(a->lens[i], want[i].n, "%s: arg %zu length %zu, expected %zu ('%.*s')", what,
                     i, a->lens[i], want[i].n, (int)want[i].n, want[i].p);
        cr_assert(memcmp(a->argv[i], want[i].p, want[i].n) == 0,
                  "%s: arg %zu is '%.*s', expected '%.*s'", what, i, (int)a->lens[i],
                  a->argv[i], (int)want[i].n, want[i].p);
    }
}

/* One built key, as a NUL-terminated string (the argv must hold one arg). */
static void expect_one_key(int rc, mpx__argv_t *a, const char *want, const char *what)
{
    cr_assert_eq(rc, 0, "%s: rc %d", what, rc);
    mpx__argv_finish(a);
    arg_t w = {want, strlen(want)};
    expect_argv(a, &w, 1, what);
    cr_assert_eq(a->argv[0][a->lens[0]], '\0', "%s: owned key is NUL-terminated", what);
}

/* Largest N in "<tag>[N]" inside a script source. */
static int max_index(const char *src, const char *tag)
{
    int best = 0;
    size_t tl = strlen(tag);
    for (const char *p = strstr(src, tag); p; p = strstr(p + 1, tag)) {
        if (p[tl] != '[')
            continue;
        int v = atoi(p + tl + 1);
        if (v > best)
            best = v;
    }
    return best;
}

/* EVALSHA shape: numkeys matches the keys that follow and the script's use
 * of KEYS / ARGV. Returns numkeys. */
static int check_evalsha_shape(const mpx__argv_t *a, int script, const char *what)
{
    cr_assert_geq(a->argc, 3, "%s", what);
    cr_assert(a->lens[0] == 7 && memcmp(a->argv[0], "EVALSHA", 7) == 0, "%s", what);
    cr_assert_eq(a->lens[1], 40, "%s: sha length", what);
    char nk[16];
    cr_assert_lt(a->lens[2], sizeof nk);
    memcpy(nk, a->argv[2], a->lens[2]);
    nk[a->lens[2]] = 0;
    int numkeys = atoi(nk);
    cr_assert_geq(a->argc, 3 + (size_t)numkeys, "%s: fewer args than numkeys", what);
    const char *src = mpx__script_source(script);
    cr_assert_not_null(src);
    cr_assert_eq(max_index(src, "KEYS"), numkeys,
                 "%s: numkeys %d but the %s script uses KEYS[%d]", what, numkeys,
                 mpx__script_name(script), max_index(src, "KEYS"));
    int nargs = (int)a->argc - 3 - numkeys;
    cr_assert_eq(max_index(src, "ARGV"), nargs,
                 "%s: %d ARGV but the %s script uses ARGV[%d]", what, nargs,
                 mpx__script_name(script), max_index(src, "ARGV"));
    return numkeys;
}

static mpx__keys_t keys_for(const char *ns)
{
    mpx__keys_t k;
    cr_assert_eq(mpx__keys_init(&k, ns), 0);
    return k;
}

/* ---- key names ------------------------------------------------------------------ */

Test(keys, init_names)
{
    mpx__keys_t k = keys_for("ns");
    cr_assert_str_eq(k.ns, "ns:");
    cr_assert_eq(k.ns_len, 3);
    cr_assert_str_eq(k.sparks, "ns:sparks");
    cr_assert_eq(k.sparks_len, 9);
    cr_assert_str_eq(k.servers, "ns:servers");
    cr_assert_eq(k.servers_len, 10);
    cr_assert_str_eq(k.drains, "ns:drains");
    cr_assert_eq(k.drains_len, 9);
    mpx__keys_free(&k);
    cr_assert_null(k.ns);
    cr_assert_null(k.sparks);
    cr_assert_eq(k.sparks_len, 0);

    k = keys_for("metroplex");
    cr_assert_str_eq(k.ns, "metroplex:");
    cr_assert_str_eq(k.sparks, "metroplex:sparks");
    cr_assert_str_eq(k.servers, "metroplex:servers");
    cr_assert_str_eq(k.drains, "metroplex:drains");
    mpx__keys_free(&k);
}

Test(keys, per_server_names)
{
    mpx__keys_t k = keys_for("metroplex");
    mpx__argv_t a;
    mpx__argv_init(&a);

    expect_one_key(mpx__key_alive(&k, ADDR, &a), &a, "metroplex:http://h:1", "alive");
    mpx__argv_reset(&a);
    expect_one_key(mpx__key_set(&k, ADDR, &a), &a, "metroplex:http://h:1:sparks", "set");
    mpx__argv_reset(&a);
    expect_one_key(mpx__key_lease(&k, ADDR, &a), &a, "metroplex:http://h:1:lease", "lease");
    mpx__argv_reset(&a);
    expect_one_key(mpx__key_aside(&k, ADDR, "TOKEN", &a), &a,
                   "metroplex:http://h:1:sparks:draining:TOKEN", "aside");
    mpx__argv_reset(&a);
    expect_one_key(mpx__key_alive(&k, "https://[::1]:443", &a), &a,
                   "metroplex:https://[::1]:443", "alive ipv6");
    mpx__argv_reset(&a);

    /* all four at once in one vector */
    cr_assert_eq(mpx__key_alive(&k, ADDR, &a), 0);
    cr_assert_eq(mpx__key_set(&k, ADDR, &a), 0);
    cr_assert_eq(mpx__key_lease(&k, ADDR, &a), 0);
    cr_assert_eq(mpx__key_aside(&k, ADDR, "t-9", &a), 0);
    mpx__argv_finish(&a);
    const arg_t want[] = {S("metroplex:http://h:1"), S("metroplex:http://h:1:sparks"),
                          S("metroplex:http://h:1:lease"),
                          S("metroplex:http://h:1:sparks:draining:t-9")};
    expect_argv(&a, want, 4, "four keys");

    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

Test(keys, longest_namespace_and_address_fit)
{
    char ns[MPX_NAMESPACE_MAX + 1], addr[MPX_ADDRESS_MAX + 1], token[64];
    memset(ns, 'n', MPX_NAMESPACE_MAX);
    ns[MPX_NAMESPACE_MAX] = 0;
    snprintf(addr, sizeof addr, "http://%0*d:80", MPX_ADDRESS_MAX - 10, 0);
    cr_assert_eq(strlen(addr), MPX_ADDRESS_MAX);
    memset(token, 't', 63); /* the longest mpx__token() writes */
    token[63] = 0;
    mpx__keys_t k = keys_for(ns);
    mpx__argv_t a;
    mpx__argv_init(&a);
    cr_assert_eq(mpx__key_set(&k, addr, &a), 0);
    cr_assert_eq(mpx__key_lease(&k, addr, &a), 0);
    cr_assert_eq(mpx__key_aside(&k, addr, token, &a), 0);
    mpx__argv_finish(&a);
    cr_assert_eq(a.argc, 3);
    cr_assert_eq(a.lens[2], MPX_NAMESPACE_MAX + 1 + MPX_ADDRESS_MAX + strlen(":sparks:draining:") + 63);
    cr_assert(memcmp(a.argv[2] + MPX_NAMESPACE_MAX + 1 + MPX_ADDRESS_MAX, ":sparks:draining:t",
                     18) == 0);
    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

Test(keys, overlong_token_is_rejected)
{
    mpx__keys_t k = keys_for("metroplex");
    mpx__argv_t a;
    mpx__argv_init(&a);
    char token[200];
    memset(token, 'x', sizeof token - 1);
    token[sizeof token - 1] = 0;
    cr_assert_eq(mpx__key_aside(&k, ADDR, token, &a), MPX_ETOOBIG);
    cr_assert_eq(a.argc, 0, "nothing pushed on error");
    /* commands that embed the aside key fail too */
    int rc = mpx__cmd_register(&k, SHA, ADDR, 300000, 1, "i", 10000, token, &a);
    cr_assert_neq(rc, 0, "register with an overlong token must fail");
    mpx__argv_reset(&a);
    rc = mpx__cmd_retire(&k, SHA, ADDR, "i", token, 0, &a);
    cr_assert_neq(rc, 0, "retire with an overlong token must fail");
    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

/* ---- argument vectors ----------------------------------------------------------------- */

Test(argv, push_borrows_and_keeps_binary)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    cr_assert_eq(a.argc, 0);
    static const char bin[] = {'a', 0, 'b', 0, 0, 'c'};
    cr_assert_eq(mpx__argv_push(&a, bin, sizeof bin), 0);
    cr_assert_eq(mpx__argv_push(&a, "HGET", 4), 0);
    cr_assert_eq(mpx__argv_push(&a, "", 0), 0);
    mpx__argv_finish(&a);
    cr_assert_eq(a.argc, 3);
    cr_assert_eq(a.argv[0], bin, "push borrows the caller's pointer");
    cr_assert_eq(a.lens[0], 6);
    cr_assert_eq(a.lens[1], 4);
    cr_assert_eq(a.lens[2], 0);
    cr_assert_eq(a.nowned, 0);
    mpx__argv_free(&a);
    cr_assert_null(a.argv);
    cr_assert_eq(a.argc, 0);
    mpx__argv_free(&a); /* twice is fine after free zeroes it */
}

Test(argv, pushf_and_pushcat_copy)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    char src1[] = {'x', 0, 'y'};
    char src2[] = {0, 'z'};
    cr_assert_eq(mpx__argv_pushf(&a, "%d-%s-%llu", 42, "q", 18446744073709551615ULL), 0);
    cr_assert_eq(mpx__argv_pushcat(&a, src1, sizeof src1, src2, sizeof src2), 0);
    cr_assert_eq(mpx__argv_pushcat(&a, "", 0, "only", 4), 0);
    cr_assert_eq(mpx__argv_pushcat(&a, "pre", 3, "", 0), 0);
    /* the sources may change or vanish: copies were taken */
    memset(src1, '#', sizeof src1);
    memset(src2, '#', sizeof src2);
    mpx__argv_finish(&a);
    const arg_t want[] = {
        S("42-q-18446744073709551615"),
        {"x\0y\0z", 5},
        S("only"),
        S("pre"),
    };
    expect_argv(&a, want, 4, "owned");
    for (size_t i = 0; i < a.argc; i++)
        cr_assert_eq(a.argv[i][a.lens[i]], '\0', "owned arg %zu is NUL-terminated", i);
    /* finish is idempotent */
    mpx__argv_finish(&a);
    expect_argv(&a, want, 4, "owned, finished twice");

    /* pushf is limited to 127 bytes */
    mpx__argv_reset(&a);
    char longs[200];
    memset(longs, 'L', sizeof longs - 1);
    longs[sizeof longs - 1] = 0;
    cr_assert_neq(mpx__argv_pushf(&a, "%s", longs), 0);
    cr_assert_eq(a.argc, 0);
    cr_assert_eq(mpx__argv_pushf(&a, "%.127s", longs), 0);
    mpx__argv_finish(&a);
    cr_assert_eq(a.lens[0], 127);
    mpx__argv_free(&a);
}

Test(argv, thousand_owned_strings_survive_store_growth)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    enum { N = 1000 };
    static const char borrowed[] = "borrowed\0value";
    for (size_t i = 0; i < N; i++) {
        int rc;
        switch (i % 3) {
        case 0:
            rc = mpx__argv_pushf(&a, "item-%zu", i);
            break;
        case 1: {
            char part[32];
            int n = snprintf(part, sizeof part, "%zu", i);
            rc = mpx__argv_pushcat(&a, "bin\0cat-", 8, part, (size_t)n);
            break;
        }
        default:
            rc = mpx__argv_push(&a, borrowed, sizeof borrowed - 1);
            break;
        }
        cr_assert_eq(rc, 0, "push %zu", i);
    }
    cr_assert_gt(a.store.cap, 256, "the store must have been reallocated");
    cr_assert_geq(a.cap, N);
    mpx__argv_finish(&a);
    cr_assert_eq(a.argc, N);
    for (size_t i = 0; i < N; i++) {
        char want[64];
        size_t wn;
        switch (i % 3) {
        case 0:
            wn = (size_t)snprintf(want, sizeof want, "item-%zu", i);
            break;
        case 1:
            memcpy(want, "bin\0cat-", 8);
            wn = 8 + (size_t)snprintf(want + 8, sizeof want - 8, "%zu", i);
            break;
        default:
            memcpy(want, borrowed, sizeof borrowed - 1);
            wn = sizeof borrowed - 1;
            cr_assert_eq(a.argv[i], borrowed, "borrowed arg %zu keeps its pointer", i);
            break;
        }
        cr_assert_eq(a.lens[i], wn, "arg %zu length %zu, expected %zu", i, a.lens[i], wn);
        cr_assert(memcmp(a.argv[i], want, wn) == 0, "arg %zu is '%.*s'", i, (int)a.lens[i],
                  a.argv[i]);
        if (i % 3 != 2) {
            cr_assert_eq(a.argv[i][wn], '\0', "arg %zu NUL-terminated", i);
            cr_assert(a.argv[i] >= a.store.data && a.argv[i] < a.store.data + a.store.len,
                      "owned arg %zu points into the store", i);
        }
    }
    mpx__argv_free(&a);
}

Test(argv, reset_reuses_the_vector)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (int round = 0; round < 3; round++) {
        mpx__argv_reset(&a);
        cr_assert_eq(a.argc, 0);
        cr_assert_eq(a.store.len, 0);
        cr_assert_eq(a.nowned, 0);
        for (int i = 0; i < 40; i++)
            cr_assert_eq(mpx__argv_pushf(&a, "r%d-%d", round, i), 0);
        mpx__argv_finish(&a);
        cr_assert_eq(a.argc, 40);
        for (int i = 0; i < 40; i++) {
            char want[32];
            snprintf(want, sizeof want, "r%d-%d", round, i);
            cr_assert_str_eq(a.argv[i], want);
        }
    }
    mpx__argv_free(&a);
}

/* ---- commands ------------------------------------------------------------------------------ */

Test(cmd, register_exact_argv)
{
    mpx__keys_t k = keys_for("metroplex");
    mpx__argv_t a;
    mpx__argv_init(&a);
    int rc = mpx__cmd_register(&k, SHA, ADDR, 300000, 1700000000123ULL, "inst-1", 10000,
                               "TOKEN", &a);
    cr_assert_eq(rc, 0);
    mpx__argv_finish(&a);
    const arg_t want[] = {
        S("EVALSHA"),
        S(SHA),
        S("6"),
        S("metroplex:servers"),
        S("metroplex:http://h:1"),
        S("metroplex:http://h:1:sparks"),
        S("metroplex:http://h:1:lease"),
        S("metroplex:drains"),
        S("metroplex:http://h:1:sparks:draining:TOKEN"),
        S("http://h:1"),
        S("300000"),
        S("1700000000123"),
        S("inst-1"),
        S("10000"),
    };
    expect_argv(&a, want, sizeof want / sizeof want[0], "register");
    cr_assert_eq(check_evalsha_shape(&a, MPX__SCRIPT_REGISTER, "register"), 6);
    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

Test(cmd, heartbeat_exact_argv)
{
    mpx__keys_t k = keys_for("ns");
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (int alive = 0; alive <= 1; alive++) {
        mpx__argv_reset(&a);
        int rc = mpx__cmd_heartbeat(&k, SHA, ADDR, 4294967295u, 18446744073709551615ULL, "I",
                                    300, alive, &a);
        cr_assert_eq(rc, 0);
        mpx__argv_finish(&a);
        const arg_t want[] = {
            S("EVALSHA"),
            S(SHA),
            S("3"),
            S("ns:servers"),
            S("ns:http://h:1"),
            S("ns:http://h:1:lease"),
            S("http://h:1"),
            S("4294967295"),
            S("18446744073709551615"),
            S("I"),
            S("300"),
            {alive ? "1" : "0", 1},
        };
        expect_argv(&a, want, sizeof want / sizeof want[0], alive ? "heartbeat 1" : "heartbeat 0");
        cr_assert_eq(check_evalsha_shape(&a, MPX__SCRIPT_HEARTBEAT, "heartbeat"), 3);
    }
    /* any non-zero `alive` is "1" */
    mpx__argv_reset(&a);
    cr_assert_eq(mpx__cmd_heartbeat(&k, SHA, ADDR, 1, 2, "I", 3, 7, &a), 0);
    mpx__argv_finish(&a);
    cr_assert(a.lens[11] == 1 && a.argv[11][0] == '1');
    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

Test(cmd, retire_exact_argv)
{
    mpx__keys_t k = keys_for("metroplex");
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (int force = 0; force <= 1; force++) {
        mpx__argv_reset(&a);
        int rc = mpx__cmd_retire(&k, SHA, "https://[::1]:443", "inst", "abc-7", force, &a);
        cr_assert_eq(rc, 0);
        mpx__argv_finish(&a);
        const arg_t want[] = {
            S("EVALSHA"),
            S(SHA),
            S("6"),
            S("metroplex:servers"),
            S("metroplex:https://[::1]:443"),
            S("metroplex:https://[::1]:443:sparks"),
            S("metroplex:https://[::1]:443:lease"),
            S("metroplex:drains"),
            S("metroplex:https://[::1]:443:sparks:draining:abc-7"),
            S("https://[::1]:443"),
            S("inst"),
            {force ? "1" : "0", 1},
        };
        expect_argv(&a, want, sizeof want / sizeof want[0], force ? "retire force" : "retire");
        cr_assert_eq(check_evalsha_shape(&a, MPX__SCRIPT_RETIRE, "retire"), 6);
    }
    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

Test(cmd, drain_exact_argv)
{
    mpx__keys_t k = keys_for("metroplex");
    mpx__argv_t a;
    mpx__argv_init(&a);
    /* aside_len is honoured: only the first part of the buffer is the key */
    const char aside[] = "metroplex:http://h:1:sparks:draining:T-1<junk>";
    size_t aside_len = strlen("metroplex:http://h:1:sparks:draining:T-1");
    int rc = mpx__cmd_drain(&k, SHA, aside, aside_len, ADDR, 1000, &a);
    cr_assert_eq(rc, 0);
    mpx__argv_finish(&a);
    const arg_t want[] = {
        S("EVALSHA"),
        S(SHA),
        S("4"),
        S("metroplex:http://h:1:sparks:draining:T-1"),
        S("metroplex:sparks"),
        S("metroplex:http://h:1:sparks"),
        S("metroplex:drains"),
        S("http://h:1"),
        S("1000"),
    };
    expect_argv(&a, want, sizeof want / sizeof want[0], "drain");
    cr_assert_eq(check_evalsha_shape(&a, MPX__SCRIPT_DRAIN, "drain"), 4);
    cr_assert_eq(a.argv[3], aside, "the aside key is borrowed");
    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

Test(cmd, commands_append_after_existing_args)
{
    mpx__keys_t k = keys_for("n");
    mpx__argv_t a;
    mpx__argv_init(&a);
    cr_assert_eq(mpx__argv_pushf(&a, "%s", "PRE"), 0);
    cr_assert_eq(mpx__cmd_drain(&k, SHA, "n:x", 3, ADDR, 5, &a), 0);
    cr_assert_eq(mpx__cmd_retire(&k, SHA, ADDR, "i", "t", 1, &a), 0);
    mpx__argv_finish(&a);
    cr_assert_eq(a.argc, 1 + 9 + 12);
    cr_assert_str_eq(a.argv[0], "PRE");
    cr_assert_str_eq(a.argv[1], "EVALSHA");
    cr_assert_str_eq(a.argv[6], "n:http://h:1:sparks");
    cr_assert_str_eq(a.argv[9], "5");
    cr_assert_str_eq(a.argv[10], "EVALSHA");
    cr_assert_str_eq(a.argv[a.argc - 4], "n:http://h:1:sparks:draining:t");
    cr_assert_str_eq(a.argv[a.argc - 1], "1");
    mpx__argv_free(&a);
    mpx__keys_free(&k);
}

/* ---- scripts --------------------------------------------------------------------------------- */

Test(scripts, sources_and_names)
{
    const char *names[MPX__SCRIPT_COUNT] = {
        [MPX__SCRIPT_REGISTER] = "register", [MPX__SCRIPT_HEARTBEAT] = "heartbeat",
        [MPX__SCRIPT_RETIRE] = "retire",     [MPX__SCRIPT_DRAIN] = "drain",
        [MPX__SCRIPT_DISCONNECT] = "disconnect",
        [MPX__SCRIPT_S_REGISTER] = "sharded register",
        [MPX__SCRIPT_S_HEARTBEAT] = "sharded heartbeat",
        [MPX__SCRIPT_S_RETIRE] = "sharded retire",
        [MPX__SCRIPT_S_DRAIN] = "sharded drain",
        [MPX__SCRIPT_S_WRITE] = "sharded write",
    };
    for (int i = 0; i < MPX__SCRIPT_COUNT; i++) {
        const char *src = mpx__script_source(i);
        cr_assert_not_null(src, "script %d", i);
        cr_assert(strstr(src, "redis.call(") != NULL, "script %d looks like Lua", i);
        cr_assert(strstr(src, "return") != NULL, "script %d returns", i);
        cr_assert_str_eq(mpx__script_name(i), names[i]);
        for (int j = 0; j < i; j++)
            cr_assert_neq(src, mpx__script_source(j), "scripts %d and %d differ", i, j);
    }
    cr_assert_null(mpx__script_source(-1));
    cr_assert_null(mpx__script_source(MPX__SCRIPT_COUNT));
    cr_assert_null(mpx__script_source(1000));
    cr_assert_str_eq(mpx__script_name(-1), "?");
    cr_assert_str_eq(mpx__script_name(MPX__SCRIPT_COUNT), "?");

    /* the disconnect script is built in writer.c: KEYS sparks set (2 keys) */
    cr_assert_eq(max_index(mpx__script_source(MPX__SCRIPT_DISCONNECT), "KEYS"), 2);
}

/* ---- growable buffer ------------------------------------------------------------------------ */

Test(buf, basics)
{
    mpx__buf_t b = {0};
    cr_assert_eq(mpx__buf_reserve(&b, 0), 0);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(mpx__buf_reserve(&b, 10), 0);
    cr_assert_eq(b.cap, 256, "first allocation is 256 bytes");
    cr_assert_not_null(b.data);
    cr_assert_eq(mpx__buf_reserve(&b, 1000), 0);
    cr_assert_geq(b.cap, 1000);
    cr_assert_eq(b.len, 0, "reserve does not change len");

    cr_assert_eq(mpx__buf_append(&b, "abc", 3), 0);
    cr_assert_eq(b.len, 3);
    cr_assert_str_eq(b.data, "abc", "append keeps the data NUL-terminated");
    cr_assert_eq(mpx__buf_append(&b, "\0d\0", 3), 0);
    cr_assert_eq(b.len, 6);
    cr_assert(memcmp(b.data, "abc\0d\0", 7) == 0, "binary bytes kept, then a NUL");
    cr_assert_eq(mpx__buf_append(&b, "", 0), 0);
    cr_assert_eq(b.len, 6);

    /* growth keeps earlier content */
    char chunk[1000];
    for (int i = 0; i < 50; i++) {
        memset(chunk, 'A' + i % 26, sizeof chunk);
        cr_assert_eq(mpx__buf_append(&b, chunk, sizeof chunk), 0);
    }
    cr_assert_eq(b.len, 6 + 50 * 1000);
    cr_assert_gt(b.cap, b.len);
    cr_assert(memcmp(b.data, "abc\0d\0", 6) == 0);
    for (int i = 0; i < 50; i++)
        cr_assert_eq(b.data[6 + i * 1000 + 999], 'A' + i % 26, "chunk %d", i);
    cr_assert_eq(b.data[b.len], '\0');

    mpx__buf_free(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    mpx__buf_free(&b); /* again: fine */
}
