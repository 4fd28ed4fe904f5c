/*
 * test_omega.c - cross-server messages (omega-supreme format) between C
 * servers in one process: the receiving handler's replies, the built-in
 * listener, blocking and non-blocking sends to one spark, a list and
 * everyone, a dead server, wrong credentials, timeouts.
 *
 * Two registries ("A" and "B") share the test redis-server and a fresh
 * namespace; each has a messenger listening on 127.0.0.1 (any free port)
 * and registers "http://127.0.0.1:PORT". Their deliver callbacks record what
 * arrives. The Node.js interop lives in test_interop.c.
 */
#include <criterion/criterion.h>

#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

/* ---- a recording gateway --------------------------------------------------- */

#define MAX_REC 256
#define MAX_LOCAL 32

typedef struct gw {
    pthread_mutex_t mu;
    char *ids[MAX_REC]; /* NULL id: a broadcast delivery */
    char *msgs[MAX_REC];
    size_t n;
    const char *local[MAX_LOCAL]; /* the sparks "connected" here */
    size_t nlocal;
} gw_t;

static int gw_has_local(gw_t *g, const char *id)
{
    for (size_t i = 0; i < g->nlocal; i++)
        if (strcmp(g->local[i], id) == 0)
            return 1;
    return 0;
}

static void gw_record(gw_t *g, const char *id, const char *msg, size_t len)
{
    pthread_mutex_lock(&g->mu);
    if (g->n < MAX_REC) {
        g->ids[g->n] = id ? strdup(id) : NULL;
        g->msgs[g->n] = strndup(msg, len);
        g->n++;
    }
    pthread_mutex_unlock(&g->mu);
}

static int on_deliver(mpx_omega_t *om, const char *id, size_t id_len, const char *msg,
                      size_t msg_len, void *data)
{
    (void)om;
    gw_t *g = data;
    cr_assert_eq(strlen(id), id_len);
    cr_assert_eq(strlen(msg), msg_len);
    if (!gw_has_local(g, id))
        return 0;
    gw_record(g, id, msg, msg_len);
    return 1;
}

static size_t on_deliver_all(mpx_omega_t *om, const char *msg, size_t msg_len, void *data)
{
    (void)om;
    gw_t *g = data;
    for (size_t i = 0; i < g->nlocal; i++)
        gw_record(g, g->local[i], msg, msg_len);
    return g->nlocal;
}

static size_t gw_count(gw_t *g)
{
    pthread_mutex_lock(&g->mu);
    size_t n = g->n;
    pthread_mutex_unlock(&g->mu);
    return n;
}

/* Has `id` received exactly `msg`? */
static int gw_got(gw_t *g, const char *id, const char *msg)
{
    int found = 0;
    pthread_mutex_lock(&g->mu);
    for (size_t i = 0; i < g->n; i++)
        if (g->ids[i] && strcmp(g->ids[i], id) == 0 && strcmp(g->msgs[i], msg) == 0)
            found = 1;
    pthread_mutex_unlock(&g->mu);
    return found;
}

static void gw_reset(gw_t *g)
{
    pthread_mutex_lock(&g->mu);
    for (size_t i = 0; i < g->n; i++) {
        free(g->ids[i]);
        free(g->msgs[i]);
    }
    g->n = 0;
    pthread_mutex_unlock(&g->mu);
}

/* ---- fixtures ------------------------------------------------------------------ */

typedef struct node {
    mpx_t *mpx;
    mpx_omega_t *om;
    gw_t gw;
    char address[64];
} node_t;

static node_t nodes[3];

static void suite_init(void)
{
    memset(nodes, 0, sizeof nodes);
    for (int i = 0; i < 3; i++)
        pthread_mutex_init(&nodes[i].gw.mu, NULL);
}

static void suite_fini(void)
{
    for (int i = 0; i < 3; i++) {
        mpx_omega_destroy(nodes[i].om);
        mpx_destroy(nodes[i].mpx);
        gw_reset(&nodes[i].gw);
        nodes[i].om = NULL;
        nodes[i].mpx = NULL;
    }
}

TestSuite(omega, .init = suite_init, .fini = suite_fini, .timeout = 60);

static void omega_opts(mpx_omega_options_t *o, gw_t *g)
{
    mpx_omega_options_init(o);
    o->deliver = on_deliver;
    o->deliver_all = on_deliver_all;
    o->deliver_data = g;
    o->connect_timeout_ms = 1000;
    o->request_timeout_ms = 3000;
}

/* Start node i: registry in `ns`, messenger listening, registered. */
static node_t *node_start(int i, const char *ns, const mpx_omega_options_t *oo)
{
    node_t *n = &nodes[i];
    mpx_options_t o;
    t_options(&o, NULL);
    o.ns = ns;
    int rc = mpx_create(&o, &n->mpx);
    cr_assert_eq(rc, 0, "mpx_create: %s", mpx_last_error());
    mpx_omega_options_t def;
    if (!oo) {
        omega_opts(&def, &n->gw);
        oo = &def;
    }
    rc = mpx_omega_create(n->mpx, oo, &n->om);
    cr_assert_eq(rc, 0, "mpx_omega_create: %s", mpx_last_error());
    rc = mpx_omega_listen(n->om, "127.0.0.1", 0);
    cr_assert_eq(rc, 0, "mpx_omega_listen: %s", mpx_last_error());
    uint16_t port = mpx_omega_listen_port(n->om);
    cr_assert_neq(port, 0);
    snprintf(n->address, sizeof n->address, "http://127.0.0.1:%u", (unsigned)port);
    rc = mpx_register(n->mpx, n->address);
    cr_assert_eq(rc, 0, "mpx_register: %s", mpx_last_error());
    return n;
}

static void node_connect(node_t *n, const char *id)
{
    cr_assert(n->gw.nlocal < MAX_LOCAL);
    n->gw.local[n->gw.nlocal++] = id;
    cr_assert_eq(mpx_connect(n->mpx, id, strlen(id)), 0);
}

static void node_flush(node_t *n)
{
    int rc = mpx_flush(n->mpx, 5000);
    cr_assert_eq(rc, 0, "mpx_flush: %s", mpx_last_error());
}

/* A loopback port nobody listens on. */
static unsigned closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    return ntohs(sa.sin_port);
}

/* ---- the receiving handler -------------------------------------------------------- */

#define AUTH_OK "Basic b21lZ2E6c3VwcmVtZQ==" /* omega:supreme */
#define PATH "/primus/omega/supreme"

static int handle(mpx_omega_t *om, const char *body, mpx_omega_reply_t *r)
{
    return mpx_omega_handle(om, "PUT", PATH, AUTH_OK, body, strlen(body), r);
}

Test(omega, handler_replies_as_the_original)
{
    gw_t *g = &nodes[0].gw;
    g->local[g->nlocal++] = "s1";
    g->local[g->nlocal++] = "s2";
    mpx_omega_options_t o;
    omega_opts(&o, g);
    mpx_omega_t *om = NULL;
    cr_assert_eq(mpx_omega_create(NULL, &o, &om), 0, "%s", mpx_last_error());
    nodes[0].om = om;
    mpx_omega_reply_t r;

    /* Not ours: the original calls next(). */
    cr_assert_eq(mpx_omega_handle(om, "PUT", "/other", AUTH_OK, "{}", 2, &r), 0);
    cr_assert_eq(mpx_omega_handle(om, "POST", PATH, AUTH_OK, "{}", 2, &r), 0);
    cr_assert_eq(mpx_omega_handle(om, "PUT", PATH, NULL, "{}", 2, &r), 0);
    cr_assert_eq(mpx_omega_handle(om, "PUT", PATH "?x=1", AUTH_OK, "{}", 2, &r), 0);

    /* Wrong credentials. */
    cr_assert_eq(mpx_omega_handle(om, "PUT", PATH, "Basic b21lZ2E6d3Jvbmc=", "{}", 2, &r), 401);
    cr_assert_str_eq(r.body, "{\"ok\":false,\"reason\":\"I am programmed to protect, and sacrifice "
                             "if necessary. Feel the power of my lazers! Pew pew!\"}");
    cr_assert_eq(mpx_omega_handle(om, "PUT", PATH, AUTH_OK "x", "{}", 2, &r), 401);

    /* Bad bodies. */
    const char *bad[] = {"", "{", "[1]", "\"x\"", "{\"sparks\":\"s1\"}", "{\"msg\":1,}",
                         "{\"msg\": 1} x", "{\"msg\": NaN}", "{\"msg\": \"\xff\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(handle(om, bad[i], &r), 500, "body %s", bad[i]);
        cr_assert_str_eq(r.body, "{ \"ok\": false, \"reason\": \"invalid data structure\" }");
    }
    cr_assert_eq(gw_count(g), 0);

    /* One spark, a list, everyone. */
    cr_assert_eq(handle(om, "{\"msg\":{\"a\":1},\"sparks\":\"s1\"}", &r), 200);
    cr_assert_str_eq(r.body, "{ \"ok\": true, \"send\":1 }");
    cr_assert(gw_got(g, "s1", "{\"a\":1}"));
    cr_assert_eq(handle(om, "{\"msg\":[1,2],\"sparks\":[\"s1\",\"nope\",\"s2\",7]}", &r), 200);
    cr_assert_str_eq(r.body, "{ \"ok\": true, \"send\":2 }");
    cr_assert(gw_got(g, "s2", "[1,2]"));
    cr_assert_eq(handle(om, "{\"msg\":\"hi\",\"sparks\":\"\"}", &r), 200);
    cr_assert_str_eq(r.body, "{ \"ok\": true, \"send\":2 }");
    cr_assert_eq(handle(om, "{\"msg\":\"hi\"}", &r), 200);
    cr_assert_str_eq(r.body, "{ \"ok\": true, \"send\":2 }");
    cr_assert_eq(handle(om, "{\"msg\":\"x\",\"sparks\":\"gone\"}", &r), 200);
    cr_assert_str_eq(r.body, "{ \"ok\": true, \"send\":0 }");

    /* Any JSON value is a message (the original answers 500 for falsy ones). */
    const char *values[] = {"false", "0", "\"\"", "null", "true", "-0.5e-3"};
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"sparks\":\"s1\",\"msg\":%s}", values[i]);
        gw_reset(g);
        cr_assert_eq(handle(om, body, &r), 200, "msg %s", values[i]);
        cr_assert(gw_got(g, "s1", values[i]), "msg %s not delivered as is", values[i]);
    }

    /* The text reaches the callback unchanged: big numbers, Unicode,
     * escapes, nesting, whitespace inside; the last duplicate key wins
     * (as JSON.parse); keys may be escaped. */
    const char *exact =
        "{\"n\":123456789012345678901234567890,\"f\":1.000000000000000000001e-400,"
        "\"s\":\"h\\u00e9llo \xe2\x82\xac \xf0\x9f\x98\x80 \\ud83d\\ude00 \\\"q\\\" \\\\\","
        "\"a\":[ {\"x\" : [ ] } , \"]}\" ]}";
    char body[1024];
    gw_reset(g);
    snprintf(body, sizeof body, "  {\"msg\":0,\"sparks\":\"s2\", \"m\\u0073g\" :\n %s \n}  ",
             exact);
    cr_assert_eq(handle(om, body, &r), 200, "%s", r.body);
    cr_assert(gw_got(g, "s2", exact), "message changed: got %s", g->n ? g->msgs[0] : "(none)");
    /* Escaped ids are decoded. */
    gw_reset(g);
    cr_assert_eq(handle(om, "{\"msg\":1,\"sparks\":[\"\\u0073\\u0031\"]}", &r), 200);
    cr_assert(gw_got(g, "s1", "1"));

    /* Size limit. */
    mpx_omega_options_t small;
    omega_opts(&small, g);
    small.body_max = 64;
    mpx_omega_t *om2 = NULL;
    cr_assert_eq(mpx_omega_create(NULL, &small, &om2), 0);
    nodes[1].om = om2;
    char big[200];
    snprintf(big, sizeof big, "{\"msg\":\"%0100d\"}", 0);
    cr_assert_eq(handle(om2, big, &r), 413);
    cr_assert_eq(mpx_omega_check(om2, "PUT", PATH, AUTH_OK, 65, &r), 413);
    cr_assert_eq(mpx_omega_check(om2, "PUT", PATH, AUTH_OK, 64, &r), 0);
    cr_assert_eq(mpx_omega_check(om2, "PUT", PATH, "Basic x", 10, &r), 401);

    /* Receive-only messengers cannot send. */
    mpx_forward_result_t *res = NULL;
    cr_assert_eq(mpx_forward_broadcast(om, "1", 0, &res), MPX_ESTATE);
}

Test(omega, options_are_checked)
{
    mpx_omega_options_t o;
    mpx_omega_t *om = NULL;
    mpx_omega_options_init(&o);
    o.concurrency = 0;
    cr_assert_eq(mpx_omega_create(NULL, &o, &om), MPX_EINVAL);
    cr_assert(strstr(mpx_last_error(), "concurrency"));
    mpx_omega_options_init(&o);
    o.path = "no-slash";
    cr_assert_eq(mpx_omega_create(NULL, &o, &om), MPX_EINVAL);
    mpx_omega_options_init(&o);
    o.username = "a:b";
    cr_assert_eq(mpx_omega_create(NULL, &o, &om), MPX_EINVAL);
    cr_assert_null(om);
    /* Custom method, path and credentials are used on both sides. */
    mpx_omega_options_init(&o);
    o.method = "post";
    o.path = "/x";
    o.username = "u";
    o.password = "p";
    cr_assert_eq(mpx_omega_create(NULL, &o, &om), 0);
    mpx_omega_reply_t r;
    cr_assert_eq(mpx_omega_handle(om, "POST", "/x", "Basic dTpw", "{\"msg\":1}", 9, &r), 200);
    cr_assert_eq(mpx_omega_handle(om, "PUT", "/x", "Basic dTpw", "{\"msg\":1}", 9, &r), 0);
    mpx_omega_destroy(om);
}

/* ---- sending between two C servers ------------------------------------------------ */

Test(omega, spark_sparks_broadcast_between_c_servers)
{
    const char *ns = t_ns();
    node_t *a = node_start(0, ns, NULL);
    node_t *b = node_start(1, ns, NULL);
    node_connect(a, "a1");
    node_connect(a, "a2");
    node_connect(b, "b1");
    node_connect(b, "b2");
    node_connect(b, "b\"3\xc3\xa9"); /* quotes and non-ASCII in an id */
    node_flush(a);
    node_flush(b);

    const char *msg = "{\"big\":98765432109876543210987654321,\"t\":\"\xe2\x82\xac\"}";
    mpx_forward_result_t *r = NULL;
    int rc = mpx_forward_spark(a->om, "b1", 2, msg, 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 1);
    cr_assert_eq(r->local, 0);
    cr_assert_eq(r->servers, 1);
    cr_assert_eq(r->nfailed, 0);
    cr_assert(gw_got(&b->gw, "b1", msg));
    mpx_forward_result_free(r);

    /* A local spark: no HTTP. */
    rc = mpx_forward_spark(a->om, "a1", 2, "1", 0, &r);
    cr_assert_eq(rc, 0);
    cr_assert_eq(r->sent, 1);
    cr_assert_eq(r->local, 1);
    cr_assert_eq(r->servers, 0);
    cr_assert(gw_got(&a->gw, "a1", "1"));
    mpx_forward_result_free(r);

    /* Unknown spark. */
    rc = mpx_forward_spark(a->om, "zz", 2, "1", 0, &r);
    cr_assert_eq(rc, 0);
    cr_assert_eq(r->sent, 0);
    cr_assert_eq(r->unknown, 1);
    mpx_forward_result_free(r);

    /* A list over both servers. */
    gw_reset(&a->gw);
    gw_reset(&b->gw);
    const char *ids[] = {"a2", "b1", "b2", "nobody", "b\"3\xc3\xa9"};
    rc = mpx_forward_sparks(a->om, (const void *const *)ids, NULL, 5, "[\"x\"]", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 4);
    cr_assert_eq(r->local, 1);
    cr_assert_eq(r->unknown, 1);
    cr_assert_eq(r->servers, 1);
    cr_assert_eq(r->nfailed, 0);
    cr_assert(gw_got(&a->gw, "a2", "[\"x\"]"));
    cr_assert(gw_got(&b->gw, "b2", "[\"x\"]"));
    cr_assert(gw_got(&b->gw, "b\"3\xc3\xa9", "[\"x\"]"));
    mpx_forward_result_free(r);

    /* Everyone. */
    gw_reset(&a->gw);
    gw_reset(&b->gw);
    rc = mpx_forward_broadcast(b->om, "false", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 5);
    cr_assert_eq(r->local, 3);
    cr_assert_eq(r->servers, 1);
    cr_assert(gw_got(&a->gw, "a1", "false"));
    cr_assert(gw_got(&b->gw, "b2", "false"));
    mpx_forward_result_free(r);

    /* Not JSON. */
    cr_assert_eq(mpx_forward_spark(a->om, "b1", 2, "{x}", 0, &r), MPX_EINVAL);
    cr_assert_null(r);
    cr_assert_eq(mpx_forward_spark(a->om, "b\xff", 2, "1", 0, &r), MPX_EINVAL);
}

Test(omega, a_dead_server_is_reported_without_losing_the_rest)
{
    const char *ns = t_ns();
    node_t *a = node_start(0, ns, NULL);
    node_t *b = node_start(1, ns, NULL);
    node_connect(b, "b1");
    node_flush(b);
    char dead[64];
    snprintf(dead, sizeof dead, "http://127.0.0.1:%u", closed_port());
    redisContext *c = t_connect(NULL);
    t_int(c, "HSET %s:sparks d1 %s", ns, dead);
    t_int(c, "HSET %s:sparks d2 %s", ns, dead);
    t_int(c, "SADD %s:servers %s", ns, dead);

    const char *ids[] = {"d1", "b1", "d2"};
    mpx_forward_result_t *r = NULL;
    int rc = mpx_forward_sparks(a->om, (const void *const *)ids, NULL, 3, "2", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 1);
    cr_assert_eq(r->servers, 2);
    cr_assert_eq(r->nfailed, 1);
    cr_assert_str_eq(r->failed[0].server, dead);
    cr_assert_eq(r->failed[0].err, MPX_ECONN, "%s", mpx_err_name(r->failed[0].err));
    cr_assert_eq(r->failed[0].sparks, 2);
    cr_assert(gw_got(&b->gw, "b1", "2"));
    mpx_forward_result_free(r);

    /* Broadcast too. */
    rc = mpx_forward_broadcast(a->om, "3", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 1);
    cr_assert_eq(r->nfailed, 1);
    cr_assert_str_eq(r->failed[0].server, dead);
    mpx_forward_result_free(r);
    redisFree(c);
}

Test(omega, wrong_credentials_get_401_and_deliver_nothing)
{
    const char *ns = t_ns();
    node_t *b = node_start(1, ns, NULL);
    node_connect(b, "b1");
    node_flush(b);
    mpx_omega_options_t o;
    omega_opts(&o, &nodes[0].gw);
    o.password = "wrong";
    node_t *a = node_start(0, ns, &o);
    mpx_forward_result_t *r = NULL;
    int rc = mpx_forward_spark(a->om, "b1", 2, "1", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 0);
    cr_assert_eq(r->nfailed, 1);
    cr_assert_eq(r->failed[0].status, 401);
    cr_assert_eq(r->failed[0].err, MPX_EPROTO);
    cr_assert(strstr(r->failed[0].reason, "programmed to protect"), "%s", r->failed[0].reason);
    mpx_forward_result_free(r);
    cr_assert_eq(gw_count(&b->gw), 0);
}

/* A server that accepts connections but never answers. */
Test(omega, a_silent_server_times_out)
{
    const char *ns = t_ns();
    mpx_omega_options_t o;
    omega_opts(&o, &nodes[0].gw);
    o.request_timeout_ms = 300;
    node_t *a = node_start(0, ns, &o);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fd, 16), 0);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    char silent[64];
    snprintf(silent, sizeof silent, "http://127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    redisContext *c = t_connect(NULL);
    t_int(c, "HSET %s:sparks s1 %s", ns, silent);
    mpx_forward_result_t *r = NULL;
    uint64_t t0 = t_now_ms();
    int rc = mpx_forward_spark(a->om, "s1", 2, "1", 0, &r);
    uint64_t dt = t_now_ms() - t0;
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->nfailed, 1);
    cr_assert_eq(r->failed[0].err, MPX_ETIMEDOUT, "%s: %s", mpx_err_name(r->failed[0].err),
                 r->failed[0].reason);
    cr_assert_lt(dt, 2500);
    mpx_forward_result_free(r);
    redisFree(c);
    close(fd);
}

/* ---- non-blocking ------------------------------------------------------------------ */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int done, err;
    mpx_forward_result_t *res;
} waiter_t;

static void on_forwarded(mpx_omega_t *om, int err, mpx_forward_result_t *res, void *data)
{
    (void)om;
    waiter_t *w = data;
    pthread_mutex_lock(&w->mu);
    w->err = err;
    w->res = res;
    w->done = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

static mpx_forward_result_t *wait_result(waiter_t *w)
{
    uint64_t deadline = t_now_ms() + 10000;
    pthread_mutex_lock(&w->mu);
    while (!w->done && t_now_ms() < deadline) {
        pthread_mutex_unlock(&w->mu);
        t_sleep_ms(5);
        pthread_mutex_lock(&w->mu);
    }
    int done = w->done, err = w->err;
    mpx_forward_result_t *r = w->res;
    w->done = 0;
    w->res = NULL;
    pthread_mutex_unlock(&w->mu);
    cr_assert(done, "async forward: no callback within 10 s");
    cr_assert_eq(err, 0, "async forward: %s", mpx_err_name(err));
    return r;
}

Test(omega, non_blocking_forms)
{
    const char *ns = t_ns();
    node_t *a = node_start(0, ns, NULL);
    node_t *b = node_start(1, ns, NULL);
    node_connect(a, "a1");
    node_connect(b, "b1");
    node_connect(b, "b2");
    node_flush(a);
    node_flush(b);
    static waiter_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};

    cr_assert_eq(mpx_forward_spark_async(a->om, "b1", 2, "{\"k\":1}", 0, on_forwarded, &w), 0,
                 "%s", mpx_last_error());
    mpx_forward_result_t *r = wait_result(&w);
    cr_assert_eq(r->sent, 1);
    cr_assert(gw_got(&b->gw, "b1", "{\"k\":1}"));
    mpx_forward_result_free(r);

    const char *ids[] = {"a1", "b1", "b2", "zz"};
    cr_assert_eq(mpx_forward_sparks_async(a->om, (const void *const *)ids, NULL, 4, "7", 0,
                                          on_forwarded, &w),
                 0);
    r = wait_result(&w);
    cr_assert_eq(r->sent, 3);
    cr_assert_eq(r->local, 1);
    cr_assert_eq(r->unknown, 1);
    cr_assert(gw_got(&b->gw, "b2", "7"));
    cr_assert(gw_got(&a->gw, "a1", "7"));
    mpx_forward_result_free(r);

    cr_assert_eq(mpx_forward_broadcast_async(a->om, "\"all\"", 0, on_forwarded, &w), 0);
    r = wait_result(&w);
    cr_assert_eq(r->sent, 3);
    cr_assert_eq(r->servers, 1);
    mpx_forward_result_free(r);

    /* Many at once, through a concurrency limit of 20: all complete. */
    for (int i = 0; i < 50; i++) {
        static waiter_t ws[50];
        pthread_mutex_init(&ws[i].mu, NULL);
        pthread_cond_init(&ws[i].cond, NULL);
        cr_assert_eq(mpx_forward_spark_async(a->om, "b2", 2, "0", 0, on_forwarded, &ws[i]), 0);
        if (i == 49)
            for (int k = 0; k < 50; k++) {
                r = wait_result(&ws[k]);
                cr_assert_eq(r->sent, 1);
                mpx_forward_result_free(r);
            }
    }

    /* A pending async send at destroy still gets its callback. */
    cr_assert_eq(mpx_forward_spark_async(a->om, "b1", 2, "0", 0, on_forwarded, &w), 0);
    mpx_omega_destroy(a->om);
    a->om = NULL;
    pthread_mutex_lock(&w.mu);
    int done = w.done;
    if (w.res)
        mpx_forward_result_free(w.res);
    pthread_mutex_unlock(&w.mu);
    cr_assert(done, "callback not run before mpx_omega_destroy returned");
}

/* The listener answers HTTP as the original does (raw requests via curl is
 * the sender's job; here: what a non-omega request gets). */
Test(omega, concurrency_one_still_reaches_everyone)
{
    const char *ns = t_ns();
    mpx_omega_options_t o;
    omega_opts(&o, &nodes[0].gw);
    o.concurrency = 1;
    node_t *a = node_start(0, ns, &o);
    node_t *b = node_start(1, ns, NULL);
    node_t *c = node_start(2, ns, NULL);
    node_connect(b, "b1");
    node_connect(c, "c1");
    node_flush(b);
    node_flush(c);
    mpx_forward_result_t *r = NULL;
    for (int round = 0; round < 3; round++) {
        int rc = mpx_forward_broadcast(a->om, "1", 0, &r);
        cr_assert_eq(rc, 0, "%s", mpx_last_error());
        cr_assert_eq(r->sent, 2);
        cr_assert_eq(r->servers, 2);
        cr_assert_eq(r->nfailed, 0);
        mpx_forward_result_free(r);
    }
}

/* ---- interop with the Node.js originals -------------------------------------------
 *
 * tests/interop/omega_peer.js runs a Primus server with omega-supreme and
 * metroplex and real Primus clients on the same redis-server. Skipped when
 * node or tests/interop/node_modules is missing, unless
 * MPX_TEST_REQUIRE_INTEROP=1 (the test command), where that fails.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

static void require_node(void)
{
    t_require_node("omega_peer.js", "primus", "omega-supreme", "metroplex", "ws", NULL);
}

#define PEER_LINES 256
typedef struct peer {
    pid_t pid;
    int in_fd, out_fd;
    char part[65536];
    size_t plen;
    char *lines[PEER_LINES];
    size_t nlines, at;
    int eof;
} peer_t;

static peer_t the_peer = {.pid = 0, .in_fd = -1, .out_fd = -1};

static void peer_reset(void)
{
    if (the_peer.pid > 0) {
        kill(the_peer.pid, SIGKILL);
        while (waitpid(the_peer.pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    if (the_peer.in_fd >= 0)
        close(the_peer.in_fd);
    if (the_peer.out_fd >= 0)
        close(the_peer.out_fd);
    for (size_t i = 0; i < the_peer.nlines; i++)
        free(the_peer.lines[i]);
    memset(&the_peer, 0, sizeof the_peer);
    the_peer.in_fd = the_peer.out_fd = -1;
}

static void interop_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    suite_init();
}

static void interop_fini(void)
{
    peer_reset();
    suite_fini();
}

TestSuite(omega_interop, .init = interop_init, .fini = interop_fini, .timeout = 90);

static const char *transcript(void)
{
    static char buf[8192];
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < the_peer.nlines && n + 2 < sizeof buf; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", i ? " | " : "", the_peer.lines[i]);
    return buf;
}

static peer_t *peer_start(const char *ns, int clients, const char *password)
{
    peer_reset();
    peer_t *p = &the_peer;
    char script[4600], nclients[16];
    snprintf(script, sizeof script, "%s/omega_peer.js", t_interop_dir());
    snprintf(nclients, sizeof nclients, "%d", clients);
    const char *argv[] = {t_find_node(), script, "--url", t_redis_url(), "--ns", ns, "--clients",
                          nclients, "--password", password, NULL};
    p->pid = t_spawn_peer(argv, &p->out_fd, &p->in_fd);
    return p;
}

static void peer_pump(peer_t *p, int wait_ms)
{
    struct pollfd pfd = {p->out_fd, POLLIN, 0};
    if (p->eof || poll(&pfd, 1, wait_ms) <= 0)
        return;
    char tmp[4096];
    ssize_t n = read(p->out_fd, tmp, sizeof tmp);
    if (n <= 0) {
        if (n == 0 || errno != EINTR)
            p->eof = 1;
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (tmp[i] == '\n') {
            cr_assert(p->nlines < PEER_LINES, "peer printed too many lines");
            p->lines[p->nlines++] = strndup(p->part, p->plen);
            p->plen = 0;
        } else if (p->plen < sizeof p->part - 1) {
            p->part[p->plen++] = tmp[i];
        }
    }
}

/* The next line (after the cursor) starting with `prefix`; fails on an
 * "error" line, EOF or timeout. */
static const char *peer_expect(peer_t *p, const char *prefix, unsigned timeout_ms)
{
    uint64_t deadline = t_now_ms() + timeout_ms;
    size_t n = strlen(prefix);
    for (;;) {
        for (; p->at < p->nlines; p->at++) {
            const char *l = p->lines[p->at];
            cr_assert(strncmp(l, "error", 5) != 0, "node peer failed: %s", transcript());
            if (strncmp(l, prefix, n) == 0)
                return p->lines[p->at++] + n;
        }
        cr_assert(!p->eof, "node peer exited waiting for \"%s\": %s", prefix, transcript());
        uint64_t now = t_now_ms();
        cr_assert(now < deadline, "timed out waiting for \"%s\" from node peer: %s", prefix,
                  transcript());
        peer_pump(p, (int)(deadline - now));
    }
}

/* Is there a line `line` (anywhere)? Waits up to timeout_ms for it. */
static int peer_saw(peer_t *p, const char *line, unsigned timeout_ms)
{
    uint64_t deadline = t_now_ms() + timeout_ms;
    for (;;) {
        for (size_t i = 0; i < p->nlines; i++)
            if (strcmp(p->lines[i], line) == 0)
                return 1;
        uint64_t now = t_now_ms();
        if (now >= deadline || p->eof)
            return 0;
        peer_pump(p, (int)(deadline - now));
    }
}

static void peer_cmd(peer_t *p, const char *line)
{
    size_t n = strlen(line);
    cr_assert(write(p->in_fd, line, n) == (ssize_t)n && write(p->in_fd, "\n", 1) == 1,
              "write to node peer: %s", strerror(errno));
}

/* Start the peer with `clients` clients; their spark ids into ids[]. */
static peer_t *peer_with_clients(const char *ns, int clients, const char *password,
                                 char ids[][64])
{
    peer_t *p = peer_start(ns, clients, password);
    peer_expect(p, "registered ", 20000);
    for (int i = 0; i < clients; i++) {
        const char *l = peer_expect(p, "spark c", 20000);
        int k = atoi(l);
        cr_assert(k >= 0 && k < clients);
        const char *sp = strchr(l, ' ');
        cr_assert_not_null(sp);
        snprintf(ids[k], 64, "%s", sp + 1);
    }
    peer_expect(p, "clients ", 20000);
    return p;
}

#define NODE_MSG "{\"hello\":\"w\xc3\xb6rld \xe2\x82\xac\",\"n\":[1,2.5,-3],\"ok\":true}"

Test(omega_interop, c_sends_to_primus_clients_on_a_node_server)
{
    require_node();
    const char *ns = t_ns();
    char ids[2][64];
    peer_t *p = peer_with_clients(ns, 2, "supreme", ids);
    node_t *a = node_start(0, ns, NULL);
    node_connect(a, "x1");
    node_flush(a);
    char line[512];

    /* One spark. */
    mpx_forward_result_t *r = NULL;
    int rc = mpx_forward_spark(a->om, ids[0], strlen(ids[0]), NODE_MSG, 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->nfailed, 0, "%s: %s", r->nfailed ? r->failed[0].server : "",
                 r->nfailed ? r->failed[0].reason : "");
    cr_assert_eq(r->sent, 1);
    mpx_forward_result_free(r);
    snprintf(line, sizeof line, "recv c0 %s", NODE_MSG);
    cr_assert(peer_saw(p, line, 5000), "client c0 did not get the message: %s", transcript());

    /* A list: both Node clients and a local spark. */
    const char *list[] = {ids[0], ids[1], "x1", "unknown"};
    rc = mpx_forward_sparks(a->om, (const void *const *)list, NULL, 4, "[\"list\"]", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 3, "sent %llu", (unsigned long long)r->sent);
    cr_assert_eq(r->local, 1);
    cr_assert_eq(r->unknown, 1);
    mpx_forward_result_free(r);
    cr_assert(peer_saw(p, "recv c0 [\"list\"]", 5000), "%s", transcript());
    cr_assert(peer_saw(p, "recv c1 [\"list\"]", 5000), "%s", transcript());
    cr_assert(gw_got(&a->gw, "x1", "[\"list\"]"));

    /* Everyone. */
    rc = mpx_forward_broadcast(a->om, "{\"all\":1}", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 3);
    cr_assert_eq(r->nfailed, 0);
    mpx_forward_result_free(r);
    cr_assert(peer_saw(p, "recv c1 {\"all\":1}", 5000), "%s", transcript());

    /* A dead server among the targets. */
    char dead[64];
    snprintf(dead, sizeof dead, "http://127.0.0.1:%u", closed_port());
    redisContext *c = t_connect(NULL);
    t_int(c, "HSET %s:sparks d1 %s", ns, dead);
    redisFree(c);
    const char *mixed[] = {"d1", ids[1]};
    rc = mpx_forward_sparks(a->om, (const void *const *)mixed, NULL, 2, "\"mixed\"", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 1);
    cr_assert_eq(r->nfailed, 1);
    cr_assert_str_eq(r->failed[0].server, dead);
    cr_assert_eq(r->failed[0].err, MPX_ECONN);
    mpx_forward_result_free(r);
    cr_assert(peer_saw(p, "recv c1 \"mixed\"", 5000), "%s", transcript());

    /* Wrong credentials: 401 from omega-supreme, nothing delivered. */
    mpx_omega_options_t o;
    omega_opts(&o, &nodes[2].gw);
    o.password = "not-supreme";
    mpx_omega_t *bad = NULL;
    cr_assert_eq(mpx_omega_create(a->mpx, &o, &bad), 0);
    nodes[2].om = bad;
    rc = mpx_forward_spark(bad, ids[0], strlen(ids[0]), "\"sneaky\"", 0, &r);
    cr_assert_eq(rc, 0, "%s", mpx_last_error());
    cr_assert_eq(r->sent, 0);
    cr_assert_eq(r->nfailed, 1);
    cr_assert_eq(r->failed[0].status, 401);
    cr_assert(strstr(r->failed[0].reason, "programmed to protect"), "%s", r->failed[0].reason);
    mpx_forward_result_free(r);
    cr_assert(!peer_saw(p, "recv c0 \"sneaky\"", 500), "delivered despite 401: %s",
              transcript());

    peer_cmd(p, "end");
    peer_expect(p, "done", 10000);
}

Test(omega_interop, node_forwards_reach_sparks_of_a_c_server)
{
    require_node();
    const char *ns = t_ns();
    node_t *a = node_start(0, ns, NULL);
    node_connect(a, "x1");
    node_connect(a, "x2");
    node_flush(a);
    char ids[1][64];
    peer_t *p = peer_with_clients(ns, 1, "supreme", ids);
    char cmd[512];
    const char *l;

    /* forward.spark */
    peer_cmd(p, "spark x1 {\"to\":\"x1\",\"s\":\"\xc3\xa9\xe2\x82\xac\"}");
    l = peer_expect(p, "forwarded ", 10000);
    cr_assert_str_eq(l, "{\"err\":null,\"data\":{\"ok\":true,\"send\":1}}");
    cr_assert(gw_got(&a->gw, "x1", "{\"to\":\"x1\",\"s\":\"\xc3\xa9\xe2\x82\xac\"}"));
    cr_assert(!gw_got(&a->gw, "x2", "{\"to\":\"x1\",\"s\":\"\xc3\xa9\xe2\x82\xac\"}"));

    /* forward.sparks: the C sparks and the Node client. */
    snprintf(cmd, sizeof cmd, "sparks x1,x2,%s,nobody [0,false,null]", ids[0]);
    peer_cmd(p, cmd);
    l = peer_expect(p, "forwarded ", 10000);
    cr_assert_str_eq(l, "{\"err\":null,\"data\":{\"ok\":true,\"send\":3}}");
    cr_assert(gw_got(&a->gw, "x1", "[0,false,null]"));
    cr_assert(gw_got(&a->gw, "x2", "[0,false,null]"));
    cr_assert(peer_saw(p, "recv c0 [0,false,null]", 5000), "%s", transcript());

    /* forward.broadcast */
    gw_reset(&a->gw);
    peer_cmd(p, "broadcast {\"b\":2}");
    l = peer_expect(p, "forwarded ", 10000);
    cr_assert_str_eq(l, "{\"err\":null,\"data\":{\"ok\":true,\"send\":3}}");
    cr_assert(gw_got(&a->gw, "x1", "{\"b\":2}"));
    cr_assert(gw_got(&a->gw, "x2", "{\"b\":2}"));

    peer_cmd(p, "end");
    peer_expect(p, "done", 10000);

    /* Wrong credentials: 401, nothing delivered. */
    gw_reset(&a->gw);
    p = peer_with_clients(ns, 0, "wrong", ids);
    peer_cmd(p, "spark x1 1");
    l = peer_expect(p, "forwarded ", 10000);
    cr_assert(strstr(l, "\"status\":401"), "%s", l);
    cr_assert(strstr(l, "programmed to protect"), "%s", l);
    cr_assert_eq(gw_count(&a->gw), 0);
    peer_cmd(p, "end");
    peer_expect(p, "done", 10000);
}
