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
void qpk_row_to_f32(uint32_t src_type, const void *src, float *dst, size_t n);

/*
 * dst[i] = src[i] rounded to dst_type (F32, F16 or BF16), ties to even.
 * Returns n on success, else the index of the first element that is not finite
 * or that overflows the destination type (the output is then incomplete).
 */
size_t qpk_row_from_f32(uint32_t dst_type, const float *src, void *dst, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* QPK_QUANT_H */
