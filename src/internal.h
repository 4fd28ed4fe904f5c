/*
 * internal.h - the library's private declarations, shared by src/ files.
 *
 * Naming: `mpx_` is public (metroplex.h), `mpx__` is internal and
 * non-static, `static` for the rest.
 *
 * Components, one file each:
 *   error.c      error table and the per-thread detailed message
 *   options.c    option defaults, validation, Redis URL and address parsing
 *   keys.c       key names, Lua scripts, command formatting (no I/O)
 *   conn.c       one hiredis connection: connect, AUTH/SELECT, scripts,
 *                reconnect with backoff
 *   cache.c      the spark cache: lock-free reads, per-shard dirty lists
 *   hist.c       the commit-latency histogram
 *   writer.c     the writer thread: dirty sparks -> pipelined batches
 *   lookup.c     the lookup thread behind mpx_sparks_async
 *   lifecycle.c  register, unregister, heartbeat thread, reaping, drains
 *   registry.c   mpx_create/destroy and the lookups
 */
#ifndef MPX_INTERNAL_H
#define MPX_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "metroplex.h"

#define MPX__UNUSED(x) ((void)(x))

/* ---- error.c ---------------------------------------------------------- */

/* Set the calling thread's detailed message and return `err`. */
int mpx__fail(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Clear the calling thread's message. */
void mpx__clear_error(void);

/* ---- options.c -------------------------------------------------------- */

typedef struct mpx__redis_endpoint {
    char *host;     /* TCP host, or NULL for a unix socket */
    int port;
    char *path;     /* unix socket path, or NULL */
    char *user;     /* NULL: AUTH with password only */
    char *password; /* NULL: no AUTH */
    int db;         /* SELECT db when > 0 */
    /* Redis Cluster (a redis-cluster:// seed list): host/port above are the
     * first seed; seeds[0..nseeds) all of them (host owned). */
    bool cluster;
    size_t nseeds;
    struct mpx__seed {
        char *host;
        int port;
    } *seeds;
} mpx__redis_endpoint_t;

int mpx__parse_redis_url(const char *url, mpx__redis_endpoint_t *ep);
void mpx__endpoint_free(mpx__redis_endpoint_t *ep);
/* Validate a server address and copy it, unchanged (as Node peers write
 * it), into out[MPX_ADDRESS_MAX + 1]. Returns 0 or MPX_EINVAL /
 * MPX_ETOOBIG with the message set. `field` names the source in messages. */
int mpx__check_address(const char *address, const char *field, char *out);
/* Validate every option; copy `in` (of in->struct_size bytes) over the
 * defaults into `out`. Strings are not copied. Returns 0 or an error. */
int mpx__check_options(const mpx_options_t *in, mpx_options_t *out);
/* Validate a spark id. */
int mpx__check_id(const void *id, size_t len);

/* ---- keys.c: names, scripts and command building, no I/O ----------------
 *
 * The key layout lives here alone (a sharded layout for Redis Cluster is a
 * later addition). `mpx__keys_t` holds the prefixes; functions build
 * key names into caller buffers or growable strings.
 */
typedef struct mpx__buf {
    char *data;
    size_t len, cap;
} mpx__buf_t;

int mpx__buf_reserve(mpx__buf_t *b, size_t extra);
int mpx__buf_append(mpx__buf_t *b, const void *p, size_t n);
void mpx__buf_free(mpx__buf_t *b);

/* Redis command arguments, pointing into caller-owned memory or into
 * `store` (for names built on the fly). */
typedef struct mpx__argv {
    const char **argv;
    size_t *lens;
    size_t argc, cap;
    mpx__buf_t store;  /* owned strings; offsets recorded in `owned` */
    size_t *owned;     /* indexes of args whose pointer is an offset in store */
    size_t nowned, owned_cap;
} mpx__argv_t;

void mpx__argv_init(mpx__argv_t *a);
void mpx__argv_reset(mpx__argv_t *a);
void mpx__argv_free(mpx__argv_t *a);
int mpx__argv_push(mpx__argv_t *a, const void *p, size_t n); /* borrowed */
int mpx__argv_pushf(mpx__argv_t *a, const char *fmt, ...)   /* copied */
    __attribute__((format(printf, 2, 3)));
int mpx__argv_pushcat(mpx__argv_t *a, const char *p1, size_t n1,
                      const char *p2, size_t n2); /* copied p1 + p2 */
/* Resolve owned offsets into pointers; call before sending, after the last
 * push (a later owned push may move the store under resolved pointers;
 * mpx__argv_reset starts over). */
void mpx__argv_finish(mpx__argv_t *a);

enum mpx__script_id {
    MPX__SCRIPT_REGISTER,
    MPX__SCRIPT_HEARTBEAT,
    MPX__SCRIPT_RETIRE,     /* reap or unregister: first, atomic step */
    MPX__SCRIPT_DRAIN,      /* one bounded chunk of a cleanup */
    MPX__SCRIPT_DISCONNECT, /* conditional delete of hash fields */
    /* The sharded layout's scripts (each touches the keys of one slot). */
    MPX__SCRIPT_S_REGISTER,
    MPX__SCRIPT_S_HEARTBEAT,
    MPX__SCRIPT_S_RETIRE,
    MPX__SCRIPT_S_DRAIN,
    MPX__SCRIPT_S_WRITE,    /* connects and conditional deletes of one shard */
    MPX__SCRIPT_COUNT
};

const char *mpx__script_source(int id);
const char *mpx__script_name(int id);

typedef struct mpx__keys {
    int layout;        /* MPX_LAYOUT_NODE or MPX_LAYOUT_SHARDED */
    uint32_t nshards;  /* 1 in the node layout */
    char *ns;          /* "metroplex:" */
    size_t ns_len;
    char *sparks;      /* NS "sparks" (node layout) */
    size_t sparks_len;
    char *servers;     /* NS "servers"; sharded: "{ns}:servers" */
    size_t servers_len;
    char *drains;      /* NS "drains" (our extension); sharded: "{ns}:drains" */
    size_t drains_len;
    /* Sharded layout only (docs/keyspace.md): */
    char *ctl;         /* "{ns}:", the prefix of the control keys */
    size_t ctl_len;
    char *gens;        /* "{ns}:gens"   hash address -> generation */
    size_t gens_len;
    char *layout_key;  /* "{ns}:layout" string "sharded <S>" */
    size_t layout_key_len;
    char desc[32];     /* "sharded <S>" */
    char (*tags)[8];   /* tags[s]: shard s's hash tag, NUL-terminated */
} mpx__keys_t;

/* The node layout (the original's keys). */
int mpx__keys_init(mpx__keys_t *k, const char *ns);
/* Either layout; shards is used by the sharded layout (1..16384). */
int mpx__keys_init_layout(mpx__keys_t *k, const char *ns, int layout, uint32_t shards);
void mpx__keys_free(mpx__keys_t *k);
/* The alive key: NS + address; sharded: "{ns}:alive:" + address */
int mpx__key_alive(const mpx__keys_t *k, const char *addr, mpx__argv_t *a);
/* NS + address + ":sparks"  (the server's spark set; node layout) */
int mpx__key_set(const mpx__keys_t *k, const char *addr, mpx__argv_t *a);
/* The lease: NS + address + ":lease"; sharded: "{ns}:lease:" + address */
int mpx__key_lease(const mpx__keys_t *k, const char *addr, mpx__argv_t *a);
/* The shard of a spark id: FNV-1a 32 of the id mod nshards (0: node layout). */
uint32_t mpx__key_shard(const mpx__keys_t *k, const void *id, size_t len);
/* The spark hash holding shard s: NS "sparks"; sharded: NS "{tag}:sparks". */
int mpx__key_hash(const mpx__keys_t *k, uint32_t s, mpx__argv_t *a);
/* A server's spark set for shard s: node layout NS + address + ":sparks"
 * (s and gen ignored); sharded: NS "{tag}:" + address + ":sparks:" + gen. */
int mpx__key_own(const mpx__keys_t *k, uint32_t s, const char *addr, const char *gen,
                 mpx__argv_t *a);
/* Sharded: shard s's generations hash, NS "{tag}:gens" (address -> gen). */
int mpx__key_shard_gens(const mpx__keys_t *k, uint32_t s, mpx__argv_t *a);
/* The slot a shard's keys live in (sharded), from its tag. */
unsigned mpx__shard_slot(const mpx__keys_t *k, uint32_t s);
/* The tag of the first string, in the documented order, whose hash slot is
 * `slot` (out: at least 8 bytes). */
void mpx__tag_for_slot(unsigned slot, char *out);
/* NS + address + ":sparks:draining:" + token  (our extension) */
int mpx__key_aside(const mpx__keys_t *k, const char *addr, const char *token,
                   mpx__argv_t *a);

/* Full commands (append to `a`, which the caller reset):
 * EVALSHA <sha> <numkeys> keys... args... for each script. */
int mpx__cmd_register(const mpx__keys_t *k, const char *sha, const char *addr,
                      uint32_t interval_ms, uint64_t now_ms,
                      const char *instance, uint32_t lease_ms,
                      const char *token, mpx__argv_t *a);
int mpx__cmd_heartbeat(const mpx__keys_t *k, const char *sha,
                       const char *addr, uint32_t interval_ms, uint64_t now_ms,
                       const char *instance, uint32_t lease_ms, int alive,
                       mpx__argv_t *a);
/* force: unregister (ignore liveness; lease must be ours or absent). */
int mpx__cmd_retire(const mpx__keys_t *k, const char *sha, const char *addr,
                    const char *instance, const char *token, int force,
                    mpx__argv_t *a);
int mpx__cmd_drain(const mpx__keys_t *k, const char *sha,
                   const char *aside_key, size_t aside_len, const char *addr,
                   uint32_t chunk, mpx__argv_t *a);

struct mpx__op;
/* Sharded layout commands (`shas` indexed by enum mpx__script_id).
 * register: control slot; gen is the new registration's generation.
 *   -> {1, moved_old_gen} | {-1, pttl, holder} | error LAYOUT mismatch */
int mpx__cmd_s_register(const mpx__keys_t *k, const char (*shas)[41], const char *addr,
                        uint32_t interval_ms, uint64_t now_ms, const char *instance,
                        uint32_t lease_ms, const char *gen, mpx__argv_t *a);
/* heartbeat -> {-1, holder} | {0, 0} (reaped: register again) | {1, alive} */
int mpx__cmd_s_heartbeat(const mpx__keys_t *k, const char (*shas)[41], const char *addr,
                         uint32_t interval_ms, uint64_t now_ms, const char *instance,
                         uint32_t lease_ms, const char *gen, mpx__argv_t *a);
/* retire -> {-1,0,''} | {0,0,''} | {was_registered, moved, gen} */
int mpx__cmd_s_retire(const mpx__keys_t *k, const char (*shas)[41], const char *addr,
                      const char *instance, int force, mpx__argv_t *a);
/* drain one chunk of generation `gen` of addr in shard s; `live` is the
 * live generation of addr as the caller believes it ("" for none).
 *   -> {popped, removed, left} | {-2, actual_live_gen} */
int mpx__cmd_s_drain(const mpx__keys_t *k, const char (*shas)[41], uint32_t s, const char *addr,
                     const char *gen, const char *live, uint32_t chunk, mpx__argv_t *a);
/* write: connects (want) and conditional deletes of ops[0..n), all of
 * shard s, for addr's generation gen. */
int mpx__cmd_s_write(const mpx__keys_t *k, const char (*shas)[41], uint32_t s, const char *addr,
                     const char *gen, const struct mpx__op *ops, size_t n, mpx__argv_t *a);

/* ---- conn.c ------------------------------------------------------------- */

typedef struct mpx__conn {
    redisContext *ctx;
    const mpx__redis_endpoint_t *ep;
    uint32_t connect_timeout_ms, command_timeout_ms;
    char shas[MPX__SCRIPT_COUNT][41];
    char run_id[41];       /* INFO server run_id at the last connect */
    bool run_id_changed;   /* set at reconnect when run_id differs */
    uint64_t next_attempt_ms;
    uint32_t backoff_ms;
    char name[24];         /* "writer", "heartbeat", "sync" */
    atomic_uint_fast64_t *error_counter; /* may be NULL */
    struct mpx__cluster *cl; /* non-NULL when ep->cluster: see cluster.c */
} mpx__conn_t;

void mpx__conn_init(mpx__conn_t *c, const mpx__redis_endpoint_t *ep,
                    uint32_t connect_timeout_ms, uint32_t command_timeout_ms,
                    const char *name, atomic_uint_fast64_t *errors);
/* Connect if needed (respecting backoff unless `force`). 0 or an error with
 * the message set. */
int mpx__conn_ensure(mpx__conn_t *c, bool force);
void mpx__conn_close(mpx__conn_t *c);
/* The connection's script SHAs, as the mpx__cmd_s_* builders take them. */
static inline const char (*mpx__shas(const mpx__conn_t *c))[41]
{
    return (const char(*)[41])c->shas;
}
/* Send one command and read its reply. On I/O failure the connection is
 * closed (reconnect later). Returns 0 with *out set (the caller frees it),
 * or an error (ECONN, ETIMEDOUT); a Redis error reply is returned as
 * MPX_EREDIS with *out NULL and the message set. NOSCRIPT is handled: the
 * scripts are reloaded and the command retried once. */
int mpx__conn_command(mpx__conn_t *c, mpx__argv_t *a, redisReply **out);
/* Pipeline: append, then read n replies. */
int mpx__conn_append(mpx__conn_t *c, mpx__argv_t *a);
int mpx__conn_read(mpx__conn_t *c, redisReply **out);
/* Map a failed hiredis context to an error code and message. */
int mpx__conn_io_error(mpx__conn_t *c, const char *what);
/* n independent commands (each touching keys of one slot), pipelined: on a
 * single Redis down the one connection, on a cluster split per master node
 * (MOVED/ASK/TRYAGAIN followed, bounded). replies[i] (caller frees) or
 * rcs[i] (an error code, message in the last failing one) per command; a
 * Redis error reply is rcs[i] = MPX_EREDIS with replies[i] NULL. Returns 0
 * when every command got a non-error reply, else the first error code. */
int mpx__conn_pipeline(mpx__conn_t *c, size_t n, mpx__argv_t *const *cmds,
                       redisReply **replies, int *rcs);
/* A batch for mpx__conn_pipeline: the commands, their replies and codes,
 * allocated together. Usage: init(cap); add() up to cap commands (each
 * returned empty) and push their arguments; run(); read rep[i] / rcs[i];
 * clear() (replies freed, n = 0) to reuse; free(). Not thread-safe. */
typedef struct mpx__pipe {
    size_t n, cap;
    mpx__argv_t *cmds;
    mpx__argv_t **cp;
    redisReply **rep; /* after run: reply i, or NULL with rcs[i] set */
    int *rcs;
} mpx__pipe_t;

int mpx__pipe_init(mpx__pipe_t *p, size_t cap);           /* 0 or MPX_ENOMEM */
mpx__argv_t *mpx__pipe_add(mpx__pipe_t *p);               /* NULL when full */
int mpx__pipe_run(mpx__pipe_t *p, mpx__conn_t *c);        /* mpx__conn_pipeline */
void mpx__pipe_clear(mpx__pipe_t *p);
void mpx__pipe_free(mpx__pipe_t *p);

/* Cluster: re-read the slot map now if the last read is older than
 * max_age_ms (sets run_id_changed on a failover). No-op on a single Redis. */
int mpx__conn_refresh(mpx__conn_t *c, uint32_t max_age_ms);
/* The hash slot of a key (CRC16 of the hash tag or of the whole key, mod
 * 16384), as Redis Cluster computes it. */
unsigned mpx__key_slot(const char *key, size_t len);

/* Name the calling library thread and block SIGPIPE in it. */
void mpx__thread_init(const char *name);
uint64_t mpx__now_ms(void);      /* monotonic */
uint64_t mpx__epoch_ms(void);    /* wall clock, for alive-key values */

/* ---- cache.c: the spark cache -------------------------------------------- */

typedef struct mpx__cache mpx__cache_t;

/* An interned server address; lives as long as the cache. */
typedef struct mpx__srv {
    atomic_bool dead; /* reaped or unregistered: cached entries are stale */
    uint32_t len;
    char addr[];
} mpx__srv_t;

/* A change the writer is to send: the record stays valid until the writer
 * calls mpx__cache_committed (only the writer unlinks records). */
typedef struct mpx__op {
    void *rec;
    const char *id;
    uint16_t len;
    bool want; /* true: connect (HSET/SADD), false: conditional delete */
    uint64_t t_ns;
} mpx__op_t;

typedef struct mpx__dirty {
    void *rec;
    uint64_t t_ns;
} mpx__dirty_t;

typedef struct mpx__cache_stats {
    uint64_t own, pending, remote, bytes, queued, hits, misses;
} mpx__cache_stats_t;

uint64_t mpx__hash(const void *p, size_t n);
mpx__cache_t *mpx__cache_create(size_t size_hint, size_t remote_max);
void mpx__cache_destroy(mpx__cache_t *c);
/* Gateway threads: 1 if the spark changed (and is queued), 0 if it already
 * was in that state, <0 error. t_ns: monotonic time of the call. */
int mpx__cache_connect(mpx__cache_t *c, const void *id, size_t len, uint64_t t_ns);
int mpx__cache_disconnect(mpx__cache_t *c, const void *id, size_t len, uint64_t t_ns);
/* Lock-free lookup: 1 own spark, 2 remote spark (fresh; *srv set), 0 miss. */
int mpx__cache_lookup(mpx__cache_t *c, const void *id, size_t len, const mpx__srv_t **srv);
const mpx__srv_t *mpx__cache_intern(mpx__cache_t *c, const char *addr, size_t len);
void mpx__cache_server_gone(mpx__cache_t *c, const char *addr);
/* The servers set as just read: every interned server not in it is gone. */
void mpx__cache_servers_seen(mpx__cache_t *c, const char *const *addrs, const size_t *lens,
                             size_t n);
void mpx__cache_learn(mpx__cache_t *c, const void *id, size_t len, const mpx__srv_t *srv,
                      uint64_t expires_ms);
size_t mpx__cache_sweep_remote(mpx__cache_t *c, uint64_t now_ms);
/* Writer thread only: take every shard's dirty list, then pull ops. */
void mpx__cache_take(mpx__cache_t *c);
size_t mpx__cache_next_ops(mpx__cache_t *c, mpx__op_t *ops, size_t max, size_t *coalesced);
bool mpx__cache_taken_empty(mpx__cache_t *c);
void mpx__cache_committed(mpx__cache_t *c, const mpx__op_t *ops, size_t n);
void mpx__cache_reclaim(mpx__cache_t *c);
/* Mark every own spark as not in Redis (queues them all). Writer thread,
 * between cycles. */
void mpx__cache_mark_unwritten(mpx__cache_t *c, uint64_t t_ns);
/* The same for the own sparks pick() chooses (and any an abandoned
 * transaction holds). */
void mpx__cache_mark_unwritten_if(mpx__cache_t *c, uint64_t t_ns,
                                  bool (*pick)(const void *id, size_t len, void *ctx), void *ctx);
/* Forget every own spark (writer quiesced). */
void mpx__cache_drop_own(mpx__cache_t *c);
/* Is there an own record (connected, or a disconnect not yet committed)? */
bool mpx__cache_has_own(mpx__cache_t *c, const void *id, size_t len);
void mpx__cache_stats(mpx__cache_t *c, mpx__cache_stats_t *st);

/* ---- hist.c: commit-latency histogram ------------------------------------- */

#define MPX__HIST_BUCKETS 1216
typedef struct mpx__hist {
    atomic_uint_fast64_t b[MPX__HIST_BUCKETS];
    atomic_uint_fast64_t count, max;
} mpx__hist_t;
void mpx__hist_add(mpx__hist_t *h, uint64_t v);
/* Value at quantile q (0..1), 0 if empty. */
uint64_t mpx__hist_quantile(const mpx__hist_t *h, double q);

/* ---- writer.c ---------------------------------------------------------- */

typedef struct mpx__writer mpx__writer_t;

int mpx__writer_start(mpx_t *m);
/* Stop the thread after trying to write what is queued for at most
 * timeout_ms; returns the number of sparks left unwritten. */
size_t mpx__writer_stop(mpx_t *m, uint32_t timeout_ms);
/* A change was queued in the cache: wake the writer if it sleeps. */
void mpx__writer_kick(mpx_t *m);
int mpx__writer_flush(mpx_t *m, uint32_t timeout_ms);
/* Start writing for `addr` (registered; `gen` its generation in the sharded
 * layout) and rewrite every local spark, in one step: no cycle can run
 * between the two; or stop writing (addr NULL): when stopping, waits until
 * no batch is in flight. */
void mpx__writer_activate(mpx_t *m, const char *addr, const char *gen);
/* Stop writing until the next activation, as activate(NULL) does, but
 * flush waiters keep waiting (for the writes after the activation). */
void mpx__writer_pause(mpx_t *m);
/* Ask for every local spark to be written again and stale entries of this
 * server removed (after this server was found missing, Redis restarted). */
void mpx__writer_resync(mpx_t *m);
/* The heartbeat checked this server's registration against Redis (after
 * any restart it saw): flush answers held since the writer saw a restart
 * may go, unless it saw another since mpx__writer_restarts() returned
 * `restarts` (read at the start of the tick). */
uint64_t mpx__writer_restarts(mpx_t *m);
void mpx__writer_checked(mpx_t *m, uint64_t restarts);

/* ---- lookup.c -------------------------------------------------------------- */

typedef struct mpx__lookup mpx__lookup_t;
int mpx__lookup_start(mpx_t *m);
void mpx__lookup_stop(mpx_t *m);

/* ---- lifecycle.c --------------------------------------------------------- */

enum mpx__state {
    MPX__UNREGISTERED = 0,
    MPX__REGISTERING,  /* address known, registration not yet confirmed */
    MPX__REGISTERED,
};

int mpx__lifecycle_start(mpx_t *m);
void mpx__lifecycle_stop(mpx_t *m);
/* Ask the heartbeat thread for a tick now (any thread). */
void mpx__lifecycle_kick(mpx_t *m);
/* Copy the address (empty if none) and return the state, under addr_mu. */
int mpx__get_address(mpx_t *m, char out[MPX_ADDRESS_MAX + 1]);
/* Copy the generation (sharded; empty before the first registration) and
 * return the state, under addr_mu. */
int mpx__get_gen(mpx_t *m, char out[64]);

/* ---- the handle ---------------------------------------------------------- */

typedef struct mpx__counters {
    atomic_uint_fast64_t committed, coalesced, batches, redis_errors, retries,
        heartbeats, reaped_servers, reaped_sparks, reregistered;
} mpx__counters_t;

struct mpx {
    mpx_options_t opt;           /* validated; strings point into the copies */
    char *redis_url, *ns;
    mpx__redis_endpoint_t ep;
    mpx__keys_t keys;
    char instance[40];           /* unique id of this registry instance */
    mpx__counters_t n;

    /* Lifecycle: life_mu serialises register/unregister/heartbeat work
     * (which does I/O); state and address change only with both life_mu and
     * addr_mu held, so readers need only the short addr_mu. */
    pthread_mutex_t life_mu;
    pthread_mutex_t addr_mu;
    int state;                   /* enum mpx__state */
    char address[MPX_ADDRESS_MAX + 1];
    char gen[64];                /* sharded: this registration's generation
                                  * (written with both locks held, like state) */
    bool address_from_api;       /* set by mpx_register (EADDRINUSE is final) */
    atomic_uint_fast64_t token_seq;
    mpx__conn_t life_conn;       /* used under life_mu */

    /* Heartbeat thread. */
    pthread_t hb_thread;
    bool hb_started;
    pthread_mutex_t hb_mu;
    pthread_cond_t hb_cond;
    bool hb_stop, hb_kick;

    /* Lookups and mpx_servers, mpx_reap. */
    pthread_mutex_t sync_mu;
    mpx__conn_t sync_conn;

    mpx__cache_t *cache;
    const mpx__srv_t *_Atomic self_srv; /* interned own address, NULL if none */
    mpx__writer_t *writer;
    mpx__lookup_t *lookup;
    mpx__hist_t commit_hist;
    atomic_bool closing;
};

/* registry.c helpers shared with lookup.c */
bool mpx__local_hit(mpx_t *m, const void *id, size_t len, const mpx__srv_t **srv);
void mpx__learn(mpx_t *m, const void *id, size_t len, const char *addr, size_t alen);
/* Look up the owners of ids[0..n) in Redis on `c` (the caller owns it): one
 * HMGET per shard and per 1000 ids, pipelined. found() runs for each id
 * that has an owner. 0, or an error (then found() may have run for some). */
int mpx__owners(mpx_t *m, mpx__conn_t *c, size_t n, const void *const *ids, const size_t *lens,
                void (*found)(void *ctx, size_t i, const char *addr, size_t alen), void *ctx);
mpx_list_t *mpx__list_new(size_t n);
int mpx__list_set(mpx_list_t *l, size_t i, const char *s, size_t n);

/* Non-zero while this thread runs an mpx callback: lifecycle calls and
 * flush made from a callback would wait on the thread itself, so they
 * refuse with MPX_ESTATE. */
extern _Thread_local int mpx__in_callback;
int mpx__refuse_in_callback(const char *what);
/* Fire on_register (any thread that registered). */
void mpx__emit_register(mpx_t *m, const char *address);

/* Fire on_error (from a library thread). */
void mpx__report(mpx_t *m, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A fresh unique token for aside keys. */
void mpx__token(mpx_t *m, char out[64]);

/* Reaping, shared by the heartbeat thread and mpx_reap(). Uses `c`. */
int mpx__reap_pass(mpx_t *m, mpx__conn_t *c, size_t *reaped,
                   uint64_t drain_budget_ms, bool *more);
int mpx__drain_all(mpx_t *m, mpx__conn_t *c, uint64_t budget_ms, bool *more);

#endif /* MPX_INTERNAL_H */
