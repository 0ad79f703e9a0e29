/*
 * qpk/format.h - the .qpk file format: status codes, tensor types, the Qwen2 model
 * description, and a validating reader and an atomic streaming writer.
 *
 * The byte layout is specified in format/FORMAT.md. In short, a .qpk file is
 *
 *   [header 64 B][section directory n x 32 B][pad][tensor data, each aligned]...
 *   [META section: JSON][TENSORS section: table + names][FILES section: zlib blobs]
 *
 * all little-endian. Tensor data come first so the writer streams them in one pass
 * and writes everything that depends on them (checksums, offsets) at the end.
 *
 * Conventions of this library (and of every qpk library):
 *  - functions return a qpk_status; on failure they fill the optional qpk_err with a
 *    message naming the offending object ("tensor 'x' ends past EOF at byte N");
 *  - nothing prints, nothing exits, nothing aborts on bad input;
 *  - pointers into a file are borrowed views valid until qpk_close().
 */
#ifndef QPK_FORMAT_H
#define QPK_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QPK_VERSION_STRING "0.1.0"

/*
 * What libqpk exports: every function declared with QPK_API, and nothing else (the
 * library is built with hidden visibility). Declarations in a header's
 * QPK_STATIC_LINKING_ONLY section are qpk's own machinery, reachable only by linking
 * libqpk.a with that macro defined, and not stable.
 */
#ifndef QPK_API
#define QPK_API __attribute__((visibility("default")))
#endif

/* ===================================================================== status == */

/* Frozen once released: values are never renumbered, new ones are appended. */
typedef enum qpk_status {
    QPK_OK = 0,
    QPK_E_INVALID_ARG = 1, /* the caller passed something impossible */
    QPK_E_IO = 2,          /* the OS refused: open, read, write, mmap, fsync, rename */
    QPK_E_NOMEM = 3,
    QPK_E_CORRUPT = 4,     /* bytes that do not follow their format */
    QPK_E_UNSUPPORTED = 5, /* well-formed, but not something qpk implements */
    QPK_E_MISMATCH = 6,    /* inputs disagree: missing tensor, wrong shape, config conflict */
    QPK_E_CHECKSUM = 7,    /* stored and computed xxh3 differ */
    QPK_E_LIMIT = 8,       /* a size or count past a documented limit */
    QPK_E_VALUE = 9,       /* a number qpk refuses: NaN, inf, overflow on conversion */
    QPK_E_CANCELLED = 10,  /* the caller's cancel callback asked to stop */
    QPK_STATUS_COUNT
} qpk_status;

/* Where a failed call explains itself. Always optional (NULL is accepted). */
typedef struct qpk_err {
    qpk_status status;
    char msg[768];
} qpk_err;

/* Static text for a status code ("corrupt input", ...). Never NULL. */
QPK_API const char *qpk_strerror(qpk_status s);

/* Fills e (if not NULL) and returns s. Used by every qpk library to report. */
QPK_API qpk_status qpk_err_setf(qpk_err *e, qpk_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Prepends "context: " to the message of e (if not NULL) that the failure s filled, and
 * returns s: `return qpk_err_prefix(e, s, "tensor '%s'", name);` forwards the failure
 * whether or not the caller passed an e (e->status becomes s too).
 */
QPK_API qpk_status qpk_err_prefix(qpk_err *e, qpk_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ====================================================================== types == */

/*
 * Tensor element types stored in a .qpk. Ids are part of the file format.
 * 0..15 are plain element types; 16..63 are reserved for group-quantized types,
 * whose tensors carry a group size (the number of consecutive weights along the
 * last, input dimension that share one scale). See FORMAT.md.
 */
typedef enum qpk_type {
    QPK_TYPE_F32 = 0,
    QPK_TYPE_F16 = 1,
    QPK_TYPE_BF16 = 2,
    QPK_TYPE_I32 = 3, /* integers: an input permutation (format version 2) */
    /* Group-quantized (FORMAT.md section 6 gives each block layout): */
    QPK_TYPE_INT8 = 16,  /* symmetric: w = d * q, q in [-127, 127] */
    QPK_TYPE_INT4 = 17,  /* asymmetric: w = d * (q - z), q and z in [0, 15] */
    QPK_TYPE_INT4S = 18, /* symmetric: w = d * q, q in [-8, 7] */
    QPK_TYPE_INT8Z = 19, /* asymmetric 8-bit: w = d * (q - z), q in [0, 255], z in [0, 256] */
    /* ggml's block types, byte for byte (a GGUF file's tensors as they are; ggml's Q8_0 and
     * Q4_0 are int8 and int4s with groups of 32): */
    QPK_TYPE_Q4_1 = 20, /* 32 weights: f16 d, f16 m, 4-bit codes; w = d q + m */
    QPK_TYPE_Q5_0 = 21, /* 32 weights: f16 d, 5-bit codes; w = d (q - 16) */
    QPK_TYPE_Q5_1 = 22, /* 32 weights: f16 d, f16 m, 5-bit codes; w = d q + m */
    QPK_TYPE_Q2_K = 23, /* 256 weights in 16 of 16: 4-bit scales and mins, 2-bit codes */
    QPK_TYPE_Q3_K = 24, /* 256 weights in 16 of 16: 6-bit scales, 3-bit codes */
    QPK_TYPE_Q4_K = 25, /* 256 weights in 8 of 32: 6-bit scales and mins, 4-bit codes */
    QPK_TYPE_Q5_K = 26, /* 256 weights in 8 of 32: 6-bit scales and mins, 5-bit codes */
    QPK_TYPE_Q6_K = 27, /* 256 weights in 16 of 16: 8-bit scales, 6-bit codes */
    /* MLX's affine groups (mlx-lm's quantized checkpoints), scale s and bias b in the model's dtype: w = s q + b */
    QPK_TYPE_MLX4 = 28,     /* bf16 s, bf16 b, 4-bit codes */
    QPK_TYPE_MLX8 = 29,     /* bf16 s, bf16 b, 8-bit codes */
    QPK_TYPE_MLX4_F16 = 30, /* f16 s, f16 b, 4-bit codes */
    QPK_TYPE_MLX8_F16 = 31, /* f16 s, f16 b, 8-bit codes */
    /* ggml's i-quants (format version 5): codes index ggml's codebooks; then its ternary types */
    QPK_TYPE_IQ4_NL = 32, /* 32 weights: f16 d, 4-bit indices into 16 non-linear values v; w = d v[q] */
    QPK_TYPE_IQ4_XS = 33, /* 256 weights in 8 of 32: 6-bit scales, IQ4_NL's values; w = (d (sc - 32)) v[q] */
    /* 256 weights, each 8 (4) a codebook entry with signs, scaled per sub-block of 32 (16) */
    QPK_TYPE_IQ2_XXS = 34, /* 2.0625 bits: 8-bit entries of 8, 7-bit sign sets, 4-bit scales */
    QPK_TYPE_IQ2_XS = 35,  /* 2.3125 bits: 9-bit entries of 8, 7-bit sign sets, 4-bit scales per 16 */
    QPK_TYPE_IQ2_S = 36,   /* 2.5625 bits: 10-bit entries of 8, 8 signs, 4-bit scales per 16 */
    QPK_TYPE_IQ3_XXS = 37, /* 3.0625 bits: 8-bit entries of 4, 7-bit sign sets, 4-bit scales */
    QPK_TYPE_IQ3_S = 38,   /* 3.4375 bits: 9-bit entries of 4, 8 signs, 4-bit scales */
    QPK_TYPE_IQ1_S = 39,   /* 1.5625 bits: 11-bit entries of 8 values -1..1, a shift of +-1/8, 3-bit scales */
    QPK_TYPE_IQ1_M = 40,   /* 1.75 bits: as IQ1_S, 3-bit scales per 16, the f16 d spread over the scales */
    QPK_TYPE_TQ1_0 = 41,   /* 1.6875 bits: ternary, 5 trits a byte; w = d (t - 1) */
    QPK_TYPE_TQ2_0 = 42,   /* 2.0625 bits: ternary in 2-bit codes; w = d (q - 1) */
    QPK_TYPE_COUNT_ /* one past the largest id this build knows */
} qpk_type;

/*
 * What each type is, as stored: one row per type (format/types.c), and every rule
 * that depends on a type (sizes, group sizes, names, the GGUF type) asks this table.
 * Plain types store elements; block types store a row as blocks of weights, each block
 * `head_bytes` of parameters (scale, zero point) then the weights' `bits`-bit codes.
 * Some block types fix their block (as ggml's do); the others take a group size per
 * tensor: a positive multiple of QPK_GROUP_QUANTUM that divides the row.
 */
typedef struct qpk_type_info {
    const char *name;    /* "f32", "int4s", ... as the tools spell it */
    uint32_t elem_bytes; /* plain types: bytes per element; 0 for block types */
    uint32_t bits;       /* block types: bits per code */
    uint32_t head_bytes; /* block types: bytes of a block besides its codes (before them, except in ggml's types) */
    uint32_t block;      /* weights per block when the type fixes it; 0: the tensor's group size */
    int32_t ggml_type;   /* the GGUF type it is written as (types with a group: in blocks of 32), or -1 */
    int32_t scale_at[2]; /* block types: byte offsets of the scales in a block (-1: none), f16 unless scale_bf16 */
    bool scale_bf16;     /* the scales at scale_at are bf16 */
    bool scale_nibbles;  /* the f16 at scale_at[0] is the top nibbles of four u16s, the first lowest (ggml's IQ1_M) */
    /* ggml's name for ggml_type when a GGUF tensor of that type is read as this type, its bytes
     * as they are (at `block`, or in groups of 32); NULL when ggml_type is only what this type
     * is written as (int4 as Q4_1, int8z as Q8_0), or none. */
    const char *ggml_name;
    uint32_t file_type; /* llama.cpp's LLAMA_FTYPE of a GGUF whose linears are mostly this type */
    bool quant_target;  /* whether a conversion quantizes linears to it (--quant; qpk_quant_type_list) */
    uint32_t version;   /* the .qpk format version that brought it (FORMAT.md section 10): a file holding it has at least this */
    uint32_t folders;   /* the model-folder layouts (QPK_FOLDER_*) whose packed linears hold it as it is */
} qpk_type_info;

/* qpk_type_info.folders: a GPTQ folder packs 4- or 8-bit codes on a grid with one f16 scale and
 * one integer zero point per group (int4, int4s, int8, int8z); AWQ's GEMM layout, 4-bit ones;
 * compressed-tensors' pack-quantized, the same as GPTQ (symmetric ones without zero points). */
#define QPK_FOLDER_GPTQ 1u
#define QPK_FOLDER_AWQ 2u
#define QPK_FOLDER_CT 4u
/* MLX (mlx-lm): the affine types as they are, in groups of 32, 64 or 128 */
#define QPK_FOLDER_MLX 8u

/* Group sizes of the types that take one are multiples of this (whole 16-byte halves of 4-bit codes). */
#define QPK_GROUP_QUANTUM 32
#define QPK_MAX_GROUP (1u << 20)

/* The row of a type id, NULL for an id this build does not know. */
QPK_API const qpk_type_info *qpk_type_info_of(uint32_t type);
/* "f32", "f16", "bf16", ...; NULL for an id this build does not know. */
QPK_API const char *qpk_type_name(uint32_t type);
/* Parses a name as printed by qpk_type_name (case-insensitive). Returns false if unknown. */
QPK_API bool qpk_type_from_name(const char *name, qpk_type *out);
/* True for the block (quantized) types, which need a group size. */
QPK_API bool qpk_type_is_quantized(uint32_t type);
/* Whether a conversion's --quant may name this type (its row's quant_target). */
QPK_API bool qpk_type_is_quant_target(uint32_t type);
/*
 * The names of the types --quant takes, in id order, joined by sep, the last two by last
 * (", " and " or ": "int8, int4, ... or q6_k"; " | " twice for a usage line). Written into
 * buf as snprintf would (NUL-terminated when cap > 0, cut short when it does not fit);
 * returns the length of the whole list.
 */
QPK_API size_t qpk_quant_type_list(char *buf, size_t cap, const char *sep, const char *last);
/*
 * The group rule, the one place it is written: plain types take group 0; block types
 * with a fixed block take exactly that block, the others a positive multiple of
 * QPK_GROUP_QUANTUM up to QPK_MAX_GROUP; for block types, cols must be whole blocks
 * (cols = 0 asks about the group alone, before a row is known).
 */
QPK_API bool qpk_group_ok(uint32_t type, uint32_t group, int64_t cols);
/* Bytes of one block of `group` weights (its parameters and codes); 0 for plain types. */
QPK_API size_t qpk_type_block_bytes(uint32_t type, uint32_t group);
/* The first of n blocks whose scale (or min, or bias) is NaN or infinite, or n: such a block poisons every sum it enters. */
QPK_API uint64_t qpk_first_bad_scale(uint32_t type, uint32_t group, const void *blocks, uint64_t n);
/* Bytes of one row of cols weights, or 0 when the type is unknown or the group breaks the rule. */
QPK_API size_t qpk_type_row_bytes(uint32_t type, uint32_t group, int64_t cols);

/*
 * Bytes a tensor of this type and shape occupies, with every multiplication
 * checked for overflow. Validates the group size against the type and the last
 * dimension. ndim in 1..QPK_MAX_DIMS, dims >= 0.
 */
#define QPK_MAX_DIMS 4
QPK_API qpk_status qpk_tensor_nbytes(uint32_t type, uint32_t group_size, int ndim, const int64_t *dims,
                             uint64_t *out, qpk_err *e);

/* ========================================================== model description == */

/* Limits that keep a hostile config from asking for absurd allocations. */
#define QPK_MAX_VOCAB (1LL << 24)
#define QPK_MAX_HIDDEN (1LL << 17)
#define QPK_MAX_LAYERS 1024
#define QPK_MAX_EXPERTS 1024
#define QPK_MAX_HEADS 1024

/* The architectures of the Qwen family, by config.json's model_type. */
typedef enum qpk_arch {
    QPK_ARCH_QWEN2 = 0, /* "qwen2": Qwen1.5, Qwen2, Qwen2.5 dense */
    QPK_ARCH_QWEN2_MOE, /* "qwen2_moe": Qwen1.5-MoE, Qwen2-MoE (shared expert) */
    QPK_ARCH_QWEN3,     /* "qwen3": q/k norms, explicit head_dim, optional biases */
    QPK_ARCH_QWEN3_MOE, /* "qwen3_moe": Qwen3 attention, experts without a shared one */
    QPK_ARCH_COUNT_
} qpk_arch;
QPK_API const char *qpk_arch_name(qpk_arch a);  /* config.json's model_type */
QPK_API const char *qpk_arch_class(qpk_arch a); /* its "architectures" entry, "Qwen2MoeForCausalLM" */

/* transformers' "yarn" rope type (static); factor 0 when rope_scaling is absent. */
typedef struct qpk_yarn {
    double factor;           /* > 1... or exactly 1 */
    double attention_factor; /* cos/sin scale: given, or from factor and mscale/mscale_all_dim */
    double beta_fast, beta_slow;
    double mscale, mscale_all_dim; /* 0 when absent */
    int64_t original_max_position_embeddings; /* the pretrained context L */
} qpk_yarn;

/*
 * The one description of a Qwen-family model that the converter, the runtime and the
 * exporters share. Parsed from an HF config.json, or from the "config" object of a
 * .qpk's metadata (the same keys, normalized: every field present).
 */
typedef struct qpk_config {
    qpk_arch arch;
    int64_t vocab_size;
    int64_t hidden_size;
    int64_t intermediate_size; /* dense layers' MLP */
    int64_t n_layers;   /* num_hidden_layers */
    int64_t n_heads;    /* num_attention_heads */
    int64_t n_kv_heads; /* num_key_value_heads (absent in old configs: = n_heads) */
    int64_t head_dim;   /* explicit head_dim, else hidden_size / n_heads */
    int64_t max_position_embeddings;
    double rope_theta;
    double rms_norm_eps;
    bool tie_word_embeddings;
    bool use_sliding_window;
    int64_t sliding_window;
    int64_t max_window_layers;
    bool attention_bias;  /* qwen3: biases on q/k/v/o; qwen2 family: always on q/k/v, never o */
    qpk_yarn yarn;        /* rope_scaling {"type": "yarn", ...}; yarn.factor == 0: plain RoPE */
    /* Mixture of experts (qwen2_moe, qwen3_moe; 0 elsewhere). */
    int64_t n_experts;              /* num_experts */
    int64_t n_experts_used;         /* num_experts_per_tok */
    int64_t moe_intermediate_size;  /* each expert's */
    int64_t shared_expert_intermediate_size; /* qwen2_moe only */
    int64_t decoder_sparse_step;    /* layer i is sparse when (i + 1) % step == 0 ... */
    bool norm_topk_prob;            /* renormalize the top-k probabilities to sum to 1 */
    uint64_t mlp_only_layers[QPK_MAX_LAYERS / 64]; /* ... and i is not in this set */
    char hidden_act[16];  /* only "silu" is accepted */
    char torch_dtype[16]; /* informational: "bfloat16", "float32", ... ("" if absent) */
    int64_t bos_token_id; /* -1 if absent or null */
    int n_eos;            /* eos_token_id may be one id or a list */
    int64_t eos_token_ids[8];
} qpk_config;

/* Whether layer l of c runs the sparse MoE block (else the dense MLP). */
QPK_API bool qpk_layer_is_sparse(const qpk_config *c, int layer);
/* The first .qpk format version that describes c: 1, or 3 for the family beyond dense qwen2
 * with plain RoPE (FORMAT.md, section 10). */
QPK_API uint32_t qpk_config_min_version(const qpk_config *c);
/* Whether c is a mixture-of-experts architecture. */
QPK_API bool qpk_config_is_moe(const qpk_config *c);

/*
 * Parses config.json text (len bytes, need not be NUL-terminated) into c.
 * Rejects by name a model_type outside the family, a hidden_act other than silu, a rope
 * type other than yarn, inconsistent head or expert counts, and values past the limits above.
 */
QPK_API qpk_status qpk_config_parse(qpk_config *c, const char *json, size_t len, qpk_err *e);

/*
 * The rules every description must pass, whoever filled it (config.json, a GGUF's keys):
 * each hyperparameter within its limit, rope base and epsilon positive and finite, silu,
 * consistent head and expert counts, yarn parameters in range, special ids in the vocabulary.
 * Messages name config.json's keys.
 */
QPK_API qpk_status qpk_config_check(qpk_config *c, qpk_err *e);

/* Normalized JSON of c (HF key names, every field present). malloc'd; free() it. NULL on OOM. */
QPK_API char *qpk_config_to_json(const qpk_config *c);

/* The tensors of a Qwen2 model, each a role, with per-layer roles repeated per layer. */
typedef enum qpk_role {
    QPK_ROLE_EMBED = 0, /* model.embed_tokens.weight        [vocab, hidden] */
    QPK_ROLE_ATTN_NORM, /* model.layers.N.input_layernorm.weight   [hidden] */
    QPK_ROLE_Q,         /* ...self_attn.q_proj.weight  [heads*hd, hidden] */
    QPK_ROLE_Q_BIAS,    /* ...self_attn.q_proj.bias    [heads*hd] */
    QPK_ROLE_K,         /* ...self_attn.k_proj.weight  [kv*hd, hidden] */
    QPK_ROLE_K_BIAS,
    QPK_ROLE_V,         /* ...self_attn.v_proj.weight  [kv*hd, hidden] */
    QPK_ROLE_V_BIAS,
    QPK_ROLE_O,         /* ...self_attn.o_proj.weight  [hidden, heads*hd] */
    QPK_ROLE_FFN_NORM,  /* ...post_attention_layernorm.weight [hidden] */
    QPK_ROLE_GATE,      /* ...mlp.gate_proj.weight     [inter, hidden] */
    QPK_ROLE_UP,        /* ...mlp.up_proj.weight       [inter, hidden] */
    QPK_ROLE_DOWN,      /* ...mlp.down_proj.weight     [hidden, inter] */
    QPK_ROLE_FINAL_NORM,/* model.norm.weight           [hidden] */
    QPK_ROLE_LM_HEAD,   /* lm_head.weight              [vocab, hidden] (untied only) */
    QPK_ROLE_Q_NORM,    /* ...self_attn.q_norm.weight  [hd] (qwen3) */
    QPK_ROLE_K_NORM,    /* ...self_attn.k_norm.weight  [hd] (qwen3) */
    QPK_ROLE_O_BIAS,    /* ...self_attn.o_proj.bias    [hidden] (qwen3 with attention_bias) */
    QPK_ROLE_ROUTER,    /* ...mlp.gate.weight          [experts, hidden] (sparse layers; float) */
    /* Sparse layers' experts, stacked: expert e owns rows [e*R, (e+1)*R) of a [experts*R, C] matrix
     * (HF stores them one by one as ...mlp.experts.E.gate_proj.weight [R, C]). */
    QPK_ROLE_EXP_GATE,  /* ...mlp.experts.gate_proj.weight [experts*moe_inter, hidden] */
    QPK_ROLE_EXP_UP,    /* ...mlp.experts.up_proj.weight   [experts*moe_inter, hidden] */
    QPK_ROLE_EXP_DOWN,  /* ...mlp.experts.down_proj.weight [experts*hidden, moe_inter] */
    QPK_ROLE_SHEXP_ROUTER, /* ...mlp.shared_expert_gate.weight [1, hidden] (qwen2_moe; float) */
    QPK_ROLE_SHEXP_GATE,   /* ...mlp.shared_expert.gate_proj.weight [shared_inter, hidden] */
    QPK_ROLE_SHEXP_UP,
    QPK_ROLE_SHEXP_DOWN,   /* ...mlp.shared_expert.down_proj.weight [hidden, shared_inter] */
    QPK_ROLE_COUNT_
} qpk_role;

#define QPK_MAX_NAME 256

/*
 * Every role a decoder layer may have, in the order qpk files store them and the forward
 * pass reads them; qpk_layer_has_role says which ones layer l of a model has.
 */
#define QPK_LAYER_ROLES 23
QPK_API qpk_role qpk_layer_role(int i); /* 0 <= i < QPK_LAYER_ROLES */
QPK_API bool qpk_layer_has_role(const qpk_config *c, qpk_role r, int layer);

/* True for roles that exist once per layer. */
QPK_API bool qpk_role_is_per_layer(qpk_role r);
/* True for the 2-D weights that multiply activations and may be quantized (linears, experts,
 * embed, head); routers are 2-D but stay float, as every tool keeps them. */
QPK_API bool qpk_role_is_matrix(qpk_role r);
/* True for the stacked expert matrices. */
QPK_API bool qpk_role_is_expert(qpk_role r);

/*
 * The tensors a model with config c must have, in the canonical order qpk files
 * store them (embedding, then layer by layer in the order the forward pass reads
 * them, final norm, head). lm_head is listed only when untied.
 */
QPK_API size_t qpk_model_n_tensors(const qpk_config *c);
QPK_API void qpk_model_tensor_at(const qpk_config *c, size_t i, qpk_role *role, int *layer);

/* The HF name of (role, layer), e.g. "model.layers.3.mlp.up_proj.weight". Returns its length. */
QPK_API int qpk_tensor_name(char *buf, size_t cap, qpk_role role, int layer);
/*
 * The name of a linear's input permutation, e.g. "model.layers.3.mlp.up_proj.perm": in a
 * version 2 file, an i32 tensor [in] beside the weight. The runtime feeds the linear
 * x[perm[0]], x[perm[1]], ...: its columns are stored in that order (so that an
 * act-order GPTQ checkpoint's groups are contiguous). Returns the length, 0 for a role
 * that is not a per-layer linear.
 */
QPK_API int qpk_perm_name(char *buf, size_t cap, qpk_role role, int layer);
/* Shape implied by the config. Returns ndim (1 or 2). */
QPK_API int qpk_role_shape(const qpk_config *c, qpk_role role, int64_t dims[2]);
/* Inverse of qpk_tensor_name. False if the name is not a tensor a model with config c has. */
QPK_API bool qpk_tensor_role(const qpk_config *c, const char *name, qpk_role *role, int *layer);
/* Hugging Face's name of one expert of a stacked role, "model.layers.3.mlp.experts.7.up_proj.weight". */
QPK_API int qpk_expert_tensor_name(char *buf, size_t cap, qpk_role role, int layer, int expert);
/* Its inverse: false unless name is an expert of a sparse layer of c. */
QPK_API bool qpk_expert_tensor_role(const qpk_config *c, const char *name, qpk_role *role, int *layer, int *expert);

/* ================================================================ .qpk reader == */

typedef struct qpk_file qpk_file;

/* One row of the tensor table, with data pointing into the mapped file. */
typedef struct qpk_tensor {
    const char *name; /* NUL-terminated copy owned by the qpk_file */
    uint32_t type;    /* a qpk_type */
    uint32_t group_size;
    int ndim;
    int64_t dims[QPK_MAX_DIMS]; /* outermost first ([out, in] for a linear weight) */
    uint64_t offset;            /* absolute byte offset in the file */
    uint64_t nbytes;
    uint64_t xxh3;              /* XXH3-64 (seed 0) of the nbytes bytes */
    const void *data;
} qpk_tensor;

typedef struct qpk_open_opts {
    uint32_t max_tensors;    /* 0: default 1,000,000 */
    uint64_t max_meta_bytes; /* 0: default 64 MiB */
    bool verify_checksums;   /* hash every tensor at open (otherwise: qpk_verify_tensor) */
} qpk_open_opts;

/*
 * Maps path and validates everything before exposing any pointer: magic, version,
 * header and section checksums, every offset and size against the file, tensor
 * alignment and overlaps, names, types and group sizes, the metadata JSON and its
 * model config. opts may be NULL.
 */
QPK_API qpk_status qpk_open(qpk_file **out, const char *path, const qpk_open_opts *opts, qpk_err *e);
/* Same validation over a caller-owned buffer (which must outlive the handle). */
QPK_API qpk_status qpk_open_memory(qpk_file **out, const void *buf, size_t size, const qpk_open_opts *opts,
                           qpk_err *e);
QPK_API void qpk_close(qpk_file *f); /* NULL-safe */
/* Whether path is a readable file that starts with the .qpk magic (which says nothing of the rest). */
QPK_API bool qpk_is_qpk_file(const char *path);

QPK_API uint32_t qpk_file_version(const qpk_file *f);
QPK_API uint64_t qpk_file_size(const qpk_file *f);
QPK_API uint32_t qpk_file_alignment(const qpk_file *f);
QPK_API size_t qpk_n_tensors(const qpk_file *f);
QPK_API const qpk_tensor *qpk_tensor_at(const qpk_file *f, size_t i);
QPK_API const qpk_tensor *qpk_find_tensor(const qpk_file *f, const char *name); /* NULL if absent */
/* The metadata JSON (not NUL-terminated; *len bytes). */
QPK_API const char *qpk_metadata(const qpk_file *f, size_t *len);
/* The model description parsed from the metadata at open. */
QPK_API const qpk_config *qpk_file_config(const qpk_file *f);

/* Recomputes tensor i's XXH3 and compares it with the table; checks that its scales are finite. */
QPK_API qpk_status qpk_verify_tensor(const qpk_file *f, size_t i, qpk_err *e);

/*
 * Checks that the file holds exactly the tensors its config implies, each with
 * the implied shape (extra tensors are an error too). Quantized types allowed.
 */
QPK_API qpk_status qpk_check_model(const qpk_file *f, qpk_err *e);

/* Embedded files (tokenizer.json, ...): count, and name/size of each. */
QPK_API size_t qpk_n_blobs(const qpk_file *f);
QPK_API const char *qpk_blob_name(const qpk_file *f, size_t i, uint64_t *raw_size);
/*
 * Inflates blob `name` into buf (cap bytes). Query the size first with
 * qpk_blob_name or with buf = NULL (then *len gets the size and QPK_OK is returned).
 * Verifies the blob's XXH3. QPK_E_MISMATCH if there is no such blob.
 */
QPK_API qpk_status qpk_blob_read(const qpk_file *f, const char *name, void *buf, size_t cap, size_t *len,
                         qpk_err *e);

/* ================================================================ .qpk writer == */

typedef struct qpk_writer qpk_writer;

/*
 * Starts writing path. Data go to an unnamed temporary file in the same folder
 * (O_TMPFILE, or a hidden mkstemp file where the filesystem lacks it); path
 * itself appears only in qpk_writer_finish, complete and fsync'd, by rename.
 */
QPK_API qpk_status qpk_writer_create(qpk_writer **out, const char *path, qpk_err *e);

/* Begins a tensor: its bytes follow through qpk_writer_write, exactly nbytes of them. */
QPK_API qpk_status qpk_writer_begin_tensor(qpk_writer *w, const char *name, uint32_t type,
                                   uint32_t group_size, int ndim, const int64_t *dims,
                                   qpk_err *e);
QPK_API qpk_status qpk_writer_write(qpk_writer *w, const void *data, size_t n, qpk_err *e);
QPK_API qpk_status qpk_writer_end_tensor(qpk_writer *w, qpk_err *e);
/* The XXH3 of the tensor last ended (what its table entry will hold). */
QPK_API uint64_t qpk_writer_last_xxh3(const qpk_writer *w);

/* Adds an embedded file (stored zlib-compressed). At most 64 blobs, names up to 255 bytes. */
QPK_API qpk_status qpk_writer_add_blob(qpk_writer *w, const char *name, const void *data, size_t n,
                               qpk_err *e);

/*
 * Writes metadata (a JSON object, validated), the tensor table and the header,
 * fsyncs, renames into place and fsyncs the folder. The header's version is the
 * metadata's format_version, which must be at least every tensor type's (the type
 * row's version: QPK_E_INVALID_ARG naming the tensor otherwise). Frees w whatever the outcome;
 * on failure nothing is left at path (an existing file there is untouched).
 */
QPK_API qpk_status qpk_writer_finish(qpk_writer *w, const char *meta_json, size_t meta_len, qpk_err *e);

/* Abandons the file: removes the temporary, frees w. NULL-safe. */
QPK_API void qpk_writer_discard(qpk_writer *w);

#ifdef __cplusplus
}
#endif
#endif /* QPK_FORMAT_H */
