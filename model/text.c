/* A .qpk's embedded files as text. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

qpk_status qpk_read_blob(const qpk_file *f, const char *name, char **data, size_t *len, qpk_err *e)
{
    *data = NULL, *len = 0;
    for (size_t i = 0; i < qpk_n_blobs(f); i++) {
        uint64_t size;
        if (strcmp(qpk_blob_name(f, i, &size), name) != 0)
            continue;
        if (size >= SIZE_MAX || !(*data = malloc((size_t)size + 1)))
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %s", name);
        qpk_status s = qpk_blob_read(f, name, *data, (size_t)size, len, e);
        if (s != QPK_OK) {
            free(*data);
            *data = NULL;
            return s;
        }
        (*data)[*len] = 0;
        return QPK_OK;
    }
    return QPK_OK;
}
