/*
 * fuzz_address.c - libFuzzer target for mpx__check_address (options.c),
 * the validation of every server address (options.address, mpx_register).
 *
 * An accepted address is copied unchanged and must be exactly
 * "http(s)://host:port": at most MPX_ADDRESS_MAX bytes, no path, query,
 * fragment or user info, no byte outside [A-Za-z0-9-._:[]], port 1..65535
 * without leading zeros. (Addresses become parts of Redis key names, so
 * anything else reaching Redis would be a bug.)
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void check(int cond, const char *what, const char *addr)
{
    if (!cond) {
        fprintf(stderr, "fuzz_address: invariant broken: %s (address '%s')\n", what, addr);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    /* Half the inputs get the scheme prepended, to go deeper faster. */
    int prefixed = size > 0 && (data[0] & 1);
    if (prefixed) {
        data++;
        size--;
    }
    char *s = malloc(size + 16);
    if (!s)
        return 0;
    size_t off = 0;
    if (prefixed) {
        memcpy(s, "http://", 7);
        off = 7;
    }
    memcpy(s + off, data, size);
    s[off + size] = 0;

    char out[MPX_ADDRESS_MAX + 1];
    memset(out, 0x5a, sizeof out);
    int rc = mpx__check_address(s, "address", out);
    size_t len = strlen(s);
    if (rc == 0) {
        check(len >= 1 && len <= MPX_ADDRESS_MAX, "length within 1..MPX_ADDRESS_MAX", s);
        check(strcmp(out, s) == 0, "copied unchanged", s);
        const char *rest = strncmp(s, "http://", 7) == 0    ? s + 7
                           : strncmp(s, "https://", 8) == 0 ? s + 8
                                                            : NULL;
        check(rest != NULL, "http:// or https://", s);
        for (const char *p = rest; *p; p++)
            check(isalnum((unsigned char)*p) || strchr("-._:[]", *p), "allowed bytes only", s);
        const char *colon = strrchr(rest, ':');
        check(colon && colon > rest, "a host and a port", s);
        char *end;
        long port = strtol(colon + 1, &end, 10);
        check(*end == 0 && port >= 1 && port <= 65535 && colon[1] != '0', "port 1..65535", s);
    } else {
        check(rc == MPX_EINVAL || rc == MPX_ETOOBIG, "EINVAL or ETOOBIG", s);
        check(rc != MPX_ETOOBIG || len > MPX_ADDRESS_MAX, "ETOOBIG only when too long", s);
        check(mpx_last_error()[0] != 0, "a message is set", s);
    }
    free(s);
    return 0;
}
