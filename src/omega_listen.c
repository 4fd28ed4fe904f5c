/*
 * omega_listen.c - the optional built-in listener: libmicrohttpd serving
 * mpx_omega_handle() with its own threads.
 *
 * Per request: on the first call (headers only) mpx_omega_check() decides
 * whether to read the body (a wrong path, missing credentials, bad
 * credentials or a too large Content-Length are answered at once); the body
 * is collected up to body_max, then mpx_omega_handle() answers.
 */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "omega_internal.h"

#define LISTEN_THREADS 2

static const char REPLY_404[] = "{\"ok\":false,\"reason\":\"not found\"}";
static const char REPLY_401_MISSING[] =
    "{\"ok\":false,\"reason\":\"I am programmed to protect, and sacrifice if necessary. "
    "Feel the power of my lazers! Pew pew!\"}";

typedef struct conn_state {
    mpx__buf_t body;
    bool too_big;
} conn_state_t;

static enum MHD_Result respond(struct MHD_Connection *c, int status, const char *body, size_t n)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(n, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    mpx_omega_t *om = cls;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    mpx_omega_reply_t rep;
    conn_state_t *st = *con_cls;
    if (!st) {
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        long long len = cl ? strtoll(cl, NULL, 10) : -1;
        int status = mpx_omega_check(om, method, url, auth, len, &rep);
        if (status)
            return respond(c, status, rep.body, rep.len);
        if (strcmp(url, om->path) != 0 || strcmp(method, om->method) != 0)
            return respond(c, 404, REPLY_404, sizeof REPLY_404 - 1);
        if (!auth || !auth[0])
            return respond(c, 401, REPLY_401_MISSING, sizeof REPLY_401_MISSING - 1);
        if (!(st = calloc(1, sizeof *st)))
            return MHD_NO;
        *con_cls = st;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (!st->too_big) {
            if (st->body.len + *upload_data_size > om->opt.body_max ||
                mpx__buf_append(&st->body, upload_data, *upload_data_size))
                st->too_big = true;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (st->too_big) /* body_max + 1 bytes: mpx_omega_handle answers 413 */
        mpx_omega_handle(om, method, url, auth, NULL, om->opt.body_max + 1, &rep);
    else
        mpx_omega_handle(om, method, url, auth, st->body.data, st->body.len, &rep);
    if (rep.status == 0)
        return respond(c, 404, REPLY_404, sizeof REPLY_404 - 1);
    return respond(c, rep.status, rep.body, rep.len);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    conn_state_t *st = *con_cls;
    if (st) {
        mpx__buf_free(&st->body);
        free(st);
        *con_cls = NULL;
    }
}

int mpx_omega_listen(mpx_omega_t *om, const char *host, uint16_t port)
{
    mpx__clear_error();
    if (!om)
        return mpx__fail(MPX_EINVAL, "mpx_omega_listen: NULL messenger");
    if (!host)
        host = "0.0.0.0";
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        flags |= MHD_USE_IPv6;
    } else {
        return mpx__fail(MPX_EINVAL, "mpx_omega_listen: host \"%s\" is not a numeric IPv4 or "
                         "IPv6 address", host);
    }
    pthread_mutex_lock(&om->listen_mu);
    if (om->mhd) {
        pthread_mutex_unlock(&om->listen_mu);
        return mpx__fail(MPX_ESTATE, "mpx_omega_listen: already listening");
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, port, NULL, NULL, on_request, om, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)LISTEN_THREADS, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
        MHD_OPTION_END);
    if (!d) {
        pthread_mutex_unlock(&om->listen_mu);
        return mpx__fail(MPX_EADDRINUSE, "mpx_omega_listen: cannot listen on %s port %u",
                         host, (unsigned)port);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    om->mhd = d;
    atomic_store(&om->port, info ? info->port : port);
    pthread_mutex_unlock(&om->listen_mu);
    return 0;
}

uint16_t mpx_omega_listen_port(mpx_omega_t *om)
{
    return om ? atomic_load(&om->port) : 0;
}

void mpx__omega_listen_stop(mpx_omega_t *om)
{
    pthread_mutex_lock(&om->listen_mu);
    if (om->mhd) {
        MHD_stop_daemon(om->mhd);
        om->mhd = NULL;
        atomic_store(&om->port, 0);
    }
    pthread_mutex_unlock(&om->listen_mu);
}
