/*
 * omegabench.c - throughput of cross-server messages between C servers in
 * one process, on loopback: one sending server and 10 receiving servers,
 * each receiving server holding 100 sparks (1,000 ids in all).
 *
 *   metroplex-omegabench [--redis URL] [--seconds S]
 *
 * Without --redis it starts a private redis-server on a free loopback port
 * (tools/redis_proc.c) and stops it at the end. For each form (spark: one
 * remote id; sparks: the 1,000 ids; broadcast) it sends blocking, one after
 * another, for S seconds (default 2, at most 60) and prints messages/s and
 * sparks reached/s.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metroplex.h"
#include "redis_proc.h"

#define SERVERS 10
#define PER 100

static int deliver(mpx_omega_t *om, const char *id, size_t n, const char *m, size_t mn, void *d)
{
    (void)om, (void)id, (void)n, (void)m, (void)mn, (void)d;
    return 1;
}

/* d is non-NULL for the receivers, which hold PER sparks each; the sender
 * holds none, so a broadcast reaches SERVERS * PER sparks. */
static size_t deliver_all(mpx_omega_t *om, const char *m, size_t mn, void *d)
{
    (void)om, (void)m, (void)mn;
    return d ? PER : 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static mpx_t *regs[SERVERS + 1];
static mpx_omega_t *oms[SERVERS + 1];

static void die(const char *what)
{
    fprintf(stderr, "omegabench: %s: %s\n", what, mpx_last_error());
    exit(1);
}

int main(int argc, char **argv)
{
    const char *url = NULL;
    double seconds = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--redis") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--redis URL] [--seconds S]\n", argv[0]);
            return 2;
        }
    }
    if (seconds <= 0 || seconds > 60)
        seconds = 2;
    redis_proc_t rp_store, *rp = NULL;
    if (!url) {
        if (redis_proc_start(&rp_store, NULL) != 0) {
            fprintf(stderr, "omegabench: cannot start redis-server\n");
            return 1;
        }
        rp = &rp_store;
        url = rp->url;
    }
    char ns[64];
    snprintf(ns, sizeof ns, "omegabench-%ld", (long)time(NULL));
    static char ids[SERVERS * PER][32];
    const void *idp[SERVERS * PER];
    for (int s = 0; s <= SERVERS; s++) {
        mpx_options_t o;
        mpx_options_init(&o);
        o.redis_url = url;
        o.ns = ns;
        if (mpx_create(&o, &regs[s]))
            die("mpx_create");
        mpx_omega_options_t oo;
        mpx_omega_options_init(&oo);
        oo.deliver = deliver;
        oo.deliver_all = deliver_all;
        oo.deliver_data = s > 0 ? (void *)&oms[s] : NULL;
        if (mpx_omega_create(regs[s], &oo, &oms[s]) || mpx_omega_listen(oms[s], "127.0.0.1", 0))
            die("mpx_omega");
        char addr[64];
        snprintf(addr, sizeof addr, "http://127.0.0.1:%u", (unsigned)mpx_omega_listen_port(oms[s]));
        if (mpx_register(regs[s], addr))
            die("mpx_register");
        for (int k = 0; s > 0 && k < PER; k++) {
            int i = (s - 1) * PER + k;
            snprintf(ids[i], sizeof ids[i], "spark-%d-%d", s, k);
            idp[i] = ids[i];
            mpx_connect(regs[s], ids[i], strlen(ids[i]));
        }
        if (mpx_flush(regs[s], 10000))
            die("mpx_flush");
    }
    const char *msg = "{\"event\":\"bench\",\"n\":12345}";
    const char *names[] = {"spark", "sparks (1000 ids / 10 servers)", "broadcast (10 servers)"};
    printf("%-32s %12s %16s\n", "form", "messages/s", "sparks reached/s");
    for (int form = 0; form < 3; form++) {
        unsigned long long msgs = 0, reached = 0, failed = 0;
        double t0 = now_s(), t;
        do {
            mpx_forward_result_t *r = NULL;
            int rc = form == 0   ? mpx_forward_spark(oms[0], ids[msgs % (SERVERS * PER)],
                                                     strlen(ids[msgs % (SERVERS * PER)]), msg, 0, &r)
                     : form == 1 ? mpx_forward_sparks(oms[0], idp, NULL, SERVERS * PER, msg, 0, &r)
                                 : mpx_forward_broadcast(oms[0], msg, 0, &r);
            if (rc)
                die("forward");
            msgs++;
            reached += r->sent;
            failed += r->nfailed;
            mpx_forward_result_free(r);
            t = now_s();
        } while (t - t0 < seconds);
        printf("%-32s %12.0f %16.0f%s\n", names[form], msgs / (t - t0), reached / (t - t0),
               failed ? "  (some servers failed)" : "");
    }
    for (int s = 0; s <= SERVERS; s++) {
        mpx_omega_destroy(oms[s]);
        mpx_unregister(regs[s]);
        mpx_destroy(regs[s]);
    }
    if (rp)
        redis_proc_destroy(rp);
    return 0;
}
