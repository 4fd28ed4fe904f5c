/*
 * fuzz_redis_url.c - libFuzzer target for mpx__parse_redis_url (options.c).
 *
 * Mode byte (first input byte, low 2 bits):
 *   0: the rest of the input is the URL, as given.
 *   1: "redis://" PREFIX ":" SECRET "@" REST  - the password must never
 *      appear in the error message (redaction), whatever PREFIX/REST are.
 *   2: "unix://" PREFIX "?password=" SECRET REST - same for unix URLs.
 *   3: "redis://" + the rest (most inputs then reach the host/port/db code).
 * On success the endpoint must be coherent (TCP host xor unix path, port in
 * 1..65535, db >= 0); on failure a message must be set and nothing leaks
 * (ASan/LeakSanitizer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SECRET "Zq9SeCrEt7Zq9"

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_redis_url: invariant broken: %s\n", what);
        abort();
    }
}

/* Copy p[0..n) into out, dropping NULs and the bytes in `drop`. ('Z' is
 * always dropped around the secret: the fuzzer learns the secret from the
 * strstr and would otherwise put it where it is not a password.) */
static size_t filtered(char *out, const uint8_t *p, size_t n, const char *drop)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] && !strchr(drop, p[i]))
            out[o++] = (char)p[i];
    out[o] = 0;
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192)
        return 0;
    int mode = data[0] & 3;
    data++;
    size--;
    char *url = malloc(size + 64);
    if (!url)
        return 0;
    size_t half = size / 2;
    switch (mode) {
    case 0:
        memcpy(url, data, size);
        url[size] = 0;
        break;
    case 1: {
        char *p = url;
        memcpy(p, "redis://", 8);
        p += 8;
        p += filtered(p, data, half, "/Z");
        memcpy(p, ":" SECRET "@", sizeof SECRET + 1);
        p += sizeof SECRET + 1;
        filtered(p, data + half, size - half, "Z");
        break;
    }
    case 2: {
        char *p = url;
        memcpy(p, "unix://", 7);
        p += 7;
        p += filtered(p, data, half, "Z");
        memcpy(p, "?password=" SECRET, 10 + sizeof SECRET - 1);
        p += 10 + sizeof SECRET - 1;
        filtered(p, data + half, size - half, "Z");
        break;
    }
    default:
        memcpy(url, "redis://", 8);
        memcpy(url + 8, data, size);
        url[8 + size] = 0;
        break;
    }

    mpx__redis_endpoint_t ep;
    int rc = mpx__parse_redis_url(url, &ep);
    if (rc == 0) {
        check((ep.host == NULL) != (ep.path == NULL), "exactly one of host and path");
        if (ep.host)
            check(ep.port >= 1 && ep.port <= 65535, "port in 1..65535");
        check(ep.db >= 0, "db >= 0");
        mpx__endpoint_free(&ep);
        check(ep.host == NULL && ep.path == NULL && ep.password == NULL, "endpoint_free clears");
    } else {
        check(rc == MPX_EINVAL || rc == MPX_ENOMEM, "error code EINVAL/ENOMEM");
        check(mpx_last_error()[0] != 0, "a message is set");
        check(ep.host == NULL && ep.path == NULL && ep.user == NULL && ep.password == NULL,
              "nothing left in the endpoint after a failure");
        if (mode == 1 || mode == 2)
            check(strstr(mpx_last_error(), SECRET) == NULL, "the password is redacted");
    }
    free(url);
    return 0;
}
