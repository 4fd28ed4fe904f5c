/*
 * test_options.c - option defaults and validation, Redis URL and address
 * parsing, argument checks of the public calls, error codes. No Redis.
 *
 * Handles created here point at a closed port (redis://127.0.0.1:1) with
 * short timeouts: mpx_create never talks to Redis, and every call tested
 * here must fail (or succeed) before doing any I/O. Parser inputs are placed
 * right before a PROT_NONE page (guarded()), so an over-read crashes at once
 * even without ASan.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define CLOSED_URL "redis://127.0.0.1:1"

/* ---- helpers ---------------------------------------------------------------- */

/* A copy of `s` (with its NUL) ending right before an inaccessible page.
 * Freed at exit of the test process (each Criterion test is its own process). */
static const char *guarded(const char *s)
{
    size_t n = strlen(s) + 1;
    long pg = sysconf(_SC_PAGESIZE);
    size_t span = ((n + (size_t)pg - 1) / (size_t)pg) * (size_t)pg;
    char *base = mmap(NULL, span + (size_t)pg, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(base, MAP_FAILED, "mmap failed");
    cr_assert_eq(mprotect(base + span, (size_t)pg, PROT_NONE), 0, "mprotect failed");
    char *p = base + span - n;
    memcpy(p, s, n);
    return p;
}

/* Valid options that never reach a live Redis. */
static void base_options(mpx_options_t *o)
{
    mpx_options_init(o);
    o->redis_url = CLOSED_URL;
    o->connect_timeout_ms = 100;
    o->command_timeout_ms = 100;
}

static bool contains(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

/* mpx_create(o) must fail with `code`, leave *out NULL, and say `needle`. */
static void expect_create_fails(const mpx_options_t *o, int code, const char *needle,
                                const char *what)
{
    mpx_t *m = (mpx_t *)(uintptr_t)0x1;
    int rc = mpx_create(o, &m);
    if (rc == 0)
        mpx_destroy(m);
    cr_assert_eq(rc, code, "%s: mpx_create returned %d (%s), expected %d (%s); message '%s'",
                 what, rc, mpx_err_name(rc), code, mpx_err_name(code), mpx_last_error());
    cr_assert_null(m, "%s: *out must be NULL on error", what);
    cr_assert(contains(mpx_last_error(), needle),
              "%s: message '%s' should contain '%s'", what, mpx_last_error(), needle);
}

static mpx_t *create_ok(const mpx_options_t *o)
{
    mpx_t *m = NULL;
    int rc = mpx_create(o, &m);
    cr_assert_eq(rc, 0, "mpx_create failed: %d (%s) '%s'", rc, mpx_err_name(rc),
                 mpx_last_error());
    cr_assert_not_null(m);
    cr_assert_str_eq(mpx_last_error(), "", "a successful create leaves no message");
    return m;
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    cr_assert_not_null(s);
    memset(s, c, n);
    s[n] = 0;
    return s;
}

/* ---- defaults ------------------------------------------------------------------- */

Test(options, init_matches_macro_and_documented_defaults)
{
    mpx_options_t o;
    memset(&o, 0xA5, sizeof o);
    mpx_options_init(&o);
    mpx_options_t d = MPX_OPTIONS_INIT;

    cr_assert_eq(o.struct_size, sizeof(mpx_options_t));
    cr_assert_eq(d.struct_size, sizeof(mpx_options_t));
    cr_assert_null(o.redis_url);
    cr_assert_eq(o.connect_timeout_ms, 2000);
    cr_assert_eq(o.command_timeout_ms, 5000);
    cr_assert_null(o.ns);
    cr_assert_null(o.address);
    cr_assert_eq(o.interval_ms, 300000);
    cr_assert_eq(o.latency_ms, 2000);
    cr_assert_eq(o.lease_ms, 10000);
    cr_assert_eq(o.reap_chunk, 1000);
    cr_assert_eq(o.batch_max, 4096);
    cr_assert_eq(o.batch_delay_ms, 2);
    cr_assert_eq(o.size_hint, 0);
    cr_assert_null(o.on_register);
    cr_assert_null(o.on_register_data);
    cr_assert_null(o.on_unregister);
    cr_assert_null(o.on_unregister_data);
    cr_assert_null(o.on_error);
    cr_assert_null(o.on_error_data);

    /* Field by field, the macro and the function agree. */
    cr_assert_eq(d.redis_url, o.redis_url);
    cr_assert_eq(d.connect_timeout_ms, o.connect_timeout_ms);
    cr_assert_eq(d.command_timeout_ms, o.command_timeout_ms);
    cr_assert_eq(d.ns, o.ns);
    cr_assert_eq(d.address, o.address);
    cr_assert_eq(d.interval_ms, o.interval_ms);
    cr_assert_eq(d.latency_ms, o.latency_ms);
    cr_assert_eq(d.lease_ms, o.lease_ms);
    cr_assert_eq(d.reap_chunk, o.reap_chunk);
    cr_assert_eq(d.batch_max, o.batch_max);
    cr_assert_eq(d.batch_delay_ms, o.batch_delay_ms);
    cr_assert_eq(d.size_hint, o.size_hint);
    cr_assert_eq((void *)d.on_register, (void *)o.on_register);
    cr_assert_eq(d.on_register_data, o.on_register_data);
    cr_assert_eq((void *)d.on_unregister, (void *)o.on_unregister);
    cr_assert_eq(d.on_unregister_data, o.on_unregister_data);
    cr_assert_eq((void *)d.on_error, (void *)o.on_error);
    cr_assert_eq(d.on_error_data, o.on_error_data);

    mpx_options_init(NULL); /* accepted, no crash */
}

Test(options, defaults_validate_and_fill_strings)
{
    mpx_options_t in = MPX_OPTIONS_INIT, out;
    memset(&out, 0, sizeof out);
    cr_assert_eq(mpx__check_options(&in, &out), 0, "%s", mpx_last_error());
    cr_assert_eq(out.struct_size, sizeof out);
    cr_assert_str_eq(out.redis_url, "redis://127.0.0.1:6379");
    cr_assert_str_eq(out.ns, "metroplex");
    cr_assert_eq(out.interval_ms, 300000);
    cr_assert_eq(out.latency_ms, 2000);
    cr_assert_eq(out.lease_ms, 10000);
}

static void dummy_err(mpx_t *m, int err, const char *msg, void *data)
{
    (void)m, (void)err, (void)msg, (void)data;
}

Test(options, older_struct_size_takes_defaults_for_missing_fields)
{
    /* A caller compiled against a version that ended before size_hint. */
    mpx_options_t in;
    base_options(&in);
    in.struct_size = offsetof(mpx_options_t, size_hint);
    in.interval_ms = 20000;
    in.size_hint = 777;          /* beyond struct_size: must be ignored */
    in.on_error = dummy_err;     /* likewise */
    mpx_options_t out;
    cr_assert_eq(mpx__check_options(&in, &out), 0, "%s", mpx_last_error());
    cr_assert_eq(out.struct_size, sizeof out);
    cr_assert_eq(out.interval_ms, 20000);
    cr_assert_eq(out.size_hint, 0);
    cr_assert_null(out.on_error);
    cr_assert_str_eq(out.redis_url, CLOSED_URL);
}

/* ---- mpx_create rejections ----------------------------------------------------------- */

Test(create, rejects_null_options_and_null_out)
{
    expect_create_fails(NULL, MPX_EINVAL, "options", "NULL options");

    mpx_options_t o;
    base_options(&o);
    int rc = mpx_create(&o, NULL);
    cr_assert_eq(rc, MPX_EINVAL, "NULL out: %d %s", rc, mpx_last_error());
    cr_assert(contains(mpx_last_error(), "out"), "message '%s'", mpx_last_error());
}

Test(create, rejects_bad_struct_size)
{
    const size_t bad[] = {0, 1, sizeof(size_t), offsetof(mpx_options_t, size_hint) - 1,
                          (1u << 20) + 1, (size_t)-1};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mpx_options_t o;
        base_options(&o);
        o.struct_size = bad[i];
        char what[64];
        snprintf(what, sizeof what, "struct_size %zu", bad[i]);
        expect_create_fails(&o, MPX_EINVAL, "options.struct_size", what);
    }
}

typedef struct num_case {
    const char *what;
    void (*set)(mpx_options_t *);
    const char *field;
} num_case_t;

/* lease_ms 300 keeps the lease rule satisfied, so only the latency rule can fail */
static void set_interval_eq_latency(mpx_options_t *o) { o->interval_ms = 2000, o->latency_ms = 2000, o->lease_ms = 300; }
static void set_interval_lt_latency(mpx_options_t *o) { o->interval_ms = 1000, o->latency_ms = 2000, o->lease_ms = 300; }
static void set_interval_0(mpx_options_t *o) { o->interval_ms = 0; }
static void set_latency_0(mpx_options_t *o) { o->latency_ms = 0, o->lease_ms = 300; }
static void set_lease_low(mpx_options_t *o) { o->lease_ms = 299; }
static void set_lease_0(mpx_options_t *o) { o->lease_ms = 0; }
static void set_lease_high(mpx_options_t *o) { o->interval_ms = 5000, o->lease_ms = 5001; }
static void set_reap_chunk_0(mpx_options_t *o) { o->reap_chunk = 0; }
static void set_reap_chunk_high(mpx_options_t *o) { o->reap_chunk = 5001; }
static void set_batch_max_0(mpx_options_t *o) { o->batch_max = 0; }
static void set_batch_max_high(mpx_options_t *o) { o->batch_max = 1000001; }
static void set_batch_delay_high(mpx_options_t *o) { o->batch_delay_ms = 10001; }
static void set_connect_0(mpx_options_t *o) { o->connect_timeout_ms = 0; }
static void set_connect_high(mpx_options_t *o) { o->connect_timeout_ms = 600001; }
static void set_command_0(mpx_options_t *o) { o->command_timeout_ms = 0; }
static void set_command_high(mpx_options_t *o) { o->command_timeout_ms = 600001; }
static void set_size_hint_huge(mpx_options_t *o) { o->size_hint = ((size_t)1 << 32) + 1; }

Test(create, rejects_out_of_range_numbers_naming_the_field)
{
    const num_case_t cases[] = {
        {"interval == latency", set_interval_eq_latency, "options.interval_ms"},
        {"interval < latency", set_interval_lt_latency, "options.interval_ms"},
        {"interval 0", set_interval_0, "options.interval_ms"},
        {"latency 0", set_latency_0, "options.latency_ms"},
        {"lease 299", set_lease_low, "options.lease_ms"},
        {"lease 0", set_lease_0, "options.lease_ms"},
        {"lease > interval", set_lease_high, "options.lease_ms"},
        {"reap_chunk 0", set_reap_chunk_0, "options.reap_chunk"},
        {"reap_chunk 5001", set_reap_chunk_high, "options.reap_chunk"},
        {"batch_max 0", set_batch_max_0, "options.batch_max"},
        {"batch_max 1000001", set_batch_max_high, "options.batch_max"},
        {"batch_delay 10001", set_batch_delay_high, "options.batch_delay_ms"},
        {"connect_timeout 0", set_connect_0, "options.connect_timeout_ms"},
        {"connect_timeout 600001", set_connect_high, "options.connect_timeout_ms"},
        {"command_timeout 0", set_command_0, "options.command_timeout_ms"},
        {"command_timeout 600001", set_command_high, "options.command_timeout_ms"},
        {"size_hint 2^32+1", set_size_hint_huge, "options.size_hint"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mpx_options_t o;
        base_options(&o);
        cases[i].set(&o);
        expect_create_fails(&o, MPX_EINVAL, cases[i].field, cases[i].what);
    }
}

Test(create, accepts_range_boundaries)
{
    mpx_options_t o, out;
    base_options(&o);
    o.interval_ms = 2001;
    o.latency_ms = 2000;
    o.lease_ms = 300;
    o.reap_chunk = 1;
    o.batch_max = 1;
    o.batch_delay_ms = 10000;
    o.connect_timeout_ms = 1;
    o.command_timeout_ms = 600000;
    cr_assert_eq(mpx__check_options(&o, &out), 0, "%s", mpx_last_error());

    base_options(&o);
    o.interval_ms = 1000;
    o.latency_ms = 999;
    o.lease_ms = 1000; /* == interval */
    o.reap_chunk = 5000; /* documented maximum */
    o.batch_max = 1000000;
    o.batch_delay_ms = 0;
    o.connect_timeout_ms = 600000;
    o.command_timeout_ms = 1;
    cr_assert_eq(mpx__check_options(&o, &out), 0, "%s", mpx_last_error());
}

Test(create, rejects_bad_namespaces)
{
    char *too_long = repeat('n', MPX_NAMESPACE_MAX + 1);
    const struct {
        const char *ns, *what;
    } cases[] = {
        {"", "empty"},
        {too_long, "MPX_NAMESPACE_MAX + 1 bytes"},
        {"a b", "space"},
        {"a{b", "'{'"},
        {"a}b", "'}'"},
        {"a\x01" "b", "control byte"},
        {"a\tb", "tab"},
        {"a\x7f" "b", "DEL"},
        {"a\x80" "b", "byte 0x80"},
        {"caf\xc3\xa9", "UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mpx_options_t o;
        base_options(&o);
        o.ns = cases[i].ns;
        expect_create_fails(&o, MPX_EINVAL, "options.ns", cases[i].what);
    }
    free(too_long);
}

Test(create, accepts_longest_namespace_and_punctuation)
{
    char *longest = repeat('n', MPX_NAMESPACE_MAX);
    const char *ok[] = {longest, "a", "my-app.v2:prod", "x!#$%&'()*+,-./:;<=>?@[]^_`|~"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        mpx_options_t o, out;
        base_options(&o);
        o.ns = ok[i];
        cr_assert_eq(mpx__check_options(&o, &out), 0, "ns '%s': %s", ok[i], mpx_last_error());
        cr_assert_eq(out.ns, ok[i], "strings are not copied by check_options");
    }
    free(longest);
}

/* ---- Redis URLs ------------------------------------------------------------------------- */

Test(redis_url, rejects_bad_urls_in_create)
{
    const struct {
        const char *url, *needle;
    } cases[] = {
        {"", "options.redis_url"},
        {"http://x", "options.redis_url"},
        {"redis://", "options.redis_url"},
        {"redis://host:0", "options.redis_url"},
        {"redis://host:99999", "options.redis_url"},
        {"redis://host:65536", "options.redis_url"},
        {"redis://host:port", "options.redis_url"},
        {"redis://host:", "options.redis_url"},
        {"redis://host/abc", "options.redis_url"},
        {"redis://ho st:1", "options.redis_url"},
        {"redis://[::1", "options.redis_url"},
        {"redis://[::1]x:1", "options.redis_url"},
        {"unix://relative", "options.redis_url"},
        {"unix:///tmp/r.sock?db=x", "options.redis_url"},
        {"unix:///tmp/r.sock?nope", "options.redis_url"},
        {"unix:///tmp/r.sock?foo=1", "foo"},
        {"unix:///tmp/r.sock?db=1&bar=2", "bar"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mpx_options_t o;
        base_options(&o);
        o.redis_url = cases[i].url;
        expect_create_fails(&o, MPX_EINVAL, cases[i].needle, cases[i].url);
        /* and the parser alone, on a guarded copy */
        mpx__redis_endpoint_t ep;
        memset(&ep, 0x5A, sizeof ep);
        int rc = mpx__parse_redis_url(guarded(cases[i].url), &ep);
        cr_assert_eq(rc, MPX_EINVAL, "%s: parse returned %d", cases[i].url, rc);
        cr_assert(contains(mpx_last_error(), cases[i].needle), "%s: message '%s'",
                  cases[i].url, mpx_last_error());
        /* on error nothing is left allocated and the struct is cleared */
        cr_assert_null(ep.host, "%s", cases[i].url);
        cr_assert_null(ep.path, "%s", cases[i].url);
        cr_assert_null(ep.user, "%s", cases[i].url);
        cr_assert_null(ep.password, "%s", cases[i].url);
    }
    mpx__redis_endpoint_t ep;
    cr_assert_eq(mpx__parse_redis_url(NULL, &ep), MPX_EINVAL);
}

typedef struct url_case {
    const char *url;
    const char *host;
    int port;
    int db;
    const char *user, *password, *path;
} url_case_t;

static void check_str_field(const char *url, const char *name, const char *got,
                            const char *want)
{
    if (!want)
        cr_assert_null(got, "%s: %s should be NULL, is '%s'", url, name, got);
    else {
        cr_assert_not_null(got, "%s: %s is NULL, expected '%s'", url, name, want);
        cr_assert_str_eq(got, want, "%s: %s", url, name);
    }
}

Test(redis_url, parses_valid_urls)
{
    const url_case_t cases[] = {
        {"redis://127.0.0.1", "127.0.0.1", 6379, 0, NULL, NULL, NULL},
        {"redis://h:6380/2", "h", 6380, 2, NULL, NULL, NULL},
        {"redis://:pw@h:1", "h", 1, 0, NULL, "pw", NULL},
        {"redis://user:p%40ss@h:1/3", "h", 1, 3, "user", "p@ss", NULL},
        {"redis://secret@h", "h", 6379, 0, NULL, "secret", NULL},
        {"redis://[::1]:6390", "::1", 6390, 0, NULL, NULL, NULL},
        {"redis://[::1]", "::1", 6379, 0, NULL, NULL, NULL},
        {"redis://h:65535/", "h", 65535, 0, NULL, NULL, NULL},
        {"unix:///tmp/r.sock?db=4&password=x", NULL, 0, 4, NULL, "x", "/tmp/r.sock"},
        {"unix:///tmp/r.sock", NULL, 0, 0, NULL, NULL, "/tmp/r.sock"},
        {"unix:///tmp/r.sock?user=u&password=p%26q", NULL, 0, 0, "u", "p&q", "/tmp/r.sock"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const url_case_t *c = &cases[i];
        mpx__redis_endpoint_t ep;
        int rc = mpx__parse_redis_url(guarded(c->url), &ep);
        cr_assert_eq(rc, 0, "%s: %d '%s'", c->url, rc, mpx_last_error());
        check_str_field(c->url, "host", ep.host, c->host);
        check_str_field(c->url, "path", ep.path, c->path);
        check_str_field(c->url, "user", ep.user, c->user);
        check_str_field(c->url, "password", ep.password, c->password);
        if (c->host)
            cr_assert_eq(ep.port, c->port, "%s: port %d", c->url, ep.port);
        cr_assert_eq(ep.db, c->db, "%s: db %d", c->url, ep.db);
        mpx__endpoint_free(&ep);
        cr_assert_null(ep.host);
        cr_assert_null(ep.password);

        /* the same URL passes mpx_create's validation */
        mpx_options_t o, out;
        base_options(&o);
        o.redis_url = c->url;
        cr_assert_eq(mpx__check_options(&o, &out), 0, "%s: %s", c->url, mpx_last_error());
    }
    mpx__endpoint_free(NULL); /* accepted */
}

/* ---- addresses ------------------------------------------------------------------------------ */

static const char *const valid_addresses[] = {
    "http://127.0.0.1:8080",
    "https://example.com:443",
    "http://[::1]:9000",
    "http://my-host_1.example:1",
    "https://h:65535",
};

typedef struct addr_case {
    const char *addr; /* NULL: the NULL pointer */
    int code;
    const char *what;
} addr_case_t;

/* Filled by bad_addresses(): the static cases plus the over-long one. */
static char *too_long_addr;

static size_t bad_addresses(addr_case_t *out)
{
    /* "http://" + host + ":80", MPX_ADDRESS_MAX + 1 bytes in all */
    size_t host_len = MPX_ADDRESS_MAX + 1 - strlen("http://") - strlen(":80");
    char *host = repeat('a', host_len);
    too_long_addr = malloc(MPX_ADDRESS_MAX + 2);
    cr_assert_not_null(too_long_addr);
    snprintf(too_long_addr, MPX_ADDRESS_MAX + 2, "http://%s:80", host);
    free(host);
    cr_assert_eq(strlen(too_long_addr), MPX_ADDRESS_MAX + 1);

    const addr_case_t cases[] = {
        {NULL, MPX_EINVAL, "NULL"},
        {"", MPX_EINVAL, "empty"},
        {too_long_addr, MPX_ETOOBIG, "MPX_ADDRESS_MAX + 1 bytes"},
        {"example.com:80", MPX_EINVAL, "no scheme"},
        {"ftp://h:1", MPX_EINVAL, "ftp scheme"},
        {"http:/h:1", MPX_EINVAL, "one slash"},
        {"http://h", MPX_EINVAL, "no port"},
        {"http://h:", MPX_EINVAL, "empty port"},
        {"http://:80", MPX_EINVAL, "empty host"},
        {"http://h:1/", MPX_EINVAL, "trailing slash"},
        {"http://h:1/path", MPX_EINVAL, "path"},
        {"http://h:1?x", MPX_EINVAL, "query"},
        {"http://h:1#f", MPX_EINVAL, "fragment"},
        {"http://u@h:1", MPX_EINVAL, "user info"},
        {"http://h:0", MPX_EINVAL, "port 0"},
        {"http://h:65536", MPX_EINVAL, "port 65536"},
        {"http://h:123456", MPX_EINVAL, "6-digit port"},
        {"http://h:08", MPX_EINVAL, "leading zero"},
        {"http://h:8x", MPX_EINVAL, "port not a number"},
        {"http://h h:1", MPX_EINVAL, "space in host"},
        {"http://h\x01:1", MPX_EINVAL, "control byte in host"},
        {"http://h\x80:1", MPX_EINVAL, "byte 0x80 in host"},
        {"http://h:1:2", MPX_EINVAL, "two ports"},
        {"http://[::1]", MPX_EINVAL, "IPv6 without port"},
        {"http://[::g]:1", MPX_EINVAL, "bad IPv6 literal"},
        {"http://[]:1", MPX_EINVAL, "empty IPv6 literal"},
    };
    size_t n = sizeof cases / sizeof cases[0];
    memcpy(out, cases, sizeof cases);
    return n;
}

Test(address, check_address_accepts_valid)
{
    for (size_t i = 0; i < sizeof valid_addresses / sizeof valid_addresses[0]; i++) {
        char out[MPX_ADDRESS_MAX + 1];
        memset(out, 'X', sizeof out);
        int rc = mpx__check_address(guarded(valid_addresses[i]), "F", out);
        cr_assert_eq(rc, 0, "%s: %d '%s'", valid_addresses[i], rc, mpx_last_error());
        cr_assert_str_eq(out, valid_addresses[i]);
    }
    /* exactly MPX_ADDRESS_MAX bytes is accepted */
    size_t host_len = MPX_ADDRESS_MAX - strlen("http://") - strlen(":80");
    char *host = repeat('b', host_len);
    char longest[MPX_ADDRESS_MAX + 1];
    snprintf(longest, sizeof longest, "http://%s:80", host);
    free(host);
    cr_assert_eq(strlen(longest), MPX_ADDRESS_MAX);
    char out[MPX_ADDRESS_MAX + 1];
    cr_assert_eq(mpx__check_address(guarded(longest), "F", out), 0, "%s", mpx_last_error());
    cr_assert_str_eq(out, longest);
}

Test(address, check_address_rejects_invalid)
{
    addr_case_t cases[64];
    size_t n = bad_addresses(cases);
    for (size_t i = 0; i < n; i++) {
        char out[MPX_ADDRESS_MAX + 1];
        const char *in = cases[i].addr ? guarded(cases[i].addr) : NULL;
        int rc = mpx__check_address(in, "field.name", out);
        cr_assert_eq(rc, cases[i].code, "%s: returned %d (%s), expected %s; '%s'",
                     cases[i].what, rc, mpx_err_name(rc), mpx_err_name(cases[i].code),
                     mpx_last_error());
        cr_assert(contains(mpx_last_error(), "field.name"), "%s: message '%s'", cases[i].what,
                  mpx_last_error());
    }
    free(too_long_addr);
}

Test(address, create_rejects_invalid_options_address)
{
    addr_case_t cases[64];
    size_t n = bad_addresses(cases);
    for (size_t i = 0; i < n; i++) {
        if (!cases[i].addr)
            continue; /* NULL means "register later": valid */
        mpx_options_t o;
        base_options(&o);
        o.address = cases[i].addr;
        expect_create_fails(&o, cases[i].code, "options.address", cases[i].what);
    }
    free(too_long_addr);
}

Test(address, create_with_valid_address_reports_it)
{
    for (size_t i = 0; i < sizeof valid_addresses / sizeof valid_addresses[0]; i++) {
        const char *want = valid_addresses[i];
        char copy[MPX_ADDRESS_MAX + 1];
        snprintf(copy, sizeof copy, "%s", want);
        mpx_options_t o;
        base_options(&o);
        o.address = copy;
        mpx_t *m = create_ok(&o);
        memset(copy, 0, sizeof copy); /* the library keeps its own copy */

        char buf[MPX_ADDRESS_MAX + 1];
        size_t len = sizeof buf;
        int rc = mpx_address(m, buf, &len);
        cr_assert_eq(rc, 0, "%s: %d '%s'", want, rc, mpx_last_error());
        cr_assert_str_eq(buf, want);
        cr_assert_eq(len, strlen(want));

        /* exactly long enough: strlen + 1 */
        char exact[64];
        len = strlen(want) + 1;
        cr_assert_eq(mpx_address(m, exact, &len), 0);
        cr_assert_str_eq(exact, want);
        cr_assert_eq(len, strlen(want));

        /* one byte short: ENOSPC, *len = needed length (without the NUL) */
        char small[64];
        memset(small, 'Z', sizeof small);
        len = strlen(want);
        rc = mpx_address(m, small, &len);
        cr_assert_eq(rc, MPX_ENOSPC, "%s: %d", want, rc);
        cr_assert_eq(len, strlen(want));
        cr_assert_eq(small[0], 'Z', "nothing written on ENOSPC");
        cr_assert_neq(mpx_last_error()[0], '\0');

        /* no buffer at all */
        len = 0;
        cr_assert_eq(mpx_address(m, NULL, &len), MPX_ENOSPC);
        cr_assert_eq(len, strlen(want));

        cr_assert_eq(mpx_address(m, buf, NULL), MPX_EINVAL);
        mpx_destroy(m);
    }
}

Test(address, unregistered_address_is_not_found)
{
    mpx_options_t o;
    base_options(&o);
    mpx_t *m = create_ok(&o);
    char buf[64];
    size_t len = sizeof buf;
    int rc = mpx_address(m, buf, &len);
    cr_assert_eq(rc, MPX_ENOTFOUND, "%d %s", rc, mpx_last_error());
    len = sizeof buf;
    cr_assert_eq(mpx_address(NULL, buf, &len), MPX_EINVAL);
    mpx_destroy(m);
}

Test(address, register_rejects_invalid_without_redis)
{
    mpx_options_t o;
    base_options(&o);
    mpx_t *m = create_ok(&o);
    addr_case_t cases[64];
    size_t n = bad_addresses(cases);
    for (size_t i = 0; i < n; i++) {
        int rc = mpx_register(m, cases[i].addr);
        cr_assert_eq(rc, cases[i].code, "%s: mpx_register returned %d (%s); '%s'",
                     cases[i].what, rc, mpx_err_name(rc), mpx_last_error());
        cr_assert(contains(mpx_last_error(), "address"), "%s: message '%s'", cases[i].what,
                  mpx_last_error());
    }
    free(too_long_addr);

    /* nothing was registered, and no Redis round trip happened */
    char buf[64];
    size_t len = sizeof buf;
    cr_assert_eq(mpx_address(m, buf, &len), MPX_ENOTFOUND);
    mpx_stats_t st;
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert_eq(st.redis_errors, 0, "a rejected address must not reach Redis");

    int rc = mpx_register(NULL, "http://127.0.0.1:8080");
    cr_assert_eq(rc, MPX_EINVAL);
    cr_assert(contains(mpx_last_error(), "NULL"), "message '%s'", mpx_last_error());
    mpx_destroy(m);
}

/* ---- ids ------------------------------------------------------------------------------------------- */

Test(ids, connect_and_disconnect_check_ids)
{
    mpx_options_t o;
    base_options(&o);
    mpx_t *m = create_ok(&o);
    static char big[MPX_ID_MAX + 1];
    memset(big, 'i', sizeof big);

    int (*fns[2])(mpx_t *, const void *, size_t) = {mpx_connect, mpx_disconnect};
    const char *names[2] = {"connect", "disconnect"};
    for (int f = 0; f < 2; f++) {
        int rc = fns[f](m, NULL, 3);
        cr_assert_eq(rc, MPX_EINVAL, "%s NULL id: %d", names[f], rc);
        cr_assert(contains(mpx_last_error(), "id"), "'%s'", mpx_last_error());
        rc = fns[f](m, "abc", 0);
        cr_assert_eq(rc, MPX_EINVAL, "%s len 0: %d", names[f], rc);
        rc = fns[f](m, big, MPX_ID_MAX + 1);
        cr_assert_eq(rc, MPX_ETOOBIG, "%s len MPX_ID_MAX+1: %d", names[f], rc);
        cr_assert(contains(mpx_last_error(), "1025"), "'%s'", mpx_last_error());
        rc = fns[f](NULL, "abc", 3);
        cr_assert_eq(rc, MPX_EINVAL, "%s NULL registry: %d", names[f], rc);
    }
    mpx_stats_t st;
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert_eq(st.local_sparks, 0);
    cr_assert_eq(st.queued, 0, "rejected ids are not queued");

    cr_assert_eq(mpx__check_id("x", 1), 0);
    cr_assert_eq(mpx__check_id(big, MPX_ID_MAX), 0);
    cr_assert_eq(mpx__check_id(big, MPX_ID_MAX + 1), MPX_ETOOBIG);
    cr_assert_eq(mpx__check_id(NULL, 1), MPX_EINVAL);
    cr_assert_eq(mpx__check_id(big, 0), MPX_EINVAL);
    mpx_destroy(m);
}

Test(ids, binary_id_of_max_length_is_accepted_while_redis_is_down)
{
    mpx_options_t o;
    base_options(&o);
    mpx_t *m = create_ok(&o);
    static unsigned char id[MPX_ID_MAX];
    for (size_t i = 0; i < sizeof id; i++)
        id[i] = (unsigned char)(i % 7 == 0 ? 0 : i); /* NUL bytes throughout */

    int rc = mpx_connect(m, id, sizeof id);
    cr_assert_eq(rc, 0, "connect: %d '%s'", rc, mpx_last_error());
    cr_assert_str_eq(mpx_last_error(), "");
    mpx_stats_t st;
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert_eq(st.local_sparks, 1);
    cr_assert_eq(st.queued, 1);

    /* a prefix up to the first NUL is a different id */
    cr_assert_eq(mpx_disconnect(m, id, 1), 0);
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert_eq(st.local_sparks, 1, "id \"\\0\" is not the 1024-byte id");

    rc = mpx_disconnect(m, id, sizeof id);
    cr_assert_eq(rc, 0, "disconnect: %d '%s'", rc, mpx_last_error());
    cr_assert_eq(mpx_stats(m, &st), 0);
    cr_assert_eq(st.local_sparks, 0);
    cr_assert_eq(st.queued, 2);
    mpx_destroy(m);
}

Test(lifecycle, destroy_null_is_fine)
{
    mpx_destroy(NULL);
    mpx_options_t o;
    base_options(&o);
    mpx_destroy(create_ok(&o)); /* create then destroy at once, no Redis */
}

/* ---- errors ---------------------------------------------------------------------------------------- */

Test(errors, strerror_and_names_for_every_code)
{
    struct {
        int code;
        const char *name, *msg;
    } table[] = {
#define XX(name, val, msg) {val, "MPX_" #name, msg},
        MPX_ERRNO_MAP(XX)
#undef XX
    };
    size_t n = sizeof table / sizeof table[0];
    cr_assert_eq(n, 13);
    for (size_t i = 0; i < n; i++) {
        cr_assert_lt(table[i].code, 0, "%s must be negative", table[i].name);
        cr_assert_str_eq(mpx_strerror(table[i].code), table[i].msg, "%s", table[i].name);
        cr_assert_str_eq(mpx_err_name(table[i].code), table[i].name);
        for (size_t j = 0; j < i; j++)
            cr_assert_neq(table[i].code, table[j].code, "%s and %s share a value",
                          table[i].name, table[j].name);
    }
    /* spot-check that the enum matches the table */
    cr_assert_eq(MPX_EINVAL, -1);
    cr_assert_eq(MPX_ETHREAD, -13);
    cr_assert_str_eq(mpx_err_name(MPX_ENOSPC), "MPX_ENOSPC");
    cr_assert_str_eq(mpx_strerror(MPX_ETOOBIG), "value too long");

    cr_assert_str_eq(mpx_strerror(MPX_OK), "success");
    cr_assert_str_eq(mpx_err_name(MPX_OK), "MPX_OK");
    const int unknown[] = {-14, -999, 1, 42, -2147483647 - 1};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        cr_assert_str_eq(mpx_strerror(unknown[i]), "unknown error", "%d", unknown[i]);
        cr_assert_str_eq(mpx_err_name(unknown[i]), "MPX_EUNKNOWN", "%d", unknown[i]);
    }
}

static void *fail_in_thread(void *arg)
{
    (void)arg;
    mpx_options_t o;
    base_options(&o);
    o.reap_chunk = 0;
    mpx_t *m = NULL;
    int rc = mpx_create(&o, &m);
    static char seen[512];
    snprintf(seen, sizeof seen, "%d|%s", rc, mpx_last_error());
    return seen;
}

Test(errors, last_error_is_per_thread_and_cleared_by_success)
{
    mpx_options_t o;
    base_options(&o);
    o.batch_max = 0;
    mpx_t *m = NULL;
    cr_assert_eq(mpx_create(&o, &m), MPX_EINVAL);
    char mine[512];
    snprintf(mine, sizeof mine, "%s", mpx_last_error());
    cr_assert(contains(mine, "options.batch_max"), "'%s'", mine);

    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, fail_in_thread, NULL), 0);
    void *ret;
    pthread_join(t, &ret);
    cr_assert(contains(ret, "options.reap_chunk"), "thread saw '%s'", (char *)ret);
    cr_assert_str_eq(mpx_last_error(), mine, "another thread's failure changed ours");

    /* a successful call clears the message */
    base_options(&o);
    m = create_ok(&o);
    mpx_destroy(m);
}

Test(options, passwords_never_appear_in_messages)
{
    mpx_options_t o;
    mpx_options_init(&o);
    mpx_t *m = NULL;
    o.redis_url = "redis://user:SECRET1@h:1/notadb";
    cr_assert_eq(mpx_create(&o, &m), MPX_EINVAL);
    cr_assert_null(strstr(mpx_last_error(), "SECRET1"), "%s", mpx_last_error());
    cr_assert_not_null(strstr(mpx_last_error(), "***"), "%s", mpx_last_error());
    o.redis_url = "unix:///tmp/r.sock?password=SECRET2&db=zz";
    cr_assert_eq(mpx_create(&o, &m), MPX_EINVAL);
    cr_assert_null(strstr(mpx_last_error(), "SECRET2"), "%s", mpx_last_error());
    o.redis_url = "redis://SECRET3@h:x";
    cr_assert_eq(mpx_create(&o, &m), MPX_EINVAL);
    cr_assert_null(strstr(mpx_last_error(), "SECRET3"), "%s", mpx_last_error());
}
