/*
 * AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
 * Acceleration", 2023): the two searches, written from the paper. The caller gathers
 * the statistics of the shared input and folds the chosen scales into whatever
 * produces that input; here only the math, on the pool, independent of its size.
 */
#include <math.h>
#include <stdlib.h>

#include "qpk/quant.h"

#define FQ_TASK_ROWS 16
#define CLIP_TASK_ROWS 8

typedef struct fq_job {
    const qpk_awq_linear *lin;
    const float *s; /* column scales */
    float *out;
} fq_job;

/* out = W diag(s), each group quantized and decoded (RTN), diag(1/s): the weights AWQ would use. */
static void fq_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    const fq_job *j = arg;
    const qpk_awq_linear *l = j->lin;
    const int64_t r1 = (task + 1) * FQ_TASK_ROWS < l->rows ? (task + 1) * FQ_TASK_ROWS : l->rows;
    /* ggml's block types quantize whole rows: their bytes go through this buffer. */
    const bool rows = !qpk_type_has_grid(l->type);
    uint8_t *bytes = rows ? malloc(qpk_type_row_bytes(l->type, l->group, l->cols)) : NULL;
    for (int64_t i = task * FQ_TASK_ROWS; i < r1; i++) {
        float *o = j->out + i * l->cols;
        for (int64_t k = 0; k < l->cols; k++)
            o[k] = l->w[i * l->cols + k] * j->s[k];
        /* A non-finite weight leaves its group (row) as it is: the store that follows refuses it by name. */
        if (rows && bytes && qpk_quantize_row(l->type, l->group, o, l->cols, bytes, NULL) == QPK_OK)
            qpk_dequantize_row(l->type, l->group, bytes, l->cols, o);
        for (int64_t g = 0; !rows && g < l->cols; g += l->group) {
            qpk_qparams p;
            qpk_quantize_group(l->type, o + g, l->group, 1.0f, &p, NULL, o + g, NULL);
        }
        for (int64_t k = 0; k < l->cols; k++)
            o[k] /= j->s[k];
    }
    free(bytes);
}

typedef struct search {
    const qpk_awq_linear *lin;
    int n_lin;
    const float *rows;
    int64_t n_rows;
    qpk_pool *pool;
    const qpk_kernels *k;
    float *wq, *y, *yref[3], *scratch;
} search;

/* Sum over the quantized linears of |X W^T - X Wq^T|^2 on the sampled rows X, for scales s. */
static double loss_of(search *S, const float *s)
{
    double loss = 0;
    for (int i = 0; i < S->n_lin; i++) {
        const qpk_awq_linear *l = &S->lin[i];
        if (!qpk_type_is_quantized(l->type))
            continue;
        fq_job fj = {l, s, S->wq};
        qpk_pool_run(S->pool, (l->rows + FQ_TASK_ROWS - 1) / FQ_TASK_ROWS, fq_task, &fj);
        qpk_matrix mq = {QPK_TYPE_F32, 0, l->rows, l->cols, S->wq};
        qpk_matmul(S->pool, S->k, &mq, S->rows, S->n_rows, S->y, S->scratch);
        for (int64_t t = 0; t < S->n_rows * l->rows; t++) {
            double d = (double)S->y[t] - (double)S->yref[i][t];
            loss += d * d;
        }
    }
    return loss;
}

qpk_status qpk_awq_scales(const qpk_awq_linear *lin, int n_lin, const double *mean_abs, const float *rows,
                          int64_t n_rows, const qpk_awq_opts *o, qpk_pool *pool, const qpk_kernels *k, float *best_s,
                          qpk_err *e)
{
    const int64_t d = lin[0].cols;
    int64_t most_rows = 0;
    bool any = false;
    for (int64_t c = 0; c < d; c++)
        best_s[c] = 1;
    for (int i = 0; i < n_lin; i++) {
        any |= qpk_type_is_quantized(lin[i].type);
        most_rows = lin[i].rows > most_rows ? lin[i].rows : most_rows;
    }
    if (!any || n_rows == 0)
        return QPK_OK;
    if (n_lin > 3)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "AWQ: %d linears share an input (at most 3)", n_lin);
    search S = {lin, n_lin, rows, n_rows, pool, k, malloc((size_t)(most_rows * d) * sizeof(float)),
                malloc((size_t)(n_rows * most_rows) * sizeof(float)), {NULL, NULL, NULL},
                malloc((size_t)qpk_pool_threads(pool) * qpk_gemm_scratch_floats(d) * sizeof(float))};
    float *s = malloc((size_t)d * sizeof *s);
    bool ok = S.wq && S.y && S.scratch && s;
    for (int i = 0; i < n_lin && ok; i++)
        ok = (S.yref[i] = malloc((size_t)(n_rows * lin[i].rows) * sizeof(float))) != NULL;
    qpk_status st = ok ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "AWQ: out of memory for the scale search");
    for (int i = 0; i < n_lin && st == QPK_OK; i++) {
        qpk_matrix m = {QPK_TYPE_F32, 0, lin[i].rows, lin[i].cols, lin[i].w};
        if (qpk_type_is_quantized(lin[i].type))
            qpk_matmul(pool, k, &m, rows, n_rows, S.yref[i], S.scratch);
    }
    double best = INFINITY;
    for (int a = 0; a < o->alpha_grid && st == QPK_OK; a++) {
        double alpha = (double)a / o->alpha_grid, mx = 0, mn = INFINITY;
        for (int64_t c = 0; c < d; c++) {
            double m = mean_abs[c];
            s[c] = (float)pow(m > 1e-8 ? m : 1e-8, alpha);
            mx = s[c] > mx ? s[c] : mx;
            mn = s[c] < mn ? s[c] : mn;
        }
        float norm = (float)sqrt(mx * mn);
        for (int64_t c = 0; c < d; c++)
            s[c] /= norm;
        double loss = loss_of(&S, s);
        if (qpk_pool_cancelled(pool))
            st = qpk_err_setf(e, QPK_E_CANCELLED, "cancelled");
        else if (!isfinite(loss))
            st = qpk_err_setf(e, QPK_E_VALUE, "AWQ: the search loss is not finite (alpha %g)", alpha);
        else if (loss < best) {
            best = loss;
            memcpy(best_s, s, (size_t)d * sizeof *best_s);
        }
    }
    free(S.wq), free(S.y), free(S.scratch), free(s);
    for (int i = 0; i < n_lin; i++)
        free(S.yref[i]);
    return st;
}

typedef struct clip_job {
    const qpk_awq_linear *lin;
    const qpk_awq_opts *o;
    const qpk_kernels *k;
    const float *xs;
    int64_t n_rows;
    float *clip; /* [rows][groups] */
    float *dw;   /* per thread: one group's weight errors */
} clip_job;

static void clip_task(void *arg, int64_t task, int thread)
{
    const clip_job *j = arg;
    const qpk_awq_linear *l = j->lin;
    const int64_t G = l->group, ng = l->cols / G;
    const int64_t r1 = (task + 1) * CLIP_TASK_ROWS < l->rows ? (task + 1) * CLIP_TASK_ROWS : l->rows;
    float *dw = j->dw + (size_t)thread * (size_t)G;
    for (int64_t i = task * CLIP_TASK_ROWS; i < r1; i++)
        for (int64_t g = 0; g < ng; g++) {
            const float *w = l->w + i * l->cols + g * G;
            double best = INFINITY;
            j->clip[i * ng + g] = 1;
            for (int step = 0; step < j->o->clip_steps; step++) {
                float ratio = 1.0f - 0.05f * (float)step;
                qpk_qparams p;
                if (qpk_quantize_group(l->type, w, G, ratio, &p, NULL, dw, NULL) != QPK_OK)
                    break;
                for (int64_t c = 0; c < G; c++)
                    dw[c] = w[c] - dw[c];
                double err = 0;
                for (int64_t t = 0; t < j->n_rows; t++) {
                    double y = j->k->dot(j->xs + t * l->cols + g * G, dw, G);
                    err += y * y;
                }
                if (err < best)
                    best = err, j->clip[i * ng + g] = ratio;
            }
        }
}

qpk_status qpk_awq_clip(const qpk_awq_linear *lin, const float *xs, int64_t n_rows, const qpk_awq_opts *o,
                        qpk_pool *pool, const qpk_kernels *k, float *clip, qpk_err *e)
{
    float *dw = malloc((size_t)qpk_pool_threads(pool) * lin->group * sizeof *dw);
    if (!dw)
        return qpk_err_setf(e, QPK_E_NOMEM, "AWQ: out of memory for the clip search");
    clip_job j = {lin, o, k, xs, n_rows, clip, dw};
    qpk_pool_run(pool, (lin->rows + CLIP_TASK_ROWS - 1) / CLIP_TASK_ROWS, clip_task, &j);
    free(dw);
    return qpk_pool_cancelled(pool) ? qpk_err_setf(e, QPK_E_CANCELLED, "cancelled") : QPK_OK;
}
