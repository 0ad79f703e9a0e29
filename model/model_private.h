/*
 * What the model layer's readers and writers share with the layers above it inside the
 * tree (the engine, tools, tests): the Hugging Face checkpoint and its GPTQ/AWQ linears,
 * the GGUF exporter, the GGUF-as-Qwen2 checks. Never installed: qpk/model.h is the API.
 */
#ifndef QPK_MODEL_PRIVATE_H
#define QPK_MODEL_PRIVATE_H

#include <string.h>

#include "qpk/gguf.h"
#include "qpk/model.h"
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

/* ------------------------------------------------ Hugging Face folders (checkpoint.c) */

typedef struct qpk_checkpoint qpk_checkpoint;

/*
 * Opens a Hugging Face model folder: config.json, then model.safetensors or the
 * shards named by model.safetensors.index.json (checked against the shards: every
 * tensor in exactly one shard, no missing shard). Checks every tensor the config
 * implies is present with its shape and a float dtype; warns (through cb->log)
 * about unexpected tensors, and about an lm_head that differs from a tied embedding.
 */
qpk_status qpk_checkpoint_open(qpk_checkpoint **out, const char *dir, const qpk_callbacks *cb, qpk_err *e);
void qpk_checkpoint_close(qpk_checkpoint *ck); /* NULL-safe */
const qpk_config *qpk_checkpoint_config(const qpk_checkpoint *ck);
const char *qpk_checkpoint_dir(const qpk_checkpoint *ck);
/* The source of (role, layer); the head of a tied model is the embedding. A sparse layer's
 * experts are one stacked tensor, gathered here on first use (NULL if that runs out of memory). */
const qpk_st_tensor *qpk_checkpoint_tensor(const qpk_checkpoint *ck, qpk_role role, int layer);
/* Tensor (role, layer) as a qpk matrix (F64 rounded to an f32 copy, GPTQ/AWQ repacked: both kept by ck). */
/* The same tensor's name, dtype and shape without gathering experts (data may be NULL). */
const qpk_st_tensor *qpk_checkpoint_tensor_meta(const qpk_checkpoint *ck, qpk_role role, int layer);
/* Frees the gathered bytes of a stacked expert tensor (gathered again if asked for): the
 * engine's way to hold one layer's experts at a time. No-op for other tensors. */
void qpk_checkpoint_release(qpk_checkpoint *ck, qpk_role role, int layer);
qpk_status qpk_checkpoint_matrix(qpk_checkpoint *ck, qpk_role role, int layer, qpk_matrix *w, qpk_err *e);
/* The safetensors files read, in order (names relative to the folder). */
size_t qpk_checkpoint_n_files(const qpk_checkpoint *ck);
const char *qpk_checkpoint_file(const qpk_checkpoint *ck, size_t i, uint64_t *size);
/* Tensors present in the files but not used (reported as warnings at open). */
size_t qpk_checkpoint_n_ignored(const qpk_checkpoint *ck);
const char *qpk_checkpoint_ignored(const qpk_checkpoint *ck, size_t i);

/* ------------------------------------------ GPTQ / AWQ checkpoints (hfquant.c) */

typedef enum qpk_hfq_method { QPK_HFQ_NONE = 0, QPK_HFQ_GPTQ, QPK_HFQ_AWQ, QPK_HFQ_CT, QPK_HFQ_MLX } qpk_hfq_method;

#define QPK_CT_GROUPS 8   /* config groups of a compressed-tensors checkpoint */
#define QPK_CT_TARGETS 64 /* targets of one group */

/* One config group of a compressed-tensors pack-quantized checkpoint (weight-only int). */
typedef struct qpk_ct_group {
    char name[32];                         /* "group_0" */
    int bits;                              /* 4 or 8 */
    int64_t group;                         /* group_size; -1: strategy channel */
    bool sym, actorder;                    /* actorder "group": weight_g_idx */
    char targets[QPK_CT_TARGETS][96];      /* "Linear", module names, "re:" patterns */
    int n_targets;
    bool used;                             /* some linear took it (set while claiming) */
} qpk_ct_group;

/* A module MLX's quantization names: its own bits and group size, or float (bits 0). */
typedef struct qpk_mlx_module {
    char name[QPK_MAX_NAME]; /* "model.layers.0.mlp.down_proj" */
    int bits;
    int64_t group;
    bool used; /* some module of the model has that name (set while claiming) */
} qpk_mlx_module;

/* A checkpoint's quantization_config (or quantize_config.json), as far as the layout goes. */
typedef struct qpk_hfq {
    qpk_hfq_method method;
    int bits;          /* 4 or 8 (AWQ: 4) */
    int64_t group;     /* group_size; -1: one group per row */
    bool sym, desc_act;
    bool v2;           /* GPTQ checkpoint_format gptq_v2: zeros stored as they are (v1: zero - 1) */
    bool autoround;    /* AutoRound's config over the GPTQ or AWQ layout (per-linear schemes in ct) */
    /* AWQ's modules_to_not_convert; compressed-tensors' ignore; AutoRound's modules extra_config keeps float
     * (an MoE model's routers, one per layer, among them) */
    char skip[64][96];
    int n_skip;
    bool skip_used[64];              /* compressed-tensors: an ignore entry matched a module */
    /* compressed-tensors' config groups (method QPK_HFQ_CT); AutoRound's schemes (group 0 the config's, targeting
     * "Linear"; the others extra_config's, targeting the modules that share one) */
    qpk_ct_group ct[QPK_CT_GROUPS];
    int n_ct;
    qpk_mlx_module *mlx; /* MLX's per-module overrides (owned: qpk_hfq_free) */
    int n_mlx;
} qpk_hfq;

/*
 * Reads config.json's quantization_config, or quantize_config.json (qcfg, may be NULL)
 * when config.json has none; when both are there they must agree. q->method is
 * QPK_HFQ_NONE for a float checkpoint. Unknown methods, bits, layouts are refused by name.
 */
qpk_status qpk_hfq_parse(const char *config, size_t n, const char *qcfg, size_t qn, qpk_hfq *q, qpk_err *e);
/* Frees what a parse allocated (MLX's overrides); q stays a valid empty layout. */
void qpk_hfq_free(qpk_hfq *q);
/* Whether the linear called name is one the config leaves in float (AWQ's modules_to_not_convert). */
bool qpk_hfq_skips(const qpk_hfq *q, const char *name);
/*
 * compressed-tensors and AutoRound: the config group that quantizes the linear called name (*k), or -1
 * when the config leaves it in float (in ignore, or targeted by no group). The most
 * specific target wins (a module name, then a "re:" pattern, then the class "Linear"), as
 * compressed-tensors resolves them; two groups equally specific are refused. Marks the
 * groups and ignore entries that matched.
 */
qpk_status qpk_hfq_ct_scheme(qpk_hfq *q, const char *name, int *k, qpk_err *e);
/* Marks the ignore entries naming a module that is no quantizable linear (a router, the embedding): named is not
 * missing. */
void qpk_hfq_ct_mark_ignored(qpk_hfq *q, const char *name);
/* After every module was looked up: each config group quantized one, and each ignore entry that is a plain name
 * named one (lm_head always exists). */
qpk_status qpk_hfq_ct_check_used(const qpk_hfq *q, qpk_err *e);
/* The quantization of config group k as a layout of its own (compressed-tensors, AutoRound). */
void qpk_hfq_ct_layout(const qpk_hfq *q, int k, qpk_hfq *out);
/* Whether name matches a compressed-tensors target (plain name, or "re:" pattern anchored at its start). */
bool qpk_ct_match(const char *target, const char *name);

/*
 * MLX (mlx.c): config.json's "quantization" (quant) and transformers' copy of it (qc, may be
 * NULL; it must agree); the module called name's override (*k, -1 when none; marks it used),
 * an override as a layout of its own, and the check that every override named a module.
 */
typedef struct cJSON cJSON;
qpk_status qpk_mlx_parse(const cJSON *quant, const cJSON *qc, qpk_hfq *q, qpk_err *e);
void qpk_mlx_module_scheme(qpk_hfq *q, const char *name, int *k);
void qpk_mlx_layout(const qpk_hfq *q, int k, qpk_hfq *out);
qpk_status qpk_mlx_check_used(const qpk_hfq *q, qpk_err *e);

/* One quantized linear of such a checkpoint, and how it imports into qpk blocks. */
typedef struct qpk_qlinear {
    const qpk_hfq *q;
    char name[QPK_MAX_NAME];   /* "model.layers.3.mlp.up_proj" */
    /* compressed-tensors: weight_packed, weight_zero_point, weight_scale, weight_g_idx, and shape its weight_shape */
    const qpk_st_tensor *qweight, *qzeros, *scales, *g_idx; /* g_idx may be NULL */
    const qpk_st_tensor *shape;
    int64_t rows, cols;        /* out, in (from the config) */
    int64_t groups;            /* the checkpoint's groups per row */
    uint32_t type, group;      /* the qpk type and group it imports as */
    int32_t *perm;             /* act-order: stored column j is input perm[j] (owned); else NULL */
    int32_t *groups_of;        /* g_idx, copied and checked (owned); NULL without one */
    /* A stacked expert matrix: its experts, each a linear of rows / n_parts rows (the tensors above
     * are expert 0's); NULL for a plain linear. */
    struct qpk_qlinear *parts;
    int64_t n_parts;
} qpk_qlinear;

/* Checks the tensors against the config and the layout, and decides type, group and permutation. */
qpk_status qpk_qlinear_init(qpk_qlinear *l, qpk_err *e);
void qpk_qlinear_free(qpk_qlinear *l);
/* Bytes of the checkpoint's tensors it is made of. */
uint64_t qpk_qlinear_source_bytes(const qpk_qlinear *l);
/* Rows [r0, r0 + n) as qpk blocks (qpk_type_row_bytes each), exactly; a stacked one's rows run through its experts. */
qpk_status qpk_qlinear_rows(const qpk_qlinear *l, int64_t r0, int64_t n, uint8_t *out, qpk_err *e);
/* The same for an MLX module (weight, biases as qzeros, scales). */
qpk_status qpk_mlx_linear_init(qpk_qlinear *l, qpk_err *e);
void qpk_mlx_linear_rows(const qpk_qlinear *l, int64_t r0, int64_t n, uint8_t *out);

/* A checkpoint's quantized linear (role, layer), or NULL when that linear is float. */
const qpk_qlinear *qpk_checkpoint_qlinear(const qpk_checkpoint *ck, qpk_role role, int layer);
/* The checkpoint's quantization (method QPK_HFQ_NONE for a float one). */
const qpk_hfq *qpk_checkpoint_hfq(const qpk_checkpoint *ck);

/* The source's checkpoint (kind QPK_SOURCE_HF), its .qpk file (QPK_SOURCE_QPK), its GGUF (QPK_SOURCE_GGUF), else NULL. */
qpk_checkpoint *qpk_source_checkpoint(const qpk_source *s);
const qpk_file *qpk_source_qpk(const qpk_source *s);
const qpk_gguf *qpk_source_gguf(const qpk_source *s);

/* Embedded file `name` of f, malloc'd and NUL-terminated; *data NULL when f has none. */
qpk_status qpk_read_blob(const qpk_file *f, const char *name, char **data, size_t *len, qpk_err *e);

/* ---------------------------------------------------------------- GGUF (gguf_model.c) */

/*
 * A GGUF file as a Qwen-family model (general.architecture qwen2, qwen2moe, qwen3 or
 * qwen3moe, as llama.cpp names them): checks the architecture, its hyperparameters
 * (types, finite positive rope base and norm epsilon, expert counts), the tokenizer keys
 * (a gpt2 tokenizer with the qwen2 pre-tokenizer; tokens valid UTF-8; token types known;
 * every merge two tokens of the vocabulary; every special id a token), every other key of
 * the architecture (applied, such as YaRN, with the value that changes nothing, or refused
 * by name: partial rotary, other rope scalings, ...), every tensor's name, shape and type
 * (norms, biases and routers F32; experts 3-D), and the tokenizer those keys describe as
 * qpk's tokenizer loads it (and fitting the embedding); describes it as the one
 * qpk_config, computing what llama.cpp computes. Linear (n log n) in the keys, tokens and
 * merges.
 */
qpk_status qpk_gguf_qwen2(const qpk_gguf *g, qpk_config *cfg, qpk_err *e);
/* Every quantized block's f16 scales are finite. */
qpk_status qpk_gguf_check_scales(const qpk_gguf *g, qpk_err *e);
/* Tensor (role, layer) of a checked GGUF as a qpk matrix over its mapped bytes (a 3-D expert tensor: its stacked rows). */
qpk_status qpk_gguf_matrix(const qpk_gguf *g, qpk_role role, int layer, qpk_matrix *w, qpk_err *e);
/* The tokenizer.json (malloc'd) that a Qwen2 GGUF's tokenizer.ggml.* keys describe. */
qpk_status qpk_gguf_tokenizer_json(const qpk_gguf *g, char **json, size_t *len, qpk_err *e);
/* tokenizer_config.json as far as a GGUF says it (special tokens, chat template); malloc'd, NULL on OOM. */
char *qpk_gguf_tokenizer_config(const qpk_gguf *g);
/* Whether GGUF holds n int8z blocks of `group` as they are: every code minus its zero one of Q8_0's int8 codes. */
bool qpk_gguf_holds_int8z(const void *blocks, uint32_t group, uint64_t n_blocks);
/* llama.cpp's name of tensor (role, layer): "token_embd.weight", "blk.3.ffn_up_exps.weight" ... */
void qpk_gguf_tensor_name(char *buf, size_t cap, qpk_role role, int layer);
/* llama.cpp's general.architecture of a qpk architecture: "qwen2", "qwen2moe", "qwen3", "qwen3moe". */
const char *qpk_gguf_arch_name(qpk_arch a);

/* The refusal of an act-order linear (named by %s) in GGUF, wherever it comes from. */
#define QPK_ACT_ORDER_GGUF_MSG                                                                                         \
    "%s is act-order (its groups gather scattered input columns): no GGUF type holds it as it is; requantizing to " \
    "groups of 32 (the converter's requantize option) makes it fit, at a cost it measures"

#endif
