/*
 * qpk/runtime.h - the reference runtime: an exact CPU forward pass of
 * Qwen2ForCausalLM over weights used in place (any source: a mapped .qpk, HF
 * checkpoint or GGUF), with a KV cache, batched prefill and single-token decode.
 *
 * Semantics (transformers' Qwen2, v4.37): embedding; per layer RMSNorm in f32 with
 * the config's eps, q/k/v projections with bias, RoPE in the rotate_half convention
 * (pairs i and i + head_dim/2, inv_freq = theta^(-2i/head_dim), angles in f32),
 * grouped-query causal softmax attention, o_proj, residual, RMSNorm, SwiGLU MLP,
 * residual; final RMSNorm; logits against lm_head or the tied embedding.
 * Weights are converted to f32 inside the kernels; all arithmetic and accumulation
 * is f32. Results do not depend on the thread count, and a token's logits are the
 * same bits whether it is evaluated in a batch or alone after the others.
 */
#ifndef QPK_RUNTIME_H
#define QPK_RUNTIME_H

#include "qpk/format.h"
#include "qpk/model.h"
#include "qpk/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qpk_model qpk_model;

/* A model over any source (qpk/model.h), its weights used in place; the source must outlive it. */
QPK_API qpk_status qpk_model_from_source(qpk_model **out, qpk_source *src, qpk_err *e);
QPK_API void qpk_model_free(qpk_model *m); /* NULL-safe */
QPK_API const qpk_config *qpk_model_config(const qpk_model *m);
/* Bytes of weights one decoded token reads (every matrix once, plus one embedding row). */
QPK_API uint64_t qpk_model_decode_bytes(const qpk_model *m);

typedef struct qpk_context qpk_context;

typedef struct qpk_context_opts {
    int n_ctx;     /* positions the context may hold; 0: max_position_embeddings */
    int n_batch;   /* tokens per forward step (larger inputs are split); 0: 512 */
    int n_threads; /* 0: all online CPUs */
    bool scalar;   /* use the scalar kernels even where AVX2 is available */
    qpk_pool *pool; /* run on this pool (shared with the caller) instead of a new one */
    /* Polled as work runs (a new pool only): once true, qpk_eval stops with QPK_E_CANCELLED. */
    bool (*cancel)(void *ud);
    void *cancel_ud;
    /* NULL: the best kernel table this CPU runs; else one by name ("avx512vbmi", "avx512", "avx2" or
     * "scalar"): for comparisons, the vector ones compute the same bits. scalar, if set, wins. */
    const char *kernels;
} qpk_context_opts;

/* KV memory grows with the positions in use, not with n_ctx. opts may be NULL. */
QPK_API qpk_status qpk_context_create(qpk_context **out, const qpk_model *m, const qpk_context_opts *opts, qpk_err *e);
QPK_API void qpk_context_free(qpk_context *c); /* NULL-safe */
/* Forgets all positions (the next token is position 0). */
QPK_API void qpk_context_reset(qpk_context *c);
QPK_API int qpk_context_pos(const qpk_context *c);
QPK_API const char *qpk_context_kernels(const qpk_context *c); /* its kernel table: "avx512vbmi" ... "scalar" */
/*
 * Appends n tokens at the current position and runs them through the model.
 * logits receives n_logits x vocab_size floats: the logits of the last n_logits of
 * the n tokens (0 <= n_logits <= n; logits may be NULL when n_logits is 0).
 * Fails, changing nothing, on a token id outside the vocabulary or when the
 * context would exceed n_ctx.
 */
QPK_API qpk_status qpk_eval(qpk_context *c, const int32_t *tokens, int n, float *logits, int n_logits, qpk_err *e);

/* ============================================ experimental: static linking only == */
/* The runtime's parts for qpk's own calibration and metrics (see qpk/quant.h). */
#ifdef QPK_STATIC_LINKING_ONLY

/*
 * The weights of one decoder layer: matrices as views, norms, biases and routers in f32.
 * What a layer lacks is NULL (vectors) or has no rows (matrices): qpk_layer_has_role.
 */
typedef struct qpk_layer_weights {
    qpk_matrix q, k, v, o;                 /* [Q,H] [KV,H] [KV,H] [H,Q] */
    qpk_matrix gate, up, down;             /* dense layers: [I,H] [I,H] [H,I] */
    const float *attn_norm, *ffn_norm;     /* [H] */
    const float *bq, *bk, *bv, *bo;        /* [Q] [KV] [KV] [H] */
    const float *q_norm, *k_norm;          /* [head_dim] (qwen3) */
    /* Sparse layers: the router [E,H] in f32, the stacked experts, the shared expert and its gate. */
    qpk_matrix router, exp_gate, exp_up, exp_down; /* [E,H] [E*M,H] [E*M,H] [E*H,M] */
    qpk_matrix sh_gate, sh_up, sh_down;             /* [S,H] [S,H] [H,S] */
    const float *sh_router;                         /* [H] */
} qpk_layer_weights;

/* Expert e of a stacked matrix of n experts: rows [e*R, (e+1)*R) as a matrix of their own. */
qpk_matrix qpk_expert_view(const qpk_matrix *stacked, int64_t n_experts, int64_t e);

/*
 * Supplies one tensor of the model (role, layer; layer -1 for the others) as a
 * matrix view: vectors (norms, biases) as 1 x n. The view must stay valid for the
 * life of the model. Called once per tensor by qpk_model_create.
 */
typedef qpk_status (*qpk_weight_fn)(void *ud, qpk_role role, int layer, qpk_matrix *out, qpk_err *e);

/* Builds a model, checking every shape against cfg and every type against the kernels. */
qpk_status qpk_model_create(qpk_model **out, const qpk_config *cfg, qpk_weight_fn get, void *ud, qpk_err *e);
/* Layer l's weights (0 <= l < n_layers). */
const qpk_layer_weights *qpk_model_layer(const qpk_model *m, int l);
/*
 * Each matrix one decoded token reads, with the rows it reads of it: the embedding's one
 * row, every layer's linears (of the stacked experts, the n_experts_used of n_experts it is
 * routed to), the head last (QPK_ROLE_LM_HEAD, the embedding when tied); layer -1 for the
 * embedding and the head. The list qpk_model_decode_bytes sums.
 */
typedef void (*qpk_read_fn)(void *ud, qpk_role role, int layer, const qpk_matrix *w, int64_t rows);
void qpk_model_decode_reads(const qpk_model *m, qpk_read_fn f, void *ud);
/* The context's kernel table and thread pool, for work alongside the model (metrics). */
const qpk_kernels *qpk_context_kernel_table(const qpk_context *c);
qpk_pool *qpk_context_pool(qpk_context *c);

/*
 * Sees the input of each group of linears as a layer runs: role Q (the input of q, k
 * and v), O (of o_proj), GATE (of gate and up; in a sparse layer, of the router, every
 * expert and the shared expert), DOWN (of down_proj), with expert -1; in sparse layers
 * also EXP_GATE and EXP_DOWN with the expert's index (the T rows are the tokens routed to
 * it, in order) and SHEXP_DOWN (-1). T rows of n floats.
 */
typedef void (*qpk_capture_fn)(void *ud, qpk_role role, int expert, const float *x, int64_t T, int64_t n);

/*
 * Runs the decoder layer w (layer index `layer`, for the sliding-window rule) on one
 * sequence of T hidden states (T x hidden_size floats, updated in place) at positions
 * 0..T-1, T <= n_batch. For calibration: the weights need not belong to the model
 * (they are what is being quantized). Resets the context. capture may be NULL.
 */
qpk_status qpk_layer_forward(qpk_context *c, const qpk_layer_weights *w, int layer, float *x, int T,
                             qpk_capture_fn capture, void *ud, qpk_err *e);

#endif /* QPK_STATIC_LINKING_ONLY */

#ifdef __cplusplus
}
#endif
#endif /* QPK_RUNTIME_H */
