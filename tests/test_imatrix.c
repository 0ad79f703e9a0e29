/*
 * llama.cpp's importance matrices (qpk/imatrix.h): both forms written and read back (the
 * GGUF one exactly, the legacy one to its mean squares), their bytes against the layouts
 * llama-imatrix writes (checked field by field here, not through qpk's reader), and
 * malformed files refused with their messages.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixtures.h"
#include "qpk/gguf.h"
#include "qpk/imatrix.h"
#include "testhelp.h"
#include "testutil.h"

static char dir[] = "/tmp/qpk-test-imatrix-XXXXXX";

static const char *path(const char *name)
{
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

/* Two entries: a linear of 6 columns, and experts (3 matrices of 4 columns, one never reached). */
static qpk_imatrix *sample(void)
{
    qpk_imatrix *m;
    qpk_err e = {0};
    static const float S1[6] = {1, 4, 9, 0.5f, 0, 2.25f}, C1[1] = {10};
    static const float S2[12] = {3, 1, 4, 1, 5, 9, 2, 6, 0, 0, 0, 0}, C2[3] = {5, 20, 0};
    CHECK(qpk_imatrix_create(&m, "calib.txt", 7, 512, &e) == QPK_OK);
    CHECK(qpk_imatrix_add(m, "blk.1.ffn_up_exps.weight", 4, 3, S2, C2, &e) == QPK_OK);
    CHECK(qpk_imatrix_add(m, "blk.0.attn_q.weight", 6, 1, S1, C1, &e) == QPK_OK);
    CHECK_ERR(qpk_imatrix_add(m, "blk.0.attn_q.weight", 6, 1, S1, C1, &e), QPK_E_INVALID_ARG, e, "added twice");
    return m;
}

static void test_round_trip(void)
{
    qpk_imatrix *m = sample(), *g = NULL, *l = NULL;
    qpk_err e = {0};
    CHECK(m->n == 2 && !strcmp(m->entries[0].name, "blk.0.attn_q.weight")); /* sorted, as llama-imatrix stores them */
    CHECKF(qpk_imatrix_write(m, path("m.gguf"), false, &e) == QPK_OK, "%s", e.msg);
    CHECKF(qpk_imatrix_write(m, path("m.dat"), true, &e) == QPK_OK, "%s", e.msg);
    CHECKF(qpk_imatrix_read(&g, path("m.gguf"), &e) == QPK_OK, "%s", e.msg);
    CHECKF(qpk_imatrix_read(&l, path("m.dat"), &e) == QPK_OK, "%s", e.msg);
    if (g && l) {
        CHECK(!g->legacy && l->legacy && g->n == 2 && l->n == 2);
        CHECK(g->chunk_count == 7 && g->chunk_size == 512 && !strcmp(g->dataset, "calib.txt"));
        CHECK(l->chunk_count == 7 && l->dataset && !strcmp(l->dataset, "calib.txt"));
        for (size_t i = 0; i < 2; i++) {
            const qpk_imatrix_entry *a = &m->entries[i], *b = &g->entries[i], *c = qpk_imatrix_find(l, a->name);
            CHECK(!strcmp(a->name, b->name) && a->n_per_row == b->n_per_row && a->n_mat == b->n_mat);
            CHECK(!memcmp(a->sum2, b->sum2, (size_t)(a->n_per_row * a->n_mat) * 4) &&
                  !memcmp(a->counts, b->counts, (size_t)a->n_mat * 4));
            /* The legacy form keeps mean squares: one matrix of n_per_row * n_mat values, one count. */
            CHECK(c && c->n_mat == 1 && c->n_per_row == a->n_per_row * a->n_mat);
            for (int64_t k = 0; c && k < c->n_per_row; k++) {
                const double count = a->counts[k / a->n_per_row];
                const double want = count > 0 ? a->sum2[k] / count : 1.0, got = c->sum2[k] / c->counts[0];
                CHECKF(fabs(got - want) <= 1e-6 * fmax(want, 1e-30), "%s[%lld]: %g, want %g", a->name, (long long)k, got,
                       want);
            }
        }
    }
    /* The legacy bytes, by hand: 2 entries; "blk.0.attn_q.weight", ncall = ceil(10 / 512) = 1, 6 values. */
    size_t n;
    char *b = slurp(path("m.dat"), &n);
    int32_t v[4];
    if (b && n > 40) {
        memcpy(v, b, 8);
        CHECK(v[0] == 2 && v[1] == 19 && !memcmp(b + 8, "blk.0.attn_q.weight", 19));
        memcpy(v, b + 27, 8);
        CHECK(v[0] == 1 && v[1] == 6);
        float f;
        memcpy(&f, b + 35 + 4, 4); /* value 1: 4 / 10 * 1 */
        CHECK(f == 0.4f);
    } else {
        CHECK(false);
    }
    free(b);
    /* The GGUF as llama-quantize looks it up: in_sum2 [n_per_row, n_mat] and counts [1, n_mat], F32. */
    qpk_gguf *f = NULL;
    if (qpk_gguf_open(&f, path("m.gguf"), &e) == QPK_OK) {
        const qpk_gguf_tensor *s = qpk_gguf_find_tensor(f, "blk.1.ffn_up_exps.weight.in_sum2");
        const qpk_gguf_tensor *c = qpk_gguf_find_tensor(f, "blk.1.ffn_up_exps.weight.counts");
        CHECK(s && c && s->type == 0 && s->n_dims == 2 && s->ne[0] == 4 && s->ne[1] == 3 && c->ne[0] == 1 &&
              c->ne[1] == 3);
        qpk_gguf_value t;
        CHECK(qpk_gguf_find(f, "general.type", &t) && t.type == QPK_GGUF_STRING && t.len == 7 &&
              !memcmp(t.str, "imatrix", 7));
        qpk_gguf_close(f);
    } else {
        CHECKF(false, "%s", e.msg);
    }
    qpk_imatrix_free(m), qpk_imatrix_free(g), qpk_imatrix_free(l);
}

/* A legacy file from parts: i32s and raw bytes as given. */
typedef struct part {
    int kind; /* 0 i32, 1 bytes, 2 f32 */
    int32_t i;
    const char *s;
    float f;
} part;

static void write_parts(const char *p, const part *parts, size_t n)
{
    FILE *f = fopen(p, "wb");
    for (size_t i = 0; f && i < n; i++) {
        if (parts[i].kind == 0)
            fwrite(&parts[i].i, 4, 1, f);
        else if (parts[i].kind == 1)
            fwrite(parts[i].s, 1, strlen(parts[i].s), f);
        else
            fwrite(&parts[i].f, 4, 1, f);
    }
    if (f)
        fclose(f);
}

#define I(x) {0, (x), NULL, 0}
#define S(x) {1, 0, (x), 0}
#define F(x) {2, 0, NULL, (x)}

static void test_malformed(void)
{
    static const struct {
        const char *what;
        part p[12];
        size_t n;
        qpk_status want;
        const char *msg;
    } L[] = {
        {"no entries", {I(0)}, 1, QPK_E_CORRUPT, "entry count 0 is not 1..65536"},
        {"negative count", {I(-3)}, 1, QPK_E_CORRUPT, "entry count -3"},
        {"empty file", {I(0)}, 0, QPK_E_CORRUPT, "entry count 0"},
        {"name past the end", {I(1), I(50), S("abc")}, 3, QPK_E_CORRUPT, "entry 0's name length does not fit"},
        {"values past the end", {I(1), I(1), S("a"), I(1), I(4), F(1), F(2)}, 7, QPK_E_CORRUPT,
         "entry 0 (a): 1 calls and 4 values do not fit the file"},
        {"no values", {I(1), I(1), S("a"), I(1), I(0)}, 5, QPK_E_CORRUPT, "1 calls and 0 values"},
        {"negative calls", {I(1), I(1), S("a"), I(-1), I(1), F(1)}, 6, QPK_E_CORRUPT, "-1 calls and 1 values"},
        {"a NaN", {I(1), I(1), S("a"), I(1), I(2), F(1), F(NAN)}, 7, QPK_E_VALUE, "a's in_sum2[1] is nan"},
        {"a negative value", {I(1), I(1), S("a"), I(1), I(1), F(-2)}, 6, QPK_E_VALUE, "a's in_sum2[0] is -2"},
        {"a name twice", {I(2), I(1), S("a"), I(1), I(1), F(1), I(1), S("a"), I(1), I(1), F(2)}, 11, QPK_E_CORRUPT,
         "imatrix: a appears twice"},
        {"a name with a NUL", {I(1), I(2), S("a"), I(0), I(1), I(1), F(1)}, 7, QPK_E_CORRUPT, "entry 0's name is not UTF-8 text"},
    };
    for (size_t i = 0; i < sizeof L / sizeof *L; i++) {
        char p[64];
        snprintf(p, sizeof p, "bad%zu.dat", i);
        write_parts(path(p), L[i].p, L[i].n);
        qpk_imatrix *m = NULL;
        qpk_err e = {0};
        qpk_status s = qpk_imatrix_read(&m, path(p), &e);
        CHECKF(s == L[i].want && strstr(e.msg, L[i].msg) && !m, "'%s': %d \"%s\"", L[i].what, (int)s, e.msg);
        CHECKF(qpk_imatrix_read(&m, path(p), NULL) == L[i].want, "'%s' without an error struct", L[i].what);
    }
    /* GGUF forms, written with qpk's GGUF writer. */
    static const struct {
        const char *what, *type, *names[2];
        uint32_t ggml[2];
        uint64_t ne[2][2];
        float value;
        const char *msg;
    } G[] = {
        {"a model, not an imatrix", "model", {"w.in_sum2", "w.counts"}, {0, 0}, {{4, 1}, {1, 1}}, 1, "general.type is not"},
        {"in_sum2 without counts", "imatrix", {"w.in_sum2", "x.counts"}, {0, 0}, {{4, 1}, {1, 1}}, 1,
         "w.in_sum2 has no w.counts beside it"},
        {"counts F16", "imatrix", {"w.in_sum2", "w.counts"}, {0, 1}, {{4, 1}, {1, 1}}, 1, "are not F32"},
        {"counts of other matrices", "imatrix", {"w.in_sum2", "w.counts"}, {0, 0}, {{4, 2}, {1, 3}}, 1, "are not F32"},
        {"a stray tensor", "imatrix", {"w.weight", "w.in_sum2"}, {0, 0}, {{4, 1}, {1, 1}}, 1,
         "tensor w.weight is neither an in_sum2 nor a counts"},
        {"an infinite sum", "imatrix", {"w.in_sum2", "w.counts"}, {0, 0}, {{4, 1}, {1, 1}}, INFINITY, "w's in_sum2[0] is inf"},
    };
    for (size_t i = 0; i < sizeof G / sizeof *G; i++) {
        char p[64];
        snprintf(p, sizeof p, "bad%zu.gguf", i);
        qpk_gguf_writer *w;
        qpk_err e = {0};
        CHECK(qpk_gguf_writer_create(&w, path(p), &e) == QPK_OK);
        CHECK(qpk_gguf_kv_string(w, "general.type", G[i].type, strlen(G[i].type), &e) == QPK_OK);
        for (int k = 0; k < 2; k++)
            CHECK(qpk_gguf_add_tensor(w, G[i].names[k], G[i].ggml[k], 2, G[i].ne[k], &e) == QPK_OK);
        float data[16] = {G[i].value, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        for (int k = 0; k < 2; k++)
            CHECK(qpk_gguf_write(w, data, (size_t)(G[i].ne[k][0] * G[i].ne[k][1]) * (G[i].ggml[k] ? 2 : 4), &e) == QPK_OK);
        CHECK(qpk_gguf_finish(w, &e) == QPK_OK);
        qpk_imatrix *m = NULL;
        qpk_status s = qpk_imatrix_read(&m, path(p), &e);
        CHECKF(s != QPK_OK && strstr(e.msg, G[i].msg) && !m, "'%s': %d \"%s\"", G[i].what, (int)s, e.msg);
    }
    qpk_imatrix *m = NULL;
    qpk_err e = {0};
    CHECK_ERR(qpk_imatrix_read(&m, path("missing.dat"), &e), QPK_E_IO, e, "missing.dat");
}

/* KLD of the model at path against the float model on the eval text's first 8 chunks of 256. */
static double kld_of(const char *path, qpk_source *ref, const int32_t *eval, size_t n_eval)
{
    qpk_err e = {0};
    const double k = tu_kld(path, ref, eval, n_eval, 256, 8, &e);
    CHECKF(!isnan(k), "%s: %s", path, e.msg);
    return k;
}

/*
 * The engine both ways on the outlier fixture, as Q4_K_M: a calibrated imatrix run saves its
 * statistics (GGUF and legacy forms: one entry per linear, named as llama.cpp names the
 * weights, with the tokens the run saw); converting again with that file and no calibration
 * data gives the calibrated run's quality (the same statistics), below round-to-nearest's.
 */
static void test_engine(const char *fx)
{
    char model[4096];
    snprintf(model, sizeof model, "%s/qwen-tiny-a-outlier", fx);
    int32_t *calib = NULL, *eval = NULL;
    size_t n_calib = 0, n_eval = 0;
    qpk_err e = {0};
    CHECKF(tu_calib_and_eval(fx, model, &calib, &n_calib, &eval, &n_eval, &e) == QPK_OK, "%s", e.msg);
    qpk_convert_opts o = {.dtype = -1, .preset = QPK_PRESET_Q4_K_M, .method = QPK_METHOD_IMATRIX,
                          .calib = {.tokens = calib, .n_tokens = n_calib, .samples = 16, .seq_len = 256, .source = "calib.txt"},
                          .save_imatrix = path("run.gguf")};
    CHECKF(tu_convert(model, path("calibrated.qpk"), &o, &e) == QPK_OK, "%s", e.msg);
    o.save_imatrix = path("run.dat"), o.save_imatrix_dat = true;
    CHECKF(tu_convert(model, path("calibrated2.qpk"), &o, &e) == QPK_OK, "%s", e.msg);
    qpk_imatrix *g = NULL, *l = NULL;
    CHECKF(qpk_imatrix_read(&g, path("run.gguf"), &e) == QPK_OK && qpk_imatrix_read(&l, path("run.dat"), &e) == QPK_OK,
           "%s", e.msg);
    if (g && l) {
        const qpk_imatrix_entry *q = qpk_imatrix_find(g, "blk.2.attn_q.weight"), *d = qpk_imatrix_find(g, "blk.3.ffn_down.weight");
        CHECKF(g->n == 28 && l->n == 28 && q && d && q->n_per_row == 128 && d->n_per_row == 384 && q->n_mat == 1,
               "%zu entries", g->n);
        CHECKF(q && q->counts[0] == 16 * 256 && g->chunk_count == 16 && g->chunk_size == 256 &&
                   !strcmp(g->dataset, "calib.txt"), "counts %g, chunks %u of %u", q ? q->counts[0] : -1.0,
               g->chunk_count, g->chunk_size);
    }
    qpk_imatrix_free(g), qpk_imatrix_free(l);
    qpk_convert_opts r = {.dtype = -1, .preset = QPK_PRESET_Q4_K_M};
    CHECKF(tu_convert(model, path("rtn.qpk"), &r, &e) == QPK_OK, "%s", e.msg);
    r.imatrix = path("run.gguf"), r.method = QPK_METHOD_IMATRIX;
    CHECKF(tu_convert(model, path("from-gguf.qpk"), &r, &e) == QPK_OK, "%s", e.msg);
    r.imatrix = path("run.dat");
    CHECKF(tu_convert(model, path("from-dat.qpk"), &r, &e) == QPK_OK, "%s", e.msg);
    /* Refusals: an imatrix with GPTQ, or beside calibration data; --save-imatrix without a calibration run. */
    r.method = QPK_METHOD_GPTQ;
    CHECK_ERR(tu_convert(model, path("x.qpk"), &r, &e), QPK_E_INVALID_ARG, e, "--imatrix goes with --method imatrix");
    qpk_convert_opts s = {.dtype = -1, .preset = QPK_PRESET_Q4_K_M, .save_imatrix = path("x.gguf")};
    CHECK_ERR(tu_convert(model, path("x.qpk"), &s, &e), QPK_E_INVALID_ARG, e, "--save-imatrix writes a calibration run");
    CHECK(access(path("x.qpk"), F_OK) != 0 && access(path("x.gguf"), F_OK) != 0);
    qpk_source *ref = NULL;
    if (tu_open(&ref, model, false, &e) == QPK_OK) {
        const double k_rtn = kld_of(path("rtn.qpk"), ref, eval, n_eval), k_cal = kld_of(path("calibrated.qpk"), ref, eval, n_eval);
        const double k_gguf = kld_of(path("from-gguf.qpk"), ref, eval, n_eval), k_dat = kld_of(path("from-dat.qpk"), ref, eval, n_eval);
        fprintf(stderr, "Q4_K_M KLD vs BF16: RTN %.5g, imatrix run %.5g, its saved GGUF %.5g, its saved .dat %.5g\n", k_rtn,
                k_cal, k_gguf, k_dat);
        /* the same statistics (the .dat's mean squares rounded once more): the same quality, within 1% */
        CHECKF(fabs(k_gguf - k_cal) <= 0.01 * k_cal && fabs(k_dat - k_cal) <= 0.01 * k_cal && k_cal < k_rtn,
               "KLD: run %g, from its GGUF %g, from its .dat %g, RTN %g", k_cal, k_gguf, k_dat, k_rtn);
        tu_close(ref);
    } else {
        CHECKF(false, "%s", e.msg);
    }
    free(calib), free(eval);
}

int main(void)
{
    if (!mkdtemp(dir))
        return 1;
    test_round_trip();
    test_malformed();
    const char *fx = fixtures_dir();
    if (fx)
        test_engine(fx);
    rm_rf(dir);
    const int r = th_summary("test_imatrix");
    return r ? r : fx ? 0 : fixtures_missing();
}
