/* Status codes and error messages shared by every qpk library. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "qpk/format.h"

const char *qpk_strerror(qpk_status s)
{
    switch (s) {
    case QPK_OK: return "success";
    case QPK_E_INVALID_ARG: return "invalid argument";
    case QPK_E_IO: return "I/O error";
    case QPK_E_NOMEM: return "out of memory";
    case QPK_E_CORRUPT: return "corrupt input";
    case QPK_E_UNSUPPORTED: return "unsupported input";
    case QPK_E_MISMATCH: return "inputs do not match";
    case QPK_E_CHECKSUM: return "checksum mismatch";
    case QPK_E_LIMIT: return "limit exceeded";
    case QPK_E_VALUE: return "value out of range";
    case QPK_E_CANCELLED: return "cancelled";
    case QPK_STATUS_COUNT: break;
    }
    return "unknown status";
}

qpk_status qpk_err_setf(qpk_err *e, qpk_status s, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->status = s;
    }
    return s;
}

qpk_status qpk_err_prefix(qpk_err *e, qpk_status s, const char *fmt, ...)
{
    /* s, not e->status: with e == NULL the caller still has to return the failure it got. */
    if (!e)
        return s;
    char head[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    /* Shift the old message right to make room for "head: ", truncating its tail. */
    size_t cap = sizeof e->msg, hl = strlen(head) + 2, ol = strnlen(e->msg, cap - 1);
    if (hl >= cap)
        hl = cap - 1;
    if (ol > cap - 1 - hl)
        ol = cap - 1 - hl;
    memmove(e->msg + hl, e->msg, ol);
    memcpy(e->msg, head, hl - 2);
    memcpy(e->msg + hl - 2, ": ", 2);
    e->msg[hl + ol] = 0;
    e->status = s; /* what the caller returns and what e says stay one status */
    return s;
}
