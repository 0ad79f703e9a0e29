/*
 * The reference forward pass of Qwen2ForCausalLM. Shapes in comments: T tokens in
 * the batch, H hidden, I intermediate, Q = heads x head_dim, KV = kv_heads x head_dim.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "qpk_private.h"
#include "ops.h"
#include "qpk/runtime.h"

struct qpk_model {
    qpk_config cfg;
    bool has_perm; /* some linear takes its input permuted: contexts keep room to gather it */
    qpk_matrix embed, head; /* [V,H]; head is embed when tied */
    const float *final_norm;
    qpk_layer_weights *layers;
    float *vectors; /* norms and biases, converted to f32 once (a few KB per layer) */
};

/* ====================================================================== model */

static qpk_status get_matrix(qpk_weight_fn get, void *ud, const qpk_config *c, qpk_role role, int layer,
                             qpk_matrix *w, qpk_err *e)
{
    char name[QPK_MAX_NAME];
    int64_t dims[2];
    qpk_tensor_name(name, sizeof name, role, layer);
    QPK_TRY(get(ud, role, layer, w, e));
    int nd = qpk_role_shape(c, role, dims);
    int64_t rows = nd == 2 ? dims[0] : 1, cols = nd == 2 ? dims[1] : dims[0];
    if (w->rows != rows || w->cols != cols)
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor '%s' is %lld x %lld, the config implies %lld x %lld", name,
                            (long long)w->rows, (long long)w->cols, (long long)rows, (long long)cols);
    if (qpk_matrix_row_bytes(w) == 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor '%s': the runtime has no kernel for type %s", name,
                            qpk_type_name(w->type) ? qpk_type_name(w->type) : "?");
    /* A permutation takes each input exactly once: anything else would read past x or miss part of it. */
    return w->perm ? qpk_check_permutation(w->perm, w->cols, name, e) : QPK_OK;
}

/* A vector tensor converted to f32 at *cursor (which advances). */
static qpk_status get_vector(qpk_weight_fn get, void *ud, const qpk_config *c, qpk_role role, int layer,
                             float **cursor, const float **out, qpk_err *e)
{
    qpk_matrix w;
    QPK_TRY(get_matrix(get, ud, c, role, layer, &w, e));
    if (qpk_type_is_quantized(w.type) || w.perm) { /* every source checks this; a callback may not have */
        char name[QPK_MAX_NAME];
        qpk_tensor_name(name, sizeof name, role, layer);
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor '%s' is %s%s: norms and biases are vectors of floats",
                            name, qpk_type_name(w.type), w.perm ? " with a permutation" : "");
    }
    qpk_kernels_scalar()->row_to_f32(&w, 0, *cursor);
    *out = *cursor;
    *cursor += w.cols;
    return QPK_OK;
}

/* A 2-D float tensor (a router) in f32 at *cursor (which advances), as an F32 matrix. */
static qpk_status get_router(qpk_weight_fn get, void *ud, const qpk_config *c, qpk_role role, int layer,
                             float **cursor, qpk_matrix *out, qpk_err *e)
{
    qpk_matrix w;
    QPK_TRY(get_matrix(get, ud, c, role, layer, &w, e));
    if (qpk_type_is_quantized(w.type) || w.perm) {
        char name[QPK_MAX_NAME];
        qpk_tensor_name(name, sizeof name, role, layer);
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor '%s' is %s: routers stay float", name, qpk_type_name(w.type));
    }
    for (int64_t r = 0; r < w.rows; r++)
        qpk_kernels_scalar()->row_to_f32(&w, r, *cursor + r * w.cols);
    *out = (qpk_matrix){QPK_TYPE_F32, 0, w.rows, w.cols, *cursor, NULL};
    *cursor += w.rows * w.cols;
    return QPK_OK;
}

/* Floats the model keeps of its own: every norm, bias and router in f32. */
static size_t vector_floats(const qpk_config *c)
{
    size_t n = 0;
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role r;
        int l;
        int64_t d[2];
        qpk_model_tensor_at(c, i, &r, &l);
        if (!qpk_role_is_matrix(r))
            n += (size_t)(qpk_role_shape(c, r, d) == 2 ? d[0] * d[1] : d[0]);
    }
    return n;
}

/* A layer's weight matrices by role (the routers, copied to f32, are read apart and not counted). */
static const struct {
    qpk_role role;
    size_t at; /* offset of the qpk_matrix in qpk_layer_weights */
} LAYER_MATRICES[] = {
    {QPK_ROLE_Q, offsetof(qpk_layer_weights, q)},
    {QPK_ROLE_K, offsetof(qpk_layer_weights, k)},
    {QPK_ROLE_V, offsetof(qpk_layer_weights, v)},
    {QPK_ROLE_O, offsetof(qpk_layer_weights, o)},
    {QPK_ROLE_GATE, offsetof(qpk_layer_weights, gate)},
    {QPK_ROLE_UP, offsetof(qpk_layer_weights, up)},
    {QPK_ROLE_DOWN, offsetof(qpk_layer_weights, down)},
    {QPK_ROLE_EXP_GATE, offsetof(qpk_layer_weights, exp_gate)},
    {QPK_ROLE_EXP_UP, offsetof(qpk_layer_weights, exp_up)},
    {QPK_ROLE_EXP_DOWN, offsetof(qpk_layer_weights, exp_down)},
    {QPK_ROLE_SHEXP_GATE, offsetof(qpk_layer_weights, sh_gate)},
    {QPK_ROLE_SHEXP_UP, offsetof(qpk_layer_weights, sh_up)},
    {QPK_ROLE_SHEXP_DOWN, offsetof(qpk_layer_weights, sh_down)},
};

qpk_status qpk_model_create(qpk_model **out, const qpk_config *c, qpk_weight_fn get, void *ud, qpk_err *e)
{
    *out = NULL;
    qpk_model *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers)) ||
        !(m->vectors = malloc(vector_floats(c) * sizeof(float)))) {
        qpk_model_free(m);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    m->cfg = *c;
    float *cur = m->vectors;
    qpk_status s = get_matrix(get, ud, c, QPK_ROLE_EMBED, -1, &m->embed, e);
    if (s == QPK_OK)
        s = get_vector(get, ud, c, QPK_ROLE_FINAL_NORM, -1, &cur, &m->final_norm, e);
    if (s == QPK_OK && !c->tie_word_embeddings)
        s = get_matrix(get, ud, c, QPK_ROLE_LM_HEAD, -1, &m->head, e);
    else
        m->head = m->embed;
    for (int l = 0; l < c->n_layers && s == QPK_OK; l++) {
        qpk_layer_weights *L = &m->layers[l];
        const struct {
            qpk_role role;
            const float **v;
        } vecs[] = {{QPK_ROLE_ATTN_NORM, &L->attn_norm}, {QPK_ROLE_FFN_NORM, &L->ffn_norm},
                    {QPK_ROLE_Q_BIAS, &L->bq},           {QPK_ROLE_K_BIAS, &L->bk},
                    {QPK_ROLE_V_BIAS, &L->bv},           {QPK_ROLE_O_BIAS, &L->bo},
                    {QPK_ROLE_Q_NORM, &L->q_norm},       {QPK_ROLE_K_NORM, &L->k_norm}};
        for (size_t i = 0; i < sizeof LAYER_MATRICES / sizeof *LAYER_MATRICES && s == QPK_OK; i++) {
            const qpk_role role = LAYER_MATRICES[i].role;
            qpk_matrix *w = (qpk_matrix *)((char *)L + LAYER_MATRICES[i].at);
            if (!qpk_layer_has_role(c, role, l))
                continue;
            s = get_matrix(get, ud, c, role, l, w, e);
            if (s == QPK_OK && w->perm && qpk_role_is_expert(role))
                s = qpk_err_setf(e, QPK_E_UNSUPPORTED, "layer %d: a stacked expert matrix with an input permutation "
                                 "is not supported", l);
            m->has_perm |= s == QPK_OK && w->perm;
        }
        for (size_t i = 0; i < sizeof vecs / sizeof *vecs && s == QPK_OK; i++)
            if (qpk_layer_has_role(c, vecs[i].role, l))
                s = get_vector(get, ud, c, vecs[i].role, l, &cur, vecs[i].v, e);
        if (s == QPK_OK && qpk_layer_has_role(c, QPK_ROLE_ROUTER, l))
            s = get_router(get, ud, c, QPK_ROLE_ROUTER, l, &cur, &L->router, e);
        if (s == QPK_OK && qpk_layer_has_role(c, QPK_ROLE_SHEXP_ROUTER, l)) {
            qpk_matrix g;
            s = get_router(get, ud, c, QPK_ROLE_SHEXP_ROUTER, l, &cur, &g, e);
            L->sh_router = g.data;
        }
    }
    if (s != QPK_OK) {
        qpk_model_free(m);
        return s;
    }
    *out = m;
    return QPK_OK;
}

qpk_matrix qpk_expert_view(const qpk_matrix *w, int64_t n_experts, int64_t e)
{
    qpk_matrix v = *w;
    v.rows = w->rows / n_experts;
    v.data = (const uint8_t *)w->data + (size_t)e * (size_t)v.rows * qpk_matrix_row_bytes(w);
    return v;
}

static qpk_status source_weight(void *ud, qpk_role role, int layer, qpk_matrix *w, qpk_err *e)
{
    return qpk_source_matrix(ud, role, layer, w, e);
}

qpk_status qpk_model_from_source(qpk_model **out, qpk_source *src, qpk_err *e)
{
    *out = NULL;
    const qpk_config *c = qpk_source_config(src);
    if (!c)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "'%s' is not a model", qpk_source_path(src));
    return qpk_model_create(out, c, source_weight, src, e);
}

const qpk_layer_weights *qpk_model_layer(const qpk_model *m, int l)
{
    return l >= 0 && l < m->cfg.n_layers ? &m->layers[l] : NULL;
}

void qpk_model_free(qpk_model *m)
{
    if (!m)
        return;
    free(m->layers);
    free(m->vectors);
    free(m);
}

const qpk_config *qpk_model_config(const qpk_model *m) { return &m->cfg; }

void qpk_model_decode_reads(const qpk_model *m, qpk_read_fn f, void *ud)
{
    const qpk_config *c = &m->cfg;
    f(ud, QPK_ROLE_EMBED, -1, &m->embed, 1);
    for (int l = 0; l < c->n_layers; l++) {
        for (size_t i = 0; i < sizeof LAYER_MATRICES / sizeof *LAYER_MATRICES; i++) {
            const qpk_role role = LAYER_MATRICES[i].role;
            const qpk_matrix *w = (const qpk_matrix *)((const char *)&m->layers[l] + LAYER_MATRICES[i].at);
            const bool experts = qpk_role_is_expert(role);
            if (!w->rows || (experts && !c->n_experts))
                continue;
            /* a token reads the experts it is routed to: of E stacked blocks of rows, n_used */
            f(ud, role, l, w, experts ? w->rows / c->n_experts * c->n_experts_used : w->rows);
        }
    }
    f(ud, QPK_ROLE_LM_HEAD, -1, &m->head, m->head.rows);
}

static void add_bytes(void *ud, qpk_role role, int layer, const qpk_matrix *w, int64_t rows)
{
    (void)role, (void)layer;
    *(uint64_t *)ud += (uint64_t)rows * qpk_matrix_row_bytes(w);
}

uint64_t qpk_model_decode_bytes(const qpk_model *m)
{
    uint64_t b = 0;
    qpk_model_decode_reads(m, add_bytes, &b);
    return b;
}

/* ==================================================================== context */

/*
 * Queries per attention task: each key and value row is loaded once for this many queries
 * of a head (the kernels' tiles take 4 at a time), at the cost of a triangle of scores past
 * the queries' positions.
 */
#define ATTEND_BLOCK 8

struct qpk_context {
    const qpk_model *m;
    const qpk_kernels *k;
    qpk_pool *pool;
    bool own_pool;
    int n_ctx, n_batch, pos, cap; /* cap: positions the KV cache holds now */
    float **kcache, **vcache;     /* per layer: [kv_heads][cap][head_dim] */
    /* Activations for up to n_batch tokens. */
    float *x, *xn, *q, *kk, *vv, *att, *gate, *up; /* [T,H] [T,H] [T,Q] [T,KV] [T,KV] [T,Q] [T,I] [T,I] */
    /* Sparse layers: router probabilities, each token's experts and weights, one expert's
     * tokens (their rows gathered) and its output, the block's sum. */
    float *probs, *sel_w, *tok_w, *xg, *ey, *moe;   /* [T,E] [T,k] [T] [T,H] [T,H] [T,H] */
    int32_t *sel, *tok;                              /* [T,k] [T] */
    float *inv_freq;                                 /* [head_dim/2] */
    float rope_scale;                                /* YaRN's attention factor on cos and sin (else 1) */
    float *cos, *sin;                                /* [T, head_dim/2] for the batch's positions */
    float *scratch;                                  /* per thread: gemm scratch, then attention scores */
    float *xperm;                                    /* [T, widest]: an input gathered for a permuted linear */
    size_t scratch_per_thread;
};

static void *alloc_floats(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }

qpk_status qpk_context_create(qpk_context **out, const qpk_model *m, const qpk_context_opts *o, qpk_err *e)
{
    *out = NULL;
    const qpk_config *c = &m->cfg;
    qpk_context_opts d = {0};
    if (!o)
        o = &d;
    int n_ctx = o->n_ctx > 0 ? o->n_ctx : (int)c->max_position_embeddings;
    int n_batch = o->n_batch > 0 ? o->n_batch : 512;
    if (n_ctx > c->max_position_embeddings)
        return qpk_err_setf(e, QPK_E_LIMIT, "n_ctx %d exceeds max_position_embeddings %lld", n_ctx,
                            (long long)c->max_position_embeddings);
    n_batch = n_batch < n_ctx ? n_batch : n_ctx;
    const qpk_kernels *k = o->scalar    ? qpk_kernels_scalar()
                           : o->kernels ? qpk_kernels_named(o->kernels)
                                        : qpk_kernels_best();
    if (!k)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "no '%s' kernels on this CPU", o->kernels);
    qpk_context *x = calloc(1, sizeof *x);
    if (!x)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    x->m = m, x->n_ctx = n_ctx, x->n_batch = n_batch;
    x->k = k;
    x->pool = o->pool, x->own_pool = !o->pool;
    qpk_status s = x->own_pool ? qpk_pool_create(&x->pool, o->n_threads, e) : QPK_OK;
    if (s != QPK_OK) {
        free(x);
        return s;
    }
    if (x->own_pool && o->cancel)
        qpk_pool_set_cancel(x->pool, o->cancel, o->cancel_ud);
    size_t T = (size_t)n_batch, H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    size_t Q = (size_t)(c->n_heads * c->head_dim), KV = (size_t)(c->n_kv_heads * c->head_dim);
    size_t E = (size_t)c->n_experts, K = (size_t)c->n_experts_used;
    if ((size_t)c->moe_intermediate_size > I)
        I = (size_t)c->moe_intermediate_size;
    if ((size_t)c->shared_expert_intermediate_size > I)
        I = (size_t)c->shared_expert_intermediate_size;
    size_t widest = (size_t)(I > Q ? I : Q) > H ? (I > Q ? I : Q) : H;
    x->scratch_per_thread = qpk_gemm_scratch_floats((int64_t)widest);
    const size_t scores = (size_t)(n_batch < ATTEND_BLOCK ? n_batch : ATTEND_BLOCK) * (size_t)n_ctx;
    if (x->scratch_per_thread < scores + 16)
        x->scratch_per_thread = scores + 16;
    x->kcache = calloc((size_t)c->n_layers, sizeof *x->kcache);
    x->vcache = calloc((size_t)c->n_layers, sizeof *x->vcache);
    x->x = alloc_floats(T * H), x->xn = alloc_floats(T * H);
    x->q = alloc_floats(T * Q), x->att = alloc_floats(T * Q);
    x->kk = alloc_floats(T * KV), x->vv = alloc_floats(T * KV);
    x->gate = alloc_floats(T * I), x->up = alloc_floats(T * I);
    x->inv_freq = alloc_floats((size_t)c->head_dim / 2);
    x->cos = alloc_floats(T * (size_t)c->head_dim / 2), x->sin = alloc_floats(T * (size_t)c->head_dim / 2);
    x->scratch = alloc_floats(x->scratch_per_thread * (size_t)qpk_pool_threads(x->pool));
    x->xperm = m->has_perm ? alloc_floats(T * widest) : NULL;
    bool moe = E > 0;
    if (moe) {
        x->probs = alloc_floats(T * E), x->sel_w = alloc_floats(T * K), x->tok_w = alloc_floats(T);
        x->xg = alloc_floats(T * H), x->ey = alloc_floats(T * H), x->moe = alloc_floats(T * H);
        x->sel = malloc(T * K * sizeof *x->sel), x->tok = malloc(T * sizeof *x->tok);
    }
    if (!x->kcache || !x->vcache || !x->x || !x->xn || !x->q || !x->att || !x->kk || !x->vv || !x->gate ||
        !x->up || !x->inv_freq || !x->cos || !x->sin || !x->scratch || (m->has_perm && !x->xperm) ||
        (moe && (!x->probs || !x->sel_w || !x->tok_w || !x->xg || !x->ey || !x->moe || !x->sel || !x->tok))) {
        qpk_context_free(x);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for a context of %d tokens per batch", n_batch);
    }
    if (c->yarn.factor != 0)
        qpk_op_rope_freqs_yarn(x->inv_freq, c->rope_theta, c->head_dim, &c->yarn);
    else
        qpk_op_rope_freqs(x->inv_freq, c->rope_theta, c->head_dim);
    x->rope_scale = c->yarn.factor != 0 ? (float)c->yarn.attention_factor : 1.0f;
    *out = x;
    return QPK_OK;
}

void qpk_context_free(qpk_context *c)
{
    if (!c)
        return;
    for (int64_t l = 0; c->kcache && l < c->m->cfg.n_layers; l++) {
        free(c->kcache[l]);
        free(c->vcache[l]);
    }
    free(c->kcache), free(c->vcache);
    free(c->x), free(c->xn), free(c->q), free(c->att), free(c->kk), free(c->vv), free(c->gate), free(c->up);
    free(c->inv_freq), free(c->cos), free(c->sin), free(c->scratch), free(c->xperm);
    free(c->probs), free(c->sel_w), free(c->tok_w), free(c->xg), free(c->ey), free(c->moe), free(c->sel), free(c->tok);
    if (c->own_pool)
        qpk_pool_free(c->pool);
    free(c);
}

void qpk_context_reset(qpk_context *c) { c->pos = 0; }
int qpk_context_pos(const qpk_context *c) { return c->pos; }
const char *qpk_context_kernels(const qpk_context *c) { return c->k->name; }
const qpk_kernels *qpk_context_kernel_table(const qpk_context *c) { return c->k; }
qpk_pool *qpk_context_pool(qpk_context *c) { return c->pool; }

/* Grows the KV cache (doubling) so that it holds `need` positions. */
static qpk_status reserve(qpk_context *c, int need, qpk_err *e)
{
    if (need <= c->cap)
        return QPK_OK;
    const qpk_config *cf = &c->m->cfg;
    int cap = c->cap ? c->cap : 256;
    while (cap < need)
        cap *= 2;
    cap = cap < c->n_ctx ? cap : c->n_ctx;
    size_t hd = (size_t)cf->head_dim, per = (size_t)cf->n_kv_heads * (size_t)cap * hd;
    for (int64_t l = 0; l < cf->n_layers; l++) {
        float *nk = alloc_floats(per), *nv = alloc_floats(per);
        if (!nk || !nv) {
            free(nk), free(nv);
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for a KV cache of %d positions", cap);
        }
        for (int64_t h = 0; h < cf->n_kv_heads && c->pos > 0; h++) {
            memcpy(nk + (size_t)h * (size_t)cap * hd, c->kcache[l] + (size_t)h * (size_t)c->cap * hd,
                   (size_t)c->pos * hd * sizeof(float));
            memcpy(nv + (size_t)h * (size_t)cap * hd, c->vcache[l] + (size_t)h * (size_t)c->cap * hd,
                   (size_t)c->pos * hd * sizeof(float));
        }
        free(c->kcache[l]), free(c->vcache[l]);
        c->kcache[l] = nk, c->vcache[l] = nv;
    }
    c->cap = cap;
    return QPK_OK;
}

/* ================================================================ parallel ops */

/* y[T, rows] = x[T, cols] . W^T on all threads (x gathered first for a permuted linear). */
static void matmul(qpk_context *c, const qpk_matrix *w, const float *x, int64_t T, float *y)
{
    if (w->perm) {
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < w->cols; j++) {
                int32_t src;
                memcpy(&src, w->perm + j, 4);
                c->xperm[t * w->cols + j] = x[t * w->cols + src];
            }
        x = c->xperm;
    }
    qpk_matmul(c->pool, c->k, w, x, T, y, c->scratch);
}

/* Matrices that read the same x, in one pass of the pool (each on its own where one takes a permuted x). */
static void matmul_many(qpk_context *c, int n, const qpk_matrix *const w[], const float *x, int64_t T,
                        float *const y[])
{
    bool permuted = false;
    for (int i = 0; i < n; i++)
        permuted |= w[i]->perm != NULL;
    if (!permuted) {
        qpk_matmul_many(c->pool, c->k, n, w, x, T, y, c->scratch);
        return;
    }
    for (int i = 0; i < n; i++)
        matmul(c, w[i], x, T, y[i]);
}

static void add_bias(float *y, const float *b, int64_t T, int64_t n)
{
    if (!b)
        return;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < n; i++)
            y[t * n + i] += b[i];
}

typedef struct attn_job {
    qpk_context *c;
    int64_t layer, slot, T;
} attn_job;

/* One (block of query tokens, head), the last blocks (the most positions) first. */
static void attn_task(void *arg, int64_t task, int thread)
{
    attn_job *j = arg;
    qpk_context *c = j->c;
    const qpk_config *cf = &c->m->cfg;
    const int64_t hd = cf->head_dim, blocks = (j->T + ATTEND_BLOCK - 1) / ATTEND_BLOCK;
    const int64_t t = (blocks - 1 - task / cf->n_heads) * ATTEND_BLOCK, h = task % cf->n_heads;
    const int64_t nq = j->T - t < ATTEND_BLOCK ? j->T - t : ATTEND_BLOCK, kvh = h / (cf->n_heads / cf->n_kv_heads);
    const int64_t window = cf->use_sliding_window && j->layer >= cf->max_window_layers ? cf->sliding_window : 0;
    const size_t head = (size_t)kvh * (size_t)c->cap * (size_t)hd, ld = (size_t)(cf->n_heads * hd);
    qpk_op_attend(c->k, c->q + t * ld + h * hd, ld, nq, c->kcache[j->slot] + head, c->vcache[j->slot] + head,
                  c->pos + t, window, hd, c->scratch + (size_t)thread * c->scratch_per_thread,
                  c->att + t * ld + h * hd, ld);
}

typedef struct swiglu_job {
    const qpk_kernels *k;
    float *gate;
    const float *up;
    int64_t n, per;
} swiglu_job;

static void swiglu_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    swiglu_job *j = arg;
    int64_t i0 = task * j->per, i1 = i0 + j->per < j->n ? i0 + j->per : j->n;
    qpk_op_swiglu(j->k, j->gate + i0, j->up + i0, i1 - i0);
}

/* ============================================================= forward pass */

/* down(silu(gate(x)) * up(x)) of T rows of x into y, through c->gate and c->up; capture sees down's input. */
static void mlp(qpk_context *c, const qpk_matrix *gate, const qpk_matrix *up, const qpk_matrix *down, const float *x,
                int64_t T, float *y, qpk_role down_role, int expert, qpk_capture_fn capture, void *ud)
{
    matmul_many(c, 2, (const qpk_matrix *[]){gate, up}, x, T, (float *[]){c->gate, c->up});
    /* Pieces of at most 4096, at least one per thread: decode's one row (2816 of the 0.5B shape) was one task, its
       exponentials run on one thread while the others waited. */
    const int64_t n = T * gate->rows, threads = qpk_pool_threads(c->pool);
    int64_t per = (n + threads - 1) / threads;
    per = per < 64 ? 64 : per < 4096 ? (per + 63) / 64 * 64 : 4096;
    swiglu_job sj = {c->k, c->gate, c->up, n, per};
    qpk_pool_run(c->pool, (n + per - 1) / per, swiglu_task, &sj);
    if (capture)
        capture(ud, down_role, expert, c->gate, T, gate->rows);
    matmul(c, down, c->gate, T, y);
}

/*
 * Each token's experts: softmax of the router's logits (f32), the k largest (the lower
 * index first on a tie, so that routing never depends on the thread count), renormalized
 * when norm_topk_prob.
 */
static void route(qpk_context *c, const qpk_layer_weights *L, int64_t T)
{
    const qpk_config *cf = &c->m->cfg;
    const int64_t E = cf->n_experts, K = cf->n_experts_used;
    matmul(c, &L->router, c->xn, T, c->probs);
    for (int64_t t = 0; t < T; t++) {
        float *p = c->probs + t * E, *w = c->sel_w + t * K;
        int32_t *sel = c->sel + t * K;
        qpk_op_softmax(c->k, p, E);
        float sum = 0;
        for (int64_t k = 0; k < K; k++) {
            int32_t best = -1;
            for (int64_t x = 0; x < E; x++) {
                bool taken = false;
                for (int64_t j = 0; j < k && !taken; j++)
                    taken = sel[j] == x;
                if (!taken && (best < 0 || p[x] > p[best]))
                    best = (int32_t)x;
            }
            sel[k] = best, w[k] = p[best], sum += p[best];
        }
        if (cf->norm_topk_prob)
            for (int64_t k = 0; k < K; k++)
                w[k] /= sum;
    }
}

/*
 * The sparse MoE block on c->xn into c->xn: per expert, the tokens routed to it gathered
 * into one matrix product (prefill is matrix work per expert, not a product per token),
 * its output added to theirs with their routing weights, experts in index order; then
 * qwen2_moe's shared expert, gated by sigmoid(x . shared_expert_gate).
 */
static void moe_block(qpk_context *c, const qpk_layer_weights *L, int64_t T, qpk_capture_fn capture, void *ud)
{
    const qpk_config *cf = &c->m->cfg;
    const int64_t E = cf->n_experts, K = cf->n_experts_used, H = cf->hidden_size;
    route(c, L, T);
    memset(c->moe, 0, (size_t)(T * H) * sizeof(float));
    for (int64_t x = 0; x < E; x++) {
        int64_t n = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t k = 0; k < K; k++)
                if (c->sel[t * K + k] == x) {
                    c->tok[n] = (int32_t)t, c->tok_w[n] = c->sel_w[t * K + k];
                    memcpy(c->xg + n * H, c->xn + t * H, (size_t)H * sizeof(float));
                    n++;
                }
        if (n == 0)
            continue;
        if (capture)
            capture(ud, QPK_ROLE_EXP_GATE, (int)x, c->xg, n, H);
        qpk_matrix g = qpk_expert_view(&L->exp_gate, E, x), u = qpk_expert_view(&L->exp_up, E, x),
                   d = qpk_expert_view(&L->exp_down, E, x);
        mlp(c, &g, &u, &d, c->xg, n, c->ey, QPK_ROLE_EXP_DOWN, (int)x, capture, ud);
        for (int64_t i = 0; i < n; i++) {
            float *dst = c->moe + (int64_t)c->tok[i] * H, w = c->tok_w[i];
            for (int64_t h = 0; h < H; h++)
                dst[h] += c->ey[i * H + h] * w;
        }
    }
    if (L->sh_router) {
        mlp(c, &L->sh_gate, &L->sh_up, &L->sh_down, c->xn, T, c->ey, QPK_ROLE_SHEXP_DOWN, -1, capture, ud);
        for (int64_t t = 0; t < T; t++) {
            float z = c->k->dot(c->xn + t * H, L->sh_router, H), gate = 1.0f / (1.0f + expf(-z));
            for (int64_t h = 0; h < H; h++)
                c->moe[t * H + h] += gate * c->ey[t * H + h];
        }
    }
    memcpy(c->xn, c->moe, (size_t)(T * H) * sizeof(float));
}

/*
 * One decoder layer on the T hidden states in c->x: weights L, layer index l (the
 * sliding-window rule), KV cache slot `slot`. capture sees each linear group's input.
 */
static void forward_layer(qpk_context *c, const qpk_layer_weights *L, int64_t l, int64_t slot, int64_t T,
                          qpk_capture_fn capture, void *ud)
{
    const qpk_config *cf = &c->m->cfg;
    int64_t H = cf->hidden_size, Q = cf->n_heads * cf->head_dim, KV = cf->n_kv_heads * cf->head_dim;
    int64_t hd = cf->head_dim;

    /* Attention block. */
    float eps = (float)cf->rms_norm_eps;
    qpk_op_rms_norm(c->k, c->x, L->attn_norm, c->xn, T, H, eps);
    if (capture)
        capture(ud, QPK_ROLE_Q, -1, c->xn, T, H);
    matmul_many(c, 3, (const qpk_matrix *[]){&L->q, &L->k, &L->v}, c->xn, T, (float *[]){c->q, c->kk, c->vv});
    add_bias(c->q, L->bq, T, Q);
    add_bias(c->kk, L->bk, T, KV);
    add_bias(c->vv, L->bv, T, KV);
    if (L->q_norm) { /* Qwen3: RMSNorm over each head's values, before RoPE */
        qpk_op_rms_norm(c->k, c->q, L->q_norm, c->q, T * cf->n_heads, hd, eps);
        qpk_op_rms_norm(c->k, c->kk, L->k_norm, c->kk, T * cf->n_kv_heads, hd, eps);
    }
    qpk_op_rope(c->q, c->cos, c->sin, T, cf->n_heads, hd);
    qpk_op_rope(c->kk, c->cos, c->sin, T, cf->n_kv_heads, hd);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < cf->n_kv_heads; h++) {
            size_t at = ((size_t)h * (size_t)c->cap + (size_t)(c->pos + t)) * (size_t)hd;
            memcpy(c->kcache[slot] + at, c->kk + (t * cf->n_kv_heads + h) * hd, (size_t)hd * sizeof(float));
            memcpy(c->vcache[slot] + at, c->vv + (t * cf->n_kv_heads + h) * hd, (size_t)hd * sizeof(float));
        }
    attn_job aj = {c, l, slot, T};
    qpk_pool_run(c->pool, (T + ATTEND_BLOCK - 1) / ATTEND_BLOCK * cf->n_heads, attn_task, &aj);
    if (capture)
        capture(ud, QPK_ROLE_O, -1, c->att, T, cf->n_heads * hd);
    matmul(c, &L->o, c->att, T, c->xn);
    add_bias(c->xn, L->bo, T, H);
    for (int64_t i = 0; i < T * H; i++)
        c->x[i] += c->xn[i];

    /* MLP block: down(silu(gate(x)) * up(x)), or the sparse MoE block. */
    qpk_op_rms_norm(c->k, c->x, L->ffn_norm, c->xn, T, H, eps);
    if (capture)
        capture(ud, QPK_ROLE_GATE, -1, c->xn, T, H);
    if (L->router.rows)
        moe_block(c, L, T, capture, ud);
    else
        mlp(c, &L->gate, &L->up, &L->down, c->xn, T, c->xn, QPK_ROLE_DOWN, -1, capture, ud);
    for (int64_t i = 0; i < T * H; i++)
        c->x[i] += c->xn[i];
}

/* One batch of at most n_batch tokens; logits of its last n_logits. */
static qpk_status forward(qpk_context *c, const int32_t *tokens, int64_t T, float *logits, int64_t n_logits,
                          qpk_err *e)
{
    const qpk_config *cf = &c->m->cfg;
    int64_t H = cf->hidden_size;
    QPK_TRY(reserve(c, c->pos + (int)T, e));
    for (int64_t t = 0; t < T; t++)
        c->k->row_to_f32(&c->m->embed, tokens[t], c->x + t * H);
    qpk_op_rope_tables(c->cos, c->sin, c->inv_freq, c->pos, T, cf->head_dim / 2, c->rope_scale);
    for (int64_t l = 0; l < cf->n_layers; l++)
        forward_layer(c, &c->m->layers[l], l, l, T, NULL, NULL);
    c->pos += (int)T;
    if (n_logits == 0)
        return QPK_OK;
    qpk_op_rms_norm(c->k, c->x + (T - n_logits) * H, c->m->final_norm, c->xn, n_logits, H,
                    (float)cf->rms_norm_eps);
    matmul(c, &c->m->head, c->xn, n_logits, logits);
    return QPK_OK;
}

qpk_status qpk_eval(qpk_context *c, const int32_t *tokens, int n, float *logits, int n_logits, qpk_err *e)
{
    const qpk_config *cf = &c->m->cfg;
    if (n < 0 || n_logits < 0 || n_logits > n || (n_logits > 0 && !logits))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "bad token or logit count (%d, %d)", n, n_logits);
    if (n > c->n_ctx - c->pos)
        return qpk_err_setf(e, QPK_E_LIMIT, "%d tokens at position %d exceed the context of %d", n, c->pos,
                            c->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= cf->vocab_size)
            return qpk_err_setf(e, QPK_E_VALUE, "token id %d at index %d is outside the vocabulary (%lld)",
                                tokens[i], i, (long long)cf->vocab_size);
    for (int done = 0; done < n; done += c->n_batch) {
        int T = n - done < c->n_batch ? n - done : c->n_batch;
        /* This batch's share of the requested logits: those among the last n_logits tokens. */
        int first_wanted = n - n_logits, from = first_wanted > done ? first_wanted - done : 0;
        int want = from < T ? T - from : 0;
        float *out = want ? logits + (size_t)(done + from - first_wanted) * (size_t)cf->vocab_size : NULL;
        QPK_TRY(forward(c, tokens + done, T, out, want, e));
        if (qpk_pool_cancelled(c->pool))
            return qpk_err_setf(e, QPK_E_CANCELLED, "cancelled");
    }
    return QPK_OK;
}

qpk_status qpk_layer_forward(qpk_context *c, const qpk_layer_weights *w, int layer, float *x, int T,
                             qpk_capture_fn capture, void *ud, qpk_err *e)
{
    const qpk_config *cf = &c->m->cfg;
    if (T < 1 || T > c->n_batch)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%d tokens: a layer runs 1..%d at once", T, c->n_batch);
    c->pos = 0;
    QPK_TRY(reserve(c, T, e));
    size_t bytes = (size_t)T * (size_t)cf->hidden_size * sizeof(float);
    memcpy(c->x, x, bytes);
    qpk_op_rope_tables(c->cos, c->sin, c->inv_freq, 0, T, cf->head_dim / 2, c->rope_scale);
    forward_layer(c, w, layer, 0, T, capture, ud); /* cache slot 0: the context is reset below */
    memcpy(x, c->x, bytes);
    c->pos = 0;
    return qpk_pool_cancelled(c->pool) ? qpk_err_setf(e, QPK_E_CANCELLED, "cancelled") : QPK_OK;
}
