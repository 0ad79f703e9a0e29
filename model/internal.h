/* What the model layer's own files share: the writers behind the sinks. */
#ifndef QPK_MODEL_INTERNAL_H
#define QPK_MODEL_INTERNAL_H

#include "model_private.h"
#include "qpk/convert.h"

/* ------------------------------------------------- GGUF export (gguf_export.c) */

typedef struct qpk_gguf_export qpk_gguf_export;

/* split_bytes / split_tensors: a split set (qpk_gguf_writer_split), both 0: one file. */
qpk_status qpk_gguf_export_create(qpk_gguf_export **out, const char *path, uint64_t split_bytes,
                                  uint64_t split_tensors, qpk_err *e);
/* Nothing appears at the path. NULL-safe. */
void qpk_gguf_export_discard(qpk_gguf_export *x);
/* What a GGUF says besides its tensors. */
typedef struct qpk_gguf_meta {
    const char *name;               /* general.name */
    const char *tok_json;           /* tokenizer.json (required) */
    size_t tok_len;
    const char *tok_cfg;            /* tokenizer_config.json (may be NULL) */
    size_t cfg_len;
    const char *recipe;             /* the qpk recipe, JSON (may be NULL) */
    const char *chat_template;      /* chat_template.jinja (may be NULL): before tokenizer_config.json's, as transformers */
    size_t tmpl_len;
} qpk_gguf_meta;

/* How tensor (role, layer) comes to the exporter: its qpk type, group and dims (outermost first). */
typedef qpk_status (*qpk_gguf_source_fn)(void *ud, qpk_role role, int layer, uint32_t *type, uint32_t *group,
                                         int *ndim, int64_t dims[QPK_MAX_DIMS], qpk_err *e);

/*
 * The one GGUF planning path, for every source: declares the tensors of a model with
 * config c in the canonical order, each in the ggml type its qpk type becomes (norms
 * and biases f32, as llama.cpp takes them), then writes the metadata: hyperparameters,
 * general.file_type (llama.cpp's LLAMA_FTYPE of the type most linear weights have), the
 * tokenizer and the recipe.
 */
qpk_status qpk_gguf_export_plan(qpk_gguf_export *x, const qpk_config *c, qpk_gguf_source_fn source, void *ud,
                                const qpk_gguf_meta *m, qpk_err *e);
/*
 * The declared tensors' bytes in order, in the qpk type each was declared with (vectors
 * are widened to f32, int4 blocks become Q4_1); next() after each tensor.
 */
qpk_status qpk_gguf_export_write(qpk_gguf_export *x, const void *data, size_t n, qpk_err *e);
/* Ends the tensor: the largest change its weights took on the way (int4 -> Q4_1 offsets rounded; 0: exact). */
void qpk_gguf_export_next(qpk_gguf_export *x, double *max_change);
/* Commits the file; x is freed whatever the outcome. */
qpk_status qpk_gguf_export_finish(qpk_gguf_export *x, const qpk_callbacks *cb, qpk_err *e);


/* ------------------------------------------------ GPTQ/AWQ folders (hf_export.c) */

typedef struct qpk_hf_sink qpk_hf_sink;

/* A GPTQ (awq false) or AWQ folder at path, built in a hidden temporary folder beside it. */
qpk_status qpk_hf_sink_create(qpk_hf_sink **out, qpk_output kind, const char *path, const qpk_sink_opts *o,
                              qpk_err *e);
/* Checks every declared tensor against the layout (one bit width and group, ...) and starts the safetensors. */
qpk_status qpk_hf_sink_declare(qpk_hf_sink *h, const qpk_sink_model *m, qpk_err *e);
qpk_status qpk_hf_sink_begin(qpk_hf_sink *h, const qpk_sink_tensor *t, qpk_err *e);
qpk_status qpk_hf_sink_write(qpk_hf_sink *h, const void *data, size_t n, qpk_err *e);
/* Ends a tensor: the largest change its weights took (MLX's f16 bias of a zero-point group rounded; 0: exact). */
qpk_status qpk_hf_sink_end(qpk_hf_sink *h, const int32_t *perm, double *max_change, qpk_err *e);
/* Writes the configs and files and makes the folder appear; frees h whatever the outcome. */
qpk_status qpk_hf_sink_finish(qpk_hf_sink *h, qpk_err *e);
void qpk_hf_sink_discard(qpk_hf_sink *h); /* NULL-safe */

#endif
