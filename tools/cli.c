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
 *   src/admin.c. On a redis-cluster:// URL that connection routes every
 *   command by its first key's slot (src/cluster.c); SCAN runs on every
 *   master (mpx__conn_node_command). `reap` and the reaping step of `repair`
 *   use a registry made with mpx_create() and never registered, so dead
 *   servers are removed by exactly the library's mechanism (scripts
 *   `retire` and `drain`, or their sharded versions).
 *
 * Layouts (docs/keyspace.md)
 *   The node layout (the original's keys) and the sharded layout (Redis
 *   Cluster). --layout picks one; by default the namespace's "{ns}:layout"
 *   key (written by the first sharded registration) selects the sharded
 *   layout with its shard count, a redis-cluster:// URL implies it, and
 *   otherwise the node layout is used. Every key name comes from keys.c.
 *   The sharded check keeps its per-shard work inside one hash slot: a
 *   shard's hash, markers and generation sets are read with single-slot
 *   commands and fixed by single-slot scripts (src/admin.c); what those
 *   need from the control slot is read first and passed in.
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
#include "cluster.h"
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
    int layout_opt;      /* --layout: MPX_LAYOUT_AUTO (not given), _NODE or _SHARDED */
    uint32_t shards_opt; /* --shards, 0 = not given */
    bool sharded;        /* the layout in use (G.keys.layout == MPX_LAYOUT_SHARDED) */
    bool shards_assumed; /* sharded, but S neither in {ns}:layout nor from --shards */
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
    if (G.have_ep)
        mpx__conn_free(&G.conn);
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

/* The namespace's recorded layout: "{ns}:layout" ("sharded <S>"). Returns
 * the shard count, or 0 when the key does not exist. */
static uint32_t recorded_shards(void)
{
    mpx__keys_t probe;
    if (mpx__keys_init_layout(&probe, G.ns, MPX_LAYOUT_SHARDED, 1) != 0)
        die("out of memory");
    mpx__argv_t a;
    mpx__argv_init(&a);
    mpx__argv_push(&a, "GET", 3);
    mpx__argv_push(&a, probe.layout_key, probe.layout_key_len);
    redisReply *r;
    if (mpx__conn_command(&G.conn, &a, &r) != 0)
        die_redis("redis");
    mpx__argv_free(&a);
    uint32_t shards = 0;
    if (r->type == REDIS_REPLY_STRING) {
        char *end;
        errno = 0;
        unsigned long v = strncmp(r->str, "sharded ", 8) == 0 ? strtoul(r->str + 8, &end, 10) : 0;
        if (v < 1 || v > 16384 || errno || *end)
            die("%s holds '%.100s', not 'sharded <1..16384>'", probe.layout_key, r->str);
        shards = (uint32_t)v;
    }
    freeReplyObject(r);
    mpx__keys_free(&probe);
    return shards;
}

static void connect_redis(void)
{
    if (mpx__parse_redis_url(G.url, &G.ep) != 0)
        die_usage("--redis: %s", mpx_last_error());
    G.have_ep = true;
    if (G.ep.cluster && G.layout_opt == MPX_LAYOUT_NODE)
        die_usage("--layout node: the node layout cannot run on Redis Cluster "
                  "(a redis-cluster:// URL); use --layout sharded");
    mpx__conn_init(&G.conn, &G.ep, 2000, G.timeout_ms, "cli", NULL);
    if (mpx__conn_ensure(&G.conn, true) != 0)
        die_redis("cannot use redis");
    /* The layout: --layout, else the recorded one, else the URL's kind. */
    uint32_t shards = 1;
    int layout = G.layout_opt;
    if (layout != MPX_LAYOUT_NODE) {
        uint32_t rec = recorded_shards();
        if (layout == MPX_LAYOUT_AUTO)
            layout = rec || G.ep.cluster || G.shards_opt ? MPX_LAYOUT_SHARDED : MPX_LAYOUT_NODE;
        if (layout == MPX_LAYOUT_SHARDED) {
            if (rec && G.shards_opt && rec != G.shards_opt)
                die("namespace '%s' uses the sharded layout with %u shards ({%s}:layout), "
                    "not --shards %u", G.ns, rec, G.ns, G.shards_opt);
            shards = rec ? rec : G.shards_opt ? G.shards_opt : 64;
            G.shards_assumed = !rec && !G.shards_opt;
        }
    }
    if (layout == MPX_LAYOUT_NODE && G.shards_opt)
        die_usage("--shards applies to the sharded layout only");
    G.sharded = layout == MPX_LAYOUT_SHARDED;
    if (mpx__keys_init_layout(&G.keys, G.ns, layout, shards) != 0)
        die("out of memory");
    G.have_keys = true;
}

/* "layout":... fields of the JSON outputs, after "namespace". */
static void json_layout(void)
{
    if (G.sharded)
        printf(",\"layout\":\"sharded\",\"shards\":%u", (unsigned)G.keys.nshards);
    else
        printf(",\"layout\":\"node\"");
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

/* The registry's background reports (a cleanup that failed on a broken
 * key, for one): warnings on stderr. */
static void on_registry_error(mpx_t *m, int err, const char *message, void *data)
{
    (void)m, (void)err, (void)data;
    fprintf(stderr, CLI_NAME ": warning: %s\n", message);
}

/* A registry for reaping: created, never registered; the layout in use. */
static mpx_t *registry(void)
{
    if (G.reg)
        return G.reg;
    mpx_options_t o;
    mpx_options_init(&o);
    o.redis_url = G.url;
    o.ns = G.ns;
    o.layout = G.keys.layout;
    o.shards = G.keys.nshards;
    o.on_error = on_registry_error;
    o.interval_ms = G.interval_ms;
    o.latency_ms = G.interval_ms > 8000 ? 2000 : G.interval_ms / 4;
    o.lease_ms = G.interval_ms < 10000 ? G.interval_ms : 10000;
    o.command_timeout_ms = G.timeout_ms;
    o.reap_chunk = G.chunk;
    if (mpx_create(&o, &G.reg) != 0)
        die_redis("cannot create a registry");
    return G.reg;
}

/* Finish every pending cleanup with the library's drain. A cleanup that
 * fails on a broken entry (reported as a warning) does not stop the
 * others nor the command; a connection failure does. */
static void drain_pending(void)
{
    int rc = mpx__admin_drain(registry());
    if (rc == MPX_EREDIS || rc == MPX_EPROTO || rc == MPX_ESTATE)
        fprintf(stderr, CLI_NAME ": warning: %s\n", mpx_last_error());
    else if (rc)
        die_redis("draining");
}

/* ------------------------------------------------------------------------ */
/* Batches: commands pipelined through mpx__conn_pipeline (on a cluster,    */
/* split per master), each touching the keys of one slot                   */
/* ------------------------------------------------------------------------ */

#define BATCH_WINDOW 512 /* commands per mpx__conn_pipeline call */

/* A pipe that grows as commands are added ({0}: empty; mpx__pipe_clear
 * empties it again, mpx__pipe_free releases it). */
typedef mpx__pipe_t batch_t;

/* A fresh command at the end of the batch. The pointer is valid until the
 * next batch_add (fill it before adding another). */
static mpx__argv_t *batch_add(batch_t *b)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        b->cmds = xrealloc(b->cmds, cap * sizeof *b->cmds);
        b->cp = xrealloc(b->cp, cap * sizeof *b->cp);
        b->rep = xrealloc(b->rep, cap * sizeof *b->rep);
        b->rcs = xrealloc(b->rcs, cap * sizeof *b->rcs);
        for (size_t i = 0; i < b->n; i++)
            b->cp[i] = &b->cmds[i]; /* the commands moved */
        for (size_t i = b->cap; i < cap; i++) {
            mpx__argv_init(&b->cmds[i]);
            b->rep[i] = NULL;
            b->rcs[i] = 0;
        }
        b->cap = cap;
    }
    return mpx__pipe_add(b);
}

/* Send every command, read every reply, BATCH_WINDOW commands at a time.
 * Returns 0, or the first error (the failed commands have rcs[i] != 0 and
 * rep[i] NULL). */
static int batch_exec(batch_t *b)
{
    int first = 0;
    for (size_t base = 0; base < b->n; base += BATCH_WINDOW) {
        size_t m = b->n - base < BATCH_WINDOW ? b->n - base : BATCH_WINDOW;
        mpx__pipe_t w = {.n = m, .cap = m, .cmds = b->cmds + base, .cp = b->cp + base,
                         .rep = b->rep + base, .rcs = b->rcs + base};
        int rc = mpx__pipe_run(&w, &G.conn);
        if (rc && !first)
            first = rc;
    }
    return first;
}

/* As batch_exec; any failure ends the program. */
static void batch_run(batch_t *b, const char *what)
{
    if (batch_exec(b) != 0)
        die("redis: %s: %s", what, mpx_last_error());
}

/* The reply of command i, which must be an array of n elements. */
static redisReply *batch_array(batch_t *b, size_t i, size_t n, const char *what)
{
    redisReply *r = b->rep[i];
    if (!r || r->type != REDIS_REPLY_ARRAY || (n != SIZE_MAX && r->elements != n))
        die("redis: unexpected reply to %s", what);
    return r;
}

/* ------------------------------------------------------------------------ */
/* SCAN on every master                                                     */
/* ------------------------------------------------------------------------ */

/* How many commands to keep in flight in the sharded scans: one per master
 * (a single Redis: one), so each master serves one bounded command of ours
 * at a time and stays responsive to others. */
static size_t inflight(void)
{
    size_t n = mpx__conn_nodes(&G.conn);
    return n < 1 ? 1 : n > 16 ? 16 : n;
}

/* The index of master `name` now, or die (it left: a failover mid-scan). */
static size_t node_index(const char *name)
{
    size_t n = mpx__conn_nodes(&G.conn);
    for (size_t i = 0; i < n; i++) {
        const char *x = mpx__conn_node_name(&G.conn, i);
        if (x && strcmp(x, name) == 0)
            return i;
    }
    die("redis: master %s is gone (failover or reshard during the scan): run again", name);
}

/* SCAN 0.. MATCH pattern COUNT chunk on every master (pattern: ctl ? the
 * control keys' : the namespace's); fn(ctx, node, keys) per non-empty
 * chunk. fn may send other commands: the master is found again by name for
 * each SCAN step. */
static void scan_nodes(bool ctl, void (*fn)(void *ctx, size_t node, redisReply *keys),
                       void *ctx)
{
    if (mpx__conn_ensure(&G.conn, true) != 0)
        die_redis("redis");
    size_t nn = mpx__conn_nodes(&G.conn);
    if (nn == 0)
        die("redis: no master known");
    char **names = xmalloc(nn * sizeof *names);
    for (size_t i = 0; i < nn; i++) {
        const char *x = mpx__conn_node_name(&G.conn, i);
        names[i] = xstrndup(x ? x : "?", x ? strlen(x) : 1);
    }
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (size_t j = 0; j < nn; j++) {
        char cursor[32] = "0";
        do {
            size_t idx = node_index(names[j]);
            mpx__argv_reset(&a);
            push(&a, "SCAN");
            push(&a, cursor);
            push(&a, "MATCH");
            if (ctl)
                mpx__admin_match_ctl(&G.keys, &a);
            else
                mpx__admin_match(&G.keys, &a);
            push(&a, "COUNT");
            mpx__argv_pushf(&a, "%u", G.chunk);
            redisReply *r;
            if (mpx__conn_node_command(&G.conn, idx, &a, &r) != 0)
                die_redis("redis");
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
                r->element[0]->type != REDIS_REPLY_STRING ||
                r->element[1]->type != REDIS_REPLY_ARRAY)
                die("redis: unexpected SCAN reply from %s", names[j]);
            snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
            if (r->element[1]->elements)
                fn(ctx, idx, r->element[1]);
            freeReplyObject(r);
        } while (strcmp(cursor, "0") != 0 && !interrupted);
    }
    mpx__argv_free(&a);
    for (size_t i = 0; i < nn; i++)
        free(names[i]);
    free(names);
}

/* ------------------------------------------------------------------------ */
/* Small sorted maps (control hashes: address -> generation, ...)           */
/* ------------------------------------------------------------------------ */

typedef struct kv {
    char *k, *v;
} kv_t;

typedef struct kvl {
    kv_t *v;
    size_t n, cap;
} kvl_t;

static int cmp_kv(const void *a, const void *b)
{
    return strcmp(((const kv_t *)a)->k, ((const kv_t *)b)->k);
}

static kv_t *kvl_find(const kvl_t *l, const char *k)
{
    kv_t key = {(char *)k, NULL};
    return l->n ? bsearch(&key, l->v, l->n, sizeof *l->v, cmp_kv) : NULL;
}

static const char *kvl_get(const kvl_t *l, const char *k)
{
    kv_t *e = kvl_find(l, k);
    return e ? e->v : NULL;
}

/* Set k -> v (replacing), keeping the list sorted. */
static void kvl_set(kvl_t *l, const char *k, size_t kn, const char *v, size_t vn)
{
    char *key = xstrndup(k, kn);
    kv_t *e = kvl_find(l, key);
    if (e) {
        free(key);
        free(e->v);
        e->v = xstrndup(v, vn);
        return;
    }
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    size_t pos = l->n;
    while (pos > 0 && strcmp(l->v[pos - 1].k, key) > 0)
        pos--;
    memmove(l->v + pos + 1, l->v + pos, (l->n - pos) * sizeof *l->v);
    l->v[pos] = (kv_t){key, xstrndup(v, vn)};
    l->n++;
}

static void kvl_del(kvl_t *l, const char *k)
{
    kv_t *e = kvl_find(l, k);
    if (!e)
        return;
    free(e->k);
    free(e->v);
    size_t pos = (size_t)(e - l->v);
    memmove(l->v + pos, l->v + pos + 1, (l->n - pos - 1) * sizeof *l->v);
    l->n--;
}

static void kvl_free(kvl_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].k);
        free(l->v[i].v);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* A whole hash, HSCAN COUNT chunk (control hashes, shard markers: small).
 * Fields or values holding a NUL are skipped. */
static void load_hash(const char *key, size_t klen, kvl_t *out)
{
    scan_t s;
    scan_init(&s, "HSCAN", key, klen);
    redisReply *h, *arr;
    while ((arr = scan_next(&s, &h)) != NULL) {
        for (size_t i = 0; i + 1 < arr->elements; i += 2) {
            redisReply *f = arr->element[i], *v = arr->element[i + 1];
            if (f->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
                !memchr(f->str, 0, f->len) && !memchr(v->str, 0, v->len))
                kvl_set(out, f->str, f->len, v->str, v->len);
        }
        freeReplyObject(h);
    }
}

/* The sharded layout's generations: {ns}:gens (address -> generation). */
static void load_gens(kvl_t *out)
{
    load_hash(G.keys.gens, G.keys.gens_len, out);
}

/* Sharded: each address's spark count, the sum over the shards of SCARD of
 * its live generation's set (0 without a generation). */
static void sharded_counts(const char *const *addrs, size_t n, const kvl_t *gens,
                           long long *out)
{
    batch_t b = {0};
    uint32_t S = G.keys.nshards;
    size_t *owner = NULL, cap = 0;
    for (size_t i = 0; i < n; i++)
        out[i] = 0;
    for (size_t i = 0; i < n; i++) {
        const char *gen = kvl_get(gens, addrs[i]);
        if (!gen)
            continue;
        for (uint32_t s = 0; s < S; s++) {
            mpx__argv_t *a = batch_add(&b);
            push(a, "SCARD");
            mpx__key_own(&G.keys, s, addrs[i], gen, a);
            if (b.n > cap) {
                cap = b.cap;
                owner = xrealloc(owner, cap * sizeof *owner);
            }
            owner[b.n - 1] = i;
        }
        if (b.n >= 4096 || i + 1 == n) {
            batch_run(&b, "SCARD");
            for (size_t j = 0; j < b.n; j++)
                out[owner[j]] += reply_int(b.rep[j]);
            mpx__pipe_clear(&b);
        }
    }
    if (b.n) {
        batch_run(&b, "SCARD");
        for (size_t j = 0; j < b.n; j++)
            out[owner[j]] += reply_int(b.rep[j]);
    }
    mpx__pipe_free(&b);
    free(owner);
}

/* Sharded: HLEN of every shard's hash, summed. */
static long long sharded_hlen(void)
{
    batch_t b = {0};
    long long total = 0;
    for (uint32_t s = 0; s < G.keys.nshards; s++) {
        mpx__argv_t *a = batch_add(&b);
        push(a, "HLEN");
        mpx__key_hash(&G.keys, s, a);
        if (b.n == 4096 || s + 1 == G.keys.nshards) {
            batch_run(&b, "HLEN");
            for (size_t j = 0; j < b.n; j++)
                total += reply_int(b.rep[j]);
            mpx__pipe_clear(&b);
        }
    }
    mpx__pipe_free(&b);
    return total;
}

/* ------------------------------------------------------------------------ */
/* servers                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct srvinfo {
    const char *addr;
    const char *gen; /* sharded: the live generation (NULL: none; node layout) */
    long long sparks, age_ms, ttl_ms, lease_ttl_ms; /* -1: none */
    bool live;
} srvinfo_t;

/* Fill the alive-key fields of s from the replies to GET alive, PTTL alive,
 * PTTL lease. */
static void srvinfo_fill(srvinfo_t *s, redisReply *get, redisReply *pttl, redisReply *lpttl,
                         uint64_t epoch)
{
    s->live = get->type == REDIS_REPLY_STRING;
    s->age_ms = -1;
    if (s->live) {
        char *end;
        long long v = strtoll(get->str, &end, 10);
        if (end != get->str && *end == 0)
            s->age_ms = (long long)epoch - v;
    }
    s->ttl_ms = reply_int(pttl);
    s->lease_ttl_ms = reply_int(lpttl);
    if (s->ttl_ms < 0)
        s->ttl_ms = -1;
    if (s->lease_ttl_ms < 0)
        s->lease_ttl_ms = -1;
}

/* Sharded: counts over the shards, GET/PTTL of the control keys, batched. */
static srvinfo_t *server_infos_sharded(strlist_t *servers, const kvl_t *gens)
{
    size_t n = servers->n;
    srvinfo_t *info = xmalloc((n ? n : 1) * sizeof *info);
    long long *counts = xmalloc((n ? n : 1) * sizeof *counts);
    sharded_counts((const char *const *)servers->v, n, gens, counts);
    uint64_t epoch = mpx__epoch_ms();
    batch_t b = {0};
    for (size_t base = 0; base < n; base += 300) {
        size_t m = n - base < 300 ? n - base : 300;
        for (size_t i = 0; i < m; i++) {
            const char *addr = servers->v[base + i];
            mpx__argv_t *a = batch_add(&b);
            push(a, "GET");
            mpx__key_alive(&G.keys, addr, a);
            a = batch_add(&b);
            push(a, "PTTL");
            mpx__key_alive(&G.keys, addr, a);
            a = batch_add(&b);
            push(a, "PTTL");
            mpx__key_lease(&G.keys, addr, a);
        }
        batch_run(&b, "GET/PTTL");
        for (size_t i = 0; i < m; i++) {
            srvinfo_t *s = &info[base + i];
            s->addr = servers->v[base + i];
            s->gen = kvl_get(gens, s->addr);
            s->sparks = counts[base + i];
            srvinfo_fill(s, b.rep[3 * i], b.rep[3 * i + 1], b.rep[3 * i + 2], epoch);
        }
        mpx__pipe_clear(&b);
    }
    mpx__pipe_free(&b);
    free(counts);
    return info;
}

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
            s->gen = NULL;
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
    kvl_t gens = {0};
    load_servers(&servers);
    if (G.sharded)
        load_gens(&gens);
    srvinfo_t *info = G.sharded ? server_infos_sharded(&servers, &gens) : server_infos(&servers);
    size_t live = 0;
    for (size_t i = 0; i < servers.n; i++)
        live += info[i].live;
    if (G.json) {
        printf("{\"command\":\"servers\",\"namespace\":");
        jstrz(G.ns);
        json_layout();
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
            if (G.sharded) {
                printf(",\"generation\":");
                if (s->gen)
                    jstrz(s->gen);
                else
                    fputs("null", stdout);
            }
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
    kvl_free(&gens);
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
        json_layout();
        printf(",\"sparks\":[");
    }
    size_t unknown = 0;
    mpx__argv_t a;
    mpx__argv_init(&a);
    batch_t b = {0};
    redisReply **vals = xmalloc(G.chunk * sizeof *vals);
    for (int base = 0; base < argc; base += (int)G.chunk) {
        int m = argc - base < (int)G.chunk ? argc - base : (int)G.chunk;
        redisReply *r = NULL;
        if (G.sharded) {
            /* one HGET per id, in its shard's hash, pipelined */
            mpx__pipe_clear(&b);
            for (int i = 0; i < m; i++) {
                const char *id = argv[base + i];
                mpx__argv_t *c = batch_add(&b);
                push(c, "HGET");
                mpx__key_hash(&G.keys, mpx__key_shard(&G.keys, id, strlen(id)), c);
                push(c, id);
            }
            batch_run(&b, "HGET");
            for (int i = 0; i < m; i++)
                vals[i] = b.rep[i];
        } else {
            mpx__argv_reset(&a);
            push(&a, "HMGET");
            mpx__argv_push(&a, G.keys.sparks, G.keys.sparks_len);
            for (int i = 0; i < m; i++)
                push(&a, argv[base + i]);
            r = run(&a);
            if (r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)m)
                die("redis: unexpected HMGET reply");
            for (int i = 0; i < m; i++)
                vals[i] = r->element[i];
        }
        for (int i = 0; i < m; i++) {
            redisReply *e = vals[i];
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
        if (r)
            freeReplyObject(r);
    }
    mpx__pipe_free(&b);
    free(vals);
    mpx__argv_free(&a);
    if (G.json)
        printf("],\"unknown\":%zu}\n", unknown);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* stats                                                                    */
/* ------------------------------------------------------------------------ */

enum { MEM_HASH, MEM_SETS, MEM_ASIDE, MEM_SERVERS, MEM_DRAINS, MEM_ALIVE, MEM_LEASE, MEM_OTHER,
       MEM_GENS, /* sharded layout only: {ns}:gens, the shards' markers, {ns}:layout */
       MEM_KINDS };
static const char *const mem_names[MEM_KINDS] = {"sparks_hash", "server_sets", "aside_sets",
                                                 "servers_set", "drains",      "alive_keys",
                                                 "leases",      "other",       "generations"};

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

/* Sharded: the memory kind of a key; gen sets of a live generation are
 * server_sets, the others (draining, orphaned) aside_sets. */
static int mem_kind_sharded(const char *key, size_t len, const kvl_t *gens)
{
    char addr[MPX_ADDRESS_MAX + 1], gen[MPX__GEN_MAX + 1];
    uint32_t shard;
    switch (mpx__admin_classify_sharded(&G.keys, key, len, &shard, addr, gen)) {
    case MPX__SK_HASH: return MEM_HASH;
    case MPX__SK_SET: {
        const char *live = kvl_get(gens, addr);
        return live && strcmp(live, gen) == 0 ? MEM_SETS : MEM_ASIDE;
    }
    case MPX__SK_SERVERS: return MEM_SERVERS;
    case MPX__SK_DRAINS: return MEM_DRAINS;
    case MPX__SK_ALIVE: return MEM_ALIVE;
    case MPX__SK_LEASE: return MEM_LEASE;
    case MPX__SK_MARKERS:
    case MPX__SK_GENS:
    case MPX__SK_LAYOUT: return MEM_GENS;
    default: return MEM_OTHER;
    }
}

typedef struct memscan {
    uint64_t mem[MEM_KINDS], keys, total;
    const kvl_t *gens;
} memscan_t;

/* Sharded: MEMORY USAGE of each key on the master that returned it. */
static void mem_chunk(void *ctx, size_t node, redisReply *keys)
{
    memscan_t *ms = ctx;
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (size_t i = 0; i < keys->elements; i++) {
        redisReply *e = keys->element[i];
        mpx__argv_reset(&a);
        push(&a, "MEMORY");
        push(&a, "USAGE");
        mpx__argv_push(&a, e->str, e->len);
        push(&a, "SAMPLES");
        push(&a, "5");
        redisReply *m;
        if (mpx__conn_node_command(&G.conn, node, &a, &m) != 0)
            die_redis("redis: MEMORY USAGE");
        if (m->type == REDIS_REPLY_INTEGER) { /* nil: the key went away */
            int k = mem_kind_sharded(e->str, e->len, ms->gens);
            ms->mem[k] += (uint64_t)m->integer;
            ms->total += (uint64_t)m->integer;
            ms->keys++;
        }
        freeReplyObject(m);
    }
    mpx__argv_free(&a);
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
    kvl_t gens = {0};
    load_servers(&servers);
    if (G.sharded)
        load_gens(&gens);
    srvinfo_t *info = G.sharded ? server_infos_sharded(&servers, &gens) : server_infos(&servers);
    size_t live = 0;
    for (size_t i = 0; i < servers.n; i++)
        live += info[i].live;

    mpx__argv_t a;
    mpx__argv_init(&a);
    long long sparks;
    redisReply *r;
    if (G.sharded) {
        sparks = sharded_hlen();
    } else {
        push(&a, "HLEN");
        mpx__argv_push(&a, G.keys.sparks, G.keys.sparks_len);
        r = run(&a);
        sparks = reply_int(r);
        freeReplyObject(r);
        mpx__argv_reset(&a);
    }
    push(&a, "HLEN");
    mpx__argv_push(&a, G.keys.drains, G.keys.drains_len);
    r = run(&a);
    long long drains = reply_int(r);
    freeReplyObject(r);
    mpx__argv_reset(&a);

    /* Memory: MEMORY USAGE key SAMPLES 5 for every key of the namespace,
     * found with SCAN MATCH in chunks, pipelined per chunk (sharded: on
     * every master, the shard keys then the control keys). */
    memscan_t msc = {.gens = &gens};
    if (G.sharded) {
        scan_nodes(false, mem_chunk, &msc);
        scan_nodes(true, mem_chunk, &msc);
    }
    uint64_t *mem = msc.mem, keys = msc.keys, total = msc.total;
    scan_t s;
    scan_init(&s, "SCAN", NULL, 0);
    redisReply *h, *arr;
    char addr[MPX_ADDRESS_MAX + 1];
    while (!G.sharded && (arr = scan_next(&s, &h)) != NULL) {
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
        json_layout();
        printf(",\"servers\":%zu,\"live\":%zu,\"dead\":%zu,\"sparks\":%lld,\"keys\":%" PRIu64
               ",\"memory_bytes\":%" PRIu64 ",\"memory\":{",
               servers.n, live, servers.n - live, sparks, keys, total);
        for (int k = 0; k < MEM_KINDS; k++)
            if (k != MEM_GENS || G.sharded)
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
    kvl_free(&gens);
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
    /* the sharded layout's own kinds */
    K_WRONG_SHARD,      /* id stored in a shard that is not its own */
    K_SET_ORPHAN,       /* generation set of a generation neither live nor draining */
    K_MARKER_MISSING,   /* shard lacks the marker of a registered address */
    K_MARKER_WRONG,     /* shard marker names another generation than the live one */
    K_SERVER_NO_GEN,    /* address in {ns}:servers without a generation */
    K_GEN_UNREG,        /* generation in {ns}:gens of an address not in servers */
    K_DRAIN_LIVE,       /* the live generation listed in {ns}:drains */
    K_COUNT
};
static const char *const kind_names[K_COUNT] = {
    "hash-not-in-set",    "hash-unregistered", "set-stale",      "set-unregistered",
    "alive-unregistered", "server-no-alive",   "aside-unlisted", "wrong-shard",
    "set-orphan",         "marker-missing",    "marker-wrong",   "server-no-gen",
    "gen-unregistered",   "drain-live"};

/* Does `kind` exist in the layout in use? (counts list only those) */
static bool kind_in_layout(int kind)
{
    static const unsigned char node[K_COUNT] = {1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char sharded[K_COUNT] = {1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1};
    return G.sharded ? sharded[kind] : node[kind];
}

typedef struct dead {
    char *addr;
    uint64_t first_missing_ms; /* monotonic: first seen without alive key and lease */
    bool lease;                /* lease still held: never reaped */
} dead_t;

/* Sharded: a generation set found by SCAN (live generation's). */
typedef struct gset {
    uint32_t shard;
    char *addr, *gen;
} gset_t;

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
    /* sharded layout, read at the start of each pass (and updated by fixes) */
    kvl_t gens;       /* {ns}:gens: address -> live generation */
    kvl_t drains;     /* {ns}:drains: generation -> address */
    strlist_t live;   /* addresses whose alive key or lease existed */
    kvl_t *markers;   /* [S]: shard s's markers (address -> generation) */
    gset_t *lsets;    /* live generations' sets, from SCAN */
    size_t nlsets, lsets_cap;
    strlist_t orphans; /* "address\tgeneration" of orphaned sets, one finding each */
    uint64_t sc_draining_sets;
} engine_t;

/* A finding; shard >= 0 and gen add the "shard" / "generation" fields to
 * the JSON output (the sharded layout). */
static void finding_s(engine_t *e, int kind, const char *addr, const char *id, size_t idlen,
                      long shard, const char *gen, const char *detail, const char *action,
                      bool fixed)
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
        if (shard >= 0)
            printf(",\"shard\":%ld", shard);
        if (gen) {
            printf(",\"generation\":");
            jstrz(gen);
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
        printf(" (%s", detail);
        if (shard >= 0)
            printf(", shard %ld", shard);
        if (gen)
            printf(", generation %s", gen);
        putchar(')');
        if (e->repair || e->label)
            printf(" -> %s", action);
        putchar('\n');
    }
}

static void finding(engine_t *e, int kind, const char *addr, const char *id, size_t idlen,
                    const char *detail, const char *action, bool fixed)
{
    finding_s(e, kind, addr, id, idlen, -1, NULL, detail, action, fixed);
}

/* The sharded state of a pass. */
static void sharded_free(engine_t *e)
{
    kvl_free(&e->gens);
    kvl_free(&e->drains);
    sl_free(&e->live);
    if (e->markers)
        for (uint32_t s = 0; s < G.keys.nshards; s++)
            kvl_free(&e->markers[s]);
    free(e->markers);
    e->markers = NULL;
    for (size_t i = 0; i < e->nlsets; i++) {
        free(e->lsets[i].addr);
        free(e->lsets[i].gen);
    }
    free(e->lsets);
    e->lsets = NULL;
    e->nlsets = e->lsets_cap = 0;
    sl_free(&e->orphans);
}

static void engine_free(engine_t *e)
{
    sharded_free(e);
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
        /* TYPE of every candidate, pipelined. `a` still holds the last fix
         * script of the previous reply (run() leaves its command): sent
         * along, it shifted every TYPE reply by one and findings were
         * missed (test_cli check_finds_each_damage_and_repair_fixes_it). */
        mpx__argv_reset(&a);
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

/* Phase D: registered servers without an alive key (both layouts). */
static void phase_servers(engine_t *e)
{
    strlist_t servers = {0};
    load_servers(&servers);
    batch_t b = {0};
    for (size_t base = 0; base < servers.n; base += 100) {
        size_t m = servers.n - base < 100 ? servers.n - base : 100;
        for (size_t i = 0; i < m; i++) {
            mpx__argv_t *a = batch_add(&b);
            push(a, "EXISTS");
            mpx__key_alive(&G.keys, servers.v[base + i], a);
            a = batch_add(&b);
            push(a, "EXISTS");
            mpx__key_lease(&G.keys, servers.v[base + i], a);
        }
        batch_run(&b, "EXISTS");
        for (size_t i = 0; i < m; i++) {
            const char *addr = servers.v[base + i];
            long long alive = reply_int(b.rep[2 * i]);
            long long lease = reply_int(b.rep[2 * i + 1]);
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
        mpx__pipe_clear(&b);
    }
    mpx__pipe_free(&b);
    sl_free(&servers);
}

/* ------------------------------------------------------------------------ */
/* check / repair in the sharded layout                                     */
/* ------------------------------------------------------------------------ */
/*
 * Invariants (docs/cli.md, "The sharded layout"):
 *   1. every field id -> A of a shard's hash NS{T}:sparks: A has a live
 *      generation L ({ns}:gens) whose set in that shard holds id, or id is
 *      in the set of one of A's draining generations ({ns}:drains);
 *   2. every member of a live generation's set is a field naming A in the
 *      same shard's hash;
 *   3. {ns}:gens and the shards' markers NS{T}:gens agree: a registered A
 *      is marked with its live generation in every shard; any other
 *      marker names one of A's draining generations;
 *   4. no generation set exists whose generation is neither live nor
 *      draining;
 *   5. every address in {ns}:servers has a generation (and every
 *      generation's address is in {ns}:servers; the live generation is
 *      not listed in drains);
 *   6. every id is stored in its own shard (FNV-1a mod S);
 *   and, as in the node layout, registered servers have an alive key.
 *
 * A pass reads the control slot first (servers, gens, drains, and which
 * addresses are live), then walks the shards: SCAN on every master finds
 * the generation sets; HSCAN of each shard's markers, then of each shard's
 * hash (SMISMEMBER of the live set finds the suspects), then SSCAN of each
 * live generation's set (HMGET of the hash finds the suspects). Suspects
 * are confirmed (and fixed) by the single-slot scripts of src/admin.c.
 * One command per master is in flight at a time.
 */

static bool sh_live(engine_t *e, const char *addr)
{
    return sl_has(&e->live, addr);
}

/* addr's generations listed in drains (pointers into e->drains). */
static size_t sh_drain_gens(const engine_t *e, const char *addr, const char ***out,
                            size_t *cap)
{
    size_t n = 0;
    for (size_t i = 0; i < e->drains.n; i++)
        if (strcmp(e->drains.v[i].v, addr) == 0) {
            if (n == *cap) {
                *cap = *cap ? 2 * *cap : 8;
                *out = xrealloc(*out, *cap * sizeof **out);
            }
            (*out)[n++] = e->drains.v[i].k;
        }
    return n;
}

static bool sh_draining(const engine_t *e, const char *addr, const char *gen)
{
    const char *d = kvl_get(&e->drains, gen);
    return d && strcmp(d, addr) == 0;
}

/* An order of items 0..n-1 (item i's keys in slot slots[i]) that takes
 * the masters in turn, so the commands in flight go to different masters;
 * within a master the items keep their order. */
static size_t *by_master(const unsigned *slots, size_t n)
{
    char **names = NULL;
    size_t nn = 0;
    size_t *bucket = xmalloc((n ? n : 1) * sizeof *bucket);
    for (size_t i = 0; i < n; i++) {
        const char *x = mpx__conn_slot_node(&G.conn, slots[i]);
        if (!x)
            x = "?";
        size_t b = 0;
        while (b < nn && strcmp(names[b], x) != 0)
            b++;
        if (b == nn) {
            names = xrealloc(names, (nn + 1) * sizeof *names);
            names[nn++] = xstrndup(x, strlen(x));
        }
        bucket[i] = b;
    }
    size_t *cnt = xmalloc((nn ? nn : 1) * sizeof *cnt), *pos = xmalloc((nn ? nn : 1) * sizeof *pos);
    memset(cnt, 0, (nn ? nn : 1) * sizeof *cnt);
    for (size_t i = 0; i < n; i++)
        cnt[bucket[i]]++;
    /* the items of each master, in order */
    size_t *sorted = xmalloc((n ? n : 1) * sizeof *sorted), *start = xmalloc((nn ? nn : 1) * sizeof *start);
    for (size_t b = 0, acc = 0; b < nn; b++) {
        start[b] = pos[b] = acc;
        acc += cnt[b];
    }
    for (size_t i = 0; i < n; i++)
        sorted[pos[bucket[i]]++] = i;
    size_t *out = xmalloc((n ? n : 1) * sizeof *out), k = 0, maxc = 0;
    for (size_t b = 0; b < nn; b++)
        maxc = cnt[b] > maxc ? cnt[b] : maxc;
    for (size_t r = 0; r < maxc; r++)
        for (size_t b = 0; b < nn; b++)
            if (r < cnt[b])
                out[k++] = sorted[start[b] + r];
    for (size_t b = 0; b < nn; b++)
        free(names[b]);
    free(names);
    free(bucket);
    free(cnt);
    free(pos);
    free(sorted);
    free(start);
    return out;
}

/* The shards, masters taken in turn. */
static size_t *shard_order(void)
{
    uint32_t S = G.keys.nshards;
    unsigned *slots = xmalloc(S * sizeof *slots);
    memset(slots, 0, S * sizeof *slots); /* (quiets -Wmaybe-uninitialized) */
    for (uint32_t s = 0; s < S; s++)
        slots[s] = mpx__shard_slot(&G.keys, s);
    size_t *o = by_master(slots, S);
    free(slots);
    return o;
}

static bool valid_addr(const char *p, size_t n)
{
    return n > 0 && n <= MPX_ADDRESS_MAX && !memchr(p, 0, n);
}

/* Control slot: servers, generations, drains; liveness of every address
 * they name (alive key or lease). */
static void sh_load(engine_t *e)
{
    load_servers(&e->servers);
    load_hash(G.keys.gens, G.keys.gens_len, &e->gens);
    load_hash(G.keys.drains, G.keys.drains_len, &e->drains);
    e->drains_pending = e->drains.n;
    strlist_t addrs = {0};
    for (size_t i = 0; i < e->servers.n; i++)
        sl_add(&addrs, e->servers.v[i], strlen(e->servers.v[i]));
    for (size_t i = 0; i < e->gens.n; i++)
        sl_add(&addrs, e->gens.v[i].k, strlen(e->gens.v[i].k));
    for (size_t i = 0; i < e->drains.n; i++)
        if (valid_addr(e->drains.v[i].v, strlen(e->drains.v[i].v)))
            sl_add(&addrs, e->drains.v[i].v, strlen(e->drains.v[i].v));
    sl_sort(&addrs);
    batch_t b = {0};
    for (size_t base = 0; base < addrs.n; base += 500) {
        size_t m = addrs.n - base < 500 ? addrs.n - base : 500;
        for (size_t i = 0; i < m; i++) {
            mpx__argv_t *a = batch_add(&b);
            push(a, "EXISTS");
            mpx__key_alive(&G.keys, addrs.v[base + i], a);
            mpx__key_lease(&G.keys, addrs.v[base + i], a);
        }
        batch_run(&b, "EXISTS");
        for (size_t i = 0; i < m; i++)
            if (reply_int(b.rep[i]) > 0)
                sl_add(&e->live, addrs.v[base + i], strlen(addrs.v[base + i]));
        mpx__pipe_clear(&b);
    }
    mpx__pipe_free(&b);
    sl_free(&addrs);
    sl_sort(&e->live);
}

/* Control slot consistency: generations of addresses missing from
 * servers, the live generation listed in drains, servers without a
 * generation. */
static void sh_phase_control(engine_t *e)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    kvl_t gone = {0}; /* (address, generation) of addresses not in servers */
    for (size_t i = 0; i < e->gens.n; i++)
        if (!sl_has(&e->servers, e->gens.v[i].k))
            kvl_set(&gone, e->gens.v[i].k, strlen(e->gens.v[i].k), e->gens.v[i].v,
                    strlen(e->gens.v[i].v));
    for (size_t i = 0; i < gone.n; i++) {
        const char *addr = gone.v[i].k, *gen = gone.v[i].v;
        mpx__argv_reset(&a);
        mpx__admin_cmd_s_fix_gen(&G.keys, !e->fix, addr, gen, &a);
        redisReply *r = run(&a);
        long long code = reply_int(r);
        freeReplyObject(r);
        if (code == MPX__AC_GEN_READD) {
            finding_s(e, K_GEN_UNREG, addr, NULL, 0, -1, gen,
                      "server live (alive key or lease), missing from servers",
                      e->fix ? "re-registered" : "would re-register", e->fix);
            if (e->fix)
                sl_add(&e->servers, addr, strlen(addr));
        } else if (code == MPX__AC_GEN_RETIRE) {
            finding_s(e, K_GEN_UNREG, addr, NULL, 0, -1, gen,
                      "server not live (no alive key, no lease)",
                      e->fix ? "generation moved to drains and drained"
                             : "would move the generation to drains and drain it",
                      e->fix);
            if (e->fix) {
                kvl_set(&e->drains, gen, strlen(gen), addr, strlen(addr));
                kvl_del(&e->gens, addr);
            }
        }
    }
    kvl_free(&gone);
    kvl_t both = {0}; /* (generation, address): live and listed in drains */
    for (size_t i = 0; i < e->drains.n; i++) {
        const char *live = kvl_get(&e->gens, e->drains.v[i].v);
        if (live && strcmp(live, e->drains.v[i].k) == 0)
            kvl_set(&both, e->drains.v[i].k, strlen(e->drains.v[i].k), e->drains.v[i].v,
                    strlen(e->drains.v[i].v));
    }
    for (size_t i = 0; i < both.n; i++) {
        const char *gen = both.v[i].k, *addr = both.v[i].v;
        mpx__argv_reset(&a);
        mpx__admin_cmd_s_fix_drain(&G.keys, !e->fix, addr, gen, &a);
        redisReply *r = run(&a);
        long long code = reply_int(r);
        freeReplyObject(r);
        if (code == MPX__AC_DRAIN_UNLIST) {
            finding_s(e, K_DRAIN_LIVE, addr, NULL, 0, -1, gen,
                      "the live generation is listed in drains",
                      e->fix ? "removed from drains" : "would remove from drains", e->fix);
            if (e->fix)
                kvl_del(&e->drains, gen);
        }
    }
    kvl_free(&both);
    for (size_t i = 0; i < e->servers.n; i++) {
        const char *addr = e->servers.v[i];
        if (kvl_get(&e->gens, addr))
            continue;
        /* confirm in one script-free read of the control slot: servers and
         * gens were read by separate scans (a retire may fall between) */
        batch_t c = {0};
        mpx__argv_t *q = batch_add(&c);
        push(q, "SISMEMBER");
        mpx__argv_push(q, G.keys.servers, G.keys.servers_len);
        push(q, addr);
        q = batch_add(&c);
        push(q, "HEXISTS");
        mpx__argv_push(q, G.keys.gens, G.keys.gens_len);
        push(q, addr);
        batch_run(&c, "SISMEMBER/HEXISTS");
        bool still = reply_int(c.rep[0]) == 1 && reply_int(c.rep[1]) == 0;
        mpx__pipe_free(&c);
        if (!still)
            continue;
        bool live = sh_live(e, addr);
        finding(e, K_SERVER_NO_GEN, addr, NULL, 0, live ? "server live" : "server not live",
                live ? "left: the server registers again at its next heartbeat"
                     : "left to the reap of the server",
                false);
    }
    mpx__argv_free(&a);
}

/* Keys of the namespace on every master: generation sets (live ones are
 * recorded for the set phase; orphaned ones are listed in drains), alive
 * keys of unregistered addresses. */
typedef struct shk {
    engine_t *e;
    strlist_t alive_seen;
} shk_t;

static void sh_keys_chunk(void *ctx, size_t node, redisReply *keys)
{
    (void)node;
    shk_t *k = ctx;
    engine_t *e = k->e;
    size_t n = keys->elements;
    int *kind = xmalloc(n * sizeof *kind);
    uint32_t *shard = xmalloc(n * sizeof *shard);
    char addr[MPX_ADDRESS_MAX + 1], gen[MPX__GEN_MAX + 1];
    batch_t b = {0};
    size_t *cmd = xmalloc(n * sizeof *cmd);
    for (size_t i = 0; i < n; i++) {
        redisReply *x = keys->element[i];
        e->sc_keys++;
        kind[i] = x->type == REDIS_REPLY_STRING
                      ? mpx__admin_classify_sharded(&G.keys, x->str, x->len, &shard[i], addr, gen)
                      : MPX__SK_OTHER;
        if (kind[i] == MPX__SK_ALIVE && (sl_has(&e->servers, addr) || kvl_get(&e->gens, addr) ||
                                         sl_has(&k->alive_seen, addr)))
            kind[i] = MPX__SK_OTHER; /* registered, or its generation's check covers it */
        if (kind[i] == MPX__SK_SET || kind[i] == MPX__SK_ALIVE) {
            cmd[i] = b.n;
            mpx__argv_t *a = batch_add(&b);
            push(a, "TYPE");
            mpx__argv_push(a, x->str, x->len);
        }
    }
    if (b.n)
        batch_run(&b, "TYPE");
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (size_t i = 0; i < n; i++) {
        if (kind[i] != MPX__SK_SET && kind[i] != MPX__SK_ALIVE)
            continue;
        redisReply *x = keys->element[i], *t = b.rep[cmd[i]];
        const char *want = kind[i] == MPX__SK_ALIVE ? "string" : "set";
        if (!(t->type == REDIS_REPLY_STATUS || t->type == REDIS_REPLY_STRING) ||
            strcmp(t->str, want) != 0)
            continue;
        uint32_t s;
        mpx__admin_classify_sharded(&G.keys, x->str, x->len, &s, addr, gen);
        if (kind[i] == MPX__SK_ALIVE) {
            /* confirm: still neither registered nor with a generation */
            sl_add(&k->alive_seen, addr, strlen(addr));
            batch_t c = {0};
            mpx__argv_t *q = batch_add(&c);
            push(q, "SISMEMBER");
            mpx__argv_push(q, G.keys.servers, G.keys.servers_len);
            push(q, addr);
            q = batch_add(&c);
            push(q, "HEXISTS");
            mpx__argv_push(q, G.keys.gens, G.keys.gens_len);
            push(q, addr);
            q = batch_add(&c);
            push(q, "EXISTS");
            mpx__key_alive(&G.keys, addr, q);
            batch_run(&c, "SISMEMBER/HEXISTS/EXISTS");
            if (reply_int(c.rep[0]) == 0 && reply_int(c.rep[1]) == 0 && reply_int(c.rep[2]) == 1)
                finding(e, K_ALIVE_UNREG, addr, NULL, 0, "server live but not registered",
                        "left: the server registers again at its next heartbeat, or the key "
                        "expires",
                        false);
            mpx__pipe_free(&c);
            continue;
        }
        const char *live = kvl_get(&e->gens, addr);
        if (live && strcmp(live, gen) == 0) {
            if (e->nlsets == e->lsets_cap) {
                e->lsets_cap = e->lsets_cap ? 2 * e->lsets_cap : 64;
                e->lsets = xrealloc(e->lsets, e->lsets_cap * sizeof *e->lsets);
            }
            e->lsets[e->nlsets++] =
                (gset_t){s, xstrndup(addr, strlen(addr)), xstrndup(gen, strlen(gen))};
            continue;
        }
        if (sh_draining(e, addr, gen)) {
            e->sc_draining_sets++;
            continue;
        }
        char tag[MPX_ADDRESS_MAX + MPX__GEN_MAX + 2];
        snprintf(tag, sizeof tag, "%s\t%s", addr, gen);
        if (sl_has(&e->orphans, tag))
            continue;
        sl_add(&e->orphans, tag, strlen(tag));
        mpx__argv_reset(&a);
        mpx__admin_cmd_s_fix_orphan(&G.keys, !e->fix, addr, gen, &a);
        redisReply *r = run(&a);
        if (reply_int(r) == MPX__AC_ORPHAN_LIST) {
            finding_s(e, K_SET_ORPHAN, addr, NULL, 0, s, gen,
                      "generation neither live nor draining",
                      e->fix ? "listed in drains and drained" : "would list in drains and drain",
                      e->fix);
            if (e->fix)
                kvl_set(&e->drains, gen, strlen(gen), addr, strlen(addr));
        }
        freeReplyObject(r);
    }
    mpx__argv_free(&a);
    mpx__pipe_free(&b);
    free(cmd);
    free(kind);
    free(shard);
}

static int cmp_gset(const void *x, const void *y)
{
    const gset_t *a = x, *b = y;
    if (a->shard != b->shard)
        return a->shard < b->shard ? -1 : 1;
    int c = strcmp(a->addr, b->addr);
    return c ? c : strcmp(a->gen, b->gen);
}

static void sh_phase_keys(engine_t *e)
{
    shk_t k = {e, {0}};
    scan_nodes(false, sh_keys_chunk, &k);
    scan_nodes(true, sh_keys_chunk, &k);
    sl_free(&k.alive_seen);
    /* one entry per set (a key seen twice: SCAN during a rehash/migration) */
    if (e->nlsets)
        qsort(e->lsets, e->nlsets, sizeof *e->lsets, cmp_gset);
    size_t w = 0;
    for (size_t i = 0; i < e->nlsets; i++) {
        if (w && cmp_gset(&e->lsets[w - 1], &e->lsets[i]) == 0) {
            free(e->lsets[i].addr);
            free(e->lsets[i].gen);
            continue;
        }
        e->lsets[w++] = e->lsets[i];
    }
    e->nlsets = w;
}

/* Advance a scan cursor from a SCAN-family reply (validated); returns the
 * element array. */
static redisReply *scan_reply(batch_t *b, size_t i, char *cursor, size_t cn, const char *what)
{
    redisReply *r = batch_array(b, i, 2, what);
    if (r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY)
        die("redis: unexpected %s reply", what);
    snprintf(cursor, cn, "%s", r->element[0]->str);
    return r->element[1];
}

/* The window of the sharded scans: at most inflight() SCAN-family jobs at a
 * time over the items order[0..n-1], each job an item and its cursor. */
typedef struct scanjob {
    size_t item;
    char cursor[32];
} scanjob_t;

typedef struct scanwin {
    scanjob_t *act;
    size_t *order; /* owned */
    size_t n, next, nact, w;
} scanwin_t;

static void scanwin_init(scanwin_t *sw, size_t *order, size_t n)
{
    sw->w = inflight();
    sw->act = xmalloc(sw->w * sizeof *sw->act);
    sw->order = order;
    sw->n = n;
    sw->next = sw->nact = 0;
}

/* Start the next items (cursor 0) up to the window; the number started. */
static size_t scanwin_fill(scanwin_t *sw)
{
    size_t started = 0;
    while (sw->nact < sw->w && sw->next < sw->n) {
        sw->act[sw->nact].item = sw->order[sw->next++];
        strcpy(sw->act[sw->nact].cursor, "0");
        sw->nact++;
        started++;
    }
    return started;
}

/* The end of a SCAN-family command after its key: cursor COUNT chunk. */
static void scan_args(mpx__argv_t *a, const char *cursor)
{
    push(a, cursor);
    push(a, "COUNT");
    mpx__argv_pushf(a, "%u", G.chunk);
}

/* Drop the jobs whose scan is complete (cursor back to 0). */
static void scanwin_keep(scanwin_t *sw)
{
    size_t keep = 0;
    for (size_t j = 0; j < sw->nact; j++)
        if (strcmp(sw->act[j].cursor, "0") != 0)
            sw->act[keep++] = sw->act[j];
    sw->nact = keep;
}

static void scanwin_free(scanwin_t *sw)
{
    free(sw->act);
    free(sw->order);
}

typedef struct mfix {
    uint32_t shard;
    int kind;
    char *addr, *expect, *value, *gen; /* gen: the generation reported */
    const char *detail, *action, *would;
} mfix_t;

/* Markers: HSCAN of every shard's NS{T}:gens, compared with {ns}:gens and
 * {ns}:drains; each mismatch re-checked (and fixed) by s_fix_marker. */
static void sh_phase_markers(engine_t *e)
{
    uint32_t S = G.keys.nshards;
    e->markers = xmalloc(S * sizeof *e->markers);
    memset(e->markers, 0, S * sizeof *e->markers);
    scanwin_t sw;
    scanwin_init(&sw, shard_order(), S);
    batch_t b = {0};
    for (;;) {
        scanwin_fill(&sw);
        if (sw.nact == 0)
            break;
        for (size_t j = 0; j < sw.nact; j++) {
            mpx__argv_t *a = batch_add(&b);
            push(a, "HSCAN");
            mpx__key_shard_gens(&G.keys, (uint32_t)sw.act[j].item, a);
            scan_args(a, sw.act[j].cursor);
        }
        batch_run(&b, "HSCAN");
        for (size_t j = 0; j < sw.nact; j++) {
            scanjob_t *jb = &sw.act[j];
            redisReply *arr = scan_reply(&b, j, jb->cursor, sizeof jb->cursor, "HSCAN");
            for (size_t i = 0; i + 1 < arr->elements; i += 2) {
                redisReply *f = arr->element[i], *v = arr->element[i + 1];
                if (f->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
                    !memchr(f->str, 0, f->len) && !memchr(v->str, 0, v->len))
                    kvl_set(&e->markers[jb->item], f->str, f->len, v->str, v->len);
            }
        }
        scanwin_keep(&sw);
        mpx__pipe_clear(&b);
    }
    scanwin_free(&sw);

    mfix_t *fx = NULL;
    size_t nfx = 0, cap = 0;
#define ADD_FIX(...)                                                                   \
    do {                                                                               \
        if (nfx == cap) {                                                              \
            cap = cap ? 2 * cap : 64;                                                  \
            fx = xrealloc(fx, cap * sizeof *fx);                                       \
        }                                                                              \
        fx[nfx++] = (mfix_t){__VA_ARGS__};                                             \
    } while (0)
#define DUP(x) xstrndup((x), strlen(x))
    for (uint32_t s = 0; s < S; s++)
        for (size_t i = 0; i < e->markers[s].n; i++) {
            const char *addr = e->markers[s].v[i].k, *m = e->markers[s].v[i].v;
            const char *live = kvl_get(&e->gens, addr);
            if (live && strcmp(live, m) != 0)
                ADD_FIX(s, K_MARKER_WRONG, DUP(addr), DUP(m), DUP(live), DUP(m),
                        "marker names another generation than the live one",
                        "set to the live generation", "would set to the live generation");
            else if (!live && !sh_draining(e, addr, m) && m[0] != '-')
                /* "-gen" is the tombstone a finished drain leaves (keys.c):
                 * it keeps a paused writer of that generation out; the
                 * address's next registration overwrites it. Not damage. */
                ADD_FIX(s, K_MARKER_WRONG, DUP(addr), DUP(m), DUP(""), DUP(m),
                        "marker names a generation neither live nor draining", "deleted",
                        "would delete");
        }
    for (size_t i = 0; i < e->gens.n; i++)
        for (uint32_t s = 0; s < S; s++)
            if (!kvl_get(&e->markers[s], e->gens.v[i].k))
                ADD_FIX(s, K_MARKER_MISSING, DUP(e->gens.v[i].k), DUP(""), DUP(e->gens.v[i].v),
                        DUP(e->gens.v[i].v), "shard has no marker of the registered address",
                        "set to the live generation", "would set to the live generation");
#undef ADD_FIX
#undef DUP
    for (size_t base = 0; base < nfx; base += 256) {
        size_t m = nfx - base < 256 ? nfx - base : 256;
        for (size_t i = 0; i < m; i++) {
            mfix_t *f = &fx[base + i];
            mpx__admin_cmd_s_fix_marker(&G.keys, !e->fix, f->shard, f->addr, f->expect, f->value,
                                        batch_add(&b));
        }
        batch_run(&b, "a marker script");
        for (size_t i = 0; i < m; i++) {
            mfix_t *f = &fx[base + i];
            if (reply_int(b.rep[i]) != MPX__AC_MARKER)
                continue; /* changed since it was read: the next pass looks again */
            finding_s(e, f->kind, f->addr, NULL, 0, f->shard, f->gen, f->detail,
                      e->fix ? f->action : f->would, e->fix);
            if (!e->fix)
                continue;
            if (f->value[0])
                kvl_set(&e->markers[f->shard], f->addr, strlen(f->addr), f->value,
                        strlen(f->value));
            else
                kvl_del(&e->markers[f->shard], f->addr);
        }
        mpx__pipe_clear(&b);
    }
    for (size_t i = 0; i < nfx; i++) {
        free(fx[i].addr);
        free(fx[i].expect);
        free(fx[i].value);
        free(fx[i].gen);
    }
    free(fx);
    mpx__pipe_free(&b);
}

/* Per-round work lists of the hash and set phases. */
typedef struct idl {
    const char **ids;
    size_t *lens;
    const char **addrs; /* the entry's value (hash) or the set's address */
    uint32_t *shard;
    size_t *job;
    size_t n, cap;
} idl_t;

static void idl_add(idl_t *l, const char *id, size_t len, const char *addr, uint32_t s,
                    size_t job)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->ids = xrealloc(l->ids, l->cap * sizeof *l->ids);
        l->lens = xrealloc(l->lens, l->cap * sizeof *l->lens);
        l->addrs = xrealloc(l->addrs, l->cap * sizeof *l->addrs);
        l->shard = xrealloc(l->shard, l->cap * sizeof *l->shard);
        l->job = xrealloc(l->job, l->cap * sizeof *l->job);
    }
    l->ids[l->n] = id;
    l->lens[l->n] = len;
    l->addrs[l->n] = addr;
    l->shard[l->n] = s;
    l->job[l->n] = job;
    l->n++;
}

static void idl_free(idl_t *l)
{
    free(l->ids);
    free(l->lens);
    free(l->addrs);
    free(l->shard);
    free(l->job);
    memset(l, 0, sizeof *l);
}

/* Runs of equal (job, address) in l, in chunks of at most --chunk: calls
 * fn(ctx, first, n) for each. */
static void idl_runs(const idl_t *l, bool by_addr, void (*fn)(void *ctx, size_t first, size_t n),
                     void *ctx)
{
    for (size_t i = 0; i < l->n;) {
        size_t end = i + 1;
        while (end < l->n && end - i < G.chunk && l->job[end] == l->job[i] &&
               (!by_addr || strcmp(l->addrs[end], l->addrs[i]) == 0))
            end++;
        fn(ctx, i, end - i);
        i = end;
    }
}

typedef struct fixctx {
    engine_t *e;
    idl_t *l;
    batch_t *b;
    size_t *first, *count; /* per fix command: its run in l */
    size_t ncmd, cap;
    const char **dg;       /* scratch: draining generations */
    size_t dg_cap;
    const char *set_gen;   /* sets phase: the job's generation (by job index) */
    gset_t *const *jobsets;
} fixctx_t;

static void fix_note(fixctx_t *f, size_t first, size_t n)
{
    if (f->ncmd == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 64;
        f->first = xrealloc(f->first, f->cap * sizeof *f->first);
        f->count = xrealloc(f->count, f->cap * sizeof *f->count);
    }
    f->first[f->ncmd] = first;
    f->count[f->ncmd] = n;
    f->ncmd++;
}

/* Hash suspects of one (shard, address): s_fix_hash. */
static void hash_fix_cmd(void *ctx, size_t first, size_t n)
{
    fixctx_t *f = ctx;
    engine_t *e = f->e;
    const char *addr = f->l->addrs[first];
    uint32_t s = f->l->shard[first];
    const char *live = kvl_get(&e->gens, addr);
    size_t nd = sh_drain_gens(e, addr, &f->dg, &f->dg_cap);
    const char *expect = live;
    if (!expect)
        expect = kvl_get(&e->markers[s], addr);
    mpx__admin_cmd_s_fix_hash(&G.keys, !e->fix, s, addr, live ? live : "", f->dg, nd,
                              sh_live(e, addr), expect ? expect : "", f->l->ids + first,
                              f->l->lens + first, n, batch_add(f->b));
    fix_note(f, first, n);
}

/* Ids of another shard found in shard s's hash: s_fix_stray. */
static void hash_stray_cmd(void *ctx, size_t first, size_t n)
{
    fixctx_t *f = ctx;
    mpx__admin_cmd_s_fix_stray(&G.keys, !f->e->fix, f->l->shard[first], NULL, NULL,
                               f->l->ids + first, f->l->lens + first, n, batch_add(f->b));
    fix_note(f, first, n);
}

static void stray_findings(engine_t *e, const idl_t *l, const batch_t *b, size_t c0,
                           const size_t *first, const size_t *count, size_t ncmd,
                           gset_t *const *jobsets /* NULL: the hash */)
{
    bool hash = jobsets == NULL;
    for (size_t c = 0; c < ncmd; c++) {
        redisReply *r = b->rep[c0 + c];
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != count[c])
            die("redis: unexpected reply from a consistency script");
        for (size_t i = 0; i < count[c]; i++) {
            if (reply_int(r->element[i]) != MPX__AC_STRAY)
                continue;
            size_t x = first[c] + i;
            char detail[96];
            snprintf(detail, sizeof detail, "belongs to shard %u",
                     (unsigned)mpx__key_shard(&G.keys, l->ids[x], l->lens[x]));
            const char *act = hash ? (e->fix ? "deleted" : "would delete")
                                   : (e->fix ? "removed from the set" : "would remove from the set");
            finding_s(e, K_WRONG_SHARD, valid_addr(l->addrs[x], strlen(l->addrs[x]))
                                            ? l->addrs[x] : "(invalid address)",
                      l->ids[x], l->lens[x], l->shard[x], hash ? NULL : jobsets[l->job[x]]->gen,
                      detail, act, e->fix);
        }
    }
}

/* Every shard's hash: HSCAN COUNT chunk, SMISMEMBER of the live set, then
 * s_fix_hash on the suspects and s_fix_stray on ids of other shards. */
static void sh_phase_hash(engine_t *e)
{
    scanwin_t sw;
    scanwin_init(&sw, shard_order(), G.keys.nshards);
    batch_t bs = {0}, bp = {0}, bf = {0};
    pair_t *pairs = NULL;
    size_t np = 0, pcap = 0;
    struct grp {
        uint32_t s;
        size_t job, first, n;
        long probe;
    } *grps = NULL;
    size_t ngrp = 0, gcap = 0;
    idl_t sus = {0}, stray = {0};
    fixctx_t fc = {.e = e, .b = &bf};
    for (;;) {
        scanwin_fill(&sw);
        if (sw.nact == 0)
            break;
        for (size_t j = 0; j < sw.nact; j++) {
            mpx__argv_t *a = batch_add(&bs);
            push(a, "HSCAN");
            mpx__key_hash(&G.keys, (uint32_t)sw.act[j].item, a);
            scan_args(a, sw.act[j].cursor);
        }
        batch_run(&bs, "HSCAN");
        np = ngrp = 0;
        sus.n = stray.n = 0;
        for (size_t j = 0; j < sw.nact; j++) {
            uint32_t s = (uint32_t)sw.act[j].item;
            redisReply *arr =
                scan_reply(&bs, j, sw.act[j].cursor, sizeof sw.act[j].cursor, "HSCAN");
            size_t n = arr->elements / 2, p0 = np;
            e->sc_hash += n;
            if (np + n > pcap) {
                pcap = np + n + 1024;
                pairs = xrealloc(pairs, pcap * sizeof *pairs);
            }
            for (size_t i = 0; i < n; i++) {
                redisReply *k = arr->element[2 * i], *v = arr->element[2 * i + 1];
                if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                    continue;
                if (mpx__key_shard(&G.keys, k->str, k->len) != s) {
                    idl_add(&stray, k->str, k->len, v->str, s, j);
                    continue;
                }
                pairs[np++] = (pair_t){k->str, v->str, k->len, v->len};
            }
            if (np > p0)
                qsort(pairs + p0, np - p0, sizeof *pairs, cmp_pair);
            for (size_t g = p0; g < np;) {
                size_t end = g + 1;
                while (end < np && cmp_pair(&pairs[g], &pairs[end]) == 0)
                    end++;
                if (!valid_addr(pairs[g].addr, pairs[g].al)) {
                    for (size_t i = g; i < end; i++)
                        finding_s(e, K_HASH_UNREG, "(invalid address)", pairs[i].id,
                                  pairs[i].idl, s, NULL, "hash value is not an address", "left",
                                  false);
                    g = end;
                    continue;
                }
                if (ngrp == gcap) {
                    gcap = gcap ? 2 * gcap : 64;
                    grps = xrealloc(grps, gcap * sizeof *grps);
                }
                long probe = -1;
                const char *live = kvl_get(&e->gens, pairs[g].addr);
                if (live && !e->no_smismember) {
                    probe = (long)bp.n;
                    mpx__argv_t *a = batch_add(&bp);
                    push(a, "SMISMEMBER");
                    mpx__key_own(&G.keys, s, pairs[g].addr, live, a);
                    for (size_t i = g; i < end; i++)
                        mpx__argv_push(a, pairs[i].id, pairs[i].idl);
                }
                grps[ngrp++] = (struct grp){s, j, g, end - g, probe};
                g = end;
            }
        }
        if (bp.n && batch_exec(&bp) != 0) {
            if (!strstr(mpx_last_error(), "unknown command"))
                die("redis: SMISMEMBER: %s", mpx_last_error());
            e->no_smismember = true; /* Redis < 6.2: the script checks every entry */
        }
        for (size_t gi = 0; gi < ngrp; gi++) {
            struct grp *g = &grps[gi];
            redisReply *r = g->probe >= 0 ? bp.rep[g->probe] : NULL;
            if (r && (r->type != REDIS_REPLY_ARRAY || r->elements != g->n))
                die("redis: unexpected SMISMEMBER reply");
            for (size_t i = 0; i < g->n; i++)
                if (!r || reply_int(r->element[i]) == 0)
                    idl_add(&sus, pairs[g->first + i].id, pairs[g->first + i].idl,
                            pairs[g->first + i].addr, g->s, g->job);
        }
        /* confirm and fix */
        fc.l = &sus;
        fc.ncmd = 0;
        idl_runs(&sus, true, hash_fix_cmd, &fc);
        size_t nhash = fc.ncmd;
        fc.l = &stray;
        idl_runs(&stray, false, hash_stray_cmd, &fc);
        if (bf.n)
            batch_run(&bf, "a consistency script");
        for (size_t c = 0; c < nhash; c++) {
            redisReply *r = bf.rep[c];
            if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != fc.count[c])
                die("redis: unexpected reply from a consistency script");
            for (size_t i = 0; i < fc.count[c]; i++) {
                size_t x = fc.first[c] + i;
                const char *addr = sus.addrs[x], *id = sus.ids[x];
                size_t il = sus.lens[x];
                long sh = sus.shard[x];
                switch (reply_int(r->element[i])) {
                case MPX__AC_HASH_ADD:
                    finding_s(e, K_HASH_NOT_IN_SET, addr, id, il, sh, NULL, "server live",
                              e->fix ? "added to its set" : "would add to its set", e->fix);
                    break;
                case MPX__AC_HASH_DEL:
                    finding_s(e, K_HASH_UNREG, addr, id, il, sh, NULL, "server dead",
                              e->fix ? "deleted" : "would delete", e->fix);
                    break;
                case MPX__AC_HASH_DEAD:
                    finding_s(e, K_HASH_NOT_IN_SET, addr, id, il, sh, NULL, "server dead",
                              "left to the reap of the server", false);
                    break;
                case MPX__AC_HASH_UNREG_LIVE:
                    finding_s(e, K_HASH_UNREG, addr, id, il, sh, NULL,
                              "server live but not registered",
                              "left until the server registers again", false);
                    break;
                case MPX__AC_SH_DRAINING: e->draining_entries++; break;
                case MPX__AC_SH_CHANGED:
                    finding_s(e, kvl_get(&e->gens, addr) ? K_HASH_NOT_IN_SET : K_HASH_UNREG,
                              addr, id, il, sh, NULL,
                              "the shard's generation marker changed during the scan",
                              "left (the next pass looks again)", false);
                    break;
                default: break;
                }
            }
        }
        stray_findings(e, &stray, &bf, nhash, fc.first + nhash, fc.count + nhash,
                       fc.ncmd - nhash, NULL);
        mpx__pipe_clear(&bf);
        mpx__pipe_clear(&bp);
        mpx__pipe_clear(&bs);
        scanwin_keep(&sw);
    }
    mpx__pipe_free(&bs);
    mpx__pipe_free(&bp);
    mpx__pipe_free(&bf);
    idl_free(&sus);
    idl_free(&stray);
    free(fc.first);
    free(fc.count);
    free(fc.dg);
    free(pairs);
    free(grps);
    scanwin_free(&sw);
}

/* Set suspects of one job (shard, address, generation): s_fix_set. */
static void set_fix_cmd(void *ctx, size_t first, size_t n)
{
    fixctx_t *f = ctx;
    const gset_t *g = f->jobsets[f->l->job[first]];
    mpx__admin_cmd_s_fix_set(&G.keys, !f->e->fix, g->shard, g->addr, g->gen, f->l->ids + first,
                             f->l->lens + first, n, batch_add(f->b));
    fix_note(f, first, n);
}

static void set_stray_cmd(void *ctx, size_t first, size_t n)
{
    fixctx_t *f = ctx;
    const gset_t *g = f->jobsets[f->l->job[first]];
    mpx__admin_cmd_s_fix_stray(&G.keys, !f->e->fix, g->shard, g->addr, g->gen,
                               f->l->ids + first, f->l->lens + first, n, batch_add(f->b));
    fix_note(f, first, n);
}

/* Every live generation's set: SSCAN COUNT chunk, HMGET of the shard's
 * hash, then s_fix_set on the members whose entry names another server or
 * none, s_fix_stray on ids of other shards. */
static void sh_phase_sets(engine_t *e)
{
    size_t nl = e->nlsets;
    if (nl == 0)
        return;
    /* masters in turn */
    unsigned *slots = xmalloc(nl * sizeof *slots);
    memset(slots, 0, nl * sizeof *slots);
    for (size_t i = 0; i < nl; i++)
        slots[i] = mpx__shard_slot(&G.keys, e->lsets[i].shard);
    scanwin_t sw;
    scanwin_init(&sw, by_master(slots, nl), nl);
    free(slots);
    size_t W = sw.w; /* the jobs' arrays */
    gset_t **jobsets = xmalloc(W * sizeof *jobsets);
    batch_t bs = {0}, bp = {0}, bf = {0};
    idl_t mem = {0}, sus = {0}, stray = {0};
    size_t *pfirst = xmalloc(W * sizeof *pfirst), *pcount = xmalloc(W * sizeof *pcount);
    long *probe = xmalloc(W * sizeof *probe);
    fixctx_t fc = {.e = e, .b = &bf, .jobsets = jobsets};
    for (;;) {
        e->sc_sets += scanwin_fill(&sw);
        if (sw.nact == 0)
            break;
        for (size_t j = 0; j < sw.nact; j++) {
            gset_t *g = &e->lsets[sw.act[j].item];
            jobsets[j] = g;
            mpx__argv_t *a = batch_add(&bs);
            push(a, "SSCAN");
            mpx__key_own(&G.keys, g->shard, g->addr, g->gen, a);
            scan_args(a, sw.act[j].cursor);
        }
        batch_run(&bs, "SSCAN");
        mem.n = sus.n = stray.n = 0;
        for (size_t j = 0; j < sw.nact; j++) {
            gset_t *g = jobsets[j];
            redisReply *arr =
                scan_reply(&bs, j, sw.act[j].cursor, sizeof sw.act[j].cursor, "SSCAN");
            e->sc_members += arr->elements;
            pfirst[j] = mem.n;
            for (size_t i = 0; i < arr->elements; i++) {
                redisReply *x = arr->element[i];
                if (x->type != REDIS_REPLY_STRING)
                    continue;
                if (mpx__key_shard(&G.keys, x->str, x->len) != g->shard)
                    idl_add(&stray, x->str, x->len, g->addr, g->shard, j);
                else
                    idl_add(&mem, x->str, x->len, g->addr, g->shard, j);
            }
            pcount[j] = mem.n - pfirst[j];
            probe[j] = -1;
            if (pcount[j]) {
                probe[j] = (long)bp.n;
                mpx__argv_t *a = batch_add(&bp);
                push(a, "HMGET");
                mpx__key_hash(&G.keys, g->shard, a);
                for (size_t i = 0; i < pcount[j]; i++)
                    mpx__argv_push(a, mem.ids[pfirst[j] + i], mem.lens[pfirst[j] + i]);
            }
        }
        if (bp.n)
            batch_run(&bp, "HMGET");
        for (size_t j = 0; j < sw.nact; j++) {
            if (probe[j] < 0)
                continue;
            redisReply *r = batch_array(&bp, (size_t)probe[j], pcount[j], "HMGET");
            for (size_t i = 0; i < pcount[j]; i++) {
                redisReply *v = r->element[i];
                size_t x = pfirst[j] + i;
                if (v->type != REDIS_REPLY_STRING || strcmp(v->str, jobsets[j]->addr) != 0)
                    idl_add(&sus, mem.ids[x], mem.lens[x], jobsets[j]->addr, jobsets[j]->shard,
                            j);
            }
        }
        fc.ncmd = 0;
        fc.l = &sus;
        idl_runs(&sus, false, set_fix_cmd, &fc);
        size_t nset = fc.ncmd;
        fc.l = &stray;
        idl_runs(&stray, false, set_stray_cmd, &fc);
        if (bf.n)
            batch_run(&bf, "a consistency script");
        for (size_t c = 0; c < nset; c++) {
            redisReply *r = bf.rep[c];
            if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != fc.count[c])
                die("redis: unexpected reply from a consistency script");
            for (size_t i = 0; i < fc.count[c]; i++) {
                long long code = reply_int(r->element[i]);
                size_t x = fc.first[c] + i;
                if (code == MPX__AC_SET_OTHER || code == MPX__AC_SET_NONE)
                    finding_s(e, K_SET_STALE, sus.addrs[x], sus.ids[x], sus.lens[x],
                              sus.shard[x], jobsets[sus.job[x]]->gen,
                              code == MPX__AC_SET_OTHER ? "hash names another server"
                                                        : "hash has no entry",
                              e->fix ? "removed from the set" : "would remove from the set",
                              e->fix);
            }
        }
        stray_findings(e, &stray, &bf, nset, fc.first + nset, fc.count + nset, fc.ncmd - nset,
                       jobsets);
        mpx__pipe_clear(&bf);
        mpx__pipe_clear(&bp);
        mpx__pipe_clear(&bs);
        scanwin_keep(&sw);
    }
    mpx__pipe_free(&bs);
    mpx__pipe_free(&bp);
    mpx__pipe_free(&bf);
    idl_free(&mem);
    idl_free(&sus);
    idl_free(&stray);
    free(fc.first);
    free(fc.count);
    free(pfirst);
    free(pcount);
    free(probe);
    free(jobsets);
    scanwin_free(&sw);
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
    if (G.sharded) {
        sharded_free(e);
        sh_load(e);
        sh_phase_control(e);
        sh_phase_keys(e);
        sh_phase_markers(e);
        sh_phase_hash(e);
        sh_phase_sets(e);
        phase_servers(e);
        return;
    }
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
    int first = 1;
    for (int k = 0; k < K_COUNT; k++)
        if (kind_in_layout(k)) {
            printf("%s\"%s\":%" PRIu64, first ? "" : ",", kind_names[k], counts[k]);
            first = 0;
        }
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
           ",\"set_members\":%" PRIu64 ",\"servers\":%" PRIu64,
           e->sc_keys, e->sc_hash, e->sc_sets, e->sc_members, e->sc_servers);
    if (G.sharded)
        printf(",\"shards\":%u,\"draining_sets\":%" PRIu64, (unsigned)G.keys.nshards,
               e->sc_draining_sets);
    putchar('}');
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
        json_layout();
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
               " spark sets (%" PRIu64 " members), %" PRIu64 " servers",
               e.sc_keys, e.sc_hash, e.sc_sets, e.sc_members, e.sc_servers);
        if (G.sharded)
            printf(" (%u shards)", (unsigned)G.keys.nshards);
        printf(" in %" PRIu64 " ms", ms);
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
                int rc = mpx__admin_retire(registry(), d->addr, &retired);
                if (rc == MPX_EREDIS || rc == MPX_EPROTO || rc == MPX_ESTATE)
                    /* retired; a cleanup failed on a broken entry (reported) */
                    fprintf(stderr, CLI_NAME ": warning: %s\n", mpx_last_error());
                else if (rc)
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
        json_layout();
        printf(",\"dry_run\":%s,\"interval_ms\":%u,\"findings\":[", G.dry_run ? "true" : "false",
               G.interval_ms);
    }
    if (e.fix) /* finish pending cleanups first */
        drain_pending();
    engine_pass(&e);
    int passes = 1;
    size_t reaped = 0;
    if (e.fix) {
        drain_pending(); /* aside sets / generations just listed */
        if (e.ndead && !G.no_wait)
            reaped = reap_dead(&e);
        if (reaped) {
            /* entries of the reaped servers that were missing from their sets */
            engine_pass(&e);
            passes++;
            drain_pending();
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
        json_layout();
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
    s->sparks = xmalloc((n ? n : 1) * sizeof *s->sparks);
    s->live = xmalloc((n ? n : 1) * sizeof *s->live);
    if (G.sharded) {
        kvl_t gens = {0};
        load_gens(&gens);
        s->total = sharded_hlen();
        sharded_counts((const char *const *)s->servers.v, n, &gens, s->sparks);
        batch_t b = {0};
        for (size_t i = 0; i < n; i++) {
            mpx__argv_t *a = batch_add(&b);
            push(a, "EXISTS");
            mpx__key_alive(&G.keys, s->servers.v[i], a);
        }
        batch_run(&b, "EXISTS");
        for (size_t i = 0; i < n; i++)
            s->live[i] = reply_int(b.rep[i]) == 1;
        mpx__pipe_free(&b);
        kvl_free(&gens);
        s->t_ms = now_ms();
        return;
    }
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
            json_layout();
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
"  check          consistency scan in bounded chunks; lists every problem (the\n"
"                 node layout's kinds below; the sharded layout has no\n"
"                 set-unregistered or aside-unlisted and adds wrong-shard,\n"
"                 set-orphan, marker-missing, marker-wrong, server-no-gen,\n"
"                 gen-unregistered, drain-live: see docs/cli.md):\n"
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
"  -r, --redis URL      redis://[[user]:password@]host[:port][/db],\n"
"                       unix:///path[?db=N] or a Redis Cluster seed list\n"
"                       redis-cluster://host:port[,host:port...]\n"
"                       (default redis://127.0.0.1:6379)\n"
"  -n, --namespace NS   key prefix without the colon (default metroplex)\n"
"      --layout L       key layout: node (the Node original's keys) or sharded\n"
"                       (Redis Cluster); default: sharded when the namespace's\n"
"                       {NS}:layout key exists, the URL is a cluster or --shards\n"
"                       is given, else node\n"
"      --shards S       sharded layout: shard count when {NS}:layout does not\n"
"                       record it (default 64; must match it when it does)\n"
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
    enum { O_DRY = 256, O_NOWAIT, O_CHUNK, O_TOP, O_TIMEOUT, O_LAYOUT, O_SHARDS };
    static const struct option longopts[] = {
        {"redis", required_argument, NULL, 'r'},   {"namespace", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},          {"interval", required_argument, NULL, 'i'},
        {"dry-run", no_argument, NULL, O_DRY},     {"no-wait", no_argument, NULL, O_NOWAIT},
        {"chunk", required_argument, NULL, O_CHUNK}, {"top", required_argument, NULL, O_TOP},
        {"count", required_argument, NULL, 'c'},   {"timeout", required_argument, NULL, O_TIMEOUT},
        {"layout", required_argument, NULL, O_LAYOUT},
        {"shards", required_argument, NULL, O_SHARDS},
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
        case O_LAYOUT:
            if (strcmp(optarg, "node") == 0)
                G.layout_opt = MPX_LAYOUT_NODE;
            else if (strcmp(optarg, "sharded") == 0)
                G.layout_opt = MPX_LAYOUT_SHARDED;
            else if (strcmp(optarg, "auto") == 0)
                G.layout_opt = MPX_LAYOUT_AUTO;
            else
                die_usage("--layout: '%s' must be node, sharded or auto", optarg);
            break;
        case O_SHARDS: G.shards_opt = parse_u32("--shards", optarg, 1, 16384); break;
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
    if (G.shards_assumed && (fn == cmd_check || fn == cmd_repair)) {
        /* With a wrong S, every id would look like it is in the wrong shard
         * and repair would delete it: never guess for repair. */
        if (fn == cmd_repair && !G.dry_run)
            die_usage("repair: {%s}:layout does not record the shard count of namespace '%s'; "
                      "give --shards S (the one its registries use)",
                      G.ns, G.ns);
        fprintf(stderr,
                CLI_NAME ": warning: {%s}:layout does not record the shard count; assuming %u "
                "(--shards)\n",
                G.ns, (unsigned)G.keys.nshards);
    }
    int rc = fn(cargc, cargv);
    fflush(stdout);
    return rc;
}
