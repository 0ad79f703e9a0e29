/*
 * The verification runner: evaluates chunks (or reference sequences), measures the
 * positions of each piece in parallel, and accumulates them in order.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qpk_private.h"
#include "metrics.h"

/* Positions whose logits are materialized at once: bounds memory to PIECE x vocab floats per model. */
#define PIECE 64

typedef struct runner {
    const qpk_verify_opts *o;
    qpk_context *cm, *cr;
    const qpk_kernels *k;
    int64_t V;
    float *lm, *lr;   /* [PIECE][V] logits of the model and the reference */
    float *scratch;   /* [threads][V] */
    qpk_position pos[PIECE];
    int32_t targets[PIECE];
    qpk_compare acc;
} runner;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static qpk_status runner_init(runner *R, const qpk_model *model, const qpk_model *ref, int n_ctx,
                              const qpk_verify_opts *o, qpk_err *e)
{
    memset(R, 0, sizeof *R);
    R->o = o;
    R->V = qpk_model_config(model)->vocab_size;
    qpk_context_opts co = {.n_ctx = n_ctx, .n_batch = n_ctx < 512 ? n_ctx : 512, .n_threads = o->n_threads,
                           .scalar = o->scalar, .cancel = o->cb.cancel, .cancel_ud = o->cb.ud};
    qpk_status s = qpk_context_create(&R->cm, model, &co, e);
    if (s == QPK_OK && ref)
        s = qpk_context_create(&R->cr, ref, &co, e);
    if (s != QPK_OK)
        return s;
    R->k = qpk_context_kernel_table(R->cm);
    int threads = qpk_pool_threads(qpk_context_pool(R->cm));
    R->lm = malloc((size_t)PIECE * (size_t)R->V * sizeof(float));
    R->lr = malloc((size_t)PIECE * (size_t)R->V * sizeof(float));
    R->scratch = malloc((size_t)threads * (size_t)R->V * sizeof(float));
    if (!R->lm || !R->lr || !R->scratch)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for logits");
    return QPK_OK;
}

static void runner_free(runner *R)
{
    qpk_context_free(R->cm);
    qpk_context_free(R->cr);
    free(R->lm), free(R->lr), free(R->scratch);
    qpk_compare_free(&R->acc);
}

typedef struct measure_job {
    runner *R;
    bool compare;
} measure_job;

static void measure_task(void *arg, int64_t i, int thread)
{
    measure_job *j = arg;
    runner *R = j->R;
    size_t off = (size_t)i * (size_t)R->V;
    qpk_measure(R->k, R->lm + off, j->compare ? R->lr + off : NULL, R->V, R->targets[i],
                R->scratch + (size_t)thread * (size_t)R->V, &R->pos[i]);
}

/*
 * Measures the n positions now in lm (and lr), then adds them in order. They are
 * positions pos0.. of sequence `seq` (named `unit`: a chunk, a reference sequence).
 */
static qpk_status measure_piece(runner *R, int n, bool compare, bool count_unscored, const char *unit, int64_t seq,
                                int64_t pos0, qpk_err *e)
{
    measure_job j = {R, compare};
    qpk_pool_run(qpk_context_pool(R->cm), n, measure_task, &j);
    if (qpk_pool_cancelled(qpk_context_pool(R->cm)))
        return qpk_err_setf(e, QPK_E_CANCELLED, "cancelled");
    for (int i = 0; i < n; i++) {
        const qpk_position *p = &R->pos[i];
        if (p->bad_model >= 0 || p->bad_ref >= 0) {
            bool model = p->bad_model >= 0;
            int64_t v = model ? p->bad_model : p->bad_ref;
            const float *x = (model ? R->lm : R->lr) + (size_t)i * (size_t)R->V;
            return qpk_err_setf(e, QPK_E_VALUE, "the %s's logits at %s %lld, position %lld are not finite (logit %lld "
                                "is %g): nothing can be measured from them", model ? "model" : "reference", unit,
                                (long long)seq, (long long)(pos0 + i), (long long)v, (double)x[v]);
        }
        const char *what;
        double value;
        if (qpk_position_impossible(p, &what, &value))
            return qpk_err_setf(e, QPK_E_VALUE, "the %s at %s %lld, position %lld is %g, which no distribution gives: "
                                "the logits cannot be measured as they are (a reference in another precision or "
                                "scale?)", what, unit, (long long)seq, (long long)(pos0 + i), value);
    }
    for (int i = 0; i < n; i++) {
        if (R->targets[i] < 0 && !count_unscored)
            continue;
        QPK_TRY(qpk_compare_push(&R->acc, &R->pos[i], R->V, compare, e));
    }
    return QPK_OK;
}

static qpk_status step(const qpk_verify_opts *o, int done, int total, double ppl, qpk_err *e)
{
    if (o->on_chunk)
        o->on_chunk(o->cb.ud, done, total, ppl);
    if (o->cb.progress)
        o->cb.progress(o->cb.ud, "evaluating", (uint64_t)done + 1, (uint64_t)total);
    if (o->cb.cancel && o->cb.cancel(o->cb.ud))
        return qpk_err_setf(e, QPK_E_CANCELLED, "cancelled");
    return QPK_OK;
}

qpk_status qpk_verify_tokens(const qpk_model *model, const qpk_model *ref, const int32_t *tokens, size_t n,
                             const qpk_verify_opts *o, qpk_verify_result *r, qpk_err *e)
{
    memset(r, 0, sizeof *r);
    int n_ctx = o->n_ctx > 0 ? o->n_ctx : 512;
    if (n_ctx < 2)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a chunk needs at least 2 tokens");
    size_t n_chunks = n / (size_t)n_ctx;
    if (n_chunks == 0)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%zu tokens do not fill one chunk of %d", n, n_ctx);
    if (o->max_chunks > 0 && n_chunks > (size_t)o->max_chunks)
        n_chunks = (size_t)o->max_chunks;
    if (ref && qpk_model_config(ref)->vocab_size != qpk_model_config(model)->vocab_size)
        return qpk_err_setf(e, QPK_E_MISMATCH, "the models' vocabularies differ (%lld vs %lld)",
                            (long long)qpk_model_config(model)->vocab_size, (long long)qpk_model_config(ref)->vocab_size);
    runner R;
    double t0 = now();
    qpk_status s = runner_init(&R, model, ref, n_ctx, o, e);
    int first = o->score_all ? 0 : n_ctx / 2;
    for (size_t c = 0; c < n_chunks && s == QPK_OK; c++) {
        const int32_t *tk = tokens + c * (size_t)n_ctx;
        qpk_context_reset(R.cm);
        if (R.cr)
            qpk_context_reset(R.cr);
        s = qpk_eval(R.cm, tk, first, NULL, 0, e);
        if (s == QPK_OK && R.cr)
            s = qpk_eval(R.cr, tk, first, NULL, 0, e);
        /* Positions first .. n_ctx-2 are scored; the last position has no next token. */
        for (int p = first; p < n_ctx - 1 && s == QPK_OK; p += PIECE) {
            int m = n_ctx - 1 - p < PIECE ? n_ctx - 1 - p : PIECE;
            s = qpk_eval(R.cm, tk + p, m, R.lm, m, e);
            if (s == QPK_OK && R.cr)
                s = qpk_eval(R.cr, tk + p, m, R.lr, m, e);
            for (int i = 0; i < m; i++)
                R.targets[i] = tk[p + i + 1];
            if (s == QPK_OK)
                s = measure_piece(&R, m, R.cr != NULL, false, "chunk", (int64_t)c, p, e);
        }
        if (s == QPK_OK)
            s = step(o, (int)c, (int)n_chunks, qpk_ppl_value(&R.acc.ppl_model), e);
    }
    if (s == QPK_OK) {
        qpk_verify_finish(&R.acc, r);
        r->n_tokens = n_chunks * (size_t)n_ctx;
        r->n_chunks = (int)n_chunks, r->n_ctx = n_ctx;
        r->seconds = now() - t0;
    }
    runner_free(&R);
    return s;
}

/* -------------------------------------------------------- reference files */

static bool is_float_dtype(qpk_st_dtype d) { return d == QPK_ST_F32 || d == QPK_ST_F16 || d == QPK_ST_BF16; }

static int64_t token_at(const qpk_st_tensor *t, uint64_t i)
{
    if (t->dtype == QPK_ST_I64) {
        int64_t v;
        memcpy(&v, (const uint8_t *)t->data + 8 * i, 8);
        return v;
    }
    int32_t v;
    memcpy(&v, (const uint8_t *)t->data + 4 * i, 4);
    return v;
}

qpk_status qpk_ref_file_check(const qpk_safetensors *ref, int64_t vocab, qpk_err *e)
{
    const qpk_st_tensor *tk = qpk_st_find(ref, "tokens"), *lg = qpk_st_find(ref, "logits");
    if (!tk || !lg)
        return qpk_err_setf(e, QPK_E_MISMATCH, "a reference-logits file needs tensors 'tokens' and 'logits'");
    if (tk->dtype != QPK_ST_I32 && tk->dtype != QPK_ST_I64)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "'tokens' has dtype %s; expected I32 or I64",
                            qpk_st_dtype_name(tk->dtype));
    if (!is_float_dtype(lg->dtype))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "'logits' has dtype %s; expected F32, F16 or BF16",
                            qpk_st_dtype_name(lg->dtype));
    if (tk->ndim != 2 || tk->shape[0] < 1 || tk->shape[1] < 1)
        return qpk_err_setf(e, QPK_E_MISMATCH, "'tokens' must have shape [S, T] with S, T >= 1");
    if (lg->ndim != 3 || lg->shape[0] != tk->shape[0] || lg->shape[1] != tk->shape[1])
        return qpk_err_setf(e, QPK_E_MISMATCH, "'logits' must have shape [%lld, %lld, V] to match 'tokens'",
                            (long long)tk->shape[0], (long long)tk->shape[1]);
    if (lg->shape[2] != vocab)
        return qpk_err_setf(e, QPK_E_MISMATCH, "'logits' has %lld entries per position; the model's vocabulary has %lld",
                            (long long)lg->shape[2], (long long)vocab);
    for (uint64_t i = 0; i < tk->numel; i++) {
        int64_t t = token_at(tk, i);
        if (t < 0 || t >= vocab)
            return qpk_err_setf(e, QPK_E_VALUE, "'tokens'[%llu] = %lld is outside the vocabulary (%lld)",
                                (unsigned long long)i, (long long)t, (long long)vocab);
    }
    return QPK_OK;
}

qpk_status qpk_verify_ref_file(const qpk_model *model, const qpk_safetensors *ref, const qpk_verify_opts *o,
                               qpk_verify_result *r, qpk_err *e)
{
    memset(r, 0, sizeof *r);
    const qpk_config *cf = qpk_model_config(model);
    QPK_TRY(qpk_ref_file_check(ref, cf->vocab_size, e));
    const qpk_st_tensor *tk = qpk_st_find(ref, "tokens"), *lg = qpk_st_find(ref, "logits");
    int64_t S = tk->shape[0], T = tk->shape[1], V = cf->vocab_size;
    if (T > cf->max_position_embeddings)
        return qpk_err_setf(e, QPK_E_LIMIT, "sequences of %lld tokens exceed max_position_embeddings", (long long)T);
    if (o->max_chunks > 0 && S > o->max_chunks)
        S = o->max_chunks;
    int32_t *seq = malloc((size_t)T * sizeof *seq);
    if (!seq)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    runner R;
    double t0 = now();
    qpk_status s = runner_init(&R, model, NULL, (int)T, o, e);
    qpk_type lt = lg->dtype == QPK_ST_F32 ? QPK_TYPE_F32 : lg->dtype == QPK_ST_F16 ? QPK_TYPE_F16 : QPK_TYPE_BF16;
    size_t esize = qpk_st_dtype_size(lg->dtype);
    for (int64_t q = 0; q < S && s == QPK_OK; q++) {
        for (int64_t t = 0; t < T; t++)
            seq[t] = (int32_t)token_at(tk, (uint64_t)(q * T + t)); /* in range: checked above */
        qpk_context_reset(R.cm);
        for (int64_t p = 0; p < T && s == QPK_OK; p += PIECE) {
            int m = T - p < PIECE ? (int)(T - p) : PIECE;
            s = qpk_eval(R.cm, seq + p, m, R.lm, m, e);
            for (int i = 0; i < m && s == QPK_OK; i++) {
                const uint8_t *row = (const uint8_t *)lg->data + ((size_t)(q * T + p + i) * (size_t)V) * esize;
                qpk_row_to_f32(lt, row, R.lr + (size_t)i * (size_t)V, (size_t)V);
                R.targets[i] = p + i + 1 < T ? seq[p + i + 1] : -1;
            }
            if (s == QPK_OK)
                s = measure_piece(&R, m, true, true, "sequence", q, p, e);
        }
        if (s == QPK_OK)
            s = step(o, (int)q, (int)S, qpk_ppl_value(&R.acc.ppl_model), e);
    }
    if (s == QPK_OK) {
        qpk_verify_finish(&R.acc, r);
        r->n_tokens = (uint64_t)(S * T);
        r->n_chunks = (int)S, r->n_ctx = (int)T;
        r->seconds = now() - t0;
    }
    free(seq);
    runner_free(&R);
    return s;
}
