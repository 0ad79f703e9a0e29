/*
 * Which type each tensor is stored as: the --dtype / --quant defaults, then the
 * user's rules. One function decides, for the converter and for the recipe it records.
 */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A glob fnmatch reads as written: every '[' opens a class that a ']' closes ("[]" and "[!]" hold a ']'). */
static bool glob_ok(const char *p)
{
    for (; *p; p++) {
        if (*p == '\\' && p[1])
            p++;
        else if (*p == '[') {
            const char *q = p + 1;
            q += *q == '!' || *q == '^';
            q += *q == ']';
            while (*q && *q != ']')
                q++;
            if (!*q)
                return false;
            p = q;
        }
    }
    return true;
}

qpk_status qpk_quant_rule_parse(const char *text, qpk_quant_rule *out, qpk_err *e)
{
    memset(out, 0, sizeof *out);
    const char *eq = strrchr(text, '=');
    if (!eq || eq == text || (size_t)(eq - text) >= sizeof out->pattern)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "rule '%s': expected PATTERN=TYPE[/gN|/row]", text);
    memcpy(out->pattern, text, (size_t)(eq - text));
    if (!glob_ok(out->pattern))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "rule '%s': the pattern has a '[' that no ']' closes", text);
    char type[32];
    snprintf(type, sizeof type, "%s", eq + 1);
    char *slash = strchr(type, '/');
    if (slash) {
        *slash++ = 0;
        char *end;
        if (!strcmp(slash, "row"))
            out->group = QPK_GROUP_ROW;
        else if (slash[0] != 'g' || (out->group = (uint32_t)strtoul(slash + 1, &end, 10)) == 0 || *end)
            return qpk_err_setf(e, QPK_E_INVALID_ARG, "rule '%s': group must be gN (N a multiple of %d) or row",
                                text, QPK_GROUP_QUANTUM);
    }
    qpk_type t;
    if (!qpk_type_from_name(type, &t))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "rule '%s': unknown type '%s' (f32, f16, bf16, int8, int4, int4s)",
                            text, type);
    if (slash && out->group != QPK_GROUP_ROW && qpk_type_is_quantized(t) && !qpk_group_ok(t, out->group, 0))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "rule '%s': group must be gN (N a multiple of %d) or row", text,
                            QPK_GROUP_QUANTUM);
    if (slash && !qpk_type_is_quantized(t))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "rule '%s': only quantized types take a group", text);
    out->type = (int)t;
    return QPK_OK;
}

bool qpk_quant_rule_matches(const qpk_quant_rule *r, const char *name)
{
    if (strpbrk(r->pattern, "*?["))
        return fnmatch(r->pattern, name, 0) == 0;
    return strstr(name, r->pattern) != NULL;
}

void qpk_tensor_stored(const qpk_convert_opts *o, qpk_role role, uint32_t *type, uint32_t *group)
{
    if (o->method == QPK_METHOD_AWQ && o->calib.awq_fold_only && qpk_role_is_per_layer(role) && qpk_role_is_matrix(role))
        *type = QPK_TYPE_F32, *group = 0;
}

const char *qpk_method_name(qpk_method m)
{
    static const char *const NAMES[] = {"rtn", "gptq", "awq", "imatrix", "awq+gptq"};
    return m <= QPK_METHOD_AWQ_GPTQ ? NAMES[m] : "?";
}

bool qpk_method_uses_gptq(qpk_method m) { return m == QPK_METHOD_GPTQ || m == QPK_METHOD_AWQ_GPTQ; }
bool qpk_method_uses_awq(qpk_method m) { return m == QPK_METHOD_AWQ || m == QPK_METHOD_AWQ_GPTQ; }

const char *qpk_preset_name(qpk_preset p)
{
    static const char *const NAMES[] = {"none", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "iq4_xs", "iq4_nl"};
    return p <= QPK_PRESET_IQ4_NL ? NAMES[p] : "?";
}

bool qpk_preset_from_name(const char *name, qpk_preset *out)
{
    for (int p = QPK_PRESET_Q4_K_M; p <= QPK_PRESET_IQ4_NL; p++)
        if (!strcmp(name, qpk_preset_name((qpk_preset)p))) {
            *out = (qpk_preset)p;
            return true;
        }
    return false;
}

/* llama.cpp's mixes give some layers more bits: the first and last eighth, and every third between. */
static bool more_bits(int layer, int64_t n_layers)
{
    return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

/*
 * The type of a matrix under a preset, as llama-quantize's mixes choose it for the
 * family: the preset's type for the linears; v_proj and every down projection (dense,
 * experts', shared expert's) in Q6_K in the layers more_bits picks (_M mixes); the head
 * (the embedding, when tied) in Q6_K (Q8_0 for q8_0); an untied embedding in the preset's
 * type. llama-quantize also special-cases models of exactly 8 experts: k_proj and v_proj
 * in Q8_0, and o_proj in Q5_K under Q4_K_M, IQ4_XS and IQ4_NL. Under IQ4_XS and IQ4_NL,
 * v_proj is Q5_K where n_heads / n_kv_heads >= 4, and the down projections of the first
 * eighth of the layers are Q5_K unless the weights are calibrated (llama-quantize's "no
 * imatrix" guard; qpk's calibrated methods are its imatrix and more).
 */
static uint32_t preset_type(qpk_preset p, qpk_role role, int layer, const qpk_config *c, bool calibrated)
{
    static const uint32_t BASE[] = {[QPK_PRESET_Q4_K_M] = QPK_TYPE_Q4_K, [QPK_PRESET_Q5_K_M] = QPK_TYPE_Q5_K,
                                    [QPK_PRESET_Q6_K] = QPK_TYPE_Q6_K,   [QPK_PRESET_Q8_0] = QPK_TYPE_INT8,
                                    [QPK_PRESET_IQ4_XS] = QPK_TYPE_IQ4_XS, [QPK_PRESET_IQ4_NL] = QPK_TYPE_IQ4_NL};
    const uint32_t base = BASE[p];
    const bool mixed = p == QPK_PRESET_Q4_K_M || p == QPK_PRESET_Q5_K_M, eight = c->n_experts == 8;
    const bool iq4 = p == QPK_PRESET_IQ4_XS || p == QPK_PRESET_IQ4_NL;
    const bool down = role == QPK_ROLE_DOWN || role == QPK_ROLE_EXP_DOWN || role == QPK_ROLE_SHEXP_DOWN;
    if (role == QPK_ROLE_LM_HEAD || (role == QPK_ROLE_EMBED && c->tie_word_embeddings))
        return p == QPK_PRESET_Q8_0 ? QPK_TYPE_INT8 : QPK_TYPE_Q6_K;
    if (eight && (role == QPK_ROLE_V || role == QPK_ROLE_K))
        return QPK_TYPE_INT8;
    if (eight && role == QPK_ROLE_O && (p == QPK_PRESET_Q4_K_M || iq4))
        return QPK_TYPE_Q5_K;
    if (mixed && (role == QPK_ROLE_V || down) && more_bits(layer, c->n_layers))
        return QPK_TYPE_Q6_K;
    if (iq4 && role == QPK_ROLE_V && c->n_heads >= 4 * c->n_kv_heads)
        return QPK_TYPE_Q5_K;
    if (iq4 && down && !calibrated && layer < c->n_layers / 8)
        return QPK_TYPE_Q5_K;
    return base;
}

/* A type of super-blocks whose rows are not whole super-blocks of 256 falls back as llama.cpp's do. */
static void k_fallback(uint32_t *type, uint32_t *group, int64_t cols)
{
    const qpk_type_info *t = qpk_type_info_of(*type);
    if (!t || t->block != 256 || cols % 256 == 0)
        return;
    *type = *type == QPK_TYPE_Q4_K    ? QPK_TYPE_Q5_0
            : *type == QPK_TYPE_Q5_K  ? QPK_TYPE_Q5_1
            : *type == QPK_TYPE_IQ4_XS ? QPK_TYPE_IQ4_NL
                                      : QPK_TYPE_INT8;
    *group = 32;
}

qpk_status qpk_tensor_plan(const qpk_convert_opts *o, const qpk_config *c, const qpk_st_tensor *src, qpk_role role,
                           int layer, const char *name, uint32_t *type, uint32_t *group, qpk_err *e)
{
    bool vector = !qpk_role_is_matrix(role);
    *group = 0;
    if (o->preset) {
        const bool calibrated = o->method != QPK_METHOD_RTN || o->imatrix != NULL;
        *type = vector ? QPK_TYPE_F32 : preset_type(o->preset, role, layer, c, calibrated);
        *group = qpk_type_is_quantized(*type) ? 32 : 0;
    } else if (o->quant) {
        /* GPTQ, AWQ and compressed-tensors folders keep the embedding float; MLX quantizes it as the linears (mlx-lm) */
        bool hf = qpk_output_is_folder(o->to) && o->to != QPK_OUT_MLX;
        *type = vector ? QPK_TYPE_F32
                : (role == QPK_ROLE_EMBED || role == QPK_ROLE_LM_HEAD)
                    ? (hf ? (o->dtype < 0 ? qpk_st_keep_type(src->dtype) : (uint32_t)o->dtype)
                          : o->to == QPK_OUT_MLX ? (uint32_t)o->quant : QPK_TYPE_INT8)
                    : (uint32_t)o->quant;
        *group = qpk_type_is_quantized(*type) ? o->group : 0;
    } else {
        *type = o->dtype < 0 ? qpk_st_keep_type(src->dtype) : (uint32_t)o->dtype;
    }
    /* A quantized type in a rule applies to matrices only: norms and biases keep theirs. */
    for (size_t i = 0; i < o->n_rules; i++)
        if (qpk_quant_rule_matches(&o->rules[i], name) && !(vector && qpk_type_is_quantized((uint32_t)o->rules[i].type))) {
            *type = (uint32_t)o->rules[i].type;
            *group = qpk_type_is_quantized(*type) ? (o->rules[i].group ? o->rules[i].group : o->group) : 0;
        }
    if (vector && o->to == QPK_OUT_GGUF)
        *type = QPK_TYPE_F32; /* llama.cpp takes norms and biases in f32 only */
    if (!qpk_type_is_quantized(*type))
        return QPK_OK;
    int64_t cols = src->shape[src->ndim - 1];
    const qpk_type_info *ti = qpk_type_info_of(*type);
    if (ti->block) /* ggml's types fix their block */
        *group = ti->block;
    k_fallback(type, group, cols);
    if (*group == QPK_GROUP_ROW)
        *group = (uint32_t)cols;
    if (!qpk_group_ok(*type, *group, cols) && o->preset)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "tensor '%s': rows of %lld are not whole blocks of 32, which every type of the %s preset "
                            "(and its fallbacks) needs: a rule keeping this tensor in f16 or bf16 (which take any row) "
                            "makes the rest of the preset apply", name, (long long)cols, qpk_preset_name(o->preset));
    if (!qpk_group_ok(*type, *group, cols))
        return qpk_err_setf(e, QPK_E_INVALID_ARG,
                            "tensor '%s': rows of %lld are not a whole number of groups of %u (groups are multiples "
                            "of %d dividing the row; try another group size, or a rule for this tensor)",
                            name, (long long)cols, *group, QPK_GROUP_QUANTUM);
    return QPK_OK;
}
