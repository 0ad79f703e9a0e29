/*
 * The table's dot over many rows at once, for AWQ's clip search, which takes hundreds
 * of thousands of dots per matrix against the same few vectors (compiled with -mavx2
 * -mfma, reached only through the AVX2 and AVX-512 tables). Kept apart from
 * kernels_avx2.c: only the tables there name it.
 *
 * Each dot is kernels_avx2.c's dot, bit for bit: one 8-lane FMA chain over k in order,
 * the same horizontal sum, the tail by scalar FMAs. dot alone waits on its chain's FMA
 * latency; here a tile of 4 rows x 2 vectors keeps 8 chains in flight, each row's loads
 * shared by both vectors.
 */
#include <immintrin.h>

#include "kernels.h"

static inline float hsum8(__m256 v) /* kernels_avx2.c's hsum */
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

/* R rows x S vectors: y[s * T + t] for the tile's (t, s). */
static inline __attribute__((always_inline)) void dot_tile(const int R, const int S, const float *x, int64_t ldx,
                                                           const float *w, int64_t ldw, int64_t n, float *y,
                                                           int64_t T)
{
    __m256 acc[4][2];
    for (int r = 0; r < R; r++)
        for (int s = 0; s < S; s++)
            acc[r][s] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 wv[2];
        for (int s = 0; s < S; s++)
            wv[s] = _mm256_loadu_ps(w + s * ldw + k);
        for (int r = 0; r < R; r++) {
            const __m256 xv = _mm256_loadu_ps(x + r * ldx + k);
            for (int s = 0; s < S; s++)
                acc[r][s] = _mm256_fmadd_ps(xv, wv[s], acc[r][s]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int s = 0; s < S; s++) {
            float v = hsum8(acc[r][s]);
            for (int64_t kk = k; kk < n; kk++)
                v = fma1(x[r * ldx + kk], w[s * ldw + kk], v);
            y[s * T + r] = v;
        }
}

void qpk_dot_rows_avx2(const float *x, int64_t ldx, int64_t T, const float *w, int64_t ldw, int64_t S, int64_t n,
                       float *y)
{
    int64_t s = 0;
    for (; s + 2 <= S; s += 2) {
        int64_t t = 0;
        for (; t + 4 <= T; t += 4)
            dot_tile(4, 2, x + t * ldx, ldx, w + s * ldw, ldw, n, y + s * T + t, T);
        for (; t < T; t++)
            dot_tile(1, 2, x + t * ldx, ldx, w + s * ldw, ldw, n, y + s * T + t, T);
    }
    for (; s < S; s++) {
        int64_t t = 0;
        for (; t + 4 <= T; t += 4)
            dot_tile(4, 1, x + t * ldx, ldx, w + s * ldw, ldw, n, y + s * T + t, T);
        for (; t < T; t++)
            dot_tile(1, 1, x + t * ldx, ldx, w + s * ldw, ldw, n, y + s * T + t, T);
    }
}
