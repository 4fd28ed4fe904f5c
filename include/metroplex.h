/*
 * metroplex.h - the public API of metroplex-c.
 *
 * metroplex-c keeps the registry of which server in a cluster of real-time
 * gateways holds each connection (a "spark"), in Redis, with the same keys
 * and values as the Node.js plugin `metroplex` for Primus, so Node servers
 * and C gateways can share one cluster.
 *
 * Conventions
 * - Everything public starts with `mpx_` (functions, types) or `MPX_`
 *   (macros, constants). This is the only public header.
 * - Functions that can fail return 0 (MPX_OK) or a negative MPX_E* code.
 *   mpx_strerror() gives a generic text for a code; mpx_last_error() gives
 *   the detailed message of the most recent failing call made by the calling
 *   thread (e.g. which option field was wrong, what Redis answered).
 * - Ids are binary-safe (pointer and length). Addresses and the namespace
 *   are NUL-terminated text.
 * - Each function documents which threads may call it ("Thread-safety:")
 *   and who owns the memory it returns.
 * - Callbacks (on_register, on_unregister, on_error) run on library threads
 *   (the heartbeat or writer thread) or on the thread that made the call
 *   that triggered them, as documented for each; they must not block for
 *   long and must not call mpx_destroy(). mpx_register, mpx_unregister,
 *   mpx_reap and mpx_flush called from inside a callback return MPX_ESTATE
 *   (they would wait on the thread running the callback).
 */
#ifndef METROPLEX_H
#define METROPLEX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility; everything declared here is
 * its exported interface. */
#if defined(MPX_BUILDING) && defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define MPX_VERSION_MAJOR 0
#define MPX_VERSION_MINOR 1
#define MPX_VERSION_PATCH 0

/* Longest spark id accepted, in bytes. */
#define MPX_ID_MAX 1024
/* Longest server address accepted, in bytes, excluding the NUL. */
#define MPX_ADDRESS_MAX 255
/* Longest namespace accepted, in bytes, excluding the NUL. */
#define MPX_NAMESPACE_MAX 128

/*
 * Error codes: negative integers. The X-macro yields the enum, mpx_strerror()
 * and mpx_err_name().
 */
#define MPX_ERRNO_MAP(XX)                                                      \
    XX(EINVAL, -1, "invalid argument")                                        \
    XX(ENOMEM, -2, "out of memory")                                           \
    XX(ECONN, -3, "cannot reach Redis")                                       \
    XX(ETIMEDOUT, -4, "timed out")                                            \
    XX(EREDIS, -5, "Redis answered with an error")                            \
    XX(EPROTO, -6, "unexpected reply from Redis")                             \
    XX(ETOOBIG, -7, "value too long")                                         \
    XX(ESTATE, -8, "not allowed in the current state")                        \
    XX(EADDRINUSE, -9, "address held by another live process")                \
    XX(ENOTFOUND, -10, "not found")                                           \
    XX(ENOSPC, -11, "buffer too small")                                       \
    XX(ECLOSED, -12, "registry is shutting down")                             \
    XX(ETHREAD, -13, "cannot start a thread")

typedef enum mpx_errno {
    MPX_OK = 0,
#define MPX__ERRNO_ENUM(name, val, msg) MPX_##name = (val),
    MPX_ERRNO_MAP(MPX__ERRNO_ENUM)
#undef MPX__ERRNO_ENUM
} mpx_errno_t;

/* Generic description of an error code; never NULL; static storage.
 * Thread-safety: any thread. */
const char *mpx_strerror(int err);
/* Symbolic name of an error code ("MPX_EINVAL"); never NULL; static storage.
 * Thread-safety: any thread. */
const char *mpx_err_name(int err);
/* Detailed message of the most recent call on this thread that returned an
 * error (e.g. "options.interval_ms (1000) must be greater than
 * options.latency_ms (2000)"). Empty string if none. The pointer is valid
 * until the next mpx_ call on the same thread.
 * Thread-safety: any thread; the message is per thread. */
const char *mpx_last_error(void);

/* The registry handle. Opaque. */
typedef struct mpx mpx_t;

/* on_register / on_unregister: `address` is valid during the call only.
 * on_error: `err` is an MPX_E* code, `message` is valid during the call only.
 * See mpx_options_t for which thread runs each. */
typedef void (*mpx_event_cb)(mpx_t *mpx, const char *address, void *data);
typedef void (*mpx_error_cb)(mpx_t *mpx, int err, const char *message,
                             void *data);

/*
 * Creation options. Always initialise with mpx_options_init() (or
 * MPX_OPTIONS_INIT), then set what you need: fields added in later versions
 * are appended, and `struct_size` tells the library which fields exist.
 * Strings are copied by mpx_create(); they need not outlive the call.
 */
typedef struct mpx_options {
    size_t struct_size; /* sizeof(mpx_options_t); set by the initialiser */

    /* Redis endpoint: "redis://[[user]:password@]host[:port][/db]" or
     * "unix:///path/to/socket[?db=N][&user=U][&password=P]"; user and
     * password may be percent-encoded. Default "redis://127.0.0.1:6379".
     * Error messages show the URL with the password replaced by "***". */
    const char *redis_url;
    uint32_t connect_timeout_ms; /* default 2000; 1..600000 */
    uint32_t command_timeout_ms; /* default 5000; 1..600000 */

    /* Key prefix, without the colon. Default "metroplex". 1..MPX_NAMESPACE_MAX
     * printable ASCII bytes, no spaces, no '{' or '}'. */
    const char *ns;

    /* This server's public address: "http://host:port" or "https://host:port",
     * no path, no query, no user info. NULL to register later with
     * mpx_register(). When set, registration starts in the background at
     * creation and is reported through on_register / on_error. */
    const char *address;

    /* The alive key expires after interval_ms; the heartbeat refreshes it
     * every interval_ms - latency_ms. Defaults 300000 and 2000, as the
     * original. interval_ms must be greater than latency_ms. Node and C
     * servers sharing a namespace must use the same interval. */
    uint32_t interval_ms;
    uint32_t latency_ms;

    /* Address lease (our extension, see docs/keyspace.md): a live C process
     * holds its address with a lease key refreshed every lease_ms / 3. Another
     * process cannot register the same address while the lease exists; a
     * gateway restarted after a crash can register again at most lease_ms
     * after the crash. Default 10000; 300..interval_ms. */
    uint32_t lease_ms;

    /* Cleanup of a dead server's sparks runs in chunks of this many ids per
     * Redis script call. Default 1000; 1..5000. */
    uint32_t reap_chunk;

    /* The writer thread sends a batch when it holds batch_max changes or
     * when the oldest waited batch_delay_ms. Defaults 4096 and 2. (In the
     * sharded layout one round may take up to 1000 changes per shard, at
     * most 16 batch_max, since it is split into one command per shard.) */
    uint32_t batch_max;   /* 1..1000000 */
    uint32_t batch_delay_ms; /* 0..10000 */

    /* Expected number of local sparks; presizes the tables. Default 0. */
    size_t size_hint;

    /* Events. Each callback may be NULL; `*_data` is passed back as is.
     * on_register: after this server's address is registered, on the thread
     *   that called mpx_register() or on the heartbeat thread (background
     *   registration, re-registration after being reaped).
     * on_unregister: on the thread that called mpx_unregister().
     * on_error: on the heartbeat or writer thread, for failures of work the
     *   library does in the background (Redis down, batch retried, address
     *   taken over, ...); also on the caller's thread from mpx_destroy()
     *   (changes that could not be written) and mpx_reap() (one report per
     *   broken cleanup, besides the error it returns). Other calls that
     *   return an error do not also report it here. */
    mpx_event_cb on_register;
    void *on_register_data;
    mpx_event_cb on_unregister;
    void *on_unregister_data;
    mpx_error_cb on_error;
    void *on_error_data;

    /* Lookups may cache other servers' sparks for up to remote_ttl_ms
     * (0, the default: never; each lookup of a remote spark asks Redis).
     * Cached entries of a server are dropped when it is seen reaped or
     * unregistered. At most remote_max such entries are kept (default
     * 1000000). This server's own sparks are always answered from memory. */
    uint32_t remote_ttl_ms;
    size_t remote_max;

    /* Key layout (docs/keyspace.md), one of enum mpx_layout. The default,
     * MPX_LAYOUT_AUTO, is the Node-compatible layout on a single Redis and
     * the sharded layout on a "redis-cluster://" URL. The node layout cannot
     * run on Redis Cluster (MPX_EINVAL). Every process sharing a namespace
     * must use the same layout; in the sharded layout, the same `shards`. */
    int layout;
    /* Sharded layout: the spark hash and every server's spark set are split
     * into this many shards, spread evenly over the cluster's hash slots.
     * Default 64; 1..16384. The first registration records the layout in
     * "{ns}:layout"; a process configured differently fails to register with
     * MPX_EINVAL. */
    uint32_t shards;
} mpx_options_t;

enum mpx_layout {
    MPX_LAYOUT_AUTO = 0,    /* node on a single Redis, sharded on a cluster */
    MPX_LAYOUT_NODE = 1,    /* the original's keys: shared with Node metroplex */
    MPX_LAYOUT_SHARDED = 2, /* hash-tagged shards: runs on Redis Cluster */
};

#define MPX_OPTIONS_INIT                                                       \
    {                                                                          \
        sizeof(mpx_options_t), NULL, 2000, 5000, NULL, NULL, 300000, 2000,     \
            10000, 1000, 4096, 2, 0, NULL, NULL, NULL, NULL, NULL, NULL, 0,    \
            1000000, MPX_LAYOUT_AUTO, 64                                       \
    }

/* Fill `opts` with the defaults. Thread-safety: any thread. */
void mpx_options_init(mpx_options_t *opts);

/*
 * Create a registry: validate the options, start the heartbeat and writer
 * threads. Does not wait for Redis: an unreachable Redis is reported later
 * (calls return MPX_ECONN, on_error fires) and the library reconnects with
 * backoff.
 * Returns 0 and sets *out, or an error (MPX_EINVAL with mpx_last_error()
 * naming the field, MPX_ETOOBIG for an over-long options.address;
 * MPX_ENOMEM; MPX_ETHREAD); on error *out is NULL and
 * nothing is left allocated.
 * Ownership: the caller owns *out and frees it with mpx_destroy().
 * Thread-safety: any thread.
 */
int mpx_create(const mpx_options_t *opts, mpx_t **out);

/*
 * Stop the registry: write what is queued (waiting at most
 * 2 × command_timeout_ms), stop the threads, free everything. Does not
 * unregister: call mpx_unregister() first for a clean shutdown; without it
 * the address stays registered until its alive key expires and another
 * server reaps it, as after a crash. Changes that could not be written are
 * reported through on_error. NULL is accepted.
 * Thread-safety: once, from a thread that is not running an mpx callback,
 * after every other call on `mpx` has returned.
 */
void mpx_destroy(mpx_t *mpx);

/*
 * Register this server's address (see mpx_options_t.address for the form).
 * Atomically: if another live process holds a lease on the address, fail
 * with MPX_EADDRINUSE (mpx_last_error() says when the lease expires);
 * otherwise move the sparks a previous process left under the address aside
 * (they are cleaned in the background, in chunks), add the address to the
 * servers set, set the alive key and the lease, and start heartbeating.
 * Sparks connected before registration are then written.
 * Blocks for at most about connect_timeout_ms + 3 × command_timeout_ms.
 * Returns 0; MPX_EINVAL (bad address) or MPX_ETOOBIG (longer than
 * MPX_ADDRESS_MAX); MPX_ESTATE (already registered with
 * another address); MPX_EADDRINUSE; MPX_ECONN / MPX_ETIMEDOUT (Redis
 * unreachable: the address is kept and the heartbeat thread retries in the
 * background, reporting success through on_register); MPX_EREDIS.
 * Registering the address already registered is a no-op returning 0.
 * Thread-safety: any thread; serialised with the other lifecycle calls.
 */
int mpx_register(mpx_t *mpx, const char *address);

/*
 * Unregister: stop heartbeating, remove this server and all its sparks from
 * Redis (in chunks), forget the local sparks and any queued changes, fire
 * on_unregister. A no-op returning 0 when not registered.
 * Returns 0, or MPX_ECONN / MPX_ETIMEDOUT / MPX_EREDIS; on error the server
 * stays unregistered locally and whatever remains in Redis is reaped by
 * the other servers once the alive key expires.
 * Thread-safety: any thread; serialised with the other lifecycle calls.
 */
int mpx_unregister(mpx_t *mpx);

/*
 * Copy this server's address (registered, or waiting to be) into `buf`.
 * On entry *len is the size of buf; on return it is the length of the
 * address excluding the NUL (also when MPX_ENOSPC is returned).
 * Returns 0, MPX_ENOTFOUND (no address), MPX_ENOSPC.
 * Thread-safety: any thread.
 */
int mpx_address(mpx_t *mpx, char *buf, size_t *len);

/* A list of strings returned by the library. Free with mpx_list_free().
 * items[i] is NUL-terminated and lens[i] is its length; for mpx_sparks()
 * an unknown id has items[i] == NULL. */
typedef struct mpx_list {
    size_t count;
    char **items;
    size_t *lens;
} mpx_list_t;

/* Free a list; NULL is accepted. Thread-safety: any thread. */
void mpx_list_free(mpx_list_t *list);

/*
 * The registered servers (SMEMBERS of the servers set), without this
 * server's own address unless include_self is non-zero.
 * Returns 0 and sets *out (caller frees with mpx_list_free()), or
 * MPX_ECONN / MPX_ETIMEDOUT / MPX_EREDIS / MPX_EPROTO / MPX_ENOMEM.
 * Thread-safety: any thread (calls are serialised on one connection).
 */
int mpx_servers(mpx_t *mpx, int include_self, mpx_list_t **out);

/*
 * Record that spark `id` connected to this server. Never waits on the
 * network: the change is queued and written by the writer thread (HSET of
 * the sparks hash and SADD of this server's set, many sparks per command).
 * Sparks connected before registration are written once registered.
 * Returns 0, MPX_EINVAL (NULL or empty id), MPX_ETOOBIG (len > MPX_ID_MAX),
 * MPX_ENOMEM, MPX_ECLOSED.
 * Thread-safety: any thread, concurrently.
 */
int mpx_connect(mpx_t *mpx, const void *id, size_t len);

/*
 * Record that spark `id` disconnected from this server. Queued like
 * mpx_connect(); in Redis the hash field is removed only while it still
 * names this server. Disconnecting an id that is not connected here is not
 * an error (nothing is written).
 * Returns as mpx_connect().
 * Thread-safety: any thread, concurrently.
 */
int mpx_disconnect(mpx_t *mpx, const void *id, size_t len);

/*
 * Wait until every change queued before the call is committed in Redis.
 * After Redis restarted (or this server was reaped and registers again),
 * that includes the rewrite of every local spark: 0 means Redis holds them.
 * Returns 0 (also when nothing is pending); MPX_ETIMEDOUT (not all written
 * within timeout_ms: the changes stay queued and are still written later);
 * MPX_ESTATE (not registered, or registration still in progress, while
 * sparks wait to be written: nothing can be written yet; or writing stopped
 * during the wait: mpx_unregister, the address taken over by another
 * instance, or registration given up; or called from a callback).
 * Thread-safety: any thread, concurrently.
 */
int mpx_flush(mpx_t *mpx, uint32_t timeout_ms);

/*
 * Look up the server that holds spark `id`: this server's own sparks are
 * answered from memory, others with one HGET. The address is copied into
 * buf as for mpx_address().
 * Returns 0, MPX_ENOTFOUND (unknown id), MPX_ENOSPC, MPX_EINVAL,
 * MPX_ETOOBIG, MPX_ECONN / MPX_ETIMEDOUT / MPX_EREDIS / MPX_EPROTO.
 * Thread-safety: any thread (Redis calls are serialised on one connection).
 */
int mpx_spark(mpx_t *mpx, const void *id, size_t len, char *buf,
              size_t *buflen);

/*
 * Look up many sparks at once: one HMGET for all those not held here.
 * *out gets one item per id, NULL where unknown (caller frees with
 * mpx_list_free()). `lens` may be NULL when every id is NUL-terminated text.
 * Returns 0, or an error as mpx_spark() (MPX_EINVAL if any id is invalid,
 * mpx_last_error() says which).
 * Thread-safety: as mpx_spark().
 */
int mpx_sparks(mpx_t *mpx, const void *const *ids, const size_t *lens,
               size_t n, mpx_list_t **out);

/*
 * Reap now, on the calling thread: every registered server other than this
 * one whose alive key and lease are both gone is removed, and its sparks
 * are cleaned in chunks (as are any cleanups another process left
 * unfinished). The heartbeat thread does the same every interval - latency.
 * *reaped (may be NULL) gets the number of servers removed by this call.
 * Returns 0 or a Redis error code.
 * Thread-safety: any thread; safe to run concurrently with other servers
 * reaping the same dead server.
 */
int mpx_reap(mpx_t *mpx, size_t *reaped);

/* Counters, readable at any time. */
typedef struct mpx_stats {
    uint64_t local_sparks;   /* sparks connected here now */
    uint64_t queued;         /* connect/disconnect calls that changed a spark */
    uint64_t committed;      /* changes acknowledged by Redis */
    uint64_t coalesced;      /* changes cancelled out before being written */
    uint64_t pending;        /* sparks whose change is not yet committed */
    uint64_t batches;        /* MULTI/EXEC transactions committed */
    uint64_t redis_errors;   /* failed Redis round trips (all threads) */
    uint64_t retries;        /* transactions retried */
    uint64_t heartbeats;     /* alive-key refreshes */
    uint64_t reaped_servers; /* dead servers removed by this process */
    uint64_t reaped_sparks;  /* hash fields removed while cleaning them */
    uint64_t reregistered;   /* times this server put itself back */
    uint64_t cache_entries;  /* records in the cache (own, tombstones, remote) */
    uint64_t cache_bytes;    /* memory held by the cache's records and tables */
    uint64_t lookup_hits;    /* lookups answered from memory */
    uint64_t lookup_misses;  /* lookups that needed Redis */
    /* Commit latency, from the connect()/disconnect() call to the
     * acknowledgement of its transaction by Redis, in microseconds, over the
     * registry's lifetime (log-linear histogram, ~3% resolution). */
    uint64_t commit_latency_p50_us;
    uint64_t commit_latency_p99_us;
    uint64_t commit_latency_p999_us;
    uint64_t commit_latency_max_us;
    uint64_t commit_latency_count;
} mpx_stats_t;

/* Fill *out. Returns 0 or MPX_EINVAL. Thread-safety: any thread; values are
 * read without a common lock, each one is individually consistent. */
int mpx_stats(mpx_t *mpx, mpx_stats_t *out);

/*
 * Non-blocking lookup for event-loop gateways: resolve `n` ids as
 * mpx_sparks() does, then call cb(mpx, err, result, data) exactly once, on
 * the registry's lookup thread ("mpx-lookup"), never on the calling thread.
 * err is 0 and `result` has one item per id (NULL where unknown), or err is
 * an MPX_E* code and result is NULL. The callback owns `result` and frees it
 * with mpx_list_free(). Requests from all threads are pipelined together.
 * The ids are copied before the call returns.
 * Returns 0 (cb will run), or MPX_EINVAL / MPX_ETOOBIG (a bad id; which one
 * in mpx_last_error()), MPX_ENOMEM, MPX_ECLOSED: then cb never runs.
 * Callbacks still pending at mpx_destroy() run with MPX_ECLOSED.
 * Thread-safety: any thread, concurrently.
 */
typedef void (*mpx_lookup_cb)(mpx_t *mpx, int err, mpx_list_t *result, void *data);
int mpx_sparks_async(mpx_t *mpx, const void *const *ids, const size_t *lens, size_t n,
                     mpx_lookup_cb cb, void *data);

/* ---- cross-server messages (omega-supreme) ---- */
/*
 * Forward a message to sparks held by any server of the cluster, and receive
 * the messages other servers forward to this one, in the HTTP format of the
 * Node.js plugin omega-supreme (npm 3.0.1) as used by metroplex's
 * forward.spark / forward.sparks / forward.broadcast, so C and Node servers
 * can message each other's sparks. docs/omega.md has the details.
 *
 * Wire format (the original's): one HTTP request per server, method PUT to
 * "/primus/omega/supreme" with basic auth "omega":"supreme" (all
 * configurable), JSON body {"msg": MESSAGE, "sparks": TARGET}, where TARGET
 * is one id (a string), a list of ids (an array), or "" for every spark of
 * the server. The reply is {"ok": true, "send": N} (N sparks written) or
 * {"ok": false, "reason": "..."} with status 401 (bad credentials) or 500
 * (bad body).
 *
 * Messages are JSON text, passed and delivered as text (pointer + length):
 * the library validates them but never re-serialises them, so numbers of any
 * size and any Unicode reach the delivery callback as they were sent.
 */

typedef struct mpx_omega mpx_omega_t;

/* Write `msg` (JSON text, NUL-terminated, msg_len bytes) to spark `id` (NUL-
 * terminated, id_len bytes) if it is connected to this server. Return 1 if it
 * was written, 0 if the spark is not here. Runs on the thread that called
 * mpx_omega_handle(), a listener thread, the sending thread (mpx-omega), or
 * the caller of a blocking mpx_forward_*(); must be thread-safe, must not
 * block for long and must not call mpx_forward_*() (blocking forms) or
 * mpx_omega_destroy(). Pointers are valid during the call only. */
typedef int (*mpx_omega_deliver_cb)(mpx_omega_t *om, const char *id, size_t id_len,
                                    const char *msg, size_t msg_len, void *data);
/* Write `msg` to every spark connected to this server; return how many.
 * Same threads and rules as mpx_omega_deliver_cb. */
typedef size_t (*mpx_omega_deliver_all_cb)(mpx_omega_t *om, const char *msg, size_t msg_len,
                                           void *data);

/* Options. Initialise with mpx_omega_options_init() or MPX_OMEGA_OPTIONS_INIT;
 * strings are copied by mpx_omega_create(). Servers that message each other
 * must agree on method, path, username and password. */
typedef struct mpx_omega_options {
    size_t struct_size;          /* sizeof(mpx_omega_options_t) */
    const char *method;          /* NULL: "PUT"; upper-cased; 1..16 letters */
    const char *path;            /* NULL: "/primus/omega/supreme"; starts with '/' */
    const char *username;        /* NULL: "omega"; no ':' */
    const char *password;        /* NULL: "supreme" */
    uint32_t concurrency;        /* requests in flight at most; default 20; 1..10000 */
    uint32_t connect_timeout_ms; /* default 2000; 1..600000 */
    uint32_t request_timeout_ms; /* whole request; default 10000; 1..600000 */
    size_t body_max;             /* largest request body received (413 above);
                                    default 1 MiB; 64..1 GiB */
    mpx_omega_deliver_cb deliver;         /* NULL: no spark is ever here */
    mpx_omega_deliver_all_cb deliver_all; /* NULL: broadcasts reach nobody here */
    void *deliver_data;
} mpx_omega_options_t;

#define MPX_OMEGA_OPTIONS_INIT                                                 \
    {                                                                          \
        sizeof(mpx_omega_options_t), NULL, NULL, NULL, NULL, 20, 2000, 10000,  \
            1048576, NULL, NULL, NULL                                          \
    }

/* Fill `opts` with the defaults. Thread-safety: any thread. */
void mpx_omega_options_init(mpx_omega_options_t *opts);

/*
 * Create a messenger on registry `mpx` (NULL: receive only; sending then
 * fails with MPX_ESTATE). Starts the sending thread (mpx-omega, libcurl multi
 * interface, connections kept open and reused). Returns 0 and sets *out, or
 * MPX_EINVAL (mpx_last_error() names the option), MPX_ENOMEM, MPX_ETHREAD.
 * Ownership: free with mpx_omega_destroy(), before mpx_destroy(mpx).
 * Thread-safety: any thread.
 */
int mpx_omega_create(mpx_t *mpx, const mpx_omega_options_t *opts, mpx_omega_t **out);

/*
 * Stop the listener (if any), fail the sends still in flight (their
 * callbacks run with the servers reported as MPX_ECLOSED), stop the sending
 * thread, free everything. NULL is accepted.
 * Thread-safety: once, after every other call on `om` has returned, not
 * from a callback.
 */
void mpx_omega_destroy(mpx_omega_t *om);

/* ---- sending ---- */

/* What went wrong with one server. */
typedef struct mpx_forward_failure {
    char *server;  /* its address */
    int err;       /* MPX_ECONN (cannot connect), MPX_ETIMEDOUT, MPX_EPROTO (non-200
                      status or a reply without "ok": true), MPX_ECLOSED, MPX_ENOMEM */
    int status;    /* HTTP status, 0 if no reply */
    char *reason;  /* the reply's "reason", or a description */
    size_t sparks; /* how many of the ids were for it (0 for a broadcast) */
} mpx_forward_failure_t;

typedef struct mpx_forward_result {
    uint64_t sent;     /* sparks reached: local ones + the "send" of each reply */
    uint64_t local;    /* of which on this server */
    size_t servers;    /* other servers contacted */
    size_t unknown;    /* ids not in the registry (spark and sparks) */
    size_t nfailed;    /* servers that failed; the others still count */
    mpx_forward_failure_t *failed;
} mpx_forward_result_t;

/* Free a result; NULL is accepted. Thread-safety: any thread. */
void mpx_forward_result_free(mpx_forward_result_t *result);

/*
 * Send `msg` (JSON text of msg_len bytes; 0: strlen) to spark `id`, to the
 * sparks `ids` (lens NULL: NUL-terminated ids), or to every spark of the
 * cluster. Ids are resolved like mpx_sparks() (memory first, one HMGET for
 * the rest); broadcast asks for the servers like mpx_servers(). Sparks of
 * this server get the message through the deliver callbacks, on the calling
 * thread; the others through one HTTP request per server (spark: "sparks" is
 * the id; sparks: an array; broadcast: ""), at most `concurrency` at once.
 * Blocks until every server answered or failed (at most about
 * connect + request timeout after the lookup).
 * Returns 0 and sets *out (free with mpx_forward_result_free()) once the
 * message went wherever it could: per-server failures are in the result, one
 * failing server does not stop the others. Otherwise (no result):
 * MPX_EINVAL (bad argument; msg not valid JSON), MPX_ETOOBIG (id), MPX_ESTATE
 * (no registry), MPX_ECONN / MPX_ETIMEDOUT / MPX_EREDIS (the lookup failed),
 * MPX_ENOMEM, MPX_ECLOSED.
 * Thread-safety: any thread, concurrently; not from a deliver callback.
 */
int mpx_forward_spark(mpx_omega_t *om, const void *id, size_t len, const char *msg,
                      size_t msg_len, mpx_forward_result_t **out);
int mpx_forward_sparks(mpx_omega_t *om, const void *const *ids, const size_t *lens, size_t n,
                       const char *msg, size_t msg_len, mpx_forward_result_t **out);
int mpx_forward_broadcast(mpx_omega_t *om, const char *msg, size_t msg_len,
                          mpx_forward_result_t **out);

/*
 * Non-blocking forms: check the arguments, copy them, return at once. `cb`
 * gets the result (the callee owns it and frees it with
 * mpx_forward_result_free()) or an error (result NULL) on a library thread
 * (mpx-omega, or mpx-lookup when the lookup failed); local deliveries happen
 * on mpx-omega. Returns 0 (cb will be called exactly once) or an error as
 * the blocking forms (cb is not called).
 * Thread-safety: any thread, concurrently; cb must not block for long and
 * must not call mpx_omega_destroy().
 */
typedef void (*mpx_forward_cb)(mpx_omega_t *om, int err, mpx_forward_result_t *result,
                               void *data);
int mpx_forward_spark_async(mpx_omega_t *om, const void *id, size_t len, const char *msg,
                            size_t msg_len, mpx_forward_cb cb, void *data);
int mpx_forward_sparks_async(mpx_omega_t *om, const void *const *ids, const size_t *lens,
                             size_t n, const char *msg, size_t msg_len, mpx_forward_cb cb,
                             void *data);
int mpx_forward_broadcast_async(mpx_omega_t *om, const char *msg, size_t msg_len,
                                mpx_forward_cb cb, void *data);

/* ---- receiving ---- */

/* The answer to give: status 0 means "not an omega request" (the original
 * passes it to the next middleware); otherwise send `status` with
 * Content-Type: application/json and body[0..len). */
typedef struct mpx_omega_reply {
    int status;
    size_t len;
    char body[160];
} mpx_omega_reply_t;

/*
 * Framework-agnostic request handler: the gateway calls it with the request
 * method, path (request target as received, query included), Authorization
 * header (NULL if absent) and the whole body. As the original: a request
 * for another path or method, or without Authorization, is not ours (0);
 * wrong credentials: 401 (constant-time comparison); a body that is not a
 * JSON object with a "msg" member: 500 {"ok": false, "reason": "invalid data
 * structure"}; otherwise the message is delivered (to the "sparks" id, to
 * each id of a "sparks" array, or to all local sparks when "sparks" is
 * absent, "" or any other value) and the reply is 200 {"ok": true,
 * "send": N}. Unlike the original, any JSON value is a message, including
 * false, 0, "" and null (the original answers 500 for those), and a body
 * larger than body_max gets 413.
 * Returns reply->status. Thread-safety: any thread, concurrently.
 */
int mpx_omega_handle(mpx_omega_t *om, const char *method, const char *path,
                     const char *authorization, const void *body, size_t body_len,
                     mpx_omega_reply_t *reply);

/*
 * The same checks before reading the body: content_length is the announced
 * length (-1 if unknown). Returns 0 when the body should be read and given
 * to mpx_omega_handle(); else the status to answer at once (reply filled;
 * 401, 413) - or 0 with reply->status 0 for a request that is not ours.
 * Thread-safety: any thread.
 */
int mpx_omega_check(mpx_omega_t *om, const char *method, const char *path,
                    const char *authorization, long long content_length,
                    mpx_omega_reply_t *reply);

/*
 * Built-in HTTP listener (libmicrohttpd, its own threads) that serves
 * mpx_omega_handle() on `host` (a numeric IPv4 or IPv6 address, NULL:
 * "0.0.0.0") and `port` (0: any free port, see mpx_omega_listen_port()).
 * Requests that are not ours get 404, or 401 when only the Authorization
 * header is missing. Deliver callbacks run on the listener threads.
 * Returns 0, MPX_EINVAL (bad host), MPX_ESTATE (already listening),
 * MPX_EADDRINUSE (cannot bind), MPX_ENOMEM.
 * Thread-safety: any thread; one listener per messenger.
 */
int mpx_omega_listen(mpx_omega_t *om, const char *host, uint16_t port);
/* The port the listener is bound to, or 0 when not listening.
 * Thread-safety: any thread. */
uint16_t mpx_omega_listen_port(mpx_omega_t *om);

/* ---- end of cross-server messages (omega-supreme) ---- */

#if defined(MPX_BUILDING) && defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* METROPLEX_H */
