/*
 * sparkgen.c - metroplex-sparkgen: load generator and end-to-end check.
 *
 * What it does
 *   S simulated servers, each a real registry (mpx_create + mpx_register
 *   with its own address http://127.0.0.1:<10000+i>), fed by T producer
 *   threads, together connect N sparks and flush. Then, for --duration
 *   seconds, they stay registered while --churn PCT % of the sparks per
 *   second disconnect and reconnect (SG_CHURN_DELAY_MS later, to the same
 *   server), and --kill-servers K of them (the last K) crash (SIGKILL) and
 *   must be reaped by the survivors. At the end Redis is
 *   checked to hold exactly the expected mapping (every spark of a survivor
 *   mapped to it, in its set; nothing of the killed servers; nothing else),
 *   the survivors unregister, and the namespace must be empty.
 *   A report goes to stdout (with --json: one JSON object on one line, the
 *   human report going to stderr); progress and diagnostics go to stderr.
 *
 * No per-spark state
 *   Spark number i (0 <= i < N) has the id sg_spark_id(i) (derived from the
 *   seed, the index and --id-format) and belongs to server i % S. Every check
 *   recomputes ids and expected servers from indices, and every generated id
 *   can be decoded back to its index (sg_spark_index), so unexpected hash
 *   fields and set members can be told apart without a table of ids.
 *
 * Nodes: one protocol, two transports
 *   The servers live in "nodes". A node (sg_local_t) owns some servers and
 *   the producer and churn threads feeding them, and obeys text commands
 *   (sg_local_command: connect, stats, churn, flush, sample, unregister...).
 *   - Without --kill-servers there is one node, in this process, owning all
 *     S servers and T threads; commands are plain function calls.
 *   - With --kill-servers K every server is a node of its own in a child
 *     process (forked before any thread exists), with T/S threads (at least
 *     one); the parent sends the same commands through a pipe and reads
 *     one-line answers. The parent only orchestrates, checks and reports,
 *     and can SIGKILL a child the way a crash leaves a gateway: no
 *     unregister, threads gone, alive key and lease left to expire.
 *
 * Phases (each timed; see sg_run())
 *   setup      parse options, start or reach Redis, check that the namespace
 *              is empty, create the nodes (fork the children), register
 *   connect    producers call mpx_connect(); each node then flushes
 *   stay       --duration s: churn; kill K servers (half-way through, or
 *              at once without --duration) after flushing them, and wait
 *              until Redis holds nothing of theirs (reap_ms)
 *   flush      the survivors flush what churn queued
 *   verify     the whole mapping: HMGET of every id, SMISMEMBER of every id
 *              in its server's set, HLEN/SCARD (listing unexpected entries),
 *              the servers set, alive keys and leases, pending drains,
 *              library counters, a sample through mpx_sparks()
 *   unregister mpx_unregister() on the survivors; the namespace must be
 *              empty
 *   report     sg_report_print() / sg_report_json()
 *
 * Threads and signals
 *   SIGINT/SIGTERM are blocked in every thread (and child) once Redis is up;
 *   a small signal thread of the parent takes them with sigtimedwait() and
 *   sets run->stop_sig, which every phase polls; the nodes are then told to
 *   abort. A second signal kills the redis-server we started (by PID) and
 *   exits at once (children die with the parent: PR_SET_PDEATHSIG).
 *
 * Cleanup
 *   sg_nodes_shutdown(), before the report and again (a no-op) from
 *   sg_cleanup(): unregister what is still registered (skipped when
 *   interrupted and the Redis is our throwaway one), destroy every node
 *   (children are told to exit, then reaped by PID, SIGKILL if they do not;
 *   a child that exits badly, e.g. a sanitizer report, is an error). Then
 *   sg_cleanup() closes the check connection, stops and removes our
 *   redis-server and stops the signal thread. It runs on every exit after
 *   option parsing.
 *
 * Layouts and Redis Cluster
 *   --layout node|sharded (and --shards S) go to the library options; a
 *   redis-cluster:// URL (or --cluster, a throwaway local cluster started
 *   with tools/cluster.sh) selects the sharded layout by default. Every key
 *   name the checks use comes from src/keys.c (mpx__keys_t of the same
 *   layout: the shard of an id, a shard's hash, a registration's set per
 *   shard and generation), and every command goes through the library's
 *   connection (mpx__conn_t), which routes it by its key's slot on a
 *   cluster; per-master work (SCAN of the namespace, INFO memory/stats)
 *   runs on every master (src/cluster.h; a single Redis is one master).
 *   The sharded layout names a server's sets by its registration's
 *   generation: nodes answer "gens" with each server's current one.
 *
 * Exit codes: 0 ok; 1 mismatches or library errors; 2 usage error or Redis
 * cannot be reached or started (or the namespace is not empty); 128+signal
 * when interrupted.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "cluster.h"  /* per-master commands (INFO, SCAN) on a cluster */
#include "internal.h" /* URL syntax, key names (keys.c), connections (conn.c) */
#include "metroplex.h"
#include "redis_proc.h"

#define SG_NAME "metroplex-sparkgen"

enum { SG_EXIT_OK = 0, SG_EXIT_FAIL = 1, SG_EXIT_USAGE = 2 };

/* Limits of the options. */
#define SG_SERVERS_MAX 1024u
#define SG_THREADS_MAX 1024u
#define SG_SPARKS_MAX 1000000000ull
#define SG_DURATION_MAX (7u * 24u * 3600u)
#define SG_INTERVAL_MIN 300u /* the smallest address lease the library takes */
#define SG_INTERVAL_MAX 2147483647u
#define SG_BASE_PORT 10000u

#define SG_SAMPLE 1000u        /* ids looked up through the library */
#define SG_CHUNK 1000u         /* ids per HMGET / SMISMEMBER in verify */
#define SG_SHOWN_MAX 20        /* mismatches kept for the report */
#define SG_ID_CAP 256          /* longest id (--id-format long) + NUL */
#define SG_LONG_LEN 200u       /* length of --id-format long ids */
#define SG_KEY_CAP 512         /* namespace + address + suffix */
#define SG_CHECK_TIMEOUT_MS 10000u
#define SG_LEASE_DEFAULT_MS 10000u
#define SG_SCAN_MAX_KEYS 10000000ull /* bound on the leftover-key scan */
#define SG_REAP_SLACK_S 30.0   /* reap wait: 3 x interval + this */
#define SG_BLOCK_MAX 65536u    /* ids checked per pipelined round (sharded) */
#define SG_SHARDS_DEFAULT 64u
#define SG_SHARDS_MAX 16384u
#define SG_CLUSTER_MASTERS 3   /* --cluster: masters of the throwaway cluster */

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */

enum { SG_ID_PRIMUS = 0, SG_ID_UUID, SG_ID_LONG };
static const char *const sg_id_names[] = {"primus", "uuid", "long"};

typedef struct sg_config {
    const char *redis_url; /* NULL: start a throwaway redis-server */
    uint32_t servers;
    uint64_t sparks;
    uint32_t duration_s;
    uint32_t interval_ms;
    uint32_t latency_ms;
    const char *ns;
    uint32_t threads; /* 0 until resolved: one per server */
    uint64_t seed;
    double churn_pct; /* % of the sparks per second, during --duration */
    int id_format;    /* SG_ID_* */
    uint32_t kill;    /* servers to SIGKILL mid-run */
    int quiet;
    int verify;
    int json;
    int layout;       /* MPX_LAYOUT_*: AUTO until resolved after parsing */
    uint32_t shards;  /* sharded layout: shards (0 until resolved: default) */
    int cluster;      /* --cluster: start a throwaway local Redis Cluster */
    int faults;       /* --faults: background reports do not fail the run */
} sg_config_t;

static const char *sg_layout_name(int layout)
{
    return layout == MPX_LAYOUT_SHARDED ? "sharded" : layout == MPX_LAYOUT_NODE ? "node" : "auto";
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */

static int sg_quiet;            /* --quiet */
static int sg_tty;              /* stderr is a terminal: \r progress line */
static char sg_who[40] = "sparkgen"; /* "sparkgen[server 3]" in children */
static pthread_mutex_t sg_out_mu = PTHREAD_MUTEX_INITIALIZER;
static int sg_line_drawn;       /* a progress line is on screen (under sg_out_mu) */

/* Take stderr, wiping any progress line first. */
static void sg_out_begin(void)
{
    pthread_mutex_lock(&sg_out_mu);
    if (sg_line_drawn) {
        fputs("\r\033[K", stderr);
        sg_line_drawn = 0;
    }
}

static void sg_out_end(void)
{
    pthread_mutex_unlock(&sg_out_mu);
}

static void sg_vmsg(const char *kind, const char *fmt, va_list ap)
{
    sg_out_begin();
    fprintf(stderr, "%s: %s", sg_who, kind);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    sg_out_end();
}

static void sg_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sg_info(const char *fmt, ...)
{
    if (sg_quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    sg_vmsg("", fmt, ap);
    va_end(ap);
}

static void sg_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sg_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sg_vmsg("error: ", fmt, ap);
    va_end(ap);
}

/* Always shown, even with --quiet. */
static void sg_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sg_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sg_vmsg("", fmt, ap);
    va_end(ap);
}

static void sg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sg_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sg_vmsg("warning: ", fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */

static double sg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sg_sleep_ms(double ms)
{
    if (ms <= 0)
        return;
    long long ns = (long long)(ms * 1e6);
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static void *sg_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        static const char msg[] = "sparkgen: out of memory\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
            /* nothing more to do */
        }
        abort();
    }
    return q;
}

/* A growable string. */
typedef struct sg_buf {
    char *p;
    size_t len, cap;
} sg_buf_t;

static void sg_buf_reserve(sg_buf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->p = sg_xrealloc(b->p, cap);
    b->cap = cap;
}

static void sg_buf_printf(sg_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sg_buf_printf(sg_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    sg_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void sg_buf_clear(sg_buf_t *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

static void sg_buf_free(sg_buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* JSON string literal of `s` (quotes included). */
static void sg_buf_json_str(sg_buf_t *b, const char *s)
{
    sg_buf_printf(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            sg_buf_printf(b, "\\%c", *c);
        else if (*c < 0x20 || *c == 0x7f)
            sg_buf_printf(b, "\\u%04x", *c);
        else
            sg_buf_printf(b, "%c", *c);
    }
    sg_buf_printf(b, "\"");
}

/* Write all of `len` bytes; 0 or -1. */
static int sg_write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads newline-terminated lines from a pipe. */
typedef struct sg_lr {
    int fd;
    char *buf;
    size_t len, cap, off;
} sg_lr_t;

/*
 * The next line, without its newline, NUL-terminated, valid until the next
 * call; NULL at end of file, on error, or after timeout_ms (-1: no limit),
 * with *why saying which.
 */
static char *sg_lr_next(sg_lr_t *lr, int timeout_ms, const char **why)
{
    if (lr->off) {
        memmove(lr->buf, lr->buf + lr->off, lr->len - lr->off);
        lr->len -= lr->off;
        lr->off = 0;
    }
    double deadline = sg_now() + timeout_ms / 1000.0;
    for (;;) {
        char *nl = lr->buf ? memchr(lr->buf, '\n', lr->len) : NULL;
        if (nl) {
            *nl = '\0';
            lr->off = (size_t)(nl - lr->buf) + 1;
            return lr->buf;
        }
        if (lr->len + 4096 > lr->cap) {
            lr->cap = lr->cap ? lr->cap * 2 : 16384;
            lr->buf = sg_xrealloc(lr->buf, lr->cap);
        }
        if (timeout_ms >= 0) {
            double left = deadline - sg_now();
            struct pollfd pfd = {lr->fd, POLLIN, 0};
            int pr = left > 0 ? poll(&pfd, 1, (int)(left * 1000) + 1) : 0;
            if (pr < 0 && errno == EINTR)
                continue;
            if (pr == 0) {
                *why = "no answer in time";
                return NULL;
            }
            if (pr < 0) {
                *why = strerror(errno);
                return NULL;
            }
        }
        ssize_t n = read(lr->fd, lr->buf + lr->len, lr->cap - lr->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *why = strerror(errno);
            return NULL;
        }
        if (n == 0) {
            *why = "the process went away";
            return NULL;
        }
        lr->len += (size_t)n;
    }
}

static const char *sg_human_bytes(double b, char *buf, size_t cap)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double a = b < 0 ? -b : b;
    while (a >= 1024.0 && u < 4) {
        a /= 1024.0;
        b /= 1024.0;
        u++;
    }
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
    return buf;
}

static const char *sg_human_count(double v, char *buf, size_t cap)
{
    if (v >= 1e9)
        snprintf(buf, cap, "%.2fG", v / 1e9);
    else if (v >= 1e6)
        snprintf(buf, cap, "%.2fM", v / 1e6);
    else if (v >= 1e4)
        snprintf(buf, cap, "%.1fk", v / 1e3);
    else
        snprintf(buf, cap, "%.0f", v);
    return buf;
}

static long long sg_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtoll(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static long sg_maxrss_kb(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

/* ------------------------------------------------------------------------ */
/* Spark ids                                                                */

static uint64_t sg_mix64(uint64_t x)
{
    /* splitmix64: a bijection on 64 bits. */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A keyed permutation of 64-bit values (4-round Feistel network), so an id
 * that looks random can still be decoded back to its index. */
static uint64_t sg_feistel(uint64_t x, uint64_t key, int inverse)
{
    uint32_t l = (uint32_t)(x >> 32), r = (uint32_t)x;
    if (!inverse) {
        for (uint64_t k = 0; k < 4; k++) {
            uint32_t t = l ^ (uint32_t)sg_mix64(r ^ (key + k * 0x9e3779b97f4a7c15ull));
            l = r;
            r = t;
        }
    } else {
        for (uint64_t k = 4; k-- > 0;) {
            uint32_t t = r ^ (uint32_t)sg_mix64(l ^ (key + k * 0x9e3779b97f4a7c15ull));
            r = l;
            l = t;
        }
    }
    return ((uint64_t)l << 32) | r;
}

/* Everything ids depend on; set once after option parsing (children
 * inherit it). */
static struct {
    int fmt;
    uint64_t n;    /* --sparks: valid indices are 0..n-1 */
    uint64_t ts0;  /* primus: first timestamp */
    uint64_t kx;   /* uuid, long: Feistel key */
    uint64_t ky;   /* uuid, long: filler key */
} sg_ids;

static void sg_ids_init(const sg_config_t *cfg)
{
    sg_ids.fmt = cfg->id_format;
    sg_ids.n = cfg->sparks;
    sg_ids.ts0 = 1400000000000ull + sg_mix64(cfg->seed) % 100000000000ull;
    sg_ids.kx = sg_mix64(cfg->seed ^ 0x6964666d74757569ull);
    sg_ids.ky = sg_mix64(cfg->seed ^ 0x66696c6c65726b79ull);
}

static size_t sg_u64toa(uint64_t v, char *out)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static const char sg_hex[] = "0123456789abcdef";

static void sg_put_hex(char *out, uint64_t v, int digits)
{
    for (int k = digits - 1; k >= 0; k--) {
        out[k] = sg_hex[v & 15];
        v >>= 4;
    }
}

/* Parse `digits` lowercase hex digits; -1 if any is not one. */
static int sg_get_hex(const char *p, int digits, uint64_t *v)
{
    uint64_t x = 0;
    for (int k = 0; k < digits; k++) {
        char c = p[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        x = (x << 4) | (uint64_t)d;
    }
    *v = x;
    return 0;
}

/*
 * The id of spark number `i`, in `buf` (SG_ID_CAP bytes); returns its length.
 *   primus  "<13-digit ms timestamp>$<i>", as Primus makes them: the
 *           timestamp starts at a seed-dependent point between 2014 and 2017
 *           and advances by one every 1024 sparks.
 *   uuid    RFC 4122 version 4 text (8-4-4-4-12 lowercase hex): 64 of its
 *           122 random bits are a keyed permutation of i, the other 58 are
 *           derived from those and the seed.
 *   long    SG_LONG_LEN (200) bytes: "lng_" + 16 hex digits (the permuted
 *           index) + "_" + filler in [A-Za-z0-9_-] derived from the seed.
 * Distinct indices give distinct ids; sg_spark_index() inverts this.
 */
static size_t sg_spark_id(uint64_t i, char *buf)
{
    if (sg_ids.fmt == SG_ID_PRIMUS) {
        size_t n = sg_u64toa(sg_ids.ts0 + i / 1024, buf);
        buf[n++] = '$';
        n += sg_u64toa(i, buf + n);
        buf[n] = '\0';
        return n;
    }
    uint64_t x = sg_feistel(i, sg_ids.kx, 0);
    uint64_t y = sg_mix64(x ^ sg_ids.ky);
    if (sg_ids.fmt == SG_ID_UUID) {
        uint64_t hi = (x & 0xffffffffffff0000ull) | 0x4000ull | ((x >> 4) & 0xfffull);
        uint64_t lo = 0x8000000000000000ull | ((x & 0xfull) << 58) |
                      (y & 0x03ffffffffffffffull);
        sg_put_hex(buf, hi >> 32, 8);
        buf[8] = '-';
        sg_put_hex(buf + 9, (hi >> 16) & 0xffff, 4);
        buf[13] = '-';
        sg_put_hex(buf + 14, hi & 0xffff, 4);
        buf[18] = '-';
        sg_put_hex(buf + 19, lo >> 48, 4);
        buf[23] = '-';
        sg_put_hex(buf + 24, lo & 0xffffffffffffull, 12);
        buf[36] = '\0';
        return 36;
    }
    static const char alpha[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    memcpy(buf, "lng_", 4);
    sg_put_hex(buf + 4, x, 16);
    buf[20] = '_';
    size_t n = 21;
    while (n < SG_LONG_LEN) {
        y = sg_mix64(y);
        for (int k = 0; k < 10 && n < SG_LONG_LEN; k++)
            buf[n++] = alpha[(y >> (6 * k)) & 63];
    }
    buf[n] = '\0';
    return n;
}

/* If `id` is exactly the id of some spark 0 <= i < N, set *i and return 1. */
static int sg_spark_index(const char *id, size_t len, uint64_t *i)
{
    uint64_t v = 0;
    if (sg_ids.fmt == SG_ID_PRIMUS) {
        const char *d = memchr(id, '$', len);
        if (!d || d + 1 == id + len || (size_t)(id + len - d - 1) > 19)
            return 0;
        for (const char *p = d + 1; p < id + len; p++) {
            if (*p < '0' || *p > '9')
                return 0;
            v = v * 10 + (uint64_t)(*p - '0');
        }
    } else if (sg_ids.fmt == SG_ID_UUID) {
        uint64_t a, b, c, d, e;
        if (len != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' ||
            sg_get_hex(id, 8, &a) || sg_get_hex(id + 9, 4, &b) ||
            sg_get_hex(id + 14, 4, &c) || sg_get_hex(id + 19, 4, &d) ||
            sg_get_hex(id + 24, 12, &e))
            return 0;
        uint64_t hi = (a << 32) | (b << 16) | c, lo = (d << 48) | e;
        uint64_t x = (hi & 0xffffffffffff0000ull) | ((hi & 0xfffull) << 4) | ((lo >> 58) & 0xf);
        v = sg_feistel(x, sg_ids.kx, 1);
    } else {
        uint64_t x;
        if (len != SG_LONG_LEN || memcmp(id, "lng_", 4) != 0 || sg_get_hex(id + 4, 16, &x))
            return 0;
        v = sg_feistel(x, sg_ids.kx, 1);
    }
    if (v >= sg_ids.n)
        return 0;
    char buf[SG_ID_CAP];
    size_t n = sg_spark_id(v, buf);
    if (n != len || memcmp(buf, id, len) != 0)
        return 0;
    *i = v;
    return 1;
}

/* An id for messages: long ones are cut. */
static const char *sg_id_shown(const char *id, size_t len, char *buf, size_t cap)
{
    if (len <= 48)
        snprintf(buf, cap, "%.*s", (int)len, id);
    else
        snprintf(buf, cap, "%.40s...(%zu bytes)", id, len);
    return buf;
}

/* Sparks of server s: N/S, plus one for the first N % S servers. */
static uint64_t sg_expected(const sg_config_t *cfg, unsigned s)
{
    return cfg->sparks / cfg->servers + (s < cfg->sparks % cfg->servers);
}

static void sg_address(unsigned s, char *buf, size_t cap)
{
    snprintf(buf, cap, "http://127.0.0.1:%u", SG_BASE_PORT + s);
}

/* The server index of an address we generated, or -1. */
static int sg_address_server(const char *a, unsigned servers)
{
    static const char pre[] = "http://127.0.0.1:";
    if (strncmp(a, pre, sizeof pre - 1) != 0)
        return -1;
    char *end;
    unsigned long port = strtoul(a + sizeof pre - 1, &end, 10);
    if (*end || port < SG_BASE_PORT || port >= SG_BASE_PORT + servers)
        return -1;
    return (int)(port - SG_BASE_PORT);
}

/* The i-th index of the sample looked up through the library. */
static uint64_t sg_sample_next(uint64_t *state, uint64_t n)
{
    *state = sg_mix64(*state);
    return *state % n;
}

static uint64_t sg_sample_seed(uint64_t seed)
{
    return seed ^ 0x5a17c0de5a17c0deull;
}

/* ------------------------------------------------------------------------ */
/* Library counters: summing, and the text form nodes answer with           */

/* Every mpx_stats_t field: X(name, how) with how = sum or max. The latency
 * percentiles of several registries are combined as the largest (the worst
 * server's): the combined percentile is never above it. */
#define SG_STATS_FIELDS(X)                                                     \
    X(local_sparks, sum) X(queued, sum) X(committed, sum) X(coalesced, sum)    \
    X(pending, sum) X(batches, sum) X(redis_errors, sum) X(retries, sum)       \
    X(heartbeats, sum) X(reaped_servers, sum) X(reaped_sparks, sum)            \
    X(reregistered, sum) X(cache_entries, sum) X(cache_bytes, sum)             \
    X(lookup_hits, sum) X(lookup_misses, sum) X(commit_latency_p50_us, max)    \
    X(commit_latency_p99_us, max) X(commit_latency_p999_us, max)               \
    X(commit_latency_max_us, max) X(commit_latency_count, sum)

static void sg_stats_add(mpx_stats_t *sum, const mpx_stats_t *st)
{
#define SG_ADD_sum(f) sum->f += st->f;
#define SG_ADD_max(f) if (st->f > sum->f) sum->f = st->f;
#define SG_ADD(f, how) SG_ADD_##how(f)
    SG_STATS_FIELDS(SG_ADD)
#undef SG_ADD
#undef SG_ADD_sum
#undef SG_ADD_max
}

static void sg_stats_format(sg_buf_t *b, const mpx_stats_t *st)
{
#define SG_FMT(f, how) sg_buf_printf(b, " %" PRIu64, st->f);
    SG_STATS_FIELDS(SG_FMT)
#undef SG_FMT
}

/* Parse the fields written by sg_stats_format at *p; advances *p. */
static int sg_stats_parse(const char **p, mpx_stats_t *st)
{
    char *end;
#define SG_PARSE(f, how)                                                       \
    errno = 0;                                                                 \
    st->f = strtoull(*p, &end, 10);                                            \
    if (end == *p || errno)                                                    \
        return -1;                                                             \
    *p = end;
    SG_STATS_FIELDS(SG_PARSE)
#undef SG_PARSE
    return 0;
}

/* What a node reports about itself ("stats"). */
enum { SG_NS_IDLE = 0, SG_NS_CONNECTING, SG_NS_FLUSHING, SG_NS_FLUSHED, SG_NS_FAILED };

typedef struct sg_ninfo {
    int state;                  /* SG_NS_*: progress of "connect" */
    double t_start;             /* producers started (CLOCK_MONOTONIC s) */
    double t_conn_end;          /* all producers done */
    double t_flushed;           /* all servers flushed after connecting */
    uint64_t calls, call_errors; /* mpx_connect calls of the connect phase */
    uint64_t churn_ops;         /* disconnect + reconnect pairs */
    uint64_t api_errors;        /* library calls that returned an error */
    uint64_t bg_errors;         /* on_error calls */
    uint64_t bg_notices;        /* those with MPX_ESTATE: recovery notices */
    long long rss_before_kb;    /* before mpx_create */
    long long rss_after_kb;     /* after the connect flush */
    long long rss_now_kb;
    long long maxrss_kb;
    mpx_stats_t st;             /* summed over the node's servers */
} sg_ninfo_t;

static void sg_ninfo_format(sg_buf_t *b, const sg_ninfo_t *ni)
{
    sg_buf_printf(b,
                  "S %d %.6f %.6f %.6f %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                  " %" PRIu64 " %" PRIu64 " %lld %lld %lld %lld",
                  ni->state, ni->t_start, ni->t_conn_end, ni->t_flushed, ni->calls,
                  ni->call_errors, ni->churn_ops, ni->api_errors, ni->bg_errors, ni->bg_notices,
                  ni->rss_before_kb, ni->rss_after_kb, ni->rss_now_kb, ni->maxrss_kb);
    sg_stats_format(b, &ni->st);
}

static int sg_ninfo_parse(const char *s, sg_ninfo_t *ni)
{
    int used = 0;
    if (sscanf(s,
               "S %d %lf %lf %lf %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
               " %" SCNu64 " %lld %lld %lld %lld%n",
               &ni->state, &ni->t_start, &ni->t_conn_end, &ni->t_flushed, &ni->calls,
               &ni->call_errors, &ni->churn_ops, &ni->api_errors, &ni->bg_errors,
               &ni->bg_notices, &ni->rss_before_kb, &ni->rss_after_kb, &ni->rss_now_kb,
               &ni->maxrss_kb, &used) != 14)
        return -1;
    const char *p = s + used;
    return sg_stats_parse(&p, &ni->st);
}

/* ------------------------------------------------------------------------ */
/* A node: servers and the threads that feed them                           */

typedef struct sg_local sg_local_t;

typedef struct sg_server {
    sg_local_t *node;
    unsigned index; /* global server number */
    char address[64];
    uint64_t expected;
    mpx_t *mpx;
    int registered;
    atomic_uint_fast64_t bg_errors; /* on_error calls */
    atomic_uint_fast64_t bg_notices; /* those with MPX_ESTATE */
} sg_server_t;

/* A producer thread during "connect", then a churn thread during "churn":
 * both work on the sparks start, start + step, ... below N. */
typedef struct sg_worker {
    sg_local_t *node;
    unsigned index;
    uint64_t start, step, count;
    pthread_t thread;
    int running;
    uint64_t calls, errors; /* connect phase; read after join */
    atomic_uint_fast64_t churn_ops;
} sg_worker_t;

struct sg_local {
    const sg_config_t *cfg;
    const char *url;
    unsigned first, count; /* servers first .. first + count - 1 */
    sg_server_t *servers;
    unsigned created;
    unsigned nthreads;
    sg_worker_t *workers;

    atomic_int stop;     /* "abort": producers, churn and flushes end */
    atomic_int state;    /* SG_NS_* */
    pthread_t driver;    /* "connect": producers, then flush */
    int driver_running;
    double t_start, t_conn_end, t_flushed; /* written before state changes */
    uint64_t calls, call_errors;

    atomic_int churn_on;
    int churning; /* churn threads started */
    double churn_pct;

    atomic_uint_fast64_t api_errors;
    long long rss_before_kb, rss_after_kb;
};

static sg_server_t *sg_local_server(sg_local_t *L, uint64_t i)
{
    return &L->servers[i % L->cfg->servers - L->first];
}

static void sg_on_error(mpx_t *mpx, int err, const char *message, void *data)
{
    (void)mpx;
    sg_server_t *s = data;
    atomic_fetch_add(&s->bg_errors, 1);
    /* MPX_ESTATE: the library says what it did to recover (registered
     * again, rewrote its sparks after a restart or failover). */
    if (err == MPX_ESTATE)
        atomic_fetch_add(&s->bg_notices, 1);
    if (s->node->cfg->faults) /* expected: the verification decides */
        sg_warn("server %u (%s): background report %s: %s", s->index, s->address,
                mpx_err_name(err), message ? message : "");
    else
        sg_error("server %u (%s): background error %s: %s", s->index, s->address,
                 mpx_err_name(err), message ? message : "");
}

/* A library call failed: count it and say what and why. */
static void sg_api_error(atomic_uint_fast64_t *counter, const char *what, int rc)
{
    atomic_fetch_add(counter, 1);
    const char *detail = mpx_last_error();
    sg_error("%s: %s (%s)%s%s", what, mpx_err_name(rc), mpx_strerror(rc),
             detail[0] ? ": " : "", detail);
}

/* A failed mpx_connect/mpx_disconnect in a worker: the first few are
 * described, the rest only counted. */
static void sg_worker_error(sg_worker_t *w, uint64_t *errors, const char *call, const char *id,
                            size_t len, sg_server_t *s, int rc)
{
    (*errors)++;
    if (*errors <= 3) {
        char what[192], shown[96];
        snprintf(what, sizeof what, "%s(%s) on server %u", call,
                 sg_id_shown(id, len, shown, sizeof shown), s->index);
        sg_api_error(&w->node->api_errors, what, rc);
    } else {
        atomic_fetch_add(&w->node->api_errors, 1);
    }
}

static void *sg_producer_main(void *arg)
{
    sg_worker_t *w = arg;
    sg_local_t *L = w->node;
    char id[SG_ID_CAP];
    for (uint64_t k = 0; k < w->count; k++) {
        if ((k & 4095) == 0 && atomic_load_explicit(&L->stop, memory_order_relaxed))
            break;
        uint64_t i = w->start + k * w->step;
        size_t len = sg_spark_id(i, id);
        sg_server_t *s = sg_local_server(L, i);
        int rc = mpx_connect(s->mpx, id, len);
        w->calls++;
        if (rc != 0) {
            sg_worker_error(w, &w->errors, "mpx_connect", id, len, s, rc);
            if (rc == MPX_ECLOSED || rc == MPX_ENOMEM)
                break;
        }
    }
    return NULL;
}

/*
 * Churn: pick random sparks of this worker's share (from a generator seeded
 * by --seed and the worker), at churn_pct % of the share per second; each
 * one disconnects, and reconnects to the same server SG_CHURN_DELAY_MS
 * later, like a client that lost its connection (an immediate reconnect
 * would cancel out in the library's queue and never reach Redis). The
 * sparks waiting to reconnect are the only churn state: a ring bounded by
 * the rate. Disjoint shares: no two threads touch one spark, and when the
 * churn stops every spark is connected to its server again.
 */
#define SG_CHURN_DELAY_MS 100.0
#define SG_CHURN_RING_MAX 65536u

typedef struct sg_pend {
    uint64_t i;
    double due;
} sg_pend_t;

static void sg_churn_reconnect(sg_worker_t *w, uint64_t i, uint64_t *errors)
{
    char id[SG_ID_CAP];
    size_t len = sg_spark_id(i, id);
    sg_server_t *s = sg_local_server(w->node, i);
    int rc = mpx_connect(s->mpx, id, len);
    if (rc != 0)
        sg_worker_error(w, errors, "mpx_connect", id, len, s, rc);
}

static void *sg_churn_main(void *arg)
{
    sg_worker_t *w = arg;
    sg_local_t *L = w->node;
    double rate = L->churn_pct / 100.0 * (double)w->count; /* sparks per second */
    if (w->count == 0 || rate <= 0)
        return NULL;
    double want = rate * SG_CHURN_DELAY_MS / 1000.0 * 2 + 1024;
    size_t cap = want > SG_CHURN_RING_MAX ? SG_CHURN_RING_MAX : (size_t)want;
    sg_pend_t *ring = malloc(cap * sizeof *ring);
    if (!ring) {
        sg_error("churn: out of memory");
        atomic_fetch_add(&L->api_errors, 1);
        return NULL;
    }
    size_t head = 0, count = 0;
    uint64_t rng = sg_mix64(L->cfg->seed ^ 0x636875726e636875ull ^ sg_mix64(w->start));
    uint64_t done = 0, errors = 0;
    char id[SG_ID_CAP];
    double t0 = sg_now();
    while (atomic_load_explicit(&L->churn_on, memory_order_relaxed) &&
           !atomic_load_explicit(&L->stop, memory_order_relaxed)) {
        double now = sg_now();
        while (count && ring[head].due <= now) {
            sg_churn_reconnect(w, ring[head].i, &errors);
            head = (head + 1) % cap;
            count--;
        }
        uint64_t due = (uint64_t)((now - t0) * rate);
        if (done >= due) {
            double wait_ms = ((double)(done + 1) / rate - (now - t0)) * 1000.0;
            if (count && (ring[head].due - now) * 1000.0 < wait_ms)
                wait_ms = (ring[head].due - now) * 1000.0;
            sg_sleep_ms(wait_ms < 0.2 ? 0.2 : wait_ms > 20 ? 20 : wait_ms);
            continue;
        }
        uint64_t burst = due - done > 1024 ? 1024 : due - done;
        for (uint64_t b = 0; b < burst; b++) {
            uint64_t i = w->start + w->step * sg_sample_next(&rng, w->count);
            size_t len = sg_spark_id(i, id);
            sg_server_t *s = sg_local_server(L, i);
            int rc = mpx_disconnect(s->mpx, id, len);
            if (rc != 0)
                sg_worker_error(w, &errors, "mpx_disconnect", id, len, s, rc);
            if (count == cap) { /* full: the oldest reconnects early */
                sg_churn_reconnect(w, ring[head].i, &errors);
                head = (head + 1) % cap;
                count--;
            }
            ring[(head + count) % cap] = (sg_pend_t){i, now + SG_CHURN_DELAY_MS / 1000.0};
            count++;
        }
        done += burst;
        atomic_store_explicit(&w->churn_ops, done, memory_order_relaxed);
    }
    /* Stopping: everything still away reconnects now. */
    for (; count; count--, head = (head + 1) % cap)
        sg_churn_reconnect(w, ring[head].i, &errors);
    free(ring);
    return NULL;
}

/* Flush every server of the node until `deadline` (or "abort"). Returns 0,
 * MPX_ETIMEDOUT, or another library error (reported). */
static int sg_local_flush(sg_local_t *L, double deadline)
{
    for (unsigned k = 0; k < L->created; k++) {
        sg_server_t *s = &L->servers[k];
        if (!s->registered)
            continue;
        for (;;) {
            double left = deadline - sg_now();
            uint32_t ms = left <= 0 ? 1 : left > 0.25 ? 250 : (uint32_t)(left * 1000) + 1;
            int rc = mpx_flush(s->mpx, ms);
            if (rc == 0)
                break;
            if (rc != MPX_ETIMEDOUT) {
                char what[128];
                snprintf(what, sizeof what, "mpx_flush on server %u", s->index);
                sg_api_error(&L->api_errors, what, rc);
                return rc;
            }
            if (sg_now() >= deadline || atomic_load(&L->stop))
                return MPX_ETIMEDOUT;
        }
    }
    return 0;
}

static uint64_t sg_local_sparks(const sg_local_t *L)
{
    uint64_t n = 0;
    for (unsigned k = 0; k < L->count; k++)
        n += sg_expected(L->cfg, L->first + k);
    return n;
}

/* "connect": producers, then a flush bounded by 30 s + 1 s per 10000
 * sparks. Runs on its own thread so the node keeps answering. */
static void *sg_driver_main(void *arg)
{
    sg_local_t *L = arg;
    int failed = 0;
    L->t_start = sg_now();
    unsigned started = 0;
    for (; started < L->nthreads; started++) {
        sg_worker_t *w = &L->workers[started];
        w->calls = w->errors = 0;
        if (pthread_create(&w->thread, NULL, sg_producer_main, w) != 0) {
            sg_error("cannot start producer thread %u", started);
            atomic_fetch_add(&L->api_errors, 1);
            atomic_store(&L->stop, 1);
            failed = 1;
            break;
        }
    }
    uint64_t calls = 0, errors = 0;
    for (unsigned t = 0; t < started; t++) {
        pthread_join(L->workers[t].thread, NULL);
        calls += L->workers[t].calls;
        errors += L->workers[t].errors;
    }
    L->calls = calls;
    L->call_errors = errors;
    L->t_conn_end = sg_now();
    atomic_store(&L->state, SG_NS_FLUSHING);

    double budget = 30.0 + (double)sg_local_sparks(L) / 10000.0;
    int rc = failed ? -1 : sg_local_flush(L, sg_now() + budget);
    if (rc == MPX_ETIMEDOUT && !atomic_load(&L->stop)) {
        mpx_stats_t sum = {0}, st;
        for (unsigned k = 0; k < L->created; k++)
            if (mpx_stats(L->servers[k].mpx, &st) == 0)
                sg_stats_add(&sum, &st);
        atomic_fetch_add(&L->api_errors, 1);
        sg_error("flush: %" PRIu64 " changes still pending after %.0f s", sum.pending, budget);
    }
    L->t_flushed = sg_now();
    L->rss_after_kb = sg_rss_kb();
    atomic_store(&L->state,
                 rc == 0 && !errors && !atomic_load(&L->stop) ? SG_NS_FLUSHED : SG_NS_FAILED);
    return NULL;
}

static void sg_local_churn_stop(sg_local_t *L)
{
    if (!L->churning)
        return;
    atomic_store(&L->churn_on, 0);
    for (unsigned t = 0; t < L->nthreads; t++)
        if (L->workers[t].running) {
            pthread_join(L->workers[t].thread, NULL);
            L->workers[t].running = 0;
        }
    L->churning = 0;
}

static void sg_local_info(sg_local_t *L, sg_ninfo_t *ni)
{
    memset(ni, 0, sizeof *ni);
    ni->state = atomic_load(&L->state);
    if (ni->state >= SG_NS_FLUSHING) {
        ni->t_start = L->t_start;
        ni->t_conn_end = L->t_conn_end;
        ni->calls = L->calls;
        ni->call_errors = L->call_errors;
    }
    if (ni->state >= SG_NS_FLUSHED) {
        ni->t_flushed = L->t_flushed;
        ni->rss_after_kb = L->rss_after_kb;
    } else {
        ni->rss_after_kb = -1;
    }
    for (unsigned t = 0; t < L->nthreads; t++)
        ni->churn_ops += atomic_load_explicit(&L->workers[t].churn_ops, memory_order_relaxed);
    ni->api_errors = atomic_load(&L->api_errors);
    for (unsigned k = 0; k < L->created; k++) {
        mpx_stats_t st;
        ni->bg_errors += atomic_load(&L->servers[k].bg_errors);
        ni->bg_notices += atomic_load(&L->servers[k].bg_notices);
        if (mpx_stats(L->servers[k].mpx, &st) == 0)
            sg_stats_add(&ni->st, &st);
    }
    ni->rss_before_kb = L->rss_before_kb;
    ni->rss_now_kb = sg_rss_kb();
    ni->maxrss_kb = sg_maxrss_kb();
}

/*
 * Create a node: servers first .. first + count - 1, registered, and
 * `nthreads` workers over the sparks base + stride * j. Returns 0 or an
 * exit code (the reason is on stderr); *out is set either way (destroy it).
 */
static int sg_local_create(const sg_config_t *cfg, const char *url, unsigned first,
                           unsigned count, unsigned nthreads, uint64_t base, uint64_t stride,
                           sg_local_t **out)
{
    sg_local_t *L = calloc(1, sizeof *L);
    *out = L;
    if (!L)
        return SG_EXIT_FAIL;
    L->cfg = cfg;
    L->url = url;
    L->first = first;
    L->count = count;
    L->nthreads = nthreads;
    atomic_init(&L->stop, 0);
    atomic_init(&L->state, SG_NS_IDLE);
    atomic_init(&L->churn_on, 0);
    atomic_init(&L->api_errors, 0);
    L->servers = calloc(count, sizeof *L->servers);
    L->workers = calloc(nthreads ? nthreads : 1, sizeof *L->workers);
    if (!L->servers || !L->workers) {
        sg_error("out of memory");
        return SG_EXIT_FAIL;
    }
    for (unsigned t = 0; t < nthreads; t++) {
        sg_worker_t *w = &L->workers[t];
        w->node = L;
        w->index = t;
        w->start = base + stride * t;
        w->step = stride * nthreads;
        w->count = w->start < cfg->sparks ? (cfg->sparks - 1 - w->start) / w->step + 1 : 0;
        atomic_init(&w->churn_ops, 0);
    }
    /* RSS from before mpx_create: the tables are presized (size_hint). */
    L->rss_before_kb = sg_rss_kb();
    L->rss_after_kb = -1;
    for (unsigned k = 0; k < count; k++) {
        sg_server_t *s = &L->servers[k];
        s->node = L;
        s->index = first + k;
        atomic_init(&s->bg_errors, 0);
        atomic_init(&s->bg_notices, 0);
        sg_address(s->index, s->address, sizeof s->address);
        s->expected = sg_expected(cfg, s->index);

        mpx_options_t o;
        mpx_options_init(&o);
        o.redis_url = url;
        o.ns = cfg->ns;
        o.interval_ms = cfg->interval_ms;
        o.latency_ms = cfg->latency_ms;
        o.lease_ms = cfg->interval_ms < SG_LEASE_DEFAULT_MS ? cfg->interval_ms
                                                            : SG_LEASE_DEFAULT_MS;
        o.size_hint = (size_t)s->expected;
        o.layout = cfg->layout;
        if (cfg->layout == MPX_LAYOUT_SHARDED)
            o.shards = cfg->shards;
        o.on_error = sg_on_error;
        o.on_error_data = s;
        int rc = mpx_create(&o, &s->mpx);
        if (rc != 0) {
            char what[96];
            snprintf(what, sizeof what, "mpx_create (server %u)", s->index);
            sg_api_error(&L->api_errors, what, rc);
            return rc == MPX_EINVAL ? SG_EXIT_USAGE : SG_EXIT_FAIL;
        }
        L->created++;
        rc = mpx_register(s->mpx, s->address);
        if (rc != 0) {
            char what[128];
            snprintf(what, sizeof what, "mpx_register(%s)", s->address);
            sg_api_error(&L->api_errors, what, rc);
            if (rc == MPX_ECONN || rc == MPX_ETIMEDOUT || rc == MPX_EADDRINUSE)
                return SG_EXIT_USAGE;
            return SG_EXIT_FAIL;
        }
        s->registered = 1;
    }
    return 0;
}

/* Stop everything and free the node (does not unregister). *api, *bg and
 * *notices (may be NULL) get the node's final error counts. */
static void sg_local_destroy(sg_local_t *L, uint64_t *api, uint64_t *bg, uint64_t *notices)
{
    if (!L)
        return;
    atomic_store(&L->stop, 1);
    sg_local_churn_stop(L);
    if (L->driver_running) {
        pthread_join(L->driver, NULL);
        L->driver_running = 0;
    }
    uint64_t bgsum = 0, nsum = 0;
    for (unsigned k = 0; k < L->created; k++) {
        mpx_destroy(L->servers[k].mpx); /* may still report through on_error */
        L->servers[k].mpx = NULL;
        bgsum += atomic_load(&L->servers[k].bg_errors);
        nsum += atomic_load(&L->servers[k].bg_notices);
    }
    if (api)
        *api = atomic_load(&L->api_errors);
    if (bg)
        *bg = bgsum;
    if (notices)
        *notices = nsum;
    free(L->servers);
    free(L->workers);
    free(L);
}

/*
 * Run one command and write its one-line answer into `out`:
 *   stats          S <sg_ninfo_t fields> <mpx_stats_t fields>
 *   sstats         P <count> then the mpx_stats_t fields of each server
 *   connect        ok | E <why>      (starts producers + flush; see stats)
 *   churn <pct>    ok | E <why>      (starts the churn threads)
 *   churnstop      ok <pairs done>
 *   flush <ms>     F <rc> <pending>
 *   sample <n>     L <servers rc> <servers listed> <server of each id>...
 *                  (-1 unknown, -2 an address that is not ours, -3 error)
 *   unregister     U <failures>
 *   gens           G <count> then each server's registration generation
 *                  (sharded layout; "-" when it has none: node layout, or
 *                  not registered)
 *   abort          ok                (stop producers, churn and flushes)
 */
static void sg_local_command(sg_local_t *L, const char *cmd, sg_buf_t *out)
{
    const sg_config_t *cfg = L->cfg;
    sg_buf_clear(out);
    if (strcmp(cmd, "stats") == 0) {
        sg_ninfo_t ni;
        sg_local_info(L, &ni);
        sg_ninfo_format(out, &ni);
    } else if (strcmp(cmd, "sstats") == 0) {
        sg_buf_printf(out, "P %u", L->created);
        for (unsigned k = 0; k < L->created; k++) {
            mpx_stats_t st;
            memset(&st, 0, sizeof st);
            mpx_stats(L->servers[k].mpx, &st);
            sg_stats_format(out, &st);
        }
    } else if (strcmp(cmd, "connect") == 0) {
        if (L->driver_running || atomic_load(&L->state) != SG_NS_IDLE) {
            sg_buf_printf(out, "E connect already started");
            return;
        }
        atomic_store(&L->state, SG_NS_CONNECTING);
        if (pthread_create(&L->driver, NULL, sg_driver_main, L) != 0) {
            atomic_store(&L->state, SG_NS_FAILED);
            sg_buf_printf(out, "E cannot start a thread");
            return;
        }
        L->driver_running = 1;
        sg_buf_printf(out, "ok");
    } else if (strncmp(cmd, "churn ", 6) == 0) {
        if (L->driver_running) { /* producers are done by now: join */
            pthread_join(L->driver, NULL);
            L->driver_running = 0;
        }
        if (L->churning) {
            sg_buf_printf(out, "E churn already running");
            return;
        }
        L->churn_pct = strtod(cmd + 6, NULL);
        atomic_store(&L->churn_on, 1);
        L->churning = 1;
        for (unsigned t = 0; t < L->nthreads; t++) {
            sg_worker_t *w = &L->workers[t];
            if (pthread_create(&w->thread, NULL, sg_churn_main, w) != 0) {
                sg_local_churn_stop(L);
                atomic_fetch_add(&L->api_errors, 1);
                sg_buf_printf(out, "E cannot start churn thread %u", t);
                return;
            }
            w->running = 1;
        }
        sg_buf_printf(out, "ok");
    } else if (strcmp(cmd, "churnstop") == 0) {
        sg_local_churn_stop(L);
        uint64_t ops = 0;
        for (unsigned t = 0; t < L->nthreads; t++)
            ops += atomic_load(&L->workers[t].churn_ops);
        sg_buf_printf(out, "ok %" PRIu64, ops);
    } else if (strncmp(cmd, "flush ", 6) == 0) {
        double ms = strtod(cmd + 6, NULL);
        int rc = sg_local_flush(L, sg_now() + ms / 1000.0);
        uint64_t pending = 0;
        for (unsigned k = 0; k < L->created; k++) {
            mpx_stats_t st;
            if (mpx_stats(L->servers[k].mpx, &st) == 0)
                pending += st.pending;
        }
        sg_buf_printf(out, "F %d %" PRIu64, rc, pending);
    } else if (strncmp(cmd, "sample ", 7) == 0) {
        size_t n = (size_t)strtoull(cmd + 7, NULL, 10);
        if (n > cfg->sparks)
            n = (size_t)cfg->sparks;
        mpx_list_t *servers = NULL;
        int src = L->created ? mpx_servers(L->servers[0].mpx, 1, &servers) : MPX_ESTATE;
        if (src != 0 && L->created)
            sg_api_error(&L->api_errors, "mpx_servers", src);
        sg_buf_printf(out, "L %d %zu", src, servers ? servers->count : (size_t)0);
        mpx_list_free(servers);
        if (n == 0 || !L->created)
            return;
        char(*ids)[SG_ID_CAP] = malloc(n * sizeof *ids);
        const void **ptrs = malloc(n * sizeof *ptrs);
        size_t *lens = malloc(n * sizeof *lens);
        mpx_list_t *list = NULL;
        int rc = MPX_ENOMEM;
        if (ids && ptrs && lens) {
            uint64_t state = sg_sample_seed(cfg->seed);
            for (size_t k = 0; k < n; k++) {
                lens[k] = sg_spark_id(sg_sample_next(&state, cfg->sparks), ids[k]);
                ptrs[k] = ids[k];
            }
            rc = mpx_sparks(L->servers[0].mpx, (const void *const *)ptrs, lens, n, &list);
        }
        if (rc != 0)
            sg_api_error(&L->api_errors, "mpx_sparks (sample)", rc);
        for (size_t k = 0; k < n; k++) {
            int v = -3;
            if (rc == 0 && list && k < list->count) {
                v = list->items[k] ? sg_address_server(list->items[k], cfg->servers) : -1;
                if (v < 0 && list->items[k])
                    v = -2;
            }
            sg_buf_printf(out, " %d", v);
        }
        mpx_list_free(list);
        free(ids);
        free(ptrs);
        free(lens);
    } else if (strcmp(cmd, "unregister") == 0) {
        unsigned failures = 0;
        for (unsigned k = 0; k < L->created; k++) {
            sg_server_t *s = &L->servers[k];
            if (!s->registered)
                continue;
            int rc = mpx_unregister(s->mpx);
            s->registered = 0;
            if (rc != 0) {
                char what[128];
                snprintf(what, sizeof what, "mpx_unregister(%s)", s->address);
                sg_api_error(&L->api_errors, what, rc);
                failures++;
            }
        }
        sg_buf_printf(out, "U %u", failures);
    } else if (strcmp(cmd, "gens") == 0) {
        sg_buf_printf(out, "G %u", L->created);
        for (unsigned k = 0; k < L->created; k++) {
            /* The generation names the server's sets in the sharded layout;
             * it changes when the server registers again (after it was
             * reaped, or Redis lost its control keys). */
            mpx_t *m = L->servers[k].mpx;
            char gen[sizeof m->gen];
            pthread_mutex_lock(&m->addr_mu);
            memcpy(gen, m->gen, sizeof gen);
            pthread_mutex_unlock(&m->addr_mu);
            gen[sizeof gen - 1] = '\0';
            int ok = gen[0] != '\0';
            for (const char *c = gen; *c; c++)
                if ((unsigned char)*c <= ' ')
                    ok = 0; /* not expressible in the answer: reported as none */
            sg_buf_printf(out, " %s", ok ? gen : "-");
        }
    } else if (strcmp(cmd, "abort") == 0) {
        atomic_store(&L->stop, 1);
        sg_buf_printf(out, "ok");
    } else {
        sg_buf_printf(out, "E unknown command '%s'", cmd);
    }
}

/* ------------------------------------------------------------------------ */
/* Run state (the parent)                                                   */

/* A node as the parent sees it: in this process, or a child process. */
typedef struct sg_node {
    int remote;
    unsigned first, count; /* its servers */
    sg_local_t *local;     /* in this process */
    sg_buf_t reply;        /* in this process: the last answer */
    pid_t pid;             /* child */
    int cmd_fd;            /* child: commands go here */
    sg_lr_t lr;            /* child: answers come from here */
    int pending;           /* a command was sent, its answer not read yet */
    int dead;              /* takes no more commands (killed, exited, broken) */
    int failed;            /* it stopped answering (reported) */
    int killed;            /* SIGKILLed on purpose */
    int waited;            /* child reaped with waitpid */
    int wstatus;
    int have_info;
    sg_ninfo_t info;       /* the last "stats" answer */
    char last_cmd[32];
} sg_node_t;

/* The parent's view of each server. */
typedef struct sg_srv {
    char address[64];
    uint64_t expected;
    unsigned node;
    int killed;
    uint64_t sparks_at_kill; /* SCARD of its set just before SIGKILL */
    char gen[64];            /* sharded: its registration's generation ("" none) */
} sg_srv_t;

/* One Redis master as the report sees it (a single Redis is one master):
 * figures are -1 when unknown. A master is known by its "host:port". */
typedef struct sg_master {
    char name[96];
    long long mem_before;  /* used_memory after registration */
    long long mem_after;   /* used_memory after the connect flush */
    long long mem_end;     /* used_memory before verify */
    long long ops_start;   /* total_commands_processed before connecting */
    long long ops_end;     /* the same before verify */
    long long keys;        /* keys of the namespace (SCAN), before verify */
    long long sparks;      /* fields of the spark hashes it holds, before verify */
    int is_master;         /* a master in the last slot map read */
} sg_master_t;

enum {
    SG_PHASE_SETUP = 0,
    SG_PHASE_CONNECT,
    SG_PHASE_STAY,
    SG_PHASE_FLUSH,
    SG_PHASE_VERIFY,
    SG_PHASE_UNREGISTER,
    SG_PHASE_DONE
};

/* Measurements, filled by the phases, printed by the report. */
typedef struct sg_metrics {
    int reached; /* highest phase reached, SG_PHASE_* */
    double register_s, connect_s, commit_s, stay_s, flush_s, verify_s, unregister_s;
    int connected;     /* every node connected and flushed its sparks */
    uint64_t connect_calls;
    long long redis_mem_before, redis_mem_after; /* -1: unknown */
    long long rss_delta_kb;                      /* summed over the nodes; -1: unknown */
    long long maxrss_kb;                         /* largest of the processes */
    mpx_stats_t stats;  /* summed over all servers, before unregister */
    double churn_s;
    uint64_t churn_ops;
    unsigned killed;
    uint64_t killed_sparks; /* in their sets when they were killed */
    double reap_ms;         /* -1: nothing killed or not reaped in time */
    int verified;           /* the whole verify ran */
    uint64_t ids_checked;
    double drains_wait_s;   /* verify waited this long for cleanups to end */
    int measured;           /* the per-master figures at the end were read */
} sg_metrics_t;

typedef struct sg_run {
    sg_config_t cfg;
    mpx__redis_endpoint_t ep; /* parsed --redis / throwaway URL */
    char url_text[512];  /* the Redis URL in use */
    char url_shown[512]; /* the same with any password replaced by "***" */
    char nsc[MPX_NAMESPACE_MAX + 2]; /* namespace followed by ':' */

    redis_proc_t rp;
    int own_redis;
    atomic_int redis_pid; /* for the emergency kill on a second signal */
    char cluster_dir[256];  /* --cluster: tools/cluster.sh's directory */
    char cluster_sh[PATH_MAX]; /* --cluster: the script */
    atomic_int own_cluster; /* read by the signal thread */

    /* Checks: key names from keys.c, commands through the library's own
     * connection type (routed by slot on a cluster); main thread only. */
    mpx__keys_t keys;
    int keys_ready;
    mpx__conn_t conn;
    int conn_ready;    /* mpx__conn_init done */
    int rc_lost_noted; /* "cannot reconnect" recorded once */
    int no_smismember; /* Redis < 6.2: SISMEMBER one by one */
    mpx__argv_t a;     /* the command being built (sg_calln) */

    sg_master_t *masters; /* every master seen, in order of first sight */
    size_t nmasters;

    pid_t parent_pid;
    sg_node_t *nodes;
    unsigned nnodes, nodes_created;
    sg_srv_t *srv;
    int registered; /* the survivors are registered */

    atomic_uint_fast64_t api_errors; /* the parent's own failures */

    uint64_t mismatches;
    int shown;
    char shown_text[SG_SHOWN_MAX][256];

    atomic_int stop_sig; /* signal that asked us to stop, or 0 */
    atomic_int sig_done;
    pthread_t sig_thread;
    int sig_thread_started;

    struct {
        double t0, last_t;
        uint64_t last_queued;
        int printed;
    } prog;

    sg_metrics_t m;
} sg_run_t;

static int sg_stopping(sg_run_t *r)
{
    return atomic_load_explicit(&r->stop_sig, memory_order_relaxed) != 0;
}

/* Record a check failure; the first SG_SHOWN_MAX are kept for the report. */
static void sg_mismatch(sg_run_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sg_mismatch(sg_run_t *r, const char *fmt, ...)
{
    r->mismatches++;
    if (r->shown >= SG_SHOWN_MAX)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->shown_text[r->shown++], sizeof r->shown_text[0], fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* Talking to nodes                                                         */

static void sg_describe_status(int ws, char *buf, size_t cap)
{
    if (WIFEXITED(ws))
        snprintf(buf, cap, "exited with status %d", WEXITSTATUS(ws));
    else if (WIFSIGNALED(ws))
        snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(ws),
                 strsignal(WTERMSIG(ws)));
    else
        snprintf(buf, cap, "status 0x%x", ws);
}

/* A node stopped answering: count it (unless we killed it) and say why. */
static void sg_node_failed(sg_run_t *r, sg_node_t *n, const char *why)
{
    if (n->dead)
        return;
    n->dead = 1;
    if (n->killed)
        return;
    n->failed = 1;
    atomic_fetch_add(&r->api_errors, 1);
    char st[96] = "";
    if (n->remote && !n->waited) {
        int ws;
        sg_sleep_ms(50); /* let a dying child finish */
        if (waitpid(n->pid, &ws, WNOHANG) == n->pid) {
            n->waited = 1;
            n->wstatus = ws;
            char d[80];
            sg_describe_status(ws, d, sizeof d);
            snprintf(st, sizeof st, " (it %s)", d);
        }
    }
    if (n->remote)
        sg_error("server %u process (pid %ld), command '%s': %s%s", n->first, (long)n->pid,
                 n->last_cmd, why, st);
    else
        sg_error("node command '%s': %s", n->last_cmd, why);
}

static int sg_node_begin(sg_run_t *r, sg_node_t *n, const char *cmd)
{
    if (n->dead)
        return -1;
    snprintf(n->last_cmd, sizeof n->last_cmd, "%s", cmd);
    if (!n->remote) {
        sg_local_command(n->local, cmd, &n->reply);
        n->pending = 1;
        return 0;
    }
    char line[128];
    int len = snprintf(line, sizeof line, "%s\n", cmd);
    if (sg_write_all(n->cmd_fd, line, (size_t)len) != 0) {
        sg_node_failed(r, n, strerror(errno));
        return -1;
    }
    n->pending = 1;
    return 0;
}

/* The answer to the command sent by sg_node_begin, or NULL (reported). */
static const char *sg_node_end(sg_run_t *r, sg_node_t *n, int timeout_ms)
{
    if (!n->pending)
        return NULL;
    n->pending = 0;
    if (n->dead)
        return NULL;
    char *line = n->reply.p ? n->reply.p : (char *)"";
    if (n->remote) {
        const char *why = "?";
        line = sg_lr_next(&n->lr, timeout_ms, &why);
        if (!line) {
            sg_node_failed(r, n, why);
            return NULL;
        }
    }
    if (line[0] == 'E') {
        atomic_fetch_add(&r->api_errors, 1);
        sg_error("server %u%s, command '%s': %s", n->first, n->remote ? " process" : "",
                 n->last_cmd, line + 1);
    }
    return line;
}

static const char *sg_node_call(sg_run_t *r, sg_node_t *n, const char *cmd, int timeout_ms)
{
    if (sg_node_begin(r, n, cmd) != 0)
        return NULL;
    return sg_node_end(r, n, timeout_ms);
}

typedef void (*sg_answer_fn)(sg_run_t *r, sg_node_t *n, const char *answer, void *arg);

/* Send `cmd` to every live node, then collect the answers: the nodes work
 * in parallel. `each` (may be NULL) sees each answer. */
static void sg_nodes_all(sg_run_t *r, const char *cmd, int timeout_ms, sg_answer_fn each,
                         void *arg)
{
    for (unsigned i = 0; i < r->nodes_created; i++)
        if (!r->nodes[i].dead)
            sg_node_begin(r, &r->nodes[i], cmd);
    for (unsigned i = 0; i < r->nodes_created; i++) {
        sg_node_t *n = &r->nodes[i];
        if (!n->pending)
            continue;
        const char *a = sg_node_end(r, n, timeout_ms);
        if (a && each)
            each(r, n, a, arg);
    }
}

static void sg_take_stats(sg_run_t *r, sg_node_t *n, const char *a, void *arg)
{
    (void)arg;
    sg_ninfo_t ni;
    if (sg_ninfo_parse(a, &ni) != 0) {
        sg_node_failed(r, n, "unreadable answer to 'stats'");
        return;
    }
    n->info = ni;
    n->have_info = 1;
}

/* Refresh every live node's info. */
static void sg_nodes_stats(sg_run_t *r)
{
    sg_nodes_all(r, "stats", 30000, sg_take_stats, NULL);
}

/* Sum of the nodes' last infos (killed nodes: as last seen). */
static void sg_nodes_sum(sg_run_t *r, sg_ninfo_t *sum)
{
    memset(sum, 0, sizeof *sum);
    for (unsigned i = 0; i < r->nodes_created; i++) {
        const sg_node_t *n = &r->nodes[i];
        /* Error counts also come from the node's last words (shutdown). */
        sum->api_errors += n->info.api_errors;
        sum->bg_errors += n->info.bg_errors;
        sum->bg_notices += n->info.bg_notices;
        if (!n->have_info)
            continue;
        sum->calls += n->info.calls;
        sum->call_errors += n->info.call_errors;
        sum->churn_ops += n->info.churn_ops;
        sg_stats_add(&sum->st, &n->info.st);
    }
}

/* Errors of the whole run: the parent's plus every node's. */
static uint64_t sg_errors(sg_run_t *r)
{
    sg_ninfo_t sum;
    sg_nodes_sum(r, &sum);
    /* --faults: faults come from outside, so the library's background
     * reports are expected; the exact verification decides. */
    return atomic_load(&r->api_errors) + sum.api_errors + (r->cfg.faults ? 0 : sum.bg_errors);
}

/* ------------------------------------------------------------------------ */
/* Option parsing                                                           */

static void sg_help(FILE *f)
{
    fprintf(f,
"Usage: " SG_NAME " [OPTION]...\n"
"Simulate S servers, each a metroplex registry with its own address, fed by T\n"
"producer threads, connecting N sparks in total; optionally churn sparks and\n"
"crash servers for a while; then check that Redis holds exactly the expected\n"
"mapping, unregister, check that nothing is left, and print a report (stdout).\n"
"Progress and diagnostics go to stderr.\n"
"\n"
"  --redis URL          Redis to use, in the library's URL syntax:\n"
"                       redis://[user:password@]host[:port][/db],\n"
"                       unix:///path[?db=N], or a Redis Cluster seed list\n"
"                       redis-cluster://host:port[,host:port...]; default:\n"
"                       start a throwaway redis-server on a free port and\n"
"                       stop it at the end\n"
"  --cluster            without --redis: start a throwaway local Redis\n"
"                       Cluster of %d masters (no replicas) with\n"
"                       tools/cluster.sh instead, and stop it at the end\n"
"  --layout L           key layout: node (the Node original's keys; not on a\n"
"                       cluster) or sharded (hash-tagged shards); default:\n"
"                       sharded on a cluster, node otherwise\n"
"  --shards S           sharded layout: shards, 1..%u (default %u)\n"
"  --servers S          simulated servers, 1..%u (default 4); server i has the\n"
"                       address http://127.0.0.1:<%u+i>\n"
"  --sparks N           sparks in total, 0..%llu (default 100000); spark i\n"
"                       belongs to server i %% S\n"
"  --threads T          producer threads, 1..%u (default: one per server);\n"
"                       with --kill-servers each server process gets T/S of\n"
"                       them (at least one)\n"
"  --duration SEC       stay registered SEC seconds after connecting, 0..%u\n"
"                       (default 0); churn and kills happen meanwhile\n"
"  --churn PCT          during --duration, PCT %% of the sparks per second\n"
"                       (0..100, decimals allowed) disconnect, and reconnect\n"
"                       to the same server %.0f ms later\n"
"  --kill-servers K     crash K of the S servers (0..S-1; the last K) the way a\n"
"                       process crash leaves them: every server then runs in a\n"
"                       child process of its own, and the K are SIGKILLed after\n"
"                       their sparks are committed (half-way through\n"
"                       --duration, or at once without it); the survivors must\n"
"                       reap them. Reaping waits for the alive key to expire,\n"
"                       so use a short interval, e.g.\n"
"                       --kill-servers 2 --interval 2000 --latency 500\n"
"  --id-format F        spark ids: primus (\"<ms timestamp>$<n>\", default),\n"
"                       uuid (RFC 4122 version 4 text), long (%u bytes)\n"
"  --seed N             seed of the spark ids, churn and sample (default 1)\n"
"  --interval MS        alive-key interval, %u..%u (default 300000)\n"
"  --latency MS         heartbeat latency, 1..interval-1 (default 2000); the\n"
"                       heartbeat and reaping run every interval - latency ms\n"
"  --namespace NS       key prefix (default \"metroplex\"); must be empty in Redis\n"
"  --faults             faults are injected from outside meanwhile (reshard,\n"
"                       failover, restarts): the library's on_error reports\n"
"                       are counted and shown but do not fail the run; the\n"
"                       exact verification and calls that return errors\n"
"                       decide\n"
"  --no-verify          skip the checks of Redis (the measurements remain)\n"
"  --json               print the report as one JSON object on one line\n"
"                       (stdout); the human-readable report goes to stderr\n"
"  -q, --quiet          no progress lines or notes on stderr (errors only; with\n"
"                       --json, no human-readable report either)\n"
"  -h, --help           this help\n"
"\n"
"Exit status: 0 ok; 1 mismatches or library errors; 2 usage error, Redis\n"
"unreachable or not startable, or namespace not empty; 128+N on signal N.\n",
            SG_CLUSTER_MASTERS, SG_SHARDS_MAX, SG_SHARDS_DEFAULT, SG_SERVERS_MAX,
            SG_BASE_PORT, (unsigned long long)SG_SPARKS_MAX, SG_THREADS_MAX,
            SG_DURATION_MAX, SG_CHURN_DELAY_MS, SG_LONG_LEN, SG_INTERVAL_MIN,
            SG_INTERVAL_MAX);
}

static int sg_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sg_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, SG_NAME ": ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry '" SG_NAME " --help' for more information.\n");
    va_end(ap);
    return -1;
}

static int sg_parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max,
                        uint64_t *out)
{
    char *end;
    if (!s || !isdigit((unsigned char)s[0]))
        return sg_usage("%s: '%s' is not a non-negative decimal integer", opt, s ? s : "");
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end)
        return sg_usage("%s: '%s' is not a non-negative decimal integer", opt, s);
    if (errno == ERANGE || v < min || v > max)
        return sg_usage("%s: %s is out of range (%" PRIu64 "..%" PRIu64 ")", opt, s, min,
                        max);
    *out = v;
    return 0;
}

static int sg_parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max,
                        uint32_t *out)
{
    uint64_t v;
    if (sg_parse_u64(opt, s, min, max, &v) != 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int sg_parse_pct(const char *opt, const char *s, double *out)
{
    char *end;
    if (!s || !(isdigit((unsigned char)s[0]) || s[0] == '.'))
        return sg_usage("%s: '%s' is not a non-negative number", opt, s ? s : "");
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno == ERANGE || !isfinite(v))
        return sg_usage("%s: '%s' is not a non-negative number", opt, s);
    if (v < 0 || v > 100)
        return sg_usage("%s: %s is out of range (0..100)", opt, s);
    *out = v;
    return 0;
}

/*
 * Copy `url` into `out` with any password hidden: the user info of
 * redis://[user:]password@host and the value of a password= parameter.
 */
static void sg_url_redact(const char *url, char *out, size_t cap)
{
    size_t o = 0;
    const char *p = url;
    if (strncmp(url, "redis://", 8) == 0) {
        const char *slash = strchr(url + 8, '/');
        const char *at = NULL;
        for (const char *c = url + 8; *c && (!slash || c < slash); c++)
            if (*c == '@')
                at = c;
        if (at) {
            const char *colon = memchr(url + 8, ':', (size_t)(at - url - 8));
            const char *keep = colon ? colon + 1 : url + 8;
            o = (size_t)snprintf(out, cap, "%.*s***", (int)(keep - url), url);
            p = at;
        }
    }
    const char *q = strchr(p, '?');
    const char *pw = NULL;
    for (const char *c = q; c && *c; c++)
        if ((c[0] == '?' || c[0] == '&') && strncmp(c + 1, "password=", 9) == 0)
            pw = c + 10;
    if (o >= cap)
        return;
    if (!pw) {
        snprintf(out + o, cap - o, "%s", p);
        return;
    }
    const char *amp = strchr(pw, '&');
    snprintf(out + o, cap - o, "%.*s***%s", (int)(pw - p), p, amp ? amp : "");
}

/* Copy `msg` into `out` with each occurrence of `raw` replaced by `shown`
 * (for library messages that quote the URL). */
static void sg_replace(const char *msg, const char *raw, const char *shown, char *out,
                       size_t cap)
{
    size_t o = 0, rl = strlen(raw);
    out[0] = '\0';
    while (*msg && o + 1 < cap) {
        if (rl && strncmp(msg, raw, rl) == 0) {
            int n = snprintf(out + o, cap - o, "%s", shown);
            o += (size_t)n < cap - o ? (size_t)n : cap - o - 1;
            msg += rl;
        } else {
            out[o++] = *msg++;
            out[o] = '\0';
        }
    }
}

static int sg_valid_ns(const char *ns)
{
    size_t n = strlen(ns);
    if (n == 0 || n > MPX_NAMESPACE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)ns[i];
        if (c <= 0x20 || c >= 0x7f || c == '{' || c == '}')
            return 0;
    }
    return 1;
}

/* Returns 0 (run), 1 (help printed: exit 0) or -1 (usage error printed). */
static int sg_parse_args(int argc, char **argv, sg_config_t *cfg)
{
    enum {
        O_REDIS = 256, O_SERVERS, O_SPARKS, O_DURATION, O_INTERVAL, O_LATENCY,
        O_NAMESPACE, O_THREADS, O_SEED, O_NO_VERIFY, O_CHURN, O_ID_FORMAT, O_KILL, O_JSON,
        O_LAYOUT, O_SHARDS, O_CLUSTER, O_FAULTS
    };
    static const struct option longopts[] = {
        {"redis", required_argument, NULL, O_REDIS},
        {"servers", required_argument, NULL, O_SERVERS},
        {"sparks", required_argument, NULL, O_SPARKS},
        {"duration", required_argument, NULL, O_DURATION},
        {"interval", required_argument, NULL, O_INTERVAL},
        {"latency", required_argument, NULL, O_LATENCY},
        {"namespace", required_argument, NULL, O_NAMESPACE},
        {"threads", required_argument, NULL, O_THREADS},
        {"seed", required_argument, NULL, O_SEED},
        {"no-verify", no_argument, NULL, O_NO_VERIFY},
        {"churn", required_argument, NULL, O_CHURN},
        {"id-format", required_argument, NULL, O_ID_FORMAT},
        {"kill-servers", required_argument, NULL, O_KILL},
        {"json", no_argument, NULL, O_JSON},
        {"layout", required_argument, NULL, O_LAYOUT},
        {"shards", required_argument, NULL, O_SHARDS},
        {"cluster", no_argument, NULL, O_CLUSTER},
        {"faults", no_argument, NULL, O_FAULTS},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *cfg = (sg_config_t){
        .redis_url = NULL,
        .servers = 4,
        .sparks = 100000,
        .duration_s = 0,
        .interval_ms = 300000,
        .latency_ms = 2000,
        .ns = "metroplex",
        .threads = 0,
        .seed = 1,
        .churn_pct = 0,
        .id_format = SG_ID_PRIMUS,
        .kill = 0,
        .quiet = 0,
        .verify = 1,
        .json = 0,
        .layout = MPX_LAYOUT_AUTO,
        .shards = 0,
        .cluster = 0,
    };
    int cluster_url = 0;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hq", longopts, NULL)) != -1) {
        const char *name = argv[optind - 1];
        switch (c) {
        case O_REDIS: {
            mpx__redis_endpoint_t ep;
            if (mpx__parse_redis_url(optarg, &ep) != 0) {
                char shown[512], msg[1024];
                sg_url_redact(optarg, shown, sizeof shown);
                sg_replace(mpx_last_error(), optarg, shown, msg, sizeof msg);
                return sg_usage("--redis: %s", msg);
            }
            cluster_url = ep.cluster;
            mpx__endpoint_free(&ep);
            cfg->redis_url = optarg;
            break;
        }
        case O_LAYOUT:
            if (strcmp(optarg, "node") == 0)
                cfg->layout = MPX_LAYOUT_NODE;
            else if (strcmp(optarg, "sharded") == 0)
                cfg->layout = MPX_LAYOUT_SHARDED;
            else
                return sg_usage("--layout: '%s' is not one of node, sharded", optarg);
            break;
        case O_SHARDS:
            if (sg_parse_u32("--shards", optarg, 1, SG_SHARDS_MAX, &cfg->shards))
                return -1;
            break;
        case O_CLUSTER:
            cfg->cluster = 1;
            break;
        case O_FAULTS:
            cfg->faults = 1;
            break;
        case O_SERVERS:
            if (sg_parse_u32("--servers", optarg, 1, SG_SERVERS_MAX, &cfg->servers))
                return -1;
            break;
        case O_SPARKS:
            if (sg_parse_u64("--sparks", optarg, 0, SG_SPARKS_MAX, &cfg->sparks))
                return -1;
            break;
        case O_DURATION:
            if (sg_parse_u32("--duration", optarg, 0, SG_DURATION_MAX, &cfg->duration_s))
                return -1;
            break;
        case O_INTERVAL:
            if (sg_parse_u32("--interval", optarg, SG_INTERVAL_MIN, SG_INTERVAL_MAX,
                             &cfg->interval_ms))
                return -1;
            break;
        case O_LATENCY:
            if (sg_parse_u32("--latency", optarg, 1, SG_INTERVAL_MAX, &cfg->latency_ms))
                return -1;
            break;
        case O_NAMESPACE:
            if (!sg_valid_ns(optarg))
                return sg_usage("--namespace: '%s' must be 1..%d printable ASCII bytes, "
                                "without spaces, '{' or '}'",
                                optarg, MPX_NAMESPACE_MAX);
            cfg->ns = optarg;
            break;
        case O_THREADS:
            if (sg_parse_u32("--threads", optarg, 1, SG_THREADS_MAX, &cfg->threads))
                return -1;
            break;
        case O_SEED:
            if (sg_parse_u64("--seed", optarg, 0, UINT64_MAX, &cfg->seed))
                return -1;
            break;
        case O_NO_VERIFY:
            cfg->verify = 0;
            break;
        case O_CHURN:
            if (sg_parse_pct("--churn", optarg, &cfg->churn_pct))
                return -1;
            break;
        case O_ID_FORMAT: {
            int f = -1;
            for (int k = 0; k < 3; k++)
                if (strcmp(optarg, sg_id_names[k]) == 0)
                    f = k;
            if (f < 0)
                return sg_usage("--id-format: '%s' is not one of primus, uuid, long", optarg);
            cfg->id_format = f;
            break;
        }
        case O_KILL:
            if (sg_parse_u32("--kill-servers", optarg, 0, SG_SERVERS_MAX, &cfg->kill))
                return -1;
            break;
        case O_JSON:
            cfg->json = 1;
            break;
        case 'q':
            cfg->quiet = 1;
            break;
        case 'h':
            sg_help(stdout);
            return 1;
        case ':':
            return sg_usage("option '%s' needs a value", name);
        default:
            if (optopt)
                return sg_usage("unknown option '-%c'", optopt);
            return sg_usage("unknown option '%s'", name);
        }
    }
    if (optind < argc)
        return sg_usage("unexpected argument '%s'", argv[optind]);
    if (cfg->latency_ms >= cfg->interval_ms)
        return sg_usage("--latency (%" PRIu32 ") must be below --interval (%" PRIu32 ")",
                        cfg->latency_ms, cfg->interval_ms);
    if (cfg->kill >= cfg->servers)
        return sg_usage("--kill-servers (%" PRIu32 ") must leave a survivor to reap: "
                        "at most --servers - 1 (%" PRIu32 ")",
                        cfg->kill, cfg->servers - 1);
    if (cfg->churn_pct > 0 && cfg->duration_s == 0)
        return sg_usage("--churn needs --duration: sparks churn while it runs");
    if (cfg->threads == 0)
        cfg->threads = cfg->servers;
    if (cfg->cluster && cfg->redis_url)
        return sg_usage("--cluster starts a throwaway cluster: not with --redis (give a "
                        "redis-cluster:// URL to use a running one)");
    int on_cluster = cluster_url || cfg->cluster;
    if (cfg->layout == MPX_LAYOUT_AUTO)
        cfg->layout = on_cluster ? MPX_LAYOUT_SHARDED : MPX_LAYOUT_NODE;
    if (cfg->layout == MPX_LAYOUT_NODE && on_cluster)
        return sg_usage("--layout node keeps every spark in one hash and cannot run on Redis "
                        "Cluster: use --layout sharded");
    if (cfg->layout == MPX_LAYOUT_NODE && cfg->shards)
        return sg_usage("--shards applies to the sharded layout (--layout sharded)");
    if (cfg->shards == 0)
        cfg->shards = cfg->layout == MPX_LAYOUT_SHARDED ? SG_SHARDS_DEFAULT : 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Redis checks                                                             */

/*
 * The checks talk to Redis through the library's own connection type
 * (mpx__conn_t): on a single Redis one connection, on a cluster one per
 * master, every command routed by the slot of its first key (MOVED / ASK
 * followed). Key names come from keys.c (r->keys, the run's layout), never
 * from strings built here, so the checks look exactly where the library
 * writes. Per-master work (INFO, SCAN, DBSIZE) uses the node calls of
 * cluster.h; a single Redis is one master.
 */

static void sg_die_build(const char *what) __attribute__((noreturn));
static void sg_die_build(const char *what)
{
    sg_error("cannot build %s (out of memory, or a name too long)", what);
    abort();
}

#define SG_OK(call, what)                                                      \
    do {                                                                       \
        if ((call) != 0)                                                       \
            sg_die_build(what);                                                \
    } while (0)

/*
 * Make sure the check connection is usable: reconnect after an error (Redis
 * may have restarted, a master failed over). When it cannot and `record` is
 * set, record one mismatch for the whole run. Returns 1 if usable.
 */
static int sg_check_ready(sg_run_t *r, int record)
{
    if (!r->conn_ready)
        return 0;
    if (mpx__conn_ensure(&r->conn, true) == 0)
        return 1;
    if (record && !r->rc_lost_noted) {
        char msg[512];
        sg_replace(mpx_last_error(), r->url_text, r->url_shown, msg, sizeof msg);
        sg_mismatch(r, "check connection: cannot reconnect to %s: %s", r->url_shown, msg);
        r->rc_lost_noted = 1;
    }
    return 0;
}

/* A command as text, for messages (long arguments cut). */
static const char *sg_cmd_text(const mpx__argv_t *a, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < a->argc && o + 1 < cap; i++) {
        int len = a->lens[i] > 120 ? 120 : (int)a->lens[i];
        int n = snprintf(buf + o, cap - o, "%s%.*s%s", i ? " " : "", len, a->argv[i],
                         a->lens[i] > 120 ? "..." : "");
        if (n < 0)
            break;
        o += (size_t)n < cap - o ? (size_t)n : cap - o - 1;
        if (i >= 3 && i + 1 < a->argc) {
            snprintf(buf + o, cap - o, " ... (%zu arguments)", a->argc);
            break;
        }
    }
    return buf;
}

/* The library's last message, with the URL's password hidden. */
static const char *sg_lib_msg(const sg_run_t *r, char *buf, size_t cap)
{
    sg_replace(mpx_last_error(), r->url_text, r->url_shown, buf, cap);
    return buf;
}

/* Send the command in `a` (finished here) and read its reply. 0 with *out
 * set (the caller frees it), or -1, recorded as a mismatch when `record`. */
static int sg_send(sg_run_t *r, int record, mpx__argv_t *a, redisReply **out)
{
    *out = NULL;
    mpx__argv_finish(a);
    if (!sg_check_ready(r, record))
        return -1;
    if (mpx__conn_command(&r->conn, a, out) == 0 && *out)
        return 0;
    if (*out)
        freeReplyObject(*out);
    *out = NULL;
    if (record) {
        char t[200], msg[512];
        sg_mismatch(r, "'%s' failed: %s", sg_cmd_text(a, t, sizeof t),
                    sg_lib_msg(r, msg, sizeof msg));
    }
    return -1;
}

/* args[0..n) as one command (all NUL-terminated strings). */
static int sg_calln(sg_run_t *r, int record, const char *const *args, size_t n, redisReply **out)
{
    mpx__argv_reset(&r->a);
    for (size_t i = 0; i < n; i++)
        SG_OK(mpx__argv_push(&r->a, args[i], strlen(args[i])), "a command");
    return sg_send(r, record, &r->a, out);
}

#define SG_ARGS(...)                                                           \
    (const char *const[]){__VA_ARGS__},                                        \
        sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)
#define sg_call(r, record, out, ...) sg_calln((r), (record), SG_ARGS(__VA_ARGS__), (out))

/* Run a command expecting an integer; SG_INT_FAIL on any failure (recorded
 * when `record`). */
#define SG_INT_FAIL LLONG_MIN
static long long sg_intn(sg_run_t *r, int record, const char *const *args, size_t n)
{
    redisReply *rep;
    if (sg_calln(r, record, args, n, &rep) != 0)
        return SG_INT_FAIL;
    long long v = SG_INT_FAIL;
    if (rep->type == REDIS_REPLY_INTEGER) {
        v = rep->integer;
    } else if (record) {
        char t[200];
        sg_mismatch(r, "'%s': unexpected reply type %d %s", sg_cmd_text(&r->a, t, sizeof t),
                    rep->type, rep->str ? rep->str : "");
    }
    freeReplyObject(rep);
    return v;
}
#define sg_int(r, ...) sg_intn((r), 1, SG_ARGS(__VA_ARGS__))
/* The same, failures not recorded (polling). */
#define sg_int_quiet(r, ...) sg_intn((r), 0, SG_ARGS(__VA_ARGS__))

/* The next command of p, or die (p was made large enough). */
static mpx__argv_t *sg_pipe_add(mpx__pipe_t *p)
{
    mpx__argv_t *a = mpx__pipe_add(p);
    if (!a)
        sg_die_build("commands");
    return a;
}

/* p's independent single-slot commands, pipelined (per master on a
 * cluster). Returns 0 when the connection was usable (p->rep[i] or
 * p->rcs[i] per command, as mpx__conn_pipeline), else -1 (recorded when
 * `record`). */
static int sg_pipeline(sg_run_t *r, int record, mpx__pipe_t *p)
{
    for (size_t i = 0; i < p->n; i++) {
        p->rep[i] = NULL;
        p->rcs[i] = MPX_ECONN;
    }
    if (!sg_check_ready(r, record))
        return -1;
    mpx__pipe_run(p, &r->conn);
    return 0;
}

/* Key kinds for sg_kname. */
enum { SG_K_HASH, SG_K_OWN, SG_K_ALIVE, SG_K_LEASE, SG_K_SHARD_GENS };

/*
 * The name of a key as keys.c builds it, into out (SG_KEY_CAP bytes):
 * SG_K_HASH the spark hash of shard s (node layout: NS sparks); SG_K_OWN
 * the set of addr's registration `gen` in shard s (node layout: NS addr
 * :sparks); SG_K_ALIVE, SG_K_LEASE addr's alive key and lease;
 * SG_K_SHARD_GENS shard s's generations hash (sharded only).
 */
static const char *sg_kname(const sg_run_t *r, char *out, int kind, uint32_t s, const char *addr,
                            const char *gen)
{
    mpx__argv_t t;
    mpx__argv_init(&t);
    int rc = MPX_EINVAL;
    switch (kind) {
    case SG_K_HASH:
        rc = mpx__key_hash(&r->keys, s, &t);
        break;
    case SG_K_OWN:
        rc = mpx__key_own(&r->keys, s, addr, gen ? gen : "", &t);
        break;
    case SG_K_ALIVE:
        rc = mpx__key_alive(&r->keys, addr, &t);
        break;
    case SG_K_LEASE:
        rc = mpx__key_lease(&r->keys, addr, &t);
        break;
    case SG_K_SHARD_GENS:
        if (r->keys.layout == MPX_LAYOUT_SHARDED)
            rc = mpx__key_shard_gens(&r->keys, s, &t);
        break;
    }
    if (rc != 0 || t.argc != 1)
        sg_die_build("a key name");
    mpx__argv_finish(&t);
    if (t.lens[0] >= SG_KEY_CAP)
        sg_die_build("a key name");
    memcpy(out, t.argv[0], t.lens[0]);
    out[t.lens[0]] = '\0';
    mpx__argv_free(&t);
    return out;
}

/* A server's set in shard s (its generation from r->srv). */
static const char *sg_key_own(const sg_run_t *r, char *out, uint32_t s, unsigned v)
{
    return sg_kname(r, out, SG_K_OWN, s, r->srv[v].address, r->srv[v].gen);
}

static int sg_sharded(const sg_run_t *r)
{
    return r->keys.layout == MPX_LAYOUT_SHARDED;
}

/*
 * CMD <key> for the key of `kind` in every shard (node layout: the one
 * key), pipelined: e.g. HLEN of the spark hashes, SCARD or EXISTS of a
 * server's sets. Returns the sum of the integer replies, or SG_INT_FAIL
 * (recorded when `record`); per[s] (may be NULL) gets shard s's value.
 */
static long long sg_shards_sum(sg_run_t *r, int record, const char *cmd, int kind,
                               const char *addr, const char *gen, long long *per)
{
    uint32_t S = r->keys.nshards;
    mpx__pipe_t p;
    if (mpx__pipe_init(&p, S) != 0)
        sg_die_build("commands");
    char key[SG_KEY_CAP];
    for (uint32_t s = 0; s < S; s++) {
        mpx__argv_t *a = sg_pipe_add(&p);
        sg_kname(r, key, kind, s, addr, gen);
        SG_OK(mpx__argv_push(a, cmd, strlen(cmd)), "a command");
        SG_OK(mpx__argv_pushcat(a, key, strlen(key), "", 0), "a command");
    }
    long long sum = 0;
    if (sg_pipeline(r, record, &p) != 0)
        sum = SG_INT_FAIL;
    for (uint32_t s = 0; s < S && sum != SG_INT_FAIL; s++) {
        const redisReply *y = p.rep[s];
        if (p.rcs[s] == 0 && y && y->type == REDIS_REPLY_INTEGER) {
            sum += y->integer;
            if (per)
                per[s] = y->integer;
            continue;
        }
        if (record) {
            char t[200], msg[512];
            sg_mismatch(r, "'%s' failed: %s", sg_cmd_text(&p.cmds[s], t, sizeof t),
                        p.rcs[s] ? sg_lib_msg(r, msg, sizeof msg) : "unexpected reply");
        }
        sum = SG_INT_FAIL;
    }
    mpx__pipe_free(&p);
    return sum;
}

/* The value of `field` in an INFO text, or -1. */
static long long sg_info_value(const char *text, const char *field)
{
    size_t fl = strlen(field);
    for (const char *p = text; p && *p; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        if (strncmp(p, field, fl) == 0 && p[fl] == ':')
            return strtoll(p + fl + 1, NULL, 10);
    }
    return -1;
}

/* Masters of the current slot map (a single Redis: 1); 0 if unreachable. */
static size_t sg_nmasters(sg_run_t *r)
{
    return sg_check_ready(r, 0) ? mpx__conn_nodes(&r->conn) : 0;
}

/* The same after reading the slot map again if it is older than
 * max_age_ms (a failover or reshard may have changed the masters). */
static size_t sg_nmasters_fresh(sg_run_t *r, uint32_t max_age_ms)
{
    if (!sg_check_ready(r, 0))
        return 0;
    mpx__conn_refresh(&r->conn, max_age_ms);
    return sg_nmasters(r);
}

/* Run args[0..n) on master i; 0 with *out set, or -1. */
static int sg_node_calln(sg_run_t *r, size_t i, const char *const *args, size_t n,
                         redisReply **out)
{
    mpx__argv_t a;
    mpx__argv_init(&a);
    for (size_t k = 0; k < n; k++)
        SG_OK(mpx__argv_push(&a, args[k], strlen(args[k])), "a command");
    mpx__argv_finish(&a);
    *out = NULL;
    int rc = mpx__conn_node_command(&r->conn, i, &a, out);
    mpx__argv_free(&a);
    if (rc == 0 && *out)
        return 0;
    if (*out)
        freeReplyObject(*out);
    *out = NULL;
    return -1;
}

/* INFO <section> on master i: the value of `field`, or -1. */
static long long sg_node_info(sg_run_t *r, size_t i, const char *section, const char *field)
{
    redisReply *rep;
    if (sg_node_calln(r, i, SG_ARGS("INFO", section), &rep) != 0)
        return -1;
    long long v = rep->type == REDIS_REPLY_STRING ? sg_info_value(rep->str, field) : -1;
    freeReplyObject(rep);
    return v;
}

/* "host:port" of master i copied into out, or "" . */
static const char *sg_node_name(sg_run_t *r, size_t i, char *out, size_t cap)
{
    const char *n = mpx__conn_node_name(&r->conn, i);
    snprintf(out, cap, "%s", n ? n : "");
    return out;
}

/* The report's entry of the master called `name` (added if new). */
static sg_master_t *sg_master_named(sg_run_t *r, const char *name)
{
    for (size_t i = 0; i < r->nmasters; i++)
        if (strcmp(r->masters[i].name, name) == 0)
            return &r->masters[i];
    r->masters = sg_xrealloc(r->masters, (r->nmasters + 1) * sizeof *r->masters);
    sg_master_t *m = &r->masters[r->nmasters++];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->mem_before = m->mem_after = m->mem_end = -1;
    m->ops_start = m->ops_end = m->keys = m->sparks = -1;
    return m;
}

/* Redis used_memory summed over the masters, or -1 if any is unknown. */
static long long sg_redis_used_memory(sg_run_t *r)
{
    size_t n = sg_nmasters_fresh(r, 1000);
    long long sum = n ? 0 : -1;
    for (size_t i = 0; i < n && sum >= 0; i++) {
        long long v = sg_node_info(r, i, "memory", "used_memory");
        sum = v < 0 ? -1 : sum + v;
    }
    return sum;
}

enum { SG_SNAP_BEFORE, SG_SNAP_AFTER, SG_SNAP_END };

/*
 * Record every master's used_memory (and at SG_SNAP_BEFORE / SG_SNAP_END
 * its total_commands_processed) for the report. Returns the used_memory
 * sum, or -1 if a master could not be read.
 */
static long long sg_masters_snapshot(sg_run_t *r, int snap)
{
    size_t n = sg_nmasters_fresh(r, 0);
    if (n == 0)
        return -1;
    if (snap == SG_SNAP_END)
        for (size_t k = 0; k < r->nmasters; k++)
            r->masters[k].is_master = 0;
    long long sum = 0;
    for (size_t i = 0; i < n; i++) {
        char name[96];
        sg_node_name(r, i, name, sizeof name);
        long long mem = sg_node_info(r, i, "memory", "used_memory");
        long long ops = snap == SG_SNAP_AFTER
                            ? -1
                            : sg_node_info(r, i, "stats", "total_commands_processed");
        sum = mem < 0 || sum < 0 ? -1 : sum + mem;
        if (!name[0])
            continue;
        sg_master_t *m = sg_master_named(r, name);
        if (snap == SG_SNAP_BEFORE) {
            m->mem_before = mem;
            m->ops_start = ops;
            m->is_master = 1;
        } else if (snap == SG_SNAP_AFTER) {
            m->mem_after = mem;
        } else {
            m->mem_end = mem;
            m->ops_end = ops;
            m->is_master = 1;
        }
    }
    return sum;
}

typedef void (*sg_key_fn)(sg_run_t *r, size_t master, const char *key, size_t len, void *arg);

/*
 * Keys of the namespace, found with SCAN MATCH on every master (bounded to
 * about SG_SCAN_MAX_KEYS keys visited): "NS:*", and in the sharded layout
 * also "{NS}:*" (the control keys). Calls `each` for each key (may be
 * NULL); returns the count, or -1 if a SCAN failed.
 */
static long long sg_scan_ns(sg_run_t *r, sg_key_fn each, void *arg)
{
    char esc[2 * MPX_NAMESPACE_MAX + 2];
    size_t o = 0;
    for (const char *p = r->cfg.ns; *p; p++) {
        if (strchr("*?[]\\", *p))
            esc[o++] = '\\';
        esc[o++] = *p;
    }
    esc[o] = '\0';
    char patterns[2][2 * MPX_NAMESPACE_MAX + 8];
    int npat = 1;
    snprintf(patterns[0], sizeof patterns[0], "%s:*", esc);
    if (sg_sharded(r)) {
        snprintf(patterns[1], sizeof patterns[1], "{%s}:*", esc);
        npat = 2;
    }
    size_t n = sg_nmasters(r);
    if (n == 0)
        return -1;
    long long found = 0;
    unsigned long long visited = 0;
    for (size_t i = 0; i < n; i++) {
        for (int pi = 0; pi < npat; pi++) {
            char cursor[32] = "0";
            do {
                redisReply *rep;
                if (sg_node_calln(r, i,
                                  SG_ARGS("SCAN", cursor, "MATCH", patterns[pi], "COUNT", "1000"),
                                  &rep) != 0)
                    return -1;
                if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
                    rep->element[0]->type != REDIS_REPLY_STRING ||
                    rep->element[1]->type != REDIS_REPLY_ARRAY) {
                    freeReplyObject(rep);
                    return -1;
                }
                snprintf(cursor, sizeof cursor, "%s", rep->element[0]->str);
                redisReply *keys = rep->element[1];
                for (size_t k = 0; k < keys->elements; k++) {
                    found++;
                    if (each && keys->element[k]->type == REDIS_REPLY_STRING)
                        each(r, i, keys->element[k]->str, keys->element[k]->len, arg);
                }
                visited += 1000;
                freeReplyObject(rep);
            } while (strcmp(cursor, "0") != 0 && visited < SG_SCAN_MAX_KEYS);
        }
    }
    return found;
}

static void sg_cluster_kill(const char *dir);

/* ------------------------------------------------------------------------ */
/* Signals                                                                  */

static volatile sig_atomic_t sg_early_signal;

static void sg_on_early_signal(int sig)
{
    if (!sg_early_signal)
        sg_early_signal = sig;
}

static void *sg_signal_thread(void *arg)
{
    sg_run_t *r = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    const struct timespec tick = {0, 100 * 1000000L};
    while (!atomic_load(&r->sig_done)) {
        int sig = sigtimedwait(&set, NULL, &tick);
        if (sig <= 0)
            continue;
        int none = 0;
        if (atomic_compare_exchange_strong(&r->stop_sig, &none, sig)) {
            sg_note("%s received, stopping (send again to abort)",
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
            continue;
        }
        /* Second signal: kill our redis-server by PID and leave now (the
         * children die with us: PR_SET_PDEATHSIG). */
        pid_t pid = atomic_load(&r->redis_pid);
        if (pid > 0)
            kill(pid, SIGKILL);
        if (atomic_load(&r->own_cluster))
            sg_cluster_kill(r->cluster_dir);
        static const char msg[] = "\nsparkgen: aborted\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
            /* nothing more to do */
        }
        _exit(128 + sig);
    }
    return NULL;
}

/* Catch SIGINT/SIGTERM with a flag-only handler (before Redis starts). */
static void sg_signals_early(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sg_on_early_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* A dead Redis or child must show up as an error, not kill us. */
    signal(SIGPIPE, SIG_IGN);
}

/* Block SIGINT/SIGTERM in this thread and all later threads and children. */
static void sg_signals_block(sg_run_t *r)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (sg_early_signal)
        atomic_store(&r->stop_sig, (int)sg_early_signal);
}

/* Start the signal taker (after the children are forked). */
static int sg_signals_start(sg_run_t *r)
{
    if (pthread_create(&r->sig_thread, NULL, sg_signal_thread, r) != 0) {
        sg_error("cannot start the signal thread");
        return -1;
    }
    r->sig_thread_started = 1;
    return 0;
}

static void sg_signals_stop(sg_run_t *r)
{
    if (!r->sig_thread_started)
        return;
    atomic_store(&r->sig_done, 1);
    pthread_join(r->sig_thread, NULL);
    r->sig_thread_started = 0;
}

/* ------------------------------------------------------------------------ */
/* Progress                                                                 */

/*
 * One progress line, at most once a second on a terminal (redrawn in place
 * with \r) and once every 5 s otherwise (plain lines); never with --quiet.
 * Refreshes the nodes' counters when it prints.
 */
static void sg_progress(sg_run_t *r, const char *phase, const char *extra)
{
    if (sg_quiet)
        return;
    double now = sg_now();
    if (now - (r->prog.last_t > 0 ? r->prog.last_t : r->prog.t0) < (sg_tty ? 1.0 : 5.0))
        return;
    sg_nodes_stats(r);
    sg_ninfo_t sum;
    sg_nodes_sum(r, &sum);
    double dt = now - (r->prog.last_t > 0 ? r->prog.last_t : r->prog.t0);
    uint64_t q = sum.st.queued;
    double rate = dt > 0 && q >= r->prog.last_queued ? (double)(q - r->prog.last_queued) / dt
                                                     : 0.0;
    r->prog.last_t = now;
    r->prog.last_queued = q;
    long long mem = sg_redis_used_memory(r);
    char b1[24], b2[24], b3[24], b4[24];
    char line[320];
    snprintf(line, sizeof line,
             "%-7s %6.1fs  %s sparks/s  queued %s  committed %s  redis %s%s%s", phase,
             now - r->prog.t0, sg_human_count(rate, b1, sizeof b1),
             sg_human_count((double)q, b2, sizeof b2),
             sg_human_count((double)sum.st.committed, b3, sizeof b3),
             mem >= 0 ? sg_human_bytes((double)mem, b4, sizeof b4) : "?", extra ? "  " : "",
             extra ? extra : "");
    if (sg_tty) {
        pthread_mutex_lock(&sg_out_mu);
        fprintf(stderr, "\r\033[K%s: %s", sg_who, line);
        fflush(stderr);
        sg_line_drawn = 1;
        pthread_mutex_unlock(&sg_out_mu);
    } else {
        sg_info("%s", line);
    }
}

/* Wipe the progress line (before the report). */
static void sg_progress_end(void)
{
    sg_out_begin();
    sg_out_end();
}

/* ------------------------------------------------------------------------ */
/* Child processes (--kill-servers)                                         */

/*
 * The life of server s in its own process: create the node, register,
 * answer "R <rc> <rss before>", then obey commands from the parent until
 * "exit" (answered "X <api errors> <background errors>" once everything is
 * destroyed) or until the parent goes away. Never returns.
 */
static void sg_child_main(sg_run_t *r, unsigned s, int cmd_fd, int rep_fd)
    __attribute__((noreturn));
static void sg_child_main(sg_run_t *r, unsigned s, int cmd_fd, int rep_fd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != r->parent_pid)
        _exit(SG_EXIT_FAIL);
    snprintf(sg_who, sizeof sg_who, "sparkgen[server %u]", s);
    sg_line_drawn = 0;
    /* The parent's ends of the earlier children's pipes: if we kept them,
     * those children would never see their parent close them. */
    for (unsigned j = 0; j < s; j++) {
        close(r->nodes[j].cmd_fd);
        close(r->nodes[j].lr.fd);
    }
    /* The parent closed its check connection before forking (so no
     * socket is shared): nothing of it to release here. */
    const sg_config_t *cfg = &r->cfg;
    unsigned S = cfg->servers, T = cfg->threads;
    unsigned nt = T / S + (s < T % S);
    if (nt == 0)
        nt = 1;
    sg_local_t *L = NULL;
    int rc = sg_local_create(cfg, r->url_text, s, 1, nt, s, S, &L);
    sg_buf_t out = {0};
    sg_buf_printf(&out, "R %d %lld\n", rc, L ? L->rss_before_kb : -1LL);
    int ok = sg_write_all(rep_fd, out.p, out.len) == 0;
    int code = rc;
    sg_lr_t lr = {.fd = cmd_fd};
    int said_exit = 0;
    while (ok && rc == 0) {
        const char *why;
        char *line = sg_lr_next(&lr, -1, &why);
        if (!line) { /* the parent is gone: stop without unregistering */
            code = SG_EXIT_FAIL;
            break;
        }
        if (strcmp(line, "exit") == 0) {
            said_exit = 1;
            break;
        }
        sg_local_command(L, line, &out);
        sg_buf_printf(&out, "\n");
        if (sg_write_all(rep_fd, out.p, out.len) != 0) {
            code = SG_EXIT_FAIL;
            break;
        }
    }
    uint64_t api = 0, bg = 0, notices = 0;
    sg_local_destroy(L, &api, &bg, &notices);
    if (said_exit) {
        sg_buf_clear(&out);
        sg_buf_printf(&out, "X %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", api, bg, notices);
        if (sg_write_all(rep_fd, out.p, out.len) != 0)
            code = SG_EXIT_FAIL;
    }
    sg_buf_free(&out);
    free(lr.buf);
    close(cmd_fd);
    close(rep_fd);
    fflush(stderr);
    exit(code);
}

/* ------------------------------------------------------------------------ */
/* Throwaway Redis Cluster (--cluster)                                       */

/* tools/cluster.sh: $MPX_CLUSTER_SH, else next to the build (the binary is
 * build/bin/metroplex-sparkgen), else ./tools/cluster.sh. */
static int sg_find_cluster_sh(char *out, size_t cap)
{
    const char *env = getenv("MPX_CLUSTER_SH");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return access(out, R_OK) == 0 ? 0 : -1;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            static const char *const rel[] = {"/../../tools/cluster.sh", "/../tools/cluster.sh"};
            for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
                int n = snprintf(out, cap, "%s%s", exe, rel[i]);
                if (n > 0 && (size_t)n < cap && access(out, R_OK) == 0)
                    return 0;
            }
        }
    }
    snprintf(out, cap, "tools/cluster.sh");
    return access(out, R_OK) == 0 ? 0 : -1;
}

static int sg_shell_safe(const char *s)
{
    return strchr(s, '\'') == NULL;
}

/* Start a cluster of SG_CLUSTER_MASTERS masters in a fresh directory; its
 * seed URL goes to r->url_text. 0 or an exit code. */
static int sg_cluster_start(sg_run_t *r)
{
    if (sg_find_cluster_sh(r->cluster_sh, sizeof r->cluster_sh) != 0) {
        sg_error("--cluster: tools/cluster.sh not found (set $MPX_CLUSTER_SH)");
        return SG_EXIT_USAGE;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(r->cluster_dir, sizeof r->cluster_dir, "%s/sparkgen-cluster.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(r->cluster_dir)) {
        sg_error("--cluster: mkdtemp %s: %s", r->cluster_dir, strerror(errno));
        r->cluster_dir[0] = '\0';
        return SG_EXIT_USAGE;
    }
    if (!sg_shell_safe(r->cluster_sh) || !sg_shell_safe(r->cluster_dir)) {
        sg_error("--cluster: paths with a quote are not supported");
        rmdir(r->cluster_dir);
        return SG_EXIT_USAGE;
    }
    char cmd[PATH_MAX * 2 + 128];
    snprintf(cmd, sizeof cmd, "bash '%s' start '%s' --masters %d --replicas 0", r->cluster_sh,
             r->cluster_dir, SG_CLUSTER_MASTERS);
    sg_info("starting a throwaway Redis Cluster (%d masters) in %s", SG_CLUSTER_MASTERS,
            r->cluster_dir);
    fflush(stderr);
    atomic_store(&r->own_cluster, 1); /* from now on, stop it on the way out */
    FILE *p = popen(cmd, "r");
    if (!p) {
        sg_error("--cluster: cannot run %s: %s", r->cluster_sh, strerror(errno));
        return SG_EXIT_USAGE;
    }
    char line[512];
    r->url_text[0] = '\0';
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strncmp(line, "redis-cluster://", 16) == 0)
            snprintf(r->url_text, sizeof r->url_text, "%s", line);
    }
    int st = pclose(p);
    if (st != 0 || !r->url_text[0]) {
        sg_error("--cluster: tools/cluster.sh start failed (status %d)", st);
        return SG_EXIT_USAGE;
    }
    return 0;
}

/* Stop the cluster we started (the script stops exactly its recorded PIDs
 * and removes the directory). */
static void sg_cluster_stop(sg_run_t *r)
{
    if (!atomic_load(&r->own_cluster))
        return;
    char cmd[PATH_MAX * 2 + 64];
    snprintf(cmd, sizeof cmd, "bash '%s' stop '%s' >/dev/null", r->cluster_sh, r->cluster_dir);
    int st = system(cmd);
    atomic_store(&r->own_cluster, 0);
    if (st != 0)
        sg_warn("--cluster: 'tools/cluster.sh stop %s' exited with status %d", r->cluster_dir,
                st);
}

/* Second signal: SIGKILL the cluster's redis-server processes (the PIDs
 * tools/cluster.sh recorded, each checked to be a redis-server first). */
static void sg_cluster_kill(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/pids", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    long pid, port;
    while (fscanf(f, "%ld %ld", &pid, &port) == 2) {
        char cpath[64], cmdline[256] = "";
        snprintf(cpath, sizeof cpath, "/proc/%ld/cmdline", pid);
        FILE *c = fopen(cpath, "r");
        if (!c)
            continue;
        size_t n = fread(cmdline, 1, sizeof cmdline - 1, c);
        fclose(c);
        for (size_t i = 0; i < n; i++)
            if (!cmdline[i])
                cmdline[i] = ' ';
        cmdline[n] = '\0';
        if (pid > 1 && strstr(cmdline, "redis-server"))
            kill((pid_t)pid, SIGKILL);
    }
    fclose(f);
}

/* ------------------------------------------------------------------------ */
/* Phases                                                                   */

/* Start or reach Redis; check the namespace is empty. Exit code or 0. */
static int sg_phase_redis(sg_run_t *r)
{
    if (r->cfg.cluster) {
        int rc = sg_cluster_start(r);
        if (rc)
            return rc;
        sg_info("Redis Cluster at %s", r->url_text);
    } else if (!r->cfg.redis_url) {
        if (redis_proc_start(&r->rp, NULL) != 0) {
            redis_proc_destroy(&r->rp); /* its temporary directory */
            sg_error("cannot start a throwaway redis-server (is redis-server in PATH, "
                     "or $MPX_REDIS_SERVER set?)");
            return SG_EXIT_USAGE;
        }
        r->own_redis = 1;
        atomic_store(&r->redis_pid, (int)r->rp.pid);
        snprintf(r->url_text, sizeof r->url_text, "%s", r->rp.url);
        sg_info("started redis-server pid %ld at %s", (long)r->rp.pid, r->url_text);
    } else {
        snprintf(r->url_text, sizeof r->url_text, "%s", r->cfg.redis_url);
    }
    sg_url_redact(r->url_text, r->url_shown, sizeof r->url_shown);
    if (mpx__parse_redis_url(r->url_text, &r->ep) != 0) {
        sg_error("unusable Redis URL %s", r->url_shown);
        return SG_EXIT_USAGE;
    }
    if (mpx__keys_init_layout(&r->keys, r->cfg.ns, r->cfg.layout, r->cfg.shards) != 0) {
        sg_error("cannot set up the key names (out of memory)");
        return SG_EXIT_FAIL;
    }
    r->keys_ready = 1;
    mpx__argv_init(&r->a);
    mpx__conn_init(&r->conn, &r->ep, 2000, SG_CHECK_TIMEOUT_MS, "sparkgen", NULL);
    r->conn_ready = 1;
    if (mpx__conn_ensure(&r->conn, true) != 0) {
        char msg[512];
        sg_error("cannot reach Redis at %s: %s", r->url_shown, sg_lib_msg(r, msg, sizeof msg));
        return SG_EXIT_USAGE;
    }
    long long keys = sg_scan_ns(r, NULL, NULL);
    long long hlen = sg_shards_sum(r, 1, "HLEN", SG_K_HASH, NULL, NULL, NULL);
    long long nservers = sg_int(r, "SCARD", r->keys.servers);
    if (keys < 0 || hlen < 0 || nservers < 0) {
        sg_error("cannot inspect namespace '%s' at %s", r->cfg.ns, r->url_shown);
        return SG_EXIT_USAGE;
    }
    if (keys > 0) {
        sg_error("namespace '%s' at %s is not empty (%lld keys, %lld sparks, %lld "
                 "servers); choose another --namespace",
                 r->cfg.ns, r->url_shown, keys, hlen, nservers);
        return SG_EXIT_USAGE;
    }
    /* SMISMEMBER needs Redis 6.2; older ones get SISMEMBER one by one. */
    char key[SG_KEY_CAP];
    snprintf(key, sizeof key, "%ssparkgen-probe:sparks", r->nsc);
    redisReply *rep;
    r->no_smismember = sg_call(r, 0, &rep, "SMISMEMBER", key, "x") != 0;
    if (!r->no_smismember) {
        r->no_smismember = rep->type != REDIS_REPLY_ARRAY;
        freeReplyObject(rep);
    }
    size_t masters = sg_nmasters(r);
    if (sg_sharded(r))
        sg_info("sharded layout, %" PRIu32 " shards; %zu master%s", r->keys.nshards, masters,
                masters == 1 ? "" : "s");
    r->mismatches = 0; /* nothing above is a mismatch of this run */
    r->shown = 0;
    r->rc_lost_noted = 0;
    return 0;
}

/* Create the nodes and register the servers: one node here, or (with
 * --kill-servers) one child process per server. Exit code or 0. */
static int sg_phase_nodes(sg_run_t *r)
{
    const sg_config_t *cfg = &r->cfg;
    unsigned S = cfg->servers;
    r->srv = calloc(S, sizeof *r->srv);
    r->nnodes = cfg->kill ? S : 1;
    r->nodes = calloc(r->nnodes, sizeof *r->nodes);
    if (!r->srv || !r->nodes) {
        sg_error("out of memory");
        return SG_EXIT_FAIL;
    }
    for (unsigned s = 0; s < S; s++) {
        sg_address(s, r->srv[s].address, sizeof r->srv[s].address);
        r->srv[s].expected = sg_expected(cfg, s);
        r->srv[s].node = cfg->kill ? s : 0;
    }
    r->registered = 1; /* from now on, some may be */
    double t0 = sg_now();
    if (!cfg->kill) {
        sg_node_t *n = &r->nodes[0];
        n->first = 0;
        n->count = S;
        n->cmd_fd = n->lr.fd = -1;
        r->nodes_created = 1;
        int rc = sg_local_create(cfg, r->url_text, 0, S, cfg->threads, 0, 1, &n->local);
        if (rc != 0)
            return rc;
    } else {
        r->parent_pid = getpid();
        /* No check connection across fork: it is opened again when next
         * used. */
        mpx__conn_free(&r->conn);
        for (unsigned s = 0; s < S; s++) {
            sg_node_t *n = &r->nodes[s];
            int cmd[2], rep[2];
            if (pipe2(cmd, O_CLOEXEC) != 0) {
                sg_error("pipe: %s", strerror(errno));
                return SG_EXIT_FAIL;
            }
            if (pipe2(rep, O_CLOEXEC) != 0) {
                sg_error("pipe: %s", strerror(errno));
                close(cmd[0]);
                close(cmd[1]);
                return SG_EXIT_FAIL;
            }
            fflush(stdout);
            fflush(stderr);
            pid_t pid = fork();
            if (pid < 0) {
                sg_error("fork: %s", strerror(errno));
                close(cmd[0]);
                close(cmd[1]);
                close(rep[0]);
                close(rep[1]);
                return SG_EXIT_FAIL;
            }
            if (pid == 0) {
                close(cmd[1]);
                close(rep[0]);
                sg_child_main(r, s, cmd[0], rep[1]);
            }
            close(cmd[0]);
            close(rep[1]);
            n->remote = 1;
            n->first = s;
            n->count = 1;
            n->pid = pid;
            n->cmd_fd = cmd[1];
            n->lr.fd = rep[0];
            snprintf(n->last_cmd, sizeof n->last_cmd, "(start)");
            r->nodes_created++;
        }
        /* Registration blocks at most about connect + 3 x command timeout. */
        int status = 0;
        for (unsigned s = 0; s < S; s++) {
            sg_node_t *n = &r->nodes[s];
            const char *why = "?";
            char *line = sg_lr_next(&n->lr, 120000, &why);
            int rc = -1;
            long long rss = -1;
            if (!line || sscanf(line, "R %d %lld", &rc, &rss) != 2) {
                sg_node_failed(r, n, line ? "unreadable first answer" : why);
                status = SG_EXIT_FAIL;
                continue;
            }
            if (rc != 0) {
                n->dead = 1; /* it said why and exits */
                n->failed = 1;
                atomic_fetch_add(&r->api_errors, 1);
                if (rc > status)
                    status = rc;
            }
        }
        if (status)
            return status;
    }
    r->m.register_s = sg_now() - t0;
    /* Redis memory from after registration: only the sparks count. Every
     * master's memory and command count, for the per-master figures. */
    r->m.redis_mem_before = sg_masters_snapshot(r, SG_SNAP_BEFORE);
    sg_info("registered %u servers in %.3f s%s", S, r->m.register_s,
            cfg->kill ? " (one process each)" : "");
    return 0;
}

static void sg_expect_ok(sg_run_t *r, sg_node_t *n, const char *a, void *arg)
{
    (void)n;
    int *failed = arg;
    if (strncmp(a, "ok", 2) != 0) {
        if (a[0] != 'E') { /* E answers are reported by sg_node_end */
            atomic_fetch_add(&r->api_errors, 1);
            sg_error("unexpected answer '%.60s'", a);
        }
        if (failed)
            *failed = 1;
    }
}

/* Connect every spark, then each node flushes; timings come from the
 * nodes' clocks (CLOCK_MONOTONIC is system-wide). */
static int sg_phase_connect(sg_run_t *r)
{
    r->m.reached = SG_PHASE_CONNECT;
    r->prog.t0 = sg_now();
    r->prog.last_t = 0;
    r->prog.last_queued = 0;
    int failed = 0;
    sg_nodes_all(r, "connect", 30000, sg_expect_ok, &failed);
    int aborted = 0;
    for (;;) {
        if (sg_stopping(r) && !aborted) {
            sg_nodes_all(r, "abort", 30000, NULL, NULL);
            aborted = 1;
        }
        sg_nodes_stats(r);
        int done = 1;
        for (unsigned i = 0; i < r->nodes_created; i++) {
            const sg_node_t *n = &r->nodes[i];
            if (!n->dead && n->info.state != SG_NS_FLUSHED && n->info.state != SG_NS_FAILED)
                done = 0;
        }
        if (done)
            break;
        sg_progress(r, "connect", NULL);
        sg_sleep_ms(100);
    }
    double t_start = 0, t_conn = 0, t_flushed = 0;
    long long rss = 0;
    int connected = !failed;
    for (unsigned i = 0; i < r->nodes_created; i++) {
        const sg_node_t *n = &r->nodes[i];
        if (n->dead || n->info.state != SG_NS_FLUSHED)
            connected = 0;
        if (n->dead || !n->have_info)
            continue;
        if (t_start == 0 || n->info.t_start < t_start)
            t_start = n->info.t_start;
        if (n->info.t_conn_end > t_conn)
            t_conn = n->info.t_conn_end;
        if (n->info.t_flushed > t_flushed)
            t_flushed = n->info.t_flushed;
        r->m.connect_calls += n->info.calls;
        if (rss >= 0 && n->info.rss_before_kb >= 0 && n->info.rss_after_kb >= 0)
            rss += n->info.rss_after_kb - n->info.rss_before_kb;
        else
            rss = -1;
    }
    r->m.connected = connected;
    r->m.connect_s = t_conn > t_start ? t_conn - t_start : 0;
    r->m.commit_s = t_flushed > t_start ? t_flushed - t_start : 0;
    r->m.rss_delta_kb = connected ? rss : -1;
    r->m.redis_mem_after = sg_masters_snapshot(r, SG_SNAP_AFTER);
    sg_info("connect: %" PRIu64 " calls in %.3f s (%.0f/s) with %u threads; all committed "
            "after %.3f s (%.0f/s)",
            r->m.connect_calls, r->m.connect_s,
            r->m.connect_s > 0 ? (double)r->m.connect_calls / r->m.connect_s : 0.0,
            r->cfg.threads, r->m.commit_s,
            r->m.commit_s > 0 ? (double)r->cfg.sparks / r->m.commit_s : 0.0);
    return connected ? 0 : SG_EXIT_FAIL;
}

typedef struct sg_flush_round {
    int all_done;
    int failed;
    uint64_t pending;
} sg_flush_round_t;

static void sg_take_flush(sg_run_t *r, sg_node_t *n, const char *a, void *arg)
{
    sg_flush_round_t *fr = arg;
    int rc;
    unsigned long long pending;
    if (sscanf(a, "F %d %llu", &rc, &pending) != 2) {
        sg_node_failed(r, n, "unreadable answer to 'flush'");
        fr->failed = 1;
        return;
    }
    fr->pending += pending;
    if (rc != 0)
        fr->all_done = 0;
    if (rc != 0 && rc != MPX_ETIMEDOUT)
        fr->failed = 1; /* reported by the node */
}

/* Flush the live nodes in [from, to) within budget_s. 0 or -1 (reported). */
static int sg_nodes_flush(sg_run_t *r, unsigned from, unsigned to, double budget_s,
                          const char *phase)
{
    double deadline = sg_now() + budget_s;
    for (;;) {
        sg_flush_round_t fr = {1, 0, 0};
        for (unsigned i = from; i < to; i++)
            if (!r->nodes[i].dead)
                sg_node_begin(r, &r->nodes[i], "flush 250");
        for (unsigned i = from; i < to; i++) {
            sg_node_t *n = &r->nodes[i];
            if (!n->pending)
                continue;
            const char *a = sg_node_end(r, n, 30000);
            if (a)
                sg_take_flush(r, n, a, &fr);
            else
                fr.failed = 1;
        }
        if (fr.failed)
            return -1;
        if (fr.all_done)
            return 0;
        if (sg_stopping(r))
            return -1;
        if (sg_now() >= deadline) {
            atomic_fetch_add(&r->api_errors, 1);
            sg_error("%s: %" PRIu64 " changes still pending after %.0f s", phase, fr.pending,
                     budget_s);
            return -1;
        }
        char extra[64];
        snprintf(extra, sizeof extra, "pending %" PRIu64, fr.pending);
        sg_progress(r, phase, extra);
    }
}

static void sg_take_churn_ops(sg_run_t *r, sg_node_t *n, const char *a, void *arg)
{
    (void)r;
    (void)n;
    unsigned long long ops;
    if (sscanf(a, "ok %llu", &ops) == 1)
        *(uint64_t *)arg += ops;
}

/* Is Redis free of everything of the killed servers? Quiet polling: a
 * failed call just means "not yet". */
static int sg_check_ids_absent(sg_run_t *r, unsigned v);
static int sg_shard_markers(sg_run_t *r, int record,
                            void (*each)(sg_run_t *r, uint32_t s, unsigned v, const char *val,
                                         void *arg),
                            void *arg);

/* Sharded: a drained generation leaves a tombstone, "-" + generation, as
 * its shard marker (it refuses a late writer of that generation); it is
 * overwritten by the address's next registration, never deleted. */
static int sg_tombstone(const char *val)
{
    return val && val[0] == '-';
}

/* Reaped: no shard still marks a killed server's generation as live (its
 * drained generation's tombstone is fine). */
static void sg_marker_of_killed(sg_run_t *r, uint32_t s, unsigned v, const char *val, void *arg)
{
    (void)s;
    if (val && !sg_tombstone(val) && r->srv[v].killed)
        *(int *)arg = 1;
}

static int sg_reap_done(sg_run_t *r)
{
    char key[SG_KEY_CAP];
    for (unsigned v = 0; v < r->cfg.servers; v++) {
        const sg_srv_t *s = &r->srv[v];
        if (!s->killed)
            continue;
        if (sg_int_quiet(r, "SISMEMBER", r->keys.servers, s->address) != 0)
            return 0;
        if (sg_int_quiet(r, "EXISTS", sg_kname(r, key, SG_K_ALIVE, 0, s->address, NULL)) != 0)
            return 0;
        if (sg_int_quiet(r, "EXISTS", sg_kname(r, key, SG_K_LEASE, 0, s->address, NULL)) != 0)
            return 0;
        if (sg_shards_sum(r, 0, "EXISTS", SG_K_OWN, s->address, s->gen, NULL) != 0)
            return 0;
        if (sg_sharded(r) && sg_int_quiet(r, "HEXISTS", r->keys.gens, s->address) != 0)
            return 0;
    }
    /* No cleanup of theirs still listed. */
    redisReply *rep;
    if (sg_call(r, 0, &rep, "HVALS", r->keys.drains) != 0)
        return 0;
    if (rep->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        return 0;
    }
    int pending = 0;
    for (size_t k = 0; k < rep->elements && !pending; k++) {
        const redisReply *e = rep->element[k];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        int v = sg_address_server(e->str, r->cfg.servers);
        if (v >= 0 && r->srv[v].killed)
            pending = 1;
    }
    freeReplyObject(rep);
    if (pending)
        return 0;
    /* Sharded: no shard still marks a generation of theirs. */
    if (sg_sharded(r) && (sg_shard_markers(r, 0, sg_marker_of_killed, &pending) != 0 || pending))
        return 0;
    /* And none of their sparks left in the hash. */
    for (unsigned v = 0; v < r->cfg.servers; v++)
        if (r->srv[v].killed && !sg_check_ids_absent(r, v))
            return 0;
    return 1;
}

static void sg_take_gens(sg_run_t *r, sg_node_t *n, const char *a, void *arg)
{
    (void)arg;
    unsigned count;
    int used = 0;
    if (sscanf(a, "G %u%n", &count, &used) != 1 || count > n->count) {
        sg_node_failed(r, n, "unreadable answer to 'gens'");
        return;
    }
    const char *p = a + used;
    for (unsigned k = 0; k < count; k++) {
        while (*p == ' ')
            p++;
        size_t len = strcspn(p, " ");
        sg_srv_t *s = &r->srv[n->first + k];
        if (len == 0 || (len == 1 && *p == '-'))
            s->gen[0] = '\0';
        else
            snprintf(s->gen, sizeof s->gen, "%.*s", (int)len, p);
        p += len;
    }
}

/* Sharded: learn the current generation of the servers of the live nodes
 * in [from, to) (their sets are named by it). No-op in the node layout. */
static void sg_nodes_gens(sg_run_t *r, unsigned from, unsigned to)
{
    if (!sg_sharded(r))
        return;
    for (unsigned i = from; i < to; i++)
        if (!r->nodes[i].dead)
            sg_node_begin(r, &r->nodes[i], "gens");
    for (unsigned i = from; i < to; i++) {
        sg_node_t *n = &r->nodes[i];
        if (!n->pending)
            continue;
        const char *a = sg_node_end(r, n, 30000);
        if (a)
            sg_take_gens(r, n, a, NULL);
    }
}

/*
 * Crash the last K servers: stop their churn, flush them (so every spark
 * they hold is committed), note what they hold, then SIGKILL them all at
 * once and reap the processes. Returns 0 or -1.
 */
static int sg_kill_servers(sg_run_t *r, double *t_kill)
{
    const sg_config_t *cfg = &r->cfg;
    unsigned from = cfg->servers - cfg->kill, to = cfg->servers;
    uint64_t ops = 0;
    for (unsigned i = from; i < to; i++)
        sg_node_begin(r, &r->nodes[i], "churnstop");
    for (unsigned i = from; i < to; i++) {
        const char *a = sg_node_end(r, &r->nodes[i], 60000);
        if (a)
            sg_take_churn_ops(r, &r->nodes[i], a, &ops);
    }
    r->m.churn_ops += ops;
    if (sg_nodes_flush(r, from, to, 30.0 + (double)cfg->sparks / 10000.0, "kill") != 0)
        return -1;
    for (unsigned i = from; i < to; i++) /* their last counters */
        if (sg_node_begin(r, &r->nodes[i], "stats") == 0) {
            const char *a = sg_node_end(r, &r->nodes[i], 30000);
            if (a)
                sg_take_stats(r, &r->nodes[i], a, NULL);
        }
    sg_nodes_gens(r, from, to); /* the sets to watch are named by it */
    for (unsigned v = from; v < to; v++) {
        long long n = sg_shards_sum(r, 1, "SCARD", SG_K_OWN, r->srv[v].address, r->srv[v].gen,
                                    NULL);
        r->srv[v].sparks_at_kill = n > 0 ? (uint64_t)n : 0;
        r->m.killed_sparks += r->srv[v].sparks_at_kill;
    }
    for (unsigned i = from; i < to; i++) {
        sg_node_t *n = &r->nodes[i];
        if (n->dead)
            return -1;
    }
    *t_kill = sg_now();
    for (unsigned i = from; i < to; i++) {
        sg_node_t *n = &r->nodes[i];
        n->killed = 1;
        n->dead = 1;
        r->srv[n->first].killed = 1;
        kill(n->pid, SIGKILL);
    }
    for (unsigned i = from; i < to; i++) {
        sg_node_t *n = &r->nodes[i];
        int ws;
        while (waitpid(n->pid, &ws, 0) < 0 && errno == EINTR)
            ;
        n->waited = 1;
        n->wstatus = ws;
    }
    r->m.killed = cfg->kill;
    sg_info("killed %u server%s (SIGKILL; %" PRIu64 " sparks in Redis); waiting for the "
            "survivors to reap them",
            cfg->kill, cfg->kill == 1 ? "" : "s", r->m.killed_sparks);
    return 0;
}

/*
 * --duration seconds registered, with churn; kill and reap. Without
 * --duration but with --kill-servers: kill at once and wait for the reap.
 */
static int sg_phase_stay(sg_run_t *r)
{
    const sg_config_t *cfg = &r->cfg;
    if (cfg->duration_s == 0 && cfg->kill == 0)
        return 0;
    r->m.reached = SG_PHASE_STAY;
    if (cfg->kill && cfg->interval_ms > 60000)
        sg_warn("killed servers are reaped only once their alive key expired (--interval "
                "%" PRIu32 " ms); for kill runs use e.g. --interval 2000 --latency 500",
                cfg->interval_ms);
    int status = 0;
    double t0 = sg_now(), t_end = t0 + cfg->duration_s;
    int churning = 0;
    if (cfg->churn_pct > 0) {
        char cmd[64];
        int failed = 0;
        snprintf(cmd, sizeof cmd, "churn %.6f", cfg->churn_pct);
        sg_nodes_all(r, cmd, 30000, sg_expect_ok, &failed);
        churning = 1;
        if (failed)
            status = SG_EXIT_FAIL;
        sg_info("churn: %.3g%% of the sparks per second for %" PRIu32 " s", cfg->churn_pct,
                cfg->duration_s);
    }
    double kill_at = t0 + cfg->duration_s / 2.0;
    int killed = 0, reaping = 0;
    double t_kill = 0, reap_deadline = 0, next_poll = 0;
    r->m.reap_ms = -1;
    while (!sg_stopping(r) && !status) {
        double now = sg_now();
        if (cfg->kill && !killed && now >= kill_at) {
            killed = 1;
            if (sg_kill_servers(r, &t_kill) != 0) {
                status = SG_EXIT_FAIL;
                break;
            }
            reaping = 1;
            reap_deadline = t_kill + 3.0 * cfg->interval_ms / 1000.0 + SG_REAP_SLACK_S;
            now = sg_now();
        }
        if (reaping && now >= next_poll) {
            next_poll = now + 0.05;
            if (sg_reap_done(r)) {
                reaping = 0;
                r->m.reap_ms = (now - t_kill) * 1000.0;
                sg_info("reap: nothing of the %u killed server%s left in Redis %.0f ms "
                        "after SIGKILL",
                        cfg->kill, cfg->kill == 1 ? "" : "s", r->m.reap_ms);
            } else if (now >= reap_deadline) {
                reaping = 0;
                sg_mismatch(r, "killed servers not reaped within %.0f s (3 x interval + %.0f s)",
                            reap_deadline - t_kill, SG_REAP_SLACK_S);
            }
        }
        if (churning && now >= t_end) {
            uint64_t ops = 0;
            sg_nodes_all(r, "churnstop", 60000, sg_take_churn_ops, &ops);
            r->m.churn_ops += ops;
            r->m.churn_s = sg_now() - t0;
            churning = 0;
        }
        if (now >= t_end && (!cfg->kill || (killed && !reaping)))
            break;
        char extra[96] = "";
        if (reaping)
            snprintf(extra, sizeof extra, "reaping %.1fs", now - t_kill);
        else if (now < t_end)
            snprintf(extra, sizeof extra, "%.0f s left", t_end - now);
        sg_progress(r, reaping ? "reap" : "stay", extra[0] ? extra : NULL);
        sg_sleep_ms(reaping ? 10 : 50);
    }
    if (churning) {
        uint64_t ops = 0;
        sg_nodes_all(r, "churnstop", 60000, sg_take_churn_ops, &ops);
        r->m.churn_ops += ops;
        r->m.churn_s = sg_now() - t0;
    }
    r->m.stay_s = sg_now() - t0;
    if (cfg->churn_pct > 0)
        sg_info("churn: %" PRIu64 " disconnect+reconnect pairs in %.1f s (%.0f/s)",
                r->m.churn_ops, r->m.churn_s,
                r->m.churn_s > 0 ? (double)r->m.churn_ops / r->m.churn_s : 0.0);
    return status;
}

/* The survivors flush what the churn queued. */
static int sg_phase_flush(sg_run_t *r)
{
    r->m.reached = SG_PHASE_FLUSH;
    double t0 = sg_now();
    int rc = sg_nodes_flush(r, 0, r->nodes_created, 30.0 + (double)r->cfg.sparks / 10000.0,
                            "flush");
    r->m.flush_s = sg_now() - t0;
    return rc == 0 ? 0 : SG_EXIT_FAIL;
}

/* ------------------------------------------------------------------------ */
/* Verification                                                             */

/* What sg_check_ids found for one server's ids. */
typedef struct sg_idcheck {
    uint64_t in_hash; /* ids present in the hash, whatever their value */
    uint64_t in_set;  /* ids present in the server's set (survivors) */
    uint64_t bad;     /* mismatches found */
    int failed;       /* a Redis call failed (recorded when `record`) */
} sg_idcheck_t;

/* One command of a sg_check_ids round. */
typedef struct sg_idcmd {
    int kind;      /* 0 HMGET of the hash, 1 SMISMEMBER, 2 SISMEMBER of the set */
    uint32_t shard;
    size_t first;  /* its ids: order[first .. first + n) */
    size_t n;
} sg_idcmd_t;

/* Argument i of a command as text (a key, for messages). */
static const char *sg_arg_text(const mpx__argv_t *a, size_t i, char *buf, size_t cap)
{
    size_t n = i < a->argc ? a->lens[i] : 0;
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, i < a->argc ? a->argv[i] : "", n);
    buf[n] = '\0';
    return buf;
}

/*
 * Check every id of server v (indices v, v + S, v + 2S, ...): HMGET of the
 * spark hash of its shard must give v's address (or nothing if v was
 * killed) and, for a survivor, SMISMEMBER of v's set in that shard (of its
 * generation) must say 1. Each round takes SG_CHUNK ids per shard (at most
 * SG_BLOCK_MAX), groups them by shard and pipelines one HMGET and one
 * SMISMEMBER per shard and per SG_CHUNK ids (node layout: one shard, 1000
 * ids per round, as before). Mismatches are recorded when `record` is set;
 * otherwise this only counts (polling).
 */
static void sg_check_ids(sg_run_t *r, unsigned v, int record, sg_idcheck_t *out)
{
    const sg_config_t *cfg = &r->cfg;
    const sg_srv_t *s = &r->srv[v];
    memset(out, 0, sizeof *out);
    if (s->expected == 0)
        return;
    uint32_t S = r->keys.nshards;
    size_t block = (size_t)SG_CHUNK * S;
    if (block > SG_BLOCK_MAX)
        block = SG_BLOCK_MAX;
    if (block > s->expected)
        block = (size_t)s->expected;
    int check_set = !s->killed;
    size_t maxcmds = 2 * (block / SG_CHUNK + S) + (r->no_smismember ? block : 0);
    char(*ids)[SG_ID_CAP] = malloc(block * sizeof *ids);
    size_t *lens = malloc(block * sizeof *lens);
    uint64_t *idx = malloc(block * sizeof *idx);
    uint32_t *shard = malloc(block * sizeof *shard);
    size_t *order = malloc(block * sizeof *order);
    size_t *start = malloc(((size_t)S + 1) * sizeof *start);
    size_t *fill = malloc((size_t)S * sizeof *fill);
    sg_idcmd_t *cm = malloc(maxcmds * sizeof *cm);
    mpx__pipe_t p;
    int nomem = mpx__pipe_init(&p, maxcmds) != 0;
    if (nomem || !ids || !lens || !idx || !shard || !order || !start || !fill || !cm) {
        out->failed = 1;
        if (record)
            sg_mismatch(r, "verify: out of memory");
        goto done;
    }
    char okey[SG_KEY_CAP];
    for (uint64_t j0 = 0; j0 < s->expected && !out->failed; j0 += block) {
        size_t n = s->expected - j0 < block ? (size_t)(s->expected - j0) : block;
        memset(start, 0, ((size_t)S + 1) * sizeof *start);
        for (size_t k = 0; k < n; k++) {
            idx[k] = v + (uint64_t)cfg->servers * (j0 + k);
            lens[k] = sg_spark_id(idx[k], ids[k]);
            shard[k] = mpx__key_shard(&r->keys, ids[k], lens[k]);
            start[shard[k] + 1]++;
        }
        for (uint32_t q = 0; q < S; q++) {
            start[q + 1] += start[q];
            fill[q] = start[q];
        }
        for (size_t k = 0; k < n; k++)
            order[fill[shard[k]]++] = k;
        /* The round's commands, shard by shard (cm[c]: what p's command c asks). */
        mpx__pipe_clear(&p);
        for (uint32_t q = 0; q < S; q++) {
            if (check_set && start[q + 1] > start[q])
                sg_key_own(r, okey, q, v);
            for (size_t f = start[q]; f < start[q + 1]; f += SG_CHUNK) {
                size_t m = start[q + 1] - f < SG_CHUNK ? start[q + 1] - f : SG_CHUNK;
                mpx__argv_t *a = sg_pipe_add(&p);
                cm[p.n - 1] = (sg_idcmd_t){0, q, f, m};
                SG_OK(mpx__argv_push(a, "HMGET", 5), "HMGET");
                SG_OK(mpx__key_hash(&r->keys, q, a), "HMGET");
                for (size_t t = 0; t < m; t++)
                    SG_OK(mpx__argv_push(a, ids[order[f + t]], lens[order[f + t]]), "HMGET");
                if (!check_set)
                    continue;
                if (!r->no_smismember) {
                    a = sg_pipe_add(&p);
                    cm[p.n - 1] = (sg_idcmd_t){1, q, f, m};
                    SG_OK(mpx__argv_push(a, "SMISMEMBER", 10), "SMISMEMBER");
                    SG_OK(mpx__argv_pushcat(a, okey, strlen(okey), "", 0), "SMISMEMBER");
                    for (size_t t = 0; t < m; t++)
                        SG_OK(mpx__argv_push(a, ids[order[f + t]], lens[order[f + t]]),
                              "SMISMEMBER");
                } else {
                    for (size_t t = 0; t < m; t++) {
                        a = sg_pipe_add(&p);
                        cm[p.n - 1] = (sg_idcmd_t){2, q, f + t, 1};
                        SG_OK(mpx__argv_push(a, "SISMEMBER", 9), "SISMEMBER");
                        SG_OK(mpx__argv_pushcat(a, okey, strlen(okey), "", 0), "SISMEMBER");
                        SG_OK(mpx__argv_push(a, ids[order[f + t]], lens[order[f + t]]),
                              "SISMEMBER");
                    }
                }
            }
        }
        if (sg_pipeline(r, record, &p) != 0) {
            out->failed = 1;
            break;
        }
        for (size_t c = 0; c < p.n; c++) {
            const sg_idcmd_t *x = &cm[c];
            redisReply *y = p.rep[c];
            char key[SG_KEY_CAP];
            sg_arg_text(&p.cmds[c], 1, key, sizeof key);
            int shape_ok = y && (x->kind == 2 ? y->type == REDIS_REPLY_INTEGER
                                              : y->type == REDIS_REPLY_ARRAY &&
                                                    y->elements == x->n);
            if (p.rcs[c] != 0 || !shape_ok) {
                if (record && !out->failed) {
                    char msg[512];
                    const char *why = p.rcs[c] ? sg_lib_msg(r, msg, sizeof msg)
                                               : y && y->str ? y->str : "unexpected reply";
                    if (x->kind == 0)
                        sg_mismatch(r, "HMGET %s (%zu ids of server %u) failed: %s", key, x->n,
                                    v, why);
                    else
                        sg_mismatch(r, "membership check of %zu ids in %s failed: %s", x->n,
                                    key, why);
                }
                out->failed = 1;
                continue;
            }
            for (size_t t = 0; t < x->n; t++) {
                size_t k = order[x->first + t];
                char shown[96];
                if (x->kind == 0) {
                    const redisReply *e = y->element[t];
                    int present = e->type == REDIS_REPLY_STRING;
                    out->in_hash += present;
                    int good = s->killed ? !present : present && strcmp(e->str, s->address) == 0;
                    if (good)
                        continue;
                    out->bad++;
                    if (!record)
                        continue;
                    sg_id_shown(ids[k], lens[k], shown, sizeof shown);
                    if (s->killed)
                        sg_mismatch(r, "spark %s (#%" PRIu64 ") of killed server %u still in %s -> %s",
                                    shown, idx[k], v, key, e->str);
                    else if (!present)
                        sg_mismatch(r, "spark %s (#%" PRIu64 ") missing from %s (expected %s)",
                                    shown, idx[k], key, s->address);
                    else
                        sg_mismatch(r, "spark %s (#%" PRIu64 "): %s says %s, expected %s", shown,
                                    idx[k], key, e->str, s->address);
                } else {
                    const redisReply *e = x->kind == 2 ? y : y->element[t];
                    if (e->type == REDIS_REPLY_INTEGER && e->integer == 1) {
                        out->in_set++;
                        continue;
                    }
                    out->bad++;
                    if (record)
                        sg_mismatch(r, "spark %s (#%" PRIu64 ") is not in %s",
                                    sg_id_shown(ids[k], lens[k], shown, sizeof shown), idx[k],
                                    key);
                }
            }
        }
    }
done:
    mpx__pipe_free(&p);
    free(ids);
    free(lens);
    free(idx);
    free(shard);
    free(order);
    free(start);
    free(fill);
    free(cm);
}

/* 1 if no id of server v is left in the hash (quiet). */
static int sg_check_ids_absent(sg_run_t *r, unsigned v)
{
    sg_idcheck_t c;
    sg_check_ids(r, v, 0, &c);
    return !c.failed && c.in_hash == 0;
}

/*
 * List what the spark hash of shard `shard` (is_hash) or server v's set in
 * that shard (`key`) holds beyond the ids of this run that belong there,
 * with HSCAN / SSCAN: one mismatch each (an id of this run in another
 * shard's key is one too). Returns how many were found.
 */
static uint64_t sg_list_unexpected(sg_run_t *r, const char *key, int is_hash, unsigned v,
                                   uint32_t shard)
{
    char cursor[32] = "0";
    uint64_t found = 0;
    unsigned long long visited = 0;
    do {
        redisReply *rep;
        if (sg_call(r, 1, &rep, is_hash ? "HSCAN" : "SSCAN", key, cursor, "COUNT", "1000") != 0)
            return found;
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
            rep->element[0]->type != REDIS_REPLY_STRING ||
            rep->element[1]->type != REDIS_REPLY_ARRAY) {
            sg_mismatch(r, "%s %s failed", is_hash ? "HSCAN" : "SSCAN", key);
            freeReplyObject(rep);
            return found;
        }
        snprintf(cursor, sizeof cursor, "%s", rep->element[0]->str);
        const redisReply *items = rep->element[1];
        size_t step = is_hash ? 2 : 1;
        for (size_t k = 0; k + step <= items->elements; k += step) {
            const redisReply *e = items->element[k];
            if (e->type != REDIS_REPLY_STRING)
                continue;
            uint64_t i;
            int ok = sg_spark_index(e->str, e->len, &i);
            int here = mpx__key_shard(&r->keys, e->str, e->len) == shard;
            int expected = ok && here &&
                           (is_hash ? !r->srv[i % r->cfg.servers].killed : i % r->cfg.servers == v);
            if (expected)
                continue;
            found++;
            char shown[96];
            sg_id_shown(e->str, e->len, shown, sizeof shown);
            const char *why = !ok     ? ""
                              : !here ? " (an id of another shard)"
                              : is_hash ? " (a spark of a killed server)"
                                        : " (a spark of another server)";
            if (is_hash) {
                const redisReply *val = items->element[k + 1];
                sg_mismatch(r, "unexpected field in %s: %s -> %s%s", key, shown,
                            val->type == REDIS_REPLY_STRING ? val->str : "?", why);
            } else {
                sg_mismatch(r, "unexpected member of %s: %s%s", key, shown, why);
            }
        }
        visited += 1000;
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0 && visited < SG_SCAN_MAX_KEYS);
    return found;
}

/*
 * Sharded: HMGET of every shard's generations hash for every server's
 * address, pipelined; each(r, s, v, value or NULL, arg) per shard and
 * server. 0, or -1 if a command failed (recorded when `record`).
 */
static int sg_shard_markers(sg_run_t *r, int record,
                            void (*each)(sg_run_t *r, uint32_t s, unsigned v, const char *val,
                                         void *arg),
                            void *arg)
{
    uint32_t S = r->keys.nshards;
    unsigned V = r->cfg.servers;
    mpx__pipe_t p;
    if (mpx__pipe_init(&p, S) != 0)
        sg_die_build("commands");
    for (uint32_t s = 0; s < S; s++) {
        mpx__argv_t *a = sg_pipe_add(&p);
        SG_OK(mpx__argv_push(a, "HMGET", 5), "HMGET");
        SG_OK(mpx__key_shard_gens(&r->keys, s, a), "HMGET");
        for (unsigned v = 0; v < V; v++)
            SG_OK(mpx__argv_push(a, r->srv[v].address, strlen(r->srv[v].address)), "HMGET");
    }
    int status = sg_pipeline(r, record, &p);
    for (uint32_t s = 0; s < S && status == 0; s++) {
        const redisReply *y = p.rep[s];
        if (p.rcs[s] || !y || y->type != REDIS_REPLY_ARRAY || y->elements != V) {
            if (record) {
                char t[200], msg[512];
                sg_mismatch(r, "'%s' failed: %s", sg_cmd_text(&p.cmds[s], t, sizeof t),
                            p.rcs[s] ? sg_lib_msg(r, msg, sizeof msg) : "unexpected reply");
            }
            status = -1;
            break;
        }
        for (unsigned v = 0; v < V; v++) {
            const redisReply *e = y->element[v];
            each(r, s, v, e->type == REDIS_REPLY_STRING ? e->str : NULL, arg);
        }
    }
    mpx__pipe_free(&p);
    return status;
}

typedef struct sg_sstats {
    sg_run_t *r;
    uint64_t reaped_servers;
} sg_sstats_t;

/* Check the library's counters of each server in a "sstats" answer. */
static void sg_take_sstats(sg_run_t *r, sg_node_t *n, const char *a, void *arg)
{
    sg_sstats_t *ss = arg;
    unsigned count;
    int used = 0;
    if (sscanf(a, "P %u%n", &count, &used) != 1 || count > n->count) {
        sg_node_failed(r, n, "unreadable answer to 'sstats'");
        return;
    }
    const char *p = a + used;
    for (unsigned k = 0; k < count; k++) {
        mpx_stats_t st;
        if (sg_stats_parse(&p, &st) != 0) {
            sg_node_failed(r, n, "unreadable answer to 'sstats'");
            return;
        }
        unsigned v = n->first + k;
        const sg_srv_t *s = &r->srv[v];
        ss->reaped_servers += st.reaped_servers;
        if (st.local_sparks != s->expected || st.pending != 0)
            sg_mismatch(r,
                        "server %u counters: local_sparks %" PRIu64 ", pending %" PRIu64
                        "; expected %" PRIu64 ", 0",
                        v, st.local_sparks, st.pending, s->expected);
        /* Without churn, each spark was changed once. */
        if (r->cfg.churn_pct == 0 && st.queued != s->expected)
            sg_mismatch(r, "server %u counters: queued %" PRIu64 ", expected %" PRIu64, v,
                        st.queued, s->expected);
    }
}

/* Server v's set(s), for messages: the key (node layout), or the sets of
 * its generation over the shards (sharded). */
static const char *sg_sets_name(const sg_run_t *r, unsigned v, char *buf, size_t cap)
{
    if (!sg_sharded(r))
        return sg_kname(r, buf, SG_K_OWN, 0, r->srv[v].address, NULL);
    snprintf(buf, cap, "the sets of %s generation %s (%" PRIu32 " shards)", r->srv[v].address,
             r->srv[v].gen[0] ? r->srv[v].gen : "(none)", r->keys.nshards);
    return buf;
}

/* The spark hash(es), for messages. */
static const char *sg_hashes_name(const sg_run_t *r, char *buf, size_t cap)
{
    if (!sg_sharded(r))
        return sg_kname(r, buf, SG_K_HASH, 0, NULL, NULL);
    snprintf(buf, cap, "the spark hashes (%" PRIu32 " shards)", r->keys.nshards);
    return buf;
}

/* Sharded: every shard must mark each survivor's live generation and no
 * killed server's (none, or its drained generation's tombstone). */
static void sg_marker_check(sg_run_t *r, uint32_t s, unsigned v, const char *val, void *arg)
{
    uint64_t *bad = arg;
    const sg_srv_t *x = &r->srv[v];
    if (x->killed ? val == NULL || sg_tombstone(val) : val && strcmp(val, x->gen) == 0)
        return;
    (*bad)++;
    if (*bad > 3) /* one wrong shard is telling enough; count the rest */
        return;
    char key[SG_KEY_CAP];
    sg_kname(r, key, SG_K_SHARD_GENS, s, NULL, NULL);
    if (x->killed)
        sg_mismatch(r, "%s still names killed server %s (generation %s)", key, x->address, val);
    else
        sg_mismatch(r, "%s: %s -> %s, expected its live generation %s", key, x->address,
                    val ? val : "(none)", x->gen);
}

/*
 * Wait (bounded) until no cleanup is listed in the drains hash: a server
 * that registered again (after it was reaped, or a failover lost its
 * control keys) leaves its old generation to drain in the background.
 */
static void sg_wait_drains(sg_run_t *r)
{
    const sg_config_t *cfg = &r->cfg;
    double t0 = sg_now();
    double limit = 2.0 * (cfg->interval_ms - cfg->latency_ms) / 1000.0 + 5.0;
    if (limit > 60.0)
        limit = 60.0;
    long long d = sg_int_quiet(r, "HLEN", r->keys.drains);
    if (d <= 0)
        return;
    sg_info("verify: %lld cleanup%s in progress; waiting at most %.0f s", d, d == 1 ? "" : "s",
            limit);
    while (d != 0 && !sg_stopping(r) && sg_now() - t0 < limit) {
        sg_sleep_ms(100);
        d = sg_int_quiet(r, "HLEN", r->keys.drains);
        sg_progress(r, "verify", "waiting for cleanups");
    }
    r->m.drains_wait_s = sg_now() - t0;
}

/* Check the registry in Redis: exactly the expected mapping. */
static void sg_phase_verify(sg_run_t *r)
{
    r->m.reached = SG_PHASE_VERIFY;
    const sg_config_t *cfg = &r->cfg;
    unsigned S = cfg->servers;
    uint32_t NS = r->keys.nshards;
    double t0 = sg_now();
    uint64_t before = r->mismatches;
    char key[SG_KEY_CAP], desc[SG_KEY_CAP + 64];
    long long *per = calloc(NS, sizeof *per);
    if (!per)
        sg_die_build("verify");

    /* 0. the current generations (sharded: they name the sets); let
     *    cleanups in progress end */
    sg_nodes_gens(r, 0, r->nodes_created);
    sg_wait_drains(r);

    /* 1. every id: in the hash with the right address (or gone with its
     *    killed server), in its server's set; then the sizes, listing any
     *    entry beyond the expected ones */
    uint64_t live = 0, in_hash = 0;
    unsigned alive_servers = 0;
    for (unsigned v = 0; v < S && !sg_stopping(r); v++) {
        const sg_srv_t *s = &r->srv[v];
        if (sg_sharded(r) && !s->killed && !s->gen[0])
            sg_mismatch(r, "server %u (%s) has no registration generation", v, s->address);
        sg_idcheck_t c;
        sg_check_ids(r, v, 1, &c);
        in_hash += c.in_hash;
        r->m.ids_checked += s->expected;
        if (s->killed) {
            long long e = sg_shards_sum(r, 1, "EXISTS", SG_K_OWN, s->address, s->gen, per);
            for (uint32_t q = 0; e > 0 && q < NS; q++)
                if (per[q] > 0) {
                    sg_key_own(r, key, q, v);
                    sg_mismatch(r, "%s of killed server %u still exists (SCARD %lld)", key, v,
                                sg_int(r, "SCARD", key));
                }
            continue;
        }
        alive_servers++;
        live += s->expected;
        long long card = sg_shards_sum(r, 1, "SCARD", SG_K_OWN, s->address, s->gen, per);
        if (card != SG_INT_FAIL && (uint64_t)card != s->expected)
            sg_mismatch(r, "SCARD %s = %lld, expected %" PRIu64,
                        sg_sets_name(r, v, desc, sizeof desc), card, s->expected);
        if (card != SG_INT_FAIL && !c.failed && (uint64_t)card > c.in_set)
            for (uint32_t q = 0; q < NS; q++)
                if (per[q] > 0)
                    sg_list_unexpected(r, sg_key_own(r, key, q, v), 0, v, q);
        char extra[64];
        snprintf(extra, sizeof extra, "server %u/%u", v + 1, S);
        sg_progress(r, "verify", extra);
    }
    long long hlen = sg_shards_sum(r, 1, "HLEN", SG_K_HASH, NULL, NULL, per);
    if (hlen != SG_INT_FAIL && (uint64_t)hlen != live)
        sg_mismatch(r, "HLEN %s = %lld, expected %" PRIu64, sg_hashes_name(r, desc, sizeof desc),
                    hlen, live);
    if (hlen != SG_INT_FAIL && (uint64_t)hlen > in_hash)
        for (uint32_t q = 0; q < NS; q++)
            if (per[q] > 0)
                sg_list_unexpected(r, sg_kname(r, key, SG_K_HASH, q, NULL, NULL), 1, 0, q);

    /* 2. the servers set: exactly the survivors */
    redisReply *rep;
    const char *skey = r->keys.servers;
    if (sg_call(r, 1, &rep, "SMEMBERS", skey) == 0) {
        if (rep->type != REDIS_REPLY_ARRAY) {
            sg_mismatch(r, "SMEMBERS %s failed", skey);
        } else {
            unsigned listed = 0;
            for (size_t k = 0; k < rep->elements; k++) {
                const redisReply *e = rep->element[k];
                int v = e->type == REDIS_REPLY_STRING ? sg_address_server(e->str, S) : -1;
                if (v < 0 || r->srv[v].killed)
                    sg_mismatch(r, "%s lists %s%s", skey,
                                e->type == REDIS_REPLY_STRING ? e->str : "?",
                                v >= 0 ? " (killed: should have been reaped)" : "");
                else
                    listed++;
            }
            if (listed != alive_servers)
                sg_mismatch(r, "%s lists %u of the %u live servers", skey, listed,
                            alive_servers);
        }
        freeReplyObject(rep);
    }

    /* 3. alive keys and leases: the survivors', fresh; the killed', gone */
    uint32_t lease = cfg->interval_ms < SG_LEASE_DEFAULT_MS ? cfg->interval_ms
                                                            : SG_LEASE_DEFAULT_MS;
    for (unsigned v = 0; v < S; v++) {
        char akey[SG_KEY_CAP], lkey[SG_KEY_CAP];
        sg_kname(r, akey, SG_K_ALIVE, 0, r->srv[v].address, NULL);
        sg_kname(r, lkey, SG_K_LEASE, 0, r->srv[v].address, NULL);
        if (r->srv[v].killed) {
            if (sg_int(r, "EXISTS", akey) > 0)
                sg_mismatch(r, "alive key %s of killed server %u still exists", akey, v);
            if (sg_int(r, "EXISTS", lkey) > 0)
                sg_mismatch(r, "lease %s of killed server %u still exists", lkey, v);
            continue;
        }
        long long pttl = sg_int(r, "PTTL", akey);
        if (pttl != SG_INT_FAIL && (pttl <= 0 || pttl > (long long)cfg->interval_ms))
            sg_mismatch(r, "alive key %s: PTTL %lld, expected 1..%" PRIu32, akey, pttl,
                        cfg->interval_ms);
        pttl = sg_int(r, "PTTL", lkey);
        if (pttl != SG_INT_FAIL && (pttl <= 0 || pttl > (long long)lease))
            sg_mismatch(r, "lease %s: PTTL %lld, expected 1..%" PRIu32, lkey, pttl, lease);
    }

    /* 4. no cleanup left pending */
    long long drains = sg_int(r, "HLEN", r->keys.drains);
    if (drains > 0)
        sg_mismatch(r, "%s lists %lld unfinished cleanups", r->keys.drains, drains);

    /* 4b. sharded: the layout marker, every survivor's generation in the
     *     control hash and in every shard, none of the killed servers' */
    if (sg_sharded(r)) {
        if (sg_call(r, 1, &rep, "GET", r->keys.layout_key) == 0) {
            if (rep->type != REDIS_REPLY_STRING || strcmp(rep->str, r->keys.desc) != 0)
                sg_mismatch(r, "%s = %s, expected \"%s\"", r->keys.layout_key,
                            rep->type == REDIS_REPLY_STRING ? rep->str : "(none)", r->keys.desc);
            freeReplyObject(rep);
        }
        for (unsigned v = 0; v < S; v++) {
            const sg_srv_t *s = &r->srv[v];
            if (sg_call(r, 1, &rep, "HGET", r->keys.gens, s->address) != 0)
                continue;
            const char *got = rep->type == REDIS_REPLY_STRING ? rep->str : NULL;
            if (s->killed && got)
                sg_mismatch(r, "%s still names killed server %s (generation %s)", r->keys.gens,
                            s->address, got);
            else if (!s->killed && (!got || strcmp(got, s->gen) != 0))
                sg_mismatch(r, "%s: %s -> %s, but the server's generation is %s", r->keys.gens,
                            s->address, got ? got : "(none)", s->gen[0] ? s->gen : "(none)");
            freeReplyObject(rep);
        }
        long long ngens = sg_int(r, "HLEN", r->keys.gens);
        if (ngens != SG_INT_FAIL && ngens != (long long)alive_servers)
            sg_mismatch(r, "HLEN %s = %lld, expected %u", r->keys.gens, ngens, alive_servers);
        uint64_t bad = 0;
        sg_shard_markers(r, 1, sg_marker_check, &bad);
        if (bad > 3)
            sg_mismatch(r, "... %" PRIu64 " shard generation markers wrong in all", bad);
    }

    /* 5. the library's counters of each survivor */
    sg_sstats_t ss = {r, 0};
    sg_nodes_all(r, "sstats", 30000, sg_take_sstats, &ss);
    if (cfg->kill && r->m.reap_ms >= 0 && ss.reaped_servers != cfg->kill)
        sg_mismatch(r, "the survivors' reaped_servers add up to %" PRIu64 ", expected %" PRIu32,
                    ss.reaped_servers, cfg->kill);

    /* 6. a sample of ids through the library (mpx_sparks on a survivor:
     *    its own sparks from memory, the others from Redis), and its view
     *    of the servers */
    sg_node_t *node = NULL;
    for (unsigned i = 0; i < r->nodes_created && !node; i++)
        if (!r->nodes[i].dead)
            node = &r->nodes[i];
    size_t n = cfg->sparks < SG_SAMPLE ? (size_t)cfg->sparks : SG_SAMPLE;
    char cmd[32];
    snprintf(cmd, sizeof cmd, "sample %zu", n);
    const char *a = node ? sg_node_call(r, node, cmd, 120000) : NULL;
    int src, used = 0;
    size_t listed;
    if (!a || sscanf(a, "L %d %zu%n", &src, &listed, &used) != 2) {
        sg_mismatch(r, "library sample: no answer");
    } else {
        if (src == 0 && listed != alive_servers)
            sg_mismatch(r, "mpx_servers(include_self) on server %u listed %zu servers, "
                           "expected %u",
                        node->first, listed, alive_servers);
        const char *p = a + used;
        uint64_t state = sg_sample_seed(cfg->seed);
        for (size_t k = 0; k < n; k++) {
            char *end;
            long got = strtol(p, &end, 10);
            if (end == p) {
                sg_mismatch(r, "library sample: short answer (%zu of %zu)", k, n);
                break;
            }
            p = end;
            uint64_t i = sg_sample_next(&state, cfg->sparks);
            unsigned v = (unsigned)(i % S);
            long want = r->srv[v].killed ? -1 : (long)v;
            if (got == want)
                continue;
            char id[SG_ID_CAP], shown[96], gots[96];
            size_t len = sg_spark_id(i, id);
            if (got >= 0)
                snprintf(gots, sizeof gots, "%s", r->srv[got].address);
            else
                snprintf(gots, sizeof gots, "%s",
                         got == -1 ? "(unknown)" : got == -2 ? "(another address)" : "(error)");
            sg_mismatch(r, "mpx_sparks on server %u: %s (#%" PRIu64 ") -> %s, expected %s",
                        node->first, sg_id_shown(id, len, shown, sizeof shown), i, gots,
                        want >= 0 ? r->srv[v].address : "(unknown: server killed)");
        }
    }
    free(per);

    r->m.verified = !sg_stopping(r);
    r->m.verify_s = sg_now() - t0;
    sg_info("verify: %" PRIu64 " ids, %" PRIu64 " mismatches in %.3f s", r->m.ids_checked,
            r->mismatches - before, r->m.verify_s);
}

/* The spark hashes' names, sorted (for telling them apart in a SCAN). */
typedef struct sg_measure {
    char **hashes;
    uint32_t nhashes;
    size_t *pos;  /* pos[i]: r->masters index of master i */
    size_t n;
} sg_measure_t;

static int sg_strcmp_p(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void sg_count_key(sg_run_t *r, size_t i, const char *key, size_t len, void *arg)
{
    (void)len;
    sg_measure_t *c = arg;
    if (i >= c->n)
        return;
    sg_master_t *m = &r->masters[c->pos[i]];
    m->keys++;
    const char *k = key;
    if (!bsearch(&k, c->hashes, c->nhashes, sizeof *c->hashes, sg_strcmp_p))
        return;
    redisReply *rep;
    if (sg_node_calln(r, i, SG_ARGS("HLEN", key), &rep) != 0)
        return;
    if (rep->type == REDIS_REPLY_INTEGER)
        m->sparks += rep->integer;
    freeReplyObject(rep);
}

/*
 * Per-master figures at the end of the load (before verify): used_memory,
 * total_commands_processed, and with a SCAN of the namespace on each
 * master its keys and the fields of the spark hashes it holds.
 */
static void sg_phase_measure(sg_run_t *r)
{
    sg_masters_snapshot(r, SG_SNAP_END);
    r->m.measured = 1;
    size_t n = sg_nmasters(r);
    if (n == 0)
        return;
    sg_measure_t c = {0};
    c.nhashes = r->keys.nshards;
    c.hashes = calloc(c.nhashes, sizeof *c.hashes);
    c.pos = calloc(n, sizeof *c.pos);
    c.n = n;
    if (!c.hashes || !c.pos)
        sg_die_build("the measurement");
    for (uint32_t q = 0; q < c.nhashes; q++) {
        char key[SG_KEY_CAP];
        if (!(c.hashes[q] = strdup(sg_kname(r, key, SG_K_HASH, q, NULL, NULL))))
            sg_die_build("the measurement");
    }
    qsort(c.hashes, c.nhashes, sizeof *c.hashes, sg_strcmp_p);
    for (size_t i = 0; i < n; i++) {
        char name[96];
        sg_master_t *m = sg_master_named(r, sg_node_name(r, i, name, sizeof name));
        m->keys = m->sparks = 0;
        c.pos[i] = (size_t)(m - r->masters);
    }
    if (sg_scan_ns(r, sg_count_key, &c) < 0) {
        sg_warn("per-master key counts: a SCAN failed; figures left out");
        for (size_t i = 0; i < n; i++)
            r->masters[c.pos[i]].keys = r->masters[c.pos[i]].sparks = -1;
    }
    for (uint32_t q = 0; q < c.nhashes; q++)
        free(c.hashes[q]);
    free(c.hashes);
    free(c.pos);
}

typedef struct sg_leftover {
    int layout_key;    /* the sharded layout's marker was found */
    int quiet;         /* only look for what stays by design (--no-verify) */
    char **gens_names; /* the shards' generations hashes, sorted */
    uint32_t ngens;
    char **tomb_keys;  /* generations hashes holding only our tombstones */
    size_t ntomb, unexpected;
    uint64_t tombstones;
} sg_leftover_t;

/* A shard's generations hash left after unregister: expected when every
 * field is one of our servers with a tombstone. */
static int sg_tombstones_only(sg_run_t *r, size_t master, const char *key, uint64_t *count)
{
    redisReply *rep;
    if (sg_node_calln(r, master, SG_ARGS("HGETALL", key), &rep) != 0)
        return 0;
    int ok = rep->type == REDIS_REPLY_ARRAY && rep->elements % 2 == 0;
    for (size_t k = 0; ok && k + 1 < rep->elements; k += 2) {
        const redisReply *f = rep->element[k], *v = rep->element[k + 1];
        ok = f->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
             sg_address_server(f->str, r->cfg.servers) >= 0 && sg_tombstone(v->str);
    }
    if (ok)
        *count += rep->elements / 2;
    freeReplyObject(rep);
    return ok;
}

static void sg_leftover_key(sg_run_t *r, size_t master, const char *key, size_t len, void *arg)
{
    sg_leftover_t *lo = arg;
    /* What the sharded layout leaves by design once every server is gone:
     * its marker (the library never deletes it) and the shards' tombstones
     * of the drained generations. This run made them in an empty
     * namespace; they are deleted below. */
    if (sg_sharded(r) && len == r->keys.layout_key_len &&
        memcmp(key, r->keys.layout_key, len) == 0) {
        lo->layout_key = 1;
        return;
    }
    const char *k = key;
    if (lo->gens_names && bsearch(&k, lo->gens_names, lo->ngens, sizeof *lo->gens_names, sg_strcmp_p) &&
        sg_tombstones_only(r, master, key, &lo->tombstones)) {
        lo->tomb_keys = sg_xrealloc(lo->tomb_keys, (lo->ntomb + 1) * sizeof *lo->tomb_keys);
        if (!(lo->tomb_keys[lo->ntomb] = strdup(key)))
            sg_die_build("a key name");
        lo->ntomb++;
        return;
    }
    lo->unexpected++;
    if (!lo->quiet)
        sg_mismatch(r, "key left after unregister: %s", key);
}

/* After unregister: find what is left (mismatches unless quiet), then
 * delete what stays by design (sharded layout), so that the namespace is
 * left as empty as it was found. Returns the keys found, or -1. */
static long long sg_leftovers(sg_run_t *r, int quiet)
{
    sg_leftover_t lo = {0};
    lo.quiet = quiet;
    if (sg_sharded(r)) {
        lo.ngens = r->keys.nshards;
        lo.gens_names = calloc(lo.ngens, sizeof *lo.gens_names);
        if (!lo.gens_names)
            sg_die_build("key names");
        for (uint32_t q = 0; q < lo.ngens; q++) {
            char key[SG_KEY_CAP];
            if (!(lo.gens_names[q] = strdup(sg_kname(r, key, SG_K_SHARD_GENS, q, NULL, NULL))))
                sg_die_build("key names");
        }
        qsort(lo.gens_names, lo.ngens, sizeof *lo.gens_names, sg_strcmp_p);
    }
    long long left = sg_scan_ns(r, sg_leftover_key, &lo);
    if (left >= 0 && (!quiet || lo.unexpected == 0)) {
        for (size_t i = 0; i < lo.ntomb; i++)
            sg_int_quiet(r, "DEL", lo.tomb_keys[i]);
        if (lo.layout_key)
            sg_int_quiet(r, "DEL", r->keys.layout_key);
        if (lo.layout_key || lo.ntomb)
            sg_info("unregister: deleted what the sharded layout leaves by design: %s%s%lld "
                    "shard generation hashes holding only tombstones (%" PRIu64 ")",
                    lo.layout_key ? r->keys.layout_key : "", lo.layout_key ? " and " : "",
                    (long long)lo.ntomb, lo.tombstones);
    }
    for (uint32_t q = 0; q < lo.ngens; q++)
        free(lo.gens_names[q]);
    free(lo.gens_names);
    for (size_t i = 0; i < lo.ntomb; i++)
        free(lo.tomb_keys[i]);
    free(lo.tomb_keys);
    return left;
}

static void sg_take_unregister(sg_run_t *r, sg_node_t *n, const char *a, void *arg)
{
    (void)r;
    (void)n;
    (void)arg;
    (void)a; /* failures are counted and reported by the node */
}

static int sg_unregister_timeout_ms(const sg_run_t *r)
{
    /* Unregister drains the server's set in chunks: allow for big ones. */
    return 120000 + (int)(r->cfg.sparks / 10);
}

static void sg_phase_unregister(sg_run_t *r)
{
    r->m.reached = SG_PHASE_UNREGISTER;
    sg_nodes_stats(r);
    sg_ninfo_t sum;
    sg_nodes_sum(r, &sum);
    r->m.stats = sum.st;
    double t0 = sg_now();
    sg_nodes_all(r, "unregister", sg_unregister_timeout_ms(r), sg_take_unregister, NULL);
    r->registered = 0;
    r->m.unregister_s = sg_now() - t0;
    sg_info("unregister: %u servers in %.3f s", r->cfg.servers - r->m.killed,
            r->m.unregister_s);
    if (!r->cfg.verify) {
        if (sg_sharded(r)) /* only to delete what stays by design */
            sg_leftovers(r, 1);
        return;
    }

    uint64_t before = r->mismatches;
    char desc[SG_KEY_CAP + 64];
    long long hlen = sg_shards_sum(r, 1, "HLEN", SG_K_HASH, NULL, NULL, NULL);
    if (hlen > 0)
        sg_mismatch(r, "after unregister: HLEN %s = %lld, expected 0",
                    sg_hashes_name(r, desc, sizeof desc), hlen);
    for (unsigned v = 0; v < r->cfg.servers; v++)
        if (sg_int(r, "SISMEMBER", r->keys.servers, r->srv[v].address) > 0)
            sg_mismatch(r, "after unregister: %s still in %s", r->srv[v].address,
                        r->keys.servers);
    /* Nothing of ours may remain under the namespace (it was empty). */
    if (sg_leftovers(r, 0) < 0)
        sg_mismatch(r, "after unregister: SCAN of the namespace failed");
    sg_info("unregister: %" PRIu64 " mismatches after", r->mismatches - before);
}

/*
 * Stop every node: abort them when interrupted, unregister the survivors if
 * still registered (not when interrupted with our throwaway Redis), destroy
 * them, and reap the children (SIGKILL if they do not exit). A child that
 * exits badly counts as an error. Runs once; the infos stay for the report.
 */
static void sg_nodes_shutdown(sg_run_t *r)
{
    static int done;
    if (done || !r->nodes)
        return;
    done = 1;
    int interrupted = atomic_load(&r->stop_sig) > 0;
    if (interrupted)
        sg_nodes_all(r, "abort", 10000, NULL, NULL);
    if (r->registered && !(interrupted && r->own_redis))
        sg_nodes_all(r, "unregister", sg_unregister_timeout_ms(r), sg_take_unregister, NULL);
    r->registered = 0;
    for (unsigned i = 0; i < r->nodes_created; i++) {
        sg_node_t *n = &r->nodes[i];
        if (!n->remote) {
            uint64_t api = 0, bg = 0, notices = 0;
            if (n->local) {
                sg_local_destroy(n->local, &api, &bg, &notices);
                n->local = NULL;
                n->info.api_errors = api;
                n->info.bg_errors = bg;
                n->info.bg_notices = notices;
            }
            sg_buf_free(&n->reply);
            n->dead = 1;
            continue;
        }
        if (!n->dead) {
            const char *a = sg_node_call(r, n, "exit", 60000);
            unsigned long long api, bg, notices;
            if (a && sscanf(a, "X %llu %llu %llu", &api, &bg, &notices) == 3) {
                n->info.api_errors = api;
                n->info.bg_errors = bg;
                n->info.bg_notices = notices;
            }
            n->dead = 1;
        }
        if (n->cmd_fd >= 0)
            close(n->cmd_fd);
        n->cmd_fd = -1;
        for (int waited_ms = 0; !n->waited; waited_ms += 20) {
            int ws;
            pid_t p = waitpid(n->pid, &ws, WNOHANG);
            if (p == n->pid || (p < 0 && errno != EINTR)) {
                n->waited = 1;
                n->wstatus = p == n->pid ? ws : 0;
                break;
            }
            if (waited_ms >= 10000) {
                sg_error("server %u process (pid %ld) does not exit: SIGKILL", n->first,
                         (long)n->pid);
                kill(n->pid, SIGKILL);
                while (waitpid(n->pid, &ws, 0) < 0 && errno == EINTR)
                    ;
                n->waited = 1;
                n->wstatus = ws;
                atomic_fetch_add(&r->api_errors, 1);
                break;
            }
            sg_sleep_ms(20);
        }
        if (!n->killed && !n->failed && !interrupted &&
            !(WIFEXITED(n->wstatus) && WEXITSTATUS(n->wstatus) == 0)) {
            char d[80];
            sg_describe_status(n->wstatus, d, sizeof d);
            sg_error("server %u process (pid %ld) %s", n->first, (long)n->pid, d);
            atomic_fetch_add(&r->api_errors, 1);
        }
        if (n->lr.fd >= 0)
            close(n->lr.fd);
        n->lr.fd = -1;
        free(n->lr.buf);
        n->lr.buf = NULL;
    }
}

/* ------------------------------------------------------------------------ */
/* Report                                                                   */

/* Numbers derived for both reports. */
typedef struct sg_summary {
    double connected_per_s, committed_per_s; /* -1: unknown */
    double redis_bytes, redis_per_spark;     /* -1: unknown */
    double rss_bytes, rss_per_spark;         /* -1: unknown */
    double maxrss_bytes;
    double churn_per_s;
    uint64_t api_errors, bg_errors, bg_notices;
    const char *result;
} sg_summary_t;

static void sg_summarise(sg_run_t *r, int status, sg_summary_t *s)
{
    const sg_metrics_t *m = &r->m;
    double n = (double)r->cfg.sparks;
    s->connected_per_s = m->connected && m->connect_s > 0 ? n / m->connect_s : -1;
    s->committed_per_s = m->connected && m->commit_s > 0 ? n / m->commit_s : -1;
    /* The sum of every master's used_memory growth (one Redis: its own);
     * unknown if a master was read only once (a failover meanwhile). */
    int known = m->connected && m->redis_mem_before >= 0 && m->redis_mem_after >= 0;
    double bytes = 0;
    for (size_t i = 0; i < r->nmasters && known; i++) {
        const sg_master_t *x = &r->masters[i];
        if (x->mem_before >= 0 && x->mem_after >= 0)
            bytes += (double)(x->mem_after - x->mem_before);
        else if (x->mem_before >= 0 || x->mem_after >= 0)
            known = 0;
    }
    s->redis_bytes = known ? bytes : -1;
    s->redis_per_spark = s->redis_bytes >= 0 && n > 0 ? s->redis_bytes / n : -1;
    s->rss_bytes = m->rss_delta_kb >= 0 ? (double)m->rss_delta_kb * 1024.0 : -1;
    s->rss_per_spark = s->rss_bytes >= 0 && n > 0 ? s->rss_bytes / n : -1;
    long long maxrss = 0;
    for (unsigned i = 0; i < r->nodes_created; i++)
        if (r->nodes[i].info.maxrss_kb > maxrss)
            maxrss = r->nodes[i].info.maxrss_kb;
    s->maxrss_bytes = (double)maxrss * 1024.0;
    s->churn_per_s = m->churn_s > 0 ? (double)m->churn_ops / m->churn_s : 0;
    sg_ninfo_t sum;
    sg_nodes_sum(r, &sum);
    s->api_errors = atomic_load(&r->api_errors) + sum.api_errors;
    s->bg_errors = sum.bg_errors;
    s->bg_notices = sum.bg_notices;
    int sig = atomic_load(&r->stop_sig);
    s->result = sig > 0 ? "interrupted" : status == SG_EXIT_OK ? "ok" : "failed";
}

/* Per-master figures for the reports: totals over the masters of the end
 * of the load whose figure is known (shares are of these; a replica
 * promoted meanwhile has no command count from the start), and one
 * master's command count. */
typedef struct sg_mtot {
    long long keys, sparks, ops;
    size_t current; /* masters in the last slot map read */
} sg_mtot_t;

static long long sg_master_ops(const sg_master_t *x)
{
    return x->ops_start >= 0 && x->ops_end >= x->ops_start ? x->ops_end - x->ops_start : -1;
}

static void sg_master_totals(const sg_run_t *r, sg_mtot_t *t)
{
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < r->nmasters; i++) {
        const sg_master_t *x = &r->masters[i];
        if (!x->is_master)
            continue;
        t->current++;
        long long ops = sg_master_ops(x);
        t->keys += x->keys > 0 ? x->keys : 0;
        t->sparks += x->sparks > 0 ? x->sparks : 0;
        t->ops += ops > 0 ? ops : 0;
    }
}

static double sg_share(long long part, long long total)
{
    return part >= 0 && total > 0 ? 100.0 * (double)part / (double)total : -1;
}

static void sg_report_print(FILE *f, sg_run_t *r, const sg_summary_t *su)
{
    const sg_config_t *cfg = &r->cfg;
    const sg_metrics_t *m = &r->m;
    char b1[32], b2[32];

    fprintf(f, "metroplex-sparkgen report\n");
    fprintf(f, "  redis:                %s%s\n", r->url_shown,
            r->own_redis ? " (throwaway)" : "");
    fprintf(f, "  namespace:            %s\n", cfg->ns);
    if (sg_sharded(r))
        fprintf(f, "  layout:               sharded, %" PRIu32 " shards\n", r->keys.nshards);
    else
        fprintf(f, "  layout:               node (the Node original's keys)\n");
    char id0[SG_ID_CAP], shown[96];
    size_t len0 = sg_spark_id(0, id0);
    fprintf(f, "  sparks:               %" PRIu64 " (ids: %s, seed %" PRIu64 ", first %s)\n",
            cfg->sparks, sg_id_names[cfg->id_format], cfg->seed,
            sg_id_shown(id0, len0, shown, sizeof shown));
    if (cfg->kill)
        fprintf(f, "  servers:              %" PRIu32 ", one process each\n", cfg->servers);
    else
        fprintf(f, "  servers:              %" PRIu32 ", in this process\n", cfg->servers);
    fprintf(f, "  producer threads:     %" PRIu32 "\n", cfg->threads);
    if (m->reached >= SG_PHASE_CONNECT) {
        fprintf(f, "  register:             %.3f s\n", m->register_s);
        if (su->connected_per_s >= 0) {
            fprintf(f, "  connected:            %.3f s, %.0f sparks/s\n", m->connect_s,
                    su->connected_per_s);
            fprintf(f, "  committed:            %.3f s after the first connect, %.0f sparks/s\n",
                    m->commit_s, su->committed_per_s);
        } else {
            fprintf(f, "  connected:            incomplete (%" PRIu64 " calls)\n",
                    m->connect_calls);
        }
        const mpx_stats_t *st = &m->stats;
        fprintf(f, "  commit latency:       p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms"
                   " (worst server; %" PRIu64 " changes)\n",
                (double)st->commit_latency_p50_us / 1000.0, (double)st->commit_latency_p99_us / 1000.0,
                (double)st->commit_latency_p999_us / 1000.0, (double)st->commit_latency_max_us / 1000.0,
                st->commit_latency_count);
        if (su->redis_bytes >= 0)
            fprintf(f, "  redis memory:         %s for the sparks, %.1f B/spark\n",
                    sg_human_bytes(su->redis_bytes, b1, sizeof b1), su->redis_per_spark);
        if (su->rss_bytes >= 0)
            fprintf(f, "  process memory:       %s RSS%s, %.1f B/spark (max RSS %s)\n",
                    sg_human_bytes(su->rss_bytes, b1, sizeof b1),
                    cfg->kill ? " over the server processes" : "", su->rss_per_spark,
                    sg_human_bytes(su->maxrss_bytes, b2, sizeof b2));
        fprintf(f, "  library cache:        %" PRIu64 " entries, %s\n", st->cache_entries,
                sg_human_bytes((double)st->cache_bytes, b1, sizeof b1));
        sg_mtot_t t;
        sg_master_totals(r, &t);
        fprintf(f, "  redis masters:        %zu%s\n", m->measured ? t.current : r->nmasters,
                m->measured ? " (keys, sparks, used_memory and commands at the end of the load; "
                              "+ the growth during connect)"
                            : "");
        for (size_t i = 0; i < r->nmasters; i++) {
            const sg_master_t *x = &r->masters[i];
            char k[48], sp[48], mem[32], grow[32], ops[48];
            long long dops = sg_master_ops(x);
            if (x->keys >= 0 && x->is_master)
                snprintf(k, sizeof k, "%lld (%.1f%%)", x->keys, sg_share(x->keys, t.keys));
            else
                snprintf(k, sizeof k, "?");
            if (x->sparks >= 0 && x->is_master)
                snprintf(sp, sizeof sp, "%s (%.1f%%)", sg_human_count((double)x->sparks, b1, sizeof b1),
                         sg_share(x->sparks, t.sparks));
            else
                snprintf(sp, sizeof sp, "?");
            if (dops >= 0 && x->is_master)
                snprintf(ops, sizeof ops, "%s (%.1f%%)", sg_human_count((double)dops, b1, sizeof b1),
                         sg_share(dops, t.ops));
            else
                snprintf(ops, sizeof ops, "?");
            long long mem_now = x->mem_end >= 0 ? x->mem_end : x->mem_after;
            snprintf(mem, sizeof mem, "%s", mem_now >= 0 ? sg_human_bytes((double)mem_now, b1, sizeof b1) : "?");
            if (x->mem_before >= 0 && x->mem_after >= 0)
                snprintf(grow, sizeof grow, "+%s", sg_human_bytes((double)(x->mem_after - x->mem_before), b2, sizeof b2));
            else
                snprintf(grow, sizeof grow, "+?");
            fprintf(f, "    %-20s keys %s, sparks %s, used_memory %s (%s), commands %s%s\n",
                    x->name, k, sp, mem, grow, ops,
                    m->measured && !x->is_master ? " (no longer a master)" : "");
        }
    }
    if (m->reached >= SG_PHASE_STAY && cfg->churn_pct > 0)
        fprintf(f, "  churn:                %.3g%%/s: %" PRIu64
                   " disconnect+reconnect pairs in %.1f s (%.0f/s)\n",
                cfg->churn_pct, m->churn_ops, m->churn_s, su->churn_per_s);
    if (m->killed) {
        fprintf(f, "  killed servers:       %u (", m->killed);
        for (unsigned v = cfg->servers - m->killed; v < cfg->servers; v++)
            fprintf(f, "%s%s", v > cfg->servers - m->killed ? ", " : "", r->srv[v].address);
        fprintf(f, "), %" PRIu64 " sparks\n", m->killed_sparks);
        if (m->reap_ms >= 0)
            fprintf(f, "  reaped:               %.0f ms after SIGKILL (interval %" PRIu32
                       " ms)\n",
                    m->reap_ms, cfg->interval_ms);
        else
            fprintf(f, "  reaped:               NOT within the time allowed\n");
    }
    if (m->reached >= SG_PHASE_STAY && cfg->duration_s)
        fprintf(f, "  stayed:               %.1f s\n", m->stay_s);
    if (!cfg->verify)
        fprintf(f, "  verify:               skipped (--no-verify)\n");
    else if (m->reached >= SG_PHASE_VERIFY)
        fprintf(f, "  verify:               %.3f s, %" PRIu64 " ids%s\n", m->verify_s,
                m->ids_checked, m->verified ? "" : " (incomplete)");
    if (m->reached >= SG_PHASE_UNREGISTER) {
        const mpx_stats_t *e = &m->stats;
        fprintf(f, "  library counters:     batches %" PRIu64 " (%" PRIu64 " retried), coalesced %"
                   PRIu64 ", heartbeats %" PRIu64 ", redis errors %" PRIu64
                   ", reregistered %" PRIu64 ", reaped %" PRIu64 " servers / %" PRIu64
                   " sparks\n",
                e->batches, e->retries, e->coalesced, e->heartbeats, e->redis_errors,
                e->reregistered, e->reaped_servers, e->reaped_sparks);
        fprintf(f, "  unregister:           %.3f s\n", m->unregister_s);
    }
    fprintf(f, "  library errors:       %" PRIu64 " (%" PRIu64 " returned, %" PRIu64
               " background)\n",
            su->api_errors + su->bg_errors, su->api_errors, su->bg_errors);
    if (su->bg_notices || cfg->faults)
        fprintf(f, "  background reports:   %" PRIu64 " of them recovery notices (MPX_ESTATE)%s\n",
                su->bg_notices,
                cfg->faults ? "; --faults: background reports do not fail the run" : "");
    fprintf(f, "  mismatches:           %" PRIu64 "\n", r->mismatches);
    for (int i = 0; i < r->shown; i++)
        fprintf(f, "    - %s\n", r->shown_text[i]);
    if (r->mismatches > (uint64_t)r->shown)
        fprintf(f, "    ... and %" PRIu64 " more\n", r->mismatches - (uint64_t)r->shown);
    fprintf(f, "  result:               %s\n",
            strcmp(su->result, "ok") == 0 ? "OK"
            : strcmp(su->result, "failed") == 0 ? "FAILED"
                                                : "INTERRUPTED");
}

/* "key":value, with null for a negative (unknown) value. */
static void sg_json_num(sg_buf_t *b, const char *key, double v, const char *fmt)
{
    sg_buf_printf(b, ",\"%s\":", key);
    if (v < 0 || !isfinite(v))
        sg_buf_printf(b, "null");
    else
        sg_buf_printf(b, fmt, v);
}

static void sg_json_u64(sg_buf_t *b, const char *key, uint64_t v)
{
    sg_buf_printf(b, ",\"%s\":%" PRIu64, key, v);
}

/* The report as one JSON object on one line (fields: see README.md). */
static void sg_report_json(FILE *f, sg_run_t *r, int status, const sg_summary_t *su)
{
    const sg_config_t *cfg = &r->cfg;
    const sg_metrics_t *m = &r->m;
    const mpx_stats_t *st = &m->stats;
    sg_buf_t b = {0};
    sg_buf_printf(&b, "{\"tool\":\"metroplex-sparkgen\",\"result\":\"%s\",\"exit_code\":%d",
                  su->result, status);
    sg_json_u64(&b, "sparks", cfg->sparks);
    sg_json_u64(&b, "servers", cfg->servers);
    sg_json_u64(&b, "threads", cfg->threads);
    sg_buf_printf(&b, ",\"id_format\":\"%s\"", sg_id_names[cfg->id_format]);
    sg_json_u64(&b, "seed", cfg->seed);
    sg_json_num(&b, "churn_pct", cfg->churn_pct, "%g");
    sg_json_u64(&b, "duration_s", cfg->duration_s);
    sg_json_u64(&b, "kill_servers", cfg->kill);
    sg_json_u64(&b, "interval_ms", cfg->interval_ms);
    sg_json_u64(&b, "latency_ms", cfg->latency_ms);
    sg_buf_printf(&b, ",\"layout\":\"%s\"", sg_layout_name(cfg->layout));
    sg_json_u64(&b, "shards", r->keys.nshards ? r->keys.nshards : 1);
    sg_json_num(&b, "register_s", m->reached >= SG_PHASE_CONNECT ? m->register_s : -1, "%.6f");
    sg_json_num(&b, "connect_s", su->connected_per_s >= 0 ? m->connect_s : -1, "%.6f");
    sg_json_num(&b, "commit_s", su->committed_per_s >= 0 ? m->commit_s : -1, "%.6f");
    sg_json_num(&b, "connected_per_s", su->connected_per_s, "%.1f");
    sg_json_num(&b, "committed_per_s", su->committed_per_s, "%.1f");
    sg_buf_printf(&b, ",\"commit_latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
                      "\"max\":%.3f,\"count\":%" PRIu64 "}",
                  (double)st->commit_latency_p50_us / 1000.0, (double)st->commit_latency_p99_us / 1000.0,
                  (double)st->commit_latency_p999_us / 1000.0, (double)st->commit_latency_max_us / 1000.0,
                  st->commit_latency_count);
    sg_json_num(&b, "redis_bytes", su->redis_bytes, "%.0f");
    sg_json_num(&b, "redis_bytes_per_spark", su->redis_per_spark, "%.2f");
    sg_json_num(&b, "rss_bytes", su->rss_bytes, "%.0f");
    sg_json_num(&b, "rss_bytes_per_spark", su->rss_per_spark, "%.2f");
    sg_json_num(&b, "max_rss_bytes", su->maxrss_bytes, "%.0f");
    sg_json_u64(&b, "cache_entries", st->cache_entries);
    sg_json_u64(&b, "cache_bytes", st->cache_bytes);
    sg_json_u64(&b, "queued", st->queued);
    sg_json_u64(&b, "committed", st->committed);
    sg_json_u64(&b, "batches", st->batches);
    sg_json_u64(&b, "retries", st->retries);
    sg_json_u64(&b, "coalesced", st->coalesced);
    sg_mtot_t t;
    sg_master_totals(r, &t);
    sg_json_u64(&b, "masters", m->measured ? t.current : r->nmasters);
    sg_buf_printf(&b, ",\"per_master\":[");
    for (size_t i = 0; i < r->nmasters; i++) {
        const sg_master_t *x = &r->masters[i];
        long long dops = sg_master_ops(x);
        sg_buf_printf(&b, "%s{\"node\":", i ? "," : "");
        sg_buf_json_str(&b, x->name);
        sg_buf_printf(&b, ",\"master\":%s", !m->measured || x->is_master ? "true" : "false");
        sg_json_num(&b, "keys", (double)x->keys, "%.0f");
        sg_json_num(&b, "keys_share", x->is_master ? sg_share(x->keys, t.keys) / 100.0 : -1, "%.4f");
        sg_json_num(&b, "sparks", (double)x->sparks, "%.0f");
        sg_json_num(&b, "sparks_share",
                    x->is_master ? sg_share(x->sparks, t.sparks) / 100.0 : -1, "%.4f");
        sg_json_num(&b, "used_memory",
                    (double)(x->mem_end >= 0 ? x->mem_end : x->mem_after), "%.0f");
        sg_json_num(&b, "redis_bytes",
                    x->mem_before >= 0 && x->mem_after >= 0 ? (double)(x->mem_after - x->mem_before)
                                                            : -1,
                    "%.0f");
        sg_json_num(&b, "ops", (double)dops, "%.0f");
        sg_json_num(&b, "ops_share", x->is_master ? sg_share(dops, t.ops) / 100.0 : -1, "%.4f");
        sg_buf_printf(&b, "}");
    }
    sg_buf_printf(&b, "]");
    sg_json_u64(&b, "churn_ops", m->churn_ops);
    sg_json_num(&b, "churn_per_s", su->churn_per_s, "%.1f");
    sg_buf_printf(&b, ",\"killed\":[");
    for (unsigned v = cfg->servers - m->killed, k = 0; v < cfg->servers; v++, k++) {
        if (k)
            sg_buf_printf(&b, ",");
        sg_buf_json_str(&b, r->srv[v].address);
    }
    sg_buf_printf(&b, "]");
    sg_json_u64(&b, "killed_sparks", m->killed_sparks);
    sg_json_num(&b, "reap_ms", m->killed ? m->reap_ms : -1, "%.1f");
    sg_json_u64(&b, "reaped_servers", st->reaped_servers);
    sg_json_u64(&b, "reaped_sparks", st->reaped_sparks);
    sg_buf_printf(&b, ",\"verified\":%s", cfg->verify && m->verified ? "true" : "false");
    sg_json_num(&b, "verify_s", cfg->verify && m->reached >= SG_PHASE_VERIFY ? m->verify_s : -1,
                "%.6f");
    sg_json_u64(&b, "ids_checked", m->ids_checked);
    sg_json_num(&b, "drains_wait_s", m->drains_wait_s, "%.3f");
    sg_json_u64(&b, "mismatches", r->mismatches);
    sg_buf_printf(&b, ",\"mismatch_list\":[");
    for (int i = 0; i < r->shown; i++) {
        if (i)
            sg_buf_printf(&b, ",");
        sg_buf_json_str(&b, r->shown_text[i]);
    }
    sg_buf_printf(&b, "]");
    sg_json_u64(&b, "api_errors", su->api_errors);
    sg_json_u64(&b, "background_errors", su->bg_errors);
    sg_json_u64(&b, "background_notices", su->bg_notices);
    sg_buf_printf(&b, ",\"faults\":%s", cfg->faults ? "true" : "false");
    sg_buf_printf(&b, "}\n");
    fputs(b.p, f);
    sg_buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* Run and cleanup                                                          */

static int sg_run(sg_run_t *r)
{
    snprintf(r->nsc, sizeof r->nsc, "%s:", r->cfg.ns);
    sg_signals_early();
    int status = sg_phase_redis(r);
    if (status)
        return status;
    /* Block signals now (Redis is up): the children and every thread
     * inherit the mask; the signal thread starts after the forks. */
    sg_signals_block(r);
    if (!sg_stopping(r))
        status = sg_phase_nodes(r);
    if (sg_signals_start(r) != 0 && !status)
        status = SG_EXIT_FAIL;

    if (!status && !sg_stopping(r))
        status = sg_phase_connect(r);
    if (!status && !sg_stopping(r))
        status = sg_phase_stay(r);
    if (!status && !sg_stopping(r))
        status = sg_phase_flush(r);
    if (!status && !sg_stopping(r))
        sg_phase_measure(r);
    if (!status && !sg_stopping(r) && r->cfg.verify)
        sg_phase_verify(r);
    if (!status && !sg_stopping(r))
        sg_phase_unregister(r);
    sg_nodes_shutdown(r);
    if (!status && !sg_stopping(r))
        r->m.reached = SG_PHASE_DONE;
    sg_progress_end();

    int sig = atomic_load(&r->stop_sig);
    if (sig > 0)
        status = 128 + sig;
    else if (!status && (r->mismatches || sg_errors(r)))
        status = SG_EXIT_FAIL;
    if (r->nodes_created) {
        sg_summary_t su;
        sg_summarise(r, status, &su);
        if (r->cfg.json) {
            if (!r->cfg.quiet)
                sg_report_print(stderr, r, &su);
            fflush(stderr);
            sg_report_json(stdout, r, status, &su);
        } else {
            sg_report_print(stdout, r, &su);
        }
    }
    fflush(stdout);
    return status;
}

static void sg_cleanup(sg_run_t *r)
{
    sg_nodes_shutdown(r);
    free(r->nodes);
    r->nodes = NULL;
    r->nodes_created = 0;
    free(r->srv);
    r->srv = NULL;
    if (r->conn_ready) {
        mpx__conn_free(&r->conn);
        r->conn_ready = 0;
    }
    mpx__argv_free(&r->a);
    if (r->keys_ready) {
        mpx__keys_free(&r->keys);
        r->keys_ready = 0;
    }
    free(r->masters);
    r->masters = NULL;
    r->nmasters = 0;
    mpx__endpoint_free(&r->ep);
    sg_cluster_stop(r);
    if (r->own_redis) {
        /* redis_pid stays set while stopping: a second signal meanwhile
         * SIGKILLs it rather than leaving it behind. */
        redis_proc_destroy(&r->rp);
        atomic_store(&r->redis_pid, 0);
        r->own_redis = 0;
    }
    sg_signals_stop(r);
}

int main(int argc, char **argv)
{
    static sg_run_t run; /* large (mismatch texts); zeroed */
    int rc = sg_parse_args(argc, argv, &run.cfg);
    if (rc > 0)
        return SG_EXIT_OK;
    if (rc < 0)
        return SG_EXIT_USAGE;
    sg_quiet = run.cfg.quiet;
    sg_tty = isatty(STDERR_FILENO);
    sg_ids_init(&run.cfg);
    atomic_init(&run.api_errors, 0);
    atomic_init(&run.stop_sig, 0);
    atomic_init(&run.sig_done, 0);
    atomic_init(&run.redis_pid, 0);
    atomic_init(&run.own_cluster, 0);
    run.m.redis_mem_before = run.m.redis_mem_after = -1;
    run.m.rss_delta_kb = -1;
    run.m.reap_ms = -1;
    int status = sg_run(&run);
    sg_cleanup(&run);
    return status;
}
