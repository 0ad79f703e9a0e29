/*
 * The Qwen family as llama.cpp reads it from GGUF (its qwen2, qwen2moe, qwen3 and qwen3moe):
 * metadata keys, tensor names and dimension order (stacked experts as 3-D tensors), the
 * tokenizer, and the block types. int8 and int4s blocks of 32 are ggml's
 * Q8_0 and Q4_0 byte for byte; int4 blocks become Q4_1 (m = -d z, exact when it fits
 * an f16, else the nearest f16: counted and reported); int8z blocks become Q8_0 when
 * every q - z fits an int8. A larger group (64, 128, a whole row: imported GPTQ/AWQ
 * checkpoints) is cut into blocks of 32 that share its scale, so it is exact too.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk_json.h"
#include "qpk/gguf.h"
#include "qpk/quant.h"
#include "qpk/tokenizer.h"

/* A declared tensor: how its bytes come, and what it is called in the file. */
typedef struct planned {
    uint32_t type, group; /* the qpk type and group its bytes come in */
    bool vector;          /* norms and biases: written as f32 whatever they come in */
    char name[64];
} planned;

struct qpk_gguf_export {
    qpk_gguf_writer *w;
    planned *t; /* in declaration order */
    size_t n, cap, cur;
    uint8_t *blocks; /* one source block as ggml blocks of 32 */
    size_t blocks_cap;
    uint64_t q41_blocks, q41_inexact; /* int4 and mlx4 -> Q4_1 blocks, and those whose d or m was rounded */
    double q41_max_change;            /* the largest weight change that rounding caused */
    uint64_t q80_blocks, q80_inexact; /* mlx8 -> Q8_0 blocks, and those requantized */
    double q80_max_change;
    double tensor_change;             /* the same within the tensor being written */
};

/* The ggml type of a qpk tensor type and group (its row's), or a refusal naming the tensor. */
static qpk_status ggml_type_of(uint32_t type, uint32_t group, const char *name, uint32_t *out, qpk_err *e)
{
    const qpk_type_info *ti = qpk_type_info_of(type);
    /* A group of G shares one scale: G/32 blocks of ggml's with that scale hold it exactly. */
    if (!ti || ti->ggml_type < 0 || (qpk_type_is_quantized(type) && !ti->block && group % QPK_GGML_GROUP != 0))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor '%s' is %s%s: no GGUF type holds it", name,
                            qpk_type_name(type), qpk_type_is_quantized(type) ? " in groups that are not blocks of 32" : "");
    *out = (uint32_t)ti->ggml_type;
    return QPK_OK;
}

/* --------------------------------------------------------------- create */

qpk_status qpk_gguf_export_create(qpk_gguf_export **out, const char *path, uint64_t split_bytes,
                                  uint64_t split_tensors, qpk_err *e)
{
    *out = NULL;
    qpk_gguf_export *x = calloc(1, sizeof *x);
    if (!x)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status s = qpk_gguf_writer_create(&x->w, path, e);
    if (s == QPK_OK && (split_bytes || split_tensors))
        s = qpk_gguf_writer_split(x->w, split_bytes, split_tensors, e);
    if (s != QPK_OK) {
        qpk_gguf_writer_discard(x->w);
        free(x);
        return s;
    }
    *out = x;
    return QPK_OK;
}

void qpk_gguf_export_discard(qpk_gguf_export *x)
{
    if (!x)
        return;
    qpk_gguf_writer_discard(x->w);
    free(x->t);
    free(x->blocks);
    free(x);
}

/* ------------------------------------------------------------- metadata */

typedef struct vocab {
    const qpk_tokenizer *tok;
    char *buf; /* the string being handed out: "[PADn]", or a merge "a b" */
    size_t cap;
    bool failed;
} vocab;

static char *room(vocab *v, size_t n)
{
    if (n > v->cap) {
        char *b = realloc(v->buf, n);
        if (!b) {
            v->failed = true;
            return NULL;
        }
        v->buf = b, v->cap = n;
    }
    return v->buf;
}

/* Token i's string; ids past the tokenizer (the padded rows) are "[PADi]", as llama.cpp's converter names them. */
static const char *token_text(void *ud, uint64_t i, size_t *len)
{
    vocab *v = ud;
    const char *s = qpk_tokenizer_token(v->tok, (int32_t)i, len);
    if (s)
        return s;
    char *b = room(v, 32);
    *len = b ? (size_t)snprintf(b, 32, "[PAD%llu]", (unsigned long long)i) : 0;
    return b ? b : "";
}

/* Merge i as "a b". */
static const char *merge_text(void *ud, uint64_t i, size_t *len)
{
    vocab *v = ud;
    const char *a, *b;
    size_t al, bl;
    qpk_tokenizer_merge(v->tok, (size_t)i, &a, &al, &b, &bl);
    char *out = room(v, al + bl + 1);
    if (!out) {
        *len = 0;
        return "";
    }
    memcpy(out, a, al), out[al] = ' ', memcpy(out + al + 1, b, bl);
    *len = al + bl + 1;
    return out;
}

/* Token types as llama.cpp's converter assigns them. */
static int32_t token_type(const qpk_tokenizer *t, int32_t id)
{
    size_t len;
    const char *s = qpk_tokenizer_token(t, id, &len);
    switch (qpk_tokenizer_token_kind(t, id)) {
    case QPK_TOKEN_NORMAL: return 1;
    case QPK_TOKEN_SPECIAL: return 3; /* control */
    case QPK_TOKEN_ADDED:
        /* An added token written like a control token is one, whatever its flag says. */
        return len >= 4 && !memcmp(s, "<|", 2) && !memcmp(s + len - 2, "|>", 2) ? 3 : 4;
    default: return 5; /* unused: a padded row with no token */
    }
}

static const char *cfg_string(const cJSON *cfg, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(it)) /* {"content": "<|endoftext|>", ...} in older files */
        it = cJSON_GetObjectItemCaseSensitive(it, "content");
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

static int32_t special_id(const qpk_tokenizer *tok, const cJSON *cfg, const char *key, int32_t fallback)
{
    const char *text = cfg_string(cfg, key);
    int32_t id = text ? qpk_tokenizer_find(tok, text, strlen(text)) : -1;
    return id >= 0 ? id : fallback;
}

/* The special ids as llama.cpp's converter finds them: tokenizer_config.json's token, else config.json's id. */
static qpk_status write_special_ids(qpk_gguf_writer *w, const qpk_config *c, const qpk_tokenizer *tok,
                                    const cJSON *cfg, qpk_err *e)
{
    int32_t bos = special_id(tok, cfg, "bos_token", c->bos_token_id);
    int32_t eos = special_id(tok, cfg, "eos_token", c->n_eos > 0 ? c->eos_token_ids[0] : -1);
    int32_t pad = special_id(tok, cfg, "pad_token", -1);
    if (bos >= 0)
        QPK_TRY(qpk_gguf_kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos, e));
    if (eos >= 0)
        QPK_TRY(qpk_gguf_kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos, e));
    if (pad >= 0)
        QPK_TRY(qpk_gguf_kv_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)pad, e));
    const cJSON *add_bos = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    QPK_TRY(qpk_gguf_kv_bool(w, "tokenizer.ggml.add_bos_token", cJSON_IsTrue(add_bos), e));
    return QPK_OK;
}

static const char *name_at(void *ud, uint64_t i, size_t *len)
{
    const char *s = ((const char *const *)ud)[i];
    *len = strlen(s);
    return s;
}

/*
 * The chat template, where llama.cpp's converter puts it: chat_template.jinja's text (what
 * transformers loads first), else tokenizer_config.json's chat_template: a string, or a list
 * of named templates ("default" as tokenizer.chat_template, each other as
 * tokenizer.chat_template.NAME, their names in tokenizer.chat_templates).
 */
static qpk_status write_chat_template(qpk_gguf_writer *w, const qpk_gguf_meta *m, const cJSON *cfg, qpk_err *e)
{
    if (m->chat_template)
        return qpk_gguf_kv_string(w, "tokenizer.chat_template", m->chat_template, m->tmpl_len, e);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *it;
    if (cJSON_IsString(t))
        return qpk_gguf_kv_string(w, "tokenizer.chat_template", t->valuestring, strlen(t->valuestring), e);
    if (!cJSON_IsArray(t))
        return QPK_OK;
    const char *names[64];
    uint64_t n = 0;
    cJSON_ArrayForEach(it, t)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name"), *text = cJSON_GetObjectItemCaseSensitive(it, "template");
        if (!cJSON_IsString(name) || !cJSON_IsString(text) || !name->valuestring[0] ||
            strlen(name->valuestring) > 64 || strspn(name->valuestring, "abcdefghijklmnopqrstuvwxyz"
                                                                     "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
                                                  strlen(name->valuestring))
            return qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer_config.json: a named chat template needs a name (letters, "
                                "digits, '_', '-') and a template string");
        char key[96];
        const bool dflt = !strcmp(name->valuestring, "default");
        snprintf(key, sizeof key, dflt ? "tokenizer.chat_template" : "tokenizer.chat_template.%s", name->valuestring);
        QPK_TRY(qpk_gguf_kv_string(w, key, text->valuestring, strlen(text->valuestring), e));
        if (!dflt && n == sizeof names / sizeof *names)
            return qpk_err_setf(e, QPK_E_LIMIT, "tokenizer_config.json: more than %zu named chat templates",
                                sizeof names / sizeof *names);
        if (!dflt)
            names[n++] = name->valuestring;
    }
    return n ? qpk_gguf_kv_string_array(w, "tokenizer.chat_templates", n, name_at, (void *)names, e) : QPK_OK;
}

/* The tokenizer: every row of the vocabulary (padded rows included), types, merges, special ids. */
static qpk_status write_tokenizer(qpk_gguf_writer *w, const qpk_config *c, const qpk_tokenizer *tok,
                                  const cJSON *cfg, int32_t *types, vocab *v, qpk_err *e)
{
    QPK_TRY(qpk_gguf_kv_string(w, "tokenizer.ggml.model", "gpt2", 4, e));
    QPK_TRY(qpk_gguf_kv_string(w, "tokenizer.ggml.pre", "qwen2", 5, e));
    uint64_t n = (uint64_t)c->vocab_size;
    QPK_TRY(qpk_tokenizer_fits(tok, c->vocab_size, e));
    QPK_TRY(qpk_gguf_kv_string_array(w, "tokenizer.ggml.tokens", n, token_text, v, e));
    for (uint64_t i = 0; i < n; i++)
        types[i] = token_type(tok, (int32_t)i);
    QPK_TRY(qpk_gguf_kv_i32_array(w, "tokenizer.ggml.token_type", types, n, e));
    QPK_TRY(qpk_gguf_kv_string_array(w, "tokenizer.ggml.merges", qpk_tokenizer_n_merges(tok), merge_text, v, e));
    if (v->failed)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    return write_special_ids(w, c, tok, cfg, e);
}

/* "<arch>.<suffix>" in buf. */
static const char *arch_key(char *buf, size_t cap, const char *arch, const char *suffix)
{
    snprintf(buf, cap, "%s.%s", arch, suffix);
    return buf;
}

/*
 * The architecture's keys, named and ordered as llama.cpp's converter writes them. YaRN:
 * llama.cpp scales cos and sin by rope.scaling.attn_factor x (1 + 0.1 ln factor), so a
 * config's own attention factor is written as its ratio to that (absent when it is 1).
 */
static qpk_status write_keys(qpk_gguf_writer *w, const qpk_config *c, const qpk_gguf_meta *m, uint32_t file_type,
                             qpk_err *e)
{
    const char *a = qpk_gguf_arch_name(c->arch);
    char k[96];
    QPK_TRY(qpk_gguf_kv_string(w, "general.architecture", a, strlen(a), e));
    QPK_TRY(qpk_gguf_kv_string(w, "general.name", m->name, strlen(m->name), e));
    QPK_TRY(qpk_gguf_kv_u32(w, "general.file_type", file_type, e));
    QPK_TRY(qpk_gguf_kv_u32(w, "general.quantization_version", 2, e)); /* ggml's, written always as its converter does */
    QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "block_count"), (uint32_t)c->n_layers, e));
    QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "context_length"), (uint32_t)c->max_position_embeddings, e));
    QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "embedding_length"), (uint32_t)c->hidden_size, e));
    QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "feed_forward_length"), (uint32_t)c->intermediate_size, e));
    QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "attention.head_count"), (uint32_t)c->n_heads, e));
    QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "attention.head_count_kv"), (uint32_t)c->n_kv_heads, e));
    if (c->yarn.factor != 0) {
        const qpk_yarn *y = &c->yarn;
        QPK_TRY(qpk_gguf_kv_string(w, arch_key(k, sizeof k, a, "rope.scaling.type"), "yarn", 4, e));
        QPK_TRY(qpk_gguf_kv_f32(w, arch_key(k, sizeof k, a, "rope.scaling.factor"), (float)y->factor, e));
        QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "rope.scaling.original_context_length"),
                                (uint32_t)y->original_max_position_embeddings, e));
        const float ratio = (float)(y->attention_factor / (y->factor > 1 ? 0.1 * log(y->factor) + 1.0 : 1.0));
        if (ratio != 1.0f)
            QPK_TRY(qpk_gguf_kv_f32(w, arch_key(k, sizeof k, a, "rope.scaling.attn_factor"), ratio, e));
    }
    QPK_TRY(qpk_gguf_kv_f32(w, arch_key(k, sizeof k, a, "rope.freq_base"), (float)c->rope_theta, e));
    QPK_TRY(qpk_gguf_kv_f32(w, arch_key(k, sizeof k, a, "attention.layer_norm_rms_epsilon"), (float)c->rms_norm_eps, e));
    if (qpk_config_is_moe(c)) {
        QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "expert_count"), (uint32_t)c->n_experts, e));
        QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "expert_used_count"), (uint32_t)c->n_experts_used, e));
    }
    if (c->arch == QPK_ARCH_QWEN3 || c->arch == QPK_ARCH_QWEN3_MOE) { /* Qwen3's heads need not be hidden / heads wide */
        QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "attention.key_length"), (uint32_t)c->head_dim, e));
        QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "attention.value_length"), (uint32_t)c->head_dim, e));
    }
    if (qpk_config_is_moe(c))
        QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "expert_feed_forward_length"),
                                (uint32_t)c->moe_intermediate_size, e));
    if (c->arch == QPK_ARCH_QWEN2_MOE)
        QPK_TRY(qpk_gguf_kv_u32(w, arch_key(k, sizeof k, a, "expert_shared_feed_forward_length"),
                                (uint32_t)c->shared_expert_intermediate_size, e));
    return QPK_OK;
}

/*
 * What llama.cpp's graphs for these architectures cannot compute, refused by name before
 * anything is written (a GGUF is for llama.cpp: one it loads as another model, or not at
 * all, is no export). Read from its models' tensor lists and graphs (src/models/qwen*.cpp).
 */
static qpk_status check_llamacpp(const qpk_config *c, qpk_err *e)
{
    const char *a = qpk_gguf_arch_name(c->arch);
    const bool qwen3 = c->arch == QPK_ARCH_QWEN3 || c->arch == QPK_ARCH_QWEN3_MOE;
    if (!qwen3 && c->n_heads * c->head_dim != c->hidden_size)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GGUF: llama.cpp's %s takes attn_q as [hidden_size, hidden_size], "
                            "and this model's %lld heads of head_dim %lld are %lld wide, not hidden_size %lld: it "
                            "cannot run it", a, (long long)c->n_heads, (long long)c->head_dim,
                            (long long)(c->n_heads * c->head_dim), (long long)c->hidden_size);
    if (qwen3 && c->attention_bias)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GGUF: llama.cpp's %s loads no attn_output.bias, and this model has "
                            "attention_bias (o_proj.bias): it cannot run it", a);
    if (c->yarn.factor != 0 && (c->yarn.beta_fast != 32 || c->yarn.beta_slow != 1))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GGUF: llama.cpp's %s computes YaRN with beta_fast 32 and beta_slow 1 "
                            "(it reads no others for this architecture), and this model's rope_scaling has %g and %g",
                            a, c->yarn.beta_fast, c->yarn.beta_slow);
    if (!qpk_config_is_moe(c))
        return QPK_OK;
    for (int l = 0; l < c->n_layers; l++)
        if (!qpk_layer_is_sparse(c, l))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GGUF: llama.cpp's %s runs every layer as mixture-of-experts, and "
                                "layer %d of this model is dense (mlp_only_layers, decoder_sparse_step): no %s GGUF "
                                "holds it", a, l, a);
    if (c->norm_topk_prob != (c->arch == QPK_ARCH_QWEN3_MOE))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GGUF: llama.cpp's %s %s the top-k routing weights, and this model "
                            "has norm_topk_prob %s", a, c->norm_topk_prob ? "does not renormalize" : "renormalizes",
                            c->norm_topk_prob ? "true" : "false");
    if (c->arch == QPK_ARCH_QWEN2_MOE && c->tie_word_embeddings)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GGUF: llama.cpp's qwen2moe needs output.weight, and this model ties "
                            "its head to the embedding (tie_word_embeddings)");
    return QPK_OK;
}

/* The metadata: architecture and hyperparameters, the tokenizer, and the qpk recipe. */
static qpk_status write_meta(qpk_gguf_export *x, const qpk_config *c, const qpk_gguf_meta *m, uint32_t file_type,
                             qpk_err *e)
{
    qpk_tokenizer *tok = NULL;
    cJSON *cfg = NULL;
    qpk_status s = qpk_tokenizer_load(&tok, m->tok_json, m->tok_len, e);
    if (s != QPK_OK)
        return qpk_err_prefix(e, s, "tokenizer.json");
    s = m->tok_cfg ? qpk_json_parse("tokenizer_config.json", m->tok_cfg, m->cfg_len, &cfg, e) : QPK_OK;
    if (s != QPK_OK) {
        qpk_tokenizer_free(tok);
        return s;
    }
    int32_t *types = malloc((size_t)c->vocab_size * sizeof *types);
    vocab v = {.tok = tok};
    if (!types)
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK)
        s = write_keys(x->w, c, m, file_type, e);
    if (s == QPK_OK)
        s = write_tokenizer(x->w, c, tok, cfg, types, &v, e);
    if (s == QPK_OK)
        s = write_chat_template(x->w, m, cfg, e);
    if (s == QPK_OK && m->recipe)
        s = qpk_gguf_kv_string(x->w, "qpk.quantization", m->recipe, strlen(m->recipe), e);
    if (s == QPK_OK)
        s = qpk_gguf_kv_string(x->w, "qpk.version", QPK_VERSION_STRING, strlen(QPK_VERSION_STRING), e);
    free(types);
    free(v.buf);
    cJSON_Delete(cfg);
    qpk_tokenizer_free(tok);
    return s;
}

/* ---------------------------------------------------------------- tensors */

/* Declares tensor (role, layer) whose bytes come as qpk type/group, dims outermost first (as .qpk). */
static qpk_status declare(qpk_gguf_export *x, const qpk_config *c, qpk_role role, int layer, uint32_t type,
                          uint32_t group, int ndim, const int64_t *dims, qpk_err *e)
{
    char name[64];
    uint32_t gt = 0;
    qpk_gguf_tensor_name(name, sizeof name, role, layer);
    const bool vector = !qpk_role_is_matrix(role); /* llama.cpp takes norms and biases in f32 only */
    const qpk_type_info *ti = qpk_type_info_of(type);
    if (vector && (!ti || !ti->elem_bytes || ti->ggml_type < 0)) { /* widened element by element: floats only */
        char qname[QPK_MAX_NAME];
        qpk_tensor_name(qname, sizeof qname, role, layer);
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor '%s' (GGUF's %s) is %s: GGUF holds norms and biases as "
                            "F32, widened from a float type only", qname, name, ti ? ti->name : "of an unknown type");
    }
    QPK_TRY(ggml_type_of(vector ? QPK_TYPE_F32 : type, group, name, &gt, e));
    uint64_t ne[4];
    int n_dims = ndim;
    for (int d = 0; d < ndim; d++) /* GGUF lists the contiguous dimension first */
        ne[d] = (uint64_t)dims[ndim - 1 - d];
    /* stacked experts as ggml's [cols, rows per expert, experts]: the same bytes */
    if (qpk_role_is_expert(role) && ndim == 2)
        ne[1] /= (uint64_t)c->n_experts, ne[2] = (uint64_t)c->n_experts, n_dims = 3;
    QPK_TRY(qpk_gguf_add_tensor(x->w, name, gt, n_dims, ne, e));
    if (x->n == x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 256;
        planned *t = realloc(x->t, cap * sizeof *t);
        if (!t)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        x->t = t, x->cap = cap;
    }
    planned *t = &x->t[x->n++];
    t->type = type, t->group = group, t->vector = vector;
    snprintf(t->name, sizeof t->name, "%s", name);
    return QPK_OK;
}

qpk_status qpk_gguf_export_plan(qpk_gguf_export *x, const qpk_config *c, qpk_gguf_source_fn source, void *ud,
                                const qpk_gguf_meta *m, qpk_err *e)
{
    uint64_t linear_elems[QPK_TYPE_COUNT_] = {0};
    QPK_TRY(check_llamacpp(c, e));
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer, ndim;
        uint32_t type, group;
        int64_t dims[QPK_MAX_DIMS];
        qpk_model_tensor_at(c, i, &role, &layer);
        QPK_TRY(source(ud, role, layer, &type, &group, &ndim, dims, e));
        QPK_TRY(declare(x, c, role, layer, type, group, ndim, dims, e));
        if (qpk_role_is_per_layer(role) && qpk_role_is_matrix(role))
            linear_elems[type] += (uint64_t)dims[0] * (uint64_t)dims[1];
    }
    uint32_t most = 0;
    for (uint32_t t = 0; t < QPK_TYPE_COUNT_; t++)
        most = linear_elems[t] > linear_elems[most] ? t : most;
    return write_meta(x, c, m, qpk_type_info_of(most)->file_type, e);
}

/* Whether q - z of an int8z code is one of Q8_0's int8 codes. */
static bool q8_0_holds(int32_t q_minus_z) { return q_minus_z >= -128 && q_minus_z <= 127; }

/* Notes a block's largest weight change (0: exact) in the tensor's and the file's counts. */
static void count_change(qpk_gguf_export *x, double change, uint32_t n, uint64_t *inexact, double *max_change)
{
    if (change == 0)
        return;
    *inexact += n;
    *max_change = change > *max_change ? change : *max_change;
    x->tensor_change = change > x->tensor_change ? change : x->tensor_change;
}

/* An int4 block's offset m = -d z as Q4_1's f16 (its n blocks of 32 counted when rounded); false past f16's range. */
static bool q41_offset(qpk_gguf_export *x, const uint8_t *block, uint32_t n, uint16_t *mh)
{
    uint16_t dh;
    memcpy(&dh, block, 2);
    /* exact in f32: d has 11 significant bits, z 8 */
    float d = qpk_f16_to_f32(dh), m = -d * (float)block[offsetof(qpk_head_int4, z)];
    *mh = qpk_f32_to_f16(m);
    float back = qpk_f16_to_f32(*mh);
    if (!isfinite(back))
        return false;
    count_change(x, fabs((double)back - m), n, &x->q41_inexact, &x->q41_max_change);
    return true;
}

/*
 * An affine group's s and b as Q4_1's f16 d and m (exact for mlx4_f16; mlx4's bf16 values too unless they fall among
 * f16's subnormals or past its range, where they are rounded and counted); false past f16's range.
 */
static bool q41_affine(qpk_gguf_export *x, uint32_t type, const uint8_t *block, uint32_t n, uint16_t *dh, uint16_t *mh)
{
    qpk_qparams p;
    int32_t q[QPK_GROUP_QUANTUM];
    qpk_unpack_group(type, QPK_GROUP_QUANTUM, block, &p, q); /* the head; one chunk of codes, unused */
    *dh = qpk_f32_to_f16(p.d), *mh = qpk_f32_to_f16(p.m);
    const double dd = (double)qpk_f16_to_f32(*dh) - p.d, dm = (double)qpk_f16_to_f32(*mh) - p.m;
    if (!isfinite(dd) || !isfinite(dm))
        return false;
    count_change(x, fmax(fabs(dm), fabs(15 * dd + dm)), n, &x->q41_inexact, &x->q41_max_change);
    return true;
}

/*
 * 32 weights of an mlx8 group as a Q8_0 block: exactly when s is an f16 value and b = -s z with every q - z an int8
 * (a symmetric grid written as affine); else quantized again by round-to-nearest, the change counted.
 */
static qpk_status q80_affine(qpk_gguf_export *x, const planned *t, const qpk_qparams *p, const int32_t *q,
                             uint8_t *out, qpk_err *e)
{
    const float z = p->d != 0 ? nearbyintf(-p->m / p->d) : 0;
    bool exact = qpk_f16_to_f32(qpk_f32_to_f16(p->d)) == p->d && -p->d * z == p->m;
    for (int i = 0; i < 32 && exact; i++)
        exact = q8_0_holds(q[i] - (int32_t)z);
    x->q80_blocks++;
    if (exact) {
        const uint16_t dh = qpk_f32_to_f16(p->d);
        memcpy(out, &dh, 2);
        for (int i = 0; i < 32; i++)
            out[offsetof(qpk_block_q8_0, qs) + (size_t)i] = (uint8_t)(int8_t)(q[i] - (int32_t)z);
        return QPK_OK;
    }
    float w[32], back[32];
    for (int i = 0; i < 32; i++)
        w[i] = qpk_dequantize_value(t->type, p, q[i]);
    QPK_TRY(qpk_quantize_row(QPK_TYPE_INT8, 32, w, 32, out, e)); /* int8 in groups of 32 is Q8_0 */
    qpk_dequantize_row(QPK_TYPE_INT8, 32, out, 32, back);
    double change = 0;
    for (int i = 0; i < 32; i++)
        change = fmax(change, fabs((double)back[i] - w[i]));
    count_change(x, change, 1, &x->q80_inexact, &x->q80_max_change);
    return QPK_OK;
}

bool qpk_gguf_holds_int8z(const void *blocks, uint32_t group, uint64_t n_blocks)
{
    const size_t bb = qpk_type_block_bytes(QPK_TYPE_INT8Z, group);
    const uint8_t *b = blocks;
    for (uint64_t k = 0; k < n_blocks; k++, b += bb) {
        const int32_t z = qpk_le16(b + offsetof(qpk_head_int8z, z));
        const uint8_t *q = b + sizeof(qpk_head_int8z);
        for (uint32_t i = 0; i < group; i++)
            if (!q8_0_holds(q[i] - z))
                return false;
    }
    return true;
}

/*
 * One source block of G weights (FORMAT.md) as G/32 ggml blocks with its scale:
 * int8 -> Q8_0 and int4s -> Q4_0 (their chunks of 32 are ggml's codes as they are),
 * int4 -> Q4_1 (m = -d z), int8z -> Q8_0 (q - z, which must fit an int8).
 */
static qpk_status to_ggml(qpk_gguf_export *x, const planned *t, const uint8_t *in, uint8_t *out, qpk_err *e)
{
    const qpk_type_info *ti = qpk_type_info_of(t->type);
    const uint8_t *codes = in + ti->head_bytes;
    const size_t chunk = 4 * ti->bits; /* bytes of codes per 32 weights */
    uint16_t mh = 0;
    if (t->type == QPK_TYPE_INT4 && !q41_offset(x, in, t->group / 32, &mh))
        return qpk_err_setf(e, QPK_E_VALUE, "tensor '%s': an int4 block's offset -d*z is beyond f16's range: no "
                            "Q4_1 holds it", t->name);
    const int32_t z = t->type == QPK_TYPE_INT8Z ? qpk_le16(in + offsetof(qpk_head_int8z, z)) : 0;
    const bool affine4 = t->type == QPK_TYPE_MLX4 || t->type == QPK_TYPE_MLX4_F16;
    const bool affine8 = t->type == QPK_TYPE_MLX8 || t->type == QPK_TYPE_MLX8_F16;
    uint16_t dh;
    memcpy(&dh, in, 2);
    if (affine4 && !q41_affine(x, t->type, in, t->group / 32, &dh, &mh))
        return qpk_err_setf(e, QPK_E_VALUE, "tensor '%s': an %s group's scale or bias is beyond f16's range: no Q4_1 "
                            "holds it", t->name, qpk_type_name(t->type));
    for (uint32_t c = 0; c < t->group / 32; c++) {
        if (affine8) {
            qpk_qparams p;
            int32_t q[32];
            qpk_unpack_group(t->type, 32, in, &p, q); /* the head (and chunk 0) */
            for (int i = 0; i < 32; i++)
                q[i] = codes[c * chunk + (size_t)i];
            QPK_TRY(q80_affine(x, t, &p, q, out, e));
            out += sizeof(qpk_block_q8_0);
            continue;
        }
        memcpy(out, &dh, 2); /* d */
        if (t->type == QPK_TYPE_INT4 || affine4) {
            memcpy(out + offsetof(qpk_block_q4_1, m), &mh, 2);
            memcpy(out + offsetof(qpk_block_q4_1, qs), codes + c * chunk, chunk);
            out += sizeof(qpk_block_q4_1), x->q41_blocks++;
        } else if (t->type == QPK_TYPE_INT8Z) {
            for (int i = 0; i < 32; i++) {
                int32_t q = codes[c * chunk + (size_t)i] - z;
                if (!q8_0_holds(q))
                    return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor '%s': a code minus its zero point is %d, "
                                        "outside Q8_0's int8: no GGUF type holds this 8-bit block as it is "
                                        "(requantizing it to Q8_0 makes it fit, at a cost the converter measures)",
                                        t->name, q);
                out[offsetof(qpk_block_q8_0, qs) + (size_t)i] = (uint8_t)(int8_t)q;
            }
            out += sizeof(qpk_block_q8_0);
        } else { /* Q8_0, Q4_0: d, then the codes as they are */
            memcpy(out + offsetof(qpk_block_q8_0, qs), codes + c * chunk, chunk);
            out += offsetof(qpk_block_q8_0, qs) + chunk;
        }
    }
    return QPK_OK;
}

/* A vector's values, in whatever float type they come, as f32. */
static qpk_status write_widened(qpk_gguf_export *x, uint32_t type, const uint8_t *p, size_t n, qpk_err *e)
{
    const size_t esize = qpk_type_info_of(type)->elem_bytes;
    if (n % esize != 0)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s data must come in whole elements", qpk_type_name(type));
    float stage[4096];
    for (size_t done = 0; done < n / esize;) {
        size_t k = n / esize - done < 4096 ? n / esize - done : 4096;
        qpk_row_to_f32(type, p + done * esize, stage, k);
        QPK_TRY(qpk_gguf_write(x->w, stage, k * sizeof *stage, e));
        done += k;
    }
    return QPK_OK;
}

qpk_status qpk_gguf_export_write(qpk_gguf_export *x, const void *data, size_t n, qpk_err *e)
{
    if (x->cur >= x->n)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "GGUF data past the declared tensors");
    const planned *t = &x->t[x->cur];
    if (t->vector && t->type != QPK_TYPE_F32)
        return write_widened(x, t->type, data, n, e);
    /* Bytes that are ggml's as they are: plain types, ggml's block types, and int8 and int4s blocks of 32. */
    if (!qpk_type_is_quantized(t->type) || qpk_type_info_of(t->type)->block ||
        (t->group == 32 && (t->type == QPK_TYPE_INT8 || t->type == QPK_TYPE_INT4S)))
        return qpk_gguf_write(x->w, data, n, e);
    const size_t bb = qpk_type_block_bytes(t->type, t->group);
    uint64_t out_bb; /* the group's ggml blocks */
    QPK_TRY(qpk_ggml_nbytes((uint32_t)qpk_type_info_of(t->type)->ggml_type, 1, &(uint64_t){t->group}, &out_bb, e));
    if (n % bb != 0)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s data must come in whole blocks", qpk_type_name(t->type));
    if (out_bb > x->blocks_cap) {
        uint8_t *b = realloc(x->blocks, out_bb);
        if (!b)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        x->blocks = b, x->blocks_cap = out_bb;
    }
    for (const uint8_t *p = data, *end = p + n; p < end; p += bb) {
        QPK_TRY(to_ggml(x, t, p, x->blocks, e));
        QPK_TRY(qpk_gguf_write(x->w, x->blocks, out_bb, e));
    }
    return QPK_OK;
}

/* Marks the current tensor done (its bytes all given). */
void qpk_gguf_export_next(qpk_gguf_export *x, double *max_change)
{
    *max_change = x->tensor_change;
    x->tensor_change = 0;
    x->cur++;
}

qpk_status qpk_gguf_export_finish(qpk_gguf_export *x, const qpk_callbacks *cb, qpk_err *e)
{
    if (cb && cb->log && x->q41_blocks) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "int4/mlx4 -> Q4_1: %llu of %llu blocks needed their offset (m = -d z, or the bias) or scale "
                 "rounded to f16 (largest weight change %.3g); the others are exact",
                 (unsigned long long)x->q41_inexact, (unsigned long long)x->q41_blocks, x->q41_max_change);
        cb->log(cb->ud, QPK_LOG_INFO, msg);
    }
    if (cb && cb->log && x->q80_blocks) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "mlx8 -> Q8_0: %llu of %llu blocks were quantized again (Q8_0 has no offset; largest weight change "
                 "%.3g); the others are exact", (unsigned long long)x->q80_inexact, (unsigned long long)x->q80_blocks,
                 x->q80_max_change);
        cb->log(cb->ud, QPK_LOG_INFO, msg);
    }
    qpk_status s = qpk_gguf_finish(x->w, e);
    x->w = NULL;
    qpk_gguf_export_discard(x);
    return s;
}
