/* support.c - see support.h. */
#include "support.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static redis_proc_t private_redis;
static char private_url[64];

static void stop_private(void)
{
    redis_proc_destroy(&private_redis);
}

const char *t_redis_url(void)
{
    const char *env = getenv("MPX_TEST_REDIS_URL");
    if (env && *env)
        return env;
    if (!private_url[0]) {
        if (redis_proc_start(&private_redis, NULL) != 0)
            cr_assert_fail("cannot start a private redis-server");
        snprintf(private_url, sizeof private_url, "%s", private_redis.url);
        atexit(stop_private);
    }
    return private_url;
}

const char *t_ns(void)
{
    /* A pool of static buffers: nothing to free, nothing for LeakSanitizer. */
    static char pool[64][96];
    static unsigned counter;
    char *buf = pool[counter % 64];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(buf, sizeof pool[0], "mpxt%ld-%u-%ld", (long)getpid(), ++counter,
             (long)(ts.tv_nsec % 1000000));
    return buf;
}

redisContext *t_connect(const char *url)
{
    if (!url)
        url = t_redis_url();
    int port = 0;
    if (sscanf(url, "redis://127.0.0.1:%d", &port) != 1)
        cr_assert_fail("t_connect: unsupported url %s", url);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    cr_assert(c && !c->err, "t_connect: cannot connect to %s", url);
    redisSetTimeout(c, tv);
    return c;
}

redisReply *t_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL, "t_cmd: %s failed: %s", fmt, c->errstr);
    return r;
}

long long t_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL, "t_int: %s failed: %s", fmt, c->errstr);
    cr_assert(r->type == REDIS_REPLY_INTEGER, "t_int: %s: not an integer (type %d %s)", fmt,
              r->type, r->str ? r->str : "");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

void t_options(mpx_options_t *o, const char *url)
{
    mpx_options_init(o);
    o->redis_url = url ? url : t_redis_url();
    o->ns = t_ns();
    o->connect_timeout_ms = 1000;
    o->command_timeout_ms = 2000;
}

uint64_t t_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void t_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int t_scale(void)
{
    const char *s = getenv("MPX_TEST_SCALE");
    int v = s ? atoi(s) : 1;
    return v > 0 ? v : 1;
}

/* Plant n sparks of `addr` (plus `keep` sparks of another server) with
 * variadic commands, pipelined. */
void t_plant(redisContext *c, const char *ns, const char *addr, int n)
{
    enum { CHUNK = 1000 };
    char key_h[256], key_s[512];
    snprintf(key_h, sizeof key_h, "%s:sparks", ns);
    snprintf(key_s, sizeof key_s, "%s:%s:sparks", ns, addr);
    const char **argv = malloc((2 + 2 * CHUNK) * sizeof *argv);
    size_t *lens = malloc((2 + 2 * CHUNK) * sizeof *lens);
    char(*ids)[24] = malloc(CHUNK * sizeof *ids);
    int pending = 0;
    for (int base = 0; base < n; base += CHUNK) {
        int m = n - base < CHUNK ? n - base : CHUNK;
        for (int i = 0; i < m; i++)
            snprintf(ids[i], sizeof ids[i], "dead%09d", base + i);
        argv[0] = "HSET";
        argv[1] = key_h;
        lens[0] = 4;
        lens[1] = strlen(key_h);
        for (int i = 0; i < m; i++) {
            argv[2 + 2 * i] = ids[i];
            lens[2 + 2 * i] = strlen(ids[i]);
            argv[3 + 2 * i] = addr;
            lens[3 + 2 * i] = strlen(addr);
        }
        redisAppendCommandArgv(c, 2 + 2 * m, argv, lens);
        argv[0] = "SADD";
        argv[1] = key_s;
        lens[0] = 4;
        lens[1] = strlen(key_s);
        for (int i = 0; i < m; i++) {
            argv[2 + i] = ids[i];
            lens[2 + i] = strlen(ids[i]);
        }
        redisAppendCommandArgv(c, 2 + m, argv, lens);
        pending += 2;
        if (pending >= 100 || base + CHUNK >= n) {
            for (; pending > 0; pending--) {
                redisReply *r;
                cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
                cr_assert_neq(r->type, REDIS_REPLY_ERROR, "%s", r->str);
                freeReplyObject(r);
            }
        }
    }
    free(argv);
    free(lens);
    free(ids);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void *t_ping_loop(void *arg)
{
    t_pinger_t *p = arg;
    redisContext *c = t_connect(NULL);
    uint64_t end = now_us() + 600ull * 1000000u; /* bounded: 10 minutes */
    while (!atomic_load(&p->stop) && now_us() < end) {
        uint64_t t0 = now_us();
        redisReply *r = redisCommand(c, "PING");
        uint64_t d = now_us() - t0;
        if (r)
            freeReplyObject(r);
        if (d > p->worst_us)
            p->worst_us = d;
        p->count++;
        struct timespec ts = {0, 1000000}; /* every millisecond */
        nanosleep(&ts, NULL);
    }
    redisFree(c);
    return NULL;
}
