/*
 * GGUF -> .qpk: a Qwen2 GGUF's tensors in their ggml types, byte for byte (qpk stores
 * ggml's block types as they are: FORMAT.md section 6), under their Hugging Face names,
 * with the config its qwen2.* keys give and the tokenizer its tokenizer.ggml.* keys
 * describe. Nothing is requantized; the recipe records where it came from.
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "qpk/gguf.h"

/* tokenizer_config.json as far as a GGUF says it: special tokens and the chat template. */
static char *tokenizer_config(const qpk_gguf *g)
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

static cJSON *recipe(const qpk_gguf *g, const qpk_config *c)
{
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "method", "imported");
    cJSON *src = cJSON_AddObjectToObject(q, "source");
    cJSON_AddStringToObject(src, "format", "gguf");
    qpk_gguf_value v;
    if (qpk_gguf_find(g, "general.file_type", &v) && v.type == QPK_GGUF_U32)
        cJSON_AddNumberToObject(src, "file_type", (double)v.num.u);
    /* How many of the matrices came in each ggml type. */
    cJSON *types = cJSON_AddObjectToObject(q, "tensors");
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        char name[64];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_gguf_tensor_name(name, sizeof name, role, layer);
        const qpk_gguf_tensor *t = qpk_gguf_find_tensor(g, name);
        const char *tn = qpk_ggml_type_name(t->type);
        cJSON *n = cJSON_GetObjectItemCaseSensitive(types, tn);
        if (n)
            cJSON_SetNumberValue(n, n->valuedouble + 1);
        else
            cJSON_AddNumberToObject(types, tn, 1);
    }
    return q;
}

static qpk_status write_tensors(qpk_writer *w, const qpk_gguf *g, const qpk_config *c, const qpk_callbacks *cb,
                                qpk_err *e)
{
    uint64_t done = 0, total = 0;
    for (size_t i = 0; i < qpk_gguf_n_tensors(g); i++)
        total += qpk_gguf_tensor_at(g, i)->nbytes;
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        char gname[64], name[QPK_MAX_NAME];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_gguf_tensor_name(gname, sizeof gname, role, layer);
        qpk_tensor_name(name, sizeof name, role, layer);
        const qpk_gguf_tensor *t = qpk_gguf_find_tensor(g, gname);
        uint32_t type, group;
        qpk_type_of_ggml(t->type, &type, &group); /* checked by qpk_gguf_qwen2 */
        int64_t dims[2];
        int nd = qpk_role_shape(c, role, dims);
        QPK_TRY(qpk_writer_begin_tensor(w, name, type, group, nd, dims, e));
        QPK_TRY(qpk_writer_write(w, t->data, (size_t)t->nbytes, e));
        QPK_TRY(qpk_writer_end_tensor(w, e));
        done += t->nbytes;
        if (cb && cb->progress)
            cb->progress(cb->ud, name, done, total);
        if (cb && cb->cancel && cb->cancel(cb->ud))
            return qpk_err_setf(e, QPK_E_CANCELLED, "conversion cancelled");
    }
    return QPK_OK;
}

qpk_status qpk_convert_gguf(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    qpk_gguf *g = NULL;
    qpk_model *m = NULL;
    qpk_writer *w = NULL;
    qpk_config c;
    char *tok = NULL, *tok_cfg = NULL, *cfg_json = NULL, *meta_text = NULL;
    size_t tok_len = 0;
    cJSON *meta = NULL;
    const qpk_callbacks *cb = o ? &o->cb : NULL;
    qpk_status s = qpk_check_not_input(out, in, e);
    if (s == QPK_OK)
        s = qpk_gguf_open(&g, in, e);
    if (s == QPK_OK)
        s = qpk_gguf_qwen2(g, &c, e);
    if (s == QPK_OK) /* every check the runtime makes (finite scales): what it would refuse is not written */
        s = qpk_gguf_model(&m, g, e);
    if (s == QPK_OK)
        s = qpk_gguf_tokenizer_json(g, &tok, &tok_len, e);
    if (s == QPK_OK && (!(tok_cfg = tokenizer_config(g)) || !(cfg_json = qpk_config_to_json(&c))))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK) {
        meta = cJSON_CreateObject();
        cJSON_AddStringToObject(meta, "format", "qpk");
        cJSON_AddNumberToObject(meta, "format_version", 1);
        cJSON_AddStringToObject(meta, "architecture", "qwen2");
        cJSON_AddItemToObject(meta, "config", cJSON_Parse(cfg_json));
        cJSON_AddBoolToObject(meta, "tied", c.tie_word_embeddings);
        cJSON_AddItemToObject(meta, "quantization", recipe(g, &c));
        cJSON *prov = cJSON_AddObjectToObject(meta, "provenance");
        cJSON_AddStringToObject(prov, "tool", "qconvert");
        cJSON_AddStringToObject(prov, "version", QPK_VERSION_STRING);
        char *cmd = qpk_utf8_dup(o && o->command ? o->command : "");
        cJSON_AddStringToObject(prov, "command", cmd ? cmd : "");
        free(cmd);
        cJSON *files = cJSON_AddArrayToObject(prov, "embedded_files");
        cJSON_AddItemToArray(files, cJSON_CreateString("tokenizer.json"));
        cJSON_AddItemToArray(files, cJSON_CreateString("tokenizer_config.json"));
        if (!(meta_text = cJSON_PrintUnformatted(meta)))
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    if (s == QPK_OK)
        s = qpk_writer_create(&w, out, e);
    if (s == QPK_OK)
        s = write_tensors(w, g, &c, cb, e);
    if (s == QPK_OK)
        s = qpk_writer_add_blob(w, "tokenizer.json", tok, tok_len, e);
    if (s == QPK_OK)
        s = qpk_writer_add_blob(w, "tokenizer_config.json", tok_cfg, strlen(tok_cfg), e);
    if (s == QPK_OK) {
        s = qpk_writer_finish(w, meta_text, strlen(meta_text), e);
        w = NULL;
    }
    qpk_writer_discard(w);
    cJSON_Delete(meta);
    free(tok), free(tok_cfg), free(cfg_json), free(meta_text);
    qpk_model_free(m);
    qpk_gguf_close(g);
    return s;
}
