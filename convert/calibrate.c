/*
 * The calibration pipeline (GPTQ, AWQ), layer by layer. The hidden states of the
 * calibration windows enter layer 0; the converter calls qpk_calib_layer at each layer
 * boundary, which
 *   1. runs the float layer on every window, gathering what the method needs from the
 *      input shared by each group of linears (q/k/v, o, gate/up, down);
 *   2. quantizes the layer's linears: GPTQ with one plan per shared input (quant/gptq.c),
 *      or AWQ's scales (quant/awq.c) folded into what produces each input, then its clip
 *      search and round-to-nearest;
 *   3. runs the quantized layer to make the next layer's inputs, so that each layer is
 *      calibrated on what the quantized model really feeds it.
 * The math lives in quant/; this file knows the model's structure. Memory: the windows'
 * hidden states, one layer in f32 and its statistics.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Linear groups sharing one input: the input of q/k/v, of o, of gate/up, of down. */
enum { G_QKV, G_O, G_GU, G_DOWN, N_GROUPS };

/* The linears fed by each group's input, and the role whose input the runtime's capture reports for it. */
static const qpk_role GROUP_ROLES[N_GROUPS][3] = {
    {QPK_ROLE_Q, QPK_ROLE_K, QPK_ROLE_V}, {QPK_ROLE_O}, {QPK_ROLE_GATE, QPK_ROLE_UP}, {QPK_ROLE_DOWN}};
static const int GROUP_SIZE[N_GROUPS] = {3, 1, 2, 1};

void qpk_calib_resolve(const qpk_calib_opts *o, qpk_calib_params *p)
{
    *p = (qpk_calib_params){
        .samples = o->samples > 0 ? o->samples : QPK_CALIB_SAMPLES,
        .seq_len = o->seq_len > 0 ? o->seq_len : QPK_CALIB_LEN,
        .seed = o->seed,
        .gptq = {o->damp > 0 ? o->damp : QPK_GPTQ_DAMP, o->act_order},
        .awq = {QPK_AWQ_ALPHA_GRID, QPK_AWQ_CLIP_STEPS, QPK_AWQ_SAMPLE_ROWS},
        .awq_fold_only = o->awq_fold_only,
    };
}

typedef struct group_stats {
    int64_t d;       /* input width */
    double *H;       /* GPTQ: sum of x x^T (d x d; upper triangle until the plan) */
    double *absmean; /* AWQ: sum of |x| per channel, then its mean */
    double *sumsq;   /* AWQ, imatrix: sum of x^2 per channel */
    float *imp;      /* the importance of each input column for ggml's block fits (mean x^2, AWQ-scaled) */
    float *rows;     /* AWQ: sampled input rows (sample_rows x d) */
    int64_t n_rows, n_seen;
} group_stats;

struct qpk_calib {
    qpk_checkpoint *ck;
    const qpk_convert_opts *o;
    qpk_calib_params p;
    const qpk_config *cfg;
    qpk_pool *pool;
    const qpk_kernels *k;
    qpk_model *model; /* the source model: only sizes the context */
    qpk_context *ctx;
    float *X;         /* [samples][seq_len][H] hidden states entering the current layer */
    float *tmp;       /* one window */
    qpk_gram_ws *gram; /* GPTQ */
    group_stats st[N_GROUPS];
    int64_t sample_stride;
    /* The current layer: f32 weights by role, what each is stored as, and its bytes. */
    float *f32[QPK_ROLE_COUNT_];
    uint32_t type[QPK_ROLE_COUNT_], group[QPK_ROLE_COUNT_];
    uint8_t *bytes[QPK_ROLE_COUNT_];
    size_t nbytes[QPK_ROLE_COUNT_];
};

static int64_t numel_of(const qpk_config *c, qpk_role r, int64_t *rows, int64_t *cols)
{
    int64_t d[2];
    int nd = qpk_role_shape(c, r, d);
    *rows = nd == 2 ? d[0] : 1;
    *cols = nd == 2 ? d[1] : d[0];
    return *rows * *cols;
}

/* --------------------------------------------------------------- windows */

/* splitmix64: the window starts, from the seed alone. */
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static qpk_status embed_windows(qpk_calib *c, qpk_err *e)
{
    const qpk_calib_opts *co = &c->o->calib;
    const qpk_st_tensor *emb = qpk_checkpoint_tensor(c->ck, QPK_ROLE_EMBED, -1);
    const int L = c->p.seq_len;
    int64_t H = c->cfg->hidden_size;
    uint64_t seed = c->p.seed, span = co->n_tokens - (size_t)L + 1;
    for (int w = 0; w < c->p.samples; w++) {
        uint64_t start = mix(&seed) % span;
        for (int t = 0; t < L; t++) {
            int32_t id = co->tokens[start + (uint64_t)t];
            if (id < 0 || id >= c->cfg->vocab_size)
                return qpk_err_setf(e, QPK_E_VALUE, "calibration token %d at %llu is outside the vocabulary", id,
                                    (unsigned long long)(start + (uint64_t)t));
            qpk_st_to_f32(emb, (uint64_t)id * (uint64_t)H, (size_t)H, c->X + ((size_t)w * (size_t)L + (size_t)t) * (size_t)H);
        }
    }
    return QPK_OK;
}

/* ------------------------------------------------------------ statistics */

static void capture(void *ud, qpk_role role, int expert, const float *x, int64_t T, int64_t n)
{
    qpk_calib *c = ud;
    (void)expert;
    int g = role == QPK_ROLE_Q ? G_QKV : role == QPK_ROLE_O ? G_O : role == QPK_ROLE_GATE ? G_GU : G_DOWN;
    group_stats *s = &c->st[g];
    if (qpk_method_uses_gptq(c->o->method)) {
        qpk_gram_add_upper(s->H, x, T, n, c->gram, c->pool, c->k);
        if (c->o->method == QPK_METHOD_GPTQ)
            return;
    }
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < n; i++)
            s->sumsq[i] += (double)x[t * n + i] * x[t * n + i];
        s->n_seen += c->o->method == QPK_METHOD_IMATRIX;
        if (c->o->method == QPK_METHOD_IMATRIX)
            continue;
        for (int64_t i = 0; i < n; i++)
            s->absmean[i] += fabs((double)x[t * n + i]);
        if (s->n_seen++ % c->sample_stride == 0 && s->n_rows < c->p.awq.sample_rows)
            memcpy(s->rows + (size_t)(s->n_rows++) * (size_t)n, x + t * n, (size_t)n * sizeof *x);
    }
}

/* ------------------------------------------------------------ begin/end */

void qpk_calib_end(qpk_calib *c)
{
    if (!c)
        return;
    qpk_context_free(c->ctx);
    qpk_model_free(c->model);
    for (int g = 0; g < N_GROUPS; g++)
        free(c->st[g].H), free(c->st[g].absmean), free(c->st[g].rows), free(c->st[g].sumsq), free(c->st[g].imp);
    for (int r = 0; r < QPK_ROLE_COUNT_; r++)
        free(c->f32[r]), free(c->bytes[r]);
    qpk_gram_ws_free(c->gram);
    free(c->X), free(c->tmp);
    free(c);
}

/*
 * Bytes calibration holds at once: the windows' hidden states, one layer in f32 and as
 * stored, the statistics of the method, and a context for one window.
 */
static double memory_needed(const qpk_config *cf, const qpk_calib_params *p, qpk_method method, int threads)
{
    const double H = (double)cf->hidden_size, I = (double)cf->intermediate_size;
    const double Q = (double)(cf->n_heads * cf->head_dim), KV = (double)(cf->n_kv_heads * cf->head_dim);
    const double L = p->seq_len, widest = I > H ? (I > Q ? I : Q) : (H > Q ? H : Q);
    double bytes = ((double)p->samples + 1) * L * H * 4;                /* hidden states, one window */
    bytes += 8 * (2 * H * Q + 2 * H * KV + 3 * H * I + 2 * H + Q + 2 * KV); /* a layer, f32 + stored */
    if (qpk_method_uses_gptq(method))
        bytes += 8 * (2 * H * H + Q * Q + I * I) + 4 * (widest * L + widest * widest) /* H, Gram work */
                 + 8.0 * widest * widest + 12.0 * widest * widest;                   /* one plan */
    if (method != QPK_METHOD_GPTQ)
        bytes += (double)p->awq.sample_rows * (2 * H + Q + I) * 4 * 2 + 16 * widest * widest / 8;
    bytes += L * (4 * H + 4 * Q + 2 * KV + 2 * I) * 4 + (double)threads * (6 * widest + L) * 4; /* a context */
    return bytes;
}

static qpk_status check_size(const qpk_calib *c, qpk_method method, int threads, qpk_err *e)
{
    const qpk_calib_opts *co = &c->o->calib;
    if (co->n_tokens < (size_t)c->p.seq_len)
        return qpk_err_setf(e, QPK_E_MISMATCH, "calibration needs at least %d tokens (one window), got %zu",
                            c->p.seq_len, co->n_tokens);
    /* Windows start anywhere in the data: there are only so many different ones. */
    uint64_t distinct = (uint64_t)co->n_tokens - (uint64_t)c->p.seq_len + 1;
    if ((uint64_t)c->p.samples > distinct)
        return qpk_err_setf(e, QPK_E_LIMIT,
                            "%d calibration windows of %d tokens: the calibration data (%zu tokens) holds only %llu "
                            "different ones (fewer or shorter windows, or more data)",
                            c->p.samples, c->p.seq_len, co->n_tokens, (unsigned long long)distinct);
    double need = memory_needed(c->cfg, &c->p, method, threads);
    double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    char msg[200];
    snprintf(msg, sizeof msg, "calibration: %d windows of %d tokens (from %zu), about %.2f GB of memory", c->p.samples,
             c->p.seq_len, co->n_tokens, need / 1e9);
    if (c->o->cb.log)
        c->o->cb.log(c->o->cb.ud, QPK_LOG_INFO, msg);
    if (have > 0 && need > have)
        return qpk_err_setf(e, QPK_E_LIMIT, "%s: more than this machine's %.2f GB (fewer or shorter windows)",
                            msg, have / 1e9);
    return QPK_OK;
}

qpk_status qpk_calib_begin(qpk_calib **out, qpk_source *src, const qpk_convert_opts *o, qpk_pool *pool,
                           qpk_err *e)
{
    *out = NULL;
    qpk_calib *c = calloc(1, sizeof *c);
    if (!c)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_checkpoint *ck = qpk_source_checkpoint(src);
    c->ck = ck, c->o = o, c->cfg = qpk_checkpoint_config(ck), c->pool = pool, c->k = qpk_kernels_best();
    if (qpk_config_is_moe(c->cfg)) {
        qpk_arch arch = c->cfg->arch;
        free(c);
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s calibration of a mixture-of-experts model (%s) is not "
                            "supported yet: use round-to-nearest (--method rtn)", qpk_method_name(o->method),
                            qpk_arch_name(arch));
    }
    qpk_calib_resolve(&o->calib, &c->p);
    qpk_status s = check_size(c, o->method, qpk_pool_threads(pool), e);
    if (s != QPK_OK) {
        free(c);
        return s;
    }
    const qpk_config *cf = c->cfg;
    const int n = c->p.samples, L = c->p.seq_len;
    int64_t H = cf->hidden_size, I = cf->intermediate_size, Q = cf->n_heads * cf->head_dim;
    int64_t widths[N_GROUPS] = {H, Q, H, I}, widest = I > H ? I : H;
    widest = widest > Q ? widest : Q;
    c->X = malloc((size_t)n * (size_t)L * (size_t)H * sizeof(float));
    c->tmp = malloc((size_t)L * (size_t)H * sizeof(float));
    bool ok = c->X && c->tmp;
    c->sample_stride = (int64_t)n * L / c->p.awq.sample_rows;
    c->sample_stride = c->sample_stride > 0 ? c->sample_stride : 1;
    for (int g = 0; g < N_GROUPS && ok; g++) {
        group_stats *st = &c->st[g];
        st->d = widths[g];
        if (qpk_method_uses_gptq(o->method))
            ok = (st->H = malloc((size_t)(st->d * st->d) * sizeof(double))) != NULL;
        if (ok && qpk_method_uses_awq(o->method))
            ok = (st->absmean = malloc((size_t)st->d * sizeof(double))) &&
                 (st->rows = malloc((size_t)c->p.awq.sample_rows * (size_t)st->d * sizeof(float)));
        if (ok && o->method != QPK_METHOD_GPTQ)
            ok = (st->sumsq = malloc((size_t)st->d * sizeof(double))) && (st->imp = malloc((size_t)st->d * sizeof(float)));
    }
    for (int r = 0; r < QPK_ROLE_COUNT_ && ok; r++) {
        int64_t rows, cols;
        if (qpk_layer_has_role(cf, (qpk_role)r, 0))
            ok = (c->f32[r] = malloc((size_t)numel_of(cf, (qpk_role)r, &rows, &cols) * sizeof(float))) &&
                 (c->bytes[r] = malloc((size_t)(rows * cols) * sizeof(float)));
    }
    s = ok ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %d calibration windows of %d tokens", n, L);
    if (s == QPK_OK && qpk_method_uses_gptq(o->method))
        s = qpk_gram_ws_create(&c->gram, widest, L, pool, e);
    if (s == QPK_OK)
        s = qpk_model_from_source(&c->model, src, e);
    qpk_context_opts co = {.n_ctx = L, .n_batch = L, .pool = pool};
    if (s == QPK_OK)
        s = qpk_context_create(&c->ctx, c->model, &co, e);
    if (s == QPK_OK)
        s = embed_windows(c, e);
    if (s != QPK_OK) {
        qpk_calib_end(c);
        return s;
    }
    *out = c;
    return QPK_OK;
}

/* ------------------------------------------------------------ the layer */

static qpk_matrix f32_matrix(const qpk_calib *c, qpk_role r)
{
    int64_t rows, cols;
    numel_of(c->cfg, r, &rows, &cols);
    return (qpk_matrix){QPK_TYPE_F32, 0, rows, cols, c->f32[r]};
}

static qpk_layer_weights layer_view(const qpk_calib *c, int l)
{
    const qpk_config *cf = c->cfg;
#define V(r) (qpk_layer_has_role(cf, r, l) ? c->f32[r] : NULL)
    return (qpk_layer_weights){
        .q = f32_matrix(c, QPK_ROLE_Q), .k = f32_matrix(c, QPK_ROLE_K), .v = f32_matrix(c, QPK_ROLE_V),
        .o = f32_matrix(c, QPK_ROLE_O), .gate = f32_matrix(c, QPK_ROLE_GATE), .up = f32_matrix(c, QPK_ROLE_UP),
        .down = f32_matrix(c, QPK_ROLE_DOWN), .attn_norm = c->f32[QPK_ROLE_ATTN_NORM],
        .ffn_norm = c->f32[QPK_ROLE_FFN_NORM], .bq = V(QPK_ROLE_Q_BIAS), .bk = V(QPK_ROLE_K_BIAS),
        .bv = V(QPK_ROLE_V_BIAS), .bo = V(QPK_ROLE_O_BIAS), .q_norm = V(QPK_ROLE_Q_NORM), .k_norm = V(QPK_ROLE_K_NORM)};
#undef V
}

static qpk_status load_layer(qpk_calib *c, int l, qpk_err *e)
{
    for (int i = 0; i < QPK_LAYER_ROLES; i++) {
        const qpk_role r = qpk_layer_role(i);
        char name[QPK_MAX_NAME];
        if (!qpk_layer_has_role(c->cfg, r, l))
            continue;
        qpk_tensor_name(name, sizeof name, r, l);
        const qpk_st_tensor *src = qpk_checkpoint_tensor(c->ck, r, l);
        qpk_st_to_f32(src, 0, (size_t)src->numel, c->f32[r]);
        size_t bad = qpk_first_nonfinite(QPK_TYPE_F32, c->f32[r], (size_t)src->numel);
        if (bad != (size_t)src->numel)
            return qpk_err_setf(e, QPK_E_VALUE, "tensor '%s': element %zu is %g: calibration needs finite weights", name,
                                bad, (double)c->f32[r][bad]);
        QPK_TRY(qpk_tensor_plan(c->o, c->cfg, src, r, l, name, &c->type[r], &c->group[r], e));
    }
    return QPK_OK;
}

/* Runs the float layer on every window (leaving X as it is), collecting statistics. */
static qpk_status gather(qpk_calib *c, int l, qpk_err *e)
{
    for (int g = 0; g < N_GROUPS; g++) {
        group_stats *s = &c->st[g];
        if (s->H)
            memset(s->H, 0, (size_t)(s->d * s->d) * sizeof *s->H);
        if (s->absmean)
            memset(s->absmean, 0, (size_t)s->d * sizeof *s->absmean);
        if (s->sumsq)
            memset(s->sumsq, 0, (size_t)s->d * sizeof *s->sumsq);
        s->n_rows = s->n_seen = 0;
    }
    qpk_layer_weights v = layer_view(c, l);
    size_t window = (size_t)c->p.seq_len * (size_t)c->cfg->hidden_size;
    for (int w = 0; w < c->p.samples; w++) {
        memcpy(c->tmp, c->X + (size_t)w * window, window * sizeof(float));
        QPK_TRY(qpk_layer_forward(c->ctx, &v, l, c->tmp, c->p.seq_len, capture, c, e));
    }
    return QPK_OK;
}

/* Runs the layer as quantized on every window: X becomes the next layer's input. */
static qpk_status advance(qpk_calib *c, int l, qpk_err *e)
{
    qpk_layer_weights v = layer_view(c, l);
    size_t window = (size_t)c->p.seq_len * (size_t)c->cfg->hidden_size;
    for (int w = 0; w < c->p.samples; w++)
        QPK_TRY(qpk_layer_forward(c->ctx, &v, l, c->X + (size_t)w * window, c->p.seq_len, NULL, NULL, e));
    return QPK_OK;
}

/*
 * Stores tensor r as planned, from its f32 weights, and puts back into f32[r] what the
 * stored bytes decode to (what the next layer will see). Quantized types: RTN, each
 * group clipped by clip[row * groups + group] when clip is given.
 */
static qpk_status store(qpk_calib *c, qpk_role r, const float *clip, const float *imp, qpk_err *e)
{
    int64_t rows, cols;
    numel_of(c->cfg, r, &rows, &cols);
    uint32_t type = c->type[r], G = c->group[r];
    float *w = c->f32[r];
    if (qpk_type_is_quantized(type) && !qpk_type_has_grid(type)) { /* ggml's block types: whole rows, weighted */
        const size_t rb = qpk_type_row_bytes(type, G, cols);
        qpk_status s = QPK_OK;
        for (int64_t i = 0; i < rows && s == QPK_OK; i++) {
            uint8_t *o = c->bytes[r] + (size_t)i * rb;
            if ((s = qpk_quantize_row_imp(type, G, w + i * cols, cols, imp, o, e)) != QPK_OK)
                qpk_err_prefix(e, s, "row %lld", (long long)i);
            else
                qpk_dequantize_row(type, G, o, cols, w + i * cols);
        }
        c->nbytes[r] = (size_t)rows * rb;
        return s;
    }
    if (!qpk_type_is_quantized(type)) {
        size_t esize = qpk_type_info_of(type)->elem_bytes;
        size_t bad = qpk_row_from_f32(type, w, c->bytes[r], (size_t)(rows * cols));
        if (bad != (size_t)(rows * cols))
            return qpk_err_setf(e, QPK_E_VALUE, "a weight (%g) does not fit %s", (double)w[bad], qpk_type_name(type));
        qpk_row_to_f32(type, c->bytes[r], w, (size_t)(rows * cols));
        c->nbytes[r] = (size_t)(rows * cols) * esize;
        return QPK_OK;
    }
    size_t bb = qpk_type_block_bytes(type, G);
    int64_t ng = cols / G;
    int32_t *codes = malloc((size_t)G * sizeof *codes);
    qpk_status s = codes ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < rows && s == QPK_OK; i++)
        for (int64_t g = 0; g < ng && s == QPK_OK; g++) {
            qpk_qparams p;
            float *wg = w + i * cols + g * G;
            if ((s = qpk_quantize_group(type, wg, G, clip ? clip[i * ng + g] : 1.0f, &p, codes, wg, e)) != QPK_OK)
                qpk_err_prefix(e, s, "row %lld", (long long)i);
            else
                qpk_pack_group(type, G, &p, codes, c->bytes[r] + (size_t)(i * ng + g) * bb);
        }
    free(codes);
    c->nbytes[r] = (size_t)(rows * ng) * bb;
    return s;
}

/* ------------------------------------------------------------------ GPTQ */

static qpk_status quantize_gptq(qpk_calib *c, qpk_err *e)
{
    for (int g = 0; g < N_GROUPS; g++) {
        qpk_gptq_plan *plan = NULL; /* one factorization for the linears sharing this input */
        qpk_status s = QPK_OK;
        for (int i = 0; i < GROUP_SIZE[g] && s == QPK_OK; i++) {
            qpk_role r = GROUP_ROLES[g][i];
            int64_t rows, cols;
            numel_of(c->cfg, r, &rows, &cols);
            if (!qpk_type_is_quantized(c->type[r])) {
                s = store(c, r, NULL, NULL, e);
                continue;
            }
            if (!plan) {
                qpk_gram_mirror(c->st[g].H, c->st[g].d);
                if ((s = qpk_gptq_plan_create(&plan, c->st[g].H, cols, &c->p.gptq, c->pool, e)) != QPK_OK)
                    break;
            }
            s = qpk_gptq_quantize(plan, c->type[r], c->group[r], c->f32[r], rows, c->pool, c->bytes[r], e);
            c->nbytes[r] = qpk_type_row_bytes(c->type[r], c->group[r], cols) * (size_t)rows;
        }
        qpk_gptq_plan_free(plan);
        QPK_TRY(s);
    }
    return QPK_OK;
}

/* ------------------------------------------------------------------- AWQ */

/* The group's linears as quant/awq.c takes them. */
static int awq_linears(const qpk_calib *c, int g, qpk_awq_linear lin[3])
{
    for (int i = 0; i < GROUP_SIZE[g]; i++) {
        const qpk_role r = GROUP_ROLES[g][i];
        qpk_matrix m = f32_matrix(c, r);
        lin[i] = (qpk_awq_linear){c->f32[r], m.rows, m.cols, c->type[r], c->group[r]};
    }
    return GROUP_SIZE[g];
}

/*
 * Folds scales s into the group's linears (columns x s) and into what produces their
 * input (/ s): the norm before q/k/v and before gate/up, the rows (and bias) of v
 * before o, the rows of up before down. In exact arithmetic the layer is unchanged.
 */
static void awq_fold(qpk_calib *c, int g, const float *s)
{
    int64_t d = c->st[g].d;
    for (int i = 0; i < GROUP_SIZE[g]; i++) {
        qpk_matrix m = f32_matrix(c, GROUP_ROLES[g][i]);
        for (int64_t r = 0; r < m.rows; r++)
            for (int64_t k = 0; k < d; k++)
                c->f32[GROUP_ROLES[g][i]][r * d + k] *= s[k];
    }
    float *prev = NULL, *bias = NULL;
    int64_t prev_cols = 1;
    switch (g) {
    case G_QKV: prev = c->f32[QPK_ROLE_ATTN_NORM]; break;
    case G_GU: prev = c->f32[QPK_ROLE_FFN_NORM]; break;
    case G_O:
        prev = c->f32[QPK_ROLE_V], bias = c->f32[QPK_ROLE_V_BIAS], prev_cols = c->cfg->hidden_size;
        break;
    default: prev = c->f32[QPK_ROLE_UP], prev_cols = c->cfg->hidden_size; break;
    }
    for (int64_t k = 0; k < d; k++) {
        for (int64_t j = 0; j < prev_cols; j++)
            prev[k * prev_cols + j] /= s[k];
        if (bias)
            bias[k] /= s[k];
    }
}

/* AWQ's scales of every group on the float weights, each folded before the next is searched. */
static qpk_status awq_scales(qpk_calib *c, float *scales[N_GROUPS], qpk_err *e)
{
    const qpk_config *cf = c->cfg;
    qpk_status s = QPK_OK;
    for (int g = 0; g < N_GROUPS && s == QPK_OK; g++) {
        group_stats *st = &c->st[g];
        if (g == G_O && cf->n_kv_heads != cf->n_heads) { /* v's channels do not map one to one onto o's */
            for (int64_t k = 0; k < st->d; k++)
                scales[g][k] = 1;
            continue;
        }
        for (int64_t k = 0; k < st->d; k++)
            st->absmean[k] /= (double)(st->n_seen ? st->n_seen : 1);
        qpk_awq_linear lin[3];
        int n = awq_linears(c, g, lin);
        if ((s = qpk_awq_scales(lin, n, st->absmean, st->rows, st->n_rows, &c->p.awq, c->pool, c->k, scales[g], e)) ==
            QPK_OK)
            awq_fold(c, g, scales[g]);
    }
    return s;
}

/* The folded linears see x / s: their Hessian is diag(1/s) H diag(1/s) (the upper triangle is what is kept). */
static void scale_hessians(qpk_calib *c, float *const scales[N_GROUPS])
{
    for (int g = 0; g < N_GROUPS; g++) {
        const int64_t d = c->st[g].d;
        for (int64_t i = 0; i < d; i++)
            for (int64_t j = i; j < d; j++)
                c->st[g].H[i * d + j] /= (double)scales[g][i] * scales[g][j];
    }
}

/* AWQ after its scales: each group's clip ratios on the scaled weights and inputs, then storage. */
static qpk_status awq_clip_store(qpk_calib *c, float *const scales[N_GROUPS], float *xs, float *clip, qpk_err *e)
{
    /* The folded float layer, when that is what is asked for (the scales were chosen for the planned types). */
    for (int i = 0; i < QPK_LAYER_ROLES; i++)
        if (c->f32[qpk_layer_role(i)])
            qpk_tensor_stored(c->o, qpk_layer_role(i), &c->type[qpk_layer_role(i)], &c->group[qpk_layer_role(i)]);
    /* q and k are not clipped: attention scores are sensitive to their outliers (as AutoAWQ does). */
    qpk_status s = QPK_OK;
    for (int g = 0; g < N_GROUPS && s == QPK_OK; g++) {
        group_stats *st = &c->st[g];
        for (int64_t t = 0; t < st->n_rows; t++)
            for (int64_t k = 0; k < st->d; k++)
                xs[t * st->d + k] = st->rows[t * st->d + k] / scales[g][k];
        /* What ggml's block fits weigh by: the scaled inputs' mean square. */
        for (int64_t k = 0; k < st->d; k++)
            st->imp[k] = (float)(st->sumsq[k] / (double)(st->n_seen ? st->n_seen : 1) / ((double)scales[g][k] * scales[g][k]));
        qpk_awq_linear lin[3];
        awq_linears(c, g, lin);
        for (int i = 0; i < GROUP_SIZE[g] && s == QPK_OK; i++) {
            qpk_role r = GROUP_ROLES[g][i];
            bool clipped = qpk_type_has_grid(c->type[r]) && r != QPK_ROLE_Q && r != QPK_ROLE_K;
            if (clipped)
                s = qpk_awq_clip(&lin[i], xs, st->n_rows, &c->p.awq, c->pool, c->k, clip, e);
            if (s == QPK_OK)
                s = store(c, r, clipped ? clip : NULL, st->imp, e);
        }
    }
    return s;
}

/* AWQ, and AWQ followed by GPTQ (the scales folded in, then GPTQ on the scaled weights instead of clipping). */
static qpk_status quantize_awq(qpk_calib *c, qpk_err *e)
{
    const qpk_config *cf = c->cfg;
    int64_t widest = cf->intermediate_size > cf->hidden_size ? cf->intermediate_size : cf->hidden_size, most = 0;
    for (int i = 0; i < QPK_LAYER_ROLES; i++) {
        int64_t rows, cols, n = numel_of(cf, qpk_layer_role(i), &rows, &cols);
        most = n > most ? n : most;
    }
    float *scales[N_GROUPS] = {0}, *xs = malloc((size_t)(c->p.awq.sample_rows * widest) * sizeof(float));
    float *clip = malloc((size_t)(most / QPK_GROUP_QUANTUM + 1) * sizeof(float));
    bool ok = xs && clip;
    for (int g = 0; g < N_GROUPS && ok; g++)
        ok = (scales[g] = malloc((size_t)c->st[g].d * sizeof(float))) != NULL;
    qpk_status s = ok ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory for AWQ");
    if (s == QPK_OK)
        s = awq_scales(c, scales, e);
    if (s == QPK_OK && c->o->method == QPK_METHOD_AWQ_GPTQ) {
        scale_hessians(c, scales);
        s = quantize_gptq(c, e);
    } else if (s == QPK_OK) {
        s = awq_clip_store(c, scales, xs, clip, e);
    }
    free(xs), free(clip);
    for (int g = 0; g < N_GROUPS; g++)
        free(scales[g]);
    return s;
}

/* --------------------------------------------------------------- imatrix */

/* Round-to-nearest, ggml's block fits weighing each input column by its mean square (llama.cpp's imatrix). */
static qpk_status quantize_imatrix(qpk_calib *c, qpk_err *e)
{
    for (int g = 0; g < N_GROUPS; g++) {
        group_stats *st = &c->st[g];
        for (int64_t k = 0; k < st->d; k++)
            st->imp[k] = (float)(st->sumsq[k] / (double)(st->n_seen ? st->n_seen : 1));
        for (int i = 0; i < GROUP_SIZE[g]; i++)
            QPK_TRY(store(c, GROUP_ROLES[g][i], NULL, st->imp, e));
    }
    return QPK_OK;
}

/* ------------------------------------------------------------------ API */

double qpk_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

qpk_status qpk_calib_layer(qpk_calib *c, int l, qpk_calib_times *times, qpk_err *e)
{
    double t0 = qpk_seconds();
    qpk_status s = load_layer(c, l, e);
    if (s == QPK_OK)
        s = gather(c, l, e);
    double t1 = qpk_seconds();
    if (s == QPK_OK)
        s = c->o->method == QPK_METHOD_GPTQ  ? quantize_gptq(c, e)
            : qpk_method_uses_awq(c->o->method) ? quantize_awq(c, e)
                                             : quantize_imatrix(c, e);
    /* Norms and biases (AWQ may have rescaled some) are stored as planned. */
    for (int i = 0; i < QPK_LAYER_ROLES && s == QPK_OK; i++)
        if (!qpk_role_is_matrix(qpk_layer_role(i)) && qpk_layer_has_role(c->cfg, qpk_layer_role(i), l))
            s = store(c, qpk_layer_role(i), NULL, NULL, e);
    double t2 = qpk_seconds();
    if (s == QPK_OK)
        s = advance(c, l, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, s, "calibrating layer %d", l);
    if (times) {
        times->gather += t1 - t0;
        times->quantize += t2 - t1;
        times->forward += qpk_seconds() - t2;
    }
    return QPK_OK;
}

void qpk_calib_tensor(const qpk_calib *c, qpk_role r, uint32_t *type, uint32_t *group, const void **bytes,
                      size_t *nbytes)
{
    *type = c->type[r], *group = c->group[r], *bytes = c->bytes[r], *nbytes = c->nbytes[r];
}

const qpk_calib_params *qpk_calib_params_of(const qpk_calib *c) { return &c->p; }
