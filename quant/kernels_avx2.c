/*
 * AVX2 + FMA + F16C kernels (this file is compiled with -mavx2 -mfma -mf16c and
 * reached only after a CPU check).
 *
 * gemv reads one row at a time, front to back, converting on the fly with the four
 * chains of qpk/quant.h in flight; gemm packs 32 rows at a time and runs a register tile
 * of tokens x 32 rows over them, one FMA chain per output (below). The conversions are
 * exact, so every table computes the same sums.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "traits.h"
#include "kernels.h"

static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline float fma1(float a, float b, float c)
{
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

/* The f16 at p, by F16C: exact, as qpk_f16_to_f32 is, without its branches (which sat in
 * every block of the K-quant and IQ4 row kernels). */
static inline float f16_at(const uint8_t *p)
{
    return _cvtsh_ss(qpk_le16(p));
}

/* 8 weights of a row starting at element k, as f32. */
static inline __m256 load8(uint32_t type, const uint8_t *row, int64_t k)
{
    switch (type) {
    case QPK_TYPE_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * k)));
    case QPK_TYPE_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 2 * k))), 16));
    default: return _mm256_loadu_ps((const float *)(row + 4 * k));
    }
}

static inline float load1(uint32_t type, const uint8_t *row, int64_t k)
{
    uint16_t h;
    switch (type) {
    case QPK_TYPE_F16: return f16_at(row + 2 * k);
    case QPK_TYPE_BF16: memcpy(&h, row + 2 * k, 2); return qpk_bf16_to_f32(h);
    default: {
        float f;
        memcpy(&f, row + 4 * k, 4);
        return f;
    }
    }
}

/* ------------------------------------------------------ group-quantized codes */

/* The 16-bit float at p: bf16 or f16. */
static inline float half_at(const uint8_t *p, bool bf16)
{
    if (!bf16)
        return f16_at(p);
    const uint32_t bits = (uint32_t)qpk_le16(p) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* The scale at the head of a block (f16 d, or an affine type's s), broadcast. */
static inline __m256 block_scale(uint32_t type, const uint8_t *b)
{
    return _mm256_set1_ps(half_at(b, QPK_TYPE_TABLE[type].scale_bf16));
}

/* 32 weights in order, as four vectors (named: arrays of vectors would live on the stack). */
typedef struct w32 {
    __m256 a, b, c, d;
} w32;

/* Bytes before the codes in a block, and code bytes per chunk of 32 (constants for a constant type). */
#define CODES_AT(type) (QPK_TYPE_TABLE[type].head_bytes)
#define CHUNK_BYTES(type) (4 * QPK_TYPE_TABLE[type].bits)

/*
 * The 32 weights whose codes start at p: d * (q - z) computed exactly (the products
 * have at most 18 significant bits), or an affine type's s q + b by one fused
 * multiply-add, as the reference does.
 */
static inline __attribute__((always_inline)) w32 dequant32(uint32_t type, const uint8_t *p, __m256 d, __m256 zero)
{
    w32 w;
    if (QPK_TYPE_TABLE[type].bits == 8 && QPK_QUANT_TRAITS[type].grid.qmin < 0) { /* signed codes */
#define Q8(off) _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + off)))))
        w.a = Q8(0), w.b = Q8(8), w.c = Q8(16), w.d = Q8(24);
#undef Q8
        return w;
    }
    /* unsigned codes: d (q - z), or an affine type's s q + b, one rounding (zero is then b) */
    const bool affine = QPK_QUANT_TRAITS[type].grid.rule == QPK_RULE_AFFINE;
#define W(q) (affine ? _mm256_fmadd_ps(d, (q), zero) : _mm256_mul_ps(d, _mm256_sub_ps((q), zero)))
    if (QPK_TYPE_TABLE[type].bits == 8) {
#define U8(off) W(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + off)))))
        w.a = U8(0), w.b = U8(8), w.c = U8(16), w.d = U8(24);
#undef U8
        return w;
    }
    const __m128i m = _mm_set1_epi8(15), raw = _mm_loadu_si128((const __m128i *)p);
    const __m128i lo = _mm_and_si128(raw, m), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m); /* codes 0..15, 16..31 */
#define Q4(v) W(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)))
    w.a = Q4(lo), w.b = Q4(_mm_srli_si128(lo, 8)), w.c = Q4(hi), w.d = Q4(_mm_srli_si128(hi, 8));
#undef Q4
#undef W
    return w;
}

/* What a block's stored codes are offset by: its zero point, or the type's bias. */
static inline float block_zero_f(uint32_t type, const uint8_t *b)
{
    const qpk_grid *g = &QPK_QUANT_TRAITS[type].grid;
    if (g->rule == QPK_RULE_AFFINE) /* its bias b: the weight of code 0 */
        return half_at(b + offsetof(qpk_head_affine, b), QPK_TYPE_TABLE[type].scale_bf16);
    return g->rule == QPK_RULE_ZERO_POINT ? (float)qpk_grid_zero(g, b) : (float)g->bias;
}

static inline __m256 block_zero(uint32_t type, const uint8_t *b) { return _mm256_set1_ps(block_zero_f(type, b)); }

static inline __attribute__((always_inline)) void dequant_row_t(uint32_t type, uint32_t group, const uint8_t *row,
                                                                int64_t n, float *dst)
{
    const size_t bb = qpk_type_block_bytes(type, group);
    for (int64_t g = 0; g < n; g += group, row += bb) {
        const __m256 d = block_scale(type, row), z = block_zero(type, row);
        const uint8_t *codes = row + CODES_AT(type);
        for (int64_t k = g; k < g + group; k += 32, codes += CHUNK_BYTES(type)) {
            w32 w = dequant32(type, codes, d, z);
            _mm256_storeu_ps(dst + k, w.a), _mm256_storeu_ps(dst + k + 8, w.b);
            _mm256_storeu_ps(dst + k + 16, w.c), _mm256_storeu_ps(dst + k + 24, w.d);
        }
    }
}

static inline __attribute__((always_inline)) void plain_row_t(uint32_t type, const uint8_t *row, int64_t n,
                                                              float *dst)
{
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        _mm256_storeu_ps(dst + k, load8(type, row, k));
    for (; k < n; k++)
        dst[k] = load1(type, row, k);
}

static float dot(const float *a, const float *b, int64_t n)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    float s = hsum(acc);
    for (; k < n; k++)
        s = fma1(a[k], b[k], s);
    return s;
}

/*
 * 64 elements of y at a time in eight registers while every row goes by (one load and one
 * FMA per 8 elements, no store in between), then 8 at a time, then the tail element by element.
 */
static void axpy_row(const float *a, const float *x, int64_t ldx, int64_t T, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++)
            acc[c] = _mm256_loadu_ps(y + i + 8 * c);
        for (int64_t t = 0; t < T; t++) {
            const __m256 av = _mm256_set1_ps(a[t]);
            const float *xt = x + t * ldx + i;
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++)
                acc[c] = _mm256_fmadd_ps(av, _mm256_loadu_ps(xt + 8 * c), acc[c]);
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++)
            _mm256_storeu_ps(y + i + 8 * c, acc[c]);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 acc = _mm256_loadu_ps(y + i);
        for (int64_t t = 0; t < T; t++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(a[t]), _mm256_loadu_ps(x + t * ldx + i), acc);
        _mm256_storeu_ps(y + i, acc);
    }
    for (; i < n; i++)
        for (int64_t t = 0; t < T; t++)
            y[i] = fma1(a[t], x[t * ldx + i], y[i]);
}

static void axpy_rows(const float *a, int64_t lda, int64_t Q, const float *x, int64_t ldx, int64_t T, float *y,
                      int64_t ldy, int64_t n)
{
    for (int64_t q = 0; q < Q; q++)
        axpy_row(a + q * lda, x, ldx, T, y + q * ldy, n);
}

/*
 * dot over many rows at once (AWQ's clip search: hundreds of thousands of dots per matrix
 * against the same few vectors), each the dot above bit for bit: one 8-lane FMA chain
 * over k in order, the same horizontal sum, the tail by scalar FMAs. dot alone waits on
 * its chain's FMA latency; a tile of R rows x S vectors keeps R S chains in flight, each
 * row's loads shared by the vectors, and finishes eight chains' horizontal sums at once.
 */

/*
 * hsum of eight chains side by side: lane i of the result is hsum(c[i]), the same
 * additions on the same operands ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)),
 * each a column of a transposed sum instead of a lane of a shuffled one.
 */
static inline __m256 hsum8(const __m256 c[8])
{
    __m256 p[4];
    for (int i = 0; i < 4; i++) /* [c_i, c_i+4]: each chain's low half plus its high half */
        p[i] = _mm256_add_ps(_mm256_permute2f128_ps(c[i], c[i + 4], 0x20),
                             _mm256_permute2f128_ps(c[i], c[i + 4], 0x31));
    const __m256 q0 = _mm256_add_ps(_mm256_shuffle_ps(p[0], p[1], 0x44), _mm256_shuffle_ps(p[0], p[1], 0xee));
    const __m256 q1 = _mm256_add_ps(_mm256_shuffle_ps(p[2], p[3], 0x44), _mm256_shuffle_ps(p[2], p[3], 0xee));
    return _mm256_add_ps(_mm256_shuffle_ps(q0, q1, 0x88), _mm256_shuffle_ps(q0, q1, 0xdd));
}

/* 4 rows x S vectors (S even): y[s * T + r] for the tile's (r, s). */
static inline __attribute__((always_inline)) void dot_tile(const int S, const float *x, int64_t ldx, const float *w,
                                                           int64_t ldw, int64_t n, float *y, int64_t T)
{
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int s = 0; s < S; s++)
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            acc[s][r] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 xv[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            xv[r] = _mm256_loadu_ps(x + r * ldx + k);
#pragma GCC unroll 4
        for (int s = 0; s < S; s++) {
            const __m256 wv = _mm256_loadu_ps(w + s * ldw + k);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[s][r] = _mm256_fmadd_ps(xv[r], wv, acc[s][r]);
        }
    }
    for (int s = 0; s < S; s += 2) {
        const __m256 sums = hsum8(acc[s]);
        if (k == n) { /* no tail: rows 0-3 of vectors s and s + 1 */
            _mm_storeu_ps(y + s * T, _mm256_castps256_ps128(sums));
            _mm_storeu_ps(y + (s + 1) * T, _mm256_extractf128_ps(sums, 1));
            continue;
        }
        float v[8];
        _mm256_storeu_ps(v, sums);
        for (int i = 0; i < 8; i++) {
            const int r = i % 4, si = s + i / 4;
            for (int64_t kk = k; kk < n; kk++)
                v[i] = fma1(x[r * ldx + kk], w[si * ldw + kk], v[i]);
            y[si * T + r] = v[i];
        }
    }
}

/* 8 rows x 1 vector: y[r] for the tile's rows. */
static inline __attribute__((always_inline)) void dot_tile8(const float *x, int64_t ldx, const float *w, int64_t n,
                                                            float *y)
{
    __m256 acc[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++)
        acc[r] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 wv = _mm256_loadu_ps(w + k);
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + k), wv, acc[r]);
    }
    if (k == n) {
        _mm256_storeu_ps(y, hsum8(acc));
        return;
    }
    float v[8];
    _mm256_storeu_ps(v, hsum8(acc));
    for (int r = 0; r < 8; r++) {
        for (int64_t kk = k; kk < n; kk++)
            v[r] = fma1(x[r * ldx + kk], w[kk], v[r]);
        y[r] = v[r];
    }
}

/* One row x one vector: dot itself. */
static inline void dot_one(const float *x, int64_t ldx, int64_t T, const float *w, int64_t ldw, int64_t n,
                           float *y, int64_t t0, int64_t s)
{
    for (int64_t t = t0; t < T; t++)
        y[s * T + t] = dot(x + t * ldx, w + s * ldw, n);
}

/* Tiles of 4 rows x S vectors, then pairs, then 8 rows x 1; the rows the tiles leave one dot each. */
static inline __attribute__((always_inline)) void dot_rows_by(const int S, const float *x, int64_t ldx, int64_t T,
                                                              const float *w, int64_t ldw, int64_t n_vec, int64_t n,
                                                              float *y)
{
    int64_t s = 0;
    for (; s + S <= n_vec; s += S) {
        int64_t t = 0;
        for (; t + 4 <= T; t += 4)
            dot_tile(S, x + t * ldx, ldx, w + s * ldw, ldw, n, y + s * T + t, T);
        for (int64_t si = s; si < s + S; si++)
            dot_one(x, ldx, T, w, ldw, n, y, t, si);
    }
    for (; s + 2 <= n_vec; s += 2) {
        int64_t t = 0;
        for (; t + 4 <= T; t += 4)
            dot_tile(2, x + t * ldx, ldx, w + s * ldw, ldw, n, y + s * T + t, T);
        dot_one(x, ldx, T, w, ldw, n, y, t, s);
        dot_one(x, ldx, T, w, ldw, n, y, t, s + 1);
    }
    for (; s < n_vec; s++) {
        int64_t t = 0;
        for (; t + 8 <= T; t += 8)
            dot_tile8(x + t * ldx, ldx, w + s * ldw, n, y + s * T + t);
        dot_one(x, ldx, T, w, ldw, n, y, t, s);
    }
}

/* 4 x 2 tiles: 8 accumulators, 4 rows and a vector in the 16 AVX2 registers. */
static void dot_rows(const float *x, int64_t ldx, int64_t T, const float *w, int64_t ldw, int64_t S, int64_t n,
                     float *y)
{
    dot_rows_by(2, x, ldx, T, w, ldw, S, n, y);
}

/* ---------------------------------------------------------------- gemv */

/* The chains added lane-wise as (c0 + c1) + (c2 + c3), reduced, then the tail in order: as dot4. */
static inline float combine(const __m256 c[4], const float *x, const uint8_t *row, uint32_t type, int64_t k,
                            int64_t K)
{
    float s = hsum(_mm256_add_ps(_mm256_add_ps(c[0], c[1]), _mm256_add_ps(c[2], c[3])));
    for (; k < K; k++)
        s = fma1(x[k], load1(type, row, k), s);
    return s;
}

/*
 * One row, read front to back as a single stream (what the prefetchers follow best),
 * with its four chains in flight at once.
 */
static inline __attribute__((always_inline)) float gemv_row(uint32_t type, const uint8_t *row, const float *x,
                                                            int64_t K)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(type, row, k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), load8(type, row, k + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), load8(type, row, k + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), load8(type, row, k + 24), a3);
    }
    if (k + 8 <= K)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(type, row, k), a0), k += 8;
    if (k + 8 <= K)
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(type, row, k), a1), k += 8;
    if (k + 8 <= K)
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(type, row, k), a2), k += 8;
    const __m256 c[4] = {a0, a1, a2, a3};
    return combine(c, x, row, type, k, K);
}

/* A group-quantized row: each chunk of 32 feeds chains 0..3 in turn (rows are whole chunks). */
static inline __attribute__((always_inline)) float gemv_qrow(uint32_t type, uint32_t group, const uint8_t *row,
                                                             const float *x, int64_t K)
{
    const size_t bb = qpk_type_block_bytes(type, group);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t g = 0; g < K; g += group, row += bb) {
        const __m256 d = block_scale(type, row), z = block_zero(type, row);
        const uint8_t *codes = row + CODES_AT(type);
        for (int64_t k = g; k < g + group; k += 32, codes += CHUNK_BYTES(type)) {
            w32 w = dequant32(type, codes, d, z);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w.a, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), w.b, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), w.c, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), w.d, a3);
        }
    }
    const __m256 c[4] = {a0, a1, a2, a3};
    return combine(c, x, row, type, K, K);
}

/*
 * The row kernels of each type, specialized at compile time (the type is a constant in
 * each instance). A type without a row in a table takes the scalar reference's.
 */
#define PLAIN_ROWS(T)                                                                                             \
    static void to_f32_##T(const qpk_matrix *w, int64_t r, float *dst)                                           \
    {                                                                                                            \
        plain_row_t(QPK_TYPE_##T, qpk_row_ptr(w, r), w->cols, dst);                                              \
    }                                                                                                            \
    static float dot_##T(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)                \
    {                                                                                                            \
        (void)scratch;                                                                                           \
        return gemv_row(QPK_TYPE_##T, row, x, w->cols);                                                          \
    }
#define BLOCK_ROWS(T)                                                                                             \
    static void to_f32_##T(const qpk_matrix *w, int64_t r, float *dst)                                           \
    {                                                                                                            \
        dequant_row_t(QPK_TYPE_##T, w->group_size, qpk_row_ptr(w, r), w->cols, dst);                             \
    }                                                                                                            \
    static float dot_##T(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)                \
    {                                                                                                            \
        (void)scratch;                                                                                           \
        return gemv_qrow(QPK_TYPE_##T, w->group_size, row, x, w->cols);                                          \
    }
PLAIN_ROWS(F32)
PLAIN_ROWS(F16)
PLAIN_ROWS(BF16)
BLOCK_ROWS(INT8)
BLOCK_ROWS(INT4)
BLOCK_ROWS(INT4S)
BLOCK_ROWS(INT8Z)
BLOCK_ROWS(MLX4)
BLOCK_ROWS(MLX8)
BLOCK_ROWS(MLX4_F16)
BLOCK_ROWS(MLX8_F16)

/*
 * ggml's block types. Q4_K, Q5_K and Q6_K (the K-quant mixes' bulk) and IQ4_NL/IQ4_XS are
 * decoded eight weights per instruction, each weight the reference's: Q4_K's and Q5_K's
 * (d sc) q is exact (17 + 5 bits) before its one subtraction, Q6_K's (d sc) q rounds once.
 * The other types are decoded by the reference into scratch, then dotted as an f32 row
 * (the scalar table's summation order).
 */

/* The f16 scales of a Q4_K or Q6_K block. */
static inline float q4_k_d(const uint8_t *b) { return f16_at(b + offsetof(qpk_block_q4_k, d)); }
static inline float q4_k_dmin(const uint8_t *b) { return f16_at(b + offsetof(qpk_block_q4_k, dmin)); }
static inline float q6_k_d(const uint8_t *b) { return f16_at(b + offsetof(qpk_block_q6_k, d)); }

/* Q4_K's and Q5_K's 6-bit scale and min of sub-block j (0..7) from the 12 bytes at sc. */
static inline void k4_scale_min(const uint8_t *sc, int j, int *s, int *m)
{
    *s = j < 4 ? sc[j] & 63 : (sc[j + 4] & 15) | (sc[j - 4] >> 6) << 4;
    *m = j < 4 ? sc[j + 4] & 63 : (sc[j + 4] >> 4) | (sc[j] >> 6) << 4;
}

/*
 * The 32 codes of Q4_K (qh NULL) or Q5_K sub-block j (0..7), codes 0..15 in *u and 16..31 in
 * *v, a byte each: Q5_K's bit 4 of code l is bit j of qh[l] (a 16-bit shift keeps each byte's
 * bit j at bit 0 of that byte).
 */
static inline __attribute__((always_inline)) void k4_codes(const uint8_t *qs, const uint8_t *qh, int j, __m128i *u,
                                                           __m128i *v)
{
    const uint8_t *q = qs + 32 * (j / 2);
    const __m128i low = _mm_set1_epi8(15);
    *u = _mm_loadu_si128((const __m128i *)q), *v = _mm_loadu_si128((const __m128i *)(q + 16));
    *u = j % 2 ? _mm_and_si128(_mm_srli_epi16(*u, 4), low) : _mm_and_si128(*u, low);
    *v = j % 2 ? _mm_and_si128(_mm_srli_epi16(*v, 4), low) : _mm_and_si128(*v, low);
    if (qh) {
        const __m128i one = _mm_set1_epi8(1);
        const __m128i h0 = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)qh), j), one);
        const __m128i h1 = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)(qh + 16)), j), one);
        *u = _mm_or_si128(*u, _mm_slli_epi16(h0, 4)), *v = _mm_or_si128(*v, _mm_slli_epi16(h1, 4));
    }
}

/* The 32 weights of Q4_K (qh NULL) or Q5_K sub-block j (0..7) of block b, as four vectors of 8 in order. */
static inline __attribute__((always_inline)) void k4_weights(const uint8_t *b, const uint8_t *qs, const uint8_t *qh,
                                                             float d, float dmin, int j, __m256 wv[4])
{
    int sj, mj;
    k4_scale_min(b + offsetof(qpk_block_q4_k, scales), j, &sj, &mj);
    const __m256 dl = _mm256_set1_ps(d * (float)sj), ml = _mm256_set1_ps(dmin * (float)mj);
    __m128i u, v;
    k4_codes(qs, qh, j, &u, &v);
    const __m128i c[4] = {u, _mm_srli_si128(u, 8), v, _mm_srli_si128(v, 8)};
    for (int k = 0; k < 4; k++)
        wv[k] = _mm256_sub_ps(_mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c[k]))), ml);
}

/* Q6_K weights l..l+7 (l in 0, 8, 16, 24) of one half of 128 and their copies 32, 64 and 96 further on. */
static inline __attribute__((always_inline)) void q6_k_weights(const uint8_t *ql, const uint8_t *qh,
                                                               const int8_t *sc, float d, int l, __m256 wv[4])
{
    const __m256i low = _mm256_set1_epi32(15), three = _mm256_set1_epi32(3), bias = _mm256_set1_epi32(32);
    const __m256i lo0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ql + l)));
    const __m256i lo1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ql + l + 32)));
    const __m256i hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qh + l)));
    const __m256i q[4] = {
        _mm256_or_si256(_mm256_and_si256(lo0, low), _mm256_slli_epi32(_mm256_and_si256(hi, three), 4)),
        _mm256_or_si256(_mm256_and_si256(lo1, low), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hi, 2), three), 4)),
        _mm256_or_si256(_mm256_srli_epi32(lo0, 4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hi, 4), three), 4)),
        _mm256_or_si256(_mm256_srli_epi32(lo1, 4), _mm256_slli_epi32(_mm256_srli_epi32(hi, 6), 4)),
    };
    for (int k = 0; k < 4; k++) /* scales is, is + 2, is + 4, is + 6 (is = l / 16) */
        wv[k] = _mm256_mul_ps(_mm256_set1_ps(d * (float)sc[l / 16 + 2 * k]), _mm256_cvtepi32_ps(_mm256_sub_epi32(q[k], bias)));
}

/* Q4_K's and Q5_K's codes (and Q5_K's high bits) in block b. */
static inline const uint8_t *k4_qs(uint32_t type, const uint8_t *b)
{
    return b + (type == QPK_TYPE_Q5_K ? offsetof(qpk_block_q5_k, qs) : offsetof(qpk_block_q4_k, qs));
}
static inline const uint8_t *k4_qh(uint32_t type, const uint8_t *b)
{
    return type == QPK_TYPE_Q5_K ? b + offsetof(qpk_block_q5_k, qh) : NULL;
}

static void k4_row(uint32_t type, const uint8_t *b, int64_t n, float *y)
{
    const size_t bb = qpk_type_block_bytes(type, 256);
    for (int64_t i = 0; i < n; i += 256, b += bb) {
        const float d = q4_k_d(b), dmin = q4_k_dmin(b);
        for (int j = 0; j < 8; j++, y += 32) {
            __m256 wv[4];
            k4_weights(b, k4_qs(type, b), k4_qh(type, b), d, dmin, j, wv);
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(y + 8 * k, wv[k]);
        }
    }
}

static void q6_k_row(const uint8_t *b, int64_t n, float *y)
{
    for (int64_t i = 0; i < n; i += 256, b += sizeof(qpk_block_q6_k)) {
        const float d = q6_k_d(b);
        const int8_t *sc = (const int8_t *)(b + offsetof(qpk_block_q6_k, scales));
        const uint8_t *ql = b + offsetof(qpk_block_q6_k, ql), *qh = b + offsetof(qpk_block_q6_k, qh);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128)
            for (int l = 0; l < 32; l += 8) {
                __m256 wv[4];
                q6_k_weights(ql, qh, sc, d, l, wv);
                for (int k = 0; k < 4; k++)
                    _mm256_storeu_ps(y + l + 32 * k, wv[k]);
            }
    }
}

/*
 * Decode's dot products over Q4_K, Q5_K and Q6_K rows, the weights made in registers: each
 * weight is the one k4_row/q6_k_row writes, and weight k enters chain (k % 32) / 8 in
 * increasing k, as in the f32 row's gemv_row: the same bits, without the round trip
 * through memory.
 */
static float dot_k4(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)
{
    (void)scratch;
    const uint32_t type = w->type;
    const size_t bb = qpk_type_block_bytes(type, 256);
    const uint8_t *b = row;
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < w->cols; i += 256, b += bb) {
        const float d = q4_k_d(b), dmin = q4_k_dmin(b);
        for (int j = 0; j < 8; j++) {
            __m256 wv[4];
            k4_weights(b, k4_qs(type, b), k4_qh(type, b), d, dmin, j, wv);
            for (int k = 0; k < 4; k++)
                a[k] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 32 * j + 8 * k), wv[k], a[k]);
        }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

static float dot_q6_k(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)
{
    (void)scratch;
    const uint8_t *b = row;
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < w->cols; i += 256, b += sizeof(qpk_block_q6_k)) {
        const float d = q6_k_d(b);
        const int8_t *sc = (const int8_t *)(b + offsetof(qpk_block_q6_k, scales));
        const uint8_t *ql = b + offsetof(qpk_block_q6_k, ql), *qh = b + offsetof(qpk_block_q6_k, qh);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8)
            for (int l = 0; l < 32; l += 8) { /* chain l / 8, positions l, l+32, l+64, l+96 in order */
                __m256 wv[4];
                q6_k_weights(ql, qh, sc, d, l, wv);
                for (int k = 0; k < 4; k++)
                    a[l / 8] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 128 * h + l + 32 * k), wv[k], a[l / 8]);
            }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

/*
 * IQ4_NL and IQ4_XS: a byte shuffle looks 16 codes up in the codebook at once (it is 16
 * int8 values), then eight at a time become f32 and take the sub-block's scale: d v and
 * (d (sc - 32)) v are exact, so each weight is the reference's.
 */
static inline __attribute__((always_inline)) void iq4_weights(const uint8_t *qs, float scale, __m256 wv[4])
{
    const __m128i book = _mm_loadu_si128((const __m128i *)qpk_iq4nl_values), low = _mm_set1_epi8(15);
    const __m128i u = _mm_loadu_si128((const __m128i *)qs);
    const __m128i lo = _mm_shuffle_epi8(book, _mm_and_si128(u, low));
    const __m128i hi = _mm_shuffle_epi8(book, _mm_and_si128(_mm_srli_epi16(u, 4), low));
    const __m128i c[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    const __m256 dl = _mm256_set1_ps(scale);
    for (int k = 0; k < 4; k++)
        wv[k] = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c[k])));
}

/*
 * The scales of the 32-weight sub-blocks of an IQ4_NL block (one) or an IQ4_XS block (eight);
 * returns their count. IQ4_XS's eight at once, each sub-block's 4 low and 2 high bits of
 * sc + 32 shifted into a lane of its own, then d (sc - 32), exact (a scalar loop here was a
 * third of the AVX-512 gemv's time).
 */
static inline int iq4_scales(uint32_t type, const uint8_t *b, float *scale)
{
    if (type == QPK_TYPE_IQ4_NL) {
        scale[0] = f16_at(b + offsetof(qpk_block_iq4_nl, d));
        return 1;
    }
    uint32_t lo;
    memcpy(&lo, b + offsetof(qpk_block_iq4_xs, scales_l), 4);
    const __m256i l = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)lo),
                                                         _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                       _mm256_set1_epi32(15));
    const __m256i h = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(qpk_le16(b + offsetof(qpk_block_iq4_xs,
                                                                                                  scales_h))),
                                                         _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                       _mm256_set1_epi32(3));
    const __m256i sc = _mm256_sub_epi32(_mm256_or_si256(l, _mm256_slli_epi32(h, 4)), _mm256_set1_epi32(32));
    const float d = f16_at(b + offsetof(qpk_block_iq4_xs, d));
    _mm256_storeu_ps(scale, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sc)));
    return 8;
}

static inline const uint8_t *iq4_qs(uint32_t type, const uint8_t *b)
{
    return b + (type == QPK_TYPE_IQ4_NL ? offsetof(qpk_block_iq4_nl, qs) : offsetof(qpk_block_iq4_xs, qs));
}

static void iq4_row(uint32_t type, const uint8_t *b, int64_t n, float *y)
{
    const size_t bb = qpk_type_block_bytes(type, QPK_TYPE_TABLE[type].block);
    float scale[8];
    for (int64_t i = 0; i < n; b += bb) {
        const int sub = iq4_scales(type, b, scale);
        for (int j = 0; j < sub; j++, i += 32, y += 32) {
            __m256 wv[4];
            iq4_weights(iq4_qs(type, b) + 16 * j, scale[j], wv);
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(y + 8 * k, wv[k]);
        }
    }
}

/* As dot_k4: weight k of the row enters chain (k % 32) / 8 in increasing k. */
static float dot_iq4(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)
{
    (void)scratch;
    const uint32_t type = w->type;
    const size_t bb = qpk_type_block_bytes(type, QPK_TYPE_TABLE[type].block);
    const uint8_t *b = row;
    float scale[8];
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < w->cols; b += bb) {
        const int sub = iq4_scales(type, b, scale);
        for (int j = 0; j < sub; j++, i += 32) {
            __m256 wv[4];
            iq4_weights(iq4_qs(type, b) + 16 * j, scale[j], wv);
            for (int k = 0; k < 4; k++)
                a[k] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * k), wv[k], a[k]);
        }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

/* A row of ggml's types at row (bytes) to f32. */
static void ggml_bytes_to_f32(const qpk_matrix *w, const uint8_t *row, float *dst)
{
    if (w->type == QPK_TYPE_Q4_K || w->type == QPK_TYPE_Q5_K)
        k4_row(w->type, row, w->cols, dst);
    else if (w->type == QPK_TYPE_Q6_K)
        q6_k_row(row, w->cols, dst);
    else if (w->type == QPK_TYPE_IQ4_NL || w->type == QPK_TYPE_IQ4_XS)
        iq4_row(w->type, row, w->cols, dst);
    else
        qpk_dequantize_row(w->type, w->group_size, row, w->cols, dst);
}

static void ggml_row_to_f32(const qpk_matrix *w, int64_t r, float *dst)
{
    ggml_bytes_to_f32(w, qpk_row_ptr(w, r), dst);
}

static float dot_ggml(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)
{
    ggml_bytes_to_f32(w, row, scratch);
    return gemv_row(QPK_TYPE_F32, (const uint8_t *)scratch, x, w->cols);
}
#define GGML_ROWS {ggml_row_to_f32, dot_ggml}

static const qpk_type_kernels AVX2_TYPES[QPK_TYPE_COUNT_] = {
    [QPK_TYPE_F32] = {to_f32_F32, dot_F32},    [QPK_TYPE_F16] = {to_f32_F16, dot_F16},
    [QPK_TYPE_BF16] = {to_f32_BF16, dot_BF16}, [QPK_TYPE_INT8] = {to_f32_INT8, dot_INT8},
    [QPK_TYPE_INT4] = {to_f32_INT4, dot_INT4}, [QPK_TYPE_INT4S] = {to_f32_INT4S, dot_INT4S},
    [QPK_TYPE_INT8Z] = {to_f32_INT8Z, dot_INT8Z},
    [QPK_TYPE_Q4_1] = GGML_ROWS, [QPK_TYPE_Q5_0] = GGML_ROWS, [QPK_TYPE_Q5_1] = GGML_ROWS,
    [QPK_TYPE_Q2_K] = GGML_ROWS, [QPK_TYPE_Q3_K] = GGML_ROWS, [QPK_TYPE_Q4_K] = {ggml_row_to_f32, dot_k4},
    [QPK_TYPE_Q5_K] = {ggml_row_to_f32, dot_k4}, [QPK_TYPE_Q6_K] = {ggml_row_to_f32, dot_q6_k},
    [QPK_TYPE_IQ4_NL] = {ggml_row_to_f32, dot_iq4}, [QPK_TYPE_IQ4_XS] = {ggml_row_to_f32, dot_iq4},
    [QPK_TYPE_MLX4] = {to_f32_MLX4, dot_MLX4}, [QPK_TYPE_MLX8] = {to_f32_MLX8, dot_MLX8},
    [QPK_TYPE_MLX4_F16] = {to_f32_MLX4_F16, dot_MLX4_F16}, [QPK_TYPE_MLX8_F16] = {to_f32_MLX8_F16, dot_MLX8_F16},
};

/* Row kernels for w's type from table t, the scalar reference's where t has none. */
static inline qpk_type_kernels rows_of(const qpk_type_kernels *t, const qpk_matrix *w)
{
    qpk_type_kernels k = t[w->type];
    return (qpk_type_kernels){k.to_f32 ? k.to_f32 : qpk_scalar_row_to_f32, k.dot ? k.dot : qpk_scalar_row_dot,
                              k.dot2, k.dot4, k.to_panel};
}

/*
 * Rows r, r + quarter, r + 2 quarter and r + 3 quarter for r in [r0, r1), four or two rows
 * at a time where the type has such kernels (each row its own chains: the same bits): four
 * long forward streams, which the prefetchers follow (the row kernels' run 1024 bytes ahead
 * within a stream). Four adjacent rows at a time, one interleaved stream, decoded 0.6x as
 * fast on Zen 4.
 */
static void streams_with(const qpk_type_kernels *t, const qpk_matrix *w, const float *x, float *y, int64_t r0,
                         int64_t r1, int64_t quarter, float *scratch)
{
    const qpk_type_kernels k = rows_of(t, w);
    const size_t stride = qpk_matrix_row_bytes(w), apart = (size_t)quarter * stride;
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r0 * stride;
    for (int64_t r = r0; r < r1; r++, row += stride) {
        float y4[4];
        if (k.dot4) {
            k.dot4(w, row, apart, x, y4);
        } else if (k.dot2) {
            k.dot2(w, row, apart, x, y4);
            k.dot2(w, row + 2 * apart, apart, x, y4 + 2);
        } else {
            for (int i = 0; i < 4; i++)
                y4[i] = k.dot(w, row + (size_t)i * apart, x, scratch);
        }
        for (int i = 0; i < 4; i++)
            y[r + i * quarter] = y4[i];
    }
}

/*
 * Rows [r0, r1): as four streams a quarter of the range apart where the type has a four-row
 * kernel, the rest in pairs of row r and the row half the rest further on (two streams;
 * adjacent rows read as one interleaved stream ran at a third of the bandwidth from DRAM on
 * Zen 4), then one by one.
 */
static void gemv_with(const qpk_type_kernels *t, const qpk_matrix *w, const float *x, float *y, int64_t r0,
                      int64_t r1, float *scratch)
{
    const qpk_type_kernels k = rows_of(t, w);
    const size_t stride = qpk_matrix_row_bytes(w);
    int64_t r = r0;
    if (k.dot4) {
        const int64_t quarter = (r1 - r0) / 4;
        streams_with(t, w, x, y, r0, r0 + quarter, quarter, scratch);
        r0 = r += 4 * quarter;
    }
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r * stride;
    if (k.dot2) {
        const int64_t half = (r1 - r0) / 2;
        float y2[2];
        for (; r < r0 + half; r++, row += stride) {
            k.dot2(w, row, (size_t)half * stride, x, y2);
            y[r] = y2[0], y[r + half] = y2[1];
        }
        r += half, row += (size_t)half * stride;
    }
    for (; r < r1; r++, row += stride)
        y[r] = k.dot(w, row, x, scratch);
}

static void row_to_f32(const qpk_matrix *w, int64_t r, float *dst) { rows_of(AVX2_TYPES, w).to_f32(w, r, dst); }

static void gemv(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, float *scratch)
{
    gemv_with(AVX2_TYPES, w, x, y, r0, r1, scratch);
}

static void gemv4(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t quarter,
                  float *scratch)
{
    streams_with(AVX2_TYPES, w, x, y, r0, r1, quarter, scratch);
}

/* ---------------------------------------------------------------- gemm */

/*
 * Prefill, BLIS-style. W's rows are taken QPK_GEMM_PANEL (32) at a time: converted to
 * f32 once per call, then packed k-major (packed[k * 32 + j]) in chunks of up to
 * QPK_GEMM_KC columns, so that a register tile of tokens x 32 rows runs over the chunk
 * with, per k, the 32 weights as vectors and each token's x[k] broadcast into them. Each
 * output y[t][r] is one lane's chain of FMAs over k in order (carried through y from one
 * chunk to the next, which is exact), so its bits depend on neither the tile, the batch,
 * the thread nor the instruction set; the scalar table computes the same chain.
 */
#define PANEL QPK_GEMM_PANEL

static inline float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* v[0..7] transposed in place: v[i][j] <- v[j][i]. */
static inline __attribute__((always_inline)) void transpose8(__m256 v[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* Columns [k0, k0 + kc) of the panel's f32 rows (row j at rows + j * ld; rows j >= nr read as 0), k-major. */
static void pack_panel(const float *rows, size_t ld, int nr, int64_t k0, int64_t kc, float *packed)
{
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8)
        for (int j0 = 0; j0 < PANEL; j0 += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++)
                v[i] = j0 + i < nr ? _mm256_loadu_ps(rows + (size_t)(j0 + i) * ld + k0 + k) : _mm256_setzero_ps();
            transpose8(v);
            for (int i = 0; i < 8; i++)
                _mm256_store_ps(packed + (k + i) * PANEL + j0, v[i]);
        }
    for (; k < kc; k++)
        for (int j = 0; j < PANEL; j++)
            packed[k * PANEL + j] = j < nr ? rows[(size_t)j * ld + k0 + k] : 0.0f;
}

/* Lanes of an 8-row vector that hold rows [0, n) of a panel half, from its lane `first`. */
static inline __m256i row_mask(int n, int first)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n - first), lane);
}

/*
 * MR tokens x 16 rows (half h of the panel: packed + 16 h), two vectors of 8 rows: per k,
 * two loads, MR broadcasts, 2 MR FMAs. nr: the rows of this half that exist (1..16).
 */
static inline __attribute__((always_inline)) void tile16(const int MR, const float *x, int64_t ldx, const float *p,
                                                         int64_t ldp, int64_t kc, float *y, int64_t ldy, int nr,
                                                         bool first)
{
    __m256 c[6][2];
    const __m256i m0 = row_mask(nr, 0), m1 = row_mask(nr, 8);
    const bool full = nr >= 16;
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        c[i][0] = first ? _mm256_setzero_ps() : full ? _mm256_loadu_ps(y + i * ldy) : _mm256_maskload_ps(y + i * ldy, m0);
        c[i][1] = first ? _mm256_setzero_ps() : full ? _mm256_loadu_ps(y + i * ldy + 8)
                                                    : _mm256_maskload_ps(y + i * ldy + 8, m1);
    }
    for (int64_t k = 0; k < kc; k++) {
        /* Masked when partial: gemm_acc's p is a caller's matrix, not a padded panel. */
        const __m256 b0 = full ? _mm256_loadu_ps(p + k * ldp) : _mm256_maskload_ps(p + k * ldp, m0);
        const __m256 b1 = full ? _mm256_loadu_ps(p + k * ldp + 8) : _mm256_maskload_ps(p + k * ldp + 8, m1);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m256 a = _mm256_broadcast_ss(x + i * ldx + k);
            c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        if (full) {
            _mm256_storeu_ps(y + i * ldy, c[i][0]);
            _mm256_storeu_ps(y + i * ldy + 8, c[i][1]);
        } else {
            _mm256_maskstore_ps(y + i * ldy, m0, c[i][0]);
            _mm256_maskstore_ps(y + i * ldy + 8, m1, c[i][1]);
        }
    }
}

#define AVX2_MR 6

static void tile_avx2(int mr, const float *x, int64_t ldx, const float *p, int64_t ldp, int64_t kc, float *y,
                      int64_t ldy, int nr, bool first)
{
    for (int h = 0; h < 2 && 16 * h < nr; h++) {
        const float *ph = p + 16 * h;
        float *yh = y + 16 * h;
        const int n = nr - 16 * h;
        switch (mr) {
        case 6: tile16(6, x, ldx, ph, ldp, kc, yh, ldy, n, first); break;
        case 5: tile16(5, x, ldx, ph, ldp, kc, yh, ldy, n, first); break;
        case 4: tile16(4, x, ldx, ph, ldp, kc, yh, ldy, n, first); break;
        case 3: tile16(3, x, ldx, ph, ldp, kc, yh, ldy, n, first); break;
        case 2: tile16(2, x, ldx, ph, ldp, kc, yh, ldy, n, first); break;
        default: tile16(1, x, ldx, ph, ldp, kc, yh, ldy, n, first); break;
        }
    }
}

/*
 * A register tile: mr tokens (at most the table's) x nr (<= 32) rows of a k-major panel p
 * (row j of k at p[k * ldp + j]), over kc columns, on top of y (or from 0 when first).
 */
typedef void tile_fn(int mr, const float *x, int64_t ldx, const float *p, int64_t ldp, int64_t kc, float *y,
                     int64_t ldy, int nr, bool first);

typedef void pack_fn(const float *rows, size_t ld, int nr, int64_t k0, int64_t kc, float *packed);

static inline __attribute__((always_inline)) void gemm_panels(const qpk_type_kernels k, pack_fn *pack, tile_fn *tile,
                                                              const int MR, const qpk_matrix *w, const float *x,
                                                              int64_t T, int64_t ldx, float *y, int64_t ldy,
                                                              int64_t r0, int64_t r1, float *scratch)
{
    const int64_t K = w->cols;
    /* f32 rows (calibration's forward passes) are packed from where they are, not copied first;
       a type with a to_panel kernel goes from its blocks to the panel at once. */
    const bool f32 = w->type == QPK_TYPE_F32 && (uintptr_t)w->data % sizeof(float) == 0;
    const bool direct = !f32 && k.to_panel;
    const size_t ld = f32 ? (size_t)K : SCRATCH_STRIDE(K);
    float *packed = align64(scratch + (size_t)PANEL * SCRATCH_STRIDE(K));
    const size_t row_bytes = qpk_matrix_row_bytes(w);
    const int64_t tiles = (K + QPK_GEMM_KC - 1) / QPK_GEMM_KC * ((T + MR - 1) / MR);
    for (int64_t r = r0; r < r1; r += PANEL) {
        const int nr = r1 - r < PANEL ? (int)(r1 - r) : PANEL;
        const float *rows = f32 ? (const float *)qpk_row_ptr(w, r) : scratch;
        for (int j = 0; !f32 && !direct && j < nr; j++)
            k.to_f32(w, r + j, scratch + (size_t)j * ld);
        /* The next panel's stored rows, a slice after each tile: read only after all of this
           panel's tiles, their lines would otherwise come from DRAM with nothing to overlap. */
        const uint8_t *next = (const uint8_t *)qpk_row_ptr(w, r) + (size_t)nr * row_bytes;
        const size_t next_bytes = r1 - r > PANEL ? (size_t)(r1 - r - PANEL < PANEL ? r1 - r - PANEL : PANEL) * row_bytes
                                                 : 0;
        const size_t slice = tiles ? (next_bytes / (size_t)tiles + 64) & ~(size_t)63 : 0;
        size_t fetched = 0;
        for (int64_t k0 = 0; k0 < K; k0 += QPK_GEMM_KC) {
            const int64_t kc = K - k0 < QPK_GEMM_KC ? K - k0 : QPK_GEMM_KC;
            if (direct)
                k.to_panel(w, r, nr, k0, kc, packed);
            else
                pack(rows, ld, nr, k0, kc, packed);
            for (int64_t t = 0; t < T; t += MR) {
                tile(T - t < MR ? (int)(T - t) : MR, x + t * ldx + k0, ldx, packed, PANEL, kc, y + t * ldy + r, ldy,
                     nr, k0 == 0);
                for (const size_t end = fetched + slice; fetched < end && fetched < next_bytes; fetched += 64)
                    __builtin_prefetch(next + fetched, 0, 2);
            }
        }
    }
}

static void gemm(const qpk_matrix *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, int64_t r0,
                 int64_t r1, float *scratch)
{
    gemm_panels(rows_of(AVX2_TYPES, w), pack_panel, tile_avx2, AVX2_MR, w, x, T, ldx, y, ldy, r0, r1, scratch);
}

/* y[t][j] += x[t] . p[.][j] over an unpacked k-major matrix, in tiles of 32 columns: the gemm tile with first = 0. */
static inline __attribute__((always_inline)) void gemm_acc_with(tile_fn *tile, const int MR, const float *x,
                                                                int64_t ldx, int64_t T, const float *p, int64_t ldp,
                                                                int64_t K, float *y, int64_t ldy, int64_t J)
{
    for (int64_t j = 0; j < J; j += PANEL)
        for (int64_t t = 0; t < T; t += MR)
            tile(T - t < MR ? (int)(T - t) : MR, x + t * ldx, ldx, p + j, ldp, K, y + t * ldy + j, ldy,
                 J - j < PANEL ? (int)(J - j) : PANEL, false);
}

static void gemm_acc(const float *x, int64_t ldx, int64_t T, const float *p, int64_t ldp, int64_t K, float *y,
                     int64_t ldy, int64_t J)
{
    gemm_acc_with(tile_avx2, AVX2_MR, x, ldx, T, p, ldp, K, y, ldy, J);
}

/* ------------------------------------------------------- round to nearest */

/*
 * qpk_quantize_row's arithmetic, 8 weights at a time: the group's range (group_range), the
 * same qpk_params_from_range, then per weight the same division, rounding to nearest
 * even, zero point and clamp, all exact IEEE operations: the same codes. A group holding
 * a non-finite weight goes to the reference, which names it.
 */
static inline __attribute__((always_inline)) __m256 nearest8(__m256 x, __m256 d, __m256 z, __m256 qmin, __m256 qmax)
{
    __m256 q = _mm256_round_ps(_mm256_div_ps(x, d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, z), qmin), qmax);
}

static inline __attribute__((always_inline)) __m256i codes8(const float *x, __m256 d, __m256 z, __m256 qmin,
                                                             __m256 qmax)
{
    return _mm256_cvtps_epi32(nearest8(_mm256_loadu_ps(x), d, z, qmin, qmax));
}

/*
 * A group's range for a zero-point or symmetric grid: min and max of 0 and its weights (the
 * reference's compares, in another order: min and max do not depend on it); false when a
 * weight is not finite, for the reference to name.
 */
static inline bool group_range(const float *x, int64_t n, float *lo_out, float *hi_out)
{
    __m256 lo = _mm256_setzero_ps(), hi = lo, bad = lo;
    const __m256 inf = _mm256_set1_ps(INFINITY);
    for (int64_t k = 0; k < n; k += 8) {
        const __m256 v = _mm256_loadu_ps(x + k);
        lo = _mm256_min_ps(lo, v), hi = _mm256_max_ps(hi, v);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v), inf, _CMP_NLT_UQ));
    }
    __m128 l4 = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
    __m128 h4 = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1));
    l4 = _mm_min_ps(l4, _mm_movehl_ps(l4, l4)), h4 = _mm_max_ps(h4, _mm_movehl_ps(h4, h4));
    l4 = _mm_min_ss(l4, _mm_shuffle_ps(l4, l4, 1)), h4 = _mm_max_ss(h4, _mm_shuffle_ps(h4, h4, 1));
    *lo_out = _mm_cvtss_f32(l4), *hi_out = _mm_cvtss_f32(h4);
    return _mm256_testz_ps(bad, bad);
}

static inline __attribute__((always_inline)) qpk_status quantize_row_t(uint32_t type, uint32_t group, const float *x,
                                                                       int64_t n, uint8_t *o, qpk_err *e)
{
    const qpk_grid *gr = &QPK_QUANT_TRAITS[type].grid;
    const size_t bb = qpk_type_block_bytes(type, group);
    const bool zp = gr->rule == QPK_RULE_ZERO_POINT;
    const __m256 qmin = _mm256_set1_ps((float)gr->qmin), qmax = _mm256_set1_ps((float)gr->qmax);
    const __m256i bias = _mm256_set1_epi32(gr->bias), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t g = 0; g < n; g += group, o += bb) {
        float lo, hi;
        if (!group_range(x + g, group, &lo, &hi))
            return qpk_quantize_row(type, group, x, n, o - g / group * bb, e); /* names the weight */
        qpk_qparams p;
        qpk_status s = qpk_params_from_range(type, lo, hi, 1.0f, &p, e);
        if (s != QPK_OK)
            return qpk_err_prefix(e, s, "weights %lld..%lld", (long long)g, (long long)(g + group - 1));
        qpk_put_block_header(type, &p, o);
        uint8_t *codes = o + CODES_AT(type);
        for (int64_t k = g; k < g + group; k += 32, codes += CHUNK_BYTES(type)) {
            __m256i q[4];
            if (p.d == 0) { /* the all-zero group: every code is the zero (or 0), as the reference */
                for (int i = 0; i < 4; i++)
                    q[i] = _mm256_set1_epi32(zp ? p.z : 0);
            } else {
                const __m256 d = _mm256_set1_ps(p.d), z = _mm256_set1_ps(zp ? (float)p.z : 0.0f);
                for (int i = 0; i < 4; i++)
                    q[i] = codes8(x + k + 8 * i, d, z, qmin, qmax);
            }
            for (int i = 0; i < 4; i++)
                q[i] = _mm256_add_epi32(q[i], bias);
            /* 32 codes in order as bytes: signed ones saturate as int8, unsigned as uint8 (all in range). */
            const __m256i w01 = _mm256_packs_epi32(q[0], q[1]), w23 = _mm256_packs_epi32(q[2], q[3]);
            const __m256i bytes = _mm256_permutevar8x32_epi32(
                gr->qmin < 0 && gr->bias == 0 ? _mm256_packs_epi16(w01, w23) : _mm256_packus_epi16(w01, w23), order);
            if (QPK_TYPE_TABLE[type].bits == 8) {
                _mm256_storeu_si256((__m256i *)codes, bytes);
            } else { /* byte j: code j low, code j + 16 high */
                const __m128i low = _mm256_castsi256_si128(bytes), high = _mm256_extracti128_si256(bytes, 1);
                _mm_storeu_si128((__m128i *)codes, _mm_or_si128(low, _mm_slli_epi16(high, 4)));
            }
        }
    }
    return QPK_OK;
}

static qpk_status quantize_row(uint32_t type, uint32_t group, const float *x, int64_t n, void *out, qpk_err *e)
{
    if (!qpk_type_has_grid(type) || !qpk_group_ok(type, group, n))
        return qpk_quantize_row(type, group, x, n, out, e); /* the reference refuses it, and says why */
    switch (type) {
    case QPK_TYPE_INT8: return quantize_row_t(QPK_TYPE_INT8, group, x, n, out, e);
    case QPK_TYPE_INT4: return quantize_row_t(QPK_TYPE_INT4, group, x, n, out, e);
    case QPK_TYPE_INT4S: return quantize_row_t(QPK_TYPE_INT4S, group, x, n, out, e);
    case QPK_TYPE_INT8Z: return quantize_row_t(QPK_TYPE_INT8Z, group, x, n, out, e);
    default: return qpk_quantize_row(type, group, x, n, out, e);
    }
}

/*
 * The clip search's groups: the range found once (group_range), then per
 * ratio the reference's parameters and, 8 weights at a time, the same division, rounding,
 * zero point, clamp and d (q - z) as qpk_quantize_value and qpk_dequantize_value: exact
 * IEEE operations, the same values. Affine grids, groups not a multiple of 8 and groups
 * holding a non-finite weight go to the reference.
 */
static int quantize_group_ratios(uint32_t type, const float *w, int64_t n, const float *ratios, int n_ratios,
                                 float *out)
{
    if (!qpk_type_has_grid(type) || QPK_QUANT_TRAITS[type].grid.rule == QPK_RULE_AFFINE || n % 8 != 0 || n == 0)
        return qpk_scalar_quantize_group_ratios(type, w, n, ratios, n_ratios, out);
    const qpk_grid *gr = &QPK_QUANT_TRAITS[type].grid;
    const bool zp = gr->rule == QPK_RULE_ZERO_POINT;
    float lo, hi;
    if (!group_range(w, n, &lo, &hi))
        return qpk_scalar_quantize_group_ratios(type, w, n, ratios, n_ratios, out); /* refuses every ratio */
    const __m256 qmin = _mm256_set1_ps((float)gr->qmin), qmax = _mm256_set1_ps((float)gr->qmax);
    for (int i = 0; i < n_ratios; i++) {
        qpk_qparams p;
        if (qpk_params_from_range(type, lo, hi, ratios[i], &p, NULL) != QPK_OK)
            return i;
        float *o = out + i * n;
        if (p.d == 0) { /* the all-zero group: every code the zero point, every weight 0 */
            memset(o, 0, (size_t)n * sizeof *o);
            continue;
        }
        const __m256 d = _mm256_set1_ps(p.d), z = _mm256_set1_ps(zp ? (float)p.z : 0.0f);
        for (int64_t k = 0; k < n; k += 8) {
            const __m256 q = nearest8(_mm256_loadu_ps(w + k), d, z, qmin, qmax);
            _mm256_storeu_ps(o + k, _mm256_mul_ps(d, _mm256_sub_ps(q, z)));
        }
    }
    return n_ratios;
}

/*
 * qpk_params_from_range's zero-point rule for 8 groups' ranges at once, the same IEEE
 * operations lane by lane: d0 = (hi - lo) / qmax, z = round(-lo / d0) (0 where d0 is not
 * above 0) clamped to the codes, the least scale covering both ends from z, rounded up to
 * an f16 (F16C's conversion toward +inf: the reference's nearest-even and one step up
 * when that fell short). The scale is >= 0 here (lo <= 0 <= hi). false if a scale is past
 * f16, which the reference refuses.
 */
static inline bool zero_point_params8(__m256 lo, __m256 hi, float qmin_f, float qmax_f, __m256 *d, __m256 *z)
{
    const __m256 zero = _mm256_setzero_ps(), qmin = _mm256_set1_ps(qmin_f), qmax = _mm256_set1_ps(qmax_f);
    const __m256 neg_lo = _mm256_xor_ps(lo, _mm256_set1_ps(-0.0f));
    const __m256 d0 = _mm256_div_ps(_mm256_sub_ps(hi, lo), qmax);
    __m256 zz = _mm256_round_ps(_mm256_div_ps(neg_lo, d0), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    zz = _mm256_and_ps(zz, _mm256_cmp_ps(d0, zero, _CMP_GT_OQ));
    zz = _mm256_min_ps(_mm256_max_ps(zz, qmin), qmax);
    const __m256 below = _mm256_and_ps(_mm256_div_ps(neg_lo, zz), _mm256_cmp_ps(zz, zero, _CMP_NEQ_UQ));
    const __m256 above = _mm256_and_ps(_mm256_div_ps(hi, _mm256_sub_ps(qmax, zz)), _mm256_cmp_ps(zz, qmax, _CMP_LT_OQ));
    const __m256 ideal = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_max_ps(below, above));
    const __m128i h = _mm256_cvtps_ph(ideal, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
    const __m128i exp = _mm_and_si128(h, _mm_set1_epi16(0x7c00));
    if (!_mm_testz_si128(_mm_cmpeq_epi16(exp, _mm_set1_epi16(0x7c00)), _mm_set1_epi16(-1)))
        return false;
    *d = _mm256_cvtph_ps(h);
    *z = _mm256_and_ps(zz, _mm256_cmp_ps(*d, zero, _CMP_NEQ_UQ)); /* a zero scale: the zero point 0 */
    return true;
}

/*
 * AWQ's candidate row, 8 groups at a time: the scaled weights and their ranges (group_range),
 * the 8 groups' parameters (vectorized for the zero-point rule, else the reference's per
 * group), then per weight the division, rounding, zero point, clamp and d (q - z) of
 * quantize_group_ratios and the division by the scale: the reference's operations, so its
 * values.
 */
static bool fake_quantize_row(uint32_t type, uint32_t group, const float *w, const float *s, int64_t n, float *out)
{
    if (!qpk_type_has_grid(type) || !qpk_group_ok(type, group, n) ||
        QPK_QUANT_TRAITS[type].grid.rule == QPK_RULE_AFFINE || group % 8 != 0)
        return qpk_scalar_fake_quantize_row(type, group, w, s, n, out); /* refuses, or takes the affine grid */
    const qpk_grid *gr = &QPK_QUANT_TRAITS[type].grid;
    const bool zp = gr->rule == QPK_RULE_ZERO_POINT;
    const __m256 qmin = _mm256_set1_ps((float)gr->qmin), qmax = _mm256_set1_ps((float)gr->qmax);
    for (int64_t g0 = 0; g0 < n; g0 += 8 * (int64_t)group) {
        const int ng = n - g0 >= 8 * (int64_t)group ? 8 : (int)((n - g0) / group);
        float lo[8] = {0}, hi[8] = {0}, dv[8], zv[8];
        for (int i = 0; i < ng; i++) {
            const int64_t at = g0 + i * (int64_t)group;
            for (int64_t k = at; k < at + group; k += 8)
                _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(s + k)));
            if (!group_range(out + at, group, &lo[i], &hi[i]))
                return false;
        }
        if (zp) {
            __m256 d, z;
            if (!zero_point_params8(_mm256_loadu_ps(lo), _mm256_loadu_ps(hi), (float)gr->qmin, (float)gr->qmax, &d,
                                    &z))
                return false;
            _mm256_storeu_ps(dv, d), _mm256_storeu_ps(zv, z);
        } else {
            for (int i = 0; i < ng; i++) {
                qpk_qparams p;
                if (qpk_params_from_range(type, lo[i], hi[i], 1.0f, &p, NULL) != QPK_OK)
                    return false;
                dv[i] = p.d, zv[i] = 0;
            }
        }
        for (int i = 0; i < ng; i++) {
            const int64_t at = g0 + i * (int64_t)group;
            if (dv[i] == 0) { /* the all-zero group: every code the zero point, every weight d 0 */
                const __m256 v = _mm256_set1_ps(dv[i] * 0.0f);
                for (int64_t k = at; k < at + group; k += 8)
                    _mm256_storeu_ps(out + k, _mm256_div_ps(v, _mm256_loadu_ps(s + k)));
                continue;
            }
            const __m256 d = _mm256_set1_ps(dv[i]), z = _mm256_set1_ps(zv[i]);
            for (int64_t k = at; k < at + group; k += 8) {
                const __m256 q = nearest8(_mm256_loadu_ps(out + k), d, z, qmin, qmax);
                _mm256_storeu_ps(out + k, _mm256_div_ps(_mm256_mul_ps(d, _mm256_sub_ps(q, z)), _mm256_loadu_ps(s + k)));
            }
        }
    }
    return true;
}

/* ---------------------------------------------------------------- softmax */

/*
 * exp(x) for x <= ~0 (arguments are logits minus their maximum): x = n ln2 + r with
 * a two-part ln2 (Cody-Waite), exp(r) by a degree-6 minimax polynomial (the classic
 * Cephes expf coefficients), 2^n by exponent arithmetic. Below -87.3 the result
 * would be subnormal: it is flushed to 0, which changes a sum of >= 1 by < 1e-37.
 */
static inline __m256 exp8(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    __m256 zero_mask = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero_mask, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

static double sum_exp(const float *x, int64_t n, float shift, float *out)
{
    __m256 sh = _mm256_set1_ps(shift);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
        if (out)
            _mm256_storeu_ps(out + i, v);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(acc0, acc1));
    double s = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
    for (; i < n; i++) {
        float t[8] = {x[i] - shift}, r[8];
        _mm256_storeu_ps(r, exp8(_mm256_loadu_ps(t)));
        if (out)
            out[i] = r[0];
        s += r[0];
    }
    return s;
}

/*
 * out[i] = expf(x[i] - shift) with the C library's bits where it is glibc 2.28 or later
 * (ARM's optimized-routines expf): x in f64 as k/32 ln2 + r, 2^(k/32) from a table of 32,
 * exp(r) by a cubic, every step the one glibc's FMA build takes, then one rounding to f32.
 * Arguments of magnitude 88 or more (overflow, underflow, inf, NaN) go to expf itself. The
 * runtime's softmax and SwiGLU spent about 5% of prefill in expf calls, one value each.
 */
static const uint64_t EXP2_32[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540}; /* bits of 2^(i/32), less i << 47 (added back with k) */
#define EXP_N_LN2 0x1.71547652b82fep+5 /* 32 / ln 2 */
#define EXP_SHIFT 0x1.8p+52
#define EXP_C0 0x1.c6af84b912394p-20
#define EXP_C1 0x1.ebfce50fac4f3p-13
#define EXP_C2 0x1.62e42ff0c52d6p-6
/* expf's own path from here: the top 12 bits of |x|'s f32 pattern at least this (|x| >= 88, inf, NaN) */
#define EXP_SLOW_TOP 0x42a

static inline double fma_sd(double a, double b, double c)
{
    return _mm_cvtsd_f64(_mm_fmadd_sd(_mm_set_sd(a), _mm_set_sd(b), _mm_set_sd(c)));
}

static float expf_libm_bits(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, 4);
    if ((bits >> 20 & 0x7ff) >= EXP_SLOW_TOP)
        return expf(x);
    const double xd = x, z = fma_sd(EXP_N_LN2, xd, EXP_SHIFT), kd = z - EXP_SHIFT;
    uint64_t ki, sbits;
    memcpy(&ki, &z, 8);
    const double r = fma_sd(EXP_N_LN2, xd, -kd); /* exact: a fused multiply-subtract */
    sbits = EXP2_32[ki % 32] + (ki << 47);
    double sc;
    memcpy(&sc, &sbits, 8);
    const double p = fma_sd(EXP_C0, r, EXP_C1), r2 = r * r, q = fma_sd(EXP_C2, r, 1.0);
    return (float)(fma_sd(p, r2, q) * sc);
}

static void exp_shifted(const float *x, int64_t n, float shift, float *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = expf_libm_bits(x[i] - shift);
}

static int64_t argmax(const float *x, int64_t n, float *max)
{
    if (n < 8) {
        int64_t best = 0;
        for (int64_t i = 1; i < n; i++)
            if (x[i] > x[best])
                best = i;
        *max = n ? x[best] : 0;
        return best;
    }
    /* First the maximum, then its first index: two cheap passes beat tracking indices. */
    __m256 m = _mm256_loadu_ps(x);
    int64_t i = 8;
    for (; i + 8 <= n; i += 8)
        m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    float lanes[8], best = -INFINITY;
    _mm256_storeu_ps(lanes, m);
    for (int j = 0; j < 8; j++)
        best = lanes[j] > best ? lanes[j] : best;
    for (; i < n; i++)
        best = x[i] > best ? x[i] : best;
    *max = best;
    for (i = 0; i < n; i++)
        if (x[i] == best)
            return i;
    return 0;
}

/*
 * gemm_sub_f64's register tile: MR rows of x by 8 columns of p (two 4-double vectors), one
 * fnmadd chain per output; nj (1..8) columns exist.
 */
static inline __attribute__((always_inline)) void sub_tile8(const int MR, const double *x, int64_t ldx,
                                                            const double *p, int64_t ldp, int64_t K, double *y,
                                                            int64_t ldy, int nj)
{
    __m256d c[6][2];
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i m0 = _mm256_cmpgt_epi64(_mm256_set1_epi64x(nj), lane);
    const __m256i m1 = _mm256_cmpgt_epi64(_mm256_set1_epi64x(nj - 4), lane);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
        c[i][0] = _mm256_maskload_pd(y + i * ldy, m0), c[i][1] = _mm256_maskload_pd(y + i * ldy + 4, m1);
    for (int64_t k = 0; k < K; k++) {
        const __m256d b0 = _mm256_maskload_pd(p + k * ldp, m0), b1 = _mm256_maskload_pd(p + k * ldp + 4, m1);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m256d a = _mm256_broadcast_sd(x + i * ldx + k);
            c[i][0] = _mm256_fnmadd_pd(a, b0, c[i][0]);
            c[i][1] = _mm256_fnmadd_pd(a, b1, c[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
        _mm256_maskstore_pd(y + i * ldy, m0, c[i][0]), _mm256_maskstore_pd(y + i * ldy + 4, m1, c[i][1]);
}

static void gemm_sub_f64(const double *x, int64_t ldx, int64_t T, const double *p, int64_t ldp, int64_t K, double *y,
                         int64_t ldy, int64_t J)
{
    for (int64_t j = 0; j < J; j += 8) {
        const int nj = J - j < 8 ? (int)(J - j) : 8;
        int64_t t = 0;
        for (; t + 6 <= T; t += 6)
            sub_tile8(6, x + t * ldx, ldx, p + j, ldp, K, y + t * ldy + j, ldy, nj);
        for (; t < T; t++)
            sub_tile8(1, x + t * ldx, ldx, p + j, ldp, K, y + t * ldy + j, ldy, nj);
    }
}

const qpk_kernels qpk_kernels_avx2_table = {"avx2", row_to_f32, gemv, gemm, dot, axpy_rows, sum_exp, argmax,
                                            quantize_row, gemm_acc, gemm_sub_f64, dot_rows,
                                            quantize_group_ratios, fake_quantize_row, pack_panel, exp_shifted,
                                            gemv4};

/* ------------------------------------------------------ AVX-512: 4-bit codes */

/*
 * With AVX-512, the 16 weights a 4-bit block can hold, d * (q - z) (or s q + b) for q = 0..15, are
 * formed once per block (exactly, as above) and each code becomes its weight with one
 * permute: about 2 instructions per 16 weights instead of 8 (prefill, which dequantizes
 * rows for the gemm tiles, gains about 25%). Each 512-bit accumulator carries two of the
 * 8-lane chains, so every sum is the AVX2 path's, bit for bit. Everything else is the
 * AVX2 table's.
 */
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/* Rows a gemv kernel runs at once, at most: their chains in flight hide the FMA latency (four: 1.4x two). */
#define GEMV_ROWS 4

/*
 * Arithmetic with a scalar from memory broadcast by the instruction itself. Zen 4 runs every
 * 512-bit permute, widening, broadcast and f16 conversion on its shuffle pipes, one per cycle,
 * and these are what the 4-bit rows spend their time on; an embedded broadcast costs no
 * shuffle. Compilers given _mm512_set1_ps broadcast into a register instead (GCC 12 even from
 * memory), hence the asm. bcast_of makes the broadcast an OR with zero, an integer op.
 */
AVX512 static inline __m512 mul_by(__m512 v, const float *s)
{
    __m512 r;
    __asm__("vmulps %2%{1to16%}, %1, %0" : "=v"(r) : "v"(v), "m"(*s));
    return r;
}

AVX512 static inline __m512 sub_of(__m512 v, const float *s)
{
    __m512 r;
    __asm__("vsubps %2%{1to16%}, %1, %0" : "=v"(r) : "v"(v), "m"(*s));
    return r;
}

/* v s + c and v s - c, one rounding */
AVX512 static inline __m512 fma_by(__m512 v, const float *s, __m512 c)
{
    __asm__("vfmadd132ps %2%{1to16%}, %1, %0" : "+v"(v) : "v"(c), "m"(*s));
    return v;
}

AVX512 static inline __m512 fms_by(__m512 v, const float *s, __m512 c)
{
    __asm__("vfmsub132ps %2%{1to16%}, %1, %0" : "+v"(v) : "v"(c), "m"(*s));
    return v;
}

AVX512 static inline __m512 bcast_of(const float *s)
{
    __m512i r;
    __asm__("vpord %2%{1to16%}, %1, %0" : "=v"(r) : "v"(_mm512_setzero_si512()), "m"(*s));
    return _mm512_castsi512_ps(r);
}

/*
 * The 4- to 6-bit row kernels ask for each stream's bytes GEMV_PREFETCH ahead of the block
 * they work on. A task's streams are short (a quarter of its rows: 18 KB for a 1024-wide
 * Q4_K matrix in tasks of 128 rows), too short for the hardware prefetchers to ramp up on;
 * with the request, two threads read Q4_K rows from DRAM at 28-33 GB/s instead of 22-24, Q6_K's
 * at 31-32 instead of 21-24 (Zen 5). With one gemv task per thread (pool.c), streams four times
 * as long, it still gives decode 0-25% (Q4_K_M, Q6_K, Q4_0 files). int8's rows, twice as long,
 * gained nothing and go without.
 */
#define GEMV_PREFETCH 1024

AVX512 static inline void prefetch_ahead(const uint8_t *block, size_t bytes)
{
    /* the builtin: GCC 12 drops _mm_prefetch inlined into a function of another target */
    for (size_t o = 0; o < bytes; o += 64)
        __builtin_prefetch(block + GEMV_PREFETCH + o, 0, 3);
}

/*
 * The 16 code bytes of a chunk of 32 weights, one per 32-bit lane: byte i holds code i
 * in its low nibble and code 16 + i in its high one. A permute reads only the low 4 bits
 * of each index, so these lanes index codes 0..15 as they are, and codes 16..31 once
 * shifted right by 4: one widening per 32 codes, no masking.
 */
AVX512 static inline __m512i q4_indices(const uint8_t *codes)
{
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)codes));
}

/*
 * The head scale d of the blocks at row + i stride, i < R, as f32 in memory for the broadcast
 * operands above, f16 ones four at a time by one 128-bit conversion: a broadcast and a 512-bit
 * conversion per block and row were two of a Q4_0 row's ~6 cycles per 32 weights on Zen 4.
 */
_Static_assert(GEMV_ROWS == 4, "block_scales converts four f16 scales at once");
AVX512 static inline __attribute__((always_inline)) void block_scales(const int R, uint32_t type, const uint8_t *row,
                                                                      size_t stride, float d[GEMV_ROWS])
{
    if (QPK_TYPE_TABLE[type].scale_bf16) {
#pragma GCC unroll 4
        for (int i = 0; i < R; i++)
            d[i] = half_at(row + i * stride, true);
        return;
    }
    uint64_t h = 0;
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
        h |= (uint64_t)qpk_le16(row + i * stride) << 16 * i;
    _mm_storeu_ps(d, _mm_cvtph_ps(_mm_cvtsi64_si128((long long)h)));
}

/* block_scales, and each block's zero z (an affine type's b) */
AVX512 static inline __attribute__((always_inline)) void q4_block_params(const int R, uint32_t type,
                                                                         const uint8_t *row, size_t stride,
                                                                         float d[GEMV_ROWS], float z[GEMV_ROWS])
{
    block_scales(R, type, row, stride, d);
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
        z[i] = block_zero_f(type, row + i * stride);
}

/* The 16 weights a block's codes stand for, d (q - z) or s q + b, from its d and z (q4_block_params'), as dequant32
 * forms them. */
AVX512 static inline __attribute__((always_inline)) __m512 q4_table(uint32_t type, const float *d, const float *z)
{
    const __m512 q = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const qpk_grid *g = &QPK_QUANT_TRAITS[type].grid;
    if (g->rule == QPK_RULE_AFFINE)
        return fma_by(q, d, bcast_of(z));
    /* a type's constant bias folds into q at compile time */
    return mul_by(g->rule == QPK_RULE_ZERO_POINT ? sub_of(q, z) : _mm512_sub_ps(q, _mm512_set1_ps(*z)), d);
}

/* q4_table of one block */
AVX512 static inline __m512 q4_weights(uint32_t type, const uint8_t *block)
{
    float d[GEMV_ROWS], z[GEMV_ROWS];
    q4_block_params(1, type, block, 0, d, z);
    return q4_table(type, d, z);
}

/* The two halves of a 512-bit accumulator: chains (lo, hi). */
AVX512 static inline __m256 half(__m512 v, int hi)
{
    return hi ? _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)) : _mm512_castps512_ps256(v);
}

/*
 * R rows (1, 2 or 4) at row, row + stride, ... into y[0..R): each row its own two
 * accumulators, so that four rows keep eight FMA chains in flight where one row's wait on
 * the FMA latency. (Tried for Q4_0: four rows' scales of four blocks gathered by word
 * permutes and converted at once, a step ahead: 9% faster in L1, but no faster or slower
 * in decode, whose rows come from DRAM, measured token by token on Zen 5.)
 */
AVX512 static inline __attribute__((always_inline)) void gemv_q4rows(const int R, uint32_t type, uint32_t group,
                                                                     const uint8_t *row, size_t stride,
                                                                     const float *x, int64_t K, float *y)
{
    const size_t bb = qpk_type_block_bytes(type, group);
    __m512 a01[GEMV_ROWS] = {_mm512_setzero_ps()}, a23[GEMV_ROWS] = {_mm512_setzero_ps()};
    for (int64_t g = 0; g < K; g += group, row += bb) {
        __m512 table[GEMV_ROWS];
        float d[GEMV_ROWS], z[GEMV_ROWS];
        q4_block_params(R, type, row, stride, d, z);
#pragma GCC unroll 4
        for (int i = 0; i < R; i++)
            table[i] = q4_table(type, d + i, z + i);
        /* Q4_0's 18-byte blocks are asked for four at a time (two lines per stream), not one by one. */
        if (group > 32 || g % 128 == 0)
#pragma GCC unroll 4
            for (int i = 0; i < R; i++)
                prefetch_ahead(row + i * stride, group > 32 ? bb : 4 * bb);
        for (int64_t k = g; k < g + group; k += 32) {
            const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++) {
                const __m512i both = q4_indices(row + i * stride + CODES_AT(type) + (k - g) / 2);
                a01[i] = _mm512_fmadd_ps(x0, _mm512_permutexvar_ps(both, table[i]), a01[i]);
                a23[i] = _mm512_fmadd_ps(x1, _mm512_permutexvar_ps(_mm512_srli_epi32(both, 4), table[i]), a23[i]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) {
        const __m256 c[4] = {half(a01[i], 0), half(a01[i], 1), half(a23[i], 0), half(a23[i], 1)};
        y[i] = combine(c, x, row, type, K, K);
    }
}

AVX512 static void q4_row_to_f32(uint32_t type, uint32_t group, const uint8_t *row, int64_t n, float *dst)
{
    const size_t bb = qpk_type_block_bytes(type, group);
    for (int64_t g = 0; g < n; g += group, row += bb) {
        const __m512 table = q4_weights(type, row);
        const uint8_t *codes = row + CODES_AT(type);
        for (int64_t k = g; k < g + group; k += 32, codes += 16) {
            const __m512i both = q4_indices(codes);
            _mm512_storeu_ps(dst + k, _mm512_permutexvar_ps(both, table));
            _mm512_storeu_ps(dst + k + 16, _mm512_permutexvar_ps(_mm512_srli_epi32(both, 4), table));
        }
    }
}

AVX512 static void q4_panel(uint32_t type, const qpk_matrix *w, int64_t r, int nr, int64_t k0, int64_t kc,
                            float *packed);

/* Groups of 32 (Q4_0's) get a copy with the group a constant, its block loop folded: 7% more
   int4s weights per second on one Zen 5 thread. */
#define Q4_GEMV(R, T, w, row, stride, x, y)                                                                      \
    ((w)->group_size == 32 ? gemv_q4rows(R, QPK_TYPE_##T, 32, row, stride, x, (w)->cols, y)                      \
                           : gemv_q4rows(R, QPK_TYPE_##T, (w)->group_size, row, stride, x, (w)->cols, y))

#define Q4_ROWS(T)                                                                                                \
    static void to_f32_512_##T(const qpk_matrix *w, int64_t r, float *dst)                                       \
    {                                                                                                            \
        q4_row_to_f32(QPK_TYPE_##T, w->group_size, qpk_row_ptr(w, r), w->cols, dst);                             \
    }                                                                                                            \
    static void panel_512_##T(const qpk_matrix *w, int64_t r, int nr, int64_t k0, int64_t kc, float *packed)     \
    {                                                                                                            \
        q4_panel(QPK_TYPE_##T, w, r, nr, k0, kc, packed);                                                        \
    }                                                                                                            \
    AVX512 static float dot_512_##T(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)     \
    {                                                                                                            \
        (void)scratch;                                                                                           \
        float y;                                                                                                 \
        Q4_GEMV(1, T, w, row, 0, x, &y);                                                                         \
        return y;                                                                                                \
    }                                                                                                            \
    AVX512 static void dot2_512_##T(const qpk_matrix *w, const uint8_t *row, size_t stride, const float *x,      \
                                    float y[2])                                                                  \
    {                                                                                                            \
        Q4_GEMV(2, T, w, row, stride, x, y);                                                                     \
    }                                                                                                            \
    AVX512 static void dot4_512_##T(const qpk_matrix *w, const uint8_t *row, size_t stride, const float *x,      \
                                    float y[4])                                                                  \
    {                                                                                                            \
        Q4_GEMV(4, T, w, row, stride, x, y);                                                                     \
    }
Q4_ROWS(INT4)
Q4_ROWS(INT4S)
Q4_ROWS(MLX4)
Q4_ROWS(MLX4_F16)

/* The sum of a row's two accumulators, in the order of gemv_row's four chains. */
AVX512 static inline float sum_chains(__m512 a01, __m512 a23)
{
    return hsum(_mm256_add_ps(_mm256_add_ps(half(a01, 0), half(a01, 1)), _mm256_add_ps(half(a23, 0), half(a23, 1))));
}

/*
 * One row's dot product (dot_512_NAME), two rows' (dot2_512_NAME) and four rows' (dot4_512_NAME) from
 * NAME_rows(R, ...), R rows at a stride: each row's chains are the same whatever R.
 */
#define DOT_1_2_4_FOR(NAME, TARGET)                                                                                  \
    TARGET static float dot_512_##NAME(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch)      \
    {                                                                                                                \
        (void)scratch;                                                                                               \
        float y;                                                                                                     \
        NAME##_rows(1, w, row, 0, x, &y);                                                                            \
        return y;                                                                                                    \
    }                                                                                                                \
    TARGET static void dot2_512_##NAME(const qpk_matrix *w, const uint8_t *row, size_t stride, const float *x,       \
                                       float y[2])                                                                   \
    {                                                                                                                \
        NAME##_rows(2, w, row, stride, x, y);                                                                        \
    }                                                                                                                \
    TARGET static void dot4_512_##NAME(const qpk_matrix *w, const uint8_t *row, size_t stride, const float *x,       \
                                       float y[4])                                                                   \
    {                                                                                                                \
        NAME##_rows(4, w, row, stride, x, y);                                                                        \
    }
#define DOT_1_2_4(NAME) DOT_1_2_4_FOR(NAME, AVX512)

/* int8 (Q8_0's blocks), R rows at a stride: 16 codes widen to f32 and take d, an exact product, as dequant32's. */
AVX512 static inline __attribute__((always_inline)) void INT8_rows(const int R, const qpk_matrix *w,
                                                                   const uint8_t *row, size_t stride, const float *x,
                                                                   float *y)
{
    const size_t bb = qpk_type_block_bytes(QPK_TYPE_INT8, w->group_size);
    __m512 a01[GEMV_ROWS] = {_mm512_setzero_ps()}, a23[GEMV_ROWS] = {_mm512_setzero_ps()};
    for (int64_t g = 0; g < w->cols; g += w->group_size, row += bb) {
        float d[GEMV_ROWS];
        block_scales(R, QPK_TYPE_INT8, row, stride, d);
        for (int64_t k = g; k < g + w->group_size; k += 32) {
            const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *q = row + r * stride + CODES_AT(QPK_TYPE_INT8) + (k - g);
                const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
                const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
                a01[r] = _mm512_fmadd_ps(x0, mul_by(w0, d + r), a01[r]);
                a23[r] = _mm512_fmadd_ps(x1, mul_by(w1, d + r), a23[r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        y[r] = sum_chains(a01[r], a23[r]);
}
DOT_1_2_4(INT8)

/*
 * ggml's 4-bit block types the same way, a table per sub-block of 32: Q4_K's 16 weights
 * (d sc) q - (dmin m) for q = 0..15 (Q5_K's 32, two tables the index's bit 4 chooses between),
 * IQ4's 16 codebook values times the sub-block's scale, each formed exactly as the AVX2 rows
 * form a weight. IQ4's codes are laid out as int4's (q4_indices); Q4_K's sub-block j has its
 * 32 codes in the low (j even) or high nibbles of 32 consecutive bytes.
 */
AVX512 static inline __m512 iq4_table(float scale)
{
    const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qpk_iq4nl_values)));
    return _mm512_mul_ps(_mm512_set1_ps(scale), v);
}

/* Sub-block j's two tables of a Q5_K block, and its 32 codes' indices (bits 0..4) in two vectors of 16. */
AVX512 static inline __attribute__((always_inline)) void q5_k_tables(const uint8_t *b, float d, float dmin, int j,
                                                                     __m512 t[2], __m512i idx[2])
{
    int sj, mj;
    k4_scale_min(b + offsetof(qpk_block_q4_k, scales), j, &sj, &mj);
    const __m512 dl = _mm512_set1_ps(d * (float)sj), ml = _mm512_set1_ps(dmin * (float)mj);
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    t[0] = _mm512_sub_ps(_mm512_mul_ps(dl, iota), ml);
    t[1] = _mm512_sub_ps(_mm512_mul_ps(dl, _mm512_add_ps(iota, _mm512_set1_ps(16))), ml); /* codes 16..31 */
    __m128i u, v;
    k4_codes(k4_qs(QPK_TYPE_Q5_K, b), k4_qh(QPK_TYPE_Q5_K, b), j, &u, &v);
    idx[0] = _mm512_cvtepu8_epi32(u), idx[1] = _mm512_cvtepu8_epi32(v);
}

/* Weights 16 at a time from a sub-block's tables: bit 4 of the index picks the second. */
AVX512 static inline __m512 q5_k_lookup(__m512i idx, const __m512 t[2])
{
    return _mm512_permutex2var_ps(t[0], idx, t[1]);
}

AVX512 static void q5_k_row_512(const qpk_matrix *w, int64_t r, float *y)
{
    const uint8_t *b = qpk_row_ptr(w, r);
    for (int64_t i = 0; i < w->cols; i += 256, b += sizeof(qpk_block_q5_k)) {
        const float d = q4_k_d(b), dmin = q4_k_dmin(b);
        for (int j = 0; j < 8; j++, y += 32) {
            __m512 t[2];
            __m512i idx[2];
            q5_k_tables(b, d, dmin, j, t, idx);
            _mm512_storeu_ps(y, q5_k_lookup(idx[0], t));
            _mm512_storeu_ps(y + 16, q5_k_lookup(idx[1], t));
        }
    }
}

AVX512 static inline __attribute__((always_inline)) void Q5_K_rows(const int R, const qpk_matrix *w,
                                                                   const uint8_t *row, size_t stride, const float *x,
                                                                   float *y)
{
    __m512 a01[GEMV_ROWS] = {_mm512_setzero_ps()}, a23[GEMV_ROWS] = {_mm512_setzero_ps()};
    for (int64_t i = 0; i < w->cols; i += 256, row += sizeof(qpk_block_q5_k)) {
        float d[GEMV_ROWS], dmin[GEMV_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            d[r] = q4_k_d(row + r * stride), dmin[r] = q4_k_dmin(row + r * stride);
            prefetch_ahead(row + r * stride, sizeof(qpk_block_q5_k));
        }
        for (int j = 0; j < 8; j++) {
            const __m512 x0 = _mm512_loadu_ps(x + i + 32 * j), x1 = _mm512_loadu_ps(x + i + 32 * j + 16);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512 t[2];
                __m512i idx[2];
                q5_k_tables(row + r * stride, d[r], dmin[r], j, t, idx);
                a01[r] = _mm512_fmadd_ps(x0, q5_k_lookup(idx[0], t), a01[r]);
                a23[r] = _mm512_fmadd_ps(x1, q5_k_lookup(idx[1], t), a23[r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        y[r] = sum_chains(a01[r], a23[r]);
}

/*
 * Q4_K, leaner than Q5_K's q5_k_tables: the eight sub-blocks' d sc and dmin m at once
 * from the 12 scale bytes (byte shuffles; the same exact products), a sub-block's table in
 * one fused (d sc) q - dmin m (its product is exact, so the one rounding is the
 * subtraction's), and a pair of sub-blocks' 64 codes from one widening of their 32 bytes
 * (the permute reads only an index's low nibble; the high one is the odd sub-block's,
 * shifted down). The row kernel forms each block's scales while the block before it is
 * worked on: formed just before their use, the tables' broadcasts waited on them (a 1024 x
 * 1024 gemv in L2 took 32.3 us that way, 27.1 us this way, Zen 5; Q6_K's gained nothing).
 */
AVX512 static inline void q4_k_scales(const uint8_t *b, float dsm[16])
{
    /* k4_scale_min's fields by two byte shuffles of the 12 scale bytes (and 4 of the codes,
       never used): each lane's low bits, and sub-blocks 4..7's high two */
    const __m128i sc = _mm_loadu_si128((const __m128i *)(b + offsetof(qpk_block_q4_k, scales)));
    const __m128i lo = _mm_shuffle_epi8(sc, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i hi = _mm_shuffle_epi8(sc, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    const __m128i low6 = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
    const __m128i nib = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
    const __m128i fields = _mm_or_si128(_mm_or_si128(_mm_and_si128(lo, low6),
                                                     _mm_and_si128(_mm_srli_epi16(lo, 4), nib)),
                                        _mm_and_si128(_mm_srli_epi16(hi, 2), _mm_set1_epi8(0x30)));
    /* d and dmin, each spread over its eight lanes */
    uint32_t dd;
    memcpy(&dd, b + offsetof(qpk_block_q4_k, d), 4);
    const __m512 scale = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                               _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)dd))));
    _mm512_storeu_ps(dsm, _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(fields))));
}

AVX512 static inline __attribute__((always_inline)) void Q4_K_rows(const int R, const qpk_matrix *w,
                                                                   const uint8_t *row, size_t stride, const float *x,
                                                                   float *y)
{
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    float scales[2][GEMV_ROWS][16]; /* this block's and the next's */
    __m512 a01[GEMV_ROWS] = {_mm512_setzero_ps()}, a23[GEMV_ROWS] = {_mm512_setzero_ps()};
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        q4_k_scales(row + r * stride, scales[0][r]);
    for (int64_t i = 0; i < w->cols; i += 256, row += sizeof(qpk_block_q4_k)) {
        float(*dsm)[16] = scales[i / 256 % 2];
        if (i + 256 < w->cols) {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                q4_k_scales(row + sizeof(qpk_block_q4_k) + r * stride, scales[(i / 256 + 1) % 2][r]);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            prefetch_ahead(row + r * stride, sizeof(qpk_block_q4_k));
        for (int j = 0; j < 8; j += 2) {
            const float *xj = x + i + 32 * j;
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *qs = row + r * stride + offsetof(qpk_block_q4_k, qs) + 16 * j;
                const __m512i u = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
                const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16)));
                const __m512 t0 = fms_by(iota, &dsm[r][j], bcast_of(&dsm[r][8 + j]));
                const __m512 t1 = fms_by(iota, &dsm[r][j + 1], bcast_of(&dsm[r][9 + j]));
                a01[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xj), _mm512_permutexvar_ps(u, t0), a01[r]);
                a23[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xj + 16), _mm512_permutexvar_ps(v, t0), a23[r]);
                a01[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xj + 32),
                                         _mm512_permutexvar_ps(_mm512_srli_epi32(u, 4), t1), a01[r]);
                a23[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xj + 48),
                                         _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t1), a23[r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        y[r] = sum_chains(a01[r], a23[r]);
}
DOT_1_2_4(Q4_K)

AVX512 static void q4_k_row_512(const qpk_matrix *w, int64_t r, float *y)
{
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const uint8_t *b = qpk_row_ptr(w, r);
    float dsm[16];
    for (int64_t i = 0; i < w->cols; i += 256, b += sizeof(qpk_block_q4_k), y += 256) {
        q4_k_scales(b, dsm);
        for (int j = 0; j < 8; j += 2) {
            const uint8_t *qs = b + offsetof(qpk_block_q4_k, qs) + 16 * j;
            const __m512i u = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16)));
            const __m512 t0 = _mm512_fmsub_ps(_mm512_set1_ps(dsm[j]), iota, _mm512_set1_ps(dsm[8 + j]));
            const __m512 t1 = _mm512_fmsub_ps(_mm512_set1_ps(dsm[j + 1]), iota, _mm512_set1_ps(dsm[9 + j]));
            _mm512_storeu_ps(y + 32 * j, _mm512_permutexvar_ps(u, t0));
            _mm512_storeu_ps(y + 32 * j + 16, _mm512_permutexvar_ps(v, t0));
            _mm512_storeu_ps(y + 32 * j + 32, _mm512_permutexvar_ps(_mm512_srli_epi32(u, 4), t1));
            _mm512_storeu_ps(y + 32 * j + 48, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t1));
        }
    }
}
DOT_1_2_4(Q5_K)

AVX512 static void iq4_row_512(const qpk_matrix *w, int64_t r, float *y)
{
    const uint32_t type = w->type;
    const size_t bb = qpk_type_block_bytes(type, QPK_TYPE_TABLE[type].block);
    const uint8_t *b = qpk_row_ptr(w, r);
    float scale[8];
    for (int64_t i = 0; i < w->cols; b += bb) {
        const int sub = iq4_scales(type, b, scale);
        for (int j = 0; j < sub; j++, i += 32, y += 32) {
            const __m512 table = iq4_table(scale[j]);
            const __m512i both = q4_indices(iq4_qs(type, b) + 16 * j);
            _mm512_storeu_ps(y, _mm512_permutexvar_ps(both, table));
            _mm512_storeu_ps(y + 16, _mm512_permutexvar_ps(_mm512_srli_epi32(both, 4), table));
        }
    }
}

/*
 * IQ4_NL's and IQ4_XS's rows, R at a stride. A block's sub-block scales are formed while the
 * block before it is worked on, as Q4_K's: formed just before their use, the tables waited on
 * them (one Zen 5 thread, IQ4_XS rows in L1/L2: 3.0-3.1 cycles per 32 weights that way,
 * 2.8-2.9 this way; decode of an IQ4_XS file 2.2-2.5% faster, token by token).
 */
AVX512 static inline __attribute__((always_inline)) void iq4_rows(const int R, uint32_t type, const qpk_matrix *w,
                                                                  const uint8_t *row, size_t stride, const float *x,
                                                                  float *y)
{
    const size_t bb = qpk_type_block_bytes(type, QPK_TYPE_TABLE[type].block);
    const int sub = (int)(QPK_TYPE_TABLE[type].block / 32); /* sub-blocks per block: iq4_scales' count */
    float scales[2][GEMV_ROWS][8]; /* this block's and the next's, formed a block ahead as Q4_K's are */
    __m512 a01[GEMV_ROWS] = {_mm512_setzero_ps()}, a23[GEMV_ROWS] = {_mm512_setzero_ps()};
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        iq4_scales(type, row + r * stride, scales[0][r]);
    for (int64_t i = 0, b = 0; i < w->cols; row += bb, b++) {
        float(*scale)[8] = scales[b % 2];
        if (i + 32 * sub < w->cols) {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                iq4_scales(type, row + bb + r * stride, scales[(b + 1) % 2][r]);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            prefetch_ahead(row + r * stride, bb);
        for (int j = 0; j < sub; j++, i += 32) {
            const __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m512 table = iq4_table(scale[r][j]);
                const __m512i both = q4_indices(iq4_qs(type, row + r * stride) + 16 * j);
                a01[r] = _mm512_fmadd_ps(x0, _mm512_permutexvar_ps(both, table), a01[r]);
                a23[r] = _mm512_fmadd_ps(x1, _mm512_permutexvar_ps(_mm512_srli_epi32(both, 4), table), a23[r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        y[r] = sum_chains(a01[r], a23[r]);
}
#define IQ4_NL_rows(R, w, row, stride, x, y) iq4_rows(R, QPK_TYPE_IQ4_NL, w, row, stride, x, y)
#define IQ4_XS_rows(R, w, row, stride, x, y) iq4_rows(R, QPK_TYPE_IQ4_XS, w, row, stride, x, y)
DOT_1_2_4(IQ4_NL)
DOT_1_2_4(IQ4_XS)

/*
 * Q6_K: a half block's 128 codes come out of its 64 ql and 32 qh bytes in two 512-bit
 * registers of bytes (16-bit shifts whose stray bits the masks drop), already minus 32;
 * 16 at a time they widen to f32 and take their sub-block's scale d sc, one product
 * rounded once, as q6_k_weights forms it. Positions p .. p + 15 (p % 16 == 0) are one
 * sub-block and chains (p % 32) / 8 and the next, so a01 takes p % 32 == 0 and a23 the
 * rest, each chain in increasing p: the AVX2 row's sums, bit for bit.
 */
AVX512 static inline __attribute__((always_inline)) void q6_k_codes(const uint8_t *ql, const uint8_t *qh, __m512i c[2])
{
    const __m512i l = _mm512_loadu_si512(ql);
    const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)qh));
    const __m512i low = _mm512_set1_epi8(15), top = _mm512_set1_epi8(0x30), bias = _mm512_set1_epi8(32);
    /* the two bits of positions 0..31 (32..63) sit at bits 0, 1 (2, 3) of qh, of 64..95 (96..127) at 4, 5 (6, 7) */
    const __m512i up = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i down = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    c[0] = _mm512_or_si512(_mm512_and_si512(l, low), _mm512_and_si512(_mm512_sllv_epi16(h, up), top));
    c[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), low),
                           _mm512_and_si512(_mm512_srlv_epi16(h, down), top));
    c[0] = _mm512_sub_epi8(c[0], bias), c[1] = _mm512_sub_epi8(c[1], bias);
}

/* Codes 16 i .. 16 i + 15 of a half block as weights: sub-block i, scale ds[i] (q6_k_weights' sc[l / 16 + 2 k]). */
typedef __m512 q6_k_lane_fn(const __m512i c[2], int i, const float *ds);
AVX512 static inline __attribute__((always_inline)) __m512 q6_k_lane(const __m512i c[2], int i, const float *ds)
{
    const __m128i q = i % 4 == 0   ? _mm512_castsi512_si128(c[i / 4])
                      : i % 4 == 1 ? _mm512_extracti32x4_epi32(c[i / 4], 1)
                      : i % 4 == 2 ? _mm512_extracti32x4_epi32(c[i / 4], 2)
                                   : _mm512_extracti32x4_epi32(c[i / 4], 3);
    return _mm512_mul_ps(_mm512_set1_ps(ds[i]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
}

/*
 * With AVX-512 VBMI, one byte permute per 16 codes instead of an extraction and a widening:
 * each code goes to the top byte of its 32-bit lane (the rest zero), a signed integer
 * (q - 32) 2^24 that converts exactly; its scale is taken as (d sc) 2^-24, also exact (a
 * nonzero d is at least 2^-24 in magnitude, an f16 subnormal, and sc an 8-bit integer), so
 * the product is (d sc) (q - 32) with its one rounding, as q6_k_lane's: the same bits.
 * Zen 5: 13-16% more Q6_K weights per second on one thread (gemv of 64 and 1024 rows of
 * 1024, in L1 and L2).
 */
#define AVX512VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))
#define Q6_K_VBMI_UNIT 0x1p-24f

AVX512VBMI static inline __attribute__((always_inline)) __m512 q6_k_lane_vbmi(const __m512i c[2], int i,
                                                                              const float *ds)
{
    const __m512i top = _mm512_set_epi32(15 << 24, 14 << 24, 13 << 24, 12 << 24, 11 << 24, 10 << 24, 9 << 24,
                                         8 << 24, 7 << 24, 6 << 24, 5 << 24, 4 << 24, 3 << 24, 2 << 24, 1 << 24, 0);
    const __m512i at = _mm512_add_epi32(top, _mm512_set1_epi32(16 * (i % 4) << 24));
    const __m512i q = _mm512_maskz_permutexvar_epi8(0x8888888888888888ull, at, c[i / 4]);
    return _mm512_mul_ps(_mm512_set1_ps(ds[i]), _mm512_cvtepi32_ps(q));
}

/* The eight sub-block scales d sc of each half of block b, times unit (1, or Q6_K_VBMI_UNIT): ds[8 h + s], exact. */
AVX512 static inline void q6_k_scales(const uint8_t *b, float unit, float ds[16])
{
    const __m128i sc = _mm_loadu_si128((const __m128i *)(b + offsetof(qpk_block_q6_k, scales)));
    _mm512_storeu_ps(ds,
                     _mm512_mul_ps(_mm512_set1_ps(q6_k_d(b) * unit), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc))));
}

AVX512 static void q6_k_row_512(const qpk_matrix *w, int64_t r, float *y)
{
    const uint8_t *b = qpk_row_ptr(w, r);
    float ds[16];
    for (int64_t i = 0; i < w->cols; i += 256, b += sizeof(qpk_block_q6_k)) {
        q6_k_scales(b, 1, ds);
        for (int h = 0; h < 2; h++, y += 128) {
            __m512i c[2];
            q6_k_codes(b + offsetof(qpk_block_q6_k, ql) + 64 * h, b + offsetof(qpk_block_q6_k, qh) + 32 * h, c);
#pragma GCC unroll 8
            for (int p = 0; p < 8; p++)
                _mm512_storeu_ps(y + 16 * p, q6_k_lane(c, p, ds + 8 * h));
        }
    }
}

AVX512 static inline __attribute__((always_inline)) void q6_k_rows(const int R, q6_k_lane_fn *lane, float unit,
                                                                   const qpk_matrix *w, const uint8_t *row,
                                                                   size_t stride, const float *x, float *y)
{
    float ds[GEMV_ROWS][16];
    __m512 a01[GEMV_ROWS] = {_mm512_setzero_ps()}, a23[GEMV_ROWS] = {_mm512_setzero_ps()};
    for (int64_t i = 0; i < w->cols; i += 256, row += sizeof(qpk_block_q6_k)) {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            q6_k_scales(row + r * stride, unit, ds[r]);
            prefetch_ahead(row + r * stride, sizeof(qpk_block_q6_k));
        }
        for (int h = 0; h < 2; h++) {
            __m512i c[GEMV_ROWS][2];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                q6_k_codes(row + r * stride + offsetof(qpk_block_q6_k, ql) + 64 * h,
                           row + r * stride + offsetof(qpk_block_q6_k, qh) + 32 * h, c[r]);
            const float *xh = x + i + 128 * h;
#pragma GCC unroll 4
            for (int p = 0; p < 8; p += 2) {
                const __m512 x0 = _mm512_loadu_ps(xh + 16 * p), x1 = _mm512_loadu_ps(xh + 16 * p + 16);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    a01[r] = _mm512_fmadd_ps(x0, lane(c[r], p, ds[r] + 8 * h), a01[r]);
                    a23[r] = _mm512_fmadd_ps(x1, lane(c[r], p + 1, ds[r] + 8 * h), a23[r]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        y[r] = sum_chains(a01[r], a23[r]);
}
#define Q6_K_rows(R, w, row, stride, x, y) q6_k_rows(R, q6_k_lane, 1, w, row, stride, x, y)
DOT_1_2_4(Q6_K)
#define Q6_K_VBMI_rows(R, w, row, stride, x, y) q6_k_rows(R, q6_k_lane_vbmi, Q6_K_VBMI_UNIT, w, row, stride, x, y)
DOT_1_2_4_FOR(Q6_K_VBMI, AVX512VBMI)

/* AVX2's rows, with AVX-512's for the 4-bit types (qpk's, MLX's, ggml's Q4_K, Q5_K and IQ4); Q6_K's dots are Q6's. */
#define AVX512_TYPE_ROWS(Q6)                                                                                      \
    {                                                                                                             \
        [QPK_TYPE_F32] = {to_f32_F32, dot_F32}, [QPK_TYPE_F16] = {to_f32_F16, dot_F16},                           \
        [QPK_TYPE_BF16] = {to_f32_BF16, dot_BF16},                                                                \
        [QPK_TYPE_INT8] = {to_f32_INT8, dot_512_INT8, dot2_512_INT8, dot4_512_INT8},                              \
        [QPK_TYPE_INT4] = {to_f32_512_INT4, dot_512_INT4, dot2_512_INT4, dot4_512_INT4, panel_512_INT4},          \
        [QPK_TYPE_INT4S] = {to_f32_512_INT4S, dot_512_INT4S, dot2_512_INT4S, dot4_512_INT4S, panel_512_INT4S},    \
        [QPK_TYPE_INT8Z] = {to_f32_INT8Z, dot_INT8Z},                                                             \
        [QPK_TYPE_Q4_1] = GGML_ROWS, [QPK_TYPE_Q5_0] = GGML_ROWS, [QPK_TYPE_Q5_1] = GGML_ROWS,                    \
        [QPK_TYPE_Q2_K] = GGML_ROWS, [QPK_TYPE_Q3_K] = GGML_ROWS,                                                 \
        [QPK_TYPE_Q4_K] = {q4_k_row_512, dot_512_Q4_K, dot2_512_Q4_K, dot4_512_Q4_K},                             \
        [QPK_TYPE_Q5_K] = {q5_k_row_512, dot_512_Q5_K, dot2_512_Q5_K, dot4_512_Q5_K},                             \
        [QPK_TYPE_Q6_K] = {q6_k_row_512, dot_512_##Q6, dot2_512_##Q6, dot4_512_##Q6},                             \
        [QPK_TYPE_IQ4_NL] = {iq4_row_512, dot_512_IQ4_NL, dot2_512_IQ4_NL, dot4_512_IQ4_NL},                      \
        [QPK_TYPE_IQ4_XS] = {iq4_row_512, dot_512_IQ4_XS, dot2_512_IQ4_XS, dot4_512_IQ4_XS},                      \
        [QPK_TYPE_MLX4] = {to_f32_512_MLX4, dot_512_MLX4, dot2_512_MLX4, dot4_512_MLX4, panel_512_MLX4},          \
        [QPK_TYPE_MLX8] = {to_f32_MLX8, dot_MLX8},                                                                \
        [QPK_TYPE_MLX4_F16] = {to_f32_512_MLX4_F16, dot_512_MLX4_F16, dot2_512_MLX4_F16, dot4_512_MLX4_F16,       \
                               panel_512_MLX4_F16},                                                               \
        [QPK_TYPE_MLX8_F16] = {to_f32_MLX8_F16, dot_MLX8_F16},                                                    \
    }
static const qpk_type_kernels AVX512_TYPES[QPK_TYPE_COUNT_] = AVX512_TYPE_ROWS(Q6_K);
static const qpk_type_kernels AVX512VBMI_TYPES[QPK_TYPE_COUNT_] = AVX512_TYPE_ROWS(Q6_K_VBMI);

static void row_to_f32_512(const qpk_matrix *w, int64_t r, float *dst) { rows_of(AVX512_TYPES, w).to_f32(w, r, dst); }

static void gemv_512(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, float *scratch)
{
    gemv_with(AVX512_TYPES, w, x, y, r0, r1, scratch);
}

static void gemv_512vbmi(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, float *scratch)
{
    gemv_with(AVX512VBMI_TYPES, w, x, y, r0, r1, scratch);
}

static void gemv4_512(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t quarter,
                      float *scratch)
{
    streams_with(AVX512_TYPES, w, x, y, r0, r1, quarter, scratch);
}

static void gemv4_512vbmi(const qpk_matrix *w, const float *x, float *y, int64_t r0, int64_t r1, int64_t quarter,
                          float *scratch)
{
    streams_with(AVX512VBMI_TYPES, w, x, y, r0, r1, quarter, scratch);
}

/* MR tokens x the 32 rows of a panel, two 16-row vectors: per k, two loads, MR broadcasts, 2 MR FMAs. */
AVX512 static inline __attribute__((always_inline)) void tile32(const int MR, const float *x, int64_t ldx,
                                                                const float *p, int64_t ldp, int64_t kc, float *y,
                                                                int64_t ldy, int nr, bool first)
{
    __m512 c[8][2];
    const __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    const __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        c[i][0] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, y + i * ldy);
        c[i][1] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, y + i * ldy + 16);
    }
    for (int64_t k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, p + k * ldp), b1 = _mm512_maskz_loadu_ps(m1, p + k * ldp + 16);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            const __m512 a = _mm512_set1_ps(x[i * ldx + k]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        _mm512_mask_storeu_ps(y + i * ldy, m0, c[i][0]);
        _mm512_mask_storeu_ps(y + i * ldy + 16, m1, c[i][1]);
    }
}

#define AVX512_MR 8

/* v[0..15] transposed in place: v[i][j] <- v[j][i] (4 x 4 blocks in each 128-bit lane, then the lanes). */
AVX512 static inline __attribute__((always_inline)) void transpose16(__m512 v[16])
{
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    /* u[4 i + c], lane L: rows 4 i .. 4 i + 3 of column 4 L + c */
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        const __m512 x0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), x1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
        const __m512 y0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        const __m512 y1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        v[c] = _mm512_shuffle_f32x4(x0, y0, 0x88), v[8 + c] = _mm512_shuffle_f32x4(x0, y0, 0xdd);
        v[4 + c] = _mm512_shuffle_f32x4(x1, y1, 0x88), v[12 + c] = _mm512_shuffle_f32x4(x1, y1, 0xdd);
    }
}

/*
 * A 4-bit matrix's gemm panel straight from its blocks, 16 rows x 16 columns at a time:
 * each row's 16 weights by one permute of its block's table (q4_row_to_f32's values),
 * transposed in registers. Converting a panel's rows into scratch and packing them from
 * there took about a quarter of the tiles' time at 128 tokens (Q4_0, Zen 5): every weight
 * written out as 4 bytes and read back once.
 */
AVX512 static void q4_panel(uint32_t type, const qpk_matrix *w, int64_t r, int nr, int64_t k0, int64_t kc,
                            float *packed)
{
    const int64_t group = w->group_size;
    const size_t bb = qpk_type_block_bytes(type, (uint32_t)group), rb = qpk_matrix_row_bytes(w);
    for (int j0 = 0; j0 < PANEL; j0 += 16) {
        const uint8_t *rows = qpk_row_ptr(w, r) + (size_t)j0 * rb;
        const int n = nr - j0; /* rows i >= n are 0 (none of this half when n <= 0) */
        __m512 table[16];
        /* Columns go 16 at a time within a group (a multiple of 32 long): a chunk's low or high nibbles. */
        for (int64_t k = k0; k < k0 + kc; k += 16) {
            const int64_t g = k / group, o = k - g * group;
            if (k == k0 || o == 0)
                for (int i = 0; i < 16; i++)
                    table[i] = i < n ? q4_weights(type, rows + (size_t)i * rb + (size_t)g * bb) : _mm512_setzero_ps();
            const size_t at = (size_t)g * bb + CODES_AT(type) + (size_t)(o / 32) * 16;
            const __m128i shift = _mm_cvtsi32_si128(o & 16 ? 4 : 0);
            __m512 v[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                v[i] = i < n ? _mm512_permutexvar_ps(_mm512_srl_epi32(q4_indices(rows + (size_t)i * rb + at), shift),
                                                     table[i])
                             : _mm512_setzero_ps();
            transpose16(v);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                _mm512_store_ps(packed + (k - k0 + i) * PANEL + j0, v[i]);
        }
    }
}

/* pack_panel 16 x 16 at a time (per weight half the loads and stores, two thirds of the shuffles), AVX2's for the
 * last < 16 columns. */
AVX512 static void pack_panel_512(const float *rows, size_t ld, int nr, int64_t k0, int64_t kc, float *packed)
{
    int64_t k = 0;
    for (; k + 16 <= kc; k += 16)
        for (int j0 = 0; j0 < PANEL; j0 += 16) {
            __m512 v[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                v[i] = j0 + i < nr ? _mm512_loadu_ps(rows + (size_t)(j0 + i) * ld + k0 + k) : _mm512_setzero_ps();
            transpose16(v);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                _mm512_store_ps(packed + (k + i) * PANEL + j0, v[i]);
        }
    if (k < kc)
        pack_panel(rows, ld, nr, k0 + k, kc - k, packed + k * PANEL);
}

AVX512 static void tile_avx512(int mr, const float *x, int64_t ldx, const float *p, int64_t ldp, int64_t kc, float *y,
                               int64_t ldy, int nr, bool first)
{
    switch (mr) {
    case 8: tile32(8, x, ldx, p, ldp, kc, y, ldy, nr, first); break;
    case 7: tile32(7, x, ldx, p, ldp, kc, y, ldy, nr, first); break;
    case 6: tile32(6, x, ldx, p, ldp, kc, y, ldy, nr, first); break;
    case 5: tile32(5, x, ldx, p, ldp, kc, y, ldy, nr, first); break;
    case 4: tile32(4, x, ldx, p, ldp, kc, y, ldy, nr, first); break;
    case 3: tile32(3, x, ldx, p, ldp, kc, y, ldy, nr, first); break;
    case 2: tile32(2, x, ldx, p, ldp, kc, y, ldy, nr, first); break;
    default: tile32(1, x, ldx, p, ldp, kc, y, ldy, nr, first); break;
    }
}

static void gemm_acc_512(const float *x, int64_t ldx, int64_t T, const float *p, int64_t ldp, int64_t K, float *y,
                         int64_t ldy, int64_t J)
{
    gemm_acc_with(tile_avx512, AVX512_MR, x, ldx, T, p, ldp, K, y, ldy, J);
}

static void gemm_512(const qpk_matrix *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, int64_t r0,
                     int64_t r1, float *scratch)
{
    gemm_panels(rows_of(AVX512_TYPES, w), pack_panel_512, tile_avx512, AVX512_MR, w, x, T, ldx, y, ldy, r0, r1,
                scratch);
}

/* gemm_sub_f64 with MR rows by 32 columns (four 8-double vectors): the same chains, the same bits. */
AVX512 static inline __attribute__((always_inline)) void sub_tile32(const int MR, const double *x, int64_t ldx,
                                                                    const double *p, int64_t ldp, int64_t K,
                                                                    double *y, int64_t ldy, int nj)
{
    __m512d c[6][4];
    __mmask8 m[4];
    for (int v = 0; v < 4; v++)
        m[v] = nj >= 8 * (v + 1) ? 0xff : nj <= 8 * v ? 0 : (__mmask8)((1u << (nj - 8 * v)) - 1);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            c[i][v] = _mm512_maskz_loadu_pd(m[v], y + i * ldy + 8 * v);
    for (int64_t k = 0; k < K; k++) {
        __m512d b[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            b[v] = _mm512_maskz_loadu_pd(m[v], p + k * ldp + 8 * v);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m512d a = _mm512_set1_pd(x[i * ldx + k]);
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                c[i][v] = _mm512_fnmadd_pd(a, b[v], c[i][v]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            _mm512_mask_storeu_pd(y + i * ldy + 8 * v, m[v], c[i][v]);
}

AVX512 static void gemm_sub_f64_512(const double *x, int64_t ldx, int64_t T, const double *p, int64_t ldp, int64_t K,
                                    double *y, int64_t ldy, int64_t J)
{
    for (int64_t j = 0; j < J; j += 32) {
        const int nj = J - j < 32 ? (int)(J - j) : 32;
        int64_t t = 0;
        for (; t + 6 <= T; t += 6)
            sub_tile32(6, x + t * ldx, ldx, p + j, ldp, K, y + t * ldy + j, ldy, nj);
        for (; t < T; t++)
            sub_tile32(1, x + t * ldx, ldx, p + j, ldp, K, y + t * ldy + j, ldy, nj);
    }
}

/* The same dots with 4 x 4 tiles: 16 accumulators fit in AVX-512's 32 registers, half a load per FMA. */
AVX512 static void dot_rows_512(const float *x, int64_t ldx, int64_t T, const float *w, int64_t ldw, int64_t S,
                                int64_t n, float *y)
{
    dot_rows_by(4, x, ldx, T, w, ldw, S, n, y);
}

/*
 * Q rows of y (at most 4) x V vectors of 16 elements in registers while every row of x goes
 * by: per row V loads shared by the Q, Q broadcasts, Q V FMAs. The last vector's lanes past
 * the row's end are masked off (tail: its lanes in use).
 */
AVX512 static inline __attribute__((always_inline)) void axpy_tile_512(const int Q, const int V, const float *a,
                                                                      int64_t lda, const float *x, int64_t ldx,
                                                                      int64_t T, float *y, int64_t ldy, __mmask16 tail)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int q = 0; q < Q; q++)
#pragma GCC unroll 4
        for (int v = 0; v < V; v++)
            acc[q][v] = _mm512_maskz_loadu_ps(v == V - 1 ? tail : 0xffff, y + q * ldy + 16 * v);
    for (int64_t t = 0; t < T; t++) {
        __m512 xv[4];
#pragma GCC unroll 4
        for (int v = 0; v < V; v++)
            xv[v] = _mm512_maskz_loadu_ps(v == V - 1 ? tail : 0xffff, x + t * ldx + 16 * v);
#pragma GCC unroll 4
        for (int q = 0; q < Q; q++) {
            const __m512 av = _mm512_set1_ps(a[q * lda + t]);
#pragma GCC unroll 4
            for (int v = 0; v < V; v++)
                acc[q][v] = _mm512_fmadd_ps(av, xv[v], acc[q][v]);
        }
    }
#pragma GCC unroll 4
    for (int q = 0; q < Q; q++)
#pragma GCC unroll 4
        for (int v = 0; v < V; v++)
            _mm512_mask_storeu_ps(y + q * ldy + 16 * v, v == V - 1 ? tail : 0xffff, acc[q][v]);
}

AVX512 static inline __attribute__((always_inline)) void axpy_tiles_512(const int V, const float *a, int64_t lda,
                                                                       int64_t Q, const float *x, int64_t ldx,
                                                                       int64_t T, float *y, int64_t ldy,
                                                                       __mmask16 tail)
{
    int64_t q = 0;
    for (; q + 4 <= Q; q += 4)
        axpy_tile_512(4, V, a + q * lda, lda, x, ldx, T, y + q * ldy, ldy, tail);
    switch (Q - q) {
    case 3: axpy_tile_512(3, V, a + q * lda, lda, x, ldx, T, y + q * ldy, ldy, tail); break;
    case 2: axpy_tile_512(2, V, a + q * lda, lda, x, ldx, T, y + q * ldy, ldy, tail); break;
    case 1: axpy_tile_512(1, V, a + q * lda, lda, x, ldx, T, y + q * ldy, ldy, tail); break;
    default: break;
    }
}

/* 64 elements of 4 rows of y at a time (16 registers), then 16, then the masked tail: each element the AVX2 chain. */
AVX512 static void axpy_rows_512(const float *a, int64_t lda, int64_t Q, const float *x, int64_t ldx, int64_t T,
                                 float *y, int64_t ldy, int64_t n)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        axpy_tiles_512(4, a, lda, Q, x + i, ldx, T, y + i, ldy, 0xffff);
    for (; i < n; i += 16)
        axpy_tiles_512(1, a, lda, Q, x + i, ldx, T, y + i, ldy,
                       n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1));
}

/* exp_shifted, eight values at a time in f64: the same steps, the table by two two-register permutes. */
AVX512 static inline __m256 exp8_libm_bits(__m256 x)
{
    const __m512d xd = _mm512_cvtps_pd(x), shift = _mm512_set1_pd(EXP_SHIFT), n_ln2 = _mm512_set1_pd(EXP_N_LN2);
    const __m512d z = _mm512_fmadd_pd(n_ln2, xd, shift), r = _mm512_fmsub_pd(n_ln2, xd, _mm512_sub_pd(z, shift));
    const __m512i ki = _mm512_castpd_si512(z);
    const __m512i t0 = _mm512_loadu_si512(EXP2_32), t1 = _mm512_loadu_si512(EXP2_32 + 8);
    const __m512i t2 = _mm512_loadu_si512(EXP2_32 + 16), t3 = _mm512_loadu_si512(EXP2_32 + 24);
    const __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)),
                                              _mm512_permutex2var_epi64(t0, ki, t1),
                                              _mm512_permutex2var_epi64(t2, ki, t3));
    const __m512d sc = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47)));
    const __m512d p = _mm512_fmadd_pd(_mm512_set1_pd(EXP_C0), r, _mm512_set1_pd(EXP_C1));
    const __m512d q = _mm512_fmadd_pd(_mm512_set1_pd(EXP_C2), r, _mm512_set1_pd(1.0));
    return _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_fmadd_pd(p, _mm512_mul_pd(r, r), q), sc));
}

AVX512 static void exp_shifted_512(const float *x, int64_t n, float shift, float *out)
{
    const __m512 sh = _mm512_set1_ps(shift);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_sub_ps(_mm512_loadu_ps(x + i), sh);
        const __m512i top = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7ff << 20));
        const __mmask16 slow = _mm512_cmpge_epu32_mask(top, _mm512_set1_epi32(EXP_SLOW_TOP << 20));
        float args[16]; /* rare: expf's own edge cases, from the arguments (out may be x) */
        if (slow)
            _mm512_storeu_ps(args, v);
        _mm256_storeu_ps(out + i, exp8_libm_bits(_mm512_castps512_ps256(v)));
        _mm256_storeu_ps(out + i + 8, exp8_libm_bits(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
        for (int j = 0; slow && j < 16; j++)
            if (slow >> j & 1)
                out[i + j] = expf(args[j]);
    }
    for (; i < n; i++)
        out[i] = expf_libm_bits(x[i] - shift);
}

#define AVX512_TABLE(NAME, GEMV, GEMV4)                                                                          \
    {                                                                                                            \
        NAME, row_to_f32_512, GEMV, gemm_512, dot, axpy_rows_512, sum_exp, argmax, quantize_row, gemm_acc_512,   \
            gemm_sub_f64_512, dot_rows_512, quantize_group_ratios, fake_quantize_row, pack_panel_512,            \
            exp_shifted_512, GEMV4                                                                               \
    }
const qpk_kernels qpk_kernels_avx512_table = AVX512_TABLE("avx512", gemv_512, gemv4_512);
const qpk_kernels qpk_kernels_avx512vbmi_table = AVX512_TABLE("avx512vbmi", gemv_512vbmi, gemv4_512vbmi);
