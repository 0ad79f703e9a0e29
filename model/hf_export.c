/*
 * The GPTQ and AWQ sinks: a model folder as transformers, vLLM, SGLang and ExLlamaV2 load
 * it (the layouts hfquant.c reads, written back): config.json with its
 * quantization_config, quantize_config.json for GPTQ, safetensors sharded past a size
 * limit with their index, and the tokenizer and generation files the model carries.
 *
 * Nothing is requantized: each block's f16 scale, zero point and codes are repacked as
 * they are, so the folder's reference dequantization gives the .qpk's weights bit for
 * bit, and every float tensor keeps its type (exact too). What a layout cannot hold is
 * refused, naming the tensor: a linear left in float, mixed bit widths or group sizes,
 * 8-bit or permuted or per-row linears in AWQ, a quantized embedding, a zero point out
 * of the layout's range (GPTQ v1 stores zero - 1, so it holds 1..2^bits and not 0).
 * The folder appears complete or not at all (qpk_outdir).
 *
 * compressed-tensors (pack-quantized, llm-compressor's and vLLM's): per linear P,
 * P.weight_packed I32 [out, ceil(in bits / 32)] (codes from 0, input i at bit i bits of
 * the row's stream), P.weight_scale F16 [out, groups], P.weight_shape I64 [out, in],
 * P.weight_zero_point I32 [ceil(out bits / 32), groups] for the types with a zero point,
 * P.weight_g_idx I32 [in] for a permuted input (actorder "group"). Linears may differ:
 * one config group per scheme (bits, symmetric, group size or channel, actorder), the
 * most common one targeting "Linear", the others naming their modules (a name is more
 * specific than a class, so it wins).
 *
 * MLX (mlx-lm's layout, model/mlx.c reads it): per quantized module P (linears, and the
 * embedding and head when quantized) P.weight U32 [out, in bits / 32] (unsigned codes, one
 * little-endian bit stream per row), P.scales and P.biases [out, in / G]; w = s q + b.
 * The affine types go as they are; int4, int4s, int8, int8z and q4_1 groups are affine
 * too (s = d, b = the weight of the lowest code, in f16), exactly unless that b is not an
 * f16 value (then rounded, and the tensor's largest change reported). config.json's
 * "quantization" holds the most common scheme and each other module's own (false: float).
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk_json.h"

#define LINEAR_TASK_OUTPUTS 64 /* outputs per task: a multiple of 8, so no packed word is shared by two tasks */

/* AWQ's nibble k of a word holds output 8c + ORDER[k]; INVERSE[o % 8] is that k (as hfquant.c reads it). */
static const int AWQ_INVERSE[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/* The layout's parameters, the same for every linear. */
typedef struct hf_layout {
    bool awq, v2;       /* AWQ GEMM; else GPTQ, v2 storing zeros as they are */
    bool ct;            /* compressed-tensors: the fields below are per linear (ct_scheme) */
    bool mlx;           /* MLX: per module too (mlx_decl) */
    int bits;           /* 4 or 8 */
    int64_t group_size; /* -1: one group per row */
    bool sym, desc_act;
} hf_layout;

/* A linear as it comes: its qpk blocks (a whole tensor, gathered from the writes) and its name. */
typedef struct hf_linear {
    char name[QPK_MAX_NAME];
    uint32_t type, group_size;
    int64_t dims[2];
    const void *data;
} hf_linear;

/* A compressed-tensors config group: one scheme, and how many linears it holds. */
typedef struct ct_scheme {
    int bits;
    bool sym, actorder;
    int64_t group_size; /* -1: strategy channel */
    size_t n;
} ct_scheme;

#define CT_MAX_SCHEMES 8 /* as many as the reader takes */

/* An MLX folder's matrix: its scheme (bits 0: float), the affine type it is written as. */
typedef struct mlx_decl {
    qpk_role role;
    int layer;
    int bits;
    uint32_t group, type;
} mlx_decl;

struct qpk_hf_sink {
    const qpk_config *cfg;
    qpk_config cfg_copy;
    qpk_sink_opts o;
    hf_layout lay;
    ct_scheme schemes[CT_MAX_SCHEMES];
    int n_schemes, main_scheme; /* main: the one targeting "Linear" */
    struct ct_decl {            /* compressed-tensors: each declared linear's scheme */
        qpk_role role;
        int layer, scheme;
    } *decl;
    size_t n_decl;
    cJSON *ct_config;           /* its quantization_config, made at declaration */
    mlx_decl *mlx;              /* MLX: each matrix, in declaration order */
    size_t n_mlx, cur_mlx;
    int mlx_bits;               /* MLX: the most common scheme (bits 0: nothing quantized) */
    uint32_t mlx_group;
    double change;              /* the tensor just written: its weights' largest change (0: exact) */
    qpk_outdir *dir;
    qpk_st_set *set;
    qpk_st_entry *ent;
    size_t n_ent, cap_ent;
    qpk_pool *pool;
    const qpk_sink_file *files;
    size_t n_files;
    hf_linear cur;   /* the tensor being written */
    bool linear;     /* whether it is a linear (gathered, then packed at its end) */
    int64_t n_parts; /* experts it holds (1: a plain linear) */
    bool permuted;   /* it takes its input permuted (compressed-tensors: it has a weight_g_idx) */
    qpk_role role;
    int layer;
    uint8_t *buf;    /* its blocks */
    size_t len, need, cap;
};
typedef struct qpk_hf_sink hf_export;

static bool is_linear(qpk_role r) { return qpk_role_is_per_layer(r) && qpk_role_is_matrix(r); }

static const char *layout_name(const hf_layout *l)
{
    return l->ct ? "compressed-tensors" : l->mlx ? "MLX" : l->awq ? "AWQ" : "GPTQ";
}

static unsigned layout_folder(const hf_layout *l)
{
    return l->ct ? QPK_FOLDER_CT : l->mlx ? QPK_FOLDER_MLX : l->awq ? QPK_FOLDER_AWQ : QPK_FOLDER_GPTQ;
}

/* --------------------------------------------------------------- planning */

/*
 * A linear whose type the layout cannot hold as it is (the type row's folders), refused
 * naming it, the types the layout holds and, for an 8-bit type in AWQ, the layout that does.
 */
static qpk_status refuse_type(const hf_linear *w, const hf_layout *l, qpk_err *e)
{
    char held[128];
    qpk_folder_type_list(layout_folder(l), false, held, sizeof held);
    const qpk_type_info *ti = qpk_type_info_of(w->type);
    return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %s: the %s layout holds linears of %s only%s", w->name, ti->name,
                        layout_name(l), held,
                        l->awq && (ti->folders & QPK_FOLDER_GPTQ) ? " (a GPTQ folder holds it)"
                                                                 : " (convert the float model to one of them)");
}

/* Decides the layout from the first linear, and checks every linear against it. */
static qpk_status check_linear(hf_export *x, const hf_linear *w, bool first, qpk_err *e)
{
    hf_layout *l = &x->lay;
    const uint32_t t = w->type;
    if (!qpk_type_is_quantized(t))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "%s is %s: the %s layout stores every linear of the decoder quantized (convert with "
                            "a quantization type, and no rule keeping a linear in float)",
                            w->name, qpk_type_name(t), layout_name(l));
    const qpk_type_info *ti = qpk_type_info_of(t);
    const int bits = (int)ti->bits;
    const bool sym = t == QPK_TYPE_INT4S || t == QPK_TYPE_INT8;
    if (!(ti->folders & layout_folder(l)))
        return refuse_type(w, l, e);
    if (l->ct)
        return QPK_OK; /* each linear its own scheme */
    if (first) {
        l->bits = bits, l->sym = sym;
        l->group_size = w->group_size;
    } else if (bits != l->bits) {
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %s while other linears have %d-bit codes: a %s folder has "
                            "one bit width", w->name, qpk_type_name(t), l->bits, layout_name(l));
    }
    l->sym &= sym;
    return QPK_OK;
}

/*
 * The group size of the folder: one G shared by every linear, or -1 (GPTQ) when every
 * linear has one group per row (the rows of q and down differ in length).
 */
static qpk_status check_groups(hf_export *x, const hf_linear *lin, size_t n, qpk_err *e)
{
    bool same = true, per_row = true;
    for (size_t i = 0; i < n; i++) {
        same &= lin[i].group_size == lin[0].group_size;
        per_row &= (int64_t)lin[i].group_size == lin[i].dims[1];
    }
    if (same || (per_row && !x->lay.awq)) {
        x->lay.group_size = same ? (int64_t)lin[0].group_size : -1;
        return QPK_OK;
    }
    if (per_row)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s has one group per row: AWQ's layout has groups of one size "
                            "(a GPTQ folder holds per-row groups as group_size -1)", lin[0].name);
    size_t i = 1;
    while (lin[i].group_size == lin[0].group_size)
        i++;
    return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s has groups of %u and %s of %u: a %s folder has one group_size",
                        lin[i].name, lin[i].group_size, lin[0].name, lin[0].group_size, layout_name(&x->lay));
}

static qpk_status add_entry(hf_export *x, const char *name, qpk_st_dtype dtype, int ndim, const int64_t *shape,
                            qpk_err *e)
{
    if (x->n_ent == x->cap_ent) {
        size_t cap = x->cap_ent ? 2 * x->cap_ent : 256;
        qpk_st_entry *p = realloc(x->ent, cap * sizeof *p);
        if (!p)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        x->ent = p, x->cap_ent = cap;
    }
    qpk_st_entry *t = &x->ent[x->n_ent++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype, t->ndim = ndim;
    t->nbytes = qpk_st_dtype_size(dtype);
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d], t->nbytes *= (uint64_t)shape[d];
    return QPK_OK;
}

static qpk_st_dtype float_dtype(uint32_t type)
{
    return type == QPK_TYPE_F16 ? QPK_ST_F16 : type == QPK_TYPE_BF16 ? QPK_ST_BF16 : QPK_ST_F32;
}

/* The name of a linear's part: "model.layers.3.mlp.up_proj.weight" -> "model.layers.3.mlp.up_proj.qweight". */
static void part_name(char *buf, size_t cap, const char *weight_name, const char *part)
{
    size_t n = strlen(weight_name) - strlen("weight");
    snprintf(buf, cap, "%.*s%s", (int)n, weight_name, part);
}

/* A declared tensor as the layout checks see it. */
static hf_linear linear_of(const qpk_sink_tensor *t)
{
    hf_linear l = {.type = t->type, .group_size = t->group_size, .dims = {t->dims[0], t->dims[t->ndim - 1]}};
    qpk_tensor_name(l.name, sizeof l.name, t->role, t->layer);
    return l;
}

/* A compressed-tensors linear's parts (each expert's, for a stacked one), in the order write_linear_ct writes them. */
static qpk_status ct_plan_tensor(hf_export *x, const qpk_sink_tensor *t, int64_t n_parts, qpk_err *e)
{
    const int bits = (int)qpk_type_info_of(t->type)->bits, pn = 32 / bits;
    const bool sym = t->type == QPK_TYPE_INT4S || t->type == QPK_TYPE_INT8;
    const int64_t out = t->dims[0] / n_parts, in = t->dims[1], groups = in / t->group_size;
    const int64_t packed[2] = {out, (in + pn - 1) / pn}, scale[2] = {out, groups}, two = 2;
    const int64_t zp[2] = {(out + pn - 1) / pn, groups};
    char name[QPK_MAX_NAME], part[QPK_MAX_NAME + 24];
    qpk_tensor_name(name, sizeof name, t->role, t->layer);
    for (int64_t k = 0; k < n_parts; k++) {
        if (n_parts > 1)
            qpk_expert_tensor_name(name, sizeof name, t->role, t->layer, (int)k);
        part_name(part, sizeof part, name, "weight_packed");
        QPK_TRY(add_entry(x, part, QPK_ST_I32, 2, packed, e));
        part_name(part, sizeof part, name, "weight_scale");
        QPK_TRY(add_entry(x, part, QPK_ST_F16, 2, scale, e));
        part_name(part, sizeof part, name, "weight_shape");
        QPK_TRY(add_entry(x, part, QPK_ST_I64, 1, &two, e));
        if (!sym) {
            part_name(part, sizeof part, name, "weight_zero_point");
            QPK_TRY(add_entry(x, part, QPK_ST_I32, 2, zp, e));
        }
        if (t->permuted) {
            part_name(part, sizeof part, name, "weight_g_idx");
            QPK_TRY(add_entry(x, part, QPK_ST_I32, 1, &in, e));
        }
    }
    return QPK_OK;
}

/* The folder's tensors, declared in the model's order, each linear as its packed parts. */
static qpk_status plan_tensors(hf_export *x, const qpk_sink_model *m, qpk_err *e)
{
    const hf_layout *l = &x->lay;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const qpk_sink_tensor *t = &m->tensors[i];
        char name[QPK_MAX_NAME], part[QPK_MAX_NAME + 8];
        qpk_tensor_name(name, sizeof name, t->role, t->layer);
        if (!is_linear(t->role)) {
            if (qpk_type_is_quantized(t->type))
                return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                                    "%s is %s: in %s folders only the decoder's linears are quantized (transformers "
                                    "and vLLM read the embedding and head as floats): store them as f16 or bf16",
                                    name, qpk_type_name(t->type), layout_name(l));
            QPK_TRY(add_entry(x, name, float_dtype(t->type), t->ndim, t->dims, e));
            continue;
        }
        /* A stacked expert matrix is written as Hugging Face stores it: expert by expert. */
        const int64_t n_parts = qpk_role_is_expert(t->role) ? x->cfg->n_experts : 1;
        if (l->ct) {
            QPK_TRY(ct_plan_tensor(x, t, n_parts, e));
            continue;
        }
        const int64_t out = t->dims[0] / n_parts, in = t->dims[1], groups = in / t->group_size, pn = 32 / l->bits;
        for (int64_t k = 0; k < n_parts; k++) {
            if (n_parts > 1)
                qpk_expert_tensor_name(name, sizeof name, t->role, t->layer, (int)k);
            if (l->awq ? out % 8 : in % pn || out % pn)
                return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s [%lld, %lld]: the %s layout packs %lld codes per word "
                                    "along its %s", name, (long long)out, (long long)in, layout_name(l),
                                    (long long)(l->awq ? 8 : pn), l->awq ? "outputs" : "inputs and outputs");
            const int64_t qw[2] = {l->awq ? in : in / pn, l->awq ? out / 8 : out};
            const int64_t qz[2] = {groups, l->awq ? out / 8 : out / pn}, sc[2] = {groups, out};
            part_name(part, sizeof part, name, "qweight");
            QPK_TRY(add_entry(x, part, QPK_ST_I32, 2, qw, e));
            part_name(part, sizeof part, name, "qzeros");
            QPK_TRY(add_entry(x, part, QPK_ST_I32, 2, qz, e));
            part_name(part, sizeof part, name, "scales");
            QPK_TRY(add_entry(x, part, QPK_ST_F16, 2, sc, e));
            if (!l->awq) {
                part_name(part, sizeof part, name, "g_idx");
                QPK_TRY(add_entry(x, part, QPK_ST_I32, 1, &in, e));
            }
        }
    }
    return QPK_OK;
}

/* The config group of a linear: bits, symmetry, group size (-1: channel) and actorder alike. */
static qpk_status ct_scheme_of(hf_export *x, const ct_scheme *want, size_t linears, int *k, qpk_err *e)
{
    for (*k = 0; *k < x->n_schemes; (*k)++) {
        const ct_scheme *s = &x->schemes[*k];
        if (s->bits == want->bits && s->sym == want->sym && s->actorder == want->actorder &&
            s->group_size == want->group_size) {
            x->schemes[*k].n += linears;
            return QPK_OK;
        }
    }
    if (x->n_schemes == CT_MAX_SCHEMES)
        return qpk_err_setf(e, QPK_E_LIMIT, "the linears have more than %d schemes (bits, symmetry, group size, "
                            "act-order): a compressed-tensors folder of qpk's has at most %d config groups",
                            CT_MAX_SCHEMES, CT_MAX_SCHEMES);
    x->schemes[x->n_schemes] = *want;
    x->schemes[x->n_schemes++].n = linears;
    return QPK_OK;
}

/* A module's name (a linear's, without ".weight") added to a list of targets. */
static void add_target(cJSON *list, const char *weight_name)
{
    char name[QPK_MAX_NAME];
    snprintf(name, sizeof name, "%.*s", (int)(strlen(weight_name) - strlen(".weight")), weight_name);
    cJSON_AddItemToArray(list, cJSON_CreateString(name));
}

/*
 * The "re:" pattern of a role in every layer ("re:.*\.mlp\.down_proj$"; experts:
 * "re:.*\.mlp\.experts\..*\.down_proj$"), within the subset the readers match: one
 * target for a role a scheme holds whole, where naming its modules would take one per layer.
 */
static void role_pattern(qpk_role r, int layer, char *buf, size_t cap)
{
    char name[QPK_MAX_NAME], prefix[32];
    if (qpk_role_is_expert(r))
        qpk_expert_tensor_name(name, sizeof name, r, layer, 0);
    else
        qpk_tensor_name(name, sizeof name, r, layer);
    snprintf(prefix, sizeof prefix, "model.layers.%d.", layer);
    size_t n = (size_t)snprintf(buf, cap, "re:.*\\.");
    const size_t end = strlen(name) - strlen(".weight");
    for (size_t i = strlen(prefix); i < end && n + 8 < cap; i++) {
        if (qpk_role_is_expert(r) && !strncmp(name + i, "experts.0.", 10)) {
            n += (size_t)snprintf(buf + n, cap - n, "experts\\..*\\.");
            i += 9;
        } else if (name[i] == '.') {
            n += (size_t)snprintf(buf + n, cap - n, "\\.");
        } else {
            buf[n++] = name[i], buf[n] = 0;
        }
    }
    snprintf(buf + n, cap - n, "$");
}

/* Whether scheme k holds role r in every layer that has it. */
static bool holds_role(const hf_export *x, int k, qpk_role r)
{
    for (size_t i = 0; i < x->n_decl; i++)
        if (x->decl[i].role == r && x->decl[i].scheme != k)
            return false;
    return true;
}

/* The targets of scheme k (not the main one): a pattern per role it holds whole, else its modules' names. */
static void scheme_targets(const hf_export *x, int k, cJSON *targets)
{
    for (size_t i = 0; i < x->n_decl; i++) {
        const struct ct_decl *d = &x->decl[i];
        char name[QPK_MAX_NAME + 32];
        if (d->scheme != k)
            continue;
        if (holds_role(x, k, d->role)) {
            bool first = true; /* the role's first layer in the declaration: one pattern for them all */
            for (size_t j = 0; j < i && first; j++)
                first = x->decl[j].role != d->role;
            if (first) {
                role_pattern(d->role, d->layer, name, sizeof name);
                cJSON_AddItemToArray(targets, cJSON_CreateString(name));
            }
            continue;
        }
        for (int p = 0; p < (qpk_role_is_expert(d->role) ? x->cfg->n_experts : 1); p++) {
            if (qpk_role_is_expert(d->role))
                qpk_expert_tensor_name(name, sizeof name, d->role, d->layer, p);
            else
                qpk_tensor_name(name, sizeof name, d->role, d->layer);
            add_target(targets, name);
        }
    }
}

/* compressed-tensors' quantization_config: one config group per scheme. */
static cJSON *ct_quant_config(const hf_export *x)
{
    cJSON *q = cJSON_CreateObject(), *groups;
    cJSON_AddStringToObject(q, "quant_method", "compressed-tensors");
    cJSON_AddStringToObject(q, "format", "pack-quantized");
    cJSON_AddStringToObject(q, "quantization_status", "compressed");
    groups = cJSON_AddObjectToObject(q, "config_groups");
    for (int k = 0; k < x->n_schemes; k++) {
        const ct_scheme *s = &x->schemes[k];
        char gname[24]; /* "group_" and any int */
        snprintf(gname, sizeof gname, "group_%d", k);
        cJSON *g = cJSON_AddObjectToObject(groups, gname), *targets = cJSON_AddArrayToObject(g, "targets");
        if (k == x->main_scheme)
            cJSON_AddItemToArray(targets, cJSON_CreateString("Linear"));
        else
            scheme_targets(x, k, targets);
        cJSON *w = cJSON_AddObjectToObject(g, "weights");
        cJSON_AddNumberToObject(w, "num_bits", s->bits);
        cJSON_AddStringToObject(w, "type", "int");
        cJSON_AddBoolToObject(w, "symmetric", s->sym);
        if (s->group_size == -1)
            cJSON_AddNullToObject(w, "group_size");
        else
            cJSON_AddNumberToObject(w, "group_size", (double)s->group_size);
        cJSON_AddStringToObject(w, "strategy", s->group_size == -1 ? "channel" : "group");
        cJSON_AddNullToObject(w, "block_structure");
        cJSON_AddBoolToObject(w, "dynamic", false);
        if (s->actorder)
            cJSON_AddStringToObject(w, "actorder", "group");
        else
            cJSON_AddNullToObject(w, "actorder");
        cJSON_AddNullToObject(g, "input_activations");
        cJSON_AddNullToObject(g, "output_activations");
        cJSON_AddStringToObject(g, "format", "pack-quantized");
    }
    cJSON *ignore = cJSON_AddArrayToObject(q, "ignore");
    cJSON_AddItemToArray(ignore, cJSON_CreateString("lm_head"));
    /* The routers are Linear modules too, kept float: without these, "Linear" would claim them. */
    if (qpk_config_is_moe(x->cfg))
        cJSON_AddItemToArray(ignore, cJSON_CreateString("re:.*mlp\\.gate$"));
    if (qpk_config_is_moe(x->cfg) && x->cfg->shared_expert_intermediate_size > 0)
        cJSON_AddItemToArray(ignore, cJSON_CreateString("re:.*mlp\\.shared_expert_gate$"));
    cJSON_AddNullToObject(q, "kv_cache_scheme");
    cJSON_AddObjectToObject(q, "sparsity_config");
    cJSON_AddObjectToObject(q, "transform_config");
    return q;
}

/*
 * compressed-tensors: each linear's scheme. A linear with one group per row is strategy
 * channel, unless other linears have groups of that very size (then it is one of them).
 */
static qpk_status ct_plan(hf_export *x, const qpk_sink_model *m, qpk_err *e)
{
    if (!(x->decl = calloc(m->n_tensors + 1, sizeof *x->decl)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < m->n_tensors; i++) {
        const qpk_sink_tensor *t = &m->tensors[i];
        if (!is_linear(t->role))
            continue;
        bool shared = false;
        for (size_t j = 0; j < m->n_tensors && !shared; j++)
            shared = is_linear(m->tensors[j].role) && m->tensors[j].group_size == t->group_size &&
                     m->tensors[j].dims[1] > (int64_t)t->group_size;
        const bool channel = (int64_t)t->group_size == t->dims[1] && !shared && !t->permuted;
        const ct_scheme want = {.bits = (int)qpk_type_info_of(t->type)->bits,
                                .sym = t->type == QPK_TYPE_INT4S || t->type == QPK_TYPE_INT8,
                                .actorder = t->permuted,
                                .group_size = channel ? -1 : (int64_t)t->group_size};
        struct ct_decl *d = &x->decl[x->n_decl++];
        d->role = t->role, d->layer = t->layer;
        QPK_TRY(ct_scheme_of(x, &want, (size_t)(qpk_role_is_expert(t->role) ? x->cfg->n_experts : 1), &d->scheme, e));
    }
    for (int k = 1; k < x->n_schemes; k++)
        if (x->schemes[k].n > x->schemes[x->main_scheme].n)
            x->main_scheme = k;
    if (!(x->ct_config = ct_quant_config(x)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    /* Readers hold a bounded list of targets per group (qpk's: QPK_CT_TARGETS): a longer one is refused here. */
    const cJSON *g;
    cJSON_ArrayForEach(g, cJSON_GetObjectItemCaseSensitive(x->ct_config, "config_groups"))
    {
        const int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(g, "targets"));
        if (n > QPK_CT_TARGETS)
            return qpk_err_setf(e, QPK_E_LIMIT, "config group %s would name %d modules (its linears are scattered "
                                "over roles and layers): qpk writes at most %d targets per group", g->string, n,
                                QPK_CT_TARGETS);
    }
    return QPK_OK;
}

/* ------------------------------------------------------------------- MLX */

/* The affine type an MLX folder holds a type's groups as (its own; q4_1's are mlx4_f16's bytes), or 0 for none. */
static uint32_t mlx_type_of(uint32_t type)
{
    if (qpk_type_info_of(type)->folders & QPK_FOLDER_MLX)
        return type;
    switch (type) {
    case QPK_TYPE_INT4:
    case QPK_TYPE_INT4S:
    case QPK_TYPE_Q4_1: return QPK_TYPE_MLX4_F16;
    case QPK_TYPE_INT8:
    case QPK_TYPE_INT8Z: return QPK_TYPE_MLX8_F16;
    default: return 0;
    }
}

/* Each matrix's scheme; the parts of the quantized ones, the float tensors as they are. */
static qpk_status mlx_plan(hf_export *x, const qpk_sink_model *m, qpk_err *e)
{
    if (qpk_config_is_moe(x->cfg))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "an MLX folder of a %s model: qpk writes MLX's dense models (mlx-lm "
                            "stacks experts as switch_mlp, which qpk does not write yet)", qpk_arch_name(x->cfg->arch));
    if (!(x->mlx = calloc(m->n_tensors + 1, sizeof *x->mlx)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    size_t count[2][3] = {{0}}; /* [4 or 8 bits][group 32, 64, 128] */
    for (size_t i = 0; i < m->n_tensors; i++) {
        const qpk_sink_tensor *t = &m->tensors[i];
        char name[QPK_MAX_NAME], part[QPK_MAX_NAME + 8];
        qpk_tensor_name(name, sizeof name, t->role, t->layer);
        if (!qpk_type_is_quantized(t->type)) {
            if (qpk_role_is_matrix(t->role))
                x->mlx[x->n_mlx++] = (mlx_decl){t->role, t->layer, 0, 0, t->type};
            QPK_TRY(add_entry(x, name, float_dtype(t->type), t->ndim, t->dims, e));
            continue;
        }
        const uint32_t type = mlx_type_of(t->type), G = t->group_size;
        if (!type)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s is %s: the MLX layout holds affine groups (mlx4, mlx8, "
                                "mlx4_f16, mlx8_f16; int4, int4s, int8, int8z and q4_1 become them) only: convert "
                                "the float model with one of those types", name, qpk_type_name(t->type));
        if (G != 32 && G != 64 && G != 128)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s has groups of %u: MLX's groups are 32, 64 or 128 weights",
                                name, G);
        if (t->permuted)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s takes its input permuted (act-order): MLX has no input "
                                "permutation", name);
        const int bits = (int)qpk_type_info_of(type)->bits;
        const qpk_st_dtype half = qpk_type_info_of(type)->scale_bf16 ? QPK_ST_BF16 : QPK_ST_F16;
        x->mlx[x->n_mlx++] = (mlx_decl){t->role, t->layer, bits, G, type};
        count[bits == 8][G == 32 ? 0 : G == 64 ? 1 : 2]++;
        const int64_t out = t->dims[0], in = t->dims[1];
        const int64_t codes[2] = {out, in * bits / 32}, halves[2] = {out, in / G};
        part_name(part, sizeof part, name, "weight");
        QPK_TRY(add_entry(x, part, QPK_ST_U32, 2, codes, e));
        part_name(part, sizeof part, name, "scales");
        QPK_TRY(add_entry(x, part, half, 2, halves, e));
        part_name(part, sizeof part, name, "biases");
        QPK_TRY(add_entry(x, part, half, 2, halves, e));
    }
    for (int b = 0; b < 2; b++)
        for (int g = 0; g < 3; g++)
            if (count[b][g] > (x->mlx_bits ? count[x->mlx_bits == 8][x->mlx_group == 32 ? 0 : x->mlx_group == 64 ? 1 : 2]
                                            : 0))
                x->mlx_bits = b ? 8 : 4, x->mlx_group = 32u << g;
    return QPK_OK;
}

/* A group of any type mlx_type_of takes as scale s, bias b (f32 values of the affine type's half) and codes from 0. */
static void mlx_group(uint32_t type, uint32_t G, const uint8_t *block, float *s, float *b, int32_t *u)
{
    qpk_qparams p;
    if (type == QPK_TYPE_Q4_1) /* a Q4_1 block is an mlx4_f16 group of 32, byte for byte */
        type = QPK_TYPE_MLX4_F16;
    qpk_unpack_group(type, G, block, &p, u);
    int32_t qmin, qmax;
    qpk_type_code_range(type, &qmin, &qmax);
    for (uint32_t i = 0; i < G; i++)
        u[i] -= qmin;
    *s = p.d;
    *b = qpk_dequantize_value(type, &p, qmin); /* the weight of code 0: exact (d times an integer of 9 bits) */
}

/* One matrix's codes, scales and biases (gathered whole in x->buf), written in its parts' order. */
static qpk_status write_mlx(hf_export *x, const hf_linear *w, const mlx_decl *d, qpk_err *e)
{
    const int64_t out = w->dims[0], in = w->dims[1], G = d->group, groups = in / G;
    const int bits = d->bits;
    const bool bf16 = qpk_type_info_of(d->type)->scale_bf16;
    const size_t row_bytes = qpk_type_row_bytes(w->type, w->group_size, in), bb = qpk_type_block_bytes(w->type, w->group_size);
    uint8_t *codes = calloc((size_t)(out * in * bits / 8), 1);
    uint16_t *halves = malloc((size_t)(2 * out * groups) * sizeof *halves);
    qpk_status s = codes && halves ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    int32_t u[128];
    double change = 0;
    for (int64_t o = 0; o < out && s == QPK_OK; o++)
        for (int64_t g = 0; g < groups && s == QPK_OK; g++) {
            const uint8_t *block = (const uint8_t *)w->data + (size_t)o * row_bytes + (size_t)g * bb;
            float sc, bi;
            mlx_group(w->type, (uint32_t)G, block, &sc, &bi, u);
            const uint16_t sh = bf16 ? qpk_f32_to_bf16(sc) : qpk_f32_to_f16(sc);
            const uint16_t bh = bf16 ? qpk_f32_to_bf16(bi) : qpk_f32_to_f16(bi);
            const float back = bf16 ? qpk_bf16_to_f32(bh) : qpk_f16_to_f32(bh);
            if (!isfinite(back))
                s = qpk_err_setf(e, QPK_E_VALUE, "%s: the bias %g of group %lld of row %lld is past f16's range: no "
                                 "MLX group holds it", w->name, (double)bi, (long long)g, (long long)o);
            change = fmax(change, fabs((double)back - bi)); /* 0 for the affine types: their own halves */
            halves[o * groups + g] = sh, halves[out * groups + o * groups + g] = bh;
            uint8_t *row = codes + (size_t)(o * in * bits / 8) + (size_t)(g * G * bits / 8);
            for (int64_t i = 0; i < G; i++) /* input i at bit i bits of the row's stream */
                row[i * bits / 8] |= (uint8_t)(u[i] << (i * bits % 8));
        }
    if (s == QPK_OK)
        s = qpk_st_set_write(x->set, codes, (size_t)(out * in * bits / 8), e);
    if (s == QPK_OK)
        s = qpk_st_set_write(x->set, halves, (size_t)(2 * out * groups) * sizeof *halves, e);
    free(codes), free(halves);
    x->change = change;
    return s;
}

/* config.json's "quantization": the main scheme, and each matrix that differs (a scheme of its own, or false). */
static cJSON *mlx_quant_config(const hf_export *x)
{
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "group_size", x->mlx_group);
    cJSON_AddNumberToObject(q, "bits", x->mlx_bits);
    for (size_t i = 0; i < x->n_mlx; i++) {
        const mlx_decl *d = &x->mlx[i];
        if (d->bits == x->mlx_bits && d->group == x->mlx_group)
            continue;
        char name[QPK_MAX_NAME];
        qpk_tensor_name(name, sizeof name, d->role, d->layer);
        name[strlen(name) - strlen(".weight")] = 0;
        if (!d->bits) {
            cJSON_AddFalseToObject(q, name);
            continue;
        }
        cJSON *m = cJSON_AddObjectToObject(q, name);
        cJSON_AddNumberToObject(m, "group_size", d->group);
        cJSON_AddNumberToObject(m, "bits", d->bits);
    }
    return q;
}

static qpk_status plan(hf_export *x, const qpk_sink_model *m, qpk_err *e)
{
    if (x->lay.mlx)
        return mlx_plan(x, m, e);
    hf_linear *lin = malloc((m->n_tensors ? m->n_tensors : 1) * sizeof *lin);
    if (!lin)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status s = QPK_OK;
    size_t k = 0;
    for (size_t i = 0; i < m->n_tensors && s == QPK_OK; i++) {
        const qpk_sink_tensor *t = &m->tensors[i];
        if (!is_linear(t->role))
            continue;
        lin[k] = linear_of(t);
        s = check_linear(x, &lin[k], k == 0, e);
        if (s == QPK_OK && t->permuted && !x->lay.ct) {
            if (x->lay.awq)
                s = qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s takes its input permuted (act-order): AWQ's layout "
                                 "has no g_idx (a GPTQ folder holds it with desc_act)", lin[k].name);
            x->lay.desc_act = true;
        }
        k++;
    }
    if (s == QPK_OK && k && !x->lay.ct)
        s = check_groups(x, lin, k, e);
    if (s == QPK_OK && x->lay.ct)
        s = ct_plan(x, m, e);
    free(lin);
    return s == QPK_OK ? plan_tensors(x, m, e) : s;
}

/* ---------------------------------------------------------------- packing */

/* One linear's packed parts, filled by tasks over ranges of outputs. */
typedef struct pack_job {
    const hf_layout *lay;
    const hf_linear *w;
    const int32_t *perm; /* stored column j is input perm[j]; NULL: j itself */
    int64_t out, in, groups;
    uint32_t *qweight, *qzeros;
    uint16_t *scales;
    qpk_status *status;
    qpk_err *errs;
} pack_job;

/* The zero as the layout stores it, or false when it cannot (GPTQ v1 holds 1..2^bits, v2 and AWQ 0..2^bits - 1). */
static bool stored_zero(const hf_layout *l, int32_t z, uint32_t *out)
{
    const int32_t top = (1 << l->bits) - 1;
    int32_t v = l->awq || l->v2 ? z : z - 1;
    if (v < 0 || v > top)
        return false;
    *out = (uint32_t)v;
    return true;
}

static void pack_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    pack_job *p = arg;
    const hf_layout *l = p->lay;
    const uint32_t type = p->w->type, G = p->w->group_size;
    const size_t row_bytes = qpk_type_row_bytes(type, G, p->in), bb = qpk_type_block_bytes(type, G);
    const int pn = 32 / l->bits;
    /* The symmetric types' codes are centred on 0; the layouts store them from 0 with the middle code as zero. */
    const bool sym = type == QPK_TYPE_INT4S || type == QPK_TYPE_INT8;
    const int32_t mid = sym ? 1 << (l->bits - 1) : 0;
    const int64_t o0 = task * LINEAR_TASK_OUTPUTS;
    const int64_t o1 = o0 + LINEAR_TASK_OUTPUTS < p->out ? o0 + LINEAR_TASK_OUTPUTS : p->out;
    int32_t *q = malloc(G * sizeof *q);
    p->status[task] = q ? QPK_OK : qpk_err_setf(&p->errs[task], QPK_E_NOMEM, "out of memory");
    /* Shifts and strides, not divisions, in the loop over every weight. */
    const uint32_t bits = (uint32_t)l->bits, log2_pn = bits == 4 ? 3 : 2;
    const size_t awq_stride = (size_t)(p->out / 8);
    for (int64_t o = o0; o < o1 && q; o++) {
        const uint8_t *row = (const uint8_t *)p->w->data + (size_t)o * row_bytes;
        uint32_t *awq_word = p->qweight + o / 8, *gptq_col = p->qweight + o;
        const uint32_t awq_shift = 4u * (uint32_t)AWQ_INVERSE[o % 8];
        for (int64_t g = 0; g < p->groups; g++) {
            const uint8_t *b = row + (size_t)g * bb;
            qpk_qparams prm;
            qpk_unpack_group(type, G, b, &prm, q);
            const int64_t col0 = g * G;
            for (uint32_t j = 0; j < G; j++) {
                int64_t i = col0 + j;
                if (p->perm) {
                    int32_t v;
                    memcpy(&v, p->perm + i, 4); /* mapped file data */
                    i = v;
                }
                const uint32_t u = (uint32_t)(q[j] + mid);
                if (l->awq) /* row i, the word of output o */
                    awq_word[(size_t)i * awq_stride] |= u << awq_shift;
                else /* word row i / pn, column o */
                    gptq_col[(size_t)(i >> log2_pn) * (size_t)p->out] |= u << ((uint32_t)(i & (pn - 1)) * bits);
            }
            int32_t z = sym ? mid : prm.z;
            uint32_t zs;
            if (!stored_zero(l, z, &zs)) {
                /* What else holds it: v2 a zero of 0, v1 (the default) one of 2^bits, AWQ 4-bit zeros 0..15. */
                const char *hint = l->awq          ? (z == 16 ? ": a GPTQ v1 folder holds it" : "")
                                   : l->v2         ? (z == 1 << l->bits ? ": GPTQ v1 (the default) holds it" : "")
                                   : l->bits == 4 ? ": the GPTQ v2 layout stores zeros as they are (GPTQModel reads "
                                                     "it; vLLM reads v1 only), or an AWQ folder"
                                                   : ": the GPTQ v2 layout stores zeros as they are (GPTQModel reads "
                                                     "it; vLLM reads v1 only)";
                p->status[task] = qpk_err_setf(&p->errs[task], QPK_E_UNSUPPORTED,
                                               "%s row %lld group %lld has zero point %d, which %s cannot hold%s",
                                               p->w->name, (long long)o, (long long)g, z,
                                               l->awq ? "AWQ's 4-bit zeros" : l->v2 ? "GPTQ v2's zeros"
                                                                                    : "GPTQ v1 (zero - 1 in its bits)",
                                               hint);
                free(q);
                return;
            }
            if (l->awq)
                p->qzeros[g * (p->out / 8) + o / 8] |= zs << (4 * AWQ_INVERSE[o % 8]);
            else
                p->qzeros[g * (p->out / pn) + o / pn] |= zs << (l->bits * (o % pn));
            memcpy(&p->scales[g * p->out + o], b + qpk_type_info_of(type)->scale_at[0], 2); /* the f16 as stored */
        }
    }
    free(q);
}

/* Runs a linear's packing tasks on the pool: the first failing task's error, or cancellation. */
static qpk_status run_pack(hf_export *x, int64_t tasks, void (*task)(void *, int64_t, int), pack_job *p, qpk_err *e)
{
    qpk_pool_run(x->pool, tasks, task, p);
    if (qpk_pool_cancelled(x->pool))
        return qpk_err_setf(e, QPK_E_CANCELLED, "export cancelled");
    for (int64_t i = 0; i < tasks; i++)
        if (p->status[i] != QPK_OK)
            return qpk_err_setf(e, p->status[i], "%s", p->errs[i].msg);
    return QPK_OK;
}

/* The group of each input: its stored column's (every source checks its permutations; perm may be NULL). */
static void fill_g_idx(int32_t *g_idx, const int32_t *perm, int64_t in, int64_t G)
{
    for (int64_t j = 0; j < in; j++) {
        int32_t i = (int32_t)j;
        if (perm)
            memcpy(&i, perm + j, 4);
        g_idx[i] = (int32_t)(j / G);
    }
}

/* compressed-tensors: rows of outputs into weight_packed, weight_scale and weight_zero_point (asymmetric types). */
static void ct_pack_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    pack_job *p = arg;
    const uint32_t type = p->w->type, G = p->w->group_size, bits = qpk_type_info_of(type)->bits, pn = 32 / bits;
    const size_t row_bytes = qpk_type_row_bytes(type, G, p->in), bb = qpk_type_block_bytes(type, G);
    const int64_t words = (p->in + pn - 1) / pn;
    const bool sym = type == QPK_TYPE_INT4S || type == QPK_TYPE_INT8;
    const int32_t mid = sym ? 1 << (bits - 1) : 0, top = (1 << bits) - 1;
    const int64_t o0 = task * LINEAR_TASK_OUTPUTS;
    const int64_t o1 = o0 + LINEAR_TASK_OUTPUTS < p->out ? o0 + LINEAR_TASK_OUTPUTS : p->out;
    int32_t *q = malloc(G * sizeof *q);
    p->status[task] = q ? QPK_OK : qpk_err_setf(&p->errs[task], QPK_E_NOMEM, "out of memory");
    for (int64_t o = o0; o < o1 && q; o++) {
        const uint8_t *row = (const uint8_t *)p->w->data + (size_t)o * row_bytes;
        uint32_t *packed = p->qweight + (size_t)(o * words);
        for (int64_t g = 0; g < p->groups; g++) {
            const uint8_t *b = row + (size_t)g * bb;
            qpk_qparams prm;
            qpk_unpack_group(type, G, b, &prm, q);
            for (uint32_t j = 0; j < G; j++) {
                int64_t i = g * G + j;
                if (p->perm) {
                    int32_t v;
                    memcpy(&v, p->perm + i, 4); /* mapped file data */
                    i = v;
                }
                packed[i / pn] |= (uint32_t)(q[j] + mid) << (bits * (uint32_t)(i % pn));
            }
            if (!sym) { /* the zero as stored: the signed zero point + 2^(bits-1), from 0 like the codes */
                if (prm.z < 0 || prm.z > top) {
                    p->status[task] = qpk_err_setf(&p->errs[task], QPK_E_UNSUPPORTED,
                                                   "%s row %lld group %lld has zero point %d, which compressed-tensors' "
                                                   "%u-bit zero points cannot hold (0..%d)", p->w->name, (long long)o,
                                                   (long long)g, prm.z, bits, top);
                    free(q);
                    return;
                }
                p->qzeros[(o / pn) * p->groups + g] |= (uint32_t)prm.z << (bits * (uint32_t)(o % pn));
            }
            memcpy(&p->scales[o * p->groups + g], b + qpk_type_info_of(type)->scale_at[0], 2); /* the f16 as stored */
        }
    }
    free(q);
}

/* --------------------------------------------------------------- writing */

static qpk_status write_linear_ct(hf_export *x, qpk_st_set *set, const hf_linear *w, const int32_t *perm, bool permuted,
                                  qpk_err *e)
{
    const uint32_t bits = qpk_type_info_of(w->type)->bits, pn = 32 / bits;
    const bool sym = w->type == QPK_TYPE_INT4S || w->type == QPK_TYPE_INT8;
    const int64_t out = w->dims[0], in = w->dims[1], G = w->group_size, groups = in / G;
    const size_t packed_words = (size_t)(out * ((in + pn - 1) / pn)), zp_words = (size_t)(((out + pn - 1) / pn) * groups);
    const int64_t tasks = (out + LINEAR_TASK_OUTPUTS - 1) / LINEAR_TASK_OUTPUTS;
    pack_job p = {&x->lay, w, perm, out, in, groups, calloc(packed_words, 4), sym ? NULL : calloc(zp_words, 4),
                  malloc((size_t)(groups * out) * 2), calloc((size_t)tasks, sizeof(qpk_status)),
                  calloc((size_t)tasks, sizeof(qpk_err))};
    int32_t *g_idx = permuted ? malloc((size_t)in * sizeof *g_idx) : NULL;
    qpk_status s = p.qweight && (sym || p.qzeros) && p.scales && p.status && p.errs && (!permuted || g_idx)
                       ? QPK_OK
                       : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK)
        s = run_pack(x, tasks, ct_pack_task, &p, e);
    if (s == QPK_OK && g_idx) /* actorder "group" */
        fill_g_idx(g_idx, perm, in, G);
    const int64_t shape[2] = {out, in};
    if (s == QPK_OK)
        s = qpk_st_set_write(set, p.qweight, packed_words * 4, e);
    if (s == QPK_OK)
        s = qpk_st_set_write(set, p.scales, (size_t)(groups * out) * 2, e);
    if (s == QPK_OK)
        s = qpk_st_set_write(set, shape, sizeof shape, e);
    if (s == QPK_OK && !sym)
        s = qpk_st_set_write(set, p.qzeros, zp_words * 4, e);
    if (s == QPK_OK && g_idx)
        s = qpk_st_set_write(set, g_idx, (size_t)in * sizeof *g_idx, e);
    free(p.qweight), free(p.qzeros), free(p.scales), free(p.status), free(p.errs), free(g_idx);
    return s;
}

static qpk_status write_linear(hf_export *x, qpk_st_set *set, const hf_linear *w, const int32_t *perm, qpk_err *e)
{
    const hf_layout *l = &x->lay;
    const int64_t out = w->dims[0], in = w->dims[1], G = w->group_size, groups = in / G;
    const size_t qw_words = (size_t)(in * out / (32 / l->bits)), qz_words = (size_t)(groups * out / (32 / l->bits));
    const int64_t tasks = (out + LINEAR_TASK_OUTPUTS - 1) / LINEAR_TASK_OUTPUTS;
    pack_job p = {l, w, perm, out, in, groups, calloc(qw_words, 4), calloc(qz_words, 4),
                  malloc((size_t)(groups * out) * 2), calloc((size_t)tasks, sizeof(qpk_status)),
                  calloc((size_t)tasks, sizeof(qpk_err))};
    int32_t *g_idx = l->awq ? NULL : malloc((size_t)in * sizeof *g_idx);
    qpk_status s = p.qweight && p.qzeros && p.scales && p.status && p.errs && (l->awq || g_idx)
                       ? QPK_OK
                       : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK)
        s = run_pack(x, tasks, pack_task, &p, e);
    if (s == QPK_OK && g_idx)
        fill_g_idx(g_idx, p.perm, in, G);
    if (s == QPK_OK)
        s = qpk_st_set_write(set, p.qweight, qw_words * 4, e);
    if (s == QPK_OK)
        s = qpk_st_set_write(set, p.qzeros, qz_words * 4, e);
    if (s == QPK_OK)
        s = qpk_st_set_write(set, p.scales, (size_t)(groups * out) * 2, e);
    if (s == QPK_OK && g_idx)
        s = qpk_st_set_write(set, g_idx, (size_t)in * sizeof *g_idx, e);
    free(p.qweight), free(p.qzeros), free(p.scales), free(p.status), free(p.errs), free(g_idx);
    return s;
}

/* quantization_config, as transformers, vLLM and the quantizers' own loaders read it. */
static cJSON *quant_config(const hf_layout *l)
{
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "quant_method", l->awq ? "awq" : "gptq");
    cJSON_AddNumberToObject(q, "bits", l->bits);
    cJSON_AddNumberToObject(q, "group_size", (double)l->group_size);
    if (l->awq) {
        cJSON_AddStringToObject(q, "version", "gemm");
        cJSON_AddBoolToObject(q, "zero_point", true);
        cJSON_AddNullToObject(q, "modules_to_not_convert");
    } else {
        cJSON_AddBoolToObject(q, "sym", l->sym);
        cJSON_AddBoolToObject(q, "desc_act", l->desc_act);
        cJSON_AddBoolToObject(q, "static_groups", false);
        cJSON_AddBoolToObject(q, "true_sequential", true);
        cJSON_AddBoolToObject(q, "lm_head", false);
        cJSON_AddStringToObject(q, "checkpoint_format", l->v2 ? "gptq_v2" : "gptq");
        cJSON *meta = cJSON_AddObjectToObject(q, "meta"), *who = cJSON_AddArrayToObject(meta, "quantizer");
        cJSON_AddItemToArray(who, cJSON_CreateString("qpk:" QPK_VERSION_STRING));
    }
    return q;
}

/* Writes JSON text (with a final newline) as a file of the folder. */
static qpk_status write_json(const char *dir, const char *name, cJSON *root, qpk_err *e)
{
    char *text = root ? cJSON_Print(root) : NULL;
    size_t n = text ? strlen(text) : 0;
    char *line = text ? malloc(n + 2) : NULL;
    qpk_status s = line ? QPK_OK : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK) {
        memcpy(line, text, n), line[n] = '\n';
        s = qpk_write_text_file(dir, name, line, n + 1, e);
    }
    free(text), free(line);
    return s;
}

static qpk_status write_configs(hf_export *x, const char *dir, qpk_err *e)
{
    cJSON *cfg = qpk_config_cjson(x->cfg);
    if (!cfg)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    cJSON *arch = cJSON_CreateArray();
    cJSON_AddItemToArray(arch, cJSON_CreateString(qpk_arch_class(x->cfg->arch)));
    cJSON_AddItemToObject(cfg, "architectures", arch);
    if (x->lay.mlx) { /* mlx-lm's key, and transformers' copy; torch_dtype as the model's */
        if (x->mlx_bits) {
            cJSON_AddItemToObject(cfg, "quantization", mlx_quant_config(x));
            cJSON_AddItemToObject(cfg, "quantization_config", mlx_quant_config(x));
        }
        qpk_status s = write_json(dir, "config.json", cfg, e);
        cJSON_Delete(cfg);
        return s;
    }
    /* The GPU kernels of both layouts compute in f16, the dtype of the scales; the other tensors keep theirs. */
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "torch_dtype", cJSON_CreateString("float16"));
    if (x->lay.ct) {
        cJSON_AddItemToObject(cfg, "quantization_config", x->ct_config);
        x->ct_config = NULL; /* cfg owns it now */
    } else {
        cJSON_AddItemToObject(cfg, "quantization_config", quant_config(&x->lay));
    }
    qpk_status s = write_json(dir, "config.json", cfg, e);
    cJSON_Delete(cfg);
    if (s != QPK_OK || x->lay.awq || x->lay.ct)
        return s;
    cJSON *side = quant_config(&x->lay); /* AutoGPTQ's and GPTQModel's own file says the same */
    s = write_json(dir, "quantize_config.json", side, e);
    cJSON_Delete(side);
    return s;
}

/* The tokenizer and generation files the model carries, byte for byte. */
static qpk_status copy_files(hf_export *x, const char *dir, qpk_err *e)
{
    static const char *const FILES[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                        "chat_template.jinja"};
    for (size_t i = 0; i < sizeof FILES / sizeof *FILES; i++) {
        const qpk_sink_file *f = NULL;
        for (size_t k = 0; k < x->n_files && !f; k++)
            f = !strcmp(x->files[k].name, FILES[i]) ? &x->files[k] : NULL;
        if (f) {
            QPK_TRY(qpk_write_text_file(dir, FILES[i], f->data, f->len, e));
        } else if (x->o.cb.log && strcmp(FILES[i], "chat_template.jinja")) { /* optional, usually absent */
            char msg[160];
            snprintf(msg, sizeof msg, "the model has no %s: the folder has none", FILES[i]);
            x->o.cb.log(x->o.cb.ud, !strcmp(FILES[i], "tokenizer.json") ? QPK_LOG_WARN : QPK_LOG_INFO, msg);
        }
    }
    return QPK_OK;
}

/* ------------------------------------------------------------------ the sink */

qpk_status qpk_hf_sink_create(qpk_hf_sink **out, qpk_output kind, const char *path, const qpk_sink_opts *o,
                              qpk_err *e)
{
    *out = NULL;
    hf_export *x = calloc(1, sizeof *x);
    if (!x)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    x->o = *o;
    x->lay = (hf_layout){.awq = kind == QPK_OUT_AWQ, .ct = kind == QPK_OUT_CT, .mlx = kind == QPK_OUT_MLX, .v2 = o->gptq_v2};
    qpk_status s = qpk_outdir_create(&x->dir, path, e);
    if (s == QPK_OK && (s = qpk_pool_create(&x->pool, o->n_threads, e)) == QPK_OK && o->cb.cancel)
        qpk_pool_set_cancel(x->pool, o->cb.cancel, o->cb.ud);
    if (s != QPK_OK) {
        qpk_hf_sink_discard(x);
        return s;
    }
    *out = x;
    return QPK_OK;
}

qpk_status qpk_hf_sink_declare(qpk_hf_sink *x, const qpk_sink_model *m, qpk_err *e)
{
    x->cfg_copy = *m->cfg, x->cfg = &x->cfg_copy;
    x->files = m->files, x->n_files = m->n_files;
    QPK_TRY(plan(x, m, e));
    qpk_st_assign_shards(x->ent, x->n_ent, x->o.shard_size ? x->o.shard_size : QPK_SHARD_SIZE);
    QPK_TRY(qpk_st_set_create(&x->set, qpk_outdir_tmp(x->dir), x->ent, x->n_ent, e));
    if (x->lay.mlx)
        qpk_st_set_format(x->set, "mlx"); /* what mlx-lm writes, and what MLX's loader looks for */
    return QPK_OK;
}

qpk_status qpk_hf_sink_begin(qpk_hf_sink *x, const qpk_sink_tensor *t, qpk_err *e)
{
    x->cur = linear_of(t);
    /* MLX: every quantized matrix is gathered (its codes, scales and biases are three tensors) */
    x->linear = x->lay.mlx ? qpk_type_is_quantized(t->type) : is_linear(t->role);
    x->n_parts = qpk_role_is_expert(t->role) ? x->cfg->n_experts : 1;
    x->role = t->role, x->layer = t->layer;
    x->permuted = t->permuted;
    x->len = 0;
    if (!x->linear)
        return QPK_OK;
    /* Packing reads a linear whole (AWQ interleaves outputs, GPTQ packs along inputs): gather it. */
    x->need = qpk_type_row_bytes(t->type, t->group_size, t->dims[1]) * (size_t)t->dims[0];
    if (x->need > x->cap) {
        uint8_t *b = realloc(x->buf, x->need);
        if (!b)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %s", x->cur.name);
        x->buf = b, x->cap = x->need;
    }
    return QPK_OK;
}

qpk_status qpk_hf_sink_write(qpk_hf_sink *x, const void *data, size_t n, qpk_err *e)
{
    if (!x->linear)
        return qpk_st_set_write(x->set, data, n, e);
    if (n > x->need - x->len)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s: more bytes than the tensor holds", x->cur.name);
    memcpy(x->buf + x->len, data, n);
    x->len += n;
    return QPK_OK;
}

qpk_status qpk_hf_sink_end(qpk_hf_sink *x, const int32_t *perm, double *max_change, qpk_err *e)
{
    *max_change = 0;
    const mlx_decl *d = x->lay.mlx && qpk_role_is_matrix(x->role) && x->cur_mlx < x->n_mlx ? &x->mlx[x->cur_mlx++] : NULL;
    if (!x->linear)
        return QPK_OK;
    if (x->len != x->need)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%s: fewer bytes than the tensor holds", x->cur.name);
    if (x->lay.mlx) {
        x->cur.data = x->buf;
        QPK_TRY(write_mlx(x, &x->cur, d, e));
        *max_change = x->change;
        return QPK_OK;
    }
    if (x->n_parts == 1) {
        x->cur.data = x->buf;
        return x->lay.ct ? write_linear_ct(x, x->set, &x->cur, perm, x->permuted, e)
                         : write_linear(x, x->set, &x->cur, perm, e);
    }
    hf_linear part = x->cur; /* expert k: rows [k R, (k + 1) R) of the stacked blocks */
    part.dims[0] = x->cur.dims[0] / x->n_parts;
    const size_t bytes = x->need / (size_t)x->n_parts;
    for (int64_t k = 0; k < x->n_parts; k++) {
        qpk_expert_tensor_name(part.name, sizeof part.name, x->role, x->layer, (int)k);
        part.data = x->buf + (size_t)k * bytes;
        QPK_TRY(x->lay.ct ? write_linear_ct(x, x->set, &part, perm, x->permuted, e)
                          : write_linear(x, x->set, &part, perm, e));
    }
    return QPK_OK;
}

qpk_status qpk_hf_sink_finish(qpk_hf_sink *x, qpk_err *e)
{
    qpk_status s = qpk_st_set_finish(x->set, e);
    x->set = NULL;
    if (s == QPK_OK)
        s = write_configs(x, qpk_outdir_tmp(x->dir), e);
    if (s == QPK_OK)
        s = copy_files(x, qpk_outdir_tmp(x->dir), e);
    if (s == QPK_OK) {
        s = qpk_outdir_commit(x->dir, e);
        x->dir = NULL;
    }
    qpk_hf_sink_discard(x);
    return s;
}

void qpk_hf_sink_discard(qpk_hf_sink *x)
{
    if (!x)
        return;
    qpk_st_set_discard(x->set);
    qpk_outdir_discard(x->dir);
    qpk_pool_free(x->pool);
    free(x->ent);
    free(x->buf);
    free(x->decl);
    free(x->mlx);
    cJSON_Delete(x->ct_config);
    free(x);
}
