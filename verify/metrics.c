/*
 * Per-position metrics. Log-softmax is f32 exponentials summed in f64 over the full
 * vocabulary; KL divergence, perplexity and probability changes accumulate in f64.
 */
#include <stdlib.h>

#include "metrics.h"

double qpk_logsumexp(const qpk_kernels *k, const float *x, int64_t n, int64_t *argmax, float *exps)
{
    float mx;
    int64_t am = k->argmax(x, n, &mx);
    if (argmax)
        *argmax = am;
    return (double)mx + log(k->sum_exp(x, n, mx, exps)); /* the offset back in: callers subtract in f64 */
}

void qpk_ppl_add(qpk_ppl *p, double nll)
{
    p->sum += nll;
    p->sum_sq += nll * nll;
    p->n++;
}

double qpk_ppl_value(const qpk_ppl *p) { return p->n ? exp(p->sum / (double)p->n) : QPK_NO_VALUE; }

double qpk_ppl_stderr(const qpk_ppl *p)
{
    if (p->n < 2)
        return QPK_NO_VALUE;
    double mean = p->sum / (double)p->n, var = p->sum_sq / (double)p->n - mean * mean;
    return qpk_ppl_value(p) * sqrt((var > 0 ? var : 0) / (double)(p->n - 1));
}

/* The index of the first NaN or infinity among x[0..n), or -1. */
static int64_t first_nonfinite(const float *x, int64_t n)
{
    for (int64_t v = 0; v < n; v++)
        if (!isfinite(x[v]))
            return v;
    return -1;
}

/*
 * Normalizer of one row with its maximum already subtracted: log(sum exp(x - max)),
 * at least 0 (the maximum contributes exp(0) = 1). Every log-probability below is
 * (x[v] - max) - this, each difference taken in f64 from the f32 logits, so a
 * constant offset of any size (1e6, 1e30) changes nothing beyond the f32 rounding
 * of the stored logits themselves.
 */
static double log_norm(const qpk_kernels *k, const float *x, int64_t n, int64_t *argmax, float *mx, float *exps)
{
    *argmax = k->argmax(x, n, mx);
    return log(k->sum_exp(x, n, *mx, exps));
}

void qpk_measure(const qpk_kernels *k, const float *model, const float *ref, int64_t n, int32_t target,
                 float *scratch, qpk_position *out)
{
    memset(out, 0, sizeof *out);
    /* A non-finite value makes every number below meaningless (NaN compares false, and would pass any gate). */
    out->bad_model = first_nonfinite(model, n);
    out->bad_ref = ref ? first_nonfinite(ref, n) : -1;
    if (out->bad_model >= 0 || out->bad_ref >= 0)
        return;
    int64_t am, bm = -1;
    float mxa, mxb;
    double la = log_norm(k, model, n, &am, &mxa, NULL);
    out->nll = target >= 0 ? la - ((double)model[target] - (double)mxa) : QPK_NO_VALUE;
    if (!ref)
        return;
    float *eb = scratch;
    double lb = log_norm(k, ref, n, &bm, &mxb, eb);
    /*
     * KL(ref || model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v)) with p_ref = eb / sum(eb)
     * and log p(v) = (x[v] - max) - log_norm: the shifts cancel in f64, never through the offsets.
     */
    double kl = 0, dev = 0, sum_abs = 0, max_abs = 0, norm = exp(lb);
    for (int64_t v = 0; v < n; v++) {
        double d = ((double)ref[v] - (double)mxb) - ((double)model[v] - (double)mxa);
        kl += (double)eb[v] * d;
        dev += (double)eb[v] * fabs(d);
        double ad = fabs((double)ref[v] - (double)model[v]);
        sum_abs += ad;
        max_abs = ad > max_abs ? ad : max_abs;
    }
    kl = kl / norm + (la - lb);
    /*
     * The f32 exponentials carry 2^-23 of relative error each, so the sum carries at most
     * about 1e-7 x (1 + E|d|): below zero within that is zero; beyond it, the arithmetic
     * (or the input) is broken, and the runner refuses the result (a KL divergence is >= 0).
     */
    out->kld_tol = QPK_KLD_ROUNDING * (1 + dev / norm + fabs(la - lb));
    out->kld = kl < 0 && kl >= -out->kld_tol ? 0 : kl;
    out->sum_abs = sum_abs, out->max_abs = max_abs;
    out->top1 = am == bm;
    if (target >= 0) {
        out->nll_ref = lb - ((double)ref[target] - (double)mxb);
        out->dp = exp(-out->nll) - exp(-out->nll_ref);
    }
}

bool qpk_position_impossible(const qpk_position *p, const char **what, double *value)
{
    if (p->kld < -p->kld_tol || isnan(p->kld))
        return *what = "KL divergence", *value = p->kld, true;
    if (p->nll < 0)
        return *what = "model's negative log-likelihood", *value = p->nll, true;
    if (p->nll_ref < 0)
        return *what = "reference's negative log-likelihood", *value = p->nll_ref, true;
    return false;
}

qpk_status qpk_compare_push(qpk_compare *c, const qpk_position *p, int64_t n_values, bool compared, qpk_err *e)
{
    if (!isnan(p->nll)) {
        qpk_ppl_add(&c->ppl_model, p->nll);
        if (compared) {
            qpk_ppl_add(&c->ppl_ref, p->nll_ref);
            c->sum_dp += p->dp;
            c->n_dp++;
        }
    }
    if (!compared)
        return QPK_OK;
    if (c->n_positions == c->kld_cap) {
        size_t cap = c->kld_cap ? 2 * c->kld_cap : 4096;
        double *k = realloc(c->kld, cap * sizeof *k);
        if (!k)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        c->kld = k, c->kld_cap = cap;
    }
    c->kld[c->n_positions++] = p->kld;
    c->n_values += (uint64_t)n_values;
    c->sum_abs += p->sum_abs;
    c->max_abs = p->max_abs > c->max_abs ? p->max_abs : c->max_abs;
    c->top1_agree += p->top1;
    return QPK_OK;
}

qpk_status qpk_compare_add(qpk_compare *c, const qpk_kernels *k, const float *model, const float *ref, int64_t n,
                           int32_t target, float *scratch, qpk_err *e)
{
    qpk_position p;
    qpk_measure(k, model, ref, n, target, scratch, &p);
    const char *what;
    double value;
    if (p.bad_model >= 0 || p.bad_ref >= 0)
        return qpk_err_setf(e, QPK_E_VALUE, "the %s's logits are not finite", p.bad_model >= 0 ? "model" : "reference");
    if (qpk_position_impossible(&p, &what, &value))
        return qpk_err_setf(e, QPK_E_VALUE, "the %s is %g, which no distribution gives", what, value);
    return qpk_compare_push(c, &p, n, ref != NULL, e);
}

void qpk_compare_free(qpk_compare *c)
{
    free(c->kld);
    memset(c, 0, sizeof *c);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest value with at least p% of the values at or below it. */
static double percentile(const double *sorted, size_t n, double p)
{
    size_t rank = (size_t)ceil(p * (double)n / 100.0 - 1e-9); /* 90% of 1000 is rank 900, not 901 */
    return sorted[rank ? rank - 1 : 0];
}

void qpk_verify_finish(const qpk_compare *c, qpk_verify_result *r)
{
    r->n_scored = c->ppl_model.n;
    r->ppl = qpk_ppl_value(&c->ppl_model);
    r->ppl_stderr = qpk_ppl_stderr(&c->ppl_model);
    r->ppl_ref = qpk_ppl_value(&c->ppl_ref);
    r->ppl_ref_stderr = qpk_ppl_stderr(&c->ppl_ref);
    r->dppl_rel = (r->ppl - r->ppl_ref) / r->ppl_ref; /* NaN (not measured) without a reference */
    r->n_compared = c->n_positions;
    r->dp_mean = c->n_dp ? c->sum_dp / (double)c->n_dp : QPK_NO_VALUE;
    double *none[] = {&r->max_abs_diff, &r->mean_abs_diff, &r->top1_pct, &r->kld_mean, &r->kld_p50,
                      &r->kld_p90,      &r->kld_p99,       &r->kld_p999, &r->kld_max};
    for (size_t i = 0; i < sizeof none / sizeof *none; i++)
        *none[i] = QPK_NO_VALUE;
    if (!c->n_positions)
        return;
    r->max_abs_diff = c->max_abs;
    r->mean_abs_diff = c->sum_abs / (double)c->n_values;
    r->top1_pct = 100.0 * (double)c->top1_agree / (double)c->n_positions;
    double *s = malloc(c->n_positions * sizeof *s), sum = 0;
    if (!s)
        return;
    memcpy(s, c->kld, c->n_positions * sizeof *s);
    qsort(s, c->n_positions, sizeof *s, cmp_double);
    for (size_t i = 0; i < c->n_positions; i++)
        sum += c->kld[i];
    r->kld_mean = sum / (double)c->n_positions;
    r->kld_p50 = percentile(s, c->n_positions, 50);
    r->kld_p90 = percentile(s, c->n_positions, 90);
    r->kld_p99 = percentile(s, c->n_positions, 99);
    r->kld_p999 = percentile(s, c->n_positions, 99.9);
    r->kld_max = s[c->n_positions - 1];
    free(s);
}

/* ---------------------------------------------------------------- gates */

static const char *const GATE_NAMES[QPK_GATE_COUNT_] = {"max-kld", "min-top1", "max-abs", "max-dppl", "max-ppl"};

const char *qpk_gate_name(qpk_gate g) { return g < QPK_GATE_COUNT_ ? GATE_NAMES[g] : "?"; }

bool qpk_gate_needs_ref(qpk_gate g) { return g != QPK_GATE_MAX_PPL; }

bool qpk_gate_passes(qpk_gate g, double limit, const qpk_verify_result *r, double *measured)
{
    switch (g) {
    case QPK_GATE_MAX_KLD: *measured = r->kld_mean; return *measured <= limit;
    case QPK_GATE_MIN_TOP1: *measured = r->top1_pct; return *measured >= limit;
    case QPK_GATE_MAX_ABS: *measured = r->max_abs_diff; return *measured <= limit;
    case QPK_GATE_MAX_DPPL: *measured = fabs(r->dppl_rel); return *measured <= limit;
    default: *measured = r->ppl; return *measured <= limit;
    }
}
