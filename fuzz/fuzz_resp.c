/*
 * fuzz_resp.c - libFuzzer target for the Redis replies the library
 * interprets.
 *
 * The library's reply interpretation (elem_int/elem_str in lifecycle.c,
 * read_tx and the SSCAN walk in writer.c, the HGET/HMGET/SMEMBERS handling
 * in registry.c and lookup.c, INFO/SCRIPT LOAD in conn.c) is static code
 * reached only through a live connection, so it cannot be called without
 * I/O. This target fuzzes the entry point every reply goes through:
 * hiredis's RESP parser (redisReaderCreate / redisReaderFeed /
 * redisReaderGetReply), feeding the bytes in fuzzed chunk sizes, and then
 * walks each parsed reply with the same checks the library applies (type
 * before use, bounds before element access, str NUL-terminated at len),
 * asserting the invariants those checks rely on.
 *
 * Input: first byte = chunk size for feeding (1..256), the rest = RESP.
 *
 * Inputs announcing an array of 100000 elements or more are skipped:
 * hiredis (0.14 and later) callocs the element array as soon as it reads
 * the "*<count>" header, before any element arrives, so "*999999999\r\n"
 * alone makes it allocate 8 GB (an out-of-memory report, not a bug of the
 * library: Redis is trusted, and hiredis >= 1.0 caps the count with
 * redisReader.maxelements).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_resp: invariant broken: %s\n", what);
        abort();
    }
}

/* elem_int / elem_str of lifecycle.c. */
static long long elem_int(const redisReply *r, size_t i)
{
    if (r->type != REDIS_REPLY_ARRAY || i >= r->elements ||
        r->element[i]->type != REDIS_REPLY_INTEGER)
        return -1000;
    return r->element[i]->integer;
}

static const char *elem_str(const redisReply *r, size_t i)
{
    if (r->type != REDIS_REPLY_ARRAY || i >= r->elements ||
        r->element[i]->type != REDIS_REPLY_STRING)
        return "?";
    return r->element[i]->str;
}

static size_t walk(const redisReply *r, int depth)
{
    size_t sum = 0;
    check(depth < 64, "nesting bounded");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        /* conn.c/registry.c use str as a C string and (str, len) as bytes. */
        check(r->str != NULL, "string replies have str");
        check(r->str[r->len] == 0, "str is NUL-terminated at len");
        sum += r->len;
        if (r->type == REDIS_REPLY_STRING && r->len > 0)
            sum += (unsigned char)r->str[r->len - 1];
        break;
    case REDIS_REPLY_ARRAY:
        check(r->elements == 0 || r->element != NULL, "arrays have elements");
        for (size_t i = 0; i < r->elements; i++) {
            check(r->element[i] != NULL, "no NULL element");
            sum += walk(r->element[i], depth + 1);
        }
        break;
    case REDIS_REPLY_INTEGER:
    case REDIS_REPLY_NIL:
        break;
    default:
        check(0, "known reply type");
    }
    return sum;
}

/* The shapes the library expects, interpreted as it does. */
static size_t interpret(const redisReply *r)
{
    size_t sum = walk(r, 0);
    /* register / heartbeat / retire / drain script replies */
    sum += (size_t)elem_int(r, 0) + (size_t)elem_int(r, 1) + (size_t)elem_int(r, 2);
    sum += strlen(elem_str(r, 1)) + strlen(elem_str(r, 2));
    /* HGETALL drains: pairs of strings, value copied into an address buffer */
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            redisReply *k = r->element[i], *v = r->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || v->len > 255)
                continue;
            char addr[256];
            memcpy(addr, v->str, v->len + 1);
            sum += strlen(addr) + k->len;
        }
        /* SSCAN: [cursor, [ids...]] */
        if (r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_ARRAY) {
            char cursor[32];
            snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
            sum += strlen(cursor) + r->element[1]->elements;
        }
    }
    /* INFO server: run_id */
    if (r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, "run_id:");
        if (p && strlen(p + 7) >= 40)
            sum += (unsigned char)p[7 + 39];
    }
    return sum;
}

static int huge_array(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '*')
            continue;
        size_t digits = 0;
        while (i + 1 + digits < n && p[i + 1 + digits] >= '0' && p[i + 1 + digits] <= '9')
            digits++;
        if (digits >= 6)
            return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || huge_array(data, size))
        return 0;
    size_t chunk = (size_t)data[0] + 1;
    data++;
    size--;
    redisReader *rd = redisReaderCreate();
    if (!rd)
        return 0;
    size_t off = 0;
    volatile size_t sink = 0;
    int failed = 0;
    while (off < size && !failed) {
        size_t n = size - off < chunk ? size - off : chunk;
        if (redisReaderFeed(rd, (const char *)data + off, n) != REDIS_OK)
            break;
        off += n;
        for (;;) {
            void *reply = NULL;
            if (redisReaderGetReply(rd, &reply) != REDIS_OK) {
                check(rd->err != 0 && rd->errstr[0] != 0, "a parse error has a message");
                failed = 1;
                break;
            }
            if (!reply)
                break;
            sink += interpret(reply);
            freeReplyObject(reply);
        }
    }
    (void)sink;
    redisReaderFree(rd);
    return 0;
}
