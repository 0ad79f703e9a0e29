/*
 * qpk/verify.h - measuring a model: perplexity (llama.cpp's convention) and
 * comparison of its logits with a reference (another model, or a reference-logits
 * file) as KL divergence, top-1 agreement, logit error and change in the probability
 * of the correct token. Every number qpk reports comes from here.
 */
#ifndef QPK_VERIFY_H
#define QPK_VERIFY_H

#include <math.h>

#include "qpk/model.h"
#include "qpk/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* =============================================================== perplexity == */

/* Running perplexity: the NLLs summed in f64. */
typedef struct qpk_ppl {
    double sum, sum_sq;
    uint64_t n;
} qpk_ppl;

QPK_API void qpk_ppl_add(qpk_ppl *p, double nll);
QPK_API double qpk_ppl_value(const qpk_ppl *p);  /* exp(mean NLL) */
QPK_API double qpk_ppl_stderr(const qpk_ppl *p); /* ppl x standard error of the mean NLL */

/* ================================================================= results == */

#define QPK_NO_VALUE NAN /* a number that was not measured (JSON null) */

typedef struct qpk_verify_result {
    uint64_t n_tokens;  /* tokens evaluated */
    uint64_t n_scored;  /* positions whose next-token NLL is in the perplexity */
    uint64_t n_compared; /* positions compared with the reference */
    int n_chunks, n_ctx;
    double ppl, ppl_stderr, ppl_ref, ppl_ref_stderr;
    double dppl_rel; /* (ppl - ppl_ref) / ppl_ref */
    double max_abs_diff, mean_abs_diff, top1_pct, dp_mean;
    double kld_mean, kld_p50, kld_p90, kld_p99, kld_p999, kld_max;
    double seconds;
} qpk_verify_result;

/* =================================================================== gates == */

/* Pass/fail limits on a result, as qverify's --max-kld ... options set them. */
typedef enum qpk_gate {
    QPK_GATE_MAX_KLD,  /* kld_mean <= limit */
    QPK_GATE_MIN_TOP1, /* top1_pct >= limit */
    QPK_GATE_MAX_ABS,  /* max_abs_diff <= limit */
    QPK_GATE_MAX_DPPL, /* |dppl_rel| <= limit */
    QPK_GATE_MAX_PPL,  /* ppl <= limit */
    QPK_GATE_COUNT_
} qpk_gate;

/* "max-kld", "min-top1", "max-abs", "max-dppl", "max-ppl". */
QPK_API const char *qpk_gate_name(qpk_gate g);
/* Whether gate g needs a reference (every gate but max-ppl). */
QPK_API bool qpk_gate_needs_ref(qpk_gate g);
/* Whether r passes gate g at limit; *measured gets the value compared. A value that was not measured fails. */
QPK_API bool qpk_gate_passes(qpk_gate g, double limit, const qpk_verify_result *r, double *measured);

/* ================================================================== runner == */

typedef struct qpk_verify_opts {
    int n_ctx;        /* chunk length in tokens (-c); 0: 512 */
    bool score_all;   /* score every position after the first, not only the second half */
    int max_chunks;   /* 0: every whole chunk of the input */
    int n_threads;    /* 0: all cores */
    bool scalar;      /* scalar kernels */
    /* After each chunk: its index (from 0), the chunk count, the running ppl. */
    void (*on_chunk)(void *ud, int chunk, int n_chunks, double ppl);
    qpk_callbacks cb; /* progress and cancellation */
} qpk_verify_opts;

/*
 * Perplexity of model over tokens, llama.cpp's way: the input cut into
 * non-overlapping chunks of n_ctx tokens (a partial last chunk is dropped), each
 * evaluated from an empty cache with no BOS added; in each chunk, logits at
 * positions first..n_ctx-2 predict tokens first+1..n_ctx-1, with first = n_ctx/2
 * (or 0 with score_all). With ref (may be NULL), the reference model runs on the
 * same chunks and the scored positions are also compared.
 */
QPK_API qpk_status qpk_verify_tokens(const qpk_model *model, const qpk_model *ref, const int32_t *tokens, size_t n,
                             const qpk_verify_opts *o, qpk_verify_result *r, qpk_err *e);

/*
 * Against a reference-logits file (safetensors: "tokens" I32/I64 [S, T], "logits"
 * F32/F16/BF16 [S, T, V]): each of the S sequences is evaluated from an empty cache
 * and all T positions are compared; perplexity is over positions 0..T-2 of each.
 */
QPK_API qpk_status qpk_verify_ref_file(const qpk_model *model, const qpk_safetensors *ref, const qpk_verify_opts *o,
                               qpk_verify_result *r, qpk_err *e);

/* Checks a reference-logits file against a model's vocabulary before any work. */
QPK_API qpk_status qpk_ref_file_check(const qpk_safetensors *ref, int64_t vocab, qpk_err *e);

/* ============================================ experimental: static linking only == */
/* The per-position metrics behind the results (see qpk/quant.h). */
#ifdef QPK_STATIC_LINKING_ONLY


/*
 * log-softmax of one position's logits over the whole vocabulary, in f32 with the
 * normalizer summed in f64: returns log(sum exp(x)); *argmax gets the top token.
 * exps (may be NULL) receives exp(x - max) for reuse, n floats.
 */
double qpk_logsumexp(const qpk_kernels *k, const float *x, int64_t n, int64_t *argmax, float *exps);

/* Accumulated comparison of model logits against reference logits. */
typedef struct qpk_compare {
    uint64_t n_positions, n_values, top1_agree, n_dp;
    double max_abs, sum_abs, sum_dp;
    double *kld; /* one value per position (for percentiles) */
    size_t kld_cap;
    qpk_ppl ppl_model, ppl_ref;
} qpk_compare;

/*
 * Adds one position: model and ref logits (n each), the token that follows (-1 if
 * none: then no NLL or probability change is counted). scratch: 2n floats.
 */
qpk_status qpk_compare_add(qpk_compare *c, const qpk_kernels *k, const float *model, const float *ref, int64_t n,
                           int32_t target, float *scratch, qpk_err *e);
void qpk_compare_free(qpk_compare *c);

/* Fills r from the accumulators (percentiles by nearest rank on the sorted values). */
void qpk_verify_finish(const qpk_compare *c, qpk_verify_result *r);

#endif /* QPK_STATIC_LINKING_ONLY */

#ifdef __cplusplus
}
#endif
#endif /* QPK_VERIFY_H */
