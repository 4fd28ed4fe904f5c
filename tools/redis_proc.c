/*
 * redis_proc.c - a private redis-server for tools and tests (see redis_proc.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sigprocmask, mkdtemp, prctl: also for the C++ bench target */
#endif
#include "redis_proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

int redis_proc_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    socklen_t len = sizeof sa;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    if (port == 6379)
        return redis_proc_free_port();
    return port;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static int wait_ping(redis_proc_t *rp, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        int status;
        if (waitpid(rp->pid, &status, WNOHANG) == rp->pid) {
            rp->pid = 0;
            return -1; /* exited: port taken, or bad arguments */
        }
        struct timeval tv = {0, 200000};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", rp->port, tv);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            /* +PONG, or -NOAUTH from a server started with requirepass. */
            int ok = r && (r->type == REDIS_REPLY_STATUS ||
                           (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOAUTH", 6) == 0));
            if (r)
                freeReplyObject(r);
            redisFree(c);
            if (ok)
                return 0;
        } else if (c) {
            redisFree(c);
        }
        sleep_ms(20);
    }
    return -1;
}

static int spawn(redis_proc_t *rp, const char *const *extra)
{
    const char *bin = getenv("MPX_REDIS_SERVER");
    if (!bin || !*bin)
        bin = "redis-server";
    char port[16];
    snprintf(port, sizeof port, "%d", rp->port);
    const char *argv[64];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--dir";
    argv[n++] = rp->dir;
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--daemonize";
    argv[n++] = "no";
    argv[n++] = "--logfile";
    argv[n++] = "redis.log";
    argv[n++] = "--protected-mode";
    argv[n++] = "no";
    for (int i = 0; extra && extra[i] && n < 62; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;

    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* A clean signal state, whatever the calling thread blocked, and
         * the server dies with its parent (no orphan after an abort). */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        execvp(bin, (char *const *)argv);
        fprintf(stderr, "redis_proc: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    rp->pid = pid;
    return 0;
}

int redis_proc_start(redis_proc_t *rp, const char *const *extra)
{
    memset(rp, 0, sizeof *rp);
    const char *tmp = getenv("TMPDIR");
    snprintf(rp->dir, sizeof rp->dir, "%s/mpx-redis-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(rp->dir)) {
        fprintf(stderr, "redis_proc: mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        rp->port = redis_proc_free_port();
        if (rp->port < 0)
            continue;
        snprintf(rp->url, sizeof rp->url, "redis://127.0.0.1:%d", rp->port);
        if (spawn(rp, extra) == 0 && wait_ping(rp, 10000) == 0)
            return 0;
        if (rp->pid > 0)
            redis_proc_kill(rp);
    }
    fprintf(stderr, "redis_proc: could not start redis-server (see %s/redis.log)\n", rp->dir);
    return -1;
}

int redis_proc_restart(redis_proc_t *rp, const char *const *extra)
{
    if (rp->pid > 0)
        redis_proc_stop(rp);
    for (int attempt = 0; attempt < 50; attempt++) {
        if (spawn(rp, extra) == 0 && wait_ping(rp, 10000) == 0)
            return 0;
        if (rp->pid > 0)
            redis_proc_kill(rp);
        sleep_ms(100); /* the port may still be in TIME_WAIT on some kernels */
    }
    fprintf(stderr, "redis_proc: could not restart redis-server on port %d\n", rp->port);
    return -1;
}

static void reap_pid(redis_proc_t *rp, int timeout_ms)
{
    for (int waited = 0; rp->pid > 0; waited += 10) {
        int status;
        pid_t r = waitpid(rp->pid, &status, WNOHANG);
        if (r == rp->pid || (r < 0 && errno == ECHILD)) {
            rp->pid = 0;
            return;
        }
        if (waited >= timeout_ms) {
            kill(rp->pid, SIGKILL);
            waitpid(rp->pid, &status, 0);
            rp->pid = 0;
            return;
        }
        sleep_ms(10);
    }
}

void redis_proc_kill(redis_proc_t *rp)
{
    if (rp->pid <= 0)
        return;
    kill(rp->pid, SIGKILL);
    reap_pid(rp, 5000);
}

void redis_proc_stop(redis_proc_t *rp)
{
    if (rp->pid <= 0)
        return;
    kill(rp->pid, SIGTERM);
    reap_pid(rp, 5000);
}

void redis_proc_destroy(redis_proc_t *rp)
{
    redis_proc_stop(rp);
    if (rp->dir[0]) {
        char cmd[300];
        /* Only ever our own mkdtemp directory. */
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", rp->dir);
        if (strstr(rp->dir, "mpx-redis-") && system(cmd) != 0)
            fprintf(stderr, "redis_proc: could not remove %s\n", rp->dir);
        rp->dir[0] = 0;
    }
}
