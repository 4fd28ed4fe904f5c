/*
 * error.c - error codes and the per-thread detailed message.
 *
 * Codes come from one X-macro table (metroplex.h). A failing call stores a
 * detailed message in thread-local storage, so concurrent callers never see
 * each other's messages; mpx_last_error() reads it.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char last_error[512];

const char *mpx_strerror(int err)
{
    switch (err) {
    case MPX_OK:
        return "success";
#define XX(name, val, msg)                                                     \
    case MPX_##name:                                                           \
        return msg;
        MPX_ERRNO_MAP(XX)
#undef XX
    default:
        return "unknown error";
    }
}

const char *mpx_err_name(int err)
{
    switch (err) {
    case MPX_OK:
        return "MPX_OK";
#define XX(name, val, msg)                                                     \
    case MPX_##name:                                                           \
        return "MPX_" #name;
        MPX_ERRNO_MAP(XX)
#undef XX
    default:
        return "MPX_EUNKNOWN";
    }
}

const char *mpx_last_error(void)
{
    return last_error;
}

int mpx__fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return err;
}

void mpx__clear_error(void)
{
    last_error[0] = '\0';
}
