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
 *   table.c      the local spark table (this server's sparks)
 *   writer.c     the writer thread: queue of changes -> pipelined batches
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
    MPX__SCRIPT_COUNT
};

const char *mpx__script_source(int id);
const char *mpx__script_name(int id);

typedef struct mpx__keys {
    char *ns;          /* "metroplex:" */
    size_t ns_len;
    char *sparks;      /* NS "sparks" */
    size_t sparks_len;
    char *servers;     /* NS "servers" */
    size_t servers_len;
    char *drains;      /* NS "drains" (our extension) */
    size_t drains_len;
} mpx__keys_t;

int mpx__keys_init(mpx__keys_t *k, const char *ns);
void mpx__keys_free(mpx__keys_t *k);
/* NS + address  (alive key) */
int mpx__key_alive(const mpx__keys_t *k, const char *addr, mpx__argv_t *a);
/* NS + address + ":sparks"  (the server's spark set) */
int mpx__key_set(const mpx__keys_t *k, const char *addr, mpx__argv_t *a);
/* NS + address + ":lease"  (our extension) */
int mpx__key_lease(const mpx__keys_t *k, const char *addr, mpx__argv_t *a);
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
} mpx__conn_t;

void mpx__conn_init(mpx__conn_t *c, const mpx__redis_endpoint_t *ep,
                    uint32_t connect_timeout_ms, uint32_t command_timeout_ms,
                    const char *name, atomic_uint_fast64_t *errors);
/* Connect if needed (respecting backoff unless `force`). 0 or an error with
 * the message set. */
int mpx__conn_ensure(mpx__conn_t *c, bool force);
void mpx__conn_close(mpx__conn_t *c);
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

uint64_t mpx__now_ms(void);      /* monotonic */
uint64_t mpx__epoch_ms(void);    /* wall clock, for alive-key values */

/* ---- table.c: this server's sparks ----------------------------------- */

typedef struct mpx__table mpx__table_t;

mpx__table_t *mpx__table_create(size_t size_hint);
void mpx__table_destroy(mpx__table_t *t);
/* Called under the shard lock when an add or del changes the table, so
 * that queueing the change is atomic with it; a negative return undoes the
 * change and is returned. */
typedef int (*mpx__table_hook)(const void *id, size_t len, void *data);
/* 1 if inserted, 0 if already present, <0 error. */
int mpx__table_add(mpx__table_t *t, const void *id, size_t len, mpx__table_hook hook,
                   void *data);
/* 1 if removed, 0 if absent, <0 error. */
int mpx__table_del(mpx__table_t *t, const void *id, size_t len, mpx__table_hook hook,
                   void *data);
bool mpx__table_has(mpx__table_t *t, const void *id, size_t len);
size_t mpx__table_count(mpx__table_t *t);
void mpx__table_clear(mpx__table_t *t);
/* Call fn for every id, shard by shard (each shard locked while it is
 * walked). fn returns non-zero to stop. */
typedef int (*mpx__table_fn)(const void *id, size_t len, void *data);
int mpx__table_each(mpx__table_t *t, mpx__table_fn fn, void *data);

/* ---- writer.c ---------------------------------------------------------- */

enum { MPX__OP_CONNECT = 1, MPX__OP_DISCONNECT = 2 };

typedef struct mpx__writer mpx__writer_t;

int mpx__writer_start(mpx_t *m);
/* Stop the thread after trying to write what is queued for at most
 * timeout_ms; returns the number of changes left unwritten. */
size_t mpx__writer_stop(mpx_t *m, uint32_t timeout_ms);
int mpx__writer_push(mpx_t *m, int op, const void *id, size_t len);
int mpx__writer_flush(mpx_t *m, uint32_t timeout_ms);
/* Start writing for `addr` (registered), or stop writing (addr NULL): when
 * stopping, waits until no batch is in flight. */
void mpx__writer_activate(mpx_t *m, const char *addr);
/* Drop every queued change (after unregister). */
void mpx__writer_discard(mpx_t *m);
/* Ask for every local spark to be written again (after this server was
 * found missing from Redis). */
void mpx__writer_resync(mpx_t *m);
uint64_t mpx__writer_pending(mpx_t *m);

/* ---- lifecycle.c --------------------------------------------------------- */

enum mpx__state {
    MPX__UNREGISTERED = 0,
    MPX__REGISTERING,  /* address known, registration not yet confirmed */
    MPX__REGISTERED,
};

int mpx__lifecycle_start(mpx_t *m);
void mpx__lifecycle_stop(mpx_t *m);
/* Copy the address (empty if none) and return the state, under addr_mu. */
int mpx__get_address(mpx_t *m, char out[MPX_ADDRESS_MAX + 1]);

/* ---- the handle ---------------------------------------------------------- */

typedef struct mpx__counters {
    atomic_uint_fast64_t queued, committed, batches, redis_errors, retries,
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

    mpx__table_t *table;
    mpx__writer_t *writer;
    atomic_bool closing;
};

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
