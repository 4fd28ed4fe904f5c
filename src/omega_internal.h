/*
 * omega_internal.h - shared by omega.c (options, receiving), omega_send.c
 * (the sending thread) and omega_listen.c (the built-in listener).
 */
#ifndef MPX_OMEGA_INTERNAL_H
#define MPX_OMEGA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "internal.h"

typedef struct mpx__omega_sender mpx__omega_sender_t;

struct mpx_omega {
    mpx_t *mpx;
    mpx_omega_options_t opt; /* strings point into the copies below */
    char *method, *path, *username, *password;
    char *auth;              /* "Basic base64(user:pass)" */
    size_t auth_len;
    char *auth_header;       /* "Authorization: Basic ..." */
    mpx__omega_sender_t *sender;
    /* listener (omega_listen.c) */
    pthread_mutex_t listen_mu;
    void *mhd;               /* struct MHD_Daemon * */
    _Atomic uint16_t port;
};

/* JSON (jansson): is text[0..len) one valid JSON value? 0 or MPX_EINVAL with
 * the message set. */
int mpx__json_check(const char *text, size_t len, const char *what);
/* Append id as a JSON string ("..." with escapes). MPX_EINVAL if it is not
 * valid UTF-8, MPX_ENOMEM. */
int mpx__json_append_string(mpx__buf_t *b, const char *s, size_t n);

int mpx__omega_sender_start(mpx_omega_t *om);
void mpx__omega_sender_stop(mpx_omega_t *om);
void mpx__omega_listen_stop(mpx_omega_t *om);

#endif
