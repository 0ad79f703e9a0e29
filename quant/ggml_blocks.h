/* ggml's block types inside the quant library: reference dequantization (and, later, quantizers). */
#ifndef QPK_QUANT_GGML_BLOCKS_H
#define QPK_QUANT_GGML_BLOCKS_H

#include "qpk/quant.h"
#include "qpk_private.h"

/* Whether type is one of ggml's block types (Q4_1 .. Q6_K, the i-quants) that qpk stores byte for byte. */
bool qpk_ggml_type(uint32_t type);
/* n weights (whole blocks) of a row of such a type, as ggml's dequantize_row_* gives them. */
void qpk_ggml_dequantize_row(uint32_t type, const void *in, int64_t n, float *out);
/* Whether qpk quantizes to it (Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS; the others are read only). */
bool qpk_ggml_can_quantize(uint32_t type);
/* A row of n weights (whole blocks) to such a type; imp (may be NULL): each input column's importance. */
qpk_status qpk_ggml_quantize_row(uint32_t type, const float *x, int64_t n, const float *imp, void *out, qpk_err *e);

/*
 * A quantized block's grid (types qpk_ggml_can_quantize), for quantizers that choose codes themselves (GPTQ): weight i
 * of the block is a[i / sub] * q - m[i / sub] with q in [qmin, qmax], exactly as the
 * dequantization computes it. Returns sub, the weights per sub-block.
 */
int qpk_ggml_grid(uint32_t type, const uint8_t *block, float *a, float *m, int *qmin, int *qmax);
/*
 * The code nearest x on such a grid at sub-block scale a and offset m (clamped to the grid;
 * any code when a is 0), and in *w the weight it decodes to: a q - m, or a v[q] - m on a
 * codebook's values v (ggml's i-quants).
 */
int qpk_ggml_code(uint32_t type, float a, float m, float x, float *w);
/* What code q of such a grid stands for: q itself, or the codebook's value (weight: a value - m). */
float qpk_ggml_code_value(uint32_t type, int q);
/* Writes the block's codes (q[i] as qpk_ggml_grid numbers them), its scales left as they are. */
void qpk_ggml_pack_codes(uint32_t type, uint8_t *block, const int32_t *q);

#endif
