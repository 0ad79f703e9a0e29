/*
 * AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
 * Acceleration", 2023): the two searches, written from the paper. The caller gathers
 * the statistics of the shared input and folds the chosen scales into whatever
 * produces that input; here only the math, on the pool, independent of its size.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "qpk/quant.h"

#define CLIP_TASK_ROWS 8
#define SCREEN_STEP 4       /* the scale search's screen: every fourth sampled row, */
#define SCREEN_PANEL_STEP 4 /* at most every fourth panel of each linear's output rows, */
#define SCREEN_PANELS_MIN 8 /* at least this many panels of each (all of a smaller linear) */
#define FINALISTS 5         /* alphas the screen passes on to the loss on every row and panel */
#define ALPHA_GRID_MAX 64
#define QPK_AWQ_CLIP_STEPS_MAX 20 /* ratios 1.00 down to 0.05: the grid has no more */

typedef struct search {
    const qpk_awq_linear *lin;
    int n_lin;
    const float *rows;
    int64_t n_rows;
    qpk_pool *pool;
    const qpk_kernels *k;
    float *yref[3], *scratch;
    /* Per thread: a panel's rows in f32 and packed, its products, a quantized row of the widest linear. */
    float *rows_f32, *packed, *y;
    uint8_t *bytes;
    size_t row_bytes, packed_floats;
} search;

/*
 * Rows [r0, r0 + nr) of W diag(s), each group quantized and decoded (RTN), diag(1/s): the
 * weights AWQ would use, packed as gemm packs a panel. A row of a grid type is the table's
 * fake_quantize_row (qpk_quantize_group's values, a vector at a time, nothing stored); any
 * other row goes through qpk_quantize_row's bytes, and a row either refuses group by group
 * as qpk_quantize_group leaves it.
 */
static void fake_quantize_panel(const search *S, const qpk_awq_linear *l, const float *s, int64_t r0, int64_t nr,
                                int thread, float *packed)
{
    const bool grid = qpk_type_has_grid(l->type);
    uint8_t *bytes = S->bytes + (size_t)thread * S->row_bytes;
    float *rows = S->rows_f32 + (size_t)thread * QPK_GEMM_PANEL * (size_t)l->cols;
    for (int64_t i = 0; i < nr; i++) {
        float *o = rows + i * l->cols;
        const float *w = l->w + (r0 + i) * l->cols;
        if (grid && S->k->fake_quantize_row(l->type, l->group, w, s, l->cols, o))
            continue;
        for (int64_t k = 0; k < l->cols; k++)
            o[k] = w[k] * s[k];
        /* A non-finite weight leaves its group (row) as it is: the store that follows refuses it by name. */
        if (!grid) {
            if (qpk_quantize_row(l->type, l->group, o, l->cols, bytes, NULL) == QPK_OK)
                qpk_dequantize_row(l->type, l->group, bytes, l->cols, o);
        } else {
            for (int64_t g = 0; g < l->cols; g += l->group) {
                qpk_qparams p;
                qpk_quantize_group(l->type, o + g, l->group, 1.0f, &p, NULL, o + g, NULL);
            }
        }
        for (int64_t k = 0; k < l->cols; k++)
            o[k] /= s[k];
    }
    S->k->pack_panel(rows, (size_t)l->cols, (int)nr, 0, l->cols, packed);
}

/*
 * The loss is summed a batch of PANELS_PER_RUN panels (of QPK_GEMM_PANEL output rows) at a
 * time, each panel's share in order, so that a loss past the best stops within a linear.
 */
#define PANELS_PER_RUN 16
#define LOSS_ROWS 128 /* sampled rows per product: a panel's outputs for them stay in L1 */

typedef struct loss_job {
    const search *S;
    const qpk_awq_linear *l;
    const float *s, *ref;
    int64_t step, used, panel_step, panel0;
    double share[PANELS_PER_RUN];
} loss_job;

/*
 * Panel (panel0 + task) x panel_step of the linear: its candidate weights, made and packed
 * in cache, then its outputs for every step-th sampled row (gemm's tiles from zero: each
 * output the same chain over k as any product of these rows gives), and their squared
 * errors summed in the rows' order.
 */
static void loss_task(void *arg, int64_t task, int thread)
{
    loss_job *j = arg;
    const search *S = j->S;
    const qpk_awq_linear *l = j->l;
    const int64_t r0 = (j->panel0 + task) * j->panel_step * QPK_GEMM_PANEL;
    const int64_t nr = l->rows - r0 < QPK_GEMM_PANEL ? l->rows - r0 : QPK_GEMM_PANEL;
    float *packed = S->packed + (size_t)thread * S->packed_floats;
    float *y = S->y + (size_t)thread * LOSS_ROWS * QPK_GEMM_PANEL;
    fake_quantize_panel(S, l, j->s, r0, nr, thread, packed);
    double loss = 0;
    for (int64_t u0 = 0; u0 < j->used; u0 += LOSS_ROWS) {
        const int64_t n = j->used - u0 < LOSS_ROWS ? j->used - u0 : LOSS_ROWS;
        memset(y, 0, (size_t)(n * QPK_GEMM_PANEL) * sizeof *y);
        S->k->gemm_acc(S->rows + u0 * j->step * l->cols, j->step * l->cols, n, packed, QPK_GEMM_PANEL, l->cols, y,
                       QPK_GEMM_PANEL, nr);
        for (int64_t u = 0; u < n; u++) {
            const float *ref = j->ref + (u0 + u) * j->step * l->rows + r0;
            for (int64_t r = 0; r < nr; r++) {
                double d = (double)y[u * QPK_GEMM_PANEL + r] - (double)ref[r];
                loss += d * d;
            }
        }
    }
    j->share[task] = loss;
}

/*
 * Sum over the quantized linears of |X W^T - X Wq^T|^2 on every step-th sampled row X and
 * every panel_step-th panel of output rows (fewer apart where a linear would keep under
 * SCREEN_PANELS_MIN), for scales s, linear by linear, panel by panel; it stops once the
 * sum passes `best`. Each term is >= 0 and a rounded sum never falls below its larger
 * operand, so a partial sum past best means the whole one is too: the scales chosen, and a
 * tie, are those of the complete sums. The sums do not depend on the threads: each panel's
 * share is one chain, added in the panels' order.
 */
static double loss_of(search *S, const float *s, int64_t step, int64_t panel_step, double best)
{
    double loss = 0;
    for (int i = 0; i < S->n_lin && loss <= best; i++) {
        const qpk_awq_linear *l = &S->lin[i];
        if (!qpk_type_is_quantized(l->type))
            continue;
        const int64_t all = (l->rows + QPK_GEMM_PANEL - 1) / QPK_GEMM_PANEL;
        const int64_t every = all / SCREEN_PANELS_MIN < panel_step ? all / SCREEN_PANELS_MIN : panel_step;
        loss_job j = {S, l, s, S->yref[i], step, (S->n_rows + step - 1) / step, every > 1 ? every : 1, 0, {0}};
        const int64_t panels = (all + j.panel_step - 1) / j.panel_step;
        for (; j.panel0 < panels && loss <= best; j.panel0 += PANELS_PER_RUN) {
            const int64_t n = panels - j.panel0 < PANELS_PER_RUN ? panels - j.panel0 : PANELS_PER_RUN;
            qpk_pool_run(S->pool, n, loss_task, &j);
            for (int64_t t = 0; t < n; t++)
                loss += j.share[t];
        }
    }
    return loss;
}

/*
 * The scale search ranks alphas by output error. ggml's block types fit each block by an
 * iterative search (tens of passes over its weights), once per alpha over whole matrices;
 * their ranking is stood in for by int4 in groups of 32 (a scale and a zero point per 32
 * weights, as Q4_K's sub-blocks have a scale and a min), which rounds in one pass. The
 * weights are still stored in their own type, fitted once. Measured when it was chosen
 * (issue 24, Q4_K_M, KL divergence against the float model): qwen-tiny-c-outlier AWQ
 * 6.06e-4 -> 5.18e-4, AWQ+GPTQ 3.04e-4 -> 3.00e-4; qwen-tiny-a-outlier AWQ 4.42e-5 ->
 * 5.83e-5, AWQ+GPTQ 2.91e-5 -> 2.28e-5; the 0.5B shape's search about 5x faster.
 */
static qpk_awq_linear search_proxy(qpk_awq_linear l)
{
    if (qpk_type_is_quantized(l.type) && !qpk_type_has_grid(l.type) && l.cols % QPK_AWQ_PROXY_GROUP == 0)
        l.type = QPK_AWQ_PROXY_TYPE, l.group = QPK_AWQ_PROXY_GROUP;
    return l;
}

/* Scales mean|x|^alpha for alpha = a / grid, divided by the geometric mean of their extremes. */
static void alpha_scales(const double *mean_abs, int64_t d, int a, int grid, float *s)
{
    double alpha = (double)a / grid, mx = 0, mn = INFINITY;
    for (int64_t c = 0; c < d; c++) {
        double m = mean_abs[c];
        s[c] = (float)pow(m > 1e-8 ? m : 1e-8, alpha);
        mx = s[c] > mx ? s[c] : mx;
        mn = s[c] < mn ? s[c] : mn;
    }
    float norm = (float)sqrt(mx * mn);
    for (int64_t c = 0; c < d; c++)
        s[c] /= norm;
}

static qpk_status checked(const search *S, double loss, int a, int grid, qpk_err *e)
{
    if (qpk_pool_cancelled(S->pool))
        return qpk_err_setf(e, QPK_E_CANCELLED, "cancelled");
    if (!isfinite(loss))
        return qpk_err_setf(e, QPK_E_VALUE, "AWQ: the search loss is not finite (alpha %g)", (double)a / grid);
    return QPK_OK;
}

qpk_status qpk_awq_scales(const qpk_awq_linear *real, int n_lin, const double *mean_abs, const float *rows,
                          int64_t n_rows, const qpk_awq_opts *o, qpk_pool *pool, const qpk_kernels *k, float *best_s,
                          qpk_err *e)
{
    if (n_lin > 3)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "AWQ: %d linears share an input (at most 3)", n_lin);
    if (o->alpha_grid > ALPHA_GRID_MAX)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "AWQ: a grid of %d alphas (at most %d)", o->alpha_grid,
                            ALPHA_GRID_MAX);
    qpk_awq_linear lin[3];
    for (int i = 0; i < n_lin; i++)
        lin[i] = search_proxy(real[i]);
    const int64_t d = real[0].cols;
    bool any = false;
    for (int64_t c = 0; c < d; c++)
        best_s[c] = 1;
    for (int i = 0; i < n_lin; i++)
        any |= qpk_type_is_quantized(lin[i].type);
    if (!any || n_rows == 0)
        return QPK_OK;
    const int threads = qpk_pool_threads(pool);
    search S = {.lin = lin, .n_lin = n_lin, .rows = rows, .n_rows = n_rows, .pool = pool, .k = k,
                .scratch = malloc((size_t)threads * qpk_gemm_scratch_floats(d) * sizeof(float)),
                .rows_f32 = malloc((size_t)threads * QPK_GEMM_PANEL * (size_t)d * sizeof(float)),
                .y = malloc((size_t)threads * LOSS_ROWS * QPK_GEMM_PANEL * sizeof(float)),
                .packed_floats = ((size_t)d * QPK_GEMM_PANEL + 15) / 16 * 16};
    /* Each thread's panel aligned as gemm's are: each tile's loads then stay within cache lines. */
    S.packed = aligned_alloc(64, (size_t)threads * S.packed_floats * sizeof(float));
    float *s = malloc((size_t)d * sizeof *s);
    for (int i = 0; i < n_lin; i++)
        if (qpk_type_is_quantized(lin[i].type) && qpk_type_row_bytes(lin[i].type, lin[i].group, d) > S.row_bytes)
            S.row_bytes = qpk_type_row_bytes(lin[i].type, lin[i].group, d);
    S.bytes = malloc((size_t)threads * S.row_bytes + 1);
    bool ok = S.scratch && S.rows_f32 && S.packed && S.y && s && S.bytes;
    for (int i = 0; i < n_lin && ok; i++)
        ok = (S.yref[i] = malloc((size_t)(n_rows * lin[i].rows) * sizeof(float))) != NULL;
    qpk_status st = ok ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "AWQ: out of memory for the scale search");
    for (int i = 0; i < n_lin && st == QPK_OK; i++) {
        qpk_matrix m = {QPK_TYPE_F32, 0, lin[i].rows, lin[i].cols, lin[i].w};
        if (qpk_type_is_quantized(lin[i].type))
            qpk_matmul(pool, k, &m, rows, n_rows, S.yref[i], S.scratch);
    }
    /*
     * A screen, then the finalists: every alpha's loss on a quarter of the sampled rows
     * (every SCREEN_STEP-th, spread over all the windows) and, for a linear of 16 panels or
     * more, on every second to fourth panel of its outputs (SCREEN_PANELS_MIN of them at
     * least); then the FINALISTS best of those on all the rows and outputs, the least screen
     * loss first so that the others stop early, and alpha 0 (round-to-nearest) last if the
     * screen left it out. The winner is the least loss on all the rows (the smaller alpha
     * of equals): never worse than round-to-nearest's. The panels cut the screen's candidate
     * weights, the larger part of its cost, by up to four; the two extra finalists make up
     * for its noisier ranking (the 0.5B shape, AWQ+GPTQ Q4_K_M, 96 shared inputs: the
     * screen of every panel and three finalists chose the exhaustive grid's alpha for all
     * 96; every fourth panel and three finalists for 64, their sampled loss 0.17% above on
     * average, 2.1% at most; five finalists for 90, 0.02% and 1.1%).
     */
    const int grid = o->alpha_grid, finalists = grid < FINALISTS ? grid : FINALISTS;
    double screen[ALPHA_GRID_MAX], best = INFINITY;
    int order[FINALISTS + 1], n_order = 0, best_a = -1;
    for (int a = 0; a < grid && st == QPK_OK; a++) {
        alpha_scales(mean_abs, d, a, grid, s);
        const double bar = n_order == finalists ? screen[order[finalists - 1]] : INFINITY; /* to enter the ranking */
        screen[a] = grid > FINALISTS ? loss_of(&S, s, SCREEN_STEP, SCREEN_PANEL_STEP, bar) : 0;
        if ((st = checked(&S, screen[a], a, grid, e)) != QPK_OK)
            break;
        int at = n_order; /* after its equals */
        while (at > 0 && screen[order[at - 1]] > screen[a])
            at--;
        if (at < finalists) {
            n_order += n_order < finalists;
            memmove(order + at + 1, order + at, (size_t)(n_order - 1 - at) * sizeof *order);
            order[at] = a;
        }
    }
    bool has_zero = false;
    for (int f = 0; f < n_order; f++)
        has_zero |= order[f] == 0;
    if (!has_zero && grid > 0)
        order[n_order++] = 0;
    for (int f = 0; f < n_order && st == QPK_OK; f++) {
        const int a = order[f];
        alpha_scales(mean_abs, d, a, grid, s);
        double loss = loss_of(&S, s, 1, 1, best);
        if ((st = checked(&S, loss, a, grid, e)) == QPK_OK && (loss < best || (loss == best && a < best_a))) {
            best = loss, best_a = a;
            memcpy(best_s, s, (size_t)d * sizeof *best_s);
        }
    }
    free(S.scratch), free(S.rows_f32), free(S.packed), free(S.y), free(S.bytes), free(s);
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
    float ratios[QPK_AWQ_CLIP_STEPS_MAX];
    float *work; /* per thread: each ratio's weight errors of one group [clip_steps][G], their outputs [clip_steps][n_rows] */
    size_t per_thread;
} clip_job;

/*
 * Every ratio's weight errors of a group first, then all their outputs on the sampled
 * rows in one dot_rows (the rows' loads shared by the ratios, many dots in flight), then
 * the ratios compared in order: each error sum is the same chain of the same dots.
 */
static void clip_task(void *arg, int64_t task, int thread)
{
    const clip_job *j = arg;
    const qpk_awq_linear *l = j->lin;
    const int64_t G = l->group, ng = l->cols / G, T = j->n_rows;
    const int64_t r1 = (task + 1) * CLIP_TASK_ROWS < l->rows ? (task + 1) * CLIP_TASK_ROWS : l->rows;
    float *dw = j->work + (size_t)thread * j->per_thread, *y = dw + (size_t)j->o->clip_steps * (size_t)G;
    for (int64_t g = 0; g < ng; g++) /* a group's sampled inputs (T x G) stay in L2 for the task's rows */
        for (int64_t i = task * CLIP_TASK_ROWS; i < r1; i++) {
            const float *w = l->w + i * l->cols + g * G;
            const int steps = j->k->quantize_group_ratios(l->type, w, G, j->ratios, j->o->clip_steps, dw);
            for (int step = 0; step < steps; step++)
                for (int64_t c = 0; c < G; c++)
                    dw[step * G + c] = w[c] - dw[step * G + c];
            j->k->dot_rows(j->xs + g * G, l->cols, T, dw, G, steps, G, y);
            double err[QPK_AWQ_CLIP_STEPS_MAX] = {0}, best = INFINITY;
            for (int64_t t = 0; t < T; t++) /* the ratios' sums side by side, each in the rows' order */
                for (int step = 0; step < steps; step++) {
                    double v = y[step * T + t];
                    err[step] += v * v;
                }
            j->clip[i * ng + g] = 1;
            for (int step = 0; step < steps; step++)
                if (err[step] < best)
                    best = err[step], j->clip[i * ng + g] = j->ratios[step];
        }
}

qpk_status qpk_awq_clip(const qpk_awq_linear *lin, const float *xs, int64_t n_rows, const qpk_awq_opts *o,
                        qpk_pool *pool, const qpk_kernels *k, float *clip, qpk_err *e)
{
    if (o->clip_steps > QPK_AWQ_CLIP_STEPS_MAX)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "AWQ: %d clip ratios (at most %d)", o->clip_steps,
                            QPK_AWQ_CLIP_STEPS_MAX);
    const size_t per_thread = (size_t)(o->clip_steps > 0 ? o->clip_steps : 0) * (size_t)(lin->group + n_rows);
    float *work = malloc((size_t)qpk_pool_threads(pool) * per_thread * sizeof *work + 1);
    if (!work)
        return qpk_err_setf(e, QPK_E_NOMEM, "AWQ: out of memory for the clip search");
    clip_job j = {lin, o, k, xs, n_rows, clip, {0}, work, per_thread};
    for (int step = 0; step < o->clip_steps; step++)
        j.ratios[step] = 1.0f - 0.05f * (float)step;
    qpk_pool_run(pool, (lin->rows + CLIP_TASK_ROWS - 1) / CLIP_TASK_ROWS, clip_task, &j);
    free(work);
    return qpk_pool_cancelled(pool) ? qpk_err_setf(e, QPK_E_CANCELLED, "cancelled") : QPK_OK;
}
