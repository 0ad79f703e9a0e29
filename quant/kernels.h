/* Private to the quant library: the per-instruction-set kernel tables. */
#ifndef QPK_QUANT_KERNELS_H
#define QPK_QUANT_KERNELS_H

#include "qpk/quant.h"

/* Row r of w as bytes. */
static inline const uint8_t *qpk_row_ptr(const qpk_matrix *w, int64_t r)
{
    return (const uint8_t *)w->data + (size_t)r * qpk_matrix_row_bytes(w);
}

/* gemm's packed panels: rows per panel, and columns per packed chunk (a chunk of a panel stays in L2). */
#define QPK_GEMM_PANEL 32
#define QPK_GEMM_KC 2048
/*
 * Converted rows sit this many floats apart: a whole number of cache lines plus one,
 * so that rows of a power-of-two length do not all fall into the same L1 sets.
 */
#define SCRATCH_STRIDE(cols) ((((size_t)(cols) + 15) & ~(size_t)15) + 16)

/*
 * What a kernel table does for one tensor type: row r of w to f32, and the dot product
 * with x of the row at `row` (gemv finds the rows by one stride per matrix) in the
 * summation order of qpk/quant.h (scratch: the caller's qpk_gemm_scratch_floats); where
 * it has one, dot2 does the rows at row and row + stride at once, y[0] and y[1], which
 * keeps twice the FMA chains in flight of one row (dot4: four rows, y[0..3]). gemv and
 * gemm are written once per instruction set over these; adding a type adds a row to each
 * table that has a faster way than the scalar one.
 */
typedef void qpk_row_fn(const qpk_matrix *w, int64_t r, float *dst);
typedef float qpk_dot_fn(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch);
typedef void qpk_dot2_fn(const qpk_matrix *w, const uint8_t *row, size_t stride, const float *x, float y[2]);
typedef void qpk_dot4_fn(const qpk_matrix *w, const uint8_t *row, size_t stride, const float *x, float y[4]);
/* Rows [r, r + nr) of w, columns [k0, k0 + kc), as gemm's packed panel: row j of column k at
 * packed[(k - k0) * QPK_GEMM_PANEL + j], rows j >= nr as 0; the values to_f32 gives. k0 and kc
 * are multiples of 32 (gemm's chunks of a 4-bit row are: QPK_GEMM_KC and the row's groups). */
typedef void qpk_panel_fn(const qpk_matrix *w, int64_t r, int nr, int64_t k0, int64_t kc, float *packed);
typedef struct qpk_type_kernels {
    qpk_row_fn *to_f32;
    qpk_dot_fn *dot;
    qpk_dot2_fn *dot2;         /* NULL: one row at a time */
    qpk_dot4_fn *dot4;         /* rows row + i stride, i < 4: NULL: two at a time where dot2 is */
    qpk_panel_fn *to_panel;    /* NULL: gemm converts whole rows with to_f32, then packs them */
} qpk_type_kernels;

/* The scalar row kernels of any type (the reference; what other tables fall back to). */
void qpk_scalar_row_to_f32(const qpk_matrix *w, int64_t r, float *dst);
float qpk_scalar_row_dot(const qpk_matrix *w, const uint8_t *row, const float *x, float *scratch);

/* The scalar table's fake_quantize_row: the scaled row, qpk_quantize_group per group, the scales divided out. */
bool qpk_scalar_fake_quantize_row(uint32_t type, uint32_t group, const float *w, const float *s, int64_t n,
                                  float *out);
/* The scalar table's quantize_group_ratios: qpk_quantize_group once per ratio. */
int qpk_scalar_quantize_group_ratios(uint32_t type, const float *w, int64_t n, const float *ratios, int n_ratios,
                                     float *out);

extern const qpk_kernels qpk_kernels_avx2_table;
/* AVX2's, with 4-bit codes by AVX-512 permutes, Q6_K by byte ops, int8 16 lanes wide, dot_rows in 32 registers
 * (AVX-512F, BW and VL) */
extern const qpk_kernels qpk_kernels_avx512_table;
/* AVX-512's, Q6_K's codes placed by byte permutes (AVX-512 VBMI) */
extern const qpk_kernels qpk_kernels_avx512vbmi_table;

#endif
