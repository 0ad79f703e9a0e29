/*
 * Layer-by-layer calibrated quantization (GPTQ, AWQ). The hidden states of the
 * calibration windows enter layer 0; for each layer in order:
 *   1. run the float layer on every window, collecting what the method needs from
 *      the inputs of each group of linears (q/k/v, o, gate/up, down);
 *   2. quantize the layer's linears (GPTQ, or AWQ's scales, folding and clipping);
 *   3. run the quantized layer to make the next layer's inputs, so that each layer is
 *      calibrated on what the quantized model really feeds it.
 * Memory: the windows' hidden states, one layer in f32 and its statistics.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* Linear groups sharing one input: the input of q/k/v, of o, of gate/up, of down. */
enum { G_QKV, G_O, G_GU, G_DOWN, N_GROUPS };

#define AWQ_GRID 20       /* alphas 0, 1/20, ..., 19/20 */
#define AWQ_CLIP_STEPS 11 /* clip ratios 1.00, 0.95, ..., 0.50 */
#define AWQ_SAMPLE_ROWS 512 /* input rows kept per group for AWQ's searches */
#define GRAM_SLABS 8        /* row slabs of GPTQ's symmetric x^T x: 1/2 + 1/16 of the work */

/* The 12 per-layer tensors, in the order qpk files store them (format/config.c). */
#define N_LAYER_TENSORS 12

typedef struct group_stats {
    int64_t d;          /* input width */
    double *H;          /* GPTQ: sum of x x^T (d x d; upper triangle until the plan) */
    double *absmean;    /* AWQ: sum of |x| per channel */
    float *rows;        /* AWQ: sampled input rows (AWQ_SAMPLE_ROWS x d) */
    int64_t n_rows, n_seen;
} group_stats;

struct qpk_calib {
    qpk_checkpoint *ck;
    const qpk_convert_opts *o;
    const qpk_config *cfg;
    qpk_pool *pool;
    const qpk_kernels *k;
    qpk_model *model; /* the source model: only sizes the context */
    qpk_context *ctx;
    int n, L;         /* windows and their length */
    float *X;         /* [n][L][H] hidden states entering the current layer */
    float *tmp;       /* one window */
    float *scratch;   /* matmul scratch for every thread */
    float *xt, *xtx;  /* GPTQ: a window's captured input transposed, and its x^T x */
    group_stats st[N_GROUPS];
    int64_t sample_stride;
    /* The current layer: f32 weights by role, what each is stored as, and its bytes. */
    float *f32[QPK_ROLE_COUNT_];
    uint32_t type[QPK_ROLE_COUNT_], group[QPK_ROLE_COUNT_];
    uint8_t *bytes[QPK_ROLE_COUNT_];
    size_t nbytes[QPK_ROLE_COUNT_];
    qpk_status status; /* of captures, which cannot return one */
    qpk_err err;
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
    int64_t H = c->cfg->hidden_size;
    if (co->n_tokens < (size_t)c->L)
        return qpk_err_setf(e, QPK_E_MISMATCH, "calibration needs at least %d tokens (--calib-len), got %zu", c->L,
                            co->n_tokens);
    uint64_t seed = co->seed, span = co->n_tokens - (size_t)c->L + 1;
    for (int w = 0; w < c->n; w++) {
        uint64_t start = mix(&seed) % span;
        for (int t = 0; t < c->L; t++) {
            int32_t id = co->tokens[start + (uint64_t)t];
            if (id < 0 || id >= c->cfg->vocab_size)
                return qpk_err_setf(e, QPK_E_VALUE, "calibration token %d at %llu is outside the vocabulary", id,
                                    (unsigned long long)(start + (uint64_t)t));
            qpk_st_to_f32(emb, (uint64_t)id * (uint64_t)H, (size_t)H, c->X + ((size_t)w * (size_t)c->L + (size_t)t) * (size_t)H);
        }
    }
    return QPK_OK;
}

/* ------------------------------------------------------------ statistics */

static void capture(void *ud, qpk_role role, const float *x, int64_t T, int64_t n)
{
    qpk_calib *c = ud;
    int g = role == QPK_ROLE_Q ? G_QKV : role == QPK_ROLE_O ? G_O : role == QPK_ROLE_GATE ? G_GU : G_DOWN;
    group_stats *s = &c->st[g];
    if (c->o->method == QPK_METHOD_GPTQ) {
        /*
         * H += x^T x, as the f32 Gram matrix of the columns of x, accumulated in f64.
         * Only its upper triangle (mirrored once the layer is seen): slab by slab of
         * rows, the columns from the slab's first row on, 56% of the full product.
         */
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < n; i++)
                c->xt[i * T + t] = x[t * n + i];
        for (int slab = 0; slab < GRAM_SLABS; slab++) {
            const int64_t a0 = n * slab / GRAM_SLABS, a1 = n * (slab + 1) / GRAM_SLABS, w = n - a0;
            if (a1 == a0)
                continue;
            qpk_matrix m = {QPK_TYPE_F32, 0, w, T, c->xt + a0 * T};
            qpk_matmul(c->pool, c->k, &m, c->xt + a0 * T, a1 - a0, c->xtx, c->scratch);
            for (int64_t a = a0; a < a1; a++)
                for (int64_t b = a; b < n; b++)
                    s->H[a * n + b] += c->xtx[(a - a0) * w + (b - a0)];
        }
    } else {
        for (int64_t t = 0; t < T; t++) {
            for (int64_t i = 0; i < n; i++)
                s->absmean[i] += fabs((double)x[t * n + i]);
            if (s->n_seen++ % c->sample_stride == 0 && s->n_rows < AWQ_SAMPLE_ROWS)
                memcpy(s->rows + (size_t)(s->n_rows++) * (size_t)n, x + t * n, (size_t)n * sizeof *x);
        }
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
        free(c->st[g].H), free(c->st[g].absmean), free(c->st[g].rows);
    for (int r = 0; r < QPK_ROLE_COUNT_; r++)
        free(c->f32[r]), free(c->bytes[r]);
    free(c->X), free(c->tmp), free(c->scratch), free(c->xt), free(c->xtx);
    free(c);
}

qpk_status qpk_calib_begin(qpk_calib **out, qpk_checkpoint *ck, const qpk_convert_opts *o, qpk_pool *pool,
                           qpk_err *e)
{
    *out = NULL;
    qpk_calib *c = calloc(1, sizeof *c);
    if (!c)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    c->ck = ck, c->o = o, c->cfg = qpk_checkpoint_config(ck), c->pool = pool, c->k = qpk_kernels_best();
    c->n = o->calib.samples > 0 ? o->calib.samples : 64;
    c->L = o->calib.seq_len > 0 ? o->calib.seq_len : 512;
    const qpk_config *cf = c->cfg;
    int64_t H = cf->hidden_size, I = cf->intermediate_size, Q = cf->n_heads * cf->head_dim;
    int64_t widths[N_GROUPS] = {H, Q, H, I}, widest = I > H ? I : H;
    widest = widest > Q ? widest : Q;
    int threads = qpk_pool_threads(pool);
    c->X = malloc((size_t)c->n * (size_t)c->L * (size_t)H * sizeof(float));
    c->tmp = malloc((size_t)c->L * (size_t)H * sizeof(float));
    c->scratch = malloc((size_t)threads * qpk_gemm_scratch_floats(widest > c->L ? widest : c->L) * sizeof(float));
    bool ok = c->X && c->tmp && c->scratch;
    c->sample_stride = (int64_t)c->n * c->L / AWQ_SAMPLE_ROWS;
    c->sample_stride = c->sample_stride > 0 ? c->sample_stride : 1;
    for (int g = 0; g < N_GROUPS && ok; g++) {
        group_stats *s = &c->st[g];
        s->d = widths[g];
        if (o->method == QPK_METHOD_GPTQ)
            ok = (s->H = malloc((size_t)(s->d * s->d) * sizeof(double))) != NULL;
        else
            ok = (s->absmean = malloc((size_t)s->d * sizeof(double))) &&
                 (s->rows = malloc((size_t)AWQ_SAMPLE_ROWS * (size_t)s->d * sizeof(float)));
    }
    if (ok && o->method == QPK_METHOD_GPTQ)
        ok = (c->xt = malloc((size_t)(widest * c->L) * sizeof(float))) &&
             (c->xtx = malloc((size_t)(widest * widest) * sizeof(float)));
    for (int r = 0; r < QPK_ROLE_COUNT_ && ok; r++) {
        int64_t rows, cols;
        if (qpk_role_is_per_layer((qpk_role)r))
            ok = (c->f32[r] = malloc((size_t)numel_of(cf, (qpk_role)r, &rows, &cols) * sizeof(float))) &&
                 (c->bytes[r] = malloc((size_t)(rows * cols) * sizeof(float)));
    }
    qpk_status s = ok ? QPK_OK
                      : qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %d calibration windows of %d tokens", c->n,
                                     c->L);
    if (s == QPK_OK)
        s = qpk_checkpoint_model(&c->model, ck, e);
    qpk_context_opts co = {.n_ctx = c->L, .n_batch = c->L, .pool = pool};
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

static qpk_layer_weights layer_view(const qpk_calib *c)
{
    return (qpk_layer_weights){
        f32_matrix(c, QPK_ROLE_Q),    f32_matrix(c, QPK_ROLE_K),  f32_matrix(c, QPK_ROLE_V),
        f32_matrix(c, QPK_ROLE_O),    f32_matrix(c, QPK_ROLE_GATE), f32_matrix(c, QPK_ROLE_UP),
        f32_matrix(c, QPK_ROLE_DOWN), c->f32[QPK_ROLE_ATTN_NORM], c->f32[QPK_ROLE_FFN_NORM],
        c->f32[QPK_ROLE_Q_BIAS],      c->f32[QPK_ROLE_K_BIAS],    c->f32[QPK_ROLE_V_BIAS]};
}

static qpk_status load_layer(qpk_calib *c, int l, qpk_err *e)
{
    for (int r = 0; r < QPK_ROLE_COUNT_; r++) {
        if (!qpk_role_is_per_layer((qpk_role)r))
            continue;
        char name[QPK_MAX_NAME];
        qpk_tensor_name(name, sizeof name, (qpk_role)r, l);
        const qpk_st_tensor *src = qpk_checkpoint_tensor(c->ck, (qpk_role)r, l);
        qpk_st_to_f32(src, 0, (size_t)src->numel, c->f32[r]);
        qpk_status s = qpk_tensor_plan(c->o, src, (qpk_role)r, name, &c->type[r], &c->group[r], e);
        if (s != QPK_OK)
            return s;
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
        s->n_rows = s->n_seen = 0;
    }
    qpk_layer_weights v = layer_view(c);
    size_t window = (size_t)c->L * (size_t)c->cfg->hidden_size;
    for (int w = 0; w < c->n; w++) {
        memcpy(c->tmp, c->X + (size_t)w * window, window * sizeof(float));
        qpk_status s = qpk_layer_forward(c->ctx, &v, l, c->tmp, c->L, capture, c, e);
        if (s != QPK_OK)
            return s;
    }
    return QPK_OK;
}

/* Runs the layer as quantized on every window: X becomes the next layer's input. */
static qpk_status advance(qpk_calib *c, int l, qpk_err *e)
{
    qpk_layer_weights v = layer_view(c);
    size_t window = (size_t)c->L * (size_t)c->cfg->hidden_size;
    for (int w = 0; w < c->n; w++) {
        qpk_status s = qpk_layer_forward(c->ctx, &v, l, c->X + (size_t)w * window, c->L, NULL, NULL, e);
        if (s != QPK_OK)
            return s;
    }
    return QPK_OK;
}

/*
 * Stores tensor r as planned, from its f32 weights, and puts back into f32[r] what the
 * stored bytes decode to (what the next layer will see). Quantized types: RTN, each
 * group clipped by clip[row * groups + group] when clip is given.
 */
static qpk_status store(qpk_calib *c, qpk_role r, const float *clip, qpk_err *e)
{
    int64_t rows, cols;
    numel_of(c->cfg, r, &rows, &cols);
    uint32_t type = c->type[r], G = c->group[r];
    float *w = c->f32[r];
    if (!qpk_type_is_quantized(type)) {
        size_t esize = type == QPK_TYPE_F32 ? 4 : 2, bad = qpk_row_from_f32(type, w, c->bytes[r], (size_t)(rows * cols));
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
            if ((s = qpk_group_params(type, wg, G, clip ? clip[i * ng + g] : 1.0f, &p, e)) != QPK_OK) {
                qpk_err_prefix(e, "row %lld", (long long)i);
                break;
            }
            for (int64_t k = 0; k < G; k++) {
                codes[k] = qpk_quantize_value(type, &p, wg[k]);
                wg[k] = qpk_dequantize_value(type, &p, codes[k]);
            }
            qpk_pack_group(type, G, &p, codes, c->bytes[r] + (size_t)(i * ng + g) * bb);
        }
    free(codes);
    c->nbytes[r] = (size_t)(rows * ng) * bb;
    return s;
}

/* The linears fed by each group's input. */
static const qpk_role GROUP_ROLES[N_GROUPS][3] = {
    {QPK_ROLE_Q, QPK_ROLE_K, QPK_ROLE_V}, {QPK_ROLE_O}, {QPK_ROLE_GATE, QPK_ROLE_UP}, {QPK_ROLE_DOWN}};
static const int GROUP_SIZE[N_GROUPS] = {3, 1, 2, 1};

/* ------------------------------------------------------------------ GPTQ */

static qpk_status quantize_gptq(qpk_calib *c, qpk_err *e)
{
    qpk_gptq_opts go = {c->o->calib.damp, c->o->calib.act_order};
    for (int g = 0; g < N_GROUPS; g++) {
        qpk_gptq_plan *plan = NULL; /* one factorization for the linears sharing this input */
        qpk_status s = QPK_OK;
        for (int i = 0; i < GROUP_SIZE[g] && s == QPK_OK; i++) {
            qpk_role r = GROUP_ROLES[g][i];
            int64_t rows, cols;
            numel_of(c->cfg, r, &rows, &cols);
            if (!qpk_type_is_quantized(c->type[r])) {
                s = store(c, r, NULL, e);
                continue;
            }
            if (!plan) {
                const int64_t d = c->st[g].d;
                double *H = c->st[g].H;
                for (int64_t a = 0; a < d; a++) /* capture filled the upper triangle */
                    for (int64_t b = 0; b < a; b++)
                        H[a * d + b] = H[b * d + a];
                if ((s = qpk_gptq_plan_create(&plan, H, cols, &go, c->pool, e)) != QPK_OK)
                    break;
            }
            s = qpk_gptq_quantize(plan, c->type[r], c->group[r], c->f32[r], rows, c->pool, c->bytes[r], e);
            c->nbytes[r] = (size_t)(rows * (cols / c->group[r])) * qpk_type_block_bytes(c->type[r], c->group[r]);
        }
        qpk_gptq_plan_free(plan);
        if (s != QPK_OK)
            return s;
    }
    return QPK_OK;
}

/* ------------------------------------------------------------------- AWQ */

typedef struct fq_job {
    uint32_t type, G;
    const float *w, *s; /* s: column scales, or NULL */
    float *out;
    int64_t rows, cols;
} fq_job;

/* out = W x diag(s), each group quantized and decoded (RTN), x diag(1/s): the weights AWQ would use. */
static void fq_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    fq_job *j = arg;
    const int64_t per = 16, r1 = (task + 1) * per < j->rows ? (task + 1) * per : j->rows;
    for (int64_t i = task * per; i < r1; i++) {
        float *o = j->out + i * j->cols;
        for (int64_t k = 0; k < j->cols; k++)
            o[k] = j->w[i * j->cols + k] * (j->s ? j->s[k] : 1.0f);
        for (int64_t g = 0; g < j->cols; g += j->G) {
            qpk_qparams p;
            if (qpk_group_params(j->type, o + g, j->G, 1.0f, &p, NULL) != QPK_OK)
                continue; /* non-finite: caught when the tensor is stored */
            for (int64_t k = g; k < g + j->G; k++)
                o[k] = qpk_dequantize_value(j->type, &p, qpk_quantize_value(j->type, &p, o[k]));
        }
        for (int64_t k = 0; k < j->cols && j->s; k++)
            o[k] /= j->s[k];
    }
}

typedef struct awq_ws {
    float *wq, *y, *yref[3], *s, *xs;
} awq_ws;

/* Sum over the group's quantized linears of |X W^T - X Wq^T|^2 on the sampled rows X. */
static double group_loss(qpk_calib *c, int g, const float *s, awq_ws *ws)
{
    group_stats *st = &c->st[g];
    double loss = 0;
    for (int i = 0; i < GROUP_SIZE[g]; i++) {
        qpk_role r = GROUP_ROLES[g][i];
        if (!qpk_type_is_quantized(c->type[r]))
            continue;
        qpk_matrix m = f32_matrix(c, r);
        fq_job fj = {c->type[r], c->group[r], c->f32[r], s, ws->wq, m.rows, m.cols};
        qpk_pool_run(c->pool, (m.rows + 15) / 16, fq_task, &fj);
        qpk_matrix mq = {QPK_TYPE_F32, 0, m.rows, m.cols, ws->wq};
        qpk_matmul(c->pool, c->k, &mq, st->rows, st->n_rows, ws->y, c->scratch);
        for (int64_t k = 0; k < st->n_rows * m.rows; k++) {
            double d = (double)ws->y[k] - (double)ws->yref[i][k];
            loss += d * d;
        }
    }
    return loss;
}

/*
 * AWQ's scales for group g: s = mean|x|^alpha per input channel (normalized so that
 * max(s) min(s) = 1), alpha on a grid of 20 points in [0, 1), chosen to minimize the
 * output error of the group's linears on the sampled inputs. alpha = 0 is plain RTN,
 * so the choice is never worse than RTN on those samples. best_s gets the scales (all
 * 1 when nothing in the group is quantized).
 */
static qpk_status awq_scales(qpk_calib *c, int g, float *best_s, awq_ws *ws, qpk_err *e)
{
    group_stats *st = &c->st[g];
    const int64_t d = st->d;
    bool any = false;
    for (int64_t k = 0; k < d; k++)
        best_s[k] = 1;
    for (int i = 0; i < GROUP_SIZE[g]; i++)
        any |= qpk_type_is_quantized(c->type[GROUP_ROLES[g][i]]);
    if (!any || st->n_rows == 0)
        return QPK_OK;
    for (int i = 0; i < GROUP_SIZE[g]; i++) {
        qpk_matrix m = f32_matrix(c, GROUP_ROLES[g][i]);
        if (qpk_type_is_quantized(c->type[GROUP_ROLES[g][i]]))
            qpk_matmul(c->pool, c->k, &m, st->rows, st->n_rows, ws->yref[i], c->scratch);
    }
    double best = INFINITY;
    for (int a = 0; a < AWQ_GRID; a++) {
        double alpha = (double)a / AWQ_GRID, mx = 0, mn = INFINITY;
        for (int64_t k = 0; k < d; k++) {
            double m = st->absmean[k] / (double)(st->n_seen ? st->n_seen : 1);
            ws->s[k] = (float)pow(m > 1e-8 ? m : 1e-8, alpha);
            mx = ws->s[k] > mx ? ws->s[k] : mx;
            mn = ws->s[k] < mn ? ws->s[k] : mn;
        }
        float norm = (float)sqrt(mx * mn);
        for (int64_t k = 0; k < d; k++)
            ws->s[k] /= norm;
        double loss = group_loss(c, g, ws->s, ws);
        if (!isfinite(loss))
            return qpk_err_setf(e, QPK_E_VALUE, "AWQ: the search loss is not finite (alpha %g)", alpha);
        if (loss < best) {
            best = loss;
            memcpy(best_s, ws->s, (size_t)d * sizeof *best_s);
        }
    }
    return QPK_OK;
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

typedef struct clip_job {
    qpk_calib *c;
    qpk_role r;
    const float *xs; /* the sampled inputs, divided by the group's scales */
    int64_t ns;
    float *clip;     /* [rows][groups] */
    float *dw;       /* per thread: one group's weight errors */
} clip_job;

/* For each group of each row, the clip ratio with the least output error on the samples. */
static void clip_task(void *arg, int64_t task, int thread)
{
    clip_job *j = arg;
    qpk_calib *c = j->c;
    qpk_matrix m = f32_matrix(c, j->r);
    const uint32_t type = c->type[j->r];
    const int64_t G = c->group[j->r], ng = m.cols / G, per = 8;
    const int64_t r1 = (task + 1) * per < m.rows ? (task + 1) * per : m.rows;
    float *dw = j->dw + (size_t)thread * (size_t)G;
    for (int64_t i = task * per; i < r1; i++)
        for (int64_t g = 0; g < ng; g++) {
            const float *w = c->f32[j->r] + i * m.cols + g * G;
            double best = INFINITY;
            j->clip[i * ng + g] = 1;
            for (int step = 0; step < AWQ_CLIP_STEPS; step++) {
                float ratio = 1.0f - 0.05f * (float)step;
                qpk_qparams p;
                if (qpk_group_params(type, w, G, ratio, &p, NULL) != QPK_OK)
                    break;
                for (int64_t k = 0; k < G; k++)
                    dw[k] = w[k] - qpk_dequantize_value(type, &p, qpk_quantize_value(type, &p, w[k]));
                double err = 0;
                for (int64_t t = 0; t < j->ns; t++) {
                    double y = c->k->dot(j->xs + t * m.cols + g * G, dw, G);
                    err += y * y;
                }
                if (err < best)
                    best = err, j->clip[i * ng + g] = ratio;
            }
        }
}

static qpk_status quantize_awq(qpk_calib *c, qpk_err *e)
{
    const qpk_config *cf = c->cfg;
    int64_t widest = cf->intermediate_size > cf->hidden_size ? cf->intermediate_size : cf->hidden_size;
    int64_t ns = AWQ_SAMPLE_ROWS, most_rows = 0;
    for (int r = 0; r < QPK_ROLE_COUNT_; r++)
        if (qpk_role_is_per_layer((qpk_role)r) && qpk_role_is_matrix((qpk_role)r)) {
            qpk_matrix m = f32_matrix(c, (qpk_role)r);
            most_rows = m.rows > most_rows ? m.rows : most_rows;
        }
    awq_ws ws = {malloc((size_t)(most_rows * widest) * sizeof(float)), malloc((size_t)(ns * most_rows) * sizeof(float)),
                 {malloc((size_t)(ns * most_rows) * sizeof(float)), malloc((size_t)(ns * most_rows) * sizeof(float)),
                  malloc((size_t)(ns * most_rows) * sizeof(float))},
                 malloc((size_t)widest * sizeof(float)), malloc((size_t)(ns * widest) * sizeof(float))};
    float *scales[N_GROUPS] = {0}, *clip = malloc((size_t)(most_rows * widest / QPK_GROUP_QUANTUM + 1) * sizeof(float));
    float *dw = malloc((size_t)qpk_pool_threads(c->pool) * (size_t)widest * sizeof(float));
    bool ok = ws.wq && ws.y && ws.yref[0] && ws.yref[1] && ws.yref[2] && ws.s && ws.xs && clip && dw;
    for (int g = 0; g < N_GROUPS && ok; g++)
        ok = (scales[g] = malloc((size_t)c->st[g].d * sizeof(float))) != NULL;
    qpk_status s = ok ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory for AWQ");
    /* Scales first, every group on the float weights, each folded before the next is searched. */
    for (int g = 0; g < N_GROUPS && s == QPK_OK; g++) {
        if (g == G_O && cf->n_kv_heads != cf->n_heads) { /* v's channels do not map one to one onto o's */
            for (int64_t k = 0; k < c->st[g].d; k++)
                scales[g][k] = 1;
            continue;
        }
        if ((s = awq_scales(c, g, scales[g], &ws, e)) == QPK_OK)
            awq_fold(c, g, scales[g]);
    }
    /* The folded float layer, when that is what is asked for (the scales were chosen for the planned types). */
    for (int r = 0; r < QPK_ROLE_COUNT_ && c->o->calib.awq_fold_only; r++)
        if (qpk_role_is_per_layer((qpk_role)r) && qpk_role_is_matrix((qpk_role)r))
            c->type[r] = QPK_TYPE_F32, c->group[r] = 0;
    /* Then clipping, on the scaled weights and inputs, and storage. q and k are not
     * clipped: attention scores are sensitive to their outliers (as AutoAWQ does). */
    for (int g = 0; g < N_GROUPS && s == QPK_OK; g++) {
        group_stats *st = &c->st[g];
        for (int64_t t = 0; t < st->n_rows; t++)
            for (int64_t k = 0; k < st->d; k++)
                ws.xs[t * st->d + k] = st->rows[t * st->d + k] / scales[g][k];
        for (int i = 0; i < GROUP_SIZE[g] && s == QPK_OK; i++) {
            qpk_role r = GROUP_ROLES[g][i];
            bool clipped = qpk_type_is_quantized(c->type[r]) && r != QPK_ROLE_Q && r != QPK_ROLE_K;
            if (clipped) {
                clip_job cj = {c, r, ws.xs, st->n_rows, clip, dw};
                qpk_matrix m = f32_matrix(c, r);
                qpk_pool_run(c->pool, (m.rows + 7) / 8, clip_task, &cj);
            }
            s = store(c, r, clipped ? clip : NULL, e);
        }
    }
    free(ws.wq), free(ws.y), free(ws.yref[0]), free(ws.yref[1]), free(ws.yref[2]), free(ws.s), free(ws.xs);
    for (int g = 0; g < N_GROUPS; g++)
        free(scales[g]);
    free(clip), free(dw);
    return s;
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
        s = c->o->method == QPK_METHOD_GPTQ ? quantize_gptq(c, e) : quantize_awq(c, e);
    /* Norms and biases (AWQ may have rescaled some) are stored as planned. */
    static const qpk_role vectors[5] = {QPK_ROLE_ATTN_NORM, QPK_ROLE_FFN_NORM, QPK_ROLE_Q_BIAS, QPK_ROLE_K_BIAS,
                                        QPK_ROLE_V_BIAS};
    for (int i = 0; i < 5 && s == QPK_OK; i++)
        s = store(c, vectors[i], NULL, e);
    double t2 = qpk_seconds();
    if (s == QPK_OK)
        s = advance(c, l, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, "calibrating layer %d", l);
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

int qpk_calib_windows(const qpk_calib *c, int *len)
{
    *len = c->L;
    return c->n;
}
