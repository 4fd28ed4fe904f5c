/*
 * chaos.c - metroplex-chaos: drive load while injecting faults, then verify
 * exactly what Redis holds.
 *
 * What it does
 *   Starts its own redis-server (tools/redis_proc, on a free loopback port,
 *   AOF on with appendfsync always unless --no-aof) and S simulated
 *   servers. Each server is a real registry (mpx_create + mpx_register
 *   http://127.0.0.1:<port>) in its own child process, forked from this
 *   single-threaded parent before the child starts any thread. Spark number
 *   i (0 <= i < N) has an id derived from the seed and i and belongs to slot
 *   i % S. A child connects every spark of its slot, then churns for
 *   --duration seconds: it toggles random sparks of its slot (connect if
 *   disconnected, disconnect if connected), at --rate operations per second
 *   for all children together. The child keeps the truth of its sparks as a
 *   bitmap in memory shared with the parent (MAP_SHARED), together with its
 *   counters (operations, on_error callbacks, mpx_stats), so the parent
 *   reads them even after it SIGKILLed the child.
 *
 *   Meanwhile the parent injects faults, one after the other, cycling
 *   through --chaos PLAN (targets and gaps from the seed):
 *     kill-redis-empty  SIGKILL redis-server, delete its files, restart it
 *                       empty after a short down time
 *     kill-redis-aof    SIGKILL redis-server, restart it with its AOF
 *                       (appendfsync always: nothing acknowledged is lost)
 *     pause-redis-long  SIGSTOP redis-server for longer than the command
 *                       timeout and the alive interval, then SIGCONT: every
 *                       alive key and lease expires at once
 *     client-kill       CLIENT KILL TYPE normal SKIPME yes (every
 *                       connection of the children, not the parent's)
 *     crash-server      SIGKILL a child (no unregister); the others must
 *                       reap it. A new process takes the slot after
 *                       --respawn-ms, alternately at the same address (its
 *                       register moves the old set aside while the same ids
 *                       come back) and at a new one (the old address must
 *                       vanish entirely)
 *     freeze-server     SIGSTOP a child until the others have reaped it
 *                       (it left the servers set), then SIGCONT: it must
 *                       notice and put itself and its sparks back
 *
 *   At the end every fault is over (Redis running, children thawed, crashed
 *   slots respawned); each child stops churning and flushes (mpx_flush, long
 *   timeout) and the parent polls Redis (at most 3 x interval + --settle s)
 *   until it holds exactly the expected registry, and holds it again after
 *   one more interval (stable):
 *     - HLEN NS sparks equals the number of connected sparks;
 *     - every id (all N) HMGET-checked: the address of its slot's live
 *       process when connected there, nil otherwise;
 *     - every id of every live slot SMISMEMBER-checked in its set, and SCARD
 *       of each set equals its count;
 *     - NS servers holds exactly the live addresses, each with an alive key
 *       and a lease with PTTL > 0;
 *     - SCAN MATCH NS* finds nothing else: no key of a crashed or abandoned
 *       address, no pending drain (NS drains), no aside set.
 *   A report goes to stdout (with --json one JSON object as the last line);
 *   progress and fault events go to stderr.
 *
 * Exit codes: 0 consistent (zero mismatches, no failure); 1 mismatches or
 * failures (a child died on its own, a flush never completed, an API call
 * failed, redis-server died); 2 usage or setup error; 128+signal when
 * interrupted. Every child and the redis-server are stopped by PID at the
 * end and on SIGINT/SIGTERM; only loopback is used.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "metroplex.h"
#include "redis_proc.h"

#define CH_NAME "metroplex-chaos"

enum { CH_EXIT_OK = 0, CH_EXIT_FAIL = 1, CH_EXIT_USAGE = 2 };

#define CH_SERVERS_MAX 64u
#define CH_SPARKS_MAX 10000000ull
#define CH_DURATION_MAX (24u * 3600u)
#define CH_BASE_PORT 10000u
#define CH_CHUNK 1000u      /* ids per HMGET / SMISMEMBER */
#define CH_SHOWN_MAX 20     /* mismatch descriptions kept */
#define CH_ID_CAP 48
#define CH_KEY_CAP 512
#define CH_READY_TIMEOUT_MS 60000
#define CH_FINAL_TIMEOUT_MS 120000
#define CH_FLUSH_BUDGET_MS 90000u
#define CH_SCAN_MAX_KEYS 20000000ull

/* ------------------------------------------------------------------------ */
/* Fault kinds                                                              */

enum {
    K_KILL_EMPTY = 0,
    K_KILL_AOF,
    K_PAUSE,
    K_CLIENT_KILL,
    K_CRASH,
    K_FREEZE,
    K_COUNT
};
static const char *const kind_names[K_COUNT] = {
    "kill-redis-empty", "kill-redis-aof", "pause-redis-long",
    "client-kill",      "crash-server",   "freeze-server",
};

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */

typedef struct config {
    uint64_t sparks;
    uint32_t servers;
    uint32_t duration_s;
    uint64_t seed;
    int plan[64];
    int plan_len;
    double rate; /* operations per second, all children; 0: unthrottled */
    uint32_t interval_ms, latency_ms, lease_ms;
    uint32_t command_timeout_ms, connect_timeout_ms;
    uint32_t gap_ms, down_ms, pause_ms, respawn_ms;
    uint32_t settle_s;
    int respawn;
    int aof;
    const char *ns;
    const char *redis_args[32];
    int n_redis_args;
    int json, quiet, verbose;
    int keep; /* keep the redis-server directory (AOF, log) for inspection */
} config_t;

static config_t cfg;

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */

static volatile sig_atomic_t g_stop; /* signal number once interrupted */
static double g_t0;                 /* start of the run (monotonic s) */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(double ms)
{
    if (ms <= 0)
        return;
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000.0);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000.0) * 1e6);
    nanosleep(&ts, NULL); /* an interrupting signal ends it early: callers poll g_stop */
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    if (cfg.quiet)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%7.2fs] %s\n", now_s() - g_t0, buf);
}

static void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errorf(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, CH_NAME ": error: %s\n", buf);
}

static uint64_t mix64(uint64_t x)
{
    /* splitmix64 */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

typedef struct rng {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r)
{
    r->s += 0x9e3779b97f4a7c15ull;
    uint64_t x = r->s;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rng_below(rng_t *r, uint64_t n)
{
    return n ? rng_next(r) % n : 0;
}

/* Uniform in [lo, hi]. */
static double rng_range(rng_t *r, double lo, double hi)
{
    return lo + (hi - lo) * ((double)(rng_next(r) >> 11) / 9007199254740992.0);
}

/* Spark id of index i: seed-dependent, unique by its decimal suffix. */
static size_t spark_id(uint64_t i, char *buf)
{
    uint64_t h = mix64(cfg.seed * 0x100000001b3ull ^ mix64(i));
    return (size_t)snprintf(buf, CH_ID_CAP, "%012" PRIx64 "-%" PRIu64, h >> 16, i);
}

/* Number of sparks of slot s (indices s, s+S, s+2S, ... < N). */
static uint64_t slot_count(uint32_t s)
{
    return cfg.sparks > s ? (cfg.sparks - s + cfg.servers - 1) / cfg.servers : 0;
}

static void make_address(uint32_t s, uint32_t addr_idx, char *buf, size_t cap)
{
    unsigned port = CH_BASE_PORT + s + cfg.servers * addr_idx;
    snprintf(buf, cap, "http://127.0.0.1:%u", port);
}

/* ------------------------------------------------------------------------ */
/* Memory shared with the children                                         */

/* Counters of one child process, written by it, read by the parent at any
 * time (also after a SIGKILL). */
typedef struct counters {
    _Atomic uint64_t ops;         /* mpx_connect + mpx_disconnect calls */
    _Atomic uint64_t connects;
    _Atomic uint64_t disconnects;
    _Atomic uint64_t on_error;    /* on_error callbacks */
    _Atomic uint64_t api_errors;  /* calls that returned an error */
    _Atomic uint64_t queued, committed, coalesced, pending, batches;
    _Atomic uint64_t redis_errors, retries, reregistered, heartbeats;
    _Atomic uint64_t reaped_servers, reaped_sparks, local_sparks;
    _Atomic uint64_t register_tries;
    _Atomic uint64_t rewritten;   /* sparks the library announced it rewrites (resync) */
} counters_t;

#define NCOUNTERS (sizeof(counters_t) / sizeof(_Atomic uint64_t))
static const char *const counter_names[NCOUNTERS] = {
    "ops",          "connects",     "disconnects",    "on_error",      "api_errors",
    "queued",       "committed",    "coalesced",      "pending",       "batches",
    "redis_errors", "retries",      "reregistered",   "heartbeats",    "reaped_servers",
    "reaped_sparks", "local_sparks", "register_tries", "rewritten",
};

typedef struct plain_counters {
    uint64_t v[NCOUNTERS];
} plain_counters_t;

static void counters_read(counters_t *c, plain_counters_t *out)
{
    _Atomic uint64_t *p = (_Atomic uint64_t *)c;
    for (size_t i = 0; i < NCOUNTERS; i++)
        out->v[i] = atomic_load_explicit(&p[i], memory_order_relaxed);
}

static void counters_zero(counters_t *c)
{
    _Atomic uint64_t *p = (_Atomic uint64_t *)c;
    for (size_t i = 0; i < NCOUNTERS; i++)
        atomic_store_explicit(&p[i], 0, memory_order_relaxed);
}

enum {
    C_OPS = 0, C_CONNECTS, C_DISCONNECTS, C_ON_ERROR, C_API_ERRORS, C_QUEUED, C_COMMITTED,
    C_COALESCED, C_PENDING, C_BATCHES, C_REDIS_ERRORS, C_RETRIES, C_REREGISTERED,
    C_HEARTBEATS, C_REAPED_SERVERS, C_REAPED_SPARKS, C_LOCAL, C_REGISTER_TRIES, C_REWRITTEN
};

/* Sparks rewritten after a loss: mpx_stats has no counter of its own for
 * them (committed also counts new changes, and queued counts calls, not
 * queue entries), so the children add up the counts the library announces
 * in its resync report through on_error ("... rewriting N local sparks"). */
static uint64_t rewritten_of(const plain_counters_t *c)
{
    return c->v[C_REWRITTEN];
}

typedef struct shared {
    size_t bitmap_bytes; /* per slot */
    counters_t *counters; /* [S] */
    uint8_t *bitmaps;     /* [S][bitmap_bytes] */
    size_t total;
    void *base;
} shared_t;

static shared_t shm;

static int shared_init(void)
{
    uint64_t per = (cfg.sparks + cfg.servers - 1) / cfg.servers;
    shm.bitmap_bytes = (size_t)((per + 7) / 8);
    size_t ctr = ((sizeof(counters_t) * cfg.servers) + 63) & ~(size_t)63;
    shm.total = ctr + shm.bitmap_bytes * cfg.servers + 64;
    shm.base = mmap(NULL, shm.total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm.base == MAP_FAILED) {
        errorf("mmap of %zu bytes: %s", shm.total, strerror(errno));
        return -1;
    }
    shm.counters = shm.base;
    shm.bitmaps = (uint8_t *)shm.base + ctr;
    return 0;
}

static uint8_t *slot_bitmap(uint32_t s)
{
    return shm.bitmaps + (size_t)s * shm.bitmap_bytes;
}

static int bit_get(const uint8_t *b, uint64_t j)
{
    return (b[j >> 3] >> (j & 7)) & 1;
}

static void bit_set(uint8_t *b, uint64_t j, int v)
{
    if (v)
        b[j >> 3] |= (uint8_t)(1u << (j & 7));
    else
        b[j >> 3] &= (uint8_t)~(1u << (j & 7));
}

/* ------------------------------------------------------------------------ */
/* The child: one simulated server                                         */

typedef struct child {
    uint32_t slot, gen;
    char address[64];
    int cmd_fd, ans_fd;
    mpx_t *mpx;
    counters_t *ctr;
    uint8_t *bits;
    uint64_t count;
    atomic_int stop_churn;
    pthread_t churn;
} child_t;

static void child_publish_stats(child_t *c)
{
    mpx_stats_t st;
    if (mpx_stats(c->mpx, &st) != 0)
        return;
#define PUT(field, val) atomic_store_explicit(&c->ctr->field, (val), memory_order_relaxed)
    PUT(queued, st.queued);
    PUT(committed, st.committed);
    PUT(coalesced, st.coalesced);
    PUT(pending, st.pending);
    PUT(batches, st.batches);
    PUT(redis_errors, st.redis_errors);
    PUT(retries, st.retries);
    PUT(reregistered, st.reregistered);
    PUT(heartbeats, st.heartbeats);
    PUT(reaped_servers, st.reaped_servers);
    PUT(reaped_sparks, st.reaped_sparks);
    PUT(local_sparks, st.local_sparks);
#undef PUT
}

static void child_on_error(mpx_t *mpx, int err, const char *message, void *data)
{
    (void)mpx;
    child_t *c = data;
    atomic_fetch_add_explicit(&c->ctr->on_error, 1, memory_order_relaxed);
    const char *rw = message ? strstr(message, "rewriting ") : NULL;
    unsigned long long n;
    if (rw && sscanf(rw, "rewriting %llu local sparks", &n) == 1)
        atomic_fetch_add_explicit(&c->ctr->rewritten, (uint64_t)n, memory_order_relaxed);
    if (cfg.verbose)
        fprintf(stderr, "[%7.2fs] server %u.%u (%s): on_error %s: %s\n", now_s() - g_t0, c->slot,
                c->gen, c->address, mpx_err_name(err), message);
}

static int child_toggle(child_t *c, uint64_t j)
{
    char id[CH_ID_CAP];
    uint64_t i = c->slot + j * cfg.servers;
    size_t len = spark_id(i, id);
    int on = bit_get(c->bits, j);
    int rc = on ? mpx_disconnect(c->mpx, id, len) : mpx_connect(c->mpx, id, len);
    if (rc) {
        atomic_fetch_add_explicit(&c->ctr->api_errors, 1, memory_order_relaxed);
        if (atomic_load_explicit(&c->ctr->api_errors, memory_order_relaxed) <= 5)
            fprintf(stderr, CH_NAME ": server %u: mpx_%s(%s): %s (%s)\n", c->slot,
                    on ? "disconnect" : "connect", id, mpx_err_name(rc), mpx_last_error());
        return rc;
    }
    bit_set(c->bits, j, !on);
    atomic_fetch_add_explicit(on ? &c->ctr->disconnects : &c->ctr->connects, 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&c->ctr->ops, 1, memory_order_relaxed);
    return 0;
}

static void *child_churn_main(void *arg)
{
    child_t *c = arg;
    rng_t rng = {mix64(cfg.seed ^ ((uint64_t)c->slot << 32) ^ ((uint64_t)c->gen << 48) ^ 0xc4a05ull)};
    double rate = cfg.rate > 0 ? cfg.rate / cfg.servers : 0;
    double t0 = now_s(), last_pub = t0;
    double credit_t = t0; /* ops allowed = (now - credit_t) * rate - done */
    uint64_t done = 0;
    if (c->count == 0) {
        while (!atomic_load(&c->stop_churn))
            sleep_ms(10);
        return NULL;
    }
    while (!atomic_load_explicit(&c->stop_churn, memory_order_relaxed)) {
        double t = now_s();
        uint64_t burst = 256;
        if (rate > 0) {
            double allowed = (t - credit_t) * rate - (double)done;
            if (allowed > rate * 0.05) { /* after a stall (SIGSTOP): no huge burst */
                credit_t = t - ((double)done + rate * 0.05) / rate;
                allowed = rate * 0.05;
            }
            if (allowed < 1) {
                sleep_ms(1);
                continue;
            }
            burst = allowed < 256 ? (uint64_t)allowed : 256;
        }
        for (uint64_t k = 0; k < burst; k++)
            child_toggle(c, rng_below(&rng, c->count));
        done += burst;
        if (t - last_pub >= 0.1) {
            child_publish_stats(c);
            last_pub = t;
        }
    }
    return NULL;
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static void child_say(child_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void child_say(child_t *c, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write_all(c->ans_fd, buf, (size_t)n) != 0)
        _exit(3); /* the parent is gone */
}

/* One command line from the parent; NULL at EOF (the parent is gone). */
static char *child_read_line(child_t *c, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        char ch;
        ssize_t r = read(c->cmd_fd, &ch, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return NULL;
        if (ch == '\n')
            break;
        buf[n++] = ch;
    }
    buf[n] = 0;
    return buf;
}

static void child_close_fds(int keep1, int keep2)
{
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = 3; fd < max; fd++)
        if (fd != keep1 && fd != keep2)
            close(fd);
}

static void __attribute__((noreturn))
child_main(uint32_t slot, uint32_t gen, const char *address, const char *url, int cmd_fd,
           int ans_fd, pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(4);
    signal(SIGINT, SIG_IGN); /* a terminal ^C is for the parent; it stops us by PID */
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    child_close_fds(cmd_fd, ans_fd);

    static child_t cs;
    child_t *c = &cs;
    memset(c, 0, sizeof *c);
    c->slot = slot;
    c->gen = gen;
    snprintf(c->address, sizeof c->address, "%s", address);
    c->cmd_fd = cmd_fd;
    c->ans_fd = ans_fd;
    c->ctr = &shm.counters[slot];
    c->bits = slot_bitmap(slot);
    c->count = slot_count(slot);

    mpx_options_t o;
    mpx_options_init(&o);
    o.redis_url = url;
    o.connect_timeout_ms = cfg.connect_timeout_ms;
    o.command_timeout_ms = cfg.command_timeout_ms;
    o.ns = cfg.ns;
    o.interval_ms = cfg.interval_ms;
    o.latency_ms = cfg.latency_ms;
    o.lease_ms = cfg.lease_ms;
    o.size_hint = (size_t)c->count;
    o.on_error = child_on_error;
    o.on_error_data = c;
    int rc = mpx_create(&o, &c->mpx);
    if (rc) {
        child_say(c, "fail mpx_create: %s (%s)", mpx_err_name(rc), mpx_last_error());
        _exit(5);
    }
    /* Connect every spark of the slot before registering: they wait in the
     * queue and are written once registered. */
    for (uint64_t j = 0; j < c->count; j++) {
        bit_set(c->bits, j, 0);
        child_toggle(c, j);
    }
    double deadline = now_s() + 30.0 + cfg.lease_ms / 1000.0;
    for (;;) {
        atomic_fetch_add_explicit(&c->ctr->register_tries, 1, memory_order_relaxed);
        rc = mpx_register(c->mpx, address);
        if (rc == 0)
            break;
        if (rc == MPX_ECONN || rc == MPX_ETIMEDOUT)
            break; /* kept: the heartbeat thread registers in the background */
        if (rc != MPX_EADDRINUSE || now_s() > deadline) {
            child_say(c, "fail mpx_register(%s): %s (%s)", address, mpx_err_name(rc),
                      mpx_last_error());
            _exit(6);
        }
        sleep_ms(50); /* the crashed predecessor's lease expires within lease_ms */
    }
    child_publish_stats(c);
    if (pthread_create(&c->churn, NULL, child_churn_main, c) != 0) {
        child_say(c, "fail pthread_create");
        _exit(7);
    }
    child_say(c, "ready %s", rc == 0 ? "registered" : mpx_err_name(rc));

    char line[256];
    while (child_read_line(c, line, sizeof line)) {
        if (strcmp(line, "final") == 0) {
            atomic_store(&c->stop_churn, 1);
            pthread_join(c->churn, NULL);
            double t = now_s(), end = t + CH_FLUSH_BUDGET_MS / 1000.0;
            int frc;
            do {
                frc = mpx_flush(c->mpx, 2000);
                if (frc == MPX_ESTATE)
                    sleep_ms(100); /* registering in the background */
            } while (frc != 0 && now_s() < end);
            child_publish_stats(c);
            child_say(c, "final %d %.3f %s", frc, now_s() - t,
                      frc ? mpx_last_error() : "flushed");
        } else if (strcmp(line, "stats") == 0) {
            child_publish_stats(c);
            child_say(c, "stats");
        } else if (strcmp(line, "exit") == 0) {
            break;
        }
    }
    /* No unregister, no destroy: the parent has verified already; its
     * redis-server is thrown away. */
    _exit(0);
}

/* ------------------------------------------------------------------------ */
/* The parent                                                               */

enum { SLOT_LIVE = 0, SLOT_DEAD };

typedef struct slot {
    int state;
    pid_t pid;
    int cmd_fd, ans_fd;
    uint32_t gen, addr_idx;
    char address[64];
    int frozen;
    double respawn_at; /* > 0: respawn due at this time */
    char lbuf[1024];   /* answer line buffer */
    size_t llen;
    uint64_t expected; /* connected sparks at the end */
} slot_t;

typedef struct run {
    redis_proc_t rp;
    int redis_up;
    int redis_paused;
    const char *redis_extra[48];
    redisContext *rc; /* check connection */
    slot_t slots[CH_SERVERS_MAX];
    plain_counters_t retired; /* counters of processes that were crashed */
    rng_t rng;
    /* results */
    uint64_t faults[K_COUNT];
    uint64_t skipped[K_COUNT];
    uint64_t clients_killed;
    uint64_t respawns, respawn_same, respawn_new;
    uint64_t frozen_reaped, frozen_not_reaped;
    double freeze_reap_ms_max;
    uint64_t failures;
    char failure_shown[8][256];
    uint64_t mismatches;
    char shown[CH_SHOWN_MAX][320];
    uint64_t flaps;
    double churn_s, settle_s, stable_s, flush_s_max;
    int consistent;
    uint64_t final_sparks;
} run_t;

static run_t R;

static void failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void failure(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (R.failures < 8)
        snprintf(R.failure_shown[R.failures], sizeof R.failure_shown[0], "%s", buf);
    R.failures++;
    fprintf(stderr, CH_NAME ": FAILURE: %s\n", buf);
}

static void on_signal(int sig)
{
    if (g_stop) {
        /* Second signal: go now; children die with us (PDEATHSIG), Redis
         * gets SIGTERM from its PDEATHSIG. */
        _exit(128 + sig);
    }
    g_stop = sig;
}

/* ---- the check connection ------------------------------------------------ */

static void check_close(void)
{
    if (R.rc)
        redisFree(R.rc);
    R.rc = NULL;
}

static int check_connect(void)
{
    if (R.rc && !R.rc->err)
        return 0;
    check_close();
    struct timeval tv = {5, 0};
    R.rc = redisConnectWithTimeout("127.0.0.1", R.rp.port, tv);
    if (!R.rc || R.rc->err) {
        check_close();
        return -1;
    }
    struct timeval ct = {10, 0};
    redisSetTimeout(R.rc, ct);
    redisReply *r = redisCommand(R.rc, "CLIENT SETNAME metroplex-chaos-check");
    if (r)
        freeReplyObject(r);
    return 0;
}

/* A command on the check connection, reconnecting once. NULL on failure. */
static redisReply *check_cmd(const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (check_connect() != 0)
            continue;
        va_list ap;
        va_start(ap, fmt);
        redisReply *r = redisvCommand(R.rc, fmt, ap);
        va_end(ap);
        if (r)
            return r;
        check_close();
    }
    return NULL;
}

static redisReply *check_argv(int argc, const char **argv, const size_t *lens)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (check_connect() != 0)
            continue;
        redisReply *r = redisCommandArgv(R.rc, argc, argv, lens);
        if (r)
            return r;
        check_close();
    }
    return NULL;
}

/* ---- the redis-server --------------------------------------------------- */

static void redis_args_init(void)
{
    int n = 0;
    if (cfg.aof) {
        R.redis_extra[n++] = "--appendonly";
        R.redis_extra[n++] = "yes";
        R.redis_extra[n++] = "--appendfsync";
        R.redis_extra[n++] = "always";
    }
    for (int i = 0; i < cfg.n_redis_args && n < 46; i++)
        R.redis_extra[n++] = cfg.redis_args[i];
    R.redis_extra[n] = NULL;
}

/* Remove a file or a directory tree inside our redis directory. */
static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                    continue;
                char sub[1024];
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                remove_tree(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void redis_wipe_files(void)
{
    static const char *const names[] = {"appendonlydir", "appendonly.aof", "dump.rdb"};
    if (!strstr(R.rp.dir, "mpx-redis-"))
        return; /* only ever our own mkdtemp directory */
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", R.rp.dir, names[i]);
        remove_tree(p);
    }
}

static void redis_resume_if_paused(void)
{
    if (R.redis_paused && R.rp.pid > 0)
        kill(R.rp.pid, SIGCONT);
    R.redis_paused = 0;
}

/* ---- children ------------------------------------------------------------ */

static int slot_spawn(uint32_t s)
{
    slot_t *sl = &R.slots[s];
    int cmd[2], ans[2];
    if (pipe2(cmd, O_CLOEXEC) != 0)
        return -1;
    if (pipe2(ans, O_CLOEXEC) != 0) {
        close(cmd[0]);
        close(cmd[1]);
        return -1;
    }
    counters_zero(&shm.counters[s]);
    memset(slot_bitmap(s), 0, shm.bitmap_bytes);
    make_address(s, sl->addr_idx, sl->address, sizeof sl->address);
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(cmd[0]);
        close(cmd[1]);
        close(ans[0]);
        close(ans[1]);
        return -1;
    }
    if (pid == 0) {
        close(cmd[1]);
        close(ans[0]);
        child_main(s, sl->gen, sl->address, R.rp.url, cmd[0], ans[1], parent);
    }
    close(cmd[0]);
    close(ans[1]);
    sl->pid = pid;
    sl->cmd_fd = cmd[1];
    sl->ans_fd = ans[0];
    sl->llen = 0;
    sl->frozen = 0;
    sl->state = SLOT_LIVE;
    sl->respawn_at = 0;
    return 0;
}

/* Read one answer line of a child, waiting at most timeout_ms. Returns the
 * line (in the slot's buffer, valid until the next read) or NULL. */
static const char *slot_read(slot_t *sl, int timeout_ms, const char **why)
{
    double end = now_s() + timeout_ms / 1000.0;
    for (;;) {
        char *nl = memchr(sl->lbuf, '\n', sl->llen);
        if (nl) {
            static char line[sizeof sl->lbuf];
            size_t n = (size_t)(nl - sl->lbuf);
            memcpy(line, sl->lbuf, n);
            line[n] = 0;
            memmove(sl->lbuf, nl + 1, sl->llen - n - 1);
            sl->llen -= n + 1;
            return line;
        }
        if (sl->llen >= sizeof sl->lbuf - 1) {
            *why = "answer too long";
            return NULL;
        }
        double left = end - now_s();
        if (left <= 0) {
            *why = "timed out";
            return NULL;
        }
        if (g_stop) {
            *why = "interrupted";
            return NULL;
        }
        struct pollfd p = {sl->ans_fd, POLLIN, 0};
        int pr = poll(&p, 1, left > 0.2 ? 200 : (int)(left * 1000) + 1);
        if (pr < 0 && errno != EINTR) {
            *why = "poll failed";
            return NULL;
        }
        if (pr <= 0)
            continue;
        ssize_t r = read(sl->ans_fd, sl->lbuf + sl->llen, sizeof sl->lbuf - 1 - sl->llen);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            *why = "the child closed its pipe (exited)";
            return NULL;
        }
        sl->llen += (size_t)r;
    }
}

static int slot_send(slot_t *sl, const char *cmd)
{
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%s\n", cmd);
    return write_all(sl->cmd_fd, buf, (size_t)n);
}

static void describe_status(int ws, char *buf, size_t cap)
{
    if (WIFEXITED(ws))
        snprintf(buf, cap, "exited with status %d", WEXITSTATUS(ws));
    else if (WIFSIGNALED(ws))
        snprintf(buf, cap, "killed by signal %d (%s)", WTERMSIG(ws), strsignal(WTERMSIG(ws)));
    else
        snprintf(buf, cap, "status 0x%x", ws);
}

/* Close a slot's pipes, reap its process (SIGKILL first if `kill_it`) and
 * fold its counters into the retired totals. */
static void slot_retire(uint32_t s, int kill_it)
{
    slot_t *sl = &R.slots[s];
    if (sl->pid > 0) {
        if (kill_it) {
            kill(sl->pid, SIGKILL);
            if (sl->frozen)
                kill(sl->pid, SIGCONT);
        }
        int ws;
        while (waitpid(sl->pid, &ws, 0) < 0 && errno == EINTR)
            ;
        sl->pid = 0;
    }
    if (sl->cmd_fd > 0)
        close(sl->cmd_fd);
    if (sl->ans_fd > 0)
        close(sl->ans_fd);
    sl->cmd_fd = sl->ans_fd = -1;
    sl->frozen = 0;
    plain_counters_t c;
    counters_read(&shm.counters[s], &c);
    for (size_t i = 0; i < NCOUNTERS; i++)
        R.retired.v[i] += c.v[i];
    counters_zero(&shm.counters[s]);
    sl->state = SLOT_DEAD;
}

/* Wait for a (re)spawned child's "ready". */
static int slot_wait_ready(uint32_t s)
{
    slot_t *sl = &R.slots[s];
    const char *why = NULL;
    const char *line = slot_read(sl, CH_READY_TIMEOUT_MS, &why);
    if (!line) {
        failure("server %u (%s, pid %d) did not get ready: %s", s, sl->address, (int)sl->pid,
                why);
        return -1;
    }
    if (strncmp(line, "ready", 5) != 0) {
        failure("server %u (%s): %s", s, sl->address, line);
        return -1;
    }
    if (strcmp(line, "ready registered") != 0)
        logf_("server %u (%s): %s (registration continues in the background)", s,
              sl->address, line);
    return 0;
}

static unsigned live_count(void)
{
    unsigned n = 0;
    for (uint32_t s = 0; s < cfg.servers; s++)
        n += R.slots[s].state == SLOT_LIVE;
    return n;
}

/* Children or Redis that died on their own are failures. */
static void health_check(void)
{
    for (uint32_t s = 0; s < cfg.servers; s++) {
        slot_t *sl = &R.slots[s];
        if (sl->state != SLOT_LIVE || sl->pid <= 0)
            continue;
        int ws;
        pid_t r = waitpid(sl->pid, &ws, WNOHANG);
        if (r == sl->pid) {
            char how[96];
            describe_status(ws, how, sizeof how);
            sl->pid = 0;
            /* Its last words, if any. */
            const char *why = NULL;
            const char *line = slot_read(sl, 10, &why);
            failure("server %u (%s) died on its own: %s%s%s", s, sl->address, how,
                    line ? ": " : "", line ? line : "");
            slot_retire(s, 0);
        }
    }
    if (R.redis_up && R.rp.pid > 0) {
        int ws;
        if (waitpid(R.rp.pid, &ws, WNOHANG) == R.rp.pid) {
            char how[96];
            describe_status(ws, how, sizeof how);
            failure("redis-server (pid %d) died on its own: %s (log: %s/redis.log)",
                    (int)R.rp.pid, how, R.rp.dir);
            R.rp.pid = 0;
            R.redis_up = 0;
        }
    }
}

static void respawn_due(int force)
{
    double t = now_s();
    for (uint32_t s = 0; s < cfg.servers; s++) {
        slot_t *sl = &R.slots[s];
        if (sl->state != SLOT_DEAD || sl->respawn_at <= 0 || (!force && t < sl->respawn_at))
            continue;
        sl->gen++;
        int same = sl->gen % 2 == 1; /* gen 1: same address, gen 2: a new one, ... */
        if (!same && CH_BASE_PORT + s + cfg.servers * (sl->addr_idx + 1) <= 65535)
            sl->addr_idx++;
        char old[64];
        snprintf(old, sizeof old, "%s", sl->address);
        if (slot_spawn(s) != 0) {
            failure("cannot fork server %u: %s", s, strerror(errno));
            sl->respawn_at = 0;
            continue;
        }
        if (slot_wait_ready(s) != 0)
            continue;
        R.respawns++;
        if (same)
            R.respawn_same++;
        else
            R.respawn_new++;
        logf_("respawn: server %u generation %u (pid %d) at %s (%s)", s, sl->gen, (int)sl->pid,
              sl->address, same ? "same address" : "new address");
    }
}

/* Sleep ms while keeping an eye on everything; returns early on a signal. */
static void tend(double ms)
{
    double end = now_s() + ms / 1000.0;
    while (!g_stop) {
        health_check();
        respawn_due(0);
        double left = end - now_s();
        if (left <= 0)
            break;
        sleep_ms(left * 1000 < 50 ? left * 1000 : 50);
    }
}

static uint64_t ops_total(void)
{
    uint64_t n = R.retired.v[C_OPS];
    for (uint32_t s = 0; s < cfg.servers; s++)
        n += atomic_load_explicit(&shm.counters[s].ops, memory_order_relaxed);
    return n;
}

/* ---- faults -------------------------------------------------------------- */

static int pick_live(int for_freeze)
{
    unsigned live = live_count();
    if (live < 2)
        return -1; /* someone must be left to reap */
    (void)for_freeze;
    uint64_t k = rng_below(&R.rng, live);
    for (uint32_t s = 0; s < cfg.servers; s++)
        if (R.slots[s].state == SLOT_LIVE && k-- == 0)
            return (int)s;
    return -1;
}

static int fault_kill_redis(int keep_data)
{
    double down = rng_range(&R.rng, cfg.down_ms * 0.5, cfg.down_ms * 1.5);
    pid_t old = R.rp.pid;
    check_close();
    redis_proc_kill(&R.rp);
    R.redis_up = 0;
    if (!keep_data)
        redis_wipe_files();
    tend(down);
    double t = now_s();
    if (redis_proc_restart(&R.rp, R.redis_extra) != 0) {
        failure("could not restart redis-server (log: %s/redis.log)", R.rp.dir);
        return -1;
    }
    R.redis_up = 1;
    logf_("%s: redis-server pid %d killed, down %.0f ms, restarted %s as pid %d in %.0f ms",
          kind_names[keep_data ? K_KILL_AOF : K_KILL_EMPTY], (int)old, down,
          keep_data ? "with its AOF" : "empty", (int)R.rp.pid, (now_s() - t) * 1000);
    if (keep_data) {
        redisReply *r = check_cmd("DBSIZE");
        if (r && r->type == REDIS_REPLY_INTEGER)
            logf_("  %lld keys loaded back", r->integer);
        if (r)
            freeReplyObject(r);
    }
    return 0;
}

static int fault_pause_redis(void)
{
    double ms = rng_range(&R.rng, cfg.pause_ms, cfg.pause_ms * 1.3);
    check_close();
    if (kill(R.rp.pid, SIGSTOP) != 0)
        return -1;
    R.redis_paused = 1;
    logf_("pause-redis-long: redis-server pid %d stopped for %.0f ms", (int)R.rp.pid, ms);
    tend(ms);
    redis_resume_if_paused();
    return 0;
}

static int fault_client_kill(void)
{
    redisReply *r = check_cmd("CLIENT KILL TYPE normal SKIPME yes");
    if (!r) {
        failure("CLIENT KILL: no answer from redis-server");
        return -1;
    }
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (n < 0)
        logf_("client-kill: unexpected answer (%s)", r->type == REDIS_REPLY_ERROR ? r->str : "?");
    else
        R.clients_killed += (uint64_t)n;
    logf_("client-kill: %lld connections dropped", n);
    freeReplyObject(r);
    return n < 0 ? -1 : 0;
}

static int fault_crash(void)
{
    int s = pick_live(0);
    if (s < 0)
        return 1;
    slot_t *sl = &R.slots[s];
    pid_t pid = sl->pid;
    slot_retire((uint32_t)s, 1);
    if (cfg.respawn)
        sl->respawn_at = now_s() + rng_range(&R.rng, 0, 2.0 * cfg.respawn_ms) / 1000.0;
    logf_("crash-server: server %u (%s, pid %d) SIGKILLed%s", s, sl->address, (int)pid,
          cfg.respawn ? ", respawn scheduled" : "");
    return 0;
}

static int in_servers_set(const char *address)
{
    redisReply *r = check_cmd("SISMEMBER %s:servers %s", cfg.ns, address);
    int v = r && r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
    if (r)
        freeReplyObject(r);
    return v;
}

static int fault_freeze(void)
{
    int s = pick_live(1);
    if (s < 0)
        return 1;
    slot_t *sl = &R.slots[s];
    if (kill(sl->pid, SIGSTOP) != 0)
        return -1;
    sl->frozen = 1;
    double t = now_s();
    double max_s = (3.0 * cfg.interval_ms + 2000) / 1000.0;
    int reaped = 0;
    while (!g_stop && now_s() - t < max_s) {
        tend(100);
        if (in_servers_set(sl->address) == 0) {
            reaped = 1;
            break;
        }
    }
    double reap_ms = (now_s() - t) * 1000;
    /* Stay frozen a little longer: the drain of its sparks runs meanwhile. */
    tend(rng_range(&R.rng, 0, cfg.interval_ms / 2.0));
    if (sl->pid > 0)
        kill(sl->pid, SIGCONT);
    sl->frozen = 0;
    if (reaped) {
        R.frozen_reaped++;
        if (reap_ms > R.freeze_reap_ms_max)
            R.freeze_reap_ms_max = reap_ms;
    } else {
        R.frozen_not_reaped++;
    }
    logf_("freeze-server: server %u (%s, pid %d) stopped for %.0f ms; %s", s, sl->address,
          (int)sl->pid, (now_s() - t) * 1000,
          reaped ? "reaped by the others meanwhile" : "NOT reaped by the others");
    if (!reaped)
        failure("freeze-server: server %u (%s) frozen %.0f ms was not reaped by the others", s,
                sl->address, reap_ms);
    return 0;
}

/* Rough duration of a fault, to keep the last one inside --duration. */
static double fault_estimate_ms(int k)
{
    switch (k) {
    case K_KILL_EMPTY:
    case K_KILL_AOF:
        return cfg.down_ms * 1.5 + 1000;
    case K_PAUSE:
        return cfg.pause_ms * 1.3 + 200;
    case K_FREEZE:
        return 2.0 * cfg.interval_ms + cfg.interval_ms / 2.0 + 500;
    default:
        return 100;
    }
}

static int fault_inject(int k)
{
    switch (k) {
    case K_KILL_EMPTY:
        return fault_kill_redis(0);
    case K_KILL_AOF:
        return fault_kill_redis(1);
    case K_PAUSE:
        return fault_pause_redis();
    case K_CLIENT_KILL:
        return fault_client_kill();
    case K_CRASH:
        return fault_crash();
    case K_FREEZE:
        return fault_freeze();
    }
    return -1;
}

/* ---- verification -------------------------------------------------------- */

typedef struct vstate {
    uint64_t mismatches;
    char shown[CH_SHOWN_MAX][320];
} vstate_t;

static void mismatch(vstate_t *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mismatch(vstate_t *v, const char *fmt, ...)
{
    if (v->mismatches < CH_SHOWN_MAX) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->shown[v->mismatches], sizeof v->shown[0], fmt, ap);
        va_end(ap);
    }
    v->mismatches++;
}

static long long int_reply(redisReply *r)
{
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : LLONG_MIN;
    if (r)
        freeReplyObject(r);
    return v;
}

static int is_live_address(const char *a, size_t len)
{
    for (uint32_t s = 0; s < cfg.servers; s++)
        if (R.slots[s].state == SLOT_LIVE && strlen(R.slots[s].address) == len &&
            memcmp(R.slots[s].address, a, len) == 0)
            return 1;
    return 0;
}

/* Is `key` one the final registry may hold? */
static int key_allowed(const char *key, size_t len)
{
    size_t nl = strlen(cfg.ns);
    if (len <= nl + 1 || memcmp(key, cfg.ns, nl) != 0 || key[nl] != ':')
        return 0;
    const char *k = key + nl + 1;
    size_t kl = len - nl - 1;
    if ((kl == 6 && !memcmp(k, "sparks", 6)) || (kl == 7 && !memcmp(k, "servers", 7)))
        return 1;
    if (is_live_address(k, kl))
        return 1;
    if (kl > 7 && !memcmp(k + kl - 7, ":sparks", 7) && is_live_address(k, kl - 7))
        return 1;
    if (kl > 6 && !memcmp(k + kl - 6, ":lease", 6) && is_live_address(k, kl - 6))
        return 1;
    return 0;
}

/* One full check of Redis against the expected registry. Returns the number
 * of mismatches (in v). */
static uint64_t verify(vstate_t *v)
{
    memset(v, 0, sizeof *v);
    char key[CH_KEY_CAP];
    uint64_t total = 0;
    for (uint32_t s = 0; s < cfg.servers; s++)
        if (R.slots[s].state == SLOT_LIVE)
            total += R.slots[s].expected;

    snprintf(key, sizeof key, "%s:sparks", cfg.ns);
    long long hlen = int_reply(check_cmd("HLEN %s", key));
    if (hlen == LLONG_MIN) {
        mismatch(v, "HLEN %s: no answer", key);
        return v->mismatches;
    }
    if ((uint64_t)hlen != total)
        mismatch(v, "HLEN %s is %lld, expected %" PRIu64, key, hlen, total);

    /* The servers set: exactly the live addresses. */
    redisReply *r = check_cmd("SMEMBERS %s:servers", cfg.ns);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        mismatch(v, "SMEMBERS %s:servers: bad answer", cfg.ns);
    } else {
        unsigned found = 0;
        for (size_t i = 0; i < r->elements; i++) {
            if (is_live_address(r->element[i]->str, r->element[i]->len))
                found++;
            else
                mismatch(v, "servers set holds %s, not a live server", r->element[i]->str);
        }
        if (found != live_count())
            mismatch(v, "servers set holds %u of the %u live servers", found, live_count());
    }
    if (r)
        freeReplyObject(r);

    for (uint32_t s = 0; s < cfg.servers; s++) {
        slot_t *sl = &R.slots[s];
        if (sl->state != SLOT_LIVE)
            continue;
        long long sc = int_reply(check_cmd("SCARD %s:%s:sparks", cfg.ns, sl->address));
        if (sc < 0 || (uint64_t)sc != sl->expected)
            mismatch(v, "SCARD %s:%s:sparks is %lld, expected %" PRIu64, cfg.ns, sl->address, sc,
                     sl->expected);
        long long pa = int_reply(check_cmd("PTTL %s:%s", cfg.ns, sl->address));
        if (pa <= 0)
            mismatch(v, "alive key of %s: PTTL %lld", sl->address, pa);
        long long pl = int_reply(check_cmd("PTTL %s:%s:lease", cfg.ns, sl->address));
        if (pl <= 0)
            mismatch(v, "lease of %s: PTTL %lld", sl->address, pl);
    }

    /* Every id: HMGET, in chunks. */
    static const char *argv[CH_CHUNK + 2];
    static size_t lens[CH_CHUNK + 2];
    static char ids[CH_CHUNK][CH_ID_CAP];
    for (uint64_t base = 0; base < cfg.sparks; base += CH_CHUNK) {
        uint64_t n = cfg.sparks - base < CH_CHUNK ? cfg.sparks - base : CH_CHUNK;
        argv[0] = "HMGET";
        lens[0] = 5;
        argv[1] = key;
        lens[1] = strlen(key);
        for (uint64_t k = 0; k < n; k++) {
            lens[k + 2] = spark_id(base + k, ids[k]);
            argv[k + 2] = ids[k];
        }
        r = check_argv((int)n + 2, argv, lens);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != n) {
            mismatch(v, "HMGET: bad answer");
            if (r)
                freeReplyObject(r);
            return v->mismatches;
        }
        for (uint64_t k = 0; k < n; k++) {
            uint64_t i = base + k;
            uint32_t s = (uint32_t)(i % cfg.servers);
            slot_t *sl = &R.slots[s];
            int want = sl->state == SLOT_LIVE && bit_get(slot_bitmap(s), i / cfg.servers);
            redisReply *e = r->element[k];
            int got = e->type == REDIS_REPLY_STRING;
            if (want && !got)
                mismatch(v, "spark %s (server %u) missing from the hash, expected %s", ids[k], s,
                         sl->address);
            else if (!want && got)
                mismatch(v, "spark %s (server %u%s) maps to %s, expected nothing", ids[k], s,
                         sl->state == SLOT_LIVE ? ", disconnected" : ", dead", e->str);
            else if (want && got && strcmp(e->str, sl->address) != 0)
                mismatch(v, "spark %s maps to %s, expected %s", ids[k], e->str, sl->address);
        }
        freeReplyObject(r);
    }

    /* Every id of every live server: SMISMEMBER in its set. */
    char skey[CH_KEY_CAP];
    for (uint32_t s = 0; s < cfg.servers; s++) {
        slot_t *sl = &R.slots[s];
        if (sl->state != SLOT_LIVE)
            continue;
        snprintf(skey, sizeof skey, "%s:%s:sparks", cfg.ns, sl->address);
        uint64_t cnt = slot_count(s);
        const uint8_t *bits = slot_bitmap(s);
        for (uint64_t base = 0; base < cnt; base += CH_CHUNK) {
            uint64_t n = cnt - base < CH_CHUNK ? cnt - base : CH_CHUNK;
            argv[0] = "SMISMEMBER";
            lens[0] = 10;
            argv[1] = skey;
            lens[1] = strlen(skey);
            for (uint64_t k = 0; k < n; k++) {
                lens[k + 2] = spark_id(s + (base + k) * cfg.servers, ids[k]);
                argv[k + 2] = ids[k];
            }
            r = check_argv((int)n + 2, argv, lens);
            if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != n) {
                mismatch(v, "SMISMEMBER: bad answer%s%s",
                         r && r->type == REDIS_REPLY_ERROR ? ": " : "",
                         r && r->type == REDIS_REPLY_ERROR ? r->str : "");
                if (r)
                    freeReplyObject(r);
                return v->mismatches;
            }
            for (uint64_t k = 0; k < n; k++) {
                int want = bit_get(bits, base + k);
                int got = r->element[k]->type == REDIS_REPLY_INTEGER && r->element[k]->integer == 1;
                if (want != got)
                    mismatch(v, "spark %s %s the set of %s", ids[k],
                             want ? "missing from" : "unexpectedly in", sl->address);
            }
            freeReplyObject(r);
        }
    }

    /* Nothing else under the namespace. */
    char pattern[CH_KEY_CAP];
    snprintf(pattern, sizeof pattern, "%s:*", cfg.ns);
    char cursor[32] = "0";
    uint64_t seen = 0;
    do {
        r = check_cmd("SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            mismatch(v, "SCAN: bad answer");
            if (r)
                freeReplyObject(r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            if (!key_allowed(keys->element[i]->str, keys->element[i]->len)) {
                redisReply *t = check_cmd("TYPE %b", keys->element[i]->str,
                                          keys->element[i]->len);
                mismatch(v, "leftover key %s (%s)", keys->element[i]->str,
                         t && t->type == REDIS_REPLY_STATUS ? t->str : "?");
                if (t)
                    freeReplyObject(t);
            }
        }
        seen += keys->elements;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0 && seen < CH_SCAN_MAX_KEYS);
    return v->mismatches;
}

/* ---- options ------------------------------------------------------------- */

static void help(FILE *f)
{
    fprintf(f,
"usage: " CH_NAME " [options]\n"
"Drive spark churn through S simulated servers (child processes, each a\n"
"registry) while injecting faults into Redis and the servers, then verify\n"
"that Redis holds exactly the registry of the servers still alive.\n"
"\n"
"  --sparks N            sparks in all (default 20000)\n"
"  --servers S           simulated servers, 2..%u (default 4)\n"
"  --duration SEC        churn and faults for SEC seconds (default 30)\n"
"  --seed U64            ids, fault targets and gaps (default 1)\n"
"  --chaos PLAN          comma list of fault kinds, cycled through (default all):\n"
"                        kill-redis-empty, kill-redis-aof, pause-redis-long,\n"
"                        client-kill, crash-server, freeze-server; 'none' for\n"
"                        churn only\n"
"  --rate OPS            spark operations per second, all servers (default\n"
"                        20000; 0: as fast as possible)\n"
"  --interval MS         alive interval (default 2000)\n"
"  --latency MS          heartbeat latency (default 500)\n"
"  --lease MS            address lease (default 600)\n"
"  --command-timeout MS  library command timeout (default 500)\n"
"  --connect-timeout MS  library connect timeout (default 300)\n"
"  --gap MS              mean pause between faults (default 1000)\n"
"  --down MS             mean time Redis stays down when killed (default 300)\n"
"  --pause MS            Redis pause (default max(command timeout, interval) + 1000)\n"
"  --respawn MS          mean delay before a crashed server's slot gets a new\n"
"                        process (default: the lease); --no-respawn: never\n"
"  --settle SEC          extra settling bound after 3 x interval (default 30)\n"
"  --ns NAME             namespace (default chaos)\n"
"  --no-aof              run redis-server without AOF (kill-redis-aof unavailable)\n"
"  --redis-arg ARG       extra redis-server argument (repeatable)\n"
"  --json                print a JSON summary as the last line of stdout\n"
"  --verbose             print every on_error callback of the servers\n"
"  --quiet               no progress on stderr\n"
"  --keep                keep the redis-server directory (AOF, log) at the end\n"
"  -h, --help            this text\n"
"\n"
"Exit status: 0 consistent; 1 mismatches or failures; 2 usage or setup\n"
"error; 128+N interrupted by signal N.\n",
            CH_SERVERS_MAX);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, CH_NAME ": ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (try --help)\n");
    return -1;
}

static int parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-')
        return usage_error("%s: not a number: '%s'", opt, s ? s : "");
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return usage_error("%s: '%s' is not a number in %" PRIu64 "..%" PRIu64, opt, s, min, max);
    *out = v;
    return 0;
}

static int parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t v;
    if (parse_u64(opt, s, min, max, &v))
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_plan(const char *s)
{
    cfg.plan_len = 0;
    if (!strcmp(s, "none"))
        return 0;
    if (!strcmp(s, "all")) {
        for (int k = 0; k < K_COUNT; k++)
            cfg.plan[cfg.plan_len++] = k;
        return 0;
    }
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int k;
        for (k = 0; k < K_COUNT; k++)
            if (!strcmp(t, kind_names[k]))
                break;
        if (k == K_COUNT)
            return usage_error("--chaos: unknown fault kind '%s'", t);
        if (cfg.plan_len >= (int)(sizeof cfg.plan / sizeof cfg.plan[0]))
            return usage_error("--chaos: too many entries");
        cfg.plan[cfg.plan_len++] = k;
    }
    if (cfg.plan_len == 0)
        return usage_error("--chaos: empty plan");
    return 0;
}

static int parse_args(int argc, char **argv)
{
    enum {
        O_SPARKS = 256, O_SERVERS, O_DURATION, O_SEED, O_CHAOS, O_RATE, O_INTERVAL, O_LATENCY,
        O_LEASE, O_CMD_TIMEOUT, O_CONN_TIMEOUT, O_GAP, O_DOWN, O_PAUSE, O_RESPAWN, O_NO_RESPAWN,
        O_SETTLE, O_NS, O_NO_AOF, O_REDIS_ARG, O_JSON, O_VERBOSE, O_QUIET, O_KEEP
    };
    static const struct option opts[] = {
        {"sparks", required_argument, 0, O_SPARKS},
        {"servers", required_argument, 0, O_SERVERS},
        {"duration", required_argument, 0, O_DURATION},
        {"seed", required_argument, 0, O_SEED},
        {"chaos", required_argument, 0, O_CHAOS},
        {"rate", required_argument, 0, O_RATE},
        {"interval", required_argument, 0, O_INTERVAL},
        {"latency", required_argument, 0, O_LATENCY},
        {"lease", required_argument, 0, O_LEASE},
        {"command-timeout", required_argument, 0, O_CMD_TIMEOUT},
        {"connect-timeout", required_argument, 0, O_CONN_TIMEOUT},
        {"gap", required_argument, 0, O_GAP},
        {"down", required_argument, 0, O_DOWN},
        {"pause", required_argument, 0, O_PAUSE},
        {"respawn", required_argument, 0, O_RESPAWN},
        {"no-respawn", no_argument, 0, O_NO_RESPAWN},
        {"settle", required_argument, 0, O_SETTLE},
        {"ns", required_argument, 0, O_NS},
        {"no-aof", no_argument, 0, O_NO_AOF},
        {"redis-arg", required_argument, 0, O_REDIS_ARG},
        {"json", no_argument, 0, O_JSON},
        {"verbose", no_argument, 0, O_VERBOSE},
        {"quiet", no_argument, 0, O_QUIET},
        {"keep", no_argument, 0, O_KEEP},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    cfg.sparks = 20000;
    cfg.servers = 4;
    cfg.duration_s = 30;
    cfg.seed = 1;
    cfg.rate = 20000;
    cfg.interval_ms = 2000;
    cfg.latency_ms = 500;
    cfg.lease_ms = 600;
    cfg.command_timeout_ms = 500;
    cfg.connect_timeout_ms = 300;
    cfg.gap_ms = 1000;
    cfg.down_ms = 300;
    cfg.pause_ms = 0;
    cfg.respawn_ms = 0;
    cfg.settle_s = 30;
    cfg.respawn = 1;
    cfg.aof = 1;
    cfg.ns = "chaos";
    int plan_given = 0;
    uint64_t u64;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        const char *name = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
        switch (c) {
        case O_SPARKS:
            if (parse_u64("--sparks", optarg, 1, CH_SPARKS_MAX, &cfg.sparks))
                return -1;
            break;
        case O_SERVERS:
            if (parse_u32("--servers", optarg, 2, CH_SERVERS_MAX, &cfg.servers))
                return -1;
            break;
        case O_DURATION:
            if (parse_u32("--duration", optarg, 1, CH_DURATION_MAX, &cfg.duration_s))
                return -1;
            break;
        case O_SEED:
            if (parse_u64("--seed", optarg, 0, UINT64_MAX, &cfg.seed))
                return -1;
            break;
        case O_CHAOS:
            if (parse_plan(optarg))
                return -1;
            plan_given = 1;
            break;
        case O_RATE:
            if (parse_u64("--rate", optarg, 0, 100000000, &u64))
                return -1;
            cfg.rate = (double)u64;
            break;
        case O_INTERVAL:
            if (parse_u32("--interval", optarg, 300, 600000, &cfg.interval_ms))
                return -1;
            break;
        case O_LATENCY:
            if (parse_u32("--latency", optarg, 1, 600000, &cfg.latency_ms))
                return -1;
            break;
        case O_LEASE:
            if (parse_u32("--lease", optarg, 300, 600000, &cfg.lease_ms))
                return -1;
            break;
        case O_CMD_TIMEOUT:
            if (parse_u32("--command-timeout", optarg, 1, 600000, &cfg.command_timeout_ms))
                return -1;
            break;
        case O_CONN_TIMEOUT:
            if (parse_u32("--connect-timeout", optarg, 1, 600000, &cfg.connect_timeout_ms))
                return -1;
            break;
        case O_GAP:
            if (parse_u32("--gap", optarg, 0, 3600000, &cfg.gap_ms))
                return -1;
            break;
        case O_DOWN:
            if (parse_u32("--down", optarg, 0, 60000, &cfg.down_ms))
                return -1;
            break;
        case O_PAUSE:
            if (parse_u32("--pause", optarg, 1, 600000, &cfg.pause_ms))
                return -1;
            break;
        case O_RESPAWN:
            if (parse_u32("--respawn", optarg, 0, 600000, &cfg.respawn_ms))
                return -1;
            break;
        case O_NO_RESPAWN:
            cfg.respawn = 0;
            break;
        case O_SETTLE:
            if (parse_u32("--settle", optarg, 0, 3600, &cfg.settle_s))
                return -1;
            break;
        case O_NS:
            cfg.ns = optarg;
            if (!*optarg || strlen(optarg) > 64 || strpbrk(optarg, " *?[]{}\\"))
                return usage_error("--ns: 1..64 characters, none of ' *?[]{}\\'");
            break;
        case O_NO_AOF:
            cfg.aof = 0;
            break;
        case O_REDIS_ARG:
            if (cfg.n_redis_args >= (int)(sizeof cfg.redis_args / sizeof cfg.redis_args[0]))
                return usage_error("--redis-arg: too many");
            cfg.redis_args[cfg.n_redis_args++] = optarg;
            break;
        case O_JSON:
            cfg.json = 1;
            break;
        case O_VERBOSE:
            cfg.verbose = 1;
            break;
        case O_QUIET:
            cfg.quiet = 1;
            break;
        case O_KEEP:
            cfg.keep = 1;
            break;
        case 'h':
            help(stdout);
            exit(0);
        case ':':
            return usage_error("%s needs a value", name);
        default:
            return usage_error("unknown option %s", name);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!plan_given)
        parse_plan("all");
    if (cfg.latency_ms >= cfg.interval_ms)
        return usage_error("--latency (%u) must be less than --interval (%u)", cfg.latency_ms,
                           cfg.interval_ms);
    if (cfg.lease_ms > cfg.interval_ms)
        return usage_error("--lease (%u) must not exceed --interval (%u)", cfg.lease_ms,
                           cfg.interval_ms);
    if (!cfg.pause_ms)
        cfg.pause_ms = (cfg.command_timeout_ms > cfg.interval_ms ? cfg.command_timeout_ms
                                                                  : cfg.interval_ms) + 1000;
    if (!cfg.respawn_ms)
        cfg.respawn_ms = cfg.lease_ms;
    if (!cfg.aof)
        for (int i = 0; i < cfg.plan_len; i++)
            if (cfg.plan[i] == K_KILL_AOF)
                return usage_error("--chaos kill-redis-aof needs the AOF (drop --no-aof)");
    return 0;
}

/* ---- report -------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void report(const plain_counters_t *tot, int exit_code)
{
    FILE *f = stdout;
    uint64_t nfaults = 0;
    for (int k = 0; k < K_COUNT; k++)
        nfaults += R.faults[k];
    fprintf(f, "metroplex-chaos: seed %" PRIu64 ", %u servers, %" PRIu64
               " sparks, %u s, rate %.0f/s, interval %u ms, latency %u ms, lease %u ms, "
               "command timeout %u ms\n",
            cfg.seed, cfg.servers, cfg.sparks, cfg.duration_s, cfg.rate, cfg.interval_ms,
            cfg.latency_ms, cfg.lease_ms, cfg.command_timeout_ms);
    fprintf(f, "faults:        %" PRIu64 " in all:", nfaults);
    for (int k = 0; k < K_COUNT; k++) {
        fprintf(f, " %s %" PRIu64, kind_names[k], R.faults[k]);
        if (R.skipped[k])
            fprintf(f, " (+%" PRIu64 " skipped)", R.skipped[k]);
        fprintf(f, k + 1 < K_COUNT ? "," : "\n");
    }
    fprintf(f, "               client connections dropped %" PRIu64 "; respawns %" PRIu64
               " (%" PRIu64 " same address, %" PRIu64 " new); frozen servers reaped %" PRIu64
               " (slowest %.0f ms), not reaped %" PRIu64 "\n",
            R.clients_killed, R.respawns, R.respawn_same, R.respawn_new, R.frozen_reaped,
            R.freeze_reap_ms_max, R.frozen_not_reaped);
    fprintf(f, "operations:    %" PRIu64 " spark operations (%" PRIu64 " connects, %" PRIu64
               " disconnects) in %.1f s, %.0f/s\n",
            tot->v[C_OPS], tot->v[C_CONNECTS], tot->v[C_DISCONNECTS], R.churn_s,
            R.churn_s > 0 ? (double)tot->v[C_OPS] / R.churn_s : 0.0);
    fprintf(f, "library:       %" PRIu64 " sparks written (committed), %" PRIu64
               " coalesced, %" PRIu64 " rewritten after a loss, %" PRIu64
               " re-registrations, %" PRIu64 " batches\n",
            tot->v[C_COMMITTED], tot->v[C_COALESCED], rewritten_of(tot), tot->v[C_REREGISTERED],
            tot->v[C_BATCHES]);
    fprintf(f, "               %" PRIu64 " errors reported through on_error, %" PRIu64
               " Redis errors, %" PRIu64 " retries, %" PRIu64 " servers reaped (%" PRIu64
               " sparks), %" PRIu64 " API errors\n",
            tot->v[C_ON_ERROR], tot->v[C_REDIS_ERRORS], tot->v[C_RETRIES],
            tot->v[C_REAPED_SERVERS], tot->v[C_REAPED_SPARKS], tot->v[C_API_ERRORS]);
    fprintf(f, "final:         %" PRIu64 " sparks connected on %u live servers; flush %.2f s, "
               "settle %.2f s, stable %.2f s, %" PRIu64 " flaps\n",
            R.final_sparks, live_count(), R.flush_s_max, R.settle_s, R.stable_s, R.flaps);
    fprintf(f, "verify:        %" PRIu64 " mismatches\n", R.mismatches);
    for (uint64_t i = 0; i < R.mismatches && i < CH_SHOWN_MAX; i++)
        fprintf(f, "  mismatch: %s\n", R.shown[i]);
    if (R.mismatches > CH_SHOWN_MAX)
        fprintf(f, "  ... %" PRIu64 " more\n", R.mismatches - CH_SHOWN_MAX);
    for (uint64_t i = 0; i < R.failures && i < 8; i++)
        fprintf(f, "  failure: %s\n", R.failure_shown[i]);
    fprintf(f, "result:        %s\n",
            exit_code == 0 ? "ok" : g_stop ? "interrupted" : "FAILED");
    if (cfg.json) {
        fprintf(f, "{\"tool\":\"metroplex-chaos\",\"seed\":%" PRIu64 ",\"servers\":%u,\"sparks\":%"
                   PRIu64 ",\"duration_s\":%u,\"rate\":%.0f,\"interval_ms\":%u,\"latency_ms\":%u,"
                   "\"lease_ms\":%u,\"command_timeout_ms\":%u,\"faults\":{",
                cfg.seed, cfg.servers, cfg.sparks, cfg.duration_s, cfg.rate, cfg.interval_ms,
                cfg.latency_ms, cfg.lease_ms, cfg.command_timeout_ms);
        for (int k = 0; k < K_COUNT; k++)
            fprintf(f, "%s\"%s\":%" PRIu64, k ? "," : "", kind_names[k], R.faults[k]);
        fprintf(f, "},\"faults_total\":%" PRIu64 ",\"clients_killed\":%" PRIu64
                   ",\"respawns\":%" PRIu64 ",\"frozen_reaped\":%" PRIu64
                   ",\"frozen_not_reaped\":%" PRIu64 ",\"operations\":%" PRIu64
                   ",\"ops_per_s\":%.0f,\"sparks_written\":%" PRIu64
                   ",\"sparks_rewritten\":%" PRIu64 ",\"callback_errors\":%" PRIu64
                   ",\"api_errors\":%" PRIu64 ",\"library\":{",
                nfaults, R.clients_killed, R.respawns, R.frozen_reaped, R.frozen_not_reaped,
                tot->v[C_OPS], R.churn_s > 0 ? (double)tot->v[C_OPS] / R.churn_s : 0.0,
                tot->v[C_COMMITTED], rewritten_of(tot), tot->v[C_ON_ERROR],
                tot->v[C_API_ERRORS]);
        for (size_t i = C_QUEUED; i < NCOUNTERS; i++)
            fprintf(f, "%s\"%s\":%" PRIu64, i > C_QUEUED ? "," : "", counter_names[i],
                    tot->v[i]);
        fprintf(f, "},\"final_sparks\":%" PRIu64 ",\"live_servers\":%u,\"flush_s\":%.3f,"
                   "\"settle_s\":%.3f,\"stable_s\":%.3f,\"flaps\":%" PRIu64
                   ",\"mismatches\":%" PRIu64 ",\"failures\":%" PRIu64 ",\"first_problem\":",
                R.final_sparks, live_count(), R.flush_s_max, R.settle_s, R.stable_s, R.flaps,
                R.mismatches, R.failures);
        if (R.mismatches)
            json_str(f, R.shown[0]);
        else if (R.failures)
            json_str(f, R.failure_shown[0]);
        else
            fprintf(f, "null");
        fprintf(f, ",\"result\":\"%s\"}\n", exit_code == 0 ? "ok" : "failed");
    }
    fflush(f);
}

/* ---- cleanup ------------------------------------------------------------- */

static void cleanup(void)
{
    redis_resume_if_paused();
    for (uint32_t s = 0; s < cfg.servers; s++) {
        slot_t *sl = &R.slots[s];
        if (sl->pid > 0 && sl->frozen)
            kill(sl->pid, SIGCONT);
        if (sl->pid > 0 && !g_stop)
            slot_send(sl, "exit");
    }
    for (uint32_t s = 0; s < cfg.servers; s++) {
        slot_t *sl = &R.slots[s];
        if (sl->pid <= 0)
            continue;
        int ws;
        double end = now_s() + 5.0;
        pid_t r;
        while ((r = waitpid(sl->pid, &ws, WNOHANG)) == 0 && now_s() < end && !g_stop)
            sleep_ms(10);
        if (r != sl->pid) {
            kill(sl->pid, SIGKILL);
            while (waitpid(sl->pid, &ws, 0) < 0 && errno == EINTR)
                ;
        }
        sl->pid = 0;
        if (sl->cmd_fd > 0)
            close(sl->cmd_fd);
        if (sl->ans_fd > 0)
            close(sl->ans_fd);
        sl->cmd_fd = sl->ans_fd = -1;
    }
    check_close();
    if (R.rp.dir[0] && cfg.keep) {
        redis_proc_stop(&R.rp);
        fprintf(stderr, CH_NAME ": redis-server files kept in %s\n", R.rp.dir);
    } else if (R.rp.dir[0]) {
        redis_proc_destroy(&R.rp);
    }
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv)
{
    g_t0 = now_s();
    if (parse_args(argc, argv))
        return CH_EXIT_USAGE;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    R.rng.s = mix64(cfg.seed ^ 0x5eedc4a05ull);
    for (uint32_t s = 0; s < cfg.servers; s++)
        R.slots[s].cmd_fd = R.slots[s].ans_fd = -1;
    if (shared_init())
        return CH_EXIT_USAGE;

    redis_args_init();
    if (redis_proc_start(&R.rp, R.redis_extra) != 0) {
        errorf("cannot start redis-server");
        return CH_EXIT_USAGE;
    }
    R.redis_up = 1;
    logf_("redis-server pid %d at %s (dir %s%s)", (int)R.rp.pid, R.rp.url, R.rp.dir,
          cfg.aof ? ", AOF appendfsync always" : "");

    int code = CH_EXIT_OK;
    /* The servers. */
    for (uint32_t s = 0; s < cfg.servers && !g_stop; s++) {
        if (slot_spawn(s) != 0) {
            errorf("cannot fork: %s", strerror(errno));
            code = CH_EXIT_USAGE;
            goto out;
        }
    }
    for (uint32_t s = 0; s < cfg.servers && !g_stop; s++)
        if (slot_wait_ready(s) != 0) {
            code = CH_EXIT_USAGE;
            goto out;
        }
    logf_("%u servers ready, %" PRIu64 " sparks connected; churn and faults for %u s", cfg.servers,
          ops_total(), cfg.duration_s);

    /* Churn and faults. */
    double t_run = now_s(), t_end = t_run + cfg.duration_s;
    double next_progress = t_run + 5;
    int step = 0;
    int injecting = cfg.plan_len > 0;
    if (injecting)
        tend(rng_range(&R.rng, cfg.gap_ms * 0.5, cfg.gap_ms * 1.5));
    while (!g_stop && now_s() < t_end && R.failures == 0) {
        if (injecting) {
            int k = cfg.plan[step % cfg.plan_len];
            if (now_s() + fault_estimate_ms(k) / 1000.0 > t_end) {
                injecting = 0;
                continue;
            }
            step++;
            int rc = fault_inject(k);
            if (rc == 0)
                R.faults[k]++;
            else if (rc > 0)
                R.skipped[k]++;
            else if (R.failures == 0)
                failure("fault %s could not be injected", kind_names[k]);
            if (now_s() >= next_progress) {
                logf_("progress: %" PRIu64 " operations, %u/%u servers live",
                      ops_total(), live_count(), cfg.servers);
                next_progress = now_s() + 5;
            }
            double gap = rng_range(&R.rng, cfg.gap_ms * 0.5, cfg.gap_ms * 1.5);
            double left = (t_end - now_s()) * 1000;
            tend(gap < left ? gap : left);
        } else {
            double left = (t_end - now_s()) * 1000;
            tend(left < 1000 ? left : 1000);
            if (now_s() >= next_progress) {
                logf_("progress: %" PRIu64 " operations, %u/%u servers live", ops_total(),
                      live_count(), cfg.servers);
                next_progress = now_s() + 5;
            }
        }
    }
    /* Every fault over: Redis running, everyone thawed, every slot staffed. */
    redis_resume_if_paused();
    if (!R.redis_up && !g_stop) {
        if (redis_proc_restart(&R.rp, R.redis_extra) == 0)
            R.redis_up = 1;
        else
            failure("could not restart redis-server");
    }
    if (!g_stop && R.redis_up)
        respawn_due(1);
    R.churn_s = now_s() - t_run;
    if (g_stop || !R.redis_up)
        goto done;

    /* Stop churning and flush, all children at once. */
    logf_("churn over: %" PRIu64 " operations; flushing", ops_total());
    for (uint32_t s = 0; s < cfg.servers; s++)
        if (R.slots[s].state == SLOT_LIVE && slot_send(&R.slots[s], "final") != 0)
            failure("server %u: cannot send 'final'", s);
    double t_flush = now_s();
    for (uint32_t s = 0; s < cfg.servers && !g_stop; s++) {
        slot_t *sl = &R.slots[s];
        if (sl->state != SLOT_LIVE)
            continue;
        const char *why = NULL;
        const char *line = slot_read(sl, CH_FINAL_TIMEOUT_MS, &why);
        int frc = -99;
        double fs = 0;
        char msg[256] = "";
        if (!line) {
            failure("server %u (%s): no answer to 'final': %s", s, sl->address, why);
            continue;
        }
        if (sscanf(line, "final %d %lf %255[^\n]", &frc, &fs, msg) < 2) {
            failure("server %u: unexpected answer '%s'", s, line);
            continue;
        }
        if (frc != 0)
            failure("server %u (%s): mpx_flush failed: %s (%s)", s, sl->address,
                    mpx_err_name(frc), msg);
        if (fs > R.flush_s_max)
            R.flush_s_max = fs;
        sl->expected = 0;
        const uint8_t *b = slot_bitmap(s);
        for (uint64_t j = 0; j < slot_count(s); j++)
            sl->expected += (uint64_t)bit_get(b, j);
        R.final_sparks += sl->expected;
    }
    logf_("flushed in %.2f s; %" PRIu64 " sparks connected on %u servers; verifying",
          now_s() - t_flush, R.final_sparks, live_count());

    /* Settle: poll until consistent, then stay consistent for an interval. */
    {
        double t_settle = now_s();
        double deadline = t_settle + 3.0 * cfg.interval_ms / 1000.0 + cfg.settle_s;
        double stable_need = cfg.interval_ms / 1000.0;
        double ok_since = 0;
        static vstate_t v;
        int checks = 0;
        for (;;) {
            health_check();
            uint64_t m = verify(&v);
            checks++;
            double t = now_s();
            if (m == 0) {
                if (ok_since == 0) {
                    ok_since = t;
                    R.settle_s = t - t_settle;
                } else if (t - ok_since >= stable_need) {
                    R.stable_s = t - ok_since;
                    R.consistent = 1;
                    break;
                }
            } else if (ok_since != 0) {
                R.flaps++;
                logf_("consistent, then not any more: %s", v.shown[0]);
                ok_since = 0;
            }
            if (t > deadline || g_stop)
                break;
            if (m && checks % 10 == 1)
                logf_("settling: %" PRIu64 " mismatches (e.g. %s)", m, v.shown[0]);
            sleep_ms(ok_since ? stable_need * 250 : 200);
        }
        if (!R.consistent) {
            R.mismatches = v.mismatches ? v.mismatches : 1;
            memcpy(R.shown, v.shown, sizeof R.shown);
            if (!v.mismatches)
                snprintf(R.shown[0], sizeof R.shown[0], "did not stay consistent for %.1f s",
                         stable_need);
            R.settle_s = now_s() - t_settle;
        }
    }

done:;
    plain_counters_t tot = R.retired;
    for (uint32_t s = 0; s < cfg.servers; s++) {
        plain_counters_t c;
        counters_read(&shm.counters[s], &c);
        for (size_t i = 0; i < NCOUNTERS; i++)
            tot.v[i] += c.v[i];
    }
    if (tot.v[C_API_ERRORS])
        failure("%" PRIu64 " mpx_connect/mpx_disconnect calls failed", tot.v[C_API_ERRORS]);
    if (g_stop)
        code = 128 + g_stop;
    else if (R.mismatches || R.failures || !R.consistent)
        code = CH_EXIT_FAIL;
    cleanup();
    report(&tot, code);
    return code;

out:
    cleanup();
    return g_stop ? 128 + g_stop : code;
}
