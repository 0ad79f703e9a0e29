/*
 * A GGUF file as a Qwen2 model: its hyperparameters become the one qpk_config (checked by
 * qpk_config_check, so the same rules hold), and everything a runtime relies on is
 * checked first: the keys' types and values (every qwen2.* key applied or refused), the
 * tokenizer keys and the tokenizer they describe as qpk's tokenizer loads it, and every
 * tensor's name, shape and type.
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk/gguf.h"
#include "qpk/tokenizer.h"

/* llama.cpp's token types: undefined, normal, unknown, control, user-defined, unused, byte. */
#define MAX_TOKEN_TYPE 6

static qpk_status get_uint(const qpk_gguf *g, const char *key, bool required, uint64_t dflt, uint64_t *out,
                           qpk_err *e)
{
    qpk_gguf_value v;
    if (!qpk_gguf_find(g, key, &v)) {
        if (required)
            return qpk_err_setf(e, QPK_E_MISMATCH, "no %s", key);
        *out = dflt;
        return QPK_OK;
    }
    if (v.type != QPK_GGUF_U32 && v.type != QPK_GGUF_U64 && v.type != QPK_GGUF_I32)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not an unsigned integer", key);
    if (v.type == QPK_GGUF_I32 && v.num.i < 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s is %" PRId64 ", negative", key, v.num.i);
    *out = v.type == QPK_GGUF_I32 ? (uint64_t)v.num.i : v.num.u;
    return QPK_OK;
}

static qpk_status get_positive(const qpk_gguf *g, const char *key, bool required, double dflt, double *out,
                               qpk_err *e)
{
    qpk_gguf_value v;
    if (!qpk_gguf_find(g, key, &v)) {
        if (required)
            return qpk_err_setf(e, QPK_E_MISMATCH, "no %s", key);
        *out = dflt;
        return QPK_OK;
    }
    if (v.type != QPK_GGUF_F32 && v.type != QPK_GGUF_F64)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not a float", key);
    if (!isfinite(v.num.f) || v.num.f <= 0)
        return qpk_err_setf(e, QPK_E_VALUE, "%s is %g: it must be a positive finite number", key, v.num.f);
    *out = v.num.f;
    return QPK_OK;
}

static bool is_string(const qpk_gguf *g, const char *key, const char *want)
{
    qpk_gguf_value v;
    return qpk_gguf_find(g, key, &v) && v.type == QPK_GGUF_STRING && v.len == strlen(want) &&
           !memcmp(v.str, want, v.len);
}

/* ------------------------------------------------------------- the tokenizer */

/* The vocabulary as a set of strings: open addressing over (pointer, length). */
typedef struct token_set {
    const char **s;
    uint64_t *len;
    size_t cap;
} token_set;

static uint64_t hash_bytes(const char *s, uint64_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static bool set_has(const token_set *t, const char *s, uint64_t n)
{
    for (size_t i = hash_bytes(s, n) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        if (!t->s[i])
            return false;
        if (t->len[i] == n && !memcmp(t->s[i], s, n))
            return true;
    }
}

static void set_add(token_set *t, const char *s, uint64_t n)
{
    size_t i = hash_bytes(s, n) & (t->cap - 1);
    while (t->s[i] && !(t->len[i] == n && !memcmp(t->s[i], s, n)))
        i = (i + 1) & (t->cap - 1);
    t->s[i] = s, t->len[i] = n;
}

/* Every merge is "a b", two tokens of the vocabulary. */
static qpk_status check_merges(const qpk_gguf *g, const qpk_gguf_value *tokens, qpk_err *e)
{
    qpk_gguf_value m;
    if (!qpk_gguf_find(g, "tokenizer.ggml.merges", &m))
        return qpk_err_setf(e, QPK_E_MISMATCH, "no tokenizer.ggml.merges (a gpt2 tokenizer needs them)");
    if (m.type != QPK_GGUF_ARRAY || m.elem_type != QPK_GGUF_STRING)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.ggml.merges is not an array of strings");
    token_set t = {0};
    t.cap = 1;
    while (t.cap < 2 * tokens->len + 2)
        t.cap *= 2;
    t.s = calloc(t.cap, sizeof *t.s), t.len = calloc(t.cap, sizeof *t.len);
    qpk_status s = t.s && t.len ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (uint64_t i = 0; i < tokens->len && s == QPK_OK; i++) {
        uint64_t n;
        const char *str = qpk_gguf_array_string(g, tokens, i, &n);
        set_add(&t, str, n);
    }
    for (uint64_t i = 0; i < m.len && s == QPK_OK; i++) {
        uint64_t n;
        const char *str = qpk_gguf_array_string(g, &m, i, &n);
        const char *sp = memchr(str, ' ', (size_t)n);
        if (!sp || sp == str || sp + 1 == str + n || memchr(sp + 1, ' ', (size_t)(str + n - sp - 1)))
            s = qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.ggml.merges[%" PRIu64 "] is not two tokens \"a b\"", i);
        else if (!set_has(&t, str, (uint64_t)(sp - str)) || !set_has(&t, sp + 1, (uint64_t)(str + n - sp - 1)))
            s = qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.ggml.merges[%" PRIu64 "] \"%.*s\" names a token the "
                             "vocabulary does not have", i, (int)(n < 80 ? n : 80), str);
    }
    free(t.s), free(t.len);
    return s;
}

static qpk_status check_tokenizer(const qpk_gguf *g, uint64_t *vocab, qpk_err *e)
{
    if (!is_string(g, "tokenizer.ggml.model", "gpt2"))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tokenizer.ggml.model is not \"gpt2\" (Qwen2's byte-level BPE)");
    qpk_gguf_value v;
    if (qpk_gguf_find(g, "tokenizer.ggml.pre", &v) && !is_string(g, "tokenizer.ggml.pre", "qwen2"))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tokenizer.ggml.pre is not \"qwen2\"");
    qpk_gguf_value tok;
    if (!qpk_gguf_find(g, "tokenizer.ggml.tokens", &tok) || tok.type != QPK_GGUF_ARRAY ||
        tok.elem_type != QPK_GGUF_STRING || tok.len == 0)
        return qpk_err_setf(e, QPK_E_MISMATCH, "no tokenizer.ggml.tokens (an array of strings)");
    for (uint64_t i = 0; i < tok.len; i++) {
        uint64_t n;
        const char *s = qpk_gguf_array_string(g, &tok, i, &n);
        if (qpk_utf8_valid_prefix(s, (size_t)n) != n)
            return qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.ggml.tokens[%" PRIu64 "] is not valid UTF-8", i);
    }
    if (qpk_gguf_find(g, "tokenizer.ggml.token_type", &v)) {
        if (v.type != QPK_GGUF_ARRAY || v.elem_type != QPK_GGUF_I32 || v.len != tok.len)
            return qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.ggml.token_type is not one i32 per token");
        for (uint64_t i = 0; i < v.len; i++) {
            int32_t t;
            memcpy(&t, v.elems + 4 * i, 4);
            if (t < 0 || t > MAX_TOKEN_TYPE)
                return qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.ggml.token_type[%" PRIu64 "] is %d (0..%d)", i, t,
                                    MAX_TOKEN_TYPE);
        }
    }
    /* Every special id a runtime may emit or insert must be a token. */
    for (size_t i = 0; i < qpk_gguf_n_kv(g); i++) {
        const char *key = qpk_gguf_kv_at(g, i, &v);
        size_t n = strlen(key);
        if (strncmp(key, "tokenizer.ggml.", 15) || n < 24 || strcmp(key + n - 9, "_token_id"))
            continue;
        uint64_t id;
        QPK_TRY(get_uint(g, key, true, 0, &id, e));
        if (id >= tok.len)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s is %" PRIu64 ", outside the vocabulary of %" PRIu64 " tokens",
                                key, id, tok.len);
    }
    *vocab = tok.len;
    return check_merges(g, &tok, e);
}

/* --------------------------------------------------------------- tensors */

static qpk_status expect_tensor(const qpk_gguf *g, const char *name, int n_dims, uint64_t ne0, uint64_t ne1,
                                size_t *found, qpk_err *e)
{
    const qpk_gguf_tensor *t = qpk_gguf_find_tensor(g, name);
    if (!t)
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s is missing", name);
    if (t->n_dims != n_dims || t->ne[0] != ne0 || (n_dims == 2 && t->ne[1] != ne1)) {
        if (n_dims == 2)
            return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s: expected ne [%" PRIu64 ", %" PRIu64 "]", name, ne0, ne1);
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s: expected ne [%" PRIu64 "]", name, ne0);
    }
    /* Norms and biases are added and multiplied in f32 by llama.cpp: they must be F32. */
    if (n_dims == 1 && t->type != QPK_GGML_F32)
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s is %s: norms and biases must be F32", name,
                            qpk_ggml_type_name(t->type));
    uint32_t type, group;
    if (n_dims == 2 && !qpk_type_of_ggml(t->type, &type, &group))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor %s is %s: qpk computes with F32, F16, BF16, Q8_0, Q4_0, "
                            "Q4_1, Q5_0, Q5_1, Q2_K .. Q6_K", name, qpk_ggml_type_name(t->type));
    (*found)++;
    return QPK_OK;
}

static qpk_status check_tensors(const qpk_gguf *g, const qpk_config *c, qpk_err *e)
{
    const uint64_t embd = (uint64_t)c->hidden_size, vocab = (uint64_t)c->vocab_size;
    const uint64_t q_dim = (uint64_t)(c->n_heads * c->head_dim), kv_dim = (uint64_t)(c->n_kv_heads * c->head_dim);
    size_t found = 0;
    QPK_TRY(expect_tensor(g, "token_embd.weight", 2, embd, vocab, &found, e));
    QPK_TRY(expect_tensor(g, "output_norm.weight", 1, embd, 0, &found, e));
    if (!c->tie_word_embeddings)
        QPK_TRY(expect_tensor(g, "output.weight", 2, embd, vocab, &found, e));
    static const struct {
        const char *name;
        int n_dims, ne0, ne1; /* sizes: 0 embd, 1 kv_dim, 2 ff, 3 q_dim */
    } LAYER[] = {
        {"attn_norm.weight", 1, 0, 0}, {"attn_q.weight", 2, 0, 3},       {"attn_q.bias", 1, 3, 0},
        {"attn_k.weight", 2, 0, 1},    {"attn_k.bias", 1, 1, 0},         {"attn_v.weight", 2, 0, 1},
        {"attn_v.bias", 1, 1, 0},      {"attn_output.weight", 2, 3, 0}, {"ffn_norm.weight", 1, 0, 0},
        {"ffn_gate.weight", 2, 0, 2},  {"ffn_up.weight", 2, 0, 2},       {"ffn_down.weight", 2, 2, 0},
    };
    const uint64_t size[4] = {embd, kv_dim, (uint64_t)c->intermediate_size, q_dim};
    char name[64];
    for (int64_t l = 0; l < c->n_layers; l++)
        for (size_t i = 0; i < sizeof LAYER / sizeof *LAYER; i++) {
            snprintf(name, sizeof name, "blk.%" PRId64 ".%s", l, LAYER[i].name);
            QPK_TRY(expect_tensor(g, name, LAYER[i].n_dims, size[LAYER[i].ne0], size[LAYER[i].ne1], &found, e));
        }
    if (found != qpk_gguf_n_tensors(g))
        return qpk_err_setf(e, QPK_E_MISMATCH, "%zu tensors beyond those of a qwen2 model",
                            qpk_gguf_n_tensors(g) - found);
    return QPK_OK;
}

/* ---------------------------------------------------------------- names */

static const char *const GGUF_ROLE[QPK_ROLE_COUNT_] = {
    [QPK_ROLE_EMBED] = "token_embd.weight",      [QPK_ROLE_ATTN_NORM] = "attn_norm.weight",
    [QPK_ROLE_Q] = "attn_q.weight",              [QPK_ROLE_Q_BIAS] = "attn_q.bias",
    [QPK_ROLE_K] = "attn_k.weight",              [QPK_ROLE_K_BIAS] = "attn_k.bias",
    [QPK_ROLE_V] = "attn_v.weight",              [QPK_ROLE_V_BIAS] = "attn_v.bias",
    [QPK_ROLE_O] = "attn_output.weight",         [QPK_ROLE_FFN_NORM] = "ffn_norm.weight",
    [QPK_ROLE_GATE] = "ffn_gate.weight",         [QPK_ROLE_UP] = "ffn_up.weight",
    [QPK_ROLE_DOWN] = "ffn_down.weight",         [QPK_ROLE_FINAL_NORM] = "output_norm.weight",
    [QPK_ROLE_LM_HEAD] = "output.weight",
};

void qpk_gguf_tensor_name(char *buf, size_t cap, qpk_role role, int layer)
{
    if (qpk_role_is_per_layer(role))
        snprintf(buf, cap, "blk.%d.%s", layer, GGUF_ROLE[role]);
    else
        snprintf(buf, cap, "%s", GGUF_ROLE[role]);
}

/* ------------------------------------------------------- the qwen2.* keys */

/*
 * What each qwen2.* key is to qpk. llama.cpp reads more of them than the eight a Qwen2
 * model needs, and applies what it reads: a key qpk did not apply would make it compute
 * another model. So every qwen2.* key is either applied (read into the config above), or
 * accepted only with the value that changes nothing, or refused by name; a key not in
 * this table is refused too (it may change the computation in a way qpk cannot know).
 */
typedef enum key_rule {
    APPLIED,     /* read into the config by qpk_gguf_qwen2 */
    HEAD_DIM,    /* an unsigned integer equal to embedding_length / head_count */
    ZERO,        /* an unsigned integer 0 */
    NO_SCALING,  /* a float 0 or 1: llama.cpp's freq scale is 1 / it, 0 meaning none */
    ONE,         /* a float 1 */
    NONE_TYPE,   /* the string "none" or "linear" (with no factor: linear by 1) */
    TRUE_BOOL,   /* the bool true */
    BOOL_NOTE,   /* any bool: a note that changes no computation */
    VOCAB,       /* an unsigned integer equal to the tokens or the embedding rows */
} key_rule;

static const struct {
    const char *key; /* after "qwen2." */
    key_rule rule;
    const char *what; /* what qpk does not implement, for the refusal */
} QWEN2_KEYS[] = {
    {"block_count", APPLIED, NULL},
    {"context_length", APPLIED, NULL},
    {"embedding_length", APPLIED, NULL},
    {"feed_forward_length", APPLIED, NULL},
    {"attention.head_count", APPLIED, NULL},
    {"attention.head_count_kv", APPLIED, NULL},
    {"attention.layer_norm_rms_epsilon", APPLIED, NULL},
    {"rope.freq_base", APPLIED, NULL},
    {"rope.dimension_count", HEAD_DIM, "partial rotary embeddings (RoPE on part of each head)"},
    {"attention.key_length", HEAD_DIM, "key heads of another width than embedding_length / head_count"},
    {"attention.value_length", HEAD_DIM, "value heads of another width than embedding_length / head_count"},
    {"expert_count", ZERO, "mixture-of-experts layers (qwen2 models are dense)"},
    {"expert_used_count", ZERO, "mixture-of-experts layers (qwen2 models are dense)"},
    {"rope.scale_linear", NO_SCALING, "rope scaling"},
    {"rope.scaling.factor", NO_SCALING, "rope scaling"},
    {"rope.scaling.attn_factor", ONE, "rope scaling"},
    {"rope.scaling.type", NONE_TYPE, "rope scaling (YaRN, linear)"},
    {"rope.scaling.finetuned", BOOL_NOTE, NULL},
    {"attention.causal", TRUE_BOOL, "non-causal attention"},
    {"vocab_size", VOCAB, NULL},
};

#define NOT_RUN "; the file is refused rather than run without it"

/* One qwen2.* key (name: the whole key) against its rule. */
static qpk_status check_key(const qpk_gguf *g, const char *name, const qpk_gguf_value *v, key_rule rule,
                            const char *what, const qpk_config *c, uint64_t tokens, qpk_err *e)
{
    uint64_t u;
    switch (rule) {
    case APPLIED:
    case BOOL_NOTE:
        if (rule == BOOL_NOTE && v->type != QPK_GGUF_BOOL)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not a bool", name);
        return QPK_OK;
    case HEAD_DIM:
        QPK_TRY(get_uint(g, name, true, 0, &u, e));
        if (u != (uint64_t)c->head_dim)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %" PRIu64 ", not the head dimension %" PRId64
                                " (embedding_length / head_count): qpk does not implement %s" NOT_RUN, name, u,
                                c->head_dim, what);
        return QPK_OK;
    case ZERO:
        QPK_TRY(get_uint(g, name, true, 0, &u, e));
        if (u != 0)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %" PRIu64 ": qpk does not implement %s" NOT_RUN, name, u,
                                what);
        return QPK_OK;
    case NO_SCALING:
    case ONE:
        if (v->type != QPK_GGUF_F32 && v->type != QPK_GGUF_F64)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not a float", name);
        if (v->num.f != 1.0 && !(rule == NO_SCALING && v->num.f == 0.0))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %g: qpk does not implement %s" NOT_RUN, name, v->num.f,
                                what);
        return QPK_OK;
    case NONE_TYPE:
        if (v->type != QPK_GGUF_STRING)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not a string", name);
        if (!is_string(g, name, "none") && !is_string(g, name, "linear"))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is \"%.*s\": qpk does not implement %s" NOT_RUN, name,
                                (int)(v->len < 32 ? v->len : 32), v->str, what);
        return QPK_OK;
    case TRUE_BOOL:
        if (v->type != QPK_GGUF_BOOL)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not a bool", name);
        if (!v->num.u)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is false: qpk does not implement %s" NOT_RUN, name, what);
        return QPK_OK;
    case VOCAB:
        QPK_TRY(get_uint(g, name, true, 0, &u, e));
        if (u != tokens && u != (uint64_t)c->vocab_size)
            return qpk_err_setf(e, QPK_E_MISMATCH, "%s is %" PRIu64 ", but the file has %" PRIu64 " tokens and %" PRId64
                                " embedding rows", name, u, tokens, c->vocab_size);
        return QPK_OK;
    }
    return QPK_OK;
}

/*
 * The tokenizer a .qpk made from this file will carry, loaded by the code that will load
 * it then (qtokenize, qverify --text): what qpk's tokenizer refuses (a merge given twice,
 * a merge whose result is not a token, two control tokens of the same text) is refused
 * here, and every id it has must have an embedding row.
 */
static qpk_status check_tokenizer_loads(const qpk_gguf *g, const qpk_config *c, qpk_err *e)
{
    char *json;
    size_t len;
    qpk_tokenizer *tok = NULL;
    qpk_status s = qpk_gguf_tokenizer_json(g, &json, &len, e);
    if (s == QPK_OK)
        s = qpk_tokenizer_load(&tok, json, len, e);
    if (s == QPK_OK)
        s = qpk_tokenizer_fits(tok, c->vocab_size, e);
    qpk_tokenizer_free(tok);
    free(json);
    return s == QPK_OK ? s : qpk_err_prefix(e, s, "the tokenizer of tokenizer.ggml.*, as qpk's tokenizer reads it");
}

/* Every qwen2.* key applied, neutral, or refused by name (one pass over the keys). */
static qpk_status check_qwen2_keys(const qpk_gguf *g, const qpk_config *c, uint64_t tokens, qpk_err *e)
{
    for (size_t i = 0; i < qpk_gguf_n_kv(g); i++) {
        qpk_gguf_value v;
        const char *key = qpk_gguf_kv_at(g, i, &v);
        if (strncmp(key, "qwen2.", 6) != 0)
            continue;
        size_t k = 0;
        while (k < sizeof QWEN2_KEYS / sizeof *QWEN2_KEYS && strcmp(key + 6, QWEN2_KEYS[k].key) != 0)
            k++;
        if (k < sizeof QWEN2_KEYS / sizeof *QWEN2_KEYS) {
            QPK_TRY(check_key(g, key, &v, QWEN2_KEYS[k].rule, QWEN2_KEYS[k].what, c, tokens, e));
            continue;
        }
        if (!strncmp(key, "qwen2.rope.scaling.", 19))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%.200s: qpk does not implement rope scaling (YaRN)" NOT_RUN,
                                key);
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%.200s is a qwen2 key qpk does not know: it may change the "
                            "computation (llama.cpp applies the keys it reads)" NOT_RUN, key);
    }
    return QPK_OK;
}

/* ------------------------------------------------------------------- API */

qpk_status qpk_gguf_qwen2(const qpk_gguf *g, qpk_config *cfg, qpk_err *e)
{
    qpk_gguf_value arch;
    if (!qpk_gguf_find(g, "general.architecture", &arch) || arch.type != QPK_GGUF_STRING)
        return qpk_err_setf(e, QPK_E_MISMATCH, "no general.architecture");
    if (!is_string(g, "general.architecture", "qwen2"))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "general.architecture is \"%.*s\": qpk reads \"qwen2\" models",
                            (int)(arch.len < 64 ? arch.len : 64), arch.str);
    uint64_t layers, ctx, embd, ff, heads, kv_heads, vocab = 0;
    double theta, eps;
    QPK_TRY(get_uint(g, "qwen2.block_count", true, 0, &layers, e));
    QPK_TRY(get_uint(g, "qwen2.context_length", true, 0, &ctx, e));
    QPK_TRY(get_uint(g, "qwen2.embedding_length", true, 0, &embd, e));
    QPK_TRY(get_uint(g, "qwen2.feed_forward_length", true, 0, &ff, e));
    QPK_TRY(get_uint(g, "qwen2.attention.head_count", true, 0, &heads, e));
    QPK_TRY(get_uint(g, "qwen2.attention.head_count_kv", false, heads, &kv_heads, e));
    QPK_TRY(get_positive(g, "qwen2.rope.freq_base", false, 10000.0, &theta, e)); /* llama.cpp's default */
    QPK_TRY(get_positive(g, "qwen2.attention.layer_norm_rms_epsilon", true, 0, &eps, e));
    QPK_TRY(check_tokenizer(g, &vocab, e));
    const uint64_t tokens = vocab;
    const qpk_gguf_tensor *emb = qpk_gguf_find_tensor(g, "token_embd.weight");
    if (emb && emb->n_dims == 2 && emb->ne[1] > vocab)
        vocab = emb->ne[1]; /* rows past the tokenizer (padding), as in qwen's own files */
    /* Filled straight from the keys, then the rules every description passes (qpk_config_check). */
    memset(cfg, 0, sizeof *cfg);
    const struct {
        int64_t *field;
        uint64_t v;
    } ints[] = {{&cfg->vocab_size, vocab},       {&cfg->hidden_size, embd},
                {&cfg->intermediate_size, ff},   {&cfg->n_layers, layers},
                {&cfg->n_heads, heads},          {&cfg->n_kv_heads, kv_heads},
                {&cfg->max_position_embeddings, ctx}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) /* past INT64_MAX reads as -1: refused by the check */
        *ints[i].field = ints[i].v > INT64_MAX ? -1 : (int64_t)ints[i].v;
    cfg->rope_theta = theta, cfg->rms_norm_eps = eps;
    cfg->head_dim = heads && embd % heads == 0 ? cfg->hidden_size / cfg->n_heads : 0;
    cfg->tie_word_embeddings = !qpk_gguf_find_tensor(g, "output.weight");
    /* transformers' Qwen2Config defaults for what GGUF does not say */
    cfg->sliding_window = 4096, cfg->max_window_layers = 28;
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "silu");
    cfg->bos_token_id = -1;
    uint64_t id;
    qpk_gguf_value v;
    if (qpk_gguf_find(g, "tokenizer.ggml.bos_token_id", &v) &&
        get_uint(g, "tokenizer.ggml.bos_token_id", true, 0, &id, NULL) == QPK_OK)
        cfg->bos_token_id = id > INT64_MAX ? INT64_MAX : (int64_t)id;
    if (qpk_gguf_find(g, "tokenizer.ggml.eos_token_id", &v) &&
        get_uint(g, "tokenizer.ggml.eos_token_id", true, 0, &id, NULL) == QPK_OK)
        cfg->eos_token_ids[cfg->n_eos++] = id > INT64_MAX ? INT64_MAX : (int64_t)id;
    qpk_status st = qpk_config_check(cfg, e);
    if (st != QPK_OK)
        return qpk_err_prefix(e, st, "the GGUF's qwen2 hyperparameters");
    QPK_TRY(check_qwen2_keys(g, cfg, tokens, e));
    QPK_TRY(check_tensors(g, cfg, e));
    return check_tokenizer_loads(g, cfg, e);
}

/* ----------------------------------------------------------- the tensors */

qpk_status qpk_gguf_matrix(const qpk_gguf *g, qpk_role role, int layer, qpk_matrix *w, qpk_err *e)
{
    char name[64];
    qpk_gguf_tensor_name(name, sizeof name, role, layer);
    const qpk_gguf_tensor *t = qpk_gguf_find_tensor(g, name);
    uint32_t type, group;
    if (!t || !qpk_type_of_ggml(t->type, &type, &group))
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s is missing or of a type qpk lacks", name);
    *w = (qpk_matrix){type, group, t->n_dims == 2 ? (int64_t)t->ne[1] : 1, (int64_t)t->ne[0], t->data, NULL};
    return QPK_OK;
}

qpk_status qpk_gguf_check_scales(const qpk_gguf *g, qpk_err *e)
{
    for (size_t i = 0; i < qpk_gguf_n_tensors(g); i++) {
        const qpk_gguf_tensor *t = qpk_gguf_tensor_at(g, i);
        uint32_t type, group;
        if (!qpk_type_of_ggml(t->type, &type, &group) || !qpk_type_is_quantized(type))
            continue;
        const uint64_t n = t->nbytes / qpk_type_block_bytes(type, group);
        const uint64_t b = qpk_first_bad_scale(type, group, t->data, n);
        if (b < n)
            return qpk_err_setf(e, QPK_E_VALUE, "tensor %s: block %" PRIu64 " has a NaN or infinite scale (%s)", t->name, b,
                                qpk_ggml_type_name(t->type));
    }
    return QPK_OK;
}

/* ------------------------------------------------------------ the tokenizer */

/* A string of the GGUF (not NUL-terminated) as a cJSON string. */
static cJSON *string_of(const char *s, uint64_t n)
{
    char *z = strndup(s, (size_t)n);
    cJSON *j = z ? cJSON_CreateString(z) : NULL;
    free(z);
    return j;
}

/*
 * The tokenizer.json a Qwen2 GGUF's tokenizer.ggml.* keys describe, for qpk's tokenizer
 * (and for a .qpk made from the GGUF): byte-level BPE with the vocabulary's normal tokens
 * and the merges, control tokens (type 3) as special added tokens, user-defined ones (4)
 * as plain added tokens, unused rows (5: padding) left out; Qwen2's pre-tokenizer (the
 * GGUF says pre = qwen2: qpk_gguf_qwen2 checked it) and NFC.
 */
qpk_status qpk_gguf_tokenizer_json(const qpk_gguf *g, char **json, size_t *len, qpk_err *e)
{
    qpk_gguf_value tokens, types, merges;
    *json = NULL, *len = 0;
    if (!qpk_gguf_find(g, "tokenizer.ggml.tokens", &tokens) || tokens.type != QPK_GGUF_ARRAY ||
        tokens.elem_type != QPK_GGUF_STRING || !qpk_gguf_find(g, "tokenizer.ggml.merges", &merges) ||
        merges.type != QPK_GGUF_ARRAY || merges.elem_type != QPK_GGUF_STRING)
        return qpk_err_setf(e, QPK_E_MISMATCH, "the GGUF has no gpt2 tokenizer (tokens and merges)");
    bool typed = qpk_gguf_find(g, "tokenizer.ggml.token_type", &types) && types.type == QPK_GGUF_ARRAY &&
                 types.elem_type == QPK_GGUF_I32 && types.len == tokens.len;
    static const char *const BYTE_LEVEL = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,"
                                          "\"use_regex\":false}";
    static const char *const SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    cJSON *root = cJSON_CreateObject(), *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(root, "normalizer"), "type", "NFC");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer"), *seq = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON *split = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex", SPLIT);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", false);
    cJSON_AddItemToArray(seq, split);
    cJSON_AddItemToArray(seq, cJSON_Parse(BYTE_LEVEL));
    cJSON_AddItemToObject(root, "post_processor", cJSON_Parse(BYTE_LEVEL));
    cJSON_AddItemToObject(root, "decoder", cJSON_Parse(BYTE_LEVEL));
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddBoolToObject(model, "byte_fallback", false);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab"), *ms = cJSON_AddArrayToObject(model, "merges");
    qpk_status s = QPK_OK;
    for (uint64_t i = 0; i < tokens.len && s == QPK_OK; i++) {
        uint64_t n;
        const char *t = qpk_gguf_array_string(g, &tokens, i, &n);
        int32_t type = 1;
        if (typed)
            memcpy(&type, types.elems + 4 * i, 4);
        char *name = strndup(t, (size_t)n);
        if (!name) {
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
            break;
        }
        if (type == 3 || type == 4) {
            cJSON *a = cJSON_CreateObject();
            cJSON_AddNumberToObject(a, "id", (double)i);
            cJSON_AddStringToObject(a, "content", name);
            cJSON_AddBoolToObject(a, "special", type == 3);
            cJSON_AddBoolToObject(a, "normalized", false);
            cJSON_AddItemToArray(added, a);
        } else if (type != 5) {
            cJSON_AddNumberToObject(vocab, name, (double)i);
        }
        free(name);
    }
    for (uint64_t i = 0; i < merges.len && s == QPK_OK; i++) {
        uint64_t n;
        const char *m = qpk_gguf_array_string(g, &merges, i, &n);
        const char *sp = memchr(m, ' ', (size_t)n);
        if (!sp) {
            s = qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.ggml.merges[%" PRIu64 "] is not two tokens", i);
            break;
        }
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, string_of(m, (uint64_t)(sp - m)));
        cJSON_AddItemToArray(pair, string_of(sp + 1, n - (uint64_t)(sp - m) - 1));
        cJSON_AddItemToArray(ms, pair);
    }
    if (s == QPK_OK && !(*json = cJSON_PrintUnformatted(root)))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK)
        *len = strlen(*json);
    cJSON_Delete(root);
    return s;
}

/* tokenizer_config.json as far as a GGUF says it: special tokens and the chat template. */
char *qpk_gguf_tokenizer_config(const qpk_gguf *g)
{
    cJSON *o = cJSON_CreateObject();
    qpk_gguf_value tokens, v;
    bool have_tokens = qpk_gguf_find(g, "tokenizer.ggml.tokens", &tokens);
    static const char *const IDS[][2] = {{"tokenizer.ggml.bos_token_id", "bos_token"},
                                         {"tokenizer.ggml.eos_token_id", "eos_token"},
                                         {"tokenizer.ggml.padding_token_id", "pad_token"}};
    for (size_t i = 0; i < sizeof IDS / sizeof *IDS; i++)
        if (have_tokens && qpk_gguf_find(g, IDS[i][0], &v) && v.type == QPK_GGUF_U32 && v.num.u < tokens.len) {
            uint64_t n;
            const char *s = qpk_gguf_array_string(g, &tokens, v.num.u, &n);
            char *z = strndup(s, (size_t)n);
            if (z)
                cJSON_AddStringToObject(o, IDS[i][1], z);
            free(z);
        }
    if (qpk_gguf_find(g, "tokenizer.ggml.add_bos_token", &v) && v.type == QPK_GGUF_BOOL)
        cJSON_AddBoolToObject(o, "add_bos_token", v.num.u != 0);
    if (qpk_gguf_find(g, "tokenizer.chat_template", &v) && v.type == QPK_GGUF_STRING) {
        char *z = strndup(v.str, (size_t)v.len), *safe = z ? qpk_utf8_dup(z) : NULL;
        if (safe)
            cJSON_AddStringToObject(o, "chat_template", safe);
        free(z), free(safe);
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

