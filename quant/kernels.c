/*
 * Scalar kernels (the reference and the fallback) and the choice of kernel table.
 * gemv follows the 4-chain, 8-lane shape documented in qpk/quant.h; gemm its one FMA chain.
 */
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <math.h>
#include <string.h>

#include "kernels.h"

size_t qpk_matrix_row_bytes(const qpk_matrix *w) { return qpk_type_row_bytes(w->type, w->group_size, w->cols); }

/* A panel's rows in f32, then its packed chunk (64-byte aligned inside). */
size_t qpk_gemm_scratch_floats(int64_t cols)
{
    const size_t kc = cols < QPK_GEMM_KC ? (size_t)cols : QPK_GEMM_KC;
    return (size_t)QPK_GEMM_PANEL * SCRATCH_STRIDE(cols) + kc * QPK_GEMM_PANEL + 16;
}

void qpk_scalar_row_to_f32(const qpk_matrix *w, int64_t r, float *dst)
{
    qpk_dequantize_row(w->type, w->group_size, qpk_row_ptr(w, r), w->cols, dst);
}

static float reduce8(const float a[8])
{
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* The weight-row dot product: 4 chains of 8 lanes over blocks of 8, then the tail. */
static float dot4(const float *x, const float *w, int64_t n)
{
    float acc[4][8] = {{0}};
    int64_t nb = n / 8;
    for (int64_t b = 0; b < nb; b++)
        for (int j = 0; j < 8; j++)
            acc[b % 4][j] += x[8 * b + j] * w[8 * b + j];
    float lanes[8];
    for (int j = 0; j < 8; j++)
        lanes[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    float s = reduce8(lanes);
    for (int64_t k = 8 * nb; k < n; k++)
        s += x[k] * w[k];
    return s;
}

/* A plain dot product (attention scores): one chain of 8 lanes, then the tail. */
static float dot(const float *x, const float *y, int64_t n)
{
    float acc[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += x[k + j] * y[k + j];
    float s = reduce8(acc);
    for (; k < n; k++)
        s += x[k] * y[k];
    return s;
}

static void dot_rows(const float *x, int64_t ldx, int64_t T, const float *w, int64_t ldw, int64_t S, int64_t n,
                     float *y)
{
    for (int64_t s = 0; s < S; s++)
        for (int64_t t = 0; t < T; t++)
            y[s * T + t] = dot(x + t * ldx, w + s * ldw, n);
}

static void axpy_rows(const float *a, int64_t lda, int64_t Q, const float *x, int64_t ldx, int64_t T, float *y,
                      int64_t ldy, int64_t n)
{
    for (int64_t q = 0; q < Q; q++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < n; i++)
                y[q * ldy + i] += a[q * lda + t] * x[t * ldx + i];
}

/* Rows are converted (f32 ones copied) into scratch first: weights may be unaligned. */
float qpk_scalar_row_dot(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)
{
    qpk_dequantize_row(w->type, w->group_size, row, w->cols, scratch);
    return dot4(x, scratch, w->cols);
}

static void gemv(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, float *scratch)
{
    for (int64_t r = r0; r < r1; r++)
        y[r] = qpk_scalar_row_dot(w, qpk_row_ptr(w, r), x, scratch);
}

static void gemv4(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t quarter,
                  float *scratch)
{
    for (int i = 0; i < 4; i++)
        gemv(w, x, y, r0 + i * quarter, r1 + i * quarter, scratch);
}

/* The gemm sum of every table: one chain of fused multiply-adds over k, in order. */
static void gemm(const qpk_matrix *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                 int64_t r0, int64_t r1, float *scratch)
{
    for (int64_t r = r0; r < r1; r++) {
        qpk_scalar_row_to_f32(w, r, scratch);
        for (int64_t t = 0; t < T; t++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < w->cols; k++)
                acc = fmaf(x[t * ldx + k], scratch[k], acc);
            y[t * ldy + r] = acc;
        }
    }
}

static double sum_exp(const float *x, int64_t n, float shift, float *out)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = expf(x[i] - shift);
        if (out)
            out[i] = v;
        s += v;
    }
    return s;
}

static int64_t argmax(const float *x, int64_t n, float *max)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    *max = n ? x[best] : 0;
    return best;
}

static void gemm_acc(const float *x, int64_t ldx, int64_t T, const float *p, int64_t ldp, int64_t K, float *y,
                     int64_t ldy, int64_t J)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < J; j++) {
            float acc = y[t * ldy + j];
            for (int64_t k = 0; k < K; k++)
                acc = fmaf(x[t * ldx + k], p[k * ldp + j], acc);
            y[t * ldy + j] = acc;
        }
}

static void gemm_sub_f64(const double *x, int64_t ldx, int64_t T, const double *p, int64_t ldp, int64_t K, double *y,
                         int64_t ldy, int64_t J)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < J; j++) {
            double acc = y[t * ldy + j];
            for (int64_t k = 0; k < K; k++)
                acc = fma(-x[t * ldx + k], p[k * ldp + j], acc);
            y[t * ldy + j] = acc;
        }
}

int qpk_scalar_quantize_group_ratios(uint32_t type, const float *w, int64_t n, const float *ratios, int n_ratios,
                                     float *out)
{
    int i = 0;
    qpk_qparams p;
    while (i < n_ratios && qpk_quantize_group(type, w, n, ratios[i], &p, NULL, out + i * n, NULL) == QPK_OK)
        i++;
    return i;
}

bool qpk_scalar_fake_quantize_row(uint32_t type, uint32_t group, const float *w, const float *s, int64_t n,
                                  float *out)
{
    if (!qpk_type_has_grid(type) || !qpk_group_ok(type, group, n))
        return false;
    for (int64_t k = 0; k < n; k++)
        out[k] = w[k] * s[k];
    for (int64_t g = 0; g < n; g += group) {
        qpk_qparams p;
        if (qpk_quantize_group(type, out + g, group, 1.0f, &p, NULL, out + g, NULL) != QPK_OK)
            return false;
    }
    for (int64_t k = 0; k < n; k++)
        out[k] /= s[k];
    return true;
}

/* A line of each row at a time: rows a power of two apart would all land in one L1 set going down a column. */
static void pack_panel(const float *rows, size_t ld, int nr, int64_t k0, int64_t kc, float *packed)
{
    for (int64_t c = 0; c < kc; c += 16)
        for (int j = 0; j < QPK_GEMM_PANEL; j++)
            for (int64_t k = c; k < kc && k < c + 16; k++)
                packed[k * QPK_GEMM_PANEL + j] = j < nr ? rows[(size_t)j * ld + k0 + k] : 0.0f;
}

static void exp_shifted(const float *x, int64_t n, float shift, float *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = expf(x[i] - shift);
}

static const qpk_kernels SCALAR = {"scalar", qpk_scalar_row_to_f32, gemv, gemm, dot, axpy_rows, sum_exp, argmax,
                                   qpk_quantize_row, gemm_acc, gemm_sub_f64, dot_rows,
                                   qpk_scalar_quantize_group_ratios, qpk_scalar_fake_quantize_row, pack_panel,
                                   exp_shifted, gemv4};

const qpk_kernels *qpk_kernels_scalar(void) { return &SCALAR; }

/* The tables this CPU runs, from the plainest (scalar) to the best. */
#define TABLES_MAX 4
static size_t supported(const qpk_kernels *out[TABLES_MAX])
{
    size_t n = 0;
    out[n++] = &SCALAR;
#if defined(__x86_64__) && defined(__GNUC__)
    /* F16C by its CPUID bit (leaf 1, ECX bit 29): clang 14 has no "f16c" for
     * __builtin_cpu_supports. AVX2's check already covers the OS saving YMM state,
     * and AVX-512F's the ZMM state; the byte shifts of Q6_K's rows need AVX-512BW,
     * and 256-bit operations on registers 16-31 (dot_rows' tiles) AVX-512VL; VBMI's byte
     * permutes (Q6_K's rows) have their own table, so that AVX-512 without them keeps the rest. */
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
        out[n++] = &qpk_kernels_avx2_table;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl")) {
            out[n++] = &qpk_kernels_avx512_table;
            if (__builtin_cpu_supports("avx512vbmi"))
                out[n++] = &qpk_kernels_avx512vbmi_table;
        }
    }
#endif
    return n;
}

const qpk_kernels *qpk_kernels_best(void)
{
    const qpk_kernels *t[TABLES_MAX];
    return t[supported(t) - 1];
}

const qpk_kernels *qpk_kernels_available(size_t i)
{
    const qpk_kernels *t[TABLES_MAX];
    return i < supported(t) ? t[i] : NULL;
}

const qpk_kernels *qpk_kernels_named(const char *name)
{
    const qpk_kernels *t[TABLES_MAX];
    for (size_t i = 0, n = supported(t); i < n; i++)
        if (!strcmp(t[i]->name, name))
            return t[i];
    return NULL;
}
