/*
 * GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
 * Pre-trained Transformers", 2022), written from the paper's algorithm:
 *
 *   H = 2 X^T X / n (+ damping), U = the upper Cholesky factor of H^-1;
 *   for each column i: q_i = quantize(w_i); e = (w_i - q_i) / U_ii;
 *   w_j -= e U_ij for the later j.
 *
 * U depends only on H, so a plan holding it serves every matrix that reads the same
 * input (q, k and v; gate and up). Each row of W is quantized independently of the
 * others (they share only U), so rows are spread over threads and the result does
 * not depend on their number. Linear algebra is in f64; the updates are in f32.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ggml_blocks.h"
#include "qpk/quant.h"

/* ------------------------------------------------------------ linear algebra */

/*
 * U, the upper Cholesky factor of H^-1 (U^T U = H^-1), comes from one Cholesky
 * factorization and one triangular inverse, n^3/3 multiply-adds in all: with J the
 * order reversal, if J H J = L L^T then U = J L^-1 J. Both are blocked (below) and
 * spread over the pool's threads; every element is computed by one fixed sequence of
 * operations, so U depends neither on the thread count nor on the instruction set.
 */

typedef double v2d __attribute__((vector_size(16))); /* SSE2 everywhere on x86-64 */

static inline v2d load2(const double *p)
{
    v2d v;
    memcpy(&v, p, sizeof v);
    return v;
}

static double dot1(const double *a, const double *b, int64_t n)
{
    v2d s0 = {0, 0}, s1 = s0;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4)
        s0 += load2(a + k) * load2(b + k), s1 += load2(a + k + 2) * load2(b + k + 2);
    s0 += s1;
    double r = s0[0] + s0[1];
    for (; k < n; k++)
        r += a[k] * b[k];
    return r;
}


/*
 * Both factorizations go in blocks of PANEL columns, so that nearly all their work is
 * one tiled product per block (the kernel table's gemm_sub_f64: every table computes the
 * same bits) and only the small triangles inside a block are done element by element.
 */
#define PANEL 32
#define ROWS_PER_TASK_F 48 /* rows per task of a panel update */

typedef struct chol_job {
    double *A;       /* n x n, row-major; lower part becomes L */
    int64_t n, jb, je;
    const double *P; /* the panel's rows of L, columns [0, jb), k-major: P[k * PANEL + j] */
    const qpk_kernels *k;
} chol_job;

/* Rows [i0, i1): the panel's columns lose the earlier columns' contribution (one tiled product). */
static void chol_update(const chol_job *j, int64_t i0, int64_t i1)
{
    if (j->jb > 0)
        j->k->gemm_sub_f64(j->A + i0 * j->n, j->n, i1 - i0, j->P, PANEL, j->jb, j->A + i0 * j->n + j->jb, j->n,
                           j->je - j->jb);
}

/* Row i, columns [jb, top) with top <= i: the panel's own part, the panel's rows above already final. */
static void chol_solve(const chol_job *j, int64_t i, int64_t top)
{
    double *ai = j->A + i * j->n;
    for (int64_t c = j->jb; c < top; c++) {
        const double *ac = j->A + c * j->n;
        ai[c] = (ai[c] - dot1(ai + j->jb, ac + j->jb, c - j->jb)) / ac[c];
    }
}

static void chol_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    const chol_job *j = arg;
    const int64_t i0 = j->je + task * ROWS_PER_TASK_F;
    const int64_t i1 = i0 + ROWS_PER_TASK_F < j->n ? i0 + ROWS_PER_TASK_F : j->n;
    chol_update(j, i0, i1);
    for (int64_t i = i0; i < i1; i++)
        chol_solve(j, i, j->je);
}

/* In place: the lower Cholesky factor L of the SPD matrix A (upper part left as is). P: n x PANEL doubles of work. */
static bool cholesky_lower(double *A, int64_t n, double *P, qpk_pool *pool, const qpk_kernels *k)
{
    for (int64_t jb = 0; jb < n; jb += PANEL) {
        if (pool && qpk_pool_cancelled(pool))
            return false; /* the caller tells this from a failed factorization */
        chol_job j = {A, n, jb, jb + PANEL < n ? jb + PANEL : n, P, k};
        for (int64_t c = 0; c < jb; c++) /* the panel's rows, transposed: the product's packed operand */
            for (int64_t r = jb; r < j.je; r++)
                P[c * PANEL + (r - jb)] = A[r * n + c];
        chol_update(&j, jb, j.je);
        for (int64_t i = jb; i < j.je; i++) { /* the panel's diagonal block, in order */
            chol_solve(&j, i, i);
            double *ai = A + i * n, d = ai[i] - dot1(ai + jb, ai + jb, i - jb);
            if (!(d > 0))
                return false;
            ai[i] = sqrt(d);
        }
        int64_t tasks = (n - j.je + ROWS_PER_TASK_F - 1) / ROWS_PER_TASK_F;
        if (pool)
            qpk_pool_run(pool, tasks, chol_task, &j);
        else
            for (int64_t t = 0; t < tasks; t++)
                chol_task(&j, t, 0);
    }
    return true;
}

typedef struct inverse_job {
    const double *L; /* n x n lower */
    double *X;       /* n x n, zeroed: becomes L^-1 (lower) */
    int64_t n;
    const qpk_kernels *k;
} inverse_job;

/* x[0, w) = (x - sum over k in [k0, k1) of l[k] X[k][c0 + .]) / d: the row operations inside a block. */
static void inverse_rows(const inverse_job *j, int64_t i, int64_t k0, int64_t k1, int64_t c0, int64_t w)
{
    const double *li = j->L + i * j->n;
    double *xi = j->X + i * j->n + c0;
    for (int64_t k = k0; k < k1; k++) {
        const double *xk = j->X + k * j->n + c0;
        for (int64_t c = 0; c < w; c++)
            xi[c] -= li[k] * xk[c];
    }
    for (int64_t c = 0; c < w; c++)
        xi[c] /= li[i];
}

/*
 * Columns [cb, cb + PANEL) of L^-1 by forward substitution, which needs only L: the
 * diagonal block row by row, then the rows below in blocks, each block's bulk one tiled
 * product with the rows of X already done. Column blocks are independent: one per task.
 */
#define INVERSE_ROWS 64

static void inverse_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    const inverse_job *j = arg;
    const int64_t n = j->n, cb = task * PANEL, ce = cb + PANEL < n ? cb + PANEL : n, w = ce - cb;
    for (int64_t i = cb; i < ce; i++) {
        j->X[i * n + i] = 1.0; /* with the division below: 1 / l_ii */
        inverse_rows(j, i, cb, i, cb, i - cb + 1);
    }
    for (int64_t ib = ce; ib < n; ib += INVERSE_ROWS) {
        const int64_t ie = ib + INVERSE_ROWS < n ? ib + INVERSE_ROWS : n;
        j->k->gemm_sub_f64(j->L + ib * n + cb, n, ie - ib, j->X + cb * n + cb, n, ib - cb, j->X + ib * n + cb, n, w);
        for (int64_t i = ib; i < ie; i++)
            inverse_rows(j, i, ib, i, cb, w);
    }
}

/*
 * U (n x n f32, upper) with U^T U = (J B J)^-1, from B (destroyed): the caller passes
 * its matrix already reversed. X: n x n doubles of work, P: n x PANEL. False if B is not SPD.
 */
static bool upper_factor_of_inverse(double *A, int64_t n, double *X, double *P, float *U, qpk_pool *pool)
{
    const qpk_kernels *k = qpk_kernels_best();
    if (!cholesky_lower(A, n, P, pool, k))
        return false;
    memset(X, 0, (size_t)(n * n) * sizeof *X);
    inverse_job j = {A, X, n, k};
    const int64_t tasks = (n + PANEL - 1) / PANEL;
    if (pool)
        qpk_pool_run(pool, tasks, inverse_task, &j);
    else
        for (int64_t t = 0; t < tasks; t++)
            inverse_task(&j, t, 0);
    /* U = J L^-1 J: U[a][b] = (L^-1)[n-1-a][n-1-b]. */
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++)
            U[a * n + b] = b < a ? 0.0f : (float)X[(n - 1 - a) * n + (n - 1 - b)];
    return true;
}

/* -------------------------------------------------------------- statistics */

/*
 * x^T x in square tiles of H, one tile per task, each tile's products added to H by the
 * task that made them while they are still in cache: the accumulation into H (f64,
 * memory-bound on wide inputs) runs on every thread, not after the product on one. A
 * tile's products are one gemm_acc from zero over the batch's rows in order, the chain
 * the kernels give every output: the same f32 sums whatever the tiling.
 */
#define GRAM_TILE 64 /* rows and columns of H per task: a multiple of the kernels' 32-column panels */

struct qpk_gram_ws {
    float *xt;    /* the batch transposed: [n][T] */
    float *cols;  /* the batch's columns by tile: tile i's [T][GRAM_TILE] (its x[t][i GRAM_TILE + c] at [t][c]) */
    float *y;     /* per thread: a tile's products [GRAM_TILE][GRAM_TILE] */
};

qpk_status qpk_gram_ws_create(qpk_gram_ws **out, int64_t n_max, int64_t t_max, qpk_pool *pool, qpk_err *e)
{
    *out = NULL;
    qpk_gram_ws *ws = calloc(1, sizeof *ws);
    const size_t padded = (size_t)((n_max + GRAM_TILE - 1) / GRAM_TILE * GRAM_TILE);
    if (ws) {
        ws->xt = malloc((size_t)(n_max * t_max) * sizeof(float));
        ws->cols = malloc(padded * (size_t)t_max * sizeof(float));
        ws->y = malloc((size_t)qpk_pool_threads(pool) * GRAM_TILE * GRAM_TILE * sizeof(float));
    }
    if (!ws || !ws->xt || !ws->cols || !ws->y) {
        qpk_gram_ws_free(ws);
        return qpk_err_setf(e, QPK_E_NOMEM, "GPTQ: out of memory for the statistics of %lld inputs", (long long)n_max);
    }
    *out = ws;
    return QPK_OK;
}

void qpk_gram_ws_free(qpk_gram_ws *ws)
{
    if (ws)
        free(ws->xt), free(ws->cols), free(ws->y), free(ws);
}

typedef struct gram_job {
    double *H;
    const float *x;
    int64_t T, n, tiles; /* tiles: per side of H */
    qpk_gram_ws *ws;
    const qpk_kernels *k;
} gram_job;

/*
 * Tile `task`'s columns of x, [i0, i0 + GRAM_TILE), both ways: transposed into rows of xt
 * and copied as the tile's column panel. x's rows are a power of two apart on common widths,
 * so reading down a column would land every row in one L1 set: each pass reads 16
 * consecutive floats (one line) of 16 rows and writes them transposed.
 */
static void gram_transpose_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    const gram_job *j = arg;
    const int64_t i0 = task * GRAM_TILE, i1 = i0 + GRAM_TILE < j->n ? i0 + GRAM_TILE : j->n, T = j->T;
    float *panel = j->ws->cols + (size_t)(task * T) * GRAM_TILE;
    for (int64_t t = 0; t < T; t++)
        memcpy(panel + t * GRAM_TILE, j->x + t * j->n + i0, (size_t)(i1 - i0) * sizeof *panel);
    for (int64_t t0 = 0; t0 < T; t0 += 16) {
        const int64_t t1 = t0 + 16 < T ? t0 + 16 : T;
        for (int64_t c0 = i0; c0 < i1; c0 += 16) {
            const int64_t c1 = c0 + 16 < i1 ? c0 + 16 : i1;
            for (int64_t t = t0; t < t1; t++)
                for (int64_t i = c0; i < c1; i++)
                    j->ws->xt[i * T + t] = j->x[t * j->n + i];
        }
    }
}

/* Tile (ta, tb), tb >= ta, of the upper triangle: its products, then H += them. */
static void gram_tile_task(void *arg, int64_t task, int thread)
{
    const gram_job *j = arg;
    const int64_t n = j->n, T = j->T;
    int64_t ta = 0;
    while (task >= j->tiles - ta) /* the tiles are numbered row by row of the triangle */
        task -= j->tiles - ta, ta++;
    const int64_t tb = ta + task, a0 = ta * GRAM_TILE, a1 = a0 + GRAM_TILE < n ? a0 + GRAM_TILE : n;
    const int64_t b0 = tb * GRAM_TILE, b1 = b0 + GRAM_TILE < n ? b0 + GRAM_TILE : n, w = b1 - b0;
    const float *panel = j->ws->cols + (size_t)(tb * T) * GRAM_TILE;
    float *y = j->ws->y + (size_t)thread * GRAM_TILE * GRAM_TILE;
    /* H's tile comes from memory (a wide input's H is tens of MB): asked for now, it arrives during the products. */
    for (int64_t a = a0; a < a1; a++)
        for (int64_t b = a > b0 ? a : b0; b < b1; b += 8)
            __builtin_prefetch(j->H + a * n + b, 1);
    memset(y, 0, (size_t)(GRAM_TILE * GRAM_TILE) * sizeof *y);
    /* On the diagonal, each 32-row half only from its own columns on: the lower quarter is not needed. */
    const int64_t half = ta == tb ? 32 : GRAM_TILE;
    for (int64_t r = 0; r < a1 - a0; r += half) {
        const int64_t c = ta == tb ? r : 0, rows = a1 - a0 - r < half ? a1 - a0 - r : half;
        if (c < w)
            j->k->gemm_acc(j->ws->xt + (a0 + r) * T, T, rows, panel + c, GRAM_TILE, T, y + r * GRAM_TILE + c,
                           GRAM_TILE, w - c);
    }
    for (int64_t a = a0; a < a1; a++) {
        double *h = j->H + a * n + b0;
        const float *ya = y + (a - a0) * GRAM_TILE;
        for (int64_t b = a > b0 ? a - b0 : 0; b < w; b++)
            h[b] += ya[b];
    }
}

void qpk_gram_add_upper(double *H, const float *x, int64_t T, int64_t n, qpk_gram_ws *ws, qpk_pool *pool,
                        const qpk_kernels *k)
{
    const int64_t tiles = (n + GRAM_TILE - 1) / GRAM_TILE;
    gram_job j = {H, x, T, n, tiles, ws, k};
    qpk_pool_run(pool, tiles, gram_transpose_task, &j);
    qpk_pool_run(pool, tiles * (tiles + 1) / 2, gram_tile_task, &j);
}

void qpk_gram_mirror(double *H, int64_t n)
{
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < a; b++)
            H[a * n + b] = H[b * n + a];
}

/* ------------------------------------------------------------------- GPTQ */

#define ROWS_PER_TASK 16 /* rows quantized together share each read of a row of U */
/*
 * Columns per block: inside a block each quantized column updates the block's later
 * columns at once (axpy_rows); the columns past the block get the block's updates in one
 * deferred, register-tiled pass (gemm_acc: GPTQ's "lazy batch"). Each weight still gets
 * the same FMAs in the same order, so the result is the unblocked algorithm's, bit for bit.
 */
#define GPTQ_BLOCK 128

typedef struct gptq_job {
    uint32_t type, group;
    float *W;               /* [rows][cols], ends dequantized */
    int64_t rows, cols;
    const float *U;         /* [cols][cols] upper factor, in processing order */
    const int64_t *perm;    /* processing position -> original column */
    bool act_order;
    qpk_qparams *params;    /* [rows][cols / group] */
    int32_t *codes;         /* [rows][cols], original column order */
    float *work;            /* per thread: ROWS_PER_TASK x cols, the rows in processing order, then
                             * ROWS_PER_TASK x GPTQ_BLOCK: the block's negated errors */
    qpk_status *status;
    qpk_err *errs;
    const qpk_kernels *k;
    /* ggml's block types: each block's scales (its codes are packed at the end), their size, the importance */
    uint8_t *blocks; /* [rows][cols / group][bb] */
    size_t bb;
    const float *imp; /* [cols], original order */
} gptq_job;

/* A ggml block's grid, decoded once for the weights of its group (block: its index, -1 for none). */
typedef struct block_grid {
    float a[16], m[16];
    int sub;
    int64_t block;
} block_grid;

/* The nearest code of x at (row, col) on its ggml block's grid, and the weight it decodes to. */
static void ggml_code(const gptq_job *j, block_grid *g, int64_t row, int64_t col, float x, int32_t *q, float *deq)
{
    const int64_t block = row * (j->cols / j->group) + col / j->group;
    if (g->block != block) {
        int qmin, qmax;
        g->sub = qpk_ggml_grid(j->type, j->blocks + (size_t)block * j->bb, g->a, g->m, &qmin, &qmax);
        g->block = block;
    }
    *q = qpk_ggml_code(j->type, g->a[(col % j->group) / g->sub], g->m[(col % j->group) / g->sub], x, deq);
}

static void gptq_task(void *arg, int64_t task, int thread)
{
    gptq_job *j = arg;
    const int64_t n = j->cols, G = j->group, r0 = task * ROWS_PER_TASK;
    const int64_t nr = j->rows - r0 < ROWS_PER_TASK ? j->rows - r0 : ROWS_PER_TASK;
    float *w = j->work + (size_t)thread * ROWS_PER_TASK * (size_t)(n + GPTQ_BLOCK), *neg_err = w + ROWS_PER_TASK * n;
    const qpk_kernels *k = j->k;
    block_grid grids[ROWS_PER_TASK];
    for (int64_t r = 0; r < nr; r++)
        grids[r].block = -1;
    j->status[task] = QPK_OK;
    for (int64_t r = 0; r < nr; r++)
        for (int64_t i = 0; i < n; i++)
            w[r * n + i] = j->W[(r0 + r) * n + j->perm[i]];
    for (int64_t i = 0; i < n; i++) {
        const int64_t col = j->perm[i], g = col / G, b0 = i / GPTQ_BLOCK * GPTQ_BLOCK;
        const int64_t b1 = b0 + GPTQ_BLOCK < n ? b0 + GPTQ_BLOCK : n;
        const float *ui = j->U + i * n;
        for (int64_t r = 0; r < nr; r++) {
            float *wr = w + r * n;
            qpk_qparams *p = j->blocks ? NULL : &j->params[(r0 + r) * (n / G) + g];
            /* Without act-order, a group's parameters come from its weights as updated so far. */
            if (!j->act_order && i % G == 0) {
                qpk_status s = j->blocks ? qpk_ggml_quantize_row(j->type, wr + i, G, j->imp ? j->imp + col : NULL,
                                                                  j->blocks + ((size_t)(r0 + r) * (size_t)(n / G) +
                                                                               (size_t)g) * j->bb,
                                                                  &j->errs[task])
                                         : qpk_group_params(j->type, wr + i, G, 1.0f, p, &j->errs[task]);
                if (s != QPK_OK) {
                    j->status[task] = s;
                    qpk_err_prefix(&j->errs[task], s, "row %lld", (long long)(r0 + r));
                    return;
                }
            }
            int32_t q;
            float deq;
            if (j->blocks)
                ggml_code(j, &grids[r], r0 + r, col, wr[i], &q, &deq);
            else
                q = qpk_quantize_value(j->type, p, wr[i]), deq = qpk_dequantize_value(j->type, p, q);
            const float e = (wr[i] - deq) / ui[i];
            j->codes[(r0 + r) * n + col] = q;
            wr[i] = deq;
            const float ne = -e;
            /* the block's later columns absorb it */
            k->axpy_rows(&ne, 0, 1, ui + i + 1, 0, 1, wr + i + 1, 0, b1 - i - 1);
            neg_err[r * GPTQ_BLOCK + (i - b0)] = ne;
        }
        if (i + 1 == b1 && b1 < n) /* the columns past the block absorb its errors */
            k->gemm_acc(neg_err, GPTQ_BLOCK, nr, j->U + b0 * n + b1, n, b1 - b0, w + b1, n, n - b1);
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

struct qpk_gptq_plan {
    int64_t n, n_max;
    bool act_order;
    int64_t *perm; /* processing position -> column */
    bool *dead;    /* columns whose input was never nonzero */
    float *U;      /* n x n: upper Cholesky factor of the damped, permuted H^-1 */
    float *imp;    /* H's diagonal (each input's mean square): what ggml's block fits weigh errors by */
    /* The factorization's work, kept for the next H: buffers this size come from fresh pages
     * (their first touch faults) each time they are allocated. */
    sort_item *items;
    double *B, *work, *panel;
};

void qpk_gptq_plan_free(qpk_gptq_plan *p)
{
    if (p)
        free(p->perm), free(p->dead), free(p->U), free(p->imp), free(p->items), free(p->B), free(p->work),
            free(p->panel), free(p);
}

qpk_status qpk_gptq_plan_create(qpk_gptq_plan **out, const double *H, int64_t n, const qpk_gptq_opts *o,
                                qpk_pool *pool, qpk_err *e)
{
    *out = NULL;
    qpk_gptq_plan *p;
    qpk_status s = qpk_gptq_plan_alloc(&p, n, e);
    if (s == QPK_OK && (s = qpk_gptq_plan_refit(p, H, n, o, pool, e)) != QPK_OK)
        qpk_gptq_plan_free(p), p = NULL;
    *out = p;
    return s;
}

qpk_status qpk_gptq_plan_alloc(qpk_gptq_plan **out, int64_t n_max, qpk_err *e)
{
    *out = NULL;
    qpk_gptq_plan *p = calloc(1, sizeof *p);
    const size_t n = (size_t)n_max;
    if (p)
        p->n_max = n_max, p->perm = malloc(n * sizeof *p->perm), p->dead = malloc(n * sizeof *p->dead),
        p->U = malloc(n * n * sizeof *p->U), p->imp = malloc(n * sizeof *p->imp), p->items = malloc(n * sizeof *p->items),
        p->B = malloc(n * n * sizeof *p->B), p->work = malloc(n * n * sizeof *p->work),
        p->panel = malloc(n * PANEL * sizeof *p->panel);
    if (!p || !p->perm || !p->dead || !p->U || !p->imp || !p->items || !p->B || !p->work || !p->panel) {
        qpk_gptq_plan_free(p);
        return qpk_err_setf(e, QPK_E_NOMEM, "GPTQ: out of memory for a Hessian of %lld columns", (long long)n_max);
    }
    *out = p;
    return QPK_OK;
}

qpk_status qpk_gptq_plan_refit(qpk_gptq_plan *p, const double *H, int64_t n, const qpk_gptq_opts *o, qpk_pool *pool,
                               qpk_err *e)
{
    if (!(o->damp > 0))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GPTQ: the dampening must be positive (got %g)", o->damp);
    if (n > p->n_max)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GPTQ: a plan for %lld columns cannot take %lld",
                            (long long)p->n_max, (long long)n);
    p->n = n, p->act_order = o->act_order;
    sort_item *items = p->items;
    double *B = p->B;
    /* Dead inputs carry no information: their weights are zeroed, and a unit diagonal keeps H invertible. */
    double mean = 0;
    for (int64_t i = 0; i < n; i++) {
        p->dead[i] = H[i * n + i] == 0;
        p->imp[i] = (float)H[i * n + i];
        mean += (p->dead[i] ? 1.0 : H[i * n + i]) / (double)n;
        items[i] = (sort_item){o->act_order ? H[i * n + i] : 0.0, i};
    }
    if (o->act_order)
        qsort(items, (size_t)n, sizeof *items, cmp_items);
    for (int64_t i = 0; i < n; i++)
        p->perm[i] = items[i].index;
    /* Damping, raised tenfold (up to three times) if the matrix is still not positive definite. */
    double damp = o->damp;
    bool ok = false;
    for (int attempt = 0; attempt < 4 && !ok; attempt++, damp *= 10) {
        for (int64_t i = 0; i < n; i++) /* B = J P^T H P J: permuted, then reversed */
            for (int64_t j = 0; j < n; j++) {
                const int64_t a = p->perm[n - 1 - i], b = p->perm[n - 1 - j];
                B[i * n + j] = (a == b && p->dead[a] ? 1.0 : H[a * n + b]) + (i == j ? damp * mean : 0.0);
            }
        ok = upper_factor_of_inverse(B, n, p->work, p->panel, p->U, pool);
        if (pool && qpk_pool_cancelled(pool))
            return qpk_err_setf(e, QPK_E_CANCELLED, "cancelled");
    }
    if (!ok)
        return qpk_err_setf(e, QPK_E_VALUE, "GPTQ: the Hessian is not positive definite even with damping %g",
                            damp / 10);
    return QPK_OK;
}

qpk_status qpk_gptq_quantize(const qpk_gptq_plan *p, uint32_t type, uint32_t group, float *W, int64_t rows,
                             qpk_pool *pool, void *out, qpk_err *e)
{
    const int64_t n = p->n;
    const bool ggml = qpk_ggml_type(type);
    if (!(qpk_type_has_grid(type) || qpk_ggml_can_quantize(type)) || !qpk_group_ok(type, group, n))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GPTQ: rows of %lld are not whole groups of %u", (long long)n,
                            group);
    const int64_t ng = n / group;
    const size_t bb = qpk_type_block_bytes(type, group);
    uint8_t *blocks = ggml ? malloc((size_t)(rows * ng) * bb) : NULL;
    qpk_status s = ggml && !blocks ? qpk_err_setf(e, QPK_E_NOMEM, "GPTQ: out of memory") : QPK_OK;
    int threads = pool ? qpk_pool_threads(pool) : 1;
    int64_t tasks = (rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    float *work = malloc((size_t)threads * ROWS_PER_TASK * (size_t)(n + GPTQ_BLOCK) * sizeof *work);
    qpk_qparams *params = calloc((size_t)(rows * ng), sizeof *params);
    int32_t *codes = malloc((size_t)(rows * n) * sizeof *codes);
    qpk_status *status = calloc((size_t)tasks, sizeof *status);
    qpk_err *errs = calloc((size_t)tasks, sizeof *errs);
    if (!work || !params || !codes || !status || !errs) {
        s = qpk_err_setf(e, QPK_E_NOMEM, "GPTQ: out of memory for a %lld x %lld matrix", (long long)rows,
                         (long long)n);
        goto out;
    }
    for (int64_t i = 0; i < n; i++)
        if (p->dead[i])
            for (int64_t r = 0; r < rows; r++)
                W[r * n + i] = 0;
    /* With act-order, the parameters of each group are fixed first ("static groups"), from the weights as given. */
    for (int64_t r = 0; p->act_order && r < rows && s == QPK_OK; r++) {
            if (ggml) { /* a whole row's blocks at once, each fitted to its weights and their importance */
                if ((s = qpk_ggml_quantize_row(type, W + r * n, n, p->imp, blocks + (size_t)(r * ng) * bb, e)) != QPK_OK)
                    qpk_err_prefix(e, s, "row %lld", (long long)r);
            } else {
                for (int64_t g = 0; g < ng && s == QPK_OK; g++)
                    if ((s = qpk_group_params(type, W + r * n + g * group, group, 1.0f, &params[r * ng + g], e)) !=
                        QPK_OK)
                        qpk_err_prefix(e, s, "row %lld", (long long)r);
            }
    }
    if (s != QPK_OK)
        goto out;
    gptq_job job = {type, group, W, rows, n, p->U, p->perm, p->act_order, params, codes, work, status, errs,
                    qpk_kernels_best(), blocks, bb, p->imp};
    if (pool)
        qpk_pool_run(pool, tasks, gptq_task, &job);
    else
        for (int64_t t = 0; t < tasks; t++)
            gptq_task(&job, t, 0);
    if (pool && qpk_pool_cancelled(pool))
        s = qpk_err_setf(e, QPK_E_CANCELLED, "cancelled");
    for (int64_t t = 0; t < tasks && s == QPK_OK; t++)
        if (status[t] != QPK_OK) {
            if (e)
                *e = errs[t];
            s = status[t];
        }
    if (s == QPK_OK)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t g = 0; g < ng; g++) {
                uint8_t *o = (uint8_t *)out + (size_t)(r * ng + g) * bb;
                if (ggml) { /* the block's scales, and the codes GPTQ chose on their grid */
                    memcpy(o, blocks + (size_t)(r * ng + g) * bb, bb);
                    qpk_ggml_pack_codes(type, o, codes + r * n + g * group);
                } else {
                    qpk_pack_group(type, group, &params[r * ng + g], codes + r * n + g * group, o);
                }
            }
out:
    free(work), free(params), free(codes), free(status), free(errs), free(blocks);
    return s;
}

qpk_status qpk_gptq(uint32_t type, uint32_t group, float *W, int64_t rows, int64_t cols, const double *H,
                    const qpk_gptq_opts *o, qpk_pool *pool, void *out, qpk_err *e)
{
    if (!(qpk_type_has_grid(type) || qpk_ggml_can_quantize(type)) || !qpk_group_ok(type, group, cols))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GPTQ: rows of %lld are not whole groups of %u", (long long)cols,
                            group);
    qpk_gptq_plan *p;
    qpk_status s = qpk_gptq_plan_create(&p, H, cols, o, pool, e);
    if (s == QPK_OK)
        s = qpk_gptq_quantize(p, type, group, W, rows, pool, out, e);
    qpk_gptq_plan_free(p);
    return s;
}
