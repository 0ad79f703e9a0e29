/*
 * How each block type that qpk quantizes to maps codes to weights (FORMAT.md section 6):
 * the rule that chooses a group's scale, the code range, the bias between a code and
 * what is stored, and where the zero point sits in the block. One row per type; the
 * reference quantizer (quantize.c) and the kernels read it. Static so that a kernel
 * specialized for a type gets the numbers at compile time.
 */
#ifndef QPK_QUANT_GRID_H
#define QPK_QUANT_GRID_H

#include "qpk/quant.h"
#include "qpk_private.h"

typedef enum qpk_scale_rule {
    QPK_RULE_NONE = 0,
    QPK_RULE_ABSMAX,         /* d = max|w| / qmax, rounded up to an f16 */
    QPK_RULE_SIGNED_EXTREME, /* d = (the extreme weight, signed) / qmin: it lands exactly on qmin */
    QPK_RULE_ZERO_POINT,     /* an integer zero point z first, then the smallest d covering both ends */
} qpk_scale_rule;

typedef struct qpk_grid {
    qpk_scale_rule rule;
    int32_t qmin, qmax;  /* codes */
    int32_t bias;        /* a code is stored as q + bias (w = d * (stored - bias)) */
    uint32_t zero_at;    /* QPK_RULE_ZERO_POINT: the byte of the block where z starts (w = d * (q - z)) */
    uint32_t zero_bytes; /* and its width, little-endian (1 or 2) */
} qpk_grid;

static const qpk_grid QPK_GRIDS[QPK_TYPE_COUNT_] = {
    [QPK_TYPE_INT8] = {QPK_RULE_ABSMAX, -127, 127, 0, 0, 0},
    [QPK_TYPE_INT4] = {QPK_RULE_ZERO_POINT, 0, 15, 0, 2, 1},
    [QPK_TYPE_INT4S] = {QPK_RULE_SIGNED_EXTREME, -8, 7, 8, 0, 0},
    [QPK_TYPE_INT8Z] = {QPK_RULE_ZERO_POINT, 0, 255, 0, 2, 2},
};

/* The zero point stored in block b of a type with QPK_RULE_ZERO_POINT. */
static inline int32_t qpk_grid_zero(const qpk_grid *g, const uint8_t *b)
{
    return g->zero_bytes == 2 ? (int32_t)(b[g->zero_at] | b[g->zero_at + 1] << 8) : (int32_t)b[g->zero_at];
}

/*
 * The two halves of qpk_group_params, for kernels that scan a group their own way: the
 * parameters from the group's range (lo <= 0 <= hi, finite: the scan's job), and the
 * block head they give.
 */
qpk_status qpk_params_from_range(uint32_t type, float lo, float hi, float clip, qpk_qparams *p, qpk_err *e);
void qpk_put_block_header(uint32_t type, const qpk_qparams *p, uint8_t *block);

#endif
