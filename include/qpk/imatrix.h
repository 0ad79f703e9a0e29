/*
 * qpk/imatrix.h - llama.cpp's importance matrices (llama-imatrix's output, llama-quantize's
 * --imatrix input), both forms, read and written:
 *
 *   GGUF (llama.cpp's default since 2025): general.type "imatrix", imatrix.datasets
 *     (strings), imatrix.chunk_count and imatrix.chunk_size (u32); per weight tensor W (its
 *     GGUF name, "blk.3.ffn_up.weight") the F32 tensors W.in_sum2 [n_per_row, n_mat]: the sum
 *     of each input column's squares over the tokens seen, per matrix (expert), and
 *     W.counts [1, n_mat]: those tokens.
 *   legacy .dat: i32 n_entries; per entry i32 name length, the name, i32 ncall, i32 nval,
 *     nval f32 values = the mean square times ncall; then, optionally, i32 chunk count,
 *     i32 dataset name length and the name.
 *
 * Either way an entry's importance of column i of matrix m is sum2[m][i] / counts[m]: the
 * mean square of that input, what llama-quantize weighs its scale searches with.
 */
#ifndef QPK_IMATRIX_H
#define QPK_IMATRIX_H

#include "qpk/format.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QPK_IMATRIX_MAX_ENTRIES 65536
#define QPK_IMATRIX_MAX_NAME 255

typedef struct qpk_imatrix_entry {
    char name[QPK_IMATRIX_MAX_NAME + 1]; /* the weight's GGUF name */
    int64_t n_per_row, n_mat;            /* columns; matrices (experts; 1 for a plain linear) */
    float *sum2;                         /* [n_mat][n_per_row], finite, >= 0 */
    float *counts;                       /* [n_mat], finite, >= 0 */
} qpk_imatrix_entry;

typedef struct qpk_imatrix {
    qpk_imatrix_entry *entries; /* sorted by name (as llama-imatrix stores them) */
    size_t n;
    char *dataset;              /* the calibration data's name (the first of imatrix.datasets), may be NULL */
    uint32_t chunk_count, chunk_size;
    bool legacy;                /* read from a .dat file */
} qpk_imatrix;

/*
 * Reads either form (told apart by the GGUF magic), validating every length, count and
 * value before use: names unique and non-empty, every in_sum2 with its counts (and the
 * reverse), F32, shapes that agree, values finite and not negative. A legacy file's entries
 * get counts[m] = ncall, so sum2 / counts is the stored mean square, as llama-quantize reads it.
 */
QPK_API qpk_status qpk_imatrix_read(qpk_imatrix **out, const char *path, qpk_err *e);
QPK_API qpk_status qpk_imatrix_read_memory(qpk_imatrix **out, const void *buf, size_t size, qpk_err *e);
QPK_API void qpk_imatrix_free(qpk_imatrix *m); /* NULL-safe */
/* The entry of the weight called name (its GGUF name), or NULL. */
QPK_API const qpk_imatrix_entry *qpk_imatrix_find(const qpk_imatrix *m, const char *name);
/*
 * An empty matrix to fill with qpk_imatrix_add (entries kept sorted), then write. add copies
 * sum2 ([n_mat][n_per_row]) and counts ([n_mat]); a name added twice is refused.
 */
QPK_API qpk_status qpk_imatrix_create(qpk_imatrix **out, const char *dataset, uint32_t chunk_count,
                                      uint32_t chunk_size, qpk_err *e);
QPK_API qpk_status qpk_imatrix_add(qpk_imatrix *m, const char *name, int64_t n_per_row, int64_t n_mat,
                                   const float *sum2, const float *counts, qpk_err *e);
/* Writes m atomically at path: the GGUF form, or the legacy .dat (legacy true). */
QPK_API qpk_status qpk_imatrix_write(const qpk_imatrix *m, const char *path, bool legacy, qpk_err *e);

#ifdef __cplusplus
}
#endif
#endif /* QPK_IMATRIX_H */
