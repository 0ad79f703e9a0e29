/*
 * The runtime: each op against a naive double-precision implementation, a whole
 * random GQA model against a naive double forward pass, and the invariances the
 * kernels promise (thread count, batch split: same bits; decode after prefill: within rounding).
 */
#include <math.h>
#include <unistd.h>

#include "../runtime/ops.h"
#include "gen.h"
#include "qpk/runtime.h"
#include "qpk/verify.h"
#include "testhelp.h"
#include "testutil.h"
#include "model_private.h"

static uint64_t g_seed = 42;
static double urand(void) /* uniform in [-1, 1) */
{
    g_seed = g_seed * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_seed >> 11) / 4503599627370496.0 - 1.0;
}

static double max_rel_err(const float *got, const double *want, size_t n)
{
    double scale = 0, err = 0;
    for (size_t i = 0; i < n; i++)
        scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    for (size_t i = 0; i < n; i++)
        err = fabs(got[i] - want[i]) > err ? fabs(got[i] - want[i]) : err;
    return err / (scale > 0 ? scale : 1);
}

/*
 * Decode (gemv: 4-chain dot products) and prefill (gemm: one FMA chain per output) round
 * differently; both are within a few ulp of the exact sums, so their logits agree to
 * well under the 1e-5 both keep from the double forward (measured: at most 4.5e-7 of the
 * largest logit on these models; the bound is 2e-6).
 */
static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double scale = 0, err = 0;
    for (size_t i = 0; i < n; i++) {
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
        err = fabs((double)a[i] - b[i]) > err ? fabs((double)a[i] - b[i]) : err;
    }
    return err / (scale > 0 ? scale : 1);
}
#define DECODE_TOL 2e-6

/* ------------------------------------------------------------------ ops */

static void test_ops(const qpk_kernels *k)
{
    enum { T = 3, H = 37, N = 300, HD = 64 };
    float x[T * H], w[H], out[T * H];
    double want[T * H];
    for (int i = 0; i < T * H; i++)
        x[i] = (float)(3 * urand());
    for (int i = 0; i < H; i++)
        w[i] = (float)(1 + 0.5 * urand());
    qpk_op_rms_norm(k, x, w, out, T, H, 1e-6f);
    for (int t = 0; t < T; t++) {
        double ms = 0;
        for (int i = 0; i < H; i++)
            ms += (double)x[t * H + i] * x[t * H + i];
        double r = 1 / sqrt(ms / H + 1e-6);
        for (int i = 0; i < H; i++)
            want[t * H + i] = (double)w[i] * x[t * H + i] * r;
    }
    CHECKF(max_rel_err(out, want, T * H) < 1e-6, "%s rms_norm error %g", k->name, max_rel_err(out, want, T * H));

    /* RoPE at positions far into a long context, theta 1e6, pairs (i, i + d/2). */
    float inv[HD / 2], cs[2 * (HD / 2)], sn[2 * (HD / 2)], v[2 * 2 * HD], v0[2 * 2 * HD];
    double vw[2 * 2 * HD];
    qpk_op_rope_freqs(inv, 1e6, HD);
    for (int i = 0; i < HD / 2; i++)
        CHECK(fabs(inv[i] - pow(1e6, -2.0 * i / HD)) <= 1e-7 * pow(1e6, -2.0 * i / HD));
    qpk_op_rope_tables(cs, sn, inv, 31000, 2, HD / 2, 1.0f);
    for (int i = 0; i < 4 * HD; i++)
        v[i] = v0[i] = (float)urand();
    qpk_op_rope(v, cs, sn, 2, 2, HD);
    for (int t = 0; t < 2; t++)
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < HD / 2; i++) {
                /* The angle as transformers forms it: position x inv_freq rounded to f32. */
                double ang = (double)((float)(31000 + t) * inv[i]);
                const float *p = v0 + (t * 2 + h) * HD;
                vw[(t * 2 + h) * HD + i] = p[i] * cos(ang) - p[i + HD / 2] * sin(ang);
                vw[(t * 2 + h) * HD + i + HD / 2] = p[i + HD / 2] * cos(ang) + p[i] * sin(ang);
            }
    CHECKF(max_rel_err(v, vw, 4 * HD) < 1e-6, "rope error %g", max_rel_err(v, vw, 4 * HD));

    float s[N];
    double sw[N], sum = 0, mx = -1e300;
    for (int i = 0; i < N; i++)
        s[i] = (float)(20 * urand()), mx = s[i] > mx ? s[i] : mx;
    for (int i = 0; i < N; i++)
        sum += exp(s[i] - mx);
    for (int i = 0; i < N; i++)
        sw[i] = exp(s[i] - mx) / sum;
    qpk_op_softmax(k, s, N);
    CHECKF(max_rel_err(s, sw, N) < 1e-6, "softmax error %g", max_rel_err(s, sw, N));

    /* One head attending over positions 5..N-1 (as a sliding window would). */
    static float q[HD], keys[N * HD], vals[N * HD], scores[N], att[HD];
    double aw[HD] = {0}, sc[N];
    for (int i = 0; i < HD; i++)
        q[i] = (float)urand();
    for (int i = 0; i < N * HD; i++)
        keys[i] = (float)urand(), vals[i] = (float)urand();
    qpk_op_attend(k, q, HD, 1, keys, vals, N - 1, N - 5, HD, scores, att, HD); /* window N - 5: from 5 */
    mx = -1e300, sum = 0;
    for (int j = 5; j < N; j++) {
        double d = 0;
        for (int i = 0; i < HD; i++)
            d += (double)q[i] * keys[j * HD + i];
        sc[j] = d / sqrt(HD);
        mx = sc[j] > mx ? sc[j] : mx;
    }
    for (int j = 5; j < N; j++)
        sum += exp(sc[j] - mx);
    for (int j = 5; j < N; j++)
        for (int i = 0; i < HD; i++)
            aw[i] += exp(sc[j] - mx) / sum * vals[j * HD + i];
    CHECKF(max_rel_err(att, aw, HD) < 1e-5, "attention error %g", max_rel_err(att, aw, HD));

    /*
     * A block of queries gives each query its one-query bits: without a window, with one
     * wider than the block (each query's own prefix), narrower (no positions in common), and
     * blocks of every size up to 11 (the kernels' tiles of 4 and their leftovers).
     */
    enum { NQ = 11 };
    static float qs[NQ * HD], block_out[NQ * HD], one[HD], block_scores[NQ * N];
    for (int i = 0; i < NQ * HD; i++)
        qs[i] = (float)urand() - 0.5f;
    for (int window = 0; window < 40; window += window ? 17 : 3)
        for (int nq = 1; nq <= NQ; nq += nq < 5 ? 1 : 3) {
            const int p0 = N - nq - (nq % 3); /* blocks that end before the last position too */
            qpk_op_attend(k, qs, HD, nq, keys, vals, p0, window, HD, block_scores, block_out, HD);
            bool same = true;
            for (int j = 0; j < nq; j++) {
                qpk_op_attend(k, qs + j * HD, HD, 1, keys, vals, p0 + j, window, HD, scores, one, HD);
                same &= !memcmp(one, block_out + j * HD, sizeof one);
            }
            CHECKF(same, "%s attention of %d queries (window %d) differs from one at a time", k->name, nq, window);
        }

    float g[5] = {-3, -0.5f, 0, 0.5f, 4}, u[5] = {1, 2, 3, 4, 5};
    qpk_op_swiglu(k, g, u, 5);
    for (int i = 0; i < 5; i++) {
        double x0 = (double[]){-3, -0.5, 0, 0.5, 4}[i];
        CHECK(fabs(g[i] - x0 / (1 + exp(-x0)) * u[i]) < 1e-6 * (1 + fabs(x0 * u[i])));
    }
}

/* ------------------------------------------------------------ naive model */

/* Row r of a tensor of the file, as doubles (quantized rows decoded by the reference). */
static void row_d(const qpk_file *f, const char *name, int64_t r, int64_t n, double *out)
{
    const qpk_tensor *t = qpk_find_tensor(f, name);
    qpk_matrix m = {t->type, t->group_size, t->ndim == 2 ? t->dims[0] : 1, n, t->data};
    float *row = malloc((size_t)n * sizeof *row);
    qpk_dequantize_row(t->type, t->group_size, (const uint8_t *)t->data + (size_t)r * qpk_matrix_row_bytes(&m), n,
                       row);
    for (int64_t i = 0; i < n; i++)
        out[i] = row[i];
    free(row);
}

static void lin(const qpk_file *f, const char *name, const double *x, int64_t in, int64_t out_n, double *y)
{
    double *w = malloc((size_t)in * sizeof *w);
    for (int64_t r = 0; r < out_n; r++) {
        row_d(f, name, r, in, w);
        double s = 0;
        for (int64_t i = 0; i < in; i++)
            s += w[i] * x[i];
        y[r] = s;
    }
    free(w);
}

static void rmsn(const double *x, const qpk_file *f, const char *name, int64_t H, double eps, double *out)
{
    double ms = 0, w[4096];
    row_d(f, name, 0, H, w);
    for (int64_t i = 0; i < H; i++)
        ms += x[i] * x[i];
    for (int64_t i = 0; i < H; i++)
        out[i] = x[i] / sqrt(ms / H + eps) * w[i];
}

/* The textbook Qwen2 forward pass in double, token by token, from the file's f32 weights. */
static void naive_forward(const qpk_file *f, const int32_t *tok, int T, double *logits)
{
    const qpk_config *c = qpk_file_config(f);
    int64_t H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    double *x = calloc((size_t)(T * H), 8), *kc = calloc((size_t)(c->n_layers * T * nkv * hd), 8);
    double *vc = calloc((size_t)(c->n_layers * T * nkv * hd), 8);
    double xn[4096], q[4096], kk[4096], vv[4096], att[4096], o[4096], g[8192], u[8192], b[4096];
    char nm[QPK_MAX_NAME];
    for (int t = 0; t < T; t++) {
        double *xt = x + t * H;
        row_d(f, "model.embed_tokens.weight", tok[t], H, xt);
        for (int l = 0; l < c->n_layers; l++) {
            double *kl = kc + (size_t)l * T * nkv * hd, *vl = vc + (size_t)l * T * nkv * hd;
#define NAME(role) (qpk_tensor_name(nm, sizeof nm, role, l), nm)
            rmsn(xt, f, NAME(QPK_ROLE_ATTN_NORM), H, c->rms_norm_eps, xn);
            lin(f, NAME(QPK_ROLE_Q), xn, H, nh * hd, q);
            lin(f, NAME(QPK_ROLE_K), xn, H, nkv * hd, kk);
            lin(f, NAME(QPK_ROLE_V), xn, H, nkv * hd, vv);
            row_d(f, NAME(QPK_ROLE_Q_BIAS), 0, nh * hd, b);
            for (int64_t i = 0; i < nh * hd; i++)
                q[i] += b[i];
            row_d(f, NAME(QPK_ROLE_K_BIAS), 0, nkv * hd, b);
            for (int64_t i = 0; i < nkv * hd; i++)
                kk[i] += b[i];
            row_d(f, NAME(QPK_ROLE_V_BIAS), 0, nkv * hd, b);
            for (int64_t i = 0; i < nkv * hd; i++)
                vv[i] += b[i];
            for (int64_t h = 0; h < nh + nkv; h++) { /* rotate_half on q heads, then k heads */
                double *p = h < nh ? q + h * hd : kk + (h - nh) * hd;
                for (int64_t i = 0; i < hd / 2; i++) {
                    double ang = t * pow(c->rope_theta, -2.0 * i / hd), a = p[i], bb = p[i + hd / 2];
                    p[i] = a * cos(ang) - bb * sin(ang);
                    p[i + hd / 2] = bb * cos(ang) + a * sin(ang);
                }
            }
            memcpy(kl + t * nkv * hd, kk, (size_t)(nkv * hd) * 8);
            memcpy(vl + t * nkv * hd, vv, (size_t)(nkv * hd) * 8);
            for (int64_t h = 0; h < nh; h++) {
                int64_t kvh = h / (nh / nkv);
                double sc[512], mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int64_t i = 0; i < hd; i++)
                        d += q[h * hd + i] * kl[(j * nkv + kvh) * hd + i];
                    sc[j] = d / sqrt((double)hd);
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = 0; j <= t; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int64_t i = 0; i < hd; i++) {
                    double a = 0;
                    for (int j = 0; j <= t; j++)
                        a += sc[j] / sum * vl[(j * nkv + kvh) * hd + i];
                    att[h * hd + i] = a;
                }
            }
            lin(f, NAME(QPK_ROLE_O), att, nh * hd, H, o);
            for (int64_t i = 0; i < H; i++)
                xt[i] += o[i];
            rmsn(xt, f, NAME(QPK_ROLE_FFN_NORM), H, c->rms_norm_eps, xn);
            lin(f, NAME(QPK_ROLE_GATE), xn, H, I, g);
            lin(f, NAME(QPK_ROLE_UP), xn, H, I, u);
            for (int64_t i = 0; i < I; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            lin(f, NAME(QPK_ROLE_DOWN), g, I, H, o);
            for (int64_t i = 0; i < H; i++)
                xt[i] += o[i];
#undef NAME
        }
        rmsn(xt, f, "model.norm.weight", H, c->rms_norm_eps, xn);
        lin(f, c->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", xn, H, c->vocab_size,
            logits + (size_t)t * (size_t)c->vocab_size);
    }
    free(x), free(kc), free(vc);
}

/* ------------------------------------------------------------ model tests */

static char g_dir[] = "/tmp/qpk-test-runtime-XXXXXX";

static float *run(const qpk_model *m, const int32_t *tok, int T, int threads, bool scalar, int n_batch, bool decode)
{
    int64_t V = qpk_model_config(m)->vocab_size;
    float *lg = malloc((size_t)T * (size_t)V * sizeof *lg);
    qpk_context *c;
    qpk_err e = {0};
    qpk_context_opts o = {.n_ctx = 1024, .n_batch = n_batch, .n_threads = threads, .scalar = scalar};
    if (qpk_context_create(&c, m, &o, &e) != QPK_OK)
        return lg;
    if (decode) /* one token at a time: the decode path (gemv) */
        for (int t = 0; t < T; t++)
            qpk_eval(c, tok + t, 1, lg + (size_t)t * (size_t)V, 1, &e);
    else
        qpk_eval(c, tok, T, lg, T, &e);
    qpk_context_free(c);
    return lg;
}

static void test_model(void)
{
    /* GQA (8 heads over 2 kv heads), untied head, odd sizes to exercise every tail. */
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    sp.dtype = QPK_ST_F32;
    sp.cfg.hidden_size = 96, sp.cfg.n_heads = 8, sp.cfg.n_kv_heads = 2, sp.cfg.head_dim = 12;
    sp.cfg.intermediate_size = 203, sp.cfg.vocab_size = 301, sp.cfg.n_layers = 2;
    sp.cfg.tie_word_embeddings = false, sp.cfg.rope_theta = 10000;
    sp.cfg.eos_token_ids[0] = 300;
    char model[600], out[600];
    snprintf(model, sizeof model, "%s/gqa", g_dir);
    snprintf(out, sizeof out, "%s/gqa.qpk", g_dir);
    qpk_err e = {0};
    qpk_convert_opts co = {.dtype = QPK_TYPE_F32};
    CHECKF(qpk_gen_write(&sp, model, NULL, &e) == QPK_OK && tu_convert(model, out, &co, &e) == QPK_OK, "%s", e.msg);
    qpk_source *src; /* the file as the runtime reads it, and its tensors for the naive forward */
    if (tu_open(&src, out, false, &e) != QPK_OK || !tu_model(src)) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    const qpk_file *f = qpk_source_qpk(src);
    const qpk_model *m = tu_model(src);
    enum { T = 45 };
    int32_t tok[T];
    for (int i = 0; i < T; i++)
        tok[i] = (int32_t)((i * 37 + 11) % 301);
    int64_t V = 301;
    double *want = malloc(T * (size_t)V * sizeof *want);
    naive_forward(f, tok, T, want);
    bool scalar_opts[2] = {false, true};
    for (int s = 0; s < 2; s++) {
        float *a = run(m, tok, T, 2, scalar_opts[s], 512, false);
        double err = max_rel_err(a, want, (size_t)(T * V));
        CHECKF(err < 1e-5, "%s: logits differ from the double forward by %g (relative to max)",
               scalar_opts[s] ? "scalar" : "best", err);
        float *b = run(m, tok, T, 1, scalar_opts[s], 512, false);
        CHECK(!memcmp(a, b, (size_t)(T * V) * sizeof *a)); /* thread count: same bits */
        float *d = run(m, tok, T, 2, scalar_opts[s], 512, true);
        CHECKF(max_rel_diff(d, a, (size_t)(T * V)) < DECODE_TOL, "decode vs prefill: %g",
               max_rel_diff(d, a, (size_t)(T * V))); /* decode after prefill: within rounding */
        float *p = run(m, tok, T, 2, scalar_opts[s], 7, false);
        CHECK(!memcmp(a, p, (size_t)(T * V) * sizeof *a)); /* batches of 7: same bits */
        free(a), free(b), free(d), free(p);
    }
    /* The same model read straight from the HF folder computes the same bits. */
    qpk_source *hf;
    CHECKF(tu_open(&hf, model, false, &e) == QPK_OK, "%s", e.msg);
    float *a = run(m, tok, T, 2, false, 512, false), *h = run(tu_model(hf), tok, T, 2, false, 512, false);
    CHECK(!memcmp(a, h, (size_t)(T * V) * sizeof *a));
    free(a), free(h);
    tu_close(hf);

    /* Errors leave the context unchanged. */
    qpk_context *c;
    qpk_context_opts o = {.n_ctx = 50, .n_threads = 1};
    CHECK(qpk_context_create(&c, m, &o, &e) == QPK_OK);
    int32_t bad[2] = {3, 301};
    float lg[2 * 301];
    CHECK_ERR(qpk_eval(c, bad, 2, lg, 1, &e), QPK_E_VALUE, e, "token id 301 at index 1");
    CHECK(qpk_context_pos(c) == 0);
    CHECK(qpk_eval(c, tok, 45, NULL, 0, &e) == QPK_OK && qpk_context_pos(c) == 45);
    CHECK_ERR(qpk_eval(c, tok, 6, lg, 1, &e), QPK_E_LIMIT, e, "exceed the context of 50");
    CHECK(qpk_context_pos(c) == 45);
    CHECK_ERR(qpk_eval(c, tok, 1, NULL, 1, &e), QPK_E_INVALID_ARG, e, "bad token");
    qpk_context_reset(c);
    CHECK(qpk_context_pos(c) == 0);
    qpk_context_free(c);
    o.n_ctx = 40000;
    CHECK_ERR(qpk_context_create(&c, m, &o, &e), QPK_E_LIMIT, e, "exceeds max_position_embeddings");
    free(want);
    tu_close(src);
}

/* Quantized weights: the same promises, and the same function as the naive forward of the dequantized weights. */
static void test_quantized_model(void)
{
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    char model[600], out[600];
    snprintf(model, sizeof model, "%s/qmodel", g_dir);
    qpk_err e = {0};
    qpk_gen_write(&sp, model, NULL, &e);
    const int types[3] = {QPK_TYPE_INT8, QPK_TYPE_INT4, QPK_TYPE_INT4S};
    enum { T = 23 };
    int32_t tok[T];
    for (int i = 0; i < T; i++)
        tok[i] = (int32_t)((i * 97 + 5) % 512);
    double *want = malloc((size_t)T * 512 * sizeof *want);
    for (int k = 0; k < 3; k++) {
        snprintf(out, sizeof out, "%s/q%d.qpk", g_dir, k);
        qpk_convert_opts co = {.dtype = -1, .quant = types[k], .group = 32};
        qpk_source *src;
        if (tu_convert(model, out, &co, &e) != QPK_OK || tu_open(&src, out, false, &e) != QPK_OK || !tu_model(src)) {
            CHECKF(false, "%s", e.msg);
            continue;
        }
        const qpk_file *f = qpk_source_qpk(src);
        const qpk_model *m = tu_model(src);
        naive_forward(f, tok, T, want);
        for (int s = 0; s < 2; s++) {
            float *a = run(m, tok, T, 2, s, 512, false), *b = run(m, tok, T, 1, s, 512, false);
            float *d = run(m, tok, T, 2, s, 512, true);
            /* decode's gemv splits each matrix into one task per thread: the same bits for any count */
            float *d1 = run(m, tok, T, 1, s, 512, true), *d3 = run(m, tok, T, 3, s, 512, true);
            CHECKF(!memcmp(d, d1, (size_t)T * 512 * sizeof *d) && !memcmp(d, d3, (size_t)T * 512 * sizeof *d),
                   "%s: decode's logits depend on the thread count", qpk_type_name((uint32_t)types[k]));
            free(d1), free(d3);
            double err = max_rel_err(a, want, (size_t)T * 512);
            CHECKF(err < 1e-5, "%s %s: logits differ from the double forward by %g", qpk_type_name((uint32_t)types[k]),
                   s ? "scalar" : "best", err);
            CHECK(!memcmp(a, b, (size_t)T * 512 * sizeof *a));
            CHECKF(max_rel_diff(d, a, (size_t)T * 512) < DECODE_TOL, "decode vs prefill: %g",
                   max_rel_diff(d, a, (size_t)T * 512));
            free(a), free(b), free(d);
        }
        tu_close(src);
    }
    free(want);
}

/*
 * Each kernel table by name (qpk_context_opts.kernels): the vector tables decode a Q6_K
 * model (the type whose rows differ between avx512 and avx512vbmi) to the same bits, the
 * scalar table by name is .scalar's, and a table this CPU lacks is an error.
 */
static void test_tables_by_name(void)
{
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    sp.cfg.hidden_size = 256, sp.cfg.n_heads = 4, sp.cfg.n_kv_heads = 2, sp.cfg.head_dim = 64;
    sp.cfg.intermediate_size = 512, sp.cfg.n_layers = 1;
    char model[600], out[600];
    snprintf(model, sizeof model, "%s/q6k", g_dir);
    snprintf(out, sizeof out, "%s/q6k.qpk", g_dir);
    qpk_err e = {0};
    qpk_convert_opts co = {.dtype = -1, .quant = QPK_TYPE_Q6_K, .group = 256};
    qpk_source *src;
    if (qpk_gen_write(&sp, model, NULL, &e) != QPK_OK || tu_convert(model, out, &co, &e) != QPK_OK ||
        tu_open(&src, out, false, &e) != QPK_OK || !tu_model(src)) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    const qpk_model *m = tu_model(src);
    enum { T = 9, V = 512 };
    int32_t tok[T];
    for (int i = 0; i < T; i++)
        tok[i] = (int32_t)((i * 131 + 7) % V);
    float *first = NULL;
    for (size_t i = 1; qpk_kernels_available(i); i++) { /* 0 is scalar: its axpy_rows rounds products the others fuse */
        qpk_context *c;
        qpk_context_opts o = {.n_ctx = 64, .n_threads = 2, .kernels = qpk_kernels_available(i)->name};
        float *lg = malloc((size_t)T * V * sizeof *lg);
        CHECKF(qpk_context_create(&c, m, &o, &e) == QPK_OK, "%s", e.msg);
        CHECK(!strcmp(qpk_context_kernels(c), o.kernels));
        for (int t = 0; t < T; t++)
            qpk_eval(c, tok + t, 1, lg + (size_t)t * V, 1, &e);
        qpk_context_free(c);
        if (first)
            CHECKF(!memcmp(first, lg, (size_t)T * V * sizeof *lg), "%s decodes other bits than %s", o.kernels,
                   qpk_kernels_available(1)->name);
        else
            first = lg, lg = NULL;
        free(lg);
    }
    free(first);
    qpk_context *c;
    qpk_context_opts o = {.n_ctx = 64, .n_threads = 1, .kernels = "scalar"};
    CHECK(qpk_context_create(&c, m, &o, &e) == QPK_OK && !strcmp(qpk_context_kernels(c), "scalar"));
    qpk_context_free(c);
    o.kernels = "avx1024";
    CHECK_ERR(qpk_context_create(&c, m, &o, &e), QPK_E_UNSUPPORTED, e, "no 'avx1024' kernels on this CPU");
    tu_close(src);
}

/* A long context grows the KV cache several times; decode must still agree with prefill. */
static void test_long_context(void)
{
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    char model[600];
    snprintf(model, sizeof model, "%s/long", g_dir);
    qpk_err e = {0};
    qpk_gen_write(&sp, model, NULL, &e);
    qpk_source *src;
    if (tu_open(&src, model, false, &e) != QPK_OK) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    enum { T = 700 };
    int32_t tok[T];
    for (int i = 0; i < T; i++)
        tok[i] = (int32_t)((i * 131 + 7) % 512);
    float *a = run(tu_model(src), tok, T, 2, false, 512, false);
    float *d = run(tu_model(src), tok, T, 2, false, 512, true);
    CHECKF(max_rel_diff(d, a, (size_t)T * 512) < DECODE_TOL, "long context, decode vs prefill: %g",
           max_rel_diff(d, a, (size_t)T * 512));
    free(a), free(d);
    tu_close(src);
}

int main(void)
{
    if (!mkdtemp(g_dir))
        return 2;
    for (size_t i = 0; qpk_kernels_available(i); i++)
        test_ops(qpk_kernels_available(i));
    test_model();
    test_long_context();
    test_quantized_model();
    test_tables_by_name();
    if (!th_failed)
        rm_rf(g_dir);
    return th_summary("test_runtime");
}
