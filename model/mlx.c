/*
 * MLX checkpoints (mlx-lm's quantized folders, mlx-community's releases), read exactly.
 * config.json says how in "quantization" (mlx-lm's key; transformers' quantization_config
 * repeats it): {"group_size": G, "bits": b, "mode": "affine"} and, for a model quantized
 * unevenly, module paths mapping to their own {"group_size", "bits"} or to false (float).
 * Per quantized module P (a linear, the embedding, an untied head):
 *
 *   P.weight U32 [out, in b / 32]: the unsigned codes of row o as one little-endian bit
 *            stream, input i at bit i b;
 *   P.scales, P.biases [out, in / G] in the model's dtype; w[o][i] = s q + b, g = i / G.
 *
 * Each group becomes one block of the affine type of its width and dtype (mlx4, mlx8,
 * mlx4_f16, mlx8_f16: FORMAT.md section 6), its scale and bias bytes as stored, so every
 * weight is the exact s q + b rounded once to f32, as MLX's f32 kernels compute it.
 * A module stored with scales is quantized (mlx-lm's own rule); one stored as a float
 * .weight is float unless an override says otherwise.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A config entry's group size and width, checked against what MLX's affine kernels take (and qpk's types hold). */
static qpk_status mlx_scheme(const cJSON *o, const char *where, int dflt_bits, int64_t dflt_group, int *bits,
                             int64_t *group, qpk_err *e)
{
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "bits"), *g = cJSON_GetObjectItemCaseSensitive(o, "group_size");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(o, "mode");
    if ((b && !cJSON_IsNumber(b)) || (g && !cJSON_IsNumber(g)))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s: bits and group_size must be numbers", where);
    if (mode && !(cJSON_IsString(mode) && !strcmp(mode->valuestring, "affine")))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: mode %.32s: qpk reads MLX's affine quantization", where,
                            cJSON_IsString(mode) ? mode->valuestring : "(not a string)");
    const double bv = b ? b->valuedouble : dflt_bits, gv = g ? g->valuedouble : (double)dflt_group;
    if (bv != 4 && bv != 8)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: %g-bit MLX quantization: qpk reads 4 and 8 bits", where, bv);
    if (gv != 32 && gv != 64 && gv != 128)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: group_size %g: MLX's groups are 32, 64 or 128", where, gv);
    *bits = (int)bv, *group = (int64_t)gv;
    return QPK_OK;
}

qpk_status qpk_mlx_parse(const cJSON *quant, const cJSON *qc, qpk_hfq *q, qpk_err *e)
{
    memset(q, 0, sizeof *q);
    if (!cJSON_IsObject(quant))
        return qpk_err_setf(e, QPK_E_CORRUPT, "config.json: quantization is not an object");
    q->method = QPK_HFQ_MLX;
    QPK_TRY(mlx_scheme(quant, "quantization", 4, 64, &q->bits, &q->group, e));
    q->sym = false;
    const cJSON *it;
    size_t n = 0;
    cJSON_ArrayForEach(it, quant) n += strcmp(it->string, "bits") && strcmp(it->string, "group_size") &&
                                       strcmp(it->string, "mode");
    if (n && !(q->mlx = calloc(n, sizeof *q->mlx)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    cJSON_ArrayForEach(it, quant)
    {
        if (!strcmp(it->string, "bits") || !strcmp(it->string, "group_size") || !strcmp(it->string, "mode"))
            continue;
        qpk_mlx_module *m = &q->mlx[q->n_mlx++];
        if (!it->string[0] || strlen(it->string) >= sizeof m->name)
            return qpk_err_setf(e, QPK_E_CORRUPT, "config.json: quantization names a module of %zu bytes",
                                strlen(it->string));
        snprintf(m->name, sizeof m->name, "%s", it->string);
        if (cJSON_IsFalse(it))
            continue; /* bits 0: left in float */
        char where[QPK_MAX_NAME + 32];
        snprintf(where, sizeof where, "quantization[\"%s\"]", it->string);
        if (!cJSON_IsObject(it))
            return qpk_err_setf(e, QPK_E_CORRUPT, "config.json: %s is neither an object nor false", where);
        QPK_TRY(mlx_scheme(it, where, q->bits, q->group, &m->bits, &m->group, e));
    }
    /* transformers' copy, when there is one, must say the same of the whole model. */
    if (qc && !cJSON_IsNull(qc)) {
        qpk_hfq other = {0};
        qpk_status s = cJSON_IsObject(qc) ? mlx_scheme(qc, "quantization_config", 4, 64, &other.bits, &other.group, e)
                                          : qpk_err_setf(e, QPK_E_CORRUPT, "quantization_config is not an object");
        if (s == QPK_OK && (other.bits != q->bits || other.group != q->group))
            s = qpk_err_setf(e, QPK_E_MISMATCH, "config.json: quantization says %d bits in groups of %lld, "
                             "quantization_config %d in groups of %lld", q->bits, (long long)q->group, other.bits,
                             (long long)other.group);
        return s;
    }
    return QPK_OK;
}

void qpk_mlx_module_scheme(qpk_hfq *q, const char *name, int *k)
{
    *k = -1;
    for (int i = 0; i < q->n_mlx && *k < 0; i++)
        if (!strcmp(q->mlx[i].name, name)) {
            q->mlx[i].used = true;
            *k = i;
        }
}

void qpk_mlx_layout(const qpk_hfq *q, int k, qpk_hfq *out)
{
    *out = (qpk_hfq){.method = QPK_HFQ_MLX, .bits = q->mlx[k].bits, .group = q->mlx[k].group};
}

qpk_status qpk_mlx_check_used(const qpk_hfq *q, qpk_err *e)
{
    for (int i = 0; i < q->n_mlx; i++)
        if (!q->mlx[i].used)
            return qpk_err_setf(e, QPK_E_MISMATCH, "config.json: quantization names %s, which is no module of the "
                                "model that MLX quantizes", q->mlx[i].name);
    return QPK_OK;
}

/* ------------------------------------------------------------- a module */

static qpk_status expect(const qpk_qlinear *l, const qpk_st_tensor *t, const char *part, int64_t d0, int64_t d1,
                         qpk_err *e)
{
    if (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1) {
        char got[64] = "[";
        for (int i = 0; i < t->ndim && i < 4; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), i ? ", %lld" : "%lld", (long long)t->shape[i]);
        strcat(got, "]");
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s.%s has shape %s; config.json implies [%lld, %lld] (%d bits, "
                            "groups of %lld)", l->name, part, got, (long long)d0, (long long)d1, l->q->bits,
                            (long long)l->q->group);
    }
    return QPK_OK;
}

qpk_status qpk_mlx_linear_init(qpk_qlinear *l, qpk_err *e)
{
    const int bits = l->q->bits;
    const int64_t G = l->q->group;
    if (!l->qweight || !l->scales || !l->qzeros)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s is quantized but has no %s", l->name,
                            !l->qweight ? ".weight" : !l->scales ? ".scales" : ".biases");
    if (l->cols % G != 0)
        return qpk_err_setf(e, QPK_E_MISMATCH, "%s has %lld inputs: not whole groups of %lld", l->name,
                            (long long)l->cols, (long long)G);
    if (l->qweight->dtype != QPK_ST_U32)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s.weight is %s next to .scales: MLX packs codes in U32", l->name,
                            qpk_st_dtype_name(l->qweight->dtype));
    QPK_TRY(expect(l, l->qweight, "weight", l->rows, l->cols * bits / 32, e));
    l->groups = l->cols / G;
    QPK_TRY(expect(l, l->scales, "scales", l->rows, l->groups, e));
    QPK_TRY(expect(l, l->qzeros, "biases", l->rows, l->groups, e));
    const qpk_st_dtype dt = l->scales->dtype;
    if ((dt != QPK_ST_BF16 && dt != QPK_ST_F16) || l->qzeros->dtype != dt)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "%s: scales %s, biases %s: qpk reads MLX scales and biases both "
                            "BF16 or both F16", l->name, qpk_st_dtype_name(dt), qpk_st_dtype_name(l->qzeros->dtype));
    l->type = bits == 4 ? (dt == QPK_ST_BF16 ? QPK_TYPE_MLX4 : QPK_TYPE_MLX4_F16)
                        : (dt == QPK_ST_BF16 ? QPK_TYPE_MLX8 : QPK_TYPE_MLX8_F16);
    l->group = (uint32_t)G;
    const qpk_type ht = dt == QPK_ST_BF16 ? QPK_TYPE_BF16 : QPK_TYPE_F16;
    for (int k = 0; k < 2; k++) {
        const qpk_st_tensor *t = k ? l->qzeros : l->scales;
        const size_t bad = qpk_first_nonfinite(ht, t->data, (size_t)t->numel);
        if (bad < (size_t)t->numel)
            return qpk_err_setf(e, QPK_E_VALUE, "%s.%s[%lld][%lld] is not finite", l->name, k ? "biases" : "scales",
                                (long long)(bad / (size_t)l->groups), (long long)(bad % (size_t)l->groups));
    }
    if (dt == QPK_ST_BF16) /* bf16 reaches f32's range: the largest code's weight s qmax + b must be finite too */
        for (uint64_t i = 0; i < l->scales->numel; i++) {
            uint8_t head[4];
            memcpy(head, (const uint8_t *)l->scales->data + 2 * i, 2);
            memcpy(head + 2, (const uint8_t *)l->qzeros->data + 2 * i, 2);
            if (!isfinite(qpk_affine_top(head, (uint32_t)bits)))
                return qpk_err_setf(e, QPK_E_VALUE, "%s: group %llu of row %llu overflows f32 (scale times %d plus "
                                    "bias)", l->name, (unsigned long long)(i % (uint64_t)l->groups),
                                    (unsigned long long)(i / (uint64_t)l->groups), (1 << bits) - 1);
        }
    return QPK_OK;
}

void qpk_mlx_linear_rows(const qpk_qlinear *l, int64_t r0, int64_t n, uint8_t *out)
{
    const int bits = l->q->bits;
    const int64_t in = l->cols, G = l->group, words = in * bits / 32;
    const size_t row_bytes = qpk_type_row_bytes(l->type, l->group, in), bb = qpk_type_block_bytes(l->type, l->group);
    const uint8_t *sc = l->scales->data, *bi = l->qzeros->data, *qw = l->qweight->data;
    for (int64_t o = r0; o < r0 + n; o++) {
        const uint8_t *codes = qw + (size_t)(o * words) * 4; /* little-endian words: the row's stream is its bytes */
        for (int64_t g = 0; g < in / G; g++) {
            uint8_t *b = out + (size_t)(o - r0) * row_bytes + (size_t)g * bb;
            const size_t at = (size_t)(o * l->groups + g) * 2;
            memcpy(b + offsetof(qpk_head_affine, s), sc + at, 2); /* the halves as stored: exact */
            memcpy(b + offsetof(qpk_head_affine, b), bi + at, 2);
            uint8_t *dst = b + sizeof(qpk_head_affine);
            const uint8_t *src = codes + (size_t)(g * G * bits / 8);
            if (bits == 8) {
                memcpy(dst, src, (size_t)G);
                continue;
            }
            for (int64_t c = 0; c < G / 32; c++, src += 16, dst += 16) /* byte j: code j low, code j + 16 high */
                for (int j = 0; j < 16; j++) {
                    const int lo = src[j / 2] >> (4 * (j % 2)) & 15, hi = src[8 + j / 2] >> (4 * (j % 2)) & 15;
                    dst[j] = (uint8_t)(lo | hi << 4);
                }
        }
    }
}
