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
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "quant_method \"%.32s\": qpk reads gptq and awq checkpoints",
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
    const uint8_t *p = (const uint8_t *)l->scales->data + (size_t)(g * l->rows + o) * qpk_st_dtype_size(l->scales->dtype);
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

static qpk_status check_tensors(qpk_qlinear *l, qpk_err *e)
{
    const qpk_hfq *q = l->q;
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
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s.g_idx[%lld] is %d, outside its %lld groups", l->name, (long long)i,
                                g, (long long)l->groups);
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
                return qpk_err_setf(e, QPK_E_VALUE, "%s.scales[%lld][%lld] is %g: %s", l->name, (long long)g,
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
    return l->qweight->nbytes + l->qzeros->nbytes + l->scales->nbytes + (l->g_idx ? l->g_idx->nbytes : 0);
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
