/*
 * redis_proc - start and stop a private redis-server for tools and tests.
 *
 * The server listens on a free loopback port (never 6379), keeps its files in
 * a fresh temporary directory, and is stopped by PID, never by name.
 * Not part of the library: used by metroplex-sparkgen, tests and benchmarks.
 */
#ifndef MPX_REDIS_PROC_H
#define MPX_REDIS_PROC_H

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct redis_proc {
    pid_t pid;
    int port;
    char dir[256];  /* working directory (RDB/AOF files, log) */
    char url[64];   /* "redis://127.0.0.1:PORT" */
} redis_proc_t;

/* Start redis-server (from PATH, or $MPX_REDIS_SERVER) on a free loopback
 * port, with `extra` appended to its arguments (NULL-terminated list, may be
 * NULL), and wait until it answers PING (at most 10 s). Persistence is off
 * unless `extra` turns it on. Returns 0 or -1 (message on stderr). */
int redis_proc_start(redis_proc_t *rp, const char *const *extra);

/* Restart on the same port and directory (after redis_proc_kill or stop).
 * Returns 0 or -1. */
int redis_proc_restart(redis_proc_t *rp, const char *const *extra);

/* SIGKILL the server and reap it; the directory is kept. */
void redis_proc_kill(redis_proc_t *rp);

/* SIGTERM, wait (at most 5 s, then SIGKILL), reap; the directory is kept. */
void redis_proc_stop(redis_proc_t *rp);

/* Stop (if running) and remove the directory. */
void redis_proc_destroy(redis_proc_t *rp);

/* A free TCP port on 127.0.0.1 (bound then released), or -1. */
int redis_proc_free_port(void);

#ifdef __cplusplus
}
#endif
#endif
