/*
 * Group quantization: the reference (scalar) quantizers and dequantizer. Kernels
 * elsewhere must decode exactly what qpk_dequantize_row decodes.
 */
#include <math.h>

#include "ggml_blocks.h"
#include "traits.h"
#include "qpk/quant.h"

static inline void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline uint16_t get16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* The smallest f16 >= x (x >= 0, finite); 0x7c00 (inf) when x is past 65504. */
static uint16_t f16_round_up(float x)
{
    uint16_t h = qpk_f32_to_f16(x);
    if ((h & 0x7c00u) != 0x7c00u && qpk_f16_to_f32(h) < x)
        h++; /* positive f16s order like their bit patterns */
    return h;
}

/* An affine type's half (bf16 or f16): to and from f32, and the neighbour of a finite h toward +inf (up) or -inf. */
static float half_to_f32(uint32_t type, uint16_t h)
{
    return qpk_type_info_of(type)->scale_bf16 ? qpk_bf16_to_f32(h) : qpk_f16_to_f32(h);
}

static uint16_t half_from_f32(uint32_t type, float x)
{
    return qpk_type_info_of(type)->scale_bf16 ? qpk_f32_to_bf16(x) : qpk_f32_to_f16(x);
}

static uint16_t half_step(uint16_t h, bool up)
{
    if ((h & 0x7fffu) == 0) /* either zero: the smallest subnormal of the direction's sign */
        return up ? 1 : 0x8001u;
    return (h & 0x8000u) == (up ? 0 : 0x8000u) ? (uint16_t)(h + 1) : (uint16_t)(h - 1); /* magnitudes order as bits */
}

/* The half nearest x on the side asked for (up: >= x, else <= x); false past the half's range. */
static bool half_bound(uint32_t type, float x, bool up, float *out)
{
    uint16_t h = half_from_f32(type, x);
    float v = half_to_f32(type, h);
    if (up ? v < x : v > x)
        v = half_to_f32(type, h = half_step(h, up));
    *out = v;
    return isfinite(v);
}

static const qpk_grid *grid_of(uint32_t type)
{
    return type < QPK_TYPE_COUNT_ && QPK_QUANT_TRAITS[type].grid.rule ? &QPK_QUANT_TRAITS[type].grid : NULL;
}

bool qpk_type_has_grid(uint32_t type) { return grid_of(type) != NULL; }

void qpk_type_code_range(uint32_t type, int32_t *qmin, int32_t *qmax)
{
    const int32_t bits = (int32_t)qpk_type_info_of(type)->bits;
    *qmin = grid_of(type)->qmin < 0 ? -(1 << (bits - 1)) : 0;
    *qmax = *qmin + (1 << bits) - 1;
}

bool qpk_type_can_quantize(uint32_t type) { return grid_of(type) != NULL || qpk_ggml_can_quantize(type); }

qpk_status qpk_group_params(uint32_t type, const float *x, int64_t n, float clip, qpk_qparams *p, qpk_err *e)
{
    if (!grid_of(type))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "type %s has no group quantizer", qpk_type_name(type));
    /* 0 is always in the range of a zero-point or symmetric grid (an all-zero or constant group needs it); an affine
     * grid's offset places it anywhere. */
    const bool affine = grid_of(type)->rule == QPK_RULE_AFFINE;
    float lo = affine && n ? INFINITY : 0, hi = affine && n ? -INFINITY : 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return qpk_err_setf(e, QPK_E_VALUE, "weight %lld of a group is %g", (long long)i, (double)x[i]);
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    return qpk_params_from_range(type, lo, hi, clip, p, e);
}

qpk_status qpk_params_from_range(uint32_t type, float lo, float hi, float clip, qpk_qparams *p, qpk_err *e)
{
    const qpk_grid *gr = grid_of(type);
    lo *= clip, hi *= clip;
    float ideal;
    p->z = 0, p->m = 0;
    if (gr->rule == QPK_RULE_AFFINE) {
        if (lo == hi) { /* a constant group: every code 0, the offset the value itself where the half holds it */
            p->d = 0;
            if (!half_bound(type, lo, false, &p->m))
                return qpk_err_setf(e, QPK_E_VALUE, "a group's weight %g is past the %s range", (double)lo,
                                    qpk_type_name(type));
            return QPK_OK;
        }
        bool ok;
        if (lo < 0 && hi > 0) { /* zero on a code, as int4's zero point puts it: weights near 0 stay near 0 */
            const float d0 = (hi - lo) / (float)gr->qmax, z = fminf(fmaxf(nearbyintf(-lo / d0), 0), (float)gr->qmax);
            ok = half_bound(type, fmaxf(z > 0 ? -lo / z : 0, z < (float)gr->qmax ? hi / ((float)gr->qmax - z) : 0),
                            true, &p->d);
            p->m = half_to_f32(type, half_from_f32(type, -p->d * z)); /* 0 is then within a half's rounding of a code */
            ok = ok && isfinite(p->m);
        } else { /* one sign: the whole grid spans the weights */
            ok = half_bound(type, lo, false, &p->m) && half_bound(type, (hi - p->m) / (float)gr->qmax, true, &p->d);
        }
        if (!ok)
            return qpk_err_setf(e, QPK_E_VALUE, "a group's range %g .. %g is past the range of %s's scales",
                                (double)lo, (double)hi, qpk_type_name(type));
        return QPK_OK;
    }
    switch (gr->rule) {
    case QPK_RULE_ABSMAX: ideal = fmaxf(-lo, hi) / (float)gr->qmax; break;
    case QPK_RULE_SIGNED_EXTREME: ideal = (-lo > hi ? lo : hi) / (float)gr->qmin; break; /* d may be negative */
    default: {
        float d0 = (hi - lo) / (float)gr->qmax, z = d0 > 0 ? nearbyintf(-lo / d0) : 0;
        p->z = (int32_t)(z < (float)gr->qmin ? (float)gr->qmin : z > (float)gr->qmax ? (float)gr->qmax : z);
        ideal = fmaxf(p->z ? -lo / (float)p->z : 0, p->z < gr->qmax ? hi / (float)(gr->qmax - p->z) : 0);
        break;
    }
    }
    /* Rounded away from zero: a tiny group keeps a nonzero scale, and no code moves past its end. */
    uint16_t h = f16_round_up(fabsf(ideal)) | (ideal < 0 ? 0x8000u : 0);
    if ((h & 0x7c00u) == 0x7c00u || !isfinite(ideal))
        return qpk_err_setf(e, QPK_E_VALUE, "a group's scale %g is past the f16 range (weights up to %g)",
                            (double)ideal, (double)fmaxf(-lo, hi));
    p->d = qpk_f16_to_f32(h);
    if (p->d == 0)
        p->z = 0;
    return QPK_OK;
}

int32_t qpk_quantize_value(uint32_t type, const qpk_qparams *p, float x)
{
    const qpk_grid *gr = grid_of(type);
    const bool zp = gr->rule == QPK_RULE_ZERO_POINT;
    if (p->d == 0)
        return zp ? p->z : 0; /* the all-zero group: no division by a zero scale */
    if (gr->rule == QPK_RULE_AFFINE)
        x -= p->m;
    float q = nearbyintf(x / p->d) + (zp ? (float)p->z : 0.0f);
    return (int32_t)fminf(fmaxf(q, (float)gr->qmin), (float)gr->qmax);
}

float qpk_dequantize_value(uint32_t type, const qpk_qparams *p, int32_t q)
{
    const qpk_scale_rule rule = grid_of(type)->rule;
    if (rule == QPK_RULE_AFFINE) /* rounded once, as the exact s q + b rounds to f32 */
        return fmaf(p->d, (float)q, p->m);
    return p->d * (float)(rule == QPK_RULE_ZERO_POINT ? q - p->z : q);
}

/*
 * Blocks are written and read 32 codes at a time (the layout's unit), so any group
 * size works without a group-sized buffer. A block is the type's head (f16 d, then the
 * zero point when the rule has one) and its codes: 8-bit codes one per byte; 4-bit
 * codes in chunks of 16 bytes, byte j holding code j in its low nibble and j + 16 in
 * its high one.
 */
void qpk_put_block_header(uint32_t type, const qpk_qparams *p, uint8_t *b)
{
    const qpk_grid *gr = grid_of(type);
    if (gr->rule == QPK_RULE_AFFINE) { /* d and m are values of the type's half: exact */
        put16(b + offsetof(qpk_head_affine, s), half_from_f32(type, p->d));
        put16(b + offsetof(qpk_head_affine, b), half_from_f32(type, p->m));
        return;
    }
    put16(b, qpk_f32_to_f16(p->d)); /* d is an f16 value: exact */
    if (gr->rule == QPK_RULE_ZERO_POINT) /* then a zero byte (int4) or the high byte (int8z) */
        b[gr->zero_at] = (uint8_t)p->z, b[gr->zero_at + 1] = (uint8_t)(gr->zero_bytes == 2 ? p->z >> 8 : 0);
}

static void get_header(uint32_t type, const uint8_t *b, qpk_qparams *p)
{
    const qpk_grid *gr = grid_of(type);
    if (gr->rule == QPK_RULE_AFFINE) {
        *p = (qpk_qparams){half_to_f32(type, get16(b + offsetof(qpk_head_affine, s))), 0,
                           half_to_f32(type, get16(b + offsetof(qpk_head_affine, b)))};
        return;
    }
    p->d = qpk_f16_to_f32(get16(b));
    p->z = gr->rule == QPK_RULE_ZERO_POINT ? qpk_grid_zero(gr, b) : 0;
    p->m = 0;
}

/* Codes of chunk c (elements 32c .. 32c+31 of the group). */
static void put_chunk(uint32_t type, const int32_t *q, uint32_t c, uint8_t *block)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    const int32_t bias = grid_of(type)->bias;
    uint8_t *b = block + t->head_bytes + 4 * t->bits * c;
    if (t->bits == 8) {
        for (int i = 0; i < 32; i++)
            b[i] = (uint8_t)(q[i] + bias);
        return;
    }
    for (int j = 0; j < 16; j++)
        b[j] = (uint8_t)((q[j] + bias) | (q[j + 16] + bias) << 4);
}

static void get_chunk(uint32_t type, const uint8_t *block, uint32_t c, int32_t *q)
{
    const qpk_type_info *t = qpk_type_info_of(type);
    const int32_t bias = grid_of(type)->bias;
    const uint8_t *b = block + t->head_bytes + 4 * t->bits * c;
    if (t->bits == 8) { /* signed codes stored as two's complement; unsigned ones as they are */
        for (int i = 0; i < 32; i++)
            q[i] = (grid_of(type)->qmin < 0 ? (int32_t)(int8_t)b[i] : (int32_t)b[i]) - bias;
        return;
    }
    for (int j = 0; j < 16; j++) {
        q[j] = (b[j] & 15) - bias;
        q[j + 16] = (b[j] >> 4) - bias;
    }
}

void qpk_pack_group(uint32_t type, uint32_t group, const qpk_qparams *p, const int32_t *q, void *block)
{
    qpk_put_block_header(type, p, block);
    for (uint32_t c = 0; c < group / QPK_GROUP_QUANTUM; c++)
        put_chunk(type, q + 32 * c, c, block);
}

void qpk_unpack_group(uint32_t type, uint32_t group, const void *block, qpk_qparams *p, int32_t *q)
{
    get_header(type, block, p);
    for (uint32_t c = 0; c < group / QPK_GROUP_QUANTUM; c++)
        get_chunk(type, block, c, q + 32 * c);
}

qpk_status qpk_quantize_group(uint32_t type, const float *w, int64_t n, float clip, qpk_qparams *p, int32_t *q,
                              float *deq, qpk_err *e)
{
    QPK_TRY(qpk_group_params(type, w, n, clip, p, e));
    for (int64_t k = 0; k < n; k++) {
        int32_t c = qpk_quantize_value(type, p, w[k]);
        if (q)
            q[k] = c;
        if (deq)
            deq[k] = qpk_dequantize_value(type, p, c);
    }
    return QPK_OK;
}

qpk_status qpk_quantize_row_imp(uint32_t type, uint32_t group, const float *x, int64_t n, const float *imp, void *out,
                                qpk_err *e)
{
    if (qpk_ggml_type(type)) {
        if (!qpk_group_ok(type, group, n))
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "a row of %lld is not whole %s blocks", (long long)n,
                                qpk_type_name(type));
        return qpk_ggml_quantize_row(type, x, n, imp, out, e);
    }
    return qpk_quantize_row(type, group, x, n, out, e);
}

qpk_status qpk_quantize_row(uint32_t type, uint32_t group, const float *x, int64_t n, void *out, qpk_err *e)
{
    if (qpk_ggml_type(type))
        return qpk_quantize_row_imp(type, group, x, n, NULL, out, e);
    uint8_t *o = out;
    size_t bb = qpk_type_block_bytes(type, group);
    if (!grid_of(type) || !qpk_group_ok(type, group, n))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a row of %lld is not whole groups of %u of a quantized type",
                            (long long)n, group);
    for (int64_t g = 0; g < n; g += group, o += bb) {
        qpk_qparams p;
        qpk_status s = qpk_group_params(type, x + g, group, 1.0f, &p, e);
        if (s != QPK_OK)
            return qpk_err_prefix(e, s, "weights %lld..%lld", (long long)g, (long long)(g + group - 1));
        qpk_put_block_header(type, &p, o);
        for (uint32_t c = 0; c < group / QPK_GROUP_QUANTUM; c++) {
            int32_t q[32];
            for (int i = 0; i < 32; i++)
                q[i] = qpk_quantize_value(type, &p, x[g + 32 * c + i]);
            put_chunk(type, q, c, o);
        }
    }
    return QPK_OK;
}

void qpk_dequantize_row(uint32_t type, uint32_t group, const void *in, int64_t n, float *out)
{
    if (!qpk_type_is_quantized(type)) {
        qpk_row_to_f32(type, in, out, (size_t)n);
        return;
    }
    if (qpk_ggml_type(type)) {
        qpk_ggml_dequantize_row(type, in, n, out);
        return;
    }
    const uint8_t *b = in;
    size_t bb = qpk_type_block_bytes(type, group);
    for (int64_t g = 0; g < n; g += group, b += bb) {
        qpk_qparams p;
        get_header(type, b, &p);
        for (uint32_t c = 0; c < group / QPK_GROUP_QUANTUM; c++) {
            int32_t q[32];
            get_chunk(type, b, c, q);
            for (int i = 0; i < 32; i++)
                out[g + 32 * c + i] = qpk_dequantize_value(type, &p, q[i]);
        }
    }
}
