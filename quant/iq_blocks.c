/*
 * ggml's lower i-quants and ternary types, read only (FORMAT.md section 6): the reference
 * dequantization of one block, written from the layouts there. Each group of 8 weights
 * (4 for the IQ3 types' entries) is an entry of a codebook (iq_grids.h) times a scale,
 * some of them negated. Every product is exact in f32 (an f16 scale, a sub-scale of at
 * most 5 bits, a codebook value of at most 6), so the order of the multiplications
 * cannot change a bit; a sum (IQ1's shift) is of two values exact on their own.
 */
#include "ggml_blocks.h"
#include "iq_grids.h"
#include "traits.h"

#define SUB 32 /* weights per sub-block */

static inline float f16_at(const uint8_t *p) { return qpk_f16_to_f32(qpk_le16(p)); }

static inline uint32_t le32_at(const uint8_t *p) { return (uint32_t)qpk_le16(p) | (uint32_t)qpk_le16(p + 2) << 16; }

/* 8 weights: scale times entry e of grid g (two entries of 4 when g's are 4 wide), negated where signs has a bit. */
static inline void signed_entry(qpk_iq_grid_id g, const uint32_t e[2], unsigned signs, float scale, float *y)
{
    const qpk_iq_grid *grid = &QPK_IQ_GRIDS[g];
    int8_t v[8];
    qpk_iq_grid_entry(grid, e[0], v);
    if (grid->width == 4)
        qpk_iq_grid_entry(grid, e[1], v + 4);
    for (int j = 0; j < 8; j++)
        y[j] = scale * (float)v[j] * (signs >> j & 1 ? -1.0f : 1.0f);
}

/* An IQ2/IQ3 4-bit sub-scale s as a factor: d (s + 1/2) / 4 (IQ2) or / 2 (IQ3_XXS), exact. */
static inline float half_step(float d, unsigned s, float by) { return d * (0.5f + (float)s) * by; }

void qpk_iq2_xxs_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_iq2_xxs B;
    const float d = f16_at(b + offsetof(B, d));
    for (int s = 0; s < 8; s++, y += SUB) {
        const uint8_t *q = b + offsetof(B, qs) + 8 * s;
        const uint32_t aux = le32_at(q + 4); /* 4 sign sets of 7 bits, the scale in the top 4 */
        const float db = half_step(d, aux >> 28, 0.25f);
        for (int l = 0; l < 4; l++)
            signed_entry(QPK_IQ2XXS_GRID, (uint32_t[2]){q[l], 0}, qpk_iq_signs(aux >> 7 * l & 127), db, y + 8 * l);
    }
}

void qpk_iq2_xs_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_iq2_xs B;
    const float d = f16_at(b + offsetof(B, d));
    for (int s = 0; s < 8; s++, y += SUB) {
        const unsigned sc = b[offsetof(B, scales) + s];
        for (int l = 0; l < 4; l++) {
            const unsigned q = qpk_le16(b + offsetof(B, qs) + 2 * (4 * s + l));
            const float db = half_step(d, l < 2 ? sc & 15 : sc >> 4, 0.25f);
            signed_entry(QPK_IQ2XS_GRID, (uint32_t[2]){q & 511, 0}, qpk_iq_signs(q >> 9), db, y + 8 * l);
        }
    }
}

void qpk_iq2_s_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_iq2_s B;
    const float d = f16_at(b + offsetof(B, d));
    const uint8_t *qs = b + offsetof(B, qs), *signs = qs + 32;
    for (int s = 0; s < 8; s++, y += SUB) {
        const unsigned sc = b[offsetof(B, scales) + s], qh = b[offsetof(B, qh) + s];
        for (int l = 0; l < 4; l++) {
            const uint32_t e = qs[4 * s + l] | (qh >> 2 * l & 3) << 8;
            const float db = half_step(d, l < 2 ? sc & 15 : sc >> 4, 0.25f);
            signed_entry(QPK_IQ2S_GRID, (uint32_t[2]){e, 0}, signs[4 * s + l], db, y + 8 * l);
        }
    }
}

void qpk_iq3_xxs_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_iq3_xxs B;
    const float d = f16_at(b + offsetof(B, d));
    const uint8_t *qs = b + offsetof(B, qs);
    for (int s = 0; s < 8; s++, y += SUB) {
        const uint32_t aux = le32_at(qs + 64 + 4 * s); /* as IQ2_XXS's */
        const float db = half_step(d, aux >> 28, 0.5f);
        for (int l = 0; l < 4; l++) {
            const uint8_t *q = qs + 8 * s + 2 * l;
            signed_entry(QPK_IQ3XXS_GRID, (uint32_t[2]){q[0], q[1]}, qpk_iq_signs(aux >> 7 * l & 127), db, y + 8 * l);
        }
    }
}

void qpk_iq3_s_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_iq3_s B;
    const float d = f16_at(b + offsetof(B, d));
    for (int s = 0; s < 8; s++, y += SUB) {
        const unsigned sc = b[offsetof(B, scales) + s / 2] >> 4 * (s % 2) & 15, qh = b[offsetof(B, qh) + s];
        const float db = d * (float)(1 + 2 * sc);
        for (int l = 0; l < 4; l++) {
            const uint8_t *q = b + offsetof(B, qs) + 8 * s + 2 * l;
            const uint32_t e[2] = {q[0] | (qh >> 2 * l & 1) << 8, q[1] | (qh >> (2 * l + 1) & 1) << 8};
            signed_entry(QPK_IQ3S_GRID, e, b[offsetof(B, signs) + 4 * s + l], db, y + 8 * l);
        }
    }
}

/* 8 IQ1 weights: dl (v + delta) for the values v of entry e, delta = +-1/8 (exact sums, exact products). */
static inline void shifted_entry(uint32_t e, bool negative, float dl, float *y)
{
    int8_t v[8];
    qpk_iq_grid_entry(&QPK_IQ_GRIDS[QPK_IQ1S_GRID], e, v);
    const float delta = negative ? -0.125f : 0.125f;
    for (int j = 0; j < 8; j++)
        y[j] = dl * ((float)v[j] + delta);
}

void qpk_iq1_s_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_iq1_s B;
    const float d = f16_at(b + offsetof(B, d));
    for (int s = 0; s < 8; s++, y += SUB) {
        const unsigned qh = qpk_le16(b + offsetof(B, qh) + 2 * s);
        const float dl = d * (float)(2 * (qh >> 12 & 7) + 1);
        for (int l = 0; l < 4; l++)
            shifted_entry(b[offsetof(B, qs) + 4 * s + l] | (qh >> 3 * l & 7) << 8, qh >> 15, dl, y + 8 * l);
    }
}

void qpk_iq1_m_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_iq1_m B;
    const uint8_t *scales = b + offsetof(B, scales);
    const float d = qpk_f16_to_f32(qpk_iq1_m_scale(scales));
    for (int s = 0; s < 8; s++, y += SUB) {
        const unsigned sc = qpk_le16(scales + 2 * (s / 2)) >> 6 * (s % 2); /* two 3-bit scales, one per 16 */
        for (int l = 0; l < 4; l++) {
            const unsigned h = b[offsetof(B, qh) + 2 * s + l / 2] >> 4 * (l % 2); /* 3 index bits, the sign */
            const float dl = d * (float)(2 * (sc >> 3 * (l / 2) & 7) + 1);
            shifted_entry(b[offsetof(B, qs) + 4 * s + l] | (h & 7) << 8, h >> 3 & 1, dl, y + 8 * l);
        }
    }
}

/* Trit n (0..4) of a byte holding 5 as a base-3 fraction of 256: the integer part of 3 (byte 3^n mod 256) / 256. */
static inline int trit(uint8_t byte, int n)
{
    static const uint8_t POW3[5] = {1, 3, 9, 27, 81};
    return (uint8_t)(byte * POW3[n]) * 3 >> 8;
}

/* The trits of count bytes, trit n of every byte before trit n + 1 of any. */
static inline float *trits(const uint8_t *q, int count, int n_trits, float d, float *y)
{
    for (int n = 0; n < n_trits; n++)
        for (int m = 0; m < count; m++)
            *y++ = (float)(trit(q[m], n) - 1) * d;
    return y;
}

void qpk_tq1_0_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_tq1_0 B;
    const float d = f16_at(b + offsetof(B, d));
    const uint8_t *qs = b + offsetof(B, qs);
    y = trits(qs, 32, 5, d, y);      /* weights 0..159 */
    y = trits(qs + 32, 16, 5, d, y); /* 160..239 */
    trits(b + offsetof(B, qh), 4, 4, d, y);
}

void qpk_tq2_0_to_f32(const uint8_t *b, float *y)
{
    typedef qpk_block_tq2_0 B;
    const float d = f16_at(b + offsetof(B, d));
    for (int half = 0; half < 2; half++) /* 32 bytes, 4 codes each: code l of every byte before code l + 1 */
        for (int l = 0; l < 4; l++)
            for (int m = 0; m < 32; m++)
                *y++ = (float)((b[offsetof(B, qs) + 32 * half + m] >> 2 * l & 3) - 1) * d;
}
