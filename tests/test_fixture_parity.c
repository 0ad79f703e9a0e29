/*
 * Parity with the independent PyTorch reference on the fixture models:
 *  - the 16 parity positions' logits (ref-parity.safetensors): max |diff| <= 1e-4 (the
 *    reference's own f32-vs-f64 gap is 6e-6, and logits are of order 10), top-1 100%;
 *  - perplexity of eval_public with -c 128 equal to ref-ppl.json within 0.01% relative,
 *    both second-half and all-position scoring.
 * Converted with --dtype f32 and --dtype keep, and read straight from the HF folder.
 * QPK_PPL_CHUNKS=N limits the perplexity to the first N chunks (sanitizer builds);
 * the reference is then the mean of those chunks' per-chunk NLLs.
 * "test_fixture_parity outlier" checks qwen-tiny-a-outlier (ctest's test_fixture_parity_outlier),
 * no argument qwen-tiny-a: two tests, which two cores finish sooner than one twice as long.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

#include "fixtures.h"
#include "qpk/verify.h"
#include "testhelp.h"
#include "testutil.h"

static double ref_mean_nll(const cJSON *mode, int chunks)
{
    const cJSON *per = cJSON_GetObjectItemCaseSensitive(mode, "per_chunk_mean_nll");
    int n = cJSON_GetArraySize(per);
    if (chunks <= 0 || chunks >= n)
        return cJSON_GetObjectItemCaseSensitive(mode, "mean_nll")->valuedouble;
    double s = 0;
    for (int i = 0; i < chunks; i++)
        s += cJSON_GetArrayItem(per, i)->valuedouble;
    return s / chunks;
}

static void check_parity(const char *what, qpk_source *src, const char *model_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/ref-parity.safetensors", model_dir);
    qpk_safetensors *ref;
    qpk_err e = {0};
    if (qpk_st_open(&ref, path, &e) != QPK_OK) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    qpk_verify_opts o = {0};
    qpk_verify_result r;
    CHECKF(qpk_verify_ref_file(tu_model(src), ref, &o, &r, &e) == QPK_OK, "%s", e.msg);
    printf("%-34s parity: max |diff| %.3g, mean |diff| %.3g, top-1 %.1f%%, KLD mean %.3g\n", what, r.max_abs_diff,
           r.mean_abs_diff, r.top1_pct, r.kld_mean);
    CHECKF(r.n_compared == 16 && r.max_abs_diff <= 1e-4 && r.top1_pct == 100.0, "%s: max diff %g, top1 %g", what,
           r.max_abs_diff, r.top1_pct);
    qpk_st_close(ref);
}

static void check_ppl(const char *what, qpk_source *src, const char *model_dir, const int32_t *tok, size_t n,
                      int chunks)
{
    char path[4096];
    size_t len;
    snprintf(path, sizeof path, "%s/ref-ppl.json", model_dir);
    char *text = slurp(path, &len);
    cJSON *j = cJSON_Parse(text), *ev = cJSON_GetObjectItemCaseSensitive(j, "eval_public");
    const char *modes[2] = {"second_half", "all_positions"};
    for (int m = 0; m < 2; m++) {
        qpk_verify_opts o = {.n_ctx = 128, .score_all = m == 1, .max_chunks = chunks};
        qpk_verify_result r;
        qpk_err e = {0};
        CHECKF(qpk_verify_tokens(tu_model(src), NULL, tok, n, &o, &r, &e) == QPK_OK, "%s", e.msg);
        double want = exp(ref_mean_nll(cJSON_GetObjectItemCaseSensitive(ev, modes[m]), chunks));
        double rel = fabs(r.ppl - want) / want;
        printf("%-34s ppl %-13s %.4f, reference %.4f, relative difference %.2g (%d chunks, %.1f s)\n", what, modes[m],
               r.ppl, want, rel, r.n_chunks, r.seconds);
        CHECKF(rel <= 1e-4, "%s %s: ppl %.6f vs %.6f", what, modes[m], r.ppl, want);
        CHECK(r.n_scored == (uint64_t)r.n_chunks * (m ? 127u : 63u));
    }
    cJSON_Delete(j);
    free(text);
}

int main(int argc, char **argv)
{
    const char *fx = fixtures_dir();
    if (!fx)
        return fixtures_missing();
    const char *lim = getenv("QPK_PPL_CHUNKS");
    int chunks = lim ? atoi(lim) : 0;
    char tmp[] = "/tmp/qpk-test-parity-XXXXXX", dir[4096], out[4096], tokens_path[4096];
    if (!mkdtemp(tmp))
        return 2;
    size_t tlen;
    snprintf(tokens_path, sizeof tokens_path, "%s/tokens/eval_public.i32", fx);
    int32_t *tok = (int32_t *)slurp(tokens_path, &tlen);
    const char *models[2] = {"qwen-tiny-a", "qwen-tiny-a-outlier"};
    const bool outlier = argc > 1 && !strcmp(argv[1], "outlier");
    if (argc > 1 && !outlier) {
        fprintf(stderr, "usage: test_fixture_parity [outlier]\n");
        return 2;
    }
    for (int mi = outlier; mi < 1 + outlier; mi++) {
        snprintf(dir, sizeof dir, "%s/%s", fx, models[mi]);
        const int dtypes[2] = {QPK_TYPE_F32, -1};
        for (int k = 0; k < 3; k++) {
            qpk_source *src;
            qpk_err e = {0};
            char what[128];
            if (k < 2) {
                snprintf(out, sizeof out, "%s/%d.qpk", tmp, k);
                qpk_convert_opts o = {.dtype = dtypes[k]};
                CHECKF(tu_convert(dir, out, &o, &e) == QPK_OK, "%s", e.msg);
                snprintf(what, sizeof what, "%s --dtype %s", models[mi], k ? "keep" : "f32");
            } else {
                snprintf(out, sizeof out, "%s", dir);
                snprintf(what, sizeof what, "%s (HF folder)", models[mi]);
            }
            if (tu_open(&src, out, false, &e) != QPK_OK) {
                CHECKF(false, "%s", e.msg);
                continue;
            }
            check_parity(what, src, dir);
            /* Perplexity once per model (the f32 file); the bf16 bits are the same values. */
            if (k == 0)
                check_ppl(what, src, dir, tok, tlen / 4, chunks);
            tu_close(src);
            if (k < 2)
                unlink(out);
        }
    }
    free(tok);
    rmdir(tmp);
    return th_summary(outlier ? "test_fixture_parity_outlier" : "test_fixture_parity");
}
