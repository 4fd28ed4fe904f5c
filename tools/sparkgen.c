/*
 * sparkgen.c - metroplex-sparkgen: load generator and end-to-end check.
 *
 * What it does
 *   S simulated servers, each a real registry (mpx_create + mpx_register
 *   with its own address http://127.0.0.1:<10000+i>), together connect N
 *   sparks, flush, and the result is checked against Redis with a direct
 *   hiredis connection. The servers then stay registered (heartbeating) for
 *   --duration seconds, unregister, and the namespace is checked to be empty.
 *   A report (timings, throughput, memory per spark, mismatches) goes to
 *   stdout; progress and diagnostics go to stderr.
 *
 * No per-spark state
 *   Spark number i (0 <= i < N) has the id sg_spark_id(seed, i) and belongs
 *   to server i % S, so server s holds N/S sparks plus one if s < N % S.
 *   Producer thread t (of T) connects the sparks i = t, t+T, t+2T, ...; with
 *   the default T = S each thread feeds exactly one server. Any check can
 *   recompute an id and its expected server from the index alone.
 *
 * Phases (each timed; see sg_run())
 *   setup      parse options, start or reach Redis, check the namespace is
 *              empty, create and register the servers
 *   connect    producer threads call mpx_connect()
 *   flush      mpx_flush() on every server, bounded by a deadline
 *   verify     HLEN, SCARD per server, servers set, alive keys, a sample of
 *              ids through HMGET and through mpx_sparks(), library counters
 *   stay       --duration seconds, one progress line per second
 *   unregister mpx_unregister() on every server, then the namespace must be
 *              empty (no hash fields, none of our servers, no key left)
 *   report     sg_report_print()
 *
 * Threads and signals
 *   SIGINT/SIGTERM are blocked in every thread once Redis is up (so library
 *   threads never see EINTR); a small signal thread takes them with
 *   sigtimedwait() and sets run->stop_sig, which every phase polls. A second
 *   signal kills the redis-server we started (by PID) and exits at once.
 *   The redis-server is started before signals are blocked, so it does not
 *   inherit a blocked mask; a signal that arrives meanwhile is caught by a
 *   flag-only handler and honoured as soon as the signal thread runs.
 *
 * Cleanup
 *   One path, sg_cleanup(): unregister what is still registered (skipped
 *   when interrupted and the Redis is our throwaway one), destroy every
 *   registry, close the check connection, stop and remove our redis-server,
 *   stop the signal thread. It runs on every exit after option parsing.
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
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "internal.h" /* mpx__parse_redis_url: the library's own URL syntax */
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

#define SG_SAMPLE 1000u        /* ids looked up in verify */
#define SG_SHOWN_MAX 20        /* mismatches kept for the report */
#define SG_ID_CAP 48           /* "<13 digits>$<up to 20 digits>" + NUL */
#define SG_KEY_CAP 512         /* namespace + address + suffix */
#define SG_CHECK_TIMEOUT_MS 10000u
#define SG_LEASE_DEFAULT_MS 10000u
#define SG_SCAN_MAX_KEYS 10000000ull /* bound on the leftover-key scan */

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */

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
    int quiet;
    int verify;
} sg_config_t;

/* ------------------------------------------------------------------------ */
/* Run state                                                                */

struct sg_run;

typedef struct sg_server {
    struct sg_run *run;
    unsigned index;
    char address[64];
    uint64_t expected; /* sparks assigned to this server */
    mpx_t *mpx;
    int registered;
    atomic_uint_fast64_t bg_errors; /* on_error calls */
} sg_server_t;

typedef struct sg_producer {
    struct sg_run *run;
    unsigned index;
    pthread_t thread;
    uint64_t calls;  /* mpx_connect calls made */
    uint64_t errors; /* mpx_connect calls that failed */
} sg_producer_t;

/* Measurements, filled by the phases, printed by sg_report_print(). */
typedef struct sg_metrics {
    int reached; /* highest phase reached, SG_PHASE_* */
    double register_s, connect_s, flush_s, verify_s, stay_s, unregister_s;
    uint64_t connect_calls;
    long long redis_mem_before, redis_mem_after; /* -1: unknown */
    long long rss_before_kb, rss_after_kb;       /* -1: unknown */
    long maxrss_kb;
    mpx_stats_t stats;     /* summed over the servers, after flush */
    mpx_stats_t stats_end; /* summed, before unregister */
    int flushed;       /* every server flushed in time */
} sg_metrics_t;

enum {
    SG_PHASE_SETUP = 0,
    SG_PHASE_CONNECT,
    SG_PHASE_FLUSH,
    SG_PHASE_VERIFY,
    SG_PHASE_STAY,
    SG_PHASE_UNREGISTER,
    SG_PHASE_DONE
};

typedef struct sg_run {
    sg_config_t cfg;
    mpx__redis_endpoint_t ep; /* parsed --redis / throwaway URL */
    char url_text[512]; /* the Redis URL in use */
    char url_shown[512]; /* the same with any password replaced by "***" */
    char nsc[MPX_NAMESPACE_MAX + 2]; /* namespace followed by ':' */

    redis_proc_t rp;
    int own_redis;
    atomic_int redis_pid; /* for the emergency kill on a second signal */

    redisContext *rc; /* check connection; main thread only */
    int rc_lost_noted; /* "cannot reconnect" recorded once */

    sg_server_t *servers;
    unsigned servers_created;

    atomic_uint_fast64_t api_errors; /* library calls that returned errors */

    uint64_t mismatches;
    int shown;
    char shown_text[SG_SHOWN_MAX][256];

    atomic_int stop_sig; /* signal that asked us to stop, or 0 */
    atomic_int producers_abort; /* a producer could not start: stop them */
    atomic_int sig_done;
    pthread_t sig_thread;
    int sig_thread_started;

    sg_metrics_t m;
} sg_run_t;

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */

static double sg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sg_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static int sg_stopping(sg_run_t *r)
{
    return atomic_load_explicit(&r->stop_sig, memory_order_relaxed) != 0;
}

static void sg_info(sg_run_t *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sg_info(sg_run_t *r, const char *fmt, ...)
{
    if (r->cfg.quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sparkgen: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void sg_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sg_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sparkgen: error: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* A library call failed: count it and say what and why. */
static void sg_api_error(sg_run_t *r, const char *what, int rc)
{
    atomic_fetch_add(&r->api_errors, 1);
    const char *detail = mpx_last_error();
    sg_error("%s: %s (%s)%s%s", what, mpx_err_name(rc), mpx_strerror(rc),
             detail[0] ? ": " : "", detail);
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

/*
 * The id of spark number `i` for `seed`, Primus-like: "<ms timestamp>$<n>".
 * The timestamp starts at a seed-dependent point between 2014 and 2017 and
 * advances by one every 1024 sparks; the counter is the index itself, so ids
 * are unique within a run and two seeds share an id only if their starting
 * points coincide (1 in 10^11). Writes at most SG_ID_CAP - 1 bytes plus a
 * NUL; returns the length.
 */
static size_t sg_spark_id(uint64_t seed, uint64_t i, char *buf)
{
    uint64_t ts = 1400000000000ull + sg_mix64(seed) % 100000000000ull + i / 1024;
    size_t n = sg_u64toa(ts, buf);
    buf[n++] = '$';
    n += sg_u64toa(i, buf + n);
    buf[n] = '\0';
    return n;
}

static unsigned sg_server_of(const sg_run_t *r, uint64_t i)
{
    return (unsigned)(i % r->cfg.servers);
}

/* ------------------------------------------------------------------------ */
/* Option parsing                                                           */

static void sg_help(FILE *f)
{
    fprintf(f,
"Usage: " SG_NAME " [OPTION]...\n"
"Simulate S servers, each a metroplex registry, connecting N sparks in total;\n"
"check the result in Redis, stay registered for a while, unregister, check that\n"
"nothing is left, and print a report (stdout). Progress goes to stderr.\n"
"\n"
"  --redis URL        Redis to use, in the library's URL syntax:\n"
"                     redis://[user:password@]host[:port][/db] or\n"
"                     unix:///path[?db=N]; default: start a throwaway\n"
"                     redis-server on a free port and stop it at the end\n"
"  --servers S        simulated servers, 1..%u (default 4); server i has the\n"
"                     address http://127.0.0.1:<%u+i>\n"
"  --sparks N         sparks in total, 0..%llu (default 100000), spread evenly\n"
"  --duration SEC     stay registered (heartbeating) SEC seconds after the\n"
"                     check, 0..%u (default 0)\n"
"  --interval MS      alive-key interval, %u..%u (default 300000)\n"
"  --latency MS       heartbeat latency, 1..interval-1 (default 2000); the\n"
"                     heartbeat runs every interval - latency ms\n"
"  --namespace NS     key prefix (default \"metroplex\"); must be empty in Redis\n"
"  --threads T        producer threads, 1..%u (default: one per server)\n"
"  --seed N           seed of the spark ids and of the sample (default 1)\n"
"  --no-verify        skip the checks after flush\n"
"  -q, --quiet        no progress lines\n"
"  -h, --help         this help\n"
"\n"
"Exit status: 0 ok; 1 mismatches or library errors; 2 usage error, Redis\n"
"unreachable or not startable, or namespace not empty; 128+N on signal N.\n",
            SG_SERVERS_MAX, SG_BASE_PORT, (unsigned long long)SG_SPARKS_MAX,
            SG_DURATION_MAX, SG_INTERVAL_MIN, SG_INTERVAL_MAX, SG_THREADS_MAX);
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
        O_NAMESPACE, O_THREADS, O_SEED, O_NO_VERIFY
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
        .quiet = 0,
        .verify = 1,
    };
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
            mpx__endpoint_free(&ep);
            cfg->redis_url = optarg;
            break;
        }
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
    if (cfg->threads == 0)
        cfg->threads = cfg->servers;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Redis check connection                                                   */

/* A direct connection (not the library's) to `ep`, authenticated, on its
 * database, answering PING. NULL with `why` set on failure. */
static redisContext *sg_redis_connect(const mpx__redis_endpoint_t *ep, char *why,
                                      size_t whycap)
{
    struct timeval tv = {SG_CHECK_TIMEOUT_MS / 1000, 0};
    struct timeval ctv = {2, 0};
    redisContext *c = ep->path ? redisConnectUnixWithTimeout(ep->path, ctv)
                               : redisConnectWithTimeout(ep->host, ep->port, ctv);
    if (!c) {
        snprintf(why, whycap, "out of memory");
        return NULL;
    }
    if (c->err) {
        snprintf(why, whycap, "%s", c->errstr);
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *rep = NULL;
    if (ep->password) {
        rep = ep->user ? redisCommand(c, "AUTH %s %s", ep->user, ep->password)
                       : redisCommand(c, "AUTH %s", ep->password);
        if (!rep || rep->type == REDIS_REPLY_ERROR)
            goto fail;
        freeReplyObject(rep);
    }
    if (ep->db > 0) {
        rep = redisCommand(c, "SELECT %d", ep->db);
        if (!rep || rep->type == REDIS_REPLY_ERROR)
            goto fail;
        freeReplyObject(rep);
    }
    rep = redisCommand(c, "PING");
    if (!rep || rep->type == REDIS_REPLY_ERROR)
        goto fail;
    freeReplyObject(rep);
    return c;
fail:
    snprintf(why, whycap, "%s", rep ? rep->str : c->errstr);
    if (rep)
        freeReplyObject(rep);
    redisFree(c);
    return NULL;
}

/*
 * Make sure the check connection is usable: reconnect after an error (Redis
 * may have restarted). When it cannot and `record` is set, record one
 * mismatch for the whole run. Returns 1 if usable.
 */
static int sg_check_ready(sg_run_t *r, int record)
{
    if (r->rc && !r->rc->err)
        return 1;
    char why[256];
    if (r->rc)
        redisFree(r->rc);
    r->rc = sg_redis_connect(&r->ep, why, sizeof why);
    if (r->rc)
        return 1;
    if (record && !r->rc_lost_noted) {
        sg_mismatch(r, "check connection: cannot reconnect to %s: %s", r->url_shown, why);
        r->rc_lost_noted = 1;
    }
    return 0;
}

/* Run a command expecting an integer; SG_INT_FAIL on any failure (recorded). */
#define SG_INT_FAIL LLONG_MIN
static long long sg_int(sg_run_t *r, const char *fmt, ...)
{
    if (!sg_check_ready(r, 1))
        return SG_INT_FAIL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(r->rc, fmt, ap);
    va_end(ap);
    long long v = SG_INT_FAIL;
    if (!rep)
        sg_mismatch(r, "'%s' failed: %s", fmt, r->rc->errstr);
    else if (rep->type != REDIS_REPLY_INTEGER)
        sg_mismatch(r, "'%s': unexpected reply type %d %s", fmt, rep->type,
                    rep->str ? rep->str : "");
    else
        v = rep->integer;
    if (rep)
        freeReplyObject(rep);
    return v;
}

/* used_memory from INFO memory, or -1. */
static long long sg_redis_used_memory(sg_run_t *r)
{
    if (!sg_check_ready(r, 0))
        return -1;
    redisReply *rep = redisCommand(r->rc, "INFO memory");
    long long v = -1;
    if (rep && rep->type == REDIS_REPLY_STRING) {
        const char *p = strstr(rep->str, "\nused_memory:");
        if (!p && strncmp(rep->str, "used_memory:", 12) == 0)
            p = rep->str - 1;
        if (p)
            v = strtoll(p + 13, NULL, 10);
    }
    if (rep)
        freeReplyObject(rep);
    return v;
}

static void sg_key_sparks(const sg_run_t *r, char *key)
{
    snprintf(key, SG_KEY_CAP, "%ssparks", r->nsc);
}

static void sg_key_servers(const sg_run_t *r, char *key)
{
    snprintf(key, SG_KEY_CAP, "%sservers", r->nsc);
}

static void sg_key_server_set(const sg_run_t *r, const sg_server_t *s, char *key)
{
    snprintf(key, SG_KEY_CAP, "%s%s:sparks", r->nsc, s->address);
}

static void sg_key_alive(const sg_run_t *r, const sg_server_t *s, char *key)
{
    snprintf(key, SG_KEY_CAP, "%s%s", r->nsc, s->address);
}

/*
 * Keys under the namespace, found with SCAN MATCH (bounded to about
 * SG_SCAN_MAX_KEYS keys visited). Calls `each` for each key (may be NULL);
 * returns the count, or -1 if a SCAN failed.
 */
static long long sg_scan_ns(sg_run_t *r, void (*each)(sg_run_t *, const char *))
{
    char pattern[2 * MPX_NAMESPACE_MAX + 8];
    size_t o = 0;
    for (const char *p = r->cfg.ns; *p; p++) {
        if (strchr("*?[]\\", *p))
            pattern[o++] = '\\';
        pattern[o++] = *p;
    }
    memcpy(pattern + o, ":*", 3);

    char cursor[32] = "0";
    long long found = 0;
    unsigned long long visited = 0;
    do {
        if (!sg_check_ready(r, 0))
            return -1;
        redisReply *rep =
            redisCommand(r->rc, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
            rep->element[0]->type != REDIS_REPLY_STRING ||
            rep->element[1]->type != REDIS_REPLY_ARRAY) {
            if (rep)
                freeReplyObject(rep);
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", rep->element[0]->str);
        redisReply *keys = rep->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            found++;
            if (each && keys->element[i]->type == REDIS_REPLY_STRING)
                each(r, keys->element[i]->str);
        }
        visited += 1000;
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0 && visited < SG_SCAN_MAX_KEYS);
    return found;
}

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
            fprintf(stderr, "sparkgen: %s received, stopping (send again to abort)\n",
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
            continue;
        }
        /* Second signal: kill our redis-server by PID and leave now. */
        pid_t pid = atomic_load(&r->redis_pid);
        if (pid > 0)
            kill(pid, SIGKILL);
        static const char msg[] = "sparkgen: aborted\n";
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
    /* A dead Redis must show up as an error, not kill us before cleanup. */
    signal(SIGPIPE, SIG_IGN);
}

/* Block SIGINT/SIGTERM in this and all later threads; start the taker. */
static int sg_signals_start(sg_run_t *r)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (sg_early_signal)
        atomic_store(&r->stop_sig, (int)sg_early_signal);
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
/* Process memory                                                           */

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
/* Library callbacks                                                        */

static void sg_on_error(mpx_t *mpx, int err, const char *message, void *data)
{
    (void)mpx;
    sg_server_t *s = data;
    atomic_fetch_add(&s->bg_errors, 1);
    fprintf(stderr, "sparkgen: server %u (%s): background error %s: %s\n", s->index,
            s->address, mpx_err_name(err), message ? message : "");
}

static uint64_t sg_bg_errors(sg_run_t *r)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < r->servers_created; i++)
        n += atomic_load(&r->servers[i].bg_errors);
    return n;
}

static void sg_stats_sum(sg_run_t *r, mpx_stats_t *sum)
{
    memset(sum, 0, sizeof *sum);
    for (unsigned i = 0; i < r->servers_created; i++) {
        mpx_stats_t st;
        if (mpx_stats(r->servers[i].mpx, &st) != 0)
            continue;
        sum->local_sparks += st.local_sparks;
        sum->queued += st.queued;
        sum->committed += st.committed;
        sum->pending += st.pending;
        sum->batches += st.batches;
        sum->redis_errors += st.redis_errors;
        sum->retries += st.retries;
        sum->heartbeats += st.heartbeats;
        sum->reaped_servers += st.reaped_servers;
        sum->reaped_sparks += st.reaped_sparks;
        sum->reregistered += st.reregistered;
    }
}

/* ------------------------------------------------------------------------ */
/* Phases                                                                   */

/* Start or reach Redis; check the namespace is empty. Exit code or 0. */
static int sg_phase_redis(sg_run_t *r)
{
    char why[256];
    if (!r->cfg.redis_url) {
        if (redis_proc_start(&r->rp, NULL) != 0) {
            redis_proc_destroy(&r->rp); /* its temporary directory */
            sg_error("cannot start a throwaway redis-server (is redis-server in PATH, "
                     "or $MPX_REDIS_SERVER set?)");
            return SG_EXIT_USAGE;
        }
        r->own_redis = 1;
        atomic_store(&r->redis_pid, (int)r->rp.pid);
        snprintf(r->url_text, sizeof r->url_text, "%s", r->rp.url);
        sg_info(r, "started redis-server pid %ld at %s", (long)r->rp.pid, r->url_text);
    } else {
        snprintf(r->url_text, sizeof r->url_text, "%s", r->cfg.redis_url);
    }
    sg_url_redact(r->url_text, r->url_shown, sizeof r->url_shown);
    if (mpx__parse_redis_url(r->url_text, &r->ep) != 0) {
        sg_error("unusable Redis URL %s", r->url_shown);
        return SG_EXIT_USAGE;
    }
    r->rc = sg_redis_connect(&r->ep, why, sizeof why);
    if (!r->rc) {
        sg_error("cannot reach Redis at %s: %s", r->url_shown, why);
        return SG_EXIT_USAGE;
    }
    char key[SG_KEY_CAP];
    long long keys = sg_scan_ns(r, NULL);
    sg_key_sparks(r, key);
    long long hlen = sg_int(r, "HLEN %s", key);
    sg_key_servers(r, key);
    long long nservers = sg_int(r, "SCARD %s", key);
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
    r->mismatches = 0; /* nothing above is a mismatch of this run */
    r->shown = 0;
    r->rc_lost_noted = 0;
    return 0;
}

/* Create and register the S servers. */
static int sg_phase_register(sg_run_t *r)
{
    const sg_config_t *cfg = &r->cfg;
    r->servers = calloc(cfg->servers, sizeof *r->servers);
    if (!r->servers) {
        sg_error("out of memory");
        return SG_EXIT_FAIL;
    }
    /* RSS from before mpx_create: the tables are presized (size_hint). */
    r->m.rss_before_kb = sg_rss_kb();
    double t0 = sg_now();
    for (unsigned i = 0; i < cfg->servers; i++) {
        sg_server_t *s = &r->servers[i];
        s->run = r;
        s->index = i;
        atomic_init(&s->bg_errors, 0);
        snprintf(s->address, sizeof s->address, "http://127.0.0.1:%u", SG_BASE_PORT + i);
        s->expected = cfg->sparks / cfg->servers + (i < cfg->sparks % cfg->servers);

        mpx_options_t o;
        mpx_options_init(&o);
        o.redis_url = r->url_text;
        o.ns = cfg->ns;
        o.interval_ms = cfg->interval_ms;
        o.latency_ms = cfg->latency_ms;
        o.lease_ms = cfg->interval_ms < SG_LEASE_DEFAULT_MS ? cfg->interval_ms
                                                            : SG_LEASE_DEFAULT_MS;
        o.size_hint = (size_t)s->expected;
        o.on_error = sg_on_error;
        o.on_error_data = s;
        int rc = mpx_create(&o, &s->mpx);
        if (rc != 0) {
            char what[96];
            snprintf(what, sizeof what, "mpx_create (server %u)", i);
            sg_api_error(r, what, rc);
            return rc == MPX_EINVAL ? SG_EXIT_USAGE : SG_EXIT_FAIL;
        }
        r->servers_created++;
        rc = mpx_register(s->mpx, s->address);
        if (rc != 0) {
            char what[128];
            snprintf(what, sizeof what, "mpx_register(%s)", s->address);
            sg_api_error(r, what, rc);
            if (rc == MPX_ECONN || rc == MPX_ETIMEDOUT || rc == MPX_EADDRINUSE)
                return SG_EXIT_USAGE;
            return SG_EXIT_FAIL;
        }
        s->registered = 1;
        if (sg_stopping(r))
            return SG_EXIT_FAIL;
    }
    r->m.register_s = sg_now() - t0;
    /* Redis memory from after registration: only the sparks count. */
    r->m.redis_mem_before = sg_redis_used_memory(r);
    sg_info(r, "registered %u servers in %.3f s", cfg->servers, r->m.register_s);
    return 0;
}

static void *sg_producer_main(void *arg)
{
    sg_producer_t *p = arg;
    sg_run_t *r = p->run;
    const uint64_t n = r->cfg.sparks, step = r->cfg.threads, seed = r->cfg.seed;
    char id[SG_ID_CAP];
    for (uint64_t i = p->index; i < n; i += step) {
        if ((p->calls & 4095) == 0 &&
            (sg_stopping(r) || atomic_load_explicit(&r->producers_abort,
                                                    memory_order_relaxed)))
            break;
        size_t len = sg_spark_id(seed, i, id);
        sg_server_t *s = &r->servers[sg_server_of(r, i)];
        int rc = mpx_connect(s->mpx, id, len);
        p->calls++;
        if (rc != 0) {
            p->errors++;
            if (p->errors <= 3) {
                char what[160];
                snprintf(what, sizeof what, "mpx_connect(%s) on server %u", id, s->index);
                sg_api_error(r, what, rc);
            } else {
                atomic_fetch_add(&r->api_errors, 1);
            }
            if (rc == MPX_ECLOSED || rc == MPX_ENOMEM)
                break;
        }
    }
    return NULL;
}

static int sg_phase_connect(sg_run_t *r)
{
    unsigned t = r->cfg.threads;
    sg_producer_t *prod = calloc(t, sizeof *prod);
    if (!prod) {
        sg_error("out of memory");
        return SG_EXIT_FAIL;
    }
    r->m.reached = SG_PHASE_CONNECT;
    unsigned started = 0;
    int status = 0;
    double t0 = sg_now();
    for (; started < t; started++) {
        prod[started].run = r;
        prod[started].index = started;
        if (pthread_create(&prod[started].thread, NULL, sg_producer_main,
                           &prod[started]) != 0) {
            sg_error("cannot start producer thread %u", started);
            atomic_store(&r->producers_abort, 1);
            status = SG_EXIT_FAIL;
            break;
        }
    }
    uint64_t errors = 0;
    for (unsigned i = 0; i < started; i++) {
        pthread_join(prod[i].thread, NULL);
        r->m.connect_calls += prod[i].calls;
        errors += prod[i].errors;
    }
    r->m.connect_s = sg_now() - t0;
    free(prod);
    if (errors)
        sg_error("%" PRIu64 " mpx_connect calls failed", errors);
    sg_info(r, "connect: %" PRIu64 " calls in %.3f s (%.0f/s) with %u threads",
            r->m.connect_calls, r->m.connect_s,
            r->m.connect_s > 0 ? (double)r->m.connect_calls / r->m.connect_s : 0.0, t);
    return status ? status : (errors ? SG_EXIT_FAIL : 0);
}

static int sg_phase_flush(sg_run_t *r)
{
    r->m.reached = SG_PHASE_FLUSH;
    /* Generous: 30 s plus 1 s per 10000 sparks. */
    double budget = 30.0 + (double)r->cfg.sparks / 10000.0;
    double t0 = sg_now(), deadline = t0 + budget, last_note = t0;
    int status = 0;
    for (unsigned i = 0; i < r->cfg.servers && !status; i++) {
        sg_server_t *s = &r->servers[i];
        for (;;) {
            int rc = mpx_flush(s->mpx, 250);
            if (rc == 0)
                break;
            if (rc != MPX_ETIMEDOUT) {
                char what[128];
                snprintf(what, sizeof what, "mpx_flush on server %u", i);
                sg_api_error(r, what, rc);
                status = SG_EXIT_FAIL;
                break;
            }
            double now = sg_now();
            if (sg_stopping(r)) {
                status = SG_EXIT_FAIL;
                break;
            }
            if (now >= deadline) {
                mpx_stats_t st;
                mpx_stats(s->mpx, &st);
                atomic_fetch_add(&r->api_errors, 1);
                sg_error("flush: server %u still has %" PRIu64
                         " changes pending after %.0f s",
                         i, st.pending, budget);
                status = SG_EXIT_FAIL;
                break;
            }
            if (now - last_note >= 1.0) {
                mpx_stats_t st;
                sg_stats_sum(r, &st);
                sg_info(r, "flush: %" PRIu64 " committed, %" PRIu64 " pending",
                        st.committed, st.pending);
                last_note = now;
            }
        }
    }
    r->m.flush_s = sg_now() - t0;
    r->m.flushed = status == 0;
    r->m.rss_after_kb = sg_rss_kb();
    r->m.redis_mem_after = sg_redis_used_memory(r);
    sg_stats_sum(r, &r->m.stats);
    sg_info(r, "flush: %s in %.3f s", status ? "stopped" : "done", r->m.flush_s);
    return status;
}

/* Check the registry in Redis after flush. */
static void sg_phase_verify(sg_run_t *r)
{
    r->m.reached = SG_PHASE_VERIFY;
    const sg_config_t *cfg = &r->cfg;
    double t0 = sg_now();
    char key[SG_KEY_CAP], key2[SG_KEY_CAP];
    uint64_t before = r->mismatches;

    /* 1. the hash holds exactly N ids */
    sg_key_sparks(r, key);
    long long hlen = sg_int(r, "HLEN %s", key);
    if (hlen >= 0 && (uint64_t)hlen != cfg->sparks)
        sg_mismatch(r, "HLEN %s = %lld, expected %" PRIu64, key, hlen, cfg->sparks);

    /* 2. each server: its set size, membership in the servers set, alive key */
    sg_key_servers(r, key2);
    long long nservers = sg_int(r, "SCARD %s", key2);
    if (nservers >= 0 && nservers != (long long)cfg->servers)
        sg_mismatch(r, "SCARD %s = %lld, expected %u", key2, nservers, cfg->servers);
    for (unsigned i = 0; i < cfg->servers; i++) {
        sg_server_t *s = &r->servers[i];
        sg_key_server_set(r, s, key);
        long long n = sg_int(r, "SCARD %s", key);
        if (n >= 0 && (uint64_t)n != s->expected)
            sg_mismatch(r, "SCARD %s = %lld, expected %" PRIu64, key, n, s->expected);
        long long in = sg_int(r, "SISMEMBER %s %s", key2, s->address);
        if (in == 0)
            sg_mismatch(r, "%s is not in %s", s->address, key2);
        sg_key_alive(r, s, key);
        long long pttl = sg_int(r, "PTTL %s", key);
        if (pttl != SG_INT_FAIL && (pttl <= 0 || pttl > (long long)cfg->interval_ms))
            sg_mismatch(r, "alive key %s: PTTL %lld, expected 1..%u", key, pttl,
                        cfg->interval_ms);

        mpx_stats_t st;
        if (mpx_stats(s->mpx, &st) == 0 &&
            (st.local_sparks != s->expected || st.queued != s->expected || st.pending))
            sg_mismatch(r,
                        "server %u stats: local_sparks %" PRIu64 ", queued %" PRIu64
                        ", pending %" PRIu64 "; expected %" PRIu64 ", %" PRIu64 ", 0",
                        i, st.local_sparks, st.queued, st.pending, s->expected,
                        s->expected);
    }

    /* 3. a sample of ids: through HMGET and through the library */
    size_t n = cfg->sparks < SG_SAMPLE ? (size_t)cfg->sparks : SG_SAMPLE;
    if (n > 0) {
        char(*ids)[SG_ID_CAP] = malloc(n * sizeof *ids);
        uint64_t *idx = malloc(n * sizeof *idx);
        const char **argv = malloc((n + 2) * sizeof *argv);
        size_t *lens = malloc((n + 2) * sizeof *lens);
        if (!ids || !idx || !argv || !lens) {
            sg_mismatch(r, "sample: out of memory");
            goto sample_done;
        }
        uint64_t state = cfg->seed ^ 0x5a17c0de5a17c0deull;
        for (size_t k = 0; k < n; k++) {
            state = sg_mix64(state);
            idx[k] = state % cfg->sparks;
            lens[k + 2] = sg_spark_id(cfg->seed, idx[k], ids[k]);
            argv[k + 2] = ids[k];
        }
        sg_key_sparks(r, key);
        argv[0] = "HMGET";
        lens[0] = 5;
        argv[1] = key;
        lens[1] = strlen(key);
        redisReply *rep = sg_check_ready(r, 1)
                              ? redisCommandArgv(r->rc, (int)(n + 2), argv, lens)
                              : NULL;
        if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != n) {
            sg_mismatch(r, "HMGET of %zu sample ids failed: %s", n,
                        rep ? (rep->str ? rep->str : "bad reply")
                            : (r->rc ? r->rc->errstr : "no connection"));
        } else {
            for (size_t k = 0; k < n; k++) {
                const sg_server_t *s = &r->servers[sg_server_of(r, idx[k])];
                redisReply *e = rep->element[k];
                if (e->type != REDIS_REPLY_STRING || strcmp(e->str, s->address) != 0)
                    sg_mismatch(r, "HGET %s %s = %s, expected %s", key, ids[k],
                                e->type == REDIS_REPLY_STRING ? e->str : "(nil)",
                                s->address);
            }
        }
        if (rep)
            freeReplyObject(rep);

        /* The same ids through the library, from server 0: its own sparks
         * come from memory, the others from Redis. */
        mpx_list_t *list = NULL;
        int rc = mpx_sparks(r->servers[0].mpx, (const void *const *)(argv + 2), lens + 2,
                            n, &list);
        if (rc != 0) {
            sg_api_error(r, "mpx_sparks (sample)", rc);
        } else if (!list || list->count != n) {
            sg_mismatch(r, "mpx_sparks returned %zu items for %zu ids",
                        list ? list->count : 0, n);
        } else {
            for (size_t k = 0; k < n; k++) {
                const sg_server_t *s = &r->servers[sg_server_of(r, idx[k])];
                if (!list->items[k] || strcmp(list->items[k], s->address) != 0)
                    sg_mismatch(r, "mpx_sparks: %s -> %s, expected %s", ids[k],
                                list->items[k] ? list->items[k] : "(unknown)",
                                s->address);
            }
        }
        mpx_list_free(list);
    sample_done:
        free(ids);
        free(idx);
        free(argv);
        free(lens);
    }

    /* 4. the library's view of the servers */
    mpx_list_t *servers = NULL;
    int rc = mpx_servers(r->servers[0].mpx, 1, &servers);
    if (rc != 0)
        sg_api_error(r, "mpx_servers", rc);
    else if (servers->count != cfg->servers)
        sg_mismatch(r, "mpx_servers(include_self) listed %zu servers, expected %u",
                    servers->count, cfg->servers);
    mpx_list_free(servers);

    r->m.verify_s = sg_now() - t0;
    sg_info(r, "verify: %" PRIu64 " mismatches in %.3f s", r->mismatches - before,
            r->m.verify_s);
}

static void sg_phase_stay(sg_run_t *r)
{
    r->m.reached = SG_PHASE_STAY;
    double t0 = sg_now();
    char key[SG_KEY_CAP];
    sg_key_sparks(r, key);
    for (uint32_t sec = 1; sec <= r->cfg.duration_s && !sg_stopping(r); sec++) {
        double until = t0 + sec;
        while (!sg_stopping(r)) {
            double left = until - sg_now();
            if (left <= 0)
                break;
            sg_sleep_ms(left > 0.1 ? 100 : (unsigned)(left * 1000) + 1);
        }
        if (r->cfg.quiet || sg_stopping(r))
            continue;
        char hbuf[24] = "?";
        if (sg_check_ready(r, 0)) {
            redisReply *rep = redisCommand(r->rc, "HLEN %s", key);
            if (rep && rep->type == REDIS_REPLY_INTEGER)
                snprintf(hbuf, sizeof hbuf, "%lld", rep->integer);
            if (rep)
                freeReplyObject(rep);
        }
        long long mem = sg_redis_used_memory(r);
        mpx_stats_t st;
        sg_stats_sum(r, &st);
        char mbuf[32];
        fprintf(stderr,
                "sparkgen: [%4" PRIu32 "/%" PRIu32 " s] sparks %s, local %" PRIu64
                ", used_memory %s, heartbeats %" PRIu64 ", errors %" PRIu64 "\n",
                sec, r->cfg.duration_s, hbuf, st.local_sparks,
                mem >= 0 ? sg_human_bytes((double)mem, mbuf, sizeof mbuf) : "?",
                st.heartbeats, sg_bg_errors(r) + atomic_load(&r->api_errors));
    }
    r->m.stay_s = sg_now() - t0;
    if (r->cfg.verify && r->cfg.duration_s > 0 && !sg_stopping(r)) {
        long long hlen = sg_int(r, "HLEN %s", key);
        if (hlen >= 0 && (uint64_t)hlen != r->cfg.sparks)
            sg_mismatch(r, "after %" PRIu32 " s: HLEN %s = %lld, expected %" PRIu64,
                        r->cfg.duration_s, key, hlen, r->cfg.sparks);
    }
}

static void sg_leftover_key(sg_run_t *r, const char *key)
{
    sg_mismatch(r, "key left after unregister: %s", key);
}

static void sg_phase_unregister(sg_run_t *r)
{
    r->m.reached = SG_PHASE_UNREGISTER;
    sg_stats_sum(r, &r->m.stats_end);
    double t0 = sg_now();
    for (unsigned i = 0; i < r->servers_created; i++) {
        sg_server_t *s = &r->servers[i];
        if (!s->registered)
            continue;
        int rc = mpx_unregister(s->mpx);
        s->registered = 0;
        if (rc != 0) {
            char what[128];
            snprintf(what, sizeof what, "mpx_unregister(%s)", s->address);
            sg_api_error(r, what, rc);
        }
    }
    r->m.unregister_s = sg_now() - t0;
    sg_info(r, "unregister: %u servers in %.3f s", r->servers_created, r->m.unregister_s);
    if (!r->cfg.verify)
        return;

    uint64_t before = r->mismatches;
    char key[SG_KEY_CAP], key2[SG_KEY_CAP];
    sg_key_sparks(r, key);
    long long hlen = sg_int(r, "HLEN %s", key);
    if (hlen > 0)
        sg_mismatch(r, "after unregister: HLEN %s = %lld, expected 0", key, hlen);
    sg_key_servers(r, key2);
    for (unsigned i = 0; i < r->servers_created; i++) {
        const sg_server_t *s = &r->servers[i];
        if (sg_int(r, "SISMEMBER %s %s", key2, s->address) > 0)
            sg_mismatch(r, "after unregister: %s still in %s", s->address, key2);
    }
    /* Nothing of ours may remain under the namespace (it was empty). */
    if (sg_scan_ns(r, sg_leftover_key) < 0)
        sg_mismatch(r, "after unregister: SCAN of the namespace failed");
    sg_info(r, "unregister: %" PRIu64 " mismatches after", r->mismatches - before);
}

/* ------------------------------------------------------------------------ */
/* Report                                                                   */

static void sg_report_print(FILE *f, sg_run_t *r, int status)
{
    const sg_config_t *cfg = &r->cfg;
    const sg_metrics_t *m = &r->m;
    char b1[32], b2[32];
    double n = (double)cfg->sparks;
    uint64_t bg = sg_bg_errors(r), api = atomic_load(&r->api_errors);

    fprintf(f, "metroplex-sparkgen report\n");
    fprintf(f, "  redis:                %s%s\n", r->url_shown,
            r->own_redis ? " (throwaway)" : "");
    fprintf(f, "  namespace:            %s\n", cfg->ns);
    fprintf(f, "  sparks:               %" PRIu64 "\n", cfg->sparks);
    fprintf(f, "  servers:              %" PRIu32 "\n", cfg->servers);
    fprintf(f, "  producer threads:     %" PRIu32 "\n", cfg->threads);
    char id0[SG_ID_CAP];
    sg_spark_id(cfg->seed, 0, id0);
    fprintf(f, "  seed:                 %" PRIu64 " (first spark id %s)\n", cfg->seed, id0);
    if (m->reached >= SG_PHASE_CONNECT) {
        fprintf(f, "  register:             %.3f s\n", m->register_s);
        fprintf(f, "  connect:              %.3f s, %.0f calls/s\n", m->connect_s,
                m->connect_s > 0 ? (double)m->connect_calls / m->connect_s : 0.0);
    }
    if (m->reached >= SG_PHASE_FLUSH) {
        double t = m->connect_s + m->flush_s;
        fprintf(f, "  flush:                %.3f s%s\n", m->flush_s,
                m->flushed ? "" : " (incomplete)");
        if (m->flushed)
            fprintf(f, "  committed:            %.0f sparks/s\n", t > 0 ? n / t : 0.0);
        fprintf(f, "  batches:              %" PRIu64 " (%" PRIu64 " retried)\n",
                m->stats.batches, m->stats.retries);
        if (m->redis_mem_before >= 0 && m->redis_mem_after >= 0) {
            double d = (double)(m->redis_mem_after - m->redis_mem_before);
            if (cfg->sparks)
                fprintf(f, "  redis memory:         %s, %.1f B/spark\n",
                        sg_human_bytes(d, b1, sizeof b1), d / n);
            else
                fprintf(f, "  redis memory:         %s\n", sg_human_bytes(d, b1, sizeof b1));
        }
        if (m->rss_before_kb >= 0 && m->rss_after_kb >= 0) {
            double d = (double)(m->rss_after_kb - m->rss_before_kb) * 1024.0;
            fprintf(f, "  process RSS:          %s", sg_human_bytes(d, b1, sizeof b1));
            if (cfg->sparks)
                fprintf(f, ", %.1f B/spark", d / n);
            fprintf(f, " (max RSS %s)\n",
                    sg_human_bytes((double)m->maxrss_kb * 1024.0, b2, sizeof b2));
        }
    }
    if (!cfg->verify)
        fprintf(f, "  verify:               skipped (--no-verify)\n");
    else if (m->reached >= SG_PHASE_VERIFY)
        fprintf(f, "  verify:               %.3f s\n", m->verify_s);
    if (m->reached >= SG_PHASE_STAY && cfg->duration_s)
        fprintf(f, "  stayed:               %.1f s\n", m->stay_s);
    if (m->reached >= SG_PHASE_UNREGISTER) {
        const mpx_stats_t *e = &m->stats_end;
        fprintf(f, "  library counters:     heartbeats %" PRIu64 ", batches %" PRIu64
                   " (%" PRIu64 " retried), redis errors %" PRIu64 ", reregistered %" PRIu64
                   ", reaped servers %" PRIu64 "\n",
                e->heartbeats, e->batches, e->retries, e->redis_errors, e->reregistered,
                e->reaped_servers);
        fprintf(f, "  unregister:           %.3f s\n", m->unregister_s);
    }
    fprintf(f, "  library errors:       %" PRIu64 " (%" PRIu64 " returned, %" PRIu64
               " background)\n",
            api + bg, api, bg);
    fprintf(f, "  mismatches:           %" PRIu64 "\n", r->mismatches);
    for (int i = 0; i < r->shown; i++)
        fprintf(f, "    - %s\n", r->shown_text[i]);
    if (r->mismatches > (uint64_t)r->shown)
        fprintf(f, "    ... and %" PRIu64 " more\n", r->mismatches - (uint64_t)r->shown);
    int sig = atomic_load(&r->stop_sig);
    fprintf(f, "  result:               %s\n",
            sig > 0 ? "INTERRUPTED" : status == SG_EXIT_OK ? "OK" : "FAILED");
}

/* ------------------------------------------------------------------------ */
/* Run and cleanup                                                          */

static int sg_run(sg_run_t *r)
{
    snprintf(r->nsc, sizeof r->nsc, "%s:", r->cfg.ns);
    sg_signals_early();
    int status = sg_phase_redis(r);
    /* Block signals now (Redis is up, or failed to start). */
    if (sg_signals_start(r) != 0 && !status)
        status = SG_EXIT_FAIL;
    if (status)
        return status;
    if (sg_stopping(r))
        return 128 + atomic_load(&r->stop_sig);

    status = sg_phase_register(r);
    if (!status && !sg_stopping(r))
        status = sg_phase_connect(r);
    if (!status && !sg_stopping(r))
        status = sg_phase_flush(r);
    if (!status && !sg_stopping(r) && r->cfg.verify)
        sg_phase_verify(r);
    if (!status && !sg_stopping(r))
        sg_phase_stay(r);
    if (!status && !sg_stopping(r)) {
        sg_phase_unregister(r);
        r->m.reached = SG_PHASE_DONE;
    }
    r->m.maxrss_kb = sg_maxrss_kb();

    int sig = atomic_load(&r->stop_sig);
    if (sig > 0)
        status = 128 + sig;
    else if (!status && (r->mismatches || atomic_load(&r->api_errors) || sg_bg_errors(r)))
        status = SG_EXIT_FAIL;
    if (r->servers_created)
        sg_report_print(stdout, r, status);
    fflush(stdout);
    return status;
}

static void sg_cleanup(sg_run_t *r)
{
    int interrupted = atomic_load(&r->stop_sig) > 0;
    for (unsigned i = 0; i < r->servers_created; i++) {
        sg_server_t *s = &r->servers[i];
        /* Leave an external Redis clean; a throwaway one goes anyway. */
        if (s->registered && !(interrupted && r->own_redis)) {
            int rc = mpx_unregister(s->mpx);
            if (rc != 0)
                sg_error("cleanup: mpx_unregister(%s): %s: %s", s->address,
                         mpx_err_name(rc), mpx_last_error());
        }
        s->registered = 0;
        mpx_destroy(s->mpx);
        s->mpx = NULL;
    }
    free(r->servers);
    r->servers = NULL;
    r->servers_created = 0;
    if (r->rc) {
        redisFree(r->rc);
        r->rc = NULL;
    }
    mpx__endpoint_free(&r->ep);
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
    atomic_init(&run.api_errors, 0);
    atomic_init(&run.stop_sig, 0);
    atomic_init(&run.producers_abort, 0);
    atomic_init(&run.sig_done, 0);
    atomic_init(&run.redis_pid, 0);
    run.m.redis_mem_before = run.m.redis_mem_after = -1;
    run.m.rss_before_kb = run.m.rss_after_kb = -1;
    int status = sg_run(&run);
    sg_cleanup(&run);
    return status;
}
