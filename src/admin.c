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
 *
 * The sharded layout (docs/keyspace.md) keeps the spark data in S shards,
 * each in one hash slot, and the control keys in the slot of "{ns}". On
 * Redis Cluster a script may only touch keys of one slot, all declared in
 * KEYS, so each check/fix script below works inside one shard or inside
 * the control slot, never both:
 *
 *   s_fix_hash   KEYS hash(s) marker(s) set(s,addr,live) set(s,addr,d)...
 *                ARGV dry addr live_gen live expect id...
 *     for each id whose field still names addr and that is not in the
 *     live generation's set:
 *       in a draining generation's set            -> left, its drain decides (5)
 *       live_gen, server dead                      -> left to the reap     (3)
 *       live_gen, server live, marker == expect    -> SADD live set        (1)
 *       no live_gen, server live                   -> left                 (4)
 *       no live_gen, not live, marker == expect    -> HDEL                 (2)
 *       marker changed since the caller read it    -> left                 (6)
 *   s_fix_set    KEYS hash(s) set(s,addr,gen); ARGV dry addr id...  (= fix_set)
 *   s_fix_stray  KEYS hash(s) or set(s,addr,gen); ARGV dry h|s id...
 *     ids of another shard stored here: HDEL / SREM (1)
 *   s_fix_marker KEYS marker(s); ARGV dry addr expect value
 *     marker of addr still `expect`: set to `value` / deleted (1)
 *   s_fix_orphan KEYS gens drains; ARGV dry addr gen
 *     gen not addr's live generation and not in drains: HSET drains (1)
 *   s_fix_gen    KEYS servers gens drains alive(addr) lease(addr); ARGV dry addr gen
 *     addr not in servers, gens[addr] == gen: live -> SADD servers (1),
 *     not live -> HDEL gens, HSET drains gen addr (2)
 *   s_fix_drain  KEYS gens drains; ARGV dry addr gen
 *     gen is addr's live generation and drains[gen] == addr: HDEL drains (1)
 *
 * Why the marker: a shard script cannot read the control slot, so the
 * caller reads addr's generation, drains and liveness there first and
 * passes them. What can change in between is a registration of addr (a
 * process starting): it writes a fresh generation token into every
 * shard's marker before its first write to that shard (and the write
 * script sets the marker when missing). So "the shard's marker of addr is
 * still what the caller read" proves, inside the shard, that no new
 * registration has reached it: a field that names addr and is in none of
 * addr's known sets is then not a new process's, and deleting it (addr
 * unregistered and not live) is safe; adding it to the live set needs the
 * marker to name that live generation. Liveness itself cannot be
 * re-checked in the shard; a server that died meanwhile only gets an id
 * added to the set its reap drains.
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

int mpx__admin_match_ctl(const mpx__keys_t *k, mpx__argv_t *a)
{
    if (!k->ctl)
        return MPX_EINVAL;
    char tmp[2 * (MPX_NAMESPACE_MAX + 4) + 2];
    size_t n = 0;
    for (size_t i = 0; i < k->ctl_len && n + 3 < sizeof tmp; i++) {
        char c = k->ctl[i];
        if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\')
            tmp[n++] = '\\';
        tmp[n++] = c;
    }
    tmp[n++] = '*';
    return mpx__argv_pushcat(a, tmp, n, "", 0);
}

static bool same(const char *p, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    return n == m && memcmp(p, lit, m) == 0;
}

/* The shard whose tag is tag[0..n), or -1. Shard s's tag has the slot
 * floor((2s+1) * 16384 / (2S)) (keys.c), so s is floor(slot * S / 16384)
 * or its neighbour. */
static long shard_of_tag(const mpx__keys_t *k, const char *tag, size_t n)
{
    unsigned slot = mpx__key_slot(tag, n);
    long s0 = (long)((uint64_t)slot * k->nshards / 16384u);
    for (long s = s0 - 1; s <= s0 + 1; s++)
        if (s >= 0 && s < (long)k->nshards && strlen(k->tags[s]) == n &&
            memcmp(k->tags[s], tag, n) == 0)
            return s;
    return -1;
}

int mpx__admin_classify_sharded(const mpx__keys_t *k, const char *key, size_t len,
                                uint32_t *shard, char *addr, char *gen)
{
    *shard = 0;
    if (k->layout != MPX_LAYOUT_SHARDED)
        return MPX__SK_OTHER;
    if (len >= k->ctl_len && memcmp(key, k->ctl, k->ctl_len) == 0) {
        if (same(key, len, k->servers))
            return MPX__SK_SERVERS;
        if (same(key, len, k->drains))
            return MPX__SK_DRAINS;
        if (same(key, len, k->gens))
            return MPX__SK_GENS;
        if (same(key, len, k->layout_key))
            return MPX__SK_LAYOUT;
        const char *rest = key + k->ctl_len;
        size_t rn = len - k->ctl_len;
        if (rn > 6 && memcmp(rest, "alive:", 6) == 0)
            return copy_addr(rest + 6, rn - 6, addr) ? MPX__SK_ALIVE : MPX__SK_OTHER;
        if (rn > 6 && memcmp(rest, "lease:", 6) == 0)
            return copy_addr(rest + 6, rn - 6, addr) ? MPX__SK_LEASE : MPX__SK_OTHER;
        return MPX__SK_OTHER;
    }
    /* NS "{" tag "}:" rest */
    if (len < k->ns_len + 4 || memcmp(key, k->ns, k->ns_len) != 0 || key[k->ns_len] != '{')
        return MPX__SK_OTHER;
    const char *tag = key + k->ns_len + 1, *end = key + len;
    const char *close = memchr(tag, '}', (size_t)(end - tag));
    if (!close || close == tag || close + 1 >= end || close[1] != ':')
        return MPX__SK_OTHER;
    long s = shard_of_tag(k, tag, (size_t)(close - tag));
    if (s < 0)
        return MPX__SK_OTHER;
    *shard = (uint32_t)s;
    const char *rest = close + 2;
    size_t rn = (size_t)(end - rest);
    if (same(rest, rn, "sparks"))
        return MPX__SK_HASH;
    if (same(rest, rn, "gens"))
        return MPX__SK_MARKERS;
    static const char mid[] = ":sparks:";
    const char *hit = NULL; /* the last occurrence: an address has no such text */
    for (const char *p = rest; p + sizeof mid - 1 <= end; p++)
        if (memcmp(p, mid, sizeof mid - 1) == 0)
            hit = p;
    if (!hit)
        return MPX__SK_OTHER;
    const char *g = hit + sizeof mid - 1;
    size_t gl = (size_t)(end - g);
    if (gl == 0 || gl > MPX__GEN_MAX || memchr(g, 0, gl) ||
        !copy_addr(rest, (size_t)(hit - rest), addr))
        return MPX__SK_OTHER;
    memcpy(gen, g, gl);
    gen[gl] = 0;
    return MPX__SK_SET;
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

/* ---- the sharded layout's scripts (see the top of the file) ---- */

static const char script_s_fix_hash[] =
    "local dry = ARGV[1] == '1'\n"
    "local addr = ARGV[2]\n"
    "local gen = ARGV[3]\n"
    "local live = ARGV[4] == '1'\n"
    "local ok = dry or (redis.call('HGET', KEYS[2], addr) or '') == ARGV[5]\n"
    "local out = {}\n"
    "for i = 6, #ARGV do\n"
    "  local id = ARGV[i]\n"
    "  local code = 0\n"
    "  if redis.call('HGET', KEYS[1], id) == addr and\n"
    "     (gen == '' or redis.call('SISMEMBER', KEYS[3], id) == 0) then\n"
    "    for j = 4, #KEYS do\n"
    "      if redis.call('SISMEMBER', KEYS[j], id) == 1 then code = 5 break end\n"
    "    end\n"
    "    if code == 0 then\n"
    "      if gen ~= '' then\n"
    "        if not live then code = 3\n"
    "        elseif not ok then code = 6\n"
    "        else\n"
    "          code = 1\n"
    "          if not dry then redis.call('SADD', KEYS[3], id) end\n"
    "        end\n"
    "      elseif live then code = 4\n"
    "      elseif not ok then code = 6\n"
    "      else\n"
    "        code = 2\n"
    "        if not dry then redis.call('HDEL', KEYS[1], id) end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = code\n"
    "end\n"
    "return out\n";

static const char script_s_fix_stray[] =
    "local dry = ARGV[1] == '1'\n"
    "local hash = ARGV[2] == 'h'\n"
    "local out = {}\n"
    "for i = 3, #ARGV do\n"
    "  local id = ARGV[i]\n"
    "  local code = 0\n"
    "  if hash then\n"
    "    if redis.call('HEXISTS', KEYS[1], id) == 1 then\n"
    "      code = 1\n"
    "      if not dry then redis.call('HDEL', KEYS[1], id) end\n"
    "    end\n"
    "  elseif redis.call('SISMEMBER', KEYS[1], id) == 1 then\n"
    "    code = 1\n"
    "    if not dry then redis.call('SREM', KEYS[1], id) end\n"
    "  end\n"
    "  out[#out + 1] = code\n"
    "end\n"
    "return out\n";

static const char script_s_fix_marker[] =
    "if (redis.call('HGET', KEYS[1], ARGV[2]) or '') ~= ARGV[3] then return 0 end\n"
    "if ARGV[1] ~= '1' then\n"
    "  if ARGV[4] == '' then redis.call('HDEL', KEYS[1], ARGV[2])\n"
    "  else redis.call('HSET', KEYS[1], ARGV[2], ARGV[4]) end\n"
    "end\n"
    "return 1\n";

static const char script_s_fix_orphan[] =
    "if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then return 0 end\n"
    "if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then return 0 end\n"
    "if ARGV[1] ~= '1' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[2]) end\n"
    "return 1\n";

static const char script_s_fix_gen[] =
    "if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then return 0 end\n"
    "if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return 0 end\n"
    "local dry = ARGV[1] == '1'\n"
    "if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[5]) == 1 then\n"
    "  if not dry then redis.call('SADD', KEYS[1], ARGV[2]) end\n"
    "  return 1\n"
    "end\n"
    "if not dry then\n"
    "  redis.call('HDEL', KEYS[2], ARGV[2])\n"
    "  redis.call('HSET', KEYS[3], ARGV[3], ARGV[2])\n"
    "end\n"
    "return 2\n";

static const char script_s_fix_drain[] =
    "if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] or\n"
    "   redis.call('HGET', KEYS[2], ARGV[3]) ~= ARGV[2] then return 0 end\n"
    "if ARGV[1] ~= '1' then redis.call('HDEL', KEYS[2], ARGV[3]) end\n"
    "return 1\n";

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

/* ---- sharded layout commands ---------------------------------------------------- */

static int push_ids(mpx__argv_t *a, const char *const *ids, const size_t *lens, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        rc |= mpx__argv_push(a, ids[i], lens[i]);
    return rc;
}

int mpx__admin_cmd_s_fix_hash(const mpx__keys_t *k, int dry, uint32_t s, const char *addr,
                              const char *live_gen, const char *const *drain_gens,
                              size_t ndrain, int live, const char *expect,
                              const char *const *ids, const size_t *lens, size_t n,
                              mpx__argv_t *a)
{
    int rc = push_str(a, "EVAL");
    rc |= push_str(a, script_s_fix_hash);
    rc |= mpx__argv_pushf(a, "%zu", 3 + ndrain);
    rc |= mpx__key_hash(k, s, a);
    rc |= mpx__key_shard_gens(k, s, a);
    if (live_gen[0])
        rc |= mpx__key_own(k, s, addr, live_gen, a);
    else
        rc |= mpx__key_hash(k, s, a); /* a placeholder in the slot, never read */
    for (size_t i = 0; i < ndrain; i++)
        rc |= mpx__key_own(k, s, addr, drain_gens[i], a);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    rc |= push_str(a, live_gen);
    rc |= push_str(a, live ? "1" : "0");
    rc |= push_str(a, expect);
    rc |= push_ids(a, ids, lens, n);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_s_fix_set(const mpx__keys_t *k, int dry, uint32_t s, const char *addr,
                             const char *gen, const char *const *ids, const size_t *lens,
                             size_t n, mpx__argv_t *a)
{
    int rc = eval_head(a, script_fix_set, 2);
    rc |= mpx__key_hash(k, s, a);
    rc |= mpx__key_own(k, s, addr, gen, a);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    rc |= push_ids(a, ids, lens, n);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_s_fix_stray(const mpx__keys_t *k, int dry, uint32_t s, const char *addr,
                               const char *gen, const char *const *ids, const size_t *lens,
                               size_t n, mpx__argv_t *a)
{
    int rc = eval_head(a, script_s_fix_stray, 1);
    if (addr)
        rc |= mpx__key_own(k, s, addr, gen, a);
    else
        rc |= mpx__key_hash(k, s, a);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr ? "s" : "h");
    rc |= push_ids(a, ids, lens, n);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_s_fix_marker(const mpx__keys_t *k, int dry, uint32_t s, const char *addr,
                                const char *expect, const char *value, mpx__argv_t *a)
{
    int rc = eval_head(a, script_s_fix_marker, 1);
    rc |= mpx__key_shard_gens(k, s, a);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    rc |= push_str(a, expect);
    rc |= push_str(a, value);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_s_fix_orphan(const mpx__keys_t *k, int dry, const char *addr,
                                const char *gen, mpx__argv_t *a)
{
    int rc = eval_head(a, script_s_fix_orphan, 2);
    rc |= mpx__argv_push(a, k->gens, k->gens_len);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    rc |= push_str(a, gen);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_s_fix_gen(const mpx__keys_t *k, int dry, const char *addr, const char *gen,
                             mpx__argv_t *a)
{
    int rc = eval_head(a, script_s_fix_gen, 5);
    rc |= mpx__argv_push(a, k->servers, k->servers_len);
    rc |= mpx__argv_push(a, k->gens, k->gens_len);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= mpx__key_alive(k, addr, a);
    rc |= mpx__key_lease(k, addr, a);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    rc |= push_str(a, gen);
    return rc ? MPX_ENOMEM : 0;
}

int mpx__admin_cmd_s_fix_drain(const mpx__keys_t *k, int dry, const char *addr,
                               const char *gen, mpx__argv_t *a)
{
    int rc = eval_head(a, script_s_fix_drain, 2);
    rc |= mpx__argv_push(a, k->gens, k->gens_len);
    rc |= mpx__argv_push(a, k->drains, k->drains_len);
    rc |= push_str(a, dry ? "1" : "0");
    rc |= push_str(a, addr);
    rc |= push_str(a, gen);
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
    if (rc == 0 && m->keys.layout == MPX_LAYOUT_SHARDED) {
        rc = mpx__cmd_s_retire(&m->keys, mpx__shas(c), addr, m->instance, 0, &a);
    } else if (rc == 0) {
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
