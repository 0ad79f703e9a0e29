/*
 * qpk/model.h - every model input is a source, every output a sink.
 *
 * A source identifies its path once (a Hugging Face folder, float or GPTQ/AWQ; a .qpk;
 * a Qwen2 GGUF; for measurements also a reference-logits file) and gives what every
 * consumer needs in one shape: the config, each tensor by role and layer as qpk blocks
 * or floats read exactly (a view into the mapping, or rows decoded once for layouts
 * qpk does not compute on directly), the model's files (tokenizer.json,
 * tokenizer_config.json, generation_config.json) and where it came from. One
 * implementation per layout, each the only reader of it.
 *
 * A sink is one output: the tensors are declared first (GGUF and safetensors put their
 * directory before the data), then each tensor's bytes stream in, in the declared
 * order, then finish makes the output appear complete (or discard leaves nothing).
 * One implementation per target (.qpk, GGUF, GPTQ folder, AWQ folder), each the only
 * writer of its layout, atomic.
 */
#ifndef QPK_MODEL_H
#define QPK_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpk/format.h"
#include "qpk/quant.h"
#include "qpk/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qpk_log_level { QPK_LOG_INFO, QPK_LOG_WARN } qpk_log_level;

/* How a long operation talks to its caller. Every member may be NULL. */
typedef struct qpk_callbacks {
    void (*log)(void *ud, qpk_log_level level, const char *msg);
    /* Called as work advances: `what` is being done, done of total units of work. */
    void (*progress)(void *ud, const char *what, uint64_t done, uint64_t total);
    /* Polled between units of work; returning true stops with QPK_E_CANCELLED. */
    bool (*cancel)(void *ud);
    void *ud;
} qpk_callbacks;

/* ================================================================== sources == */

typedef struct qpk_source qpk_source;

typedef enum qpk_source_kind {
    QPK_SOURCE_QPK,    /* a .qpk file */
    QPK_SOURCE_HF,     /* a Hugging Face folder: float, or GPTQ / AWQ (read exactly) */
    QPK_SOURCE_LOGITS, /* a reference-logits safetensors file (only with allow_logits) */
    QPK_SOURCE_GGUF    /* a Qwen2 GGUF file, its tensors in their ggml types */
} qpk_source_kind;

typedef struct qpk_source_opts {
    bool allow_logits; /* accept a reference-logits file (a safetensors file that is not a model) */
    qpk_callbacks cb;  /* warnings while reading (unexpected tensors, ...) */
} qpk_source_opts;

/*
 * Opens path, deciding once what it is: a folder is a Hugging Face checkpoint, a file
 * with the .qpk magic a .qpk, one with GGUF's a Qwen2 GGUF, any other file a
 * reference-logits file (allow_logits) or an error naming what it is. Everything is
 * validated before the source is returned: a model's every tensor is present with its
 * shape and a type qpk computes with. opts may be NULL.
 */
QPK_API qpk_status qpk_source_open(qpk_source **out, const char *path, const qpk_source_opts *opts, qpk_err *e);
QPK_API void qpk_source_close(qpk_source *s); /* NULL-safe */
QPK_API qpk_source_kind qpk_source_kind_of(const qpk_source *s);
QPK_API const char *qpk_source_path(const qpk_source *s);
/* "hf", "gptq", "awq", "qpk", "gguf" or "logits". */
QPK_API const char *qpk_source_format(const qpk_source *s);
/* The model's description; NULL for a logits file. */
QPK_API const qpk_config *qpk_source_config(const qpk_source *s);
/* The logits file (kind QPK_SOURCE_LOGITS), else NULL. */
QPK_API const qpk_safetensors *qpk_source_logits(const qpk_source *s);

/*
 * Tensor (role, layer; layer -1 for the others) as the runtime and the converter take
 * it: its qpk type and group, rows x cols (vectors 1 x n), its bytes and its input
 * permutation (NULL unless act-order). The weights are exactly the stored ones: F64 is
 * rounded once to f32, GPTQ/AWQ linears are repacked into qpk blocks bit for bit (both
 * made on first use and kept until close). The head of a tied model is the embedding.
 */
QPK_API qpk_status qpk_source_matrix(qpk_source *s, qpk_role role, int layer, qpk_matrix *out, qpk_err *e);

/*
 * Checks a tensor's stored bytes once more before they are copied into an output (a
 * .qpk's checksum; the other layouts were checked at open).
 */
QPK_API qpk_status qpk_source_verify(const qpk_source *s, qpk_role role, int layer, qpk_err *e);

/*
 * A file of the model: "tokenizer.json", "tokenizer_config.json", "generation_config.json"
 * (embedded in a .qpk, in the folder, or made from a GGUF's tokenizer keys). malloc'd
 * and NUL-terminated; *data NULL (and QPK_OK) when the model has none.
 */
QPK_API qpk_status qpk_source_file(const qpk_source *s, const char *name, char **data, size_t *len, qpk_err *e);

/* The files a source reads (for "the output must not replace an input"): count and each path. */
QPK_API size_t qpk_source_n_inputs(const qpk_source *s);
QPK_API const char *qpk_source_input(const qpk_source *s, size_t i);

/*
 * Tokenizes the text file at path with the source's tokenizer as Hugging Face's
 * encode(text, add_special_tokens=False) does, special-token strings kept as text.
 * *ids is malloc'd; *hash (may be NULL) gets the XXH3 of the file's bytes.
 */
QPK_API qpk_status qpk_source_tokenize_file(const qpk_source *s, const char *path, int32_t **ids, size_t *n, uint64_t *hash,
                                    qpk_err *e);

/* ============================================================ plain files == */

/*
 * Reads a small file of a model folder into a malloc'd, NUL-terminated buffer. A file
 * that holds only a relative path to another file (how git stores a symbolic link where
 * links are not supported) is followed once. *missing (may be NULL) tells ENOENT apart.
 */
QPK_API qpk_status qpk_read_model_file(const char *dir, const char *name, char **data, size_t *len, bool *missing,
                               qpk_err *e);
/* A whole file (at most 512 MiB) into a malloc'd, NUL-terminated buffer. */
QPK_API qpk_status qpk_read_file(const char *path, char **data, size_t *len, qpk_err *e);
/* The tokenizer.json of src, malloc'd: a model's (as qpk_source_file gives it), or src itself. */
QPK_API qpk_status qpk_read_tokenizer_json(const char *src, char **json, size_t *len, qpk_err *e);
/* A file of raw little-endian int32 token ids (size a multiple of 4) into a malloc'd array. */
QPK_API qpk_status qpk_read_tokens(const char *path, int32_t **ids, size_t *n, qpk_err *e);

/* ==================================================================== sinks == */

/* What a sink writes. */
typedef enum qpk_output { QPK_OUT_QPK = 0, QPK_OUT_GGUF, QPK_OUT_GPTQ, QPK_OUT_AWQ, QPK_OUT_CT, QPK_OUT_MLX } qpk_output;
#define QPK_OUT_LAST QPK_OUT_MLX
QPK_API const char *qpk_output_name(qpk_output o); /* "qpk", "gguf", "gptq", "awq", "compressed-tensors", "mlx" */
/* Whether o is a model folder (GPTQ, AWQ, compressed-tensors, MLX) rather than one file. */
static inline bool qpk_output_is_folder(qpk_output o) { return o >= QPK_OUT_GPTQ && o <= QPK_OUT_LAST; }

/* Safetensors shards of GPTQ/AWQ folders hold at most this many bytes of tensors by default. */
#define QPK_SHARD_SIZE 4000000000ull

typedef struct qpk_sink_opts {
    uint64_t shard_size; /* GPTQ/AWQ folders: bytes of tensors per shard (0: QPK_SHARD_SIZE) */
    bool gptq_v2;        /* GPTQ folders: checkpoint_format gptq_v2 (zeros as they are; v1 stores zero - 1) */
    int n_threads;       /* packing folders' linears; 0: all cores */
    qpk_callbacks cb;    /* notes (Q4_1 offsets rounded, files absent) and cancellation */
    /* GGUF: a split set, at most this many bytes of tensors / tensors per shard (0: no such limit;
     * both 0: one file). See qpk_gguf_writer_split. */
    uint64_t split_max_size, split_max_tensors;
} qpk_sink_opts;

/* One tensor as the sink will receive it. */
typedef struct qpk_sink_tensor {
    qpk_role role;
    int layer;
    uint32_t type, group_size;
    int ndim;
    int64_t dims[QPK_MAX_DIMS];
    bool permuted; /* its input permutation comes with it (qpk_sink_end_tensor) */
} qpk_sink_tensor;

/* A file carried into the output (the tokenizer and generation files). */
typedef struct qpk_sink_file {
    const char *name;
    const char *data;
    size_t len;
} qpk_sink_file;

/* Everything a sink needs before the first byte of data. */
typedef struct qpk_sink_model {
    const qpk_config *cfg;
    const qpk_sink_tensor *tensors; /* every tensor, in qpk_model_tensor_at's order */
    size_t n_tensors;
    const qpk_sink_file *files;     /* kept by the caller until finish or discard */
    size_t n_files;
    const char *name;               /* the model's name (GGUF's general.name) */
    const char *recipe;             /* JSON of the recipe, or NULL (GGUF keeps it as qpk.recipe) */
} qpk_sink_model;

typedef struct qpk_sink qpk_sink;

/* A sink writing `path` (a file, or a folder for GPTQ/AWQ; nothing appears there before finish). opts may be NULL. */
QPK_API qpk_status qpk_sink_create(qpk_sink **out, qpk_output kind, const char *path, const qpk_sink_opts *opts, qpk_err *e);
QPK_API qpk_output qpk_sink_kind(const qpk_sink *s);
/*
 * Declares the model. Refuses, naming the tensor, what the target cannot hold as it is,
 * before any byte is written (GGUF: permuted linears, types without a ggml type, norms and
 * biases not in a float type; folders: linear types the layout does not hold (the type
 * row's folders), linears not quantized to one bit width and group, quantized embeddings;
 * zero points past the layout are found while packing).
 */
QPK_API qpk_status qpk_sink_declare(qpk_sink *s, const qpk_sink_model *m, qpk_err *e);
/* The next declared tensor's bytes, in its declared type, in pieces of whole rows. */
QPK_API qpk_status qpk_sink_begin_tensor(qpk_sink *s, qpk_err *e);
QPK_API qpk_status qpk_sink_write(qpk_sink *s, const void *data, size_t n, qpk_err *e);
/* Ends the tensor; perm: its input permutation (cols int32) when declared permuted, else NULL. */
QPK_API qpk_status qpk_sink_end_tensor(qpk_sink *s, const int32_t *perm, qpk_err *e);
/* A .qpk sink: the XXH3 of the tensor last ended (what its table holds); 0 for the others. */
QPK_API uint64_t qpk_sink_last_xxh3(const qpk_sink *s);
/* The largest change a weight of the last tensor took to fit the target's layout: 0 when it
 * is carried exactly (GGUF's int4 -> Q4_1 rounds an offset to f16 in some blocks). */
QPK_API double qpk_sink_last_change(const qpk_sink *s);
/* Makes the output appear complete (meta: a .qpk's metadata JSON; the others ignore it). Frees s. */
QPK_API qpk_status qpk_sink_finish(qpk_sink *s, const char *meta, size_t meta_len, qpk_err *e);
/* Leaves nothing at the path. NULL-safe. */
QPK_API void qpk_sink_discard(qpk_sink *s);

#ifdef __cplusplus
}
#endif
#endif /* QPK_MODEL_H */
