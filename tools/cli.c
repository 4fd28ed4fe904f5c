/*
 * cli.c - `metroplex`, the operator's command-line tool over the registry.
 *
 *   metroplex [OPTIONS] COMMAND [ARGS]
 *
 * Commands: servers, spark ID..., stats, check, repair, reap, watch (see
 * usage() below and docs/cli.md, which also documents every --json format).
 *
 * How it talks to Redis
 *   One blocking connection (the library's mpx__conn_t: AUTH, SELECT, the
 *   library's scripts loaded) for reads and the consistency scripts of
 *   src/admin.c. `reap` and the reaping step of `repair` use a registry made
 *   with mpx_create() and never registered, so dead servers are removed by
 *   exactly the library's mechanism (scripts `retire` and `drain`).
 *
 * Bounded work
 *   Every walk over a possibly big key is chunked: SCAN / HSCAN / SSCAN with
 *   COUNT --chunk (default 1000), followed by one bounded command per chunk
 *   (SMISMEMBER, HMGET, or a consistency script over at most --chunk ids).
 *   No command reads or changes a whole big key at once (no HGETALL,
 *   SMEMBERS or KEYS on spark data), so Redis keeps answering other clients.
 *
 * Exit status: 0 fine; 1 problems found (check, repair that could not fix
 * everything, repair --dry-run with findings); 2 usage error or Redis
 * error (one line on stderr).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "internal.h"

#define CLI_NAME "metroplex"

/* ------------------------------------------------------------------------ */
/* Global state                                                             */
/* ------------------------------------------------------------------------ */

typedef struct cli {
    const char *url, *ns;
    int json, dry_run, no_wait;
    uint32_t interval_ms, chunk, top, timeout_ms;
    long count; /* watch: ticks, 0 = until SIGINT */
    mpx__redis_endpoint_t ep;
    bool have_ep, have_keys;
    mpx__keys_t keys;
    mpx__conn_t conn;
    mpx_t *reg;
} cli_t;

static cli_t G;
static volatile sig_atomic_t interrupted;

static void cleanup(void)
{
    if (G.reg) {
        mpx_destroy(G.reg);
        G.reg = NULL;
    }
    mpx__conn_close(&G.conn);
    if (G.have_keys)
        mpx__keys_free(&G.keys);
    if (G.have_ep)
        mpx__endpoint_free(&G.ep);
    G.have_keys = G.have_ep = false;
}

static void die_usage(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die_usage(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, CLI_NAME ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (try '" CLI_NAME " --help')\n");
    exit(2);
}

/* A Redis (or other runtime) error: one line, exit 2. */
static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, CLI_NAME ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void die_redis(const char *what)
{
    const char *m = mpx_last_error();
    die("%s: %s", what, m && *m ? m : "redis error");
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ------------------------------------------------------------------------ */
/* Small containers                                                         */
/* ------------------------------------------------------------------------ */

/* A list of NUL-terminated strings; sort + bsearch for membership. */
typedef struct strlist {
    char **v;
    size_t n, cap;
    bool sorted;
} strlist_t;

static void sl_add(strlist_t *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = xstrndup(s, n);
    l->sorted = false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void sl_sort(strlist_t *l)
{
    if (!l->sorted && l->n)
        qsort(l->v, l->n, sizeof *l->v, cmp_str);
    /* drop duplicates */
    size_t w = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (w > 0 && strcmp(l->v[w - 1], l->v[i]) == 0) {
            free(l->v[i]);
            continue;
        }
        l->v[w++] = l->v[i];
    }
    l->n = w;
    l->sorted = true;
}

static bool sl_has(strlist_t *l, const char *s)
{
    if (!l->sorted)
        sl_sort(l);
    return l->n && bsearch(&s, l->v, l->n, sizeof *l->v, cmp_str) != NULL;
}

static void sl_free(strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* ------------------------------------------------------------------------ */
/* JSON output                                                              */
/* ------------------------------------------------------------------------ */

/* Length of a valid UTF-8 sequence at p (0 if invalid). */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    if (p[0] < 0x80)
        return 1;
    size_t len;
    unsigned min;
    unsigned cp;
    if ((p[0] & 0xE0) == 0xC0) {
        len = 2, cp = p[0] & 0x1F, min = 0x80;
    } else if ((p[0] & 0xF0) == 0xE0) {
        len = 3, cp = p[0] & 0x0F, min = 0x800;
    } else if ((p[0] & 0xF8) == 0xF0) {
        len = 4, cp = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* A JSON string. Valid UTF-8 is kept; a byte that is not is written as
 * \u00XX (its Latin-1 reading), so the output is always valid JSON. */
static void jstr(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    putchar('"');
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            putchar('\\');
            putchar(c);
            i++;
        } else if (c == '\n') {
            fputs("\\n", stdout), i++;
        } else if (c == '\t') {
            fputs("\\t", stdout), i++;
        } else if (c == '\r') {
            fputs("\\r", stdout), i++;
        } else if (c < 0x20 || c == 0x7F) {
            printf("\\u%04x", c), i++;
        } else if (c < 0x80) {
            putchar(c), i++;
        } else {
            size_t l = utf8_len(p + i, n - i);
            if (l) {
                fwrite(p + i, 1, l, stdout);
                i += l;
            } else {
                printf("\\u%04x", c);
                i++;
            }
        }
    }
    putchar('"');
}

static void jstrz(const char *s)
{
    jstr(s, strlen(s));
}

/* ------------------------------------------------------------------------ */
/* Redis                                                                    */
/* ------------------------------------------------------------------------ */

static uint64_t now_ms(void)
{
    return mpx__now_ms();
}

static void connect_redis(void)
{
    if (mpx__parse_redis_url(G.url, &G.ep) != 0)
        die_usage("--redis: %s", mpx_last_error());
    G.have_ep = true;
    if (mpx__keys_init(&G.keys, G.ns) != 0)
        die("out of memory");
    G.have_keys = true;
    mpx__conn_init(&G.conn, &G.ep, 2000, G.timeout_ms, "cli", NULL);
    if (mpx__conn_ensure(&G.conn, true) != 0)
        die_redis("cannot use redis");
}

/* Run one command; any failure (I/O, error reply) ends the program. */
static redisReply *run(mpx__argv_t *a)
{
    redisReply *r;
    if (mpx__conn_command(&G.conn, a, &r) != 0)
        die_redis("redis");
    return r;
}

/* Pipelining: queue commands with pipe_send, then read as many replies. */
static void pipe_send(mpx__argv_t *a)
{
    if (mpx__conn_ensure(&G.conn, true) != 0 || mpx__conn_append(&G.conn, a) != 0)
        die_redis("redis");
    mpx__argv_reset(a);
}

static redisReply *pipe_read(void)
{
    redisReply *r;
    if (mpx__conn_read(&G.conn, &r) != 0)
        die_redis("redis");
    return r;
}

/* Read a reply that must not be an error. */
static redisReply *pipe_read_ok(const char *what)
{
    redisReply *r = pipe_read();
    if (r->type == REDIS_REPLY_ERROR) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", r->str);
        freeReplyObject(r);
        die("redis: %s failed: %s", what, msg);
    }
    return r;
}

static long long reply_int(redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return strtoll(r->str, NULL, 10);
    return -1;
}

static void push(mpx__argv_t *a, const char *s)
{
    mpx__argv_push(a, s, strlen(s));
}

/* A SCAN-family step: CMD [key] cursor [MATCH pattern] COUNT chunk.
 * Returns the reply's element array (owned by *holder, free it). */
typedef struct scan {
    const char *cmd; /* "SCAN", "HSCAN", "SSCAN" */
    const char *key; /* NULL for SCAN */
    size_t klen;
    char cursor[32];
    bool started, done, match;
} scan_t;

static void scan_init(scan_t *s, const char *cmd, const char *key, size_t klen)
{
    memset(s, 0, sizeof *s);
    s->cmd = cmd;
    s->key = key;
    s->klen = klen;
    s->match = key == NULL;
    strcpy(s->cursor, "0");
}

static redisReply *scan_next(scan_t *s, redisReply **holder)
{
    *holder = NULL;
    if (s->done)
        return NULL;
    mpx__argv_t a;
    mpx__argv_init(&a);
    push(&a, s->cmd);
    if (s->key)
        mpx__argv_push(&a, s->key, s->klen);
    push(&a, s->cursor);
    if (s->match) {
        push(&a, "MATCH");
        mpx__admin_match(&G.keys, &a);
    }
    push(&a, "COUNT");
    mpx__argv_pushf(&a, "%u", G.chunk);
    redisReply *r = run(&a);
    mpx__argv_free(&a);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        die("redis: unexpected %s reply", s->cmd);
    }
    snprintf(s->cursor, sizeof s->cursor, "%s", r->element[0]->str);
    s->started = true;
    if (strcmp(s->cursor, "0") == 0)
        s->done = true;
    *holder = r;
    return r->element[1];
}

/* The registered servers (SSCAN of NS servers), sorted. */
static void load_servers(strlist_t *out)
{
    scan_t s;
    scan_init(&s, "SSCAN", G.keys.servers, G.keys.servers_len);
    redisReply *h, *arr;
    while ((arr = scan_next(&s, &h)) != NULL) {
        for (size_t i = 0; i < arr->elements; i++) {
            redisReply *e = arr->element[i];
            if (e->type == REDIS_REPLY_STRING && e->len > 0 && e->len <= MPX_ADDRESS_MAX &&
                !memchr(e->str, 0, e->len))
                sl_add(out, e->str, e->len);
        }
        freeReplyObject(h);
    }
    sl_sort(out);
}

/* Addresses with a cleanup in progress (values of NS drains; small). */
static void load_draining(strlist_t *out, uint64_t *pending)
{
    scan_t s;
    scan_init(&s, "HSCAN", G.keys.drains, G.keys.drains_len);
    redisReply *h, *arr;
    *pending = 0;
    while ((arr = scan_next(&s, &h)) != NULL) {
        for (size_t i = 0; i + 1 < arr->elements; i += 2) {
            redisReply *v = arr->element[i + 1];
            (*pending)++;
            if (v->type == REDIS_REPLY_STRING && v->len <= MPX_ADDRESS_MAX)
                sl_add(out, v->str, v->len);
        }
        freeReplyObject(h);
    }
    sl_sort(out);
}

/* A registry for reaping: created, never registered. */
static mpx_t *registry(void)
{
    if (G.reg)
        return G.reg;
    mpx_options_t o;
    mpx_options_init(&o);
    o.redis_url = G.url;
    o.ns = G.ns;
    o.interval_ms = G.interval_ms;
    o.latency_ms = G.interval_ms > 8000 ? 2000 : G.interval_ms / 4;
    o.lease_ms = G.interval_ms < 10000 ? G.interval_ms : 10000;
    o.command_timeout_ms = G.timeout_ms;
    o.reap_chunk = G.chunk;
    if (mpx_create(&o, &G.reg) != 0)
        die_redis("cannot create a registry");
    return G.reg;
}

/* ------------------------------------------------------------------------ */
/* servers                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct srvinfo {
    const char *addr;
    long long sparks, age_ms, ttl_ms, lease_ttl_ms; /* -1: none */
    bool live;
} srvinfo_t;

/* SCARD, GET alive, PTTL alive, PTTL lease for each server, pipelined. */
static srvinfo_t *server_infos(strlist_t *servers)
{
    srvinfo_t *info = xmalloc(servers->n * sizeof *info);
    mpx__argv_t a;
    mpx__argv_init(&a);
    uint64_t epoch = mpx__epoch_ms();
    for (size_t base = 0; base < servers->n; base += 100) {
        size_t m = servers->n - base < 100 ? servers->n - base : 100;
        for (size_t i = 0; i < m; i++) {
            const char *addr = servers->v[base + i];
            push(&a, "SCARD");
            mpx__key_set(&G.keys, addr, &a);
            pipe_send(&a);
            push(&a, "GET");
            mpx__key_alive(&G.keys, addr, &a);
            pipe_send(&a);
            push(&a, "PTTL");
            mpx__key_alive(&G.keys, addr, &a);
            pipe_send(&a);
            push(&a, "PTTL");
            mpx__key_lease(&G.keys, addr, &a);
            pipe_send(&a);
        }
        for (size_t i = 0; i < m; i++) {
            srvinfo_t *s = &info[base + i];
            s->addr = servers->v[base + i];
            redisReply *r = pipe_read_ok("SCARD");
            s->sparks = reply_int(r);
            freeReplyObject(r);
            r = pipe_read_ok("GET");
            s->live = r->type == REDIS_REPLY_STRING;
            s->age_ms = -1;
            if (s->live) {
                char *end;
                long long v = strtoll(r->str, &end, 10);
                if (end != r->str && *end == 0)
                    s->age_ms = (long long)epoch - v;
            }
            freeReplyObject(r);
            r = pipe_read_ok("PTTL");
            s->ttl_ms = reply_int(r);
            freeReplyObject(r);
            r = pipe_read_ok("PTTL");
            s->lease_ttl_ms = reply_int(r);
            freeReplyObject(r);
            if (s->ttl_ms < 0)
                s->ttl_ms = -1;
            if (s->lease_ttl_ms < 0)
                s->lease_ttl_ms = -1;
        }
    }
    mpx__argv_free(&a);
    return info;
}

static void json_ll_or_null(long long v)
{
    if (v < 0)
        fputs("null", stdout);
    else
        printf("%lld", v);
}

static int cmd_servers(int argc, char **argv)
{
    (void)argv;
    if (argc > 0)
        die_usage("servers takes no arguments");
    strlist_t servers = {0};
    load_servers(&servers);
    srvinfo_t *info = server_infos(&servers);
    size_t live = 0;
    for (size_t i = 0; i < servers.n; i++)
        live += info[i].live;
    if (G.json) {
        printf("{\"command\":\"servers\",\"namespace\":");
        jstrz(G.ns);
        printf(",\"total\":%zu,\"live\":%zu,\"dead\":%zu,\"servers\":[", servers.n, live,
               servers.n - live);
        for (size_t i = 0; i < servers.n; i++) {
            srvinfo_t *s = &info[i];
            printf("%s{\"address\":", i ? "," : "");
            jstrz(s->addr);
            printf(",\"live\":%s,\"sparks\":%lld,\"age_ms\":", s->live ? "true" : "false",
                   s->sparks);
            if (s->age_ms == -1 && !s->live)
                fputs("null", stdout);
            else if (s->age_ms == -1)
                fputs("null", stdout);
            else
                printf("%lld", s->age_ms);
            printf(",\"ttl_ms\":");
            json_ll_or_null(s->ttl_ms);
            printf(",\"lease_ttl_ms\":");
            json_ll_or_null(s->lease_ttl_ms);
            putchar('}');
        }
        printf("]}\n");
    } else {
        int w = 7;
        for (size_t i = 0; i < servers.n; i++)
            if ((int)strlen(info[i].addr) > w)
                w = (int)strlen(info[i].addr);
        printf("%-*s  %-5s  %10s  %10s  %10s\n", w, "ADDRESS", "STATE", "SPARKS", "AGE_MS",
               "TTL_MS");
        for (size_t i = 0; i < servers.n; i++) {
            srvinfo_t *s = &info[i];
            char age[32] = "-", ttl[32] = "-";
            if (s->age_ms != -1)
                snprintf(age, sizeof age, "%lld", s->age_ms);
            if (s->ttl_ms >= 0)
                snprintf(ttl, sizeof ttl, "%lld", s->ttl_ms);
            printf("%-*s  %-5s  %10lld  %10s  %10s\n", w, s->addr, s->live ? "live" : "dead",
                   s->sparks, age, ttl);
        }
        printf("%zu servers: %zu live, %zu dead\n", servers.n, live, servers.n - live);
    }
    free(info);
    sl_free(&servers);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* spark                                                                    */
/* ------------------------------------------------------------------------ */

static int cmd_spark(int argc, char **argv)
{
    if (argc < 1)
        die_usage("spark needs at least one ID");
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]);
        if (n == 0 || n > MPX_ID_MAX)
            die_usage("spark: id %d is empty or longer than %d bytes", i + 1, MPX_ID_MAX);
    }
    if (G.json) {
        printf("{\"command\":\"spark\",\"namespace\":");
        jstrz(G.ns);
        printf(",\"sparks\":[");
    }
    size_t unknown = 0;
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (int base = 0; base < argc; base += (int)G.chunk) {
        int m = argc - base < (int)G.chunk ? argc - base : (int)G.chunk;
        mpx__argv_reset(&a);
        push(&a, "HMGET");
        mpx__argv_push(&a, G.keys.sparks, G.keys.sparks_len);
        for (int i = 0; i < m; i++)
            push(&a, argv[base + i]);
        redisReply *r = run(&a);
        if (r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)m)
            die("redis: unexpected HMGET reply");
        for (int i = 0; i < m; i++) {
            redisReply *e = r->element[i];
            bool found = e->type == REDIS_REPLY_STRING;
            unknown += !found;
            if (G.json) {
                printf("%s{\"id\":", base + i ? "," : "");
                jstrz(argv[base + i]);
                printf(",\"server\":");
                if (found)
                    jstr(e->str, e->len);
                else
                    fputs("null", stdout);
                putchar('}');
            } else {
                printf("%s\t%s\n", argv[base + i], found ? e->str : "-");
            }
        }
        freeReplyObject(r);
    }
    mpx__argv_free(&a);
    if (G.json)
        printf("],\"unknown\":%zu}\n", unknown);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* stats                                                                    */
/* ------------------------------------------------------------------------ */

enum { MEM_HASH, MEM_SETS, MEM_ASIDE, MEM_SERVERS, MEM_DRAINS, MEM_ALIVE, MEM_LEASE, MEM_OTHER,
       MEM_KINDS };
static const char *const mem_names[MEM_KINDS] = {"sparks_hash", "server_sets", "aside_sets",
                                                 "servers_set", "drains",      "alive_keys",
                                                 "leases",      "other"};

static int mem_kind(int ak)
{
    switch (ak) {
    case MPX__AK_SPARKS: return MEM_HASH;
    case MPX__AK_SET: return MEM_SETS;
    case MPX__AK_ASIDE: return MEM_ASIDE;
    case MPX__AK_SERVERS: return MEM_SERVERS;
    case MPX__AK_DRAINS: return MEM_DRAINS;
    case MPX__AK_ALIVE: return MEM_ALIVE;
    case MPX__AK_LEASE: return MEM_LEASE;
    default: return MEM_OTHER;
    }
}

static int cmp_srv_sparks(const void *a, const void *b)
{
    const srvinfo_t *x = a, *y = b;
    if (x->sparks != y->sparks)
        return x->sparks < y->sparks ? 1 : -1;
    return strcmp(x->addr, y->addr);
}

static int cmd_stats(int argc, char **argv)
{
    (void)argv;
    if (argc > 0)
        die_usage("stats takes no arguments");
    uint64_t t0 = now_ms();
    strlist_t servers = {0};
    load_servers(&servers);
    srvinfo_t *info = server_infos(&servers);
    size_t live = 0;
    for (size_t i = 0; i < servers.n; i++)
        live += info[i].live;

    mpx__argv_t a;
    mpx__argv_init(&a);
    push(&a, "HLEN");
    mpx__argv_push(&a, G.keys.sparks, G.keys.sparks_len);
    redisReply *r = run(&a);
    long long sparks = reply_int(r);
    freeReplyObject(r);
    mpx__argv_reset(&a);
    push(&a, "HLEN");
    mpx__argv_push(&a, G.keys.drains, G.keys.drains_len);
    r = run(&a);
    long long drains = reply_int(r);
    freeReplyObject(r);
    mpx__argv_reset(&a);

    /* Memory: MEMORY USAGE key SAMPLES 5 for every key of the namespace,
     * found with SCAN MATCH in chunks, pipelined per chunk. */
    uint64_t mem[MEM_KINDS] = {0}, keys = 0, total = 0;
    scan_t s;
    scan_init(&s, "SCAN", NULL, 0);
    redisReply *h, *arr;
    char addr[MPX_ADDRESS_MAX + 1];
    while ((arr = scan_next(&s, &h)) != NULL) {
        for (size_t i = 0; i < arr->elements; i++) {
            redisReply *e = arr->element[i];
            push(&a, "MEMORY");
            push(&a, "USAGE");
            mpx__argv_push(&a, e->str, e->len);
            push(&a, "SAMPLES");
            push(&a, "5");
            pipe_send(&a);
        }
        for (size_t i = 0; i < arr->elements; i++) {
            redisReply *e = arr->element[i];
            redisReply *m = pipe_read_ok("MEMORY USAGE");
            if (m->type == REDIS_REPLY_INTEGER) { /* nil: the key went away */
                int k = mem_kind(mpx__admin_classify(&G.keys, e->str, e->len, addr));
                mem[k] += (uint64_t)m->integer;
                total += (uint64_t)m->integer;
                keys++;
            }
            freeReplyObject(m);
        }
        freeReplyObject(h);
    }
    mpx__argv_free(&a);

    qsort(info, servers.n, sizeof *info, cmp_srv_sparks);
    size_t top = servers.n < G.top ? servers.n : G.top;
    uint64_t ms = now_ms() - t0;
    if (G.json) {
        printf("{\"command\":\"stats\",\"namespace\":");
        jstrz(G.ns);
        printf(",\"servers\":%zu,\"live\":%zu,\"dead\":%zu,\"sparks\":%lld,\"keys\":%" PRIu64
               ",\"memory_bytes\":%" PRIu64 ",\"memory\":{",
               servers.n, live, servers.n - live, sparks, keys, total);
        for (int k = 0; k < MEM_KINDS; k++)
            printf("%s\"%s\":%" PRIu64, k ? "," : "", mem_names[k], mem[k]);
        printf("},\"drains_pending\":%lld,\"largest\":[", drains);
        for (size_t i = 0; i < top; i++) {
            printf("%s{\"address\":", i ? "," : "");
            jstrz(info[i].addr);
            printf(",\"sparks\":%lld,\"live\":%s}", info[i].sparks, info[i].live ? "true" : "false");
        }
        printf("],\"elapsed_ms\":%" PRIu64 "}\n", ms);
    } else {
        printf("namespace       %s\n", G.ns);
        printf("servers         %zu (%zu live, %zu dead)\n", servers.n, live, servers.n - live);
        printf("sparks          %lld\n", sparks);
        printf("drains pending  %lld\n", drains);
        printf("keys            %" PRIu64 "\n", keys);
        printf("memory          %" PRIu64 " bytes (MEMORY USAGE, SAMPLES 5)\n", total);
        for (int k = 0; k < MEM_KINDS; k++)
            if (mem[k])
                printf("  %-13s %" PRIu64 "\n", mem_names[k], mem[k]);
        if (top) {
            printf("largest servers\n");
            for (size_t i = 0; i < top; i++)
                printf("  %10lld  %-4s  %s\n", info[i].sparks, info[i].live ? "live" : "dead",
                       info[i].addr);
        }
    }
    free(info);
    sl_free(&servers);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* check / repair: the consistency scan                                     */
/* ------------------------------------------------------------------------ */

enum {
    K_HASH_NOT_IN_SET,  /* hash entry of a registered server, missing from its set */
    K_HASH_UNREG,       /* hash entry naming a server not in NS servers */
    K_SET_STALE,        /* set member whose hash entry names another server or none */
    K_SET_UNREG,        /* spark set of a server not in NS servers */
    K_ALIVE_UNREG,      /* alive key of a server not in NS servers */
    K_SERVER_NO_ALIVE,  /* registered server without an alive key */
    K_ASIDE_UNLISTED,   /* aside set (extension) not listed in NS drains */
    K_COUNT
};
static const char *const kind_names[K_COUNT] = {
    "hash-not-in-set",    "hash-unregistered", "set-stale",   "set-unregistered",
    "alive-unregistered", "server-no-alive",   "aside-unlisted"};

typedef struct dead {
    char *addr;
    uint64_t first_missing_ms; /* monotonic: first seen without alive key and lease */
    bool lease;                /* lease still held: never reaped */
} dead_t;

typedef struct engine {
    int fix;       /* change what is wrong (repair without --dry-run) */
    int repair;    /* output has an "action" per finding */
    int quiet;     /* count, do not print */
    const char *label; /* action text override (final verification: "remaining") */
    strlist_t servers, draining, setaddrs, asides;
    dead_t *dead;
    size_t ndead, dead_cap;
    uint64_t counts[K_COUNT], found, fixed, draining_entries, drains_pending;
    uint64_t sc_keys, sc_hash, sc_sets, sc_members, sc_servers;
    bool no_smismember;
    bool followup; /* reap_dead: lines about server-no-alive findings already counted */
    size_t printed;
} engine_t;

static void finding(engine_t *e, int kind, const char *addr, const char *id, size_t idlen,
                    const char *detail, const char *action, bool fixed)
{
    if (!e->followup) { /* a follow-up line reports on a finding already counted */
        e->counts[kind]++;
        e->found++;
    }
    if (fixed)
        e->fixed++;
    if (e->quiet)
        return;
    if (e->label)
        action = e->label;
    if (G.json) {
        printf("%s{\"kind\":\"%s\",\"address\":", e->printed++ ? "," : "", kind_names[kind]);
        jstrz(addr);
        if (id) {
            printf(",\"id\":");
            jstr(id, idlen);
        }
        printf(",\"detail\":");
        jstrz(detail);
        if (e->repair || e->label) {
            printf(",\"action\":");
            jstrz(action);
            printf(",\"fixed\":%s", fixed ? "true" : "false");
        }
        putchar('}');
    } else {
        e->printed++;
        printf("%s %s", kind_names[kind], addr);
        if (id) {
            putchar(' ');
            fwrite(id, 1, idlen, stdout);
        }
        printf(" (%s)", detail);
        if (e->repair || e->label)
            printf(" -> %s", action);
        putchar('\n');
    }
}

static void engine_free(engine_t *e)
{
    sl_free(&e->servers);
    sl_free(&e->draining);
    sl_free(&e->setaddrs);
    sl_free(&e->asides);
    for (size_t i = 0; i < e->ndead; i++)
        free(e->dead[i].addr);
    free(e->dead);
    e->dead = NULL;
    e->ndead = e->dead_cap = 0;
}

/* Run an EVAL built in `a`, expecting an array of n integer codes. */
static redisReply *run_codes(mpx__argv_t *a, size_t n)
{
    redisReply *r = run(a);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != n)
        die("redis: unexpected reply from a consistency script");
    return r;
}

/* Phase A: every key of the namespace (SCAN MATCH NS* COUNT chunk). */
static void phase_keys(engine_t *e)
{
    scan_t s;
    scan_init(&s, "SCAN", NULL, 0);
    redisReply *h, *arr;
    mpx__argv_t a;
    mpx__argv_init(&a);
    char addr[MPX_ADDRESS_MAX + 1];
    strlist_t alive_seen = {0};
    while ((arr = scan_next(&s, &h)) != NULL) {
        size_t n = arr->elements;
        int *kind = xmalloc(n * sizeof *kind);
        /* TYPE of every candidate, pipelined */
        size_t sent = 0;
        for (size_t i = 0; i < n; i++) {
            redisReply *k = arr->element[i];
            kind[i] = mpx__admin_classify(&G.keys, k->str, k->len, addr);
            e->sc_keys++;
            if (kind[i] == MPX__AK_ALIVE && !strstr(addr, "://"))
                kind[i] = MPX__AK_OTHER; /* not an address: not ours */
            if (kind[i] == MPX__AK_SET || kind[i] == MPX__AK_ASIDE || kind[i] == MPX__AK_ALIVE) {
                push(&a, "TYPE");
                mpx__argv_push(&a, k->str, k->len);
                pipe_send(&a);
                sent++;
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (kind[i] != MPX__AK_SET && kind[i] != MPX__AK_ASIDE && kind[i] != MPX__AK_ALIVE)
                continue;
            redisReply *t = pipe_read_ok("TYPE");
            const char *want = kind[i] == MPX__AK_ALIVE ? "string" : "set";
            if (!(t->type == REDIS_REPLY_STATUS || t->type == REDIS_REPLY_STRING) ||
                strcmp(t->str, want) != 0)
                kind[i] = MPX__AK_OTHER;
            freeReplyObject(t);
        }
        (void)sent;
        for (size_t i = 0; i < n; i++) {
            redisReply *k = arr->element[i];
            if (kind[i] != MPX__AK_SET && kind[i] != MPX__AK_ASIDE && kind[i] != MPX__AK_ALIVE)
                continue;
            mpx__admin_classify(&G.keys, k->str, k->len, addr);
            if (kind[i] == MPX__AK_ASIDE) {
                if (sl_has(&e->asides, k->str))
                    continue;
                sl_add(&e->asides, k->str, k->len);
                mpx__argv_reset(&a);
                mpx__admin_cmd_fix_aside(&G.keys, !e->fix, k->str, k->len, addr, &a);
                redisReply *r = run(&a);
                if (reply_int(r) == MPX__AC_ASIDE_LIST && e->fix) /* its drain cleans it */
                    sl_add(&e->draining, addr, strlen(addr));
                if (reply_int(r) == MPX__AC_ASIDE_LIST)
                    finding(e, K_ASIDE_UNLISTED, addr, k->str, k->len,
                            "cleanup set not listed in drains",
                            e->fix ? "listed and drained" : "would list and drain", e->fix);
                freeReplyObject(r);
                continue;
            }
            if (kind[i] == MPX__AK_SET) {
                if (sl_has(&e->setaddrs, addr))
                    continue;
                sl_add(&e->setaddrs, addr, strlen(addr));
            } else {
                if (sl_has(&alive_seen, addr))
                    continue;
                sl_add(&alive_seen, addr, strlen(addr));
            }
            if (sl_has(&e->servers, addr))
                continue;
            mpx__argv_reset(&a);
            mpx__admin_cmd_fix_server(&G.keys, !e->fix, addr, &a);
            redisReply *r = run(&a);
            long long code = reply_int(r);
            freeReplyObject(r);
            int fk = kind[i] == MPX__AK_SET ? K_SET_UNREG : K_ALIVE_UNREG;
            if (code == MPX__AC_SRV_READD) {
                finding(e, fk, addr, NULL, 0, "server live (alive key or lease)",
                        e->fix ? "re-registered" : "would re-register", e->fix);
                if (e->fix)
                    sl_add(&e->servers, addr, strlen(addr));
            } else if (code == MPX__AC_SRV_DEAD && fk == K_SET_UNREG) {
                if (sl_has(&e->draining, addr))
                    continue; /* a cleanup of that address is in progress */
                finding(e, fk, addr, NULL, 0, "server dead",
                        e->fix ? "members removed" : "would remove its members", e->fix);
            }
        }
        free(kind);
        freeReplyObject(h);
    }
    sl_free(&alive_seen);
    mpx__argv_free(&a);
    sl_sort(&e->servers);
}

typedef struct pair {
    const char *id, *addr;
    size_t idl, al;
} pair_t;

static int cmp_pair(const void *x, const void *y)
{
    const pair_t *a = x, *b = y;
    size_t n = a->al < b->al ? a->al : b->al;
    int c = memcmp(a->addr, b->addr, n);
    if (c)
        return c;
    return a->al < b->al ? -1 : a->al > b->al;
}

/* Confirm (and fix) hash suspects of one address. */
static void hash_suspects(engine_t *e, const char *addr, const char **ids, size_t *lens, size_t n,
                          mpx__argv_t *a)
{
    for (size_t base = 0; base < n; base += G.chunk) {
        size_t m = n - base < G.chunk ? n - base : G.chunk;
        mpx__argv_reset(a);
        mpx__admin_cmd_fix_hash(&G.keys, !e->fix, addr, ids + base, lens + base, m, a);
        redisReply *r = run_codes(a, m);
        for (size_t i = 0; i < m; i++) {
            long long code = reply_int(r->element[i]);
            const char *id = ids[base + i];
            size_t il = lens[base + i];
            switch (code) {
            case MPX__AC_HASH_ADD:
                finding(e, K_HASH_NOT_IN_SET, addr, id, il, "server live",
                        e->fix ? "added to its set" : "would add to its set", e->fix);
                break;
            case MPX__AC_HASH_DEL:
                finding(e, K_HASH_UNREG, addr, id, il, "server dead",
                        e->fix ? "deleted" : "would delete", e->fix);
                break;
            case MPX__AC_HASH_DEAD:
                finding(e, K_HASH_NOT_IN_SET, addr, id, il, "server dead",
                        "left to the reap of the server", false);
                break;
            case MPX__AC_HASH_UNREG_LIVE:
                finding(e, K_HASH_UNREG, addr, id, il, "server live but not registered",
                        "left until the server is registered again", false);
                break;
            default: break;
            }
        }
        freeReplyObject(r);
    }
}

/* Phase B: every entry of NS sparks (HSCAN COUNT chunk). */
static void phase_hash(engine_t *e)
{
    scan_t s;
    scan_init(&s, "HSCAN", G.keys.sparks, G.keys.sparks_len);
    redisReply *h, *arr;
    mpx__argv_t a;
    mpx__argv_init(&a);
    pair_t *pairs = NULL;
    const char **ids = NULL;
    size_t *lens = NULL, cap = 0;
    char addr[MPX_ADDRESS_MAX + 1];
    while ((arr = scan_next(&s, &h)) != NULL) {
        size_t n = arr->elements / 2;
        if (n == 0) {
            freeReplyObject(h);
            continue;
        }
        if (n > cap) {
            cap = n;
            pairs = xrealloc(pairs, cap * sizeof *pairs);
            ids = xrealloc(ids, cap * sizeof *ids);
            lens = xrealloc(lens, cap * sizeof *lens);
        }
        for (size_t i = 0; i < n; i++) {
            redisReply *k = arr->element[2 * i], *v = arr->element[2 * i + 1];
            pairs[i] = (pair_t){k->str, v->str, k->len, v->len};
        }
        e->sc_hash += n;
        qsort(pairs, n, sizeof *pairs, cmp_pair);
        for (size_t g = 0; g < n;) {
            size_t end = g + 1;
            while (end < n && cmp_pair(&pairs[g], &pairs[end]) == 0)
                end++;
            size_t m = end - g;
            if (pairs[g].al == 0 || pairs[g].al > MPX_ADDRESS_MAX ||
                memchr(pairs[g].addr, 0, pairs[g].al)) {
                /* not an address at all: a plain HDEL would be blind; report */
                for (size_t i = g; i < end; i++)
                    finding(e, K_HASH_UNREG, "(invalid address)", pairs[i].id, pairs[i].idl,
                            "hash value is not an address", "left", false);
                g = end;
                continue;
            }
            memcpy(addr, pairs[g].addr, pairs[g].al);
            addr[pairs[g].al] = 0;
            size_t ns = 0;
            if (sl_has(&e->draining, addr)) {
                e->draining_entries += m;
            } else if (sl_has(&e->servers, addr) && !e->no_smismember) {
                /* registered: only ids missing from its set are suspects */
                mpx__argv_reset(&a);
                push(&a, "SMISMEMBER");
                mpx__key_set(&G.keys, addr, &a);
                for (size_t i = g; i < end; i++)
                    mpx__argv_push(&a, pairs[i].id, pairs[i].idl);
                redisReply *r;
                if (mpx__conn_command(&G.conn, &a, &r) != 0) {
                    if (!strstr(mpx_last_error(), "unknown command"))
                        die_redis("redis");
                    e->no_smismember = true; /* Redis < 6.2: the script checks all */
                    for (size_t i = g; i < end; i++, ns++)
                        ids[ns] = pairs[i].id, lens[ns] = pairs[i].idl;
                } else {
                    if (r->type != REDIS_REPLY_ARRAY || r->elements != m)
                        die("redis: unexpected SMISMEMBER reply");
                    for (size_t i = 0; i < m; i++)
                        if (reply_int(r->element[i]) == 0)
                            ids[ns] = pairs[g + i].id, lens[ns++] = pairs[g + i].idl;
                    freeReplyObject(r);
                }
            } else {
                for (size_t i = g; i < end; i++, ns++)
                    ids[ns] = pairs[i].id, lens[ns] = pairs[i].idl;
            }
            if (ns)
                hash_suspects(e, addr, ids, lens, ns, &a);
            g = end;
        }
        freeReplyObject(h);
    }
    free(pairs);
    free(ids);
    free(lens);
    mpx__argv_free(&a);
}

/* Phase C: the members of every server's spark set (SSCAN COUNT chunk). */
static void phase_sets(engine_t *e)
{
    mpx__argv_t a, k;
    mpx__argv_init(&a);
    mpx__argv_init(&k);
    sl_sort(&e->setaddrs);
    const char **ids = NULL;
    size_t *lens = NULL, cap = 0;
    for (size_t si = 0; si < e->setaddrs.n; si++) {
        const char *addr = e->setaddrs.v[si];
        mpx__argv_reset(&k);
        mpx__key_set(&G.keys, addr, &k);
        mpx__argv_finish(&k);
        e->sc_sets++;
        scan_t s;
        scan_init(&s, "SSCAN", k.argv[0], k.lens[0]);
        redisReply *h, *arr;
        while ((arr = scan_next(&s, &h)) != NULL) {
            size_t n = arr->elements;
            e->sc_members += n;
            if (n == 0) {
                freeReplyObject(h);
                continue;
            }
            if (n > cap) {
                cap = n;
                ids = xrealloc(ids, cap * sizeof *ids);
                lens = xrealloc(lens, cap * sizeof *lens);
            }
            mpx__argv_reset(&a);
            push(&a, "HMGET");
            mpx__argv_push(&a, G.keys.sparks, G.keys.sparks_len);
            for (size_t i = 0; i < n; i++)
                mpx__argv_push(&a, arr->element[i]->str, arr->element[i]->len);
            redisReply *r = run(&a);
            if (r->type != REDIS_REPLY_ARRAY || r->elements != n)
                die("redis: unexpected HMGET reply");
            size_t ns = 0;
            for (size_t i = 0; i < n; i++) {
                redisReply *v = r->element[i];
                if (v->type != REDIS_REPLY_STRING || strcmp(v->str, addr) != 0)
                    ids[ns] = arr->element[i]->str, lens[ns++] = arr->element[i]->len;
            }
            for (size_t base = 0; base < ns; base += G.chunk) {
                size_t m = ns - base < G.chunk ? ns - base : G.chunk;
                mpx__argv_reset(&a);
                mpx__admin_cmd_fix_set(&G.keys, !e->fix, addr, ids + base, lens + base, m, &a);
                redisReply *c = run_codes(&a, m);
                for (size_t i = 0; i < m; i++) {
                    long long code = reply_int(c->element[i]);
                    if (code == MPX__AC_SET_OTHER || code == MPX__AC_SET_NONE)
                        finding(e, K_SET_STALE, addr, ids[base + i], lens[base + i],
                                code == MPX__AC_SET_OTHER ? "hash names another server"
                                                          : "hash has no entry",
                                e->fix ? "removed from the set" : "would remove from the set",
                                e->fix);
                }
                freeReplyObject(c);
            }
            freeReplyObject(r);
            freeReplyObject(h);
        }
    }
    free(ids);
    free(lens);
    mpx__argv_free(&a);
    mpx__argv_free(&k);
}

/* Phase D: registered servers without an alive key. */
static void phase_servers(engine_t *e)
{
    strlist_t servers = {0};
    load_servers(&servers);
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (size_t base = 0; base < servers.n; base += 100) {
        size_t m = servers.n - base < 100 ? servers.n - base : 100;
        for (size_t i = 0; i < m; i++) {
            push(&a, "EXISTS");
            mpx__key_alive(&G.keys, servers.v[base + i], &a);
            pipe_send(&a);
            push(&a, "EXISTS");
            mpx__key_lease(&G.keys, servers.v[base + i], &a);
            pipe_send(&a);
        }
        for (size_t i = 0; i < m; i++) {
            const char *addr = servers.v[base + i];
            redisReply *r = pipe_read_ok("EXISTS");
            long long alive = reply_int(r);
            freeReplyObject(r);
            r = pipe_read_ok("EXISTS");
            long long lease = reply_int(r);
            freeReplyObject(r);
            e->sc_servers++;
            if (alive == 1)
                continue;
            if (e->ndead == e->dead_cap) {
                e->dead_cap = e->dead_cap ? 2 * e->dead_cap : 8;
                e->dead = xrealloc(e->dead, e->dead_cap * sizeof *e->dead);
            }
            e->dead[e->ndead++] = (dead_t){xstrndup(addr, strlen(addr)), now_ms(), lease == 1};
            char detail[96];
            if (lease == 1)
                snprintf(detail, sizeof detail, "its lease is still held");
            else
                snprintf(detail, sizeof detail, "alive key gone");
            const char *action = lease == 1 ? "left: a live C process holds the address"
                                 : e->fix   ? "reap after --interval unless it comes back"
                                            : "would reap after --interval unless it comes back";
            finding(e, K_SERVER_NO_ALIVE, addr, NULL, 0, detail, action, false);
        }
    }
    mpx__argv_free(&a);
    sl_free(&servers);
}

/* One whole scan. */
static void engine_pass(engine_t *e)
{
    sl_free(&e->servers);
    sl_free(&e->draining);
    sl_free(&e->setaddrs);
    sl_free(&e->asides);
    for (size_t i = 0; i < e->ndead; i++)
        free(e->dead[i].addr);
    e->ndead = 0;
    load_servers(&e->servers);
    load_draining(&e->draining, &e->drains_pending);
    phase_keys(e);
    phase_hash(e);
    phase_sets(e);
    phase_servers(e);
}

static void print_counts_json(const uint64_t *counts)
{
    printf("{");
    for (int k = 0; k < K_COUNT; k++)
        printf("%s\"%s\":%" PRIu64, k ? "," : "", kind_names[k], counts[k]);
    printf("}");
}

static void print_counts_text(const uint64_t *counts)
{
    int first = 1;
    for (int k = 0; k < K_COUNT; k++)
        if (counts[k]) {
            printf("%s%s %" PRIu64, first ? " (" : ", ", kind_names[k], counts[k]);
            first = 0;
        }
    if (!first)
        putchar(')');
}

static void print_scanned_json(const engine_t *e)
{
    printf("{\"keys\":%" PRIu64 ",\"hash_entries\":%" PRIu64 ",\"sets\":%" PRIu64
           ",\"set_members\":%" PRIu64 ",\"servers\":%" PRIu64 "}",
           e->sc_keys, e->sc_hash, e->sc_sets, e->sc_members, e->sc_servers);
}

static int cmd_check(int argc, char **argv)
{
    (void)argv;
    if (argc > 0)
        die_usage("check takes no arguments");
    uint64_t t0 = now_ms();
    engine_t e = {0};
    if (G.json) {
        printf("{\"command\":\"check\",\"namespace\":");
        jstrz(G.ns);
        printf(",\"findings\":[");
    }
    engine_pass(&e);
    uint64_t ms = now_ms() - t0;
    if (G.json) {
        printf("],\"problems\":%" PRIu64 ",\"counts\":", e.found);
        print_counts_json(e.counts);
        printf(",\"drains_pending\":%" PRIu64 ",\"draining_entries\":%" PRIu64 ",\"scanned\":",
               e.drains_pending, e.draining_entries);
        print_scanned_json(&e);
        printf(",\"elapsed_ms\":%" PRIu64 "}\n", ms);
    } else {
        printf("check: %" PRIu64 " problem%s", e.found, e.found == 1 ? "" : "s");
        print_counts_text(e.counts);
        printf("; scanned %" PRIu64 " keys, %" PRIu64 " hash entries, %" PRIu64
               " spark sets (%" PRIu64 " members), %" PRIu64 " servers in %" PRIu64 " ms",
               e.sc_keys, e.sc_hash, e.sc_sets, e.sc_members, e.sc_servers, ms);
        if (e.drains_pending)
            printf("; %" PRIu64 " cleanups in progress (%" PRIu64 " entries)", e.drains_pending,
                   e.draining_entries);
        putchar('\n');
    }
    uint64_t found = e.found;
    engine_free(&e);
    return found ? 1 : 0;
}

/* Sleep up to ms, in steps, returning early on SIGINT. */
static void nap(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    if (!interrupted)
        nanosleep(&ts, NULL);
}

/* Reap the registered servers found without an alive key, after the rule:
 * each must have been seen continuously without alive key and lease for
 * --interval ms (re-checked every second). Returns the number reaped. */
static size_t reap_dead(engine_t *e)
{
    size_t reaped = 0, left = 0;
    mpx__argv_t a;
    mpx__argv_init(&a);
    bool *done = xmalloc(e->ndead * sizeof *done);
    for (size_t i = 0; i < e->ndead; i++) {
        done[i] = e->dead[i].lease;
        left += !done[i];
    }
    e->followup = true;
    if (left && !G.json)
        fprintf(stderr, CLI_NAME ": waiting up to %u ms before reaping %zu server%s\n",
                G.interval_ms, left, left == 1 ? "" : "s");
    while (left && !interrupted) {
        uint64_t now = now_ms(), next = UINT64_MAX;
        for (size_t i = 0; i < e->ndead; i++) {
            if (done[i])
                continue;
            dead_t *d = &e->dead[i];
            /* still dead? */
            mpx__argv_reset(&a);
            push(&a, "EXISTS");
            mpx__key_alive(&G.keys, d->addr, &a);
            mpx__key_lease(&G.keys, d->addr, &a);
            redisReply *r = run(&a);
            long long ex = reply_int(r);
            freeReplyObject(r);
            if (ex > 0) {
                done[i] = true, left--;
                finding(e, K_SERVER_NO_ALIVE, d->addr, NULL, 0, "came back during the wait",
                        "kept", true);
                continue;
            }
            if (now - d->first_missing_ms >= G.interval_ms) {
                int retired = 0;
                if (mpx__admin_retire(registry(), d->addr, &retired) != 0)
                    die_redis("reaping");
                done[i] = true, left--;
                if (retired)
                    reaped++;
                finding(e, K_SERVER_NO_ALIVE, d->addr, NULL, 0,
                        retired ? "alive key gone for --interval" : "no longer registered",
                        retired ? "reaped" : "already gone", true);
                continue;
            }
            uint64_t due = d->first_missing_ms + G.interval_ms;
            if (due < next)
                next = due;
        }
        if (left) {
            uint64_t w = next > now ? next - now : 0;
            nap(w < 1000 ? w : 1000);
        }
    }
    e->followup = false;
    free(done);
    mpx__argv_free(&a);
    return reaped;
}

static int cmd_repair(int argc, char **argv)
{
    (void)argv;
    if (argc > 0)
        die_usage("repair takes no arguments");
    uint64_t t0 = now_ms();
    engine_t e = {0};
    e.fix = !G.dry_run;
    e.repair = 1;
    if (G.json) {
        printf("{\"command\":\"repair\",\"namespace\":");
        jstrz(G.ns);
        printf(",\"dry_run\":%s,\"interval_ms\":%u,\"findings\":[", G.dry_run ? "true" : "false",
               G.interval_ms);
    }
    if (e.fix && mpx__admin_drain(registry()) != 0) /* finish pending cleanups first */
        die_redis("draining");
    engine_pass(&e);
    int passes = 1;
    size_t reaped = 0;
    if (e.fix) {
        if (mpx__admin_drain(registry()) != 0) /* aside sets just listed */
            die_redis("draining");
        if (e.ndead && !G.no_wait)
            reaped = reap_dead(&e);
        if (reaped) {
            /* entries of the reaped servers that were missing from their sets */
            engine_pass(&e);
            passes++;
            if (mpx__admin_drain(registry()) != 0)
                die_redis("draining");
        }
    }
    uint64_t found = e.found, fixed = e.fixed;
    uint64_t counts[K_COUNT];
    memcpy(counts, e.counts, sizeof counts);
    uint64_t remaining = found;
    if (e.fix) {
        /* verify: a read-only pass, listing what is still wrong */
        engine_t v = {0};
        v.label = "remaining";
        engine_pass(&v);
        remaining = v.found;
        engine_free(&v);
    }
    uint64_t ms = now_ms() - t0;
    if (G.json) {
        printf("],\"found\":%" PRIu64 ",\"fixed\":%" PRIu64 ",\"remaining\":%" PRIu64
               ",\"reaped\":%zu,\"passes\":%d,\"counts\":",
               found, fixed, remaining, reaped, passes);
        print_counts_json(counts);
        printf(",\"elapsed_ms\":%" PRIu64 "}\n", ms);
    } else {
        printf("repair%s: %" PRIu64 " finding%s", G.dry_run ? " (dry run)" : "", found,
               found == 1 ? "" : "s");
        print_counts_text(counts);
        printf(", %" PRIu64 " fixed, %zu server%s reaped, %" PRIu64 " remaining, %" PRIu64
               " ms\n",
               fixed, reaped, reaped == 1 ? "" : "s", remaining, ms);
    }
    engine_free(&e);
    if (interrupted)
        return 1;
    return remaining ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* reap                                                                     */
/* ------------------------------------------------------------------------ */

static int cmd_reap(int argc, char **argv)
{
    (void)argv;
    if (argc > 0)
        die_usage("reap takes no arguments");
    size_t n = 0;
    uint64_t t0 = now_ms();
    if (mpx_reap(registry(), &n) != 0)
        die_redis("reap");
    mpx_stats_t st;
    mpx_stats(G.reg, &st);
    uint64_t ms = now_ms() - t0;
    if (G.json) {
        printf("{\"command\":\"reap\",\"namespace\":");
        jstrz(G.ns);
        printf(",\"reaped\":%zu,\"sparks_removed\":%" PRIu64 ",\"elapsed_ms\":%" PRIu64 "}\n",
               n, st.reaped_sparks, ms);
    } else
        printf("reaped %zu server%s (%" PRIu64 " sparks removed) in %" PRIu64 " ms\n", n,
               n == 1 ? "" : "s", st.reaped_sparks, ms);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* watch                                                                    */
/* ------------------------------------------------------------------------ */

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

typedef struct snap {
    strlist_t servers;
    long long *sparks;
    bool *live;
    long long total;
    uint64_t t_ms;
} snap_t;

static void snap_free(snap_t *s)
{
    sl_free(&s->servers);
    free(s->sparks);
    free(s->live);
    memset(s, 0, sizeof *s);
}

static void snap_take(snap_t *s)
{
    load_servers(&s->servers);
    size_t n = s->servers.n;
    s->sparks = xmalloc(n * sizeof *s->sparks);
    s->live = xmalloc(n * sizeof *s->live);
    mpx__argv_t a;
    mpx__argv_init(&a);
    push(&a, "HLEN");
    mpx__argv_push(&a, G.keys.sparks, G.keys.sparks_len);
    pipe_send(&a);
    for (size_t i = 0; i < n; i++) {
        push(&a, "SCARD");
        mpx__key_set(&G.keys, s->servers.v[i], &a);
        pipe_send(&a);
        push(&a, "EXISTS");
        mpx__key_alive(&G.keys, s->servers.v[i], &a);
        pipe_send(&a);
    }
    redisReply *r = pipe_read_ok("HLEN");
    s->total = reply_int(r);
    freeReplyObject(r);
    for (size_t i = 0; i < n; i++) {
        r = pipe_read_ok("SCARD");
        s->sparks[i] = reply_int(r);
        freeReplyObject(r);
        r = pipe_read_ok("EXISTS");
        s->live[i] = reply_int(r) == 1;
        freeReplyObject(r);
    }
    mpx__argv_free(&a);
    s->t_ms = now_ms();
}

/* Rate of a count between two snapshots, per second; NAN-free: 0 if no
 * previous value. */
static double rate(long long now, long long before, uint64_t dt_ms, bool have)
{
    if (!have || dt_ms == 0)
        return 0;
    return (double)(now - before) * 1000.0 / (double)dt_ms;
}

static long long prev_count(const snap_t *p, const char *addr, bool *have)
{
    *have = false;
    if (!p->servers.v)
        return 0;
    const char *key = addr;
    char **hit = bsearch(&key, p->servers.v, p->servers.n, sizeof *p->servers.v, cmp_str);
    if (!hit)
        return 0;
    *have = true;
    return p->sparks[hit - p->servers.v];
}

static int cmd_watch(int argc, char **argv)
{
    (void)argv;
    if (argc > 0)
        die_usage("watch takes no arguments");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: the sleep ends at once */
    sigaction(SIGTERM, &sa, NULL);
    bool tty = !G.json && isatty(STDOUT_FILENO);
    snap_t prev = {0}, cur = {0};
    bool have_prev = false;
    for (long tick = 0; !interrupted && (G.count == 0 || tick < G.count); tick++) {
        uint64_t start = now_ms();
        snap_take(&cur);
        uint64_t dt = have_prev ? cur.t_ms - prev.t_ms : 0;
        size_t live = 0;
        for (size_t i = 0; i < cur.servers.n; i++)
            live += cur.live[i];
        double total_rate = rate(cur.total, prev.total, dt, have_prev);
        if (G.json) {
            printf("{\"command\":\"watch\",\"namespace\":");
            jstrz(G.ns);
            printf(",\"tick\":%ld,\"time_ms\":%" PRIu64 ",\"servers\":%zu,\"live\":%zu,"
                   "\"sparks\":%lld,\"sparks_per_s\":",
                   tick, mpx__epoch_ms(), cur.servers.n, live, cur.total);
            if (have_prev)
                printf("%.1f", total_rate);
            else
                fputs("null", stdout);
            printf(",\"per_server\":[");
            for (size_t i = 0; i < cur.servers.n; i++) {
                bool h;
                long long before = prev_count(&prev, cur.servers.v[i], &h);
                printf("%s{\"address\":", i ? "," : "");
                jstrz(cur.servers.v[i]);
                printf(",\"live\":%s,\"sparks\":%lld,\"sparks_per_s\":",
                       cur.live[i] ? "true" : "false", cur.sparks[i]);
                if (have_prev && h)
                    printf("%.1f", rate(cur.sparks[i], before, dt, true));
                else
                    fputs("null", stdout);
                putchar('}');
            }
            printf("]}\n");
        } else {
            if (tty)
                fputs("\033[H\033[2J", stdout);
            time_t t = time(NULL);
            struct tm tmv;
            char ts[32];
            localtime_r(&t, &tmv);
            strftime(ts, sizeof ts, "%H:%M:%S", &tmv);
            printf("%s  %s  servers %zu (%zu live)  sparks %lld", ts, G.ns, cur.servers.n, live,
                   cur.total);
            if (have_prev)
                printf("  %+.1f/s", total_rate);
            putchar('\n');
            for (size_t i = 0; i < cur.servers.n; i++) {
                bool h;
                long long before = prev_count(&prev, cur.servers.v[i], &h);
                printf("  %-4s %10lld", cur.live[i] ? "live" : "dead", cur.sparks[i]);
                if (have_prev && h)
                    printf(" %+10.1f/s", rate(cur.sparks[i], before, dt, true));
                else
                    printf(" %12s", "");
                printf("  %s\n", cur.servers.v[i]);
            }
        }
        fflush(stdout);
        snap_free(&prev);
        prev = cur;
        memset(&cur, 0, sizeof cur);
        have_prev = true;
        if (G.count && tick + 1 >= G.count)
            break;
        uint64_t el = now_ms() - start;
        if (el < 1000)
            nap(1000 - el);
    }
    snap_free(&prev);
    snap_free(&cur);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* main                                                                     */
/* ------------------------------------------------------------------------ */

static const char usage_text[] =
"Usage: " CLI_NAME " [OPTIONS] COMMAND [ARGS]\n"
"\n"
"Inspect and repair a metroplex registry in Redis (the keys of the Node.js\n"
"plugin metroplex and of metroplex-c; see docs/keyspace.md).\n"
"\n"
"Commands\n"
"  servers        every registered server: spark count (SCARD of its set),\n"
"                 alive-key age (now - the heartbeat time it holds), remaining\n"
"                 expiry (PTTL), live or dead (dead = alive key gone)\n"
"  spark ID...    the server holding each spark id ('-' where unknown)\n"
"  stats          totals: servers, sparks (HLEN), keys and Redis memory used by\n"
"                 the namespace (MEMORY USAGE key SAMPLES 5), largest servers\n"
"  check          consistency scan in bounded chunks; lists every problem:\n"
"                   hash-not-in-set     hash entry missing from its server's set\n"
"                   hash-unregistered   hash entry naming a server not registered\n"
"                   set-stale           set member whose hash entry names another\n"
"                                       server or none\n"
"                   set-unregistered    spark set of a server not registered\n"
"                   alive-unregistered  alive key of a server not registered\n"
"                   server-no-alive     registered server without an alive key\n"
"                   aside-unlisted      cleanup set missing from NS drains\n"
"                 exit status 1 when anything is found\n"
"  repair         fix what check finds, in bounded chunks; each fix is re-checked\n"
"                 atomically (Lua) when applied and made only if still wrong:\n"
"                   hash entries naming a server that is neither registered nor\n"
"                   live are deleted; set members whose hash entry names another\n"
"                   server or none are removed; entries of a live server missing\n"
"                   from its set are added; live servers missing from NS servers\n"
"                   are added back; unlisted cleanup sets are listed and drained;\n"
"                   a registered server without an alive key is reaped (library\n"
"                   scripts retire + drain) only once its alive key and lease\n"
"                   have been seen absent for --interval ms, re-checked every\n"
"                   second (repair waits for that; --no-wait skips it)\n"
"                 then verifies with a read-only pass; exit 1 if anything remains\n"
"  reap           reap dead servers now, as the heartbeat does (no waiting: any\n"
"                 registered server whose alive key and lease are gone)\n"
"  watch          live view refreshed every second: servers, sparks, rates\n"
"\n"
"Options (anywhere on the line; '--' ends them)\n"
"  -r, --redis URL      redis://[[user]:password@]host[:port][/db] or\n"
"                       unix:///path[?db=N]   (default redis://127.0.0.1:6379)\n"
"  -n, --namespace NS   key prefix without the colon (default metroplex)\n"
"  -j, --json           machine-readable output: one JSON object (watch: one per\n"
"                       line per tick); formats in docs/cli.md\n"
"  -i, --interval MS    heartbeat interval of the cluster (default 300000); repair\n"
"                       reaps a server only after its alive key has been gone\n"
"                       this long (300..86400000)\n"
"      --dry-run        repair: report what would be fixed, change nothing\n"
"      --no-wait        repair: do not wait --interval to reap dead servers\n"
"      --chunk N        ids / entries per Redis call (default 1000, 1..5000)\n"
"      --top N          stats: how many largest servers (default 10)\n"
"  -c, --count N        watch: stop after N refreshes (default: until SIGINT)\n"
"      --timeout MS     Redis command timeout (default 10000)\n"
"  -h, --help           this help\n"
"  -V, --version        version\n"
"\n"
"Exit status: 0 fine; 1 problems found (check; repair --dry-run with findings;\n"
"repair that left something unfixed or was interrupted); 2 usage error or\n"
"Redis error (one line on stderr).\n";

static uint32_t parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || errno || s[0] == '-' || v < min || v > max)
        die_usage("%s: '%s' must be an integer in %u..%u", opt, s, min, max);
    return (uint32_t)v;
}

int main(int argc, char **argv)
{
    G.url = "redis://127.0.0.1:6379";
    G.ns = "metroplex";
    G.interval_ms = 300000;
    G.chunk = 1000;
    G.top = 10;
    G.timeout_ms = 10000;
    enum { O_DRY = 256, O_NOWAIT, O_CHUNK, O_TOP, O_TIMEOUT };
    static const struct option longopts[] = {
        {"redis", required_argument, NULL, 'r'},   {"namespace", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},          {"interval", required_argument, NULL, 'i'},
        {"dry-run", no_argument, NULL, O_DRY},     {"no-wait", no_argument, NULL, O_NOWAIT},
        {"chunk", required_argument, NULL, O_CHUNK}, {"top", required_argument, NULL, O_TOP},
        {"count", required_argument, NULL, 'c'},   {"timeout", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, 'h'},          {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":r:n:ji:c:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'r': G.url = optarg; break;
        case 'n': G.ns = optarg; break;
        case 'j': G.json = 1; break;
        case 'i': G.interval_ms = parse_u32("--interval", optarg, 300, 86400000); break;
        case O_DRY: G.dry_run = 1; break;
        case O_NOWAIT: G.no_wait = 1; break;
        case O_CHUNK: G.chunk = parse_u32("--chunk", optarg, 1, 5000); break;
        case O_TOP: G.top = parse_u32("--top", optarg, 0, 1000000); break;
        case 'c': G.count = (long)parse_u32("--count", optarg, 1, 1000000000); break;
        case O_TIMEOUT: G.timeout_ms = parse_u32("--timeout", optarg, 1, 600000); break;
        case 'h': fputs(usage_text, stdout); return 0;
        case 'V':
            printf(CLI_NAME " %d.%d.%d\n", MPX_VERSION_MAJOR, MPX_VERSION_MINOR,
                   MPX_VERSION_PATCH);
            return 0;
        case ':': die_usage("option '%s' needs a value", argv[optind - 1]);
        default: die_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        die_usage("no command given");
    const char *cmd = argv[optind];
    int cargc = argc - optind - 1;
    char **cargv = argv + optind + 1;
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"servers", cmd_servers}, {"spark", cmd_spark}, {"stats", cmd_stats},
                {"check", cmd_check},     {"repair", cmd_repair}, {"reap", cmd_reap},
                {"watch", cmd_watch}};
    int (*fn)(int, char **) = NULL;
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(cmd, cmds[i].name) == 0)
            fn = cmds[i].fn;
    if (!fn)
        die_usage("unknown command '%s'", cmd);
    if (G.dry_run && fn != cmd_repair)
        die_usage("--dry-run applies to repair only");
    if (!*G.ns || strlen(G.ns) > MPX_NAMESPACE_MAX)
        die_usage("--namespace: 1..%d bytes", MPX_NAMESPACE_MAX);
    signal(SIGPIPE, SIG_IGN);
    atexit(cleanup);
    connect_redis();
    int rc = fn(cargc, cargv);
    fflush(stdout);
    return rc;
}
