#ifndef QPK_TESTS_TESTUTIL_H
#define QPK_TESTS_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "qpk/convert.h"
#include "qpk/gguf.h"

/*
 * True if `out` holds exactly the model of folder `dir`: the config, every tensor,
 * each equal to its source rounded (ties to even) to the stored type; with
 * dtype -1 (keep) the bytes themselves must match.
 */
bool check_against_source(const char *dir, const char *out, int dtype);

/* Removes a folder and the files in it (one level, as the tests make them). */
void rm_rf(const char *dir);

/* The whole file, NUL-terminated, malloc'd; NULL if it cannot be read. */
char *slurp(const char *path, size_t *n);

/* ---- the engine and sources, as the tests use them */
#include "qpk/convert.h"
/* A source opened as a model to run (or, allow_logits, a logits file); tu_model gives the runtime model over it. */
qpk_status tu_open(qpk_source **src, const char *path, bool allow_logits, qpk_err *e);
const qpk_model *tu_model(qpk_source *src); /* built on first use, freed by tu_close */
void tu_close(qpk_source *src);
/* A text file tokenized with the model at path's tokenizer. */
qpk_status tu_tokenize_file(const char *model, const char *path, int32_t **ids, size_t *n, uint64_t *hash, qpk_err *e);
/* The fixtures' calibration text tokenized with model's tokenizer, and eval_public's token ids (both malloc'd). */
qpk_status tu_calib_and_eval(const char *fixtures, const char *model, int32_t **calib, size_t *n_calib, int32_t **eval,
                             size_t *n_eval, qpk_err *e);
/* Mean KL divergence of the model at path against ref over eval's first max_chunks chunks of n_ctx tokens; NAN on
 * failure (e says why). */
double tu_kld(const char *path, qpk_source *ref, const int32_t *eval, size_t n_eval, int n_ctx, int max_chunks,
              qpk_err *e);
/* A runtime model over a Qwen2 GGUF (checked as its source checks it). */
qpk_status tu_gguf_model(qpk_model **m, const qpk_gguf *g, qpk_err *e);
/* The engine from paths: as the library's former path-to-path functions (each sets its target). */
qpk_status tu_convert(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e);
qpk_status tu_export_gguf(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e);
qpk_status tu_convert_gguf(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e);
qpk_status tu_export_hf(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e);
qpk_status tu_requantize_for_gguf(const char *in, const char *out, const qpk_convert_opts *o, int *n, qpk_err *e);

#endif
