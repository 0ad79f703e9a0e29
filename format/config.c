/*
 * The Qwen2 model description: config.json parsing (the only parser of it in qpk),
 * its normalized JSON form stored in .qpk metadata, and the tensor naming scheme.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk_json.h"

/* ---------------------------------------------------------------- JSON fields */

/* The integer hyperparameters and their limits, the one home of both (config.json and GGUF readers). */
static const struct int_field {
    const char *key; /* config.json's name */
    size_t at;       /* offset in qpk_config */
    int64_t lo, hi;
} INT_FIELDS[] = {
#define F(key, field, lo, hi) {key, offsetof(qpk_config, field), lo, hi}
    F("vocab_size", vocab_size, 1, QPK_MAX_VOCAB),
    F("hidden_size", hidden_size, 1, QPK_MAX_HIDDEN),
    F("intermediate_size", intermediate_size, 1, 8 * QPK_MAX_HIDDEN),
    F("num_hidden_layers", n_layers, 1, QPK_MAX_LAYERS),
    F("num_attention_heads", n_heads, 1, QPK_MAX_HEADS),
    F("num_key_value_heads", n_kv_heads, 1, QPK_MAX_HEADS),
    F("max_position_embeddings", max_position_embeddings, 1, 1LL << 24),
    F("sliding_window", sliding_window, 0, 1LL << 24),
    F("max_window_layers", max_window_layers, 0, QPK_MAX_LAYERS * 64LL),
    F("bos_token_id", bos_token_id, -1, QPK_MAX_VOCAB - 1),
    F("head_dim", head_dim, 2, QPK_MAX_HIDDEN),
    F("num_experts", n_experts, 0, QPK_MAX_EXPERTS),
    F("num_experts_per_tok", n_experts_used, 0, QPK_MAX_EXPERTS),
    F("moe_intermediate_size", moe_intermediate_size, 0, 8 * QPK_MAX_HIDDEN),
    F("shared_expert_intermediate_size", shared_expert_intermediate_size, 0, 8 * QPK_MAX_HIDDEN),
    F("decoder_sparse_step", decoder_sparse_step, 0, QPK_MAX_LAYERS),
#undef F
};

static const struct int_field *int_field(const char *key)
{
    for (size_t i = 0; i < sizeof INT_FIELDS / sizeof *INT_FIELDS; i++)
        if (!strcmp(INT_FIELDS[i].key, key))
            return &INT_FIELDS[i];
    return NULL;
}

/* A JSON number that is an integer in [lo, hi]; absent -> *out = dflt unless required. */
static qpk_status get_int(const cJSON *obj, const char *key, bool required, int64_t dflt,
                          int64_t lo, int64_t hi, int64_t *out, qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        if (required)
            return qpk_err_setf(e, QPK_E_CORRUPT, "missing required key '%s'", key);
        *out = dflt;
        return QPK_OK;
    }
    if (!cJSON_IsNumber(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' is not a number", key);
    double v = it->valuedouble;
    if (!(v == floor(v)) || v < (double)lo || v > (double)hi)
        return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' = %g is not an integer in [%lld, %lld]",
                            key, v, (long long)lo, (long long)hi);
    *out = (int64_t)v;
    return QPK_OK;
}

/* A field of INT_FIELDS from config.json, within its limits. */
static qpk_status get_field(const cJSON *obj, const char *key, bool required, int64_t dflt, qpk_config *c, qpk_err *e)
{
    const struct int_field *f = int_field(key);
    return get_int(obj, key, required, dflt, f->lo, f->hi, (int64_t *)((char *)c + f->at), e);
}

static qpk_status get_real(const cJSON *obj, const char *key, double dflt, double *out, qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        *out = dflt;
        return QPK_OK;
    }
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble <= 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' must be a positive finite number", key);
    *out = it->valuedouble;
    return QPK_OK;
}

static qpk_status get_bool(const cJSON *obj, const char *key, bool dflt, bool *out, qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        *out = dflt;
        return QPK_OK;
    }
    if (!cJSON_IsBool(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' is not true or false", key);
    *out = cJSON_IsTrue(it);
    return QPK_OK;
}

static qpk_status get_str(const cJSON *obj, const char *key, const char *dflt, char *out, size_t cap,
                          qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    const char *s = dflt;
    if (it && !cJSON_IsNull(it)) {
        if (!cJSON_IsString(it))
            return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' is not a string", key);
        s = it->valuestring;
    }
    if (strlen(s) >= cap)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "'%s' value too long", key);
    memcpy(out, s, strlen(s) + 1);
    return QPK_OK;
}

/* ------------------------------------------------------------------- parsing */

static qpk_status parse_eos(const cJSON *root, qpk_config *c, qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    c->n_eos = 0;
    if (!it || cJSON_IsNull(it))
        return QPK_OK;
    if (cJSON_IsNumber(it)) {
        int64_t v;
        QPK_TRY(get_int(root, "eos_token_id", true, 0, 0, QPK_MAX_VOCAB - 1, &v, e));
        c->eos_token_ids[c->n_eos++] = v;
        return QPK_OK;
    }
    if (!cJSON_IsArray(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'eos_token_id' is neither a number nor a list");
    const cJSON *x;
    cJSON_ArrayForEach(x, it)
    {
        double v = cJSON_IsNumber(x) ? x->valuedouble : -1;
        if (v != floor(v) || v < 0 || v >= (double)QPK_MAX_VOCAB)
            return qpk_err_setf(e, QPK_E_CORRUPT, "'eos_token_id' holds a bad id");
        if (c->n_eos == (int)(sizeof c->eos_token_ids / sizeof c->eos_token_ids[0]))
            return qpk_err_setf(e, QPK_E_LIMIT, "more than 8 eos_token_id values");
        c->eos_token_ids[c->n_eos++] = (int64_t)v;
    }
    return QPK_OK;
}

static const char *const ARCH_NAME[QPK_ARCH_COUNT_] = {
    [QPK_ARCH_QWEN2] = "qwen2", [QPK_ARCH_QWEN2_MOE] = "qwen2_moe",
    [QPK_ARCH_QWEN3] = "qwen3", [QPK_ARCH_QWEN3_MOE] = "qwen3_moe",
};

const char *qpk_arch_name(qpk_arch a) { return (unsigned)a < QPK_ARCH_COUNT_ ? ARCH_NAME[a] : "?"; }

const char *qpk_arch_class(qpk_arch a)
{
    static const char *const CLASS[QPK_ARCH_COUNT_] = {
        [QPK_ARCH_QWEN2] = "Qwen2ForCausalLM", [QPK_ARCH_QWEN2_MOE] = "Qwen2MoeForCausalLM",
        [QPK_ARCH_QWEN3] = "Qwen3ForCausalLM", [QPK_ARCH_QWEN3_MOE] = "Qwen3MoeForCausalLM",
    };
    return (unsigned)a < QPK_ARCH_COUNT_ ? CLASS[a] : "?";
}

uint32_t qpk_config_min_version(const qpk_config *c)
{
    /* Version 2 described dense qwen2 with plain RoPE and head_dim = hidden / heads only: a
     * reader of it that ignored the new config keys would compute another model. */
    bool v2 = c->arch == QPK_ARCH_QWEN2 && c->yarn.factor == 0 && c->head_dim * c->n_heads == c->hidden_size;
    return v2 ? 1 : 3;
}

bool qpk_config_is_moe(const qpk_config *c) { return c->arch == QPK_ARCH_QWEN2_MOE || c->arch == QPK_ARCH_QWEN3_MOE; }

static bool is_qwen3(const qpk_config *c) { return c->arch == QPK_ARCH_QWEN3 || c->arch == QPK_ARCH_QWEN3_MOE; }

bool qpk_layer_is_sparse(const qpk_config *c, int layer)
{
    if (!qpk_config_is_moe(c) || layer < 0 || layer >= c->n_layers)
        return false;
    if (c->mlp_only_layers[layer / 64] >> (layer % 64) & 1)
        return false;
    return c->decoder_sparse_step > 0 && (layer + 1) % c->decoder_sparse_step == 0;
}

static qpk_status parse_architecture(const cJSON *root, qpk_config *c, qpk_err *e)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!mt)
        return qpk_err_setf(e, QPK_E_CORRUPT, "missing 'model_type' (expected \"qwen2\", \"qwen2_moe\", \"qwen3\" or "
                            "\"qwen3_moe\")");
    if (!cJSON_IsString(mt))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'model_type' is not a string");
    for (int a = 0; a < QPK_ARCH_COUNT_; a++)
        if (!strcmp(mt->valuestring, ARCH_NAME[a])) {
            c->arch = (qpk_arch)a;
            return QPK_OK;
        }
    return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                        "model_type \"%.64s\" is not supported: qpk converts the Qwen family's \"qwen2\" "
                        "(Qwen1.5, Qwen2, Qwen2.5), \"qwen2_moe\", \"qwen3\" and \"qwen3_moe\"",
                        mt->valuestring);
}

/* transformers' get_mscale: YaRN's magnitude correction for a context stretched by `scale`. */
static double yarn_mscale(double scale, double mscale)
{
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* The attention factor transformers derives when rope_scaling does not give one. */
static double yarn_default_attention(const qpk_yarn *y)
{
    if (y->mscale > 0 && y->mscale_all_dim > 0)
        return yarn_mscale(y->factor, y->mscale) / yarn_mscale(y->factor, y->mscale_all_dim);
    return yarn_mscale(y->factor, 1);
}

/*
 * rope_scaling (transformers 4.x) or rope_parameters (5.x): absent, null, the "default"
 * rope type, or "yarn" with its parameters. Every other rope type changes the positions'
 * frequencies in a way qpk does not compute, so it is refused by name.
 */
static qpk_status parse_rope_scaling(const cJSON *root, qpk_config *c, qpk_err *e)
{
    const char *key = "rope_scaling";
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!rs || cJSON_IsNull(rs)) {
        key = "rope_parameters";
        if (!(rs = cJSON_GetObjectItemCaseSensitive(root, key)) || cJSON_IsNull(rs))
            return QPK_OK;
        const cJSON *theta = cJSON_GetObjectItemCaseSensitive(rs, "rope_theta");
        if (theta)
            QPK_TRY(get_real(rs, "rope_theta", 0, &c->rope_theta, e));
    }
    if (!cJSON_IsObject(rs))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' is not an object", key);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!type)
        type = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsString(type))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' has no \"type\" or \"rope_type\" string", key);
    if (!strcmp(type->valuestring, "default"))
        return QPK_OK;
    if (strcmp(type->valuestring, "yarn") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "%s type \"%.32s\" is not supported: qpk computes plain RoPE and \"yarn\" (Qwen2.5's "
                            "long-context setting)", key, type->valuestring);
    qpk_yarn *y = &c->yarn;
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(rs, "factor");
    if (!cJSON_IsNumber(f))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s: yarn needs a numeric \"factor\"", key);
    if (!isfinite(f->valuedouble) || f->valuedouble < 1 || f->valuedouble > 1024)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s: yarn factor %g is not in [1, 1024] (a factor below 1 would "
                            "shrink the context)", key, f->valuedouble);
    y->factor = f->valuedouble;
    /* The keys inside name their object: 'beta_fast' alone would not say where to look. */
    qpk_status s = QPK_OK;
    int64_t L;
    if ((s = get_int(rs, "original_max_position_embeddings", false, c->max_position_embeddings, 1, 1LL << 24, &L,
                     e)) != QPK_OK ||
        (s = get_real(rs, "beta_fast", 32, &y->beta_fast, e)) != QPK_OK ||
        (s = get_real(rs, "beta_slow", 1, &y->beta_slow, e)) != QPK_OK ||
        (cJSON_GetObjectItemCaseSensitive(rs, "mscale") && (s = get_real(rs, "mscale", 0, &y->mscale, e)) != QPK_OK) ||
        (cJSON_GetObjectItemCaseSensitive(rs, "mscale_all_dim") &&
         (s = get_real(rs, "mscale_all_dim", 0, &y->mscale_all_dim, e)) != QPK_OK))
        return qpk_err_prefix(e, s, "%s", key);
    y->original_max_position_embeddings = L;
    if (cJSON_GetObjectItemCaseSensitive(rs, "attention_factor") &&
        !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(rs, "attention_factor"))) {
        if ((s = get_real(rs, "attention_factor", 1, &y->attention_factor, e)) != QPK_OK)
            return qpk_err_prefix(e, s, "%s", key);
    } else {
        y->attention_factor = yarn_default_attention(y);
    }
    return QPK_OK;
}

/* mlp_only_layers: a list of distinct layer indices, each below num_hidden_layers. */
static qpk_status parse_mlp_only(const cJSON *root, qpk_config *c, qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, "mlp_only_layers"), *x;
    if (!it || cJSON_IsNull(it))
        return QPK_OK;
    if (!cJSON_IsArray(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'mlp_only_layers' is not a list");
    cJSON_ArrayForEach(x, it)
    {
        double v = cJSON_IsNumber(x) ? x->valuedouble : -1;
        if (v != floor(v) || v < 0 || v >= (double)c->n_layers) {
            char what[64] = "a non-number";
            if (cJSON_IsNumber(x))
                snprintf(what, sizeof what, "%g", x->valuedouble);
            return qpk_err_setf(e, QPK_E_CORRUPT, "'mlp_only_layers' holds %s, not a layer index below "
                                "num_hidden_layers = %lld", what, (long long)c->n_layers);
        }
        c->mlp_only_layers[(int)v / 64] |= 1ull << ((int)v % 64);
    }
    return QPK_OK;
}

/* The keys of each architecture beyond dense Qwen2's, with transformers' config defaults. */
static qpk_status parse_family(const cJSON *root, qpk_config *c, qpk_err *e)
{
    if (is_qwen3(c))
        QPK_TRY(get_bool(root, "attention_bias", false, &c->attention_bias, e));
    if (!qpk_config_is_moe(c))
        return QPK_OK;
    bool q2 = c->arch == QPK_ARCH_QWEN2_MOE;
    QPK_TRY(get_field(root, "num_experts", false, q2 ? 60 : 128, c, e));
    QPK_TRY(get_field(root, "num_experts_per_tok", false, q2 ? 4 : 8, c, e));
    QPK_TRY(get_field(root, "moe_intermediate_size", false, q2 ? 1408 : 768, c, e));
    /* Read for qwen3_moe too, which has no shared expert: 0 is what its configs may say (Qwen3-Coder's do), and
     * anything else describes weights its model would leave unused. */
    QPK_TRY(get_field(root, "shared_expert_intermediate_size", false, q2 ? 5632 : 0, c, e));
    QPK_TRY(get_field(root, "decoder_sparse_step", false, 1, c, e));
    QPK_TRY(get_bool(root, "norm_topk_prob", false, &c->norm_topk_prob, e));
    return parse_mlp_only(root, c, e);
}

/* The architecture's own rules, after the common ones. */
static qpk_status check_family(const qpk_config *c, qpk_err *e)
{
    if (c->yarn.factor != 0) {
        const qpk_yarn *y = &c->yarn;
        if (!(y->factor >= 1) || !isfinite(y->factor) || y->original_max_position_embeddings < 1 ||
            !(y->attention_factor > 0) || !isfinite(y->attention_factor) || !(y->beta_fast > 0) || !(y->beta_slow > 0) ||
            !isfinite(y->beta_fast) || !isfinite(y->beta_slow))
            return qpk_err_setf(e, QPK_E_CORRUPT, "rope_scaling: the yarn parameters are out of range");
    }
    if (!qpk_config_is_moe(c)) {
        if (c->n_experts || c->n_experts_used || c->moe_intermediate_size || c->shared_expert_intermediate_size)
            return qpk_err_setf(e, QPK_E_CORRUPT, "model_type \"%s\" has no experts", ARCH_NAME[c->arch]);
        return QPK_OK;
    }
    if (c->n_experts < 1)
        return qpk_err_setf(e, QPK_E_CORRUPT, "num_experts is 0 in a mixture-of-experts model");
    if (c->n_experts_used < 1 || c->n_experts_used > c->n_experts)
        return qpk_err_setf(e, QPK_E_CORRUPT, "num_experts_per_tok = %lld is not in [1, num_experts = %lld]",
                            (long long)c->n_experts_used, (long long)c->n_experts);
    if (c->moe_intermediate_size < 1)
        return qpk_err_setf(e, QPK_E_CORRUPT, "moe_intermediate_size must be positive");
    if (c->arch == QPK_ARCH_QWEN2_MOE && c->shared_expert_intermediate_size < 1)
        return qpk_err_setf(e, QPK_E_CORRUPT, "shared_expert_intermediate_size must be positive (qwen2_moe's shared "
                            "expert)");
    if (c->arch == QPK_ARCH_QWEN3_MOE && c->shared_expert_intermediate_size)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "qwen3_moe has no shared expert (shared_expert_intermediate_size "
                            "is %lld)", (long long)c->shared_expert_intermediate_size);
    if (c->decoder_sparse_step < 1)
        return qpk_err_setf(e, QPK_E_CORRUPT, "decoder_sparse_step must be at least 1");
    for (int l = 0; l < QPK_MAX_LAYERS; l++)
        if (l >= c->n_layers && (c->mlp_only_layers[l / 64] >> (l % 64) & 1))
            return qpk_err_setf(e, QPK_E_CORRUPT, "mlp_only_layers names layer %d of %lld", l, (long long)c->n_layers);
    /* Dense layers are sized by intermediate_size: it must be positive even when every layer is sparse. */
    return QPK_OK;
}

qpk_status qpk_config_check(qpk_config *c, qpk_err *e)
{
    for (size_t i = 0; i < sizeof INT_FIELDS / sizeof *INT_FIELDS; i++) {
        const struct int_field *f = &INT_FIELDS[i];
        int64_t v;
        memcpy(&v, (const char *)c + f->at, sizeof v);
        if (v < f->lo || v > f->hi)
            return qpk_err_setf(e, QPK_E_CORRUPT, "'%s' = %lld is not an integer in [%lld, %lld]", f->key,
                                (long long)v, (long long)f->lo, (long long)f->hi);
    }
    if (!isfinite(c->rope_theta) || c->rope_theta <= 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "'rope_theta' must be a positive finite number");
    if (!isfinite(c->rms_norm_eps) || c->rms_norm_eps <= 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "'rms_norm_eps' must be a positive finite number");
    if (strcmp(c->hidden_act, "silu") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "hidden_act \"%s\" is not supported (only silu)",
                            c->hidden_act);
    if ((unsigned)c->arch >= QPK_ARCH_COUNT_)
        return qpk_err_setf(e, QPK_E_CORRUPT, "unknown architecture %d", (int)c->arch);
    if (c->head_dim % 2 != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "head_dim %lld is odd; RoPE needs pairs",
                            (long long)c->head_dim);
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT,
                            "num_attention_heads %lld is not a multiple of num_key_value_heads %lld",
                            (long long)c->n_heads, (long long)c->n_kv_heads);
    if (c->use_sliding_window && c->sliding_window == 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "use_sliding_window is true but sliding_window is 0 (an empty window)");
    if (c->bos_token_id >= c->vocab_size)
        return qpk_err_setf(e, QPK_E_CORRUPT, "bos_token_id %lld >= vocab_size",
                            (long long)c->bos_token_id);
    if (c->n_eos < 0 || c->n_eos > (int)(sizeof c->eos_token_ids / sizeof *c->eos_token_ids))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%d eos_token_ids", c->n_eos);
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] < 0 || c->eos_token_ids[i] >= c->vocab_size)
            return qpk_err_setf(e, QPK_E_CORRUPT, "eos_token_id %lld >= vocab_size",
                                (long long)c->eos_token_ids[i]);
    if (c->n_heads * c->head_dim > 8 * QPK_MAX_HIDDEN)
        return qpk_err_setf(e, QPK_E_LIMIT, "num_attention_heads x head_dim is past %lld", 8 * QPK_MAX_HIDDEN);
    return check_family(c, e);
}

static qpk_status config_from_cjson(qpk_config *c, const cJSON *root, qpk_err *e)
{
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(root))
        return qpk_err_setf(e, QPK_E_CORRUPT, "top level is not an object");
    if (cJSON_GetArraySize(root) > 4096)
        return qpk_err_setf(e, QPK_E_LIMIT, "more than 4096 keys");
    QPK_TRY(parse_architecture(root, c, e));
    QPK_TRY(get_field(root, "vocab_size", true, 0, c, e));
    QPK_TRY(get_field(root, "hidden_size", true, 0, c, e));
    QPK_TRY(get_field(root, "intermediate_size", true, 0, c, e));
    QPK_TRY(get_field(root, "num_hidden_layers", true, 0, c, e));
    QPK_TRY(get_field(root, "num_attention_heads", true, 0, c, e));
    QPK_TRY(get_field(root, "num_key_value_heads", false, c->n_heads, c, e));
    QPK_TRY(get_field(root, "max_position_embeddings", false, 32768, c, e));
    /* Defaults are transformers' Qwen2Config defaults. */
    QPK_TRY(get_real(root, "rope_theta", 10000.0, &c->rope_theta, e));
    QPK_TRY(get_real(root, "rms_norm_eps", 1e-6, &c->rms_norm_eps, e));
    QPK_TRY(get_bool(root, "tie_word_embeddings", false, &c->tie_word_embeddings, e));
    QPK_TRY(get_bool(root, "use_sliding_window", false, &c->use_sliding_window, e));
    QPK_TRY(get_field(root, "sliding_window", false, 4096, c, e));
    QPK_TRY(get_field(root, "max_window_layers", false, 28, c, e));
    QPK_TRY(get_str(root, "hidden_act", "silu", c->hidden_act, sizeof c->hidden_act, e));
    QPK_TRY(get_str(root, "torch_dtype", "", c->torch_dtype, sizeof c->torch_dtype, e));
    QPK_TRY(get_int(root, "bos_token_id", false, -1, 0, QPK_MAX_VOCAB - 1, &c->bos_token_id, e));
    QPK_TRY(parse_eos(root, c, e));
    /* head_dim: explicit (transformers reads it for every architecture here), else Qwen3's
     * config default of 128, else hidden_size / num_attention_heads. */
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (hd && !cJSON_IsNull(hd))
        QPK_TRY(get_field(root, "head_dim", true, 0, c, e));
    else if (c->arch == QPK_ARCH_QWEN3)
        c->head_dim = 128;
    else if (c->hidden_size % c->n_heads != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "hidden_size %lld is not a multiple of num_attention_heads %lld "
                            "(and head_dim is not given)", (long long)c->hidden_size, (long long)c->n_heads);
    else
        c->head_dim = c->hidden_size / c->n_heads;
    QPK_TRY(parse_rope_scaling(root, c, e));
    QPK_TRY(parse_family(root, c, e));
    return qpk_config_check(c, e);
}

qpk_status qpk_config_parse(qpk_config *c, const char *json, size_t len, qpk_err *e)
{
    cJSON *root;
    memset(c, 0, sizeof *c);
    QPK_TRY(qpk_json_parse("config.json", json, len, &root, e));
    qpk_status s = config_from_cjson(c, root, e);
    cJSON_Delete(root);
    return s;
}

qpk_status qpk_meta_validate(const char *meta, size_t len, qpk_config *cfg, uint32_t *version, qpk_err *e)
{
    cJSON *root;
    QPK_TRY(qpk_json_parse("JSON", meta, len, &root, e));
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "format_version");
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architecture");
    qpk_status s = QPK_OK;
    if (!cJSON_IsObject(root))
        s = qpk_err_setf(e, QPK_E_CORRUPT, "metadata is not a JSON object");
    else if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "qpk") != 0)
        s = qpk_err_setf(e, QPK_E_CORRUPT, "metadata: \"format\" is not \"qpk\"");
    else if (!cJSON_IsNumber(ver) || ver->valuedouble != floor(ver->valuedouble) || ver->valuedouble < 1 ||
             ver->valuedouble > QPK_FORMAT_VERSION)
        s = qpk_err_setf(e, QPK_E_CORRUPT, "metadata: \"format_version\" is not 1 to %u", QPK_FORMAT_VERSION);
    else if (!cJSON_IsString(arch))
        s = qpk_err_setf(e, QPK_E_CORRUPT, "metadata: \"architecture\" is not a string");
    else if ((s = config_from_cjson(cfg, cJSON_GetObjectItemCaseSensitive(root, "config"), e)) != QPK_OK)
        qpk_err_prefix(e, s, "metadata \"config\"");
    else if (strcmp(arch->valuestring, ARCH_NAME[cfg->arch]) != 0)
        s = qpk_err_setf(e, QPK_E_MISMATCH, "metadata: \"architecture\" \"%.32s\" differs from the config's "
                         "model_type \"%s\"", arch->valuestring, ARCH_NAME[cfg->arch]);
    else if (ver->valuedouble < qpk_config_min_version(cfg))
        s = qpk_err_setf(e, QPK_E_CORRUPT, "metadata: a %s model%s needs format version %u, the file says %g",
                         ARCH_NAME[cfg->arch], cfg->yarn.factor != 0 ? " with YaRN" : "", qpk_config_min_version(cfg),
                         ver->valuedouble);
    else
        *version = (uint32_t)ver->valuedouble;
    cJSON_Delete(root);
    return s;
}

/*
 * A real number as the shortest text that reads back as exactly it. cJSON prints 15 digits whenever they read back
 * within an epsilon of the value, which can lose its last bit (fuzz_config found a yarn attention factor that did).
 */
static void add_real(cJSON *o, const char *key, double v)
{
    char buf[40];
    for (int digits = 15; digits <= 17; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    cJSON_AddItemToObject(o, key, cJSON_CreateRaw(buf));
}

cJSON *qpk_config_cjson(const qpk_config *c)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "model_type", ARCH_NAME[c->arch]);
    cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", (double)c->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", (double)c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", (double)c->head_dim);
    cJSON_AddNumberToObject(o, "max_position_embeddings", (double)c->max_position_embeddings);
    add_real(o, "rope_theta", c->rope_theta);
    add_real(o, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddBoolToObject(o, "use_sliding_window", c->use_sliding_window);
    cJSON_AddNumberToObject(o, "sliding_window", (double)c->sliding_window);
    cJSON_AddNumberToObject(o, "max_window_layers", (double)c->max_window_layers);
    cJSON_AddStringToObject(o, "hidden_act", c->hidden_act);
    cJSON_AddStringToObject(o, "torch_dtype", c->torch_dtype);
    if (is_qwen3(c))
        cJSON_AddBoolToObject(o, "attention_bias", c->attention_bias);
    if (c->yarn.factor != 0) {
        const qpk_yarn *y = &c->yarn;
        cJSON *r = cJSON_AddObjectToObject(o, "rope_scaling");
        cJSON_AddStringToObject(r, "rope_type", "yarn");
        add_real(r, "factor", y->factor);
        cJSON_AddNumberToObject(r, "original_max_position_embeddings", (double)y->original_max_position_embeddings);
        add_real(r, "beta_fast", y->beta_fast);
        add_real(r, "beta_slow", y->beta_slow);
        if (y->mscale > 0)
            add_real(r, "mscale", y->mscale);
        if (y->mscale_all_dim > 0)
            add_real(r, "mscale_all_dim", y->mscale_all_dim);
        /* Only when given: a derived one is derived again on reading, from the same inputs, bit for bit. */
        if (y->attention_factor != yarn_default_attention(y))
            add_real(r, "attention_factor", y->attention_factor);
    }
    if (qpk_config_is_moe(c)) {
        cJSON_AddNumberToObject(o, "num_experts", (double)c->n_experts);
        cJSON_AddNumberToObject(o, "num_experts_per_tok", (double)c->n_experts_used);
        cJSON_AddNumberToObject(o, "moe_intermediate_size", (double)c->moe_intermediate_size);
        if (c->arch == QPK_ARCH_QWEN2_MOE)
            cJSON_AddNumberToObject(o, "shared_expert_intermediate_size", (double)c->shared_expert_intermediate_size);
        cJSON_AddNumberToObject(o, "decoder_sparse_step", (double)c->decoder_sparse_step);
        cJSON_AddBoolToObject(o, "norm_topk_prob", c->norm_topk_prob);
        cJSON *a = cJSON_AddArrayToObject(o, "mlp_only_layers");
        for (int l = 0; a && l < c->n_layers; l++)
            if (c->mlp_only_layers[l / 64] >> (l % 64) & 1)
                cJSON_AddItemToArray(a, cJSON_CreateNumber(l));
    }
    if (c->bos_token_id >= 0)
        cJSON_AddNumberToObject(o, "bos_token_id", (double)c->bos_token_id);
    else
        cJSON_AddNullToObject(o, "bos_token_id");
    if (c->n_eos == 1) {
        cJSON_AddNumberToObject(o, "eos_token_id", (double)c->eos_token_ids[0]);
    } else if (c->n_eos == 0) {
        cJSON_AddNullToObject(o, "eos_token_id");
    } else {
        cJSON *a = cJSON_AddArrayToObject(o, "eos_token_id");
        for (int i = 0; a && i < c->n_eos; i++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber((double)c->eos_token_ids[i]));
    }
    return o;
}

char *qpk_config_to_json(const qpk_config *c)
{
    cJSON *o = qpk_config_cjson(c);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* ------------------------------------------------------------- tensor roles */

/* Every per-layer role, in the order files store them and the forward pass reads them. */
static const qpk_role LAYER_ORDER[QPK_LAYER_ROLES] = {
    QPK_ROLE_ATTN_NORM, QPK_ROLE_Q,          QPK_ROLE_Q_BIAS,      QPK_ROLE_K,           QPK_ROLE_K_BIAS,
    QPK_ROLE_V,         QPK_ROLE_V_BIAS,     QPK_ROLE_Q_NORM,      QPK_ROLE_K_NORM,      QPK_ROLE_O,
    QPK_ROLE_O_BIAS,    QPK_ROLE_FFN_NORM,   QPK_ROLE_GATE,        QPK_ROLE_UP,          QPK_ROLE_DOWN,
    QPK_ROLE_ROUTER,    QPK_ROLE_EXP_GATE,   QPK_ROLE_EXP_UP,      QPK_ROLE_EXP_DOWN,    QPK_ROLE_SHEXP_ROUTER,
    QPK_ROLE_SHEXP_GATE, QPK_ROLE_SHEXP_UP,  QPK_ROLE_SHEXP_DOWN,
};

static const char *const ROLE_SUFFIX[QPK_ROLE_COUNT_] = {
    [QPK_ROLE_EMBED] = "model.embed_tokens.weight",
    [QPK_ROLE_ATTN_NORM] = "input_layernorm.weight",
    [QPK_ROLE_Q] = "self_attn.q_proj.weight",
    [QPK_ROLE_Q_BIAS] = "self_attn.q_proj.bias",
    [QPK_ROLE_K] = "self_attn.k_proj.weight",
    [QPK_ROLE_K_BIAS] = "self_attn.k_proj.bias",
    [QPK_ROLE_V] = "self_attn.v_proj.weight",
    [QPK_ROLE_V_BIAS] = "self_attn.v_proj.bias",
    [QPK_ROLE_O] = "self_attn.o_proj.weight",
    [QPK_ROLE_FFN_NORM] = "post_attention_layernorm.weight",
    [QPK_ROLE_GATE] = "mlp.gate_proj.weight",
    [QPK_ROLE_UP] = "mlp.up_proj.weight",
    [QPK_ROLE_DOWN] = "mlp.down_proj.weight",
    [QPK_ROLE_FINAL_NORM] = "model.norm.weight",
    [QPK_ROLE_LM_HEAD] = "lm_head.weight",
    [QPK_ROLE_Q_NORM] = "self_attn.q_norm.weight",
    [QPK_ROLE_K_NORM] = "self_attn.k_norm.weight",
    [QPK_ROLE_O_BIAS] = "self_attn.o_proj.bias",
    [QPK_ROLE_ROUTER] = "mlp.gate.weight",
    [QPK_ROLE_EXP_GATE] = "mlp.experts.gate_proj.weight",
    [QPK_ROLE_EXP_UP] = "mlp.experts.up_proj.weight",
    [QPK_ROLE_EXP_DOWN] = "mlp.experts.down_proj.weight",
    [QPK_ROLE_SHEXP_ROUTER] = "mlp.shared_expert_gate.weight",
    [QPK_ROLE_SHEXP_GATE] = "mlp.shared_expert.gate_proj.weight",
    [QPK_ROLE_SHEXP_UP] = "mlp.shared_expert.up_proj.weight",
    [QPK_ROLE_SHEXP_DOWN] = "mlp.shared_expert.down_proj.weight",
};

qpk_role qpk_layer_role(int i) { return LAYER_ORDER[i]; }

bool qpk_role_is_per_layer(qpk_role r)
{
    return r != QPK_ROLE_EMBED && r != QPK_ROLE_FINAL_NORM && r != QPK_ROLE_LM_HEAD;
}

bool qpk_role_is_matrix(qpk_role r)
{
    switch (r) {
    case QPK_ROLE_EMBED:
    case QPK_ROLE_Q:
    case QPK_ROLE_K:
    case QPK_ROLE_V:
    case QPK_ROLE_O:
    case QPK_ROLE_GATE:
    case QPK_ROLE_UP:
    case QPK_ROLE_DOWN:
    case QPK_ROLE_EXP_GATE:
    case QPK_ROLE_EXP_UP:
    case QPK_ROLE_EXP_DOWN:
    case QPK_ROLE_SHEXP_GATE:
    case QPK_ROLE_SHEXP_UP:
    case QPK_ROLE_SHEXP_DOWN:
    case QPK_ROLE_LM_HEAD: return true;
    default: return false;
    }
}

bool qpk_role_is_expert(qpk_role r)
{
    return r == QPK_ROLE_EXP_GATE || r == QPK_ROLE_EXP_UP || r == QPK_ROLE_EXP_DOWN;
}

bool qpk_layer_has_role(const qpk_config *c, qpk_role r, int layer)
{
    bool qwen3 = is_qwen3(c), sparse = qpk_layer_is_sparse(c, layer);
    switch (r) {
    case QPK_ROLE_Q_BIAS:
    case QPK_ROLE_K_BIAS:
    case QPK_ROLE_V_BIAS: return !qwen3 || c->attention_bias;
    case QPK_ROLE_O_BIAS: return qwen3 && c->attention_bias;
    case QPK_ROLE_Q_NORM:
    case QPK_ROLE_K_NORM: return qwen3;
    case QPK_ROLE_GATE:
    case QPK_ROLE_UP:
    case QPK_ROLE_DOWN: return !sparse;
    case QPK_ROLE_ROUTER:
    case QPK_ROLE_EXP_GATE:
    case QPK_ROLE_EXP_UP:
    case QPK_ROLE_EXP_DOWN: return sparse;
    case QPK_ROLE_SHEXP_ROUTER:
    case QPK_ROLE_SHEXP_GATE:
    case QPK_ROLE_SHEXP_UP:
    case QPK_ROLE_SHEXP_DOWN: return sparse && c->arch == QPK_ARCH_QWEN2_MOE;
    default: return qpk_role_is_per_layer(r);
    }
}

static size_t layer_n_tensors(const qpk_config *c, int layer)
{
    size_t n = 0;
    for (int i = 0; i < QPK_LAYER_ROLES; i++)
        n += qpk_layer_has_role(c, LAYER_ORDER[i], layer);
    return n;
}

size_t qpk_model_n_tensors(const qpk_config *c)
{
    size_t n = 2 + (c->tie_word_embeddings ? 0 : 1);
    for (int l = 0; l < c->n_layers; l++)
        n += layer_n_tensors(c, l);
    return n;
}

void qpk_model_tensor_at(const qpk_config *c, size_t i, qpk_role *role, int *layer)
{
    *layer = -1;
    if (i == 0) {
        *role = QPK_ROLE_EMBED;
        return;
    }
    i--;
    for (int l = 0; l < c->n_layers; l++) {
        size_t n = layer_n_tensors(c, l);
        if (i >= n) {
            i -= n;
            continue;
        }
        for (int k = 0; k < QPK_LAYER_ROLES; k++)
            if (qpk_layer_has_role(c, LAYER_ORDER[k], l) && i-- == 0) {
                *role = LAYER_ORDER[k], *layer = l;
                return;
            }
    }
    *role = i == 0 ? QPK_ROLE_FINAL_NORM : QPK_ROLE_LM_HEAD;
}

int qpk_tensor_name(char *buf, size_t cap, qpk_role role, int layer)
{
    if (qpk_role_is_per_layer(role))
        return snprintf(buf, cap, "model.layers.%d.%s", layer, ROLE_SUFFIX[role]);
    return snprintf(buf, cap, "%s", ROLE_SUFFIX[role]);
}

int qpk_expert_tensor_name(char *buf, size_t cap, qpk_role role, int layer, int expert)
{
    static const char *const PROJ[] = {"gate_proj", "up_proj", "down_proj"};
    return snprintf(buf, cap, "model.layers.%d.mlp.experts.%d.%s.weight", layer, expert,
                    PROJ[role == QPK_ROLE_EXP_GATE ? 0 : role == QPK_ROLE_EXP_UP ? 1 : 2]);
}

int qpk_perm_name(char *buf, size_t cap, qpk_role role, int layer)
{
    if (!qpk_role_is_per_layer(role) || !qpk_role_is_matrix(role))
        return 0;
    const char *s = ROLE_SUFFIX[role];
    return snprintf(buf, cap, "model.layers.%d.%.*s.perm", layer, (int)(strlen(s) - strlen(".weight")), s);
}

int qpk_role_shape(const qpk_config *c, qpk_role role, int64_t dims[2])
{
    int64_t q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim, H = c->hidden_size;
    int64_t E = c->n_experts, mi = c->moe_intermediate_size, si = c->shared_expert_intermediate_size;
    switch (role) {
    case QPK_ROLE_EMBED:
    case QPK_ROLE_LM_HEAD: dims[0] = c->vocab_size, dims[1] = H; return 2;
    case QPK_ROLE_Q: dims[0] = q, dims[1] = H; return 2;
    case QPK_ROLE_K:
    case QPK_ROLE_V: dims[0] = kv, dims[1] = H; return 2;
    case QPK_ROLE_O: dims[0] = H, dims[1] = q; return 2;
    case QPK_ROLE_GATE:
    case QPK_ROLE_UP: dims[0] = c->intermediate_size, dims[1] = H; return 2;
    case QPK_ROLE_DOWN: dims[0] = H, dims[1] = c->intermediate_size; return 2;
    case QPK_ROLE_ROUTER: dims[0] = E, dims[1] = H; return 2;
    case QPK_ROLE_EXP_GATE:
    case QPK_ROLE_EXP_UP: dims[0] = E * mi, dims[1] = H; return 2;
    case QPK_ROLE_EXP_DOWN: dims[0] = E * H, dims[1] = mi; return 2;
    case QPK_ROLE_SHEXP_ROUTER: dims[0] = 1, dims[1] = H; return 2;
    case QPK_ROLE_SHEXP_GATE:
    case QPK_ROLE_SHEXP_UP: dims[0] = si, dims[1] = H; return 2;
    case QPK_ROLE_SHEXP_DOWN: dims[0] = H, dims[1] = si; return 2;
    case QPK_ROLE_Q_BIAS: dims[0] = q; return 1;
    case QPK_ROLE_K_BIAS:
    case QPK_ROLE_V_BIAS: dims[0] = kv; return 1;
    case QPK_ROLE_Q_NORM:
    case QPK_ROLE_K_NORM: dims[0] = c->head_dim; return 1;
    case QPK_ROLE_O_BIAS:
    case QPK_ROLE_ATTN_NORM:
    case QPK_ROLE_FFN_NORM:
    case QPK_ROLE_FINAL_NORM:
    case QPK_ROLE_COUNT_: break;
    }
    dims[0] = H;
    return 1;
}

/* The layer index after "model.layers.", or -1; *rest points past its dot. */
static long parse_layer(const char *name, const qpk_config *c, const char **rest)
{
    static const char prefix[] = "model.layers.";
    if (strncmp(name, prefix, sizeof prefix - 1) != 0)
        return -1;
    const char *p = name + sizeof prefix - 1;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.'))
        return -1;
    long n = 0;
    while (*p >= '0' && *p <= '9' && n <= QPK_MAX_LAYERS)
        n = n * 10 + (*p++ - '0');
    if (*p++ != '.' || n >= c->n_layers)
        return -1;
    *rest = p;
    return n;
}

bool qpk_tensor_role(const qpk_config *c, const char *name, qpk_role *role, int *layer)
{
    for (int r = 0; r < QPK_ROLE_COUNT_; r++)
        if (!qpk_role_is_per_layer((qpk_role)r) && strcmp(name, ROLE_SUFFIX[r]) == 0) {
            *role = (qpk_role)r, *layer = -1;
            return true;
        }
    const char *p;
    long n = parse_layer(name, c, &p);
    if (n < 0)
        return false;
    for (int i = 0; i < QPK_LAYER_ROLES; i++)
        if (strcmp(p, ROLE_SUFFIX[LAYER_ORDER[i]]) == 0 && qpk_layer_has_role(c, LAYER_ORDER[i], (int)n)) {
            *role = LAYER_ORDER[i], *layer = (int)n;
            return true;
        }
    return false;
}

bool qpk_expert_tensor_role(const qpk_config *c, const char *name, qpk_role *role, int *layer, int *expert)
{
    static const char mid[] = "mlp.experts.";
    const char *p;
    long n = parse_layer(name, c, &p);
    if (n < 0 || !qpk_layer_is_sparse(c, (int)n) || strncmp(p, mid, sizeof mid - 1) != 0)
        return false;
    p += sizeof mid - 1;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.'))
        return false;
    long x = 0;
    while (*p >= '0' && *p <= '9' && x <= QPK_MAX_EXPERTS)
        x = x * 10 + (*p++ - '0');
    if (*p++ != '.' || x >= c->n_experts)
        return false;
    static const struct {
        const char *suffix;
        qpk_role role;
    } P[] = {{"gate_proj.weight", QPK_ROLE_EXP_GATE}, {"up_proj.weight", QPK_ROLE_EXP_UP},
             {"down_proj.weight", QPK_ROLE_EXP_DOWN}};
    for (size_t i = 0; i < sizeof P / sizeof *P; i++)
        if (!strcmp(p, P[i].suffix)) {
            *role = P[i].role, *layer = (int)n, *expert = (int)x;
            return true;
        }
    return false;
}
