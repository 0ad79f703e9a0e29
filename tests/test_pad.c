/*
 * --pad-intermediate on the fixture (intermediate_size 384): padded to a multiple of 256
 * (512) and of 5 (385), the logits must be the unpadded model's bit for bit, for the float
 * model and for every quantized type (the padding whole zero groups, the real groups as
 * they were), whether padded before quantizing (a folder) or afterwards (a .qpk); the
 * padded rows and columns must decode to exact zeros; GGUF and GPTQ outputs must read back
 * to the same logits; what cannot be padded exactly is refused, by name.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

#include "fixtures.h"
#include "qpk/runtime.h"
#include "testhelp.h"
#include "testutil.h"

#define N_TOK 24

static const int32_t TOKENS[N_TOK] = {9707, 11, 847, 829, 374, 1207, 16948, 13, 358, 1079, 264, 3460,
                                      4128, 1614, 14, 3465, 553, 54364, 14817, 13, 151643, 785, 3974, 198};
static char tmp[4096], fx[4096];

/* Logits of TOKENS (each mod the vocabulary: the MoE fixtures have 2048) by the model at path (prefill, 2 threads),
 * or NULL after a failed check; *vocab its vocabulary. */
static float *logits_of(const char *path, size_t *vocab)
{
    qpk_source *src;
    qpk_err e = {0};
    if (tu_open(&src, path, false, &e) != QPK_OK) {
        CHECKF(false, "%s: %s", path, e.msg);
        return NULL;
    }
    const qpk_model *m = tu_model(src);
    const size_t V = *vocab = (size_t)qpk_model_config(m)->vocab_size;
    float *logits = malloc((size_t)N_TOK * V * sizeof *logits);
    int32_t ids[N_TOK];
    for (int i = 0; i < N_TOK; i++)
        ids[i] = TOKENS[i] % (int32_t)V;
    qpk_context *ctx;
    qpk_context_opts co = {.n_ctx = 64, .n_threads = 2};
    qpk_status s = qpk_context_create(&ctx, m, &co, &e);
    if (s == QPK_OK)
        s = qpk_eval(ctx, ids, N_TOK, logits, N_TOK, &e);
    CHECKF(s == QPK_OK, "%s: %s", path, e.msg);
    if (s == QPK_OK)
        qpk_context_free(ctx);
    tu_close(src);
    if (s != QPK_OK)
        free(logits), logits = NULL;
    return logits;
}

/* Whether the models at a and b give the same logits, bit for bit (the largest difference printed). */
static void same_logits(const char *a, const char *b, const char *what)
{
    size_t va = 0, vb = 0;
    float *x = logits_of(a, &va), *y = logits_of(b, &vb);
    if (x && y && va == vb) {
        const size_t n = (size_t)N_TOK * va;
        double worst = 0;
        for (size_t i = 0; i < n; i++)
            worst = fmax(worst, fabs((double)x[i] - y[i]));
        printf("%-34s max |logit diff| padded vs unpadded: %g\n", what, worst);
        CHECKF(!memcmp(x, y, n * sizeof *x), "%s: the padded model's logits differ (max %g)", what, worst);
    }
    free(x), free(y);
}

static qpk_status convert(const char *in, const char *out, qpk_output to, int quant, qpk_preset preset, int64_t pad,
                          qpk_err *e)
{
    qpk_convert_opts o = {.to = to, .dtype = -1, .quant = quant, .preset = preset, .group = 32, .n_threads = 2,
                          .pad_intermediate = pad};
    return qpk_convert_path(in, out, &o, NULL, e);
}

static void row_f32(const qpk_matrix *m, int64_t r, float *out)
{
    const uint8_t *p = (const uint8_t *)m->data + (size_t)r * qpk_matrix_row_bytes(m);
    if (qpk_type_is_quantized(m->type))
        qpk_dequantize_row(m->type, m->group_size, p, m->cols, out);
    else
        qpk_row_to_f32(m->type, p, out, (size_t)m->cols);
}

/*
 * Every layer's gate/up/down of the padded model at path: the shape padded to `to`, the
 * new rows and columns exactly 0, the others equal to the unpadded model's at ref.
 */
static void check_weights(const char *path, const char *ref, int64_t to, const char *what)
{
    qpk_source *a, *b;
    qpk_err e = {0};
    if (qpk_source_open(&a, path, NULL, &e) != QPK_OK || qpk_source_open(&b, ref, NULL, &e) != QPK_OK) {
        CHECKF(false, "%s: %s", what, e.msg);
        return;
    }
    CHECK(qpk_source_config(a)->intermediate_size == to && qpk_source_config(b)->intermediate_size == 384);
    float *x = malloc(1024 * sizeof *x), *y = malloc(1024 * sizeof *y);
    int64_t nonzero = 0, differ = 0, padded = 0;
    for (int l = 0; l < qpk_source_config(a)->n_layers; l++) {
        const qpk_role roles[3] = {QPK_ROLE_GATE, QPK_ROLE_UP, QPK_ROLE_DOWN};
        for (int k = 0; k < 3; k++) {
            qpk_matrix m, r;
            if (qpk_source_matrix(a, roles[k], l, &m, &e) != QPK_OK || qpk_source_matrix(b, roles[k], l, &r, &e) != QPK_OK) {
                CHECKF(false, "%s: %s", what, e.msg);
                continue;
            }
            const bool down = roles[k] == QPK_ROLE_DOWN;
            CHECKF(m.type == r.type && m.group_size == r.group_size, "%s layer %d: padded as %u, unpadded %u", what, l,
                   m.type, r.type);
            CHECKF(down ? m.rows == 128 && m.cols == to : m.rows == to && m.cols == 128, "%s layer %d role %d: %lld x %lld",
                   what, l, k, (long long)m.rows, (long long)m.cols);
            for (int64_t i = 0; i < m.rows; i++) {
                row_f32(&m, i, x);
                if (i < r.rows)
                    row_f32(&r, i, y);
                for (int64_t c = 0; c < m.cols; c++) {
                    const bool pad = down ? c >= 384 : i >= 384;
                    padded += pad;
                    nonzero += pad && x[c] != 0.0f;
                    differ += !pad && memcmp(&x[c], &y[c], sizeof *x) != 0;
                }
            }
        }
    }
    printf("%-34s %lld padded weights: %lld nonzero; real weights differing: %lld\n", what, (long long)padded,
           (long long)nonzero, (long long)differ);
    CHECKF(padded == 4 * 3 * 128 * (to - 384), "%s: %lld padded weights", what, (long long)padded);
    CHECKF(nonzero == 0 && differ == 0, "%s: %lld padded weights nonzero, %lld real ones changed", what, (long long)nonzero,
           (long long)differ);
    free(x), free(y);
    qpk_source_close(a), qpk_source_close(b);
}

/* The .qpk's provenance records the padding: from 384, to `to`, by multiple `n` (or nothing when n is NULL). */
static void check_note(const char *path, int64_t to, int64_t n)
{
    qpk_file *f;
    qpk_err e = {0};
    if (qpk_open(&f, path, NULL, &e) != QPK_OK) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    size_t len;
    const char *text = qpk_metadata(f, &len);
    cJSON *m = cJSON_ParseWithLength(text, len);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(m, "config");
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "provenance"), "padding");
    const cJSON *isz = cJSON_GetObjectItemCaseSensitive(cfg, "intermediate_size");
    CHECKF(cJSON_IsNumber(isz) && isz->valuedouble == (double)to, "%s: config intermediate_size", path);
    if (!n) {
        CHECKF(!pad, "%s: a padding note though nothing was padded", path);
    } else {
        const cJSON *sz = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(pad, "sizes"),
                                                           "intermediate_size");
        const cJSON *from = cJSON_GetObjectItemCaseSensitive(sz, "from"), *t = cJSON_GetObjectItemCaseSensitive(sz, "to");
        const cJSON *mult = cJSON_GetObjectItemCaseSensitive(pad, "multiple");
        CHECKF(cJSON_IsNumber(from) && from->valuedouble == 384 && cJSON_IsNumber(t) && t->valuedouble == (double)to &&
               cJSON_IsNumber(mult) && mult->valuedouble == (double)n, "%s: padding note", path);
    }
    cJSON_Delete(m);
    qpk_close(f);
}

static void path(char *buf, const char *name) { snprintf(buf, 4096, "%s/%s", tmp, name); }

static void test_float(void)
{
    char a[4096], b[4096], c[4096], d[4096];
    qpk_err e = {0};
    path(a, "f.qpk"), path(b, "f-256.qpk"), path(c, "f-5.qpk"), path(d, "f-128.qpk");
    CHECKF(convert(fx, a, QPK_OUT_QPK, 0, 0, 0, &e) == QPK_OK, "%s", e.msg);
    CHECKF(convert(fx, b, QPK_OUT_QPK, 0, 0, 256, &e) == QPK_OK, "%s", e.msg);
    CHECKF(convert(fx, c, QPK_OUT_QPK, 0, 0, 5, &e) == QPK_OK, "%s", e.msg);
    CHECKF(convert(fx, d, QPK_OUT_QPK, 0, 0, 128, &e) == QPK_OK, "%s", e.msg); /* 384 is a multiple: nothing */
    check_note(b, 512, 256), check_note(c, 385, 5), check_note(d, 384, 0);
    check_weights(b, a, 512, "bf16, multiple of 256");
    check_weights(c, a, 385, "bf16, multiple of 5");
    same_logits(a, b, "bf16, multiple of 256");
    same_logits(a, c, "bf16, multiple of 5");
    size_t na, nd;
    char *x = slurp(a, &na), *y = slurp(d, &nd);
    CHECKF(x && y && na == nd && !memcmp(x, y, na), "a multiple already: the file differs from the unpadded one");
    free(x), free(y);
    /* Padding the padded .qpk again keeps the model's first size in the note. */
    char again[4096];
    path(again, "f-256-1024.qpk");
    CHECKF(convert(b, again, QPK_OUT_QPK, 0, 0, 1024, &e) == QPK_OK, "%s", e.msg);
    check_note(again, 1024, 1024);
    same_logits(a, again, "bf16, 256 then 1024 (.qpk source)");
}

/* One quantization: padded from the folder and from the unpadded .qpk, both against the unpadded model. */
static void test_quant(int quant, qpk_preset preset, const char *what)
{
    char a[4096], b[4096], c[4096], name[128];
    qpk_err e = {0};
    snprintf(name, sizeof name, "%s.qpk", what), path(a, name);
    snprintf(name, sizeof name, "%s-256.qpk", what), path(b, name);
    snprintf(name, sizeof name, "%s-256-from-qpk.qpk", what), path(c, name);
    CHECKF(convert(fx, a, QPK_OUT_QPK, quant, preset, 0, &e) == QPK_OK, "%s: %s", what, e.msg);
    CHECKF(convert(fx, b, QPK_OUT_QPK, quant, preset, 256, &e) == QPK_OK, "%s: %s", what, e.msg);
    CHECKF(convert(a, c, QPK_OUT_QPK, 0, 0, 256, &e) == QPK_OK, "%s: %s", what, e.msg);
    check_weights(b, a, 512, what);
    same_logits(a, b, what);
    /* Padding after quantizing writes the same tensors as padding before: the same zero groups. */
    qpk_file *f, *g;
    if (qpk_open(&f, b, NULL, &e) == QPK_OK && qpk_open(&g, c, NULL, &e) == QPK_OK) {
        bool same = qpk_n_tensors(f) == qpk_n_tensors(g);
        for (size_t i = 0; same && i < qpk_n_tensors(f); i++)
            same = qpk_tensor_at(f, i)->xxh3 == qpk_tensor_at(g, i)->xxh3;
        CHECKF(same, "%s: padded from the folder and from the .qpk, the tensors differ", what);
        qpk_close(f), qpk_close(g);
    } else {
        CHECKF(false, "%s", e.msg);
    }
    /* Not whole groups of down's type (384 -> 385 adds one column): refused, naming the tensor. */
    qpk_status s = convert(fx, b, QPK_OUT_QPK, quant, preset, 5, &e);
    CHECK_ERR(s, QPK_E_UNSUPPORTED, e, "model.layers.0.mlp.down_proj.weight is ");
    CHECK(strstr(e.msg, "not whole groups") != NULL);
    s = convert(a, c, QPK_OUT_QPK, 0, 0, 5, &e);
    CHECK_ERR(s, QPK_E_UNSUPPORTED, e, "not whole groups");
}

static void test_outputs(void)
{
    char a[4096], b[4096], c[4096], d[4096];
    qpk_err e = {0};
    /* GGUF (a K-quant mix; down falls back to a block of 32, so 128 columns are whole blocks) */
    path(a, "q4km.gguf"), path(b, "q4km-256.gguf");
    CHECKF(convert(fx, a, QPK_OUT_GGUF, 0, QPK_PRESET_Q4_K_M, 0, &e) == QPK_OK, "%s", e.msg);
    CHECKF(convert(fx, b, QPK_OUT_GGUF, 0, QPK_PRESET_Q4_K_M, 256, &e) == QPK_OK, "%s", e.msg);
    check_weights(b, a, 512, "gguf q4_k_m");
    same_logits(a, b, "gguf q4_k_m");
    /* A GGUF source padded into a .qpk: its blocks copied, zero blocks appended. */
    path(c, "from-gguf-256.qpk");
    CHECKF(convert(a, c, QPK_OUT_QPK, 0, 0, 256, &e) == QPK_OK, "%s", e.msg);
    check_weights(c, a, 512, "gguf q4_k_m -> padded .qpk");
    same_logits(a, c, "gguf q4_k_m -> padded .qpk");
    /* GPTQ v1 int4 (asymmetric): the zero groups' zero point must be one v1 can store. */
    path(c, "gptq"), path(d, "gptq-256");
    rm_rf(c), rm_rf(d);
    CHECKF(convert(fx, c, QPK_OUT_GPTQ, QPK_TYPE_INT4, 0, 0, &e) == QPK_OK, "%s", e.msg);
    CHECKF(convert(fx, d, QPK_OUT_GPTQ, QPK_TYPE_INT4, 0, 256, &e) == QPK_OK, "%s", e.msg);
    check_weights(d, c, 512, "gptq int4 (v1)");
    same_logits(c, d, "gptq int4 (v1)");
    /* An imported GPTQ folder is not padded: refused, saying how. */
    char out[4096];
    path(out, "refused.qpk");
    qpk_status s = convert(c, out, QPK_OUT_QPK, 0, 0, 256, &e);
    CHECK_ERR(s, QPK_E_UNSUPPORTED, e, "convert it to .qpk, then pad that .qpk");
    CHECK(access(out, F_OK) != 0);
    rm_rf(c), rm_rf(d);
}

/*
 * Mixtures of experts: every intermediate size padded to the multiple (the dense layer's,
 * each expert's, the shared expert's); the logits the unpadded model's bit for bit (float,
 * and int4 from the folder and from the unpadded .qpk alike); each expert's new rows of
 * gate/up and columns of down exact zeros, its real weights as they were.
 */
static void test_moe(void)
{
    static const struct {
        const char *fixture;
        int64_t sizes[3], padded[3]; /* intermediate, each expert's, shared (0: none) at multiple 64 */
        bool quantized;               /* rows of 48 (Qwen3-MoE's tiny experts) take no group of 32 unpadded */
    } M[] = {{"qwen-tiny-moe", {128, 32, 96}, {128, 64, 128}, true},
             {"qwen-tiny-qwen3-moe", {128, 48, 0}, {128, 64, 0}, false}};
    for (size_t k = 0; k < sizeof M / sizeof *M; k++) {
        char src[4096], a[4096], b[4096], c[4096], what[96];
        qpk_err e = {0};
        snprintf(src, sizeof src, "%s/%s", fixtures_dir(), M[k].fixture);
        for (int q = 0; q < 1 + M[k].quantized; q++) {
            const int quant = q ? QPK_TYPE_INT4 : 0;
            snprintf(what, sizeof what, "%s %s", M[k].fixture, q ? "int4" : "bf16");
            snprintf(a, sizeof a, "%s/moe-%zu-%d.qpk", tmp, k, q);
            snprintf(b, sizeof b, "%s/moe-%zu-%d-64.qpk", tmp, k, q);
            snprintf(c, sizeof c, "%s/moe-%zu-%d-64-from-qpk.qpk", tmp, k, q);
            CHECKF(convert(src, a, QPK_OUT_QPK, quant, 0, 0, &e) == QPK_OK, "%s: %s", what, e.msg);
            CHECKF(convert(src, b, QPK_OUT_QPK, quant, 0, 64, &e) == QPK_OK, "%s: %s", what, e.msg);
            CHECKF(convert(a, c, QPK_OUT_QPK, 0, 0, 64, &e) == QPK_OK, "%s: %s", what, e.msg);
            same_logits(a, b, what);
            same_logits(a, c, what);
            qpk_source *pa, *pb;
            if (qpk_source_open(&pa, a, NULL, &e) != QPK_OK || qpk_source_open(&pb, b, NULL, &e) != QPK_OK) {
                CHECKF(false, "%s: %s", what, e.msg);
                continue;
            }
            const qpk_config *ca = qpk_source_config(pa), *cb = qpk_source_config(pb);
            CHECKF(cb->intermediate_size == M[k].padded[0] && cb->moe_intermediate_size == M[k].padded[1] &&
                       cb->shared_expert_intermediate_size == M[k].padded[2] && ca->moe_intermediate_size == M[k].sizes[1],
                   "%s: padded sizes %lld %lld %lld", what, (long long)cb->intermediate_size,
                   (long long)cb->moe_intermediate_size, (long long)cb->shared_expert_intermediate_size);
            const int64_t R = ca->moe_intermediate_size, P = cb->moe_intermediate_size, E = ca->n_experts;
            int64_t nonzero = 0, differ = 0, padded = 0;
            float x[256], y[256];
            for (int l = 0; l < ca->n_layers; l++) {
                if (!qpk_layer_is_sparse(ca, l))
                    continue;
                const qpk_role roles[3] = {QPK_ROLE_EXP_GATE, QPK_ROLE_EXP_UP, QPK_ROLE_EXP_DOWN};
                for (int r = 0; r < 3; r++) {
                    qpk_matrix m, u;
                    if (qpk_source_matrix(pb, roles[r], l, &m, &e) != QPK_OK ||
                        qpk_source_matrix(pa, roles[r], l, &u, &e) != QPK_OK) {
                        CHECKF(false, "%s: %s", what, e.msg);
                        continue;
                    }
                    const bool down = roles[r] == QPK_ROLE_EXP_DOWN;
                    CHECKF(down ? m.rows == E * ca->hidden_size && m.cols == P : m.rows == E * P,
                           "%s layer %d: %lld x %lld", what, l, (long long)m.rows, (long long)m.cols);
                    for (int64_t i = 0; i < m.rows; i++) { /* expert i / P's row i % P (gate, up) */
                        const bool pad_row = !down && i % P >= R;
                        row_f32(&m, i, x);
                        if (!pad_row)
                            row_f32(&u, down ? i : i / P * R + i % P, y);
                        for (int64_t col = 0; col < m.cols; col++) {
                            const bool pad = pad_row || (down && col >= R);
                            padded += pad;
                            nonzero += pad && x[col] != 0.0f;
                            differ += !pad && memcmp(&x[col], &y[col], sizeof *x) != 0;
                        }
                    }
                }
            }
            printf("%-34s %lld padded expert weights: %lld nonzero; real weights differing: %lld\n", what,
                   (long long)padded, (long long)nonzero, (long long)differ);
            CHECKF(padded > 0 && nonzero == 0 && differ == 0, "%s: %lld padded, %lld nonzero, %lld real ones changed",
                   what, (long long)padded, (long long)nonzero, (long long)differ);
            qpk_source_close(pa), qpk_source_close(pb);
            unlink(a), unlink(b), unlink(c);
        }
    }
}

static void test_refused(void)
{
    char out[4096], moe[4096];
    qpk_err e = {0};
    path(out, "refused.qpk");
    qpk_status s = convert(fx, out, QPK_OUT_QPK, 0, 0, -1, &e);
    CHECK_ERR(s, QPK_E_INVALID_ARG, e, "--pad-intermediate -1: the multiple must be in 1..1048576");
    s = convert(fx, out, QPK_OUT_QPK, 0, 0, 1 << 21, &e);
    CHECK_ERR(s, QPK_E_INVALID_ARG, e, "the multiple must be in 1..");
    /* The MoE fixture's experts quantized in groups of 32: padding its experts' 32 columns to 48 is not whole groups. */
    snprintf(moe, sizeof moe, "%s/qwen-tiny-moe", fixtures_dir());
    s = convert(moe, out, QPK_OUT_QPK, QPK_TYPE_INT4, 0, 48, &e);
    CHECK_ERR(s, QPK_E_UNSUPPORTED, e, "padding moe_intermediate_size 32 to 48 adds 16 column(s), not whole groups");
    qpk_convert_opts o = {.dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .method = QPK_METHOD_GPTQ,
                          .calib = {.tokens = TOKENS, .n_tokens = N_TOK}, .pad_intermediate = 256};
    s = qpk_convert_path(fx, out, &o, NULL, &e);
    CHECK_ERR(s, QPK_E_UNSUPPORTED, e, "--pad-intermediate with --method gptq: calibration runs on the model as it is");
    qpk_convert_opts r = {.dtype = -1, .requantize = true, .pad_intermediate = 256};
    char src[4096];
    path(src, "int4.qpk");
    s = qpk_convert_path(src, out, &r, NULL, &e);
    CHECK_ERR(s, QPK_E_UNSUPPORTED, e, "--pad-intermediate with --requantize");
    /* Per-row groups of down span the new columns: not whole groups. */
    qpk_convert_opts row = {.dtype = -1, .quant = QPK_TYPE_INT8, .group = QPK_GROUP_ROW, .pad_intermediate = 256};
    s = qpk_convert_path(fx, out, &row, NULL, &e);
    CHECK_ERR(s, QPK_E_UNSUPPORTED, e, "down_proj.weight is int8 in groups of 384");
    CHECK(access(out, F_OK) != 0);
}

int main(void)
{
    const char *dir = fixtures_dir();
    if (!dir)
        return fixtures_missing();
    snprintf(fx, sizeof fx, "%s/qwen-tiny-a", dir);
    snprintf(tmp, sizeof tmp, "/tmp/qpk-test-pad-%d", (int)getpid());
    mkdir(tmp, 0755);
    test_float();
    test_quant(QPK_TYPE_INT8, 0, "int8");
    test_quant(QPK_TYPE_INT4, 0, "int4");
    test_quant(QPK_TYPE_INT4S, 0, "int4s");
    test_quant(0, QPK_PRESET_Q4_K_M, "q4_k_m");
    test_outputs();
    test_moe();
    test_refused();
    rm_rf(tmp);
    printf("%d passed, %d failed\n", th_passed, th_failed);
    return th_failed ? 1 : 0;
}
