/*
 * cluster.h - Redis Cluster routing behind mpx__conn_t (cluster.c), and
 * per-node access for tools and tests.
 *
 * conn.c calls the mpx__cluster_* functions when c->ep->cluster is set;
 * nothing else should. The mpx__conn_node* functions and mpx__conn_free
 * work on a single Redis too (one node: the connection itself).
 *
 * Thread-safety: as mpx__conn_t, one thread at a time per connection.
 */
#ifndef MPX_CLUSTER_H
#define MPX_CLUSTER_H

#include "internal.h"

/* ---- for tools, tests and per-master work (stats, SCAN) ------------------- */

/* Release everything the connection holds. On a single Redis the same as
 * mpx__conn_close; on a cluster mpx__conn_close only closes the node
 * connections and keeps the slot map and the failover history (so a
 * failover is still noticed after the owner closed on an error), and this
 * frees them. The connection may be used again afterwards (it starts over:
 * no map, no history). */
void mpx__conn_free(mpx__conn_t *c);

/* Number of masters (single Redis: 1). On a cluster, the masters of the
 * last slot map read (0 before the first: call mpx__conn_ensure first).
 * Indexes stay valid until the map is read again, which the
 * mpx__conn_node_* calls never do (mpx__conn_ensure, mpx__conn_command,
 * mpx__conn_pipeline and mpx__conn_refresh may). */
size_t mpx__conn_nodes(mpx__conn_t *c);
/* "host:port" of master i (a single Redis: its address, "unix:PATH" for a
 * socket), or NULL if i is out of range. Valid until the map is read again
 * (a single Redis: until the next call on this thread). */
const char *mpx__conn_node_name(mpx__conn_t *c, size_t i);
/* "host:port" of the node the slot map sends `slot` to now (a MOVED
 * patches it; an ASK does not), NULL if none or no map yet. A single Redis:
 * its address. Same lifetime as mpx__conn_node_name. */
const char *mpx__conn_slot_node(mpx__conn_t *c, unsigned slot);
/* Run one command on master i (no routing, no redirection: a MOVED reply is
 * returned as MPX_EREDIS), connecting it if needed; as mpx__conn_command
 * otherwise (NOSCRIPT reloads and retries once). MPX_EINVAL if i is out of
 * range. An I/O error closes that node's connection and marks the map for
 * re-reading. */
int mpx__conn_node_command(mpx__conn_t *c, size_t i, mpx__argv_t *a, redisReply **out);

/* The slots that failed over (a replica promoted: acknowledged writes there
 * may be lost) since the last call, as a bitmap (bit s % 8 of byte s / 8),
 * and forget them. All bits when a node restarted, or on a single Redis.
 * Returns whether any bit is set. Use after run_id_changed was seen. */
bool mpx__conn_take_lost_slots(mpx__conn_t *c, uint8_t out[2048]);

/* ---- conn.c -> cluster.c (SIGPIPE is already blocked by the caller) ------- */

int mpx__cluster_ensure(mpx__conn_t *c, bool force);
void mpx__cluster_close(mpx__conn_t *c);
void mpx__cluster_free(mpx__conn_t *c);
int mpx__cluster_command(mpx__conn_t *c, mpx__argv_t *a, redisReply **out);
int mpx__cluster_pipeline(mpx__conn_t *c, size_t n, mpx__argv_t *const *cmds,
                          redisReply **replies, int *rcs);
int mpx__cluster_refresh(mpx__conn_t *c, uint32_t max_age_ms);
size_t mpx__cluster_nodes(mpx__conn_t *c);
const char *mpx__cluster_node_name(mpx__conn_t *c, size_t i);
const char *mpx__cluster_slot_node(mpx__conn_t *c, unsigned slot);
int mpx__cluster_node_command(mpx__conn_t *c, size_t i, mpx__argv_t *a, redisReply **out);

/* ---- cluster.c -> conn.c ------------------------------------------------- */

/* SCRIPT LOAD every script on a connected single-node connection (filling
 * c->shas). 0, or an error with the connection closed. */
int mpx__conn_load_scripts(mpx__conn_t *c);

#endif /* MPX_CLUSTER_H */
