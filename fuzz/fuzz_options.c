/*
 * fuzz_options.c - libFuzzer target for option validation:
 * mpx__check_options (every field, with fuzzed strings for redis_url, ns
 * and address, and a fuzzed struct_size) and mpx__check_id.
 *
 * Input: 44 bytes of numbers (little-endian u32 fields, see below), one
 * flags byte (bit i: string i is NULL), then up to three strings separated
 * by NUL bytes (redis_url, ns, address); the remaining bytes are a spark id.
 * Accepted options must satisfy every documented rule (metroplex.h); a
 * rejection must come with a message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_options: invariant broken: %s (last error: %s)\n", what,
                mpx_last_error());
        abort();
    }
}

static uint32_t u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Small numbers are more interesting than uniform 32-bit ones. */
static uint32_t num(const uint8_t *p)
{
    uint32_t v = u32(p);
    switch (v >> 30) {
    case 0: return v & 0xff;
    case 1: return v & 0xffff;
    case 2: return v & 0xfffff;
    default: return v;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 45 || size > 16384)
        return 0;
    mpx_options_t in;
    mpx_options_init(&in);
    const uint8_t *p = data;
    in.connect_timeout_ms = num(p + 0);
    in.command_timeout_ms = num(p + 4);
    in.interval_ms = num(p + 8);
    in.latency_ms = num(p + 12);
    in.lease_ms = num(p + 16);
    in.reap_chunk = num(p + 20);
    in.batch_max = num(p + 24);
    in.batch_delay_ms = num(p + 28);
    in.size_hint = (size_t)num(p + 32) << (p[32] & 7);
    in.remote_ttl_ms = num(p + 36);
    uint32_t ss = u32(p + 40);
    /* Mostly the real size; sometimes an old (shorter) or bogus one. */
    if ((ss & 3) == 1)
        in.struct_size = (ss >> 2) % (sizeof in + 64);
    else if ((ss & 3) == 2)
        in.struct_size = ss >> 2;
    uint8_t flags = p[44];
    size_t off = 45;

    /* Split the tail into three NUL-terminated strings and an id. */
    char *tail = malloc(size - off + 4);
    if (!tail)
        return 0;
    memcpy(tail, data + off, size - off);
    memset(tail + (size - off), 0, 4);
    const char *str[3];
    size_t pos = 0, n = size - off;
    for (int i = 0; i < 3; i++) {
        str[i] = tail + (pos < n ? pos : n);
        while (pos < n && tail[pos])
            pos++;
        pos++; /* past the NUL */
    }
    const char *id = tail + (pos < n ? pos : n);
    size_t idlen = pos < n ? n - pos : 0;

    in.redis_url = (flags & 1) ? NULL : str[0];
    in.ns = (flags & 2) ? NULL : str[1];
    in.address = (flags & 4) ? NULL : str[2];

    mpx_options_t out;
    int rc = mpx__check_options((flags & 8) ? NULL : &in, &out);
    if (rc == 0) {
        check(!(flags & 8), "NULL options rejected");
        check(out.struct_size == sizeof out, "struct_size normalised");
        check(out.connect_timeout_ms >= 1 && out.connect_timeout_ms <= 600000, "connect_timeout");
        check(out.command_timeout_ms >= 1 && out.command_timeout_ms <= 600000, "command_timeout");
        check(out.latency_ms >= 1 && out.latency_ms < out.interval_ms, "latency < interval");
        check(out.lease_ms >= 300 && out.lease_ms <= out.interval_ms, "lease range");
        check(out.reap_chunk >= 1 && out.reap_chunk <= 5000, "reap_chunk");
        check(out.batch_max >= 1 && out.batch_max <= 1000000, "batch_max");
        check(out.batch_delay_ms <= 10000, "batch_delay");
        check(out.redis_url && out.ns, "defaults filled in");
        size_t nl = strlen(out.ns);
        check(nl >= 1 && nl <= MPX_NAMESPACE_MAX, "ns length");
        for (size_t i = 0; i < nl; i++) {
            unsigned char ch = (unsigned char)out.ns[i];
            check(ch > 0x20 && ch < 0x7f && ch != '{' && ch != '}', "ns bytes");
        }
        mpx__redis_endpoint_t ep;
        check(mpx__parse_redis_url(out.redis_url, &ep) == 0, "accepted URL parses again");
        mpx__endpoint_free(&ep);
        if (out.address) {
            char canon[MPX_ADDRESS_MAX + 1];
            check(mpx__check_address(out.address, "a", canon) == 0, "accepted address");
        }
        /* Key names built from accepted options never fail. */
        mpx__keys_t k;
        if (mpx__keys_init(&k, out.ns) == 0) {
            check(k.ns_len == nl + 1 && k.ns[nl] == ':', "NS is ns + ':'");
            if (out.address) {
                mpx__argv_t a;
                mpx__argv_init(&a);
                check(mpx__key_set(&k, out.address, &a) == 0, "set key builds");
                check(mpx__key_aside(&k, out.address, "0123456789abcdef01234567-18446744073709551615",
                                     &a) == 0,
                      "aside key builds");
                mpx__argv_free(&a);
            }
            mpx__keys_free(&k);
        }
    } else {
        check(rc == MPX_EINVAL || rc == MPX_ETOOBIG || rc == MPX_ENOMEM, "error code");
        check(mpx_last_error()[0] != 0, "a message is set");
    }

    /* Spark ids: valid iff non-NULL and 1..MPX_ID_MAX bytes. */
    int irc = mpx__check_id((flags & 16) ? NULL : id, idlen);
    if ((flags & 16) || idlen == 0)
        check(irc == MPX_EINVAL, "NULL / empty id rejected");
    else if (idlen > MPX_ID_MAX)
        check(irc == MPX_ETOOBIG, "long id: ETOOBIG");
    else
        check(irc == 0, "binary id of 1..MPX_ID_MAX bytes accepted");
    free(tail);
    return 0;
}
