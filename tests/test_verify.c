/*
 * The verification metrics against direct double-precision formulas, and every
 * malformed reference-logits file with its exact error.
 */
#include <math.h>
#include <unistd.h>

#include "../verify/metrics.h"
#include "gen.h"
#include "qpk/verify.h"
#include "testhelp.h"
#include "testutil.h"

static void test_metrics(const qpk_kernels *k)
{
    enum { V = 1001 };
    static float a[V], b[V], scratch[2 * V];
    uint64_t s = 7;
    for (int i = 0; i < V; i++) {
        s = s * 6364136223846793005ull + 1;
        a[i] = (float)((double)(s >> 40) / 1677721.6 - 5.0); /* roughly [-5, 5) */
        b[i] = a[i] + (float)(0.3 * sin(i));
    }
    /* Direct formulas in double. */
    double ma = -1e300, mb = -1e300, sa = 0, sb = 0;
    for (int i = 0; i < V; i++)
        ma = fmax(ma, a[i]), mb = fmax(mb, b[i]);
    for (int i = 0; i < V; i++)
        sa += exp(a[i] - ma), sb += exp(b[i] - mb);
    double la = ma + log(sa), lb = mb + log(sb), kl = 0, maxd = 0, sumd = 0;
    for (int i = 0; i < V; i++) {
        double pb = exp(b[i] - lb);
        kl += pb * ((b[i] - lb) - (a[i] - la));
        maxd = fmax(maxd, fabs(a[i] - b[i]));
        sumd += fabs(a[i] - b[i]);
    }
    int64_t am;
    CHECK(fabs(qpk_logsumexp(k, a, V, &am, NULL) - la) < 1e-6);
    CHECK(a[am] == (float)ma);
    qpk_compare c = {0};
    qpk_err e = {0};
    const int target = 17;
    CHECK(qpk_compare_add(&c, k, a, b, V, target, scratch, &e) == QPK_OK);
    CHECK(qpk_compare_add(&c, k, a, a, V, -1, scratch, &e) == QPK_OK); /* identical: KLD 0, no NLL */
    qpk_verify_result r;
    qpk_verify_finish(&c, &r);
    /* The exponentials are f32 (within 2 ulp): the KLD carries about 1e-7 of relative error. */
    CHECKF(fabs(c.kld[0] - kl) < 1e-6 * kl, "%s: KLD %.10g vs %.10g", k->name, c.kld[0], kl);
    CHECK(c.kld[1] == 0);
    CHECK(r.n_compared == 2 && r.n_scored == 1);
    CHECK(fabs(r.max_abs_diff - maxd) < 1e-12 && fabs(r.mean_abs_diff - sumd / (2.0 * V)) < 1e-9);
    CHECK(r.top1_pct == (a[am] == (float)ma && qpk_kernels_scalar()->argmax(b, V, &(float){0}) == am ? 100 : 50));
    CHECK(fabs(r.ppl - exp(la - a[target])) < 1e-6 * r.ppl);
    CHECK(fabs(r.ppl_ref - exp(lb - b[target])) < 1e-6 * r.ppl_ref);
    CHECK(fabs(r.dp_mean - (exp(a[target] - la) - exp(b[target] - lb))) < 1e-9);
    qpk_compare_free(&c);

    /* Percentiles by nearest rank on 1..1000, and the standard error of a perplexity. */
    qpk_compare p = {0};
    qpk_position pos = {.nll = NAN};
    for (int i = 1000; i >= 1; i--) {
        pos.kld = i;
        qpk_compare_push(&p, &pos, 1, true, &e);
    }
    qpk_verify_finish(&p, &r);
    CHECK(r.kld_p50 == 500 && r.kld_p90 == 900 && r.kld_p99 == 990 && r.kld_p999 == 999 && r.kld_max == 1000);
    CHECK(r.kld_mean == 500.5);
    qpk_compare_free(&p);
    qpk_ppl q = {0};
    qpk_ppl_add(&q, 1), qpk_ppl_add(&q, 3);
    CHECK(fabs(qpk_ppl_value(&q) - exp(2)) < 1e-12);
    CHECK(fabs(qpk_ppl_stderr(&q) - exp(2) * 1.0) < 1e-12); /* sd 1 over sqrt(n-1) = 1 */
}

/*
 * Issue 20, class 3: softmax is invariant under a constant offset, so the metrics must be
 * too. Logits stored with offsets up to 1e30 (model and reference, each its own) give the
 * numbers of the direct formula on the stored f32 values (max subtracted in f64), never a
 * negative KLD or a perplexity below 1; offsets the f32 values carry exactly (1e3) give the
 * unshifted numbers, and 1e6 (ulp 1/16) within the rounding of the logits.
 */
static void test_offsets(const qpk_kernels *k)
{
    enum { V = 1001 };
    static float a[V], b[V], A[V], B[V], scratch[2 * V];
    uint64_t s = 11;
    for (int i = 0; i < V; i++) {
        s = s * 6364136223846793005ull + 1;
        a[i] = (float)((double)(s >> 40) / 1677721.6 - 5.0);
        b[i] = a[i] + (float)(0.3 * sin(i));
    }
    static const double off[][2] = {{0, 0}, {1e3, -1e3}, {1e6, 0}, {0, 1e6}, {-1e6, 1e6}, {1e30, 1e30}, {0, 1e30},
                                    {-1e30, 3e38}};
    const int target = 17;
    double kl0 = 0, nll0 = 0, nllr0 = 0;
    for (size_t o = 0; o < sizeof off / sizeof *off; o++) {
        for (int i = 0; i < V; i++)
            A[i] = (float)(a[i] + off[o][0]), B[i] = (float)(b[i] + off[o][1]);
        double ma = -INFINITY, mb = -INFINITY, sa = 0, sb = 0, kl = 0;
        for (int i = 0; i < V; i++)
            ma = fmax(ma, A[i]), mb = fmax(mb, B[i]);
        for (int i = 0; i < V; i++)
            sa += exp(A[i] - ma), sb += exp(B[i] - mb);
        for (int i = 0; i < V; i++)
            kl += exp(B[i] - mb) / sb * (((B[i] - mb) - log(sb)) - ((A[i] - ma) - log(sa)));
        double nll = log(sa) - (A[target] - ma), nllr = log(sb) - (B[target] - mb);
        qpk_compare c = {0};
        qpk_err e = {0};
        CHECKF(qpk_compare_add(&c, k, A, B, V, target, scratch, &e) == QPK_OK, "%s", e.msg);
        qpk_verify_result r;
        qpk_verify_finish(&c, &r);
        CHECKF(r.kld_mean >= 0 && fabs(r.kld_mean - kl) <= 1e-6 * kl + 1e-9, "%s offsets %g/%g: KLD %.10g vs %.10g",
               k->name, off[o][0], off[o][1], r.kld_mean, kl);
        CHECKF(r.ppl >= 1 && r.ppl_ref >= 1 && fabs(log(r.ppl) - nll) < 1e-6 && fabs(log(r.ppl_ref) - nllr) < 1e-6,
               "%s offsets %g/%g: ppl %.10g/%.10g vs %.10g/%.10g", k->name, off[o][0], off[o][1], r.ppl, r.ppl_ref,
               exp(nll), exp(nllr));
        if (o == 0)
            kl0 = kl, nll0 = nll, nllr0 = nllr;
        if (o == 1) /* 1e3 keeps these logits to 2^-14: the numbers move by rounding only */
            CHECKF(fabs(r.kld_mean - kl0) < 1e-4 * kl0 && fabs(log(r.ppl) - nll0) < 1e-3 &&
                   fabs(log(r.ppl_ref) - nllr0) < 1e-3, "%s 1e3: KLD %.10g vs %.10g", k->name, r.kld_mean, kl0);
        if (o >= 2 && o <= 4) /* 1e6 rounds each logit by up to 1/32: the KLD stays small */
            CHECKF(fabs(r.kld_mean - kl0) < 0.01 && fabs(log(r.ppl) - nll0) < 0.07 && fabs(log(r.ppl_ref) - nllr0) < 0.07,
                   "%s offsets %g/%g: KLD %.10g vs %.10g", k->name, off[o][0], off[o][1], r.kld_mean, kl0);
        qpk_compare_free(&c);
    }
    /* An impossible position (a KLD below zero beyond rounding) is refused, never accumulated. */
    qpk_position bad = {.nll = 1, .kld = -0.5, .kld_tol = 1e-6}, fine = {.nll = 1, .kld = 0, .kld_tol = 1e-6};
    const char *what;
    double v;
    CHECK(qpk_position_impossible(&bad, &what, &v) && !strcmp(what, "KL divergence") && v == -0.5);
    CHECK(!qpk_position_impossible(&fine, &what, &v));
    bad.kld = 0, bad.nll = -0.25;
    CHECK(qpk_position_impossible(&bad, &what, &v) && strstr(what, "negative log-likelihood"));
}

/* --------------------------------------------------- malformed reference files */

static char g_dir[] = "/tmp/qpk-test-verify-XXXXXX";

/* A safetensors file with tokens [1, T] (dtype tdt) and logits [1, LT, V] (dtype ldt). */
static void write_ref(const char *path, const char *tdt, int T, const char *ldt, int LT, int V, int64_t bad_token,
                      bool truncate, int nan_pos)
{
    size_t tsize = !strcmp(tdt, "I64") ? 8 : 4, lsize = !strcmp(ldt, "F32") || !strcmp(ldt, "I32") ? 4 : 2;
    size_t tb = tsize * (size_t)T, lb = lsize * (size_t)LT * (size_t)V;
    char h[512];
    int n = snprintf(h, sizeof h,
                     "{\"tokens\":{\"dtype\":\"%s\",\"shape\":[1,%d],\"data_offsets\":[0,%zu]},"
                     "\"logits\":{\"dtype\":\"%s\",\"shape\":[1,%d,%d],\"data_offsets\":[%zu,%zu]}}",
                     tdt, T, tb, ldt, LT, V, tb, tb + lb);
    uint8_t *data = calloc(1, tb + lb);
    for (int t = 0; t < T; t++) {
        int64_t id = t == 1 && bad_token ? bad_token : t % V;
        memcpy(data + tsize * (size_t)t, &id, tsize); /* little-endian: the low bytes first */
    }
    if (nan_pos >= 0 && lsize == 4) { /* logit 3 of that position */
        float nan = NAN;
        memcpy(data + tb + 4 * ((size_t)nan_pos * (size_t)V + 3), &nan, 4);
    }
    FILE *f = fopen(path, "wb");
    uint64_t hl = (uint64_t)n;
    fwrite(&hl, 8, 1, f);
    fwrite(h, 1, (size_t)n, f);
    fwrite(data, 1, truncate ? (tb + lb) / 2 : tb + lb, f);
    fclose(f);
    free(data);
}

static void test_ref_files(void)
{
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp); /* vocab 512 */
    char model[600], path[600];
    snprintf(model, sizeof model, "%s/tiny", g_dir);
    qpk_err e = {0};
    qpk_source *m, *ref;
    if (qpk_gen_write(&sp, model, NULL, &e) != QPK_OK || tu_open(&m, model, false, &e) != QPK_OK) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    static const struct {
        const char *what, *tdt, *ldt;
        int T, LT, V;
        int64_t bad_token;
        bool truncate;
        int nan_pos;
        qpk_status want;
        const char *msg;
    } cases[] = {
        {"good", "I32", "F32", 8, 8, 512, 0, false, -1, QPK_OK, ""},
        {"good i64 bf16", "I64", "BF16", 8, 8, 512, 0, false, -1, QPK_OK, ""},
        {"vocab mismatch", "I32", "F32", 8, 8, 500, 0, false, -1, QPK_E_MISMATCH, "has 500 entries per position; the model's vocabulary has 512"},
        {"length mismatch", "I32", "F32", 8, 7, 512, 0, false, -1, QPK_E_MISMATCH, "must have shape [1, 8, V]"},
        {"token out of range", "I32", "F32", 8, 8, 512, 999, false, -1, QPK_E_VALUE, "'tokens'[1] = 999 is outside"},
        {"token negative", "I64", "F32", 8, 8, 512, -5, false, -1, QPK_E_VALUE, "'tokens'[1] = -5 is outside"},
        {"token past int32", "I64", "F32", 8, 8, 512, 4294967301LL, false, -1, QPK_E_VALUE, "'tokens'[1] = 4294967301 is outside"},
        {"tokens dtype", "F32", "F32", 8, 8, 512, 0, false, -1, QPK_E_UNSUPPORTED, "'tokens' has dtype F32"},
        {"logits dtype", "I32", "I32", 8, 8, 512, 0, false, -1, QPK_E_UNSUPPORTED, "'logits' has dtype I32"},
        {"truncated", "I32", "F32", 8, 8, 512, 0, true, -1, QPK_E_CORRUPT, "past the data area"},
        {"NaN reference", "I32", "F32", 8, 8, 512, 0, false, 5, QPK_E_VALUE,
         "the reference's logits at sequence 0, position 5 are not finite (logit 3 is nan)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(path, sizeof path, "%s/ref-%zu.safetensors", g_dir, i);
        write_ref(path, cases[i].tdt, cases[i].T, cases[i].ldt, cases[i].LT, cases[i].V, cases[i].bad_token,
                  cases[i].truncate, cases[i].nan_pos);
        qpk_status s = tu_open(&ref, path, true, &e);
        if (s == QPK_OK) {
            CHECK(qpk_source_kind_of(ref) == QPK_SOURCE_LOGITS);
            qpk_verify_opts o = {.n_threads = 1};
            qpk_verify_result r;
            s = qpk_verify_ref_file(tu_model(m), qpk_source_logits(ref), &o, &r, &e);
            if (s == QPK_OK) /* zero reference logits: a uniform distribution over 512 tokens */
                CHECK(r.n_compared == 8 && r.n_scored == 7 && fabs(r.ppl_ref - 512) < 1e-6);
            tu_close(ref);
        }
        CHECKF(s == cases[i].want && strstr(e.msg, cases[i].msg), "ref file '%s': status %d \"%s\" (want \"%s\")",
               cases[i].what, s, e.msg, cases[i].msg);
        e.msg[0] = 0;
    }
    /*
     * Offset reference logits (uniform, all equal to the offset): the reference perplexity is
     * the vocabulary and the KLD that of zeros, whatever the offset (it was 1 and <= 0 at 1e30).
     */
    static const float offsets[] = {0, 1e6f, 1e30f, -1e30f, 3e38f};
    double kld0 = 0;
    for (size_t i = 0; i < sizeof offsets / sizeof *offsets; i++) {
        snprintf(path, sizeof path, "%s/ref-offset-%zu.safetensors", g_dir, i);
        write_ref(path, "I32", 8, "F32", 8, 512, 0, false, -1);
        FILE *f = fopen(path, "r+b");
        uint64_t hl = 0;
        CHECK(fread(&hl, 8, 1, f) == 1);
        fseek(f, (long)(8 + hl + 4 * 8), SEEK_SET);
        for (int v = 0; v < 8 * 512; v++)
            fwrite(&offsets[i], 4, 1, f);
        fclose(f);
        qpk_verify_opts o = {.n_threads = 1};
        qpk_verify_result r;
        CHECK(tu_open(&ref, path, true, &e) == QPK_OK);
        CHECKF(qpk_verify_ref_file(tu_model(m), qpk_source_logits(ref), &o, &r, &e) == QPK_OK, "%s", e.msg);
        if (i == 0)
            kld0 = r.kld_mean;
        CHECKF(fabs(r.ppl_ref - 512) < 1e-6 && r.kld_mean > 0 && fabs(r.kld_mean - kld0) < 1e-9 * kld0,
               "offset %g: ppl_ref %g, KLD %.10g (want 512, %.10g)", (double)offsets[i], r.ppl_ref, r.kld_mean, kld0);
        tu_close(ref);
    }
    /* A model given where logits are not allowed is read as a .qpk, and fails as one. */
    CHECK_ERR(tu_open(&ref, path, false, &e), QPK_E_UNSUPPORTED, e, "is a safetensors file; expected a .qpk file");
    CHECK_ERR(tu_open(&ref, "/nonexistent.qpk", true, &e), QPK_E_IO, e, "cannot open");
    tu_close(m);
}

static void test_runner_errors(void)
{
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    char model[600];
    snprintf(model, sizeof model, "%s/tiny2", g_dir);
    qpk_err e = {0};
    qpk_source *m;
    if (qpk_gen_write(&sp, model, NULL, &e) != QPK_OK || tu_open(&m, model, false, &e) != QPK_OK)
        return;
    int32_t tok[40] = {0};
    qpk_verify_opts o = {.n_ctx = 64};
    qpk_verify_result r;
    CHECK_ERR(qpk_verify_tokens(tu_model(m), NULL, tok, 40, &o, &r, &e), QPK_E_INVALID_ARG, e,
              "40 tokens do not fill one chunk of 64");
    tok[30] = 600;
    o.n_ctx = 32;
    CHECK_ERR(qpk_verify_tokens(tu_model(m), NULL, tok, 40, &o, &r, &e), QPK_E_VALUE, e, "token id 600");
    tok[30] = 3;
    /* A model against itself: everything agrees exactly. */
    CHECK(qpk_verify_tokens(tu_model(m), tu_model(m), tok, 40, &o, &r, &e) == QPK_OK);
    CHECK(r.kld_max == 0 && r.top1_pct == 100 && r.max_abs_diff == 0 && r.ppl == r.ppl_ref && r.n_compared == 15);
    tu_close(m);
}

/* A model whose weights hold a NaN: qverify names the first position it poisons, whatever the gates. */
static void test_nonfinite_model(void)
{
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    sp.dtype = QPK_ST_F32;
    char model[600], path[700];
    snprintf(model, sizeof model, "%s/nan", g_dir);
    qpk_err e = {0};
    if (qpk_gen_write(&sp, model, NULL, &e) != QPK_OK)
        return;
    snprintf(path, sizeof path, "%s/model.safetensors", model);
    FILE *f = fopen(path, "r+b"); /* element 2 of the first tensor in the file: the embedding row of token 0 */
    uint64_t hl = 0;
    CHECK(fread(&hl, 8, 1, f) == 1);
    fseek(f, (long)(8 + hl + 8), SEEK_SET);
    float nan = NAN;
    fwrite(&nan, 4, 1, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/nan.qpk", g_dir);
    qpk_convert_opts co = {.dtype = -1, .allow_nonfinite = true};
    qpk_source *m = NULL, *clean = NULL;
    CHECK(tu_convert(model, path, &co, &e) == QPK_OK && tu_open(&m, path, false, &e) == QPK_OK);
    int32_t tok[64];
    for (int i = 0; i < 64; i++)
        tok[i] = 1 + i % 7; /* token 0 never appears, but its row is also the tied head's: logit 0 is NaN */
    qpk_verify_opts o = {.n_ctx = 64};
    qpk_verify_result r;
    CHECK_ERR(qpk_verify_tokens(tu_model(m), NULL, tok, 64, &o, &r, &e), QPK_E_VALUE, e,
              "the model's logits at chunk 0, position 32 are not finite (logit 0 is nan)");
    /* As the reference, the same: the side is named. */
    qpk_gen_write(&sp, model, NULL, &e);
    CHECK(tu_open(&clean, model, false, &e) == QPK_OK);
    if (clean && m)
        CHECK_ERR(qpk_verify_tokens(tu_model(clean), tu_model(m), tok, 64, &o, &r, &e), QPK_E_VALUE, e,
                  "the reference's logits at chunk 0, position 32 are not finite (logit 0 is nan)");
    tu_close(m), tu_close(clean);
}

int main(void)
{
    if (!mkdtemp(g_dir))
        return 2;
    test_metrics(qpk_kernels_best());
    test_metrics(qpk_kernels_scalar());
    test_offsets(qpk_kernels_best());
    test_offsets(qpk_kernels_scalar());
    test_ref_files();
    test_runner_errors();
    test_nonfinite_model();
    if (!th_failed)
        rm_rf(g_dir);
    return th_summary("test_verify");
}
