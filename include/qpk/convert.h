/*
 * qpk/convert.h - reading Hugging Face checkpoints (safetensors, sharded or not,
 * config.json, tokenizer files) and converting them to .qpk.
 */
#ifndef QPK_CONVERT_H
#define QPK_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpk/format.h"
#include "qpk/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================ safetensors == */

/* Every dtype of the safetensors spec, so any valid file parses; weights accept F64..BF16. */
typedef enum qpk_st_dtype {
    QPK_ST_F64, QPK_ST_F32, QPK_ST_F16, QPK_ST_BF16,
    QPK_ST_I64, QPK_ST_I32, QPK_ST_I16, QPK_ST_I8,
    QPK_ST_U64, QPK_ST_U32, QPK_ST_U16, QPK_ST_U8,
    QPK_ST_BOOL, QPK_ST_F8_E4M3, QPK_ST_F8_E5M2,
    QPK_ST_DTYPE_COUNT_
} qpk_st_dtype;

const char *qpk_st_dtype_name(qpk_st_dtype d); /* "BF16", ... */
size_t qpk_st_dtype_size(qpk_st_dtype d);

#define QPK_ST_MAX_DIMS 8
#define QPK_ST_MAX_HEADER 100000000u /* bytes of JSON header accepted */

typedef struct qpk_st_tensor {
    const char *name;
    qpk_st_dtype dtype;
    int ndim;
    int64_t shape[QPK_ST_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;
    const void *data; /* into the mapping; valid until the file is closed */
} qpk_st_tensor;

typedef struct qpk_safetensors qpk_safetensors;

/*
 * Maps and validates one .safetensors file: header length (<= 100,000,000 and
 * inside the file), UTF-8 JSON, known dtypes, every span inside the data area,
 * equal to numel x dtype size, no overlaps or holes, no duplicate names.
 */
qpk_status qpk_st_open(qpk_safetensors **out, const char *path, qpk_err *e);
/* The same over a caller-owned buffer (kept until close). */
qpk_status qpk_st_open_memory(qpk_safetensors **out, const void *buf, size_t size, qpk_err *e);
void qpk_st_close(qpk_safetensors *st); /* NULL-safe */
size_t qpk_st_n_tensors(const qpk_safetensors *st);
const qpk_st_tensor *qpk_st_tensor_at(const qpk_safetensors *st, size_t i); /* sorted by name */
const qpk_st_tensor *qpk_st_find(const qpk_safetensors *st, const char *name);
uint64_t qpk_st_file_size(const qpk_safetensors *st);

/*
 * Writing safetensors as transformers saves them: one model.safetensors, or shards
 * model-0000i-of-0000N.safetensors with model.safetensors.index.json. The tensors are
 * declared first (name, dtype, shape, bytes, shard: shards numbered from 0, in order);
 * their bytes then stream in, in order, in pieces of any size. Every file appears
 * atomically; metadata {"format": "pt"}.
 */
typedef struct qpk_st_entry {
    char name[256];
    qpk_st_dtype dtype;
    int ndim;
    int64_t shape[4];
    uint64_t nbytes;
    int shard;
} qpk_st_entry;

typedef struct qpk_st_set qpk_st_set;

/* Shards in order, each at most max_bytes of tensor data (a larger tensor alone in its own). */
void qpk_st_assign_shards(qpk_st_entry *t, size_t n, uint64_t max_bytes);
qpk_status qpk_st_set_create(qpk_st_set **out, const char *dir, const qpk_st_entry *t, size_t n, qpk_err *e);
qpk_status qpk_st_set_write(qpk_st_set *s, const void *data, size_t n, qpk_err *e);
/* Commits the last shard and, for several, the index; frees s whatever the outcome. */
qpk_status qpk_st_set_finish(qpk_st_set *s, qpk_err *e);
void qpk_st_set_discard(qpk_st_set *s); /* NULL-safe; committed shards stay */
/* A small file dir/name with these bytes, atomically. */
qpk_status qpk_write_text_file(const char *dir, const char *name, const char *text, size_t n, qpk_err *e);

/* ================================================================ checkpoint == */

typedef enum qpk_log_level { QPK_LOG_INFO, QPK_LOG_WARN } qpk_log_level;

/* How a long operation talks to its caller. Every member may be NULL. */
typedef struct qpk_callbacks {
    void (*log)(void *ud, qpk_log_level level, const char *msg);
    /* Called as work advances: bytes (or steps) done of total, and what is being done. */
    void (*progress)(void *ud, const char *what, uint64_t done, uint64_t total);
    /* Polled between units of work; returning true stops with QPK_E_CANCELLED. */
    bool (*cancel)(void *ud);
    void *ud;
} qpk_callbacks;

typedef struct qpk_checkpoint qpk_checkpoint;

/*
 * Opens a Hugging Face model folder: config.json, then model.safetensors or the
 * shards named by model.safetensors.index.json (checked against the shards: every
 * tensor in exactly one shard, no missing shard). Checks every tensor the config
 * implies is present with its shape and a float dtype; warns (through cb->log)
 * about unexpected tensors, and about an lm_head that differs from a tied embedding.
 */
qpk_status qpk_checkpoint_open(qpk_checkpoint **out, const char *dir, const qpk_callbacks *cb,
                               qpk_err *e);
void qpk_checkpoint_close(qpk_checkpoint *ck); /* NULL-safe */
const qpk_config *qpk_checkpoint_config(const qpk_checkpoint *ck);
/* The source of (role, layer); the head of a tied model is the embedding. */
const qpk_st_tensor *qpk_checkpoint_tensor(const qpk_checkpoint *ck, qpk_role role, int layer);
/*
 * A runtime model over the checkpoint's mapped tensors, used in place (F64 tensors,
 * which the kernels do not take, are converted to f32 copies that ck owns). The
 * checkpoint must outlive the model.
 */
qpk_status qpk_checkpoint_model(qpk_model **out, qpk_checkpoint *ck, qpk_err *e);
/* The safetensors files read, in order (names relative to the folder). */
size_t qpk_checkpoint_n_files(const qpk_checkpoint *ck);
const char *qpk_checkpoint_file(const qpk_checkpoint *ck, size_t i, uint64_t *size);
/* Tensors present in the files but not used (reported as warnings at open). */
size_t qpk_checkpoint_n_ignored(const qpk_checkpoint *ck);
const char *qpk_checkpoint_ignored(const qpk_checkpoint *ck, size_t i);

/*
 * Reads a small file of the model folder (config.json, tokenizer.json, ...) into a
 * malloc'd buffer. A file that holds only a relative path to another file (how git
 * stores a symbolic link where links are not supported) is followed once.
 * QPK_E_IO with errno ENOENT semantics -> *missing = true (if missing != NULL).
 */
qpk_status qpk_read_model_file(const char *dir, const char *name, char **data, size_t *len,
                               bool *missing, qpk_err *e);

/* A whole file (at most 512 MiB) into a malloc'd, NUL-terminated buffer. */
qpk_status qpk_read_file(const char *path, char **data, size_t *len, qpk_err *e);

/*
 * The tokenizer.json of src, malloc'd: a .qpk's embedded copy, a model folder's file, the
 * one a GGUF's tokenizer keys describe, or src itself when it is none of these.
 * QPK_E_MISMATCH for a .qpk that embeds none.
 */
qpk_status qpk_read_tokenizer_json(const char *src, char **json, size_t *len, qpk_err *e);

/*
 * Tokenizes the text file at path with model's tokenizer (model as for
 * qpk_read_tokenizer_json) as Hugging Face's encode(text, add_special_tokens=False)
 * does, with special-token strings in the text kept as text. *ids is malloc'd;
 * *hash (may be NULL) gets the XXH3 of the file's bytes.
 */
qpk_status qpk_tokenize_file(const char *model, const char *path, int32_t **ids, size_t *n, uint64_t *hash,
                             qpk_err *e);

/*
 * Reads a file of raw little-endian int32 token ids into a malloc'd array (free() it).
 * QPK_E_CORRUPT if the size is not a multiple of 4. Ids are not range-checked here:
 * the runtime checks them against the model.
 */
qpk_status qpk_read_tokens(const char *path, int32_t **ids, size_t *n, qpk_err *e);

/* ==================================================================== GGUF == */

typedef struct qpk_gguf qpk_gguf; /* qpk/gguf.h */

/*
 * A GGUF file as a Qwen2 model: checks the architecture, every qwen2 hyperparameter (types,
 * finite positive rope base and norm epsilon), the tokenizer keys (a gpt2 tokenizer with
 * the qwen2 pre-tokenizer; tokens valid UTF-8; token types known; every merge two tokens
 * of the vocabulary; every special id a token) and every tensor's name, shape and type
 * (norms and biases F32), and describes it as the one qpk_config.
 */
qpk_status qpk_gguf_qwen2(const qpk_gguf *g, qpk_config *cfg, qpk_err *e);

/*
 * A runtime model over a Qwen2 GGUF's tensors, used in place (g must outlive it): checked
 * by qpk_gguf_qwen2, every quantized block's f16 scales finite. Each tensor keeps its ggml
 * type (qpk_type_of_ggml) and computes with the weights ggml's dequantization gives.
 */
qpk_status qpk_gguf_model(qpk_model **out, const qpk_gguf *g, qpk_err *e);

/*
 * The tokenizer.json (malloc'd) that a Qwen2 GGUF's tokenizer.ggml.* keys describe:
 * what qpk's tokenizer reads for a GGUF, and what a .qpk made from one embeds.
 */
qpk_status qpk_gguf_tokenizer_json(const qpk_gguf *g, char **json, size_t *len, qpk_err *e);

/* ================================================================ conversion == */

/* A per-tensor override: tensors whose name matches pattern get type (and group). */
typedef struct qpk_quant_rule {
    char pattern[128]; /* glob (fnmatch) if it has * ? [ ; else a substring of the name */
    int type;          /* a qpk_type */
    uint32_t group;    /* for quantized types: 0 = the global group */
    bool implied;      /* made by the tool from another option: no warning when it matches nothing */
} qpk_quant_rule;

/* Parses "pattern=type[/gN|/row]" (e.g. "down_proj=int8", "lm_head=f16", "mlp=int4/g32"). */
qpk_status qpk_quant_rule_parse(const char *text, qpk_quant_rule *out, qpk_err *e);
/* Whether rule r applies to the tensor called name. */
bool qpk_quant_rule_matches(const qpk_quant_rule *r, const char *name);

#define QPK_GROUP_ROW UINT32_MAX /* a group as long as the row */

/*
 * How quantized weights are chosen: round-to-nearest; GPTQ and AWQ (calibrated, layer by
 * layer); imatrix: round-to-nearest whose scale searches weigh each input column by its
 * mean square over the calibration data (llama.cpp's importance matrix; ggml's types use
 * it, and GPTQ and AWQ use it too for them); AWQ_GPTQ: AWQ's scales folded in, then GPTQ's
 * error feedback on the scaled weights in place of AWQ's clipping.
 */
typedef enum qpk_method {
    QPK_METHOD_RTN = 0,
    QPK_METHOD_GPTQ,
    QPK_METHOD_AWQ,
    QPK_METHOD_IMATRIX,
    QPK_METHOD_AWQ_GPTQ
} qpk_method;
const char *qpk_method_name(qpk_method m); /* "rtn", "gptq", "awq", "imatrix", "awq+gptq" */
/* Whether a method collects GPTQ's Hessians, and whether it searches AWQ's scales. */
bool qpk_method_uses_gptq(qpk_method m);
bool qpk_method_uses_awq(qpk_method m);

/*
 * llama-quantize's mixes (llama_tensor_get_type, for Qwen2): Q4_K_M and Q5_K_M (Q4_K/Q5_K,
 * with v_proj and down_proj in Q6_K in a third of the layers), Q6_K and Q8_0; the head (the
 * tied embedding) in Q6_K (Q8_0 for q8_0); rows that are not whole super-blocks of 256
 * fall back to Q5_0, Q5_1 and Q8_0 as llama.cpp's do.
 */
typedef enum qpk_preset { QPK_PRESET_NONE = 0, QPK_PRESET_Q4_K_M, QPK_PRESET_Q5_K_M, QPK_PRESET_Q6_K, QPK_PRESET_Q8_0 } qpk_preset;
const char *qpk_preset_name(qpk_preset p); /* "q4_k_m", ... */
bool qpk_preset_from_name(const char *name, qpk_preset *out);

#define QPK_CALIB_SAMPLES 64 /* calibration windows by default */
#define QPK_CALIB_LEN 512    /* tokens per window by default */

/* Calibration for GPTQ and AWQ, as asked: 0 means the default. */
typedef struct qpk_calib_opts {
    const int32_t *tokens; /* the calibration token stream */
    size_t n_tokens;
    int samples;           /* windows drawn from it (0: QPK_CALIB_SAMPLES) */
    int seq_len;           /* tokens per window (0: QPK_CALIB_LEN) */
    uint64_t seed;         /* which windows: deterministic for a seed */
    double damp;           /* GPTQ: fraction of the mean Hessian diagonal added to it (0: QPK_GPTQ_DAMP) */
    bool act_order;        /* GPTQ: columns by decreasing Hessian diagonal, static groups */
    bool awq_fold_only;    /* AWQ: choose and fold the scales, then store the linears in f32 */
    const char *source;    /* recorded in the recipe: the calibration file's name, */
    bool source_is_text;   /* whether it is text (else int32 token ids), */
    uint64_t source_xxh3;  /* and the XXH3 of its bytes */
} qpk_calib_opts;

/* Calibration as it runs and as the recipe records it: every value resolved. */
typedef struct qpk_calib_params {
    int samples, seq_len;
    uint64_t seed;
    qpk_gptq_opts gptq;
    qpk_awq_opts awq;
    bool awq_fold_only;
} qpk_calib_params;

/* The one place the calibration defaults are applied: p from o, each 0 in o taking its default. */
void qpk_calib_resolve(const qpk_calib_opts *o, qpk_calib_params *p);

/* What qpk_convert writes. */
typedef enum qpk_output { QPK_OUT_QPK = 0, QPK_OUT_GGUF, QPK_OUT_GPTQ, QPK_OUT_AWQ } qpk_output;

/* Safetensors shards of GPTQ/AWQ folders hold at most this many bytes of tensors by default. */
#define QPK_SHARD_SIZE 4000000000ull

typedef struct qpk_convert_opts {
    qpk_output to;        /* .qpk, GGUF for llama.cpp (norms and biases then always f32), or a GPTQ or
                           * AWQ folder (the embedding and head then stay floats by default) */
    uint64_t shard_size;  /* GPTQ/AWQ folders: bytes of tensors per shard (0: QPK_SHARD_SIZE) */
    bool gptq_v2;         /* GPTQ folders: checkpoint_format gptq_v2 (zeros as they are; v1 stores zero - 1) */
    int dtype;            /* -1: keep each tensor's type (F64 -> F32); else a float qpk_type */
    int quant;            /* 0: none; else the type of the linear weights: int8, int4, int4s, q4_k, q5_k, q6_k
                           * (K-quants fall back as presets do where rows are not whole super-blocks) */
    qpk_preset preset;    /* a llama.cpp mix for every matrix (then quant is 0) */
    uint32_t group;       /* group size for quantized tensors: 32, 64, 128... or QPK_GROUP_ROW */
    /* Applied in order after the defaults, the last match winning. (qconvert's
     * --embed-type T is the rules embed_tokens=T, lm_head=T ahead of the user's.) */
    const qpk_quant_rule *rules;
    size_t n_rules;
    qpk_method method;    /* how the quantized linear weights are chosen (embedding and head: RTN) */
    qpk_calib_opts calib; /* for GPTQ and AWQ */
    int n_threads;        /* 0: all cores; the output does not depend on it */
    bool allow_nonfinite; /* keep NaN and infinite weights of tensors not quantized (else refused, named) */
    const char *command;  /* recorded in the provenance (callers leave out thread counts) */
    qpk_callbacks cb;
} qpk_convert_opts;

/*
 * Converts the model folder `dir` into `out` (atomically: nothing at out on failure).
 * With quant set, the linear weights (q, k, v, o, gate, up, down) are quantized by
 * round-to-nearest in groups along their input dimension, the embedding (and head)
 * become int8, norms and biases stay f32, then the rules apply. The recipe goes into
 * the metadata. Rows are quantized on all threads; the file does not depend on their count.
 */
qpk_status qpk_convert(const char *dir, const char *out, const qpk_convert_opts *opts, qpk_err *e);

/*
 * Re-packs the .qpk file `in` as GGUF at `out` (atomically), each tensor in the type it
 * has: f32/f16/bf16 as they are, int8 and int4s in groups of 32 as Q8_0 and Q4_0 (the
 * same bytes), int4 in groups of 32 as Q4_1. Norms and biases become f32 (exactly).
 * Other groups are refused: re-convert from the Hugging Face folder with --group 32.
 * Only opts->cb is used; opts may be NULL.
 */
qpk_status qpk_export_gguf(const char *in, const char *out, const qpk_convert_opts *opts, qpk_err *e);

/*
 * The Qwen2 GGUF `in` as a .qpk at `out` (atomically): every tensor in its ggml type, byte
 * for byte (qpk_type_of_ggml), the config from its qwen2.* keys, tokenizer.json and
 * tokenizer_config.json from its tokenizer keys, the source in the recipe. opts may be
 * NULL (only cb and command are used).
 */
qpk_status qpk_convert_gguf(const char *in, const char *out, const qpk_convert_opts *opts, qpk_err *e);

/*
 * Rewrites the .qpk file `in` as `out` with the linears GGUF cannot hold requantized by
 * round-to-nearest in groups of 32 in input order, from their exact weights: act-order
 * ones (stored with an input permutation), and int8z ones with a code whose offset from
 * its zero leaves Q8_0's int8 (they become int8). All else is copied as it is, and the
 * recipe records it. What GGUF export needs for such checkpoints, on explicit request.
 * *n_requantized (may be NULL) gets the number of linears requantized.
 */
qpk_status qpk_requantize_for_gguf(const char *in, const char *out, const qpk_convert_opts *opts, int *n_requantized,
                                   qpk_err *e);

/*
 * Re-packs the .qpk file `in` as a GPTQ (opts->to QPK_OUT_GPTQ) or AWQ (QPK_OUT_AWQ)
 * model folder at `out` for transformers, vLLM, SGLang and ExLlamaV2, without
 * requantizing: config.json with quantization_config (and quantize_config.json for
 * GPTQ), model.safetensors or shards of at most opts->shard_size bytes with their
 * index, and the tokenizer and generation files the .qpk embeds. int4 -> 4-bit with
 * zero points, int4s -> 4-bit sym (GPTQ) or zero 8 (AWQ), int8 -> GPTQ 8-bit sym, int8z
 * -> GPTQ 8-bit; act-order permutations -> GPTQ desc_act with g_idx. Refused, naming
 * the tensor: a linear in float, mixed bits or group sizes, a quantized embedding or
 * head, AWQ with 8 bits, per-row groups or permutations, a zero point the layout cannot
 * hold. The folder appears complete or not at all; an existing one must be empty.
 */
qpk_status qpk_export_hf(const char *in, const char *out, const qpk_convert_opts *opts, qpk_err *e);

#ifdef __cplusplus
}
#endif
#endif /* QPK_CONVERT_H */
