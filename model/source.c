/*
 * Sources: whatever a user names as a model, identified once (qpk_identify) and read by
 * the one reader of its layout: checkpoint.c (Hugging Face folders, hfquant.c for their
 * GPTQ/AWQ linears), format/reader.c (.qpk), gguf_model.c (Qwen2 GGUF), safetensors
 * (reference logits). Everything above sees tensors as qpk matrices.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk/tokenizer.h"

struct qpk_source {
    qpk_source_kind kind;
    char *path;
    qpk_config cfg;
    qpk_checkpoint *ck;
    qpk_file *file;
    qpk_gguf *gguf;
    qpk_safetensors *logits;
    char **inputs; /* every file read, for the output checks */
    size_t n_inputs;
};

/* Files of a Hugging Face folder read besides the safetensors: an output must not replace them either. */
static const char *const FOLDER_FILES[] = {"config.json", "model.safetensors.index.json", "tokenizer.json",
                                           "tokenizer_config.json", "generation_config.json", "quantize_config.json"};

static qpk_status add_input(qpk_source *s, const char *dir, const char *name, qpk_err *e)
{
    char **p = realloc(s->inputs, (s->n_inputs + 1) * sizeof *p);
    if (!p)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    s->inputs = p;
    size_t n = (dir ? strlen(dir) + 1 : 0) + strlen(name) + 1;
    if (!(p[s->n_inputs] = malloc(n)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (dir)
        snprintf(p[s->n_inputs], n, "%s/%s", dir, name);
    else
        snprintf(p[s->n_inputs], n, "%s", name);
    s->n_inputs++;
    return QPK_OK;
}

static qpk_status open_folder(qpk_source *s, const qpk_callbacks *cb, qpk_err *e)
{
    QPK_TRY(qpk_checkpoint_open(&s->ck, s->path, cb, e));
    s->cfg = *qpk_checkpoint_config(s->ck);
    for (size_t i = 0; i < qpk_checkpoint_n_files(s->ck); i++)
        QPK_TRY(add_input(s, s->path, qpk_checkpoint_file(s->ck, i, NULL), e));
    for (size_t i = 0; i < sizeof FOLDER_FILES / sizeof *FOLDER_FILES; i++)
        QPK_TRY(add_input(s, s->path, FOLDER_FILES[i], e));
    return QPK_OK;
}

static qpk_status open_qpk(qpk_source *s, qpk_err *e)
{
    QPK_TRY(qpk_open(&s->file, s->path, NULL, e));
    qpk_status st = qpk_check_model(s->file, e);
    if (st != QPK_OK)
        return qpk_err_prefix(e, st, "%s", s->path);
    s->cfg = *qpk_file_config(s->file);
    return add_input(s, NULL, s->path, e);
}

/* Between the stages of a long open: each stage is linear in the file, the caller's cancel polled after it. */
static qpk_status poll_cancel(const qpk_callbacks *cb, qpk_err *e)
{
    return cb->cancel && cb->cancel(cb->ud) ? qpk_err_setf(e, QPK_E_CANCELLED, "cancelled") : QPK_OK;
}

static qpk_status open_gguf(qpk_source *s, const qpk_callbacks *cb, qpk_err *e)
{
    QPK_TRY(qpk_gguf_open(&s->gguf, s->path, e));
    qpk_status st = poll_cancel(cb, e);
    if (st == QPK_OK)
        st = qpk_gguf_qwen2(s->gguf, &s->cfg, e);
    if (st == QPK_OK)
        st = poll_cancel(cb, e);
    if (st == QPK_OK) /* what the runtime would refuse is refused here, once */
        st = qpk_gguf_check_scales(s->gguf, e);
    if (st != QPK_OK)
        return qpk_err_prefix(e, st, "%s", s->path);
    st = add_input(s, NULL, s->path, e);
    /* A split set's other shards are inputs too (the path, its first, ends -00001-of-NNNNN.gguf). */
    const size_t n = qpk_gguf_n_shards(s->gguf), len = strlen(s->path);
    for (size_t i = 1; i < n && st == QPK_OK && len > 20; i++) {
        char *prefix = strndup(s->path, len - 20);
        char *name = prefix ? qpk_gguf_split_path(prefix, (uint32_t)i, (uint32_t)n) : NULL;
        st = name ? add_input(s, NULL, name, e) : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        free(prefix), free(name);
    }
    return st;
}

qpk_status qpk_source_open(qpk_source **out, const char *path, const qpk_source_opts *opts, qpk_err *e)
{
    const qpk_source_opts none = {0};
    const qpk_source_opts *o = opts ? opts : &none;
    *out = NULL;
    qpk_input_kind kind;
    QPK_TRY(qpk_identify(path, &kind, e));
    if (kind != QPK_INPUT_FOLDER && kind != QPK_INPUT_QPK && kind != QPK_INPUT_GGUF &&
        !(o->allow_logits && kind == QPK_INPUT_SAFETENSORS))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "'%s' is %s; expected a .qpk file, a GGUF file or a Hugging Face model folder%s", path,
                            qpk_input_kind_name(kind), o->allow_logits ? ", or a reference-logits safetensors file" : "");
    qpk_source *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    qpk_status st;
    switch (kind) {
    case QPK_INPUT_FOLDER: s->kind = QPK_SOURCE_HF, st = open_folder(s, &o->cb, e); break;
    case QPK_INPUT_QPK: s->kind = QPK_SOURCE_QPK, st = open_qpk(s, e); break;
    case QPK_INPUT_GGUF: s->kind = QPK_SOURCE_GGUF, st = open_gguf(s, &o->cb, e); break;
    default:
        s->kind = QPK_SOURCE_LOGITS;
        if ((st = qpk_st_open(&s->logits, path, e)) == QPK_OK)
            st = add_input(s, NULL, path, e);
        break;
    }
    if (st != QPK_OK) {
        qpk_source_close(s);
        return st;
    }
    *out = s;
    return QPK_OK;
}

void qpk_source_close(qpk_source *s)
{
    if (!s)
        return;
    qpk_checkpoint_close(s->ck);
    qpk_close(s->file);
    qpk_gguf_close(s->gguf);
    qpk_st_close(s->logits);
    for (size_t i = 0; i < s->n_inputs; i++)
        free(s->inputs[i]);
    free(s->inputs);
    free(s->path);
    free(s);
}

qpk_source_kind qpk_source_kind_of(const qpk_source *s) { return s->kind; }
const char *qpk_source_path(const qpk_source *s) { return s->path; }
const qpk_config *qpk_source_config(const qpk_source *s) { return s->kind == QPK_SOURCE_LOGITS ? NULL : &s->cfg; }
const qpk_safetensors *qpk_source_logits(const qpk_source *s) { return s->logits; }
qpk_checkpoint *qpk_source_checkpoint(const qpk_source *s) { return s->ck; }
const qpk_file *qpk_source_qpk(const qpk_source *s) { return s->file; }
const qpk_gguf *qpk_source_gguf(const qpk_source *s) { return s->gguf; }
size_t qpk_source_n_inputs(const qpk_source *s) { return s->n_inputs; }
const char *qpk_source_input(const qpk_source *s, size_t i) { return i < s->n_inputs ? s->inputs[i] : NULL; }

const char *qpk_source_format(const qpk_source *s)
{
    switch (s->kind) {
    case QPK_SOURCE_QPK: return "qpk";
    case QPK_SOURCE_GGUF: return "gguf";
    case QPK_SOURCE_LOGITS: return "logits";
    case QPK_SOURCE_HF: break;
    }
    const qpk_hfq *q = qpk_checkpoint_hfq(s->ck);
    return q->autoround               ? "auto-round"
           : q->method == QPK_HFQ_GPTQ ? "gptq"
           : q->method == QPK_HFQ_AWQ ? "awq"
           : q->method == QPK_HFQ_CT  ? "compressed-tensors"
           : q->method == QPK_HFQ_MLX ? "mlx"
                                      : "hf";
}

/* Tensor (role, layer) of a checked .qpk as a matrix over its mapped bytes, with its permutation. */
static qpk_status qpk_matrix_of(const qpk_file *f, qpk_role role, int layer, qpk_matrix *w, qpk_err *e)
{
    char name[QPK_MAX_NAME];
    qpk_tensor_name(name, sizeof name, role, layer);
    const qpk_tensor *t = qpk_find_tensor(f, name);
    if (!t)
        return qpk_err_setf(e, QPK_E_MISMATCH, "missing tensor '%s'", name);
    if (t->ndim > 2)
        return qpk_err_setf(e, QPK_E_MISMATCH, "tensor '%s' has %d dimensions", name, t->ndim);
    *w = (qpk_matrix){t->type, t->group_size, t->ndim == 2 ? t->dims[0] : 1, t->dims[t->ndim - 1], t->data, NULL};
    const qpk_tensor *p = qpk_perm_name(name, sizeof name, role, layer) ? qpk_find_tensor(f, name) : NULL;
    if (p && (p->type != QPK_TYPE_I32 || p->ndim != 1 || p->dims[0] != w->cols))
        return qpk_err_setf(e, QPK_E_MISMATCH, "permutation '%s' is not i32 [%lld]", name, (long long)w->cols);
    w->perm = p ? p->data : NULL;
    return QPK_OK;
}

qpk_status qpk_source_matrix(qpk_source *s, qpk_role role, int layer, qpk_matrix *out, qpk_err *e)
{
    switch (s->kind) {
    case QPK_SOURCE_HF: return qpk_checkpoint_matrix(s->ck, role, layer, out, e);
    case QPK_SOURCE_QPK: return qpk_matrix_of(s->file, role, layer, out, e);
    case QPK_SOURCE_GGUF: return qpk_gguf_matrix(s->gguf, role, layer, out, e);
    case QPK_SOURCE_LOGITS: break;
    }
    return qpk_err_setf(e, QPK_E_INVALID_ARG, "'%s' is a reference-logits file, not a model", s->path);
}

qpk_status qpk_source_verify(const qpk_source *s, qpk_role role, int layer, qpk_err *e)
{
    if (s->kind != QPK_SOURCE_QPK)
        return QPK_OK;
    char name[QPK_MAX_NAME];
    for (int k = 0; k < 2; k++) { /* the tensor, then its permutation if it has one */
        if (k ? !qpk_perm_name(name, sizeof name, role, layer) : !qpk_tensor_name(name, sizeof name, role, layer))
            continue;
        const qpk_tensor *t = qpk_find_tensor(s->file, name);
        if (t) {
            qpk_status st = qpk_verify_tensor(s->file, (size_t)(t - qpk_tensor_at(s->file, 0)), e);
            if (st != QPK_OK)
                return qpk_err_prefix(e, st, "tensor '%s'", name);
        }
    }
    return QPK_OK;
}

qpk_status qpk_source_file(const qpk_source *s, const char *name, char **data, size_t *len, qpk_err *e)
{
    *data = NULL, *len = 0;
    switch (s->kind) {
    case QPK_SOURCE_QPK: return qpk_read_blob(s->file, name, data, len, e);
    case QPK_SOURCE_HF: {
        bool missing = false;
        qpk_status st = qpk_read_model_file(s->path, name, data, len, &missing, e);
        return st != QPK_OK && missing ? QPK_OK : st;
    }
    case QPK_SOURCE_GGUF:
        if (!strcmp(name, "tokenizer.json"))
            return qpk_gguf_tokenizer_json(s->gguf, data, len, e);
        if (!strcmp(name, "tokenizer_config.json")) {
            if (!(*data = qpk_gguf_tokenizer_config(s->gguf)))
                return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
            *len = strlen(*data);
        }
        return QPK_OK;
    case QPK_SOURCE_LOGITS: break;
    }
    return QPK_OK;
}

qpk_status qpk_source_tokenize_file(const qpk_source *s, const char *path, int32_t **ids, size_t *n, uint64_t *hash,
                                    qpk_err *e)
{
    char *json = NULL, *text = NULL;
    size_t json_len, text_len;
    qpk_tokenizer *tok = NULL;
    *ids = NULL, *n = 0;
    qpk_status st = qpk_source_file(s, "tokenizer.json", &json, &json_len, e);
    if (st == QPK_OK && !json)
        st = qpk_err_setf(e, QPK_E_MISMATCH, "%s %s no tokenizer.json", s->path,
                          s->kind == QPK_SOURCE_QPK ? "embeds" : "has");
    if (st == QPK_OK && (st = qpk_tokenizer_load(&tok, json, json_len, e)) != QPK_OK)
        qpk_err_prefix(e, st, "the tokenizer of %s", s->path);
    free(json);
    if (st == QPK_OK)
        st = qpk_read_file(path, &text, &text_len, e);
    /* Text is text: strings like <|endoftext|> in it are not control tokens (llama.cpp's
     * perplexity and imatrix tokenize the same way). */
    if (st == QPK_OK)
        st = qpk_tokenizer_encode_alloc(tok, text, text_len, false, ids, n, e);
    if (st == QPK_OK && hash)
        *hash = qpk_xxh3(text, text_len);
    free(text);
    qpk_tokenizer_free(tok);
    return st;
}

qpk_status qpk_read_tokenizer_json(const char *src, char **json, size_t *len, qpk_err *e)
{
    qpk_input_kind kind;
    *json = NULL, *len = 0;
    QPK_TRY(qpk_identify(src, &kind, e));
    if (kind == QPK_INPUT_FOLDER)
        return qpk_read_model_file(src, "tokenizer.json", json, len, NULL, e);
    if (kind == QPK_INPUT_QPK || kind == QPK_INPUT_GGUF) {
        qpk_source *s;
        QPK_TRY(qpk_source_open(&s, src, NULL, e));
        qpk_status st = qpk_source_file(s, "tokenizer.json", json, len, e);
        if (st == QPK_OK && !*json)
            st = qpk_err_setf(e, QPK_E_MISMATCH, "%s embeds no tokenizer.json", src);
        qpk_source_close(s);
        return st;
    }
    /* Read as a file of its folder, so that a git link stored as a file (one line: a
     * relative path, as the outlier fixture's tokenizer.json) is followed. */
    const char *slash = strrchr(src, '/');
    char *dir = slash ? strndup(src, (size_t)(slash - src)) : strdup(".");
    if (!dir)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status st = qpk_read_model_file(dir[0] ? dir : "/", slash ? slash + 1 : src, json, len, NULL, e);
    free(dir);
    return st;
}
