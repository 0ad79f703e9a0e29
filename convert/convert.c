/*
 * The engine: a source -> a plan -> a sink, one tensor at a time in the canonical order.
 * Every tensor is declared first (the plan: each one's type, from the recipe rules, the
 * calibration method, or as it is stored; requantized where the target needs it and the
 * caller asks), then streamed from the mapped source into the sink: copied as it is,
 * converted between floats, quantized by round-to-nearest on all threads, taken from the
 * calibration of its layer, imported exactly (GPTQ/AWQ), or requantized from its exact
 * weights. Memory is one chunk of rows (and one layer when calibrating), whatever the
 * model size; the output appears only when complete.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "qpk/imatrix.h"
#include "qpk/gguf.h"
#include "qpk/tokenizer.h"
#include "qpk_json.h"

#define CHUNK_ELEMS (1u << 18)       /* f32 staging for conversions: 1 MiB */
#define COPY_CHUNK (64ull << 20)     /* bytes per write when copying as is */

/* Files of the model folder carried into the .qpk, when present (transformers >= 4.43 saves the chat template as
 * chat_template.jinja instead of in tokenizer_config.json). */
static const char *const EMBEDDED_FILES[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                             "chat_template.jinja"};
#define N_EMBEDDED (sizeof EMBEDDED_FILES / sizeof *EMBEDDED_FILES)

typedef struct job {
    const qpk_convert_opts *o;
    const qpk_config *cfg;  /* the model as written: the source's, or padded */
    const qpk_config *scfg; /* the source's: types are planned on its shapes */
    qpk_config padded;
    qpk_imatrix *imat;      /* --imatrix: llama.cpp's importance matrix, weighing ggml types' fits */
    struct pad_size { int64_t from, to; } pad[3]; /* PAD_DENSE, PAD_EXPERT, PAD_SHARED: before and after (equal: none) */
    qpk_source *src;
    qpk_checkpoint *ck;     /* a Hugging Face source's folder, else NULL */
    qpk_sink *sink;
    qpk_sink_tensor *plan;  /* each tensor as declared, in the canonical order */
    bool *requant;          /* which of them are requantized for the target */
    int n_requantized;
    uint64_t *calib_work;   /* per layer: the share of the work its calibration counts for */
    void **kept;            /* keep_requantized: the requantized tensors' bytes, by index */
    qpk_sink_file files[N_EMBEDDED]; /* the model's files (EMBEDDED_FILES present), owned */
    size_t n_files;
    uint64_t written;
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
    /* The certificate of a conversion from a quantized source: each matrix carried exactly,
     * or changed (requantized by the engine, or rounded by the target's layout) and by how
     * much. cert: the .qpk provenance's per-tensor record (NULL for other targets). */
    bool certify;
    cJSON *cert;
    double req_max, req_err2, req_ref2; /* the tensor being requantized: max |dw|, sum dw^2, sum w^2 */
    int64_t n_exact, n_changed;
    double worst_change, worst_rel;
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

static qpk_status out_begin(job *j, qpk_err *e) { return qpk_sink_begin_tensor(j->sink, e); }

static qpk_status out_write(job *j, const void *p, size_t n, qpk_err *e)
{
    j->written += n;
    return qpk_sink_write(j->sink, p, n, e);
}

static qpk_status out_end(job *j, const int32_t *perm, qpk_err *e) { return qpk_sink_end_tensor(j->sink, perm, e); }

/* Refuses a non-finite weight (unless allowed), naming the tensor, the element and where it is. */
static qpk_status nonfinite(const job *j, const qpk_st_tensor *t, uint64_t index, float value, qpk_err *e)
{
    if (j->o->allow_nonfinite)
        return QPK_OK;
    int64_t cols = t->shape[t->ndim - 1] ? t->shape[t->ndim - 1] : 1;
    return qpk_err_setf(e, QPK_E_VALUE,
                        "tensor '%s': element %" PRIu64 " (row %" PRIu64 ", column %" PRIu64 ") is %g: non-finite "
                        "weights are refused (unless allowed: then tensors stored as floats keep them)",
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

/* n values x (elements i.. of t) as the float type into o. */
static qpk_status floats_to(const job *j, const qpk_st_tensor *t, uint64_t i, const float *x, size_t n, qpk_type type,
                            uint8_t *o, qpk_err *e)
{
    const size_t out_size = type == QPK_TYPE_F32 ? 4 : 2;
    /* Converted piece by piece between the non-finite values, which stay what they are when allowed. */
    for (size_t done = 0; done < n;) {
        size_t bad = done + qpk_row_from_f32(type, x + done, o + done * out_size, n - done);
        if (bad < n && !isfinite(x[bad])) /* the pieces before it are not converted yet: now they are */
            bad = done + qpk_row_from_f32(type, x + done, o + done * out_size, bad - done);
        if (bad == n)
            break;
        float v = x[bad];
        if (isfinite(v))
            return qpk_err_setf(e, QPK_E_VALUE, "tensor '%s': element %" PRIu64 " (%g) is too large for %s", t->name,
                                i + bad, (double)v, qpk_type_name(type));
        QPK_TRY(nonfinite(j, t, i + bad, v, e));
        uint16_t h = type == QPK_TYPE_F16 ? qpk_f32_to_f16(v) : qpk_f32_to_bf16(v);
        memcpy(o + bad * out_size, type == QPK_TYPE_F32 ? (const void *)&v : (const void *)&h, out_size);
        done = bad + 1;
    }
    return QPK_OK;
}

static qpk_status convert_values(job *j, const qpk_st_tensor *t, qpk_type type, qpk_err *e)
{
    size_t out_size = type == QPK_TYPE_F32 ? 4 : 2;
    for (uint64_t i = 0; i < t->numel; i += CHUNK_ELEMS) {
        size_t n = (size_t)(t->numel - i < CHUNK_ELEMS ? t->numel - i : CHUNK_ELEMS);
        qpk_st_to_f32(t, i, n, j->f32);
        QPK_TRY(floats_to(j, t, i, j->f32, n, type, j->out, e));
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
    const uint8_t *tail; /* padding: zero groups appended to every row (tail_bytes of them) */
    size_t tail_bytes;
    const float *imp;    /* --imatrix: each column's importance, a vector per imp_rows rows; NULL: none */
    int64_t imp_rows;
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
        uint8_t *o = q->out + (size_t)r * (q->row_bytes + q->tail_bytes);
        qpk_status s = q->imp ? qpk_quantize_row_imp(q->type, q->group, x, q->cols,
                                                     q->imp + (size_t)((q->row0 + r) / q->imp_rows * q->cols), o,
                                                     &q->errs[task])
                              : q->j->kernels->quantize_row(q->type, q->group, x, q->cols, o, &q->errs[task]);
        if (q->tail_bytes)
            memcpy(o + q->row_bytes, q->tail, q->tail_bytes);
        if (s != QPK_OK) {
            qpk_err_prefix(&q->errs[task], s, "tensor '%s' row %lld", q->t->name, (long long)(q->row0 + r));
            q->status[task] = s;
            return;
        }
    }
}

/*
 * Round-to-nearest quantization of a whole tensor, chunk by chunk of rows, on all threads;
 * each row followed by tail (padding's zero groups, tail_bytes of them; NULL and 0: none).
 */
static qpk_status quantize_tensor(job *j, const qpk_st_tensor *t, uint32_t type, uint32_t group, const uint8_t *tail,
                                  size_t tail_bytes, const float *imp, int64_t imp_rows, qpk_err *e)
{
    int64_t cols = t->shape[t->ndim - 1], rows = (int64_t)(t->numel / (uint64_t)cols);
    size_t row_bytes = (size_t)(cols / group) * qpk_type_block_bytes(type, group), stride = row_bytes + tail_bytes;
    int64_t chunk = (int64_t)(QUANT_CHUNK_BYTES / stride);
    chunk = chunk < QUANT_TASK_ROWS ? QUANT_TASK_ROWS : chunk / QUANT_TASK_ROWS * QUANT_TASK_ROWS;
    int64_t max_tasks = chunk / QUANT_TASK_ROWS;
    quant_job q = {j,           t,         type, group, 0, 0, cols, row_bytes, tail, tail_bytes, imp, imp_rows,
                   malloc((size_t)chunk * stride), calloc((size_t)max_tasks, sizeof(qpk_status)),
                   calloc((size_t)max_tasks, sizeof(qpk_err))};
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
            s = out_write(j, q.out, (size_t)q.n_rows * stride, e);
        j->done += (uint64_t)q.n_rows * (uint64_t)cols * qpk_st_dtype_size(t->dtype);
        if (s == QPK_OK)
            s = poll(j, t->name, e);
    }
    free(q.out), free(q.status), free(q.errs);
    return s;
}

/* ------------------------------------------------------- tensor-parallel padding */

#define PAD_MAX_MULTIPLE (1 << 20)

/* The intermediate sizes padding extends, each a config field: the dense MLPs', each expert's, the shared expert's. */
enum { PAD_DENSE, PAD_EXPERT, PAD_SHARED };
static const char *const PAD_FIELD[3] = {"intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"};

/*
 * The axis of role that padding extends: 0 the rows (gate, up), 1 the columns (down); -1
 * none. *ps: the size it pads; *parts: the blocks of rows each padded on its own (a stacked
 * expert matrix's experts; 1 for the others).
 */
static int pad_axis(const job *j, qpk_role r, const struct pad_size **ps, int64_t *parts)
{
    const int k = r == QPK_ROLE_GATE || r == QPK_ROLE_UP || r == QPK_ROLE_DOWN ? PAD_DENSE
                  : r == QPK_ROLE_SHEXP_GATE || r == QPK_ROLE_SHEXP_UP || r == QPK_ROLE_SHEXP_DOWN ? PAD_SHARED
                  : qpk_role_is_expert(r) ? PAD_EXPERT : -1;
    if (k < 0 || j->pad[k].to == j->pad[k].from)
        return -1;
    *ps = &j->pad[k];
    *parts = k == PAD_EXPERT ? j->scfg->n_experts : 1;
    return r == QPK_ROLE_GATE || r == QPK_ROLE_UP || r == QPK_ROLE_SHEXP_GATE || r == QPK_ROLE_SHEXP_UP ||
                   r == QPK_ROLE_EXP_GATE || r == QPK_ROLE_EXP_UP
               ? 0
               : 1;
}

/*
 * One group of zero weights as a block of a quantized type. The zero-point types get their
 * zero point mid-range (8 of int4, 128 of int8z) and codes equal to it, so d * (q - z) is 0
 * whatever d, and GPTQ v1 (which stores zero - 1, so never a zero point of 0) holds the
 * block; the other types quantize zeros (scale 0). A type qpk does not quantize to (read
 * from a GGUF) gets all-zero bytes. Whichever, the block must decode to exact zeros, else
 * it is refused: padding is exact or not done.
 */
static qpk_status zero_block(uint32_t type, uint32_t group, uint8_t *out, const char *name, qpk_err *e)
{
    const size_t bb = qpk_type_block_bytes(type, group);
    float *x = calloc(group, sizeof *x);
    int32_t *q = malloc(group * sizeof *q);
    if (!x || !q) {
        free(x), free(q);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    memset(out, 0, bb);
    qpk_err ignored = {0};
    if (type == QPK_TYPE_INT4 || type == QPK_TYPE_INT8Z) {
        const qpk_qparams p = {0.0f, type == QPK_TYPE_INT4 ? 8 : 128};
        for (uint32_t k = 0; k < group; k++)
            q[k] = p.z;
        qpk_pack_group(type, group, &p, q, out);
    } else if (qpk_quantize_row(type, group, x, group, out, &ignored) != QPK_OK) {
        memset(out, 0, bb);
    }
    qpk_dequantize_row(type, group, out, group, x);
    bool zero = true;
    for (uint32_t k = 0; k < group; k++)
        zero &= x[k] == 0.0f;
    free(x), free(q);
    if (!zero)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %s: a group of zero weights of that type does not decode to "
                            "exact zeros, so --pad-intermediate cannot pad it", name, qpk_type_name(type));
    return QPK_OK;
}

/* n zero weights of type as stored (whole groups of a quantized type), malloc'd, in *row; its bytes in *bytes. */
static qpk_status zero_weights(uint32_t type, uint32_t group, int64_t n, const char *name, uint8_t **row, size_t *bytes,
                               qpk_err *e)
{
    const bool quantized = qpk_type_is_quantized(type);
    *bytes = quantized ? (size_t)(n / group) * qpk_type_block_bytes(type, group)
                       : (size_t)n * qpk_type_info_of(type)->elem_bytes;
    if (!(*row = calloc(*bytes ? *bytes : 1, 1)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (!quantized) /* +0.0 of every float type is all-zero bytes */
        return QPK_OK;
    const size_t bb = qpk_type_block_bytes(type, group);
    qpk_status s = *bytes ? zero_block(type, group, *row, name, e) : QPK_OK;
    for (size_t off = bb; s == QPK_OK && off < *bytes; off += bb)
        memcpy(*row + off, *row, bb);
    if (s != QPK_OK)
        free(*row), *row = NULL;
    return s;
}

/* gate/up's padding: n zero rows of cols weights, after the source's rows (each expert's). */
static qpk_status write_zero_rows(job *j, uint32_t type, uint32_t group, int64_t cols, int64_t n, const char *name,
                                  qpk_err *e)
{
    uint8_t *row;
    size_t bytes;
    QPK_TRY(zero_weights(type, group, cols, name, &row, &bytes, e));
    qpk_status s = QPK_OK;
    for (int64_t r = 0; r < n && s == QPK_OK; r++)
        s = out_write(j, row, bytes, e);
    free(row);
    return s;
}

/* down's padding for a tensor stored as floats: each source row, then its extra zero columns. */
static qpk_status write_float_rows_padded(job *j, const qpk_st_tensor *t, qpk_type type, int64_t extra,
                                          const char *name, qpk_err *e)
{
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const size_t esize = qpk_type_info_of(type)->elem_bytes;
    uint8_t *tail = NULL, *row = malloc((size_t)cols * esize);
    size_t tail_bytes = 0;
    if (!row)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status s = zero_weights(type, 0, extra, name, &tail, &tail_bytes, e);
    for (int64_t r = 0; r < rows && s == QPK_OK; r++) {
        const uint64_t first = (uint64_t)r * (uint64_t)cols;
        qpk_st_to_f32(t, first, (size_t)cols, j->rows_f32); /* exact: every float type widens to f32 */
        s = floats_to(j, t, first, j->rows_f32, (size_t)cols, type, row, e);
        if (s == QPK_OK)
            s = out_write(j, row, (size_t)cols * esize, e);
        if (s == QPK_OK)
            s = out_write(j, tail, tail_bytes, e);
        j->done += (uint64_t)cols * qpk_st_dtype_size(t->dtype);
        if (s == QPK_OK && (r & 255) == 255)
            s = poll(j, name, e);
    }
    free(tail), free(row);
    return s;
}

/*
 * A padded tensor's plan: its padded shape, and whether padding is exact for its type:
 * down's new columns whole groups of zeros (a group straddling the old edge would change
 * the scale of real weights), not behind an input permutation, and zero groups of the
 * type decoding to exact zeros.
 */
static qpk_status pad_plan(job *j, qpk_sink_tensor *p, bool permuted, const char *name, qpk_err *e)
{
    const struct pad_size *ps;
    int64_t parts;
    const int axis = pad_axis(j, p->role, &ps, &parts);
    if (axis < 0)
        return QPK_OK;
    const int64_t extra = ps->to - ps->from;
    p->dims[axis] = axis == 0 ? parts * ps->to : ps->to;
    if (axis == 1 && permuted)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s takes its input permuted (act-order): --pad-intermediate "
                            "does not pad permuted columns; store this model without the permutation", name);
    if (!qpk_type_is_quantized(p->type))
        return QPK_OK;
    if (axis == 1 && extra % p->group_size)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %s in groups of %u: padding %s %lld to %lld adds %lld "
                            "column(s), not whole groups, so the padded groups would not be exact zeros; choose a "
                            "multiple that pads by whole groups of %u", name, qpk_type_name(p->type), p->group_size,
                            PAD_FIELD[ps - j->pad], (long long)ps->from, (long long)ps->to, (long long)extra,
                            p->group_size);
    uint8_t *row;
    size_t bytes;
    QPK_TRY(zero_weights(p->type, p->group_size, p->group_size, name, &row, &bytes, e));
    free(row);
    return QPK_OK;
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
    for (int64_t k = 0; q->parts && k < q->n_parts; k++)
        note_sources(j, &q->parts[k]);
    if (q->parts)
        return;
    const qpk_st_tensor *parts[4] = {q->qweight, q->qzeros, q->scales, q->g_idx};
    for (int k = 0; k < 4; k++)
        if (parts[k])
            note_source(j, parts[k], NULL);
}


/* A GPTQ/AWQ linear as qpk blocks, exactly, chunk by chunk on the pool; its input permutation with it. */
static qpk_status write_imported(job *j, const qpk_qlinear *q, const char *name, qpk_err *e)
{
    const size_t row_bytes = qpk_type_row_bytes(q->type, q->group, q->cols);
    int64_t chunk = (int64_t)(QUANT_CHUNK_BYTES / row_bytes) / IMPORT_TASK_ROWS * IMPORT_TASK_ROWS;
    chunk = chunk < IMPORT_TASK_ROWS ? IMPORT_TASK_ROWS : chunk;
    const int64_t max_tasks = chunk / IMPORT_TASK_ROWS;
    import_job m = {q, 0, 0, row_bytes, malloc((size_t)chunk * row_bytes), calloc((size_t)max_tasks, sizeof(qpk_status)),
                    calloc((size_t)max_tasks, sizeof(qpk_err))};
    qpk_status s = m.out && m.status && m.errs ? out_begin(j, e) : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    const double per_row = (double)qpk_qlinear_source_bytes(q) / (double)q->rows;
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
    QPK_TRY(out_end(j, q->perm, e));
    note_sources(j, q);
    return QPK_OK;
}

/* A tensor of the layer the calibration has just quantized: its bytes come from there. */
static qpk_status write_calibrated(job *j, size_t i, const char *name, qpk_err *e)
{
    const qpk_sink_tensor *p = &j->plan[i];
    const qpk_st_tensor *t = qpk_checkpoint_tensor(j->ck, p->role, p->layer); /* its provenance hash */
    if (!t)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory gathering the experts of '%s'", name);
    uint32_t type, group;
    const void *bytes;
    size_t n;
    qpk_calib_tensor(j->calib, p->role, &type, &group, &bytes, &n);
    if (type != p->type || group != p->group_size) /* the plan and the calibration read the same rules */
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "tensor '%s': calibrated as %s, planned as %s", name,
                            qpk_type_name(type), qpk_type_name(p->type));
    QPK_TRY(out_begin(j, e));
    QPK_TRY(out_write(j, bytes, n, e));
    QPK_TRY(out_end(j, NULL, e));
    j->done += t->nbytes;
    note_source(j, t, NULL);
    qpk_checkpoint_release(j->ck, p->role, p->layer);
    return QPK_OK;
}

/*
 * --imatrix: the importance of each input column of tensor (role, layer), the mean square
 * llama-imatrix measured (sum2 / counts; a matrix nothing reached weighs its columns alike),
 * one vector per matrix (a stacked expert tensor: per expert), malloc'd in *imp; NULL when the
 * type takes none (qpk's grids) or the file has no entry for the tensor (said once, as
 * llama-quantize does: it is then quantized unweighted).
 */
static qpk_status imp_for(job *j, const qpk_sink_tensor *p, int64_t cols, const char *name, float **imp,
                          int64_t *n_mat, qpk_err *e)
{
    *imp = NULL, *n_mat = 1;
    if (!j->imat || !qpk_type_is_quantized(p->type) || qpk_type_has_grid(p->type) || !qpk_role_is_matrix(p->role))
        return QPK_OK;
    char gname[QPK_MAX_NAME];
    qpk_gguf_tensor_name(gname, sizeof gname, p->role, p->layer);
    const qpk_imatrix_entry *x = qpk_imatrix_find(j->imat, gname);
    if (!x) {
        /* llama-imatrix never has the embedding (a row lookup, no product to collect from): no news */
        if (j->o->cb.log && p->role != QPK_ROLE_EMBED) {
            char msg[QPK_MAX_NAME * 2 + 64];
            snprintf(msg, sizeof msg, "%s has no entry %s in the importance matrix: quantized unweighted", name, gname);
            j->o->cb.log(j->o->cb.ud, QPK_LOG_WARN, msg);
        }
        return QPK_OK;
    }
    const int64_t experts = qpk_role_is_expert(p->role) ? j->scfg->n_experts : 1;
    if (x->n_per_row != cols || (x->n_mat != 1 && x->n_mat != experts))
        return qpk_err_setf(e, QPK_E_MISMATCH, "importance matrix entry %s has %lld values per row in %lld matrices; "
                            "%s has %lld columns%s", gname, (long long)x->n_per_row, (long long)x->n_mat, name,
                            (long long)cols, experts > 1 ? " and an entry per expert" : "");
    if (!(*imp = malloc((size_t)(x->n_mat * cols) * sizeof **imp)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (int64_t k = 0; k < x->n_mat * cols; k++) {
        const float count = x->counts[k / cols];
        (*imp)[k] = count > 0 ? x->sum2[k] / count : 1.0f;
    }
    *n_mat = x->n_mat;
    return QPK_OK;
}

/* A tensor of a Hugging Face folder: from the calibration, imported, or from its float values. */
static qpk_status write_from_folder(job *j, size_t i, const char *name, qpk_err *e)
{
    const qpk_sink_tensor *p = &j->plan[i];
    if (j->calib && qpk_role_is_per_layer(p->role))
        return write_calibrated(j, i, name, e);
    const qpk_qlinear *q = qpk_checkpoint_qlinear(j->ck, p->role, p->layer);
    if (q)
        return write_imported(j, q, name, e);
    const qpk_st_tensor *t = qpk_checkpoint_tensor(j->ck, p->role, p->layer);
    if (!t)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory gathering the experts of '%s'", name);
    const uint32_t type = p->type, group = p->group_size;
    const struct pad_size *ps = NULL;
    int64_t parts = 1;
    const int axis = pad_axis(j, p->role, &ps, &parts);
    const int64_t extra = axis >= 0 ? ps->to - ps->from : 0;
    bool as_is = qpk_st_keep_type(t->dtype) == type && t->dtype != QPK_ST_F64 && axis != 1;
    uint8_t *tail = NULL;
    size_t tail_bytes = 0;
    qpk_status s = out_begin(j, e);
    if (s == QPK_OK && axis == 1 && qpk_type_is_quantized(type))
        s = zero_weights(type, group, extra, name, &tail, &tail_bytes, e);
    /* gate/up padded: each block of rows (each expert's, or the whole matrix), then its zero rows */
    if (axis != 0)
        parts = 1;
    const uint64_t part_rows = (uint64_t)t->shape[0] / (uint64_t)parts, cols = (uint64_t)t->shape[t->ndim - 1];
    float *imp = NULL;
    int64_t n_mat = 1;
    if (s == QPK_OK)
        s = imp_for(j, p, (int64_t)cols, name, &imp, &n_mat, e);
    for (int64_t k = 0; k < parts && s == QPK_OK; k++) {
        qpk_st_tensor part = *t;
        if (parts > 1) {
            part.shape[0] = (int64_t)part_rows, part.numel = part_rows * cols;
            part.nbytes = part.numel * qpk_st_dtype_size(t->dtype);
            part.data = (const uint8_t *)t->data + (uint64_t)k * part.nbytes;
        }
        /* one importance vector per expert: each part is one when padded, else the rows split among them */
        const float *part_imp = imp ? imp + (n_mat > 1 && parts > 1 ? (size_t)k * cols : 0) : NULL;
        const int64_t imp_rows = parts > 1 || n_mat == 1 ? (int64_t)part_rows : (int64_t)part_rows / n_mat;
        s = qpk_type_is_quantized(type) ? quantize_tensor(j, &part, type, group, tail, tail_bytes, part_imp, imp_rows, e)
            : axis == 1                 ? write_float_rows_padded(j, &part, (qpk_type)type, extra, name, e)
            : as_is                     ? copy_bytes(j, &part, e)
                                        : convert_values(j, &part, (qpk_type)type, e);
        if (s == QPK_OK && axis == 0)
            s = write_zero_rows(j, type, group, (int64_t)cols, extra, name, e);
    }
    free(tail), free(imp);
    if (s == QPK_OK)
        s = out_end(j, NULL, e);
    /* Stored as is (and not padded): the source's bytes, so the .qpk writer's hash serves both. */
    uint64_t h = qpk_sink_last_xxh3(j->sink);
    if (s == QPK_OK)
        note_source(j, t, as_is && axis < 0 && h ? &h : NULL);
    /* The experts gathered for this tensor are not read again: one stacked tensor in memory at a time. */
    qpk_checkpoint_release(j->ck, p->role, p->layer);
    return s;
}

/* ------------------------------------------------ any source's qpk matrices */

#define COPY_ROWS_BYTES (16u << 20) /* bytes per write when copying a stored tensor: whole rows */

/*
 * A tensor kept as the source stores it: its bytes (checked once more), in pieces of whole
 * rows; padded, its zero rows after them (gate, up) or its zero groups after each row (down).
 */
static qpk_status copy_matrix(job *j, const qpk_matrix *m, qpk_role role, const char *name, qpk_err *e)
{
    const size_t row = qpk_matrix_row_bytes(m);
    const uint64_t total = (uint64_t)row * (uint64_t)m->rows;
    const uint64_t chunk = row >= COPY_ROWS_BYTES ? row : COPY_ROWS_BYTES / row * row;
    const struct pad_size *ps = NULL;
    int64_t parts = 1;
    const int axis = pad_axis(j, role, &ps, &parts);
    QPK_TRY(out_begin(j, e));
    if (axis == 1) {
        uint8_t *tail;
        size_t tail_bytes;
        QPK_TRY(zero_weights(m->type, m->group_size, ps->to - ps->from, name, &tail, &tail_bytes, e));
        qpk_status s = QPK_OK;
        for (int64_t r = 0; r < m->rows && s == QPK_OK; r++) {
            s = out_write(j, (const uint8_t *)m->data + (size_t)r * row, row, e);
            if (s == QPK_OK)
                s = out_write(j, tail, tail_bytes, e);
            j->done += row;
            if (s == QPK_OK && (r & 255) == 255)
                s = poll(j, name, e);
        }
        free(tail);
        QPK_TRY(s);
        return out_end(j, m->perm, e);
    }
    /* gate/up padded: each block of rows (each expert's, or the whole matrix), then its zero rows */
    if (axis != 0)
        parts = 1;
    const uint64_t part_bytes = total / (uint64_t)parts;
    for (int64_t k = 0; k < parts; k++) {
        for (uint64_t off = 0; off < part_bytes; off += chunk) {
            size_t n = (size_t)(part_bytes - off < chunk ? part_bytes - off : chunk);
            QPK_TRY(out_write(j, (const uint8_t *)m->data + (uint64_t)k * part_bytes + off, n, e));
            j->done += n;
            QPK_TRY(poll(j, name, e));
        }
        if (axis == 0)
            QPK_TRY(write_zero_rows(j, m->type, m->group_size, m->cols, ps->to - ps->from, name, e));
    }
    return out_end(j, m->perm, e);
}

#define REQUANT_GROUP 32 /* ggml's blocks */

/*
 * Progress counts work, not bytes: a tensor written counts its source bytes, and
 * calibrating a layer counts this many times that layer's bytes (its statistics, search
 * and two passes over every window dwarf the copy; layers are alike, so the share done
 * and the time left follow the layers).
 */
#define CALIB_WORK_PER_BYTE 9u

/*
 * A linear GGUF cannot hold as it is, requantized: each row decoded exactly, put back in
 * input order (perm may be NULL), quantized to groups of 32 of the same grid (int8z ->
 * int8). keep (may be NULL) receives the bytes too, for the in-memory model.
 */
static qpk_status requantize_matrix(job *j, const qpk_matrix *m, size_t i, const char *name, qpk_err *e)
{
    const int64_t rows = m->rows, cols = m->cols;
    const uint32_t type = j->plan[i].type;
    const size_t in_row = qpk_matrix_row_bytes(m), out_row = qpk_type_row_bytes(type, REQUANT_GROUP, cols);
    float *stored = malloc((size_t)cols * sizeof *stored), *x = malloc((size_t)cols * sizeof *x);
    uint8_t *kept = j->kept ? malloc(out_row * (size_t)rows) : NULL, *row = malloc(out_row);
    qpk_status s = stored && x && row && out_row && (kept || !j->kept) ? out_begin(j, e)
                                                                       : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (int64_t r = 0; r < rows && s == QPK_OK; r++) {
        qpk_dequantize_row(m->type, m->group_size, (const uint8_t *)m->data + (size_t)r * in_row, cols, stored);
        for (int64_t c = 0; c < cols; c++) {
            int32_t k = (int32_t)c;
            if (m->perm)
                memcpy(&k, m->perm + c, 4); /* a permutation: every source checks it */
            x[k] = stored[c];
        }
        uint8_t *dst = kept ? kept + (size_t)r * out_row : row;
        s = qpk_quantize_row(type, REQUANT_GROUP, x, cols, dst, e);
        if (s == QPK_OK) { /* the certificate's measure: the new weights against the exact ones */
            qpk_dequantize_row(type, REQUANT_GROUP, dst, cols, stored);
            for (int64_t c = 0; c < cols; c++) {
                const double d = (double)stored[c] - x[c];
                j->req_max = fabs(d) > j->req_max ? fabs(d) : j->req_max;
                j->req_err2 += d * d, j->req_ref2 += (double)x[c] * x[c];
            }
        }
        if (s == QPK_OK)
            s = out_write(j, dst, out_row, e);
        else
            qpk_err_prefix(e, s, "%s row %lld", name, (long long)r);
        j->done += in_row;
        if (s == QPK_OK && (r & 255) == 255)
            s = poll(j, name, e);
    }
    free(stored), free(x), free(row);
    if (s == QPK_OK)
        s = out_end(j, NULL, e);
    if (s != QPK_OK) {
        free(kept);
        return s;
    }
    if (j->kept)
        j->kept[i] = kept;
    return QPK_OK;
}

/* Tensor i of any source: kept as it is, or requantized for the target. */
static qpk_status write_from_matrix(job *j, size_t i, const char *name, qpk_err *e)
{
    const qpk_sink_tensor *p = &j->plan[i];
    qpk_matrix m;
    QPK_TRY(qpk_source_matrix(j->src, p->role, p->layer, &m, e));
    QPK_TRY(qpk_source_verify(j->src, p->role, p->layer, e));
    return j->requant[i] ? requantize_matrix(j, &m, i, name, e) : copy_matrix(j, &m, p->role, name, e);
}

/* Calibrates layer l (GPTQ/AWQ): an explicit step at the layer boundary, before its tensors are written. */
static qpk_status calibrate_layer(job *j, const qpk_config *c, int l, qpk_err *e)
{
    char what[96];
    snprintf(what, sizeof what, "%s: calibrating layer %d of %lld", qpk_method_name(j->o->method), l + 1,
             (long long)c->n_layers);
    QPK_TRY(poll(j, what, e));
    QPK_TRY(qpk_calib_layer(j->calib, l, &j->times, e));
    j->done += j->calib_work[l];
    return poll(j, what, e);
}

/*
 * Tensor i, just written, in the certificate: exact (its stored values carried bit for bit:
 * tests read every exact path back and compare the weights), or how it changed: the
 * engine requantized it (max |dw| and the relative Frobenius error ||dW|| / ||W|| against
 * the exact weights), or the target's layout rounded it (the sink's largest change).
 */
static void certify(job *j, size_t i, const char *name)
{
    if (!j->certify || !qpk_role_is_matrix(j->plan[i].role))
        return;
    const double rounded = qpk_sink_last_change(j->sink);
    const double change = j->requant[i] ? j->req_max : rounded;
    const double rel = j->requant[i] && j->req_ref2 > 0 ? sqrt(j->req_err2 / j->req_ref2) : 0;
    if (!j->requant[i] && rounded == 0) {
        j->n_exact++;
        if (j->cert)
            cJSON_AddStringToObject(j->cert, name, "exact");
        return;
    }
    j->n_changed++;
    j->worst_change = change > j->worst_change ? change : j->worst_change;
    j->worst_rel = rel > j->worst_rel ? rel : j->worst_rel;
    if (!j->cert)
        return;
    cJSON *o = cJSON_AddObjectToObject(j->cert, name);
    cJSON_AddStringToObject(o, "how", j->requant[i] ? "requantized" : "rounded by the layout");
    cJSON_AddNumberToObject(o, "max_abs_change", change);
    if (j->requant[i])
        cJSON_AddNumberToObject(o, "rel_frobenius", rel);
}

/* Every tensor in the canonical order: embedding, layer by layer (calibrated first), final norm, head. */
static qpk_status write_tensors(job *j, qpk_err *e)
{
    const qpk_config *c = j->cfg;
    int calibrated = -1;
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        const qpk_sink_tensor *p = &j->plan[i];
        char name[QPK_MAX_NAME];
        qpk_tensor_name(name, sizeof name, p->role, p->layer);
        if (j->calib && p->layer > calibrated) {
            QPK_TRY(calibrate_layer(j, c, p->layer, e));
            calibrated = p->layer;
        }
        j->req_max = j->req_err2 = j->req_ref2 = 0;
        QPK_TRY(j->ck && !j->requant[i] ? write_from_folder(j, i, name, e) : write_from_matrix(j, i, name, e));
        certify(j, i, name);
        const qpk_qlinear *q = j->ck && j->requant[i] ? qpk_checkpoint_qlinear(j->ck, p->role, p->layer) : NULL;
        if (q) /* requantized from an imported linear: its parts are still what it was made of */
            note_sources(j, q);
    }
    return QPK_OK;
}

/* ------------------------------------------------------------ the plan */

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

/*
 * What is embedded must read back: every file strict JSON, and a tokenizer whose ids the
 * vocabulary holds (as GGUF export requires). One that qpk's tokenizer cannot read is
 * embedded all the same, with a warning: conversion and token-id evaluation need no text.
 */
static qpk_status check_embedded(const job *j, const char *name, const char *data, size_t len, qpk_err *e)
{
    if (!strcmp(name, "chat_template.jinja")) /* a template: text, carried as it is into every output */
        return qpk_utf8_valid_prefix(data, len) == len && !memchr(data, 0, len)
                   ? QPK_OK
                   : qpk_err_setf(e, QPK_E_CORRUPT, "chat_template.jinja is not UTF-8 text");
    QPK_TRY(qpk_json_check(name, data, len, e));
    if (strcmp(name, "tokenizer.json") != 0)
        return QPK_OK;
    qpk_tokenizer *tok;
    qpk_err why = {0};
    if (qpk_tokenizer_load(&tok, data, len, &why) != QPK_OK) {
        if (why.status == QPK_E_NOMEM)
            return qpk_err_setf(e, why.status, "%s", why.msg);
        char msg[1000];
        snprintf(msg, sizeof msg, "tokenizer.json is embedded, but qpk's tokenizer cannot read it (%s): no text can be "
                 "tokenized with this file (for calibration or perplexity)", why.msg);
        if (j->o->cb.log)
            j->o->cb.log(j->o->cb.ud, QPK_LOG_WARN, msg);
        return QPK_OK;
    }
    qpk_status s = qpk_tokenizer_fits(tok, j->cfg->vocab_size, e);
    qpk_tokenizer_free(tok);
    return s;
}

/* The model's files, in a fixed order: those a folder has are checked before they are carried. */
static qpk_status gather_files(job *j, qpk_err *e)
{
    for (size_t i = 0; i < sizeof EMBEDDED_FILES / sizeof *EMBEDDED_FILES; i++) {
        char *data;
        size_t len;
        QPK_TRY(qpk_source_file(j->src, EMBEDDED_FILES[i], &data, &len, e));
        if (!data) {
            if (j->ck && j->o->cb.log && strcmp(EMBEDDED_FILES[i], "chat_template.jinja")) { /* optional, usually absent */
                char msg[128];
                snprintf(msg, sizeof msg, "no %s in the model folder: not embedded", EMBEDDED_FILES[i]);
                j->o->cb.log(j->o->cb.ud, QPK_LOG_INFO, msg);
            }
            continue;
        }
        j->files[j->n_files++] = (qpk_sink_file){EMBEDDED_FILES[i], data, len};
        if (j->ck)
            QPK_TRY(check_embedded(j, EMBEDDED_FILES[i], data, len, e));
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
    cJSON_AddStringToObject(q, "method", qpk_method_name(o->imatrix ? QPK_METHOD_IMATRIX : o->method));
    if (o->preset)
        cJSON_AddStringToObject(q, "preset", qpk_preset_name(o->preset));
    cJSON_AddStringToObject(q, "type", o->quant ? qpk_type_name((uint32_t)o->quant) : "none");
    if (o->group == QPK_GROUP_ROW)
        cJSON_AddStringToObject(q, "group", "row");
    else
        cJSON_AddNumberToObject(q, "group", o->group);
    bool float_embedding = (!o->quant && !o->preset) || (qpk_output_is_folder(o->to) && o->to != QPK_OUT_MLX);
    cJSON_AddStringToObject(q, "embedding", o->preset ? "as the preset" : float_embedding ? "as --dtype"
                                            : o->to == QPK_OUT_MLX ? "as the linears" : "int8");
    cJSON_AddStringToObject(q, "norms_and_biases", o->quant || o->preset ? "f32" : "as --dtype");
    if (o->imatrix) { /* llama.cpp's statistics instead of a calibration run */
        cJSON *im = cJSON_AddObjectToObject(q, "importance_matrix");
        add_text(im, "file", o->imatrix);
        cJSON_AddStringToObject(im, "statistic", "mean x^2 per input column, as llama-imatrix measured it");
        cJSON_AddStringToObject(im, "applies_to", "ggml block types");
    } else if (o->method != QPK_METHOD_RTN) {
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
        cJSON_AddStringToObject(cal, "next_layer_inputs", qpk_calib_feeds_float(o->method) ? "float" : "quantized");
        if (o->method == QPK_METHOD_IMATRIX) {
            cJSON_AddStringToObject(cal, "statistic", "mean x^2 per input column");
            cJSON_AddStringToObject(cal, "applies_to", "ggml block types; grid-type tensors (int8, int4, int4s) are "
                                    "round-to-nearest");
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
            char proxy[64];
            snprintf(proxy, sizeof proxy, "%s/g%d", qpk_type_name(QPK_AWQ_PROXY_TYPE), QPK_AWQ_PROXY_GROUP);
            cJSON_AddStringToObject(cal, "block_types_searched_as", proxy);
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
    if (h->method == QPK_HFQ_CT) { /* one scheme per config group */
        cJSON_AddStringToObject(src, "format", "compressed-tensors");
        cJSON_AddStringToObject(src, "layout", "pack-quantized");
        cJSON *groups = cJSON_AddObjectToObject(src, "config_groups");
        for (int k = 0; k < h->n_ct; k++) {
            cJSON *g = cJSON_AddObjectToObject(groups, h->ct[k].name);
            cJSON_AddNumberToObject(g, "bits", h->ct[k].bits);
            if (h->ct[k].group == -1)
                cJSON_AddStringToObject(g, "group_size", "row");
            else
                cJSON_AddNumberToObject(g, "group_size", (double)h->ct[k].group);
            cJSON_AddBoolToObject(g, "sym", h->ct[k].sym);
            cJSON_AddBoolToObject(g, "actorder_group", h->ct[k].actorder);
        }
    } else if (h->method == QPK_HFQ_MLX) { /* the model's scheme, and each module's own */
        cJSON_AddStringToObject(src, "format", "mlx");
        cJSON_AddStringToObject(src, "layout", "affine");
        cJSON_AddNumberToObject(src, "bits", h->bits);
        cJSON_AddNumberToObject(src, "group_size", (double)h->group);
        cJSON *mods = h->n_mlx ? cJSON_AddObjectToObject(src, "modules") : NULL;
        for (int k = 0; k < h->n_mlx; k++) {
            if (!h->mlx[k].bits) {
                cJSON_AddFalseToObject(mods, h->mlx[k].name);
                continue;
            }
            cJSON *g = cJSON_AddObjectToObject(mods, h->mlx[k].name);
            cJSON_AddNumberToObject(g, "bits", h->mlx[k].bits);
            cJSON_AddNumberToObject(g, "group_size", (double)h->mlx[k].group);
        }
    } else {
        cJSON_AddStringToObject(src, "format", h->method == QPK_HFQ_GPTQ ? "gptq" : "awq");
        cJSON_AddStringToObject(src, "layout", h->method == QPK_HFQ_AWQ ? "gemm" : h->v2 ? "gptq_v2" : "gptq");
        cJSON_AddNumberToObject(src, "bits", h->bits);
        if (h->group == -1)
            cJSON_AddStringToObject(src, "group_size", "row");
        else
            cJSON_AddNumberToObject(src, "group_size", (double)h->group);
        cJSON_AddBoolToObject(src, "sym", h->sym);
        cJSON_AddBoolToObject(src, "desc_act", h->desc_act);
    }
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

/*
 * The file version follows from the model and its tensors: the version that first describes
 * the config (3 for the family beyond dense qwen2), the newest version among the tensors'
 * types (each type's row says which version brought it), and 2 for a permuted input.
 * Files that need nothing newer stay version 1, readable by version 1 readers.
 */
static int format_version(const job *j)
{
    uint32_t v = qpk_config_min_version(j->cfg);
    for (size_t i = 0; i < qpk_model_n_tensors(j->cfg); i++) {
        const uint32_t tv = qpk_type_info_of(j->plan[i].type)->version;
        const uint32_t pv = j->plan[i].permuted ? qpk_type_info_of(QPK_TYPE_I32)->version : 1;
        v = tv > v ? tv : v;
        v = pv > v ? pv : v;
    }
    return (int)v;
}

static cJSON *folder_metadata(const job *j, const qpk_checkpoint *ck, const qpk_convert_opts *o, cJSON **prov)
{
    cJSON *m = cJSON_CreateObject();
    cJSON *cfg = qpk_config_cjson(j->cfg); /* padded or not */
    if (!m || !cfg) {
        cJSON_Delete(m);
        cJSON_Delete(cfg);
        return NULL;
    }
    cJSON_AddStringToObject(m, "format", "qpk");
    cJSON_AddNumberToObject(m, "format_version", format_version(j));
    cJSON_AddStringToObject(m, "architecture", qpk_arch_name(qpk_checkpoint_config(ck)->arch));
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

/* A GGUF's recipe: imported, from which file type, and how many matrices came in each ggml type. */
static cJSON *gguf_recipe(const qpk_gguf *g, const qpk_config *c)
{
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "method", "imported");
    cJSON *src = cJSON_AddObjectToObject(q, "source");
    cJSON_AddStringToObject(src, "format", "gguf");
    qpk_gguf_value v;
    if (qpk_gguf_find(g, "general.file_type", &v) && v.type == QPK_GGUF_U32)
        cJSON_AddNumberToObject(src, "file_type", (double)v.num.u);
    cJSON *types = cJSON_AddObjectToObject(q, "tensors");
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        char name[64];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_gguf_tensor_name(name, sizeof name, role, layer);
        const char *tn = qpk_ggml_type_name(qpk_gguf_find_tensor(g, name)->type);
        cJSON *n = cJSON_GetObjectItemCaseSensitive(types, tn);
        if (n)
            cJSON_SetNumberValue(n, n->valuedouble + 1);
        else
            cJSON_AddNumberToObject(types, tn, 1);
    }
    return q;
}

/* The one builder of .qpk metadata: the keys in one order, the version from the tensors, the recipe by source. */
static cJSON *build_metadata(job *j, cJSON **prov)
{
    *prov = NULL;
    if (j->ck)
        return folder_metadata(j, j->ck, j->o, prov);
    if (qpk_source_qpk(j->src)) { /* a .qpk re-written: its own metadata, the version following the tensors */
        size_t len;
        const char *text = qpk_metadata(qpk_source_qpk(j->src), &len);
        cJSON *m = cJSON_ParseWithLength(text, len);
        if (m)
            cJSON_ReplaceItemInObjectCaseSensitive(m, "format_version", cJSON_CreateNumber(format_version(j)));
        cJSON *cfg = m && j->cfg != j->scfg ? qpk_config_cjson(j->cfg) : NULL;
        if (cfg)
            cJSON_ReplaceItemInObjectCaseSensitive(m, "config", cfg);
        return m;
    }
    cJSON *m = cJSON_CreateObject();
    cJSON *cfg = qpk_config_cjson(j->cfg);
    if (!m || !cfg) {
        cJSON_Delete(m), cJSON_Delete(cfg);
        return NULL;
    }
    cJSON_AddStringToObject(m, "format", "qpk");
    cJSON_AddNumberToObject(m, "format_version", format_version(j));
    cJSON_AddStringToObject(m, "architecture", qpk_arch_name(j->cfg->arch));
    cJSON_AddItemToObject(m, "config", cfg);
    cJSON_AddBoolToObject(m, "tied", j->cfg->tie_word_embeddings);
    cJSON_AddItemToObject(m, "quantization", gguf_recipe(qpk_source_gguf(j->src), j->cfg));
    *prov = cJSON_AddObjectToObject(m, "provenance");
    cJSON_AddStringToObject(*prov, "tool", "qconvert");
    cJSON_AddStringToObject(*prov, "version", QPK_VERSION_STRING);
    add_text(*prov, "command", j->o->command);
    return m;
}

/*
 * The config holds the padded size (what the tensors are); the provenance the size the
 * model had, so the padding can be told and undone. A model padded twice keeps its first size.
 */
static void note_padding(cJSON *meta, const job *j)
{
    bool any = false;
    for (int k = 0; k < 3; k++)
        any |= j->pad[k].to != j->pad[k].from;
    if (!any)
        return;
    cJSON *prov = cJSON_GetObjectItemCaseSensitive(meta, "provenance");
    if (!cJSON_IsObject(prov)) {
        cJSON_DeleteItemFromObjectCaseSensitive(meta, "provenance");
        prov = cJSON_AddObjectToObject(meta, "provenance");
    }
    cJSON *old = cJSON_DetachItemFromObjectCaseSensitive(prov, "padding");
    const cJSON *old_sizes = cJSON_GetObjectItemCaseSensitive(old, "sizes");
    cJSON *pad = cJSON_AddObjectToObject(prov, "padding"), *sizes = cJSON_AddObjectToObject(pad, "sizes");
    for (int k = 0; k < 3; k++) {
        if (j->pad[k].to == j->pad[k].from)
            continue;
        const cJSON *was = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(old_sizes, PAD_FIELD[k]),
                                                            "from");
        cJSON *sz = cJSON_AddObjectToObject(sizes, PAD_FIELD[k]);
        cJSON_AddNumberToObject(sz, "from", cJSON_IsNumber(was) ? was->valuedouble : (double)j->pad[k].from);
        cJSON_AddNumberToObject(sz, "to", (double)j->pad[k].to);
    }
    cJSON_Delete(old);
    cJSON_AddNumberToObject(pad, "multiple", (double)j->o->pad_intermediate);
    cJSON_AddStringToObject(pad, "how", "zero rows appended to gate_proj and up_proj (each expert's), zero columns to "
                            "down_proj (whole zero groups when quantized): the logits are the unpadded model's");
}

/* The recipe says what was requantized for the target, and why. */
static void mark_requantized(cJSON *meta, int n)
{
    cJSON *q = cJSON_GetObjectItemCaseSensitive(meta, "quantization");
    if (!cJSON_IsObject(q)) {
        cJSON_DeleteItemFromObjectCaseSensitive(meta, "quantization");
        q = cJSON_AddObjectToObject(meta, "quantization");
    }
    if (cJSON_GetObjectItemCaseSensitive(q, "permuted_inputs"))
        cJSON_ReplaceItemInObjectCaseSensitive(q, "permuted_inputs", cJSON_CreateNumber(0));
    cJSON_DeleteItemFromObjectCaseSensitive(q, "requantized"); /* a second pass finds nothing: say so, once */
    cJSON *r = cJSON_AddObjectToObject(q, "requantized");
    cJSON_AddStringToObject(r, "why", "act-order groups are not runs of 32 input columns; int8z codes whose "
                            "offset from the zero leaves Q8_0's int8");
    cJSON_AddStringToObject(r, "method", "rtn");
    cJSON_AddNumberToObject(r, "group", REQUANT_GROUP);
    cJSON_AddNumberToObject(r, "linears", n);
}

/* Room for one source row in f32 per thread: the widest row of any tensor the model has. */
static qpk_status job_buffers(job *j, const qpk_config *c, qpk_err *e)
{
    int64_t widest = 1;
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role r;
        int l;
        int64_t d[2];
        qpk_model_tensor_at(c, i, &r, &l);
        const int64_t cols = qpk_role_shape(c, r, d) == 2 ? d[1] : d[0];
        widest = cols > widest ? cols : widest;
    }
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

/* ------------------------------------------------------------ the engine */

/* Options that contradict each other or the source, refused before any work. */
static qpk_status check_options(const job *j, qpk_sink *sink, qpk_err *e)
{
    const qpk_convert_opts *o = j->o;
    const qpk_output to = qpk_sink_kind(sink);
    if (o->dtype >= 0 && o->dtype != QPK_TYPE_F32 && o->dtype != QPK_TYPE_F16 && o->dtype != QPK_TYPE_BF16)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the float type must be f32, f16 or bf16 (or each tensor's own)");
    if (o->quant && !qpk_type_is_quant_target((uint32_t)o->quant)) {
        char types[128];
        qpk_quant_type_list(types, sizeof types, ", ", " or ");
        const char *name = qpk_type_name((uint32_t)o->quant);
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s is not a type qpk quantizes to: %s", name ? name : "?", types);
    }
    const bool fixed_block = o->quant && qpk_type_info_of((uint32_t)o->quant)->block;
    if (o->quant && !fixed_block && o->group != QPK_GROUP_ROW && !qpk_group_ok((uint32_t)o->quant, o->group, 0))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a group of %u weights: groups are multiples of %d, or a whole row",
                            o->group, QPK_GROUP_QUANTUM);
    if (o->quant && o->preset)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a type for the linears and a preset mix: one or the other");
    if (o->method != QPK_METHOD_RTN && !o->quant && !o->preset)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s needs the type it calibrates for", qpk_method_name(o->method));
    if (o->imatrix && o->method != QPK_METHOD_RTN && o->method != QPK_METHOD_IMATRIX)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "an importance matrix holds each input column's mean square: %s "
                            "needs more (GPTQ the whole input covariance, AWQ activation magnitudes and samples), so "
                            "it calibrates with --calib; --imatrix goes with --method imatrix", qpk_method_name(o->method));
    if (o->imatrix && o->calib.tokens)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--imatrix takes the place of a calibration run: give it or "
                            "calibration data, not both");
    if (o->imatrix && !o->quant && !o->preset)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--imatrix weighs quantization: give a type or a preset");
    if (o->method != QPK_METHOD_RTN && !o->calib.tokens && !o->imatrix)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s needs calibration tokens", qpk_method_name(o->method));
    if (o->save_imatrix && (o->method == QPK_METHOD_RTN || !o->calib.tokens))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--save-imatrix writes a calibration run's statistics: it goes "
                            "with --method gptq, awq, awq+gptq or imatrix and calibration data");
    /* The importance weights steer ggml's block fits; qpk's grid rules take none (a weighted clip search
     * was tried: on the outlier fixture it helped int4 g32 by 12% and hurt g128 by 14%), so the
     * recipe would record what did not happen. */
    if ((o->method == QPK_METHOD_IMATRIX || o->imatrix) && o->quant && qpk_type_has_grid((uint32_t)o->quant))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "imatrix weighs the scale searches of ggml's block types (q4_1 ... "
                            "q6_k, the presets); %s is quantized by its grid's rule, which takes no importance: "
                            "round-to-nearest, GPTQ or AWQ apply to it", qpk_type_name((uint32_t)o->quant));
    if (o->requantize && to != QPK_OUT_GGUF && to != QPK_OUT_QPK)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "requantizing makes linears fit GGUF: it goes with a GGUF output "
                            "(or a .qpk, the file such a GGUF is made from)");
    const bool changes = o->quant || o->preset || o->method != QPK_METHOD_RTN || o->n_rules || o->dtype >= 0 ||
                         o->calib.awq_fold_only;
    if (!j->ck && changes)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s is a %s: its tensors are carried as they are; types, rules and "
                            "calibration apply to a Hugging Face folder", qpk_source_path(j->src),
                            qpk_source_format(j->src));
    if (j->ck && qpk_checkpoint_hfq(j->ck)->method != QPK_HFQ_NONE &&
        (o->quant || o->preset || o->method != QPK_METHOD_RTN))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s is already quantized (%s): its linears are imported exactly, "
                            "never requantized; a quantization type or method does not apply", qpk_source_path(j->src),
                            qpk_source_format(j->src));
    if (!qpk_output_is_folder(to))
        return QPK_OK;
    /* What a GPTQ/AWQ/compressed-tensors/MLX folder cannot hold, known from the options alone. */
    const bool awq = to == QPK_OUT_AWQ, mlx = to == QPK_OUT_MLX;
    const char *layout = awq ? "AWQ" : to == QPK_OUT_CT ? "compressed-tensors" : mlx ? "MLX" : "GPTQ";
    if (o->calib.awq_fold_only)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "AWQ fold-only keeps the linears in f32, which a %s folder cannot "
                            "hold", layout);
    const unsigned folder = awq ? QPK_FOLDER_AWQ : to == QPK_OUT_CT ? QPK_FOLDER_CT : mlx ? QPK_FOLDER_MLX : QPK_FOLDER_GPTQ;
    char held[128];
    qpk_folder_type_list(folder, true, held, sizeof held);
    if (o->quant && !(qpk_type_info_of((uint32_t)o->quant)->folders & folder))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the %s layout holds linears quantized to %s only, not %s%s", layout,
                            held, qpk_type_name((uint32_t)o->quant),
                            awq && (qpk_type_info_of((uint32_t)o->quant)->folders & QPK_FOLDER_GPTQ)
                                ? " (a GPTQ folder holds it)" : "");
    for (size_t i = 0; i < o->n_rules; i++)
        if (qpk_type_is_quantized((uint32_t)o->rules[i].type) &&
            !(qpk_type_info_of((uint32_t)o->rules[i].type)->folders & folder))
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "the rule '%s' makes tensors %s: the %s layout holds linears "
                                "quantized to %s only", o->rules[i].pattern, qpk_type_name((uint32_t)o->rules[i].type),
                                layout, held);
    if (awq && o->quant && o->group == QPK_GROUP_ROW)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "AWQ's layout has groups of one size, not one per row: give a group "
                            "size (a GPTQ folder holds per-row groups)");
    if (mlx && o->quant && o->group != 32 && o->group != 64 && o->group != 128)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "MLX's groups are 32, 64 or 128 weights, not %s", 
                            o->group == QPK_GROUP_ROW ? "one per row" : "that group size");
    if (o->preset)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the %s preset mixes ggml's block types, which a %s folder cannot "
                            "hold: give a quantization type (%s)", qpk_preset_name(o->preset), layout, held);
    bool quantized_rule = false;
    for (size_t i = 0; i < o->n_rules; i++)
        quantized_rule |= qpk_type_is_quantized((uint32_t)o->rules[i].type);
    if (j->ck && !o->quant && !quantized_rule && qpk_checkpoint_hfq(j->ck)->method == QPK_HFQ_NONE && !mlx)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a %s folder stores the linears quantized: give a quantization type (%s)", layout,
                            held);
    return QPK_OK;
}

/* Tensor i of the plan: as a folder's rules make it, or as the source stores it; requantized where asked. */
static qpk_status plan_tensor(job *j, size_t i, qpk_output to, qpk_err *e)
{
    qpk_sink_tensor *p = &j->plan[i];
    qpk_model_tensor_at(j->cfg, i, &p->role, &p->layer);
    char name[QPK_MAX_NAME];
    qpk_tensor_name(name, sizeof name, p->role, p->layer);
    const qpk_qlinear *q = j->ck ? qpk_checkpoint_qlinear(j->ck, p->role, p->layer) : NULL;
    if (j->ck && !q) {
        const qpk_st_tensor *t = qpk_checkpoint_tensor_meta(j->ck, p->role, p->layer); /* experts not gathered yet */
        /* On the source's shapes: padding by whole groups leaves every real weight's group as it was. */
        QPK_TRY(qpk_tensor_plan(j->o, j->scfg, t, p->role, p->layer, name, &p->type, &p->group_size, e));
        if (j->calib)
            qpk_tensor_stored(j->o, p->role, &p->type, &p->group_size);
        p->ndim = t->ndim;
        memcpy(p->dims, t->shape, (size_t)t->ndim * sizeof *p->dims);
        QPK_TRY(pad_plan(j, p, false, name, e));
        j->total += t->nbytes;
        if (j->calib && p->layer >= 0) { /* calibrating a layer costs far more than writing it */
            j->calib_work[p->layer] += CALIB_WORK_PER_BYTE * t->nbytes;
            j->total += CALIB_WORK_PER_BYTE * t->nbytes;
        }
        return QPK_OK;
    }
    qpk_matrix m;
    QPK_TRY(qpk_source_matrix(j->src, p->role, p->layer, &m, e));
    p->type = m.type, p->group_size = m.group_size, p->permuted = m.perm != NULL;
    p->ndim = qpk_role_shape(j->cfg, p->role, p->dims);
    QPK_TRY(pad_plan(j, p, m.perm != NULL, name, e));
    j->total += q ? qpk_qlinear_source_bytes(q) : (uint64_t)qpk_matrix_row_bytes(&m) * (uint64_t)m.rows;
    /* The rule for GGUF (and the .qpk a GGUF is made from): what no ggml type holds as it is, requantized on request. */
    const bool linear = qpk_role_is_per_layer(p->role) && qpk_role_is_matrix(p->role);
    if (to == QPK_OUT_GGUF && m.perm && !qpk_type_has_grid(m.type))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s (%s) takes its input permuted: GGUF has no input permutation, "
                            "and only grid-quantized linears (int4, int4s, int8, int8z) are requantized into input "
                            "order; store this model without the permutation", name, qpk_type_name(m.type));
    if ((to == QPK_OUT_GGUF || to == QPK_OUT_QPK) && j->o->requantize && linear && qpk_type_has_grid(m.type) &&
        (m.perm || (m.type == QPK_TYPE_INT8Z &&
                   !qpk_gguf_holds_int8z(m.data, m.group_size,
                                         (uint64_t)m.rows * (uint64_t)(m.cols / m.group_size))))) {
        j->requant[i] = true;
        p->type = m.type == QPK_TYPE_INT8Z ? QPK_TYPE_INT8 : m.type;
        p->group_size = REQUANT_GROUP, p->permuted = false;
    }
    return QPK_OK;
}

/* The folder's name, or a file's without its extension: the model's name in GGUF. */
static void model_name(const qpk_source *src, char *buf, size_t cap)
{
    const char *path = qpk_source_path(src);
    if (qpk_source_kind_of(src) == QPK_SOURCE_HF) {
        folder_name(path, buf, cap);
        return;
    }
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t n = strlen(b);
    if (n > 4 && !strcmp(b + n - 4, ".qpk"))
        n -= 4;
    char *raw = strndup(b, n), *utf8 = raw ? qpk_utf8_dup(raw) : NULL; /* GGUF strings are UTF-8 */
    snprintf(buf, cap, "%s", utf8 ? utf8 : "");
    free(raw), free(utf8);
}

/* The model as written, in memory: the requantized tensors from their copies, the rest from the source. */
static qpk_status written_weight(void *ud, qpk_role role, int layer, qpk_matrix *w, qpk_err *e)
{
    job *j = ud;
    for (size_t i = 0; i < qpk_model_n_tensors(j->cfg); i++)
        if (j->plan[i].role == role && j->plan[i].layer == layer && j->requant[i]) {
            const qpk_sink_tensor *p = &j->plan[i];
            *w = (qpk_matrix){p->type, p->group_size, p->dims[0], p->dims[1], j->kept[i], NULL};
            return QPK_OK;
        }
    return qpk_source_matrix(j->src, role, layer, w, e);
}

static void job_free(job *j)
{
    qpk_calib_end(j->calib);
    qpk_imatrix_free(j->imat);
    qpk_pool_free(j->pool);
    free(j->f32), free(j->out), free(j->rows_f32);
    for (size_t i = 0; i < j->n_files; i++)
        free((void *)j->files[i].data);
    free(j->plan), free(j->requant), free(j->calib_work);
}

/*
 * --pad-intermediate: the padded config, or why not. Every intermediate size is padded (Qwen's
 * tensor-parallel note pads intermediate_size; a MoE's experts and shared expert have sizes of
 * their own, which shard the same way, and leaving them unpadded would be a silent half). Calibration runs
 * on the model as it is and an imported folder is copied exactly, so both are padded in a
 * second conversion, of the .qpk they make.
 */
static qpk_status check_padding(job *j, qpk_err *e)
{
    const qpk_convert_opts *o = j->o;
    const int64_t n = o->pad_intermediate;
    if (!n)
        return QPK_OK;
    if (n < 0 || n > PAD_MAX_MULTIPLE)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--pad-intermediate %lld: the multiple must be in 1..%d",
                            (long long)n, PAD_MAX_MULTIPLE);
    const qpk_config *c = j->scfg;
    if (o->method != QPK_METHOD_RTN)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "--pad-intermediate with --method %s: calibration runs on the model as "
                            "it is; calibrate to a .qpk without padding, then pad that .qpk (exact zero groups)",
                            qpk_method_name(o->method));
    if (j->ck && qpk_checkpoint_hfq(j->ck)->method != QPK_HFQ_NONE)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "--pad-intermediate on %s (%s): its linears are imported as they are, "
                            "not padded; convert it to .qpk, then pad that .qpk", qpk_source_path(j->src),
                            qpk_source_format(j->src));
    if (o->requantize)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "--pad-intermediate with --requantize: requantize to a .qpk first, "
                            "then pad that .qpk");
    /* Every intermediate size the model has, each to the multiple: a size left unpadded would split unevenly. */
    j->padded = *c;
    int64_t *const field[3] = {&j->padded.intermediate_size, &j->padded.moe_intermediate_size,
                               &j->padded.shared_expert_intermediate_size};
    for (int k = 0; k < 3; k++) {
        const int64_t from = *field[k];
        j->pad[k] = (struct pad_size){from, from > 0 ? (from + n - 1) / n * n : from};
        *field[k] = j->pad[k].to;
    }
    j->cfg = &j->padded;
    return QPK_OK;
}

/* Everything decided before the first byte: options, the pool, calibration's start, every tensor, the files. */
static qpk_status plan(job *j, qpk_sink *sink, qpk_err *e)
{
    const qpk_convert_opts *o = j->o;
    const qpk_output to = qpk_sink_kind(sink);
    const size_t n = qpk_model_n_tensors(j->cfg);
    QPK_TRY(check_options(j, sink, e));
    QPK_TRY(check_padding(j, e));
    if (j->ck)
        QPK_TRY(check_rules_on_imported(j->ck, o, e));
    if (j->ck)
        warn_unmatched_rules(o, j->cfg);
    QPK_TRY(qpk_pool_create(&j->pool, o->n_threads, e));
    if (o->cb.cancel)
        qpk_pool_set_cancel(j->pool, o->cb.cancel, o->cb.ud);
    if (!(j->plan = calloc(n, sizeof *j->plan)) || !(j->requant = calloc(n, sizeof *j->requant)) ||
        !(j->calib_work = calloc((size_t)j->cfg->n_layers + 1, sizeof *j->calib_work)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (j->ck) {
        QPK_TRY(job_buffers(j, j->cfg, e));
        if (o->method != QPK_METHOD_RTN && !o->imatrix)
            QPK_TRY(qpk_calib_begin(&j->calib, j->src, o, j->pool, e));
        if (o->imatrix)
            QPK_TRY(qpk_imatrix_read(&j->imat, o->imatrix, e));
    }
    for (size_t i = 0; i < n; i++)
        QPK_TRY(plan_tensor(j, i, to, e));
    for (size_t i = 0; i < n; i++)
        j->n_requantized += j->requant[i];
    QPK_TRY(gather_files(j, e));
    bool has_tokenizer = false;
    for (size_t i = 0; i < j->n_files; i++)
        has_tokenizer |= !strcmp(j->files[i].name, "tokenizer.json");
    if (to == QPK_OUT_GGUF && !has_tokenizer)
        return qpk_err_setf(e, QPK_E_MISMATCH, "GGUF carries the model's tokenizer, and %s %s no tokenizer.json",
                            qpk_source_path(j->src), qpk_source_kind_of(j->src) == QPK_SOURCE_QPK ? "embeds" : "has");
    return QPK_OK;
}

/* Plans, declares, streams every tensor, and finishes the sink with the metadata. */
static qpk_status run(job *j, qpk_sink *sink, qpk_convert_result *r, qpk_err *e)
{
    const qpk_convert_opts *o = j->o;
    const qpk_output to = qpk_sink_kind(sink);
    const size_t n = qpk_model_n_tensors(j->cfg);
    cJSON *meta = NULL, *prov = NULL;
    char *text = NULL, *recipe = NULL, name[256];
    QPK_TRY(plan(j, sink, e));
    if (!(meta = build_metadata(j, &prov)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (o->requantize)
        mark_requantized(meta, j->n_requantized);
    note_padding(meta, j);
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(meta, "quantization");
    qpk_status s = cJSON_IsObject(q) && !(recipe = cJSON_PrintUnformatted(q)) ? qpk_err_setf(e, QPK_E_NOMEM, "out of memory")
                                                                              : QPK_OK;
    model_name(j->src, name, sizeof name);
    const qpk_sink_model sm = {j->cfg, j->plan, n, j->files, j->n_files, name, recipe};
    if (s == QPK_OK)
        s = qpk_sink_declare(sink, &sm, e);
    if (s == QPK_OK && o->keep_requantized && j->n_requantized && !(j->kept = calloc(n, sizeof *j->kept)))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK && to == QPK_OUT_QPK && j->ck)
        j->prov_tensors = cJSON_AddObjectToObject(prov, "source_tensors");
    /* A conversion between quantized formats says, per matrix, what it carried exactly. */
    j->certify = !(j->ck && qpk_checkpoint_hfq(j->ck)->method == QPK_HFQ_NONE);
    cJSON *cert = NULL;
    if (s == QPK_OK && j->certify && prov && to == QPK_OUT_QPK) {
        cert = cJSON_AddObjectToObject(prov, "certificate");
        j->cert = cJSON_AddObjectToObject(cert, "tensors");
    }
    if (s == QPK_OK)
        s = write_tensors(j, e);
    if (s == QPK_OK && j->ck && to == QPK_OUT_QPK) {
        cJSON *list = cJSON_AddArrayToObject(prov, "embedded_files");
        for (size_t i = 0; i < j->n_files; i++)
            cJSON_AddItemToArray(list, cJSON_CreateString(j->files[i].name));
    } else if (s == QPK_OK && prov && to == QPK_OUT_QPK) { /* from a GGUF: the files made from its keys */
        cJSON *list = cJSON_AddArrayToObject(prov, "embedded_files");
        for (size_t i = 0; i < j->n_files; i++)
            cJSON_AddItemToArray(list, cJSON_CreateString(j->files[i].name));
    }
    if (s == QPK_OK && cert) {
        cJSON_AddNumberToObject(cert, "exact", (double)j->n_exact);
        cJSON_AddNumberToObject(cert, "changed", (double)j->n_changed);
        cJSON_AddNumberToObject(cert, "max_abs_change", j->worst_change);
        cJSON_AddNumberToObject(cert, "max_rel_frobenius", j->worst_rel);
    }
    if (s == QPK_OK && j->certify && o->cb.log) {
        char msg[256];
        snprintf(msg, sizeof msg, "certificate: %lld of %lld matrices carried exactly, bit for bit%s", (long long)j->n_exact,
                 (long long)(j->n_exact + j->n_changed), j->n_changed ? "" : " (the output's weights are the input's)");
        if (j->n_changed)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "; %lld changed: largest weight change %.3g",
                     (long long)j->n_changed, j->worst_change);
        if (j->n_requantized)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), ", worst relative Frobenius error of the "
                     "requantized %.3g", j->worst_rel);
        o->cb.log(o->cb.ud, QPK_LOG_INFO, msg);
    }
    if (s == QPK_OK && !(text = cJSON_PrintUnformatted(meta)))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK && j->calib && o->cb.log) {
        char msg[200];
        const qpk_calib_params *p = qpk_calib_params_of(j->calib);
        int len = snprintf(msg, sizeof msg, "calibrated on %d windows of %d tokens: statistics %.1f s, quantization %.1f s",
                           p->samples, p->seq_len, j->times.gather, j->times.quantize);
        if (!qpk_calib_feeds_float(o->method) && len > 0 && (size_t)len < sizeof msg)
            snprintf(msg + len, sizeof msg - (size_t)len, ", quantized passes %.1f s", j->times.forward);
        o->cb.log(o->cb.ud, QPK_LOG_INFO, msg);
        int64_t calibrated, rtn;
        qpk_calib_experts(j->calib, &calibrated, &rtn);
        if (calibrated + rtn > 0) {
            snprintf(msg, sizeof msg, "experts: %lld calibrated on the tokens routed to them, %lld by round-to-nearest "
                     "(fewer routed calibration tokens than the floor)", (long long)calibrated, (long long)rtn);
            o->cb.log(o->cb.ud, QPK_LOG_INFO, msg);
        }
    }
    if (s == QPK_OK && r && j->calib)
        qpk_calib_experts(j->calib, &r->n_experts_calibrated, &r->n_experts_rtn);
    if (s == QPK_OK && r && j->kept) {
        s = qpk_model_create(&r->model, j->cfg, written_weight, j, e);
    }
    free(recipe);
    cJSON_Delete(meta);
    /* The statistics next to the model, before the model appears (each file is atomic on its own). */
    if (s == QPK_OK && j->calib && j->o->save_imatrix) {
        s = qpk_imatrix_write(qpk_calib_imatrix(j->calib), j->o->save_imatrix, j->o->save_imatrix_dat, e);
        if (s != QPK_OK)
            qpk_err_prefix(e, s, "--save-imatrix %s", j->o->save_imatrix);
    }
    if (s == QPK_OK) {
        j->sink = NULL; /* finish consumes it, whatever the outcome */
        s = qpk_sink_finish(sink, text, strlen(text), e);
    }
    free(text);
    return s;
}

qpk_status qpk_convert(qpk_source *src, const qpk_convert_opts *o, qpk_sink *sink, qpk_convert_result *r, qpk_err *e)
{
    if (r)
        *r = (qpk_convert_result){0};
    if (!qpk_source_config(src)) {
        qpk_sink_discard(sink);
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "'%s' is not a model", qpk_source_path(src));
    }
    job j = {.o = o, .src = src, .cfg = qpk_source_config(src), .scfg = qpk_source_config(src),
             .ck = qpk_source_checkpoint(src), .sink = sink, .kernels = qpk_kernels_best()};
    qpk_status s = run(&j, sink, r, e);
    qpk_sink_discard(j.sink); /* what run did not finish leaves nothing behind */
    if (r) {
        r->n_requantized = j.n_requantized;
        r->tensors_bytes = j.written;
        r->n_exact = j.n_exact, r->n_changed = j.n_changed;
        r->max_change = j.worst_change, r->max_rel_frobenius = j.worst_rel;
        if (s == QPK_OK && r->model) {
            r->owned_ = j.kept, j.kept = NULL;
        }
    }
    if (j.kept)
        for (size_t i = 0; i < qpk_model_n_tensors(j.cfg); i++)
            free(j.kept[i]);
    free(j.kept);
    job_free(&j);
    if (s != QPK_OK && r) {
        qpk_model_free(r->model);
        r->model = NULL;
    }
    return s;
}

void qpk_convert_result_free(qpk_convert_result *r)
{
    if (!r)
        return;
    void **kept = r->owned_; /* one slot per tensor of the model, set only with the model */
    for (size_t i = 0; kept && i < qpk_model_n_tensors(qpk_model_config(r->model)); i++)
        free(kept[i]);
    free(kept);
    qpk_model_free(r->model);
    qpk_source_close(r->source_);
    r->model = NULL, r->owned_ = NULL, r->source_ = NULL;
}

qpk_status qpk_convert_path(const char *in, const char *out, const qpk_convert_opts *o, qpk_convert_result *r,
                            qpk_err *e)
{
    qpk_source *src = NULL;
    qpk_sink *sink = NULL;
    const qpk_source_opts so = {.cb = o->cb};
    const qpk_sink_opts ko = {o->shard_size, o->gptq_v2, o->n_threads, o->cb, o->split_max_size,
                              o->split_max_tensors};
    qpk_status s = qpk_source_open(&src, in, &so, e);
    for (size_t i = 0; s == QPK_OK && i < qpk_source_n_inputs(src); i++)
        s = qpk_check_not_input(out, qpk_source_input(src, i), e);
    if (s == QPK_OK && o->calib.source && o->calib.tokens)
        s = qpk_check_not_input(out, o->calib.source, e);
    if (s == QPK_OK)
        s = qpk_sink_create(&sink, o->to, out, &ko, e);
    if (s == QPK_OK)
        s = qpk_convert(src, o, sink, r, e);
    if (s != QPK_OK && r)
        qpk_convert_result_free(r);
    /* A model kept in memory reads the source: the caller closes it with the result. */
    if (s == QPK_OK && r && r->model)
        r->source_ = src;
    else
        qpk_source_close(src);
    return s;
}
