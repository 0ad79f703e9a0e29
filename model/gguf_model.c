/*
 * A GGUF file as a Qwen-family model (llama.cpp's qwen2, qwen2moe, qwen3 and qwen3moe): its
 * hyperparameters become the one qpk_config (checked by qpk_config_check, so the same
 * rules hold), and everything a runtime relies on is checked first: the keys' types and
 * values (every key of the architecture applied or refused), the tokenizer keys and the
 * tokenizer they describe as qpk's tokenizer loads it, and every tensor's name, shape and
 * type.
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

/* What a tensor's type must be: llama.cpp takes norms, biases and routers in f32 only. */
typedef enum tensor_kind { VECTOR, ROUTER, MATRIX } tensor_kind;

/* "[64, 32, 8]": a shape as the refusals print it. */
static void format_ne(char *buf, size_t cap, int n_dims, const uint64_t *ne)
{
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < n_dims && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%" PRIu64, d ? ", " : "", ne[d]);
    if (at < cap)
        snprintf(buf + at, cap - at, "]");
}

/*
 * Tensor name has n_dims dims ne and a type its kind allows. alt_2d: a 1-D shape [n] may
 * also come as [n, 1] (llama.cpp's loader takes trailing dims of 1; its converter writes
 * the shared expert's gate so).
 */
static qpk_status expect_tensor(const qpk_gguf *g, const char *name, int n_dims, const uint64_t *ne, bool alt_2d,
                                tensor_kind kind, size_t *found, qpk_err *e)
{
    const qpk_gguf_tensor *t = qpk_gguf_find_tensor(g, name);
    if (!t)
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s is missing", name);
    bool same = t->n_dims == n_dims || (alt_2d && t->n_dims == 2 && t->ne[1] == 1);
    for (int d = 0; d < n_dims && same; d++)
        same = t->ne[d] == ne[d];
    if (!same) {
        char want[96];
        format_ne(want, sizeof want, n_dims, ne);
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s: expected ne %s%s", name, want,
                            alt_2d ? " (or with a 1 after)" : "");
    }
    if (kind == VECTOR && t->type != QPK_GGML_F32)
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s is %s: norms and biases must be F32", name,
                            qpk_ggml_type_name(t->type));
    if (kind == ROUTER && t->type != QPK_GGML_F32)
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor %s is %s: routers must be F32 (llama.cpp's converter and "
                            "llama-quantize keep them so)", name, qpk_ggml_type_name(t->type));
    uint32_t type, group;
    if (kind == MATRIX && !qpk_type_of_ggml(t->type, &type, &group))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tensor %s is %s: qpk computes with F32, F16, BF16, Q8_0, Q4_0, "
                            "Q4_1, Q5_0, Q5_1, Q2_K .. Q6_K", name, qpk_ggml_type_name(t->type));
    (*found)++;
    return QPK_OK;
}

/* Every tensor the config implies, each once, in GGUF's dimension order; nothing else. */
static qpk_status check_tensors(const qpk_gguf *g, const qpk_config *c, const char *arch, qpk_err *e)
{
    size_t found = 0;
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        int64_t d[2];
        char name[64];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_gguf_tensor_name(name, sizeof name, role, layer);
        const int nd = qpk_role_shape(c, role, d);
        uint64_t ne[3] = {(uint64_t)d[nd - 1], nd == 2 ? (uint64_t)d[0] : 1, 1};
        int n_dims = nd;
        if (qpk_role_is_expert(role)) /* the stacked rows are ggml's [cols, rows per expert, experts] */
            ne[1] = (uint64_t)(d[0] / c->n_experts), ne[2] = (uint64_t)c->n_experts, n_dims = 3;
        const bool shexp_gate = role == QPK_ROLE_SHEXP_ROUTER; /* [1, H] in HF: llama.cpp's [H] */
        if (shexp_gate)
            n_dims = 1;
        const tensor_kind kind = qpk_role_is_matrix(role) ? MATRIX : nd == 2 ? ROUTER : VECTOR;
        QPK_TRY(expect_tensor(g, name, n_dims, ne, shexp_gate, kind, &found, e));
    }
    if (found != qpk_gguf_n_tensors(g))
        return qpk_err_setf(e, QPK_E_MISMATCH, "%zu tensors beyond those of a %s model", qpk_gguf_n_tensors(g) - found,
                            arch);
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
    [QPK_ROLE_LM_HEAD] = "output.weight",        [QPK_ROLE_Q_NORM] = "attn_q_norm.weight",
    [QPK_ROLE_K_NORM] = "attn_k_norm.weight",    [QPK_ROLE_O_BIAS] = "attn_output.bias",
    [QPK_ROLE_ROUTER] = "ffn_gate_inp.weight",   [QPK_ROLE_EXP_GATE] = "ffn_gate_exps.weight",
    [QPK_ROLE_EXP_UP] = "ffn_up_exps.weight",    [QPK_ROLE_EXP_DOWN] = "ffn_down_exps.weight",
    [QPK_ROLE_SHEXP_ROUTER] = "ffn_gate_inp_shexp.weight", [QPK_ROLE_SHEXP_GATE] = "ffn_gate_shexp.weight",
    [QPK_ROLE_SHEXP_UP] = "ffn_up_shexp.weight", [QPK_ROLE_SHEXP_DOWN] = "ffn_down_shexp.weight",
};

void qpk_gguf_tensor_name(char *buf, size_t cap, qpk_role role, int layer)
{
    const char *n = (unsigned)role < QPK_ROLE_COUNT_ && GGUF_ROLE[role] ? GGUF_ROLE[role] : "?";
    if (qpk_role_is_per_layer(role))
        snprintf(buf, cap, "blk.%d.%s", layer, n);
    else
        snprintf(buf, cap, "%s", n);
}

/* general.architecture of each qpk architecture, as llama.cpp spells it. */
static const char *const GGUF_ARCH[QPK_ARCH_COUNT_] = {
    [QPK_ARCH_QWEN2] = "qwen2", [QPK_ARCH_QWEN2_MOE] = "qwen2moe",
    [QPK_ARCH_QWEN3] = "qwen3", [QPK_ARCH_QWEN3_MOE] = "qwen3moe",
};

const char *qpk_gguf_arch_name(qpk_arch a) { return (unsigned)a < QPK_ARCH_COUNT_ ? GGUF_ARCH[a] : "?"; }

/* ------------------------------------------------------- the architecture's keys */

/* The architectures a key rule holds for (bits of qpk_arch). */
#define A_QWEN2 (1u << QPK_ARCH_QWEN2)
#define A_QWEN2_MOE (1u << QPK_ARCH_QWEN2_MOE)
#define A_QWEN3 (1u << QPK_ARCH_QWEN3)
#define A_QWEN3_MOE (1u << QPK_ARCH_QWEN3_MOE)
#define A_ALL (A_QWEN2 | A_QWEN2_MOE | A_QWEN3 | A_QWEN3_MOE)
#define A_DENSE (A_QWEN2 | A_QWEN3)
#define A_MOE (A_QWEN2_MOE | A_QWEN3_MOE)
#define A_Q2 (A_QWEN2 | A_QWEN2_MOE)
#define A_Q3 (A_QWEN3 | A_QWEN3_MOE)

/*
 * What each <arch>.* key is to qpk. llama.cpp reads more keys than a model needs, and
 * applies what it reads: a key qpk did not apply would make it compute another model.
 * So every key of the file's architecture is either applied (read into the config by
 * qpk_gguf_qwen2), or accepted only with the value that changes nothing, or refused by
 * name; a key not in this table is refused too (it may change the computation in a way
 * qpk cannot know).
 */
typedef enum key_rule {
    APPLIED,     /* read (and checked) into the config by qpk_gguf_qwen2 */
    HEAD_DIM,    /* an unsigned integer equal to the head dimension */
    ZERO,        /* an unsigned integer 0 */
    NO_SCALING,  /* a float 0 or 1: llama.cpp's freq scale is 1 / it, 0 meaning none */
    LLAMA_FIXED, /* a float llama.cpp does not read for Qwen: accepted with the value it computes with */
    YARN_EXT,    /* the same, for the extrapolation mix: 1 under YaRN, 0 without */
    YARN_ATTN,   /* the same, for YaRN's cos/sin scale: the attention factor read into the config */
    TRUE_BOOL,   /* the bool true */
    BOOL_NOTE,   /* any bool: a note that changes no computation */
    VOCAB,       /* an unsigned integer equal to the tokens or the embedding rows */
} key_rule;

static const struct {
    const char *key; /* after "<arch>." */
    unsigned archs;
    key_rule rule;
    const char *what; /* what qpk does not implement, for the refusal */
    double value;     /* LLAMA_FIXED: llama.cpp's value */
} ARCH_KEYS[] = {
    {"block_count", A_ALL, APPLIED, NULL, 0},
    {"context_length", A_ALL, APPLIED, NULL, 0},
    {"embedding_length", A_ALL, APPLIED, NULL, 0},
    {"feed_forward_length", A_ALL, APPLIED, NULL, 0},
    {"attention.head_count", A_ALL, APPLIED, NULL, 0},
    {"attention.head_count_kv", A_ALL, APPLIED, NULL, 0},
    {"attention.layer_norm_rms_epsilon", A_ALL, APPLIED, NULL, 0},
    {"rope.freq_base", A_ALL, APPLIED, NULL, 0},
    {"rope.dimension_count", A_ALL, HEAD_DIM, "partial rotary embeddings (RoPE on part of each head)", 0},
    /* llama.cpp's qwen2 and qwen2moe take attn_q as [embedding_length, embedding_length]:
     * their heads are embedding_length / head_count wide, whatever the key says. */
    {"attention.key_length", A_Q2, HEAD_DIM, "key heads of another width than embedding_length / head_count", 0},
    {"attention.key_length", A_Q3, APPLIED, NULL, 0},
    {"attention.value_length", A_Q2, HEAD_DIM, "value heads of another width than embedding_length / head_count", 0},
    {"attention.value_length", A_Q3, HEAD_DIM, "value heads of another width than the key heads", 0},
    {"expert_count", A_DENSE, ZERO, "mixture-of-experts layers in a dense architecture (qwen2moe and qwen3moe "
                                    "have them)", 0},
    {"expert_used_count", A_DENSE, ZERO, "mixture-of-experts layers in a dense architecture (qwen2moe and qwen3moe "
                                         "have them)", 0},
    {"expert_count", A_MOE, APPLIED, NULL, 0},
    {"expert_used_count", A_MOE, APPLIED, NULL, 0},
    {"expert_feed_forward_length", A_MOE, APPLIED, NULL, 0},
    {"expert_shared_feed_forward_length", A_QWEN2_MOE, APPLIED, NULL, 0},
    {"rope.scale_linear", A_ALL, NO_SCALING, "linear rope scaling", 0},
    {"rope.scaling.type", A_ALL, APPLIED, NULL, 0},
    {"rope.scaling.factor", A_ALL, APPLIED, NULL, 0},
    {"rope.scaling.attn_factor", A_ALL, APPLIED, NULL, 0},
    {"rope.scaling.original_context_length", A_ALL, APPLIED, NULL, 0},
    /* llama.cpp's converter writes these from config.json, but llama.cpp reads them only for
     * other architectures: a value other than the one it computes with leaves the file
     * meaning two things. */
    {"rope.scaling.yarn_beta_fast", A_ALL, LLAMA_FIXED, NULL, 32},
    {"rope.scaling.yarn_beta_slow", A_ALL, LLAMA_FIXED, NULL, 1},
    {"rope.scaling.yarn_log_multiplier", A_ALL, LLAMA_FIXED, NULL, 0},
    {"rope.scaling.yarn_ext_factor", A_ALL, YARN_EXT, NULL, 0},
    {"rope.scaling.yarn_attn_factor", A_ALL, YARN_ATTN, NULL, 0},
    {"rope.scaling.finetuned", A_ALL, BOOL_NOTE, NULL, 0},
    {"attention.causal", A_ALL, TRUE_BOOL, "non-causal attention", 0},
    {"vocab_size", A_ALL, VOCAB, NULL, 0},
};

#define NOT_RUN "; the file is refused rather than run without it"

/* A float key's value, or a refusal naming it. */
static qpk_status get_float(const qpk_gguf_value *v, const char *name, double *out, qpk_err *e)
{
    if (v->type != QPK_GGUF_F32 && v->type != QPK_GGUF_F64)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not a float", name);
    *out = v->num.f;
    return QPK_OK;
}

/* One <arch>.* key (name: the whole key) against its rule; hd_basis says where the head dimension came from. */
static qpk_status check_key(const qpk_gguf *g, const char *name, const qpk_gguf_value *v, key_rule rule,
                            const char *what, double value, const qpk_config *c, uint64_t tokens, const char *hd_basis,
                            qpk_err *e)
{
    uint64_t u;
    double f = 0;
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
                                " (%s): qpk does not implement %s" NOT_RUN, name, u, c->head_dim, hd_basis, what);
        return QPK_OK;
    case ZERO:
        QPK_TRY(get_uint(g, name, true, 0, &u, e));
        if (u != 0)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %" PRIu64 ": qpk does not implement %s" NOT_RUN, name, u,
                                what);
        return QPK_OK;
    case NO_SCALING:
        QPK_TRY(get_float(v, name, &f, e));
        if (f != 1.0 && f != 0.0)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %g: qpk does not implement %s" NOT_RUN, name, f, what);
        return QPK_OK;
    case LLAMA_FIXED:
    case YARN_EXT:
    case YARN_ATTN: {
        QPK_TRY(get_float(v, name, &f, e));
        const bool yarn = c->yarn.factor != 0;
        const double want = rule == LLAMA_FIXED ? value : rule == YARN_EXT ? (yarn ? 1 : 0)
                                                                          : (yarn ? c->yarn.attention_factor : 1);
        /* an f32 of the value: within its rounding */
        if (!(fabs(f - want) <= 1e-6 * fabs(want)))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %g, but llama.cpp does not read it for this architecture "
                                "and computes with %g: the file means two things, and qpk refuses it", name, f, want);
        return QPK_OK;
    }
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

/* Every key of the file's architecture applied, neutral, or refused by name (one pass over the keys). */
static qpk_status check_arch_keys(const qpk_gguf *g, const qpk_config *c, const char *arch, uint64_t tokens, qpk_err *e)
{
    const size_t plen = strlen(arch);
    char key_length[64];
    snprintf(key_length, sizeof key_length, "%s.attention.key_length", arch);
    qpk_gguf_value v;
    const char *hd_basis = (c->arch == QPK_ARCH_QWEN3 || c->arch == QPK_ARCH_QWEN3_MOE) && qpk_gguf_find(g, key_length, &v)
                               ? "attention.key_length"
                               : "embedding_length / head_count";
    for (size_t i = 0; i < qpk_gguf_n_kv(g); i++) {
        const char *key = qpk_gguf_kv_at(g, i, &v);
        if (strncmp(key, arch, plen) != 0 || key[plen] != '.')
            continue;
        size_t k = 0;
        while (k < sizeof ARCH_KEYS / sizeof *ARCH_KEYS &&
               (strcmp(key + plen + 1, ARCH_KEYS[k].key) != 0 || !(ARCH_KEYS[k].archs >> c->arch & 1)))
            k++;
        if (k == sizeof ARCH_KEYS / sizeof *ARCH_KEYS)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%.200s is a %s key qpk does not know: it may change the "
                                "computation (llama.cpp applies the keys it reads)" NOT_RUN, key, arch);
        QPK_TRY(check_key(g, key, &v, ARCH_KEYS[k].rule, ARCH_KEYS[k].what, ARCH_KEYS[k].value, c, tokens, hd_basis, e));
    }
    return QPK_OK;
}

/* "<arch>.<suffix>" in buf. */
static const char *arch_key(char *buf, size_t cap, const char *arch, const char *suffix)
{
    snprintf(buf, cap, "%s.%s", arch, suffix);
    return buf;
}

/*
 * RoPE scaling as llama.cpp reads it for these architectures: rope.scaling.type (default
 * "linear") with rope.scaling.factor (absent or 0: none). "yarn" is qpk's YaRN with what
 * llama.cpp computes: beta_fast 32 and beta_slow 1 (it reads no others for Qwen), the
 * pretrained context rope.scaling.original_context_length (else context_length), and
 * cos and sin scaled by rope.scaling.attn_factor x (1 + 0.1 ln factor): llama.cpp's
 * ggml_rope_yarn multiplies in 1 + 0.1 ln(1 / freq_scale) itself (for a factor above 1;
 * the context cancels its own get_mscale), which with attn_factor 1 is transformers'
 * default attention factor. Ramp, blend and corrections are transformers' formulas.
 */
static qpk_status read_rope_scaling(const qpk_gguf *g, const char *arch, qpk_config *c, qpk_err *e)
{
    char key[96];
    qpk_gguf_value v;
    const char *type = "linear";
    size_t tlen = 6;
    if (qpk_gguf_find(g, arch_key(key, sizeof key, arch, "rope.scaling.type"), &v)) {
        if (v.type != QPK_GGUF_STRING)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not a string", key);
        type = v.str, tlen = (size_t)v.len;
    }
    double factor = 0, attn;
    if (qpk_gguf_find(g, arch_key(key, sizeof key, arch, "rope.scaling.factor"), &v)) {
        QPK_TRY(get_float(&v, key, &factor, e));
        if (!isfinite(factor) || factor < 0)
            return qpk_err_setf(e, QPK_E_VALUE, "%s is %g: it must be a finite number, 0 or more", key, factor);
    }
    QPK_TRY(get_positive(g, arch_key(key, sizeof key, arch, "rope.scaling.attn_factor"), false, 1.0, &attn, e));
    const bool yarn = tlen == 4 && !memcmp(type, "yarn", 4);
    if (!yarn && !(tlen == 4 && !memcmp(type, "none", 4)) && !(tlen == 6 && !memcmp(type, "linear", 6)))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s.rope.scaling.type is \"%.*s\": qpk computes plain RoPE and "
                            "\"yarn\"" NOT_RUN, arch, (int)(tlen < 32 ? tlen : 32), type);
    if (!yarn) {
        if (factor != 0 && factor != 1 && tlen == 4) /* "none": llama.cpp ignores the factor */
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s.rope.scaling.factor is %g, but %s.rope.scaling.type is "
                                "\"none\": the file means two things, and qpk refuses it", arch, factor, arch);
        if (factor != 0 && factor != 1)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s.rope.scaling.factor is %g: qpk does not implement linear rope "
                                "scaling" NOT_RUN, arch, factor);
        if (attn != 1)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s.rope.scaling.attn_factor is %g: qpk scales cos and sin only "
                                "under YaRN" NOT_RUN, arch, attn);
        return QPK_OK;
    }
    if (factor == 0)
        factor = 1; /* llama.cpp: no factor is a frequency scale of 1 */
    if (factor > 1024)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s.rope.scaling.factor is %g: qpk's YaRN takes factors from 1 to "
                            "1024", arch, factor);
    if (factor < 1)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s.rope.scaling.factor is %g: a YaRN factor below 1 would shrink "
                            "the context; qpk does not implement it" NOT_RUN, arch, factor);
    uint64_t L;
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "rope.scaling.original_context_length"), false, 0, &L, e));
    if (L == 0) /* llama.cpp: 0 or absent is the training context */
        L = (uint64_t)c->max_position_embeddings;
    if (L > INT64_MAX)
        return qpk_err_setf(e, QPK_E_VALUE, "%s is %" PRIu64 ": past any context", key, L);
    c->yarn = (qpk_yarn){.factor = factor,
                         .attention_factor = attn * (factor > 1 ? 0.1 * log(factor) + 1.0 : 1.0),
                         .beta_fast = 32,
                         .beta_slow = 1,
                         .original_max_position_embeddings = (int64_t)L};
    return QPK_OK;
}

/* The experts as llama.cpp's qwen2moe and qwen3moe read them: every layer sparse. */
static qpk_status read_experts(const qpk_gguf *g, const char *arch, uint64_t ff, qpk_config *c, qpk_err *e)
{
    char key[96], used_key[96];
    uint64_t n, used, moe_ff, shared_ff = 0;
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "expert_count"), true, 0, &n, e));
    QPK_TRY(get_uint(g, arch_key(used_key, sizeof used_key, arch, "expert_used_count"), true, 0, &used, e));
    if (n == 0 || n > QPK_MAX_EXPERTS)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %" PRIu64 ": a %s model has 1 to %d experts", key, n, arch,
                            QPK_MAX_EXPERTS);
    if (used == 0 || used > n)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s is %" PRIu64 ", not in [1, %s = %" PRIu64 "]", used_key, used, key,
                            n);
    /* llama.cpp's default when the key is absent: the dense size spread over the experts used */
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "expert_feed_forward_length"), false, ff / used, &moe_ff, e));
    if (c->arch == QPK_ARCH_QWEN2_MOE)
        QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "expert_shared_feed_forward_length"), false, ff, &shared_ff,
                         e));
    c->n_experts = (int64_t)n, c->n_experts_used = (int64_t)used;
    c->moe_intermediate_size = moe_ff > INT64_MAX ? -1 : (int64_t)moe_ff;
    c->shared_expert_intermediate_size = shared_ff > INT64_MAX ? -1 : (int64_t)shared_ff;
    c->decoder_sparse_step = 1;
    /* llama.cpp's build_moe_ffn: qwen3moe renormalizes the top-k weights, qwen2moe does not */
    c->norm_topk_prob = c->arch == QPK_ARCH_QWEN3_MOE;
    return QPK_OK;
}

/* ------------------------------------------------------------------- API */

qpk_status qpk_gguf_qwen2(const qpk_gguf *g, qpk_config *cfg, qpk_err *e)
{
    qpk_gguf_value v;
    if (!qpk_gguf_find(g, "general.architecture", &v) || v.type != QPK_GGUF_STRING)
        return qpk_err_setf(e, QPK_E_MISMATCH, "no general.architecture");
    int a = 0;
    while (a < QPK_ARCH_COUNT_ && !is_string(g, "general.architecture", GGUF_ARCH[a]))
        a++;
    if (a == QPK_ARCH_COUNT_)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "general.architecture is \"%.*s\": qpk reads \"qwen2\", \"qwen2moe\", "
                            "\"qwen3\" and \"qwen3moe\" models", (int)(v.len < 64 ? v.len : 64), v.str);
    const char *arch = GGUF_ARCH[a];
    const bool qwen3 = a == QPK_ARCH_QWEN3 || a == QPK_ARCH_QWEN3_MOE;
    char key[96];
    uint64_t layers, ctx, embd, ff, heads, kv_heads, head_dim, vocab = 0;
    double theta, eps;
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "block_count"), true, 0, &layers, e));
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "context_length"), true, 0, &ctx, e));
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "embedding_length"), true, 0, &embd, e));
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "feed_forward_length"), true, 0, &ff, e));
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "attention.head_count"), true, 0, &heads, e));
    QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "attention.head_count_kv"), false, heads, &kv_heads, e));
    /* llama.cpp's default: embedding_length / head_count; Qwen3's heads may be wider (key_length) */
    head_dim = heads && embd % heads == 0 ? embd / heads : 0;
    if (qwen3)
        QPK_TRY(get_uint(g, arch_key(key, sizeof key, arch, "attention.key_length"), false, head_dim, &head_dim, e));
    QPK_TRY(get_positive(g, arch_key(key, sizeof key, arch, "rope.freq_base"), false, 10000.0, &theta, e));
    QPK_TRY(get_positive(g, arch_key(key, sizeof key, arch, "attention.layer_norm_rms_epsilon"), true, 0, &eps, e));
    QPK_TRY(check_tokenizer(g, &vocab, e));
    const uint64_t tokens = vocab;
    const qpk_gguf_tensor *emb = qpk_gguf_find_tensor(g, "token_embd.weight");
    if (emb && emb->n_dims == 2 && emb->ne[1] > vocab)
        vocab = emb->ne[1]; /* rows past the tokenizer (padding), as in qwen's own files */
    /* Filled straight from the keys, then the rules every description passes (qpk_config_check). */
    memset(cfg, 0, sizeof *cfg);
    cfg->arch = (qpk_arch)a;
    const struct {
        int64_t *field;
        uint64_t v;
    } ints[] = {{&cfg->vocab_size, vocab},       {&cfg->hidden_size, embd},
                {&cfg->intermediate_size, ff},   {&cfg->n_layers, layers},
                {&cfg->n_heads, heads},          {&cfg->n_kv_heads, kv_heads},
                {&cfg->head_dim, head_dim},      {&cfg->max_position_embeddings, ctx}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) /* past INT64_MAX reads as -1: refused by the check */
        *ints[i].field = ints[i].v > INT64_MAX ? -1 : (int64_t)ints[i].v;
    cfg->rope_theta = theta, cfg->rms_norm_eps = eps;
    cfg->tie_word_embeddings = !qpk_gguf_find_tensor(g, "output.weight");
    /* Qwen3's q/k/v/o biases come together (attention_bias); Qwen2's q/k/v ones always */
    cfg->attention_bias = qwen3 && qpk_gguf_find_tensor(g, "blk.0.attn_q.bias");
    /* transformers' Qwen2Config defaults for what GGUF does not say */
    cfg->sliding_window = 4096, cfg->max_window_layers = 28;
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "silu");
    cfg->bos_token_id = -1;
    uint64_t id;
    if (qpk_gguf_find(g, "tokenizer.ggml.bos_token_id", &v) &&
        get_uint(g, "tokenizer.ggml.bos_token_id", true, 0, &id, NULL) == QPK_OK)
        cfg->bos_token_id = id > INT64_MAX ? INT64_MAX : (int64_t)id;
    if (qpk_gguf_find(g, "tokenizer.ggml.eos_token_id", &v) &&
        get_uint(g, "tokenizer.ggml.eos_token_id", true, 0, &id, NULL) == QPK_OK)
        cfg->eos_token_ids[cfg->n_eos++] = id > INT64_MAX ? INT64_MAX : (int64_t)id;
    if (qpk_config_is_moe(cfg))
        QPK_TRY(read_experts(g, arch, ff, cfg, e));
    QPK_TRY(read_rope_scaling(g, arch, cfg, e));
    qpk_status st = qpk_config_check(cfg, e);
    if (st != QPK_OK)
        return qpk_err_prefix(e, st, "the GGUF's %s hyperparameters", arch);
    QPK_TRY(check_arch_keys(g, cfg, arch, tokens, e));
    QPK_TRY(check_tensors(g, cfg, arch, e));
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
    /* ggml's dims past the first are the rows: experts [cols, rows, experts] are qpk's stacked matrix */
    uint64_t rows = 1;
    for (int d = 1; d < t->n_dims; d++)
        rows *= t->ne[d];
    *w = (qpk_matrix){type, group, (int64_t)rows, (int64_t)t->ne[0], t->data, NULL};
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

/*
 * Named chat templates (tokenizer.chat_templates lists them, tokenizer.chat_template.NAME holds
 * each): tokenizer_config.json's list form, the default first, as transformers writes it.
 */
static void add_named_templates(const qpk_gguf *g, cJSON *o)
{
    qpk_gguf_value names, v;
    if (!qpk_gguf_find(g, "tokenizer.chat_templates", &names) || names.type != QPK_GGUF_ARRAY ||
        names.elem_type != QPK_GGUF_STRING || names.len == 0 || names.len > 64)
        return;
    cJSON *list = cJSON_CreateArray();
    const cJSON *dflt = cJSON_GetObjectItemCaseSensitive(o, "chat_template");
    if (cJSON_IsString(dflt)) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "name", "default");
        cJSON_AddStringToObject(d, "template", dflt->valuestring);
        cJSON_AddItemToArray(list, d);
    }
    for (uint64_t i = 0; i < names.len; i++) {
        uint64_t n;
        const char *s = qpk_gguf_array_string(g, &names, i, &n);
        char key[96];
        if (!s || n == 0 || n > 64 || memchr(s, 0, (size_t)n))
            continue;
        snprintf(key, sizeof key, "tokenizer.chat_template.%.*s", (int)n, s);
        if (!qpk_gguf_find(g, key, &v) || v.type != QPK_GGUF_STRING)
            continue;
        char *name = strndup(s, (size_t)n), *text = strndup(v.str, (size_t)v.len);
        char *safe_name = name ? qpk_utf8_dup(name) : NULL, *safe = text ? qpk_utf8_dup(text) : NULL;
        if (safe_name && safe) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "name", safe_name);
            cJSON_AddStringToObject(t, "template", safe);
            cJSON_AddItemToArray(list, t);
        }
        free(name), free(text), free(safe_name), free(safe);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(o, "chat_template");
    cJSON_AddItemToObject(o, "chat_template", list);
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
    add_named_templates(g, o);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

