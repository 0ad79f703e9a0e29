/*
 * qpk_convert: HF folder -> .qpk, streaming one tensor at a time from the mapped
 * safetensors into the writer. Memory use is one conversion chunk, whatever the
 * model size; the output appears only when complete (see the writer).
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

#define CHUNK_ELEMS (1u << 18)       /* f32 staging for conversions: 1 MiB */
#define COPY_CHUNK (64ull << 20)     /* bytes per write when copying as is */

/* Files of the model folder carried into the .qpk, when present. */
static const char *const EMBEDDED_FILES[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};

typedef struct job {
    const qpk_convert_opts *o;
    qpk_writer *w;
    uint64_t done, total;
    float *f32;
    void *out;
    cJSON *prov_tensors;
} job;

static qpk_status poll(job *j, const char *what, qpk_err *e)
{
    const qpk_callbacks *cb = &j->o->cb;
    if (cb->progress)
        cb->progress(cb->ud, what, j->done, j->total);
    if (cb->cancel && cb->cancel(cb->ud))
        return qpk_err_setf(e, QPK_E_CANCELLED, "conversion cancelled");
    return QPK_OK;
}

static qpk_status copy_bytes(job *j, const qpk_st_tensor *t, qpk_err *e)
{
    const uint8_t *p = t->data;
    for (uint64_t off = 0; off < t->nbytes; off += COPY_CHUNK) {
        size_t n = (size_t)(t->nbytes - off < COPY_CHUNK ? t->nbytes - off : COPY_CHUNK);
        qpk_status s = qpk_writer_write(j->w, p + off, n, e);
        if (s != QPK_OK)
            return s;
        j->done += n;
        if ((s = poll(j, t->name, e)) != QPK_OK)
            return s;
    }
    return QPK_OK;
}

static qpk_status convert_values(job *j, const qpk_st_tensor *t, qpk_type type, qpk_err *e)
{
    size_t out_size = type == QPK_TYPE_F32 ? 4 : 2;
    for (uint64_t i = 0; i < t->numel; i += CHUNK_ELEMS) {
        size_t n = (size_t)(t->numel - i < CHUNK_ELEMS ? t->numel - i : CHUNK_ELEMS);
        qpk_st_to_f32(t, i, n, j->f32);
        size_t bad = qpk_row_from_f32(type, j->f32, j->out, n);
        if (bad != n)
            return qpk_err_setf(e, QPK_E_VALUE, "tensor '%s': element %" PRIu64 " (%g) is %s", t->name, i + bad,
                                (double)j->f32[bad],
                                isfinite(j->f32[bad]) ? (type == QPK_TYPE_F16 ? "too large for f16" : "too large")
                                                      : "not finite");
        qpk_status s = qpk_writer_write(j->w, j->out, n * out_size, e);
        if (s != QPK_OK)
            return s;
        j->done += n * qpk_st_dtype_size(t->dtype);
        if ((s = poll(j, t->name, e)) != QPK_OK)
            return s;
    }
    return QPK_OK;
}

/* Records a source tensor in the provenance; `hash` is its XXH3 when already known. */
static void note_source(job *j, const qpk_st_tensor *t, const uint64_t *hash)
{
    char hex[17];
    snprintf(hex, sizeof hex, "%016" PRIx64, hash ? *hash : qpk_xxh3(t->data, (size_t)t->nbytes));
    cJSON *o = cJSON_AddObjectToObject(j->prov_tensors, t->name);
    cJSON *shape = cJSON_CreateArray();
    for (int d = 0; d < t->ndim; d++)
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
    cJSON_AddStringToObject(o, "dtype", qpk_st_dtype_name(t->dtype));
    cJSON_AddItemToObject(o, "shape", shape);
    cJSON_AddStringToObject(o, "xxh3", hex);
}

static qpk_status write_tensors(job *j, const qpk_checkpoint *ck, qpk_err *e)
{
    const qpk_config *c = qpk_checkpoint_config(ck);
    size_t n = qpk_model_n_tensors(c);
    for (size_t i = 0; i < n; i++) {
        qpk_role role;
        int layer;
        qpk_model_tensor_at(c, i, &role, &layer);
        j->total += qpk_checkpoint_tensor(ck, role, layer)->nbytes;
    }
    for (size_t i = 0; i < n; i++) {
        qpk_role role;
        int layer;
        char name[QPK_MAX_NAME];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_tensor_name(name, sizeof name, role, layer);
        const qpk_st_tensor *t = qpk_checkpoint_tensor(ck, role, layer);
        qpk_type type = j->o->dtype < 0 ? qpk_st_keep_type(t->dtype) : (qpk_type)j->o->dtype;
        bool as_is = qpk_st_keep_type(t->dtype) == type && t->dtype != QPK_ST_F64;
        uint64_t h = 0;
        qpk_status s = qpk_writer_begin_tensor(j->w, name, type, 0, t->ndim, t->shape, e);
        if (s == QPK_OK)
            s = as_is ? copy_bytes(j, t, e) : convert_values(j, t, type, e);
        if (s == QPK_OK)
            s = qpk_writer_end_tensor(j->w, e);
        if (s != QPK_OK)
            return s;
        h = qpk_writer_last_xxh3(j->w); /* stored as is: the source's bytes, so one hash serves both */
        note_source(j, t, as_is ? &h : NULL);
    }
    return QPK_OK;
}

static qpk_status embed_files(job *j, const char *dir, cJSON *prov, qpk_err *e)
{
    cJSON *list = cJSON_AddArrayToObject(prov, "embedded_files");
    for (size_t i = 0; i < sizeof EMBEDDED_FILES / sizeof *EMBEDDED_FILES; i++) {
        char *data;
        size_t len;
        bool missing;
        qpk_status s = qpk_read_model_file(dir, EMBEDDED_FILES[i], &data, &len, &missing, e);
        if (s != QPK_OK && missing) {
            if (j->o->cb.log) {
                char msg[128];
                snprintf(msg, sizeof msg, "no %s in the model folder: not embedded", EMBEDDED_FILES[i]);
                j->o->cb.log(j->o->cb.ud, QPK_LOG_INFO, msg);
            }
            continue;
        }
        if (s == QPK_OK)
            s = qpk_writer_add_blob(j->w, EMBEDDED_FILES[i], data, len, e);
        free(data);
        if (s != QPK_OK)
            return s;
        cJSON_AddItemToArray(list, cJSON_CreateString(EMBEDDED_FILES[i]));
    }
    return QPK_OK;
}

static cJSON *base_metadata(const qpk_checkpoint *ck, const qpk_convert_opts *o, cJSON **prov)
{
    cJSON *m = cJSON_CreateObject();
    char *cfg_json = qpk_config_to_json(qpk_checkpoint_config(ck));
    cJSON *cfg = cfg_json ? cJSON_Parse(cfg_json) : NULL;
    free(cfg_json);
    if (!m || !cfg) {
        cJSON_Delete(m);
        cJSON_Delete(cfg);
        return NULL;
    }
    cJSON_AddStringToObject(m, "format", "qpk");
    cJSON_AddNumberToObject(m, "format_version", 1);
    cJSON_AddStringToObject(m, "architecture", "qwen2");
    cJSON_AddItemToObject(m, "config", cfg);
    cJSON_AddBoolToObject(m, "tied", qpk_checkpoint_config(ck)->tie_word_embeddings);
    cJSON_AddNullToObject(m, "quantization");
    *prov = cJSON_AddObjectToObject(m, "provenance");
    cJSON_AddStringToObject(*prov, "tool", "qconvert");
    cJSON_AddStringToObject(*prov, "version", QPK_VERSION_STRING);
    cJSON_AddStringToObject(*prov, "command", o->command ? o->command : "");
    cJSON_AddStringToObject(*prov, "dtype", o->dtype < 0 ? "keep" : qpk_type_name((uint32_t)o->dtype));
    cJSON *files = cJSON_AddArrayToObject(*prov, "source_files");
    for (size_t i = 0; i < qpk_checkpoint_n_files(ck); i++) {
        uint64_t size;
        const char *name = qpk_checkpoint_file(ck, i, &size);
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "name", name);
        cJSON_AddNumberToObject(f, "size", (double)size);
        cJSON_AddItemToArray(files, f);
    }
    cJSON *ign = cJSON_AddArrayToObject(*prov, "ignored_tensors");
    for (size_t i = 0; i < qpk_checkpoint_n_ignored(ck); i++)
        cJSON_AddItemToArray(ign, cJSON_CreateString(qpk_checkpoint_ignored(ck, i)));
    return m;
}

qpk_status qpk_convert(const char *dir, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    if (o->dtype >= 0 && o->dtype != QPK_TYPE_F32 && o->dtype != QPK_TYPE_F16 && o->dtype != QPK_TYPE_BF16)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "--dtype must be keep, f32, f16 or bf16");
    qpk_checkpoint *ck = NULL;
    job j = {.o = o};
    cJSON *meta = NULL, *prov = NULL;
    char *text = NULL;
    qpk_status s = qpk_checkpoint_open(&ck, dir, &o->cb, e);
    if (s == QPK_OK && !(meta = base_metadata(ck, o, &prov)))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK)
        s = qpk_writer_create(&j.w, out, e);
    if (s == QPK_OK) {
        j.prov_tensors = cJSON_AddObjectToObject(prov, "source_tensors");
        j.f32 = malloc(CHUNK_ELEMS * sizeof(float));
        j.out = malloc(CHUNK_ELEMS * sizeof(float));
        if (!j.f32 || !j.out)
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    if (s == QPK_OK)
        s = write_tensors(&j, ck, e);
    if (s == QPK_OK)
        s = embed_files(&j, dir, prov, e);
    if (s == QPK_OK && !(text = cJSON_PrintUnformatted(meta)))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK) {
        s = qpk_writer_finish(j.w, text, strlen(text), e);
        j.w = NULL;
    }
    qpk_writer_discard(j.w);
    free(text);
    free(j.f32);
    free(j.out);
    cJSON_Delete(meta);
    qpk_checkpoint_close(ck);
    return s;
}
