/*
 * qpk/quant.h - numeric kernels: exact conversions between f32, f16 and bf16
 * (and, in later sections, the group-quantized types).
 * Pure functions: no I/O, no printing, no allocation.
 */
#ifndef QPK_QUANT_H
#define QPK_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "qpk/format.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================== scalar half conversions == */

/* Exact: every f16 (normal, subnormal, inf, NaN) has an f32 with the same value. */
static inline float qpk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | man << 13;
    } else if (exp != 0) {
        bits = sign | (exp + 112) << 23 | man << 13;
    } else {
        float f = (float)man * 0x1p-24f; /* subnormal (or zero): exact in f32 */
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest, ties to even; overflow gives inf, NaN stays NaN (quiet). */
static inline uint16_t qpk_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) /* >= 65520: rounds past the largest f16 (65504) */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: an f16 subnormal, i.e. a multiple of 2^-24 */
        uint32_t e = ax >> 23;
        if (e < 102) /* below 2^-25: rounds to zero */
            return sign;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e; /* value = m * 2^(e-150) */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        q += rem > half || (rem == half && (q & 1));
        return (uint16_t)(sign | q);
    }
    uint32_t v = ax - 0x38000000u; /* rebias the exponent from 127 to 15 */
    v += 0xfffu + ((v >> 13) & 1u);
    return (uint16_t)(sign | (v >> 13));
}

static inline float qpk_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest, ties to even; NaN stays NaN (quiet). */
static inline uint16_t qpk_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* ===================================================== row conversions == */

/* dst[i] = value of src[i] (type F32, F16 or BF16); exact. */
QPK_API void qpk_row_to_f32(uint32_t src_type, const void *src, float *dst, size_t n);

/*
 * dst[i] = src[i] rounded to dst_type (F32, F16 or BF16), ties to even.
 * Returns n on success, else the index of the first element that is not finite
 * or that overflows the destination type (the output is then incomplete).
 */
QPK_API size_t qpk_row_from_f32(uint32_t dst_type, const float *src, void *dst, size_t n);

/* The index of the first NaN or infinity among n elements of a plain type (F32, F16, BF16), or n. */
QPK_API size_t qpk_first_nonfinite(uint32_t type, const void *src, size_t n);

/* ============================================================ quantization == */

/* Whether type has a (d, z) grid, i.e. is one that qpk quantizes to by the grid rules. */
QPK_API bool qpk_type_has_grid(uint32_t type);
/* Whether qpk quantizes to type at all: the grid types, and ggml's Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K. */
QPK_API bool qpk_type_can_quantize(uint32_t type);

/*
 * Round-to-nearest quantization of a row of n weights (n a multiple of group). ggml's
 * types search each block's scales for the least weighted error (quant/ggml_blocks.c).
 */
QPK_API qpk_status qpk_quantize_row(uint32_t type, uint32_t group, const float *x, int64_t n, void *out, qpk_err *e);
/*
 * The same with importance: imp[i] (n values; NULL for none) weighs the error of input
 * column i, as llama.cpp's imatrix does (the mean of x_i^2 over calibration data). Used by
 * ggml's types; the grid types' rules do not take it.
 */
QPK_API qpk_status qpk_quantize_row_imp(uint32_t type, uint32_t group, const float *x, int64_t n, const float *imp, void *out,
                                qpk_err *e);
/* Reference dequantization of a row (any type, plain ones included). */
QPK_API void qpk_dequantize_row(uint32_t type, uint32_t group, const void *in, int64_t n, float *out);

/* ================================================================ matrices == */

typedef struct qpk_kernels qpk_kernels; /* compute kernels of one instruction set (experimental section) */
typedef struct qpk_pool qpk_pool;       /* worker threads (experimental section) */

/* A weight matrix [rows = out, cols = in], row-major, stored in any qpk type. */
typedef struct qpk_matrix {
    uint32_t type;
    uint32_t group_size;
    int64_t rows, cols;
    const void *data;
    /* NULL, or the order in which the stored columns take the input: column j multiplies
     * x[perm[j]] (an act-order checkpoint's permutation). The kernels never see it: the
     * runtime gathers x first (qpk_matmul does not). */
    const int32_t *perm;
} qpk_matrix;

/* Bytes of one row (every supported type stores rows contiguously); 0 for an unknown type. */
QPK_API size_t qpk_matrix_row_bytes(const qpk_matrix *w);

/* ==================================================================== GPTQ == */

#define QPK_GPTQ_DAMP 0.01 /* the default dampening: a fraction of H's mean diagonal */

typedef struct qpk_gptq_opts {
    double damp;    /* added to H's diagonal, as a fraction of its mean (> 0) */
    bool act_order; /* columns in decreasing order of H's diagonal, with static groups */
} qpk_gptq_opts;

/* ===================================================================== AWQ == */

/*
 * AWQ (Lin et al. 2023) for the linears that read one input (q/k/v, gate/up, ...):
 * per-input-channel scales s = mean|x|^alpha, alpha on a grid, chosen to minimize the
 * output error of the linears quantized with W diag(s) on sampled input rows; then,
 * with the scales folded (by the caller: it knows what produces the input), a clip
 * ratio per group of each row. Pure math: the caller gathers the statistics.
 */
#define QPK_AWQ_ALPHA_GRID 20   /* alphas 0, 1/20, ..., 19/20 */
#define QPK_AWQ_CLIP_STEPS 11   /* clip ratios 1.00, 0.95, ..., 0.50 */
#define QPK_AWQ_SAMPLE_ROWS 512 /* input rows kept per shared input for the searches */
/* The scale search stands in this grid type and group for ggml's block types (awq.c says why). */
#define QPK_AWQ_PROXY_TYPE QPK_TYPE_INT4
#define QPK_AWQ_PROXY_GROUP 32

typedef struct qpk_awq_opts {
    int alpha_grid; /* alphas a / alpha_grid for a in [0, alpha_grid) */
    int clip_steps; /* clip ratios 1 - 0.05 i for i in [0, clip_steps) */
    int sample_rows;
} qpk_awq_opts;

/* ============================================ experimental: static linking only == */
/*
 * qpk's own machinery, for the tools, tests and benchmarks built with it (define
 * QPK_STATIC_LINKING_ONLY and link libqpk.a): group parameters, the kernel tables, the
 * thread pool, GPTQ's and AWQ's searches. Not exported by libqpk.so, not stable.
 */
#ifdef QPK_STATIC_LINKING_ONLY

/*
 * One group's quantization parameters: w = d * q (int8, int4s), d * (q - z) (int4,
 * int8z) or d * q + m (MLX's affine types, rounded once: fmaf). d is an f16 value (the
 * affine types: a value of their half type, as m), z an integer in the code range.
 */
typedef struct qpk_qparams {
    float d;
    int32_t z;
    float m;
} qpk_qparams;

/*
 * Round-to-nearest parameters for n weights of one group, the range shrunk by
 * clip (1 = the full range; AWQ's clipping search passes less). Each rule puts the
 * group's extreme weight on a code (measured on the fixture model, that matters far
 * more than a uniform bound: it cut int4 KLD 2x and int4s 3.4x against the half-step
 * rules d = (max-min)/15 and d = max(-min/8.5, max/7.5)):
 *   int8:  d = the smallest f16 >= max|w| / 127: every weight within d/2 of its code;
 *   int4s: d = (the weight of largest magnitude, signed) / -8, its magnitude rounded
 *          up to an f16 (so d may be negative, as in ggml's Q4_0): every weight within
 *          |d|/2, except those on the far side whose code +8 clamps to +7 (within |d|);
 *   int4:  z = round(-min / ((max - min) / 15)), then d = the smallest f16 >= the
 *          scale covering both min and max with that z: every weight within d/2;
 *   mlx4, mlx8 (affine; half: the type's bf16 or f16): when the group has both signs,
 *          int4's rule (z = round(-min / ((max - min) / qmax)), d the smallest half
 *          covering both ends) with m = -d z rounded to a half, so that 0 sits within a
 *          half's rounding of a code (as MLX's own quantizer places it; measured on the
 *          outlier fixture, leaving 0 between codes doubled the KLD); else m = the largest
 *          half <= min and d = the smallest half >= (max - m) / qmax.
 * min and max are taken with 0 included (the affine types: without). An all-zero group gets d = 0 (it decodes to
 * zeros, never NaN). Fails with QPK_E_VALUE on a non-finite weight or a scale past
 * the f16 range (65504).
 */
qpk_status qpk_group_params(uint32_t type, const float *x, int64_t n, float clip, qpk_qparams *p, qpk_err *e);
/* The code of x under p: round to nearest (ties to even), clamped to the type's range. */
int32_t qpk_quantize_value(uint32_t type, const qpk_qparams *p, float x);
/* The weight a code stands for (exact in f32). */
float qpk_dequantize_value(uint32_t type, const qpk_qparams *p, int32_t q);
/* The codes a block of a grid type (qpk_type_has_grid) can hold, as qpk_unpack_group numbers them: every value of its
 * bits (an imported int8 checkpoint may use -128, which qpk's own quantizer does not). */
void qpk_type_code_range(uint32_t type, int32_t *qmin, int32_t *qmax);
/* Writes one block (FORMAT.md layout) from its parameters and its group's codes. */
void qpk_pack_group(uint32_t type, uint32_t group, const qpk_qparams *p, const int32_t *q, void *block);
/* Reads one block back: parameters and codes. */
void qpk_unpack_group(uint32_t type, uint32_t group, const void *block, qpk_qparams *p, int32_t *q);

/*
 * Round-to-nearest of one group of n weights, its range shrunk by clip: the parameters,
 * the codes (q may be NULL) and the weights they decode to (deq may be NULL, or w).
 * What GPTQ's and AWQ's searches and the calibrated stores all quantize with.
 */
qpk_status qpk_quantize_group(uint32_t type, const float *w, int64_t n, float clip, qpk_qparams *p, int32_t *q,
                              float *deq, qpk_err *e);

/*
 * The compute kernels of one instruction set. Two summation orders, each fixed:
 *
 * gemm (prefill, T >= 2 tokens): y[t][r] is one chain of fused multiply-adds over k in
 * order, starting from 0. Every table computes exactly that, so a token's logits are
 * bit-identical whatever the batch it is in, the rows a thread is given, and the
 * instruction set (scalar, AVX2, AVX-512). This is what lets the SIMD kernels hold 32
 * rows in vectors and broadcast x[k] into them (BLIS's outer-product form).
 *
 * gemv (decode, one token): a dot product per row read as one sequential stream: the K
 * elements form blocks of 8; block b accumulates lane-wise (FMA, in order) into chain
 * b mod 4; the chains combine lane-wise as (c0+c1)+(c2+c3); the 8 lanes reduce as
 * ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)); the K mod 8 tail elements follow, in order. The
 * SIMD tables agree bit for bit; gemv and gemm agree within the rounding of two f32 sums.
 */
struct qpk_kernels {
    const char *name; /* "avx512vbmi", "avx512", "avx2" or "scalar" */
    /* dst[0..cols) = row r of w, in f32. */
    void (*row_to_f32)(const qpk_matrix *w, int64_t r, float *dst);
    /*
     * y[r] = dot(W[r], x) for r in [r0, r1).
     * scratch: qpk_gemm_scratch_floats(cols) floats, private to the caller's thread.
     */
    void (*gemv)(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, float *scratch);
    /* y[t * ldy + r] = dot(W[r], x[t * ldx ..]) for t in [0, T), r in [r0, r1); scratch as gemv. */
    void (*gemm)(const qpk_matrix *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                 int64_t r0, int64_t r1, float *scratch);
    /* dot of two f32 vectors (attention scores). */
    float (*dot)(const float *a, const float *b, int64_t n);
    /*
     * y[q] += a[q][t] * x[t] for t = 0 .. T-1 in order, for each of Q rows a[q] = a + q lda
     * and y[q] = y + q ldy, rows x[t] = x + t ldx (attention's values, Q queries at once):
     * per element one chain over t, each step one fused multiply-add (scalar: a product and
     * a sum); y stays in registers across the rows, each row of x loaded once for the Q.
     */
    void (*axpy_rows)(const float *a, int64_t lda, int64_t Q, const float *x, int64_t ldx, int64_t T, float *y,
                      int64_t ldy, int64_t n);
    /*
     * sum of exp(x[i] - shift), the exponentials in f32 (within 2 ulp of expf), the sum
     * in f64; if out is not NULL, out[i] = that exponential. For log-softmax over a
     * whole vocabulary (shift = the maximum).
     */
    double (*sum_exp)(const float *x, int64_t n, float shift, float *out);
    /* Index of the largest element (the first of equals); *max gets its value. */
    int64_t (*argmax)(const float *x, int64_t n, float *max);
    /* qpk_quantize_row, the same bytes (round-to-nearest: one division and one rounding per weight). */
    qpk_status (*quantize_row)(uint32_t type, uint32_t group, const float *x, int64_t n, void *out, qpk_err *e);
    /*
     * y[t][j] += sum over k of x[t][k] p[k][j] for t < T, j < J, on top of y: each output
     * one FMA chain over k in order, as gemm (GPTQ's deferred updates of the later columns:
     * the same FMAs, in the same order, as one axpy_rows over k).
     */
    void (*gemm_acc)(const float *x, int64_t ldx, int64_t T, const float *p, int64_t ldp, int64_t K, float *y,
                     int64_t ldy, int64_t J);
    /*
     * y[t][j] -= sum over k of x[t][k] p[k][j] in f64, on top of y: each output one chain
     * of fused negated multiply-adds over k in order (GPTQ's blocked factorizations). Every
     * table: the same bits.
     */
    void (*gemm_sub_f64)(const double *x, int64_t ldx, int64_t T, const double *p, int64_t ldp, int64_t K,
                         double *y, int64_t ldy, int64_t J);
    /*
     * y[s * T + t] = dot(x + t * ldx, w + s * ldw, n) for t < T, s < S: each the table's
     * dot, bit for bit, many at once (AWQ's clip search: every sampled row against each
     * clip ratio's weight errors).
     */
    void (*dot_rows)(const float *x, int64_t ldx, int64_t T, const float *w, int64_t ldw, int64_t S, int64_t n,
                     float *y);
    /*
     * The group w[0..n) quantized and decoded once per clip ratio, ratio i's weights at
     * out + i n: qpk_quantize_group's values, bit for bit (AWQ's clip search). Returns how
     * many ratios were done: it stops at the first qpk_quantize_group refuses (all of them
     * for a non-finite weight or a type without a group quantizer).
     */
    int (*quantize_group_ratios)(uint32_t type, const float *w, int64_t n, const float *ratios, int n_ratios,
                                 float *out);
    /*
     * out[k] = (w[k] s[k] rounded to the nearest in groups of `group`, decoded) / s[k] for a
     * row of n weights of a type with a grid (AWQ's candidate weights): the values of
     * qpk_quantize_group at clip 1 on the scaled row, bit for bit. false (out undefined) for
     * a row that qpk_quantize_group refuses (a non-finite weight, a scale past f16) or whose
     * groups qpk_group_ok refuses, as qpk_quantize_row would: the caller goes group by group.
     */
    bool (*fake_quantize_row)(uint32_t type, uint32_t group, const float *w, const float *s, int64_t n, float *out);
    /*
     * packed[k * 32 + j] = rows[j * ld + k0 + k] for k < kc, j < 32 (rows j >= nr as 0):
     * 32 rows as gemm packs its panels, for gemm_acc (AWQ's candidate weights). packed is
     * 64-byte aligned. A copy: every table the same floats.
     */
    void (*pack_panel)(const float *rows, size_t ld, int nr, int64_t k0, int64_t kc, float *packed);
    /*
     * out[i] = expf(x[i] - shift) (out may be x): the runtime's softmax and SwiGLU. The scalar
     * table calls expf; the vector tables compute glibc's expf (2.28 and later) step for step,
     * eight or sixteen at a time, and give its bits (expf itself for |x| >= 88 and NaN).
     */
    void (*exp_shifted)(const float *x, int64_t n, float shift, float *out);
    /*
     * gemv over four streams `quarter` rows apart: y[r + i quarter] = dot(W[r + i quarter], x)
     * for r in [r0, r1), i < 4, each row as gemv computes it. gemv reads its rows this way
     * (quarter (r1 - r0) / 4); the pool cuts a share of rows into pieces that continue the
     * same four streams.
     */
    void (*gemv4)(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t quarter,
                  float *scratch);
};

/* The best table this CPU runs: "avx512vbmi" (avx512's with AVX-512 VBMI for Q6_K's rows), "avx512" (AVX2's
 * with AVX-512F, BW and VL for the quantized rows), "avx2" (AVX2+FMA+F16C) or "scalar". avx512vbmi, avx512 and
 * avx2 give the same bits. */
const qpk_kernels *qpk_kernels_best(void);
const qpk_kernels *qpk_kernels_scalar(void);
/* Table i of those this CPU runs (0: scalar), NULL past the last: for tests and benchmarks. */
const qpk_kernels *qpk_kernels_available(size_t i);
/* The table of that name if this CPU runs it, else NULL. */
const qpk_kernels *qpk_kernels_named(const char *name);
size_t qpk_gemm_scratch_floats(int64_t cols);

/* =============================================================== thread pool == */

/*
 * A fixed set of worker threads that run tasks [0, n) of a job; the calling thread
 * takes part. Tasks must write disjoint outputs: then the result does not depend
 * on which thread runs which task, nor on their number.
 */
typedef void (*qpk_task_fn)(void *ctx, int64_t task, int thread);

/* n_threads >= 1 (0: all online CPUs). */
qpk_status qpk_pool_create(qpk_pool **out, int n_threads, qpk_err *e);
void qpk_pool_free(qpk_pool *p); /* NULL-safe */
int qpk_pool_threads(const qpk_pool *p);
/* Runs fn(ctx, i, thread) for i in [0, n_tasks); returns when all are done. */
void qpk_pool_run(qpk_pool *p, int64_t n_tasks, qpk_task_fn fn, void *ctx);
/*
 * Cooperative cancellation, about as fast as one task: cancel(ud) is polled before each
 * task, and once it returns true no further task of any job runs (a job in progress
 * ends early, its outputs incomplete). Whoever runs jobs checks qpk_pool_cancelled()
 * after them and stops with QPK_E_CANCELLED. Setting a predicate clears the state.
 */
void qpk_pool_set_cancel(qpk_pool *p, bool (*cancel)(void *ud), void *ud);
bool qpk_pool_cancelled(qpk_pool *p);

/*
 * y[T][rows] = x[T][cols] . W^T on all the pool's threads, rows split among them (each
 * output has one writer: the result does not depend on the thread count). T == 1 takes
 * the gemv path. scratch: qpk_pool_threads(pool) x qpk_gemm_scratch_floats(cols) floats.
 */
void qpk_matmul(qpk_pool *pool, const qpk_kernels *k, const qpk_matrix *w, const float *x, int64_t T, float *y,
                float *scratch);
/*
 * qpk_matmul of n <= QPK_MATMUL_MAX matrices of the same cols that read the same x (q, k
 * and v; gate and up) into y[0..n), in one pass of the pool: one wait for the threads
 * instead of n, and the rows of all of them to balance.
 */
#define QPK_MATMUL_MAX 4
void qpk_matmul_many(qpk_pool *pool, const qpk_kernels *k, int n, const qpk_matrix *const w[], const float *x,
                     int64_t T, float *const y[], float *scratch);

/*
 * GPTQ's statistics: H += x^T x over T rows of n inputs (the f32 Gram matrix of x's
 * columns, accumulated in f64), only H's upper triangle (56% of the full product);
 * qpk_gram_mirror completes H once every row is in. The workspace serves inputs up to
 * n_max wide in batches of up to t_max rows; its result does not depend on the pool.
 */
typedef struct qpk_gram_ws qpk_gram_ws;
qpk_status qpk_gram_ws_create(qpk_gram_ws **out, int64_t n_max, int64_t t_max, qpk_pool *pool, qpk_err *e);
void qpk_gram_ws_free(qpk_gram_ws *ws); /* NULL-safe */
void qpk_gram_add_upper(double *H, const float *x, int64_t T, int64_t n, qpk_gram_ws *ws, qpk_pool *pool,
                        const qpk_kernels *k);
void qpk_gram_mirror(double *H, int64_t n);

/*
 * GPTQ (Frantar et al. 2022) for a weight matrix W [rows x cols] (row-major f32)
 * given H = 2 X^T X / n [cols x cols] (row-major f64) of its inputs X, in two steps:
 * a plan factors H once (the upper Cholesky factor of the damped H^-1), then serves
 * every matrix with the same inputs. Quantizing writes rows x cols/group blocks of
 * `type` to out (the .qpk layout) and leaves in W the weights those blocks decode to.
 * Columns whose H diagonal is 0 (inputs never seen) are zeroed. With act_order, the
 * parameters of every group are fixed before the columns are visited by decreasing
 * H diagonal ("static groups"): the stored groups stay contiguous and need no
 * permutation at run time. Without it, a group's parameters are chosen when its
 * first column is reached, from the weights as updated by then. pool (may be NULL)
 * spreads the work over threads without changing the result.
 */
typedef struct qpk_gptq_plan qpk_gptq_plan;
qpk_status qpk_gptq_plan_create(qpk_gptq_plan **out, const double *H, int64_t cols, const qpk_gptq_opts *o,
                                qpk_pool *pool, qpk_err *e);
void qpk_gptq_plan_free(qpk_gptq_plan *p); /* NULL-safe */
/*
 * The same in two steps, for a caller with many inputs: a plan's memory for up to n_max
 * columns, then refit for each H of cols <= n_max columns (no allocation; the same U as
 * qpk_gptq_plan_create). A failed refit leaves the plan to be refitted or freed.
 */
qpk_status qpk_gptq_plan_alloc(qpk_gptq_plan **out, int64_t n_max, qpk_err *e);
qpk_status qpk_gptq_plan_refit(qpk_gptq_plan *p, const double *H, int64_t cols, const qpk_gptq_opts *o,
                               qpk_pool *pool, qpk_err *e);
qpk_status qpk_gptq_quantize(const qpk_gptq_plan *p, uint32_t type, uint32_t group, float *W, int64_t rows,
                             qpk_pool *pool, void *out, qpk_err *e);
/* Both steps for one matrix. */
qpk_status qpk_gptq(uint32_t type, uint32_t group, float *W, int64_t rows, int64_t cols, const double *H,
                    const qpk_gptq_opts *o, qpk_pool *pool, void *out, qpk_err *e);

/* One linear reading the shared input: f32 weights [rows][cols] and how it is stored (plain: not quantized). */
typedef struct qpk_awq_linear {
    const float *w;
    int64_t rows, cols;
    uint32_t type, group;
} qpk_awq_linear;

/*
 * The scales (d = cols of every linear) from mean_abs[d] (mean |x| per channel) and
 * n_rows sampled input rows [n_rows][d]; normalized so that max(s) min(s) = 1. Every
 * alpha is screened on every fourth row (and a wide linear on a quarter to a half of its
 * outputs); the five best, and alpha 0, compete on all of them. alpha 0 is plain RTN, so
 * the choice is never worse than RTN on the samples (for
 * ggml's block types: RTN in QPK_AWQ_PROXY_TYPE, which the search uses in their place).
 * All 1 when no linear is quantized or there are no samples. At most 3 linears, and a grid
 * of at most 64 alphas.
 */
qpk_status qpk_awq_scales(const qpk_awq_linear *lin, int n_lin, const double *mean_abs, const float *rows,
                          int64_t n_rows, const qpk_awq_opts *o, qpk_pool *pool, const qpk_kernels *k, float *s,
                          qpk_err *e);
/*
 * For each group of each row of the (scaled) linear, the clip ratio whose quantization
 * error has the least output error on the (scaled) input rows xs [n_rows][cols]:
 * clip[row * groups + group].
 */
qpk_status qpk_awq_clip(const qpk_awq_linear *lin, const float *xs, int64_t n_rows, const qpk_awq_opts *o,
                        qpk_pool *pool, const qpk_kernels *k, float *clip, qpk_err *e);

#endif /* QPK_STATIC_LINKING_ONLY */

#ifdef __cplusplus
}
#endif
#endif /* QPK_QUANT_H */
