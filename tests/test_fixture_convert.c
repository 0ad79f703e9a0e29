/*
 * Round trip of the real fixture checkpoint: --dtype keep stores every tensor
 * byte for byte, --dtype f32 the exact upcast; the tied embedding is stored
 * once, every q/k/v bias is there, the metadata holds the full config, and the
 * tokenizer files are embedded as they are.
 */
#include <cjson/cJSON.h>
#include <unistd.h>

#include "testutil.h"
#include "fixtures.h"
#include "testhelp.h"

static void check_metadata(const qpk_file *f, const char *model_dir)
{
    char path[4096];
    size_t n, mlen;
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    char *text = slurp(path, &n);
    const char *m = qpk_metadata(f, &mlen);
    cJSON *hf = cJSON_Parse(text), *meta = cJSON_ParseWithLength(m, mlen);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(meta, "config");
    /* Every field of the HF config that the computation needs is in the file, with its value. */
    static const char *keys[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps",
                                 "tie_word_embeddings", "hidden_act", "max_position_embeddings",
                                 "use_sliding_window", "sliding_window", "max_window_layers", "torch_dtype",
                                 "bos_token_id", "eos_token_id", "model_type"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(hf, keys[i]);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(cfg, keys[i]);
        CHECKF(a && b && cJSON_Compare(a, b, true), "metadata config key '%s' differs from config.json", keys[i]);
    }
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(meta, "tied")));
    const cJSON *prov = cJSON_GetObjectItemCaseSensitive(meta, "provenance");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(prov, "source_tensors");
    CHECK(cJSON_GetArraySize(src) == 50);
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(prov, "source_files");
    CHECK(cJSON_GetArraySize(files) == 1);
    cJSON_Delete(hf);
    cJSON_Delete(meta);
    free(text);
}

static void check_embedded(const qpk_file *f, const char *model_dir)
{
    static const char *names[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (size_t i = 0; i < 3; i++) {
        char path[4096];
        size_t n, len;
        snprintf(path, sizeof path, "%s/../qwen-tiny-a/%s", model_dir, names[i]); /* outlier links to these */
        char *want = slurp(path, &n), *got = malloc(n + 1);
        qpk_err e = {0};
        CHECKF(qpk_blob_read(f, names[i], got, n, &len, &e) == QPK_OK && len == n && !memcmp(got, want, n),
               "%s: embedded %s differs (%s)", model_dir, names[i], e.msg);
        free(want);
        free(got);
    }
}

static void round_trip(const char *model_dir, const char *tmp)
{
    char out[4096];
    int dtypes[] = {-1, QPK_TYPE_F32};
    for (int k = 0; k < 2; k++) {
        snprintf(out, sizeof out, "%s/fixture-%d.qpk", tmp, k);
        qpk_convert_opts o = {.dtype = dtypes[k]};
        qpk_err e = {0};
        CHECKF(tu_convert(model_dir, out, &o, &e) == QPK_OK, "%s", e.msg);
        CHECKF(check_against_source(model_dir, out, dtypes[k]), "%s dtype %d", model_dir, dtypes[k]);
        qpk_file *f;
        if (qpk_open(&f, out, NULL, &e) != QPK_OK) {
            CHECKF(false, "%s", e.msg);
            continue;
        }
        /* 1 embedding + 4 x 12 per layer + final norm: the tied head is not stored again. */
        CHECK(qpk_n_tensors(f) == 50 && !qpk_find_tensor(f, "lm_head.weight"));
        const qpk_tensor *emb = qpk_find_tensor(f, "model.embed_tokens.weight");
        CHECK(emb && emb->dims[0] == 151936 && emb->dims[1] == 128);
        CHECK(emb && emb->type == (k == 0 ? QPK_TYPE_BF16 : QPK_TYPE_F32));
        for (int l = 0; l < 4; l++)
            for (int r = QPK_ROLE_Q_BIAS; r <= QPK_ROLE_V_BIAS; r += 2) {
                char name[QPK_MAX_NAME];
                qpk_tensor_name(name, sizeof name, (qpk_role)r, l);
                const qpk_tensor *b = qpk_find_tensor(f, name);
                CHECKF(b && b->ndim == 1 && b->dims[0] == 128, "bias %s", name);
            }
        check_metadata(f, model_dir);
        check_embedded(f, model_dir);
        qpk_close(f);
        unlink(out);
    }
}

int main(void)
{
    const char *fx = fixtures_dir();
    if (!fx)
        return fixtures_missing();
    char tmp[] = "/tmp/qpk-test-fixture-XXXXXX", dir[4096];
    if (!mkdtemp(tmp))
        return 2;
    snprintf(dir, sizeof dir, "%s/qwen-tiny-a", fx);
    round_trip(dir, tmp);
    snprintf(dir, sizeof dir, "%s/qwen-tiny-a-outlier", fx);
    round_trip(dir, tmp);
    rmdir(tmp);
    return th_summary("test_fixture_convert");
}
