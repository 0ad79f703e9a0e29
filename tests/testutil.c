/* Helpers shared by the test programs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>

#include "testutil.h"
#include "model_private.h"
#include "qpk/quant.h"
#include "qpk/verify.h"

/* Every tensor of out equals its source converted to the stored type. */
bool check_against_source(const char *dir, const char *out, int dtype)
{
    qpk_checkpoint *ck;
    qpk_file *f;
    qpk_err e = {0};
    qpk_open_opts oo = {.verify_checksums = true};
    if (qpk_checkpoint_open(&ck, dir, NULL, &e) != QPK_OK || qpk_open(&f, out, &oo, &e) != QPK_OK) {
        fprintf(stderr, "check_against_source: %s\n", e.msg);
        return false;
    }
    const qpk_config *c = qpk_checkpoint_config(ck);
    bool same = qpk_check_model(f, &e) == QPK_OK && !memcmp(c, qpk_file_config(f), sizeof *c);
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        char name[QPK_MAX_NAME];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_tensor_name(name, sizeof name, role, layer);
        const qpk_st_tensor *src = qpk_checkpoint_tensor(ck, role, layer);
        const qpk_tensor *t = qpk_find_tensor(f, name);
        if (!t) {
            same = false;
            continue;
        }
        float *a = malloc(src->numel * 4 + 4), *b = malloc(src->numel * 4 + 4);
        qpk_type st = src->dtype == QPK_ST_F16 ? QPK_TYPE_F16 : src->dtype == QPK_ST_BF16 ? QPK_TYPE_BF16 : QPK_TYPE_F32;
        qpk_row_to_f32(st, src->data, a, src->numel);
        qpk_type want = dtype < 0 ? st : (qpk_type)dtype;
        same &= t->type == want;
        if (dtype < 0) {
            same &= t->nbytes == src->nbytes && !memcmp(t->data, src->data, src->nbytes);
        } else {
            /* Stored value = source rounded to nearest even in the stored type. */
            uint16_t *h = malloc(src->numel * 2 + 2);
            qpk_row_from_f32(want, a, want == QPK_TYPE_F32 ? (void *)b : (void *)h, src->numel);
            if (want != QPK_TYPE_F32)
                qpk_row_to_f32(want, h, b, src->numel);
            free(h);
            qpk_row_to_f32(t->type, t->data, a, src->numel);
            same &= !memcmp(a, b, src->numel * 4);
        }
        free(a);
        free(b);
    }
    if (!same)
        fprintf(stderr, "%s -> %s (dtype %d): tensors differ from the source\n", dir, out, dtype);
    qpk_close(f);
    qpk_checkpoint_close(ck);
    return same;
}


void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d));) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (unlink(p) != 0)
            rm_rf(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(size > 0 ? size : 0) + 1);
    *n = b ? fread(b, 1, (size_t)size, f) : 0;
    if (b)
        b[*n] = 0;
    fclose(f);
    return b;
}

/* ------------------------------------------------------------ engine wrappers */

#define TU_MODELS 32
static struct {
    qpk_source *src;
    qpk_model *m;
} tu_models[TU_MODELS]; /* test-only: which model runs over which source */

qpk_status tu_open(qpk_source **src, const char *path, bool allow_logits, qpk_err *e)
{
    const qpk_source_opts o = {.allow_logits = allow_logits};
    return qpk_source_open(src, path, &o, e);
}

const qpk_model *tu_model(qpk_source *src)
{
    for (int i = 0; i < TU_MODELS; i++)
        if (tu_models[i].src == src)
            return tu_models[i].m;
    for (int i = 0; i < TU_MODELS; i++)
        if (!tu_models[i].src) {
            qpk_err e;
            if (qpk_model_from_source(&tu_models[i].m, src, &e) != QPK_OK) {
                fprintf(stderr, "tu_model: %s\n", e.msg);
                return NULL;
            }
            tu_models[i].src = src;
            return tu_models[i].m;
        }
    return NULL;
}

void tu_close(qpk_source *src)
{
    for (int i = 0; src && i < TU_MODELS; i++)
        if (tu_models[i].src == src) {
            qpk_model_free(tu_models[i].m);
            tu_models[i].src = NULL, tu_models[i].m = NULL;
        }
    qpk_source_close(src);
}

qpk_status tu_convert(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    return qpk_convert_path(in, out, o, NULL, e);
}

/* Options for carrying a file's tensors as they are into target to. */
static qpk_convert_opts as_is(const qpk_convert_opts *o, qpk_output to)
{
    qpk_convert_opts c = {0};
    if (o)
        c.cb = o->cb, c.command = o->command, c.n_threads = o->n_threads, c.shard_size = o->shard_size,
        c.gptq_v2 = o->gptq_v2;
    c.dtype = -1, c.to = to;
    return c;
}

qpk_status tu_export_gguf(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    qpk_convert_opts c = as_is(o, QPK_OUT_GGUF);
    return qpk_convert_path(in, out, &c, NULL, e);
}

qpk_status tu_convert_gguf(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    qpk_convert_opts c = as_is(o, QPK_OUT_QPK);
    return qpk_convert_path(in, out, &c, NULL, e);
}

qpk_status tu_export_hf(const char *in, const char *out, const qpk_convert_opts *o, qpk_err *e)
{
    qpk_convert_opts c = as_is(o, o->to);
    return qpk_convert_path(in, out, &c, NULL, e);
}

qpk_status tu_requantize_for_gguf(const char *in, const char *out, const qpk_convert_opts *o, int *n, qpk_err *e)
{
    qpk_convert_opts c = as_is(o, QPK_OUT_QPK);
    c.requantize = true;
    qpk_convert_result r;
    qpk_status s = qpk_convert_path(in, out, &c, &r, e);
    if (n)
        *n = r.n_requantized;
    return s;
}

static qpk_status gguf_weight(void *ud, qpk_role role, int layer, qpk_matrix *w, qpk_err *e)
{
    return qpk_gguf_matrix(ud, role, layer, w, e);
}

qpk_status tu_gguf_model(qpk_model **m, const qpk_gguf *g, qpk_err *e)
{
    qpk_config c;
    *m = NULL;
    qpk_status s = qpk_gguf_qwen2(g, &c, e);
    if (s == QPK_OK)
        s = qpk_gguf_check_scales(g, e);
    return s != QPK_OK ? s : qpk_model_create(m, &c, gguf_weight, (void *)g, e);
}

qpk_status tu_tokenize_file(const char *model, const char *path, int32_t **ids, size_t *n, uint64_t *hash, qpk_err *e)
{
    qpk_source *src;
    qpk_status s = qpk_source_open(&src, model, NULL, e);
    if (s == QPK_OK)
        s = qpk_source_tokenize_file(src, path, ids, n, hash, e);
    qpk_source_close(src);
    return s;
}

qpk_status tu_calib_and_eval(const char *fixtures, const char *model, int32_t **calib, size_t *n_calib, int32_t **eval,
                             size_t *n_eval, qpk_err *e)
{
    char p[4096];
    *calib = *eval = NULL;
    snprintf(p, sizeof p, "%s/text/calib.txt", fixtures);
    qpk_status s = tu_tokenize_file(model, p, calib, n_calib, NULL, e);
    snprintf(p, sizeof p, "%s/tokens/eval_public.i32", fixtures);
    return s == QPK_OK ? qpk_read_tokens(p, eval, n_eval, e) : s;
}

double tu_kld(const char *path, qpk_source *ref, const int32_t *eval, size_t n_eval, int n_ctx, int max_chunks,
              qpk_err *e)
{
    qpk_source *m = NULL;
    qpk_verify_result r;
    qpk_verify_opts vo = {.n_ctx = n_ctx, .max_chunks = max_chunks};
    double kld = NAN;
    if (tu_open(&m, path, false, e) == QPK_OK && tu_model(m) &&
        qpk_verify_tokens(tu_model(m), tu_model(ref), eval, n_eval, &vo, &r, e) == QPK_OK)
        kld = r.kld_mean;
    tu_close(m);
    return kld;
}
