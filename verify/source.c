/* Opening whatever a user names as a model or a reference. */
#include <stdlib.h>

#include "qpk/gguf.h"
#include "qpk/verify.h"
#include "qpk_private.h"

struct qpk_source {
    qpk_source_kind kind;
    qpk_file *file;
    qpk_checkpoint *ck;
    qpk_safetensors *logits;
    qpk_gguf *gguf;
    qpk_model *model;
};

qpk_status qpk_source_open(qpk_source **out, const char *path, bool allow_logits, const qpk_callbacks *cb,
                           qpk_err *e)
{
    *out = NULL;
    qpk_input_kind kind;
    QPK_TRY(qpk_identify(path, &kind, e));
    if (kind != QPK_INPUT_FOLDER && kind != QPK_INPUT_QPK && kind != QPK_INPUT_GGUF &&
        !(allow_logits && kind == QPK_INPUT_SAFETENSORS))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "'%s' is %s; expected a .qpk file, a GGUF file or a Hugging Face model folder%s", path,
                            qpk_input_kind_name(kind), allow_logits ? ", or a reference-logits safetensors file" : "");
    qpk_source *s = calloc(1, sizeof *s);
    if (!s)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    qpk_status st;
    if (kind == QPK_INPUT_FOLDER) {
        s->kind = QPK_SOURCE_HF;
        st = qpk_checkpoint_open(&s->ck, path, cb, e);
        if (st == QPK_OK)
            st = qpk_checkpoint_model(&s->model, s->ck, e);
    } else if (kind == QPK_INPUT_QPK) {
        s->kind = QPK_SOURCE_QPK;
        st = qpk_open(&s->file, path, NULL, e);
        if (st == QPK_OK && (st = qpk_model_from_qpk(&s->model, s->file, e)) != QPK_OK)
            qpk_err_prefix(e, st, "%s", path);
    } else if (kind == QPK_INPUT_GGUF) {
        s->kind = QPK_SOURCE_GGUF;
        st = qpk_gguf_open(&s->gguf, path, e);
        if (st == QPK_OK && (st = qpk_gguf_model(&s->model, s->gguf, e)) != QPK_OK)
            qpk_err_prefix(e, st, "%s", path);
    } else {
        s->kind = QPK_SOURCE_LOGITS;
        st = qpk_st_open(&s->logits, path, e);
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
    qpk_model_free(s->model);
    qpk_checkpoint_close(s->ck);
    qpk_close(s->file);
    qpk_st_close(s->logits);
    qpk_gguf_close(s->gguf);
    free(s);
}

qpk_source_kind qpk_source_kind_of(const qpk_source *s) { return s->kind; }
const qpk_model *qpk_source_model(const qpk_source *s) { return s->model; }
const qpk_safetensors *qpk_source_logits(const qpk_source *s) { return s->logits; }
