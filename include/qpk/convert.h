/*
 * qpk/convert.h - the one conversion engine: a source (qpk/model.h) -> a plan (types,
 * recipe rules, presets, calibration, requantization where the target needs it) -> a
 * sink, streaming tensor by tensor.
 */
#ifndef QPK_CONVERT_H
#define QPK_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpk/format.h"
#include "qpk/model.h"
#include "qpk/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================ conversion == */

/* A per-tensor override: tensors whose name matches pattern get type (and group). */
typedef struct qpk_quant_rule {
    char pattern[128]; /* glob (fnmatch) if it has * ? [ ; else a substring of the name */
    int type;          /* a qpk_type */
    uint32_t group;    /* for quantized types: 0 = the global group */
    bool implied;      /* made by the tool from another option: no warning when it matches nothing */
} qpk_quant_rule;

/* Parses "pattern=type[/gN|/row]" (e.g. "down_proj=int8", "lm_head=f16", "mlp=int4/g32"). */
QPK_API qpk_status qpk_quant_rule_parse(const char *text, qpk_quant_rule *out, qpk_err *e);
/* Whether rule r applies to the tensor called name. */
QPK_API bool qpk_quant_rule_matches(const qpk_quant_rule *r, const char *name);

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
QPK_API const char *qpk_method_name(qpk_method m); /* "rtn", "gptq", "awq", "imatrix", "awq+gptq" */
/* Whether a method collects GPTQ's Hessians, and whether it searches AWQ's scales. */
QPK_API bool qpk_method_uses_gptq(qpk_method m);
QPK_API bool qpk_method_uses_awq(qpk_method m);

/*
 * llama-quantize's mixes (llama_tensor_get_type, for Qwen2): Q4_K_M and Q5_K_M (Q4_K/Q5_K,
 * with v_proj and down_proj in Q6_K in a third of the layers), Q6_K and Q8_0; IQ4_XS and
 * IQ4_NL (v_proj in Q5_K when 4 or more query heads share a key head, down_proj of the first
 * eighth of the layers in Q5_K unless calibrated); the head (the tied embedding) in Q6_K
 * (Q8_0 for q8_0); rows that are not whole super-blocks of 256 fall back to Q5_0, Q5_1,
 * Q8_0 and IQ4_NL as llama.cpp's do.
 */
typedef enum qpk_preset {
    QPK_PRESET_NONE = 0,
    QPK_PRESET_Q4_K_M,
    QPK_PRESET_Q5_K_M,
    QPK_PRESET_Q6_K,
    QPK_PRESET_Q8_0,
    QPK_PRESET_IQ4_XS,
    QPK_PRESET_IQ4_NL,
} qpk_preset;
QPK_API const char *qpk_preset_name(qpk_preset p); /* "q4_k_m", ... */
QPK_API bool qpk_preset_from_name(const char *name, qpk_preset *out);

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
QPK_API void qpk_calib_resolve(const qpk_calib_opts *o, qpk_calib_params *p);

typedef struct qpk_convert_opts {
    qpk_output to;        /* .qpk, GGUF for llama.cpp (norms and biases then always f32), or a GPTQ or
                           * AWQ folder (the embedding and head then stay floats by default) */
    uint64_t shard_size;  /* GPTQ/AWQ folders: bytes of tensors per shard (0: QPK_SHARD_SIZE) */
    bool gptq_v2;         /* GPTQ folders: checkpoint_format gptq_v2 (zeros as they are; v1 stores zero - 1) */
    /* GGUF: a split set as llama.cpp's gguf-split writes one (qpk_gguf_writer_split): at most this
     * many bytes of tensors / tensors per shard (0: no such limit; both 0: one file). */
    uint64_t split_max_size, split_max_tensors;
    /* Linears a GGUF cannot hold as they are (act-order ones, whose groups gather scattered
     * input columns; int8z ones with a code whose offset from its zero leaves Q8_0's int8)
     * are requantized by round-to-nearest in groups of 32 in input order from their exact
     * weights, and counted. Without it they are refused, naming the tensor. */
    bool requantize;
    /* With requantize: keep the requantized model in memory (qpk_convert_result.model) to
     * measure what requantizing cost against the source, without reading the output back. */
    bool keep_requantized;
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
    /* Tensor-parallel padding: every intermediate size (the dense MLPs', each expert's, the shared
     * expert's) becomes the smallest multiple of this that is >= it (nothing changes when it
     * already is one; 0: no padding), gate_proj and up_proj getting zero rows and down_proj zero
     * columns, so the logits do not change (silu(0) * 0 = 0). Quantized padding is whole zero
     * groups of down's type, exactly 0 when decoded; padding that is not whole groups is refused,
     * as are calibration, imported GPTQ/AWQ folders and input-permuted linears (see README). */
    int64_t pad_intermediate;
    /* llama.cpp's importance matrix (qpk/imatrix.h, either form) weighing the scale searches of
     * ggml's block types, in place of a calibration run (method rtn or imatrix; NULL: none). */
    const char *imatrix;
    /* Where the calibration run's statistics go as an importance matrix llama-quantize reads
     * (the GGUF form; legacy .dat with save_imatrix_dat); NULL: nowhere. */
    const char *save_imatrix;
    bool save_imatrix_dat;
    const char *command;  /* recorded in the provenance (callers leave out thread counts) */
    qpk_callbacks cb;
} qpk_convert_opts;

/* What a conversion did. */
typedef struct qpk_convert_result {
    int n_requantized;       /* linears requantized for the target (opts.requantize) */
    /* Calibrated MoE models: experts calibrated on their routed tokens, and those quantized by
     * round-to-nearest because too few calibration tokens reached them. */
    int64_t n_experts_calibrated, n_experts_rtn;
    uint64_t tensors_bytes;  /* bytes of tensor data written */
    /* The certificate of a conversion from a quantized source (GPTQ/AWQ folder, .qpk, GGUF):
     * matrices carried bit for bit, and those changed (requantized, or rounded by the target's
     * layout) with the largest weight change and the worst relative Frobenius error. A .qpk
     * output records it per tensor in its provenance. */
    int64_t n_exact, n_changed;
    double max_change, max_rel_frobenius;
    /* keep_requantized: the model as written (the requantized linears in memory, the
     * others views into the source, which must outlive it); NULL when nothing was requantized. */
    qpk_model *model;
    void *owned_;            /* what model uses besides the source (private) */
    qpk_source *source_;     /* qpk_convert_path: the source it opened, when model reads it (private) */
} qpk_convert_result;
QPK_API void qpk_convert_result_free(qpk_convert_result *r); /* NULL-safe; frees the model */

/*
 * The one conversion: each tensor of src, in the canonical order, planned (kept as it
 * is, converted to another float type, quantized by round-to-nearest or calibrated
 * GPTQ/AWQ/imatrix, imported exactly, or requantized where the target needs it and opts
 * ask), then written to sink, which is declared before the first byte and finished at
 * the end. The sink is consumed: finished on success, discarded on failure, so nothing
 * appears at its path unless the whole conversion succeeds. Progress reports phases and
 * units of work (bytes of source tensors; calibration as its share of the work).
 * r may be NULL. The output does not depend on the thread count.
 */
QPK_API qpk_status qpk_convert(qpk_source *src, const qpk_convert_opts *opts, qpk_sink *sink, qpk_convert_result *r,
                       qpk_err *e);

/*
 * The same from paths: opens `in` as a source, refuses an `out` that is one of its
 * files, creates the sink opts->to names at `out` and converts. r may be NULL.
 */
QPK_API qpk_status qpk_convert_path(const char *in, const char *out, const qpk_convert_opts *opts, qpk_convert_result *r,
                            qpk_err *e);

#ifdef __cplusplus
}
#endif
#endif /* QPK_CONVERT_H */
