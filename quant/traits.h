/*
 * The quant library's half of a type's row: what computes with a block type (FORMAT.md
 * section 6). QPK_TYPE_TABLE (format/qpk_private.h) holds the other half, the facts a
 * reader needs (sizes, the group rule, ggml's type and file type, whether --quant takes
 * the type); this table, keyed by the same ids, holds the grid its codes sit on and, for
 * ggml's types, the reference dequantization, quantization and packing of one block.
 * The reference quantizer (quantize.c, ggml_blocks.c), GPTQ and the kernels read it.
 * Static so that a kernel specialized for a type gets the numbers at compile time.
 */
#ifndef QPK_QUANT_TRAITS_H
#define QPK_QUANT_TRAITS_H

#include "qpk/quant.h"
#include "iq_grids.h" /* qpk_iq4nl_values */
#include "qpk_private.h"

typedef enum qpk_scale_rule {
    QPK_RULE_NONE = 0,
    QPK_RULE_ABSMAX,         /* d = max|w| / qmax, rounded up to an f16 */
    QPK_RULE_SIGNED_EXTREME, /* d = (the extreme weight, signed) / qmin: it lands exactly on qmin */
    QPK_RULE_ZERO_POINT,     /* an integer zero point z first, then the smallest d covering both ends */
    QPK_RULE_AFFINE,         /* MLX's: an offset m at the low end, then the smallest d reaching the high end */
} qpk_scale_rule;

typedef struct qpk_grid {
    qpk_scale_rule rule; /* the types qpk quantizes group by group by round-to-nearest; NONE for ggml's */
    int32_t qmin, qmax;  /* codes (ggml's types: as qpk_ggml_grid numbers them) */
    int32_t bias;        /* a code is stored as q + bias (w = d * (stored - bias)) */
    uint32_t zero_at;    /* QPK_RULE_ZERO_POINT: the byte of the block where z starts (w = d * (q - z)) */
    uint32_t zero_bytes; /* and its width, little-endian (1 or 2) */
    const int8_t *values; /* a codebook (ggml's i-quants): code q stands for values[q - qmin]; NULL: for q itself */
} qpk_grid;

/* One block of a ggml type: its weights as ggml decodes them; x (and importance imp, may be NULL) quantized into it. */
typedef void qpk_block_to_f32_fn(const uint8_t *block, float *y);
typedef void qpk_block_quantize_fn(const float *x, const float *imp, uint8_t *block);
/* A block's sub-block scales a[] and offsets m[] (weight = a q - m); returns weights per sub-block. */
typedef int qpk_block_scales_fn(const uint8_t *block, float *a, float *m);
/* Writes a block's codes (q[i] numbered as the grid's qmin..qmax), its scales left as they are. */
typedef void qpk_block_pack_fn(uint8_t *block, const int32_t *q);

typedef struct qpk_quant_traits {
    qpk_grid grid;
    qpk_block_to_f32_fn *to_f32;     /* ggml's types only (the group types' reference is the grid's) */
    qpk_block_quantize_fn *quantize; /* NULL: qpk reads the type but never writes it */
    qpk_block_scales_fn *scales;     /* with quantize */
    qpk_block_pack_fn *pack;         /* with quantize */
} qpk_quant_traits;

/* ggml_blocks.c, written from ggml-quants.c's dequantize_row_* and ggml-common.h's structs. */
qpk_block_to_f32_fn qpk_q4_1_to_f32, qpk_q5_0_to_f32, qpk_q5_1_to_f32, qpk_q2_k_to_f32, qpk_q3_k_to_f32,
    qpk_q4_k_to_f32, qpk_q5_k_to_f32, qpk_q6_k_to_f32, qpk_iq4_nl_to_f32, qpk_iq4_xs_to_f32;
qpk_block_quantize_fn qpk_q4_1_quantize, qpk_q5_0_quantize, qpk_q5_1_quantize, qpk_q4_k_quantize,
    qpk_q5_k_quantize, qpk_q6_k_quantize, qpk_iq4_nl_quantize, qpk_iq4_xs_quantize;
qpk_block_scales_fn qpk_q4_1_scales, qpk_q5_0_scales, qpk_q4_k_scales, qpk_q6_k_scales, qpk_iq4_nl_scales,
    qpk_iq4_xs_scales;
qpk_block_pack_fn qpk_q4_1_pack, qpk_q5_0_pack, qpk_q5_1_pack, qpk_q4_k_pack, qpk_q5_k_pack, qpk_q6_k_pack,
    qpk_iq4_nl_pack, qpk_iq4_xs_pack;
/* iq_blocks.c, written from FORMAT.md's layouts of the lower i-quants and ternary types. */
qpk_block_to_f32_fn qpk_iq2_xxs_to_f32, qpk_iq2_xs_to_f32, qpk_iq2_s_to_f32, qpk_iq3_xxs_to_f32, qpk_iq3_s_to_f32,
    qpk_iq1_s_to_f32, qpk_iq1_m_to_f32, qpk_tq1_0_to_f32, qpk_tq2_0_to_f32;

static const qpk_quant_traits QPK_QUANT_TRAITS[QPK_TYPE_COUNT_] = {
#define ZERO(H) offsetof(H, z), QPK_FIELD_SIZE(H, z)
    [QPK_TYPE_INT8] = {{QPK_RULE_ABSMAX, -127, 127, 0, 0, 0}},
    [QPK_TYPE_INT4] = {{QPK_RULE_ZERO_POINT, 0, 15, 0, ZERO(qpk_head_int4)}},
    [QPK_TYPE_INT4S] = {{QPK_RULE_SIGNED_EXTREME, -8, 7, 8, 0, 0}},
    [QPK_TYPE_INT8Z] = {{QPK_RULE_ZERO_POINT, 0, 255, 0, ZERO(qpk_head_int8z)}},
    [QPK_TYPE_MLX4] = {{QPK_RULE_AFFINE, 0, 15, 0, 0, 0}},
    [QPK_TYPE_MLX8] = {{QPK_RULE_AFFINE, 0, 255, 0, 0, 0}},
    [QPK_TYPE_MLX4_F16] = {{QPK_RULE_AFFINE, 0, 15, 0, 0, 0}},
    [QPK_TYPE_MLX8_F16] = {{QPK_RULE_AFFINE, 0, 255, 0, 0, 0}},
/* ggml's types: read only, or also written (codes in lo..hi; the scales of the type named). */
#define READ(t) {.to_f32 = qpk_##t##_to_f32}
#define WRITTEN(lo, hi, t, scales)                                                                               \
    {{QPK_RULE_NONE, lo, hi, 0, 0, 0}, qpk_##t##_to_f32, qpk_##t##_quantize, qpk_##scales##_scales, qpk_##t##_pack}
    [QPK_TYPE_Q4_1] = WRITTEN(0, 15, q4_1, q4_1),
    [QPK_TYPE_Q5_0] = WRITTEN(-16, 15, q5_0, q5_0),
    [QPK_TYPE_Q5_1] = WRITTEN(0, 31, q5_1, q4_1), /* d and m where Q4_1 has them */
    [QPK_TYPE_Q2_K] = READ(q2_k),
    [QPK_TYPE_Q3_K] = READ(q3_k),
    [QPK_TYPE_Q4_K] = WRITTEN(0, 15, q4_k, q4_k),
    [QPK_TYPE_Q5_K] = WRITTEN(0, 31, q5_k, q4_k), /* Q4_K's head */
    [QPK_TYPE_Q6_K] = WRITTEN(-32, 31, q6_k, q6_k),
/* ggml's i-quants: codes index a codebook (the grid numbers the codebook's entries). */
#define CODEBOOK(n, t, v) {{QPK_RULE_NONE, 0, (n) - 1, 0, 0, 0, v}, qpk_##t##_to_f32, qpk_##t##_quantize, qpk_##t##_scales, qpk_##t##_pack}
    [QPK_TYPE_IQ4_NL] = CODEBOOK(16, iq4_nl, qpk_iq4nl_values),
    [QPK_TYPE_IQ4_XS] = CODEBOOK(16, iq4_xs, qpk_iq4nl_values),
    [QPK_TYPE_IQ2_XXS] = READ(iq2_xxs),
    [QPK_TYPE_IQ2_XS] = READ(iq2_xs),
    [QPK_TYPE_IQ2_S] = READ(iq2_s),
    [QPK_TYPE_IQ3_XXS] = READ(iq3_xxs),
    [QPK_TYPE_IQ3_S] = READ(iq3_s),
    [QPK_TYPE_IQ1_S] = READ(iq1_s),
    [QPK_TYPE_IQ1_M] = READ(iq1_m),
    [QPK_TYPE_TQ1_0] = READ(tq1_0),
    [QPK_TYPE_TQ2_0] = READ(tq2_0),
#undef ZERO
#undef READ
#undef WRITTEN
#undef CODEBOOK
};

/* The zero point stored in block b of a type with QPK_RULE_ZERO_POINT. */
static inline int32_t qpk_grid_zero(const qpk_grid *g, const uint8_t *b)
{
    return g->zero_bytes == 2 ? (int32_t)qpk_le16(b + g->zero_at) : (int32_t)b[g->zero_at];
}

/*
 * The two halves of qpk_group_params, for kernels that scan a group their own way: the
 * parameters from the group's range (lo <= 0 <= hi, finite: the scan's job), and the
 * block head they give.
 */
qpk_status qpk_params_from_range(uint32_t type, float lo, float hi, float clip, qpk_qparams *p, qpk_err *e);
void qpk_put_block_header(uint32_t type, const qpk_qparams *p, uint8_t *block);

#endif
