/*
 * The operations of the Qwen2 forward pass, one token or one head at a time, in f32.
 * Private to the runtime; tests check each against a double-precision reference.
 */
#ifndef QPK_RUNTIME_OPS_H
#define QPK_RUNTIME_OPS_H

#include "qpk/format.h"
#include "qpk/quant.h"

/* out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * w, for T rows of H. */
void qpk_op_rms_norm(const qpk_kernels *k, const float *x, const float *w, float *out, int64_t T, int64_t H,
                     float eps);

/* inv_freq[i] = 1 / theta^(2i / head_dim), rounded to f32. */
void qpk_op_rope_freqs(float *inv_freq, double theta, int64_t head_dim);

/* YaRN's frequencies (transformers' "yarn" rope type) for the context y stretches. */
void qpk_op_rope_freqs_yarn(float *inv_freq, double theta, int64_t head_dim, const qpk_yarn *y);
/* cos/sin[t][i] of angle (f32)(pos0 + t) * inv_freq[i] (the angle rounded to f32 first), times scale. */
void qpk_op_rope_tables(float *cos, float *sin, const float *inv_freq, int64_t pos0, int64_t T, int64_t half,
                        float scale);

/* rotate_half RoPE in place on v [T][heads][head_dim]: pairs (i, i + head_dim/2). */
void qpk_op_rope(float *v, const float *cos, const float *sin, int64_t T, int64_t heads, int64_t head_dim);

/* s[0..n) = softmax(s), in place (max-subtracted, f32). */
void qpk_op_softmax(const qpk_kernels *k, float *s, int64_t n);

/*
 * Causal attention of nq consecutive queries of one head, at positions p0 .. p0 + nq - 1
 * (query s at q + s ldq, its output at out + s ldo), over the keys/values (rows of
 * head_dim) at positions [first(p), p], first(p) = max(0, p - window + 1) with a sliding
 * window (window > 0), else 0: out = softmax(q . k_i / sqrt(head_dim)) . v. Each query's
 * output is the same bits whatever nq. scores: nq (p0 + nq) floats.
 */
void qpk_op_attend(const qpk_kernels *k, const float *q, int64_t ldq, int64_t nq, const float *keys,
                   const float *vals, int64_t p0, int64_t window, int64_t head_dim, float *scores, float *out,
                   int64_t ldo);

/* gate[i] = silu(gate[i]) * up[i], silu(x) = x * sigmoid(x). */
void qpk_op_swiglu(const qpk_kernels *k, float *gate, const float *up, int64_t n);

#endif
