/* Private to the verify library: one position's measurements, computed in parallel
 * and accumulated in order (so totals do not depend on the thread count). */
#ifndef QPK_VERIFY_METRICS_H
#define QPK_VERIFY_METRICS_H

#include <string.h>

#include "qpk/verify.h"

typedef struct qpk_position {
    double nll, nll_ref, kld, max_abs, sum_abs, dp;
    double kld_tol; /* the rounding bound of kld: below -kld_tol it cannot be right */
    bool top1;
    int64_t bad_model, bad_ref; /* the first non-finite logit of each side, or -1 */
} qpk_position;

/* Measures one position (ref may be NULL: then only nll); scratch: n floats. */
void qpk_measure(const qpk_kernels *k, const float *model, const float *ref, int64_t n, int32_t target,
                 float *scratch, qpk_position *out);
/* The f32 rounding of a KL divergence, relative to 1 + E_ref|log p_ref - log p_model|. */
#define QPK_KLD_ROUNDING 1e-6

/*
 * True when a measured position holds a value no correct arithmetic gives (a KL
 * divergence below zero beyond rounding, a negative log-likelihood: perplexity
 * below 1); *what names it and *value is the value.
 */
bool qpk_position_impossible(const qpk_position *p, const char **what, double *value);

qpk_status qpk_compare_push(qpk_compare *c, const qpk_position *p, int64_t n_values, bool compared, qpk_err *e);

#endif
