/*
 * qpk_convert: HF folder -> .qpk (or GGUF), streaming one tensor at a time from the
 * mapped safetensors into the writer. Memory use is one conversion chunk, whatever
 * the model size; the output appears only when complete (see the writers).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "qpk/gguf.h"
#include "qpk/tokenizer.h"
#include "qpk_json.h"

#define CHUNK_ELEMS (1u << 18)       /* f32 staging for conversions: 1 MiB */
#define COPY_CHUNK (64ull << 20)     /* bytes per write when copying as is */

/* Files of the model folder carried into the .qpk, when present. */
static const char *const EMBEDDED_FILES[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};

typedef struct job {
    const qpk_convert_opts *o;
    const qpk_config *cfg;
    qpk_writer *w;          /* the .qpk being written, or */
    qpk_gguf_export *gguf;  /* the GGUF (whose tensors are all declared before any data) */
    qpk_pool *pool;
    const qpk_kernels *kernels; /* round-to-nearest rows */
    float *rows_f32;    /* per thread: one source row in f32 */
    size_t widest;      /* floats per thread in rows_f32 */
    qpk_calib *calib;   /* GPTQ/AWQ: the layer-by-layer state */
    qpk_calib_times times;
    uint64_t done, total;
    float *f32;
    void *out;
    cJSON *prov_tensors;
} job;

static qpk_status poll(job *j, const char *what, qpk_err *e)
{
    const qpk_callbacks *cb = &j->o->cb;
    if (cb->progress)
        cb->progress(cb->ud, what, j->done, j->total);
    if (cb->cancel && cb->cancel(cb->ud))
        return qpk_err_setf(e, QPK_E_CANCELLED, "conversion cancelled");
    return QPK_OK;
}

/* The output's three tensor calls, whichever the format. */
static qpk_status out_begin(job *j, const char *name, uint32_t type, uint32_t group, int ndim, const int64_t *dims,
                            qpk_err *e)
{
    return j->gguf ? QPK_OK : qpk_writer_begin_tensor(j->w, name, type, group, ndim, dims, e);
}

static qpk_status out_write(job *j, const void *p, size_t n, qpk_err *e)
{
    return j->gguf ? qpk_gguf_export_write(j->gguf, p, n, e) : qpk_writer_write(j->w, p, n, e);
}

static qpk_status out_end(job *j, qpk_err *e)
{
    if (!j->gguf)
        return qpk_writer_end_tensor(j->w, e);
    qpk_gguf_export_next(j->gguf);
    return QPK_OK;
}

/* Refuses a non-finite weight (unless allowed), naming the tensor, the element and where it is. */
static qpk_status nonfinite(const job *j, const qpk_st_tensor *t, uint64_t index, float value, qpk_err *e)
{
    if (j->o->allow_nonfinite)
        return QPK_OK;
    int64_t cols = t->shape[t->ndim - 1] ? t->shape[t->ndim - 1] : 1;
    return qpk_err_setf(e, QPK_E_VALUE,
                        "tensor '%s': element %" PRIu64 " (row %" PRIu64 ", column %" PRIu64 ") is %g: non-finite "
                        "weights are refused (--allow-nonfinite keeps them as they are)",
                        t->name, index, index / (uint64_t)cols, index % (uint64_t)cols, (double)value);
}

static qpk_status copy_bytes(job *j, const qpk_st_tensor *t, qpk_err *e)
{
    const uint8_t *p = t->data;
    const qpk_type type = qpk_st_keep_type(t->dtype);
    const size_t esize = qpk_st_dtype_size(t->dtype);
    for (uint64_t off = 0; off < t->nbytes; off += COPY_CHUNK) {
        size_t n = (size_t)(t->nbytes - off < COPY_CHUNK ? t->nbytes - off : COPY_CHUNK);
        size_t bad = qpk_first_nonfinite(type, p + off, n / esize);
        if (bad != n / esize) {
            float v;
            qpk_st_to_f32(t, off / esize + bad, 1, &v);
            QPK_TRY(nonfinite(j, t, off / esize + bad, v, e));
        }
        QPK_TRY(out_write(j, p + off, n, e));
        j->done += n;
        QPK_TRY(poll(j, t->name, e));
    }
    return QPK_OK;
}

static qpk_status convert_values(job *j, const qpk_st_tensor *t, qpk_type type, qpk_err *e)
{
    size_t out_size = type == QPK_TYPE_F32 ? 4 : 2;
    for (uint64_t i = 0; i < t->numel; i += CHUNK_ELEMS) {
        size_t n = (size_t)(t->numel - i < CHUNK_ELEMS ? t->numel - i : CHUNK_ELEMS);
        qpk_st_to_f32(t, i, n, j->f32);
        /* Converted piece by piece between the non-finite values, which stay what they are when allowed. */
        for (size_t done = 0; done < n;) {
            uint8_t *o = (uint8_t *)j->out;
            size_t bad = done + qpk_row_from_f32(type, j->f32 + done, o + done * out_size, n - done);
            if (bad < n && !isfinite(j->f32[bad])) /* the pieces before it are not converted yet: now they are */
                bad = done + qpk_row_from_f32(type, j->f32 + done, o + done * out_size, bad - done);
            if (bad == n)
                break;
            float v = j->f32[bad];
            if (isfinite(v))
                return qpk_err_setf(e, QPK_E_VALUE, "tensor '%s': element %" PRIu64 " (%g) is too large for %s",
                                    t->name, i + bad, (double)v, qpk_type_name(type));
            QPK_TRY(nonfinite(j, t, i + bad, v, e));
            uint16_t h = type == QPK_TYPE_F16 ? qpk_f32_to_f16(v) : qpk_f32_to_bf16(v);
            memcpy(o + bad * out_size, type == QPK_TYPE_F32 ? (const void *)&v : (const void *)&h, out_size);
            done = bad + 1;
        }
        QPK_TRY(out_write(j, j->out, n * out_size, e));
        j->done += n * qpk_st_dtype_size(t->dtype);
        QPK_TRY(poll(j, t->name, e));
    }
    return QPK_OK;
}

/* ---------------------------------------------------------- quantization */

#define QUANT_CHUNK_BYTES (8u << 20) /* output rows per writer call: bounded memory */
#define QUANT_TASK_ROWS 8

typedef struct quant_job {
    job *j;
    const qpk_st_tensor *t;
    uint32_t type, group;
    int64_t row0, n_rows, cols;
    size_t row_bytes;
    uint8_t *out;
    qpk_status *status; /* per task, so the first failing row is reported whatever the threads */
    qpk_err *errs;
} quant_job;

static void quant_task(void *arg, int64_t task, int thread)
{
    quant_job *q = arg;
    float *x = q->j->rows_f32 + (size_t)thread * q->j->widest;
    int64_t r1 = (task + 1) * QUANT_TASK_ROWS < q->n_rows ? (task + 1) * QUANT_TASK_ROWS : q->n_rows;
    q->status[task] = QPK_OK;
    for (int64_t r = task * QUANT_TASK_ROWS; r < r1; r++) {
        qpk_st_to_f32(q->t, (uint64_t)(q->row0 + r) * (uint64_t)q->cols, (size_t)q->cols, x);
        qpk_status s = q->j->kernels->quantize_row(q->type, q->group, x, q->cols, q->out + (size_t)r * q->row_bytes,
                                        &q->errs[task]);
        if (s != QPK_OK) {
            qpk_err_prefix(&q->errs[task], s, "tensor '%s' row %lld", q->t->name, (long long)(q->row0 + r));
            q->status[task] = s;
            return;
        }
    }
}

/* Round-to-nearest quantization of a whole tensor, chunk by chunk of rows, on all threads. */
static qpk_status quantize_tensor(job *j, const qpk_st_tensor *t, uint32_t type, uint32_t group, qpk_err *e)
{
    int64_t cols = t->shape[t->ndim - 1], rows = (int64_t)(t->numel / (uint64_t)cols);
    size_t row_bytes = (size_t)(cols / group) * qpk_type_block_bytes(type, group);
    int64_t chunk = (int64_t)(QUANT_CHUNK_BYTES / row_bytes);
    chunk = chunk < QUANT_TASK_ROWS ? QUANT_TASK_ROWS : chunk / QUANT_TASK_ROWS * QUANT_TASK_ROWS;
    int64_t max_tasks = chunk / QUANT_TASK_ROWS;
    quant_job q = {j, t, type, group, 0, 0, cols, row_bytes, malloc((size_t)chunk * row_bytes),
                   calloc((size_t)max_tasks, sizeof(qpk_status)), calloc((size_t)max_tasks, sizeof(qpk_err))};
    qpk_status s = q.out && q.status && q.errs ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (int64_t r0 = 0; r0 < rows && s == QPK_OK; r0 += chunk) {
        q.row0 = r0, q.n_rows = rows - r0 < chunk ? rows - r0 : chunk;
        int64_t tasks = (q.n_rows + QUANT_TASK_ROWS - 1) / QUANT_TASK_ROWS;
        qpk_pool_run(j->pool, tasks, quant_task, &q);
        if (qpk_pool_cancelled(j->pool))
            s = qpk_err_setf(e, QPK_E_CANCELLED, "conversion cancelled");
        for (int64_t i = 0; i < tasks && s == QPK_OK; i++)
            if (q.status[i] != QPK_OK) {
                if (e)
                    *e = q.errs[i];
                s = q.status[i];
            }
        if (s == QPK_OK)
            s = out_write(j, q.out, (size_t)q.n_rows * row_bytes, e);
        j->done += (uint64_t)q.n_rows * (uint64_t)cols * qpk_st_dtype_size(t->dtype);
        if (s == QPK_OK)
            s = poll(j, t->name, e);
    }
    free(q.out), free(q.status), free(q.errs);
    return s;
}

/* Records a source tensor in the .qpk's provenance; `hash` is its XXH3 when already known. */
static void note_source(job *j, const qpk_st_tensor *t, const uint64_t *hash)
{
    if (!j->prov_tensors)
        return;
    char hex[17];
    snprintf(hex, sizeof hex, "%016" PRIx64, hash ? *hash : qpk_xxh3(t->data, (size_t)t->nbytes));
    cJSON *o = cJSON_AddObjectToObject(j->prov_tensors, t->name);
    cJSON *shape = cJSON_CreateArray();
    for (int d = 0; d < t->ndim; d++)
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
    cJSON_AddStringToObject(o, "dtype", qpk_st_dtype_name(t->dtype));
    cJSON_AddItemToObject(o, "shape", shape);
    cJSON_AddStringToObject(o, "xxh3", hex);
}

/* ------------------------------------------------- imported GPTQ / AWQ linears */

typedef struct import_job {
    const qpk_qlinear *q;
    int64_t row0, n_rows;
    size_t row_bytes;
    uint8_t *out;
    qpk_status *status;
    qpk_err *errs;
} import_job;

#define IMPORT_TASK_ROWS 64

static void import_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    import_job *m = arg;
    const int64_t r = task * IMPORT_TASK_ROWS, n = m->n_rows - r < IMPORT_TASK_ROWS ? m->n_rows - r : IMPORT_TASK_ROWS;
    m->status[task] = qpk_qlinear_rows(m->q, m->row0 + r, n, m->out + (size_t)r * m->row_bytes, &m->errs[task]);
}

/* The source tensors of an imported linear (what it is made of), in the provenance. */
static void note_sources(job *j, const qpk_qlinear *q)
{
    const qpk_st_tensor *parts[4] = {q->qweight, q->qzeros, q->scales, q->g_idx};
    for (int k = 0; k < 4; k++)
        if (parts[k])
            note_source(j, parts[k], NULL);
}

static uint64_t qlinear_source_bytes(const qpk_qlinear *q)
{
    return q->qweight->nbytes + q->qzeros->nbytes + q->scales->nbytes + (q->g_idx ? q->g_idx->nbytes : 0);
}

/* A GPTQ/AWQ linear as qpk blocks, exactly, chunk by chunk on the pool; its input permutation after it. */
static qpk_status write_imported(job *j, const qpk_qlinear *q, qpk_role role, int layer, const char *name, qpk_err *e)
{
    const int64_t dims[2] = {q->rows, q->cols};
    const size_t row_bytes = qpk_type_row_bytes(q->type, q->group, q->cols);
    int64_t chunk = (int64_t)(QUANT_CHUNK_BYTES / row_bytes) / IMPORT_TASK_ROWS * IMPORT_TASK_ROWS;
    chunk = chunk < IMPORT_TASK_ROWS ? IMPORT_TASK_ROWS : chunk;
    const int64_t max_tasks = chunk / IMPORT_TASK_ROWS;
    import_job m = {q, 0, 0, row_bytes, malloc((size_t)chunk * row_bytes), calloc((size_t)max_tasks, sizeof(qpk_status)),
                    calloc((size_t)max_tasks, sizeof(qpk_err))};
    qpk_status s = m.out && m.status && m.errs ? out_begin(j, name, q->type, q->group, 2, dims, e)
                                               : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    const double per_row = (double)qlinear_source_bytes(q) / (double)q->rows;
    for (int64_t r0 = 0; r0 < q->rows && s == QPK_OK; r0 += chunk) {
        m.row0 = r0, m.n_rows = q->rows - r0 < chunk ? q->rows - r0 : chunk;
        int64_t tasks = (m.n_rows + IMPORT_TASK_ROWS - 1) / IMPORT_TASK_ROWS;
        qpk_pool_run(j->pool, tasks, import_task, &m);
        if (qpk_pool_cancelled(j->pool))
            s = qpk_err_setf(e, QPK_E_CANCELLED, "conversion cancelled");
        for (int64_t i = 0; i < tasks && s == QPK_OK; i++)
            if (m.status[i] != QPK_OK)
                s = qpk_err_setf(e, m.status[i], "%s", m.errs[i].msg);
        if (s == QPK_OK)
            s = out_write(j, m.out, (size_t)m.n_rows * row_bytes, e);
        j->done += (uint64_t)(per_row * (double)m.n_rows);
        if (s == QPK_OK)
            s = poll(j, name, e);
    }
    free(m.out), free(m.status), free(m.errs);
    QPK_TRY(s);
    QPK_TRY(out_end(j, e));
    note_sources(j, q);
    if (!q->perm)
        return QPK_OK;
    char perm_name[QPK_MAX_NAME];
    qpk_perm_name(perm_name, sizeof perm_name, role, layer);
    QPK_TRY(out_begin(j, perm_name, QPK_TYPE_I32, 0, 1, &q->cols, e));
    QPK_TRY(out_write(j, q->perm, (size_t)q->cols * sizeof *q->perm, e)); /* little-endian, as the format */
    return out_end(j, e);
}

/* A tensor of the layer the calibration has just quantized: its bytes come from there. */
static qpk_status write_calibrated(job *j, const qpk_checkpoint *ck, qpk_role role, int layer, const char *name,
                                   qpk_err *e)
{
    const qpk_st_tensor *t = qpk_checkpoint_tensor(ck, role, layer);
    uint32_t type, group;
    const void *bytes;
    size_t n;
    qpk_calib_tensor(j->calib, role, &type, &group, &bytes, &n);
    QPK_TRY(out_begin(j, name, type, group, t->ndim, t->shape, e));
    QPK_TRY(out_write(j, bytes, n, e));
    QPK_TRY(out_end(j, e));
    j->done += t->nbytes;
    note_source(j, t, NULL);
    return QPK_OK;
}

/* One tensor, from the calibration (a calibrated layer's) or straight from its source. */
static qpk_status write_tensor(job *j, const qpk_checkpoint *ck, qpk_role role, int layer, qpk_err *e)
{
    char name[QPK_MAX_NAME];
    qpk_tensor_name(name, sizeof name, role, layer);
    if (j->calib && qpk_role_is_per_layer(role))
        return write_calibrated(j, ck, role, layer, name, e);
    const qpk_qlinear *q = qpk_checkpoint_qlinear(ck, role, layer);
    if (q)
        return write_imported(j, q, role, layer, name, e);
    const qpk_st_tensor *t = qpk_checkpoint_tensor(ck, role, layer);
    uint32_t type, group;
    QPK_TRY(qpk_tensor_plan(j->o, j->cfg, t, role, layer, name, &type, &group, e));
    bool as_is = qpk_st_keep_type(t->dtype) == type && t->dtype != QPK_ST_F64;
    QPK_TRY(out_begin(j, name, type, group, t->ndim, t->shape, e));
    QPK_TRY(qpk_type_is_quantized(type) ? quantize_tensor(j, t, type, group, e)
            : as_is                     ? copy_bytes(j, t, e)
                                        : convert_values(j, t, (qpk_type)type, e));
    QPK_TRY(out_end(j, e));
    /* Stored as is: the source's bytes, so the writer's hash serves both. */
    uint64_t h = j->gguf ? 0 : qpk_writer_last_xxh3(j->w);
    note_source(j, t, as_is && !j->gguf ? &h : NULL);
    return QPK_OK;
}

/* Calibrates layer l (GPTQ/AWQ): an explicit step at the layer boundary, before its tensors are written. */
static qpk_status calibrate_layer(job *j, const qpk_config *c, int l, qpk_err *e)
{
    double t0 = qpk_seconds();
    QPK_TRY(qpk_calib_layer(j->calib, l, &j->times, e));
    char what[96];
    snprintf(what, sizeof what, "%s layer %d/%lld: %.1f s", qpk_method_name(j->o->method), l + 1,
             (long long)c->n_layers, qpk_seconds() - t0);
    return poll(j, what, e);
}

/* Every tensor in the canonical order: embedding, layer by layer, final norm, head. */
static qpk_status write_tensors(job *j, const qpk_checkpoint *ck, qpk_err *e)
{
    const qpk_config *c = qpk_checkpoint_config(ck);
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        qpk_model_tensor_at(c, i, &role, &layer);
        const qpk_qlinear *q = qpk_checkpoint_qlinear(ck, role, layer);
        j->total += q ? qlinear_source_bytes(q) : qpk_checkpoint_tensor(ck, role, layer)->nbytes;
    }
    QPK_TRY(write_tensor(j, ck, QPK_ROLE_EMBED, -1, e));
    for (int l = 0; l < c->n_layers; l++) {
        if (j->calib)
            QPK_TRY(calibrate_layer(j, c, l, e));
        for (int i = 0; i < QPK_LAYER_ROLES; i++)
            QPK_TRY(write_tensor(j, ck, qpk_layer_role(i), l, e));
    }
    QPK_TRY(write_tensor(j, ck, QPK_ROLE_FINAL_NORM, -1, e));
    if (!c->tie_word_embeddings)
        QPK_TRY(write_tensor(j, ck, QPK_ROLE_LM_HEAD, -1, e));
    return QPK_OK;
}

/* ------------------------------------------------------------------ GGUF */

/* A checkpoint's tensors as the GGUF plan takes them: as they will be stored. */
typedef struct gguf_source {
    const qpk_convert_opts *o;
    const qpk_checkpoint *ck;
} gguf_source;

static qpk_status checkpoint_source(void *ud, qpk_role role, int layer, uint32_t *type, uint32_t *group, int *ndim,
                                    int64_t dims[QPK_MAX_DIMS], qpk_err *e)
{
    const gguf_source *g = ud;
    char name[QPK_MAX_NAME];
    qpk_tensor_name(name, sizeof name, role, layer);
    const qpk_qlinear *q = qpk_checkpoint_qlinear(g->ck, role, layer);
    if (q && q->perm)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, QPK_ACT_ORDER_GGUF_MSG, q->name);
    if (q) {
        *type = q->type, *group = q->group, *ndim = 2;
        dims[0] = q->rows, dims[1] = q->cols;
        return QPK_OK;
    }
    const qpk_st_tensor *t = qpk_checkpoint_tensor(g->ck, role, layer);
    QPK_TRY(qpk_tensor_plan(g->o, qpk_checkpoint_config(g->ck), t, role, layer, name, type, group, e));
    qpk_tensor_stored(g->o, role, type, group);
    *ndim = t->ndim;
    memcpy(dims, t->shape, (size_t)t->ndim * sizeof *dims);
    return QPK_OK;
}

/* The folder's last path component: the model's name in GGUF. */
static void folder_name(const char *dir, char *buf, size_t cap)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    char *safe = strndup(dir + b, n - b), *utf8 = safe ? qpk_utf8_dup(safe) : NULL; /* GGUF strings are UTF-8 */
    snprintf(buf, cap, "%s", utf8 ? utf8 : "");
    free(safe), free(utf8);
}

/* A GGUF needs its tensors and metadata before any data: plan every tensor now. */
static qpk_status gguf_head(job *j, const qpk_checkpoint *ck, const char *dir, const cJSON *meta, qpk_err *e)
{
    char *tok = NULL, *tok_cfg = NULL, *recipe = NULL, name[256];
    size_t tok_len = 0, cfg_len = 0;
    bool missing = false;
    qpk_status s = qpk_read_model_file(dir, "tokenizer.json", &tok, &tok_len, &missing, e);
    if (s != QPK_OK && missing)
        s = qpk_err_setf(e, QPK_E_MISMATCH, "GGUF carries the model's tokenizer, and %s has no tokenizer.json", dir);
    if (s == QPK_OK) {
        qpk_status r = qpk_read_model_file(dir, "tokenizer_config.json", &tok_cfg, &cfg_len, &missing, e);
        s = r == QPK_OK || missing ? QPK_OK : r; /* optional */
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(meta, "quantization");
    if (s == QPK_OK && cJSON_IsObject(q) && !(recipe = cJSON_PrintUnformatted(q)))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    folder_name(dir, name, sizeof name);
    gguf_source src = {j->o, ck};
    qpk_gguf_meta gm = {name, tok, tok_len, tok_cfg, cfg_len, recipe};
    if (s == QPK_OK)
        s = qpk_gguf_export_plan(j->gguf, qpk_checkpoint_config(ck), checkpoint_source, &src, &gm, e);
    free(tok), free(tok_cfg), free(recipe);
    return s;
}

/*
 * What is embedded must read back: every file strict JSON, and a tokenizer whose ids the
 * vocabulary holds (as GGUF export requires). One that qpk's tokenizer cannot read is
 * embedded all the same, with a warning: conversion and token-id evaluation need no text.
 */
static qpk_status check_embedded(const job *j, const char *name, const char *data, size_t len, qpk_err *e)
{
    QPK_TRY(qpk_json_check(name, data, len, e));
    if (strcmp(name, "tokenizer.json") != 0)
        return QPK_OK;
    qpk_tokenizer *tok;
    qpk_err why = {0};
    if (qpk_tokenizer_load(&tok, data, len, &why) != QPK_OK) {
        if (why.status == QPK_E_NOMEM)
            return qpk_err_setf(e, why.status, "%s", why.msg);
        char msg[900];
        snprintf(msg, sizeof msg, "tokenizer.json is embedded, but qpk's tokenizer cannot read it (%s): --text and "
                 "--calib will not work with this file", why.msg);
        if (j->o->cb.log)
            j->o->cb.log(j->o->cb.ud, QPK_LOG_WARN, msg);
        return QPK_OK;
    }
    qpk_status s = qpk_tokenizer_fits(tok, j->cfg->vocab_size, e);
    qpk_tokenizer_free(tok);
    return s;
}

static qpk_status embed_files(job *j, const char *dir, cJSON *prov, qpk_err *e)
{
    cJSON *list = cJSON_AddArrayToObject(prov, "embedded_files");
    for (size_t i = 0; i < sizeof EMBEDDED_FILES / sizeof *EMBEDDED_FILES; i++) {
        char *data;
        size_t len;
        bool missing;
        qpk_status s = qpk_read_model_file(dir, EMBEDDED_FILES[i], &data, &len, &missing, e);
        if (s != QPK_OK && missing) {
            if (j->o->cb.log) {
                char msg[128];
                snprintf(msg, sizeof msg, "no %s in the model folder: not embedded", EMBEDDED_FILES[i]);
                j->o->cb.log(j->o->cb.ud, QPK_LOG_INFO, msg);
            }
            continue;
        }
        if (s == QPK_OK)
            s = check_embedded(j, EMBEDDED_FILES[i], data, len, e);
        if (s == QPK_OK)
            s = qpk_writer_add_blob(j->w, EMBEDDED_FILES[i], data, len, e);
        free(data);
        if (s != QPK_OK)
            return s;
        cJSON_AddItemToArray(list, cJSON_CreateString(EMBEDDED_FILES[i]));
    }
    return QPK_OK;
}

/* A string from outside (a path, a command line) as JSON must have it: valid UTF-8. */
static void add_text(cJSON *o, const char *key, const char *s)
{
    char *safe = qpk_utf8_dup(s ? s : "");
    cJSON_AddStringToObject(o, key, safe ? safe : "");
    free(safe);
}

static void add_recipe(cJSON *m, const qpk_convert_opts *o)
{
    if (!o->quant && !o->preset && !o->n_rules) {
        cJSON_AddNullToObject(m, "quantization");
        return;
    }
    cJSON *q = cJSON_AddObjectToObject(m, "quantization");
    cJSON_AddStringToObject(q, "method", qpk_method_name(o->method));
    if (o->preset)
        cJSON_AddStringToObject(q, "preset", qpk_preset_name(o->preset));
    cJSON_AddStringToObject(q, "type", o->quant ? qpk_type_name((uint32_t)o->quant) : "none");
    if (o->group == QPK_GROUP_ROW)
        cJSON_AddStringToObject(q, "group", "row");
    else
        cJSON_AddNumberToObject(q, "group", o->group);
    bool float_embedding = (!o->quant && !o->preset) || o->to == QPK_OUT_GPTQ || o->to == QPK_OUT_AWQ;
    cJSON_AddStringToObject(q, "embedding", o->preset ? "as the preset" : float_embedding ? "as --dtype" : "int8");
    cJSON_AddStringToObject(q, "norms_and_biases", o->quant || o->preset ? "f32" : "as --dtype");
    if (o->method != QPK_METHOD_RTN) {
        const qpk_calib_opts *co = &o->calib;
        qpk_calib_params p;
        qpk_calib_resolve(co, &p);
        char hex[17];
        cJSON *cal = cJSON_AddObjectToObject(q, "calibration");
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)co->source_xxh3);
        add_text(cal, "file", co->source);
        cJSON_AddStringToObject(cal, "xxh3", hex);
        cJSON_AddStringToObject(cal, "format", co->source_is_text ? "text" : "int32 tokens");
        cJSON_AddNumberToObject(cal, "tokens", (double)co->n_tokens);
        cJSON_AddNumberToObject(cal, "samples", p.samples);
        cJSON_AddNumberToObject(cal, "length", p.seq_len);
        cJSON_AddNumberToObject(cal, "seed", (double)p.seed);
        if (o->method == QPK_METHOD_IMATRIX) {
            cJSON_AddStringToObject(cal, "statistic", "mean x^2 per input column");
        }
        if (qpk_method_uses_gptq(o->method)) {
            cJSON_AddNumberToObject(cal, "damp", p.gptq.damp);
            cJSON_AddBoolToObject(cal, "act_order", p.gptq.act_order);
        }
        if (qpk_method_uses_awq(o->method)) {
            cJSON_AddNumberToObject(cal, "alpha_grid", p.awq.alpha_grid);
            if (o->method == QPK_METHOD_AWQ) {
                cJSON_AddNumberToObject(cal, "clip_grid", p.awq.clip_steps);
                cJSON_AddBoolToObject(cal, "fold_only", p.awq_fold_only);
            }
            cJSON_AddNumberToObject(cal, "search_rows", p.awq.sample_rows);
        }
        cJSON_AddStringToObject(q, "embedding_and_head", "rtn");
    }
    cJSON *rules = cJSON_AddArrayToObject(q, "rules");
    for (size_t i = 0; i < o->n_rules; i++) {
        char text[200];
        const qpk_quant_rule *r = &o->rules[i];
        if (r->group == QPK_GROUP_ROW)
            snprintf(text, sizeof text, "%s=%s/row", r->pattern, qpk_type_name((uint32_t)r->type));
        else if (r->group)
            snprintf(text, sizeof text, "%s=%s/g%u", r->pattern, qpk_type_name((uint32_t)r->type), r->group);
        else
            snprintf(text, sizeof text, "%s=%s", r->pattern, qpk_type_name((uint32_t)r->type));
        cJSON_AddItemToArray(rules, cJSON_CreateString(text));
    }
}

/* An imported GPTQ/AWQ checkpoint's recipe: where its linears come from, and what they became. */
static void add_import(cJSON *m, const qpk_checkpoint *ck, const qpk_convert_opts *o)
{
    const qpk_hfq *h = qpk_checkpoint_hfq(ck);
    const qpk_config *c = qpk_checkpoint_config(ck);
    cJSON *q = cJSON_AddObjectToObject(m, "quantization");
    cJSON_AddStringToObject(q, "method", "imported");
    cJSON *src = cJSON_AddObjectToObject(q, "source");
    cJSON_AddStringToObject(src, "format", h->method == QPK_HFQ_GPTQ ? "gptq" : "awq");
    cJSON_AddStringToObject(src, "layout", h->method == QPK_HFQ_AWQ ? "gemm" : h->v2 ? "gptq_v2" : "gptq");
    cJSON_AddNumberToObject(src, "bits", h->bits);
    if (h->group == -1)
        cJSON_AddStringToObject(src, "group_size", "row");
    else
        cJSON_AddNumberToObject(src, "group_size", (double)h->group);
    cJSON_AddBoolToObject(src, "sym", h->sym);
    cJSON_AddBoolToObject(src, "desc_act", h->desc_act);
    /* How many linears became each qpk type, and how many take their input permuted. */
    int count[QPK_TYPE_COUNT_] = {0}, permuted = 0, floats = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < QPK_LAYER_ROLES; i++) {
            qpk_role r = qpk_layer_role(i);
            const qpk_qlinear *ql = qpk_checkpoint_qlinear(ck, r, l);
            if (ql)
                count[ql->type]++, permuted += ql->perm != NULL;
            else
                floats += qpk_role_is_matrix(r);
        }
    cJSON *types = cJSON_AddObjectToObject(q, "linears");
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++)
        if (count[t])
            cJSON_AddNumberToObject(types, qpk_type_name(t), count[t]);
    if (floats)
        cJSON_AddNumberToObject(types, "float", floats);
    cJSON_AddNumberToObject(q, "permuted_inputs", permuted);
    cJSON_AddStringToObject(q, "embedding_and_norms", "as stored (--dtype), then the rules");
    cJSON *rules = cJSON_AddArrayToObject(q, "rules");
    for (size_t i = 0; i < o->n_rules; i++)
        cJSON_AddItemToArray(rules, cJSON_CreateString(o->rules[i].pattern));
}

/* Whether any imported linear takes its input permuted: then the file is version 2. */
static bool has_permutations(const qpk_checkpoint *ck)
{
    const qpk_config *c = qpk_checkpoint_config(ck);
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < QPK_LAYER_ROLES; i++) {
            const qpk_qlinear *ql = qpk_checkpoint_qlinear(ck, qpk_layer_role(i), l);
            if (ql && ql->perm)
                return true;
        }
    return false;
}

static cJSON *base_metadata(const qpk_checkpoint *ck, const qpk_convert_opts *o, cJSON **prov)
{
    cJSON *m = cJSON_CreateObject();
    char *cfg_json = qpk_config_to_json(qpk_checkpoint_config(ck));
    cJSON *cfg = cfg_json ? cJSON_Parse(cfg_json) : NULL;
    free(cfg_json);
    if (!m || !cfg) {
        cJSON_Delete(m);
        cJSON_Delete(cfg);
        return NULL;
    }
    cJSON_AddStringToObject(m, "format", "qpk");
    cJSON_AddNumberToObject(m, "format_version", has_permutations(ck) ? 2 : 1);
    cJSON_AddStringToObject(m, "architecture", "qwen2");
    cJSON_AddItemToObject(m, "config", cfg);
    cJSON_AddBoolToObject(m, "tied", qpk_checkpoint_config(ck)->tie_word_embeddings);
    if (qpk_checkpoint_hfq(ck)->method != QPK_HFQ_NONE)
        add_import(m, ck, o);
    else
        add_recipe(m, o);
    *prov = cJSON_AddObjectToObject(m, "provenance");
    cJSON_AddStringToObject(*prov, "tool", "qconvert");
    cJSON_AddStringToObject(*prov, "version", QPK_VERSION_STRING);
    add_text(*prov, "command", o->command);
    cJSON_AddStringToObject(*prov, "dtype", o->dtype < 0 ? "keep" : qpk_type_name((uint32_t)o->dtype));
    cJSON *files = cJSON_AddArrayToObject(*prov, "source_files");
    for (size_t i = 0; i < qpk_checkpoint_n_files(ck); i++) {
        uint64_t size;
        const char *name = qpk_checkpoint_file(ck, i, &size);
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "name", name);
        cJSON_AddNumberToObject(f, "size", (double)size);
        cJSON_AddItemToArray(files, f);
    }
    cJSON *ign = cJSON_AddArrayToObject(*prov, "ignored_tensors");
    for (size_t i = 0; i < qpk_checkpoint_n_ignored(ck); i++)
        cJSON_AddItemToArray(ign, cJSON_CreateString(qpk_checkpoint_ignored(ck, i)));
    return m;
}

/* Room for one source row in f32 per thread. */
static qpk_status job_buffers(job *j, const qpk_config *c, qpk_err *e)
{
    int64_t widest = c->hidden_size > c->intermediate_size ? c->hidden_size : c->intermediate_size;
    widest = widest > c->n_heads * c->head_dim ? widest : c->n_heads * c->head_dim;
    j->widest = (size_t)widest;
    j->rows_f32 = malloc(j->widest * (size_t)qpk_pool_threads(j->pool) * sizeof(float));
    j->f32 = malloc(CHUNK_ELEMS * sizeof(float));
    j->out = malloc(CHUNK_ELEMS * sizeof(float));
    return j->rows_f32 && j->f32 && j->out ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
}

/* A --keep rule that matches no tensor of the model does nothing: say so. */
static void warn_unmatched_rules(const qpk_convert_opts *o, const qpk_config *c)
{
    for (size_t r = 0; r < o->n_rules && o->cb.log; r++) {
        bool hit = o->rules[r].implied;
        for (size_t i = 0; i < qpk_model_n_tensors(c) && !hit; i++) {
            qpk_role role;
            int layer;
            char name[QPK_MAX_NAME];
            qpk_model_tensor_at(c, i, &role, &layer);
            qpk_tensor_name(name, sizeof name, role, layer);
            hit = qpk_quant_rule_matches(&o->rules[r], name);
        }
        if (!hit) {
            char msg[256];
            snprintf(msg, sizeof msg, "the rule '%s' matches no tensor of this model: it does nothing", o->rules[r].pattern);
            o->cb.log(o->cb.ud, QPK_LOG_WARN, msg);
        }
    }
}

/* A --keep rule cannot reach an imported GPTQ/AWQ linear: it is stored as it is, never requantized. */
static qpk_status check_rules_on_imported(const qpk_checkpoint *ck, const qpk_convert_opts *o, qpk_err *e)
{
    const qpk_config *c = qpk_checkpoint_config(ck);
    for (size_t r = 0; r < o->n_rules; r++)
        for (int l = 0; l < c->n_layers; l++)
            for (int i = 0; i < QPK_LAYER_ROLES; i++) {
                char name[QPK_MAX_NAME];
                qpk_role role = qpk_layer_role(i);
                qpk_tensor_name(name, sizeof name, role, l);
                if (qpk_checkpoint_qlinear(ck, role, l) && qpk_quant_rule_matches(&o->rules[r], name))
                    return qpk_err_setf(e, QPK_E_INVALID_ARG,
                                        "the rule '%s' matches %s, which is imported from the checkpoint as it is "
                                        "(never requantized): rules apply to the float tensors (embedding, head, "
                                        "norms, biases)", o->rules[r].pattern, name);
            }
    return QPK_OK;
}

/* The output must not be any file the conversion reads: it would replace that input. */
static qpk_status check_output(const qpk_checkpoint *ck, const char *dir, const char *out, qpk_err *e)
{
    static const char *const READ[] = {"config.json", "model.safetensors.index.json", "tokenizer.json",
                                       "tokenizer_config.json", "generation_config.json"};
    char path[4096];
    for (size_t i = 0; i < qpk_checkpoint_n_files(ck) + sizeof READ / sizeof *READ; i++) {
        size_t n = qpk_checkpoint_n_files(ck);
        snprintf(path, sizeof path, "%s/%s", dir, i < n ? qpk_checkpoint_file(ck, i, NULL) : READ[i - n]);
        QPK_TRY(qpk_check_not_input(out, path, e));
    }
    return QPK_OK;
}

static qpk_status convert_file(const char *dir, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    if (o->dtype >= 0 && o->dtype != QPK_TYPE_F32 && o->dtype != QPK_TYPE_F16 && o->dtype != QPK_TYPE_BF16)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--dtype must be keep, f32, f16 or bf16");
    if (o->quant && !qpk_type_can_quantize((uint32_t)o->quant))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--quant must be int8, int4, int4s, q4_k, q5_k or q6_k");
    const bool fixed_block = o->quant && qpk_type_info_of((uint32_t)o->quant)->block;
    if (o->quant && !fixed_block && o->group != QPK_GROUP_ROW && !qpk_group_ok((uint32_t)o->quant, o->group, 0))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--group must be a multiple of %d or row", QPK_GROUP_QUANTUM);
    if (o->quant && o->preset)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "give --quant or --preset, not both");
    if (o->method != QPK_METHOD_RTN && !o->quant && !o->preset)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GPTQ and AWQ need --quant (the type they calibrate for)");
    if (o->method != QPK_METHOD_RTN && !o->calib.tokens)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GPTQ and AWQ need calibration data (--calib or --calib-tokens)");
    qpk_checkpoint *ck = NULL;
    job j = {.o = o, .kernels = qpk_kernels_best()};
    cJSON *meta = NULL, *prov = NULL;
    char *text = NULL;
    qpk_status s = qpk_checkpoint_open(&ck, dir, &o->cb, e);
    if (s == QPK_OK)
        s = check_output(ck, dir, out, e);
    if (s == QPK_OK && qpk_checkpoint_hfq(ck)->method != QPK_HFQ_NONE &&
        (o->quant || o->preset || o->method != QPK_METHOD_RTN))
        s = qpk_err_setf(e, QPK_E_INVALID_ARG, "%s is already quantized (%s): its linears are imported exactly, "
                         "never requantized; --quant and --method do not apply", dir,
                         qpk_checkpoint_hfq(ck)->method == QPK_HFQ_GPTQ ? "gptq" : "awq");
    if (s == QPK_OK)
        s = check_rules_on_imported(ck, o, e);
    if (s == QPK_OK) {
        j.cfg = qpk_checkpoint_config(ck);
        warn_unmatched_rules(o, j.cfg);
    }
    if (s == QPK_OK && !(meta = base_metadata(ck, o, &prov)))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK && (s = qpk_pool_create(&j.pool, o->n_threads, e)) == QPK_OK && o->cb.cancel)
        qpk_pool_set_cancel(j.pool, o->cb.cancel, o->cb.ud);
    if (s == QPK_OK)
        s = job_buffers(&j, qpk_checkpoint_config(ck), e);
    if (s == QPK_OK && o->method != QPK_METHOD_RTN)
        s = qpk_calib_begin(&j.calib, ck, o, j.pool, e);
    if (s == QPK_OK && o->to == QPK_OUT_GGUF) { /* GPTQ/AWQ folders are made from a .qpk: see qpk_convert */
        if ((s = qpk_gguf_export_create(&j.gguf, out, e)) == QPK_OK)
            s = gguf_head(&j, ck, dir, meta, e);
        if (s == QPK_OK)
            s = write_tensors(&j, ck, e);
        if (s == QPK_OK) {
            s = qpk_gguf_export_finish(j.gguf, &o->cb, e);
            j.gguf = NULL;
        }
    } else if (s == QPK_OK) {
        if ((s = qpk_writer_create(&j.w, out, e)) == QPK_OK)
            j.prov_tensors = cJSON_AddObjectToObject(prov, "source_tensors");
        if (s == QPK_OK)
            s = write_tensors(&j, ck, e);
        if (s == QPK_OK)
            s = embed_files(&j, dir, prov, e);
        if (s == QPK_OK && !(text = cJSON_PrintUnformatted(meta)))
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        if (s == QPK_OK) {
            s = qpk_writer_finish(j.w, text, strlen(text), e);
            j.w = NULL;
        }
    }
    if (s == QPK_OK && j.calib && o->cb.log) {
        char msg[200];
        const qpk_calib_params *p = qpk_calib_params_of(j.calib);
        snprintf(msg, sizeof msg, "calibrated on %d windows of %d tokens: statistics %.1f s, quantization %.1f s, "
                 "quantized passes %.1f s", p->samples, p->seq_len, j.times.gather, j.times.quantize, j.times.forward);
        o->cb.log(o->cb.ud, QPK_LOG_INFO, msg);
    }
    qpk_calib_end(j.calib);
    qpk_writer_discard(j.w);
    qpk_gguf_export_discard(j.gguf);
    qpk_pool_free(j.pool);
    free(text);
    free(j.f32);
    free(j.out);
    free(j.rows_f32);
    cJSON_Delete(meta);
    qpk_checkpoint_close(ck);
    return s;
}

/*
 * A GPTQ or AWQ folder is re-packed from a .qpk, so every quantizer and every check of
 * the .qpk path serves it too: the .qpk is staged inside the folder's hidden temporary
 * (which a killed process's successor removes), then removed before the folder appears.
 */
/* What a GPTQ/AWQ folder cannot hold, known from the options alone: refused before any work. */
static qpk_status check_folder_options(const char *dir, const qpk_convert_opts *o, qpk_err *e)
{
    const bool awq = o->to == QPK_OUT_AWQ;
    const char *layout = awq ? "AWQ" : "GPTQ";
    if (o->calib.awq_fold_only)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--awq-fold-only keeps the linears in f32, which a %s folder cannot "
                            "hold", layout);
    if (awq && o->quant == QPK_TYPE_INT8)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "AWQ's GEMM layout holds 4-bit codes only: --quant int4 or int4s "
                            "(--to gptq holds int8)");
    if (awq && o->quant && o->group == QPK_GROUP_ROW)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "AWQ's layout has groups of one size, not one per row: give --group "
                            "(--to gptq holds per-row groups)");
    bool quantized_rule = false;
    for (size_t i = 0; i < o->n_rules; i++)
        quantized_rule |= qpk_type_is_quantized((uint32_t)o->rules[i].type);
    if (o->quant || quantized_rule)
        return QPK_OK;
    /* No --quant: only a checkpoint that is already GPTQ or AWQ has quantized linears to write. */
    qpk_checkpoint *ck = NULL;
    qpk_status s = qpk_checkpoint_open(&ck, dir, NULL, e);
    if (s == QPK_OK && qpk_checkpoint_hfq(ck)->method == QPK_HFQ_NONE)
        s = qpk_err_setf(e, QPK_E_INVALID_ARG, "a %s folder stores the linears quantized: give --quant (%s)", layout,
                         awq ? "int4 or int4s" : "int4, int4s or int8");
    qpk_checkpoint_close(ck);
    return s;
}

static qpk_status convert_to_folder(const char *dir, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    QPK_TRY(check_folder_options(dir, o, e));
    qpk_outdir *d = NULL;
    QPK_TRY(qpk_outdir_create(&d, out, e));
    const char *tmp = qpk_outdir_tmp(d);
    char *stage = malloc(strlen(tmp) + sizeof "/.stage.qpk");
    qpk_status s = stage ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK) {
        sprintf(stage, "%s/.stage.qpk", tmp);
        s = convert_file(dir, stage, o, e);
    }
    if (s == QPK_OK)
        s = qpk_export_hf_into(stage, d, o, e);
    if (s == QPK_OK && unlink(stage) != 0)
        s = qpk_err_setf(e, QPK_E_IO, "cannot remove '%s': %s", stage, strerror(errno));
    free(stage);
    if (s != QPK_OK) {
        qpk_outdir_discard(d);
        return s;
    }
    return qpk_outdir_commit(d, e);
}

qpk_status qpk_convert(const char *dir, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    if (o->to == QPK_OUT_GPTQ || o->to == QPK_OUT_AWQ)
        return convert_to_folder(dir, out, o, e);
    return convert_file(dir, out, o, e);
}
