/*
 * Requantizing what GGUF cannot hold as it is: an act-order linear (its groups gather
 * scattered input columns, kept in a .qpk by an input permutation), and an asymmetric
 * 8-bit linear (int8z) some of whose codes minus their zero point leave Q8_0's int8.
 * qpk_requantize_for_gguf rewrites such linears by round-to-nearest in groups of 32 in
 * input order, from their exact weights; everything else is copied byte for byte. Only
 * on explicit request (qconvert --requantize), which then measures the cost.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define REQUANT_GROUP 32 /* ggml's blocks */

/* The type an act-order linear becomes: the same grid, as GGUF holds it (int8z has no Q8_0 zero: int8). */
static uint32_t requant_type(uint32_t type) { return type == QPK_TYPE_INT8Z ? QPK_TYPE_INT8 : type; }

/* Whether every code of an int8z tensor minus its block's zero point fits an int8 (Q8_0 holds it as it is). */
static bool int8z_fits(const qpk_tensor *t)
{
    const size_t bb = qpk_type_block_bytes(t->type, t->group_size);
    for (const uint8_t *b = t->data, *end = b + t->nbytes; b < end; b += bb) {
        const int32_t z = b[2] | b[3] << 8;
        for (uint32_t i = 0; i < t->group_size; i++)
            if (b[4 + i] - z < -128 || b[4 + i] - z > 127)
                return false;
    }
    return true;
}

/* Rows of w, each decoded exactly, un-permuted into input order (perm may be NULL), then quantized to groups of 32. */
static qpk_status requantize(qpk_writer *w, const qpk_tensor *t, const qpk_tensor *perm, qpk_err *e)
{
    const int64_t rows = t->dims[0], cols = t->dims[1];
    const uint32_t type = requant_type(t->type);
    const size_t in_row = qpk_type_row_bytes(t->type, t->group_size, cols);
    const size_t out_row = qpk_type_row_bytes(type, REQUANT_GROUP, cols);
    float *stored = malloc((size_t)cols * sizeof *stored), *x = malloc((size_t)cols * sizeof *x);
    uint8_t *out = malloc(out_row);
    qpk_status s = stored && x && out && out_row ? qpk_writer_begin_tensor(w, t->name, type, REQUANT_GROUP, 2, t->dims, e)
                                                 : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    for (int64_t r = 0; r < rows && s == QPK_OK; r++) {
        qpk_dequantize_row(t->type, t->group_size, (const uint8_t *)t->data + (size_t)r * in_row, cols, stored);
        for (int64_t j = 0; j < cols; j++) {
            int32_t i = (int32_t)j;
            if (perm)
                memcpy(&i, (const uint8_t *)perm->data + 4 * j, 4); /* a permutation: qpk_check_model checked it */
            x[i] = stored[j];
        }
        s = qpk_quantize_row(type, REQUANT_GROUP, x, cols, out, e);
        if (s == QPK_OK)
            s = qpk_writer_write(w, out, out_row, e);
        else
            qpk_err_prefix(e, s, "%s row %lld", t->name, (long long)r);
    }
    free(stored), free(x), free(out);
    QPK_TRY(s);
    return qpk_writer_end_tensor(w, e);
}

static qpk_status copy_tensor(qpk_writer *w, const qpk_tensor *t, qpk_err *e)
{
    QPK_TRY(qpk_writer_begin_tensor(w, t->name, t->type, t->group_size, t->ndim, t->dims, e));
    QPK_TRY(qpk_writer_write(w, t->data, (size_t)t->nbytes, e));
    return qpk_writer_end_tensor(w, e);
}

/* The input's metadata, now version 1 (no permutation left), its recipe saying what was requantized. */
static char *requant_metadata(const qpk_file *f, int n, qpk_err *e)
{
    size_t len;
    const char *m = qpk_metadata(f, &len);
    cJSON *meta = cJSON_ParseWithLength(m, len);
    cJSON *q = meta ? cJSON_GetObjectItemCaseSensitive(meta, "quantization") : NULL;
    if (meta && !cJSON_IsObject(q)) {
        cJSON_DeleteItemFromObjectCaseSensitive(meta, "quantization");
        q = cJSON_AddObjectToObject(meta, "quantization");
    }
    char *text = NULL;
    if (q) {
        cJSON_ReplaceItemInObjectCaseSensitive(meta, "format_version", cJSON_CreateNumber(1));
        if (cJSON_GetObjectItemCaseSensitive(q, "permuted_inputs"))
            cJSON_ReplaceItemInObjectCaseSensitive(q, "permuted_inputs", cJSON_CreateNumber(0));
        cJSON_DeleteItemFromObjectCaseSensitive(q, "requantized"); /* a second pass finds nothing: say so, once */
        cJSON *r = cJSON_AddObjectToObject(q, "requantized");
        cJSON_AddStringToObject(r, "why", "act-order groups are not runs of 32 input columns; int8z codes whose "
                                "offset from the zero leaves Q8_0's int8");
        cJSON_AddStringToObject(r, "method", "rtn");
        cJSON_AddNumberToObject(r, "group", REQUANT_GROUP);
        cJSON_AddNumberToObject(r, "linears", n);
        text = cJSON_PrintUnformatted(meta);
    }
    cJSON_Delete(meta);
    if (!text)
        qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    return text;
}

qpk_status qpk_requantize_for_gguf(const char *in, const char *out, const qpk_convert_opts *o, int *n_requantized,
                                   qpk_err *e)
{
    qpk_file *f = NULL;
    qpk_writer *w = NULL;
    char *meta = NULL;
    int n = 0;
    qpk_status s = qpk_check_not_input(out, in, e);
    if (s == QPK_OK)
        s = qpk_open(&f, in, NULL, e);
    if (s == QPK_OK)
        s = qpk_check_model(f, e);
    if (s == QPK_OK)
        s = qpk_writer_create(&w, out, e);
    const qpk_config *c = s == QPK_OK ? qpk_file_config(f) : NULL;
    for (size_t i = 0; s == QPK_OK && i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        char name[QPK_MAX_NAME];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_tensor_name(name, sizeof name, role, layer);
        const qpk_tensor *t = qpk_find_tensor(f, name), *perm = NULL;
        if (qpk_perm_name(name, sizeof name, role, layer))
            perm = qpk_find_tensor(f, name);
        bool redo = perm || (t->type == QPK_TYPE_INT8Z && !int8z_fits(t));
        s = redo ? requantize(w, t, perm, e) : copy_tensor(w, t, e);
        n += redo;
        if (s == QPK_OK && o && o->cb.cancel && o->cb.cancel(o->cb.ud))
            s = qpk_err_setf(e, QPK_E_CANCELLED, "conversion cancelled");
    }
    for (size_t i = 0; s == QPK_OK && i < qpk_n_blobs(f); i++) {
        const char *name = qpk_blob_name(f, i, NULL);
        char *data;
        size_t len;
        if ((s = qpk_read_blob(f, name, &data, &len, e)) == QPK_OK && data)
            s = qpk_writer_add_blob(w, name, data, len, e);
        free(data);
    }
    if (s == QPK_OK && !(meta = requant_metadata(f, n, e)))
        s = QPK_E_NOMEM;
    if (s == QPK_OK) {
        s = qpk_writer_finish(w, meta, strlen(meta), e);
        w = NULL;
    }
    if (n_requantized)
        *n_requantized = n;
    free(meta);
    qpk_writer_discard(w);
    qpk_close(f);
    return s;
}
