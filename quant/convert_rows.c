/*
 * Row conversions between the plain float types. Sources may sit at any byte offset
 * (safetensors does not align its data), so elements are read and written through
 * memcpy, which compilers turn into plain unaligned loads.
 */
#include <math.h>

#include "qpk/quant.h"

static inline uint16_t get16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

void qpk_row_to_f32(uint32_t src_type, const void *src, float *dst, size_t n)
{
    const uint8_t *p = src;
    switch (src_type) {
    case QPK_TYPE_F32: memcpy(dst, src, n * sizeof *dst); break;
    case QPK_TYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = qpk_f16_to_f32(get16(p + 2 * i));
        break;
    case QPK_TYPE_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = qpk_bf16_to_f32(get16(p + 2 * i));
        break;
    default: break;
    }
}

size_t qpk_row_from_f32(uint32_t dst_type, const float *src, void *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(src[i]))
            return i;
    switch (dst_type) {
    case QPK_TYPE_F32: memcpy(dst, src, n * sizeof *src); break;
    case QPK_TYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = qpk_f32_to_f16(src[i]);
            if ((h & 0x7c00u) == 0x7c00u)
                return i;
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
        break;
    case QPK_TYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = qpk_f32_to_bf16(src[i]);
            if ((h & 0x7f80u) == 0x7f80u)
                return i;
            memcpy((uint8_t *)dst + 2 * i, &h, 2);
        }
        break;
    default: return 0;
    }
    return n;
}

size_t qpk_first_nonfinite(uint32_t type, const void *src, size_t n)
{
    const uint8_t *p = src;
    uint32_t x;
    /* By the bits: an exponent of all ones is an infinity or a NaN, in each format. */
    switch (type) {
    case QPK_TYPE_F32:
        for (size_t i = 0; i < n; i++)
            if (memcpy(&x, p + 4 * i, 4), (x & 0x7f800000u) == 0x7f800000u)
                return i;
        return n;
    case QPK_TYPE_F16:
        for (size_t i = 0; i < n; i++)
            if ((get16(p + 2 * i) & 0x7c00u) == 0x7c00u)
                return i;
        return n;
    case QPK_TYPE_BF16:
        for (size_t i = 0; i < n; i++)
            if ((get16(p + 2 * i) & 0x7f80u) == 0x7f80u)
                return i;
        return n;
    default: return n;
    }
}
