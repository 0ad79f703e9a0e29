/*
 * ggml's block types, against ggml itself: tests/data/ggml holds GGUF files written by
 * llama.cpp's llama-quantize (Q2_K .. Q6_K mixes, Q4_1, Q5_0, Q5_1, the i-quants) and expected.json, the
 * XXH3 of every tensor as ggml's own to_float dequantizes it (tests/llamacpp/make_ggml_files.sh).
 * qpk's reference dequantization and every kernel table must give those bits; the files
 * must read as models and run; qpk's own quantizers must write blocks that decode as
 * their grids say; a NaN scale in a K-quant or i-quant block is refused; qpk's codebooks
 * of the i-quants are ggml's, entry for entry.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

#include "qpk/convert.h"
#include "qpk/gguf.h"
#include "qpk/quant.h"
#include "qpk/runtime.h"
#include "ggml_blocks.h"
#include "iq_grids.h"
#include "testhelp.h"
#include "testutil.h"
#include "model_private.h"

#ifndef QPK_TEST_DATA
#define QPK_TEST_DATA "tests/data"
#endif

static uint64_t xxh3_of(const float *f, size_t n) { return qpk_xxh3(f, n * sizeof *f); }

/* Every tensor of one llama.cpp-written file, decoded by the reference and by each kernel table. */
static void check_file(const char *dir, const char *file, const cJSON *want, bool *seen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    qpk_gguf *g = NULL;
    qpk_model *m = NULL;
    qpk_err e = {0};
    if (qpk_gguf_open(&g, path, &e) != QPK_OK || tu_gguf_model(&m, g, &e) != QPK_OK) {
        CHECKF(false, "%s: %s", file, e.msg);
        qpk_gguf_close(g);
        return;
    }
    int checked = 0, differ = 0;
    for (size_t i = 0; i < qpk_gguf_n_tensors(g); i++) {
        const qpk_gguf_tensor *t = qpk_gguf_tensor_at(g, i);
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(want, t->name), "xxh3");
        uint32_t type, group;
        if (!cJSON_IsString(w) || !qpk_type_of_ggml(t->type, &type, &group)) {
            CHECKF(false, "%s: %s has no expectation or an unknown type", file, t->name);
            continue;
        }
        const int64_t cols = (int64_t)t->ne[0], rows = t->n_dims == 2 ? (int64_t)t->ne[1] : 1;
        float *f = malloc((size_t)(rows * cols) * sizeof *f);
        const size_t rb = qpk_type_row_bytes(type, group, cols);
        for (int64_t r = 0; r < rows; r++)
            qpk_dequantize_row(type, group, (const uint8_t *)t->data + (size_t)r * rb, cols, f + r * cols);
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)xxh3_of(f, (size_t)(rows * cols)));
        bool same = !strcmp(hex, w->valuestring);
        qpk_matrix mat = {type, group, rows, cols, t->data, NULL};
        for (size_t k = 0; same && qpk_kernels_available(k); k++) {
            for (int64_t r = 0; r < rows; r++)
                qpk_kernels_available(k)->row_to_f32(&mat, r, f + r * cols);
            same = xxh3_of(f, (size_t)(rows * cols)) == strtoull(w->valuestring, NULL, 16);
        }
        differ += !same;
        checked++;
        seen[type] = true;
        if (!same)
            fprintf(stderr, "  %s %s (%s) differs from ggml's\n", file, t->name, qpk_ggml_type_name(t->type));
        free(f);
    }
    CHECKF(differ == 0 && checked > 10, "%s: %d of %d tensors differ from ggml's dequantization", file, differ, checked);
    /* And it runs: a few tokens, finite logits. */
    qpk_context *c = NULL;
    qpk_context_opts o = {.n_ctx = 16, .n_threads = 1};
    float *logits = malloc((size_t)qpk_model_config(m)->vocab_size * 4 * sizeof *logits);
    const int32_t tok[4] = {84, 104, 266, 32};
    bool ok = qpk_context_create(&c, m, &o, &e) == QPK_OK && qpk_eval(c, tok, 4, logits, 4, &e) == QPK_OK;
    for (int64_t i = 0; ok && i < qpk_model_config(m)->vocab_size * 4; i++)
        ok = isfinite(logits[i]);
    CHECKF(ok, "%s: eval: %s", file, e.msg);
    free(logits);
    qpk_context_free(c);
    qpk_model_free(m);
    qpk_gguf_close(g);
}

/* Makes block b's f16 scale h, where the type keeps it (bytes of the block at p). */
typedef void scale_setter(uint8_t *p, uint16_t h);
static void set_q4_k(uint8_t *p, uint16_t h) { memcpy(p + offsetof(qpk_block_q4_k, d), &h, 2); }
static void set_tq1_0(uint8_t *p, uint16_t h) { memcpy(p + offsetof(qpk_block_tq1_0, d), &h, 2); }
/* IQ1_M has no d: its f16 is the top nibbles of the four u16 scales. */
static void set_iq1_m(uint8_t *p, uint16_t h)
{
    for (int k = 0; k < 4; k++) {
        uint8_t *hi = p + offsetof(qpk_block_iq1_m, scales) + 2 * k + 1;
        *hi = (uint8_t)((*hi & 15) | (h >> 4 * k & 15) << 4);
    }
}

/* A copy of a file with block 3 of a tensor given a NaN or infinite f16 scale h: refused, the tensor and block named. */
static void check_bad_scale(const char *dir, const char *file, const char *tensor, uint32_t ggml_type, size_t block_bytes,
                            scale_setter *set, uint16_t h)
{
    char src[4096], dst[] = "/tmp/qpk-test-ggml-XXXXXX", want[256];
    snprintf(src, sizeof src, "%s/%s", dir, file);
    size_t n;
    char *bytes = slurp(src, &n);
    qpk_gguf *g = NULL;
    qpk_err e = {0};
    int fd = mkstemp(dst);
    CHECK(bytes && fd >= 0 && qpk_gguf_open(&g, src, &e) == QPK_OK);
    if (!bytes || fd < 0 || !g) {
        free(bytes);
        return;
    }
    const qpk_gguf_tensor *t = qpk_gguf_find_tensor(g, tensor);
    CHECKF(t && t->type == ggml_type && qpk_ggml_type_name(ggml_type), "%s: %s", file, tensor);
    if (t)
        set((uint8_t *)bytes + t->offset + block_bytes * 3, h);
    qpk_gguf_close(g);
    CHECK(write(fd, bytes, n) == (ssize_t)n);
    close(fd);
    qpk_model *m = NULL;
    g = NULL;
    CHECK(qpk_gguf_open(&g, dst, &e) == QPK_OK);
    snprintf(want, sizeof want, "tensor %s: block 3 has a NaN or infinite scale (%s)", tensor,
             qpk_ggml_type_name(ggml_type));
    CHECK_ERR(tu_gguf_model(&m, g, &e), QPK_E_VALUE, e, want);
    qpk_model_free(m), qpk_gguf_close(g);
    unlink(dst);
    free(bytes);
}

static void check_nan_scale(const char *dir)
{
    check_bad_scale(dir, "tiny-Q4_K_M.gguf", "blk.0.ffn_up.weight", QPK_GGML_Q4_K, 144, set_q4_k, 0x7e00);
    enum { GGML_IQ1_M = 29, GGML_TQ1_0 = 34 }; /* ggml.h's numbers */
    check_bad_scale(dir, "tiny-IQ1_M.gguf", "blk.0.ffn_gate.weight", GGML_IQ1_M, sizeof(qpk_block_iq1_m), set_iq1_m,
                    0x7e00);
    check_bad_scale(dir, "tiny-IQ1_M.gguf", "blk.0.attn_q.weight", GGML_IQ1_M, sizeof(qpk_block_iq1_m), set_iq1_m,
                    0xfc00); /* -inf */
    check_bad_scale(dir, "tiny-TQ1_0.gguf", "blk.0.ffn_down.weight", GGML_TQ1_0, sizeof(qpk_block_tq1_0), set_tq1_0,
                    0x7c00); /* d after the codes */
    /* The scale is IQ1_M's top nibbles alone: the rest of those u16s all ones is a finite block. */
    uint8_t b[sizeof(qpk_block_iq1_m)] = {0};
    memset(b + offsetof(qpk_block_iq1_m, scales), 0xff, 8);
    set_iq1_m(b, 0x3c00);
    CHECK(qpk_first_bad_scale(QPK_TYPE_IQ1_M, 256, b, 1) == 1);
    set_iq1_m(b, 0x7c01);
    CHECK(qpk_first_bad_scale(QPK_TYPE_IQ1_M, 256, b, 1) == 0);
}

/* The hash expected.json's "codebooks" give ggml's table `name` (0 if it has none). */
static uint64_t ggml_table_hash(const cJSON *want, const char *name)
{
    const char *h = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(want, name), "xxh3"));
    return h ? strtoull(h, NULL, 16) : 0;
}

/* qpk's codebooks of the i-quants expand to ggml-common.h's tables byte for byte (their hashes in expected.json's
 * "codebooks", from ggml_hashes.c): every entry, not only those the files use. */
static void check_codebooks(const cJSON *want)
{
    uint8_t bytes[2048 * 8];
    int checked = 0;
    for (int g = 0; g < QPK_IQ_GRID_COUNT_; g++) {
        const qpk_iq_grid *grid = &QPK_IQ_GRIDS[g];
        for (uint32_t i = 0; i < grid->n; i++)
            qpk_iq_grid_entry(grid, i, (int8_t *)bytes + grid->width * i);
        const size_t n = (size_t)grid->n * grid->width;
        CHECKF(qpk_xxh3(bytes, n) == ggml_table_hash(want, grid->name), "%s differs from ggml's", grid->name);
        checked++;
    }
    for (unsigned s = 0; s < 128; s++)
        bytes[s] = (uint8_t)qpk_iq_signs(s);
    for (unsigned j = 0; j < 8; j++) /* the sign of weight j is bit j */
        bytes[128 + j] = (uint8_t)(1u << j);
    const struct {
        const char *name;
        const void *ours;
        size_t n;
    } OTHER[] = {{"ksigns_iq2xs", bytes, 128}, {"kmask_iq2xs", bytes + 128, 8}, {"kvalues_iq4nl", qpk_iq4nl_values, 16}};
    for (size_t k = 0; k < sizeof OTHER / sizeof *OTHER; k++) {
        CHECKF(qpk_xxh3(OTHER[k].ours, OTHER[k].n) == ggml_table_hash(want, OTHER[k].name), "%s differs from ggml's",
               OTHER[k].name);
        checked++;
    }
    CHECK(checked == cJSON_GetArraySize(want));
}

/* The same file cut 100 bytes short: its last tensor's blocks end past the data, named before any use. */
static void check_truncated(const char *dir)
{
    char src[4096];
    snprintf(src, sizeof src, "%s/tiny-Q4_K_M.gguf", dir);
    size_t n;
    char *bytes = slurp(src, &n);
    CHECK(bytes && n > 100);
    if (!bytes || n <= 100) {
        free(bytes);
        return;
    }
    qpk_gguf *g = NULL;
    qpk_err e = {0};
    CHECK_ERR(qpk_gguf_open_memory(&g, bytes, n - 100, &e), QPK_E_CORRUPT, e,
              "tensor 'blk.0.ffn_up.weight' [281984, +36864) runs past the end of the file");
    qpk_gguf_close(g);
    free(bytes);
}

/* qpk's own quantizers: rows of random weights (with outliers), written and decoded. */
static void check_quantizers(void)
{
    static const uint32_t types[] = {QPK_TYPE_Q4_K, QPK_TYPE_Q5_K, QPK_TYPE_Q6_K,   QPK_TYPE_Q4_1,
                                     QPK_TYPE_Q5_0, QPK_TYPE_Q5_1, QPK_TYPE_IQ4_NL, QPK_TYPE_IQ4_XS};
    enum { N = 1024 };
    float x[N], y[N], imp[N];
    uint8_t b[N * 2], again[N * 2];
    uint64_t s = 88172645463325252ull;
    for (int i = 0; i < N; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = ((float)(s % 20001) / 10000.0f - 1.0f) * (i % 97 == 0 ? 20.0f : 1.0f);
        imp[i] = 1.0f + (float)(i % 7);
    }
    double rel[8] = {0};
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        const uint32_t type = types[k], block = qpk_type_info_of(type)->block;
        qpk_err e = {0};
        double weighted_err[2] = {0, 0};
        for (int weighted = 0; weighted < 2; weighted++) {
            CHECKF(qpk_quantize_row_imp(type, block, x, N, weighted ? imp : NULL, b, &e) == QPK_OK, "%s", e.msg);
            qpk_dequantize_row(type, block, b, N, y);
            double err = 0, ref = 0;
            for (int i = 0; i < N; i++) {
                err += (double)(y[i] - x[i]) * (y[i] - x[i]), ref += (double)x[i] * x[i];
                weighted_err[weighted] += imp[i] * (double)(y[i] - x[i]) * (y[i] - x[i]);
            }
            if (!weighted)
                rel[k] = err / ref;
            CHECKF(err / ref < 0.05, "%s: relative squared error %g: the layout is off", qpk_type_name(type), err / ref);
        }
        /* Importance is what the weighted search minimizes: it must not do worse on it than the plain one. */
        CHECKF(weighted_err[1] <= weighted_err[0], "%s: with importance %g, without %g (importance-weighted)",
               qpk_type_name(type), weighted_err[1], weighted_err[0]);
        /* The grid a block reports decodes it: codes recovered from the decoded weights pack back to the same bytes. */
        const size_t bb = qpk_type_block_bytes(type, block);
        bool same = true;
        int32_t q[256];
        for (uint32_t blk = 0; blk < N / block; blk++) {
            const uint8_t *bk = b + blk * bb;
            float a[16], m[16];
            int qmin, qmax;
            const int sub = qpk_ggml_grid(type, bk, a, m, &qmin, &qmax);
            for (uint32_t i = 0; i < block; i++) {
                const int j = (int)i / sub;
                float w;
                q[i] = qpk_ggml_code(type, a[j], m[j], y[blk * block + i], &w);
                same &= q[i] >= qmin && q[i] <= qmax && w == y[blk * block + i];
            }
            memcpy(again + blk * bb, bk, bb);
            qpk_ggml_pack_codes(type, again + blk * bb, q);
        }
        CHECKF(same && !memcmp(again, b, (N / block) * bb), "%s: the block grid and the codes disagree",
               qpk_type_name(type));
    }
    /* More bits, less error: Q6_K < Q5_K < Q4_K, Q5_1 < Q4_1. */
    CHECKF(rel[2] < rel[1] && rel[1] < rel[0] && rel[5] < rel[3], "errors %g %g %g, %g %g", rel[0], rel[1], rel[2],
           rel[3], rel[5]);
}

int main(void)
{
    const char *dir = getenv("QPK_TEST_DATA") ? getenv("QPK_TEST_DATA") : QPK_TEST_DATA "/ggml";
    char path[4096];
    snprintf(path, sizeof path, "%s/expected.json", dir);
    size_t n;
    char *text = slurp(path, &n);
    cJSON *want = text ? cJSON_Parse(text) : NULL;
    CHECKF(want != NULL, "cannot read %s", path);
    const cJSON *f;
    bool seen[QPK_TYPE_COUNT_] = {0};
    cJSON_ArrayForEach(f, want)
        if (strcmp(f->string, "codebooks"))
            check_file(dir, f->string, f, seen);
    check_codebooks(cJSON_GetObjectItemCaseSensitive(want, "codebooks"));
    /* Every ggml type qpk decodes is held to ggml's bits by some file. */
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++)
        CHECKF(!qpk_ggml_type(t) || seen[t], "no llama-quantize file of %s in %s", qpk_type_name(t), dir);
    check_nan_scale(dir);
    check_truncated(dir);
    check_quantizers();
    cJSON_Delete(want);
    free(text);
    return th_summary("test_ggml");
}
