/*
 * What another runtime writes against the installed libqpk, and nothing else: open a
 * .qpk, walk its tensor table, dequantize a row, run the first token of a prompt and
 * compare its logits with reference logits (tests/install_test.sh builds it with
 * pkg-config and with find_package, outside the source tree).
 * Usage: consumer MODEL.qpk REF.safetensors   (tokens I32 [1, T], logits F32 [1, T, V])
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <qpk/convert.h>
#include <qpk/runtime.h>

static int fail(const char *what, const qpk_err *e)
{
    fprintf(stderr, "consumer: %s: %s (%s)\n", what, e->msg, qpk_strerror(e->status));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: consumer MODEL.qpk REF.safetensors\n");
        return 2;
    }
    qpk_err e = {0};
    qpk_file *f;
    if (qpk_open(&f, argv[1], NULL, &e) != QPK_OK)
        return fail("open", &e);

    /* The tensor table: name, type (and group), shape, bytes. */
    for (size_t i = 0; i < qpk_n_tensors(f); i++) {
        const qpk_tensor *t = qpk_tensor_at(f, i);
        printf("tensor %s %s/%u [", t->name, qpk_type_name(t->type), t->group_size);
        for (int d = 0; d < t->ndim; d++)
            printf(d ? ", %lld" : "%lld", (long long)t->dims[d]);
        printf("] %llu bytes\n", (unsigned long long)t->nbytes);
    }

    /* One row of the embedding in f32, whatever its type. */
    const qpk_tensor *emb = qpk_find_tensor(f, "model.embed_tokens.weight");
    const qpk_config *c = qpk_file_config(f);
    float *row = malloc((size_t)c->hidden_size * sizeof *row);
    qpk_dequantize_row(emb->type, emb->group_size, emb->data, c->hidden_size, row);
    double sum = 0;
    for (int64_t i = 0; i < c->hidden_size; i++)
        sum += row[i];
    printf("embedding row 0: sum %.6f\n", sum);

    /* One forward pass: the first token of the reference prompt. */
    qpk_safetensors *ref;
    if (qpk_st_open(&ref, argv[2], &e) != QPK_OK)
        return fail("reference", &e);
    const qpk_st_tensor *tokens = qpk_st_find(ref, "tokens"), *want = qpk_st_find(ref, "logits");
    if (!tokens || !want || tokens->dtype != QPK_ST_I32 || want->dtype != QPK_ST_F32 ||
        want->shape[want->ndim - 1] != c->vocab_size) {
        fprintf(stderr, "consumer: the reference needs tokens I32 and logits F32 over the vocabulary\n");
        return 1;
    }
    qpk_source *src;
    qpk_model *m;
    qpk_context *ctx;
    if (qpk_source_open(&src, argv[1], NULL, &e) != QPK_OK || qpk_model_from_source(&m, src, &e) != QPK_OK)
        return fail("model", &e);
    if (qpk_context_create(&ctx, m, &(qpk_context_opts){.n_ctx = 16}, &e) != QPK_OK)
        return fail("context", &e);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    const int32_t *ids = tokens->data;
    if (qpk_eval(ctx, ids, 1, logits, 1, &e) != QPK_OK)
        return fail("eval", &e);
    const float *ref_logits = want->data;
    double worst = 0;
    int64_t top = 0;
    for (int64_t v = 0; v < c->vocab_size; v++) {
        worst = fmax(worst, fabs((double)logits[v] - ref_logits[v]));
        top = logits[v] > logits[top] ? v : top;
    }
    printf("forward: token %d -> top %lld, max |logit - reference| %.3g\n", ids[0], (long long)top, worst);
    free(logits), free(row);
    qpk_context_free(ctx);
    qpk_model_free(m);
    qpk_st_close(ref);
    qpk_source_close(src);
    qpk_close(f);
    return worst <= 1e-4 ? 0 : 1;
}
