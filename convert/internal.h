/* Helpers shared inside the convert library. */
#ifndef QPK_CONVERT_INTERNAL_H
#define QPK_CONVERT_INTERNAL_H

#include "qpk/convert.h"
#include "qpk/quant.h"
#include "qpk_private.h"

/* Elements [first, first + n) of a float safetensors tensor, as f32 (F64 rounds to nearest). */
static inline void qpk_st_to_f32(const qpk_st_tensor *t, uint64_t first, size_t n, float *dst)
{
    const uint8_t *p = (const uint8_t *)t->data + first * qpk_st_dtype_size(t->dtype);
    switch (t->dtype) {
    case QPK_ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    case QPK_ST_F32: qpk_row_to_f32(QPK_TYPE_F32, p, dst, n); break;
    case QPK_ST_F16: qpk_row_to_f32(QPK_TYPE_F16, p, dst, n); break;
    case QPK_ST_BF16: qpk_row_to_f32(QPK_TYPE_BF16, p, dst, n); break;
    default: memset(dst, 0, n * sizeof *dst); break;
    }
}

/* The qpk type a float safetensors dtype is stored as under --dtype keep. */
static inline qpk_type qpk_st_keep_type(qpk_st_dtype d)
{
    return d == QPK_ST_F16 ? QPK_TYPE_F16 : d == QPK_ST_BF16 ? QPK_TYPE_BF16 : QPK_TYPE_F32;
}

/*
 * The type (and group) tensor `name` of role `role` is quantized to under options o:
 * what round-to-nearest writes, and what GPTQ and AWQ calibrate for.
 */
qpk_status qpk_tensor_plan(const qpk_convert_opts *o, const qpk_config *c, const qpk_st_tensor *src, qpk_role role,
                           int layer, const char *name, uint32_t *type, uint32_t *group, qpk_err *e);
/* How a planned tensor is finally stored: an AWQ fold-only run keeps its folded linears in f32. */
void qpk_tensor_stored(const qpk_convert_opts *o, qpk_role role, uint32_t *type, uint32_t *group);

/* ------------------------------------------ GPTQ / AWQ checkpoints (hfquant.c) */

typedef enum qpk_hfq_method { QPK_HFQ_NONE = 0, QPK_HFQ_GPTQ, QPK_HFQ_AWQ } qpk_hfq_method;

/* A checkpoint's quantization_config (or quantize_config.json), as far as the layout goes. */
typedef struct qpk_hfq {
    qpk_hfq_method method;
    int bits;          /* 4 or 8 (AWQ: 4) */
    int64_t group;     /* group_size; -1: one group per row */
    bool sym, desc_act;
    bool v2;           /* GPTQ checkpoint_format gptq_v2: zeros stored as they are (v1: zero - 1) */
    char skip[16][64]; /* AWQ's modules_to_not_convert */
    int n_skip;
} qpk_hfq;

/*
 * Reads config.json's quantization_config, or quantize_config.json (qcfg, may be NULL)
 * when config.json has none; when both are there they must agree. q->method is
 * QPK_HFQ_NONE for a float checkpoint. Unknown methods, bits, layouts are refused by name.
 */
qpk_status qpk_hfq_parse(const char *config, size_t n, const char *qcfg, size_t qn, qpk_hfq *q, qpk_err *e);
/* Whether the linear called name is one the config leaves in float (AWQ's modules_to_not_convert). */
bool qpk_hfq_skips(const qpk_hfq *q, const char *name);

/* One quantized linear of such a checkpoint, and how it imports into qpk blocks. */
typedef struct qpk_qlinear {
    const qpk_hfq *q;
    char name[QPK_MAX_NAME];   /* "model.layers.3.mlp.up_proj" */
    const qpk_st_tensor *qweight, *qzeros, *scales, *g_idx; /* g_idx may be NULL */
    int64_t rows, cols;        /* out, in (from the config) */
    int64_t groups;            /* the checkpoint's groups per row */
    uint32_t type, group;      /* the qpk type and group it imports as */
    int32_t *perm;             /* act-order: stored column j is input perm[j] (owned); else NULL */
    int32_t *groups_of;        /* g_idx, copied and checked (owned); NULL without one */
} qpk_qlinear;

/* Checks the tensors against the config and the layout, and decides type, group and permutation. */
qpk_status qpk_qlinear_init(qpk_qlinear *l, qpk_err *e);
void qpk_qlinear_free(qpk_qlinear *l);
/* Rows [r0, r0 + n) as qpk blocks (qpk_type_row_bytes each), exactly. */
qpk_status qpk_qlinear_rows(const qpk_qlinear *l, int64_t r0, int64_t n, uint8_t *out, qpk_err *e);

/* A checkpoint's quantized linear (role, layer), or NULL when that linear is float. */
const qpk_qlinear *qpk_checkpoint_qlinear(const qpk_checkpoint *ck, qpk_role role, int layer);
/* The checkpoint's quantization (method QPK_HFQ_NONE for a float one). */
const qpk_hfq *qpk_checkpoint_hfq(const qpk_checkpoint *ck);

/* ------------------------------------------------ calibration (calibrate.c) */

typedef struct qpk_calib qpk_calib;
typedef struct qpk_calib_times {
    double gather, quantize, forward; /* seconds, summed over layers */
} qpk_calib_times;

/* Draws the calibration windows and embeds them; ready for layer 0. */
qpk_status qpk_calib_begin(qpk_calib **out, qpk_checkpoint *ck, const qpk_convert_opts *o, qpk_pool *pool,
                           qpk_err *e);
/* Calibrates and quantizes layer l (layers in order, from 0); times (may be NULL) accumulate. */
qpk_status qpk_calib_layer(qpk_calib *c, int l, qpk_calib_times *times, qpk_err *e);
/* The stored form of tensor r of the layer last calibrated (valid until the next layer). */
void qpk_calib_tensor(const qpk_calib *c, qpk_role r, uint32_t *type, uint32_t *group, const void **bytes,
                      size_t *nbytes);
/* The resolved parameters it runs with. */
const qpk_calib_params *qpk_calib_params_of(const qpk_calib *c);
void qpk_calib_end(qpk_calib *c); /* NULL-safe */
double qpk_seconds(void);

/* Embedded file `name` of f, malloc'd and NUL-terminated; *data NULL when f has none. */
qpk_status qpk_read_blob(const qpk_file *f, const char *name, char **data, size_t *len, qpk_err *e);

/* ---------------------------------------------- GPTQ/AWQ export (hf_export.c) */

/* qpk_export_hf's work, into the hidden folder of d (which the caller commits or discards). */
qpk_status qpk_export_hf_into(const char *in, qpk_outdir *d, const qpk_convert_opts *o, qpk_err *e);

/* ------------------------------------------------- GGUF export (gguf_export.c) */

/* llama.cpp's name of tensor (role, layer): "token_embd.weight", "blk.3.ffn_up.weight" ... */
void qpk_gguf_tensor_name(char *buf, size_t cap, qpk_role role, int layer);

/* The refusal of an act-order linear (named by %s) in GGUF, wherever it comes from. */
#define QPK_ACT_ORDER_GGUF_MSG                                                                                         \
    "%s is act-order (its groups gather scattered input columns): no GGUF type holds it as it is; --requantize "      \
    "requantizes such linears to groups of 32 and reports the KL divergence it costs"

typedef struct qpk_gguf_export qpk_gguf_export;

qpk_status qpk_gguf_export_create(qpk_gguf_export **out, const char *path, qpk_err *e);
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
void qpk_gguf_export_next(qpk_gguf_export *x);
/* Commits the file; x is freed whatever the outcome. */
qpk_status qpk_gguf_export_finish(qpk_gguf_export *x, const qpk_callbacks *cb, qpk_err *e);

#endif
