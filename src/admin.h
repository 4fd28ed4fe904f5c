/*
 * admin.h - internal functions behind the operator CLI (tools/cli.c):
 * consistency scripts, key classification, and retiring one address with
 * the library's own retire + drain scripts. Not part of the public API.
 * Both key layouts (docs/keyspace.md): the node layout (the original's
 * keys) and the sharded layout (Redis Cluster).
 *
 * Key names come from keys.c (mpx__keys_t, mpx__key_*); the naming helpers
 * added here, mpx__admin_match() and mpx__admin_match_ctl(), build SCAN
 * MATCH patterns (a prefix with glob characters escaped, then '*').
 */
#ifndef MPX_ADMIN_H
#define MPX_ADMIN_H

#include "internal.h"

/* What a key under the namespace is, judged by its name only. */
enum mpx__admin_kind {
    MPX__AK_OTHER = 0, /* not under the namespace */
    MPX__AK_SPARKS,    /* NS sparks */
    MPX__AK_SERVERS,   /* NS servers */
    MPX__AK_DRAINS,    /* NS drains */
    MPX__AK_SET,       /* NS <addr>:sparks */
    MPX__AK_ASIDE,     /* NS <addr>:sparks:draining:<token> */
    MPX__AK_LEASE,     /* NS <addr>:lease */
    MPX__AK_ALIVE,     /* NS <addr> (anything else under NS) */
};

/* Classify `key`; for SET, ASIDE, LEASE and ALIVE copy the address into
 * addr[MPX_ADDRESS_MAX + 1] (NUL-terminated; OTHER when it is too long or
 * empty or holds a NUL). */
int mpx__admin_classify(const mpx__keys_t *k, const char *key, size_t len, char *addr);

/* Push the SCAN MATCH pattern of the namespace: NS with *?[]\ escaped, '*'.
 * In the sharded layout it matches the shard keys (NS "{tag}:..."). */
int mpx__admin_match(const mpx__keys_t *k, mpx__argv_t *a);
/* Sharded layout: the pattern of the control keys, "{ns}:" escaped, '*'. */
int mpx__admin_match_ctl(const mpx__keys_t *k, mpx__argv_t *a);

/* What a key of the sharded layout is, judged by its name only. */
enum mpx__admin_skind {
    MPX__SK_OTHER = 0, /* not a key of this sharded namespace */
    MPX__SK_HASH,      /* NS {T}:sparks           (shard) */
    MPX__SK_MARKERS,   /* NS {T}:gens             (shard) */
    MPX__SK_SET,       /* NS {T}:<addr>:sparks:<gen>  (shard) */
    MPX__SK_SERVERS,   /* {ns}:servers */
    MPX__SK_DRAINS,    /* {ns}:drains */
    MPX__SK_GENS,      /* {ns}:gens */
    MPX__SK_LAYOUT,    /* {ns}:layout */
    MPX__SK_ALIVE,     /* {ns}:alive:<addr> */
    MPX__SK_LEASE,     /* {ns}:lease:<addr> */
};

#define MPX__GEN_MAX 63 /* longest generation token accepted (mpx__token: < 64) */

/* Classify a key of the sharded layout `k`. For the shard kinds *shard is
 * the shard whose tag the key carries (a tag that is not one of the S
 * shards' is OTHER); for SET, ALIVE and LEASE the address is copied into
 * addr[MPX_ADDRESS_MAX + 1], for SET the generation into
 * gen[MPX__GEN_MAX + 1] (NUL-terminated; OTHER when too long, empty or
 * holding a NUL). */
int mpx__admin_classify_sharded(const mpx__keys_t *k, const char *key, size_t len,
                                uint32_t *shard, char *addr, char *gen);

/* Result codes of the check/fix scripts, one per id. */
enum mpx__admin_code {
    MPX__AC_OK = 0,
    /* fix_hash */
    MPX__AC_HASH_ADD = 1,        /* live registered server's set lacks the id: SADD */
    MPX__AC_HASH_DEL = 2,        /* names a server neither registered nor live: HDEL */
    MPX__AC_HASH_DEAD = 3,       /* registered dead server's set lacks it: left to the reap */
    MPX__AC_HASH_UNREG_LIVE = 4, /* names a live server missing from NS servers: left */
    /* fix_set */
    MPX__AC_SET_OTHER = 1,       /* hash names another server: SREM */
    MPX__AC_SET_NONE = 2,        /* hash has no entry: SREM */
    /* fix_server */
    MPX__AC_SRV_READD = 1,       /* not registered but alive key or lease exists: SADD servers */
    MPX__AC_SRV_DEAD = 2,        /* not registered, not live: nothing to do here */
    /* fix_aside */
    MPX__AC_ASIDE_LIST = 1,      /* aside set not in NS drains: HSET drains */
    /* sharded s_fix_hash: 1..4 as fix_hash (1 adds to the live generation's
     * set), and: */
    MPX__AC_SH_DRAINING = 5,     /* in a draining generation's set: its drain decides */
    MPX__AC_SH_CHANGED = 6,      /* the shard's marker is not what the caller read: left */
    /* sharded s_fix_stray */
    MPX__AC_STRAY = 1,           /* id in the wrong shard's hash or set: removed */
    /* sharded s_fix_marker */
    MPX__AC_MARKER = 1,          /* marker still as read: set / deleted */
    /* sharded s_fix_orphan */
    MPX__AC_ORPHAN_LIST = 1,     /* generation neither live nor draining: listed in drains */
    /* sharded s_fix_gen (a generation whose address is not in servers) */
    MPX__AC_GEN_READD = 1,       /* server live: SADD servers */
    MPX__AC_GEN_RETIRE = 2,      /* server not live: generation moved to drains */
    /* sharded s_fix_drain (the live generation listed in drains) */
    MPX__AC_DRAIN_UNLIST = 1,    /* HDEL drains */
};

/*
 * EVAL commands (dry: only report). Each re-checks, atomically, every
 * condition at the moment it runs, and changes a key only if it is still
 * wrong. Every key touched is declared in KEYS. At most 5000 ids per call.
 *
 * fix_hash: for hash entries id -> addr. Replies one code per id (above).
 * fix_set:  for members of addr's spark set. One code per id.
 * fix_server: addr not in NS servers? Replies a code.
 * fix_aside: aside set listed in NS drains? Replies a code.
 */
int mpx__admin_cmd_fix_hash(const mpx__keys_t *k, int dry, const char *addr,
                            const char *const *ids, const size_t *lens, size_t n,
                            mpx__argv_t *a);
int mpx__admin_cmd_fix_set(const mpx__keys_t *k, int dry, const char *addr,
                           const char *const *ids, const size_t *lens, size_t n,
                           mpx__argv_t *a);
int mpx__admin_cmd_fix_server(const mpx__keys_t *k, int dry, const char *addr, mpx__argv_t *a);
int mpx__admin_cmd_fix_aside(const mpx__keys_t *k, int dry, const char *aside, size_t aside_len,
                             const char *addr, mpx__argv_t *a);

/*
 * The sharded layout's check/fix scripts (docs/cli.md). Each touches the
 * keys of ONE hash slot, all declared in KEYS: a shard's (hash, marker
 * hash, generation sets) or the control slot's ({ns}:...). What a shard
 * script needs from the control slot (the address's live generation, its
 * draining generations, whether it is live) is read by the caller first
 * and passed as ARGV; the script re-checks what it can see: the shard's
 * generation marker of the address, which every registration rewrites (to
 * a fresh token) in every shard before its first write there. At most
 * 5000 ids per call.
 *
 * s_fix_hash: entries id -> addr of shard s. live_gen: addr's generation
 *   in {ns}:gens ("" none); drain_gens: addr's generations listed in
 *   {ns}:drains; live: its alive key or lease existed; expect: the value
 *   the shard's marker of addr must still have for a change to be made
 *   ("" absent). One code per id (MPX__AC_HASH_*, MPX__AC_SH_*).
 * s_fix_set: members of addr's generation-gen set of shard s whose hash
 *   entry does not name addr: SREM (codes as fix_set).
 * s_fix_stray: ids stored in shard s that belong to another shard: HDEL
 *   from the hash (addr NULL) or SREM from addr's generation-gen set.
 * s_fix_marker: shard s's marker of addr still `expect` ("" absent)? set
 *   it to `value` ("" deletes it).
 * s_fix_orphan (control slot): gen is neither addr's live generation nor
 *   listed in drains: HSET drains gen addr (its drain then removes it).
 * s_fix_gen (control slot): addr has generation gen but is not in
 *   servers: live -> SADD servers; not live -> generation moved to drains.
 * s_fix_drain (control slot): gen is both addr's live generation and
 *   listed in drains (as addr's): HDEL drains gen.
 */
int mpx__admin_cmd_s_fix_hash(const mpx__keys_t *k, int dry, uint32_t s, const char *addr,
                              const char *live_gen, const char *const *drain_gens,
                              size_t ndrain, int live, const char *expect,
                              const char *const *ids, const size_t *lens, size_t n,
                              mpx__argv_t *a);
int mpx__admin_cmd_s_fix_set(const mpx__keys_t *k, int dry, uint32_t s, const char *addr,
                             const char *gen, const char *const *ids, const size_t *lens,
                             size_t n, mpx__argv_t *a);
int mpx__admin_cmd_s_fix_stray(const mpx__keys_t *k, int dry, uint32_t s, const char *addr,
                               const char *gen, const char *const *ids, const size_t *lens,
                               size_t n, mpx__argv_t *a);
int mpx__admin_cmd_s_fix_marker(const mpx__keys_t *k, int dry, uint32_t s, const char *addr,
                                const char *expect, const char *value, mpx__argv_t *a);
int mpx__admin_cmd_s_fix_orphan(const mpx__keys_t *k, int dry, const char *addr,
                                const char *gen, mpx__argv_t *a);
int mpx__admin_cmd_s_fix_gen(const mpx__keys_t *k, int dry, const char *addr, const char *gen,
                             mpx__argv_t *a);
int mpx__admin_cmd_s_fix_drain(const mpx__keys_t *k, int dry, const char *addr,
                               const char *gen, mpx__argv_t *a);

/*
 * Retire one address the way the heartbeat reaps (script `retire`, or
 * `sharded retire` in the sharded layout; not forced: nothing happens while
 * its alive key or lease exists), on the registry's sync connection, then
 * drain every pending cleanup. *retired = 1 if the address was removed by
 * this call.
 */
int mpx__admin_retire(mpx_t *m, const char *addr, int *retired);

/* Finish every pending drain (NS drains) on the sync connection. */
int mpx__admin_drain(mpx_t *m);

#endif
