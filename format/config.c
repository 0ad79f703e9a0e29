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

static qpk_status check_architecture(const cJSON *root, qpk_err *e)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!mt)
        return qpk_err_setf(e, QPK_E_CORRUPT, "missing 'model_type' (expected \"qwen2\")");
    if (!cJSON_IsString(mt))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'model_type' is not a string");
    if (strcmp(mt->valuestring, "qwen2") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "model_type \"%.64s\" is not supported: qpk converts "
                            "\"qwen2\" models (Qwen1.5 and Qwen2)",
                            mt->valuestring);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "rope_scaling is set; qpk implements plain RoPE only");
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
    if (c->hidden_size % c->n_heads != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT,
                            "hidden_size %lld is not a multiple of num_attention_heads %lld",
                            (long long)c->hidden_size, (long long)c->n_heads);
    c->head_dim = c->hidden_size / c->n_heads;
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
    return QPK_OK;
}

static qpk_status config_from_cjson(qpk_config *c, const cJSON *root, qpk_err *e)
{
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(root))
        return qpk_err_setf(e, QPK_E_CORRUPT, "top level is not an object");
    if (cJSON_GetArraySize(root) > 4096)
        return qpk_err_setf(e, QPK_E_LIMIT, "more than 4096 keys");
    QPK_TRY(check_architecture(root, e));
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
    int64_t hd;
    QPK_TRY(get_int(root, "head_dim", false, 0, 1, QPK_MAX_HIDDEN, &hd, e)); /* 0: absent */
    QPK_TRY(qpk_config_check(c, e));
    if (hd && hd != c->head_dim)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "head_dim %lld differs from hidden_size/num_attention_heads = %lld",
                            (long long)hd, (long long)c->head_dim);
    return QPK_OK;
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
    else if (!cJSON_IsNumber(ver) || (ver->valuedouble != 1 && ver->valuedouble != QPK_FORMAT_VERSION))
        s = qpk_err_setf(e, QPK_E_CORRUPT, "metadata: \"format_version\" is not 1 or %u", QPK_FORMAT_VERSION);
    else if (!cJSON_IsString(arch) || strcmp(arch->valuestring, "qwen2") != 0)
        s = qpk_err_setf(e, QPK_E_UNSUPPORTED, "metadata: \"architecture\" is not \"qwen2\"");
    else if ((s = config_from_cjson(cfg, cJSON_GetObjectItemCaseSensitive(root, "config"), e)) != QPK_OK)
        qpk_err_prefix(e, s, "metadata \"config\"");
    else
        *version = (uint32_t)ver->valuedouble;
    cJSON_Delete(root);
    return s;
}

char *qpk_config_to_json(const qpk_config *c)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "model_type", "qwen2");
    cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", (double)c->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", (double)c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", (double)c->head_dim);
    cJSON_AddNumberToObject(o, "max_position_embeddings", (double)c->max_position_embeddings);
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
    cJSON_AddNumberToObject(o, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddBoolToObject(o, "use_sliding_window", c->use_sliding_window);
    cJSON_AddNumberToObject(o, "sliding_window", (double)c->sliding_window);
    cJSON_AddNumberToObject(o, "max_window_layers", (double)c->max_window_layers);
    cJSON_AddStringToObject(o, "hidden_act", c->hidden_act);
    cJSON_AddStringToObject(o, "torch_dtype", c->torch_dtype);
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
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ------------------------------------------------------------- tensor roles */

static const qpk_role LAYER_ORDER[QPK_LAYER_ROLES] = {
    QPK_ROLE_ATTN_NORM, QPK_ROLE_Q, QPK_ROLE_Q_BIAS, QPK_ROLE_K,    QPK_ROLE_K_BIAS, QPK_ROLE_V,
    QPK_ROLE_V_BIAS,    QPK_ROLE_O, QPK_ROLE_FFN_NORM, QPK_ROLE_GATE, QPK_ROLE_UP,     QPK_ROLE_DOWN,
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
    case QPK_ROLE_LM_HEAD: return true;
    default: return false;
    }
}

size_t qpk_model_n_tensors(const qpk_config *c)
{
    return 2 + (size_t)c->n_layers * QPK_LAYER_ROLES + (c->tie_word_embeddings ? 0 : 1);
}

void qpk_model_tensor_at(const qpk_config *c, size_t i, qpk_role *role, int *layer)
{
    size_t n_layer_tensors = (size_t)c->n_layers * QPK_LAYER_ROLES;
    *layer = -1;
    if (i == 0)
        *role = QPK_ROLE_EMBED;
    else if (i <= n_layer_tensors) {
        *layer = (int)((i - 1) / QPK_LAYER_ROLES);
        *role = LAYER_ORDER[(i - 1) % QPK_LAYER_ROLES];
    } else if (i == n_layer_tensors + 1)
        *role = QPK_ROLE_FINAL_NORM;
    else
        *role = QPK_ROLE_LM_HEAD;
}

int qpk_tensor_name(char *buf, size_t cap, qpk_role role, int layer)
{
    if (qpk_role_is_per_layer(role))
        return snprintf(buf, cap, "model.layers.%d.%s", layer, ROLE_SUFFIX[role]);
    return snprintf(buf, cap, "%s", ROLE_SUFFIX[role]);
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
    int64_t q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    switch (role) {
    case QPK_ROLE_EMBED:
    case QPK_ROLE_LM_HEAD: dims[0] = c->vocab_size, dims[1] = c->hidden_size; return 2;
    case QPK_ROLE_Q: dims[0] = q, dims[1] = c->hidden_size; return 2;
    case QPK_ROLE_K:
    case QPK_ROLE_V: dims[0] = kv, dims[1] = c->hidden_size; return 2;
    case QPK_ROLE_O: dims[0] = c->hidden_size, dims[1] = q; return 2;
    case QPK_ROLE_GATE:
    case QPK_ROLE_UP: dims[0] = c->intermediate_size, dims[1] = c->hidden_size; return 2;
    case QPK_ROLE_DOWN: dims[0] = c->hidden_size, dims[1] = c->intermediate_size; return 2;
    case QPK_ROLE_Q_BIAS: dims[0] = q; return 1;
    case QPK_ROLE_K_BIAS:
    case QPK_ROLE_V_BIAS: dims[0] = kv; return 1;
    case QPK_ROLE_ATTN_NORM:
    case QPK_ROLE_FFN_NORM:
    case QPK_ROLE_FINAL_NORM:
    case QPK_ROLE_COUNT_: break;
    }
    dims[0] = c->hidden_size;
    return 1;
}

bool qpk_tensor_role(const qpk_config *c, const char *name, qpk_role *role, int *layer)
{
    for (int r = 0; r < QPK_ROLE_COUNT_; r++)
        if (!qpk_role_is_per_layer((qpk_role)r) && strcmp(name, ROLE_SUFFIX[r]) == 0) {
            *role = (qpk_role)r, *layer = -1;
            return true;
        }
    static const char prefix[] = "model.layers.";
    if (strncmp(name, prefix, sizeof prefix - 1) != 0)
        return false;
    const char *p = name + sizeof prefix - 1;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.'))
        return false;
    long n = 0;
    while (*p >= '0' && *p <= '9' && n <= QPK_MAX_LAYERS)
        n = n * 10 + (*p++ - '0');
    if (*p++ != '.' || n >= c->n_layers)
        return false;
    for (int i = 0; i < QPK_LAYER_ROLES; i++)
        if (strcmp(p, ROLE_SUFFIX[LAYER_ORDER[i]]) == 0) {
            *role = LAYER_ORDER[i], *layer = (int)n;
            return true;
        }
    return false;
}
