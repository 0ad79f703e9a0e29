/*
 * safetensors reader, config.json parser, checkpoint checks and conversion.
 * Every malformed input is one defect with its exact expected error; every
 * failed conversion must leave no output file behind.
 */
#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "model_private.h"
#include "gen.h"
#include "qpk/convert.h"
#include "qpk/quant.h"
#include "testhelp.h"

static char g_root[] = "/tmp/qpk-test-convert-XXXXXX";

static void write_file(const char *dir, const char *name, const void *data, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    write_file(dir, name, text, strlen(text));
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

/* A safetensors file image from a header text and a data area of data_len bytes. */
static uint8_t *st_image(const char *header, size_t data_len, size_t *n)
{
    size_t hl = strlen(header);
    *n = 8 + hl + data_len;
    uint8_t *b = calloc(1, *n);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hl >> 8 * i);
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++)
        b[8 + hl + i] = (uint8_t)i;
    return b;
}

/* ------------------------------------------------------------ safetensors */

typedef struct st_case {
    const char *what, *header;
    size_t data_len;
    qpk_status want;
    const char *msg;
} st_case;

static const st_case ST_CASES[] = {
    {"unknown dtype", "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, QPK_E_CORRUPT, "unknown dtype"},
    {"negative shape", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,2]}}", 2, QPK_E_CORRUPT, "non-integer or negative"},
    {"fractional shape", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,2]}}", 2, QPK_E_CORRUPT, "non-integer"},
    {"begin after end", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,1]}}", 2, QPK_E_CORRUPT, "begin <= end"},
    {"three offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,1,2]}}", 2, QPK_E_CORRUPT, "[begin, end]"},
    {"past the data (truncated)", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12, QPK_E_CORRUPT, "past the data area"},
    {"span vs shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16, QPK_E_CORRUPT, "needs 12"},
    {"overlap", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}", 6, QPK_E_CORRUPT, "overlaps"},
    {"hole", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 6, QPK_E_CORRUPT, "hole of 2 bytes"},
    {"uncovered tail", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 5, QPK_E_CORRUPT, "3 bytes after the last tensor"},
    {"duplicate name", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4, QPK_E_CORRUPT, "header: key 'a' appears twice in one object"},
    {"metadata not an object", "{\"__metadata__\":[1]}", 0, QPK_E_CORRUPT, "__metadata__ is not an object"},
    {"metadata value", "{\"__metadata__\":{\"k\":1}}", 0, QPK_E_CORRUPT, "is not a string"},
    {"nine dimensions", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, QPK_E_LIMIT, "9 dimensions"},
    {"entry without dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, QPK_E_CORRUPT, "needs dtype"},
    {"empty name", "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, QPK_E_CORRUPT, "empty name"},
    {"not JSON", "{\"a\":{\"dtype\":", 0, QPK_E_CORRUPT, "header: unexpected end at byte 14"},
    {"trailing garbage", "{}  x", 0, QPK_E_CORRUPT, "header: bytes after the JSON value (byte 4)"},
    {"not an object", "[1,2]", 0, QPK_E_CORRUPT, "does not start with '{'"},
    {"invalid UTF-8", "{\"a\xff\":{}}", 0, QPK_E_CORRUPT, "header: invalid UTF-8 in a string at byte 3"},
    {"overlong UTF-8", "{\"a\xc0\xaf\":{}}", 0, QPK_E_CORRUPT, "header: invalid UTF-8 in a string at byte 3"},
    {"UTF-16 surrogate", "{\"a\xed\xa0\x80\":{}}", 0, QPK_E_CORRUPT, "header: invalid UTF-8 in a string at byte 3"},
    {"offset not exact in double", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 1, QPK_E_CORRUPT, "data_offsets"},
    /* Where JSON parsers disagree (issue 12): a key twice in one entry, a NUL escape anywhere. */
    {"dtype given twice", "{\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"dtype\":\"BF16\",\"data_offsets\":[0,2]}}", 2, QPK_E_CORRUPT, "key 'dtype' appears twice"},
    {"shape twice, escaped", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"sh\\u0061pe\":[1],\"data_offsets\":[0,2]}}", 2, QPK_E_CORRUPT, "key 'shape' appears twice"},
    {"NUL in a name", "{\"model.norm.weight\\u0000x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, QPK_E_UNSUPPORTED, "\\u0000"},
    {"NUL in metadata", "{\"__metadata__\":{\"format\":\"pt\\u0000\"}}", 0, QPK_E_UNSUPPORTED, "\\u0000"},
    {"metadata key twice", "{\"__metadata__\":{\"f\":\"a\",\"f\":\"b\"}}", 0, QPK_E_CORRUPT, "key 'f' appears twice"},
    {"raw control byte", "{\"a\t\":{}}", 0, QPK_E_CORRUPT, "raw control character"},
};

/*
 * The error contract: malformed bytes given again without an e fail with the status the call with
 * one got (`with_e`), leaving no handle, from memory and from a file (qpk_st_open prefixes the path).
 */
static void st_replay_null_e(const char *what, const uint8_t *b, size_t n, qpk_status with_e)
{
    qpk_safetensors *st = NULL;
    qpk_status s = qpk_st_open_memory(&st, b, n, NULL);
    CHECKF(s != QPK_OK && s == with_e && st == NULL, "'%s' with e == NULL: status %d (want %d)", what, s, with_e);
    qpk_st_close(st);
    char path[4096];
    snprintf(path, sizeof path, "%s/defect.safetensors", g_root);
    write_file(g_root, "defect.safetensors", b, n);
    st = NULL;
    s = qpk_st_open(&st, path, NULL);
    CHECKF(s != QPK_OK && s == with_e && st == NULL, "'%s' from a file with e == NULL: status %d (want %d)", what, s,
           with_e);
    qpk_st_close(st);
    unlink(path);
}

static void test_safetensors_defects(void)
{
    size_t null_e = 0;
    for (size_t i = 0; i < sizeof ST_CASES / sizeof *ST_CASES; i++) {
        const st_case *c = &ST_CASES[i];
        size_t n;
        uint8_t *b = st_image(c->header, c->data_len, &n);
        qpk_safetensors *st = NULL;
        qpk_err e = {0};
        qpk_status s = qpk_st_open_memory(&st, b, n, &e);
        CHECKF(s == c->want && strstr(e.msg, c->msg), "case '%s': status %d, \"%s\" (want \"%s\")", c->what, s,
               e.msg, c->msg);
        CHECK(st == NULL);
        st_replay_null_e(c->what, b, n, s), null_e++;
        free(b);
    }
    /* Length-field defects, which a header text cannot express. */
    qpk_safetensors *st;
    qpk_err e = {0};
    uint8_t b[16] = {0};
    qpk_status s = qpk_st_open_memory(&st, b, 5, &e);
    CHECK_ERR(s, QPK_E_CORRUPT, e, "no 8-byte header length");
    st_replay_null_e("5 bytes", b, 5, s), null_e++;
    b[0] = 0x01, b[3] = 0x10; /* 0x10000001 bytes: past the 100 MB limit */
    b[4] = 0x00;
    s = qpk_st_open_memory(&st, b, 16, &e);
    CHECK_ERR(s, QPK_E_LIMIT, e, "exceeds the limit");
    st_replay_null_e("header length past the limit", b, 16, s), null_e++;
    memset(b, 0, 8), b[0] = 100;
    s = qpk_st_open_memory(&st, b, 16, &e);
    CHECK_ERR(s, QPK_E_CORRUPT, e, "runs past the end");
    st_replay_null_e("header past the end", b, 16, s), null_e++;
    printf("%zu distinct malformed safetensors inputs checked\n", sizeof ST_CASES / sizeof *ST_CASES + 3);
    printf("%zu of them replayed with e == NULL (memory and file)\n", null_e);
}

static void test_safetensors_valid(void)
{
    /* Empty tensors, __metadata__, space padding, every dtype size. */
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},\"e\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
                    "\"x\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
                    "\"y\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[8,16]}}    ";
    size_t n;
    uint8_t *b = st_image(h, 16, &n);
    qpk_safetensors *st;
    qpk_err e = {0};
    CHECKF(qpk_st_open_memory(&st, b, n, &e) == QPK_OK, "%s", e.msg);
    if (st) {
        CHECK(qpk_st_n_tensors(st) == 3);
        const qpk_st_tensor *x = qpk_st_find(st, "x"), *em = qpk_st_find(st, "e");
        CHECK(x && x->dtype == QPK_ST_BF16 && x->numel == 4 && x->nbytes == 8 && x->ndim == 2);
        CHECK(em && em->numel == 0 && em->nbytes == 0);
        CHECK(qpk_st_find(st, "z") == NULL);
        qpk_st_close(st);
    }
    free(b);
}

/* ------------------------------------------------------------ config.json */

#define BASE_CFG "\"model_type\":\"qwen2\",\"vocab_size\":64,\"hidden_size\":32,\"intermediate_size\":48,\"num_hidden_layers\":2,\"num_attention_heads\":4"
/* The other architectures, each key at its transformers default unless a case sets it (a key given twice is refused). */
#define SHAPE_CFG "\"vocab_size\":64,\"hidden_size\":32,\"intermediate_size\":48,\"num_hidden_layers\":2,\"num_attention_heads\":4"
#define MOE_CFG "\"model_type\":\"qwen2_moe\"," SHAPE_CFG
#define Q3_CFG "\"model_type\":\"qwen3\"," SHAPE_CFG
#define Q3MOE_CFG "\"model_type\":\"qwen3_moe\"," SHAPE_CFG
#define NOT_ROPE "is not supported: qpk computes plain RoPE and \"yarn\" (Qwen2.5's long-context setting)"
#define FAMILY "is not supported: qpk converts the Qwen family's \"qwen2\" (Qwen1.5, Qwen2, Qwen2.5), \"qwen2_moe\", " \
               "\"qwen3\" and \"qwen3_moe\""

static void test_config(void)
{
    qpk_config c;
    qpk_err e = {0};
    const char *ok = "{" BASE_CFG "}";
    CHECKF(qpk_config_parse(&c, ok, strlen(ok), &e) == QPK_OK, "%s", e.msg);
    /* Old configs without num_key_value_heads mean MHA; other defaults are Qwen2Config's. */
    CHECK(c.n_kv_heads == 4 && c.head_dim == 8 && c.rope_theta == 10000.0 && c.rms_norm_eps == 1e-6);
    CHECK(!c.tie_word_embeddings && c.bos_token_id == -1 && c.n_eos == 0 && !strcmp(c.hidden_act, "silu"));
    const char *gqa = "{" BASE_CFG ",\"num_key_value_heads\":2,\"eos_token_id\":[5,7],\"rope_theta\":1e6}";
    CHECK(qpk_config_parse(&c, gqa, strlen(gqa), &e) == QPK_OK && c.n_kv_heads == 2 && c.n_eos == 2 &&
          c.eos_token_ids[1] == 7 && c.rope_theta == 1e6);
    /* The normalized JSON parses back to the same description. */
    char *j = qpk_config_to_json(&c);
    qpk_config c2;
    CHECK(qpk_config_parse(&c2, j, strlen(j), &e) == QPK_OK && !memcmp(&c, &c2, sizeof c));
    free(j);
    static const struct {
        const char *json;
        qpk_status want;
        const char *msg;
    } bad[] = {
        {"{\"model_type\":\"llama\",\"vocab_size\":4}", QPK_E_UNSUPPORTED, "model_type \"llama\" is not supported"},
        {"{\"vocab_size\":4}", QPK_E_CORRUPT, "missing 'model_type'"},
        {"{\"model_type\":\"qwen2\",\"vocab_size\":64}", QPK_E_CORRUPT, "missing required key 'hidden_size'"},
        {"{" BASE_CFG ",\"num_key_value_heads\":3}", QPK_E_CORRUPT, "not a multiple of num_key_value_heads"},
        {"{\"model_type\":\"qwen2\",\"vocab_size\":64,\"hidden_size\":30,\"intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":4}",
         QPK_E_CORRUPT, "not a multiple of num_attention_heads"},
        {"{" BASE_CFG ",\"hidden_act\":\"gelu\"}", QPK_E_UNSUPPORTED, "hidden_act \"gelu\""},
        {"{" BASE_CFG ",\"rope_scaling\":{\"type\":\"yarn\"}}", QPK_E_CORRUPT, "rope_scaling: yarn needs a numeric \"factor\""},
        {"{" BASE_CFG ",\"rope_theta\":0}", QPK_E_CORRUPT, "'rope_theta' must be a positive finite number"},
        {"{" BASE_CFG ",\"rms_norm_eps\":-1}", QPK_E_CORRUPT, "positive finite"},
        {"{" BASE_CFG ",\"tie_word_embeddings\":1}", QPK_E_CORRUPT, "not true or false"},
        {"{\"model_type\":\"qwen2\",\"vocab_size\":64,\"hidden_size\":32,\"intermediate_size\":48,\"num_hidden_layers\":2.5,\"num_attention_heads\":4}",
         QPK_E_CORRUPT, "'num_hidden_layers' = 2.5 is not an integer"},
        {"{" BASE_CFG ",\"eos_token_id\":64}", QPK_E_CORRUPT, "eos_token_id 64 >= vocab_size"},
        {"{" BASE_CFG ",\"hidden_size\":32}", QPK_E_CORRUPT, "key 'hidden_size' appears twice"},
        {"{" BASE_CFG ",\"bos_token_id\":70}", QPK_E_CORRUPT, "bos_token_id 70 >= vocab_size"},
        {"{" BASE_CFG ",\"head_dim\":15}", QPK_E_UNSUPPORTED, "head_dim 15 is odd; RoPE needs pairs"},
        {"{\"model_type\":\"qwen2\",\"vocab_size\":999999999,\"hidden_size\":32,\"intermediate_size\":48,\"num_hidden_layers\":2,\"num_attention_heads\":4}",
         QPK_E_CORRUPT, "'vocab_size' = 1e+09 is not an integer in [1, 16777216]"},
        {"{" BASE_CFG "} x", QPK_E_CORRUPT, "config.json: bytes after the JSON value"},
        {"{" BASE_CFG, QPK_E_CORRUPT, "config.json: expected ',' or '}'"},
        {"[1]", QPK_E_CORRUPT, "not an object"},
        {"{" BASE_CFG ",\"x\":{\"a\":1,\"a\":2}}", QPK_E_CORRUPT, "key 'a' appears twice"},
        {"{\"model_type\":\"qwen2\\u0000moe\",\"vocab_size\":64}", QPK_E_UNSUPPORTED, "\\u0000"},
        {"{" BASE_CFG ",\"use_sliding_window\":true,\"sliding_window\":0}", QPK_E_CORRUPT, "an empty window"},
        {"{" BASE_CFG ",\"torch_dtype\":\"bfloat16\\u0000\"}", QPK_E_UNSUPPORTED, "\\u0000"},
    };
    /* Issue 21: the family's other architectures, each message whole. */
    static const struct {
        const char *json;
        qpk_status want;
        const char *msg;
    } whole[] = {
        {"{" MOE_CFG ",\"num_experts\":8,\"num_experts_per_tok\":9}", QPK_E_CORRUPT,
         "num_experts_per_tok = 9 is not in [1, num_experts = 8]"},
        {"{" Q3MOE_CFG ",\"num_experts_per_tok\":0}", QPK_E_CORRUPT, "num_experts_per_tok = 0 is not in [1, num_experts = 128]"},
        {"{" MOE_CFG ",\"num_experts\":0}", QPK_E_CORRUPT, "num_experts is 0 in a mixture-of-experts model"},
        {"{" MOE_CFG ",\"num_experts\":2000}", QPK_E_CORRUPT, "'num_experts' = 2000 is not an integer in [0, 1024]"},
        {"{" MOE_CFG ",\"moe_intermediate_size\":0}", QPK_E_CORRUPT, "moe_intermediate_size must be positive"},
        {"{" MOE_CFG ",\"shared_expert_intermediate_size\":0}", QPK_E_CORRUPT,
         "shared_expert_intermediate_size must be positive (qwen2_moe's shared expert)"},
        {"{" Q3MOE_CFG ",\"shared_expert_intermediate_size\":5632}", QPK_E_UNSUPPORTED,
         "qwen3_moe has no shared expert (shared_expert_intermediate_size is 5632)"},
        {"{" MOE_CFG ",\"decoder_sparse_step\":0}", QPK_E_CORRUPT, "decoder_sparse_step must be at least 1"},
        {"{" MOE_CFG ",\"norm_topk_prob\":\"true\"}", QPK_E_CORRUPT, "'norm_topk_prob' is not true or false"},
        {"{" MOE_CFG ",\"mlp_only_layers\":[0,2]}", QPK_E_CORRUPT,
         "'mlp_only_layers' holds 2, not a layer index below num_hidden_layers = 2"},
        {"{" MOE_CFG ",\"mlp_only_layers\":[0.5]}", QPK_E_CORRUPT,
         "'mlp_only_layers' holds 0.5, not a layer index below num_hidden_layers = 2"},
        {"{" Q3MOE_CFG ",\"mlp_only_layers\":[-1]}", QPK_E_CORRUPT,
         "'mlp_only_layers' holds -1, not a layer index below num_hidden_layers = 2"},
        {"{" MOE_CFG ",\"mlp_only_layers\":[\"1\"]}", QPK_E_CORRUPT,
         "'mlp_only_layers' holds a non-number, not a layer index below num_hidden_layers = 2"},
        {"{" MOE_CFG ",\"mlp_only_layers\":1}", QPK_E_CORRUPT, "'mlp_only_layers' is not a list"},
        {"{" BASE_CFG ",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":0.5}}", QPK_E_CORRUPT,
         "rope_scaling: yarn factor 0.5 is not in [1, 1024] (a factor below 1 would shrink the context)"},
        {"{" BASE_CFG ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":\"4\"}}", QPK_E_CORRUPT,
         "rope_scaling: yarn needs a numeric \"factor\""},
        {"{" BASE_CFG ",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4,\"original_max_position_embeddings\":0}}",
         QPK_E_CORRUPT, "rope_scaling: 'original_max_position_embeddings' = 0 is not an integer in [1, 16777216]"},
        {"{" BASE_CFG ",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4,\"beta_fast\":-32}}", QPK_E_CORRUPT,
         "rope_scaling: 'beta_fast' must be a positive finite number"},
        {"{" BASE_CFG ",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4,\"attention_factor\":0}}", QPK_E_CORRUPT,
         "rope_scaling: 'attention_factor' must be a positive finite number"},
        {"{" BASE_CFG ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}", QPK_E_UNSUPPORTED,
         "rope_scaling type \"llama3\" " NOT_ROPE},
        {"{" BASE_CFG ",\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2}}", QPK_E_UNSUPPORTED,
         "rope_scaling type \"dynamic\" " NOT_ROPE},
        {"{" Q3_CFG ",\"rope_parameters\":{\"rope_type\":\"linear\",\"factor\":2,\"rope_theta\":1e6}}",
         QPK_E_UNSUPPORTED, "rope_parameters type \"linear\" " NOT_ROPE},
        {"{" BASE_CFG ",\"rope_scaling\":{\"factor\":4}}", QPK_E_CORRUPT,
         "'rope_scaling' has no \"type\" or \"rope_type\" string"},
        {"{" BASE_CFG ",\"rope_scaling\":[4]}", QPK_E_CORRUPT, "'rope_scaling' is not an object"},
        {"{" Q3_CFG ",\"head_dim\":7}", QPK_E_UNSUPPORTED, "head_dim 7 is odd; RoPE needs pairs"},
        {"{" Q3_CFG ",\"head_dim\":0}", QPK_E_CORRUPT, "'head_dim' = 0 is not an integer in [2, 131072]"},
        {"{" Q3_CFG ",\"attention_bias\":1}", QPK_E_CORRUPT, "'attention_bias' is not true or false"},
        {"{\"model_type\":\"qwen2_vl\"," SHAPE_CFG "}", QPK_E_UNSUPPORTED, "model_type \"qwen2_vl\" " FAMILY},
        {"{\"model_type\":\"Qwen3\"," SHAPE_CFG "}", QPK_E_UNSUPPORTED, "model_type \"Qwen3\" " FAMILY},
        {"{\"model_type\":3," SHAPE_CFG "}", QPK_E_CORRUPT, "'model_type' is not a string"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        qpk_status s = qpk_config_parse(&c, bad[i].json, strlen(bad[i].json), &e);
        CHECKF(s == bad[i].want && strstr(e.msg, bad[i].msg), "config %zu: status %d \"%s\" (want \"%s\")", i, s,
               e.msg, bad[i].msg);
        qpk_status s2 = qpk_config_parse(&c, bad[i].json, strlen(bad[i].json), NULL);
        CHECKF(s2 != QPK_OK && s2 == s, "config %zu with e == NULL: status %d (want %d)", i, s2, s);
    }
    /* What transformers' configs of each architecture default to (Qwen3MoeConfig has no head_dim of its own: hidden
     * / heads), and Qwen3-Coder's shared size of 0. */
    const char *moe = "{" MOE_CFG "}", *q3moe = "{" Q3MOE_CFG ",\"shared_expert_intermediate_size\":0}",
               *yarn = "{" BASE_CFG ",\"max_position_embeddings\":4096,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}}";
    CHECKF(qpk_config_parse(&c, moe, strlen(moe), &e) == QPK_OK, "%s", e.msg);
    CHECK(c.n_experts == 60 && c.n_experts_used == 4 && c.moe_intermediate_size == 1408 &&
          c.shared_expert_intermediate_size == 5632 && c.decoder_sparse_step == 1 && !c.norm_topk_prob && c.head_dim == 8);
    CHECKF(qpk_config_parse(&c, q3moe, strlen(q3moe), &e) == QPK_OK, "%s", e.msg);
    CHECK(c.n_experts == 128 && c.n_experts_used == 8 && c.moe_intermediate_size == 768 &&
          c.shared_expert_intermediate_size == 0 && c.head_dim == 8 && !c.attention_bias);
    CHECKF(qpk_config_parse(&c, yarn, strlen(yarn), &e) == QPK_OK, "%s", e.msg);
    CHECK(c.yarn.factor == 4 && c.yarn.original_max_position_embeddings == 4096 && c.yarn.beta_fast == 32 &&
          c.yarn.beta_slow == 1 && fabs(c.yarn.attention_factor - (0.1 * log(4.0) + 1)) < 1e-15);
    for (size_t i = 0; i < sizeof whole / sizeof *whole; i++) {
        qpk_status s = qpk_config_parse(&c, whole[i].json, strlen(whole[i].json), &e);
        CHECKF(s == whole[i].want && !strcmp(e.msg, whole[i].msg), "family config %zu: status %d \"%s\" (want %d \"%s\")",
               i, s, e.msg, whole[i].want, whole[i].msg);
        qpk_status s2 = qpk_config_parse(&c, whole[i].json, strlen(whole[i].json), NULL);
        CHECKF(s2 == s, "family config %zu with e == NULL: status %d (want %d)", i, s2, s);
    }
    const size_t n_bad = sizeof bad / sizeof *bad + sizeof whole / sizeof *whole;
    printf("%zu distinct malformed configs checked (%zu of the qwen2_moe, qwen3, qwen3_moe and yarn keys)\n", n_bad,
           sizeof whole / sizeof *whole);
    printf("%zu of them replayed with e == NULL\n", n_bad);
}

/* ------------------------------------------------------------ checkpoints */

static qpk_gen_spec tiny_spec(void)
{
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    sp.dtype = QPK_ST_F32;
    return sp;
}

static char *make_dir(const char *name)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", g_root, name);
    mkdir(path, 0755);
    return path;
}

/* Writes a model.safetensors with the tiny model's tensors, edited by `edit` (NULL: none). */
typedef struct st_edit {
    const char *drop;      /* leave this tensor out */
    const char *retype;    /* store this one as I8 */
    const char *reshape;   /* give this one an extra row */
    const char *extra;     /* add this unexpected tensor */
    bool lm_head;          /* add lm_head.weight */
    float lm_head_delta;   /* added to lm_head's first element */
} st_edit;

static void write_model(const char *dir, const qpk_config *c, const st_edit *ed)
{
    char header[65536] = "{", name[QPK_MAX_NAME];
    uint8_t *data = NULL;
    size_t len = 0, n = qpk_model_n_tensors(c);
    for (size_t i = 0; i <= n + 1; i++) {
        qpk_role role;
        int layer;
        int64_t d[2];
        if (i < n) {
            qpk_model_tensor_at(c, i, &role, &layer);
            qpk_tensor_name(name, sizeof name, role, layer);
        } else if (i == n && ed->lm_head) {
            role = QPK_ROLE_LM_HEAD, layer = -1;
            strcpy(name, "lm_head.weight");
        } else if (i == n + 1 && ed->extra) {
            role = QPK_ROLE_FINAL_NORM, layer = -1;
            strcpy(name, ed->extra);
        } else {
            continue;
        }
        if (ed->drop && !strcmp(name, ed->drop))
            continue;
        int nd = qpk_role_shape(c, role, d);
        if (ed->reshape && !strcmp(name, ed->reshape))
            d[0]++;
        bool i8 = ed->retype && !strcmp(name, ed->retype);
        size_t numel = (size_t)d[0] * (size_t)(nd == 2 ? d[1] : 1), bytes = numel * (i8 ? 1 : 4);
        data = realloc(data, len + bytes);
        for (size_t k = 0; k < numel && !i8; k++) {
            /* The embedding and lm_head share values so a tied head can be "the same". */
            float v = 0.01f * (float)((k * 7 + (role == QPK_ROLE_LM_HEAD ? 0 : i) * 13) % 97) - 0.48f;
            if (role == QPK_ROLE_LM_HEAD && k == 0)
                v += ed->lm_head_delta;
            memcpy(data + len + 4 * k, &v, 4);
        }
        if (i8)
            memset(data + len, 1, bytes);
        char shape[64];
        if (nd == 2)
            snprintf(shape, sizeof shape, "%lld,%lld", (long long)d[0], (long long)d[1]);
        else
            snprintf(shape, sizeof shape, "%lld", (long long)d[0]);
        snprintf(header + strlen(header), sizeof header - strlen(header),
                 "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],\"data_offsets\":[%zu,%zu]}", header[1] ? "," : "",
                 name, i8 ? "I8" : "F32", shape, len, len + bytes);
        len += bytes;
    }
    strcat(header, "}");
    size_t img_len;
    uint8_t *img = st_image(header, 0, &img_len);
    img = realloc(img, img_len + len);
    memcpy(img + img_len, data, len);
    write_file(dir, "model.safetensors", img, img_len + len);
    free(img);
    free(data);
}

/* config.json for c; model_type replaced when other_arch is set. */
static void write_config(const char *dir, const qpk_config *c, const char *other_arch)
{
    char *j = qpk_config_to_json(c), buf[4096];
    char *mt = strstr(j, "\"qwen2\"");
    if (other_arch)
        snprintf(buf, sizeof buf, "%.*s\"%s\"%s", (int)(mt - j), j, other_arch, mt + 7);
    else
        snprintf(buf, sizeof buf, "%s", j);
    write_text(dir, "config.json", buf);
    free(j);
}

typedef struct logbook {
    int warnings;
    char last[1024];
} logbook;

static void capture(void *ud, qpk_log_level lv, const char *msg)
{
    logbook *lb = ud;
    if (lv == QPK_LOG_WARN) {
        lb->warnings++;
        snprintf(lb->last, sizeof lb->last, "%s", msg);
    }
}

static size_t g_convert_null_e; /* failing conversions replayed with e == NULL */

/* Converts dir to dir/out.qpk and checks the outcome; a failure must leave no file. */
static void expect_convert(const char *dir, qpk_status want, const char *msg, logbook *lb)
{
    char out[4096];
    snprintf(out, sizeof out, "%s/out.qpk", dir);
    unlink(out);
    logbook local = {0};
    qpk_convert_opts o = {.dtype = -1, .cb = {.log = capture, .ud = lb ? lb : &local}};
    qpk_err e = {0};
    qpk_status s = tu_convert(dir, out, &o, &e);
    CHECKF(s == want && (want == QPK_OK || strstr(e.msg, msg)), "%s: status %d \"%s\" (want %d \"%s\")", dir, s,
           e.msg, want, msg);
    if (want != QPK_OK)
        CHECKF(!exists(out), "%s: output left behind", dir);
    if (want != QPK_OK) { /* the error contract: without an e, the same failure and no output */
        qpk_status s2 = tu_convert(dir, out, &o, NULL);
        CHECKF(s2 != QPK_OK && s2 == s && !exists(out), "%s with e == NULL: status %d (want %d)", dir, s2, s);
        g_convert_null_e++;
    }
    /* Nothing else either: the folder holds only what the test put there. */
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d));)
        CHECKF(!strstr(de->d_name, ".tmp"), "temporary '%s' left in %s", de->d_name, dir);
    if (d)
        closedir(d);
}

static void test_checkpoint_defects(void)
{
    const size_t null_e0 = g_convert_null_e;
    qpk_gen_spec sp = tiny_spec();
    const qpk_config *c = &sp.cfg;
    static const struct {
        const char *dir;
        st_edit ed;
        const char *cfg_extra;
        bool untie;
        qpk_status want;
        const char *msg;
    } cases[] = {
        {"missing-bias", {.drop = "model.layers.1.self_attn.k_proj.bias"}, NULL, false, QPK_E_MISMATCH,
         "missing tensor 'model.layers.1.self_attn.k_proj.bias'"},
        {"missing-norm", {.drop = "model.norm.weight"}, NULL, false, QPK_E_MISMATCH, "missing tensor 'model.norm.weight'"},
        {"missing-head", {.drop = "lm_head.weight"}, NULL, true, QPK_E_MISMATCH, "missing tensor 'lm_head.weight' (tie_word_embeddings is false)"},
        {"wrong-shape", {.reshape = "model.layers.0.self_attn.v_proj.weight"}, NULL, false, QPK_E_MISMATCH,
         "'model.layers.0.self_attn.v_proj.weight' has shape [33, 64]; config.json implies [32, 64]"},
        {"wrong-dtype", {.retype = "model.layers.0.mlp.up_proj.weight"}, NULL, false, QPK_E_UNSUPPORTED,
         "'model.layers.0.mlp.up_proj.weight' has dtype I8"},
        {"other-arch", {0}, "mistral", false, QPK_E_UNSUPPORTED, "model_type \"mistral\""},
        {"bad-head-shape", {.lm_head = true, .reshape = "lm_head.weight"}, NULL, false, QPK_E_MISMATCH,
         "'lm_head.weight' has shape"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *dir = make_dir(cases[i].dir);
        qpk_config cc = *c;
        cc.tie_word_embeddings = !cases[i].untie;
        write_model(dir, &cc, &cases[i].ed);
        write_config(dir, &cc, cases[i].cfg_extra);
        expect_convert(dir, cases[i].want, cases[i].msg, NULL);
    }
    char *dir = make_dir("no-config");
    expect_convert(dir, QPK_E_IO, "has no config.json", NULL);
    expect_convert("/nonexistent-qpk", QPK_E_IO, "cannot open", NULL);
    dir = make_dir("no-weights");
    write_config(dir, c, NULL);
    write_text(dir, "pytorch_model.bin", "x");
    expect_convert(dir, QPK_E_IO, "pytorch_model.bin is not supported", NULL);
    dir = make_dir("bad-config");
    write_text(dir, "config.json", "{\"model_type\": \"qwen2\",");
    expect_convert(dir, QPK_E_CORRUPT, "config.json: expected a string at byte 23", NULL);
    dir = make_dir("bad-safetensors");
    write_config(dir, c, NULL);
    write_file(dir, "model.safetensors", "\x02\0\0\0\0\0\0\0{]", 10);
    expect_convert(dir, QPK_E_CORRUPT, "model.safetensors: header: expected a string at byte 1", NULL);
    printf("%zu malformed checkpoints replayed with e == NULL\n", g_convert_null_e - null_e0);
}

/* ------------------------------------------------ the family's checkpoints */

/* One change to a generated folder's model.safetensors, written to another folder (each NULL: none). */
typedef struct st_recast {
    const char *drop; /* leave this tensor out */
    const char *bf16; /* store this one as BF16, the others staying F32 */
    const char *grow; /* give this one an extra row (a vector an extra element), of zeros */
    const char *add;  /* add a tensor of this name, made of `rows` copies of `like` stacked */
    const char *like;
    int64_t rows;
} st_recast;

static void recast_model(const char *from, const char *to, const st_recast *r)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", from);
    qpk_safetensors *st = NULL;
    qpk_err e = {0};
    CHECKF(qpk_st_open(&st, path, &e) == QPK_OK, "%s", e.msg);
    if (!st)
        return;
    size_t n = qpk_st_n_tensors(st), m = 0;
    qpk_st_entry *ts = calloc(n + 1, sizeof *ts);
    const qpk_st_tensor **src = calloc(n + 1, sizeof *src);
    for (size_t i = 0; i <= n; i++) {
        const qpk_st_tensor *t = i < n ? qpk_st_tensor_at(st, i) : r->add ? qpk_st_find(st, r->like) : NULL;
        if (!t || (i < n && r->drop && !strcmp(t->name, r->drop)))
            continue;
        qpk_st_entry *d = &ts[m];
        snprintf(d->name, sizeof d->name, "%s", i < n ? t->name : r->add);
        d->ndim = t->ndim;
        uint64_t numel = 1;
        for (int k = 0; k < t->ndim; k++)
            d->shape[k] = t->shape[k];
        d->shape[0] = i == n ? d->shape[0] * r->rows : d->shape[0] + (r->grow && !strcmp(t->name, r->grow));
        for (int k = 0; k < t->ndim; k++)
            numel *= (uint64_t)d->shape[k];
        d->dtype = i < n && r->bf16 && !strcmp(t->name, r->bf16) ? QPK_ST_BF16 : t->dtype;
        d->nbytes = numel * qpk_st_dtype_size(d->dtype);
        src[m++] = t;
    }
    qpk_st_set *set = NULL;
    CHECKF(qpk_st_set_create(&set, to, ts, m, &e) == QPK_OK, "%s", e.msg);
    for (size_t i = 0; set && i < m; i++) {
        const qpk_st_tensor *t = src[i];
        uint8_t *b = calloc(1, ts[i].nbytes ? ts[i].nbytes : 1);
        if (ts[i].dtype == t->dtype) /* a copy, tiled when stacking, a grown row left zero */
            for (uint64_t at = 0; at < ts[i].nbytes; at += t->nbytes)
                memcpy(b + at, t->data, ts[i].nbytes - at < t->nbytes ? ts[i].nbytes - at : t->nbytes);
        else /* F32 to BF16 by truncation: any value will do, the dtype is the point */
            for (uint64_t k = 0; k < t->numel; k++)
                memcpy(b + 2 * k, (const uint8_t *)t->data + 4 * k + 2, 2);
        CHECKF(qpk_st_set_write(set, b, ts[i].nbytes, &e) == QPK_OK, "%s", e.msg);
        free(b);
    }
    if (set)
        CHECKF(qpk_st_set_finish(set, &e) == QPK_OK, "%s", e.msg);
    free(ts), free(src);
    qpk_st_close(st);
}

/* A folder of the preset's model in F32, its config.json edited by `cfg` (NULL: none) and its weights by r. */
static char *family_case(const char *name, const char *preset, void (*cfg)(qpk_config *), const st_recast *r)
{
    char src[4096];
    snprintf(src, sizeof src, "%s/src-%s", g_root, preset);
    qpk_gen_spec sp;
    qpk_err e = {0};
    CHECK(qpk_gen_preset(preset, &sp));
    sp.dtype = QPK_ST_F32;
    if (access(src, F_OK) != 0)
        CHECKF(qpk_gen_write(&sp, src, NULL, &e) == QPK_OK, "%s", e.msg);
    char *dir = make_dir(name);
    recast_model(src, dir, r);
    if (cfg)
        cfg(&sp.cfg);
    sp.config_only = true;
    CHECKF(qpk_gen_write(&sp, dir, NULL, &e) == QPK_OK, "%s", e.msg);
    return dir;
}

static void head_dim_16(qpk_config *c) { c->head_dim = 16; }
static void with_biases(qpk_config *c) { c->attention_bias = true; }
static void all_sparse(qpk_config *c) { memset(c->mlp_only_layers, 0, sizeof c->mlp_only_layers); }
static void six_experts(qpk_config *c) { c->n_experts = 6; }

static void test_family_checkpoint_defects(void)
{
    const size_t null_e0 = g_convert_null_e;
    static const struct {
        const char *dir, *preset;
        void (*cfg)(qpk_config *);
        st_recast r;
        qpk_status want;
        const char *msg;
    } cases[] = {
        {"moe-expert-missing", "tiny-moe", NULL, {.drop = "model.layers.2.mlp.experts.5.up_proj.weight"}, QPK_E_MISMATCH,
         "missing tensor 'model.layers.2.mlp.experts.5.up_proj.weight' (num_experts is 8)"},
        {"moe-router-shape", "tiny-moe", NULL, {.grow = "model.layers.0.mlp.gate.weight"}, QPK_E_MISMATCH,
         "tensor 'model.layers.0.mlp.gate.weight' has shape [9, 64]; config.json implies [8, 64]"},
        {"moe-router-count", "tiny-moe", six_experts, {0}, QPK_E_MISMATCH,
         "tensor 'model.layers.0.mlp.gate.weight' has shape [8, 64]; config.json implies [6, 64]"},
        {"moe-expert-shape", "tiny-moe", NULL, {.grow = "model.layers.2.mlp.experts.7.down_proj.weight"}, QPK_E_MISMATCH,
         "tensor 'model.layers.2.mlp.experts.7.down_proj.weight' has shape [65, 32]; config.json implies [64, 32]"},
        {"moe-expert-dtype", "tiny-moe", NULL, {.bf16 = "model.layers.0.mlp.experts.3.down_proj.weight"},
         QPK_E_UNSUPPORTED,
         "tensor 'model.layers.0.mlp.experts.3.down_proj.weight' is BF16 while expert 0 is F32: one layer's experts "
         "share a dtype"},
        {"moe-stacked-twice", "tiny-moe", NULL,
         {.add = "model.layers.0.mlp.experts.gate_proj.weight", .like = "model.layers.0.mlp.experts.0.gate_proj.weight",
          .rows = 8},
         QPK_E_CORRUPT, "'model.layers.0.mlp.experts.gate_proj.weight' is stored both stacked and expert by expert"},
        {"moe-shared-gate-missing", "tiny-moe", NULL, {.drop = "model.layers.2.mlp.shared_expert_gate.weight"},
         QPK_E_MISMATCH, "missing tensor 'model.layers.2.mlp.shared_expert_gate.weight'"},
        {"moe-shared-gate-shape", "tiny-moe", NULL, {.grow = "model.layers.0.mlp.shared_expert_gate.weight"},
         QPK_E_MISMATCH, "tensor 'model.layers.0.mlp.shared_expert_gate.weight' has shape [2, 64]; config.json implies [1, 64]"},
        {"moe-dense-mlp-missing", "tiny-moe", NULL, {.drop = "model.layers.1.mlp.down_proj.weight"}, QPK_E_MISMATCH,
         "missing tensor 'model.layers.1.mlp.down_proj.weight'"},
        {"moe-dense-layer-said-sparse", "tiny-moe", all_sparse, {0}, QPK_E_MISMATCH,
         "missing tensor 'model.layers.1.mlp.experts.0.gate_proj.weight' (num_experts is 8)"},
        {"qwen3-q-norm-size", "tiny-qwen3", NULL, {.grow = "model.layers.1.self_attn.q_norm.weight"}, QPK_E_MISMATCH,
         "tensor 'model.layers.1.self_attn.q_norm.weight' has shape [33]; config.json implies [32]"},
        {"qwen3-k-norm-missing", "tiny-qwen3", NULL, {.drop = "model.layers.2.self_attn.k_norm.weight"}, QPK_E_MISMATCH,
         "missing tensor 'model.layers.2.self_attn.k_norm.weight'"},
        {"qwen3-head-dim", "tiny-qwen3", head_dim_16, {0}, QPK_E_MISMATCH,
         "tensor 'model.layers.0.self_attn.q_proj.weight' has shape [128, 64]; config.json implies [64, 64]"},
        {"qwen3-bias-said", "tiny-qwen3", with_biases, {0}, QPK_E_MISMATCH,
         "missing tensor 'model.layers.0.self_attn.q_proj.bias'"},
        {"qwen3-moe-router-missing", "tiny-qwen3-moe", NULL, {.drop = "model.layers.1.mlp.gate.weight"},
         QPK_E_MISMATCH, "missing tensor 'model.layers.1.mlp.gate.weight'"},
        {"qwen3-moe-expert-missing", "tiny-qwen3-moe", NULL, {.drop = "model.layers.0.mlp.experts.0.gate_proj.weight"},
         QPK_E_MISMATCH, "missing tensor 'model.layers.0.mlp.experts.0.gate_proj.weight' (num_experts is 8)"},
    };
    char out[4096];
    qpk_err e = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *dir = family_case(cases[i].dir, cases[i].preset, cases[i].cfg, &cases[i].r);
        expect_convert(dir, cases[i].want, cases[i].msg, NULL);
        /* The message whole: nothing before or after it. */
        snprintf(out, sizeof out, "%s/out.qpk", dir);
        qpk_convert_opts o = {.dtype = -1};
        qpk_status s = tu_convert(dir, out, &o, &e);
        CHECKF(s == cases[i].want && !strcmp(e.msg, cases[i].msg), "%s: \"%s\"", cases[i].dir, e.msg);
    }
    printf("%zu malformed checkpoints of the family's architectures, %zu replayed with e == NULL\n",
           sizeof cases / sizeof *cases, g_convert_null_e - null_e0);
    /* The recast itself changes nothing: untouched, each converts; an expert past num_experts is only a warning. */
    const char *presets[] = {"tiny-moe", "tiny-qwen3", "tiny-qwen3-moe"};
    for (size_t i = 0; i < 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "untouched-%s", presets[i]);
        expect_convert(family_case(name, presets[i], NULL, &(st_recast){0}), QPK_OK, "", NULL);
    }
    logbook lb = {0};
    char *dir = family_case("moe-expert-8", "tiny-moe", NULL,
                            &(st_recast){.add = "model.layers.0.mlp.experts.8.gate_proj.weight",
                                         .like = "model.layers.0.mlp.experts.0.gate_proj.weight", .rows = 1});
    expect_convert(dir, QPK_OK, "", &lb);
    CHECKF(lb.warnings == 1 && !strcmp(lb.last, "unexpected tensor 'model.layers.0.mlp.experts.8.gate_proj.weight' is "
                                                "not part of a qwen2_moe model: ignored"),
           "%d warnings, last \"%s\"", lb.warnings, lb.last);
}

/*
 * A yarn whose attention factor, derived from mscale and mscale_all_dim, is one that cJSON's 15 digits
 * read back one bit off: the .qpk's config (its metadata is printed by cJSON) is still the folder's, bit for bit.
 */
static void test_yarn_metadata_exact(void)
{
    const char *text = "{" BASE_CFG ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":40,\"mscale\":5.707,"
                       "\"mscale_all_dim\":0.707}}";
    qpk_config c;
    qpk_err e = {0};
    CHECKF(qpk_config_parse(&c, text, strlen(text), &e) == QPK_OK, "%s", e.msg);
    char *dir = make_dir("yarn-last-bit"), out[4096];
    write_model(dir, &c, &(st_edit){0});
    write_text(dir, "config.json", text);
    snprintf(out, sizeof out, "%s/out.qpk", dir);
    qpk_convert_opts o = {.dtype = -1};
    CHECKF(tu_convert(dir, out, &o, &e) == QPK_OK, "%s", e.msg);
    qpk_file *f = NULL;
    CHECKF(qpk_open(&f, out, NULL, &e) == QPK_OK, "%s", e.msg);
    CHECKF(f && !memcmp(qpk_file_config(f), &c, sizeof c), "attention factor %.17g in the .qpk, %.17g in the folder",
           f ? qpk_file_config(f)->yarn.attention_factor : 0, c.yarn.attention_factor);
    qpk_close(f);
}

static void test_warnings(void)
{
    qpk_gen_spec sp = tiny_spec();
    logbook lb = {0};
    char *dir = make_dir("extra");
    write_model(dir, &sp.cfg, &(st_edit){.extra = "model.layers.0.self_attn.rotary_emb.inv_freq"});
    write_config(dir, &sp.cfg, NULL);
    expect_convert(dir, QPK_OK, "", &lb);
    CHECK(lb.warnings == 1 && strstr(lb.last, "unexpected tensor 'model.layers.0.self_attn.rotary_emb.inv_freq'"));

    memset(&lb, 0, sizeof lb);
    dir = make_dir("tied-same-head");
    write_model(dir, &sp.cfg, &(st_edit){.lm_head = true});
    write_config(dir, &sp.cfg, NULL);
    expect_convert(dir, QPK_OK, "", &lb);
    CHECKF(lb.warnings == 0, "%s", lb.last);

    memset(&lb, 0, sizeof lb);
    dir = make_dir("tied-other-head");
    write_model(dir, &sp.cfg, &(st_edit){.lm_head = true, .lm_head_delta = 0.5f});
    write_config(dir, &sp.cfg, NULL);
    expect_convert(dir, QPK_OK, "", &lb);
    CHECK(lb.warnings == 1 && strstr(lb.last, "lm_head.weight differs"));
    /* ... and the file holds the embedding once, no head. */
    char out[4096];
    snprintf(out, sizeof out, "%s/out.qpk", dir);
    qpk_file *f;
    qpk_err e = {0};
    CHECK(qpk_open(&f, out, NULL, &e) == QPK_OK && !qpk_find_tensor(f, "lm_head.weight") &&
          qpk_check_model(f, &e) == QPK_OK);
    qpk_close(f);
}

/* ------------------------------------------------------------ sharded */

static void write_index(const char *dir, const char *map)
{
    char buf[8192];
    snprintf(buf, sizeof buf, "{\"metadata\":{\"total_size\":1},\"weight_map\":{%s}}", map);
    write_text(dir, "model.safetensors.index.json", buf);
}

static void test_shards(void)
{
    qpk_gen_spec sp = tiny_spec();
    sp.n_shards = 3;
    char *dir = make_dir("sharded");
    qpk_err e = {0};
    CHECK(qpk_gen_write(&sp, dir, NULL, &e) == QPK_OK);
    expect_convert(dir, QPK_OK, "", NULL);

    /* Index defects on a toy of two shards: the checks run before any model check. */
    const size_t null_e0 = g_convert_null_e;
    const char *h1 = "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}";
    const char *h2[] = {
        "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
        "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}",
        "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}",
    };
    static const struct {
        const char *name, *map;
        int second; /* which h2 */
        qpk_status want;
        const char *msg;
    } cases[] = {
        {"idx-missing-shard", "\"a\":\"s1.safetensors\",\"b\":\"s3.safetensors\"", 0, QPK_E_IO, "s3.safetensors"},
        {"idx-wrong-shard", "\"a\":\"s2.safetensors\",\"b\":\"s2.safetensors\"", 0, QPK_E_MISMATCH,
         "maps 'a' to shard 's2.safetensors', which does not hold it"},
        {"idx-unlisted", "\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"", 2, QPK_E_MISMATCH,
         "tensor 'c' in shard 's2.safetensors' is not in the index"},
        {"idx-two-shards", "\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"", 1, QPK_E_MISMATCH,
         "tensor 'a' is in shard 's2.safetensors' and also in 's1.safetensors'"},
        {"idx-path", "\"a\":\"../s1.safetensors\"", 0, QPK_E_CORRUPT, "not a plain file name"},
        {"idx-twice", "\"a\":\"s1.safetensors\",\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"", 0, QPK_E_CORRUPT,
         "index.json: key 'a' appears twice in one object"},
        {"idx-lost-shard", "\"a\":\"model-00001-of-00003.safetensors\",\"b\":\"model-00003-of-00003.safetensors\"", 0,
         QPK_E_MISMATCH, "lists no tensor of model-00002-of-00003.safetensors"},
        {"idx-no-map", NULL, 0, QPK_E_CORRUPT, "no \"weight_map\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dir = make_dir(cases[i].name);
        write_config(dir, &sp.cfg, NULL);
        size_t n;
        uint8_t *b = st_image(h1, 2, &n);
        write_file(dir, "s1.safetensors", b, n);
        write_file(dir, "model-00001-of-00003.safetensors", b, n);
        free(b);
        b = st_image(h2[cases[i].second], cases[i].second ? 3 : 2, &n);
        write_file(dir, "s2.safetensors", b, n);
        write_file(dir, "model-00003-of-00003.safetensors", b, n);
        free(b);
        if (cases[i].map)
            write_index(dir, cases[i].map);
        else
            write_text(dir, "model.safetensors.index.json", "{\"metadata\":{}}");
        expect_convert(dir, cases[i].want, cases[i].msg, NULL);
    }
    printf("%zu malformed indexes replayed with e == NULL\n", g_convert_null_e - null_e0);
}

/* ------------------------------------------------------------ round trips */

static void test_round_trips(void)
{
    static const struct {
        const char *name;
        qpk_st_dtype dtype;
        bool untied, lm_head;
        int kv, shards;
    } shapes[] = {
        {"rt-bf16-tied", QPK_ST_BF16, false, false, 2, 1},
        {"rt-f16-untied-sharded", QPK_ST_F16, true, false, 4, 4},
        {"rt-f32-head-copy", QPK_ST_F32, false, true, 1, 2},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        qpk_gen_spec sp = tiny_spec();
        sp.dtype = shapes[i].dtype;
        sp.cfg.tie_word_embeddings = !shapes[i].untied;
        sp.lm_head_when_tied = shapes[i].lm_head;
        sp.cfg.n_kv_heads = shapes[i].kv;
        sp.n_shards = shapes[i].shards;
        char *dir = make_dir(shapes[i].name);
        qpk_err e = {0};
        CHECKF(qpk_gen_write(&sp, dir, NULL, &e) == QPK_OK, "%s", e.msg);
        int dtypes[] = {-1, QPK_TYPE_F32, QPK_TYPE_F16, QPK_TYPE_BF16};
        for (size_t k = 0; k < 4; k++) {
            char out[4096];
            snprintf(out, sizeof out, "%s/out-%zu.qpk", dir, k);
            qpk_convert_opts o = {.dtype = dtypes[k], .n_threads = 1 + (int)k % 2};
            CHECKF(tu_convert(dir, out, &o, &e) == QPK_OK, "%s", e.msg);
            CHECK(check_against_source(dir, out, dtypes[k]));
        }
    }
}

static void test_values_refused(void)
{
    qpk_gen_spec sp = tiny_spec();
    char *dir = make_dir("values");
    qpk_err e = {0};
    qpk_gen_write(&sp, dir, NULL, &e);
    /* Poke a value too large for f16 into the first weight of the F32 file. */
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "r+b");
    uint64_t hl = 0;
    fread(&hl, 8, 1, f);
    fseek(f, (long)(8 + hl + 8), SEEK_SET);
    float big = 1e5f;
    fwrite(&big, 4, 1, f);
    fclose(f);
    char out[4096];
    snprintf(out, sizeof out, "%s/out.qpk", dir);
    qpk_convert_opts o = {.dtype = QPK_TYPE_F16};
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_VALUE, e, "element 2 (100000) is too large for f16");
    CHECK(!exists(out));
    o.dtype = QPK_TYPE_BF16; /* bf16 holds it */
    CHECK(tu_convert(dir, out, &o, &e) == QPK_OK);
}

static bool cancel_now(void *ud)
{
    (void)ud;
    return true;
}

static void test_cancel_and_links(void)
{
    qpk_gen_spec sp = tiny_spec();
    char *dir = make_dir("cancel");
    qpk_err e = {0};
    qpk_gen_write(&sp, dir, NULL, &e);
    write_text(dir, "real-tokenizer.json", "{\"model\":{}}");
    write_text(dir, "tokenizer.json", "real-tokenizer.json\n"); /* a git symlink checked out as a file */
    char out[4096];
    snprintf(out, sizeof out, "%s/out.qpk", dir);
    qpk_convert_opts o = {.dtype = -1, .cb = {.cancel = cancel_now}};
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_CANCELLED, e, "cancelled");
    CHECK(!exists(out));
    o.cb.cancel = NULL;
    CHECK(tu_convert(dir, out, &o, &e) == QPK_OK);
    qpk_file *f;
    char buf[64];
    size_t len;
    CHECK(qpk_open(&f, out, NULL, &e) == QPK_OK &&
          qpk_blob_read(f, "tokenizer.json", buf, sizeof buf, &len, &e) == QPK_OK && len == 12 &&
          !memcmp(buf, "{\"model\":{}}", 12));
    qpk_close(f);
    /* Same input, same options, any thread count: the same bytes. */
    char out2[4096];
    snprintf(out2, sizeof out2, "%s/out2.qpk", dir);
    o.n_threads = 2;
    CHECK(tu_convert(dir, out2, &o, &e) == QPK_OK);
    FILE *a = fopen(out, "rb"), *b = fopen(out2, "rb");
    int ca, cb, same = 1;
    do {
        ca = fgetc(a), cb = fgetc(b);
        same &= ca == cb;
    } while (ca != EOF && cb != EOF);
    fclose(a), fclose(b);
    CHECK(same);
}

/* ------------------------------------------------------------ quantization */

static void test_rules(void)
{
    qpk_quant_rule r;
    qpk_err e = {0};
    CHECK(qpk_quant_rule_parse("down_proj=int8", &r, &e) == QPK_OK && !strcmp(r.pattern, "down_proj") &&
          r.type == QPK_TYPE_INT8 && r.group == 0);
    CHECK(qpk_quant_rule_parse("layers.1*.mlp.*=int4/g64", &r, &e) == QPK_OK && r.group == 64);
    CHECK(qpk_quant_rule_parse("lm_head=int4s/row", &r, &e) == QPK_OK && r.group == QPK_GROUP_ROW);
    CHECK(qpk_quant_rule_parse("lm_head=F16", &r, &e) == QPK_OK && r.type == QPK_TYPE_F16);
    CHECK_ERR(qpk_quant_rule_parse("down_proj", &r, &e), QPK_E_INVALID_ARG, e, "expected PATTERN=TYPE");
    CHECK_ERR(qpk_quant_rule_parse("=int8", &r, &e), QPK_E_INVALID_ARG, e, "expected PATTERN=TYPE");
    CHECK_ERR(qpk_quant_rule_parse("x=q5", &r, &e), QPK_E_INVALID_ARG, e, "unknown type 'q5'");
    CHECK_ERR(qpk_quant_rule_parse("x=int8/g48", &r, &e), QPK_E_INVALID_ARG, e, "group must be");
    CHECK_ERR(qpk_quant_rule_parse("x=f16/g32", &r, &e), QPK_E_INVALID_ARG, e, "only quantized types");
}

static bool contains(const char *hay, size_t n, const char *needle)
{
    return memmem(hay, n, needle, strlen(needle)) != NULL;
}

static bool files_equal(const char *a, const char *b)
{
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    bool same = x && y && na == nb && !memcmp(x, y, na);
    free(x), free(y);
    return same;
}

static void test_quantized(void)
{
    qpk_gen_spec sp = tiny_spec(); /* hidden 64, intermediate 160: groups of 32 divide both */
    sp.dtype = QPK_ST_BF16;
    char *dir = make_dir("quant"), out[4096], out2[4096];
    qpk_err e = {0};
    qpk_gen_write(&sp, dir, NULL, &e);
    snprintf(out, sizeof out, "%s/q.qpk", dir);
    snprintf(out2, sizeof out2, "%s/q2.qpk", dir);
    qpk_quant_rule rules[2];
    qpk_quant_rule_parse("down_proj=int8", &rules[0], &e);
    qpk_quant_rule_parse("embed_tokens=f16", &rules[1], &e);
    qpk_convert_opts o = {.dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .rules = rules, .n_rules = 2, .n_threads = 1};
    CHECKF(tu_convert(dir, out, &o, &e) == QPK_OK, "%s", e.msg);
    o.n_threads = 2; /* the bytes do not depend on the thread count */
    CHECKF(tu_convert(dir, out2, &o, &e) == QPK_OK && files_equal(out, out2), "%s", e.msg);
    qpk_file *f;
    qpk_checkpoint *ck;
    if (qpk_open(&f, out, NULL, &e) != QPK_OK || qpk_checkpoint_open(&ck, dir, NULL, &e) != QPK_OK) {
        CHECKF(false, "%s", e.msg);
        return;
    }
    const qpk_tensor *t;
    CHECK((t = qpk_find_tensor(f, "model.layers.1.self_attn.k_proj.weight")) && t->type == QPK_TYPE_INT4 && t->group_size == 32);
    CHECK((t = qpk_find_tensor(f, "model.layers.0.mlp.down_proj.weight")) && t->type == QPK_TYPE_INT8 && t->group_size == 32);
    CHECK((t = qpk_find_tensor(f, "model.embed_tokens.weight")) && t->type == QPK_TYPE_F16);
    CHECK((t = qpk_find_tensor(f, "model.layers.0.self_attn.q_proj.bias")) && t->type == QPK_TYPE_F32);
    CHECK((t = qpk_find_tensor(f, "model.norm.weight")) && t->type == QPK_TYPE_F32);
    /* Quantized bytes are the reference quantizer's, row by row, from the source in f32. */
    const qpk_st_tensor *src = qpk_checkpoint_tensor(ck, QPK_ROLE_UP, 1);
    t = qpk_find_tensor(f, "model.layers.1.mlp.up_proj.weight");
    float row[64];
    uint8_t ref[64];
    bool same = t != NULL;
    size_t rb = 2 * qpk_type_block_bytes(QPK_TYPE_INT4, 32);
    for (int64_t r = 0; same && r < src->shape[0]; r++) {
        qpk_row_to_f32(QPK_TYPE_BF16, (const uint8_t *)src->data + r * 128, row, 64);
        same &= qpk_quantize_row(QPK_TYPE_INT4, 32, row, 64, ref, &e) == QPK_OK &&
                !memcmp(ref, (const uint8_t *)t->data + (size_t)r * rb, rb);
    }
    CHECK(same);
    size_t mlen;
    const char *meta = qpk_metadata(f, &mlen);
    CHECK(contains(meta, mlen, "\"method\":\"rtn\",\"type\":\"int4\",\"group\":32"));
    CHECK(contains(meta, mlen, "\"rules\":[\"down_proj=int8\",\"embed_tokens=f16\"]"));
    qpk_close(f);
    qpk_checkpoint_close(ck);

    /* A type --quant does not take (int8z: imported GPTQ's), refused with the list of those it does. */
    unlink(out);
    o.quant = QPK_TYPE_INT8Z;
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_INVALID_ARG, e,
              "int8z is not a type qpk quantizes to: int8, int4, int4s, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, mlx4, mlx8, mlx4_f16, mlx8_f16, iq4_nl or iq4_xs");
    CHECK(!exists(out));
    o.quant = QPK_TYPE_INT4;

    /* Groups that do not divide a row: refused, naming the tensor; nothing written. */
    o.n_rules = 0, o.group = 128;
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_INVALID_ARG, e,
              "tensor 'model.embed_tokens.weight': rows of 64 are not a whole number of groups of 128");
    CHECK(!exists(out));
    o.group = QPK_GROUP_ROW; /* per row always divides */
    CHECKF(tu_convert(dir, out, &o, &e) == QPK_OK, "%s", e.msg);

    /* A NaN weight: refused, naming the tensor, the row and the weight. */
    char *bad = make_dir("quant-nan");
    qpk_gen_spec sp32 = tiny_spec();
    qpk_gen_write(&sp32, bad, NULL, &e);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", bad);
    size_t n;
    char *img = slurp(path, &n);
    const qpk_safetensors *probe = NULL;
    qpk_safetensors *st;
    if (qpk_st_open_memory(&st, img, n, &e) == QPK_OK) {
        probe = st;
        const qpk_st_tensor *gate = qpk_st_find(probe, "model.layers.1.mlp.gate_proj.weight");
        float nan = NAN;
        memcpy((char *)gate->data + (3 * 64 + 5) * 4, &nan, 4); /* row 3, weight 5 */
        qpk_st_close(st);
        write_file(bad, "model.safetensors", img, n);
    }
    free(img);
    snprintf(out, sizeof out, "%s/q.qpk", bad);
    o.group = 32;
    CHECK_ERR(tu_convert(bad, out, &o, &e), QPK_E_VALUE, e,
              "tensor 'model.layers.1.mlp.gate_proj.weight' row 3: weights 0..31: weight 5 of a group is nan");
    CHECK(!exists(out));
}

/* ------------------------------------------------------ hostile inputs */

static void test_nonfinite_weights(void)
{
    qpk_gen_spec sp = tiny_spec();
    char *dir = make_dir("nan");
    qpk_err e = {0};
    qpk_gen_write(&sp, dir, NULL, &e);
    /* A NaN as the third element of the first tensor in the file (the embedding), stored as is. */
    char path[4096], out[4096], out2[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "r+b");
    uint64_t hl = 0;
    CHECK(fread(&hl, 8, 1, f) == 1);
    fseek(f, (long)(8 + hl + 8), SEEK_SET);
    float nan = NAN;
    fwrite(&nan, 4, 1, f);
    fclose(f);
    snprintf(out, sizeof out, "%s/out.qpk", dir);
    snprintf(out2, sizeof out2, "%s/out2.qpk", dir);
    qpk_convert_opts o = {.dtype = -1};
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_VALUE, e,
              "tensor 'model.embed_tokens.weight': element 2 (row 0, column 2) is nan: non-finite weights are refused");
    CHECK(!exists(out));
    o.dtype = QPK_TYPE_F16;
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_VALUE, e, "element 2 (row 0, column 2) is nan");
    o.quant = QPK_TYPE_INT8, o.group = 32, o.dtype = -1; /* quantized: never, allowed or not */
    o.allow_nonfinite = true;
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_VALUE, e, "weight 2 of a group is nan");
    /* Allowed: kept as it is, in f32 byte for byte, in f16 as an f16 NaN. */
    o.quant = 0;
    CHECKF(tu_convert(dir, out, &o, &e) == QPK_OK, "%s", e.msg);
    o.dtype = QPK_TYPE_F16;
    CHECKF(tu_convert(dir, out2, &o, &e) == QPK_OK, "%s", e.msg);
    qpk_file *a = NULL, *b = NULL;
    CHECK(qpk_open(&a, out, NULL, &e) == QPK_OK && qpk_open(&b, out2, NULL, &e) == QPK_OK);
    if (a && b) {
        const qpk_tensor *ta = qpk_find_tensor(a, "model.embed_tokens.weight"), *tb = qpk_find_tensor(b, "model.embed_tokens.weight");
        float x;
        uint16_t h;
        memcpy(&x, (const uint8_t *)ta->data + 8, 4), memcpy(&h, (const uint8_t *)tb->data + 4, 2);
        CHECK(isnan(x) && (h & 0x7c00) == 0x7c00 && (h & 0x3ff));
    }
    qpk_close(a), qpk_close(b);
}

static void test_outputs_and_inputs(void)
{
    qpk_gen_spec sp = tiny_spec();
    char *dir = make_dir("outputs");
    qpk_err e = {0};
    qpk_gen_write(&sp, dir, NULL, &e);
    char out[4096], before[4096];
    qpk_convert_opts o = {.dtype = -1};
    snprintf(before, sizeof before, "%s/model.safetensors", dir);
    struct stat sb0, sb1;
    stat(before, &sb0);
    /* -o naming an input: refused by identity, whatever the name (a hard link here). */
    snprintf(out, sizeof out, "%s/model.safetensors", dir);
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_INVALID_ARG, e, "is the input");
    snprintf(out, sizeof out, "%s/weights-link", dir);
    CHECK(link(before, out) == 0);
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_INVALID_ARG, e, "is the input");
    unlink(out);
    snprintf(out, sizeof out, "%s/config.json", dir);
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_INVALID_ARG, e, "is the input");
    stat(before, &sb1);
    CHECK(sb0.st_ino == sb1.st_ino && sb0.st_size == sb1.st_size);
    /* Nothing but a regular file is ever replaced: not a FIFO, not a folder. */
    snprintf(out, sizeof out, "%s/fifo.qpk", dir);
    CHECK(mkfifo(out, 0644) == 0);
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_IO, e, "exists and is a FIFO");
    snprintf(out, sizeof out, "%s/folder.qpk", dir);
    mkdir(out, 0755);
    CHECK_ERR(tu_convert(dir, out, &o, &e), QPK_E_IO, e, "exists and is a folder");
    /* A .qpk re-packed onto itself. */
    snprintf(out, sizeof out, "%s/a.qpk", dir);
    CHECK(tu_convert(dir, out, &o, &e) == QPK_OK);
    CHECK_ERR(tu_export_gguf(out, out, NULL, &e), QPK_E_INVALID_ARG, e, "is the input");
    CHECK(qpk_is_qpk_file(out));
}

static void test_odd_files(void)
{
    qpk_gen_spec sp = tiny_spec();
    qpk_err e = {0};
    char path[4096];
    /* model.safetensors that cannot be read: each says why, and none blocks. */
    struct {
        const char *dir, *msg;
        int kind; /* 0 a FIFO, 1 a folder, 2 a symlink loop, 3 a dangling link, 4 a character device */
    } odd[] = {
        {"st-fifo", "is a FIFO, not a regular file", 0},
        {"st-folder", "is a folder, not a regular file", 1},
        {"st-loop", "Too many levels of symbolic links", 2},
        {"st-dangling", "No such file or directory", 3},
        {"st-device", "is a character device, not a regular file", 4},
    };
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        char *dir = make_dir(odd[i].dir);
        qpk_gen_write(&sp, dir, NULL, &e);
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        unlink(path);
        switch (odd[i].kind) {
        case 0: mkfifo(path, 0644); break;
        case 1: mkdir(path, 0755); break;
        case 2: symlink("model.safetensors", path); break;
        case 3: symlink("nowhere.safetensors", path); break;
        default: symlink("/dev/zero", path); break;
        }
        expect_convert(dir, QPK_E_IO, odd[i].msg, NULL);
    }
    /* config.json a folder, and a FIFO. */
    char *dir = make_dir("cfg-folder");
    qpk_gen_write(&sp, dir, NULL, &e);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path), mkdir(path, 0755);
    expect_convert(dir, QPK_E_IO, "config.json' is a folder, not a regular file", NULL);
    dir = make_dir("cfg-fifo");
    qpk_gen_write(&sp, dir, NULL, &e);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path), mkfifo(path, 0644);
    expect_convert(dir, QPK_E_IO, "config.json' is a FIFO", NULL);
    /* Both a single file and an index: transformers' precedence (the single file), with a warning. */
    char both[4096];
    snprintf(both, sizeof both, "%s", make_dir("both")); /* make_dir's buffer is reused */
    dir = both;
    sp.n_shards = 2;
    qpk_gen_write(&sp, dir, NULL, &e);
    char single[4096];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    sp.n_shards = 1, sp.seed = 99;
    char other[4096], out[4096], ref[4096];
    snprintf(other, sizeof other, "%s", make_dir("both-single"));
    qpk_gen_write(&sp, other, NULL, &e);
    snprintf(ref, sizeof ref, "%s/ref.qpk", other);
    qpk_convert_opts o = {.dtype = -1};
    CHECK(tu_convert(other, ref, &o, &e) == QPK_OK); /* what the single file alone gives */
    snprintf(path, sizeof path, "%s/model.safetensors", other);
    CHECK(rename(path, single) == 0);
    logbook lb = {0};
    expect_convert(dir, QPK_OK, "", &lb);
    CHECK(strstr(lb.last, "model.safetensors is read, as transformers does"));
    snprintf(out, sizeof out, "%s/out.qpk", dir);
    qpk_file *a = NULL, *b = NULL;
    CHECK(qpk_open(&a, out, NULL, &e) == QPK_OK && qpk_open(&b, ref, NULL, &e) == QPK_OK);
    for (size_t i = 0; a && b && i < qpk_n_tensors(a); i++)
        CHECK(qpk_tensor_at(a, i)->xxh3 == qpk_tensor_at(b, i)->xxh3);
    qpk_close(a), qpk_close(b);
}

static void test_tokenizer_and_rules(void)
{
    const char *fix = getenv("QPK_FIXTURES");
    qpk_gen_spec sp = tiny_spec();
    qpk_err e = {0};
    char *dir = make_dir("big-tokenizer"), path[4096];
    qpk_gen_write(&sp, dir, NULL, &e);
    if (fix) { /* the real tokenizer (151,669 ids) beside a 512-row vocabulary */
        char src[4096];
        snprintf(src, sizeof src, "%s/qwen-tiny-a/tokenizer.json", fix);
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        CHECK(symlink(src, path) == 0);
        expect_convert(dir, QPK_E_MISMATCH, "the tokenizer has 151669 tokens, more than the vocabulary's 512 rows", NULL);
    }
    qpk_quant_rule r;
    CHECK_ERR(qpk_quant_rule_parse("layers.[0=f16", &r, &e), QPK_E_INVALID_ARG, e, "a '[' that no ']' closes");
    CHECK_ERR(qpk_quant_rule_parse("x[!=int8", &r, &e), QPK_E_INVALID_ARG, e, "no ']' closes");
    CHECK(qpk_quant_rule_parse("layers.[01].*=f16", &r, &e) == QPK_OK);
    CHECK(qpk_quant_rule_parse("a[]]b=f16", &r, &e) == QPK_OK && qpk_quant_rule_matches(&r, "a]b"));
    /* A rule that matches nothing does nothing: a warning says so. */
    dir = make_dir("unmatched");
    qpk_gen_write(&sp, dir, NULL, &e);
    qpk_quant_rule rules[2];
    qpk_quant_rule_parse("no_such_proj=int8", &rules[0], &e);
    qpk_quant_rule_parse("lm_head.weight=f16", &rules[1], &e);
    rules[1].implied = true;
    logbook lb = {0};
    snprintf(path, sizeof path, "%s/out.qpk", dir);
    qpk_convert_opts o = {.dtype = -1, .rules = rules, .n_rules = 2, .cb = {.log = capture, .ud = &lb}};
    CHECK(tu_convert(dir, path, &o, &e) == QPK_OK);
    CHECKF(lb.warnings == 1 && strstr(lb.last, "'no_such_proj' matches no tensor"), "%d: %s", lb.warnings, lb.last);
}

static void test_calibration_sizes(void)
{
    qpk_gen_spec sp = tiny_spec();
    qpk_err e = {0};
    char *dir = make_dir("calib-size"), path[4096];
    qpk_gen_write(&sp, dir, NULL, &e);
    snprintf(path, sizeof path, "%s/out.qpk", dir);
    int32_t tokens[256];
    for (int i = 0; i < 256; i++)
        tokens[i] = i % 100;
    logbook lb = {0};
    qpk_convert_opts o = {.dtype = -1, .quant = QPK_TYPE_INT4, .group = 32, .method = QPK_METHOD_GPTQ,
                          .calib = {.tokens = tokens, .n_tokens = 256, .samples = 1000000, .seq_len = 128},
                          .cb = {.log = capture, .ud = &lb}};
    CHECK_ERR(tu_convert(dir, path, &o, &e), QPK_E_LIMIT, e, "holds only 129 different ones");
    CHECK(!exists(path));
    o.calib.samples = 4, o.calib.seq_len = 64;
    CHECKF(tu_convert(dir, path, &o, &e) == QPK_OK, "%s", e.msg);
}

int main(void)
{
    if (!mkdtemp(g_root))
        return 2;
    test_nonfinite_weights();
    test_outputs_and_inputs();
    test_odd_files();
    test_tokenizer_and_rules();
    test_calibration_sizes();
    test_rules();
    test_quantized();
    test_safetensors_defects();
    test_safetensors_valid();
    test_config();
    test_checkpoint_defects();
    test_family_checkpoint_defects();
    test_yarn_metadata_exact();
    test_warnings();
    test_shards();
    test_round_trips();
    test_values_refused();
    test_cancel_and_links();
    printf("%zu failing conversions in all replayed with e == NULL\n", g_convert_null_e);
    if (!th_failed) /* keep the evidence when something failed */
        rm_rf(g_root);
    return th_summary("test_convert");
}
