/*
 * ggml's block types (FORMAT.md section 6, after ggml-common.h's structs and
 * ggml-quants.c's dequantize_row_* definitions): the reference dequantization, written
 * from those definitions. Each weight is the f32 value of the same expression, in the
 * same order (products of an f16 scale and small integers are exact; Q6_K's
 * d * scale * q rounds once, as written there), so every reader of a GGUF file that
 * follows ggml gets these bits. One block at a time: each type's functions are its row
 * of QPK_QUANT_TRAITS (traits.h), the row-level entry points below look them up there.
 */
#include <math.h>

#include "ggml_blocks.h"
#include "traits.h"

static inline float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return qpk_f16_to_f32(h);
}

/* Q4_K and Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes. */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63, *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void qpk_q4_1_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_q4_1 B;
    const float d = f16_at(b + offsetof(B, d)), m = f16_at(b + offsetof(B, m));
    const uint8_t *qs = b + offsetof(B, qs);
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(qs[j] & 15) * d + m;
        y[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
}

void qpk_q5_0_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_q5_0 B;
    const float d = f16_at(b + offsetof(B, d));
    const uint8_t *qs = b + offsetof(B, qs);
    uint32_t qh;
    memcpy(&qh, b + offsetof(B, qh), 4);
    for (int j = 0; j < 16; j++) {
        const int x0 = ((qs[j] & 15) | (int)((qh >> j) << 4 & 16)) - 16;
        const int x1 = ((qs[j] >> 4) | (int)((qh >> (j + 12)) & 16)) - 16;
        y[j] = (float)x0 * d, y[j + 16] = (float)x1 * d;
    }
}

void qpk_q5_1_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_q5_1 B;
    const float d = f16_at(b + offsetof(B, d)), m = f16_at(b + offsetof(B, m));
    const uint8_t *qs = b + offsetof(B, qs);
    uint32_t qh;
    memcpy(&qh, b + offsetof(B, qh), 4);
    for (int j = 0; j < 16; j++) {
        const int x0 = (qs[j] & 15) | (int)((qh >> j) << 4 & 16);
        const int x1 = (qs[j] >> 4) | (int)((qh >> (j + 12)) & 16);
        y[j] = (float)x0 * d + m, y[j + 16] = (float)x1 * d + m;
    }
}

/* Q2_K: scales (low nibble scale, high nibble min), then 2-bit codes. */
void qpk_q2_k_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_q2_k B;
    const uint8_t *sc = b + offsetof(B, scales), *q = b + offsetof(B, qs);
    const float d = f16_at(b + offsetof(B, d)), dmin = f16_at(b + offsetof(B, dmin));
    int is = 0;
    for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2)
            for (int half = 0; half < 2; half++, is++) {
                const float dl = d * (float)(sc[is] & 15), ml = dmin * (float)(sc[is] >> 4);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)((q[16 * half + l] >> shift) & 3) - ml;
            }
}

void qpk_q3_k_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_q3_k B;
    const uint8_t *hm = b + offsetof(B, hmask), *q = b + offsetof(B, qs), *packed = b + offsetof(B, scales);
    const float d = f16_at(b + offsetof(B, d));
    /* The 16 scales: low 4 bits from bytes 0..7, high 2 bits from bytes 8..11. */
    int8_t scales[16];
    for (int i = 0; i < 16; i++) {
        const int low = i < 8 ? packed[i] & 15 : packed[i - 8] >> 4;
        const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        scales[i] = (int8_t)((low | high << 4) - 32);
    }
    int is = 0;
    uint8_t m = 1;
    for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2, m <<= 1)
            for (int half = 0; half < 2; half++, is++) {
                const float dl = d * (float)scales[is];
                for (int l = 0; l < 16; l++) {
                    const int i = 16 * half + l;
                    *y++ = dl * (float)((int8_t)((q[i] >> shift) & 3) - ((hm[i] & m) ? 0 : 4));
                }
            }
}

/*
 * Q4_K, and Q5_K: the same head (d, dmin, scales at the same offsets) with qh before qs,
 * whose bits 2j and 2j+1 are bit 4 of sub-blocks 2j and 2j+1 (qh NULL: Q4_K).
 */
_Static_assert(offsetof(qpk_block_q5_k, scales) == offsetof(qpk_block_q4_k, scales), "Q4_K and Q5_K share a head");
static void q4_5_k(const uint8_t *b, const uint8_t *qh, float *y)
{
    typedef qpk_block_q4_k B;
    const float d = f16_at(b + offsetof(B, d)), dmin = f16_at(b + offsetof(B, dmin));
    const uint8_t *q = b + (qh ? offsetof(qpk_block_q5_k, qs) : offsetof(B, qs)), *scales = b + offsetof(B, scales);
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < 8; j += 2, q += 32, u1 <<= 2, u2 <<= 2) {
        int sc, m;
        scale_min_k4(j, scales, &sc, &m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        scale_min_k4(j + 1, scales, &sc, &m);
        const float d2 = d * (float)sc, m2 = dmin * (float)m;
        for (int l = 0; l < 32; l++)
            *y++ = d1 * (float)((q[l] & 15) + (qh && (qh[l] & u1) ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * (float)((q[l] >> 4) + (qh && (qh[l] & u2) ? 16 : 0)) - m2;
    }
}

void qpk_q4_k_to_f32(const uint8_t *b, float *y) { q4_5_k(b, NULL, y); }
void qpk_q5_k_to_f32(const uint8_t *b, float *y) { q4_5_k(b, b + offsetof(qpk_block_q5_k, qh), y); }

void qpk_q6_k_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_q6_k B;
    const uint8_t *ql = b + offsetof(B, ql), *qh = b + offsetof(B, qh);
    const int8_t *sc = (const int8_t *)(b + offsetof(B, scales));
    const float d = f16_at(b + offsetof(B, d));
    for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8, y += 128)
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
            const int q2 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
            const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
            const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
            y[l] = d * (float)sc[is] * (float)q1; /* (d sc) q: two roundings at most, as ggml writes it */
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
}

/* IQ4_NL's codebook (ggml-common.h's kvalues_iq4nl): 16 int8 values, denser near 0 where weights are. */
const int8_t qpk_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* 32 weights of IQ4_NL's nibble layout (byte j: weight j low, weight j+16 high) at scale d; d v exact (11 + 7 bits). */
static void iq4_weights(const uint8_t *qs, float d, float *y)
{
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)qpk_iq4nl_values[qs[j] & 15];
        y[j + 16] = d * (float)qpk_iq4nl_values[qs[j] >> 4];
    }
}

void qpk_iq4_nl_to_f32(const uint8_t *b, float *y)
{
    iq4_weights(b + offsetof(qpk_block_iq4_nl, qs), f16_at(b + offsetof(qpk_block_iq4_nl, d)), y);
}

/* IQ4_XS scale s (0..7) of a block: low nibble from scales_l, high two bits from scales_h; stored + 32. */
static inline int iq4_xs_scale(const uint8_t *b, int s)
{
    const int lo = b[offsetof(qpk_block_iq4_xs, scales_l) + s / 2] >> 4 * (s % 2) & 15;
    return (lo | (qpk_le16(b + offsetof(qpk_block_iq4_xs, scales_h)) >> 2 * s & 3) << 4) - 32;
}

void qpk_iq4_xs_to_f32(const uint8_t *b, float *y)
{
    const float d = f16_at(b + offsetof(qpk_block_iq4_xs, d));
    for (int s = 0; s < 8; s++) /* d (sc - 32) exact (11 + 6 bits), then times v exact */
        iq4_weights(b + offsetof(qpk_block_iq4_xs, qs) + 16 * s, d * (float)iq4_xs_scale(b, s), y + 32 * s);
}

bool qpk_ggml_type(uint32_t type) { return type < QPK_TYPE_COUNT_ && QPK_QUANT_TRAITS[type].to_f32; }

void qpk_ggml_dequantize_row(uint32_t type, const void *in, int64_t n, float *out)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    const size_t bb = qpk_type_block_bytes(type, t->block);
    qpk_block_to_f32_fn *const to_f32 = QPK_QUANT_TRAITS[type].to_f32;
    const uint8_t *b = in;
    for (int64_t i = 0; i < n; i += t->block, b += bb, out += t->block)
        to_f32(b, out);
}

/* ================================================================ quantizers */

/*
 * Quantizing to ggml's block types: each sub-block's scale (and min) is fitted to its
 * weights by weighted least squares over a grid of candidate code assignments (the
 * approach of llama.cpp's make_qkx2/make_qx searches, written here from the idea: our own
 * grid and refit), the sub-scales are quantized against a super-block scale chosen by the
 * same weighted fit, and then each sub-block tries its quantized scale and min one step
 * either way, keeping what decodes closest: the error is measured on the weights as
 * ggml's dequantization will give them. Weights of the error: importance[i] (mean x^2
 * of input column i over calibration data, llama.cpp's imatrix) times sqrt(s^2 + w_i^2),
 * or, without importance, s + |w_i| (s: the super-block's rms weight, doubled).
 */
#define FIT_STEPS 12 /* candidate scales each side of the plain one */

/*
 * The fits are loops over candidates, in f32 and f64, that the vectorizer takes: each block
 * quantizer is built for AVX-512, AVX2 and the baseline, picked when the program loads, with
 * its helpers inlined into each. The bits are the same on all three: each candidate's sums
 * stay one chain in order (no reassociation without -ffast-math), nothing is contracted into
 * an FMA (-ffp-contract=off, set for this file) and the rest is exact (min, max, conversions,
 * IEEE division and square roots).
 */
#ifndef FIT_CLONES /* a build may pin one (e.g. -DFIT_CLONES= for the baseline alone) */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__)
#define FIT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FIT_CLONES
#endif
#endif
#define FIT static inline __attribute__((always_inline))

/* x rounded to the nearest code in [lo, hi], clamped before the conversion: a tiny scale
 * may make x huge or infinite, and 0/0 NaN (which takes lo). */
static inline int code_of(float x, int lo, int hi)
{
    x = x < (float)hi ? x : (float)hi; /* minss, maxss: no branches */
    x = x > (float)lo ? x : (float)lo; /* NaN too */
    /* Ties to even, as nearbyintf in the default mode, without a libm call: adding 1.5 * 2^23
     * leaves no fraction bits (|x| < 2^22 here). */
    return (int)((x + 12582912.0f) - 12582912.0f);
}

/* The weights of the error for the 256 (or 32) weights of a super-block. */
FIT void error_weights(const float *x, int n, const float *imp, float *w)
{
    double s2 = 0;
    for (int i = 0; i < n; i++)
        s2 += (double)x[i] * x[i];
    const float sigma2 = (float)(2 * s2 / n), av = sqrtf(sigma2);
    for (int i = 0; i < n; i++)
        w[i] = imp ? imp[i] * sqrtf(sigma2 + x[i] * x[i]) : av + fabsf(x[i]);
}

/* x rounded to the nearest code in [lo, hi], as a float (the form the candidate loops vectorize). */
static inline float code_f(float x, float lo, float hi)
{
    x = x < hi ? x : hi;
    x = x > lo ? x : lo;
    return (x + 12582912.0f) - 12582912.0f;
}

enum { N_CAND = 2 * FIT_STEPS + 1 };

/*
 * The candidate scales are swept together, weight by weight: each candidate's sums are
 * an independent chain (the loop over candidates vectorizes), where a sweep candidate by
 * candidate would wait on one chain of additions per weight.
 */

/* x ~ a L - m with L in [0, nmax], m >= 0: a (0 for a constant group), *m, L; weighted error in *err. */
FIT float fit_asym(int n, int nmax, const float *x, const float *w, uint8_t *L, float *m, double *err)
{
    float lo = 0, hi = x[0];
    for (int i = 0; i < n; i++)
        lo = x[i] < lo ? x[i] : lo, hi = x[i] > hi ? x[i] : hi;
    *err = 0;
    if (!(hi > lo)) {
        memset(L, 0, (size_t)n);
        *m = -lo;
        return 0;
    }
    float iscale[N_CAND];
    double sl[N_CAND] = {0}, sl2[N_CAND] = {0}, sxl[N_CAND] = {0}, sw = 0, sx = 0, sx2 = 0;
    for (int k = 0; k < N_CAND; k++)
        iscale[k] = ((float)nmax + 0.08f * (float)(k - FIT_STEPS)) / (hi - lo);
    for (int i = 0; i < n; i++) {
        const double wi = w[i], xi = x[i]; /* double: D below is a difference of nearly equal sums */
        const float u = x[i] - lo;
        sw += wi, sx += wi * xi, sx2 += wi * xi * xi;
        for (int k = 0; k < N_CAND; k++) {
            const double l = code_f(iscale[k] * u, 0, (float)nmax);
            sl[k] += wi * l, sl2[k] += wi * l * l, sxl[k] += wi * l * xi;
        }
    }
    float best_a = (hi - lo) / (float)nmax, best_m = -lo, best_is = 1 / best_a;
    double best = INFINITY;
    for (int k = 0; k < N_CAND; k++) {
        const double D = sw * sl2[k] - sl[k] * sl[k];
        if (!(D > 1e-12 * sw * sl2[k])) /* every weight on one code: no line through them (rounding leaves D ~ 0) */
            continue;
        double a = (sw * sxl[k] - sx * sl[k]) / D, b = (sl2[k] * sx - sl[k] * sxl[k]) / D;
        if (b > 0) /* the min is subtracted: x ~ a L - m, m >= 0 */
            b = 0, a = sxl[k] / sl2[k];
        if (!(a > 0))
            continue;
        const double e = sx2 - a * sxl[k] - b * sx; /* the weighted squared error of a least-squares fit */
        if (e < best)
            best = e, best_a = (float)a, best_m = (float)-b, best_is = iscale[k];
    }
    /* The codes of the best candidate (or, when none fitted, of plain min-max). */
    for (int i = 0; i < n; i++)
        L[i] = (uint8_t)code_f(best_is * (x[i] - lo), 0, (float)nmax);
    *m = best_m, *err = best;
    return best_a;
}

/* x ~ a L with L in [-(nmax+1), nmax]: a (signed), L. */
FIT float fit_sym(int n, int nmax, const float *x, const float *w, int8_t *L)
{
    float ext = 0;
    for (int i = 0; i < n; i++)
        ext = fabsf(x[i]) > fabsf(ext) ? x[i] : ext;
    if (ext == 0) {
        memset(L, 0, (size_t)n);
        return 0;
    }
    const float qlo = (float)-(nmax + 1), qhi = (float)nmax;
    float iscale[N_CAND], sl2[N_CAND] = {0}, sxl[N_CAND] = {0};
    for (int k = 0; k < N_CAND; k++)
        iscale[k] = -((float)(nmax + 1) + 0.08f * (float)(k - FIT_STEPS)) / ext;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < N_CAND; k++) {
            const float l = code_f(iscale[k] * x[i], qlo, qhi);
            sl2[k] += w[i] * l * l, sxl[k] += w[i] * l * x[i];
        }
    /* The fit's error is sum w x^2 - sxl^2 / sl2: the largest sxl^2 / sl2 wins. */
    float best_a = ext / qlo, best_is = 1 / best_a;
    double best = -1;
    for (int k = 0; k < N_CAND; k++) {
        if (!(sl2[k] > 0))
            continue;
        const double gain = (double)sxl[k] * sxl[k] / sl2[k];
        if (gain > best)
            best = gain, best_a = sxl[k] / sl2[k], best_is = iscale[k];
    }
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)code_f(best_is * x[i], qlo, qhi);
    return best_a;
}

/*
 * A super-block scale for n non-negative sub-scales v (quantized to [0, qmax]): the f16
 * value among a few candidates around max/qmax, and their weighted least-squares refits,
 * that reproduces v best (weights sw). Returns it; q gets the quantized sub-scales.
 */
FIT float fit_super(int n, int qmax, const float *v, const float *sw, uint8_t *q)
{
    float max = 0;
    for (int i = 0; i < n; i++)
        max = v[i] > max ? v[i] : max;
    if (!(max > 0)) {
        memset(q, 0, (size_t)n);
        return 0;
    }
    float best_d = qpk_f16_to_f32(qpk_f32_to_f16(max / (float)qmax));
    double best = INFINITY;
    for (int k = -4; k <= 8; k++) {
        for (int refit = 0; refit < 2; refit++) {
            float d = max / ((float)qmax + 0.25f * (float)k);
            double sqv = 0, sqq = 0;
            if (refit) { /* least squares on the codes the plain candidate gave */
                for (int i = 0; i < n; i++) {
                    const int l = code_of(v[i] / d, 0, qmax);
                    sqv += sw[i] * l * v[i], sqq += sw[i] * l * l;
                }
                if (!(sqq > 0))
                    continue;
                d = (float)(sqv / sqq);
            }
            d = qpk_f16_to_f32(qpk_f32_to_f16(d)); /* as stored */
            if (!(d > 0) || !isfinite(d))
                continue;
            double e = 0;
            for (int i = 0; i < n; i++) {
                const double r = d * code_of(v[i] / d, 0, qmax) - v[i];
                e += sw[i] * r * r;
            }
            if (e < best)
                best = e, best_d = d;
        }
    }
    if (!(best_d > 0) || !isfinite(best_d)) { /* sub-scales below the smallest f16 step, or past the f16 range */
        memset(q, 0, (size_t)n);
        return best_d > 0 ? best_d : 0; /* an infinite one is refused by the caller */
    }
    for (int i = 0; i < n; i++)
        q[i] = (uint8_t)code_of(v[i] / best_d, 0, qmax);
    return best_d;
}

/*
 * The pair (scale, min) among the 3 x 3 around the quantized one (steps s0 - 1 .. s0 + 1 and
 * m0 - 1 .. m0 + 1 of dd and dm, within [0, 63]) whose 32 weights decode closest, as ggml
 * decodes them (x ~ d L - m): the first of the smallest weighted errors, in that order. The
 * pairs go together, weight by weight, each its own chain of sums (the loop over pairs
 * vectorizes); L gets the winner's codes.
 */
FIT void step_asym(const float *x, const float *w, int nmax, float dd, float dm, uint8_t *s0, uint8_t *m0, uint8_t *L)
{
    enum { PAIRS = 9 };
    float d[PAIRS], m[PAIRS];
    double e[PAIRS] = {0};
    for (int c = 0; c < PAIRS; c++)
        d[c] = dd * (float)(*s0 + c / 3 - 1), m[c] = dm * (float)(*m0 + c % 3 - 1);
    for (int i = 0; i < 32; i++)
        for (int c = 0; c < PAIRS; c++) {
            const float l = d[c] > 0 ? code_f((x[i] + m[c]) / d[c], 0, (float)nmax) : 0;
            const double r = (double)(d[c] * l - m[c]) - x[i];
            e[c] += w[i] * r * r;
        }
    double best = INFINITY;
    int c0 = -1;
    for (int c = 0; c < PAIRS; c++) {
        const int s = *s0 + c / 3 - 1, mq = *m0 + c % 3 - 1;
        if (s >= 0 && s <= 63 && mq >= 0 && mq <= 63 && e[c] < best)
            best = e[c], c0 = c;
    }
    if (c0 < 0) /* no finite error: the codes of the fit stay */
        return;
    for (int i = 0; i < 32; i++)
        L[i] = (uint8_t)(d[c0] > 0 ? code_f((x[i] + m[c0]) / d[c0], 0, (float)nmax) : 0);
    *s0 = (uint8_t)(*s0 + c0 / 3 - 1), *m0 = (uint8_t)(*m0 + c0 % 3 - 1);
}

/* Q4_K (nmax 15) and Q5_K (31): 8 sub-blocks of 32 with 6-bit scales and mins. */
FIT void quantize_kx(int nmax, const float *x, const float *imp, uint8_t *b)
{
    float w[256], scale[8], min[8], sw[8];
    uint8_t L[256], qs[8], qm[8];
    error_weights(x, 256, imp, w);
    for (int j = 0; j < 8; j++) {
        double err;
        scale[j] = fit_asym(32, nmax, x + 32 * j, w + 32 * j, L + 32 * j, &min[j], &err);
        sw[j] = 0;
        for (int i = 0; i < 32; i++)
            sw[j] += w[32 * j + i];
    }
    const float d = fit_super(8, 63, scale, sw, qs), dmin = fit_super(8, 63, min, sw, qm);
    const uint16_t dh = qpk_f32_to_f16(d), mh = qpk_f32_to_f16(dmin);
    const float dd = qpk_f16_to_f32(dh), dm = qpk_f16_to_f32(mh);
    for (int j = 0; j < 8; j++) /* each sub-block: its quantized scale and min, or one step either way */
        step_asym(x + 32 * j, w + 32 * j, nmax, dd, dm, &qs[j], &qm[j], L + 32 * j);
    memcpy(b + offsetof(qpk_block_q4_k, d), &dh, 2), memcpy(b + offsetof(qpk_block_q4_k, dmin), &mh, 2);
    uint8_t *sc = b + offsetof(qpk_block_q4_k, scales);
    memset(sc, 0, QPK_FIELD_SIZE(qpk_block_q4_k, scales));
    for (int j = 0; j < 8; j++) { /* the 6-bit packing scale_min_k4 reads */
        if (j < 4) {
            sc[j] = qs[j], sc[j + 4] = qm[j];
        } else {
            sc[j + 4] = (uint8_t)((qs[j] & 15) | (qm[j] & 15) << 4);
            sc[j - 4] |= (uint8_t)((qs[j] >> 4) << 6);
            sc[j] |= (uint8_t)((qm[j] >> 4) << 6);
        }
    }
    int32_t codes[256];
    for (int i = 0; i < 256; i++)
        codes[i] = L[i];
    (nmax == 15 ? qpk_q4_k_pack : qpk_q5_k_pack)(b, codes);
}

/* Q6_K: 16 sub-blocks of 16, 8-bit scales against one f16, codes in [-32, 31]. */
FIT void quantize_q6k(const float *x, const float *imp, uint8_t *b)
{
    float w[256], scale[16];
    int8_t L[256];
    error_weights(x, 256, imp, w);
    float ext = 0;
    for (int j = 0; j < 16; j++) {
        scale[j] = fit_sym(16, 31, x + 16 * j, w + 16 * j, L + 16 * j);
        ext = fabsf(scale[j]) > fabsf(ext) ? scale[j] : ext;
    }
    int8_t sc[16] = {0};
    float d = 0;
    if (ext != 0) {
        const float iscale = -128.0f / ext;
        d = qpk_f16_to_f32(qpk_f32_to_f16(1 / iscale));
        for (int j = 0; j < 16; j++)
            sc[j] = (int8_t)code_of(scale[j] / d, -128, 127);
    }
    /* Each sub-block's quantized scale, or one step either way, whichever decodes closest (the
     * first of the smallest errors, as ggml decodes the weights: ds * l): the sub-blocks go side
     * by side, x and w transposed, each its own chain of sums (the loop over them vectorizes). */
    float xt[16][16], wt[16][16], e[3][16];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++)
            xt[i][j] = x[16 * j + i], wt[i][j] = w[16 * j + i];
    for (int c = 0; c < 3; c++) {
        float ds[16], inv[16];
        for (int j = 0; j < 16; j++)
            ds[j] = d * (float)(sc[j] + c - 1), inv[j] = ds[j] != 0 ? 1 / ds[j] : 0, e[c][j] = 0;
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                const float r = ds[j] * code_f(xt[i][j] * inv[j], -32, 31) - xt[i][j];
                e[c][j] += wt[i][j] * r * r;
            }
    }
    for (int j = 0; j < 16; j++) {
        float best = INFINITY;
        int bs = 256; /* none: the codes of the fit stay */
        for (int c = 0; c < 3; c++) {
            const int s = sc[j] + c - 1;
            if (s >= -128 && s <= 127 && e[c][j] < best)
                best = e[c][j], bs = s;
        }
        if (bs == 256)
            continue;
        const float ds = d * (float)bs, inv = ds != 0 ? 1 / ds : 0;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)code_f(x[16 * j + i] * inv, -32, 31);
        sc[j] = (int8_t)bs;
    }
    int32_t codes[256];
    for (int i = 0; i < 256; i++)
        codes[i] = L[i];
    qpk_q6_k_pack(b, codes);
    memcpy(b + offsetof(qpk_block_q6_k, scales), sc, sizeof sc);
    const uint16_t dh = qpk_f32_to_f16(d);
    memcpy(b + offsetof(qpk_block_q6_k, d), &dh, 2);
}

/* Q4_1 (nmax 15) and Q5_1 (31): 32 weights, f16 d and m (w = d q + m). */
FIT void quantize_x1(int nmax, const float *x, const float *imp, uint8_t *b)
{
    float w[32], m;
    uint8_t L[32];
    double err;
    error_weights(x, 32, imp, w);
    float d = fit_asym(32, nmax, x, w, L, &m, &err);
    const uint16_t dh = qpk_f32_to_f16(d), mh = qpk_f32_to_f16(-m);
    const float dd = qpk_f16_to_f32(dh), mm = qpk_f16_to_f32(mh);
    for (int i = 0; i < 32; i++) /* codes for the stored d and m */
        L[i] = (uint8_t)(dd > 0 ? code_of((x[i] - mm) / dd, 0, nmax) : 0);
    _Static_assert(offsetof(qpk_block_q5_1, m) == offsetof(qpk_block_q4_1, m), "Q4_1 and Q5_1 share d and m");
    memcpy(b + offsetof(qpk_block_q4_1, d), &dh, 2), memcpy(b + offsetof(qpk_block_q4_1, m), &mh, 2);
    uint8_t *q = b + (nmax == 15 ? offsetof(qpk_block_q4_1, qs) : offsetof(qpk_block_q5_1, qs));
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        q[j] = (uint8_t)((L[j] & 15) | (L[j + 16] & 15) << 4);
        qh |= (uint32_t)(L[j] >> 4) << j | (uint32_t)(L[j + 16] >> 4) << (j + 16);
    }
    if (nmax == 31)
        memcpy(b + offsetof(qpk_block_q5_1, qh), &qh, 4);
}

/* Q5_0: 32 weights, f16 d, codes in [-16, 15]. */
FIT void quantize_q50(const float *x, const float *imp, uint8_t *b)
{
    float w[32];
    int8_t L[32];
    error_weights(x, 32, imp, w);
    float d = 0, ext = 0;
    for (int i = 0; i < 32; i++)
        ext = fabsf(x[i]) > fabsf(ext) ? x[i] : ext;
    double best = INFINITY;
    for (int k = -FIT_STEPS; k <= FIT_STEPS && ext != 0; k++) {
        const float a = qpk_f16_to_f32(qpk_f32_to_f16(ext / -(16.0f + 0.08f * (float)k)));
        if (a == 0)
            continue;
        double e = 0;
        for (int i = 0; i < 32; i++) {
            const int l = code_of(x[i] / a, -16, 15);
            const double r = (double)((float)l * a) - x[i];
            e += w[i] * r * r;
        }
        if (e < best)
            best = e, d = a;
    }
    for (int i = 0; i < 32; i++)
        L[i] = (int8_t)(d != 0 ? code_of(x[i] / d, -16, 15) : 0);
    const uint16_t dh = qpk_f32_to_f16(d);
    memcpy(b + offsetof(qpk_block_q5_0, d), &dh, 2);
    uint8_t *qs = b + offsetof(qpk_block_q5_0, qs);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        const int l0 = L[j] + 16, l1 = L[j + 16] + 16;
        qs[j] = (uint8_t)((l0 & 15) | (l1 & 15) << 4);
        qh |= (uint32_t)(l0 >> 4) << j | (uint32_t)(l1 >> 4) << (j + 16);
    }
    memcpy(b + offsetof(qpk_block_q5_0, qh), &qh, 4);
}

/*
 * IQ4_NL and IQ4_XS: codes index the 16 values v of the codebook (w = a v[q]). The nearest
 * value of t is v[0] plus every step v[i+1] - v[i] whose midpoint t passes: branch-free, so
 * the sweep over candidate scales vectorizes as the linear types' does. A tie takes the
 * lower value.
 */
typedef struct iq4_book {
    float mid[15], step[15];
} iq4_book;

FIT iq4_book iq4_book_of(void)
{
    iq4_book k;
    for (int i = 0; i < 15; i++) {
        const float lo = qpk_iq4nl_values[i], hi = qpk_iq4nl_values[i + 1];
        k.mid[i] = 0.5f * (lo + hi), k.step[i] = hi - lo;
    }
    return k;
}

static inline float iq4_level(const iq4_book *k, float t)
{
    float l = qpk_iq4nl_values[0];
    for (int i = 0; i < 15; i++)
        l += t > k->mid[i] ? k->step[i] : 0;
    return l;
}

static inline int iq4_index(const iq4_book *k, float t)
{
    int q = 0;
    for (int i = 0; i < 15; i++)
        q += t > k->mid[i];
    return q;
}

enum { IQ4_STEPS = 7, IQ4_CAND = 2 * (2 * IQ4_STEPS + 1) };

/*
 * The scale a of n weights on the codebook (x ~ a v[L]): the extreme weight mapped near either
 * end of the codebook (which is not symmetric: a's sign picks the end), nudged a step at a time,
 * each candidate's codes refitted by weighted least squares; the best fit's a. 0 for zeros.
 */
FIT float fit_iq4(const iq4_book *k, int n, const float *x, const float *w)
{
    float ext = 0;
    for (int i = 0; i < n; i++)
        ext = fabsf(x[i]) > fabsf(ext) ? x[i] : ext;
    if (ext == 0)
        return 0;
    float iscale[IQ4_CAND], sl2[IQ4_CAND] = {0}, sxl[IQ4_CAND] = {0};
    for (int c = 0; c <= 2 * IQ4_STEPS; c++) {
        iscale[c] = ((float)qpk_iq4nl_values[0] + (float)(c - IQ4_STEPS)) / ext;
        iscale[c + 2 * IQ4_STEPS + 1] = ((float)qpk_iq4nl_values[15] + (float)(c - IQ4_STEPS)) / ext;
    }
    for (int i = 0; i < n; i++)
        for (int c = 0; c < IQ4_CAND; c++) {
            const float l = iq4_level(k, iscale[c] * x[i]);
            sl2[c] += w[i] * l * l, sxl[c] += w[i] * l * x[i];
        }
    float best_a = ext / qpk_iq4nl_values[0];
    double best = -1; /* the fit's error is sum w x^2 - sxl^2 / sl2: the largest sxl^2 / sl2 wins */
    for (int c = 0; c < IQ4_CAND; c++)
        if (sl2[c] > 0 && (double)sxl[c] * sxl[c] / sl2[c] > best)
            best = (double)sxl[c] * sxl[c] / sl2[c], best_a = sxl[c] / sl2[c];
    return best_a;
}

/* Codes of 32 weights at the decoded scale a, and their weighted error. */
FIT double codes_iq4(const iq4_book *k, const float *x, const float *w, float a, int32_t *L)
{
    const float inv = a != 0 ? 1 / a : 0;
    double e = 0;
    for (int i = 0; i < 32; i++) {
        L[i] = iq4_index(k, x[i] * inv);
        const double r = (double)(a * (float)qpk_iq4nl_values[L[i]]) - x[i]; /* as ggml decodes it */
        e += w[i] * r * r;
    }
    return e;
}

FIT void iq4_nl_quantize(const float *x, const float *imp, uint8_t *b)
{
    const iq4_book k = iq4_book_of();
    float w[32];
    int32_t L[32];
    error_weights(x, 32, imp, w);
    const uint16_t dh = qpk_f32_to_f16(fit_iq4(&k, 32, x, w));
    codes_iq4(&k, x, w, qpk_f16_to_f32(dh), L); /* codes for the stored d */
    memcpy(b + offsetof(qpk_block_iq4_nl, d), &dh, 2);
    qpk_iq4_nl_pack(b, L);
}

/* IQ4_XS: 8 sub-blocks of 32, each scale a 6-bit signed multiple (-32..31) of one f16 d. */
FIT void iq4_xs_quantize(const float *x, const float *imp, uint8_t *b)
{
    const iq4_book k = iq4_book_of();
    float w[256], scale[8], ext = 0;
    int32_t L[256], Lt[32];
    error_weights(x, 256, imp, w);
    for (int j = 0; j < 8; j++) {
        scale[j] = fit_iq4(&k, 32, x + 32 * j, w + 32 * j);
        ext = fabsf(scale[j]) > fabsf(ext) ? scale[j] : ext;
    }
    /* The extreme sub-scale on -32, the one end the 6 bits reach in both signs' magnitude. */
    const uint16_t dh = qpk_f32_to_f16(ext / -32.0f);
    const float d = qpk_f16_to_f32(dh);
    uint16_t scales_h = 0;
    uint8_t *scales_l = b + offsetof(qpk_block_iq4_xs, scales_l);
    memset(scales_l, 0, QPK_FIELD_SIZE(qpk_block_iq4_xs, scales_l));
    for (int j = 0; j < 8; j++) { /* the quantized sub-scale, or one step either way, whichever decodes closest */
        const int l0 = d != 0 ? code_of(scale[j] / d, -32, 31) : 0;
        double best = INFINITY;
        int bl = l0;
        for (int l = l0 - 1; l <= l0 + 1; l++) {
            if (l < -32 || l > 31)
                continue;
            const double e = codes_iq4(&k, x + 32 * j, w + 32 * j, d * (float)l, Lt);
            if (e < best)
                best = e, bl = l, memcpy(L + 32 * j, Lt, sizeof Lt);
        }
        scales_l[j / 2] |= (uint8_t)(((bl + 32) & 15) << 4 * (j % 2));
        scales_h |= (uint16_t)(((bl + 32) >> 4) << 2 * j);
    }
    memcpy(b + offsetof(qpk_block_iq4_xs, d), &dh, 2);
    memcpy(b + offsetof(qpk_block_iq4_xs, scales_h), &scales_h, 2);
    qpk_iq4_xs_pack(b, L);
}

/* Each type's quantizer behind the name traits.h declares: the clones stay local to this file. */
#define QUANTIZER(t, call)                                                                                       \
    FIT_CLONES static void t##_fit(const float *x, const float *imp, uint8_t *b) { call; }                      \
    void qpk_##t##_quantize(const float *x, const float *imp, uint8_t *b) { t##_fit(x, imp, b); }
QUANTIZER(q4_1, quantize_x1(15, x, imp, b))
QUANTIZER(q5_0, quantize_q50(x, imp, b))
QUANTIZER(q5_1, quantize_x1(31, x, imp, b))
QUANTIZER(q4_k, quantize_kx(15, x, imp, b))
QUANTIZER(q5_k, quantize_kx(31, x, imp, b))
QUANTIZER(q6_k, quantize_q6k(x, imp, b))
QUANTIZER(iq4_nl, iq4_nl_quantize(x, imp, b))
QUANTIZER(iq4_xs, iq4_xs_quantize(x, imp, b))

bool qpk_ggml_can_quantize(uint32_t type) { return type < QPK_TYPE_COUNT_ && QPK_QUANT_TRAITS[type].quantize; }

static float max_abs(const float *x, int64_t n)
{
    float m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    return m;
}

qpk_status qpk_ggml_quantize_row(uint32_t type, const float *x, int64_t n, const float *imp, void *out, qpk_err *e)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    if (!qpk_ggml_can_quantize(type))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "qpk does not quantize to %s (it reads it)", t ? t->name : "?");
    if (n % t->block)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a row of %lld is not whole %s blocks of %u", (long long)n, t->name,
                            t->block);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return qpk_err_setf(e, QPK_E_VALUE, "weight %lld is %g", (long long)i, (double)x[i]);
    const size_t bb = qpk_type_block_bytes(type, t->block);
    qpk_block_quantize_fn *const quantize = QPK_QUANT_TRAITS[type].quantize;
    uint8_t *b = out;
    for (int64_t i = 0; i < n; i += t->block, b += bb) {
        const float *xi = x + i, *wi = imp ? imp + i : NULL;
        quantize(xi, wi, b);
        if (qpk_first_bad_scale(type, t->block, b, 1) == 0)
            return qpk_err_setf(e, QPK_E_VALUE, "weights %lld..%lld (up to %g) need a scale past the f16 range of %s",
                                (long long)i, (long long)(i + t->block - 1), (double)max_abs(xi, t->block), t->name);
    }
    return QPK_OK;
}

/* ============================================================ block grids */

/* Q4_1, and Q5_1 (d and m where Q4_1 has them): w = d q + m, written a q - (-m). */
int qpk_q4_1_scales(const uint8_t *b, float *a, float *m)
{
    a[0] = f16_at(b + offsetof(qpk_block_q4_1, d)), m[0] = -f16_at(b + offsetof(qpk_block_q4_1, m));
    return 32;
}

int qpk_q5_0_scales(const uint8_t *b, float *a, float *m)
{
    a[0] = f16_at(b + offsetof(qpk_block_q5_0, d)), m[0] = 0;
    return 32;
}

/* Q4_K, and Q5_K (the same head). */
int qpk_q4_k_scales(const uint8_t *b, float *a, float *m)
{
    const float d = f16_at(b + offsetof(qpk_block_q4_k, d)), dmin = f16_at(b + offsetof(qpk_block_q4_k, dmin));
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        scale_min_k4(j, b + offsetof(qpk_block_q4_k, scales), &sc, &mn);
        a[j] = d * (float)sc, m[j] = dmin * (float)mn;
    }
    return 32;
}

int qpk_q6_k_scales(const uint8_t *b, float *a, float *m)
{
    const float d = f16_at(b + offsetof(qpk_block_q6_k, d));
    const int8_t *sc = (const int8_t *)(b + offsetof(qpk_block_q6_k, scales));
    for (int j = 0; j < 16; j++)
        a[j] = d * (float)sc[j], m[j] = 0;
    return 16;
}

int qpk_iq4_nl_scales(const uint8_t *b, float *a, float *m)
{
    a[0] = f16_at(b + offsetof(qpk_block_iq4_nl, d)), m[0] = 0;
    return 32;
}

int qpk_iq4_xs_scales(const uint8_t *b, float *a, float *m)
{
    const float d = f16_at(b + offsetof(qpk_block_iq4_xs, d));
    for (int j = 0; j < 8; j++)
        a[j] = d * (float)iq4_xs_scale(b, j), m[j] = 0;
    return 32;
}

int qpk_ggml_grid(uint32_t type, const uint8_t *b, float *a, float *m, int *qmin, int *qmax)
{
    const qpk_quant_traits *t = &QPK_QUANT_TRAITS[type];
    *qmin = t->grid.qmin, *qmax = t->grid.qmax;
    return t->scales(b, a, m);
}

void qpk_q4_k_pack(uint8_t *b, const int32_t *q)
{
    uint8_t *qs = b + offsetof(qpk_block_q4_k, qs);
    for (int j = 0; j < 256; j += 64)
        for (int l = 0; l < 32; l++)
            qs[j / 2 + l] = (uint8_t)(q[j + l] | q[j + l + 32] << 4);
}

void qpk_q5_k_pack(uint8_t *b, const int32_t *q)
{
    uint8_t *qh = b + offsetof(qpk_block_q5_k, qh), *qs = b + offsetof(qpk_block_q5_k, qs);
    memset(qh, 0, QPK_FIELD_SIZE(qpk_block_q5_k, qh));
    uint8_t m1 = 1, m2 = 2;
    for (int j = 0; j < 256; j += 64, qs += 32, m1 <<= 2, m2 <<= 2)
        for (int l = 0; l < 32; l++) {
            qs[l] = (uint8_t)((q[j + l] & 15) | (q[j + l + 32] & 15) << 4);
            qh[l] |= (uint8_t)((q[j + l] > 15 ? m1 : 0) | (q[j + l + 32] > 15 ? m2 : 0));
        }
}

void qpk_q6_k_pack(uint8_t *b, const int32_t *q)
{
    uint8_t *ql = b + offsetof(qpk_block_q6_k, ql), *qh = b + offsetof(qpk_block_q6_k, qh);
    memset(qh, 0, QPK_FIELD_SIZE(qpk_block_q6_k, qh));
    for (int n = 0; n < 256; n += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            const int q1 = q[n + l] + 32, q2 = q[n + l + 32] + 32, q3 = q[n + l + 64] + 32, q4 = q[n + l + 96] + 32;
            ql[l] = (uint8_t)((q1 & 15) | (q3 & 15) << 4);
            ql[l + 32] = (uint8_t)((q2 & 15) | (q4 & 15) << 4);
            qh[l] = (uint8_t)((q1 >> 4) | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6);
        }
}

/* Q4_1, Q5_0, Q5_1: 32 nibbles at byte qs, and (qh_at != SIZE_MAX) their bits 4 in the u32 at byte qh_at. */
static void pack_32(uint8_t *b, const int32_t *q, int bias, size_t qs, size_t qh_at)
{
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        const int l0 = q[j] + bias, l1 = q[j + 16] + bias;
        b[qs + (size_t)j] = (uint8_t)((l0 & 15) | (l1 & 15) << 4);
        qh |= (uint32_t)(l0 >> 4) << j | (uint32_t)(l1 >> 4) << (j + 16);
    }
    if (qh_at != SIZE_MAX)
        memcpy(b + qh_at, &qh, 4);
}

void qpk_q4_1_pack(uint8_t *b, const int32_t *q) { pack_32(b, q, 0, offsetof(qpk_block_q4_1, qs), SIZE_MAX); }
void qpk_q5_0_pack(uint8_t *b, const int32_t *q)
{
    pack_32(b, q, 16, offsetof(qpk_block_q5_0, qs), offsetof(qpk_block_q5_0, qh));
}
void qpk_q5_1_pack(uint8_t *b, const int32_t *q)
{
    pack_32(b, q, 0, offsetof(qpk_block_q5_1, qs), offsetof(qpk_block_q5_1, qh));
}

/* IQ4_NL, and each sub-block of IQ4_XS: byte j holds code j (low) and code j + 16 (high). */
static void pack_iq4_codes(uint8_t *qs, const int32_t *q, int n)
{
    for (int s = 0; s < n; s += 32, qs += 16, q += 32)
        for (int j = 0; j < 16; j++)
            qs[j] = (uint8_t)(q[j] | q[j + 16] << 4);
}

void qpk_iq4_nl_pack(uint8_t *b, const int32_t *q) { pack_iq4_codes(b + offsetof(qpk_block_iq4_nl, qs), q, 32); }
void qpk_iq4_xs_pack(uint8_t *b, const int32_t *q) { pack_iq4_codes(b + offsetof(qpk_block_iq4_xs, qs), q, 256); }

float qpk_ggml_code_value(uint32_t type, int q)
{
    const qpk_grid *g = &QPK_QUANT_TRAITS[type].grid;
    return g->values ? (float)g->values[q - g->qmin] : (float)q;
}

int qpk_ggml_code(uint32_t type, float a, float m, float x, float *w)
{
    const qpk_grid *g = &QPK_QUANT_TRAITS[type].grid;
    const float t = a != 0 ? (x + m) / a : 0;
    int q;
    if (g->values) { /* IQ4's codebook, the only one qpk writes: its quantizers' rule */
        const iq4_book k = iq4_book_of();
        q = iq4_index(&k, t);
    } else {
        q = a != 0 ? code_of(t, g->qmin, g->qmax) : 0;
    }
    *w = a * qpk_ggml_code_value(type, q) - m;
    return q;
}

void qpk_ggml_pack_codes(uint32_t type, uint8_t *b, const int32_t *q) { QPK_QUANT_TRAITS[type].pack(b, q); }
