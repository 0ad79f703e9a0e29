/*
 * GPTQ and AWQ checkpoints (the layouts of Qwen's own quantized releases and of the GPU
 * serving stacks), read exactly: each linear's packed codes, zero points and scales
 * become qpk blocks whose weights are, bit for bit, those the formats' reference
 * dequantization gives. Layouts (per linear P, `in` inputs, `out` outputs):
 *
 *   GPTQ: P.qweight I32 [in/pn, out], pn = 32/bits codes per word, input r*pn+j of word
 *         row r in bits bits*j..; P.qzeros I32 [groups, out/pn] packed the same way
 *         along the outputs, holding zero - 1 (checkpoint_format gptq, "v1") or the zero
 *         (gptq_v2); P.scales F16 [groups, out]; P.g_idx I32 [in], the group of each
 *         input (absent: i / group_size). w[o][i] = scale[g][o] * (q[i][o] - zero[g][o]).
 *   AWQ (GEMM): P.qweight I32 [in, out/8]: nibble k of word c of row i is output
 *         8c + ORDER[k], ORDER = 0 2 4 6 1 3 5 7; P.qzeros I32 [groups, out/8] packed
 *         the same way; P.scales F16 [groups, out]; g = i / group_size.
 *
 * In GPTQ v1 a zero of 0 is stored as -1, whose low bits read back as 15 (4-bit) or
 * 255 (8-bit): zero + 1 = 16 or 256. qpk reads it as the ecosystem's kernels do
 * (AutoGPTQ's, ExLlama's, vLLM's all add 1 to the stored bits), so it computes with the
 * weights those runtimes compute with; the zero fits the block's zero point (int4: a
 * byte; int8z: 16 bits).
 *
 * AutoRound's folders (Intel's auto-round) use these same layouts, named by their
 * packing_format, with per-module schemes (extra_config) resolved per linear as
 * compressed-tensors' config groups are.
 *
 * An act-order checkpoint (desc_act: groups follow g_idx, not column order) becomes
 * contiguous groups by storing the columns sorted by group, with the input permutation
 * beside the weight (FORMAT.md, version 2), as ExLlama does.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk_json.h"

/* AWQ's nibble k of a word holds output 8c + ORDER[k]; INVERSE[o % 8] is that k. */
static const int AWQ_INVERSE[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/* ------------------------------------------------------ quantization_config */

static qpk_status get_int(const cJSON *o, const char *key, int64_t dflt, int64_t *out, qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it || cJSON_IsNull(it)) {
        *out = dflt;
        return QPK_OK;
    }
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || fabs(it->valuedouble) > 1e9)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: '%s' is not an integer", key);
    *out = (int64_t)it->valuedouble;
    return QPK_OK;
}

static qpk_status get_bool(const cJSON *o, const char *key, bool dflt, bool *out, qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it || cJSON_IsNull(it)) {
        *out = dflt;
        return QPK_OK;
    }
    if (!cJSON_IsBool(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: '%s' is not true or false", key);
    *out = cJSON_IsTrue(it);
    return QPK_OK;
}

/* A string, or NULL when absent or null; any other type is refused by name. */
static qpk_status get_str(const cJSON *o, const char *key, const char **out, qpk_err *e)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!it || cJSON_IsNull(it))
        return QPK_OK;
    if (!cJSON_IsString(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: '%s' is not a string", key);
    *out = it->valuestring;
    return QPK_OK;
}


/* ------------------------------------------------- compressed-tensors' config */

/*
 * A "re:" pattern is a Python regular expression; the ones llm-compressor's recipes write
 * use literal text, '.', '.*', '\.' and an anchoring '^' or '$'. Those are matched here;
 * any other feature is refused by name rather than matched wrongly.
 */
static qpk_status check_pattern(const char *what, const char *t, qpk_err *e)
{
    if (strncmp(t, "re:", 3))
        return QPK_OK;
    bool any = false; /* the previous character is an unescaped '.', which a '*' may follow */
    for (const char *p = t + 3; *p; p++) {
        if (*p == '\\') {
            if (p[1] != '.' && p[1] != '_' && p[1] != '-')
                return qpk_err_setf(e, QPK_E_UNSUPPORTED, "quantization_config: %s \"%.80s\" uses the escape '\\%c': "
                                    "qpk matches literal text, '.', '.*', '\\.', '^' and '$'", what, t, p[1] ? p[1] : ' ');
            p++;
            any = false;
            continue;
        }
        if (strchr("[](){}|+?", *p) || (*p == '*' && !any) || (*p == '^' && p != t + 3) || (*p == '$' && p[1]))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "quantization_config: %s \"%.80s\" uses '%c': qpk matches "
                                "literal text, '.', '.*', '\\.', '^' and '$'", what, t, *p);
        any = *p == '.';
    }
    return QPK_OK;
}

/*
 * Within that subset a pattern is a glob ('.*' any run, '.' any one character) matched at
 * the start of the name, reaching its end only with '$'; matched as globs are, remembering
 * only the last '.*', so a hostile pattern of many '.*' costs time linear in each length's
 * product, never exponential.
 */
enum { ANY_RUN = -1, ANY_ONE = -2 };

bool qpk_ct_match(const char *target, const char *name)
{
    if (strncmp(target, "re:", 3))
        return !strcmp(target, name);
    int tok[128], n = 0;
    const char *p = target + 3;
    if (*p == '^')
        p++;
    bool anchored_end = false;
    while (*p && n < 126) {
        if (p[0] == '$' && !p[1])
            anchored_end = true, p++;
        else if (p[0] == '.' && p[1] == '*')
            tok[n++] = ANY_RUN, p += 2;
        else if (p[0] == '.')
            tok[n++] = ANY_ONE, p++;
        else if (p[0] == '\\' && p[1])
            tok[n++] = (unsigned char)p[1], p += 2;
        else
            tok[n++] = (unsigned char)*p++;
    }
    if (!anchored_end) /* re.match: a prefix is enough */
        tok[n++] = ANY_RUN;
    size_t i = 0, len = strlen(name), mark = 0;
    int k = 0, star = -1;
    while (i < len) {
        if (k < n && (tok[k] == ANY_ONE || tok[k] == (unsigned char)name[i]))
            k++, i++;
        else if (k < n && tok[k] == ANY_RUN)
            star = k++, mark = i;
        else if (star >= 0)
            k = star + 1, i = ++mark;
        else
            return false;
    }
    while (k < n && tok[k] == ANY_RUN)
        k++;
    return k == n;
}

/* A list of names or patterns (targets, ignore) into dst; at most cap of at most len - 1 bytes. */
static qpk_status get_names(const cJSON *o, const char *key, const char *where, char (*dst)[96], int cap, int *n,
                            bool required, qpk_err *e)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key), *it;
    *n = 0;
    if (!a || cJSON_IsNull(a)) {
        if (required)
            return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: %s has no %s", where, key);
        return QPK_OK;
    }
    if (!cJSON_IsArray(a))
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: %s's %s is not a list", where, key);
    cJSON_ArrayForEach(it, a)
    {
        if (!cJSON_IsString(it) || !it->valuestring[0] || strlen(it->valuestring) >= 96)
            return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: an entry of %s's %s is not a name", where, key);
        if (*n == cap)
            return qpk_err_setf(e, QPK_E_LIMIT, "quantization_config: %s has more than %d %s", where, cap, key);
        QPK_TRY(check_pattern(key, it->valuestring, e));
        snprintf(dst[(*n)++], 96, "%s", it->valuestring);
    }
    if (required && !*n)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: %s's %s is empty", where, key);
    return QPK_OK;
}

/* A format other than pack-quantized, refused with what it is. */
static qpk_status refuse_format(const char *where, const char *fmt, qpk_err *e)
{
    const char *why = !strcmp(fmt, "int-quantized")     ? " (8-bit weights and activations, W8A8)"
                      : !strcmp(fmt, "float-quantized") ? " (FP8 weights)"
                      : !strncmp(fmt, "nvfp4", 5)       ? " (NVFP4 weights)"
                      : !strcmp(fmt, "naive-quantized") ? " (unpacked integer weights)"
                      : !strcmp(fmt, "marlin-24")       ? " (2:4 sparse Marlin)"
                                                        : "";
    return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors %s format \"%.40s\"%s: qpk reads pack-quantized "
                        "(weight-only int4/int8)", where, fmt, why);
}

/* The weights of one config group; everything not weight-only int 4/8-bit refused by name. */
static qpk_status parse_ct_group(const cJSON *g, const char *top_fmt, qpk_ct_group *cg, qpk_err *e)
{
    const char *n = cg->name, *fmt, *type, *strategy, *actorder = NULL;
    if (!cJSON_IsObject(g))
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: config group %s is not an object", n);
    QPK_TRY(get_names(g, "targets", n, cg->targets, QPK_CT_TARGETS, &cg->n_targets, true, e));
    QPK_TRY(get_str(g, "format", &fmt, e));
    if (!fmt)
        fmt = top_fmt;
    if (!fmt)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: config group %s has no format, nor has the config",
                            n);
    if (strcmp(fmt, "pack-quantized")) {
        char where[64];
        snprintf(where, sizeof where, "config group %s's", n);
        return refuse_format(where, fmt, e);
    }
    static const char *const ACTS[2] = {"input_activations", "output_activations"};
    for (int i = 0; i < 2; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(g, ACTS[i]);
        if (a && !cJSON_IsNull(a))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors config group %s quantizes its %s (a "
                                "W8A8-style scheme): qpk reads weight-only schemes (%s null)", n, ACTS[i], ACTS[i]);
    }
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(g, "weights");
    if (!cJSON_IsObject(w))
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: config group %s has no weights object", n);
    int64_t bits, group;
    bool dynamic;
    QPK_TRY(get_int(w, "num_bits", -1, &bits, e));
    QPK_TRY(get_str(w, "type", &type, e));
    QPK_TRY(get_bool(w, "symmetric", true, &cg->sym, e));
    QPK_TRY(get_str(w, "strategy", &strategy, e));
    QPK_TRY(get_int(w, "group_size", -1, &group, e));
    QPK_TRY(get_bool(w, "dynamic", false, &dynamic, e));
    const cJSON *ao = cJSON_GetObjectItemCaseSensitive(w, "actorder"), *bs = cJSON_GetObjectItemCaseSensitive(w, "block_structure");
    if (ao && cJSON_IsString(ao))
        actorder = ao->valuestring;
    else if (ao && !cJSON_IsNull(ao) && !cJSON_IsFalse(ao))
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: config group %s's actorder is not a string", n);
    if (!type || strcmp(type, "int"))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors config group %s has weights of type \"%.16s\"%s: "
                            "qpk reads type int", n, type ? type : "(none)",
                            type && !strcmp(type, "float") ? " (FP8/FP4)" : "");
    if (bits == -1)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: config group %s's weights have no num_bits", n);
    if (bits != 4 && bits != 8)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors config group %s has %lld-bit weights: qpk reads 4 "
                            "and 8", n, (long long)bits);
    if (dynamic)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors config group %s quantizes its weights "
                            "dynamically: qpk reads static weights", n);
    if (bs && !cJSON_IsNull(bs))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors config group %s has a block_structure: qpk reads "
                            "strategies group and channel", n);
    if (!strategy || (strcmp(strategy, "group") && strcmp(strategy, "channel")))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors config group %s has strategy \"%.16s\": qpk reads "
                            "group and channel", n, strategy ? strategy : "(none)");
    if (!strcmp(strategy, "channel"))
        group = -1;
    else if (group <= 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: config group %s has strategy group and group_size "
                            "%lld", n, (long long)group);
    if (actorder && strcmp(actorder, "group") && strcmp(actorder, "weight"))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors config group %s has actorder \"%.16s\": qpk "
                            "reads group, weight and null", n, actorder);
    cg->bits = (int)bits, cg->group = group;
    /* "weight" reorders only the quantizer's pass: the stored groups stay in column order, with no g_idx. */
    cg->actorder = actorder && !strcmp(actorder, "group");
    if (cg->actorder && group == -1)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: config group %s has actorder group with strategy "
                            "channel (one group per row has no order)", n);
    return QPK_OK;
}

static qpk_status parse_ct(const cJSON *qc, qpk_hfq *q, qpk_err *e)
{
    const char *fmt, *status;
    QPK_TRY(get_str(qc, "format", &fmt, e));
    QPK_TRY(get_str(qc, "quantization_status", &status, e));
    q->method = QPK_HFQ_CT;
    if (fmt && strcmp(fmt, "pack-quantized") && strcmp(fmt, "mixed-precision"))
        QPK_TRY(refuse_format("checkpoint", fmt, e));
    if (status && strcmp(status, "compressed"))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors quantization_status \"%.32s\": qpk reads "
                            "compressed checkpoints (the weights packed)", status);
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(qc, "sparsity_config");
    if (sp && !cJSON_IsNull(sp) && (!cJSON_IsObject(sp) || sp->child)) {
        const cJSON *sf = cJSON_IsObject(sp) ? cJSON_GetObjectItemCaseSensitive(sp, "format") : NULL;
        if (!cJSON_IsString(sf) || strcmp(sf->valuestring, "dense"))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors sparsity_config (format %.32s): qpk reads "
                                "dense checkpoints", cJSON_IsString(sf) ? sf->valuestring : "unknown");
    }
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(qc, "transform_config");
    if (tc && !cJSON_IsNull(tc) && (!cJSON_IsObject(tc) || tc->child))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors transform_config (rotations of the weights): qpk "
                            "reads checkpoints without transforms");
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(qc, "kv_cache_scheme");
    if (kv && !cJSON_IsNull(kv))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "compressed-tensors kv_cache_scheme: qpk's runtime keeps the KV "
                            "cache in float, so it would not compute what the checkpoint describes");
    QPK_TRY(get_names(qc, "ignore", "the config", q->skip, (int)(sizeof q->skip / sizeof q->skip[0]), &q->n_skip,
                      false, e));
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(qc, "config_groups"), *g;
    if (!cJSON_IsObject(groups) || !groups->child)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: compressed-tensors without config_groups");
    cJSON_ArrayForEach(g, groups)
    {
        if (q->n_ct == QPK_CT_GROUPS)
            return qpk_err_setf(e, QPK_E_LIMIT, "quantization_config: more than %d config groups", QPK_CT_GROUPS);
        qpk_ct_group *cg = &q->ct[q->n_ct++];
        snprintf(cg->name, sizeof cg->name, "%.31s", g->string ? g->string : "?");
        QPK_TRY(parse_ct_group(g, fmt, cg, e));
    }
    /* The first group's scheme stands for the checkpoint where one is asked for (recipes, fuzzers). */
    q->bits = q->ct[0].bits, q->group = q->ct[0].group, q->sym = q->ct[0].sym, q->desc_act = q->ct[0].actorder;
    return QPK_OK;
}

void qpk_hfq_ct_layout(const qpk_hfq *q, int k, qpk_hfq *out)
{
    *out = *q;
    out->bits = q->ct[k].bits, out->group = q->ct[k].group, out->sym = q->ct[k].sym;
    out->desc_act = q->ct[k].actorder;
}

qpk_status qpk_hfq_ct_scheme(qpk_hfq *q, const char *name, int *k, qpk_err *e)
{
    *k = -1;
    bool ignored = false;
    for (int i = 0; i < q->n_skip; i++)
        if (qpk_ct_match(q->skip[i], name))
            q->skip_used[i] = ignored = true;
    if (ignored)
        return QPK_OK;
    /* Each group's most specific match (3: a module name, 2: a pattern, 1: the class Linear), then the best. */
    int rank[QPK_CT_GROUPS] = {0}, best = 0;
    for (int g = 0; g < q->n_ct; g++) {
        for (int t = 0; t < q->ct[g].n_targets; t++) {
            const char *tg = q->ct[g].targets[t];
            const int r = !strcmp(tg, "Linear") ? 1 : qpk_ct_match(tg, name) ? (strncmp(tg, "re:", 3) ? 3 : 2) : 0;
            rank[g] = r > rank[g] ? r : rank[g];
        }
        best = rank[g] > best ? rank[g] : best;
    }
    for (int g = 0; best && g < q->n_ct; g++) {
        if (rank[g] != best)
            continue;
        if (*k >= 0)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is targeted by config groups %s and %s alike: which "
                                "one quantizes it is ambiguous", name, q->ct[*k].name, q->ct[g].name);
        *k = g;
    }
    if (*k >= 0)
        q->ct[*k].used = true;
    return QPK_OK;
}

void qpk_hfq_ct_mark_ignored(qpk_hfq *q, const char *name)
{
    for (int i = 0; i < q->n_skip; i++)
        if (qpk_ct_match(q->skip[i], name))
            q->skip_used[i] = true;
}

qpk_status qpk_hfq_ct_check_used(const qpk_hfq *q, qpk_err *e)
{
    for (int g = 0; g < q->n_ct; g++)
        if (!q->ct[g].used)
            return qpk_err_setf(e, QPK_E_MISMATCH, "quantization_config: config group %s (targets %s%s) matches no "
                                "linear of the model", q->ct[g].name, q->ct[g].targets[0],
                                q->ct[g].n_targets > 1 ? ", ..." : "");
    for (int i = 0; i < q->n_skip; i++)
        if (!q->skip_used[i] && strncmp(q->skip[i], "re:", 3) && strcmp(q->skip[i], "lm_head"))
            return qpk_err_setf(e, QPK_E_MISMATCH, "quantization_config: ignore names %s, which is no linear of the "
                                "model", q->skip[i]);
    return QPK_OK;
}

/* ------------------------------------------------------------ AutoRound's config */

/*
 * Intel's auto-round names its packing in packing_format (since April 2025). Its exporter
 * (auto_round/export/export_to_autoround/export.py) packs the gptq names with
 * auto_round_extension/torch/qlinear_torch_zp.py (zero - 1, GPTQ v1), the native
 * "auto_round" and "auto_round:gptqmodel" with qlinear_torch.py (zeros as they are, GPTQ
 * v2; native is written only when asymmetric, symmetric ones become auto_round:auto_gptq),
 * the awq names with AWQ's WQLinear_GEMM; its loader (auto_round/inference/backend.py)
 * reads them so. Any other packing (fp8, nvfp4, mlx, llm-compressor's) is refused by name.
 */
static const struct {
    const char *name;
    qpk_hfq_method method;
    bool v2;
} AR_PACKINGS[] = {
    {"auto_round:auto_gptq", QPK_HFQ_GPTQ, false}, {"auto_round:gptq", QPK_HFQ_GPTQ, false},
    {"auto_gptq", QPK_HFQ_GPTQ, false},            {"auto_round", QPK_HFQ_GPTQ, true},
    {"auto_round:gptqmodel", QPK_HFQ_GPTQ, true},  {"auto_round:auto_awq", QPK_HFQ_AWQ, false},
    {"auto_round:awq", QPK_HFQ_AWQ, false},        {"auto_awq", QPK_HFQ_AWQ, false},
};

/*
 * Before, the key was "backend", a packing and a kernel ("autoround:exllamav2" in 2024's
 * Intel/Qwen2-7B-int4-inc, "auto_round:gptq:exllamav2" in OPEA's Qwen2.5 -int4-sym-inc).
 * Every release packed a name with awq as AWQ, one with gptq (not gptqmodel) through
 * AutoGPTQ's or its own zero - 1 packer, and its own name with triton or exllamav2 in it
 * with zeros as they are (auto_round_extension/cuda/qliner_triton.py, qlinear_triton.py,
 * qlinear_tritonv2.py: their "zeros -= 1" left out). Its own name alone meant v1 in late
 * 2024 (AutoGPTQ's packer) and v2 by April 2025 (qlinear_tritonv2.py): refused, as is any
 * other. False when b is none of these.
 */
static bool ar_legacy_backend(const char *b, qpk_hfq *q)
{
    const bool own = !strncmp(b, "autoround:", 10) || !strncmp(b, "auto_round:", 11) || !strncmp(b, "auto-round:", 11);
    if (strstr(b, "awq"))
        q->method = QPK_HFQ_AWQ;
    else if (strstr(b, "gptq") && !strstr(b, "gptqmodel"))
        q->method = QPK_HFQ_GPTQ;
    else if (own && (strstr(b, "triton") || strstr(b, "exllamav2")))
        q->method = QPK_HFQ_GPTQ, q->v2 = true;
    return q->method != QPK_HFQ_NONE;
}

typedef struct ar_scheme {
    int64_t bits, group;
    bool sym, is_float; /* is_float: bits 16 (or 32), or data_type float: the module stays a float .weight */
} ar_scheme;

/*
 * One scheme: o's keys over d (the config's, for an extra_config entry; its data_type int).
 * Weight-only integers of 4 or 8 bits (AWQ's layout: 4), or float; anything else refused by name.
 */
static qpk_status ar_scheme_of(const cJSON *o, const ar_scheme *d, const qpk_hfq *q, ar_scheme *s, qpk_err *e)
{
    const char *type;
    int64_t act_bits;
    QPK_TRY(get_int(o, "bits", d->bits, &s->bits, e));
    QPK_TRY(get_int(o, "group_size", d->group, &s->group, e));
    QPK_TRY(get_bool(o, "sym", d->sym, &s->sym, e));
    QPK_TRY(get_str(o, "data_type", &type, e));
    QPK_TRY(get_int(o, "act_bits", 16, &act_bits, e));
    s->is_float = s->bits == 16 || s->bits == 32 || (type && !strcmp(type, "float"));
    if (s->is_float)
        return QPK_OK;
    if (type && strcmp(type, "int"))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AutoRound data_type \"%.32s\": qpk reads int (weight-only integers)",
                            type);
    if (act_bits < 16)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AutoRound act_bits %lld (activations quantized too): qpk reads "
                            "weight-only checkpoints (act_bits 16)", (long long)act_bits);
    if (s->bits != 4 && s->bits != 8)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AutoRound with %lld bits: qpk reads 4 and 8", (long long)s->bits);
    if (q->method == QPK_HFQ_AWQ && s->bits != 4)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AutoRound packed as AWQ with %lld bits: the GEMM layout holds 4",
                            (long long)s->bits);
    if (s->group != -1 && s->group <= 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: group_size %lld", (long long)s->group);
    return QPK_OK;
}

/* An extra_config entry's scheme joins the group of the same scheme with room, else a group of its own. */
static qpk_status ar_add(qpk_hfq *q, const char *name, const ar_scheme *s, qpk_err *e)
{
    if (s->is_float) {
        if (q->n_skip == (int)(sizeof q->skip / sizeof q->skip[0]))
            return qpk_err_setf(e, QPK_E_LIMIT, "quantization_config: extra_config keeps more than %d modules float",
                                (int)(sizeof q->skip / sizeof q->skip[0]));
        snprintf(q->skip[q->n_skip++], sizeof q->skip[0], "%s", name);
        return QPK_OK;
    }
    int g = 0;
    while (g < q->n_ct && (q->ct[g].bits != s->bits || q->ct[g].group != s->group || q->ct[g].sym != s->sym ||
                           q->ct[g].n_targets == QPK_CT_TARGETS))
        g++;
    if (g == q->n_ct) {
        if (g == QPK_CT_GROUPS)
            return qpk_err_setf(e, QPK_E_LIMIT, "quantization_config: extra_config needs more than %d groups of "
                                "modules (%d each) sharing a scheme", QPK_CT_GROUPS, QPK_CT_TARGETS);
        q->n_ct++;
        snprintf(q->ct[g].name, sizeof q->ct[g].name, "extra_config %d", g);
        q->ct[g].bits = (int)s->bits, q->ct[g].group = s->group, q->ct[g].sym = s->sym;
    }
    snprintf(q->ct[g].targets[q->ct[g].n_targets++], sizeof q->ct[g].targets[0], "%s", name);
    return QPK_OK;
}

/*
 * quant_method "auto-round" (older: "intel/auto-round"): the GPTQ or AWQ layout its
 * packing names, the config's scheme as config group 0 (targeting "Linear") and
 * extra_config's per-module schemes as groups targeting the modules by name, so each
 * linear finds its own as compressed-tensors' do (a name beats "Linear").
 */
static qpk_status parse_autoround(const cJSON *qc, qpk_hfq *q, qpk_err *e)
{
    const char *packing, *backend;
    QPK_TRY(get_str(qc, "packing_format", &packing, e));
    QPK_TRY(get_str(qc, "backend", &backend, e));
    if (!packing && !backend)
        return qpk_err_setf(e, QPK_E_CORRUPT, "AutoRound quantization_config has no packing_format: its layout is "
                            "unknown");
    size_t i = 0;
    while (packing && i < sizeof AR_PACKINGS / sizeof *AR_PACKINGS && strcmp(AR_PACKINGS[i].name, packing))
        i++;
    if (packing && i == sizeof AR_PACKINGS / sizeof *AR_PACKINGS)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AutoRound packing_format \"%.48s\": qpk reads auto_round:auto_gptq "
                            "(also auto_round:gptq, auto_gptq), auto_round (also auto_round:gptqmodel) and "
                            "auto_round:auto_awq (also auto_round:awq, auto_awq)", packing);
    if (packing)
        q->method = AR_PACKINGS[i].method, q->v2 = AR_PACKINGS[i].v2;
    else if (!ar_legacy_backend(backend, q))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AutoRound backend \"%.48s\" (an export before April 2025): qpk "
                            "reads those naming gptq or awq, and auto_round's own with triton or exllamav2 (its "
                            "zero convention changed between releases otherwise)", backend);
    q->autoround = true;
    const ar_scheme dflt = {.bits = 4, .group = 128, .sym = true};
    ar_scheme top;
    QPK_TRY(ar_scheme_of(qc, &dflt, q, &top, e));
    if (top.is_float)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AutoRound config with %lld-bit float weights quantizes nothing: qpk "
                            "reads 4 and 8 bits", (long long)top.bits);
    q->bits = (int)top.bits, q->group = top.group, q->sym = top.sym;
    q->n_ct = 1;
    qpk_ct_group *g0 = &q->ct[0];
    snprintf(g0->name, sizeof g0->name, "the config");
    snprintf(g0->targets[0], sizeof g0->targets[0], "Linear");
    g0->n_targets = 1, g0->bits = q->bits, g0->group = q->group, g0->sym = q->sym;
    g0->used = true; /* every linear extra_config names may differ from it */
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(qc, "extra_config"), *it;
    if (!extra || cJSON_IsNull(extra))
        return QPK_OK;
    if (!cJSON_IsObject(extra))
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: extra_config is not an object");
    cJSON_ArrayForEach(it, extra)
    {
        const char *name = it->string ? it->string : "";
        if (!name[0] || strlen(name) >= sizeof q->skip[0])
            return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: extra_config has a key that is no module "
                                "name (%zu bytes)", strlen(name));
        if (!cJSON_IsObject(it))
            return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: extra_config's %s is not an object", name);
        ar_scheme s;
        qpk_status st = ar_scheme_of(it, &top, q, &s, e);
        if (st != QPK_OK)
            return qpk_err_prefix(e, st, "extra_config's %s", name);
        QPK_TRY(ar_add(q, name, &s, e));
    }
    return QPK_OK;
}

static qpk_status parse_one(const cJSON *qc, qpk_hfq *q, qpk_err *e)
{
    memset(q, 0, sizeof *q);
    if (!cJSON_IsObject(qc))
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config is not an object");
    const char *method;
    int64_t bits;
    QPK_TRY(get_str(qc, "quant_method", &method, e));
    QPK_TRY(get_int(qc, "bits", 4, &bits, e));
    QPK_TRY(get_int(qc, "group_size", 128, &q->group, e));
    q->bits = (int)bits;
    if (!method)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config has no quant_method");
    if (!strcmp(method, "compressed-tensors"))
        return parse_ct(qc, q, e);
    if (!strcmp(method, "auto-round") || !strcmp(method, "intel/auto-round"))
        return parse_autoround(qc, q, e);
    if (!strcmp(method, "gptq")) {
        q->method = QPK_HFQ_GPTQ;
        QPK_TRY(get_bool(qc, "sym", true, &q->sym, e));
        QPK_TRY(get_bool(qc, "desc_act", false, &q->desc_act, e));
        const char *fmt, *old;
        QPK_TRY(get_str(qc, "checkpoint_format", &fmt, e));
        QPK_TRY(get_str(qc, "format", &old, e)); /* GPTQModel's older spelling */
        if (!fmt)
            fmt = old;
        if (fmt && strcmp(fmt, "gptq") && strcmp(fmt, "gptq_v2"))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GPTQ checkpoint_format \"%.32s\": qpk reads gptq and gptq_v2", fmt);
        q->v2 = fmt && !strcmp(fmt, "gptq_v2");
        if (q->bits != 4 && q->bits != 8)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "GPTQ with %d bits: qpk reads 4 and 8", q->bits);
    } else if (!strcmp(method, "awq")) {
        q->method = QPK_HFQ_AWQ;
        const char *version;
        bool zero_point;
        QPK_TRY(get_str(qc, "version", &version, e));
        QPK_TRY(get_bool(qc, "zero_point", true, &zero_point, e));
        if (version && strcmp(version, "gemm") && strcmp(version, "GEMM"))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AWQ version \"%.32s\": qpk reads the GEMM layout", version);
        if (!zero_point)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AWQ without zero points: qpk reads zero_point true");
        if (q->bits != 4)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "AWQ with %d bits: the GEMM layout holds 4", q->bits);
        q->sym = false;
        const cJSON *skip = cJSON_GetObjectItemCaseSensitive(qc, "modules_to_not_convert"), *it;
        if (skip && !cJSON_IsNull(skip) && !cJSON_IsArray(skip))
            return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: modules_to_not_convert is not a list");
        cJSON_ArrayForEach(it, skip)
        {
            if (!cJSON_IsString(it) || !it->valuestring[0] || strlen(it->valuestring) >= sizeof q->skip[0])
                return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: a module to not convert is not a name");
            if (q->n_skip == (int)(sizeof q->skip / sizeof q->skip[0]))
                return qpk_err_setf(e, QPK_E_LIMIT, "quantization_config: more than %d modules to not convert",
                                    (int)(sizeof q->skip / sizeof q->skip[0]));
            snprintf(q->skip[q->n_skip++], sizeof q->skip[0], "%s", it->valuestring);
        }
    } else {
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "quant_method \"%.32s\": qpk reads gptq, awq, compressed-tensors "
                            "and auto-round checkpoints",
                            method);
    }
    if (q->group != -1 && q->group <= 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config: group_size %lld", (long long)q->group);
    return QPK_OK;
}

/* quantize_config.json may leave quant_method out (or null): it then says method. */
static void default_method(cJSON *o, const char *method)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "quant_method");
    if (m && !cJSON_IsNull(m))
        return;
    if (m)
        cJSON_DeleteItemFromObjectCaseSensitive(o, "quant_method");
    cJSON_AddStringToObject(o, "quant_method", method); /* out of memory: "has no quant_method" */
}

qpk_status qpk_hfq_parse(const char *config, size_t n, const char *qcfg, size_t qn, qpk_hfq *q, qpk_err *e)
{
    memset(q, 0, sizeof *q);
    cJSON *root = NULL, *side = NULL;
    QPK_TRY(qpk_json_parse("config.json", config, n, &root, e));
    const cJSON *mlx = cJSON_GetObjectItemCaseSensitive(root, "quantization"); /* mlx-lm's key */
    if (mlx && !cJSON_IsNull(mlx)) {
        const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
        const cJSON *method = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
        qpk_status s = method && !cJSON_IsNull(method)
                           ? qpk_err_setf(e, QPK_E_CORRUPT, "config.json has MLX's quantization and a "
                                          "quantization_config with a quant_method: which one describes the tensors?")
                           : qpk_mlx_parse(mlx, qc, q, e);
        cJSON_Delete(root);
        if (s != QPK_OK)
            qpk_hfq_free(q);
        return s;
    }
    qpk_status s = qcfg ? qpk_json_parse("quantize_config.json", qcfg, qn, &side, e) : QPK_OK;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    bool in_config = qc && !cJSON_IsNull(qc);
    if (s == QPK_OK && in_config)
        s = parse_one(qc, q, e);
    else if (s == QPK_OK && side) { /* AutoGPTQ's folders may carry it only there, often without quant_method */
        default_method(side, "gptq");
        s = parse_one(side, q, e);
        if (s != QPK_OK)
            qpk_err_prefix(e, s, "quantize_config.json");
    }
    if (s == QPK_OK && in_config && side) { /* both: they must say the same */
        qpk_hfq other;
        cJSON *copy = cJSON_Duplicate(side, true);
        if (copy)
            default_method(copy, q->method == QPK_HFQ_AWQ ? "awq" : "gptq");
        s = copy ? parse_one(copy, &other, e) : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        if (s != QPK_OK && copy)
            qpk_err_prefix(e, s, "quantize_config.json");
        if (s == QPK_OK && (other.method != q->method || other.bits != q->bits || other.group != q->group ||
                            other.sym != q->sym || other.desc_act != q->desc_act || other.v2 != q->v2))
            s = qpk_err_setf(e, QPK_E_MISMATCH, "quantize_config.json and config.json's quantization_config disagree");
        cJSON_Delete(copy);
    }
    cJSON_Delete(root);
    cJSON_Delete(side);
    return s;
}

void qpk_hfq_free(qpk_hfq *q)
{
    free(q->mlx);
    q->mlx = NULL, q->n_mlx = 0;
}

bool qpk_hfq_skips(const qpk_hfq *q, const char *name)
{
    for (int i = 0; i < q->n_skip; i++)
        if (strstr(name, q->skip[i]))
            return true;
    return false;
}

/* --------------------------------------------------------------- a linear */

static uint32_t rd32(const qpk_st_tensor *t, uint64_t i)
{
    uint32_t v;
    memcpy(&v, (const uint8_t *)t->data + 4 * i, 4);
    return v;
}

static int64_t zero_at(const qpk_qlinear *l, int64_t g, int64_t o)
{
    if (l->q->method == QPK_HFQ_CT) { /* [ceil(out bits / 32), groups]: a bit stream down each group's column */
        const int bits = l->q->bits, pn = 32 / bits;
        if (l->q->sym)
            return 1 << (bits - 1);
        return rd32(l->qzeros, (uint64_t)((o / pn) * l->groups + g)) >> (bits * (o % pn)) & ((1u << bits) - 1);
    }
    if (l->q->method == QPK_HFQ_AWQ)
        return rd32(l->qzeros, (uint64_t)(g * (l->rows / 8) + o / 8)) >> (4 * AWQ_INVERSE[o % 8]) & 15;
    const int bits = l->q->bits, pn = 32 / bits;
    const uint32_t mask = (1u << bits) - 1;
    uint32_t v = rd32(l->qzeros, (uint64_t)(g * (l->rows / pn) + o / pn)) >> (bits * (o % pn)) & mask;
    return (int64_t)v + (l->q->v2 ? 0 : 1);
}

/* The scale of (group g, output o) as an f32 holding an f16 value; false if it is not one. */
static bool scale_at(const qpk_qlinear *l, int64_t g, int64_t o, float *out)
{
    const int64_t at = l->q->method == QPK_HFQ_CT ? o * l->groups + g : g * l->rows + o; /* CT: [out, groups] */
    const uint8_t *p = (const uint8_t *)l->scales->data + (size_t)at * qpk_st_dtype_size(l->scales->dtype);
    uint16_t h;
    float x;
    switch (l->scales->dtype) {
    case QPK_ST_F16: memcpy(&h, p, 2); x = qpk_f16_to_f32(h); break;
    case QPK_ST_BF16: memcpy(&h, p, 2); x = qpk_bf16_to_f32(h); break;
    default: memcpy(&x, p, 4); break;
    }
    *out = x;
    return isfinite(x) && qpk_f16_to_f32(qpk_f32_to_f16(x)) == x;
}

/* The group of input i: g_idx's (copied and checked at init, so the file cannot change it under us). */
static int32_t group_of(const qpk_qlinear *l, int64_t i)
{
    if (l->groups_of)
        return l->groups_of[i];
    return (int32_t)(l->q->group == -1 ? 0 : i / l->q->group);
}

static const char *shape_text(const qpk_st_tensor *t, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    snprintf(buf + (n < cap ? n : cap - 1), cap - (n < cap ? n : cap - 1), "]");
    return buf;
}

static qpk_status expect_shape(const qpk_qlinear *l, const qpk_st_tensor *t, const char *part, int64_t d0, int64_t d1,
                               qpk_err *e)
{
    char got[64];
    if (t->ndim != (d1 ? 2 : 1) || t->shape[0] != d0 || (d1 && t->shape[1] != d1)) {
        if (d1)
            return qpk_err_setf(e, QPK_E_MISMATCH, "%s.%s has shape %s; config.json implies [%lld, %lld]", l->name, part,
                                shape_text(t, got, sizeof got), (long long)d0, (long long)d1);
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s.%s has shape %s; config.json implies [%lld]", l->name, part,
                            shape_text(t, got, sizeof got), (long long)d0);
    }
    return QPK_OK;
}

static const char *const CT_PART[4] = {"weight_packed", "weight_zero_point", "weight_scale", "weight_g_idx"};

/*
 * compressed-tensors: weight_packed I32 [out, ceil(in bits / 32)], weight_shape [out, in],
 * weight_scale [out, groups], weight_zero_point I32 [ceil(out bits / 32), groups] when
 * asymmetric, weight_g_idx I32 [in] with actorder group; anything else refused by name.
 */
static qpk_status check_ct(qpk_qlinear *l, qpk_err *e)
{
    const qpk_hfq *q = l->q;
    const int64_t in = l->cols, out = l->rows, pn = 32 / q->bits, group = q->group == -1 ? in : q->group;
    if (!l->qweight || !l->scales || !l->shape)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s has no %s (a compressed-tensors pack-quantized linear stores "
                            "weight_packed, weight_scale and weight_shape)", l->name,
                            !l->qweight ? "weight_packed" : !l->scales ? "weight_scale" : "weight_shape");
    if (q->sym && l->qzeros)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s has a weight_zero_point while its config group is symmetric", l->name);
    if (!q->sym && !l->qzeros)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s has no weight_zero_point while its config group is asymmetric",
                            l->name);
    if (!q->desc_act && l->g_idx)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s has a weight_g_idx while its config group's actorder is not group",
                            l->name);
    if (q->desc_act && !l->g_idx)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s has no weight_g_idx while its config group's actorder is group",
                            l->name);
    const qpk_st_tensor *t[4] = {l->qweight, l->qzeros, l->scales, l->g_idx};
    for (int i = 0; i < 4; i++)
        if (t[i] && i != 2 && t[i]->dtype != QPK_ST_I32)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s.%s has dtype %s, not I32", l->name, CT_PART[i],
                                qpk_st_dtype_name(t[i]->dtype));
    if (l->scales->dtype != QPK_ST_F16 && l->scales->dtype != QPK_ST_BF16 && l->scales->dtype != QPK_ST_F32)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s.weight_scale has dtype %s, not F16, BF16 or F32", l->name,
                            qpk_st_dtype_name(l->scales->dtype));
    if (l->shape->dtype != QPK_ST_I64 || l->shape->ndim != 1 || l->shape->shape[0] != 2)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s.weight_shape is not I64 [2]", l->name);
    int64_t ws[2];
    memcpy(ws, l->shape->data, sizeof ws);
    if (ws[0] != out || ws[1] != in)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s.weight_shape is [%lld, %lld]; config.json implies [%lld, %lld]",
                            l->name, (long long)ws[0], (long long)ws[1], (long long)out, (long long)in);
    if (in % group != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: group_size %lld does not divide its %lld inputs", l->name,
                            (long long)group, (long long)in);
    l->groups = in / group;
    QPK_TRY(expect_shape(l, l->qweight, "weight_packed", out, (in + pn - 1) / pn, e));
    if (l->qzeros)
        QPK_TRY(expect_shape(l, l->qzeros, "weight_zero_point", (out + pn - 1) / pn, l->groups, e));
    if (l->g_idx)
        QPK_TRY(expect_shape(l, l->g_idx, "weight_g_idx", in, 0, e));
    return expect_shape(l, l->scales, "weight_scale", out, l->groups, e);
}

static qpk_status check_tensors(qpk_qlinear *l, qpk_err *e)
{
    const qpk_hfq *q = l->q;
    if (q->method == QPK_HFQ_CT)
        return check_ct(l, e);
    const int64_t in = l->cols, out = l->rows, pn = 32 / q->bits;
    const int64_t group = q->group == -1 ? in : q->group;
    static const char *const PART[4] = {"qweight", "qzeros", "scales", "g_idx"};
    const qpk_st_tensor *t[4] = {l->qweight, l->qzeros, l->scales, l->g_idx};
    for (int i = 0; i < 3; i++)
        if (!t[i])
            return qpk_err_setf(e, QPK_E_MISMATCH, "%s has no %s (%s checkpoint stores qweight, qzeros and scales)",
                                l->name, PART[i], q->method == QPK_HFQ_AWQ ? "an AWQ" : "a GPTQ");
    for (int i = 0; i < 4; i++)
        if (t[i] && i != 2 && t[i]->dtype != QPK_ST_I32)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s.%s has dtype %s, not I32", l->name, PART[i],
                                qpk_st_dtype_name(t[i]->dtype));
    if (l->scales->dtype != QPK_ST_F16 && l->scales->dtype != QPK_ST_BF16 && l->scales->dtype != QPK_ST_F32)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s.scales has dtype %s, not F16, BF16 or F32", l->name,
                            qpk_st_dtype_name(l->scales->dtype));
    if (in % group != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: group_size %lld does not divide its %lld inputs", l->name,
                            (long long)group, (long long)in);
    l->groups = in / group;
    if (q->method == QPK_HFQ_AWQ) {
        if (l->g_idx)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s has a g_idx, which AWQ checkpoints do not have", l->name);
        if (out % 8)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: %lld outputs are not whole words of 8 codes", l->name, (long long)out);
        QPK_TRY(expect_shape(l, l->qweight, "qweight", in, out / 8, e));
        QPK_TRY(expect_shape(l, l->qzeros, "qzeros", l->groups, out / 8, e));
    } else {
        if (in % pn || out % pn)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: its shape [%lld, %lld] is not whole words of %lld codes",
                                l->name, (long long)out, (long long)in, (long long)pn);
        QPK_TRY(expect_shape(l, l->qweight, "qweight", in / pn, out, e));
        QPK_TRY(expect_shape(l, l->qzeros, "qzeros", l->groups, out / pn, e));
        if (l->g_idx)
            QPK_TRY(expect_shape(l, l->g_idx, "g_idx", in, 0, e));
    }
    return expect_shape(l, l->scales, "scales", l->groups, out, e);
}

/* Act-order: the columns sorted by group (stably); every group must be group_size columns. */
static qpk_status order_columns(qpk_qlinear *l, qpk_err *e)
{
    const int64_t in = l->cols, group = in / l->groups;
    bool contiguous = true;
    int64_t *count = calloc((size_t)l->groups, sizeof *count);
    if (!count || (l->g_idx && !(l->groups_of = malloc((size_t)in * sizeof *l->groups_of)))) {
        free(count);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    for (int64_t i = 0; l->groups_of && i < in; i++)
        l->groups_of[i] = (int32_t)rd32(l->g_idx, (uint64_t)i);
    for (int64_t i = 0; i < in; i++) {
        int32_t g = group_of(l, i);
        if (g < 0 || g >= l->groups) {
            free(count);
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s.%s[%lld] is %d, outside its %lld groups", l->name,
                                l->q->method == QPK_HFQ_CT ? "weight_g_idx" : "g_idx", (long long)i, g,
                                (long long)l->groups);
        }
        count[g]++;
        contiguous &= g == i / group;
    }
    qpk_status s = QPK_OK;
    for (int64_t g = 0; g < l->groups && s == QPK_OK; g++)
        if (count[g] != group)
            s = qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: group %lld has %lld columns, not group_size %lld", l->name,
                             (long long)g, (long long)count[g], (long long)group);
    if (s == QPK_OK && !contiguous) {
        if (!(l->perm = malloc((size_t)in * sizeof *l->perm)))
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        int64_t *next = count; /* where each group's next column goes */
        for (int64_t g = 0; g < l->groups && s == QPK_OK; g++)
            next[g] = g * group;
        for (int64_t i = 0; i < in && s == QPK_OK; i++)
            l->perm[next[group_of(l, i)]++] = (int32_t)i;
    }
    free(count);
    return s;
}

/* The qpk type: the symmetric ones when every zero point is the middle code, else those with a zero point. */
static qpk_status choose_type(qpk_qlinear *l, qpk_err *e)
{
    const int64_t mid = l->q->bits == 4 ? 8 : 128;
    bool all_mid = true;
    for (int64_t g = 0; g < l->groups; g++)
        for (int64_t o = 0; o < l->rows; o++) {
            float d;
            if (!scale_at(l, g, o, &d))
                return l->q->method == QPK_HFQ_CT
                           ? qpk_err_setf(e, QPK_E_VALUE, "%s.weight_scale[%lld][%lld] is %g: %s", l->name,
                                          (long long)o, (long long)g, (double)d,
                                          isfinite(d) ? "not exact in f16 (qpk's blocks hold f16 scales, so this "
                                                        "linear cannot be imported exactly)"
                                                      : "not finite")
                           : qpk_err_setf(e, QPK_E_VALUE, "%s.scales[%lld][%lld] is %g: %s", l->name, (long long)g,
                                          (long long)o, (double)d,
                                          isfinite(d) ? "not exact in f16 (qpk's blocks hold f16 scales)" : "not finite");
            all_mid &= zero_at(l, g, o) == mid;
        }
    l->type = l->q->bits == 4 ? (all_mid ? QPK_TYPE_INT4S : QPK_TYPE_INT4) : (all_mid ? QPK_TYPE_INT8 : QPK_TYPE_INT8Z);
    l->group = (uint32_t)(l->cols / l->groups);
    if (!qpk_group_ok(l->type, l->group, l->cols))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: groups of %u; qpk's groups are multiples of %d", l->name,
                            l->group, QPK_GROUP_QUANTUM);
    return QPK_OK;
}

qpk_status qpk_qlinear_init(qpk_qlinear *l, qpk_err *e)
{
    if (l->q->method == QPK_HFQ_MLX)
        return qpk_mlx_linear_init(l, e);
    QPK_TRY(check_tensors(l, e));
    QPK_TRY(order_columns(l, e));
    return choose_type(l, e);
}

void qpk_qlinear_free(qpk_qlinear *l)
{
    if (!l)
        return;
    for (int64_t k = 0; l->parts && k < l->n_parts; k++)
        qpk_qlinear_free(&l->parts[k]);
    free(l->parts);
    free(l->perm), free(l->groups_of);
    l->perm = NULL, l->groups_of = NULL, l->parts = NULL;
}

/* Codes of outputs [r0, r0 + n) for every input, codes[(o - r0) * in + i]. */
static void decode_codes(const qpk_qlinear *l, int64_t r0, int64_t n, uint8_t *codes)
{
    const int64_t in = l->cols, out = l->rows;
    if (l->q->method == QPK_HFQ_CT) { /* row o: one little-endian bit stream, input i at bit i bits */
        const int bits = l->q->bits, pn = 32 / bits;
        const uint32_t mask = (1u << bits) - 1;
        const int64_t words = (in + pn - 1) / pn;
        for (int64_t o = r0; o < r0 + n; o++)
            for (int64_t i = 0; i < in; i++)
                codes[(o - r0) * in + i] = (uint8_t)(rd32(l->qweight, (uint64_t)(o * words + i / pn)) >>
                                                     (bits * (i % pn)) & mask);
        return;
    }
    if (l->q->method == QPK_HFQ_AWQ) {
        for (int64_t i = 0; i < in; i++)
            for (int64_t o = r0; o < r0 + n; o++)
                codes[(o - r0) * in + i] = (uint8_t)(rd32(l->qweight, (uint64_t)(i * (out / 8) + o / 8)) >>
                                                     (4 * AWQ_INVERSE[o % 8]) & 15);
        return;
    }
    const int bits = l->q->bits, pn = 32 / bits;
    const uint32_t mask = (1u << bits) - 1;
    for (int64_t r = 0; r < in / pn; r++) /* row r of words: inputs r*pn .. r*pn + pn-1 */
        for (int64_t o = r0; o < r0 + n; o++) {
            uint32_t w = rd32(l->qweight, (uint64_t)(r * out + o));
            for (int j = 0; j < pn; j++)
                codes[(o - r0) * in + r * pn + j] = (uint8_t)(w >> (bits * j) & mask);
        }
}

uint64_t qpk_qlinear_source_bytes(const qpk_qlinear *l)
{
    if (l->parts) {
        uint64_t b = 0;
        for (int64_t k = 0; k < l->n_parts; k++)
            b += qpk_qlinear_source_bytes(&l->parts[k]);
        return b;
    }
    return l->qweight->nbytes + (l->qzeros ? l->qzeros->nbytes : 0) + l->scales->nbytes +
           (l->g_idx ? l->g_idx->nbytes : 0) + (l->shape ? l->shape->nbytes : 0);
}

qpk_status qpk_qlinear_rows(const qpk_qlinear *l, int64_t r0, int64_t n, uint8_t *out, qpk_err *e)
{
    if (l->parts) {
        const int64_t per = l->rows / l->n_parts;
        const size_t row_bytes = qpk_type_row_bytes(l->type, l->group, l->cols);
        while (n > 0) {
            const int64_t k = r0 / per, in_part = r0 - k * per, take = per - in_part < n ? per - in_part : n;
            QPK_TRY(qpk_qlinear_rows(&l->parts[k], in_part, take, out, e));
            out += (size_t)take * row_bytes, r0 += take, n -= take;
        }
        return QPK_OK;
    }
    if (l->q->method == QPK_HFQ_MLX) {
        qpk_mlx_linear_rows(l, r0, n, out);
        return QPK_OK;
    }
    const int64_t in = l->cols, G = l->group;
    const size_t row_bytes = qpk_type_row_bytes(l->type, l->group, in), bb = qpk_type_block_bytes(l->type, l->group);
    uint8_t *codes = malloc((size_t)(n * in));
    int32_t *q = malloc((size_t)G * sizeof *q);
    if (!codes || !q) {
        free(codes), free(q);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    decode_codes(l, r0, n, codes);
    const int32_t mid = l->type == QPK_TYPE_INT4S ? 8 : l->type == QPK_TYPE_INT8 ? 128 : 0;
    for (int64_t o = r0; o < r0 + n; o++)
        for (int64_t gq = 0; gq < in / G; gq++) {
            /* The stored group gq holds the columns of one source group: its first column's. */
            int64_t i0 = l->perm ? l->perm[gq * G] : gq * G;
            int32_t g = group_of(l, i0);
            qpk_qparams p;
            scale_at(l, g, o, &p.d); /* checked at open: an f16 value */
            p.z = (int32_t)zero_at(l, g, o);
            for (int64_t j = 0; j < G; j++) {
                int64_t i = l->perm ? l->perm[gq * G + j] : gq * G + j;
                q[j] = codes[(o - r0) * in + i] - mid; /* the symmetric types store codes around 0 */
            }
            qpk_pack_group(l->type, (uint32_t)G, &p, q, out + (size_t)(o - r0) * row_bytes + (size_t)gq * bb);
        }
    free(codes), free(q);
    return QPK_OK;
}
