/* libFuzzer target: the GGUF reader, every key-value, array element and tensor it exposes,
 * the Qwen-family checks of a GGUF model (hyperparameters, tokenizer keys, tensors), and what passes
 * them as a model: the runtime's checks, every weight dequantized, the tokenizer it describes.
 * The input is read as one file, and, when "GGUF" occurs past its start, also as a split set:
 * cut before each later "GGUF", each piece a shard (at most 8), as qpk_gguf_open_set_memory
 * takes them. The split-* seeds are gguf-split sets of the other seeds, concatenated
 * (llama-gguf-split --split --split-max-tensors N, then cat NAME-0000*). */
#include <stdlib.h>
#include <string.h>

#include "qpk/convert.h"
#include "qpk/gguf.h"
#include "qpk/runtime.h"
#include "model_private.h"

/* Everything a handle exposes, read; size bounds every offset (of a file or of a shard in it). */
static void exercise(qpk_gguf *g, size_t size)
{
    qpk_err e;
    volatile uint8_t sink = 0; /* every byte the reader points at must be readable */
    for (size_t i = 0; i < qpk_gguf_n_kv(g); i++) {
        qpk_gguf_value v, w;
        const char *key = qpk_gguf_kv_at(g, i, &v);
        if (!key || !qpk_gguf_find(g, key, &w) || w.type != v.type)
            __builtin_trap();
        if (v.type == QPK_GGUF_STRING && v.len)
            sink ^= (uint8_t)(v.str[0] ^ v.str[v.len - 1]);
        if (v.type != QPK_GGUF_ARRAY)
            continue;
        for (uint64_t k = 0; k < v.len && v.elem_type == QPK_GGUF_STRING; k++) {
            uint64_t len;
            const char *s = qpk_gguf_array_string(g, &v, k, &len);
            if (!s)
                __builtin_trap();
            if (len)
                sink ^= (uint8_t)(s[0] ^ s[len - 1]);
        }
        if (v.elem_type != QPK_GGUF_STRING && v.len)
            sink ^= v.elems[0];
    }
    for (size_t i = 0; i < qpk_gguf_n_tensors(g); i++) {
        const qpk_gguf_tensor *t = qpk_gguf_tensor_at(g, i);
        if (qpk_gguf_find_tensor(g, t->name) != t || t->offset + t->nbytes > size)
            __builtin_trap();
        if (t->nbytes)
            sink ^= (uint8_t)(((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1]);
    }
    (void)sink;
    qpk_config cfg;
    if (qpk_gguf_qwen2(g, &cfg, &e) == QPK_OK && qpk_gguf_check_scales(g, &e) == QPK_OK) {
        for (size_t i = 0; i < qpk_gguf_n_tensors(g); i++) {
            const qpk_gguf_tensor *t = qpk_gguf_tensor_at(g, i);
            uint32_t type, group;
            if (!qpk_type_of_ggml(t->type, &type, &group))
                __builtin_trap(); /* the model took a tensor of a type qpk lacks */
            const int64_t cols = (int64_t)t->ne[0];
            int64_t rows = 1; /* a 3-D expert tensor: experts x rows of cols */
            for (int d = 1; d < t->n_dims; d++)
                rows *= (int64_t)t->ne[d];
            const size_t row_bytes = t->nbytes / (uint64_t)rows;
            float *w = malloc((size_t)cols * sizeof *w);
            for (int64_t r = 0; r < rows && w; r++)
                qpk_dequantize_row(type, group, (const uint8_t *)t->data + (size_t)r * row_bytes, cols, w);
            free(w);
        }
        char *json;
        size_t len;
        if (qpk_gguf_tokenizer_json(g, &json, &len, &e) == QPK_OK)
            free(json);
    }
    qpk_gguf_close(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_gguf *g;
    qpk_err e;
    if (qpk_gguf_open_memory(&g, data, size, &e) == QPK_OK)
        exercise(g, size);
    const void *p[8];
    size_t n[8], k = 0, start = 0;
    for (size_t i = 4; i + 4 <= size && k < 7; i++)
        if (!memcmp(data + i, "GGUF", 4))
            p[k] = data + start, n[k++] = i - start, start = i;
    if (k > 0) {
        p[k] = data + start, n[k++] = size - start;
        if (qpk_gguf_open_set_memory(&g, p, n, k, &e) == QPK_OK) {
            if (qpk_gguf_n_shards(g) != k)
                __builtin_trap();
            exercise(g, size);
        }
    }
    return 0;
}
