/*
 * GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
 * Pre-trained Transformers", 2022), written from the paper's algorithm:
 *
 *   H = 2 X^T X / n (+ damping), U = the upper Cholesky factor of H^-1;
 *   for each column i (in blocks of B for lazy updates):
 *     q_i = quantize(w_i); e = (w_i - q_i) / U_ii; w_j -= e U_ij for the later j.
 *
 * Each row of W is quantized independently of the others (they share only U), so
 * rows are spread over threads and the result does not depend on their number.
 * Linear algebra is in f64 (n^3 work, done once per matrix); the updates are in f32.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qpk/quant.h"

/* ------------------------------------------------------------ linear algebra */

/* In place: lower Cholesky factor L of the SPD matrix A (n x n, row-major). Upper part untouched. */
static bool cholesky_lower(double *A, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        double *aj = A + j * n;
        double d = aj[j];
        for (int64_t k = 0; k < j; k++)
            d -= aj[k] * aj[k];
        if (!(d > 0))
            return false;
        d = sqrt(d);
        aj[j] = d;
        for (int64_t i = j + 1; i < n; i++) {
            double *ai = A + i * n, s = ai[j];
            for (int64_t k = 0; k < j; k++)
                s -= ai[k] * aj[k];
            ai[j] = s / d;
        }
    }
    return true;
}

/*
 * U = the upper Cholesky factor of H^-1, H given in A (destroyed); U written to A:
 * L = chol(H), M = L^-1, H^-1 = M^T M, U = chol_upper(H^-1). Every inner loop runs
 * along a row, so the n^3 work streams through memory. tmp: n x n doubles.
 */
static bool inverse_cholesky_upper(double *A, int64_t n, double *M)
{
    if (!cholesky_lower(A, n))
        return false;
    /* M = L^-1 by rows: row i = (e_i - sum_{k<i} L_ik row_k) / L_ii. */
    for (int64_t i = 0; i < n; i++) {
        double *mi = M + i * n;
        const double *li = A + i * n;
        for (int64_t j = 0; j < n; j++)
            mi[j] = 0;
        for (int64_t k = 0; k < i; k++) {
            const double *mk = M + k * n;
            double c = li[k];
            for (int64_t j = 0; j <= k; j++)
                mi[j] -= c * mk[j];
        }
        mi[i] = 1;
        for (int64_t j = 0; j <= i; j++)
            mi[j] /= li[i];
    }
    /* A = M^T M as a sum of rank-1 updates by rows of M (row k touches columns 0..k). */
    for (int64_t i = 0; i < n * n; i++)
        A[i] = 0;
    for (int64_t k = 0; k < n; k++) {
        const double *mk = M + k * n;
        for (int64_t i = 0; i <= k; i++) {
            double c = mk[i];
            double *ai = A + i * n;
            for (int64_t j = i; j <= k; j++)
                ai[j] += c * mk[j];
        }
    }
    /* Upper Cholesky, right-looking: row i scaled, then the trailing rows updated. Only j >= i is kept. */
    for (int64_t i = 0; i < n; i++) {
        double *ui = A + i * n;
        if (!(ui[i] > 0))
            return false;
        double d = sqrt(ui[i]);
        ui[i] = d;
        for (int64_t j = i + 1; j < n; j++)
            ui[j] /= d;
        for (int64_t r = i + 1; r < n; r++) {
            double c = ui[r], *ar = A + r * n;
            for (int64_t j = r; j < n; j++)
                ar[j] -= c * ui[j];
        }
    }
    for (int64_t i = 0; i < n; i++) /* leave only U */
        for (int64_t j = 0; j < i; j++)
            A[i * n + j] = 0;
    return true;
}

/* ------------------------------------------------------------------- GPTQ */

#define ROWS_PER_TASK 16 /* rows quantized together share each read of a row of U */

typedef struct gptq_job {
    uint32_t type, group;
    float *W;               /* [rows][cols], ends dequantized */
    int64_t rows, cols;
    const float *U;         /* [cols][cols] upper factor, in processing order */
    const int64_t *perm;    /* processing position -> original column */
    bool act_order;
    qpk_qparams *params;    /* [rows][cols / group] */
    int32_t *codes;         /* [rows][cols], original column order */
    float *work;            /* per thread: ROWS_PER_TASK x cols, the rows in processing order */
    qpk_status *status;
    qpk_err *errs;
} gptq_job;

static void gptq_task(void *arg, int64_t task, int thread)
{
    gptq_job *j = arg;
    const int64_t n = j->cols, G = j->group, r0 = task * ROWS_PER_TASK;
    const int64_t nr = j->rows - r0 < ROWS_PER_TASK ? j->rows - r0 : ROWS_PER_TASK;
    float *w = j->work + (size_t)thread * ROWS_PER_TASK * (size_t)n;
    const qpk_kernels *k = qpk_kernels_best();
    j->status[task] = QPK_OK;
    for (int64_t r = 0; r < nr; r++)
        for (int64_t i = 0; i < n; i++)
            w[r * n + i] = j->W[(r0 + r) * n + j->perm[i]];
    for (int64_t i = 0; i < n; i++) {
        const int64_t col = j->perm[i], g = col / G;
        const float *ui = j->U + i * n;
        for (int64_t r = 0; r < nr; r++) {
            float *wr = w + r * n;
            qpk_qparams *p = &j->params[(r0 + r) * (n / G) + g];
            /* Without act-order, a group's parameters come from its weights as updated so far. */
            if (!j->act_order && i % G == 0) {
                qpk_status s = qpk_group_params(j->type, wr + i, G, 1.0f, p, &j->errs[task]);
                if (s != QPK_OK) {
                    j->status[task] = s;
                    qpk_err_prefix(&j->errs[task], "row %lld", (long long)(r0 + r));
                    return;
                }
            }
            int32_t q = qpk_quantize_value(j->type, p, wr[i]);
            float deq = qpk_dequantize_value(j->type, p, q), e = (wr[i] - deq) / ui[i];
            j->codes[(r0 + r) * n + col] = q;
            wr[i] = deq;
            k->axpy(-e, ui + i + 1, wr + i + 1, n - i - 1); /* the later columns absorb the error */
        }
    }
    for (int64_t r = 0; r < nr; r++)
        for (int64_t i = 0; i < n; i++)
            j->W[(r0 + r) * n + j->perm[i]] = w[r * n + i];
}

typedef struct sort_item {
    double key;
    int64_t index;
} sort_item;

static int cmp_items(const void *a, const void *b)
{
    const sort_item *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1; /* descending */
    return x->index < y->index ? -1 : x->index > y->index;
}

qpk_status qpk_gptq(uint32_t type, uint32_t group, float *W, int64_t rows, int64_t cols, double *H,
                    const qpk_gptq_opts *o, qpk_pool *pool, void *out, qpk_err *e)
{
    if (!qpk_type_is_quantized(type) || group == 0 || group % QPK_GROUP_QUANTUM || cols % group)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GPTQ: rows of %lld are not whole groups of %u", (long long)cols,
                            group);
    const int64_t n = cols, ng = cols / group;
    qpk_status s = QPK_OK;
    int threads = pool ? qpk_pool_threads(pool) : 1;
    int64_t tasks = (rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    sort_item *items = malloc((size_t)n * sizeof *items);
    double *Hp = malloc((size_t)(n * n) * sizeof *Hp), *tmp = malloc((size_t)(n * n) * sizeof *tmp);
    float *U = malloc((size_t)(n * n) * sizeof *U);
    float *work = malloc((size_t)threads * ROWS_PER_TASK * (size_t)n * sizeof *work);
    qpk_qparams *params = calloc((size_t)(rows * ng), sizeof *params);
    int32_t *codes = malloc((size_t)(rows * n) * sizeof *codes);
    qpk_status *status = calloc((size_t)tasks, sizeof *status);
    qpk_err *errs = calloc((size_t)tasks, sizeof *errs);
    if (!perm || !items || !Hp || !tmp || !U || !work || !params || !codes || !status || !errs) {
        s = qpk_err_setf(e, QPK_E_NOMEM, "GPTQ: out of memory for a %lld x %lld matrix", (long long)rows,
                         (long long)cols);
        goto out;
    }
    /* Dead inputs (never nonzero in the calibration data) carry no information: zero their weights. */
    double mean = 0;
    for (int64_t i = 0; i < n; i++) {
        if (H[i * n + i] == 0) {
            H[i * n + i] = 1;
            for (int64_t r = 0; r < rows; r++)
                W[r * n + i] = 0;
        }
        mean += H[i * n + i] / (double)n;
    }
    /* With act-order, the parameters of each group are fixed first ("static groups"), from the weights as given. */
    if (o->act_order)
        for (int64_t r = 0; r < rows && s == QPK_OK; r++)
            for (int64_t g = 0; g < ng && s == QPK_OK; g++)
                if ((s = qpk_group_params(type, W + r * n + g * group, group, 1.0f, &params[r * ng + g], e)) != QPK_OK)
                    qpk_err_prefix(e, "row %lld", (long long)r);
    for (int64_t i = 0; i < n; i++)
        items[i] = (sort_item){o->act_order ? H[i * n + i] : 0.0, i};
    if (o->act_order)
        qsort(items, (size_t)n, sizeof *items, cmp_items);
    for (int64_t i = 0; i < n; i++)
        perm[i] = items[i].index;
    /* Damping, raised tenfold (up to three times) if the matrix is still not positive definite. */
    double damp = o->damp > 0 ? o->damp : 0.01;
    bool ok = false;
    for (int attempt = 0; attempt < 4 && s == QPK_OK && !ok; attempt++, damp *= 10) {
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                Hp[i * n + j] = H[perm[i] * n + perm[j]] + (i == j ? damp * mean : 0.0);
        ok = inverse_cholesky_upper(Hp, n, tmp);
    }
    if (s == QPK_OK && !ok)
        s = qpk_err_setf(e, QPK_E_VALUE, "GPTQ: the Hessian is not positive definite even with damping %g", damp / 10);
    if (s != QPK_OK)
        goto out;
    for (int64_t i = 0; i < n * n; i++)
        U[i] = (float)Hp[i];
    gptq_job job = {type, group, W, rows, cols, U, perm, o->act_order, params, codes, work, status, errs};
    if (pool)
        qpk_pool_run(pool, tasks, gptq_task, &job);
    else
        for (int64_t t = 0; t < tasks; t++)
            gptq_task(&job, t, 0);
    for (int64_t t = 0; t < tasks && s == QPK_OK; t++)
        if (status[t] != QPK_OK) {
            *e = errs[t];
            s = status[t];
        }
    if (s == QPK_OK) {
        size_t bb = qpk_type_block_bytes(type, group);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t g = 0; g < ng; g++)
                qpk_pack_group(type, group, &params[r * ng + g], codes + r * n + g * group,
                               (uint8_t *)out + (size_t)(r * ng + g) * bb);
    }
out:
    free(perm), free(items), free(Hp), free(tmp), free(U), free(work), free(params), free(codes), free(status),
        free(errs);
    return s;
}
