/*
 * keys.c - key names, Lua scripts and command building. No I/O.
 *
 * Everything that decides what the keyspace looks like is in this file, so
 * that it can be tested without Redis and so that another layout (Redis
 * Cluster, a later issue) replaces one file's worth of decisions. The
 * original's keys (docs/keyspace.md):
 *
 *   NS sparks              hash  spark id -> address
 *   NS <address>:sparks    set   the spark ids of that server
 *   NS servers             set   registered addresses
 *   NS <address>           string, PX interval: the alive key (epoch ms)
 *
 * Our extensions:
 *   NS <address>:lease     string, PX lease: instance id of the live C
 *                          process holding the address
 *   NS drains              hash  aside key -> address: cleanups in progress
 *   NS <address>:sparks:draining:<token>
 *                          set   a retired server's sparks, being cleaned
 *
 * Every script declares all the keys it touches in KEYS.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static uint16_t crc16(const char *buf, size_t len);

/* ---- growable buffer ----------------------------------------------------- */

int mpx__buf_reserve(mpx__buf_t *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len)
        return MPX_ENOMEM;
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return MPX_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int mpx__buf_append(mpx__buf_t *b, const void *p, size_t n)
{
    if (mpx__buf_reserve(b, n + 1))
        return MPX_ENOMEM;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

void mpx__buf_free(mpx__buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- argument vectors ------------------------------------------------------ */

void mpx__argv_init(mpx__argv_t *a)
{
    memset(a, 0, sizeof *a);
}

void mpx__argv_reset(mpx__argv_t *a)
{
    a->argc = 0;
    a->store.len = 0;
    a->nowned = 0;
}

void mpx__argv_free(mpx__argv_t *a)
{
    free(a->argv);
    free(a->lens);
    free(a->owned);
    mpx__buf_free(&a->store);
    memset(a, 0, sizeof *a);
}

static int argv_grow(mpx__argv_t *a)
{
    if (a->argc < a->cap)
        return 0;
    size_t cap = a->cap ? a->cap * 2 : 16;
    const char **v = realloc(a->argv, cap * sizeof *v);
    if (!v)
        return MPX_ENOMEM;
    a->argv = v;
    size_t *l = realloc(a->lens, cap * sizeof *l);
    if (!l)
        return MPX_ENOMEM;
    a->lens = l;
    a->cap = cap;
    return 0;
}

int mpx__argv_push(mpx__argv_t *a, const void *p, size_t n)
{
    if (argv_grow(a))
        return MPX_ENOMEM;
    a->argv[a->argc] = p;
    a->lens[a->argc] = n;
    a->argc++;
    return 0;
}

static int push_owned(mpx__argv_t *a, size_t off, size_t n)
{
    if (argv_grow(a))
        return MPX_ENOMEM;
    if (a->nowned == a->owned_cap) {
        size_t cap = a->owned_cap ? a->owned_cap * 2 : 8;
        size_t *o = realloc(a->owned, cap * sizeof *o);
        if (!o)
            return MPX_ENOMEM;
        a->owned = o;
        a->owned_cap = cap;
    }
    a->owned[a->nowned++] = a->argc;
    a->argv[a->argc] = (const char *)(uintptr_t)off; /* resolved by finish */
    a->lens[a->argc] = n;
    a->argc++;
    return 0;
}

int mpx__argv_pushf(mpx__argv_t *a, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return MPX_EINVAL;
    size_t off = a->store.len;
    if (mpx__buf_append(&a->store, tmp, (size_t)n + 1))
        return MPX_ENOMEM;
    return push_owned(a, off, (size_t)n);
}

int mpx__argv_pushcat(mpx__argv_t *a, const char *p1, size_t n1, const char *p2, size_t n2)
{
    size_t off = a->store.len;
    if (mpx__buf_append(&a->store, p1, n1) || mpx__buf_append(&a->store, p2, n2) ||
        mpx__buf_append(&a->store, "", 1))
        return MPX_ENOMEM;
    return push_owned(a, off, n1 + n2);
}

void mpx__argv_finish(mpx__argv_t *a)
{
    for (size_t i = 0; i < a->nowned; i++) {
        size_t idx = a->owned[i];
        a->argv[idx] = a->store.data + (uintptr_t)a->argv[idx];
    }
    a->nowned = 0;
}

/* ---- key names ------------------------------------------------------------ */

static char *cat2(const char *a, const char *b, size_t *len)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (!s)
        return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    *len = la + lb;
    return s;
}

int mpx__keys_init(mpx__keys_t *k, const char *ns)
{
    memset(k, 0, sizeof *k);
    if (!(k->ns = cat2(ns, ":", &k->ns_len)) ||
        !(k->sparks = cat2(k->ns, "sparks", &k->sparks_len)) ||
        !(k->servers = cat2(k->ns, "servers", &k->servers_len)) ||
        !(k->drains = cat2(k->ns, "drains", &k->drains_len))) {
        mpx__keys_free(k);
        return MPX_ENOMEM;
    }
    return 0;
}

int mpx__keys_init_layout(mpx__keys_t *k, const char *ns, int layout, uint32_t shards)
{
    if (layout != MPX_LAYOUT_SHARDED) {
        int rc = mpx__keys_init(k, ns);
        k->layout = MPX_LAYOUT_NODE;
        k->nshards = 1;
        return rc;
    }
    if (shards < 1 || shards > 16384)
        return MPX_EINVAL;
    memset(k, 0, sizeof *k);
    k->layout = MPX_LAYOUT_SHARDED;
    k->nshards = shards;
    size_t nl = strlen(ns);
    char *ctl = malloc(nl + 4);
    if (ctl) {
        ctl[0] = '{';
        memcpy(ctl + 1, ns, nl);
        memcpy(ctl + 1 + nl, "}:", 3);
    }
    snprintf(k->desc, sizeof k->desc, "sharded %u", (unsigned)shards);
    if (!ctl || !(k->ns = cat2(ns, ":", &k->ns_len)) ||
        !(k->ctl = cat2(ctl, "", &k->ctl_len)) ||
        !(k->servers = cat2(ctl, "servers", &k->servers_len)) ||
        !(k->drains = cat2(ctl, "drains", &k->drains_len)) ||
        !(k->gens = cat2(ctl, "gens", &k->gens_len)) ||
        !(k->layout_key = cat2(ctl, "layout", &k->layout_key_len)) ||
        !(k->tags = malloc(shards * sizeof *k->tags))) {
        free(ctl);
        mpx__keys_free(k);
        return MPX_ENOMEM;
    }
    free(ctl);
    /* Shard s's tag maps to the middle of the s-th of S equal slot ranges,
     * so that masters owning equal contiguous ranges (what redis-cli
     * --cluster create assigns) get S/M shards each, give or take one. */
    for (uint32_t i = 0; i < shards; i++)
        mpx__tag_for_slot((unsigned)(((uint64_t)2 * i + 1) * 16384u / (2u * shards)), k->tags[i]);
    return 0;
}

void mpx__keys_free(mpx__keys_t *k)
{
    free(k->ns);
    free(k->sparks);
    free(k->servers);
    free(k->drains);
    free(k->ctl);
    free(k->gens);
    free(k->layout_key);
    free(k->tags);
    memset(k, 0, sizeof *k);
}

/* Sharded: a control key, "{ns}:" + what + address. */
static int key_ctl(const mpx__keys_t *k, const char *what, const char *addr, mpx__argv_t *a)
{
    char tmp[MPX_NAMESPACE_MAX + MPX_ADDRESS_MAX + 16];
    int n = snprintf(tmp, sizeof tmp, "%s%s", k->ctl, what);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return MPX_ETOOBIG;
    return mpx__argv_pushcat(a, tmp, (size_t)n, addr, strlen(addr));
}

int mpx__key_alive(const mpx__keys_t *k, const char *addr, mpx__argv_t *a)
{
    if (k->layout == MPX_LAYOUT_SHARDED)
        return key_ctl(k, "alive:", addr, a);
    return mpx__argv_pushcat(a, k->ns, k->ns_len, addr, strlen(addr));
}

static int key_suffixed(const mpx__keys_t *k, const char *addr, const char *suffix,
                        mpx__argv_t *a)
{
    size_t al = strlen(addr), sl = strlen(suffix);
    char tmp[MPX_NAMESPACE_MAX + MPX_ADDRESS_MAX + 128];
    if (k->ns_len + al + sl >= sizeof tmp)
        return MPX_ETOOBIG;
    memcpy(tmp, addr, al);
    memcpy(tmp + al, suffix, sl);
    return mpx__argv_pushcat(a, k->ns, k->ns_len, tmp, al + sl);
}

int mpx__key_set(const mpx__keys_t *k, const char *addr, mpx__argv_t *a)
{
    return key_suffixed(k, addr, ":sparks", a);
}

int mpx__key_lease(const mpx__keys_t *k, const char *addr, mpx__argv_t *a)
{
    if (k->layout == MPX_LAYOUT_SHARDED)
        return key_ctl(k, "lease:", addr, a);
    return key_suffixed(k, addr, ":lease", a);
}

/* ---- the sharded layout's shard keys ------------------------------------- */

uint32_t mpx__key_shard(const mpx__keys_t *k, const void *id, size_t len)
{
    if (k->nshards <= 1)
        return 0;
    /* FNV-1a, 32 bits: documented in docs/keyspace.md (any implementation
     * sharing the namespace must shard the same way). */
    const unsigned char *p = id;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h % k->nshards;
}

/* NS "{tag}:" + rest1 + rest2 */
static int key_shard(const mpx__keys_t *k, uint32_t s, const char *r1, size_t n1,
                     const char *r2, size_t n2, mpx__argv_t *a)
{
    char tmp[MPX_NAMESPACE_MAX + MPX_ADDRESS_MAX + 160];
    int n = snprintf(tmp, sizeof tmp, "%s{%s}:", k->ns, k->tags[s]);
    if (n < 0 || (size_t)n + n1 >= sizeof tmp)
        return MPX_ETOOBIG;
    memcpy(tmp + n, r1, n1);
    return mpx__argv_pushcat(a, tmp, (size_t)n + n1, r2, n2);
}

int mpx__key_hash(const mpx__keys_t *k, uint32_t s, mpx__argv_t *a)
{
    if (k->layout != MPX_LAYOUT_SHARDED)
        return mpx__argv_push(a, k->sparks, k->sparks_len);
    return key_shard(k, s, "sparks", 6, "", 0, a);
}

int mpx__key_own(const mpx__keys_t *k, uint32_t s, const char *addr, const char *gen,
                 mpx__argv_t *a)
{
    if (k->layout != MPX_LAYOUT_SHARDED)
        return mpx__key_set(k, addr, a);
    char tail[96];
    int n = snprintf(tail, sizeof tail, ":sparks:%s", gen);
    if (n < 0 || (size_t)n >= sizeof tail)
        return MPX_ETOOBIG;
    return key_shard(k, s, addr, strlen(addr), tail, (size_t)n, a);
}

int mpx__key_shard_gens(const mpx__keys_t *k, uint32_t s, mpx__argv_t *a)
{
    return key_shard(k, s, "gens", 4, "", 0, a);
}

unsigned mpx__shard_slot(const mpx__keys_t *k, uint32_t s)
{
    return mpx__key_slot(k->tags[s], strlen(k->tags[s]));
}

int mpx__key_aside(const mpx__keys_t *k, const char *addr, const char *token, mpx__argv_t *a)
{
    char suffix[128];
    int n = snprintf(suffix, sizeof suffix, ":sparks:draining:%s", token);
    if (n < 0 || (size_t)n >= sizeof suffix)
        return MPX_ETOOBIG;
    return key_suffixed(k, addr, suffix, a);
}

/* ---- scripts ---------------------------------------------------------------- */

/* Every script that moves a set aside first checks the types of the keys
 * it will write, so that it fails before its first write: Redis does not
 * undo a script's writes when a later command in it fails. The spark set
 * itself may be of any type: RENAME moves whatever is there aside (and the
 * drain discards an aside key that is not a set), so that the server's own
 * writes to a fresh set work. */
#define TYPE_CHECK                                                             \
    "local function check(k, t)\n"                                              \
    "  local x = redis.call('TYPE', k)['ok']\n"                                 \
    "  if x ~= 'none' and x ~= t then\n"                                        \
    "    return redis.error_reply('WRONGTYPE ' .. k .. ' is a ' .. x .. ', not a ' .. t)\n" \
    "  end\n"                                                                   \
    "end\n"                                                                     \
    "local bad = check(KEYS[1], 'set')\n"                                       \
    "if not bad and redis.call('EXISTS', KEYS[3]) == 1 then bad = check(KEYS[5], 'hash') end\n" \
    "if bad then return bad end\n"

/* register: KEYS servers alive set lease drains aside;
 * ARGV address interval now instance lease_ms.
 * -> {1, moved} or {-1, pttl_of_lease, holder} */
static const char script_register[] =
    TYPE_CHECK
    "local holder = redis.call('GET', KEYS[4])\n"
    "if holder and holder ~= ARGV[4] then\n"
    "  return {-1, redis.call('PTTL', KEYS[4]), holder}\n"
    "end\n"
    "local moved = 0\n"
    "if holder ~= ARGV[4] and redis.call('EXISTS', KEYS[3]) == 1 then\n"
    "  redis.call('RENAME', KEYS[3], KEYS[6])\n"
    "  redis.call('HSET', KEYS[5], KEYS[6], ARGV[1])\n"
    "  moved = 1\n"
    "end\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "redis.call('PSETEX', KEYS[2], ARGV[2], ARGV[3])\n"
    "redis.call('PSETEX', KEYS[4], ARGV[5], ARGV[4])\n"
    "return {1, moved}\n";

/* heartbeat: KEYS servers alive lease;
 * ARGV address interval now instance lease_ms refresh_alive.
 * -> {-1, holder} (address taken over) or {was_present, alive_existed} */
static const char script_heartbeat[] =
    "local holder = redis.call('GET', KEYS[3])\n"
    "if holder and holder ~= ARGV[4] then return {-1, holder} end\n"
    "local present = redis.call('SADD', KEYS[1], ARGV[1]) == 0 and 1 or 0\n"
    "local alive = redis.call('EXISTS', KEYS[2])\n"
    "if ARGV[6] == '1' or present == 0 or alive == 0 then\n"
    "  redis.call('PSETEX', KEYS[2], ARGV[2], ARGV[3])\n"
    "end\n"
    "redis.call('PSETEX', KEYS[3], ARGV[5], ARGV[4])\n"
    "return {present, alive}\n";

/* retire (reap, or unregister when force): KEYS servers alive set lease
 * drains aside; ARGV address instance force.
 * -> {-1, 0} lease held by another instance (force)
 *    {0, 0}  alive: not reaped (never a server whose alive key exists)
 *    {was_registered, moved} */
static const char script_retire[] =
    TYPE_CHECK
    "local holder = redis.call('GET', KEYS[4])\n"
    "if ARGV[3] == '1' then\n"
    "  if holder and holder ~= ARGV[2] then return {-1, 0} end\n"
    "elseif holder or redis.call('EXISTS', KEYS[2]) == 1 then\n"
    "  return {0, 0}\n"
    "end\n"
    "local was = redis.call('SREM', KEYS[1], ARGV[1])\n"
    "local moved = 0\n"
    "if redis.call('EXISTS', KEYS[3]) == 1 then\n"
    "  redis.call('RENAME', KEYS[3], KEYS[6])\n"
    "  redis.call('HSET', KEYS[5], KEYS[6], ARGV[1])\n"
    "  moved = 1\n"
    "end\n"
    "redis.call('DEL', KEYS[2])\n"
    "if holder then redis.call('DEL', KEYS[4]) end\n"
    "return {was, moved}\n";

/* drain one chunk: KEYS aside sparks live_set drains; ARGV address count.
 * A field is deleted only while it names the address and the id is not in
 * the address's live set (a new process at the same address may hold it).
 * unpack() is bounded by Lua's C stack (about 8000): reap_chunk <= 5000.
 * -> {popped, removed, left} */
static const char script_drain[] =
    "local t = redis.call('TYPE', KEYS[1])['ok']\n"
    "if t ~= 'set' and t ~= 'none' then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  redis.call('HDEL', KEYS[4], KEYS[1])\n"
    "  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' was a ' .. t .. ', not a set of spark ids: discarded')\n"
    "end\n"
    "local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))\n"
    "local removed = 0\n"
    "if #ids > 0 then\n"
    "  local owners = redis.call('HMGET', KEYS[2], unpack(ids))\n"
    "  local check = redis.call('EXISTS', KEYS[3]) == 1\n"
    "  local del = {}\n"
    "  for i = 1, #ids do\n"
    "    if owners[i] == ARGV[1] and\n"
    "       (not check or redis.call('SISMEMBER', KEYS[3], ids[i]) == 0) then\n"
    "      del[#del + 1] = ids[i]\n"
    "    end\n"
    "  end\n"
    "  if #del > 0 then redis.call('HDEL', KEYS[2], unpack(del)) end\n"
    "  removed = #del\n"
    "end\n"
    "local left = redis.call('SCARD', KEYS[1])\n"
    "if left == 0 then redis.call('HDEL', KEYS[4], KEYS[1]) end\n"
    "return {#ids, removed, left}\n";

/* disconnect: KEYS sparks set; ARGV address id...
 * The hash field goes only while it still names this server. -> removed */
static const char script_disconnect[] =
    "local n = 0\n"
    "for i = 2, #ARGV do\n"
    "  local id = ARGV[i]\n"
    "  if redis.call('HGET', KEYS[1], id) == ARGV[1] then\n"
    "    redis.call('HDEL', KEYS[1], id)\n"
    "    n = n + 1\n"
    "  end\n"
    "  redis.call('SREM', KEYS[2], id)\n"
    "end\n"
    "return n\n";

/* ---- the sharded layout's scripts ----------------------------------------
 * The control scripts (register, heartbeat, retire) touch only "{ns}:" keys;
 * drain and write touch only the keys of one shard. A registration has a
 * generation (a fresh token per registration): its spark sets are named by
 * it, so a retired generation's sets are drained while a new registration
 * of the same address writes to its own, and nothing is renamed. */

#define S_CHECK_FN                                                             \
    "local function check(k, t)\n"                                              \
    "  local x = redis.call('TYPE', k)['ok']\n"                                 \
    "  if x ~= 'none' and x ~= t then\n"                                        \
    "    return redis.error_reply('WRONGTYPE ' .. k .. ' is a ' .. x .. ', not a ' .. t)\n" \
    "  end\n"                                                                   \
    "end\n"

/* KEYS servers alive lease gens drains layout;
 * ARGV address interval now instance lease_ms gen layout_desc */
static const char script_s_register[] =
    S_CHECK_FN
    "local bad = check(KEYS[1], 'set') or check(KEYS[4], 'hash') or\n"
    "  check(KEYS[5], 'hash') or check(KEYS[6], 'string')\n"
    "if bad then return bad end\n"
    "local l = redis.call('GET', KEYS[6])\n"
    "if l and l ~= ARGV[7] then\n"
    "  return redis.error_reply('LAYOUT the namespace uses the ' .. l .. ' layout, not ' .. ARGV[7])\n"
    "end\n"
    "local holder = redis.call('GET', KEYS[3])\n"
    "if holder and holder ~= ARGV[4] then\n"
    "  return {-1, redis.call('PTTL', KEYS[3]), holder}\n"
    "end\n"
    "if not l then redis.call('SET', KEYS[6], ARGV[7]) end\n"
    "local old = redis.call('HGET', KEYS[4], ARGV[1])\n"
    "local moved = 0\n"
    "if old and old ~= ARGV[6] then\n"
    "  redis.call('HSET', KEYS[5], old, ARGV[1])\n"
    "  moved = 1\n"
    "end\n"
    "redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "redis.call('PSETEX', KEYS[2], ARGV[2], ARGV[3])\n"
    "redis.call('PSETEX', KEYS[3], ARGV[5], ARGV[4])\n"
    "return {1, moved}\n";

/* KEYS servers alive lease gens; ARGV address interval now instance
 * lease_ms gen. Not registered under this generation any more (reaped, or
 * the data lost): {0, 0} and nothing written; the caller registers again. */
static const char script_s_heartbeat[] =
    "local holder = redis.call('GET', KEYS[3])\n"
    "if holder and holder ~= ARGV[4] then return {-1, holder} end\n"
    "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 or\n"
    "   redis.call('HGET', KEYS[4], ARGV[1]) ~= ARGV[6] then\n"
    "  return {0, 0}\n"
    "end\n"
    "local alive = redis.call('EXISTS', KEYS[2])\n"
    "redis.call('PSETEX', KEYS[2], ARGV[2], ARGV[3])\n"
    "redis.call('PSETEX', KEYS[3], ARGV[5], ARGV[4])\n"
    "return {1, alive}\n";

/* KEYS servers alive lease gens drains; ARGV address instance force */
static const char script_s_retire[] =
    S_CHECK_FN
    "local bad = check(KEYS[1], 'set') or check(KEYS[4], 'hash') or check(KEYS[5], 'hash')\n"
    "if bad then return bad end\n"
    "local holder = redis.call('GET', KEYS[3])\n"
    "if ARGV[3] == '1' then\n"
    "  if holder and holder ~= ARGV[2] then return {-1, 0, ''} end\n"
    "elseif holder or redis.call('EXISTS', KEYS[2]) == 1 then\n"
    "  return {0, 0, ''}\n"
    "end\n"
    "local was = redis.call('SREM', KEYS[1], ARGV[1])\n"
    "local gen = redis.call('HGET', KEYS[4], ARGV[1])\n"
    "local moved = 0\n"
    "if gen then\n"
    "  redis.call('HDEL', KEYS[4], ARGV[1])\n"
    "  redis.call('HSET', KEYS[5], gen, ARGV[1])\n"
    "  moved = 1\n"
    "end\n"
    "redis.call('DEL', KEYS[2])\n"
    "if holder then redis.call('DEL', KEYS[3]) end\n"
    "return {was, moved, gen or ''}\n";

/* KEYS old_set hash shard_gens live_set; ARGV address count gen live.
 * When the shard's generation marker of the address names the generation
 * being drained it becomes a tombstone, "-" + gen: a writer of that
 * generation still running (a process that paused past its lease) is then
 * refused by the write script instead of refilling a set nothing would
 * drain again. A tombstone counts as no live generation; the address's next
 * registration overwrites it. The caller names the live generation's set
 * as it believes it ("" and the old set again for none); when the shard
 * says otherwise the reply is {-2, actual} and nothing was done. */
static const char script_s_drain[] =
    "local cur = redis.call('HGET', KEYS[3], ARGV[1])\n"
    "if cur == ARGV[3] then\n"
    "  redis.call('HSET', KEYS[3], ARGV[1], '-' .. ARGV[3])\n"
    "  cur = false\n"
    "elseif cur and string.sub(cur, 1, 1) == '-' then\n"
    "  cur = false\n"
    "end\n"
    "if (cur or '') ~= ARGV[4] then return {-2, cur or ''} end\n"
    "local t = redis.call('TYPE', KEYS[1])['ok']\n"
    "if t ~= 'set' and t ~= 'none' then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' was a ' .. t .. ', not a set of spark ids: discarded')\n"
    "end\n"
    "local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))\n"
    "local removed = 0\n"
    "if #ids > 0 then\n"
    "  local owners = redis.call('HMGET', KEYS[2], unpack(ids))\n"
    "  local check = ARGV[4] ~= ''\n"
    "  local del = {}\n"
    "  for i = 1, #ids do\n"
    "    if owners[i] == ARGV[1] and\n"
    "       (not check or redis.call('SISMEMBER', KEYS[4], ids[i]) == 0) then\n"
    "      del[#del + 1] = ids[i]\n"
    "    end\n"
    "  end\n"
    "  if #del > 0 then redis.call('HDEL', KEYS[2], unpack(del)) end\n"
    "  removed = #del\n"
    "end\n"
    "return {#ids, removed, redis.call('SCARD', KEYS[1])}\n";

/* KEYS hash own_set shard_gens; ARGV address gen nconnect ids...: the first
 * nconnect ids connect (HSET + SADD), the rest go (the field only while it
 * names the address). Only while the shard's generation marker of the
 * address names this generation: any other value (a tombstone: this
 * generation was retired and drained; a newer registration's generation)
 * is refused with STALEGEN and nothing is written. A missing marker (lost
 * with the data on a failover) is set. */
static const char script_s_write[] =
    "local n = tonumber(ARGV[3])\n"
    "local cur = redis.call('HGET', KEYS[3], ARGV[1])\n"
    "if not cur then\n"
    "  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])\n"
    "elseif cur ~= ARGV[2] then\n"
    "  return redis.error_reply('STALEGEN generation ' .. ARGV[2] .. ' of ' .. ARGV[1] ..\n"
    "    ' is not live in ' .. KEYS[3] .. ' (' .. cur .. ')')\n"
    "end\n"
    "if n > 0 then\n"
    "  local kv = {}\n"
    "  for i = 4, n + 3 do\n"
    "    kv[#kv + 1] = ARGV[i]\n"
    "    kv[#kv + 1] = ARGV[1]\n"
    "  end\n"
    "  redis.call('HSET', KEYS[1], unpack(kv))\n"
    "  redis.call('SADD', KEYS[2], unpack(ARGV, 4, n + 3))\n"
    "end\n"
    "local d = 0\n"
    "for i = n + 4, #ARGV do\n"
    "  local id = ARGV[i]\n"
    "  if redis.call('HGET', KEYS[1], id) == ARGV[1] then\n"
    "    redis.call('HDEL', KEYS[1], id)\n"
    "    d = d + 1\n"
    "  end\n"
    "  redis.call('SREM', KEYS[2], id)\n"
    "end\n"
    "return d\n";

static const struct {
    const char *name, *source;
} scripts[MPX__SCRIPT_COUNT] = {
    [MPX__SCRIPT_S_REGISTER] = {"sharded register", script_s_register},
    [MPX__SCRIPT_S_HEARTBEAT] = {"sharded heartbeat", script_s_heartbeat},
    [MPX__SCRIPT_S_RETIRE] = {"sharded retire", script_s_retire},
    [MPX__SCRIPT_S_DRAIN] = {"sharded drain", script_s_drain},
    [MPX__SCRIPT_S_WRITE] = {"sharded write", script_s_write},
    [MPX__SCRIPT_REGISTER] = {"register", script_register},
    [MPX__SCRIPT_HEARTBEAT] = {"heartbeat", script_heartbeat},
    [MPX__SCRIPT_RETIRE] = {"retire", script_retire},
    [MPX__SCRIPT_DRAIN] = {"drain", script_drain},
    [MPX__SCRIPT_DISCONNECT] = {"disconnect", script_disconnect},
};

const char *mpx__script_source(int id)
{
    return id >= 0 && id < MPX__SCRIPT_COUNT ? scripts[id].source : NULL;
}

const char *mpx__script_name(int id)
{
    return id >= 0 && id < MPX__SCRIPT_COUNT ? scripts[id].name : "?";
}

/* ---- commands ---------------------------------------------------------------- */

static int push_str(mpx__argv_t *a, const char *s)
{
    return mpx__argv_push(a, s, strlen(s));
}

int mpx__cmd_register(const mpx__keys_t *k, const char *sha, const char *addr,
                      uint32_t interval_ms, uint64_t now_ms, const char *instance,
                      uint32_t lease_ms, const char *token, mpx__argv_t *a)
{
    int rc = 0;
    rc |= push_str(a, "EVALSHA");
    rc |= push_str(a, sha);
    rc |= push_str(a, "6");
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_set(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= mpx__key_aside(k, addr, token, a);
    rc |= push_str(a, addr);
    rc |= mpx__argv_pushf(a, "%u", interval_ms);
    rc |= mpx__argv_pushf(a, "%llu", (unsigned long long)now_ms);
    rc |= push_str(a, instance);
    rc |= mpx__argv_pushf(a, "%u", lease_ms);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__cmd_heartbeat(const mpx__keys_t *k, const char *sha, const char *addr,
                       uint32_t interval_ms, uint64_t now_ms, const char *instance,
                       uint32_t lease_ms, int alive, mpx__argv_t *a)
{
    int rc = 0;
    rc |= push_str(a, "EVALSHA");
    rc |= push_str(a, sha);
    rc |= push_str(a, "3");
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= push_str(a, addr);
    rc |= mpx__argv_pushf(a, "%u", interval_ms);
    rc |= mpx__argv_pushf(a, "%llu", (unsigned long long)now_ms);
    rc |= push_str(a, instance);
    rc |= mpx__argv_pushf(a, "%u", lease_ms);
    rc |= push_str(a, alive ? "1" : "0");
    return rc ? MPX_ENOMEM : 0;
}

int mpx__cmd_retire(const mpx__keys_t *k, const char *sha, const char *addr,
                    const char *instance, const char *token, int force, mpx__argv_t *a)
{
    int rc = 0;
    rc |= push_str(a, "EVALSHA");
    rc |= push_str(a, sha);
    rc |= push_str(a, "6");
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_set(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= mpx__key_aside(k, addr, token, a);
    rc |= push_str(a, addr);
    rc |= push_str(a, instance);
    rc |= push_str(a, force ? "1" : "0");
    return rc ? MPX_ENOMEM : 0;
}

int mpx__cmd_drain(const mpx__keys_t *k, const char *sha, const char *aside_key,
                   size_t aside_len, const char *addr, uint32_t chunk, mpx__argv_t *a)
{
    int rc = 0;
    rc |= push_str(a, "EVALSHA");
    rc |= push_str(a, sha);
    rc |= push_str(a, "4");
    rc |= mpx__argv_push(a, aside_key, aside_len);
    rc |= mpx__argv_push(a, k->sparks, k->sparks_len);
    rc |= mpx__key_set(k, addr, a);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= push_str(a, addr);
    rc |= mpx__argv_pushf(a, "%u", chunk);
    return rc ? MPX_ENOMEM : 0;
}

/* ---- sharded layout commands -------------------------------------------------- */

static int evalsha(mpx__argv_t *a, const char (*shas)[41], int id, const char *nkeys)
{
    int rc = push_str(a, "EVALSHA");
    rc |= mpx__argv_push(a, shas[id], 40);
    rc |= push_str(a, nkeys);
    return rc;
}

int mpx__cmd_s_register(const mpx__keys_t *k, const char (*shas)[41], const char *addr,
                        uint32_t interval_ms, uint64_t now_ms, const char *instance,
                        uint32_t lease_ms, const char *gen, mpx__argv_t *a)
{
    int rc = evalsha(a, shas, MPX__SCRIPT_S_REGISTER, "6");
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= mpx__argv_push(a, k->gens, k->gens_len);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= mpx__argv_push(a, k->layout_key, k->layout_key_len);
    rc |= push_str(a, addr);
    rc |= mpx__argv_pushf(a, "%u", interval_ms);
    rc |= mpx__argv_pushf(a, "%llu", (unsigned long long)now_ms);
    rc |= push_str(a, instance);
    rc |= mpx__argv_pushf(a, "%u", lease_ms);
    rc |= push_str(a, gen);
    rc |= push_str(a, k->desc);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__cmd_s_heartbeat(const mpx__keys_t *k, const char (*shas)[41], const char *addr,
                         uint32_t interval_ms, uint64_t now_ms, const char *instance,
                         uint32_t lease_ms, const char *gen, mpx__argv_t *a)
{
    int rc = evalsha(a, shas, MPX__SCRIPT_S_HEARTBEAT, "4");
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= mpx__argv_push(a, k->gens, k->gens_len);
    rc |= push_str(a, addr);
    rc |= mpx__argv_pushf(a, "%u", interval_ms);
    rc |= mpx__argv_pushf(a, "%llu", (unsigned long long)now_ms);
    rc |= push_str(a, instance);
    rc |= mpx__argv_pushf(a, "%u", lease_ms);
    rc |= push_str(a, gen);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__cmd_s_retire(const mpx__keys_t *k, const char (*shas)[41], const char *addr,
                      const char *instance, int force, mpx__argv_t *a)
{
    int rc = evalsha(a, shas, MPX__SCRIPT_S_RETIRE, "5");
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= mpx__argv_push(a, k->gens, k->gens_len);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= push_str(a, addr);
    rc |= push_str(a, instance);
    rc |= push_str(a, force ? "1" : "0");
    return rc ? MPX_ENOMEM : 0;
}

int mpx__cmd_s_drain(const mpx__keys_t *k, const char (*shas)[41], uint32_t s, const char *addr,
                     const char *gen, const char *live, uint32_t chunk, mpx__argv_t *a)
{
    int rc = evalsha(a, shas, MPX__SCRIPT_S_DRAIN, "4");
    rc |= mpx__key_own(k, s, addr, gen, a);
    rc |= mpx__key_hash(k, s, a);
    rc |= mpx__key_shard_gens(k, s, a);
    rc |= mpx__key_own(k, s, addr, live[0] ? live : gen, a);
    rc |= push_str(a, addr);
    rc |= mpx__argv_pushf(a, "%u", chunk);
    rc |= push_str(a, gen);
    rc |= push_str(a, live);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__cmd_s_write(const mpx__keys_t *k, const char (*shas)[41], uint32_t s, const char *addr,
                     const char *gen, const struct mpx__op *ops, size_t n, mpx__argv_t *a)
{
    size_t nconn = 0;
    for (size_t i = 0; i < n; i++)
        nconn += ops[i].want;
    int rc = evalsha(a, shas, MPX__SCRIPT_S_WRITE, "3");
    rc |= mpx__key_hash(k, s, a);
    rc |= mpx__key_own(k, s, addr, gen, a);
    rc |= mpx__key_shard_gens(k, s, a);
    rc |= push_str(a, addr);
    rc |= push_str(a, gen);
    rc |= mpx__argv_pushf(a, "%zu", nconn);
    for (int pass = 1; pass >= 0; pass--)
        for (size_t i = 0; i < n; i++)
            if (ops[i].want == (pass == 1))
                rc |= mpx__argv_push(a, ops[i].id, ops[i].len);
    return rc ? MPX_ENOMEM : 0;
}

/* ---- Redis Cluster hash slots ------------------------------------------------
 * CRC16-CCITT (XModem: polynomial 0x1021, initial 0), as in the Redis
 * Cluster specification, over the hash tag ({...}: the bytes between the
 * first '{' and the first '}' after it, when not empty) or the whole key. */

static uint16_t crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

unsigned mpx__key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & 16383u;
    }
    return crc16(key, len) & 16383u;
}

/* ---- hash tags for the shards ---------------------------------------------
 * The CRC16 of short sequential tags ("0", "1", ...) clusters in a few slot
 * ranges. Instead, shard s of S targets slot (2s+1)*16384/(2S) and takes
 * the first tag, in this order, whose slot that is: lengths 1, 2, 3, 4;
 * characters 0-9A-Za-z in that order, the first character the most
 * significant. (Every slot has a tag of at most 3 characters; the test
 * checks it.) The table is built once, on first use. */

static const char tag_chars[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
static char tag_table[16384][5];
static pthread_once_t tag_once = PTHREAD_ONCE_INIT;

static void tag_build(void)
{
    size_t left = 16384;
    char t[5];
    for (int len = 1; len <= 4 && left; len++) {
        size_t total = 1;
        for (int i = 0; i < len; i++)
            total *= 62;
        for (size_t v = 0; v < total && left; v++) {
            size_t x = v;
            for (int i = len - 1; i >= 0; i--) {
                t[i] = tag_chars[x % 62];
                x /= 62;
            }
            t[len] = 0;
            unsigned slot = crc16(t, (size_t)len) & 16383u;
            if (!tag_table[slot][0]) {
                memcpy(tag_table[slot], t, (size_t)len + 1);
                left--;
            }
        }
    }
}

void mpx__tag_for_slot(unsigned slot, char *out)
{
    pthread_once(&tag_once, tag_build);
    memcpy(out, tag_table[slot & 16383u], 5);
}
