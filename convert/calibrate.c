/*
 * The calibration pipeline (GPTQ, AWQ), layer by layer. The hidden states of the
 * calibration windows enter layer 0; the converter calls qpk_calib_layer at each layer
 * boundary, which
 *   1. runs the float layer on every window, gathering what the method needs from the
 *      input shared by each group of linears (q/k/v, o, gate/up, down);
 *   2. quantizes the layer's linears: GPTQ with one plan per shared input (quant/gptq.c),
 *      or AWQ's scales (quant/awq.c) folded into what produces each input, then its clip
 *      search and round-to-nearest;
 *   3. makes the next layer's inputs: GPTQ runs the quantized layer, so that each layer
 *      is calibrated on what the quantized model really feeds it; AWQ, AWQ+GPTQ and
 *      imatrix keep the float layer's outputs from step 1 (qpk_calib_feeds_float).
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
#include "qpk/imatrix.h"

/*
 * A unit: linears (or row slices of them: one expert of a stacked matrix) that take the
 * same input, calibrated together on its statistics. Dense layers have four: q/k/v, o,
 * gate/up, down. A sparse layer has q/k/v and o, the shared expert's gate/up and down
 * (qwen2_moe), and two per expert, whose statistics come only from the tokens routed to it.
 */
enum { U_QKV, U_O, U_GU, U_DOWN, U_EXPERTS };
#define U_EXP_GU(x) (U_EXPERTS + 2 * (x))
#define U_EXP_DOWN(x) (U_EXPERTS + 2 * (x) + 1)

/*
 * Fewer routed tokens than this and an expert is quantized by round-to-nearest: GPTQ's
 * Hessian and AWQ's activation means from a few dozen tokens describe those tokens, not
 * the expert's inputs, and their error feedback would fit the noise (RTN uses no data,
 * so it cannot overfit). 32 is one token per dimension of the smallest quantization group.
 */
#define MIN_EXPERT_TOKENS 32

typedef struct slice {
    qpk_role role;
    int64_t row0, rows; /* rows [row0, row0 + rows) of the role's matrix */
} slice;

typedef struct unit {
    int64_t d;       /* input width */
    double *H;       /* GPTQ: sum of x x^T (d x d; upper triangle until the plan) */
    double *absmean; /* AWQ: sum of |x| per channel, then its mean */
    double *sumsq;   /* AWQ, imatrix: sum of x^2 per channel */
    float *imp;      /* the importance of each input column for ggml's block fits (mean x^2, AWQ-scaled) */
    float *rows;     /* AWQ: sampled input rows (sample_rows x d) */
    int64_t n_rows, n_seen, n_tokens;
    /* This layer's linears on that input, and what produces it (AWQ folds its scales there). */
    slice lin[3];
    int n_lin;
    qpk_role fold;   /* ATTN_NORM, FFN_NORM, or the linear whose rows produce the input (V, UP...); COUNT_: none */
    slice prev;      /* its rows, for a linear */
    bool expert;
} unit;

static int64_t numel_of(const qpk_config *c, qpk_role r, int64_t *rows, int64_t *cols);

/* The units of layer l, their linears and fold targets (statistics are sized once, at begin). */
static void plan_units(const qpk_config *cf, int l, unit *u, int n_units)
{
    const int64_t H = cf->hidden_size, M = cf->moe_intermediate_size;
    for (int i = 0; i < n_units; i++)
        u[i].n_lin = 0, u[i].fold = QPK_ROLE_COUNT_, u[i].expert = i >= U_EXPERTS;
    int64_t r, cols;
#define WHOLE(role) ((slice){role, 0, (numel_of(cf, role, &r, &cols), r)})
    u[U_QKV].lin[0] = WHOLE(QPK_ROLE_Q), u[U_QKV].lin[1] = WHOLE(QPK_ROLE_K), u[U_QKV].lin[2] = WHOLE(QPK_ROLE_V);
    u[U_QKV].n_lin = 3, u[U_QKV].fold = QPK_ROLE_ATTN_NORM;
    u[U_O].lin[0] = WHOLE(QPK_ROLE_O), u[U_O].n_lin = 1, u[U_O].fold = QPK_ROLE_V, u[U_O].prev = WHOLE(QPK_ROLE_V);
    if (!qpk_layer_is_sparse(cf, l)) {
        u[U_GU].lin[0] = WHOLE(QPK_ROLE_GATE), u[U_GU].lin[1] = WHOLE(QPK_ROLE_UP), u[U_GU].n_lin = 2;
        u[U_GU].fold = QPK_ROLE_FFN_NORM;
        u[U_DOWN].lin[0] = WHOLE(QPK_ROLE_DOWN), u[U_DOWN].n_lin = 1;
        u[U_DOWN].fold = QPK_ROLE_UP, u[U_DOWN].prev = WHOLE(QPK_ROLE_UP);
        return;
    }
    /* The router and every expert read the normed input too: no one scale folds into the norm
     * for all of them (and the router stays exact), so gate/up units keep their scale at 1. */
    if (qpk_layer_has_role(cf, QPK_ROLE_SHEXP_GATE, l)) {
        u[U_GU].lin[0] = WHOLE(QPK_ROLE_SHEXP_GATE), u[U_GU].lin[1] = WHOLE(QPK_ROLE_SHEXP_UP), u[U_GU].n_lin = 2;
        u[U_DOWN].lin[0] = WHOLE(QPK_ROLE_SHEXP_DOWN), u[U_DOWN].n_lin = 1;
        u[U_DOWN].fold = QPK_ROLE_SHEXP_UP, u[U_DOWN].prev = WHOLE(QPK_ROLE_SHEXP_UP);
    }
    for (int64_t x = 0; x < cf->n_experts; x++) {
        unit *gu = &u[U_EXP_GU(x)], *dn = &u[U_EXP_DOWN(x)];
        gu->lin[0] = (slice){QPK_ROLE_EXP_GATE, x * M, M}, gu->lin[1] = (slice){QPK_ROLE_EXP_UP, x * M, M};
        gu->n_lin = 2;
        dn->lin[0] = (slice){QPK_ROLE_EXP_DOWN, x * H, H}, dn->n_lin = 1;
        dn->fold = QPK_ROLE_EXP_UP, dn->prev = (slice){QPK_ROLE_EXP_UP, x * M, M};
    }
#undef WHOLE
}

/* Each unit's input width in layer l: its linears' columns (the buffers are sized for the widest). */
static void unit_widths(const qpk_config *cf, unit *u, int n_units)
{
    for (int i = 0; i < n_units; i++)
        if (u[i].n_lin) {
            int64_t rows;
            numel_of(cf, u[i].lin[0].role, &rows, &u[i].d);
        }
}

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
    qpk_gptq_plan *plan; /* GPTQ: refitted for each input, its memory allocated once */
    unit *u;           /* U_EXPERTS + 2 x experts */
    int n_units;
    int64_t sample_stride;
    int64_t experts_calibrated, experts_rtn; /* sparse layers so far */
    /* The current layer: f32 weights by role, what each is stored as, and its bytes. */
    float *f32[QPK_ROLE_COUNT_];
    uint32_t type[QPK_ROLE_COUNT_], group[QPK_ROLE_COUNT_];
    uint8_t *bytes[QPK_ROLE_COUNT_];
    size_t nbytes[QPK_ROLE_COUNT_];
    qpk_imatrix *save; /* --save-imatrix: each layer's statistics, recorded before it is quantized */
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

static int unit_of(qpk_role role, int expert)
{
    switch (role) {
    case QPK_ROLE_Q: return U_QKV;
    case QPK_ROLE_O: return U_O;
    case QPK_ROLE_GATE: return U_GU;
    case QPK_ROLE_EXP_GATE: return U_EXP_GU(expert);
    case QPK_ROLE_EXP_DOWN: return U_EXP_DOWN(expert);
    default: return U_DOWN; /* DOWN, SHEXP_DOWN */
    }
}

static void capture(void *ud, qpk_role role, int expert, const float *x, int64_t T, int64_t n)
{
    qpk_calib *c = ud;
    unit *s = &c->u[unit_of(role, expert)];
    s->n_tokens += T;
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
    for (int i = 0; c->u && i < c->n_units; i++)
        free(c->u[i].H), free(c->u[i].absmean), free(c->u[i].rows), free(c->u[i].sumsq), free(c->u[i].imp);
    free(c->u);
    qpk_imatrix_free(c->save);
    for (int r = 0; r < QPK_ROLE_COUNT_; r++)
        free(c->f32[r]), free(c->bytes[r]);
    qpk_gram_ws_free(c->gram);
    qpk_gptq_plan_free(c->plan);
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
        bytes += 8 * (2 * H * H + Q * Q + I * I) + 4 * (2 * widest * L + widest * widest) /* H, Gram work */
                 + 8.0 * widest * widest + 12.0 * widest * widest;                   /* one plan */
    if (method != QPK_METHOD_GPTQ)
        bytes += (double)p->awq.sample_rows * (2 * H + Q + I) * 4 * 2 + 16 * widest * widest / 8 +
                 (double)threads * (2 * 32 * widest + 128 * 32) * 4; /* per thread: the search's panel, its products */
    bytes += L * (4 * H + 4 * Q + 2 * KV + 2 * I) * 4 + (double)threads * (6 * widest + L) * 4; /* a context */
    if (qpk_config_is_moe(cf)) { /* per expert: its weights, and its own statistics on both of its inputs */
        const double E = (double)cf->n_experts, M = (double)cf->moe_intermediate_size;
        const double S = (double)cf->shared_expert_intermediate_size;
        bytes += 8 * (3 * E * M * H + 3 * S * H + E * H); /* a sparse layer, f32 + stored */
        if (qpk_method_uses_gptq(method))
            bytes += 8 * (E * (H * H + M * M) + S * S);
        if (method != QPK_METHOD_GPTQ)
            bytes += E * ((double)p->awq.sample_rows * 4 + 20) * (H + M);
        bytes += L * (E + 3 * H) * 4; /* routing and one expert's rows in the context */
    }
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

/*
 * The weights of the model that sizes calibration's context (its layers run on the
 * calibration's own f32 copies): the source's, except the experts, which are never read
 * through it and so are not gathered (a view of the right shape and no bytes).
 */
static qpk_status sizing_weight(void *ud, qpk_role role, int layer, qpk_matrix *w, qpk_err *e)
{
    if (!qpk_role_is_expert(role))
        return qpk_source_matrix(ud, role, layer, w, e);
    int64_t d[2];
    qpk_role_shape(qpk_source_config(ud), role, d);
    *w = (qpk_matrix){QPK_TYPE_F32, 0, d[0], d[1], NULL, NULL};
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
    if (o->save_imatrix) {
        qpk_calib_params p;
        qpk_calib_resolve(&o->calib, &p);
        qpk_status s = qpk_imatrix_create(&c->save, o->calib.source, (uint32_t)p.samples, (uint32_t)p.seq_len, e);
        if (s != QPK_OK) {
            free(c);
            return s;
        }
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
    const int64_t S = cf->shared_expert_intermediate_size > I ? cf->shared_expert_intermediate_size : I;
    int64_t widest = S > H ? S : H;
    widest = widest > Q ? widest : Q;
    widest = widest > cf->moe_intermediate_size ? widest : cf->moe_intermediate_size;
    c->n_units = U_EXPERTS + 2 * (int)cf->n_experts;
    c->u = calloc((size_t)c->n_units, sizeof *c->u);
    c->X = malloc((size_t)n * (size_t)L * (size_t)H * sizeof(float));
    c->tmp = malloc((size_t)L * (size_t)H * sizeof(float));
    bool ok = c->X && c->tmp && c->u;
    c->sample_stride = (int64_t)n * L / c->p.awq.sample_rows;
    c->sample_stride = c->sample_stride > 0 ? c->sample_stride : 1;
    for (int g = 0; g < c->n_units && ok; g++) {
        unit *st = &c->u[g];
        st->d = g == U_QKV || g == U_GU ? H : g == U_O ? Q : g == U_DOWN ? S : g % 2 == 0 ? H : cf->moe_intermediate_size;
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
        bool somewhere = false;
        for (int l = 0; l < cf->n_layers && !somewhere; l++)
            somewhere = qpk_layer_has_role(cf, (qpk_role)r, l);
        if (somewhere)
            ok = (c->f32[r] = malloc((size_t)numel_of(cf, (qpk_role)r, &rows, &cols) * sizeof(float))) &&
                 (c->bytes[r] = malloc((size_t)(rows * cols) * sizeof(float)));
    }
    s = ok ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %d calibration windows of %d tokens", n, L);
    if (s == QPK_OK && qpk_method_uses_gptq(o->method))
        s = qpk_gram_ws_create(&c->gram, widest, L, pool, e);
    if (s == QPK_OK && qpk_method_uses_gptq(o->method))
        s = qpk_gptq_plan_alloc(&c->plan, widest, e);
    if (s == QPK_OK)
        s = qpk_model_create(&c->model, cf, sizing_weight, src, e);
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
#define M(r) (qpk_layer_has_role(cf, r, l) ? f32_matrix(c, r) : (qpk_matrix){0})
    return (qpk_layer_weights){
        .q = M(QPK_ROLE_Q), .k = M(QPK_ROLE_K), .v = M(QPK_ROLE_V), .o = M(QPK_ROLE_O), .gate = M(QPK_ROLE_GATE),
        .up = M(QPK_ROLE_UP), .down = M(QPK_ROLE_DOWN), .attn_norm = c->f32[QPK_ROLE_ATTN_NORM],
        .ffn_norm = c->f32[QPK_ROLE_FFN_NORM], .bq = V(QPK_ROLE_Q_BIAS), .bk = V(QPK_ROLE_K_BIAS),
        .bv = V(QPK_ROLE_V_BIAS), .bo = V(QPK_ROLE_O_BIAS), .q_norm = V(QPK_ROLE_Q_NORM), .k_norm = V(QPK_ROLE_K_NORM),
        .router = M(QPK_ROLE_ROUTER), .exp_gate = M(QPK_ROLE_EXP_GATE), .exp_up = M(QPK_ROLE_EXP_UP),
        .exp_down = M(QPK_ROLE_EXP_DOWN), .sh_gate = M(QPK_ROLE_SHEXP_GATE), .sh_up = M(QPK_ROLE_SHEXP_UP),
        .sh_down = M(QPK_ROLE_SHEXP_DOWN), .sh_router = V(QPK_ROLE_SHEXP_ROUTER)};
#undef V
#undef M
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
        if (!src)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory gathering the experts of '%s'", name);
        qpk_st_to_f32(src, 0, (size_t)src->numel, c->f32[r]);
        qpk_checkpoint_release(c->ck, r, l); /* the f32 copy is what calibration reads */
        size_t bad = qpk_first_nonfinite(QPK_TYPE_F32, c->f32[r], (size_t)src->numel);
        if (bad != (size_t)src->numel)
            return qpk_err_setf(e, QPK_E_VALUE, "tensor '%s': element %zu is %g: calibration needs finite weights", name,
                                bad, (double)c->f32[r][bad]);
        QPK_TRY(qpk_tensor_plan(c->o, c->cfg, src, r, l, name, &c->type[r], &c->group[r], e));
    }
    return QPK_OK;
}

/* Runs the float layer on every window, collecting statistics; X becomes its output where that feeds the next layer. */
static qpk_status gather(qpk_calib *c, int l, qpk_err *e)
{
    plan_units(c->cfg, l, c->u, c->n_units);
    unit_widths(c->cfg, c->u, c->n_units);
    for (int g = 0; g < c->n_units; g++) {
        unit *s = &c->u[g];
        if (s->H)
            memset(s->H, 0, (size_t)(s->d * s->d) * sizeof *s->H);
        if (s->absmean)
            memset(s->absmean, 0, (size_t)s->d * sizeof *s->absmean);
        if (s->sumsq)
            memset(s->sumsq, 0, (size_t)s->d * sizeof *s->sumsq);
        s->n_rows = s->n_seen = s->n_tokens = 0;
    }
    qpk_layer_weights v = layer_view(c, l);
    /* Where advance makes the next layer's input, the float layer's output is never read and
     * down's input is captured before its product: a dense layer's down is left out (no rows). */
    const bool feeds = qpk_calib_feeds_float(c->o->method);
    if (!qpk_layer_is_sparse(c->cfg, l) && !feeds)
        v.down.rows = 0;
    size_t window = (size_t)c->p.seq_len * (size_t)c->cfg->hidden_size;
    for (int w = 0; w < c->p.samples; w++) {
        float *x = c->X + (size_t)w * window;
        if (!feeds)
            x = memcpy(c->tmp, x, window * sizeof(float));
        QPK_TRY(qpk_layer_forward(c->ctx, &v, l, x, c->p.seq_len, capture, c, e));
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
 * Stores rows sl of tensor sl.role as planned, from its f32 weights, and puts back into
 * f32 what the stored bytes decode to (what the next layer will see). Quantized types:
 * RTN, each group clipped by clip[row * groups + group] (rows of the slice) when clip is given.
 */
static qpk_status store_slice(qpk_calib *c, slice sl, const float *clip, const float *imp, qpk_err *e)
{
    const qpk_role r = sl.role;
    int64_t rows, cols;
    numel_of(c->cfg, r, &rows, &cols);
    const uint32_t type = c->type[r], G = c->group[r];
    const size_t rb = qpk_type_row_bytes(type, G, cols);
    float *w = c->f32[r] + sl.row0 * cols;
    uint8_t *out = c->bytes[r] + (size_t)sl.row0 * rb;
    c->nbytes[r] = (size_t)rows * rb;
    if (qpk_type_is_quantized(type) && !qpk_type_has_grid(type)) { /* ggml's block types: whole rows, weighted */
        qpk_status s = QPK_OK;
        for (int64_t i = 0; i < sl.rows && s == QPK_OK; i++) {
            uint8_t *o = out + (size_t)i * rb;
            if ((s = qpk_quantize_row_imp(type, G, w + i * cols, cols, imp, o, e)) != QPK_OK)
                qpk_err_prefix(e, s, "row %lld", (long long)(sl.row0 + i));
            else
                qpk_dequantize_row(type, G, o, cols, w + i * cols);
        }
        return s;
    }
    if (!qpk_type_is_quantized(type)) {
        size_t n = (size_t)(sl.rows * cols), bad = qpk_row_from_f32(type, w, out, n);
        if (bad != n)
            return qpk_err_setf(e, QPK_E_VALUE, "a weight (%g) does not fit %s", (double)w[bad], qpk_type_name(type));
        qpk_row_to_f32(type, out, w, n);
        return QPK_OK;
    }
    size_t bb = qpk_type_block_bytes(type, G);
    int64_t ng = cols / G;
    int32_t *codes = malloc((size_t)G * sizeof *codes);
    qpk_status s = codes ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < sl.rows && s == QPK_OK; i++)
        for (int64_t g = 0; g < ng && s == QPK_OK; g++) {
            qpk_qparams p;
            float *wg = w + i * cols + g * G;
            if ((s = qpk_quantize_group(type, wg, G, clip ? clip[i * ng + g] : 1.0f, &p, codes, wg, e)) != QPK_OK)
                qpk_err_prefix(e, s, "row %lld", (long long)(sl.row0 + i));
            else
                qpk_pack_group(type, G, &p, codes, out + (size_t)(i * ng + g) * bb);
        }
    free(codes);
    return s;
}

static qpk_status store(qpk_calib *c, qpk_role r, const float *clip, const float *imp, qpk_err *e)
{
    int64_t rows, cols;
    numel_of(c->cfg, r, &rows, &cols);
    return store_slice(c, (slice){r, 0, rows}, clip, imp, e);
}

/* An expert with too few routed tokens: round-to-nearest, unweighted (counted in the report). */
static bool too_few(const unit *u) { return u->expert && u->n_tokens < MIN_EXPERT_TOKENS; }

static qpk_status store_rtn(qpk_calib *c, const unit *u, qpk_err *e)
{
    for (int i = 0; i < u->n_lin; i++)
        QPK_TRY(store_slice(c, u->lin[i], NULL, NULL, e));
    return QPK_OK;
}

/* ------------------------------------------------------------------ GPTQ */

static qpk_status quantize_gptq(qpk_calib *c, qpk_err *e)
{
    for (int g = 0; g < c->n_units; g++) {
        const unit *u = &c->u[g];
        if (too_few(u)) {
            QPK_TRY(store_rtn(c, u, e));
            continue;
        }
        bool fitted = false; /* one factorization for the linears sharing this input */
        qpk_status s = QPK_OK;
        for (int i = 0; i < u->n_lin && s == QPK_OK; i++) {
            const slice sl = u->lin[i];
            int64_t rows, cols;
            numel_of(c->cfg, sl.role, &rows, &cols);
            if (!qpk_type_is_quantized(c->type[sl.role])) {
                s = store_slice(c, sl, NULL, NULL, e);
                continue;
            }
            if (!fitted) {
                qpk_gram_mirror(u->H, u->d);
                if ((s = qpk_gptq_plan_refit(c->plan, u->H, cols, &c->p.gptq, c->pool, e)) != QPK_OK)
                    break;
                fitted = true;
            }
            const size_t rb = qpk_type_row_bytes(c->type[sl.role], c->group[sl.role], cols);
            s = qpk_gptq_quantize(c->plan, c->type[sl.role], c->group[sl.role], c->f32[sl.role] + sl.row0 * cols, sl.rows,
                                  c->pool, c->bytes[sl.role] + (size_t)sl.row0 * rb, e);
            c->nbytes[sl.role] = rb * (size_t)rows;
        }
        QPK_TRY(s);
    }
    return QPK_OK;
}

/* ------------------------------------------------------------------- AWQ */

/* The unit's linears as quant/awq.c takes them. */
static int awq_linears(const qpk_calib *c, const unit *u, qpk_awq_linear lin[3])
{
    for (int i = 0; i < u->n_lin; i++) {
        const slice sl = u->lin[i];
        int64_t rows, cols;
        numel_of(c->cfg, sl.role, &rows, &cols);
        lin[i] = (qpk_awq_linear){c->f32[sl.role] + sl.row0 * cols, sl.rows, cols, c->type[sl.role], c->group[sl.role]};
    }
    return u->n_lin;
}

/*
 * Folds scales s into the unit's linears (columns x s) and into what produces their
 * input (/ s): the norm before q/k/v and before gate/up, the rows (and bias) of v
 * before o, the rows of up before down. In exact arithmetic the layer is unchanged.
 */
static void awq_fold(qpk_calib *c, const unit *u, const float *s)
{
    const int64_t d = u->d;
    for (int i = 0; i < u->n_lin; i++) {
        float *w = c->f32[u->lin[i].role] + u->lin[i].row0 * d;
        for (int64_t r = 0; r < u->lin[i].rows; r++)
            for (int64_t k = 0; k < d; k++)
                w[r * d + k] *= s[k];
    }
    if (u->fold == QPK_ROLE_ATTN_NORM || u->fold == QPK_ROLE_FFN_NORM) {
        for (int64_t k = 0; k < d; k++)
            c->f32[u->fold][k] /= s[k];
        return;
    }
    int64_t rows, cols;
    numel_of(c->cfg, u->prev.role, &rows, &cols);
    float *prev = c->f32[u->prev.role] + u->prev.row0 * cols;
    float *bias = u->fold == QPK_ROLE_V && c->f32[QPK_ROLE_V_BIAS] && qpk_layer_has_role(c->cfg, QPK_ROLE_V_BIAS, 0)
                      ? c->f32[QPK_ROLE_V_BIAS] : NULL;
    for (int64_t k = 0; k < d; k++) {
        for (int64_t j = 0; j < cols; j++)
            prev[k * cols + j] /= s[k];
        if (bias)
            bias[k] /= s[k];
    }
}

/* AWQ's scales of every unit on the float weights, each folded before the next is searched. */
static qpk_status awq_scales(qpk_calib *c, float **scales, qpk_err *e)
{
    const qpk_config *cf = c->cfg;
    qpk_status s = QPK_OK;
    for (int g = 0; g < c->n_units && s == QPK_OK; g++) {
        unit *st = &c->u[g];
        for (int64_t k = 0; k < st->d; k++)
            scales[g][k] = 1;
        /* Nothing to fold into (sparse gate/up), v's channels not one to one onto o's (GQA), no data: scale 1. */
        if (st->n_lin == 0 || st->fold == QPK_ROLE_COUNT_ || (g == U_O && cf->n_kv_heads != cf->n_heads) || too_few(st))
            continue;
        for (int64_t k = 0; k < st->d; k++)
            st->absmean[k] /= (double)(st->n_seen ? st->n_seen : 1);
        qpk_awq_linear lin[3];
        int n = awq_linears(c, st, lin);
        if ((s = qpk_awq_scales(lin, n, st->absmean, st->rows, st->n_rows, &c->p.awq, c->pool, c->k, scales[g], e)) ==
            QPK_OK)
            awq_fold(c, st, scales[g]);
    }
    return s;
}

/* The folded linears see x / s: their Hessian is diag(1/s) H diag(1/s) (the upper triangle is what is kept). */
static void scale_hessians(qpk_calib *c, float *const *scales)
{
    for (int g = 0; g < c->n_units; g++) {
        const int64_t d = c->u[g].d;
        for (int64_t i = 0; i < d; i++)
            for (int64_t j = i; j < d; j++)
                c->u[g].H[i * d + j] /= (double)scales[g][i] * scales[g][j];
    }
}

/* AWQ after its scales: each unit's clip ratios on the scaled weights and inputs, then storage. */
static qpk_status awq_clip_store(qpk_calib *c, float *const *scales, float *xs, float *clip, qpk_err *e)
{
    /* The folded float layer, when that is what is asked for (the scales were chosen for the planned types). */
    for (int i = 0; i < QPK_LAYER_ROLES; i++)
        if (c->f32[qpk_layer_role(i)])
            qpk_tensor_stored(c->o, qpk_layer_role(i), &c->type[qpk_layer_role(i)], &c->group[qpk_layer_role(i)]);
    /* q and k are not clipped: attention scores are sensitive to their outliers (as AutoAWQ does). */
    qpk_status s = QPK_OK;
    for (int g = 0; g < c->n_units && s == QPK_OK; g++) {
        unit *st = &c->u[g];
        if (too_few(st)) {
            s = store_rtn(c, st, e);
            continue;
        }
        for (int64_t t = 0; t < st->n_rows; t++)
            for (int64_t k = 0; k < st->d; k++)
                xs[t * st->d + k] = st->rows[t * st->d + k] / scales[g][k];
        /* What ggml's block fits weigh by: the scaled inputs' mean square. */
        for (int64_t k = 0; k < st->d; k++)
            st->imp[k] = (float)(st->sumsq[k] / (double)(st->n_seen ? st->n_seen : 1) / ((double)scales[g][k] * scales[g][k]));
        qpk_awq_linear lin[3];
        awq_linears(c, st, lin);
        for (int i = 0; i < st->n_lin && s == QPK_OK; i++) {
            const qpk_role r = st->lin[i].role;
            bool clipped = qpk_type_has_grid(c->type[r]) && r != QPK_ROLE_Q && r != QPK_ROLE_K;
            if (clipped)
                s = qpk_awq_clip(&lin[i], xs, st->n_rows, &c->p.awq, c->pool, c->k, clip, e);
            if (s == QPK_OK)
                s = store_slice(c, st->lin[i], clipped ? clip : NULL, st->imp, e);
        }
    }
    return s;
}

/* AWQ, and AWQ followed by GPTQ (the scales folded in, then GPTQ on the scaled weights instead of clipping). */
static qpk_status quantize_awq(qpk_calib *c, qpk_err *e)
{
    int64_t widest = 0, most = 0;
    for (int g = 0; g < c->n_units; g++)
        widest = c->u[g].d > widest ? c->u[g].d : widest;
    for (int i = 0; i < QPK_LAYER_ROLES; i++) {
        int64_t rows, cols, n = numel_of(c->cfg, qpk_layer_role(i), &rows, &cols);
        most = n > most ? n : most;
    }
    float **scales = calloc((size_t)c->n_units, sizeof *scales);
    float *xs = malloc((size_t)(c->p.awq.sample_rows * widest) * sizeof(float));
    float *clip = malloc((size_t)(most / QPK_GROUP_QUANTUM + 1) * sizeof(float));
    bool ok = scales && xs && clip;
    for (int g = 0; g < c->n_units && ok; g++)
        ok = (scales[g] = malloc((size_t)c->u[g].d * sizeof(float))) != NULL;
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
    for (int g = 0; scales && g < c->n_units; g++)
        free(scales[g]);
    free(scales);
    return s;
}

/* --------------------------------------------------------------- imatrix */

/*
 * Layer l's statistics as importance-matrix entries, before the layer is quantized: each
 * linear's input, the sum of each column's squares (GPTQ's Hessian diagonal, or the sums AWQ
 * and imatrix keep) over the tokens that reached it, named as llama.cpp names the weight; a
 * sparse layer's experts as one entry per projection of n_experts matrices (an expert's
 * tokens are those routed to it). The inputs are the ones calibration sees: the float
 * model's for imatrix, AWQ and AWQ+GPTQ (as llama-imatrix's), the quantized earlier
 * layers' for GPTQ.
 */
static qpk_status record_imatrix(qpk_calib *c, int l, qpk_err *e)
{
    const qpk_config *cf = c->cfg;
    const int64_t E = qpk_layer_is_sparse(cf, l) ? cf->n_experts : 0;
    float *exp_sum[2] = {NULL, NULL}, *exp_cnt[2] = {NULL, NULL};
    int64_t exp_d[2] = {0, 0};
    char name[QPK_MAX_NAME];
    qpk_status s = QPK_OK;
    for (int g = 0; g < c->n_units && s == QPK_OK; g++) {
        const unit *st = &c->u[g];
        if (!st->n_lin)
            continue;
        const int64_t d = st->d;
        float *sum = malloc((size_t)d * sizeof *sum);
        if (!sum)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        for (int64_t k = 0; k < d; k++)
            sum[k] = (float)(st->sumsq ? st->sumsq[k] : st->H[k * d + k]);
        const float count = (float)st->n_tokens;
        if (!st->expert) {
            for (int i = 0; i < st->n_lin && s == QPK_OK; i++) {
                qpk_gguf_tensor_name(name, sizeof name, st->lin[i].role, l);
                s = qpk_imatrix_add(c->save, name, d, 1, sum, &count, e);
            }
        } else {
            const int kind = (g - U_EXPERTS) % 2, x = (g - U_EXPERTS) / 2; /* 0: gate/up's input, 1: down's */
            if (!exp_sum[kind]) {
                exp_sum[kind] = calloc((size_t)(E * d), sizeof(float)), exp_cnt[kind] = calloc((size_t)E, sizeof(float));
                exp_d[kind] = d;
                if (!exp_sum[kind] || !exp_cnt[kind])
                    s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
            }
            if (s == QPK_OK)
                memcpy(exp_sum[kind] + x * d, sum, (size_t)d * sizeof *sum), exp_cnt[kind][x] = count;
        }
        free(sum);
    }
    static const qpk_role EXP_ROLES[2][2] = {{QPK_ROLE_EXP_GATE, QPK_ROLE_EXP_UP}, {QPK_ROLE_EXP_DOWN, QPK_ROLE_COUNT_}};
    for (int kind = 0; kind < 2; kind++)
        for (int i = 0; i < 2 && s == QPK_OK && exp_sum[kind] && EXP_ROLES[kind][i] != QPK_ROLE_COUNT_; i++) {
            qpk_gguf_tensor_name(name, sizeof name, EXP_ROLES[kind][i], l);
            s = qpk_imatrix_add(c->save, name, exp_d[kind], E, exp_sum[kind], exp_cnt[kind], e);
        }
    free(exp_sum[0]), free(exp_sum[1]), free(exp_cnt[0]), free(exp_cnt[1]);
    return s;
}

const qpk_imatrix *qpk_calib_imatrix(const qpk_calib *c) { return c->save; }

/* Round-to-nearest, ggml's block fits weighing each input column by its mean square (llama.cpp's imatrix). */
static qpk_status quantize_imatrix(qpk_calib *c, qpk_err *e)
{
    for (int g = 0; g < c->n_units; g++) {
        unit *st = &c->u[g];
        if (too_few(st)) {
            QPK_TRY(store_rtn(c, st, e));
            continue;
        }
        for (int64_t k = 0; k < st->d; k++)
            st->imp[k] = (float)(st->sumsq[k] / (double)(st->n_seen ? st->n_seen : 1));
        for (int i = 0; i < st->n_lin; i++)
            QPK_TRY(store_slice(c, st->lin[i], NULL, st->imp, e));
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
    if (s == QPK_OK && c->save)
        s = record_imatrix(c, l, e);
    double t1 = qpk_seconds();
    for (int g = U_EXPERTS; s == QPK_OK && g < c->n_units; g += 2) /* counted once per expert, by its gate/up */
        if (qpk_layer_is_sparse(c->cfg, l))
            *(too_few(&c->u[g]) || too_few(&c->u[g + 1]) ? &c->experts_rtn : &c->experts_calibrated) += 1;
    if (s == QPK_OK)
        s = c->o->method == QPK_METHOD_GPTQ  ? quantize_gptq(c, e)
            : qpk_method_uses_awq(c->o->method) ? quantize_awq(c, e)
                                             : quantize_imatrix(c, e);
    /* Norms and biases (AWQ may have rescaled some) are stored as planned. */
    for (int i = 0; i < QPK_LAYER_ROLES && s == QPK_OK; i++)
        if (!qpk_role_is_matrix(qpk_layer_role(i)) && qpk_layer_has_role(c->cfg, qpk_layer_role(i), l))
            s = store(c, qpk_layer_role(i), NULL, NULL, e);
    double t2 = qpk_seconds();
    if (s == QPK_OK && !qpk_calib_feeds_float(c->o->method))
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

bool qpk_calib_feeds_float(qpk_method m)
{
    return m == QPK_METHOD_AWQ || m == QPK_METHOD_AWQ_GPTQ || m == QPK_METHOD_IMATRIX;
}

void qpk_calib_experts(const qpk_calib *c, int64_t *calibrated, int64_t *rtn)
{
    *calibrated = c->experts_calibrated, *rtn = c->experts_rtn;
}
