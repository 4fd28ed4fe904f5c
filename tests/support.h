/*
 * support.h - shared helpers for the Criterion suites.
 *
 * Integration tests talk to a real redis-server. The test command
 * (tools/test.sh) starts one on a free loopback port and exports its URL as
 * MPX_TEST_REDIS_URL; without it, the first call to t_redis_url() starts a
 * private one for this process (stopped at exit). Each test uses its own
 * namespace (t_ns()), so tests can run in parallel against one server.
 * Tests that kill or restart Redis start their own with redis_proc_start().
 */
#ifndef MPX_TEST_SUPPORT_H
#define MPX_TEST_SUPPORT_H

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "metroplex.h"
#include "redis_proc.h"

/* URL of the shared test redis-server. */
const char *t_redis_url(void);
/* A fresh namespace, unique to this process and call; static storage, valid
 * for the next 63 calls. */
const char *t_ns(void);
/* A direct hiredis connection to `url` (NULL: the shared server); aborts the
 * test on failure. Free with redisFree(). */
redisContext *t_connect(const char *url);
/* Run a command on `c` and return the reply (never NULL: aborts the test). */
redisReply *t_cmd(redisContext *c, const char *fmt, ...);
/* Integer result of a command (EXISTS, SCARD, HLEN, ...). */
long long t_int(redisContext *c, const char *fmt, ...);
/* Options with the test server, a fresh namespace and short timings. */
void t_options(mpx_options_t *o, const char *url);
/* mpx_create with `o`, then mpx_register at `addr` unless NULL; asserts. */
mpx_t *t_make(const mpx_options_t *o, const char *addr);
/* MPX_TEST_SCALE (default 1): sanitizer builds divide their sizes by it. */
int t_scale(void);
/* Plant n sparks "dead%09d" of `addr` in namespace `ns` (hash and set),
 * with pipelined variadic commands. */
void t_plant(redisContext *c, const char *ns, const char *addr, int n);
/* A client that PINGs the shared test server every millisecond (at most
 * 10 minutes) and records the worst wait: run t_ping_loop on a thread,
 * set `stop` to end it. */
typedef struct t_pinger {
    atomic_bool stop;
    uint64_t worst_us, count;
} t_pinger_t;
void *t_ping_loop(void *pinger);
/* A registry that keeps writing: run t_churn_loop on a thread, set `stop`
 * to end it (it ends by itself after 2 minutes). It connects and disconnects
 * m's sparks "w0".."w2999" in a fixed pseudo-random order, 200 calls then a
 * millisecond's sleep; state[i] is 1 while "w<i>" is connected. */
#define T_CHURN_IDS 3000
typedef struct t_churn {
    mpx_t *m;
    atomic_bool stop;
    unsigned char state[T_CHURN_IDS]; /* 1 connected */
    uint64_t ops;
} t_churn_t;
/* Clear ch for m and connect every other spark (w0, w2, ...) to start with. */
void t_churn_init(t_churn_t *ch, mpx_t *m);
void *t_churn_loop(void *churn);
/* URL of the test Redis Cluster (MPX_TEST_CLUSTER_URL, started by the test
 * command). Unset: the test is skipped, or fails when
 * MPX_TEST_REQUIRE_CLUSTER=1 (as the test command sets). */
const char *t_cluster_url(void);
/* One test at a time against the test cluster (some fail it over or reshard
 * it): an exclusive lock held until the test's process exits. */
void t_lock_cluster(void);

/* Running the operator CLI (build/bin/metroplex, next to the test's bin/). */
typedef struct t_run {
    int status; /* exit code, or 128 + signal */
    char *out, *err;
    uint64_t ms;
} t_run_t;
/* The CLI with --redis url --namespace ns (ns NULL: neither), then the
 * NULL-terminated arguments in ap; killed after timeout_ms. */
t_run_t t_cli_v(const char *url, const char *ns, unsigned timeout_ms, va_list ap);
void t_run_free(t_run_t *r);
/* Occurrences of needle in hay. */
int t_count_of(const char *hay, const char *needle);
#define T_EXPECT_RC(r, want)                                                               \
    cr_assert_eq((r).status, (want), "exit %d (want %d)\nstdout: %s\nstderr: %s", (r).status, \
                 (want), (r).out, (r).err)

/* The Node.js originals (test_interop, test_omega, test_cli). tests/interop
 * (the peer scripts, and the packages `npm ci` installs there): through
 * $MPX_SOURCE_DIR (the source tree) when set, else next to support.c
 * (__FILE__ is absolute in CMake builds). */
const char *t_interop_dir(void);
/* node: $MPX_NODE when set (NULL if it is not executable), else the first
 * in PATH; NULL: not found. */
const char *t_find_node(void);
/* Skip the calling test unless node, t_interop_dir()/script and the
 * NULL-terminated node_modules packages are there; with
 * MPX_TEST_REQUIRE_INTEROP=1 (as the test command sets) fail it instead.
 * Returns node. */
const char *t_require_node(const char *script, ...);
/* Start argv (NULL-terminated, argv[0] the program) in a child that dies with
 * this process (PR_SET_PDEATHSIG). Its stdout is a pipe, the read end in
 * *out_fd; with in_fd its stdin is one too, the write end in *in_fd, else
 * /dev/null. If exec fails it prints "error cannot exec node" and exits 127. */
pid_t t_spawn_peer(const char *const argv[], int *out_fd, int *in_fd);

/* Monotonic milliseconds. */
uint64_t t_now_ms(void);
/* Sleep. */
void t_sleep_ms(unsigned ms);
/* Wait until cond() holds, at most ms. */
#define WAIT_UNTIL(cond, ms)                                                   \
    do {                                                                       \
        uint64_t _end = t_now_ms() + (ms);                                     \
        while (!(cond) && t_now_ms() < _end)                                   \
            t_sleep_ms(10);                                                    \
    } while (0)

/* The on_error reports of a handle: how many, and every message
 * concatenated as "[MPX_E...] message\n" (truncated). */
typedef struct t_errors {
    atomic_int count;
    pthread_mutex_t mu;
    char text[4096];
} t_errors_t;
/* Clear e and make it o's on_error collector. */
void t_with_errors(mpx_options_t *o, t_errors_t *e);
/* Whether a reported message contains `what`. */
bool t_errors_mention(t_errors_t *e, const char *what);

#endif
