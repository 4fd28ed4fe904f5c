/*
 * admin.h - internal functions behind the operator CLI (tools/cli.c):
 * consistency scripts, key classification, and retiring one address with
 * the library's own retire + drain scripts. Not part of the public API.
 *
 * Key names come from keys.c (mpx__keys_t, mpx__key_*); the one naming
 * helper added here, mpx__admin_match(), builds the SCAN MATCH pattern of
 * the namespace (the namespace with glob characters escaped, then '*').
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

/* Push the SCAN MATCH pattern of the namespace: NS with *?[]\ escaped, '*'. */
int mpx__admin_match(const mpx__keys_t *k, mpx__argv_t *a);

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
 * Retire one address the way the heartbeat reaps (script `retire`, not
 * forced: nothing happens while its alive key or lease exists), on the
 * registry's sync connection, then drain every pending cleanup.
 * *retired = 1 if the address was removed by this call.
 */
int mpx__admin_retire(mpx_t *m, const char *addr, int *retired);

/* Finish every pending drain (NS drains) on the sync connection. */
int mpx__admin_drain(mpx_t *m);

#endif
