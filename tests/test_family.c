/*
 * The Qwen family beyond dense Qwen2, against the shared fixtures' independent float64
 * forward (qwen-tiny-yarn, -moe, -qwen3, -qwen3-moe: 2 x 48 positions, all compared):
 *  - read from the folder and from its .qpk: max |logit diff| <= 1e-4 (the bound;
 *    the f32 forward's own error against float64 is ~1e-5 at logits of magnitude ~7), top-1
 *    100%, and the perplexity of ref-info.json within 1e-4 relative;
 *  - the sparse MoE block computed per expert over the tokens routed to it gives the same
 *    logits as one token at a time (decode), within 1e-4 (sums in another order), and the
 *    logits and the written files do not depend on the thread count (bit for bit);
 *  - calibrated int4 (GPTQ, AWQ, AWQ+GPTQ) on a MoE model below round-to-nearest's KL
 *    divergence against the float model, each expert on its own routed tokens; with too
 *    little calibration data every expert falls back to RTN, counted, and its bytes are
 *    then RTN's exactly;
 *  - MoE GPTQ and AWQ folders (experts one by one, routers float) written and read back
 *    exactly: the same logits, bit for bit.
 */
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "gen.h"
#include "qpk/verify.h"
#include "testhelp.h"
#include "testutil.h"

static const char *const ARCHS[] = {"yarn", "moe", "qwen3", "qwen3-moe"};

static char tmpdir[64];

static void path_of(char *buf, size_t cap, const char *fx, const char *arch, const char *file)
{
    snprintf(buf, cap, "%s/qwen-tiny-%s%s%s", fx, arch, file ? "/" : "", file ? file : "");
}

/* ref-info.json's "ppl": the float64 forward's perplexity over positions 0..46 of both sequences. */
static double ref_ppl(const char *info_path)
{
    size_t n;
    char *text = slurp(info_path, &n), *at = text ? strstr(text, "\"ppl\":") : NULL;
    double v = at ? strtod(at + 6, NULL) : NAN;
    free(text);
    return v;
}

/* The model at path against the fixture's reference logits and perplexity. */
static void check_ref(const char *what, const char *path, const char *ref_path, double ppl)
{
    qpk_source *src, *ref;
    qpk_err e = {0};
    if (tu_open(&src, path, false, &e) != QPK_OK || tu_open(&ref, ref_path, true, &e) != QPK_OK) {
        CHECKF(false, "%s: %s", what, e.msg);
        return;
    }
    qpk_verify_opts o = {0};
    qpk_verify_result r;
    CHECKF(qpk_verify_ref_file(tu_model(src), qpk_source_logits(ref), &o, &r, &e) == QPK_OK, "%s", e.msg);
    printf("%-28s max |diff| %.3g, top-1 %.1f%%, compared %llu, ppl %.4f (reference %.4f)\n", what, r.max_abs_diff,
           r.top1_pct, (unsigned long long)r.n_compared, r.ppl, ppl);
    CHECKF(fabs(r.ppl / ppl - 1) <= 1e-4, "%s: ppl %.6f, reference %.6f", what, r.ppl, ppl);
    CHECKF(r.n_compared == 96 && r.max_abs_diff <= 1e-4 && r.top1_pct == 100.0, "%s: %llu compared, max diff %g, "
           "top-1 %g", what, (unsigned long long)r.n_compared, r.max_abs_diff, r.top1_pct);
    tu_close(src), tu_close(ref);
}

/* Logits of the 48 tokens of sequence 0, in one batch (prefill) or one token at a time, on n_threads. */
static float *run(const qpk_model *m, const int32_t *tok, int n, bool one_by_one, int n_threads)
{
    const int64_t V = qpk_model_config(m)->vocab_size;
    float *logits = malloc((size_t)n * (size_t)V * sizeof *logits);
    qpk_context *ctx;
    qpk_err e = {0};
    qpk_context_opts co = {.n_ctx = 64, .n_threads = n_threads};
    CHECKF(qpk_context_create(&ctx, m, &co, &e) == QPK_OK, "%s", e.msg);
    if (one_by_one)
        for (int t = 0; t < n; t++)
            CHECK(qpk_eval(ctx, tok + t, 1, logits + (size_t)t * (size_t)V, 1, &e) == QPK_OK);
    else
        CHECK(qpk_eval(ctx, tok, n, logits, n, &e) == QPK_OK);
    qpk_context_free(ctx);
    return logits;
}

static void check_moe_paths(const char *fx, const char *arch)
{
    char dir[4096], tok_path[4096];
    path_of(dir, sizeof dir, fx, arch, NULL);
    path_of(tok_path, sizeof tok_path, fx, arch, "tokens.i32");
    int32_t *tok;
    size_t n_tok;
    qpk_source *src;
    qpk_err e = {0};
    if (qpk_read_tokens(tok_path, &tok, &n_tok, &e) != QPK_OK || tu_open(&src, dir, false, &e) != QPK_OK) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    const int n = 48;
    const size_t V = (size_t)qpk_model_config(tu_model(src))->vocab_size;
    float *pre1 = run(tu_model(src), tok, n, false, 1), *pre2 = run(tu_model(src), tok, n, false, 2);
    float *dec = run(tu_model(src), tok, n, true, 2);
    CHECKF(!memcmp(pre1, pre2, (size_t)n * V * sizeof *pre1), "%s: prefill logits differ between 1 and 2 threads", arch);
    double worst = 0;
    for (size_t i = 0; i < (size_t)n * V; i++)
        worst = fmax(worst, fabs((double)pre1[i] - dec[i]));
    printf("%-28s prefill (per expert) vs decode: max |diff| %.3g\n", arch, worst);
    CHECKF(worst <= 1e-4, "%s: prefill and decode differ by %g", arch, worst);
    free(pre1), free(pre2), free(dec), free(tok);
    tu_close(src);
}

/* KL divergence of the model at path against the fixture's float model on the eval tokens. */
static double kld_of(const char *path, const char *float_dir, const int32_t *tok, size_t n)
{
    qpk_source *a, *b;
    qpk_err e = {0};
    qpk_verify_result r = {0};
    if (tu_open(&a, path, false, &e) != QPK_OK || tu_open(&b, float_dir, false, &e) != QPK_OK) {
        CHECKF(false, "%s", e.msg);
        return INFINITY;
    }
    qpk_verify_opts o = {.n_ctx = 128, .max_chunks = 40};
    CHECKF(qpk_verify_tokens(tu_model(a), tu_model(b), tok, n, &o, &r, &e) == QPK_OK, "%s", e.msg);
    tu_close(a), tu_close(b);
    return r.kld_mean;
}

static bool same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    bool same = x && y && na == nb && !memcmp(x, y, na);
    free(x), free(y);
    return same;
}

/*
 * The fixtures' vocabulary is 2048 random ids; the eval text's ids folded into it give a
 * token stream with real text's frequencies (calibration from its first part, evaluation
 * from a later part, never overlapping).
 */
static int32_t *folded_tokens(const char *fx, size_t from, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokens/eval_public.i32", fx);
    int32_t *all;
    size_t total;
    qpk_err e = {0};
    if (qpk_read_tokens(path, &all, &total, &e) != QPK_OK || from + n > total) {
        CHECKF(false, "%s", e.msg);
        return NULL;
    }
    int32_t *out = malloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = all[from + i] % 2048;
    free(all);
    return out;
}

static void check_calibration(const char *fx)
{
    char dir[4096], out[4096], rtn_path[4096];
    path_of(dir, sizeof dir, fx, "moe", NULL);
    enum { N_CALIB = 20000, N_EVAL = 40 * 128 };
    int32_t *calib = folded_tokens(fx, 0, N_CALIB), *eval = folded_tokens(fx, 30000, N_EVAL);
    if (!calib || !eval)
        return;
    const qpk_method methods[] = {QPK_METHOD_RTN, QPK_METHOD_GPTQ, QPK_METHOD_AWQ, QPK_METHOD_AWQ_GPTQ};
    double kld[4];
    for (int m = 0; m < 4; m++) {
        qpk_convert_opts o = {.dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .method = methods[m],
                              .calib = {.tokens = calib, .n_tokens = N_CALIB, .samples = 32, .seq_len = 128}};
        qpk_convert_result r = {0};
        qpk_err e = {0};
        snprintf(out, sizeof out, "%s/cal%d.qpk", tmpdir, m);
        o.to = QPK_OUT_QPK;
        CHECKF(qpk_convert_path(dir, out, &o, &r, &e) == QPK_OK, "%s", e.msg);
        kld[m] = kld_of(out, dir, eval, N_EVAL);
        printf("int4 g32 %-9s KLD vs float %.4f; experts calibrated %lld, RTN %lld\n", qpk_method_name(methods[m]),
               kld[m], (long long)r.n_experts_calibrated, (long long)r.n_experts_rtn);
        if (m > 0)
            CHECKF(r.n_experts_calibrated == 16 && r.n_experts_rtn == 0 && kld[m] < kld[0],
                   "%s: %lld calibrated, %lld RTN, KLD %g vs RTN %g", qpk_method_name(methods[m]),
                   (long long)r.n_experts_calibrated, (long long)r.n_experts_rtn, kld[m], kld[0]);
        qpk_convert_result_free(&r);
    }
    /* One window of 16 tokens: each expert sees at most 16 < 32 tokens, so every one falls back
     * to RTN, and its bytes are RTN's (GPTQ changes nothing else about an expert's weights). */
    qpk_convert_opts o = {.dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .method = QPK_METHOD_GPTQ,
                          .calib = {.tokens = calib, .n_tokens = N_CALIB, .samples = 1, .seq_len = 16}};
    qpk_convert_result r = {0};
    qpk_err e = {0};
    snprintf(out, sizeof out, "%s/few.qpk", tmpdir);
    snprintf(rtn_path, sizeof rtn_path, "%s/cal0.qpk", tmpdir);
    CHECKF(qpk_convert_path(dir, out, &o, &r, &e) == QPK_OK, "%s", e.msg);
    CHECKF(r.n_experts_calibrated == 0 && r.n_experts_rtn == 16, "%lld calibrated, %lld RTN",
           (long long)r.n_experts_calibrated, (long long)r.n_experts_rtn);
    qpk_source *a, *b;
    if (tu_open(&a, out, false, &e) == QPK_OK && tu_open(&b, rtn_path, false, &e) == QPK_OK) {
        int same = 0;
        for (int l = 0; l < 3; l++)
            for (qpk_role role = QPK_ROLE_EXP_GATE; role <= QPK_ROLE_EXP_DOWN; role++) {
                qpk_matrix x, y;
                if (!qpk_layer_has_role(qpk_source_config(a), role, l))
                    continue;
                CHECK(qpk_source_matrix(a, role, l, &x, &e) == QPK_OK && qpk_source_matrix(b, role, l, &y, &e) == QPK_OK);
                same += x.type == y.type && !memcmp(x.data, y.data, qpk_matrix_row_bytes(&x) * (size_t)x.rows);
            }
        CHECKF(same == 6, "%d of 6 fallen-back expert tensors equal RTN's", same);
        tu_close(a), tu_close(b);
    }
    qpk_convert_result_free(&r);
    /* The same calibrated file from 1 and 2 threads. */
    char one[4096], two[4096];
    snprintf(one, sizeof one, "%s/t1.qpk", tmpdir);
    snprintf(two, sizeof two, "%s/t2.qpk", tmpdir);
    o.calib.samples = 8, o.calib.seq_len = 128, o.method = QPK_METHOD_AWQ;
    o.n_threads = 1;
    CHECKF(qpk_convert_path(dir, one, &o, NULL, &e) == QPK_OK, "%s", e.msg);
    o.n_threads = 2;
    CHECKF(qpk_convert_path(dir, two, &o, NULL, &e) == QPK_OK, "%s", e.msg);
    CHECKF(same_file(one, two), "AWQ on a MoE model: 1 and 2 threads write different files");
    free(calib), free(eval);
}

/*
 * The GPTQ folder at from, written to `to` without the parts of the linear `drop` (its
 * qweight, qzeros, scales, g_idx), and with a float `drop`.weight [rows, cols] when
 * float_rows > 0; its config files copied.
 */
static void drop_linear(const char *from, const char *to, const char *drop, int64_t float_rows, int64_t cols)
{
    char path[4096];
    qpk_err e = {0};
    mkdir(to, 0755);
    const char *files[] = {"config.json", "quantize_config.json"};
    for (int i = 0; i < 2; i++) {
        size_t n;
        snprintf(path, sizeof path, "%s/%s", from, files[i]);
        char *text = slurp(path, &n);
        snprintf(path, sizeof path, "%s/%s", to, files[i]);
        FILE *f = fopen(path, "wb");
        CHECK(text && f && fwrite(text, 1, n, f) == n);
        if (f)
            fclose(f);
        free(text);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", from);
    qpk_safetensors *st;
    if (qpk_st_open(&st, path, &e) != QPK_OK) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    size_t n = qpk_st_n_tensors(st), m = 0;
    qpk_st_entry *ts = calloc(n + 1, sizeof *ts);
    const qpk_st_tensor **src = calloc(n + 1, sizeof *src);
    for (size_t i = 0; i < n; i++) {
        const qpk_st_tensor *t = qpk_st_tensor_at(st, i);
        if (!strncmp(t->name, drop, strlen(drop)) && t->name[strlen(drop)] == '.')
            continue;
        snprintf(ts[m].name, sizeof ts[m].name, "%s", t->name);
        ts[m].dtype = t->dtype, ts[m].ndim = t->ndim, ts[m].nbytes = t->nbytes;
        memcpy(ts[m].shape, t->shape, sizeof ts[m].shape);
        src[m++] = t;
    }
    if (float_rows > 0) {
        snprintf(ts[m].name, sizeof ts[m].name, "%s.weight", drop);
        ts[m].dtype = QPK_ST_F32, ts[m].ndim = 2, ts[m].shape[0] = float_rows, ts[m].shape[1] = cols;
        ts[m].nbytes = (uint64_t)(float_rows * cols) * 4;
        src[m++] = NULL;
    }
    qpk_st_set *set = NULL;
    CHECKF(qpk_st_set_create(&set, to, ts, m, &e) == QPK_OK, "%s", e.msg);
    for (size_t i = 0; set && i < m; i++) {
        void *zeros = src[i] ? NULL : calloc(1, (size_t)ts[i].nbytes);
        CHECKF(qpk_st_set_write(set, src[i] ? src[i]->data : zeros, (size_t)ts[i].nbytes, &e) == QPK_OK, "%s", e.msg);
        free(zeros);
    }
    if (set)
        CHECKF(qpk_st_set_finish(set, &e) == QPK_OK, "%s", e.msg);
    free(ts), free(src);
    qpk_st_close(st);
}

/* A MoE .qpk -> GPTQ / AWQ folder (experts one by one) -> .qpk: the same logits, bit for bit. */
static void check_folders(const char *fx)
{
    char dir[4096], q[4096], folder[4096], back[4096];
    path_of(dir, sizeof dir, fx, "moe", NULL);
    snprintf(q, sizeof q, "%s/m.qpk", tmpdir);
    qpk_convert_opts o = {.dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .to = QPK_OUT_QPK};
    qpk_quant_rule keep[] = {{"embed_tokens", QPK_TYPE_BF16, 0}, {"lm_head", QPK_TYPE_BF16, 0}};
    o.rules = keep, o.n_rules = 2;
    qpk_err e = {0};
    CHECKF(qpk_convert_path(dir, q, &o, NULL, &e) == QPK_OK, "%s", e.msg);
    for (int awq = 0; awq < 2; awq++) {
        snprintf(folder, sizeof folder, "%s/%s", tmpdir, awq ? "awq" : "gptq");
        snprintf(back, sizeof back, "%s/back%d.qpk", tmpdir, awq);
        qpk_convert_opts x = {.dtype = -1, .to = awq ? QPK_OUT_AWQ : QPK_OUT_GPTQ};
        CHECKF(qpk_convert_path(q, folder, &x, NULL, &e) == QPK_OK, "%s", e.msg);
        char expert0[4200];
        snprintf(expert0, sizeof expert0, "%s/model.safetensors", folder);
        qpk_safetensors *st;
        if (qpk_st_open(&st, expert0, &e) == QPK_OK) {
            CHECK(qpk_st_find(st, "model.layers.0.mlp.experts.7.down_proj.qweight") &&
                  qpk_st_find(st, "model.layers.0.mlp.shared_expert.up_proj.scales") &&
                  qpk_st_find(st, "model.layers.0.mlp.gate.weight") &&
                  qpk_st_find(st, "model.layers.0.mlp.shared_expert_gate.weight") &&
                  !qpk_st_find(st, "model.layers.0.mlp.experts.gate_proj.qweight"));
            qpk_st_close(st);
        }
        qpk_convert_opts y = {.dtype = -1, .to = QPK_OUT_QPK};
        CHECKF(qpk_convert_path(folder, back, &y, NULL, &e) == QPK_OK, "%s", e.msg);
        if (!awq) { /* an expert missing, and one left in float among quantized ones: refused, nothing written */
            char bad[4200], out[4200];
            const char *lin = "model.layers.2.mlp.experts.3.up_proj";
            const struct {
                int64_t rows;
                const char *msg;
            } cases[] = {{0, "missing tensor 'model.layers.2.mlp.experts.3.up_proj.qweight' (num_experts is 8)"},
                         {32, "model.layers.2.mlp.experts.3.up_proj.weight is float while expert 0 is quantized"}};
            for (int k = 0; k < 2; k++) {
                snprintf(bad, sizeof bad, "%s/bad%d", tmpdir, k);
                snprintf(out, sizeof out, "%s/bad%d.qpk", tmpdir, k);
                drop_linear(folder, bad, lin, cases[k].rows, 64);
                qpk_status rc = qpk_convert_path(bad, out, &y, NULL, &e);
                CHECKF(rc != QPK_OK && strstr(e.msg, cases[k].msg) && access(out, F_OK) != 0, "case %d: %s", k, e.msg);
            }
        }
        qpk_source *a, *b;
        if (tu_open(&a, q, false, &e) == QPK_OK && tu_open(&b, back, false, &e) == QPK_OK) {
            int32_t tok[16];
            for (int i = 0; i < 16; i++)
                tok[i] = (i * 131 + 7) % 2048;
            float *x1 = run(tu_model(a), tok, 16, false, 2), *x2 = run(tu_model(b), tok, 16, false, 2);
            CHECKF(!memcmp(x1, x2, 16 * 2048 * sizeof *x1), "%s folder round trip changed the logits", awq ? "AWQ" : "GPTQ");
            free(x1), free(x2);
            tu_close(a), tu_close(b);
        }
    }
}

/* A MoE model's metadata claiming version 2, or another architecture than its config's: refused, nothing written. */
static void check_versions(const char *fx)
{
    char path[4096], out[4096];
    path_of(path, sizeof path, fx, "moe", "config.json");
    snprintf(out, sizeof out, "%s/v.qpk", tmpdir);
    size_t n;
    char *text = slurp(path, &n);
    qpk_config c;
    qpk_err e = {0};
    CHECKF(text && qpk_config_parse(&c, text, n, &e) == QPK_OK, "%s", e.msg);
    free(text);
    char *cfg = qpk_config_to_json(&c);
    const struct {
        int version;
        const char *arch, *msg;
    } cases[] = {{2, "qwen2_moe", "a qwen2_moe model needs format version 3, the file says 2"},
                 {3, "qwen2", "\"architecture\" \"qwen2\" differs from the config's model_type \"qwen2_moe\""},
                 {6, "qwen2_moe", "\"format_version\" is not 1 to 5"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char meta[8192];
        snprintf(meta, sizeof meta, "{\"format\":\"qpk\",\"format_version\":%d,\"architecture\":\"%s\",\"config\":%s}",
                 cases[i].version, cases[i].arch, cfg);
        qpk_writer *w;
        CHECK(qpk_writer_create(&w, out, &e) == QPK_OK);
        qpk_status s = qpk_writer_finish(w, meta, strlen(meta), &e);
        CHECKF(s != QPK_OK && strstr(e.msg, cases[i].msg), "version case %zu: \"%s\"", i, e.msg);
        CHECK(access(out, F_OK) != 0);
    }
    free(cfg);
}

/*
 * Real hyperparameters that need all 17 digits (here the doubles just past 1e6 and 4) come
 * back bit for bit from the .qpk's metadata and from a GPTQ folder's config.json.
 */
static void check_exact_reals(void)
{
    char dir[4096], q[4096], folder[4096], back[4096];
    snprintf(dir, sizeof dir, "%s/reals", tmpdir);
    snprintf(q, sizeof q, "%s/reals.qpk", tmpdir);
    snprintf(folder, sizeof folder, "%s/reals-gptq", tmpdir);
    snprintf(back, sizeof back, "%s/reals-back.qpk", tmpdir);
    qpk_gen_spec sp;
    CHECK(qpk_gen_preset("tiny-yarn", &sp));
    sp.cfg.rope_theta = nextafter(1e6, 2e6);
    sp.cfg.yarn.factor = nextafter(4.0, 5.0);
    sp.cfg.yarn.attention_factor = 0.1 * log(sp.cfg.yarn.factor) + 1.0;
    qpk_err e = {0};
    CHECKF(qpk_gen_write(&sp, dir, NULL, &e) == QPK_OK, "%s", e.msg);
    qpk_convert_opts o = {.dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .to = QPK_OUT_QPK};
    qpk_quant_rule keep[] = {{"embed_tokens", QPK_TYPE_BF16, 0, false}};
    o.rules = keep, o.n_rules = 1;
    CHECKF(qpk_convert_path(dir, q, &o, NULL, &e) == QPK_OK, "%s", e.msg);
    qpk_convert_opts x = {.dtype = -1, .to = QPK_OUT_GPTQ};
    CHECKF(qpk_convert_path(q, folder, &x, NULL, &e) == QPK_OK, "%s", e.msg);
    qpk_convert_opts y = {.dtype = -1, .to = QPK_OUT_QPK};
    CHECKF(qpk_convert_path(folder, back, &y, NULL, &e) == QPK_OK, "%s", e.msg);
    const char *paths[] = {q, back};
    for (int i = 0; i < 2; i++) {
        qpk_source *s;
        if (tu_open(&s, paths[i], false, &e) != QPK_OK) {
            CHECKF(false, "%s", e.msg);
            continue;
        }
        const qpk_config *c = qpk_source_config(s);
        CHECKF(c->rope_theta == sp.cfg.rope_theta && c->yarn.factor == sp.cfg.yarn.factor, "%s: rope_theta %.17g, "
               "yarn factor %.17g", paths[i], c->rope_theta, c->yarn.factor);
        tu_close(s);
    }
}

/*
 * Experts and a shared expert wider than every other row (Qwen2-57B-A14B's shared expert is
 * wider than its dense MLP): every per-row buffer of the engine and the calibration must be
 * sized by them (the ASan build of this test catches one that is not).
 */
static void check_wide_experts(void)
{
    char dir[4096], out[4096];
    snprintf(dir, sizeof dir, "%s/wide", tmpdir);
    qpk_gen_spec sp;
    CHECK(qpk_gen_preset("tiny-moe", &sp));
    qpk_config *c = &sp.cfg;
    c->hidden_size = 256, c->intermediate_size = 256, c->n_heads = 4, c->n_kv_heads = 2, c->head_dim = 64;
    c->n_layers = 2, c->n_experts = 4, c->n_experts_used = 2, c->moe_intermediate_size = 512;
    c->shared_expert_intermediate_size = 768;
    memset(c->mlp_only_layers, 0, sizeof c->mlp_only_layers);
    qpk_err e = {0};
    CHECKF(qpk_gen_write(&sp, dir, NULL, &e) == QPK_OK, "%s", e.msg);
    int32_t tok[2048];
    for (int i = 0; i < 2048; i++)
        tok[i] = (int32_t)((i * 2654435761u) % 2048);
    const struct {
        qpk_method method;
        int quant;
    } runs[] = {{QPK_METHOD_RTN, QPK_TYPE_INT8}, {QPK_METHOD_GPTQ, QPK_TYPE_INT4}, {QPK_METHOD_AWQ, QPK_TYPE_INT4S},
                {QPK_METHOD_IMATRIX, QPK_TYPE_Q4_K}};
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        qpk_convert_opts o = {.dtype = -1, .quant = runs[i].quant, .group = 32, .method = runs[i].method,
                              .to = QPK_OUT_QPK, .calib = {.tokens = tok, .n_tokens = 2048, .samples = 4, .seq_len = 64}};
        snprintf(out, sizeof out, "%s/wide%zu.qpk", tmpdir, i);
        CHECKF(qpk_convert_path(dir, out, &o, NULL, &e) == QPK_OK, "%s: %s", qpk_method_name(runs[i].method), e.msg);
    }
}

/* The largest |w_a - w_b| over every matrix of two models of the same config, read back from their files. */
static double max_weight_diff(qpk_source *a, qpk_source *b)
{
    const qpk_config *c = qpk_source_config(a);
    double worst = 0;
    qpk_err e = {0};
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_matrix x, y;
        if (!qpk_role_is_matrix(role) || qpk_source_matrix(a, role, layer, &x, &e) != QPK_OK ||
            qpk_source_matrix(b, role, layer, &y, &e) != QPK_OK) {
            CHECKF(qpk_role_is_matrix(role) == false, "%s", e.msg);
            continue;
        }
        /* Both rows scattered into input order (an act-order source's columns are permuted). */
        float *u = malloc((size_t)x.cols * sizeof *u), *v = malloc((size_t)x.cols * sizeof *v);
        float *ux = malloc((size_t)x.cols * sizeof *ux), *vy = malloc((size_t)x.cols * sizeof *vy);
        for (int64_t r = 0; r < x.rows; r++) {
            qpk_kernels_scalar()->row_to_f32(&x, r, u);
            qpk_kernels_scalar()->row_to_f32(&y, r, v);
            for (int64_t k = 0; k < x.cols; k++) {
                int32_t px = (int32_t)k, py = (int32_t)k;
                if (x.perm)
                    memcpy(&px, x.perm + k, 4);
                if (y.perm)
                    memcpy(&py, y.perm + k, 4);
                ux[px] = u[k], vy[py] = v[k];
            }
            for (int64_t k = 0; k < x.cols; k++)
                worst = fmax(worst, fabs((double)ux[k] - vy[k]));
        }
        free(ux), free(vy);
        free(u), free(v);
    }
    return worst;
}

/*
 * The certificate of conversions between quantized formats, checked against the weights read
 * back: a GPTQ checkpoint to .qpk and to GGUF (int4s: Q4_0) says every matrix is exact, and
 * the weights read back equal the source's; an act-order checkpoint requantized for GGUF says
 * which matrices changed and the largest change, which equals the largest difference read back;
 * AWQ's int4 as GGUF's Q4_1, whose offsets are rounded to f16 in some blocks, likewise.
 */
static void check_certificate(const char *fx)
{
    char src[4096], q[4096];
    qpk_err e = {0};
    const struct {
        const char *fixture;
        qpk_output to;
        bool requantize;
        int64_t exact, changed;
        const char *refused; /* a layout that cannot hold the values refuses, saying so */
    } cases[] = {{"qwen-tiny-a-gptq-int4", QPK_OUT_QPK, false, 29, 0},
                 {"qwen-tiny-a-gptq-int8", QPK_OUT_GGUF, false, 29, 0},
                 {"qwen-tiny-a-gptq-int4-actorder", QPK_OUT_QPK, true, 1, 28},
                 {"qwen-tiny-a-awq", QPK_OUT_GGUF, false, 1, 28},
                 /* MLX: grid groups are affine groups with b = the weight of code 0 (-d z, or -8 d and -128 d for the
                  * symmetric ones): exact where that is an f16 value (every group of the GPTQ fixtures; AWQ's zero
                  * points make some b need more bits, rounded) */
                 {"qwen-tiny-a-gptq-int4", QPK_OUT_MLX, false, 29, 0},
                 {"qwen-tiny-a-gptq-int8", QPK_OUT_MLX, false, 29, 0},
                 {"qwen-tiny-a-awq", QPK_OUT_MLX, false, 1, 28},
                 {"qwen-tiny-a-mlx-4bit", QPK_OUT_GGUF, false, 29, 0},
                 {"qwen-tiny-a-ct-w8a16", QPK_OUT_MLX, false, 0, 0,
                  "model.layers.0.mlp.down_proj.weight has groups of 384: MLX's groups are 32, 64 or 128 weights"},
                 {"qwen-tiny-a-ct-w4a16-asym-actorder", QPK_OUT_MLX, false, 0, 0,
                  "takes its input permuted (act-order): MLX has no input permutation"},
                 {"qwen-tiny-a-mlx-4bit", QPK_OUT_CT, false, 0, 0,
                  "model.layers.0.self_attn.q_proj.weight is mlx4: the compressed-tensors layout holds linears of "
                  "int8, int4, int4s or int8z only"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(src, sizeof src, "%s/%s", fx, cases[i].fixture);
        snprintf(q, sizeof q, "%s/cert%zu.%s", tmpdir, i, qpk_output_name(cases[i].to));
        qpk_convert_opts o = {.dtype = -1, .to = cases[i].to, .requantize = cases[i].requantize};
        qpk_convert_result r = {0};
        if (cases[i].refused) {
            CHECKF(qpk_convert_path(src, q, &o, &r, &e) == QPK_E_UNSUPPORTED && strstr(e.msg, cases[i].refused) &&
                       access(q, F_OK) != 0,
                   "%s to %s: %s", cases[i].fixture, qpk_output_name(cases[i].to), e.msg);
            qpk_convert_result_free(&r);
            continue;
        }
        CHECKF(qpk_convert_path(src, q, &o, &r, &e) == QPK_OK, "%s: %s", cases[i].fixture, e.msg);
        CHECKF(r.n_exact == cases[i].exact && r.n_changed == cases[i].changed, "%s: %lld exact, %lld changed",
               cases[i].fixture, (long long)r.n_exact, (long long)r.n_changed);
        qpk_source *a, *b;
        if (tu_open(&a, src, false, &e) == QPK_OK && tu_open(&b, q, false, &e) == QPK_OK) {
            double d = max_weight_diff(a, b);
            printf("certificate %-32s %lld exact, %lld changed (max %.3g, rel Frobenius %.3g); read back: max |dw| %.3g\n",
                   cases[i].fixture, (long long)r.n_exact, (long long)r.n_changed, r.max_change, r.max_rel_frobenius, d);
            /* Q4_1 decodes d q + m in f32 where the source has d (q - z): a few ulps of the weights apart */
            CHECKF(fabs(d - r.max_change) <= 1e-6 * fmax(d, 1e-30) + 1e-9, "%s: the certificate says %g, the weights "
                   "read back differ by %g", cases[i].fixture, r.max_change, d);
            CHECK(!cases[i].requantize || (r.max_rel_frobenius > 0 && r.max_rel_frobenius < 0.2));
            tu_close(a), tu_close(b);
        }
        qpk_convert_result_free(&r);
    }
    /* Across formats in a chain, GPTQ -> compressed-tensors -> MLX -> GGUF: every hop exact, and the last file's
     * weights the first folder's, bit for bit. */
    static const qpk_output CHAIN[] = {QPK_OUT_CT, QPK_OUT_MLX, QPK_OUT_GGUF};
    char prev[4096];
    snprintf(prev, sizeof prev, "%s/qwen-tiny-a-gptq-int4", fx);
    snprintf(src, sizeof src, "%s", prev);
    for (size_t i = 0; i < sizeof CHAIN / sizeof *CHAIN; i++) {
        snprintf(q, sizeof q, "%s/chain%zu.%s", tmpdir, i, qpk_output_name(CHAIN[i]));
        qpk_convert_opts o = {.dtype = -1, .to = CHAIN[i]};
        qpk_convert_result r = {0};
        CHECKF(qpk_convert_path(prev, q, &o, &r, &e) == QPK_OK && r.n_exact == 29 && r.n_changed == 0,
               "chain to %s: %s (%lld exact)", qpk_output_name(CHAIN[i]), e.msg, (long long)r.n_exact);
        qpk_convert_result_free(&r);
        snprintf(prev, sizeof prev, "%s", q);
    }
    qpk_source *a, *b;
    if (tu_open(&a, src, false, &e) == QPK_OK && tu_open(&b, prev, false, &e) == QPK_OK) {
        const double d = max_weight_diff(a, b);
        printf("certificate chain gptq -> compressed-tensors -> mlx -> gguf: read back max |dw| %g\n", d);
        CHECKF(d == 0, "the chain's weights differ from the GPTQ folder's by %g", d);
        tu_close(a), tu_close(b);
    } else {
        CHECKF(false, "%s", e.msg);
    }
    /* mlx8's offsets rarely make Q8_0's symmetric grid: its groups are quantized again for GGUF, and the
     * certificate's largest change is what the weights read back say. */
    char m8[4096], g8[4096];
    snprintf(src, sizeof src, "%s/qwen-tiny-a", fx);
    snprintf(m8, sizeof m8, "%s/mlx8.qpk", tmpdir);
    snprintf(g8, sizeof g8, "%s/mlx8.gguf", tmpdir);
    qpk_convert_opts o8 = {.dtype = -1, .quant = QPK_TYPE_MLX8, .group = 64};
    CHECKF(qpk_convert_path(src, m8, &o8, NULL, &e) == QPK_OK, "%s", e.msg);
    qpk_convert_result r8 = {0};
    qpk_convert_opts to_gguf = {.dtype = -1, .to = QPK_OUT_GGUF};
    CHECKF(qpk_convert_path(m8, g8, &to_gguf, &r8, &e) == QPK_OK && r8.n_exact == 1 && r8.n_changed == 28,
           "mlx8 -> gguf: %s (%lld exact, %lld changed)", e.msg, (long long)r8.n_exact, (long long)r8.n_changed);
    if (tu_open(&a, m8, false, &e) == QPK_OK && tu_open(&b, g8, false, &e) == QPK_OK) {
        const double d = max_weight_diff(a, b);
        printf("certificate mlx8 -> gguf: %lld changed (max %.3g); read back max |dw| %.3g\n", (long long)r8.n_changed,
               r8.max_change, d);
        CHECKF(d > 0 && fabs(d - r8.max_change) <= 1e-6 * d, "certificate %g, read back %g", r8.max_change, d);
        tu_close(a), tu_close(b);
    } else {
        CHECKF(false, "%s", e.msg);
    }
    qpk_convert_result_free(&r8);
}

int main(void)
{
    const char *fx = fixtures_dir();
    if (!fx)
        return fixtures_missing();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qpk-test-family-XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    for (size_t i = 0; i < sizeof ARCHS / sizeof *ARCHS; i++) {
        char dir[4096], ref[4096], info[4096], out[4096], what[64];
        path_of(dir, sizeof dir, fx, ARCHS[i], NULL);
        path_of(ref, sizeof ref, fx, ARCHS[i], "ref-logits.safetensors");
        path_of(info, sizeof info, fx, ARCHS[i], "ref-info.json");
        const double ppl = ref_ppl(info);
        snprintf(what, sizeof what, "%s folder", ARCHS[i]);
        check_ref(what, dir, ref, ppl);
        snprintf(out, sizeof out, "%s/%s.qpk", tmpdir, ARCHS[i]);
        qpk_convert_opts o = {.dtype = -1, .to = QPK_OUT_QPK};
        qpk_err e = {0};
        CHECKF(qpk_convert_path(dir, out, &o, NULL, &e) == QPK_OK, "%s", e.msg);
        snprintf(what, sizeof what, "%s .qpk", ARCHS[i]);
        check_ref(what, out, ref, ppl);
    }
    check_moe_paths(fx, "moe");
    check_moe_paths(fx, "qwen3-moe");
    check_calibration(fx);
    check_folders(fx);
    check_versions(fx);
    check_exact_reals();
    check_wide_experts();
    check_certificate(fx);
    rm_rf(tmpdir);
    printf("test_family: %d passed, %d failed\n", th_passed, th_failed);
    return th_failed != 0;
}
