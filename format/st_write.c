/*
 * Writing safetensors: one file, or shards with their index as transformers saves them
 * (model-0000i-of-0000N.safetensors, model.safetensors.index.json with total_size and
 * weight_map). Header entries list dtype, shape, data_offsets as the safetensors
 * library serializes them; headers carry {"__metadata__": {"format": "pt"}} and are padded with
 * spaces to a multiple of 8 bytes; tensors tile each data area in the order given. Data
 * stream in: a shard's file is created when its first byte arrives, each appears
 * atomically, and nothing is held but a write buffer.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qpk/safetensors.h"
#include "qpk_private.h"

struct qpk_st_set {
    char *dir;
    qpk_st_entry *t;
    size_t n, cur;         /* the tensor whose bytes come next */
    uint64_t cur_left;     /* its bytes still to come */
    int n_shards, open_shard;
    qpk_outfile *o;        /* the shard being written */
    char format[16];       /* __metadata__'s format */
};

void qpk_st_set_format(qpk_st_set *s, const char *format)
{
    snprintf(s->format, sizeof s->format, "%s", format);
}

static void shard_file(char *buf, size_t cap, int i, int n)
{
    if (n == 1)
        snprintf(buf, cap, "model.safetensors");
    else
        snprintf(buf, cap, "model-%05d-of-%05d.safetensors", i + 1, n);
}

void qpk_st_assign_shards(qpk_st_entry *t, size_t n, uint64_t max_bytes)
{
    uint64_t acc = 0;
    int shard = 0;
    for (size_t i = 0; i < n; i++) {
        if (acc > 0 && acc + t[i].nbytes > max_bytes) /* a tensor larger than the limit gets a shard of its own */
            shard++, acc = 0;
        t[i].shard = shard;
        acc += t[i].nbytes;
    }
}

qpk_status qpk_st_set_create(qpk_st_set **out, const char *dir, const qpk_st_entry *t, size_t n, qpk_err *e)
{
    *out = NULL;
    qpk_st_set *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir)) || !(s->t = malloc((n ? n : 1) * sizeof *s->t))) {
        qpk_st_set_discard(s);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    memcpy(s->t, t, n * sizeof *t);
    s->n = n, s->open_shard = -1;
    qpk_st_set_format(s, "pt");
    for (size_t i = 0; i < n; i++) {
        if (i && (t[i].shard < t[i - 1].shard || t[i].shard > t[i - 1].shard + 1)) {
            qpk_st_set_discard(s);
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "shards must follow one another");
        }
        s->n_shards = t[i].shard + 1;
    }
    s->cur_left = n ? t[0].nbytes : 0;
    *out = s;
    return QPK_OK;
}

void qpk_st_set_discard(qpk_st_set *s)
{
    if (!s)
        return;
    qpk_outfile_discard(s->o);
    free(s->dir), free(s->t), free(s);
}

/* Opens shard k: its header, from every tensor it holds. */
static qpk_status open_shard(qpk_st_set *s, int k, qpk_err *e)
{
    cJSON *h = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(h, "__metadata__"), "format", s->format);
    uint64_t off = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->t[i].shard != k)
            continue;
        cJSON *o = cJSON_AddObjectToObject(h, s->t[i].name);
        cJSON_AddStringToObject(o, "dtype", qpk_st_dtype_name(s->t[i].dtype));
        cJSON *shape = cJSON_AddArrayToObject(o, "shape"), *offs = cJSON_AddArrayToObject(o, "data_offsets");
        for (int d = 0; d < s->t[i].ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)s->t[i].shape[d]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += s->t[i].nbytes;
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
    }
    char *json = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!json)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    size_t jl = strlen(json), padded = (jl + 7) & ~(size_t)7;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    char name[64], *path = malloc(strlen(s->dir) + sizeof name + 2);
    shard_file(name, sizeof name, k, s->n_shards);
    if (path)
        sprintf(path, "%s/%s", s->dir, name);
    qpk_status st = path ? qpk_outfile_create(&s->o, path, e) : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (st == QPK_OK)
        st = qpk_outfile_write(s->o, len8, 8, e);
    if (st == QPK_OK)
        st = qpk_outfile_write(s->o, json, jl, e);
    for (size_t i = jl; st == QPK_OK && i < padded; i++)
        st = qpk_outfile_write(s->o, " ", 1, e);
    free(json), free(path);
    s->open_shard = k;
    return st;
}

static qpk_status close_shard(qpk_st_set *s, qpk_err *e)
{
    qpk_outfile *o = s->o;
    s->o = NULL;
    return o ? qpk_outfile_commit(o, e) : QPK_OK;
}

qpk_status qpk_st_set_write(qpk_st_set *s, const void *data, size_t n, qpk_err *e)
{
    const uint8_t *p = data;
    while (n > 0) {
        while (s->cur < s->n && s->cur_left == 0) /* empty tensors, and the one just completed */
            if (++s->cur < s->n)
                s->cur_left = s->t[s->cur].nbytes;
        if (s->cur >= s->n)
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "safetensors data past the declared tensors");
        if (s->t[s->cur].shard != s->open_shard) {
            QPK_TRY(close_shard(s, e));
            QPK_TRY(open_shard(s, s->t[s->cur].shard, e));
        }
        size_t k = n < s->cur_left ? n : (size_t)s->cur_left;
        QPK_TRY(qpk_outfile_write(s->o, p, k, e));
        p += k, n -= k, s->cur_left -= k;
    }
    return QPK_OK;
}

static qpk_status write_index(const qpk_st_set *s, qpk_err *e)
{
    cJSON *root = cJSON_CreateObject();
    uint64_t total = 0;
    for (size_t i = 0; i < s->n; i++)
        total += s->t[i].nbytes;
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(root, "metadata"), "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    char name[64];
    for (size_t i = 0; i < s->n; i++) {
        shard_file(name, sizeof name, s->t[i].shard, s->n_shards);
        cJSON_AddStringToObject(map, s->t[i].name, name);
    }
    char *text = cJSON_Print(root), *line = text ? malloc(strlen(text) + 2) : NULL;
    cJSON_Delete(root);
    qpk_status st = line ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (st == QPK_OK) {
        size_t n = strlen(text);
        memcpy(line, text, n), line[n] = '\n'; /* a text file ends its last line, as transformers writes it */
        st = qpk_write_text_file(s->dir, "model.safetensors.index.json", line, n + 1, e);
    }
    free(text), free(line);
    return st;
}

qpk_status qpk_st_set_finish(qpk_st_set *s, qpk_err *e)
{
    qpk_status st = QPK_OK;
    /* Shards holding only empty tensors (or none yet opened) still get their file. */
    for (int k = s->open_shard + 1; st == QPK_OK && k < s->n_shards; k++) {
        st = close_shard(s, e);
        if (st == QPK_OK)
            st = open_shard(s, k, e);
    }
    for (size_t i = s->cur; st == QPK_OK && i < s->n; i++)
        if ((i == s->cur ? s->cur_left : s->t[i].nbytes) != 0)
            st = qpk_err_setf(e, QPK_E_INVALID_ARG, "tensor '%s' did not get all its bytes", s->t[i].name);
    if (st == QPK_OK)
        st = close_shard(s, e);
    if (st == QPK_OK && s->n_shards > 1)
        st = write_index(s, e);
    qpk_st_set_discard(s);
    return st;
}

qpk_status qpk_write_text_file(const char *dir, const char *name, const char *text, size_t n, qpk_err *e)
{
    char *path = malloc(strlen(dir) + strlen(name) + 2);
    if (!path)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    sprintf(path, "%s/%s", dir, name);
    qpk_outfile *o;
    qpk_status s = qpk_outfile_create(&o, path, e);
    free(path);
    if (s != QPK_OK)
        return s;
    if ((s = qpk_outfile_write(o, text, n, e)) != QPK_OK) {
        qpk_outfile_discard(o);
        return s;
    }
    return qpk_outfile_commit(o, e);
}
