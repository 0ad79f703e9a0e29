/*
 * GGUF writer. Key-values are serialized as they come; tensors are declared first
 * (so every offset is known), then their data streams through. The file is built
 * like every qpk output: in a temporary, fsync'd and renamed into place at the end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk/gguf.h"

#define GGUF_ALIGNMENT 32 /* written explicitly as general.alignment */

typedef struct gguf_tensor_decl {
    char name[65];
    uint32_t type;
    int n_dims;
    uint64_t ne[4], nbytes, offset;
} gguf_tensor_decl;

struct qpk_gguf_writer {
    qpk_outfile *out;
    uint8_t *kv; /* serialized key-values */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    gguf_tensor_decl *t;
    size_t n_t, cap_t;
    bool started;      /* the header is out: no more declarations */
    size_t cur;        /* tensor being written */
    uint64_t cur_done; /* its bytes so far */
};

static qpk_status put(qpk_gguf_writer *w, const void *p, size_t n, qpk_err *e)
{
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 1 << 16;
        while (cap < w->kv_len + n)
            cap *= 2;
        uint8_t *b = realloc(w->kv, cap);
        if (!b)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for GGUF metadata");
        w->kv = b, w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return QPK_OK;
}

static qpk_status put_u32(qpk_gguf_writer *w, uint32_t v, qpk_err *e)
{
    uint8_t b[4];
    wr_u32(b, v);
    return put(w, b, 4, e);
}

static qpk_status put_u64(qpk_gguf_writer *w, uint64_t v, qpk_err *e)
{
    uint8_t b[8];
    wr_u64(b, v);
    return put(w, b, 8, e);
}

static qpk_status put_str(qpk_gguf_writer *w, const char *s, size_t n, qpk_err *e)
{
    qpk_status st = put_u64(w, n, e);
    return st != QPK_OK ? st : put(w, s, n, e);
}

static qpk_status key(qpk_gguf_writer *w, const char *k, uint32_t type, qpk_err *e)
{
    if (w->started)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GGUF key '%s' after the tensor data began", k);
    size_t n = strlen(k);
    if (n == 0 || n > 65535)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "bad GGUF key '%.64s'", k);
    qpk_status s = put_str(w, k, n, e);
    if (s == QPK_OK)
        s = put_u32(w, type, e);
    w->n_kv += s == QPK_OK;
    return s;
}

qpk_status qpk_gguf_writer_create(qpk_gguf_writer **out, const char *path, qpk_err *e)
{
    *out = NULL;
    qpk_gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status s = qpk_outfile_create(&w->out, path, e);
    if (s == QPK_OK)
        s = qpk_gguf_kv_u32(w, "general.alignment", GGUF_ALIGNMENT, e);
    if (s != QPK_OK) {
        qpk_gguf_writer_discard(w);
        return s;
    }
    *out = w;
    return QPK_OK;
}

void qpk_gguf_writer_discard(qpk_gguf_writer *w)
{
    if (!w)
        return;
    qpk_outfile_discard(w->out);
    free(w->kv);
    free(w->t);
    free(w);
}

qpk_status qpk_gguf_kv_string(qpk_gguf_writer *w, const char *k, const char *s, size_t len, qpk_err *e)
{
    qpk_status st = key(w, k, QPK_GGUF_STRING, e);
    return st != QPK_OK ? st : put_str(w, s, len, e);
}

qpk_status qpk_gguf_kv_u32(qpk_gguf_writer *w, const char *k, uint32_t v, qpk_err *e)
{
    qpk_status st = key(w, k, QPK_GGUF_U32, e);
    return st != QPK_OK ? st : put_u32(w, v, e);
}

qpk_status qpk_gguf_kv_u64(qpk_gguf_writer *w, const char *k, uint64_t v, qpk_err *e)
{
    qpk_status st = key(w, k, QPK_GGUF_U64, e);
    return st != QPK_OK ? st : put_u64(w, v, e);
}

qpk_status qpk_gguf_kv_f32(qpk_gguf_writer *w, const char *k, float v, qpk_err *e)
{
    uint32_t bits;
    memcpy(&bits, &v, 4);
    qpk_status st = key(w, k, QPK_GGUF_F32, e);
    return st != QPK_OK ? st : put_u32(w, bits, e);
}

qpk_status qpk_gguf_kv_bool(qpk_gguf_writer *w, const char *k, bool v, qpk_err *e)
{
    uint8_t b = v;
    qpk_status st = key(w, k, QPK_GGUF_BOOL, e);
    return st != QPK_OK ? st : put(w, &b, 1, e);
}

qpk_status qpk_gguf_kv_i32_array(qpk_gguf_writer *w, const char *k, const int32_t *v, uint64_t n, qpk_err *e)
{
    qpk_status st = key(w, k, QPK_GGUF_ARRAY, e);
    if (st == QPK_OK)
        st = put_u32(w, QPK_GGUF_I32, e);
    if (st == QPK_OK)
        st = put_u64(w, n, e);
    for (uint64_t i = 0; i < n && st == QPK_OK; i++)
        st = put_u32(w, (uint32_t)v[i], e);
    return st;
}

qpk_status qpk_gguf_kv_string_array(qpk_gguf_writer *w, const char *k, uint64_t n,
                                    const char *(*get)(void *ud, uint64_t i, size_t *len), void *ud, qpk_err *e)
{
    qpk_status st = key(w, k, QPK_GGUF_ARRAY, e);
    if (st == QPK_OK)
        st = put_u32(w, QPK_GGUF_STRING, e);
    if (st == QPK_OK)
        st = put_u64(w, n, e);
    for (uint64_t i = 0; i < n && st == QPK_OK; i++) {
        size_t len;
        const char *s = get(ud, i, &len);
        st = put_str(w, s, len, e);
    }
    return st;
}

qpk_status qpk_gguf_add_tensor(qpk_gguf_writer *w, const char *name, uint32_t type, int n_dims, const uint64_t *ne,
                               qpk_err *e)
{
    if (w->started)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GGUF tensor '%s' declared after the data began", name);
    if (strlen(name) == 0 || strlen(name) > 64)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GGUF tensor name '%.80s' is not 1..64 bytes", name);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 256;
        gguf_tensor_decl *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        w->t = t, w->cap_t = cap;
    }
    gguf_tensor_decl *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type, t->n_dims = n_dims;
    for (int d = 0; d < n_dims && d < 4; d++)
        t->ne[d] = ne[d];
    qpk_status s = qpk_ggml_nbytes(type, n_dims, t->ne, &t->nbytes, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, s, "GGUF tensor '%s'", name);
    t->offset = w->n_t ? align_up(w->t[w->n_t - 1].offset + w->t[w->n_t - 1].nbytes, GGUF_ALIGNMENT) : 0;
    w->n_t++;
    return QPK_OK;
}

/* Header, key-values and tensor infos, then padding to the data. */
static qpk_status start(qpk_gguf_writer *w, qpk_err *e)
{
    uint8_t head[24];
    memcpy(head, "GGUF", 4);
    wr_u32(head + 4, 3);
    wr_u64(head + 8, w->n_t);
    wr_u64(head + 16, w->n_kv);
    qpk_status s = qpk_outfile_write(w->out, head, sizeof head, e);
    if (s == QPK_OK)
        s = qpk_outfile_write(w->out, w->kv, w->kv_len, e);
    w->kv_len = 0; /* reuse the buffer for the tensor infos */
    for (size_t i = 0; i < w->n_t && s == QPK_OK; i++) {
        const gguf_tensor_decl *t = &w->t[i];
        s = put_str(w, t->name, strlen(t->name), e);
        if (s == QPK_OK)
            s = put_u32(w, (uint32_t)t->n_dims, e);
        for (int d = 0; d < t->n_dims && s == QPK_OK; d++)
            s = put_u64(w, t->ne[d], e);
        if (s == QPK_OK)
            s = put_u32(w, t->type, e);
        if (s == QPK_OK)
            s = put_u64(w, t->offset, e);
    }
    if (s == QPK_OK)
        s = qpk_outfile_write(w->out, w->kv, w->kv_len, e);
    if (s == QPK_OK)
        s = qpk_outfile_pad(w->out, GGUF_ALIGNMENT, e);
    w->started = true;
    return s;
}

qpk_status qpk_gguf_write(qpk_gguf_writer *w, const void *data, size_t n, qpk_err *e)
{
    qpk_status s = w->started ? QPK_OK : start(w, e);
    const uint8_t *p = data;
    while (s == QPK_OK && n > 0) {
        if (w->cur == w->n_t)
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "more GGUF tensor data than declared");
        gguf_tensor_decl *t = &w->t[w->cur];
        uint64_t room = t->nbytes - w->cur_done;
        size_t k = n < room ? n : (size_t)room;
        s = qpk_outfile_write(w->out, p, k, e);
        p += k, n -= k, w->cur_done += k;
        if (s == QPK_OK && w->cur_done == t->nbytes) {
            w->cur++, w->cur_done = 0;
            s = qpk_outfile_pad(w->out, GGUF_ALIGNMENT, e);
        }
    }
    return s;
}

qpk_status qpk_gguf_finish(qpk_gguf_writer *w, qpk_err *e)
{
    qpk_status s = w->started ? QPK_OK : start(w, e);
    while (s == QPK_OK && w->cur < w->n_t && w->t[w->cur].nbytes == 0)
        w->cur++; /* empty tensors need no data */
    if (s == QPK_OK && (w->cur != w->n_t || w->cur_done))
        s = qpk_err_setf(e, QPK_E_INVALID_ARG, "GGUF tensor '%s' is missing data",
                         w->cur < w->n_t ? w->t[w->cur].name : "?");
    if (s == QPK_OK) {
        s = qpk_outfile_commit(w->out, e);
        w->out = NULL;
    }
    qpk_gguf_writer_discard(w);
    return s;
}
