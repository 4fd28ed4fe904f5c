/*
 * cluster.c - Redis Cluster routing over hiredis, behind mpx__conn_t.
 *
 * Debian's hiredis 0.14 has no cluster client, so this is a thin one. A
 * connection whose endpoint is a redis-cluster:// seed list owns a
 * `struct mpx__cluster`: the slot map (16384 entries -> node index) and one
 * node record per cluster node, each with its own single-node mpx__conn_t
 * (conn.c), so AUTH, SCRIPT LOAD, run_id tracking, timeouts, backoff and the
 * reset-on-error close apply per node unchanged. Only masters are ever sent
 * commands; replicas are known for failover detection.
 *
 * The map is read with CLUSTER NODES (not CLUSTER SLOTS: Redis 7 leaves out
 * of CLUSTER SLOTS the replicas that have not replicated anything yet, and
 * failover detection needs every replica) from, in order: a connected
 * master, any other connected node, any node of the last map, the seeds. An
 * empty address in the reply means the node asked. It is read at the first
 * use, after a MOVED (at most every 100 ms; the MOVED entry is patched at
 * once), after a connection error, after mpx__conn_close, and when
 * mpx__conn_refresh finds it older than asked.
 *
 * Routing: a command goes to the master of the slot of its first key
 * (EVAL/EVALSHA/FCALL: the first of KEYS when numkeys > 0; OBJECT/MEMORY:
 * argv[2]; most commands: argv[1]). Commands with no key (PING, INFO,
 * SCRIPT, CLUSTER, DBSIZE, CONFIG, SCAN, ..., EVALSHA with numkeys 0) go to
 * one master, the first connected; mpx__conn_node_command reaches each.
 * MULTI/EXEC/WATCH are refused (MPX_ESTATE): a transaction cannot be
 * routed command by command; use one script call per slot instead.
 *
 * Replies followed: -MOVED (patch the entry, re-read the map soon, resend
 * to the new node), -ASK (ASKING + the command on the named node, in one
 * write; the map is not changed), -TRYAGAIN / -CLUSTERDOWN / -LOADING
 * (pause 10 ms doubling to 500 ms, resend), NOSCRIPT (reload the scripts on
 * that node, resend once), I/O errors (the node's connection is closed with
 * a reset, the map re-read, resend after a pause). Bounds: 16 attempts per
 * command, and no new attempt once command_timeout_ms has passed since the
 * call began (an attempt already started may overrun that by its own I/O
 * timeout). Resending is safe for this library's commands (idempotent
 * writes and scripts); a command whose reply was lost may have run.
 *
 * Failover: when a map read shows a slot seen at the previous read now
 * served by a node that was a replica at that read (a promotion: Redis
 * replicates asynchronously, so acknowledged writes may be lost),
 * c->run_id_changed is set, as it is when a node's connection comes back
 * with another run_id; the owner then rewrites its state. A slot moving
 * between masters (a reshard) does not set it.
 *
 * Memory: node records are never freed while a call runs (indexes held by
 * a pipeline stay valid); nodes missing from the last map are pruned at the
 * start of the next call. Pipeline scratch space is kept between calls.
 *
 * Thread-safety: none of its own. Each mpx__conn_t, with its cluster, is
 * used by one thread at a time (as everything in conn.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cluster.h"

#define NSLOTS 16384
#define NONE UINT16_MAX          /* no node */
#define END UINT32_MAX           /* end of a pipeline node list */
#define MAX_NODES 1024
#define MAX_ATTEMPTS 16          /* per command, redirects and retries */
#define STALE_REFRESH_MS 100     /* re-read a stale map at most this often */
#define PAUSE_FIRST_MS 10
#define PAUSE_MAX_MS 500

#define SLOT_ANY (-1)            /* no key: any master */
#define SLOT_REFUSE (-2)         /* cannot be routed (MULTI, ...) */

typedef struct mpx__cluster mpx__cluster_t;

typedef struct cnode {
    mpx__conn_t conn;            /* conn.ep == &ep */
    mpx__redis_endpoint_t ep;    /* host owned; user/password borrowed */
    char name[300];              /* "host:port", for messages */
    char id[41];                 /* cluster node id ("" if not known) */
    uint16_t replica_of;         /* at the last map read: its master, or NONE */
    bool listed;                 /* in the last map (or learned since) */
    bool master;                 /* serves slots in the last map */
    bool tried;                  /* asked during this map read */
    /* one pipeline round */
    bool used, failed, reload;
    uint32_t head, tail;
} cnode_t;

/* A command of a pipeline call. */
enum { P_DONE, P_PENDING };
typedef struct pcmd {
    uint32_t next;   /* next command of the same node in this round */
    int16_t slot;    /* or SLOT_ANY */
    uint16_t ask;    /* ASK target, or NONE */
    uint8_t state;   /* P_* */
    uint8_t noscript; /* scripts reloaded for it once */
} pcmd_t;

struct mpx__cluster {
    cnode_t **nodes;
    size_t nnodes, cap;
    uint16_t *masters;           /* serving masters, sorted by name */
    size_t nmasters;
    bool have_map;
    bool stale;                  /* re-read the map soon */
    bool prune;                  /* nodes missing from the map: drop them */
    uint64_t map_ms, tried_ms;   /* last read, last attempt */
    uint16_t route[NSLOTS];      /* slot -> node, patched by MOVED */
    uint16_t seen[NSLOTS];       /* slot -> node at the last map read */
    uint8_t lost[NSLOTS / 8];    /* slots failed over since the owner asked */
    bool lost_all;               /* a node restarted: any slot may have lost */
    pcmd_t *pc;                  /* pipeline scratch */
    size_t pc_cap;
    uint16_t *used;              /* nodes of a pipeline round */
    size_t used_cap;
};

/* ---- nodes ---------------------------------------------------------------- */

static mpx__cluster_t *cluster_get(mpx__conn_t *c)
{
    if (c->cl)
        return c->cl;
    mpx__cluster_t *cl = calloc(1, sizeof *cl);
    if (!cl)
        return NULL;
    for (size_t s = 0; s < NSLOTS; s++)
        cl->route[s] = cl->seen[s] = NONE;
    c->cl = cl;
    return cl;
}

static bool node_open(const cnode_t *n)
{
    return n->conn.ctx && !n->conn.ctx->err;
}

static void node_free(cnode_t *n)
{
    if (!n)
        return;
    mpx__conn_close(&n->conn);
    free(n->ep.host);
    free(n);
}

static uint16_t node_find(const mpx__cluster_t *cl, const char *host, size_t hlen, int port)
{
    for (size_t i = 0; i < cl->nnodes; i++) {
        const cnode_t *n = cl->nodes[i];
        if (n->ep.port == port && strlen(n->ep.host) == hlen && memcmp(n->ep.host, host, hlen) == 0)
            return (uint16_t)i;
    }
    return NONE;
}

/* Find the node host:port or add it (listed, not a master yet): 0 with *out
 * set, or an error with the message set. */
static int node_get(mpx__conn_t *c, const char *host, size_t hlen, int port, uint16_t *out)
{
    mpx__cluster_t *cl = c->cl;
    if ((*out = node_find(cl, host, hlen, port)) != NONE)
        return 0;
    if (cl->nnodes >= MAX_NODES)
        return mpx__fail(MPX_EPROTO, "redis cluster: more than %d nodes", MAX_NODES);
    if (hlen == 0 || hlen >= 256 || port <= 0 || port > 65535)
        return mpx__fail(MPX_EPROTO, "redis cluster: bad node address '%.*s:%d'",
                         (int)(hlen > 64 ? 64 : hlen), host, port);
    if (cl->nnodes == cl->cap) {
        size_t cap = cl->cap ? cl->cap * 2 : 8;
        cnode_t **nodes = realloc(cl->nodes, cap * sizeof *nodes);
        if (!nodes)
            return mpx__fail(MPX_ENOMEM, "out of memory (cluster nodes)");
        cl->nodes = nodes;
        cl->cap = cap;
    }
    cnode_t *n = calloc(1, sizeof *n);
    if (!n || !(n->ep.host = strndup(host, hlen))) {
        free(n);
        return mpx__fail(MPX_ENOMEM, "out of memory (cluster node)");
    }
    n->ep.port = port;
    n->ep.user = c->ep->user; /* the seed URL's credentials apply to every node */
    n->ep.password = c->ep->password;
    snprintf(n->name, sizeof n->name, "%s:%d", n->ep.host, port);
    n->replica_of = NONE;
    n->listed = true;
    mpx__conn_init(&n->conn, &n->ep, c->connect_timeout_ms, c->command_timeout_ms, c->name,
                   c->error_counter);
    cl->nodes[cl->nnodes] = n;
    *out = (uint16_t)cl->nnodes++;
    return 0;
}

/* What a node connection learned that concerns the owner. */
static void absorb(mpx__conn_t *c, cnode_t *n)
{
    if (n->conn.run_id_changed) {
        /* This node restarted (another process answered at reconnect). */
        c->run_id_changed = true;
        c->cl->lost_all = true;
        n->conn.run_id_changed = false;
    }
    if (!c->shas[0][0] && n->conn.shas[0][0])
        memcpy(c->shas, n->conn.shas, sizeof c->shas); /* the same on every node */
}

static int node_ensure(mpx__conn_t *c, cnode_t *n, bool force)
{
    int rc = mpx__conn_ensure(&n->conn, force);
    absorb(c, n);
    return rc;
}

/* Drop the nodes missing from the last map (none is referenced by a slot:
 * the map was replaced, and MOVED/ASK targets learned since are listed). */
static void prune(mpx__cluster_t *cl)
{
    cl->prune = false;
    uint16_t *remap = malloc(cl->nnodes * sizeof *remap + 1);
    if (!remap)
        return; /* try again next time */
    size_t j = 0;
    for (size_t i = 0; i < cl->nnodes; i++) {
        if (cl->nodes[i]->listed) {
            remap[i] = (uint16_t)j;
            cl->nodes[j++] = cl->nodes[i];
        } else {
            remap[i] = NONE;
            node_free(cl->nodes[i]);
        }
    }
    cl->nnodes = j;
    for (size_t s = 0; s < NSLOTS; s++) {
        cl->route[s] = cl->route[s] == NONE ? NONE : remap[cl->route[s]];
        cl->seen[s] = cl->seen[s] == NONE ? NONE : remap[cl->seen[s]];
    }
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i]->replica_of != NONE)
            cl->nodes[i]->replica_of = remap[cl->nodes[i]->replica_of];
    size_t k = 0;
    for (size_t m = 0; m < cl->nmasters; m++)
        if (remap[cl->masters[m]] != NONE)
            cl->masters[k++] = remap[cl->masters[m]];
    cl->nmasters = k;
    free(remap);
}

/* ---- the slot map ----------------------------------------------------------- */

/* One line of CLUSTER NODES:
 * <id> <ip:port@cport[,hostname]> <flags> <master-id|-> <ping> <pong>
 * <config-epoch> <link-state> <slot|first-last|[migration]>... */
typedef struct nline {
    const char *id, *master_id;
    size_t master_len;
    const char *host;
    size_t hlen;
    int port;
    bool master;
    const char *slots, *end; /* the slot tokens */
    uint16_t node, replica_of;
} nline_t;

/* Next space-separated token of [*p, end); NULL at the end. */
static const char *token(const char **p, const char *end, size_t *len)
{
    const char *s = *p;
    while (s < end && *s == ' ')
        s++;
    const char *t = s;
    while (s < end && *s != ' ')
        s++;
    *p = s;
    *len = (size_t)(s - t);
    return *len ? t : NULL;
}

static bool has_flag(const char *flags, size_t len, const char *flag)
{
    size_t fl = strlen(flag);
    for (const char *p = flags, *end = flags + len; p < end;) {
        const char *q = memchr(p, ',', (size_t)(end - p));
        size_t n = q ? (size_t)(q - p) : (size_t)(end - p);
        if (n == fl && memcmp(p, flag, fl) == 0)
            return true;
        p += n + 1;
    }
    return false;
}

/* Decimal in [p, p + n), at most `max`; -1 if not. */
static long number(const char *p, size_t n, long max)
{
    long v = 0;
    if (n == 0 || n > 10)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v <= max ? v : -1;
}

/* Parse one line; false if it is to be skipped (handshake, no address). */
static bool parse_line(const char *p, const char *end, nline_t *l)
{
    size_t n, alen, flen;
    memset(l, 0, sizeof *l);
    const char *id = token(&p, end, &n);
    if (!id || n != 40)
        return false;
    l->id = id;
    const char *addr = token(&p, end, &alen);
    const char *flags = token(&p, end, &flen);
    l->master_id = token(&p, end, &l->master_len);
    if (!addr || !flags || !l->master_id)
        return false;
    if (has_flag(flags, flen, "handshake") || has_flag(flags, flen, "noaddr"))
        return false;
    l->master = has_flag(flags, flen, "master");
    /* ip:port@cport[,hostname]; the ip may hold ':' (IPv6): the last one
     * before '@' ends it. */
    const char *at = addr;
    while (at < addr + alen && *at != '@' && *at != ',')
        at++;
    const char *colon = NULL;
    for (const char *q = addr; q < at; q++)
        if (*q == ':')
            colon = q;
    if (!colon)
        return false;
    l->host = addr;
    l->hlen = (size_t)(colon - addr);
    l->port = (int)number(colon + 1, (size_t)(at - colon - 1), 65535);
    if (l->port <= 0)
        return false;
    for (int k = 0; k < 4; k++) /* ping, pong, epoch, link state */
        if (!token(&p, end, &n))
            break;
    l->slots = p;
    l->end = end;
    return true;
}

/* Apply a CLUSTER NODES reply from node `asked`. 0, or an error (the map is
 * then unchanged). */
static int apply_map(mpx__conn_t *c, uint16_t asked, const char *text, size_t len)
{
    mpx__cluster_t *cl = c->cl;
    size_t nl = 1;
    for (size_t i = 0; i < len; i++)
        nl += text[i] == '\n';
    nline_t *lines = calloc(nl, sizeof *lines);
    uint16_t *route = malloc(NSLOTS * sizeof *route);
    uint16_t *masters = NULL;
    int rc = 0;
    if (!lines || !route) {
        rc = mpx__fail(MPX_ENOMEM, "out of memory (cluster map)");
        goto out;
    }
    for (size_t s = 0; s < NSLOTS; s++)
        route[s] = NONE;

    size_t n = 0, covered = 0;
    for (const char *p = text, *end = text + len; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        if (le > p && le[-1] == '\r')
            le--;
        nline_t *l = &lines[n];
        if (parse_line(p, le, l)) {
            const char *host = l->host;
            size_t hlen = l->hlen;
            if (hlen == 0) { /* the node asked, as others know it */
                host = cl->nodes[asked]->ep.host;
                hlen = strlen(host);
            }
            if ((rc = node_get(c, host, hlen, l->port, &l->node)) != 0)
                goto out;
            if (l->master) {
                size_t tl;
                const char *q = l->slots;
                for (const char *t; (t = token(&q, l->end, &tl));) {
                    if (*t == '[')
                        continue; /* [slot->-id] / [slot-<-id]: a migration */
                    const char *dash = memchr(t, '-', tl);
                    long a = number(t, dash ? (size_t)(dash - t) : tl, NSLOTS - 1);
                    long b = dash ? number(dash + 1, tl - (size_t)(dash - t) - 1, NSLOTS - 1) : a;
                    if (a < 0 || b < a)
                        continue;
                    for (long s = a; s <= b; s++) {
                        covered += route[s] == NONE;
                        route[s] = l->node;
                    }
                }
            }
            n++;
        }
        p = eol ? eol + 1 : end;
    }
    if (covered == 0) {
        rc = mpx__fail(MPX_EPROTO, "redis %s: CLUSTER NODES lists no served slot (cluster not set up?)",
                       cl->nodes[asked]->name);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        lines[i].replica_of = NONE;
        if (lines[i].master || lines[i].master_len != 40)
            continue;
        for (size_t j = 0; j < n; j++)
            if (memcmp(lines[j].id, lines[i].master_id, 40) == 0)
                lines[i].replica_of = lines[j].node;
    }

    /* Failover: a slot we saw served by one node now served by another that
     * was a replica at the last read. (Compared before the roles update.) */
    bool failover = false;
    for (size_t s = 0; s < NSLOTS; s++) {
        uint16_t was = cl->seen[s], now = route[s];
        if (was != NONE && now != NONE && was != now && cl->nodes[now]->replica_of != NONE) {
            failover = true;
            cl->lost[s / 8] |= (uint8_t)(1u << (s % 8));
        }
    }

    if (!(masters = malloc(cl->nnodes * sizeof *masters))) {
        rc = mpx__fail(MPX_ENOMEM, "out of memory (cluster map)");
        goto out;
    }
    for (size_t i = 0; i < cl->nnodes; i++) {
        cnode_t *nd = cl->nodes[i];
        nd->listed = nd->master = false;
        nd->replica_of = NONE;
    }
    for (size_t i = 0; i < n; i++) {
        cnode_t *nd = cl->nodes[lines[i].node];
        nd->listed = true;
        memcpy(nd->id, lines[i].id, 40);
        nd->id[40] = 0;
        nd->replica_of = lines[i].replica_of;
    }
    for (size_t s = 0; s < NSLOTS; s++)
        if (route[s] != NONE)
            cl->nodes[route[s]]->master = true;
    size_t nm = 0;
    for (size_t i = 0; i < cl->nnodes; i++) {
        cnode_t *nd = cl->nodes[i];
        if (!nd->listed)
            cl->prune = true;
        if (!nd->master) {
            mpx__conn_close(&nd->conn); /* commands only ever go to masters */
            continue;
        }
        /* insertion sort by name: a stable order for mpx__conn_node_* */
        size_t k = nm++;
        while (k > 0 && strcmp(cl->nodes[masters[k - 1]]->name, nd->name) > 0) {
            masters[k] = masters[k - 1];
            k--;
        }
        masters[k] = (uint16_t)i;
    }
    free(cl->masters);
    cl->masters = masters;
    cl->nmasters = nm;
    masters = NULL;
    memcpy(cl->route, route, sizeof cl->route);
    memcpy(cl->seen, route, sizeof cl->seen);
    cl->have_map = true;
    cl->stale = false;
    cl->map_ms = mpx__now_ms();
    if (failover)
        c->run_id_changed = true;
out:
    free(lines);
    free(route);
    free(masters);
    return rc;
}

/* Ask node i for the map and apply it. */
static int ask_map(mpx__conn_t *c, uint16_t i, bool force)
{
    cnode_t *n = c->cl->nodes[i];
    n->tried = true;
    int rc = node_ensure(c, n, force);
    if (rc)
        return rc;
    const char *argv[2] = {"CLUSTER", "NODES"};
    size_t lens[2] = {7, 5};
    redisReply *r = redisCommandArgv(n->conn.ctx, 2, argv, lens);
    if (!r)
        return mpx__conn_io_error(&n->conn, "CLUSTER NODES");
    if (r->type == REDIS_REPLY_ERROR) {
        if (strstr(r->str, "cluster support disabled"))
            rc = mpx__fail(MPX_EINVAL,
                           "redis %s is not a Redis Cluster node (%s); a single Redis takes a "
                           "redis:// URL",
                           n->name, r->str);
        else
            rc = mpx__fail(MPX_EREDIS, "redis %s: CLUSTER NODES failed: %s", n->name, r->str);
    } else if (r->type != REDIS_REPLY_STRING) {
        rc = mpx__fail(MPX_EPROTO, "redis %s: CLUSTER NODES: unexpected reply type %d", n->name,
                       r->type);
    } else {
        rc = apply_map(c, i, r->str, r->len);
    }
    freeReplyObject(r);
    return rc;
}

/* Read the map from the first node that answers. On failure the old map
 * (if any) stays, and the error of the most telling failure is returned. */
static int read_map(mpx__conn_t *c, bool force)
{
    mpx__cluster_t *cl = c->cl;
    cl->tried_ms = mpx__now_ms();
    for (size_t i = 0; i < cl->nnodes; i++)
        cl->nodes[i]->tried = false;
    int rc, last = MPX_ECONN, notcluster = 0;
    char why[512] = "";
    /* Pass 0: connected masters; 1: other connected nodes; 2: the rest of
     * the map's nodes; 3: the seeds. */
    for (int pass = 0; pass < 4; pass++) {
        size_t count = pass < 3 ? cl->nnodes : c->ep->nseeds;
        for (size_t k = 0; k < count; k++) {
            uint16_t i;
            if (pass < 3) {
                cnode_t *n = cl->nodes[k];
                bool open = node_open(n);
                if (n->tried || (pass == 0 && !(open && n->master)) || (pass == 1 && !open) ||
                    (pass == 2 && !n->listed))
                    continue;
                i = (uint16_t)k;
            } else {
                const struct mpx__seed *s = &c->ep->seeds[k];
                if ((rc = node_get(c, s->host, strlen(s->host), s->port, &i)) != 0) {
                    last = rc;
                    snprintf(why, sizeof why, "%s", mpx_last_error());
                    continue;
                }
                if (cl->nodes[i]->tried)
                    continue;
            }
            if ((rc = ask_map(c, i, force)) == 0)
                return 0;
            last = rc;
            if (rc == MPX_EINVAL)
                notcluster = rc;
            if (rc == MPX_EINVAL || !notcluster)
                snprintf(why, sizeof why, "%s", mpx_last_error());
        }
    }
    if (c->ep->nseeds == 0 && cl->nnodes == 0)
        snprintf(why, sizeof why, "no seed node");
    if (notcluster)
        return mpx__fail(notcluster, "%s", why);
    return mpx__fail(last, "redis cluster (%s connection): cannot read the slot map from any node; "
                         "last error: %s",
                     c->name, why);
}

/* Entry of every routed call: allocate, prune, read the map if there is
 * none or it is stale (rate-limited). */
static int prepare(mpx__conn_t *c, bool force)
{
    mpx__cluster_t *cl = cluster_get(c);
    if (!cl)
        return mpx__fail(MPX_ENOMEM, "out of memory (cluster)");
    if (cl->prune)
        prune(cl);
    if (!cl->have_map)
        return read_map(c, force);
    if (cl->stale && (force || mpx__now_ms() - cl->tried_ms >= STALE_REFRESH_MS))
        read_map(c, force); /* a failure keeps the old map: commands find out */
    return 0;
}

/* ---- routing ------------------------------------------------------------------ */

static bool arg_is(const mpx__argv_t *a, size_t i, const char *word)
{
    size_t n = strlen(word);
    return i < a->argc && a->lens[i] == n && strncasecmp(a->argv[i], word, n) == 0;
}

/* Commands without a key (the first argument is not a key). */
static const char *const keyless[] = {
    "PING", "ECHO", "INFO", "SCRIPT", "CLUSTER", "DBSIZE", "TIME", "CONFIG", "CLIENT",
    "COMMAND", "FLUSHALL", "FLUSHDB", "SCAN", "RANDOMKEY", "LASTSAVE", "SLOWLOG", "LATENCY",
    "ROLE", "WAIT", "READONLY", "READWRITE", "ASKING", "AUTH", "SELECT", "HELLO", "FUNCTION",
    "DEBUG", "SAVE", "BGSAVE", "BGREWRITEAOF", "PUBLISH", "ACL", "MODULE", "SWAPDB", "QUIT",
};

/* The slot a command goes to, SLOT_ANY or SLOT_REFUSE. */
static int command_slot(const mpx__argv_t *a)
{
    if (a->argc == 0)
        return SLOT_ANY;
    if (arg_is(a, 0, "EVALSHA") || arg_is(a, 0, "EVAL") || arg_is(a, 0, "EVALSHA_RO") ||
        arg_is(a, 0, "EVAL_RO") || arg_is(a, 0, "FCALL") || arg_is(a, 0, "FCALL_RO")) {
        long nk = a->argc > 2 ? number(a->argv[2], a->lens[2], 1000000) : -1;
        return nk > 0 && a->argc > 3 ? (int)mpx__key_slot(a->argv[3], a->lens[3]) : SLOT_ANY;
    }
    if (arg_is(a, 0, "MULTI") || arg_is(a, 0, "EXEC") || arg_is(a, 0, "DISCARD") ||
        arg_is(a, 0, "WATCH") || arg_is(a, 0, "UNWATCH"))
        return SLOT_REFUSE;
    if (arg_is(a, 0, "OBJECT") || arg_is(a, 0, "MEMORY")) /* OBJECT ENCODING key, ... */
        return a->argc > 2 ? (int)mpx__key_slot(a->argv[2], a->lens[2]) : SLOT_ANY;
    for (size_t i = 0; i < sizeof keyless / sizeof keyless[0]; i++)
        if (arg_is(a, 0, keyless[i]))
            return SLOT_ANY;
    return a->argc > 1 ? (int)mpx__key_slot(a->argv[1], a->lens[1]) : SLOT_ANY;
}

static int refuse(const mpx__argv_t *a)
{
    return mpx__fail(MPX_ESTATE,
                     "redis cluster: %.*s cannot be routed on a cluster (a transaction spans "
                     "commands; use one script call per slot)",
                     (int)a->lens[0], a->argv[0]);
}

/* A connected master if any, else the first master; NONE if none. */
static uint16_t any_master(const mpx__cluster_t *cl)
{
    for (size_t m = 0; m < cl->nmasters; m++)
        if (node_open(cl->nodes[cl->masters[m]]))
            return cl->masters[m];
    return cl->nmasters ? cl->masters[0] : NONE;
}

static uint16_t target(const mpx__cluster_t *cl, int slot)
{
    return slot == SLOT_ANY ? any_master(cl) : cl->route[slot];
}

enum { R_OTHER, R_MOVED, R_ASK, R_RETRY, R_DOWN, R_NOSCRIPT };

static int classify(const char *s)
{
    if (strncmp(s, "MOVED ", 6) == 0)
        return R_MOVED;
    if (strncmp(s, "ASK ", 4) == 0)
        return R_ASK;
    if (strncmp(s, "TRYAGAIN", 8) == 0 || strncmp(s, "LOADING", 7) == 0)
        return R_RETRY;
    if (strncmp(s, "CLUSTERDOWN", 11) == 0)
        return R_DOWN;
    if (strncmp(s, "NOSCRIPT", 8) == 0)
        return R_NOSCRIPT;
    return R_OTHER;
}

/* "MOVED <slot> <host>:<port>" / "ASK ...": the target node (added if new;
 * an empty host is the node that answered). NONE if malformed. */
static uint16_t redirect(mpx__conn_t *c, const cnode_t *from, const char *s, int *slot)
{
    const char *p = strchr(s, ' ');
    const char *q = p ? strchr(p + 1, ' ') : NULL;
    if (!q)
        return NONE;
    long sl = number(p + 1, (size_t)(q - p - 1), NSLOTS - 1);
    const char *addr = q + 1;
    const char *colon = strrchr(addr, ':');
    if (sl < 0 || !colon)
        return NONE;
    long port = number(colon + 1, strlen(colon + 1), 65535);
    if (port <= 0)
        return NONE;
    *slot = (int)sl;
    uint16_t i;
    if (colon == addr)
        addr = from->ep.host, colon = addr + strlen(addr);
    return node_get(c, addr, (size_t)(colon - addr), (int)port, &i) == 0 ? i : NONE;
}

static void pause_ms(uint32_t *delay, uint64_t deadline)
{
    uint64_t now = mpx__now_ms();
    if (now >= deadline)
        return;
    uint64_t d = *delay < deadline - now ? *delay : deadline - now;
    struct timespec ts = {(time_t)(d / 1000), (long)(d % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
    *delay = *delay * 2 < PAUSE_MAX_MS ? *delay * 2 : PAUSE_MAX_MS;
}

static void count_error(mpx__conn_t *c)
{
    if (c->error_counter)
        atomic_fetch_add_explicit(c->error_counter, 1, memory_order_relaxed);
}

/* Append (ASKING and) the command to node n's output buffer. */
static int append_cmd(cnode_t *n, bool asking, const mpx__argv_t *a)
{
    static const char *const asking_argv[1] = {"ASKING"};
    static const size_t asking_len[1] = {6};
    if (asking && redisAppendCommandArgv(n->conn.ctx, 1, (const char **)asking_argv,
                                         asking_len) != REDIS_OK)
        return mpx__conn_io_error(&n->conn, "append");
    if (redisAppendCommandArgv(n->conn.ctx, (int)a->argc, a->argv, a->lens) != REDIS_OK)
        return mpx__conn_io_error(&n->conn, "append");
    return 0;
}

/* Read the reply of a command appended with append_cmd. */
static int read_cmd(cnode_t *n, bool asking, redisReply **out)
{
    void *r = NULL;
    *out = NULL;
    if (asking) { /* +OK; were it an error, the command's reply says more */
        if (redisGetReply(n->conn.ctx, &r) != REDIS_OK || !r)
            return mpx__conn_io_error(&n->conn, "read");
        freeReplyObject(r);
        r = NULL;
    }
    if (redisGetReply(n->conn.ctx, &r) != REDIS_OK || !r)
        return mpx__conn_io_error(&n->conn, "read");
    *out = r;
    return 0;
}

/* ---- the calls behind conn.c ----------------------------------------------- */

int mpx__cluster_ensure(mpx__conn_t *c, bool force)
{
    int rc = prepare(c, force);
    if (rc)
        return rc;
    mpx__cluster_t *cl = c->cl;
    for (size_t m = 0; m < cl->nmasters; m++)
        if (node_open(cl->nodes[cl->masters[m]]))
            return 0;
    rc = mpx__fail(MPX_ECONN, "redis cluster (%s connection): no master in the slot map",
                   c->name);
    for (size_t m = 0; m < cl->nmasters; m++)
        if ((rc = node_ensure(c, cl->nodes[cl->masters[m]], force)) == 0)
            return 0;
    cl->stale = true;
    return rc; /* the last master's error, naming it */
}

void mpx__cluster_close(mpx__conn_t *c)
{
    mpx__cluster_t *cl = c->cl;
    if (!cl)
        return;
    for (size_t i = 0; i < cl->nnodes; i++)
        mpx__conn_close(&cl->nodes[i]->conn);
    cl->stale = true;
}

void mpx__cluster_free(mpx__conn_t *c)
{
    mpx__cluster_t *cl = c->cl;
    if (!cl)
        return;
    for (size_t i = 0; i < cl->nnodes; i++)
        node_free(cl->nodes[i]);
    free(cl->nodes);
    free(cl->masters);
    free(cl->pc);
    free(cl->used);
    free(cl);
    c->cl = NULL;
}

int mpx__cluster_refresh(mpx__conn_t *c, uint32_t max_age_ms)
{
    mpx__cluster_t *cl = cluster_get(c);
    if (!cl)
        return mpx__fail(MPX_ENOMEM, "out of memory (cluster)");
    if (cl->prune)
        prune(cl);
    if (cl->have_map && !cl->stale && mpx__now_ms() - cl->map_ms < max_age_ms)
        return 0;
    return read_map(c, false);
}

int mpx__cluster_command(mpx__conn_t *c, mpx__argv_t *a, redisReply **out)
{
    /* A pipeline of one: the same routing, redirects, retries and bounds. */
    mpx__argv_t *cmds[1] = {a};
    int rc;
    return mpx__cluster_pipeline(c, 1, cmds, out, &rc);
}

/* ---- pipelines ------------------------------------------------------------------ */

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * size);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

/* Every command still listed on node n from `from` on failed with rc. */
static void fail_list(mpx__cluster_t *cl, cnode_t *n, uint32_t from, int *rcs, int rc)
{
    n->failed = true;
    for (uint32_t k = from; k != END; k = cl->pc[k].next) {
        rcs[k] = rc;
        cl->pc[k].ask = NONE; /* back to the map's node, which says again */
    }
}

int mpx__cluster_pipeline(mpx__conn_t *c, size_t n, mpx__argv_t *const *cmds,
                          redisReply **replies, int *rcs)
{
    for (size_t i = 0; i < n; i++) {
        replies[i] = NULL;
        rcs[i] = 0;
    }
    if (n == 0)
        return 0;
    int rc = prepare(c, false);
    mpx__cluster_t *cl = c->cl;
    if (rc == 0 && (n >= END || grow((void **)&cl->pc, &cl->pc_cap, n, sizeof *cl->pc)))
        rc = mpx__fail(MPX_ENOMEM, "out of memory (pipeline of %zu commands)", n);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            rcs[i] = rc;
        return rc;
    }
    size_t pending = 0;
    for (size_t i = 0; i < n; i++) {
        pcmd_t *p = &cl->pc[i];
        mpx__argv_finish(cmds[i]);
        int slot = command_slot(cmds[i]);
        p->ask = NONE;
        p->noscript = 0;
        p->slot = (int16_t)slot;
        p->state = slot == SLOT_REFUSE ? P_DONE : P_PENDING;
        if (slot == SLOT_REFUSE)
            rcs[i] = refuse(cmds[i]);
        else
            pending++;
    }

    uint64_t t0 = mpx__now_ms(), deadline = t0 + c->command_timeout_ms;
    uint32_t delay = PAUSE_FIRST_MS;
    int round;
    for (round = 0; round < MAX_ATTEMPTS && pending > 0; round++) {
        if (round > 0 && mpx__now_ms() >= deadline)
            break;
        bool sleep = false, reread = false;
        size_t nused = 0;
        /* 1. Route: one list per node, in input order. */
        if (grow((void **)&cl->used, &cl->used_cap, cl->nnodes, sizeof *cl->used)) {
            rc = mpx__fail(MPX_ENOMEM, "out of memory (pipeline)");
            break;
        }
        for (size_t i = 0; i < n; i++) {
            pcmd_t *p = &cl->pc[i];
            if (p->state != P_PENDING)
                continue;
            uint16_t ni = p->ask != NONE ? p->ask : target(cl, p->slot);
            if (ni == NONE) {
                rcs[i] = p->slot == SLOT_ANY
                             ? mpx__fail(MPX_ECONN, "redis cluster: no master known")
                             : mpx__fail(MPX_ECONN, "redis cluster: slot %d is served by no "
                                                    "master", p->slot);
                sleep = reread = true;
                continue;
            }
            cnode_t *nd = cl->nodes[ni];
            if (!nd->used) {
                nd->used = true;
                nd->failed = nd->reload = false;
                nd->head = nd->tail = END;
                cl->used[nused++] = ni;
            }
            p->next = END;
            if (nd->tail == END)
                nd->head = (uint32_t)i;
            else
                cl->pc[nd->tail].next = (uint32_t)i;
            nd->tail = (uint32_t)i;
        }
        /* 2. Connect and append, node by node. */
        for (size_t u = 0; u < nused; u++) {
            cnode_t *nd = cl->nodes[cl->used[u]];
            if ((rc = node_ensure(c, nd, false)) != 0) {
                fail_list(cl, nd, nd->head, rcs, rc);
                sleep = reread = true;
                continue;
            }
            for (uint32_t k = nd->head; k != END; k = cl->pc[k].next)
                if ((rc = append_cmd(nd, cl->pc[k].ask != NONE, cmds[k])) != 0) {
                    fail_list(cl, nd, nd->head, rcs, rc);
                    sleep = reread = true;
                    break;
                }
        }
        /* 3. Flush every node's output, then read: the nodes work in
         * parallel while we read the first one's replies. */
        for (size_t u = 0; u < nused; u++) {
            cnode_t *nd = cl->nodes[cl->used[u]];
            int done = 0;
            while (!nd->failed && !done)
                if (redisBufferWrite(nd->conn.ctx, &done) != REDIS_OK) {
                    fail_list(cl, nd, nd->head, rcs, mpx__conn_io_error(&nd->conn, "write"));
                    sleep = reread = true;
                }
        }
        for (size_t u = 0; u < nused; u++) {
            cnode_t *nd = cl->nodes[cl->used[u]];
            for (uint32_t k = nd->head; k != END && !nd->failed; k = cl->pc[k].next) {
                pcmd_t *p = &cl->pc[k];
                bool asking = p->ask != NONE;
                redisReply *r;
                p->ask = NONE;
                if ((rc = read_cmd(nd, asking, &r)) != 0) {
                    fail_list(cl, nd, k, rcs, rc);
                    sleep = reread = true;
                    break;
                }
                if (r->type != REDIS_REPLY_ERROR) {
                    replies[k] = r;
                    rcs[k] = 0;
                    p->state = P_DONE;
                    pending--;
                    continue;
                }
                int kind = classify(r->str), to = p->slot;
                uint16_t dst =
                    kind == R_MOVED || kind == R_ASK ? redirect(c, nd, r->str, &to) : NONE;
                if ((kind == R_MOVED || kind == R_ASK) && dst != NONE) {
                    rcs[k] = mpx__fail(MPX_EREDIS, "redis %s: %s", nd->name, r->str);
                    if (kind == R_MOVED) {
                        cl->route[to] = dst;
                        cl->stale = true;
                    } else {
                        p->ask = dst;
                    }
                } else if (kind == R_RETRY || kind == R_DOWN) {
                    rcs[k] = mpx__fail(MPX_EREDIS, "redis %s: %s", nd->name, r->str);
                    sleep = true;
                    cl->stale |= kind == R_DOWN;
                } else if (kind == R_NOSCRIPT && !p->noscript) {
                    rcs[k] = mpx__fail(MPX_EREDIS, "redis %s: %s", nd->name, r->str);
                    p->noscript = 1;
                    nd->reload = true;
                } else {
                    rcs[k] = mpx__fail(MPX_EREDIS, "redis %s: %.*s failed: %s", nd->name,
                                       (int)cmds[k]->lens[0], cmds[k]->argv[0], r->str);
                    count_error(c);
                    p->state = P_DONE;
                    pending--;
                }
                freeReplyObject(r);
            }
            absorb(c, nd);
            if (nd->reload && !nd->failed && mpx__conn_load_scripts(&nd->conn) != 0)
                sleep = true; /* closed: the next round reconnects, loading them */
        }
        for (size_t u = 0; u < nused; u++)
            cl->nodes[cl->used[u]]->used = false;
        if (pending == 0)
            break;
        if (sleep)
            pause_ms(&delay, deadline);
        if (reread || (cl->stale && mpx__now_ms() - cl->tried_ms >= STALE_REFRESH_MS))
            read_map(c, false);
    }
    if (pending > 0) {
        /* Out of attempts or time: each keeps its last error. */
        char why[512];
        snprintf(why, sizeof why, "%s", mpx_last_error());
        size_t first = n;
        for (size_t i = 0; i < n; i++)
            if (cl->pc[i].state == P_PENDING) {
                /* Still pending: its last answer was a redirect or a
                 * TRYAGAIN/CLUSTERDOWN (errors of the command itself are
                 * final), or its node failed: the cluster did not answer in
                 * time. */
                if (rcs[i] == 0 || rcs[i] == MPX_EREDIS)
                    rcs[i] = rc && rc != MPX_EREDIS ? rc : MPX_ETIMEDOUT;
                if (first == n)
                    first = i;
            }
        count_error(c);
        mpx__fail(rcs[first], "redis cluster: %zu of %zu commands (the first %.*s) not done "
                              "after %d rounds in %llu ms; last: %s",
                  pending, n, (int)cmds[first]->lens[0], cmds[first]->argv[0], round,
                  (unsigned long long)(mpx__now_ms() - t0), why);
    }
    for (size_t i = 0; i < n; i++)
        if (rcs[i])
            return rcs[i];
    return 0;
}

/* ---- per node ------------------------------------------------------------------ */

size_t mpx__cluster_nodes(mpx__conn_t *c)
{
    return c->cl ? c->cl->nmasters : 0;
}

const char *mpx__cluster_node_name(mpx__conn_t *c, size_t i)
{
    if (!c->cl || i >= c->cl->nmasters)
        return NULL;
    return c->cl->nodes[c->cl->masters[i]]->name;
}

const char *mpx__cluster_slot_node(mpx__conn_t *c, unsigned slot)
{
    if (!c->cl || slot >= NSLOTS || c->cl->route[slot] == NONE)
        return NULL;
    return c->cl->nodes[c->cl->route[slot]]->name;
}

int mpx__cluster_node_command(mpx__conn_t *c, size_t i, mpx__argv_t *a, redisReply **out)
{
    *out = NULL;
    if (!c->cl || i >= c->cl->nmasters)
        return mpx__fail(MPX_EINVAL, "redis cluster: no master #%zu (%zu known)", i,
                         c->cl ? c->cl->nmasters : 0);
    cnode_t *n = c->cl->nodes[c->cl->masters[i]];
    int rc = mpx__conn_command(&n->conn, a, out);
    absorb(c, n);
    if (rc == MPX_ECONN || rc == MPX_ETIMEDOUT)
        c->cl->stale = true;
    return rc;
}

bool mpx__conn_take_lost_slots(mpx__conn_t *c, uint8_t out[2048])
{
    mpx__cluster_t *cl = c->ep->cluster ? c->cl : NULL;
    if (!cl || cl->lost_all) {
        memset(out, 0xff, 2048);
        if (cl) {
            cl->lost_all = false;
            memset(cl->lost, 0, sizeof cl->lost);
        }
        return true;
    }
    bool any = false;
    for (size_t i = 0; i < sizeof cl->lost; i++)
        any |= cl->lost[i] != 0;
    memcpy(out, cl->lost, 2048);
    memset(cl->lost, 0, sizeof cl->lost);
    return any;
}
