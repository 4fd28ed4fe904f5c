/*
 * omega.c - cross-server messages in the omega-supreme format: options,
 * create/destroy, and the receiving side (mpx_omega_check/handle).
 *
 * JSON is validated with jansson (strict RFC 8259 parser: no comments, no
 * trailing commas, UTF-8 checked, surrogate pairs decoded). The message is
 * never re-serialised: after jansson accepted the body, a small scanner
 * (which may assume valid JSON) finds the byte span of the top-level "msg"
 * member in the received text, and that span is what the deliver callbacks
 * get. So integers beyond 64 bits and any Unicode reach them unchanged.
 * jansson decodes integers as doubles here (JSON_DECODE_INT_AS_REAL) only so
 * that big integers validate; their values are never used.
 *
 * Sending lives in omega_send.c, the built-in listener in omega_listen.c.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "omega_internal.h"

#define JSON_FLAGS (JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL)

/* The original's replies, byte for byte. */
static const char REPLY_401[] =
    "{\"ok\":false,\"reason\":\"I am programmed to protect, and sacrifice if necessary. "
    "Feel the power of my lazers! Pew pew!\"}";
static const char REPLY_500[] = "{ \"ok\": false, \"reason\": \"invalid data structure\" }";
/* Ours (the original has no limit). */
static const char REPLY_413[] = "{\"ok\":false,\"reason\":\"message too large\"}";

/* ---- JSON helpers ---------------------------------------------------------- */

int mpx__json_check(const char *text, size_t len, const char *what)
{
    json_error_t e;
    json_t *v = json_loadb(text, len, JSON_FLAGS, &e);
    if (!v)
        return mpx__fail(MPX_EINVAL, "%s is not valid JSON: %s (line %d, column %d)", what,
                         e.text, e.line, e.column);
    json_decref(v);
    return 0;
}

static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned min;
        if ((c & 0xE0) == 0xC0) {
            k = 1;
            min = 0x80;
            c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2;
            min = 0x800;
            c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3;
            min = 0x10000;
            c &= 0x07;
        } else {
            return false;
        }
        if (i + k >= n)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
            c = (c << 6) | (s[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

int mpx__json_append_string(mpx__buf_t *b, const char *s, size_t n)
{
    if (!utf8_valid((const unsigned char *)s, n))
        return MPX_EINVAL;
    if (mpx__buf_reserve(b, n + 2))
        return MPX_ENOMEM;
    b->data[b->len++] = '"';
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (mpx__buf_append(b, s + start, i - start))
            return MPX_ENOMEM;
        char esc[8];
        int k;
        if (c == '"' || c == '\\')
            k = snprintf(esc, sizeof esc, "\\%c", c);
        else
            k = snprintf(esc, sizeof esc, "\\u%04x", c);
        if (mpx__buf_append(b, esc, (size_t)k))
            return MPX_ENOMEM;
        start = i + 1;
    }
    if (mpx__buf_append(b, s + start, n - start) || mpx__buf_append(b, "\"", 1))
        return MPX_ENOMEM;
    return 0;
}

/* ---- the span scanner (input already validated by jansson) ---------------- */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at '"': returns the position after the closing quote. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return end;
}

static const char *skip_value(const char *p, const char *end)
{
    if (p >= end)
        return end;
    if (*p == '"')
        return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            char c = *p;
            if (c == '"') {
                p = skip_string(p, end);
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return end;
    }
    /* number, true, false, null */
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' &&
           *p != '\n' && *p != '\r')
        p++;
    return p;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Does the raw (escaped) key raw[0..n) decode to the ASCII string `want`? */
static bool key_is(const char *raw, size_t n, const char *want)
{
    size_t i = 0, w = 0, wn = strlen(want);
    while (i < n) {
        unsigned c = (unsigned char)raw[i++];
        if (c == '\\' && i < n) {
            char e = raw[i++];
            switch (e) {
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                if (i + 4 > n)
                    return false;
                c = 0;
                for (int k = 0; k < 4; k++)
                    c = (c << 4) | (unsigned)hexval(raw[i + k]);
                i += 4;
                break;
            default: c = (unsigned char)e; break;
            }
        }
        if (w >= wn || c != (unsigned char)want[w])
            return false;
        w++;
    }
    return w == wn;
}

/* The span of the last top-level member `key` of the object in text. */
static bool member_span(const char *text, size_t len, const char *key, const char **vs,
                        size_t *vn)
{
    const char *p = text, *end = text + len;
    bool found = false;
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return false;
    p = skip_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *ks = p + 1;
        p = skip_string(p, end);
        size_t kn = (size_t)(p - 1 - ks);
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            break;
        p = skip_ws(p + 1, end);
        const char *v = p;
        p = skip_value(p, end);
        if (key_is(ks, kn, key)) {
            *vs = v;
            *vn = (size_t)(p - v);
            found = true;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',')
            p = skip_ws(p + 1, end);
        else
            break;
    }
    return found;
}

/* ---- options, create, destroy ---------------------------------------------- */

void mpx_omega_options_init(mpx_omega_options_t *opts)
{
    if (!opts)
        return;
    mpx_omega_options_t d = MPX_OMEGA_OPTIONS_INIT;
    *opts = d;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static char *base64(const unsigned char *in, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = tbl[(v >> 6) & 63];
        *o++ = tbl[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = 0;
    return out;
}

static void free_omega(mpx_omega_t *om)
{
    free(om->method);
    free(om->path);
    free(om->username);
    free(om->password);
    free(om->auth);
    free(om->auth_header);
    pthread_mutex_destroy(&om->listen_mu);
    free(om);
}

static int check_options(const mpx_omega_options_t *in, mpx_omega_options_t *o)
{
    mpx_omega_options_init(o);
    if (!in)
        return 0;
    if (in->struct_size < offsetof(mpx_omega_options_t, deliver_data) + sizeof(void *) ||
        in->struct_size > sizeof *o)
        return mpx__fail(MPX_EINVAL, "omega options.struct_size (%zu) is not "
                         "sizeof(mpx_omega_options_t) (%zu): initialise with "
                         "mpx_omega_options_init()", in->struct_size, sizeof *o);
    memcpy(o, in, in->struct_size);
    o->struct_size = sizeof *o;
    if (o->method) {
        size_t n = strlen(o->method);
        if (n < 1 || n > 16)
            return mpx__fail(MPX_EINVAL, "omega options.method must be 1..16 letters");
        for (size_t i = 0; i < n; i++)
            if (!((o->method[i] >= 'A' && o->method[i] <= 'Z') ||
                  (o->method[i] >= 'a' && o->method[i] <= 'z')))
                return mpx__fail(MPX_EINVAL, "omega options.method must be letters only");
    }
    if (o->path) {
        size_t n = strlen(o->path);
        if (n < 1 || o->path[0] != '/' || n > 1024)
            return mpx__fail(MPX_EINVAL, "omega options.path must start with '/' (1..1024 bytes)");
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)o->path[i] <= 0x20 || o->path[i] == 0x7f || o->path[i] == '?' ||
                o->path[i] == '#')
                return mpx__fail(MPX_EINVAL, "omega options.path: no spaces, controls, '?' or '#'");
    }
    if (o->username && strchr(o->username, ':'))
        return mpx__fail(MPX_EINVAL, "omega options.username must not contain ':'");
    for (const char *s = o->username; s && *s; s++)
        if ((unsigned char)*s < 0x20)
            return mpx__fail(MPX_EINVAL, "omega options.username: no control characters");
    for (const char *s = o->password; s && *s; s++)
        if ((unsigned char)*s < 0x20)
            return mpx__fail(MPX_EINVAL, "omega options.password: no control characters");
    if (o->concurrency < 1 || o->concurrency > 10000)
        return mpx__fail(MPX_EINVAL, "omega options.concurrency (%u) must be 1..10000",
                         o->concurrency);
    if (o->connect_timeout_ms < 1 || o->connect_timeout_ms > 600000)
        return mpx__fail(MPX_EINVAL, "omega options.connect_timeout_ms (%u) must be 1..600000",
                         o->connect_timeout_ms);
    if (o->request_timeout_ms < 1 || o->request_timeout_ms > 600000)
        return mpx__fail(MPX_EINVAL, "omega options.request_timeout_ms (%u) must be 1..600000",
                         o->request_timeout_ms);
    if (o->body_max < 64 || o->body_max > ((size_t)1 << 30))
        return mpx__fail(MPX_EINVAL, "omega options.body_max (%zu) must be 64..1073741824",
                         o->body_max);
    return 0;
}

int mpx_omega_create(mpx_t *mpx, const mpx_omega_options_t *opts, mpx_omega_t **out)
{
    mpx__clear_error();
    if (!out)
        return mpx__fail(MPX_EINVAL, "mpx_omega_create: out must not be NULL");
    *out = NULL;
    mpx_omega_options_t o;
    int rc = check_options(opts, &o);
    if (rc)
        return rc;
    mpx_omega_t *om = calloc(1, sizeof *om);
    if (!om)
        return mpx__fail(MPX_ENOMEM, "out of memory");
    pthread_mutex_init(&om->listen_mu, NULL);
    om->mpx = mpx;
    om->opt = o;
    om->method = dup_str(o.method ? o.method : "PUT");
    om->path = dup_str(o.path ? o.path : "/primus/omega/supreme");
    om->username = dup_str(o.username ? o.username : "omega");
    om->password = dup_str(o.password ? o.password : "supreme");
    if (!om->method || !om->path || !om->username || !om->password) {
        free_omega(om);
        return mpx__fail(MPX_ENOMEM, "out of memory");
    }
    for (char *p = om->method; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    om->opt.method = om->method;
    om->opt.path = om->path;
    om->opt.username = om->username;
    om->opt.password = om->password;
    size_t un = strlen(om->username), pn = strlen(om->password);
    char *cred = malloc(un + pn + 2);
    char *b64 = NULL;
    if (cred) {
        memcpy(cred, om->username, un);
        cred[un] = ':';
        memcpy(cred + un + 1, om->password, pn + 1);
        b64 = base64((const unsigned char *)cred, un + pn + 1);
        free(cred);
    }
    if (b64) {
        size_t bn = strlen(b64);
        om->auth = malloc(bn + 7);
        om->auth_header = malloc(bn + 22);
        if (om->auth && om->auth_header) {
            snprintf(om->auth, bn + 7, "Basic %s", b64);
            snprintf(om->auth_header, bn + 22, "Authorization: Basic %s", b64);
            om->auth_len = bn + 6;
        }
        free(b64);
    }
    if (!om->auth || !om->auth_header) {
        free_omega(om);
        return mpx__fail(MPX_ENOMEM, "out of memory");
    }
    if ((rc = mpx__omega_sender_start(om)) != 0) {
        free_omega(om);
        return rc;
    }
    *out = om;
    return 0;
}

void mpx_omega_destroy(mpx_omega_t *om)
{
    if (!om)
        return;
    mpx__omega_listen_stop(om);
    mpx__omega_sender_stop(om);
    free_omega(om);
}

/* ---- receiving ----------------------------------------------------------------- */

static int reply(mpx_omega_reply_t *r, int status, const char *body, size_t n)
{
    r->status = status;
    if (n >= sizeof r->body)
        n = sizeof r->body - 1;
    memcpy(r->body, body, n);
    r->body[n] = 0;
    r->len = n;
    return status;
}

/* Constant-time (in the secret) comparison of the Authorization header. */
static bool auth_ok(const mpx_omega_t *om, const char *given)
{
    size_t gn = strlen(given), n = om->auth_len;
    unsigned diff = gn != n;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned)(unsigned char)om->auth[i] ^
                (unsigned)(unsigned char)(i < gn ? given[i] : 0);
    return diff == 0;
}

int mpx_omega_check(mpx_omega_t *om, const char *method, const char *path,
                    const char *authorization, long long content_length,
                    mpx_omega_reply_t *r)
{
    if (!r)
        return 0;
    r->status = 0;
    r->len = 0;
    r->body[0] = 0;
    if (!om || !method || !path)
        return 0;
    /* As the original: wrong URL, no Authorization or wrong method: next(). */
    if (strcmp(path, om->path) != 0 || !authorization || !authorization[0] ||
        strcmp(method, om->method) != 0)
        return 0;
    if (!auth_ok(om, authorization))
        return reply(r, 401, REPLY_401, sizeof REPLY_401 - 1);
    if (content_length >= 0 && (unsigned long long)content_length > om->opt.body_max)
        return reply(r, 413, REPLY_413, sizeof REPLY_413 - 1);
    return 0;
}

int mpx_omega_handle(mpx_omega_t *om, const char *method, const char *path,
                     const char *authorization, const void *body, size_t body_len,
                     mpx_omega_reply_t *r)
{
    if (!r)
        return 0;
    int st = mpx_omega_check(om, method, path, authorization, (long long)body_len, r);
    if (st || !om || !method || !path || !authorization || strcmp(path, om->path) != 0 ||
        strcmp(method, om->method) != 0 || !authorization[0])
        return st;
    const char *text = body ? body : "";
    json_error_t e;
    json_t *root = json_loadb(text, body_len, JSON_FLAGS, &e);
    const char *ms = NULL;
    size_t mn = 0;
    if (!root || !json_is_object(root) || !json_object_get(root, "msg") ||
        !member_span(text, body_len, "msg", &ms, &mn)) {
        json_decref(root);
        return reply(r, 500, REPLY_500, sizeof REPLY_500 - 1);
    }
    char *msg = malloc(mn + 1);
    if (!msg) {
        json_decref(root);
        return reply(r, 500, REPLY_500, sizeof REPLY_500 - 1);
    }
    memcpy(msg, ms, mn);
    msg[mn] = 0;
    uint64_t sent = 0;
    json_t *sp = json_object_get(root, "sparks");
    mpx_omega_deliver_cb deliver = om->opt.deliver;
    void *data = om->opt.deliver_data;
    if (json_is_array(sp)) {
        size_t i;
        json_t *v;
        json_array_foreach(sp, i, v)
        {
            if (json_is_string(v) && deliver &&
                deliver(om, json_string_value(v), json_string_length(v), msg, mn, data) > 0)
                sent++;
        }
    } else if (json_is_string(sp) && json_string_length(sp) > 0) {
        if (deliver && deliver(om, json_string_value(sp), json_string_length(sp), msg, mn, data) > 0)
            sent++;
    } else if (om->opt.deliver_all) {
        sent = om->opt.deliver_all(om, msg, mn, data);
    }
    free(msg);
    json_decref(root);
    char buf[64];
    int k = snprintf(buf, sizeof buf, "{ \"ok\": true, \"send\":%llu }", (unsigned long long)sent);
    return reply(r, 200, buf, (size_t)k);
}
