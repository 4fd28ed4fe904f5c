/*
 * admin.c - internal support of the operator CLI (tools/cli.c): the
 * consistency scripts of `check` / `repair`, key classification for SCAN,
 * and retiring one address with the library's retire + drain scripts.
 *
 * The scripts (run with EVAL; Redis caches them by digest) re-check every
 * condition atomically when they run, and change a key only while it is
 * still wrong, so they are safe while live servers keep writing:
 *
 *   fix_hash   KEYS sparks servers alive(addr) lease(addr) set(addr)
 *              ARGV dry addr id...
 *     for each id whose hash field still names addr:
 *       addr not in servers, no alive key, no lease -> HDEL        (2)
 *       addr not in servers but live                 -> left       (4)
 *       registered, set lacks the id, live           -> SADD set   (1)
 *       registered, set lacks the id, dead           -> left       (3)
 *   fix_set    KEYS sparks set(addr); ARGV dry addr id...
 *     for each id still in the set whose hash field does not name addr:
 *       SREM (1: names another server, 2: no entry)
 *   fix_server KEYS servers alive(addr) lease(addr); ARGV dry addr
 *     addr missing from servers while its alive key or lease exists:
 *       SADD servers addr (1); missing and not live: 2; registered: 0
 *   fix_aside  KEYS drains aside; ARGV dry addr
 *     aside set exists and is not listed in drains: HSET drains (1)
 *
 * "live" is the library's rule: the alive key or the lease exists (no
 * clock is compared). Each call handles at most 5000 ids (the CLI sends
 * --chunk, default 1000), so Redis stays responsive.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"

/* ---- key classification ---------------------------------------------------- */

static int ends_with(const char *s, size_t n, const char *suf)
{
    size_t m = strlen(suf);
    return n >= m && memcmp(s + n - m, suf, m) == 0;
}

static int copy_addr(const char *p, size_t n, char *addr)
{
    if (n == 0 || n > MPX_ADDRESS_MAX || memchr(p, 0, n))
        return 0;
    memcpy(addr, p, n);
    addr[n] = 0;
    return 1;
}

int mpx__admin_classify(const mpx__keys_t *k, const char *key, size_t len, char *addr)
{
    if (len < k->ns_len || memcmp(key, k->ns, k->ns_len) != 0)
        return MPX__AK_OTHER;
    if (len == k->sparks_len && memcmp(key, k->sparks, len) == 0)
        return MPX__AK_SPARKS;
    if (len == k->servers_len && memcmp(key, k->servers, len) == 0)
        return MPX__AK_SERVERS;
    if (len == k->drains_len && memcmp(key, k->drains, len) == 0)
        return MPX__AK_DRAINS;
    const char *rest = key + k->ns_len;
    size_t rn = len - k->ns_len;
    static const char draining[] = ":sparks:draining:";
    /* the aside marker: the last occurrence (an address has no such text) */
    const char *hit = NULL;
    for (const char *p = rest; p + sizeof draining - 1 <= rest + rn; p++)
        if (memcmp(p, draining, sizeof draining - 1) == 0)
            hit = p;
    if (hit)
        return copy_addr(rest, (size_t)(hit - rest), addr) ? MPX__AK_ASIDE : MPX__AK_OTHER;
    if (ends_with(rest, rn, ":sparks"))
        return copy_addr(rest, rn - 7, addr) ? MPX__AK_SET : MPX__AK_OTHER;
    if (ends_with(rest, rn, ":lease"))
        return copy_addr(rest, rn - 6, addr) ? MPX__AK_LEASE : MPX__AK_OTHER;
    return copy_addr(rest, rn, addr) ? MPX__AK_ALIVE : MPX__AK_OTHER;
}

int mpx__admin_match(const mpx__keys_t *k, mpx__argv_t *a)
{
    char tmp[2 * (MPX_NAMESPACE_MAX + 1) + 2];
    size_t n = 0;
    for (size_t i = 0; i < k->ns_len && n + 3 < sizeof tmp; i++) {
        char c = k->ns[i];
        if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\')
            tmp[n++] = '\\';
        tmp[n++] = c;
    }
    tmp[n++] = '*';
    return mpx__argv_pushcat(a, tmp, n, "", 0);
}

/* ---- scripts ------------------------------------------------------------------ */

static const char script_fix_hash[] =
    "local dry = ARGV[1] == '1'\n"
    "local addr = ARGV[2]\n"
    "local reg = redis.call('SISMEMBER', KEYS[2], addr) == 1\n"
    "local live = redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[4]) == 1\n"
    "local out = {}\n"
    "for i = 3, #ARGV do\n"
    "  local id = ARGV[i]\n"
    "  local code = 0\n"
    "  if redis.call('HGET', KEYS[1], id) == addr then\n"
    "    if not reg then\n"
    "      if live then code = 4 else\n"
    "        code = 2\n"
    "        if not dry then redis.call('HDEL', KEYS[1], id) end\n"
    "      end\n"
    "    elseif redis.call('SISMEMBER', KEYS[5], id) == 0 then\n"
    "      if live then\n"
    "        code = 1\n"
    "        if not dry then redis.call('SADD', KEYS[5], id) end\n"
    "      else code = 3 end\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = code\n"
    "end\n"
    "return out\n";

static const char script_fix_set[] =
    "local dry = ARGV[1] == '1'\n"
    "local addr = ARGV[2]\n"
    "local out = {}\n"
    "for i = 3, #ARGV do\n"
    "  local id = ARGV[i]\n"
    "  local code = 0\n"
    "  if redis.call('SISMEMBER', KEYS[2], id) == 1 then\n"
    "    local owner = redis.call('HGET', KEYS[1], id)\n"
    "    if owner ~= addr then\n"
    "      if owner then code = 1 else code = 2 end\n"
    "      if not dry then redis.call('SREM', KEYS[2], id) end\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = code\n"
    "end\n"
    "return out\n";

static const char script_fix_server[] =
    "if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then return 0 end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then\n"
    "  if ARGV[1] ~= '1' then redis.call('SADD', KEYS[1], ARGV[2]) end\n"
    "  return 1\n"
    "end\n"
    "return 2\n";

static const char script_fix_aside[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('HEXISTS', KEYS[1], KEYS[2]) == 0 then\n"
    "  if ARGV[1] ~= '1' then redis.call('HSET', KEYS[1], KEYS[2], ARGV[2]) end\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

static int push_str(mpx__argv_t *a, const char *s)
{
    return mpx__argv_push(a, s, strlen(s));
}

static int eval_head(mpx__argv_t *a, const char *src, int nkeys)
{
    int rc = push_str(a, "EVAL");
    rc |= push_str(a, src);
    rc |= mpx__argv_pushf(a, "%d", nkeys);
    return rc;
}

int mpx__admin_cmd_fix_hash(const mpx__keys_t *k, int dry, const char *addr,
                            const char *const *ids, const size_t *lens, size_t n, mpx__argv_t *a)
{
    int rc = eval_head(a, script_fix_hash, 5);
    rc |= mpx__argv_push(a, k->sparks, k->sparks_len);
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= mpx__key_set(k, addr, a);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    for (size_t i = 0; i < n; i++)
        rc |= mpx__argv_push(a, ids[i], lens[i]);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_fix_set(const mpx__keys_t *k, int dry, const char *addr,
                           const char *const *ids, const size_t *lens, size_t n, mpx__argv_t *a)
{
    int rc = eval_head(a, script_fix_set, 2);
    rc |= mpx__argv_push(a, k->sparks, k->sparks_len);
    rc |= mpx__key_set(k, addr, a);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    for (size_t i = 0; i < n; i++)
        rc |= mpx__argv_push(a, ids[i], lens[i]);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_fix_server(const mpx__keys_t *k, int dry, const char *addr, mpx__argv_t *a)
{
    int rc = eval_head(a, script_fix_server, 3);
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_fix_aside(const mpx__keys_t *k, int dry, const char *aside, size_t aside_len,
                             const char *addr, mpx__argv_t *a)
{
    int rc = eval_head(a, script_fix_aside, 2);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= mpx__argv_push(a, aside, aside_len);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    return rc ? MPX_ENOMEM : 0;
}

/* ---- retire one address, drain ------------------------------------------------ */

int mpx__admin_retire(mpx_t *m, const char *addr, int *retired)
{
    *retired = 0;
    pthread_mutex_lock(&m->sync_mu);
    mpx__conn_t *c = &m->sync_conn;
    int rc = mpx__conn_ensure(c, true); /* the script digests must be known */
    mpx__argv_t a;
    mpx__argv_init(&a);
    if (rc == 0) {
        char token[64];
        mpx__token(m, token);
        rc = mpx__cmd_retire(&m->keys, c->shas[MPX__SCRIPT_RETIRE], addr, m->instance, token, 0,
                             &a);
    }
    redisReply *r = NULL;
    if (rc == 0 && (rc = mpx__conn_command(c, &a, &r)) == 0) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
            r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == 1) {
            *retired = 1;
            mpx__cache_server_gone(m->cache, addr);
            atomic_fetch_add_explicit(&m->n.reaped_servers, 1, memory_order_relaxed);
        }
        freeReplyObject(r);
    }
    mpx__argv_free(&a);
    if (rc == 0) {
        bool more = false;
        rc = mpx__drain_all(m, c, 0, &more);
    }
    pthread_mutex_unlock(&m->sync_mu);
    return rc;
}

int mpx__admin_drain(mpx_t *m)
{
    pthread_mutex_lock(&m->sync_mu);
    bool more = false;
    int rc = mpx__drain_all(m, &m->sync_conn, 0, &more);
    pthread_mutex_unlock(&m->sync_mu);
    return rc;
}
