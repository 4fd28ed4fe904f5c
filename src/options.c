/*
 * options.c - option defaults and validation, Redis URL and address parsing.
 *
 * Pure functions, no I/O. Every rejection sets a message naming the field
 * and the rule it broke (mpx_last_error()).
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void mpx_options_init(mpx_options_t *opts)
{
    if (!opts)
        return;
    mpx_options_t d = MPX_OPTIONS_INIT;
    *opts = d;
}

static int check_range(const char *field, uint32_t v, uint32_t lo, uint32_t hi)
{
    if (v < lo || v > hi)
        return mpx__fail(MPX_EINVAL, "options.%s (%u) must be between %u and %u",
                         field, v, lo, hi);
    return 0;
}

int mpx__check_options(const mpx_options_t *in, mpx_options_t *out)
{
    int rc;
    if (!in)
        return mpx__fail(MPX_EINVAL, "options must not be NULL");
    if (in->struct_size < offsetof(mpx_options_t, size_hint) ||
        in->struct_size > (1u << 20))
        return mpx__fail(MPX_EINVAL,
                         "options.struct_size (%zu) is not a valid size: "
                         "initialise the options with mpx_options_init()",
                         in->struct_size);
    mpx_options_init(out);
    size_t n = in->struct_size < sizeof *out ? in->struct_size : sizeof *out;
    memcpy(out, in, n);
    out->struct_size = sizeof *out;

    if (!out->redis_url)
        out->redis_url = "redis://127.0.0.1:6379";
    mpx__redis_endpoint_t ep;
    if ((rc = mpx__parse_redis_url(out->redis_url, &ep)) != 0)
        return rc;
    bool cluster = ep.cluster;
    mpx__endpoint_free(&ep);
    if (out->layout == MPX_LAYOUT_AUTO)
        out->layout = cluster ? MPX_LAYOUT_SHARDED : MPX_LAYOUT_NODE;
    if (out->layout != MPX_LAYOUT_NODE && out->layout != MPX_LAYOUT_SHARDED)
        return mpx__fail(MPX_EINVAL, "options.layout (%d) must be MPX_LAYOUT_AUTO (0), "
                         "MPX_LAYOUT_NODE (1) or MPX_LAYOUT_SHARDED (2)", out->layout);
    if (cluster && out->layout == MPX_LAYOUT_NODE)
        return mpx__fail(MPX_EINVAL, "options.layout: the node layout keeps every spark in one "
                         "hash and cannot run on Redis Cluster; use MPX_LAYOUT_SHARDED");
    if ((rc = check_range("shards", out->shards, 1, 16384)))
        return rc;

    if ((rc = check_range("connect_timeout_ms", out->connect_timeout_ms, 1, 600000)) ||
        (rc = check_range("command_timeout_ms", out->command_timeout_ms, 1, 600000)))
        return rc;

    if (!out->ns)
        out->ns = "metroplex";
    size_t nslen = strlen(out->ns);
    if (nslen == 0)
        return mpx__fail(MPX_EINVAL, "options.ns must not be empty");
    if (nslen > MPX_NAMESPACE_MAX)
        return mpx__fail(MPX_EINVAL, "options.ns is %zu bytes long; the maximum is %d",
                         nslen, MPX_NAMESPACE_MAX);
    for (size_t i = 0; i < nslen; i++) {
        unsigned char ch = (unsigned char)out->ns[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '{' || ch == '}')
            return mpx__fail(MPX_EINVAL,
                             "options.ns has a forbidden byte 0x%02x at offset %zu "
                             "(allowed: printable ASCII except space, '{' and '}')",
                             ch, i);
    }

    if (out->interval_ms < 2)
        return mpx__fail(MPX_EINVAL, "options.interval_ms (%u) must be at least 2",
                         out->interval_ms);
    if (out->latency_ms < 1 || out->latency_ms >= out->interval_ms)
        return mpx__fail(MPX_EINVAL,
                         "options.interval_ms (%u) must be greater than "
                         "options.latency_ms (%u), and latency_ms at least 1",
                         out->interval_ms, out->latency_ms);
    if (out->lease_ms < 300 || out->lease_ms > out->interval_ms)
        return mpx__fail(MPX_EINVAL,
                         "options.lease_ms (%u) must be between 300 and "
                         "options.interval_ms (%u)",
                         out->lease_ms, out->interval_ms);
    if ((rc = check_range("reap_chunk", out->reap_chunk, 1, 5000)) ||
        (rc = check_range("batch_max", out->batch_max, 1, 1000000)) ||
        (rc = check_range("batch_delay_ms", out->batch_delay_ms, 0, 10000)))
        return rc;
    if ((uint64_t)out->size_hint > ((uint64_t)1 << 32))
        return mpx__fail(MPX_EINVAL, "options.size_hint (%zu) is larger than 2^32",
                         out->size_hint);
    if (out->address) {
        char canon[MPX_ADDRESS_MAX + 1];
        if ((rc = mpx__check_address(out->address, "options.address", canon)) != 0)
            return rc;
    }
    return 0;
}

/* ---- addresses ----------------------------------------------------------- */

static int check_port(const char *p, size_t n, const char *field, const char *what)
{
    if (n == 0 || n > 5)
        return mpx__fail(MPX_EINVAL, "%s: %s port must be 1 to 5 digits", field, what);
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i]))
            return mpx__fail(MPX_EINVAL, "%s: %s port '%.*s' is not a number", field, what,
                             (int)n, p);
        v = v * 10 + (p[i] - '0');
    }
    if (v < 1 || v > 65535 || (p[0] == '0'))
        return mpx__fail(MPX_EINVAL, "%s: %s port '%.*s' must be 1..65535 without leading zeros",
                         field, what, (int)n, p);
    return 0;
}

/* host: a DNS name / IPv4 (letters, digits, '-', '.', '_'), or [IPv6]. */
static int check_host(const char *h, size_t n, const char *field)
{
    if (n == 0)
        return mpx__fail(MPX_EINVAL, "%s: the host is empty", field);
    if (h[0] == '[') {
        if (n < 3 || h[n - 1] != ']')
            return mpx__fail(MPX_EINVAL, "%s: unterminated IPv6 literal", field);
        for (size_t i = 1; i + 1 < n; i++)
            if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.')
                return mpx__fail(MPX_EINVAL, "%s: bad character in IPv6 literal", field);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (!isalnum(ch) && ch != '-' && ch != '.' && ch != '_')
            return mpx__fail(MPX_EINVAL,
                             "%s: forbidden byte 0x%02x in the host (allowed: letters, "
                             "digits, '-', '.', '_', or an [IPv6] literal)",
                             field, ch);
    }
    return 0;
}

int mpx__check_address(const char *address, const char *field, char *out)
{
    if (!address)
        return mpx__fail(MPX_EINVAL, "%s must not be NULL", field);
    size_t len = strlen(address);
    if (len == 0)
        return mpx__fail(MPX_EINVAL, "%s must not be empty", field);
    if (len > MPX_ADDRESS_MAX)
        return mpx__fail(MPX_ETOOBIG, "%s is %zu bytes long; the maximum is %d", field, len,
                         MPX_ADDRESS_MAX);
    const char *rest;
    if (strncmp(address, "http://", 7) == 0)
        rest = address + 7;
    else if (strncmp(address, "https://", 8) == 0)
        rest = address + 8;
    else
        return mpx__fail(MPX_EINVAL,
                         "%s '%s' must start with http:// or https:// "
                         "(form: http://host:port)",
                         field, address);
    const char *end = address + len;
    const char *slash = strpbrk(rest, "/?#@");
    if (slash)
        return mpx__fail(MPX_EINVAL,
                         "%s '%s' must be scheme://host:port only: no path, query, "
                         "fragment or user info (found '%c')",
                         field, address, *slash);
    /* The port is after the last ':' that is not inside [ ]. */
    const char *colon = NULL;
    if (rest[0] == '[') {
        const char *rb = strchr(rest, ']');
        if (rb && rb[1] == ':')
            colon = rb + 1;
    } else {
        colon = strrchr(rest, ':');
    }
    if (!colon)
        return mpx__fail(MPX_EINVAL, "%s '%s' has no port (form: http://host:port)", field,
                         address);
    int rc;
    if ((rc = check_host(rest, (size_t)(colon - rest), field)) != 0)
        return rc;
    if ((rc = check_port(colon + 1, (size_t)(end - colon - 1), field, "the")) != 0)
        return rc;
    memcpy(out, address, len + 1);
    return 0;
}

int mpx__check_id(const void *id, size_t len)
{
    if (!id)
        return mpx__fail(MPX_EINVAL, "spark id must not be NULL");
    if (len == 0)
        return mpx__fail(MPX_EINVAL, "spark id must not be empty");
    if (len > MPX_ID_MAX)
        return mpx__fail(MPX_ETOOBIG, "spark id is %zu bytes long; the maximum is %d", len,
                         MPX_ID_MAX);
    return 0;
}

/* ---- Redis URLs ------------------------------------------------------------ */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decode p[0..n) into a new string. */
static char *pct_decode(const char *p, size_t n)
{
    char *s = malloc(n + 1), *o = s;
    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '%' && i + 2 < n && hexval((unsigned char)p[i + 1]) >= 0 &&
            hexval((unsigned char)p[i + 2]) >= 0 &&
            (p[i + 1] != '0' || p[i + 2] != '0')) { /* %00 stays literal */
            *o++ = (char)(hexval((unsigned char)p[i + 1]) * 16 + hexval((unsigned char)p[i + 2]));
            i += 2;
        } else {
            *o++ = p[i];
        }
    }
    *o = 0;
    return s;
}

static int parse_db(const char *p, size_t n, int *db)
{
    if (n == 0 || n > 5)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i]))
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *db = v;
    return 0;
}

void mpx__endpoint_free(mpx__redis_endpoint_t *ep)
{
    if (!ep)
        return;
    free(ep->host);
    free(ep->path);
    free(ep->user);
    free(ep->password);
    for (size_t i = 0; i < ep->nseeds; i++)
        free(ep->seeds[i].host);
    free(ep->seeds);
    memset(ep, 0, sizeof *ep);
}

#define URL_FORMS                                                                          \
    "redis://[user:password@]host[:port][/db], unix:///path[?db=N&password=P] or "         \
    "redis-cluster://[user:password@]host:port[,host:port...]"

/* A copy of the URL for messages, with any password replaced by "***". */
static void redact_url(const char *url, char *out, size_t cap)
{
    size_t o = 0;
    const char *p = url;
    const char *at = NULL, *slash = NULL;
    size_t skip = strncmp(url, "redis://", 8) == 0           ? 8
                  : strncmp(url, "redis-cluster://", 16) == 0 ? 16
                                                               : 0;
    if (skip) {
        slash = strchr(url + skip, '/');
        for (const char *s = url + skip; *s && s != slash; s++)
            if (*s == '@')
                at = s;
    }
    while (*p && o + 4 < cap) {
        if (at && p == url + skip) {
            const char *colon = memchr(p, ':', (size_t)(at - p));
            size_t keep = colon ? (size_t)(colon - p) + 1 : 0;
            if (keep > cap - o - 5)
                keep = cap - o - 5;
            memcpy(out + o, p, keep);
            o += keep;
            memcpy(out + o, "***", 3);
            o += 3;
            p = at;
            continue;
        }
        if (strncmp(p, "password=", 9) == 0 && (p == url || p[-1] == '?' || p[-1] == '&')) {
            if (o + 13 >= cap)
                break;
            memcpy(out + o, "password=***", 12);
            o += 12;
            p += 9;
            while (*p && *p != '&')
                p++;
            continue;
        }
        out[o++] = *p++;
    }
    out[o] = 0;
}

static int parse_unix(const char *url, const char *shown, mpx__redis_endpoint_t *ep)
{
    const char *p = url + 7; /* after unix:// */
    if (*p != '/')
        return mpx__fail(MPX_EINVAL, "options.redis_url '%s': the socket path must be absolute (%s)",
                         shown, URL_FORMS);
    const char *q = strchr(p, '?');
    size_t plen = q ? (size_t)(q - p) : strlen(p);
    if (plen < 2 || plen > 107)
        return mpx__fail(MPX_EINVAL, "options.redis_url '%s': bad socket path length", shown);
    ep->path = pct_decode(p, plen);
    if (!ep->path)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    while (q && *q) {
        q++;
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', n);
        if (!eq)
            return mpx__fail(MPX_EINVAL, "options.redis_url '%s': bad query parameter", shown);
        size_t kl = (size_t)(eq - q), vl = n - kl - 1;
        if (kl == 2 && memcmp(q, "db", 2) == 0) {
            if (parse_db(eq + 1, vl, &ep->db) != 0)
                return mpx__fail(MPX_EINVAL, "options.redis_url '%s': db must be a number", shown);
        } else if (kl == 8 && memcmp(q, "password", 8) == 0) {
            free(ep->password);
            if (!(ep->password = pct_decode(eq + 1, vl)))
                return mpx__fail(MPX_ENOMEM, "out of memory");
        } else if (kl == 4 && memcmp(q, "user", 4) == 0) {
            free(ep->user);
            if (!(ep->user = pct_decode(eq + 1, vl)))
                return mpx__fail(MPX_ENOMEM, "out of memory");
        } else {
            return mpx__fail(MPX_EINVAL, "options.redis_url '%s': unknown parameter '%.*s'", shown,
                             (int)kl, q);
        }
        q = amp;
    }
    return 0;
}

static int parse_url(const char *url, const char *shown, mpx__redis_endpoint_t *ep);

/* redis-cluster://[auth@]h:p[,h:p...]: each seed is parsed as a redis://
 * URL (the first with the credentials); no db (a cluster has only db 0). */
static int parse_cluster(const char *url, const char *shown, mpx__redis_endpoint_t *ep)
{
    const char *p = url + 16;
    const char *at = strrchr(p, '@');
    const char *hosts = at ? at + 1 : p;
    size_t auth_len = at ? (size_t)(at + 1 - p) : 0;
    if (strchr(hosts, '/'))
        return mpx__fail(MPX_EINVAL, "options.redis_url '%s': a cluster URL takes no /db "
                         "(Redis Cluster has only db 0)", shown);
    size_t n = 1;
    for (const char *s = hosts; *s; s++)
        n += *s == ',';
    if (n > 64)
        return mpx__fail(MPX_EINVAL, "options.redis_url '%s': more than 64 seeds", shown);
    if (!(ep->seeds = calloc(n, sizeof *ep->seeds)))
        return mpx__fail(MPX_ENOMEM, "out of memory");
    ep->cluster = true;
    char one[4200];
    for (size_t i = 0; i < n; i++) {
        const char *comma = strchr(hosts, ',');
        size_t hl = comma ? (size_t)(comma - hosts) : strlen(hosts);
        if (hl == 0)
            return mpx__fail(MPX_EINVAL, "options.redis_url '%s': empty seed %zu", shown, i + 1);
        snprintf(one, sizeof one, "redis://%.*s%.*s", i == 0 ? (int)auth_len : 0, p, (int)hl,
                 hosts);
        mpx__redis_endpoint_t s;
        int rc = parse_url(one, shown, &s);
        if (rc)
            return rc;
        ep->seeds[i].host = s.host;
        ep->seeds[i].port = s.port;
        ep->nseeds = i + 1;
        if (i == 0) {
            ep->user = s.user;
            ep->password = s.password;
            ep->port = s.port;
            if (!(ep->host = strdup(s.host)))
                return mpx__fail(MPX_ENOMEM, "out of memory");
        } else {
            free(s.user);
            free(s.password);
        }
        free(s.path);
        hosts = comma ? comma + 1 : hosts + hl;
    }
    return 0;
}

int mpx__parse_redis_url(const char *url, mpx__redis_endpoint_t *ep)
{
    memset(ep, 0, sizeof *ep);
    int rc = 0;
    if (!url || !*url)
        return mpx__fail(MPX_EINVAL, "options.redis_url must not be empty (%s)", URL_FORMS);
    if (strlen(url) > 4096)
        return mpx__fail(MPX_EINVAL, "options.redis_url is longer than 4096 bytes");
    char shown[512];
    redact_url(url, shown, sizeof shown);
    if (strncmp(url, "unix://", 7) == 0) {
        rc = parse_unix(url, shown, ep);
        if (rc)
            mpx__endpoint_free(ep);
        return rc;
    }
    if (strncmp(url, "redis-cluster://", 16) == 0) {
        rc = parse_cluster(url, shown, ep);
        if (rc)
            mpx__endpoint_free(ep);
        return rc;
    }
    return parse_url(url, shown, ep);
}

static int parse_url(const char *url, const char *shown, mpx__redis_endpoint_t *ep)
{
    int rc = 0;
    memset(ep, 0, sizeof *ep);
    if (strncmp(url, "redis://", 8) != 0)
        return mpx__fail(MPX_EINVAL, "options.redis_url '%s' must be %s", shown, URL_FORMS);
    const char *p = url + 8;
    const char *end = p + strlen(p);
    const char *slash = strchr(p, '/');
    const char *auth_end = NULL;
    for (const char *s = p; s < (slash ? slash : end); s++)
        if (*s == '@')
            auth_end = s; /* the last '@' before the path */
    if (auth_end) {
        const char *colon = memchr(p, ':', (size_t)(auth_end - p));
        if (colon) {
            if (colon > p && !(ep->user = pct_decode(p, (size_t)(colon - p))))
                goto nomem;
            if (!(ep->password = pct_decode(colon + 1, (size_t)(auth_end - colon - 1))))
                goto nomem;
        } else if (auth_end > p) {
            /* redis://password@host, as several clients accept */
            if (!(ep->password = pct_decode(p, (size_t)(auth_end - p))))
                goto nomem;
        }
        p = auth_end + 1;
    }
    const char *hend = slash ? slash : end;
    const char *colon = NULL;
    const char *hstart = p;
    size_t hlen;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(hend - p));
        if (!rb) {
            rc = mpx__fail(MPX_EINVAL, "options.redis_url '%s': unterminated IPv6 literal", shown);
            goto fail;
        }
        hstart = p + 1;
        hlen = (size_t)(rb - hstart);
        if (rb + 1 < hend) {
            if (rb[1] != ':') {
                rc = mpx__fail(MPX_EINVAL, "options.redis_url '%s': junk after IPv6 literal", shown);
                goto fail;
            }
            colon = rb + 1;
        }
    } else {
        colon = memchr(p, ':', (size_t)(hend - p));
        hlen = (size_t)((colon ? colon : hend) - p);
    }
    if (hlen == 0) {
        rc = mpx__fail(MPX_EINVAL, "options.redis_url '%s' has no host (%s)", shown, URL_FORMS);
        goto fail;
    }
    for (size_t i = 0; i < hlen; i++) {
        unsigned char ch = (unsigned char)hstart[i];
        if (!isalnum(ch) && ch != '-' && ch != '.' && ch != '_' && ch != ':') {
            rc = mpx__fail(MPX_EINVAL, "options.redis_url '%s': forbidden byte 0x%02x in the host",
                           shown, ch);
            goto fail;
        }
    }
    if (!(ep->host = malloc(hlen + 1)))
        goto nomem;
    memcpy(ep->host, hstart, hlen);
    ep->host[hlen] = 0;
    ep->port = 6379;
    if (colon) {
        size_t n = (size_t)(hend - colon - 1);
        if ((rc = check_port(colon + 1, n, "options.redis_url", "the")) != 0)
            goto fail;
        ep->port = atoi(colon + 1);
    }
    if (slash && slash[1]) {
        if (parse_db(slash + 1, strlen(slash + 1), &ep->db) != 0) {
            rc = mpx__fail(MPX_EINVAL, "options.redis_url '%s': the path must be a db number",
                           shown);
            goto fail;
        }
    }
    return 0;
nomem:
    rc = mpx__fail(MPX_ENOMEM, "out of memory");
fail:
    mpx__endpoint_free(ep);
    return rc;
}
