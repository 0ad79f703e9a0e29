/*
 * Text in, token ids out: a model's tokenizer.json (from a .qpk, a model folder, or the
 * file itself) and text files tokenized with it, for calibration and perplexity.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk/gguf.h"
#include "qpk/tokenizer.h"

qpk_status qpk_read_blob(const qpk_file *f, const char *name, char **data, size_t *len, qpk_err *e)
{
    *data = NULL, *len = 0;
    for (size_t i = 0; i < qpk_n_blobs(f); i++) {
        uint64_t size;
        if (strcmp(qpk_blob_name(f, i, &size), name) != 0)
            continue;
        if (size >= SIZE_MAX || !(*data = malloc((size_t)size + 1)))
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %s", name);
        qpk_status s = qpk_blob_read(f, name, *data, (size_t)size, len, e);
        if (s != QPK_OK) {
            free(*data);
            *data = NULL;
            return s;
        }
        (*data)[*len] = 0;
        return QPK_OK;
    }
    return QPK_OK;
}

qpk_status qpk_read_tokenizer_json(const char *src, char **json, size_t *len, qpk_err *e)
{
    qpk_input_kind kind;
    *json = NULL, *len = 0;
    QPK_TRY(qpk_identify(src, &kind, e));
    if (kind == QPK_INPUT_FOLDER)
        return qpk_read_model_file(src, "tokenizer.json", json, len, NULL, e);
    if (kind == QPK_INPUT_GGUF) {
        qpk_gguf *g;
        qpk_config c;
        QPK_TRY(qpk_gguf_open(&g, src, e));
        qpk_status s = qpk_gguf_qwen2(g, &c, e);
        if (s == QPK_OK)
            s = qpk_gguf_tokenizer_json(g, json, len, e);
        qpk_gguf_close(g);
        return s;
    }
    if (kind != QPK_INPUT_QPK) {
        /* Read as a file of its folder, so that a git link stored as a file (one line: a
         * relative path, as the outlier fixture's tokenizer.json) is followed. */
        const char *slash = strrchr(src, '/');
        char *dir = slash ? strndup(src, (size_t)(slash - src)) : strdup(".");
        if (!dir)
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        qpk_status s = qpk_read_model_file(dir[0] ? dir : "/", slash ? slash + 1 : src, json, len, NULL, e);
        free(dir);
        return s;
    }
    qpk_file *f;
    qpk_status s = qpk_open(&f, src, NULL, e);
    if (s == QPK_OK && (s = qpk_read_blob(f, "tokenizer.json", json, len, e)) == QPK_OK && !*json)
        s = qpk_err_setf(e, QPK_E_MISMATCH, "%s embeds no tokenizer.json", src);
    qpk_close(f);
    return s;
}

qpk_status qpk_tokenize_file(const char *model, const char *path, int32_t **ids, size_t *n, uint64_t *hash,
                             qpk_err *e)
{
    char *json = NULL, *text = NULL;
    size_t json_len, text_len;
    qpk_tokenizer *tok = NULL;
    *ids = NULL, *n = 0;
    qpk_status s = qpk_read_tokenizer_json(model, &json, &json_len, e);
    if (s == QPK_OK && (s = qpk_tokenizer_load(&tok, json, json_len, e)) != QPK_OK)
        qpk_err_prefix(e, s, "the tokenizer of %s", model);
    free(json);
    if (s == QPK_OK)
        s = qpk_read_file(path, &text, &text_len, e);
    /* Text is text: strings like <|endoftext|> in it are not control tokens (llama.cpp's
     * perplexity and imatrix tokenize the same way). */
    if (s == QPK_OK)
        s = qpk_tokenizer_encode_alloc(tok, text, text_len, false, ids, n, e);
    if (s == QPK_OK && hash)
        *hash = qpk_xxh3(text, text_len);
    free(text);
    qpk_tokenizer_free(tok);
    return s;
}
