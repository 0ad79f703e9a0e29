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
    uint64_t ne[4], nbytes, offset; /* offset: from its file's data section */
    uint32_t shard;                 /* its file of a split set (0: the only file) */
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
    /* A split set (qpk_gguf_writer_split): the limits, the path the shards are named after, and
     * the shards' temporaries, opened in turn, renamed together by finish. */
    bool split;
    uint64_t split_bytes, split_tensors;
    char *path;
    qpk_outfile **shards;
    uint32_t n_shards, open_shards;
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
    qpk_status s = (w->path = strdup(path)) ? qpk_outfile_create(&w->out, path, e)
                                            : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
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
    for (uint32_t i = 0; w->shards && i < w->open_shards; i++)
        qpk_outfile_discard(w->shards[i]);
    free(w->shards), free(w->path);
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

qpk_status qpk_gguf_writer_split(qpk_gguf_writer *w, uint64_t max_bytes, uint64_t max_tensors, qpk_err *e)
{
    if (w->started)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a GGUF split asked for after the tensor data began");
    if (!max_bytes && !max_tensors)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a GGUF split needs a size or a tensor count per shard");
    w->split = true, w->split_bytes = max_bytes, w->split_tensors = max_tensors;
    return QPK_OK;
}

/*
 * gguf-split's rule: tensors in order, a new shard when the current one holds max_tensors, or
 * when the next tensor (its size padded to the alignment, metadata not counted) would take it
 * past max_bytes. A tensor larger than max_bytes gets a shard of its own.
 */
static qpk_status plan_shards(qpk_gguf_writer *w, qpk_err *e)
{
    uint64_t acc = 0, cnt = 0;
    uint32_t k = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        gguf_tensor_decl *t = &w->t[i];
        const uint64_t padded = align_up(t->nbytes, GGUF_ALIGNMENT);
        if (cnt && ((w->split_tensors && cnt >= w->split_tensors) ||
                    (w->split_bytes && (padded > w->split_bytes || acc + padded > w->split_bytes)))) {
            if (k + 1 >= 65535)
                return qpk_err_setf(e, QPK_E_LIMIT,
                                    "a GGUF split set of more than 65535 shards (split.count is a u16)");
            k++, acc = 0, cnt = 0;
        }
        t->shard = k, t->offset = acc;
        acc += padded, cnt++;
    }
    w->n_shards = k + 1;
    return QPK_OK;
}

static qpk_status put_split_key(qpk_gguf_writer *w, const char *k, uint32_t type, uint32_t v, qpk_err *e)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    qpk_status s = put_str(w, k, strlen(k), e);
    if (s == QPK_OK)
        s = put_u32(w, type, e);
    if (s == QPK_OK)
        s = type == QPK_GGUF_U16 ? put(w, b, 2, e) : put_u32(w, v, e);
    return s;
}

/*
 * File k's header: the key-values (every one in file 0, as gguf-split puts the metadata in the
 * first shard only; then, in a split set, split.no, split.tensors.count and split.count in every
 * file), its tensor infos, padding to the data.
 */
static qpk_status write_header(qpk_gguf_writer *w, qpk_outfile *o, uint32_t k, qpk_err *e)
{
    uint64_t n_t = 0;
    for (size_t i = 0; i < w->n_t; i++)
        n_t += w->t[i].shard == k;
    uint8_t head[24];
    memcpy(head, "GGUF", 4);
    wr_u32(head + 4, 3);
    wr_u64(head + 8, n_t);
    wr_u64(head + 16, (k == 0 ? w->n_kv : 0) + (w->split ? 3 : 0));
    qpk_status s = qpk_outfile_write(o, head, sizeof head, e);
    if (s == QPK_OK && k == 0)
        s = qpk_outfile_write(o, w->kv, w->kv_len, e);
    w->kv_len = 0; /* reuse the buffer for the rest */
    if (s == QPK_OK && w->split)
        s = put_split_key(w, "split.no", QPK_GGUF_U16, k, e);
    if (s == QPK_OK && w->split) /* gguf-split's order: it sets split.count last */
        s = put_split_key(w, "split.tensors.count", QPK_GGUF_I32, (uint32_t)w->n_t, e);
    if (s == QPK_OK && w->split)
        s = put_split_key(w, "split.count", QPK_GGUF_U16, w->n_shards, e);
    for (size_t i = 0; i < w->n_t && s == QPK_OK; i++) {
        const gguf_tensor_decl *t = &w->t[i];
        if (t->shard != k)
            continue;
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
        s = qpk_outfile_write(o, w->kv, w->kv_len, e);
    w->kv_len = 0;
    if (s == QPK_OK)
        s = qpk_outfile_pad(o, GGUF_ALIGNMENT, e);
    return s;
}

/* Opens the next file of the split set (the one before it is complete: synced), with its header. */
static qpk_status open_next_shard(qpk_gguf_writer *w, qpk_err *e)
{
    const uint32_t k = w->open_shards;
    if (k > 0)
        QPK_TRY(qpk_outfile_sync(w->shards[k - 1], e));
    /* gguf-split takes its output as a prefix; qpk takes the path a single file would have and
     * names the shards after it less ".gguf": OUT.gguf -> OUT-00001-of-0000N.gguf. */
    size_t n = strlen(w->path);
    char *prefix = strdup(w->path);
    if (!prefix)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (n > 5 && !strcmp(prefix + n - 5, ".gguf"))
        prefix[n - 5] = 0;
    char *name = qpk_gguf_split_path(prefix, k, w->n_shards);
    free(prefix);
    if (!name)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status s = qpk_outfile_create(&w->shards[k], name, e);
    free(name);
    if (s != QPK_OK)
        return s;
    w->open_shards++;
    return write_header(w, w->shards[k], k, e);
}

static qpk_status start(qpk_gguf_writer *w, qpk_err *e)
{
    w->started = true;
    if (!w->split)
        return write_header(w, w->out, 0, e);
    QPK_TRY(plan_shards(w, e));
    qpk_outfile_discard(w->out); /* nothing is written at the single file's path */
    w->out = NULL;
    if (!(w->shards = calloc(w->n_shards, sizeof *w->shards)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    return open_next_shard(w, e);
}

/* The file tensor t's data goes to (opening the shards up to its own). */
static qpk_status file_of(qpk_gguf_writer *w, const gguf_tensor_decl *t, qpk_outfile **o, qpk_err *e)
{
    while (w->split && t->shard >= w->open_shards)
        QPK_TRY(open_next_shard(w, e));
    *o = w->split ? w->shards[t->shard] : w->out;
    return QPK_OK;
}

qpk_status qpk_gguf_write(qpk_gguf_writer *w, const void *data, size_t n, qpk_err *e)
{
    qpk_status s = w->started ? QPK_OK : start(w, e);
    const uint8_t *p = data;
    while (s == QPK_OK && n > 0) {
        if (w->cur == w->n_t)
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "more GGUF tensor data than declared");
        gguf_tensor_decl *t = &w->t[w->cur];
        qpk_outfile *o;
        QPK_TRY(file_of(w, t, &o, e));
        uint64_t room = t->nbytes - w->cur_done;
        size_t k = n < room ? n : (size_t)room;
        s = qpk_outfile_write(o, p, k, e);
        p += k, n -= k, w->cur_done += k;
        if (s == QPK_OK && w->cur_done == t->nbytes) {
            w->cur++, w->cur_done = 0;
            s = qpk_outfile_pad(o, GGUF_ALIGNMENT, e);
        }
    }
    return s;
}

/* A split set: every shard complete and synced first, then renamed into place one after the other. */
static qpk_status commit_shards(qpk_gguf_writer *w, qpk_err *e)
{
    qpk_status s = QPK_OK;
    while (s == QPK_OK && w->open_shards < w->n_shards)
        s = open_next_shard(w, e);
    for (uint32_t i = 0; i < w->n_shards && s == QPK_OK; i++)
        s = qpk_outfile_sync(w->shards[i], e);
    for (uint32_t i = 0; i < w->n_shards && s == QPK_OK; i++) {
        s = qpk_outfile_commit(w->shards[i], e);
        w->shards[i] = NULL;
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
    if (s == QPK_OK && w->split)
        s = commit_shards(w, e);
    else if (s == QPK_OK) {
        s = qpk_outfile_commit(w->out, e);
        w->out = NULL;
    }
    qpk_gguf_writer_discard(w);
    return s;
}
