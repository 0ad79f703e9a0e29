/*
 * Sinks: one interface over the outputs, one writer per layout. The .qpk sink is the
 * .qpk writer (format/writer.c) with a linear's permutation written after it as an i32
 * tensor; the GGUF sink is gguf_export.c (ggml types, llama.cpp's names and keys); the
 * GPTQ/AWQ sinks are hf_export.c. Each makes its output appear only at finish.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct qpk_sink {
    qpk_output kind;
    qpk_sink_opts o;
    qpk_sink_tensor *t; /* the declared tensors (a copy) */
    size_t n, cur;      /* cur: the tensor being written, or the next */
    bool open;          /* between begin and end */
    const qpk_sink_file *files;
    size_t n_files;
    qpk_writer *w;         /* QPK_OUT_QPK */
    qpk_gguf_export *gguf; /* QPK_OUT_GGUF */
    qpk_hf_sink *hf;       /* the folders: QPK_OUT_GPTQ, QPK_OUT_AWQ, QPK_OUT_CT, QPK_OUT_MLX */
    double last_change;    /* the last tensor's largest weight change in the layout (0: carried exactly) */
};

const char *qpk_output_name(qpk_output o)
{
    static const char *const NAMES[] = {"qpk", "gguf", "gptq", "awq", "compressed-tensors", "mlx"};
    return (unsigned)o < sizeof NAMES / sizeof *NAMES ? NAMES[o] : "?";
}

qpk_status qpk_sink_create(qpk_sink **out, qpk_output kind, const char *path, const qpk_sink_opts *opts, qpk_err *e)
{
    *out = NULL;
    if ((unsigned)kind > QPK_OUT_LAST)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "unknown output kind %d", (int)kind);
    if (opts && opts->gptq_v2 && kind != QPK_OUT_GPTQ)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the GPTQ v2 layout applies to GPTQ folders only");
    if (opts && (opts->split_max_size || opts->split_max_tensors) && kind != QPK_OUT_GGUF)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a split set applies to GGUF only");
    qpk_sink *s = calloc(1, sizeof *s);
    if (!s)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    s->kind = kind;
    if (opts)
        s->o = *opts;
    qpk_status st;
    switch (kind) {
    case QPK_OUT_QPK: st = qpk_writer_create(&s->w, path, e); break;
    case QPK_OUT_GGUF:
        st = qpk_gguf_export_create(&s->gguf, path, s->o.split_max_size, s->o.split_max_tensors, e);
        break;
    default: st = qpk_hf_sink_create(&s->hf, kind, path, &s->o, e); break;
    }
    if (st != QPK_OK) {
        free(s);
        return st;
    }
    *out = s;
    return QPK_OK;
}

qpk_output qpk_sink_kind(const qpk_sink *s) { return s->kind; }

/* The GGUF plan asks tensor by tensor in the canonical order: the declared ones, in turn. */
typedef struct gguf_cursor {
    const qpk_sink *s;
    size_t i;
} gguf_cursor;

static qpk_status declared_tensor(void *ud, qpk_role role, int layer, uint32_t *type, uint32_t *group, int *ndim,
                                  int64_t dims[QPK_MAX_DIMS], qpk_err *e)
{
    gguf_cursor *c = ud;
    const qpk_sink_tensor *t = c->i < c->s->n ? &c->s->t[c->i++] : NULL;
    char name[QPK_MAX_NAME];
    qpk_tensor_name(name, sizeof name, role, layer);
    if (!t || t->role != role || t->layer != layer)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "tensor '%s' is not declared in the model's order", name);
    if (t->permuted)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, QPK_ACT_ORDER_GGUF_MSG, name);
    *type = t->type, *group = t->group_size, *ndim = t->ndim;
    memcpy(dims, t->dims, sizeof t->dims);
    return QPK_OK;
}

/* The file named name among those the model carries, or NULL. */
static const qpk_sink_file *find_file(const qpk_sink_model *m, const char *name)
{
    for (size_t i = 0; i < m->n_files; i++)
        if (!strcmp(m->files[i].name, name))
            return &m->files[i];
    return NULL;
}

static qpk_status gguf_declare(qpk_sink *s, const qpk_sink_model *m, qpk_err *e)
{
    const qpk_sink_file *tok = find_file(m, "tokenizer.json"), *cfg = find_file(m, "tokenizer_config.json");
    const qpk_sink_file *tmpl = find_file(m, "chat_template.jinja");
    if (!tok)
        return qpk_err_setf(e, QPK_E_MISMATCH, "GGUF carries the model's tokenizer, and the model has no tokenizer.json");
    gguf_cursor c = {s, 0};
    qpk_gguf_meta gm = {m->name ? m->name : "", tok->data, tok->len, cfg ? cfg->data : NULL, cfg ? cfg->len : 0,
                        m->recipe, tmpl ? tmpl->data : NULL, tmpl ? tmpl->len : 0};
    return qpk_gguf_export_plan(s->gguf, m->cfg, declared_tensor, &c, &gm, e);
}

qpk_status qpk_sink_declare(qpk_sink *s, const qpk_sink_model *m, qpk_err *e)
{
    if (s->t)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the model is declared once");
    if (m->n_tensors != qpk_model_n_tensors(m->cfg))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "%zu tensors declared for a model of %zu", m->n_tensors,
                            qpk_model_n_tensors(m->cfg));
    if (!(s->t = malloc((m->n_tensors ? m->n_tensors : 1) * sizeof *s->t)))
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    memcpy(s->t, m->tensors, m->n_tensors * sizeof *s->t);
    s->n = m->n_tensors;
    s->files = m->files, s->n_files = m->n_files;
    switch (s->kind) {
    case QPK_OUT_QPK: return QPK_OK; /* the .qpk writer takes each tensor as it comes */
    case QPK_OUT_GGUF: return gguf_declare(s, m, e);
    default: return qpk_hf_sink_declare(s->hf, m, e);
    }
}

qpk_status qpk_sink_begin_tensor(qpk_sink *s, qpk_err *e)
{
    if (!s->t || s->open || s->cur >= s->n)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "no declared tensor left to begin");
    const qpk_sink_tensor *t = &s->t[s->cur];
    char name[QPK_MAX_NAME];
    qpk_tensor_name(name, sizeof name, t->role, t->layer);
    qpk_status st = QPK_OK;
    if (s->kind == QPK_OUT_QPK)
        st = qpk_writer_begin_tensor(s->w, name, t->type, t->group_size, t->ndim, t->dims, e);
    else if (s->hf)
        st = qpk_hf_sink_begin(s->hf, t, e);
    s->open = st == QPK_OK;
    return st;
}

qpk_status qpk_sink_write(qpk_sink *s, const void *data, size_t n, qpk_err *e)
{
    if (!s->open)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "data outside a tensor");
    switch (s->kind) {
    case QPK_OUT_QPK: return qpk_writer_write(s->w, data, n, e);
    case QPK_OUT_GGUF: return qpk_gguf_export_write(s->gguf, data, n, e);
    default: return qpk_hf_sink_write(s->hf, data, n, e);
    }
}

qpk_status qpk_sink_end_tensor(qpk_sink *s, const int32_t *perm, qpk_err *e)
{
    if (!s->open)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "no tensor to end");
    const qpk_sink_tensor *t = &s->t[s->cur];
    if (!perm != !t->permuted)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a permutation goes with exactly the tensors declared permuted");
    s->open = false;
    s->cur++;
    s->last_change = 0;
    switch (s->kind) {
    case QPK_OUT_QPK: {
        QPK_TRY(qpk_writer_end_tensor(s->w, e));
        if (!perm)
            return QPK_OK;
        char name[QPK_MAX_NAME];
        const int64_t cols = t->dims[t->ndim - 1];
        qpk_perm_name(name, sizeof name, t->role, t->layer);
        QPK_TRY(qpk_writer_begin_tensor(s->w, name, QPK_TYPE_I32, 0, 1, &cols, e));
        QPK_TRY(qpk_writer_write(s->w, perm, (size_t)cols * sizeof *perm, e)); /* little-endian, as the format */
        return qpk_writer_end_tensor(s->w, e);
    }
    case QPK_OUT_GGUF: qpk_gguf_export_next(s->gguf, &s->last_change); return QPK_OK;
    default: return qpk_hf_sink_end(s->hf, perm, &s->last_change, e);
    }
}

uint64_t qpk_sink_last_xxh3(const qpk_sink *s) { return s->kind == QPK_OUT_QPK ? qpk_writer_last_xxh3(s->w) : 0; }

double qpk_sink_last_change(const qpk_sink *s) { return s->last_change; }

qpk_status qpk_sink_finish(qpk_sink *s, const char *meta, size_t meta_len, qpk_err *e)
{
    qpk_status st = !s->t || s->open || s->cur != s->n
                        ? qpk_err_setf(e, QPK_E_INVALID_ARG, "%zu of %zu declared tensors written", s->cur, s->n)
                        : QPK_OK;
    if (st == QPK_OK) {
        switch (s->kind) {
        case QPK_OUT_QPK:
            for (size_t i = 0; i < s->n_files && st == QPK_OK; i++)
                st = qpk_writer_add_blob(s->w, s->files[i].name, s->files[i].data, s->files[i].len, e);
            if (st == QPK_OK) {
                st = qpk_writer_finish(s->w, meta, meta_len, e);
                s->w = NULL;
            }
            break;
        case QPK_OUT_GGUF:
            st = qpk_gguf_export_finish(s->gguf, &s->o.cb, e);
            s->gguf = NULL;
            break;
        default:
            st = qpk_hf_sink_finish(s->hf, e);
            s->hf = NULL;
            break;
        }
    }
    qpk_sink_discard(s);
    return st;
}

void qpk_sink_discard(qpk_sink *s)
{
    if (!s)
        return;
    qpk_writer_discard(s->w);
    qpk_gguf_export_discard(s->gguf);
    qpk_hf_sink_discard(s->hf);
    free(s->t);
    free(s);
}
