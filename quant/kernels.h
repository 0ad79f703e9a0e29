/* Private to the quant library: the per-instruction-set kernel tables. */
#ifndef QPK_QUANT_KERNELS_H
#define QPK_QUANT_KERNELS_H

#include "qpk/quant.h"

/* Row r of w as bytes. */
static inline const uint8_t *qpk_row_ptr(const qpk_matrix *w, int64_t r)
{
    return (const uint8_t *)w->data + (size_t)r * qpk_matrix_row_bytes(w);
}

/* Rows converted per gemm block, and tokens per cache block: see kernels_avx2.c. */
#define QPK_GEMM_ROWS 6
#define QPK_GEMM_TOKENS 64
/*
 * Converted rows sit this many floats apart: a whole number of cache lines plus one,
 * so that rows of a power-of-two length do not all fall into the same L1 sets.
 */
#define SCRATCH_STRIDE(cols) ((((size_t)(cols) + 15) & ~(size_t)15) + 16)

extern const qpk_kernels qpk_kernels_avx2_table;
extern const qpk_kernels qpk_kernels_avx512_table; /* AVX2's, with 4-bit codes by AVX-512F permutes */

#endif
